"""fcn_kernels: fused upsampling operators for Fully Convolutional Networks.

Each public function is a drop-in for the torch.nn.functional call named in its
docstring; the operators are registered as ``torch.ops.fcn_kernels.*`` with fake
kernels and autograd, so they work with torch.compile and torch.export.
"""

import torch  # noqa: F401  (must be imported before the extension loads)

from ._loader import extension as _C  # noqa: F401  (registers the operators; checks torch)
from ._common import deconv_full_size
from .bilinear import bilinear_upsample
from .deconv import bilinear_kernel, conv_transpose2d_crop
from .unpool import max_unpool2d
from .fuse import fuse
from . import nn

__version__ = "0.1.0"


def build_info() -> dict:
    """What the extension was compiled for: torch version, CUDA version (None: CPU
    kernels only) and source directory, as recorded by setup.py."""
    from . import _build_info as info

    return {"torch": info.TORCH_VERSION, "cuda": info.CUDA_VERSION, "source": info.SOURCE_DIR}


def cuda_built() -> bool:
    """True when the extension was compiled with its CUDA kernels."""
    return torch._C._dispatch_has_kernel_for_dispatch_key("fcn_kernels::bilinear_upsample", "CUDA")


__all__ = [
    "bilinear_upsample",
    "max_unpool2d",
    "conv_transpose2d_crop",
    "bilinear_kernel",
    "deconv_full_size",
    "fuse",
    "nn",
    "testing",
    "cuda_built",
    "build_info",
    "__version__",
]
