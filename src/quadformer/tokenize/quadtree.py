"""Batched quadtree selection with sorts only (``docs/design/mixed_resolution.md``).

No Python loop over images or splits: the only loops run over the L scales (L <= ~5).
The exception is eager CPU at batch sizes up to :data:`HEAP_MAX_BATCH`, where ~160 tiny tensor
ops cost more than the definition itself: there :func:`select_tokens` runs the best-first
expansion with a heap on the host (the same priorities, so the same tokens; tested equal).

Idea: best-first expansion with fixed, distinct priorities splits nodes in the order of a
lexicographic key ``K(v) = (e_0 .. e_{L-2})`` where ``e_i`` is the suffix maximum of ranks
along the root-to-``v`` path (the weakest priority on the path decides, ties of that
bottleneck resolved recursively below it). Ranks come from one stable sort on the canonical
layout (side descending, raster), which realises the tie rule exactly.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import torch
from torch import Tensor

from .geometry import QuadGeometry
from .validation import is_tracing, validating

_INT64_MAX = 2**63 - 1


@dataclass(frozen=True)
class CellTables:
    """Per-cell tables for all scales in canonical order (scale L-1 first, raster within).

    ``meta`` rows are ``(x_c, y_c, size_id)`` in p_min units; ``boxes`` rows are pixel
    ``(x0, y0, x1, y1)`` half-open.
    """

    meta: Tensor  # [M, 3] float32
    boxes: Tensor  # [M, 4] int64
    offsets: tuple[int, ...]  # start of each scale's block, indexed by scale


def canonical_scales(geometry: QuadGeometry) -> list[int]:
    """Scales in canonical order: largest patches first."""
    return list(range(geometry.num_scales - 1, -1, -1))


def _cell_tables_cpu(geometry: QuadGeometry) -> CellTables:
    metas, boxes, offsets = [], [], [0] * geometry.num_scales
    start = 0
    for s in canonical_scales(geometry):
        gh, gw = geometry.grid(s)
        p = geometry.patch_size(s)
        rows, cols = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
        rows, cols = rows.reshape(-1), cols.reshape(-1)
        f = float(1 << s)
        metas.append(
            torch.stack(
                [(cols + 0.5) * f, (rows + 0.5) * f, torch.full_like(cols, s, dtype=torch.float32)], -1
            ).float()
        )
        boxes.append(torch.stack([cols * p, rows * p, (cols + 1) * p, (rows + 1) * p], -1).long())
        offsets[s] = start
        start += gh * gw
    return CellTables(torch.cat(metas), torch.cat(boxes), tuple(offsets))


_TABLE_CACHE: dict[tuple, CellTables] = {}


def cell_tables(geometry: QuadGeometry, device: torch.device | str = "cpu") -> CellTables:
    """Index tables of ``geometry`` on ``device``, cached by (image size, patch sizes, device)
    value (the budget does not change them; a plain tuple key keeps the lookup cheap)."""
    key = (geometry.height, geometry.width, geometry.p_min, geometry.p_max, device)
    tables = _TABLE_CACHE.get(key)
    if tables is None:
        cpu = _cell_tables_cpu(geometry)
        tables = CellTables(cpu.meta.to(device), cpu.boxes.to(device), cpu.offsets)
        if not is_tracing():  # a tracer's tables are fake tensors: never keep them
            _TABLE_CACHE[key] = tables
    return tables


def _flatten_scores(scores: list[Tensor], geometry: QuadGeometry) -> Tensor:
    """Stack per-scale maps (index s-1 for scale s) into ``[B, T]`` canonical layout."""
    L = geometry.num_scales
    if len(scores) != L - 1:
        raise ValueError(f"expected {L - 1} score maps (scales 1..{L - 1}), got {len(scores)}")
    flat = []
    for s in range(L - 1, 0, -1):
        m = scores[s - 1]
        gh, gw = geometry.grid(s)
        if m.shape[-2:] != (gh, gw):
            raise ValueError(f"score map for scale {s} has shape {tuple(m.shape)}, expected [B, {gh}, {gw}]")
        flat.append(m.reshape(m.shape[0], -1))
    out = torch.cat(flat, 1)
    if validating(out) and bool(torch.isnan(out).any()):
        raise ValueError("patch scores contain NaN; check the scorer's input (e.g. NaN pixels)")
    return out


def _descending_rank(flat: Tensor) -> Tensor:
    """Position of each entry of ``[B, T]`` in its row sorted descending, ties by index.

    Eager: one stable sort. Traced (export, ONNX, torch.compile): the same ranks counted by
    exact comparisons (``#greater + #equal before``), since ONNX has no stable sort; the
    ``[B, T, T]`` comparison is small for the T of real geometries."""
    B, T = flat.shape
    positions = torch.arange(T, device=flat.device)
    if is_tracing():
        a, b = flat.unsqueeze(2), flat.unsqueeze(1)  # a: entry i, b: entry j
        before = (b > a) | ((b == a) & (positions.view(1, 1, T) < positions.view(1, T, 1)))
        return before.sum(2)
    order = torch.sort(flat, dim=1, descending=True, stable=True).indices
    return torch.zeros_like(order).scatter(1, order, positions.expand(B, T))


def _upsample_nearest(x: Tensor, factor: int) -> Tensor:
    """``[B, h, w] -> [B, h*f, w*f]`` by repetition (a child reads its parent's value)."""
    if factor == 1:
        return x
    b, h, w = x.shape
    return x[:, :, None, :, None].expand(b, h, factor, w, factor).reshape(b, h * factor, w * factor)


def select_splits(
    scores: list[Tensor], geometry: QuadGeometry, batch_size: int | None = None, device: torch.device | None = None
) -> list[Tensor]:
    """Which internal nodes are split, for a batch.

    Args:
        scores: ``L-1`` importance maps, index ``s-1`` for scale ``s``, ``[B, H/p_s, W/p_s]``.
    Returns:
        ``L`` boolean maps indexed by scale (``[B, H/p_s, W/p_s]``); scale 0 is all False.
        Exactly ``geometry.num_splits`` nodes are True per image and they form a valid tree.
        ``batch_size``/``device`` are only needed when there are no maps (L = 1).
    """
    L, k = geometry.num_scales, geometry.num_splits
    B = scores[0].shape[0] if scores else int(batch_size or 0)
    device = scores[0].device if scores else torch.device(device or "cpu")
    split = [torch.zeros(B, *geometry.grid(s), dtype=torch.bool, device=device) for s in range(L)]
    if L == 1 or k == 0:
        return split
    flat = _flatten_scores(scores, geometry).float()  # [B, T]
    T = flat.shape[1]
    rank = _descending_rank(flat)

    # Per-depth rank maps (depth d = L-1-s), then suffix maxima along root-to-node paths.
    rank_maps, start = [], 0
    for s in range(L - 1, 0, -1):
        gh, gw = geometry.grid(s)
        rank_maps.append(rank[:, start : start + gh * gw].view(B, gh, gw))
        start += gh * gw

    radix = T + 1
    packable = radix ** (L - 1) <= _INT64_MAX
    keys, digit_lists = [], []
    suffix: list[Tensor] = []  # e_0..e_d for the current depth, on its grid
    for d, r in enumerate(rank_maps):
        suffix = [torch.maximum(_upsample_nearest(e, 2), r) for e in suffix] + [r]
        digits = [e.reshape(B, -1) + 1 for e in suffix]  # e_i + 1; absent entries are 0
        if packable:
            key = digits[0] * radix ** (L - 2)
            for i, dg in enumerate(digits[1:], start=1):
                key = key + dg * radix ** (L - 2 - i)
            keys.append(key)
        else:
            zero = torch.zeros_like(digits[0])
            digit_lists.append(digits + [zero] * (L - 1 - len(digits)))

    if packable:
        # Keys are distinct (a node's own rank is its last non-zero digit), so the k smallest
        # are those up to the k-th smallest: a comparison, no scatter (ONNX/jit.trace-friendly).
        key = torch.cat(keys, 1)  # canonical layout, [B, T]
        kth = torch.topk(key, k, dim=1, largest=False, sorted=True).values[:, k - 1 :]
        mask = key <= kth
    else:
        # Lexicographic order by stable sorts from the last entry to the first (LSD radix).
        cols = [torch.cat([dl[i] for dl in digit_lists], 1) for i in range(L - 1)]
        perm = torch.arange(T, device=device).expand(B, T)
        for i in range(L - 2, -1, -1):
            sub = torch.gather(cols[i], 1, perm)
            perm = torch.gather(perm, 1, torch.sort(sub, dim=1, stable=True).indices)
        # position of each node in the lexicographic order (the inverse permutation)
        pos = torch.zeros_like(perm).scatter(1, perm, torch.arange(T, device=device).expand(B, T))
        mask = pos < k

    start = 0
    for s in range(L - 1, 0, -1):
        gh, gw = geometry.grid(s)
        split[s] = mask[:, start : start + gh * gw].view(B, gh, gw)
        start += gh * gw
    return split


def token_mask(split: list[Tensor], geometry: QuadGeometry) -> Tensor:
    """``[B, M]`` boolean over all cells in canonical order: a cell is a token when it is a
    root or its parent is split, and it is not split itself."""
    L = geometry.num_scales
    parts = []
    parent_split = None
    for s in range(L - 1, -1, -1):
        alive = ~split[s] if parent_split is None else parent_split & ~split[s]
        parts.append(alive.flatten(1))
        parent_split = _upsample_nearest(split[s], 2)
    return torch.cat(parts, 1)


#: largest batch that eager CPU selects with the host-side heap (measured break-even: ~8)
HEAP_MAX_BATCH = 4

_CHILDREN_CACHE: dict[tuple, tuple[list[tuple[tuple[int, ...], bool]], int]] = {}


def _children(geometry: QuadGeometry) -> tuple[list[tuple[tuple[int, ...], bool]], int]:
    """Per internal node (canonical index ``t`` < T): its 4 children's canonical indices and
    whether they are internal nodes themselves; and the number of roots. Cached per geometry."""
    g = geometry
    key = (g.height, g.width, g.p_min, g.p_max)
    hit = _CHILDREN_CACHE.get(key)
    if hit is None:
        starts, start = {}, 0
        for s in canonical_scales(g):
            starts[s] = start
            start += g.grid(s)[0] * g.grid(s)[1]
        children = []
        for s in range(g.num_scales - 1, 0, -1):
            gh, gw = g.grid(s)
            cgw = g.grid(s - 1)[1]
            for r in range(gh):
                for c in range(gw):
                    kids = tuple(starts[s - 1] + (2 * r + dr) * cgw + 2 * c + dc for dr in (0, 1) for dc in (0, 1))
                    children.append((kids, s > 1))
        roots = g.grid(g.num_scales - 1)
        hit = _CHILDREN_CACHE[key] = (children, roots[0] * roots[1])
    return hit


def _select_tokens_heap(scores: list[Tensor], geometry: QuadGeometry) -> Tensor:
    """The best-first definition itself, per image on the host: split the active node of
    highest priority (score desc, then canonical index asc, which is the tie rule of
    :func:`_descending_rank`) ``num_splits`` times; tokens are the active leaves."""
    children, roots = _children(geometry)
    out = []
    for row in _flatten_scores(scores, geometry).float().tolist():
        heap = [(-row[t], t) for t in range(roots)]
        heapq.heapify(heap)
        tokens = set(range(roots))
        for _ in range(geometry.num_splits):
            t = heapq.heappop(heap)[1]
            kids, internal = children[t]
            tokens.discard(t)
            tokens.update(kids)
            if internal:
                for u in kids:
                    heapq.heappush(heap, (-row[u], u))
        out.append(sorted(tokens))
    return torch.tensor(out, dtype=torch.int64, device=scores[0].device)


def select_tokens(
    scores: list[Tensor], geometry: QuadGeometry, batch_size: int | None = None, device: torch.device | None = None
) -> Tensor:
    """Indices ``[B, N]`` into the canonical cell layout of the selected tokens, in
    canonical emission order (side descending, then y, then x)."""
    if (scores and geometry.num_splits and scores[0].device.type == "cpu" and not is_tracing()
            and 0 < scores[0].shape[0] <= HEAP_MAX_BATCH):
        return _select_tokens_heap(scores, geometry)
    mask = token_mask(select_splits(scores, geometry, batch_size, device), geometry)
    n, m = geometry.num_patches, geometry.num_cells
    if mask.device.type == "cpu" and not is_tracing():  # eager CPU: row-major order is canonical, n per row
        return mask.nonzero()[:, 1].contiguous().view(mask.shape[0], n)
    # A token's output slot is the number of tokens before it (a cumsum); non-tokens write to
    # a spare slot n, dropped. No sort: canonical order by construction, on every backend.
    slot = torch.where(mask, torch.cumsum(mask, 1) - 1, n)
    cells = torch.arange(m, device=mask.device).expand(mask.shape[0], m)
    return torch.zeros(mask.shape[0], n + 1, dtype=torch.int64, device=mask.device).scatter(1, slot, cells)[:, :n]
