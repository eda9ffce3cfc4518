"""Fine-tuning transfer (spec §3): the whole network with a new head, trained by the project's
engine (:func:`quadformer.train.engine.train`: AdamW, cosine schedule with warm-up, fixed
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
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from .metrics import headline_key, multi_label_metrics, single_label_metrics
from .probes import ProbeResult, _grid_search, _select, fit_linear, resolve_grid, validation_split

__all__ = ["LR_GRIDS", "DEFAULT_EPOCHS", "finetune", "head_from_probe", "predict_logits"]

log = logging.getLogger(__name__)

LR_GRIDS: dict[str, tuple[float, ...]] = {
    "vit": (1e-5, 3e-5, 1e-4, 3e-4),  # AdamW, the spec's ViT grid (default)
    "toy": (0.01, 0.03, 0.1, 0.3),  # the spec's toy-CNN grid (it used SGD-Nesterov)
    "smoke": (1e-4, 3e-4, 1e-3, 3e-3),  # small models trained a few epochs from scratch
}
DEFAULT_EPOCHS = 12


def _check_grid(lrs: Sequence[float]) -> tuple[float, ...]:
    lrs = tuple(sorted(float(v) for v in lrs))
    if not lrs or min(lrs) <= 0:
        raise ValueError(f"learning rates must be positive, got {list(lrs)}")
    if len(lrs) < 4 or lrs[-1] / lrs[0] < 30 - 1e-9:
        warnings.warn(f"fine-tune lr grid {list(lrs)} has fewer than 4 values or spans less than 30x (spec: >= 4 "
                      f"lrs spanning >= 30x)", RuntimeWarning, stacklevel=3)
    return lrs


def predict_logits(model: nn.Module, dataset: Dataset, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """``(logits [N, C] float64, targets)`` in dataset order, eval mode, no grad."""
    device = next(model.parameters()).device
    model.eval()
    outs, ys = [], []
    with torch.no_grad():
        for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            outs.append(model(x.to(device)).float().cpu().numpy())
            ys.append(np.asarray(y))
    return np.concatenate(outs).astype(np.float64), np.concatenate(ys)


def head_from_probe(model: nn.Module, weight: np.ndarray, bias: np.ndarray) -> None:
    """Copy a probe (raw-feature space ``weight [C, D]``, ``bias [C]``) into the model's
    classifier (``get_classifier()``, a Linear on the pre-logits representation)."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
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


def _config(image_size: int, lr: float, epochs: int, batch_size: int, weight_decay: float, label_smoothing: float,
            warmup_epochs: float, seed: int, out: Path, amp: str, name: str):
    from ..train.config import Config

    cfg = Config()
    cfg.seed = seed
    cfg.model.name = name
    cfg.data.image_size = int(image_size)
    cfg.data.batch_size = int(batch_size)
    cfg.optim.lr = float(lr)
    cfg.optim.weight_decay = float(weight_decay)
    cfg.optim.label_smoothing = float(label_smoothing)
    cfg.optim.warmup_epochs = float(warmup_epochs)
    cfg.optim.min_lr = min(cfg.optim.min_lr, lr * 0.01)
    cfg.train.epochs = int(epochs)
    cfg.train.eval_every_epochs = int(epochs)  # evaluate only at the end
    cfg.train.amp = amp
    cfg.train.progress = False
    cfg.output.dir = str(out)
    cfg.output.tensorboard = False
    return cfg


def _scores(multilabel: bool, y: np.ndarray, logits: np.ndarray, class_names: list[str] | None) -> dict[str, Any]:
    if multilabel:
        return multi_label_metrics(y, logits, 1 / (1 + np.exp(-logits)), class_names)
    return single_label_metrics(y, logits)


