"""Export a model, tokenizer and scorer included, as ONNX or a ``torch.export`` program (.pt2).

MODEL is any model spec (timm name, run folder, last.pt, model.safetensors, local-dir:/hf-hub:).
The batch dimension stays dynamic; the exported model is checked against eager PyTorch on a
random batch (ONNX with onnxruntime) and the largest difference is printed.

  quadformer export runs/micro_quadformer --format onnx --out model.onnx
  quadformer export quadformer_small_patch16_256 --format pt2 --out model.pt2
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..utils.errors import QuadformerError
from .common import add_common, check_output_file, positive_int

OUT_IS_FILE = True  # --out names a file: cli.common judges it as one


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL",
                   help="timm name, run folder, last.pt, model.safetensors, local-dir:DIR or hf-hub:NAME")
    p.add_argument("--format", required=True, choices=("onnx", "pt2"), help="onnx (dynamo exporter) or pt2")
    p.add_argument("--out", type=Path, required=True, help="output file")
    p.add_argument("--ema", action="store_true", help="export the EMA weights of a training checkpoint")
    p.add_argument("--arch", default=None, help="timm name for a bare state-dict file")
    p.add_argument("--num-patches", type=positive_int, default=None, help="export at another token budget N")
    p.add_argument("--batch-size", type=positive_int, default=2, help="example batch for tracing and the check")
    p.add_argument("--no-check", action="store_true", help="skip the comparison with eager PyTorch")
    add_common(p, progress=False)


def run(args: argparse.Namespace) -> int:
    from ..models.export import export_model
    from .eval_cmd import load

    check_output_file(args.out, "--out")
    lm = load(args, torch.device(args.device or "cpu"))
    model = lm.model
    if args.num_patches is not None:
        if not hasattr(model, "set_num_patches"):
            raise QuadformerError(f"--num-patches needs a Quadformer; {lm.name} has a fixed token grid")
        model.set_num_patches(args.num_patches)
    res = export_model(model, args.out, args.format, lm.image_size, batch=args.batch_size, check=not args.no_check)
    check = (f"max |exported - eager| = {res.max_abs_diff:.2e} ({res.checked_with})"
             if res.max_abs_diff is not None else "not checked")
    print(f"wrote {res.path} ({res.format}, {lm.name}, {lm.image_size} px); {check}")
    return 0
