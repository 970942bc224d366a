"""Convolutionalised classification backbones for FCN, and their coordinate maps.

A backbone is an ordered list of ``(name, module)`` layers that the model registers on
itself, so the VGG16 parameter names are exactly the classic ones (``conv1_1.weight``,
``fc6.weight``...). Crop offsets are not hard-coded: :class:`Coord` composes each layer's
``input = a * output + b`` map (Caffe's ``coord_map``), which gives the classic values
(VGG16: 19; 5, 27; 5, 9, 31; AlexNet: 18) and the right ones for every other backbone.
"""

from collections import OrderedDict
from dataclasses import dataclass, field
from fractions import Fraction

import torch
from torch import nn

BACKBONES = ("vgg16", "alexnet", "googlenet", "tiny")


@dataclass(frozen=True)
class Coord:
    """Position in input pixels of index ``i`` of a feature map: ``a * i + b``."""

    a: Fraction = Fraction(1)
    b: Fraction = Fraction(0)

    def conv(self, k, s=1, p=0, d=1):
        """Map of the output of a conv/pool (kernel k, stride s, padding p) applied here."""
        return Coord(self.a * s, self.b + self.a * (Fraction(d * (k - 1), 2) - p))

    def deconv(self, k, s=1, p=0):
        """Map of the output of a transposed convolution applied here."""
        return Coord(self.a / s, self.b - self.a * (Fraction(k - 1, 2) - p) / s)


def crop_offset(src: Coord, ref: Coord) -> int:
    """Offset at which to crop a map with coordinates `src` to align it with `ref`."""
    if src.a != ref.a:
        raise ValueError(f"cannot align maps of strides {src.a} and {ref.a}")
    off = (ref.b - src.b) / src.a
    if off.denominator != 1 or off < 0:
        raise ValueError(f"maps are not aligned on the pixel grid (offset {off})")
    return int(off)


def _first(v):
    return v[0] if isinstance(v, tuple) else v


def layer_coord(coord: Coord, m: nn.Module) -> Coord:
    """Coordinate map after module `m`."""
    if isinstance(m, (nn.Conv2d, nn.MaxPool2d)):
        return coord.conv(
            _first(m.kernel_size), _first(m.stride), _first(m.padding), _first(m.dilation)
        )
    if isinstance(m, (nn.ReLU, nn.Dropout, nn.Dropout2d, Inception)):
        return coord  # pointwise, or stride-1 "same" padding
    raise TypeError(f"no coordinate rule for {type(m).__name__}")


@dataclass
class Backbone:
    """Layers of a backbone plus what the FCN heads need to know about them."""

    name: str
    layers: "OrderedDict[str, nn.Module]"
    out_channels: int  # channels of the last layer
    skips: dict = field(default_factory=dict)  # "pool4"/"pool3" -> (layer name, channels)
    final_kernel_32: int = 64  # FCN-32s upscore kernel
    pretrained_format: str = ""  # torchvision arch it converts from

    def coords(self):
        """Coord after every layer, by name."""
        c, out = Coord(), {}
        for name, m in self.layers.items():
            c = layer_coord(c, m)
            out[name] = c
        return out


def _pool():
    return nn.MaxPool2d(2, stride=2, ceil_mode=True)


def _vgg_layers(blocks, fc_channels, first_padding=100, with_fc=True, dropout=True):
    """VGG layout: blocks = [(n_convs, channels), ...]; conv1_1 padded by `first_padding`."""
    layers = OrderedDict()
    c_in = 3
    for b, (n, c) in enumerate(blocks, 1):
        for i in range(1, n + 1):
            pad = first_padding if (b, i) == (1, 1) else 1
            layers[f"conv{b}_{i}"] = nn.Conv2d(c_in, c, 3, padding=pad)
            layers[f"relu{b}_{i}"] = nn.ReLU(inplace=True)
            c_in = c
        layers[f"pool{b}"] = _pool()
    if with_fc:
        layers["fc6"] = nn.Conv2d(c_in, fc_channels, 7)
        layers["relu6"] = nn.ReLU(inplace=True)
        if dropout:
            layers["drop6"] = nn.Dropout2d()
        layers["fc7"] = nn.Conv2d(fc_channels, fc_channels, 1)
        layers["relu7"] = nn.ReLU(inplace=True)
        if dropout:
            layers["drop7"] = nn.Dropout2d()
    return layers


VGG16_BLOCKS = [(2, 64), (2, 128), (3, 256), (3, 512), (3, 512)]
TINY_BLOCKS = [(1, 8), (1, 16), (1, 16), (1, 32), (1, 32)]


def vgg16(first_padding=100, with_fc=True):
    layers = _vgg_layers(VGG16_BLOCKS, 4096, first_padding, with_fc)
    skips = {"pool4": ("pool4", 512), "pool3": ("pool3", 256)}
    return Backbone("vgg16", layers, 4096 if with_fc else 512, skips, pretrained_format="vgg16")


def tiny(first_padding=100, with_fc=True):
    """VGG-shaped (5 pools, fc6 7x7, fc7 1x1) but a few thousand times smaller."""
    layers = _vgg_layers(TINY_BLOCKS, 64, first_padding, with_fc)
    skips = {"pool4": ("pool4", 32), "pool3": ("pool3", 16)}
    return Backbone("tiny", layers, 64 if with_fc else 32, skips)


