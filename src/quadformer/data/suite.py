"""Built-in offline suite for diversity / transfer studies (spec section 6).

One upstream pretraining task and several downstream tasks, all offline and seeded:

=================  ==========  ==========================================================  =======
name               kind        content                                                     classes
=================  ==========  ==========================================================  =======
shapes-textures    upstream    one of 8 filled shapes x one of 5 textures; colours,        40
                               position, size and rotation are nuisances
sk-digits          single      scikit-learn's 1797 8x8 digits, upsampled, random colours,  10
                               noise, small shift; fixed 1000 / 797 split
sk-digits-hard     single      the same digits, heavier noise, random scale / rotation,     10
                               clutter lines, lower contrast (fine-tuning does not saturate)
sk-patches         single      crops of scikit-image's bundled photos, label = photo;      <= 14
                               train from the left 65 %, test from the right 35 %
hue                single      upstream-style images labelled by foreground hue sextant    6
scenes             multi       2x2 grid, object per cell w.p. 0.5, 4 shapes x 4 colours    8
scenes-hard        multi       3x3 grid, overlapping / occluding objects, 6 shapes x 6     12
                               colours, grey distractors, gradients and noise
=================  ==========  ==========================================================  =======

Every data set is rendered at construction into an in-memory uint8 ``[N, H, W, 3]`` array
(:attr:`SuiteDataset.images`) with vectorised numpy (a few seconds for thousands of images).
Images come in blocks of :data:`BLOCK` consecutive indices; block ``b`` is a pure function of
``(task, split, seed, b, image_size)`` (a ``numpy`` PCG64 stream seeded by a ``SeedSequence``),
so the first ``n`` images of a larger data set equal a data set of size ``n``. Train / val / test
use disjoint seed streams; the photo- and digit-based tasks also use disjoint source material
(digit indices; left / right regions of each photo).

Nothing is ever downloaded: the digits ship with scikit-learn; the photos are read straight
from scikit-image's bundled data folder (or its local cache), and a missing photo is skipped
with a logged warning.

``build_dataset("builtin:<name>", split, image_size, size=..., seed=...)`` builds these
(see :func:`quadformer.data.folders.build_dataset`); :data:`SUITE` lists the study's tasks.
"""

from __future__ import annotations

import logging
import math
import os
from functools import lru_cache
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from .builtin import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "SUITE",
    "SUITE_TASKS",
    "SUITE_VERSION",
    "BLOCK",
    "SuiteDataset",
    "ShapesTexturesDataset",
    "HueDataset",
    "ScenesDataset",
    "ScenesHardDataset",
    "SkDigitsDataset",
    "SkDigitsHardDataset",
    "SkPatchesDataset",
    "SHAPES",
    "TEXTURES",
    "PATCH_SOURCES",
    "build_suite_dataset",
    "list_suite_tasks",
    "is_suite_task",
    "available_patch_sources",
]

log = logging.getLogger(__name__)

#: bump when the pictures change (caches keyed on it must be rebuilt)
SUITE_VERSION = 1
#: images per seed block (divisible by 6, 8, 10, 12, 40: label-balanced blocks)
BLOCK = 240
_MAGIC = 0x5017E
_SPLITS = {"train": 0, "val": 1, "test": 2}
_F = np.float32

SHAPES = ("circle", "square", "triangle", "cross", "star", "ring", "diamond", "crescent")
TEXTURES = ("hstripes", "dstripes", "checker", "dots", "solid")

#: the study's tasks: the upstream pretraining task and the downstream transfer tasks
SUITE: dict[str, Any] = {
    "upstream": "shapes-textures",
    "single_label": ["sk-digits", "sk-patches", "hue", "sk-digits-hard"],
    "multi_label": ["scenes", "scenes-hard"],
}

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


# --------------------------------------------------------------------------- helpers


def _split_code(split: str) -> int:
    try:
        return _SPLITS[split]
    except KeyError:
        raise ValueError(f"split must be one of {list(_SPLITS)}, got {split!r}") from None


def _side(image_size: int | tuple[int, int]) -> int:
    if isinstance(image_size, (tuple, list)):
        h, w = int(image_size[0]), int(image_size[1])
        if h != w:
            raise ValueError(f"suite images are square, got {h}x{w}")
    else:
        h = int(image_size)
    if h < 16:
        raise ValueError(f"suite images must be at least 16x16, got {h}x{h}")
    return h


