"""Quadtree selection: batched implementation vs the slow sequential definition (spec §2)."""

from __future__ import annotations

import heapq

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from quadformer.tokenize import QuadGeometry, legal_budgets, select_splits, select_tokens
from quadformer.tokenize.quadtree import cell_tables


def sequential_splits(scores: list[torch.Tensor], g: QuadGeometry) -> set[tuple[int, int, int]]:
    """Normative definition, one image: repeatedly split the active patch of highest priority
    (importance desc, side desc, y asc, x asc). Returns {(scale, row, col)} of split nodes."""
    L = g.num_scales
    heap = []

    def push(s: int, r: int, c: int) -> None:
        if s >= 1:
            imp = float(scores[s - 1][r, c])
            heapq.heappush(heap, (-imp, -s, r * g.patch_size(s), c * g.patch_size(s), s, r, c))

    gh, gw = g.grid(L - 1)
    for r in range(gh):
        for c in range(gw):
            push(L - 1, r, c)
    done = set()
    for _ in range(g.num_splits):
        *_, s, r, c = heapq.heappop(heap)
        done.add((s, r, c))
        for dr in (0, 1):
            for dc in (0, 1):
                push(s - 1, 2 * r + dr, 2 * c + dc)
    return done


def batched_split_set(split: list[torch.Tensor], b: int) -> set[tuple[int, int, int]]:
    out = set()
    for s, m in enumerate(split):
        for r, c in m[b].nonzero().tolist():
            out.add((s, r, c))
    return out


def make_scores(g: QuadGeometry, batch: int, kind: str, gen: torch.Generator) -> list[torch.Tensor]:
    maps = []
    for s in range(1, g.num_scales):
        shape = (batch, *g.grid(s))
        if kind == "random":
            maps.append(torch.rand(shape, generator=gen))
        elif kind == "ties":
            maps.append(torch.randint(0, 3, shape, generator=gen).float())
        elif kind == "constant":
            maps.append(torch.ones(shape))
        elif kind == "zeros_sparse":  # Grad-CAM-like: many exact zeros
            m = torch.rand(shape, generator=gen)
            maps.append(torch.where(m > 0.7, m, torch.zeros_like(m)))
    return maps


GEOMETRIES = [
    (64, 64, 16, 64),  # L=3, square
    (32, 32, 4, 16),  # CIFAR-like
    (32, 32, 2, 8),
    (48, 80, 8, 16),  # non-square, non power of two
    (96, 64, 8, 32),
    (32, 32, 2, 16),  # L=4
]


@pytest.mark.parametrize("h,w,pmin,pmax", GEOMETRIES)
@pytest.mark.parametrize("kind", ["random", "ties", "constant", "zeros_sparse"])
def test_batched_equals_sequential_every_k(h, w, pmin, pmax, kind):
    gen = torch.Generator().manual_seed(hash((h, w, pmin, pmax, kind)) % 2**31)
    budgets = legal_budgets(h, w, pmin, pmax)
    base = QuadGeometry(h, w, pmin, pmax, budgets[0])
    scores = make_scores(base, 3, kind, gen)
    for n in budgets:
        g = base.with_budget(n)
        split = select_splits(scores, g)
        for b in range(3):
            want = sequential_splits([m[b] for m in scores], g)
            assert batched_split_set(split, b) == want, (n, b)


def test_unpackable_key_path_matches_sequential(monkeypatch):
    """Force the stable-sort (LSD radix) fallback and compare with the oracle."""
    import quadformer.tokenize.quadtree as qt

    g0 = QuadGeometry(32, 32, 2, 16, 4)
    gen = torch.Generator().manual_seed(0)
    scores = make_scores(g0, 2, "ties", gen)
    monkeypatch.setattr(qt, "_INT64_MAX", 10)
    for n in legal_budgets(32, 32, 2, 16)[::7]:
        g = g0.with_budget(n)
        split = qt.select_splits(scores, g)
        for b in range(2):
            assert batched_split_set(split, b) == sequential_splits([m[b] for m in scores], g)


