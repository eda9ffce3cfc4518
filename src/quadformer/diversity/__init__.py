"""Diversity of what a network learned (docs/design/diverse_transfer.md §2): filter metrics W1/W2, activation metrics
A1/A2/A3, per layer, model means and Δ vs init.

    from quadformer.diversity import measure_diversity, fresh_init
    res = measure_diversity(model, probe_ds, init_model=fresh_init(build, seed), num_images=2000)
"""

from .layers import activation_taps, classifier_modules, filter_layers, filter_modules, is_vit
from .measure import (
    ProbeFeatures,
    activation_diversity,
    collect_features,
    feature_dim,
    probe_indices,
    recommended_num_images,
)
from .metrics import (
    channel_correlation,
    erank,
    feature_erank,
    filter_cosine_diversity,
    filter_erank,
    layer_erank,
    normalize_rows,
    strided_rows,
)
from .plot import plot_per_layer
from .report import (
    SCALARS,
    format_table,
    fresh_init,
    measure_diversity,
    per_layer_rows,
    weight_diversity,
    write_csv,
    write_json,
)

__all__ = [
    "activation_taps", "classifier_modules", "filter_layers", "filter_modules", "is_vit",
    "ProbeFeatures", "activation_diversity", "collect_features", "feature_dim", "probe_indices",
    "recommended_num_images",
    "channel_correlation", "erank", "feature_erank", "filter_cosine_diversity", "filter_erank", "layer_erank",
    "normalize_rows", "strided_rows", "plot_per_layer", "SCALARS", "format_table", "fresh_init",
    "measure_diversity", "per_layer_rows", "weight_diversity", "write_csv", "write_json",
]
