"""`fcn eval`: metrics of a checkpoint on a data set."""

import json
import math
import os

from . import metrics as M
from .data import build_dataset
from .training import atomic_write_text, build_from_checkpoint, evaluate, resolve_device

__all__ = ["evaluate_checkpoint", "write_scores_json"]


def _data_args(ck, data, split, size, num_images, data_seed, norm, num_classes):
    cfg = ck.get("config") or {}
    same_data = data is None or data == cfg.get("data", "synthetic")
    data = data or cfg.get("data", "synthetic")
    if num_images is None and same_data and data == "synthetic":
        num_images = {
            cfg.get("val_split"): cfg.get("num_val"),
            cfg.get("train_split"): cfg.get("num_train"),
        }.get(split)
    return dict(
        data=data,
        norm=norm or cfg.get("norm", "torchvision"),
        size=size or cfg.get("size", 64),
        num_images=num_images,
        seed=cfg.get("data_seed", 0) if data_seed is None else data_seed,
        num_classes=num_classes or ck.get("num_classes") or 21,
    )


def evaluate_checkpoint(
    checkpoint,
    data=None,
    split="val",
    size=None,
    num_images=None,
    data_seed=None,
    norm=None,
    batch_size=8,
    device="auto",
    upsample=None,
    arch=None,
    backbone=None,
    num_classes=None,
    progress=False,
):
    """Scores (see :func:`fcn.metrics.scores`) of `checkpoint` on `data` (default: the
    data set it was trained on) and `split`. Returns ``(scores, class_names)``."""
    dev = resolve_device(device)
    model, ck = build_from_checkpoint(checkpoint, arch, backbone, num_classes, upsample, dev)
    kw = _data_args(ck, data, split, size, num_images, data_seed, norm, num_classes)
    ds = build_dataset(split=split, **kw)
    if ds.num_classes != model.num_classes:
        raise ValueError(
            f"the data set has {ds.num_classes} classes but the model {model.num_classes}"
        )
    hist = evaluate(model, ds, dev, batch_size, progress=progress)
    names = ck.get("class_names") or list(ds.class_names)
    return M.scores(hist), names, len(ds)


def write_scores_json(path, s):
    out = M.jsonable_scores(s)
    out["iu"] = [None if math.isnan(v) else v for v in out["iu"]]
    atomic_write_text(path, json.dumps(out, indent=1))
    return os.path.abspath(path)
