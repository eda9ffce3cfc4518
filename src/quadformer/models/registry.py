"""The timm entry points of the Quadformer and of the vanilla baseline at equal N.

Built as timm builds its own ViTs: one ``@register_model`` function per name, a
``pretrained_cfg`` per model (:data:`default_cfgs`) and :func:`timm.models.build_model_with_cfg`,
so ``pretrained=True``, ``pretrained_cfg_overlay=dict(file=...)``, ``features_only=True``,
``save_for_hf``/``push_to_hf_hub`` and ``local-dir:``/``hf-hub:`` names work as for any timm
model. ``pretrained=True`` loads the matching vanilla timm ViT (same width, depth and patch
size; e.g. ``quadformer_small_patch16_224`` <- ``vit_small_patch16_224.augreg_in21k_ft_in1k``)
through timm's own mechanism (the Hugging Face cache, a download only then, or the overlay's
file), converted by :func:`~quadformer.models.quadformer.convert_vanilla_state_dict`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import (
    build_model_with_cfg,
    generate_default_cfgs,
    get_pretrained_cfg,
    register_model,
    resolve_pretrained_cfg,
)
from torch import nn

from ..utils.errors import QuadformerError
from .quadformer import Quadformer, UniformViT, convert_vanilla_state_dict


def _cfg(res: int, **kwargs: Any) -> dict[str, Any]:
    return {
        "input_size": (3, res, res), "fixed_input_size": True, "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD, "num_classes": 1000, "interpolation": "bicubic", "crop_pct": 0.875,
        "first_conv": "patch_embed.proj", "classifier": "head", "paper_ids": "arXiv:2304.00287", **kwargs,
    }


def _hub(vanilla: str, res: int) -> dict[str, Any]:
    """The vanilla timm ViT's weights and the preprocessing they were trained with, at our size."""
    v = get_pretrained_cfg(vanilla)
    return _cfg(res, hf_hub_id=v.hf_hub_id, mean=v.mean, std=v.std, crop_pct=v.crop_pct,
                interpolation=v.interpolation, license=v.license, origin_url=v.origin_url,
                notes=(f"backbone weights of {vanilla}; the tokenizer's position embedding converted",))


def _check_source(variant: str, kwargs: dict[str, Any]) -> str | None:
    """The hub id ``pretrained=True`` will read; no weights source or a missing file: one line
    naming the fix."""
    cfg = resolve_pretrained_cfg(variant, kwargs.get("pretrained_cfg"), kwargs.get("pretrained_cfg_overlay"))
    if cfg.source == "local-dir" or cfg.state_dict is not None:
        return None
    if cfg.file:
        if not Path(cfg.file).is_file():
            raise QuadformerError(f"pretrained weights file not found: {cfg.file}; pass an existing vanilla timm "
                                  f"ViT checkpoint as pretrained_cfg_overlay=dict(file=...)")
        return None
    if not (cfg.hf_hub_id or cfg.url):
        raise QuadformerError(f"{variant} has no pretrained weights (no vanilla timm ViT of its size); pass a "
                              f"checkpoint as pretrained_cfg_overlay=dict(file='vit.safetensors'), or "
                              f"pretrained=False")
    return cfg.hf_hub_id or cfg.url


def _create(cls: type[nn.Module], variant: str, pretrained: bool = False, **kwargs: Any) -> Any:
    """``build_model_with_cfg`` with the vanilla-checkpoint filter and a ``getter`` feature
    wrapper (``forward_intermediates``); weights that cannot be fetched are a one-line error."""
    out_indices = kwargs.pop("out_indices", 3)
    remote = _check_source(variant, kwargs) if pretrained else None
    try:
        return build_model_with_cfg(cls, variant, pretrained, pretrained_filter_fn=convert_vanilla_state_dict,
                                    feature_cfg=dict(out_indices=out_indices, feature_cls="getter"), **kwargs)
    except OSError as e:  # huggingface_hub's LocalEntryNotFoundError, a connection error
        if not remote:
            raise
        raise QuadformerError(f"the pretrained weights of {variant} ({remote}) are not in the local Hugging Face "
                              f"cache and cannot be downloaded here ({e.__class__.__name__}); download them where "
                              f"there is a network (`hf download {remote}`), or pass a local file as "
                              f"pretrained_cfg_overlay=dict(file='vit.safetensors')") from None


