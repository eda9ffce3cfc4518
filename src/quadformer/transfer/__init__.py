"""Transfer evaluation (docs/design/diverse_transfer.md §3): frozen-feature probes (linear, kNN,
few-shot), fine-tuning / LP-FT through the training engine, task lists and across-task
aggregates. Scores are in percent.

Library use takes an ``nn.Module`` plus a digest string (keys the feature cache)::

    from quadformer.transfer import DataRef, get_features, linear_probe
    tr = get_features(model, digest, DataRef("builtin:digits", "train", 32, size=500), cache_dir="cache")
    te = get_features(model, digest, DataRef("builtin:digits", "test", 32, size=300), cache_dir="cache")
    res = linear_probe(tr.features, tr.targets, te.features, te.targets, grid="smoke")
"""

from .aggregate import HEADLINE, aggregate, write_aggregate_csv
from .features import (
    FEATURE_VERSION,
    DataRef,
    FeatureSet,
    build_eval_dataset,
    dataset_targets,
    extract_features,
    feature_cache_key,
    get_features,
    model_preprocessing,
)
from .finetune import LR_GRIDS, FinetuneOptions, finetune, head_from_probe, predict_logits
from .metrics import (
    map_voc11,
    mean_average_precision,
    mean_per_class_accuracy,
    multi_label_metrics,
    single_label_metrics,
    threshold_metrics,
    top1,
)
from .probes import (
    C_GRIDS,
    LinearProbe,
    ProbeResult,
    Standardiser,
    fewshot_draws,
    fewshot_probe,
    fit_linear,
    grid_search,
    knn_probe,
    knn_scores,
    linear_probe,
    select_best,
    t_interval,
    validation_split,
)
from .runner import PROTOCOLS, ModelRef, ProtocolOptions, evaluate_task
from .tasks import TASK_KEYS, Task, builtin_tasks, check_label_spaces, load_tasks

__all__ = [
    "HEADLINE", "aggregate", "write_aggregate_csv",
    "FEATURE_VERSION", "DataRef", "FeatureSet", "build_eval_dataset", "dataset_targets", "extract_features",
    "feature_cache_key", "get_features", "model_preprocessing",
    "LR_GRIDS", "FinetuneOptions", "finetune", "head_from_probe", "predict_logits",
    "map_voc11", "mean_average_precision", "mean_per_class_accuracy", "multi_label_metrics",
    "single_label_metrics", "threshold_metrics", "top1",
    "C_GRIDS", "LinearProbe", "ProbeResult", "Standardiser", "fewshot_draws", "fewshot_probe", "fit_linear",
    "grid_search", "knn_probe", "knn_scores", "linear_probe", "select_best", "t_interval", "validation_split",
    "PROTOCOLS", "ModelRef", "ProtocolOptions", "evaluate_task",
    "TASK_KEYS", "Task", "builtin_tasks", "check_label_spaces", "load_tasks",
]
