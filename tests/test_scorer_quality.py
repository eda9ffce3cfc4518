"""The scorer-quality benchmark, tiny: records, the random/oracle brackets, --json."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from quadformer.tokenize import QuadGeometry
from quadformer.tokenize.scorers.quality import mask_coverage, patch_side_map, summarise

ROOT = Path(__file__).resolve().parents[1]


def bench():
    spec = importlib.util.spec_from_file_location("scorer_quality", ROOT / "benchmarks" / "scorer_quality.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_patch_side_map_and_coverage():
    g = QuadGeometry(32, 32, 8, 32, 7)  # one split: the root into four 16-px cells, one of them into 8-px
    from quadformer.tokenize.quadtree import select_tokens

    scores = [torch.tensor([[[1.0, 0.0], [0.0, 0.0]]]), torch.tensor([[[2.0]]])]
    index = select_tokens(scores, g.with_budget(7), 1)
    side = patch_side_map(index, g.with_budget(7))
    assert side[0, 0, 0] == 8 and side[0, 0, 15] == 8 and side[0, 0, 16] == 16 and side[0, 31, 31] == 16
    mask = torch.zeros(1, 32, 32)
    mask[0, :16, :32] = 1.0  # half in 8-px patches, half in a 16-px patch
    frac, mean_side = summarise(mask_coverage(index, g.with_budget(7), mask))
    assert frac == pytest.approx(0.5) and mean_side == pytest.approx(12.0)


def test_benchmark_tiny(tmp_path):
    mod = bench()
    out = tmp_path / "q.json"
    assert mod.main(["--tasks", "glyphs", "--budgets", "64", "--scorers", "pixel-blur", "entropy", "--images", "12",
                     "--repeats", "1", "--json", str(out)]) == 0
    recs = json.loads(out.read_text())
    assert {r["scorer"] for r in recs} == {"random", "oracle", "pixel-blur", "entropy"}
    need = {"task", "scorer", "num_patches", "object_fine_fraction", "random_fine_fraction", "gmacs"}
    assert all(need <= set(r) for r in recs)
    by = {r["scorer"]: r for r in recs}
    assert by["oracle"]["object_fine_fraction"] > 0.9 > by["random"]["object_fine_fraction"]
    assert by["pixel-blur"]["object_fine_fraction"] > by["random"]["object_fine_fraction"] + 0.3
    assert by["pixel-blur"]["gmacs"] > 0 and by["random"]["gmacs"] == 0


def test_benchmark_bad_task_is_one_line(capsys):
    assert bench().main(["--tasks", "no-such-task", "--images", "2", "--repeats", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no-such-task" in err
