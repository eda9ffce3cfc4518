"""The eager-CPU fast paths of the pixel-blur tokenizer (issue 13) against the simple paths.

The fast paths (the fused CPU kernels, and without them the one-lerp up-sampling into
workspaces; the scorer's pyramid shared with the gather, ``gather_embed`` projecting straight
into the output) must give the same token
indices and the same values (bitwise for the scores, float rounding of a sum order for the
embeddings) as the differentiable/traceable path, for any batch size, image size and L.
"""

from __future__ import annotations

import functools
import importlib
from unittest import mock

import pytest
import torch

from quadformer.tokenize import QuadGeometry, Tokenizer
from quadformer.tokenize import resample as rs
from quadformer.tokenize.quadtree import select_tokens
from quadformer.tokenize.scorers.pixel_blur import PixelBlurScorer

from .conftest import reference_photos

blur_mod = importlib.import_module("quadformer.tokenize.scorers.blur")  # the package re-exports blur()

# (size, p_min, p_max, N): L = 2, 3, 3 and 4
GEOMETRIES = [(224, 16, 32, 100), (256, 16, 64, 100), (384, 16, 64, 144), (128, 8, 64, 40)]


def _traced():
    """Run code as if under torch.export/compile: the simple stacked forms."""
    return mock.patch.object(blur_mod, "is_tracing", lambda: True)


