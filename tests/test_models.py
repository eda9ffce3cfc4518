"""Quadformer / UniformViT: timm conventions, vanilla checkpoint loading, equivalences, the one model
spec of :func:`quadformer.models.loading.load_model` (``docs/design/mixed_resolution.md`` §9, §10)."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer

import quadformer  # noqa: F401  (registers the models)
from quadformer.models import Quadformer, UniformViT, convert_vanilla_state_dict, load_vanilla_checkpoint, vit_gmacs
from quadformer.models.loading import load_model
from quadformer.tokenize import QuadGeometry, Tokenizer, mosaic, patchify
from quadformer.utils.errors import QuadformerError

from .reference_tokens import mosaic_tokens, uniform_patches

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
    with pytest.raises(QuadformerError, match="no pretrained weights.*pretrained_cfg_overlay=dict.file="):
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
        with torch.device("meta"):  # shapes only
            m = UniformViT(384, 16, num_patches=n, **s)
        assert round(vit_gmacs(m, n, attention=False), 2) == plain
        assert round(vit_gmacs(m, n, attention=True), 2) == attn


def _fake_hub_cache(root, repo: str, files: dict) -> None:
    """A Hugging Face cache folder holding ``files`` (name -> writer) for ``repo``."""
    top = root / f"models--{repo.replace('/', '--')}"
    snap = top / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    for name, write in files.items():
        write(snap / name)
    (top / "refs").mkdir()
    (top / "refs" / "main").write_text("abc123")


@pytest.fixture
def offline(monkeypatch):
    """huggingface_hub in offline mode: the cache is read, nothing is downloaded."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_pretrained_reads_the_vanilla_vit_from_the_hub_cache(tmp_path, offline):
    """pretrained=True goes through timm: the matching vanilla ViT's cached weights load (no download)."""
    hub = "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k"
    assert timm.models.get_pretrained_cfg("quadformer_tiny_patch16_224").hf_hub_id == hub
    vanilla = timm.create_model("vit_tiny_patch16_224", depth=1)
    state = {k: v.contiguous() for k, v in vanilla.state_dict().items()}
    _fake_hub_cache(tmp_path, hub, {"model.safetensors": lambda p: save_file(state, str(p))})
    q = timm.create_model("quadformer_tiny_patch16_224", pretrained=True, depth=1, cache_dir=tmp_path)
    torch.testing.assert_close(q.blocks[0].mlp.fc1.weight, vanilla.blocks[0].mlp.fc1.weight)
    torch.testing.assert_close(q.head.weight, vanilla.head.weight)
    assert q.pretrained_cfg["mean"] == (0.5, 0.5, 0.5)  # the preprocessing these weights expect
    with pytest.raises(QuadformerError, match="not in the local Hugging Face cache.*pretrained_cfg_overlay"):
        timm.create_model("quadformer_small_patch16_224", pretrained=True, depth=1, cache_dir=tmp_path)


def test_pretrained_local_file_gives_the_vanilla_logits(tmp_path):
    """A vanilla timm ViT file through pretrained_cfg_overlay: the uniform model at its grid and the
    Quadformer at N = N0 (all finest patches, learned grid) give the ViT's logits."""
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", depth=2, num_classes=5).eval()
    with torch.no_grad():
        vit.pos_embed.normal_(std=0.5)
        vit.cls_token.normal_(std=0.5)
    path = tmp_path / "vit.safetensors"
    save_file(vit.state_dict(), str(path))
    x = torch.randn(2, 3, 224, 224)
    want = vit(x)
    overlay = dict(file=str(path), num_classes=5)
    u = timm.create_model("uniform_vit_tiny_patch16_224", pretrained=True, pretrained_cfg_overlay=overlay,
                          num_patches=196, pos_embed="learn", depth=2).eval()
    torch.testing.assert_close(u(x), want, atol=1e-5, rtol=1e-5)
    q = timm.create_model("quadformer_tiny_patch16_224", pretrained=True, pretrained_cfg_overlay=overlay,
                          num_patches=196, pos_embed="learned_grid", depth=2).eval()
    torch.testing.assert_close(q(x), want, atol=1e-5, rtol=1e-5)
    # a training config's model.kwargs take the same route (new head for its classes)
    from quadformer.models.factory import build_model

    b = build_model("quadformer_tiny_patch16_224", 7, 224, 100, {"depth": 2, "pretrained": True,
                                                                  "pretrained_cfg_overlay": {"file": str(path)}})
    torch.testing.assert_close(b.blocks[1].attn.qkv.weight, vit.blocks[1].attn.qkv.weight)
    assert b.head.weight.shape == (7, 192)
    with pytest.raises(QuadformerError, match="file not found"):
        timm.create_model("quadformer_tiny_patch16_224", pretrained=True, depth=2,
                          pretrained_cfg_overlay=dict(file=str(tmp_path / "nope.safetensors")))


