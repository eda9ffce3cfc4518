"""The recipe that learns a small, fixed natural-photo data set (docs/recipe.md), its baselines,
and a timm CNN trained with the same budget.

On ``builtin:natural-3k`` (3000 training images, 10 classes, chance 10%). Every run is the
recipe of ``configs/recipe_natural.yaml`` (same images, epochs, optimiser, schedule, shift
augmentation and drop-path); only the model and its start differ. "glyphs-pretrained" runs start
from ``configs/recipe_pretrain_glyphs.yaml`` (2 epochs on 4000 fresh images of the built-in
glyphs task) with a new head:

* ``quadformer-N64`` (the recipe) and ``quadformer-N100``: micro Quadformer with the distilled
  saliency scorer (``--scorer-weights``; label-free at inference, its GMACs counted);
* ``vanilla-N64``, ``vanilla-N256``: the uniform-grid micro ViT, its own glyph pretraining;
* ``resnet10t-glyphs``: timm's resnet10t at full resolution (no token budget), glyph-pretrained;
* ``resnet10t``, ``quadformer-scratch``: from scratch on the natural photos only.

``--epochs/--shift/--drop-path`` replace the recipe's values for every run (a folder per
setting: ``OUT/<run>_e<epochs>[_shift<px>][_dp<rate>][_<scorer file stem>]``); ``--pretrained ARCH=CKPT`` uses a
glyph-trained checkpoint instead of pretraining ARCH. Prints the validation curve of each run
(top-1 per epoch), test top-1 on 1000 test images (backgrounds from photo regions never seen in
training), GMACs per image and training seconds; writes ``--json OUT`` (one record per run, the
curve included) and ``--plot PNG``. Finished runs are reused (same recipe), unfinished ones
resume. Usage:

    python benchmarks/natural_recipe.py --scorer-weights SCORER [--runs quadformer-N64 resnet10t-glyphs]
        [--epochs 12 --shift 0 --drop-path 0] [--out runs/natural_recipe] [--threads 1] [--json OUT] [--plot PNG]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
import yaml

from quadformer.train import load_config, train
from quadformer.train.checkpoint import load_checkpoint, model_weights
from quadformer.train.distributed import DistInfo
from quadformer.train.engine import build_dataset, build_model, evaluate, model_gmacs
from quadformer.train.run_folder import recipe_diff
from quadformer.utils.io import atomic_write

TASK = "natural-3k"
CONFIGS = Path(__file__).resolve().parent.parent / "configs"
RECIPE = CONFIGS / "recipe_natural.yaml"
PRETRAIN = CONFIGS / "recipe_pretrain_glyphs.yaml"
#: (model name, N, kind, pretrained on glyphs) per run
RUNS = {
    "quadformer-N64": ("quadformer_micro_patch8_128", 64, "quad", True),
    "quadformer-N100": ("quadformer_micro_patch8_128", 100, "quad", True),
    "vanilla-N64": ("uniform_vit_micro_patch8_128", 64, "vit", True),
    "vanilla-N256": ("uniform_vit_micro_patch8_128", 256, "vit", True),
    "resnet10t-glyphs": ("resnet10t", None, "cnn", True),
    "resnet10t": ("resnet10t", None, "cnn", False),
    "quadformer-scratch": ("quadformer_micro_patch8_128", 64, "quad", False),
}
#: one glyph pretraining per architecture (the Quadformer's serves every N: pixel-blur at N=64)
PRE = {"quadformer_micro_patch8_128": ("quadformer", 64, "{global_pool: max, scorer: pixel-blur}"),
       "uniform_vit_micro_patch8_128": None, "resnet10t": ("resnet10t", None, "{}")}


def run_kwargs(kind: str, recipe: dict, scorer_weights: str | None, drop_path: float) -> str:
    """The model kwargs of a run: the recipe's (pooling, drop-path), its scorer for the Quadformer."""
    kw = {k: v for k, v in recipe.items() if k not in ("scorer", "scorer_kwargs", "drop_path_rate")}
    if drop_path:
        kw["drop_path_rate"] = drop_path
    if kind == "quad":
        kw.update(scorer=recipe.get("scorer", "distilled"), scorer_kwargs={"weights": scorer_weights})
    elif kind == "cnn":
        kw.pop("global_pool", None)  # the CNN keeps its own average pooling
    return yaml.safe_dump(kw, default_flow_style=True, width=10_000).strip()


