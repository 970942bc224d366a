"""Fused transposed convolution + crop: ``torch.ops.fcn_kernels.conv_transpose2d_crop``,
its autograd (double backward included), and FCN's bilinear initialisation."""
import numbers

import torch

from ._common import check_tensor4d, empty_like_layout, pair
from ._common import deconv_full_size as _full_size

_ops = torch.ops.fcn_kernels


def _ints(value, name, minimum):
    v = pair(value, name)
    if type(v[0]) is int and type(v[1]) is int and v[0] >= minimum and v[1] >= minimum:
        return v  # fast path
    for item in v:
        if not isinstance(item, torch.SymInt) and item < minimum:
            what = "positive" if minimum == 1 else f">= {minimum}"
            raise ValueError(f"{name} must be {what}, got {value!r}")
    return tuple(v)


def _autocast(x, weight, bias):
    """Under torch.autocast, cast like ATen's conv_transpose2d (a lower-precision op):
    every operand to the autocast dtype of the input's device type."""
    dev = x.device.type
    if dev not in ("cpu", "cuda") or not torch.is_autocast_enabled(dev):
        return x, weight, bias
    dt = torch.get_autocast_dtype(dev)
    cast = lambda t: t.to(dt) if t is not None and t.is_floating_point() else t  # noqa: E731
    return cast(x), cast(weight), cast(bias)


def conv_transpose2d_crop(x, weight, bias=None, stride=1, padding=0, output_padding=0,
                          groups=1, dilation=1, offset=(0, 0), size=None):
    """Same result as ``F.conv_transpose2d(x, weight, bias, stride, padding,
    output_padding, groups, dilation)[..., oy:oy+H, ox:ox+W]`` with ``(oy, ox) = offset``
    and ``(H, W) = size`` (``size=None``: everything from the offset to the end), but
    only the cropped window is computed: the full map is never allocated.

    Any weight, groups and dilation; a channel-diagonal weight (FCN's bilinear
    upsampling, see :func:`bilinear_kernel`) takes an exact depthwise fast path.
    ``x`` is (N, C, H, W) or, as for F.conv_transpose2d, unbatched (C, H, W).
    The output is channels_last when ``x`` is. Backward is deterministic.
    """
    if isinstance(x, torch.Tensor) and x.dim() == 3:
        return conv_transpose2d_crop(x.unsqueeze(0), weight, bias, stride, padding,
                                     output_padding, groups, dilation, offset, size).squeeze(0)
    if isinstance(x, torch.Tensor) and x.dim() != 4:
        raise ValueError("input must be a 3-D (C, H, W) or 4-D (N, C, H, W) tensor, got shape "
                         f"{tuple(x.shape)}")
    check_tensor4d(x, "input")
    check_tensor4d(weight, "weight")
    x, weight, bias = _autocast(x, weight, bias)
    if weight.dtype != x.dtype or weight.device != x.device:
        raise TypeError(f"weight must have the input's dtype and device ({x.dtype}, {x.device}),"
                        f" got {weight.dtype} on {weight.device}")
    if isinstance(groups, bool) or not isinstance(groups, (numbers.Integral, torch.SymInt)):
        raise TypeError(f"groups must be an integer, got {groups!r}")
    if groups <= 0:
        raise ValueError(f"groups must be positive, got {groups}")
    cin = x.shape[1]
    if cin % groups != 0 or weight.shape[0] != cin:
        raise ValueError(f"weight.shape[0] ({weight.shape[0]}) must equal the input channels "
                         f"({cin}), divisible by groups ({groups})")
    if any(v == 0 for v in weight.shape[1:]):
        raise ValueError(f"weight must have non-empty output channel and kernel dimensions, "
                         f"got shape {tuple(weight.shape)}")
    if x.shape[2] == 0 or x.shape[3] == 0:
        raise ValueError(f"input must have non-empty spatial dimensions, got shape {tuple(x.shape)}")
    cout = weight.shape[1] * groups
    if bias is not None:
        if not isinstance(bias, torch.Tensor):
            raise TypeError(f"bias must be a torch.Tensor or None, got {type(bias).__name__}")
        if bias.dtype != x.dtype or bias.device != x.device:
            raise TypeError(f"bias must have the input's dtype and device ({x.dtype}, {x.device}),"
                            f" got {bias.dtype} on {bias.device}")
        if bias.shape != (cout,):
            raise ValueError(f"bias must have shape ({cout},), got {tuple(bias.shape)}")
    stride = _ints(stride, "stride", 1)
    padding = _ints(padding, "padding", 0)
    output_padding = _ints(output_padding, "output_padding", 0)
    dilation = _ints(dilation, "dilation", 1)
    offset = _ints(offset, "offset", 0)
    for op, s, d in zip(output_padding, stride, dilation):
        if op >= s and op >= d:
            raise ValueError(f"output_padding must be smaller than either stride or dilation, "
                             f"got output_padding={output_padding}, stride={stride}, "
                             f"dilation={dilation}")
    full = tuple(_full_size(n, k, s, p, d, op) for n, k, s, p, d, op in zip(
        x.shape[2:], weight.shape[2:], stride, padding, dilation, output_padding))
    if any(f <= 0 for f in full):
        raise ValueError(f"the transposed convolution output would be empty ({full}); "
                         f"check padding={padding}")
    if size is None:
        size = tuple(f - o for f, o in zip(full, offset))
        if any(v <= 0 for v in size):
            raise ValueError(f"offset {offset} lies outside the full output of size {full}")
    else:
        size = _ints(size, "size", 1)
    for o, n, f in zip(offset, size, full):
        if o + n > f:
            raise ValueError(f"crop window offset={offset}, size={tuple(size)} does not fit in "
                             f"the full transposed convolution output of size {full}")
    return _ops.conv_transpose2d_crop(x, weight, bias, stride, padding, output_padding,
                                      groups, dilation, offset, list(size))


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
def _fake_forward(x, weight, bias, stride, padding, output_padding, groups, dilation,
                  offset, size):
    torch._check(x.dim() == 4 and weight.dim() == 4, lambda: "input and weight must be 4-D")
    return empty_like_layout(x, (x.shape[0], weight.shape[1] * groups, size[0], size[1]))


@torch.library.register_fake("fcn_kernels::conv_transpose2d_crop_backward_input")
def _fake_backward_input(grad_output, weight, input_size, stride, padding, groups, dilation,
                         offset):
    torch._check(grad_output.dim() == 4, lambda: "grad_output must be 4-D")
    return empty_like_layout(grad_output, tuple(input_size))


@torch.library.register_fake("fcn_kernels::conv_transpose2d_crop_backward_weight")
def _fake_backward_weight(grad_output, x, weight_size, stride, padding, groups, dilation,
                          offset):
    torch._check(grad_output.dim() == 4, lambda: "grad_output must be 4-D")
    return x.new_empty(tuple(weight_size))

# Autograd (double backward included) is registered in C++: csrc/autograd.cpp.
