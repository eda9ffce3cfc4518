"""A run folder: its lock, its recipe (the config that decides the result) and its small files.

One process trains in a folder at a time (``filelock``; the holder's PID is kept beside the
lock so a second process can name it). A folder is resumed or reused only for the same recipe:
every config entry that changes the weights or the logged metrics counts, where the run writes
its files and how it reports progress do not. Input files (a KD teacher, a stage-A checkpoint)
count by content, so a moved folder is still the same recipe.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from ..utils.errors import QuadformerError
from ..utils.io import file_lock, write_json, write_text

LOCK_NAME = ".train.lock"
PID_NAME = ".train.pid"

# Entries that never change a run's weights or metrics (a resume is bit-exact across them).
NOT_RECIPE = {"output": None, "train": {"progress", "snapshots", "checkpoint_every_steps"},
              "data": {"num_workers", "cache_dir"}}
INPUT_FILES = (("objective", "teacher"), ("model", "init_checkpoint"))  # compared by content, not by path
RESULT_FILES = ("summary.json", "model.safetensors", "model.json")  # a finished run's exports


def write_config(out: Path, cfg_dict: dict[str, Any]) -> None:
    write_text(out / "config.yaml", yaml.safe_dump(cfg_dict, sort_keys=False))


@contextlib.contextmanager
def run_lock(out: Path, enabled: bool = True,
             agree: Callable[[bool], bool] | None = None) -> Iterator[None]:
    """Hold ``out``'s lock for the ``with`` body; a folder in use raises one line naming the
    holder's PID. The OS frees the lock when its holder dies (a killed run leaves none).

    Under DDP only the main process takes the lock (``enabled``), and ``agree(failed)`` (true
    when any process failed) lets every process learn the outcome: the others raise too
    instead of waiting for the main one in their first collective until torchrun times out."""
    agree = agree or (lambda failed: failed)
    if not enabled:
        if agree(False):
            raise QuadformerError(f"output folder {out} is in use by another training run (the main process could "
                                  f"not lock it); wait for it to finish or stop it, or pass another output.dir")
        yield
        return
    try:
        make_folder(out)
    except QuadformerError:
        agree(True)
        raise
    with file_lock(out / LOCK_NAME, blocking=False) as held:
        agree(not held)
        if not held:
            pid_file = out / PID_NAME
            pid = pid_file.read_text().strip() if pid_file.is_file() else "unknown"
            raise QuadformerError(f"output folder {out} is in use by another training run (PID {pid}); wait for it "
                                  f"to finish or stop it, or pass another output.dir")
        write_text(out / PID_NAME, f"{os.getpid()}\n")
        remove_stale_temps(out)
        yield


def remove_stale_temps(out: Path) -> None:
    """Temp files of atomic writes killed before their rename (SIGKILL, power loss): with the
    folder locked, no live writer owns one."""
    for p in [*out.glob(".*.tmp"), *out.glob("snapshots/.*.tmp")]:
        p.unlink(missing_ok=True)


def make_folder(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise QuadformerError(f"output.dir={out} is (inside) a file, not a folder; pass a folder path") from None
    except PermissionError:
        raise QuadformerError(f"output.dir={out} cannot be created (permission denied); pass a writable "
                              f"folder") from None


def start_afresh(out: Path) -> None:
    """A fresh run in a folder that held another one: its exports go first, so a run killed
    before it finishes never looks finished with the old weights."""
    for name in RESULT_FILES:
        (out / name).unlink(missing_ok=True)


def _flat(d: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for sec, v in d.items():
        if isinstance(v, dict):
            skip = NOT_RECIPE.get(sec, set())
            if sec in NOT_RECIPE and skip is None:
                continue
            out.update({f"{sec}.{k}": x for k, x in v.items() if k not in skip})
        else:
            out[sec] = v
    return out


def input_digests(cfg_dict: dict[str, Any]) -> dict[str, str]:
    """Content digests of a config's input files (a run folder stands for its exported weights)."""
    from ..models.loading import file_digest

    out = {}
    for sec, key in INPUT_FILES:
        path = (cfg_dict.get(sec) or {}).get(key)
        if path and Path(path).is_dir():
            path = Path(path) / "model.safetensors"
        if path and Path(path).is_file():
            out[f"{sec}.{key}"] = file_digest(path)
    return out


def record_inputs(run_dir: Path, cfg_dict: dict[str, Any]) -> None:
    """Keep the digests of a run's input files beside it, so a moved folder still matches."""
    digests = input_digests(cfg_dict)
    if digests:
        write_json(run_dir / "inputs.json", digests)


def recipe_diff(theirs: dict[str, Any], ours: dict[str, Any], run_dir: Path | None = None) -> list[str]:
    """The recipe entries (``section.key``) where a stored config and ours differ. Entries the
    stored config lacks (written before they existed) count as equal."""
    t, o = _flat(theirs), _flat(ours)
    diff = sorted(k for k in o if t.get(k, o[k]) != o[k])
    files = {".".join(p) for p in INPUT_FILES}
    if files & set(diff):
        recorded = run_dir / "inputs.json" if run_dir is not None else None
        their_digests = json.loads(recorded.read_text()) if recorded is not None and recorded.is_file() \
            else input_digests(theirs)
        our_digests = input_digests(ours)
        diff = [d for d in diff if not (d in our_digests and their_digests.get(d) == our_digests[d])]
    return diff


def stored_config(run_dir: Path) -> dict[str, Any] | None:
    """The config a run folder was trained with (``config.yaml``), or None."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return None
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise QuadformerError(f"{path} is not valid YAML ({str(e).splitlines()[0]}); delete the run folder or "
                              f"use another output.dir") from None
