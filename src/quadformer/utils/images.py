"""Image loading with the usual ImageNet evaluation transform."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from timm.data import IMAGENET_DEFAULT_MEAN as IMAGENET_MEAN
from timm.data import IMAGENET_DEFAULT_STD as IMAGENET_STD
from torch import Tensor

from .errors import QuadformerError


def load_rgb(path: str | Path) -> Image.Image:
    """Open an image as RGB; an unreadable or corrupt file raises naming its path."""
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except FileNotFoundError:
        raise QuadformerError(f"image not found: {path}") from None
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
