"""Diversity metrics (spec §2): known values, layer selection, determinism, Δ vs init, CLI."""

from __future__ import annotations

import argparse
import csv
import json
import math
from types import SimpleNamespace

import pytest
import timm
import torch
from torch import nn

import quadformer.models  # noqa: F401  (registers our models)
from quadformer.diversity import (
    activation_diversity,
    activation_taps,
    channel_correlation,
    erank,
    feature_erank,
    filter_cosine_diversity,
    filter_erank,
    filter_layers,
    fresh_init,
    layer_erank,
    measure_diversity,
    probe_indices,
    strided_rows,
    weight_diversity,
)
from quadformer.tokenize.scorers.base import PatchScorer
from quadformer.utils.errors import QuadformerError


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tensors are tiny: one thread avoids stalls on a shared, busy CPU (restored after)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# --------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------


def _entropy_erank(s: list[float]) -> float:
    p = [x / sum(s) for x in s if x > 0]
    return math.exp(-sum(q * math.log(q) for q in p))


def test_erank_known_spectra():
    assert erank(torch.eye(6)) == pytest.approx(6.0, abs=1e-12)
    assert erank(torch.diag(torch.tensor([3.0, 1.0]))) == pytest.approx(_entropy_erank([3, 1]), abs=1e-12)
    assert erank(torch.diag(torch.tensor([1.0, 1.0, 0.0]))) == pytest.approx(2.0, abs=1e-12)  # zeros dropped
    m = torch.randn(7, 4, dtype=torch.float64)
    assert erank(m) == pytest.approx(erank(m.T), abs=1e-12)
    # rank 1 (float32 round-off must not count as rank): erank 1, ratio 1/min(n, d)
    r1 = torch.outer(torch.randn(9), torch.randn(5))
    assert erank(r1) == pytest.approx(1.0, abs=1e-6)
    assert erank(torch.zeros(3, 3)) == 0.0


def test_w2_and_a1_normalisation():
    # identity-like filters: full rank ratio 1
    q, _ = torch.linalg.qr(torch.randn(8, 8, dtype=torch.float64))
    assert filter_erank(q[:5] * torch.arange(1, 6, dtype=torch.float64)[:, None]) == pytest.approx(1.0, abs=1e-12)
    # all filters equal up to sign and scale: rank 1 -> 1 / min(K, fan_in)
    v = torch.randn(12)
    w = torch.stack([c * v for c in (1.0, -2.0, 0.5, 3.0)])
    assert filter_erank(w) == pytest.approx(1 / 4, abs=1e-6)
    # known value: rows e1, e1 (scaled), e2 -> Ŵ singular values sqrt(2), 1; min(K=3, fan_in=2) = 2
    w = torch.tensor([[1.0, 0.0], [5.0, 0.0], [0.0, 2.0]])
    assert filter_erank(w) == pytest.approx(_entropy_erank([math.sqrt(2), 1.0]) / 2, abs=1e-12)
    # A1 centres columns: a constant offset plus a rank-1 signal is rank 1
    z = 5.0 + torch.outer(torch.randn(50, dtype=torch.float64), torch.randn(6, dtype=torch.float64))
    assert feature_erank(z) == pytest.approx(1 / 6, abs=1e-9)
    assert feature_erank(torch.randn(40, 3, dtype=torch.float64)) > 0.9
    # A2 divides by channels
    x = torch.cat([torch.randn(100, 2, dtype=torch.float64), torch.zeros(100, 2, dtype=torch.float64)], 1)
    assert layer_erank(x) == pytest.approx(erank(x - x.mean(0)) / 4, abs=1e-12)


def _naive_w1(w: torch.Tensor) -> float:
    w = w.double()
    k = w.shape[0]
    total = 0.0
    for i in range(k):
        for j in range(k):
            if i != j:
                total += abs(float(w[i] @ w[j]) / float(w[i].norm() * w[j].norm()))
    return 1 - total / (k * (k - 1))


def test_w1_known_values_and_naive_loop():
    q, _ = torch.linalg.qr(torch.randn(10, 10, dtype=torch.float64))
    ortho = q[:6] * torch.tensor([1.0, 2.0, -3.0, 0.1, 5.0, 1.0], dtype=torch.float64)[:, None]
    assert filter_cosine_diversity(ortho) == pytest.approx(1.0, abs=1e-12)
    v = torch.randn(20)
    same = torch.stack([c * v for c in (1.0, -1.0, 2.5, -0.3, 4.0)])  # w and -w are redundant
    assert filter_cosine_diversity(same) == pytest.approx(0.0, abs=1e-6)
    g = torch.Generator().manual_seed(0)
    w = torch.randn(17, 9, generator=g)
    assert filter_cosine_diversity(w) == pytest.approx(_naive_w1(w), abs=1e-12)
    assert filter_cosine_diversity(ortho) == pytest.approx(_naive_w1(ortho), abs=1e-12)
    with pytest.raises(ValueError):
        filter_cosine_diversity(torch.randn(1, 4))


