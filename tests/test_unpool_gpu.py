"""max_unpool2d's GPU code paths (run on CUDA, or emulated on the CPU: the "emu"
device): fast (window-local) and general paths, int32 and int64 index math, CUDA-graph
capture (no host sync), grad_output of any strides, grids that loop over planes."""

import contextlib

import pytest
import torch
import torch.nn.functional as F

import fcn_kernels as fk
from helpers import gpu_code
from fcn_kernels.testing import emulated_capture, index32_limit
from helpers import assert_same, pooled, reference, to_layout

ops = torch.ops.fcn_kernels


def needs_gpu_code(device):
    if not gpu_code(device):
        pytest.skip("GPU code only (emulated or CUDA)")


@pytest.fixture(params=["gated", "ondemand"])
def variant(request, device, monkeypatch):
    """The forward's implementation (FCN_KERNELS_UNPOOL, read per call by the GPU code):
    gated general-path launches (default) or launched on demand after a flag read."""
    if request.param != "gated" and not gpu_code(device):
        pytest.skip("a GPU-code variant")
    monkeypatch.setenv("FCN_KERNELS_UNPOOL", request.param)
    return request.param


def reference_valid(x, indices, out_hw):
    """reference() ignoring entries outside the plane (what a CUDA-graph-captured
    forward computes: it cannot raise)."""
    plane = out_hw[0] * out_hw[1]
    ok = (indices >= 0) & (indices < plane)
    wide = reference(
        torch.where(ok, x, torch.zeros((), dtype=x.dtype)),
        torch.where(ok, indices, plane).cpu(),
        (1, plane + 1),
    )
    return wide.flatten(2)[..., :plane].reshape(*x.shape[:2], *out_hw)


@pytest.mark.parametrize(
    "dtype",
    [torch.float16, torch.float32, torch.float64],
    ids=lambda d: str(d).replace("torch.", ""),
)
def test_int64_index_kernels(dtype, device, variant):
    # index32_limit(16) makes every kernel take its int64 variant; the winner buffer is
    # then in place in the output for 8-byte elements, a scratch buffer otherwise (and
    # the other way round for int32). Fast path, stray index, overlapping windows,
    # duplicates, both layouts; results equal the int32 run and ATen.
    needs_gpu_code(device)
    cases = []  # (values, indices, k, s, p, max-pool indices: compare with ATen too)
    for k, s, p in [(2, 2, 0), (3, 2, 1), (2, 3, 1)]:
        y, i = pooled((2, 5, 11, 9), k, s, p, True, dtype, device)
        cases.append((y, i, k, s, p, True))
    y, i, k, s, p, _ = cases[0]
    j = i.clone()
    j[1, 2, 3, 1] = 0  # not in its window: the general path
    cases.append((y, j, k, s, p, False))
    j = torch.randint(0, 4, i.shape, generator=torch.Generator().manual_seed(4)).to(device)
    cases.append((y, j, k, s, p, False))  # many duplicates: the last input wins
    for y, i, k, s, p, aten in cases:
        for layout in ("contiguous", "channels_last"):
            yy, ii = to_layout(y, layout), to_layout(i, layout)
            out32 = fk.max_unpool2d(yy, ii, k, s, p, output_size=(11, 9))
            g = to_layout(
                torch.randn(out32.shape, dtype=torch.float64).to(dtype).to(device), layout
            )
            gx32 = ops.max_unpool2d_backward(g, ii, [k, k], [s, s], [p, p])
            with index32_limit(16):
                out64 = fk.max_unpool2d(yy, ii, k, s, p, output_size=(11, 9))
                gx64 = ops.max_unpool2d_backward(g, ii, [k, k], [s, s], [p, p])
                bad = ii.clone()
                bad[1, 4, 2, 2] = 11 * 9
                with pytest.raises(IndexError, match=r"indices\[1, 4, 2, 2\] = 99"):
                    fk.max_unpool2d(yy, bad, k, s, p, output_size=(11, 9))
                with pytest.raises(IndexError, match=r"indices\[1, 4, 2, 2\] = 99"):
                    ops.max_unpool2d_backward(g, bad, [k, k], [s, s], [p, p])
            assert_same(out64, out32)
            assert_same(out64, reference(y, i, (11, 9)))
            if aten:
                assert_same(out64, F.max_unpool2d(y.cpu(), i.cpu(), k, s, p, output_size=(11, 9)))
            assert_same(gx64, gx32)
            assert_same(gx64, g.cpu().flatten(2).gather(2, i.cpu().flatten(2)).view(i.shape))


