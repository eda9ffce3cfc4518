"""Evaluate a trained model: top-1 (or mAP), GMACs per image (scorer included; the counter
is named) and wall-clock images/s at several batch sizes.

  quadformer eval runs/micro_quadformer/last.pt [--data builtin:glyphs] [--split val] [--num-patches 100]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a training checkpoint (last.pt) written by quadformer train")
    p.add_argument("--data", default=None, help="data source (default: the training config's val source)")
    p.add_argument("--split", default="val", choices=("val", "test"))
    p.add_argument("--num-patches", type=int, default=None, help="evaluate at another token budget N")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 64], help="for images/s")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads for the timing")
    p.add_argument("--json", type=Path, default=None, help="also write the results as JSON")


def throughput(model: torch.nn.Module, image_size: int, batch_sizes: list[int], device: torch.device,
               reps: int = 3) -> dict[int, float]:
    """Wall-clock images/s of a full forward (tokenizer and scorer included), median of reps."""
    out = {}
    model.eval()
    with torch.inference_mode():
        for b in batch_sizes:
            x = torch.randn(b, 3, image_size, image_size, device=device)
            model(x)
            times = []
            for _ in range(reps):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                model(x)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
            out[b] = b / sorted(times)[len(times) // 2]
    return out


def run(args: argparse.Namespace) -> int:
    from ..train.checkpoint import load_checkpoint
    from ..train.config import load_config
    from ..train.distributed import DistInfo
    from ..train.engine import build_dataset, build_model, evaluate, model_gmacs, pick_device

    if args.threads:
        torch.set_num_threads(args.threads)
    ck = load_checkpoint(args.checkpoint)
    cfg = load_config(base=ck["config"])
    device = pick_device()
    model = build_model(cfg, ck["num_classes"]).to(device)
    model.load_state_dict(ck["model"])
    if args.num_patches is not None:
        if not hasattr(model, "set_num_patches"):
            raise ValueError(f"--num-patches needs a Quadformer; {cfg.model.name} has a fixed token grid")
        model.set_num_patches(args.num_patches)
    source = args.data or cfg.data.val or cfg.data.train
    ds = build_dataset(source, args.split, cfg.data.val_size, False, cfg.data.image_size, cfg.data.data_seed,
                       cfg.data.cache_dir)
    metrics = evaluate(model, ds, 64, device, DistInfo(), bool(ck.get("multilabel")), "off", progress=True)
    gmacs, convention = model_gmacs(model, cfg.data.image_size)
    ips = throughput(model, cfg.data.image_size, args.batch_sizes, device)
    res = {"checkpoint": str(args.checkpoint), "model": cfg.model.name,
           "num_patches": getattr(model, "num_patches", None), "data": source, "split": args.split,
           "top1": round(metrics["top1"], 2), "images": int(metrics["count"]),
           "gmacs_per_image": round(gmacs, 4), "gmacs_convention": convention,
           "images_per_s": {str(b): round(v, 1) for b, v in ips.items()},
           "threads": torch.get_num_threads(), "device": str(device)}
    print(json.dumps(res, indent=2))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return 0
