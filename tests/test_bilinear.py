"""fcn_kernels.bilinear_upsample against F.interpolate(mode="bilinear")."""

import itertools

import pytest
import torch
import torch.nn.functional as F

import fcn_kernels as fk
from helpers import TOL, assert_close
from fcn_kernels.testing import emulated_cuda, index32_limit

# (input shape, resize kwargs): up/down, odd/prime sizes, non-integer and per-axis
# scales, 1x1 in and out, identity along one axis, and the scale-given-but-same-size
# case (ATen copies that axis).
CASES = [
    ((2, 3, 5, 7), dict(size=(11, 13))),
    ((1, 2, 13, 17), dict(size=(31, 29))),
    ((2, 3, 16, 16), dict(scale_factor=2)),
    ((1, 4, 7, 5), dict(scale_factor=2.5)),
    ((1, 3, 9, 11), dict(scale_factor=(1.7, 3.3))),
    ((2, 2, 10, 10), dict(scale_factor=1.05)),
    ((1, 3, 23, 19), dict(size=(7, 5))),
    ((1, 2, 20, 20), dict(scale_factor=0.37)),
    ((2, 3, 1, 1), dict(size=(3, 4))),
    ((2, 3, 5, 7), dict(size=(1, 1))),
    ((1, 2, 1, 9), dict(size=(5, 9))),
    ((1, 2, 6, 8), dict(size=(6, 17))),
    ((1, 5, 3, 4), dict(scale_factor=8)),
    ((1, 1, 2, 3), dict(scale_factor=32)),
]
IDS = [f"{s}-{k}" for s, k in CASES]


def ref(x, kw, ac):
    return F.interpolate(x, mode="bilinear", align_corners=ac, **kw)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("shape,kw", CASES, ids=IDS)
def test_forward_backward_matches_aten_float64(device, shape, kw, align_corners):
    x = torch.randn(shape, dtype=torch.float64, device=device, requires_grad=True)
    ours = fk.bilinear_upsample(x, align_corners=align_corners, **kw)
    theirs = ref(x, kw, align_corners)
    assert ours.shape == theirs.shape
    assert_close(ours, theirs)
    g = torch.randn_like(theirs)
    (gx_ours,) = torch.autograd.grad(ours, x, g)
    (gx_ref,) = torch.autograd.grad(theirs, x, g)
    assert_close(gx_ours, gx_ref)


@pytest.mark.parametrize("shape,kw", CASES[:8], ids=IDS[:8])
def test_dtypes_against_float64_reference(device, dtype, shape, kw):
    # Reference: ATen in float64 on the same (rounded) input, rounded to dtype.
    x = torch.randn(shape, device=device).to(dtype).requires_grad_()
    x64 = x.detach().double().requires_grad_()
    ours = fk.bilinear_upsample(x, **kw)
    theirs = ref(x64, kw, False)
    assert ours.dtype == dtype
    assert_close(ours, theirs.to(dtype), dtype)
    g = torch.randn_like(theirs).to(dtype)
    (gx,) = torch.autograd.grad(ours, x, g)
    (gx64,) = torch.autograd.grad(theirs, x64, g.double())
    # A gradient sums many terms, so cancellation can leave a small result with an
    # error relative to the summed magnitudes: bound it by eps * sum |w * g| (the
    # weights are non-negative, so that is the reference backward of |g|).
    (mag,) = torch.autograd.grad(theirs, x64, g.double().abs())
    assert gx.dtype == dtype
    err = (gx.double() - gx64).abs()
    bound = 8 * torch.finfo(dtype).eps * mag + TOL[dtype]["atol"]
    assert (err <= bound).all(), f"max excess {(err - bound).max().item():.3g}"