def test_overlay_mean_and_std_are_honoured():
    m = timm.create_model("quadformer_micro_patch8_128",
                          pretrained_cfg_overlay=dict(mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6)))
    cfg = timm.data.resolve_data_config(model=m)
    assert cfg["mean"] == (0.1, 0.2, 0.3) and cfg["std"] == (0.4, 0.5, 0.6)
    assert m.pretrained_cfg["architecture"] == "quadformer_micro_patch8_128"


def test_learned_grid_conversion_resizes_timm_pos_embed_and_keeps_cls():
    from timm.layers import resample_abs_pos_embed

    q = Quadformer(64, 16, 32, 10, pos_embed="learned_grid", **TINY)
    vit = VisionTransformer(img_size=32, patch_size=16, **TINY)  # a 2x2 grid, resized to 4x4 as timm does
    with torch.no_grad():
        vit.pos_embed.normal_()
    state = convert_vanilla_state_dict(vit.state_dict(), q)
    want = resample_abs_pos_embed(vit.pos_embed, new_size=[4, 4], num_prefix_tokens=1)
    torch.testing.assert_close(state["cls_pos"], vit.pos_embed[:, :1])
    torch.testing.assert_close(state["pos_grid.grid"][0].permute(1, 2, 0).reshape(16, -1), want[0, 1:])
    assert set(state) == set(q.state_dict())


def test_quadformer_runs_the_tokenizer_path():
    """The model's tokens are the standalone Tokenizer's (same code, same weights, same state-dict
    names) and equal the slow token-by-token reference."""
    torch.manual_seed(0)
    q = Quadformer((64, 96), 8, 32, 6 + 3 * 5, scorer="pixel-blur", **TINY).eval()
    tok = Tokenizer((64, 96), 8, 32, 6 + 3 * 5, embed_dim=32, scorer="pixel-blur")
    tok.load_state_dict({k: v for k, v in q.state_dict().items() if k in tok.state_dict()})
    x = torch.randn(2, 3, 64, 96)
    tokens, index = q.tokenize(x)
    want, boxes, _ = tok(x)
    torch.testing.assert_close(tokens, want, rtol=0, atol=0)
    p = q.patch_embed.proj
    ref = mosaic_tokens(x, boxes, 8, p.weight, p.bias, q.cls_token)
    torch.testing.assert_close(tokens, ref, atol=1e-4, rtol=1e-4)


def test_uniform_model_patches_equal_the_reference_and_the_scale_one_mosaic():
    """N=64 of a 256-px image: 16-px patches of the 128-px image, equal to the slow reference and,
    under reference resampling, to the mosaic's 32-px tokens."""
    x = torch.randn(2, 3, 256, 256)
    u = UniformViT(256, 16, num_patches=64, **TINY)
    got = patchify(u.downscale(x), 16)
    torch.testing.assert_close(got, uniform_patches(x, (8, 8), 16), atol=1e-6, rtol=0)
    pix, _, _ = mosaic(x, QuadGeometry(256, 256, 16, 32, 64), None)
    torch.testing.assert_close(got, pix, atol=1e-6, rtol=0)


