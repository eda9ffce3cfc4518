"""The numba kernels behind :mod:`quadformer.tokenize.kernels` (imported on first use)."""

from __future__ import annotations

import numpy as np
from numba import njit
from torch import Tensor

from . import parallel_for

__all__ = ["blur_error_sums", "gather_tokens"]


# ------------------------------------------------------------------------------------------
# the pixel-blur scorer
#
# torch.lerp(a, b, w) is a + w*(b - a) for w < 0.5, else b - (1 - w)*(b - a); at w = 0.5 both
# are exact, so lerp(a, b, 0.5) == b - (b - a)*0.5 bitwise. Loops whose trip count is a
# compile-time constant (factor 2 or 4, patch side 4..32) are written out, so that LLVM
# vectorises them; other sizes take the generic loops.

_JIT = dict(nogil=True, cache=False, fastmath=False, boundscheck=False, error_model="numpy")
# Flat arrays are indexed with unsigned offsets (``np.uint64(i)``): numba wraps negative signed
# indices, and that select on every access keeps LLVM from vectorising the loop.


@njit(**_JIT)
def _down2(x, out):
    h, w = out.shape
    half = np.float32(0.5)
    for i in range(h):
        r0, r1, o = x[2 * i], x[2 * i + 1], out[i]
        for j in range(w):
            c0 = r0[2 * j + 1] - (r0[2 * j + 1] - r0[2 * j]) * half
            c1 = r1[2 * j + 1] - (r1[2 * j + 1] - r1[2 * j]) * half
            o[j] = c1 - (c1 - c0) * half


@njit(**_JIT)
def _down4(x, out):
    h, w = out.shape
    half = np.float32(0.5)
    for i in range(h):
        r0, r1, o = x[4 * i + 1], x[4 * i + 2], out[i]
        for j in range(w):
            c0 = r0[4 * j + 2] - (r0[4 * j + 2] - r0[4 * j + 1]) * half
            c1 = r1[4 * j + 2] - (r1[4 * j + 2] - r1[4 * j + 1]) * half
            o[j] = c1 - (c1 - c0) * half


@njit(**_JIT)
def _down(x, f, out):
    """``out = downsample(x, f)`` for one plane: the mean of the two middle pixels of each
    ``f``-block per axis, columns first."""
    if f == 2:
        _down2(x, out)
        return
    if f == 4:
        _down4(x, out)
        return
    h, w = out.shape
    a = f // 2 - 1
    half = np.float32(0.5)
    for i in range(h):
        r0, r1, o = x[i * f + a], x[i * f + a + 1], out[i]
        for j in range(w):
            c = j * f + a
            c0 = r0[c + 1] - (r0[c + 1] - r0[c]) * half
            c1 = r1[c + 1] - (r1[c + 1] - r1[c]) * half
            o[j] = c1 - (c1 - c0) * half


@njit(**_JIT)
def _up_row(s, f, u):
    """Bilinear up-sampling (``align_corners=False``) of the row ``s`` by ``f`` into ``u``:
    output ``f/2 + j*f + q`` mixes ``s[j], s[j+1]`` with the weight ``(q + 0.5)/f``; the
    ``f/2`` outer pixels per side repeat the edge."""
    w = s.shape[0]
    hf = f // 2
    n = w * f
    for t in range(hf):
        u[t] = s[0]
        u[n - 1 - t] = s[w - 1]
    if f == 2:
        for j in range(w - 1):
            d = s[j + 1] - s[j]
            u[2 * j + 1] = s[j] + np.float32(0.25) * d
            u[2 * j + 2] = s[j + 1] - np.float32(0.25) * d
        return
    if f == 4:
        for j in range(w - 1):
            d = s[j + 1] - s[j]
            u[4 * j + 2] = s[j] + np.float32(0.125) * d
            u[4 * j + 3] = s[j] + np.float32(0.375) * d
            u[4 * j + 4] = s[j + 1] - np.float32(0.375) * d
            u[4 * j + 5] = s[j + 1] - np.float32(0.125) * d
        return
    for j in range(w - 1):
        d = s[j + 1] - s[j]
        for q in range(f):
            wq = np.float32((q + 0.5) / f)
            if wq < 0.5:
                u[hf + j * f + q] = s[j] + wq * d
            else:
                u[hf + j * f + q] = s[j + 1] - (np.float32(1.0) - wq) * d


