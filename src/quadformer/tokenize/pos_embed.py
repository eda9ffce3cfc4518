"""Position embeddings at real-valued token centres (``docs/design/mixed_resolution.md``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

POS_EMBEDS = ("sincos", "learned_grid")


def sincos_1d(t: Tensor, dim: int) -> Tensor:
    """``e(t) = [sin(t w_0..t w_{h-1}), cos(...)]`` with ``h = dim/2`` and
    ``w_i = 10000^(-i/(h-1))``. ``t`` is any shape; output adds a last axis of ``dim``."""
    h = dim // 2
    i = torch.arange(h, dtype=torch.float32, device=t.device)
    w = torch.pow(10000.0, -i / (h - 1))
    arg = t.float().unsqueeze(-1) * w
    return torch.cat([torch.sin(arg), torch.cos(arg)], -1)


def sincos_2d(meta: Tensor, dim: int) -> Tensor:
    """``[..., 3]`` meta ``(x_c, y_c, size_id)`` -> ``[..., dim]``: ``concat(e(x_c), e(y_c))``,
    the x half first. Requires ``dim % 4 == 0`` and ``dim >= 8``."""
    check_sincos_dim(dim)
    return torch.cat([sincos_1d(meta[..., 0], dim // 2), sincos_1d(meta[..., 1], dim // 2)], -1)


def check_sincos_dim(dim: int) -> None:
    if dim % 4 or dim < 8:
        raise ValueError(f"sincos position embedding needs embed_dim % 4 == 0 and >= 8, got {dim}")


class SinCosPosEmbed(nn.Module):
    """Parameter-free sin-cos embedding of token centres (p_min units)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        check_sincos_dim(dim)
        self.dim = dim

    def forward(self, meta: Tensor) -> Tensor:
        return sincos_2d(meta, self.dim)


class LearnedGridPosEmbed(nn.Module):
    """A learnable ``[D, Gh, Gw]`` grid read by bilinear ``grid_sample`` at token centres.

    With ``Gw = W/p_min`` a p_min patch reads exactly its own cell; larger patches read the
    interpolated value at their centre. ``grid_hw`` is the p_min grid of the image.
    """

    def __init__(self, dim: int, grid_hw: tuple[int, int], init_std: float = 0.02) -> None:
        super().__init__()
        self.grid_hw = grid_hw
        self.grid = nn.Parameter(torch.randn(1, dim, *grid_hw) * init_std)

    def forward(self, meta: Tensor) -> Tensor:
        gh, gw = self.grid_hw
        b, n, _ = meta.shape
        u = 2.0 * meta[..., 0] / gw - 1.0
        v = 2.0 * meta[..., 1] / gh - 1.0
        coords = torch.stack([u, v], -1).view(b, 1, n, 2).to(self.grid.dtype)
        out = F.grid_sample(
            self.grid.expand(b, -1, -1, -1), coords, mode="bilinear", padding_mode="border", align_corners=False
        )
        return out.view(b, -1, n).transpose(1, 2)


def create_pos_embed(kind: str, dim: int, grid_hw: tuple[int, int]) -> nn.Module:
    if kind == "sincos":
        return SinCosPosEmbed(dim)
    if kind == "learned_grid":
        return LearnedGridPosEmbed(dim, grid_hw)
    raise ValueError(f"pos_embed={kind!r} is not one of {POS_EMBEDS}")