default_cfgs = generate_default_cfgs({
    "quadformer_micro_patch8_128": _cfg(128),
    "uniform_vit_micro_patch8_128": _cfg(128),
    "quadformer_micro_patch4_32": _cfg(32),
    "uniform_vit_micro_patch4_32": _cfg(32),
    "quadformer_nano_patch4_32": _cfg(32),
    "uniform_vit_nano_patch4_32": _cfg(32),
    "quadformer_tiny_patch16_256.augreg_in21k_ft_in1k": _hub("vit_tiny_patch16_224.augreg_in21k_ft_in1k", 256),
    "uniform_vit_tiny_patch16_256.augreg_in21k_ft_in1k": _hub("vit_tiny_patch16_224.augreg_in21k_ft_in1k", 256),
    "quadformer_tiny_patch16_224.augreg_in21k_ft_in1k": _hub("vit_tiny_patch16_224.augreg_in21k_ft_in1k", 224),
    "uniform_vit_tiny_patch16_224.augreg_in21k_ft_in1k": _hub("vit_tiny_patch16_224.augreg_in21k_ft_in1k", 224),
    "quadformer_small_patch16_256.augreg_in21k_ft_in1k": _hub("vit_small_patch16_224.augreg_in21k_ft_in1k", 256),
    "uniform_vit_small_patch16_256.augreg_in21k_ft_in1k": _hub("vit_small_patch16_224.augreg_in21k_ft_in1k", 256),
    "quadformer_small_patch16_224.augreg_in21k_ft_in1k": _hub("vit_small_patch16_224.augreg_in21k_ft_in1k", 224),
    "uniform_vit_small_patch16_224.augreg_in21k_ft_in1k": _hub("vit_small_patch16_224.augreg_in21k_ft_in1k", 224),
    "quadformer_small_patch16_384.augreg_in21k_ft_in1k": _hub("vit_small_patch16_384.augreg_in21k_ft_in1k", 384),
    "uniform_vit_small_patch16_384.augreg_in21k_ft_in1k": _hub("vit_small_patch16_384.augreg_in21k_ft_in1k", 384),
    "quadformer_base_patch16_256.augreg2_in21k_ft_in1k": _hub("vit_base_patch16_224.augreg2_in21k_ft_in1k", 256),
    "uniform_vit_base_patch16_256.augreg2_in21k_ft_in1k": _hub("vit_base_patch16_224.augreg2_in21k_ft_in1k", 256),
    "quadformer_base_patch16_224.augreg2_in21k_ft_in1k": _hub("vit_base_patch16_224.augreg2_in21k_ft_in1k", 224),
    "uniform_vit_base_patch16_224.augreg2_in21k_ft_in1k": _hub("vit_base_patch16_224.augreg2_in21k_ft_in1k", 224),
    "quadformer_base_patch16_384.augreg_in21k_ft_in1k": _hub("vit_base_patch16_384.augreg_in21k_ft_in1k", 384),
    "uniform_vit_base_patch16_384.augreg_in21k_ft_in1k": _hub("vit_base_patch16_384.augreg_in21k_ft_in1k", 384),
    "quadformer_large_patch16_256.augreg_in21k_ft_in1k": _hub("vit_large_patch16_224.augreg_in21k_ft_in1k", 256),
    "uniform_vit_large_patch16_256.augreg_in21k_ft_in1k": _hub("vit_large_patch16_224.augreg_in21k_ft_in1k", 256),
    "quadformer_large_patch16_384.augreg_in21k_ft_in1k": _hub("vit_large_patch16_384.augreg_in21k_ft_in1k", 384),
    "uniform_vit_large_patch16_384.augreg_in21k_ft_in1k": _hub("vit_large_patch16_384.augreg_in21k_ft_in1k", 384),
})


@register_model
def quadformer_micro_patch8_128(pretrained: bool = False, **kwargs: Any) -> Quadformer:
    """Quadformer-Micro: patches 8..32 px at 128 px, default N=64."""
    model_args = dict(patch_size=8, max_patch_size=32, num_patches=64, embed_dim=128, depth=4, num_heads=4)
    return _create(Quadformer, "quadformer_micro_patch8_128", pretrained, **dict(model_args, **kwargs))


@register_model
def uniform_vit_micro_patch8_128(pretrained: bool = False, **kwargs: Any) -> UniformViT:
    """Vanilla ViT-Micro at equal N: 8-px patches of the 128-px image down-scaled, default N=64."""
    model_args = dict(patch_size=8, num_patches=64, embed_dim=128, depth=4, num_heads=4)
    return _create(UniformViT, "uniform_vit_micro_patch8_128", pretrained, **dict(model_args, **kwargs))


