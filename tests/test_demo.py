"""The main job's tables and speed plot (the training runs themselves are covered by the
engine's tests; `quadformer demo --quick` is the smoke test)."""

from __future__ import annotations

import argparse

import pytest

from quadformer.cli import demo
from quadformer.utils.errors import QuadformerError


def rows():
    out = []
    for task in ("glyphs", "natural-3k"):
        for fam, n, g, top1, ips, lat in (("vanilla", 64, 0.057, 9.2, 900.0, 3.1),
                                          ("quadformer (pixel-blur)", 64, 0.058, 85.4, 700.0, 4.0),
                                          ("vanilla", 256, 0.276, 84.8, 200.0, 9.0)):
            out.append({"task": task, "family": fam, "model": "m", "num_patches": n, "gmacs": g, "top1": top1,
                        "test_images": 10, "train_seconds": 1.0, "images_per_s": ips, "latency_ms": lat})
    return out


def test_tables_and_plots(tmp_path):
    args = argparse.Namespace(seed=0, task="glyphs", scorer="distilled")
    demo._write_tables(tmp_path, rows(), args)
    md = (tmp_path / "results.md").read_text()
    assert "### `natural-3k`" in md and "| quadformer (pixel-blur) | 64 | 0.0580 | 85.40 | 700.0 | 4.0 |" in md
    assert (tmp_path / "results.csv").read_text().count("\n") == 7
    demo._plots(tmp_path, rows(), args)
    for name in ("accuracy_vs_gmacs.png", "accuracy_vs_gmacs_natural.png", "accuracy_vs_speed.png"):
        assert (tmp_path / name).stat().st_size > 1000


def test_distilled_needs_its_teacher_run():
    p = argparse.ArgumentParser()
    demo.add_arguments(p)
    args = p.parse_args(["--budgets", "64", "--out", "unused", "--quick"])
    with pytest.raises(QuadformerError, match="teacher is the vanilla N=256 run"):
        demo.run(args)
