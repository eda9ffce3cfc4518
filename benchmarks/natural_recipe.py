"""A recipe that learns a small, fixed natural-photo data set, against a timm CNN trained with
the same budget.

On ``builtin:natural-3k`` (3000 training images, 10 classes, chance 10%), each with the same
training images, epochs and optimiser:

* ``quadformer-finetune`` (the recipe): a micro Quadformer pretrained on the built-in
  upstream task ``glyphs`` (fresh procedural images: free data of the same object family on
  smooth scenes), then fine-tuned on the natural photos (new head, ``model.init_checkpoint``);
* ``quadformer-scratch``: the same model from scratch on the natural photos only;
* ``resnet10t``: timm's resnet10t from scratch at full resolution (no token budget).

Prints the validation curve of each (top-1 per epoch), test top-1 and GMACs per image, and
writes ``--json OUT`` (one record per run, the curve included) and ``--plot PNG``. Usage:

    python benchmarks/natural_recipe.py [--epochs 8] [--scorer laplacian] [--num-patches 64]
        [--pretrain-epochs 2] [--pretrain-size 4000] [--out runs/recipe] [--json OUT] [--plot PNG]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from quadformer.train import load_config, train  # noqa: E402
from quadformer.train.checkpoint import load_checkpoint, model_weights  # noqa: E402
from quadformer.train.distributed import DistInfo  # noqa: E402
from quadformer.train.engine import build_dataset, build_model, evaluate, model_gmacs  # noqa: E402
from quadformer.utils.io import atomic_write  # noqa: E402

TASK = "natural-3k"


def common(task: str, size: int, epochs: int, out: Path, cache: str, seed: int) -> list[str]:
    return [f"data.train=builtin:{task}", f"data.train_size={size}", "data.val_size=500", "data.image_size=128",
            "data.batch_size=64", f"data.cache_dir={cache}", f"train.epochs={epochs}", f"seed={seed}",
            f"output.dir={out}", "optim.lr=2e-3", "optim.warmup_epochs=0.5", "optim.weight_decay=0.05",
            "train.progress=false"]


def quad(n: int, scorer: str, weights: str | None) -> list[str]:
    kw = f"global_pool: max, scorer: {scorer}" + (f", scorer_kwargs: {{weights: '{weights}'}}" if weights else "")
    return ["model.name=quadformer_micro_patch8_128", f"model.num_patches={n}", "model.kwargs={" + kw + "}"]


def run_one(name: str, overrides: list[str], test, log=print) -> dict:
    cfg = load_config(None, overrides)
    out = Path(cfg.output.dir)
    done = (out / "summary.json").exists() and (out / "last.pt").exists() and \
        load_checkpoint(out / "last.pt")["config"] == cfg.to_dict()
    if not done:
        log(f"[{name}] training {cfg.model.name} for {cfg.train.epochs} epochs")
        res = train(cfg, resume="auto")
        if res.get("interrupted"):
            raise SystemExit(f"[{name}] interrupted; rerun to resume")
    ck = load_checkpoint(out / "last.pt")
    model = build_model(cfg, ck["num_classes"])
    model.load_state_dict(model_weights(ck))
    top1 = evaluate(model, test, 128, torch.device("cpu"), DistInfo(), amp="off")["top1"]
    with open(out / "metrics.csv") as f:
        curve = [float(r["val_top1"]) for r in csv.DictReader(f) if r.get("val_top1")]
    summary = json.loads((out / "summary.json").read_text())
    rec = {"run": name, "model": cfg.model.name, "test_top1": round(top1, 2), "val_curve": curve,
           "gmacs": round(model_gmacs(model, 128)[0], 4), "epochs": cfg.train.epochs,
           "train_images": cfg.data.train_size, "train_seconds": summary.get("train_seconds")}
    log(f"[{name}] test top-1 {top1:.2f}%  curve {curve}")
    return rec


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--train-size", type=int, default=3000)
    p.add_argument("--scorer", default="laplacian", help="the Quadformer's scorer (default laplacian)")
    p.add_argument("--scorer-weights", default=None)
    p.add_argument("--num-patches", type=int, default=64)
    p.add_argument("--pretrain-epochs", type=int, default=2)
    p.add_argument("--pretrain-size", type=int, default=4000)
    p.add_argument("--runs", nargs="+", default=["quadformer-finetune", "quadformer-scratch", "resnet10t"])
    p.add_argument("--test-size", type=int, default=1000)
    p.add_argument("--out", type=Path, default=Path("runs/natural_recipe"))
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    p.add_argument("--plot", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cache = str(args.out / "cache")
    test = build_dataset(f"builtin:{TASK}", "test", args.test_size, False, 128, 0, cache)
    q = quad(args.num_patches, args.scorer, args.scorer_weights)
    nat = lambda sub: common(TASK, args.train_size, args.epochs, args.out / sub, cache, args.seed)  # noqa: E731
    records = []
    for name in args.runs:
        if name == "quadformer-finetune":
            pre = args.out / "pretrain_glyphs"
            run_one("pretrain-glyphs", q + common("glyphs", args.pretrain_size, args.pretrain_epochs, pre, cache,
                                                  args.seed), build_dataset("builtin:glyphs", "test", 200, False, 128,
                                                                            0, cache))
            records.append(run_one(name, q + nat(name) + [f"model.init_checkpoint={pre / 'last.pt'}"], test))
        elif name == "quadformer-scratch":
            records.append(run_one(name, q + nat(name), test))
        elif name == "resnet10t":
            records.append(run_one(name, ["model.name=resnet10t", "model.num_patches=null"] + nat(name), test))
        else:
            p.error(f"unknown run {name!r}")
    print("| run | model | GMACs/img | test top-1 (%) | val top-1 per epoch |")
    print("|---|---|---|---|---|")
    for r in records:
        print(f"| {r['run']} | {r['model']} | {r['gmacs']} | {r['test_top1']} | "
              f"{', '.join(f'{v:.1f}' for v in r['val_curve'])} |")
    if args.json:
        blob = json.dumps(records, indent=1).encode()
        atomic_write(args.json, lambda f: f.write(blob))
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from quadformer.utils.figures import save_figure

        fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
        for r in records:
            ax.plot(range(1, len(r["val_curve"]) + 1), r["val_curve"], marker="o",
                    label=f"{r['run']} ({r['gmacs']} GMACs)")
        ax.set_xlabel("epoch (3000 images each)")
        ax.set_ylabel("val top-1 (%)")
        ax.set_title(f"'{TASK}': same images, epochs and optimiser")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        save_figure(fig, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
