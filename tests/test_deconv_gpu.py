"""conv_transpose2d_crop's GPU code (csrc/deconv/gpu.h), emulated on the CPU ("emu") and
on CUDA where a GPU is visible: every path against a float64 ATen reference.

Paths (chosen from shapes only): square channel blocks with few multiply-adds per
output take the gather kernels, which read a device flag saying whether the weight is
channel-diagonal; everything else takes ATen's convolution arranged to compute just
the crop."""

import pytest
import torch
import torch.nn.functional as F

import fcn_kernels as fk
from fcn_kernels.testing import emulated_capture, emulated_cuda, index32_limit

from helpers import TOL, assert_close, requires_cuda

OPS = torch.ops.fcn_kernels


@pytest.fixture(params=["emu", pytest.param("cuda", marks=[requires_cuda, pytest.mark.cuda])])
def gdev(request):
    """A device on which the GPU code runs: "cpu" under emulated_cuda(), or "cuda"."""
    if request.param == "cuda":
        yield "cuda"
        return
    with emulated_cuda():
        yield "cpu"


def reference(x, w, b, kw, offset, size):
    full = F.conv_transpose2d(x, w, b, **kw)
    (oy, ox), (h, wd) = offset, size
    return full[..., oy : oy + h, ox : ox + wd]


def full_size(hw, k, kw):
    s, p, d, op = (kw.get(n, 0) for n in ("stride", "padding", "dilation", "output_padding"))
    s, d = s or 1, d or 1
    pair = lambda v: v if isinstance(v, tuple) else (v, v)  # noqa: E731
    return [
        (i - 1) * ss - 2 * pp + dd * (kk - 1) + oo + 1
        for i, kk, ss, pp, dd, oo in zip(hw, k, pair(s), pair(p), pair(d), pair(op))
    ]


def check(
    device,
    x,
    w,
    b=None,
    offset=(0, 0),
    size=None,
    dtype=torch.float64,
    layout="nchw",
    grad="random",
    scale=1.0,
    frozen=False,
    **kw,
):
    """Forward and the gradients (input, bias, and weight unless `frozen`) at `dtype` on
    `device` against a float64 reference on the same rounded values. A trained square
    weight takes the dense path: the gather kernels need `frozen` (as FCN's upsampling)."""
    if size is None:
        size = tuple(f - o for f, o in zip(full_size(x.shape[2:], w.shape[2:], kw), offset))
    x, w = x.to(dtype), w.to(dtype)
    b = b.to(dtype) if b is not None else None
    leaves = [
        t.detach().double().requires_grad_() for t in (x, w) + ((b,) if b is not None else ())
    ]
    ref = reference(leaves[0], leaves[1], leaves[2] if b is not None else None, kw, offset, size)
    xi = x.to(device)
    if layout == "channels_last":
        xi = xi.contiguous(memory_format=torch.channels_last)
    elif layout == "noncontig":
        xi = xi.transpose(2, 3).contiguous().transpose(2, 3)
    ins = [xi.requires_grad_(), w.to(device).requires_grad_(not frozen)] + (
        [b.to(device).requires_grad_()] if b is not None else []
    )
    out = fk.conv_transpose2d_crop(
        ins[0], ins[1], ins[2] if b is not None else None, offset=offset, size=size, **kw
    )
    assert out.shape == ref.shape and out.dtype == dtype
    want_cl = layout == "channels_last" and not xi.is_contiguous()
    assert out.is_contiguous(
        memory_format=torch.channels_last if want_cl else torch.contiguous_format
    )
    tol = {k: v * scale for k, v in TOL[dtype].items()}
    assert_close(out, ref, dtype, **tol)
    if grad == "random":
        g = torch.randn(ref.shape, dtype=torch.float64).to(dtype)
        got = torch.autograd.grad(out, [t for t in ins if t.requires_grad], g.to(device))
    else:  # out.sum(): an expanded (stride 0) gradient
        g = torch.ones(ref.shape, dtype=dtype)
        got = torch.autograd.grad(out.sum(), [t for t in ins if t.requires_grad])
    want = torch.autograd.grad(ref, [r for r, t in zip(leaves, ins) if t.requires_grad], g.double())
    gtol = {k: v * scale * 5 for k, v in TOL[dtype].items()}
    for a, r in zip(got, want):
        assert_close(a, r, dtype, **gtol)
    return out, got


