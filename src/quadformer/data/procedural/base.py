"""The one base of every procedural task: splits, seeding, sizes, output modes, caching, items.

Image ``i`` of ``(task, split, seed)`` is a pure function of those values: numpy PCG64 streams
seeded by a ``SeedSequence`` of ``(stream tag, task offset, split code, seed, ...)``; train / val /
test use disjoint streams. Two ways of rendering share this base:

* :class:`RenderedDataset` renders image ``i`` on demand (``render(i, return_mask=True)`` also
  gives the object masks), optionally caching the whole split on disk;
* :class:`SuiteDataset` renders the whole split at construction, in blocks of :data:`BLOCK`
  images (block ``b`` a pure function of ``(task, split, seed, b)``, so the first ``n`` images of
  a larger set equal a set of size ``n``), kept in memory.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import Dataset

from ...utils.errors import QuadformerError
from ...utils.io import atomic_write

__all__ = [
    "SPLITS",
    "OUTPUTS",
    "BLOCK",
    "SUITE_VERSION",
    "Sample",
    "split_code",
    "stream",
    "parse_image_size",
    "sample_labels",
    "ProceduralDataset",
    "RenderedDataset",
    "SuiteDataset",
]

log = logging.getLogger(__name__)

SPLITS = {"train": 0, "val": 1, "test": 2}
OUTPUTS = ("normalized", "float", "uint8", "pil", "numpy")
#: images per seed block of the suite tasks (divisible by 6, 8, 10, 12, 40: label-balanced blocks)
BLOCK = 240
#: bump when the suite's pictures change (caches keyed on it must be rebuilt)
SUITE_VERSION = 1


class Sample(NamedTuple):
    """One rendered image with its target and object masks."""

    image: np.ndarray  # uint8 [H, W, 3]
    target: Any  # int or float32 multi-hot [C]
    mask: np.ndarray | None  # float32 [H, W] coverage of the class-carrying objects
    distractor_mask: np.ndarray | None  # float32 [H, W] coverage of the distractors


def split_code(split: str) -> int:
    try:
        return SPLITS[split]
    except (KeyError, TypeError):
        raise QuadformerError(f"split must be one of {list(SPLITS)}, got {split!r}") from None


def stream(tag: int, offset: int, split: str, seed: int, *tail: int) -> np.random.Generator:
    """The random stream ``(tag, offset, split, seed, *tail)``."""
    return np.random.default_rng([tag, offset, split_code(split), int(seed), *tail])


def parse_image_size(image_size: int | tuple[int, int], min_side: int, square: bool, what: str) -> tuple[int, int]:
    """``(H, W)`` of an int or ``(H, W)``; a one-line error names a size that is too small or,
    for square-only tasks, not square."""
    if isinstance(image_size, (tuple, list)):
        h, w = int(image_size[0]), int(image_size[1])
        if square and h != w:
            raise QuadformerError(f"{what} images are square, got {h}x{w}; pass one side")
    else:
        h = w = int(image_size)
    if h < min_side or w < min_side:
        raise QuadformerError(f"{what} images must be at least {min_side}x{min_side}, got {h}x{w}")
    return h, w


def sample_labels(
    rng_of: Callable[..., np.random.Generator], index: int, num_classes: int, label_mode: str,
    instances: tuple[int, int], counts: tuple[int, int] = (1, 1),
) -> tuple[list[int], Any, np.random.Generator]:
    """The object classes of image ``index``, its target and the stream rendering continues.

    ``rng_of(*tail)`` is the data set's stream. ``label_mode``: ``"single"`` (``instances``
    objects of one class, balanced: each block of ``num_classes`` consecutive indices is a
    permutation), ``"count"`` (``counts[0] + y`` objects of type 0, target ``y``, balanced) or
    ``"multi"`` (``instances`` distinct classes, multi-hot float32 target)."""
    if index < 0:
        raise IndexError(f"index must be >= 0, got {index}")
    rng = rng_of(index, 2)
    if label_mode in ("single", "count"):
        c = num_classes
        y = int(rng_of(index // c, 1).permutation(c)[index % c])
        if label_mode == "count":
            return [0] * (counts[0] + y), y, rng
        n = int(rng.integers(instances[0], instances[1] + 1))
        return [y] * n, y, rng
    k = int(rng.integers(instances[0], min(instances[1], num_classes) + 1))
    classes = sorted(int(c) for c in rng.choice(num_classes, size=k, replace=False))
    target = np.zeros(num_classes, np.float32)
    target[classes] = 1.0
    return classes, target, rng


class ProceduralDataset(Dataset):
    """A procedural task as a map-style torch ``Dataset`` of ``(image, target)``.

    ``output``: ``"normalized"`` (float ``[3, H, W]`` with ``mean`` / ``std``, default),
    ``"float"`` (``[3, H, W]`` in ``[0, 1]``), ``"uint8"`` (``[3, H, W]`` uint8 tensor, for
    augmentation pipelines), ``"pil"`` (``PIL.Image``) or ``"numpy"`` (uint8 ``[H, W, 3]``);
    ``transform`` is applied after the conversion. ``target`` is an ``int`` (single-label) or a
    float32 multi-hot tensor ``[num_classes]`` (multi-label).
    """

    task: str = ""
    upstream: bool = False
    multilabel: bool = False
    seed_offset: int = 0
    stream_tag: int = 0
    min_side: int = 32
    square: bool = False
    kind: str = "built-in"  # in messages
    OUTPUTS = OUTPUTS

    def __init__(
        self,
        split: str,
        image_size: int | tuple[int, int],
        seed: int,
        transform: Callable | None,
        output: str,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
    ) -> None:
        split_code(split)
        if output not in OUTPUTS:
            raise QuadformerError(f"output must be one of {OUTPUTS}, got {output!r}")
        self.split = split
        self.height, self.width = parse_image_size(image_size, self.min_side, self.square, self.kind)
        self.seed = int(seed)
        self.transform = transform
        self.output = output
        self.mean, self.std = tuple(mean), tuple(std)
        # normalised = uint8 * scale + shift, per channel
        self._scale = (1.0 / (255.0 * np.asarray(std, np.float32))).reshape(3, 1, 1).astype(np.float32)
        self._shift = (-np.asarray(mean, np.float32) / np.asarray(std, np.float32)).reshape(3, 1, 1).astype(np.float32)
        self.size = 0

    @staticmethod
    def _check_count(size: int | None, default: int) -> int:
        n = int(default if size is None else size)
        if n < 0:
            raise QuadformerError(f"size must be >= 0, got {size}")
        return n

    def stream(self, *tail: int) -> np.random.Generator:
        """This data set's random stream ``tail``."""
        return stream(self.stream_tag, self.seed_offset, self.split, self.seed, *tail)

    # -- metadata
    @property
    def class_names(self) -> list[str]:
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_size(self) -> tuple[int, int]:
        return self.height, self.width

    def __len__(self) -> int:
        return self.size

    # -- access
    def _item(self, index: int) -> tuple[np.ndarray, Any]:
        """uint8 ``[H, W, 3]`` image and raw target of a valid ``index``."""
        raise NotImplementedError

    def _convert(self, img: np.ndarray):
        if self.output == "numpy":
            return img
        if self.output == "pil":
            from PIL import Image

            return Image.fromarray(np.ascontiguousarray(img))
        # numpy for the layout/dtype work: small torch ops can wake intra-op thread pools, which
        # costs milliseconds per image on a busy machine
        chw = np.ascontiguousarray(img.transpose(2, 0, 1))
        if self.output == "uint8":
            return torch.from_numpy(chw)
        x = chw.astype(np.float32)
        if self.output == "float":
            x *= np.float32(1 / 255)
        else:
            x *= self._scale
            x += self._shift
        return torch.from_numpy(x)

    def __getitem__(self, index: int):
        index = int(index)
        if index < 0:
            index += self.size
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} images")
        img, target = self._item(index)
        x = self._convert(img)
        if self.transform is not None:
            x = self.transform(x)
        if self.multilabel:
            return x, torch.from_numpy(np.array(target, np.float32))
        return x, int(target)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(task={self.task!r}, split={self.split!r}, size={self.size}, "
                f"image_size=({self.height}, {self.width}), seed={self.seed}, output={self.output!r})")


