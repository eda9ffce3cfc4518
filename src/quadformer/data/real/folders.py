"""ImageNet-style image folders: ``root/<class>/**/<image>``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

from torch.utils.data import Dataset

from ...utils.errors import QuadformerError
from .base import ClassList, ImageFiles, create_transforms, subset_indices

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
            timm transforms are built with :func:`create_transforms`; if both are ``None``
            the PIL image is returned.
        is_training: train (random-resized-crop, flip, colour jitter) or eval transforms.
        verify: check every file with ``PIL.Image.verify`` while scanning (reads headers only,
            but touches every file: costly on ImageNet-sized folders). Bad files are reported
            and dropped before training starts.
        max_samples / seed: keep a seeded random subset of the files.
        max_retries: how many following samples to try before giving up on an item.
        classes: the class list (names -> labels in this order), e.g. the training split's
            (:func:`class_folders` of its root), so that a validation split lacking a class keeps
            the training labels; a sub-folder not in the list is an error. Default: the sorted
            sub-folders of ``root``.

    An empty class folder is an error (it would become a class without images).
    Unreadable images found while loading are logged (``logging`` warning naming the path),
    recorded in :attr:`skipped_paths` / :attr:`num_skipped`, never tried again, and replaced by
    the next readable sample (with that sample's label). With ``DataLoader(num_workers>0)``
    each worker keeps its own record; the warnings still name every path.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        transform: Callable | None = None,
        *,
        image_size: int | tuple[int, int] | None = None,
        is_training: bool = False,
        verify: bool = False,
        extensions: tuple[str, ...] = IMG_EXTENSIONS,
        max_samples: int | None = None,
        seed: int = 0,
        max_retries: int = 50,
        transform_kwargs: dict | None = None,
        classes: Sequence[str] | None = None,
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
        samples: list[tuple[str, int]] = []
        for c in classes:
            if c not in found:
                continue  # a class of the given list without a folder here (e.g. in val)
            n = len(samples)
            for dirpath, dirnames, filenames in os.walk(self.root / c, followlinks=True):
                dirnames.sort()
                for fn in sorted(filenames):
                    if fn.lower().endswith(exts) and not fn.startswith("."):
                        samples.append((os.path.join(dirpath, fn), self.class_to_idx[c]))
            if len(samples) == n:
                raise QuadformerError(
                    f"class folder {self.root / c} holds no images with extensions {', '.join(exts)}; "
                    f"add images or remove the folder"
                )
        if not samples:
            raise QuadformerError(
                f"no images with extensions {', '.join(exts)} under the class folders of {self.root}"
            )
        keep = subset_indices(len(samples), max_samples, seed)
        if keep is not None:
            samples = [samples[i] for i in keep]

        self.skipped_paths: list[str] = []
        self._skipped: set[str] = set()
        if verify:
            samples = [samples[i] for i in self._verified([path for path, _ in samples])]
            if not samples:
                raise QuadformerError(f"every image under {self.root} failed verification")
        self.samples = samples
        self.max_retries = int(max_retries)
        if transform is None and image_size is not None:
            transform = create_transforms(image_size, is_training, **(transform_kwargs or {}))
        self.transform = transform

    # -- metadata
    @property
    def targets(self) -> list[int]:
        return [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        img, j = self._load(index, len(self.samples), lambda j: self.samples[j][0])
        return img, self.samples[j][1]

    def __repr__(self) -> str:
        return f"ImageFolderDataset(root={str(self.root)!r}, images={len(self)}, classes={self.num_classes})"
