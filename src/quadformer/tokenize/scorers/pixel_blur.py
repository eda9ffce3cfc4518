"""Pixel-blur scorer (docs/design/mixed_resolution.md §7): how much detail a patch would lose if it stayed coarse."""

from __future__ import annotations

import torch
from torch import Tensor

from ..geometry import QuadGeometry
from ..resample import downsample
from ..validation import is_tracing
from ..kernels import enabled as cpu_kernels_enabled
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

    def __init__(self, chunk_elements: int | None = None) -> None:
        super().__init__()
        # images per CPU chunk ~ chunk_elements / (C*H*W); None: 2^19 per intra-op thread (up
        # to 8), so that each core's share of the temporaries stays in its cache
        self.chunk_elements = chunk_elements

    def score(self, images: Tensor, geometry: QuadGeometry, pyramid: dict[int, Tensor] | None = None,
              **inputs) -> list[Tensor]:
        check_images(images, geometry)
        b = images.shape[0]
        if is_tracing() or images.device.type != "cpu" or b == 0:
            return self._score_once(images.float(), geometry)
        # On CPU, chunks of a few images keep the full-resolution temporaries in cache and
        # reuse them (one workspace per call, no allocation per chunk); GPUs want one pass.
        if cpu_kernels_enabled():
            return self._score_fused(images, geometry, pyramid)
        c, h, w = images.shape[1:]
        budget = self.chunk_elements or (1 << 19) * min(8, max(1, torch.get_num_threads()))
        chunk = min(b, max(1, budget // max(1, c * h * w)))
        scales = range(1, geometry.num_scales)
        keep = pyramid is not None and images.dtype == torch.float32
        if keep:
            for s in scales:
                pyramid[s] = images.new_empty(b, c, h >> s, w >> s)
        smalls = None if keep else {s: images.new_empty(chunk, c, h >> s, w >> s, dtype=torch.float32) for s in scales}
        err = images.new_empty(chunk, c, h, w, dtype=torch.float32)
        cols = images.new_empty(chunk * c * (h // 2) * w, dtype=torch.float32)  # column-up-sampled image
        if chunk == b:  # one chunk (batch 1): no slicing, every call counts
            x = images if images.dtype == torch.float32 else images.float()
            return [self._finish(self._scale_sums(x, s, geometry, pyramid[s] if keep else smalls[s], err, cols), c,
                                 geometry.patch_size(s)) for s in scales]
        sums = [images.new_empty(b, *geometry.grid(s), dtype=torch.float32) for s in scales]
        for i in range(0, b, chunk):
            x = images[i:i + chunk].float()
            k = x.shape[0]
            for s in scales:
                small = pyramid[s][i:i + k] if keep else smalls[s][:k]
                self._scale_sums(x, s, geometry, small, err[:k], cols, out=sums[s - 1][i:i + k])
        return [self._finish(t, c, geometry.patch_size(s)) for s, t in zip(scales, sums)]

    def _score_fused(self, images: Tensor, geometry: QuadGeometry, pyramid: dict[int, Tensor] | None) -> list[Tensor]:
        """Eager CPU: one fused pass per image plane (:func:`..kernels.cpu.blur_error_sums`)."""
        from ..kernels.cpu import blur_error_sums

        x = images.detach().float().contiguous()
        b, c, h, w = x.shape
        scales = range(1, geometry.num_scales)
        smalls = [x.new_empty(b, c, h >> s, w >> s) for s in scales]
        sums = [x.new_empty(b, c, *geometry.grid(s)) for s in scales]
        blur_error_sums(x, geometry.p_min, smalls, sums)
        if pyramid is not None and images.dtype == torch.float32:
            pyramid.update(zip(scales, smalls))
        return [self._finish(t.sum(1), c, geometry.patch_size(s)) for s, t in zip(scales, sums)]

    def _scale_sums(self, x: Tensor, s: int, geometry: QuadGeometry, small: Tensor, err: Tensor, cols: Tensor,
                    out: Tensor | None = None) -> Tensor:
        """Per-patch sums of ``(blur_s - x)^2`` for one chunk; ``small`` receives ``downsample(x, 2^s)``."""
        f = 1 << s
        blur_into(x, f, err, cols, downsample(x, f, out=small))
        torch.ops.aten.mse_loss.out(err, x, 0, out=err)  # (blur_s - x)^2 in one pass, in place
        return self._patch_sums(err, geometry.patch_size(s), out)

    @staticmethod
    def _patch_sums(err: Tensor, p: int, out: Tensor | None = None) -> Tensor:
        """Per-patch sums of ``err [B, C, H, W]``: the ``p`` rows of each patch first (a
        reduction over an outer axis, vectorised along the rows: ~1.8x faster than one
        reduction over channels and both patch axes), then channels and columns."""
        b, c, h, w = err.shape
        rows = err.view(b, c, h // p, p, w).sum(3).view(b, c, h // p, w // p, p)
        return torch.sum(rows, (1, 4)) if out is None else torch.sum(rows, (1, 4), out=out)

    @staticmethod
    def _finish(sums: Tensor, c: int, p: int) -> Tensor:
        """``sqrt(mse * p)`` with ``mse = sum / (C p^2)``: ``sqrt(sum / (C p))``, in place."""
        return sums.mul_(1.0 / (c * p)).sqrt_()

    def _score_once(self, x: Tensor, geometry: QuadGeometry) -> list[Tensor]:
        """One pass over the batch: traced graphs and GPUs (the same sums as the CPU chunks)."""
        c = x.shape[1]
        return [self._finish(self._patch_sums((blur(x, s) - x).square(), p), c, p)
                for s, p in ((s, geometry.patch_size(s)) for s in range(1, geometry.num_scales))]

    def gmacs(self, geometry: QuadGeometry, channels: int = 3) -> float:
        """A small honest estimate, not a network's MACs: per scale ``s`` about
        ``4*C*H*W/4^s`` (bilinear down) ``+ 4*C*H*W`` (bilinear up) ``+ 2*C*H*W`` (squared
        difference, channel mean and pooling) operations, i.e. ~0.0026 G at 256x256 with L=3,
        negligible next to one backbone pass."""
        chw = channels * geometry.height * geometry.width
        ops = sum(chw * (4 / 4**s + 6) for s in range(1, geometry.num_scales))
        return ops / 1e9
