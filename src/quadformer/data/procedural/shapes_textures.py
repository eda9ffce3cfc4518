"""Shapes and textures: the suite's upstream pretraining task and the hue-retention task.

``shapes-textures`` (upstream, 40 classes): one of 8 filled shapes x one of 5 textures; colours,
position, size and rotation are nuisances. ``hue`` (6 classes): upstream-style images labelled
by the foreground hue sextant (the upstream label ignores colour).
"""

from __future__ import annotations

import math

import numpy as np

from .base import BLOCK, SuiteDataset
from .draw import (
    balanced_labels,
    chunk_size,
    colour_pair,
    gradient_params,
    hsv_to_rgb,
    paint_gradient,
    pixel_grid,
    shape_alpha,
    to_uint8,
)

__all__ = ["SHAPES", "TEXTURES", "ShapesTexturesDataset", "HueDataset"]

_F = np.float32

SHAPES = ("circle", "square", "triangle", "cross", "star", "ring", "diamond", "crescent")
TEXTURES = ("hstripes", "dstripes", "checker", "dots", "solid")


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
        y = balanced_labels(rng, n, len(SHAPES) * len(TEXTURES))
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
        fg_a, bg = colour_pair(fg_a, 0.40, bg_fn, others=(fg_b,))
        bg2, ang = gradient_params(rng, n, bg, (0.05, 0.20))
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

        Y, X = pixel_grid(S)
        out = np.empty((keep, S, S, 3), np.uint8)
        step = chunk_size(S)
        for a in range(0, keep, step):
            sl = slice(a, min(keep, a + step))
            alpha = shape_alpha(SHAPES, shape[sl], cy[sl], cx[sl], radius[sl], theta[sl], Y, X)[..., None]
            t = _texture(tex[sl], period[sl], phase_y[sl], phase_x[sl], diag[sl], Y, X)[..., None]
            fg = fg_a[sl, None, None, :] * (1 - t) + fg_b[sl, None, None, :] * t
            img = paint_gradient(bg[sl], bg2[sl], ang[sl], Y, X, S)
            img += alpha * (fg - img)
            img += rng.standard_normal(img.shape, dtype=_F) * sigma[sl, None, None, None]
            out[a:sl.stop] = to_uint8(img)
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
        y = balanced_labels(rng, n, 6)
        shape = rng.integers(0, len(SHAPES), n)
        tex = rng.integers(0, len(TEXTURES), n)
        return y, shape, tex

    def _fg_hsv(self, rng, labels, n):
        h = (labels + rng.uniform(0.0, 1.0, n)) / 6.0
        h = np.minimum(h, (labels + 1) / 6.0 - 1e-4)
        return h, rng.uniform(0.55, 1.0, n), rng.uniform(0.55, 1.0, n)
