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
import math
import os
import re
from pathlib import Path

from ..utils.errors import QuadformerError

LOG_LEVELS = ("debug", "info", "warning", "error")


def _int_at_least(text: str, lo: int) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < lo:
        raise argparse.ArgumentTypeError(f"{text} must be >= {lo}")
    return v


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _int_at_least(text, 1)


def nonneg_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _int_at_least(text, 0)


def _number(text: str, minimum: float, strict: bool) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if math.isnan(v) or (v <= minimum if strict else v < minimum):
        raise argparse.ArgumentTypeError(f"{text} must be {'>' if strict else '>='} {minimum:g}")
    return v


def positive_float(text: str) -> float:
    """argparse type: a number > 0."""
    return _number(text, 0.0, True)


def nonneg_float(text: str) -> float:
    """argparse type: a number >= 0."""
    return _number(text, 0.0, False)


def positive_floats(text: str) -> list[float]:
    """argparse type: positive numbers separated by commas or spaces (e.g. an lr grid)."""
    values = [positive_float(v) for v in text.replace(",", " ").split()]
    if not values:
        raise argparse.ArgumentTypeError(f"expected positive numbers separated by commas, got {text!r}")
    return values


def image_size(text: str) -> int:
    """argparse type: an input size >= 8 pixels."""
    v = positive_int(text)
    if v < 8:
        raise argparse.ArgumentTypeError(f"{text} is too small (need >= 8 pixels)")
    return v


def safe_name(text: str) -> str:
    """``text`` (a model spec, a task name) as one file or folder name: runs of other characters
    than letters, digits, ``.``, ``_`` and ``-`` become ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_.") or "model"


def add_common(p: argparse.ArgumentParser, *, device: bool = True, threads: bool = True,
               progress: bool = True, log_level: bool = True, progress_default: bool | None = True,
               log_level_default: str = "info") -> None:
    """The shared options (each can be left out where a command has no use for it).

    ``progress_default=None`` leaves ``args.progress`` None unless given, so a config file's own
    setting (``train.progress``) stands; a command that is quiet by default passes
    ``log_level_default="warning"``."""
    g = p.add_argument_group("common options")
    if threads:
        g.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: all)")
    if device:
        g.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: cuda when available)")
    if progress:
        shown = {True: "on", False: "off", None: "the config's train.progress"}[progress_default]
        g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=progress_default,
                       help=f"show progress bars (default: {shown})")
    if log_level:
        g.add_argument("--log-level", default=None, choices=LOG_LEVELS,
                       help=f"logging level (default: {log_level_default})")
        p.set_defaults(log_level_default=log_level_default)


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
    if level is not None:  # asked for: applies even where logging is set up already
        logging.basicConfig(level=getattr(logging, level.upper()), format="%(message)s")
        logging.getLogger().setLevel(getattr(logging, level.upper()))
    elif hasattr(args, "log_level_default"):  # the command's default: an in-process caller's own setup stands
        logging.basicConfig(level=getattr(logging, args.log_level_default.upper()), format="%(message)s")
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
    if not getattr(args, "no_cache", False):  # --no-cache: the cache folder is never touched
        check_output_dir(getattr(args, "cache_dir", None), "--cache-dir")
