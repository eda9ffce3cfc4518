"""The feature scorer's resized backbone inputs (``input_scale != 1``) without the full-size blurs.

With ``input_scale=r`` the backbone sees ``R(x)`` and ``R(blur_j(x))``, ``R`` the bilinear resize
by ``r`` (antialiased when ``r < 1``) and ``blur_j = U_f(D_f(x))``, ``f = 2^j``
(:mod:`.blur`). Both ``R`` and ``U_f`` are separable and linear, so ``R(U_f(s))`` is
``M_h s M_w^T`` with one banded matrix per axis (3-4 taps a row). Each matrix is read off
``F.interpolate`` itself (applied to the identity, in float64), so the values are those of the
two-step resize up to float rounding, while the work is done on the small image ``s = D_f(x)``:
no full-size blur and no call of the generic (slow) antialiased kernel (issue 13).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .blur import blur, downsample

#: resize ratios (in lowest terms ``P/Q``) with more output phases than this use F.interpolate
MAX_PHASES = 8


def _axis_matrix(n: int, f: int, n_out: int) -> Tensor:
    """``[n_out, n/f]`` (float64): ``R(U_f(.))`` along one axis of length ``n``."""
    n_small = n // f
    v = torch.eye(n_small, dtype=torch.float64).view(n_small, 1, 1, n_small)  # one basis vector per image
    if f > 1:
        v = F.interpolate(v, size=(1, n), mode="bilinear", align_corners=False)
    v = F.interpolate(v, size=(1, n_out), mode="bilinear", align_corners=False, antialias=n_out < n)
    return v.view(n_small, n_out).t().contiguous()


@functools.lru_cache(maxsize=64)
def _axis_plan(n: int, f: int, n_out: int) -> tuple:
    """The banded matrix as ``P`` phases (output ``q + P*t`` reads input ``a_q + Q*t + k``
    with weight ``w_q[k]``, ``P/Q = n_out/(n/f)`` in lowest terms) plus the rows near the edges
    that differ from that pattern (exact taps each). Returns ``(n_out, P, Q, pad, phases, edges)``."""
    m = _axis_matrix(n, f, n_out)
    n_small = m.shape[1]
    g = math.gcd(n_out, n_small)
    p, q = n_out // g, n_small // g
    nz = m != 0
    lo = nz.double().argmax(dim=1)
    hi = n_small - nz.flip(1).double().argmax(dim=1)  # one past the last tap
    t_mid = (n_out // 2) // p
    phases = []
    for ph in range(p):
        o = ph + p * t_mid
        a, z = int(lo[o]), int(hi[o])
        phases.append((a - q * t_mid, m[o, a:z].clone()))
    pad = max(max(-a for a, _ in phases), 0)
    pad = max(pad, max(a + q * ((n_out - 1 - ph) // p) + len(w) - n_small for ph, (a, w) in enumerate(phases)), 0)
    pattern = torch.zeros_like(m)
    for ph, (a, w) in enumerate(phases):
        for o in range(ph, n_out, p):
            start = a + q * ((o - ph) // p)
            for k in range(len(w)):
                if 0 <= start + k < n_small:
                    pattern[o, start + k] = w[k]
    edges = []
    for o in torch.nonzero((pattern - m).abs().amax(dim=1) > 1e-12).flatten().tolist():
        a, z = int(lo[o]), int(hi[o])
        edges.append((o, torch.arange(a, z), m[o, a:z].clone()))
    return n_out, p, q, pad, phases, edges


def _resize_axis(s: Tensor, dim: int, plan: tuple) -> Tensor:
    """Apply one axis's plan to ``s``: per phase, multiply-adds of strided views of the padded
    input (oneDNN's one-channel convolutions are ~10x slower here); the edge rows from their
    exact taps."""
    n_out, p, q, pad, phases, edges = plan
    dim = dim % s.dim()
    sp = F.pad(s.movedim(dim, -1), (pad, pad)).movedim(-1, dim) if pad else s
    lead = (slice(None),) * dim
    outs = []
    for ph, (a, w) in enumerate(phases):
        count = len(range(ph, n_out, p))
        acc = None
        for k in range(len(w)):
            start = a + pad + k
            part = sp[lead + (slice(start, start + q * (count - 1) + 1, q),)]
            acc = torch.mul(part, float(w[k])) if acc is None else acc.add_(part, alpha=float(w[k]))
        outs.append(acc)
    y = outs[0] if p == 1 else torch.stack(outs, dim + 1).flatten(dim, dim + 1)
    shape = [1] * s.dim()
    shape[dim] = -1
    for o, idx, wo in edges:
        row = (s.index_select(dim, idx.to(s.device)) * wo.to(device=s.device, dtype=s.dtype).view(shape)).sum(dim)
        y.select(dim, o).copy_(row)
    return y


def resized(x: Tensor, f: int, size: tuple[int, int]) -> Tensor:
    """``R(U_f(D_f(x)))`` of ``x [B, C, H, W]`` at ``size`` (``f = 1``: ``R(x)``); ``H``, ``W``
    divisible by ``f``. Equal to ``F.interpolate(blur(x, log2 f), size, bilinear,
    antialias=size < (H, W))`` up to float rounding."""
    h, w = x.shape[-2:]
    if f == 1:  # the generic kernel is as fast as any form here
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=size[0] < h or size[1] < w)
    cols, rows = _axis_plan(w, f, size[1]), _axis_plan(h, f, size[0])
    if max(cols[1], rows[1]) > MAX_PHASES:  # an odd ratio: one op per output row would be slower
        return F.interpolate(blur(x, f.bit_length() - 1), size=size, mode="bilinear", align_corners=False,
                             antialias=size[0] < h or size[1] < w)
    return _resize_axis(_resize_axis(downsample(x, f), -1, cols), -2, rows)
