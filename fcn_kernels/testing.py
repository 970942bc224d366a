"""Testing aids: run this package's CUDA code on the CPU.

``torch.ops.fcn_kernels_emu.<op>`` has the seven schemas of ``torch.ops.fcn_kernels``
and runs their GPU implementation (the same host code and per-thread kernel bodies the
CUDA build runs) through an emulated launcher on CPU tensors. :func:`emulated_cuda`
routes the CPU kernels of ``torch.ops.fcn_kernels`` there for a while, so everything
built on them (the Python wrappers, autograd, ``fcn_kernels.nn``, whole models) runs the
CUDA code paths on a machine without a GPU::

    with fcn_kernels.testing.emulated_cuda():
        y = fcn_kernels.bilinear_upsample(x, scale_factor=8)   # the CUDA kernels, on CPU

Emulation checks indexing, dtypes, layouts, multi-pass logic and launch configurations,
and (:func:`racecheck`, :func:`thread_order`) shared-memory races between the threads of a block;
it cannot show races through global memory, stream or CUDA-graph problems, register limits
or timing.
"""

import contextlib
import os

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
    the operators' CPU kernels process-wide until the block ends.

    The environment variables ``FCN_KERNELS_EMU_RACECHECK=1`` and
    ``FCN_KERNELS_EMU_ORDER=forward|reverse|shuffle[:seed]`` turn on :func:`racecheck`
    and :func:`thread_order` inside it, so a whole test suite's emulated runs can be
    repeated under them (e.g. ``FCN_KERNELS_EMU_RACECHECK=1 FCN_KERNELS_EMU_ORDER=reverse
    pytest -m emu``)."""
    lib = torch.library.Library("fcn_kernels", "IMPL")
    try:
        stack = contextlib.ExitStack()
        if os.environ.get("FCN_KERNELS_EMU_RACECHECK", "") not in ("", "0"):
            stack.enter_context(racecheck())
        order = os.environ.get("FCN_KERNELS_EMU_ORDER", "")
        if order:
            name, _, seed = order.partition(":")
            stack.enter_context(thread_order(name, int(seed or 0)))
        for name in OPS:
            emu = getattr(torch.ops.fcn_kernels_emu, name).default

            def kernel(*args, _emu=emu, **kwargs):
                return _emu(*args, **kwargs)

            lib.impl(name, kernel, "CPU")
        with stack:
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


@contextlib.contextmanager
def racecheck(enabled: bool = True):
    """Check the emulated launcher's shared memory for races: every access through
    ``t.shared<T>()`` is recorded per byte and phase (the code between two barriers), and
    a byte one thread wrote that another reads or writes in the same phase, or one read
    that another writes, raises a RuntimeError naming the kernel, block, threads, phase
    and offset. Slow; process-wide until the block ends."""
    old = torch.ops.fcn_kernels_emu._set_racecheck(enabled)
    try:
        yield
    finally:
        torch.ops.fcn_kernels_emu._set_racecheck(old)


THREAD_ORDERS = ("forward", "reverse", "shuffle")


@contextlib.contextmanager
def thread_order(order: str, seed: int = 0):
    """Run the threads of each block's phase in ``"forward"`` (thread-index), ``"reverse"``
    or ``"shuffle"`` (a permutation per block and phase, reproducible from ``seed``)
    order in the emulated launcher, so results that depend on the order show up."""
    if order not in THREAD_ORDERS:
        raise ValueError(f"thread_order: order must be one of {THREAD_ORDERS}, got {order!r}")
    old = torch.ops.fcn_kernels_emu._set_thread_order(THREAD_ORDERS.index(order), seed)
    try:
        yield
    finally:
        torch.ops.fcn_kernels_emu._set_thread_order(*old)
