"""Checkpoint I/O: atomic file writes (a crash leaves the old file or the new one,
never a torn one), training checkpoints, and models built from checkpoints."""

import io
import os

import torch

__all__ = [
    "CHECKPOINT_FORMAT",
    "atomic_write_bytes",
    "atomic_write_text",
    "save_checkpoint",
    "load_training_checkpoint",
    "build_from_checkpoint",
]

CHECKPOINT_FORMAT = "fcn-kernels-checkpoint-1"


def atomic_write_bytes(path, data: bytes):
    """Write `data` to `path` so that a crash leaves either the old or the new file:
    write a temporary file in the same folder, fsync, then os.replace."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = os.path.join(d, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_checkpoint(path, obj):
    """torch.save(obj) to `path` atomically (the previous file survives any crash)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def atomic_write_text(path, text):
    """`text` (UTF-8) to `path` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def load_training_checkpoint(path):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"cannot read checkpoint {path}: {e}") from e
    if not isinstance(ck, dict):
        raise ValueError(f"{path} is not a checkpoint (got {type(ck).__name__})")
    return ck


def build_from_checkpoint(
    path_or_ck, arch=None, backbone=None, num_classes=None, upsample=None, device="cpu"
):
    """Model from a checkpoint of `fcn train` (architecture read from it) or of the
    classic port / a bare state_dict (give arch, backbone, num_classes). Returns
    ``(model, checkpoint_dict)``."""
    from ..models import build_model, load_checkpoint

    ck = (
        load_training_checkpoint(path_or_ck)
        if isinstance(path_or_ck, (str, os.PathLike))
        else path_or_ck
    )
    cfg = ck.get("config") or {}
    arch = arch or ck.get("arch") or None
    backbone = backbone or cfg.get("backbone")
    num_classes = num_classes or ck.get("num_classes")
    if not (arch and backbone and num_classes):
        raise ValueError(
            "the checkpoint does not say which model it holds; give arch, backbone "
            "and num_classes (--arch, --backbone, --num-classes)"
        )
    model = build_model(
        arch,
        backbone=backbone,
        num_classes=int(num_classes),
        upsample=upsample or cfg.get("upsample", "fused"),
    )
    load_checkpoint(model, ck)
    return model.to(device), ck
