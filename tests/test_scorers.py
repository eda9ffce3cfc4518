"""Patch scorers (spec §7): pixel-blur, feature, precomputed, random, Grad-CAM oracle."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from quadformer.tokenize.geometry import QuadGeometry
from quadformer.tokenize.scorers import (
    SCORERS,
    FeatureScorer,
    GradCamOracleScorer,
    PixelBlurScorer,
    PrecomputedScorer,
    RandomScorer,
    ShuffleNetTap,
    create_scorer,
    grad_cam,
    shufflenet_backbone,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors gain nothing from threads, and OpenMP threads on a busy 2-core machine
    can make each op 100x slower; restore the setting afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def geo(h: int, w: int, p_min: int, p_max: int) -> QuadGeometry:
    return QuadGeometry(h, w, p_min, p_max, (h // p_max) * (w // p_max))


def expected_shapes(g: QuadGeometry, b: int) -> list[tuple[int, ...]]:
    return [(b, *g.grid(s)) for s in range(1, g.num_scales)]


# ---------------------------------------------------------------------------------------------
# pixel-blur


def _bilinear_1d_weights(n_in: int, n_out: int) -> np.ndarray:
    """Resampling matrix [n_out, n_in] of bilinear, align_corners=False, no antialias."""
    m = np.zeros((n_out, n_in))
    for o in range(n_out):
        src = max((o + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = int(math.floor(src))
        i1 = min(i0 + 1, n_in - 1)
        lam = src - i0
        m[o, i0] += 1 - lam
        m[o, i1] += lam
    return m


def _resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """img [C, H, W] -> [C, h, w], separable bilinear written out by hand."""
    rh = _bilinear_1d_weights(img.shape[1], h)
    rw = _bilinear_1d_weights(img.shape[2], w)
    return np.einsum("oh,chw,pw->cop", rh, img, rw)


def _pixel_blur_loop(img: np.ndarray, g: QuadGeometry) -> list[np.ndarray]:
    """Straightforward per-patch reference of spec §7 pixel-blur for one image [C, H, W]."""
    c, h, w = img.shape
    out = []
    for s in range(1, g.num_scales):
        f, p = 2**s, g.patch_size(s)
        blurred = _resize(_resize(img, h // f, w // f), h, w)
        gh, gw = g.grid(s)
        m = np.zeros((gh, gw))
        for i in range(gh):
            for j in range(gw):
                d = blurred[:, i * p:(i + 1) * p, j * p:(j + 1) * p] - img[:, i * p:(i + 1) * p, j * p:(j + 1) * p]
                m[i, j] = math.sqrt(float((d**2).mean()) * p)
        out.append(m)
    return out


@pytest.mark.parametrize("shape", [(2, 3, 16, 16), (1, 3, 8, 24), (2, 3, 32, 64), (1, 2, 8, 8)])
def test_fast_cpu_blur_equals_interpolate(shape):
    """The closed-form CPU blur = F.interpolate down/up (bilinear, align_corners=False)."""
    from quadformer.tokenize.scorers.blur import blur, blur_reference

    x = torch.randn(shape)
    for s in (1, 2, 3):
        if shape[-2] % 2**s == 0 and shape[-1] % 2**s == 0:
            torch.testing.assert_close(blur(x, s), blur_reference(x, s), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="divisible"):
        blur(torch.zeros(1, 3, 12, 12), 3)


@pytest.mark.parametrize("h,w,p_min,p_max", [(16, 16, 2, 8), (8, 16, 2, 8), (32, 16, 4, 16)])
def test_pixel_blur_matches_per_patch_loop(h, w, p_min, p_max):
    g = geo(h, w, p_min, p_max)
    x = torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(0), dtype=torch.float64).float()
    maps = PixelBlurScorer()(x, g)
    for b in range(2):
        ref = _pixel_blur_loop(x[b].double().numpy(), g)
        for s, (m, r) in enumerate(zip(maps, ref), start=1):
            np.testing.assert_allclose(m[b].numpy(), r, rtol=1e-4, atol=1e-5, err_msg=f"scale {s}")


def test_pixel_blur_chunking_does_not_change_scores():
    g = geo(32, 32, 4, 16)
    x = torch.rand(7, 3, 32, 32)
    whole = PixelBlurScorer(chunk_elements=1 << 30)(x, g)
    chunked = PixelBlurScorer(chunk_elements=2 * 3 * 32 * 32)(x, g)  # chunks of 2 images
    for a, b in zip(whole, chunked):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("h,w,p_min,p_max", [(32, 32, 4, 16), (32, 64, 4, 16), (64, 32, 8, 32), (48, 80, 4, 16)])
def test_pixel_blur_shapes(h, w, p_min, p_max):
    g = geo(h, w, p_min, p_max)
    maps = PixelBlurScorer()(torch.rand(3, 3, h, w), g)
    assert [tuple(m.shape) for m in maps] == expected_shapes(g, 3)
    assert all(m.dtype == torch.float32 and (m >= 0).all() for m in maps)


def test_pixel_blur_shape_32x64_explicit():
    maps = PixelBlurScorer()(torch.rand(2, 3, 32, 64), geo(32, 64, 4, 16))
    assert [tuple(m.shape) for m in maps] == [(2, 4, 8), (2, 2, 4)]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_pixel_blur_low_precision_input_gives_float32(dtype):
    g = geo(32, 32, 4, 16)
    x = torch.rand(2, 3, 32, 32).to(dtype)
    maps = PixelBlurScorer()(x, g)
    ref = PixelBlurScorer()(x.float(), g)
    for m, r in zip(maps, ref):
        assert m.dtype == torch.float32
        torch.testing.assert_close(m, r, rtol=0, atol=0)


def test_pixel_blur_constant_image_is_zero_and_detail_scores_higher():
    g = geo(32, 32, 4, 16)
    maps = PixelBlurScorer()(torch.full((2, 3, 32, 32), 0.3), g)
    for m in maps:
        assert m.abs().max() < 1e-3
    # texture only in the top-left 8x8 patch: that cell must be the most important at scale 1
    x = torch.zeros(1, 3, 32, 32)
    x[..., :8, :8] = torch.rand(3, 8, 8)
    m1 = PixelBlurScorer()(x, g)[0][0]
    assert m1.argmax().item() == 0 and m1[0, 0] > 0


def test_pixel_blur_wrong_size_raises():
    with pytest.raises(ValueError, match="32x32"):
        PixelBlurScorer()(torch.rand(1, 3, 32, 48), geo(32, 32, 4, 16))


def test_pixel_blur_gmacs_small():
    assert 0 <= PixelBlurScorer().gmacs(geo(256, 256, 16, 64)) < 0.01


# ---------------------------------------------------------------------------------------------
# feature scorer


@pytest.fixture(scope="module")
def tv_net() -> nn.Module:
    from torchvision.models import shufflenet_v2_x0_5

    torch.manual_seed(0)
    net = shufflenet_v2_x0_5(weights=None).eval()
    # non-trivial BN statistics, so a wrong load or train-mode BN changes the features
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return net


def test_feature_weights_none_raises_with_help():
    with pytest.raises(ValueError) as e:
        FeatureScorer()
    msg = str(e.value)
    for part in ("local", "train-scorer", "torchvision:IMAGENET1K_V1", "timm:", "'random'"):
        assert part in msg


def test_feature_missing_file_raises():
    with pytest.raises(ValueError, match="random"):  # a QuadformerError: one line in the CLI
        FeatureScorer("/nonexistent/weights.pth")


def test_feature_unknown_torchvision_weights_raise_before_download():
    with pytest.raises(ValueError, match="IMAGENET1K_V1"):
        FeatureScorer("torchvision:NOT_A_WEIGHT")


@pytest.mark.parametrize(
    "kwargs,h,w,p_min,p_max",
    [
        (dict(tap_stride=8), 32, 64, 4, 16),
        (dict(tap_stride=16, input_scale=2.0), 32, 64, 4, 16),
        (dict(tap_stride=32), 64, 96, 16, 32),
        (dict(tap_stride=16, input_scale=4.0), 16, 16, 2, 8),
        (dict(tap_stride=8, error="cosine"), 32, 32, 4, 16),
    ],
)
def test_feature_shapes(kwargs, h, w, p_min, p_max):
    g = geo(h, w, p_min, p_max)
    sc = FeatureScorer("random", **kwargs)
    maps = sc(torch.randn(2, 3, h, w), g)
    assert [tuple(m.shape) for m in maps] == expected_shapes(g, 2)
    assert all(m.dtype == torch.float32 and torch.isfinite(m).all() and (m >= -1e-6).all() for m in maps)
    if kwargs.get("error") == "cosine":
        assert all((m <= 2 + 1e-6).all() for m in maps)


def test_feature_chunking_does_not_change_scores(tv_net):
    g = geo(32, 32, 4, 16)
    x = torch.randn(5, 3, 32, 32)
    whole = FeatureScorer(backbone=ShuffleNetTap(tv_net, 8))(x, g)
    chunked = FeatureScorer(backbone=ShuffleNetTap(tv_net, 8), chunk_size=2, channels_last=False)(x, g)
    for a, b in zip(whole, chunked):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_feature_maps_equal_unbatched_definition(tv_net):
    """map_j = mean_c (F(blur_j) - F(x))^2, computed pass by pass without the batching."""
    from quadformer.tokenize.scorers import blur

    g = geo(64, 64, 4, 16)  # L = 3, stride-8 tap: 8x8 features, grids 8x8 and 4x4
    sc = FeatureScorer(backbone=ShuffleNetTap(tv_net, 8))
    x = torch.randn(3, 3, 64, 64)
    maps = sc(x, g)
    tap = ShuffleNetTap(tv_net, 8)
    with torch.no_grad():
        f0 = tap(x)
        for j, m in enumerate(maps, start=1):
            ref = (tap(blur(x, j)) - f0).square().mean(1)
            ref = F.avg_pool2d(ref.unsqueeze(1), 2 ** (j - 1)).squeeze(1)
            torch.testing.assert_close(m, ref, rtol=1e-4, atol=1e-6)
    cos = FeatureScorer(backbone=ShuffleNetTap(tv_net, 8), error="cosine")(x, g)
    with torch.no_grad():
        ref = 1 - F.cosine_similarity(tap(blur(x, 1)), f0, dim=1)
    torch.testing.assert_close(cos[0], ref, rtol=1e-4, atol=1e-5)


def test_feature_stride_rule_messages():
    sc = FeatureScorer("random")  # conv5, stride 32
    with pytest.raises(ValueError) as e:
        sc(torch.randn(1, 3, 64, 64), geo(64, 64, 8, 32))
    msg = str(e.value)
    assert "32" in msg and "2*p_min = 16" in msg and "tap_stride=16" in msg and "input_scale (>= 2)" in msg
    # CIFAR 32x32 with p_min 4 needs <= 8
    with pytest.raises(ValueError, match="tap_stride=8"):
        FeatureScorer("random", tap_stride=16, p_min=4)
    FeatureScorer("random", tap_stride=16, input_scale=2.0, p_min=4)
    FeatureScorer("random", tap_stride=8, p_min=4)
    # p_min 2 needs <= 4: stage3 with r = 4 works, r = 2 does not
    FeatureScorer("random", tap_stride=16, input_scale=4.0, p_min=2)
    with pytest.raises(ValueError, match=r"effective backbone stride 8 .*input_scale \(>= 4\)"):
        FeatureScorer("random", tap_stride=16, input_scale=2.0, p_min=2)
    # p_min 8 needs stride 16
    FeatureScorer("random", tap_stride=16, p_min=8)


def test_feature_wrong_input_raises():
    sc = FeatureScorer("random", tap_stride=8)
    with pytest.raises(ValueError, match="32x32"):
        sc(torch.rand(1, 3, 32, 48), geo(32, 32, 4, 16))
    with pytest.raises(ValueError, match="3, H, W"):
        sc(torch.rand(1, 1, 32, 32), geo(32, 32, 4, 16))


def test_feature_custom_backbone_needs_stride():
    with pytest.raises(ValueError, match="stride="):
        FeatureScorer(backbone=nn.Sequential(nn.Conv2d(3, 4, 4, stride=4)))
    g = geo(32, 32, 2, 8)
    for sc in (
        FeatureScorer(backbone=nn.Sequential(nn.Conv2d(3, 4, 4, stride=4)), stride=4),
        FeatureScorer(backbone=nn.Conv2d(3, 4, 4, stride=4)),  # Conv2d.stride == (4, 4)
    ):
        assert sc.stride == 4
        assert [tuple(m.shape) for m in sc(torch.randn(2, 3, 32, 32), g)] == expected_shapes(g, 2)
    with pytest.raises(ValueError, match="2\\*p_min = 4"):
        FeatureScorer(backbone=nn.Conv2d(3, 4, 8, stride=8))(torch.randn(1, 3, 32, 32), g)


@pytest.mark.parametrize("fmt", ["safetensors", "pth", "pth-wrapped", "pt-model"])
def test_feature_loads_local_weights(tv_net, tmp_path, fmt):
    sd = {k: v.clone().contiguous() for k, v in tv_net.state_dict().items()}  # fc included
    if fmt == "safetensors":
        from safetensors.torch import save_file

        path = tmp_path / "w.safetensors"
        save_file(sd, str(path))
    elif fmt == "pth":
        path = tmp_path / "w.pth"
        torch.save(sd, path)
    elif fmt == "pth-wrapped":
        path = tmp_path / "w.pth"
        torch.save({"state_dict": sd, "epoch": 3}, path)
    else:
        path = tmp_path / "w.pt"
        torch.save({"model": {"module." + k: v for k, v in sd.items()}}, path)
    g = geo(32, 32, 4, 16)
    x = torch.randn(2, 3, 32, 32)
    from_file = FeatureScorer(str(path), tap_stride=8)(x, g)
    in_memory = FeatureScorer(backbone=ShuffleNetTap(tv_net, 8))(x, g)
    random = FeatureScorer("random", tap_stride=8)(x, g)
    for a, b, r in zip(from_file, in_memory, random):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert not torch.allclose(a, r)


def test_feature_strict_load_rejects_wrong_checkpoint(tv_net, tmp_path):
    sd = dict(tv_net.state_dict())
    del sd["stage2.0.branch1.0.weight"]
    torch.save(sd, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="missing keys"):
        FeatureScorer(str(tmp_path / "missing.pth"), tap_stride=8)
    sd = dict(tv_net.state_dict())
    sd["head.weight"] = torch.zeros(3)
    torch.save(sd, tmp_path / "extra.pth")
    with pytest.raises(ValueError, match="unexpected keys"):
        FeatureScorer(str(tmp_path / "extra.pth"), tap_stride=8)
    # a truncated checkpoint (only what a stride-8 tap needs) is enough for that tap
    torch.save(ShuffleNetTap(tv_net, 8).state_dict(), tmp_path / "tap8.pth")
    FeatureScorer(str(tmp_path / "tap8.pth"), tap_stride=8)
    with pytest.raises(ValueError, match="missing keys"):
        FeatureScorer(str(tmp_path / "tap8.pth"), tap_stride=16)


def test_feature_frozen(tv_net):
    class Parent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scorer = FeatureScorer(backbone=ShuffleNetTap(tv_net, 8))
            self.head = nn.Linear(4, 4)

    parent = Parent().train()
    sc = parent.scorer
    assert sc.training and not any(m.training for m in sc.backbone.modules())
    assert list(sc.parameters()) == []
    assert {id(p) for p in parent.parameters()} == {id(p) for p in parent.head.parameters()}
    keys = parent.state_dict().keys()
    assert "scorer.backbone.conv1.0.weight" in keys and "scorer.backbone.stage2.0.branch1.1.running_var" in keys
    assert not any(k.startswith("scorer.norm_") for k in keys)
    assert all(not b.requires_grad for b in sc.buffers())
    bn = sc.backbone.conv1[1]
    before = bn.running_mean.clone()
    g = geo(32, 32, 4, 16)
    x = torch.randn(2, 3, 32, 32)
    a = sc(x, g)
    b = sc.score(x, g)  # also without the base class' no_grad
    assert all(not m.requires_grad for m in b)
    torch.testing.assert_close(bn.running_mean, before, rtol=0, atol=0)
    for m1, m2 in zip(a, b):
        torch.testing.assert_close(m1, m2)
    # state dict round trip into a scorer built with random weights
    fresh = Parent()
    fresh.load_state_dict(parent.state_dict())
    for m1, m2 in zip(fresh.scorer(x, g), a):
        torch.testing.assert_close(m1, m2, rtol=0, atol=0)


def test_feature_normalisation_conversion(tv_net):
    g = geo(32, 32, 4, 16)
    raw = torch.rand(2, 3, 32, 32)
    imnet_mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    imnet_std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    vit_in = (raw - 0.5) / 0.5  # the ViT normalises with mean = std = 0.5
    conv = FeatureScorer(backbone=ShuffleNetTap(tv_net, 8), input_mean=(0.5,) * 3, input_std=(0.5,) * 3)
    plain = FeatureScorer(backbone=ShuffleNetTap(tv_net, 8))
    assert conv.convert and not plain.convert
    for a, b in zip(conv(vit_in, g), plain((raw - imnet_mean) / imnet_std, g)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_feature_gmacs_match_spec():
    sc = FeatureScorer("random")
    for size, spec in [(224, 0.039), (256, 0.052), (384, 0.116)]:
        per_pass = sc.backbone_gmacs(size, size)
        assert abs(per_pass - spec) / spec < 0.03, (size, per_pass)
    g = geo(256, 256, 16, 64)  # L = 3: 3 passes
    assert sc.gmacs(g) == pytest.approx(3 * sc.backbone_gmacs(256, 256))
    assert 0.15 < sc.gmacs(g) < 0.16
    assert FeatureScorer("random").gmacs(geo(64, 64, 32, 32)) == 0.0  # L = 1: nothing to score


def test_shufflenet_backbone_factory():
    with pytest.raises(ValueError, match="random"):
        shufflenet_backbone(32, None)
    with pytest.raises(ValueError, match="8, 16, 32"):
        shufflenet_backbone(4, "random")
    for stride, ch in [(8, 48), (16, 96), (32, 1024)]:
        bb = shufflenet_backbone(stride, "random").eval()
        assert bb.stride == stride
        assert bb(torch.randn(1, 3, 64, 64)).shape == (1, ch, 64 // stride, 64 // stride)


def test_timm_backbone_offline():
    from quadformer.tokenize.scorers import timm_backbone

    bb = timm_backbone("mobilevit_xxs", tap_stride=8, pretrained=False)  # mean 0, std 1
    sc = FeatureScorer(backbone=bb)
    assert sc.stride == 8 and sc.convert  # timm's own normalisation is the backbone's default
    torch.testing.assert_close(sc.norm_scale.flatten(), torch.tensor([0.229, 0.224, 0.225]))
    torch.testing.assert_close(sc.norm_shift.flatten(), torch.tensor([0.485, 0.456, 0.406]))
    g = geo(32, 32, 4, 16)
    assert [tuple(m.shape) for m in sc(torch.randn(1, 3, 32, 32), g)] == expected_shapes(g, 1)


# ---------------------------------------------------------------------------------------------
# precomputed


def test_precomputed_single_map_avg_pool_and_bilinear():
    g = geo(32, 32, 4, 16)  # grids 4x4 (s=1), 2x2 (s=2)
    sal = torch.rand(2, 8, 8)
    m1, m2 = PrecomputedScorer()(torch.zeros(2, 3, 32, 32), g, saliency=sal)
    torch.testing.assert_close(m1, sal.view(2, 4, 2, 4, 2).mean((2, 4)))
    torch.testing.assert_close(m2, sal.view(2, 2, 4, 2, 4).mean((2, 4)))
    odd = torch.rand(2, 6, 6)  # not a multiple of 4: bilinear
    n1, _ = PrecomputedScorer()(torch.zeros(2, 3, 32, 32), g, saliency=odd)
    ref = F.interpolate(odd.unsqueeze(1), size=(4, 4), mode="bilinear", align_corners=False).squeeze(1)
    torch.testing.assert_close(n1, ref)


def test_precomputed_per_scale_maps_and_list():
    g = geo(32, 64, 4, 16)  # grids 4x8, 2x4
    per = torch.rand(1, 2, 4, 8)
    m1, m2 = PrecomputedScorer()(torch.zeros(1, 3, 32, 64), g, saliency=per)
    torch.testing.assert_close(m1, per[:, 0])
    torch.testing.assert_close(m2, per[:, 1].view(1, 2, 2, 4, 2).mean((2, 4)))
    lst = [torch.rand(1, 4, 8), torch.rand(1, 2, 4).double()]
    l1, l2 = PrecomputedScorer()(torch.zeros(1, 3, 32, 64), g, saliency=lst)
    torch.testing.assert_close(l1, lst[0])
    assert l2.dtype == torch.float32
    torch.testing.assert_close(l2, lst[1].float())
    with pytest.raises(ValueError, match="L-1 = 2"):
        PrecomputedScorer()(torch.zeros(1, 3, 32, 64), g, saliency=torch.rand(1, 3, 4, 8))
    with pytest.raises(ValueError, match="L-1 = 2"):
        PrecomputedScorer()(torch.zeros(1, 3, 32, 64), g, saliency=lst[:1])


def test_precomputed_errors():
    g = geo(32, 32, 4, 16)
    x = torch.zeros(2, 3, 32, 32)
    with pytest.raises(ValueError, match="coarser"):
        PrecomputedScorer()(x, g, saliency=torch.rand(2, 2, 2))
    bad = torch.rand(2, 8, 8)
    bad[1, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        PrecomputedScorer()(x, g, saliency=bad)
    with pytest.raises(ValueError, match="saliency="):
        PrecomputedScorer()(x, g)
    with pytest.raises(ValueError, match="batch size"):
        PrecomputedScorer()(x, g, saliency=torch.rand(3, 8, 8))


def test_precomputed_with_reference_oracle_maps():
    """The authors' Grad-CAM oracle maps ([16, 16] per 256x256 crop, p_min = 16 grid)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1].parent / "shared" / "quadformer_reference_data"
    files = sorted((root / "oracle_importance_maps").glob("*.pt"))
    if not files:
        pytest.skip("reference oracle maps not available")
    sal = torch.stack([torch.load(f, weights_only=True) for f in files])
    g = QuadGeometry(256, 256, 16, 64, 100)
    m1, m2 = PrecomputedScorer()(torch.zeros(len(files), 3, 256, 256), g, saliency=sal)
    assert m1.shape == (len(files), 8, 8) and m2.shape == (len(files), 4, 4)
    torch.testing.assert_close(m1, F.avg_pool2d(sal.float().unsqueeze(1), 2).squeeze(1))
    torch.testing.assert_close(m2, F.avg_pool2d(sal.float().unsqueeze(1), 4).squeeze(1))
    with pytest.raises(ValueError, match="coarser"):  # p_min = 4: the scale-1 grid is 32x32
        PrecomputedScorer()(torch.zeros(len(files), 3, 256, 256), QuadGeometry(256, 256, 4, 16, 256), saliency=sal)


