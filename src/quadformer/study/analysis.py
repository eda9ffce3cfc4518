"""Statistics of the diversity-transfer study (docs/design/diverse_transfer.md §5).

Population = architecture x scheme x seed. T = transfer (per task and aggregated),
A = upstream linear-probe accuracy, D = a diversity metric. All functions take plain
numpy arrays so they can be checked against textbook values.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
from scipy import stats


def zscore(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    sd = x.std()
    return (x - x.mean()) / sd if sd > 0 else np.zeros_like(x)


def design(*columns: np.ndarray, fixed_effects: Sequence[Any] | None = None) -> np.ndarray:
    """Intercept + z-scored columns (+ one-hot fixed effects, first level dropped)."""
    cols = [np.ones(len(columns[0]))] + [zscore(c) for c in columns]
    if fixed_effects is not None:
        levels = sorted(set(fixed_effects), key=str)
        cols += [np.array([f == lv for f in fixed_effects], dtype=np.float64) for lv in levels[1:]]
    return np.column_stack(cols)


def ols(y: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, float]:
    """Least-squares coefficients of z-scored ``y`` on design ``x``, and R^2."""
    yz = zscore(y)
    beta, *_ = np.linalg.lstsq(x, yz, rcond=None)
    resid = yz - x @ beta
    ss_tot = float((yz ** 2).sum())
    return beta, (1.0 - float((resid ** 2).sum()) / ss_tot) if ss_tot > 0 else 0.0


def residualise(v: np.ndarray, *controls: np.ndarray, fixed_effects: Sequence[Any] | None = None) -> np.ndarray:
    x = design(*controls, fixed_effects=fixed_effects)
    v = np.asarray(v, dtype=np.float64)
    beta, *_ = np.linalg.lstsq(x, v, rcond=None)
    return v - x @ beta


def partial_corr(d: np.ndarray, t: np.ndarray, a: np.ndarray, method: str = "pearson",
                 fixed_effects: Sequence[Any] | None = None) -> float:
    """r(D, T | A): correlation of the residuals of D and T after regressing each on A
    (and architecture fixed effects). Spearman ranks the residuals."""
    rd = residualise(d, a, fixed_effects=fixed_effects)
    rt = residualise(t, a, fixed_effects=fixed_effects)
    if rd.std() == 0 or rt.std() == 0:
        return float("nan")
    if method == "spearman":
        return float(stats.spearmanr(rd, rt).statistic)
    return float(np.corrcoef(rd, rt)[0, 1])


def regression(t: np.ndarray, a: np.ndarray, d: np.ndarray, fixed_effects: Sequence[Any] | None = None) -> dict:
    """T ~ A versus T ~ A + D on z-scores: betas, R^2 and the gain Delta R^2."""
    b1, r2_a = ols(t, design(a, fixed_effects=fixed_effects))
    b2, r2_ad = ols(t, design(a, d, fixed_effects=fixed_effects))
    return {"beta_A_alone": float(b1[1]), "r2_A": r2_a, "beta_A": float(b2[1]), "beta_D": float(b2[2]),
            "r2_A_D": r2_ad, "delta_r2": r2_ad - r2_a}


def bootstrap(fn: Callable[[np.ndarray], float], n: int, resamples: int = 2000,
              seed: int = 0) -> tuple[float, float, np.ndarray]:
    """95 % percentile interval of ``fn(indices)`` over ``resamples`` resamples (with
    replacement) of the ``n`` models: ``scipy.stats.bootstrap(method="percentile")`` on the
    indices, drawn by ``numpy.random.default_rng(seed)``. Resamples where ``fn`` is not finite
    (e.g. a degenerate draw with no spread) are left out of the interval."""
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    res = stats.bootstrap((np.arange(n),), lambda ix: fn(np.asarray(ix, dtype=np.int64)), n_resamples=resamples,
                          method="percentile", vectorized=False, confidence_level=0.95,
                          random_state=np.random.default_rng(seed))
    vals = np.asarray(res.bootstrap_distribution, dtype=np.float64)
    if np.all(np.isfinite(vals)):
        return float(res.confidence_interval.low), float(res.confidence_interval.high), vals
    vals = vals[np.isfinite(vals)]
    if len(vals) == 0:
        return float("nan"), float("nan"), vals
    lo, hi = np.percentile(vals, [2.5, 97.5])  # what scipy's percentile method computes, on the finite draws
    return float(lo), float(hi), vals


def paired_contrast(a: dict[int, float], b: dict[int, float]) -> dict[str, float]:
    """Mean, min, max and sign count of a - b over the seeds both have, and the 95 % t-interval
    of the mean difference (``scipy.stats.t.interval``)."""
    seeds = sorted(set(a) & set(b))
    diff = np.array([a[s] - b[s] for s in seeds], dtype=np.float64)
    if len(diff) == 0:
        return {"n": 0}
    out = {"n": len(diff), "mean": float(diff.mean()), "min": float(diff.min()), "max": float(diff.max()),
           "positive": int((diff > 0).sum())}
    if len(diff) > 1:
        sem = stats.sem(diff)
        lo, hi = stats.t.interval(0.95, len(diff) - 1, loc=diff.mean(), scale=sem) if sem > 0 else (diff.mean(),) * 2
        out.update(ci_low=float(lo), ci_high=float(hi))
    return out


def metric_analysis(t: np.ndarray, a: np.ndarray, d: np.ndarray, fixed_effects: Sequence[Any] | None = None,
                    resamples: int = 2000, seed: int = 0) -> dict[str, float]:
    """Everything the report says about one (T, D) pair: regression, partial r (Pearson and
    Spearman) with a bootstrap interval over models."""
    t, a, d = (np.asarray(v, dtype=np.float64) for v in (t, a, d))
    fe = list(fixed_effects) if fixed_effects is not None else None
    out = regression(t, a, d, fe)
    out["partial_r"] = partial_corr(d, t, a, "pearson", fe)
    out["partial_r_spearman"] = partial_corr(d, t, a, "spearman", fe)

    def stat(ix: np.ndarray) -> float:
        return partial_corr(d[ix], t[ix], a[ix], "pearson", [fe[i] for i in ix] if fe else None)

    lo, hi, _ = bootstrap(stat, len(t), resamples, seed)
    out.update(partial_r_ci_low=lo, partial_r_ci_high=hi, n_models=len(t))
    return out
