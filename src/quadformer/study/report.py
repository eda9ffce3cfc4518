"""The study's report: tables of means and paired differences over seeds, regressions of
transfer on accuracy and each diversity metric, target checks, and scatter plots.
Accuracies and per-task transfer scores are in percent; T_agg is a logit mean."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..transfer import aggregate
from ..utils.figures import save_figure
from ..utils.io import write_csv, write_json, write_text
from .analysis import metric_analysis, paired_contrast, partial_corr

METRICS = ("W1", "W2", "A1", "A2", "A3")  # A3: lower = more diverse
DELTA_METRICS = tuple(f"d_{m}" for m in METRICS)


def task_columns(rows: Sequence[dict]) -> tuple[list[str], list[str]]:
    """(single-label tasks, multi-label tasks) measured in ``rows``."""
    multi = sorted({t for r in rows for t in r.get("multilabel_tasks", [])})
    tasks = sorted({k[2:] for r in rows for k in r if k.startswith("T_") and k != "T_agg" and k != "T_single"})
    return [t for t in tasks if t not in multi], multi


def add_aggregates(rows: list[dict]) -> None:
    """T_agg (logit mean over all tasks, the headline) and T_single (single-label tasks)."""
    single, multi = task_columns(rows)
    for name, tasks in (("T_agg", single + multi), ("T_single", single)):
        agg = aggregate({str(i): {t: r.get(f"T_{t}") for t in tasks} for i, r in enumerate(rows)})
        for i, r in enumerate(rows):
            r[name] = agg["models"][str(i)]["logit_mean"]


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{v:.{digits}f}"


def summary_table(rows: Sequence[dict], columns: Sequence[str], conditions: Sequence[str]) -> str:
    lines = ["| condition | n | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
    for c in conditions:
        rs = [r for r in rows if r["condition"] == c]
        if not rs:
            continue
        cells = []
        for col in columns:
            vals = np.array([r[col] for r in rs if r.get(col) is not None], dtype=np.float64)
            if len(vals) == 0:
                cells.append("–")
            elif len(vals) == 1:
                cells.append(_fmt(vals[0]))
            else:
                cells.append(f"{vals.mean():.3f} ± {vals.std(ddof=1):.3f}")
        lines.append(f"| {c} | {len(rs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def contrasts(rows: Sequence[dict], pairs: Sequence[tuple[str, str]], columns: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for a, b in pairs:
        by = {c: {(r.get("arch"), r["seed"]): r for r in rows if r["condition"] == c} for c in (a, b)}  # pairs within arch
        if not by[a] or not by[b]:
            continue
        out[f"{a}-{b}"] = {col: paired_contrast({s: r[col] for s, r in by[a].items() if r.get(col) is not None},
                                                {s: r[col] for s, r in by[b].items() if r.get(col) is not None})
                           for col in columns}
    return out


def contrast_table(con: dict[str, Any], columns: Sequence[str]) -> str:
    lines = ["| contrast | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for name, cols in con.items():
        cells = []
        for col in columns:
            c = cols.get(col, {})
            cells.append("–" if not c.get("n") else f"{c['mean']:+.3f} ({c['positive']}/{c['n']}+)")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def h3_target(rows: Sequence[dict], single: Sequence[str]) -> list[dict[str, Any]]:
    """ssl_sup(-kd) vs sup(-kd): share of out-of-domain single-label tasks won by linear probe
    (mean paired difference > 0), upstream accuracy within 2 points (percent), A1 higher, seeds >= 5."""
    out = []
    for a, b in (("ssl_sup", "sup"), ("ssl_sup_kd", "sup_kd")):
        con = contrasts(rows, [(a, b)], [f"T_{t}" for t in single] + ["up_acc", "up_lp", "A1"]).get(f"{a}-{b}")
        if not con:
            continue
        wins = [t for t in single if con[f"T_{t}"].get("n") and con[f"T_{t}"]["mean"] > 0]
        up = con["up_acc"].get("mean")
        n = con["A1"].get("n", 0)
        share = len(wins) / max(1, len(single))
        ok = share >= 0.8 and up is not None and abs(up) <= 2.0 and con["A1"].get("mean", 0) > 0 and n >= 5
        out.append({"contrast": f"{a} vs {b}", "tasks_won": wins, "share_won": share, "up_acc_diff": up,
                    "A1_diff": con["A1"].get("mean"), "seeds": n, "met": ok})
    return out


def h4_analysis(rows: Sequence[dict], single: Sequence[str], multi: Sequence[str], resamples: int = 2000) -> dict:
    """Per diversity metric: regression and partial r(D, T | A) on the aggregated transfer,
    with a bootstrap interval, and the sign of partial r per task."""
    pop = [r for r in population(rows) if r.get("up_lp") is not None]
    if len(pop) < 4:
        return {}
    a = np.array([r["up_lp"] for r in pop])
    fe = [r["arch"] for r in pop] if len({r["arch"] for r in pop}) > 1 else None
    out: dict[str, Any] = {}
    for m in METRICS + DELTA_METRICS:
        if any(r.get(m) is None for r in pop):
            continue
        d = np.array([r[m] for r in pop])
        res = metric_analysis(np.array([r["T_agg"] for r in pop]), a, d, fe, resamples)
        signs = {t: partial_corr(d, np.array([r[f"T_{t}"] for r in pop]), a, "pearson", fe) for t in single + multi}
        res["per_task_partial_r"] = signs
        sign = -1 if m.endswith("A3") else 1  # lower A3 = more diverse
        pos = sum(1 for v in signs.values() if np.isfinite(v) and sign * v > 0)
        res["holds"] = bool(sign * res["partial_r_ci_low" if sign > 0 else "partial_r_ci_high"] > 0
                            and pos > len(signs) / 2) if np.isfinite(res["partial_r_ci_low"]) else False
        res["target_met"] = bool(sign * res["partial_r"] > 0.3 and res["holds"])
        out[m] = res
    return out


def h4_table(h4: dict) -> str:
    lines = ["| metric | partial r (95% CI) | Spearman | β_D | R² A | R² A+D | ΔR² | tasks with the diverse sign | holds |",
             "|---|---|---|---|---|---|---|---|---|"]
    for m, r in h4.items():
        sign = -1 if m.endswith("A3") else 1
        signs = r["per_task_partial_r"].values()
        pos = sum(1 for v in signs if np.isfinite(v) and sign * v > 0)
        lines.append(f"| {m} | {r['partial_r']:+.2f} ({r['partial_r_ci_low']:+.2f}, {r['partial_r_ci_high']:+.2f}) | "
                     f"{r['partial_r_spearman']:+.2f} | {r['beta_D']:+.2f} | {r['r2_A']:.2f} | {r['r2_A_D']:.2f} | "
                     f"{r['delta_r2']:+.2f} | {pos}/{len(r['per_task_partial_r'])} | {'yes' if r['holds'] else 'no'} |")
    return "\n".join(lines)


def plots(rows: Sequence[dict], out: Path, tag: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .analysis import residualise

    pop = population(rows)
    paths = trajectory_plot(rows, out, tag)
    if len(pop) < 2:
        return paths
    conds = sorted({r["condition"] for r in pop})
    markers = dict(zip(conds, "osD^v<>Pp*"))
    a = np.array([r["up_lp"] for r in pop])
    t = np.array([r["T_agg"] for r in pop])
    d = np.array([r["A1"] for r in pop])
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    ax = axes[0]
    sc = None
    for c in conds:
        ix = [i for i, r in enumerate(pop) if r["condition"] == c]
        sc = ax.scatter(a[ix], t[ix], c=d[ix], cmap="viridis", vmin=d.min(), vmax=d.max(), marker=markers[c],
                        s=60, edgecolors="k", label=c)
    sup = [i for i, r in enumerate(pop) if r["condition"] in ("sup", "sup_kd", "sup_long")]
    if len(sup) >= 2 and np.ptp(a[sup]) > 0:
        k, b = np.polyfit(a[sup], t[sup], 1)
        xs = np.linspace(a.min(), a.max(), 10)
        ax.plot(xs, k * xs + b, "k--", lw=1, label="fit: supervised only")
    ax.set_xlabel("upstream linear-probe accuracy (A)")
    ax.set_ylabel("transfer, logit mean over tasks (T)")
    ax.set_title(f"transfer vs accuracy, colour = A1 ({tag})")
    ax.legend(fontsize=7)
    if sc is not None:
        fig.colorbar(sc, ax=ax, label="A1 feature erank")
    ax = axes[1]
    rd, rt = residualise(d, a), residualise(t, a)
    for c in conds:
        ix = [i for i, r in enumerate(pop) if r["condition"] == c]
        ax.scatter(rd[ix], rt[ix], marker=markers[c], s=60, edgecolors="k", label=c)
    ax.set_xlabel("residual A1 | A")
    ax.set_ylabel("residual T | A")
    ax.set_title("transfer beyond accuracy vs diversity beyond accuracy")
    ax.axhline(0, color="grey", lw=0.5)
    ax.axvline(0, color="grey", lw=0.5)
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(save_figure(fig, out / f"transfer_vs_accuracy_{tag}.png", dpi=110))
    return paths


def population(rows: Sequence[dict]) -> list[dict]:
    """The models the regressions are about: trained end points (not the init, not trajectory points)."""
    return [r for r in rows if r["condition"] != "rand" and not r["condition"].startswith("traj")]


def trajectory_plot(rows: Sequence[dict], out: Path, tag: str) -> list[Path]:
    """Upstream probe accuracy, A1 and transfer along stage B of ssl_sup (one line per seed),
    starting from the SSL model (step 0)."""
    import matplotlib.pyplot as plt

    seeds = sorted({r["seed"] for r in rows if r["condition"].startswith("traj")})
    if not seeds:
        return []
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for s in seeds:
        start = [r for r in rows if r["condition"] == "ssl" and r["seed"] == s]
        pts = sorted((r for r in rows if r["condition"].startswith("traj") and r["seed"] == s), key=lambda r: r["step"])
        pts = [dict(r, step=0) for r in start] + pts
        for ax, key in zip(axes, ("up_lp", "A1", "T_agg")):
            ax.plot([r["step"] for r in pts], [r[key] for r in pts], marker="o", label=f"seed {s}")
    for ax, title in zip(axes, ("upstream linear probe (A)", "A1 feature erank", "transfer (logit mean)")):
        ax.set_title(title)
        ax.set_xlabel("stage-B step (0 = the SSL model)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return [save_figure(fig, out / f"trajectory_{tag}.png", dpi=110)]


def compute_lines(rows: list[dict], train_seconds: dict[str, float]) -> list[str]:
    """Where the study's time went: training by condition (summed epoch time) and measuring."""
    measure = sum(float(r.get("seconds") or 0.0) for r in rows)
    total = sum(train_seconds.values()) + measure
    parts = ", ".join(f"{k} {v / 60:.1f}" for k, v in train_seconds.items())
    return [f"Training (summed epoch wall time, min): {parts}. Measuring every model: {measure / 60:.1f} min. "
            f"Total: {total / 3600:.2f} h of process time (seeds may have run in parallel processes)."]