def test_w1_blocked_equals_unblocked():
    w = torch.randn(53, 31, generator=torch.Generator().manual_seed(1))
    full = filter_cosine_diversity(w, block_size=53)
    for b in (1, 4, 7, 52, 1000):
        assert filter_cosine_diversity(w, block_size=b) == pytest.approx(full, abs=1e-13)
    assert filter_cosine_diversity(w) == pytest.approx(full, abs=1e-13)


def test_a3_channel_correlation():
    x = torch.randn(200, dtype=torch.float64)
    y = torch.randn(200, dtype=torch.float64)
    # perfectly correlated channels (incl. anti-correlated) and one constant channel
    z = torch.stack([x, 2 * x + 1, torch.full_like(x, 3.0), -x], 1)
    # |corr| = 1 for the 3 pairs among {x, 2x+1, -x}, 0 for the 3 pairs with the constant: 6/12
    assert channel_correlation(z) == pytest.approx(0.5, abs=1e-12)
    assert channel_correlation(torch.stack([x, 2 * x], 1)) == pytest.approx(1.0, abs=1e-12)
    assert channel_correlation(torch.stack([x, torch.zeros_like(x)], 1)) == 0.0
    # exactly uncorrelated centred columns
    a = torch.tensor([1.0, -1.0, 1.0, -1.0])
    b = torch.tensor([1.0, 1.0, -1.0, -1.0])
    assert channel_correlation(torch.stack([a, b], 1)) == pytest.approx(0.0, abs=1e-15)
    corr = torch.corrcoef(torch.stack([x, y, x + y]))
    expected = (corr.abs().sum() - 3) / 6
    assert channel_correlation(torch.stack([x, y, x + y], 1)) == pytest.approx(float(expected), abs=1e-12)


def test_strided_rows_and_probe_indices():
    x = torch.arange(100).reshape(50, 2)
    s = strided_rows(x, 20)
    assert s.shape[0] <= 20 and torch.equal(s[:, 0], torch.arange(0, 100, 6)[:17])
    assert strided_rows(x, 100).shape[0] == 50
    a = probe_indices(1000, 50, seed=3)
    assert a == probe_indices(1000, 50, seed=3) and a == sorted(a) and len(set(a)) == 50
    assert a != probe_indices(1000, 50, seed=4)
    assert probe_indices(10, 50) == list(range(10))


# --------------------------------------------------------------------------------------------
# layer selection
# --------------------------------------------------------------------------------------------


def _tiny_vit(**kw):
    return timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=4, depth=2, embed_dim=32, num_heads=2,
                             num_classes=5, **kw)


def _vit_names(depth: int, fused: bool = False) -> list[str]:
    names = ["patch_embed.proj"]
    for i in range(depth):
        attn = [f"blocks.{i}.attn.qkv"] if fused else [f"blocks.{i}.attn.{p}" for p in "qkv"]
        names += attn + [f"blocks.{i}.attn.proj", f"blocks.{i}.mlp.fc1", f"blocks.{i}.mlp.fc2"]
    return names


def test_filter_layers_vit_split_and_fused():
    m = _tiny_vit()
    layers = filter_layers(m)
    assert list(layers) == _vit_names(2)
    assert tuple(layers["patch_embed.proj"].shape) == (32, 3 * 4 * 4)
    qkv = m.blocks[1].attn.qkv.weight
    for i, p in enumerate("qkv"):
        assert torch.equal(layers[f"blocks.1.attn.{p}"], qkv[32 * i:32 * (i + 1)])
    fused = filter_layers(m, qkv="fused")
    assert list(fused) == _vit_names(2, fused=True) and tuple(fused["blocks.0.attn.qkv"].shape) == (96, 32)
    assert list(filter_layers(m, exclude=["blocks.1"])) == _vit_names(1)


