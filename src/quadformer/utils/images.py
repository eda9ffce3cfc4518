"""Image loading (any mode and bit depth to 8-bit RGB) and the usual ImageNet evaluation transform."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from timm.data import IMAGENET_DEFAULT_MEAN as IMAGENET_MEAN
from timm.data import IMAGENET_DEFAULT_STD as IMAGENET_STD
from torch import Tensor

from .errors import QuadformerError


def _scaled_grey(a: np.ndarray, mode: str) -> np.ndarray:
    """8-bit grey levels of a 16-bit, 32-bit or float single-band image, scaled (never clipped):
    16-bit by 255/65535; float in [0, 1] by 255; other ranges stretched min..max."""
    a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if mode.startswith("I;16") or (mode == "I" and lo >= 0 and 255 < hi <= 65535):
        a = a * (255.0 / 65535.0)
    elif mode == "F" and lo >= 0 and hi <= 1:
        a = a * 255.0
    elif lo < 0 or hi > 255:
        a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def to_rgb(im: Image.Image) -> Image.Image:
    """An 8-bit RGB copy of a PIL image of any mode. Pillow's ``convert("RGB")`` clips 16-bit
    and float images (a 16-bit PNG becomes almost all white); those are scaled instead. Alpha
    is dropped, palettes expanded, CMYK and 1-bit converted by Pillow."""
    if im.mode == "RGB":
        return im.copy()
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        return Image.fromarray(_scaled_grey(np.asarray(im), im.mode), "L").convert("RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode == "P" and "transparency" in im.info):
        return im.convert("RGBA").convert("RGB")
    return im.convert("RGB")


def open_rgb(path: str | Path) -> Image.Image:
    """Decode an image file fully into 8-bit RGB (see :func:`to_rgb`); Pillow's exceptions pass
    through (loaders with a skip policy catch them, :func:`load_rgb` turns them into one line)."""
    with Image.open(path) as im:
        im.load()
        return to_rgb(im)


def load_rgb(path: str | Path) -> Image.Image:
    """Open an image as 8-bit RGB; a missing, unreadable, corrupt or oversized file raises a
    one-line :class:`QuadformerError` naming its path."""
    try:
        return open_rgb(path)
    except FileNotFoundError:
        raise QuadformerError(f"image not found: {path}") from None
    except Image.DecompressionBombError as e:
        raise QuadformerError(f"image {path} is too large to decode safely ({e}); downscale it, or raise "
                              f"PIL.Image.MAX_IMAGE_PIXELS if you trust the file") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise QuadformerError(f"cannot read image {path}: {e.__class__.__name__}: {e} (is the file corrupt?)") from None


def eval_transform(size: int | tuple[int, int], crop_pct: float = 0.875):
    """Shorter side to ``size/crop_pct``, centre crop ``size``, ImageNet normalisation."""
    from torchvision import transforms as T

    h, w = (size, size) if isinstance(size, int) else size
    return T.Compose(
        [
            T.Resize(math.floor(min(h, w) / crop_pct), interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop((h, w)),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def denormalize(images: Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> Tensor:
    m = torch.tensor(mean, dtype=images.dtype, device=images.device).view(-1, 1, 1)
    s = torch.tensor(std, dtype=images.dtype, device=images.device).view(-1, 1, 1)
    return (images * s + m).clamp(0, 1)
