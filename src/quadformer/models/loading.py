"""One way to turn a user's MODEL argument into a ready network.

``load_model(spec)`` accepts a timm model name (random init, never downloaded), a
``model.safetensors`` export of ``quadformer train`` / ``pretrain`` (its JSON metadata
rebuilds the exact architecture), a training checkpoint ``last.pt`` (read with
``weights_only=True``; the EMA weights when present), or a run folder holding either.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..utils.errors import QuadformerError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class LoadedModel:
    model: nn.Module
    name: str  # timm name
    image_size: int
    num_classes: int
    source: str  # what the user passed
    digest: str  # content hash of the weights file, or "init:<name>:<seed>"
    model_config: dict[str, Any] = field(default_factory=dict)  # ModelConfig as a dict
    multilabel: bool = False
    class_names: list[str] = field(default_factory=list)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def create_from_config(model_cfg: dict[str, Any], image_size: int, num_classes: int) -> nn.Module:
    """Rebuild a model from the ``model`` section of a training config."""
    from ..train.config import load_config
    from ..train.engine import build_model

    cfg = load_config(base={"model": {k: v for k, v in model_cfg.items() if k != "vanilla_checkpoint"},
                            "data": {"image_size": int(image_size)}})
    return build_model(cfg, num_classes)


def _default_image_size(model: nn.Module, fallback: int = 224) -> int:
    g = getattr(model, "geometry", None)
    if g is not None:
        return int(g.height)
    size = getattr(model, "input_size", None)  # ours: the image size (patch_embed sees a token grid)
    if size is not None:
        return int(size[-1] if isinstance(size, (tuple, list)) else size)
    size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if size is not None:
        return int(size[0] if isinstance(size, (tuple, list)) else size)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return int(cfg.get("input_size", (3, fallback, fallback))[-1])


def _resolve(spec: str) -> Path | None:
    p = Path(spec)
    if p.is_dir():
        for name in ("model.safetensors", "last.pt"):
            if (p / name).is_file():
                return p / name
        raise QuadformerError(f"{p} holds neither model.safetensors nor last.pt; pass a checkpoint file or a "
                              f"timm model name")
    if p.suffix in (".safetensors", ".pt", ".pth", ".bin") or "/" in spec or "\\" in spec:
        if not p.is_file():
            raise QuadformerError(f"checkpoint not found: {p}")
        return p
    return None


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict, metadata with model/image_size/num_classes/...) of an export or last.pt."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        try:
            with safe_open(str(path), "pt") as f:
                meta_raw = (f.metadata() or {}).get("quadformer")
            state = load_file(str(path))
        except Exception as e:  # noqa: BLE001
            raise QuadformerError(f"cannot read {path} ({e.__class__.__name__}: {e})") from None
        side = path.with_suffix(".json")
        if meta_raw is None and side.is_file():
            meta_raw = side.read_text()
        if meta_raw is None:
            raise QuadformerError(f"{path} carries no quadformer metadata (model name, image size); it was not "
                                  f"written by quadformer train. Load it into a timm model with "
                                  f"model.vanilla_checkpoint instead")
        return state, json.loads(meta_raw)
    from ..train.checkpoint import load_checkpoint

    ck = load_checkpoint(path)
    if not isinstance(ck, dict) or "config" not in ck or "model" not in ck:
        raise QuadformerError(f"{path} is not a quadformer training checkpoint (no config/model entries)")
    cfg = ck["config"]
    meta = {"model": cfg["model"], "image_size": cfg["data"]["image_size"], "num_classes": ck.get("num_classes"),
            "multilabel": ck.get("multilabel", False), "class_names": ck.get("class_names", [])}
    state = ck.get("ema") or ck["model"]
    return state, meta


def load_model(spec: str, num_classes: int | None = None, device: str | torch.device = "cpu",
               seed: int = 0, image_size: int | None = None) -> LoadedModel:
    """Build the network ``spec`` names, in eval mode on ``device``.

    ``num_classes`` replaces the head (``0`` = none: features only) for a checkpoint; for a
    timm name it sets the head size. A fresh timm model is initialised under ``seed``."""
    import timm

    import quadformer.models  # noqa: F401  (registers our models)

    path = _resolve(spec)
    if path is None:
        if not timm.is_model(spec):
            close = timm.list_models(f"*{spec.split('_')[0]}*")[:6]
            raise QuadformerError(f"{spec!r} is neither a checkpoint file nor a timm model name"
                                  + (f"; e.g. {', '.join(close)}" if close else ""))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            kwargs: dict[str, Any] = {"num_classes": 0 if num_classes is None else num_classes}
            if image_size is not None and spec.startswith(("quadformer_", "uniform_vit_")):
                kwargs["img_size"] = image_size
            model = timm.create_model(spec, pretrained=False, **kwargs)
        cfg = getattr(model, "pretrained_cfg", None) or {}
        return LoadedModel(model.to(device).eval(), spec, image_size or _default_image_size(model),
                           int(kwargs["num_classes"]), spec, f"init:{spec}:{seed}", {"name": spec},
                           mean=tuple(cfg.get("mean", IMAGENET_MEAN)), std=tuple(cfg.get("std", IMAGENET_STD)))

    state, meta = read_checkpoint(path)
    model_cfg, size = dict(meta["model"]), int(meta["image_size"])
    trained_classes = int(meta.get("num_classes") or 0)
    model = create_from_config(model_cfg, size, trained_classes)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise QuadformerError(f"{path} does not match architecture {model_cfg['name']!r}: "
                              f"{len(missing)} missing keys (e.g. {missing[:2]}), {len(unexpected)} unexpected "
                              f"(e.g. {unexpected[:2]})")
    if num_classes is not None and num_classes != trained_classes:
        model.reset_classifier(num_classes)
    return LoadedModel(model.to(device).eval(), model_cfg["name"], size,
                       trained_classes if num_classes is None else num_classes, spec, file_digest(path), model_cfg,
                       bool(meta.get("multilabel", False)), list(meta.get("class_names", [])))


def backbone_state(spec: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Weights of a checkpoint minus its classifier (stage-B initialisation: a new head)."""
    path = _resolve(str(spec))
    if path is None:
        raise QuadformerError(f"init checkpoint {spec!r} is not a file or run folder")
    state, meta = read_checkpoint(path)
    model = create_from_config(dict(meta["model"]), int(meta["image_size"]), int(meta.get("num_classes") or 0))
    head = _classifier_keys(model)
    return {k: v for k, v in state.items() if k not in head}, meta


def _classifier_keys(model: nn.Module) -> set[str]:
    clf = model.get_classifier() if hasattr(model, "get_classifier") else None
    if not isinstance(clf, nn.Module) or isinstance(clf, nn.Identity):
        return set()
    for name, mod in model.named_modules():
        if mod is clf:
            return {f"{name}.{k}" for k in clf.state_dict()}
    return set()