def model_overrides(name: str, n: int | None, kwargs: str) -> list[str]:
    return [f"model.name={name}", f"model.num_patches={'null' if n is None else n}", f"model.kwargs={kwargs}"]


def finished(out: Path, cfg) -> bool:
    """``out`` holds a finished run of this recipe (paths and progress settings aside)."""
    if not ((out / "summary.json").exists() and (out / "last.pt").exists()):
        return False
    ck = load_checkpoint(out / "last.pt")
    return ck.get("epoch") == cfg.train.epochs and not recipe_diff(ck["config"], cfg.to_dict(), out)


def ensure_trained(name: str, config: Path, overrides: list[str], log=print, no_train: bool = False):
    """Train (or resume) unless finished; ``no_train``: report what the folder holds (None if nothing)."""
    cfg = load_config(config, overrides)
    out = Path(cfg.output.dir)
    if no_train:
        return (cfg, out) if (out / "last.pt").exists() else (cfg, None)
    if not finished(out, cfg):
        log(f"[{name}] training {cfg.model.name} for {cfg.train.epochs} epochs in {out}")
        res = train(cfg, resume="auto")
        if res.get("interrupted"):
            raise SystemExit(f"[{name}] interrupted; rerun to resume")
    return cfg, out


def record(name: str, cfg, out: Path, test, pretrained: str | None, log=print) -> dict:
    ck = load_checkpoint(out / "last.pt")
    model = build_model(cfg, ck["num_classes"])
    model.load_state_dict(model_weights(ck))
    top1 = evaluate(model, test, 128, torch.device("cpu"), DistInfo(), amp="off")["top1"]
    with open(out / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val_top1")]
    curve = [float(r["val_top1"]) for r in rows]
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
    seconds = summary.get("train_seconds") or sum(float(r["epoch_seconds"]) for r in rows)
    rec = {"run": name, "model": cfg.model.name, "num_patches": cfg.model.num_patches,
           "start": pretrained or "scratch", "test_top1": round(top1, 2), "val_curve": curve,
           "gmacs": round(model_gmacs(model, cfg.data.image_size)[0], 4), "epochs": cfg.train.epochs,
           "epochs_done": int(ck["epoch"]), "train_images": cfg.data.train_size, "train_seconds": seconds}
    done = "" if rec["epochs_done"] == cfg.train.epochs else f" (unfinished: {rec['epochs_done']}/{cfg.train.epochs})"
    log(f"[{name}] test top-1 {top1:.2f}%{done}  curve {curve}")
    return rec


def scorer_provenance(weights: str) -> str:
    """The scorer file's README (``<stem>.README.txt`` or ``README.txt`` beside it), else its
    metadata (teacher, saliency, data)."""
    for readme in (Path(weights).with_suffix(".README.txt"), Path(weights).parent / "README.txt"):
        if readme.is_file():
            return readme.read_text().strip()
    from safetensors import safe_open

    with safe_open(weights, "pt") as f:
        meta = f.metadata() or {}
    return ", ".join(f"{k}={meta[k]}" for k in ("data", "teacher", "saliency", "train_images") if k in meta)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    p.add_argument("--scorer-weights", default=None,
                   help="distilled scorer file (quadformer train-scorer --kind distilled --data builtin:natural-3k)")
    p.add_argument("--pretrained", nargs="*", default=[], metavar="ARCH=CKPT",
                   help="use this glyph-pretrained checkpoint instead of pretraining ARCH "
                        "(quadformer, vanilla64, vanilla256, resnet10t)")
    p.add_argument("--epochs", type=int, default=None, help="fine-tuning epochs (default the recipe's)")
    p.add_argument("--shift", type=int, default=None, help="data.shift in px (default the recipe's)")
    p.add_argument("--drop-path", type=float, default=None, help="drop_path_rate (default the recipe's)")
    p.add_argument("--no-train", action="store_true",
                   help="train nothing: report the runs as their folders hold them (unfinished ones marked)")
    p.add_argument("--test-size", type=int, default=1000)
    p.add_argument("--out", type=Path, default=Path("runs/natural_recipe"))
    p.add_argument("--cache-dir", default=None, help="rendered built-in images (default OUT/cache)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None)
    p.add_argument("--plot", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    given = dict(s.split("=", 1) for s in args.pretrained)
    if any(RUNS[r][2] == "quad" for r in args.runs) and not args.scorer_weights:
        p.error("--scorer-weights is needed for the Quadformer runs (quadformer train-scorer --kind distilled "
                "--data builtin:natural-3k --out runs/sal; then --scorer-weights runs/sal/scorer.safetensors)")
    recipe = load_config(RECIPE)
    epochs = args.epochs or recipe.train.epochs
    shift = recipe.data.shift if args.shift is None else args.shift
    drop_path = recipe.model.kwargs.get("drop_path_rate", 0.0) if args.drop_path is None else args.drop_path
    tag = f"e{epochs}" + (f"_shift{shift}" if shift else "") + (f"_dp{drop_path:g}" if drop_path else "")
    cache = args.cache_dir or str(args.out / "cache")
    common = [f"data.cache_dir={cache}", "train.progress=false"]
    fine = common + ["data.train_size=3000", "data.val_size=500", f"train.epochs={epochs}", f"data.shift={shift}"]
    test = build_dataset(f"builtin:{TASK}", "test", args.test_size, False, 128, 0, cache)

    records = []
    for name in args.runs:
        model, n, kind, pre = RUNS[name]
        kwargs = run_kwargs(kind, recipe.model.kwargs, args.scorer_weights, drop_path)
        scorer_tag = f"_{Path(args.scorer_weights).stem}" if kind == "quad" else ""
        folder = args.out / f"{name.replace('-', '_')}_{tag}{scorer_tag}"
        over = model_overrides(model, n, kwargs) + fine + [f"output.dir={folder}"]
        start = None
        if pre:
            arch, pn, pkw = PRE[model] or (f"vanilla{n}", n, "{global_pool: max}")
            if arch in given:
                ck = given[arch]
            else:
                ck = str(args.out / f"pretrain_{arch}" / "last.pt")
                if not args.no_train:
                    ensure_trained(f"pretrain-{arch}", PRETRAIN, model_overrides(model, pn, pkw) + common
                                   + [f"output.dir={args.out / f'pretrain_{arch}'}"])
            over.append(f"model.init_checkpoint={ck}")
            start = "glyphs-pretrained"
        else:
            over.append("model.init_checkpoint=null")
        cfg, out = ensure_trained(name, RECIPE, over, no_train=args.no_train)
        if out is not None:
            records.append(record(name, cfg, out, test, start))
    print(f"recipe {RECIPE.name}: {epochs} epochs, data.shift={shift}, drop_path_rate={drop_path:g}")

    if args.scorer_weights:
        print(f"scorer: {args.scorer_weights} ({scorer_provenance(args.scorer_weights)})")
    print("| run | start | GMACs/img | epochs | train s | test top-1 (%) | val top-1 per epoch |")
    print("|---|---|---|---|---|---|---|")
    for r in records:
        secs = f"{r['train_seconds']:.0f}" if r["train_seconds"] else "-"
        ep = str(r["epochs"]) if r["epochs_done"] == r["epochs"] else f"{r['epochs_done']} of {r['epochs']}"
        print(f"| {r['run']} | {r['start']} | {r['gmacs']} | {ep} | {secs} | {r['test_top1']} | "
              f"{', '.join(f'{v:.1f}' for v in r['val_curve'])} |")
    if args.json:
        blob = json.dumps({"task": TASK, "scorer": args.scorer_weights, "runs": records}, indent=1).encode()
        atomic_write(args.json, lambda f: f.write(blob))
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from quadformer.utils.figures import save_figure

        fig, ax = plt.subplots(figsize=(6.5, 4), dpi=110)
        for r in records:
            ax.plot(range(1, len(r["val_curve"]) + 1), r["val_curve"], marker="o", ms=3,
                    label=f"{r['run']}, {r['start']} ({r['gmacs']} GMACs)"
                    + ("" if r["epochs_done"] == r["epochs"] else f", {r['epochs_done']} of {r['epochs']} epochs"))
        ax.axhline(10, color="grey", lw=0.8, ls=":")
        ax.set_xlabel(f"epoch ({records[0]['train_images'] if records else 3000} images each)")
        ax.set_ylabel("val top-1 (%)")
        ax.set_title(f"'{TASK}': same images, epochs and optimiser")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        save_figure(fig, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