@register_model
def quadformer_micro_patch4_32(pretrained: bool = False, **kwargs: Any) -> Quadformer:
    """Quadformer-Micro: patches 4..16 px at 32 px, default N=28."""
    model_args = dict(patch_size=4, max_patch_size=16, num_patches=28, embed_dim=128, depth=4, num_heads=4)
    return _create(Quadformer, "quadformer_micro_patch4_32", pretrained, **dict(model_args, **kwargs))


@register_model
def uniform_vit_micro_patch4_32(pretrained: bool = False, **kwargs: Any) -> UniformViT:
    """Vanilla ViT-Micro at equal N: 4-px patches of the 32-px image down-scaled, default N=28."""
    model_args = dict(patch_size=4, num_patches=28, embed_dim=128, depth=4, num_heads=4)
    return _create(UniformViT, "uniform_vit_micro_patch4_32", pretrained, **dict(model_args, **kwargs))


@register_model
def quadformer_nano_patch4_32(pretrained: bool = False, **kwargs: Any) -> Quadformer:
    """Quadformer-Nano: patches 4..16 px at 32 px, default N=28."""
    model_args = dict(patch_size=4, max_patch_size=16, num_patches=28, embed_dim=64, depth=4, num_heads=2)
    return _create(Quadformer, "quadformer_nano_patch4_32", pretrained, **dict(model_args, **kwargs))


@register_model
def uniform_vit_nano_patch4_32(pretrained: bool = False, **kwargs: Any) -> UniformViT:
    """Vanilla ViT-Nano at equal N: 4-px patches of the 32-px image down-scaled, default N=28."""
    model_args = dict(patch_size=4, num_patches=28, embed_dim=64, depth=4, num_heads=2)
    return _create(UniformViT, "uniform_vit_nano_patch4_32", pretrained, **dict(model_args, **kwargs))


@register_model
def quadformer_tiny_patch16_256(pretrained: bool = False, **kwargs: Any) -> Quadformer:
    """Quadformer-Tiny: patches 16..64 px at 256 px, default N=100.

    ``pretrained=True``: ``vit_tiny_patch16_224.augreg_in21k_ft_in1k``."""
    model_args = dict(patch_size=16, max_patch_size=64, num_patches=100, embed_dim=192, depth=12, num_heads=3)
    return _create(Quadformer, "quadformer_tiny_patch16_256", pretrained, **dict(model_args, **kwargs))


@register_model
def uniform_vit_tiny_patch16_256(pretrained: bool = False, **kwargs: Any) -> UniformViT:
    """Vanilla ViT-Tiny at equal N: 16-px patches of the 256-px image down-scaled, default N=100.

    ``pretrained=True``: ``vit_tiny_patch16_224.augreg_in21k_ft_in1k``."""
    model_args = dict(patch_size=16, num_patches=100, embed_dim=192, depth=12, num_heads=3)
    return _create(UniformViT, "uniform_vit_tiny_patch16_256", pretrained, **dict(model_args, **kwargs))


@register_model
def quadformer_tiny_patch16_224(pretrained: bool = False, **kwargs: Any) -> Quadformer:
    """Quadformer-Tiny: patches 16..32 px at 224 px, default N=100.

    ``pretrained=True``: ``vit_tiny_patch16_224.augreg_in21k_ft_in1k``."""
    model_args = dict(patch_size=16, max_patch_size=32, num_patches=100, embed_dim=192, depth=12, num_heads=3)
    return _create(Quadformer, "quadformer_tiny_patch16_224", pretrained, **dict(model_args, **kwargs))


@register_model
def uniform_vit_tiny_patch16_224(pretrained: bool = False, **kwargs: Any) -> UniformViT:
    """Vanilla ViT-Tiny at equal N: 16-px patches of the 224-px image down-scaled, default N=100.

    ``pretrained=True``: ``vit_tiny_patch16_224.augreg_in21k_ft_in1k``."""
    model_args = dict(patch_size=16, num_patches=100, embed_dim=192, depth=12, num_heads=3)
    return _create(UniformViT, "uniform_vit_tiny_patch16_224", pretrained, **dict(model_args, **kwargs))


