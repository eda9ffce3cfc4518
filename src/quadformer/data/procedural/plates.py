"""Scenes and small object plates of the glyph task family (:mod:`.glyphs`).

Everything here works on float32 ``[H, W, 3]`` images in ``[0, 1]`` and takes an explicit
``numpy.random.Generator``, so a picture is a pure function of its generator state.

Two kinds of content are drawn:

* **Scenes** (:func:`render_scene`): smooth gradients, large soft blobs, low-frequency noise,
  large soft-edged distractor shapes, long waves. All of it is low-frequency: it survives a
  2x down-scale almost unchanged and carries little "detail lost by blurring".
* **Objects** (:class:`ObjectFamily` subclasses): small (10-20 px) plates whose class lies in
  fine detail -- stripe orientation at a 2.4-3.2 px period, 1-px strokes, 1-px pips. A plate's
  envelope shape, colours, size, phase and (small) rotation are nuisances. Each family also
  draws *blanks*: plates with the same envelope and mean colour but no detail, which are the
  same as real objects once the image is down-scaled 2x.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .draw import F32

__all__ = [
    "Drawn",
    "SceneStyle",
    "SCENE_STYLES",
    "render_scene",
    "smooth_field",
    "ObjectFamily",
    "FAMILIES",
    "get_family",
    "place_objects",
    "composite",
]

_F = F32


# --------------------------------------------------------------------------- scenes


def _gauss_basis(n: int, cells: int, rng: np.random.Generator) -> np.ndarray:
    """``[n, cells]`` row-normalised Gaussian interpolation weights (a smooth partition of unity)."""
    step = n / cells
    centres = (np.arange(cells, dtype=_F) + 0.5 + rng.uniform(-0.3, 0.3)) * step
    pos = np.arange(n, dtype=_F) + 0.5
    k = np.exp(-0.5 * ((pos[:, None] - centres[None, :]) / (0.7 * step)) ** 2).astype(_F)
    k /= k.sum(axis=1, keepdims=True)
    return k


def smooth_field(rng: np.random.Generator, h: int, w: int, cells: int, channels: int = 3) -> np.ndarray:
    """Low-frequency noise ``[h, w, channels]`` with zero mean and unit-ish std: a coarse
    random grid (about ``cells`` nodes along the short side) interpolated with Gaussian kernels,
    so it is infinitely smooth (no kinks that would look like detail)."""
    short = min(h, w)
    cy = max(2, round(cells * h / short))
    cx = max(2, round(cells * w / short))
    grid = rng.standard_normal((cy, cx, channels), dtype=_F)
    ky = _gauss_basis(h, cy, rng)
    kx = _gauss_basis(w, cx, rng)
    # explicit broadcasting instead of matmul (no BLAS thread pools for these tiny products)
    tmp = (ky[:, :, None, None] * grid[None]).sum(1)  # [h, cx, ch]
    out = (tmp[:, None, :, :] * kx[None, :, :, None]).sum(2)  # [h, w, ch]
    std = float(out.std()) + 1e-6
    return out / std


@dataclass(frozen=True)
class SceneStyle:
    """Knobs of a procedural background. Ranges are ``(low, high)`` sampled uniformly."""

    name: str
    gradient: float = 0.25  # amplitude of a linear colour gradient
    noise_amp: float = 0.12  # amplitude of low-frequency noise
    noise_cells: tuple[int, int] = (3, 6)
    blobs: tuple[int, int] = (2, 5)  # number of large Gaussian blobs
    blob_sigma: tuple[float, float] = (0.08, 0.22)  # as a fraction of the short side
    shapes: tuple[int, int] = (0, 2)  # large soft-edged distractor shapes
    shape_size: tuple[float, float] = (0.2, 0.45)  # half-extent as a fraction of the short side
    waves: tuple[int, int] = (0, 0)  # long sinusoidal waves (period >= 1/3 of the short side)
    pixel_noise: float = 0.0  # std of white sensor noise, added after the objects
    saturation: float = 1.0  # 0 = grey scenes, 1 = full random colours


SCENE_STYLES: dict[str, SceneStyle] = {
    s.name: s
    for s in (
        SceneStyle("clutter", gradient=0.25, noise_amp=0.12, blobs=(2, 5), shapes=(1, 3), pixel_noise=0.008),
        SceneStyle("smooth", gradient=0.35, noise_amp=0.06, blobs=(1, 3), shapes=(0, 0), saturation=0.6),
        SceneStyle("noisy", gradient=0.15, noise_amp=0.18, noise_cells=(4, 8), blobs=(0, 2), shapes=(0, 1),
                   pixel_noise=0.02),
        SceneStyle("waves", gradient=0.2, noise_amp=0.06, blobs=(0, 2), shapes=(0, 2), waves=(1, 3),
                   pixel_noise=0.008, saturation=0.8),
    )
}


def _random_colour(rng: np.random.Generator, saturation: float = 1.0) -> np.ndarray:
    grey = rng.uniform(0.15, 0.85)
    tint = rng.uniform(-0.25, 0.25, size=3) * saturation
    return np.clip(grey + tint, 0.0, 1.0).astype(_F)


@lru_cache(maxsize=64)
def _cubic_taps(n_out: int, n_in: int, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and weights ``[4, n_out]`` of Keys-cubic (a=-0.5) interpolation from samples at
    the pixel centres of a ``factor``-times coarser grid (edges replicated)."""
    src = (np.arange(n_out) + 0.5) / factor - 0.5
    base = np.floor(src).astype(int)
    idx, wts = [], []
    for k in range(-1, 3):
        t = np.abs(src - (base + k))
        wgt = np.where(t <= 1, 1.5 * t**3 - 2.5 * t**2 + 1, np.where(t < 2, -0.5 * t**3 + 2.5 * t**2 - 4 * t + 2, 0))
        idx.append(np.clip(base + k, 0, n_in - 1))
        wts.append(wgt)
    wts_a = np.array(wts)
    wts_a /= wts_a.sum(0, keepdims=True)
    return np.array(idx), wts_a.astype(_F)


