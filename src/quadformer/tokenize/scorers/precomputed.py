"""Precomputed scorer (docs/design/mixed_resolution.md §7): importance maps supplied by the caller with every call.

No caching: the reference keyed a cache on tensor identity and served stale maps after
in-place edits or new maps, so each call resamples exactly what it is given.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..geometry import QuadGeometry
from ..validation import validating
from .base import PatchScorer, to_grid
from ...utils.errors import QuadformerError


def _check_map(m: Tensor, batch: int, what: str) -> Tensor:
    if not isinstance(m, Tensor):
        raise TypeError(f"{what} must be a tensor, got {type(m).__name__}")
    if m.dim() != 3:
        raise ValueError(f"{what} must be [B, h, w], got shape {tuple(m.shape)}")
    if m.shape[0] != batch:
        raise ValueError(f"{what} has batch size {m.shape[0]} but the images have {batch}")
    m = m.float()
    if validating(m) and bool(torch.isnan(m).any()):
        raise QuadformerError(f"{what} contains NaN; importance maps must be real numbers")
    return m


def maps_to_grids(
    saliency: Tensor | Sequence[Tensor], geometry: QuadGeometry, batch: int, device: torch.device
) -> list[Tensor]:
    """Turn ``[B, h, w]`` (one map for every scale), ``[B, L-1, h, w]`` or a list of L-1
    ``[B, h, w]`` maps into the L-1 float32 grids of ``geometry`` via :func:`to_grid`."""
    n = geometry.num_scales - 1
    if isinstance(saliency, Tensor) and saliency.dim() == 3:
        maps = [_check_map(saliency, batch, "saliency")] * n
    elif isinstance(saliency, Tensor) and saliency.dim() == 4:
        if saliency.shape[1] not in (n, 1):
            raise ValueError(
                f"saliency [B, S, h, w] must have S = L-1 = {n} maps (one per splittable scale) "
                f"or S = 1, got S = {saliency.shape[1]}"
            )
        last = saliency.shape[1] - 1  # S = 1: the same map for every scale
        maps = [_check_map(saliency[:, min(i, last)], batch, f"saliency[:, {i}]") for i in range(n)]
    elif isinstance(saliency, Sequence) and not isinstance(saliency, Tensor):
        if len(saliency) != n:
            raise ValueError(f"saliency list must have L-1 = {n} maps (scales 1..{n}), got {len(saliency)}")
        maps = [_check_map(m, batch, f"saliency[{i}]") for i, m in enumerate(saliency)]
    else:
        shape = tuple(saliency.shape) if isinstance(saliency, Tensor) else type(saliency).__name__
        raise ValueError(f"saliency must be [B, h, w], [B, L-1, h, w] or a list of L-1 [B, h, w] maps, got {shape}")
    return [to_grid(m.to(device), *geometry.grid(s)) for s, m in enumerate(maps, start=1)]


class PrecomputedScorer(PatchScorer):
    """Scores from ``saliency=`` passed at call time (e.g. human attention, SAM masks,
    Grad-CAM). One map serves all scales or one per scale; finer maps are average-pooled
    (integer ratio) or bilinearly resampled, coarser maps and NaN raise ``ValueError``."""

    def score(
        self,
        images: Tensor,
        geometry: QuadGeometry,
        saliency: Tensor | Sequence[Tensor] | None = None,
        **inputs,
    ) -> list[Tensor]:
        if saliency is None:
            raise ValueError(
                "PrecomputedScorer needs the maps with each call: scorer(images, geometry, saliency=maps) "
                "with maps [B, h, w], [B, L-1, h, w] or a list of L-1 [B, h, w]"
            )
        return maps_to_grids(saliency, geometry, images.shape[0], images.device)
