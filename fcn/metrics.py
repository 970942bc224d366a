"""Segmentation metrics from one confusion matrix (FCN paper, section 5).

    hist = confusion_matrix(label_true, label_pred, num_classes)   # rows = truth
    s = scores(hist)   # {"acc", "acc_cls", "mean_iu", "fwavacc", "iu"}

With n_ij the number of pixels of class i predicted as class j and t_i = sum_j n_ij:

* pixel accuracy  ``acc      = sum_i n_ii / sum_i t_i``
* mean accuracy   ``acc_cls  = (1/n_cl) sum_i n_ii / t_i``
* mean IoU        ``mean_iu  = (1/n_cl) sum_i n_ii / (t_i + sum_j n_ji - n_ii)``
* f.w. IoU        ``fwavacc  = (sum_k t_k)^-1 sum_i t_i n_ii / (t_i + sum_j n_ji - n_ii)``

Pixels labelled ``ignore_index`` (255, VOC's "void") are left out. Means run over the
classes for which they are defined: a class absent from both truth and prediction has
IoU NaN and is skipped by ``mean_iu``; a class absent from the truth is skipped by
``acc_cls``.
"""

import math

import numpy as np

__all__ = [
    "confusion_matrix",
    "scores",
    "format_scores",
    "jsonable_scores",
    "SUMMARY_METRICS",
    "METRICS",
]

# The summary metrics of `scores`, in table order; METRICS adds the per-class IoU.
SUMMARY_METRICS = ("acc", "acc_cls", "mean_iu", "fwavacc")
METRICS = SUMMARY_METRICS + ("iu",)


def _to_numpy(a, name):
    if hasattr(a, "detach"):  # torch.Tensor
        a = a.detach().cpu().numpy()
    a = np.asarray(a)
    if a.dtype.kind not in "iub":
        if a.dtype.kind == "f" and a.size and not np.all(np.isfinite(a) & (a == np.round(a))):
            raise ValueError(f"{name} must hold integer class labels, got non-integer values")
        if a.dtype.kind not in "f":
            raise TypeError(f"{name} must hold integer class labels, got dtype {a.dtype}")
    return a.astype(np.int64, copy=False)


def confusion_matrix(label_true, label_pred, num_classes, ignore_index=255):
    """``num_classes x num_classes`` int64 matrix, rows = truth, columns = prediction.

    `label_true` and `label_pred`: numpy arrays or tensors of the same shape (any shape),
    integer labels. Pixels whose truth is `ignore_index` (or, generally, outside
    ``[0, num_classes)``) are not counted; a prediction outside ``[0, num_classes)`` at
    a counted pixel raises ``ValueError``."""
    if not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    t = _to_numpy(label_true, "label_true")
    p = _to_numpy(label_pred, "label_pred")
    if t.shape != p.shape:
        raise ValueError(f"label_true and label_pred differ in shape: {t.shape} vs {p.shape}")
    t, p = t.ravel(), p.ravel()
    valid = (t >= 0) & (t < num_classes)
    if ignore_index is not None:
        valid &= t != ignore_index
    t, p = t[valid], p[valid]
    if p.size and (p.min() < 0 or p.max() >= num_classes):
        bad = np.unique(p[(p < 0) | (p >= num_classes)])[:10]
        raise ValueError(f"label_pred has values outside [0, {num_classes}): {bad.tolist()}")
    hist = np.bincount(num_classes * t + p, minlength=num_classes**2)
    return hist.reshape(num_classes, num_classes).astype(np.int64)


def scores(hist):
    """Metrics of a confusion matrix (rows = truth): dict with floats ``acc``,
    ``acc_cls``, ``mean_iu``, ``fwavacc`` and ``iu`` (numpy array, one IoU per class,
    NaN for a class absent from both truth and prediction). With no counted pixel at
    all every metric is NaN."""
    hist = np.asarray(hist, dtype=np.float64)
    if hist.ndim != 2 or hist.shape[0] != hist.shape[1]:
        raise ValueError(f"hist must be a square matrix, got shape {hist.shape}")
    tp = np.diag(hist)
    truth = hist.sum(axis=1)
    pred = hist.sum(axis=0)
    total = hist.sum()
    union = truth + pred - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iu = np.where(union > 0, tp / np.where(union > 0, union, 1), np.nan)
        acc_per_class = np.where(truth > 0, tp / np.where(truth > 0, truth, 1), np.nan)
    if total == 0:
        nan = float("nan")
        return dict.fromkeys(SUMMARY_METRICS, nan) | {"iu": iu}
    freq = truth / total
    present = truth > 0
    return {
        "acc": float(tp.sum() / total),
        "acc_cls": float(np.nanmean(acc_per_class)) if present.any() else float("nan"),
        "mean_iu": float(np.nanmean(iu)) if np.isfinite(iu).any() else float("nan"),
        "fwavacc": float((freq[present] * iu[present]).sum()),
        "iu": iu,
    }


def format_scores(s, class_names=None, title=None):
    """A plain-text table of `scores(...)`: the four summary metrics, then per-class IoU."""
    lines = []
    if title:
        lines.append(title)
    lines.append(f"{'pixel acc':>10s} {'mean acc':>10s} {'mean IoU':>10s} {'fw IoU':>10s}")
    lines.append(" ".join(f"{100 * s[k]:9.2f}%" for k in SUMMARY_METRICS))
    iu = s.get("iu")
    if iu is not None and len(iu):
        names = list(class_names) if class_names else [str(i) for i in range(len(iu))]
        width = max(len("class"), *(len(n) for n in names))
        lines.append("")
        lines.append(f"{'class':{width}s}  IoU")
        for name, v in zip(names, iu):
            lines.append(
                f"{name:{width}s}  " + ("    n/a" if math.isnan(v) else f"{100 * v:6.2f}%")
            )
    return "\n".join(lines)


def jsonable_scores(s):
    """`scores(...)` as plain floats and a list (for JSON)."""
    out = {k: float(s[k]) for k in SUMMARY_METRICS}
    out["iu"] = [float(v) for v in s["iu"]]
    return out
