"""nn.Module wrappers, drop-ins for the torch.nn modules they are named after."""
from torch import nn

from .bilinear import bilinear_upsample


class BilinearUpsample(nn.Module):
    """Drop-in for ``nn.Upsample(size, scale_factor, mode="bilinear", align_corners)``."""

    def __init__(self, size=None, scale_factor=None, align_corners=False):
        super().__init__()
        if (size is None) == (scale_factor is None):
            raise ValueError("exactly one of size or scale_factor should be defined")
        self.size = size
        self.scale_factor = scale_factor
        self.align_corners = align_corners

    def forward(self, x):
        return bilinear_upsample(x, self.size, self.scale_factor, self.align_corners)

    def extra_repr(self):
        what = f"size={self.size}" if self.size is not None else f"scale_factor={self.scale_factor}"
        return f"{what}, align_corners={self.align_corners}"
