"""Data: built-in procedural small-object tasks and local real-image loaders.

``build_dataset("builtin:glyphs", "train", 128)`` is the usual entry point; see
:mod:`quadformer.data.builtin` for the procedural task family and
:mod:`quadformer.data.folders` for ImageNet-style folders and CIFAR,
:mod:`quadformer.data.suite` for the offline diversity/transfer suite (``builtin:shapes-textures``,
``builtin:sk-digits``, ...) and :mod:`quadformer.data.multilabel` for VOC 2007 / COCO / CSV
multi-label loaders (``voc2007:<root>``, ``coco:<root>``, ``csv:<file>``).
"""

from .builtin import (
    DEFAULT_SIZES,
    GENERATOR_VERSION,
    IMAGENET_MEAN,
    IMAGENET_STD,
    BuiltinDataset,
    Sample,
    TaskSpec,
    generate,
    get_task,
    list_tasks,
    register_task,
    sample_objects,
)
from .folders import (
    DATASET_SCHEMES,
    IMG_EXTENSIONS,
    CIFARDataset,
    ImageFolderDataset,
    build_dataset,
    create_transforms,
)
from .multilabel import DIFFICULT_POLICIES, VOC_CLASSES, COCOMultiLabel, CSVMultiLabel, VOCMultiLabel
from .suite import (
    SUITE,
    SUITE_TASKS,
    SuiteDataset,
    build_suite_dataset,
    list_suite_tasks,
)

__all__ = [
    "DEFAULT_SIZES",
    "GENERATOR_VERSION",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "BuiltinDataset",
    "Sample",
    "TaskSpec",
    "generate",
    "get_task",
    "list_tasks",
    "register_task",
    "sample_objects",
    "DATASET_SCHEMES",
    "IMG_EXTENSIONS",
    "CIFARDataset",
    "ImageFolderDataset",
    "build_dataset",
    "create_transforms",
    "DIFFICULT_POLICIES",
    "VOC_CLASSES",
    "COCOMultiLabel",
    "CSVMultiLabel",
    "VOCMultiLabel",
    "SUITE",
    "SUITE_TASKS",
    "SuiteDataset",
    "build_suite_dataset",
    "list_suite_tasks",
]
