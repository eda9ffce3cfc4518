"""Reading weights files: one place, never executing code.

``.safetensors`` through safetensors, anything else through ``torch.load(weights_only=True)``;
wrapper keys (``state_dict``, ``model``) unwrapped and the prefixes that DDP (``module.``) and
``torch.compile`` (``_orig_mod.``) add stripped, as timm's ``clean_state_dict`` does.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .errors import QuadformerError

WRAPPER_KEYS = ("state_dict", "model")
PREFIXES = ("module.", "_orig_mod.")


def load_torch_file(path: str | os.PathLike, what: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; a missing or unreadable file is a
    :class:`QuadformerError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise QuadformerError(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (torch raises many kinds for a bad file)
        first = (str(e).strip().splitlines() or [""])[0][:160]  # torch's messages run to many lines
        raise QuadformerError(f"cannot read {what} {path} ({e.__class__.__name__}: {first}); expected a file "
                              f"written by `quadformer train` (last.pt) or `model.safetensors`") from None


def clean_state_dict(state: Mapping[str, Tensor], prefixes: tuple[str, ...] = PREFIXES) -> dict[str, Tensor]:
    """Strip wrapper prefixes from every key that carries them (repeatedly: ``module._orig_mod.``)."""
    out = {}
    for k, v in state.items():
        changed = True
        while changed:
            changed = False
            for p in prefixes:
                if k.startswith(p):
                    k, changed = k[len(p):], True
        out[k] = v
    return out


def read_state_dict(path: str | os.PathLike, what: str = "weights file",
                    prefixes: tuple[str, ...] = PREFIXES) -> dict[str, Tensor]:
    """A state dict of tensors from ``.safetensors`` or a ``torch.save`` file (a bare state dict or
    one under ``state_dict`` / ``model``), keys cleaned of ``prefixes``."""
    path = Path(path)
    if not path.is_file():
        raise QuadformerError(f"{what} not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            sd: Any = load_file(str(path))
        except Exception as e:  # noqa: BLE001
            raise QuadformerError(f"cannot read {what} {path} as safetensors ({e.__class__.__name__})") from None
    else:
        sd = load_torch_file(path, what)
        for key in WRAPPER_KEYS:
            if isinstance(sd, Mapping) and key in sd and isinstance(sd[key], Mapping):
                sd = sd[key]
                break
    if not isinstance(sd, Mapping) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise QuadformerError(f"{what} {path} does not hold a state dict of tensors")
    return clean_state_dict(sd, prefixes)