@pytest.mark.parametrize("align_corners", [False, True])
def test_channels_last_keeps_layout(device, align_corners):
    x = torch.randn(2, 8, 9, 7, dtype=torch.float64, device=device)
    xc = x.to(memory_format=torch.channels_last).requires_grad_()
    ours = fk.bilinear_upsample(xc, size=(20, 15), align_corners=align_corners)
    assert ours.is_contiguous(memory_format=torch.channels_last)
    assert_close(ours, ref(x, dict(size=(20, 15)), align_corners))
    g = torch.randn_like(ours).contiguous(memory_format=torch.channels_last)
    (gx,) = torch.autograd.grad(ours, xc, g)
    x2 = x.clone().requires_grad_()
    (gx_ref,) = torch.autograd.grad(ref(x2, dict(size=(20, 15)), align_corners), x2, g)
    assert_close(gx, gx_ref)


def test_non_contiguous_inputs(device):
    base = torch.randn(3, 10, 12, 8, dtype=torch.float64, device=device)
    views = [
        base[:, ::2, 1:, ::2],  # strided slice
        base.transpose(2, 3),  # transposed spatial dims
        base.permute(0, 2, 1, 3),  # channels moved
        base.expand(3, 10, 12, 8)[:, :, :, :5],
    ]
    for v in views:
        assert not v.is_contiguous()
        assert_close(
            fk.bilinear_upsample(v, scale_factor=1.5), ref(v, dict(scale_factor=1.5), False)
        )
    # A non-contiguous gradient (e.g. from a later transpose) works too.
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64, device=device, requires_grad=True)
    y = fk.bilinear_upsample(x, size=(9, 9)).transpose(2, 3).sum(dim=1, keepdim=True)
    x2 = x.detach().clone().requires_grad_()
    y2 = ref(x2, dict(size=(9, 9)), False).transpose(2, 3).sum(dim=1, keepdim=True)
    g = torch.randn_like(y)
    assert_close(torch.autograd.grad(y, x, g)[0], torch.autograd.grad(y2, x2, g)[0])


@pytest.mark.parametrize("shape", [(0, 3, 5, 5), (2, 0, 5, 5)])
def test_empty_batch_or_channels(device, shape):
    x = torch.randn(shape, device=device, requires_grad=True)
    y = fk.bilinear_upsample(x, scale_factor=2)
    assert y.shape == (shape[0], shape[1], 10, 10)
    y.sum().backward()
    assert x.grad.shape == x.shape


def test_large_channel_count(device):
    x = torch.randn(1, 1024, 5, 6, device=device)
    assert_close(fk.bilinear_upsample(x, size=(11, 13)), ref(x, dict(size=(11, 13)), False))
    xl = x.to(memory_format=torch.channels_last)
    assert_close(fk.bilinear_upsample(xl, size=(11, 13)), ref(x, dict(size=(11, 13)), False))


def test_gradcheck_and_gradgradcheck():
    for ac, kw in itertools.product([False, True], [dict(size=(7, 5)), dict(scale_factor=1.6)]):
        x = torch.randn(2, 2, 4, 3, dtype=torch.float64, requires_grad=True)
        fn = lambda t: fk.bilinear_upsample(t, align_corners=ac, **kw)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (x,))
        assert torch.autograd.gradgradcheck(fn, (x,))


def test_opcheck():
    ops = torch.ops.fcn_kernels
    x = torch.randn(2, 3, 4, 5, requires_grad=True)
    xl = torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last).requires_grad_()
    for args in [
        (x, [7, 9], False, None, None),
        (xl, [3, 11], True, None, None),
        (x, [6, 7], False, 1.5, 1.5),
    ]:
        torch.library.opcheck(ops.bilinear_upsample.default, args)
    g = torch.randn(2, 3, 7, 9, requires_grad=True)
    torch.library.opcheck(
        ops.bilinear_upsample_backward.default, (g, [2, 3, 4, 5], False, None, None)
    )


def test_torch_compile_fullgraph():
    def f(t):
        return fk.bilinear_upsample(t * 2, scale_factor=2.5).relu().sum()

    x = torch.randn(2, 3, 6, 7, requires_grad=True)
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    (g,) = torch.autograd.grad(out, x)
    x2 = x.detach().clone().requires_grad_()
    out2 = F.interpolate(x2 * 2, scale_factor=2.5, mode="bilinear").relu().sum()
    (g2,) = torch.autograd.grad(out2, x2)
    assert_close(out, out2)
    assert_close(g, g2)


