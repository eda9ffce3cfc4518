"""Built-in procedural data sets: a family of small-object recognition tasks.

Each picture is a low-frequency cluttered scene with a few small (10-20 px) plates on it; the
label is decided by the *fine detail* on the plates (micro-texture orientation at a 2.4-3.2 px
period, 1-px strokes, 1-px pips), which largely disappears when the image is down-scaled 2x.
The plates are also where the image's high-frequency energy is, so detail-seeking saliency
(e.g. "pixel-blur") finds them. Blank plates (same envelope and mean colour, no detail) act as
distractors that are indistinguishable from real objects at half resolution.

Image ``i`` of ``(task, split, seed)`` is a pure function of those four values (numpy PCG64
streams seeded by a ``SeedSequence``); train / val / test use disjoint seed streams.

Tasks (see :func:`list_tasks`)::

    glyphs        upstream, 10 micro-texture classes, single label
    glyphs-multi  the same objects, 1-3 classes per image, multi-hot target
    digits        10 thin seven-segment digits                      (transfer)
    dice          6 dice faces: 1-6 tiny pips                       (transfer)
    lines         8 thin outline shapes                             (transfer)
    lines-multi   the same shapes, multi-hot                        (transfer)
    count         count (1-5) zig-zag plates among blank plates     (transfer)

The transfer tasks' objects (digits, pips, outlines, zig-zags) are disjoint from the upstream
micro-textures.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from ..utils.io import atomic_write
from . import procedural as P

__all__ = [
    "TaskSpec",
    "register_task",
    "get_task",
    "list_tasks",
    "Sample",
    "generate",
    "sample_objects",
    "BuiltinDataset",
    "GENERATOR_VERSION",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DEFAULT_SIZES",
]

log = logging.getLogger(__name__)

#: bump when the pictures change, so on-disk caches of older versions are not reused
GENERATOR_VERSION = 1
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_SIZES = {"train": 10000, "val": 2000, "test": 2000}
_SPLITS = {"train": 0, "val": 1, "test": 2}
_MAGIC = 0x51AD  # quadformer built-in stream tag


@dataclass(frozen=True)
class TaskSpec:
    """A procedural task.

    ``label_mode``: ``"single"`` (all objects share one class, target = that class),
    ``"multi"`` (``instances`` distinct classes per image, multi-hot target) or ``"count"``
    (``counts`` objects of the family's single type, target = count - ``counts[0]``).
    ``instances`` is the range of objects (single) or of distinct classes (multi) per image;
    ``blanks`` the range of detail-free distractor plates.
    """

    name: str
    family: str
    scene: str
    label_mode: str = "single"
    seed_offset: int = 0
    instances: tuple[int, int] = (1, 2)
    blanks: tuple[int, int] = (0, 2)
    counts: tuple[int, int] = (1, 5)
    size_range: tuple[float, float] | None = None  # plate diameter px; None = family default
    description: str = ""
    upstream: bool = False
    label_names: tuple[str, ...] = ()  # overrides the derived class names

    def __post_init__(self) -> None:
        if self.label_mode not in ("single", "multi", "count"):
            raise ValueError(f"task {self.name!r}: label_mode must be single, multi or count")
        P.get_family(self.family)
        if self.scene not in P.SCENE_STYLES:
            raise ValueError(f"task {self.name!r}: unknown scene {self.scene!r}; known {sorted(P.SCENE_STYLES)}")

    @property
    def object_family(self) -> P.ObjectFamily:
        return P.get_family(self.family)

    @property
    def objects(self) -> tuple[str, ...]:
        """Names of the object types drawn in this task."""
        return self.object_family.class_names

    @property
    def multilabel(self) -> bool:
        return self.label_mode == "multi"

    @property
    def class_names(self) -> tuple[str, ...]:
        if self.label_names:
            return self.label_names
        if self.label_mode == "count":
            return tuple(str(c) for c in range(self.counts[0], self.counts[1] + 1))
        return self.object_family.class_names

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


_TASKS: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec, overwrite: bool = False) -> TaskSpec:
    if spec.name in _TASKS and not overwrite:
        raise ValueError(f"task {spec.name!r} is already registered")
    _TASKS[spec.name] = spec
    return spec


def get_task(name: str | TaskSpec) -> TaskSpec:
    if isinstance(name, TaskSpec):
        return name
    try:
        return _TASKS[name]
    except KeyError:
        raise ValueError(f"unknown built-in task {name!r}; available: {', '.join(list_tasks())}") from None


def list_tasks() -> list[str]:
    return list(_TASKS)


for _spec in (
    TaskSpec("glyphs", "microtex", "clutter", "single", 1000, instances=(1, 3), blanks=(1, 3), upstream=True,
             description="upstream: 10 micro-texture classes (stripe orientation, checker, rings, ...)"),
    TaskSpec("glyphs-multi", "microtex", "clutter", "multi", 2000, instances=(1, 3), blanks=(0, 2), upstream=True,
             description="upstream objects, 1-3 distinct classes per image, multi-hot"),
    TaskSpec("digits", "digits", "smooth", "single", 3000, instances=(1, 2), blanks=(0, 2),
             description="thin seven-segment digits 0-9"),
    TaskSpec("dice", "dice", "noisy", "single", 4000, instances=(1, 2), blanks=(1, 2),
             description="dice faces with 1-6 one-pixel pips"),
    TaskSpec("lines", "lines", "waves", "single", 5000, instances=(1, 2), blanks=(0, 2),
             description="8 thin outline shapes"),
    TaskSpec("lines-multi", "lines", "waves", "multi", 6000, instances=(1, 3), blanks=(0, 1),
             description="thin outline shapes, 1-3 distinct per image, multi-hot"),
    TaskSpec("count", "zigzag", "clutter", "count", 7000, counts=(1, 5), blanks=(1, 3),
             description="count the zig-zag plates (1-5) among blank plates"),
):
    register_task(_spec)


# --------------------------------------------------------------------------- generation


def _split_code(split: str) -> int:
    try:
        return _SPLITS[split]
    except KeyError:
        raise ValueError(f"split must be one of {list(_SPLITS)}, got {split!r}") from None


def _hw(image_size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(image_size, (tuple, list)):
        h, w = int(image_size[0]), int(image_size[1])
    else:
        h = w = int(image_size)
    if h < 32 or w < 32:
        raise ValueError(f"built-in images must be at least 32x32, got {h}x{w}")
    return h, w


def _rng(spec: TaskSpec, split: str, seed: int, *tail: int) -> np.random.Generator:
    return np.random.default_rng([_MAGIC, spec.seed_offset, _split_code(split), int(seed), *tail])


def _label_of(spec: TaskSpec, split: str, seed: int, index: int) -> int:
    """Balanced labels: each block of ``num_classes`` consecutive indices is a permutation."""
    c = spec.num_classes
    perm = _rng(spec, split, seed, index // c, 1).permutation(c)
    return int(perm[index % c])


def _sample_objects(spec: TaskSpec, index: int, split: str, seed: int) -> tuple[list[int], Any, np.random.Generator]:
    if index < 0:
        raise IndexError(f"index must be >= 0, got {index}")
    rng = _rng(spec, split, seed, index, 2)
    if spec.label_mode == "single":
        y = _label_of(spec, split, seed, index)
        n = int(rng.integers(spec.instances[0], spec.instances[1] + 1))
        return [y] * n, y, rng
    if spec.label_mode == "count":
        y = _label_of(spec, split, seed, index)
        return [0] * (spec.counts[0] + y), y, rng
    k = int(rng.integers(spec.instances[0], min(spec.instances[1], spec.num_classes) + 1))
    classes = sorted(int(c) for c in rng.choice(spec.num_classes, size=k, replace=False))
    target = np.zeros(spec.num_classes, np.float32)
    target[classes] = 1.0
    return classes, target, rng


def sample_objects(
    task: str | TaskSpec, index: int, split: str = "train", seed: int = 0
) -> tuple[list[int], Any]:
    """The object classes drawn in image ``index`` and its target, without rendering.

    Returns ``(classes, target)``: ``target`` is an ``int`` (single / count) or a float32
    multi-hot ``numpy`` vector (multi)."""
    classes, target, _ = _sample_objects(get_task(task), index, split, seed)
    return classes, target


class Sample(NamedTuple):
    image: np.ndarray  # uint8 [H, W, 3]
    target: Any  # int or float32 multi-hot [C]
    mask: np.ndarray | None  # float32 [H, W] coverage of the class-carrying objects
    distractor_mask: np.ndarray | None  # float32 [H, W] coverage of the blank plates


def generate(
    task: str | TaskSpec,
    index: int,
    split: str = "train",
    seed: int = 0,
    image_size: int | tuple[int, int] = 128,
    return_mask: bool = False,
) -> Sample:
    """Render image ``index`` of ``(task, split, seed)`` at ``image_size`` (int or ``(H, W)``,
    each >= 32). Object sizes and texture periods are in pixels, independent of the image size
    (plates are shrunk only when they would not fit)."""
    spec = get_task(task)
    h, w = _hw(image_size)
    fam = spec.object_family
    classes, target, rng = _sample_objects(spec, index, split, seed)  # rendering continues this stream

    img = P.render_scene(spec.scene, rng, h, w)
    n_blank = int(rng.integers(spec.blanks[0], spec.blanks[1] + 1))
    items: list[int | None] = list(classes) + [None] * n_blank
    order = rng.permutation(len(items))
    items = [items[i] for i in order]
    lo, hi = spec.size_range or fam.size_range
    cap = max(8.0, min(h, w) / 2 - 2)
    diams = [min(float(rng.uniform(lo, hi)), cap) for _ in items]
    centres = P.place_objects(rng, h, w, [d / 2 for d in diams])

    mask = np.zeros((h, w), np.float32) if return_mask else None
    dmask = np.zeros((h, w), np.float32) if return_mask else None
    for cls, d, (cy, cx) in zip(items, diams, centres):
        drawn = fam.draw(cls, rng, d)
        s = drawn.alpha.shape[0]
        P.composite(img, drawn, int(round(cy)) - s // 2, int(round(cx)) - s // 2,
                    mask if cls is not None else dmask)
    image = P.to_uint8(img, rng, P.SCENE_STYLES[spec.scene].pixel_noise)
    return Sample(image, target, mask, dmask)


# --------------------------------------------------------------------------- dataset


def _atomic_save(path: Path, array: np.ndarray) -> None:
    atomic_write(path, lambda f: np.save(f, array))


class BuiltinDataset(Dataset):
    """A built-in procedural task as a map-style torch ``Dataset``.

    Args:
        task: task name (see :func:`list_tasks`) or a :class:`TaskSpec`.
        split: ``"train"``, ``"val"`` or ``"test"`` (disjoint seed streams).
        size: number of images (default :data:`DEFAULT_SIZES` per split).
        image_size: int or ``(H, W)``, each >= 32.
        seed: selects another, equally distributed draw of the same task.
        transform: applied to the image after conversion to ``output``.
        cache_dir: if set, all images of the split are rendered once and kept in
            ``<cache_dir>/<task>-<split>-seed<seed>-n<size>-<H>x<W>-v<version>.npy`` (uint8
            ``[N, H, W, 3]``, written atomically, memory-mapped on read).
        output: ``"normalized"`` (float ``[3, H, W]`` with ``mean``/``std``, default),
            ``"float"`` (``[3, H, W]`` in ``[0, 1]``), ``"uint8"`` (``[3, H, W]`` uint8 tensor),
            ``"pil"`` (``PIL.Image``, for torchvision / timm transforms) or ``"numpy"``
            (uint8 ``[H, W, 3]``).

    Items are ``(image, target)``: ``target`` is an ``int`` for single-label / count tasks and
    a float32 multi-hot tensor ``[num_classes]`` for multi-label tasks.

    No augmentation is applied: flips would change the class of oriented textures (e.g.
    ``dstripes`` <-> ``astripes``), and fresh images are free anyway (grow ``size``).
    """

    OUTPUTS = ("normalized", "float", "uint8", "pil", "numpy")

    def __init__(
        self,
        task: str | TaskSpec = "glyphs",
        split: str = "train",
        size: int | None = None,
        image_size: int | tuple[int, int] = 128,
        seed: int = 0,
        transform=None,
        cache_dir: str | os.PathLike | None = None,
        output: str = "normalized",
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
    ) -> None:
        self.spec = get_task(task)
        _split_code(split)
        if output not in self.OUTPUTS:
            raise ValueError(f"output must be one of {self.OUTPUTS}, got {output!r}")
        self.split = split
        self.size = int(DEFAULT_SIZES[split] if size is None else size)
        if self.size < 0:
            raise ValueError(f"size must be >= 0, got {size}")
        self.height, self.width = _hw(image_size)
        self.seed = int(seed)
        self.transform = transform
        self.output = output
        # normalised = uint8 * scale + shift, per channel
        self._scale = (1.0 / (255.0 * np.asarray(std, np.float32))).reshape(3, 1, 1).astype(np.float32)
        self._shift = (-np.asarray(mean, np.float32) / np.asarray(std, np.float32)).reshape(3, 1, 1).astype(np.float32)
        self._targets: list | None = None
        self._images: np.ndarray | None = None
        self.cache_path: Path | None = None
        if cache_dir is not None:
            self.cache_path = Path(cache_dir) / (
                f"{self.spec.name}-{split}-seed{self.seed}-n{self.size}-{self.height}x{self.width}"
                f"-v{GENERATOR_VERSION}.npy"
            )
            self._images = self._load_or_build_cache(self.cache_path)

    # -- metadata
    @property
    def task(self) -> str:
        return self.spec.name

    @property
    def class_names(self) -> list[str]:
        return list(self.spec.class_names)

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    @property
    def multilabel(self) -> bool:
        return self.spec.multilabel

    @property
    def image_size(self) -> tuple[int, int]:
        return self.height, self.width

    @property
    def targets(self) -> list:
        """All targets (ints, or float32 multi-hot numpy vectors), computed without rendering."""
        if self._targets is None:
            self._targets = [self._target(i) for i in range(self.size)]
        return self._targets

    def _target(self, index: int):
        return sample_objects(self.spec, index, self.split, self.seed)[1]

    def __len__(self) -> int:
        return self.size

    # -- cache
    def _load_or_build_cache(self, path: Path) -> np.ndarray:
        expected = (self.size, self.height, self.width, 3)
        if path.exists():
            try:
                arr = np.load(path, mmap_mode="r")
                if arr.shape == expected and arr.dtype == np.uint8:
                    return arr
                log.warning("cache %s has shape %s/%s, expected %s uint8; rebuilding",
                            path, arr.shape, arr.dtype, expected)
            except (OSError, ValueError) as e:
                log.warning("cache %s is unreadable (%s); rebuilding", path, e)
        arr = np.empty(expected, np.uint8)
        for i in range(self.size):
            arr[i] = self.render(i).image
        _atomic_save(path, arr)
        log.info("wrote %s (%d images)", path, self.size)
        return np.load(path, mmap_mode="r")

    # -- access
    def render(self, index: int, return_mask: bool = False) -> Sample:
        """The raw :class:`Sample` (uint8 HWC image, target, optional object masks)."""
        return generate(self.spec, index, self.split, self.seed, (self.height, self.width), return_mask)

    def raw_image(self, index: int) -> np.ndarray:
        if self._images is not None:
            return np.asarray(self._images[index])
        return self.render(index).image

    def _convert(self, img: np.ndarray):
        if self.output == "numpy":
            return img
        if self.output == "pil":
            from PIL import Image

            return Image.fromarray(img)
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
        if index < 0:
            index += self.size
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} images")
        if self._images is not None:
            img = np.asarray(self._images[index])
            target = self._target(index)
        else:
            s = self.render(index)
            img, target = s.image, s.target
        x = self._convert(img)
        if self.transform is not None:
            x = self.transform(x)
        if self.multilabel:
            target = torch.from_numpy(np.asarray(target, np.float32))
        return x, target

    def __repr__(self) -> str:
        return (f"BuiltinDataset(task={self.task!r}, split={self.split!r}, size={self.size}, "
                f"image_size=({self.height}, {self.width}), seed={self.seed}, output={self.output!r})")
