"""Patch scorers (docs/design/mixed_resolution.md §7): one importance map per splittable scale, higher = split sooner."""

from __future__ import annotations

from .backbones import ShuffleNetTap, TimmTap, freeze_as_buffers, read_state_dict, shufflenet_backbone, timm_backbone
from .base import PatchScorer, to_grid
from .blur import blur
from .distilled import DistilledScorer, SaliencyNet, load_saliency_net, save_saliency_net
from .entropy import EntropyScorer
from .feature import FeatureScorer
from .gradcam import GradCamOracleScorer, grad_cam
from .laplacian import LaplacianScorer
from .learned import LearnedScorer
from .macs import count_macs
from .pixel_blur import PixelBlurScorer
from .precomputed import PrecomputedScorer
from .random import RandomScorer
from ...utils.errors import QuadformerError

SCORERS: dict[str, type[PatchScorer]] = {
    "pixel-blur": PixelBlurScorer,
    "feature": FeatureScorer,
    "precomputed": PrecomputedScorer,
    "random": RandomScorer,
    "gradcam": GradCamOracleScorer,
    "entropy": EntropyScorer,
    "laplacian": LaplacianScorer,
    "distilled": DistilledScorer,
    "learned": LearnedScorer,
}


def create_scorer(name: str, **kwargs) -> PatchScorer:
    """Build a scorer by name (``pixel-blur``, ``feature``, ``precomputed``, ``random``,
    ``gradcam``, ``entropy``, ``laplacian``, ``distilled``, ``learned``); ``kwargs`` go to its
    constructor."""
    key = name.strip().lower().replace("_", "-")
    if key not in SCORERS:
        raise QuadformerError(f"unknown scorer {name!r}; valid names: {', '.join(SCORERS)}")
    return SCORERS[key](**kwargs)


__all__ = [
    "SCORERS",
    "DistilledScorer",
    "EntropyScorer",
    "LaplacianScorer",
    "LearnedScorer",
    "SaliencyNet",
    "FeatureScorer",
    "GradCamOracleScorer",
    "PatchScorer",
    "PixelBlurScorer",
    "PrecomputedScorer",
    "RandomScorer",
    "ShuffleNetTap",
    "TimmTap",
    "blur",
    "count_macs",
    "create_scorer",
    "freeze_as_buffers",
    "grad_cam",
    "load_saliency_net",
    "read_state_dict",
    "save_saliency_net",
    "shufflenet_backbone",
    "timm_backbone",
    "to_grid",
]
