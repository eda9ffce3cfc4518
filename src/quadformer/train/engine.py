"""The training engine: supervised training of any timm model (Quadformer, UniformViT, CNNs).

Read top to bottom: data -> model -> optimiser/schedule -> resume -> epochs (train, eval,
checkpoint, log). Determinism: the sampler is seeded by (seed, epoch), per-sample
augmentation by (seed, epoch, index), and the global RNG state is checkpointed, so a run
resumed from any checkpoint (epoch end or every K steps) continues bit for bit, and a DDP
run sees exactly the batches of a single process with the same global batch.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import random
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from ..models.factory import build_model as models_build
from ..models.factory import classifier_keys, model_gmacs, unwrap  # noqa: F401  (re-exported)
from ..utils.errors import QuadformerError
from .checkpoint import atomic_save, load_checkpoint, rng_state, set_rng_state
from .config import Config
from .distributed import DistInfo, all_reduce_sum, barrier, cleanup, init_distributed
from .objectives import supervised_loss as loss_fn

log = logging.getLogger("quadformer.train")


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------


class SeededItems(Dataset):
    """Makes random per-sample transforms a function of (seed, epoch, index): independent of
    worker count, world size and resume point. The global RNG state is left untouched."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int):
        s = (self.seed * 1_000_003 + self.epoch * 10_007 + index) % (2**63 - 1)
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(s)
            random.seed(s)
            np.random.seed(s % 2**32)  # some augmentations (lightly's blur, solarise) draw from numpy
            item = self.dataset[index]
        random.setstate(py_state)
        np.random.set_state(np_state)
        return item


class SkipSampler(Sampler):
    """Skips the first ``skip`` indices of ``sampler`` (mid-epoch resume)."""

    def __init__(self, sampler: Sampler, skip: int) -> None:
        self.sampler, self.skip = sampler, skip

    def __iter__(self) -> Iterator[int]:
        it = iter(self.sampler)
        for _ in range(self.skip):
            next(it, None)
        return it

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)  # type: ignore[arg-type]


@dataclass
class DataBundle:
    train: Dataset
    val: Dataset
    num_classes: int
    multilabel: bool
    class_names: list[str]


def build_dataset(source: str, split: str, size: int | None, augment: bool, image_size: int, seed: int,
                  cache_dir: str | None) -> Dataset:
    """One split of a data source. Real data gets timm's training augmentation only when
    ``augment`` (else the evaluation transform); built-in data needs none."""
    from ..data import build_dataset as factory
    from ..data import create_transforms

    real = not source.startswith("builtin:")
    transform: Any = "auto"
    if real and not (augment and split == "train"):
        transform = create_transforms(image_size, is_training=False)
    try:
        return factory(source, split, image_size, transform=transform, size=size, seed=seed,
                       cache_dir=None if real else cache_dir)
    except KeyError as e:
        raise QuadformerError(str(e.args[0]) if e.args else str(e)) from None


def build_data(cfg: Config) -> DataBundle:
    d = cfg.data
    common = dict(image_size=d.image_size, seed=d.data_seed, cache_dir=d.cache_dir)
    train = build_dataset(d.train, "train", size=d.train_size, augment=d.augment, **common)
    val = build_dataset(d.val or d.train, "val", size=d.val_size, augment=False, **common)
    info = getattr(train, "num_classes", None)
    if info is None:
        raise QuadformerError(f"data source {d.train!r} does not report num_classes")
    return DataBundle(train, val, int(train.num_classes), bool(getattr(train, "multilabel", False)),
                      list(getattr(train, "class_names", [])))


# ----------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------


def build_model(cfg: Config, num_classes: int) -> nn.Module:
    """The model of a training config (see :func:`quadformer.models.build_model`)."""
    m = cfg.model
    return models_build(m.name, num_classes, cfg.data.image_size, m.num_patches, m.kwargs, m.vanilla_checkpoint)


# ----------------------------------------------------------------------------------------------
# Loop pieces
# ----------------------------------------------------------------------------------------------


