"""fcn: Fully Convolutional Networks for semantic segmentation, on fcn_kernels."""

__version__ = "0.1.0"
