"""Patch resampling and token gathering (spec §5, §6).

Every token carries ``p_min x p_min`` pixels whatever its size: scale ``s`` patches are
cut from the image resized by ``2**-s``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from .geometry import QuadGeometry
from .quadtree import canonical_scales, cell_tables

Resample = Literal["reference", "area"]
RESAMPLE_MODES = ("reference", "area")


def downscale(images: Tensor, factor: int, resample: Resample = "reference") -> Tensor:
    """Resize ``[B, C, H, W]`` by ``1/factor`` (``factor`` a power of two).

    ``reference``: bilinear, ``align_corners=False``, no antialias, i.e. each output pixel is
    the mean of the 2x2 source pixels at the centre of its block (the reference tokenizer's
    behaviour, so its weights transfer). ``area``: exact block mean.
    """
    if factor == 1:
        return images
    if resample == "reference":
        h, w = images.shape[-2:]
        if factor == 2:
            # Same values as bilinear at exactly 1/2 (a 2x2 mean), without the interpolation kernel.
            return F.avg_pool2d(images, 2)
        # Central 2x2 of each factor x factor block: a strided slice, then a 2x2 mean.
        c = factor // 2 - 1
        return F.avg_pool2d(images[..., c : h - (factor - c - 2), c : w - (factor - c - 2)], 2, stride=factor)
    if resample == "area":
        return F.avg_pool2d(images, factor)
    raise ValueError(f"resample={resample!r} is not one of {RESAMPLE_MODES}")


def patchify(images: Tensor, patch: int) -> Tensor:
    """``[B, C, H, W] -> [B, (H/p)(W/p), C*p*p]`` in raster order, channel-major rows
    (the ``Conv2d`` weight / ``F.unfold`` layout)."""
    b, c, h, w = images.shape
    gh, gw = h // patch, w // patch
    x = images.reshape(b, c, gh, patch, gw, patch).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, gh * gw, c * patch * patch)


def multiscale_patches(images: Tensor, geometry: QuadGeometry, resample: Resample = "reference") -> Tensor:
    """All cells of all scales as ``[B, M, C*p_min^2]`` in canonical order."""
    return torch.cat(
        [patchify(downscale(images, 1 << s, resample), geometry.p_min) for s in canonical_scales(geometry)], 1
    )


def check_images(images: Tensor, geometry: QuadGeometry) -> None:
    if images.dim() != 4 or tuple(images.shape[-2:]) != (geometry.height, geometry.width):
        raise ValueError(
            f"images of shape {tuple(images.shape)} do not match the tokenizer's "
            f"{geometry.height}x{geometry.width} geometry; resize/crop them to "
            f"[B, C, {geometry.height}, {geometry.width}] (the tokenizer never resizes)"
        )
    if not images.is_floating_point():
        raise TypeError(f"images must be a floating-point tensor, got {images.dtype}")


def gather_pixels(images: Tensor, index: Tensor, geometry: QuadGeometry, resample: Resample = "reference") -> Tensor:
    """Pixels ``[B, N, C*p_min^2]`` of the cells ``index`` ``[B, N]`` (canonical cell indices).

    Each scale's image is viewed as ``[B, C, gh, p, gw, p]`` and its tokens are read with one
    strided advanced index: exactly the selected pixels are copied once, with no patchified
    copy of the image and no per-pixel index tensor."""
    b, n = index.shape
    p, c = geometry.p_min, images.shape[1]
    meta = cell_tables(geometry, images.device).meta[index]  # [B, N, 3]
    scale = meta[..., 2].long()
    out = images.new_empty(b, n, c, p, p)
    batch = torch.arange(b, device=images.device).view(b, 1).expand(b, n)
    for s in range(geometry.num_scales):
        mask = scale == s
        if not bool(mask.any()):
            continue
        img = downscale(images, 1 << s, resample)
        gh, gw = geometry.grid(s)
        f = float(1 << s)
        row = (meta[..., 1][mask] / f - 0.5).long()
        col = (meta[..., 0][mask] / f - 0.5).long()
        view = img.reshape(b, c, gh, p, gw, p)
        out[mask] = view[batch[mask], :, row, :, col, :]  # [K, C, p, p]
    return out.view(b, n, c * p * p)


def gather_tokens(
    images: Tensor, index: Tensor, geometry: QuadGeometry, resample: Resample = "reference"
) -> tuple[Tensor, Tensor, Tensor]:
    """Pixels, boxes and meta of the cells ``index`` ``[B, N]``."""
    tables = cell_tables(geometry, images.device)
    return gather_pixels(images, index, geometry, resample), tables.boxes[index], tables.meta[index]
