"""Real-image loaders: ImageNet-style folders, local CIFAR-10/100 pickles, and the
:func:`build_dataset` factory that also covers the built-in procedural tasks.

Nothing here downloads anything: every loader reads local files and says which folder and
files it expected when they are missing.
"""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from ..utils.errors import QuadformerError
from .builtin import IMAGENET_MEAN, IMAGENET_STD, BuiltinDataset, list_tasks

__all__ = [
    "IMG_EXTENSIONS",
    "create_transforms",
    "ImageFolderDataset",
    "CIFARDataset",
    "build_dataset",
    "DATASET_SCHEMES",
]

log = logging.getLogger(__name__)

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
DATASET_SCHEMES = ("builtin", "imagefolder", "cifar10", "cifar100", "voc2007", "coco", "csv")

# what a broken image file raises while being opened / decoded
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


def create_transforms(
    image_size: int | tuple[int, int],
    is_training: bool = False,
    *,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
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


def _subset_indices(n: int, max_samples: int | None, seed: int) -> np.ndarray | None:
    if max_samples is None or max_samples >= n:
        return None
    if max_samples < 0:
        raise ValueError(f"max_samples must be >= 0, got {max_samples}")
    return np.sort(np.random.default_rng(seed).permutation(n)[:max_samples])


class _ClassList:
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


class _ImageFiles:
    """Unreadable-file policy of the data sets that decode image files: a broken file is logged
    once (``logging`` warning naming the path), recorded in :attr:`skipped_paths`, never tried
    again and replaced by the next readable sample; with ``on_error="raise"``, an ``OSError``
    naming the path instead. Subclasses set ``root``, ``transform``, ``max_retries`` and
    ``skipped_paths = []`` / ``_skipped = set()``."""

    root: Path
    transform: Callable | None
    max_retries: int
    skipped_paths: list[str]
    _skipped: set[str]
    on_error = "skip"

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
        with open(path, "rb") as f:
            img = Image.open(f)
            return img.convert("RGB")  # convert() forces the full decode

    def _verified(self, paths: Sequence[str]) -> list[int]:
        """Indices of the ``paths`` whose header ``PIL.Image.verify`` accepts."""
        good = []
        for i, path in enumerate(paths):
            try:
                with Image.open(path) as im:
                    im.verify()
            except _DECODE_ERRORS as e:
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
                except _DECODE_ERRORS as e:
                    self._unreadable(path, e)
                else:
                    return (img if self.transform is None else self.transform(img)), j
            j = (j + 1) % n
        raise QuadformerError(
            f"could not read image {index} of {self.root} nor any of the next {self.max_retries - 1} "
            f"samples; {self.num_skipped} unreadable files so far (last: {self.skipped_paths[-1:]}); "
            f"check or remove those files"
        )


class ImageFolderDataset(_ClassList, _ImageFiles, Dataset):
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
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {self.root} does not exist (expected {self.root}/<class>/<image>)")
        classes = sorted(e.name for e in os.scandir(self.root) if e.is_dir() and not e.name.startswith("."))
        if not classes:
            raise FileNotFoundError(f"no class sub-folders in {self.root} (expected {self.root}/<class>/<image>)")
        self.classes = classes
        self.class_to_idx = {c: i for i, c in enumerate(classes)}
        exts = tuple(e.lower() for e in extensions)
        samples: list[tuple[str, int]] = []
        for c in classes:
            for dirpath, dirnames, filenames in os.walk(self.root / c, followlinks=True):
                dirnames.sort()
                for fn in sorted(filenames):
                    if fn.lower().endswith(exts) and not fn.startswith("."):
                        samples.append((os.path.join(dirpath, fn), self.class_to_idx[c]))
        if not samples:
            raise FileNotFoundError(
                f"no images with extensions {', '.join(exts)} under the class folders of {self.root}"
            )
        keep = _subset_indices(len(samples), max_samples, seed)
        if keep is not None:
            samples = [samples[i] for i in keep]

        self.skipped_paths: list[str] = []
        self._skipped: set[str] = set()
        if verify:
            samples = [samples[i] for i in self._verified([path for path, _ in samples])]
            if not samples:
                raise RuntimeError(f"every image under {self.root} failed verification")
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


_CIFAR_FILES = {
    "cifar10": {
        "dirs": ("cifar-10-batches-py",),
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "meta": "batches.meta",
        "names_key": "label_names",
    },
    "cifar100": {
        "dirs": ("cifar-100-python",),
        "train": ["train"],
        "test": ["test"],
        "meta": "meta",
        "names_key": "fine_label_names",
    },
}


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        d = pickle.load(f, encoding="latin1")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in d.items()}


