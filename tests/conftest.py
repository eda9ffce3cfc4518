"""Shared fixtures. Tests never download anything."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

torch.set_num_threads(min(2, os.cpu_count() or 1))

REFERENCE_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "quadformer_reference_data"


@functools.cache
def reference_photos(size: int, resize_to: int | None = None) -> torch.Tensor | None:
    """The reference photos as a batch: shorter side resized to ``resize_to`` (default ``size``),
    centre crop ``size``, ImageNet-normalised; ``None`` where the shared data is absent."""
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    from torchvision.transforms.functional import (
        center_crop,
        normalize,
        pil_to_tensor,
        resize,
    )

    files = sorted((REFERENCE_DATA / "images").glob("*.JPEG"))
    if not files:
        return None
    out = []
    for f in files:
        with Image.open(f) as im:
            x = pil_to_tensor(im.convert("RGB")).float() / 255
        x = center_crop(resize(x, resize_to or size, antialias=True), [size, size])
        out.append(normalize(x, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD))
    return torch.stack(out)


@pytest.fixture
def torch_cpu_ops():
    """Run the test on the PyTorch ops of the eager CPU path, not the fused kernels
    (:mod:`quadformer.tokenize.kernels`)."""
    from quadformer.tokenize import kernels

    was = kernels.enabled()
    kernels.set_enabled(False)
    yield
    kernels.set_enabled(was)


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
