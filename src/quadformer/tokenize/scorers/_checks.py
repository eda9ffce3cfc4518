"""Input validation shared by the image-based scorers."""

from __future__ import annotations

from torch import Tensor

from ..geometry import QuadGeometry


def check_images(images: Tensor, geometry: QuadGeometry, channels: int | None = None) -> None:
    """Raise ``ValueError`` unless ``images`` is ``[B, C, H, W]`` with the geometry's H, W
    (and ``C == channels`` when given): scorers never resize silently."""
    if images.dim() != 4 or (channels is not None and images.shape[1] != channels):
        c = channels if channels is not None else "C"
        raise ValueError(f"images must be [B, {c}, H, W], got shape {tuple(images.shape)}")
    if tuple(images.shape[-2:]) != (geometry.height, geometry.width):
        raise ValueError(
            f"images are {images.shape[-2]}x{images.shape[-1]} but the geometry is "
            f"{geometry.height}x{geometry.width}"
        )
