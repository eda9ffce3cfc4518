"""One way to turn a user's MODEL argument into a ready network.

``load_model(spec)`` accepts

* a timm model name: random init under ``seed`` (``init_seed``), never downloaded;
* a ``model.safetensors`` export of ``quadformer train`` / ``pretrain``: its sibling
  ``model.json`` (or, when missing, the same JSON in the safetensors metadata) rebuilds the
  exact architecture; the run's ``config.yaml`` beside it, when it describes the same model,
  gives the init seed and the data config;
* a training checkpoint ``last.pt`` (read with ``weights_only=True``; timm's keys
  ``state_dict``/``state_dict_ema`` or the older ``model``/``ema``; ``weights="auto"`` takes
  the EMA weights when present, ``"ema"`` insists on them, ``"model"`` takes the raw ones);
* a bare state dict (``.pt``/``.pth``/``.safetensors`` without metadata) with ``arch=`` a timm
  name;
* a run folder holding ``model.safetensors`` or ``last.pt``;
* a ``local-dir:PATH`` or ``hf-hub:ORG/NAME`` name, as timm reads them (a folder written by
  :func:`timm.models.save_for_hf`: ``config.json`` + weights; the hub is only asked for what
  is not in its local cache, because the user named it).

Every load is strict: a checkpoint of another architecture fails with one
:class:`~quadformer.utils.errors.QuadformerError` line naming the fix. The returned
``factory`` rebuilds the architecture with fresh weights (Δ vs init:
``fresh_init(lm.factory, lm.init_seed)``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from ..utils.errors import QuadformerError
from ..utils.state_dict import clean_state_dict, load_torch_file
from .factory import build_model, classifier_keys, is_ours

__all__ = ["LoadedModel", "load_model", "read_checkpoint", "backbone_state", "create_from_config", "file_digest"]

_WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
_HEAD_WEIGHTS = ("head.weight", "fc.weight", "classifier.weight", "head.fc.weight")


@dataclass
class LoadedModel:
    model: nn.Module
    name: str  # timm architecture name
    image_size: int
    num_classes: int
    source: str  # what the user passed
    digest: str  # short sha256 of the weights file, or "init:<name>:<seed>"
    model_config: dict[str, Any] = field(default_factory=dict)  # ModelConfig as a dict
    multilabel: bool = False
    class_names: list[str] = field(default_factory=list)
    mean: tuple[float, float, float] = IMAGENET_DEFAULT_MEAN
    std: tuple[float, float, float] = IMAGENET_DEFAULT_STD
    factory: Callable[[], nn.Module] | None = None  # same architecture, fresh random weights
    kind: str = "timm"  # "timm", "export", "train_checkpoint", "state_dict" or "hub" (local-dir:/hf-hub:)
    init_seed: int = 0  # the seed the weights were initialised under (Δ vs init)
    init_seed_known: bool = True  # False: the checkpoint does not record its seed (default used)
    weights: str = "init"  # "init" (timm name), "model", or "ema" (a training checkpoint's EMA weights)
    data: dict[str, Any] = field(default_factory=dict)  # training data config, when known
    sha256: str | None = None  # full sha256 of the weights file
    path: Path | None = None  # the weights file read


def _sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_digest(path: str | Path) -> str:
    return _sha256(path)[:16]


#: kwargs that only say where initial weights come from: a rebuild for saved weights ignores them
INIT_ONLY_KWARGS = ("pretrained", "pretrained_cfg_overlay", "checkpoint_path", "vanilla_checkpoint")


def create_from_config(model_cfg: dict[str, Any], image_size: int, num_classes: int) -> nn.Module:
    """Rebuild a model from the ``model`` section of a training config."""
    unknown = set(model_cfg) - {"name", "num_patches", "kwargs", "vanilla_checkpoint", "init_checkpoint"}
    if unknown or not model_cfg.get("name"):
        raise QuadformerError(f"model config {model_cfg} is not a quadformer model section (unknown keys "
                              f"{sorted(unknown)}); re-export the model with `quadformer train`")
    kwargs = {k: v for k, v in (model_cfg.get("kwargs") or {}).items() if k not in INIT_ONLY_KWARGS}
    try:
        return build_model(model_cfg["name"], num_classes, int(image_size), model_cfg.get("num_patches", 64), kwargs)
    except TypeError as e:
        raise QuadformerError(f"cannot build {model_cfg.get('name')!r} with kwargs {model_cfg.get('kwargs')}: "
                              f"{e}; fix the model kwargs") from None


def _create_timm(name: str, num_classes: int, image_size: int | None, kwargs: dict[str, Any]) -> nn.Module:
    """``timm.create_model`` without pretrained weights; ``image_size`` also goes to timm models
    that take ``img_size`` (ViTs), ours always get it (as ``quadformer train`` does)."""
    import timm

    kw = {k: v for k, v in kwargs.items() if k not in INIT_ONLY_KWARGS}
    kw["num_classes"] = num_classes
    if image_size is not None and "img_size" not in kw:
        if is_ours(name):
            kw["img_size"] = image_size
        else:
            try:  # fixed-size timm models (ViTs) take img_size; CNNs do not (TypeError before any init)
                return timm.create_model(name, pretrained=False, img_size=image_size, **kw)
            except TypeError:
                pass
    try:
        return timm.create_model(name, pretrained=False, **kw)
    except (TypeError, RuntimeError) as e:
        raise QuadformerError(f"cannot build {name!r} with {kw}: {e}; fix the model kwargs") from None


SPEC_FORMS = ("a timm model name", "a run folder", "last.pt", "model.safetensors", "local-dir:PATH",
              "hf-hub:ORG/NAME")


def _unknown_name(spec: str) -> QuadformerError:
    import timm

    close = timm.list_models(f"*{spec.split('_')[0]}*")[:6]
    return QuadformerError(f"{spec!r} is not a model; pass {', '.join(SPEC_FORMS[:-1])} or {SPEC_FORMS[-1]}"
                           + (f" (timm names like it: {', '.join(close)})" if close else ""))


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


def _resolve(spec: str | Path) -> Path | None:
    """The weights file ``spec`` names, or None for a timm model name."""
    p, s = Path(spec), str(spec)
    if p.is_dir():
        for name in ("model.safetensors", "last.pt"):
            if (p / name).is_file():
                return p / name
        raise QuadformerError(f"{p} holds neither model.safetensors nor last.pt; pass a checkpoint file or a "
                              f"timm model name")
    if p.is_file():
        return p
    if s.endswith(_WEIGHT_SUFFIXES) or "/" in s or "\\" in s:
        raise QuadformerError(f"checkpoint not found: {p}; pass an existing file or folder (or local-dir:PATH, "
                              f"hf-hub:ORG/NAME, a timm model name)")
    return None


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


def _read(path: Path, weights: str = "auto") -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(state dict, metadata or None for bare weights) of a weights file.

    The metadata holds ``model``, ``image_size``, ``num_classes``, ``multilabel``,
    ``class_names`` and, when known, ``seed`` and ``data``; plus ``kind`` (export or
    train_checkpoint), ``weights`` (model or ema) and ``fix`` (what a mismatch means)."""
    if weights not in ("auto", "ema", "model"):
        raise ValueError(f"weights={weights!r}; use 'auto', 'ema' or 'model'")
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        try:
            with safe_open(str(path), "pt") as f:
                meta_raw = (f.metadata() or {}).get("quadformer")
            state = load_file(str(path))
        except Exception as e:  # noqa: BLE001
            raise QuadformerError(f"cannot read {path} as safetensors ({e.__class__.__name__}); expected a "
                                  f"model.safetensors written by `quadformer train`") from None
        side = path.with_suffix(".json")
        if side.is_file():  # the sibling wins: it is what a user edits
            meta_raw = side.read_text()
        if meta_raw is None:
            return state, None
        try:
            meta = json.loads(meta_raw)
        except json.JSONDecodeError as e:
            raise QuadformerError(f"the metadata of {path} is not valid JSON ({e.msg}); re-export the model") from None
        if not isinstance(meta, dict):
            raise QuadformerError(f"the metadata of {path} is a {type(meta).__name__}, not a mapping; re-export the model")
        run_cfg = _run_config(path, dict(meta.get("model") or {}))
        if "seed" not in meta and "seed" in run_cfg:
            meta["seed"] = run_cfg["seed"]
        meta.setdefault("data", dict(run_cfg.get("data") or {}))
        meta.update(kind="export", weights="model",
                    fix=f"{side.name} describes another model than these weights; re-export the model")
        return state, meta
    ck = load_torch_file(path)
    raw = ema = None
    if isinstance(ck, dict):  # timm's CheckpointSaver keys, or the older model/ema
        raw = ck.get("state_dict") if isinstance(ck.get("state_dict"), dict) else ck.get("model")
        ema = ck.get("state_dict_ema", ck.get("ema"))
    if isinstance(ck, dict) and "config" in ck and isinstance(raw, dict):
        cfg = ck["config"]
        if weights == "ema" and not ema:
            raise QuadformerError(f"{path} holds no EMA weights (trained with train.ema_decay=0); use --weights model")
        used = "model" if weights == "model" or not ema else "ema"
        data = dict(cfg.get("data") or {})
        meta = {"model": cfg["model"], "image_size": data.get("image_size"), "num_classes": ck.get("num_classes"),
                "multilabel": ck.get("multilabel", False), "class_names": ck.get("class_names", []), "data": data,
                "kind": "train_checkpoint", "weights": used,
                "fix": "the checkpoint's config does not match its weights; pass a checkpoint written by "
                       "`quadformer train`"}
        if "seed" in cfg:
            meta["seed"] = cfg["seed"]
        return (raw if used == "model" else ema), meta
    state = (ema if weights == "ema" and ema else raw if raw is not None else ck) if isinstance(ck, dict) else ck
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise QuadformerError(f"{path} is neither a quadformer training checkpoint nor a state dict; pass last.pt "
                              f"or model.safetensors written by `quadformer train`")
    return state, None


