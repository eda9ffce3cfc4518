"""Per-layer and model-level diversity, Δ vs init, and the files a run writes (docs/design/diverse_transfer.md §2).

``measure_diversity(model, probe, init_model=fresh_init(factory, seed))`` gives every
metric of docs/design/diverse_transfer.md §2 for the model, the same for a freshly initialised copy of its architecture (same
init seed, same probe images) and ``delta_vs_init`` = metric − metric_at_init, per layer
and for the unweighted model means.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

from ..utils import io
from . import metrics as M
from .layers import filter_layers
from .measure import activation_diversity

__all__ = ["SCALARS", "HIGHER_IS_DIVERSE", "weight_diversity", "measure_diversity", "fresh_init", "per_layer_rows",
           "write_json", "write_csv", "format_table"]

SCALARS = ("W1", "W2", "A1", "A1_meanpool", "A2", "A3", "A3_meanpool")
HIGHER_IS_DIVERSE = {"W1": True, "W2": True, "A1": True, "A1_meanpool": True, "A2": True, "A3": False,
                     "A3_meanpool": False}


def fresh_init(factory: Callable[[], nn.Module], seed: int) -> nn.Module:
    """``factory()`` built under ``torch.manual_seed(seed)`` (the caller's RNG state is kept):
    the init of a run that seeded torch with ``seed`` right before building its model, as
    ``quadformer train`` does with ``config.seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory()


def weight_diversity(model: nn.Module, qkv: str = "split", exclude: Iterable[str] = (),
                     block_size: int | None = None) -> dict[str, Any]:
    """W1 and W2 per filter layer (:func:`~quadformer.diversity.layers.filter_layers`) and their
    unweighted means over layers. Layers with a single filter (K = 1) are listed under
    ``skipped`` (W1 needs two)."""
    per: dict[str, dict[str, Any]] = {}
    skipped: list[str] = []
    for name, w in filter_layers(model, qkv=qkv, exclude=exclude).items():
        if w.shape[0] < 2:
            skipped.append(name)
            continue
        per[name] = {"W1": M.filter_cosine_diversity(w, block_size), "W2": M.filter_erank(w),
                     "K": int(w.shape[0]), "fan_in": int(w.shape[1])}
    if not per:
        raise ValueError(f"{type(model).__name__} has no filter layers (Conv/Linear outside the head)")
    return {"per_layer": per, "W1": _mean(v["W1"] for v in per.values()), "W2": _mean(v["W2"] for v in per.values()),
            "num_layers": len(per), "skipped": skipped, "qkv": qkv}


def _mean(xs: Iterable[float]) -> float:
    xs = list(xs)
    return sum(xs) / len(xs)


def _scalars(w: dict[str, Any], a: dict[str, Any] | None) -> dict[str, float | None]:
    out: dict[str, float | None] = {"W1": w["W1"], "W2": w["W2"]}
    for k in ("A1", "A1_meanpool", "A2", "A3", "A3_meanpool"):
        out[k] = a.get(k) if a else None
    return out


def _diff(x: Any, y: Any) -> float | None:
    return None if x is None or y is None else float(x) - float(y)


def measure_diversity(model: nn.Module, probe_dataset: Any = None, init_model: nn.Module | None = None, *,
                      num_images: int = 2000, batch_size: int = 64, device: str | torch.device | None = None,
                      seed: int = 0, qkv: str = "split", exclude: Iterable[str] = (), a2_tokens: bool = False,
                      max_rows: int = 20000, block_size: int | None = None) -> dict[str, Any]:
    """Every metric of docs/design/diverse_transfer.md §2 of ``model`` (activations only when ``probe_dataset`` is given) and,
    with ``init_model``, the same at init on the *same* probe images plus ``delta_vs_init``.

    Returns ``{"metrics": {W1, W2, A1, A1_meanpool, A2, A3, A3_meanpool}, "weights": ...,
    "activations": ..., "init": {"metrics", "weights", "activations"} | None,
    "delta_vs_init": {"metrics": {...}, "per_layer": {"W1": {...}, "W2": {...}, "A2": {...}}} | None,
    "settings": {...}, "warnings": [...]}``."""
    exclude = tuple(exclude)
    settings = {"num_images": num_images, "batch_size": batch_size, "seed": seed, "qkv": qkv, "exclude": list(exclude),
                "a2_tokens": a2_tokens, "max_rows": max_rows}
    w = weight_diversity(model, qkv, exclude, block_size)
    a = None
    notes: list[str] = []
    if probe_dataset is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # recorded in "warnings"; the CLI prints them once
            a = activation_diversity(model, probe_dataset, num_images, batch_size, device, seed, a2_tokens=a2_tokens,
                                     max_rows=max_rows)
        notes += a["warnings"]
    out: dict[str, Any] = {"metrics": _scalars(w, a), "weights": w, "activations": a, "init": None,
                           "delta_vs_init": None, "settings": settings, "warnings": notes}
    if init_model is None:
        return out
    w0 = weight_diversity(init_model, qkv, exclude, block_size)
    if set(w0["per_layer"]) != set(w["per_layer"]):
        raise ValueError("init_model has other filter layers than the model; it must be the same architecture")
    a0 = None
    if probe_dataset is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            a0 = activation_diversity(init_model, probe_dataset, num_images, batch_size, device, seed,
                                      indices=a["indices"] if a and a["index_source"] != "loader" else None,
                                      a2_tokens=a2_tokens, max_rows=max_rows)
    m0 = _scalars(w0, a0)
    out["init"] = {"metrics": m0, "weights": w0, "activations": a0}
    per = {k: {n: w["per_layer"][n][k] - w0["per_layer"][n][k] for n in w["per_layer"]} for k in ("W1", "W2")}
    if a and a0:
        per["A2"] = {n: v - a0["A2_per_layer"][n] for n, v in a["A2_per_layer"].items() if n in a0["A2_per_layer"]}
    out["delta_vs_init"] = {"metrics": {k: _diff(out["metrics"][k], m0[k]) for k in SCALARS}, "per_layer": per}
    return out


# -------------------------------------------------------------------------------------------
# Output
# -------------------------------------------------------------------------------------------


def per_layer_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Long-format rows ``{kind, layer, metric, value, init, delta, shape}``: one per filter layer
    and metric (W1, W2), one per A2 tap and variant, and ``layer="MODEL"`` rows with the means."""
    init = result.get("init") or {}
    rows: list[dict[str, Any]] = []
    w, w0 = result["weights"], init.get("weights")
    for name, v in w["per_layer"].items():
        for k in ("W1", "W2"):
            v0 = w0["per_layer"][name][k] if w0 else None
            rows.append({"kind": "filter", "layer": name, "metric": k, "value": v[k], "init": v0,
                         "delta": _diff(v[k], v0), "shape": f"{v['K']}x{v['fan_in']}"})
    a, a0 = result.get("activations"), init.get("activations")
    if a:
        for variant, s in a["A2_variants"].items():
            s0 = a0["A2_variants"].get(variant) if a0 else None
            for name, v in s["per_layer"].items():
                v0 = s0["per_layer"].get(name) if s0 else None
                rows.append({"kind": "activation", "layer": name, "metric": f"A2_{variant}", "value": v, "init": v0,
                             "delta": _diff(v, v0), "shape": f"{s['rows'][name]} rows"})
    m0 = init.get("metrics") or {}
    for k in SCALARS:
        v = result["metrics"].get(k)
        if v is not None:
            rows.append({"kind": "model", "layer": "MODEL", "metric": k, "value": v, "init": m0.get(k),
                         "delta": _diff(v, m0.get(k)), "shape": ""})
    return rows


def write_json(result: dict[str, Any], path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """``extra`` then ``result`` as one JSON document (atomic; NaN/inf as null)."""
    doc = dict(extra or {})
    doc.update(result)
    return io.write_json(path, doc)


def write_csv(result: dict[str, Any], path: str | Path) -> Path:
    """:func:`per_layer_rows` as CSV (atomic), floats with 8 significant digits."""
    rows = [{k: (f"{v:.8g}" if isinstance(v, float) else ("" if v is None else v)) for k, v in r.items()}
            for r in per_layer_rows(result)]
    return io.write_csv(path, rows, ["kind", "layer", "metric", "value", "init", "delta", "shape"])


def format_table(result: dict[str, Any]) -> str:
    """A short text table of the model-level metrics (value, at init, Δ)."""
    m = result["metrics"]
    init = (result.get("init") or {}).get("metrics") or {}
    delta = (result.get("delta_vs_init") or {}).get("metrics") or {}

    def f(x: Any) -> str:
        return "-" if x is None else f"{x:.4f}"

    lines = [f"{'metric':<12}{'value':>9}{'init':>9}{'delta':>9}  more diverse"]
    for k in SCALARS:
        if m.get(k) is None:
            continue
        lines.append(f"{k:<12}{f(m[k]):>9}{f(init.get(k)):>9}{f(delta.get(k)):>9}  "
                     f"{'higher' if HIGHER_IS_DIVERSE[k] else 'lower'}")
    w = result["weights"]
    a = result.get("activations")
    info = f"{w['num_layers']} filter layers"
    if a:
        info += (f", {len(a['A2_per_layer'])} A2 taps ({a['A2_variant']}), N={a['num_images']} probe images, "
                 f"d={a['feature_dim']}")
    lines.append(info)
    return "\n".join(lines)
