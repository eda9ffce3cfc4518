"""Probes on frozen features (docs/design/diverse_transfer.md §3): linear probe, kNN and few-shot.

Honest selection everywhere: every hyper-parameter (C, k) is chosen on a validation split carved
from the training features with a fixed seed (:func:`validation_split`); the test features are
used once, after the choice, to report. All of it is deterministic (fixed seeds, L-BFGS,
stable sorts).

* :func:`linear_probe` -- standardise on train statistics; single-label: multinomial L2 logistic
  regression (scikit-learn, L-BFGS, ``max_iter`` >= 1000, a warning when a fit does not
  converge); multi-label: one-vs-rest binary logistic probes sharing one C picked by validation
  mAP. C grid ``full`` = 7 log-spaced values 1e-3..1e3, ``smoke`` = {0.01, 0.1, 1, 10}; ties go to
  the smaller C; refit on all train; fits along the grid are warm-started.
* :func:`knn_probe` -- cosine similarity of L2-normalised features, the top-k neighbours vote with
  weight exp(s / 0.07); k in {10, 20, 200} capped at the reference-set size, all reported; the
  headline k is picked on validation. Multi-label: the weighted average of the neighbours' label
  vectors is the score.
* :func:`fewshot_probe` -- k in {1, 5, 10} examples per class, >= 20 seeded draws that depend
  only on the labels, k and the seed (:func:`fewshot_draws`, hence identical for every model);
  a linear probe with fixed C, or C chosen by a nested validation split inside the draw when
  k >= 5; mean, sd and a 95 % t-interval over draws.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import warnings
from dataclasses import dataclass, field, fields
from typing import Any, Sequence

import numpy as np

from ..utils.io import jsonable
from .metrics import headline_key, multi_label_metrics, single_label_metrics
from ..utils.errors import QuadformerError

__all__ = [
    "C_GRIDS",
    "resolve_grid",
    "select_best",
    "grid_search",
    "Standardiser",
    "validation_split",
    "LinearProbe",
    "fit_linear",
    "linear_probe",
    "ProbeResult",
    "knn_scores",
    "knn_probe",
    "fewshot_draws",
    "fewshot_probe",
    "t_interval",
]

log = logging.getLogger(__name__)

C_GRIDS: dict[str, tuple[float, ...]] = {
    "full": tuple(float(c) for c in np.logspace(-3, 3, 7)),
    "smoke": (0.01, 0.1, 1.0, 10.0),
}
KNN_KS = (10, 20, 200)
KNN_TEMPERATURE = 0.07


def resolve_grid(grid: str | Sequence[float]) -> tuple[float, ...]:
    """A named C grid (``full`` / ``smoke``) or an explicit list, sorted ascending."""
    if isinstance(grid, str):
        if grid not in C_GRIDS:
            raise ValueError(f"unknown C grid {grid!r}; use {', '.join(C_GRIDS)} or a list of values")
        return C_GRIDS[grid]
    values = tuple(sorted(float(c) for c in grid))
    if not values or min(values) <= 0:
        raise ValueError(f"a C grid needs positive values, got {list(grid)}")
    return values


# ------------------------------------------------------------------------------ helpers


@dataclass
class Standardiser:
    """Per-feature ``(x - mean) / scale`` with train statistics: ``sklearn.preprocessing.StandardScaler``
    (population sd; a constant feature gets scale 1). ``mean``/``scale`` are kept so a probe can
    be folded back into raw feature space (:meth:`LinearProbe.raw_space`)."""

    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray) -> "Standardiser":
        from sklearn.preprocessing import StandardScaler

        sc = StandardScaler().fit(np.asarray(x, dtype=np.float64))
        return cls(sc.mean_, sc.scale_)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, dtype=np.float64) - self.mean) / self.scale


def validation_split(y: np.ndarray, val_frac: float = 0.25, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(train_idx, val_idx)``, sorted. Single-label ``y`` ([N] ints): stratified, per class
    ``max(1, round(val_frac * n_c))`` to validation while at least one stays in train (classes with
    one example stay in train). Multi-label ``y`` ([N, C]): a seeded random split."""
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    if y.ndim == 2:
        n = len(y)
        perm = rng.permutation(n)
        n_val = min(n - 1, max(1, int(round(val_frac * n)))) if n > 1 else 0
        return np.sort(perm[n_val:]), np.sort(perm[:n_val])
    val: list[np.ndarray] = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(len(idx))]
        n_val = min(len(idx) - 1, max(1, int(round(val_frac * len(idx)))))
        val.append(idx[:n_val])
    v = np.sort(np.concatenate(val)) if val else np.zeros(0, np.int64)
    mask = np.ones(len(y), bool)
    mask[v] = False
    return np.flatnonzero(mask), v


