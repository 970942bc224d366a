"""float32 on CUDA (docs/cuda.md, "float32 precision on CUDA"): with TF32 off every
deconv path matches float64 at float32 tolerance; with TF32 on, the op matches
F.conv_transpose2d + slicing (which obeys the same flag) at TF32 tolerance.

Each runs on "emu" (the GPU code emulated on the CPU; ATen's CPU convolution has no
TF32, so there the parity test checks the plumbing) and on "cuda" where a GPU is."""

import contextlib

import pytest
import torch
import torch.nn.functional as F

import fcn_kernels as fk
from fcn_kernels.testing import emulated_cuda
from helpers import requires_cuda


@pytest.fixture(params=["emu", pytest.param("cuda", marks=[requires_cuda, pytest.mark.cuda])])
def gdev(request):
    """A device on which the GPU code runs: "cpu" under emulated_cuda(), or "cuda"."""
    with emulated_cuda() if request.param == "emu" else contextlib.nullcontext():
        yield "cpu" if request.param == "emu" else "cuda"


# (cin, cout, k, stride, groups, weight kind, requires_grad): which path each takes is
# in csrc/deconv/gpu.h (use_gather, gather_fits).
PATHS = {
    "gather frozen bilinear": (6, 6, 4, 2, 1, "bilinear", False),
    "gather frozen square": (6, 6, 3, 2, 1, "random", False),
    "gather depthwise trained": (5, 5, 4, 2, 5, "random", True),
    "dense trained": (6, 7, 4, 2, 1, "random", True),
    "dense frozen, many taps": (32, 32, 4, 1, 1, "random", False),
}


def _problem(path, device):
    cin, cout, k, s, groups, kind, trained = PATHS[path]
    x = torch.randn(2, cin, 9, 8, dtype=torch.float64)
    if kind == "bilinear":
        w = fk.bilinear_kernel(cin, k).double()
    else:
        w = torch.randn(cin, cout // groups, k, k, dtype=torch.float64)
    off, size = (1, 2), ((9 - 1) * s + k - 3, (8 - 1) * s + k - 4)
    full = F.conv_transpose2d(x, w, stride=s, groups=groups)[..., 1 : 1 + size[0], 2 : 2 + size[1]]
    g = torch.randn(full.shape, dtype=torch.float64)
    kw = dict(stride=s, groups=groups, offset=off, size=size)
    xs, ws, gs = (t.float().to(device) for t in (x, w, g))
    return x, w, g, xs.requires_grad_(), ws.requires_grad_(trained), gs, kw


def _grads(y, x, w, g):
    return list(torch.autograd.grad(y, (x, w) if w.requires_grad else (x,), g))


def _assert_close_rel(got, want, rel):
    """max |got - want| <= rel * max |want| (errors scale with the result's magnitude)."""
    got, want = got.detach().cpu().double(), want.detach().cpu().double()
    err, scale = (got - want).abs().max().item(), want.abs().max().item()
    assert err <= rel * scale, f"error {err:.3g} > {rel} x {scale:.3g}"


def test_suite_runs_with_tf32_off():
    # tests/conftest.py: float32 tolerances everywhere assume float32 arithmetic.
    assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32


@pytest.mark.parametrize("path", list(PATHS))
def test_tf32_off_every_path_matches_float64(gdev, path):
    x, w, g, xs, ws, gs, kw = _problem(path, gdev)
    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_(ws.requires_grad)
    ref = F.conv_transpose2d(xr, wr, stride=kw["stride"], groups=kw["groups"])
    (oy, ox), (h, wd) = kw["offset"], kw["size"]
    ref = ref[..., oy : oy + h, ox : ox + wd]
    y = fk.conv_transpose2d_crop(xs, ws, **kw)
    _assert_close_rel(y, ref, 1e-5)
    for a, b in zip(_grads(y, xs, ws, gs), _grads(ref, xr, wr, g)):
        _assert_close_rel(a, b, 1e-5)


@pytest.mark.parametrize("path", ["dense trained", "dense frozen, many taps"])
def test_tf32_on_matches_aten_conv_transpose2d(gdev, path):
    _, _, _, xs, ws, gs, kw = _problem(path, gdev)
    old = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = True
    try:
        y = fk.conv_transpose2d_crop(xs, ws, **kw)
        got = [y, *_grads(y, xs, ws, gs)]
        ref = F.conv_transpose2d(xs, ws, stride=kw["stride"], groups=kw["groups"])
        (oy, ox), (h, wd) = kw["offset"], kw["size"]
        ref = ref[..., oy : oy + h, ox : ox + wd]
        want = [ref, *_grads(ref, xs, ws, gs)]
    finally:
        torch.backends.cudnn.allow_tf32 = old
    for a, b in zip(got, want):
        _assert_close_rel(a, b, 1e-3)  # TF32: 10-bit mantissa products, float32 sums
