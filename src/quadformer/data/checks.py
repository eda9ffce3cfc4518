"""Label-space checks between data sets (training vs validation vs evaluation data)."""

from __future__ import annotations

from typing import Any

from ..utils.errors import QuadformerError

__all__ = ["class_names_of", "check_same_classes"]


def class_names_of(ds: Any) -> list[str]:
    """The class names a data set reports (every loader of :mod:`quadformer.data` has
    ``class_names``); wrappers such as ``torch.utils.data.Subset`` are looked through."""
    while not hasattr(ds, "class_names") and hasattr(ds, "dataset"):
        ds = ds.dataset
    names = getattr(ds, "class_names", None)
    if names is None:
        raise QuadformerError(f"data set {type(ds).__name__} does not report class_names; "
                              f"use a loader of quadformer.data or give it a class_names attribute")
    return [str(n) for n in names]


def check_same_classes(train_ds: Any, val_ds: Any, where: str) -> None:
    """Raise a one-line error when two data sets disagree on their classes or on their order
    (labels would mean different things): ``where`` names the pair in the message, e.g.
    ``"data.val"``."""
    a, b = class_names_of(train_ds), class_names_of(val_ds)
    if a == b:
        return
    missing = [c for c in a if c not in b]
    extra = [c for c in b if c not in a]

    def short(xs: list[str]) -> str:
        return ", ".join(xs[:5]) + (f", ... ({len(xs)})" if len(xs) > 5 else "")

    if missing or extra:
        what = "; ".join(p for p in (f"lacks {short(missing)}" if missing else "",
                                     f"has extra {short(extra)}" if extra else "") if p)
    else:
        what = "has the same classes in another order"
    raise QuadformerError(f"{where}: the classes differ from the training data's ({len(a)} classes): it {what}; "
                          f"build both from the same class list (same task, or an imagefolder root with train/ and val/)")
