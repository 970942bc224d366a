"""Whole FCN forward+backward, upsample="fused" (ours) vs "aten", same weights.

    pytest benches/bench_model.py --benchmark-only        (the report's rows)
    python -m benches.bench_model --arch fcn8s --backbone vgg16 --size 128 --upsample aten fused

The command line times any model, prints the best of `--repeat` runs (after one warm-up)
and the largest output difference against the first mode.
"""

import argparse

import pytest
import torch

from benches.conftest import DEVICES, QUICK, run
from fcn.models import build_model
from fcn.timing import time_calls

# (backbone, input size): VGG16 at FCN's 500x500 on GPU; smaller on CPU (2 cores).
CASES = {"cpu": [("tiny", 256), ("vgg16", 128)], "cuda": [("vgg16", 500)]}
if QUICK:
    CASES = {"cpu": [("tiny", 32)], "cuda": [("tiny", 32)]}


def bench_model(arch, backbone, num_classes=21):
    """The model both timings use: seeded, upsample="aten", and non-zero score layers (a
    realistic, trained-like head, so the fused-vs-aten difference means something)."""
    torch.manual_seed(0)
    m = build_model(arch, backbone, num_classes, upsample="aten")
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.startswith("score") and p.dim() == 4:
                p.normal_(0, 0.01)
    return m.eval()


def forward_backward(model, x):
    """One timed step: forward, then backward of the output's sum; returns the output."""
    model.zero_grad(set_to_none=True)
    y = model(x)
    y.float().sum().backward()
    return y


@pytest.fixture(scope="module")
def models():
    cache = {}

    def get(backbone, device):
        if (backbone, device) not in cache:
            cache[(backbone, device)] = bench_model("fcn8s", backbone).to(device)
        return cache[(backbone, device)]

    return get


@pytest.mark.parametrize("impl", ["ours", "aten"])
@pytest.mark.parametrize("case", range(2))
@pytest.mark.parametrize("device", DEVICES)
def test_fcn8s_forward_backward(benchmark, models, device, case, impl):
    cases = CASES[device]
    if case >= len(cases):
        pytest.skip("no such case on this device")
    backbone, size = cases[case]
    model = models(backbone, device)
    model.set_upsample("fused" if impl == "ours" else "aten")
    x = torch.randn(1, 3, size, size, device=device)
    benchmark.extra_info.update(op="fcn8s", case=f"{backbone} 1x3x{size}x{size}")
    run(benchmark, lambda: forward_backward(model, x), device, rounds=2 if QUICK else 3)


def main(argv=None):
    p = argparse.ArgumentParser(description="Time a whole FCN forward+backward, fused vs aten.")
    p.add_argument("--arch", default="fcn8s")
    p.add_argument("--backbone", default="vgg16")
    p.add_argument("--num-classes", type=int, default=21)
    p.add_argument("--size", type=int, nargs="+", default=[128], help="H [W]")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--upsample", nargs="+", default=["aten", "fused"])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    args = p.parse_args(argv)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    h, w = (args.size * 2)[:2]
    model = bench_model(args.arch, args.backbone, args.num_classes).to(device=device, dtype=dtype)
    x = torch.randn(args.batch, 3, h, w, device=device, dtype=dtype)
    print(
        f"{args.arch} {args.backbone} {args.batch}x3x{h}x{w} {args.dtype} on {device} "
        f"(torch {torch.__version__}, {torch.get_num_threads()} threads), forward+backward:"
    )
    ref = None
    for mode in args.upsample:
        model.set_upsample(mode)
        y = forward_backward(model, x).detach()  # warm-up, and the output to compare
        t = min(time_calls(lambda: forward_backward(model, x), args.repeat, device, warmup=0))
        diff = (
            ""
            if ref is None
            else f"   max|diff| vs {args.upsample[0]}: {(y - ref).abs().max().item():.2e}"
        )
        ref = y if ref is None else ref
        print(f"  {mode:6s} {t * 1e3:10.1f} ms{diff}")


if __name__ == "__main__":
    main()
