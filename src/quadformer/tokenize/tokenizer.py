"""Tokenizers: image -> (tokens, boxes, meta) (spec §6, §8, §9).

:func:`mosaic` is the parameter-free part (score, select, resample) and is shared by
:class:`Tokenizer` and the Quadformer model, which owns its embeddings under timm's names.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .geometry import QuadGeometry
from .patch_embed import TokenPatchEmbed
from .pos_embed import SinCosPosEmbed, create_pos_embed
from .quadtree import cell_tables, select_tokens
from .resample import RESAMPLE_MODES, Resample, check_images, gather_tokens, patchify
from .scorers.base import PatchScorer


def build_scorer(scorer: str | PatchScorer | None, **kwargs: Any) -> PatchScorer | None:
    if scorer is None or isinstance(scorer, PatchScorer):
        return scorer
    from .scorers import create_scorer

    return create_scorer(scorer, **kwargs)


def select(
    images: Tensor, geometry: QuadGeometry, scorer: PatchScorer | None, **scorer_inputs: Any
) -> Tensor:
    """Score and select without grad: indices ``[B, N]`` into the canonical cell layout
    (see :func:`~quadformer.tokenize.quadtree.cell_tables`), in canonical token order.
    ``scorer=None`` is only legal when no split is needed (L = 1 or N = N0)."""
    check_images(images, geometry)
    with torch.no_grad():
        if geometry.num_scales == 1 or geometry.num_splits == 0:
            scores = [torch.zeros(images.shape[0], *geometry.grid(s), device=images.device)
                      for s in range(1, geometry.num_scales)]
        elif scorer is None:
            raise ValueError("a mixed-resolution mosaic needs a scorer (e.g. scorer='pixel-blur')")
        else:
            scores = scorer(images, geometry, **scorer_inputs)
        return select_tokens(scores, geometry, images.shape[0], images.device)


def mosaic(
    images: Tensor,
    geometry: QuadGeometry,
    scorer: PatchScorer | None,
    resample: Resample = "reference",
    **scorer_inputs: Any,
) -> tuple[Tensor, Tensor, Tensor]:
    """Score, select and resample: ``pixels [B, N, C*p_min^2]``, ``boxes [B, N, 4]`` int64,
    ``meta [B, N, 3]`` float32, tokens in canonical order."""
    index = select(images, geometry, scorer, **scorer_inputs)
    return gather_tokens(images, index, geometry, resample)


class PositionTable:
    """Position embedding of every cell of a geometry, gathered per token.

    Cells are discrete, so the sin-cos table is computed once per (geometry, device) and a
    learned grid is sampled at M cells instead of B*N tokens (and stays differentiable).
    A plain object, not a module, so ``pos_embed`` appears once in the state dict."""

    def __init__(self, pos_embed: nn.Module) -> None:
        self.pos_embed = pos_embed
        self._cache: dict[tuple, Tensor] = {}

    def __call__(self, index: Tensor, geometry: QuadGeometry) -> Tensor:
        meta = cell_tables(geometry, index.device).meta
        if isinstance(self.pos_embed, SinCosPosEmbed):
            key = (geometry.with_budget(geometry.n0), str(index.device))
            table = self._cache.get(key)
            if table is None:
                table = self._cache[key] = self.pos_embed(meta)
        else:
            table = self.pos_embed(meta.unsqueeze(0))[0]
        return table[index]


class Tokenizer(nn.Module):
    """Mixed-resolution tokenizer: ``forward(images) -> (tokens [B, P+N, D], boxes, meta)``.

    Prefix tokens (cls) come first and get no position embedding; patches follow in
    canonical order (side descending, then y, then x).
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 256,
        p_min: int = 16,
        p_max: int = 64,
        num_patches: int = 100,
        embed_dim: int = 384,
        in_chans: int = 3,
        scorer: str | PatchScorer | None = "pixel-blur",
        scorer_kwargs: dict[str, Any] | None = None,
        pos_embed: str = "sincos",
        resample: Resample = "reference",
        class_token: bool = True,
    ) -> None:
        super().__init__()
        h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
        self.geometry = QuadGeometry(h, w, p_min, p_max, num_patches)
        if resample not in RESAMPLE_MODES:
            raise ValueError(f"resample={resample!r} is not one of {RESAMPLE_MODES}")
        self.resample = resample
        self.scorer = build_scorer(scorer, **(scorer_kwargs or {}))
        self.patch_embed = TokenPatchEmbed(p_min, in_chans, embed_dim)
        self.pos_embed = create_pos_embed(pos_embed, embed_dim, (h // p_min, w // p_min))
        self.pos_table = PositionTable(self.pos_embed)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        self.num_prefix_tokens = int(class_token)

    @property
    def num_patches(self) -> int:
        return self.geometry.num_patches

    def set_num_patches(self, num_patches: int) -> None:
        """Change the budget N (re-validated); weights are unaffected."""
        self.geometry = self.geometry.with_budget(num_patches)

    def forward(self, images: Tensor, **scorer_inputs: Any) -> tuple[Tensor, Tensor, Tensor]:
        g = self.geometry
        index = select(images, g, self.scorer, **scorer_inputs)
        pixels, boxes, meta = gather_tokens(images, index, g, self.resample)
        tokens = self.patch_embed(pixels) + self.pos_table(index, g).to(pixels.dtype)
        if self.cls_token is not None:
            tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1).to(tokens.dtype), tokens], 1)
        return tokens, boxes, meta


