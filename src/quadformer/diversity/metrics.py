"""Diversity metrics of docs/design/diverse_transfer.md §2 as pure functions on tensors (float64 internally).

* :func:`erank` -- effective rank exp(-Σ p_r log p_r), p_r = σ_r / Σσ over non-zero σ.
* W1 :func:`filter_cosine_diversity` -- 1 - mean_{i≠j} |ŵ_i·ŵ_j| (exact; blocked for large K).
* W2 :func:`filter_erank` -- erank(Ŵ) / min(K, fan_in), rows normalised, not centred.
* A1 :func:`feature_erank` -- erank(Z centred by column) / min(N, d) (RankMe-style).
* A2 :func:`layer_erank` -- erank(X centred by column) / channels.
* A3 :func:`channel_correlation` -- mean_{i≠j} |corr(Z_i, Z_j)|, constant channels count 0.

"Non-zero" singular values are those above ``σ_max · max(n, d) · eps`` with ``eps`` the
machine epsilon of the *input* dtype (float32 inputs carry float32 round-off, which must not
count as extra rank), the same rule as ``torch.linalg.matrix_rank``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "singular_values", "erank", "erank_from_singular_values", "normalize_rows", "filter_cosine_diversity",
    "filter_erank", "feature_erank", "layer_erank", "channel_correlation", "strided_rows",
]

# Default W1 block: rows per block, so that one block of the Gram matrix holds <= 2^22 float64.
_W1_BLOCK_ELEMS = 1 << 22


def _as_matrix(m: Tensor, what: str) -> Tensor:
    if not isinstance(m, Tensor):
        m = torch.as_tensor(m)
    if m.dim() != 2:
        raise ValueError(f"{what} must be a 2-D matrix, got shape {tuple(m.shape)}")
    if m.shape[0] < 1 or m.shape[1] < 1:
        raise ValueError(f"{what} is empty: shape {tuple(m.shape)}")
    if not torch.isfinite(m).all():
        raise ValueError(f"{what} has non-finite entries (NaN/inf)")
    return m


def _eps(dtype: torch.dtype) -> float:
    return torch.finfo(dtype if dtype.is_floating_point else torch.float64).eps


def _svdvals(m: Tensor) -> Tensor:
    # LAPACK is several times faster on tall matrices; the singular values are the same.
    m = m.to(torch.float64)
    return torch.linalg.svdvals(m.T if m.shape[0] < m.shape[1] else m)


def singular_values(m: Tensor) -> Tensor:
    """Singular values of ``m`` in float64 (descending), on ``m``'s device."""
    return _svdvals(_as_matrix(m, "matrix"))


def erank_from_singular_values(s: Tensor, shape: tuple[int, int] | None = None,
                               eps: float = torch.finfo(torch.float64).eps) -> float:
    """Effective rank from singular values: zero (below ``σ_max·max(shape)·eps``) are dropped.
    An all-zero matrix has erank 0."""
    s = s.to(torch.float64).flatten()
    if s.numel() == 0:
        return 0.0
    smax = float(s.max())
    if smax <= 0:
        return 0.0
    tol = smax * (max(shape) if shape else s.numel()) * eps
    s = s[s > tol]
    p = s / s.sum()
    return float(torch.exp(-(p * torch.log(p)).sum()))


def erank(m: Tensor) -> float:
    """Effective rank of a matrix (Roy & Vetterli 2007), float64 SVD."""
    m = _as_matrix(m, "matrix")
    return erank_from_singular_values(singular_values(m), tuple(m.shape), _eps(m.dtype))


def normalize_rows(w: Tensor) -> Tensor:
    """Rows scaled to unit L2 norm in float64; all-zero rows stay zero."""
    w = w.to(torch.float64)
    n = torch.linalg.vector_norm(w, dim=1, keepdim=True)
    return torch.where(n > 0, w / torch.where(n > 0, n, torch.ones_like(n)), torch.zeros_like(w))


