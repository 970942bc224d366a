"""Data sets for FCN: an embedded procedural set and a PASCAL VOC-layout loader.

Every data set yields ``(image, label)``: ``image`` a float32 ``3 x H x W`` tensor,
normalised (see :class:`Normalize`), ``label`` an int64 ``H x W`` tensor of class
indices with 255 on "void" pixels (ignored by the loss and the metrics), and offers
``raw(i)`` (uint8 RGB ``H x W x 3`` array, uint8 label array) for pictures.

* :class:`SyntheticSegmentation` — generated on the fly from ``(seed, split, index)``:
  no download, any number of images, any size, identical on every machine.
* :class:`VOCSegmentation` — a folder in PASCAL VOC layout::

      ROOT/JPEGImages/<id>.jpg
      ROOT/SegmentationClass/<id>.png        palette ("P") or greyscale ("L") PNG of class indices
      ROOT/ImageSets/Segmentation/<split>.txt   one <id> per line

Input normalisation (``norm=``):

* ``"torchvision"`` (default): RGB scaled to [0, 1], minus ImageNet mean
  (0.485, 0.456, 0.406), divided by std (0.229, 0.224, 0.225) — what torchvision-format
  backbone weights (``--pretrained``) expect, and well scaled for training from scratch.
* ``"caffe"``: BGR channel order, 0-255 scale, minus the classic FCN/VGG mean
  (B 104.00698793, G 116.66876762, R 122.67891434) — what checkpoints of the original
  Caffe models and of the classic PyTorch port expect.
"""

import os

import numpy as np
import torch

__all__ = [
    "Normalize",
    "SyntheticSegmentation",
    "VOCSegmentation",
    "VOC_CLASSES",
    "SYNTHETIC_CLASSES",
    "voc_palette",
    "colorize",
    "read_label",
    "write_label",
    "pad_collate",
    "build_dataset",
    "IGNORE_INDEX",
    "DataError",
]

IGNORE_INDEX = 255

VOC_CLASSES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)

SYNTHETIC_CLASSES = ("background", "ring", "line", "dot", "cross")


class DataError(ValueError):
    """A data set file or folder exists but its content is not usable."""


def voc_palette(n=256):
    """The PASCAL VOC colour map: ``n x 3`` uint8 (bit-interleaved class index;
    0 black, 1 (128, 0, 0), ..., 255 (224, 224, 192))."""
    pal = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal


def colorize(label):
    """``H x W`` class indices -> ``H x W x 3`` uint8 RGB in the VOC palette."""
    return voc_palette()[np.asarray(label).astype(np.uint8)]


class Normalize:
    """uint8 RGB ``H x W x 3`` array <-> normalised float ``3 x H x W`` tensor."""

    MODES = ("torchvision", "caffe")

    def __init__(self, mode="torchvision"):
        if mode not in self.MODES:
            raise ValueError(f"norm must be one of {self.MODES}, got {mode!r}")
        self.mode = mode
        if mode == "torchvision":
            self.mean = np.array([0.485, 0.456, 0.406]) * 255.0
            self.std = np.array([0.229, 0.224, 0.225]) * 255.0
        else:  # channel order BGR after the flip below
            self.mean = np.array([104.00698793, 116.66876762, 122.67891434])
            self.std = np.ones(3)

    def __call__(self, img):
        img = np.asarray(img)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f"expected an H x W x 3 uint8 image, got {img.shape} {img.dtype}")
        x = img.astype(np.float32)
        if self.mode == "caffe":
            x = x[:, :, ::-1]
        x = (x - self.mean.astype(np.float32)) / self.std.astype(np.float32)
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))

    def invert(self, x):
        """Normalised ``3 x H x W`` tensor -> uint8 RGB ``H x W x 3`` array."""
        a = x.detach().cpu().numpy().transpose(1, 2, 0).astype(np.float64)
        a = a * self.std + self.mean
        if self.mode == "caffe":
            a = a[:, :, ::-1]
        return np.clip(np.round(a), 0, 255).astype(np.uint8)


def _size2(size):
    if isinstance(size, (int, np.integer)):
        size = (int(size), int(size))
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) < 8:
        raise ValueError(f"size must be an int or (H, W) pair, each at least 8, got {size}")
    return size


# --------------------------------------------------------------------------------------
# Embedded procedural data set
# --------------------------------------------------------------------------------------
_SPLITS = {"train": 0, "val": 1, "test": 2}
# base colours (RGB) per object class; each object jitters its colour
_BASE_COLOURS = {1: (215, 60, 50), 2: (40, 90, 225), 3: (235, 200, 40), 4: (50, 180, 80)}


