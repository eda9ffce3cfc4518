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
    return load_checkpoint(path)["model"]


def assert_same_weights(a: dict, b: dict, atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0 if atol == 0 else 1e-4, msg=k)


def test_resume_mid_epoch_is_bit_exact(tmp_path):
    full = train(cfg_for(tmp_path / "full"))
    cut = train(cfg_for(tmp_path / "cut"), stop_after_steps=4)  # epoch 1, step 4 of 6
    assert cut["interrupted"] and cut["step_in_epoch"] == 4
    resumed = train(cfg_for(tmp_path / "cut"), resume="auto")
    assert resumed["val_top1"] == full["val_top1"] and resumed["train_loss"] == full["train_loss"]
    assert_same_weights(weights(tmp_path / "full" / "last.pt"), weights(tmp_path / "cut" / "last.pt"))
    rows = list(csv.DictReader(open(tmp_path / "cut" / "metrics.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert (tmp_path / "full" / "model.safetensors").exists() and (tmp_path / "full" / "model.json").exists()


def test_ema_resumes_exactly_and_is_what_gets_exported(tmp_path):
    from safetensors.torch import load_file

    full = train(cfg_for(tmp_path / "full", "train.ema_decay=0.9"))
    train(cfg_for(tmp_path / "cut", "train.ema_decay=0.9"), stop_after_steps=4)
    train(cfg_for(tmp_path / "cut", "train.ema_decay=0.9"), resume="auto")
    ck_full, ck_cut = load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(tmp_path / "cut" / "last.pt")
    assert_same_weights(ck_full["ema"], ck_cut["ema"])
    exported = load_file(tmp_path / "full" / "model.safetensors")
    key = "blocks.0.mlp.fc1.weight"
    torch.testing.assert_close(exported[key], ck_full["ema"][key])  # the averaged weights are the result
    assert not torch.equal(exported[key], ck_full["model"][key])
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
    one, two = train_one_and_ddp(TINY + ["train.epochs=1", "optim.clip_grad=null"], tmp_path)
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
