"""Frozen features (docs/design/diverse_transfer.md §3): eval mode, no augmentation, no gradient, batched, cached on disk.

The cache key is a SHA-256 over (model digest, representation name, preprocessing (image size,
mean, std), dataset spec, split, size, seed, :data:`FEATURE_VERSION`, and for built-in data the
generators' versions). Real-data files are not hashed: if the images under a folder change, use
another cache folder or delete the cache. A hit loads
``<cache_dir>/<key>.npz`` (features float32 ``[N, D]`` + targets) without building the dataset
or running the model; a miss extracts, then writes the file atomically with a JSON sidecar that
spells the key out.

``representation``:

* ``"pre_logits"`` (default): ``model.forward_head(model.forward_features(x), pre_logits=True)``
  (timm ViTs: CLS after the final norm or the model's pooling; CNNs: global pool);
* ``"token_mean"``: mean of the non-prefix tokens of ``forward_features`` (ViTs; for a 4-D CNN map
  the spatial mean);
* any callable ``f(model, x) -> [B, D]``, named by ``representation_name``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from timm.data import IMAGENET_DEFAULT_MEAN as IMAGENET_MEAN
from timm.data import IMAGENET_DEFAULT_STD as IMAGENET_STD

from ..models.inference import pre_logits, predict
from ..utils.io import atomic_write, write_json

__all__ = [
    "FEATURE_VERSION",
    "DataRef",
    "FeatureSet",
    "extract_features",
    "get_features",
    "feature_cache_key",
    "model_preprocessing",
    "dataset_targets",
    "build_eval_dataset",
    "represent",
]

log = logging.getLogger(__name__)

FEATURE_VERSION = 1  # bump when extraction changes what a cached file would hold


@dataclass(frozen=True)
class DataRef:
    """One split of a data source, as :func:`quadformer.data.build_dataset` builds it."""

    spec: str
    split: str
    image_size: int
    size: int | None = None
    seed: int = 0
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def key_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"] = [round(float(v), 6) for v in self.mean]
        d["std"] = [round(float(v), 6) for v in self.std]
        return d


@dataclass
class FeatureSet:
    """Features ``[N, D]`` (float32), targets (``[N]`` int64 or ``[N, C]`` float32 multi-hot)."""

    features: np.ndarray
    targets: np.ndarray
    multilabel: bool
    num_classes: int
    class_names: list[str] = field(default_factory=list)
    key: str | None = None
    from_cache: bool = False


def model_preprocessing(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The model's declared input mean/std (timm ``pretrained_cfg``), else ImageNet's."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    mean = tuple(float(v) for v in cfg.get("mean", IMAGENET_MEAN))
    std = tuple(float(v) for v in cfg.get("std", IMAGENET_STD))
    if len(mean) != 3 or len(std) != 3:
        return IMAGENET_MEAN, IMAGENET_STD
    return mean, std  # type: ignore[return-value]


def build_eval_dataset(ref: DataRef) -> Dataset:
    """The split ``ref`` names, with evaluation preprocessing (no augmentation)."""
    from ..data import build_dataset, create_transforms

    scheme, _, arg = ref.spec.partition(":")
    scheme = scheme.lower()
    kwargs: dict[str, Any] = {}
    if scheme == "builtin":
        if tuple(ref.mean) != tuple(IMAGENET_MEAN) or tuple(ref.std) != tuple(IMAGENET_STD):
            kwargs.update(mean=tuple(ref.mean), std=tuple(ref.std))
        from ..data import list_tasks

        if arg not in list_tasks():
            try:  # the offline suite's tasks (docs/design/diverse_transfer.md §6), also reachable through build_dataset
                from ..data import build_suite_dataset, is_suite_task
            except ImportError:
                pass
            else:
                if is_suite_task(arg):
                    return build_suite_dataset(arg, ref.split, ref.image_size, size=ref.size, seed=ref.seed,
                                               **kwargs)
    else:
        crop = 1.0  # evaluation: resize the whole image, no centre crop
        kwargs["transform"] = create_transforms(ref.image_size, is_training=False, mean=tuple(ref.mean),
                                                std=tuple(ref.std), crop_pct=crop)
    return build_dataset(ref.spec, ref.split, ref.image_size, size=ref.size, seed=ref.seed, **kwargs)


def dataset_targets(dataset: Dataset) -> np.ndarray:
    """All targets of ``dataset``: its ``targets`` attribute when present, else by iterating."""
    t = getattr(dataset, "targets", None)
    if t is None and isinstance(dataset, torch.utils.data.TensorDataset):
        t = dataset.tensors[1]
    if t is None:
        t = [dataset[i][1] for i in range(len(dataset))]  # type: ignore[arg-type]
    if isinstance(t, torch.Tensor):
        return t.cpu().numpy()
    if len(t) and isinstance(t[0], (torch.Tensor, np.ndarray)) and np.asarray(t[0]).ndim > 0:
        return np.stack([np.asarray(v, dtype=np.float32) for v in t])
    return np.asarray(t)


def _dataset_info(dataset: Dataset, targets: np.ndarray) -> tuple[bool, int, list[str]]:
    multilabel = bool(getattr(dataset, "multilabel", targets.ndim == 2))
    n = getattr(dataset, "num_classes", None)
    if n is None:
        n = targets.shape[1] if targets.ndim == 2 else (int(targets.max()) + 1 if len(targets) else 0)
    names = list(getattr(dataset, "class_names", None) or [str(i) for i in range(int(n))])
    return multilabel, int(n), names


def represent(model: nn.Module, x: torch.Tensor, representation: str | Callable = "pre_logits") -> torch.Tensor:
    """The transfer representation of a batch (see the module docstring)."""
    if callable(representation):
        return representation(model, x)
    if representation == "pre_logits":
        return pre_logits(model, x)
    if representation == "token_mean":
        f = model.forward_features(x)
        if f.ndim == 3:
            n_prefix = int(getattr(model, "num_prefix_tokens", 1))
            return f[:, n_prefix:].mean(1)
        if f.ndim == 4:
            return f.mean((2, 3))
        return f
    raise ValueError(f"unknown representation {representation!r}; use pre_logits, token_mean or a callable")


def extract_features(model: nn.Module, dataset: Dataset, *, representation: str | Callable = "pre_logits",
                     batch_size: int = 256, device: str | torch.device = "cpu", progress: bool = False,
                     desc: str = "features") -> np.ndarray:
    """Features ``[N, D]`` float32 of every item, in order (eval mode, no grad, batched;
    :func:`quadformer.models.inference.predict`)."""
    out, _ = predict(model, dataset, lambda m, x: represent(m, x, representation), batch_size=batch_size,
                     device=device, progress=progress, desc=desc)
    if out.numel() == 0:
        return np.zeros((0, 0), np.float32)
    return out.reshape(out.shape[0], -1).numpy().astype(np.float32, copy=False)


def feature_cache_key(digest: str, representation: str, ref: DataRef | dict | str) -> tuple[str, dict]:
    """``(sha256 hex, key material)`` for one model × representation × dataset split."""
    data = ref.key_dict() if isinstance(ref, DataRef) else ref
    material = {"model": str(digest), "representation": str(representation), "data": data,
                "version": FEATURE_VERSION}
    spec = data.get("spec", "") if isinstance(data, dict) else str(data)
    if str(spec).startswith("builtin:"):
        material["data_version"] = _builtin_version()
    h = hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()
    return h, material


def _builtin_version() -> str:
    """Versions of the procedural generators: a new rendering is a new cache key."""
    from ..data import GENERATOR_VERSION

    try:
        from ..data import SUITE_VERSION  # type: ignore[import-not-found]
    except ImportError:
        SUITE_VERSION = 0
    return f"builtin{GENERATOR_VERSION}-suite{SUITE_VERSION}"


def _atomic_savez(path: Path, **arrays: np.ndarray) -> None:
    atomic_write(path, lambda f: np.savez(f, **arrays))


def get_features(model: nn.Module, digest: str, ref: DataRef, *, cache_dir: str | os.PathLike | None = None,
                 representation: str | Callable = "pre_logits", representation_name: str | None = None,
                 dataset: Dataset | None = None, batch_size: int = 256, device: str | torch.device = "cpu",
                 progress: bool = False) -> FeatureSet:
    """Features of ``ref`` under ``model`` (identified by ``digest``), from the cache when present.

    ``dataset`` replaces building ``ref`` (tests, custom data); ``ref`` still keys the cache, so it
    must describe that dataset. With ``cache_dir=None`` nothing is cached.
    """
    rep_name = representation_name or (representation if isinstance(representation, str)
                                       else getattr(representation, "__name__", "custom"))
    key, material = feature_cache_key(digest, rep_name, ref)
    path = Path(cache_dir) / f"{key}.npz" if cache_dir is not None else None
    if path is not None and path.exists():
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                fs = FeatureSet(z["features"], z["targets"], bool(meta["multilabel"]), int(meta["num_classes"]),
                                list(meta["class_names"]), key, True)
            log.debug("feature cache hit %s", path)
            return fs
        except (OSError, ValueError, KeyError) as e:
            log.warning("feature cache %s is unreadable (%s); recomputing", path, e)
    ds = dataset if dataset is not None else build_eval_dataset(ref)
    targets = dataset_targets(ds)
    multilabel, n_cls, names = _dataset_info(ds, targets)
    feats = extract_features(model, ds, representation=representation, batch_size=batch_size, device=device,
                             progress=progress, desc=f"features {ref.spec} {ref.split}")
    targets = targets.astype(np.float32) if multilabel else targets.astype(np.int64)
    fs = FeatureSet(feats, targets, multilabel, n_cls, names, key, False)
    if path is not None:
        meta = {"multilabel": multilabel, "num_classes": n_cls, "class_names": names, **material}
        _atomic_savez(path, features=feats, targets=targets, meta=np.array(json.dumps(meta)))
        write_json(path.with_suffix(".json"), meta)
    return fs
