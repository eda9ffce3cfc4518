"""``quadformer`` entry point: subcommands register themselves in :data:`COMMANDS`.

Errors a user can fix (bad budget, unreadable file, unknown option value: a
:class:`~quadformer.utils.errors.QuadformerError`, raised where the input is judged) exit with
code 2 and one line naming the value and the fix; so do argparse errors and an output path the
OS refuses. Any other exception is a bug and shows its traceback. Ctrl-C exits with 130.
``--debug`` shows the traceback of every error.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from collections.abc import Iterator

from ..utils.errors import QuadformerError
from .common import apply_common

# name -> (module, one-line help); modules define add_arguments(parser) and run(args).
COMMANDS: dict[str, tuple[str, str]] = {
    "tokenize": ("quadformer.cli.tokenize_cmd", "cut images into mixed-resolution mosaics (PNG / JSON)"),
    "train": ("quadformer.cli.train_cmd", "train a model from a YAML config (resumable, torchrun/DDP-ready)"),
    "eval": ("quadformer.cli.eval_cmd", "evaluate a model: top-1 (or mAP), GMACs per image, images/s"),
    "predict": ("quadformer.cli.predict_cmd", "classify images or a folder: top-k classes to CSV/JSON, mosaics"),
    "export": ("quadformer.cli.export_cmd", "export a model (tokenizer included) as ONNX or torch.export .pt2"),
    "pretrain": ("quadformer.cli.pretrain_cmd", "pretrain with a scheme: supervised, -kd, ssl, ssl-then-supervised(-kd), joint"),
    "diversity": ("quadformer.cli.diversity_cmd", "filter/activation diversity (W1, W2, A1, A2, A3), per layer, delta vs init"),
    "transfer": ("quadformer.cli.transfer_cmd", "transfer evaluation: linear / kNN / few-shot probes, fine-tuning, mAP"),
    "study": ("quadformer.cli.study_cmd", "run a study end to end (diversity-transfer): train, measure, report"),
    "train-scorer": ("quadformer.cli.train_scorer_cmd", "train the feature scorer's ShuffleNetV2 backbone"),
    "demo": ("quadformer.cli.demo", "the main job: run the end-to-end demo on the built-in data"),
}


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``quadformer CMD: error: ...``), like every other error."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="quadformer",
        description="Mixed-resolution (quadtree) tokenization for Vision Transformers.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (module, help_) in COMMANDS.items():
        mod = importlib.import_module(module)
        p = sub.add_parser(name, help=help_, description=(mod.__doc__ or help_).strip(),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(_module=mod, _parser=p)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse, admitting ``KEY=VALUE`` overrides anywhere (also after ``--out DIR``)."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        sub = getattr(args, "_parser", parser)
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = list(args.overrides or []) + extra
        else:
            sub.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def _os_message(e: OSError) -> str:
    what = e.strerror or e.__class__.__name__
    where = f"{e.filename}" + (f" -> {e.filename2}" if getattr(e, "filename2", None) else "")
    return f"{what}: {where}; check the path (a file where a folder should be, or no write permission?)"


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """Hub names resolve from the local cache while a command runs; a download is asked for
    with ``HF_HUB_OFFLINE=0`` (otherwise a closed machine retries the network for half a
    minute). huggingface_hub reads the variable at import (timm imports it first), so its
    constant is set too; both are restored afterwards (in-process callers keep theirs)."""
    old_env = os.environ.get("HF_HUB_OFFLINE")
    offline = (old_env or "1").strip().lower() in ("1", "true", "yes", "on")
    hub = sys.modules.get("huggingface_hub.constants")
    old_const = getattr(hub, "HF_HUB_OFFLINE", None)
    os.environ["HF_HUB_OFFLINE"] = "1" if offline else old_env or "0"
    if hub is not None:
        hub.HF_HUB_OFFLINE = offline
    try:
        yield
    finally:
        if old_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old_env
        if hub is not None:
            hub.HF_HUB_OFFLINE = old_const


def main(argv: list[str] | None = None) -> int:
    with _hub_offline():
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = _parse(parser, argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    prefix = f"quadformer {args.command}: "
    try:
        apply_common(args, out_is_file=bool(getattr(args._module, "OUT_IS_FILE", False)))
        return int(args._module.run(args) or 0)
    except QuadformerError as e:
        if args.debug:
            raise
        msg = " ".join(str(e).split("\n"))
        print(f"{prefix}error: {msg}", file=sys.stderr)
        return 2
    except OSError as e:
        if args.debug or e.filename is None:
            raise
        print(f"{prefix}error: {_os_message(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prefix}interrupted (rerun the same command to resume where it can)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
