"""conv_transpose2d_crop vs F.conv_transpose2d + slice on FCN's deconvolutions.

    pytest benches/bench_deconv.py --benchmark-only   (FCN_BENCH_QUICK=1: tiny shapes)

Shapes (VGG16 FCN-8s at 500x500, 21 classes): upscore2 (k4 s2, 16x16 -> 34x34),
upscore_pool4 (k4 s2, 34x34 -> 70x70), upscore8 (k16 s8, 70x70 -> crop 31, 500x500), each
with FCN's bilinear weight (channel-diagonal, frozen as in the classic port) and with a
dense learned ("general") weight; FCN-32s's upscore (k64 s32, 16x16 -> crop 19, 500x500,
bilinear). Forward, backward, and forward + backward. `impl` pairs ours with the
reference for the report.

On CUDA with FCN_BENCH_VARIANTS=1, `test_cuda_variant` also times the variants of csrc/deconv/variant.h, each
paired with the reference in the same run, on the cases it changes:
`variant=tile` (FCN_KERNELS_DECONV_GRAD_INPUT=tile: the frozen bilinear weights'
input gradient) and `variant=cudnn` (FCN_KERNELS_DECONV_LOWP=cudnn: bfloat16 forward,
and the frozen weights' input gradient). The default rows are test_forward's and
test_backward's.
"""

import os

import pytest
import torch
import torch.nn.functional as F

import fcn_kernels as fk
from benches.conftest import DEVICES, HAS_CUDA, QUICK, run as timed_run

C = 21
# name: (input HxW, kernel, stride, offset, crop size, weight kind)
SHAPES = {
    "upscore2-bilinear": (16, 4, 2, 0, 34, "bilinear"),
    "upscore2-general": (16, 4, 2, 0, 34, "general"),
    "upscore_pool4-bilinear": (34, 4, 2, 0, 70, "bilinear"),
    "upscore_pool4-general": (34, 4, 2, 0, 70, "general"),
    "upscore8-bilinear": (70, 16, 8, 31, 500, "bilinear"),
    "upscore8-general": (70, 16, 8, 31, 500, "general"),
    "upscore32-bilinear": (16, 64, 32, 19, 500, "bilinear"),
}
if QUICK:
    SHAPES = {
        "upscore8-bilinear": (12, 16, 8, 31, 64, "bilinear"),
        "upscore2-general": (4, 4, 2, 0, 10, "general"),
    }

DTYPES = [torch.float32, torch.bfloat16]
BATCHES = [1] if QUICK else [1, 8]


def make(shape, batch, device, dtype, requires_grad):
    hw, k, s, off, size, kind = SHAPES[shape]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, C, hw, hw, generator=g).to(device=device, dtype=dtype)
    w = (
        fk.bilinear_kernel(C, k)
        if kind == "bilinear"
        else torch.randn(C, C, k, k, generator=g) / (C * k * k) ** 0.5
    ).to(device=device, dtype=dtype)
    x.requires_grad_(requires_grad)
    w.requires_grad_(requires_grad and kind == "general")  # FCN freezes the bilinear weight
    return x, w, dict(stride=s, offset=(off, off), size=(size, size))


def run(impl, x, w, kw):
    if impl == "ours":
        return fk.conv_transpose2d_crop(x, w, **kw)
    oy, ox = kw["offset"]
    h, w_ = kw["size"]
    return F.conv_transpose2d(x, w, stride=kw["stride"])[..., oy : oy + h, ox : ox + w_]


def rounds(device, shape):
    return 20 if device == "cuda" or QUICK else (5 if shape[:8] in ("upscore8", "upscore3") else 30)


def cases(test):
    """The parameters of every timing test (applied in the order that names the tests)."""
    test = pytest.mark.parametrize("device", DEVICES)(test)
    test = pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))(
        test
    )
    test = pytest.mark.parametrize("shape", list(SHAPES))(test)
    test = pytest.mark.parametrize("batch", BATCHES)(test)
    return pytest.mark.parametrize("impl", ["ref", "ours"])(test)


