"""fcn_kernels.max_unpool2d against F.max_unpool2d: values, gradients, layouts, dtypes,
determinism, torch.compile/opcheck, every error path."""

import os
import random

import pytest
import torch
import torch.nn.functional as F

import fcn_kernels as fk
from helpers import assert_same, gpu_code, pooled, reference, requires_cuda, to_layout
from fcn_kernels._common import is_channels_last

ops = torch.ops.fcn_kernels

# (input N, C, H, W; kernel_size; stride; padding; ceil_mode) of the max pooling whose
# indices are unpooled. Odd sizes, ceil mode, stride != kernel (both ways), padding.
POOLS = [
    ((2, 3, 8, 8), 2, 2, 0, False),  # FCN/SegNet 2x2/2
    ((2, 3, 9, 7), 2, 2, 0, True),  # odd sizes, ceil mode
    ((1, 4, 11, 13), 2, 2, 1, True),  # padding + ceil
    ((2, 5, 10, 12), (2, 3), (3, 4), (1, 1), False),  # stride > kernel, non-square
    ((1, 3, 13, 11), 3, 2, 1, True),  # overlapping windows (AlexNet-style 3x3/2)
    ((2, 2, 9, 9), 3, 1, 1, False),  # heavily overlapping
    ((1, 2, 7, 10), (3, 2), (2, 2), (1, 0), True),
    ((3, 1, 1, 5), 1, 1, 0, False),  # 1x1 windows, a single row
    ((1, 70, 6, 6), 2, 2, 0, True),  # many channels (channels_last blocks)
]
POOL_IDS = [f"{s[0]}-k{s[1]}-s{s[2]}-p{s[3]}{'-ceil' if s[4] else ''}" for s in POOLS]


LAYOUTS = ["contiguous", "channels_last", "noncontig"]


# ---------------------------------------------------------------------------------
# Values against ATen
# ---------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("pool", POOLS, ids=POOL_IDS)
def test_forward_matches_aten(pool, layout, dtype, device):
    shape, k, s, p, ceil = pool
    y, i = pooled(shape, k, s, p, ceil, dtype, device)
    y, i = to_layout(y, layout), to_layout(i, layout)
    size = shape[-2:]  # undo ceil mode / odd sizes exactly
    out = fk.max_unpool2d(y, i, k, s, p, output_size=size)
    # Duplicate indices (overlapping windows) carry equal pooled values, so ATen's
    # (unordered) result is well defined here too.
    assert_same(out, F.max_unpool2d(y.cpu(), i.cpu(), k, s, p, output_size=size))
    assert_same(out, reference(y, i, size))
    assert out.device == y.device
    # channels_last in, channels_last out (the rule of fcn_kernels._common)
    fmt = torch.channels_last if is_channels_last(y) else torch.contiguous_format
    assert out.stride() == torch.empty(out.shape, memory_format=fmt).stride()


@pytest.mark.parametrize("pool", POOLS, ids=POOL_IDS)
def test_backward_matches_aten(pool, dtype, device):
    shape, k, s, p, ceil = pool
    y, i = pooled(shape, k, s, p, ceil, dtype, device)
    size = shape[-2:]
    for layout in LAYOUTS:
        g = to_layout(
            torch.randn(y.shape[:2] + size, dtype=torch.float64).to(dtype).to(device), layout
        )
        yy = to_layout(y, layout).requires_grad_()
        (ours,) = torch.autograd.grad(fk.max_unpool2d(yy, i, k, s, p, output_size=size), yy, g)
        yc = y.cpu().requires_grad_()
        (ref,) = torch.autograd.grad(
            F.max_unpool2d(yc, i.cpu(), k, s, p, output_size=size), yc, g.cpu()
        )
        assert_same(ours, ref)


