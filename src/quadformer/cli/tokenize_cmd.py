"""Cut images into mixed-resolution mosaics.

Each image is resized so its shorter side is SIZE/0.875, centre-cropped to SIZE and
normalised with ImageNet mean/std (the usual evaluation transform), then scored and split
by the quadtree into exactly BUDGET patches.

examples:
  quadformer tokenize photo.jpg --size 256 --min-patch 16 --max-patch 64 --budget 100 --png mosaic.png
  quadformer tokenize *.JPEG --scorer precomputed --saliency maps.npz --json boxes.json
  quadformer tokenize photo.jpg --scorer distilled --scorer-weights scorer.safetensors --png mosaic.png
  quadformer tokenize photo.jpg --scorer feature --scorer-kwargs tap_stride=8 input_scale=0.5 normalize=mean
"""

from __future__ import annotations

import argparse
import inspect
import json
from pathlib import Path

import numpy as np
import torch

from ..tokenize import QuadGeometry, mosaic
from ..tokenize.tokenizer import build_scorer
from ..utils.errors import QuadformerError
from ..utils.images import eval_transform, load_rgb
from .common import add_common, check_output_file

SCORERS = ("pixel-blur", "feature", "distilled", "laplacian", "entropy", "random", "precomputed")
#: scorers that read a weights file (--scorer-weights)
WEIGHTED = ("feature", "distilled")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any format Pillow reads)")
    p.add_argument("--size", type=int, default=256, help="crop size S in pixels (default 256)")
    p.add_argument("--min-patch", type=int, default=16, help="smallest patch side p_min (default 16)")
    p.add_argument("--max-patch", type=int, default=64, help="largest patch side p_max (default 64)")
    p.add_argument("--budget", type=int, default=100, help="exact number of patches N (default 100)")
    p.add_argument("--scorer", choices=SCORERS, default="pixel-blur", help="saliency scorer (default pixel-blur)")
    p.add_argument("--scorer-weights", default=None,
                   help="feature scorer weights (a local .safetensors/.pth file, an explicit name such as "
                        "'torchvision:IMAGENET1K_V1', or 'random'), or the distilled scorer's file from "
                        "`quadformer train-scorer --kind distilled`")
    p.add_argument("--scorer-kwargs", nargs="+", default=[], metavar="KEY=VALUE",
                   help="more options of the scorer's constructor, values read as YAML scalars "
                        "(e.g. tap_stride=8 input_scale=0.5 normalize=mean for the feature scorer)")
    p.add_argument("--saliency", nargs="+", default=None, metavar="MAP",
                   help="precomputed maps: one .npy/.pt per image ([h, w]), one array [B, h, w], "
                        "or an .npz keyed by image file stem")
    p.add_argument("--seed", type=int, default=0, help="seed of the random scorer")
    p.add_argument("--resample", choices=("reference", "area"), default="reference")
    p.add_argument("--png", type=Path, default=None, help="write original | mosaic for every image")
    p.add_argument("--json", type=Path, default=None,
                   help="write a list with one {image, size, budget, boxes} record per image; boxes are "
                        "pixel [x0, y0, x1, y1] (half-open) in canonical order")
    add_common(p, device=False, progress=False)


def _load_map(path: Path, stem: str | None = None) -> np.ndarray:
    if not path.exists():
        raise QuadformerError(f"saliency map not found: {path}")
    try:
        if path.suffix == ".npz":
            with np.load(path) as z:
                if stem not in z:
                    raise QuadformerError(f"{path} has no map for image '{stem}' (keys: {', '.join(list(z)[:5])}...)")
                return np.asarray(z[stem], dtype=np.float32)
        if path.suffix in (".pt", ".pth"):
            return torch.load(path, map_location="cpu", weights_only=True).float().numpy()
        return np.load(path).astype(np.float32)
    except QuadformerError:
        raise
    except Exception as e:  # noqa: BLE001 - any unreadable file becomes a one-line error
        raise QuadformerError(f"cannot read saliency map {path}: {e}") from None


def _saliency(paths: list[str], images: list[str]) -> torch.Tensor:
    files = [Path(p) for p in paths]
    stems = [Path(i).stem for i in images]
    if len(files) == 1 and files[0].suffix == ".npz":
        maps = [_load_map(files[0], s) for s in stems]
    elif len(files) == 1 and len(images) > 1:
        arr = _load_map(files[0])
        if arr.ndim != 3 or arr.shape[0] != len(images):
            raise QuadformerError(f"{files[0]} holds shape {arr.shape}; expected [{len(images)}, h, w], one map per image")
        maps = list(arr)
    elif len(files) == len(images):
        maps = [_load_map(f) for f in files]
    else:
        raise QuadformerError(f"got {len(files)} saliency maps for {len(images)} images; give one per image or an .npz")
    shapes = {m.shape for m in maps}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise QuadformerError(f"saliency maps must all be 2-D [h, w] of one shape, got {sorted(shapes)}")
    return torch.from_numpy(np.stack(maps))


