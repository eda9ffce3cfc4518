"""The study's statistics against textbook values, its report, and a tiny end-to-end run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from quadformer.study.analysis import (bootstrap, metric_analysis, ols, design, paired_contrast, partial_corr,
                                       regression)
from quadformer.study.report import add_aggregates, h3_target, write_report


def test_partial_correlation_matches_the_recursive_formula():
    rng = np.random.default_rng(0)
    a = rng.normal(size=200)
    d = 0.6 * a + rng.normal(size=200)
    t = 0.5 * a + 0.4 * d + rng.normal(size=200)
    r = np.corrcoef([d, t, a])
    r_dt, r_da, r_ta = r[0, 1], r[0, 2], r[1, 2]
    expected = (r_dt - r_da * r_ta) / np.sqrt((1 - r_da**2) * (1 - r_ta**2))
    assert partial_corr(d, t, a) == pytest.approx(expected, abs=1e-10)
    # D that only mirrors A explains nothing beyond it
    assert abs(partial_corr(a + 1e-3 * rng.normal(size=200), 0.5 * a + rng.normal(size=200), a)) < 0.2


def test_ols_r2_and_delta_r2():
    rng = np.random.default_rng(1)
    a, d = rng.normal(size=500), rng.normal(size=500)
    t = 2 * a + 1 * d  # exact: R^2(A + D) = 1, R^2(A) = 4/5
    res = regression(t, a, d)
    assert res["r2_A_D"] == pytest.approx(1.0, abs=1e-9)
    assert res["r2_A"] == pytest.approx(np.corrcoef(t, a)[0, 1] ** 2, abs=1e-9)
    assert res["delta_r2"] == pytest.approx(res["r2_A_D"] - res["r2_A"])
    beta, r2 = ols(t, design(a, d))
    assert beta[2] > 0 and r2 == pytest.approx(1.0)


def test_bootstrap_interval_and_paired_contrast():
    x = np.arange(100, dtype=float)
    lo, hi, vals = bootstrap(lambda ix: float(x[ix].mean()), 100, resamples=500, seed=0)
    assert lo < 49.5 < hi and hi - lo < 25 and len(vals) == 500
    assert bootstrap(lambda ix: float(x[ix].mean()), 100, 200, seed=3)[:2] == bootstrap(
        lambda ix: float(x[ix].mean()), 100, 200, seed=3)[:2]
    c = paired_contrast({0: 1.0, 1: 2.0, 2: 3.0}, {0: 0.5, 1: 2.5, 2: 1.0, 3: 9.0})
    assert c["n"] == 3 and c["mean"] == pytest.approx((0.5 - 0.5 + 2.0) / 3) and c["positive"] == 2
    assert c["min"] == -0.5 and c["max"] == 2.0 and c["ci_low"] < c["mean"] < c["ci_high"]


def _rows(seed: int = 0) -> list[dict]:
    """A synthetic population where transfer follows A1 beyond accuracy (scores in percent)."""
    rng = np.random.default_rng(seed)
    rows = []
    for cond in ("sup", "sup_kd", "ssl", "ssl_sup", "ssl_sup_kd"):
        for s in range(5):
            acc = rng.uniform(50, 80)
            a1 = rng.uniform(0.1, 0.5) + (0.2 if cond.startswith("ssl") else 0.0)
            r = {"arch": "vit", "condition": cond, "seed": s, "up_lp": acc, "up_acc": acc, "W1": rng.uniform(),
                 "W2": rng.uniform(), "A1": a1, "A2": rng.uniform(), "A3": rng.uniform(),
                 "multilabel_tasks": ["scenes"]}
            for t in ("digits", "patches", "hue", "scenes"):
                r[f"T_{t}"] = float(np.clip(0.3 * acc + 80 * a1 + rng.normal(0, 2), 0, 100))
            rows.append(r)
    return rows


def test_report_finds_a_planted_effect(tmp_path):
    rows = _rows()
    base = [r for r in rows if r["condition"] == "ssl_sup"]
    rows += [dict(r, condition=f"traj{k}", step=10 * k, up_lp=r["up_lp"] * k / 3) for r in base for k in (1, 2, 3)]
    analysis = write_report(rows, tmp_path, "synthetic", {"note": "test"}, resamples=300)
    h4 = analysis["h4"]
    assert h4["A1"]["partial_r"] > 0.8 and h4["A1"]["partial_r_ci_low"] > 0.5 and h4["A1"]["holds"]
    assert abs(h4["W1"]["partial_r"]) < 0.5 and not h4["W1"]["target_met"]
    won = {h["contrast"]: h for h in analysis["h3"]}
    assert won["ssl_sup vs sup"]["share_won"] == 1.0 and won["ssl_sup vs sup"]["A1_diff"] > 0
    text = (tmp_path / "report_synthetic.md").read_text()
    assert "| A1 |" in text and "ssl_sup-sup" in text
    assert h4["A1"]["n_models"] == 25  # trajectory points are not extra models
    assert (tmp_path / "transfer_vs_accuracy_synthetic.png").stat().st_size > 10_000
    assert (tmp_path / "trajectory_synthetic.png").stat().st_size > 10_000
    assert (tmp_path / "results_synthetic.csv").read_text().count("\n") == len(rows) + 1


def test_pooled_report_pairs_within_architecture_and_plots_gmacs(tmp_path):
    from quadformer.study.report import contrasts, write_pooled_report

    vit = [dict(r, gmacs=0.015) for r in _rows(0)]
    quad = [dict(r, arch="quadformer", gmacs=0.006, A1=r["A1"] + 1.0) for r in _rows(1)]  # an architecture offset
    con = contrasts(vit + quad, [("ssl", "sup")], ["A1"])["ssl-sup"]["A1"]
    assert con["n"] == 10  # 5 seeds x 2 architectures, never a vit model against a quadformer one
    assert abs(con["mean"] - 0.2) < 0.15
    analysis = write_pooled_report(vit + quad, tmp_path, "both", resamples=200)
    # the +1.0 A1 offset of one architecture is absorbed by its fixed effect: the planted effect remains
    assert analysis["h4"]["A1"]["partial_r"] > 0.8
    text = (tmp_path / "report_both.md").read_text()
    assert "## vit" in text and "## quadformer" in text and "| 15.000" in text and "| 6.000" in text
    assert (tmp_path / "accuracy_vs_gmacs_both.png").stat().st_size > 10_000


def test_aggregates_are_logit_means():
    rows = [{"condition": "sup", "seed": 0, "T_a": 50.0, "T_b": 50.0, "multilabel_tasks": []},
            {"condition": "ssl", "seed": 0, "T_a": 90.0, "T_b": 10.0, "multilabel_tasks": ["b"]}]
    add_aggregates(rows)
    assert rows[0]["T_agg"] == pytest.approx(0.0) and rows[1]["T_agg"] == pytest.approx(0.0)
    assert rows[1]["T_single"] == pytest.approx(np.log(9))
    assert h3_target(rows, ["a"]) == []  # no ssl_sup / ssl_sup_kd: nothing to check


@pytest.mark.slow
def test_tiny_study_end_to_end(tmp_path):
    from quadformer.study import Study, StudyConfig

    sc = StudyConfig.quick(seeds=1, conditions=("sup", "ssl", "ssl_sup"), train_size=128, val_size=64,
                           upstream_probe_train=128, diversity_images=64, sup_epochs=1, ssl_epochs=1,
                           trajectory_points=2)
    study = Study(sc, tmp_path)
    rows = study.run()
    assert [r["condition"] for r in rows] == ["rand", "sup", "ssl", "ssl_sup", "traj1", "traj2"]
    assert rows[-1]["step"] == 2 and rows[-2]["step"] == 1  # 2 steps of 64 images, snapshots at both
    assert all(0 <= r["T_sk-digits"] <= 100 and r["A1"] > 0 for r in rows)
    again = Study(sc, tmp_path).run()  # everything cached: same numbers
    assert json.dumps(again, sort_keys=True) == json.dumps(rows, sort_keys=True)


def test_file_lock_is_exclusive_and_released(tmp_path):
    from quadformer.utils.io import file_lock

    path = tmp_path / "x.lock"
    with file_lock(path) as held:
        assert held
        with file_lock(path, blocking=False) as other:  # a second open file: another holder
            assert not other
    with file_lock(path, blocking=False) as again:
        assert again


def test_study_skips_seeds_another_process_holds_then_waits_for_them(tmp_path, monkeypatch):
    """Two processes on one study folder split the seeds: a held seed is done last, after its lock is freed."""
    import threading

    from quadformer.study import Study, StudyConfig
    from quadformer.utils.io import file_lock

    study = Study(StudyConfig(seeds=3, conditions=("sup",)), tmp_path)
    order: list[int] = []

    def fake_seed(seed, teacher, bar):
        order.append(seed)
        if seed == 2:
            release.set()
        return [{"seed": seed}]

    monkeypatch.setattr(study, "_run_seed", fake_seed)
    release, holding = threading.Event(), threading.Event()

    def other_process():
        with file_lock(tmp_path / ".locks" / "vit_seed0.lock"):
            holding.set()
            release.wait(10)

    t = threading.Thread(target=other_process)
    t.start()
    holding.wait(10)
    rows = study.run()
    t.join()
    assert order == [1, 2, 0]
    assert [r["seed"] for r in rows] == [0, 1, 2]


@pytest.mark.parametrize("argv, needle", [
    (["--resamples", "0"], "--resamples"), (["--resamples", "-5"], "--resamples"), (["--seeds", "0"], "--seeds"),
    (["--seeds", "2", "3"], "--seeds"), (["--threads", "0"], "--threads"), (["--resamples", "many"], "--resamples"),
])
def test_study_cli_bad_numbers_are_one_line(argv, needle, capsys, tmp_path):
    """Issue 12: ``study --resamples 0`` used to run and report NaN intervals."""
    from quadformer.cli.main import main

    try:
        rc = main(["study", "diversity-transfer", "--out", str(tmp_path / "out"), *argv])
    except SystemExit as e:  # argparse
        rc = e.code
    err = capsys.readouterr().err.strip()
    assert rc == 2 and needle in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_study_settings_are_judged():
    from quadformer.study import Study, StudyConfig
    from quadformer.utils.errors import QuadformerError

    with pytest.raises(QuadformerError, match="seeds=0"):
        Study(StudyConfig(seeds=0), "unused")
    with pytest.raises(QuadformerError, match="lr=-1"):
        Study(StudyConfig(lr=-1.0), "unused")


def test_library_statistics_equal_the_hand_written_ones():
    """scipy.stats.bootstrap (percentile, default_rng(seed)) draws the same resamples as the
    hand-written loop and gives its interval; the paired t-interval is scipy's too."""
    from tests import reference_impls as ref

    x = np.random.default_rng(1).normal(size=40)
    for seed in (0, 7):
        new, old = bootstrap(lambda ix: float(x[ix].mean()), 40, 300, seed), ref.bootstrap(
            lambda ix: float(x[ix].mean()), 40, 300, seed)
        assert new[:2] == pytest.approx(old[:2], abs=1e-12)
        np.testing.assert_allclose(new[2], old[2], rtol=0, atol=1e-12)
    c = paired_contrast({0: 1.0, 1: 2.0, 2: 3.5}, {0: 0.5, 1: 2.5, 2: 1.0})
    lo, hi = ref.paired_ci(np.array([0.5, -0.5, 2.5]))
    assert (c["ci_low"], c["ci_high"]) == pytest.approx((lo, hi), abs=1e-12)


