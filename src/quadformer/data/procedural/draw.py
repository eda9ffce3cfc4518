"""Vectorised numpy drawing helpers shared by the procedural task families.

Everything works on float32 images in ``[0, 1]`` and takes an explicit
``numpy.random.Generator`` where randomness is involved, so a picture is a pure function of its
generator state. Shapes are signed-distance functions (SDFs) in normalised coordinates: the
object's radius is 1 and every shape fits in the unit disc; multiplied by the radius in pixels the
distance gives a ~1 px anti-aliased edge (Inigo Quilez's 2D distance functions are the usual
reference for this way of drawing).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

__all__ = [
    "F32",
    "pixel_grid",
    "chunk_size",
    "hsv_to_rgb",
    "rgb_hue",
    "balanced_labels",
    "colour_pair",
    "gradient_params",
    "paint_gradient",
    "SDF_SHAPES",
    "shape_alpha",
    "add_pixel_noise",
    "to_uint8",
]

F32 = np.float32
_F = F32


def pixel_grid(side: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``Y [1, S, 1]`` and ``X [1, 1, S]`` of a square image."""
    c = np.arange(side, dtype=_F) + _F(0.5)
    return c.reshape(1, side, 1), c.reshape(1, 1, side)


def chunk_size(side: int) -> int:
    """Images rendered at once (bounds the temporary float arrays to ~4 MB each)."""
    return max(1, (1 << 20) // (side * side))


def hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """HSV -> RGB (all in [0, 1], hue taken modulo 1) as ``[..., 3]`` float32, through
    :func:`skimage.color.hsv2rgb` (identical to the hand-written version this replaced)."""
    from skimage.color import hsv2rgb

    hsv = np.stack(np.broadcast_arrays(np.asarray(h, _F) % _F(1.0), np.asarray(s, _F), np.asarray(v, _F)), -1)
    flat = hsv.reshape(1, -1, 3)
    return hsv2rgb(flat, channel_axis=-1).astype(_F).reshape(hsv.shape)


def rgb_hue(rgb: np.ndarray) -> np.ndarray:
    """Hue in [0, 1) of ``[..., 3]`` RGB colours (0 for greys)."""
    rgb = np.asarray(rgb, np.float64)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    mx, mn = rgb.max(-1), rgb.min(-1)
    d = np.where(mx - mn > 0, mx - mn, 1.0)
    h = np.where(mx == r, ((g - b) / d) % 6, np.where(mx == g, (b - r) / d + 2, (r - g) / d + 4))
    return np.where(mx - mn > 0, h / 6.0, 0.0) % 1.0


def balanced_labels(rng: np.random.Generator, n: int, c: int) -> np.ndarray:
    """``n`` labels, each of ``c`` classes ``n // c`` times (plus a remainder), shuffled."""
    return rng.permutation(np.arange(n) % c)


def colour_pair(fg: np.ndarray, min_dist: float, bg_fn: Callable, tries: int = 20,
                others: tuple[np.ndarray, ...] = ()) -> tuple[np.ndarray, np.ndarray]:
    """Backgrounds ``[n, 3]`` at least ``min_dist`` (RGB Euclidean) from the foregrounds ``fg``
    (and from every colour array in ``others``), redrawing with ``bg_fn(k)`` where too close (a
    fixed number of vectorised rounds, then the background is pushed away from ``fg``)."""
    fg = np.array(fg, _F)
    bg = bg_fn(len(fg))

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


def gradient_params(rng: np.random.Generator, n: int, bg: np.ndarray, amp: tuple[float, float]):
    """Per-image linear colour gradient: a second colour near ``bg`` and a direction."""
    bg2 = np.clip(bg + rng.normal(0, 1, (n, 3)).astype(_F) * rng.uniform(*amp, (n, 1)).astype(_F), 0, 1)
    ang = rng.uniform(0, 2 * np.pi, n).astype(_F)
    return bg2.astype(_F), ang


def paint_gradient(bg, bg2, ang, Y, X, S) -> np.ndarray:
    """Backgrounds ``[B, S, S, 3]`` blending ``bg`` into ``bg2`` along direction ``ang``."""
    ramp = ((X - S / 2) * np.cos(ang).reshape(-1, 1, 1) + (Y - S / 2) * np.sin(ang).reshape(-1, 1, 1)) / S
    ramp = np.clip(ramp + 0.5, 0, 1).astype(_F)[..., None]
    return bg[:, None, None, :] * (1 - ramp) + bg2[:, None, None, :] * ramp


# --------------------------------------------------------------------------- shapes (SDFs)


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


#: shape name -> signed distance ``f(u, v)`` in units of the object's radius
SDF_SHAPES: dict[str, Callable] = {
    "circle": _sdf_circle, "square": _sdf_square, "triangle": _sdf_triangle, "cross": _sdf_cross,
    "star": _sdf_star, "ring": _sdf_ring, "diamond": _sdf_diamond, "crescent": _sdf_crescent,
}


def shape_alpha(names: tuple[str, ...], ids: np.ndarray, cy, cx, radius, theta, Y, X) -> np.ndarray:
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
        sdf[m] = SDF_SHAPES[names[int(k)]](u[m], v[m])
    return np.clip(0.5 - sdf * r3, 0.0, 1.0).astype(_F)


# --------------------------------------------------------------------------- noise and quantisation

_NOISE_BANK: np.ndarray | None = None


def _noise_bank() -> np.ndarray:
    global _NOISE_BANK
    if _NOISE_BANK is None:
        _NOISE_BANK = np.random.default_rng(1234).standard_normal((384, 384, 3), dtype=_F)
    return _NOISE_BANK


def _noise_window(rng: np.random.Generator, shape: tuple[int, ...], std: float) -> np.ndarray:
    h, w = shape[:2]
    if h <= 256 and w <= 256:
        oy, ox = int(rng.integers(0, 385 - h)), int(rng.integers(0, 385 - w))
        return _noise_bank()[oy:oy + h, ox:ox + w] * _F(std)
    return rng.standard_normal(shape, dtype=_F) * _F(std)


def add_pixel_noise(img: np.ndarray, rng: np.random.Generator, std: float) -> None:
    """Add white noise in place. Images up to 256 px take a random window of a fixed noise
    bank (fast and deterministic); larger ones draw fresh noise."""
    if std > 0:
        img += _noise_window(rng, img.shape, std)


def to_uint8(img: np.ndarray, rng: np.random.Generator | None = None, noise_std: float = 0.0) -> np.ndarray:
    """Quantise a ``[0, 1]`` float image (any leading shape) to uint8, rounding to nearest,
    optionally adding white noise of ``noise_std`` (in ``[0, 1]`` units) first, in one pass."""
    x = img * _F(255.0)
    if noise_std > 0 and rng is not None:
        x += _noise_window(rng, img.shape, 255.0 * noise_std)
    x += _F(0.5)
    np.clip(x, 0.0, 255.0, out=x)
    return x.astype(np.uint8)