def test_precomputed_no_caching_after_in_place_edit():
    g = geo(32, 32, 4, 16)
    x = torch.zeros(1, 3, 32, 32)
    sc = PrecomputedScorer()
    sal = torch.zeros(1, 4, 4)
    first = sc(x, g, saliency=sal)[0].clone()
    sal[0, 1, 2] = 5.0
    second = sc(x, g, saliency=sal)[0]
    assert first.abs().max() == 0 and second[0, 1, 2] == 5.0


# ---------------------------------------------------------------------------------------------
# random


def test_random_scorer_sequence_and_reset():
    g = geo(32, 64, 4, 16)
    x = torch.zeros(2, 3, 32, 64)
    a, b = RandomScorer(seed=7), RandomScorer(seed=7)
    a1, a2 = a(x, g), a(x, g)
    b1, b2 = b(x, g), b(x, g)
    assert [tuple(m.shape) for m in a1] == expected_shapes(g, 2)
    for u, v in zip(a1 + a2, b1 + b2):
        torch.testing.assert_close(u, v, rtol=0, atol=0)
        assert u.dtype == torch.float32 and (u >= 0).all() and (u < 1).all()
    assert not torch.equal(a1[0], a2[0])  # new scores every batch
    assert not torch.equal(a1[0], RandomScorer(seed=8)(x, g)[0])
    a.reset()
    for u, v in zip(a(x, g), a1):
        torch.testing.assert_close(u, v, rtol=0, atol=0)
    # the sequence is drawn from one CPU generator: first map = torch.rand with that seed
    ref = torch.rand(2, 4, 8, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(a1[0], ref, rtol=0, atol=0)
    unseeded = RandomScorer()
    assert not torch.equal(unseeded(x, g)[0], unseeded(x, g)[0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_random_scorer_cpu_gpu_identical():
    g = geo(32, 32, 4, 16)
    cpu = RandomScorer(seed=3)(torch.zeros(2, 3, 32, 32), g)
    gpu = RandomScorer(seed=3)(torch.zeros(2, 3, 32, 32, device="cuda"), g)
    for u, v in zip(cpu, gpu):
        assert v.device.type == "cuda"
        torch.testing.assert_close(u, v.cpu(), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# Grad-CAM


class TinyCNN(nn.Module):
    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU()
        )
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.features(x).mean((2, 3))))


@pytest.fixture
def cnn() -> TinyCNN:
    torch.manual_seed(0)
    return TinyCNN()


def test_grad_cam_equals_cam_for_gap_linear_head(cnn):
    """With GAP + linear after the target layer, Grad-CAM = relu(sum_k W[c, k] A_k) / max."""
    x = torch.randn(4, 3, 16, 16)
    labels = torch.tensor([0, 1, 2, 3])
    cnn.train()
    cam = grad_cam(cnn, cnn.features, x, labels)
    assert cnn.training  # mode restored
    assert all(p.grad is None for p in cnn.parameters())  # no parameter gradients left behind
    assert cam.shape == (4, 8, 8)
    with torch.no_grad():
        act = cnn.features(x)
        ref = F.relu(torch.einsum("bk,bkhw->bhw", cnn.fc.weight[labels], act))
        ref = ref / ref.amax((1, 2), keepdim=True)
    torch.testing.assert_close(cam, ref, rtol=1e-4, atol=1e-6)
    assert (cam >= 0).all() and (cam <= 1).all()
    torch.testing.assert_close(cam.amax((1, 2)), torch.ones(4))
    other = grad_cam(cnn, cnn.features, x, (labels + 1) % 5)
    assert not torch.allclose(cam, other)


def test_grad_cam_all_zero_stays_zero():
    class Zero(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 1)
            nn.init.zeros_(self.conv.weight)
            nn.init.zeros_(self.conv.bias)
            self.fc = nn.Linear(2, 3)

        def forward(self, x):
            return self.fc(self.conv(x).mean((2, 3)))

    m = Zero()
    cam = grad_cam(m, m.conv, torch.randn(2, 3, 4, 4), torch.tensor([0, 1]))
    assert torch.isfinite(cam).all() and (cam == 0).all()


def test_grad_cam_vit_tokens_with_reshape():
    class TinyViT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Conv2d(3, 8, 4, stride=4)
            self.block = nn.Sequential(nn.Linear(8, 8), nn.GELU())
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            t = self.embed(x).flatten(2).transpose(1, 2)  # [B, T, D]
            return self.head(self.block(t).mean(1))

    torch.manual_seed(1)
    vit = TinyViT()
    cam = grad_cam(vit, vit.block, torch.randn(2, 3, 16, 16), torch.tensor([0, 2]),
                   reshape=lambda t: t.transpose(1, 2).unflatten(2, (4, 4)))
    assert cam.shape == (2, 4, 4) and (cam >= 0).all() and (cam <= 1).all()


def test_gradcam_oracle_scorer(cnn):
    g = geo(16, 16, 2, 8)  # p_min grid 8x8 = CAM size; grids 4x4, 2x2
    sc = GradCamOracleScorer(cnn, cnn.features)
    x = torch.randn(2, 3, 16, 16)
    labels = torch.tensor([1, 4])
    maps = sc(x, g, labels=labels)  # base forward runs under no_grad
    assert [tuple(m.shape) for m in maps] == expected_shapes(g, 2)
    cam = grad_cam(cnn, cnn.features, x, labels)
    torch.testing.assert_close(maps[0], F.avg_pool2d(cam.unsqueeze(1), 2).squeeze(1))
    with torch.inference_mode():
        for m, r in zip(sc(x, g, labels=labels), maps):
            torch.testing.assert_close(m, r)
    with pytest.raises(ValueError, match="labels"):
        sc(x, g)
    assert not any(k.startswith("_target") for k in sc.state_dict())
    # CAM (8x8) upsampled bilinearly to a finer p_min grid (16x16)
    g2 = geo(32, 32, 2, 8)
    x2 = torch.randn(1, 3, 32, 32)
    m2 = sc(x2, g2, labels=torch.tensor([0]))
    assert [tuple(m.shape) for m in m2] == expected_shapes(g2, 1)
    assert all((m >= 0).all() and (m <= 1).all() for m in m2)


# ---------------------------------------------------------------------------------------------
# factory


def test_create_scorer(cnn):
    assert isinstance(create_scorer("pixel-blur"), PixelBlurScorer)
    assert isinstance(create_scorer("random", seed=1), RandomScorer)
    assert isinstance(create_scorer("precomputed"), PrecomputedScorer)
    assert isinstance(create_scorer("feature", weights="random", tap_stride=8), FeatureScorer)
    assert isinstance(create_scorer("gradcam", model=cnn, target_layer=cnn.features), GradCamOracleScorer)
    assert {"pixel-blur", "feature", "precomputed", "random", "gradcam"} <= set(SCORERS)
    with pytest.raises(ValueError) as e:
        create_scorer("saliency")
    for name in SCORERS:
        assert name in str(e.value)


def test_batchnorm_folding_keeps_scores_and_state_dict():
    from quadformer.tokenize import QuadGeometry
    from quadformer.tokenize.scorers import FeatureScorer
    from quadformer.tokenize.scorers.feature import fold_batchnorm

    torch.manual_seed(0)
    sc = FeatureScorer(weights="random", tap_stride=16)
    for mod in sc.backbone.modules():  # non-trivial BN statistics
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.uniform_(0.5, 1.5)
            mod.bias.uniform_(-0.2, 0.2)
    sc.__dict__.pop("_fused", None)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fold_batchnorm(sc.backbone)(x), sc.backbone(x), atol=1e-4, rtol=1e-4)
    keys = set(sc.state_dict())
    g = QuadGeometry(64, 64, 8, 32, 4 + 3 * 5)
    before = sc(x, g)
    assert set(sc.state_dict()) == keys and not any("_fused" in k for k in keys)
    # loading other weights must drop the folded copy (no stale cache)
    other = FeatureScorer(weights="random", tap_stride=16)
    sc.load_state_dict(other.state_dict())
    after = sc(x, g)
    want = other(x, g)
    for a, w, b in zip(after, want, before):
        torch.testing.assert_close(a, w, atol=1e-4, rtol=1e-4)
        assert not torch.allclose(a, b)


