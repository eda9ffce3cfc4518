"""Natural-photo tasks: small detail-carrying plates on crops of real colour photos.

The glyph tasks' smooth scenes make the cheapest scorer perfect; these tasks put the same kind of
class-carrying object on real photos, whose own texture (fur, hair, foliage, metal) competes for
the scorer's attention, as in a user's data.

* **Backgrounds**: windows of scikit-image's bundled colour photos (:data:`NATURAL_PHOTOS`), at
  a few scales, randomly flipped, with a small brightness / contrast jitter. ``train`` and
  ``val`` windows lie inside the left :data:`SPLIT_X` of each photo, ``test`` windows inside the
  rest, so no background pixel of a test image is seen in training.
* **Class objects**: the glyph family's micro-texture plates (10 classes: stripe orientation,
  checker, rings, ... at a 2.4-3.6 px period; see :mod:`.plates`), 12-18 px, random colours,
  envelopes and small rotations, their detail at 25-45 % of the glyph task's contrast, blended
  at 80-100 % opacity. The texture is below the Nyquist limit of a 2x down-scale: a uniform grid
  of 64 tokens at 128 px (each 16-px patch seen at 8 px) loses the class, 8-px patches keep it.
* **Distractors** (never the class): detail-rich decoy plates of the other glyph families (thin
  outlines, seven-segment digits, dice pips), blank plates (same envelope and mean colour as a
  class plate, no detail) and 2-4 characters of matplotlib's bundled DejaVu Sans Bold font
  (9-16 px, contrasting colours).

Together with the photos' own texture they draw a detail-seeking scorer away from the class:
at N=64 (128 px, patches 8..32) pixel-blur puts about 21 % of the class objects' area into
8-px patches, the random scorer 15 %, the mask itself 100 % (``benchmarks/scorer_quality.py``).

Tasks (names for ``build_dataset("builtin:<name>", ...)``)::

    natural            single label: 1-2 plates of one class, fresh images (any size)
    natural-multi      1-3 distinct classes per image, multi-hot target
    natural-3k         fixed-size: the first 3000 train images of ``natural`` (at most 3000;
                       val / test: the first 500 / 1000 of natural's by default)
    natural-multi-3k   the same for ``natural-multi``

``ds.render(i, return_mask=True)`` gives a :class:`~quadformer.data.procedural.base.Sample`
with ``mask`` (coverage of the class objects) and ``distractor_mask`` (decoy and blank plates,
characters), float32 ``[H, W]`` in ``[0, 1]``; :meth:`NaturalDataset.background_box` gives the
source photo and box of an image's background.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ...utils.errors import QuadformerError
from . import plates as P
from .base import RenderedDataset, Sample, sample_labels
from .draw import to_uint8
from .photos import PATCH_SOURCES, load_named_photos

__all__ = [
    "NATURAL_PHOTOS",
    "NATURAL_VERSION",
    "SPLIT_X",
    "NaturalTask",
    "NATURAL_TASKS",
    "list_natural_tasks",
    "is_natural_task",
    "NaturalDataset",
    "glyph_bitmaps",
]

log = logging.getLogger(__name__)

#: bump when the pictures change (part of the cache key)
NATURAL_VERSION = 2
#: scikit-image's colour photos used as backgrounds: name -> bundled file
NATURAL_PHOTOS: dict[str, str] = {
    "astronaut": PATCH_SOURCES["astronaut"],
    "chelsea": PATCH_SOURCES["chelsea"],
    "coffee": PATCH_SOURCES["coffee"],
    "rocket": PATCH_SOURCES["rocket"],
    "motorcycle": "motorcycle_left.png",
    "immunohistochemistry": PATCH_SOURCES["immunohistochemistry"],
}
#: train / val backgrounds come from x < SPLIT_X * width of each photo, test from the rest
SPLIT_X = 0.65
_SCALES = (1.0, 0.75, 0.5)
_CHARS = "ABDEFGHKMNPRSTUVWXYZabdeghkmnpqrstuwxyz23456789"
_FONT_PX = tuple(range(9, 17))
_MAGIC = 0x9A7E
_DECOY_FAMILIES = tuple(P.get_family(n) for n in ("lines", "digits", "dice"))


@dataclass(frozen=True)
class NaturalTask:
    """A natural-photo task: ``instances`` plates (single) or distinct classes (multi) per
    image; ``decoys`` detail plates of other families, ``blanks`` blank plates and ``chars``
    font characters as distractors; ``contrast`` scales the class plates' detail;
    ``fixed_train`` caps the train split (the fixed-size mode)."""

    name: str
    multilabel: bool
    seed_offset: int
    instances: tuple[int, int]
    blanks: tuple[int, int] = (0, 1)
    decoys: tuple[int, int] = (1, 3)
    chars: tuple[int, int] = (2, 4)
    contrast: tuple[float, float] = (0.25, 0.45)
    plate_size: tuple[float, float] = (12.0, 18.0)
    fixed_train: int | None = None
    default_sizes: tuple[int, int, int] = (10000, 2000, 2000)
    description: str = ""


NATURAL_TASKS: dict[str, NaturalTask] = {
    t.name: t
    for t in (
        NaturalTask("natural", False, 8000, (1, 2), description="micro-texture plates on photos, 10 classes"),
        NaturalTask("natural-multi", True, 9000, (1, 3), blanks=(0, 1),
                    description="1-3 micro-texture classes per photo, multi-hot"),
        NaturalTask("natural-3k", False, 8000, (1, 2), fixed_train=3000, default_sizes=(3000, 500, 1000),
                    description="fixed 3000 training images of natural"),
        NaturalTask("natural-multi-3k", True, 9000, (1, 3), blanks=(0, 1), fixed_train=3000,
                    default_sizes=(3000, 500, 1000), description="fixed 3000 training images of natural-multi"),
    )
}


def list_natural_tasks() -> list[str]:
    return list(NATURAL_TASKS)


def is_natural_task(name: str) -> bool:
    return name in NATURAL_TASKS


# --------------------------------------------------------------------------- precomputed material


def _photos() -> tuple[tuple[str, np.ndarray], ...]:
    found = load_named_photos(tuple(NATURAL_PHOTOS.items()), "natural")
    if not found:
        raise QuadformerError("natural: none of scikit-image's bundled colour photos is available; "
                              "reinstall scikit-image")
    return found


@lru_cache(maxsize=8)
def _bank(test: bool, h: int, w: int) -> tuple[tuple[np.ndarray, ...], ...]:
    """Per photo, its split region resized to each usable scale (float32 ``[rh, rw, 3]``): a
    background is then a plain window of one of them. The region is cut before resizing, so
    no pixel of the other region leaks in."""
    from PIL import Image

    out = []
    for _, photo in _photos():
        ph, pw = photo.shape[:2]
        cut = int(round(pw * SPLIT_X))
        region = photo[:, cut:] if test else photo[:, :cut]
        rh, rw = region.shape[:2]
        scales = [s for s in _SCALES if rh * s >= h and rw * s >= w] or [max(h / rh, w / rw)]
        im = Image.fromarray(np.ascontiguousarray(region))
        levels = []
        for s in scales:
            size = (max(w, int(round(rw * s))), max(h, int(round(rh * s))))
            arr = np.asarray(im.resize(size, Image.LANCZOS), np.float32) * np.float32(1 / 255)
            arr.setflags(write=False)
            levels.append(arr)
        out.append(tuple(levels))
    return tuple(out)


def _font_path() -> str:
    import matplotlib

    return os.path.join(matplotlib.get_data_path(), "fonts", "ttf", "DejaVuSans-Bold.ttf")


@lru_cache(maxsize=1)
def glyph_bitmaps() -> tuple[np.ndarray, ...]:
    """Coverage bitmaps (float32, square, zero-padded) of every character of the distractor
    set at every font size, rendered once from matplotlib's bundled DejaVu Sans Bold."""
    from PIL import Image, ImageDraw, ImageFont

    out = []
    for px in _FONT_PX:
        font = ImageFont.truetype(_font_path(), px)
        for ch in _CHARS:
            canvas = Image.new("L", (3 * px, 3 * px), 0)
            ImageDraw.Draw(canvas).text((px, px // 2), ch, fill=255, font=font)
            a = np.asarray(canvas, np.float32) / 255
            ys, xs = np.nonzero(a > 0)
            a = a[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
            s = max(a.shape) + 2
            sq = np.zeros((s, s), np.float32)
            oy, ox = (s - a.shape[0]) // 2, (s - a.shape[1]) // 2
            sq[oy:oy + a.shape[0], ox:ox + a.shape[1]] = a
            sq.setflags(write=False)
            out.append(sq)
    return tuple(out)


# --------------------------------------------------------------------------- data set


class NaturalDataset(RenderedDataset):
    """A natural-photo task (:data:`NATURAL_TASKS`) as a map-style torch ``Dataset``.

    Args:
        task: ``"natural"``, ``"natural-multi"``, ``"natural-3k"`` or ``"natural-multi-3k"``.
        split: ``"train"``, ``"val"`` or ``"test"`` (disjoint seed streams; test backgrounds
            from a disjoint region of each photo).
        size: number of images (default per task and split; at most 3000 for the train split
            of the fixed-size tasks).
        image_size: int or ``(H, W)``, each >= 32 (default 128); object sizes are in pixels.
        seed, transform, cache_dir, output, mean, std: as in
            :class:`~quadformer.data.procedural.glyphs.BuiltinDataset`.

    Augment with care: a flip swaps the ``dstripes`` and ``astripes`` classes and a 90-degree
    rotation ``hstripes`` and ``vstripes``; resizing changes the 2.4-3.6 px texture period the
    classes are drawn at (a down-scale removes it). Colour jitter, small translations and
    erasing are label-safe.
    """

    stream_tag = _MAGIC
    version = NATURAL_VERSION
    default_task = "natural"
    family = P.get_family("microtex")

    def _bind_task(self, task: str, split: str, size: int | None) -> int:
        if task not in NATURAL_TASKS:
            raise QuadformerError(f"unknown natural-photo task {task!r}; available: {', '.join(NATURAL_TASKS)}")
        self.spec = NATURAL_TASKS[task]
        self.seed_offset = self.spec.seed_offset
        cap = self.spec.fixed_train
        if split == "train" and cap is not None and size is not None and int(size) > cap:
            raise QuadformerError(f"builtin:{task} has {cap} training images, asked for {size}; "
                                  f"use builtin:{task.replace('-3k', '')} for more")
        return dict(zip(("train", "val", "test"), self.spec.default_sizes))[split]

    @property
    def class_names(self) -> list[str]:
        return list(self.family.class_names)

    def _labels(self, index: int):
        mode = "multi" if self.spec.multilabel else "single"
        return sample_labels(self.stream, index, self.family.num_classes, mode, self.spec.instances)

    def target_of(self, index: int):
        return self._labels(index)[1]

    def _background_params(self, rng: np.random.Generator) -> tuple[int, int, int, int, bool, float, float]:
        bank = _bank(self.split == "test", self.height, self.width)
        p = int(rng.integers(len(bank)))
        k = int(rng.integers(len(bank[p])))
        lh, lw = bank[p][k].shape[:2]
        y0 = int(rng.integers(0, lh - self.height + 1))
        x0 = int(rng.integers(0, lw - self.width + 1))
        flip = bool(rng.random() < 0.5)
        gain, bias = float(rng.uniform(0.8, 1.15)), float(rng.uniform(-0.06, 0.06))
        return p, k, y0, x0, flip, gain, bias

    def background_box(self, index: int) -> tuple[str, tuple[float, float, float, float]]:
        """Source photo name and ``(x0, y0, x1, y1)`` box, in that photo's pixels, of the
        background of image ``index``."""
        _, _, rng = self._labels(index)
        p, k, y0, x0, _, _, _ = self._background_params(rng)
        photos = _photos()
        ph, pw = photos[p][1].shape[:2]
        cut = int(round(pw * SPLIT_X))
        off, rw = (cut, pw - cut) if self.split == "test" else (0, cut)
        lh, lw = _bank(self.split == "test", self.height, self.width)[p][k].shape[:2]
        sy, sx = ph / lh, rw / lw
        return photos[p][0], (off + x0 * sx, y0 * sy, off + (x0 + self.width) * sx, (y0 + self.height) * sy)

    def render(self, index: int, return_mask: bool = False, objects: bool = True) -> Sample:
        """The :class:`~quadformer.data.procedural.base.Sample` of image ``index``; with
        ``objects=False`` only its background (no objects drawn, empty masks)."""
        h, w = self.height, self.width
        classes, target, rng = self._labels(index)  # rendering continues this stream
        p, k, y0, x0, flip, gain, bias = self._background_params(rng)
        img = _bank(self.split == "test", h, w)[p][k][y0:y0 + h, x0:x0 + w]
        if flip:
            img = img[:, ::-1]
        img = img * np.float32(gain) + np.float32(bias)
        if not objects:
            empty = np.zeros((h, w), np.float32) if return_mask else None
            return Sample(to_uint8(img), target, empty, empty)

        spec = self.spec
        n_blank = int(rng.integers(spec.blanks[0], spec.blanks[1] + 1))
        n_decoy = int(rng.integers(spec.decoys[0], spec.decoys[1] + 1))
        n_char = int(rng.integers(spec.chars[0], spec.chars[1] + 1))
        items: list[tuple[str, int | None]] = ([("class", c) for c in classes] + [("blank", None)] * n_blank
                                               + [("decoy", None)] * n_decoy + [("char", None)] * n_char)
        items = [items[i] for i in rng.permutation(len(items))]
        glyphs = glyph_bitmaps()
        cap = max(8.0, min(h, w) / 2 - 2)
        drawn: list[P.Drawn] = []
        radii: list[float] = []
        for kind, cls in items:
            if kind == "char":
                a = glyphs[int(rng.integers(len(glyphs)))]
                colour = rng.uniform(0.0, 1.0, 3).astype(np.float32)
                drawn.append(P.Drawn(np.broadcast_to(colour, a.shape + (3,)), a))
                radii.append(0.5 * (a.shape[0] - 2))
                continue
            d = min(float(rng.uniform(*spec.plate_size)), cap)
            if kind == "decoy":  # fine detail of another family: thin outlines, digits or pips
                fam = _DECOY_FAMILIES[int(rng.integers(len(_DECOY_FAMILIES)))]
                obj = fam.draw(int(rng.integers(fam.num_classes)), rng, d)
            else:
                obj = self.family.draw(cls, rng, d)
                if kind == "class":  # weaker detail: photo texture competes with it
                    mean = obj.rgb.mean((0, 1), keepdims=True)
                    obj.rgb = mean + np.float32(rng.uniform(*spec.contrast)) * (obj.rgb - mean)
            obj.alpha *= np.float32(rng.uniform(0.8, 1.0))
            drawn.append(obj)
            radii.append(d / 2)
        centres = P.place_objects(rng, h, w, radii)

        mask = np.zeros((h, w), np.float32) if return_mask else None
        dmask = np.zeros((h, w), np.float32) if return_mask else None
        for (kind, _), obj, (cy, cx) in zip(items, drawn, centres):
            s = obj.alpha.shape[0]
            if kind == "char":  # a colour that stands out from the local background
                yy, xx = int(round(cy)), int(round(cx))
                local = img[max(0, yy - s // 2):yy + s // 2 + 1, max(0, xx - s // 2):xx + s // 2 + 1].mean((0, 1))
                col = np.where(local > 0.5, obj.rgb[0, 0] * 0.45, 0.55 + 0.45 * obj.rgb[0, 0]).astype(np.float32)
                obj = P.Drawn(np.broadcast_to(col, obj.rgb.shape), obj.alpha)
            P.composite(img, obj, int(round(cy)) - s // 2, int(round(cx)) - s // 2,
                        mask if kind == "class" else dmask)
        return Sample(to_uint8(img), target, mask, dmask)
