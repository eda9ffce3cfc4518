"""Multi-label scenes: objects on a grid, target = the shapes and colour families present.

``scenes`` (8 labels): 2x2 grid, 4 shapes x 4 colour families. ``scenes-hard`` (12 labels):
3x3 grid with overlap and occlusion, 6 shapes x 6 colour families, grey distractors.
"""

from __future__ import annotations

import numpy as np

from .base import BLOCK, SuiteDataset
from .draw import chunk_size, gradient_params, hsv_to_rgb, paint_gradient, pixel_grid, shape_alpha, to_uint8

__all__ = ["ScenesDataset", "ScenesHardDataset"]

_F = np.float32


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
        bg2, ang = gradient_params(rng, n, bg, self.gradient)
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

        Y, X = pixel_grid(S)
        out = np.empty((keep, S, S, 3), np.uint8)
        targets = np.zeros((keep, ns + nf), _F)
        step = max(1, chunk_size(S) // 2)
        rows = np.arange(n)[:, None]
        for a in range(0, keep, step):
            sl = slice(a, min(keep, a + step))
            m = sl.stop - a
            img = paint_gradient(bg[sl], bg2[sl], ang[sl], Y, X, S)
            for d in range(self.distractors[1]):  # achromatic, unlabelled, behind the objects
                al = shape_alpha(self.DISTRACTOR_SHAPES, d_shape[sl, d], d_cy[sl, d], d_cx[sl, d],
                                  d_rad[sl, d], d_theta[sl, d], Y, X)
                al *= (d < nd[sl]).reshape(-1, 1, 1)
                grey = d_grey[sl, d].reshape(-1, 1, 1, 1).astype(_F)
                img += al[..., None] * (grey - img)
            alphas = np.empty((K, m, S, S), _F)
            for layer in range(K):
                k = order[sl, layer]
                r = rows[sl, 0]
                al = shape_alpha(self.SCENE_SHAPES, shape[r, k], cy[r, k], cx[r, k], radius[r, k],
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
            out[a:sl.stop] = to_uint8(img)
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
