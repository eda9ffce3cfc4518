"""Procedural (generated, offline, seeded) tasks: one base, one file per task family.

=================  ================  =====================================================
family (module)    tasks             content
=================  ================  =====================================================
:mod:`.glyphs`     glyphs,           small detail-carrying plates (micro-textures, thin
                   glyphs-multi,     digits, pips, outlines, zig-zags) on low-frequency
                   digits, dice,     scenes; the class vanishes at half resolution
                   lines, lines-
                   multi, count
:mod:`.natural`    natural,          the glyph plates on crops of scikit-image's colour
                   natural-multi,    photos (train / test crops from disjoint regions),
                   natural-3k,       with blank-plate and font-glyph distractors
                   natural-multi-3k
:mod:`.shapes_     shapes-textures,  the diversity / transfer suite's upstream task (8 shapes
textures`          hue               x 5 textures) and a hue-retention task
:mod:`.scenes`     scenes,           multi-label grids of coloured shapes
                   scenes-hard
:mod:`.digits`     sk-digits,        scikit-learn's 8x8 handwritten digits
                   sk-digits-hard
:mod:`.photos`     sk-patches        crops of scikit-image photos, label = photo
=================  ================  =====================================================

:mod:`.base` holds what they share (splits, seeding, sizes, output modes, caching, items);
:mod:`.draw` the drawing helpers. :data:`SUITE` names the diversity / transfer study's tasks.
"""

from __future__ import annotations

from typing import Any

from ...utils.errors import QuadformerError
from .base import BLOCK, SUITE_VERSION, ProceduralDataset, RenderedDataset, Sample, SuiteDataset
from .digits import SkDigitsDataset, SkDigitsHardDataset
from .glyphs import (
    DEFAULT_SIZES,
    GENERATOR_VERSION,
    BuiltinDataset,
    TaskSpec,
    generate,
    get_task,
    list_tasks,
    register_task,
    sample_objects,
)
from .natural import NATURAL_TASKS, NaturalDataset, is_natural_task, list_natural_tasks
from .photos import PATCH_SOURCES, SkPatchesDataset, available_patch_sources
from .scenes import ScenesDataset, ScenesHardDataset
from .shapes_textures import SHAPES, TEXTURES, HueDataset, ShapesTexturesDataset

__all__ = [
    "BLOCK",
    "SUITE_VERSION",
    "ProceduralDataset",
    "RenderedDataset",
    "Sample",
    "SuiteDataset",
    "DEFAULT_SIZES",
    "GENERATOR_VERSION",
    "BuiltinDataset",
    "TaskSpec",
    "generate",
    "get_task",
    "list_tasks",
    "register_task",
    "sample_objects",
    "NATURAL_TASKS",
    "NaturalDataset",
    "is_natural_task",
    "list_natural_tasks",
    "PATCH_SOURCES",
    "available_patch_sources",
    "SHAPES",
    "TEXTURES",
    "SUITE",
    "SUITE_TASKS",
    "list_suite_tasks",
    "is_suite_task",
    "build_suite_dataset",
    "builtin_task_names",
    "build_builtin",
    "ShapesTexturesDataset",
    "HueDataset",
    "ScenesDataset",
    "ScenesHardDataset",
    "SkDigitsDataset",
    "SkDigitsHardDataset",
    "SkPatchesDataset",
]

#: the diversity / transfer study's tasks: the upstream pretraining task and the downstream tasks
SUITE: dict[str, Any] = {
    "upstream": "shapes-textures",
    "single_label": ["sk-digits", "sk-patches", "hue", "sk-digits-hard"],
    "multi_label": ["scenes", "scenes-hard"],
}

SUITE_TASKS: dict[str, type[SuiteDataset]] = {
    cls.task: cls
    for cls in (ShapesTexturesDataset, SkDigitsDataset, SkDigitsHardDataset, SkPatchesDataset, HueDataset,
                ScenesDataset, ScenesHardDataset)
}


def list_suite_tasks() -> list[str]:
    return list(SUITE_TASKS)


def is_suite_task(name: str) -> bool:
    return name in SUITE_TASKS


def build_suite_dataset(task: str, split: str = "train", image_size: int | tuple[int, int] = 32,
                        **kwargs: Any) -> SuiteDataset:
    """``SUITE_TASKS[task](split, image_size=image_size, **kwargs)``. Keyword arguments:
    ``size``, ``seed``, ``transform``, ``output``, ``mean``, ``std`` (and ``split_seed`` /
    ``val_size`` for the digit tasks)."""
    try:
        cls = SUITE_TASKS[task]
    except KeyError:
        raise QuadformerError(f"unknown suite task {task!r}; available: {', '.join(SUITE_TASKS)}") from None
    return cls(split, image_size=image_size, **kwargs)


def builtin_task_names() -> list[str]:
    """Every ``builtin:<task>`` name: the glyph family, the natural-photo tasks, the suite."""
    return list_tasks() + list_natural_tasks() + list_suite_tasks()


def build_builtin(task: str, split: str, image_size: int | tuple[int, int] = 128, *, size: int | None = None,
                  seed: int = 0, transform: Any = None, cache_dir: Any = None, **kwargs: Any) -> ProceduralDataset:
    """The procedural task ``task``: glyph-family and natural-photo tasks take ``cache_dir``; the
    suite renders in memory (``cache_dir`` ignored) and takes its own keywords (``output``,
    ``val_size``, ...)."""
    if is_natural_task(task):
        return NaturalDataset(task, split, size=size, image_size=image_size, seed=seed, transform=transform,
                              cache_dir=cache_dir, **kwargs)
    if is_suite_task(task):
        return build_suite_dataset(task, split, image_size, size=size, seed=seed, transform=transform, **kwargs)
    if task not in list_tasks():
        raise QuadformerError(f"unknown built-in task {task!r}; available: {', '.join(builtin_task_names())}")
    return BuiltinDataset(task, split, size=size, image_size=image_size, seed=seed, transform=transform,
                          cache_dir=cache_dir, **kwargs)