@pytest.mark.parametrize("f", [2, 4, 8])
def test_one_lerp_blur_and_rows_first_downsample_are_bitwise_the_stacked_forms(f):
    x = torch.randn(3, 3, 64, 96, generator=torch.Generator().manual_seed(f))
    eager_blur, eager_down = blur_mod.blur(x, f.bit_length() - 1), rs.downsample(x, f)
    with _traced(), mock.patch.object(rs, "is_tracing", lambda: True):
        traced_blur, traced_down = blur_mod.blur(x, f.bit_length() - 1), rs.downsample(x, f)
    assert torch.equal(eager_blur, traced_blur) and torch.equal(eager_down, traced_down)
    work = torch.empty(3 * 3 * (64 // 2 + 2) * (96 + 96 // 2 + 2))
    assert torch.equal(blur_mod.blur_into(x, f, torch.empty_like(x), work), eager_blur)
    assert torch.equal(blur_mod.blur_into(x, f, torch.empty_like(x), work, eager_down), eager_blur)
    torch.testing.assert_close(eager_blur, blur_mod.blur_reference(x, f.bit_length() - 1), rtol=0, atol=1e-6)


@pytest.mark.parametrize("batch", [1, 3, 7])
def test_chunked_scorer_with_pyramid_equals_one_pass(batch, torch_cpu_ops):
    g = QuadGeometry(64, 64, 4, 16, 37)
    x = torch.randn(batch, 3, 64, 64, generator=torch.Generator().manual_seed(batch))
    pyramid: dict[int, torch.Tensor] = {}
    chunked = PixelBlurScorer(chunk_elements=2 * 3 * 64 * 64)(x, g, pyramid=pyramid)  # chunks of 2 images
    one = PixelBlurScorer()._score_once(x, g)
    with _traced():
        traced = PixelBlurScorer()._score_once(x, g)
    for a, b, c in zip(chunked, one, traced):
        assert torch.equal(a, b) and torch.equal(a, c)
    assert sorted(pyramid) == [1, 2]
    for s, level in pyramid.items():
        assert torch.equal(level, rs.downscale(x, 1 << s))
    assert PixelBlurScorer()(x.double(), g, pyramid=(p64 := {})) and not p64  # only float32 images share it


def _tokenizer(size, pmin, pmax, n, **kw):
    torch.manual_seed(0)
    return Tokenizer(size, pmin, pmax, n, embed_dim=32, **kw).eval()


@pytest.mark.parametrize("size,pmin,pmax,n", GEOMETRIES)
@pytest.mark.parametrize("batch", [1, 3, 5])
def test_direct_embedding_equals_differentiable_path(size, pmin, pmax, n, batch):
    tok = _tokenizer(size, pmin, pmax, n)
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(size + batch))
    with torch.inference_mode():
        assert tok._direct_embedding(x)
        fast, fast_index = tok.embed_mosaic(x)
    slow, slow_index = tok.embed_mosaic(x)  # grad enabled: gather_pixels + patch_embed + pos + cat
    assert torch.equal(fast_index, slow_index)
    torch.testing.assert_close(fast, slow.detach(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("kw", [dict(pos_embed="learned_grid"), dict(class_token=False), dict(resample="area"),
                                dict(scorer="laplacian")])
def test_direct_embedding_variants(kw):
    tok = _tokenizer(128, 8, 32, 40, **kw)
    if tok.pos_table.pos_embed.__class__.__name__ == "LearnedGridPosEmbed":
        torch.nn.init.normal_(tok.pos_grid.grid)
    x = torch.randn(3, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        fast = tok(x)
    slow = tok(x)
    assert torch.equal(fast[1], slow[1]) and torch.equal(fast[2], slow[2])
    torch.testing.assert_close(fast[0], slow[0].detach(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("size,pmin,pmax,n", GEOMETRIES)
def test_gather_embed_equals_gather_then_linear(size, pmin, pmax, n):
    g = QuadGeometry(size, size, pmin, pmax, n)
    b = 3
    gen = torch.Generator().manual_seed(n)
    x = torch.randn(b, 3, size, size, generator=gen)
    index = select_tokens([torch.rand(b, *g.grid(s), generator=gen) for s in range(1, g.num_scales)], g)
    lin = torch.nn.Linear(3 * pmin * pmin, 16)
    cell_bias = torch.randn(g.num_cells, 16, generator=gen)
    prefix = torch.randn(2, 16, generator=gen)
    with torch.no_grad():
        ref = torch.cat([prefix.expand(b, -1, -1), lin(rs.gather_pixels(x, index, g)) - lin.bias + cell_bias[index]], 1)
        pyramid = {s: rs.downscale(x, 1 << s) for s in range(1, g.num_scales)}
        for pyr in (None, pyramid):
            out = rs.gather_embed(x, index, g, lin.weight, cell_bias, prefix, pyramid=pyr)
            torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)


def test_training_keeps_the_differentiable_path():
    tok = _tokenizer(64, 8, 32, 25).train()
    x = torch.randn(2, 3, 64, 64)
    assert not tok._direct_embedding(x)
    tok(x)[0].sum().backward()
    assert tok.patch_embed.proj.weight.grad is not None and tok.cls_token.grad is not None


@pytest.mark.parametrize("kind", ["random", "ties"])
def test_eager_token_indices_equal_the_traced_scatter(kind):
    from quadformer.tokenize import quadtree as qt

    g = QuadGeometry(128, 128, 8, 64, 85)  # L = 4
    gen = torch.Generator().manual_seed(5)
    draw = (lambda *s: torch.rand(*s, generator=gen)) if kind == "random" else \
        (lambda *s: torch.randint(0, 3, s, generator=gen).float())
    scores = [draw(5, *g.grid(s)) for s in range(1, g.num_scales)]
    eager = qt.select_tokens(scores, g)
    with mock.patch.object(qt, "is_tracing", lambda: True):
        traced = qt.select_tokens(scores, g)
    assert eager.is_contiguous() and torch.equal(eager, traced)


# ---- the pixel-blur scorer's eager CPU path against the plain definition (issue 13) ----

# (size, p_min, p_max, N): the ViT-S benchmark setting, the micro models, L = 2 and L = 4
SCORER_SETTINGS = [(256, 16, 64, 100), (128, 8, 32, 64), (224, 16, 32, 100), (128, 8, 64, 85)]


def _photos(size: int) -> torch.Tensor | None:
    return reference_photos(size)


@functools.cache
def _builtin_images(size: int) -> torch.Tensor:
    from quadformer.data import build_dataset, list_tasks

    imgs = []
    for task in list_tasks():
        ds = build_dataset(f"builtin:{task}", "test", size, size=2, seed=3)
        imgs += [ds[i][0] for i in range(2)]
    return torch.stack(imgs)


def _reference_maps(x: torch.Tensor, g: QuadGeometry) -> list[torch.Tensor]:
    """``sqrt(mse * p_s)`` from ``F.interpolate`` blurs, in float64 (the definition)."""
    x64 = x.double()
    maps = []
    for s in range(1, g.num_scales):
        p = g.patch_size(s)
        err = (blur_mod.blur_reference(x64, s) - x64).square()
        b, c, h, w = err.shape
        maps.append((err.view(b, c, h // p, p, w // p, p).mean(dim=(1, 3, 5)) * p).sqrt())
    return maps


@pytest.mark.parametrize("backend", ["kernels", "torch"])
@pytest.mark.parametrize("source", ["photos", "builtin"])
@pytest.mark.parametrize("size,pmin,pmax,n", SCORER_SETTINGS)
def test_pixel_blur_scores_and_tokens_equal_the_definition(source, size, pmin, pmax, n, backend, request):
    if backend == "torch":
        request.getfixturevalue("torch_cpu_ops")
    x = _photos(size) if source == "photos" else _builtin_images(size)
    if x is None:
        pytest.skip("no reference photos here")
    g = QuadGeometry(size, size, pmin, pmax, n)
    ref = _reference_maps(x, g)
    for chunk in (None, 3 * size * size):  # the default chunks and one image per chunk
        with torch.inference_mode():
            maps = PixelBlurScorer(chunk_elements=chunk)(x, g, pyramid={})
        for m, r in zip(maps, ref):
            torch.testing.assert_close(m.double(), r, rtol=1e-5, atol=1e-5 * float(r.abs().max()))
        assert torch.equal(select_tokens(maps, g), select_tokens([r.float() for r in ref], g))


@pytest.mark.parametrize("layout", ["channels_last", "cropped", "odd_batch_stride"])
def test_as_strided_views_follow_any_input_strides(layout):
    base = torch.randn(3, 3, 40, 72, generator=torch.Generator().manual_seed(7))
    x = {"channels_last": base[..., :32, :64].contiguous().to(memory_format=torch.channels_last),
         "cropped": base[:, :, 4:36, 8:72],
         "odd_batch_stride": base[::2, :, :32, :64]}[layout]
    g = QuadGeometry(32, 64, 4, 16, 29)
    for f in (2, 4, 8):
        eager_down, eager_blur = rs.downsample(x, f), blur_mod.blur(x, f.bit_length() - 1)
        with _traced(), mock.patch.object(rs, "is_tracing", lambda: True):
            traced_down, traced_blur = rs.downsample(x, f), blur_mod.blur(x, f.bit_length() - 1)
        assert torch.equal(eager_down, traced_down) and torch.equal(eager_blur, traced_blur)
    contiguous = PixelBlurScorer()(x.contiguous(), g)
    for a, b in zip(PixelBlurScorer()(x, g), contiguous):
        assert torch.equal(a, b)
