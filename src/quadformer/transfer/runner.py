"""One model × one task × one protocol, from a :class:`~quadformer.transfer.tasks.Task` to a
:class:`~quadformer.transfer.probes.ProbeResult` (features from the cache when present)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from torch import nn

from timm.data import IMAGENET_DEFAULT_MEAN as IMAGENET_MEAN
from timm.data import IMAGENET_DEFAULT_STD as IMAGENET_STD

from .features import DataRef, FeatureSet, build_eval_dataset, dataset_targets, get_features
from .finetune import DEFAULT_EPOCHS, LR_GRIDS, FinetuneOptions, finetune
from .probes import ProbeResult, fewshot_probe, knn_probe, linear_probe
from .tasks import Task
from ..utils.errors import QuadformerError

__all__ = ["PROTOCOLS", "ModelRef", "ProtocolOptions", "task_refs", "task_features", "evaluate_task"]

PROTOCOLS = ("linear", "knn", "finetune", "fewshot")


@dataclass
class ModelRef:
    """A backbone to evaluate: the module, a content digest (keys the feature cache), its input
    size and normalisation."""

    model: nn.Module
    digest: str
    image_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    label: str = "model"


@dataclass
class ProtocolOptions:
    """Settings of every protocol; the fine-tuning ones become :class:`FinetuneOptions`."""

    grid: str | Sequence[float] = "full"  # linear-probe C grid
    seed: int = 0
    val_frac: float = 0.25
    knn_ks: Sequence[int] = (10, 20, 200)
    shots: Sequence[int] = (1, 5, 10)
    draws: int = 20
    fewshot_C: float = 1.0
    lrs: Sequence[float] = LR_GRIDS["vit"]
    epochs: int = DEFAULT_EPOCHS
    ft_batch_size: int = 64
    weight_decay: float = 0.05
    lp_ft: bool = False
    amp: str = "off"
    representation: str = "pre_logits"
    batch_size: int = 256
    device: str = "cpu"
    cache_dir: str | Path | None = None
    progress: bool = False
    work_dir: str | Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def finetune_options(self, image_size: int) -> FinetuneOptions:
        return FinetuneOptions(lrs=self.lrs, epochs=self.epochs, batch_size=self.ft_batch_size,
                               weight_decay=self.weight_decay, image_size=image_size, val_frac=self.val_frac,
                               seed=self.seed, amp=self.amp, lp_ft=self.lp_ft, work_dir=self.work_dir,
                               progress=self.progress)


def task_refs(task: Task, m: ModelRef) -> tuple[DataRef, DataRef]:
    common = dict(image_size=int(m.image_size), seed=task.seed, mean=tuple(m.mean), std=tuple(m.std))
    return (DataRef(task.train, task.split_train, size=task.train_size, **common),  # type: ignore[arg-type]
            DataRef(task.test, task.split_test, size=task.test_size, **common))  # type: ignore[arg-type]


def task_features(task: Task, m: ModelRef, opts: ProtocolOptions) -> tuple[FeatureSet, FeatureSet]:
    tr, te = task_refs(task, m)
    kw = dict(cache_dir=opts.cache_dir, representation=opts.representation, batch_size=opts.batch_size,
              device=opts.device, progress=opts.progress)
    return (get_features(m.model, m.digest, tr, **kw),  # type: ignore[arg-type]
            get_features(m.model, m.digest, te, **kw))  # type: ignore[arg-type]


def _finetune_task(m: ModelRef, task: Task, opts: ProtocolOptions) -> ProbeResult:
    tr_ref, te_ref = task_refs(task, m)
    train_set, test_set = build_eval_dataset(tr_ref), build_eval_dataset(te_ref)
    y = dataset_targets(train_set)
    multilabel = bool(getattr(train_set, "multilabel", y.ndim == 2))
    nc = int(getattr(train_set, "num_classes", y.shape[1] if y.ndim == 2 else int(y.max()) + 1))
    feats = task_features(task, m, opts)[0].features if opts.lp_ft else None
    return finetune(m.model, train_set, test_set, num_classes=nc, multilabel=multilabel,
                    class_names=list(getattr(train_set, "class_names", []) or []) or None, train_targets=y,
                    train_features=feats, options=opts.finetune_options(m.image_size))


def evaluate_task(m: ModelRef, task: Task, protocol: str, opts: ProtocolOptions) -> tuple[ProbeResult, dict[str, Any]]:
    """``(result, info)``; ``info`` has timings and whether the features came from the cache."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")
    t0 = time.perf_counter()
    info: dict[str, Any] = {}
    if protocol == "finetune":
        res = _finetune_task(m, task, opts)
        info["seconds"] = time.perf_counter() - t0
        return res, info
    ftr, fte = task_features(task, m, opts)
    info["features_cached"] = bool(ftr.from_cache and fte.from_cache)
    info["feature_dim"] = int(ftr.features.shape[1]) if ftr.features.ndim == 2 else 0
    info["seconds_features"] = time.perf_counter() - t0
    ml = ftr.multilabel
    common = dict(num_classes=ftr.num_classes)
    if protocol == "linear":
        res = linear_probe(ftr.features, ftr.targets, fte.features, fte.targets, multilabel=ml,
                           class_names=ftr.class_names, grid=opts.grid, val_frac=opts.val_frac, seed=opts.seed,
                           **common)
    elif protocol == "knn":
        res = knn_probe(ftr.features, ftr.targets, fte.features, fte.targets, ks=opts.knn_ks, multilabel=ml,
                        class_names=ftr.class_names, val_frac=opts.val_frac, seed=opts.seed, **common)
    else:
        if ml:
            raise QuadformerError(f"few-shot is defined for single-label tasks; {task.name} is multi-label")
        res = fewshot_probe(ftr.features, ftr.targets, fte.features, fte.targets, shots=opts.shots,
                            n_draws=opts.draws, seed=opts.seed, C=opts.fewshot_C, **common)
    info["seconds"] = time.perf_counter() - t0
    return res, info

