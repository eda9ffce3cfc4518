"""What a training run holds: the modules it trains (:class:`Parts`) and where it stands
(:class:`TrainState`). A checkpoint is both, so a resumed run continues bit for bit."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class Parts:
    model: nn.Module  # the network (what gets exported)
    objective: nn.Module  # the loss and whatever it trains besides the network (projector, DINO teacher)
    step_module: nn.Module  # model + objective: what the optimiser sees
    ddp_step: nn.Module  # step_module, DDP-wrapped in a multi-process run
    optimizer: torch.optim.Optimizer
    scheduler: Any  # timm CosineLRScheduler, stepped per update
    ema: Any = None  # timm ModelEmaV3 or None
    scaler: Any = None  # GradScaler (fp16 on CUDA) or None


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    step_in_epoch: int = 0  # optimiser steps done in the current epoch
    global_step: int = 0
    epoch_loss_sum: float = 0.0  # sum of the current epoch's step losses (this process; all of them on resume)
    epoch_seconds: float = 0.0  # time spent in the current epoch so far (across resumes)
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per finished epoch
    run_id: str = ""  # names the run in W&B across resumes
