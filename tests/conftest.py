"""Shared fixtures. Tests never download anything."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

torch.set_num_threads(min(2, os.cpu_count() or 1))

REFERENCE_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "quadformer_reference_data"


@pytest.fixture
def photo_paths(tmp_path) -> list[Path]:
    """Real photos from the shared reference data when present, else two written images."""
    imgs = sorted((REFERENCE_DATA / "images").glob("*.JPEG"))
    if imgs:
        return imgs[:3]
    rng = np.random.default_rng(0)
    paths = []
    for i in range(2):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths
