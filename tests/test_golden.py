"""Outputs pinned across refactors: data, tokenizer, scorers, model forward, a short training run.

``tests/golden/outputs.json`` was written on main before the architecture redesign
(``python tests/test_golden.py --write``); a refactor must reproduce it. Change it only with
a change of behaviour that is meant, and say so in the commit.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

GOLDEN = Path(__file__).with_name("golden") / "outputs.json"


def _digest(x) -> str:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().contiguous().numpy()
    a = np.ascontiguousarray(np.asarray(x))
    return hashlib.sha256(str(a.dtype).encode() + str(a.shape).encode() + a.tobytes()).hexdigest()[:16]


def _item_record(item) -> list:
    parts = item if isinstance(item, (tuple, list)) else [item]
    out = []
    for p in parts:
        if isinstance(p, (torch.Tensor, np.ndarray)):
            out.append(_digest(p))
        else:
            out.append(repr(p))
    return out


def data_outputs() -> dict:
    from quadformer.data import build_dataset, list_suite_tasks, list_tasks

    rec = {}
    for name in list_tasks():
        for split in ("train", "test"):
            ds = build_dataset(f"builtin:{name}", split, 32, size=4, seed=3)
            rec[f"{name}/{split}"] = [_item_record(ds[i]) for i in range(3)]
    for name in list_suite_tasks():
        for split in ("train", "test"):
            ds = build_dataset(f"builtin:{name}", split, 32, size=6)
            rec[f"suite:{name}/{split}"] = [_item_record(ds[i]) for i in range(3)]
    return rec


def _images(n=4, size=128, seed=0):
    from quadformer.data import build_dataset

    ds = build_dataset("builtin:glyphs", "test", size, size=n, seed=seed)
    return torch.stack([ds[i][0] for i in range(n)])


def model_outputs() -> dict:
    import timm

    import quadformer.models  # noqa: F401

    rec = {}
    x = _images()
    for name, kw in [
        ("quadformer_micro_patch8_128", dict(scorer="pixel-blur", num_patches=64)),
        ("quadformer_micro_patch8_128", dict(scorer="feature", scorer_kwargs={"weights": "random", "tap_stride": 16}, num_patches=64)),
        ("quadformer_micro_patch8_128", dict(scorer="pixel-blur", num_patches=28, pos_embed="learned_grid")),
        ("uniform_vit_micro_patch8_128", dict(num_patches=64)),
    ]:
        torch.manual_seed(0)
        m = timm.create_model(name, num_classes=10, **kw).eval()
        key = f"{name}/{json.dumps(kw, sort_keys=True)}"
        with torch.no_grad():
            logits = m(x)
            if hasattr(m, "tokenize"):
                tokens, index = m.tokenize(x)
                rec[key + "/index"] = index.tolist()
                rec[key + "/tokens"] = [round(float(v), 4) for v in tokens.double().sum((1, 2))]
        rec[key + "/logits"] = [[round(float(v), 4) for v in row] for row in logits]
    return rec


def training_outputs(tmp: Path) -> dict:
    from quadformer.train import load_config, train

    cfg = load_config(None, [
        "model.name=quadformer_micro_patch4_32", "model.num_patches=28",
        "model.kwargs={embed_dim: 32, depth: 2, num_heads: 2}",
        "data.train=builtin:glyphs", "data.image_size=32", "data.train_size=64", "data.val_size=32",
        "data.batch_size=16", "train.epochs=2", "train.progress=false", "train.amp=off",
        "output.tensorboard=false", "optim.warmup_epochs=0.5", f"output.dir={tmp}",
    ])
    res = train(cfg)
    from safetensors.torch import load_file

    state = load_file(str(tmp / "model.safetensors"))
    return {
        "train_loss": round(float(res["train_loss"]), 5),
        "val_top1": round(float(res["val_top1"]), 4),
        "weight_sums": {k: round(float(v.double().sum()), 4) for k, v in sorted(state.items())
                        if k.startswith(("blocks.0.attn.qkv", "head", "patch_embed"))},
    }


def _load():
    if not GOLDEN.exists():
        pytest.skip("no golden outputs written")
    return json.loads(GOLDEN.read_text())


def _close(a, b, path=""):
    if isinstance(a, dict):
        assert set(a) == set(b), f"{path}: keys differ: {sorted(set(a) ^ set(b))[:5]}"
        for k in a:
            _close(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        assert abs(a - b) <= 2e-3 * max(1.0, abs(b)), f"{path}: {a} != {b}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def test_data_outputs_unchanged():
    _close(data_outputs(), _load()["data"], "data")


def test_model_outputs_unchanged():
    _close(model_outputs(), _load()["models"], "models")


def test_short_training_run_unchanged(tmp_path):
    _close(training_outputs(tmp_path), _load()["training"], "training")


if __name__ == "__main__" and "--write" in sys.argv:
    import tempfile

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as d:
        out = {"data": data_outputs(), "models": model_outputs(), "training": training_outputs(Path(d))}
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    print("wrote", GOLDEN)