def filter_cosine_diversity(w: Tensor, block_size: int | None = None) -> float:
    """W1: ``1 - (1/(K(K-1))) Σ_{i≠j} |ŵ_i·ŵ_j|`` for filters = rows of ``w`` ``[K, fan_in]``.

    Exact for any K: the Gram matrix is built ``block_size`` rows at a time (default: as
    many rows as keep a block under 4 Mi float64 entries), never materialised whole when
    K is large. All-zero filters have cosine 0 with everything. Needs K >= 2."""
    w = _as_matrix(w, "filter matrix")
    k = w.shape[0]
    if k < 2:
        raise ValueError(f"W1 needs at least 2 filters, got K={k}")
    wh = normalize_rows(w)
    if block_size is None:
        block_size = max(1, _W1_BLOCK_ELEMS // k)
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    off = torch.zeros((), dtype=torch.float64, device=wh.device)
    for a in range(0, k, block_size):
        b = min(k, a + block_size)
        g = (wh[a:b] @ wh.T).abs_()
        idx = torch.arange(b - a, device=wh.device)
        g[idx, idx + a] = 0.0  # drop i == j
        off = off + g.sum()
    return float(1.0 - off / (k * (k - 1)))


def filter_erank(w: Tensor) -> float:
    """W2: ``erank(Ŵ) / min(K, fan_in)`` with unit-norm rows, not centred."""
    w = _as_matrix(w, "filter matrix")
    wh = normalize_rows(w)
    return erank_from_singular_values(_svdvals(wh), tuple(w.shape), _eps(w.dtype)) / min(w.shape)


def _centred(z: Tensor, what: str) -> tuple[Tensor, float]:
    z = _as_matrix(z, what)
    eps = _eps(z.dtype)
    z = z.to(torch.float64)
    return z - z.mean(0, keepdim=True), eps


def feature_erank(z: Tensor) -> float:
    """A1: ``erank(Z - mean_rows(Z)) / min(N, d)`` for features ``Z`` ``[N, d]``."""
    zc, eps = _centred(z, "feature matrix")
    return erank_from_singular_values(_svdvals(zc), tuple(zc.shape), eps) / min(zc.shape)


def layer_erank(x: Tensor) -> float:
    """A2 for one layer: ``erank(X centred) / channels`` for activation rows ``X`` ``[rows, C]``."""
    xc, eps = _centred(x, "activation matrix")
    return erank_from_singular_values(_svdvals(xc), tuple(xc.shape), eps) / xc.shape[1]


def channel_correlation(z: Tensor) -> float:
    """A3: ``ρ̄ = mean_{i≠j} |corr(Z_i, Z_j)|`` over the d columns of ``Z`` ``[N, d]``.

    A constant channel (std at round-off level of its magnitude) has correlation 0 with
    every other channel and still counts in the d(d-1) pairs. Needs d >= 2 and N >= 2."""
    zc, eps = _centred(z, "feature matrix")
    n, d = zc.shape
    if d < 2 or n < 2:
        raise ValueError(f"A3 needs >= 2 channels and >= 2 samples, got Z of shape {(n, d)}")
    norm = torch.linalg.vector_norm(zc, dim=0)
    scale = z.detach().to(torch.float64).abs().amax(0) * math.sqrt(n)
    const = norm <= 32 * eps * scale
    zn = torch.where(const, torch.zeros_like(zc), zc / torch.where(const, torch.ones_like(norm), norm))
    c = (zn.T @ zn).abs_()
    c.fill_diagonal_(0.0)
    return float(c.sum() / (d * (d - 1)))


def strided_rows(x: Tensor, max_rows: int) -> Tensor:
    """Deterministic subsample: every ``ceil(rows/max_rows)``-th row (at most ``max_rows``)."""
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    stride = max(1, math.ceil(x.shape[0] / max_rows))
    return x[::stride][:max_rows]
