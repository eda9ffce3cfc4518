"""Measure the diversity of what a model learned (docs/design/diverse_transfer.md §2): filter metrics W1/W2, activation
metrics A1/A2/A3 on a fixed, seeded probe subset of held-out data, per layer, model means and
Δ vs a fresh init of the same architecture and init seed.

  quadformer diversity runs/sup/model.safetensors --data builtin:shapes-textures --split val \\
      --num-images 2000 --out runs/sup/diversity
  quadformer diversity runs/sup/last.pt              (data and init seed from its config)
  quadformer diversity uniform_vit_micro_patch4_32   (a timm name: random init, never downloaded)

Writes diversity.json (all metrics, per layer, init, Δ, probe indices), diversity_per_layer.csv
and diversity_layers.png in --out, and prints a short table.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import torch

from .common import add_common, image_size, nonneg_int, parse_device, positive_int, safe_name

DEFAULT_DATA = "builtin:shapes-textures"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a timm model name (random init) or a checkpoint: model.safetensors (with its "
                                 "model.json), last.pt, or a bare state dict with --arch")
    p.add_argument("--data", default=None, help=f"held-out probe data (default: the checkpoint's val source, "
                                               f"else {DEFAULT_DATA})")
    p.add_argument("--split", default="val", help="split of --data (default: val)")
    p.add_argument("--num-images", type=positive_int, default=None,
                   help="probe images (default: the minimum max(2000, 5d) of docs/design/diverse_transfer.md §2, d = feature dim)")
    p.add_argument("--data-size", type=positive_int, default=None, help="images in the built-in split (default: the source's)")
    p.add_argument("--data-seed", type=nonneg_int, default=None,
                   help="draw of a built-in task (default: the checkpoint's, or 0)")
    p.add_argument("--probe-seed", type=nonneg_int, default=0, help="seed of the probe subset and of the pass (default 0)")
    p.add_argument("--image-size", type=image_size, default=None, help="input size (default: checkpoint's / model's)")
    p.add_argument("--arch", default=None, help="timm name for a bare state-dict checkpoint")
    p.add_argument("--num-classes", type=nonneg_int, default=None,
                   help="head size for a timm name (default 0: none; the head is never measured)")
    p.add_argument("--model-kwargs", default=None,
                   help='extra timm.create_model kwargs as JSON, e.g. \'{"num_patches": 28}\'')
    p.add_argument("--init-seed", type=nonneg_int, default=None,
                   help="init seed for Δ vs init (default: the checkpoint's config seed, else 0)")
    p.add_argument("--no-init", action="store_true", help="skip the fresh-init reference (no Δ vs init)")
    p.add_argument("--weights", choices=("auto", "ema", "model"), default="auto",
                   help="last.pt: its EMA weights when present (auto), "
                        "insist on them (ema), or the raw weights (model)")
    p.add_argument("--qkv", choices=("split", "fused"), default="split", help="attention qkv as q, k, v or one layer")
    p.add_argument("--a2-tokens", action="store_true", help="also A2 with every token/position a sample")
    p.add_argument("--max-rows", type=positive_int, default=20000, help="row cap of the --a2-tokens subsample")
    p.add_argument("--batch-size", type=positive_int, default=64, help="probe batch size (default: 64)")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default: <checkpoint's folder>/diversity; for a timm name or a "
                        "local-dir:/hf-hub: spec, runs/diversity/<spec as a folder name>)")
    add_common(p, progress=False)  # one pass over a fixed probe set: no progress bar


def default_out(spec: str, lm) -> Path:
    """Where the results go without --out: beside the checkpoint file that was read (a run
    folder, or the folder holding last.pt / model.safetensors), else under runs/diversity
    named after the spec (a timm name, local-dir:DIR, hf-hub:NAME: nothing of the user's to
    write into)."""
    if lm.kind in ("export", "train_checkpoint", "state_dict") and lm.path is not None:
        return Path(lm.path).parent / "diversity"
    return Path("runs") / "diversity" / safe_name(spec)


def _probe_dataset(source: str, split: str, size: int | None, image_size: int, seed: int):
    """The held-out split, with the evaluation transform for real images (built-in ones need none)."""
    from ..data import build_dataset, create_transforms
    from ..utils.errors import QuadformerError

    transform = "auto" if source.startswith("builtin:") else create_transforms(image_size, is_training=False)
    try:
        return build_dataset(source, split, image_size, transform=transform, size=size, seed=seed)
    except KeyError as e:
        raise QuadformerError(str(e.args[0]) if e.args else str(e)) from None


def run(args: argparse.Namespace) -> int:
    from ..diversity import format_table, fresh_init, measure_diversity, plot_per_layer, write_csv, write_json
    from ..diversity.measure import feature_dim, item_images, recommended_num_images
    from ..models.loading import load_model
    from ..utils.errors import QuadformerError

    if args.num_images is not None and args.num_images < 2:
        raise QuadformerError(f"--num-images {args.num_images}: need at least 2 (>= max(2000, 5d) for reported numbers)")
    try:
        kwargs = json.loads(args.model_kwargs) if args.model_kwargs else {}
    except json.JSONDecodeError as e:
        raise QuadformerError(f"--model-kwargs is not valid JSON ({e.msg}); e.g. '{{\"num_patches\": 28}}'") from None
    if not isinstance(kwargs, dict):
        raise QuadformerError("--model-kwargs must be a JSON object, e.g. '{\"num_patches\": 28}'")
    lm = load_model(args.model, arch=args.arch, num_classes=args.num_classes, image_size=args.image_size,
                    init_seed=args.init_seed, model_kwargs=kwargs, weights=args.weights)
    device = parse_device(args.device)
    source = args.data or lm.data.get("val") or lm.data.get("train") or DEFAULT_DATA
    data_seed = args.data_seed if args.data_seed is not None else int(lm.data.get("data_seed", 0) or 0)
    ds = _probe_dataset(source, args.split, args.data_size, lm.image_size, data_seed)
    n_avail = len(ds)  # type: ignore[arg-type]
    num_images = args.num_images
    if num_images is None:
        num_images = recommended_num_images(feature_dim(lm.model.to(device), item_images(ds[0])))
    notes = []
    if n_avail < num_images:
        notes.append(f"{source} {args.split} has {n_avail} images < {num_images} probe images wanted; using all "
                     f"(raise --data-size)")
    init_model = None if args.no_init else fresh_init(lm.factory, lm.init_seed)
    if init_model is not None and not lm.init_seed_known and lm.kind != "timm":
        notes.append(f"the checkpoint does not record its init seed; Δ vs init uses seed {lm.init_seed} (--init-seed)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = measure_diversity(lm.model, ds, init_model, num_images=num_images, batch_size=args.batch_size,
                                device=device, seed=args.probe_seed, qkv=args.qkv, a2_tokens=args.a2_tokens,
                                max_rows=args.max_rows)
    res["warnings"] = notes + res["warnings"]
    out = args.out or default_out(str(args.model), lm)
    import timm

    header = {"model": str(args.model), "architecture": lm.name, "source": lm.kind, "checkpoint_sha256": lm.sha256,
              "weights": lm.weights, "init_seed": None if args.no_init else lm.init_seed,
              "data": {"source": source, "split": args.split, "data_seed": data_seed, "image_size": lm.image_size,
                       "size": n_avail},
              "device": str(device), "versions": {"torch": torch.__version__, "timm": timm.__version__}}
    title = lm.name if str(args.model) == lm.name else f"{lm.name} ({Path(str(args.model)).name})"
    paths = [write_json(res, out / "diversity.json", header), write_csv(res, out / "diversity_per_layer.csv"),
             plot_per_layer(res, out / "diversity_layers.png", title=title)]
    print(format_table(res))
    for w in res["warnings"]:
        print(f"warning: {w}")
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0
