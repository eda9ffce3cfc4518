"""Data: built-in procedural small-object tasks and local real-image loaders.

``build_dataset("builtin:glyphs", "train", 128)`` is the usual entry point; see
:mod:`quadformer.data.builtin` for the procedural task family and
:mod:`quadformer.data.folders` for ImageNet-style folders and CIFAR.
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
]
