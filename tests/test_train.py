"""Training engine: resume bit for bit (in-process and after SIGKILL), DDP == one process,
config errors before any work, logs and checkpoints."""

from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from quadformer.cli.main import main
from quadformer.train import load_config, train
from quadformer.train.checkpoint import load_checkpoint

TINY = [
    "model.name=quadformer_micro_patch4_32", "model.num_patches=28",
    "model.kwargs={embed_dim: 32, depth: 2, num_heads: 2}",
    "data.train=builtin:glyphs", "data.image_size=32", "data.train_size=96", "data.val_size=32",
    "data.batch_size=16", "train.epochs=2", "train.progress=false", "train.amp=off",
    "output.tensorboard=false", "optim.warmup_epochs=0.5",
]


def cfg_for(out: Path, *extra: str):
    return load_config(None, TINY + [f"output.dir={out}", *extra])


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["state_dict"]


def assert_same_weights(a: dict, b: dict, atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0 if atol == 0 else 1e-4, msg=k)


def rows(out: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(open(out / "metrics.csv")))


def test_resume_mid_epoch_is_bit_exact_and_loses_no_logged_result(tmp_path):
    import json

    from safetensors.torch import load_file

    full = train(cfg_for(tmp_path / "full"))
    cut = train(cfg_for(tmp_path / "cut"), stop_after_steps=4)  # epoch 1, step 4 of 6
    assert cut["interrupted"] and cut["step_in_epoch"] == 4
    again = train(cfg_for(tmp_path / "cut"), resume="auto", stop_after_steps=4)  # epoch 2, step 2 of 6
    assert again["interrupted"] and (again["epoch"], again["step_in_epoch"]) == (1, 2)
    assert [r["epoch"] for r in rows(tmp_path / "cut")] == ["1"]  # the finished epoch stays logged
    resumed = train(cfg_for(tmp_path / "cut"), resume="auto")
    assert resumed["val_top1"] == full["val_top1"] and resumed["train_loss"] == full["train_loss"]
    assert_same_weights(weights(tmp_path / "full" / "last.pt"), weights(tmp_path / "cut" / "last.pt"))
    a, b = rows(tmp_path / "full"), rows(tmp_path / "cut")
    assert [r["epoch"] for r in b] == ["1", "2"]
    # each epoch's loss is the mean over the whole epoch, not over the part after the resume
    assert [r["train_loss"] for r in a] == [r["train_loss"] for r in b]
    assert all(float(r["epoch_seconds"]) > 0 for r in b)
    assert (tmp_path / "full" / "model.safetensors").exists() and (tmp_path / "full" / "model.json").exists()
    final = json.loads((tmp_path / "full" / "summary.json").read_text())["final"]
    # resuming a finished run, or rerunning after a kill during the export, keeps the results
    cut_dir = tmp_path / "cut"
    train(cfg_for(cut_dir), resume="auto")
    for name in ("summary.json", "model.safetensors"):
        (cut_dir / name).unlink()
    again = train(cfg_for(cut_dir), resume="last")
    assert again["val_top1"] == full["val_top1"]
    theirs = json.loads((cut_dir / "summary.json").read_text())["final"]
    assert {k: theirs[k] for k in ("epoch", "train_loss", "val_top1")} == \
        {k: final[k] for k in ("epoch", "train_loss", "val_top1")}
    assert_same_weights(load_file(tmp_path / "full" / "model.safetensors"), load_file(cut_dir / "model.safetensors"))
    assert [r["epoch"] for r in rows(cut_dir)] == ["1", "2"]
    (cut_dir / ".last.pt.x1y2.tmp").write_bytes(b"")  # an atomic write killed before its rename
    train(cfg_for(cut_dir), resume="last")
    assert not [p.name for p in cut_dir.iterdir() if p.name.endswith(".tmp")]


def test_resume_compares_the_whole_recipe_and_replans_more_epochs(tmp_path, caplog):
    from quadformer.utils.errors import QuadformerError

    out = tmp_path / "run"
    train(cfg_for(out, "train.epochs=1"))
    for change, key in (("data.train_size=64", "data.train_size"), ("seed=1", "seed"),
                        ("optim.weight_decay=0.1", "optim.weight_decay")):
        with pytest.raises(QuadformerError, match=key):
            train(cfg_for(out, "train.epochs=1", change), resume="last")
    # a checkpoint of the older layout (weights under model/ema) still resumes
    ck = load_checkpoint(out / "last.pt")
    ck["model"], ck["ema"] = ck.pop("state_dict"), ck.pop("state_dict_ema")
    torch.save(ck, out / "last.pt")
    # where it writes and how it reports are not the recipe
    done = train(cfg_for(out, "train.epochs=1", "output.tensorboard=true", "train.checkpoint_every_steps=3"),
                 resume="last")
    assert done["epoch"] == 1
    # more epochs: the cosine schedule is re-planned over the new length (the lr leaves min_lr)
    with caplog.at_level("INFO", logger="quadformer.train"):
        res = train(cfg_for(out, "train.epochs=2"), resume="last", stop_after_steps=1)
    assert res["interrupted"] and "re-planned over 12 steps from step 6" in caplog.text
    lr = load_checkpoint(out / "last.pt")["optimizer"]["param_groups"][0]["lr"]
    assert lr > 10 * cfg_for(out).optim.min_lr
    # a reused folder (resume="auto", as demo and schemes do) never resumes another recipe: it starts afresh
    res = train(cfg_for(out, "train.epochs=1", "data.train_size=64"), resume="auto")
    ck = load_checkpoint(out / "last.pt")
    assert ck["global_step"] == 4 and ck["config"]["data"]["train_size"] == 64
    assert [r["epoch"] for r in rows(out)] == ["1"]


