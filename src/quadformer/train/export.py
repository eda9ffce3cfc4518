"""What a finished run leaves besides its checkpoint: the weights as safetensors (with the
config that rebuilds the model) and ``summary.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from ..utils.io import write_bytes, write_json
from .config import Config
from .data import DataBundle


def export_weights(model: nn.Module, cfg: Config, data: DataBundle, path: Path) -> None:
    """Weights as safetensors, with the full model/tokenizer config as metadata and beside
    it as JSON, so the checkpoint rebuilds its model exactly."""
    from safetensors.torch import save

    meta = {"model": cfg.to_dict()["model"], "image_size": cfg.data.image_size, "num_classes": data.num_classes,
            "multilabel": data.multilabel, "class_names": data.class_names}
    g = getattr(model, "geometry", None)
    if g is not None:
        meta["tokenizer"] = {"img_size": [g.height, g.width], "p_min": g.p_min, "p_max": g.p_max,
                             "num_patches": g.num_patches, "resample": model.resample,
                             "pos_embed": model.pos_embed_type}
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    write_bytes(path, save(state, metadata={"quadformer": json.dumps(meta)}))
    write_json(path.with_suffix(".json"), meta)


def write_summary(out: Path, cfg: Config, data: DataBundle, history: list[dict[str, Any]], global_step: int,
                  gmacs: float, convention: str) -> None:
    write_json(out / "summary.json", {
        "final": history[-1] if history else {},
        "train_seconds": sum(h.get("epoch_seconds", 0.0) for h in history),
        "gmacs_per_image": gmacs, "gmacs_convention": convention,
        "num_classes": data.num_classes, "epochs": cfg.train.epochs, "global_step": global_step})
