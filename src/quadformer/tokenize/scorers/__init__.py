"""Patch scorers (spec §7): one importance map per splittable scale, higher = split sooner."""

from __future__ import annotations

from .backbones import ShuffleNetTap, TimmTap, freeze_as_buffers, read_state_dict, shufflenet_backbone, timm_backbone
from .base import PatchScorer, to_grid
from .blur import blur
from .feature import FeatureScorer
from .gradcam import GradCamOracleScorer, grad_cam
from .macs import count_macs
from .pixel_blur import PixelBlurScorer
from .precomputed import PrecomputedScorer
from .random import RandomScorer

SCORERS: dict[str, type[PatchScorer]] = {
    "pixel-blur": PixelBlurScorer,
    "feature": FeatureScorer,
    "precomputed": PrecomputedScorer,
    "random": RandomScorer,
    "gradcam": GradCamOracleScorer,
}


def create_scorer(name: str, **kwargs) -> PatchScorer:
    """Build a scorer by name (``pixel-blur``, ``feature``, ``precomputed``, ``random``,
    ``gradcam``); ``kwargs`` go to its constructor."""
    key = name.strip().lower().replace("_", "-")
    if key not in SCORERS:
        raise ValueError(f"unknown scorer {name!r}; valid names: {', '.join(SCORERS)}")
    return SCORERS[key](**kwargs)


__all__ = [
    "SCORERS",
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
    "read_state_dict",
    "shufflenet_backbone",
    "timm_backbone",
    "to_grid",
]