def test_a_second_process_on_the_same_folder_is_refused_naming_its_pid(tmp_path, capsys):
    from quadformer.train.run_folder import run_lock

    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from quadformer.train.run_folder import run_lock\n"
         "with run_lock(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(120)", str(out)],
        env=_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        rc = main(["train", *TINY, f"output.dir={out}"])
        err = capsys.readouterr().err
        assert rc == 2 and f"PID {holder.pid}" in err and err.count("\n") == 1
        assert not (out / "last.pt").exists()
    finally:
        holder.kill()
        holder.wait(timeout=30)
    with run_lock(out):  # the OS freed the dead holder's lock
        pass


def test_wandb_logging_is_optional_and_offline_capable(tmp_path, monkeypatch, capsys):
    import types

    calls: dict[str, list] = {"init": [], "log": [], "finish": []}

    class Run:
        def log(self, data, step=None):
            calls["log"].append((data, step))

        def finish(self):
            calls["finish"].append(True)

    fake = types.ModuleType("wandb")
    fake.init = lambda **kw: calls["init"].append(kw) or Run()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "wandb", fake)
    out = tmp_path / "run"
    cfg = cfg_for(out, "train.epochs=1", "data.train_size=32", "output.wandb=true")
    res = train(cfg)
    (init,) = calls["init"]
    assert init["config"] == cfg.to_dict() and init["dir"] == str(out) and init["resume"] == "allow"
    (data, step), = calls["log"]
    assert step == 2 and data["val_top1"] == res["val_top1"] and data["epoch"] == 1
    assert calls["finish"] == [True]
    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed
    rc = main(["train", *TINY, f"output.dir={tmp_path / 'none'}", "output.wandb=true"])
    err = capsys.readouterr().err
    assert rc == 2 and "pip install wandb" in err and err.count("\n") == 1
    assert not (tmp_path / "none").exists()


def test_ema_resumes_exactly_and_is_what_gets_exported(tmp_path):
    from safetensors.torch import load_file

    full = train(cfg_for(tmp_path / "full", "train.ema_decay=0.9"))
    train(cfg_for(tmp_path / "cut", "train.ema_decay=0.9"), stop_after_steps=4)
    train(cfg_for(tmp_path / "cut", "train.ema_decay=0.9"), resume="auto")
    ck_full, ck_cut = load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(tmp_path / "cut" / "last.pt")
    assert_same_weights(ck_full["state_dict_ema"], ck_cut["state_dict_ema"])
    exported = load_file(tmp_path / "full" / "model.safetensors")
    key = "blocks.0.mlp.fc1.weight"
    torch.testing.assert_close(exported[key], ck_full["state_dict_ema"][key])  # the averaged weights are the result
    assert not torch.equal(exported[key], ck_full["state_dict"][key])
    # timm's own reader takes the EMA weights of last.pt (its keys are timm's)
    import timm.models

    from quadformer.train.engine import build_model

    m = build_model(cfg_for(tmp_path / "x"), 10)
    timm.models.load_checkpoint(m, str(tmp_path / "full" / "last.pt"), use_ema=True)
    torch.testing.assert_close(m.state_dict()[key], ck_full["state_dict_ema"][key], rtol=0, atol=0)
    rows = list(csv.DictReader(open(tmp_path / "full" / "metrics.csv")))
    assert all(r["val_top1_ema"] != "" for r in rows) and "val_top1_ema" in full


def test_bad_config_fails_before_training(tmp_path, capsys):
    rc = main(["train", *TINY, "model.num_patches=27", f"output.dir={tmp_path}"])
    err = capsys.readouterr().err
    assert rc == 2 and "nearest: 25, 28" in err and err.count("\n") == 1
    assert not (tmp_path / "last.pt").exists()
    rc = main(["train", *TINY, "train.epoch=3"])
    assert rc == 2 and "unknown config key 'train.epoch'" in capsys.readouterr().err
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model:\n  name: quadformer_micro_patch4_32\n  budget: 28\n")
    rc = main(["train", "--config", str(cfg)])
    assert rc == 2 and "unknown config key 'model.budget'" in capsys.readouterr().err
    for name, obj in (("list.pt", [torch.zeros(2)]), ("weights.pt", {"w": torch.zeros(1)})):
        torch.save(obj, tmp_path / name)
        rc = main(["train", *TINY, f"output.dir={tmp_path / 'r'}", "--resume", str(tmp_path / name)])
        err = capsys.readouterr().err
        assert rc == 2 and f"{name} is not a training checkpoint" in err and err.count("\n") == 1


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "quadformer.cli.main", *args]


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", PYTHONUNBUFFERED="1")
    return env



