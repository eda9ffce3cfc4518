"""Fault injection: training and a two-stage pretraining run are killed with SIGKILL at seeded
random moments, then resumed by rerunning the same command, until they finish. The final
weights, metrics.csv and summary.json must equal those of an uninterrupted run, and no temp file
may be left behind.

Two kinds of fault: a kill after a seeded random delay (anywhere: data generation, a step, an
evaluation, a log write), and a kill inside the K-th atomic write (a checkpoint, an export, a
summary), just before its rename, with the temp file complete or torn in half. The counts are
printed.
"""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]

# Runs the CLI; with QF_KILL_AT_WRITE=K it SIGKILLs itself inside the K-th atomic write (just
# before the temp file's rename; QF_TEAR=1 first cuts the temp file in half), and with
# QF_COUNT_WRITES=FILE it logs every atomic write's target there.
RUNNER = r"""
import os, signal, sys
_replace = os.replace
_state = {"n": 0}
_kill = int(os.environ.get("QF_KILL_AT_WRITE", "0"))
_log = os.environ.get("QF_COUNT_WRITES")

def replace(src, dst, *a, **k):
    if str(src).endswith(".tmp"):
        _state["n"] += 1
        if _log:
            with open(_log, "a") as f:
                f.write(f"{dst}\n")
        if _state["n"] == _kill:
            if os.environ.get("QF_TEAR") == "1":
                size = os.path.getsize(src)
                with open(src, "r+b") as f:
                    f.truncate(size // 2)
            os.kill(os.getpid(), signal.SIGKILL)
    return _replace(src, dst, *a, **k)

os.replace = replace
from quadformer.cli.main import main
sys.exit(main(sys.argv[1:]))
"""

MICRO = ["model.name=quadformer_micro_patch4_32", "model.kwargs={embed_dim: 32, depth: 2, num_heads: 2}",
         "model.num_patches=16", "data.image_size=32"]
TIMING = ("seconds", "per_s", "time", "run_id", "pid")


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0", TQDM_DISABLE="1",
               PYTHONPATH=str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", ""))
    env.pop("QF_KILL_AT_WRITE", None)
    env.pop("QF_TEAR", None)
    env.pop("QF_COUNT_WRITES", None)
    env.update(extra or {})
    return env


def _start(runner: Path, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(runner), *argv], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _strip_timing(x):
    if isinstance(x, dict):
        return {k: _strip_timing(v) for k, v in x.items() if not any(t in k for t in TIMING)}
    if isinstance(x, list):
        return [_strip_timing(v) for v in x]
    return x


def _metrics(path: Path) -> list[dict]:
    with open(path) as f:
        return [{k: v for k, v in r.items() if not any(t in k for t in TIMING)} for r in csv.DictReader(f)]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _outcome(out: Path, weights: list[str], metrics: list[str], summaries: list[str]) -> dict:
    return {"weights": {w: _weights(out / w) for w in weights},
            "metrics": {m: _metrics(out / m) for m in metrics},
            "summary": {s: _strip_timing(json.loads((out / s).read_text())) for s in summaries}}


def _assert_equal(got: dict, ref: dict, label: str) -> None:
    for w, sd in ref["weights"].items():
        assert sorted(got["weights"][w]) == sorted(sd), f"{label}: {w} keys differ"
        for k, v in sd.items():
            assert torch.equal(got["weights"][w][k], v), f"{label}: {w}[{k}] differs from the uninterrupted run"
    assert got["metrics"] == ref["metrics"], f"{label}: metrics.csv differs from the uninterrupted run"
    assert got["summary"] == ref["summary"], f"{label}: summary.json differs from the uninterrupted run"


def _temps(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.name.endswith(".tmp"))


