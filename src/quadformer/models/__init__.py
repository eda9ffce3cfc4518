"""Models registered with timm: ``quadformer_*`` (mosaic tokens) and ``uniform_vit_*``
(vanilla ViT at equal N). Importing this package (or ``quadformer``) registers them;
:func:`load_model` turns any model spec (timm name, run folder, checkpoint, export,
``local-dir:``/``hf-hub:`` name) into a ready network."""

from . import registry, scorer_backbone  # noqa: F401  (register the timm entry points)
from .factory import build_model, model_gmacs
from .loading import LoadedModel, load_model
from .quadformer import (
    SIZES,
    Quadformer,
    UniformViT,
    convert_vanilla_state_dict,
    load_vanilla_checkpoint,
    vit_gmacs,
)

__all__ = ["SIZES", "LoadedModel", "Quadformer", "UniformViT", "build_model", "convert_vanilla_state_dict",
           "load_model", "load_vanilla_checkpoint", "model_gmacs", "vit_gmacs"]