# -- load_model: one model spec -------------------------------------------------------------------

MICRO = dict(embed_dim=32, depth=1, num_heads=2)


def _train_checkpoint(path, layout: str) -> tuple[dict, dict]:
    torch.manual_seed(0)
    raw = timm.create_model("quadformer_micro_patch4_32", num_classes=3, num_patches=28, **MICRO).state_dict()
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in raw.items()}
    keys = ("state_dict", "state_dict_ema") if layout == "timm" else ("model", "ema")
    torch.save({keys[0]: raw, keys[1]: ema, "num_classes": 3, "class_names": ["a", "b", "c"],
                # pretrained=True said where the run's initial weights came from; a rebuild ignores it
                "config": {"model": {"name": "quadformer_micro_patch4_32", "num_patches": 28,
                                     "kwargs": {**MICRO, "pretrained": True}},
                           "data": {"image_size": 32}, "seed": 7}}, path)
    return raw, ema


@pytest.mark.parametrize("layout", ["timm", "old"])
def test_load_model_reads_train_checkpoints_in_both_layouts(tmp_path, layout):
    path = tmp_path / "last.pt"
    raw, ema = _train_checkpoint(path, layout)
    lm = load_model(path, weights="ema")
    assert lm.weights == "ema" and lm.init_seed == 7 and lm.class_names == ["a", "b", "c"]
    torch.testing.assert_close(lm.model.state_dict()["head.weight"], ema["head.weight"])
    lm = load_model(tmp_path, weights="model")  # the run folder
    torch.testing.assert_close(lm.model.state_dict()["head.weight"], raw["head.weight"])
    if layout == "timm":  # timm's own reader picks the EMA weights of our checkpoints
        m = timm.create_model("quadformer_micro_patch4_32", num_classes=3, **MICRO)
        timm.models.load_checkpoint(m, str(path), use_ema=True)
        torch.testing.assert_close(m.head.weight, ema["head.weight"])


def test_load_model_local_dir_round_trip(tmp_path):
    from timm.models import save_for_hf

    torch.manual_seed(0)
    m = timm.create_model("quadformer_micro_patch4_32", num_classes=3, **MICRO).eval()
    m.set_num_patches(16)
    save_for_hf(m, tmp_path / "hf", safe_serialization=True, model_config={"label_names": ["a", "b", "c"]})
    lm = load_model(f"local-dir:{tmp_path / 'hf'}")
    assert lm.kind == "hub" and lm.name == "quadformer_micro_patch4_32" and lm.model.num_patches == 16
    assert lm.class_names == ["a", "b", "c"] and lm.image_size == 32 and lm.num_classes == 3
    assert lm.sha256 is not None and lm.path.name == "model.safetensors"
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(lm.model(x), m(x), rtol=0, atol=0)
    assert lm.factory().num_patches == 16
    from quadformer.models.loading import create_from_config

    again = create_from_config(lm.model_config, lm.image_size, lm.num_classes)
    assert again.num_patches == 16 and again.state_dict().keys() == m.state_dict().keys()


def test_load_model_refuses_what_is_no_model_spec(tmp_path):
    with pytest.raises(QuadformerError, match="not a model; pass a timm model name, a run folder, last.pt, "
                                              "model.safetensors, local-dir:PATH or hf-hub:ORG/NAME"):
        load_model("quadformer_mikro")
    with pytest.raises(QuadformerError, match="cannot be read"):
        load_model(f"local-dir:{tmp_path}")