def amp_context(mode: str, device: torch.device):
    if mode == "off":
        return nullcontext()
    dtype = torch.float16 if mode == "fp16" else torch.bfloat16
    if mode == "auto" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        dtype = torch.float16
    return torch.autocast(device.type, dtype=dtype)


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset, batch_size: int, device: torch.device, info: DistInfo,
             multilabel: bool = False, amp: str = "off", progress: bool = False) -> dict[str, float]:
    """Top-1 (or macro mAP for multi-label) over ``dataset``, sharded across processes."""
    model.eval()
    indices = list(range(info.rank, len(dataset), info.world_size))  # type: ignore[arg-type]
    loader = DataLoader(torch.utils.data.Subset(dataset, indices), batch_size=batch_size, shuffle=False)
    correct = torch.zeros(3, dtype=torch.float64)  # correct, count, loss sum
    scores, targets = [], []
    it = loader
    if progress and info.is_main:
        from tqdm import tqdm

        it = tqdm(loader, desc="eval", leave=False, dynamic_ncols=True)
    for x, y in it:
        x, y = x.to(device), y.to(device)
        with amp_context(amp, device):
            logits = model(x)
        correct[2] += loss_fn(logits, y, multilabel, 0.0).item() * x.shape[0]
        correct[1] += x.shape[0]
        if multilabel:
            scores.append(logits.float().cpu())
            targets.append(y.cpu())
        else:
            correct[0] += (logits.argmax(-1) == y).sum().item()
    all_reduce_sum(correct, info)
    out = {"loss": float(correct[2] / max(1.0, correct[1])), "count": float(correct[1])}
    if multilabel:
        from torchmetrics.functional.classification import multilabel_average_precision

        s, t = torch.cat(scores), torch.cat(targets)
        if info.enabled:
            import torch.distributed as dist

            gathered: list[Any] = [None] * info.world_size
            dist.all_gather_object(gathered, (s, t))
            s = torch.cat([g[0] for g in gathered])
            t = torch.cat([g[1] for g in gathered])
        out["map"] = 100.0 * float(multilabel_average_precision(s, t.long(), num_labels=t.shape[1], average="macro"))
        out["top1"] = out["map"]
    else:
        out["top1"] = float(100.0 * correct[0] / max(1.0, correct[1]))
    return out


class _Interrupt:
    """SIGINT/SIGTERM set a flag; the loop checkpoints at the next step and exits cleanly."""

    def __init__(self) -> None:
        self.hit = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "_Interrupt":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame) -> None:  # noqa: ARG002
        if self.hit:  # second signal: give up immediately
            raise KeyboardInterrupt
        self.hit = True

    def __exit__(self, *exc) -> None:
        for sig, h in self._old.items():
            signal.signal(sig, h)