def _chunk(side: int) -> int:
    """Images rendered at once (bounds the temporary float arrays to ~4 MB each)."""
    return max(1, (1 << 20) // (side * side))


def _grid(side: int) -> tuple[np.ndarray, np.ndarray]:
    c = np.arange(side, dtype=_F) + _F(0.5)
    return c.reshape(1, side, 1), c.reshape(1, 1, side)  # Y [1,S,1], X [1,1,S]


def hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV -> RGB (all in [0, 1]); returns ``[..., 3]`` float32."""
    h = np.asarray(h, _F) % 1.0
    s = np.asarray(s, _F)
    v = np.asarray(v, _F)
    h6 = h * 6.0
    i = np.floor(h6).astype(np.int64) % 6
    f = (h6 - np.floor(h6)).astype(_F)
    p = v * (1 - s)
    q = v * (1 - s * f)
    t = v * (1 - s * (1 - f))
    r = np.choose(i, [v, q, p, p, t, v])
    g = np.choose(i, [t, v, v, q, p, p])
    b = np.choose(i, [p, p, t, v, v, q])
    return np.stack([r, g, b], axis=-1).astype(_F)


def rgb_hue(rgb: np.ndarray) -> np.ndarray:
    """Hue in [0, 1) of ``[..., 3]`` RGB colours (0 for greys)."""
    rgb = np.asarray(rgb, np.float64)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    mx, mn = rgb.max(-1), rgb.min(-1)
    d = np.where(mx - mn > 0, mx - mn, 1.0)
    h = np.where(mx == r, ((g - b) / d) % 6, np.where(mx == g, (b - r) / d + 2, (r - g) / d + 4))
    return np.where(mx - mn > 0, h / 6.0, 0.0) % 1.0


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _balanced_labels(rng: np.random.Generator, n: int, c: int) -> np.ndarray:
    """``n`` labels, each of ``c`` classes ``n // c`` times (plus a random remainder), shuffled."""
    lab = np.arange(n) % c
    return rng.permutation(lab)


def _colour_pair(fg: np.ndarray, min_dist: float, bg_fn: Callable, tries: int = 20,
                 others: tuple[np.ndarray, ...] = ()) -> tuple[np.ndarray, np.ndarray]:
    """Backgrounds ``[n, 3]`` at least ``min_dist`` (RGB Euclidean) from the foregrounds ``fg``
    (and from every colour array in ``others``), redrawing with ``bg_fn(k)`` where too close (a
    fixed number of vectorised rounds, then the background is pushed away from ``fg``)."""
    fg = np.array(fg, _F)
    n = len(fg)
    bg = bg_fn(n)

    def dist(b):
        return np.min([np.linalg.norm(c - b, axis=1) for c in (fg, *others)], axis=0)

    for _ in range(tries):
        bad = dist(bg) < min_dist
        if not bad.any():
            break
        bg[bad] = bg_fn(int(bad.sum()))
    bad = np.linalg.norm(fg - bg, axis=1) < min_dist
    if bad.any():  # deterministic fallback: darken / lighten the background
        lum = fg[bad].mean(1, keepdims=True)
        bg[bad] = np.where(lum > 0.5, fg[bad] * 0.25, 0.75 + 0.25 * fg[bad])
    return fg.astype(_F), bg.astype(_F)


# --------------------------------------------------------------------------- shapes (SDFs)
# Shapes live in normalised coordinates (u, v): the object's radius is 1 and every shape fits
# in the unit disc. Each function returns an approximate signed distance (negative inside) in
# those units; multiplied by the radius in pixels it gives a ~1 px anti-aliased edge.


def _sdf_circle(u, v):
    return np.sqrt(u * u + v * v) - _F(0.92)


def _sdf_square(u, v):
    return np.maximum(np.abs(u), np.abs(v)) - _F(0.70)


_TRI_N = np.array([[math.cos(a), math.sin(a)] for a in (math.pi / 2, math.pi / 2 + 2 * math.pi / 3,
                                                        math.pi / 2 + 4 * math.pi / 3)], _F)


def _sdf_triangle(u, v):
    d = u * _TRI_N[0, 0] + v * _TRI_N[0, 1]
    for k in (1, 2):
        d = np.maximum(d, u * _TRI_N[k, 0] + v * _TRI_N[k, 1])
    return d - _F(0.52)


def _sdf_cross(u, v):
    au, av = np.abs(u), np.abs(v)
    return np.minimum(np.maximum(au - 0.95, av - 0.30), np.maximum(au - 0.30, av - 0.95)).astype(_F)


_STAR_W = 2 * math.pi / 5
_STAR_IN = (0.45 * math.cos(math.pi / 5), 0.45 * math.sin(math.pi / 5))
_STAR_N = np.array([_STAR_IN[1], 1.0 - _STAR_IN[0]], np.float64)
_STAR_N = (_STAR_N / np.linalg.norm(_STAR_N)).astype(_F)


def _sdf_star(u, v):
    rho = np.sqrt(u * u + v * v)
    phi = np.arctan2(v, u)
    a = np.abs(np.mod(phi + _STAR_W / 2, _STAR_W) - _STAR_W / 2)
    px, py = rho * np.cos(a), rho * np.sin(a)
    return ((px - 1.0) * _STAR_N[0] + py * _STAR_N[1]).astype(_F)


def _sdf_ring(u, v):
    return np.abs(np.sqrt(u * u + v * v) - _F(0.68)) - _F(0.30)


def _sdf_diamond(u, v):  # elongated rhombus: not a rotated square
    return ((np.abs(u) / 0.98 + np.abs(v) / 0.55 - 1.0) * 0.48).astype(_F)


def _sdf_crescent(u, v):
    return np.maximum(np.sqrt(u * u + v * v) - 0.95, 0.72 - np.sqrt((u - 0.42) ** 2 + v * v)).astype(_F)


_SDF = {
    "circle": _sdf_circle, "square": _sdf_square, "triangle": _sdf_triangle, "cross": _sdf_cross,
    "star": _sdf_star, "ring": _sdf_ring, "diamond": _sdf_diamond, "crescent": _sdf_crescent,
}


def _shape_alpha(names: tuple[str, ...], ids: np.ndarray, cy, cx, radius, theta, Y, X) -> np.ndarray:
    """Anti-aliased coverage ``[B, S, S]`` of shape ``names[ids[b]]`` centred at ``(cy, cx)``
    (pixels) with ``radius`` (pixels) rotated by ``theta``; all parameters are ``[B]``."""
    r3 = radius.reshape(-1, 1, 1).astype(_F)
    c, s = np.cos(theta).reshape(-1, 1, 1).astype(_F), np.sin(theta).reshape(-1, 1, 1).astype(_F)
    dx = X - cx.reshape(-1, 1, 1).astype(_F)
    dy = Y - cy.reshape(-1, 1, 1).astype(_F)
    u = (dx * c + dy * s) / r3
    v = (dy * c - dx * s) / r3
    sdf = np.empty(u.shape, _F)
    for k in np.unique(ids):
        m = ids == k
        sdf[m] = _SDF[names[int(k)]](u[m], v[m])
    return np.clip(0.5 - sdf * r3, 0.0, 1.0).astype(_F)


# --------------------------------------------------------------------------- textures


def _texture(ids: np.ndarray, period, phase_y, phase_x, diag_sign, Y, X) -> np.ndarray:
    """Texture mix ``t`` in [0, 1] ``[B, S, S]`` in *image* coordinates (shape rotation does
    not turn horizontal stripes into diagonal ones); a horizontal flip keeps every class."""
    B = len(ids)
    S = X.shape[-1]
    t = np.zeros((B, S, S), _F)
    p = period.reshape(-1, 1, 1).astype(_F)
    py = phase_y.reshape(-1, 1, 1).astype(_F)
    px = phase_x.reshape(-1, 1, 1).astype(_F)
    for k in np.unique(ids):
        m = ids == k
        name = TEXTURES[int(k)]
        pm, ym, xm = p[m], Y + py[m], X + px[m]
        if name == "hstripes":
            val = np.sin(2 * np.pi * ym / pm) * (pm / (2 * np.pi))
            t[m] = np.clip(0.5 + val, 0, 1)
        elif name == "dstripes":
            w = (xm + diag_sign[m].reshape(-1, 1, 1) * ym) * _F(1 / math.sqrt(2))
            val = np.sin(2 * np.pi * w / pm) * (pm / (2 * np.pi))
            t[m] = np.clip(0.5 + val, 0, 1)
        elif name == "checker":
            q = pm * _F(1.2)  # cell = 0.6 period
            val = np.sin(2 * np.pi * ym / q) * np.sin(2 * np.pi * xm / q) * (q / np.pi)
            t[m] = np.clip(0.5 + val, 0, 1)
        elif name == "dots":
            g = pm * _F(1.15)
            dy = np.mod(ym, g) - g / 2
            dx = np.mod(xm, g) - g / 2
            t[m] = np.clip(0.5 + (0.32 * g - np.sqrt(dx * dx + dy * dy)), 0, 1)
        # solid: t = 0
    return t


def _background(rng: np.random.Generator, n: int, bg: np.ndarray, amp: tuple[float, float]):
    """Per-image linear colour gradient parameters: second colour and direction."""
    bg2 = np.clip(bg + rng.normal(0, 1, (n, 3)).astype(_F) * rng.uniform(*amp, (n, 1)).astype(_F), 0, 1)
    ang = rng.uniform(0, 2 * np.pi, n).astype(_F)
    return bg2.astype(_F), ang


def _paint_background(bg, bg2, ang, Y, X, S) -> np.ndarray:
    ramp = ((X - S / 2) * np.cos(ang).reshape(-1, 1, 1) + (Y - S / 2) * np.sin(ang).reshape(-1, 1, 1)) / S
    ramp = np.clip(ramp + 0.5, 0, 1).astype(_F)[..., None]
    return bg[:, None, None, :] * (1 - ramp) + bg2[:, None, None, :] * ramp


# --------------------------------------------------------------------------- base dataset


class SuiteDataset(Dataset):
    """Base class of the suite's data sets: an in-memory uint8 ``[N, S, S, 3]`` array plus
    targets.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.
        size: number of images (default :attr:`default_sizes` of the task). For procedural
            tasks the first ``n`` images do not depend on ``size``.
        image_size: side of the square images, ``>= 16`` (default 32).
        seed: another, equally distributed draw of the task (nuisances; for the digit task the
            train / test membership is fixed by ``split_seed`` instead).
        transform: applied to the converted image.
        output: ``"normalized"`` (float ``[3, S, S]`` with ``mean`` / ``std``, default),
            ``"float"`` (``[3, S, S]`` in ``[0, 1]``), ``"uint8"`` (uint8 ``[3, S, S]`` tensor,
            unnormalised: for SSL augmentation pipelines), ``"pil"`` or ``"numpy"``
            (uint8 ``[S, S, 3]``).

    Items are ``(image, target)``; ``target`` is an ``int`` (single-label) or a float32
    multi-hot tensor ``[num_classes]`` (multi-label). Bulk access without decoding:
    :attr:`images` (read-only uint8 ``[N, S, S, 3]``) and :attr:`targets` (int64 ``[N]`` or
    float32 ``[N, C]`` numpy array).
    """

    task: str = ""
    upstream: bool = False
    multilabel: bool = False
    seed_offset: int = 0
    default_sizes: dict[str, int] = {"train": 1000, "val": 500, "test": 1000}
    description: str = ""
    OUTPUTS = ("normalized", "float", "uint8", "pil", "numpy")

    def __init__(
        self,
        split: str = "train",
        size: int | None = None,
        image_size: int | tuple[int, int] = 32,
        seed: int = 0,
        transform: Callable | None = None,
        output: str = "normalized",
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
    ) -> None:
        _split_code(split)
        if output not in self.OUTPUTS:
            raise ValueError(f"output must be one of {self.OUTPUTS}, got {output!r}")
        self.split = split
        self.side = _side(image_size)
        self.seed = int(seed)
        self.transform = transform
        self.output = output
        self.mean, self.std = tuple(mean), tuple(std)
        self._scale = (1.0 / (255.0 * np.asarray(std, _F))).reshape(3, 1, 1).astype(_F)
        self._shift = (-np.asarray(mean, _F) / np.asarray(std, _F)).reshape(3, 1, 1).astype(_F)
        self._prepare()
        n = self._default_size() if size is None else int(size)
        if n < 0:
            raise ValueError(f"size must be >= 0, got {size}")
        self._check_size(n)
        self.size = n
        self._images, self._targets = self._generate(n)
        self._images.setflags(write=False)
        self._targets.setflags(write=False)

    # -- subclass hooks
    def _prepare(self) -> None:
        """Load source material / validate options (before sizes are known)."""

    def _default_size(self) -> int:
        return int(self.default_sizes[self.split])

    def _check_size(self, n: int) -> None:
        pass

    @property
    def class_names(self) -> list[str]:
        raise NotImplementedError

    def _render_block(self, rng: np.random.Generator, block: int, keep: int) -> tuple[np.ndarray, np.ndarray]:
        """Images ``[keep, S, S, 3]`` uint8 and targets of block ``block`` (indices
        ``block * BLOCK ...``); parameters must be drawn for the full block so that the first
        ``keep`` images do not depend on ``keep``."""
        raise NotImplementedError

    # -- generation
    def _rng(self, block: int) -> np.random.Generator:
        return np.random.default_rng([_MAGIC, self.seed_offset, _split_code(self.split), self.seed, int(block)])

    def _generate(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        S = self.side
        images = np.empty((n, S, S, 3), np.uint8)
        tshape = (n, self.num_classes) if self.multilabel else (n,)
        targets = np.zeros(tshape, _F if self.multilabel else np.int64)
        for b in range(math.ceil(n / BLOCK)):
            lo = b * BLOCK
            keep = min(BLOCK, n - lo)
            im, tg = self._render_block(self._rng(b), b, keep)
            images[lo:lo + keep] = im
            targets[lo:lo + keep] = tg
        return images, targets

    # -- metadata
    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_size(self) -> tuple[int, int]:
        return self.side, self.side

    @property
    def images(self) -> np.ndarray:
        """All images, read-only uint8 ``[N, S, S, 3]`` (unnormalised RGB)."""
        return self._images

    @property
    def targets(self) -> np.ndarray:
        """All targets: int64 ``[N]`` (single-label) or float32 multi-hot ``[N, C]`` (read-only)."""
        return self._targets

    @property
    def labels(self) -> np.ndarray:
        return self._targets

    def class_counts(self) -> np.ndarray:
        """Images per class (single-label) or positives per class (multi-label)."""
        if self.multilabel:
            return self._targets.sum(0).astype(np.int64)
        return np.bincount(self._targets, minlength=self.num_classes)

    def __len__(self) -> int:
        return self.size

    # -- access
    def raw_image(self, index: int) -> np.ndarray:
        return self._images[index]

    def _convert(self, img: np.ndarray):
        if self.output == "numpy":
            return img
        if self.output == "pil":
            from PIL import Image

            return Image.fromarray(np.ascontiguousarray(img))
        chw = np.ascontiguousarray(img.transpose(2, 0, 1))
        if self.output == "uint8":
            return torch.from_numpy(chw)
        x = chw.astype(_F)
        if self.output == "float":
            x *= _F(1 / 255)
        else:
            x *= self._scale
            x += self._shift
        return torch.from_numpy(x)

    def __getitem__(self, index: int):
        index = int(index)
        if index < 0:
            index += self.size
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} images")
        x = self._convert(self._images[index])
        if self.transform is not None:
            x = self.transform(x)
        if self.multilabel:
            return x, torch.from_numpy(self._targets[index].copy())
        return x, int(self._targets[index])

    def tensors(self, output: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole split as tensors: images ``[N, 3, S, S]`` (``output`` as in the
        constructor, default this data set's; ``"uint8"`` or ``"float"`` / ``"normalized"``)
        and targets. No transform is applied."""
        output = output or self.output
        chw = torch.from_numpy(np.ascontiguousarray(self._images.transpose(0, 3, 1, 2)))
        if output == "uint8":
            x = chw
        elif output == "float":
            x = chw.float().div_(255)
        elif output == "normalized":
            x = chw.float().mul_(torch.from_numpy(self._scale)).add_(torch.from_numpy(self._shift))
        else:
            raise ValueError(f"tensors(): output must be uint8, float or normalized, got {output!r}")
        return x, torch.from_numpy(self._targets.copy())

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(task={self.task!r}, split={self.split!r}, size={self.size}, "
                f"image_size={self.side}, seed={self.seed}, output={self.output!r})")


# --------------------------------------------------------------------------- shape + texture tasks


class ShapesTexturesDataset(SuiteDataset):
    """Upstream task: one of 8 shapes (:data:`SHAPES`) filled with one of 5 textures
    (:data:`TEXTURES`), label ``shape * 5 + texture`` (40 classes, balanced per block).

    Nuisances: shape colour (and its texture colour: a shade or tint of the same hue),
    background colour and gradient, position, size (radius 26-42 % of the side), rotation (any
    angle; textures stay in image coordinates), texture phase / period, pixel noise. Horizontal
    flips keep every class (diagonal stripes of either direction are one class)."""

    task = "shapes-textures"
    upstream = True
    seed_offset = 101
    default_sizes = {"train": 6000, "val": 1000, "test": 1000}
    description = "upstream: 8 shapes x 5 textures (40 classes)"
    radius_range = (0.26, 0.42)
    noise_range = (0.01, 0.04)
    rotation_range = (0.0, 2 * np.pi)  # radians

    @property
    def class_names(self) -> list[str]:
        return [f"{s}-{t}" for s in SHAPES for t in TEXTURES]

    # foreground colour distribution: hook for the hue task
    def _fg_hsv(self, rng: np.random.Generator, labels: np.ndarray, n: int):
        return rng.uniform(0, 1, n), rng.uniform(0.15, 1.0, n), rng.uniform(0.45, 1.0, n)

    def _labels(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Returns (labels, shape ids, texture ids)."""
        y = _balanced_labels(rng, n, len(SHAPES) * len(TEXTURES))
        return y, y // len(TEXTURES), y % len(TEXTURES)

    def _render_block(self, rng, block, keep):
        S, n = self.side, BLOCK
        y, shape, tex = self._labels(rng, n)
        h, s, v = self._fg_hsv(rng, y, n)
        fg_a = hsv_to_rgb(h, s, v)

        def bg_fn(k):
            return hsv_to_rgb(rng.uniform(0, 1, k), rng.uniform(0, 0.7, k) ** 1.5, rng.uniform(0.05, 0.95, k))

        # texture colour: a shade (darker) or tint (lighter) of the foreground, same hue; the
        # background keeps its distance from both, so the silhouette stays whole
        shade = rng.uniform(0.25, 0.45, (n, 1)).astype(_F)
        tint = rng.uniform(0.55, 0.75, (n, 1)).astype(_F)
        dark = (rng.uniform(0, 1, (n, 1)) < 0.5) & (fg_a.max(1, keepdims=True) > 0.35)
        fg_b = np.where(dark, fg_a * shade, fg_a + (1 - fg_a) * tint).astype(_F)
        fg_a, bg = _colour_pair(fg_a, 0.40, bg_fn, others=(fg_b,))
        bg2, ang = _background(rng, n, bg, (0.05, 0.20))
        lo, hi = self.radius_range
        radius = (rng.uniform(lo, hi, n) * S).astype(_F)
        cy = rng.uniform(0, 1, n) * (S - 2 * radius - 2) + radius + 1
        cx = rng.uniform(0, 1, n) * (S - 2 * radius - 2) + radius + 1
        theta = rng.uniform(*self.rotation_range, n)
        period = (rng.uniform(0.16, 0.21, n) * S).astype(_F)
        phase_y = rng.uniform(0, 1, n) * period * 2
        phase_x = rng.uniform(0, 1, n) * period * 2
        diag = rng.choice(np.array([-1.0, 1.0], _F), n)
        sigma = rng.uniform(*self.noise_range, n).astype(_F)

        Y, X = _grid(S)
        out = np.empty((keep, S, S, 3), np.uint8)
        step = _chunk(S)
        for a in range(0, keep, step):
            sl = slice(a, min(keep, a + step))
            alpha = _shape_alpha(SHAPES, shape[sl], cy[sl], cx[sl], radius[sl], theta[sl], Y, X)[..., None]
            t = _texture(tex[sl], period[sl], phase_y[sl], phase_x[sl], diag[sl], Y, X)[..., None]
            fg = fg_a[sl, None, None, :] * (1 - t) + fg_b[sl, None, None, :] * t
            img = _paint_background(bg[sl], bg2[sl], ang[sl], Y, X, S)
            img += alpha * (fg - img)
            img += rng.standard_normal(img.shape, dtype=_F) * sigma[sl, None, None, None]
            out[a:sl.stop] = _to_uint8(img)
        return out, y[:keep]


class HueDataset(ShapesTexturesDataset):
    """Upstream-style images (a textured shape) labelled by the foreground hue sextant
    (``[k/6, (k+1)/6)`` of the HSV hue circle; 6 balanced classes): a nuisance-retention task
    (the upstream label ignores colour). The texture colour is a shade / tint of the same hue."""

    task = "hue"
    upstream = False
    seed_offset = 102
    default_sizes = {"train": 1200, "val": 600, "test": 1200}
    description = "foreground hue sextant of upstream-style images (nuisance retention)"
    HUES = ("red-yellow", "yellow-green", "green-cyan", "cyan-blue", "blue-magenta", "magenta-red")

    @property
    def class_names(self) -> list[str]:
        return list(self.HUES)

    def _labels(self, rng, n):
        y = _balanced_labels(rng, n, 6)
        shape = rng.integers(0, len(SHAPES), n)
        tex = rng.integers(0, len(TEXTURES), n)
        return y, shape, tex

    def _fg_hsv(self, rng, labels, n):
        h = (labels + rng.uniform(0.0, 1.0, n)) / 6.0
        h = np.minimum(h, (labels + 1) / 6.0 - 1e-4)
        return h, rng.uniform(0.55, 1.0, n), rng.uniform(0.55, 1.0, n)


# --------------------------------------------------------------------------- scenes


class ScenesDataset(SuiteDataset):
    """Multi-label scenes: a ``grid x grid`` layout, each cell holds an object with probability
    ``p_object`` (at least one object per image). Objects: :attr:`SCENE_SHAPES` x colour
    families (:attr:`FAMILIES`, hue centres ± jitter, saturated). Target = multi-hot of the
    shapes present followed by the colour families present; for overlapping layouts an object
    counts when at least ``min_visible`` of its area stays visible."""

    task = "scenes"
    multilabel = True
    seed_offset = 103
    default_sizes = {"train": 1000, "val": 500, "test": 1000}
    description = "2x2 grid, 4 shapes x 4 colour families, multi-hot (8 labels)"
    SCENE_SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
    FAMILIES: tuple[tuple[str, float], ...] = (("red", 0.0), ("yellow", 55 / 360), ("green", 120 / 360),
                                               ("blue", 225 / 360))
    DISTRACTOR_SHAPES: tuple[str, ...] = ("diamond", "crescent")
    grid = 2
    p_object = 0.5
    radius_range = (0.30, 0.42)  # fraction of the cell
    jitter = 0.06  # centre jitter, fraction of the cell (beyond what keeps the object in its cell)
    hue_jitter = 15 / 360
    noise_range = (0.01, 0.04)
    gradient = (0.03, 0.12)
    distractors = (0, 0)
    min_visible = 0.3

    @property
    def class_names(self) -> list[str]:
        return list(self.SCENE_SHAPES) + [f for f, _ in self.FAMILIES]

    def _render_block(self, rng, block, keep):
        S, n, G = self.side, BLOCK, self.grid
        K = G * G
        ns, nf = len(self.SCENE_SHAPES), len(self.FAMILIES)
        present = rng.uniform(0, 1, (n, K)) < self.p_object
        empty = ~present.any(1)
        present[empty, rng.integers(0, K, int(empty.sum()))] = True
        shape = rng.integers(0, ns, (n, K))
        fam = rng.integers(0, nf, (n, K))
        centres = np.array([h for _, h in self.FAMILIES])
        hue = centres[fam] + rng.uniform(-self.hue_jitter, self.hue_jitter, (n, K))
        col = hsv_to_rgb(hue, rng.uniform(0.65, 1.0, (n, K)), rng.uniform(0.6, 1.0, (n, K)))
        cell = S / G
        lo, hi = self.radius_range
        radius = rng.uniform(lo, hi, (n, K)) * cell
        slack = np.maximum(cell / 2 - radius - 0.5, 0)
        gy, gx = np.divmod(np.arange(K), G)
        cy = (gy + 0.5) * cell + rng.uniform(-1, 1, (n, K)) * (slack + self.jitter * cell)
        cx = (gx + 0.5) * cell + rng.uniform(-1, 1, (n, K)) * (slack + self.jitter * cell)
        theta = rng.uniform(0, 2 * np.pi, (n, K))
        order = np.argsort(rng.uniform(0, 1, (n, K)), axis=1)  # painter's order
        bg = hsv_to_rgb(rng.uniform(0, 1, n), rng.uniform(0, 0.12, n), rng.uniform(0.1, 0.9, n))
        bg2, ang = _background(rng, n, bg, self.gradient)
        bg2 = bg2.mean(1, keepdims=True).repeat(3, 1) * 0.5 + bg2 * 0.5  # keep the gradient greyish
        nd = rng.integers(self.distractors[0], self.distractors[1] + 1, n)
        D = max(self.distractors[1], 1)
        d_shape = rng.integers(0, len(self.DISTRACTOR_SHAPES), (n, D))
        d_grey = rng.uniform(0.0, 1.0, (n, D))
        d_rad = rng.uniform(lo, hi, (n, D)) * cell
        d_cy = rng.uniform(0, S, (n, D))
        d_cx = rng.uniform(0, S, (n, D))
        d_theta = rng.uniform(0, 2 * np.pi, (n, D))
        sigma = rng.uniform(*self.noise_range, n).astype(_F)

        Y, X = _grid(S)
        out = np.empty((keep, S, S, 3), np.uint8)
        targets = np.zeros((keep, ns + nf), _F)
        step = max(1, _chunk(S) // 2)
        rows = np.arange(n)[:, None]
        for a in range(0, keep, step):
            sl = slice(a, min(keep, a + step))
            m = sl.stop - a
            img = _paint_background(bg[sl], bg2[sl], ang[sl], Y, X, S)
            for d in range(self.distractors[1]):  # achromatic, unlabelled, behind the objects
                al = _shape_alpha(self.DISTRACTOR_SHAPES, d_shape[sl, d], d_cy[sl, d], d_cx[sl, d],
                                  d_rad[sl, d], d_theta[sl, d], Y, X)
                al *= (d < nd[sl]).reshape(-1, 1, 1)
                grey = d_grey[sl, d].reshape(-1, 1, 1, 1).astype(_F)
                img += al[..., None] * (grey - img)
            alphas = np.empty((K, m, S, S), _F)
            for layer in range(K):
                k = order[sl, layer]
                r = rows[sl, 0]
                al = _shape_alpha(self.SCENE_SHAPES, shape[r, k], cy[r, k], cx[r, k], radius[r, k],
                                  theta[r, k], Y, X)
                al *= present[r, k].reshape(-1, 1, 1)
                alphas[layer] = al
                img += al[..., None] * (col[r, k][:, None, None, :] - img)
            # visible coverage of each layer: own alpha times transparency of everything above it
            above = np.ones((m, S, S), _F)
            vis = np.empty((K, m), _F)
            for layer in range(K - 1, -1, -1):
                vis[layer] = (alphas[layer] * above).sum((1, 2))
                above *= 1 - alphas[layer]
            own = alphas.sum((2, 3))
            visible = (vis >= self.min_visible * np.maximum(own, 1e-6)) & (own > 0)
            r = rows[sl, 0]
            for layer in range(K):
                k = order[sl, layer]
                ok = visible[layer]
                idx = np.nonzero(ok)[0]
                targets[a + idx, shape[r[idx], k[idx]]] = 1.0
                targets[a + idx, ns + fam[r[idx], k[idx]]] = 1.0
            img += rng.standard_normal(img.shape, dtype=_F) * sigma[sl, None, None, None]
            out[a:sl.stop] = _to_uint8(img)
        return out, targets


class ScenesHardDataset(ScenesDataset):
    """Harder multi-label scenes: 3x3 grid, objects with p 0.4, larger relative size and
    centre jitter (they overlap and occlude; an object counts if >= 30 % of it stays visible),
    6 shapes x 6 colour families (12 labels), 0-2 grey distractor shapes, stronger gradients
    and noise."""

    task = "scenes-hard"
    seed_offset = 104
    default_sizes = {"train": 1500, "val": 500, "test": 1500}
    description = "3x3 grid with occlusion, 6 shapes x 6 colour families (12 labels)"
    SCENE_SHAPES = ("circle", "square", "triangle", "cross", "star", "ring")
    FAMILIES = (("red", 0.0), ("yellow", 60 / 360), ("green", 120 / 360), ("cyan", 180 / 360),
                ("blue", 240 / 360), ("magenta", 300 / 360))
    grid = 3
    p_object = 0.4
    radius_range = (0.38, 0.58)
    jitter = 0.22
    hue_jitter = 10 / 360
    noise_range = (0.03, 0.08)
    gradient = (0.08, 0.25)
    distractors = (0, 2)


# --------------------------------------------------------------------------- scikit-learn digits


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # bundled with scikit-learn, no download

    d = load_digits()
    return (d.images / 16.0).astype(_F), d.target.astype(np.int64)


def _bilinear(src: np.ndarray, sy: np.ndarray, sx: np.ndarray) -> np.ndarray:
    """Sample ``src [B, h, w]`` at fractional pixel indices ``sy, sx [B, S, S]`` (zero outside)."""
    B, h, w = src.shape
    pad = np.zeros((B, h + 2, w + 2), _F)
    pad[:, 1:-1, 1:-1] = src
    sy = np.clip(sy + 1, 0, h + 1 - 1e-4)
    sx = np.clip(sx + 1, 0, w + 1 - 1e-4)
    y0 = np.floor(sy).astype(np.int64)
    x0 = np.floor(sx).astype(np.int64)
    wy = (sy - y0).astype(_F)
    wx = (sx - x0).astype(_F)
    y1 = np.minimum(y0 + 1, h + 1)
    x1 = np.minimum(x0 + 1, w + 1)
    b = np.arange(B).reshape(-1, 1, 1)
    top = pad[b, y0, x0] * (1 - wx) + pad[b, y0, x1] * wx
    bot = pad[b, y1, x0] * (1 - wx) + pad[b, y1, x1] * wx
    return top * (1 - wy) + bot * wy


class SkDigitsDataset(SuiteDataset):
    """scikit-learn's 1797 8x8 handwritten digits, upsampled (bilinear) to the image size with
    random foreground / background colours, a colour gradient, pixel noise and a small shift.

    Fixed split: a shuffle seeded by ``split_seed`` (default 0, independent of ``seed``), the
    first 1000 are ``train`` and the remaining 797 ``test``. There is no separate validation
    pool: the transfer protocols carve validation from train; ``val_size=k`` holds out the last
    ``k`` of the 1000 train digits as a disjoint ``val`` split (then ``train`` has ``1000 - k``).
    ``size`` keeps the first ``size`` digits of the split (a random subset).
    :attr:`source_indices` are the indices into ``load_digits()``."""

    task = "sk-digits"
    seed_offset = 105
    description = "scikit-learn 8x8 digits, upsampled, coloured, noisy (10 classes)"
    n_train_pool = 1000
    # nuisance knobs
    scale_range = (0.78, 0.95)  # digit box / side
    shift = 0.08  # fraction of the side
    rotation = 0.0  # max degrees
    min_contrast = 0.45
    noise_range = (0.02, 0.08)
    gradient = (0.03, 0.15)
    clutter = (0, 0)

    def __init__(self, split: str = "train", size: int | None = None, image_size: int | tuple[int, int] = 32,
                 seed: int = 0, transform: Callable | None = None, output: str = "normalized",
                 mean=IMAGENET_MEAN, std=IMAGENET_STD, *, split_seed: int = 0, val_size: int = 0) -> None:
        self.split_seed = int(split_seed)
        self.val_size = int(val_size)
        if not 0 <= self.val_size < self.n_train_pool:
            raise ValueError(f"val_size must be in [0, {self.n_train_pool}), got {val_size}")
        super().__init__(split, size, image_size, seed, transform, output, mean, std)

    @property
    def class_names(self) -> list[str]:
        return [str(i) for i in range(10)]

    def _prepare(self) -> None:
        imgs, labels = _digits()
        perm = np.random.default_rng([_MAGIC, 0xD161, self.split_seed]).permutation(len(labels))
        ntr = self.n_train_pool - self.val_size
        if self.split == "train":
            pool = perm[:ntr]
        elif self.split == "val":
            if self.val_size == 0:
                raise ValueError(
                    f"{self.task} has no validation pool by default (fixed {self.n_train_pool}/"
                    f"{len(labels) - self.n_train_pool} train/test split): carve validation from train, "
                    f"or pass val_size=k to hold out k of the train digits as 'val'"
                )
            pool = perm[ntr:self.n_train_pool]
        else:
            pool = perm[self.n_train_pool:]
        self.source_indices = pool

    def _default_size(self) -> int:
        return len(self.source_indices)

    def _check_size(self, n: int) -> None:
        if n > len(self.source_indices):
            raise ValueError(f"{self.task} {self.split!r} has {len(self.source_indices)} digits, asked for {n}")
        self.source_indices = self.source_indices[:n]

    def _render_block(self, rng, block, keep):
        S, n = self.side, BLOCK
        imgs, labels = _digits()
        src_idx = self.source_indices[block * BLOCK: block * BLOCK + keep]

        def col(k):
            return rng.uniform(0, 1, (k, 3)).astype(_F)

        fg, bg = _colour_pair(col(n), self.min_contrast, col)
        bg2, ang = _background(rng, n, bg, self.gradient)
        scale = rng.uniform(*self.scale_range, n) * S
        rot = np.deg2rad(rng.uniform(-self.rotation, self.rotation, n))
        room = np.maximum((S - scale) / 2, 0)
        cy = S / 2 + rng.uniform(-1, 1, n) * np.minimum(self.shift * S, room + 0.05 * S)
        cx = S / 2 + rng.uniform(-1, 1, n) * np.minimum(self.shift * S, room + 0.05 * S)
        gamma = rng.uniform(0.8, 1.25, n)
        sigma = rng.uniform(*self.noise_range, n).astype(_F)
        C = max(self.clutter[1], 1)
        nclut = rng.integers(self.clutter[0], self.clutter[1] + 1, n)
        p0 = rng.uniform(0, S, (n, C, 2))
        p1 = p0 + rng.normal(0, 0.35 * S, (n, C, 2))
        cl_col = rng.uniform(0, 1, (n, C, 3)).astype(_F)
        cl_op = rng.uniform(0.3, 0.7, (n, C)).astype(_F)
        cl_w = rng.uniform(0.03, 0.06, (n, C)) * S

        Y, X = _grid(S)
        out = np.empty((keep, S, S, 3), np.uint8)
        step = _chunk(S)
        for a in range(0, keep, step):
            sl = slice(a, min(keep, a + step))
            dy = Y - cy[sl].reshape(-1, 1, 1)
            dx = X - cx[sl].reshape(-1, 1, 1)
            c, s = np.cos(rot[sl]).reshape(-1, 1, 1), np.sin(rot[sl]).reshape(-1, 1, 1)
            k = (8.0 / scale[sl]).reshape(-1, 1, 1)
            sx = (dx * c + dy * s) * k + 4.0 - 0.5
            sy = (dy * c - dx * s) * k + 4.0 - 0.5
            m = _bilinear(imgs[src_idx[sl]], sy, sx)
            m = np.clip(m * 1.25, 0, 1) ** gamma[sl].reshape(-1, 1, 1).astype(_F)
            img = _paint_background(bg[sl], bg2[sl], ang[sl], Y, X, S)
            for j in range(self.clutter[1]):  # semi-transparent line segments
                a0, a1 = p0[sl, j], p1[sl, j]
                d = a1 - a0
                L2 = np.maximum((d ** 2).sum(1), 1e-6).reshape(-1, 1, 1)
                px, py = X - a0[:, 0].reshape(-1, 1, 1), Y - a0[:, 1].reshape(-1, 1, 1)
                tt = np.clip((px * d[:, 0].reshape(-1, 1, 1) + py * d[:, 1].reshape(-1, 1, 1)) / L2, 0, 1)
                ex = px - tt * d[:, 0].reshape(-1, 1, 1)
                ey = py - tt * d[:, 1].reshape(-1, 1, 1)
                al = np.clip(cl_w[sl, j].reshape(-1, 1, 1) / 2 + 0.5 - np.sqrt(ex * ex + ey * ey), 0, 1)
                al = (al * (cl_op[sl, j] * (j < nclut[sl])).reshape(-1, 1, 1)).astype(_F)[..., None]
                img += al * (cl_col[sl, j][:, None, None, :] - img)
            img += m.astype(_F)[..., None] * (fg[sl, None, None, :] - img)
            img += rng.standard_normal(img.shape, dtype=_F) * sigma[sl, None, None, None]
            out[a:sl.stop] = _to_uint8(img)
        return out, labels[src_idx]


class SkDigitsHardDataset(SkDigitsDataset):
    """The sk-digits split with heavier nuisances: random scale (45-90 %), rotation (±25°),
    larger shifts, lower colour contrast, strong pixel noise and 1-3 clutter line segments."""

    task = "sk-digits-hard"
    seed_offset = 106
    description = "sk-digits with heavy noise, scale, rotation, clutter (10 classes)"
    scale_range = (0.45, 0.90)
    shift = 0.2
    rotation = 25.0
    min_contrast = 0.28
    noise_range = (0.08, 0.22)
    gradient = (0.1, 0.3)
    clutter = (1, 3)


# --------------------------------------------------------------------------- scikit-image photos


def _skimage_dirs() -> list[str]:
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


@lru_cache(maxsize=1)
def _load_photos() -> tuple[tuple[str, np.ndarray], ...]:
    """The available scikit-image photos as uint8 RGB arrays, in :data:`PATCH_SOURCES` order.
    Files are read directly (never through ``skimage.data.<name>()``, which may download)."""
    from PIL import Image

    dirs = _skimage_dirs()
    found = []
    for name, fn in PATCH_SOURCES.items():
        path = next((os.path.join(d, fn) for d in dirs if os.path.isfile(os.path.join(d, fn))), None)
        if path is None:
            log.warning("sk-patches: scikit-image photo %r (%s) is not bundled here; skipping it", name, fn)
            continue
        try:
            with Image.open(path) as im:
                arr = np.asarray(im.convert("RGB"), np.uint8)
        except (OSError, ValueError) as e:
            log.warning("sk-patches: cannot read %s (%s); skipping %r", path, e, name)
            continue
        found.append((name, arr))
    return tuple(found)


def available_patch_sources() -> list[str]:
    return [n for n, _ in _load_photos()]


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
        self._photos = _load_photos()
        if not self._photos:
            raise FileNotFoundError("sk-patches: none of the scikit-image photos is available offline")
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


# --------------------------------------------------------------------------- registry

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
    """``SUITE_TASKS[task](split, image_size=image_size, **kwargs)`` with a clear error for an
    unknown name. Keyword arguments: ``size``, ``seed``, ``transform``, ``output``, ``mean``,
    ``std`` (and ``split_seed`` / ``val_size`` for the digit tasks)."""
    try:
        cls = SUITE_TASKS[task]
    except KeyError:
        raise ValueError(f"unknown suite task {task!r}; available: {', '.join(SUITE_TASKS)}") from None
    return cls(split, image_size=image_size, **kwargs)
