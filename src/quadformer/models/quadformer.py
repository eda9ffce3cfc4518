"""Quadformer and its vanilla baseline at equal N, on timm's ``VisionTransformer``
(``docs/design/mixed_resolution.md`` §9, §10).

* :class:`Quadformer`: the mixed-resolution tokenizer
  (:class:`~quadformer.tokenize.tokenizer.MosaicEmbedding`) + unmodified timm
  blocks/norm/head. State-dict names equal timm's (``patch_embed.proj``, ``cls_token``,
  ``blocks.*`` ...), so a vanilla ViT checkpoint loads except ``pos_embed``: folded into
  ``cls_token`` (cls part) and dropped for ``sincos``, resampled into ``pos_grid`` for
  ``learned_grid`` (:func:`convert_vanilla_state_dict`).
* :class:`UniformViT`: the vanilla baseline at equal N, a uniform grid on a down-scaled image.

The timm entry points (``quadformer_small_patch16_224`` ...) live in
:mod:`quadformer.models.registry`.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
from timm.layers import resample_abs_pos_embed
from timm.models._features import feature_take_indices
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from ..tokenize import QuadGeometry
from ..tokenize.patch_embed import TokenPatchEmbed
from ..tokenize.pos_embed import POS_EMBEDS, sincos_2d
from ..tokenize.quadtree import cell_tables
from ..tokenize.resample import RESAMPLE_MODES
from ..tokenize.reverse import reverse_quadtree
from ..tokenize.scorers.base import PatchScorer
from ..tokenize.tokenizer import MosaicEmbedding, downscale_image, uniform_grid_for_budget
from ..utils.state_dict import read_state_dict

# name -> (embed_dim, depth, num_heads)
SIZES: dict[str, tuple[int, int, int]] = {
    "nano": (64, 4, 2),  # CPU studies on 32 px images
    "micro": (128, 4, 4),
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
}


def _pair(x: int | tuple[int, int]) -> tuple[int, int]:
    return (x, x) if isinstance(x, int) else (int(x[0]), int(x[1]))


def portable_scorer_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Scorer kwargs that rebuild the scorer's structure anywhere: a ``weights`` file (or
    ``torchvision:`` weights) becomes ``'random'``, since the model's state dict carries the
    scorer's weights under ``scorer.`` (``timm:<name>`` names a structure and stays)."""
    w = kwargs.get("weights")
    if isinstance(w, (str, os.PathLike)) and str(w) != "random" and not str(w).startswith("timm:"):
        return {**kwargs, "weights": "random"}
    return dict(kwargs)


class ReconstructionArgs:
    """timm's ``_model_args`` (what :func:`timm.models.save_for_hf` writes as ``model_args``)
    always carries the model's current tokenizer config (:meth:`tokenizer_args`), over the
    kwargs ``timm.create_model`` recorded, so an export rebuilds exactly even after
    :meth:`set_num_patches`."""

    def tokenizer_args(self) -> dict[str, Any]:
        raise NotImplementedError

    @property
    def _model_args(self) -> dict[str, Any]:
        return {**self.__dict__.get("_factory_args", {}), **self.tokenizer_args()}

    @_model_args.setter
    def _model_args(self, value: dict[str, Any]) -> None:
        self.__dict__["_factory_args"] = dict(value)


