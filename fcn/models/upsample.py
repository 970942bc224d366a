"""Every upsampling and crop of the FCN models, in one place.

Each function takes ``mode``: ``"fused"`` runs the ``fcn_kernels`` operators,
``"aten"`` the plain ATen composition they replace (``F.conv_transpose2d`` + slicing,
``F.interpolate``, ``F.max_unpool2d``). The two give equal results to rounding, so a
model can switch with ``model.set_upsample(...)``.
"""

from fractions import Fraction

import fcn_kernels as fk
import torch
import torch.nn.functional as F
from fcn_kernels import bilinear_kernel, deconv_full_size
from torch import nn

__all__ = [
    "MODES",
    "check_mode",
    "bilinear_kernel",
    "crop",
    "conv_transpose_crop",
    "interpolate",
    "bilinear_crop",
    "max_unpool",
    "UpscoreCrop",
    "BilinearCrop",
]

MODES = ("fused", "aten")


def check_mode(mode) -> str:
    """Validate an ``upsample=`` argument."""
    if mode not in MODES:
        raise ValueError(f"upsample must be one of {MODES}, got {mode!r}")
    return mode


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list, torch.Size)) else (v, v)


def _check_window(name, full, offset, size):
    for axis, (n, o, s) in enumerate(zip(full, offset, size)):
        if o < 0 or o + s > n:
            raise ValueError(
                f"{name}: crop [{o}, {o}+{s}) on axis {axis + 2} does not fit in a map of size {n}"
            )


def crop(x: torch.Tensor, offset, size) -> torch.Tensor:
    """``x[..., oy:oy+H, ox:ox+W]`` (a view), with a clear error when it does not fit."""
    oy, ox = _pair(offset)
    h, w = _pair(size)
    _check_window("crop", x.shape[2:], (oy, ox), (h, w))
    return x[:, :, oy : oy + h, ox : ox + w]


def conv_transpose_crop(x, weight, bias=None, stride=1, offset=0, size=None, mode="fused"):
    """``F.conv_transpose2d(x, weight, bias, stride)[..., oy:oy+H, ox:ox+W]``;
    ``size=None`` keeps everything from the offset on. Fused: one operator that never
    materialises the uncropped map."""
    stride = _pair(stride)
    offset = _pair(offset)
    k = weight.shape[2:]
    full = tuple(deconv_full_size(n, kk, s) for n, s, kk in zip(x.shape[2:], stride, k))
    if size is None:
        size = tuple(n - o for n, o in zip(full, offset))
    size = _pair(size)
    _check_window("conv_transpose_crop", full, offset, size)
    if mode == "fused":
        return fk.conv_transpose2d_crop(x, weight, bias, stride=stride, offset=offset, size=size)
    if mode != "aten":
        raise ValueError(f"upsample must be one of {MODES}, got {mode!r}")
    y = F.conv_transpose2d(x, weight, bias, stride=stride)
    return y[:, :, offset[0] : offset[0] + size[0], offset[1] : offset[1] + size[1]]


def interpolate(x, size=None, scale_factor=None, align_corners=False, mode="fused"):
    """``F.interpolate(x, size, scale_factor, mode="bilinear", align_corners=...)``."""
    if mode == "fused":
        return fk.bilinear_upsample(x, size, scale_factor, align_corners)
    if mode != "aten":
        raise ValueError(f"upsample must be one of {MODES}, got {mode!r}")
    return F.interpolate(
        x, size=size, scale_factor=scale_factor, mode="bilinear", align_corners=align_corners
    )


