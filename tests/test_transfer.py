"""Transfer evaluation (docs/design/diverse_transfer.md §3): metrics (percent) against
scikit-learn, hand examples and the hand-written definitions they replaced, honest selection,
kNN, few-shot draws, feature cache, TASKS.yaml validation, aggregates, fine-tuning through the
engine and the CLI."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from quadformer.transfer import (
    DataRef,
    aggregate,
    fewshot_draws,
    fewshot_probe,
    get_features,
    knn_probe,
    knn_scores,
    linear_probe,
    load_tasks,
    map_voc11,
    mean_average_precision,
    mean_per_class_accuracy,
    t_interval,
    threshold_metrics,
    top1,
    validation_split,
)
from quadformer.utils.errors import QuadformerError

# ------------------------------------------------------------------------------ metrics


def test_map_equals_sklearn_without_ties():
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(0)
    for _ in range(5):
        y = (rng.random((60, 7)) < 0.3).astype(int)
        y[0] = 1  # every class has a positive
        s = rng.random((60, 7))
        assert mean_average_precision(y, s) == pytest.approx(100 * average_precision_score(y, s, average="macro"),
                                                             abs=1e-10)
        # ties: one threshold per tie group, like scikit-learn
        s = np.round(s, 1)
        assert mean_average_precision(y, s) == pytest.approx(100 * average_precision_score(y, s, average="macro"),
                                                             abs=1e-10)


def test_map_hand_example_drops_class_without_positives():
    # class a ranked: + - + - - +  -> AP = (1/1 + 2/3 + 3/6) / 3 = 13/18
    # class b ranked: + - - - - -  -> AP = 1
    # class c: no positive -> dropped and listed
    s = np.array([[0.9, 0.8, 0.1], [0.8, 0.7, 0.2], [0.7, 0.6, 0.3], [0.6, 0.5, 0.4], [0.5, 0.4, 0.5],
                  [0.4, 0.3, 0.6]])
    y = np.array([[1, 1, 0], [0, 0, 0], [1, 0, 0], [0, 0, 0], [0, 0, 0], [1, 0, 0]])
    d = mean_average_precision(y, s, class_names=["a", "b", "c"], details=True)
    assert d["dropped_classes"] == ["c"]
    assert d["per_class"] == pytest.approx({"a": 100 * 13 / 18, "b": 100.0})
    assert d["value"] == pytest.approx(100 * (13 / 18 + 1) / 2)


def test_voc11_hand_example():
    # ranks: + - + - - + ; (P, R): (1, 1/3) (1/2, 1/3) (2/3, 2/3) (1/2, 2/3) (2/5, 2/3) (1/2, 1)
    # t = 0..0.3 -> 1 (4 points); t = 0.4..0.6 -> 2/3 (3); t = 0.7..1.0 -> 1/2 (4): AP = 8/11
    s = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])[:, None]
    y = np.array([1, 0, 1, 0, 0, 1])[:, None]
    assert map_voc11(y, s) == pytest.approx(100 * 8 / 11)
    assert mean_average_precision(y, s) == pytest.approx(100 * 13 / 18)


def test_single_label_metrics_vs_sklearn_and_hand():
    from sklearn.metrics import balanced_accuracy_score

    y = np.array([0, 0, 0, 0, 1, 1, 2])
    pred = np.array([0, 0, 0, 1, 1, 0, 2])
    assert top1(y, pred) == pytest.approx(100 * 5 / 7)
    # recalls: 3/4, 1/2, 1 -> mean 3/4
    assert mean_per_class_accuracy(y, pred) == pytest.approx(75.0)
    scores = np.eye(3)[pred] + 0.01
    assert top1(y, scores) == pytest.approx(100 * 5 / 7)
    rng = np.random.default_rng(1)
    y, p = rng.integers(0, 5, 100), rng.integers(0, 5, 100)
    assert mean_per_class_accuracy(y, p) == pytest.approx(100 * balanced_accuracy_score(y, p))


def test_threshold_metrics_hand():
    y = np.array([[1, 0], [1, 1], [0, 1], [0, 0]])
    p = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.7], [0.1, 0.2]])
    m = threshold_metrics(y, p)
    # class 0: predicted {0, 2}, tp 1 -> P 1/2, R 1/2; class 1: predicted {1, 2}, tp 2 -> P 1, R 1
    assert m["CP"] == pytest.approx(75.0) and m["CR"] == pytest.approx(75.0)
    assert m["OP"] == pytest.approx(75.0) and m["OR"] == pytest.approx(75.0)
    assert m["CF1"] == pytest.approx(75.0) and m["OF1"] == pytest.approx(75.0)


# ------------------------------------------------------------------------------ linear probe


def _blobs(n_per_class: int, classes: int, dim: int, sep: float, seed: int):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)) * sep
    y = np.repeat(np.arange(classes), n_per_class)
    x = centres[y] + rng.normal(size=(len(y), dim))
    return x.astype(np.float32), y


def test_linear_probe_recovers_separable_problem():
    xtr, ytr = _blobs(40, 4, 16, 4.0, 0)
    rng = np.random.default_rng(9)
    centres = np.random.default_rng(0).normal(size=(4, 16)) * 4.0
    yte = np.repeat(np.arange(4), 25)
    xte = (centres[yte] + rng.normal(size=(len(yte), 16))).astype(np.float32)
    res = linear_probe(xtr * 50 + 7, ytr, xte * 50 + 7, yte, grid="smoke")  # standardisation handles scale
    assert res.score == 100.0 and res.metrics["mean_per_class_acc"] == 100.0
    assert res.selection["C"] in (0.01, 0.1, 1.0, 10.0)
    assert set(res.selection["val_scores"]) == {"0.01", "0.1", "1", "10"}
    json.dumps(res.to_dict())


def test_c_selection_never_looks_at_test():
    xtr, ytr = _blobs(30, 3, 8, 0.7, 1)  # overlapping: C matters
    xte, yte = _blobs(30, 3, 8, 0.7, 2)
    a = linear_probe(xtr, ytr, xte, yte, grid="full")
    shuffled = np.random.default_rng(0).permutation(yte)
    b = linear_probe(xtr, ytr, xte, shuffled, grid="full")
    c = linear_probe(xtr, ytr, xte[::-1].copy(), yte[::-1].copy(), grid="full")
    assert a.selection["C"] == b.selection["C"] == c.selection["C"]
    assert a.selection["val_scores"] == b.selection["val_scores"]
    assert a.score != b.score or a.score < 50  # test labels do change the reported score


def test_ties_go_to_smaller_c_and_validation_split_is_stratified():
    xtr, ytr = _blobs(20, 2, 4, 10.0, 3)  # trivially separable: every C scores 100 % on validation
    res = linear_probe(xtr, ytr, xtr, ytr, grid="smoke")
    assert res.selection["C"] == 0.01
    tr, va = validation_split(np.repeat(np.arange(4), [8, 8, 4, 1]), 0.25, seed=0)
    y = np.repeat(np.arange(4), [8, 8, 4, 1])
    assert np.bincount(y[va], minlength=4).tolist() == [2, 2, 1, 0]
    assert len(np.intersect1d(tr, va)) == 0 and len(tr) + len(va) == len(y)


def test_own_lbfgs_matches_sklearn_logistic_regression():
    """Same objective as LogisticRegression (multinomial / one-vs-rest, L2, L-BFGS): with a tight
    tolerance both reach the same optimum; at the default tolerance they agree closely."""
    from quadformer.transfer.probes import Standardiser, _Fitter

    xtr, ytr = _blobs(30, 3, 6, 1.0, 4)
    xs = Standardiser.fit(xtr)(xtr)
    yml = (np.random.default_rng(0).random((90, 3)) < 0.4).astype(np.float32)
    xml = Standardiser.fit(xtr + yml @ np.ones((3, 6)))(xtr + yml @ np.ones((3, 6)))
    for x, y, ml in ((xs, ytr, False), (xml, yml, True)):
        for C in (0.01, 1.0, 100.0):
            for tol, atol in ((1e-9, 1e-5), (1e-4, 5e-2)):
                wa, ba, _ = _Fitter(x, y, ml, 3, 1000, tol=tol).fit(C)
                wb, bb, _ = _Fitter(x, y, ml, 3, 1000, tol=tol, solver="sklearn").fit(C)
                za, zb = x @ wa.T + ba, x @ wb.T + bb
                if not ml:  # softmax logits are defined up to a per-row constant
                    za, zb = za - za.mean(1, keepdims=True), zb - zb.mean(1, keepdims=True)
                np.testing.assert_allclose(za, zb, atol=atol, err_msg=f"C={C} tol={tol} multilabel={ml}")


def test_multilabel_probe_and_lp_head_mapping():
    rng = np.random.default_rng(5)
    y = (rng.random((200, 4)) < 0.4).astype(np.float32)
    y[:, 3] = 0  # no positive anywhere: constant, dropped from mAP
    x = y @ rng.normal(size=(4, 10)) * 3 + rng.normal(size=(200, 10))
    res = linear_probe(x[:120], y[:120], x[120:], y[120:], multilabel=True, grid="smoke",
                       class_names=["a", "b", "c", "d"])
    assert res.metrics["dropped_classes"] == ["d"] and res.score > 90
    assert {"map", "map_voc11", "CP", "OF1"} <= set(res.metrics)
    w, b = res.probe.raw_space()
    np.testing.assert_allclose(x[120:] @ w.T + b, res.probe.decision(x[120:]), rtol=1e-9, atol=1e-9)


# ------------------------------------------------------------------------------ kNN


def test_knn_tiny_known_example():
    t = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    y = np.array([0, 1, 1])
    q = np.array([[1.0, 0.1]])
    sims = (t / np.linalg.norm(t, axis=1, keepdims=True)) @ (q[0] / np.linalg.norm(q[0]))
    out = knn_scores(t, y, q, ks=[1, 2, 200])
    assert sorted(out) == [1, 2, 3]  # k capped at the 3 reference points
    np.testing.assert_allclose(out[1][0], [math.exp(sims[0] / 0.07), 0.0])
    np.testing.assert_allclose(out[2][0], [math.exp(sims[0] / 0.07), math.exp(sims[2] / 0.07)])
    e = np.exp(sims / 0.07)
    np.testing.assert_allclose(out[3][0], [e[0], e[1] + e[2]])
    # multi-label: the weighted average of the neighbours' label vectors
    yml = np.array([[1, 0], [0, 1], [1, 1]], dtype=float)
    w = np.exp(sims / 0.07)
    np.testing.assert_allclose(knn_scores(t, yml, q, [3], multilabel=True)[3][0], (w @ yml) / w.sum())


def test_knn_probe_reports_every_k():
    x, y = _blobs(40, 3, 8, 3.0, 6)
    test = np.arange(len(y)) % 4 == 0
    xtr, ytr, xte, yte = x[~test], y[~test], x[test], y[test]
    res = knn_probe(xtr, ytr, xte, yte)
    assert set(res.metrics["per_k"]) == {"10", "20", "200"}
    assert res.metrics["per_k"]["200"]["k_used"] == 90
    assert res.selection["k"] in (10, 20, 200) and res.score > 90


# ------------------------------------------------------------------------------ few-shot


def test_fewshot_draws_shared_and_exact():
    y = np.repeat(np.arange(5), 12)
    np.random.default_rng(0).shuffle(y)
    draws = fewshot_draws(y, 5, n_draws=20, seed=3)
    assert len(draws) == 20 and len({d.tobytes() for d in draws}) == 20
    for d in draws:
        assert np.bincount(y[d], minlength=5).tolist() == [5] * 5
    again = fewshot_draws(y, 5, n_draws=20, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(draws, again))
    with pytest.raises(ValueError, match="classes"):
        fewshot_draws(y, 13)
    # two "models" (different features) see the very same draws
    xa, _ = _blobs(12, 5, 6, 2.0, 8)
    xb = np.random.default_rng(1).normal(size=xa.shape)
    ya = np.repeat(np.arange(5), 12)
    ra = fewshot_probe(xa, ya, xa, ya, shots=(1, 5), n_draws=20, grid="smoke")
    rb = fewshot_probe(xb, ya, xb, ya, shots=(1, 5), n_draws=20, grid="smoke")
    for k in ("1", "5"):
        assert ra.metrics["per_shots"][k]["draws_digest"] == rb.metrics["per_shots"][k]["draws_digest"]
        assert len(ra.metrics["per_shots"][k]["draws_top1"]) == 20
    assert ra.metrics["per_shots"]["1"]["C_selection"] == "fixed"
    assert ra.metrics["per_shots"]["5"]["C_selection"] == "nested validation"
    ci = ra.metrics["per_shots"]["5"]["top1"]
    assert ci["ci_low"] <= ci["mean"] <= ci["ci_high"] and ra.score == ci["mean"]


def test_t_interval():
    from scipy import stats

    v = [0.5, 0.6, 0.7, 0.8]
    ci = t_interval(v)
    half = stats.t.ppf(0.975, 3) * np.std(v, ddof=1) / 2
    assert ci["mean"] == pytest.approx(0.65) and ci["ci_high"] - ci["mean"] == pytest.approx(half)


# ------------------------------------------------------------------------------ features / cache


class CountingNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(12, 5)
        self.calls = 0

    def forward_features(self, x):
        self.calls += 1
        return self.proj(x.flatten(1))

    def forward_head(self, x, pre_logits=False):
        return x


def _tensor_dataset(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    ds = TensorDataset(torch.randn(n, 3, 2, 2, generator=g), torch.arange(n) % 3)
    ds.num_classes, ds.multilabel, ds.class_names = 3, False, ["a", "b", "c"]
    return ds


def test_feature_cache_hit_does_not_run_the_model(tmp_path):
    net = CountingNet()
    ds = _tensor_dataset(10, 0)
    ref = DataRef("tensor:test", "train", 2, size=10)
    a = get_features(net, "digest-1", ref, dataset=ds, cache_dir=tmp_path, batch_size=4)
    assert net.calls == 3 and not a.from_cache and a.features.shape == (10, 5)
    net.calls = 0
    b = get_features(net, "digest-1", ref, dataset=ds, cache_dir=tmp_path)
    assert net.calls == 0 and b.from_cache
    np.testing.assert_array_equal(a.features, b.features)
    np.testing.assert_array_equal(a.targets, b.targets)
    assert b.class_names == ["a", "b", "c"] and b.num_classes == 3
    # another digest, image size or split is another key
    get_features(net, "digest-2", ref, dataset=ds, cache_dir=tmp_path)
    get_features(net, "digest-1", DataRef("tensor:test", "train", 4, size=10), dataset=ds, cache_dir=tmp_path)
    assert net.calls == 2  # one batch each
    assert len(list(tmp_path.glob("*.npz"))) == 3


def test_features_from_builtin_data_in_eval_mode(tmp_path):
    import timm

    import quadformer.models  # noqa: F401

    torch.manual_seed(0)
    model = timm.create_model("uniform_vit_micro_patch4_32", num_classes=0, embed_dim=32, depth=1, num_heads=2)
    model.train()
    ref = DataRef("builtin:digits", "test", 32, size=12)
    fs = get_features(model, "init:tiny", ref, cache_dir=tmp_path, batch_size=8)
    assert model.training  # mode restored
    assert fs.features.shape == (12, 32) and fs.targets.shape == (12,) and fs.num_classes == 10
    again = get_features(model, "init:tiny", ref, cache_dir=None)
    np.testing.assert_allclose(fs.features, again.features, atol=1e-5)  # eval mode: deterministic


# ------------------------------------------------------------------------------ tasks


def test_tasks_yaml_validation(tmp_path):
    (tmp_path / "data" / "train" / "cat").mkdir(parents=True)
    good = tmp_path / "good.yaml"
    good.write_text("tasks:\n  - {name: pets, train: 'imagefolder:data', split_test: train, split_train: train, "
                    "test: 'imagefolder:data', size: 50}\n  - {name: d, train: 'builtin:digits', size: 20}\n")
    with pytest.raises(QuadformerError, match="same split"):
        load_tasks(good)
    good.write_text("tasks:\n  - {name: pets, train: 'imagefolder:data', test: 'imagefolder:data', "
                    "split_test: train, train_size: 50}\n  - {name: d, train: 'builtin:digits', size: 20}\n")
    with pytest.raises(QuadformerError) as e:
        load_tasks(good)  # split_train defaults to train, test would read data/train too: the same split
    good.write_text("tasks:\n  - {name: d, train: 'builtin:digits', size: 20}\n"
                    "  - {name: pets, train: 'imagefolder:data', split_test: val2}\n")
    with pytest.raises(QuadformerError) as e:
        load_tasks(good)
    msg = str(e.value)
    assert "\n" not in msg and "folder not found" in msg and str(tmp_path / "data" / "val2") in msg

    (tmp_path / "data" / "val2" / "cat").mkdir(parents=True)
    tasks = load_tasks(good)
    assert [t.name for t in tasks] == ["d", "pets"] and tasks[0].train_size == 20 == tasks[0].test_size
    assert tasks[1].train == f"imagefolder:{(tmp_path / 'data').as_posix()}"

    bad = tmp_path / "bad.yaml"
    bad.write_text("tasks:\n  - {name: x, train: 'builtin:digits', splt_test: val, sise: 3}\n")
    with pytest.raises(QuadformerError) as e:
        load_tasks(bad)
    msg = str(e.value)
    assert "'sise'" in msg and "'splt_test'" in msg and "valid keys: name, train, test, split_train" in msg

    bad.write_text("tasks:\n  - {name: x, train: 'builtin:nope'}\n  - {name: x, train: 'imagefolder:/no/such/dir'}\n")
    with pytest.raises(QuadformerError) as e:
        load_tasks(bad)
    msg = str(e.value)
    assert "unknown built-in task 'nope'" in msg and "duplicate task name 'x'" in msg and "/no/such/dir" in msg
    with pytest.raises(QuadformerError, match="not a file"):
        load_tasks(tmp_path / "missing.yaml")


def test_builtin_task_list():
    tasks = load_tasks("builtin")
    assert len(tasks) >= 4 and any(t.multilabel for t in tasks) and any(t.multilabel is False for t in tasks)


# ------------------------------------------------------------------------------ aggregate


def test_aggregate_hand_example():
    scores = {"A": {"t1": 50.0, "t2": 90.0}, "B": {"t1": 70.0, "t2": 90.0}, "C": {"t1": 100.0, "t2": 60.0, "t3": 20.0}}
    agg = aggregate(scores)
    assert agg["headline"] == "logit_mean" and agg["tasks"] == ["t1", "t2"] and agg["excluded_tasks"] == ["t3"]
    A, B, C = (agg["models"][m] for m in "ABC")
    lg = lambda p: math.log(p / (1 - p))  # noqa: E731
    assert A["logit_mean"] == pytest.approx((0 + lg(0.9)) / 2)
    assert C["logit_mean"] == pytest.approx((lg(1 - 1e-4) + lg(0.6)) / 2)  # 1.0 clipped
    # ranks t1: C 1, B 2, A 3; t2: A/B tie 1.5, C 3
    assert (A["mean_rank"], B["mean_rank"], C["mean_rank"]) == (2.25, 1.75, 2.0)
    assert A["logit_mean_percent"] == pytest.approx(100 / (1 + math.exp(-A["logit_mean"])))
    assert A["mean"] == pytest.approx(70.0) and C["mean"] == pytest.approx(80.0)
    # z-scores t1: mean 73.33, sd pop; t2: mean 80
    t1 = np.array([50.0, 70.0, 100.0])
    t2 = np.array([90.0, 90.0, 60.0])
    z = ((t1 - t1.mean()) / t1.std() + (t2 - t2.mean()) / t2.std()) / 2
    assert [A["z_mean"], B["z_mean"], C["z_mean"]] == pytest.approx(z.tolist())


# ------------------------------------------------------------------------------ fine-tuning and CLI


def _tiny_vit():
    import timm

    import quadformer.models  # noqa: F401

    torch.manual_seed(0)
    return timm.create_model("uniform_vit_micro_patch4_32", num_classes=0, embed_dim=32, depth=1, num_heads=2)


def test_finetune_through_engine_with_lp_ft(tmp_path):
    import inspect

    from quadformer.data import build_dataset
    from quadformer.train import engine
    from quadformer.transfer import FinetuneOptions, finetune

    if "model" not in inspect.signature(engine.train).parameters:
        pytest.skip("the engine does not take model= / data= yet")
    model = _tiny_vit()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_set = build_dataset("builtin:digits", "train", 32, size=64)
    test_set = build_dataset("builtin:digits", "test", 32, size=32)
    ref = DataRef("builtin:digits", "train", 32, size=64)
    feats = get_features(model, "init:tiny", ref, dataset=train_set).features
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opts = FinetuneOptions(lrs=(1e-4, 3e-4, 1e-3, 3e-3), epochs=1, batch_size=16, lp_ft=True, work_dir=tmp_path)
        res = finetune(model, train_set, test_set, num_classes=10, train_features=feats, options=opts)
    assert res.protocol == "lp-ft" and 0.0 <= res.score <= 100.0 and res.n_test == 32
    assert set(res.selection["val_scores"]) == {"0.0001", "0.0003", "0.001", "0.003"}
    assert res.selection["lr"] in (1e-4, 3e-4, 1e-3, 3e-3)
    edge = res.selection["lr"] in (1e-4, 3e-3)
    assert edge == any("edge of the grid" in str(w.message) for w in caught)
    for k, v in model.state_dict().items():  # the caller's model is never modified
        assert torch.equal(v, before[k]), k


def test_cli_linear_and_knn_on_yaml_tasks(tmp_path, capsys):
    import argparse

    from quadformer.cli import transfer_cmd

    tasks = tmp_path / "TASKS.yaml"
    tasks.write_text("tasks:\n  - {name: digits, train: 'builtin:digits', train_size: 60, test_size: 30}\n"
                     "  - {name: shapes, train: 'builtin:lines-multi', train_size: 60, test_size: 30}\n")
    p = argparse.ArgumentParser()
    transfer_cmd.add_arguments(p)
    argv = ["uniform_vit_micro_patch4_32", "--tasks", str(tasks), "--protocol", "linear", "knn", "fewshot",
            "--grid", "smoke", "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out"),
            "--no-progress", "--device", "cpu", "--shots", "1", "--draws", "20"]
    assert transfer_cmd.run(p.parse_args(argv)) == 0
    out = tmp_path / "out"
    assert (out / "results.csv").exists() and (out / "aggregate_linear.json").exists()
    doc = json.loads((out / "linear" / "uniform_vit_micro_patch4_32" / "shapes.json").read_text())
    assert doc["result"]["multilabel"] and doc["model"]["digest"] == "init:uniform_vit_micro_patch4_32:0"
    agg = json.loads((out / "aggregate_knn.json").read_text())
    assert agg["headline"] == "logit_mean" and agg["tasks"] == ["digits", "shapes"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped"][0]["task"] == "shapes"  # few-shot: single-label only
    # second run: every feature from the cache
    assert transfer_cmd.run(p.parse_args(argv)) == 0
    rows = (out / "results.csv").read_text().splitlines()
    assert len(rows) == 1 + 5 and all(r.split(",")[-2] == "True" for r in rows[1:])
    assert "features_cached" == rows[0].split(",")[-2]
    assert "headline: logit_mean" in capsys.readouterr().out


def test_cli_label_sets_and_wrong_checkpoint_fail_before_work(tmp_path, capsys):
    """A test CSV with a class train never saw, and a file that is no checkpoint: one line, rc 2."""
    from PIL import Image

    from quadformer.cli.main import main

    for name in ("a.png", "b.png"):
        Image.new("RGB", (8, 8), (10, 20, 30)).save(tmp_path / name)
    (tmp_path / "train.csv").write_text("path,labels\na.png,cat\nb.png,dog\n")
    (tmp_path / "test.csv").write_text("path,labels\na.png,cat;zebra\nb.png,dog\n")
    (tmp_path / "tasks.yaml").write_text("tasks:\n  - name: pets\n    train: csv:train.csv\n    test: csv:test.csv\n"
                                         "    split_train: all\n    split_test: all\n")
    rc = main(["transfer", "uniform_vit_nano_patch4_32", "--tasks", str(tmp_path / "tasks.yaml"), "--no-progress",
               "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "zebra" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()  # nothing was started
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    rc = main(["transfer", str(tmp_path / "junk.pt"), "--tasks", "builtin", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "junk.pt" in err and len(err.splitlines()) == 1, err


# ------------------------------------------------------------------------------ library equals


def _random_multilabel(rng, n, c, ties):
    y = (rng.random((n, c)) < rng.uniform(0.1, 0.6)).astype(float)
    s = rng.normal(size=(n, c))
    return y, (np.round(s, 1) if ties else s)


@pytest.mark.parametrize("ties", [False, True])
def test_library_metrics_equal_the_hand_written_ones(ties):
    """sklearn's AP / precision-recall curve / precision_recall_fscore_support give what the
    hand-written definitions gave (to 1e-12, in percent), ties and single columns included."""
    from tests import reference_impls as ref

    rng = np.random.default_rng(3)
    for _ in range(40):
        y, s = _random_multilabel(rng, int(rng.integers(2, 50)), int(rng.integers(1, 7)), ties)
        d = mean_average_precision(y, s, details=True)
        old = [ref.average_precision(y[:, c], s[:, c]) for c in range(y.shape[1])]
        assert [str(c) for c, v in enumerate(old) if math.isnan(v)] == d["dropped_classes"]
        for c, v in enumerate(old):
            if not math.isnan(v):
                assert d["per_class"][str(c)] == pytest.approx(100 * v, abs=1e-12)
        v11 = map_voc11(y, s, details=True)
        for c in range(y.shape[1]):
            o = ref.voc11(y[:, c], s[:, c])
            if not math.isnan(o):
                assert v11["per_class"][str(c)] == pytest.approx(100 * o, abs=1e-12)
        p = 1 / (1 + np.exp(-s))
        new, old_t = threshold_metrics(y, p), ref.threshold_metrics(y, p)
        assert new == pytest.approx({k: 100 * v for k, v in old_t.items()}, abs=1e-12)


def test_standardiser_and_t_interval_equal_the_hand_written_ones():
    from quadformer.transfer.probes import Standardiser
    from tests import reference_impls as ref

    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 6)) * rng.uniform(0.1, 100, 6) + rng.normal(size=6) * 10
    x[:, 2] = 3.0  # constant: scale 1
    st, (mean, scale) = Standardiser.fit(x), ref.standardise_stats(x)
    np.testing.assert_allclose(st.mean, mean, rtol=0, atol=1e-12)
    np.testing.assert_allclose(st.scale, scale, rtol=1e-12, atol=0)
    for v in ([0.5, 0.6, 0.7, 0.8], rng.normal(size=20).tolist(), [2.0, 2.0, 2.0], [1.0]):
        assert t_interval(v) == pytest.approx(ref.t_interval(v), abs=1e-12)


def test_untrained_class_is_left_out_of_map_and_listed():
    """Issue 12: a multi-label test class without a training positive says nothing about the
    features; it is left out of mAP and named, instead of pulling the mean around."""
    rng = np.random.default_rng(5)
    y = (rng.random((200, 3)) < 0.4).astype(np.float32)
    x = y @ rng.normal(size=(3, 10)) * 3 + rng.normal(size=(200, 10))
    ytr = y[:120].copy()
    ytr[:, 2] = 0  # class c: positives only in test
    for res in (linear_probe(x[:120], ytr, x[120:], y[120:], multilabel=True, grid="smoke", class_names=list("abc")),
                knn_probe(x[:120], ytr, x[120:], y[120:], multilabel=True, class_names=list("abc"))):
        assert res.metrics["untrained_classes"] == ["c"] and res.metrics["dropped_classes"] == []
        assert set(res.metrics["ap_per_class"]) == {"a", "b"}
        assert res.score == pytest.approx(np.mean(list(res.metrics["ap_per_class"].values())))


@pytest.mark.parametrize("argv, needle", [
    (["--batch-size", "0"], "--batch-size"), (["--draws", "0"], "--draws"), (["--epochs", "-1"], "--epochs"),
    (["--knn-k", "0"], "--knn-k"), (["--shots", "1", "0"], "--shots"), (["--fewshot-c", "0"], "--fewshot-c"),
    (["--lrs", "1e-3,-1"], "--lrs"), (["--weight-decay", "-0.1"], "--weight-decay"),
    (["--image-size", "4"], "--image-size"), (["--seed", "-1"], "--seed"), (["--threads", "0"], "--threads"),
    (["--ft-batch-size", "x"], "--ft-batch-size"),
])
def test_cli_bad_numbers_are_one_line(argv, needle, capsys, tmp_path):
    from quadformer.cli.main import main

    with pytest.raises(SystemExit) as e:
        main(["transfer", "resnet10t", "--out", str(tmp_path / "out"), *argv])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and needle in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_label_spaces_are_judged_by_class_names_for_builtin_tasks_too(tmp_path):
    from quadformer.transfer import check_label_spaces

    f = tmp_path / "t.yaml"
    f.write_text("tasks:\n  - {name: same, train: 'builtin:sk-digits', test: 'builtin:sk-digits-hard'}\n")
    check_label_spaces(load_tasks(f))  # one class list, another difficulty: fine
    f.write_text("tasks:\n  - {name: mixed, train: 'builtin:digits', test: 'builtin:dice'}\n")
    with pytest.raises(QuadformerError, match="'mixed': train and test label sets differ"):
        check_label_spaces(load_tasks(f))


def test_cli_cache_dir_that_is_a_file_is_one_line(tmp_path, capsys):
    from quadformer.cli.main import main

    (tmp_path / "file").write_text("x")
    rc = main(["transfer", "resnet10t", "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "file" / "c"),
               "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "--cache-dir" in err and len(err.splitlines()) == 1, err