def time_forward(benchmark, device, dtype, shape, batch, impl, tag=""):
    x, w, kw = make(shape, batch, device, dtype, False)
    benchmark.group = f"deconv-fwd-{device}{tag}-{dtype}-{shape}-b{batch}"
    out_elems = batch * C * kw["size"][0] * kw["size"][1]
    benchmark.extra_info.update(
        op="deconv",
        case=f"{shape} b{batch}",
        direction="fwd",
        bytes=(x.numel() + w.numel() + out_elems) * x.element_size(),
    )
    with torch.no_grad():
        timed_run(benchmark, lambda: run(impl, x, w, kw), device, rounds(device, shape))


def time_backward(benchmark, device, dtype, shape, batch, impl, tag=""):
    x, w, kw = make(shape, batch, device, dtype, True)
    out = run(impl, x, w, kw)
    grad = torch.randn_like(out)
    leaves = [t for t in (x, w) if t.requires_grad]
    benchmark.group = f"deconv-bwd-{device}{tag}-{dtype}-{shape}-b{batch}"
    benchmark.extra_info.update(
        op="deconv",
        case=f"{shape} b{batch}",
        direction="bwd",
        bytes=(out.numel() + sum(t.numel() for t in leaves)) * x.element_size(),
    )
    timed_run(
        benchmark,
        lambda: torch.autograd.grad(out, leaves, grad, retain_graph=True),
        device,
        rounds(device, shape),
    )


@cases
def test_forward(benchmark, device, dtype, shape, batch, impl):
    time_forward(benchmark, device, dtype, shape, batch, impl)


@cases
def test_backward(benchmark, device, dtype, shape, batch, impl):
    time_backward(benchmark, device, dtype, shape, batch, impl)


# variant: (environment variable, value)
VARIANTS = {
    "tile": ("FCN_KERNELS_DECONV_GRAD_INPUT", "tile"),
    "cudnn": ("FCN_KERNELS_DECONV_LOWP", "cudnn"),
}


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.skipif(
    os.environ.get("FCN_BENCH_VARIANTS") != "1",
    reason="FCN_BENCH_VARIANTS=1 (gpu-check times the variants one process per value)",
)
@pytest.mark.parametrize("impl", ["ref", "ours"])
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("direction", ["fwd", "bwd"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_cuda_variant(benchmark, monkeypatch, variant, direction, dtype, shape, batch, impl):
    # Only where the variant changes what runs: the input gradient of the gather path
    # (frozen bilinear weights; a learned square weight takes cuDNN), and for "cudnn"
    # low precision only.
    bilinear = SHAPES[shape][5] == "bilinear"
    if variant == "tile" and (direction == "fwd" or not bilinear):
        pytest.skip("the tile variant changes the frozen weights' input gradient only")
    if variant == "cudnn" and (dtype == torch.float32 or (direction == "bwd" and not bilinear)):
        pytest.skip("the cudnn variant changes the gather path's float16/bfloat16 only")
    monkeypatch.setenv(*VARIANTS[variant])
    timer = time_forward if direction == "fwd" else time_backward
    timer(benchmark, "cuda", dtype, shape, batch, impl, tag=f"-{variant}")


@cases
def test_forward_backward(benchmark, device, dtype, shape, batch, impl):
    """One training step's worth: forward, then the gradients of every learned operand."""
    x, w, kw = make(shape, batch, device, dtype, True)
    leaves = [t for t in (x, w) if t.requires_grad]
    grad = torch.randn_like(run(impl, x.detach(), w.detach(), kw))
    benchmark.group = f"deconv-fwdbwd-{device}-{dtype}-{shape}-b{batch}"
    benchmark.extra_info.update(op="deconv", case=f"{shape} b{batch}", direction="fwd+bwd")
    timed_run(
        benchmark,
        lambda: torch.autograd.grad(run(impl, x, w, kw), leaves, grad),
        device,
        rounds(device, shape),
    )


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("shape", list(SHAPES))
def test_peak_memory_cuda(shape):
    """Peak CUDA memory of one forward, ours vs the reference (printed for the report)."""
    x, w, kw = make(shape, 8 if not QUICK else 1, "cuda", torch.float32, False)
    peaks = {}
    for impl in ("ref", "ours"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        with torch.no_grad():
            out = run(impl, x, w, kw).contiguous()
        torch.cuda.synchronize()
        peaks[impl] = torch.cuda.max_memory_allocated() - base
        del out
    print(
        f"\n{shape}: peak ref {peaks['ref'] / 2**20:.1f} MiB, ours {peaks['ours'] / 2**20:.1f} MiB"
    )
    assert peaks["ours"] <= peaks["ref"]
