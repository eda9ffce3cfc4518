"""quadformer: mixed-resolution (quadtree) tokenization for Vision Transformers, and diverse
pretraining for transfer."""

__version__ = "0.1.0"