@pytest.mark.parametrize(
    "k, s, p, hw",
    [(2, 2, 0, (6, 5)), (2, 3, 1, (7, 8)), ((3, 2), (4, 3), (1, 1), (9, 7)), (1, 2, 0, (3, 4))],
)
def test_fast_path_window_check(k, s, p, hw, device, variant):
    # Geometries where the fast path applies (disjoint windows, some cut by padding or
    # the output's edge). For every input j and output o, one call with max-pool
    # indices except that input j (of channel 1) names o: exact whether or not o lies
    # in j's window, so the window check must be right at every edge (a stray index
    # accepted as local loses its value). One stray per call: the fallback to the
    # general path is decided per call.
    y, i = pooled((1, 2) + hw, k, s, p, True)
    x = torch.randn(y.shape)
    ih, iw = i.shape[-2:]
    for layout in ("contiguous", "channels_last"):
        for j in range(ih * iw):
            for o in range(hw[0] * hw[1]):
                ind = i.clone()
                ind[0, 1].view(-1)[j] = o
                xd, idd = to_layout(x.to(device), layout), to_layout(ind.to(device), layout)
                assert_same(
                    fk.max_unpool2d(xd, idd, k, s, p, output_size=hw), reference(x, ind, hw)
                )


def test_general_path_paths(device, variant):
    # Overlapping windows (the general path from the start), with padding, and
    # indices outside their window: exact, last input wins, both layouts.
    for k, s, p in [(3, 2, 1), (3, 1, 1), (4, 2, 2), ((2, 3), (1, 2), (1, 1))]:
        y, i = pooled((2, 7, 9, 10), k, s, p, True, device=device)
        for mode in ("pool", "moved", "random"):
            j = i.clone()
            if mode == "moved":
                j[0, 3].view(-1)[5] = 2
                j[1, 6].view(-1)[-1] = 9 * 10 - 1
            elif mode == "random":
                j = torch.randint(0, 90, i.shape, generator=torch.Generator().manual_seed(5))
                j = j.to(device)
            for layout in ("contiguous", "channels_last"):
                assert_same(
                    fk.max_unpool2d(
                        to_layout(y, layout), to_layout(j, layout), k, s, p, output_size=(9, 10)
                    ),
                    reference(y, j, (9, 10)),
                )


def test_capture_no_sync(device, variant):
    # While a CUDA graph is being captured the GPU code does no host sync, so it cannot
    # raise: out-of-range indices are ignored by the forward and read as 0 by the
    # backward, never accessed out of bounds; valid entries are still exact.
    needs_gpu_code(device)
    if not str(device).startswith("cpu"):
        pytest.skip("emulated capture only (fcn_kernels.testing.emulated_capture)")
    for k, s in [(2, 2), (3, 2)]:  # fast path (then general), general path
        y, i = pooled((2, 3, 8, 8), k, s, 0, False, device=device)
        g = torch.randn(2, 3, 8, 8, device=device)
        for layout in ("contiguous", "channels_last"):
            ok_out = fk.max_unpool2d(
                to_layout(y, layout), to_layout(i, layout), k, s, output_size=(8, 8)
            )
            j = i.clone()
            j[0, 0, 0, 0] = -1
            j[1, 2, 2, 1] = 64
            j[1, 1, 1, 1] = 10**12
            j[0, 1, 2, 2] = 0  # valid, not in its window
            yy, jj, gg = to_layout(y, layout), to_layout(j, layout), to_layout(g, layout)
            with emulated_capture():
                assert_same(
                    fk.max_unpool2d(
                        to_layout(y, layout), to_layout(i, layout), k, s, output_size=(8, 8)
                    ),
                    ok_out,
                )
                out = fk.max_unpool2d(yy, jj, k, s, output_size=(8, 8))
                gx = ops.max_unpool2d_backward(gg, jj, [k, k], [s, s], [0, 0])
            assert_same(out, reference_valid(y, j, (8, 8)))
            valid = (j >= 0) & (j < 64)
            ref = g.flatten(2).gather(2, torch.where(valid, j, 0).flatten(2)).view(j.shape)
            assert_same(gx, torch.where(valid, ref, torch.zeros(())))
            # and eager mode raises for the same call
            with pytest.raises(IndexError, match=r"indices\[0, 0, 0, 0\] = -1"):
                fk.max_unpool2d(yy, jj, k, s, output_size=(8, 8))


def test_many_planes(device, variant):
    # More planes than the GPU code's capped grids have blocks along z (a few waves
    # per SM): threads loop over planes, the backward stepping (n, c) without division.
    y, i = pooled((60, 210, 4, 6), 2, 2, 0, False, device=device)
    j = i.clone()
    j[59, 209, 1, 2] = 0  # not in its window: the (gated) general path
    g = torch.randn(60, 210, 4, 6, device=device)
    for layout in ("contiguous", "channels_last"):
        yy = to_layout(y, layout)
        for ind in (i, j):
            assert_same(
                fk.max_unpool2d(yy, to_layout(ind, layout), 2, output_size=(4, 6)),
                F.max_unpool2d(y.cpu(), ind.cpu(), 2, output_size=(4, 6)),
            )
        for gg in (
            to_layout(g, layout),
            g[:1, :1, :1, :1].expand(g.shape),
            g[:, :1].expand(g.shape),
        ):
            ii = to_layout(i, layout)
            assert_same(
                ops.max_unpool2d_backward(gg, ii, [2, 2], [2, 2], [0, 0]),
                gg.cpu().flatten(2).gather(2, i.cpu().flatten(2)).view(i.shape),
            )