def test_hf_export_carries_tokenizer_config_and_scorer_weights(tmp_path):
    """save_for_hf writes the current budget, p_min/p_max, scorer name + kwargs, pos_embed and
    resample; the scorer's weights travel in the state dict, so a weights file need not exist where
    ``local-dir:``/``hf-hub:`` rebuilds the model."""
    import json

    from timm.models import save_for_hf

    from quadformer.tokenize.scorers import shufflenet_backbone

    torch.manual_seed(0)
    weights = tmp_path / "scorer.safetensors"
    save_file({k: v.contiguous() for k, v in shufflenet_backbone(16, "random").state_dict().items()}, str(weights))
    m = timm.create_model("quadformer_micro_patch8_128", num_classes=3, scorer="feature", pos_embed="learned_grid",
                          scorer_kwargs={"weights": str(weights), "tap_stride": 16}, **MICRO).eval()
    with torch.no_grad():
        m.pos_grid.grid.normal_()
    m.set_num_patches(61)
    save_for_hf(m, tmp_path / "hf", safe_serialization=True)
    weights.unlink()
    args = json.loads((tmp_path / "hf" / "config.json").read_text())["model_args"]
    assert {k: args[k] for k in ("patch_size", "max_patch_size", "num_patches", "scorer", "scorer_kwargs",
                                 "pos_embed", "resample")} == {
        "patch_size": 8, "max_patch_size": 32, "num_patches": 61, "scorer": "feature",
        "scorer_kwargs": {"weights": "random", "tap_stride": 16}, "pos_embed": "learned_grid",
        "resample": "reference"}
    torch.manual_seed(1)  # another init: everything must come from the saved weights
    r = timm.create_model(f"local-dir:{tmp_path / 'hf'}", pretrained=True).eval()
    x = torch.randn(2, 3, 128, 128)
    torch.testing.assert_close(r(x), m(x), rtol=0, atol=0)
    torch.testing.assert_close(r.scorer.state_dict(), m.scorer.state_dict())
    assert r.gmacs() == m.gmacs()


def test_hf_hub_name_rebuilds_from_the_hub_cache(tmp_path, offline, monkeypatch):
    """``hf-hub:`` takes the same path as ``local-dir:`` (config.json + weights), here from a cache."""
    import huggingface_hub.constants
    from timm.models import save_for_hf

    torch.manual_seed(0)
    m = timm.create_model("quadformer_micro_patch4_32", num_classes=3, pos_embed="learned_grid", **MICRO).eval()
    save_for_hf(m, tmp_path / "hf", safe_serialization=True)
    files = {n: (lambda p, n=n: p.write_bytes((tmp_path / "hf" / n).read_bytes()))
             for n in ("config.json", "model.safetensors")}
    _fake_hub_cache(tmp_path / "cache", "someone/quadformer-micro", files)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    lm = load_model("hf-hub:someone/quadformer-micro")
    x = torch.randn(2, 3, 32, 32)
    assert lm.name == "quadformer_micro_patch4_32" and lm.kind == "hub" and lm.sha256 is not None
    torch.testing.assert_close(lm.model(x), m(x), rtol=0, atol=0)
    with pytest.raises(QuadformerError, match="not in the local Hugging Face cache"):
        load_model("hf-hub:someone/missing")


def test_load_model_export_with_its_json(tmp_path):
    """``model.safetensors`` + ``model.json`` (what ``quadformer train`` exports) rebuilds its model."""
    import json

    torch.manual_seed(0)
    m = timm.create_model("quadformer_micro_patch4_32", num_classes=3, num_patches=28, **MICRO).eval()
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(tmp_path / "model.safetensors"))
    meta = {"model": {"name": "quadformer_micro_patch4_32", "num_patches": 28, "kwargs": MICRO}, "image_size": 32,
            "num_classes": 3, "class_names": ["a", "b", "c"]}
    (tmp_path / "model.json").write_text(json.dumps(meta))
    lm = load_model(tmp_path / "model.safetensors")
    assert lm.kind == "export" and lm.class_names == ["a", "b", "c"]
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(lm.model(x), m(x), rtol=0, atol=0)
    other = {**meta, "model": {**meta["model"], "kwargs": {**MICRO, "depth": 2}}}
    (tmp_path / "model.json").write_text(json.dumps(other))
    with pytest.raises(QuadformerError, match="does not fit architecture"):
        load_model(tmp_path / "model.safetensors")
