"""Quadformer and its vanilla baseline at equal N, on timm's ``VisionTransformer`` (spec §9, §10).

* :class:`Quadformer`: mixed-resolution tokenizer + unmodified timm blocks/norm/head.
  State-dict names equal timm's (``patch_embed.proj``, ``cls_token``, ``blocks.*`` ...), so
  a vanilla ViT checkpoint loads except ``pos_embed``: folded into ``cls_token`` (cls part)
  and dropped for ``sincos``, resampled into ``pos_grid`` for ``learned_grid``.
* :class:`UniformViT`: the vanilla baseline at equal N, a uniform grid on a down-scaled image.

Both register with timm (``timm.create_model("quadformer_small_patch16_256", num_patches=100)``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from timm.layers import resample_abs_pos_embed
from timm.models import register_model
from timm.models._features import feature_take_indices
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from ..tokenize import QuadGeometry
from ..tokenize.patch_embed import TokenPatchEmbed
from ..tokenize.pos_embed import LearnedGridPosEmbed, POS_EMBEDS, SinCosPosEmbed, sincos_2d
from ..tokenize.quadtree import cell_tables
from ..tokenize.resample import RESAMPLE_MODES, gather_pixels
from ..tokenize.reverse import reverse_quadtree
from ..tokenize.scorers.base import PatchScorer
from ..tokenize.tokenizer import PositionTable, build_scorer, downscale_image, select, uniform_grid_for_budget
from ..utils.images import IMAGENET_MEAN, IMAGENET_STD

# name -> (embed_dim, depth, num_heads)
SIZES: dict[str, tuple[int, int, int]] = {
    "nano": (64, 4, 2),  # CPU studies on 32 px images
    "micro": (128, 4, 4),
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
}


def _pretrained_cfg(img_size: tuple[int, int], num_classes: int, arch: str) -> dict[str, Any]:
    return {
        "architecture": arch, "input_size": (3, *img_size), "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
        "num_classes": num_classes, "interpolation": "bicubic", "crop_pct": 0.875, "first_conv": "patch_embed.proj",
        "classifier": "head",
    }


def _pair(x: int | tuple[int, int]) -> tuple[int, int]:
    return (x, x) if isinstance(x, int) else (int(x[0]), int(x[1]))


class Quadformer(VisionTransformer):
    """A ViT fed a saliency-guided mosaic of ``num_patches`` tokens of sizes ``p_min..p_max``.

    ``scorer`` is a name (``pixel-blur``, ``feature``, ``random``, ``precomputed``) or a
    :class:`PatchScorer`; its weights live under ``scorer.`` and are never trained.
    ``num_patches`` can change between training and inference (:meth:`set_num_patches`).
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
        self.geometry = geometry
        self.resample = resample
        self.pos_embed_type = pos_embed
        d = self.embed_dim
        if pos_embed == "sincos":
            self.pos_grid = SinCosPosEmbed(d)
            self.cls_pos = None
        else:
            self.pos_grid = LearnedGridPosEmbed(d, (h // patch_size, w // patch_size))
            self.cls_pos = nn.Parameter(torch.zeros(1, self.num_prefix_tokens, d)) if self.num_prefix_tokens else None
        self._pos_table = PositionTable(self.pos_grid)
        self.scorer = build_scorer(scorer, **(scorer_kwargs or {}))
        if self.scorer is not None:
            self.scorer.requires_grad_(False)
        self.pretrained_cfg = self.default_cfg = _pretrained_cfg((h, w), self.num_classes, "quadformer")

    # -- budget -----------------------------------------------------------------------------
    @property
    def num_patches(self) -> int:
        return self.geometry.num_patches

    def set_num_patches(self, num_patches: int) -> None:
        """Change N (re-validated against the geometry); weights are unaffected."""
        self.geometry = self.geometry.with_budget(num_patches)

    def train(self, mode: bool = True) -> "Quadformer":
        super().train(mode)
        if self.scorer is not None:
            self.scorer.eval()  # frozen: eval mode even under model.train()
        return self

    # -- tokens -----------------------------------------------------------------------------
    def tokenize(self, x: Tensor, **scorer_inputs: Any) -> tuple[Tensor, Tensor]:
        """Images -> (embedded tokens incl. prefix ``[B, P+N, D]``, cell index ``[B, N]``)."""
        g = self.geometry
        index = select(x, g, self.scorer, **scorer_inputs)
        pixels = gather_pixels(x, index, g, self.resample)  # type: ignore[arg-type]
        t = self.patch_embed(pixels)
        t = t + self._pos_table(index, g).to(t.dtype)
        if self.cls_token is not None:
            cls = self.cls_token if self.cls_pos is None else self.cls_token + self.cls_pos
            t = torch.cat([cls.expand(t.shape[0], -1, -1).to(t.dtype), t], 1)
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


class UniformViT(VisionTransformer):
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
        self.pretrained_cfg = self.default_cfg = _pretrained_cfg((h, w), self.num_classes, "uniform_vit")

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
    """Analytic GMACs per image, the spec's convention (§10): qkv, proj and MLP matmuls
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


def _read_checkpoint(path: str) -> dict[str, Tensor]:
    from ..tokenize.scorers import read_state_dict

    return read_state_dict(path)


def convert_vanilla_state_dict(state: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Map a timm ViT state dict onto ``model`` (a :class:`Quadformer` or :class:`UniformViT`).

    ``pos_embed`` ``[1, P+G, D]``: for a Quadformer with sincos the cls position vector is
    folded into ``cls_token`` and the grid dropped; with learned_grid the grid is resized as
    timm does into ``pos_grid`` and the cls vector kept on cls (``cls_pos``). The head is
    dropped when its shape differs (fine-tuning to a new label space)."""
    state = dict(state)
    own = model.state_dict()
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
    w = state.get("patch_embed.proj.weight")
    if w is not None and w.shape != own["patch_embed.proj.weight"].shape:
        raise ValueError(
            f"checkpoint patch embedding {tuple(w.shape)} does not fit the model's "
            f"{tuple(own['patch_embed.proj.weight'].shape)}; use a checkpoint with the same patch size "
            f"(kernel resampling is opt-in: timm.layers.resample_patch_embed)"
        )
    return state


def load_vanilla_checkpoint(model: nn.Module, checkpoint: str | dict[str, Tensor], strict: bool = True) -> list[str]:
    """Load a vanilla timm ViT checkpoint (path to .safetensors/.pth, or a state dict) into
    ``model``. Returns the keys left at their initial values (e.g. a new head). Never downloads."""
    state = _read_checkpoint(checkpoint) if isinstance(checkpoint, str) else checkpoint
    state = convert_vanilla_state_dict(state, model)
    scorer_keys = {k for k in model.state_dict() if k.startswith("scorer.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in scorer_keys]
    if strict and unexpected:
        raise ValueError(f"checkpoint has keys the model lacks: {unexpected[:8]} (is it another architecture?)")
    allowed_missing = {"head.weight", "head.bias", "cls_pos", "pos_grid.grid"}
    bad = [k for k in missing if k not in allowed_missing]
    if strict and bad:
        raise ValueError(f"checkpoint lacks {len(bad)} model keys, e.g. {bad[:8]} (is it another architecture?)")
    return missing


def load_hub_cached(model: nn.Module, timm_name: str, cache_dir: str | Path | None = None) -> list[str]:
    """Load ``timm_name``'s pretrained weights from the local Hugging Face hub cache only.

    The cache is read directly (``huggingface_hub.try_to_load_from_cache``), so nothing is ever
    downloaded: setting ``HF_HUB_OFFLINE`` at call time would not do, because huggingface_hub reads
    it once, at import."""
    from huggingface_hub import try_to_load_from_cache
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(timm_name)
    if cfg is None or not getattr(cfg, "hf_hub_id", None):
        raise ValueError(f"timm has no hub weights for {timm_name!r}; pass a local checkpoint file instead")
    repo, _, revision = cfg.hf_hub_id.partition("@")
    names = [cfg.hf_hub_filename] if getattr(cfg, "hf_hub_filename", None) else ["model.safetensors",
                                                                                 "pytorch_model.bin"]
    for name in names:
        path = try_to_load_from_cache(repo, name, cache_dir=cache_dir, revision=revision or None)
        if isinstance(path, str):
            break
    else:
        raise ValueError(f"timm weights {timm_name!r} ({repo}) are not in the local hub cache; download them "
                         f"explicitly (e.g. `hf download {repo}`), or pass a local checkpoint file")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    return load_vanilla_checkpoint(model, state)


# ------------------------------------------------------------------------------------------
# timm registry
# ------------------------------------------------------------------------------------------

_TIMM_KEYS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")


def _build(cls: type, size: str, patch: int, res: int, pretrained: bool, defaults: dict, **kwargs: Any):
    for k in _TIMM_KEYS:
        kwargs.pop(k, None)
    d, depth, heads = SIZES[size]
    vanilla = kwargs.pop("vanilla_checkpoint", None)
    hub_name = kwargs.pop("hub_name", None)
    args = dict(img_size=res, patch_size=patch, embed_dim=d, depth=depth, num_heads=heads)
    args.update(defaults)
    args.update(kwargs)
    model = cls(**args)
    if vanilla:
        load_vanilla_checkpoint(model, vanilla)
    elif pretrained:
        if not hub_name:
            raise ValueError("pretrained=True needs hub_name='<timm vanilla ViT name>' (read from the local hub "
                             "cache, never downloaded) or vanilla_checkpoint='path.safetensors'")
        load_hub_cached(model, hub_name)
    return model


def _register(size: str, patch: int, res: int, pmax: int, n: int) -> None:
    def quad(pretrained: bool = False, **kwargs: Any) -> Quadformer:
        return _build(Quadformer, size, patch, res, pretrained, {"max_patch_size": pmax, "num_patches": n}, **kwargs)

    def uni(pretrained: bool = False, **kwargs: Any) -> UniformViT:
        return _build(UniformViT, size, patch, res, pretrained, {"num_patches": n}, **kwargs)

    for fn, prefix, doc in ((quad, "quadformer", "Quadformer"), (uni, "uniform_vit", "Vanilla ViT at equal N")):
        fn.__name__ = f"{prefix}_{size}_patch{patch}_{res}"
        fn.__qualname__ = fn.__name__
        fn.__doc__ = f"{doc}-{size}: patches {patch}..{pmax} px at {res} px, default N={n}."
        fn.__module__ = __name__
        globals()[fn.__name__] = register_model(fn)


for _size, _patch, _res, _pmax, _n in [
    ("micro", 8, 128, 32, 64),
    ("micro", 4, 32, 16, 28),
    ("nano", 4, 32, 16, 28),
    ("tiny", 16, 256, 64, 100),
    ("tiny", 16, 224, 32, 100),
    ("small", 16, 256, 64, 100),
    ("small", 16, 224, 32, 100),
    ("small", 16, 384, 64, 144),
    ("base", 16, 256, 64, 100),
    ("base", 16, 224, 32, 100),
    ("base", 16, 384, 64, 144),
    ("large", 16, 256, 64, 100),
    ("large", 16, 384, 64, 144),
]:
    _register(_size, _patch, _res, _pmax, _n)
