"""Slow reference definitions of what the tokenizer computes, one token at a time, in plain
arithmetic: the fast paths in ``quadformer.tokenize`` / ``quadformer.models`` are checked
against these (``docs/design/mixed_resolution.md`` §5, §8, §9)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def sincos(x: float, y: float, dim: int) -> list[float]:
    """``concat(e(x), e(y))``, ``e(t) = [sin(t w_i), cos(t w_i)]``, ``w_i = 10000^(-i/(h-1))``, h = dim/4."""
    h = dim // 4
    out: list[float] = []
    for t in (x, y):
        ws = [10000 ** (-i / (h - 1)) for i in range(h)]
        out += [math.sin(t * w) for w in ws] + [math.cos(t * w) for w in ws]
    return out


def token_pixels(image: Tensor, box: list[int], p_min: int) -> Tensor:
    """One token's ``C*p_min^2`` pixels: its box resized to p_min by bilinear interpolation
    (``align_corners=False``, no antialias), channel-major."""
    x0, y0, x1, y1 = box
    crop = image[None, :, y0:y1, x0:x1]
    if x1 - x0 != p_min:
        crop = F.interpolate(crop, size=(p_min, p_min), mode="bilinear", align_corners=False)
    return crop.reshape(-1)


def mosaic_tokens(images: Tensor, boxes: Tensor, p_min: int, weight: Tensor, bias: Tensor | None,
                  cls: Tensor | None) -> Tensor:
    """Embedded sin-cos tokens ``[B, P+N, D]`` of given boxes: ``W . pixels + b + sincos(centre)``
    with centres in p_min units, cls (no position) first."""
    d = weight.shape[0]
    w = weight.reshape(d, -1).double()
    rows = []
    for b in range(images.shape[0]):
        toks = [] if cls is None else [cls.reshape(d).double()]
        for box in boxes[b].tolist():
            pix = token_pixels(images[b], box, p_min).double()
            xc, yc = (box[0] + box[2]) / (2 * p_min), (box[1] + box[3]) / (2 * p_min)
            e = w @ pix + (bias.double() if bias is not None else 0.0) + torch.tensor(sincos(xc, yc, d)).double()
            toks.append(e)
        rows.append(torch.stack(toks))
    return torch.stack(rows).float()


def uniform_patches(images: Tensor, grid: tuple[int, int], p: int) -> Tensor:
    """The uniform baseline's patch pixels ``[B, gh*gw, C*p*p]`` in raster order: the image
    resized to ``(gh*p, gw*p)`` by bilinear interpolation (power-of-two factors: the reference
    2x2-centre mean), cut into p x p patches."""
    gh, gw = grid
    small = F.interpolate(images, size=(gh * p, gw * p), mode="bilinear", align_corners=False)
    out = [small[:, :, r * p:(r + 1) * p, c * p:(c + 1) * p].reshape(images.shape[0], -1)
           for r in range(gh) for c in range(gw)]
    return torch.stack(out, 1)
