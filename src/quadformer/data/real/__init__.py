"""Real-image loaders: ImageNet-style folders (:mod:`.folders`), local CIFAR pickles
(:mod:`.cifar`), VOC 2007 / COCO / CSV multi-label lists (:mod:`.multilabel`), on the shared
base of :mod:`.base` (class list, unreadable-file policy, seeded subsets, timm transforms)."""

from .base import ClassList, ImageFiles, create_transforms, subset_indices
from .cifar import CIFARDataset
from .folders import IMG_EXTENSIONS, ImageFolderDataset
from .multilabel import DIFFICULT_POLICIES, VOC_CLASSES, COCOMultiLabel, CSVMultiLabel, MultiLabelFiles, VOCMultiLabel

__all__ = [
    "ClassList",
    "ImageFiles",
    "create_transforms",
    "subset_indices",
    "CIFARDataset",
    "IMG_EXTENSIONS",
    "ImageFolderDataset",
    "DIFFICULT_POLICIES",
    "VOC_CLASSES",
    "COCOMultiLabel",
    "CSVMultiLabel",
    "MultiLabelFiles",
    "VOCMultiLabel",
]
