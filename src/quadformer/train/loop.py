"""The loop's parts, as timm's train.py and DINO's main_dino.py have them: one epoch of
optimiser steps (:func:`train_one_epoch`), one evaluation pass (:func:`evaluate`), mixed
precision, and the interrupt flag that turns Ctrl-C / SIGTERM into a checkpoint and a clean exit."""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..utils.errors import QuadformerError
from .distributed import DistInfo, all_reduce_sum
from .objectives import supervised_loss
from .state import Parts, TrainState


def amp_context(mode: str, device: torch.device):
    if mode == "off":
        return nullcontext()
    dtype = torch.float16 if mode == "fp16" else torch.bfloat16
    if mode == "auto" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        dtype = torch.float16
    return torch.autocast(device.type, dtype=dtype)


class Interrupt:
    """SIGINT/SIGTERM set a flag; the loop checkpoints at the next step and exits cleanly
    (a second signal gives up at once)."""

    def __init__(self) -> None:
        self.hit = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> Interrupt:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame) -> None:
        if self.hit:
            raise KeyboardInterrupt
        self.hit = True

    def __exit__(self, *exc) -> None:
        for sig, h in self._old.items():
            signal.signal(sig, h)


def agreed_flags(info: DistInfo, *flags: bool) -> list[bool]:
    """Each flag true on any process, on every process (one tiny all-reduce per step under
    DDP), so all of them stop or checkpoint at the same step."""
    if not info.enabled:
        return list(flags)
    t = all_reduce_sum(torch.tensor([float(f) for f in flags]), info)
    return [bool(v > 0) for v in t.tolist()]


@dataclass
class StepHooks:
    """What the epoch loop calls out to (the engine owns checkpoints and exports)."""

    save: Callable[[], None]  # write last.pt of the current state
    snapshot: Callable[[int], None]  # export the weights at this global step
    snapshot_steps: set[int]
    should_stop: Callable[[], bool]  # interrupted, or a test's step limit reached
    checkpoint_every: int = 0


def backward_and_step(parts: Parts, loss: torch.Tensor, clip_grad: float | None) -> None:
    """One optimiser update: backward (loss-scaled under fp16), gradient-norm clipping, step."""
    parts.optimizer.zero_grad(set_to_none=True)
    if parts.scaler is not None:
        parts.scaler.scale(loss).backward()
        parts.scaler.unscale_(parts.optimizer)
    else:
        loss.backward()
    if clip_grad:
        nn.utils.clip_grad_norm_(parts.step_module.parameters(), clip_grad)
    if parts.scaler is not None:
        parts.scaler.step(parts.optimizer)
        parts.scaler.update()
    else:
        parts.optimizer.step()


def train_one_epoch(parts: Parts, loader: Iterable, state: TrainState, *, total_steps: int, clip_grad: float | None,
                    amp: str, device: torch.device, info: DistInfo, hooks: StepHooks, bar: Any = None) -> bool:
    """Optimiser steps over ``loader`` (the rest of ``state.epoch``), updating ``state``.
    Returns True when stopped early (interrupt or step limit), after writing a checkpoint."""
    parts.ddp_step.train()
    start, before = time.perf_counter(), state.epoch_seconds
    for x, y in loader:
        x = [v.to(device, non_blocking=True) for v in x] if isinstance(x, list) else x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        with amp_context(amp, device):
            loss = parts.ddp_step(x, y, state.epoch)
        backward_and_step(parts, loss, clip_grad)
        state.global_step += 1
        state.step_in_epoch += 1
        parts.scheduler.step_update(num_updates=state.global_step)
        parts.objective.after_step(parts.model, state.global_step, total_steps)
        if state.global_step in hooks.snapshot_steps:
            hooks.snapshot(state.global_step)
        if parts.ema is not None:
            parts.ema.update(parts.model, step=state.global_step)
        value = loss.item()
        stop, diverged = agreed_flags(info, hooks.should_stop(), not math.isfinite(value))
        if diverged:
            hooks.save()
            raise QuadformerError(f"loss became {value} at step {state.global_step}; lower optim.lr "
                                  f"(now {parts.optimizer.defaults.get('lr')}) or set optim.clip_grad")
        state.epoch_loss_sum += value
        state.epoch_seconds = before + time.perf_counter() - start
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{value:.3f}", lr=f"{parts.optimizer.param_groups[0]['lr']:.2e}")
        k = hooks.checkpoint_every
        if stop or (k and state.global_step % k == 0):
            hooks.save()
        if stop:
            return True
    return False


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset, batch_size: int, device: torch.device, info: DistInfo,
             multilabel: bool = False, amp: str = "off", progress: bool = False) -> dict[str, Any]:
    """Loss and top-1 in percent over ``dataset`` (multi-label: macro mAP in percent, classes
    without a positive dropped and listed under ``map_dropped``; ``top1`` holds the mAP),
    sharded across processes. Scores are :mod:`quadformer.utils.metrics`."""
    from ..utils.metrics import mean_average_precision, topk_correct

    model.eval()
    indices = list(range(info.rank, len(dataset), info.world_size))  # type: ignore[arg-type]
    loader: Iterable = DataLoader(torch.utils.data.Subset(dataset, indices), batch_size=batch_size, shuffle=False)
    sums = torch.zeros(3, dtype=torch.float64)  # correct, count, loss sum
    scores, targets = [], []
    if progress and info.is_main:
        from tqdm import tqdm

        loader = tqdm(loader, desc="eval", leave=False, dynamic_ncols=True)
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        with amp_context(amp, device):
            logits = model(x)
        sums[2] += supervised_loss(logits, y, multilabel, 0.0).item() * x.shape[0]
        sums[1] += x.shape[0]
        if multilabel:
            scores.append(logits.float().cpu())
            targets.append(y.cpu())
        else:
            sums[0] += topk_correct(logits, y, ks=(1,))[1]
    all_reduce_sum(sums, info)
    out: dict[str, Any] = {"loss": float(sums[2] / max(1.0, sums[1])), "count": float(sums[1])}
    if multilabel:
        s, t = torch.cat(scores), torch.cat(targets)
        if info.enabled:
            import torch.distributed as dist

            gathered: list[Any] = [None] * info.world_size
            dist.all_gather_object(gathered, (s, t))
            s = torch.cat([g[0] for g in gathered])
            t = torch.cat([g[1] for g in gathered])
        out["map"], out["map_dropped"] = mean_average_precision(s, t)
        out["top1"] = out["map"]
    else:
        out["top1"] = float(100.0 * sums[0] / max(1.0, sums[1]))
    return out


def epoch_row(state: TrainState, lr: float, steps_per_epoch: int, batch_size: int, seconds: float,
              info: DistInfo) -> dict[str, Any]:
    """The finished epoch's metrics row: the mean step loss over the whole epoch (every
    process, every step, across resumes) and its throughput."""
    total = all_reduce_sum(torch.tensor(state.epoch_loss_sum, dtype=torch.float64), info)
    return {"epoch": state.epoch, "global_step": state.global_step, "lr": lr,
            "train_loss": float(total / max(1, steps_per_epoch * info.world_size)),
            "epoch_seconds": seconds, "train_images_per_s": steps_per_epoch * batch_size / max(seconds, 1e-9)}
