"""Scorer quality against object masks: where does a mosaic spend its finest patches?

Used by ``benchmarks/scorer_quality.py`` and the main job. All figures pool pixel area over
a batch, so large and small objects weigh by their area.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..geometry import QuadGeometry
from ..quadtree import cell_tables
from ..reverse import reverse_quadtree


def patch_side_map(index: Tensor, geometry: QuadGeometry) -> Tensor:
    """Selected cells ``index [B, N]`` -> ``[B, H, W]`` float32: the side (px) of the patch
    covering each pixel."""
    meta = cell_tables(geometry, index.device).meta[index]  # [B, N, 3]
    side = (geometry.p_min * torch.pow(2.0, meta[..., 2:3])).float()
    dense = reverse_quadtree(side, meta, geometry.height, geometry.width, geometry.p_min)  # [B, 1, h, w]
    return F.interpolate(dense, scale_factor=geometry.p_min, mode="nearest").squeeze(1)


def mask_coverage(index: Tensor, geometry: QuadGeometry, mask: Tensor) -> dict[str, float]:
    """For a coverage mask ``[B, H, W]`` in [0, 1]: ``area`` (pixels), ``fine_area`` (in p_min
    patches) and ``side_sum`` (area-weighted patch side), summed over the batch, so batches
    add up; :func:`summarise` turns them into fractions."""
    side = patch_side_map(index, geometry)
    m = mask.to(side.device).float()
    fine = (side == geometry.p_min).float()
    return {"area": float(m.sum()), "fine_area": float((m * fine).sum()), "side_sum": float((m * side).sum())}


def summarise(acc: dict[str, float]) -> tuple[float, float]:
    """(fraction of the mask's area in the finest patches, mean patch side over it), NaN
    without area."""
    a = acc.get("area", 0.0)
    if a <= 0:
        return float("nan"), float("nan")
    return acc["fine_area"] / a, acc["side_sum"] / a


def add(acc: dict[str, float], part: dict[str, float]) -> dict[str, float]:
    for k, v in part.items():
        acc[k] = acc.get(k, 0.0) + v
    return acc
