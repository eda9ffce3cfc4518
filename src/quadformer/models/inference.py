"""Running a model over data without gradients: the one pre-logits feature definition and the
one batched inference loop, shared by transfer probes, diversity measurements and studies.

The pre-logits representation is timm's: ``model.forward_head(model.forward_features(x),
pre_logits=True)`` (ViTs: the class token after the final norm, or the model's pooling; CNNs:
the global pool), see the timm docs "Feature Extraction".
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

__all__ = ["has_pre_logits", "forward_pre_logits", "pre_logits", "model_device", "predict"]


def has_pre_logits(model: nn.Module) -> bool:
    """A timm-style model with ``forward_features`` and ``forward_head``."""
    return hasattr(model, "forward_features") and hasattr(model, "forward_head")


def forward_pre_logits(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """``(forward_features(x), pre-logits [B, D])``: the trunk's output and the representation."""
    f = model.forward_features(x)
    z = model.forward_head(f, pre_logits=True)
    return f, z.reshape(z.shape[0], -1)


def pre_logits(model: nn.Module, x: Tensor) -> Tensor:
    """The pre-logits representation ``[B, D]``; a model without timm's split: its output."""
    if has_pre_logits(model):
        return forward_pre_logits(model, x)[1]
    return model(x)


def model_device(model: nn.Module) -> torch.device:
    """Where the model's parameters (else buffers) live; CPU for a model with neither."""
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


@torch.no_grad()
def predict(model: nn.Module, dataset: Dataset, fn: Callable[[nn.Module, Tensor], Tensor] | None = None, *,
            batch_size: int = 256, device: str | torch.device | None = None, progress: bool = False,
            desc: str = "predict") -> tuple[Tensor, list[Any]]:
    """``(outputs [N, ...] float32 on CPU, targets per batch)`` of ``fn(model, x)`` (default:
    ``model(x)``) over ``dataset`` in order, eval mode, no gradient; the model's train/eval
    mode is restored afterwards. Targets are the batches' second items (empty without)."""
    dev = torch.device(device) if device is not None else model_device(model)
    was_training = model.training
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    it: Any = loader
    if progress:
        from tqdm import tqdm

        it = tqdm(loader, desc=desc, leave=False, dynamic_ncols=True)
    outs: list[Tensor] = []
    targets: list[Any] = []
    try:
        for batch in it:
            x = batch[0] if isinstance(batch, (list, tuple)) else batch
            if isinstance(batch, (list, tuple)) and len(batch) > 1:
                targets.append(batch[1])
            y = fn(model, x.to(dev)) if fn is not None else model(x.to(dev))
            outs.append(y.float().cpu())
    finally:
        model.train(was_training)
    return (torch.cat(outs) if outs else torch.zeros(0)), targets