class RenderedDataset(ProceduralDataset):
    """Images rendered one at a time (:meth:`render`); targets drawn without rendering
    (:meth:`target_of`). With ``cache_dir`` the whole split is rendered once and kept in
    ``<cache_dir>/<task>-<split>-seed<seed>-n<size>-<H>x<W>-v<version>.npy`` (uint8
    ``[N, H, W, 3]``, written atomically, memory-mapped on read)."""

    version: int = 1  # of the pictures: part of the cache key
    default_task: str = ""

    def __init__(
        self,
        task: Any = None,
        split: str = "train",
        size: int | None = None,
        image_size: int | tuple[int, int] = 128,
        seed: int = 0,
        transform: Callable | None = None,
        cache_dir: str | os.PathLike | None = None,
        output: str = "normalized",
        mean: tuple[float, float, float] = IMAGENET_DEFAULT_MEAN,
        std: tuple[float, float, float] = IMAGENET_DEFAULT_STD,
    ) -> None:
        split_code(split)
        default_size = self._bind_task(self.default_task if task is None else task, split, size)
        super().__init__(split, image_size, seed, transform, output, mean, std)
        self.size = self._check_count(size, default_size)
        self._targets: list | None = None
        self._images: np.ndarray | None = None
        self.cache_path: Path | None = None
        if cache_dir is not None:
            self.cache_path = Path(cache_dir) / (
                f"{self.task}-{split}-seed{self.seed}-n{self.size}-{self.height}x{self.width}-v{self.version}.npy"
            )
            self._images = self._load_or_build_cache(self.cache_path)

    def _bind_task(self, task: Any, split: str, size: int | None) -> int:
        """Take the task's definition as ``self.spec`` (with ``name`` and ``multilabel``), set
        ``seed_offset``, judge ``size``; return the split's default size."""
        raise NotImplementedError

    @property
    def task(self) -> str:  # type: ignore[override]
        return self.spec.name

    @property
    def multilabel(self) -> bool:  # type: ignore[override]
        return self.spec.multilabel

    def render(self, index: int, return_mask: bool = False) -> Sample:
        """The raw :class:`Sample` of image ``index`` (uint8 HWC image, target, masks)."""
        raise NotImplementedError

    def target_of(self, index: int) -> Any:
        """The target of image ``index`` without rendering it."""
        raise NotImplementedError

    @property
    def targets(self) -> list:
        """All targets (ints, or float32 multi-hot numpy vectors), computed without rendering."""
        if self._targets is None:
            self._targets = [self.target_of(i) for i in range(self.size)]
        return self._targets

    def _load_or_build_cache(self, path: Path) -> np.ndarray:
        expected = (self.size, self.height, self.width, 3)
        if path.exists():
            try:
                arr = np.load(path, mmap_mode="r", allow_pickle=False)
                if arr.shape == expected and arr.dtype == np.uint8:
                    return arr
                log.warning("cache %s has shape %s/%s, expected %s uint8; rebuilding",
                            path, arr.shape, arr.dtype, expected)
            except (OSError, ValueError) as e:
                log.warning("cache %s is unreadable (%s); rebuilding", path, e)
        arr = np.empty(expected, np.uint8)
        for i in range(self.size):
            arr[i] = self.render(i).image
        atomic_write(path, lambda f: np.save(f, arr, allow_pickle=False))
        log.info("wrote %s (%d images)", path, self.size)
        return np.load(path, mmap_mode="r", allow_pickle=False)

    def raw_image(self, index: int) -> np.ndarray:
        if self._images is not None:
            return np.asarray(self._images[index])
        return self.render(index).image

    def _item(self, index: int):
        if self._images is not None:
            return np.asarray(self._images[index]), self.target_of(index)
        s = self.render(index)
        return s.image, s.target


