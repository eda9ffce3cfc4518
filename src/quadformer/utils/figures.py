"""Writing matplotlib figures: one helper for every package that draws (diversity, study, viz)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .io import atomic_write

__all__ = ["save_figure"]


def save_figure(fig: Any, path: str | os.PathLike, dpi: float | None = None) -> Path:
    """Write ``fig`` as a PNG at ``path`` through :func:`~quadformer.utils.io.atomic_write`
    (never a half-written file), then close it."""
    import matplotlib.pyplot as plt

    try:
        return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi if dpi is not None else "figure"))
    finally:
        plt.close(fig)
