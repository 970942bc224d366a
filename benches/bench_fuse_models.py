"""What fuse() changes in a CPU training step of third-party segmentation models.

Per model (random weights, train mode, SGD step on a cross-entropy loss): the share of
the unfused step spent in the ATen operations fuse rewrites (bilinear upsampling,
max-unpooling, a transposed convolution used through a crop; forward and backward, from
torch.profiler), the same share for fcn_kernels' operators in the fused step, and the
step time unfused / fused (runs interleaved, same weights, same process; ms = the best
run, speed-up = the median over pairs of adjacent runs of their ratio, which load that
drifts during the run hits alike). The smp Unet row (nothing rewritten) is the control:
its speed-up is the noise.

    python -m benches.bench_fuse_models [--size 256] [--batch 4] [--reps 15] [--threads N]

prints a Markdown table with the CPU. FCN_BENCH_QUICK=1 (CI, ``pytest benches``): one
small model, one repetition. Models: tests/thirdparty.py (torchvision, smp) and the
classic FCN-8s port (tests/helpers.py) on a small VGG-shaped backbone.
"""

import argparse
import os
import statistics
import sys
import time

import pytest
import torch
import torch.nn.functional as F

import fcn_kernels as fk
from benches.conftest import QUICK

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "tests"))
import thirdparty  # noqa: E402
from helpers import ClassicFCN  # noqa: E402

N_CLASS = 21
ATEN = ("aten::upsample_bilinear2d", "aten::max_unpool2d")  # (+ their _backward ops)


def classic_fcn8s(n, width=8):
    blocks = [(2, width), (2, 2 * width), (3, 4 * width), (3, 8 * width), (3, 8 * width)]
    model = ClassicFCN("fcn8s", n_class=n, blocks=blocks, fc=16 * width)
    with torch.no_grad():  # FCN's bilinear upsampling weights
        for name in ("upscore2", "upscore_pool4", "upscore8"):
            m = getattr(model, name)
            m.weight.copy_(fk.bilinear_kernel(n, m.kernel_size[0]))
    return model


MODELS = {"classic FCN-8s (VGG-shaped, width 8)": (None, classic_fcn8s)} | {
    k: v for k, v in thirdparty.MODELS.items()
}


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def _step_fn(net, params, x, target):
    opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9)

    def step():
        opt.zero_grad(set_to_none=True)
        out = thirdparty.outputs(net(x))[0]
        F.cross_entropy(out, target).backward()
        opt.step()

    return step


def _share(step, rewritten_deconv_weights):
    """Fraction of a step's CPU time in the operations fuse rewrites (ATen's, or ours)."""
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True
    ) as prof:
        with torch.profiler.record_function("step"):
            step()

    def matched(e):
        if e.name.startswith("fcn_kernels::") or e.name.startswith(ATEN):
            return True
        shapes = e.input_shapes or []
        if e.name == "aten::conv_transpose2d":
            return len(shapes) > 1 and shapes[1] in rewritten_deconv_weights
        if e.name == "aten::convolution_backward":  # (also plain convolutions: by weight)
            return len(shapes) > 2 and shapes[2] in rewritten_deconv_weights and shapes[1]
        return False

    def outermost(e):
        p = e.cpu_parent
        while p is not None:
            if matched(p):
                return False
            p = p.cpu_parent
        return True

    events = prof.events()
    total = sum(e.cpu_time_total for e in events if e.name == "step")
    part = sum(e.cpu_time_total for e in events if matched(e) and outermost(e))
    return part / total


def measure(name, size, batch, reps):
    torch.manual_seed(0)
    model = MODELS[name][1](N_CLASS).train()
    x = torch.randn(batch, 3, size, size)
    target = torch.randint(0, N_CLASS, (batch, size, size))
    fused = fk.fuse(model, (x,))
    deconvs = [r.split(":")[0] for r in fused.rewrites if "conv_transpose2d_crop" in r]
    weights = [list(model.get_submodule(d).weight.shape) for d in deconvs]
    steps = {
        k: _step_fn(net, list(model.parameters()), x, target)
        for k, net in (("aten", model), ("fused", fused))
    }
    for s in steps.values():  # warm-up (first-call allocations, the fused graph's caches)
        s()
    shares = {k: _share(s, weights) for k, s in steps.items()}
    times = {k: [] for k in steps}
    for _ in range(reps):  # interleaved, so that machine load hits both alike
        for k, s in steps.items():
            t = time.perf_counter()
            s()
            times[k].append(time.perf_counter() - t)
    best = {k: min(v) for k, v in times.items()}
    ratio = statistics.median(a / f for a, f in zip(times["aten"], times["fused"]))
    return {
        "model": name,
        "rewrites": len(fused.rewrites),
        "share_aten": shares["aten"],
        "share_fused": shares["fused"],
        "ms_aten": 1e3 * best["aten"],
        "ms_fused": 1e3 * best["fused"],
        "speedup": ratio,
    }


def table(rows, size, batch, reps):
    out = [
        f"CPU training step (forward, cross-entropy, backward, SGD), batch {batch}, "
        f"{size}x{size}, {N_CLASS} classes, {reps} runs each; {cpu_name()}, "
        f"torch threads: {torch.get_num_threads()}, ATen CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}, torch {torch.__version__}",
        "",
        "| model | rewrites | step in rewritten ops: ATen | fused (ours) | step ATen ms "
        "| fused ms | speed-up |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        out.append(
            f"| {r['model']} | {r['rewrites']} | {100 * r['share_aten']:.2g}% "
            f"| {100 * r['share_fused']:.2g}% | {r['ms_aten']:.0f} | {r['ms_fused']:.0f} "
            f"| {r['speedup']:.2f}x |"
        )
    return "\n".join(out)


def available():
    return [n for n, (pkg, _) in MODELS.items() if pkg is None or not thirdparty.missing(pkg)]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--models", nargs="*", help="substrings of model names (default: all)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    names = [n for n in available() if not a.models or any(s in n for s in a.models)]
    skipped = sorted(set(MODELS) - set(available()))
    rows = []
    for n in names:
        rows.append(measure(n, a.size, a.batch, a.reps))
        print(f"  {n}: {rows[-1]['speedup']:.2f}x", file=sys.stderr, flush=True)
    print(table(rows, a.size, a.batch, a.reps))
    if skipped:
        print(f"\n(not installed, skipped: {', '.join(skipped)})")


def test_fuse_models_quick():
    # CI runs every bench once in quick mode: one small model, one repetition, so that
    # this script cannot rot. The table takes minutes: `python -m benches.bench_fuse_models`.
    if not QUICK:
        pytest.skip("the table: python -m benches.bench_fuse_models (minutes)")
    rows = [measure(list(MODELS)[0], 32, 1, 1)]
    assert all(0 < r["share_aten"] < 1 and r["ms_fused"] > 0 for r in rows), table(rows, 32, 1, 1)


if __name__ == "__main__":
    main()