def t_interval(values: Sequence[float], level: float = 0.95) -> dict[str, float]:
    """Mean, sd (ddof 1) and the two-sided t confidence interval of the mean
    (``scipy.stats.t.interval`` with the standard error ``scipy.stats.sem``); one value: a
    zero-width interval."""
    from scipy import stats

    v = np.asarray(values, dtype=np.float64)
    n = len(v)
    mean = float(v.mean()) if n else float("nan")
    if n < 2:
        return {"mean": mean, "sd": 0.0, "ci_low": mean, "ci_high": mean, "n": n}
    sd = float(v.std(ddof=1))
    if sd == 0:
        return {"mean": mean, "sd": 0.0, "ci_low": mean, "ci_high": mean, "n": n}
    lo, hi = stats.t.interval(level, n - 1, loc=mean, scale=stats.sem(v))
    return {"mean": mean, "sd": sd, "ci_low": float(lo), "ci_high": float(hi), "n": n}


def select_best(scores: dict[float, float]) -> float:
    """The key with the highest score; ties -> the smallest key."""
    best_key, best = None, -math.inf
    for key in sorted(scores):
        s = scores[key]
        if not math.isnan(s) and s > best + 1e-12:
            best_key, best = key, s
    return sorted(scores)[0] if best_key is None else best_key


# ------------------------------------------------------------------------------ linear probe


