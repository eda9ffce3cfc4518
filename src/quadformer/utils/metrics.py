"""The one definition of each score the project reports. **Unit: percent** (0-100) everywhere.

* :func:`accuracy_topk` / :func:`topk_correct`: top-k accuracy (k clipped to the number of
  classes, as timm's ``accuracy``; tied logits rank by class index, so top-1 = first argmax).
* :func:`mean_per_class_accuracy`: mean recall over the classes present in the targets
  (``sklearn.metrics.balanced_accuracy_score``).
* :func:`mean_average_precision`: macro non-interpolated mAP, per class
  ``sklearn.metrics.average_precision_score`` (tied scores are one threshold). A class without a
  positive in ``targets`` has no AP: it is *dropped and listed*, never counted as 0 or 1.
* :func:`map_voc11`: VOC 11-point interpolated AP on sklearn's precision/recall curve
  (Everingham et al., "The PASCAL VOC Challenge", IJCV 2010), classes dropped as for mAP.
* :func:`threshold_metrics`: CP/CR/CF1 and OP/OR/OF1 of multi-label predictions at a threshold
  (``sklearn.metrics.precision_recall_fscore_support``, macro and micro; undefined counts 0),
  as in Chen et al., "Multi-Label Image Recognition with Graph Convolutional Networks", CVPR 2019.

Arguments may be numpy arrays or torch tensors; ``scores`` come first, then ``targets``.
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np

__all__ = [
    "accuracy_topk",
    "topk_correct",
    "mean_per_class_accuracy",
    "average_precision_per_class",
    "mean_average_precision",
    "voc11_per_class",
    "map_voc11",
    "threshold_metrics",
]


def _np(a: Any, dtype: Any = np.float64) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=dtype)


def topk_correct(logits: Any, targets: Any, ks: Sequence[int] = (1, 5)) -> dict[int, int]:
    """Number of rows whose target is among the ``k`` highest logits, per ``k`` (clipped to the
    number of classes). Sum these over batches to get an exact accuracy of a whole set."""
    import torch

    logits = torch.as_tensor(logits)
    targets = torch.as_tensor(targets).reshape(-1).long().to(logits.device)
    if logits.ndim != 2 or logits.shape[0] != targets.shape[0]:
        raise ValueError(f"accuracy needs [N, C] logits and [N] targets, got {tuple(logits.shape)} "
                         f"and {tuple(targets.shape)}")
    maxk = min(max(ks), logits.shape[1])
    # a stable sort: tied logits rank by class index, so top-1 is argmax's first maximum
    pred = torch.argsort(logits, dim=1, descending=True, stable=True)[:, :maxk]
    hit = pred == targets[:, None]
    return {k: int(hit[:, :min(k, maxk)].any(dim=1).sum().item()) for k in ks}


def accuracy_topk(logits: Any, targets: Any, ks: Sequence[int] = (1, 5)) -> dict[int, float]:
    """Top-k accuracy in percent for each ``k`` in ``ks`` (``nan`` for an empty set)."""
    n = int(np.prod(np.shape(targets)))
    counts = topk_correct(logits, targets, ks)
    return {k: (100.0 * c / n if n else float("nan")) for k, c in counts.items()}


def mean_per_class_accuracy(scores: Any, targets: Any) -> float:
    """Mean recall (percent) over the classes present in ``targets``; ``scores`` are ``[N, C]``
    (argmax taken) or ``[N]`` predicted labels. ``nan`` for an empty set."""
    from sklearn.metrics import balanced_accuracy_score

    y = _np(targets, np.int64).reshape(-1)
    s = _np(scores)
    pred = s.argmax(axis=1) if s.ndim == 2 else s.reshape(-1).astype(np.int64)
    if len(y) == 0:
        return float("nan")
    with warnings.catch_warnings():  # "y_pred contains classes not in y_true": those do not count
        warnings.simplefilter("ignore")
        return 100.0 * float(balanced_accuracy_score(y, pred))


def _check_multilabel(scores: Any, targets: Any) -> tuple[np.ndarray, np.ndarray]:
    s, y = _np(scores), _np(targets)
    if s.ndim != 2 or s.shape != y.shape:
        raise ValueError(f"multi-label metrics need [N, C] scores and targets of the same shape, got "
                         f"{s.shape} and {y.shape}")
    return s, (y > 0.5).astype(np.int64)


def average_precision_per_class(scores: Any, targets: Any) -> np.ndarray:
    """AP of every class in percent (sklearn ``average_precision_score``); ``nan`` for a class
    without a positive."""
    from sklearn.metrics import average_precision_score

    s, y = _check_multilabel(scores, targets)
    out = np.full(s.shape[1], np.nan)
    for c in range(s.shape[1]):
        if y[:, c].any():
            out[c] = 100.0 * float(average_precision_score(y[:, c], s[:, c]))
    return out


def _mean_kept(per_class: np.ndarray) -> tuple[float, list[int]]:
    dropped = [int(c) for c in np.flatnonzero(np.isnan(per_class))]
    kept = per_class[~np.isnan(per_class)]
    return (float(np.mean(kept)) if kept.size else float("nan")), dropped


def mean_average_precision(scores: Any, targets: Any) -> tuple[float, list[int]]:
    """``(mAP in percent, indices of the classes dropped for having no positive)``.

    Equals ``100 * average_precision_score(targets, scores, average="macro")`` when every class
    has a positive; ``nan`` when none has."""
    return _mean_kept(average_precision_per_class(scores, targets))


def _voc11_one(y: np.ndarray, s: np.ndarray) -> float:
    from sklearn.metrics import precision_recall_curve

    precision, recall, _ = precision_recall_curve(y, s)
    precision, recall = precision[:-1], recall[:-1]  # sklearn appends (P=1, R=0): not a threshold
    total = 0.0
    for t in np.linspace(0.0, 1.0, 11):
        ok = recall >= t - 1e-12
        total += precision[ok].max() if ok.any() else 0.0
    return 100.0 * total / 11.0


def voc11_per_class(scores: Any, targets: Any) -> np.ndarray:
    """VOC 11-point AP of every class in percent; ``nan`` for a class without a positive."""
    s, y = _check_multilabel(scores, targets)
    out = np.full(s.shape[1], np.nan)
    for c in range(s.shape[1]):
        if y[:, c].any():
            out[c] = _voc11_one(y[:, c], s[:, c])
    return out


def map_voc11(scores: Any, targets: Any) -> tuple[float, list[int]]:
    """``(macro VOC 11-point mAP in percent, dropped class indices)``."""
    return _mean_kept(voc11_per_class(scores, targets))


def threshold_metrics(probs: Any, targets: Any, threshold: float = 0.5) -> dict[str, float]:
    """CP, CR, CF1 (per class, averaged; CF1 from the two averages) and OP, OR, OF1 (pooled over
    all labels) of ``probs >= threshold``, in percent. An undefined precision or recall (nothing
    predicted / no positive) counts 0."""
    from sklearn.metrics import precision_recall_fscore_support

    p, y = _check_multilabel(probs, targets)
    pred = (p >= threshold).astype(np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if y.shape[1] == 1:  # sklearn reads one column as a binary task: macro = micro = binary
            cp, cr, _, _ = precision_recall_fscore_support(y[:, 0], pred[:, 0], average="binary",
                                                           zero_division=0)
            op, or_ = cp, cr
        else:
            cp, cr, _, _ = precision_recall_fscore_support(y, pred, average="macro", zero_division=0)
            op, or_, _, _ = precision_recall_fscore_support(y, pred, average="micro", zero_division=0)

    def f1(a: float, b: float) -> float:
        return 2 * a * b / (a + b) if a + b > 0 else 0.0

    cp, cr, op, or_ = (100.0 * float(v) for v in (cp, cr, op, or_))
    return {"CP": cp, "CR": cr, "CF1": f1(cp, cr), "OP": op, "OR": or_, "OF1": f1(op, or_)}
