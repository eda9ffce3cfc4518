"""Transfer metrics (spec §3): top-1, mean per-class accuracy, non-interpolated macro mAP,
VOC 11-point mAP and the multi-label CP/CR/CF1/OP/OR/OF1 at a threshold.

Every score is a fraction in [0, 1] (not a percentage).

* :func:`top1` and :func:`mean_per_class_accuracy` use scikit-learn (``accuracy_score``,
  ``balanced_accuracy_score`` = mean recall over the classes present in ``y_true``).
* :func:`average_precision` is written here because the definition needs classes without
  positives *dropped and listed*: AP_c = mean over the positives of class c of the precision at
  their rank. Tied scores are one threshold (every tied item shares the precision at the end of
  the tie group), exactly as ``sklearn.metrics.average_precision_score``; without ties both equal
  the rank definition.
* :func:`map_voc11`: AP_c = (1/11) Σ_{t=0,0.1,…,1} max{P : R >= t} (0 where no point reaches t),
  on the same threshold-grouped precision/recall curve.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "top1",
    "mean_per_class_accuracy",
    "average_precision",
    "mean_average_precision",
    "map_voc11",
    "threshold_metrics",
    "single_label_metrics",
    "multi_label_metrics",
    "headline_key",
]


def _labels(y: Any) -> np.ndarray:
    return np.asarray(y).reshape(-1).astype(np.int64)


def _predictions(scores_or_pred: Any) -> np.ndarray:
    a = np.asarray(scores_or_pred)
    return a.argmax(axis=1) if a.ndim == 2 else a.reshape(-1).astype(np.int64)


def top1(y_true: Any, scores_or_pred: Any) -> float:
    """Fraction of correct predictions; the second argument is ``[N, C]`` scores or ``[N]`` labels."""
    from sklearn.metrics import accuracy_score

    y = _labels(y_true)
    if len(y) == 0:
        return float("nan")
    return float(accuracy_score(y, _predictions(scores_or_pred)))


def mean_per_class_accuracy(y_true: Any, scores_or_pred: Any) -> float:
    """Mean class recall over the classes present in ``y_true`` (sklearn ``balanced_accuracy_score``)."""
    import warnings

    from sklearn.metrics import balanced_accuracy_score

    y = _labels(y_true)
    if len(y) == 0:
        return float("nan")
    with warnings.catch_warnings():  # "y_pred contains classes not in y_true": those do not count
        warnings.simplefilter("ignore")
        return float(balanced_accuracy_score(y, _predictions(scores_or_pred)))


def _pr_curve(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and the number of new positives at each distinct score threshold
    (descending); ``y`` is 0/1 with at least one positive."""
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    ends = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # last index of each tie group
    tp = np.cumsum(y)[ends]
    precision = tp / (ends + 1.0)
    recall = tp / tp[-1]
    new_pos = np.diff(np.r_[0, tp])
    return precision, recall, new_pos


def average_precision(y_true: Any, scores: Any) -> float:
    """Non-interpolated AP of one class: mean over positives of the precision at their rank
    (ties = one threshold, as scikit-learn). ``nan`` when there is no positive."""
    y = (np.asarray(y_true).reshape(-1) > 0.5).astype(np.float64)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y.sum() == 0:
        return float("nan")
    precision, _, new_pos = _pr_curve(y, s)
    return float((precision * new_pos).sum() / y.sum())


def _voc11(y_true: np.ndarray, scores: np.ndarray) -> float:
    y = (y_true > 0.5).astype(np.float64)
    if y.sum() == 0:
        return float("nan")
    precision, recall, _ = _pr_curve(y, scores.astype(np.float64))
    total = 0.0
    for t in np.linspace(0.0, 1.0, 11):
        ok = recall >= t - 1e-12
        total += precision[ok].max() if ok.any() else 0.0
    return float(total / 11.0)


