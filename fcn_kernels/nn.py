"""nn.Module wrappers, drop-ins for the torch.nn modules they are named after."""

import torch
from torch import nn

from ._common import pair
from .bilinear import bilinear_upsample
from .deconv import bilinear_kernel, conv_transpose2d_crop
from .unpool import max_unpool2d


class BilinearUpsample(nn.Module):
    """Drop-in for ``nn.Upsample(size, scale_factor, mode="bilinear", align_corners,
    recompute_scale_factor)``."""

    def __init__(
        self, size=None, scale_factor=None, align_corners=False, recompute_scale_factor=None
    ):
        super().__init__()
        if (size is None) == (scale_factor is None):
            raise ValueError("exactly one of size or scale_factor should be defined")
        self.size = size
        self.scale_factor = scale_factor
        self.align_corners = align_corners
        self.recompute_scale_factor = recompute_scale_factor

    def forward(self, x):
        return bilinear_upsample(
            x, self.size, self.scale_factor, self.align_corners, self.recompute_scale_factor
        )

    def extra_repr(self):
        what = f"size={self.size}" if self.size is not None else f"scale_factor={self.scale_factor}"
        return f"{what}, align_corners={self.align_corners}"


class ConvTranspose2dCrop(nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` followed by a crop, computed fused (only the cropped
    window). Same parameters and state_dict keys as ``nn.ConvTranspose2d``, so a
    plain module's state_dict loads into it. ``offset`` is the crop's top-left corner
    in the full output; ``size`` its (H, W) (None: to the end), or pass ``size`` per
    call, as FCN crops to the map it is added to."""

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size,
        stride=1,
        padding=0,
        output_padding=0,
        groups=1,
        bias=True,
        dilation=1,
        offset=(0, 0),
        size=None,
        device=None,
        dtype=None,
    ):
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            output_padding,
            groups,
            bias,
            dilation,
            device=device,
            dtype=dtype,
        )
        self.offset = tuple(pair(offset, "offset"))
        self.size = None if size is None else tuple(pair(size, "size"))

    @classmethod
    def bilinear(
        cls,
        channels,
        kernel_size,
        stride,
        offset=(0, 0),
        size=None,
        freeze=True,
        device=None,
        dtype=None,
    ):
        """FCN's upsampling layer: bias-free, weight = :func:`bilinear_kernel`, frozen
        (``requires_grad=False``) unless ``freeze=False``."""
        m = cls(
            channels,
            channels,
            kernel_size,
            stride,
            bias=False,
            offset=offset,
            size=size,
            device=device,
            dtype=dtype,
        )
        with torch.no_grad():
            m.weight.copy_(bilinear_kernel(channels, kernel_size))
        m.weight.requires_grad_(not freeze)
        return m

    def forward(self, x, size=None):
        return conv_transpose2d_crop(
            x,
            self.weight,
            self.bias,
            self.stride,
            self.padding,
            self.output_padding,
            self.groups,
            self.dilation,
            self.offset,
            size if size is not None else self.size,
        )

    def extra_repr(self):
        return super().extra_repr() + f", offset={self.offset}, size={self.size}"


class MaxUnpool2d(nn.MaxUnpool2d):
    """Drop-in for ``nn.MaxUnpool2d(kernel_size, stride=None, padding=0)`` (a subclass:
    same attributes and repr), computing with :func:`fcn_kernels.max_unpool2d`."""

    def forward(self, input, indices, output_size=None):
        return max_unpool2d(
            input, indices, self.kernel_size, self.stride, self.padding, output_size
        )
