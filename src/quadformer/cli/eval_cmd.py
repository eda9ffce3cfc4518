"""Evaluate a model: top-1 (or mAP), GMACs per image (scorer included; the counter is named)
and wall-clock images/s at several batch sizes.

MODEL is any model spec: a timm name, a run folder, last.pt, model.safetensors, or a
local-dir:/hf-hub: name. --ema evaluates a training checkpoint's EMA weights.

  quadformer eval runs/micro_quadformer [--ema] [--data builtin:glyphs] [--split val] [--num-patches 100]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from ..utils.errors import QuadformerError
from .common import add_common, check_output_file, positive_int


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL",
                   help="timm name, run folder, last.pt, model.safetensors, local-dir:DIR or hf-hub:NAME")
    p.add_argument("--ema", action="store_true", help="evaluate the EMA weights of a training checkpoint")
    p.add_argument("--arch", default=None, help="timm name for a bare state-dict file")
    p.add_argument("--data", default=None, help="data source (default: the training config's val source)")
    p.add_argument("--split", default="val", choices=("val", "test"))
    p.add_argument("--data-size", type=positive_int, default=None, help="images of a built-in split (default: the run's)")
    p.add_argument("--num-patches", type=positive_int, default=None, help="evaluate at another token budget N")
    p.add_argument("--batch-size", type=positive_int, default=64, help="evaluation batch size (default 64)")
    p.add_argument("--batch-sizes", type=positive_int, nargs="+", default=[1, 16, 64], help="for images/s")
    p.add_argument("--repeats", type=positive_int, default=5,
                   help="timing rounds; each round runs every batch size once (interleaved), median reported")
    p.add_argument("--no-timing", action="store_true", help="skip the images/s measurement")
    p.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    add_common(p)


def throughput(model: torch.nn.Module, image_size: int, batch_sizes: list[int], device: torch.device,
               repeats: int = 5) -> dict[int, float]:
    """Wall-clock images/s of a full forward (tokenizer and scorer included).

    Batch sizes are timed in interleaved rounds (b1, b2, ..., b1, b2, ...), so a slow phase of
    a shared machine hits every batch size alike; the median over rounds is reported."""
    model.eval()
    times: dict[int, list[float]] = {b: [] for b in batch_sizes}
    inputs = {b: torch.randn(b, 3, image_size, image_size, device=device) for b in batch_sizes}

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    with torch.inference_mode():
        for b in batch_sizes:  # warm-up
            model(inputs[b])
        for _ in range(repeats):
            for b in batch_sizes:
                sync()
                t0 = time.perf_counter()
                model(inputs[b])
                sync()
                times[b].append(time.perf_counter() - t0)
    return {b: b / statistics.median(ts) for b, ts in times.items()}


def load(args: argparse.Namespace, device: torch.device):
    """The LoadedModel of ``args.model`` (``--ema``, ``--arch``), shared with ``predict``."""
    from ..models.loading import load_model

    lm = load_model(args.model, device=device, arch=getattr(args, "arch", None),
                    weights="ema" if args.ema else "model")
    if args.ema and lm.weights != "ema":
        raise QuadformerError(f"--ema: {args.model} is a {lm.kind} with one set of weights; pass a last.pt "
                              f"trained with train.ema_decay > 0, or drop --ema")
    return lm


def check_labels(lm, ds, source: str) -> None:
    """The data's label space must be the model's: another task's classes give meaningless numbers."""
    names = list(getattr(ds, "class_names", []) or [])
    n = getattr(ds, "num_classes", None)
    if lm.num_classes == 0:
        raise QuadformerError(f"{lm.source} has no classifier head (num_classes 0); evaluate a trained model")
    if n is not None and int(n) != lm.num_classes:
        raise QuadformerError(f"--data {source} has {n} classes but {lm.source} predicts {lm.num_classes}; "
                              f"pass the data the model was trained on")
    if names and lm.class_names and list(names) != list(lm.class_names):
        diff = next(f"{a!r} vs {b!r}" for a, b in zip(names, lm.class_names) if a != b) \
            if len(names) == len(lm.class_names) else f"{len(names)} vs {len(lm.class_names)} names"
        raise QuadformerError(f"--data {source}: its classes differ from the model's ({diff}); pass the data "
                              f"the model was trained on")


def run(args: argparse.Namespace) -> int:
    from ..data import build_dataset, create_transforms
    from ..models.factory import model_gmacs
    from ..train import evaluate
    from ..train.distributed import DistInfo

    check_output_file(args.json, "--json")
    device = torch.device(args.device) if args.device else \
        torch.device("cuda" if torch.cuda.is_available() else "cpu")
    lm = load(args, device)
    model = lm.model
    if args.num_patches is not None:
        if not hasattr(model, "set_num_patches"):
            raise QuadformerError(f"--num-patches needs a Quadformer; {lm.name} has a fixed token grid")
        model.set_num_patches(args.num_patches)
    data = lm.data or {}
    source = args.data or data.get("val") or data.get("train")
    if not source:
        raise QuadformerError(f"{args.model} does not record its training data; pass --data SOURCE "
                              f"(e.g. builtin:glyphs or imagefolder:DIR)")
    size = lm.image_size
    real = not str(source).startswith("builtin:")
    transform = create_transforms(size, is_training=False, mean=lm.mean, std=lm.std) if real else "auto"
    n_images = args.data_size or (data.get("val_size") if not args.data else None)
    ds = build_dataset(source, args.split, size, transform=transform, size=n_images,
                       seed=int(data.get("data_seed", 0) or 0), cache_dir=None if real else data.get("cache_dir"))
    check_labels(lm, ds, source)
    metrics = evaluate(model, ds, args.batch_size, device, DistInfo(), lm.multilabel, "off", progress=args.progress)
    gmacs, convention = model_gmacs(model, size)
    res = {"model": lm.source, "architecture": lm.name, "weights": lm.weights, "sha256": lm.sha256,
           "num_patches": getattr(model, "num_patches", None), "data": source, "split": args.split,
           "metric": "mAP" if lm.multilabel else "top1", "top1": round(metrics["top1"], 2),
           "images": int(metrics["count"]), "gmacs_per_image": round(gmacs, 4), "gmacs_convention": convention,
           "threads": torch.get_num_threads(), "device": str(device)}
    if metrics.get("map_dropped"):  # classes without a positive: not part of the mAP
        res["map_dropped"] = metrics["map_dropped"]
    if not args.no_timing:
        ips = throughput(model, size, args.batch_sizes, device, args.repeats)
        res["images_per_s"] = {str(b): round(v, 1) for b, v in ips.items()}
        res["timing"] = f"median of {args.repeats} interleaved rounds"
    text = json.dumps(res, indent=2)
    print(text)
    if args.json:
        from ..utils.io import atomic_write

        atomic_write(args.json, lambda f: f.write((text + "\n").encode()))
    return 0
