"""Real multi-label loaders: PASCAL VOC 2007, COCO (instances JSON) and CSV lists.

Each is a map-style torch ``Dataset`` of ``(image, target)`` where ``target`` is a float32
multi-hot tensor ``[num_classes]``; they expose ``num_classes``, ``multilabel = True``,
``class_names`` and ``targets`` (a float32 ``[N, C]`` numpy array, no image decoding).
Transforms follow :class:`~quadformer.data.real.folders.ImageFolderDataset`: ``transform`` is a
callable on the RGB PIL image; if it is ``None`` and ``image_size`` is given, timm transforms are
built; with neither, the PIL image is returned.

Unreadable images are handled like :class:`ImageFolderDataset`: a logged warning naming the
path, recorded in :attr:`skipped_paths`, replaced by the next readable sample
(``on_error="skip"``, default) -- or an ``OSError`` naming the path (``on_error="raise"``).
Nothing here downloads anything; a missing folder or file raises :class:`~quadformer.utils.errors.QuadformerError` naming
the path and the expected layout.
"""

from __future__ import annotations

import csv
import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ...utils.errors import QuadformerError
from .base import ClassList, ImageFiles

__all__ = [
    "VOC_CLASSES",
    "DIFFICULT_POLICIES",
    "MultiLabelFiles",
    "VOCMultiLabel",
    "COCOMultiLabel",
    "CSVMultiLabel",
]

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)
DIFFICULT_POLICIES = ("ignore", "positive", "exclude")


class MultiLabelFiles(ClassList, ImageFiles, Dataset):
    """Base class: a list of image paths with a float32 multi-hot matrix.

    Subclasses set ``self.root``, ``self.classes``, ``self.paths`` (list of str) and
    ``self._targets`` (float32 ``[N, C]``), then call :meth:`_finish`; every loader takes the
    loading options of :class:`~quadformer.data.real.base.ImageFiles`."""

    multilabel = True
    paths: list[str]
    _targets: np.ndarray

    # -- metadata
    @property
    def targets(self) -> np.ndarray:
        """float32 multi-hot ``[N, C]``."""
        return self._targets

    @property
    def samples(self) -> list[tuple[str, np.ndarray]]:
        return list(zip(self.paths, self._targets))

    def class_counts(self) -> np.ndarray:
        return self._targets.sum(0).astype(np.int64)

    row_arrays = ("_targets",)

    def _finish(self, transform: Callable | None, training_default: bool, keep_arrays: Sequence[str] = (),
                **options: Any) -> None:
        self._targets = np.asarray(self._targets, np.float32).reshape(len(self.paths), len(self.classes))
        super()._finish(transform, training_default, keep_arrays, **options)

    def __getitem__(self, index: int):
        if not self.paths:
            raise IndexError("empty dataset")
        img, j = self._load(index, len(self.paths), self.paths.__getitem__)
        return img, torch.from_numpy(self._targets[j].copy())

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, images={len(self)}, classes={self.num_classes})"


# --------------------------------------------------------------------------- VOC


def _voc_root(root: Path, year: str) -> Path:
    """``root`` may be ``VOCdevkit``, ``VOCdevkit/VOC<year>`` or the folder holding ``VOCdevkit``."""
    candidates = [root, root / f"VOC{year}", root / "VOCdevkit" / f"VOC{year}"]
    for c in candidates:
        if (c / "Annotations").is_dir() and (c / "ImageSets" / "Main").is_dir():
            return c
    if not root.exists():
        raise QuadformerError(
            f"VOC root {root} does not exist (expected VOCdevkit/ or VOCdevkit/VOC{year}/ holding "
            f"Annotations/, ImageSets/Main/ and JPEGImages/)"
        )
    raise QuadformerError(
        f"no VOC{year} layout found: looked in {', '.join(str(c) for c in candidates)} for Annotations/ and "
        f"ImageSets/Main/ (expected VOCdevkit/VOC{year}/{{Annotations,ImageSets/Main,JPEGImages}})"
    )


def parse_voc_xml(path: str | os.PathLike, classes: Sequence[str] = VOC_CLASSES) -> list[tuple[int, bool]]:
    """``(class index, difficult)`` per ``<object>`` of a VOC annotation file."""
    index = {c: i for i, c in enumerate(classes)}
    try:
        tree = ET.parse(path)
    except (ET.ParseError, OSError) as e:
        raise QuadformerError(f"cannot parse VOC annotation {path} ({type(e).__name__}: {e})") from e
    out = []
    for obj in tree.getroot().iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in index:
            raise QuadformerError(f"{path}: unknown VOC class {name!r} (known: {', '.join(classes)})")
        diff = (obj.findtext("difficult") or "0").strip()
        out.append((index[name], diff not in ("0", "", "false", "False")))
    return out


