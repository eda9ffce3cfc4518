"""The blur used by the pixel-blur and feature scorers (spec §7).

``blur_s = up(down(x, (H/2^s, W/2^s)), (H, W))``, both bilinear, ``align_corners=False``,
no antialias: what the image looks like when every region is represented by ``p_s`` patches
resampled to ``p_min`` pixels (spec §5, ``resample="reference"``).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def blur(images: Tensor, scale: int) -> Tensor:
    """Down- then up-sample ``images [B, C, H, W]`` by ``2**scale`` (bilinear, no antialias)."""
    h, w = images.shape[-2:]
    f = 1 << scale
    if h % f or w % f:
        raise ValueError(f"image size {h}x{w} is not divisible by 2**{scale}={f}")
    small = F.interpolate(images, size=(h // f, w // f), mode="bilinear", align_corners=False, antialias=False)
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False, antialias=False)
