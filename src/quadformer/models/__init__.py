"""Models registered with timm: ``quadformer_*`` (mosaic tokens) and ``uniform_vit_*``
(vanilla ViT at equal N). Importing this package (or ``quadformer``) registers them."""

from . import registry, scorer_backbone  # noqa: F401  (register the timm entry points)
from .quadformer import (
    SIZES,
    Quadformer,
    UniformViT,
    convert_vanilla_state_dict,
    load_vanilla_checkpoint,
    vit_gmacs,
)

__all__ = ["SIZES", "Quadformer", "UniformViT", "convert_vanilla_state_dict", "load_vanilla_checkpoint",
           "vit_gmacs"]
