"""Fine-tuning transfer (docs/design/diverse_transfer.md §3): the whole network with a new head,
trained by the project's engine (:func:`quadformer.train.train`: AdamW, cosine schedule with warm-up, fixed
epochs; cross-entropy, or BCE with a sigmoid head for multi-label tasks).

Selection is honest: every lr of the grid is trained on the train split minus a stratified 25 %
validation split (carved from train with a fixed seed) and scored on that validation split; the
best lr (ties -> the smaller lr) is retrained on all of train and the test split is evaluated
once. A pick at either end of the grid is warned about.

**LP-FT**: the new head starts from a linear probe instead of a random init: the probe is fit
on frozen features of the *same* training images as the run (C chosen by its own validation
split inside them), and its standardisation is folded into the head:
W x + b = W_s (x - mean) / scale + b_s.

Notes: no augmentation is applied (built-in data is generated, and flips would change
oriented classes such as the digits; real data gets the evaluation transform); the ASL loss
for multi-label fine-tuning is not offered by the engine (BCE is used).
"""

from __future__ import annotations

import copy
import logging
import math
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from ..models.factory import classifier_keys
from ..models.inference import predict
from ..train import Config, DataBundle
from ..train import train as engine_train
from .features import dataset_targets
from .metrics import headline_key, multi_label_metrics, single_label_metrics
from .probes import ProbeResult, fit_linear, grid_search, resolve_grid, select_best, validation_split
from ..utils.errors import QuadformerError

__all__ = ["LR_GRIDS", "DEFAULT_EPOCHS", "FinetuneOptions", "finetune", "head_from_probe", "predict_logits"]

log = logging.getLogger(__name__)

LR_GRIDS: dict[str, tuple[float, ...]] = {
    "vit": (1e-5, 3e-5, 1e-4, 3e-4),  # AdamW, the ViT grid of docs/design/diverse_transfer.md §3 (default)
    "toy": (0.01, 0.03, 0.1, 0.3),  # the toy-CNN grid of the same section (it used SGD-Nesterov)
    "smoke": (1e-4, 3e-4, 1e-3, 3e-3),  # small models trained a few epochs from scratch
}
DEFAULT_EPOCHS = 12


def _check_grid(lrs: Sequence[float]) -> tuple[float, ...]:
    lrs = tuple(sorted(float(v) for v in lrs))
    if not lrs or min(lrs) <= 0:
        raise QuadformerError(f"learning rates must be positive, got {list(lrs)}")
    if len(lrs) < 4 or lrs[-1] / lrs[0] < 30 - 1e-9:
        warnings.warn(f"fine-tune lr grid {list(lrs)} has fewer than 4 values or spans less than 30x (the design: >= 4 "
                      f"lrs spanning >= 30x)", RuntimeWarning, stacklevel=3)
    return lrs


