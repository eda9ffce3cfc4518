"""Multiply-accumulate counting with forward hooks, for honest scorer cost figures."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def count_macs(module: nn.Module, height: int, width: int, channels: int = 3) -> int:
    """MACs of one forward pass of ``module`` on a single ``channels x height x width`` image.

    Counts ``nn.Conv2d`` (output elements x input channels per group x kernel area) and
    ``nn.Linear`` (output elements x input features); norms, activations, pooling and
    channel shuffles are ignored, as is usual for published MAC figures."""
    total = 0

    def conv_hook(m: nn.Conv2d, inp: tuple[Tensor, ...], out: Tensor) -> None:
        nonlocal total
        kh, kw = m.kernel_size
        total += out.numel() * (m.in_channels // m.groups) * kh * kw

    def linear_hook(m: nn.Linear, inp: tuple[Tensor, ...], out: Tensor) -> None:
        nonlocal total
        total += out.numel() * m.in_features

    handles = []
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    device, dtype = module_device_dtype(module)
    was_training = module.training
    module.eval()  # never update norm statistics while counting
    try:
        with torch.no_grad():
            module(torch.zeros(1, channels, height, width, device=device, dtype=dtype))
    finally:
        module.train(was_training)
        for h in handles:
            h.remove()
    return total


def module_device_dtype(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and floating dtype of a module's first floating tensor (CPU/float32 if none)."""
    for t in list(module.parameters()) + list(module.buffers()):
        if t.is_floating_point():
            return t.device, t.dtype
    return torch.device("cpu"), torch.float32
