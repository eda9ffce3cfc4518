"""Checkpoints: written atomically (temp file + rename), read with ``weights_only=True``.

Keys follow timm's ``CheckpointSaver``: ``state_dict`` (the network), ``state_dict_ema`` (its EMA
or None), ``arch``, ``epoch``, ``optimizer``, so ``timm.models.load_checkpoint(m, "last.pt",
use_ema=True)`` loads the EMA weights; the rest (``objective``, ``scheduler``, ``rng``, ``config``,
``history`` ...) is what a resume needs. Checkpoints written before this layout
(``model``/``ema``) are still read."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch

from ..utils.errors import QuadformerError
from ..utils.io import atomic_write
from ..utils.state_dict import load_torch_file
from .state import Parts, TrainState

FORMAT = 2  # 1: weights under model/ema


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temp file in the same folder, fsync, then rename: a crash leaves
    either the old or the new file, never a torn one."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A training checkpoint, read with ``weights_only=True``."""
    ck = load_torch_file(path)
    if not isinstance(ck, dict) or not ("state_dict" in ck or "model" in ck):
        raise QuadformerError(f"{path} is not a training checkpoint (it holds a {type(ck).__name__} without "
                              f"state_dict/model); pass a last.pt written by `quadformer train`")
    return ck


RESUME_KEYS = ("config", "optimizer", "scheduler", "epoch", "step_in_epoch", "global_step", "rng")


def load_training_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint to resume: one line naming the file when it is not one ``quadformer train`` wrote."""
    ck = load_checkpoint(path)
    if not isinstance(ck, dict) or any(k not in ck for k in RESUME_KEYS) or \
            not isinstance(ck.get("state_dict", ck.get("model")), dict):
        raise QuadformerError(f"{path} is not a training checkpoint (last.pt written by `quadformer train`); "
                              f"resume from one, or drop --resume to train afresh")
    return ck


def model_weights(ck: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The network's state dict of a training checkpoint (either layout)."""
    return ck["state_dict"] if "state_dict" in ck else ck["model"]


def ema_weights(ck: dict[str, Any]) -> dict[str, torch.Tensor] | None:
    """The EMA state dict of a training checkpoint (either layout), None without EMA."""
    return ck.get("state_dict_ema", ck.get("ema"))


def save_checkpoint(path: Path, parts: Parts, state: TrainState, extra: dict[str, Any]) -> None:
    """``extra``: what describes the run (config, num_classes, class_names, multilabel)."""
    atomic_save({
        "format": FORMAT, "arch": extra["config"]["model"]["name"],
        "state_dict": parts.model.state_dict(),
        "state_dict_ema": parts.ema.module.state_dict() if parts.ema is not None else None,
        "objective": parts.objective.state_dict(), "optimizer": parts.optimizer.state_dict(),
        "scheduler": parts.scheduler.state_dict(),
        "scaler": parts.scaler.state_dict() if parts.scaler is not None else None,
        "epoch": state.epoch, "step_in_epoch": state.step_in_epoch, "global_step": state.global_step,
        "epoch_loss_sum": state.epoch_loss_sum, "epoch_seconds": state.epoch_seconds,
        "history": state.history, "run_id": state.run_id, "rng": rng_state(), **extra,
    }, path)


def restore(ck: dict[str, Any], parts: Parts, load_scheduler: bool = True) -> TrainState:
    """Load a checkpoint into ``parts`` and the global RNGs; where the run stands.
    ``load_scheduler=False`` keeps the freshly planned schedule (the epochs changed)."""
    try:
        parts.model.load_state_dict(model_weights(ck))
        if ck.get("objective"):
            parts.objective.load_state_dict(ck["objective"])
        parts.optimizer.load_state_dict(ck["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:
        first = (str(e).strip().splitlines() or [""])[0][:160]
        raise QuadformerError(f"checkpoint of {ck['config'].get('model', {}).get('name')} does not fit this "
                              f"model ({first}); resume with the run's own config or train afresh") from None
    if load_scheduler:
        parts.scheduler.load_state_dict(ck["scheduler"])
    ema = ema_weights(ck)
    if parts.ema is not None and ema is not None:
        parts.ema.module.load_state_dict(ema)
    if parts.scaler is not None and ck.get("scaler") is not None:
        parts.scaler.load_state_dict(ck["scaler"])
    set_rng_state(ck["rng"])
    return TrainState(epoch=ck["epoch"], step_in_epoch=ck["step_in_epoch"], global_step=ck["global_step"],
                      epoch_loss_sum=float(ck.get("epoch_loss_sum", 0.0)),
                      epoch_seconds=float(ck.get("epoch_seconds", 0.0)),
                      history=list(ck.get("history", [])), run_id=str(ck.get("run_id", "")))


def rng_state() -> dict[str, Any]:
    st = {"torch": torch.get_rng_state(), "python": _py_state_to_list(random.getstate())}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict[str, Any]) -> None:
    torch.set_rng_state(st["torch"])
    random.setstate(_py_state_from_list(st["python"]))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def _py_state_to_list(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _py_state_from_list(state: list) -> tuple:
    version, internal, gauss = state
    return (version, tuple(internal), gauss)