class Quadformer(ReconstructionArgs, MosaicEmbedding, VisionTransformer):
    """A ViT fed a saliency-guided mosaic of ``num_patches`` tokens of sizes ``p_min..p_max``.

    ``scorer`` is a name (``pixel-blur``, ``feature``, ``random``, ``precomputed`` ...) or a
    :class:`PatchScorer`; its weights live under ``scorer.`` and are never trained.
    ``num_patches`` can change between training and inference (:meth:`set_num_patches`).
    Feature maps (``forward_intermediates``, ``features_only=True``) are dense on the p_min
    grid (reduction ``p_min``).
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 256,
        patch_size: int = 16,
        max_patch_size: int = 64,
        num_patches: int = 100,
        scorer: str | PatchScorer | None = "pixel-blur",
        scorer_kwargs: dict[str, Any] | None = None,
        pos_embed: str = "sincos",
        resample: str = "reference",
        in_chans: int = 3,
        **vit_kwargs: Any,
    ) -> None:
        h, w = _pair(img_size)
        if pos_embed not in POS_EMBEDS:
            raise ValueError(f"pos_embed={pos_embed!r} is not one of {POS_EMBEDS}")
        if resample not in RESAMPLE_MODES:
            raise ValueError(f"resample={resample!r} is not one of {RESAMPLE_MODES}")
        geometry = QuadGeometry(h, w, patch_size, max_patch_size, num_patches)  # validates first
        vit_kwargs.setdefault("class_token", True)
        vit_kwargs.pop("dynamic_img_size", None)
        super().__init__(img_size=(h, w), patch_size=patch_size, in_chans=in_chans, pos_embed="none", **vit_kwargs)
        if self.reg_token is not None:
            raise ValueError("register tokens are not supported by the Quadformer (reg_tokens must be 0)")
        old = self.patch_embed
        self.patch_embed = TokenPatchEmbed(patch_size, in_chans, self.embed_dim, bias=old.proj.bias is not None)
        self.patch_embed.proj = old.proj  # keep timm's initialisation
        self.patch_embed.norm = old.norm
        self.init_mosaic(geometry, scorer, scorer_kwargs, pos_embed, resample)

    def tokenizer_args(self) -> dict[str, Any]:
        g = self.geometry
        scorer = self.scorer_name if self.scorer_name or self.scorer is None else self.scorer
        return dict(patch_size=g.p_min, max_patch_size=g.p_max, num_patches=g.num_patches, scorer=scorer,
                    scorer_kwargs=portable_scorer_kwargs(self.scorer_kwargs), pos_embed=self.pos_embed_type,
                    resample=self.resample)

    def train(self, mode: bool = True) -> "Quadformer":
        super().train(mode)
        if self.scorer is not None:  # frozen: eval mode even under model.train(), unless end-to-end
            self.scorer.train(mode and getattr(self.scorer, "trainable", False))
        return self

    # -- tokens -----------------------------------------------------------------------------
    def tokenize(self, x: Tensor, **scorer_inputs: Any) -> tuple[Tensor, Tensor]:
        """Images -> (embedded tokens incl. prefix ``[B, P+N, D]``, cell index ``[B, N]``)."""
        t, index = self.embed_mosaic(x, **scorer_inputs)
        t = self.pos_drop(t)
        t = self.patch_drop(t)
        return self.norm_pre(t), index

    def boxes_and_meta(self, index: Tensor) -> tuple[Tensor, Tensor]:
        tables = cell_tables(self.geometry, index.device)
        return tables.boxes[index], tables.meta[index]

    def forward_features(self, x: Tensor, **scorer_inputs: Any) -> Tensor:  # type: ignore[override]
        t, _ = self.tokenize(x, **scorer_inputs)
        t = self.blocks(t)
        return self.norm(t)

    def forward(self, x: Tensor, **scorer_inputs: Any) -> Tensor:  # type: ignore[override]
        return self.forward_head(self.forward_features(x, **scorer_inputs))

    def forward_intermediates(  # type: ignore[override]
        self,
        x: Tensor,
        indices: int | list[int] | None = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
        **scorer_inputs: Any,
    ):
        """As timm's. ``NCHW`` maps are dense on the p_min grid (:func:`reverse_quadtree`:
        each token's vector fills the cells it covers); ``NLC`` keeps the mosaic tokens."""
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt={output_fmt!r}; use 'NCHW' or 'NLC'")
        take, max_index = feature_take_indices(len(self.blocks), indices)
        t, index = self.tokenize(x, **scorer_inputs)
        blocks = self.blocks[: max_index + 1] if stop_early else self.blocks
        inter = []
        for i, blk in enumerate(blocks):
            t = blk(t)
            if i in take:
                inter.append(self.norm(t) if norm else t)
        p = self.num_prefix_tokens
        prefix = [y[:, :p] for y in inter]
        inter = [y[:, p:] for y in inter]
        if output_fmt == "NCHW":
            _, meta = self.boxes_and_meta(index)
            g = self.geometry
            inter = [reverse_quadtree(y, meta, g.height, g.width, g.p_min) for y in inter]
        if return_prefix_tokens and p:
            inter = list(zip(inter, prefix))
        if intermediates_only:
            return inter
        return self.norm(t), inter

    # -- compute ----------------------------------------------------------------------------
    def gmacs(self, attention: bool = True) -> float:
        """GMACs per image: see :func:`vit_gmacs`, plus the scorer's own MACs."""
        scorer = self.scorer.gmacs(self.geometry) if self.scorer is not None else 0.0
        return vit_gmacs(self, self.num_patches, attention) + scorer


