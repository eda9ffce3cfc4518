"""The CLI shell: which errors become one line, the shared options, `eval` and `predict`."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from quadformer.cli import eval_cmd, train_cmd
from quadformer.cli.main import main
from quadformer.utils.errors import QuadformerError

MICRO = ["model.name=quadformer_micro_patch4_32", "model.kwargs={embed_dim: 32, depth: 2, num_heads: 2}",
         "model.num_patches=16", "data.image_size=32", "data.train=builtin:glyphs", "data.train_size=32",
         "data.val_size=16", "data.batch_size=16", "train.epochs=1", "train.progress=false",
         "output.tensorboard=false"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "--out", str(out), *MICRO, "train.ema_decay=0.5"]) == 0
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (40 + i, 50, 3), dtype=np.uint8)).save(d / f"img{i}.png")
    (d / "sub").mkdir()
    Image.fromarray(rng.integers(0, 255, (36, 36), dtype=np.uint8)).save(d / "sub" / "gray.jpg")
    (d / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (d / "notes.txt").write_text("not an image, not picked up")
    return d


def _one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    assert "Traceback" not in err
    return lines[0]


# -- errors ------------------------------------------------------------------------------------


def test_a_bug_keeps_its_traceback(monkeypatch):
    def broken(args):
        raise KeyError("config")  # a bug, not the user's mistake

    monkeypatch.setattr(eval_cmd, "run", broken)
    with pytest.raises(KeyError):
        main(["eval", "vit_tiny_patch16_224"])


@pytest.mark.parametrize("exc", [ValueError("bad"), TypeError("bad"), FileNotFoundError("no filename given")])
def test_other_exceptions_are_bugs(monkeypatch, exc):
    monkeypatch.setattr(eval_cmd, "run", lambda args: (_ for _ in ()).throw(exc))
    with pytest.raises(type(exc)):
        main(["eval", "x"])


def test_quadformer_error_is_one_line(monkeypatch, capsys):
    def bad(args):
        raise QuadformerError("--foo 3 is odd\n(use an even number)")

    monkeypatch.setattr(eval_cmd, "run", bad)
    assert main(["eval", "x"]) == 2
    assert _one_line(capsys.readouterr().err) == "quadformer eval: error: --foo 3 is odd (use an even number)"
    with pytest.raises(QuadformerError):
        main(["--debug", "eval", "x"])


def test_os_error_on_a_path_is_one_line(monkeypatch, capsys):
    monkeypatch.setattr(eval_cmd, "run", lambda a: (_ for _ in ()).throw(NotADirectoryError(20, "Not a directory",
                                                                                           "/some/file/out")))
    assert main(["eval", "x"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("quadformer eval: error: Not a directory: /some/file/out")


def test_ctrl_c_exits_130(monkeypatch, capsys):
    monkeypatch.setattr(eval_cmd, "run", lambda a: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert main(["eval", "x"]) == 130
    assert "interrupted" in _one_line(capsys.readouterr().err)


def test_argparse_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        main(["eval"])
    assert e.value.code == 2
    assert _one_line(capsys.readouterr().err).startswith("quadformer eval: error: the following arguments")


# -- shared options ------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, named", [
    (["--threads", "-1"], "-1"), (["--threads", "0"], "0"),
    (["--device", "cuda:7"], "cuda:7"), (["--device", "quantum"], "quantum"),
    (["--batch-sizes", "0"], "0"), (["--batch-sizes", "4", "-2"], "-2"),
])
def test_shared_options_are_judged_before_work(argv, named, capsys, monkeypatch):
    if argv[1] == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    called = []
    monkeypatch.setattr(eval_cmd, "run", lambda a: called.append(a))
    try:
        rc = main(["eval", "some_model", *argv])
    except SystemExit as e:
        rc = e.code
    assert rc == 2 and not called
    assert named in _one_line(capsys.readouterr().err)


def test_shared_options_apply(monkeypatch):
    seen = {}

    def capture(args):
        seen.update(threads=torch.get_num_threads(), device=args.device, progress=args.progress)
        return 0

    monkeypatch.setattr(eval_cmd, "run", capture)
    before = torch.get_num_threads()
    try:
        assert main(["eval", "m", "--threads", "1", "--device", "cpu", "--no-progress", "--log-level", "warning"]) == 0
    finally:
        torch.set_num_threads(before)
    assert seen == {"threads": 1, "device": "cpu", "progress": False}


# commands whose options another engineer still owns are left out
WIRED = ("tokenize", "train", "eval", "predict", "export", "pretrain", "diversity", "transfer", "study")


@pytest.mark.parametrize("cmd", WIRED)
def test_every_command_has_the_shared_options(cmd, capsys):
    """``--help`` works and lists the shared options in cli.common's group (a command's own
    copy would be a second definition: argparse refuses it, or it would sit in another group)."""
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    text = capsys.readouterr().out
    assert e.value.code == 0 and "common options:" in text
    own, common = text.split("common options:")
    assert "--threads THREADS" in common and "--log-level" in common and "--threads" not in own.split("options:")[-1]
    if cmd in ("eval", "predict", "export", "diversity", "transfer"):
        assert "--device DEVICE" in common
    if cmd in ("train", "pretrain", "eval", "predict", "transfer"):
        assert "--progress, --no-progress" in common


@pytest.mark.parametrize("argv, override", [
    ([], None), (["--no-progress"], "train.progress=false"), (["--progress"], "train.progress=true"),
])
def test_train_progress_flag_overrides_the_config_only_when_given(argv, override, monkeypatch, tmp_path):
    import quadformer.train as train_pkg

    seen = {}
    monkeypatch.setattr(train_pkg, "load_config", lambda path, overrides: seen.setdefault("o", overrides))
    monkeypatch.setattr(train_pkg, "train", lambda cfg, resume=None: {"epoch": 0})
    assert main(["train", "--out", str(tmp_path), "seed=1", *argv]) == 0
    assert seen["o"] == ["seed=1", f"output.dir={tmp_path}"] + ([override] if override else [])


def test_pretrain_progress_flag_reaches_the_config(monkeypatch, tmp_path):
    import quadformer.train.schemes as schemes

    seen = {}
    monkeypatch.setattr(schemes, "run_scheme", lambda s, cfg, out, opts: seen.update(p=cfg.train.progress)
                        or {"stages": []})
    assert main(["pretrain", "--scheme", "supervised", "--out", str(tmp_path), "--no-progress"]) == 0
    assert seen == {"p": False}
    assert main(["pretrain", "--scheme", "supervised", "--out", str(tmp_path), "train.progress=false"]) == 0
    assert seen == {"p": False}  # no flag: the config's own setting stands


@pytest.mark.parametrize("argv, named", [
    (["--lowlr-factor", "0"], "0"), (["--lowlr-factor", "nan"], "nan"), (["--long-factor", "0"], "0"),
])
def test_pretrain_factors_are_judged_by_the_shared_types(argv, named, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["pretrain", "--scheme", "supervised", "--out", str(tmp_path / "o"), *argv])
    err = _one_line(capsys.readouterr().err)
    assert e.value.code == 2 and argv[0] in err and named in err
    assert not (tmp_path / "o").exists()


def test_shared_number_types():
    import argparse

    from quadformer.cli.common import image_size, nonneg_float, positive_float, positive_floats, safe_name

    assert positive_float("1e-3") == 1e-3 and nonneg_float("0") == 0.0 and image_size("8") == 8
    assert positive_floats("1e-3, 3e-4") == [1e-3, 3e-4]
    for f, bad in ((positive_float, "0"), (positive_float, "nan"), (nonneg_float, "-1"), (image_size, "7"),
                   (positive_floats, ","), (positive_floats, "1,-2"), (positive_float, "x")):
        with pytest.raises(argparse.ArgumentTypeError):
            f(bad)
    assert safe_name("hf-hub:org/name") == "hf-hub_org_name" and safe_name("..") == "model"


def test_no_cache_leaves_the_cache_dir_unjudged(tmp_path):
    import argparse

    from quadformer.cli.common import apply_common

    (tmp_path / "file").write_text("x")
    bad = tmp_path / "file" / "cache"
    with pytest.raises(QuadformerError, match="--cache-dir"):
        apply_common(argparse.Namespace(cache_dir=bad, no_cache=False))
    apply_common(argparse.Namespace(cache_dir=bad, no_cache=True))


def test_overrides_after_out_are_accepted(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr(train_cmd, "run", lambda a: seen.update(overrides=list(a.overrides), out=a.out) or 0)
    assert main(["train", "optim.lr=0.1", "--out", str(tmp_path), "train.epochs=3", "seed=2"]) == 0
    assert seen == {"overrides": ["optim.lr=0.1", "train.epochs=3", "seed=2"], "out": str(tmp_path)}


def test_cli_resolves_hub_names_offline(monkeypatch):
    import os

    import huggingface_hub.constants as hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", False)
    seen = []
    monkeypatch.setattr(eval_cmd, "run", lambda a: seen.append((hub.HF_HUB_OFFLINE, os.environ["HF_HUB_OFFLINE"])))
    main(["eval", "m"])
    assert seen == [(True, "1")]
    assert hub.HF_HUB_OFFLINE is False and "HF_HUB_OFFLINE" not in os.environ  # restored for in-process callers
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # the user asks for downloads
    main(["eval", "m"])
    assert seen[-1] == (False, "0")


# -- eval ----------------------------------------------------------------------------------------


def test_throughput_interleaves_batch_sizes():
    calls = []

    class Fake(torch.nn.Module):
        def forward(self, x):
            calls.append(x.shape[0])
            return x.mean()

    ips = eval_cmd.throughput(Fake(), 8, [1, 4], torch.device("cpu"), repeats=3)
    assert calls == [1, 4] + [1, 4] * 3  # warm-up, then rounds
    assert set(ips) == {1, 4} and all(v > 0 for v in ips.values())


def test_eval_any_model_spec_and_ema(run_dir, tmp_path, capsys):
    results = {}
    for name, spec, extra in [("folder", run_dir, []), ("last", run_dir / "last.pt", []),
                              ("export", run_dir / "model.safetensors", []), ("ema", run_dir / "last.pt", ["--ema"])]:
        out = tmp_path / f"{name}.json"
        assert main(["eval", str(spec), *extra, "--no-timing", "--no-progress", "--json", str(out)]) == 0
        results[name] = json.loads(out.read_text())
    capsys.readouterr()
    assert results["ema"]["weights"] == "ema" and results["last"]["weights"] == "model"
    assert results["folder"]["images"] == 16 and results["folder"]["data"] == "builtin:glyphs"
    # the export holds the weights the run exported; all report the same architecture and budget
    assert {r["architecture"] for r in results.values()} == {"quadformer_micro_patch4_32"}
    assert {r["num_patches"] for r in results.values()} == {16}


def test_eval_timing_and_budget(run_dir, capsys):
    assert main(["eval", str(run_dir), "--batch-sizes", "1", "2", "--repeats", "2", "--num-patches", "10",
                 "--no-progress"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert set(res["images_per_s"]) == {"1", "2"} and res["num_patches"] == 10
    assert "interleaved" in res["timing"]


def test_eval_refuses_another_label_space(run_dir, capsys):
    assert main(["eval", str(run_dir), "--data", "builtin:dice", "--no-timing", "--no-progress"]) == 2
    assert "builtin:dice" in _one_line(capsys.readouterr().err)


def test_eval_ema_without_ema_is_one_line(tmp_path, capsys):
    out = tmp_path / "noema"
    assert main(["train", "--out", str(out), *MICRO, "train.ema_decay=0"]) == 0
    capsys.readouterr()
    assert main(["eval", str(out / "last.pt"), "--ema", "--no-timing"]) == 2
    assert "EMA" in _one_line(capsys.readouterr().err)


# -- predict -------------------------------------------------------------------------------------


def test_predict_folder_to_csv_json_and_mosaics(run_dir, images, tmp_path, capsys):
    out_csv, out_json, mos = tmp_path / "p.csv", tmp_path / "p.json", tmp_path / "mosaics"
    rc = main(["predict", str(run_dir), str(images), "--top-k", "3", "--batch-size", "2", "--csv", str(out_csv),
               "--json", str(out_json), "--mosaics", str(mos), "--no-progress"])
    cap = capsys.readouterr()
    assert rc == 0
    assert "broken.jpg" in cap.err and "notes.txt" not in cap.err + out_json.read_text()
    doc = json.loads(out_json.read_text())
    preds = doc["predictions"]
    assert [Path(p["image"]).name for p in preds] == [f"img{i}.png" for i in range(5)] + ["gray.jpg"]
    assert [Path(s["image"]).name for s in doc["skipped"]] == ["broken.jpg"]
    ck = torch.load(run_dir / "last.pt", weights_only=True)
    names = ck["class_names"]
    for p in preds:
        scores = [t["score"] for t in p["top"]]
        assert len(scores) == 3 and scores == sorted(scores, reverse=True)
        assert all(t["class"] == names[t["index"]] for t in p["top"])
    with open(out_csv) as f:
        rows = list(csv.DictReader(f))
    assert [r["class1"] for r in rows] == [p["top"][0]["class"] for p in preds]
    assert sorted(x.name for x in mos.iterdir()) == sorted(f"{Path(p['image']).stem}.png" for p in preds)
    assert not [x for x in tmp_path.rglob("*.tmp")]


def test_predict_matches_the_model(run_dir, images, capsys):
    """Top-1 equals the argmax of the model on the evaluation transform of the image."""
    from quadformer.data import create_transforms
    from quadformer.models.loading import load_model
    from quadformer.utils.images import load_rgb

    assert main(["predict", str(run_dir), str(images / "img0.png"), "--top-k", "1", "--no-progress"]) == 0
    line = capsys.readouterr().out.strip()
    lm = load_model(str(run_dir), weights="model")
    x = create_transforms(lm.image_size, is_training=False, mean=lm.mean, std=lm.std)(load_rgb(images / "img0.png"))
    with torch.no_grad():
        probs = lm.model(x[None]).softmax(-1)[0]
    assert line == f"{images / 'img0.png'}: {lm.class_names[int(probs.argmax())]} {float(probs.max()):.3f}"


def test_predict_folder_without_images_is_one_line(run_dir, tmp_path, capsys):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("x")
    assert main(["predict", str(run_dir), str(tmp_path / "docs")]) == 2
    assert "holds no images" in _one_line(capsys.readouterr().err)


def test_predict_local_dir_class_names_from_config(images, tmp_path, capsys):
    """A save_for_hf folder (local-dir:): class names come from its config.json."""
    import timm
    from timm.models import save_for_hf

    torch.manual_seed(0)
    m = timm.create_model("quadformer_micro_patch4_32", num_classes=3, embed_dim=32, depth=2, num_heads=2).eval()
    save_for_hf(m, tmp_path / "hf", safe_serialization=True, model_config={"label_names": ["ant", "bee", "cat"]})
    out = tmp_path / "p.json"
    assert main(["predict", f"local-dir:{tmp_path / 'hf'}", str(images / "img1.png"), "--json", str(out),
                 "--no-progress"]) == 0
    top = json.loads(out.read_text())["predictions"][0]["top"]
    assert [t["class"] for t in top] == [["ant", "bee", "cat"][t["index"]] for t in top] and len(top) == 3


def test_predict_mosaics_keep_same_named_files_apart(run_dir, tmp_path, capsys):
    rng = np.random.default_rng(1)
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / d / "x.png")
    mos = tmp_path / "m"
    assert main(["predict", str(run_dir), str(tmp_path / "a"), str(tmp_path / "b"), "--mosaics", str(mos),
                 "--no-progress"]) == 0
    assert sorted(p.name for p in mos.iterdir()) == ["x.png", "x_2.png"]
