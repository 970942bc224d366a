"""fcn.data: the procedural set and the VOC-layout loader (on folders generated here)."""

import numpy as np
import pytest
import torch
from PIL import Image

from fcn.data import (
    DataError,
    Normalize,
    SyntheticSegmentation,
    VOCSegmentation,
    build_dataset,
    pad_collate,
    read_label,
    voc_palette,
    write_label,
)
from helpers import make_voc


def test_synthetic_deterministic_and_varied():
    a = SyntheticSegmentation(4, size=48, seed=3)
    b = SyntheticSegmentation(4, size=48, seed=3, cache=False)
    for i in range(4):
        ia, la = a.raw(i)
        ib, lb = b.raw(i)
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(la, lb)
    c = SyntheticSegmentation(4, size=48, seed=4)
    assert not np.array_equal(a.raw(0)[0], c.raw(0)[0])
    v = SyntheticSegmentation(4, size=48, seed=3, split="val")
    assert not np.array_equal(a.raw(0)[1], v.raw(0)[1])
    # index i does not depend on how many images the set has
    np.testing.assert_array_equal(SyntheticSegmentation(10, 48, 3).raw(2)[1], a.raw(2)[1])


def test_synthetic_cache_cannot_be_written_through():
    """The cache keeps what raw(i) returns: a caller's in-place write (an augmentation
    on the array) raises instead of changing image i for every later epoch."""
    d = SyntheticSegmentation(2, size=32, seed=1)
    img, lab = d.raw(0)
    with pytest.raises(ValueError, match="read-only"):
        img[0, 0] = 7
    with pytest.raises(ValueError, match="read-only"):
        lab += 1
    fresh = SyntheticSegmentation(2, size=32, seed=1, cache=False).raw(0)
    np.testing.assert_array_equal(d.raw(0)[0], fresh[0])
    x, y = d[0]
    x.add_(1)  # what __getitem__ returns is the caller's own
    y.zero_()
    np.testing.assert_array_equal(d.raw(0)[1], fresh[1])


def test_synthetic_content():
    d = SyntheticSegmentation(12, size=(40, 56), seed=0)
    counts = np.zeros(256, int)
    for i in range(len(d)):
        img, lab = d.raw(i)
        assert img.shape == (40, 56, 3) and img.dtype == np.uint8
        assert lab.shape == (40, 56) and lab.dtype == np.uint8
        counts += np.bincount(lab.ravel(), minlength=256)
    assert set(np.flatnonzero(counts)) == {0, 1, 2, 3, 4, 255}
    assert counts[0] > counts[1:5].sum()  # background dominates, as in VOC
    assert 0 < counts[255] < 0.2 * counts.sum()  # a thin void band
    x, y = d[0]
    assert x.shape == (3, 40, 56) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and y.shape == (40, 56)


def test_void_band_separates_every_class_boundary():
    # VOC-style: two 4-adjacent pixels that are both labelled (not 255) never carry
    # different classes: every boundary is covered by the void band.
    for i in range(4):
        _, lab = SyntheticSegmentation(4, 64, seed=1).raw(i)
        for a, b in ((lab[:, 1:], lab[:, :-1]), (lab[1:], lab[:-1])):
            both = (a != 255) & (b != 255)
            assert not np.any(both & (a != b))
        assert (lab == 255).any() and (lab > 0).sum() > (lab == 255).sum() / 4


def test_normalize_roundtrip_both_modes():
    img = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    for mode in ("torchvision", "caffe"):
        n = Normalize(mode)
        np.testing.assert_array_equal(n.invert(n(img)), img)
    x = Normalize("caffe")(img)
    # BGR order, minus the classic mean, 0-255 scale
    np.testing.assert_allclose(x[0].numpy(), img[:, :, 2] - 104.00698793, atol=1e-4)
    np.testing.assert_allclose(x[2].numpy(), img[:, :, 0] - 122.67891434, atol=1e-4)
    x = Normalize("torchvision")(img)
    np.testing.assert_allclose(x[1].numpy(), (img[:, :, 1] / 255 - 0.456) / 0.224, atol=1e-5)
    with pytest.raises(ValueError, match="norm"):
        Normalize("bgr")