def test_sigkill_mid_epoch_then_resume_matches(tmp_path):
    args = TINY + ["train.checkpoint_every_steps=1", "data.train_size=192"]
    ref = subprocess.run(_cli("train", *args, f"output.dir={tmp_path / 'ref'}"), env=_env(),
                         capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr[-2000:]
    out = tmp_path / "killed"
    proc = subprocess.Popen(_cli("train", *args, f"output.dir={out}"), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ck = out / "last.pt"
    deadline = time.time() + 240
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        if ck.exists():
            try:
                st = load_checkpoint(ck)
            except Exception:  # noqa: BLE001 - atomic writes make this unreachable; keep polling
                continue
            if st["epoch"] == 0 and st["step_in_epoch"] >= 3:
                proc.send_signal(signal.SIGKILL)
                killed_at = st["step_in_epoch"]
                break
        time.sleep(0.05)
    proc.wait(timeout=30)
    assert killed_at is not None, "could not kill the run mid-epoch"
    res = subprocess.run(_cli("train", *args, f"output.dir={out}", "--resume"), env=_env(),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert_same_weights(weights(tmp_path / "ref" / "last.pt"), weights(ck))
    a = list(csv.DictReader(open(tmp_path / "ref" / "metrics.csv")))
    b = list(csv.DictReader(open(out / "metrics.csv")))
    assert [r["val_top1"] for r in a] == [r["val_top1"] for r in b]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_one_and_ddp(args: list[str], out: Path) -> tuple[Path, Path]:
    """``quadformer train args`` in one process and in two gloo processes (torch.distributed.run);
    their output folders."""
    one = subprocess.run(_cli("train", *args, f"output.dir={out / 'one'}"), env=_env(),
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(_free_port()), "-m", "quadformer.cli.main", "train", *args,
         f"output.dir={out / 'two'}"],
        env=_env(), capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    return out / "one", out / "two"


def test_ddp_two_gloo_processes_match_one_process(tmp_path):
    # checkpoints every 2 steps: the mid-epoch saves reduce the loss sum over processes
    one, two = train_one_and_ddp(TINY + ["train.epochs=1", "optim.clip_grad=null", "train.checkpoint_every_steps=2"],
                                 tmp_path)
    assert_same_weights(weights(one / "last.pt"), weights(two / "last.pt"), atol=1e-5)
    a = list(csv.DictReader(open(one / "metrics.csv")))[0]
    b = list(csv.DictReader(open(two / "metrics.csv")))[0]
    assert float(a["val_top1"]) == pytest.approx(float(b["val_top1"]), abs=1e-6)
    assert float(a["train_loss"]) == pytest.approx(float(b["train_loss"]), rel=1e-4)


def test_corrupt_imagefolder_file_is_skipped_and_counted(tmp_path, caplog):
    import numpy as np
    from PIL import Image

    root = tmp_path / "folder"
    rng = np.random.default_rng(0)
    for split, n in (("train", 16), ("val", 4)):
        for c in ("cat", "dog"):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(d / f"{i}.png")
    bad = root / "train" / "dog" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    cfg = cfg_for(tmp_path / "run", f"data.train=imagefolder:{root}", "data.train_size=null", "data.val_size=null",
                  "train.epochs=1")
    with caplog.at_level("WARNING"):
        res = train(cfg)
    assert res["val_top1"] >= 0
    assert str(bad) in caplog.text
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert rows[0]["skipped_files"] == "1"


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path):
    from quadformer.utils.io import atomic_write

    target = tmp_path / "f.bin"
    atomic_write(target, lambda f: f.write(b"old"))

    def broken(f):
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, broken)
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_ddp_locked_folder_stops_every_rank_at_once(tmp_path):
    """The main process cannot lock a folder in use: every rank gives the one-line error and exits
    (none waits for the main one in a collective until torchrun's timeout)."""
    from quadformer.train.run_folder import LOCK_NAME
    from quadformer.utils.io import file_lock

    out = tmp_path / "busy"
    out.mkdir()
    with file_lock(out / LOCK_NAME, blocking=False) as held:
        assert held
        two = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
             "--master_port", str(_free_port()), "-m", "quadformer.cli.main", "train", *TINY, "train.epochs=1",
             f"output.dir={out}"],
            env=_env(), capture_output=True, text=True, timeout=120)
    assert two.returncode != 0
    assert two.stderr.count("is in use by another training run") == 2, two.stderr[-3000:]
    assert "quadformer/train" not in two.stderr  # no traceback of ours (torchrun prints its own summary)
    assert not (out / "last.pt").exists()