def _seg_dist(yy, xx, y0, x0, y1, x1):
    """Distance of every pixel centre to the segment (y0, x0)-(y1, x1)."""
    dy, dx = y1 - y0, x1 - x0
    n2 = dy * dy + dx * dx
    t = np.clip(((yy - y0) * dy + (xx - x0) * dx) / max(n2, 1e-9), 0.0, 1.0)
    return np.hypot(yy - (y0 + t * dy), xx - (x0 + t * dx))


def render_synthetic(rng, size):
    """One image and label of the procedural set (see :class:`SyntheticSegmentation`)."""
    h, w = size
    s = min(h, w) / 64.0  # object sizes scale with the image
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
    label = np.zeros((h, w), np.uint8)
    z = np.full((h, w), -1, np.int32)
    colour = np.zeros((h, w, 3), np.float64)
    # background: a smooth random gradient between two dull colours, plus blotches
    c0, c1 = rng.uniform(40, 160, 3), rng.uniform(40, 160, 3)
    ang = rng.uniform(0, 2 * np.pi)
    t = ((yy / h - 0.5) * np.sin(ang) + (xx / w - 0.5) * np.cos(ang)) + 0.5
    colour[:] = c0 + np.clip(t, 0, 1)[..., None] * (c1 - c0)
    for _ in range(rng.integers(2, 5)):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(6, 20) * s
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        colour += blob[..., None] * rng.uniform(-35, 35, 3)

    objects = []  # (class, mask)
    for _ in range(rng.integers(1, 3)):  # rings: thin annulus around a hole
        r_out = rng.uniform(7, 20) * s
        r_in = r_out - rng.uniform(1.8, 3.5) * s
        cy, cx = rng.uniform(0.15 * h, 0.85 * h), rng.uniform(0.15 * w, 0.85 * w)
        d = np.hypot(yy - cy, xx - cx)
        objects.append((1, (d <= r_out) & (d >= r_in)))
    for _ in range(rng.integers(1, 4)):  # thin lines, 1-2.5 px wide, sometimes bent
        width = rng.uniform(1.0, 2.5) * s
        pts = [(rng.uniform(0, h), rng.uniform(0, w))]
        for _ in range(rng.integers(1, 3)):
            length, a = rng.uniform(14, 40) * s, rng.uniform(0, 2 * np.pi)
            pts.append((pts[-1][0] + length * np.sin(a), pts[-1][1] + length * np.cos(a)))
        m = np.zeros((h, w), bool)
        for (y0, x0), (y1, x1) in zip(pts[:-1], pts[1:]):
            m |= _seg_dist(yy, xx, y0, x0, y1, x1) <= width / 2
        objects.append((2, m))
    for _ in range(rng.integers(0, 3)):  # crosses: two thin bars
        cy, cx = rng.uniform(0.1 * h, 0.9 * h), rng.uniform(0.1 * w, 0.9 * w)
        arm, half = rng.uniform(5, 13) * s, rng.uniform(1.0, 2.0) * s
        m = ((np.abs(yy - cy) <= arm) & (np.abs(xx - cx) <= half)) | (
            (np.abs(xx - cx) <= arm) & (np.abs(yy - cy) <= half)
        )
        objects.append((4, m))
    for _ in range(rng.integers(2, 7)):  # small dots
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(1.2, 2.6) * s
        objects.append((3, np.hypot(yy - cy, xx - cx) <= r))
    order = rng.permutation(len(objects))
    for k, i in enumerate(order):
        cls, m = objects[i]
        if not m.any():
            continue
        label[m] = cls
        z[m] = k
        base = np.array(_BASE_COLOURS[cls], np.float64)
        colour[m] = np.clip(base + rng.uniform(-30, 30, 3), 0, 255)

    # VOC-style void border: the 1-px band, on the lower object's (or background's) side,
    # of every boundary where a higher object meets something else. Those pixels are
    # rendered as a blend of both sides, so their label is genuinely ambiguous.
    zp = np.pad(z, 1, constant_values=-2)
    lp = np.pad(label, 1, mode="edge")
    border = np.zeros((h, w), bool)
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        zq = zp[dy : dy + h, dx : dx + w]
        lq = lp[dy : dy + h, dx : dx + w]
        border |= (zq > z) & (lq != label)
    cp = np.pad(colour, ((1, 1), (1, 1), (0, 0)), mode="edge")
    blur = sum(cp[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)) / 9.0
    colour[border] = blur[border]
    colour += rng.normal(0, 8, colour.shape)
    label[border] = IGNORE_INDEX
    return np.clip(np.round(colour), 0, 255).astype(np.uint8), label