def run(args: argparse.Namespace) -> int:
    check_output_file(args.json, "--json")
    check_output_file(args.png, "--png")
    geometry = QuadGeometry(args.size, args.size, args.min_patch, args.max_patch, args.budget)
    transform = eval_transform(args.size)
    batch = torch.stack([transform(load_rgb(p)) for p in args.images])
    inputs = {}
    kwargs = {}
    if args.scorer == "precomputed":
        if not args.saliency:
            raise QuadformerError("--scorer precomputed needs --saliency MAP (.npy, .pt or .npz)")
        inputs["saliency"] = _saliency(args.saliency, args.images)
    elif args.saliency:
        raise QuadformerError(f"--saliency is only used with --scorer precomputed (got --scorer {args.scorer})")
    if args.scorer in WEIGHTED:
        kwargs["weights"] = args.scorer_weights
    elif args.scorer_weights is not None:
        raise QuadformerError(f"--scorer-weights is only used with --scorer {' or '.join(WEIGHTED)} "
                              f"(got --scorer {args.scorer})")
    if args.scorer == "random":
        kwargs["seed"] = args.seed
    kwargs.update(_scorer_kwargs(args.scorer, args.scorer_kwargs))
    scorer = build_scorer(args.scorer, **kwargs)
    pixels, boxes, _ = mosaic(batch, geometry, scorer, args.resample, **inputs)
    if args.json:
        records = [
            {"image": str(p), "size": [args.size, args.size], "budget": args.budget, "boxes": b.tolist()}
            for p, b in zip(args.images, boxes)
        ]
        _write_text(args.json, _dump_records(records))
        print(f"wrote {args.json}")
    if args.png:
        from ..viz import save_mosaic_grid

        titles = [f"{Path(p).name}  N={args.budget}  patches {args.min_patch}..{args.max_patch}" for p in args.images]
        save_mosaic_grid(args.png, batch, pixels, boxes, args.min_patch, titles)
        print(f"wrote {args.png}")
    if not args.json and not args.png:
        for p, b in zip(args.images, boxes):
            sides = (b[:, 2] - b[:, 0]).tolist()
            counts = {s: sides.count(s) for s in sorted(set(sides), reverse=True)}
            print(f"{p}: {len(sides)} patches, " + ", ".join(f"{n}x{s}px" for s, n in counts.items()))
    return 0


def _scorer_kwargs(name: str, pairs: list[str]) -> dict:
    """``KEY=VALUE`` pairs -> constructor kwargs of scorer ``name`` (values as YAML scalars),
    checked against its signature so a typo is one line, not a TypeError."""
    import yaml

    from ..tokenize.scorers import SCORERS as CLASSES

    params = inspect.signature(CLASSES[name].__init__).parameters
    options = [k for k, v in params.items() if k != "self" and v.kind in (v.KEYWORD_ONLY, v.POSITIONAL_OR_KEYWORD)]
    out = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise QuadformerError(f"--scorer-kwargs {pair!r} is not KEY=VALUE (e.g. tap_stride=8)")
        if key not in options:
            raise QuadformerError(f"--scorer-kwargs {key!r} is not an option of the {name} scorer; "
                                  f"options: {', '.join(options)}")
        try:
            out[key] = yaml.safe_load(text) if text else None
        except yaml.YAMLError:
            raise QuadformerError(f"--scorer-kwargs {pair!r}: cannot read {text!r} as a value") from None
    return out


def _dump_records(records: list[dict]) -> str:
    """Readable JSON: one record per block, one box per line."""
    blocks = []
    for r in records:
        head = ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in r.items() if k != "boxes")
        boxes = ",\n   ".join(json.dumps(b) for b in r["boxes"])
        blocks.append(f" {{{head},\n  \"boxes\": [\n   {boxes}\n  ]}}")
    return "[\n" + ",\n".join(blocks) + "\n]\n"


def _write_text(path: Path, text: str) -> None:
    from ..utils.io import atomic_write

    atomic_write(path, lambda f: f.write(text.encode()))
