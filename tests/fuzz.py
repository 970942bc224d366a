"""Randomized differential run at scale: N random cases per operator against ATen
(float64 references, error bounded by the result's magnitude), on the CPU kernels and
on the CUDA code emulated on the CPU (and on CUDA when a GPU is visible).

    python -m tests.fuzz --cases 10000 [--ops bilinear,deconv,unpool]
                         [--devices cpu,emu] [--seed 0]

Each failure prints its op, device, seed and case index; reproduce one with
`FCN_FUZZ_SEED=<seed> FCN_FUZZ_CASES=<index+1> pytest tests/test_fuzz.py -k <op>`.
Exit status 1 if any case failed.
"""

import argparse
import contextlib
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # test_fuzz, conftest

import torch  # noqa: E402

from fcn_kernels.testing import emulated_cuda  # noqa: E402
import test_fuzz  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=1000, help="cases per operator and device")
    ap.add_argument("--ops", default=",".join(sorted(test_fuzz.OPS)))
    default_devices = "cpu,emu" + (",cuda" if torch.cuda.is_available() else "")
    ap.add_argument("--devices", default=default_devices)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--chunk", type=int, default=500, help="cases per progress line")
    args = ap.parse_args(argv)
    total_failed = 0
    for op in args.ops.split(","):
        for device in args.devices.split(","):
            ctx = emulated_cuda() if device == "emu" else contextlib.nullcontext()
            start, failed, done = time.perf_counter(), [], 0
            with ctx:
                while done < args.cases:
                    n = min(args.chunk, args.cases - done)
                    # Chunks use seeds seed, seed+1, ...: each chunk is reproducible alone.
                    chunk_seed = args.seed + done // args.chunk
                    failed += test_fuzz.run_cases(
                        op, "cpu" if device == "emu" else device, cases=n, seed=chunk_seed
                    )
                    done += n
            secs = time.perf_counter() - start
            total_failed += len(failed)
            print(
                f"{op:9s} {device:5s} {args.cases:6d} cases  {len(failed):4d} failed  "
                f"{secs:7.1f} s",
                flush=True,
            )
            for line in failed[:20]:
                print("  FAIL " + line, flush=True)
    return 1 if total_failed else 0


if __name__ == "__main__":
    sys.exit(main())