# NCHW backwards with grad_input >= 1 MiB in a 4- or 8-byte dtype take the CPU kernel's
# large-problem path (streaming stores, plus a prefetch of grad_output when its rows
# are >= 256 bytes). float32: 128-wide rows (prefetch, 66 planes: tasks end mid-plane)
# and 55-wide rows (none); float64: both prefetch; bfloat16: the ordinary path.
@pytest.mark.parametrize(
    "dtype",
    [torch.float32, torch.float64, torch.bfloat16],
    ids=lambda d: str(d).replace("torch.", ""),
)
@pytest.mark.parametrize("shape, k", [((3, 22, 128, 128), 2), ((8, 64, 55, 55), 3)])
def test_backward_large(shape, k, dtype, device):
    y, i = pooled(shape, k, 2, 0, False, dtype, device)
    size = shape[-2:]
    plane = size[0] * size[1]
    g = torch.randn(shape, dtype=torch.float64).to(dtype).to(device)
    yy = y.requires_grad_()
    (ours,) = torch.autograd.grad(fk.max_unpool2d(yy, i, k, 2, output_size=size), yy, g)
    yc = y.detach().cpu().requires_grad_()
    (ref,) = torch.autograd.grad(F.max_unpool2d(yc, i.cpu(), k, 2, output_size=size), yc, g.cpu())
    assert_same(ours, ref)
    # Indices anywhere in the plane (the prefetch does not follow them): still exact.
    j = torch.randint(0, plane, i.shape).to(device)
    assert_same(
        ops.max_unpool2d_backward(g, j, [k, k], [2, 2], [0, 0]),
        g.cpu().flatten(2).gather(2, j.cpu().flatten(2)).view(j.shape),
    )
    # A bad index near the end still raises.
    n, c, h, w = i.shape
    j = i.clone()
    j[n - 1, c - 1, h - 1, w - 3] = plane
    with pytest.raises(IndexError, match=rf"indices\[{n - 1}, {c - 1}, {h - 1}, {w - 3}\] = "):
        ops.max_unpool2d_backward(g, j, [k, k], [2, 2], [0, 0])


@pytest.mark.parametrize("output_size", [None, "2", "4", "size", "min", "max"])
@pytest.mark.parametrize("k, s, p", [(2, 2, 0), (3, 2, 1), (2, 3, 0)])
def test_output_size_forms(output_size, k, s, p, device):
    y, i = pooled((2, 3, 9, 8), k, s, p, True, device=device)
    default = [(n - 1) * s + k - 2 * p for n in y.shape[-2:]]
    in_plane = torch.Size([9, 8])
    size = {
        None: None,
        "2": tuple(in_plane),
        "4": (2, 3) + tuple(in_plane),
        "size": torch.Size((2, 3)) + in_plane,
        "min": [d - s + 1 for d in default],
        "max": [d + s - 1 for d in default],
    }[output_size]
    if output_size in (None, "min", "max"):  # arbitrary valid indices for that size
        out_hw = default if size is None else size
        plane = out_hw[0] * out_hw[1]
        i = torch.randint(0, plane, i.shape, generator=torch.Generator().manual_seed(1)).to(device)
    ref = F.max_unpool2d(y.cpu(), i.cpu(), k, s, p, output_size=size)
    out = fk.max_unpool2d(y, i, k, s, p, output_size=size)
    assert_same(out, reference(y, i, ref.shape[-2:]))


def test_unbatched_and_empty_batch(device, dtype):
    y, i = pooled((1, 3, 6, 6), 2, 2, 0, False, dtype, device)
    out = fk.max_unpool2d(y[0], i[0], 2)
    assert_same(out, F.max_unpool2d(y[0].cpu(), i[0].cpu(), 2))
    y0 = torch.zeros(0, 3, 3, 3, dtype=dtype, device=device, requires_grad=True)
    i0 = torch.zeros(0, 3, 3, 3, dtype=torch.long, device=device)
    out = fk.max_unpool2d(y0, i0, 2, output_size=(7, 7))
    assert out.shape == (0, 3, 7, 7)
    out.sum().backward()
    assert y0.grad.shape == y0.shape