class VOCMultiLabel(MultiLabelFiles):
    """PASCAL VOC 2007 image-level multi-label classification (20 classes).

    Args:
        root: ``VOCdevkit``, ``VOCdevkit/VOC2007`` or the folder holding ``VOCdevkit``.
        split: ``"train"``, ``"val"``, ``"trainval"`` or ``"test"``
            (``ImageSets/Main/<split>.txt``; the usual protocol trains on trainval, tests on test).
        difficult: how objects flagged ``<difficult>1</difficult>`` count:

            * ``"ignore"`` (default): a difficult object does not make its class positive; the
              class is positive only if a non-difficult instance exists. The (image, class)
              pairs that have *only* difficult instances are flagged in :attr:`difficult_mask`
              (so evaluation can skip them, as the VOC devkit does).
            * ``"positive"``: difficult objects count like the others.
            * ``"exclude"``: images with a difficult-only class (any ``difficult_mask`` entry)
              are dropped; the remaining targets are unambiguous.
        year: ``"2007"`` (the layout works for other VOC years too).
        Other keywords: the loading options of :class:`~quadformer.data.real.base.ImageFiles`.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "trainval",
        transform: Callable | None = None,
        *,
        difficult: str = "ignore",
        year: str | int = "2007",
        **options: Any,
    ) -> None:
        if difficult not in DIFFICULT_POLICIES:
            raise QuadformerError(f"difficult must be one of {DIFFICULT_POLICIES}, got {difficult!r}")
        if split not in ("train", "val", "trainval", "test"):
            raise QuadformerError(f"VOC split must be train, val, trainval or test, got {split!r}")
        year = str(year)
        self.root = _voc_root(Path(root), year)
        self.split, self.difficult, self.year = split, difficult, year
        self.classes = list(VOC_CLASSES)
        list_file = self.root / "ImageSets" / "Main" / f"{split}.txt"
        if not list_file.is_file():
            raise QuadformerError(f"VOC split list {list_file} not found (expected one image id per line)")
        ids = [ln.split()[0] for ln in list_file.read_text().splitlines() if ln.strip()]
        img_dir = self.root / "JPEGImages"
        if not img_dir.is_dir():
            raise QuadformerError(f"VOC image folder {img_dir} not found (expected JPEGImages/<id>.jpg)")
        C = len(self.classes)
        targets = np.zeros((len(ids), C), np.float32)
        mask = np.zeros((len(ids), C), bool)
        for i, image_id in enumerate(ids):
            xml = self.root / "Annotations" / f"{image_id}.xml"
            if not xml.is_file():
                raise QuadformerError(f"VOC annotation {xml} not found (listed in {list_file})")
            clear = np.zeros(C, bool)
            hard = np.zeros(C, bool)
            for c, diff in parse_voc_xml(xml, self.classes):
                (hard if diff else clear)[c] = True
            if difficult == "positive":
                targets[i] = clear | hard
            else:
                targets[i] = clear
                mask[i] = hard & ~clear
        self.image_ids = ids
        self.paths = [str(img_dir / f"{i}.jpg") for i in ids]
        self._targets = targets
        self.difficult_mask = mask
        if difficult == "exclude":
            keep = np.nonzero(~mask.any(1))[0]
            self._select(keep, ("image_ids", "difficult_mask"))
        self._finish(transform, split in ("train", "trainval"), ("image_ids", "difficult_mask"), **options)


# --------------------------------------------------------------------------- COCO


def _coco_paths(root: Path, split: str, year: str, image_dir: str | os.PathLike | None) -> tuple[Path, Path]:
    if root.suffix.lower() == ".json":
        ann = root
        if not ann.is_file():
            raise QuadformerError(f"COCO annotation file {ann} not found")
        if image_dir is not None:
            imgs = Path(image_dir)
        else:
            stem = ann.stem.split("_")[-1]  # instances_val2014 -> val2014
            cands = [ann.parent / stem, ann.parent.parent / stem, ann.parent / "images", ann.parent]
            imgs = next((c for c in cands if c.is_dir() and c != ann.parent), None) or ann.parent
        if not imgs.is_dir():
            raise QuadformerError(f"COCO image folder {imgs} not found (images listed in {ann})")
        return ann, imgs
    if not root.is_dir():
        raise QuadformerError(
            f"COCO root {root} does not exist (expected {root}/annotations/instances_{split}{year}.json and "
            f"{root}/{split}{year}/, or pass the annotation JSON itself)"
        )
    ann = root / "annotations" / f"instances_{split}{year}.json"
    if not ann.is_file():
        raise QuadformerError(
            f"COCO annotation file {ann} not found (expected {root}/annotations/instances_{split}{year}.json)"
        )
    imgs = Path(image_dir) if image_dir is not None else root / f"{split}{year}"
    if not imgs.is_dir():
        raise QuadformerError(f"COCO image folder {imgs} not found (expected {root}/{split}{year}/<file_name>)")
    return ann, imgs


class COCOMultiLabel(MultiLabelFiles):
    """COCO image-level multi-label classification from an instances JSON (80 categories).

    Args:
        root: the COCO folder (``<root>/annotations/instances_<split><year>.json`` and
            ``<root>/<split><year>/``) or a direct path to an instances JSON (images then in
            ``image_dir``, or a sibling / parent folder named after the JSON's split, e.g.
            ``val2014/``).
        split: ``"train"`` or ``"val"``; ``"test"`` means ``"val"`` (COCO's test images have no
            public annotations; multi-label COCO is evaluated on val).
        year: 2014 (default) or 2017.
        keep_empty: keep images without annotations as all-negative (default) or drop them.
        include_crowd: count ``iscrowd`` annotations (default True).

    Classes are the JSON's categories in category-id order (:attr:`category_ids`); images are
    in image-id order.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        transform: Callable | None = None,
        *,
        year: str | int = 2014,
        image_dir: str | os.PathLike | None = None,
        keep_empty: bool = True,
        include_crowd: bool = True,
        **options: Any,
    ) -> None:
        if split == "test":
            split = "val"
        if split not in ("train", "val"):
            raise QuadformerError(f"COCO split must be train or val (test = val), got {split!r}")
        ann_file, img_dir = _coco_paths(Path(root), split, str(year), image_dir)
        self.root, self.annotation_file, self.image_dir, self.split = img_dir, ann_file, img_dir, split
        try:
            with open(ann_file, encoding="utf-8") as f:
                data = json.load(f)
            cats = sorted(data["categories"], key=lambda c: int(c["id"]))
            images = sorted(data["images"], key=lambda im: int(im["id"]))
            anns = data.get("annotations", [])
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise QuadformerError(f"{ann_file} is not valid JSON ({e})") from e
        except (KeyError, TypeError, ValueError) as e:
            raise QuadformerError(f"{ann_file} is not a COCO instances file (needs 'images' and 'categories'; {e})") from e
        self.category_ids = [int(c["id"]) for c in cats]
        self.classes = [str(c.get("name", c["id"])) for c in cats]
        cat_index = {cid: i for i, cid in enumerate(self.category_ids)}
        row = {}
        paths = []
        for i, im in enumerate(images):
            if "file_name" not in im:
                raise QuadformerError(f"{ann_file}: image {im.get('id')} has no file_name")
            row[int(im["id"])] = i
            paths.append(str(img_dir / im["file_name"]))
        targets = np.zeros((len(images), len(cats)), np.float32)
        for a in anns:
            if not include_crowd and a.get("iscrowd", 0):
                continue
            try:
                r = row[int(a["image_id"])]
            except KeyError:
                raise QuadformerError(f"{ann_file}: annotation {a.get('id')} refers to unknown image {a.get('image_id')}") from None
            try:
                targets[r, cat_index[int(a["category_id"])]] = 1.0
            except KeyError:
                raise QuadformerError(
                    f"{ann_file}: annotation {a.get('id')} has unknown category_id {a.get('category_id')}"
                ) from None
        self.image_ids = np.array([int(im["id"]) for im in images], np.int64)
        self.paths = paths
        self._targets = targets
        if not keep_empty:
            self._select(np.nonzero(targets.any(1))[0], ("image_ids",))
        self._finish(transform, split == "train", ("image_ids",), **options)


