"""Pretraining schemes as sequences of engine runs (spec: diverse_transfer §4).

A scheme is one or two *stages*; each stage is an ordinary ``train()`` run with its own
folder and objective, so each resumes on its own and a finished stage is reused. Two-stage
schemes start stage B from stage A's weights with a new head (``model.init_checkpoint``).

  supervised                 S:        random -> CE
  supervised-kd              S-KD:     random -> CE + alpha * KL to a teacher
  supervised-long            S-long:   S for ``long_factor`` x the epochs (more-training control)
  ssl                        SSL:      random -> SimCLR / DINO (projector dropped)
  ssl-then-supervised        SSL->S
  ssl-then-supervised-kd     SSL->S-KD (most likely the paper's procedure)
  ssl-then-supervised-lowlr  SSL->S at lr * ``lowlr_factor`` (a gentler stage B)
  joint                      CE + lambda * SSL in one stage
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..utils.errors import QuadformerError
from .config import Config, _apply, parse_overrides, validate

log = logging.getLogger("quadformer.train")


@dataclass(frozen=True)
class Stage:
    name: str  # folder under the scheme's output ("" = the output itself)
    objective: str  # supervised | kd | ssl | joint
    ssl_stage: bool = False  # stage A of a two-stage scheme (gets the stage-A overrides)


SCHEMES: dict[str, tuple[Stage, ...]] = {
    "supervised": (Stage("", "supervised"),),
    "supervised-kd": (Stage("", "kd"),),
    "supervised-long": (Stage("", "supervised"),),
    "ssl": (Stage("", "ssl", ssl_stage=True),),
    "ssl-then-supervised": (Stage("stage_a", "ssl", ssl_stage=True), Stage("stage_b", "supervised")),
    "ssl-then-supervised-kd": (Stage("stage_a", "ssl", ssl_stage=True), Stage("stage_b", "kd")),
    "ssl-then-supervised-lowlr": (Stage("stage_a", "ssl", ssl_stage=True), Stage("stage_b", "supervised")),
    "joint": (Stage("", "joint"),),
}


@dataclass
class SchemeOptions:
    teacher: str | None = None  # KD teacher checkpoint
    stage_a: str | None = None  # reuse a finished SSL run as stage A
    stage_a_overrides: list[str] = field(default_factory=list)  # e.g. train.epochs=40 for the SSL stage
    long_factor: int = 3
    lowlr_factor: float = 0.2


def stage_configs(scheme: str, base: Config, out: Path, opts: SchemeOptions) -> list[tuple[Stage, Config]]:
    """Every stage's full config, validated, before any work starts."""
    if scheme not in SCHEMES:
        raise QuadformerError(f"unknown scheme {scheme!r}; use one of {', '.join(SCHEMES)}")
    stages = SCHEMES[scheme]
    if any(s.objective == "kd" for s in stages) and not opts.teacher:
        raise QuadformerError(f"scheme {scheme} distils from a teacher: pass --teacher <checkpoint of a stronger "
                              f"model trained on {base.data.train}> (e.g. train one with --scheme supervised)")
    if opts.teacher and not Path(opts.teacher).exists():
        raise QuadformerError(f"teacher checkpoint not found: {opts.teacher}")
    out_list: list[tuple[Stage, Config]] = []
    prev: Path | None = None
    for st in stages:
        cfg = copy.deepcopy(base)
        cfg.objective.kind = st.objective
        cfg.output.dir = str(out / st.name) if st.name else str(out)
        if st.objective == "kd":
            cfg.objective.teacher = opts.teacher
        if st.ssl_stage:
            cfg.train.snapshots = 0
            _apply(cfg, parse_overrides(opts.stage_a_overrides))
            if opts.stage_a and len(stages) > 1:
                cfg.output.dir = str(opts.stage_a)
        elif prev is not None:
            cfg.model.init_checkpoint = str(prev / "model.safetensors")
            if scheme.endswith("-lowlr"):
                cfg.optim.lr *= opts.lowlr_factor
        if scheme == "supervised-long":
            cfg.train.epochs *= opts.long_factor
        validate(cfg)
        prev = Path(cfg.output.dir)
        out_list.append((st, cfg))
    return out_list


def finished(run_dir: Path) -> bool:
    return (run_dir / "summary.json").is_file() and (run_dir / "model.safetensors").is_file()