def _per_class(fn, y_true: Any, scores: Any, class_names: list[str] | None) -> dict[str, Any]:
    y = np.asarray(y_true, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 2 or y.shape != s.shape:
        raise ValueError(f"multi-label metrics need [N, C] targets and scores of the same shape, got "
                         f"{y.shape} and {s.shape}")
    names = list(class_names) if class_names is not None else [str(c) for c in range(y.shape[1])]
    per_class: dict[str, float] = {}
    dropped: list[str] = []
    for c in range(y.shape[1]):
        ap = fn(y[:, c], s[:, c])
        if np.isnan(ap):
            dropped.append(names[c])
        else:
            per_class[names[c]] = ap
    value = float(np.mean(list(per_class.values()))) if per_class else float("nan")
    return {"value": value, "per_class": per_class, "dropped_classes": dropped}


def mean_average_precision(y_true: Any, scores: Any, class_names: list[str] | None = None,
                           details: bool = False) -> Any:
    """Macro non-interpolated mAP over the classes with at least one positive in ``y_true``
    (``[N, C]`` multi-hot). Equals ``average_precision_score(average="macro")`` when every class
    has a positive. ``details=True`` returns ``{"value", "per_class", "dropped_classes"}``."""
    d = _per_class(average_precision, y_true, scores, class_names)
    return d if details else d["value"]


def map_voc11(y_true: Any, scores: Any, class_names: list[str] | None = None, details: bool = False) -> Any:
    """Macro VOC 11-point interpolated AP (classes without positives dropped, as for mAP)."""
    d = _per_class(_voc11, y_true, scores, class_names)
    return d if details else d["value"]


def threshold_metrics(y_true: Any, probs: Any, threshold: float = 0.5) -> dict[str, float]:
    """CP, CR, CF1 (per class, then averaged; CF1 from the averages) and OP, OR, OF1 (pooled over
    all labels) of ``probs >= threshold``. An undefined precision/recall (nothing predicted /
    no positive) counts 0 in the class average."""
    y = np.asarray(y_true) > 0.5
    p = np.asarray(probs) >= threshold
    tp = (y & p).sum(0).astype(np.float64)
    n_pred = p.sum(0).astype(np.float64)
    n_pos = y.sum(0).astype(np.float64)
    cp = float(np.mean(np.divide(tp, n_pred, out=np.zeros_like(tp), where=n_pred > 0)))
    cr = float(np.mean(np.divide(tp, n_pos, out=np.zeros_like(tp), where=n_pos > 0)))
    op = float(tp.sum() / n_pred.sum()) if n_pred.sum() else 0.0
    or_ = float(tp.sum() / n_pos.sum()) if n_pos.sum() else 0.0

    def f1(a: float, b: float) -> float:
        return 2 * a * b / (a + b) if a + b > 0 else 0.0

    return {"CP": cp, "CR": cr, "CF1": f1(cp, cr), "OP": op, "OR": or_, "OF1": f1(op, or_)}


def single_label_metrics(y_true: Any, scores: Any) -> dict[str, float]:
    """``{"top1", "mean_per_class_acc"}`` from ``[N, C]`` scores (or ``[N]`` predictions)."""
    return {"top1": top1(y_true, scores), "mean_per_class_acc": mean_per_class_accuracy(y_true, scores)}


def multi_label_metrics(y_true: Any, scores: Any, probs: Any | None = None,
                        class_names: list[str] | None = None, threshold: float = 0.5) -> dict[str, Any]:
    """``{"map", "map_voc11", "ap_per_class", "dropped_classes"}`` plus CP/CR/CF1/OP/OR/OF1 when
    ``probs`` (probabilities to threshold at ``threshold``) are given."""
    m = mean_average_precision(y_true, scores, class_names, details=True)
    v = map_voc11(y_true, scores, class_names, details=True)
    out: dict[str, Any] = {"map": m["value"], "map_voc11": v["value"], "ap_per_class": m["per_class"],
                           "dropped_classes": m["dropped_classes"]}
    if probs is not None:
        out.update(threshold_metrics(y_true, probs, threshold))
    return out


def headline_key(multilabel: bool) -> str:
    """The metric a task is ranked by: ``map`` (multi-label) or ``top1``."""
    return "map" if multilabel else "top1"
