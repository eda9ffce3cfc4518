"""The hand-written definitions the library calls replaced, kept only so tests can show the
replacements give the same numbers (see test_transfer.py / test_study.py). Scores here are
fractions, as they were."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np


def _pr_curve(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    ends = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tp = np.cumsum(y)[ends]
    precision = tp / (ends + 1.0)
    recall = tp / tp[-1]
    new_pos = np.diff(np.r_[0, tp])
    return precision, recall, new_pos


def average_precision(y_true: Any, scores: Any) -> float:
    y = (np.asarray(y_true).reshape(-1) > 0.5).astype(np.float64)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y.sum() == 0:
        return float("nan")
    precision, _, new_pos = _pr_curve(y, s)
    return float((precision * new_pos).sum() / y.sum())


def voc11(y_true: np.ndarray, scores: np.ndarray) -> float:
    y = (np.asarray(y_true) > 0.5).astype(np.float64)
    if y.sum() == 0:
        return float("nan")
    precision, recall, _ = _pr_curve(y, np.asarray(scores, dtype=np.float64))
    total = 0.0
    for t in np.linspace(0.0, 1.0, 11):
        ok = recall >= t - 1e-12
        total += precision[ok].max() if ok.any() else 0.0
    return float(total / 11.0)


def threshold_metrics(y_true: Any, probs: Any, threshold: float = 0.5) -> dict[str, float]:
    y = np.asarray(y_true) > 0.5
    p = np.asarray(probs) >= threshold
    tp = (y & p).sum(0).astype(np.float64)
    n_pred = p.sum(0).astype(np.float64)
    n_pos = y.sum(0).astype(np.float64)
    cp = float(np.mean(np.divide(tp, n_pred, out=np.zeros_like(tp), where=n_pred > 0)))
    cr = float(np.mean(np.divide(tp, n_pos, out=np.zeros_like(tp), where=n_pos > 0)))
    op = float(tp.sum() / n_pred.sum()) if n_pred.sum() else 0.0
    or_ = float(tp.sum() / n_pos.sum()) if n_pos.sum() else 0.0

    def f1(a: float, b: float) -> float:
        return 2 * a * b / (a + b) if a + b > 0 else 0.0

    return {"CP": cp, "CR": cr, "CF1": f1(cp, cr), "OP": op, "OR": or_, "OF1": f1(op, or_)}


def standardise_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(0)
    scale = x.std(0)
    scale[scale < 1e-8] = 1.0
    return mean, scale


def t_interval(values: Sequence[float], level: float = 0.95) -> dict[str, float]:
    from scipy import stats

    v = np.asarray(values, dtype=np.float64)
    n = len(v)
    mean = float(v.mean()) if n else float("nan")
    sd = float(v.std(ddof=1)) if n > 1 else 0.0
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n)) if n > 1 else 0.0
    return {"mean": mean, "sd": sd, "ci_low": mean - half, "ci_high": mean + half, "n": n}


def bootstrap(fn: Callable[[np.ndarray], float], n: int, resamples: int = 2000,
              seed: int = 0) -> tuple[float, float, np.ndarray]:
    rng = np.random.default_rng(seed)
    draws = [rng.integers(0, n, n) for _ in range(resamples)]
    vals = np.array([fn(ix) for ix in draws], dtype=np.float64)
    vals = vals[np.isfinite(vals)]
    if len(vals) == 0:
        return float("nan"), float("nan"), vals
    lo, hi = np.percentile(vals, [2.5, 97.5])
    return float(lo), float(hi), vals


def paired_ci(diff: np.ndarray) -> tuple[float, float]:
    from scipy import stats

    half = stats.t.ppf(0.975, len(diff) - 1) * diff.std(ddof=1) / np.sqrt(len(diff))
    return float(diff.mean() - half), float(diff.mean() + half)


@contextlib.contextmanager
def fcntl_lock(path: Path, blocking: bool = True) -> Iterator[bool]:
    import fcntl

    with open(path, "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
