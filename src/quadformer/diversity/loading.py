"""Models to measure, by timm name (random init, never downloaded) or checkpoint path.

* ``model.safetensors`` written by ``export_weights`` with its sibling ``model.json``
  (``{"model": {"name", "num_patches", "kwargs", ...}, "image_size", "num_classes"}``; the
  same JSON is also read from the safetensors metadata when the sibling is missing); the
  run's ``config.yaml`` beside it, when it describes the same model, gives the init seed
  and the data source;
* a training checkpoint ``last.pt`` (``{"model": state_dict, "config": {...}, "num_classes"}``;
  ``weights="auto"`` takes the EMA weights when present, as :mod:`quadformer.models.loading`
  does, ``"ema"`` insists on them, ``"model"`` takes the raw ones);
* a plain state dict (``.pt``/``.pth``/``.safetensors`` without metadata) with ``arch=`` a
  timm name.

Every load is strict: a checkpoint of another architecture fails with one
:class:`~quadformer.utils.errors.QuadformerError` line naming the fix. The returned
``factory`` rebuilds the architecture with fresh weights, for Δ vs init
(:func:`~quadformer.diversity.report.fresh_init` with ``init_seed``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..utils.errors import QuadformerError

__all__ = ["LoadedModel", "load_model"]

_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")


@dataclass
class LoadedModel:
    model: nn.Module
    factory: Callable[[], nn.Module]  # same architecture, fresh random weights
    name: str  # timm architecture name
    image_size: int
    init_seed: int
    init_seed_known: bool  # False: the checkpoint does not record its seed (default used)
    source: str  # "timm", "export", "train_checkpoint" or "state_dict"
    weights: str = "model"  # "ema" when a training checkpoint's EMA weights were loaded
    data: dict[str, Any] = field(default_factory=dict)  # training data config, when known
    sha256: str | None = None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _is_ours(name: str) -> bool:
    return name.startswith(("quadformer_", "uniform_vit_"))


def _create(name: str, num_classes: int | None, image_size: int | None, kwargs: dict[str, Any],
            fit_size: bool = False) -> nn.Module:
    """``timm.create_model`` as ``quadformer train`` calls it (our models get ``img_size``);
    ``fit_size``: also give other timm models ``img_size`` when they take it (ViTs)."""
    import timm

    import quadformer.models  # noqa: F401  (registers our models)

    kw = dict(kwargs)
    kw.pop("vanilla_checkpoint", None)  # Δ vs init is against a random init: never load other weights
    kw.pop("pretrained", None)
    if num_classes is not None:
        kw["num_classes"] = num_classes
    if image_size is not None and _is_ours(name):
        kw.setdefault("img_size", image_size)
    elif fit_size and image_size is not None and "img_size" not in kw:
        try:  # fixed-size timm models (ViTs) take img_size; CNNs do not need it
            return timm.create_model(name, pretrained=False, img_size=image_size, **kw)
        except TypeError:
            pass
        except RuntimeError as e:
            if "Unknown model" not in str(e):
                raise
    try:
        return timm.create_model(name, pretrained=False, **kw)
    except RuntimeError as e:
        if "Unknown model" in str(e):
            close = timm.list_models(f"*{name.split('_')[0]}*")[:6]
            hint = f" (e.g. {', '.join(close)})" if close else ""
            raise QuadformerError(f"unknown model {name!r}: pass a timm model name{hint} or an existing checkpoint "
                                  f"path (model.safetensors, last.pt)") from None
        raise QuadformerError(f"cannot build {name!r} with {kw}: {e}") from None
    except TypeError as e:
        raise QuadformerError(f"cannot build {name!r} with {kw}: {e}; fix the model kwargs") from None


def _image_size(model: nn.Module, given: int | None) -> int:
    if given is not None:
        return int(given)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = cfg.get("input_size") if isinstance(cfg, dict) else None
    return int(size[-1]) if size else 224


def _load_strict(model: nn.Module, state: dict[str, torch.Tensor], path: Path, name: str, fix: str) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        if shapes:
            k = shapes[0]
            parts.append(f"{len(shapes)} shape mismatches (e.g. {k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)})")
        raise QuadformerError(f"checkpoint {path} does not fit architecture {name!r}: {'; '.join(parts)}; {fix}")
    model.load_state_dict(state)


def _read_state(path: Path) -> tuple[dict[str, Any] | None, Any]:
    """(metadata or None, payload) of a weights file."""
    if path.suffix == ".safetensors":
        try:
            from safetensors import safe_open
            from safetensors.torch import load_file

            with safe_open(str(path), framework="pt") as f:
                md = f.metadata() or {}
            state = load_file(str(path))
        except Exception as e:  # noqa: BLE001
            raise QuadformerError(f"cannot read {path} as safetensors ({e.__class__.__name__}); expected a "
                                  f"model.safetensors written by `quadformer train`") from None
        meta = None
        side = path.with_suffix(".json")
        if side.is_file():
            try:
                meta = json.loads(side.read_text())
            except json.JSONDecodeError as e:
                raise QuadformerError(f"{side} is not valid JSON ({e.msg}); re-export the model") from None
        elif "quadformer" in md:
            meta = json.loads(md["quadformer"])
        return meta, state
    from ..train.checkpoint import load_checkpoint

    return None, load_checkpoint(path)


def _run_config(path: Path, model_cfg: dict[str, Any]) -> dict[str, Any]:
    """The run's ``config.yaml`` beside an export (seed, data), if it describes the same model."""
    f = path.parent / "config.yaml"
    if not f.is_file():
        return {}
    try:
        import yaml

        cfg = yaml.safe_load(f.read_text()) or {}
    except Exception:  # noqa: BLE001  (unreadable: ignore, the export is self-describing)
        return {}
    m = cfg.get("model") if isinstance(cfg, dict) else None
    if not isinstance(m, dict) or any(m.get(k) != model_cfg.get(k) for k in ("name", "num_patches", "kwargs")):
        return {}
    return cfg


