"""Fast paths of resampling and selection (issue 13) against their plain definitions."""

from __future__ import annotations

from unittest import mock

import pytest
import torch
import torch.nn.functional as F

from quadformer.tokenize import QuadGeometry
from quadformer.tokenize import quadtree as qt
from quadformer.tokenize import resample as rs
from quadformer.tokenize.validation import set_validation, validation


def _index(g: QuadGeometry, b: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    scores = [torch.rand(b, *g.grid(s), generator=gen) for s in range(1, g.num_scales)]
    return qt.select_tokens(scores, g)


@pytest.mark.parametrize("resample", ["reference", "area"])
def test_chunked_gather_equals_one_pass_and_definition(resample):
    g = QuadGeometry(64, 64, 8, 32, 31)
    x = torch.randn(7, 3, 64, 64)
    idx = _index(g, 7)
    with mock.patch.object(rs, "CPU_CHUNK_ELEMENTS", 2 * 3 * 64 * 64):  # chunks of 2 images, last of 1
        chunked = rs.gather_pixels(x, idx, g, resample)
    one = rs.gather_pixels(x, idx, g, resample)  # 7 images fit one chunk: the fixed-shape path
    assert torch.equal(chunked, one)
    cells = rs.multiscale_patches(x, g, resample)
    assert torch.equal(one, torch.gather(cells, 1, idx[..., None].expand(-1, -1, cells.shape[-1])))


def test_reference_downscale_is_central_bilinear():
    x = torch.randn(2, 3, 32, 32)
    for f in (2, 4, 8):
        ref = F.interpolate(x, scale_factor=1 / f, mode="bilinear", align_corners=False, antialias=False)
        assert torch.allclose(rs.downscale(x, f), ref, atol=1e-6)


def test_chunked_projection_keeps_gradients():
    g = QuadGeometry(32, 32, 4, 16, 28)
    x = torch.randn(5, 3, 32, 32)
    idx = _index(g, 5)
    lin = torch.nn.Linear(48, 8)
    with mock.patch.object(rs, "CPU_CHUNK_ELEMENTS", 2 * 3 * 32 * 32):
        out = rs.gather_pixels(x, idx, g, project=lin)
    ref = lin(rs.gather_pixels(x, idx, g))
    assert torch.allclose(out, ref, atol=1e-6)
    out.sum().backward()
    w = lin.weight.grad.clone()
    lin.zero_grad()
    ref.sum().backward()
    assert torch.allclose(w, lin.weight.grad, atol=1e-4)


def test_gather_gradient_reaches_images():
    g = QuadGeometry(32, 32, 4, 16, 28)
    x = torch.randn(5, 3, 32, 32, requires_grad=True)
    with mock.patch.object(rs, "CPU_CHUNK_ELEMENTS", 3 * 32 * 32):
        rs.gather_pixels(x, _index(g, 5), g).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", ["random", "ties"])
def test_traced_rank_equals_stable_sort(kind):
    gen = torch.Generator().manual_seed(3)
    flat = torch.rand(6, 85, generator=gen) if kind == "random" else torch.randint(0, 3, (6, 85), generator=gen).float()
    eager = qt._descending_rank(flat)
    with mock.patch.object(qt, "is_tracing", lambda: True):
        traced = qt._descending_rank(flat)
    assert torch.equal(eager, traced)
    order = torch.sort(flat, dim=1, descending=True, stable=True).indices
    assert torch.equal(torch.gather(eager, 1, order), torch.arange(85).expand(6, 85))


def test_select_tokens_canonical_order_and_count():
    g = QuadGeometry(64, 64, 8, 32, 40)
    idx = _index(g, 4, seed=5)
    assert idx.shape == (4, 40)
    assert bool((idx[:, 1:] > idx[:, :-1]).all())  # strictly increasing: canonical order, no repeats


def test_nan_check_is_opt_in_off_cpu():
    g = QuadGeometry(64, 64, 16, 64, 7)
    s = [torch.rand(1, 2, 2), torch.full((1, 1, 1), float("nan"))]
    with pytest.raises(ValueError, match="NaN"):
        qt.select_splits(s, g)  # eager CPU: checked by default
    with validation(False):
        split = qt.select_splits(s, g)  # unchecked: still a valid tree of k splits
    assert sum(int(m.sum()) for m in split) == g.num_splits
    set_validation(None)
