"""Statistics of the diversity-transfer study (spec: diverse_transfer §5).

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


def bootstrap(fn: Callable[[np.ndarray], float], n: int, resamples: int = 2000, seed: int = 0,
              groups: Sequence[Any] | None = None) -> tuple[float, float, np.ndarray]:
    """95 % percentile interval of ``fn(indices)`` over resamples of the ``n`` models
    (or, with ``groups``, of models within each group: seeds within a condition)."""
    rng = np.random.default_rng(seed)
    if groups is None:
        draws = [rng.integers(0, n, n) for _ in range(resamples)]
    else:
        by: dict[Any, np.ndarray] = {}
        for i, g in enumerate(groups):
            by.setdefault(g, []).append(i)  # type: ignore[attr-defined]
        idx = {g: np.asarray(v) for g, v in by.items()}
        draws = [np.concatenate([v[rng.integers(0, len(v), len(v))] for v in idx.values()]) for _ in range(resamples)]
    vals = np.array([fn(ix) for ix in draws], dtype=np.float64)
    vals = vals[np.isfinite(vals)]
    if len(vals) == 0:
        return float("nan"), float("nan"), vals
    lo, hi = np.percentile(vals, [2.5, 97.5])
    return float(lo), float(hi), vals


def paired_contrast(a: dict[int, float], b: dict[int, float]) -> dict[str, float]:
    """Mean, min, max and sign count of a - b over the seeds both have."""
    seeds = sorted(set(a) & set(b))
    diff = np.array([a[s] - b[s] for s in seeds], dtype=np.float64)
    if len(diff) == 0:
        return {"n": 0}
    out = {"n": len(diff), "mean": float(diff.mean()), "min": float(diff.min()), "max": float(diff.max()),
           "positive": int((diff > 0).sum())}
    if len(diff) > 1:
        half = stats.t.ppf(0.975, len(diff) - 1) * diff.std(ddof=1) / np.sqrt(len(diff))
        out.update(ci_low=float(diff.mean() - half), ci_high=float(diff.mean() + half))
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