def load_model(spec: str | Path, *, arch: str | None = None, num_classes: int | None = None,
               image_size: int | None = None, init_seed: int | None = None,
               model_kwargs: dict[str, Any] | None = None, weights: str = "auto") -> LoadedModel:
    """Build the model ``spec`` names (timm name or checkpoint path); see the module doc."""
    if weights not in ("auto", "ema", "model"):
        raise ValueError(f"weights={weights!r}; use 'auto', 'ema' or 'model'")
    kwargs = dict(model_kwargs or {})
    path = Path(spec)
    if not path.exists():
        if str(spec).endswith(_WEIGHT_SUFFIXES) or "/" in str(spec) or "\\" in str(spec):
            raise QuadformerError(f"checkpoint not found: {spec}; pass an existing file or a timm model name")
        name = str(spec)
        seed = 0 if init_seed is None else int(init_seed)

        def factory_timm() -> nn.Module:  # no classifier by default (it is never measured)
            return _create(name, 0 if num_classes is None else num_classes, image_size, kwargs, fit_size=True)

        from .report import fresh_init

        model = fresh_init(factory_timm, seed)
        return LoadedModel(model, factory_timm, name, _image_size(model, image_size), seed, True, "timm", "init")
    if path.is_dir():
        for cand in ("model.safetensors", "last.pt"):
            if (path / cand).is_file():
                path = path / cand
                break
        else:
            raise QuadformerError(f"{path} is a folder without model.safetensors or last.pt; pass the checkpoint file")
    meta, payload = _read_state(path)
    sha = _sha256(path)
    data: dict[str, Any] = {}
    seed_known = False
    if isinstance(payload, dict) and "config" in payload and "model" in payload and isinstance(payload["model"], dict):
        cfg = payload["config"]
        mcfg = dict(cfg.get("model") or {})
        name = mcfg.get("name")
        data = dict(cfg.get("data") or {})
        size = image_size if image_size is not None else data.get("image_size")
        ncls = payload.get("num_classes", num_classes)
        seed_known = "seed" in cfg
        seed = int(init_seed if init_seed is not None else cfg.get("seed", 0))
        state = payload["model"] if weights == "model" else (payload.get("ema") or payload["model"])
        if weights == "ema" and payload.get("ema") is None:
            raise QuadformerError(f"{path} holds no EMA weights (trained with train.ema_decay=0); use --weights model")
        source = "train_checkpoint"
        used = "ema" if state is payload.get("ema") else "model"
        fix = "the checkpoint's config does not match its weights; pass a checkpoint written by `quadformer train`"
    elif meta is not None:
        mcfg = dict(meta.get("model") or {})
        name = mcfg.get("name")
        size = image_size if image_size is not None else meta.get("image_size")
        ncls = meta.get("num_classes", num_classes)
        run_cfg = _run_config(path, mcfg)
        data = dict(run_cfg.get("data") or {})
        seed_known = "seed" in meta or "seed" in run_cfg
        seed = int(init_seed if init_seed is not None else meta.get("seed", run_cfg.get("seed", 0)))
        state = payload
        source = "export"
        fix = f"{path.with_suffix('.json').name} describes another model than these weights; re-export the model"
    else:
        state = payload.get("state_dict", payload.get("model", payload)) if isinstance(payload, dict) else payload
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise QuadformerError(f"{path} is neither a training checkpoint nor a state dict; pass last.pt or "
                                  f"model.safetensors written by `quadformer train`")
        if not arch:
            raise QuadformerError(f"{path} holds bare weights without a model description; pass --arch "
                                  f"<timm name> (or use the model.safetensors + model.json export)")
        mcfg, name, size, ncls = {}, arch, image_size, num_classes
        seed = int(init_seed or 0)
        source = "state_dict"
        fix = f"pass the --arch these weights were trained with (not {arch!r})"
    if arch and source != "state_dict" and arch != name:
        raise QuadformerError(f"--arch {arch} contradicts the checkpoint's model {name!r}; drop --arch")
    if not name:
        raise QuadformerError(f"{path} does not name its model architecture; re-export it with `quadformer train`")
    if mcfg.get("kwargs"):
        kwargs = {**mcfg["kwargs"], **kwargs}
    if mcfg.get("num_patches") is not None and _is_ours(name):
        kwargs.setdefault("num_patches", mcfg["num_patches"])
    if ncls is None and source == "state_dict":
        heads = [k for k in ("head.weight", "fc.weight", "classifier.weight", "head.fc.weight") if k in state]
        ncls = int(state[heads[0]].shape[0]) if heads else 0  # no classifier weights: a headless model
    size_ = int(size) if size is not None else None

    def factory() -> nn.Module:
        return _create(name, ncls, size_, kwargs, fit_size=source == "state_dict")

    from .report import fresh_init

    model = fresh_init(factory, seed)
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    _load_strict(model, state, path, name, fix)
    return LoadedModel(model, factory, name, _image_size(model, size_), seed, seed_known, source,
                       used if source == "train_checkpoint" else "model", data, sha)