def alexnet():
    """AlexNet with torchvision's channel counts (so its weights convert), FCN's conv1
    padding 100 and ceil-mode pools; fc6 a 6x6 conv, fc7 1x1."""
    layers = OrderedDict()
    layers["conv1"] = nn.Conv2d(3, 64, 11, stride=4, padding=100)
    layers["relu1"] = nn.ReLU(inplace=True)
    layers["pool1"] = nn.MaxPool2d(3, stride=2, ceil_mode=True)
    layers["conv2"] = nn.Conv2d(64, 192, 5, padding=2)
    layers["relu2"] = nn.ReLU(inplace=True)
    layers["pool2"] = nn.MaxPool2d(3, stride=2, ceil_mode=True)
    layers["conv3"] = nn.Conv2d(192, 384, 3, padding=1)
    layers["relu3"] = nn.ReLU(inplace=True)
    layers["conv4"] = nn.Conv2d(384, 256, 3, padding=1)
    layers["relu4"] = nn.ReLU(inplace=True)
    layers["conv5"] = nn.Conv2d(256, 256, 3, padding=1)
    layers["relu5"] = nn.ReLU(inplace=True)
    layers["pool5"] = nn.MaxPool2d(3, stride=2, ceil_mode=True)
    layers["fc6"] = nn.Conv2d(256, 4096, 6)
    layers["relu6"] = nn.ReLU(inplace=True)
    layers["drop6"] = nn.Dropout2d()
    layers["fc7"] = nn.Conv2d(4096, 4096, 1)
    layers["relu7"] = nn.ReLU(inplace=True)
    layers["drop7"] = nn.Dropout2d()
    return Backbone("alexnet", layers, 4096, final_kernel_32=63, pretrained_format="alexnet")


class Inception(nn.Module):
    """Inception-v1 module: 1x1 | 1x1-3x3 | 1x1-5x5 | 3x3 pool-1x1, concatenated."""

    def __init__(self, c_in, c1, c3r, c3, c5r, c5, cp):
        super().__init__()
        relu = lambda: nn.ReLU(inplace=True)  # noqa: E731
        self.b1 = nn.Sequential(nn.Conv2d(c_in, c1, 1), relu())
        self.b3 = nn.Sequential(
            nn.Conv2d(c_in, c3r, 1), relu(), nn.Conv2d(c3r, c3, 3, padding=1), relu()
        )
        self.b5 = nn.Sequential(
            nn.Conv2d(c_in, c5r, 1), relu(), nn.Conv2d(c5r, c5, 5, padding=2), relu()
        )
        self.bp = nn.Sequential(
            nn.MaxPool2d(3, stride=1, padding=1, ceil_mode=True), nn.Conv2d(c_in, cp, 1), relu()
        )
        self.out_channels = c1 + c3 + c5 + cp

    def forward(self, x):
        return torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bp(x)], 1)


def googlenet():
    """GoogLeNet (Inception v1, no LRN/BN, no auxiliary heads), convolutional to
    inception5b (1024 channels, stride 32); conv1 padded by 100 like FCN's VGG16."""
    pool = lambda: nn.MaxPool2d(3, stride=2, ceil_mode=True)  # noqa: E731
    layers = OrderedDict()
    layers["conv1"] = nn.Conv2d(3, 64, 7, stride=2, padding=100)
    layers["relu1"] = nn.ReLU(inplace=True)
    layers["pool1"] = pool()
    layers["conv2"] = nn.Conv2d(64, 64, 1)
    layers["relu2"] = nn.ReLU(inplace=True)
    layers["conv3"] = nn.Conv2d(64, 192, 3, padding=1)
    layers["relu3"] = nn.ReLU(inplace=True)
    layers["pool2"] = pool()
    cfg = [
        ("inception3a", (192, 64, 96, 128, 16, 32, 32)),
        ("inception3b", (256, 128, 128, 192, 32, 96, 64)),
        ("pool3", None),
        ("inception4a", (480, 192, 96, 208, 16, 48, 64)),
        ("inception4b", (512, 160, 112, 224, 24, 64, 64)),
        ("inception4c", (512, 128, 128, 256, 24, 64, 64)),
        ("inception4d", (512, 112, 144, 288, 32, 64, 64)),
        ("inception4e", (528, 256, 160, 320, 32, 128, 128)),
        ("pool4", None),
        ("inception5a", (832, 256, 160, 320, 32, 128, 128)),
        ("inception5b", (832, 384, 192, 384, 48, 128, 128)),
    ]
    for name, args in cfg:
        layers[name] = pool() if args is None else Inception(*args)
    layers["drop"] = nn.Dropout2d(0.4)
    # odd final kernel: its centre lands on the pixel grid of this backbone
    return Backbone("googlenet", layers, 1024, final_kernel_32=63)


_BUILDERS = {"vgg16": vgg16, "alexnet": alexnet, "googlenet": googlenet, "tiny": tiny}


def build_backbone(name: str, **kw) -> Backbone:
    if name not in _BUILDERS:
        raise ValueError(f"unknown backbone {name!r}; choose one of {BACKBONES}")
    return _BUILDERS[name](**kw)
