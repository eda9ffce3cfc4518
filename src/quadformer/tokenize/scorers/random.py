"""Random scorer (docs/design/mixed_resolution.md §7): U(0, 1) per cell, a baseline for what scoring buys.

With a seed, one CPU ``torch.Generator`` is created once and advanced by every call, so a run
is reproducible yet every batch gets new scores (the reference reseeded per call and gave
every batch the same scores). Sampling on the CPU and moving the result makes the sequence
identical on CPU and GPU.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..geometry import QuadGeometry
from .base import PatchScorer


class RandomScorer(PatchScorer):
    """Uniform random importance. ``seed=None`` draws from torch's global RNG on the images'
    device; an integer seed gives a reproducible sequence; :meth:`reset` restarts it."""

    def __init__(self, seed: int | None = None) -> None:
        super().__init__()
        self.seed = seed
        self._generator: torch.Generator | None = None
        self.reset()

    def reset(self) -> None:
        """Restart the seeded sequence (no effect without a seed)."""
        if self.seed is not None:
            self._generator = torch.Generator(device="cpu")
            self._generator.manual_seed(int(self.seed))

    def score(self, images: Tensor, geometry: QuadGeometry, **inputs) -> list[Tensor]:
        b = images.shape[0]
        grids = [geometry.grid(s) for s in range(1, geometry.num_scales)]
        if self._generator is None:
            return [torch.rand(b, gh, gw, device=images.device) for gh, gw in grids]
        return [torch.rand(b, gh, gw, generator=self._generator).to(images.device) for gh, gw in grids]

    def extra_repr(self) -> str:
        return f"seed={self.seed}"
