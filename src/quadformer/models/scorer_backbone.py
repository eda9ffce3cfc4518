"""The feature scorer's backbone as a trainable timm-registered classifier.

No ImageNet weights can be downloaded here, so ``quadformer train-scorer`` trains torchvision's
ShuffleNetV2-x0.5 with the normal engine; its state dict (torchvision names) loads straight
into :class:`~quadformer.tokenize.scorers.FeatureScorer` (``weights=path``).
"""

from __future__ import annotations

from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from ..utils.errors import QuadformerError

default_cfgs = generate_default_cfgs({
    "shufflenet_v2_x0_5_tv": {"input_size": (3, 224, 224), "num_classes": 1000, "mean": IMAGENET_DEFAULT_MEAN,
                              "std": IMAGENET_DEFAULT_STD, "first_conv": "conv1.0", "classifier": "fc"},
})


def _shufflenet(num_classes: int = 1000, **kwargs: Any) -> nn.Module:
    from torchvision.models import shufflenet_v2_x0_5

    return shufflenet_v2_x0_5(weights=None, num_classes=num_classes, **kwargs)


@register_model
def shufflenet_v2_x0_5_tv(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """torchvision ShuffleNetV2-x0.5 (random init; never downloads)."""
    if pretrained:
        raise QuadformerError("shufflenet_v2_x0_5_tv has no downloadable weights here; train one with "
                              "`quadformer train-scorer`")
    for k in ("img_size", "num_patches"):  # what the engine passes to every model
        kwargs.pop(k, None)
    return build_model_with_cfg(_shufflenet, "shufflenet_v2_x0_5_tv", pretrained, kwargs_filter=("in_chans",),
                                **kwargs)
