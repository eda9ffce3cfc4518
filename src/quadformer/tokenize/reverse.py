"""Reverse quadtree: token features back to a dense p_min grid (docs/design/mixed_resolution.md §11)."""

from __future__ import annotations

import torch
from torch import Tensor


def boxes_to_meta(boxes: Tensor, p_min: int) -> Tensor:
    """Pixel boxes ``[..., 4]`` -> meta ``[..., 3]`` ``(x_c, y_c, size_id)`` in p_min units."""
    b = boxes.float()
    side = (b[..., 2] - b[..., 0]) / p_min
    return torch.stack(
        [(b[..., 0] + b[..., 2]) / (2 * p_min), (b[..., 1] + b[..., 3]) / (2 * p_min), torch.log2(side)], -1
    )


def owner_index(meta: Tensor, grid_hw: tuple[int, int], debug: bool = False) -> Tensor:
    """``[B, gh*gw]`` index of the token covering each p_min cell, built on ``meta``'s device.

    Each token scatters its index into the ``(2^size_id)^2`` cells it covers; cells are
    enumerated with one offset table for the largest size present, masked per token."""
    gh, gw = grid_hw
    b, n, _ = meta.shape
    size_id = meta[..., 2].round().long()
    side = 1 << size_id  # [B, N]
    max_side = int(side.max()) if n else 1
    x0 = (meta[..., 0] - side / 2).round().long()
    y0 = (meta[..., 1] - side / 2).round().long()
    off = torch.arange(max_side, device=meta.device)
    dy, dx = off.view(-1, 1).expand(max_side, max_side).reshape(-1), off.repeat(max_side)
    valid = (dy.view(1, 1, -1) < side.unsqueeze(-1)) & (dx.view(1, 1, -1) < side.unsqueeze(-1))
    cell = (y0.unsqueeze(-1) + dy) * gw + (x0.unsqueeze(-1) + dx)  # [B, N, S*S]
    dump = gh * gw
    cell = torch.where(valid, cell, torch.full_like(cell, dump))
    tok = torch.arange(n, device=meta.device).view(1, n, 1).expand_as(cell)
    owner = torch.full((b, dump + 1), -1, dtype=torch.long, device=meta.device)
    owner.scatter_(1, cell.reshape(b, -1), tok.reshape(b, -1))
    owner = owner[:, :dump]
    if debug:
        cover = torch.zeros(b, dump + 1, device=meta.device)
        cover.scatter_add_(1, cell.reshape(b, -1), valid.reshape(b, -1).float())
        if not torch.equal(cover[:, :dump], torch.ones_like(cover[:, :dump])):
            raise AssertionError("tokens do not cover the p_min grid exactly once")
    return owner


def _as_meta(meta_or_boxes: Tensor, p_min: int) -> Tensor:
    return meta_or_boxes if meta_or_boxes.shape[-1] == 3 else boxes_to_meta(meta_or_boxes, p_min)


def reverse_quadtree(
    features: Tensor,
    meta_or_boxes: Tensor,
    height: int,
    width: int,
    p_min: int,
    num_prefix_tokens: int = 0,
    debug: bool = False,
) -> Tensor:
    """``[B, P+N, D'] -> [B, D', H/p_min, W/p_min]``: each token's vector fills every p_min
    cell it covers. One gather; differentiable; any dtype and device."""
    features = features[:, num_prefix_tokens:]
    gh, gw = height // p_min, width // p_min
    owner = owner_index(_as_meta(meta_or_boxes, p_min), (gh, gw), debug=debug)
    if not debug and owner.min() < 0:
        raise ValueError("tokens do not cover the whole grid; check meta/boxes, height, width and p_min")
    dense = torch.gather(features, 1, owner.unsqueeze(-1).expand(-1, -1, features.shape[-1]))
    return dense.transpose(1, 2).reshape(features.shape[0], -1, gh, gw)


def pool_to_tokens(dense: Tensor, meta_or_boxes: Tensor, p_min: int = 1) -> Tensor:
    """``[B, D', gh, gw] -> [B, N, D']``: average of each token's cells (the inverse
    direction of :func:`reverse_quadtree`). ``p_min`` is only needed for boxes."""
    meta = _as_meta(meta_or_boxes, p_min)
    b, d, gh, gw = dense.shape
    n = meta.shape[1]
    owner = owner_index(meta, (gh, gw))
    flat = dense.reshape(b, d, gh * gw).transpose(1, 2)  # [B, G, D']
    idx = owner.clamp_min(0).unsqueeze(-1).expand(-1, -1, d)
    sums = torch.zeros(b, n, d, dtype=dense.dtype, device=dense.device).scatter_add(1, idx, flat)
    counts = torch.zeros(b, n, dtype=dense.dtype, device=dense.device).scatter_add(
        1, owner.clamp_min(0), torch.ones_like(owner, dtype=dense.dtype)
    )
    return sums / counts.clamp_min(1).unsqueeze(-1)