@dataclass
class LinearProbe:
    """A fitted probe in standardised space; :meth:`decision` gives logits ``[N, C]`` for all
    ``num_classes`` columns (classes unseen in training get -inf for single-label)."""

    standardiser: Standardiser
    coef: np.ndarray  # [C, D] (standardised space)
    intercept: np.ndarray  # [C]
    multilabel: bool
    num_classes: int
    C: float
    converged: bool = True

    def decision(self, x: np.ndarray) -> np.ndarray:
        return self.standardiser(x) @ self.coef.T + self.intercept

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        z = self.decision(x)
        if self.multilabel:
            return 1.0 / (1.0 + np.exp(-z))
        z = z - z.max(1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(1, keepdims=True)

    def raw_space(self) -> tuple[np.ndarray, np.ndarray]:
        """``(weight [C, D], bias [C])`` acting on un-standardised features (for LP-FT heads):
        W x + b = W_s (x - mean) / scale + b_s. Unseen classes get weight 0, bias -1e4."""
        w = self.coef / self.standardiser.scale
        b = self.intercept - self.coef @ (self.standardiser.mean / self.standardiser.scale)
        b = np.where(np.isfinite(b), b, -1e4)
        w = np.where(np.isfinite(self.intercept)[:, None], w, 0.0)
        return w, b


def _blas_threads():
    """BLAS thread limit for the probe fits (env ``QUADFORMER_PROBE_THREADS``, default 1): the
    matrices are small, and several BLAS threads on a shared machine make L-BFGS 10-50x slower."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(int(os.environ.get("QUADFORMER_PROBE_THREADS", "1")), user_api="blas")


def _softmax_objective(params: np.ndarray, x: np.ndarray, y1h: np.ndarray, l2: float) -> tuple[float, np.ndarray]:
    """Mean multinomial cross-entropy + l2/2 ||W||^2 (intercept not penalised) and its gradient."""
    n, d = x.shape
    k = y1h.shape[1]
    w, b = params[:d * k].reshape(d, k), params[d * k:]
    z = x @ w + b
    z -= z.max(1, keepdims=True)
    lse = np.log(np.exp(z).sum(1))
    loss = (lse.sum() - (z * y1h).sum()) / n + 0.5 * l2 * (w * w).sum()
    g = (np.exp(z - lse[:, None]) - y1h) / n
    return float(loss), np.concatenate([(x.T @ g + l2 * w).ravel(), g.sum(0)])


def _binary_objective(params: np.ndarray, x: np.ndarray, y: np.ndarray, l2: float) -> tuple[float, np.ndarray]:
    """Sum over labels of the mean binary log-loss + l2/2 ||w_l||^2: independent one-vs-rest
    problems solved jointly (the optimum is each label's own)."""
    n, d = x.shape
    k = y.shape[1]
    w, b = params[:d * k].reshape(d, k), params[d * k:]
    z = x @ w + b
    e = np.exp(-np.abs(z))
    loss = (np.maximum(z, 0.0) + np.log1p(e) - y * z).sum() / n + 0.5 * l2 * (w * w).sum()
    inv = 1.0 / (1.0 + e)
    g = (np.where(z >= 0, inv, e * inv) - y) / n
    return float(loss), np.concatenate([(x.T @ g + l2 * w).ravel(), g.sum(0)])


class _Fitter:
    """L2 logistic regression by L-BFGS on one design matrix, warm-started along an ascending C
    grid.

    ``solver="lbfgs"`` (default) minimises scikit-learn's ``LogisticRegression`` objective
    (mean log-loss + ||W||^2 / (2 C n), intercept unpenalised; multinomial softmax over the
    classes present, or one-vs-rest binary problems sharing C) with the same optimiser and
    stopping rule scikit-learn uses (scipy L-BFGS-B, ``gtol=tol``, ``maxls=50``,
    ``ftol=64 eps``) but a lean objective: the one-vs-rest labels are solved in one call.
    ``solver="sklearn"`` calls ``LogisticRegression`` itself (reference; tests compare the two).
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, multilabel: bool, num_classes: int, max_iter: int,
                 tol: float = 1e-4, solver: str = "lbfgs") -> None:
        if solver not in ("lbfgs", "sklearn"):
            raise ValueError(f"solver must be lbfgs or sklearn, got {solver!r}")
        self.x = np.ascontiguousarray(x, dtype=np.float64)
        self.multilabel, self.num_classes = multilabel, num_classes
        self.max_iter, self.tol, self.solver = int(max_iter), float(tol), solver
        self.not_converged: list[float] = []
        self._params: np.ndarray | None = None
        if multilabel:
            yb = (np.asarray(y) > 0.5).astype(np.float64)
            self.columns = np.array([c for c in range(yb.shape[1]) if 0 < yb[:, c].sum() < len(yb)], np.int64)
            self.target = yb[:, self.columns]
            prior = np.clip(yb.mean(0), 1e-4, 1 - 1e-4)
            self.prior_logit = np.log(prior / (1 - prior))
        else:
            y = np.asarray(y).astype(np.int64)
            self.classes = np.unique(y)
            self.target = (y[:, None] == self.classes[None, :]).astype(np.float64)
        self._sk: dict[int, Any] = {}

    def fit(self, C: float) -> tuple[np.ndarray, np.ndarray, bool]:
        """``(coef [num_classes, D], intercept [num_classes], converged)`` at this C."""
        with _blas_threads():
            if self.solver == "sklearn":
                coef, b, ok = self._fit_sklearn(C)
            else:
                coef, b, ok = self._fit_lbfgs(C)
        if not ok:
            self.not_converged.append(C)
        return coef, b, ok

    def _outputs(self, w: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        d = self.x.shape[1]
        coef = np.zeros((self.num_classes, d))
        if self.multilabel:
            intercept = self.prior_logit.copy()  # constant labels: a constant logit at the train prior
            coef[self.columns], intercept[self.columns] = w, b
        else:
            intercept = np.full(self.num_classes, -np.inf)
            coef[self.classes], intercept[self.classes] = w, b
        return coef, intercept

    def _fit_lbfgs(self, C: float) -> tuple[np.ndarray, np.ndarray, bool]:
        from scipy.optimize import minimize

        n, d = self.x.shape
        k = self.target.shape[1]
        if k == 0 or (not self.multilabel and k == 1):
            return (*self._outputs(np.zeros((k, d)), np.zeros(k)), True)
        fun = _binary_objective if self.multilabel else _softmax_objective
        x0 = self._params if self._params is not None else np.zeros(d * k + k)
        res = minimize(fun, x0, args=(self.x, self.target, 1.0 / (C * n)), method="L-BFGS-B", jac=True,
                       options={"maxiter": self.max_iter, "maxls": 50, "gtol": self.tol,
                                "ftol": 64 * np.finfo(float).eps})
        self._params = res.x
        w = res.x[:d * k].reshape(d, k).T
        return (*self._outputs(w, res.x[d * k:]), bool(res.status == 0))

    def _fit_sklearn(self, C: float) -> tuple[np.ndarray, np.ndarray, bool]:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression

        def model(key: int) -> Any:
            if key not in self._sk:
                self._sk[key] = LogisticRegression(C=C, solver="lbfgs", max_iter=self.max_iter, tol=self.tol,
                                                   warm_start=True)
            self._sk[key].set_params(C=C)
            return self._sk[key]

        d = self.x.shape[1]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            if self.multilabel:
                w, b = np.zeros((len(self.columns), d)), np.zeros(len(self.columns))
                for i in range(len(self.columns)):
                    m = model(i).fit(self.x, self.target[:, i])
                    w[i], b[i] = m.coef_[0], m.intercept_[0]
            elif len(self.classes) == 1:
                w, b = np.zeros((1, d)), np.zeros(1)
            else:
                m = model(0).fit(self.x, self.target.argmax(1))
                w, b = m.coef_, m.intercept_
                if len(self.classes) == 2:  # sklearn's binary form -> two softmax-equivalent rows
                    w, b = np.stack([-w[0] / 2, w[0] / 2]), np.array([-b[0] / 2, b[0] / 2])
        ok = not any(issubclass(c.category, ConvergenceWarning) for c in caught)
        return (*self._outputs(w, b), ok)


def _task_metrics(y: np.ndarray, scores: np.ndarray, multilabel: bool, class_names: list[str] | None,
                  probs: np.ndarray | None = None, train_y: np.ndarray | None = None) -> dict[str, Any]:
    """Test metrics; multi-label classes without a positive in ``train_y`` are left out of mAP."""
    if multilabel:
        return multi_label_metrics(y, scores, probs, class_names, train_targets=train_y)
    return single_label_metrics(y, scores)


def _num_classes(y: np.ndarray, multilabel: bool, num_classes: int | None) -> int:
    if num_classes is not None:
        return int(num_classes)
    return int(y.shape[1]) if multilabel else int(y.max()) + 1


def fit_linear(x: np.ndarray, y: np.ndarray, C: float, *, multilabel: bool = False, num_classes: int | None = None,
               max_iter: int = 1000, solver: str = "lbfgs") -> LinearProbe:
    """One probe at a fixed C (standardised on ``x``)."""
    nc = _num_classes(y, multilabel, num_classes)
    st = Standardiser.fit(x)
    coef, intercept, ok = _Fitter(st(x), y, multilabel, nc, max_iter, solver=solver).fit(C)
    return LinearProbe(st, coef, intercept, multilabel, nc, C, ok)


def grid_search(x: np.ndarray, y: np.ndarray, grid: tuple[float, ...], multilabel: bool, nc: int,
                 val_frac: float, seed: int, max_iter: int,
                 solver: str = "lbfgs") -> tuple[float, dict[float, float], list[float]]:
    """C picked on a validation split of (x, y): ``(best C, {C: val score}, not-converged Cs)``."""
    tr, va = validation_split(y, val_frac, seed)
    st = Standardiser.fit(x[tr])
    xtr, xva = st(x[tr]), st(x[va])
    fitter = _Fitter(xtr, y[tr], multilabel, nc, max_iter, solver=solver)
    key = headline_key(multilabel)
    scores: dict[float, float] = {}
    for C in grid:
        coef, intercept, _ = fitter.fit(C)
        logits = xva @ coef.T + intercept
        scores[C] = float(_task_metrics(y[va], logits, multilabel, None)[key])
    return select_best(scores), scores, fitter.not_converged


@dataclass
class ProbeResult:
    """What a probe reports. ``metrics`` are on the test set (percent); ``score`` is
    the headline (top-1, or mAP for multi-label)."""

    protocol: str
    multilabel: bool
    score: float
    metrics: dict[str, Any]
    selection: dict[str, Any] = field(default_factory=dict)
    n_train: int = 0
    n_test: int = 0
    warnings: list[str] = field(default_factory=list)
    probe: LinearProbe | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return jsonable({f.name: getattr(self, f.name) for f in fields(self) if f.name != "probe"})


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, *,
                 multilabel: bool = False, num_classes: int | None = None, class_names: list[str] | None = None,
                 grid: str | Sequence[float] = "full", val_frac: float = 0.25, seed: int = 0,
                 max_iter: int = 1000, solver: str = "lbfgs") -> ProbeResult:
    """Linear probe (docs/design/diverse_transfer.md §3): C picked on a stratified validation split of train, refit on all
    train, test scored once. See the module docstring."""
    if max_iter < 1000:
        raise ValueError(f"max_iter must be >= 1000 (docs/design/diverse_transfer.md §3), got {max_iter}")
    train_x = np.asarray(train_x, dtype=np.float64)
    test_x = np.asarray(test_x, dtype=np.float64)
    nc = _num_classes(np.asarray(train_y), multilabel, num_classes)
    cs = resolve_grid(grid)
    best, val_scores, nc_val = grid_search(train_x, np.asarray(train_y), cs, multilabel, nc, val_frac, seed, max_iter,
                                            solver)
    probe = fit_linear(train_x, np.asarray(train_y), best, multilabel=multilabel, num_classes=nc, max_iter=max_iter,
                       solver=solver)
    logits = probe.decision(test_x)
    probs = probe.probabilities(test_x) if multilabel else None
    metrics = _task_metrics(np.asarray(test_y), logits, multilabel, class_names, probs, np.asarray(train_y))
    notes = []
    bad = sorted(set(nc_val + ([best] if not probe.converged else [])))
    if bad:
        msg = (f"linear probe: L-BFGS did not converge within {max_iter} iterations for C in "
               f"{[float(c) for c in bad]} (results are still reported; consider more iterations)")
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
        notes.append(msg)
    if len(cs) > 1 and best in (cs[0], cs[-1]):
        notes.append(f"chosen C={best:g} is at the edge of the grid {list(cs)}")
    sel = {"C": best, "grid": list(cs), "val_scores": {f"{c:g}": s for c, s in val_scores.items()},
           "val_metric": headline_key(multilabel), "val_frac": val_frac, "seed": seed,
           "converged": not bad}
    return ProbeResult("linear", multilabel, float(metrics[headline_key(multilabel)]), metrics, sel,
                       len(train_x), len(test_x), notes, probe)


# ------------------------------------------------------------------------------ kNN


def _l2n(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def knn_scores(train_x: np.ndarray, train_y: np.ndarray, query_x: np.ndarray, ks: Sequence[int], *,
               multilabel: bool = False, num_classes: int | None = None, temperature: float = KNN_TEMPERATURE,
               chunk: int = 1024) -> dict[int, np.ndarray]:
    """Class scores ``[Nq, C]`` of the weighted kNN vote for each k (k capped at the number of
    reference points; the returned keys are the capped ks). Neighbours ranked by cosine
    similarity (ties: lower index first), weight exp(s / temperature)."""
    train_y = np.asarray(train_y)
    nc = _num_classes(train_y, multilabel, num_classes)
    t, q = _l2n(train_x), _l2n(query_x)
    n_ref = len(t)
    kk = sorted({max(1, min(int(k), n_ref)) for k in ks})
    kmax = kk[-1]
    out = {k: np.zeros((len(q), nc)) for k in kk}
    onehot = train_y.astype(np.float64) if multilabel else np.eye(nc)[train_y.astype(np.int64)]
    for s in range(0, len(q), chunk):
        sim = q[s:s + chunk] @ t.T
        # stable descending order: sort by (-sim, index)
        order = np.argsort(-sim, axis=1, kind="stable")[:, :kmax]
        top = np.take_along_axis(sim, order, axis=1)
        w = np.exp(top / temperature)
        lab = onehot[order]  # [b, kmax, C]
        for k in kk:
            votes = np.einsum("bk,bkc->bc", w[:, :k], lab[:, :k])
            if multilabel:
                votes = votes / w[:, :k].sum(1, keepdims=True)
            out[k][s:s + chunk] = votes
    return out


def knn_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, *,
              ks: Sequence[int] = KNN_KS, multilabel: bool = False, num_classes: int | None = None,
              class_names: list[str] | None = None, temperature: float = KNN_TEMPERATURE,
              val_frac: float = 0.25, seed: int = 0) -> ProbeResult:
    """Weighted kNN (docs/design/diverse_transfer.md §3): every k reported on test; the headline k is the one with the
    best validation score (validation carved from train, reference = the rest; ties -> smaller k)."""
    train_y, test_y = np.asarray(train_y), np.asarray(test_y)
    nc = _num_classes(train_y, multilabel, num_classes)
    key = headline_key(multilabel)
    tr, va = validation_split(train_y, val_frac, seed)
    val_scores_k = knn_scores(train_x[tr], train_y[tr], train_x[va], ks, multilabel=multilabel, num_classes=nc,
                              temperature=temperature)
    cap_val = {int(k): max(1, min(int(k), len(tr))) for k in ks}
    val_scores = {k: float(_task_metrics(train_y[va], val_scores_k[cap_val[k]], multilabel, None)[key]) for k in ks}
    best_k = int(select_best({float(k): v for k, v in val_scores.items()}))
    test_k = knn_scores(train_x, train_y, test_x, ks, multilabel=multilabel, num_classes=nc, temperature=temperature)
    cap = {int(k): max(1, min(int(k), len(train_x))) for k in ks}
    per_k = {}
    for k in ks:
        m = _task_metrics(test_y, test_k[cap[k]], multilabel, class_names, train_y=train_y)
        per_k[str(k)] = {"k_used": cap[k], **({key: m[key], "map_voc11": m["map_voc11"]} if multilabel
                                              else m)}
    metrics = dict(_task_metrics(test_y, test_k[cap[best_k]], multilabel, class_names, train_y=train_y))
    metrics["per_k"] = per_k
    sel = {"k": best_k, "k_used": cap[best_k], "ks": [int(k) for k in ks],
           "val_scores": {str(k): v for k, v in val_scores.items()}, "val_metric": key,
           "temperature": temperature, "val_frac": val_frac, "seed": seed}
    return ProbeResult("knn", multilabel, float(metrics[key]), metrics, sel, len(train_x), len(test_x))


# ------------------------------------------------------------------------------ few-shot


def fewshot_draws(train_y: np.ndarray, shots: int, n_draws: int = 20, seed: int = 0) -> list[np.ndarray]:
    """``n_draws`` index sets with exactly ``shots`` examples of every class present in
    ``train_y`` (single-label). They depend only on the labels, ``shots``, the draw number and
    ``seed`` -- never on features -- so every model sees the same draws."""
    y = np.asarray(train_y)
    if y.ndim != 1:
        raise ValueError("few-shot draws need single-label targets")
    classes, counts = np.unique(y, return_counts=True)
    short = [int(c) for c, n in zip(classes, counts) if n < shots]
    if short:
        raise QuadformerError(f"{shots}-shot draws need >= {shots} training examples per class; classes {short} "
                         f"have fewer")
    by_class = [np.flatnonzero(y == c) for c in classes]
    draws = []
    for d in range(n_draws):
        rng = np.random.default_rng([int(seed), int(shots), d])
        draws.append(np.sort(np.concatenate([idx[rng.choice(len(idx), shots, replace=False)] for idx in by_class])))
    return draws


def fewshot_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, *,
                  shots: Sequence[int] = (1, 5, 10), n_draws: int = 20, seed: int = 0, C: float = 1.0,
                  grid: str | Sequence[float] = "smoke", nested_min_shots: int = 5, num_classes: int | None = None,
                  max_iter: int = 1000) -> ProbeResult:
    """Few-shot linear probes (docs/design/diverse_transfer.md §3; single-label only). For ``k < nested_min_shots`` the
    probe uses the fixed ``C``; otherwise C is chosen on ``grid`` by a stratified validation
    split inside the draw (one example per class at k = 5, two at k = 10), then refit on the draw.
    Reports per k: every draw's test top-1 and mean per-class accuracy, mean, sd, 95 % t-interval.
    The headline ``score`` is the mean top-1 at the middle k (5 by default)."""
    train_y, test_y = np.asarray(train_y), np.asarray(test_y)
    if train_y.ndim != 1:
        raise ValueError("few-shot probes are defined for single-label tasks")
    if n_draws < 1:
        raise ValueError("n_draws must be >= 1")
    nc = _num_classes(train_y, False, num_classes)
    test_x = np.asarray(test_x, dtype=np.float64)
    cs = resolve_grid(grid)
    per_shot: dict[str, Any] = {}
    nonconv = 0
    for k in shots:
        top1s, mpcs, chosen = [], [], []
        draws = fewshot_draws(train_y, int(k), n_draws, seed)
        digest = hashlib.sha256(b"".join(np.asarray(d, np.int64).tobytes() for d in draws)).hexdigest()[:16]
        for idx in draws:
            x, y = np.asarray(train_x, dtype=np.float64)[idx], train_y[idx]
            c = float(C)
            if k >= nested_min_shots and len(cs) > 1:
                c, _, bad = grid_search(x, y, cs, False, nc, 0.2, seed, max_iter)
                nonconv += len(bad)
            probe = fit_linear(x, y, c, num_classes=nc, max_iter=max_iter)
            nonconv += 0 if probe.converged else 1
            m = single_label_metrics(test_y, probe.decision(test_x))
            top1s.append(m["top1"])
            mpcs.append(m["mean_per_class_acc"])
            chosen.append(c)
        per_shot[str(k)] = {"top1": t_interval(top1s), "mean_per_class_acc": t_interval(mpcs),
                            "draws_top1": top1s, "C": chosen, "draws_digest": digest,
                            "C_selection": "nested validation" if k >= nested_min_shots and len(cs) > 1 else "fixed"}
    notes = []
    if nonconv:
        msg = f"few-shot: {nonconv} L-BFGS fits did not converge within {max_iter} iterations"
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
        notes.append(msg)
    ks = [str(k) for k in shots]
    head = "5" if "5" in ks else ks[len(ks) // 2]
    metrics = {"top1": per_shot[head]["top1"]["mean"], "headline_shots": int(head), "per_shots": per_shot}
    sel = {"fixed_C": float(C), "nested_grid": list(cs), "nested_min_shots": nested_min_shots,
           "n_draws": n_draws, "seed": seed}
    return ProbeResult("fewshot", False, float(metrics["top1"]), metrics, sel, int(len(train_y)), int(len(test_y)),
                       notes)