def bilinear_crop(x, kernel_size, stride, offset=0, size=None, mode="fused"):
    """Parameter-free bilinear interpolation on the grid of a bilinear-initialised
    deconvolution (kernel `kernel_size`, `stride`) followed by a crop at `offset`:
    exactly equal to ``conv_transpose_crop(x, bilinear_kernel(C, k), ...)`` wherever both
    interpolation neighbours are inside `x`; at the borders it repeats the edge value
    where the deconvolution fades to zero. ``size=None``: the deconvolution's extent.
    """
    k, s = _pair(kernel_size), _pair(stride)
    offset = _pair(offset)
    n = tuple(x.shape[2:])
    if size is None:
        size = tuple(deconv_full_size(nn_, kk, ss) - o for nn_, ss, kk, o in zip(n, s, k, offset))
    size = _pair(size)
    if k[0] % 2 != k[1] % 2:
        raise ValueError(f"kernel_size {k} must have the same parity on both axes")
    odd = k[0] % 2 == 1
    # Bilinear kernel centre c: input i sits at deconvolution output s*i + c. Output o of
    # the interpolation below sits at s*i + c - shift, so deconv[o + offset] == interp[o + offset - shift].
    shifts = []
    for kk, ss in zip(k, s):
        factor = (kk + 1) // 2
        c = Fraction(factor - 1) if odd else Fraction(2 * factor - 1, 2)
        # align_corners=True, size s*(n-1)+1: input i at s*i; False, scale s: at s*i + (s-1)/2.
        at = Fraction(0) if odd else Fraction(ss - 1, 2)
        shift = c - at
        if shift.denominator != 1:
            raise ValueError(
                f"bilinear_crop: kernel {kk} with stride {ss} has no integer alignment with "
                "bilinear interpolation"
            )
        shifts.append(int(shift))
    starts = [o - sh for o, sh in zip(offset, shifts)]
    # Replicate-pad the input (interpolation clamps to the edge value anyway) when the
    # window falls outside the interpolated map.
    pads = []
    for start, sz, nn_, ss in zip(starts, size, n, s):
        extent = ss * (nn_ - 1) + 1 if odd else ss * nn_
        lo = max(0, -(start // ss)) if start < 0 else 0
        hi_need = start + lo * ss + sz - (extent + lo * ss)
        hi = max(0, -(-hi_need // ss))
        pads.append((lo, hi))
    if any(p for pair_ in pads for p in pair_):
        x = F.pad(x, (pads[1][0], pads[1][1], pads[0][0], pads[0][1]), mode="replicate")
        starts = [st + lo * ss for st, (lo, _), ss in zip(starts, pads, s)]
    n = tuple(x.shape[2:])
    if odd:
        y = interpolate(
            x,
            size=tuple(ss * (nn_ - 1) + 1 for ss, nn_ in zip(s, n)),
            align_corners=True,
            mode=mode,
        )
    else:
        y = interpolate(x, scale_factor=tuple(float(ss) for ss in s), mode=mode)
    return crop(y, starts, size)


def max_unpool(x, indices, kernel_size, stride=None, padding=0, output_size=None, mode="fused"):
    """``F.max_unpool2d(x, indices, kernel_size, stride, padding, output_size)``."""
    if mode == "fused":
        return fk.max_unpool2d(x, indices, kernel_size, stride, padding, output_size)
    if mode != "aten":
        raise ValueError(f"upsample must be one of {MODES}, got {mode!r}")
    return F.max_unpool2d(x, indices, kernel_size, stride, padding, output_size)


class UpscoreCrop(nn.ConvTranspose2d):
    """A ``nn.ConvTranspose2d`` (no padding; same parameters and state_dict keys) whose
    forward is deconvolution + crop at ``offset`` to ``size`` in one call: fused
    (``fcn_kernels.conv_transpose2d_crop``) or ATen (``F.conv_transpose2d`` + slicing)."""

    def __init__(
        self, in_channels, out_channels, kernel_size, stride, offset=0, bias=False, upsample="fused"
    ):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, bias=bias)
        self.offset = _pair(offset)
        self.upsample = upsample

    def forward(self, x, size=None):
        return conv_transpose_crop(
            x, self.weight, self.bias, self.stride, self.offset, size, self.upsample
        )

    def extra_repr(self):
        return super().extra_repr() + f", offset={self.offset}, upsample={self.upsample!r}"


class BilinearCrop(nn.Module):
    """Parameter-free replacement for an :class:`UpscoreCrop` with a bilinear kernel:
    bilinear interpolation (``fcn_kernels.bilinear_upsample`` / ``F.interpolate``) on the
    same grid, then the same crop. See :func:`bilinear_crop`."""

    def __init__(self, kernel_size, stride, offset=0, upsample="fused"):
        super().__init__()
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.offset = _pair(offset)
        self.upsample = upsample

    def forward(self, x, size=None):
        return bilinear_crop(x, self.kernel_size, self.stride, self.offset, size, self.upsample)

    def extra_repr(self):
        return (
            f"kernel_size={self.kernel_size}, stride={self.stride}, offset={self.offset}, "
            f"upsample={self.upsample!r}"
        )
