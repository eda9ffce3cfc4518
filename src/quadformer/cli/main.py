"""``quadformer`` entry point: subcommands register themselves in :data:`COMMANDS`.

Errors a user can fix (bad budget, unreadable file, unknown option value) exit with code 2
and one line naming the value and the fix; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..utils.errors import QuadformerError

# name -> (module, one-line help); modules define add_arguments(parser) and run(args).
COMMANDS: dict[str, tuple[str, str]] = {
    "tokenize": ("quadformer.cli.tokenize_cmd", "cut images into mixed-resolution mosaics (PNG / JSON)"),
    "train": ("quadformer.cli.train_cmd", "train a model from a YAML config (resumable, torchrun/DDP-ready)"),
    "eval": ("quadformer.cli.eval_cmd", "evaluate a checkpoint: top-1, GMACs per image, images/s"),
    "pretrain": ("quadformer.cli.pretrain_cmd", "pretrain with a scheme: supervised, -kd, ssl, ssl-then-supervised(-kd), joint"),
    "diversity": ("quadformer.cli.diversity_cmd", "filter/activation diversity (W1, W2, A1, A2, A3), per layer, delta vs init"),
    "transfer": ("quadformer.cli.transfer_cmd", "transfer evaluation: linear / kNN / few-shot probes, fine-tuning, mAP"),
    "study": ("quadformer.cli.study_cmd", "run a study end to end (diversity-transfer): train, measure, report"),
    "train-scorer": ("quadformer.cli.train_scorer_cmd", "train the feature scorer's ShuffleNetV2 backbone"),
    "demo": ("quadformer.cli.demo", "the main job: run the end-to-end demo on the built-in data"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quadformer",
        description="Mixed-resolution (quadtree) tokenization for Vision Transformers.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_) in COMMANDS.items():
        mod = importlib.import_module(module)
        p = sub.add_parser(name, help=help_, description=(mod.__doc__ or help_).strip(),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(_module=mod)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args._module.run(args) or 0)
    except (QuadformerError, ValueError, FileNotFoundError, KeyError) as e:
        if args.debug:
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"quadformer {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"quadformer {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
