"""quadformer: mixed-resolution (quadtree) tokenization for Vision Transformers, and diverse
pretraining for transfer. Importing it registers the models with timm
(``timm.list_models('quadformer*')``)."""

__version__ = "0.1.0"

from . import models  # noqa: F401  (registers quadformer_* / uniform_vit_* with timm)