def write_report(rows: list[dict], out: Path, tag: str, settings: dict, resamples: int = 2000,
                 train_seconds: dict[str, float] | None = None) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    add_aggregates(rows)
    single, multi = task_columns(rows)
    conds = list(dict.fromkeys(r["condition"] for r in rows))
    keys = list(dict.fromkeys(k for r in rows for k in r if k != "multilabel_tasks"))
    write_csv(out / f"results_{tag}.csv", rows, keys, extrasaction="ignore")
    t_cols = [f"T_{t}" for t in single + multi]
    cols = ["gmacs", "up_acc", "up_lp", *METRICS, *t_cols, "T_agg"]
    pairs = (("ssl", "sup"), ("ssl_sup", "sup"), ("ssl_sup_kd", "sup_kd"), ("sup_long", "sup"),
             ("ssl_sup_lowlr", "sup"), ("joint", "sup"))
    con = contrasts(rows, pairs, cols)
    h3 = h3_target(rows, single)
    h4 = h4_analysis(rows, single, multi, resamples)
    figs = plots(rows, out, tag)
    md = [f"# Diversity-transfer study: {tag}", "",
          f"Settings: `{json.dumps(settings)}`", "",
          f"Transfer = linear probe (top-1 for single-label, macro mAP for multi-label tasks: {', '.join(multi)}); "
          "T_agg = logit mean over all tasks (headline). A = upstream linear-probe accuracy; up_acc = head top-1. "
          "Diversity on held-out upstream images (A3: lower = more diverse).", "",
          "## Means ± sd over seeds", "", summary_table(rows, cols, conds), "",
          "## Paired differences (same seed): mean (seeds with a positive difference / seeds)", "",
          contrast_table(con, cols), "",
          "## H3 target: ssl-then-supervised(-kd) vs supervised(-kd)", ""]
    for h in h3:
        md.append(f"- {h['contrast']}: wins {len(h['tasks_won'])}/{len(single)} single-label tasks "
                  f"({', '.join(h['tasks_won']) or 'none'}); upstream head accuracy diff {_fmt(h['up_acc_diff'])}; "
                  f"A1 diff {_fmt(h['A1_diff'], 4)}; {h['seeds']} seeds -> target {'MET' if h['met'] else 'not met'}")
    md += ["", "## H4: does diversity explain transfer beyond accuracy?", "",
           f"Partial correlation r(D, T_agg | A) with a {resamples}-resample bootstrap 95% interval over models; "
           "OLS on z-scores T ~ A vs T ~ A + D.", "", h4_table(h4) if h4 else "(too few models)", ""]
    if train_seconds:
        md += ["## Compute", "", *compute_lines(rows, train_seconds), ""]
    for p in figs:
        md.append(f"![{p.stem}]({p.name})")
    write_text(out / f"report_{tag}.md", "\n".join(md) + "\n")
    analysis = {"contrasts": con, "h3": h3, "h4": h4, "settings": settings}
    write_json(out / f"analysis_{tag}.json", analysis)
    return analysis


