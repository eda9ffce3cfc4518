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

from .conftest import reference_photos

# (image size, p_min, p_max, N, tap stride): the tokenizer benchmark's ViT-S settings and the
# micro models' (tests/test_golden.py)
SETTINGS = [
    pytest.param(256, 16, 64, 100, 32, marks=pytest.mark.slow),
    pytest.param(384, 16, 64, 144, 32, marks=pytest.mark.slow),
    (128, 8, 32, 64, 16),
]


def _photos(size: int) -> torch.Tensor | None:
    return reference_photos(size, round(size * 292 / 256))


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


# -- the fast setting: backbone at half the image size, tap stride halved (docs/scorers.md) --------

HALF = {"weights": "random", "tap_stride": 8, "input_scale": 0.5}
HALF_MEAN = {**HALF, "normalize": "mean"}  # the recommended form


@pytest.mark.parametrize("r", [0.5, 0.25, 0.75, 2.0])
def test_resized_passes_equal_the_resize_of_the_full_size_blurs(r):
    from quadformer.tokenize.scorers.rescale import resized

    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    size = (round(64 * r), round(96 * r))
    for j in range(3):
        ref = x if j == 0 else blur_reference(x, j)
        ref = F.interpolate(ref, size=size, mode="bilinear", align_corners=False, antialias=r < 1)
        got = resized(x, 2**j, size)
        assert got.shape == ref.shape
        assert (got - ref).abs().max() <= 2e-5 * ref.abs().max(), (r, j)


def test_half_scale_setting_grids_macs_determinism_and_definition():
    """The default's score grids at under a tenth of its MACs, the same maps twice, and
    the definition ``mean_c (F(R blur_j x) - F(R x))^2`` with R the antialiased half-size resize."""
    torch.manual_seed(0)
    q = Quadformer(img_size=256, patch_size=16, max_patch_size=64, num_patches=100, embed_dim=32, depth=1,
                   num_heads=2, num_classes=10, scorer="feature", scorer_kwargs=HALF).eval()
    default = FeatureScorer("random", tap_stride=32)
    sc, g = q.scorer, q.geometry
    assert sc.effective_stride == 16 and default.effective_stride == 32  # a finer map, pooled onto the grids
    assert sc.gmacs(g) < 0.1 * default.gmacs(g)
    assert sc.gmacs(g) == pytest.approx(3 * FeatureScorer("random", tap_stride=8).backbone_gmacs(128, 128))
    x = _builtin(256)[:4]
    with torch.inference_mode():
        maps = sc(x, g)
        again = sc(x, g)
        _, idx = q.tokenize(x)
        _, idx2 = q.tokenize(x)
        f0 = sc.backbone(F.interpolate(x, size=(128, 128), mode="bilinear", antialias=True))
        for j, m in enumerate(maps, start=1):
            assert m.shape == (4, *g.grid(j)) == default(x, g)[j - 1].shape
            torch.testing.assert_close(m, again[j - 1], rtol=0, atol=0)
            xb = F.interpolate(blur_reference(x, j), size=(128, 128), mode="bilinear", antialias=True)
            ref = F.adaptive_avg_pool2d((sc.backbone(xb) - f0).square().mean(1, keepdim=True), g.grid(j))
            assert (m - ref.squeeze(1)).abs().max() <= 1e-4 * ref.abs().max()
    assert torch.equal(idx, idx2) and idx.shape == (4, 100)


