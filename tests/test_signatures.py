"""Every argument form the torch.nn.functional counterparts accept, treated the same
way: the same result, the same warnings, the same exception types."""

import warnings

import pytest
import torch
import torch.nn.functional as F

import fcn_kernels as fk

TOL = dict(atol=1e-5, rtol=1e-5)


def _same_error(ours, ref):
    with pytest.raises(Exception) as want:
        ref()
    with pytest.raises(type(want.value)):
        ours()


@pytest.mark.parametrize(
    "kw",
    [
        dict(size=(7, 9), align_corners=None),
        dict(scale_factor=1.7, align_corners=None),
        dict(scale_factor=1.7, recompute_scale_factor=True),
        dict(scale_factor=(2.5, 0.6), recompute_scale_factor=True, align_corners=True),
        dict(scale_factor=1.7, recompute_scale_factor=False),
        dict(scale_factor=2, recompute_scale_factor=None),
        dict(size=5, recompute_scale_factor=False),
        dict(size=(3, 4), antialias=False),
        dict(size=(3, 4), antialias=True),  # runs ATen's antialiased kernel
        dict(scale_factor=0.45, antialias=True, align_corners=True),
    ],
)
def test_bilinear_forms(kw):
    x = torch.randn(2, 3, 8, 10, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # F.interpolate warns for none of these: nor do we
        ref = F.interpolate(x, mode="bilinear", **kw)
        ours = fk.bilinear_upsample(x, **kw)
    torch.testing.assert_close(ours, ref, **TOL)
    g = torch.randn_like(ref)
    torch.testing.assert_close(
        torch.autograd.grad(ours, x, g)[0], torch.autograd.grad(ref, x, g)[0], **TOL
    )


def test_bilinear_module_forms():
    x = torch.randn(1, 2, 5, 7)
    ref = torch.nn.Upsample(scale_factor=1.3, mode="bilinear", recompute_scale_factor=True)
    ours = fk.nn.BilinearUpsample(scale_factor=1.3, align_corners=None, recompute_scale_factor=True)
    torch.testing.assert_close(ours(x), ref(x), **TOL)


@pytest.mark.parametrize(
    "x,kw",
    [
        (torch.randn(3, 8, 8), dict(size=4)),  # unbatched: F raises
        (torch.randn(1, 3, 8, 8, 8), dict(size=4)),
        (torch.randn(1, 3, 8, 8), dict(size=4, recompute_scale_factor=True)),
        (torch.randn(1, 3, 8, 8), dict(size=4, scale_factor=2)),
        (torch.randn(1, 3, 8, 8), dict()),
    ],
)
def test_bilinear_errors_like_interpolate(x, kw):
    _same_error(
        lambda: fk.bilinear_upsample(x, **kw), lambda: F.interpolate(x, mode="bilinear", **kw)
    )


@pytest.mark.parametrize("bias", [False, True])
def test_conv_transpose2d_crop_unbatched(bias):
    x = torch.randn(4, 5, 6, requires_grad=True)
    w = torch.randn(4, 3, 4, 4, requires_grad=True)
    b = torch.randn(3, requires_grad=True) if bias else None
    ref = F.conv_transpose2d(x, w, b, stride=2)[:, 1:9, 2:12]
    ours = fk.conv_transpose2d_crop(x, w, b, stride=2, offset=(1, 2), size=(8, 10))
    assert ours.shape == ref.shape == (3, 8, 10)
    torch.testing.assert_close(ours, ref, **TOL)
    g = torch.randn_like(ref)
    inputs = [t for t in (x, w, b) if t is not None]
    for a, r in zip(torch.autograd.grad(ours, inputs, g), torch.autograd.grad(ref, inputs, g)):
        torch.testing.assert_close(a, r, **TOL)
    m = fk.nn.ConvTranspose2dCrop(4, 3, 4, stride=2, bias=bias, offset=(1, 2))
    ref_m = torch.nn.ConvTranspose2d(4, 3, 4, stride=2, bias=bias)
    ref_m.load_state_dict(m.state_dict())
    torch.testing.assert_close(m(x, size=(8, 10)), ref_m(x)[:, 1:9, 2:12], **TOL)


def test_max_unpool2d_unbatched():
    v, idx = F.max_pool2d(torch.randn(3, 9, 11), 2, return_indices=True)
    v.requires_grad_(True)
    ref = F.max_unpool2d(v, idx, 2, output_size=(9, 11))
    ours = fk.max_unpool2d(v, idx, 2, output_size=(9, 11))
    torch.testing.assert_close(ours, ref)
    g = torch.randn_like(ref)
    torch.testing.assert_close(
        torch.autograd.grad(ours, v, g)[0], torch.autograd.grad(ref, v, g)[0]
    )
    torch.testing.assert_close(fk.nn.MaxUnpool2d(2)(v, idx, output_size=[9, 11]), ref)
    _same_error(
        lambda: fk.max_unpool2d(v, idx, 2, output_size=torch.Size([3, 9, 11])),
        lambda: F.max_unpool2d(v, idx, 2, output_size=torch.Size([3, 9, 11])),
    )


def test_bilinear_scale_factor_stays_symbolic_under_export():
    # The output size floor(n * scale) must not specialise a dynamic input size.
    class M(torch.nn.Module):
        def forward(self, x):
            return fk.bilinear_upsample(x, scale_factor=2.5)

    d = torch.export.Dim.DYNAMIC
    ep = torch.export.export(M(), (torch.randn(1, 2, 6, 8),), dynamic_shapes=({2: d, 3: d},))
    x = torch.randn(1, 2, 5, 11)
    torch.testing.assert_close(ep.module()(x), F.interpolate(x, scale_factor=2.5, mode="bilinear"))