def test_file_lock_equals_the_fcntl_one_and_is_freed_when_its_holder_is_killed(tmp_path):
    """filelock and the hand-written fcntl lock exclude each other (same OS lock), and a holder
    killed with SIGKILL releases it."""
    import subprocess
    import sys
    import time

    from quadformer.utils.io import file_lock
    from tests import reference_impls as ref

    path = tmp_path / "x.lock"
    with file_lock(path):
        with ref.fcntl_lock(path, blocking=False) as other:
            assert not other
    import quadformer.utils.io as qio

    # the child loads utils/io.py alone (no torch import: fast)
    code = ("import importlib.util, sys, time\n"
            "spec = importlib.util.spec_from_file_location('qio', sys.argv[2])\n"
            "m = importlib.util.module_from_spec(spec)\nspec.loader.exec_module(m)\n"
            "with m.file_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path), qio.__file__], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with file_lock(path, blocking=False) as held:
            assert not held
    finally:
        proc.kill()
        proc.wait()
    for _ in range(50):
        with file_lock(path, blocking=False) as held:
            if held:
                break
        time.sleep(0.05)
    assert held


def test_measurements_cached_as_fractions_are_read_in_percent():
    from quadformer.study.diversity_transfer import in_percent

    old = {"condition": "sup", "up_lp": 0.5, "up_acc": None, "T_digits": 0.25, "A1": 0.3}
    new = in_percent(old)
    assert new == {"condition": "sup", "up_lp": 50.0, "up_acc": None, "T_digits": 25.0, "A1": 0.3, "unit": "percent"}
    assert in_percent(new) == new
