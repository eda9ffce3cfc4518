"""Pretrain with one of the schemes of the diverse-transfer study, through the one engine.

  quadformer pretrain --scheme ssl-then-supervised-kd --config configs/study_nano.yaml \\
      --teacher runs/teacher/model.safetensors --stage-a-set train.epochs=40 --out runs/ssl_sup_kd

Schemes: supervised, supervised-kd, supervised-long, ssl, ssl-then-supervised,
ssl-then-supervised-kd, ssl-then-supervised-lowlr, joint. Two-stage schemes write
OUT/stage_a (SSL) and OUT/stage_b (supervised, new head) and copy the final weights to
OUT/model.safetensors; every stage resumes on its own (rerun the same command) and a
finished stage is reused. The SSL method is objective.ssl_method (simclr or dino);
train.snapshots=6 keeps stage-B weights at 6 evenly spaced steps (a trajectory).
"""

from __future__ import annotations

import argparse
import json

from .common import add_common, positive_float, positive_int


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..train.schemes import SCHEMES

    p.add_argument("--scheme", required=True, choices=list(SCHEMES), help="pretraining scheme")
    p.add_argument("--config", default=None, help="YAML config (the supervised recipe; stage A shares it)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. optim.lr=3e-4")
    p.add_argument("--teacher", default=None, help="KD teacher checkpoint (model.safetensors or last.pt)")
    p.add_argument("--stage-a", default=None, metavar="DIR", help="reuse a finished SSL run as stage A")
    p.add_argument("--stage-a-set", nargs="+", default=[], metavar="KEY=VALUE",
                   help="overrides for the SSL stage only, e.g. train.epochs=40 optim.lr=2e-3")
    p.add_argument("--long-factor", type=positive_int, default=3, help="supervised-long: epochs multiplier")
    p.add_argument("--lowlr-factor", type=positive_float, default=0.2, help="ssl-then-supervised-lowlr: stage-B lr factor")
    p.add_argument("--out", required=True, help="output folder")
    add_common(p, device=False, progress_default=None)  # the engine picks the device, as in train


def run(args: argparse.Namespace) -> int:
    from ..train import load_config
    from ..train.schemes import SchemeOptions, run_scheme

    progress = [] if args.progress is None else [f"train.progress={str(args.progress).lower()}"]
    cfg = load_config(args.config, list(args.overrides) + progress)
    opts = SchemeOptions(teacher=args.teacher, stage_a=args.stage_a, stage_a_overrides=list(args.stage_a_set),
                         long_factor=args.long_factor, lowlr_factor=args.lowlr_factor)
    res = run_scheme(args.scheme, cfg, args.out, opts)
    if res.get("interrupted"):
        print("interrupted; rerun the same command to resume")
        return 130
    print(json.dumps([{"stage": s["stage"], **{k: round(v, 4) if isinstance(v, float) else v
                                               for k, v in s["result"].items() if k.startswith(("val", "train_loss"))}}
                      for s in res["stages"]]))
    return 0
