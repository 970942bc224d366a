"""Backward passes on every gradient layout autograd hands them, vs ATen's gradients:
expanded (loss = y.sum() / y.mean()), constant per plane, expanded over the batch,
transposed, sliced from a larger gradient (channels, batch, space), channels_last."""

import pytest
import torch
import torch.nn.functional as F

import fcn_kernels as fk

FK = torch.ops.fcn_kernels


def _layouts(shape):
    n, c, h, w = shape
    return {
        "sum": torch.ones(()).expand(shape),
        "mean": torch.full((), 1.0 / (n * c * h * w)).expand(shape),
        "plane_constant": torch.randn(n, c, 1, 1).expand(shape),
        "plane_constant_strided": torch.randn(c, n).t()[:, :, None, None].expand(shape),
        "batch_expanded": torch.randn(1, c, h, w).expand(shape),
        "transposed": torch.randn(n, c, w, h).transpose(2, 3),
        "channel_slice": torch.randn(n, c + 3, h, w)[:, 2 : 2 + c],
        "batch_slice": torch.randn(n + 2, c, h, w)[1 : 1 + n],
        "spatial_slice": torch.randn(n, c, h + 2, w + 3)[:, :, 1 : 1 + h, 2 : 2 + w],
        "channels_last": torch.randn(shape).contiguous(memory_format=torch.channels_last),
        "channels_last_slice": torch.randn(n, c + 2, h, w).contiguous(
            memory_format=torch.channels_last
        )[:, 1 : 1 + c],
    }


LAYOUTS = list(_layouts((1, 1, 1, 1)))
DTYPES = [torch.float32, torch.float64, torch.bfloat16]
TOL = {
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    torch.float64: dict(atol=1e-12, rtol=1e-12),
    torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
}


def _check(ours_fn, ref_fn, inputs, layout, dtype, scale=1.0):
    """ours and ATen on the same inputs and the same (layout) gradient; the reference in
    float64 on the rounded inputs."""
    inputs = [
        t.to(dtype).requires_grad_(t.is_floating_point()) if t.is_floating_point() else t
        for t in inputs
    ]
    out = ours_fn(*inputs)
    g = _layouts(tuple(out.shape))[layout].to(dtype)
    diff = [t for t in inputs if t.is_floating_point() and t.requires_grad]
    ours = torch.autograd.grad(out, diff, g)
    ref_inputs = [
        t.detach().double().requires_grad_(True) if t.is_floating_point() else t for t in inputs
    ]
    ref_out = ref_fn(*ref_inputs)
    ref = torch.autograd.grad(ref_out, [t for t in ref_inputs if t.is_floating_point()], g.double())
    for a, r in zip(ours, ref):
        assert a.dtype == dtype
        tol = dict(TOL[dtype])
        tol["atol"] *= max(1.0, r.abs().max().item()) * scale
        torch.testing.assert_close(a.double(), r, **tol)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(
    "kw", [dict(scale_factor=2.5), dict(size=(7, 5), align_corners=True), dict(size=(13, 4))]
)
def test_bilinear(layout, dtype, kw):
    x = torch.randn(2, 3, 6, 8)
    _check(
        lambda t: fk.bilinear_upsample(t, **kw),
        lambda t: F.interpolate(t, mode="bilinear", **kw),
        [x],
        layout,
        dtype,
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("big", [False, True], ids=["small", "streaming"])
def test_unpool(layout, dtype, big):
    shape = (2, 8, 90, 130) if big else (2, 3, 7, 9)
    v, idx = F.max_pool2d(torch.randn(shape), 2, ceil_mode=True, return_indices=True)
    if layout.startswith("channels_last"):
        v = v.contiguous(memory_format=torch.channels_last)
        idx = idx.contiguous(memory_format=torch.channels_last)
    out = shape[2:]
    _check(
        lambda t, i: fk.max_unpool2d(t, i, 2, output_size=out),
        lambda t, i: F.max_unpool2d(t, i, 2, output_size=out),
        [v, idx],
        layout,
        dtype,
    )


def test_unpool_constant_gradient_checks_indices():
    v, idx = F.max_pool2d(torch.randn(1, 2, 6, 6), 2, return_indices=True)
    idx[0, 1, 2, 0] = 36
    g = torch.ones(()).expand(1, 2, 6, 6)
    with pytest.raises(IndexError, match=r"indices\[0, 1, 2, 0\] = 36"):
        FK.max_unpool2d_backward(g, idx, [2, 2], [2, 2], [0, 0], True)


WEIGHTS = {
    "bilinear": lambda: (fk.bilinear_kernel(3, 4), None, 1),
    "general_bias": lambda: (torch.randn(3, 2, 4, 4), torch.randn(2), 1),
    "groups": lambda: (torch.randn(4, 3, 3, 3), torch.randn(6), 2),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("weight", list(WEIGHTS))
def test_deconv(layout, dtype, weight):
    w, b, groups = WEIGHTS[weight]()
    x = torch.randn(2, w.shape[0], 5, 6)
    off, size = (1, 2), (8, 9)
    inputs = [x, w] + ([b] if b is not None else [])

    def ours(x, w, b=None):
        return fk.conv_transpose2d_crop(x, w, b, stride=2, groups=groups, offset=off, size=size)

    def ref(x, w, b=None):
        y = F.conv_transpose2d(x, w, b, stride=2, groups=groups)
        return y[:, :, off[0] : off[0] + size[0], off[1] : off[1] + size[1]]

    _check(ours, ref, inputs, layout, dtype, scale=4.0)


@pytest.mark.parametrize("layout", ["sum", "plane_constant"])
def test_deconv_fcn_shape(layout):
    # FCN's upscore8 geometry: crop inside the full map, 16x16 taps, stride 8.
    x = torch.randn(1, 5, 11, 13)
    w = torch.randn(5, 5, 16, 16)

    def ref(x, w):
        return F.conv_transpose2d(x, w, stride=8)[:, :, 31 : 31 + 60, 31 : 31 + 70]

    _check(
        lambda x, w: fk.conv_transpose2d_crop(x, w, stride=8, offset=(31, 31), size=(60, 70)),
        ref,
        [x, w],
        layout,
        torch.float32,
        scale=4.0,
    )
