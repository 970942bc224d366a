"""One command for a lent GPU machine: build, CUDA tests, sanitizers, sync check, graph
capture, benchmark report, everything written under OUTDIR.

    make gpu-check OUT=outdir          (or: python3 -m benches.gpu_check outdir)

For a machine whose python3 already has torch, pytest and pytest-benchmark and which has
no package index. Steps (each with its own time limit, all within ~8 minutes on a 16-core
H200 host); a failing step does not stop the later ones. Steps, most valuable first:

  build        pip install --no-build-isolation --no-deps -e .  (MAX_JOBS = all cores,
               TORCH_CUDA_ARCH_LIST unset: built for the visible GPU)
  sass         python -m benches.sass --check  (the binary just built)
  tests        pytest -m cuda  (every CUDA test)
  sync         python -m benches.gpu_smoke sync  (set_sync_debug_mode("error"))
  graph        python -m benches.gpu_smoke graph (FCN-8s training step in a CUDA graph)
  bench        python -m benches.report -k cuda --markdown
  memcheck     compute-sanitizer --tool memcheck  python -m benches.gpu_smoke ops
  racecheck    compute-sanitizer --tool racecheck python -m benches.gpu_smoke ops

The whole run keeps within --budget seconds (default 450, for a 15-minute device
allowance that also pays for the machine's start): each step gets at most the time left,
and a step that no longer fits is recorded as skipped.

OUTDIR gets <step>.log for each step, summary.json (per step: status, exit code,
seconds, log tail) and summary.md (the status table and the benchmark table). Without a
GPU the GPU steps are recorded as "skipped" (the build still runs unless --no-build).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def probe(python):
    """(GPU visible?, a line naming torch, CUDA and the GPU) from one start of `python`."""
    out = subprocess.run(
        [
            python,
            "-c",
            "import torch; ok = torch.cuda.is_available(); print(ok); print(torch.__version__, "
            "torch.version.cuda, torch.cuda.get_device_name(0) if ok else 'no GPU')",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    lines = out.stdout.strip().splitlines()
    header = lines[1] if len(lines) > 1 else out.stderr.strip()[-200:]
    return bool(lines) and lines[0] == "True", f"{header}, {os.cpu_count()} CPUs"


def steps(python, gpu, sanitizer):
    env = dict(os.environ, MAX_JOBS=str(os.cpu_count() or 4))
    if gpu:  # built for the visible GPU
        env.pop("TORCH_CUDA_ARCH_LIST", None)
    yield (
        "build",
        [python, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "-e", "."],
        300,
        env,
        None,
    )
    no_gpu = None if gpu else "no CUDA device"
    yield "sass", [python, "-m", "benches.sass", "--check", "--require"], 60, None, None
    yield (
        "tests",
        [python, "-m", "pytest", "tests", "-m", "cuda", "-q", "-p", "no:cacheprovider"],
        240,
        None,
        no_gpu,
    )
    yield "sync", [python, "-m", "benches.gpu_smoke", "sync"], 60, None, no_gpu
    yield "graph", [python, "-m", "benches.gpu_smoke", "graph"], 60, None, no_gpu
    yield "bench", [python, "-m", "benches.report", "-k", "cuda", "--markdown"], 240, None, no_gpu
    for tool in ("memcheck", "racecheck"):
        reason = no_gpu or (None if sanitizer else "compute-sanitizer not found")
        yield (
            tool,
            [
                sanitizer or "compute-sanitizer",
                "--tool",
                tool,
                "--error-exitcode",
                "3",
                python,
                "-m",
                "benches.gpu_smoke",
                "ops",
            ],
            150,
            None,
            reason,
        )


def run_step(name, cmd, limit, env, outdir):
    log_path = os.path.join(outdir, f"{name}.log")
    start = time.monotonic()
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        try:
            proc = subprocess.run(
                cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=limit
            )
            code = proc.returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
        except FileNotFoundError as e:
            log.write(f"{e}\n")
            code = "not found"
    seconds = time.monotonic() - start
    with open(log_path) as f:
        tail = f.read()[-3000:]
    return {
        "step": name,
        "status": "passed" if code == 0 else "failed",
        "exit": code,
        "seconds": round(seconds, 1),
        "log": os.path.basename(log_path),
        "tail": tail,
    }


def write_summary(outdir, results, header):
    with open(os.path.join(outdir, "summary.json"), "w") as f:
        json.dump({"machine": header, "steps": results}, f, indent=2)
    lines = [
        f"# gpu-check: {header}",
        "",
        "| step | status | exit | seconds |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r['step']} | {r['status']} | {r.get('exit', '')} | {r.get('seconds', '')} |"
        for r in results
    ]
    bench = next((r for r in results if r["step"] == "bench" and r["status"] == "passed"), None)
    if bench:
        with open(os.path.join(outdir, bench["log"])) as f:
            table = [line for line in f.read().splitlines() if line.startswith("|")]
        lines += ["", "## CUDA benchmarks (ours vs ATen, same run)", ""] + table
    with open(os.path.join(outdir, "summary.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("outdir")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--no-build", action="store_true", help="use the extension as built")
    ap.add_argument("--only", help="comma-separated steps to run")
    ap.add_argument(
        "--budget",
        type=float,
        default=450,
        help="seconds for the whole run; a step gets at most what is left, and steps "
        "that no longer fit are recorded as skipped (default 450)",
    )
    args = ap.parse_args(argv)
    deadline = time.monotonic() + args.budget
    os.makedirs(args.outdir, exist_ok=True)
    gpu, header = probe(args.python)
    sanitizer = shutil.which("compute-sanitizer") or next(
        (p for p in ("/usr/local/cuda/bin/compute-sanitizer",) if os.path.exists(p)), None
    )
    results = []
    for name, cmd, limit, env, skip in steps(args.python, gpu, sanitizer):
        if args.only and name not in args.only.split(","):
            continue
        if name == "build" and args.no_build:
            skip = "--no-build"
        left = deadline - time.monotonic()
        if not skip and left < 10:
            skip = "out of time (--budget)"
        if skip:
            results.append({"step": name, "status": "skipped", "reason": skip})
        else:
            results.append(run_step(name, cmd, min(limit, left), env, args.outdir))
        print(
            f"gpu-check {name:10s} {results[-1]['status']:8s} {results[-1].get('seconds', '')}",
            flush=True,
        )
        # after every step: a cut-off run keeps its results
        write_summary(args.outdir, results, header)
    failed = [r["step"] for r in results if r["status"] == "failed"]
    print(
        f"gpu-check: {header}; failed: {', '.join(failed) or 'none'}; see {args.outdir}/summary.md"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