class CIFARDataset(_ClassList, Dataset):
    """CIFAR-10 / CIFAR-100 from the local python pickle batches (no download).

    ``root`` is the extracted ``cifar-10-batches-py`` / ``cifar-100-python`` folder or its
    parent. ``split``: ``"train"`` (50k) or ``"test"``; ``"val"`` is the test set (CIFAR has
    no separate validation set). ``label="coarse"`` gives the 20 CIFAR-100 super-classes.
    Transforms as in :class:`ImageFolderDataset` (eval uses ``crop_pct=1.0``: no crop).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        variant: str = "cifar10",
        transform: Callable | None = None,
        *,
        image_size: int | tuple[int, int] | None = None,
        is_training: bool | None = None,
        label: str = "fine",
        max_samples: int | None = None,
        seed: int = 0,
        transform_kwargs: dict | None = None,
    ) -> None:
        if variant not in _CIFAR_FILES:
            raise ValueError(f"variant must be 'cifar10' or 'cifar100', got {variant!r}")
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be train, val or test, got {split!r}")
        if label not in ("fine", "coarse") or (label == "coarse" and variant == "cifar10"):
            raise ValueError(f"label must be 'fine' (or 'coarse' for cifar100), got {label!r}")
        spec = _CIFAR_FILES[variant]
        files = spec["train"] if split == "train" else spec["test"]
        root = Path(root)
        candidates = [root] + [root / d for d in spec["dirs"]]
        folder = next((c for c in candidates if all((c / f).is_file() for f in files)), None)
        if folder is None:
            raise FileNotFoundError(
                f"{variant} {split} files not found: looked in {', '.join(str(c) for c in candidates)} "
                f"for {', '.join(files)} (the python-pickle release, e.g. "
                f"{spec['dirs'][0]}/ extracted from the official tarball)"
            )
        self.root = folder
        self.variant = variant
        self.split = split
        key = "labels" if variant == "cifar10" else f"{label}_labels"
        data, labels = [], []
        for f in files:
            try:
                d = _unpickle(folder / f)
                arr = np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
                lab = np.asarray(d[key], dtype=np.int64)
            except (KeyError, ValueError, pickle.UnpicklingError, EOFError) as e:
                raise ValueError(f"{folder / f} is not a valid {variant} batch ({type(e).__name__}: {e})") from e
            if len(arr) != len(lab):
                raise ValueError(f"{folder / f}: {len(arr)} images but {len(lab)} labels")
            data.append(arr)
            labels.append(lab)
        self.data = np.ascontiguousarray(np.concatenate(data).transpose(0, 2, 3, 1))  # [N, 32, 32, 3]
        self.labels = np.concatenate(labels)
        keep = _subset_indices(len(self.labels), max_samples, seed)
        if keep is not None:
            self.data, self.labels = self.data[keep], self.labels[keep]

        n_cls = 10 if variant == "cifar10" else (100 if label == "fine" else 20)
        names = None
        meta = folder / spec["meta"]
        if meta.is_file():
            try:
                raw = _unpickle(meta)[spec["names_key"] if label == "fine" else "coarse_label_names"]
                names = [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in raw]
            except Exception as e:  # noqa: BLE001 -- meta is optional
                log.warning("could not read class names from %s (%s); using numbers", meta, e)
        self.classes = names if names and len(names) == n_cls else [f"class_{i}" for i in range(n_cls)]

        if is_training is None:
            is_training = split == "train"
        if transform is None and image_size is not None:
            kw = dict(transform_kwargs or {})
            if not is_training:
                kw.setdefault("crop_pct", 1.0)
            transform = create_transforms(image_size, is_training, **kw)
        self.transform = transform

    @property
    def targets(self) -> list[int]:
        return self.labels.tolist()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        img = Image.fromarray(self.data[index])
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.labels[index])

    def __repr__(self) -> str:
        return f"CIFARDataset({self.variant}, split={self.split!r}, images={len(self)}, root={str(self.root)!r})"


def _parse(name_or_path: str) -> tuple[str, str]:
    name = str(name_or_path)
    scheme, sep, arg = name.partition(":")
    if sep and scheme.lower() in DATASET_SCHEMES:
        return scheme.lower(), arg
    if not sep and name.lower() == "builtin":
        return "builtin", "glyphs"
    if Path(name).is_dir():
        return "imagefolder", name
    from .suite import list_suite_tasks

    raise ValueError(
        f"unknown dataset {name!r}; use builtin:<task> (tasks: {', '.join(list_tasks() + list_suite_tasks())}), "
        f"imagefolder:<root>, cifar10:<root>, cifar100:<root>, voc2007:<root>, coco:<root or json> or csv:<file.csv>"
    )


def build_dataset(
    name_or_path: str,
    split: str = "train",
    image_size: int | tuple[int, int] = 128,
    *,
    transform: Callable | str | None = "auto",
    size: int | None = None,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    verify: bool = False,
    transform_kwargs: dict | None = None,
    **kwargs: Any,
) -> Dataset:
    """Build a dataset from a spec string.

    * ``builtin:<task>`` -- :class:`~quadformer.data.builtin.BuiltinDataset` rendered at
      ``image_size`` (``size`` images; ``transform="auto"`` = none: items are already
      normalised tensors, and flips would change oriented-texture classes).
    * ``imagefolder:<root>`` -- :class:`ImageFolderDataset` on ``<root>/<split>`` (ImageNet
      layout ``train/`` + ``val/``); ``split=None`` uses ``<root>`` itself. A bare existing
      directory path means the same.
    * ``cifar10:<root>`` / ``cifar100:<root>`` -- :class:`CIFARDataset` (``val`` = test set).
    * ``builtin:<suite task>`` -- the diversity/transfer suite of :mod:`quadformer.data.suite`
      (``shapes-textures``, ``sk-digits``, ``sk-digits-hard``, ``sk-patches``, ``hue``,
      ``scenes``, ``scenes-hard``): in-memory uint8 images rendered at ``image_size`` (>= 16;
      default sizes per task when ``size`` is None); extra keywords (``output``, ``val_size``,
      ...) go to the task class; ``cache_dir`` is ignored (rendering is fast).
    * ``voc2007:<root>`` -- :class:`~quadformer.data.multilabel.VOCMultiLabel` (``split`` one of
      train / val / trainval / test; ``difficult="ignore"|"positive"|"exclude"``).
    * ``coco:<root>`` or ``coco:<instances.json>`` --
      :class:`~quadformer.data.multilabel.COCOMultiLabel` (train / val; test = val; ``year``).
    * ``csv:<file.csv>`` -- :class:`~quadformer.data.multilabel.CSVMultiLabel` (``{split}`` in the
      file name is replaced by the split; a ``split`` column filters rows).

    ``transform="auto"`` builds timm transforms for ``image_size`` (training augmentation when
    ``split == "train"``), ``None`` returns PIL images for real data. ``size`` keeps a seeded
    random subset of real data sets. Other keyword arguments go to the dataset class.
    """
    scheme, arg = _parse(name_or_path)
    if scheme == "builtin":
        task = arg or "glyphs"
        if split is None:
            raise ValueError("built-in datasets need a split: train, val or test")
        tf = None if isinstance(transform, str) and transform == "auto" else transform
        from .suite import is_suite_task, build_suite_dataset

        if is_suite_task(task):
            return build_suite_dataset(task, split, image_size, size=size, seed=seed, transform=tf, **kwargs)
        if isinstance(task, str) and task not in list_tasks():
            from .suite import list_suite_tasks

            raise ValueError(f"unknown built-in task {task!r}; available: "
                             f"{', '.join(list_tasks() + list_suite_tasks())}")
        return BuiltinDataset(task, split, size=size, image_size=image_size, seed=seed, transform=tf,
                              cache_dir=cache_dir, **kwargs)

    if not arg:
        raise ValueError(f"{scheme}: needs a folder, e.g. {scheme}:/data/{scheme}")
    if isinstance(transform, str):
        if transform != "auto":
            raise ValueError(f"transform must be a callable, None or 'auto', got {transform!r}")
        tf = None
        auto_size: int | tuple[int, int] | None = image_size
    else:
        tf, auto_size = transform, None

    if scheme in ("voc2007", "coco", "csv"):
        from .multilabel import COCOMultiLabel, CSVMultiLabel, VOCMultiLabel

        kwargs.setdefault("is_training", split in ("train", "trainval"))
        common = dict(image_size=auto_size, verify=verify, max_samples=size, seed=seed,
                      transform_kwargs=transform_kwargs)
        if scheme == "voc2007":
            return VOCMultiLabel(arg, split or "trainval", tf, **common, **kwargs)
        if scheme == "coco":
            return COCOMultiLabel(arg, split or "train", tf, **common, **kwargs)
        path = arg.replace("{split}", split) if split is not None and "{split}" in arg else arg
        return CSVMultiLabel(path, tf, split=None if path != arg else split, **common, **kwargs)

    if scheme == "imagefolder":
        root = Path(arg)
        if split is not None:
            if not (root / split).is_dir():
                raise FileNotFoundError(
                    f"imagefolder: no {split!r} folder in {root} (expected {root}/{split}/<class>/<image>; "
                    f"pass split=None to use {root} itself)"
                )
            root = root / split
        return ImageFolderDataset(root, tf, image_size=auto_size, is_training=split == "train", verify=verify,
                                  max_samples=size, seed=seed, transform_kwargs=transform_kwargs, **kwargs)

    return CIFARDataset(arg, split or "train", scheme, tf, image_size=auto_size, max_samples=size, seed=seed,
                        transform_kwargs=transform_kwargs, **kwargs)
