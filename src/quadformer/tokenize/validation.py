"""Data checks kept out of the hot path (issue 13: no host syncs in the forward).

A check such as "no score is NaN" reads a value back to the host: free on CPU, a device
sync on CUDA, and a data-dependent branch that ``torch.export``/ONNX cannot trace. So such
checks run by default only in eager mode on CPU; :func:`set_validation` turns them on
everywhere (debugging a GPU run) or off.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import Tensor

_MODE: list[bool | None] = [None]  # None: automatic (eager CPU only)


def is_tracing() -> bool:
    """True under ``torch.compile``/``torch.export``, ``jit.trace`` or an ONNX export."""
    return bool(torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export())


def set_validation(mode: bool | None) -> None:
    """``True``: run data checks on every device (syncs on CUDA); ``False``: never;
    ``None`` (default): in eager mode on CPU only. Never while tracing."""
    _MODE[0] = mode


@contextmanager
def validation(mode: bool | None = True) -> Iterator[None]:
    """Context manager form of :func:`set_validation`."""
    old = _MODE[0]
    _MODE[0] = mode
    try:
        yield
    finally:
        _MODE[0] = old


def validating(t: Tensor) -> bool:
    """Whether a data check on ``t`` should run now."""
    if is_tracing():
        return False
    mode = _MODE[0]
    return t.device.type == "cpu" if mode is None else mode