def read_checkpoint(path: Path, weights: str = "auto") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict, metadata with model/image_size/num_classes/...) of an export or last.pt."""
    state, meta = _read(Path(path), weights)
    if meta is None:
        raise QuadformerError(f"{path} carries no quadformer metadata (model name, image size); it was not "
                              f"written by quadformer train. Pass --arch <timm name>, or load it into a timm "
                              f"model with model.vanilla_checkpoint")
    return state, meta


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


def _seeded(factory: Callable[[], nn.Module], seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory()


HUB_PREFIXES = ("local-dir:", "hf-hub:")


def _hub_weights_file(spec: str) -> Path | None:
    """The weights file a ``local-dir:``/``hf-hub:`` model was read from (for its digest)."""
    source, _, loc = spec.partition(":")
    names = ("model.safetensors", "pytorch_model.bin")
    if source == "local-dir":
        return next((Path(loc) / n for n in names if (Path(loc) / n).is_file()), None)
    from huggingface_hub import try_to_load_from_cache

    repo, _, revision = loc.partition("@")
    for n in names:
        got = try_to_load_from_cache(repo, n, revision=revision or None)
        if isinstance(got, str):
            return Path(got)
    return None


def _model_section(name: str, model: nn.Module) -> dict[str, Any]:
    """The ``model`` config section (as :func:`create_from_config` reads it) of a built model."""
    args = {k: v for k, v in getattr(model, "_model_args", {}).items() if k not in ("num_classes", "img_size")}
    section: dict[str, Any] = {"name": name, "kwargs": args}
    if "num_patches" in args:
        section["num_patches"] = args.pop("num_patches")
    return section


def _load_hub(spec: str, num_classes: int | None, device: str | torch.device, image_size: int | None,
              extra: dict[str, Any]) -> LoadedModel:
    """A folder written by ``timm.models.save_for_hf`` (``local-dir:``) or its hub copy (``hf-hub:``),
    rebuilt and loaded by timm itself (config.json: architecture, model args, preprocessing)."""
    import timm

    kw = dict(extra)
    if image_size is not None:
        kw.setdefault("img_size", image_size)

    def build(pretrained: bool) -> nn.Module:
        try:
            return timm.create_model(spec, pretrained=pretrained, **kw)
        except OSError as e:  # a folder without config.json / weights; huggingface_hub: not cached, no network
            if spec.startswith("hf-hub:"):
                raise QuadformerError(f"{spec} is not in the local Hugging Face cache and cannot be downloaded "
                                      f"here ({e.__class__.__name__}); download it where there is a network, or "
                                      f"use local-dir:PATH") from None
            raise QuadformerError(f"{spec} cannot be read ({e}); pass a folder written by timm.models.save_for_hf "
                                  f"(config.json + model.safetensors)") from None

    model = build(True)
    cfg = dict(model.pretrained_cfg)
    trained = int(model.num_classes)

    def factory() -> nn.Module:
        m = build(False)
        if num_classes is not None and num_classes != trained:
            m.reset_classifier(num_classes)
        return m

    if num_classes is not None and num_classes != trained:
        model.reset_classifier(num_classes)
    name = cfg.get("architecture") or spec
    size = int(image_size or cfg.get("input_size", (3, 224, 224))[-1])
    labels = cfg.get("label_names") or []
    weights_file = _hub_weights_file(spec)
    sha = _sha256(weights_file) if weights_file is not None else None
    return LoadedModel(model.to(device).eval(), name, size, trained if num_classes is None else int(num_classes),
                       spec, sha[:16] if sha else f"hub:{spec}", _model_section(name, model),
                       class_names=list(labels.values()) if isinstance(labels, dict) else list(labels),
                       mean=tuple(cfg.get("mean", IMAGENET_DEFAULT_MEAN)),
                       std=tuple(cfg.get("std", IMAGENET_DEFAULT_STD)), factory=factory, kind="hub", init_seed_known=False, weights="model", sha256=sha,
                       path=weights_file)


def load_model(spec: str | Path, num_classes: int | None = None, device: str | torch.device = "cpu",
               seed: int = 0, image_size: int | None = None, *, arch: str | None = None,
               init_seed: int | None = None, model_kwargs: dict[str, Any] | None = None,
               weights: str = "auto") -> LoadedModel:
    """Build the network ``spec`` names (see the module doc), in eval mode on ``device``.

    ``num_classes`` replaces the head of a checkpoint (``0`` = none: features only); for a
    timm name it sets the head size (default 0). A fresh timm model is initialised under
    ``init_seed`` (default ``seed``). ``image_size`` overrides the checkpoint's (our models
    are built for it). ``arch`` is the timm name of a bare state dict; ``model_kwargs`` extra
    ``timm.create_model`` kwargs; ``weights`` picks a training checkpoint's EMA or raw weights."""
    import timm

    if weights not in ("auto", "ema", "model"):
        raise ValueError(f"weights={weights!r}; use 'auto', 'ema' or 'model'")
    extra = dict(model_kwargs or {})
    if str(spec).startswith(HUB_PREFIXES):
        if weights == "ema":
            raise QuadformerError(f"{spec} holds one set of weights; EMA weights are read from a training "
                                  f"checkpoint (last.pt)")
        return _load_hub(str(spec), num_classes, device, image_size, extra)
    path = _resolve(spec)
    if path is None:
        name = str(spec)
        if not timm.is_model(name):
            raise _unknown_name(name)
        seed_ = int(seed if init_seed is None else init_seed)
        ncls = 0 if num_classes is None else int(num_classes)

        def factory_timm() -> nn.Module:
            return _create_timm(name, ncls, image_size, extra)

        model = _seeded(factory_timm, seed_)
        cfg = getattr(model, "pretrained_cfg", None) or {}
        return LoadedModel(model.to(device).eval(), name, int(image_size or _default_image_size(model)), ncls,
                           str(spec), f"init:{name}:{seed_}", {"name": name, **({"kwargs": extra} if extra else {})},
                           mean=tuple(cfg.get("mean", IMAGENET_DEFAULT_MEAN)),
                           std=tuple(cfg.get("std", IMAGENET_DEFAULT_STD)),
                           factory=factory_timm, kind="timm", init_seed=seed_, init_seed_known=True, weights="init")

    state, meta = _read(path, weights)
    state = clean_state_dict(state)
    if meta is None:  # bare weights: the architecture comes from arch
        if not arch:
            raise QuadformerError(f"{path} holds bare weights without a model description; pass --arch "
                                  f"<timm name> (or use the model.safetensors + model.json export)")
        if not timm.is_model(arch):
            raise _unknown_name(arch)
        heads = [k for k in _HEAD_WEIGHTS if k in state]
        trained = int(state[heads[0]].shape[0]) if heads else 0  # no classifier weights: a headless model
        name, size, model_cfg, kind, used = arch, image_size, {"name": arch}, "state_dict", "model"
        seed_known, seed_ = False, int(seed if init_seed is None else init_seed)
        fix = f"pass the --arch these weights were trained with (not {arch!r})"

        def build() -> nn.Module:
            return _create_timm(arch, trained, size, extra)
    else:
        model_cfg = dict(meta.get("model") or {})
        name = model_cfg.get("name")
        if not name:
            raise QuadformerError(f"{path} does not name its model architecture; re-export it with `quadformer train`")
        if arch and arch != name:
            raise QuadformerError(f"--arch {arch} contradicts the checkpoint's model {name!r}; drop --arch")
        if extra:
            model_cfg["kwargs"] = {**(model_cfg.get("kwargs") or {}), **extra}
        size = image_size if image_size is not None else meta.get("image_size")
        if size is None:
            raise QuadformerError(f"{path} does not record its image size; pass image_size (--image-size)")
        trained = int(meta.get("num_classes") or 0)
        kind, used, fix = meta["kind"], meta["weights"], meta["fix"]
        seed_known = "seed" in meta
        seed_ = int(init_seed if init_seed is not None else meta.get("seed", seed))

        def build() -> nn.Module:
            return create_from_config(model_cfg, int(size), trained)

    def factory() -> nn.Module:
        m = build()
        if num_classes is not None and num_classes != trained:
            m.reset_classifier(num_classes)
        return m

    model = build()  # unseeded, as always: its weights are all replaced below
    _load_strict(model, state, path, name, fix)
    if num_classes is not None and num_classes != trained:
        model.reset_classifier(num_classes)
    sha = _sha256(path)
    return LoadedModel(model.to(device).eval(), name, int(size) if size is not None else _default_image_size(model),
                       trained if num_classes is None else int(num_classes), str(spec), sha[:16], model_cfg,
                       bool((meta or {}).get("multilabel", False)), list((meta or {}).get("class_names") or []),
                       factory=factory, kind=kind, init_seed=seed_, init_seed_known=seed_known, weights=used,
                       data=dict((meta or {}).get("data") or {}), sha256=sha, path=path)


def backbone_state(spec: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Weights of a checkpoint minus its classifier (stage-B initialisation: a new head)."""
    path = _resolve(str(spec))
    if path is None:
        raise QuadformerError(f"init checkpoint {spec!r} is not a file or run folder")
    state, meta = read_checkpoint(path)
    model = create_from_config(dict(meta["model"]), int(meta["image_size"]), int(meta.get("num_classes") or 0))
    head = classifier_keys(model)
    return {k: v for k, v in state.items() if k not in head}, meta


