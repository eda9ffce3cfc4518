"""The glyph family: small detail-carrying plates on low-frequency procedural scenes.

Each picture is a low-frequency cluttered scene with a few small (10-20 px) plates on it; the
label is decided by the *fine detail* on the plates (micro-texture orientation at a 2.4-3.2 px
period, 1-px strokes, 1-px pips), which largely disappears when the image is down-scaled 2x.
The plates are also where the image's high-frequency energy is, so detail-seeking saliency
(e.g. "pixel-blur") finds them. Blank plates (same envelope and mean colour, no detail) act as
distractors that are indistinguishable from real objects at half resolution.

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

from dataclasses import dataclass
from typing import Any

import numpy as np

from ...utils.errors import QuadformerError
from . import plates as P
from .base import RenderedDataset, Sample, parse_image_size, sample_labels, split_code, stream
from .draw import to_uint8

__all__ = [
    "TaskSpec",
    "register_task",
    "get_task",
    "list_tasks",
    "generate",
    "sample_objects",
    "BuiltinDataset",
    "GENERATOR_VERSION",
    "DEFAULT_SIZES",
]

#: bump when the pictures change, so on-disk caches of older versions are not reused
GENERATOR_VERSION = 1
DEFAULT_SIZES = {"train": 10000, "val": 2000, "test": 2000}
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
        raise QuadformerError(f"unknown built-in task {name!r}; available: {', '.join(list_tasks())}") from None


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




def _hw(image_size: int | tuple[int, int]) -> tuple[int, int]:
    return parse_image_size(image_size, 32, False, "built-in")


def _sample_objects(spec: TaskSpec, index: int, split: str, seed: int) -> tuple[list[int], Any, np.random.Generator]:
    def rng_of(*tail: int) -> np.random.Generator:
        return stream(_MAGIC, spec.seed_offset, split, seed, *tail)

    return sample_labels(rng_of, index, spec.num_classes, spec.label_mode, spec.instances, spec.counts)


def sample_objects(
    task: str | TaskSpec, index: int, split: str = "train", seed: int = 0
) -> tuple[list[int], Any]:
    """The object classes drawn in image ``index`` and its target, without rendering.

    Returns ``(classes, target)``: ``target`` is an ``int`` (single / count) or a float32
    multi-hot ``numpy`` vector (multi)."""
    classes, target, _ = _sample_objects(get_task(task), index, split, seed)
    return classes, target


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
    split_code(split)
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
    image = to_uint8(img, rng, P.SCENE_STYLES[spec.scene].pixel_noise)
    return Sample(image, target, mask, dmask)


class BuiltinDataset(RenderedDataset):
    """A glyph-family task (:func:`list_tasks`) as a map-style torch ``Dataset``.

    Args:
        task: task name or a :class:`TaskSpec`.
        split: ``"train"``, ``"val"`` or ``"test"`` (disjoint seed streams).
        size: number of images (default :data:`DEFAULT_SIZES` per split).
        image_size: int or ``(H, W)``, each >= 32.
        seed: selects another, equally distributed draw of the same task.
        transform, output, mean, std: see :class:`~quadformer.data.procedural.base.ProceduralDataset`.
        cache_dir: render the split once into a memory-mapped ``.npy`` there
            (see :class:`~quadformer.data.procedural.base.RenderedDataset`).

    No augmentation is applied: flips would change the class of oriented textures (e.g.
    ``dstripes`` <-> ``astripes``), and fresh images are free anyway (grow ``size``).
    """

    stream_tag = _MAGIC
    version = GENERATOR_VERSION
    default_task = "glyphs"

    def _bind_task(self, task: str | TaskSpec, split: str, size: int | None) -> int:
        self.spec = get_task(task)
        self.seed_offset = self.spec.seed_offset
        return DEFAULT_SIZES[split]

    @property
    def upstream(self) -> bool:  # type: ignore[override]
        return self.spec.upstream

    @property
    def class_names(self) -> list[str]:
        return list(self.spec.class_names)

    def target_of(self, index: int):
        return sample_objects(self.spec, index, self.split, self.seed)[1]

    def render(self, index: int, return_mask: bool = False) -> Sample:
        return generate(self.spec, index, self.split, self.seed, (self.height, self.width), return_mask)