def _recipe(d: dict) -> dict:
    """A config minus what does not change the weights (where it is written, progress bars, snapshots)."""
    d = {k: dict(v) if isinstance(v, dict) else v for k, v in d.items()}
    d.get("output", {}).pop("dir", None)
    d.get("train", {}).pop("progress", None)
    d.get("train", {}).pop("snapshots", None)
    return d


INPUT_FILES = (("objective", "teacher"), ("model", "init_checkpoint"))  # compared by content, not by path


def _input_digests(cfg_dict: dict) -> dict[str, str]:
    from ..models.loading import file_digest

    out = {}
    for sec, key in INPUT_FILES:
        path = (cfg_dict.get(sec) or {}).get(key)
        if path and Path(path).is_dir():  # a run folder stands for its exported weights
            path = Path(path) / "model.safetensors"
        if path and Path(path).is_file():
            out[f"{sec}.{key}"] = file_digest(path)
    return out


def record_inputs(run_dir: Path, cfg: Config) -> None:
    """Keep the digests of a stage's input files beside it, so a moved folder still matches."""
    digests = _input_digests(cfg.to_dict())
    if digests:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "inputs.json").write_text(json.dumps(digests, indent=2))


def check_same_recipe(run_dir: Path, cfg: Config) -> None:
    """A finished or half-done run is only reused for the same recipe.

    Input files (teacher, stage-A checkpoint) count by content: the same teacher at another path
    (a moved or copied study folder) is the same recipe."""
    import yaml

    path = run_dir / "config.yaml"
    if not path.is_file():
        return
    theirs = _recipe(yaml.safe_load(path.read_text()) or {})
    ours = _recipe(cfg.to_dict())
    diff = sorted(f"{sec}.{k}" for sec in ours if isinstance(ours[sec], dict)
                  for k in ours[sec] if theirs.get(sec, {}).get(k, ours[sec][k]) != ours[sec][k])
    if any(d in diff for d in map(".".join, INPUT_FILES)):
        recorded = run_dir / "inputs.json"
        their_digests = json.loads(recorded.read_text()) if recorded.is_file() else _input_digests(theirs)
        our_digests = _input_digests(ours)
        diff = [d for d in diff if not (d in our_digests and their_digests.get(d) == our_digests[d])]
    if diff:
        raise QuadformerError(f"{run_dir} holds a run with another recipe ({', '.join(diff[:4])} differ); "
                              f"use another output folder or delete it")


def run_scheme(scheme: str, base: Config, out: str | Path, opts: SchemeOptions | None = None) -> dict[str, Any]:
    """Train every stage of ``scheme`` (resuming or reusing finished stages); the final
    weights are copied to ``out/model.safetensors``. Returns per-stage results."""
    from .engine import train

    out = Path(out)
    opts = opts or SchemeOptions()
    plan = stage_configs(scheme, base, out, opts)
    if opts.stage_a and len(plan) > 1 and not finished(Path(opts.stage_a)):
        raise QuadformerError(f"--stage-a {opts.stage_a} is not a finished run (no summary.json + model.safetensors)")
    results: dict[str, Any] = {"scheme": scheme, "stages": []}
    for st, cfg in plan:
        run_dir = Path(cfg.output.dir)
        check_same_recipe(run_dir, cfg)
        if finished(run_dir):
            log.info("stage %s: reusing the finished run in %s", st.name or scheme, run_dir)
            res = json.loads((run_dir / "summary.json").read_text()).get("final", {})
        else:
            log.info("stage %s: %s training -> %s", st.name or scheme, st.objective, run_dir)
            record_inputs(run_dir, cfg)
            res = train(cfg, resume="auto")
            if res.get("interrupted"):
                results["interrupted"] = True
                return results
        results["stages"].append({"stage": st.name or scheme, "objective": st.objective, "dir": str(run_dir),
                                  "result": res})
    last = Path(plan[-1][1].output.dir)
    if last != out:
        out.mkdir(parents=True, exist_ok=True)
        for name in ("model.safetensors", "model.json"):
            tmp = out / f".{name}.tmp"
            shutil.copyfile(last / name, tmp)
            tmp.replace(out / name)
    (out / "scheme.json").write_text(json.dumps(results, indent=2, default=str))
    return results
