"""Testing aids: run this package's CUDA code on the CPU.

``torch.ops.fcn_kernels_emu.<op>`` has the seven schemas of ``torch.ops.fcn_kernels``
and runs their GPU implementation (the same host code and per-thread kernel bodies the
CUDA build runs) through an emulated launcher on CPU tensors. :func:`emulated_cuda`
routes the CPU kernels of ``torch.ops.fcn_kernels`` there for a while, so everything
built on them (the Python wrappers, autograd, ``fcn_kernels.nn``, whole models) runs the
CUDA code paths on a machine without a GPU::

    with fcn_kernels.testing.emulated_cuda():
        y = fcn_kernels.bilinear_upsample(x, scale_factor=8)   # the CUDA kernels, on CPU

Emulation checks indexing, dtypes, layouts, multi-pass logic and launch configurations;
it cannot show data races, stream or CUDA-graph problems, register limits or timing.
"""

import contextlib

import torch

from . import _C  # noqa: F401  (registers the operators)

OPS = (
    "bilinear_upsample",
    "bilinear_upsample_backward",
    "max_unpool2d",
    "max_unpool2d_backward",
    "conv_transpose2d_crop",
    "conv_transpose2d_crop_backward_input",
    "conv_transpose2d_crop_backward_weight",
)


@contextlib.contextmanager
def emulated_cuda():
    """Within this block, CPU calls of ``torch.ops.fcn_kernels.*`` run the emulated
    CUDA implementation (``torch.ops.fcn_kernels_emu.*``). Not thread-safe: it changes
    the operators' CPU kernels process-wide until the block ends."""
    lib = torch.library.Library("fcn_kernels", "IMPL")
    try:
        for name in OPS:
            emu = getattr(torch.ops.fcn_kernels_emu, name).default

            def kernel(*args, _emu=emu, **kwargs):
                return _emu(*args, **kwargs)

            lib.impl(name, kernel, "CPU")
        yield
    finally:
        lib._destroy()


@contextlib.contextmanager
def index32_limit(limit: int):
    """Lower the element count from which the GPU host code picks 64-bit index kernels
    (on CUDA and emulated alike), so the int64 variants run on small tensors."""
    old = torch.ops.fcn_kernels_emu._set_index32_limit(limit)
    try:
        yield
    finally:
        torch.ops.fcn_kernels_emu._set_index32_limit(old)


@contextlib.contextmanager
def emulated_capture():
    """Make the emulated launcher report that a CUDA graph is being captured, so the
    code paths that avoid host synchronisation under capture run."""
    old = torch.ops.fcn_kernels_emu._set_capturing(True)
    try:
        yield
    finally:
        torch.ops.fcn_kernels_emu._set_capturing(old)