class UniformViT(ReconstructionArgs, VisionTransformer):
    """Vanilla baseline at equal N: ``num_patches`` uniform p-px patches of the input image
    down-scaled to ``(gh*p, gw*p)`` (reference 2x2-centre mean for power-of-two factors, so
    e.g. N=64 on 256 px equals 32-px mosaic tokens; antialiased bilinear otherwise).

    ``pos_embed='sincos'``: the project's rule at cell centres ``(col+0.5, row+0.5)`` of the
    token grid; ``'learn'``: timm's learned table."""

    def __init__(
        self,
        img_size: int | tuple[int, int] = 256,
        patch_size: int = 16,
        num_patches: int | None = None,
        grid: tuple[int, int] | None = None,
        pos_embed: str = "sincos",
        resample: str = "auto",
        **vit_kwargs: Any,
    ) -> None:
        h, w = _pair(img_size)
        if grid is None:
            grid = uniform_grid_for_budget(num_patches or (h // patch_size) * (w // patch_size), (h, w))
        gh, gw = grid
        if num_patches is not None and gh * gw != num_patches:
            raise ValueError(f"grid {grid} does not hold num_patches={num_patches}")
        if pos_embed not in ("sincos", "learn"):
            raise ValueError(f"pos_embed={pos_embed!r}; use 'sincos' or 'learn'")
        vit_kwargs.pop("dynamic_img_size", None)
        super().__init__(img_size=(gh * patch_size, gw * patch_size), patch_size=patch_size,
                         pos_embed="none" if pos_embed == "sincos" else "learn", **vit_kwargs)
        self.input_size = (h, w)
        self.grid = (gh, gw)
        self.resample = resample
        self.pos_embed_type = pos_embed
        if pos_embed == "sincos":
            rows, cols = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
            meta = torch.stack([cols.flatten() + 0.5, rows.flatten() + 0.5, torch.zeros(gh * gw)], -1)
            self.register_buffer("sincos", sincos_2d(meta, self.embed_dim)[None], persistent=False)
        for info in self.feature_info:  # maps of the token grid, on the input image's scale
            info["reduction"] = h / gh

    def tokenizer_args(self) -> dict[str, Any]:
        return dict(patch_size=self.patch_embed.patch_size[0], num_patches=self.num_patches, grid=list(self.grid),
                    pos_embed=self.pos_embed_type, resample=self.resample)

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def downscale(self, x: Tensor) -> Tensor:
        if tuple(x.shape[-2:]) != self.input_size:
            raise ValueError(f"images of shape {tuple(x.shape)} do not match img_size {self.input_size}")
        gh, gw = self.grid
        p = self.patch_embed.patch_size[0]
        return downscale_image(x, (gh * p, gw * p), self.resample)

    def _pos_embed(self, x: Tensor) -> Tensor:
        if self.pos_embed_type != "sincos":
            return super()._pos_embed(x)
        x = x.view(x.shape[0], -1, x.shape[-1]) + self.sincos.to(x.dtype)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], 1)
        return self.pos_drop(x)

    def forward_features(self, x: Tensor, **_: Any) -> Tensor:  # type: ignore[override]
        return super().forward_features(self.downscale(x))

    def forward_intermediates(self, x: Tensor, *args: Any, **kwargs: Any):  # type: ignore[override]
        return super().forward_intermediates(self.downscale(x), *args, **kwargs)

    def forward(self, x: Tensor, **_: Any) -> Tensor:  # type: ignore[override]
        return self.forward_head(self.forward_features(x))

    def gmacs(self, attention: bool = True) -> float:
        return vit_gmacs(self, self.num_patches, attention)


def vit_gmacs(model: VisionTransformer, num_patches: int, attention: bool = True) -> float:
    """Analytic GMACs per image (``docs/design/mixed_resolution.md`` §10): qkv, proj and MLP matmuls
    (``12*T*D^2`` per layer for mlp_ratio 4) + patch embedding of N tokens, with T = N + prefix;
    ``attention`` adds the two attention products ``2*T^2*D`` per layer. Norms, softmax,
    GELU and the head are excluded."""
    d = model.embed_dim
    t = num_patches + model.num_prefix_tokens
    blk = model.blocks[0]
    hidden = blk.mlp.fc1.out_features
    per_layer = 4 * t * d * d + 2 * t * d * hidden
    if attention:
        per_layer += 2 * t * t * d
    proj = model.patch_embed.proj
    embed = num_patches * proj.in_channels * proj.kernel_size[0] * proj.kernel_size[1] * d
    return (len(model.blocks) * per_layer + embed) / 1e9


