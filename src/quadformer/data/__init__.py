"""Data: procedural tasks and local real-image loaders, all built by :func:`build_dataset`.

``build_dataset("builtin:glyphs", "train", 128)`` is the usual entry point.
:mod:`quadformer.data.procedural` holds the generated tasks (one base, one file per family:
glyphs, natural photos, shapes-textures, scenes, digits, photo patches);
:mod:`quadformer.data.real` the loaders of ImageNet-style folders, CIFAR and VOC 2007 / COCO /
CSV multi-label lists (``imagefolder:<root>``, ``cifar10:<root>``, ``voc2007:<root>``,
``coco:<root>``, ``csv:<file>``). Every data set exposes ``class_names``;
:func:`check_same_classes` compares two label spaces. ImageNet mean / std are timm's constants.
``docs/data.md`` describes the tasks and the measured properties of the natural-photo tasks.
"""

from timm.data import IMAGENET_DEFAULT_MEAN as IMAGENET_MEAN
from timm.data import IMAGENET_DEFAULT_STD as IMAGENET_STD

from .checks import check_same_classes, class_names_of
from .factory import DATASET_SCHEMES, build_dataset
from .procedural import (
    BLOCK,
    DEFAULT_SIZES,
    GENERATOR_VERSION,
    SUITE,
    SUITE_TASKS,
    SUITE_VERSION,
    BuiltinDataset,
    NaturalDataset,
    ProceduralDataset,
    Sample,
    SuiteDataset,
    TaskSpec,
    build_builtin,
    build_suite_dataset,
    builtin_task_names,
    generate,
    get_task,
    is_natural_task,
    is_suite_task,
    list_natural_tasks,
    list_suite_tasks,
    list_tasks,
    register_task,
    sample_objects,
)
from .real import (
    DIFFICULT_POLICIES,
    IMG_EXTENSIONS,
    VOC_CLASSES,
    CIFARDataset,
    COCOMultiLabel,
    CSVMultiLabel,
    ImageFolderDataset,
    VOCMultiLabel,
    create_transforms,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DATASET_SCHEMES",
    "build_dataset",
    "check_same_classes",
    "class_names_of",
    "BLOCK",
    "DEFAULT_SIZES",
    "GENERATOR_VERSION",
    "SUITE",
    "SUITE_TASKS",
    "SUITE_VERSION",
    "BuiltinDataset",
    "NaturalDataset",
    "ProceduralDataset",
    "Sample",
    "SuiteDataset",
    "TaskSpec",
    "build_builtin",
    "build_suite_dataset",
    "builtin_task_names",
    "generate",
    "get_task",
    "is_natural_task",
    "is_suite_task",
    "list_natural_tasks",
    "list_suite_tasks",
    "list_tasks",
    "register_task",
    "sample_objects",
    "DIFFICULT_POLICIES",
    "IMG_EXTENSIONS",
    "VOC_CLASSES",
    "CIFARDataset",
    "COCOMultiLabel",
    "CSVMultiLabel",
    "ImageFolderDataset",
    "VOCMultiLabel",
    "create_transforms",
]
