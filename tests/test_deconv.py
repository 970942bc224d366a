"""fcn_kernels.conv_transpose2d_crop vs F.conv_transpose2d(...)[..., crop]."""

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fcn_kernels as fk
from fcn_kernels.nn import ConvTranspose2dCrop

from helpers import HAS_CUDA, assert_close

OPS = torch.ops.fcn_kernels


def reference(x, w, b=None, stride=1, offset=(0, 0), size=None, **conv_kw):
    """F.conv_transpose2d(...) then the crop, as a user writes it."""
    full = F.conv_transpose2d(x, w, b, stride, **conv_kw)
    oy, ox = offset
    h, w_ = size if size is not None else (full.shape[2] - oy, full.shape[3] - ox)
    return full[..., oy : oy + h, ox : ox + w_]


def conv_kwargs(cfg):
    """The conv_transpose2d_crop keyword arguments of a random_configs() entry."""
    names = ("stride", "padding", "output_padding", "groups", "dilation", "offset", "size")
    return {name: cfg[name] for name in names}


def diagonal(w, groups=1):
    """Zero the off-diagonal channel entries of each group's block."""
    cin, cg = w.shape[:2]
    mask = torch.eye(cg, dtype=torch.bool)[None, :, :, None, None]
    return (w.view(groups, cin // groups, cg, *w.shape[2:]) * mask).view_as(w)


def rand_weight(cin, cg, kh, kw, dtype=torch.float64, diag=False, groups=1, device="cpu"):
    w = torch.randn(cin, cg, kh, kw, dtype=torch.float64) / (cin // groups * kh * kw) ** 0.5
    if diag:
        w = diagonal(w, groups)
    return w.to(dtype=dtype, device=device)


# ---- bilinear_kernel ---------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 16, 64])
def test_bilinear_kernel_matches_numpy(k):
    factor = (k + 1) // 2
    center = factor - 1 if k % 2 == 1 else factor - 0.5
    og = np.ogrid[:k, :k]
    filt = (1 - abs(og[0] - center) / factor) * (1 - abs(og[1] - center) / factor)
    expected = np.zeros((3, 3, k, k))
    expected[range(3), range(3)] = filt
    w = fk.bilinear_kernel(3, k)
    assert w.shape == (3, 3, k, k) and w.dtype == torch.float32
    np.testing.assert_allclose(w.numpy(), expected, rtol=1e-6, atol=1e-7)
    assert fk.bilinear_kernel(2, k, dtype=torch.float64).dtype == torch.float64


def test_bilinear_kernel_errors():
    with pytest.raises(ValueError, match="channels"):
        fk.bilinear_kernel(0, 4)
    with pytest.raises(TypeError, match="kernel_size"):
        fk.bilinear_kernel(3, 2.5)


def test_deconv_full_size_is_atens_output_size():
    for n, k, s, p, d, op in [
        (5, 4, 2, 0, 1, 0),
        (7, 3, 3, 2, 2, 1),
        (1, 64, 32, 0, 1, 0),
        (4, 5, 1, 1, 3, 0),
        (3, 2, 4, 1, 1, 3),
    ]:
        y = F.conv_transpose2d(
            torch.zeros(1, 1, n, n),
            torch.zeros(1, 1, k, k),
            stride=s,
            padding=p,
            dilation=d,
            output_padding=op,
        )
        assert fk.deconv_full_size(n, k, s, p, d, op) == y.shape[-1]
    assert fk.deconv_full_size(5, 4, 2) == 12  # no padding, dilation 1, output_padding 0


# ---- FCN's three deconvolutions (reduced channels/sizes, real geometry) -------------

FCN = {  # name: (input HxW, kernel, stride, offset, crop size)
    "upscore2": (9, 4, 2, (0, 0), None),
    "upscore_pool4": (10, 4, 2, (1, 2), (19, 18)),
    "upscore8": (13, 16, 8, (31, 31), (50, 47)),
    "upscore32": (5, 64, 32, (19, 19), (100, 90)),
    "upscore16": (7, 32, 16, (27, 27), (60, 61)),
}


@pytest.mark.parametrize("name", list(FCN))
@pytest.mark.parametrize("weight", ["bilinear", "general"])
def test_fcn_shapes(name, weight):
    hw, k, s, off, size = FCN[name]
    c = 5
    x = torch.randn(2, c, hw, hw + 1, dtype=torch.float64)
    w = (
        fk.bilinear_kernel(c, k, dtype=torch.float64)
        if weight == "bilinear"
        else rand_weight(c, c, k, k)
    )
    b = torch.randn(c, dtype=torch.float64)
    out = fk.conv_transpose2d_crop(x, w, b, stride=s, offset=off, size=size)
    assert_close(out, reference(x, w, b, s, offset=off, size=size))


# ---- random configurations, forward and backward -------------------------------------


def random_configs(n, seed):
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        groups = rng.choice([1, 1, 2, 3])
        cin = groups * rng.randint(1, 3)
        cg = rng.randint(1, 3)
        k = (rng.randint(1, 5), rng.randint(1, 5))
        s = (rng.randint(1, 3), rng.randint(1, 3))
        d = (rng.randint(1, 2), rng.randint(1, 2))
        p = (rng.randint(0, 2), rng.randint(0, 2))
        op = tuple(rng.randint(0, max(a, b) - 1) for a, b in zip(s, d))
        hw = (rng.randint(1, 6), rng.randint(1, 7))
        full = [fk.deconv_full_size(*a) for a in zip(hw, k, s, p, d, op)]
        if min(full) <= 0:
            continue
        off = tuple(rng.randint(0, f - 1) for f in full)
        size = tuple(rng.randint(1, f - o) for f, o in zip(full, off))
        diag = cg == cin // groups and rng.random() < 0.4
        cfg = dict(groups=groups, cin=cin, cg=cg, k=k, hw=hw, diag=diag)
        cfg.update(stride=s, dilation=d, padding=p, output_padding=op, offset=off, size=size)
        cfg.update(batch=rng.randint(1, 2), bias=rng.random() < 0.5, cl=rng.random() < 0.3)
        out.append(cfg)
    return out


@pytest.mark.parametrize("cfg", random_configs(80, 0), ids=lambda c: "")
def test_random_configs_forward_backward(cfg):
    g = cfg["groups"]
    x = torch.randn(cfg["batch"], cfg["cin"], *cfg["hw"], dtype=torch.float64)
    if cfg["cl"]:
        x = x.to(memory_format=torch.channels_last)
    w = rand_weight(cfg["cin"], cfg["cg"], *cfg["k"], diag=cfg["diag"], groups=g)
    b = torch.randn(cfg["cg"] * g, dtype=torch.float64) if cfg["bias"] else None
    kw = conv_kwargs(cfg)
    leaves = [t.clone().requires_grad_() for t in (x, w) + ((b,) if b is not None else ())]
    ref_leaves = [t.clone().requires_grad_() for t in leaves]
    out = fk.conv_transpose2d_crop(leaves[0], leaves[1], leaves[2] if b is not None else None, **kw)
    ref = reference(ref_leaves[0], ref_leaves[1], ref_leaves[2] if b is not None else None, **kw)
    assert out.shape == ref.shape
    assert_close(out, ref)
    assert out.is_contiguous(
        memory_format=torch.channels_last
        if cfg["cl"] and not x.is_contiguous()
        else torch.contiguous_format
    )
    grad = torch.randn_like(ref)
    for a, r in zip(
        torch.autograd.grad(out, leaves, grad), torch.autograd.grad(ref, ref_leaves, grad)
    ):
        assert_close(a, r)


# ---- dtypes, devices, layouts --------------------------------------------------------


@pytest.mark.parametrize("diag", [True, False], ids=["diagonal", "general"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "noncontig"])
def test_dtypes_devices(device, dtype, diag, layout):
    torch.manual_seed(1)
    x = torch.randn(2, 4, 6, 7).to(dtype)
    w = rand_weight(4, 2, 4, 3, dtype=dtype, diag=diag, groups=2)
    b = torch.randn(4).to(dtype)
    kw = dict(stride=(2, 3), padding=(1, 0), groups=2, dilation=(1, 2), offset=(2, 1), size=(9, 15))
    # float64 reference on the same (rounded) values
    ref = reference(x.double(), w.double(), b.double(), **kw)
    grad = torch.randn(ref.shape).to(dtype)
    xd, wd, bd = (t.double().requires_grad_() for t in (x, w, b))
    gref = torch.autograd.grad(reference(xd, wd, bd, **kw), (xd, wd, bd), grad.double())
    xi = x.to(device)
    if layout == "channels_last":
        xi = xi.to(memory_format=torch.channels_last)
    elif layout == "noncontig":
        xi = x.to(device).transpose(2, 3).contiguous().transpose(2, 3)
        assert not xi.is_contiguous()
    xi, wi, bi = (t.requires_grad_() for t in (xi, w.to(device).clone(), b.to(device).clone()))
    out = fk.conv_transpose2d_crop(xi, wi, bi, **kw)
    assert out.dtype == dtype and out.device.type == device
    assert_close(out, ref, dtype)
    gx, gw, gb = torch.autograd.grad(out, (xi, wi, bi), grad.to(device))
    # gradients sum many products: allow for the larger magnitude
    scale = dict(atol=TOL_SCALE[dtype], rtol=TOL_SCALE[dtype])
    assert_close(gx, gref[0], dtype, **scale)
    assert_close(gw, gref[1], dtype, **scale)
    assert_close(gb, gref[2], dtype, **scale)


TOL_SCALE = {torch.float64: 1e-11, torch.float32: 5e-5, torch.float16: 1e-2, torch.bfloat16: 6e-2}


def test_noncontiguous_operands():
    x = torch.randn(2, 6, 5, 9, dtype=torch.float64)[:, ::2, :, 1::2]  # strided view
    w = rand_weight(6, 3, 3, 3)[::2]
    g = torch.randn(2, 3, 7, 8, dtype=torch.float64).transpose(2, 3)  # (2, 3, 8, 7) view
    kw = dict(stride=2, offset=(1, 1), size=(8, 7))
    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
    out = fk.conv_transpose2d_crop(xr, wr, **kw)
    ref_x, ref_w = x.clone().requires_grad_(), w.clone().requires_grad_()
    ref = reference(ref_x, ref_w, **kw)
    assert_close(out, ref)
    for a, r in zip(
        torch.autograd.grad(out, (xr, wr), g), torch.autograd.grad(ref, (ref_x, ref_w), g)
    ):
        assert_close(a, r)


def test_size_none_and_empty_batch():
    w = fk.bilinear_kernel(3, 4, dtype=torch.float64)
    x = torch.randn(1, 3, 5, 5, dtype=torch.float64)
    assert_close(
        fk.conv_transpose2d_crop(x, w, stride=2, offset=(3, 1)),
        reference(x, w, stride=2, offset=(3, 1)),
    )
    for weight in (w, rand_weight(3, 2, 4, 4)):
        x0 = torch.randn(0, 3, 5, 5, dtype=torch.float64, requires_grad=True)
        w0 = weight.clone().requires_grad_()
        out = fk.conv_transpose2d_crop(x0, w0, stride=2, offset=1, size=(7, 8))
        assert out.shape == (0, weight.shape[1], 7, 8)
        gx, gw = torch.autograd.grad(out.sum(), (x0, w0))
        assert gx.shape == x0.shape and torch.equal(gw, torch.zeros_like(gw))


def test_nearly_diagonal_weight_takes_exact_general_path():
    w = fk.bilinear_kernel(4, 4, dtype=torch.float64)
    w[1, 2, 3, 0] = 1e-30  # one tiny off-diagonal entry: must not be dropped
    x = torch.randn(1, 4, 6, 6, dtype=torch.float64)
    x[0, 1] = 1e30
    out = fk.conv_transpose2d_crop(x, w, stride=2, offset=1, size=(10, 10))
    assert_close(out, reference(x, w, stride=2, offset=(1, 1), size=(10, 10)))
    w[1, 2, 3, 0] = float("inf")  # non-finite off-diagonal entries count as non-zero
    out = fk.conv_transpose2d_crop(x[:, :, :2, :2], w, stride=2)
    ref = reference(x[:, :, :2, :2], w, stride=2)
    assert torch.equal(out.isinf(), ref.isinf())


# ---- autograd ------------------------------------------------------------------------


@pytest.mark.parametrize("diag", [True, False])
def test_gradcheck_and_gradgradcheck(diag):
    torch.manual_seed(0)
    x = torch.randn(2, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    w = rand_weight(2, 2, 3, 2, diag=diag).requires_grad_()
    b = torch.randn(2, dtype=torch.float64, requires_grad=True)
    f = lambda x, w, b: fk.conv_transpose2d_crop(
        x, w, b, stride=(2, 1), padding=(0, 1), dilation=(1, 2), offset=(1, 0), size=(5, 4)
    )
    assert torch.autograd.gradcheck(f, (x, w, b))
    assert torch.autograd.gradgradcheck(f, (x, w, b))


def test_gradcheck_groups_channels_last():
    x = torch.randn(1, 4, 3, 3, dtype=torch.float64).to(memory_format=torch.channels_last)
    x.requires_grad_()
    w = rand_weight(4, 3, 2, 3).requires_grad_()
    f = lambda x, w: fk.conv_transpose2d_crop(
        x, w, stride=2, groups=2, output_padding=1, offset=(2, 1)
    )
    assert torch.autograd.gradcheck(f, (x, w))


def test_frozen_weight_skips_weight_grad():
    x = torch.randn(1, 3, 5, 5, requires_grad=True)
    w = fk.bilinear_kernel(3, 4)
    out = fk.conv_transpose2d_crop(x, w, stride=2, offset=1, size=(9, 9))
    with torch.profiler.profile() as prof:
        out.sum().backward()
    names = {e.name for e in prof.events()}
    assert "fcn_kernels::conv_transpose2d_crop_backward_input" in names
    assert "fcn_kernels::conv_transpose2d_crop_backward_weight" not in names
    xr = x.detach().clone().requires_grad_()
    reference(xr, w, stride=2, offset=(1, 1), size=(9, 9)).sum().backward()
    assert_close(x.grad, xr.grad)


@pytest.mark.parametrize("diag", [True, False])
def test_backward_deterministic(device, diag):
    torch.manual_seed(0)
    x = torch.randn(2, 6, 11, 9, device=device, requires_grad=True)
    w = rand_weight(6, 6, 4, 4, dtype=torch.float32, diag=diag, device=device).requires_grad_()
    g = torch.randn(2, 6, 17, 15, device=device)

    def grads():
        out = fk.conv_transpose2d_crop(x, w, stride=2, offset=2, size=(17, 15))
        return torch.autograd.grad(out, (x, w), g)

    first = grads()
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        runs = [grads() for _ in range(2)]
    finally:
        torch.use_deterministic_algorithms(prev)
    for run in runs:
        for a, b in zip(first, run):
            assert torch.equal(a, b)


# ---- opcheck / compile -----------------------------------------------------------------


def test_opcheck():
    torch.manual_seed(0)
    x = torch.randn(2, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    w = rand_weight(2, 2, 3, 3).requires_grad_()
    b = torch.randn(2, dtype=torch.float64, requires_grad=True)
    wd = fk.bilinear_kernel(2, 4, dtype=torch.float64)
    xcl = torch.randn(1, 2, 3, 3).to(memory_format=torch.channels_last)
    samples = [
        (x, w, b, [2, 1], [0, 1], [1, 0], 1, [1, 1], [1, 0], [5, 4]),
        (x.detach(), wd, None, [2, 2], [0, 0], [0, 0], 1, [1, 1], [1, 1], [6, 7]),
        (xcl, torch.randn(2, 1, 2, 2), None, [1, 2], [0, 0], [0, 0], 2, [2, 1], [0, 0], [5, 6]),
    ]
    for args in samples:
        torch.library.opcheck(OPS.conv_transpose2d_crop, args)
    g = torch.randn(2, 2, 5, 4, dtype=torch.float64)
    torch.library.opcheck(
        OPS.conv_transpose2d_crop_backward_input,
        (g, w.detach(), [2, 2, 3, 4], [2, 1], [0, 1], 1, [1, 1], [1, 0]),
    )
    torch.library.opcheck(
        OPS.conv_transpose2d_crop_backward_weight,
        (g, x.detach(), [2, 2, 3, 3], [2, 1], [0, 1], 1, [1, 1], [1, 0]),
    )


def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    m = ConvTranspose2dCrop(3, 3, 4, stride=2, offset=(1, 2), size=(9, 8))

    @torch.compile(fullgraph=True, backend="aot_eager")
    def f(x):
        return m(x).relu() * 2

    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    out = f(x)
    ref = F.conv_transpose2d(x, m.weight, m.bias, 2)[..., 1:10, 2:10].relu() * 2
    assert_close(out, ref)
    out.sum().backward()
    xr = x.detach().clone().requires_grad_()
    (F.conv_transpose2d(xr, m.weight, m.bias, 2)[..., 1:10, 2:10].relu() * 2).sum().backward()
    assert_close(x.grad, xr.grad)


def test_torch_export():
    m = ConvTranspose2dCrop(2, 2, 4, stride=2, bias=False, offset=1, size=(5, 5))
    ep = torch.export.export(m, (torch.randn(1, 2, 4, 4),))
    x = torch.randn(1, 2, 4, 4)
    assert_close(ep.module()(x), m(x))


# ---- module ----------------------------------------------------------------------------


def test_module_loads_plain_state_dict_and_matches():
    torch.manual_seed(0)
    plain = torch.nn.ConvTranspose2d(
        4, 6, 3, stride=2, padding=1, output_padding=1, groups=2, dilation=2
    )
    ours = ConvTranspose2dCrop(
        4, 6, 3, stride=2, padding=1, output_padding=1, groups=2, dilation=2, offset=(2, 3)
    )
    ours.load_state_dict(plain.state_dict(), strict=True)
    assert isinstance(ours, torch.nn.ConvTranspose2d)
    x = torch.randn(2, 4, 5, 6)
    assert_close(ours(x), plain(x)[..., 2:, 3:])
    assert_close(ours(x, size=(4, 5)), plain(x)[..., 2:6, 3:8])
    assert "offset=(2, 3)" in repr(ours)


def test_module_bilinear_helper():
    m = ConvTranspose2dCrop.bilinear(3, 16, 8, offset=31)
    assert not m.weight.requires_grad and m.bias is None
    assert torch.equal(m.weight, fk.bilinear_kernel(3, 16))
    x = torch.randn(1, 3, 12, 12)
    assert_close(
        m(x, size=(40, 50)), reference(x, m.weight, stride=8, offset=(31, 31), size=(40, 50))
    )
    assert ConvTranspose2dCrop.bilinear(3, 4, 2, freeze=False).weight.requires_grad


# ---- errors ----------------------------------------------------------------------------


def test_errors():
    x = torch.randn(1, 4, 5, 5)
    w = torch.randn(4, 2, 3, 3)
    f = fk.conv_transpose2d_crop
    with pytest.raises(TypeError, match="input"):
        f("x", w)
    with pytest.raises(ValueError, match="input"):
        f(x[0, 0], w)
    with pytest.raises(TypeError, match="input"):
        f(x.long(), w)
    with pytest.raises(ValueError, match="weight"):
        f(x, w[0])
    with pytest.raises(TypeError, match="weight"):
        f(x, w.double())
    with pytest.raises(ValueError, match="weight"):
        f(x, torch.randn(3, 2, 3, 3))
    with pytest.raises(ValueError, match="groups"):
        f(x, w, groups=3)
    with pytest.raises(ValueError, match="groups"):
        f(x, w, groups=0)
    with pytest.raises(TypeError, match="groups"):
        f(x, w, groups=1.5)
    with pytest.raises(ValueError, match="bias"):
        f(x, w, torch.randn(3))
    with pytest.raises(TypeError, match="bias"):
        f(x, w, torch.randn(2).double())
    with pytest.raises(ValueError, match="stride"):
        f(x, w, stride=0)
    with pytest.raises(TypeError, match="stride"):
        f(x, w, stride=1.5)
    with pytest.raises(ValueError, match="padding"):
        f(x, w, padding=-1)
    with pytest.raises(ValueError, match="dilation"):
        f(x, w, dilation=(1, 0))
    with pytest.raises(ValueError, match="output_padding"):
        f(x, w, stride=2, output_padding=2)
    with pytest.raises(ValueError, match="offset"):
        f(x, w, offset=(-1, 0))
    with pytest.raises(ValueError, match="size"):
        f(x, w, size=(0, 3))
    with pytest.raises(ValueError, match="size"):
        f(x, w, size=(1, 2, 3))
    with pytest.raises(ValueError, match="offset"):  # window past the end (full map is 7x7)
        f(x, w, offset=(5, 0), size=(3, 3))
    with pytest.raises(ValueError, match="offset"):
        f(x, w, offset=(7, 0))
    with pytest.raises(ValueError, match="padding"):
        f(torch.randn(1, 4, 1, 1), w, padding=2)
    with pytest.raises(ValueError, match="input"):
        f(torch.randn(1, 4, 0, 5), w)
    if HAS_CUDA:
        with pytest.raises(TypeError, match="weight"):
            f(x, w.cuda())


def test_direct_op_errors_are_checked_in_cpp():
    # One C++ check per op (csrc/deconv/args.h): a direct torch.ops call raises the same
    # exception type, with the same words, as the Python wrapper.
    x = torch.randn(1, 4, 5, 5)
    w = torch.randn(4, 2, 3, 3)
    args = ([1, 1], [0, 0], [0, 0], 1, [1, 1], [0, 0], [3, 3])
    cases = [  # (direct call, wrapper call, exception, message)
        (
            lambda: OPS.conv_transpose2d_crop(
                x, w, None, [1, 1], [0, 0], [0, 0], 1, [1, 1], [6, 0], [3, 3]
            ),
            lambda: fk.conv_transpose2d_crop(x, w, offset=(6, 0), size=(3, 3)),
            ValueError,
            "crop window",
        ),
        (
            lambda: OPS.conv_transpose2d_crop(
                x, w, None, [1, 1], [0, 0], [0, 0], 3, [1, 1], [0, 0], [3, 3]
            ),
            lambda: fk.conv_transpose2d_crop(x, w, groups=3, size=(3, 3)),
            ValueError,
            "divisible by groups",
        ),
        (
            lambda: OPS.conv_transpose2d_crop(x, w, torch.randn(3), *args),
            lambda: fk.conv_transpose2d_crop(x, w, torch.randn(3), size=(3, 3)),
            ValueError,
            r"bias must have shape \(2,\)",
        ),
        (
            lambda: OPS.conv_transpose2d_crop(x, w, torch.randn(2, dtype=torch.float64), *args),
            lambda: fk.conv_transpose2d_crop(
                x, w, torch.randn(2, dtype=torch.float64), size=(3, 3)
            ),
            TypeError,
            "bias must have the input's dtype",
        ),
        (
            lambda: OPS.conv_transpose2d_crop(x, w.double(), None, *args),
            lambda: fk.conv_transpose2d_crop(x, w.double(), size=(3, 3)),
            TypeError,
            "weight must have the input's dtype",
        ),
        (
            lambda: OPS.conv_transpose2d_crop(
                x, w, None, [2, 2], [0, 0], [2, 0], 1, [1, 1], [0, 0], [3, 3]
            ),
            lambda: fk.conv_transpose2d_crop(x, w, stride=2, output_padding=(2, 0), size=(3, 3)),
            ValueError,
            "output_padding must be smaller",
        ),
        (
            lambda: OPS.conv_transpose2d_crop(
                x, w, None, [0, 1], [0, 0], [0, 0], 1, [1, 1], [0, 0], [3, 3]
            ),
            lambda: fk.conv_transpose2d_crop(x, w, stride=(0, 1), size=(3, 3)),
            ValueError,
            "stride must be positive",
        ),
    ]
    for direct, wrapped, exc, match in cases:
        for call in (direct, wrapped):
            with pytest.raises(exc, match=match):
                call()
    with pytest.raises(ValueError, match="grad_output"):
        OPS.conv_transpose2d_crop_backward_input(
            torch.randn(1, 3, 3, 3), w, [1, 4, 5, 5], [1, 1], [0, 0], 1, [1, 1], [0, 0]
        )
    with pytest.raises(ValueError, match="stride"):
        OPS.conv_transpose2d_crop_backward_weight(
            torch.randn(1, 2, 3, 3), x, [4, 2, 3, 3], [0, 1], [0, 0], 1, [1, 1], [0, 0]
        )


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU and a CUDA build")
def test_cuda_matches_cpu_random():
    for cfg in random_configs(30, 1):
        g = cfg["groups"]
        x = torch.randn(cfg["batch"], cfg["cin"], *cfg["hw"], dtype=torch.float64)
        w = rand_weight(cfg["cin"], cfg["cg"], *cfg["k"], diag=cfg["diag"], groups=g)
        kw = conv_kwargs(cfg)
        xs = [x.clone().requires_grad_(), x.cuda().requires_grad_()]
        ws = [w.clone().requires_grad_(), w.cuda().requires_grad_()]
        outs = [fk.conv_transpose2d_crop(a, b, **kw) for a, b in zip(xs, ws)]
        assert_close(outs[1], reference(x, w, **kw))
        grad = torch.randn_like(outs[0])
        ga = torch.autograd.grad(outs[0], (xs[0], ws[0]), grad)
        gb = torch.autograd.grad(outs[1], (xs[1], ws[1]), grad.cuda())
        for a, b in zip(ga, gb):
            assert_close(b, a)


# ---- one filter on the whole channel diagonal (FCN's bilinear weight) -------------------


def _rank1_weight(channels, kh, kw, groups=1, seed=0, rank1=True):
    """The same filter on every diagonal channel: u v^T with small integers over a power
    of two (exact, so the CPU kernel's rank-1 test must accept it), or a random filter
    (rank > 1: the row-by-row path)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randint(1, 9, (kh,), generator=g).double()
    v = torch.randint(-8, 9, (kw,), generator=g).double() / 8
    f = torch.outer(u, v) if rank1 else torch.randn(kh, kw, generator=g, dtype=torch.float64)
    cg = channels // groups
    w = torch.zeros(channels, cg, kh, kw, dtype=torch.float64)
    for c in range(channels):
        w[c, c % cg] = f
    return w


@pytest.mark.parametrize(
    "cfg",
    [
        dict(stride=2, k=(4, 4)),  # upscore2
        dict(stride=8, k=(16, 16), offset=(5, 3), size=(40, 37)),  # upscore8-like crop
        dict(stride=32, k=(64, 64), offset=(19, 19), size=(40, 45)),
        dict(stride=(3, 2), k=(5, 3), padding=(1, 2), dilation=(1, 2), offset=(1, 0)),
        dict(stride=2, k=(3, 4), groups=2, output_padding=1),
        dict(stride=1, k=(1, 1)),
    ],
)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("rank1", [True, False], ids=["rank1", "any_rank"])
def test_uniform_diagonal_filter(cfg, layout, rank1):
    cfg = dict(cfg)
    kh, kw = cfg.pop("k")
    groups = cfg.get("groups", 1)
    w = _rank1_weight(4, kh, kw, groups, rank1=rank1)
    x = torch.randn(2, 4, 5, 6, dtype=torch.float64)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    xr, xo = x.clone().requires_grad_(), x.clone().requires_grad_()
    out = fk.conv_transpose2d_crop(xo, w, **cfg)
    ref = reference(xr, w, **cfg)
    assert_close(out, ref)
    g = torch.randn_like(ref)
    assert_close(torch.autograd.grad(out, xo, g)[0], torch.autograd.grad(ref, xr, g)[0])


@pytest.mark.parametrize("change", ["not_rank1", "not_uniform", "nan", "bias"])
def test_filters_that_are_not_uniform_rank1(change):
    """Near misses of the separable path (taking the row-by-row or the per-channel path)
    must still give ATen's exact result."""
    w = _rank1_weight(3, 4, 4)
    b = None
    if change == "not_rank1":
        w[:, :, 2, 2] *= 1 + 1e-6  # far above the 4-ulp tolerance in float64
    elif change == "not_uniform":
        w[2, 2] *= 2  # rank-1 but a different filter on one channel
    elif change == "nan":
        w[0, 0, 1, 1] = float("nan")
    else:
        b = torch.randn(3, dtype=torch.float64)
    x = torch.randn(1, 3, 5, 5, dtype=torch.float64)
    out = fk.conv_transpose2d_crop(x, w, b, stride=2, offset=1, size=(9, 9))
    ref = reference(x, w, b, stride=2, offset=(1, 1), size=(9, 9))
    assert torch.equal(out.isnan(), ref.isnan())
    assert_close(out.nan_to_num(), ref.nan_to_num(), rtol=1e-13, atol=1e-13)


def test_backward_computes_only_requested_gradients():
    """The C++ autograd (csrc/autograd.cpp) asks autograd which gradients this backward
    pass needs: grad w.r.t. the input alone must not run the weight-gradient kernel
    (a learned 21x21x16x16 weight costs as much as the input gradient)."""
    x = torch.randn(1, 3, 6, 6, requires_grad=True)
    w = torch.randn(3, 3, 4, 4, requires_grad=True)
    y = fk.conv_transpose2d_crop(x, w, stride=2, offset=1, size=(10, 10))
    assert type(y.grad_fn).__name__ == "CppFunction"  # the C++ node, not a Python one

    def ops_run(inputs):
        with torch.profiler.profile() as prof:
            torch.autograd.grad(y, inputs, torch.ones_like(y), retain_graph=True)
        return {e.name for e in prof.events()}

    names = ops_run([x])
    assert "fcn_kernels::conv_transpose2d_crop_backward_input" in names
    assert "fcn_kernels::conv_transpose2d_crop_backward_weight" not in names
    names = ops_run([w])
    assert "fcn_kernels::conv_transpose2d_crop_backward_weight" in names
    assert "fcn_kernels::conv_transpose2d_crop_backward_input" not in names
