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
Eager mode computes every row phase ``k`` of the up-sampling in one ``lerp`` (a strided view
of the padded rows and a per-phase weight tensor): the same values, one pass (issue 13).
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


_ROW_WEIGHTS: dict[tuple[int, torch.dtype, str], Tensor] = {}


def _row_weights(f: int, like: Tensor) -> Tensor:
    """``[2, f/2, 1]`` weights of the row phases (first half reads rows ``i-1, i``, second half
    ``i, i+1``), cached per (factor, dtype, device)."""
    key = (f, like.dtype, str(like.device))
    w = _ROW_WEIGHTS.get(key)
    if w is None:
        w = torch.tensor([wt for _, wt in _up_taps(f)], dtype=like.dtype, device=like.device).view(2, f // 2, 1)
        _ROW_WEIGHTS[key] = w
    return w


def _up_cols(s: Tensor, f: int, out: Tensor | None = None) -> Tensor:
    n = s.shape[-1]
    sp = torch.cat([s[..., :1], s, s[..., -1:]], dim=-1)
    if is_tracing():  # the same lerps, stacked: no out= into views (torch.compile fullgraph)
        return torch.stack([torch.lerp(sp[..., o:o + n], sp[..., o + 1:o + 1 + n], w) for o, w in _up_taps(f)],
                           -1).flatten(-2)
    out = s.new_empty(*s.shape, f) if out is None else out.view(*s.shape, f)
    for k, (o, w) in enumerate(_up_taps(f)):  # strided writes beat every one-op form here
        torch.lerp(sp[..., o:o + n], sp[..., o + 1:o + 1 + n], w, out=out[..., k])
    return out.flatten(-2)


def _up_rows(s: Tensor, f: int, out: Tensor | None = None) -> Tensor:
    n = s.shape[-2]
    sp = torch.cat([s[..., :1, :], s, s[..., -1:, :]], dim=-2)
    if is_tracing():
        return torch.stack([torch.lerp(sp[..., o:o + n, :], sp[..., o + 1:o + 1 + n, :], w)
                            for o, w in _up_taps(f)], -2).flatten(-3, -2)
    return _up_padded_rows(sp, f, out)


def _up_padded_rows(sp: Tensor, f: int, out: Tensor | None = None) -> Tensor:
    """Row up-sampling of edge-padded rows ``[..., n+2, W]`` in one ``lerp``: phase
    ``k = half*f/2 + j`` of row ``i`` reads padded rows ``i+half`` and ``i+half+1``."""
    *lead, n2, w = sp.shape
    n = n2 - 2
    st = sp.stride()
    shape = (*lead, n, 2, f // 2, w)
    strides = (*st[:-2], st[-2], st[-2], 0, st[-1])
    lo = sp.as_strided(shape, strides, sp.storage_offset())
    hi = sp.as_strided(shape, strides, sp.storage_offset() + st[-2])
    out = sp.new_empty(shape) if out is None else out.view(shape)
    torch.lerp(lo, hi, _row_weights(f, sp), out=out)
    return out.view(*lead, n * f, w)


def blur_into(x: Tensor, f: int, out: Tensor, work: Tensor, small: Tensor | None = None) -> Tensor:
    """Eager-CPU ``blur`` by the factor ``f`` of ``x [B, C, H, W]`` written into ``out`` (same
    shape), with the padded intermediates in ``work`` (a flat buffer of at least
    ``B*C*(H/f+2)*(W + W/f+2)`` elements), so that chunked callers allocate nothing per call
    (fresh large CPU allocations cost page faults). ``small``: ``downsample(x, f)`` if the
    caller has it. The same values as :func:`blur`."""
    b, c, h, w = x.shape
    hs, ws = h // f, w // f
    n_small = b * c * hs * (ws + 2)
    sp = work[:n_small].view(b, c, hs, ws + 2)  # columns padded by one replicated pixel
    if small is None:
        small = downsample(x, f, out=sp[..., 1:ws + 1])
    else:
        sp[..., 1:ws + 1].copy_(small)
    _edges(sp, -1).copy_(_edges(small, -1))  # replicate the first and last column
    cp = work[n_small:n_small + b * c * (hs + 2) * w].view(b, c, hs + 2, w)  # rows padded
    cols = cp[:, :, 1:hs + 1].view(b, c, hs, ws, f)
    for k, (o, wt) in enumerate(_up_taps(f)):
        torch.lerp(sp[..., o:o + ws], sp[..., o + 1:o + 1 + ws], wt, out=cols[..., k])
    _edges(cp, -2).copy_(_edges(cols.view(b, c, hs, w), -2))  # and the first and last row
    return _up_padded_rows(cp, f, out)


def _edges(t: Tensor, dim: int) -> Tensor:
    """The first and last entries of ``t`` along ``dim`` as one strided view (size 2 there)."""
    shape, strides = list(t.shape), list(t.stride())
    strides[dim] *= shape[dim] - 1
    shape[dim] = 2
    return t.as_strided(shape, strides, t.storage_offset())


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
