"""Handwritten digits: scikit-learn's 1797 8x8 digits, upsampled, coloured and noisy.

Nothing is downloaded: the digits ship with scikit-learn. The train / test membership is a
fixed split of the 1797 digits, so no digit is seen in both.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable

import numpy as np
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from ...utils.errors import QuadformerError
from .base import BLOCK, SuiteDataset
from .draw import chunk_size, colour_pair, gradient_params, paint_gradient, pixel_grid, to_uint8

__all__ = ["SkDigitsDataset", "SkDigitsHardDataset"]

_F = np.float32


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
                 mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, *, split_seed: int = 0, val_size: int = 0) -> None:
        self.split_seed = int(split_seed)
        self.val_size = int(val_size)
        if not 0 <= self.val_size < self.n_train_pool:
            raise QuadformerError(f"val_size must be in [0, {self.n_train_pool}), got {val_size}")
        super().__init__(split, size, image_size, seed, transform, output, mean, std)

    @property
    def class_names(self) -> list[str]:
        return [str(i) for i in range(10)]

    def _prepare(self) -> None:
        imgs, labels = _digits()
        perm = np.random.default_rng([self.stream_tag, 0xD161, self.split_seed]).permutation(len(labels))
        ntr = self.n_train_pool - self.val_size
        if self.split == "train":
            pool = perm[:ntr]
        elif self.split == "val":
            if self.val_size == 0:
                raise QuadformerError(
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
            raise QuadformerError(f"{self.task} {self.split!r} has {len(self.source_indices)} digits, asked for {n}")
        self.source_indices = self.source_indices[:n]

    def _render_block(self, rng, block, keep):
        S, n = self.side, BLOCK
        imgs, labels = _digits()
        src_idx = self.source_indices[block * BLOCK: block * BLOCK + keep]

        def col(k):
            return rng.uniform(0, 1, (k, 3)).astype(_F)

        fg, bg = colour_pair(col(n), self.min_contrast, col)
        bg2, ang = gradient_params(rng, n, bg, self.gradient)
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

        Y, X = pixel_grid(S)
        out = np.empty((keep, S, S, 3), np.uint8)
        step = chunk_size(S)
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
            img = paint_gradient(bg[sl], bg2[sl], ang[sl], Y, X, S)
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
            out[a:sl.stop] = to_uint8(img)
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
