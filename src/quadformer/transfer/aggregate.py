"""Across-task aggregates of per-task scores in percent (docs/design/diverse_transfer.md §3).

* ``logit_mean`` (**headline**): mean over tasks of logit(s / 100), s / 100 clipped to
  [1e-4, 1 - 1e-4]; ``logit_mean_percent`` = 100 sigmoid of it, for reading on the score scale.
* ``mean_rank``: per task, rank the models (1 = best; ties share the average rank), then
  average over tasks.
* ``mean``: plain mean of the scores.
* ``z_mean``: per task, z-score across models (population sd; a task where every model scores
  the same contributes 0), then average over tasks.

Only tasks scored for every model are aggregated; the others are listed in ``excluded_tasks``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..utils.io import write_csv

__all__ = ["HEADLINE", "CLIP", "aggregate", "write_aggregate_csv"]

HEADLINE = "logit_mean"
KEYS = ("logit_mean", "logit_mean_percent", "mean_rank", "mean", "z_mean")
CLIP = 1e-4


def _logit(percent: np.ndarray) -> np.ndarray:
    s = np.clip(percent / 100.0, CLIP, 1 - CLIP)
    return np.log(s / (1 - s))


def _ranks(column: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(-column, method="average")


def aggregate(scores: Mapping[str, Mapping[str, float]]) -> dict[str, Any]:
    """``scores[model][task]`` (percent) -> ``{"headline": "logit_mean", "tasks": [...],
    "excluded_tasks": [...], "models": {model: {"logit_mean", "logit_mean_percent", "mean_rank",
    "mean", "z_mean"}}}``."""
    models = list(scores)
    all_tasks: list[str] = []
    for m in models:
        for t in scores[m]:
            if t not in all_tasks:
                all_tasks.append(t)

    def ok(m: str, t: str) -> bool:
        v = scores[m].get(t)
        return v is not None and not (isinstance(v, float) and math.isnan(v))

    tasks = [t for t in all_tasks if all(ok(m, t) for m in models)]
    excluded = [t for t in all_tasks if t not in tasks]
    out: dict[str, Any] = {"headline": HEADLINE, "tasks": tasks, "excluded_tasks": excluded, "models": {}}
    if not models or not tasks:
        out["models"] = {m: {k: None for k in KEYS} for m in models}
        return out
    s = np.array([[float(scores[m][t]) for t in tasks] for m in models], dtype=np.float64)  # [M, T]
    logit = _logit(s).mean(1)
    ranks = np.stack([_ranks(s[:, j]) for j in range(s.shape[1])], axis=1).mean(1)
    sd = s.std(0)
    z = np.where(sd > 0, (s - s.mean(0)) / np.where(sd > 0, sd, 1.0), 0.0).mean(1)
    for i, m in enumerate(models):
        out["models"][m] = {"logit_mean": float(logit[i]),
                            "logit_mean_percent": float(100.0 / (1 + math.exp(-logit[i]))),
                            "mean_rank": float(ranks[i]), "mean": float(s[i].mean()), "z_mean": float(z[i])}
    return out


def write_aggregate_csv(agg: dict[str, Any], path: str | Path) -> None:
    """One row per model, headline first (written atomically)."""
    rows = [{"model": m, **{k: row[k] for k in KEYS}, "tasks": len(agg["tasks"]), "headline": agg["headline"]}
            for m, row in agg["models"].items()]
    write_csv(path, rows, ["model", *KEYS, "tasks", "headline"])