def test_torch_export():
    model = fk.nn.BilinearUpsample(size=(9, 11))
    x = torch.randn(1, 2, 4, 5)
    exported = torch.export.export(model, (x,))
    assert_close(exported.module()(x), ref(x, dict(size=(9, 11)), False))


@pytest.mark.parametrize("deterministic", [False, True])
def test_backward_is_bit_identical(device, deterministic):
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic)
    try:
        x = torch.randn(4, 21, 16, 16, device=device, requires_grad=True)
        g = torch.randn(4, 21, 128, 128, device=device)
        grads = []
        for _ in range(3):
            (gx,) = torch.autograd.grad(fk.bilinear_upsample(x, scale_factor=8), x, g)
            grads.append(gx)
        assert all(torch.equal(grads[0], other) for other in grads[1:])
    finally:
        torch.use_deterministic_algorithms(prev)


def test_module_matches_nn_upsample():
    x = torch.randn(2, 3, 5, 6)
    for kw in [dict(size=(8, 9)), dict(scale_factor=2.0)]:
        for ac in (False, True):
            ours = fk.nn.BilinearUpsample(align_corners=ac, **kw)
            theirs = torch.nn.Upsample(mode="bilinear", align_corners=ac, **kw)
            assert_close(ours(x), theirs(x))
    assert "scale_factor=2" in repr(fk.nn.BilinearUpsample(scale_factor=2))
    with pytest.raises(ValueError, match="size or scale_factor"):
        fk.nn.BilinearUpsample()


ERRORS = [
    (
        lambda: fk.bilinear_upsample(torch.randn(3, 4, 5), size=4),
        NotImplementedError,
        "needs 4D input",
    ),
    (
        lambda: fk.bilinear_upsample(torch.randn(1, 1, 3, 4, 5), size=4),
        NotImplementedError,
        "needs 4D input",
    ),
    (
        lambda: fk.bilinear_upsample(torch.randn(1, 1, 3, 4, 5, 6), size=4),
        ValueError,
        "input must be a 4-D",
    ),
    (lambda: fk.bilinear_upsample([[1.0]], size=4), TypeError, "input must be a torch.Tensor"),
    (
        lambda: fk.bilinear_upsample(torch.zeros(1, 1, 3, 3, dtype=torch.int64), size=4),
        TypeError,
        "input must be float",
    ),
    (
        lambda: fk.bilinear_upsample(torch.randn(1, 1, 3, 3), size=4, scale_factor=2),
        ValueError,
        "only one of size or scale_factor",
    ),
    (
        lambda: fk.bilinear_upsample(torch.randn(1, 1, 3, 3)),
        ValueError,
        "either size or scale_factor",
    ),
    (
        lambda: fk.bilinear_upsample(torch.randn(1, 1, 3, 3), size=0),
        ValueError,
        "size must be positive",
    ),
    (
        lambda: fk.bilinear_upsample(torch.randn(1, 1, 3, 3), size=(4, -2)),
        ValueError,
        "size must be positive",
    ),
    (
        lambda: fk.bilinear_upsample(torch.randn(1, 1, 3, 3), size=(4, 4, 4)),
        ValueError,
        "size must be a number or a pair",
    ),
    (
        lambda: fk.bilinear_upsample(torch.randn(1, 1, 3, 3), size=2.5),
        TypeError,
        "size must be integers",
    ),
    (
        lambda: fk.bilinear_upsample(torch.randn(1, 1, 3, 3), scale_factor=float("nan")),
        ValueError,
        "scale_factor must be finite",
    ),
    (
        lambda: fk.bilinear_upsample(torch.randn(1, 1, 3, 3), scale_factor=float("inf")),
        ValueError,
        "scale_factor must be finite",
    ),
    (
        lambda: fk.bilinear_upsample(torch.randn(1, 1, 3, 3), scale_factor=-2),
        ValueError,
        "scale_factor must be finite and positive",
    ),
    (
        lambda: fk.bilinear_upsample(torch.randn(1, 1, 3, 3), scale_factor=0.1),
        ValueError,
        "scale_factor .* empty output",
    ),
    (
        lambda: fk.bilinear_upsample(torch.randn(1, 1, 3, 3), scale_factor="2"),
        TypeError,
        "scale_factor must be numbers",
    ),
    (
        lambda: fk.bilinear_upsample(torch.randn(1, 1, 0, 3), size=4),
        ValueError,
        "non-empty spatial",
    ),
    (
        lambda: fk.bilinear_upsample(torch.randn(1, 1, 3, 3), size=4, align_corners=1),
        TypeError,
        "align_corners must be a bool",
    ),
]


