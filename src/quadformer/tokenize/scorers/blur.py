"""The blur used by the pixel-blur and feature scorers (``docs/design/mixed_resolution.md``).

``blur_s = up(down(x, (H/2^s, W/2^s)), (H, W))``, both bilinear, ``align_corners=False``,
no antialias: what the image looks like when every region is represented by ``p_s`` patches
resampled to ``p_min`` pixels (docs/design/mixed_resolution.md §5, ``resample="reference"``).

On CPU, ``F.interpolate``'s generic bilinear kernel is slow (~3 ns per output pixel), so an
integer factor ``f`` is resampled with its closed form instead (~5x faster, equal up to float
rounding, |diff| < 1e-6): down-sampling averages the two middle source pixels of each
``f``-block per axis (source coordinate ``o*f + f/2 - 0.5``); up-sampling gives output
``i*f + k`` the two-tap mix of small pixels ``i-1, i`` or ``i, i+1`` at offset
``(k + 0.5)/f - 0.5``, with edge pixels replicated (the clamping of ``align_corners=False``).
Eager mode pads nothing: phase ``q`` of an up-sampled axis is ``lerp(s[j], s[j+1], (q+0.5)/f)``
of two shifted views, all row phases in one ``lerp``, and only the ``f/2`` outer pixels per
side copy the edge (issue 13). The traced form pads and stacks; both give the same values.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..resample import downsample
from ..validation import is_tracing

__all__ = ["blur", "blur_reference", "downsample"]


def _up_taps(f: int) -> list[tuple[int, float]]:
    """For each offset ``k`` in an ``f``-block: (start in the edge-padded axis, weight of the
    next pixel)."""
    taps = []
    for k in range(f):
        src = (k + 0.5) / f - 0.5  # source coordinate relative to the block's small pixel
        lo = -1 if src < 0 else 0
        taps.append((lo + 1, src - lo))
    return taps


_PHASE_WEIGHTS: dict[tuple[int, torch.dtype, str], Tensor] = {}


def _phase_weights(f: int, like: Tensor) -> Tensor:
    """``[f, 1]`` weights ``(q + 0.5)/f`` of the up-sampling phases, cached per (factor,
    dtype, device)."""
    key = (f, like.dtype, str(like.device))
    w = _PHASE_WEIGHTS.get(key)
    if w is None:
        w = torch.tensor([(q + 0.5) / f for q in range(f)], dtype=like.dtype, device=like.device).view(f, 1)
        _PHASE_WEIGHTS[key] = w
    return w


def _up_cols(s: Tensor, f: int, out: Tensor | None = None) -> Tensor:
    n = s.shape[-1]
    if is_tracing():  # the same lerps, stacked: no out= into views (torch.compile fullgraph)
        sp = torch.cat([s[..., :1], s, s[..., -1:]], dim=-1)
        return torch.stack([torch.lerp(sp[..., o:o + n], sp[..., o + 1:o + 1 + n], w) for o, w in _up_taps(f)],
                           -1).flatten(-2)
    out = s.new_empty(*s.shape[:-1], n * f) if out is None else out
    return up_cols_into(s, f, out)


def _up_rows(s: Tensor, f: int, out: Tensor | None = None) -> Tensor:
    n = s.shape[-2]
    if is_tracing():
        sp = torch.cat([s[..., :1, :], s, s[..., -1:, :]], dim=-2)
        return torch.stack([torch.lerp(sp[..., o:o + n, :], sp[..., o + 1:o + 1 + n, :], w)
                            for o, w in _up_taps(f)], -2).flatten(-3, -2)
    out = s.new_empty(*s.shape[:-2], n * f, s.shape[-1]) if out is None else out
    return up_rows_into(s, f, out)


def up_cols_into(s: Tensor, f: int, out: Tensor) -> Tensor:
    """Eager column up-sampling of ``s [..., n]`` by ``f`` into ``out [..., n*f]``, no padded copy.

    Output ``f/2 + j*f + q`` (``q < f``) is ``lerp(s[j], s[j+1], (q + 0.5)/f)`` for every
    phase, so each phase is one ``lerp`` of two shifted views of ``s`` written with stride
    ``f``; the ``f/2`` outer columns on each side are the edge pixels (the clamping of
    ``align_corners=False``). The same values as the padded form. Views are made with
    ``as_strided`` (one dispatcher call each: at batch 1 the calls are the cost)."""
    *lead, n = s.shape
    h = f // 2
    ss, so, os_, oo = s.stride(), s.storage_offset(), out.stride(), out.storage_offset()
    pairs = (*lead, n - 1)
    lo, hi = s.as_strided(pairs, ss, so), s.as_strided(pairs, ss, so + ss[-1])
    phase = (*os_[:-1], f * os_[-1])
    for q in range(f):  # strided writes beat every one-op form here
        torch.lerp(lo, hi, (q + 0.5) / f, out=out.as_strided(pairs, phase, oo + (h + q) * os_[-1]))
    edge = (*lead, 2, h)
    out.as_strided(edge, (*os_[:-1], (n * f - h) * os_[-1], os_[-1]), oo).copy_(
        s.as_strided(edge, (*ss[:-1], (n - 1) * ss[-1], 0), so))
    return out


def up_rows_into(s: Tensor, f: int, out: Tensor) -> Tensor:
    """Eager row up-sampling of ``s [..., n, W]`` by ``f`` into ``out [..., n*f, W]`` in one
    ``lerp``: rows ``f/2 + i*f + q`` mix rows ``i, i+1`` with the weight ``(q + 0.5)/f`` (a
    ``[f, 1]`` tensor broadcast over stride-0 views), then the edge rows are copied."""
    *lead, n, w = s.shape
    h = f // 2
    ss, so, os_, oo = s.stride(), s.storage_offset(), out.stride(), out.storage_offset()
    pairs, pair_st = (*lead, n - 1, f, w), (*ss[:-2], ss[-2], 0, ss[-1])
    torch.lerp(s.as_strided(pairs, pair_st, so), s.as_strided(pairs, pair_st, so + ss[-2]), _phase_weights(f, s),
               out=out.as_strided(pairs, (*os_[:-2], f * os_[-2], os_[-2], os_[-1]), oo + h * os_[-2]))
    edge = (*lead, 2, h, w)
    out.as_strided(edge, (*os_[:-2], (n * f - h) * os_[-2], os_[-2], os_[-1]), oo).copy_(
        s.as_strided(edge, (*ss[:-2], (n - 1) * ss[-2], 0, ss[-1]), so))
    return out


def blur_into(x: Tensor, f: int, out: Tensor, work: Tensor, small: Tensor | None = None) -> Tensor:
    """Eager-CPU ``blur`` by the factor ``f`` of ``x [B, C, H, W]`` written into ``out`` (same
    shape), with the column-up-sampled image in ``work`` (a flat buffer of at least
    ``B*C*H*W/f`` elements), so that chunked callers allocate nothing per call (fresh large
    CPU allocations cost page faults). ``small``: ``downsample(x, f)`` if the caller has it.
    The same values as :func:`blur`."""
    b, c, h, w = x.shape
    if small is None:
        small = downsample(x, f)
    cols = up_cols_into(small, f, work[:b * c * (h // f) * w].view(b, c, h // f, w))
    return up_rows_into(cols, f, out)


def blur(images: Tensor, scale: int, out: Tensor | None = None) -> Tensor:
    """Down- then up-sample ``images [B, C, H, W]`` by ``2**scale`` (bilinear,
    ``align_corners=False``, no antialias). Floating input; output has its dtype (written into
    ``out`` when given, CPU eager)."""
    h, w = images.shape[-2:]
    f = 1 << scale
    if scale < 1 or h % f or w % f:
        raise ValueError(f"image size {h}x{w} is not divisible by 2**{scale}={f} (scale must be >= 1)")
    if images.device.type == "cpu" or is_tracing():  # one graph on every device when exported
        return _up_rows(_up_cols(downsample(images, f), f), f, out)
    small = F.interpolate(images, size=(h // f, w // f), mode="bilinear", align_corners=False, antialias=False)
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False, antialias=False)


def blur_reference(images: Tensor, scale: int) -> Tensor:
    """``blur`` with ``F.interpolate`` on every device (for tests and parity checks)."""
    h, w = images.shape[-2:]
    f = 1 << scale
    small = F.interpolate(images, size=(h // f, w // f), mode="bilinear", align_corners=False, antialias=False)
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False, antialias=False)
