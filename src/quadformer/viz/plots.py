"""Plots people would rather look at than read."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..utils.figures import save_figure

__all__ = ["plot_accuracy_vs_gmacs", "save_figure"]


def plot_accuracy_vs_gmacs(rows: Sequence[dict], path: str | Path, title: str = "") -> Path:
    """One line per model family: ``rows`` need ``family``, ``gmacs``, ``top1``, ``num_patches``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=120)
    families = sorted({r["family"] for r in rows})
    markers = {"quadformer": "o", "vanilla": "s"}
    for fam in families:
        pts = sorted((r for r in rows if r["family"] == fam), key=lambda r: r["gmacs"])
        xs, ys = [r["gmacs"] for r in pts], [r["top1"] for r in pts]
        ax.plot(xs, ys, marker=markers.get(fam, "^"), label=fam)
        for r in pts:
            ax.annotate(f"N={r['num_patches']}", (r["gmacs"], r["top1"]), textcoords="offset points",
                        xytext=(4, -10), fontsize=8)
    ax.set_xlabel("GMACs per image (scorer included)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title or "accuracy vs compute")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, path)
