"""The photos bundled with scikit-image, and the ``sk-patches`` task (label = source photo).

Files are read straight from scikit-image's bundled data folder (or its local cache), never
through ``skimage.data.<name>()``, which may download; a missing photo is skipped with a logged
warning.
"""

from __future__ import annotations

import logging
import os
from functools import lru_cache

import numpy as np

from ...utils.errors import QuadformerError
from ...utils.images import open_rgb
from .base import BLOCK, SuiteDataset

__all__ = ["PATCH_SOURCES", "skimage_dirs", "find_photo", "read_photo", "load_photos", "available_patch_sources", "SkPatchesDataset"]

log = logging.getLogger(__name__)

# scikit-image photos: function name -> bundled file name
PATCH_SOURCES: dict[str, str] = {
    "astronaut": "astronaut.png",
    "camera": "camera.png",
    "coffee": "coffee.png",
    "chelsea": "chelsea.png",
    "coins": "coins.png",
    "moon": "moon.png",
    "page": "page.png",
    "text": "text.png",
    "brick": "brick.png",
    "grass": "grass.png",
    "gravel": "gravel.png",
    "rocket": "rocket.jpg",
    "hubble_deep_field": "hubble_deep_field.jpg",
    "immunohistochemistry": "ihc.png",
}


def skimage_dirs() -> list[str]:
    dirs = []
    try:
        import skimage.data as skd

        dirs.append(os.path.dirname(skd.__file__))  # files bundled with the wheel
        cache = getattr(skd, "data_dir", None)  # pooch cache (already fetched files only)
        if cache:
            dirs.append(str(cache))
    except Exception as e:  # noqa: BLE001 -- scikit-image missing or broken
        log.warning("scikit-image data unavailable (%s)", e)
    return dirs


def find_photo(filename: str) -> str | None:
    """Path of a bundled scikit-image file, or ``None`` when this installation lacks it."""
    return next((os.path.join(d, filename) for d in skimage_dirs() if os.path.isfile(os.path.join(d, filename))),
                None)


def read_photo(path: str) -> np.ndarray:
    """A photo file as uint8 RGB ``[H, W, 3]`` (grey photos repeated to 3 channels)."""
    return np.asarray(open_rgb(path), np.uint8)


@lru_cache(maxsize=4)
def load_named_photos(sources: tuple[tuple[str, str], ...], task: str) -> tuple[tuple[str, np.ndarray], ...]:
    """The available photos of ``sources`` (``(name, file)`` pairs) as uint8 RGB arrays, in that
    order; a photo this installation lacks or cannot read is skipped with a warning naming ``task``."""
    found = []
    for name, fn in sources:
        path = find_photo(fn)
        if path is None:
            log.warning("%s: scikit-image photo %r (%s) is not bundled here; skipping it", task, name, fn)
            continue
        try:
            arr = read_photo(path)
        except (OSError, ValueError) as e:
            log.warning("%s: cannot read %s (%s); skipping %r", task, path, e, name)
            continue
        found.append((name, arr))
    return tuple(found)


def load_photos() -> tuple[tuple[str, np.ndarray], ...]:
    """The available scikit-image photos of :data:`PATCH_SOURCES`, in that order."""
    return load_named_photos(tuple(PATCH_SOURCES.items()), "sk-patches")


def available_patch_sources() -> list[str]:
    return [n for n, _ in load_photos()]


class SkPatchesDataset(SuiteDataset):
    """Crops of scikit-image's bundled photos (:data:`PATCH_SOURCES`), label = source photo.

    ``train`` and ``val`` crops lie inside the left 65 % of each photo (disjoint seed streams),
    ``test`` crops inside the right 35 %. A crop is square, its side 20-40 % of the photo height
    (capped by the region's width), resized (antialiased bilinear) to the image size. Grey
    photos are repeated to 3 channels; a photo missing from the installation is skipped with a
    logged warning. Indices interleave the classes, so any prefix is balanced; defaults are
    80 / 20 / 40 crops per class. :attr:`crop_boxes` holds each crop's ``(x0, y0, x1, y1)`` in
    source-photo pixels and :attr:`source_shapes` each class's photo ``(H, W)``."""

    task = "sk-patches"
    seed_offset = 107
    description = "crops of scikit-image photos, label = photo (train left 65 %, test right 35 %)"
    per_class = {"train": 80, "val": 20, "test": 40}
    split_x = 0.65
    crop_range = (0.20, 0.40)

    @property
    def class_names(self) -> list[str]:
        return [n for n, _ in self._photos]

    def _prepare(self) -> None:
        self._photos = load_photos()
        if not self._photos:
            raise QuadformerError("sk-patches: none of the scikit-image photos is available offline; reinstall scikit-image")
        self.source_shapes = np.array([p.shape[:2] for _, p in self._photos], np.int64)
        self._boxes: list[np.ndarray] = []

    def _default_size(self) -> int:
        return self.per_class[self.split] * len(self._photos)

    def _generate(self, n):
        images, targets = super()._generate(n)
        self.crop_boxes = np.concatenate(self._boxes)[:n] if self._boxes else np.zeros((0, 4))
        del self._boxes
        return images, targets

    def _render_block(self, rng, block, keep):
        from PIL import Image

        S, n, C = self.side, BLOCK, len(self._photos)
        label = (block * BLOCK + np.arange(n)) % C
        H = self.source_shapes[label, 0].astype(np.float64)
        W = self.source_shapes[label, 1].astype(np.float64)
        if self.split == "test":
            rx0, rx1 = W * self.split_x, W
        else:
            rx0, rx1 = np.zeros_like(W), W * self.split_x
        side = np.minimum(rng.uniform(*self.crop_range, n) * H, np.minimum(rx1 - rx0, H))
        x0 = rx0 + rng.uniform(0, 1, n) * (rx1 - rx0 - side)
        y0 = rng.uniform(0, 1, n) * (H - side)
        boxes = np.stack([x0, y0, x0 + side, y0 + side], 1)
        out = np.empty((keep, S, S, 3), np.uint8)
        pil = [None] * C
        for i in range(keep):
            c = int(label[i])
            if pil[c] is None:
                pil[c] = Image.fromarray(self._photos[c][1])
            out[i] = np.asarray(pil[c].resize((S, S), Image.BILINEAR, box=tuple(boxes[i])))
        self._boxes.append(boxes[:keep])
        return out, label[:keep]
