"""Pictures: mosaics as PNG, plots."""

from .mosaic import render_mosaic, save_mosaic_grid
from .plots import plot_accuracy_vs_gmacs, save_figure

__all__ = ["render_mosaic", "save_mosaic_grid", "plot_accuracy_vs_gmacs", "save_figure"]
