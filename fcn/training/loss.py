"""The segmentation loss."""

import torch.nn.functional as F

from ..data import IGNORE_INDEX

__all__ = ["segmentation_loss"]


def segmentation_loss(logits, target, kind="mean"):
    """Cross entropy over labelled pixels (255 ignored): averaged over them ("mean") or
    summed per image ("sum": total / batch size, the classic per-image sum)."""
    total = F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX, reduction="sum")
    if kind == "sum":
        return total / logits.shape[0]
    n = (target != IGNORE_INDEX).sum().clamp(min=1)
    return total / n
