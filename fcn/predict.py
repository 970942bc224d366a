"""`fcn predict`: images in, palette PNG label maps and colour overlays out."""

import os

import numpy as np
import torch
from PIL import Image

from .data import Normalize, read_image, write_label
from .viz import overlay

__all__ = ["collect_images", "output_paths", "predict_files", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def collect_images(inputs):
    """Image files named in `inputs` (files, or folders: their image files, sorted)."""
    files = []
    for p in inputs:
        p = os.fspath(p)
        if os.path.isdir(p):
            found = sorted(
                os.path.join(p, f)
                for f in os.listdir(p)
                if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(p, f))
            )
            if not found:
                raise FileNotFoundError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in {p}")
            files += found
        elif os.path.isfile(p):
            files.append(p)
        else:
            raise FileNotFoundError(f"input not found: {p}")
    if not files:
        raise ValueError("no input images given")
    return files


def output_paths(files, out_dir):
    """``{image: (label_png, overlay_png)}`` in `out_dir`, named after each image's stem;
    two inputs with the same stem are an error."""
    seen, out = {}, {}
    for f in files:
        stem = os.path.splitext(os.path.basename(f))[0]
        if stem in seen:
            raise ValueError(
                f"two inputs would write the same outputs ({stem}.png): {seen[stem]} and {f}"
            )
        seen[stem] = f
        out[f] = (
            os.path.join(out_dir, f"{stem}.png"),
            os.path.join(out_dir, f"{stem}_overlay.png"),
        )
    return out


@torch.no_grad()
def predict_files(
    model,
    inputs,
    out_dir,
    norm="torchvision",
    overwrite=False,
    alpha=0.5,
    device="cpu",
    progress=False,
):
    """Segment every image in `inputs`; write ``<stem>.png`` (palette PNG of class
    indices) and ``<stem>_overlay.png`` to `out_dir`. Refuses (FileExistsError, before
    writing anything) when an output exists, unless `overwrite`. Returns the paths written."""
    files = collect_images(inputs)
    paths = output_paths(files, out_dir)
    if not overwrite:
        existing = [p for pair in paths.values() for p in pair if os.path.exists(p)]
        if existing:
            raise FileExistsError(
                f"{len(existing)} output file(s) exist already, e.g. {existing[0]}; "
                "pass --overwrite to replace them"
            )
    os.makedirs(out_dir, exist_ok=True)
    normalize = Normalize(norm)
    model.eval()
    written = []
    it = files
    if progress:
        from tqdm import tqdm

        it = tqdm(files, desc="predict", leave=False)
    for f in it:
        img = read_image(f)
        x = normalize(img)[None].to(device)
        pred = model(x).argmax(1)[0].cpu().numpy().astype(np.uint8)
        lab_path, ov_path = paths[f]
        write_label(lab_path, pred)
        Image.fromarray(overlay(img, pred, alpha)).save(ov_path)
        written += [lab_path, ov_path]
    return written