@register_model
def quadformer_small_patch16_256(pretrained: bool = False, **kwargs: Any) -> Quadformer:
    """Quadformer-Small: patches 16..64 px at 256 px, default N=100.

    ``pretrained=True``: ``vit_small_patch16_224.augreg_in21k_ft_in1k``."""
    model_args = dict(patch_size=16, max_patch_size=64, num_patches=100, embed_dim=384, depth=12, num_heads=6)
    return _create(Quadformer, "quadformer_small_patch16_256", pretrained, **dict(model_args, **kwargs))


@register_model
def uniform_vit_small_patch16_256(pretrained: bool = False, **kwargs: Any) -> UniformViT:
    """Vanilla ViT-Small at equal N: 16-px patches of the 256-px image down-scaled, default N=100.

    ``pretrained=True``: ``vit_small_patch16_224.augreg_in21k_ft_in1k``."""
    model_args = dict(patch_size=16, num_patches=100, embed_dim=384, depth=12, num_heads=6)
    return _create(UniformViT, "uniform_vit_small_patch16_256", pretrained, **dict(model_args, **kwargs))


@register_model
def quadformer_small_patch16_224(pretrained: bool = False, **kwargs: Any) -> Quadformer:
    """Quadformer-Small: patches 16..32 px at 224 px, default N=100.

    ``pretrained=True``: ``vit_small_patch16_224.augreg_in21k_ft_in1k``."""
    model_args = dict(patch_size=16, max_patch_size=32, num_patches=100, embed_dim=384, depth=12, num_heads=6)
    return _create(Quadformer, "quadformer_small_patch16_224", pretrained, **dict(model_args, **kwargs))


@register_model
def uniform_vit_small_patch16_224(pretrained: bool = False, **kwargs: Any) -> UniformViT:
    """Vanilla ViT-Small at equal N: 16-px patches of the 224-px image down-scaled, default N=100.

    ``pretrained=True``: ``vit_small_patch16_224.augreg_in21k_ft_in1k``."""
    model_args = dict(patch_size=16, num_patches=100, embed_dim=384, depth=12, num_heads=6)
    return _create(UniformViT, "uniform_vit_small_patch16_224", pretrained, **dict(model_args, **kwargs))


@register_model
def quadformer_small_patch16_384(pretrained: bool = False, **kwargs: Any) -> Quadformer:
    """Quadformer-Small: patches 16..64 px at 384 px, default N=144.

    ``pretrained=True``: ``vit_small_patch16_384.augreg_in21k_ft_in1k``."""
    model_args = dict(patch_size=16, max_patch_size=64, num_patches=144, embed_dim=384, depth=12, num_heads=6)
    return _create(Quadformer, "quadformer_small_patch16_384", pretrained, **dict(model_args, **kwargs))


@register_model
def uniform_vit_small_patch16_384(pretrained: bool = False, **kwargs: Any) -> UniformViT:
    """Vanilla ViT-Small at equal N: 16-px patches of the 384-px image down-scaled, default N=144.

    ``pretrained=True``: ``vit_small_patch16_384.augreg_in21k_ft_in1k``."""
    model_args = dict(patch_size=16, num_patches=144, embed_dim=384, depth=12, num_heads=6)
    return _create(UniformViT, "uniform_vit_small_patch16_384", pretrained, **dict(model_args, **kwargs))


@register_model
def quadformer_base_patch16_256(pretrained: bool = False, **kwargs: Any) -> Quadformer:
    """Quadformer-Base: patches 16..64 px at 256 px, default N=100.

    ``pretrained=True``: ``vit_base_patch16_224.augreg2_in21k_ft_in1k``."""
    model_args = dict(patch_size=16, max_patch_size=64, num_patches=100, embed_dim=768, depth=12, num_heads=12)
    return _create(Quadformer, "quadformer_base_patch16_256", pretrained, **dict(model_args, **kwargs))


@register_model
def uniform_vit_base_patch16_256(pretrained: bool = False, **kwargs: Any) -> UniformViT:
    """Vanilla ViT-Base at equal N: 16-px patches of the 256-px image down-scaled, default N=100.

    ``pretrained=True``: ``vit_base_patch16_224.augreg2_in21k_ft_in1k``."""
    model_args = dict(patch_size=16, num_patches=100, embed_dim=768, depth=12, num_heads=12)
    return _create(UniformViT, "uniform_vit_base_patch16_256", pretrained, **dict(model_args, **kwargs))


