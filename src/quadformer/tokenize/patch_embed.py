"""Patch embedding of resampled tokens with timm-compatible names (``docs/design/mixed_resolution.md``)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class TokenPatchEmbed(nn.Module):
    """Embeds ``[B, N, C*p*p]`` token pixels. ``proj`` is the ``Conv2d(C, D, p, stride=p)`` of
    timm's ``PatchEmbed`` (same names and shapes), applied as the equivalent linear map, so a
    vanilla ViT's ``patch_embed.proj`` loads unchanged."""

    def __init__(self, patch_size: int, in_chans: int = 3, embed_dim: int = 768, norm_layer=None, bias: bool = True):
        super().__init__()
        self.patch_size = (patch_size, patch_size)
        self.in_chans = in_chans
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size, bias=bias)
        self.norm = norm_layer(embed_dim) if norm_layer else nn.Identity()

    def forward(self, pixels: Tensor) -> Tensor:
        w = self.proj.weight
        return self.norm(F.linear(pixels, w.reshape(w.shape[0], -1), self.proj.bias))
