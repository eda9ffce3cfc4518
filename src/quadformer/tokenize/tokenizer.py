"""The tokenizer: image -> (tokens, boxes, meta), see ``docs/design/mixed_resolution.md``.

:func:`mosaic` is the parameter-free part (score, select, resample);
:class:`MosaicEmbedding` adds the embeddings and is the one path both :class:`Tokenizer`
and the Quadformer model run (the model owns the embeddings under timm's names).
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
from .resample import RESAMPLE_MODES, Resample, check_images, gather_embed, gather_pixels, gather_tokens
from .scorers.base import PatchScorer
from .validation import is_tracing


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


def _cpu_autocast() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()


class PositionTable:
    """Position embedding of every cell of a geometry, gathered per token.

    Cells are discrete, so the sin-cos table is computed once per (geometry, device) and a
    learned grid is sampled at M cells instead of B*N tokens (and stays differentiable).
    A plain object, not a module, so the embedding appears once in the state dict."""

    def __init__(self, pos_embed: nn.Module) -> None:
        self.pos_embed = pos_embed
        self._cache: dict[tuple, Tensor] = {}

    def table(self, geometry: QuadGeometry, device: torch.device) -> Tensor:
        """``[M, D]``: the embedding of every cell in canonical order."""
        if isinstance(self.pos_embed, SinCosPosEmbed):
            key = (geometry.height, geometry.width, geometry.p_min, geometry.p_max, device)
            table = self._cache.get(key)
            if table is None:
                table = self.pos_embed(cell_tables(geometry, device).meta)
                if not is_tracing():  # never keep a tracer's fake tensor
                    self._cache[key] = table
            return table
        return self.pos_embed(cell_tables(geometry, device).meta.unsqueeze(0))[0]

    def __call__(self, index: Tensor, geometry: QuadGeometry) -> Tensor:
        return self.table(geometry, index.device)[index]


class MosaicEmbedding:
    """The one tokenizer path, shared by :class:`Tokenizer` and the Quadformer model.

    The host module owns ``geometry``, ``scorer``, ``resample``, ``patch_embed``,
    ``pos_grid`` (sin-cos or learned grid, read through ``pos_table``), ``cls_token`` and
    ``cls_pos`` under the Quadformer's timm-compatible names; :meth:`embed_mosaic` is the
    computation both run, so the tokenizer benchmark times exactly what the model runs."""

    geometry: QuadGeometry
    scorer: PatchScorer | None
    resample: Resample
    patch_embed: nn.Module
    pos_table: PositionTable
    cls_token: Tensor | None
    cls_pos: Tensor | None

    def init_mosaic(self, geometry: QuadGeometry, scorer: str | PatchScorer | None,
                    scorer_kwargs: dict[str, Any] | None, pos_embed: str, resample: str) -> None:
        """Set the parameter-free parts and the position embedding (``self`` is an
        ``nn.Module`` already initialised); ``patch_embed`` and ``cls_token`` are the host's."""
        if resample not in RESAMPLE_MODES:
            raise ValueError(f"resample={resample!r} is not one of {RESAMPLE_MODES}")
        self.geometry = geometry
        self.resample = resample  # type: ignore[assignment]
        self.pos_embed_type = pos_embed
        d = self.patch_embed.proj.out_channels
        self.pos_grid = create_pos_embed(pos_embed, d, (geometry.height // geometry.p_min,
                                                        geometry.width // geometry.p_min))
        prefix = 0 if self.cls_token is None else self.cls_token.shape[1]
        learned = pos_embed == "learned_grid" and prefix
        self.cls_pos = nn.Parameter(torch.zeros(1, prefix, d)) if learned else None
        self.pos_table = PositionTable(self.pos_grid)
        self.scorer_name = scorer if isinstance(scorer, str) else None
        self.scorer_kwargs = dict(scorer_kwargs or {})
        self.scorer = build_scorer(scorer, **self.scorer_kwargs)
        if self.scorer is not None and not getattr(self.scorer, "trainable", False):
            self.scorer.requires_grad_(False)

    @property
    def num_patches(self) -> int:
        return self.geometry.num_patches

    def _direct_embedding(self, images: Tensor) -> bool:
        """Whether :func:`~quadformer.tokenize.resample.gather_embed` may run: eager CPU float32
        inference (no autograd graph, no autocast) with a plain projection; anything else takes
        the differentiable, traceable path."""
        if images.device.type != "cpu" or images.dtype != torch.float32 or is_tracing():
            return False
        if torch.is_grad_enabled() or _cpu_autocast():
            return False
        pe = self.patch_embed
        return (type(pe) is TokenPatchEmbed and isinstance(pe.norm, nn.Identity)
                and pe.proj.weight.dtype == torch.float32 and not getattr(self.scorer, "trainable", False))

    def set_num_patches(self, num_patches: int) -> None:
        """Change the budget N (re-validated against the geometry); weights are unaffected."""
        self.geometry = self.geometry.with_budget(num_patches)

    def embed_mosaic(self, images: Tensor, **scorer_inputs: Any) -> tuple[Tensor, Tensor]:
        """Images -> (embedded tokens incl. prefix ``[B, P+N, D]``, cell index ``[B, N]``):
        score and select (no grad), resample, patch-embed, add positions, prepend cls."""
        index, pyramid = self.select_cells(images, **scorer_inputs)
        return self.embed_cells(images, index, pyramid), index

    def select_cells(self, images: Tensor, **scorer_inputs: Any) -> tuple[Tensor, dict[int, Tensor] | None]:
        """The first stage of :meth:`embed_mosaic`: score and select, ``index [B, N]``, and the
        scorer's down-scaled images (``pyramid``, eager CPU with ``resample="reference"`` and a
        scorer that shares it; else ``None``) for :meth:`embed_cells` to reuse."""
        pyramid: dict[int, Tensor] | None = None
        if (images.device.type == "cpu" and self.resample == "reference" and not is_tracing()
                and getattr(self.scorer, "shares_pyramid", False)):
            pyramid = {}  # the scorer's down-scaled images, reused by the gather
            scorer_inputs = {**scorer_inputs, "pyramid": pyramid}
        return select(images, self.geometry, self.scorer, **scorer_inputs), pyramid

    def embed_cells(self, images: Tensor, index: Tensor, pyramid: dict[int, Tensor] | None = None) -> Tensor:
        """The second stage of :meth:`embed_mosaic`: resample the cells ``index``, patch-embed,
        add positions, prepend cls: ``[B, P+N, D]``."""
        g = self.geometry
        if self._direct_embedding(images):  # eager CPU inference: one fused pass (issue 13)
            proj = self.patch_embed.proj
            cell_bias = self.pos_table.table(g, images.device)
            if proj.bias is not None:
                cell_bias = cell_bias + proj.bias
            prefix = None
            if self.cls_token is not None:
                prefix = (self.cls_token if self.cls_pos is None else self.cls_token + self.cls_pos)[0]
            return gather_embed(images, index, g, proj.weight, cell_bias, prefix, self.resample, pyramid)
        t = gather_pixels(images, index, g, self.resample, project=self.patch_embed, pyramid=pyramid)  # chunked on CPU
        if getattr(self.scorer, "trainable", False):  # end-to-end scorer: straight-through gate
            t = self.scorer.gate(t, index, g, images)
        t = t + self.pos_table(index, g).to(t.dtype)
        if self.cls_token is not None:
            cls = self.cls_token if self.cls_pos is None else self.cls_token + self.cls_pos
            t = torch.cat([cls.expand(t.shape[0], -1, -1).to(t.dtype), t], 1)
        return t


class Tokenizer(MosaicEmbedding, nn.Module):
    """Mixed-resolution tokenizer: ``forward(images) -> (tokens [B, P+N, D], boxes, meta)``.

    The Quadformer's own tokenizer without the transformer: the same
    :meth:`~MosaicEmbedding.embed_mosaic` and the same state-dict names (``patch_embed.proj``,
    ``pos_grid``, ``cls_token``, ``cls_pos``, ``scorer.*``). Prefix tokens (cls) come first;
    patches follow in canonical order (side descending, then y, then x).
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
        nn.Module.__init__(self)
        h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
        geometry = QuadGeometry(h, w, p_min, p_max, num_patches)
        self.patch_embed = TokenPatchEmbed(p_min, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        self.num_prefix_tokens = int(class_token)
        self.init_mosaic(geometry, scorer, scorer_kwargs, pos_embed, resample)

    def forward(self, images: Tensor, **scorer_inputs: Any) -> tuple[Tensor, Tensor, Tensor]:
        tokens, index = self.embed_mosaic(images, **scorer_inputs)
        tables = cell_tables(self.geometry, images.device)
        return tokens, tables.boxes[index], tables.meta[index]


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
