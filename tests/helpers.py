"""Helpers shared by the test modules (not fixtures: those are in conftest.py).

Tests import shared names from here only. The comparison helpers and device lists are
defined in conftest.py (where the `device` fixture needs them) and re-exported here.
"""

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from conftest import DEVICES, DTYPES, HAS_CUDA, TOL, assert_close, gpu_code, requires_cuda

__all__ = [
    "pooled",
    "reference",
    "assert_same",
    "ClassicFCN",
    "VGG16_BLOCKS",
    "TINY_BLOCKS",
    "DEVICES",
    "DTYPES",
    "HAS_CUDA",
    "TOL",
    "assert_close",
    "gpu_code",
    "requires_cuda",
    "to_layout",
    "make_voc",
]


def to_layout(t, layout):
    if layout == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if layout == "noncontig":  # a strided view: every other column of a wider tensor
        wide = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=t.device)
        wide[..., ::2] = t
        return wide[..., ::2]
    return t.contiguous()


def make_voc(root, ids_by_split, size=(20, 30), num_classes=21, seed=0):
    """A small VOC-layout folder written with PIL directly."""
    rng = np.random.default_rng(seed)
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    pal = [0] * 768
    for i, (r, g, b) in enumerate([(0, 0, 0), (128, 0, 0), (0, 128, 0)]):
        pal[3 * i : 3 * i + 3] = [r, g, b]
    pal[765:768] = [224, 224, 192]
    labels = {}
    for split, ids in ids_by_split.items():
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
        for i in ids:
            Image.fromarray(rng.integers(0, 256, size + (3,), dtype=np.uint8)).save(
                root / "JPEGImages" / f"{i}.jpg"
            )
            lab = rng.integers(0, 3, size).astype(np.uint8)
            lab[0, :] = 255
            im = Image.fromarray(lab, mode="P")
            im.putpalette(pal)
            im.save(root / "SegmentationClass" / f"{i}.png")
            labels[i] = lab
    return labels


# ---------------------------------------------------------------------------------------
# The classic port, written out in its own layout (reference for compatibility tests).
# ---------------------------------------------------------------------------------------
VGG16_BLOCKS = [(2, 64), (2, 128), (3, 256), (3, 512), (3, 512)]
TINY_BLOCKS = [(1, 8), (1, 16), (1, 16), (1, 32), (1, 32)]


