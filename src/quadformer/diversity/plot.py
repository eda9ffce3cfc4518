"""Per-layer diversity plot (PNG): W1/W2 per filter layer, A2 per tap; init dashed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..utils.figures import save_figure

__all__ = ["plot_per_layer"]


def _short(name: str) -> str:
    return name.replace("blocks.", "b").replace(".attn.", ".").replace(".mlp.", ".")


def _ticks(ax, names: list[str]) -> None:
    step = max(1, len(names) // 40)
    pos = list(range(0, len(names), step))
    ax.set_xticks(pos)
    ax.set_xticklabels([_short(names[i]) for i in pos], rotation=90, fontsize=6)


def plot_per_layer(result: dict[str, Any], path: str | Path, title: str = "") -> Path:
    """Write ``result`` (from :func:`~quadformer.diversity.report.measure_diversity`) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    init = result.get("init") or {}
    w, w0 = result["weights"], init.get("weights")
    a, a0 = result.get("activations"), init.get("activations")
    has_a2 = bool(a and a["A2_variants"])
    width = max(6.0, 0.12 * len(w["per_layer"]) + 3)
    fig, axes = plt.subplots(2 if has_a2 else 1, 1, figsize=(width, 7 if has_a2 else 4), dpi=120, squeeze=False)
    ax = axes[0][0]
    names = list(w["per_layer"])
    xs = list(range(len(names)))
    for k, color in (("W1", "C0"), ("W2", "C1")):
        ax.plot(xs, [w["per_layer"][n][k] for n in names], marker=".", color=color, label=f"{k} (mean {w[k]:.3f})")
        if w0:
            ax.plot(xs, [w0["per_layer"][n][k] for n in names], ls="--", color=color, alpha=0.6, label=f"{k} at init")
    ax.set_ylabel("filter diversity")
    ax.set_title(title or "per-layer diversity")
    _ticks(ax, names)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    if has_a2:
        ax = axes[1][0]
        for i, (variant, s) in enumerate(a["A2_variants"].items()):
            taps = list(s["per_layer"])
            color = f"C{i + 2}"
            ax.plot(range(len(taps)), [s["per_layer"][t] for t in taps], marker="o", color=color,
                    label=f"A2 {variant} (mean {s['mean']:.3f})")
            s0 = a0["A2_variants"].get(variant) if a0 else None
            if s0:
                ax.plot(range(len(taps)), [s0["per_layer"].get(t, float("nan")) for t in taps], ls="--", color=color,
                        alpha=0.6, label=f"A2 {variant} at init")
            _ticks(ax, taps)
        ax.set_ylabel("layer erank / channels")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)