# ---------------------------------------------------------------------------------
# Arbitrary indices, duplicates, determinism
# ---------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("k, s, p", [(2, 2, 0), (3, 2, 1), (2, 3, 1)])
def test_arbitrary_indices_last_wins(k, s, p, layout, device):
    # Random indices anywhere in the plane, many repeated: exact, last (row-major) wins.
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 19, 5, 7, generator=gen)
    out_hw = ((5 - 1) * s + k - 2 * p, (7 - 1) * s + k - 2 * p)
    ind = torch.randint(0, out_hw[0] * out_hw[1] // 3, x.shape, generator=gen)
    xd, idd = to_layout(x.to(device), layout), to_layout(ind.to(device), layout)
    assert_same(fk.max_unpool2d(xd, idd, k, s, p), reference(x, ind, out_hw))


def test_one_stray_index_falls_back(device):
    # Max-pool indices except the very last one, which points into another window: the
    # fast path must notice and the result still be exact.
    y, i = pooled((2, 4, 16, 16), 2, 2, 0, False, device=device)
    for layout in ("contiguous", "channels_last"):
        j = i.clone()
        j[-1, -1, -1, -1] = 0
        j, yy = to_layout(j, layout), to_layout(y, layout)
        assert_same(fk.max_unpool2d(yy, j, 2), reference(y, j, (16, 16)))


def test_random_geometries(device):
    # Random pooling geometries (padding, ceil mode, stride above and below the kernel)
    # with max-pool indices, max-pool indices with one moved anywhere in the plane, or
    # random indices: always exact, in both layouts; a bad index always raises.
    rng = random.Random(0)
    done = 0
    while done < 150:
        k = (rng.randint(1, 4), rng.randint(1, 4))
        s = (rng.randint(1, 5), rng.randint(1, 5))
        p = (rng.randint(0, k[0] // 2), rng.randint(0, k[1] // 2))
        hw = (rng.randint(max(1, k[0] - 2 * p[0]), 14), rng.randint(max(1, k[1] - 2 * p[1]), 14))
        y, i = pooled((2, 3) + hw, k, s, p, rng.random() < 0.5, seed=done)
        default = [(n - 1) * st + kk - 2 * pp for n, kk, st, pp in zip(y.shape[2:], k, s, p)]
        if not all(d - st < n < d + st for d, n, st in zip(default, hw, s)):
            continue  # ceil mode can give a size that unpooling cannot undo
        done += 1
        plane = hw[0] * hw[1]
        mode = rng.choice(["pool", "moved", "random", "bad"])
        if mode == "moved":
            i.view(-1)[rng.randrange(i.numel())] = rng.randrange(plane)
        elif mode == "random":
            i = torch.randint(0, plane, i.shape, generator=torch.Generator().manual_seed(done))
        elif mode == "bad":
            i.view(-1)[rng.randrange(i.numel())] = rng.choice([-1, plane])
        x = torch.randn(y.shape, generator=torch.Generator().manual_seed(done))
        for layout in ("contiguous", "channels_last"):
            xd, idd = to_layout(x.to(device), layout), to_layout(i.to(device), layout)
            if mode == "bad":
                with pytest.raises(IndexError, match="is out of range"):
                    fk.max_unpool2d(xd, idd, k, s, p, output_size=hw)
            else:
                assert_same(fk.max_unpool2d(xd, idd, k, s, p, output_size=hw), reference(x, i, hw))


def test_duplicates_same_everywhere(device):
    # Every input names output 0: the last input wins, in every layout and on every run.
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    ind = torch.zeros(2, 3, 4, 4, dtype=torch.long)
    expected = torch.zeros(2, 3, 8, 8)
    expected[:, :, 0, 0] = x[:, :, -1, -1]
    for layout in LAYOUTS:
        for _ in range(3):
            out = fk.max_unpool2d(
                to_layout(x.to(device), layout), to_layout(ind.to(device), layout), 2
            )
            assert_same(out, expected)


class DeterministicAlgorithms:
    def __enter__(self):
        self.prev = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(True)

    def __exit__(self, *exc):
        torch.use_deterministic_algorithms(self.prev)


def test_deterministic_mode(device):
    y, i = pooled((2, 8, 20, 20), 3, 2, 1, False, device=device)
    g = torch.randn(2, 8, 20, 20, device=device)
    with DeterministicAlgorithms():
        runs = []
        for _ in range(2):
            yy = y.clone().requires_grad_()
            out = fk.max_unpool2d(yy, i, 3, 2, 1, output_size=(20, 20))
            (gx,) = torch.autograd.grad(out, yy, g)
            runs.append((out, gx))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    assert_same(runs[0][0], reference(y, i, (20, 20)))


# ---------------------------------------------------------------------------------
# Autograd, opcheck, torch.compile, export, module
# ---------------------------------------------------------------------------------


@pytest.mark.parametrize("k, s, p", [(2, 2, 0), (3, 3, 1), (2, 3, 0)])
def test_gradcheck(k, s, p, device):
    # Disjoint windows: indices unique, so the gather is the exact derivative.
    y, i = pooled((2, 3, 7, 6), k, s, p, True, torch.float64, device)
    y.requires_grad_()
    size = (7, 6)
    assert torch.autograd.gradcheck(lambda t: fk.max_unpool2d(t, i, k, s, p, size), (y,))
    assert torch.autograd.gradgradcheck(lambda t: fk.max_unpool2d(t, i, k, s, p, size), (y,))


def test_double_backward_sums_duplicates(device):
    # The backward op's own gradient scatters and sums (as ATen's double backward does),
    # also where indices repeat.
    x = torch.randn(1, 2, 3, 3, dtype=torch.float64, device=device)
    ind = torch.randint(0, 4, (1, 2, 3, 3), generator=torch.Generator().manual_seed(3))
    ind = ind.to(device)
    g = torch.randn(1, 2, 6, 6, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda t: ops.max_unpool2d_backward(t, ind, [2, 2], [2, 2], [0, 0]), (g,)
    )
    assert torch.autograd.gradgradcheck(
        lambda t: ops.max_unpool2d_backward(t, ind, [2, 2], [2, 2], [0, 0]), (g,)
    )
    # and the gradients of ATen's composition
    xa = x.clone().requires_grad_()
    ga = torch.autograd.grad(F.max_unpool2d(xa, ind, 2), xa, g, create_graph=True)[0]
    xo = x.clone().requires_grad_()
    go = torch.autograd.grad(fk.max_unpool2d(xo, ind, 2), xo, g, create_graph=True)[0]
    w = torch.randn_like(ga)
    assert_same(
        torch.autograd.grad((go * w).sum(), g)[0], torch.autograd.grad((ga * w).sum(), g)[0]
    )


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_opcheck(layout, device):
    y, i = pooled((2, 3, 8, 9), 2, 2, 0, True, device=device)
    y, i = to_layout(y, layout), to_layout(i, layout)
    y.requires_grad_()
    torch.library.opcheck(ops.max_unpool2d, (y, i, [2, 2], [2, 2], [0, 0], [8, 9]))
    y3, i3 = pooled((1, 2, 9, 9), 3, 2, 1, False, device=device)
    torch.library.opcheck(
        ops.max_unpool2d, (y3.requires_grad_(), i3, [3, 3], [2, 2], [1, 1], [9, 9])
    )
    g = to_layout(torch.randn(2, 3, 8, 9, device=device), layout).requires_grad_()
    torch.library.opcheck(ops.max_unpool2d_backward, (g, i, [2, 2], [2, 2], [0, 0]))
    torch.library.opcheck(ops.max_unpool2d_backward, (g, i, [2, 2], [2, 2], [0, 0], False))


@pytest.mark.parametrize("dynamic", [False, True])
def test_torch_compile(dynamic, device):
    torch._dynamo.reset()

    def f(x, ind):
        return fk.max_unpool2d(x * 2, ind, 2, output_size=(9, 11)).sin()

    compiled = torch.compile(f, fullgraph=True, dynamic=dynamic)
    for n in (1, 3):
        y, i = pooled((n, 4, 9, 11), 2, 2, 0, True, device=device)
        a = y.clone().requires_grad_()
        b = y.clone().requires_grad_()
        out_c, out_e = compiled(a, i), f(b, i)
        torch.testing.assert_close(out_c, out_e)
        g = torch.randn_like(out_e)
        torch.testing.assert_close(
            torch.autograd.grad(out_c, a, g)[0], torch.autograd.grad(out_e, b, g)[0]
        )


def test_export():
    class M(torch.nn.Module):
        def forward(self, x, ind):
            return fk.max_unpool2d(x, ind, 2)

    y, i = pooled((1, 2, 6, 6), 2, 2, 0, False)
    ep = torch.export.export(M(), (y, i))
    assert_same(ep.module()(y, i), F.max_unpool2d(y, i, 2))


def test_module_is_drop_in(device):
    ref = torch.nn.MaxUnpool2d(3, stride=2, padding=1)
    mod = fk.nn.MaxUnpool2d(3, stride=2, padding=1)
    assert isinstance(mod, torch.nn.MaxUnpool2d) and repr(mod) == repr(ref)
    assert (mod.kernel_size, mod.stride, mod.padding) == (ref.kernel_size, ref.stride, ref.padding)
    y, i = pooled((2, 3, 10, 9), 3, 2, 1, True, device=device)
    assert_same(mod(y, i, output_size=(10, 9)), ref(y.cpu(), i.cpu(), output_size=(10, 9)))
    assert_same(mod(y, i), ref(y.cpu(), i.cpu()))
    assert_same(
        fk.nn.MaxUnpool2d(2)(*pooled((1, 1, 4, 4), 2, 2, 0, False, device=device)),
        torch.nn.MaxUnpool2d(2)(*pooled((1, 1, 4, 4), 2, 2, 0, False)),
    )


# ---------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------


def test_argument_errors():
    y, i = pooled((1, 2, 4, 4), 2, 2, 0, False)
    bad = [
        (dict(input=y.numpy()), TypeError, "input must be a torch.Tensor"),
        (dict(input=y[0, 0]), ValueError, "input must be a 3-D"),
        (dict(input=y[None]), ValueError, "input must be a 3-D"),
        (dict(input=i.clone()), TypeError, "input must be float32"),
        (dict(indices=[0]), TypeError, "indices must be a torch.Tensor"),
        (dict(indices=i.int()), TypeError, "indices must be an int64 tensor"),
        (dict(indices=i.float()), TypeError, "indices must be an int64 tensor"),
        (dict(indices=i[:, :, :1]), ValueError, "indices must have the shape of input"),
        (dict(kernel_size=0), ValueError, "kernel_size must be positive"),
        (dict(kernel_size=(2, 2, 2)), ValueError, "kernel_size must be a number or a pair"),
        (dict(kernel_size=2.0), TypeError, "kernel_size must be integers"),
        (dict(stride=0), ValueError, "stride must be positive"),
        (dict(stride=(2, -1)), ValueError, "stride must be positive"),
        (dict(padding=-1), ValueError, "padding must be non-negative"),
        (dict(padding=(1, 1), kernel_size=1), ValueError, "give an empty output"),
        (dict(output_size=(4, 4, 4)), ValueError, "output_size must have 2 or 4 elements"),
        (dict(output_size=5), TypeError, "output_size must be a sequence"),
        (dict(output_size=(4.0, 4)), TypeError, "output_size must be integers"),
        (dict(output_size=(2, 4)), ValueError, r"invalid output_size \(2, 4\): dim 0"),
        (dict(output_size=(1, 1, 4, 6)), ValueError, "dim 1 must be strictly between 2 and 6"),
    ]
    for change, exc, msg in bad:
        args = dict(input=y, indices=i, kernel_size=2, stride=None, padding=0, output_size=None)
        args.update(change)
        with pytest.raises(exc, match=msg):
            fk.max_unpool2d(**args)
    with pytest.raises(ValueError, match="non-empty spatial"):
        fk.max_unpool2d(torch.zeros(1, 1, 0, 2), torch.zeros(1, 1, 0, 2, dtype=torch.long), 2)


def test_op_level_errors():
    """Direct torch.ops calls are checked in C++ too."""
    y, i = pooled((1, 2, 4, 4), 2, 2, 0, False)
    k = [2, 2]
    cases = [
        (
            lambda: ops.max_unpool2d(y, i, k, k, [0, 0], [6, 4]),
            ValueError,
            r"invalid output_size \(6, 4\): dim 0 must be strictly between",
        ),
        (
            lambda: ops.max_unpool2d(y, i, [0, 2], k, [0, 0], [4, 4]),
            ValueError,
            "kernel_size must be positive",
        ),
        (lambda: ops.max_unpool2d(y, i, k, k, [0, -1], [4, 4]), ValueError, "padding"),
        (lambda: ops.max_unpool2d(y, i, k, [2**40, 2], [0, 0], [4, 4]), ValueError, "2\\^31"),
        (lambda: ops.max_unpool2d(y, i.int(), k, k, [0, 0], [4, 4]), TypeError, "int64"),
        (lambda: ops.max_unpool2d(y.long(), i, k, k, [0, 0], [4, 4]), TypeError, "float32"),
        (lambda: ops.max_unpool2d(y[0], i[0], k, k, [0, 0], [4, 4]), ValueError, "4-D"),
        (lambda: ops.max_unpool2d(y, i[:, :1], k, k, [0, 0], [4, 4]), ValueError, "shape of input"),
        (
            lambda: ops.max_unpool2d_backward(torch.randn(1, 2, 4, 4), i[:, :1], k, k, [0, 0]),
            ValueError,
            "batch and channels",
        ),
        (
            lambda: ops.max_unpool2d_backward(torch.randn(1, 2, 9, 4), i, k, k, [0, 0]),
            ValueError,
            "invalid output_size",
        ),
    ]
    for f, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            f()
    # The wrapper only normalises arguments: for the same bad value it raises what the
    # direct call raises, from the same C++ check.
    for wrapped, direct in [
        (
            lambda: fk.max_unpool2d(y, i, 2, output_size=(6, 4)),
            lambda: ops.max_unpool2d(y, i, k, k, [0, 0], [6, 4]),
        ),
        (
            lambda: fk.max_unpool2d(y, i.int(), 2),
            lambda: ops.max_unpool2d(y, i.int(), k, k, [0, 0], [4, 4]),
        ),
        (
            lambda: fk.max_unpool2d(y, i, 2, padding=-1),
            lambda: ops.max_unpool2d(y, i, k, k, [-1, -1], [4, 4]),
        ),
    ]:
        with pytest.raises(Exception) as a:
            wrapped()
        with pytest.raises(Exception) as b:
            direct()
        assert (
            type(a.value) is type(b.value)
            and str(a.value).splitlines()[0] == str(b.value).splitlines()[0]
        )


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("k, s", [(2, 2), (3, 2)])
def test_out_of_range_indices(k, s, layout, device):
    y, i = pooled((2, 3, 8, 8), k, s, 0, False, device=device)
    for value in (64, -1, 10**12):
        j = i.clone()
        j[1, 2, 2, 1] = value
        j[1, 2, 2, 2] = value  # the first bad entry is reported
        yy, j = to_layout(y, layout), to_layout(j, layout)
        msg = rf"indices\[1, 2, 2, 1\] = {value} is out of range for output planes of size"
        with pytest.raises(IndexError, match=msg):
            fk.max_unpool2d(yy, j, k, s, output_size=(8, 8))
        g = torch.randn(2, 3, 8, 8, device=device)
        with pytest.raises(IndexError, match=msg):
            ops.max_unpool2d_backward(g, j, [k, k], [s, s], [0, 0])
        # check_indices=False (autograd's call, after the forward checked): CUDA skips
        # its host sync and reads such entries as 0; the CPU still raises.
        if not gpu_code(device):
            with pytest.raises(IndexError, match=msg):
                ops.max_unpool2d_backward(g, j, [k, k], [s, s], [0, 0], False)
        else:
            gx = ops.max_unpool2d_backward(g, j, [k, k], [s, s], [0, 0], False)
            assert gx[1, 2, 2, 1].item() == 0 and gx[1, 2, 2, 2].item() == 0
    # No device-side assert: the device is still usable afterwards.
    assert_same(
        fk.max_unpool2d(y, i, k, s, output_size=(8, 8)),
        F.max_unpool2d(y.cpu(), i.cpu(), k, s, output_size=(8, 8)),
    )


@requires_cuda
def test_device_mismatch():
    y, i = pooled((1, 2, 4, 4), 2, 2, 0, False)
    with pytest.raises(ValueError, match="indices must be on the device of input"):
        fk.max_unpool2d(y.cuda(), i, 2)
    with pytest.raises(ValueError, match="indices must be on the device of input"):
        ops.max_unpool2d(y.cuda(), i, [2, 2], [2, 2], [0, 0], [4, 4])


# ---------------------------------------------------------------------------------
# 64-bit index math (several GiB: opt in with FCN_KERNELS_LARGE_TESTS=1)
# ---------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("FCN_KERNELS_LARGE_TESTS") != "1",
    reason="needs ~11 GiB; set FCN_KERNELS_LARGE_TESTS=1",
)
def test_plane_over_2_31(device):
    # One 46342x46342 plane (2^31 + 96k elements) unpooled 2x2/2 from 23171x23171. Each
    # input goes to the bottom-right of its window, except two moved to the top-left.
    h = 23171
    x = torch.arange(h * h, dtype=torch.float32, device=device).view(1, 1, h, h)
    x = x.remainder_(2039).add_(1).half()  # non-zero, exact in half
    rows = torch.arange(h, device=device).mul_(2).add_(1)
    ind = (rows[:, None] * (2 * h) + rows[None, :]).view(1, 1, h, h)
    ind[0, 0, 0, 0] = 0
    ind[0, 0, -1, -1] = (2 * h) ** 2 - 2 * h - 2
    out = fk.max_unpool2d(x, ind, 2)
    flat = out.view(-1)
    assert flat.numel() > 2**31
    some = torch.tensor([0, 1, h * h // 2, h * h - 2, h * h - 1], device=device)
    assert torch.equal(flat[ind.view(-1)[some]], x.view(-1)[some])
    assert flat[(2 * h) ** 2 - 1].item() == 0 and flat[2 * h + 1].item() == 0
    assert sum(int(torch.count_nonzero(part)) for part in flat.split(2**28)) == h * h
    # backward gathers every value back from where it went
    assert torch.equal(ops.max_unpool2d_backward(out, ind, [2, 2], [2, 2], [0, 0]), x)