class ClassicFCN(nn.Module):
    """wkentaro/pytorch-fcn FCN32s / FCN16s / FCN8s / FCN8sAtOnce (blocks configurable
    so that the same code describes the tiny backbone)."""

    def __init__(self, arch, n_class=21, blocks=VGG16_BLOCKS, fc=4096):
        super().__init__()
        self.arch = arch
        c_in = 3
        self.blocks = []
        for b, (n, c) in enumerate(blocks, 1):
            names = []
            for i in range(1, n + 1):
                setattr(
                    self,
                    f"conv{b}_{i}",
                    nn.Conv2d(c_in, c, 3, padding=100 if (b, i) == (1, 1) else 1),
                )
                setattr(self, f"relu{b}_{i}", nn.ReLU(inplace=True))
                names.append(f"{b}_{i}")
                c_in = c
            setattr(self, f"pool{b}", nn.MaxPool2d(2, stride=2, ceil_mode=True))
            self.blocks.append(names)
        self.fc6 = nn.Conv2d(c_in, fc, 7)
        self.relu6 = nn.ReLU(inplace=True)
        self.drop6 = nn.Dropout2d()
        self.fc7 = nn.Conv2d(fc, fc, 1)
        self.relu7 = nn.ReLU(inplace=True)
        self.drop7 = nn.Dropout2d()
        self.score_fr = nn.Conv2d(fc, n_class, 1)
        if arch == "fcn32s":
            self.upscore = nn.ConvTranspose2d(n_class, n_class, 64, stride=32, bias=False)
            return
        if arch == "fcn16s":  # registration order of the port
            self.score_pool4 = nn.Conv2d(blocks[3][1], n_class, 1)
            self.upscore2 = nn.ConvTranspose2d(n_class, n_class, 4, stride=2, bias=False)
            self.upscore16 = nn.ConvTranspose2d(n_class, n_class, 32, stride=16, bias=False)
            return
        self.score_pool3 = nn.Conv2d(blocks[2][1], n_class, 1)
        self.score_pool4 = nn.Conv2d(blocks[3][1], n_class, 1)
        self.upscore2 = nn.ConvTranspose2d(n_class, n_class, 4, stride=2, bias=False)
        self.upscore8 = nn.ConvTranspose2d(n_class, n_class, 16, stride=8, bias=False)
        self.upscore_pool4 = nn.ConvTranspose2d(n_class, n_class, 4, stride=2, bias=False)

    def forward(self, x):
        h = x
        for b, names in enumerate(self.blocks, 1):
            for n in names:
                h = getattr(self, f"relu{n}")(getattr(self, f"conv{n}")(h))
            h = getattr(self, f"pool{b}")(h)
            if b == 3:
                pool3 = h
            if b == 4:
                pool4 = h
        h = self.drop6(self.relu6(self.fc6(h)))
        h = self.drop7(self.relu7(self.fc7(h)))
        h = self.score_fr(h)
        if self.arch == "fcn32s":
            h = self.upscore(h)
            return h[:, :, 19 : 19 + x.size()[2], 19 : 19 + x.size()[3]].contiguous()
        h = self.upscore2(h)
        upscore2 = h
        p4 = pool4 * 0.01 if self.arch == "fcn8s-atonce" else pool4
        h = self.score_pool4(p4)
        h = h[:, :, 5 : 5 + upscore2.size(2), 5 : 5 + upscore2.size(3)]
        h = upscore2 + h
        if self.arch == "fcn16s":
            h = self.upscore16(h)
            return h[:, :, 27 : 27 + x.size()[2], 27 : 27 + x.size()[3]].contiguous()
        h = self.upscore_pool4(h)
        upscore_pool4 = h
        p3 = pool3 * 0.0001 if self.arch == "fcn8s-atonce" else pool3
        h = self.score_pool3(p3)
        h = h[:, :, 9 : 9 + upscore_pool4.size(2), 9 : 9 + upscore_pool4.size(3)]
        h = upscore_pool4 + h
        h = self.upscore8(h)
        return h[:, :, 31 : 31 + x.size()[2], 31 : 31 + x.size()[3]].contiguous()


# ---- max-unpooling tests (test_unpool, test_unpool_gpu) ----


def pooled(shape, k, s, p, ceil, dtype=torch.float32, device="cpu", seed=0):
    """Unpooling input: pooled values of a random map (cast to dtype) and their indices."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    y, i = F.max_pool2d(x, k, s, p, ceil_mode=ceil, return_indices=True)
    return y.to(dtype).to(device), i.to(device)


def reference(x, indices, out_hw):
    """Independent definition of the result: y[n, c].flat[indices[n, c, j]] = x[n, c, j],
    where several j name the same output the largest j wins, zeros elsewhere."""
    x, indices = x.cpu(), indices.cpu()
    n, c = x.shape[:2]
    plane = out_hw[0] * out_hw[1]
    ind = indices.reshape(n, c, -1)
    pos = torch.arange(ind.shape[2]).expand_as(ind)
    winner = torch.full((n, c, plane), -1).scatter_reduce(2, ind, pos, reduce="amax")
    vals = x.reshape(n, c, -1).gather(2, winner.clamp(min=0))
    return torch.where(winner >= 0, vals, torch.zeros((), dtype=x.dtype)).view(n, c, *out_hw)


def assert_same(actual, expected):
    """Unpooling only moves elements: results must be bit-identical."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    torch.testing.assert_close(actual.cpu(), expected.cpu(), rtol=0, atol=0)