@pytest.mark.parametrize("call,exc,match", ERRORS, ids=[e[2] for e in ERRORS])
def test_bad_input_raises_clear_error(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_direct_op_calls_are_checked_in_cpp():
    # The C++ checks guard callers that bypass the Python wrapper.
    ops = torch.ops.fcn_kernels
    # Same exception types as the Python wrapper (ValueError / TypeError).
    with pytest.raises(ValueError, match="output_size must be positive"):
        ops.bilinear_upsample(torch.randn(1, 1, 3, 3), [0, 4], False, None, None)
    with pytest.raises(ValueError, match="input must be a 4-D"):
        ops.bilinear_upsample(torch.randn(1, 3, 3), [4, 4], False, None, None)
    with pytest.raises(TypeError, match="input must be float"):
        ops.bilinear_upsample(torch.ones(1, 1, 3, 3, dtype=torch.int32), [4, 4], False, None, None)
    with pytest.raises(ValueError, match="do not match input_size"):
        ops.bilinear_upsample_backward(torch.randn(1, 2, 6, 6), [1, 3, 3, 3], False, None, None)


# ---- the CUDA code, emulated on the CPU (fcn_kernels.testing) ------------------------


@pytest.mark.emu
@pytest.mark.parametrize("limit", [0, 50], ids=["int32", "int64"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_emulated_index_types_and_gradient_layouts(limit, layout):
    # limit=50 makes the GPU host code pick its 64-bit index kernels on small tensors.
    x = torch.randn(2, 3, 7, 5, dtype=torch.float64)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    ref_y = ref(x, dict(size=(17, 12)), False)
    grads = {
        "dense": torch.randn(2, 3, 17, 12, dtype=torch.float64),
        "expanded": torch.tensor(1.5, dtype=torch.float64).expand(2, 3, 17, 12),
        "transposed": torch.randn(2, 3, 12, 17, dtype=torch.float64).transpose(2, 3),
        "sliced": torch.randn(2, 6, 17, 24, dtype=torch.float64)[:, ::2, :, ::2],
    }
    with emulated_cuda(), index32_limit(limit):
        y = fk.bilinear_upsample(x, size=(17, 12))
        assert_close(y, ref_y)
        for name, g in grads.items():
            (gx,) = torch.autograd.grad(y, x, g, retain_graph=True)
            (gref,) = torch.autograd.grad(ref_y, x, g, retain_graph=True)
            assert_close(gx, gref), name


@pytest.mark.emu
def test_emulated_gradcheck_and_direct_ops():
    emu = torch.ops.fcn_kernels_emu
    x = torch.randn(1, 2, 4, 3, dtype=torch.float64, requires_grad=True)
    with emulated_cuda():
        assert torch.autograd.gradcheck(lambda t: fk.bilinear_upsample(t, scale_factor=1.7), (x,))
    # The emulated ops themselves, called directly, check their arguments like the CUDA ones.
    assert_close(
        emu.bilinear_upsample(x.detach(), [9, 5], True, None, None),
        ref(x.detach(), dict(size=(9, 5)), True),
    )
    with pytest.raises(ValueError, match="output_size must be positive"):
        emu.bilinear_upsample(x.detach(), [0, 5], True, None, None)


# ---- the GPU backward's variants (FCN_KERNELS_BILINEAR_BACKWARD) --------------------


@pytest.mark.emu
@pytest.mark.parametrize("variant", ["separable", "direct"])
@pytest.mark.parametrize("limit", [0, 50], ids=["int32", "int64"])
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("shape,kw", CASES, ids=IDS)
def test_emulated_backward_variants_match_aten(
    monkeypatch, variant, limit, align_corners, shape, kw
):
    """Both GPU backward implementations over the whole shape grid, int32 and int64
    index kernels, NCHW and channels_last, against ATen in float64; bit-identical reruns."""
    monkeypatch.setenv("FCN_KERNELS_BILINEAR_BACKWARD", variant)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    theirs = ref(x, kw, align_corners)
    g = torch.randn_like(theirs)
    (want,) = torch.autograd.grad(theirs, x, g)
    for layout in (torch.contiguous_format, torch.channels_last):
        xl = x.detach().contiguous(memory_format=layout).requires_grad_()
        with emulated_cuda(), index32_limit(limit):
            y = fk.bilinear_upsample(xl, align_corners=align_corners, **kw)
            grads = [torch.autograd.grad(y, xl, g, retain_graph=True)[0] for _ in range(2)]
        assert_close(grads[0], want)
        assert torch.equal(grads[0], grads[1])


@pytest.mark.emu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_emulated_direct_backward_low_precision_and_strided_grads(monkeypatch, dtype):
    monkeypatch.setenv("FCN_KERNELS_BILINEAR_BACKWARD", "direct")
    x = torch.randn(2, 3, 9, 8).to(dtype).requires_grad_()
    x64 = x.detach().double().requires_grad_()
    theirs = ref(x64, dict(scale_factor=2), False)
    grads = {
        "dense": torch.randn(theirs.shape).to(dtype),
        "expanded": torch.tensor(1.5).to(dtype).expand(theirs.shape),
        "transposed": torch.randn(2, 3, 16, 18).to(dtype).transpose(2, 3),
    }
    with emulated_cuda():
        y = fk.bilinear_upsample(x, scale_factor=2)
        for name, g in grads.items():
            (gx,) = torch.autograd.grad(y, x, g, retain_graph=True)
            (gx64,) = torch.autograd.grad(theirs, x64, g.double(), retain_graph=True)
            (mag,) = torch.autograd.grad(theirs, x64, g.double().abs(), retain_graph=True)
            bound = 8 * torch.finfo(dtype).eps * mag + TOL[dtype]["atol"]
            assert ((gx.double() - gx64).abs() <= bound).all(), name


@pytest.mark.emu
def test_backward_variant_bad_value_raises(monkeypatch):
    monkeypatch.setenv("FCN_KERNELS_BILINEAR_BACKWARD", "atomic")
    x = torch.randn(1, 2, 4, 4, requires_grad=True)
    with emulated_cuda():
        y = fk.bilinear_upsample(x, scale_factor=2)
        with pytest.raises(ValueError, match="FCN_KERNELS_BILINEAR_BACKWARD must be one of"):
            y.sum().backward()


@pytest.mark.emu
def test_backward_variants_launch_counts(monkeypatch):
    # The direct variant is one gather launch after the tables; separable is two passes.
    x = torch.randn(1, 2, 6, 6, requires_grad=True)
    counts = {}
    for variant in ("separable", "direct"):
        monkeypatch.setenv("FCN_KERNELS_BILINEAR_BACKWARD", variant)
        with emulated_cuda():
            y = fk.bilinear_upsample(x, scale_factor=2)
            before = torch.ops.fcn_kernels_emu._launch_count()
            torch.autograd.grad(y, x, torch.ones_like(y))
            counts[variant] = torch.ops.fcn_kernels_emu._launch_count() - before
    assert counts == {"separable": 3, "direct": 2}