@njit(**_JIT)
def _add_squared_error_edge(u, x, acc):
    """``acc += (u - x)^2``."""
    for t in range(x.shape[0]):
        d = u[t] - x[t]
        acc[t] += d * d


@njit(**_JIT)
def _add_squared_error(lo, hi, w, x, acc):
    """``acc += (lerp(lo, hi, w) - x)^2``, ``lo`` being the nearer row (``w <= 0.5``)."""
    for t in range(x.shape[0]):
        d = lo[t] + w * (hi[t] - lo[t]) - x[t]
        acc[t] += d * d


@njit(**_JIT)
def _blur_error_planes(x, p_min, smalls, sums, start, stop):
    """Planes ``[start, stop)`` of ``x [P, H, W]``: for scale ``k + 1`` (factor ``f = 2^(k+1)``)
    ``smalls[k][plane] = downsample(x, f)`` and ``sums[k][plane]`` the sums of
    ``(blur_f - x)^2`` over the cells of ``p_min*f`` pixels."""
    _, h_img, w_img = x.shape
    u0 = np.empty(w_img, np.float32)
    u1 = np.empty(w_img, np.float32)
    acc = np.zeros(w_img, np.float32)
    for plane in range(start, stop):
        xp = x[plane]
        for k in range(len(smalls)):
            f = 2 << k
            small = smalls[k][plane]
            out = sums[k][plane]
            _down(xp, f, small)
            h = small.shape[0]
            p = p_min * f
            hf = f // 2
            _up_row(small[0], f, u0)  # the rows of the blur lie between u0 and u1
            _up_row(small[min(1, h - 1)], f, u1)
            nxt = 2
            for y in range(h_img):
                xr = xp[y]
                if y < hf:  # the edge rows repeat the first / last up-sampled row
                    _add_squared_error_edge(u0, xr, acc)
                elif y >= h_img - hf:
                    _add_squared_error_edge(u1, xr, acc)
                else:
                    q = (y - hf) % f
                    if q == 0 and y > hf:
                        u0, u1 = u1, u0
                        _up_row(small[nxt], f, u1)
                        nxt += 1
                    wq = np.float32((q + 0.5) / f)
                    if wq < 0.5:
                        _add_squared_error(u0, u1, wq, xr, acc)
                    else:
                        _add_squared_error(u1, u0, np.float32(1.0) - wq, xr, acc)
                if y % p == p - 1:  # a row of cells is complete
                    row = out[y // p]
                    for c in range(w_img // p):
                        total = np.float32(0.0)
                        for t in range(c * p, c * p + p):
                            total += acc[t]
                        row[c] = total
                    acc[:] = 0


def blur_error_sums(x: Tensor, p_min: int, smalls: list[Tensor], sums: list[Tensor]) -> None:
    """The pixel-blur scorer's pass over contiguous float32 ``x [B, C, H, W]``: for scales
    ``s = 1..len(smalls)``, ``smalls[s-1] [B, C, H/2^s, W/2^s]`` receives ``downsample(x, 2^s)``
    and ``sums[s-1] [B, C, gh_s, gw_s]`` the per-channel sums of ``(blur_s - x)^2`` over the
    cells of ``p_min * 2^s`` pixels (all contiguous)."""
    b, c, h, w = x.shape
    planes = x.view(b * c, h, w).numpy()
    small_arrays = tuple(t.view(b * c, *t.shape[2:]).numpy() for t in smalls)
    sum_arrays = tuple(t.view(b * c, *t.shape[2:]).numpy() for t in sums)
    parallel_for(_blur_error_planes, b * c, planes, int(p_min), small_arrays, sum_arrays)


# ------------------------------------------------------------------------------------------
# the embedding's gather

@njit(**_JIT)
def _copy(dst, do, src, so, p):
    """``dst[do:do + p] = src[so:so + p]`` (unsigned indices: no negative-index wrap, so LLVM
    vectorises)."""
    for q in range(p):
        dst[np.uint64(do + q)] = src[np.uint64(so + q)]


@njit(**_JIT)
def _gather_images(levels, level_h, level_w, channels, cell_level, cell_y, cell_x, index, p, cell_bias, dim, out,
                   prefix_len, pixels, first, start, stop):
    """Images ``[start, stop)``: token ``t`` of image ``j`` gets its bias row
    ``out[j, prefix_len + t] = cell_bias[cell]`` and its pixels (channel, row, column) in row
    ``(j - first)*(prefix_len + N) + prefix_len + t`` of ``pixels`` (flat arrays). Tokens of one
    scale and one band of rows are copied row by row, left to right, so the image is read in
    address order."""
    n_tok = index.shape[1]
    rows = prefix_len + n_tok
    d = channels * p * p
    for j in range(start, stop):
        base = (j - first) * rows + prefix_len
        t = 0
        while t < n_tok:
            m = index[j, t]
            lev, y0 = cell_level[m], cell_y[m]
            u = t + 1
            while u < n_tok and cell_level[index[j, u]] == lev and cell_y[index[j, u]] == y0:
                u += 1
            src = levels[lev]
            h, w = level_h[lev], level_w[lev]
            for c in range(channels):
                for r in range(p):
                    so = ((j * channels + c) * h + y0 + r) * w
                    do = (c * p + r) * p
                    # the usual sides written out: a call per segment costs more than the copy
                    if p == 16:
                        for tt in range(t, u):
                            dst, at = (base + tt) * d + do, so + cell_x[index[j, tt]]
                            for q in range(16):
                                pixels[np.uint64(dst + q)] = src[np.uint64(at + q)]
                    elif p == 8:
                        for tt in range(t, u):
                            dst, at = (base + tt) * d + do, so + cell_x[index[j, tt]]
                            for q in range(8):
                                pixels[np.uint64(dst + q)] = src[np.uint64(at + q)]
                    else:
                        for tt in range(t, u):
                            _copy(pixels, (base + tt) * d + do, src, so + cell_x[index[j, tt]], p)
            t = u
        for t in range(n_tok):
            o, b = (j * rows + prefix_len + t) * dim, index[j, t] * dim
            for e in range(dim):
                out[np.uint64(o + e)] = cell_bias[np.uint64(b + e)]


def gather_tokens(levels: list[Tensor], cells: tuple[np.ndarray, np.ndarray, np.ndarray], index: Tensor, p: int,
                  cell_bias: Tensor, out: Tensor, prefix_len: int, pixels: Tensor, start: int, stop: int) -> None:
    """Images ``[start, stop)`` of ``index [B, N]``: ``out[j, prefix_len:] = cell_bias[index[j]]``
    and the ``C*p*p`` pixels of token ``t`` in row ``(j - start)*(prefix_len + N) + prefix_len + t``
    of ``pixels`` (its prefix rows are left alone). ``levels``: the contiguous float32 images of
    every scale ``[B, C, h_s, w_s]`` in canonical order; ``cells``: per canonical cell, its level
    and the row and column of its first pixel there; ``out``, ``cell_bias``, ``pixels``: contiguous."""
    shapes = np.array([t.shape[2:] for t in levels], dtype=np.int64).reshape(-1, 2)
    arrays = (tuple(t.view(-1).numpy() for t in levels), shapes[:, 0].copy(), shapes[:, 1].copy(),
              levels[0].shape[1], *cells, index.numpy(), p, cell_bias.view(-1).numpy(), cell_bias.shape[1],
              out.view(-1).numpy(), prefix_len, pixels.view(-1).numpy(), start)
    parallel_for(lambda a, b: _gather_images(*arrays, start + a, start + b), stop - start)
