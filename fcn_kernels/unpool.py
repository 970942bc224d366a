"""Max-unpooling: ``torch.ops.fcn_kernels.max_unpool2d`` and its autograd."""

import torch

from ._common import empty_like_layout, pair, require_tensor

_ops = torch.ops.fcn_kernels


def max_unpool2d(input, indices, kernel_size, stride=None, padding=0, output_size=None):
    """Partial inverse of max pooling; same result as
    ``F.max_unpool2d(input, indices, kernel_size, stride, padding, output_size)``.

    ``indices`` are those of ``F.max_pool2d(..., return_indices=True)``: for every input
    element, the flat index of its position in its output plane. Every other output is
    zero. ``input`` is (N, C, H, W) or (C, H, W); ``output_size`` is None (the default
    size ``(H - 1) * stride - 2 * padding + kernel_size``), or 2 or 4 numbers (the last
    two are used), within ``stride - 1`` of the default size, as for ``F.max_unpool2d``
    (this is how ceil-mode pooling and odd sizes are undone).

    Differences from ATen, all deliberate:

    * When two inputs of a plane carry the same index (overlapping pooling windows can
      produce such indices), the input that comes last in row-major (h, w) order wins,
      on CPU and CUDA, in every layout and on every run (ATen's CPU kernel races there
      and its CUDA result is unspecified). The gradient is ATen's: each input receives
      the output gradient at its index, a gather; with such duplicate indices that is
      not the derivative of "last wins", exactly as in ATen.
    * An index outside the output plane raises an IndexError naming it, on CUDA too (no
      device-side assert). Checking costs the CUDA forward one host sync; the backward
      relies on that check and does not sync. While a CUDA graph is being captured
      nothing syncs and nothing is raised: such indices are ignored by the forward and
      read as 0 by the backward (never accessed out of bounds).
    * kernel_size and stride must be positive and padding non-negative (ATen accepts
      anything that gives a non-negative size), and the output must be non-empty.
    * Works under ``torch.use_deterministic_algorithms(True)`` (ATen raises).

    The output is channels_last when the input is. Backward is deterministic.
    """
    # Only argument forms are handled here; values (dtypes, shapes, devices, geometry,
    # index range) are checked once, in C++ (csrc/unpool/args.h), with the same exception
    # types whether the op is called through this wrapper or directly.
    require_tensor(input, "input")
    require_tensor(indices, "indices")
    if input.dim() not in (3, 4):
        raise ValueError(
            "input must be a 3-D (C, H, W) or 4-D (N, C, H, W) tensor, got "
            f"shape {tuple(input.shape)}"
        )
    kernel_size = pair(kernel_size, "kernel_size")
    stride = kernel_size if stride is None else pair(stride, "stride")
    padding = pair(padding, "padding")
    size = _output_size(input.shape[-2:], kernel_size, stride, padding, output_size)
    if input.dim() == 3:
        return _ops.max_unpool2d(
            input.unsqueeze(0),
            indices.unsqueeze(0),
            list(kernel_size),
            list(stride),
            list(padding),
            size,
        ).squeeze(0)
    return _ops.max_unpool2d(input, indices, list(kernel_size), list(stride), list(padding), size)


def _output_size(in_hw, kernel_size, stride, padding, output_size):
    """F.max_unpool2d's output size (torch.nn.functional._unpool_output_size): the default
    for these kernel_size/stride/padding, or the last two of 2 or 4 given numbers (whose
    range C++ checks)."""
    if output_size is None:
        default = [
            (n - 1) * s + k - 2 * p for n, k, s, p in zip(in_hw, kernel_size, stride, padding)
        ]
        if (
            all(isinstance(v, int) for v in (*kernel_size, *stride, *padding))
            and min(kernel_size + stride) > 0
            and min(padding) >= 0
            and min(in_hw) > 0
            and any(v <= 0 for v in default)
        ):
            raise ValueError(
                f"kernel_size {kernel_size}, stride {stride} and padding {padding} give an "
                f"empty output for input of spatial size {tuple(in_hw)}"
            )
        return default
    if not isinstance(output_size, (list, tuple, torch.Size)):
        raise TypeError(f"output_size must be a sequence of 2 or 4 integers, got {output_size!r}")
    if len(output_size) not in (2, 4):
        raise ValueError(
            "output_size must have 2 or 4 elements (the last two are used), "
            f"got {len(output_size)}: {output_size!r}"
        )
    return list(pair(tuple(output_size[-2:]), "output_size"))


@torch.library.register_fake("fcn_kernels::max_unpool2d")
def _fake_forward(x, indices, kernel_size, stride, padding, output_size):
    torch._check(x.dim() == 4, lambda: "input must be 4-D")
    torch._check(indices.shape == x.shape, lambda: "indices must have the shape of input")
    return empty_like_layout(x, (x.shape[0], x.shape[1], output_size[0], output_size[1]))


@torch.library.register_fake("fcn_kernels::max_unpool2d_backward")
def _fake_backward(grad_output, indices, kernel_size, stride, padding, check_indices=True):
    torch._check(
        grad_output.dim() == 4 and indices.dim() == 4, lambda: "grad_output and indices must be 4-D"
    )
    return empty_like_layout(grad_output, indices.shape)


# Autograd (double backward included) is registered in C++: csrc/autograd.cpp.
