"""Distilling a teacher's saliency into a label-free scorer (``train-scorer --kind distilled``).

1. A full-resolution teacher (default: timm's ``resnet10t``) is trained with the normal
   engine, or given as a finished run/checkpoint. By default it is first trained on the
   built-in ``glyphs`` task (3 epochs, 2000 images) and then fine-tuned on the user's data
   (4 epochs): from scratch a small CNN stays at chance on a few thousand natural photos, and
   a teacher at chance has no saliency to give (``docs/scorers.md``).
2. For every training image, the teacher's saliency of the *true* class on the ``p_min``
   grid: Grad-CAM (Selvaraju et al., 2017) at the deepest stage no coarser than ``p_min``,
   or the input gradient ``|d logit_y / d x|`` (Simonyan et al., 2014) pooled per cell; each
   map divided by its maximum.
3. A small :class:`~quadformer.tokenize.scorers.SaliencyNet` regresses those maps (binary
   cross-entropy on the soft targets plus a listwise term, horizontal flips), and is written as a weights file
   that ``scorer="distilled", scorer_kwargs={"weights": path}`` loads. Labels are needed only
   here; the scorer uses none.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ..models.loading import load_model
from ..tokenize import legal_budgets
from ..tokenize.scorers import SaliencyNet, grad_cam, save_saliency_net
from ..utils.errors import QuadformerError
from .config import load_config
from .engine import build_dataset, train

log = logging.getLogger(__name__)
METHODS = ("gradcam", "inputgrad")
LOSSES = ("bce", "bce+list")


def cam_layer(model: nn.Module, p_min: int) -> tuple[nn.Module, Callable[[Tensor], Tensor] | None]:
    """Where to take Grad-CAM: a ViT's last block (tokens reshaped to its patch grid, prefix
    tokens dropped), else the deepest timm feature stage whose stride is at most ``p_min``."""
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, nn.Sequential) and len(blocks) and hasattr(model, "num_prefix_tokens"):
        grid = getattr(model, "grid", None) or tuple(model.patch_embed.grid_size)
        prefix = int(model.num_prefix_tokens)

        def tokens_to_map(t: Tensor) -> Tensor:
            return t[:, prefix:].transpose(1, 2).reshape(t.shape[0], t.shape[-1], *grid)

        return blocks[-1], tokens_to_map
    info = getattr(model, "feature_info", None)
    if not info:
        raise QuadformerError(f"teacher {type(model).__name__} has no timm feature_info; use --saliency inputgrad")
    cands = [f for f in info if f["reduction"] <= p_min]
    if not cands:
        raise QuadformerError(f"no stage of the teacher has stride <= p_min={p_min}; use --saliency inputgrad")
    return model.get_submodule(cands[-1]["module"]), None


def input_gradient(model: nn.Module, images: Tensor, labels: Tensor) -> Tensor:
    """``|d logit_y / d x|`` summed over channels, ``[B, H, W]`` (the model's mode is kept)."""
    with torch.enable_grad():
        x = images.detach().clone().requires_grad_(True)
        logits = model(x)
        (g,) = torch.autograd.grad(logits.gather(1, labels.view(-1, 1).long()).sum(), x)
    return g.abs().sum(1)


def teacher_maps(model: nn.Module, images: Tensor, labels: Tensor, grid: tuple[int, int], method: str,
                 layer: tuple[nn.Module, Callable[[Tensor], Tensor] | None] | None) -> Tensor:
    """Teacher saliency of the true class on ``grid``, each map scaled to max 1, ``[B, gh, gw]``."""
    if method == "gradcam":
        m = grad_cam(model, layer[0], images, labels, layer[1])
    else:
        model.eval()
        m = input_gradient(model, images, labels)
    m = m.unsqueeze(1).float()
    gh, gw = grid
    if m.shape[-2] % gh == 0 and m.shape[-1] % gw == 0 and m.shape[-2] >= gh:
        m = F.avg_pool2d(m, (m.shape[-2] // gh, m.shape[-1] // gw))
    else:
        m = F.interpolate(m, size=grid, mode="bilinear", align_corners=False)
    m = m.squeeze(1).clamp_min(0)
    peak = m.amax(dim=(1, 2), keepdim=True)
    return torch.where(peak > 0, m / peak.clamp_min(1e-12), m)


def saliency_targets(model: nn.Module, dataset: Dataset, grid: tuple[int, int], method: str = "gradcam",
                     p_min: int = 8, batch_size: int = 64) -> tuple[Tensor, Tensor]:
    """(images ``[N, 3, H, W]``, teacher maps ``[N, gh, gw]``) for a single-label data set."""
    if method not in METHODS:
        raise QuadformerError(f"--saliency {method!r} is not one of {METHODS}")
    layer = cam_layer(model, p_min) if method == "gradcam" else None
    xs, ms = [], []
    for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        if not isinstance(y, Tensor) or y.dim() != 1:
            raise QuadformerError("distillation needs a single-label data set (one class per image)")
        xs.append(x)
        ms.append(teacher_maps(model, x, y, grid, method, layer))
    return torch.cat(xs), torch.cat(ms)


def train_student(images: Tensor, targets: Tensor, stride: int, widths=(8, 16, 32), epochs: int = 30,
                  lr: float = 3e-3, batch_size: int = 64, seed: int = 0, context: int = 0,
                  loss: str = "bce") -> tuple[SaliencyNet, float]:
    """Fit a :class:`SaliencyNet` to ``targets`` (BCE on soft targets, random horizontal
    flips of image and map together). ``loss="bce+list"`` adds a listwise term, the
    cross-entropy between the softmax over a map's cells and the target map as a
    distribution (divided by log(cells)): the selection only uses the cells' order.
    Returns the net (eval mode) and the final loss."""
    if loss not in LOSSES:
        raise QuadformerError(f"--student-loss {loss!r} is not one of {LOSSES}")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = SaliencyNet(widths, stride, context=context)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    n = images.shape[0]
    steps = max(1, epochs * math.ceil(n / batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    net.train()
    loss_avg = float("nan")
    for ep in range(epochs):
        perm = torch.randperm(n, generator=gen)
        total, count = 0.0, 0
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            x, t = images[idx], targets[idx]
            flip = torch.rand(len(idx), generator=gen) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
            t = torch.where(flip.view(-1, 1, 1), t.flip(-1), t)
            logits = net(x)
            if logits.shape[-2:] != t.shape[-2:]:
                raise QuadformerError(f"student map {tuple(logits.shape[-2:])} does not match the target grid "
                                      f"{tuple(t.shape[-2:])}; set the student stride to p_min")
            value = F.binary_cross_entropy_with_logits(logits, t)
            if loss == "bce+list":
                q = t.flatten(1)
                q = q / q.sum(1, keepdim=True).clamp_min(1e-12)
                ce = -(q * F.log_softmax(logits.flatten(1), 1)).sum(1).mean()
                value = value + ce / math.log(q.shape[1])
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
            sched.step()
            total += value.item() * len(idx)
            count += len(idx)
        loss_avg = total / max(1, count)
        log.info("student epoch %d/%d: loss %.4f", ep + 1, epochs, loss_avg)
    return net.eval(), loss_avg


#: fine-tuning a pretrained teacher: a smaller step, a short warm-up, no augmentation (the
#: settings of the measured teacher in docs/scorers.md)
FINETUNE = ["optim.lr=1e-3", "optim.warmup_epochs=0.3", "data.augment=false"]


def train_teacher(data: str, out: Path, model: str = "resnet10t", epochs: int = 4, train_size: int | None = 3000,
                  image_size: int = 128, seed: int = 0, overrides: list[str] | None = None,
                  cache_dir: str | None = None) -> Path:
    """Train the teacher with the normal engine (resumable); returns its run folder."""
    ov = [f"model.name={model}", "model.num_patches=null", f"data.train={data}", f"data.image_size={image_size}",
          f"train.epochs={epochs}", f"seed={seed}", f"output.dir={out}", "optim.lr=2e-3", "optim.warmup_epochs=0.5",
          "optim.weight_decay=0.05", "data.augment=true"]
    if train_size is not None:
        ov.append(f"data.train_size={train_size}")
    if cache_dir:
        ov.append(f"data.cache_dir={cache_dir}")
    cfg = load_config(None, ov + list(overrides or []))
    res = train(cfg, resume="auto")
    if res.get("interrupted"):
        raise QuadformerError(f"teacher training interrupted; rerun to resume from {out}")
    return out


def distill(data: str, out: str | Path, *, teacher: str | None = None, teacher_model: str = "resnet10t",
            teacher_epochs: int = 4, pretrain: str | None = "builtin:glyphs", pretrain_epochs: int = 3,
            pretrain_size: int = 2000, train_size: int | None = 3000, image_size: int = 128, p_min: int = 8,
            p_max: int | None = None, method: str = "gradcam", student_epochs: int = 30, widths=(8, 16, 32),
            context: int = 0, student_loss: str = "bce+list", seed: int = 0,
            teacher_overrides: list[str] | None = None,
            cache_dir: str | None = None) -> dict[str, Any]:
    """The whole recipe; writes ``<out>/scorer.safetensors`` and returns a summary.

    ``pretrain``: the data the teacher is trained on before ``data`` (``None``: from scratch);
    ``p_max``: the coarsest patch of the Quadformers that will use the scorer (default
    ``4 * p_min``), checked against ``image_size`` before anything is trained."""
    out = Path(out)
    t0 = time.perf_counter()
    if method not in METHODS:
        raise QuadformerError(f"--saliency {method!r} is not one of {METHODS}")
    if student_loss not in LOSSES:
        raise QuadformerError(f"--student-loss {student_loss!r} is not one of {LOSSES}")
    if p_min < 2 or p_min & (p_min - 1):
        raise QuadformerError(f"--p-min {p_min} is illegal: the scorer's map stride must be a power of two >= 2 "
                              f"(e.g. 8)")
    legal_budgets(image_size, image_size, p_min, p_max or 4 * p_min)  # one line for images smaller than p_max
    common = dict(image_size=image_size, seed=0, cache_dir=cache_dir)
    train_set = build_dataset(data, "train", train_size, False, **common)
    num_classes = int(getattr(train_set, "num_classes", 0))
    if getattr(train_set, "multilabel", False):
        raise QuadformerError(f"{data} is multi-label; distillation needs a single-label task")
    pretrained_on = None
    if teacher is None:
        pretrained_on = pretrain
        ov = list(teacher_overrides or [])
        if pretrain:
            first = train_teacher(pretrain, out / "teacher_pretrain", teacher_model, pretrain_epochs, pretrain_size,
                                  image_size, seed, ov, cache_dir)
            ov = FINETUNE + [f"model.init_checkpoint={first / 'last.pt'}"] + ov
        teacher = str(train_teacher(data, out / "teacher", teacher_model, teacher_epochs, train_size, image_size,
                                    seed, ov, cache_dir))
    loaded = load_model(teacher)
    if loaded.num_classes != num_classes:
        raise QuadformerError(f"teacher {teacher} predicts {loaded.num_classes} classes but {data} has "
                              f"{num_classes}; train the teacher on the same data (omit --teacher)")
    model = loaded.model.eval()
    grid = (image_size // p_min, image_size // p_min)
    images, targets = saliency_targets(model, train_set, grid, method, p_min)
    t1 = time.perf_counter()
    net, loss = train_student(images, targets, p_min, widths, student_epochs, seed=seed, context=context,
                              loss=student_loss)
    path = out / "scorer.safetensors"
    summary = {"data": data, "teacher": str(teacher), "teacher_pretrain": pretrained_on, "saliency": method,
               "student_loss_kind": student_loss, "train_images": int(images.shape[0]),
               "student_loss": round(loss, 5), "image_size": image_size, "p_min": p_min,
               "targets_seconds": round(t1 - t0, 1), "student_seconds": round(time.perf_counter() - t1, 1)}
    save_saliency_net(net, path, extra=summary)
    summary["weights"] = str(path)
    return summary


def export_learned(run: str | Path, path: str | Path) -> Path:
    """Write the end-to-end scorer of a trained Quadformer (``scorer=learned``) as a
    saliency-net file, loadable as ``scorer="distilled"`` (frozen) or as the start of
    another end-to-end run."""
    from ..tokenize.scorers import LearnedScorer

    loaded = load_model(run)
    scorer = getattr(loaded.model, "scorer", None)
    if not isinstance(scorer, LearnedScorer):
        raise QuadformerError(f"{run} is not a Quadformer with the end-to-end scorer (model.kwargs={{scorer: learned}})")
    return save_saliency_net(scorer.merged_net(), path, extra={"source": str(run), "kind": "learned"})
