"""bilinear_upsample vs F.interpolate(mode="bilinear"): forward, backward, both."""

import os

import pytest
import torch
import torch.nn.functional as F

import fcn_kernels as fk
from benches.conftest import QUICK, op_matrix, run

# FCN shapes (VGG16 FCN at 500x500 input, 21 classes): score maps upsampled x32 / x8,
# score maps and VGG feature maps x2, a non-integer scale, batch 1 and 8.
CASES = {
    "x32 1x21x16x16->512": ((1, 21, 16, 16), dict(size=(512, 512))),
    "x8 1x21x63x63": ((1, 21, 63, 63), dict(scale_factor=8)),
    "x8 8x21x63x63": ((8, 21, 63, 63), dict(scale_factor=8)),
    "x2 8x21x34x34": ((8, 21, 34, 34), dict(scale_factor=2)),
    "x2 8x64x64x64": ((8, 64, 64, 64), dict(scale_factor=2)),
    "x2.5 1x21x40x40": ((1, 21, 40, 40), dict(scale_factor=2.5)),
}
if QUICK:
    CASES = {"quick x3": ((2, 3, 5, 6), dict(scale_factor=3))}

IMPLS = {
    "ours": lambda x, kw: fk.bilinear_upsample(x, **kw),
    "aten": lambda x, kw: F.interpolate(x, mode="bilinear", **kw),
}


# The GPU backward's implementations (FCN_KERNELS_BILINEAR_BACKWARD). By default the one
# the environment selects (gpu-check's variants step runs one process per value); with
# FCN_BENCH_VARIANTS=1 one run times both, ATen again per variant so the report pairs each.
VARIANTS = (
    ["separable", "direct"]
    if os.environ.get("FCN_BENCH_VARIANTS") == "1"
    else [os.environ.get("FCN_KERNELS_BILINEAR_BACKWARD") or "separable"]
)


@pytest.mark.parametrize("variant", VARIANTS)
@op_matrix(CASES, IMPLS)
def test_bilinear(benchmark, monkeypatch, device, case, dtype, layout, direction, impl, variant):
    if variant != VARIANTS[0] and (device != "cuda" or direction == "fwd"):
        pytest.skip("a CUDA backward variant")
    monkeypatch.setenv("FCN_KERNELS_BILINEAR_BACKWARD", variant)
    shape, kw = CASES[case]
    x = torch.randn(shape, device=device, dtype=getattr(torch, dtype))
    if layout == "cl":
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(direction != "fwd")
    f = IMPLS[impl]
    out_shape = f(x.detach(), kw).shape
    # Bytes moved by an ideal kernel: read the input once, write the output once.
    elem = x.element_size()
    io = (x.numel() + torch.Size(out_shape).numel()) * elem
    benchmark.extra_info.update(op="bilinear", case=case, bytes=io)
    if direction == "fwd":
        run(benchmark, lambda: f(x, kw), device)
    elif direction == "bwd":
        y = f(x, kw)
        g = torch.randn_like(y)
        run(benchmark, lambda: torch.autograd.grad(y, x, g, retain_graph=True), device)
    else:
        g = torch.randn(out_shape, device=device, dtype=x.dtype)
        run(benchmark, lambda: torch.autograd.grad(f(x, kw), x, g), device)