def strided_grads(shape, dtype, device):
    """Gradients for the unpooled output in every stride pattern the backward reads
    directly (expanded, strided, channels_last) or first copies (planes not flat)."""
    n, c, h, w = shape
    r = lambda *s: torch.randn(*s, dtype=torch.float64).to(dtype).to(device)  # noqa: E731
    return {
        "expanded": r(1).expand(shape),  # y.sum().backward()
        "expanded_c": r(1, c, 1, 1).expand(shape),
        "expanded_w": r(n, c, h, 1).expand(shape),  # plane not flat: copied
        "every_other_col": r(n, c, h, 2 * w)[..., ::2],
        "crop": r(n, c, h + 3, w + 2)[..., 1:-2, 2:],  # plane not flat: copied
        "transposed": r(n, c, w, h).transpose(2, 3),  # plane not flat: copied
        "channels_last": r(shape).contiguous(memory_format=torch.channels_last),
        "channels_last_view": r(n, h, w, 2 * c).permute(0, 3, 1, 2)[:, ::2],
        "batch_slice": r(2 * n, c, h, w)[::2],
    }


@pytest.mark.parametrize("int64", [False, True], ids=["int32", "int64"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_backward_strided_grad_output(layout, int64, device):
    # grad_output with any strides (an expanded one from y.sum().backward(), views,
    # channels_last): the gradient equals ATen's.
    y, i = pooled((2, 3, 9, 7), 3, 2, 1, True, torch.float32, device)
    y, i = to_layout(y, layout), to_layout(i, layout)
    limit = (lambda: index32_limit(16)) if int64 else contextlib.nullcontext
    for name, g in strided_grads((2, 3, 9, 7), torch.float32, device).items():
        yy = y.clone().requires_grad_()
        with limit():
            out = fk.max_unpool2d(yy, i, 3, 2, 1, output_size=(9, 7))
            (ours,) = torch.autograd.grad(out, yy, g)
            direct = ops.max_unpool2d_backward(g, i, [3, 3], [2, 2], [1, 1])
        yc = y.detach().cpu().requires_grad_()
        (ref,) = torch.autograd.grad(
            F.max_unpool2d(yc, i.cpu(), 3, 2, 1, output_size=(9, 7)), yc, g.cpu()
        )
        assert_same(ours, ref), name
        assert_same(direct, ref), name
    yy = y.clone().requires_grad_()
    fk.max_unpool2d(yy, i, 3, 2, 1, output_size=(9, 7)).sum().backward()
    yc = y.detach().cpu().requires_grad_()
    F.max_unpool2d(yc, i.cpu(), 3, 2, 1, output_size=(9, 7)).sum().backward()
    assert_same(yy.grad, yc.grad)


def test_variants_agree_bit_for_bit_and_bad_value_raises(device, monkeypatch):
    # Both forward variants, fast path and fallback, give the same bits, run after run.
    needs_gpu_code(device)
    y, i = pooled((3, 4, 10, 12), 2, 2, 0, True, device=device)
    j = i.clone()
    j[2, 3, 1, 1] = 0  # not in its window: the fast path's fallback
    outs = []
    for name in ("gated", "ondemand", "ondemand", "gated"):
        monkeypatch.setenv("FCN_KERNELS_UNPOOL", name)
        outs.append([fk.max_unpool2d(y, ind, 2, output_size=(10, 12)) for ind in (i, j)])
    for other in outs[1:]:
        for a, b in zip(outs[0], other):
            assert torch.equal(a, b)
    assert_same(outs[1][1], reference(y, j, (10, 12)))
    monkeypatch.setenv("FCN_KERNELS_UNPOOL", "fast")
    with pytest.raises(ValueError, match="FCN_KERNELS_UNPOOL must be one of 'gated', 'ondemand'"):
        fk.max_unpool2d(y, i, 2, output_size=(10, 12))


@pytest.mark.emu
def test_ondemand_variant_launches_the_general_path_only_when_needed(monkeypatch):
    # Kernel launches of one forward (the emulator counts them): the fast path alone
    # on demand, the fast path + 3 gated general-path kernels by default.
    from fcn_kernels.testing import emulated_cuda

    y, i = pooled((2, 3, 8, 8), 2, 2, 0, True)
    j = i.clone()
    j[1, 2, 1, 1] = 0  # not in its window

    def launches(name, ind):
        monkeypatch.setenv("FCN_KERNELS_UNPOOL", name)
        before = torch.ops.fcn_kernels_emu._launch_count()
        with emulated_cuda():
            out = fk.max_unpool2d(y, ind, 2, output_size=(8, 8))
        assert_same(out, reference(y, ind, (8, 8)))
        return torch.ops.fcn_kernels_emu._launch_count() - before

    assert launches("gated", i) == 4 and launches("gated", j) == 4
    assert launches("ondemand", i) == 1 and launches("ondemand", j) == 4
