"""CIFAR-10 / CIFAR-100 from the local python pickle batches, read without running code."""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from ...utils.errors import QuadformerError
from .base import ClassList, create_transforms, subset_indices

__all__ = ["SAFE_GLOBALS", "SafeUnpickler", "safe_unpickle", "CIFARDataset"]

log = logging.getLogger(__name__)


_CIFAR_FILES = {
    "cifar10": {
        "dirs": ("cifar-10-batches-py",),
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "meta": "batches.meta",
        "names_key": "label_names",
    },
    "cifar100": {
        "dirs": ("cifar-100-python",),
        "train": ["train"],
        "test": ["test"],
        "meta": "meta",
        "names_key": "fine_label_names",
    },
}


#: the only globals a CIFAR batch may name: numpy's array reconstruction (both numpy 1 and 2
#: module paths) and the latin-1 codec Python 3 pickles use for bytes; nothing that runs code
SAFE_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
})


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as Python 3 pickles of bytes use it, latin-1 only."""
    if encoding.lower().replace("_", "-") not in ("latin1", "latin-1", "iso-8859-1"):
        raise pickle.UnpicklingError(f"refused codec {encoding!r}")
    return str(text).encode("latin1")


class SafeUnpickler(pickle.Unpickler):
    """A ``pickle.Unpickler`` that builds only containers, bytes, str, numbers and numpy arrays:
    any other global (a ``__reduce__`` payload such as ``os.system``) is refused before it is
    called (the ``find_class`` restriction of the :mod:`pickle` documentation)."""

    def find_class(self, module: str, name: str):
        if (module, name) in SAFE_GLOBALS:
            return super().find_class(module, name)
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        raise pickle.UnpicklingError(f"refused global {module}.{name}")


def safe_unpickle(path: Path) -> dict:
    """A CIFAR pickle file as a dict with str keys, through :class:`SafeUnpickler`."""
    with open(path, "rb") as f:
        d = SafeUnpickler(f, encoding="latin1").load()
    if not isinstance(d, dict):
        raise pickle.UnpicklingError(f"expected a dict, found {type(d).__name__}")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in d.items()}


class CIFARDataset(ClassList, Dataset):
    """CIFAR-10 / CIFAR-100 from the local python pickle batches (no download).

    ``root`` is the extracted ``cifar-10-batches-py`` / ``cifar-100-python`` folder or its
    parent. ``split``: ``"train"`` (50k) or ``"test"``; ``"val"`` is the test set (CIFAR has
    no separate validation set). ``label="coarse"`` gives the 20 CIFAR-100 super-classes.
    Transforms as in :class:`ImageFolderDataset` (eval uses ``crop_pct=1.0``: no crop).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        variant: str = "cifar10",
        transform: Callable | None = None,
        *,
        image_size: int | tuple[int, int] | None = None,
        is_training: bool | None = None,
        label: str = "fine",
        max_samples: int | None = None,
        seed: int = 0,
        transform_kwargs: dict | None = None,
    ) -> None:
        if variant not in _CIFAR_FILES:
            raise QuadformerError(f"variant must be 'cifar10' or 'cifar100', got {variant!r}")
        if split not in ("train", "val", "test"):
            raise QuadformerError(f"split must be train, val or test, got {split!r}")
        if label not in ("fine", "coarse") or (label == "coarse" and variant == "cifar10"):
            raise QuadformerError(f"label must be 'fine' (or 'coarse' for cifar100), got {label!r}")
        spec = _CIFAR_FILES[variant]
        files = spec["train"] if split == "train" else spec["test"]
        root = Path(root)
        candidates = [root] + [root / d for d in spec["dirs"]]
        folder = next((c for c in candidates if all((c / f).is_file() for f in files)), None)
        if folder is None:
            raise QuadformerError(
                f"{variant} {split} files not found: looked in {', '.join(str(c) for c in candidates)} "
                f"for {', '.join(files)} (the python-pickle release, e.g. "
                f"{spec['dirs'][0]}/ extracted from the official tarball)"
            )
        self.root = folder
        self.variant = variant
        self.split = split
        key = "labels" if variant == "cifar10" else f"{label}_labels"
        data, labels = [], []
        for f in files:
            try:
                d = safe_unpickle(folder / f)
                arr = np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
                lab = np.asarray(d[key], dtype=np.int64)
            except (LookupError, ValueError, TypeError, AttributeError, MemoryError, OSError, EOFError,
                    pickle.UnpicklingError) as e:
                raise QuadformerError(f"{folder / f} is not a valid {variant} batch ({type(e).__name__}: {e}); "
                                      f"use the python-pickle release of {variant}") from None
            if len(arr) != len(lab):
                raise QuadformerError(f"{folder / f}: {len(arr)} images but {len(lab)} labels")
            data.append(arr)
            labels.append(lab)
        self.data = np.ascontiguousarray(np.concatenate(data).transpose(0, 2, 3, 1))  # [N, 32, 32, 3]
        self.labels = np.concatenate(labels)
        keep = subset_indices(len(self.labels), max_samples, seed)
        if keep is not None:
            self.data, self.labels = self.data[keep], self.labels[keep]

        n_cls = 10 if variant == "cifar10" else (100 if label == "fine" else 20)
        names = None
        meta = folder / spec["meta"]
        if meta.is_file():
            try:
                raw = safe_unpickle(meta)[spec["names_key"] if label == "fine" else "coarse_label_names"]
                names = [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in raw]
            except Exception as e:  # noqa: BLE001 -- meta is optional
                log.warning("could not read class names from %s (%s); using numbers", meta, e)
        self.classes = names if names and len(names) == n_cls else [f"class_{i}" for i in range(n_cls)]

        if is_training is None:
            is_training = split == "train"
        if transform is None and image_size is not None:
            kw = dict(transform_kwargs or {})
            if not is_training:
                kw.setdefault("crop_pct", 1.0)
            transform = create_transforms(image_size, is_training, **kw)
        self.transform = transform

    @property
    def targets(self) -> list[int]:
        return self.labels.tolist()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        img = Image.fromarray(self.data[index])
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.labels[index])

    def __repr__(self) -> str:
        return f"CIFARDataset({self.variant}, split={self.split!r}, images={len(self)}, root={str(self.root)!r})"