def write_pooled_report(rows: list[dict], out: Path, tag: str, resamples: int = 2000) -> dict[str, Any]:
    """Several architectures together: per (architecture, condition) means with GMACs, and the
    H4 regressions with architecture fixed effects (docs/design/diverse_transfer.md §5)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    add_aggregates(rows)
    single, multi = task_columns(rows)
    archs = list(dict.fromkeys(r["arch"] for r in rows))
    conds = list(dict.fromkeys(r["condition"] for r in rows if not r["condition"].startswith("traj")))
    for r in rows:
        r["MMACs"] = r["gmacs"] * 1e3 if r.get("gmacs") is not None else None
    cols = ["MMACs", "up_acc", "up_lp", "A1", "W1", "T_single", "T_agg"]
    md = [f"# Diversity-transfer study, pooled: {tag}", "",
          "Means ± sd over seeds per architecture; MMACs per image include the Quadformer's scorer. "
          "T_single = logit mean over the single-label tasks, T_agg over all tasks (linear probes).", ""]
    for arch in archs:
        md += [f"## {arch}", "", summary_table([r for r in rows if r["arch"] == arch], cols, conds), ""]
    h4 = h4_analysis(rows, single, multi, resamples)
    md += ["## H4 with architecture fixed effects", "",
           f"Partial r(D, T_agg | A, architecture), {resamples}-resample bootstrap 95% interval over models.", "",
           h4_table(h4) if h4 else "(too few models)", ""]
    pop = population(rows)
    train_conds = [c for c in conds if c != "rand"]
    colours = {c: plt.get_cmap("tab10")(i % 10) for i, c in enumerate(train_conds)}
    span = max(r["MMACs"] for r in pop) - min(r["MMACs"] for r in pop) or 1.0
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in ((axes[0], "up_acc", "upstream head top-1"), (axes[1], "T_agg", "transfer (logit mean)")):
        for arch, marker in zip(archs, "os^D"):
            for i, c in enumerate(train_conds):
                rs = [r for r in pop if r["arch"] == arch and r["condition"] == c and r.get(key) is not None]
                if rs:  # conditions side by side around the architecture's MMACs
                    x = np.mean([r["MMACs"] for r in rs]) + span * 0.015 * (i - len(train_conds) / 2)
                    ax.errorbar(x, np.mean([r[key] for r in rs]), color=colours[c], marker=marker, capsize=3,
                                yerr=np.std([r[key] for r in rs], ddof=1) if len(rs) > 1 else None)
        ax.set_xlabel("MMACs per image (scorer included)")
        ax.set_ylabel(label)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=colours[c], marker="o", ls="", label=c) for c in train_conds]
    handles += [Line2D([], [], color="k", marker=m, ls="", label=a) for a, m in zip(archs, "os^D")]
    axes[1].legend(handles=handles, fontsize=7)
    fig.tight_layout()
    p = save_figure(fig, out / f"accuracy_vs_gmacs_{tag}.png", dpi=110)
    md.append(f"![{p.stem}]({p.name})")
    write_text(out / f"report_{tag}.md", "\n".join(md) + "\n")
    analysis = {"h4": h4, "archs": archs}
    write_json(out / f"analysis_{tag}.json", analysis)
    return analysis
