"""The feature scorer's fast CPU paths against its plain path (issue 13).

The default CPU path (:class:`~quadformer.tokenize.scorers.backbones.FastShuffleNet`: BN folded,
fused ReLU, no channel shuffle, blurs' stems from their small images) must select exactly the
tokens of the plain path (the torchvision modules with BN folded) on
real photos and on builtin images, with maps within 1e-5 of their scale; the bfloat16 copy is
an opt-in (``precision='bfloat16'``) because it does change some selections.
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from quadformer.models.quadformer import Quadformer
from quadformer.tokenize.scorers import FeatureScorer
from quadformer.tokenize.scorers.backbones import FastShuffleNet
from quadformer.tokenize.scorers.blur import blur_reference
from quadformer.utils.errors import QuadformerError

from .conftest import REFERENCE_DATA

# (image size, p_min, p_max, N, tap stride): the tokenizer benchmark's ViT-S settings and the
# micro models' (tests/test_golden.py)
SETTINGS = [
    pytest.param(256, 16, 64, 100, 32, marks=pytest.mark.slow),
    pytest.param(384, 16, 64, 144, 32, marks=pytest.mark.slow),
    (128, 8, 32, 64, 16),
]


@functools.cache
def _photos(size: int) -> torch.Tensor | None:
    """The reference photos, shorter side resized to 292/256 of ``size``, centre crop, normalised."""
    from PIL import Image
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    from torchvision.transforms.functional import (
        center_crop,
        normalize,
        pil_to_tensor,
        resize,
    )

    files = sorted((REFERENCE_DATA / "images").glob("*.JPEG"))
    if not files:
        return None
    out = []
    for f in files:
        im = pil_to_tensor(Image.open(f).convert("RGB")).float() / 255
        im = center_crop(resize(im, round(size * 292 / 256), antialias=True), [size, size])
        out.append(normalize(im, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD))
    return torch.stack(out)


@functools.cache
def _builtin(size: int) -> torch.Tensor:
    from quadformer.data import build_dataset

    imgs = []
    for task in ("glyphs", "natural", "scenes"):
        ds = build_dataset(f"builtin:{task}", "test", size, size=3, seed=1)
        imgs += [ds[i][0] for i in range(3)]
    return torch.stack(imgs)


def _quadformer(size, pmin, pmax, n, scorer) -> Quadformer:
    torch.manual_seed(0)
    return Quadformer(img_size=size, patch_size=pmin, max_patch_size=pmax, num_patches=n, embed_dim=32, depth=1,
                      num_heads=2, num_classes=10, scorer=scorer).eval()


def _pair(size, pmin, pmax, n, tap, **kw):
    """Two micro Quadformers with the same weights: the default (fast) feature scorer, and the
    plain path (the same torchvision modules, not a ShuffleNetTap: BN folded, channels-last)."""
    fast = FeatureScorer("random", tap_stride=tap, **kw)
    tap_mod = fast.backbone
    plain = FeatureScorer(backbone=nn.Sequential(*[getattr(tap_mod, name) for name in tap_mod.names]), stride=tap)
    return _quadformer(size, pmin, pmax, n, fast), _quadformer(size, pmin, pmax, n, plain)


@pytest.mark.parametrize("size,pmin,pmax,n,tap", SETTINGS)
def test_fast_path_selects_what_the_plain_path_selects(size, pmin, pmax, n, tap):
    fast, plain = _pair(size, pmin, pmax, n, tap)
    assert isinstance(fast.scorer._inference_backbone(), FastShuffleNet)
    assert not isinstance(plain.scorer._inference_backbone(), FastShuffleNet)
    batches = [_builtin(size)]
    photos = _photos(size)
    if photos is not None:
        batches.append(photos)
    for x in batches:
        with torch.inference_mode():
            _, idx_fast = fast.tokenize(x)
            _, idx_plain = plain.tokenize(x)
            maps_fast = fast.scorer(x, fast.geometry)
            maps_plain = plain.scorer(x, plain.geometry)
        assert torch.equal(idx_fast, idx_plain)
        for a, b in zip(maps_fast, maps_plain):
            assert (a - b).abs().max() <= 1e-5 * b.abs().max()


@pytest.mark.slow
def test_fast_path_equals_the_definition_on_photos():
    """map_j = mean_c (F(blur_j x) - F(x))^2 with the unfused torchvision modules and the
    F.interpolate blur, pooled onto the scale-j grid (docs/design/mixed_resolution.md §7)."""
    x = _photos(256)
    if x is None:
        x = _builtin(256)
    (fast, _) = _pair(256, 16, 64, 100, 32)
    sc = fast.scorer
    with torch.inference_mode():
        maps = sc(x, fast.geometry)
        f0 = sc.backbone(x)
        for j, m in enumerate(maps, start=1):
            ref = (sc.backbone(blur_reference(x, j)) - f0).square().mean(1, keepdim=True)
            ref = F.adaptive_avg_pool2d(ref, fast.geometry.grid(j)).squeeze(1)
            assert (m - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_bfloat16_is_an_opt_in_close_to_float32():
    x = _builtin(128)
    fast, _ = _pair(128, 8, 32, 64, 16)
    low, _ = _pair(128, 8, 32, 64, 16, precision="bfloat16")
    low.load_state_dict(fast.state_dict())
    assert fast.scorer.precision == "float32" and "precision" not in repr(fast.scorer)
    with torch.inference_mode():
        ref = fast.scorer(x, fast.geometry)
        got = low.scorer(x, low.geometry)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # CPU bf16 autocast takes the same copy
            auto = fast.scorer(x, fast.geometry)
    assert low.scorer._inference_backbone(True).dtype == torch.bfloat16
    for r, g, a in zip(ref, got, auto):
        assert g.dtype == torch.float32 and not torch.equal(g, r)
        assert (g - r).abs().max() <= 0.1 * r.abs().max()
        torch.testing.assert_close(a, g, rtol=0, atol=0)
    # new weights drop the cached bfloat16 copy
    other, _ = _pair(128, 8, 32, 64, 16)
    for p in other.scorer.backbone.buffers():
        if p.is_floating_point() and p.dim() == 4:
            p.mul_(1.5)
    low.scorer.load_state_dict(other.scorer.state_dict())
    with torch.inference_mode():
        moved = low.scorer(x, low.geometry)
        want = other.scorer(x, other.geometry)
    for m, w in zip(moved, want):
        assert (m - w).abs().max() <= 0.1 * w.abs().max()
    with pytest.raises(QuadformerError, match="precision='fp8'"):
        FeatureScorer("random", precision="fp8")


def test_frozen_scorer_keeps_eval_mode_and_builds_no_graph():
    fast, _ = _pair(128, 8, 32, 64, 16)
    fast.train()
    assert fast.training and not fast.scorer.backbone.training
    x = _builtin(128)[:2].clone().requires_grad_(True)
    maps = fast.scorer(x, fast.geometry)
    assert all(not m.requires_grad and m.grad_fn is None for m in maps)


def test_small_passes_share_one_stage2_call():
    """One image and its blurs (batch 1): their stems go through stage2 together; the result
    equals running each pass alone."""
    from quadformer.tokenize.scorers.blur import downsample

    fast = FeatureScorer("random", tap_stride=32)._inference_backbone()
    x = _builtin(128)[:1]
    passes = [x, (downsample(x, 2), 2), (downsample(x, 4), 4)]
    calls = []
    hook = fast._run
    fast._run = lambda steps, vals: (calls.append(len(steps)), hook(steps, vals))
    with torch.inference_mode():
        together = fast.forward_passes(passes)
        head_calls = calls.count(fast.split)
        alone = torch.cat([fast.forward_passes([p]) for p in passes])
    assert head_calls == 1 and calls.count(fast.split) == 4
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)