def _upsample_cubic(img: np.ndarray, h: int, w: int, factor: int) -> np.ndarray:
    """Separable cubic up-sampling of ``[lh, lw, C]`` to ``[h, w, C]`` (elementwise numpy only:
    tiny BLAS calls spin up thread pools and are slower than this on a busy machine)."""
    iy, wy = _cubic_taps(h, img.shape[0], factor)
    ix, wx = _cubic_taps(w, img.shape[1], factor)
    chw = np.ascontiguousarray(img.transpose(2, 0, 1))  # long contiguous inner loops
    tmp = chw[:, :, ix[0]] * wx[0]
    for k in range(1, 4):
        tmp += chw[:, :, ix[k]] * wx[k]
    out = tmp[:, iy[0]] * wy[0][:, None]
    for k in range(1, 4):
        out += tmp[:, iy[k]] * wy[k][:, None]
    return np.ascontiguousarray(out.transpose(1, 2, 0))


def render_scene(style: SceneStyle | str, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A low-frequency cluttered background ``[h, w, 3]`` float32 in ``[0, 1]``.

    The scene is evaluated on a 4x coarser grid (2x below 64 px) and brought to full size with
    a cubic interpolation matrix: it holds no detail finer than a few pixels by construction,
    and rendering costs a fraction of a millisecond."""
    if isinstance(style, str):
        style = SCENE_STYLES[style]
    f = 4 if min(h, w) >= 64 else 2
    lh, lw = -(-h // f), -(-w // f)
    short = float(min(h, w))
    # full-resolution coordinates of the coarse samples
    ys = ((np.arange(lh, dtype=_F) + 0.5) * f - 0.5)[:, None]
    xs = ((np.arange(lw, dtype=_F) + 0.5) * f - 0.5)[None, :]
    img = np.empty((lh, lw, 3), dtype=_F)
    img[...] = _random_colour(rng, style.saturation)

    # linear gradient in a random direction
    ang = rng.uniform(0, 2 * math.pi)
    ramp = ((ys - h / 2) * _F(math.sin(ang)) + (xs - w / 2) * _F(math.cos(ang))) / _F(short)
    gcol = (style.saturation * rng.uniform(-1, 1, size=3) + (1 - style.saturation) * rng.uniform(-1, 1))
    img += ramp[..., None] * (gcol * style.gradient).astype(_F)

    if style.noise_amp > 0:
        cells = int(rng.integers(style.noise_cells[0], style.noise_cells[1] + 1))
        field = smooth_field(rng, lh, lw, cells, 3)
        if style.saturation < 1:  # pull the channels towards their mean (less colourful)
            field = style.saturation * field + (1 - style.saturation) * field.mean(-1, keepdims=True)
        img += _F(style.noise_amp) * field

    # large soft Gaussian blobs (separable)
    for _ in range(int(rng.integers(style.blobs[0], style.blobs[1] + 1))):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        sy = rng.uniform(*style.blob_sigma) * short
        sx = sy * rng.uniform(0.6, 1.6)
        gy = np.exp(-0.5 * ((ys[:, 0] - cy) / sy) ** 2).astype(_F)
        gx = np.exp(-0.5 * ((xs[0] - cx) / sx) ** 2).astype(_F)
        col = (_random_colour(rng, style.saturation) - 0.5) * _F(0.6)
        img += (gy[:, None] * gx[None, :])[..., None] * col

    # long waves (period >= a third of the short side)
    for _ in range(int(rng.integers(style.waves[0], style.waves[1] + 1))):
        period = rng.uniform(0.35, 1.0) * short
        a = rng.uniform(0, 2 * math.pi)
        phase = rng.uniform(0, 2 * math.pi)
        k = 2 * math.pi / period
        wave = np.sin(ys * _F(k * math.sin(a)) + xs * _F(k * math.cos(a)) + _F(phase))
        col = (_random_colour(rng, style.saturation) - 0.5) * _F(0.3)
        img += wave[..., None] * col

    # large soft-edged distractor shapes (ellipses / boxes), edges a few px wide
    for _ in range(int(rng.integers(style.shapes[0], style.shapes[1] + 1))):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        a = rng.uniform(*style.shape_size) * short
        b = a * rng.uniform(0.5, 1.0)
        th = rng.uniform(0, math.pi)
        c, s = _F(math.cos(th)), _F(math.sin(th))
        u = (xs - _F(cx)) * c + (ys - _F(cy)) * s
        v = (ys - _F(cy)) * c - (xs - _F(cx)) * s
        if rng.random() < 0.5:
            sdf = (np.sqrt((u / _F(a)) ** 2 + (v / _F(b)) ** 2) - 1) * _F(b)
        else:
            sdf = np.maximum(np.abs(u) - _F(a), np.abs(v) - _F(b))
        soft = rng.uniform(3.0, 6.0)
        alpha = 1 / (1 + np.exp(np.clip(sdf / _F(0.3 * soft), -30, 30)))
        col = _random_colour(rng, style.saturation)
        img += alpha[..., None] * (col - img) * _F(rng.uniform(0.5, 0.9))

    out = _upsample_cubic(img, h, w, f)
    np.clip(out, 0.0, 1.0, out=out)
    return out


# --------------------------------------------------------------------------- object helpers


def _local_coords(side: int, angle: float, dy: float = 0.0, dx: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Rotated coordinates ``(u, v)`` of a ``side x side`` box, origin at its centre (+ sub-pixel
    offset), ``u`` to the right and ``v`` downwards in the object frame."""
    r = np.arange(side, dtype=_F) - (side - 1) / 2
    y = (r - dy)[:, None]
    x = (r - dx)[None, :]
    c, s = _F(math.cos(angle)), _F(math.sin(angle))
    u = x * c + y * s
    v = -x * s + y * c
    return u, v


def _envelope_sdf(kind: int, u: np.ndarray, v: np.ndarray, radius: float) -> np.ndarray:
    """Signed distance (approximately, in px) to a plate envelope of about ``radius``."""
    if kind == 0:  # disc
        return np.sqrt(u * u + v * v) - radius
    if kind == 1:  # square
        return np.maximum(np.abs(u), np.abs(v)) - radius * 0.88
    if kind == 2:  # rounded square
        q = 0.35 * radius
        du = np.maximum(np.abs(u) - (radius * 0.92 - q), 0)
        dv = np.maximum(np.abs(v) - (radius * 0.92 - q), 0)
        return np.sqrt(du * du + dv * dv) - q
    # hexagon
    au, av = np.abs(u), np.abs(v)
    return np.maximum(av * 0.8660254 + au * 0.5, au) - radius * 0.93


def _coverage(sdf: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage of the region ``sdf < 0`` (1-px ramp)."""
    return np.clip(0.5 - sdf, 0.0, 1.0).astype(_F)


def _stroke(dist: np.ndarray, width: float) -> np.ndarray:
    """Coverage of a stroke of ``width`` px around a distance field."""
    return np.clip(width / 2 + 0.5 - dist, 0.0, 1.0).astype(_F)


def _segment_dist(u: np.ndarray, v: np.ndarray, segs: np.ndarray) -> np.ndarray:
    """Distance from every pixel to the nearest of ``segs`` ``[S, 4]`` = (u0, v0, u1, v1)."""
    p = np.stack([u, v], -1)[..., None, :]  # [h, w, 1, 2]
    a = segs[:, :2]
    d = segs[:, 2:] - a  # [S, 2]
    dd = np.maximum((d * d).sum(-1), 1e-6)
    t = np.clip(((p - a) * d).sum(-1) / dd, 0.0, 1.0)  # [h, w, S]
    q = a + t[..., None] * d
    return np.sqrt(((p - q) ** 2).sum(-1)).min(-1)


def _plate_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two contrasting colours (``ink``, ``paper``) in random order of brightness."""
    c = rng.uniform(0.45, 0.7)
    lo = rng.uniform(0.03, 0.97 - c)
    jitter = rng.uniform(-0.12, 0.12, size=(2, 3))
    a = np.clip(lo + jitter[0], 0, 1)
    b = np.clip(lo + c + jitter[1], 0, 1)
    if rng.random() < 0.5:
        a, b = b, a
    return a.astype(_F), b.astype(_F)


def _box_blur3(x: np.ndarray) -> np.ndarray:
    p = np.pad(x, 1, mode="edge")
    s = p[:-2] + p[1:-1] + p[2:]
    return (s[:, :-2] + s[:, 1:-1] + s[:, 2:]) / 9


@dataclass
class Drawn:
    """A rendered object: ``rgb`` ``[s, s, 3]`` and ``alpha`` ``[s, s]`` float32, top-left
    anchored at the object centre minus ``s // 2``."""

    rgb: np.ndarray
    alpha: np.ndarray


class ObjectFamily:
    """A set of small object classes drawn on plates. Subclasses set ``class_names`` and
    implement :meth:`detail` (the class-carrying ink coverage in ``[0, 1]`` on the plate)."""

    name: str = ""
    class_names: tuple[str, ...] = ()
    size_range: tuple[float, float] = (12.0, 20.0)  # plate diameter in px
    max_rotation: float = math.radians(15)  # nuisance rotation range (+-)
    envelopes: tuple[int, ...] = (0, 1, 2, 3)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def detail(self, cls: int, rng: np.random.Generator, u: np.ndarray, v: np.ndarray, radius: float) -> np.ndarray:
        raise NotImplementedError

    def draw(self, cls: int | None, rng: np.random.Generator, diameter: float) -> Drawn:
        """Draw class ``cls`` (``None`` = a blank plate with no detail) on a plate of about
        ``diameter`` px."""
        radius = diameter / 2
        side = int(math.ceil(diameter * 1.42)) + 3
        angle = rng.uniform(-self.max_rotation, self.max_rotation)
        env = int(self.envelopes[int(rng.integers(len(self.envelopes)))])
        u, v = _local_coords(side, angle, rng.uniform(-0.5, 0.5), rng.uniform(-0.5, 0.5))
        alpha = _coverage(_envelope_sdf(env, u, v, radius))
        ink, paper = _plate_colours(rng)
        if cls is None:
            # blank: the flat mean colour of a textured plate (identical after a 2x down-scale)
            t = _F(rng.uniform(0.3, 0.6))
            rgb = np.broadcast_to(ink * t + paper * (1 - t), (side, side, 3)).copy()
        else:
            t = self.detail(int(cls), rng, u, v, radius * 0.85).astype(_F)
            rgb = t[..., None] * ink + (1 - t[..., None]) * paper
        return Drawn(rgb.astype(_F), alpha)


class MicroTextureFamily(ObjectFamily):
    """Upstream family: plates filled with a near-Nyquist micro-texture (period 2.4-3.2 px).
    Orientation and layout of the texture decide the class; all of it averages out at 2x."""

    name = "microtex"
    class_names = (
        "hstripes", "vstripes", "dstripes", "astripes", "checker",
        "rings", "spokes", "speckle", "grid", "dots",
    )
    period_range = (2.4, 3.6)  # px; 2x down-scaling (Nyquist at 4 px) removes or aliases all of it
    size_range = (14.0, 20.0)
    max_rotation = math.radians(12)

    def detail(self, cls, rng, u, v, radius):
        period = rng.uniform(*self.period_range)
        k = _F(2 * math.pi / period)
        ph = _F(rng.uniform(0, 2 * math.pi))
        r2 = _F(math.sqrt(0.5))
        if cls == 0:
            t = np.sin(k * v + ph)
        elif cls == 1:
            t = np.sin(k * u + ph)
        elif cls == 2:
            t = np.sin(k * (u + v) * r2 + ph)
        elif cls == 3:
            t = np.sin(k * (u - v) * r2 + ph)
        elif cls == 4:
            t = np.sin(k * r2 * u + ph) * np.sin(k * r2 * v + ph) * 2
        elif cls == 5:
            t = np.sin(k * np.sqrt(u * u + v * v) + ph)
        elif cls == 6:
            m = max(8, round(2 * math.pi * radius * 0.9 / period))
            t = np.sin(m * np.arctan2(v, u) + ph)
        elif cls == 7:
            n = rng.standard_normal(u.shape).astype(_F)
            n = n - _box_blur3(n)
            t = n / (n.std() + 1e-6) * 1.2
        elif cls == 8:
            kk = k / 1.25
            a = (0.5 + 0.5 * np.cos(kk * u + ph)) ** 4
            b = (0.5 + 0.5 * np.cos(kk * v + ph)) ** 4
            t = np.maximum(a, b) * 2.6 - 1
        elif cls == 9:
            kk = k / 1.15
            t = ((0.5 + 0.5 * np.cos(kk * u + ph)) * (0.5 + 0.5 * np.cos(kk * v + ph))) ** 1.5 * 4 - 1
        else:
            raise ValueError(f"class {cls} out of range for {self.name}")
        return np.clip(0.5 + 0.5 * t, 0.0, 1.0)


class ZigzagFamily(ObjectFamily):
    """A single object type for counting: plates with zig-zag micro-stripes."""

    name = "zigzag"
    class_names = ("zigzag",)
    size_range = (11.0, 15.0)

    def detail(self, cls, rng, u, v, radius):
        period = rng.uniform(2.4, 3.0)
        k = _F(2 * math.pi / period)
        arm = _F(rng.uniform(2.5, 3.5))
        tri = np.abs(((u / arm) % 2) - 1) * arm
        return np.clip(0.5 + 0.6 * np.sin(k * (v + tri) + rng.uniform(0, 6.3)), 0, 1)


# Seven-segment digits on a 2 x 4 box (u in [-1, 1], v in [-2, 2]).
_SEG = {
    "a": (-1, -2, 1, -2), "b": (1, -2, 1, 0), "c": (1, 0, 1, 2), "d": (-1, 2, 1, 2),
    "e": (-1, 0, -1, 2), "f": (-1, -2, -1, 0), "g": (-1, 0, 1, 0),
}
_DIGITS = ("abcdef", "bc", "abged", "abgcd", "fgbc", "afgcd", "afgedc", "abc", "abcdefg", "abcdfg")
_DIGIT_SEGS = [np.array([_SEG[c] for c in d], dtype=_F) for d in _DIGITS]


class DigitFamily(ObjectFamily):
    """Thin (1-1.3 px) seven-segment digits, about 9-13 px tall, on a plate."""

    name = "digits"
    class_names = tuple(str(i) for i in range(10))
    size_range = (14.0, 19.0)
    envelopes = (1, 2)

    def detail(self, cls, rng, u, v, radius):
        scale = radius / 2.3
        segs = _DIGIT_SEGS[cls] * _F(scale)
        d = _segment_dist(u + _F(0.35) * v * _F(rng.uniform(-0.3, 0.3)), v, segs)
        return _stroke(d, rng.uniform(1.0, 1.3))


_PIPS = {
    1: [(0, 0)], 2: [(-1, -1), (1, 1)], 3: [(-1, -1), (0, 0), (1, 1)],
    4: [(-1, -1), (1, -1), (-1, 1), (1, 1)], 5: [(-1, -1), (1, -1), (0, 0), (-1, 1), (1, 1)],
    6: [(-1, -1), (1, -1), (-1, 0), (1, 0), (-1, 1), (1, 1)],
}


class DiceFamily(ObjectFamily):
    """Dice faces: 1-6 pips of radius ~1 px spaced ~3.5 px. Full rotation (count is invariant)."""

    name = "dice"
    class_names = ("one", "two", "three", "four", "five", "six")
    size_range = (12.0, 15.0)
    max_rotation = math.pi
    envelopes = (1, 2)

    def detail(self, cls, rng, u, v, radius):
        step = _F(rng.uniform(3.2, 3.8))
        pr = rng.uniform(0.75, 1.0)
        pts = np.array(_PIPS[cls + 1], dtype=_F) * step
        d = np.sqrt((u[..., None] - pts[:, 0]) ** 2 + (v[..., None] - pts[:, 1]) ** 2).min(-1)
        return np.clip(pr + 0.5 - d, 0.0, 1.0)


def _poly(points, closed=True) -> np.ndarray:
    pts = list(points)
    if closed:
        pts = pts + pts[:1]
    return np.array([(*pts[i], *pts[i + 1]) for i in range(len(pts) - 1)], dtype=_F)


_TRI = [(math.cos(a), math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
_LINE_SHAPES = {
    "triangle": _poly(_TRI),
    "square": _poly([(-0.75, -0.75), (0.75, -0.75), (0.75, 0.75), (-0.75, 0.75)]),
    "plus": np.array([(-1, 0, 1, 0), (0, -1, 0, 1)], dtype=_F),
    "cross": np.array([(-0.75, -0.75, 0.75, 0.75), (-0.75, 0.75, 0.75, -0.75)], dtype=_F),
    "star": np.array([(0, -1, 0, 1), (-0.87, -0.5, 0.87, 0.5), (-0.87, 0.5, 0.87, -0.5)], dtype=_F),
    "arrow": np.array([(-1, 0, 1, 0), (1, 0, 0.3, -0.6), (1, 0, 0.3, 0.6)], dtype=_F),
    "bowtie": _poly([(-0.8, -0.7), (0.8, 0.7), (0.8, -0.7), (-0.8, 0.7)]),
}


class LineShapeFamily(ObjectFamily):
    """1-px outline shapes (circle, triangle, square, plus, cross, star, arrow, bowtie)."""

    name = "lines"
    class_names = ("circle", "triangle", "square", "plus", "cross", "star", "arrow", "bowtie")
    size_range = (14.0, 19.0)
    envelopes = (0, 2)

    def detail(self, cls, rng, u, v, radius):
        name = self.class_names[cls]
        scale = radius * 0.9
        if name == "circle":
            d = np.abs(np.sqrt(u * u + v * v) - _F(scale * 0.8))
        else:
            d = _segment_dist(u, v, _LINE_SHAPES[name] * _F(scale))
        return _stroke(d, rng.uniform(0.9, 1.2))


FAMILIES: dict[str, ObjectFamily] = {
    f.name: f for f in (MicroTextureFamily(), ZigzagFamily(), DigitFamily(), DiceFamily(), LineShapeFamily())
}


def get_family(name: str) -> ObjectFamily:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown object family {name!r}; known: {sorted(FAMILIES)}") from None


# --------------------------------------------------------------------------- layout & compositing


def place_objects(
    rng: np.random.Generator, h: int, w: int, radii: list[float], gap: float = 3.0, tries: int = 40
) -> list[tuple[float, float]]:
    """Centres ``(y, x)`` for discs of the given ``radii`` fully inside ``h x w`` and at least
    ``gap`` px apart; the least-overlapping candidate is taken when that cannot be achieved."""
    out: list[tuple[float, float]] = []
    centres = np.zeros((0, 2), _F)
    placed = np.zeros((0,), _F)
    for r in radii:
        my, mx = min(r + 1, h / 2), min(r + 1, w / 2)
        cand = np.stack(
            [rng.uniform(my, h - my, size=tries), rng.uniform(mx, w - mx, size=tries)], 1
        ).astype(_F)
        if len(centres):
            d = np.sqrt(((cand[:, None, :] - centres[None]) ** 2).sum(-1)) - placed[None] - r - gap
            ok = np.nonzero((d >= 0).all(1))[0]
            j = int(ok[0]) if len(ok) else int(np.argmax(d.min(1)))
        else:
            j = 0
        out.append((float(cand[j, 0]), float(cand[j, 1])))
        centres = np.concatenate([centres, cand[j:j + 1]])
        placed = np.concatenate([placed, np.array([r], _F)])
    return out


def composite(img: np.ndarray, drawn: Drawn, y0: int, x0: int, mask: np.ndarray | None = None) -> None:
    """Alpha-blend ``drawn`` onto ``img`` in place with its top-left at ``(y0, x0)`` (clipped at
    the borders); if ``mask`` is given, raise it to the object's alpha."""
    h, w = img.shape[:2]
    s = drawn.alpha.shape[0]
    ya, xa = max(y0, 0), max(x0, 0)
    yb, xb = min(y0 + s, h), min(x0 + s, w)
    if ya >= yb or xa >= xb:
        return
    a = drawn.alpha[ya - y0:yb - y0, xa - x0:xb - x0]
    rgb = drawn.rgb[ya - y0:yb - y0, xa - x0:xb - x0]
    region = img[ya:yb, xa:xb]
    region += a[..., None] * (rgb - region)
    if mask is not None:
        np.maximum(mask[ya:yb, xa:xb], a, out=mask[ya:yb, xa:xb])
