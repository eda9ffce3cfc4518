"""Pictures: mosaics as PNG, plots."""

from .mosaic import render_mosaic, save_mosaic_grid

__all__ = ["render_mosaic", "save_mosaic_grid"]
