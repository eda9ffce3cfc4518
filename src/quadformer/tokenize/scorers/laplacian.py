"""Laplacian-variance scorer: APT's other cheap baseline (Choudhury et al., 2025): the
variance of the grey image's 3x3 Laplacian over a patch measures its edge energy.

``importance = Var_patch(lap(grey))`` with ``lap`` the 4-neighbour kernel (replicate
padding), computed as ``E[l^2] - E[l]^2`` by average pooling once at scale 1 and 2x2 per
coarser scale. No parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..geometry import QuadGeometry
from ._checks import check_images
from .base import PatchScorer
from .entropy import IMAGENET_MEAN, IMAGENET_STD, grey01


class LaplacianScorer(PatchScorer):
    """Variance of the Laplacian of the grey image per patch (``sqrt=True``: its standard
    deviation, same ranking within a scale)."""

    def __init__(self, input_mean: Sequence[float] = IMAGENET_MEAN, input_std: Sequence[float] = IMAGENET_STD,
                 sqrt: bool = False) -> None:
        super().__init__()
        self.input_mean, self.input_std = tuple(input_mean), tuple(input_std)
        self.sqrt = bool(sqrt)
        k = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)
        self.register_buffer("kernel", k, persistent=False)

    def score(self, images: Tensor, geometry: QuadGeometry, **inputs) -> list[Tensor]:
        check_images(images, geometry)
        if geometry.num_scales == 1:
            return []
        g = grey01(images, self.input_mean, self.input_std)
        lap = F.conv2d(F.pad(g, (1, 1, 1, 1), mode="replicate"), self.kernel.to(g.device))
        both = torch.cat([lap, lap * lap], 1)
        pooled = F.avg_pool2d(both, geometry.patch_size(1))
        maps = []
        for s in range(1, geometry.num_scales):
            if s > 1:
                pooled = F.avg_pool2d(pooled, 2)
            var = (pooled[:, 1] - pooled[:, 0].square()).clamp_min(0.0)
            maps.append(var.sqrt() if self.sqrt else var)
        return maps

    def gmacs(self, geometry: QuadGeometry, channels: int = 3) -> float:
        """About ``C + 1`` operations per pixel for the grey image, 5 for the kernel and 3 for
        the moments: ~0.00015 G at 128x128."""
        return geometry.height * geometry.width * (channels + 9) / 1e9
