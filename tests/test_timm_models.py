"""Every registered model through timm's own habits, in the style of timm's ``tests/test_models.py``:
``create_model``, ``forward_intermediates``, ``features_only``/``feature_info``, ``save_for_hf`` +
``local-dir:`` reload, and the full-size architecture against the vanilla ViT its
``pretrained_cfg`` names (on the ``meta`` device: shapes only). Reduced width and depth keep the
suite fast; image size, patch sizes and budget are each model's own."""

from __future__ import annotations

import subprocess
import sys

import pytest
import timm
import torch
from timm.models import get_pretrained_cfg, save_for_hf

import quadformer  # noqa: F401  (``import quadformer`` alone registers the models)
from quadformer.models import Quadformer, convert_vanilla_state_dict

MODELS = timm.list_models(["quadformer_*", "uniform_vit_*"])
SMALL = dict(embed_dim=32, depth=2, num_heads=2, num_classes=5)


def _input(model: torch.nn.Module, batch: int = 1) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(batch, *model.pretrained_cfg["input_size"])


def test_every_model_is_registered():
    assert len(MODELS) == 26 and "quadformer_small_patch16_224" in MODELS and "uniform_vit_base_patch16_384" in MODELS


@pytest.mark.slow  # a fresh interpreter imports torch and timm (5-20 s)
def test_import_quadformer_alone_registers_every_model():
    """In a fresh interpreter, ``import quadformer`` alone registers all 26 models and imports no
    training, data or CLI code."""
    code = ("import sys, timm, quadformer; print(len(timm.list_models(['quadformer_*', 'uniform_vit_*']))); "
            "print(sorted({m.split('.')[1] for m in sys.modules if m.startswith('quadformer.')}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "26" and out[1] == "['models', 'tokenize', 'utils']"


@pytest.mark.parametrize("name", MODELS)
def test_model_forward_and_intermediates(name):
    m = timm.create_model(name, **SMALL).eval()
    cfg = m.pretrained_cfg
    assert cfg["architecture"] == name and cfg["fixed_input_size"] and cfg["first_conv"] == "patch_embed.proj"
    assert cfg["classifier"] == "head" and m.get_submodule(cfg["first_conv"]) is m.patch_embed.proj
    x = _input(m)
    with torch.no_grad():
        out = m(x)
        feats = m.forward_features(x)
        final, inter = m.forward_intermediates(x)
    assert out.shape == (1, 5) and torch.isfinite(out).all()
    torch.testing.assert_close(final, feats)
    assert len(inter) == 2 and all(t.shape[:2] == (1, 32) for t in inter)
    assert m.gmacs() > 0


@pytest.mark.parametrize("name", MODELS)
def test_model_features_only(name):
    f = timm.create_model(name, features_only=True, out_indices=(0, 1), **SMALL).eval()
    x = _input(f)
    with torch.no_grad():
        outs = f(x)
    assert f.feature_info.channels() == [32, 32] and len(outs) == 2
    for t, r in zip(outs, f.feature_info.reduction()):  # (the vertical one for a non-square token grid)
        assert t.shape[1] == 32 and t.shape[-2] == round(x.shape[-2] / r)


@pytest.mark.parametrize("name", MODELS)
def test_save_for_hf_then_local_dir_rebuilds_exactly(name, tmp_path):
    torch.manual_seed(0)
    m = timm.create_model(name, **SMALL).eval()
    save_for_hf(m, tmp_path, safe_serialization=True)
    r = timm.create_model(f"local-dir:{tmp_path}", pretrained=True).eval()
    assert type(r) is type(m) and r.tokenizer_args() == m.tokenizer_args()
    assert r.state_dict().keys() == m.state_dict().keys()
    x = _input(m, 2)
    with torch.no_grad():
        torch.testing.assert_close(r(x), m(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", [n for n in MODELS if get_pretrained_cfg(n).hf_hub_id])
def test_full_size_model_takes_its_vanilla_vit_weights(name):
    """The vanilla ViT ``pretrained_cfg.hf_hub_id`` names has our full-size architecture: its
    converted state dict gives every key of ours with the same shape."""
    vanilla = get_pretrained_cfg(name).hf_hub_id.split("/")[-1].split(".")[0]
    with torch.device("meta"):
        ours = timm.create_model(name)
        vit = timm.create_model(vanilla)
    state = convert_vanilla_state_dict(vit.state_dict(), ours)
    own = ours.state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == {k: tuple(v.shape) for k, v in own.items()}
    assert ours.num_classes == vit.num_classes == 1000


def test_micro_quadformer_exports():
    """torch.export of a micro model equals eager (every model: the tokenizer's export tests)."""
    m = Quadformer(32, 4, 16, 28, embed_dim=16, depth=1, num_heads=2, num_classes=3).eval()
    x = torch.randn(2, 3, 32, 32)
    want = m(x)
    ep = torch.export.export(m, (x,))
    torch.testing.assert_close(ep.module()(x), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(m(x), want, rtol=0, atol=0)  # eager still eager after tracing
