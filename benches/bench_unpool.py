"""Max-unpooling: fcn_kernels.max_unpool2d vs ATen's F.max_unpool2d, forward and backward.

Shapes are VGG16 feature maps unpooled 2x2/2 (SegNet/DeconvNet decoders, FCN's unpooling
variant), batch 1 and 8, plus an overlapping 3x3/2 (AlexNet-style) case for the general
path. Indices come from max-pooling random maps.

    pytest benches/bench_unpool.py                  # pytest-benchmark suite
    python benches/bench_unpool.py [--device cuda] [--quick]   # table: ours vs ATen

The table gives median times, ours/ATen (below 1 is faster) and, on CUDA, the achieved
bandwidth: bytes that must move (inputs read once, outputs written once) per second,
also as a fraction of the device's peak (or of a measured device copy when the peak of
the card is not known).
"""
import argparse
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch.utils import benchmark as tbench

import fcn_kernels as fk

# name: (pooled input N, C, H, W; kernel; stride; unpooled H, W)
CASES = {
    "vgg-112/8": ((8, 64, 56, 56), 2, 2, (112, 112)),   # the VGG-sized map
    "vgg-112/1": ((1, 64, 56, 56), 2, 2, (112, 112)),
    "vgg-224/1": ((1, 64, 112, 112), 2, 2, (224, 224)),
    "vgg-56/8": ((8, 256, 28, 28), 2, 2, (56, 56)),
    "vgg-28/8": ((8, 512, 14, 14), 2, 2, (28, 28)),
    "alex-3x3s2/8": ((8, 64, 27, 27), 3, 2, (55, 55)),
}
QUICK = ["vgg-112/8", "vgg-112/1", "alex-3x3s2/8"]
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
IMPLS = {"aten": F.max_unpool2d, "ours": fk.max_unpool2d}

# Peak DRAM bandwidth (bytes/s) of cards these benchmarks have run on.
PEAK_BANDWIDTH = {"H100 80GB HBM3": 3.35e12, "H100 PCIe": 2.0e12, "H200": 4.8e12}


def make_inputs(case, dtype, device, channels_last=False):
    (n, c, h, w), k, s, out_hw = CASES[case]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, *out_hw, generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y, i = F.max_pool2d(x, k, s, return_indices=True)
    assert y.shape == (n, c, h, w)
    return y.to(device=device, dtype=dtype), i.to(device), k, s, out_hw


def make_fn(case, dtype, device, impl, direction, channels_last=False):
    """A no-argument callable running one forward or one backward."""
    y, i, k, s, out_hw = make_inputs(case, dtype, device, channels_last)
    op = IMPLS[impl]
    if direction == "forward":
        return lambda: op(y, i, k, s, 0, out_hw)
    y.requires_grad_()
    out = op(y, i, k, s, 0, out_hw)
    grad = torch.randn_like(out)
    return lambda: torch.autograd.grad(out, y, grad, retain_graph=True)


def bytes_moved(case, dtype, direction):
    (n, c, h, w), _, _, (oh, ow) = CASES[case]
    es = torch.empty((), dtype=dtype).element_size()
    small, big = n * c * h * w, n * c * oh * ow
    if direction == "forward":  # read input + indices, write output
        return small * (es + 8) + big * es
    return small * (8 + es) + big * es  # read indices + grad_output, write grad_input


def synchronized(fn, device):
    if device == "cuda":
        def run():
            fn()
            torch.cuda.synchronize()
        return run
    return fn


# ---------------------------------------------------------------------------------
# pytest-benchmark suite
# ---------------------------------------------------------------------------------

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not (torch.cuda.is_available() and fk.cuda_built()), reason="needs a CUDA GPU"))]


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("direction", ["forward", "backward"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("device", DEVICES)
def test_unpool(benchmark, device, case, dtype, direction, impl):
    benchmark.group = f"unpool {case} {dtype} {direction} {device}"
    fn = make_fn(case, DTYPES[dtype], device, impl, direction)
    benchmark(synchronized(fn, device))


# ---------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------

def median_seconds(fn, device, min_run_time):
    fn()  # warm up (allocator, first-call costs)
    timer = tbench.Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    if device == "cuda":
        torch.cuda.synchronize()
    return timer.blocked_autorange(min_run_time=min_run_time).median


def device_bandwidth():
    """(bytes/s, what it is) of the current CUDA device."""
    name = torch.cuda.get_device_name()
    for key, value in PEAK_BANDWIDTH.items():
        if key in name:
            return value, f"peak of {name}"
    a = torch.empty(256 * 2 ** 20, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    t = median_seconds(lambda: b.copy_(a), "cuda", 0.5)
    return 2 * a.numel() / t, f"measured copy on {name}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--min-run-time", type=float, default=0.3)
    args = parser.parse_args(argv)
    dev = args.device
    peak = device_bandwidth() if dev == "cuda" else None
    print(f"torch {torch.__version__}, device {dev}"
          + (f" ({torch.cuda.get_device_name()})" if dev == "cuda" else
             f" ({torch.get_num_threads()} threads)"))
    if peak:
        print(f"bandwidth reference: {peak[0] / 1e9:.0f} GB/s, {peak[1]}")
    head = f"{'case':<14} {'dtype':<9} {'layout':<6} {'dir':<4} {'aten ms':>9} {'ours ms':>9} {'ratio':>6}"
    if peak:
        head += f" {'ours GB/s':>10} {'of peak':>8}"
    print(head)
    cases = QUICK if args.quick else list(CASES)
    for case, dname, cl, direction in itertools.product(
            cases, args.dtypes.split(","), (False, True), ("forward", "backward")):
        dtype = DTYPES[dname]
        t = {impl: median_seconds(make_fn(case, dtype, dev, impl, direction, cl), dev,
                                  args.min_run_time) for impl in IMPLS}
        line = (f"{case:<14} {dname:<9} {'NHWC' if cl else 'NCHW':<6} {direction[:3]:<4} "
                f"{t['aten'] * 1e3:9.3f} {t['ours'] * 1e3:9.3f} {t['ours'] / t['aten']:6.2f}")
        if peak:
            bw = bytes_moved(case, dtype, direction) / t["ours"]
            line += f" {bw / 1e9:10.0f} {bw / peak[0]:8.0%}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
