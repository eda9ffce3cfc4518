"""Pixel-blur scorer (docs/design/mixed_resolution.md §7): how much detail a patch would lose if it stayed coarse."""

from __future__ import annotations

import torch
from torch import Tensor

from ..geometry import QuadGeometry
from ..resample import downsample
from ..validation import is_tracing
from ._checks import check_images
from .base import PatchScorer
from .blur import blur, blur_into


class PixelBlurScorer(PatchScorer):
    """``importance = sqrt(mse * p_s)`` with ``mse`` the per-patch mean (over channels and the
    ``p_s x p_s`` pixels) of ``(blur_s - x)^2``.

    The factor ``p_s`` deliberately favours big patches. All math is float32 whatever the
    input dtype, so fp16/bf16 images give the same ranking as float32 ones. No parameters.

    Its down-sampled images are the ``resample="reference"`` pyramid of the token pixels:
    given ``pyramid={}`` (a per-call dict, filled for float32 CPU images in eager mode) it
    leaves them there (scale -> ``[B, C, H/2^s, W/2^s]``), so the gather does not recompute them.
    """

    shares_pyramid = True

    def __init__(self, chunk_elements: int = 1 << 19) -> None:
        super().__init__()
        self.chunk_elements = chunk_elements  # images per chunk ~ chunk_elements / (C*H*W)

    def score(self, images: Tensor, geometry: QuadGeometry, pyramid: dict[int, Tensor] | None = None,
              **inputs) -> list[Tensor]:
        check_images(images, geometry)
        b = images.shape[0]
        if is_tracing() or images.device.type != "cpu" or b == 0:
            return self._score_once(images.float(), geometry)
        # On CPU, chunks of a few images keep the full-resolution temporaries in cache and
        # reuse them (one workspace per call, no allocation per chunk); GPUs want one pass.
        chunk = min(b, max(1, self.chunk_elements // max(1, images[0].numel())))
        keep = pyramid is not None and images.dtype == torch.float32
        if keep:
            for s in range(1, geometry.num_scales):
                f = 1 << s
                pyramid[s] = images.new_empty(b, images.shape[1], geometry.height // f, geometry.width // f)
        c, h, w = images.shape[1:]
        work_u = images.new_empty(chunk, c, h, w, dtype=torch.float32)
        work = images.new_empty(chunk * c * (h // 2 + 2) * (w + w // 2 + 2), dtype=torch.float32)
        parts = []
        for i in range(0, b, chunk):
            x = images[i:i + chunk].float()
            k = x.shape[0]
            maps = []
            for s in range(1, geometry.num_scales):
                f, p = 1 << s, geometry.patch_size(s)
                small = downsample(x, f, out=pyramid[s][i:i + k]) if keep else None
                err = blur_into(x, f, work_u[:k], work, small).sub_(x).square_()  # (blur_s - x)^2
                maps.append(self._patch_score(err, p))
            parts.append(maps)
        return [torch.cat(m) for m in zip(*parts)] if len(parts) > 1 else parts[0]

    @staticmethod
    def _patch_score(err: Tensor, p: int) -> Tensor:
        b, c, h, w = err.shape
        # mean over channels and the p x p pixels (a view: cheaper than avg_pool2d)
        mse = err.view(b, c, h // p, p, w // p, p).mean(dim=(1, 3, 5))
        return (mse * p).sqrt()

    def _score_once(self, x: Tensor, geometry: QuadGeometry) -> list[Tensor]:
        """One pass over the batch: traced graphs and GPUs."""
        return [self._patch_score((blur(x, s) - x).square(), geometry.patch_size(s))
                for s in range(1, geometry.num_scales)]

    def gmacs(self, geometry: QuadGeometry, channels: int = 3) -> float:
        """A small honest estimate, not a network's MACs: per scale ``s`` about
        ``4*C*H*W/4^s`` (bilinear down) ``+ 4*C*H*W`` (bilinear up) ``+ 2*C*H*W`` (squared
        difference, channel mean and pooling) operations, i.e. ~0.0026 G at 256x256 with L=3,
        negligible next to one backbone pass."""
        chw = channels * geometry.height * geometry.width
        ops = sum(chw * (4 / 4**s + 6) for s in range(1, geometry.num_scales))
        return ops / 1e9