def finetune(model: nn.Module, train_set: Dataset, test_set: Dataset, *, num_classes: int, multilabel: bool = False,
             class_names: list[str] | None = None, train_targets: np.ndarray | None = None,
             lrs: Sequence[float] = LR_GRIDS["vit"], epochs: int = DEFAULT_EPOCHS, batch_size: int = 64,
             weight_decay: float = 0.05, label_smoothing: float = 0.0, warmup_epochs: float = 1.0,
             image_size: int | None = None, val_frac: float = 0.25, seed: int = 0, amp: str = "off",
             lp_ft: bool = False, train_features: np.ndarray | None = None, lp_grid: str | Sequence[float] = "smoke",
             work_dir: str | Path | None = None, progress: bool = False) -> ProbeResult:
    """Fine-tune copies of ``model`` (never modified) with a new ``num_classes`` head.

    ``train_targets``: targets of ``train_set`` in order (default: read from the dataset).
    ``lp_ft=True`` needs ``train_features`` (frozen features of ``train_set`` in order).
    ``work_dir`` receives the engine's run folders (default: a temporary folder, removed).
    Returns a :class:`~quadformer.transfer.probes.ProbeResult` (protocol ``finetune`` or ``lp-ft``).
    """
    from ..train.engine import DataBundle
    from ..train.engine import train as engine_train
    from .features import dataset_targets

    lrs = _check_grid(lrs)
    y_all = np.asarray(train_targets) if train_targets is not None else dataset_targets(train_set)
    if lp_ft and train_features is None:
        raise ValueError("lp_ft=True needs train_features (frozen features of train_set, in order)")
    if image_size is None:
        x0 = train_set[0][0]
        image_size = int(x0.shape[-1])
    name = str(getattr(model, "default_cfg", {}).get("architecture", type(model).__name__)) \
        if isinstance(getattr(model, "default_cfg", None), dict) else type(model).__name__
    key = headline_key(multilabel)
    names = list(class_names) if class_names is not None else None

    def lp_head(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        if not lp_ft:
            return None
        x, y = np.asarray(train_features, dtype=np.float64)[idx], y_all[idx]
        c, _, _ = _grid_search(x, y, resolve_grid(lp_grid), multilabel, num_classes, val_frac, seed, 1000)
        return fit_linear(x, y, c, multilabel=multilabel, num_classes=num_classes).raw_space()

    def run(idx_train: np.ndarray, eval_set: Dataset, lr: float, out: Path) -> tuple[nn.Module, dict]:
        m = _new_model(model, num_classes, seed, lp_head(idx_train))
        cfg = _config(image_size, lr, epochs, min(batch_size, len(idx_train)), weight_decay, label_smoothing,
                      warmup_epochs, seed, out, amp, name)
        data = DataBundle(Subset(train_set, idx_train.tolist()), eval_set, int(num_classes), bool(multilabel),
                          names or [str(i) for i in range(num_classes)])
        res = engine_train(cfg, data=data, model=m, progress=progress)
        return m, res

    tmp = tempfile.TemporaryDirectory(prefix="quadformer-ft-") if work_dir is None else None
    root = Path(tmp.name if tmp is not None else work_dir)  # type: ignore[arg-type]
    try:
        tr, va = validation_split(y_all, val_frac, seed)
        val_set = Subset(train_set, va.tolist())
        val_scores: dict[float, float] = {}
        bar = None
        if progress:
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
        best = _select(val_scores)
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
        metrics = _scores(multilabel, y, logits, names)
        metrics["engine_val_top1_percent"] = eng.get("val_top1")
    finally:
        if tmp is not None:
            tmp.cleanup()
    notes.append("no augmentation (label-safe choice; built-in data needs none)")
    if multilabel:
        notes.append("multi-label: sigmoid head with BCE (ASL not available in the engine)")
    sel = {"lr": best, "lrs": list(lrs), "val_scores": {f"{k:g}": v for k, v in val_scores.items()},
           "val_metric": key, "epochs": epochs, "batch_size": batch_size, "weight_decay": weight_decay,
           "label_smoothing": label_smoothing, "optimizer": "adamw", "schedule": "cosine", "val_frac": val_frac,
           "seed": seed, "lp_ft": lp_ft}
    return ProbeResult("lp-ft" if lp_ft else "finetune", multilabel, float(metrics[key]), metrics, sel,
                       len(y_all), len(y), notes)