def rand(*shape):
    return torch.randn(*shape, dtype=torch.float64)


def square_weight(c, k, groups=1, diag=True):
    w = rand(c, c // groups, *k) / (c // groups * k[0] * k[1]) ** 0.5
    if diag:
        cg = c // groups
        w = w * torch.eye(cg, dtype=torch.bool).repeat(groups, 1)[:, :, None, None]
    return w


# ---- FCN's bilinear upsampling: the channel-diagonal gather --------------------------


@pytest.mark.parametrize(
    "k,s,hw", [(4, 2, (19, 18)), (16, 8, (6, 7)), (64, 32, (3, 4))], ids=["k4s2", "k16s8", "k64s32"]
)
@pytest.mark.parametrize("off", [5, 9, 27, 31])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("frozen", [True, False], ids=["frozen", "trained"])
def test_fcn_bilinear(gdev, k, s, hw, off, dtype, frozen):
    """Frozen (FCN's upscore8): the gather; trained (upscore2): the dense path."""
    w = fk.bilinear_kernel(5, k, dtype=torch.float64)
    full = full_size(hw, (k, k), dict(stride=s))
    size = (min(full[0] - off, 40), min(full[1] - off - 1, 45))
    check(
        gdev,
        rand(2, 5, *hw),
        w,
        offset=(off, off + 1),
        size=size,
        dtype=dtype,
        stride=s,
        frozen=frozen,
    )


@pytest.mark.parametrize("layout", ["nchw", "channels_last", "noncontig"])
@pytest.mark.parametrize(
    "dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16], ids=str
)
def test_diagonal_groups_dilation_bias(gdev, layout, dtype):
    w = square_weight(6, (3, 5), groups=2)
    check(
        gdev,
        rand(2, 6, 5, 7),
        w,
        rand(6),
        offset=(2, 1),
        size=(9, 15),
        dtype=dtype,
        layout=layout,
        stride=(2, 3),
        padding=(1, 2),
        dilation=(2, 1),
        groups=2,
        output_padding=(1, 0),
        frozen=True,
    )


def test_depthwise(gdev):
    check(
        gdev,
        rand(2, 4, 6, 5),
        rand(4, 1, 5, 3),
        rand(4),
        offset=(3, 0),
        stride=(3, 2),
        dilation=(1, 2),
        groups=4,
        padding=(1, 0),
    )


# ---- square blocks whose weight is not diagonal: the flag's dense loop --------------


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_square_but_dense(gdev, layout):
    check(
        gdev,
        rand(2, 6, 7, 5),
        square_weight(6, (4, 4), groups=2, diag=False),
        rand(6),
        offset=(1, 3),
        size=(12, 7),
        layout=layout,
        stride=2,
        groups=2,
        frozen=True,
    )


@pytest.mark.parametrize("where", ["first", "last", "last_group", "below"])
def test_one_entry_off_the_diagonal(gdev, where):
    """The flag kernel must see an off-diagonal entry wherever it is."""
    w = square_weight(6, (4, 3), groups=2)
    pos = {
        "first": (0, 1, 0, 0),
        "last": (5, 1, 3, 2),
        "last_group": (4, 2, 1, 1),
        "below": (2, 0, 2, 0),
    }[where]
    w[pos] = 0.75
    check(gdev, rand(1, 6, 5, 6), w, offset=(1, 2), size=(8, 9), stride=2, groups=2, frozen=True)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_off_the_diagonal(gdev, value):
    w = fk.bilinear_kernel(3, 4, dtype=torch.float64)
    w[1, 2, 3, 0] = value
    x = rand(1, 3, 4, 4)
    with torch.no_grad():
        out = fk.conv_transpose2d_crop(x.to(gdev), w.to(gdev), stride=2, offset=1, size=(7, 7))
    ref = reference(x, w, None, dict(stride=2), (1, 1), (7, 7))
    assert torch.equal(out.cpu().isnan(), ref.isnan()) and torch.equal(
        out.cpu().isinf(), ref.isinf()
    )
    assert out.cpu().isnan().any() or out.cpu().isinf().any()
    assert_close(out.nan_to_num(), ref.nan_to_num())


def test_tiny_off_diagonal_entry_is_kept(gdev):
    w = fk.bilinear_kernel(4, 4, dtype=torch.float64)
    w[1, 2, 3, 0] = 1e-30
    x = rand(1, 4, 6, 6)
    x[0, 1] = 1e30
    check(gdev, x, w, offset=(1, 1), size=(10, 10), stride=2, frozen=True)


@pytest.mark.parametrize(
    "shape,where",
    [
        ((21, 16), None),  # FCN's upscore8 weight: 441 filters of 256 taps, several per thread
        ((21, 16), (20, 19, 15, 15)),
        ((21, 16), (0, 20, 0, 0)),
        ((21, 16), (13, 2, 7, 3)),
        ((384, 1), None),  # 1x1 taps, 3 groups of 128: 49152 filters, more rows than threads
        ((384, 1), (383, 126, 0, 0)),
        ((384, 1), (129, 0, 0, 0)),
    ],
)
def test_diagonal_check_many_filters(gdev, shape, where):
    """The check's row stepping (ci, j, ci mod cin_g without division) over weights with
    more filters than its threads; the copy of every diagonal filter."""
    c, k = shape
    groups = 3 if c == 384 else 1
    w = square_weight(c, (k, k), groups=groups)
    if where is not None:
        w[where] = 0.5
    x = rand(1, c, 3, 2)
    check(gdev, x, w, offset=(1, 0), stride=2, groups=groups, frozen=True)


# ---- the dense path: ATen's convolution computing only the crop ---------------------

DENSE = {
    "nonsquare": dict(cin=4, cout_g=3, groups=1, k=(4, 4), kw=dict(stride=2)),
    "groups": dict(cin=6, cout_g=1, groups=2, k=(3, 5), kw=dict(stride=(2, 3), padding=(1, 2))),
    "dilation_op": dict(
        cin=3,
        cout_g=2,
        groups=1,
        k=(3, 2),
        kw=dict(stride=(2, 1), dilation=(2, 3), output_padding=(1, 2)),
    ),
    "square_many_macs": dict(cin=16, cout_g=16, groups=1, k=(3, 3), kw=dict(stride=1)),
}
# Crops touching each edge of the full map, or none, or cutting into the output_padding.
CROPS = {
    "all": ((0, 0), None),
    "top_left": ((0, 0), (5, 4)),
    "bottom_right": ("end", (5, 4)),
    "inner": ((2, 3), (5, 4)),
    "top_right": ((0, "end"), (6, 3)),
    "bottom_left": (("end", 0), (3, 6)),
}


def resolve_crop(crop, full):
    off, size = crop
    if size is None:
        return (0, 0), None
    off = off if off != "end" else ("end", "end")
    off = tuple(f - s if o == "end" else o for o, f, s in zip(off, full, size))
    return off, size


@pytest.mark.parametrize("name", list(DENSE))
@pytest.mark.parametrize("crop", list(CROPS))
def test_dense_path(gdev, name, crop):
    c = DENSE[name]
    x = rand(2, c["cin"], 5, 6)
    w = rand(c["cin"], c["cout_g"], *c["k"]) / 3
    b = rand(c["cout_g"] * c["groups"])
    off, size = resolve_crop(CROPS[crop], full_size((5, 6), c["k"], c["kw"]))
    check(gdev, x, w, b, offset=off, size=size, groups=c["groups"], **c["kw"])


@pytest.mark.parametrize("layout", ["channels_last", "noncontig"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_dense_path_layouts_dtypes(gdev, layout, dtype):
    check(
        gdev,
        rand(2, 4, 5, 6),
        rand(4, 3, 4, 4) / 4,
        rand(3),
        offset=(3, 1),
        size=(7, 9),
        dtype=dtype,
        layout=layout,
        stride=2,
        scale=2,
    )


# ---- crops at every edge of the gather paths ----------------------------------------


@pytest.mark.parametrize("crop", list(CROPS))
@pytest.mark.parametrize("diag", [True, False], ids=["diagonal", "square_dense"])
def test_gather_crops(gdev, crop, diag):
    kw = dict(stride=(2, 3), padding=(1, 0), dilation=(1, 2), output_padding=(1, 0))
    off, size = resolve_crop(CROPS[crop], full_size((5, 6), (4, 3), kw))
    check(
        gdev,
        rand(2, 4, 5, 6),
        square_weight(4, (4, 3), diag=diag),
        rand(4),
        offset=off,
        size=size,
        frozen=True,
        **kw,
    )


# ---- index types, empty and degenerate shapes, gradient layouts ---------------------


@pytest.mark.parametrize("case", ["diagonal", "square_dense", "depthwise"])
def test_int64_index_kernels(gdev, case):
    """The int64 variants of every gather kernel (forced on small tensors)."""
    w = {
        "diagonal": square_weight(4, (4, 4)),
        "square_dense": square_weight(4, (4, 4), diag=False),
        "depthwise": rand(4, 1, 4, 4),
    }[case]
    groups = 4 if case == "depthwise" else 1
    with index32_limit(16):
        crop = dict(offset=(3, 2), size=(7, 8))
        check(
            gdev,
            rand(2, 4, 5, 6),
            w,
            rand(4),
            stride=2,
            groups=groups,
            layout="channels_last",
            frozen=True,
            **crop,
        )
        check(gdev, rand(1, 4, 5, 6), w, offset=(0, 1), stride=2, groups=groups, frozen=True)


def test_weight_gradient_in_slices(gdev):
    """Few weight elements over many (n, iy, ix) terms: the reduction is split in slices
    and a second kernel adds them in order. Also in int64 and bit-identical when repeated."""
    x, w = rand(2, 2, 90, 70), rand(2, 1, 2, 2)
    grads = []
    for limit in (0, 64, 0):  # default, int64, default again
        torch.manual_seed(1)
        with index32_limit(limit):
            grads.append(check(gdev, x, w, offset=(1, 1), size=(170, 130), stride=2, groups=2)[1])
    assert torch.equal(grads[0][1], grads[2][1])
    assert_close(grads[0][1], grads[1][1], torch.float64)


def test_empty_batch_and_no_input_channels(gdev):
    for w in (fk.bilinear_kernel(3, 4, dtype=torch.float64), rand(3, 2, 4, 4)):
        x = rand(0, 3, 5, 5).to(gdev).requires_grad_()
        wl = w.to(gdev).requires_grad_()
        out = fk.conv_transpose2d_crop(x, wl, stride=2, offset=1, size=(7, 8))
        assert out.shape == (0, w.shape[1], 7, 8)
        gx, gw = torch.autograd.grad(out.sum(), (x, wl))
        assert gx.shape == x.shape and torch.equal(gw, torch.zeros_like(gw))
    # 0 input channels: the output is the bias; the weight gradient is empty (no launch
    # of 0 blocks).
    x0 = rand(2, 0, 4, 4).to(gdev)
    b = rand(3).to(gdev)
    out = OPS.conv_transpose2d_crop(
        x0, rand(0, 3, 3, 3).to(gdev), b, [2, 2], [0, 0], [0, 0], 1, [1, 1], [1, 0], [5, 6]
    )
    assert torch.equal(out.cpu(), b.cpu().view(1, 3, 1, 1).expand(2, 3, 5, 6))
    gw = OPS.conv_transpose2d_crop_backward_weight(
        rand(2, 3, 5, 6).to(gdev), x0, [0, 3, 3, 3], [2, 2], [0, 0], 1, [1, 1], [1, 0]
    )
    assert gw.shape == (0, 3, 3, 3)


@pytest.mark.parametrize("weight", ["diagonal", "square_dense", "dense"])
def test_expanded_gradient(gdev, weight):
    """y.sum() backward hands the op a stride-0 gradient: read through its strides."""
    w = {
        "diagonal": fk.bilinear_kernel(3, 4, dtype=torch.float64),
        "square_dense": square_weight(3, (4, 4), diag=False),
        "dense": rand(3, 2, 4, 4),
    }[weight]
    for frozen in (True, False):
        check(
            gdev,
            rand(2, 3, 5, 6),
            w,
            offset=(2, 1),
            size=(8, 9),
            stride=2,
            grad="sum",
            frozen=frozen,
        )
    g = torch.ones((), dtype=torch.float64).expand(2, w.shape[1], 8, 9).to(gdev)
    gx = OPS.conv_transpose2d_crop_backward_input(
        g, w.to(gdev), [2, 3, 5, 6], [2, 2], [0, 0], 1, [1, 1], [2, 1]
    )
    ref = (
        OPS.conv_transpose2d_crop_backward_input(
            g.cpu().contiguous(), w, [2, 3, 5, 6], [2, 2], [0, 0], 1, [1, 1], [2, 1]
        )
        if gdev == "cuda"
        else None
    )
    if ref is None:  # emulated: compare with ATen directly
        xr = torch.zeros(2, 3, 5, 6, dtype=torch.float64, requires_grad=True)
        ref = torch.autograd.grad(reference(xr, w, None, dict(stride=2), (2, 1), (8, 9)).sum(), xr)[
            0
        ]
    assert_close(gx, ref)


def test_no_host_sync_under_capture(gdev):
    """Nothing on the GPU path may need the host (the old channel-diagonal test called
    .item()); under an emulated capture every path still runs."""
    if gdev == "cuda":
        pytest.skip("real capture is covered by the GPU check script")
    with emulated_capture():
        for w in (fk.bilinear_kernel(3, 4, dtype=torch.float64), rand(3, 2, 4, 4)):
            check(gdev, rand(1, 3, 5, 5), w, offset=(1, 1), size=(8, 8), stride=2, frozen=True)


@pytest.mark.parametrize("frozen", [True, False], ids=["gather", "dense"])
def test_deterministic_bits(gdev, frozen):
    x, w = rand(2, 6, 9, 8), square_weight(6, (4, 4), groups=2, diag=False)
    runs = []
    for _ in range(2):
        torch.manual_seed(1)
        runs.append(
            check(
                gdev,
                x,
                w,
                offset=(2, 2),
                size=(14, 12),
                stride=2,
                groups=2,
                dtype=torch.float32,
                frozen=frozen,
            )
        )
    assert torch.equal(runs[0][0], runs[1][0])
    for a, b in zip(runs[0][1], runs[1][1]):
        assert torch.equal(a, b)


def test_diagonal_check_follows_the_weight(gdev):
    # The diagonal check runs on every call (nothing cached): every change is seen, an
    # in-place write, `.data` replaced, another dtype, an inference tensor
    # (tests/test_deconv_stale_weight.py: writes that do not bump the version).
    x = torch.randn(2, 3, 6, 5, dtype=torch.float64, device=gdev)
    w = fk.bilinear_kernel(3, 4, dtype=torch.float64, device=gdev)
    kw = dict(stride=2, offset=(1, 1), size=(9, 8))

    def ref(weight):
        return reference(x, weight.double(), None, dict(stride=2), (1, 1), (9, 8))

    for _ in range(2):
        assert_close(fk.conv_transpose2d_crop(x, w, **kw), ref(w))
    with torch.no_grad():
        w[0, 2, 1, 1] = 0.75  # now off the diagonal: the flag must be raised again
    assert_close(fk.conv_transpose2d_crop(x, w, **kw), ref(w))
    w.data = fk.bilinear_kernel(3, 4, dtype=torch.float64, device=gdev) * 2  # new storage
    assert_close(fk.conv_transpose2d_crop(x, w, **kw), ref(w))
    dense = torch.randn(3, 3, 4, 4, dtype=torch.float64, device=gdev)
    assert_close(fk.conv_transpose2d_crop(x, dense, **kw), ref(dense))
    assert_close(
        fk.conv_transpose2d_crop(x.float(), w.float(), **kw), ref(w.float()), torch.float32
    )
    with torch.inference_mode():  # no version counter: never cached, still right
        wi = fk.bilinear_kernel(3, 4, dtype=torch.float64, device=gdev)
        assert_close(fk.conv_transpose2d_crop(x, wi, **kw), ref(wi))
        wi[1, 0, 2, 2] = 1.0
        assert_close(fk.conv_transpose2d_crop(x, wi, **kw), ref(wi))
