"""Building models by name: one entry point for training, evaluation and studies.

Models never import training code: the engine passes the fields of its ``model`` config
section here, and :func:`~quadformer.models.loading.load_model` rebuilds a saved model the
same way.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..utils.errors import QuadformerError


def is_ours(name: str) -> bool:
    """A model of this package (takes ``img_size`` and ``num_patches``)."""
    return name.startswith(("quadformer_", "uniform_vit_"))


def build_model(name: str, num_classes: int, image_size: int, num_patches: int | None = None,
                kwargs: dict[str, Any] | None = None, vanilla_checkpoint: str | None = None) -> nn.Module:
    """``timm.create_model`` for any timm name; ours get ``img_size`` and ``num_patches``.

    ``vanilla_checkpoint``: a vanilla timm ViT weights file converted into ours
    (:func:`~quadformer.models.quadformer.load_vanilla_checkpoint`), or timm's
    ``checkpoint_path`` for any other model."""
    import timm

    from .quadformer import load_vanilla_checkpoint

    kwargs = dict(kwargs or {})
    if is_ours(name):
        kwargs.setdefault("img_size", image_size)
        if num_patches is not None:
            kwargs["num_patches"] = num_patches
    elif vanilla_checkpoint:
        kwargs["checkpoint_path"] = vanilla_checkpoint
    try:
        model = timm.create_model(name, num_classes=num_classes, **kwargs)
    except RuntimeError as e:
        if "Unknown model" in str(e):
            close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
            raise QuadformerError(f"unknown model {name!r}; e.g. {', '.join(close)}") from None
        raise
    except OSError as e:  # a hub name: not in the local cache and no network, or a folder without config.json
        if name.startswith(("hf-hub:", "local-dir:")):
            raise QuadformerError(f"model {name!r} cannot be read ({e.__class__.__name__}); for hf-hub: names "
                                  f"download it where there is a network, for local-dir: pass a folder written "
                                  f"by timm.models.save_for_hf") from None
        raise
    if vanilla_checkpoint and is_ours(name):
        load_vanilla_checkpoint(model, vanilla_checkpoint)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP wrapper."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def model_gmacs(model: nn.Module, image_size: int) -> tuple[float, str]:
    """GMACs per image and the convention used: ours analytic (scorer included), any other
    model by ``torch.utils.flop_counter.FlopCounterMode``."""
    model = unwrap(model)
    if hasattr(model, "gmacs"):
        return float(model.gmacs()), "analytic: qkv/proj/MLP/attention matmuls + patch embed + scorer"
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 3, image_size, image_size, device=next(model.parameters()).device)
    was = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(x)
    model.train(was)
    return fc.get_total_flops() / 2e9, "torch FlopCounterMode / 2 (matmul and conv MACs)"


def classifier_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the model's classifier (timm's ``get_classifier``), empty without one.

    A distilled model (timm DeiT) returns a tuple of heads (``head``, ``head_dist``): the keys
    of every one, so a new head replaces both and no measurement counts either."""
    clf = model.get_classifier() if hasattr(model, "get_classifier") else None
    heads = [m for m in (clf if isinstance(clf, (tuple, list)) else (clf,))
             if isinstance(m, nn.Module) and not isinstance(m, nn.Identity)]
    keys: set[str] = set()
    for name, mod in model.named_modules():
        if any(mod is h for h in heads):
            keys |= {f"{name}.{k}" for k in mod.state_dict()}
    return keys
