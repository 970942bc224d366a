"""Shared fixtures: devices, dtypes and tolerances for comparing with ATen."""

import os
import tempfile

import pytest
import torch

import fcn_kernels

# Inductor's on-disk cache does not tell code built under one ATEN_CPU_CAPABILITY from
# another's: a run under ATEN_CPU_CAPABILITY=avx2 after an AVX-512 run reused the other's
# kernels and returned NaN (torch 2.14.1). One cache per capability.
os.environ.setdefault(
    "TORCHINDUCTOR_CACHE_DIR",
    os.path.join(
        tempfile.gettempdir(),
        f"torchinductor_fcn_kernels_{torch.backends.cpu.get_cpu_capability().lower()}",
    ),
)
from fcn_kernels.testing import emulated_cuda

HAS_CUDA = torch.cuda.is_available() and fcn_kernels.cuda_built()
_NEEDS_CUDA = "needs a CUDA GPU and a CUDA build"
requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason=_NEEDS_CUDA)


def pytest_collection_modifyitems(items):
    # Every test that needs a GPU carries the `cuda` mark, so `pytest -m cuda`
    # (benches/gpu_check.py) selects exactly them.
    for item in items:
        if any(m.kwargs.get("reason") == _NEEDS_CUDA for m in item.iter_markers("skipif")):
            item.add_marker(pytest.mark.cuda)


# Every test that takes `device` runs on CPU, on the CUDA code emulated on the CPU
# ("emu": CPU tensors, torch.ops.fcn_kernels routed to torch.ops.fcn_kernels_emu, see
# fcn_kernels/testing.py), and on CUDA where a GPU is visible (skipped without one).
DEVICES = [
    "cpu",
    pytest.param("emu", marks=pytest.mark.emu),
    pytest.param("cuda", marks=[requires_cuda, pytest.mark.cuda]),
]
_EMULATING = [False]


def gpu_code(device) -> bool:
    """True when `device` (a `device` fixture value) runs the GPU implementation:
    on CUDA, or emulated on the CPU."""
    return str(device).startswith("cuda") or _EMULATING[0]


DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]

# Tolerances for results rounded to `dtype` from a float64 reference computed on the
# same (rounded) inputs: a few ulps of the dtype at magnitude ~1.
TOL = {
    torch.float64: dict(atol=1e-12, rtol=1e-12),
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    torch.float16: dict(atol=2e-3, rtol=2e-3),
    torch.bfloat16: dict(atol=1.6e-2, rtol=1.6e-2),
}


@pytest.fixture(autouse=True)
def _no_tf32():
    # float32 tolerances assume float32 arithmetic: on CUDA, the dense deconv path (and
    # F.conv_transpose2d, our reference) would otherwise use TF32 (docs/cuda.md, "float32
    # precision on CUDA"). tests/test_cuda_precision.py turns it on where it checks TF32.
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


@pytest.fixture(autouse=True)
def _seed():
    # Every test draws the same random inputs on every run: failures reproduce.
    torch.manual_seed(0)
    yield
    # A test that fails half-way must not leave deterministic mode on for the next one
    # (ATen's max_unpool2d, our reference, refuses to run in it).
    torch.use_deterministic_algorithms(False)


@pytest.fixture(params=DEVICES)
def device(request):
    """ "cpu" or "cuda"; for "emu", "cpu" with the CUDA code emulated (gpu_code() is
    then True)."""
    if request.param != "emu":
        yield request.param
        return
    with emulated_cuda():
        _EMULATING[0] = True
        try:
            yield "cpu"
        finally:
            _EMULATING[0] = False


@pytest.fixture(params=DTYPES, ids=lambda d: str(d).replace("torch.", ""))
def dtype(request):
    return request.param


def assert_close(actual, expected, dtype=None, **kw):
    """Compare `actual` with a reference (any dtype) at the tolerance of `dtype`."""
    tol = dict(TOL[dtype or actual.dtype])
    tol.update(kw)
    torch.testing.assert_close(actual.double().cpu(), expected.double().cpu(), **tol)
