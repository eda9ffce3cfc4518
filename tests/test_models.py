"""Quadformer / UniformViT: timm conventions, vanilla checkpoint loading, equivalences (spec §9, §10)."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer

import quadformer.models  # noqa: F401  (registers the models)
from quadformer.models import Quadformer, UniformViT, load_vanilla_checkpoint, vit_gmacs

TINY = dict(embed_dim=32, depth=2, num_heads=2, num_classes=5)


def vanilla_vit(img=64, patch=16) -> VisionTransformer:
    torch.manual_seed(0)
    m = VisionTransformer(img_size=img, patch_size=patch, **TINY).eval()
    with torch.no_grad():
        m.pos_embed.normal_(std=0.5)
        m.cls_token.normal_(std=0.5)
    return m


def test_vanilla_checkpoint_into_uniform_mosaic_gives_same_logits(tmp_path):
    """A timm ViT and a Quadformer (learned_grid) loaded from its checkpoint agree exactly when the
    mosaic is uniform: p_min = p_max, and at N = Nmax with a real scorer."""
    vit = vanilla_vit()
    path = tmp_path / "vit.safetensors"
    save_file(vit.state_dict(), str(path))
    x = torch.randn(3, 3, 64, 64)
    want = vit(x)
    for pmax, n in ((16, 16), (32, 16)):
        q = Quadformer(64, 16, pmax, n, scorer="pixel-blur", pos_embed="learned_grid", **TINY).eval()
        missing = load_vanilla_checkpoint(q, str(path))
        assert missing == []
        torch.testing.assert_close(q(x), want, atol=1e-5, rtol=1e-5)


def test_sincos_vanilla_and_quadformer_same_weights_same_logits():
    x = torch.randn(2, 3, 64, 96)
    torch.manual_seed(1)
    u = UniformViT((64, 96), 16, num_patches=24, **TINY).eval()
    q = Quadformer((64, 96), 16, 16, 24, scorer=None, **TINY).eval()
    q.load_state_dict(u.state_dict())
    torch.testing.assert_close(q(x), u(x), atol=1e-5, rtol=1e-5)


def test_sincos_load_folds_cls_position_into_cls_token():
    vit = vanilla_vit()
    q = Quadformer(64, 16, 32, 10, scorer="pixel-blur", **TINY)
    load_vanilla_checkpoint(q, vit.state_dict())
    torch.testing.assert_close(q.cls_token, vit.cls_token + vit.pos_embed[:, :1])
    torch.testing.assert_close(q.blocks[1].mlp.fc2.weight, vit.blocks[1].mlp.fc2.weight)


def test_state_dict_names_match_timm():
    vit = vanilla_vit()
    q = Quadformer(64, 16, 32, 10, scorer="feature", scorer_kwargs={"weights": "random", "tap_stride": 16},
                   **TINY)
    qkeys = {k for k in q.state_dict() if not k.startswith("scorer.")}
    assert qkeys == set(vit.state_dict()) - {"pos_embed"}
    assert any(k.startswith("scorer.") for k in q.state_dict())
    trainable = [n for n, p in q.named_parameters() if p.requires_grad]
    assert trainable and not any(n.startswith("scorer.") for n in trainable)
    q.train()
    assert q.training and not q.scorer.training


def test_other_architecture_checkpoint_is_refused():
    q = Quadformer(64, 16, 32, 10, **TINY)
    other = VisionTransformer(img_size=64, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=5)
    with pytest.raises(ValueError, match="patch embedding"):
        load_vanilla_checkpoint(q, other.state_dict())
    deeper = VisionTransformer(img_size=64, patch_size=16, embed_dim=32, depth=3, num_heads=2, num_classes=5)
    with pytest.raises(ValueError, match="another architecture"):
        load_vanilla_checkpoint(q, deeper.state_dict())


def test_timm_create_model_and_budget_change():
    m = timm.create_model("quadformer_micro_patch8_128", num_patches=100, num_classes=7)
    assert isinstance(m, Quadformer) and m.num_patches == 100
    x = torch.randn(2, 3, 128, 128)
    assert m(x).shape == (2, 7)
    m.set_num_patches(64)
    assert m.forward_features(x).shape == (2, 65, m.embed_dim)
    with pytest.raises(ValueError, match="nearest: 61, 64"):
        m.set_num_patches(63)
    u = timm.create_model("uniform_vit_micro_patch8_128", num_patches=64, num_classes=7)
    assert isinstance(u, UniformViT) and u.grid == (8, 8) and u(x).shape == (2, 7)
    with pytest.raises(ValueError, match="hub_name"):
        timm.create_model("quadformer_micro_patch8_128", pretrained=True)


def test_forward_head_and_intermediates():
    m = Quadformer(64, 8, 32, 4 + 3 * 6, **TINY).eval()
    x = torch.randn(2, 3, 64, 64)
    feats = m.forward_features(x)
    assert m.forward_head(feats, pre_logits=True).shape == (2, 32)
    torch.testing.assert_close(m.forward_head(feats), m(x))
    final, inter = m.forward_intermediates(x, indices=[0, 1])
    assert final.shape == feats.shape and [t.shape for t in inter] == [(2, 32, 8, 8)] * 2
    torch.testing.assert_close(final, feats)
    nlc = m.forward_intermediates(x, indices=1, output_fmt="NLC", intermediates_only=True)
    assert nlc[0].shape == (2, 22, 32)


def test_gmacs_match_spec_table():
    s = dict(embed_dim=384, depth=12, num_heads=6)
    for n, plain, attn in ((64, 1.40, 1.44), (100, 2.17, 2.27), (196, 4.24, 4.60), (576, 12.42, 15.49)):
        m = UniformViT(384, 16, num_patches=n, **s)
        assert round(vit_gmacs(m, n, attention=False), 2) == plain
        assert round(vit_gmacs(m, n, attention=True), 2) == attn


def test_hub_cached_weights_load_from_the_local_cache_only(tmp_path):
    """A vanilla timm ViT in a Hugging Face cache folder loads; a missing one is an error, not a download."""
    from safetensors.torch import save_file

    from quadformer.models import load_hub_cached

    vanilla = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    snap = tmp_path / "models--timm--vit_tiny_patch16_224.augreg_in21k_ft_in1k" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in vanilla.state_dict().items()}, snap / "model.safetensors")
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text("abc123")
    q = timm.create_model("quadformer_tiny_patch16_224", num_patches=100)
    load_hub_cached(q, "vit_tiny_patch16_224", cache_dir=tmp_path)
    torch.testing.assert_close(q.blocks[3].mlp.fc1.weight, vanilla.blocks[3].mlp.fc1.weight)
    with pytest.raises(ValueError, match="not in the local hub cache"):
        load_hub_cached(q, "vit_small_patch16_224", cache_dir=tmp_path)