class _ConvScorer(PatchScorer):
    """A scorer with its own (frozen) conv and linear layers: never a filter layer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.fc = nn.Linear(8, 2)


def test_filter_layers_quadformer_and_uniform_vit_exclude_scorer_and_head():
    q = timm.create_model("quadformer_micro_patch4_32", num_classes=10, scorer=_ConvScorer())
    names = list(filter_layers(q))
    assert names == _vit_names(4)
    assert tuple(filter_layers(q)["patch_embed.proj"].shape) == (128, 3 * 4 * 4)  # C * p_min^2
    q2 = timm.create_model("quadformer_micro_patch4_32", num_classes=10)  # pixel-blur scorer
    assert list(filter_layers(q2)) == _vit_names(4)
    u = timm.create_model("uniform_vit_micro_patch4_32", num_classes=10)
    assert list(filter_layers(u)) == _vit_names(4)
    assert list(activation_taps(u)) == [f"blocks.{i}" for i in range(4)]


def test_filter_layers_cnns():
    r = timm.create_model("resnet18", num_classes=7)
    convs = [n for n, mod in r.named_modules() if isinstance(mod, nn.Conv2d)]
    layers = filter_layers(r)
    assert list(layers) == convs and "fc" not in layers and len(layers) == 20
    assert tuple(layers["layer4.1.conv2"].shape) == (512, 512 * 9)
    assert list(filter_layers(timm.create_model("resnet18", num_classes=0))) == convs
    e = timm.create_model("test_efficientnet", num_classes=3)
    layers = filter_layers(e)
    assert "classifier" not in layers and "conv_head" in layers and "blocks.3.0.se.conv_reduce" in layers
    assert tuple(layers["blocks.3.0.conv_dw"].shape) == (128, 9)  # depthwise: one 3x3 kernel per channel
    assert e.blocks[3][0].conv_dw.groups == 128
    g = nn.Conv2d(8, 12, 3, groups=4)  # grouped: C_in/groups * k * k per output channel
    assert tuple(filter_layers(nn.Sequential(g))["0"].shape) == (12, 2 * 9)


def test_filter_layers_multihead_attention_split():
    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(16, 2)
            self.norm = nn.LayerNorm(16)
            self.fc = nn.Linear(16, 3)  # the classifier by name

    layers = filter_layers(M())
    assert list(layers) == ["attn.q", "attn.k", "attn.v", "attn.out_proj"]


def test_weight_diversity_structure():
    res = weight_diversity(_tiny_vit())
    assert set(res["per_layer"]) == set(_vit_names(2))
    w1 = [v["W1"] for v in res["per_layer"].values()]
    assert res["W1"] == pytest.approx(sum(w1) / len(w1))
    assert all(0 <= v["W1"] <= 1 and 0 < v["W2"] <= 1 for v in res["per_layer"].values())


# --------------------------------------------------------------------------------------------
# activations, Δ vs init
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def glyphs():
    from quadformer.data import build_dataset

    return build_dataset("builtin:glyphs", "val", 32, size=96, seed=0)


SMALL = {"depth": 2, "embed_dim": 48, "num_heads": 2}  # a small UniformViT keeps the tests fast


def _uvit():
    return timm.create_model("uniform_vit_micro_patch4_32", num_classes=0, **SMALL)


def test_activation_diversity_deterministic_vit(glyphs):
    # dropout on: equal reruns also show the pass runs in eval mode
    m = fresh_init(lambda: timm.create_model("uniform_vit_micro_patch4_32", num_classes=0, proj_drop_rate=0.5,
                                             **SMALL), 0)
    with pytest.warns(UserWarning, match="max\\(2000, 5d\\)"):
        a = activation_diversity(m, glyphs, num_images=48, batch_size=16, seed=1, a2_tokens=True, max_rows=500)
    with pytest.warns(UserWarning):
        b = activation_diversity(m, glyphs, num_images=48, batch_size=16, seed=1, a2_tokens=True, max_rows=500)
    assert a["indices"] == b["indices"] == probe_indices(96, 48, seed=1)
    for k in ("A1", "A1_meanpool", "A2", "A3"):
        assert a[k] == pytest.approx(b[k], abs=1e-6), k
        assert 0 < a[k] <= 1
    assert a["A2_variant"] == "cls" and list(a["A2_per_layer"]) == ["blocks.0", "blocks.1"]
    assert set(a["A2_variants"]) == {"cls", "meanpool", "tokens"}
    assert all(r == 48 for r in a["A2_variants"]["cls"]["rows"].values())
    assert all(r <= 500 for r in a["A2_variants"]["tokens"]["rows"].values())  # strided subsample
    assert a["num_images"] == 48 and a["feature_dim"] == 48 and a["warnings"]
    assert m.training  # the caller's mode is restored


def test_activation_diversity_quadformer():
    m = fresh_init(lambda: timm.create_model("quadformer_micro_patch4_32", num_classes=0, **SMALL), 0)
    x = torch.randn(20, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with pytest.warns(UserWarning):
        a = activation_diversity(m, x, num_images=16, batch_size=8, a2_tokens=True)
    assert list(a["A2_per_layer"]) == ["blocks.0", "blocks.1"] and a["A2_variant"] == "cls"
    assert a["A1_meanpool"] is not None and a["feature_dim"] == 48
    assert all(r == 16 * m.num_patches for r in a["A2_variants"]["tokens"]["rows"].values())


def test_activation_diversity_cnn_tensor_data():
    m = fresh_init(lambda: timm.create_model("test_resnet", num_classes=0), 0)
    x = torch.randn(30, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with pytest.warns(UserWarning):
        a = activation_diversity(m, x, num_images=24, batch_size=10)
    assert a["A1_meanpool"] is None and a["A2_variant"] == "meanpool"
    assert list(a["A2_per_layer"]) == ["act1", "layer1", "layer2", "layer3", "layer4"]
    assert len(a["indices"]) == 24 and a["feature_dim"] == 96


def test_delta_vs_init_zero_for_init_model(glyphs):
    m = fresh_init(_uvit, 5)
    init = fresh_init(_uvit, 5)
    res = measure_diversity(m, glyphs, init, num_images=32, batch_size=16)
    for k, v in res["delta_vs_init"]["metrics"].items():
        if res["metrics"][k] is not None:
            assert v == 0.0, k
    assert all(v == 0.0 for per in res["delta_vs_init"]["per_layer"].values() for v in per.values())
    # a changed layer shows up in its own Δ only
    with torch.no_grad():
        m.blocks[1].mlp.fc1.weight[1:] = m.blocks[1].mlp.fc1.weight[0]
    res = measure_diversity(m, None, init)
    d = res["delta_vs_init"]["per_layer"]["W1"]
    assert d["blocks.1.mlp.fc1"] < -0.5 and all(v == 0.0 for n, v in d.items() if n != "blocks.1.mlp.fc1")
    assert res["activations"] is None and res["metrics"]["A1"] is None


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def _parse(argv: list[str]) -> argparse.Namespace:
    from quadformer.cli import diversity_cmd

    p = argparse.ArgumentParser()
    diversity_cmd.add_arguments(p)
    assert "--num-images" in p.format_help()
    return p.parse_args(argv)


def _export(tmp_path, name="uniform_vit_micro_patch4_32", kwargs=None, seed=0):
    from quadformer.train.config import load_config
    from quadformer.train.engine import build_model, export_weights

    cfg = load_config(base={"seed": seed, "model": {"name": name, "num_patches": None, "kwargs": kwargs or SMALL},
                            "data": {"image_size": 32}})
    model = fresh_init(lambda: build_model(cfg, 10), seed)
    data = SimpleNamespace(num_classes=10, multilabel=False, class_names=[str(i) for i in range(10)])
    path = tmp_path / "model.safetensors"
    export_weights(model, cfg, data, path)
    return path, cfg, model


def test_cli_export_writes_files(tmp_path, capsys):
    from quadformer.cli import diversity_cmd

    path, _, _ = _export(tmp_path)
    out = tmp_path / "div"
    args = _parse([str(path), "--data", "builtin:glyphs", "--data-size", "64", "--num-images", "40",
                   "--batch-size", "20", "--out", str(out), "--device", "cpu"])
    assert diversity_cmd.run(args) == 0
    doc = json.loads((out / "diversity.json").read_text())
    assert doc["architecture"] == "uniform_vit_micro_patch4_32" and doc["source"] == "export"
    assert len(doc["activations"]["indices"]) == 40 and doc["activations"]["num_images"] == 40
    for k in ("W1", "W2", "A1", "A2", "A3"):
        assert doc["metrics"][k] is not None and k in doc["delta_vs_init"]["metrics"]
    rows = list(csv.DictReader((out / "diversity_per_layer.csv").open()))
    assert {r["metric"] for r in rows} >= {"W1", "W2", "A2_cls", "A2_meanpool", "A1"}
    assert (out / "diversity_layers.png").stat().st_size > 1000
    text = capsys.readouterr().out
    assert "W1" in text and "A1" in text and "warning:" in text


def test_cli_train_checkpoint_uses_config_seed(tmp_path):
    from quadformer.cli import diversity_cmd
    from quadformer.train.checkpoint import atomic_save

    _, cfg, model = _export(tmp_path, seed=3)  # weights = the seed-3 init
    ck = tmp_path / "last.pt"
    atomic_save({"model": model.state_dict(), "config": cfg.to_dict(), "num_classes": 10, "ema": None}, ck)
    out = tmp_path / "div2"
    # default --num-images: max(2000, 5d), capped at the 32 images of the split, with a warning
    assert diversity_cmd.run(_parse([str(ck), "--data", "builtin:glyphs", "--data-size", "32",
                                     "--out", str(out), "--device", "cpu"])) == 0
    doc = json.loads((out / "diversity.json").read_text())
    assert doc["source"] == "train_checkpoint" and doc["init_seed"] == 3
    assert doc["activations"]["num_images"] == 32 and any("using all" in w for w in doc["warnings"])
    assert all(v == 0.0 for v in doc["delta_vs_init"]["metrics"].values() if v is not None)


def test_cli_default_out_follows_the_spec(tmp_path):
    """Without --out: beside the weights file read (a run folder's own diversity/, not its
    parent's), else runs/diversity/<spec as one folder name> (timm names, hub specs)."""
    from pathlib import Path

    from quadformer.cli.diversity_cmd import default_out
    from quadformer.models.loading import load_model

    path, _, _ = _export(tmp_path)
    for spec in (tmp_path, path):  # the run folder, or its model.safetensors
        assert default_out(str(spec), load_model(spec)) == tmp_path / "diversity"
    lm = load_model("uniform_vit_micro_patch4_32")
    assert default_out("uniform_vit_micro_patch4_32", lm) == Path("runs/diversity/uniform_vit_micro_patch4_32")
    hub = SimpleNamespace(kind="hub", path=tmp_path / "cache" / "model.safetensors")
    assert default_out("hf-hub:org/name", hub) == Path("runs/diversity/hf-hub_org_name")
    assert default_out(f"local-dir:{tmp_path}/m", hub) == Path("runs/diversity") / (
        "local-dir_" + str(tmp_path).strip("/").replace("/", "_") + "_m")


def test_cli_wrong_checkpoint_one_line_error(tmp_path):
    from quadformer.cli import diversity_cmd

    path, _, _ = _export(tmp_path)
    meta = json.loads(path.with_suffix(".json").read_text())
    meta["model"]["kwargs"] = {**SMALL, "depth": 3}  # describes another architecture than the weights
    path.with_suffix(".json").write_text(json.dumps(meta))
    common = ["--data", "builtin:glyphs", "--data-size", "16", "--num-images", "8", "--out", str(tmp_path / "x")]
    for argv in ([str(path)], [str(tmp_path / "missing.pt")], ["no_such_model_xyz"]):
        with pytest.raises(QuadformerError) as e:
            diversity_cmd.run(_parse(argv + common))
        assert "\n" not in str(e.value) and len(str(e.value)) < 400
    assert "does not fit architecture" in _err(diversity_cmd, [str(path)] + common)
    bare = tmp_path / "bare.pt"
    torch.save(timm.create_model("resnet18", num_classes=0).state_dict(), bare)
    assert "--arch" in _err(diversity_cmd, [str(bare)] + common)
    assert "does not fit architecture" in _err(diversity_cmd, [str(bare), "--arch", "resnet34"] + common)
    assert not (tmp_path / "x").exists()


def _err(mod, argv) -> str:
    with pytest.raises(QuadformerError) as e:
        mod.run(_parse(argv))
    return str(e.value)


@pytest.mark.parametrize("argv, needle", [
    (["--batch-size", "0"], "--batch-size"), (["--num-images", "1"], "--num-images"),
    (["--num-images", "0"], "--num-images"), (["--max-rows", "0"], "--max-rows"),
    (["--probe-seed", "-1"], "--probe-seed"), (["--data-size", "x"], "--data-size"),
    (["--threads", "-1"], "--threads"), (["--num-classes", "-2"], "--num-classes"),
])
def test_cli_bad_numbers_are_one_line(argv, needle, capsys, tmp_path):
    from quadformer.cli.main import main

    try:
        rc = main(["diversity", "resnet10t", "--out", str(tmp_path / "out"), *argv])
    except SystemExit as e:  # argparse
        rc = e.code
    err = capsys.readouterr().err.strip()
    assert rc == 2 and needle in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()
