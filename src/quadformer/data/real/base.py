"""What the real-image loaders share: class metadata, the unreadable-file policy, seeded
subsets and timm transforms. Nothing here downloads anything."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from ...utils.errors import QuadformerError
from ...utils.images import open_rgb

__all__ = ["DECODE_ERRORS", "create_transforms", "subset_indices", "ClassList", "ImageFiles"]

log = logging.getLogger(__name__)

# what a broken image file raises while being opened / decoded
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


def create_transforms(
    image_size: int | tuple[int, int],
    is_training: bool = False,
    *,
    mean: tuple[float, ...] = IMAGENET_DEFAULT_MEAN,
    std: tuple[float, ...] = IMAGENET_DEFAULT_STD,
    interpolation: str = "bicubic",
    crop_pct: float | None = None,
    **kwargs: Any,
) -> Callable:
    """timm train / eval transforms producing a normalised ``[3, H, W]`` float tensor from a
    PIL image. ``image_size`` is an int or ``(H, W)``; extra keyword arguments go to
    :func:`timm.data.create_transform` (e.g. ``hflip=0.0``, ``scale=(0.35, 1.0)``,
    ``auto_augment="rand-m9-mstd0.5"``)."""
    from timm.data import create_transform

    if isinstance(image_size, (tuple, list)):
        input_size: Any = (3, int(image_size[0]), int(image_size[1]))
    else:
        input_size = (3, int(image_size), int(image_size))
    return create_transform(
        input_size=input_size,
        is_training=is_training,
        mean=mean,
        std=std,
        interpolation=interpolation,
        crop_pct=crop_pct,
        **kwargs,
    )


def subset_indices(n: int, max_samples: int | None, seed: int) -> np.ndarray | None:
    if max_samples is None or max_samples >= n:
        return None
    if max_samples < 0:
        raise QuadformerError(f"max_samples must be >= 0, got {max_samples}")
    return np.sort(np.random.default_rng(seed).permutation(n)[:max_samples])


class ClassList:
    """Class metadata of the real-data sets (``self.classes`` holds the names); single-label
    unless a subclass sets ``multilabel = True``."""

    classes: list[str]
    multilabel = False

    @property
    def class_names(self) -> list[str]:
        return list(self.classes)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


class ImageFiles:
    """A list of image files (:attr:`paths`, with per-file rows such as labels in the
    attributes named by :attr:`row_arrays`) and the policy for unreadable ones: a broken file is
    logged once (``logging`` warning naming the path), recorded in :attr:`skipped_paths`, never
    tried again and replaced by the next readable sample; with ``on_error="raise"``, an
    ``OSError`` naming the path instead.

    Subclasses set ``root``, ``paths`` and their row arrays, then call :meth:`_finish` with the
    loading options every file-based loader takes: ``image_size`` (build timm transforms when
    ``transform`` is ``None``), ``is_training`` (default: the split is a training split),
    ``verify`` (check every file with ``PIL.Image.verify`` while scanning: headers only, but
    every file), ``max_samples`` / ``seed`` (a seeded random subset), ``max_retries`` (following
    samples tried before giving up on an item), ``on_error`` (``"skip"`` or ``"raise"``) and
    ``transform_kwargs`` (for :func:`create_transforms`)."""

    root: Path
    paths: list[str]
    row_arrays: tuple[str, ...] = ()
    transform: Callable | None
    max_retries: int
    skipped_paths: list[str]
    _skipped: set[str]
    on_error = "skip"

    def __len__(self) -> int:
        return len(self.paths)

    def _finish(
        self,
        transform: Callable | None,
        training_default: bool,
        keep_arrays: Sequence[str] = (),
        *,
        image_size: int | tuple[int, int] | None = None,
        is_training: bool | None = None,
        verify: bool = False,
        max_samples: int | None = None,
        seed: int = 0,
        max_retries: int = 50,
        on_error: str = "skip",
        transform_kwargs: dict | None = None,
    ) -> None:
        if is_training is None:
            is_training = training_default
        if on_error not in ("skip", "raise"):
            raise QuadformerError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
        self.on_error = on_error
        self.max_retries = int(max_retries)
        keep = subset_indices(len(self.paths), max_samples, seed)
        if keep is not None:
            self._select(keep, keep_arrays)
        self.skipped_paths: list[str] = []
        self._skipped: set[str] = set()
        if verify:
            good = self._verified(self.paths)
            if len(good) < len(self.paths):
                self._select(np.asarray(good, np.int64), keep_arrays)
            if not self.paths:
                raise QuadformerError(f"every image under {self.root} failed verification; check or replace them")
        if transform is None and image_size is not None:
            transform = create_transforms(image_size, is_training, **(transform_kwargs or {}))
        self.transform = transform

    def _select(self, keep: np.ndarray, keep_arrays: Sequence[str] = ()) -> None:
        """Keep the files ``keep`` (indices), with their rows in every per-file attribute."""
        self.paths = [self.paths[i] for i in keep]
        for name in (*self.row_arrays, *keep_arrays):
            arr = getattr(self, name)
            setattr(self, name, arr[keep] if isinstance(arr, np.ndarray) else [arr[i] for i in keep])

    @property
    def num_skipped(self) -> int:
        """Number of distinct unreadable files found so far (at scan or load time)."""
        return len(self.skipped_paths)

    def _unreadable(self, path: str, exc: BaseException) -> None:
        if self.on_error == "raise":
            raise OSError(f"cannot read image {path} ({type(exc).__name__}: {exc})") from exc
        if path in self._skipped:
            return
        self._skipped.add(path)
        self.skipped_paths.append(path)
        log.warning("skipping unreadable image %s (%s: %s)", path, type(exc).__name__, exc)

    @staticmethod
    def load_image(path: str) -> Image.Image:
        """The fully decoded 8-bit RGB image (16-bit and float images scaled, not clipped)."""
        return open_rgb(path)

    def _verified(self, paths: Sequence[str]) -> list[int]:
        """Indices of the ``paths`` whose header ``PIL.Image.verify`` accepts."""
        good = []
        for i, path in enumerate(paths):
            try:
                with Image.open(path) as im:
                    im.verify()
            except DECODE_ERRORS as e:
                self._unreadable(path, e)
            else:
                good.append(i)
        return good

    def _load(self, index: int, n: int, path_of: Callable[[int], str]) -> tuple[Any, int]:
        """(transformed image, sample index) of the first readable of the ``n`` samples from
        ``index`` on; ``path_of(j)`` is the file of sample ``j``."""
        j = index % n if index >= 0 else index + n
        for _ in range(min(self.max_retries, n)):
            path = path_of(j)
            if path not in self._skipped:
                try:
                    img = self.load_image(path)
                except DECODE_ERRORS as e:
                    self._unreadable(path, e)
                else:
                    return (img if self.transform is None else self.transform(img)), j
            j = (j + 1) % n
        raise QuadformerError(
            f"could not read image {index} of {self.root} nor any of the next {self.max_retries - 1} "
            f"samples; {self.num_skipped} unreadable files so far (last: {self.skipped_paths[-1:]}); "
            f"check or remove those files"
        )
