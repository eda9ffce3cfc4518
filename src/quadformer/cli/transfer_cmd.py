"""Transfer evaluation of one or more backbones on downstream tasks (docs/design/diverse_transfer.md §3).

  quadformer transfer MODEL [MODEL ...] [--tasks builtin|TASKS.yaml] [--protocol linear]
                      [--grid full|smoke] [--image-size N] [--cache-dir DIR] [--out DIR]

MODEL is a timm model name (random init, never downloaded), a model.safetensors export, a
training last.pt, or a run folder holding either. Protocols (several may be given):

  linear    standardised features, L2 logistic regression; C picked on a stratified 25 %
            validation split carved from train (grid full: 1e-3..1e3, 7 values; smoke: 0.01..10)
  knn       cosine kNN, weights exp(s/0.07), k in {10, 20, 200}; headline k picked on validation
  fewshot   1/5/10 examples per class, 20 seeded draws shared by every model; mean, sd, 95 % CI
            (single-label tasks only)
  finetune  whole network + new head through the training engine; lr grid picked on validation,
            retrained on all train (--lp-ft: head initialised from the linear probe)

Frozen features are cached (--cache-dir), keyed by the checkpoint's content hash, the
representation, preprocessing, dataset, split, size, seed and code version: a second run on
the same model loads them without running the network.

Scores are in percent: top-1 for single-label tasks, non-interpolated macro mAP for multi-label
ones (classes without a test positive dropped and listed; mean per-class accuracy, VOC 11-point
mAP, CP/CR/CF1/OP/OR/OF1 alongside).
Across tasks: logit mean (the headline), mean rank over models, plain mean, z-scored mean.

Output (--out): <protocol>/<model>/<task>.json, results.csv (one row per model x task x protocol),
aggregate_<protocol>.json / .csv, and summary.json.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .common import (add_common, image_size, nonneg_float, nonneg_int, parse_device, positive_float, positive_floats,
                     positive_int, safe_name)

DEFAULT_CACHE = Path(os.environ.get("QUADFORMER_CACHE", Path.home() / ".cache" / "quadformer")) / "features"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..transfer import LR_GRIDS, PROTOCOLS
    from ..transfer.finetune import DEFAULT_EPOCHS

    p.add_argument("models", nargs="+", metavar="MODEL",
                   help="timm model name, model.safetensors, last.pt or a run folder")
    p.add_argument("--tasks", default="builtin",
                   help="'builtin' (the offline suite) or a TASKS.yaml (default: builtin)")
    p.add_argument("--protocol", nargs="+", default=["linear"], choices=PROTOCOLS, metavar="PROTOCOL",
                   help=f"one or more of {', '.join(PROTOCOLS)} (default: linear)")
    p.add_argument("--grid", default="full", choices=("full", "smoke"),
                   help="linear-probe C grid: full = 7 values 1e-3..1e3, smoke = {0.01, 0.1, 1, 10} (default: full)")
    p.add_argument("--image-size", type=image_size, default=None,
                   help="input size (default: the model's own, from its checkpoint or timm config)")
    p.add_argument("--representation", default="pre_logits", choices=("pre_logits", "token_mean"),
                   help="features: pre_logits = forward_head(pre_logits=True) (ViT CLS / CNN pool); "
                        "token_mean = mean of the patch tokens (default: pre_logits)")
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE,
                   help=f"feature cache folder (default: {DEFAULT_CACHE}; env QUADFORMER_CACHE)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the feature cache")
    p.add_argument("--out", type=Path, default=Path("runs/transfer"), help="output folder (default: runs/transfer)")
    p.add_argument("--batch-size", type=positive_int, default=256,
                   help="feature extraction batch size (default: 256)")
    p.add_argument("--seed", type=nonneg_int, default=0,
                   help="validation splits, few-shot draws, fine-tune runs (default: 0)")
    g = p.add_argument_group("kNN / few-shot")
    g.add_argument("--knn-k", type=positive_int, nargs="+", default=[10, 20, 200], help="k values (default: 10 20 200)")
    g.add_argument("--shots", type=positive_int, nargs="+", default=[1, 5, 10],
                   help="examples per class (default: 1 5 10)")
    g.add_argument("--draws", type=positive_int, default=20, help="seeded draws per k, >= 20 by design (default: 20)")
    g.add_argument("--fewshot-c", type=positive_float, default=1.0,
                   help="fixed C for k < 5 (k >= 5: nested validation on the smoke grid) (default: 1.0)")
    g = p.add_argument_group("fine-tuning")
    g.add_argument("--lrs", type=positive_floats, default=None, help="comma-separated lr grid (default: --lr-grid)")
    g.add_argument("--lr-grid", default="vit", choices=tuple(LR_GRIDS),
                   help="named lr grid: " + "; ".join(f"{k} {list(v)}" for k, v in LR_GRIDS.items())
                        + " (default: vit)")
    g.add_argument("--epochs", type=positive_int, default=DEFAULT_EPOCHS,
                   help=f"fixed epochs (default: {DEFAULT_EPOCHS})")
    g.add_argument("--ft-batch-size", type=positive_int, default=64, help="fine-tune batch size (default: 64)")
    g.add_argument("--weight-decay", type=nonneg_float, default=0.05, help="AdamW weight decay (default: 0.05)")
    g.add_argument("--lp-ft", action="store_true", help="LP-FT: start the new head from the linear probe")
    g.add_argument("--amp", default="off", choices=("off", "auto", "bf16", "fp16"),
                   help="mixed precision (default: off)")
    add_common(p)  # --device: feature extraction (fine-tuning uses the engine's device choice)


# ------------------------------------------------------------------ models


@dataclass
class LoadedRef:
    """One model to evaluate: its label (unique), what the runner needs, what the files record."""

    label: str
    ref: Any  # quadformer.transfer.ModelRef
    info: dict[str, Any]


def _label(spec: str, taken: set[str]) -> str:
    base = spec.rstrip("/")
    label, i = base, 2
    while label in taken:
        label, i = f"{base}#{i}", i + 1
    taken.add(label)
    return label


def _load(spec: str, device: str, image_size: int | None):
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    from ..models.loading import load_model
    from ..transfer import ModelRef

    lm = load_model(spec, device=device, image_size=image_size)
    mean = tuple(getattr(lm, "mean", None) or IMAGENET_DEFAULT_MEAN)
    std = tuple(getattr(lm, "std", None) or IMAGENET_DEFAULT_STD)
    declared = getattr(lm.model, "input_size", None)  # our models' (H, W); timm's own may lack it
    if isinstance(declared, (tuple, list)) and len(declared) == 2 and lm.digest.startswith("init:"):
        size = int(image_size or declared[0])
    else:
        size = int(image_size or lm.image_size)
    info = {"source": lm.source, "name": lm.name, "digest": lm.digest, "image_size": size,
            "mean": list(mean), "std": list(std)}
    return ModelRef(lm.model, lm.digest, size, mean, std), info  # type: ignore[arg-type]


def load_models(specs: list[str], device: str, image_size: int | None) -> list[LoadedRef]:
    taken: set[str] = set()
    out = []
    for spec in specs:
        ref, info = _load(spec, device, image_size)
        ref.label = _label(spec, taken)
        out.append(LoadedRef(ref.label, ref, info))
    return out


# ------------------------------------------------------------------ evaluation


@dataclass
class Results:
    """Everything the run produced, filled in as it goes."""

    protocols: list[str]
    models: list[LoadedRef]
    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    scores: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.scores = {p: {m.label: {} for m in self.models} for p in self.protocols}


def _say(msg: str, bar) -> None:
    if bar is not None:
        bar.write(msg)
    else:
        print(msg)


def _row(model: str, task: str, protocol: str, res, info: dict) -> dict[str, Any]:
    m = res.metrics
    sel = res.selection
    ci = m.get("per_shots", {}).get(str(m.get("headline_shots")), {}).get("top1", {})
    return {"model": model, "task": task, "protocol": res.protocol if protocol == "finetune" else protocol,
            "multilabel": res.multilabel, "score": res.score,
            "metric": "map" if res.multilabel else "top1",
            "top1": m.get("top1"), "mean_per_class_acc": m.get("mean_per_class_acc"),
            "map": m.get("map"), "map_voc11": m.get("map_voc11"),
            "dropped_classes": ";".join(m.get("dropped_classes") or []),
            "untrained_classes": ";".join(m.get("untrained_classes") or []),
            "ci_low": ci.get("ci_low"), "ci_high": ci.get("ci_high"),
            "selected": sel.get("C", sel.get("k", sel.get("lr", sel.get("fixed_C")))),
            "n_train": res.n_train, "n_test": res.n_test, "features_cached": info.get("features_cached"),
            "seconds": round(float(info.get("seconds", 0.0)), 3)}


def _evaluate_one(m: LoadedRef, task, protocol: str, opts, bar) -> tuple[Any, dict] | str:
    """``(result, info)``, or the reason the combination is skipped (few-shot on a task it does
    not apply to)."""
    from ..transfer import evaluate_task

    if protocol == "fewshot" and task.multilabel:
        return "few-shot is single-label only"
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RuntimeWarning)
            out = evaluate_task(m.ref, task, protocol, opts)
    except ValueError as e:
        if protocol == "fewshot" and ("single-label" in str(e) or "-shot draws need" in str(e)):
            return str(e)
        raise
    for w in caught:
        _say(f"warning [{m.label} / {task.name} / {protocol}]: {w.message}", bar)
    return out


def evaluate_all(results: Results, tasks: list, opts, out: Path, progress: bool) -> None:
    """Every model x task x protocol; one JSON per result under ``out/<protocol>/<model>/``."""
    from ..utils.io import write_json

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(results.models) * len(tasks) * len(results.protocols), desc="transfer",
                   dynamic_ncols=True)
    for m in results.models:
        for task in tasks:
            for protocol in results.protocols:
                if bar is not None:
                    bar.set_postfix_str(f"{m.label} {task.name} {protocol}")
                got = _evaluate_one(m, task, protocol, opts, bar)
                if isinstance(got, str):
                    results.skipped.append({"model": m.label, "task": task.name, "protocol": protocol,
                                            "reason": got})
                else:
                    res, info = got
                    results.scores[protocol][m.label][task.name] = res.score
                    results.rows.append(_row(m.label, task.name, protocol, res, info))
                    doc = {"model": {"label": m.label, **m.info}, "task": task.to_dict(), "protocol": protocol,
                           "result": res.to_dict(), "run": info}
                    write_json(out / protocol / safe_name(m.label) / f"{safe_name(task.name)}.json", doc)
                if bar is not None:
                    bar.update(1)
    if bar is not None:
        bar.close()


# ------------------------------------------------------------------ outputs


def write_outputs(results: Results, tasks: list, args: argparse.Namespace, seconds: float) -> dict[str, Any]:
    """results.csv, aggregate_<protocol>.json/.csv and summary.json; returns the summary."""
    from ..transfer import aggregate, write_aggregate_csv
    from ..utils.io import write_csv, write_json

    out = args.out
    if results.rows:
        write_csv(out / "results.csv", results.rows)
    aggregates = {}
    for protocol in results.protocols:
        agg = aggregate(results.scores[protocol])
        agg["protocol"] = protocol
        aggregates[protocol] = agg
        write_json(out / f"aggregate_{protocol}.json", agg)
        write_aggregate_csv(agg, out / f"aggregate_{protocol}.csv")
    summary = {"models": {m.label: m.info for m in results.models}, "tasks": [t.to_dict() for t in tasks],
               "protocols": results.protocols, "grid": args.grid, "seed": args.seed, "skipped": results.skipped,
               "unit": "percent", "aggregate_headline": "logit_mean", "seconds": round(seconds, 2),
               "aggregates": aggregates}
    write_json(out / "summary.json", summary)
    return summary


def print_report(results: Results, tasks: list, summary: dict[str, Any], out: Path) -> None:
    labels = [m.label for m in results.models]
    width = max([len(label) for label in labels] + [5])
    names = [t.name for t in tasks]
    for protocol in results.protocols:
        agg = summary["aggregates"][protocol]
        print(f"\n[{protocol}] per-task scores (top-1 or mAP, %):")
        print("  " + "model".ljust(width) + "  " + "  ".join(n[:12].rjust(12) for n in names))
        for label in labels:
            vals = [results.scores[protocol][label].get(n) for n in names]
            cells = ("-" if v is None else f"{v:.2f}" for v in vals)
            print("  " + label.ljust(width) + "  " + "  ".join(c.rjust(12) for c in cells))
        print(f"  aggregate over {len(agg['tasks'])} tasks (headline: {agg['headline']}):")
        for label, row in agg["models"].items():
            if row["logit_mean"] is None:
                continue
            print(f"    {label.ljust(width)}  logit_mean {row['logit_mean']:+.3f} (~{row['logit_mean_percent']:.2f} %)  "
                  f"mean_rank {row['mean_rank']:.2f}  mean {row['mean']:.2f}  z_mean {row['z_mean']:+.3f}")
    for s in results.skipped:
        print(f"  skipped {s['model']} / {s['task']} / {s['protocol']}: {s['reason']}")
    for r in results.rows:
        for key, why in (("dropped_classes", "a test positive"), ("untrained_classes", "a training positive")):
            if r[key]:
                print(f"  note: {r['model']} / {r['task']} / {r['protocol']}: mAP leaves out the classes without "
                      f"{why}: {r[key]}")
    print(f"\nwrote {out}/ ({len(results.rows)} results, {summary['seconds']} s)")


# ------------------------------------------------------------------ command


def _options(args: argparse.Namespace, device: str):
    from ..transfer import LR_GRIDS, ProtocolOptions

    return ProtocolOptions(grid=args.grid, seed=args.seed, knn_ks=args.knn_k, shots=args.shots, draws=args.draws,
                           fewshot_C=args.fewshot_c, lrs=args.lrs or list(LR_GRIDS[args.lr_grid]), epochs=args.epochs,
                           ft_batch_size=args.ft_batch_size, weight_decay=args.weight_decay, lp_ft=args.lp_ft,
                           amp=args.amp, representation=args.representation, batch_size=args.batch_size,
                           device=device, cache_dir=None if args.no_cache else args.cache_dir,
                           progress=args.progress)


def run(args: argparse.Namespace) -> int:
    from ..transfer import check_label_spaces, load_tasks

    tasks = load_tasks(args.tasks)  # everything is judged before any work (the options by cli.common)
    check_label_spaces(tasks)
    device = str(parse_device(args.device))
    results = Results(list(dict.fromkeys(args.protocol)), load_models(args.models, device, args.image_size))
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    evaluate_all(results, tasks, _options(args, device), args.out, args.progress)
    summary = write_outputs(results, tasks, args, time.perf_counter() - t0)
    print_report(results, tasks, summary, args.out)
    return 0
