"""Patch-entropy scorer: APT's cheap saliency (Choudhury et al., "Accelerating Vision
Transformers with Adaptive Patch Sizes", 2025): a patch whose grey levels are spread over many
histogram bins holds detail, a flat one does not.

``importance = H(patch) = -sum_b p_b log2 p_b`` of the patch's grey-level histogram
(``bins`` equal bins over [0, 1] after undoing the input normalisation). The one-hot
histogram is average-pooled once at scale 1 and pooled 2x2 per coarser scale (exact: equal
cells), so all scales cost one pass. No parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..geometry import QuadGeometry
from ._checks import check_images
from .base import PatchScorer

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def grey01(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """``[B, C, H, W]`` normalised images -> ``[B, 1, H, W]`` float32 grey levels in [0, 1]."""
    x = images.float()
    if x.shape[1] == len(mean):
        m = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
        s = torch.tensor(std, device=x.device).view(1, -1, 1, 1)
        x = x * s + m
    return x.mean(dim=1, keepdim=True).clamp_(0.0, 1.0)


class EntropyScorer(PatchScorer):
    """Shannon entropy (bits) of each patch's grey-level histogram.

    Args:
        bins: histogram bins over [0, 1] (APT uses a few tens; 16 is robust to sensor noise).
        input_mean, input_std: the images' normalisation (the ViT's), undone before binning.
    """

    def __init__(self, bins: int = 16, input_mean: Sequence[float] = IMAGENET_MEAN,
                 input_std: Sequence[float] = IMAGENET_STD) -> None:
        super().__init__()
        if bins < 2:
            raise ValueError(f"bins must be >= 2, got {bins}")
        self.bins = int(bins)
        self.input_mean, self.input_std = tuple(input_mean), tuple(input_std)

    def score(self, images: Tensor, geometry: QuadGeometry, **inputs) -> list[Tensor]:
        check_images(images, geometry)
        if geometry.num_scales == 1:
            return []
        g = grey01(images, self.input_mean, self.input_std)
        q = (g * self.bins).long().clamp_(max=self.bins - 1).squeeze(1)  # [B, H, W]
        b, h, w = q.shape
        p = geometry.patch_size(1)
        gh, gw = h // p, w // p
        # histogram of every scale-1 cell with one bincount: key = ((b, cell row, cell col), bin)
        cell = (torch.arange(h, device=q.device) // p).view(h, 1) * gw + (torch.arange(w, device=q.device) // p)
        key = (torch.arange(b, device=q.device).view(b, 1, 1) * (gh * gw) + cell) * self.bins + q
        counts = torch.bincount(key.flatten(), minlength=b * gh * gw * self.bins)
        hist = counts.view(b, gh, gw, self.bins).permute(0, 3, 1, 2).float().div_(p * p)
        maps = []
        for s in range(1, geometry.num_scales):
            if s > 1:
                hist = F.avg_pool2d(hist, 2)
            maps.append(-(hist * torch.log2(hist.clamp_min(1e-12))).sum(dim=1))
        return maps

    def gmacs(self, geometry: QuadGeometry, channels: int = 3) -> float:
        """About ``C + 4`` operations per pixel (grey, binning, counting) plus the entropy of
        every cell's histogram: ~0.0001 G at 128x128."""
        hw = geometry.height * geometry.width
        cells = sum(geometry.grid(s)[0] * geometry.grid(s)[1] for s in range(1, geometry.num_scales))
        return (hw * (channels + 4) + 3 * cells * self.bins) / 1e9

    def extra_repr(self) -> str:
        return f"bins={self.bins}"
