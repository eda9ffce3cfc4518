"""``build_dataset(spec, split, image_size, ...)``: every data source from one spec string."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from torch.utils.data import Dataset

from ..utils.errors import QuadformerError
from .procedural import build_builtin, builtin_task_names
from .real.cifar import CIFARDataset
from .real.folders import ImageFolderDataset, class_folders
from .real.multilabel import COCOMultiLabel, CSVMultiLabel, VOCMultiLabel

__all__ = ["DATASET_SCHEMES", "build_dataset"]

DATASET_SCHEMES = ("builtin", "imagefolder", "cifar10", "cifar100", "voc2007", "coco", "csv")


def _parse(name_or_path: str) -> tuple[str, str]:
    name = str(name_or_path)
    scheme, sep, arg = name.partition(":")
    if sep and scheme.lower() in DATASET_SCHEMES:
        return scheme.lower(), arg
    if not sep and name.lower() == "builtin":
        return "builtin", "glyphs"
    if Path(name).is_dir():
        return "imagefolder", name
    raise QuadformerError(
        f"unknown dataset {name!r}; use builtin:<task> (tasks: {', '.join(builtin_task_names())}), "
        f"imagefolder:<root>, cifar10:<root>, cifar100:<root>, voc2007:<root>, coco:<root or json> or csv:<file.csv>"
    )


def build_dataset(
    name_or_path: str,
    split: str = "train",
    image_size: int | tuple[int, int] = 128,
    *,
    transform: Callable | str | None = "auto",
    size: int | None = None,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    verify: bool = False,
    transform_kwargs: dict | None = None,
    **kwargs: Any,
) -> Dataset:
    """Build a dataset from a spec string.

    * ``builtin:<task>`` -- a procedural task of :mod:`quadformer.data.procedural` rendered at
      ``image_size`` (``size`` images; ``transform="auto"`` = none: items are already
      normalised tensors, and flips would change oriented-texture classes); see
      :func:`~quadformer.data.procedural.build_builtin`.
    * ``imagefolder:<root>`` -- :class:`ImageFolderDataset` on ``<root>/<split>`` (ImageNet
      layout ``train/`` + ``val/``); ``split=None`` uses ``<root>`` itself. A bare existing
      directory path means the same. Other splits take the class list of ``<root>/train``
      when it exists, so a validation folder lacking a class keeps the training labels.
    * ``cifar10:<root>`` / ``cifar100:<root>`` -- :class:`CIFARDataset` (``val`` = test set).
    * ``voc2007:<root>`` -- :class:`~quadformer.data.real.multilabel.VOCMultiLabel` (``split`` one of
      train / val / trainval / test; ``difficult="ignore"|"positive"|"exclude"``).
    * ``coco:<root>`` or ``coco:<instances.json>`` --
      :class:`~quadformer.data.real.multilabel.COCOMultiLabel` (train / val; test = val; ``year``).
    * ``csv:<file.csv>`` -- :class:`~quadformer.data.real.multilabel.CSVMultiLabel` (``{split}`` in the
      file name is replaced by the split, and the other splits take the training file's classes;
      a ``split`` column filters rows).

    ``transform="auto"`` builds timm transforms for ``image_size`` (training augmentation when
    ``split == "train"``), ``None`` returns PIL images for real data. ``size`` keeps a seeded
    random subset of real data sets. Other keyword arguments go to the dataset class.
    """
    scheme, arg = _parse(name_or_path)
    if scheme == "builtin":
        if split is None:
            raise QuadformerError("built-in datasets need a split: train, val or test")
        tf = None if isinstance(transform, str) and transform == "auto" else transform
        return build_builtin(arg or "glyphs", split, image_size, size=size, seed=seed, transform=tf,
                             cache_dir=cache_dir, **kwargs)

    if not arg:
        raise QuadformerError(f"{scheme}: needs a folder, e.g. {scheme}:/data/{scheme}")
    if isinstance(transform, str):
        if transform != "auto":
            raise QuadformerError(f"transform must be a callable, None or 'auto', got {transform!r}")
        tf = None
        auto_size: int | tuple[int, int] | None = image_size
    else:
        tf, auto_size = transform, None

    if scheme in ("voc2007", "coco", "csv"):
        kwargs.setdefault("is_training", split in ("train", "trainval"))
        common = dict(image_size=auto_size, verify=verify, max_samples=size, seed=seed,
                      transform_kwargs=transform_kwargs)
        if scheme == "voc2007":
            return VOCMultiLabel(arg, split or "trainval", tf, **common, **kwargs)
        if scheme == "coco":
            return COCOMultiLabel(arg, split or "train", tf, **common, **kwargs)
        path = arg.replace("{split}", split) if split is not None and "{split}" in arg else arg
        train_csv = arg.replace("{split}", "train")
        if path != arg and split not in ("train", "trainval") and "classes" not in kwargs and Path(train_csv).is_file():
            # one file per split: the other splits take the training file's classes (same labels)
            fmt = {k: kwargs[k] for k in ("path_column", "labels_column", "separator", "image_root") if k in kwargs}
            kwargs["classes"] = CSVMultiLabel(train_csv, **fmt).classes
        return CSVMultiLabel(path, tf, split=None if path != arg else split, **common, **kwargs)

    if scheme == "imagefolder":
        root = Path(arg)
        if split is not None:
            if not (root / split).is_dir():
                raise QuadformerError(
                    f"imagefolder: no {split!r} folder in {root} (expected {root}/{split}/<class>/<image>; "
                    f"pass split=None to use {root} itself)"
                )
            if split != "train" and (root / "train").is_dir() and "classes" not in kwargs:
                kwargs["classes"] = class_folders(root / "train")  # keep the training labels
            root = root / split
        return ImageFolderDataset(root, tf, image_size=auto_size, is_training=split == "train", verify=verify,
                                  max_samples=size, seed=seed, transform_kwargs=transform_kwargs, **kwargs)

    return CIFARDataset(arg, split or "train", scheme, tf, image_size=auto_size, max_samples=size, seed=seed,
                        transform_kwargs=transform_kwargs, **kwargs)