# ---------------------------------------------------------------------------------------------
# fast CPU ShuffleNetV2 path


def _randomised_shufflenet(seed: int) -> nn.Module:
    from torchvision.models import shufflenet_v2_x0_5

    torch.manual_seed(seed)
    net = shufflenet_v2_x0_5(weights=None).eval()
    for m in net.modules():  # non-trivial BN statistics and affine parameters
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return net


@pytest.mark.parametrize("tap_stride", [8, 16, 32])
def test_fast_shufflenet_equals_torchvision_modules(tap_stride):
    """The fast path (BN folded, fused ReLU, no channel shuffle, pooling before ReLU, grouped
    head) against the plain, un-fused torchvision modules, on random weights."""
    from quadformer.tokenize.scorers.backbones import FastShuffleNet

    net = _randomised_shufflenet(tap_stride)
    tap = ShuffleNetTap(net, tap_stride)
    fast = FastShuffleNet.from_tap(tap)
    assert fast is not None and fast.stride == tap_stride
    for shape in [(3, 3, 64, 64), (2, 3, 70, 46), (1, 3, 33, 31), (2, 3, 16, 16)]:
        x = torch.randn(shape)
        with torch.no_grad():
            ref = tap(x)  # torchvision's InvertedResidual.forward, BN in eval mode
            out = fast(x)
        assert out.shape == ref.shape
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-4 * ref.abs().max().item())
    # several inputs (the image and its blurs), the head run in groups of one image
    xs = [torch.randn(3, 3, 48, 64) for _ in range(3)]
    fast.HEAD_PIXELS = 1
    with torch.no_grad():
        ref = tap(torch.cat(xs))
        out = fast.forward_passes(xs)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-4 * ref.abs().max().item())
    with pytest.raises(ValueError, match="one size"):
        fast.forward_passes([xs[0], xs[1][..., :32]])