# --------------------------------------------------------------------------- CSV

_PATH_COLUMNS = ("path", "image", "file", "filename", "file_name", "image_path", "img")
_TRUE = {"1", "1.0", "true", "yes", "y", "t"}
_FALSE = {"0", "0.0", "false", "no", "n", "f", "", "-1"}


def _read_classes(classes: Sequence[str] | str | os.PathLike) -> list[str]:
    if isinstance(classes, (str, os.PathLike)):
        p = Path(classes)
        if not p.is_file():
            raise QuadformerError(f"class list {p} not found (expected one class name per line)")
        return [ln.strip() for ln in p.read_text().splitlines() if ln.strip()]
    return [str(c) for c in classes]


class CSVMultiLabel(MultiLabelFiles):
    """Multi-label images listed in a CSV file (with a header row).

    Two layouts, detected from the header:

    * ``path,labels`` -- a path column and a ``labels`` column of class names joined by ``;``
      (``separator``); an empty cell means no positive label. The classes are ``classes`` (a
      list or a text file with one name per line) or else the sorted union of the names seen;
      with a given list, an unknown name raises ``QuadformerError`` naming the line and the value.
    * ``path,<class 1>,<class 2>,...`` -- one-hot columns (``0``/``1``, also ``true``/``false``,
      empty = 0); the header gives the classes (``classes`` may select / reorder them).

    The path column is ``path_column`` or the first of ``path, image, file, filename,
    file_name, image_path, img`` (else the first column). Relative paths are resolved against
    ``image_root`` (default: the CSV's folder). An optional ``split`` column filters rows when
    ``split`` is given (rows of a CSV without one are all used).
    """

    def __init__(
        self,
        csv_file: str | os.PathLike,
        transform: Callable | None = None,
        *,
        split: str | None = None,
        classes: Sequence[str] | str | os.PathLike | None = None,
        path_column: str | None = None,
        labels_column: str = "labels",
        separator: str = ";",
        image_root: str | os.PathLike | None = None,
        **options: Any,
    ) -> None:
        csv_path = Path(csv_file)
        if not csv_path.is_file():
            raise QuadformerError(
                f"CSV file {csv_path} not found (expected a header row with a path column and either a "
                f"'{labels_column}' column of '{separator}'-joined class names or 0/1 columns per class)"
            )
        self.csv_file = csv_path
        self.root = Path(image_root) if image_root is not None else csv_path.parent
        if not self.root.is_dir():
            raise QuadformerError(f"image root {self.root} for {csv_path} does not exist")
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            try:
                header = [h.strip() for h in next(reader)]
            except StopIteration:
                raise QuadformerError(f"{csv_path} is empty (expected a header row)") from None
            rows = [(reader.line_num, r) for r in reader if any(cell.strip() for cell in r)]
        if len(set(header)) != len(header):
            raise QuadformerError(f"{csv_path}: duplicate column names in the header {header}")
        lower = [h.lower() for h in header]
        if path_column is not None:
            if path_column not in header:
                raise QuadformerError(f"{csv_path}: no column {path_column!r} (header: {header})")
            pcol = header.index(path_column)
        else:
            pcol = next((lower.index(c) for c in _PATH_COLUMNS if c in lower), 0)
        scol = lower.index("split") if "split" in lower else None
        for ln, r in rows:
            if len(r) != len(header):
                raise QuadformerError(f"{csv_path} line {ln}: {len(r)} fields, the header has {len(header)}")
        self.split = split

        given = _read_classes(classes) if classes is not None else None
        if labels_column in header:
            self.format = "labels"
            lcol = header.index(labels_column)
            names_per_row = [[s.strip() for s in r[lcol].split(separator) if s.strip()] for _, r in rows]
            if given is None:  # union over the whole file (all splits share the class list)
                self.classes = sorted({n for names in names_per_row for n in names})
            else:
                self.classes = list(given)
            if split is not None and scol is not None:
                sel = [i for i, (_, r) in enumerate(rows) if r[scol].strip() == split]
                rows, names_per_row = [rows[i] for i in sel], [names_per_row[i] for i in sel]
            index = {c: i for i, c in enumerate(self.classes)}
            targets = np.zeros((len(rows), len(self.classes)), np.float32)
            for i, ((ln, _), names) in enumerate(zip(rows, names_per_row)):
                for n in names:
                    if n not in index:
                        raise QuadformerError(
                            f"{csv_path} line {ln}: unknown class {n!r} in column '{labels_column}' "
                            f"(known classes: {', '.join(self.classes)})"
                        )
                    targets[i, index[n]] = 1.0
        else:
            self.format = "onehot"
            cols = [j for j in range(len(header)) if j != pcol and j != scol]
            if not cols:
                raise QuadformerError(
                    f"{csv_path}: no label columns (header {header}); expected a '{labels_column}' column or "
                    f"one 0/1 column per class"
                )
            if given is not None:
                missing = [c for c in given if c not in header]
                if missing:
                    raise QuadformerError(f"{csv_path}: classes {missing} have no column (header: {header})")
                cols = [header.index(c) for c in given]
            self.classes = [header[j] for j in cols]
            if split is not None and scol is not None:
                rows = [(ln, r) for ln, r in rows if r[scol].strip() == split]
            targets = np.zeros((len(rows), len(cols)), np.float32)
            for i, (ln, r) in enumerate(rows):
                for k, j in enumerate(cols):
                    v = r[j].strip().lower()
                    if v in _TRUE:
                        targets[i, k] = 1.0
                    elif v not in _FALSE:
                        raise QuadformerError(
                            f"{csv_path} line {ln}: column {header[j]!r} has value {r[j]!r}; expected 0 or 1"
                        )
        if not self.classes:
            raise QuadformerError(f"{csv_path}: no classes found")
        self.paths = []
        for ln, r in rows:
            p = r[pcol].strip()
            if not p:
                raise QuadformerError(f"{csv_path} line {ln}: empty path in column {header[pcol]!r}")
            self.paths.append(str(Path(p) if os.path.isabs(p) else self.root / p))
        self._targets = targets
        self._finish(transform, split in ("train", "trainval"), (), **options)
