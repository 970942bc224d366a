"""Hardening: bad-input battery (in a subprocess), determinism, memory, large tensors,
autocast, CUDA graphs and streams."""

import gc
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import fcn_kernels as fk
from helpers import requires_cuda

HERE = os.path.dirname(os.path.abspath(__file__))


def test_bad_input_battery_in_subprocess():
    proc = subprocess.run(
        [sys.executable, os.path.join(HERE, "bad_inputs.py")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode in (0, 1), (
        f"battery crashed (exit {proc.returncode}):\n{proc.stderr[-2000:]}"
    )
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["tried"] >= 40
    assert summary["failures"] == [], "\n".join(summary["failures"])


def _runs(device):
    """(name, fn) pairs running forward + backward of every op; fn returns the grads."""

    def bilinear():
        x = torch.randn(2, 5, 9, 11, device=device, requires_grad=True)
        y = fk.bilinear_upsample(x, scale_factor=3.3)
        return torch.autograd.grad(y, x, torch.ones_like(y) * 0.3)

    def deconv(diag):
        def run():
            x = torch.randn(2, 4, 9, 9, device=device, requires_grad=True)
            w = (
                (fk.bilinear_kernel(4, 8) if diag else torch.randn(4, 4, 8, 8))
                .to(device)
                .requires_grad_()
            )
            y = fk.conv_transpose2d_crop(x, w, stride=4, offset=(3, 5), size=(30, 29))
            return torch.autograd.grad(y, (x, w), torch.ones_like(y) * 0.3)

        return run

    runs = [
        ("bilinear", bilinear),
        ("deconv-diag", deconv(True)),
        ("deconv-general", deconv(False)),
    ]
    if hasattr(fk, "max_unpool2d"):

        def unpool():
            v, idx = F.max_pool2d(
                torch.randn(2, 5, 12, 12, device=device), 3, 2, 1, return_indices=True
            )
            v.requires_grad_()
            y = fk.max_unpool2d(v, idx, 3, 2, 1, output_size=(12, 12))
            return torch.autograd.grad(y, v, torch.ones_like(y) * 0.3)

        runs.append(("unpool", unpool))
    return runs


@pytest.mark.parametrize("deterministic", [False, True])
def test_repeated_runs_bit_identical(device, deterministic):
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic)
    try:
        for name, fn in _runs(device):
            results = []
            for _ in range(3):
                torch.manual_seed(1)
                results.append(fn())
            for other in results[1:]:
                assert all(torch.equal(a, b) for a, b in zip(results[0], other)), name
    finally:
        torch.use_deterministic_algorithms(prev)


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
def test_no_host_memory_leak():
    runs = _runs("cpu")
    for _ in range(10):  # warm up allocator caches
        for _, fn in runs:
            fn()
    gc.collect()
    before = _rss_bytes()
    for _ in range(150):
        for _, fn in runs:
            fn()
    gc.collect()
    grown = _rss_bytes() - before
    assert grown < 32 << 20, f"RSS grew by {grown / 2**20:.1f} MiB over 150 iterations"


@requires_cuda
def test_no_cuda_memory_leak():
    runs = _runs("cuda")
    for _, fn in runs:
        fn()
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    for _ in range(100):
        for _, fn in runs:
            fn()
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() == before


@pytest.mark.parametrize("kind", ["bilinear", "general"])
def test_fused_crop_never_allocates_the_uncropped_map(kind):
    # FCN-8s upscore8: 70x70 -> full map 568x568, crop 31 -> 500x500.
    from torch.profiler import ProfilerActivity, profile

    x = torch.randn(1, 21, 70, 70)
    w = fk.bilinear_kernel(21, 16) if kind == "bilinear" else torch.randn(21, 21, 16, 16)
    full_bytes = 21 * 568 * 568 * 4
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        y = fk.conv_transpose2d_crop(x, w, stride=8, offset=(31, 31), size=(500, 500))
    biggest = max(e.cpu_memory_usage for e in prof.events())
    assert y.shape == (1, 21, 500, 500)
    assert 21 * 500 * 500 * 4 <= biggest < full_bytes
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        F.conv_transpose2d(x, w, stride=8)[..., 31:531, 31:531]
    assert max(e.cpu_memory_usage for e in prof.events()) >= full_bytes  # the check can fail


@requires_cuda
def test_cuda_fused_crop_peak_memory_below_reference():
    x = torch.randn(1, 21, 70, 70, device="cuda")
    w = fk.bilinear_kernel(21, 16).cuda()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fk.conv_transpose2d_crop(x, w, stride=8, offset=(31, 31), size=(500, 500))
    torch.cuda.synchronize()
    ours = torch.cuda.max_memory_allocated() - base
    assert ours < 21 * 568 * 568 * 4


def _mem_available():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@pytest.mark.skipif(_mem_available() < 14 << 30, reason="needs ~10 GiB of free host memory")
def test_output_over_2_31_elements_cpu():
    # 1x1x2x2 -> 1x1x46341x46341 (2.147e9 > 2^31 elements) in bfloat16: 4.3 GB.
    # With align_corners=True the exact value at (i, j) is bilinear in i/(H-1), j/(W-1):
    # an independent closed form, checked at sampled positions incl. the far corner.
    x = torch.tensor([[[[1.0, 2.0], [4.0, 8.0]]]], dtype=torch.bfloat16)
    n = 46341
    assert n * n > 2**31
    y = fk.bilinear_upsample(x, size=(n, n), align_corners=True)
    for i, j in [(0, 0), (n - 1, n - 1), (n - 1, 0), (12345, 45678), (n // 2, n - 2)]:
        a, b = i / (n - 1), j / (n - 1)
        want = (1 - a) * ((1 - b) * 1 + b * 2) + a * ((1 - b) * 4 + b * 8)
        assert abs(y[0, 0, i, j].item() - want) <= 0.02 * want, (i, j)
    del y


def _within_rounding(actual, ref64, mag64, dtype):
    """|actual - ref64| <= 8 eps(dtype) * mag64 + 2 eps: the result of a sum of terms
    whose magnitudes add up to mag64, rounded to `dtype` (ref64: float64 on the same,
    already rounded, inputs). ATen's own low-precision result is not the reference: on
    an AVX2 CPU its bf16 deconvolution is off by ~0.18 here."""
    eps = torch.finfo(dtype).eps
    err = (actual.double() - ref64).abs()
    bound = 8 * eps * mag64 + 2 * eps
    assert (err <= bound).all(), f"off by {err.max().item():.3g} (bound {bound.max().item():.3g})"


def test_autocast_cpu_bfloat16():
    x = torch.randn(1, 4, 6, 6)
    w = torch.randn(4, 4, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = torch.nn.functional.conv2d(x, torch.randn(4, 4, 1, 1))  # bf16 under autocast
        ours = fk.conv_transpose2d_crop(h, w, stride=2, offset=(1, 1), size=(10, 10))
        ref = F.conv_transpose2d(h, w, stride=2)[..., 1:11, 1:11]
        up = fk.bilinear_upsample(h, scale_factor=2)
        up_ref = F.interpolate(h, scale_factor=2, mode="bilinear")
    assert h.dtype == ours.dtype == ref.dtype == torch.bfloat16
    assert up.dtype == up_ref.dtype == torch.bfloat16
    h64, w64 = h.double(), w.bfloat16().double()  # the operands autocast gave both ops
    _within_rounding(
        ours,
        F.conv_transpose2d(h64, w64, stride=2)[..., 1:11, 1:11],
        F.conv_transpose2d(h64.abs(), w64.abs(), stride=2)[..., 1:11, 1:11],
        torch.bfloat16,
    )
    _within_rounding(
        up,
        F.interpolate(h64, scale_factor=2, mode="bilinear"),
        F.interpolate(h64.abs(), scale_factor=2, mode="bilinear"),
        torch.bfloat16,
    )


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_cuda(dtype):
    x = torch.randn(1, 4, 6, 6, device="cuda")
    w = torch.randn(4, 4, 4, 4, device="cuda")
    with torch.autocast("cuda", dtype=dtype):
        ours = fk.conv_transpose2d_crop(x, w, stride=2, offset=(1, 1), size=(10, 10))
        ref = F.conv_transpose2d(x, w, stride=2)[..., 1:11, 1:11]
    assert ours.dtype == ref.dtype == dtype
    x64, w64 = x.to(dtype).double(), w.to(dtype).double()
    _within_rounding(
        ours,
        F.conv_transpose2d(x64, w64, stride=2)[..., 1:11, 1:11],
        F.conv_transpose2d(x64.abs(), w64.abs(), stride=2)[..., 1:11, 1:11],
        dtype,
    )


@requires_cuda
def test_cuda_graph_capture_and_non_default_stream():
    runs = _runs("cuda")
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):  # runs on a side stream
        expected = [fn() for _, fn in runs]
    stream.synchronize()
    x = torch.randn(2, 5, 9, 11, device="cuda")
    static_out = fk.bilinear_upsample(x, scale_factor=2)
    graph = torch.cuda.CUDAGraph()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fk.bilinear_upsample(x, scale_factor=2)  # warm-up on the capture stream
        with torch.cuda.graph(graph):
            static_out = fk.bilinear_upsample(x, scale_factor=2)
    torch.cuda.current_stream().wait_stream(s)
    x.copy_(torch.randn_like(x))
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(static_out, F.interpolate(x, scale_factor=2, mode="bilinear"))
    assert all(len(e) > 0 for e in expected)


@pytest.mark.skipif(torch.cuda.device_count() < 2 or not fk.cuda_built(), reason="needs 2 GPUs")
def test_second_cuda_device():
    x = torch.randn(1, 3, 5, 5, device="cuda:1")
    y = fk.bilinear_upsample(x, scale_factor=2)
    assert y.device == x.device
    torch.testing.assert_close(y, F.interpolate(x, scale_factor=2, mode="bilinear"))


def test_autocast_registered_in_cpp_for_direct_op_calls():
    # torch.ops.fcn_kernels.conv_transpose2d_crop casts under autocast by itself (C++
    # Autocast key), like F.conv_transpose2d: a float32 input and weight become bf16.
    x, w = torch.randn(1, 3, 5, 5), torch.randn(3, 2, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = torch.ops.fcn_kernels.conv_transpose2d_crop(
            x, w, None, [2, 2], [0, 0], [0, 0], 1, [1, 1], [1, 1], [8, 8]
        )
        ref = F.conv_transpose2d(x, w, stride=2)
    assert y.dtype == ref.dtype == torch.bfloat16
    x64, w64 = x.bfloat16().double(), w.bfloat16().double()
    _within_rounding(
        y,
        F.conv_transpose2d(x64, w64, stride=2)[..., 1:9, 1:9],
        F.conv_transpose2d(x64.abs(), w64.abs(), stride=2)[..., 1:9, 1:9],
        torch.bfloat16,
    )
    # Outside autocast mixed dtypes are an error, not a silent cast.
    with pytest.raises(TypeError, match="weight must have the input.s dtype"):
        torch.ops.fcn_kernels.conv_transpose2d_crop(
            x, w.double(), None, [2, 2], [0, 0], [0, 0], 1, [1, 1], [1, 1], [8, 8]
        )
