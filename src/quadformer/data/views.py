"""Multi-view data for self-supervised objectives: each item becomes a list of augmented
views made by a lightly transform (PIL in, tensors out)."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils.data import Dataset

from ..utils.images import denormalize


class ViewsDataset(Dataset):
    """Wraps a dataset of normalised ``(image, target)`` items; yields ``(views, target)``.

    Images go back to 8-bit PIL (the form lightly's transforms expect), so the views of a
    built-in, ImageFolder or CIFAR item are made the same way. Randomness comes from the
    global torch / Python RNGs, which the engine seeds per (seed, epoch, index)."""

    def __init__(self, dataset: Dataset, transform: Callable[[Any], list[torch.Tensor]]) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int):
        from torchvision.transforms.functional import to_pil_image

        image, target = self.dataset[index]
        if isinstance(image, torch.Tensor):
            if image.dtype != torch.uint8:
                image = (denormalize(image).clamp(0, 1) * 255).round().to(torch.uint8)
            image = to_pil_image(image)
        return list(self.transform(image)), target

    def __getattr__(self, name: str):
        if name in ("dataset", "transform"):
            raise AttributeError(name)
        return getattr(self.dataset, name)
