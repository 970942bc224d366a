"""Max-unpooling decoder (SegNet / DeconvNet style): the third FCN upsampling method.

The encoder is the backbone's convolutional part (no fc6/fc7, conv1_1 padded by 1)
with pools that return their switch indices; the decoder unpools with those indices
(``fcn_kernels.max_unpool2d`` or ``F.max_unpool2d``), back to each pool's input size,
and follows each unpooling with a 3x3 conv + ReLU. A 1x1 ``score`` conv gives the
class scores at input resolution, so any input size works (ceil-mode pools).
"""

import torch.nn.functional as F
from torch import nn

from . import upsample as up
from .backbones import build_backbone

UNPOOL_BACKBONES = ("vgg16", "tiny")


class FCNUnpool(nn.Module):
    arch = "unpool"

    def __init__(self, num_classes=21, backbone="vgg16", upsample="fused", pretrained=None):
        super().__init__()
        if backbone not in UNPOOL_BACKBONES:
            raise ValueError(
                f"FCNUnpool supports the VGG-shaped backbones {UNPOOL_BACKBONES} (2x2 pools whose "
                f"switches the decoder reuses), got {backbone!r}"
            )
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        self.num_classes = num_classes
        self.backbone = backbone
        self.upsample = up.check_mode(upsample)
        spec = build_backbone(backbone, first_padding=1, with_fc=False)
        self._layer_names = list(spec.layers)
        for name, m in spec.layers.items():
            self.add_module(name, m)
        self._pools = [n for n in self._layer_names if n.startswith("pool")]
        # channels entering each pool, from the conv before it
        chans, c = {}, 3
        for name in self._layer_names:
            m = spec.layers[name]
            if isinstance(m, nn.Conv2d):
                c = m.out_channels
            elif name.startswith("pool"):
                chans[name] = c
        # decoder stage b mirrors encoder block b: unpool, then conv to the channels of
        # the block before it (the first block's own channels for block 1).
        for i, pool in enumerate(self._pools):
            b = pool[len("pool") :]
            c_out = chans[self._pools[i - 1]] if i > 0 else chans[pool]
            setattr(self, f"deconv{b}", nn.Conv2d(chans[pool], c_out, 3, padding=1))
        self.score = nn.Conv2d(chans[self._pools[0]], num_classes, 1)
        if pretrained is not None:
            from .weights import load_backbone_weights

            load_backbone_weights(self, pretrained)

    def set_upsample(self, mode):
        self.upsample = up.check_mode(mode)
        return self

    def forward(self, x):
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"input must be N x 3 x H x W, got shape {tuple(x.shape)}")
        switches = []
        for name in self._layer_names:
            m = self._modules[name]
            if isinstance(m, nn.MaxPool2d):
                size = x.shape[2:]
                x, idx = F.max_pool2d(
                    x,
                    m.kernel_size,
                    m.stride,
                    m.padding,
                    m.dilation,
                    ceil_mode=m.ceil_mode,
                    return_indices=True,
                )
                switches.append((name, idx, size, m))
            else:
                x = m(x)
        for name, idx, size, m in reversed(switches):
            x = up.max_unpool(
                x, idx, m.kernel_size, m.stride, m.padding, output_size=size, mode=self.upsample
            )
            x = F.relu(self._modules["deconv" + name[len("pool") :]](x), inplace=True)
        return self.score(x)
