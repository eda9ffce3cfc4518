"""ImageNet-style image folders: ``root/<class>/**/<image>``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

from torch.utils.data import Dataset

from ...utils.errors import QuadformerError
from .base import ClassList, ImageFiles

__all__ = ["IMG_EXTENSIONS", "class_folders", "ImageFolderDataset"]

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")


def class_folders(root: str | os.PathLike) -> list[str]:
    """The sorted class sub-folder names of an ImageNet-style folder (hidden ones skipped)."""
    root = Path(root)
    if not root.is_dir():
        raise QuadformerError(f"image folder {root} does not exist (expected {root}/<class>/<image>)")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise QuadformerError(f"no class sub-folders in {root} (expected {root}/<class>/<image>)")
    return classes


class ImageFolderDataset(ClassList, ImageFiles, Dataset):
    """``root/<class>/**/<image>`` (ImageNet layout) with corrupt-file handling.

    Args:
        root: folder whose sub-folders are the classes (sorted names -> labels 0..C-1).
        transform: callable on the RGB PIL image. If ``None`` and ``image_size`` is given,
            timm transforms are built with :func:`~quadformer.data.real.base.create_transforms`;
            if both are ``None`` the PIL image is returned.
        extensions: file name endings that count as images.
        classes: the class list (names -> labels in this order), e.g. the training split's
            (:func:`class_folders` of its root), so that a validation split lacking a class keeps
            the training labels; a sub-folder not in the list is an error. Default: the sorted
            sub-folders of ``root``.
        Other keywords: the loading options of :class:`~quadformer.data.real.base.ImageFiles`
        (``image_size``, ``is_training`` (default False), ``verify``, ``max_samples``, ``seed``,
        ``max_retries``, ``on_error``, ``transform_kwargs``).

    An empty class folder is an error (it would become a class without images). Unreadable
    images found while loading are logged (``logging`` warning naming the path), recorded in
    :attr:`skipped_paths` / :attr:`num_skipped`, never tried again, and replaced by the next
    readable sample (with that sample's label). With ``DataLoader(num_workers>0)`` each worker
    keeps its own record; the warnings still name every path.
    """

    row_arrays = ("labels",)

    def __init__(
        self,
        root: str | os.PathLike,
        transform: Callable | None = None,
        *,
        extensions: tuple[str, ...] = IMG_EXTENSIONS,
        classes: Sequence[str] | None = None,
        **options: Any,
    ) -> None:
        self.root = Path(root)
        found = class_folders(self.root)
        if classes is None:
            classes = found
        else:
            classes = [str(c) for c in classes]
            extra = sorted(set(found) - set(classes))
            if extra:
                raise QuadformerError(
                    f"{self.root} has class folders {extra} that the training classes lack "
                    f"({len(classes)} classes: {', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''}); "
                    f"remove them or add them to the training data"
                )
        self.classes = list(classes)
        self.class_to_idx = {c: i for i, c in enumerate(classes)}
        exts = tuple(e.lower() for e in extensions)
        self.paths, self.labels = [], []
        for c in classes:
            if c not in found:
                continue  # a class of the given list without a folder here (e.g. in val)
            n = len(self.paths)
            for dirpath, dirnames, filenames in os.walk(self.root / c, followlinks=True):
                dirnames.sort()
                for fn in sorted(filenames):
                    if fn.lower().endswith(exts) and not fn.startswith("."):
                        self.paths.append(os.path.join(dirpath, fn))
                        self.labels.append(self.class_to_idx[c])
            if len(self.paths) == n:
                raise QuadformerError(
                    f"class folder {self.root / c} holds no images with extensions {', '.join(exts)}; "
                    f"add images or remove the folder"
                )
        self._finish(transform, False, **options)

    # -- metadata
    @property
    def samples(self) -> list[tuple[str, int]]:
        return list(zip(self.paths, self.labels))

    @property
    def targets(self) -> list[int]:
        return list(self.labels)

    def __getitem__(self, index: int):
        img, j = self._load(index, len(self.paths), self.paths.__getitem__)
        return img, self.labels[j]

    def __repr__(self) -> str:
        return f"ImageFolderDataset(root={str(self.root)!r}, images={len(self)}, classes={self.num_classes})"