@register_model
def quadformer_base_patch16_224(pretrained: bool = False, **kwargs: Any) -> Quadformer:
    """Quadformer-Base: patches 16..32 px at 224 px, default N=100.

    ``pretrained=True``: ``vit_base_patch16_224.augreg2_in21k_ft_in1k``."""
    model_args = dict(patch_size=16, max_patch_size=32, num_patches=100, embed_dim=768, depth=12, num_heads=12)
    return _create(Quadformer, "quadformer_base_patch16_224", pretrained, **dict(model_args, **kwargs))


@register_model
def uniform_vit_base_patch16_224(pretrained: bool = False, **kwargs: Any) -> UniformViT:
    """Vanilla ViT-Base at equal N: 16-px patches of the 224-px image down-scaled, default N=100.

    ``pretrained=True``: ``vit_base_patch16_224.augreg2_in21k_ft_in1k``."""
    model_args = dict(patch_size=16, num_patches=100, embed_dim=768, depth=12, num_heads=12)
    return _create(UniformViT, "uniform_vit_base_patch16_224", pretrained, **dict(model_args, **kwargs))


@register_model
def quadformer_base_patch16_384(pretrained: bool = False, **kwargs: Any) -> Quadformer:
    """Quadformer-Base: patches 16..64 px at 384 px, default N=144.

    ``pretrained=True``: ``vit_base_patch16_384.augreg_in21k_ft_in1k``."""
    model_args = dict(patch_size=16, max_patch_size=64, num_patches=144, embed_dim=768, depth=12, num_heads=12)
    return _create(Quadformer, "quadformer_base_patch16_384", pretrained, **dict(model_args, **kwargs))


@register_model
def uniform_vit_base_patch16_384(pretrained: bool = False, **kwargs: Any) -> UniformViT:
    """Vanilla ViT-Base at equal N: 16-px patches of the 384-px image down-scaled, default N=144.

    ``pretrained=True``: ``vit_base_patch16_384.augreg_in21k_ft_in1k``."""
    model_args = dict(patch_size=16, num_patches=144, embed_dim=768, depth=12, num_heads=12)
    return _create(UniformViT, "uniform_vit_base_patch16_384", pretrained, **dict(model_args, **kwargs))


@register_model
def quadformer_large_patch16_256(pretrained: bool = False, **kwargs: Any) -> Quadformer:
    """Quadformer-Large: patches 16..64 px at 256 px, default N=100.

    ``pretrained=True``: ``vit_large_patch16_224.augreg_in21k_ft_in1k``."""
    model_args = dict(patch_size=16, max_patch_size=64, num_patches=100, embed_dim=1024, depth=24, num_heads=16)
    return _create(Quadformer, "quadformer_large_patch16_256", pretrained, **dict(model_args, **kwargs))


@register_model
def uniform_vit_large_patch16_256(pretrained: bool = False, **kwargs: Any) -> UniformViT:
    """Vanilla ViT-Large at equal N: 16-px patches of the 256-px image down-scaled, default N=100.

    ``pretrained=True``: ``vit_large_patch16_224.augreg_in21k_ft_in1k``."""
    model_args = dict(patch_size=16, num_patches=100, embed_dim=1024, depth=24, num_heads=16)
    return _create(UniformViT, "uniform_vit_large_patch16_256", pretrained, **dict(model_args, **kwargs))


@register_model
def quadformer_large_patch16_384(pretrained: bool = False, **kwargs: Any) -> Quadformer:
    """Quadformer-Large: patches 16..64 px at 384 px, default N=144.

    ``pretrained=True``: ``vit_large_patch16_384.augreg_in21k_ft_in1k``."""
    model_args = dict(patch_size=16, max_patch_size=64, num_patches=144, embed_dim=1024, depth=24, num_heads=16)
    return _create(Quadformer, "quadformer_large_patch16_384", pretrained, **dict(model_args, **kwargs))


@register_model
def uniform_vit_large_patch16_384(pretrained: bool = False, **kwargs: Any) -> UniformViT:
    """Vanilla ViT-Large at equal N: 16-px patches of the 384-px image down-scaled, default N=144.

    ``pretrained=True``: ``vit_large_patch16_384.augreg_in21k_ft_in1k``."""
    model_args = dict(patch_size=16, num_patches=144, embed_dim=1024, depth=24, num_heads=16)
    return _create(UniformViT, "uniform_vit_large_patch16_384", pretrained, **dict(model_args, **kwargs))
