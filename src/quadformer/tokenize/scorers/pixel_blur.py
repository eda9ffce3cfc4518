"""Pixel-blur scorer (docs/design/mixed_resolution.md §7): how much detail a patch would lose if it stayed coarse."""

from __future__ import annotations

import torch
from torch import Tensor

from ..geometry import QuadGeometry
from ..validation import is_tracing
from ._checks import check_images
from .base import PatchScorer
from .blur import blur


class PixelBlurScorer(PatchScorer):
    """``importance = sqrt(mse * p_s)`` with ``mse`` the per-patch mean (over channels and the
    ``p_s x p_s`` pixels) of ``(blur_s - x)^2``.

    The factor ``p_s`` deliberately favours big patches. All math is float32 whatever the
    input dtype, so fp16/bf16 images give the same ranking as float32 ones. No parameters.
    """

    def __init__(self, chunk_elements: int = 1 << 20) -> None:
        super().__init__()
        self.chunk_elements = chunk_elements  # images per chunk ~ chunk_elements / (C*H*W)

    def score(self, images: Tensor, geometry: QuadGeometry, **inputs) -> list[Tensor]:
        check_images(images, geometry)
        # On CPU, small chunks keep the full-resolution temporaries in cache and reuse
        # allocations (~3x faster than one pass over a large batch); GPUs want one pass.
        b = images.shape[0]
        chunk = max(1, self.chunk_elements // max(1, images[0].numel())) if b else 1
        if is_tracing() or images.device.type != "cpu" or b <= chunk:
            return self._score_chunk(images.float(), geometry)
        parts = [self._score_chunk(c.float(), geometry) for c in images.split(chunk)]
        return [torch.cat(maps) for maps in zip(*parts)]

    @staticmethod
    def _score_chunk(x: Tensor, geometry: QuadGeometry) -> list[Tensor]:
        maps = []
        for s in range(1, geometry.num_scales):
            p = geometry.patch_size(s)
            err = (blur(x, s) - x).square() if is_tracing() else blur(x, s).sub_(x).square_()  # (blur_s - x)^2
            b, c, h, w = err.shape
            # mean over channels and the p x p pixels (a view: cheaper than avg_pool2d)
            mse = err.view(b, c, h // p, p, w // p, p).mean(dim=(1, 3, 5))
            maps.append((mse * p).sqrt())
        return maps

    def gmacs(self, geometry: QuadGeometry, channels: int = 3) -> float:
        """A small honest estimate, not a network's MACs: per scale ``s`` about
        ``4*C*H*W/4^s`` (bilinear down) ``+ 4*C*H*W`` (bilinear up) ``+ 2*C*H*W`` (squared
        difference, channel mean and pooling) operations, i.e. ~0.0026 G at 256x256 with L=3,
        negligible next to one backbone pass."""
        chw = channels * geometry.height * geometry.width
        ops = sum(chw * (4 / 4**s + 6) for s in range(1, geometry.num_scales))
        return ops / 1e9