class MetricsLog:
    """metrics.csv (append, one row per epoch) + TensorBoard scalars, on the main process."""

    FIELDS = ["epoch", "global_step", "lr", "train_loss", "val_loss", "val_top1", "val_top1_ema",
              "epoch_seconds", "train_images_per_s", "skipped_files"]

    def __init__(self, out: Path, tensorboard: bool, enabled: bool) -> None:
        self.enabled = enabled
        self.path = out / "metrics.csv"
        self.tb = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tb"))

    def truncate(self, epochs_done: int) -> None:
        """On resume, drop rows of epochs the resumed run will redo."""
        if not self.enabled or not self.path.exists():
            return
        with open(self.path) as f:
            rows = [r for r in csv.DictReader(f) if int(r["epoch"]) < epochs_done]
        self._write(rows, "w")

    def _write(self, rows: list[dict], mode: str) -> None:
        new = mode == "w" or not self.path.exists()
        with open(self.path, mode, newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.FIELDS, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerows(rows)

    def row(self, row: dict) -> None:
        if not self.enabled:
            return
        self._write([row], "a")
        if self.tb is not None:
            for k, v in row.items():
                if k not in ("epoch", "global_step") and isinstance(v, (int, float)) and v == v:
                    self.tb.add_scalar(k, v, row["epoch"])
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


# ----------------------------------------------------------------------------------------------
# Train
# ----------------------------------------------------------------------------------------------


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def train(cfg: Config, resume: str | Path | None = None, stop_after_steps: int | None = None, *,
          data: DataBundle | None = None, model: nn.Module | None = None,
          progress: bool | None = None) -> dict[str, Any]:
    """Train per ``cfg``; returns the final metrics. ``resume``: a checkpoint path, or
    ``"auto"`` for ``<output.dir>/last.pt`` when present. ``stop_after_steps`` is for tests
    (simulates an interruption after that many optimiser steps in this call).

    Library use (fine-tuning, studies): ``data`` replaces the config's data sources and
    ``model`` the config's architecture (the head must already fit the data); ``progress``
    overrides ``train.progress``."""
    if progress is not None:
        cfg.train.progress = progress
    device = pick_device()
    info = init_distributed(device)
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    out = Path(cfg.output.dir)
    try:
        return _train(cfg, info, device, out, resume, stop_after_steps, data, model)
    finally:
        cleanup(info)


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
    head = set(_head_keys(model))
    if unexpected or set(missing) - head:
        raise QuadformerError(f"model.init_checkpoint {cfg.model.init_checkpoint} does not fit {cfg.model.name}: "
                              f"missing {sorted(set(missing) - head)[:3]}, unexpected {unexpected[:3]}")


def _head_keys(model: nn.Module) -> list[str]:
    return sorted(classifier_keys(model))


def _train(cfg: Config, info: DistInfo, device: torch.device, out: Path, resume, stop_after_steps,
           data: DataBundle | None = None, given_model: nn.Module | None = None) -> dict[str, Any]:
    from .objectives import TrainStep, build_objective, views_transform

    if given_model is None:
        check_model_config(cfg)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    if cfg.data.batch_size % info.world_size:
        raise QuadformerError(f"data.batch_size={cfg.data.batch_size} must be divisible by the "
                              f"{info.world_size} processes; use {cfg.data.batch_size // info.world_size * info.world_size}")
    per_rank = cfg.data.batch_size // info.world_size

    # Data
    if data is None:
        data = build_data(cfg)
    train_set = data.train
    if cfg.objective.kind in ("ssl", "joint"):
        from ..data.views import ViewsDataset

        train_set = ViewsDataset(train_set, views_transform(cfg.objective, cfg.data.image_size))
    train_items = SeededItems(train_set, cfg.seed)
    steps_per_epoch = len(data.train) // cfg.data.batch_size  # type: ignore[arg-type]
    if steps_per_epoch < 1:
        raise QuadformerError(f"the training set ({len(data.train)} images) is smaller than one batch "  # type: ignore[arg-type]
                              f"({cfg.data.batch_size}); lower data.batch_size")
    total_steps = steps_per_epoch * cfg.train.epochs

    # Model, objective, optimiser, schedule
    model = given_model if given_model is not None else build_model(cfg, data.num_classes)
    if resume == "auto":
        resume = out / "last.pt" if (out / "last.pt").exists() else None
    if cfg.model.init_checkpoint and not resume:  # a resumed run has its own weights
        init_from_checkpoint(model, cfg)
    model = model.to(device)
    objective = build_objective(cfg.objective, model, data.multilabel, cfg.optim.label_smoothing, info.enabled,
                                device).to(device)
    step_module = TrainStep(model, objective)
    from timm.optim import create_optimizer_v2
    from timm.scheduler import CosineLRScheduler
    from timm.utils import ModelEmaV3

    optimizer = create_optimizer_v2(step_module, opt="adamw", lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    scheduler = CosineLRScheduler(
        optimizer, t_initial=total_steps, lr_min=cfg.optim.min_lr,
        warmup_t=int(cfg.optim.warmup_epochs * steps_per_epoch), warmup_lr_init=cfg.optim.lr * 0.01,
        warmup_prefix=True, t_in_epochs=False,
    )
    ema = ModelEmaV3(model, decay=cfg.train.ema_decay) if cfg.train.ema_decay > 0 else None
    scaler = torch.amp.GradScaler(device.type) if (cfg.train.amp == "fp16" and device.type == "cuda") else None

    # Resume
    epoch, step_in_epoch, global_step, history = 0, 0, 0, []
    ckpt_path = out / "last.pt"
    if resume:
        ck = load_checkpoint(resume)
        for section in ("model", "objective"):
            theirs, ours = ck.get("config", {}).get(section), cfg.to_dict()[section]
            if section == "objective" and theirs is None:
                theirs = ours  # checkpoints from before objectives existed are supervised
            if theirs != ours:
                raise QuadformerError(f"checkpoint {resume} was trained with {section} config {theirs}; "
                                      f"it cannot resume a run of {ours}")
        model.load_state_dict(ck["model"])
        if ck.get("objective"):
            objective.load_state_dict(ck["objective"])
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        if ema is not None and ck.get("ema") is not None:
            ema.module.load_state_dict(ck["ema"])
        if scaler is not None and ck.get("scaler") is not None:
            scaler.load_state_dict(ck["scaler"])
        epoch, step_in_epoch, global_step = ck["epoch"], ck["step_in_epoch"], ck["global_step"]
        history = list(ck.get("history", []))
        set_rng_state(ck["rng"])
        if info.is_main:
            log.info("resumed from %s at epoch %d step %d", resume, epoch, step_in_epoch)

    ddp_step: nn.Module = step_module
    if info.enabled:
        ddp_step = nn.parallel.DistributedDataParallel(  # an SSL run leaves the classifier unused
            step_module, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=not objective.has_head_metric)

    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(_yaml(cfg.to_dict()))
    metrics_log = MetricsLog(out, cfg.output.tensorboard, info.is_main)
    metrics_log.truncate(epoch)
    gmacs, convention = model_gmacs(model, cfg.data.image_size)

    def save(epoch_: int, step_: int) -> None:
        if not info.is_main:
            return
        atomic_save({
            "model": model.state_dict(), "objective": objective.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "ema": ema.module.state_dict() if ema is not None else None,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "epoch": epoch_, "step_in_epoch": step_, "global_step": global_step, "rng": rng_state(),
            "config": cfg.to_dict(), "history": history, "num_classes": data.num_classes,
            "class_names": data.class_names, "multilabel": data.multilabel,
        }, ckpt_path)

    sampler = DistributedSampler(train_items, num_replicas=info.world_size, rank=info.rank, shuffle=True,
                                 seed=cfg.seed, drop_last=True)
    snapshot_steps = {round(total_steps * (i + 1) / cfg.train.snapshots) for i in range(cfg.train.snapshots)}
    steps_this_call = 0
    result: dict[str, Any] = {}
    with _Interrupt() as interrupt:
        while epoch < cfg.train.epochs:
            sampler.set_epoch(epoch)
            train_items.epoch = epoch
            loader = DataLoader(train_items, batch_size=per_rank, sampler=SkipSampler(sampler, step_in_epoch * per_rank),
                                num_workers=cfg.data.num_workers, drop_last=True,
                                persistent_workers=False, pin_memory=device.type == "cuda")
            ddp_step.train()
            t0, seen, loss_sum = time.perf_counter(), 0, torch.zeros((), dtype=torch.float64)
            bar = None
            if cfg.train.progress and info.is_main:
                from tqdm import tqdm

                bar = tqdm(total=steps_per_epoch, initial=step_in_epoch, desc=f"epoch {epoch + 1}/{cfg.train.epochs}",
                           dynamic_ncols=True, leave=False)
            for x, y in loader:
                x = [v.to(device, non_blocking=True) for v in x] if isinstance(x, list) else x.to(device, non_blocking=True)
                y = y.to(device, non_blocking=True)
                with amp_context(cfg.train.amp, device):
                    loss = ddp_step(x, y, epoch)
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.unscale_(optimizer)
                else:
                    loss.backward()
                if cfg.optim.clip_grad:
                    nn.utils.clip_grad_norm_(step_module.parameters(), cfg.optim.clip_grad)
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                global_step += 1
                step_in_epoch += 1
                steps_this_call += 1
                scheduler.step_update(num_updates=global_step)
                objective.after_step(model, global_step, total_steps)
                if global_step in snapshot_steps and info.is_main:
                    export_weights(model, cfg, data, out / "snapshots" / f"step{global_step:07d}.safetensors")
                if ema is not None:
                    ema.update(model, step=global_step)
                if not math.isfinite(loss.item()):
                    save(epoch, step_in_epoch)
                    raise QuadformerError(f"loss became {loss.item()} at step {global_step}; lower optim.lr "
                                          f"(now {cfg.optim.lr}) or set optim.clip_grad")
                loss_sum += loss.item()
                seen += y.shape[0]
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
                k = cfg.train.checkpoint_every_steps
                stop = stop_after_steps is not None and steps_this_call >= stop_after_steps
                if interrupt.hit or stop or (k and global_step % k == 0):
                    save(epoch, step_in_epoch)
                if interrupt.hit or stop:
                    if bar is not None:
                        bar.close()
                    if info.is_main:
                        log.warning("stopped at epoch %d step %d; checkpoint %s (resume with --resume)",
                                    epoch + 1, step_in_epoch, ckpt_path)
                    metrics_log.close()
                    return {"interrupted": True, "epoch": epoch, "step_in_epoch": step_in_epoch}
            if bar is not None:
                bar.close()
            elapsed = time.perf_counter() - t0
            epoch += 1
            step_in_epoch = 0
            row: dict[str, Any] = {"epoch": epoch, "global_step": global_step, "lr": optimizer.param_groups[0]["lr"],
                                   "train_loss": _mean_over_ranks(loss_sum, seen // per_rank, info),
                                   "epoch_seconds": elapsed, "train_images_per_s": seen * info.world_size / max(elapsed, 1e-9)}
            skipped = _skipped(data.train, info)
            if skipped:
                row["skipped_files"] = skipped
                if info.is_main:
                    log.warning("%d unreadable training files skipped so far (see the warnings above for paths)", skipped)
            if objective.has_head_metric and (epoch % cfg.train.eval_every_epochs == 0 or epoch == cfg.train.epochs):
                ev = evaluate(model, data.val, per_rank * 2, device, info, data.multilabel, cfg.train.amp)
                row.update(val_loss=ev["loss"], val_top1=ev["top1"])
                if ema is not None:
                    row["val_top1_ema"] = evaluate(ema.module, data.val, per_rank * 2, device, info,
                                                   data.multilabel, cfg.train.amp)["top1"]
                if info.is_main:
                    log.info("epoch %d: train loss %.4f, val top1 %.2f", epoch, row["train_loss"], ev["top1"])
            history.append(row)
            metrics_log.row(row)
            save(epoch, 0)
            barrier(info)
            result = row
    metrics_log.close()
    if info.is_main:
        final = unwrap(ema.module if ema is not None else model)
        export_weights(final, cfg, data, out / "model.safetensors")
        summary = {"final": result, "train_seconds": sum(h.get("epoch_seconds", 0.0) for h in history),
                   "gmacs_per_image": gmacs, "gmacs_convention": convention,
                   "num_classes": data.num_classes, "epochs": cfg.train.epochs, "global_step": global_step}
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return {**result, "gmacs": gmacs}


def _skipped(dataset: Dataset, info: DistInfo) -> int:
    """Unreadable files a real-data set has skipped (each was logged with its path), summed
    over processes."""
    n = getattr(dataset, "num_skipped", 0)
    t = all_reduce_sum(torch.tensor(float(n() if callable(n) else n)), info)
    return int(t.item())


def _mean_over_ranks(loss_sum: torch.Tensor, steps: int, info: DistInfo) -> float:
    """Mean of per-step losses over this epoch's steps and all processes."""
    total = all_reduce_sum(loss_sum.clone(), info)
    return float(total / max(1, steps * info.world_size))


def export_weights(model: nn.Module, cfg: Config, data: DataBundle, path: Path) -> None:
    """Weights as safetensors, with the full model/tokenizer config as metadata and beside
    it as JSON, so the checkpoint rebuilds its model exactly."""
    from safetensors.torch import save_file

    meta = {"model": cfg.to_dict()["model"], "image_size": cfg.data.image_size, "num_classes": data.num_classes,
            "multilabel": data.multilabel, "class_names": data.class_names}
    g = getattr(model, "geometry", None)
    if g is not None:
        meta["tokenizer"] = {"img_size": [g.height, g.width], "p_min": g.p_min, "p_max": g.p_max,
                             "num_patches": g.num_patches, "resample": model.resample,
                             "pos_embed": model.pos_embed_type}
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata={"quadformer": json.dumps(meta)})
    tmp.replace(path)
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2))


def _yaml(d: dict) -> str:
    import yaml

    return yaml.safe_dump(d, sort_keys=False)