class SyntheticSegmentation(torch.utils.data.Dataset):
    """Embedded procedural segmentation set: 5 classes — background, ``ring`` (thin
    annulus with a hole), ``line`` (1-2.5 px wide strokes, sometimes bent), ``dot``
    (objects a few pixels across), ``cross`` (two thin bars) — on a textured
    background, with pixel noise and a 1-px void (255) band along object borders as in
    VOC. Fine structure dominates, so the finer skips of FCN-16s/8s pay off.

    Image ``i`` of a split is a pure function of ``(seed, split, i, size)``."""

    class_names = SYNTHETIC_CLASSES
    num_classes = len(SYNTHETIC_CLASSES)

    def __init__(
        self, num_images=256, size=64, seed=0, split="train", norm="torchvision", cache=True
    ):
        if not isinstance(num_images, (int, np.integer)) or num_images < 1:
            raise ValueError(f"num_images must be a positive int, got {num_images!r}")
        if split not in _SPLITS:
            raise ValueError(f"split must be one of {tuple(_SPLITS)}, got {split!r}")
        self.num_images = int(num_images)
        self.size = _size2(size)
        self.seed = int(seed)
        self.split = split
        self.normalize = Normalize(norm)
        self._cache = {} if cache else None

    def __len__(self):
        return self.num_images

    def raw(self, i):
        if not -self.num_images <= i < self.num_images:
            raise IndexError(f"index {i} out of range for {self.num_images} images")
        i %= self.num_images
        if self._cache is not None and i in self._cache:
            return self._cache[i]
        rng = np.random.default_rng([self.seed, _SPLITS[self.split], i])
        item = render_synthetic(rng, self.size)
        if self._cache is not None:
            for a in item:  # a caller's in-place write must not change later epochs
                a.setflags(write=False)
            self._cache[i] = item
        return item

    def name(self, i):
        return f"{self.split}_{i:05d}"

    def __getitem__(self, i):
        img, label = self.raw(i)
        return self.normalize(img), torch.from_numpy(label.astype(np.int64))


# --------------------------------------------------------------------------------------
# PASCAL VOC layout
# --------------------------------------------------------------------------------------
def read_image(path):
    """An image file as uint8 RGB ``H x W x 3``; clear errors for missing/unreadable."""
    from PIL import Image, UnidentifiedImageError

    if not os.path.isfile(path):
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB")).copy()
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DataError(f"cannot read image {path}: {e}") from e


def read_label(path, num_classes=None):
    """A VOC label PNG as uint8 ``H x W`` class indices. Palette ("P") and greyscale
    ("L") PNGs hold the indices directly; an RGB PNG is mapped back through the VOC
    palette. Values >= `num_classes` other than 255 raise :class:`DataError`."""
    from PIL import Image, UnidentifiedImageError

    if not os.path.isfile(path):
        raise FileNotFoundError(f"label not found: {path}")
    try:
        with Image.open(path) as im:
            mode = im.mode
            if mode in ("P", "L"):
                lab = np.asarray(im).copy()
            elif mode in ("RGB", "RGBA"):
                lab = _rgb_to_index(np.asarray(im.convert("RGB")), path)
            else:
                raise DataError(
                    f"label {path}: unsupported PNG mode {mode!r} (expected a "
                    "palette 'P' or greyscale 'L' image of class indices)"
                )
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DataError(f"cannot read label {path}: {e}") from e
    lab = lab.astype(np.uint8)
    if num_classes is not None:
        bad = np.unique(lab[(lab >= num_classes) & (lab != IGNORE_INDEX)])
        if bad.size:
            raise DataError(
                f"label {path} has values {bad[:10].tolist()} outside "
                f"[0, {num_classes}) (255 = void is allowed)"
            )
    return lab


def _rgb_to_index(rgb, path):
    pal = voc_palette().astype(np.int64)
    key = (pal[:, 0] << 16) | (pal[:, 1] << 8) | pal[:, 2]
    lut = {int(k): i for i, k in enumerate(key)}
    px = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    uniq, inv = np.unique(px, return_inverse=True)
    idx = []
    for u in uniq:
        if int(u) not in lut:
            raise DataError(
                f"label {path}: colour {((u >> 16) & 255, (u >> 8) & 255, u & 255)} "
                "is not in the VOC palette"
            )
        idx.append(lut[int(u)])
    return np.asarray(idx, np.uint8)[inv].reshape(px.shape)


def write_label(path, label):
    """Save ``H x W`` class indices as a VOC palette PNG."""
    from PIL import Image

    im = Image.fromarray(np.asarray(label).astype(np.uint8), mode="P")
    im.putpalette(voc_palette().ravel().tolist())
    im.save(path)


