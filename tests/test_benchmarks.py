"""``benchmarks/run_all.py`` runs and prints its tables (a smoke test: speed itself is never
asserted in tests, see the README)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def load_run_all():
    spec = importlib.util.spec_from_file_location("run_all", ROOT / "benchmarks" / "run_all.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["run_all"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_tokenizer_stages_and_micro_tables(tmp_path, capsys):
    run_all = load_run_all()
    threads = torch.get_num_threads()
    try:
        rc = run_all.main(["--only", "tokenizer", "stages", "micro", "--sizes", "256", "--batches", "1",
                           "--reps", "1", "--scorers", "pixel-blur", "--threads", "1", "--json", str(tmp_path / "r.json")])
    finally:
        torch.set_num_threads(threads)
        run_all.SCORERS[:] = ["pixel-blur", "feature", "feature-half"]
    assert rc == 0
    out = capsys.readouterr().out
    for table in ("**tokenizer**", "**tokenizer stages", "**micro 128 px**"):
        assert table in out
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    stages = {r["what"]: r for r in rows if r["table"].startswith("tokenizer stages")}
    assert set(stages) == {"pixel-blur: score", "pixel-blur: select (quadtree)",
                           "pixel-blur: embed (resample, project, positions)", "pixel-blur: tokenize()"}
    assert all(r["ms_per_img"] > 0 for r in rows)
    assert all(0 < r["ratio"] for r in stages.values() if r["ratio"] is not None)
    whats = {r["what"] for r in rows if r["table"] == "tokenizer"}
    assert {"tokenize pixel-blur", "ViT-S patch embed", "ViT-S forward"} <= whats
    micro = [r for r in rows if r["table"].startswith("micro")]
    assert [r["batch"] for r in micro] == [1] * 4
    assert next(r for r in micro if r["what"] == "vanilla ViT N=64")["vs_vanilla_64"] == pytest.approx(1.0)


def test_cuda_without_a_gpu_is_one_line(capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert load_run_all().main(["--device", "cuda"]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
