"""Argument checks and layout rules shared by the operator wrappers."""

import math
import numbers

import torch


def require_tensor(t, name: str) -> None:
    """A TypeError naming `name` unless `t` is a tensor (the C++ checks cover the rest)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")


def pair(value, name: str, kind=numbers.Integral):
    """Expand an int (or float, with kind=numbers.Real) or a 2-sequence to a tuple of 2."""
    # Fast path for the common plain-int cases (these wrappers run on every call).
    if type(value) is int:
        return (value, value)
    if (
        type(value) in (tuple, list)
        and len(value) == 2
        and type(value[0]) is int
        and type(value[1]) is int
    ):
        return tuple(value)
    if isinstance(value, (list, tuple, torch.Size)):
        if len(value) != 2:
            raise ValueError(f"{name} must be a number or a pair, got {value!r}")
        items = tuple(value)
    else:
        items = (value, value)
    for v in items:
        if isinstance(v, bool) or not isinstance(v, (kind, torch.SymInt, torch.SymFloat)):
            what = "integers" if kind is numbers.Integral else "numbers"
            raise TypeError(f"{name} must be {what}, got {value!r}")
    return items


def check_finite_positive(values, name: str) -> None:
    for v in values:
        if isinstance(v, (torch.SymInt, torch.SymFloat)):
            continue
        if not math.isfinite(v) or v <= 0:
            raise ValueError(f"{name} must be finite and positive, got {values!r}")


def is_channels_last(t: torch.Tensor) -> bool:
    """The layout rule of csrc/common/tensor.h layout_of(): the C++ kernels produce a
    channels_last result exactly when this is true."""
    return (
        t.dim() == 4
        and not t.is_contiguous()
        and t.is_contiguous(memory_format=torch.channels_last)
    )


def empty_like_layout(like: torch.Tensor, shape) -> torch.Tensor:
    """An empty tensor of `shape` in the layout the kernels use for `like` (fake kernels)."""
    fmt = torch.channels_last if is_channels_last(like) else torch.contiguous_format
    return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=fmt)


def deconv_full_size(n, kernel_size, stride=1, padding=0, dilation=1, output_padding=0):
    """Length of a transposed convolution's full (uncropped) output along one axis, for
    an input of length `n` (csrc/deconv/args.h deconv_full_size, the same formula)."""
    return (n - 1) * stride - 2 * padding + dilation * (kernel_size - 1) + output_padding + 1
