"""Evaluation during and after training, progress bars and the per-stage logs."""

import csv
import io
import json
import os

import torch

from .. import metrics as M
from ..data import pad_collate
from .checkpoint import atomic_write_text

__all__ = ["evaluate", "progress_bar", "write_logs", "CSV_FIELDS"]

CSV_FIELDS = ["epoch", "step", "train_loss", "lr", *M.SUMMARY_METRICS, "epoch_time_s", "img_per_s"]


@torch.no_grad()
def evaluate(model, dataset, device="cpu", batch_size=8, dist=None, amp=False, progress=False):
    """Confusion matrix of `model` on `dataset` (all ranks together under DDP; each
    rank takes every world-th image, none twice)."""
    was_training = model.training
    model.eval()
    rank, world = (dist.rank, dist.world) if dist else (0, 1)
    idx = list(range(rank, len(dataset), world))
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, idx), batch_size=batch_size, collate_fn=pad_collate
    )
    n = dataset.num_classes
    hist = torch.zeros(n, n, dtype=torch.int64)
    device = torch.device(device)
    for x, y in progress_bar(loader, progress, desc="eval"):
        x = x.to(device)
        with torch.autocast("cuda", dtype=torch.float16, enabled=amp and device.type == "cuda"):
            pred = model(x).argmax(1).cpu()
        hist += torch.from_numpy(M.confusion_matrix(y, pred, n))
    if dist is not None and dist.world > 1:
        hist = dist.all_reduce(hist.to(dist.device)).cpu()
    model.train(was_training)
    return hist.numpy()


def progress_bar(it, enabled, **kw):
    """`it` wrapped in a tqdm bar when `enabled`."""
    if not enabled:
        return it
    from tqdm import tqdm

    return tqdm(it, leave=False, dynamic_ncols=True, **kw)


def write_logs(stage_dir, history):
    """A stage's history as log.csv and log.json (atomically)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, CSV_FIELDS, extrasaction="ignore")
    w.writeheader()
    for rec in history:
        w.writerow({k: rec.get(k, "") for k in CSV_FIELDS})
    atomic_write_text(os.path.join(stage_dir, "log.csv"), buf.getvalue())
    atomic_write_text(
        os.path.join(stage_dir, "log.json"), json.dumps(history, indent=1, allow_nan=True)
    )
