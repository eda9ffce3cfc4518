"""The main job: does a saliency mosaic beat a uniform grid at the same token budget?

On built-in data (procedural, no download) it trains micro Quadformers and micro vanilla
ViTs (a uniform grid on a down-scaled image) at several token budgets and evaluates each on
held-out test images:

* ``glyphs``: small textured plates on smooth scenes (pixel-blur scorer);
* ``natural-3k``: the same kind of plates on crops of real photos, a fixed set of 3000
  training images as a user's data set would be. The recipe (``benchmarks/natural_recipe.py``):
  every natural run starts from the glyphs run of the same family at the same or the nearest N
  (pretraining on a built-in upstream task, then fine-tuning; from scratch when the family has
  no glyphs run in the demo). Quadformers with pixel-blur and with the best label-free learned scorer: a saliency
  CNN distilled, on the natural training images, from the input gradient of the true class of
  the natural vanilla ViT at N=256 (the full-resolution run of the table, trained first: the
  teacher costs no extra run; with ``--quick`` the glyphs one); ``--scorer`` picks another one.

Writes to OUT:
  results.csv, results.md            top-1, GMACs per image (scorer included), images/s at
                                     batch 64, batch-1 latency, train time
  accuracy_vs_gmacs.png              glyphs, one line per family
  accuracy_vs_gmacs_natural.png      natural photos, one line per family and scorer
  accuracy_vs_speed.png              accuracy vs images/s (batch 64) and vs batch-1 latency
  mosaics.png, mosaics_natural.png   test images beside their mosaics
  runs/<task>/<name>/                each run's checkpoints, metrics.csv, TensorBoard logs
  scorers/<task>/scorer.safetensors  the distilled scorer
Completed runs are reused, so an interrupted demo resumes where it stopped. ``--full`` trains
longer on more budgets (heavier, figures in the README).
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

VANILLA, QUAD = "uniform_vit_micro_patch8_128", "quadformer_micro_patch8_128"
# (family, model name, N, scorer); the micro models take 128-px images with 8..32-px patches.
DEFAULT_RUNS = [
    ("vanilla", VANILLA, 64, None),
    ("quadformer", QUAD, 64, "pixel-blur"),
    ("quadformer", QUAD, 28, "pixel-blur"),
    ("vanilla", VANILLA, 256, None),
]
#: --full adds N=100 on glyphs (the Quadformer saturates at N=64 there, the vanilla ViT is at chance)
FULL_EXTRA = [("quadformer", QUAD, 100, "pixel-blur"), ("vanilla", VANILLA, 100, None)]
QUICK_RUNS = [DEFAULT_RUNS[0], DEFAULT_RUNS[1], DEFAULT_RUNS[3]]  # N=256: the distilled scorer's teacher
NATURAL = "natural-3k"
LEARNED = "distilled"
NATURAL_RUNS = [
    ("vanilla", VANILLA, 64, None),
    ("quadformer", QUAD, 64, "pixel-blur"),
    ("quadformer", QUAD, 64, LEARNED),
    ("quadformer", QUAD, 100, LEARNED),
    ("vanilla", VANILLA, 256, None),
]
NATURAL_FULL_EXTRA = [("quadformer", QUAD, 100, "pixel-blur"), ("vanilla", VANILLA, 100, None),
                      ("quadformer", QUAD, 28, LEARNED)]
#: the run whose input gradients teach the distilled scorer: the natural one when the demo trains it
#: (trained first), else the glyphs one
TEACHER = ("vanilla", 256)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("outputs/demo"), help="output folder (default outputs/demo)")
    p.add_argument("--task", default="glyphs", help="built-in task of the first table (default glyphs)")
    p.add_argument("--no-natural", action="store_true", help="skip the natural-photo part")
    p.add_argument("--natural-only", action="store_true", help="only the natural-photo part")
    p.add_argument("--scorer", default=LEARNED,
                   help="natural part: label-free scorer beside pixel-blur (default distilled; e.g. laplacian)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per glyphs run (default 2; 1 with --quick)")
    p.add_argument("--natural-epochs", type=int, default=None,
                   help="epochs per natural-photo run (default 3; 8 with --full; 1 with --quick)")
    p.add_argument("--train-size", type=int, default=None,
                   help="glyphs training images (default 4000; 512 with --quick). Fresh procedural images beat "
                        "repeated epochs: a micro ViT memorises a small set before it learns the textures")
    p.add_argument("--test-size", type=int, default=1000, help="test images (default 1000)")
    p.add_argument("--budgets", type=int, nargs="+", default=None,
                   help="glyphs: run both families at these N only (default: vanilla 64/256, Quadformer 28/64; "
                        "--full adds N=100 to both)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all)")
    p.add_argument("--quick", action="store_true", help="a few small runs, for a smoke test")
    p.add_argument("--full", action="store_true",
                   help="more budgets (glyphs N=100; natural N=28/100) and longer natural-photo runs (heavier)")
    p.add_argument("--seed", type=int, default=0)


def _runs(args: argparse.Namespace) -> list[tuple[str, str, int, str | None]]:
    if args.budgets:
        return [(fam, name, n, sc) for n in args.budgets for fam, name, sc in
                (("vanilla", VANILLA, None), ("quadformer", QUAD, "pixel-blur"))]
    return QUICK_RUNS if args.quick else DEFAULT_RUNS + (FULL_EXTRA if args.full else [])


def _natural_runs(args: argparse.Namespace) -> list[tuple[str, str, int, str | None]]:
    runs = NATURAL_RUNS[1:3] if args.quick else NATURAL_RUNS + (NATURAL_FULL_EXTRA if args.full else [])
    return [(f, m, n, args.scorer if s == LEARNED else s) for f, m, n, s in runs]


def _label(family: str, scorer: str | None) -> str:
    return family if scorer is None else f"{family} ({scorer})"


def _overrides(task: str, name: str, n: int, scorer: str | None, scorer_weights: str | None, train_size: int,
               epochs: int, cache: Path, run_dir: Path, seed: int, init: Path | None = None) -> list[str]:
    kwargs = "global_pool: max"  # max over tokens: the class lives in a few small objects
    if scorer is not None:
        kwargs += f", scorer: {scorer}"
        if scorer_weights:
            kwargs += f", scorer_kwargs: {{weights: '{scorer_weights}'}}"
    return [
        f"model.name={name}", f"model.num_patches={n}", f"data.train=builtin:{task}",
        f"data.train_size={train_size}", "data.val_size=500", "data.image_size=128", "data.batch_size=64",
        f"data.cache_dir={cache}", f"train.epochs={epochs}", f"seed={seed}", f"output.dir={run_dir}",
        "optim.lr=2e-3", "optim.warmup_epochs=0.5", "optim.weight_decay=0.05", "model.kwargs={" + kwargs + "}",
    ] + ([f"model.init_checkpoint={init}"] if init else [])


def run(args: argparse.Namespace) -> int:
    from ..train import load_config

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    epochs = args.epochs or (1 if args.quick else 2)
    nat_epochs = args.natural_epochs or (1 if args.quick else 8 if args.full else 3)
    train_size = args.train_size or (512 if args.quick else 4000)
    nat_size = 512 if args.quick else 3000
    out: Path = args.out
    cache = out / "cache"
    scorer_file = out / "scorers" / NATURAL / "scorer.safetensors"
    parts = [] if args.natural_only else [(args.task, _runs(args), epochs, train_size, out / "runs")]
    if not args.no_natural:
        parts.append((NATURAL, _natural_runs(args), nat_epochs, nat_size, out / "runs" / NATURAL))
    plan = []
    first = {(fam, n) for fam, _, n, sc in (parts[0][1] if parts and not args.natural_only else [])
             if sc in (None, "pixel-blur")}
    natural = {(fam, n) for fam, _, n, _ in (parts[-1][1] if not args.no_natural else [])}
    if args.scorer == LEARNED and not args.no_natural and TEACHER not in natural | first:
        raise QuadformerError("the distilled scorer's teacher is the vanilla N=256 run (natural, else glyphs); run "
                              "the demo with its default budgets, or pick --scorer laplacian")
    teacher_dir = out / "runs" / (NATURAL if TEACHER in natural else "") / f"{TEACHER[0]}_N{TEACHER[1]}"
    if not args.no_natural:  # the teacher run first, so the distilled runs can use it
        task, runs, ep, size, root = parts[-1]
        parts[-1] = (task, sorted(runs, key=lambda r: (r[0], r[2]) != TEACHER), ep, size, root)
    for task, runs, ep, size, root in parts:  # validate every run before any work starts
        for family, name, n, scorer in runs:
            sub = "" if scorer in (None, "pixel-blur") else f"_{scorer}"
            run_dir = root / f"{family}_N{n}{sub}"
            weights = str(scorer_file) if scorer == LEARNED else None
            init = None
            if task == NATURAL:  # the glyphs run of the same family, at this N or the nearest (weights fit any N)
                ns = sorted((m for f, m in first if f == family), key=lambda m: (abs(m - n), m))
                init = out / "runs" / f"{family}_N{ns[0]}" / "last.pt" if ns else None
            cfg = load_config(None, _overrides(task, name, n, scorer, weights, size, ep, cache, run_dir, args.seed,
                                               init))
            if weights is None and init is None:
                from ..train.engine import check_model_config

                check_model_config(cfg)
            plan.append((task, family, name, n, scorer, run_dir, cfg))
    t_all = time.perf_counter()
    rows, models, tests = [], {}, {}
    for task, family, name, n, scorer, run_dir, cfg in plan:
        if task not in tests:
            from ..train.engine import build_dataset

            tests[task] = build_dataset(f"builtin:{task}", "test", args.test_size, False, 128, 0, str(cache))
        if scorer == LEARNED and not scorer_file.exists():
            _distil(task, teacher_dir, scorer_file, cfg, args)
        row, model = _train_and_eval(task, family, name, n, scorer, run_dir, cfg, tests[task], size_of(cfg))
        rows.append(row)
        models[(task, row["family"], n)] = model
        _write_tables(out, rows, args)
    _time_models(rows, models, tests)
    _write_tables(out, rows, args)
    _plots(out, rows, args)
    _mosaic_sheets(out, rows, tests, scorer_file, args)
    print(f"wrote {out / 'results.md'}, {out / 'results.csv'} and the plots in {time.perf_counter() - t_all:.0f} s")
    return 0


def size_of(cfg) -> int:
    return int(cfg.data.image_size)


def _train_and_eval(task, family, name, n, scorer, run_dir: Path, cfg, test, image_size: int):
    from ..train import train
    from ..train.checkpoint import load_checkpoint, model_weights
    from ..train.distributed import DistInfo
    from ..train.engine import build_model, evaluate, model_gmacs

    summary = run_dir / "summary.json"
    t0 = time.perf_counter()
    label = f"[{task} {_label(family, scorer)} N={n}]"
    if summary.exists() and (run_dir / "last.pt").exists() and \
            load_checkpoint(run_dir / "last.pt")["config"] == cfg.to_dict():
        print(f"{label} reusing finished run in {run_dir}")
    else:
        print(f"{label} training {name} for {cfg.train.epochs} epochs on {cfg.data.train_size} images")
        res = train(cfg, resume="auto")
        if res.get("interrupted"):
            raise QuadformerError(f"demo interrupted during {label}; rerun to resume")
    train_s = json.loads(summary.read_text()).get("train_seconds", time.perf_counter() - t0)
    ck = load_checkpoint(run_dir / "last.pt")
    model = build_model(cfg, ck["num_classes"])
    model.load_state_dict(model_weights(ck))
    model.eval()
    metrics = evaluate(model, test, 128, torch.device("cpu"), DistInfo(), amp="off")
    gmacs, _ = model_gmacs(model, image_size)
    print(f"{label} test top-1 {metrics['top1']:.2f}%  GMACs {gmacs:.4f}")
    row = {"task": task, "family": _label(family, scorer), "model": name, "num_patches": n,
           "gmacs": round(gmacs, 4), "top1": round(metrics["top1"], 2), "test_images": int(metrics["count"]),
           "train_seconds": round(train_s, 1), "images_per_s": None, "latency_ms": None}
    return row, model


def _distil(task: str, teacher_dir: Path, path: Path, cfg, args) -> None:
    """The label-free scorer of the natural part: the input gradient of the true class by the
    vanilla N=256 run (full resolution, same 10 classes), computed on the natural training
    images, distilled into a saliency CNN. A ViT teacher's input gradient, not its Grad-CAM
    (docs/scorers.md: 76.8% against 37.5% of the object area in 8-px patches at N=64)."""
    from ..train.saliency import distill

    print(f"[{task}] distilling the saliency of {teacher_dir} into {path}")
    summary = distill(f"builtin:{task}", path.parent, teacher=str(teacher_dir / "last.pt"),
                      train_size=cfg.data.train_size, image_size=128, p_min=8, method="inputgrad",
                      student_epochs=2 if args.quick else 20, seed=args.seed, cache_dir=cfg.data.cache_dir)
    print(f"[{task}] distilled scorer: loss {summary['student_loss']}, {summary['student_seconds']} s")


def _time_models(rows: list[dict], models: dict, tests: dict, repeats: int = 5) -> None:
    """Images/s at batch 64 and batch-1 latency of every model's own forward, interleaved:
    each round times every model once, the best round counts (noise on a shared machine only
    ever slows a run down)."""
    keys = [(r["task"], r["family"], r["num_patches"]) for r in rows]
    batch = {t: torch.stack([ds[i][0] for i in range(min(64, len(ds)))]) for t, ds in tests.items()}
    best64 = {k: float("inf") for k in keys}
    best1 = {k: float("inf") for k in keys}
    with torch.inference_mode():
        for k in keys:  # warm-up (allocations, caches)
            models[k](batch[k[0]][:8])
        for _ in range(repeats):
            for k in keys:
                x = batch[k[0]]
                t0 = time.perf_counter()
                models[k](x)
                best64[k] = min(best64[k], (time.perf_counter() - t0) / x.shape[0])
                t0 = time.perf_counter()
                for i in range(8):
                    models[k](x[i:i + 1])
                best1[k] = min(best1[k], (time.perf_counter() - t0) / 8)
    for r, k in zip(rows, keys):
        r["images_per_s"] = round(1.0 / best64[k], 1)
        r["latency_ms"] = round(1000 * best1[k], 2)


def _write_tables(out: Path, rows: list[dict], args) -> None:
    out.mkdir(parents=True, exist_ok=True)
    from ..utils.io import atomic_write

    fields = list(rows[0])

    def write_csv(f) -> None:
        import io

        s = io.StringIO()
        w = csv.DictWriter(s, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
        f.write(s.getvalue().encode())

    atomic_write(out / "results.csv", write_csv)
    lines = []
    for task in dict.fromkeys(r["task"] for r in rows):
        rs = [r for r in rows if r["task"] == task]
        lines += [f"### `{task}`", "", "| model | N | GMACs/img | test top-1 (%) | img/s (b64) | latency b1 (ms) "
                  "| train s |", "|---|---|---|---|---|---|---|"]
        for r in rs:
            ips = "" if r["images_per_s"] is None else r["images_per_s"]
            lat = "" if r["latency_ms"] is None else r["latency_ms"]
            lines.append(f"| {r['family']} | {r['num_patches']} | {r['gmacs']:.4f} | {r['top1']:.2f} | {ips} | {lat} "
                         f"| {r['train_seconds']} |")
        lines.append("")
    lines += [f"{rows[0]['test_images']} test images per task, seed {args.seed}, {torch.get_num_threads()} threads. "
              "GMACs: analytic qkv/proj/MLP/attention matmuls + patch embedding + the scorer's own MACs. "
              "img/s and latency: the model's own forward, best of 5 interleaved rounds."]
    blob = ("\n".join(lines) + "\n").encode()
    atomic_write(out / "results.md", lambda f: f.write(blob))


def _plots(out: Path, rows: list[dict], args) -> None:
    from ..viz import plot_accuracy_vs_gmacs

    first = [r for r in rows if r["task"] == args.task]
    if first:
        plot_accuracy_vs_gmacs(first, out / "accuracy_vs_gmacs.png", f"built-in '{args.task}', micro ViTs")
    nat = [r for r in rows if r["task"] == NATURAL]
    if nat:
        plot_accuracy_vs_gmacs(nat, out / "accuracy_vs_gmacs_natural.png",
                               f"'{NATURAL}' (natural photos, 3000 training images), micro ViTs")
    _plot_speed(rows, out / "accuracy_vs_speed.png")


def _plot_speed(rows: list[dict], path: Path) -> Path:
    """Accuracy vs images/s (batch 64) and vs batch-1 latency, one panel row per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..utils.figures import save_figure

    tasks = list(dict.fromkeys(r["task"] for r in rows))
    fig, axes = plt.subplots(len(tasks), 2, figsize=(10, 3.8 * len(tasks)), dpi=110, squeeze=False)
    for row_axes, task in zip(axes, tasks):
        rs = [r for r in rows if r["task"] == task]
        for ax, key, xlabel in ((row_axes[0], "images_per_s", "images/s (batch 64, higher is better)"),
                                (row_axes[1], "latency_ms", "batch-1 latency (ms, lower is better)")):
            for fam in dict.fromkeys(r["family"] for r in rs):
                pts = sorted((r for r in rs if r["family"] == fam), key=lambda r: r[key])
                ax.plot([r[key] for r in pts], [r["top1"] for r in pts], marker="o", label=fam)
                for r in pts:
                    ax.annotate(f"N={r['num_patches']}", (r[key], r["top1"]), textcoords="offset points",
                                xytext=(4, -10), fontsize=8)
            ax.set_xlabel(xlabel)
            ax.set_ylabel("top-1 (%)")
            ax.set_title(f"'{task}'")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def _mosaic_sheets(out: Path, rows: list[dict], tests: dict, scorer_file: Path, args) -> None:
    from ..tokenize import QuadGeometry, mosaic
    from ..tokenize.tokenizer import build_scorer
    from ..viz import save_mosaic_grid

    for task, name in ((args.task, "mosaics.png"), (NATURAL, "mosaics_natural.png")):
        if task not in tests:
            continue
        test = tests[task]
        quad = [r for r in rows if r["task"] == task and r["family"].startswith("quadformer")]
        n = 64 if any(r["num_patches"] == 64 for r in quad) else max((r["num_patches"] for r in quad), default=64)
        g = QuadGeometry(128, 128, 8, 32, n)
        scorers = ["pixel-blur"]
        if task == NATURAL and args.scorer != "pixel-blur":
            scorers.append(args.scorer)
        images = torch.stack([test[i][0] for i in range(4)])
        names = getattr(test, "class_names", [])
        imgs, pix, box, titles = [], [], [], []
        for i in range(4):
            for sc in scorers:
                kwargs = {"weights": str(scorer_file)} if sc == LEARNED else {}
                pixels, boxes, _ = mosaic(images[i:i + 1], g, build_scorer(sc, **kwargs))
                imgs.append(images[i])
                pix.append(pixels[0])
                box.append(boxes[0])
                label = names[test[i][1]] if names else test[i][1]
                titles.append(f"class: {label}, N={n}, scorer: {sc}")
        save_mosaic_grid(out / name, torch.stack(imgs), torch.stack(pix), torch.stack(box), 8, titles)
