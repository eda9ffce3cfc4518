"""Mixed-resolution tokenization: quadtree geometry, selection, resampling, embeddings."""

from .geometry import QuadGeometry, legal_budgets, nearest_legal_budgets
from .patch_embed import TokenPatchEmbed
from .pos_embed import LearnedGridPosEmbed, SinCosPosEmbed, create_pos_embed, sincos_2d
from .quadtree import cell_tables, select_splits, select_tokens, token_mask
from .resample import downscale, gather_pixels, gather_tokens, patchify
from .reverse import boxes_to_meta, pool_to_tokens, reverse_quadtree
from .tokenizer import MosaicEmbedding, Tokenizer, mosaic, select

__all__ = [
    "QuadGeometry", "legal_budgets", "nearest_legal_budgets", "TokenPatchEmbed", "LearnedGridPosEmbed",
    "SinCosPosEmbed", "create_pos_embed", "sincos_2d", "cell_tables", "select_splits", "select_tokens",
    "token_mask", "downscale", "gather_pixels", "gather_tokens", "patchify", "boxes_to_meta",
    "pool_to_tokens", "reverse_quadtree", "MosaicEmbedding", "Tokenizer", "mosaic", "select",
]
