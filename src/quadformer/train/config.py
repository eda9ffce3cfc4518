"""Training configuration: nested dataclasses read from YAML, strict about unknown keys,
with ``section.key=value`` overrides from the command line."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from ..utils.errors import QuadformerError


@dataclass
class ModelConfig:
    name: str = "quadformer_micro_patch8_128"  # any timm name; quadformer_* / uniform_vit_* are ours
    num_patches: int | None = 64  # token budget N (None: the model's default)
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra timm.create_model arguments
    vanilla_checkpoint: str | None = None  # fine-tune from a vanilla timm ViT checkpoint file
    init_checkpoint: str | None = None  # start from a quadformer run (stage A) with a new head


@dataclass
class DataConfig:
    train: str = "builtin:glyphs"  # builtin:<task> | imagefolder:<root> | cifar10:<root> | cifar100:<root>
    val: str | None = None  # default: the same source's val split
    train_size: int | None = 6000  # built-in data only
    val_size: int | None = 1000
    image_size: int = 128
    data_seed: int = 0  # which draw of a built-in task
    batch_size: int = 64  # global batch (divided over DDP processes)
    num_workers: int = 0
    cache_dir: str | None = None  # built-in: render once, keep as .npy
    augment: bool = False  # real data: timm train transform; built-in data needs none
    shift: int = 0  # built-in training data: random translation by up to this many px (0: off)


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    min_lr: float = 1e-5
    label_smoothing: float = 0.1
    clip_grad: float | None = 1.0


@dataclass
class TrainConfig:
    epochs: int = 10
    amp: str = "auto"  # auto | bf16 | fp16 | off
    ema_decay: float = 0.0  # 0 = no EMA
    checkpoint_every_steps: int = 0  # 0 = at the end of every epoch (and on interrupt) only
    snapshots: int = 0  # weight snapshots at this many evenly spaced steps (a trajectory)
    eval_every_epochs: int = 1
    progress: bool = True


@dataclass
class ObjectiveConfig:
    """What the loss is (see quadformer.train.objectives): supervised, kd, ssl or joint."""

    kind: str = "supervised"  # supervised | kd | ssl | joint
    ssl_method: str = "simclr"  # simclr | dino
    teacher: str | None = None  # kd: checkpoint of a stronger model on the same task
    kd_alpha: float = 5.0  # USI: CE + 5 * KL, T = 1
    kd_temperature: float = 1.0
    joint_lambda: float = 1.0  # joint: CE + lambda * SSL
    temperature: float = 0.2  # SimCLR NT-Xent tau
    proj_hidden_dim: int = 512
    proj_dim: int = 128  # SimCLR output / DINO bottleneck
    dino_out_dim: int = 1024
    dino_momentum: float = 0.996  # cosine-scheduled to 1
    dino_teacher_temp: float = 0.07
    dino_warmup_teacher_temp: float = 0.04
    dino_warmup_epochs: int = 5
    local_views: int = 2  # DINO local crops
    local_crop_size: int | None = None  # default: the global size (fixed-geometry models need it)
    min_scale: float = 0.2  # random-resized-crop scale floor
    color_jitter: float = 0.5  # lightly cj_strength: 0.5 -> 0.4/0.4/0.4/0.1
    blur_prob: float = 0.0  # small images: no blur
    flip_prob: float = 0.5


@dataclass
class OutputConfig:
    dir: str = "runs/default"
    tensorboard: bool = True
    wandb: bool = False  # Weights & Biases beside CSV/TensorBoard (needs wandb; WANDB_MODE=offline works)
    wandb_project: str = "quadformer"


@dataclass
class Config:
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _coerce(value: Any, current: Any, where: str) -> Any:
    """Parse an override string with YAML rules, then check it against the default's type."""
    if isinstance(value, str) and not (isinstance(current, str) and current):
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            pass
    if isinstance(current, str) and isinstance(value, bool):  # YAML 1.1 reads off/on/no as booleans
        value = {True: "on", False: "off"}[value]
    if isinstance(value, str) and isinstance(current, (int, float)) and not isinstance(current, bool):
        try:  # YAML 1.1 reads 1e-3 (no dot) as a string
            value = float(value) if isinstance(current, float) or not value.lstrip("-").isdigit() else int(value)
        except ValueError:
            pass
    if current is None or value is None:
        return value
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise QuadformerError(f"{where}={value!r} must be true or false")
    elif isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    elif isinstance(current, (int, float, str, dict)) and not isinstance(value, type(current)):
        raise QuadformerError(f"{where}={value!r} must be of type {type(current).__name__}")
    return value


