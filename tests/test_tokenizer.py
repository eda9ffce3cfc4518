"""Resampling, token layout, embeddings, the tokenizer, reverse quadtree
(``docs/design/mixed_resolution.md`` §5, §6, §8, §9, §11)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from quadformer.tokenize import (
    QuadGeometry,
    Tokenizer,
    downscale,
    mosaic,
    pool_to_tokens,
    reverse_quadtree,
    sincos_2d,
)
from quadformer.tokenize.pos_embed import LearnedGridPosEmbed
from quadformer.tokenize.scorers.base import PatchScorer

from .reference_tokens import mosaic_tokens, sincos


class FixedScorer(PatchScorer):
    """Deterministic test scorer: importance = mean intensity of each cell."""

    def score(self, images, geometry, **_):
        return [F.avg_pool2d(images.float().mean(1, keepdim=True), geometry.patch_size(s)).squeeze(1)
                for s in range(1, geometry.num_scales)]


def test_reference_resample_is_bilinear_and_central_2x2():
    x = torch.randn(2, 3, 64, 48)
    for f in (2, 4, 8):
        ref = F.interpolate(x, size=(64 // f, 48 // f), mode="bilinear", align_corners=False, antialias=False)
        torch.testing.assert_close(downscale(x, f, "reference"), ref, rtol=0, atol=1e-6)
    # scale 1 = exact 2x2 mean
    torch.testing.assert_close(downscale(x, 2), x.unfold(2, 2, 2).unfold(3, 2, 2).mean((-1, -2)))
    # scale 2 = mean of the central 2x2 of each 4x4 block
    blk = x.unfold(2, 4, 4).unfold(3, 4, 4)[..., 1:3, 1:3].mean((-1, -2))
    torch.testing.assert_close(downscale(x, 4), blk)
    torch.testing.assert_close(downscale(x, 4, "area"), x.unfold(2, 4, 4).unfold(3, 4, 4).mean((-1, -2)))


def test_token_pixels_layout_boxes_meta():
    g = QuadGeometry(64, 64, 8, 32, 4 + 3 * 3)
    x = torch.randn(2, 3, 64, 64)
    pixels, boxes, meta = mosaic(x, g, FixedScorer())
    assert pixels.shape == (2, g.num_patches, 3 * 64) and boxes.dtype == torch.int64 and meta.dtype == torch.float32
    for b in range(2):
        for n in range(g.num_patches):
            x0, y0, x1, y1 = boxes[b, n].tolist()
            side = x1 - x0
            s = int(math.log2(side // 8))
            assert meta[b, n].tolist() == [(x0 + x1) / 16, (y0 + y1) / 16, s]
            crop = x[b : b + 1, :, y0:y1, x0:x1]
            want = F.interpolate(crop, size=(8, 8), mode="bilinear", align_corners=False) if s else crop
            # channel-major, then row, then column (Conv2d weight / F.unfold layout)
            torch.testing.assert_close(pixels[b, n], want.reshape(-1), atol=1e-6, rtol=0)


def test_meta_values_known_cells():
    g = QuadGeometry(64, 64, 16, 64, 1)
    _, boxes, meta = mosaic(torch.zeros(1, 3, 64, 64), g, FixedScorer())
    assert meta[0, 0].tolist() == [2.0, 2.0, 2.0] and boxes[0, 0].tolist() == [0, 0, 64, 64]
    g = QuadGeometry(32, 32, 16, 16, 4)
    _, boxes, meta = mosaic(torch.zeros(1, 3, 32, 32), g, None)
    assert meta[0, :, :2].tolist() == [[0.5, 0.5], [1.5, 0.5], [0.5, 1.5], [1.5, 1.5]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_dtypes(dtype):
    tok = Tokenizer(64, 8, 32, num_patches=10, embed_dim=32, scorer=FixedScorer()).to(dtype)
    x = torch.randn(2, 3, 64, 64).to(dtype)
    tokens, boxes, meta = tok(x)
    assert tokens.dtype == dtype and tokens.shape == (2, 11, 32)
    pix32, _, _ = mosaic(x.float(), tok.geometry, FixedScorer())
    pix, _, _ = mosaic(x, tok.geometry, FixedScorer())
    assert pix.dtype == dtype
    torch.testing.assert_close(pix.float(), pix32, atol=0.05, rtol=0.02)


def test_sincos_values():
    meta = torch.tensor([[[0.5, 0.5, 0.0], [2.0, 6.0, 2.0], [13.5, 0.5, 0.0]]])
    got = sincos_2d(meta, 16)
    for n, (x, y, _) in enumerate(meta[0].tolist()):
        torch.testing.assert_close(got[0, n], torch.tensor(sincos(x, y, 16)), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="% 4"):
        sincos_2d(meta, 18)


def test_learned_grid_reads_own_cell_and_interpolates():
    pe = LearnedGridPosEmbed(4, (4, 6))
    with torch.no_grad():
        pe.grid.copy_(torch.randn_like(pe.grid))
    meta = torch.tensor([[[2.5, 1.5, 0.0], [1.0, 1.0, 1.0]]])  # p_min cell (row 1, col 2); 2x2 patch at origin
    out = pe(meta)
    torch.testing.assert_close(out[0, 0], pe.grid[0, :, 1, 2])
    torch.testing.assert_close(out[0, 1], pe.grid[0, :, :2, :2].mean((-1, -2)))


def test_patch_embed_equals_conv_on_uniform_grid():
    tok = Tokenizer(32, 8, 8, num_patches=16, embed_dim=16, scorer=None, class_token=False)
    x = torch.randn(2, 3, 32, 32)
    tokens, _, meta = tok(x)
    conv = tok.patch_embed.proj(x).flatten(2).transpose(1, 2)
    torch.testing.assert_close(tokens - tok.pos_grid(meta), conv, atol=1e-5, rtol=1e-5)


def test_budget_change_and_illegal_budget():
    tok = Tokenizer(64, 8, 32, num_patches=10, embed_dim=16, scorer=FixedScorer())
    tok.set_num_patches(22)
    assert tok(torch.randn(1, 3, 64, 64))[0].shape[1] == 23
    with pytest.raises(ValueError, match="nearest: 19, 22"):
        tok.set_num_patches(20)
    with pytest.raises(ValueError, match="do not match"):
        tok(torch.randn(1, 3, 60, 64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_reverse_quadtree_and_pool_round_trip(dtype):
    g = QuadGeometry(64, 96, 8, 32, 6 + 3 * 10)
    x = torch.randn(2, 3, 64, 96)
    _, boxes, meta = mosaic(x, g, FixedScorer())
    feats = torch.randn(2, 1 + g.num_patches, 5, dtype=dtype, requires_grad=True)
    dense = reverse_quadtree(feats, meta, 64, 96, 8, num_prefix_tokens=1, debug=True)
    assert dense.shape == (2, 5, 8, 12) and dense.dtype == dtype
    # every cell inside a token's box holds that token's vector
    for n in range(g.num_patches):
        x0, y0, x1, y1 = (boxes[1, n] // 8).tolist()
        assert torch.equal(dense[1, :, y0:y1, x0:x1], feats[1, 1 + n, :, None, None].expand(-1, y1 - y0, x1 - x0))
    back = pool_to_tokens(dense, meta)
    torch.testing.assert_close(back, feats[:, 1:].detach(), atol=1e-2 if dtype != torch.float32 else 1e-6, rtol=0)
    dense.float().sum().backward()
    side = (boxes[..., 2] - boxes[..., 0]) // 8
    torch.testing.assert_close(feats.grad[:, 1:, 0].float(), (side**2).float())
    # boxes work as well as meta
    assert torch.equal(reverse_quadtree(feats.detach(), boxes, 64, 96, 8, num_prefix_tokens=1), dense.detach())


def test_pool_to_tokens_is_block_mean():
    g = QuadGeometry(32, 32, 4, 16, 4 + 3 * 2)
    _, _, meta = mosaic(torch.randn(1, 3, 32, 32), g, FixedScorer())
    dense = torch.arange(64, dtype=torch.float32).view(1, 1, 8, 8)
    pooled = pool_to_tokens(dense, meta)
    for n in range(g.num_patches):
        xc, yc, s = meta[0, n].tolist()
        half = 2 ** (s - 1) if s else 0.5
        blk = dense[0, 0, int(yc - half) : int(yc + half), int(xc - half) : int(xc + half)]
        assert pooled[0, n, 0].item() == pytest.approx(blk.mean().item())


@pytest.mark.parametrize("pos", ["sincos", "learned_grid"])
def test_tokenizer_tokens_are_embed_plus_position(pos):
    tok = Tokenizer((64, 96), 8, 32, num_patches=6 + 3 * 5, embed_dim=16, scorer=FixedScorer(), pos_embed=pos)
    if pos == "learned_grid":
        with torch.no_grad():
            tok.pos_grid.grid.normal_()
            tok.cls_pos.normal_()
    x = torch.randn(2, 3, 64, 96)
    tokens, boxes, meta = tok(x)
    pixels, boxes2, meta2 = mosaic(x, tok.geometry, FixedScorer())
    assert torch.equal(boxes, boxes2) and torch.equal(meta, meta2)
    want = tok.patch_embed(pixels) + tok.pos_grid(meta)
    torch.testing.assert_close(tokens[:, 1:], want, atol=1e-5, rtol=1e-5)
    cls = tok.cls_token + (tok.cls_pos if pos == "learned_grid" else 0)
    torch.testing.assert_close(tokens[:, :1], cls.expand(2, -1, -1))
    keys = list(tok.state_dict())
    assert len(keys) == len(set(keys)) and all(not k.startswith("pos_table") for k in keys)
    if pos == "learned_grid":
        tokens.sum().backward()
        assert tok.pos_grid.grid.grad is not None and tok.pos_grid.grid.grad.abs().sum() > 0


def test_tokenizer_equals_slow_reference_token_by_token():
    """Every token = W . (its box resized to p_min, bilinear) + b + sincos(its centre); cls first."""
    tok = Tokenizer((64, 96), 8, 32, num_patches=6 + 3 * 5, embed_dim=16, scorer=FixedScorer())
    with torch.no_grad():
        tok.cls_token.normal_()
    x = torch.randn(2, 3, 64, 96)
    tokens, boxes, _ = tok(x)
    p = tok.patch_embed.proj
    want = mosaic_tokens(x, boxes, 8, p.weight, p.bias, tok.cls_token)
    torch.testing.assert_close(tokens, want, atol=1e-4, rtol=1e-4)
