"""Transfer metrics (docs/design/diverse_transfer.md §3), in **percent** like every score of the
project, computed by the one definition of each in :mod:`quadformer.utils.metrics`: top-1,
mean per-class accuracy, macro mAP (classes without a positive in the test targets dropped and
listed by name), VOC 11-point mAP and the multi-label CP/CR/CF1/OP/OR/OF1 at a threshold.

Argument order here is ``(y_true, scores)``, as scikit-learn's.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..utils import metrics as M

__all__ = [
    "top1",
    "mean_per_class_accuracy",
    "mean_average_precision",
    "map_voc11",
    "threshold_metrics",
    "single_label_metrics",
    "multi_label_metrics",
    "headline_key",
    "untrained_classes",
]


def top1(y_true: Any, scores_or_pred: Any) -> float:
    """Percent correct; the second argument is ``[N, C]`` scores or ``[N]`` labels."""
    y = np.asarray(y_true).reshape(-1).astype(np.int64)
    s = np.asarray(scores_or_pred)
    if len(y) == 0:
        return float("nan")
    if s.ndim == 2:
        return M.accuracy_topk(s, y, ks=(1,))[1]
    return 100.0 * float(np.mean(s.reshape(-1).astype(np.int64) == y))


def mean_per_class_accuracy(y_true: Any, scores_or_pred: Any) -> float:
    """Mean class recall (percent) over the classes present in ``y_true``."""
    return M.mean_per_class_accuracy(scores_or_pred, y_true)


def _details(per_class: np.ndarray, class_names: list[str] | None, untrained: Sequence[int] = ()) -> dict[str, Any]:
    names = list(class_names) if class_names is not None else [str(c) for c in range(len(per_class))]
    if len(names) != len(per_class):
        raise ValueError(f"{len(names)} class names for {len(per_class)} score columns")
    skip = set(int(c) for c in untrained)
    kept = {names[c]: float(v) for c, v in enumerate(per_class) if not np.isnan(v) and c not in skip}
    dropped = [names[c] for c, v in enumerate(per_class) if np.isnan(v)]
    value = float(np.mean(list(kept.values()))) if kept else float("nan")
    return {"value": value, "per_class": kept, "dropped_classes": dropped,
            "untrained_classes": [names[c] for c in sorted(skip) if not np.isnan(per_class[c])]}


def untrained_classes(train_targets: Any) -> list[int]:
    """Columns of multi-hot training targets without a positive: a probe cannot learn them, so
    their test AP says nothing about the features."""
    y = np.asarray(train_targets)
    return [int(c) for c in np.flatnonzero(~(y > 0.5).any(axis=0))] if y.ndim == 2 else []


def mean_average_precision(y_true: Any, scores: Any, class_names: list[str] | None = None,
                           details: bool = False, untrained: Sequence[int] = ()) -> Any:
    """Macro mAP (percent) over the classes with a positive in ``y_true`` (``[N, C]`` multi-hot),
    leaving out the ``untrained`` class indices too. ``details=True`` returns ``{"value",
    "per_class", "dropped_classes" (no test positive), "untrained_classes"}``."""
    d = _details(M.average_precision_per_class(scores, y_true), class_names, untrained)
    return d if details else d["value"]


def map_voc11(y_true: Any, scores: Any, class_names: list[str] | None = None, details: bool = False,
              untrained: Sequence[int] = ()) -> Any:
    """Macro VOC 11-point interpolated mAP (percent), classes left out as for mAP."""
    d = _details(M.voc11_per_class(scores, y_true), class_names, untrained)
    return d if details else d["value"]


def threshold_metrics(y_true: Any, probs: Any, threshold: float = 0.5) -> dict[str, float]:
    """CP, CR, CF1, OP, OR, OF1 (percent) of ``probs >= threshold``."""
    return M.threshold_metrics(probs, y_true, threshold)


def single_label_metrics(y_true: Any, scores: Any) -> dict[str, float]:
    """``{"top1", "mean_per_class_acc"}`` from ``[N, C]`` scores (or ``[N]`` predictions)."""
    return {"top1": top1(y_true, scores), "mean_per_class_acc": mean_per_class_accuracy(y_true, scores)}


def multi_label_metrics(y_true: Any, scores: Any, probs: Any | None = None,
                        class_names: list[str] | None = None, threshold: float = 0.5,
                        train_targets: Any | None = None) -> dict[str, Any]:
    """``{"map", "map_voc11", "ap_per_class", "dropped_classes", "untrained_classes"}`` plus
    CP/CR/CF1/OP/OR/OF1 when ``probs`` (probabilities to threshold at ``threshold``) are given.
    With ``train_targets``, classes without a training positive are left out of the means and
    listed in ``untrained_classes`` (the threshold metrics still count every class)."""
    untrained = untrained_classes(train_targets) if train_targets is not None else []
    m = mean_average_precision(y_true, scores, class_names, details=True, untrained=untrained)
    v = map_voc11(y_true, scores, class_names, details=True, untrained=untrained)
    out: dict[str, Any] = {"map": m["value"], "map_voc11": v["value"], "ap_per_class": m["per_class"],
                           "dropped_classes": m["dropped_classes"], "untrained_classes": m["untrained_classes"]}
    if probs is not None:
        out.update(threshold_metrics(y_true, probs, threshold))
    return out


def headline_key(multilabel: bool) -> str:
    """The metric a task is ranked by: ``map`` (multi-label) or ``top1``."""
    return "map" if multilabel else "top1"
