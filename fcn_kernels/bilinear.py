"""Bilinear upsampling: ``torch.ops.fcn_kernels.bilinear_upsample`` and its autograd."""

import math
import numbers

import torch

from ._common import check_finite_positive, empty_like_layout, pair, require_tensor

_ops = torch.ops.fcn_kernels


def bilinear_upsample(
    x,
    size=None,
    scale_factor=None,
    align_corners=False,
    recompute_scale_factor=None,
    antialias=False,
):
    """Bilinear resize of a 4-D tensor; same result as ``F.interpolate(x, size,
    scale_factor, mode="bilinear", align_corners, recompute_scale_factor, antialias)``,
    with the same argument forms, checks and errors.

    size: int or (H, W). scale_factor: number or (sh, sw), non-integer allowed; the
    output is ``floor(in * scale)`` and, as in ATen, the given scale (not the size
    ratio) defines the source positions when ``align_corners=False``, unless
    ``recompute_scale_factor=True`` (then the size ratio does). ``align_corners=None``
    means False (F.interpolate's default for bilinear). ``antialias=True`` (a low-pass
    filter for downsampling, another operation) runs ATen's kernel: F.interpolate itself.
    A 3-D (C, H, W) input raises NotImplementedError, as F.interpolate does for bilinear.
    The output is channels_last when the input is. Backward is deterministic.
    """
    if isinstance(x, torch.Tensor) and x.dim() in (3, 5):
        # F.interpolate's own error (a 3-D input means "linear", a 5-D one "trilinear")
        raise NotImplementedError(f"Got {x.dim()}D input, but bilinear mode needs 4D input")
    # Argument forms are normalised here; tensor values (dtype, spatial extent, output
    # size) are checked once, in C++ (csrc/bilinear/args.h), for direct op calls alike.
    require_tensor(x, "input")
    if x.dim() != 4:
        raise ValueError(f"input must be a 4-D (N, C, H, W) tensor, got shape {tuple(x.shape)}")
    if align_corners is None:
        align_corners = False
    if not isinstance(align_corners, bool):
        raise TypeError(f"align_corners must be a bool or None, got {align_corners!r}")
    if size is not None and scale_factor is not None:
        raise ValueError("only one of size or scale_factor should be defined")
    if size is None and scale_factor is None:
        raise ValueError("either size or scale_factor should be defined")
    if recompute_scale_factor and size is not None:
        raise ValueError("recompute_scale_factor is not meaningful with an explicit size.")
    if antialias:
        return torch.nn.functional.interpolate(
            x, size, scale_factor, "bilinear", align_corners, recompute_scale_factor, True
        )
    if size is not None:
        out = pair(size, "size")
        scales = (None, None)
    else:
        scales = pair(scale_factor, "scale_factor", numbers.Real)
        check_finite_positive(scales, "scale_factor")
        scales = tuple(float(s) for s in scales)
        # (n * s, not float(n) * s: a symbolic size stays symbolic under torch.export)
        out = tuple(math.floor(n * s) for n, s in zip(x.shape[2:], scales))
        if any(v <= 0 for v in out):
            raise ValueError(
                f"scale_factor {scale_factor!r} gives an empty output for input of spatial "
                f"size {tuple(x.shape[2:])}"
            )
        if recompute_scale_factor:
            scales = (None, None)  # the size ratio defines the source positions
    return _ops.bilinear_upsample(x, list(out), align_corners, scales[0], scales[1])


@torch.library.register_fake("fcn_kernels::bilinear_upsample")
def _fake_forward(x, output_size, align_corners, scale_h, scale_w):
    torch._check(x.dim() == 4, lambda: "input must be 4-D")
    return empty_like_layout(x, (x.shape[0], x.shape[1], output_size[0], output_size[1]))


@torch.library.register_fake("fcn_kernels::bilinear_upsample_backward")
def _fake_backward(grad_output, input_size, align_corners, scale_h, scale_w):
    torch._check(grad_output.dim() == 4, lambda: "grad_output must be 4-D")
    return empty_like_layout(grad_output, tuple(input_size))


# Autograd (double backward included) is registered in C++: csrc/autograd.cpp.
