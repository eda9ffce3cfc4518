"""Fault injection: training and a two-stage pretraining run are killed with SIGKILL at seeded
random moments, then resumed by rerunning the same command, until they finish. The final
weights, metrics.csv and summary.json must equal those of an uninterrupted run, and no temp file
may be left behind.

Every run is forked from the test process (imports done once), single-threaded. Two kinds of
fault: a kill after a seeded random delay (anywhere: data generation, a step, an
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
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not hasattr(os, "fork"), reason="forks the CLI (POSIX)")]



def _child(argv: list[str], kill_at_write: int, tear: bool, log: str | None, stdout: str) -> None:
    """A forked child running the CLI; it SIGKILLs itself inside its ``kill_at_write``-th atomic
    write, just before the temp file's rename (``tear``: first cut the temp file in half), and
    logs every atomic write's target to ``log``. Forked from a parent that imported everything,
    a run starts in milliseconds instead of seconds."""
    fd = os.open(stdout, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
    real_replace, n = os.replace, [0]

    def replace(src, dst, *a, **k):
        if str(src).endswith(".tmp"):
            n[0] += 1
            if log:
                with open(log, "a") as f:
                    f.write(f"{dst}\n")
            if n[0] == kill_at_write:
                if tear:
                    with open(src, "r+b") as f:
                        f.truncate(os.path.getsize(src) // 2)
                os.kill(os.getpid(), signal.SIGKILL)
        return real_replace(src, dst, *a, **k)

    os.replace = replace
    import torch

    # GNU OpenMP cannot start a thread team in a child forked from a parent that ran one (any
    # earlier test of this process, e.g. test_export's): one thread, in the reference run as in every other
    torch.set_num_threads(1)
    try:
        from quadformer.cli.main import main

        code = main(argv)
    except BaseException:  # noqa: BLE001
        import traceback

        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(int(code or 0))


class _Proc:
    """A forked CLI run (``multiprocessing`` fork context)."""

    def __init__(self, argv: list[str], log_dir: Path, kill_at_write: int = 0, tear: bool = False,
                 log: str | None = None) -> None:
        import multiprocessing as mp

        self.stdout = str(log_dir / f"stdout_{time.monotonic_ns()}.txt")
        self.p = mp.get_context("fork").Process(target=_child, args=(argv, kill_at_write, tear, log, self.stdout))
        self.p.start()

    def wait(self, timeout: float | None = None) -> int | None:
        self.p.join(timeout)
        return self.p.exitcode

    def kill(self) -> None:
        if self.p.exitcode is None:
            os.kill(self.p.pid, signal.SIGKILL)
        self.p.join()

    def output(self) -> str:
        return Path(self.stdout).read_text() if Path(self.stdout).exists() else ""


MICRO = ["model.name=quadformer_micro_patch4_32", "model.kwargs={embed_dim: 32, depth: 2, num_heads: 2}",
         "model.num_patches=16", "data.image_size=32"]
TIMING = ("seconds", "per_s", "time", "run_id", "pid")


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


def _survive(argv: list[str], logs: Path, rng: random.Random, ref_seconds: float, n_writes: int,
             budget: int) -> tuple[int, int, int]:
    """Run ``argv`` (rerun after every kill) until it finishes, injecting up to ``budget``
    faults; returns (faults, at a random moment, inside a write). A fault that comes too late
    (the run had finished) counts nothing."""
    faults = by_time = by_write = 0
    while True:
        kind = rng.choice(("time", "write")) if faults < budget else None
        if kind == "write":
            proc = _Proc(argv, logs, kill_at_write=rng.randint(1, max(1, n_writes)), tear=rng.random() < 0.5)
        else:
            proc = _Proc(argv, logs)
        if kind == "time" and proc.wait(timeout=rng.uniform(0.0, 0.6 * ref_seconds)) is None:
            proc.kill()
        rc = proc.wait(timeout=600)
        if rc == -signal.SIGKILL:
            faults += 1
            by_time += kind == "time"
            by_write += kind == "write"
            continue
        assert rc == 0, f"a resumed run failed (rc {rc}):\n{proc.output()[-3000:]}"
        return faults, by_time, by_write


def _reference(argv: list[str], logs: Path) -> tuple[float, int]:
    count = logs / "writes.txt"
    t0 = time.perf_counter()
    proc = _Proc(argv, logs, log=str(count))
    rc = proc.wait(timeout=600)
    assert rc == 0, proc.output()[-3000:]
    return time.perf_counter() - t0, len(count.read_text().splitlines())


def _campaign(tmp_path: Path, name: str, argv_for, files: tuple[list[str], list[str], list[str]], seed: int,
              faults_wanted: int) -> tuple[int, int, int, int]:
    import quadformer.cli.main  # noqa: F401  (imported once; every run forks from here)

    logs = tmp_path / f"{name}_logs"
    logs.mkdir()
    ref_out = tmp_path / f"{name}_ref"
    seconds, n_writes = _reference(argv_for(ref_out), logs)
    ref = _outcome(ref_out, *files)
    rng = random.Random(seed)
    total = by_time = by_write = runs = 0
    while total < faults_wanted:
        runs += 1
        out = tmp_path / f"{name}_{runs}"
        f, t, w = _survive(argv_for(out), logs, rng, seconds, n_writes, budget=min(8, faults_wanted - total))
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