def tile_check(boxes: torch.Tensor, h: int, w: int) -> None:
    cover = torch.zeros(h, w, dtype=torch.int32)
    for x0, y0, x1, y1 in boxes.tolist():
        cover[y0:y1, x0:x1] += 1
    assert torch.equal(cover, torch.ones_like(cover)), "tokens must tile the image exactly once"


@settings(max_examples=40, deadline=None)
@given(
    pmin=st.sampled_from([1, 2, 4, 8]),
    levels=st.integers(1, 4),
    gh=st.integers(1, 3),
    gw=st.integers(1, 3),
    data=st.data(),
)
def test_property_partition_exact_budget_canonical_order(pmin, levels, gh, gw, data):
    pmax = pmin << (levels - 1)
    h, w = gh * pmax, gw * pmax
    budgets = legal_budgets(h, w, pmin, pmax)
    n = data.draw(st.sampled_from(budgets))
    g = QuadGeometry(h, w, pmin, pmax, n)
    seed = data.draw(st.integers(0, 2**16))
    kind = data.draw(st.sampled_from(["random", "ties", "constant"]))
    scores = make_scores(g, 2, kind, torch.Generator().manual_seed(seed))
    idx = select_tokens(scores, g, batch_size=2)
    assert idx.shape == (2, n)
    tables = cell_tables(g)
    for b in range(2):
        boxes = tables.boxes[idx[b]]
        tile_check(boxes, h, w)
        side = boxes[:, 2] - boxes[:, 0]
        key = [(-int(s), int(y), int(x)) for s, y, x in zip(side, boxes[:, 1], boxes[:, 0])]
        assert key == sorted(key), "tokens must be in canonical order"
    if kind != "constant" and levels > 1:
        split = select_splits(scores, g)
        for b in range(2):
            assert batched_split_set(split, b) == sequential_splits([m[b] for m in scores], g)


def test_highest_importance_split_first():
    g = QuadGeometry(128, 64, 16, 64, 2 + 3)
    s2 = torch.tensor([[[0.1], [0.9]]])  # two roots stacked vertically
    s1 = torch.zeros(1, 4, 2)
    split = select_splits([s1, s2], g)
    assert split[2][0].tolist() == [[False], [True]]


def test_nan_scores_raise():
    g = QuadGeometry(64, 64, 16, 64, 7)
    s = [torch.rand(1, 2, 2), torch.full((1, 1, 1), float("nan"))]
    with pytest.raises(ValueError, match="NaN"):
        select_splits(s, g)


def test_uniform_l1_selects_raster_grid():
    g = QuadGeometry(64, 32, 16, 16, 8)
    idx = select_tokens([], g, batch_size=2)
    assert idx.tolist() == [list(range(8))] * 2


@pytest.mark.parametrize("h,w,pmin,pmax", GEOMETRIES)
@pytest.mark.parametrize("kind", ["random", "ties", "constant", "zeros_sparse"])
def test_host_heap_path_equals_batched_path(h, w, pmin, pmax, kind, monkeypatch):
    """Small eager-CPU batches select on the host with a heap: the same tokens as the batched
    sort-based path (forced with HEAP_MAX_BATCH = 0), every budget, ties included."""
    import quadformer.tokenize.quadtree as qt

    gen = torch.Generator().manual_seed(hash((h, w, pmin, pmax, kind, "heap")) % 2**31)
    base = QuadGeometry(h, w, pmin, pmax, legal_budgets(h, w, pmin, pmax)[0])
    scores = make_scores(base, 3, kind, gen)
    assert qt.HEAP_MAX_BATCH >= 3
    for n in legal_budgets(h, w, pmin, pmax):
        g = base.with_budget(n)
        heap = select_tokens(scores, g)
        with monkeypatch.context() as m:
            m.setattr(qt, "HEAP_MAX_BATCH", 0)
            batched = select_tokens(scores, g)
        assert torch.equal(heap, batched), n
        assert torch.equal(select_tokens([s[:1].double() for s in scores], g), batched[:1])  # any float dtype
