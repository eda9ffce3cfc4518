"""Frozen feature backbones for :class:`~.feature.FeatureScorer` (spec §7).

A backbone is any module mapping ``[B, 3, h, w]`` to ``[B, C', h/stride, w/stride]`` and
carrying its ``stride``. Weights come only from a local file or an explicitly named
timm/torchvision checkpoint: nothing is ever downloaded silently.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

#: Output stride of each ShuffleNetV2 tap (spec §7): the last module kept for it.
SHUFFLENET_TAPS: dict[int, str] = {8: "stage2", 16: "stage3", 32: "conv5"}
_SHUFFLENET_ORDER = ("conv1", "maxpool", "stage2", "stage3", "stage4", "conv5")

WEIGHTS_HELP = (
    "pass weights= a local checkpoint file (.safetensors/.pth/.pt, e.g. one trained with "
    "`quadformer train-scorer`), an explicit name such as 'torchvision:IMAGENET1K_V1' or "
    "'timm:<model name>' (these may download, because you named them), or 'random' for an "
    "untrained backbone (tests only)"
)


class ShuffleNetTap(nn.Module):
    """A torchvision ShuffleNetV2 cut after the module of the requested stride (classifier
    dropped). Submodule names match torchvision's, so its state-dict keys do too."""

    def __init__(self, net: nn.Module, tap_stride: int = 32) -> None:
        super().__init__()
        if tap_stride not in SHUFFLENET_TAPS:
            raise ValueError(f"ShuffleNetV2 taps are at strides {sorted(SHUFFLENET_TAPS)}, got tap_stride={tap_stride}")
        last = _SHUFFLENET_ORDER.index(SHUFFLENET_TAPS[tap_stride])
        self.names = _SHUFFLENET_ORDER[: last + 1]
        for name in self.names:
            setattr(self, name, getattr(net, name))
        self.stride = tap_stride

    def forward(self, x: Tensor) -> Tensor:
        for name in self.names:
            x = getattr(self, name)(x)
        return x


class TimmTap(nn.Module):
    """One output of a timm ``features_only`` model, with its reduction as ``stride``."""

    def __init__(self, model: nn.Module, tap_stride: int) -> None:
        super().__init__()
        reductions = list(model.feature_info.reduction())
        if tap_stride not in reductions:
            raise ValueError(f"timm model has feature strides {reductions}, not tap_stride={tap_stride}")
        self.model = model
        self.index = reductions.index(tap_stride)
        self.stride = tap_stride

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)[self.index]


def timm_backbone(name: str, tap_stride: int = 32, pretrained: bool = True) -> TimmTap:
    """A timm backbone as ``features_only`` (``pretrained=True`` uses timm's own cache or
    download, which is allowed only because the caller named the model)."""
    import timm

    return TimmTap(timm.create_model(name, pretrained=pretrained, features_only=True), tap_stride)


def _torchvision_shufflenet(weights_name: str | None) -> nn.Module:
    from torchvision.models import ShuffleNet_V2_X0_5_Weights, shufflenet_v2_x0_5

    if weights_name is None:
        return shufflenet_v2_x0_5(weights=None)
    key = weights_name.split(".")[-1]
    try:
        enum = ShuffleNet_V2_X0_5_Weights[key]
    except KeyError:
        valid = ", ".join(ShuffleNet_V2_X0_5_Weights.__members__)
        raise ValueError(
            f"unknown torchvision weights {weights_name!r} for shufflenet_v2_x0_5; valid: {valid}"
        ) from None
    return shufflenet_v2_x0_5(weights=enum)


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a checkpoint: ``.safetensors`` or a ``torch.save`` file (``weights_only=True``)
    holding a state dict or ``{'state_dict': ...}`` / ``{'model': ...}``. A ``module.``
    (DDP) or ``backbone.`` prefix shared by all keys is stripped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights file {str(path)!r} does not exist; {WEIGHTS_HELP}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd: Mapping = load_file(str(path))
    else:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
        for key in ("state_dict", "model"):
            if isinstance(sd, Mapping) and key in sd and isinstance(sd[key], Mapping):
                sd = sd[key]
                break
    if not isinstance(sd, Mapping) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise ValueError(f"{str(path)!r} does not hold a state dict of tensors")
    sd = dict(sd)
    for prefix in ("module.", "backbone."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def load_backbone_weights(
    module: nn.Module, state_dict: Mapping[str, Tensor], allowed_extra: set[str] | None = None
) -> None:
    """Strictly load ``state_dict`` into ``module``: every key of the module must be present.
    Classifier keys (``fc.*``) and ``allowed_extra`` keys (deeper stages of a cut backbone)
    are ignored; anything else unexpected raises."""
    own = set(module.state_dict())
    extra = allowed_extra or set()
    given = {k for k in state_dict if not k.startswith("fc.")}
    missing = sorted(own - given)
    unexpected = sorted(given - own - extra)
    if missing or unexpected:
        raise ValueError(
            f"backbone weights do not match {type(module).__name__}: missing keys {missing[:8]}"
            f"{' ...' if len(missing) > 8 else ''}, unexpected keys {unexpected[:8]}"
            f"{' ...' if len(unexpected) > 8 else ''}"
        )
    module.load_state_dict({k: state_dict[k] for k in own}, strict=True)


def shufflenet_backbone(tap_stride: int = 32, weights: str | os.PathLike | None = None) -> nn.Module:
    """ShuffleNetV2-x0.5 cut at ``tap_stride`` (8: stage2, 16: stage3, 32: conv5).

    ``weights``: a local file, ``'torchvision:<enum name>'``, ``'timm:<name>'`` (then a timm
    ``features_only`` backbone of that name is returned instead) or ``'random'``.
    ``None`` raises: a scorer with silently random or downloaded weights is a trap.
    """
    if tap_stride not in SHUFFLENET_TAPS:
        raise ValueError(f"ShuffleNetV2 taps are at strides {sorted(SHUFFLENET_TAPS)}, got tap_stride={tap_stride}")
    if weights is None:
        raise ValueError(f"the feature scorer's backbone has no weights: {WEIGHTS_HELP}")
    if isinstance(weights, str) and weights.startswith("timm:"):
        return timm_backbone(weights[len("timm:"):], tap_stride, pretrained=True)
    if isinstance(weights, str) and weights.startswith("torchvision:"):
        return ShuffleNetTap(_torchvision_shufflenet(weights[len("torchvision:"):]), tap_stride)
    if isinstance(weights, str) and weights == "random":
        return ShuffleNetTap(_torchvision_shufflenet(None), tap_stride)
    if isinstance(weights, (str, os.PathLike)):
        full = _torchvision_shufflenet(None)
        tap = ShuffleNetTap(full, tap_stride)
        full_keys = {k for k in full.state_dict() if not k.startswith("fc.")}
        load_backbone_weights(tap, read_state_dict(weights), allowed_extra=full_keys)
        return tap
    raise TypeError(f"weights must be a str or path, got {type(weights).__name__}; {WEIGHTS_HELP}")


def freeze_as_buffers(module: nn.Module) -> nn.Module:
    """Turn every parameter of ``module`` into a (persistent) buffer of the same name.

    The values stay in ``state_dict()`` under the same keys and follow ``.to()``, but
    ``parameters()`` no longer yields them, so no optimizer (nor weight decay, nor a
    parameter count) of a parent model can touch them."""
    for sub in module.modules():
        for name, p in list(sub._parameters.items()):
            if p is None:
                continue
            del sub._parameters[name]
            sub.register_buffer(name, p.detach().requires_grad_(False))
    return module
