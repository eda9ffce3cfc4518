"""The main job: does a saliency mosaic beat a uniform grid at the same token budget?

On the built-in data (procedural, no download), trains a micro Quadformer (pixel-blur
scorer) and a micro vanilla ViT (uniform grid on a down-scaled image) at several token
budgets, evaluates each on the held-out test split, and writes to OUT:
  results.csv, results.md      top-1, GMACs per image (scorer included), train time
  accuracy_vs_gmacs.png        one line per family
  mosaics.png                  test images beside their mosaics
  runs/<name>/                 each run's checkpoints, metrics.csv, TensorBoard logs
Completed runs are reused, so an interrupted demo resumes where it stopped.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import time
from pathlib import Path

import torch

from ..utils.errors import QuadformerError

# (family, model name, N); the micro models take 128-px images with 8..32-px patches.
DEFAULT_RUNS = [
    ("vanilla", "uniform_vit_micro_patch8_128", 64),
    ("quadformer", "quadformer_micro_patch8_128", 64),
    ("quadformer", "quadformer_micro_patch8_128", 28),
    ("quadformer", "quadformer_micro_patch8_128", 100),
    ("vanilla", "uniform_vit_micro_patch8_128", 100),
    ("vanilla", "uniform_vit_micro_patch8_128", 256),
]
QUICK_RUNS = DEFAULT_RUNS[:2]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("outputs/demo"), help="output folder (default outputs/demo)")
    p.add_argument("--task", default="glyphs", help="built-in task (default glyphs)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per run (default 2; 1 with --quick)")
    p.add_argument("--train-size", type=int, default=None,
                   help="training images (default 4000; 512 with --quick). Fresh procedural images beat "
                        "repeated epochs: a micro ViT memorises a small set before it learns the textures")
    p.add_argument("--test-size", type=int, default=1000, help="test images (default 1000)")
    p.add_argument("--budgets", type=int, nargs="+", default=None,
                   help="run both families at these N only (default: vanilla 64/100/256, Quadformer 28/64/100)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all)")
    p.add_argument("--quick", action="store_true", help="two small runs, for a smoke test")
    p.add_argument("--seed", type=int, default=0)


def _runs(args: argparse.Namespace) -> list[tuple[str, str, int]]:
    if args.budgets:
        return [(fam, name, n) for n in args.budgets for fam, name in
                (("vanilla", "uniform_vit_micro_patch8_128"), ("quadformer", "quadformer_micro_patch8_128"))]
    return QUICK_RUNS if args.quick else DEFAULT_RUNS


def run(args: argparse.Namespace) -> int:
    from ..train import load_config, train
    from ..train.checkpoint import load_checkpoint
    from ..train.distributed import DistInfo
    from ..train.engine import build_dataset, build_model, check_model_config, evaluate, model_gmacs

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    epochs = args.epochs or (1 if args.quick else 2)
    train_size = args.train_size or (512 if args.quick else 4000)
    out: Path = args.out
    cache = out / "cache"
    plan = []
    for family, name, n in _runs(args):  # validate every run before any work starts
        run_dir = out / "runs" / f"{family}_N{n}"
        overrides = [
            f"model.name={name}", f"model.num_patches={n}", f"data.train=builtin:{args.task}",
            f"data.train_size={train_size}", "data.val_size=500", "data.image_size=128", "data.batch_size=64",
            f"data.cache_dir={cache}", f"train.epochs={epochs}", f"seed={args.seed}", f"output.dir={run_dir}",
            "optim.lr=2e-3", "optim.warmup_epochs=0.5", "optim.weight_decay=0.05",
            "model.kwargs={global_pool: max}",  # max over tokens: the class lives in a few small objects
        ]
        cfg = load_config(None, overrides)
        check_model_config(cfg)
        plan.append((family, name, n, run_dir, cfg))
    test = build_dataset(f"builtin:{args.task}", "test", args.test_size, False, 128, 0, str(cache))
    rows = []
    t_all = time.perf_counter()
    for family, name, n, run_dir, cfg in plan:
        summary = run_dir / "summary.json"
        t0 = time.perf_counter()
        if summary.exists() and (run_dir / "last.pt").exists() and \
                load_checkpoint(run_dir / "last.pt")["config"] == cfg.to_dict():
            print(f"[{family} N={n}] reusing finished run in {run_dir}")
        else:
            print(f"[{family} N={n}] training {name} for {epochs} epochs on {train_size} images")
            res = train(cfg, resume="auto")
            if res.get("interrupted"):
                raise QuadformerError(f"demo interrupted during {family} N={n}; rerun to resume")
        train_s = json.loads(summary.read_text()).get("train_seconds", time.perf_counter() - t0)
        ck = load_checkpoint(run_dir / "last.pt")
        model = build_model(cfg, ck["num_classes"])
        model.load_state_dict(ck["model"])
        metrics = evaluate(model, test, 128, torch.device("cpu"), DistInfo(), amp="off")
        gmacs, convention = model_gmacs(model, 128)
        rows.append({"family": family, "model": name, "num_patches": n, "gmacs": round(gmacs, 4),
                     "top1": round(metrics["top1"], 2), "test_images": int(metrics["count"]),
                     "train_seconds": round(train_s, 1)})
        print(f"[{family} N={n}] test top-1 {metrics['top1']:.2f}%  GMACs {gmacs:.4f}")
        _write_tables(out, rows, convention, epochs, train_size, args)
    from ..viz import plot_accuracy_vs_gmacs

    plot = plot_accuracy_vs_gmacs(rows, out / "accuracy_vs_gmacs.png",
                                  f"built-in '{args.task}', micro ViTs, {epochs} epochs")
    _mosaics(out, test, rows)
    print(f"wrote {out / 'results.md'}, {out / 'results.csv'}, {plot}, {out / 'mosaics.png'} "
          f"in {time.perf_counter() - t_all:.0f} s")
    return 0


def _write_tables(out: Path, rows: list[dict], convention: str, epochs: int, train_size: int, args) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    lines = [f"| model | N | GMACs/img | test top-1 (%) | train s |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['family']} | {r['num_patches']} | {r['gmacs']:.4f} | {r['top1']:.2f} | {r['train_seconds']} |")
    lines += ["", f"Built-in task `{args.task}`, {train_size} training images, {epochs} epochs, "
              f"{rows[0]['test_images']} test images, seed {args.seed}. GMACs: {convention}."]
    (out / "results.md").write_text("\n".join(lines) + "\n")


def _mosaics(out: Path, test, rows: list[dict]) -> None:
    from ..tokenize import QuadGeometry, mosaic
    from ..tokenize.tokenizer import build_scorer
    from ..viz import save_mosaic_grid

    n = max((r["num_patches"] for r in rows if r["family"] == "quadformer"), default=64)
    images = torch.stack([test[i][0] for i in range(4)])
    g = QuadGeometry(128, 128, 8, 32, n)
    pixels, boxes, _ = mosaic(images, g, build_scorer("pixel-blur"))
    names = getattr(test, "class_names", [])
    titles = [f"class: {names[test[i][1]] if names else test[i][1]}, N={n}" for i in range(4)]
    save_mosaic_grid(out / "mosaics.png", images, pixels, boxes, 8, titles)