# ------------------------------------------------------------------------------------------
# Vanilla checkpoints
# ------------------------------------------------------------------------------------------


#: keys a vanilla ViT checkpoint cannot provide: left at the model's own values
OWN_KEYS = ("head.weight", "head.bias", "cls_pos", "pos_grid.grid")


def _convert(state: dict[str, Tensor], model: nn.Module) -> tuple[dict[str, Tensor], list[str]]:
    """(converted state, keys taken from the model itself because the checkpoint lacks them)."""
    state = dict(state)
    own = model.state_dict()
    vanilla = set(state) != set(own)  # a native state dict has exactly the model's keys
    pos = state.pop("pos_embed", None)
    npt = getattr(model, "num_prefix_tokens", 1)
    if isinstance(model, Quadformer) and pos is not None:
        has_cls_pos = pos.shape[1] > 1 and math.isqrt(pos.shape[1] - npt) ** 2 == pos.shape[1] - npt
        prefix = npt if has_cls_pos else 0
        if model.pos_embed_type == "sincos":
            if prefix and "cls_token" in state:
                state["cls_token"] = state["cls_token"] + pos[:, :prefix]
        else:
            gh, gw = model.pos_grid.grid_hw
            resized = resample_abs_pos_embed(pos, new_size=[gh, gw], num_prefix_tokens=prefix)
            state["pos_grid.grid"] = resized[:, prefix:].reshape(1, gh, gw, -1).permute(0, 3, 1, 2)
            if model.cls_pos is not None:
                state["cls_pos"] = resized[:, :prefix] if prefix else torch.zeros_like(model.cls_pos)
    elif isinstance(model, UniformViT) and pos is not None and model.pos_embed is not None:
        gh, gw = model.grid
        state["pos_embed"] = resample_abs_pos_embed(pos, new_size=[gh, gw], num_prefix_tokens=npt)
    elif isinstance(model, UniformViT) and pos is not None and "cls_token" in state:
        g = pos.shape[1] - npt
        if math.isqrt(g) ** 2 == g:
            state["cls_token"] = state["cls_token"] + pos[:, :npt]
    for k in ("head.weight", "head.bias"):
        if k in state and k in own and state[k].shape != own[k].shape:
            state.pop(k)
            vanilla = True
    w = state.get("patch_embed.proj.weight")
    if w is not None and w.shape != own["patch_embed.proj.weight"].shape:
        raise ValueError(
            f"checkpoint patch embedding {tuple(w.shape)} does not fit the model's "
            f"{tuple(own['patch_embed.proj.weight'].shape)}; use a checkpoint with the same patch size "
            f"(kernel resampling is opt-in: timm.layers.resample_patch_embed)"
        )
    filled = []
    if vanilla:
        filled = [k for k in own if k not in state and (k in OWN_KEYS or k.startswith("scorer."))]
        state.update({k: own[k] for k in filled})
    return state, filled


def convert_vanilla_state_dict(state: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Map a timm ViT state dict onto ``model`` (a :class:`Quadformer` or :class:`UniformViT`);
    timm's ``pretrained_filter_fn`` of our models (a native state dict passes unchanged).

    ``pos_embed`` ``[1, P+G, D]``: for a Quadformer with sincos the cls position vector is
    folded into ``cls_token`` and the grid dropped; with learned_grid the grid is resized as
    timm does into ``pos_grid`` and the cls vector kept on cls (``cls_pos``); for the uniform
    model resized to its grid (``pos_embed='learn'``) or, for sincos, its cls part folded. The
    scorer's weights, and a head of another shape (fine-tuning to a new label space), stay
    the model's own."""
    return _convert(state, model)[0]


def load_vanilla_checkpoint(model: nn.Module, checkpoint: str | os.PathLike | dict[str, Tensor],
                            strict: bool = True) -> list[str]:
    """Load a vanilla timm ViT checkpoint (path to .safetensors/.pth, or a state dict) into
    ``model``. Returns the keys left at their initial values (e.g. a new head). Never downloads."""
    state = read_state_dict(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else checkpoint
    state, filled = _convert(state, model)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if strict and unexpected:
        raise ValueError(f"checkpoint has keys the model lacks: {unexpected[:8]} (is it another architecture?)")
    if strict and missing:
        raise ValueError(f"checkpoint lacks {len(missing)} model keys, e.g. {missing[:8]} (is it another "
                         f"architecture?)")
    return [k for k in filled if not k.startswith("scorer.")]