def test_fast_shufflenet_only_for_known_modules():
    from quadformer.tokenize.scorers.backbones import FastShuffleNet

    net = _randomised_shufflenet(0)
    assert FastShuffleNet.from_tap(nn.Conv2d(3, 4, 3)) is None
    assert FastShuffleNet.from_tap(ShuffleNetTap(net, 8).double()) is None
    odd = ShuffleNetTap(_randomised_shufflenet(0), 16)
    odd.stage3[1].branch2[2] = nn.GELU()  # not the torchvision block any more
    assert FastShuffleNet.from_tap(odd) is None
    sc = FeatureScorer(backbone=odd)  # falls back to the folded copy, same scores
    assert not isinstance(sc._inference_backbone(), FastShuffleNet)
    assert not isinstance(FeatureScorer("random", channels_last=False)._inference_backbone(), FastShuffleNet)


@pytest.mark.parametrize("h,w", [(8, 8), (9, 7), (2, 5), (1, 1), (128, 96)])
def test_max_pool_without_indices(h, w):
    from quadformer.tokenize.scorers.backbones import _max_pool_3s2

    y = torch.randn(2, 5, h, w).contiguous(memory_format=torch.channels_last)
    ref = F.max_pool2d(y, 3, 2, 1)
    out = torch.empty_like(ref)
    _max_pool_3s2(y, out)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


