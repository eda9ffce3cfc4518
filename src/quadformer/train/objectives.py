"""Training objectives: what a step's loss is, for every pretraining scheme.

One engine trains them all; an objective is an ``nn.Module`` holding whatever it trains
besides the network (a projector, a DINO head and its EMA teacher) so checkpoints and DDP
see it. ``forward(model, x, y)`` returns the loss; ``after_step`` runs after the optimiser
step (EMA teachers). Losses come from lightly (NT-Xent, DINO), KD is USI-style
CE + alpha * T^2 * KL(p_teacher || p_student).

Kinds (``objective.kind``):
  supervised  CE (or BCE for multi-label) on the labels
  kd          supervised + knowledge distillation from a frozen teacher checkpoint
  ssl         self-supervised only (SimCLR or DINO, ``objective.ssl_method``); labels unused
  joint       supervised CE on the first view + lambda * SSL loss, in one stage
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..models.inference import pre_logits
from ..utils.errors import QuadformerError

KINDS = ("supervised", "kd", "ssl", "joint")
SSL_METHODS = ("simclr", "dino")


def features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The transfer representation: pooled features before the classifier."""
    return pre_logits(model, x)


def supervised_loss(logits: torch.Tensor, target: torch.Tensor, multilabel: bool, smoothing: float) -> torch.Tensor:
    if multilabel:
        return F.binary_cross_entropy_with_logits(logits.float(), target.float())
    return F.cross_entropy(logits.float(), target, label_smoothing=smoothing)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """T^2 * KL(p_teacher || p_student), batch mean (Hinton et al.; USI uses T = 1)."""
    t = temperature
    log_p_s = F.log_softmax(student_logits.float() / t, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.float() / t, dim=-1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * t * t


class Objective(nn.Module):
    """Base: plain supervised training."""

    uses_views = False  # the data yields a list of augmented views instead of one image
    has_head_metric = True  # the classifier head is trained (val top-1 is meaningful)

    def __init__(self, multilabel: bool = False, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.multilabel, self.label_smoothing = multilabel, label_smoothing

    def forward(self, model: nn.Module, x: Any, y: torch.Tensor, epoch: int) -> torch.Tensor:
        return supervised_loss(model(x), y, self.multilabel, self.label_smoothing)

    @torch.no_grad()
    def after_step(self, model: nn.Module, step: int, total_steps: int) -> None:
        pass


class KDObjective(Objective):
    """CE + alpha * KD to a frozen teacher (kept out of the state dict: it has its own file)."""

    def __init__(self, teacher: nn.Module, alpha: float = 5.0, temperature: float = 1.0, **kw: Any) -> None:
        super().__init__(**kw)
        if self.multilabel:
            raise QuadformerError("objective.kind=kd is for single-label data (KL over a softmax); use supervised")
        self.alpha, self.temperature = alpha, temperature
        teacher.eval().requires_grad_(False)
        object.__setattr__(self, "_teacher", teacher)  # not a submodule: not saved, not in DDP

    def _apply(self, fn, recurse=True):
        object.__setattr__(self, "_teacher", self._teacher._apply(fn))
        return super()._apply(fn, recurse)

    def forward(self, model: nn.Module, x: Any, y: torch.Tensor, epoch: int) -> torch.Tensor:
        logits = model(x)
        with torch.no_grad():
            t_logits = self._teacher(x)
        if t_logits.shape[-1] != logits.shape[-1]:
            raise QuadformerError(f"teacher predicts {t_logits.shape[-1]} classes, the student {logits.shape[-1]}; "
                                  f"train the teacher on the same task")
        ce = supervised_loss(logits, y, False, self.label_smoothing)
        return ce + self.alpha * kd_loss(logits, t_logits, self.temperature)


class SimCLRObjective(Objective):
    """SimCLR: two views, MLP projector, NT-Xent (lightly). The projector has no BatchNorm so
    a DDP run computes exactly what one process does (negatives are gathered)."""

    uses_views = True
    has_head_metric = False

    def __init__(self, num_features: int, hidden_dim: int = 512, out_dim: int = 128, temperature: float = 0.2,
                 distributed: bool = False, **kw: Any) -> None:
        super().__init__(**kw)
        from lightly.loss import NTXentLoss
        from lightly.models.modules import SimCLRProjectionHead

        self.projector = SimCLRProjectionHead(num_features, hidden_dim, out_dim, batch_norm=False)
        self.criterion = NTXentLoss(temperature=temperature, gather_distributed=distributed)

    def ssl_loss(self, model: nn.Module, views: list[torch.Tensor], epoch: int) -> torch.Tensor:
        b = views[0].shape[0]
        z = self.projector(features(model, torch.cat(views[:2])))
        return self.criterion(z[:b].float(), z[b:].float())

    def forward(self, model: nn.Module, x: Any, y: torch.Tensor, epoch: int) -> torch.Tensor:
        return self.ssl_loss(model, x, epoch)


class DINOObjective(Objective):
    """DINO self-distillation (lightly's DINOLoss and head): the student sees every view, an
    EMA teacher (momentum cosine-scheduled to 1) sees the global views; teacher outputs are
    centred and sharpened."""

    uses_views = True
    has_head_metric = False

    def __init__(self, model: nn.Module, num_features: int, out_dim: int = 1024, hidden_dim: int = 512,
                 bottleneck_dim: int = 128, momentum: float = 0.996, teacher_temp: float = 0.07,
                 warmup_teacher_temp: float = 0.04, warmup_epochs: int = 5, student_temp: float = 0.1,
                 num_global: int = 2, **kw: Any) -> None:
        super().__init__(**kw)
        from lightly.loss import DINOLoss
        from lightly.models.modules import DINOProjectionHead

        self.head = DINOProjectionHead(num_features, hidden_dim, bottleneck_dim, out_dim, freeze_last_layer=1)
        self.teacher_backbone = copy.deepcopy(model).requires_grad_(False)
        self.teacher_head = DINOProjectionHead(num_features, hidden_dim, bottleneck_dim, out_dim)  # weight-norm:
        self.teacher_head.load_state_dict(self.head.state_dict())  # cannot be deep-copied
        self.teacher_head.requires_grad_(False)
        self.criterion = DINOLoss(output_dim=out_dim, warmup_teacher_temp=warmup_teacher_temp,
                                  teacher_temp=teacher_temp, warmup_teacher_temp_epochs=warmup_epochs,
                                  student_temp=student_temp)
        self.momentum, self.num_global = momentum, num_global

    def ssl_loss(self, model: nn.Module, views: list[torch.Tensor], epoch: int) -> torch.Tensor:
        g = views[: self.num_global]
        with torch.no_grad():
            self.teacher_backbone.eval()
            t_out = [self.teacher_head(features(self.teacher_backbone, v)).float() for v in g]
        s_out = [self.head(features(model, v)).float() for v in views]
        return self.criterion(t_out, s_out, epoch=epoch)

    def forward(self, model: nn.Module, x: Any, y: torch.Tensor, epoch: int) -> torch.Tensor:
        return self.ssl_loss(model, x, epoch)

    @torch.no_grad()
    def after_step(self, model: nn.Module, step: int, total_steps: int) -> None:
        from lightly.models.utils import update_momentum
        from lightly.utils.scheduler import cosine_schedule

        m = cosine_schedule(step, max(1, total_steps), self.momentum, 1.0)
        update_momentum(model, self.teacher_backbone, m)
        update_momentum(self.head, self.teacher_head, m)


class JointObjective(Objective):
    """Single stage: supervised CE on the first view + lambda * an SSL loss on the views."""

    uses_views = True

    def __init__(self, ssl: Objective, lam: float = 1.0, **kw: Any) -> None:
        super().__init__(**kw)
        self.ssl, self.lam = ssl, lam

    def forward(self, model: nn.Module, x: Any, y: torch.Tensor, epoch: int) -> torch.Tensor:
        ce = supervised_loss(model(x[0]), y, self.multilabel, self.label_smoothing)
        return ce + self.lam * self.ssl.ssl_loss(model, x, epoch)

    @torch.no_grad()
    def after_step(self, model: nn.Module, step: int, total_steps: int) -> None:
        self.ssl.after_step(model, step, total_steps)


class TrainStep(nn.Module):
    """The network plus its objective as one module: what DDP wraps and checkpoints hold."""

    def __init__(self, model: nn.Module, objective: Objective) -> None:
        super().__init__()
        self.model, self.objective = model, objective

    def forward(self, x: Any, y: torch.Tensor, epoch: int) -> torch.Tensor:
        return self.objective(self.model, x, y, epoch)

    def no_weight_decay(self) -> set[str]:
        """The network's own no-decay names (pos_embed, cls_token), prefixed for timm's optimiser."""
        own = self.model.no_weight_decay() if hasattr(self.model, "no_weight_decay") else set()
        return {f"model.{n}" for n in own}


def build_objective(ocfg: Any, model: nn.Module, multilabel: bool, label_smoothing: float,
                    distributed: bool, device: torch.device) -> Objective:
    """The objective ``ocfg`` (an ObjectiveConfig) names, for ``model``."""
    kind = ocfg.kind
    common = dict(multilabel=multilabel, label_smoothing=label_smoothing)
    if kind == "supervised":
        return Objective(**common)
    if kind == "kd":  # config.validate has checked that a teacher is named
        from ..models.loading import load_model

        teacher = load_model(ocfg.teacher, device=device).model
        t_classes, s_classes = getattr(teacher, "num_classes", None), getattr(model, "num_classes", None)
        if t_classes is not None and s_classes is not None and t_classes != s_classes:
            raise QuadformerError(f"teacher {ocfg.teacher} predicts {t_classes} classes, this task has {s_classes}; "
                                  f"distil from a teacher trained on the same task")
        return KDObjective(teacher, ocfg.kd_alpha, ocfg.kd_temperature, **common)
    if kind not in ("ssl", "joint"):
        raise QuadformerError(f"objective.kind={kind!r}; use one of {', '.join(KINDS)}")
    dim = int(getattr(model, "num_features", 0) or 0)
    if dim <= 0:
        raise QuadformerError(f"{type(model).__name__} does not report num_features; cannot attach an SSL head")
    if ocfg.ssl_method == "simclr":
        ssl: Objective = SimCLRObjective(dim, ocfg.proj_hidden_dim, ocfg.proj_dim, ocfg.temperature, distributed,
                                         **common)
    elif ocfg.ssl_method == "dino":
        ssl = DINOObjective(model, dim, ocfg.dino_out_dim, ocfg.proj_hidden_dim, ocfg.proj_dim, ocfg.dino_momentum,
                            ocfg.dino_teacher_temp, ocfg.dino_warmup_teacher_temp, ocfg.dino_warmup_epochs,
                            **common)
    else:
        raise QuadformerError(f"objective.ssl_method={ocfg.ssl_method!r}; use one of {', '.join(SSL_METHODS)}")
    if kind == "ssl":
        return ssl
    return JointObjective(ssl, ocfg.joint_lambda, **common)


def views_transform(ocfg: Any, image_size: int) -> Any:
    """lightly's multi-view augmentation for the SSL method (PIL image -> list of tensors).
    Local DINO crops default to the global size so fixed-geometry models (every ViT here,
    the Quadformer's quadtree) accept them."""
    if ocfg.ssl_method == "dino":
        from lightly.transforms import DINOTransform

        local = ocfg.local_crop_size or image_size
        return DINOTransform(global_crop_size=image_size, local_crop_size=local, n_local_views=ocfg.local_views,
                             hf_prob=ocfg.flip_prob, gaussian_blur=(ocfg.blur_prob, ocfg.blur_prob * 0.2,
                                                                    ocfg.blur_prob * 0.5))
    from lightly.transforms import SimCLRTransform

    return SimCLRTransform(input_size=image_size, min_scale=ocfg.min_scale, gaussian_blur=ocfg.blur_prob,
                           hf_prob=ocfg.flip_prob, cj_strength=ocfg.color_jitter)
