"""Train the feature scorer's backbone (ShuffleNetV2-x0.5) and save weights it loads.

No ImageNet weights can be downloaded on a closed machine, so train the backbone as a
classifier on a data set (the built-in one by default), then point the feature scorer at
the result:

  quadformer train-scorer --out runs/scorer                      # writes runs/scorer/scorer.safetensors
  quadformer tokenize img.jpg --scorer feature --scorer-weights runs/scorer/scorer.safetensors
  model.kwargs={scorer: feature, scorer_kwargs: {weights: runs/scorer/scorer.safetensors}}  (train config)

Overrides as for `quadformer train` (e.g. data.train=imagefolder:/data/imagenet train.epochs=30).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="optional YAML config (model is forced to the scorer backbone)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.add_argument("--out", default="runs/scorer", help="output folder (default runs/scorer)")
    p.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CKPT")


def run(args: argparse.Namespace) -> int:
    from safetensors.torch import load_file, save_file

    from ..train import load_config, train

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    base = {"model": {"name": "shufflenet_v2_x0_5_tv", "num_patches": None},
            "optim": {"lr": 2e-3, "weight_decay": 0.02, "label_smoothing": 0.1},
            "train": {"epochs": 10}, "data": {"train_size": 6000}}
    cfg = load_config(args.config, list(args.overrides) + [f"output.dir={args.out}"], base=base)
    if cfg.model.name != "shufflenet_v2_x0_5_tv":
        raise ValueError(f"train-scorer trains shufflenet_v2_x0_5_tv, not {cfg.model.name!r}")
    result = train(cfg, resume=args.resume)
    if result.get("interrupted"):
        print("interrupted; resume with: quadformer train-scorer --resume")
        return 130
    out = Path(args.out)
    state = {k: v for k, v in load_file(str(out / "model.safetensors")).items() if not k.startswith("fc.")}
    save_file(state, str(out / "scorer.safetensors"))
    print(f"val top-1 {result.get('val_top1', float('nan')):.2f}%; scorer weights: {out / 'scorer.safetensors'}")
    return 0