class VOCSegmentation(torch.utils.data.Dataset):
    """PASCAL VOC-layout segmentation folder (see module doc). ``root`` may be the
    folder holding ``JPEGImages/`` etc., or a ``VOCdevkit`` folder with exactly one
    ``VOC*`` subfolder. Missing folders, list files and listed files are reported
    when the data set is built; unreadable images and out-of-range labels when an
    item is loaded (or all at once with :meth:`check`)."""

    class_names = VOC_CLASSES

    def __init__(self, root, split="train", norm="torchvision", num_classes=21, class_names=None):
        root = os.fspath(root)
        if not os.path.isdir(root):
            raise FileNotFoundError(f"data folder not found: {root}")
        if not os.path.isdir(os.path.join(root, "JPEGImages")):
            subs = sorted(
                d
                for d in os.listdir(root)
                if d.startswith("VOC") and os.path.isdir(os.path.join(root, d, "JPEGImages"))
            )
            if len(subs) == 1:
                root = os.path.join(root, subs[0])
        for sub in ("JPEGImages", "SegmentationClass", os.path.join("ImageSets", "Segmentation")):
            if not os.path.isdir(os.path.join(root, sub)):
                raise FileNotFoundError(
                    f"{root} is not a VOC-layout folder: missing {sub}/ (expected JPEGImages/, "
                    "SegmentationClass/, ImageSets/Segmentation/<split>.txt)"
                )
        list_file = os.path.join(root, "ImageSets", "Segmentation", f"{split}.txt")
        if not os.path.isfile(list_file):
            have = sorted(
                f[:-4]
                for f in os.listdir(os.path.join(root, "ImageSets", "Segmentation"))
                if f.endswith(".txt")
            )
            raise FileNotFoundError(
                f"split list not found: {list_file} (available splits: {', '.join(have) or 'none'})"
            )
        ids = []
        with open(list_file, encoding="utf-8", errors="replace") as f:
            for n, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                if len(line.split()) != 1 or "/" in line or "\\" in line:
                    raise DataError(
                        f"{list_file}:{n}: expected one image id per line, got {line!r}"
                    )
                ids.append(line)
        if not ids:
            raise DataError(f"split list {list_file} lists no images")
        if num_classes < 1 or num_classes > 255:
            raise ValueError(f"num_classes must be in [1, 255], got {num_classes}")
        self.root, self.split, self.ids = root, split, ids
        self.num_classes = int(num_classes)
        if class_names is not None:
            self.class_names = tuple(class_names)
        elif num_classes != len(VOC_CLASSES):
            self.class_names = tuple(str(i) for i in range(num_classes))
        self.normalize = Normalize(norm)
        self.images, self.labels = [], []
        for i in ids:
            img = os.path.join(root, "JPEGImages", i + ".jpg")
            lab = os.path.join(root, "SegmentationClass", i + ".png")
            for p, what in ((img, "image"), (lab, "label")):
                if not os.path.isfile(p):
                    raise FileNotFoundError(
                        f"{what} of {i!r} (listed in {list_file}) not found: {p}"
                    )
            self.images.append(img)
            self.labels.append(lab)

    def __len__(self):
        return len(self.ids)

    def name(self, i):
        return self.ids[i]

    def raw(self, i):
        img = read_image(self.images[i])
        lab = read_label(self.labels[i], self.num_classes)
        if img.shape[:2] != lab.shape:
            raise DataError(
                f"image {self.images[i]} is {img.shape[1]}x{img.shape[0]} but its label "
                f"{self.labels[i]} is {lab.shape[1]}x{lab.shape[0]}"
            )
        return img, lab

    def __getitem__(self, i):
        img, lab = self.raw(i)
        return self.normalize(img), torch.from_numpy(lab.astype(np.int64))

    def check(self):
        """Load every item once (raises on the first bad file)."""
        for i in range(len(self)):
            self.raw(i)
        return self


def pad_collate(batch):
    """Stack ``(image, label)`` pairs, padding smaller ones at the bottom/right to the
    largest size in the batch (image 0 = the mean after normalisation, label 255)."""
    h = max(img.shape[1] for img, _ in batch)
    w = max(img.shape[2] for img, _ in batch)
    imgs = torch.zeros(len(batch), 3, h, w, dtype=batch[0][0].dtype)
    labels = torch.full((len(batch), h, w), IGNORE_INDEX, dtype=torch.int64)
    for k, (img, lab) in enumerate(batch):
        imgs[k, :, : img.shape[1], : img.shape[2]] = img
        labels[k, : lab.shape[0], : lab.shape[1]] = lab
    return imgs, labels


def build_dataset(
    data="synthetic",
    split="train",
    norm="torchvision",
    size=64,
    num_images=None,
    seed=0,
    num_classes=21,
):
    """``data="synthetic"``: the procedural set (`size`, `num_images`, `seed`; default
    256 train / 64 val images); otherwise a VOC-layout folder."""
    if data == "synthetic":
        if num_images is None:
            num_images = 256 if split == "train" else 64
        return SyntheticSegmentation(num_images, size, seed, split, norm)
    return VOCSegmentation(data, split, norm, num_classes)
