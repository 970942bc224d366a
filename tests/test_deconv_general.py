"""conv_transpose2d_crop with a general (dense) weight on CPU at sizes the small random
tests in test_deconv.py / test_fuzz.py do not reach: the phase-decomposition path splits
its GEMMs into chunks of about 2 MiB of buffers, so only larger problems run several
chunks per thread, several weight-gradient slices and chunks that start mid-image."""

import pytest
import torch
import torch.nn.functional as F

import fcn_kernels as fk

from helpers import assert_close

# (N, Cin, Cout/groups, groups, H, W, kernel, stride, padding, dilation, output_padding,
#  offset, size)
CASES = {
    # FCN upscore8 geometry with 8 channels: 8 chunks in float64 (4 in float32), the
    # crop cutting through blocks on every side.
    "upscore8": (
        2,
        8,
        8,
        1,
        40,
        40,
        (16, 16),
        (8, 8),
        (0, 0),
        (1, 1),
        (0, 0),
        (31, 29),
        (290, 280),
    ),
    # groups, dilation, padding, output_padding, kernels not multiples of the stride;
    # two chunks, the second starting mid-image.
    "exotic": (5, 4, 3, 2, 40, 30, (5, 7), (3, 4), (2, 3), (1, 2), (1, 2), (4, 5), None),
}


def run(case, dtype, layout, bias=True, seed=0):
    n, cin, cg, groups, h, w, k, s, p, d, op, off, size = case
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cin, h, w, generator=gen, dtype=torch.float64).to(dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "noncontig":
        x = x.transpose(2, 3).contiguous().transpose(2, 3)
    wt = (
        torch.randn(cin, cg, *k, generator=gen, dtype=torch.float64) / (cin * k[0] * k[1]) ** 0.5
    ).to(dtype)
    b = torch.randn(cg * groups, generator=gen, dtype=torch.float64).to(dtype) if bias else None
    kw = dict(stride=s, padding=p, output_padding=op, groups=groups, dilation=d)
    leaves = [t.clone().requires_grad_() for t in (x, wt) + ((b,) if bias else ())]
    out = fk.conv_transpose2d_crop(
        *leaves[:2], leaves[2] if bias else None, offset=off, size=size, **kw
    )
    g = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(dtype)
    grads = torch.autograd.grad(out, leaves, g)
    return out, grads, (x, wt, b, g, kw, off)


def reference(x, wt, b, g, kw, off, size_like):
    leaves = [
        t.detach().double().requires_grad_() for t in (x, wt) + ((b,) if b is not None else ())
    ]
    full = F.conv_transpose2d(leaves[0], leaves[1], leaves[2] if b is not None else None, **kw)
    oy, ox = off
    ref = full[..., oy : oy + size_like.shape[2], ox : ox + size_like.shape[3]]
    return ref, torch.autograd.grad(ref, leaves, g.double())


@pytest.mark.parametrize("layout", ["nchw", "channels_last", "noncontig"])
@pytest.mark.parametrize("name", list(CASES))
def test_large_matches_aten(name, layout):
    out, grads, (x, wt, b, g, kw, off) = run(CASES[name], torch.float64, layout)
    ref, ref_grads = reference(x, wt, b, g, kw, off, out)
    assert out.shape == ref.shape
    assert out.is_contiguous(
        memory_format=torch.channels_last if layout == "channels_last" else torch.contiguous_format
    )
    assert_close(out, ref)
    for a, r in zip(grads, ref_grads):
        assert_close(a, r, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_large_reduced_precision(dtype):
    # float accumulation inside each GEMM: errors stay at the dtype's rounding of the
    # result's magnitude, which the weight gradient (a sum over ~20000 blocks) scales.
    out, grads, (x, wt, b, g, kw, off) = run(CASES["upscore8"], dtype, "nchw")
    ref, ref_grads = reference(x, wt, b, g, kw, off, out)
    eps = torch.finfo(dtype).eps
    assert (out.double() - ref).abs().max() <= 8 * eps * ref.abs().max()
    for a, r in zip(grads, ref_grads):
        assert (a.double() - r).abs().max() <= 8 * eps * r.abs().max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_same_bits_for_any_thread_count(dtype):
    # chunks and weight-gradient slices are fixed by the shapes, not the thread count
    prev = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            out, grads, _ = run(CASES["upscore8"], dtype, "nchw", seed=1)
            results.append((out, *grads))
    finally:
        torch.set_num_threads(prev)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)
