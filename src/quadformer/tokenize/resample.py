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


_OFFSET_CACHE: dict[tuple, Tensor] = {}


def pixel_offsets(geometry: QuadGeometry, channels: int, device: torch.device | str = "cpu") -> Tensor:
    """``[M, C*p_min^2]`` flat offsets of every cell's pixels into the concatenated pyramid
    (scale L-1 first, each scale's ``[C, H_s, W_s]`` flattened), in token pixel layout.
    Cached by value: (geometry without budget, channels, device)."""
    g0 = geometry.with_budget(geometry.n0)
    key = (g0, channels, str(torch.device(device)))
    table = _OFFSET_CACHE.get(key)
    if table is None:
        p = g0.p_min
        ch, dy, dx = torch.meshgrid(torch.arange(channels), torch.arange(p), torch.arange(p), indexing="ij")
        parts, base = [], 0
        for s in canonical_scales(g0):
            hs, ws = g0.height >> s, g0.width >> s
            gh, gw = g0.grid(s)
            rows, cols = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
            top = (rows.reshape(-1, 1) * p) * ws + cols.reshape(-1, 1) * p  # [cells, 1]
            within = (ch * hs * ws + dy * ws + dx).reshape(1, -1)  # [1, C*p*p]
            parts.append(base + top + within)
            base += channels * hs * ws
        table = torch.cat(parts).to(device)
        _OFFSET_CACHE[key] = table
    return table


def pyramid(images: Tensor, geometry: QuadGeometry, resample: Resample = "reference") -> Tensor:
    """``[B, sum_s C*H_s*W_s]``: every scale's resampled image, flattened, canonical order."""
    b = images.shape[0]
    return torch.cat([downscale(images, 1 << s, resample).reshape(b, -1) for s in canonical_scales(geometry)], 1)


def gather_pixels(images: Tensor, index: Tensor, geometry: QuadGeometry, resample: Resample = "reference") -> Tensor:
    """Pixels ``[B, N, C*p_min^2]`` of the cells ``index`` ``[B, N]`` (canonical cell indices):
    one image pyramid (1.33x the image) and one gather of the selected pixels only."""
    b, n = index.shape
    offsets = pixel_offsets(geometry, images.shape[1], images.device)
    flat_index = offsets[index].reshape(b, -1)
    return torch.gather(pyramid(images, geometry, resample), 1, flat_index).view(b, n, -1)


def gather_tokens(
    images: Tensor, index: Tensor, geometry: QuadGeometry, resample: Resample = "reference"
) -> tuple[Tensor, Tensor, Tensor]:
    """Pixels, boxes and meta of the cells ``index`` ``[B, N]``."""
    tables = cell_tables(geometry, images.device)
    return gather_pixels(images, index, geometry, resample), tables.boxes[index], tables.meta[index]