@pytest.mark.parametrize("tap_stride,size,p", [(32, 128, 16), (16, 64, 8), (8, 64, 4)])
def test_feature_scorer_fast_path_equals_reference(tap_stride, size, p):
    """Scores of the default CPU path = map_j computed with the plain torchvision modules."""
    from quadformer.tokenize.scorers import blur
    from quadformer.tokenize.scorers.backbones import FastShuffleNet

    net = _randomised_shufflenet(1)
    g = geo(size, size, p, 4 * p)  # L = 3
    sc = FeatureScorer(backbone=ShuffleNetTap(net, tap_stride), chunk_size=2)
    assert isinstance(sc._inference_backbone(), FastShuffleNet)
    x = torch.randn(5, 3, size, size)
    maps = sc(x, g)
    tap = ShuffleNetTap(net, tap_stride)
    with torch.no_grad():
        f0 = tap(x)
        scale = f0.square().mean().item()  # the scale of a squared feature difference
        for j, m in enumerate(maps, start=1):
            ref = (tap(blur(x, j)) - f0).square().mean(1)
            ref = to_grid_ref(ref, *g.grid(j))
            torch.testing.assert_close(m, ref, rtol=1e-3, atol=1e-5 * scale)


def to_grid_ref(m: torch.Tensor, gh: int, gw: int) -> torch.Tensor:
    """Average-pool a [B, h, w] map onto a gh x gw grid (h, w multiples of it)."""
    b, h, w = m.shape
    return m.view(b, gh, h // gh, gw, w // gw).mean((2, 4))


@pytest.mark.parametrize("f", [2, 4])
@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (1, 3, 5, 7), (2, 3, 1, 1), (1, 3, 2, 3), (2, 3, 32, 24)])
def test_fast_stem_of_upsampled_images_from_small_images(f, shape):
    """conv1 + max-pool of up_f(s), computed on s (phases, edge corrections) = on up_f(s)."""
    from quadformer.tokenize.scorers.backbones import FastShuffleNet

    fast = FastShuffleNet.from_tap(ShuffleNetTap(_randomised_shufflenet(2), 8))
    s = torch.randn(shape)
    up = F.interpolate(s, scale_factor=f, mode="bilinear", align_corners=False)
    with torch.no_grad():
        ref = fast._stem(up)
        out = fast._stem_up(s, f)
        assert out.shape == ref.shape
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-5 * ref.abs().max().item())
        # and through the whole network, mixed with a plain pass
        tap_ref = fast.forward_passes([up, up])
        torch.testing.assert_close(fast.forward_passes([up, (s, f)]), tap_ref, rtol=0,
                                   atol=1e-4 * tap_ref.abs().max().item())
    with pytest.raises(ValueError, match="up-sampled"):
        fast._stem_up(s, 8)
