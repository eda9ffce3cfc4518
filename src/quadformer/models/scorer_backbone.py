"""The feature scorer's backbone as a trainable timm-registered classifier.

No ImageNet weights can be downloaded here, so ``quadformer train-scorer`` trains torchvision's
ShuffleNetV2-x0.5 with the normal engine; its state dict (torchvision names) loads straight
into :class:`~quadformer.tokenize.scorers.FeatureScorer` (``weights=path``).
"""

from __future__ import annotations

from typing import Any

from timm.models import register_model
from torch import nn


@register_model
def shufflenet_v2_x0_5_tv(pretrained: bool = False, num_classes: int = 1000, **kwargs: Any) -> nn.Module:
    """torchvision ShuffleNetV2-x0.5 (random init; never downloads)."""
    from torchvision.models import shufflenet_v2_x0_5

    for k in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir", "img_size", "num_patches"):
        kwargs.pop(k, None)
    if pretrained:
        raise ValueError("shufflenet_v2_x0_5_tv has no downloadable weights here; train one with "
                         "`quadformer train-scorer`")
    model = shufflenet_v2_x0_5(weights=None, num_classes=num_classes, **kwargs)
    model.pretrained_cfg = model.default_cfg = {"input_size": (3, 224, 224), "num_classes": num_classes}
    return model
