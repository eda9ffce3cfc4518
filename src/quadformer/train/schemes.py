"""Pretraining schemes as sequences of engine runs (docs/design/diverse_transfer.md).

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..utils.errors import QuadformerError
from ..utils.io import write_bytes, write_json
from .config import Config, apply_overrides, validate
from .run_folder import recipe_diff, record_inputs, run_lock, stored_config

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
            apply_overrides(cfg, opts.stage_a_overrides)
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


def check_same_recipe(run_dir: Path, cfg: Config) -> None:
    """A finished or half-done run is only reused for the same recipe (see
    :func:`quadformer.train.run_folder.recipe_diff`: input files count by content)."""
    theirs = stored_config(run_dir)
    if theirs is None:
        return
    diff = recipe_diff(theirs, cfg.to_dict(), run_dir)
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
            record_inputs(run_dir, cfg.to_dict())
            res = train(cfg, resume="auto")
            if res.get("interrupted"):
                results["interrupted"] = True
                return results
        results["stages"].append({"stage": st.name or scheme, "objective": st.objective, "dir": str(run_dir),
                                  "result": res})
    last = Path(plan[-1][1].output.dir)
    with run_lock(out):  # the scheme's own files (a single-stage run has released the folder)
        if last != out:
            for name in ("model.safetensors", "model.json"):
                write_bytes(out / name, (last / name).read_bytes())
        write_json(out / "scheme.json", results)
    return results
