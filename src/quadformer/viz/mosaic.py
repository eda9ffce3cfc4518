"""Draw a mixed-resolution mosaic: each patch shown at its token resolution, borders visible."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from ..utils.images import IMAGENET_MEAN, IMAGENET_STD, denormalize
from ..utils.io import atomic_write


def _to_uint8(img: Tensor) -> np.ndarray:
    return (img.float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()


def render_mosaic(
    pixels: Tensor, boxes: Tensor, p_min: int, size: tuple[int, int], mean=IMAGENET_MEAN, std=IMAGENET_STD,
    border: tuple[int, int, int] = (255, 255, 0), scale: int = 1,
) -> Image.Image:
    """One image's tokens (``pixels [N, C*p*p]``, ``boxes [N, 4]``) as a picture: every token's
    ``p_min x p_min`` pixels blown up (nearest) to its box. ``scale`` enlarges small images."""
    h, w = size
    c = pixels.shape[-1] // (p_min * p_min)
    canvas = torch.zeros(c, h, w)
    tiles = denormalize(pixels.detach().float().cpu().view(-1, c, p_min, p_min), mean, std)
    for tile, (x0, y0, x1, y1) in zip(tiles, boxes.tolist()):
        rep = (y1 - y0) // p_min
        canvas[:, y0:y1, x0:x1] = tile.repeat_interleave(rep, 1).repeat_interleave(rep, 2)
    im = Image.fromarray(_to_uint8(canvas)).resize((w * scale, h * scale), Image.NEAREST)
    draw = ImageDraw.Draw(im)
    for x0, y0, x1, y1 in boxes.tolist():
        draw.rectangle([x0 * scale, y0 * scale, x1 * scale - 1, y1 * scale - 1], outline=border)
    return im


def side_by_side(image: Tensor, mosaic_im: Image.Image, mean=IMAGENET_MEAN, std=IMAGENET_STD, gap: int = 8) -> Image.Image:
    orig = Image.fromarray(_to_uint8(denormalize(image.detach().float().cpu(), mean, std)))
    orig = orig.resize(mosaic_im.size, Image.NEAREST)
    out = Image.new("RGB", (orig.width * 2 + gap, orig.height), (255, 255, 255))
    out.paste(orig, (0, 0))
    out.paste(mosaic_im, (orig.width + gap, 0))
    return out


def save_mosaic_grid(
    path: str | Path, images: Tensor, pixels: Tensor, boxes: Tensor, p_min: int,
    titles: Sequence[str] | None = None, mean=IMAGENET_MEAN, std=IMAGENET_STD,
) -> Path:
    """Rows of (original | mosaic) for a batch, written atomically as PNG."""
    h, w = images.shape[-2:]
    scale = max(1, 256 // max(h, w))
    rows = [
        side_by_side(images[i], render_mosaic(pixels[i], boxes[i], p_min, (h, w), mean, std, scale=scale), mean, std)
        for i in range(images.shape[0])
    ]
    label_h = 14 if titles else 0
    gap = 8
    width = rows[0].width
    height = sum(r.height + label_h + gap for r in rows) - gap
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    y = 0
    draw = ImageDraw.Draw(sheet)
    for i, r in enumerate(rows):
        if titles:
            draw.text((2, y), str(titles[i])[:100], fill=(0, 0, 0))
        sheet.paste(r, (0, y + label_h))
        y += r.height + label_h + gap
    return atomic_write(path, lambda f: sheet.save(f, format="PNG"))
