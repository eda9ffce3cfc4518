"""Models registered with timm: ``quadformer_*`` (mosaic tokens) and ``uniform_vit_*``
(vanilla ViT at equal N). Importing this package registers them."""

from . import scorer_backbone  # noqa: F401  (registers shufflenet_v2_x0_5_tv)
from .quadformer import (
    SIZES,
    Quadformer,
    UniformViT,
    convert_vanilla_state_dict,
    load_hub_cached,
    load_vanilla_checkpoint,
    vit_gmacs,
)

__all__ = ["SIZES", "Quadformer", "UniformViT", "convert_vanilla_state_dict", "load_hub_cached",
           "load_vanilla_checkpoint", "vit_gmacs"]