def uniform_grid_for_budget(num_patches: int, img_size: tuple[int, int]) -> tuple[int, int]:
    """Grid ``(gh, gw)`` with ``gh*gw == N`` closest to the image's aspect ratio."""
    h, w = img_size
    best = None
    for gh in range(1, num_patches + 1):
        if num_patches % gh:
            continue
        gw = num_patches // gh
        err = abs(math.log((gw / gh) / (w / h)))
        if best is None or err < best[0]:
            best = (err, gh, gw)
    assert best is not None
    return best[1], best[2]


def downscale_image(images: Tensor, size: tuple[int, int], resample: str = "auto") -> Tensor:
    """Resize for the uniform baseline. ``auto``: the reference 2x2-centre mean when the
    factor is a power of two on both axes (identical pixels to mosaic tokens of that scale),
    antialiased bilinear otherwise."""
    h, w = images.shape[-2:]
    if (h, w) == tuple(size):
        return images
    fh, fw = h / size[0], w / size[1]
    pow2 = fh == fw and fh == int(fh) and (int(fh) & (int(fh) - 1)) == 0
    if resample == "auto":
        resample = "reference" if pow2 else "antialias"
    if resample in ("reference", "area"):
        if not pow2:
            raise ValueError(f"resample={resample!r} needs a power-of-two factor; {h}x{w} -> {size} is not")
        from .resample import downscale

        return downscale(images, int(fh), resample)  # type: ignore[arg-type]
    if resample == "antialias":
        return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)
    raise ValueError(f"resample={resample!r} is not one of ('auto', 'reference', 'area', 'antialias')")


class UniformTokenizer(nn.Module):
    """Vanilla baseline at equal N: a uniform grid of p_min patches on the image down-scaled
    to ``(gh*p_min, gw*p_min)``. ``meta`` holds cell centres ``(col+0.5, row+0.5, 0)`` in
    token-grid units (the project uses centres everywhere); ``boxes`` are in input pixels."""

    def __init__(
        self,
        img_size: int | tuple[int, int] = 256,
        p_min: int = 16,
        num_patches: int = 64,
        embed_dim: int = 384,
        in_chans: int = 3,
        pos_embed: str = "sincos",
        resample: str = "auto",
        class_token: bool = True,
        grid: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
        self.img_size = (h, w)
        self.p_min = p_min
        self.resample = resample
        self.grid = grid or uniform_grid_for_budget(num_patches, (h, w))
        if self.grid[0] * self.grid[1] != num_patches:
            raise ValueError(f"grid {self.grid} does not hold num_patches={num_patches}")
        self.patch_embed = TokenPatchEmbed(p_min, in_chans, embed_dim)
        self.pos_embed = create_pos_embed(pos_embed, embed_dim, self.grid)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        self.num_prefix_tokens = int(class_token)
        gh, gw = self.grid
        rows, cols = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
        meta = torch.stack([cols.flatten() + 0.5, rows.flatten() + 0.5, torch.zeros(gh * gw)], -1).float()
        sy, sx = h / gh, w / gw
        boxes = torch.stack(
            [cols.flatten() * sx, rows.flatten() * sy, (cols.flatten() + 1) * sx, (rows.flatten() + 1) * sy], -1
        ).round().long()
        self.register_buffer("meta", meta, persistent=False)
        self.register_buffer("boxes", boxes, persistent=False)

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def pixels(self, images: Tensor) -> Tensor:
        if tuple(images.shape[-2:]) != self.img_size:
            raise ValueError(f"images of shape {tuple(images.shape)} do not match img_size {self.img_size}")
        gh, gw = self.grid
        small = downscale_image(images, (gh * self.p_min, gw * self.p_min), self.resample)
        return patchify(small, self.p_min)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        pixels = self.pixels(images)
        b = pixels.shape[0]
        meta = self.meta.expand(b, -1, -1)
        tokens = self.patch_embed(pixels) + self.pos_embed(meta).to(pixels.dtype)
        if self.cls_token is not None:
            tokens = torch.cat([self.cls_token.expand(b, -1, -1).to(tokens.dtype), tokens], 1)
        return tokens, self.boxes.expand(b, -1, -1), meta