def predict_logits(model: nn.Module, dataset: Dataset, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """``(logits [N, C] float64, targets)`` in dataset order (:func:`quadformer.models.inference.predict`)."""
    logits, ys = predict(model, dataset, batch_size=batch_size)
    return logits.numpy().astype(np.float64), np.concatenate([np.asarray(y) for y in ys])


def head_from_probe(model: nn.Module, weight: np.ndarray, bias: np.ndarray) -> None:
    """Copy a probe (raw-feature space ``weight [C, D]``, ``bias [C]``) into the model's
    classifier (the module holding :func:`quadformer.models.factory.classifier_keys`, a Linear on
    the pre-logits representation)."""
    names = {k.rsplit(".", 1)[0] for k in classifier_keys(model)}
    head = model.get_submodule(names.pop()) if len(names) == 1 else None
    if not isinstance(head, nn.Linear):
        raise ValueError(f"LP-FT needs a Linear classifier (get_classifier()), found {type(head).__name__}")
    if tuple(head.weight.shape) != tuple(weight.shape):
        raise ValueError(f"probe weight {weight.shape} does not fit the head {tuple(head.weight.shape)}")
    with torch.no_grad():
        head.weight.copy_(torch.as_tensor(weight, dtype=head.weight.dtype))
        head.bias.copy_(torch.as_tensor(bias, dtype=head.bias.dtype))


def _new_model(base: nn.Module, num_classes: int, seed: int, lp: tuple[np.ndarray, np.ndarray] | None) -> nn.Module:
    m = copy.deepcopy(base).cpu()
    if not hasattr(m, "reset_classifier"):
        raise ValueError("fine-tuning needs a timm-style model with reset_classifier(num_classes)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        m.reset_classifier(num_classes)
    if lp is not None:
        head_from_probe(m, *lp)
    return m


@dataclass
class FinetuneOptions:
    """How :func:`finetune` trains and selects (defaults: the ViT recipe of
    docs/design/diverse_transfer.md §3).

    ``image_size``: default the first training image's width. ``lp_ft``: start the head from a
    linear probe (C on ``lp_grid``). ``work_dir`` receives the engine's run folders (default: a
    temporary folder, removed)."""

    lrs: Sequence[float] = LR_GRIDS["vit"]
    epochs: int = DEFAULT_EPOCHS
    batch_size: int = 64
    weight_decay: float = 0.05
    label_smoothing: float = 0.0
    warmup_epochs: float = 1.0
    image_size: int | None = None
    val_frac: float = 0.25
    seed: int = 0
    amp: str = "off"
    lp_ft: bool = False
    lp_grid: str | Sequence[float] = "smoke"
    work_dir: str | Path | None = None
    progress: bool = False


def _config(o: FinetuneOptions, image_size: int, lr: float, batch_size: int, out: Path, name: str) -> Config:
    cfg = Config()
    cfg.seed = o.seed
    cfg.model.name = name
    cfg.data.image_size = int(image_size)
    cfg.data.batch_size = int(batch_size)
    cfg.optim.lr = float(lr)
    cfg.optim.weight_decay = float(o.weight_decay)
    cfg.optim.label_smoothing = float(o.label_smoothing)
    cfg.optim.warmup_epochs = float(o.warmup_epochs)
    cfg.optim.min_lr = min(cfg.optim.min_lr, lr * 0.01)
    cfg.train.epochs = int(o.epochs)
    cfg.train.eval_every_epochs = int(o.epochs)  # evaluate only at the end
    cfg.train.amp = o.amp
    cfg.train.progress = False
    cfg.output.dir = str(out)
    cfg.output.tensorboard = False
    return cfg


def _scores(multilabel: bool, y: np.ndarray, logits: np.ndarray, class_names: list[str] | None,
            train_y: np.ndarray | None = None) -> dict[str, Any]:
    if multilabel:
        return multi_label_metrics(y, logits, 1 / (1 + np.exp(-logits)), class_names, train_targets=train_y)
    return single_label_metrics(y, logits)


def finetune(model: nn.Module, train_set: Dataset, test_set: Dataset, *, num_classes: int, multilabel: bool = False,
             class_names: list[str] | None = None, train_targets: np.ndarray | None = None,
             train_features: np.ndarray | None = None, options: FinetuneOptions | None = None) -> ProbeResult:
    """Fine-tune copies of ``model`` (never modified) with a new ``num_classes`` head.

    ``train_targets``: targets of ``train_set`` in order (default: read from the dataset).
    ``options.lp_ft`` needs ``train_features`` (frozen features of ``train_set`` in order).
    Returns a :class:`~quadformer.transfer.probes.ProbeResult` (protocol ``finetune`` or ``lp-ft``).
    """
    o = options or FinetuneOptions()
    lrs = _check_grid(o.lrs)
    y_all = np.asarray(train_targets) if train_targets is not None else dataset_targets(train_set)
    if o.lp_ft and train_features is None:
        raise ValueError("lp_ft=True needs train_features (frozen features of train_set, in order)")
    image_size = int(o.image_size) if o.image_size is not None else int(train_set[0][0].shape[-1])
    name = _model_name(model)
    key = headline_key(multilabel)
    names = list(class_names) if class_names is not None else None

    def lp_head(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        if not o.lp_ft:
            return None
        x, y = np.asarray(train_features, dtype=np.float64)[idx], y_all[idx]
        c, _, _ = grid_search(x, y, resolve_grid(o.lp_grid), multilabel, num_classes, o.val_frac, o.seed, 1000)
        return fit_linear(x, y, c, multilabel=multilabel, num_classes=num_classes).raw_space()

    def run(idx_train: np.ndarray, eval_set: Dataset, lr: float, out: Path) -> tuple[nn.Module, dict]:
        m = _new_model(model, num_classes, o.seed, lp_head(idx_train))
        cfg = _config(o, image_size, lr, min(o.batch_size, len(idx_train)), out, name)
        data = DataBundle(Subset(train_set, idx_train.tolist()), eval_set, int(num_classes), bool(multilabel),
                          names or [str(i) for i in range(num_classes)])
        res = engine_train(cfg, data=data, model=m, progress=o.progress)
        return m, res

    tmp = tempfile.TemporaryDirectory(prefix="quadformer-ft-") if o.work_dir is None else None
    root = Path(tmp.name if tmp is not None else o.work_dir)  # type: ignore[arg-type]
    try:
        tr, va = validation_split(y_all, o.val_frac, o.seed)
        val_set = Subset(train_set, va.tolist())
        val_scores: dict[float, float] = {}
        bar = None
        if o.progress:
            from tqdm import tqdm

            bar = tqdm(total=len(lrs) + 1, desc="fine-tune lrs", leave=False, dynamic_ncols=True)
        for lr in lrs:
            m, _ = run(tr, val_set, lr, root / f"val_lr{lr:g}")
            logits, y = predict_logits(m, val_set)
            s = float(_scores(multilabel, y, logits, None)[key])
            val_scores[lr] = s if math.isfinite(s) else float("nan")
            del m
            if bar is not None:
                bar.update(1)
        best = select_best(val_scores)
        notes = []
        if best in (lrs[0], lrs[-1]):
            msg = (f"fine-tune: the chosen lr {best:g} is at the {'low' if best == lrs[0] else 'high'} edge of the "
                   f"grid {list(lrs)}; extend the grid")
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
            notes.append(msg)
        m, eng = run(np.arange(len(y_all)), test_set, best, root / f"final_lr{best:g}")
        if bar is not None:
            bar.update(1)
            bar.close()
        logits, y = predict_logits(m, test_set)
        metrics = _scores(multilabel, y, logits, names, y_all)
        metrics["engine_val_top1"] = eng.get("val_top1")
    finally:
        if tmp is not None:
            tmp.cleanup()
    notes.append("no augmentation (label-safe choice; built-in data needs none)")
    if multilabel:
        notes.append("multi-label: sigmoid head with BCE (ASL not available in the engine)")
    sel = {"lr": best, "lrs": list(lrs), "val_scores": {f"{k:g}": v for k, v in val_scores.items()},
           "val_metric": key, "epochs": o.epochs, "batch_size": o.batch_size, "weight_decay": o.weight_decay,
           "label_smoothing": o.label_smoothing, "optimizer": "adamw", "schedule": "cosine", "val_frac": o.val_frac,
           "seed": o.seed, "lp_ft": o.lp_ft}
    return ProbeResult("lp-ft" if o.lp_ft else "finetune", multilabel, float(metrics[key]), metrics, sel,
                       len(y_all), len(y), notes)


def _model_name(model: nn.Module) -> str:
    cfg = getattr(model, "default_cfg", None)
    return str(cfg.get("architecture", type(model).__name__)) if isinstance(cfg, dict) else type(model).__name__
