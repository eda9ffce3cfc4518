"""Options every command shares, declared and judged in one place.

``add_common(parser)`` adds ``--threads``, ``--device``, ``--progress/--no-progress`` and
``--log-level``; :func:`quadformer.cli.main.main` calls :func:`apply_common` on every command
before it runs, so a bad value fails as one line before any work starts, whichever command
declared the option (its own ``--threads``/``--device``/counts/``--out`` get the same checks;
a command whose ``--out`` is a file sets ``OUT_IS_FILE = True``). Argument types
(``positive_int``, ...) give argparse one-line errors.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from ..utils.errors import QuadformerError

LOG_LEVELS = ("debug", "info", "warning", "error")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text} must be >= 1")
    return v


def nonneg_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"{text} must be >= 0")
    return v


def add_common(p: argparse.ArgumentParser, *, device: bool = True, threads: bool = True,
               progress: bool = True, log_level: bool = True) -> None:
    """The shared options (each can be left out where a command has no use for it)."""
    g = p.add_argument_group("common options")
    if threads:
        g.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: all)")
    if device:
        g.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: cuda when available)")
    if progress:
        g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                       help="show progress bars (default: on)")
    if log_level:
        g.add_argument("--log-level", default="info", choices=LOG_LEVELS, help="logging level (default: info)")


def parse_device(spec: str | None):
    """A ``torch.device`` that exists on this machine; ``None`` = cuda when available, else cpu."""
    import torch

    if spec is None or spec == "":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(spec)
    except (RuntimeError, ValueError):
        raise QuadformerError(f"--device {spec!r} is not a device; use cpu, cuda, cuda:0 or mps") from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise QuadformerError(f"--device {spec}: no CUDA device on this machine; use --device cpu")
        if dev.index is not None and dev.index >= n:
            raise QuadformerError(f"--device {spec}: this machine has {n} CUDA device(s) (cuda:0..cuda:{n - 1})")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise QuadformerError(f"--device {spec}: MPS is not available here; use --device cpu")
    elif dev.type != "cpu":
        raise QuadformerError(f"--device {spec!r}: unsupported device type; use cpu, cuda, cuda:N or mps")
    return dev


def check_output_dir(path: str | os.PathLike | None, option: str = "--out") -> None:
    """Fail as one line when an output folder cannot be one (a file is in the way, or the
    nearest existing parent is not writable)."""
    if path is None:
        return
    p = Path(path)
    for q in (p, *p.parents):
        if q.exists():
            if not q.is_dir():
                raise QuadformerError(f"{option} {p}: {q} is a file, not a folder; pass another {option}")
            if not os.access(q, os.W_OK | os.X_OK):
                raise QuadformerError(f"{option} {p}: {q} is not writable; pass a writable {option}")
            return


def check_output_file(path: str | os.PathLike | None, option: str) -> None:
    """Fail as one line when an output file's place is a folder or its folder cannot be made."""
    if path is None:
        return
    p = Path(path)
    if p.is_dir():
        raise QuadformerError(f"{option} {p} is a folder; pass a file name")
    check_output_dir(p.parent, option)


def apply_common(args: argparse.Namespace, out_is_file: bool = False) -> None:
    """Judge and apply the shared options present on ``args`` (threads, device, log level,
    counts, the output folder, or file with ``out_is_file``); ``args.device`` becomes a
    ``torch.device`` string that exists here."""
    threads = getattr(args, "threads", None)
    if threads is not None:
        if int(threads) < 1:
            raise QuadformerError(f"--threads {threads} must be >= 1")
        import torch

        torch.set_num_threads(int(threads))
    if getattr(args, "device", None) is not None:
        args.device = str(parse_device(args.device))
    level = getattr(args, "log_level", None)
    if level is not None:
        logging.basicConfig(level=getattr(logging, level.upper()), format="%(message)s")
        logging.getLogger().setLevel(getattr(logging, level.upper()))
    for name in ("batch_size", "ft_batch_size", "num_images", "epochs", "draws", "resamples", "train_size",
                 "test_size", "data_size", "top_k", "num_patches"):
        v = getattr(args, name, None)
        if isinstance(v, int) and not isinstance(v, bool) and v < 1:
            raise QuadformerError(f"--{name.replace('_', '-')} {v} must be >= 1")
    for name in ("batch_sizes", "knn_k", "shots", "budgets", "seeds"):
        v = getattr(args, name, None)
        bad = [x for x in v if isinstance(x, int) and x < 1] if isinstance(v, list) else []
        if bad:
            raise QuadformerError(f"--{name.replace('_', '-')} {bad[0]} must be >= 1")
    if out_is_file:
        check_output_file(getattr(args, "out", None), "--out")
    else:
        check_output_dir(getattr(args, "out", None), "--out")
    check_output_dir(getattr(args, "cache_dir", None), "--cache-dir")