class SuiteDataset(ProceduralDataset):
    """The whole split rendered at construction into read-only uint8 ``[N, S, S, 3]``
    (:attr:`images`) and targets (:attr:`targets`: int64 ``[N]`` or float32 ``[N, C]``), in
    blocks of :data:`BLOCK` images.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.
        size: number of images (default :attr:`default_sizes` of the task).
        image_size: side of the square images, ``>= 16`` (default 32).
        seed: another, equally distributed draw of the task.
        transform, output, mean, std: as in :class:`ProceduralDataset`.
    """

    stream_tag = 0x5017E
    min_side = 16
    square = True
    kind = "suite"
    default_sizes: dict[str, int] = {"train": 1000, "val": 500, "test": 1000}
    description: str = ""

    def __init__(
        self,
        split: str = "train",
        size: int | None = None,
        image_size: int | tuple[int, int] = 32,
        seed: int = 0,
        transform: Callable | None = None,
        output: str = "normalized",
        mean: tuple[float, float, float] = IMAGENET_DEFAULT_MEAN,
        std: tuple[float, float, float] = IMAGENET_DEFAULT_STD,
    ) -> None:
        super().__init__(split, image_size, seed, transform, output, mean, std)
        self.side = self.height
        self._prepare()
        n = self._check_count(size, self._default_size())
        self._check_size(n)
        self.size = n
        self._images, self._targets = self._generate(n)
        self._images.setflags(write=False)
        self._targets.setflags(write=False)

    # -- subclass hooks
    def _prepare(self) -> None:
        """Load source material / validate options (before sizes are known)."""

    def _default_size(self) -> int:
        return int(self.default_sizes[self.split])

    def _check_size(self, n: int) -> None:
        pass

    def _render_block(self, rng: np.random.Generator, block: int, keep: int) -> tuple[np.ndarray, np.ndarray]:
        """Images ``[keep, S, S, 3]`` uint8 and targets of block ``block`` (indices
        ``block * BLOCK ...``); parameters must be drawn for the full block so that the first
        ``keep`` images do not depend on ``keep``."""
        raise NotImplementedError

    def _generate(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        S = self.side
        images = np.empty((n, S, S, 3), np.uint8)
        tshape = (n, self.num_classes) if self.multilabel else (n,)
        targets = np.zeros(tshape, np.float32 if self.multilabel else np.int64)
        for b in range(math.ceil(n / BLOCK)):
            lo = b * BLOCK
            keep = min(BLOCK, n - lo)
            im, tg = self._render_block(self.stream(b), b, keep)
            images[lo:lo + keep] = im
            targets[lo:lo + keep] = tg
        return images, targets

    # -- bulk access
    @property
    def images(self) -> np.ndarray:
        """All images, read-only uint8 ``[N, S, S, 3]`` (unnormalised RGB)."""
        return self._images

    @property
    def targets(self) -> np.ndarray:
        """All targets: int64 ``[N]`` (single-label) or float32 multi-hot ``[N, C]`` (read-only)."""
        return self._targets

    @property
    def labels(self) -> np.ndarray:
        return self._targets

    def class_counts(self) -> np.ndarray:
        """Images per class (single-label) or positives per class (multi-label)."""
        if self.multilabel:
            return self._targets.sum(0).astype(np.int64)
        return np.bincount(self._targets, minlength=self.num_classes)

    def raw_image(self, index: int) -> np.ndarray:
        return self._images[index]

    def _item(self, index: int):
        return self._images[index], self._targets[index]

    def tensors(self, output: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole split as tensors: images ``[N, 3, S, S]`` (``output`` as in the
        constructor, default this data set's; ``"uint8"`` or ``"float"`` / ``"normalized"``)
        and targets. No transform is applied."""
        output = output or self.output
        chw = torch.from_numpy(np.ascontiguousarray(self._images.transpose(0, 3, 1, 2)))
        if output == "uint8":
            x = chw
        elif output == "float":
            x = chw.float().div_(255)
        elif output == "normalized":
            x = chw.float().mul_(torch.from_numpy(self._scale)).add_(torch.from_numpy(self._shift))
        else:
            raise QuadformerError(f"tensors(): output must be uint8, float or normalized, got {output!r}")
        return x, torch.from_numpy(self._targets.copy())

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(task={self.task!r}, split={self.split!r}, size={self.size}, "
                f"image_size={self.side}, seed={self.seed}, output={self.output!r})")
