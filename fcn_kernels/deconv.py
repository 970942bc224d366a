"""Fused transposed convolution + crop: ``torch.ops.fcn_kernels.conv_transpose2d_crop``,
its autograd (double backward included), and FCN's bilinear initialisation."""

import numbers

import torch

from ._common import empty_like_layout, pair, require_tensor
from ._common import deconv_full_size as _full_size

_ops = torch.ops.fcn_kernels


def conv_transpose2d_crop(
    x,
    weight,
    bias=None,
    stride=1,
    padding=0,
    output_padding=0,
    groups=1,
    dilation=1,
    offset=(0, 0),
    size=None,
):
    """Same result as ``F.conv_transpose2d(x, weight, bias, stride, padding,
    output_padding, groups, dilation)[..., oy:oy+H, ox:ox+W]`` with ``(oy, ox) = offset``
    and ``(H, W) = size`` (``size=None``: everything from the offset to the end), but
    only the cropped window is computed: the full map is never allocated.

    Any weight, groups and dilation; a channel-diagonal weight (FCN's bilinear
    upsampling, see :func:`bilinear_kernel`) takes an exact depthwise fast path.
    ``x`` is (N, C, H, W) or, as for F.conv_transpose2d, unbatched (C, H, W).
    The output is channels_last when ``x`` is. Backward is deterministic.
    """
    # Only argument forms are handled here; every value is checked once, in C++
    # (csrc/deconv/args.h), with the same exception types and words whether the op is
    # called through this wrapper or directly. Autocast is the C++ Autocast kernel's.
    require_tensor(x, "input")
    require_tensor(weight, "weight")
    if x.dim() == 3:  # unbatched (C, H, W), as F.conv_transpose2d accepts
        return conv_transpose2d_crop(
            x.unsqueeze(0),
            weight,
            bias,
            stride,
            padding,
            output_padding,
            groups,
            dilation,
            offset,
            size,
        ).squeeze(0)
    if x.dim() != 4:
        raise ValueError(
            f"input must be a 3-D (C, H, W) or 4-D (N, C, H, W) tensor, got shape {tuple(x.shape)}"
        )
    if bias is not None:
        require_tensor(bias, "bias")
    if isinstance(groups, bool) or not isinstance(groups, (numbers.Integral, torch.SymInt)):
        raise TypeError(f"groups must be an integer, got {groups!r}")
    stride, padding, output_padding = (
        pair(stride, "stride"),
        pair(padding, "padding"),
        pair(output_padding, "output_padding"),
    )
    dilation, offset = pair(dilation, "dilation"), pair(offset, "offset")
    if size is None and weight.dim() == 4:  # from the offset to the end of the full map
        full = tuple(
            _full_size(n, k, s, p, d, op)
            for n, k, s, p, d, op in zip(
                x.shape[2:], weight.shape[2:], stride, padding, dilation, output_padding
            )
        )
        size = tuple(f - o for f, o in zip(full, offset))
        if all(f > 0 for f in full) and any(v <= 0 for v in size):
            raise ValueError(f"offset {offset} lies outside the full output of size {full}")
    elif size is None:
        size = (1, 1)  # the C++ check rejects the weight first
    else:
        size = pair(size, "size")
    return _ops.conv_transpose2d_crop(
        x,
        weight,
        bias,
        list(stride),
        list(padding),
        list(output_padding),
        groups,
        list(dilation),
        list(offset),
        list(size),
    )


def bilinear_kernel(channels, kernel_size, dtype=torch.float32, device=None):
    """FCN's bilinear upsampling weight: shape ``(channels, channels, k, k)``, the 2-D
    bilinear filter on the channel diagonal and zeros elsewhere."""
    for name, v in (("channels", channels), ("kernel_size", kernel_size)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise TypeError(f"{name} must be an integer, got {v!r}")
        if v <= 0:
            raise ValueError(f"{name} must be positive, got {v}")
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    og = torch.arange(kernel_size, dtype=torch.float64)
    f1 = 1 - (og - center).abs() / factor
    filt = torch.outer(f1, f1)
    w = torch.zeros(channels, channels, kernel_size, kernel_size, dtype=torch.float64)
    idx = torch.arange(channels)
    w[idx, idx] = filt
    return w.to(dtype=dtype, device=device)


# --- fake (meta) kernels ---------------------------------------------------------


@torch.library.register_fake("fcn_kernels::conv_transpose2d_crop")
def _fake_forward(x, weight, bias, stride, padding, output_padding, groups, dilation, offset, size):
    torch._check(x.dim() == 4 and weight.dim() == 4, lambda: "input and weight must be 4-D")
    return empty_like_layout(x, (x.shape[0], weight.shape[1] * groups, size[0], size[1]))


@torch.library.register_fake("fcn_kernels::conv_transpose2d_crop_backward_input")
def _fake_backward_input(
    grad_output, weight, input_size, stride, padding, groups, dilation, offset
):
    torch._check(grad_output.dim() == 4, lambda: "grad_output must be 4-D")
    return empty_like_layout(grad_output, tuple(input_size))


@torch.library.register_fake("fcn_kernels::conv_transpose2d_crop_backward_weight")
def _fake_backward_weight(grad_output, x, weight_size, stride, padding, groups, dilation, offset):
    torch._check(grad_output.dim() == 4, lambda: "grad_output must be 4-D")
    return x.new_empty(tuple(weight_size))


# Autograd (double backward included) is registered in C++: csrc/autograd.cpp.