def _apply(obj: Any, data: dict[str, Any], prefix: str = "") -> None:
    names = {f.name: f for f in fields(obj)}
    for key, value in data.items():
        where = f"{prefix}{key}"
        if key not in names:
            raise QuadformerError(
                f"unknown config key '{where}'; valid keys here: {', '.join(sorted(names))}"
            )
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise QuadformerError(f"config section '{where}' must be a mapping, got {value!r}")
            _apply(current, value, f"{where}.")
        else:
            setattr(obj, key, _coerce(value, current, where))


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["optim.lr=3e-4", "train.epochs=5"]`` -> nested dict."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise QuadformerError(f"override {item!r} must look like section.key=value (e.g. optim.lr=3e-4)")
        key, value = item.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def apply_overrides(cfg: Config, items: list[str]) -> Config:
    """Apply ``section.key=value`` overrides to ``cfg`` in place (not validated)."""
    _apply(cfg, parse_overrides(items))
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> Config:
    cfg = Config()
    if base:
        _apply(cfg, base)
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise QuadformerError(f"config file not found: {p}")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise QuadformerError(f"config {p} is not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise QuadformerError(f"config {p} must be a mapping of sections, got {type(data).__name__}")
        _apply(cfg, data)
    _apply(cfg, parse_overrides(overrides or []))
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    if cfg.train.amp not in ("auto", "bf16", "fp16", "off"):
        raise QuadformerError(f"train.amp={cfg.train.amp!r}; use auto, bf16, fp16 or off")
    if cfg.data.batch_size < 1 or cfg.train.epochs < 1:
        raise QuadformerError("data.batch_size and train.epochs must be >= 1")
    if not cfg.optim.lr > 0:  # NaN too
        raise QuadformerError(f"optim.lr={cfg.optim.lr} must be > 0")
    from .objectives import KINDS, SSL_METHODS

    if cfg.objective.kind not in KINDS:
        raise QuadformerError(f"objective.kind={cfg.objective.kind!r}; use one of {', '.join(KINDS)}")
    if cfg.objective.ssl_method not in SSL_METHODS:
        raise QuadformerError(f"objective.ssl_method={cfg.objective.ssl_method!r}; use one of {', '.join(SSL_METHODS)}")
    if cfg.objective.kind == "kd" and not cfg.objective.teacher:  # the one teacher check
        raise QuadformerError(f"objective.kind=kd distils from a teacher: set objective.teacher=<checkpoint of a "
                              f"stronger model trained on {cfg.data.train}> (pretrain: --teacher <checkpoint>)")
    if cfg.train.eval_every_epochs < 1:
        raise QuadformerError(f"train.eval_every_epochs={cfg.train.eval_every_epochs} must be >= 1")
    for key in ("checkpoint_every_steps", "snapshots"):
        if getattr(cfg.train, key) < 0:
            raise QuadformerError(f"train.{key}={getattr(cfg.train, key)} must be >= 0 (0: off)")
    if cfg.data.shift < 0:
        raise QuadformerError(f"data.shift={cfg.data.shift} must be >= 0 (pixels; 0: off)")
    if not 0 <= cfg.train.ema_decay < 1:
        raise QuadformerError(f"train.ema_decay={cfg.train.ema_decay} must be in [0, 1)")
