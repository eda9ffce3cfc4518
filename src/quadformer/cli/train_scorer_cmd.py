"""Train a label-free scorer on your own data, and save weights the Quadformer loads.

On a new domain, try these first (pixel-blur only finds detail; on natural photos detail is
everywhere, see docs/scorers.md):

  --kind distilled (recommended): trains a full-resolution teacher (default resnet10t; first
      on the built-in glyphs task, then fine-tuned on the data: from scratch it stays at chance
      on a few thousand photos), takes its Grad-CAM of the true class per p_min cell, and
      distils it into a small CNN that needs no labels (~8 MMACs at 128 px):
        quadformer train-scorer --kind distilled --data builtin:natural --out runs/sal
        model.kwargs={scorer: distilled, scorer_kwargs: {weights: runs/sal/scorer.safetensors}}
      (--teacher RUN reuses a trained classifier of the same label space.)
  --kind feature: trains the feature scorer's ShuffleNetV2-x0.5 backbone as a classifier on the
      data (no ImageNet weights are downloaded here):
        quadformer train-scorer --kind feature --data imagefolder:/data/train --out runs/scorer
        model.kwargs={scorer: feature, scorer_kwargs: {weights: runs/scorer/scorer.safetensors}}
  --kind learned --from RUN: exports the end-to-end scorer of a Quadformer trained with
      model.kwargs={scorer: learned} as a scorer file (usable as scorer=distilled).

Overrides KEY=VALUE as for `quadformer train` (feature kind; teacher training of the distilled
kind, e.g. train.epochs=12).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from ..utils.errors import QuadformerError
from .common import nonneg_int, positive_int


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kind", choices=("feature", "distilled", "learned"), default="feature",
                   help="which scorer to train (default feature)")
    p.add_argument("--data", default=None, help="data spec, e.g. builtin:natural or imagefolder:/data (default "
                                                "the config's, builtin:glyphs)")
    p.add_argument("--config", default=None, help="optional YAML config (feature kind; model is forced)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.add_argument("--out", default="runs/scorer", help="output folder (default runs/scorer)")
    p.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CKPT")
    g = p.add_argument_group("distilled kind")
    g.add_argument("--teacher", default=None, help="a trained classifier (run folder or weights) to distil from; "
                                                  "default: train one")
    g.add_argument("--teacher-model", default="resnet10t", help="timm teacher to train (default resnet10t)")
    g.add_argument("--teacher-epochs", type=positive_int, default=4, help="teacher epochs on --data (default 4)")
    g.add_argument("--pretrain", default="builtin:glyphs",
                   help="data the teacher is trained on first (default builtin:glyphs; 'none': from scratch)")
    g.add_argument("--pretrain-epochs", type=positive_int, default=3)
    g.add_argument("--pretrain-size", type=positive_int, default=2000, help="pretraining images (default 2000)")
    g.add_argument("--train-size", type=positive_int, default=3000, help="training images of built-in data (default 3000)")
    g.add_argument("--image-size", type=positive_int, default=128)
    g.add_argument("--p-min", type=positive_int, default=8, help="finest patch side: the scorer's map resolution (default 8)")
    g.add_argument("--p-max", type=positive_int, default=None,
                   help="coarsest patch side of the Quadformers that will use it (default 4 x p-min)")
    g.add_argument("--saliency", choices=("gradcam", "inputgrad"), default="gradcam")
    g.add_argument("--student-epochs", type=positive_int, default=30)
    g.add_argument("--student-loss", choices=("bce", "bce+list"), default="bce+list",
                   help="bce+list (default): BCE on the teacher's maps plus a listwise term (softmax over "
                        "the cells); bce: BCE only")
    g.add_argument("--context", type=nonneg_int, default=0,
                   help="dilated layers widening the student's view (default 0: two measured no better)")
    g.add_argument("--seed", type=nonneg_int, default=0)
    g.add_argument("--from", dest="from_run", default=None, help="learned kind: the Quadformer run or weights")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.kind == "distilled":
        return _distilled(args)
    if args.kind == "learned":
        return _learned(args)
    return _feature(args)


def _feature(args: argparse.Namespace) -> int:
    from safetensors.torch import load_file, save_file

    from ..train import load_config, train

    base = {"model": {"name": "shufflenet_v2_x0_5_tv", "num_patches": None},
            "optim": {"lr": 2e-3, "weight_decay": 0.02, "label_smoothing": 0.1},
            "train": {"epochs": 10}, "data": {"train_size": 6000}}
    extra = [f"data.train={args.data}"] if args.data else []
    cfg = load_config(args.config, extra + list(args.overrides) + [f"output.dir={args.out}"], base=base)
    if cfg.model.name != "shufflenet_v2_x0_5_tv":
        raise QuadformerError(f"train-scorer trains shufflenet_v2_x0_5_tv, not {cfg.model.name!r}")
    result = train(cfg, resume=args.resume)
    if result.get("interrupted"):
        print("interrupted; resume with: quadformer train-scorer --resume")
        return 130
    out = Path(args.out)
    state = {k: v for k, v in load_file(str(out / "model.safetensors")).items() if not k.startswith("fc.")}
    save_file(state, str(out / "scorer.safetensors"))
    print(f"val top-1 {result.get('val_top1', float('nan')):.2f}%; scorer weights: {out / 'scorer.safetensors'}")
    return 0


def _distilled(args: argparse.Namespace) -> int:
    from ..train.saliency import distill

    summary = distill(args.data or "builtin:glyphs", args.out, teacher=args.teacher, teacher_model=args.teacher_model,
                      teacher_epochs=args.teacher_epochs, train_size=args.train_size, image_size=args.image_size,
                      pretrain=None if args.pretrain.lower() == "none" else args.pretrain,
                      pretrain_epochs=args.pretrain_epochs, pretrain_size=args.pretrain_size, p_max=args.p_max,
                      p_min=args.p_min, method=args.saliency, student_epochs=args.student_epochs,
                      context=args.context, student_loss=args.student_loss, seed=args.seed, teacher_overrides=list(args.overrides))
    print(json.dumps(summary, indent=1))
    print(f"scorer weights: {summary['weights']}  (scorer=distilled, scorer_kwargs={{weights: {summary['weights']}}})")
    return 0


def _learned(args: argparse.Namespace) -> int:
    from ..train.saliency import export_learned

    if not args.from_run:
        raise QuadformerError("--kind learned needs --from RUN (a Quadformer trained with model.kwargs={scorer: learned})")
    path = export_learned(args.from_run, Path(args.out) / "scorer.safetensors")
    print(f"scorer weights: {path}")
    return 0
