"""The training engine: supervised or self-supervised training of any timm model (Quadformer,
UniformViT, CNNs). :func:`train` reads top to bottom: folder lock -> data -> model -> optimiser
and schedule -> resume -> epochs (:func:`~quadformer.train.loop.train_one_epoch`, evaluate,
checkpoint, log) -> export.

Determinism: the sampler is seeded by (seed, epoch), per-sample augmentation by (seed, epoch,
index), and the global RNG state is checkpointed, so a run resumed from any checkpoint (epoch
end or every K steps) continues bit for bit, and a DDP run sees exactly the batches of a single
process with the same global batch.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import uuid
from contextlib import ExitStack, closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DistributedSampler

# model_gmacs, unwrap, SeededItems, SkipSampler, build_dataset and amp_context are also imported
# from here by older callers (the engine used to be one module)
from ..models.factory import build_model as models_build
from ..models.factory import classifier_keys, model_gmacs, unwrap
from ..utils.errors import QuadformerError
from .checkpoint import load_training_checkpoint, restore, save_checkpoint
from .config import Config, validate
from .data import DataBundle, build_data, epoch_loader, training_items
from .data import SeededItems, SkipSampler, build_dataset  # noqa: F401  (re-exported)
from .distributed import DistInfo, all_reduce_sum, barrier, cleanup, init_distributed
from .export import export_weights, write_summary
from .loop import Interrupt, StepHooks, agreed_flags, epoch_row, evaluate, train_one_epoch
from .loop import amp_context  # noqa: F401  (re-exported)
from .metrics_log import MetricsLog, require_wandb
from .run_folder import make_folder, recipe_diff, run_lock, start_afresh, write_config
from .state import Parts, TrainState

log = logging.getLogger("quadformer.train")


# ----------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------


def build_model(cfg: Config, num_classes: int) -> nn.Module:
    """The model of a training config (see :func:`quadformer.models.factory.build_model`)."""
    m = cfg.model
    return models_build(m.name, num_classes, cfg.data.image_size, m.num_patches, m.kwargs, m.vanilla_checkpoint)


def check_model_config(cfg: Config) -> None:
    """Build the model on the meta device (no memory, no weights) so a bad name, budget or
    kwarg fails in a second, before any data is generated or loaded."""
    try:
        with torch.device("meta"):
            build_model(cfg, 2)
    except (ValueError, QuadformerError, TypeError) as e:
        raise QuadformerError(f"model config: {e}") from None
    except (NotImplementedError, RuntimeError):
        pass  # some layers cannot live on meta; the real build below will check them


def init_from_checkpoint(model: nn.Module, cfg: Config) -> None:
    """Stage-B start: every weight of the stage-A run except its classifier (a new head)."""
    from ..models.loading import backbone_state

    state, meta = backbone_state(cfg.model.init_checkpoint)
    name = meta["model"]["name"]
    if name != cfg.model.name:
        raise QuadformerError(f"model.init_checkpoint {cfg.model.init_checkpoint} holds a {name}; this run trains a "
                              f"{cfg.model.name}. Use a checkpoint of the same architecture")
    missing, unexpected = model.load_state_dict(state, strict=False)
    head = set(classifier_keys(model))
    # stage B may use another scorer than stage A: its weights come from its own scorer_kwargs
    missing = [k for k in missing if not k.startswith("scorer.")]
    unexpected = [k for k in unexpected if not k.startswith("scorer.")]
    if unexpected or set(missing) - head:
        raise QuadformerError(f"model.init_checkpoint {cfg.model.init_checkpoint} does not fit {cfg.model.name}: "
                              f"missing {sorted(set(missing) - head)[:3]}, unexpected {unexpected[:3]}")


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


# ----------------------------------------------------------------------------------------------
# Plan, parts, resume
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    per_rank: int  # batch per process
    steps_per_epoch: int
    total_steps: int


def plan_steps(cfg: Config, data: DataBundle, info: DistInfo) -> Plan:
    b = cfg.data.batch_size
    if b % info.world_size:
        raise QuadformerError(f"data.batch_size={b} must be divisible by the {info.world_size} processes; "
                              f"use {b // info.world_size * info.world_size}")
    steps = len(data.train) // b  # type: ignore[arg-type]
    if steps < 1:
        raise QuadformerError(f"the training set ({len(data.train)} images) is smaller than one batch "  # type: ignore[arg-type]
                              f"({b}); lower data.batch_size")
    return Plan(b // info.world_size, steps, steps * cfg.train.epochs)


def build_parts(cfg: Config, model: nn.Module, data: DataBundle, plan: Plan, device: torch.device,
                info: DistInfo) -> Parts:
    """Objective, AdamW (timm), per-step cosine schedule with warm-up, EMA and loss scaling."""
    from timm.optim import create_optimizer_v2
    from timm.scheduler import CosineLRScheduler
    from timm.utils import ModelEmaV3

    from .objectives import TrainStep, build_objective

    o = cfg.optim
    objective = build_objective(cfg.objective, model, data.multilabel, o.label_smoothing, info.enabled,
                                device).to(device)
    step_module = TrainStep(model, objective)
    optimizer = create_optimizer_v2(step_module, opt="adamw", lr=o.lr, weight_decay=o.weight_decay)
    scheduler = CosineLRScheduler(
        optimizer, t_initial=plan.total_steps, lr_min=o.min_lr,
        warmup_t=int(o.warmup_epochs * plan.steps_per_epoch), warmup_lr_init=o.lr * 0.01,
        warmup_prefix=True, t_in_epochs=False,
    )
    ema = ModelEmaV3(model, decay=cfg.train.ema_decay) if cfg.train.ema_decay > 0 else None
    scaler = torch.amp.GradScaler(device.type) if (cfg.train.amp == "fp16" and device.type == "cuda") else None
    return Parts(model, objective, step_module, step_module, optimizer, scheduler, ema, scaler)


def find_resume(resume: str | Path | None, out: Path, cfg: Config) -> tuple[dict[str, Any] | None, int | None]:
    """The checkpoint to continue, and the epochs it was planned for when ``train.epochs`` changed
    (None otherwise).

    ``resume``: None (a fresh run), ``"auto"`` (continue ``out/last.pt`` when it holds the same
    recipe, start afresh otherwise: a reused folder never mixes two recipes), ``"last"`` (the
    CLI's bare ``--resume``: continue ``out/last.pt``) or a checkpoint path. An explicit resume
    of another recipe is refused; one that changes only ``train.epochs`` re-plans the schedule."""
    if resume is None:
        return None, None
    path = out / "last.pt" if resume in ("auto", "last") else Path(resume)
    if resume in ("auto", "last") and not path.is_file():
        return None, None
    ck = load_training_checkpoint(path)
    theirs = ck["config"] if isinstance(ck["config"], dict) else {}
    diff = recipe_diff(theirs, cfg.to_dict(), path.parent)
    if resume == "auto":
        if diff:
            log.warning("%s holds a run of another recipe (%s differ): training afresh", path, ", ".join(diff[:4]))
            return None, None
        return ck, None
    other = [d for d in diff if d != "train.epochs"]
    if other:
        raise QuadformerError(f"checkpoint {path} was trained with another recipe ({', '.join(other[:4])} differ); "
                              f"resume with the same config, or drop --resume to train afresh")
    planned = int(theirs["train"]["epochs"]) if "train.epochs" in diff else None
    if planned is not None and ck["epoch"] > cfg.train.epochs:
        raise QuadformerError(f"checkpoint {path} has trained {ck['epoch']} epochs already; "
                              f"train.epochs={cfg.train.epochs} must be at least that")
    return ck, planned


def resume_run(ck: dict[str, Any], parts: Parts, plan: Plan, planned_epochs: int | None, cfg: Config,
               info: DistInfo) -> TrainState:
    """Load ``ck`` into ``parts`` and the RNGs; a changed ``train.epochs`` re-plans the cosine
    schedule over the new length from the stored step (and says so)."""
    state = restore(ck, parts, load_scheduler=planned_epochs is None)
    if not info.is_main:
        state.epoch_loss_sum = 0.0  # the checkpoint holds the sum over every process
    if not state.run_id:
        state.run_id = uuid.uuid4().hex[:12]
    if info.is_main:
        log.info("resumed at epoch %d step %d", state.epoch + 1, state.step_in_epoch)
    if planned_epochs is not None:
        before = parts.optimizer.param_groups[0]["lr"]
        parts.scheduler.step_update(num_updates=state.global_step)
        if info.is_main:
            log.info("train.epochs %d -> %d: the cosine schedule is re-planned over %d steps from step %d "
                     "(lr %.3g -> %.3g)", planned_epochs, cfg.train.epochs, plan.total_steps, state.global_step,
                     before, parts.optimizer.param_groups[0]["lr"])
    return state


def wrap_ddp(step_module: nn.Module, device: torch.device, info: DistInfo, find_unused: bool) -> nn.Module:
    if not info.enabled:
        return step_module
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(step_module, device_ids=ids, find_unused_parameters=find_unused)


def wandb_args(cfg: Config, out: Path, state: TrainState) -> dict[str, Any] | None:
    if not cfg.output.wandb:
        return None
    return dict(project=cfg.output.wandb_project, name=out.name, dir=str(out), config=cfg.to_dict(),
                id=state.run_id, resume="allow")


def progress_bar(cfg: Config, info: DistInfo, state: TrainState, plan: Plan) -> Any:
    if not (cfg.train.progress and info.is_main):
        return None
    from tqdm import tqdm

    return tqdm(total=plan.steps_per_epoch, initial=state.step_in_epoch, dynamic_ncols=True, leave=False,
                desc=f"epoch {state.epoch + 1}/{cfg.train.epochs}")


# ----------------------------------------------------------------------------------------------
# Train
# ----------------------------------------------------------------------------------------------


def train(cfg: Config, resume: str | Path | None = None, stop_after_steps: int | None = None, *,
          data: DataBundle | None = None, model: nn.Module | None = None,
          progress: bool | None = None) -> dict[str, Any]:
    """Train per ``cfg``; returns the last epoch's metrics (``{"interrupted": True, ...}`` when
    stopped by a signal). ``resume``: see :func:`find_resume`. ``stop_after_steps`` is for tests
    (an interruption after that many optimiser steps in this call).

    Library use (fine-tuning, studies): ``data`` replaces the config's data sources and
    ``model`` the config's architecture (the head must already fit the data); ``progress``
    overrides ``train.progress``."""
    if progress is not None:
        cfg.train.progress = progress
    validate(cfg)
    if model is None:
        check_model_config(cfg)
    device = pick_device()
    info = init_distributed(device)
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    out = Path(cfg.output.dir)
    if cfg.output.wandb and info.is_main:
        require_wandb()
    with ExitStack() as stack:
        stack.callback(cleanup, info)
        agree = lambda failed: agreed_flags(info, failed)[0]  # every rank learns a lock failure
        stack.enter_context(run_lock(out, enabled=info.is_main, agree=agree))
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)

        # Data
        if data is None:
            data = build_data(cfg)
        plan = plan_steps(cfg, data, info)
        items = training_items(cfg, data)

        # Model, objective, optimiser, schedule; resume
        ck, planned_epochs = find_resume(resume, out, cfg)
        if model is None:
            model = build_model(cfg, data.num_classes)
        if cfg.model.init_checkpoint and ck is None:  # a resumed run has its own weights
            init_from_checkpoint(model, cfg)
        parts = build_parts(cfg, model.to(device), data, plan, device, info)
        if ck is not None:
            state = resume_run(ck, parts, plan, planned_epochs, cfg, info)
        else:
            state = TrainState(run_id=uuid.uuid4().hex[:12])
        parts.ddp_step = wrap_ddp(parts.step_module, device, info, find_unused=not parts.objective.has_head_metric)

        # Run folder and logs
        if info.is_main:
            make_folder(out)
            if ck is None:
                start_afresh(out)
            write_config(out, cfg.to_dict())
        metrics_log = stack.enter_context(closing(MetricsLog(
            out, state.history, enabled=info.is_main, tensorboard=cfg.output.tensorboard,
            wandb=wandb_args(cfg, out, state) if info.is_main else None)))
        gmacs, convention = model_gmacs(model, cfg.data.image_size)
        extra = {"config": cfg.to_dict(), "num_classes": data.num_classes, "class_names": data.class_names,
                 "multilabel": data.multilabel}

        def save() -> None:
            loss_sum = float(all_reduce_sum(torch.tensor(state.epoch_loss_sum, dtype=torch.float64), info))
            if info.is_main:
                save_checkpoint(out / "last.pt", parts, dataclasses.replace(state, epoch_loss_sum=loss_sum), extra)

        def snapshot(step: int) -> None:
            if info.is_main:
                export_weights(model, cfg, data, out / "snapshots" / f"step{step:07d}.safetensors")

        interrupt = stack.enter_context(Interrupt())
        first_step = state.global_step
        hooks = StepHooks(
            save=save, snapshot=snapshot, checkpoint_every=cfg.train.checkpoint_every_steps,
            snapshot_steps={round(plan.total_steps * (i + 1) / cfg.train.snapshots)
                            for i in range(cfg.train.snapshots)},
            should_stop=lambda: interrupt.hit or (stop_after_steps is not None
                                                  and state.global_step - first_step >= stop_after_steps))
        sampler = DistributedSampler(items, num_replicas=info.world_size, rank=info.rank, shuffle=True,
                                     seed=cfg.seed, drop_last=True)

        # Epochs
        while state.epoch < cfg.train.epochs:
            loader = epoch_loader(items, sampler, state.epoch, state.step_in_epoch, plan.per_rank,
                                  cfg.data.num_workers, pin_memory=device.type == "cuda")
            bar = progress_bar(cfg, info, state, plan)
            stopped = train_one_epoch(parts, loader, state, total_steps=plan.total_steps, clip_grad=cfg.optim.clip_grad,
                                      amp=cfg.train.amp, device=device, info=info, hooks=hooks, bar=bar)
            if bar is not None:
                bar.close()
            if stopped:
                if info.is_main:
                    log.warning("stopped at epoch %d step %d; checkpoint %s (resume with --resume)",
                                state.epoch + 1, state.step_in_epoch, out / "last.pt")
                return {"interrupted": True, "epoch": state.epoch, "step_in_epoch": state.step_in_epoch}
            state.epoch += 1
            row = epoch_row(state, parts.optimizer.param_groups[0]["lr"], plan.steps_per_epoch, cfg.data.batch_size,
                            state.epoch_seconds, info)
            state.step_in_epoch, state.epoch_loss_sum, state.epoch_seconds = 0, 0.0, 0.0
            row.update(validation(cfg, parts, data, plan, device, info, state.epoch))
            if info.is_main and "val_top1" in row:
                log.info("epoch %d: train loss %.4f, val top1 %.2f", state.epoch, row["train_loss"], row["val_top1"])
            state.history.append(row)
            metrics_log.row(row)
            save()
            barrier(info)

        # Export (also when a finished run is resumed: a kill during the export loses nothing)
        if info.is_main:
            export_weights(unwrap(parts.ema.module if parts.ema is not None else model), cfg, data,
                           out / "model.safetensors")
            write_summary(out, cfg, data, state.history, state.global_step, gmacs, convention)
        return {**(state.history[-1] if state.history else {}), "gmacs": gmacs}


def validation(cfg: Config, parts: Parts, data: DataBundle, plan: Plan, device: torch.device, info: DistInfo,
               epoch: int) -> dict[str, Any]:
    """The epoch row's skipped-file count and, on evaluation epochs, val loss / top-1 (and EMA top-1)."""
    row: dict[str, Any] = {}
    skipped = _skipped(data.train, info)
    if skipped:
        row["skipped_files"] = skipped
        if info.is_main:
            log.warning("%d unreadable training files skipped so far (see the warnings above for paths)", skipped)
    if not parts.objective.has_head_metric or not (epoch % cfg.train.eval_every_epochs == 0
                                                   or epoch == cfg.train.epochs):
        return row
    ev = evaluate(parts.model, data.val, plan.per_rank * 2, device, info, data.multilabel, cfg.train.amp)
    row.update(val_loss=ev["loss"], val_top1=ev["top1"])
    if parts.ema is not None:
        row["val_top1_ema"] = evaluate(parts.ema.module, data.val, plan.per_rank * 2, device, info,
                                       data.multilabel, cfg.train.amp)["top1"]
    return row


def _skipped(dataset: Any, info: DistInfo) -> int:
    """Unreadable files a real-data set has skipped (each was logged with its path), summed
    over processes."""
    n = getattr(dataset, "num_skipped", 0)
    t = all_reduce_sum(torch.tensor(float(n() if callable(n) else n)), info)
    return int(t.item())