def _survive(runner: Path, argv: list[str], rng: random.Random, ref_seconds: float, n_writes: int,
             budget: int) -> tuple[int, int, int]:
    """Run ``argv`` (rerun after every kill) until it finishes, injecting up to ``budget``
    faults; returns (faults, by time, inside a write). A fault that comes too late (the run
    already finished) counts nothing."""
    faults = by_time = by_write = 0
    while True:
        kind = rng.choice(("time", "write")) if faults < budget else None
        env = _env()
        if kind == "write":
            env.update(QF_KILL_AT_WRITE=str(rng.randint(1, max(1, n_writes))), QF_TEAR=str(rng.randint(0, 1)))
        proc = _start(runner, argv, env)
        if kind == "time":
            try:
                proc.wait(timeout=rng.uniform(0.5, ref_seconds))
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=600)
        if proc.returncode == -signal.SIGKILL:
            faults += 1
            by_time += kind == "time"
            by_write += kind == "write"
            continue
        assert proc.returncode == 0, f"a resumed run failed (rc {proc.returncode}):\n{out[-3000:]}"
        return faults, by_time, by_write


def _reference(runner: Path, argv: list[str], out: Path, count_file: Path) -> tuple[float, int]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(runner), *argv], env=_env({"QF_COUNT_WRITES": str(count_file)}),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return time.perf_counter() - t0, len(count_file.read_text().splitlines())


def _campaign(tmp_path: Path, name: str, argv_for, files: tuple[list[str], list[str], list[str]], seed: int,
              faults_wanted: int) -> tuple[int, int, int, int]:
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER)
    ref_out = tmp_path / f"{name}_ref"
    seconds, n_writes = _reference(runner, argv_for(ref_out), ref_out, tmp_path / f"{name}_writes.txt")
    ref = _outcome(ref_out, *files)
    rng = random.Random(seed)
    total = by_time = by_write = runs = 0
    while total < faults_wanted:
        runs += 1
        out = tmp_path / f"{name}_{runs}"
        f, t, w = _survive(runner, argv_for(out), rng, seconds, n_writes, budget=min(4, faults_wanted - total))
        total, by_time, by_write = total + f, by_time + t, by_write + w
        _assert_equal(_outcome(out, *files), ref, f"{name} run {runs} ({f} faults)")
        assert not _temps(out), f"{name} run {runs}: temp files left: {_temps(out)}"
    return total, by_time, by_write, runs


def test_training_survives_sigkill(tmp_path):
    cache = tmp_path / "cache"

    def argv(out: Path) -> list[str]:
        return ["train", "--out", str(out), *MICRO, "data.train=builtin:glyphs", "data.train_size=64",
                "data.val_size=16", "data.batch_size=16", "train.epochs=3", "train.checkpoint_every_steps=1",
                "train.ema_decay=0.9", "train.progress=false", "output.tensorboard=false", f"data.cache_dir={cache}",
                "--resume"]

    files = (["model.safetensors"], ["metrics.csv"], ["summary.json"])
    total, by_time, by_write, runs = _campaign(tmp_path, "train", argv, files, seed=12, faults_wanted=20)
    print(f"\ntraining: {total} SIGKILL faults survived ({by_time} at random moments, {by_write} inside "
          f"atomic writes) over {runs} runs; weights, metrics.csv and summary.json equal the uninterrupted run")
    assert total >= 20


def test_pretrain_stages_survive_sigkill(tmp_path):
    cache = tmp_path / "cache"

    def argv(out: Path) -> list[str]:
        return ["pretrain", "--scheme", "ssl-then-supervised", "--out", str(out), *MICRO,
                "data.train=builtin:glyphs", "data.train_size=32", "data.val_size=16", "data.batch_size=16",
                "train.epochs=2", "train.checkpoint_every_steps=1", "train.progress=false",
                "output.tensorboard=false", f"data.cache_dir={cache}", "--stage-a-set", "train.epochs=1"]

    files = (["model.safetensors", "stage_b/model.safetensors"], ["stage_a/metrics.csv", "stage_b/metrics.csv"],
             ["stage_a/summary.json", "stage_b/summary.json"])
    total, by_time, by_write, runs = _campaign(tmp_path, "pretrain", argv, files, seed=34, faults_wanted=12)
    print(f"\npretrain stages: {total} SIGKILL faults survived ({by_time} at random moments, {by_write} inside "
          f"atomic writes) over {runs} runs; weights, metrics.csv and summary.json equal the uninterrupted run")
    assert total >= 12