def test_voc_palette_known_colours():
    pal = voc_palette()
    assert tuple(pal[0]) == (0, 0, 0)
    assert tuple(pal[1]) == (128, 0, 0)
    assert tuple(pal[2]) == (0, 128, 0)
    assert tuple(pal[15]) == (192, 128, 128)  # person
    assert tuple(pal[255]) == (224, 224, 192)  # void


def test_voc_loader(tmp_path):
    labels = make_voc(tmp_path, {"train": ["a", "b", "c"], "val": ["d"]})
    ds = VOCSegmentation(tmp_path, "train")
    assert len(ds) == 3 and ds.ids == ["a", "b", "c"] and ds.num_classes == 21
    for k, i in enumerate("abc"):
        x, y = ds[k]
        assert x.shape == (3, 20, 30)
        np.testing.assert_array_equal(y.numpy(), labels[i])
    assert len(VOCSegmentation(tmp_path, "val")) == 1
    # a VOCdevkit folder with one VOC* subfolder works too
    dev = tmp_path / "devkit"
    dev.mkdir()
    make_voc(dev / "VOC2012", {"train": ["x"]})
    assert VOCSegmentation(dev, "train").ids == ["x"]
    assert isinstance(build_dataset(str(tmp_path), "train"), VOCSegmentation)


def test_label_png_roundtrip_and_rgb(tmp_path):
    lab = np.array([[0, 1, 2], [15, 255, 20]], np.uint8)
    write_label(tmp_path / "l.png", lab)
    with Image.open(tmp_path / "l.png") as im:
        assert im.mode == "P"
    np.testing.assert_array_equal(read_label(tmp_path / "l.png", 21), lab)
    # an RGB-coloured label maps back through the palette
    Image.fromarray(voc_palette()[lab]).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(read_label(tmp_path / "rgb.png", 21), lab)
    Image.fromarray(np.full((2, 2, 3), 7, np.uint8)).save(tmp_path / "bad.png")
    with pytest.raises(DataError, match="not in the VOC palette"):
        read_label(tmp_path / "bad.png")


def test_voc_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="data folder not found"):
        VOCSegmentation(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="missing JPEGImages"):
        VOCSegmentation(tmp_path / "empty")
    root = tmp_path / "voc"
    make_voc(root, {"train": ["a", "b"]})
    with pytest.raises(FileNotFoundError, match=r"split list not found.*available splits: train"):
        VOCSegmentation(root, "val")
    # malformed list
    (root / "ImageSets/Segmentation/bad.txt").write_text("a\nb c\n")
    with pytest.raises(DataError, match=r"bad.txt:2: expected one image id"):
        VOCSegmentation(root, "bad")
    (root / "ImageSets/Segmentation/empty.txt").write_text("\n")
    with pytest.raises(DataError, match="lists no images"):
        VOCSegmentation(root, "empty")
    # listed image missing
    (root / "ImageSets/Segmentation/missing.txt").write_text("a\nzz\n")
    with pytest.raises(FileNotFoundError, match=r"image of 'zz'"):
        VOCSegmentation(root, "missing")
    # unreadable image
    (root / "JPEGImages/a.jpg").write_bytes(b"not a jpeg")
    ds = VOCSegmentation(root, "train")
    with pytest.raises(DataError, match=r"cannot read image .*a\.jpg"):
        ds[0]
    # label out of range (not 255)
    lab = np.zeros((20, 30), np.uint8)
    lab[3, 4] = 40
    Image.fromarray(lab, mode="L").save(root / "SegmentationClass/b.png")
    with pytest.raises(DataError, match=r"values \[40\] outside \[0, 21\)"):
        ds[1]
    with pytest.raises(DataError):
        ds.check()
    # image and label of different sizes
    Image.fromarray(np.zeros((5, 5), np.uint8), mode="L").save(root / "SegmentationClass/b.png")
    with pytest.raises(DataError, match="but its label"):
        ds[1]


def test_pad_collate():
    a = (torch.ones(3, 2, 3), torch.zeros(2, 3, dtype=torch.int64))
    b = (torch.ones(3, 4, 2), torch.ones(4, 2, dtype=torch.int64))
    x, y = pad_collate([a, b])
    assert x.shape == (2, 3, 4, 3) and y.shape == (2, 4, 3)
    assert x[0, :, 2:].abs().sum() == 0 and (y[0, 2:] == 255).all() and (y[1, :, 2] == 255).all()
    assert (y[0, :2] == 0).all() and (y[1, :, :2] == 1).all()
