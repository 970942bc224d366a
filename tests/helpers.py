"""Helpers shared by the test modules (not fixtures: those are in conftest.py).

Tests import shared names from here only. The comparison helpers and device lists are
defined in conftest.py (where the `device` fixture needs them) and re-exported here.
"""

import numpy as np
import torch
from PIL import Image

from conftest import DEVICES, DTYPES, HAS_CUDA, TOL, assert_close, gpu_code, requires_cuda

__all__ = [
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
