"""Grad-CAM oracle scorer (docs/design/mixed_resolution.md §7): label-aware saliency of a trained classifier.

It needs the true labels, so it is for analysis only (the paper's "oracle Quadformer", an
upper bound on scorer quality). The CAM has many exact zeros, so the tie rule matters.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..geometry import QuadGeometry
from .base import PatchScorer
from .precomputed import maps_to_grids


def _first_tensor(out: object) -> Tensor:
    if isinstance(out, Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    raise TypeError(f"target layer output must be a tensor (or a tuple starting with one), got {type(out).__name__}")


def grad_cam(
    model: nn.Module,
    target_layer: nn.Module,
    images: Tensor,
    labels: Tensor,
    reshape: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """Grad-CAM of ``labels`` at ``target_layer``: ``relu(sum_k mean(dy/dA_k) A_k)`` divided
    by its per-image maximum, so ``[B, h, w]`` in ``[0, 1]`` (all-zero maps stay zero).

    ``model(images)`` must return logits ``[B, classes]``. ``reshape`` maps the layer's
    output to ``[B, D, h, w]`` (e.g. ViT tokens ``[B, T, D]`` without prefix tokens). The
    gradient is taken with ``torch.autograd.grad`` w.r.t. the captured activation only, so
    no ``.grad`` of the model's parameters is touched; the model runs in eval mode and its
    previous mode is restored.
    """
    captured: list[Tensor] = []

    def hook(module: nn.Module, inp: object, out: object) -> None:
        captured.append(_first_tensor(out))

    handle = target_layer.register_forward_hook(hook)
    was_training = model.training
    model.eval()
    try:
        # also works when called under no_grad or inference_mode (as scorers are)
        with torch.inference_mode(False), torch.enable_grad():
            x = images.detach().clone().requires_grad_(True)  # a graph even if params are frozen
            logits = model(x)
            if logits.dim() != 2 or logits.shape[0] != images.shape[0]:
                raise ValueError(f"model must return logits [B, classes], got {tuple(logits.shape)}")
            if not captured:
                raise RuntimeError("target_layer was not called during the forward pass")
            act = captured[-1]
            labels = labels.to(logits.device).long().view(-1, 1)
            target = logits.gather(1, labels).sum()  # images are independent in eval mode
            (grad,) = torch.autograd.grad(target, act)
    finally:
        handle.remove()
        model.train(was_training)
    act, grad = act.detach(), grad.detach()
    if reshape is not None:
        act, grad = reshape(act), reshape(grad)
    if act.dim() != 4:
        raise ValueError(f"activation must be [B, D, h, w] (pass reshape= for tokens), got {tuple(act.shape)}")
    weights = grad.float().mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * act.float()).sum(dim=1))
    peak = cam.amax(dim=(1, 2), keepdim=True)
    return torch.where(peak > 0, cam / peak.clamp_min(torch.finfo(cam.dtype).tiny), cam)


class GradCamOracleScorer(PatchScorer):
    """Grad-CAM of the true class (``labels=`` at call time), bilinearly resampled to the
    ``p_min`` grid ``(H/p_min, W/p_min)`` and then scored like :class:`PrecomputedScorer`.

    ``model`` is registered as a submodule (it follows ``.to()``); its parameters get no
    gradient from the scorer. Analysis only."""

    def __init__(
        self, model: nn.Module, target_layer: nn.Module, reshape: Callable[[Tensor], Tensor] | None = None
    ) -> None:
        super().__init__()
        if not any(m is target_layer for m in model.modules()):
            raise ValueError("target_layer must be a submodule of model")
        self.model = model
        self._target = (target_layer,)  # not a second submodule: no duplicate state-dict keys
        self.reshape = reshape

    @property
    def target_layer(self) -> nn.Module:
        return self._target[0]

    def score(self, images: Tensor, geometry: QuadGeometry, labels: Tensor | None = None, **inputs) -> list[Tensor]:
        if labels is None:
            raise ValueError("GradCamOracleScorer needs the true labels: scorer(images, geometry, labels=labels)")
        cam = grad_cam(self.model, self.target_layer, images, labels, self.reshape)
        size = (geometry.height // geometry.p_min, geometry.width // geometry.p_min)
        if tuple(cam.shape[-2:]) != size:
            cam = F.interpolate(cam.unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1)
        return maps_to_grids(cam.clamp(0.0, 1.0), geometry, images.shape[0], images.device)
