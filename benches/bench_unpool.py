"""max_unpool2d vs F.max_unpool2d: forward and backward.

VGG16 feature maps unpooled 2x2/2 (SegNet/DeconvNet decoders, FCN's unpooling variant),
batch 1 and 8, plus an overlapping 3x3/2 (AlexNet-style) case for the general path.
Indices come from max-pooling random maps. `python -m benches.report -k unpool` prints
the table (ours vs ATen, and on CUDA the bandwidth).
"""

import os

import pytest
import torch
import torch.nn.functional as F

import fcn_kernels as fk
from benches.conftest import QUICK, op_matrix, run

# name: (N, C, unpooled H, W), kernel, stride
CASES = {
    "vgg 8x64x56->112": ((8, 64, 112, 112), 2, 2),  # the VGG-sized map
    "vgg 1x64x112->224": ((1, 64, 224, 224), 2, 2),
    "vgg 8x256x28->56": ((8, 256, 56, 56), 2, 2),
    "vgg 8x512x14->28": ((8, 512, 28, 28), 2, 2),
    "3x3s2 8x64x27->55": ((8, 64, 55, 55), 3, 2),  # overlapping windows
}
if QUICK:
    CASES = {"quick 2x3x4->9": ((2, 3, 9, 9), 2, 2), "quick 3x3s2": ((2, 3, 9, 9), 3, 2)}

IMPLS = {"ours": fk.max_unpool2d, "aten": F.max_unpool2d}


# The GPU forward's implementations (FCN_KERNELS_UNPOOL). By default the one the
# environment selects (gpu-check's variants step runs one process per value); with
# FCN_BENCH_VARIANTS=1 one run times both, ATen again per variant so the report pairs each.
VARIANTS = (
    ["gated", "ondemand"]
    if os.environ.get("FCN_BENCH_VARIANTS") == "1"
    else [os.environ.get("FCN_KERNELS_UNPOOL") or "gated"]
)


@pytest.mark.parametrize("variant", VARIANTS)
@op_matrix(CASES, IMPLS)
def test_unpool(benchmark, monkeypatch, device, case, dtype, layout, direction, impl, variant):
    if variant != VARIANTS[0] and (device != "cuda" or direction == "bwd"):
        pytest.skip("a CUDA forward variant")
    monkeypatch.setenv("FCN_KERNELS_UNPOOL", variant)
    shape, k, s = CASES[case]
    x = torch.randn(shape, device=device)
    if layout == "cl":
        x = x.contiguous(memory_format=torch.channels_last)
    v, idx = F.max_pool2d(x, k, s, return_indices=True)
    v = v.to(getattr(torch, dtype)).requires_grad_(direction != "fwd")
    f = IMPLS[impl]
    args = (idx, k, s, 0, shape[2:])
    # Bytes moved by an ideal kernel: values and indices read once, output written once
    # (forward: pooled values in, unpooled map out; backward: the reverse).
    io = idx.numel() * (8 + v.element_size()) + x.numel() * v.element_size()
    benchmark.extra_info.update(op="unpool", case=case, bytes=io)
    if direction == "fwd":
        run(benchmark, lambda: f(v, *args), device)
    elif direction == "bwd":
        y = f(v, *args)
        g = torch.randn_like(y)
        run(benchmark, lambda: torch.autograd.grad(y, v, g, retain_graph=True), device)
    else:
        g = torch.randn_like(f(v.detach(), *args))
        run(benchmark, lambda: torch.autograd.grad(f(v, *args), v, g), device)
