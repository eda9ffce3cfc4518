"""Train a model (Quadformer, uniform-grid ViT or any timm model) from a YAML config.

Overrides use section.key=value, e.g. optim.lr=3e-4 train.epochs=5 model.num_patches=100.
Checkpoints (OUT/last.pt, timm's keys: state_dict, state_dict_ema) are written atomically every
epoch and on Ctrl-C / SIGTERM; --resume continues bit for bit, refuses a config that changes the
result (more train.epochs re-plan the schedule), and never drops a logged epoch. One process per
output folder (a second is refused, naming the first one's PID). output.wandb=true also logs to
Weights & Biases (WANDB_MODE=offline works). Several processes / machines: launch with torchrun, e.g.

  torchrun --nproc_per_node 2 -m quadformer.cli.main train --config configs/micro_quadformer.yaml
"""

from __future__ import annotations

import argparse
import json

from .common import add_common


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="YAML config (see configs/); defaults apply without one")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. optim.lr=3e-4")
    p.add_argument("--resume", nargs="?", const="last", default=None, metavar="CKPT",
                   help="resume from CKPT, or from OUT/last.pt when no path is given; the config must be the "
                        "run's own, except train.epochs (more epochs re-plan the schedule)")
    p.add_argument("--out", default=None, help="output folder (same as output.dir=...)")
    # no --device: the engine takes cuda when there is one (torchrun: one GPU per process)
    add_common(p, device=False, progress_default=None)


def run(args: argparse.Namespace) -> int:
    from ..train import load_config, train

    overrides = list(args.overrides) + ([f"output.dir={args.out}"] if args.out else [])
    if args.progress is not None:
        overrides.append(f"train.progress={str(args.progress).lower()}")
    cfg = load_config(args.config, overrides)
    result = train(cfg, resume=args.resume)
    if result.get("interrupted"):
        print(f"interrupted at epoch {result['epoch'] + 1}, step {result['step_in_epoch']}; "
              f"resume with: quadformer train --config ... --resume")
        return 130
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}))
    return 0
