"""Patch-scorer interface (docs/design/mixed_resolution.md §7).

A scorer maps a batch of images to one importance map per splittable scale: scale ``s``
(``1..L-1``) is ``[B, H/p_s, W/p_s]`` float32, higher = split sooner. Scorers never cache
on tensor identity: every call computes from its inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..geometry import QuadGeometry


def to_grid(score_map: Tensor, gh: int, gw: int) -> Tensor:
    """Bring ``[B, h, w]`` to ``[B, gh, gw]``: identity, average pool for integer
    multiples per axis, otherwise bilinear (``align_corners=False``, no antialias).
    A map coarser than the target on either axis raises ``ValueError``."""
    if score_map.dim() != 3:
        raise ValueError(f"score map must be [B, h, w], got shape {tuple(score_map.shape)}")
    h, w = score_map.shape[-2:]
    if (h, w) == (gh, gw):
        return score_map
    if h < gh or w < gw:
        raise ValueError(
            f"score map of {h}x{w} is coarser than the {gh}x{gw} grid it must score; "
            f"provide a map of at least {gh}x{gw} (e.g. on the p_min grid)"
        )
    if h % gh == 0 and w % gw == 0:
        return F.avg_pool2d(score_map.unsqueeze(1), (h // gh, w // gw)).squeeze(1)
    return F.interpolate(
        score_map.unsqueeze(1), size=(gh, gw), mode="bilinear", align_corners=False, antialias=False
    ).squeeze(1)


class PatchScorer(nn.Module):
    """Base class. Subclasses implement :meth:`score`; ``forward`` runs it under
    ``no_grad`` and checks the output contract."""

    def score(self, images: Tensor, geometry: QuadGeometry, **inputs) -> list[Tensor]:
        raise NotImplementedError

    def forward(self, images: Tensor, geometry: QuadGeometry, **inputs) -> list[Tensor]:
        with torch.no_grad():
            maps = self.score(images, geometry, **inputs)
        if len(maps) != geometry.num_scales - 1:
            raise RuntimeError(
                f"{type(self).__name__} returned {len(maps)} maps, expected {geometry.num_scales - 1}"
            )
        out = []
        for s, m in enumerate(maps, start=1):
            expected = (images.shape[0], *geometry.grid(s))
            if tuple(m.shape) != expected:
                raise RuntimeError(
                    f"{type(self).__name__} map for scale {s} has shape {tuple(m.shape)}, expected {expected}"
                )
            out.append(m.float())
        return out

    def gmacs(self, geometry: QuadGeometry) -> float:
        """Multiply-accumulates per image (in 1e9), for honest compute figures."""
        return 0.0
