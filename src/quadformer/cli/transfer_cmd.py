"""Transfer evaluation of one or more backbones on downstream tasks (spec §3).

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

Scores are fractions in [0, 1]: top-1 for single-label tasks, non-interpolated macro mAP for
multi-label ones (mean per-class accuracy, VOC 11-point mAP, CP/CR/CF1/OP/OR/OF1 alongside).
Across tasks: logit mean (the headline), mean rank over models, plain mean, z-scored mean.

Output (--out): <protocol>/<model>/<task>.json, results.csv (one row per model x task x protocol),
aggregate_<protocol>.json / .csv, and summary.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import time
import warnings
from pathlib import Path
from typing import Any

DEFAULT_CACHE = Path(os.environ.get("QUADFORMER_CACHE", Path.home() / ".cache" / "quadformer")) / "features"


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..transfer.finetune import DEFAULT_EPOCHS, LR_GRIDS
    from ..transfer.runner import PROTOCOLS

    p.add_argument("models", nargs="+", metavar="MODEL",
                   help="timm model name, model.safetensors, last.pt or a run folder")
    p.add_argument("--tasks", default="builtin",
                   help="'builtin' (the offline suite) or a TASKS.yaml (default: builtin)")
    p.add_argument("--protocol", nargs="+", default=["linear"], choices=PROTOCOLS, metavar="PROTOCOL",
                   help=f"one or more of {', '.join(PROTOCOLS)} (default: linear)")
    p.add_argument("--grid", default="full", choices=("full", "smoke"),
                   help="linear-probe C grid: full = 7 values 1e-3..1e3, smoke = {0.01, 0.1, 1, 10} (default: full)")
    p.add_argument("--image-size", type=int, default=None,
                   help="input size (default: the model's own, from its checkpoint or timm config)")
    p.add_argument("--representation", default="pre_logits", choices=("pre_logits", "token_mean"),
                   help="features: pre_logits = forward_head(pre_logits=True) (ViT CLS / CNN pool); "
                        "token_mean = mean of the patch tokens (default: pre_logits)")
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE,
                   help=f"feature cache folder (default: {DEFAULT_CACHE}; env QUADFORMER_CACHE)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the feature cache")
    p.add_argument("--out", type=Path, default=Path("runs/transfer"), help="output folder (default: runs/transfer)")
    p.add_argument("--device", default=None,
                   help="feature extraction device, e.g. cpu or cuda (default: cuda when available); "
                        "fine-tuning uses the engine's device choice")
    p.add_argument("--batch-size", type=int, default=256, help="feature extraction batch size (default: 256)")
    p.add_argument("--seed", type=int, default=0, help="validation splits, few-shot draws, fine-tune runs (default: 0)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    g = p.add_argument_group("kNN / few-shot")
    g.add_argument("--knn-k", type=int, nargs="+", default=[10, 20, 200], help="k values (default: 10 20 200)")
    g.add_argument("--shots", type=int, nargs="+", default=[1, 5, 10], help="examples per class (default: 1 5 10)")
    g.add_argument("--draws", type=int, default=20, help="seeded draws per k, >= 20 per spec (default: 20)")
    g.add_argument("--fewshot-c", type=float, default=1.0,
                   help="fixed C for k < 5 (k >= 5: nested validation on the smoke grid) (default: 1.0)")
    g = p.add_argument_group("fine-tuning")
    g.add_argument("--lrs", type=_floats, default=None,
                   help=f"comma-separated lr grid (default: --lr-grid)")
    g.add_argument("--lr-grid", default="vit", choices=tuple(LR_GRIDS),
                   help="named lr grid: " + "; ".join(f"{k} {list(v)}" for k, v in LR_GRIDS.items())
                        + " (default: vit)")
    g.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help=f"fixed epochs (default: {DEFAULT_EPOCHS})")
    g.add_argument("--ft-batch-size", type=int, default=64, help="fine-tune batch size (default: 64)")
    g.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay (default: 0.05)")
    g.add_argument("--lp-ft", action="store_true", help="LP-FT: start the new head from the linear probe")
    g.add_argument("--amp", default="off", choices=("off", "auto", "bf16", "fp16"),
                   help="mixed precision (default: off)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _say(msg: str, bar) -> None:
    if bar is not None:
        bar.write(msg)
    else:
        print(msg)


def _label(spec: str, taken: set[str]) -> str:
    base = spec.rstrip("/")
    label, i = base, 2
    while label in taken:
        label, i = f"{base}#{i}", i + 1
    taken.add(label)
    return label


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model"


def _load(spec: str, device: str, image_size: int | None):
    from ..models.loading import load_model
    from ..transfer.runner import ModelRef

    lm = load_model(spec, device=device, image_size=image_size)
    mean = tuple(getattr(lm, "mean", None) or (0.485, 0.456, 0.406))
    std = tuple(getattr(lm, "std", None) or (0.229, 0.224, 0.225))
    declared = getattr(lm.model, "input_size", None)  # our models' (H, W); timm's own may lack it
    if isinstance(declared, (tuple, list)) and len(declared) == 2 and lm.digest.startswith("init:"):
        size = int(image_size or declared[0])
    else:
        size = int(image_size or lm.image_size)
    info = {"source": lm.source, "name": lm.name, "digest": lm.digest, "image_size": size,
            "mean": list(mean), "std": list(std)}
    return ModelRef(lm.model, lm.digest, size, mean, std), info  # type: ignore[arg-type]


def _row(model: str, task: str, protocol: str, res, info: dict) -> dict[str, Any]:
    m = res.metrics
    sel = res.selection
    return {"model": model, "task": task, "protocol": res.protocol if protocol == "finetune" else protocol,
            "multilabel": res.multilabel, "score": res.score,
            "metric": "map" if res.multilabel else "top1",
            "top1": m.get("top1"), "mean_per_class_acc": m.get("mean_per_class_acc"),
            "map": m.get("map"), "map_voc11": m.get("map_voc11"),
            "ci_low": (m.get("per_shots", {}).get(str(m.get("headline_shots")), {}).get("top1", {}).get("ci_low")),
            "ci_high": (m.get("per_shots", {}).get(str(m.get("headline_shots")), {}).get("top1", {}).get("ci_high")),
            "selected": sel.get("C", sel.get("k", sel.get("lr", sel.get("fixed_C")))),
            "n_train": res.n_train, "n_test": res.n_test, "features_cached": info.get("features_cached"),
            "seconds": round(float(info.get("seconds", 0.0)), 3)}


def run(args: argparse.Namespace) -> int:
    import torch

    from ..transfer.aggregate import aggregate, write_aggregate_csv
    from ..transfer.finetune import LR_GRIDS
    from ..transfer.probes import _jsonable
    from ..transfer.runner import ProtocolOptions, evaluate_task
    from ..transfer.tasks import check_label_spaces, load_tasks
    from ..utils.errors import QuadformerError

    # -- validate everything before any work
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.draws < 1 or any(k < 1 for k in args.shots) or any(k < 1 for k in args.knn_k):
        raise QuadformerError("--draws, --shots and --knn-k must be >= 1")
    if args.image_size is not None and args.image_size < 8:
        raise QuadformerError(f"--image-size {args.image_size} is too small")
    tasks = load_tasks(args.tasks)
    check_label_spaces(tasks)
    protocols = list(dict.fromkeys(args.protocol))
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise QuadformerError(f"--device {device}: CUDA is not available here; use --device cpu")
    lrs = args.lrs if args.lrs else list(LR_GRIDS[args.lr_grid])
    progress = not args.no_progress
    models = []
    taken: set[str] = set()
    for spec in args.models:
        ref, info = _load(spec, device, args.image_size)
        label = _label(spec, taken)
        ref.label = label
        models.append((label, ref, info))
    args.out.mkdir(parents=True, exist_ok=True)
    cache_dir = None if args.no_cache else args.cache_dir

    opts = ProtocolOptions(grid=args.grid, seed=args.seed, knn_ks=args.knn_k, shots=args.shots, draws=args.draws,
                           fewshot_C=args.fewshot_c, lrs=lrs, epochs=args.epochs, ft_batch_size=args.ft_batch_size,
                           weight_decay=args.weight_decay, lp_ft=args.lp_ft, amp=args.amp,
                           representation=args.representation, batch_size=args.batch_size, device=device,
                           cache_dir=cache_dir, progress=progress)
    t_start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    scores: dict[str, dict[str, dict[str, float]]] = {p: {label: {} for label, _, _ in models} for p in protocols}
    bar = None
    total = len(models) * len(tasks) * len(protocols)
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc="transfer", dynamic_ncols=True)
    for label, ref, minfo in models:
        for task in tasks:
            for protocol in protocols:
                if bar is not None:
                    bar.set_postfix_str(f"{label} {task.name} {protocol}")
                if protocol == "fewshot" and task.multilabel:
                    skipped.append({"model": label, "task": task.name, "protocol": protocol,
                                    "reason": "few-shot is single-label only"})
                    if bar is not None:
                        bar.update(1)
                    continue
                try:
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always", RuntimeWarning)
                        res, info = evaluate_task(ref, task, protocol, opts)
                    for w in caught:
                        _say(f"warning [{label} / {task.name} / {protocol}]: {w.message}", bar)
                except ValueError as e:
                    if protocol == "fewshot" and ("single-label" in str(e) or "-shot draws need" in str(e)):
                        skipped.append({"model": label, "task": task.name, "protocol": protocol, "reason": str(e)})
                        if bar is not None:
                            bar.update(1)
                        continue
                    raise
                scores[protocol][label][task.name] = res.score
                row = _row(label, task.name, protocol, res, info)
                rows.append(row)
                folder = args.out / protocol / _safe(label)
                folder.mkdir(parents=True, exist_ok=True)
                doc = {"model": {"label": label, **minfo}, "task": task.to_dict(), "protocol": protocol,
                       "result": res.to_dict(), "run": info}
                (folder / f"{_safe(task.name)}.json").write_text(json.dumps(_jsonable(doc), indent=2))
                if bar is not None:
                    bar.update(1)
    if bar is not None:
        bar.close()

    if rows:
        with open(args.out / "results.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    aggregates = {}
    for protocol in protocols:
        agg = aggregate(scores[protocol])
        agg["protocol"] = protocol
        aggregates[protocol] = agg
        (args.out / f"aggregate_{protocol}.json").write_text(json.dumps(_jsonable(agg), indent=2))
        write_aggregate_csv(agg, args.out / f"aggregate_{protocol}.csv")
    summary = {"models": {label: info for label, _, info in models}, "tasks": [t.to_dict() for t in tasks],
               "protocols": protocols, "grid": args.grid, "seed": args.seed, "skipped": skipped,
               "aggregate_headline": "logit_mean", "seconds": round(time.perf_counter() - t_start, 2),
               "aggregates": aggregates}
    (args.out / "summary.json").write_text(json.dumps(_jsonable(summary), indent=2))

    # -- console report
    for protocol in protocols:
        agg = aggregates[protocol]
        print(f"\n[{protocol}] per-task scores (top-1 or mAP):")
        names = [t.name for t in tasks]
        width = max([len(label) for label, _, _ in models] + [5])
        print("  " + "model".ljust(width) + "  " + "  ".join(n[:12].rjust(12) for n in names))
        for label, _, _ in models:
            vals = [scores[protocol][label].get(n) for n in names]
            cells = ("-" if v is None else f"{v:.4f}" for v in vals)
            print("  " + label.ljust(width) + "  " + "  ".join(c.rjust(12) for c in cells))
        print(f"  aggregate over {len(agg['tasks'])} tasks (headline: {agg['headline']}):")
        for label, row in agg["models"].items():
            if row["logit_mean"] is None:
                continue
            print(f"    {label.ljust(width)}  logit_mean {row['logit_mean']:+.3f} (~{row['logit_mean_prob']:.4f})  "
                  f"mean_rank {row['mean_rank']:.2f}  mean {row['mean']:.4f}  z_mean {row['z_mean']:+.3f}")
    for s in skipped:
        print(f"  skipped {s['model']} / {s['task']} / {s['protocol']}: {s['reason']}")
    print(f"\nwrote {args.out}/ ({len(rows)} results, {summary['seconds']} s)")
    return 0