def test_half_scale_setting_exported_graph_equals_eager():
    """torch.export traces the plain path (the frozen modules, F.interpolate): same cells, close maps."""
    torch.manual_seed(0)
    q = Quadformer(img_size=128, patch_size=8, max_patch_size=32, num_patches=64, embed_dim=32, depth=1,
                   num_heads=2, num_classes=10, scorer="feature", scorer_kwargs=HALF_MEAN).eval()

    class Index(nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model.tokenize(x)[1]

    x = _builtin(128)[:3]
    ep = torch.export.export(Index(q), (x,))
    with torch.no_grad():
        assert torch.equal(ep.module()(x), q.tokenize(x)[1])


def test_half_scale_setting_through_the_model_factory():
    """The setting as a config gives it: ``model.kwargs={scorer: feature, scorer_kwargs: {...}}``."""
    from quadformer.models.factory import build_model, model_gmacs

    kw = {"embed_dim": 32, "depth": 1, "num_heads": 2, "scorer": "feature"}
    fast = build_model("quadformer_micro_patch8_128", 10, 128, 64, kwargs={**kw, "scorer_kwargs": HALF_MEAN})
    full = build_model("quadformer_micro_patch8_128", 10, 128, 64,
                       kwargs={**kw, "scorer_kwargs": {"weights": "random", "tap_stride": 16}})
    assert fast.scorer.input_scale == 0.5 and fast.scorer.stride == 8 and fast.scorer.normalize == "mean"
    assert model_gmacs(fast, 128)[0] < model_gmacs(full, 128)[0]
    with torch.inference_mode():
        assert fast.eval()(_builtin(128)[:2]).shape == (2, 10)


def test_mean_normalisation_divides_each_scale_by_its_image_mean():
    """``normalize='mean'``: map_j / mean(map_j) per image, whatever the chunking; the cells
    split finely come back at half size (more fine splits than without it)."""
    from quadformer.tokenize import QuadGeometry
    from quadformer.tokenize.quadtree import select_splits

    x = _builtin(128)
    g = QuadGeometry(128, 128, 8, 32, 64)
    plain = FeatureScorer(**HALF)
    norm = FeatureScorer(**HALF_MEAN, chunk_size=2)
    norm.load_state_dict(plain.state_dict())
    assert "normalize='mean'" in repr(norm) and "normalize" not in repr(plain)
    with torch.inference_mode():
        ref, got = plain(x, g), norm(x, g)
        whole = FeatureScorer(**HALF_MEAN)
        whole.load_state_dict(plain.state_dict())
        once = whole(x, g)
    for r, m, o in zip(ref, got, once):
        torch.testing.assert_close(m, r / r.mean(dim=(1, 2), keepdim=True))
        torch.testing.assert_close(m.mean(dim=(1, 2)), torch.ones(x.shape[0]))
        torch.testing.assert_close(m, o, rtol=0, atol=0)
    fine = [int(select_splits(maps, g)[1].sum()) for maps in (ref, got)]
    assert fine[1] > fine[0]


@pytest.mark.parametrize("kw,needle", [
    ({"input_scale": 0}, "input_scale=0"),
    ({"input_scale": -0.5}, "input_scale=-0.5"),
    ({"input_scale": float("nan")}, "input_scale=nan"),
    ({"input_scale": "half"}, "input_scale='half'"),
    ({"input_scale": True}, "input_scale=True"),
    ({"tap_stride": 12}, "tap_stride=12"),
    ({"error": "l1"}, "error='l1'"),
    ({"chunk_size": 0}, "chunk_size=0"),
    ({"normalize": "max"}, "normalize='max'"),
    ({"streams": "no"}, "streams='no'"),
    ({"tap_stride": 32, "input_scale": 0.5, "p_min": 16}, "tap_stride=16"),
])
def test_bad_settings_are_one_line_errors(kw, needle):
    with pytest.raises(QuadformerError) as e:
        FeatureScorer("random", **kw)
    msg = str(e.value)
    assert needle in msg and "\n" not in msg


def test_quality_benchmark_measures_a_setting_given_by_a_builder():
    """``scorer_quality.measure(builders=...)``: what ``benchmarks/feature_scorer.py --quality`` runs."""
    import importlib.util
    from pathlib import Path

    from quadformer.tokenize import QuadGeometry

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "scorer_quality.py"
    spec = importlib.util.spec_from_file_location("scorer_quality", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    recs = mod.measure(["glyphs"], [28], ["half"], 4, size=64, p_min=8, p_max=32, repeats=1, log=lambda *a: None,
                       builders={"half": lambda: FeatureScorer(**HALF)})
    (rec,) = [r for r in recs if r["scorer"] == "half"]
    want = FeatureScorer(**HALF).gmacs(QuadGeometry(64, 64, 8, 32, 28))
    assert rec["gmacs"] == round(want, 6) > 0 and 0 <= rec["object_fine_fraction"] <= 1 and rec["images"] == 4


def test_streams_score_what_one_chunk_after_the_other_scores(monkeypatch):
    """On 2 threads the chunks run as 2 streams of one intra-op thread (the default; one image:
    its passes), with the values of the serial loop."""
    import quadformer.tokenize.scorers.feature as feature_mod
    from quadformer.tokenize import QuadGeometry
    from quadformer.tokenize.quadtree import select_tokens

    x = _builtin(128)
    g = QuadGeometry(128, 128, 8, 32, 64)
    sc = FeatureScorer("random", tap_stride=16)
    calls = []
    real = feature_mod.map_streams
    monkeypatch.setattr(feature_mod, "map_streams", lambda fn, items: calls.append(len(items)) or real(fn, items))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        streamed, one = sc(x, g), sc(x[:1], g)
        sc.streams = False
        serial, one_serial = sc(x, g), sc(x[:1], g)
    finally:
        torch.set_num_threads(before)
    # 9 images: chunks of 5 and 4, one per thread; 1 image: its 3 passes in 2 groups; none with streams=False
    assert calls == [2, 2]
    for a, b in zip(streamed + one, serial + one_serial):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert torch.equal(select_tokens(streamed, g), select_tokens(serial, g))
    assert torch.equal(select_tokens(one, g), select_tokens(one_serial, g))
