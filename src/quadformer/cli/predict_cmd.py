"""Classify images with a trained model: top-k classes per image to CSV / JSON, optional mosaics.

MODEL is any model spec (timm name, run folder, last.pt, model.safetensors, local-dir:/hf-hub:);
class names come from the model's config. Inputs are image files and folders (searched
recursively). Files that cannot be read are listed on stderr and skipped.

  quadformer predict runs/micro_quadformer photos/ --top-k 5 --csv preds.csv --json preds.json --mosaics mosaics/
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

import torch

from ..utils.errors import QuadformerError
from .common import add_common, check_output_dir, check_output_file, positive_int


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL",
                   help="timm name, run folder, last.pt, model.safetensors, local-dir:DIR or hf-hub:NAME")
    p.add_argument("inputs", nargs="+", metavar="IMAGES_OR_FOLDER", help="image files and/or folders")
    p.add_argument("--ema", action="store_true", help="use the EMA weights of a training checkpoint")
    p.add_argument("--arch", default=None, help="timm name for a bare state-dict file")
    p.add_argument("--top-k", type=positive_int, default=5, help="classes per image (default 5)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="images per forward (default 32)")
    p.add_argument("--csv", type=Path, default=None, help="write one row per image (top-k classes and scores)")
    p.add_argument("--json", type=Path, default=None, help="write the predictions and the skipped files as JSON")
    p.add_argument("--mosaics", type=Path, default=None, metavar="DIR",
                   help="write each image beside its mosaic as DIR/<name>.png (Quadformer models)")
    add_common(p)


def find_images(inputs: list[str]) -> list[Path]:
    """Image files named or found (recursively, sorted) in the folders named."""
    from ..data import IMG_EXTENSIONS

    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in IMG_EXTENSIONS)
            if not found:
                raise QuadformerError(f"folder {p} holds no images ({', '.join(IMG_EXTENSIONS)}); pass a folder "
                                      f"of images or image files")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise QuadformerError(f"{p} is neither an image file nor a folder; check the path")
    return files


def _read(paths: list[Path], transform) -> tuple[list[tuple[Path, torch.Tensor]], list[tuple[Path, str]]]:
    from ..utils.images import load_rgb

    ok, bad = [], []
    for p in paths:
        try:
            ok.append((p, transform(load_rgb(p))))
        except QuadformerError as e:
            bad.append((p, str(e)))
    return ok, bad


def run(args: argparse.Namespace) -> int:
    from ..data import create_transforms
    from .eval_cmd import load

    for opt, path in (("--csv", args.csv), ("--json", args.json)):
        check_output_file(path, opt)
    check_output_dir(args.mosaics, "--mosaics")
    files = find_images(args.inputs)
    device = torch.device(args.device) if args.device else \
        torch.device("cuda" if torch.cuda.is_available() else "cpu")
    lm = load(args, device)
    model = lm.model
    if lm.num_classes == 0:
        raise QuadformerError(f"{args.model} has no classifier head (num_classes 0); pass a trained model")
    if args.mosaics is not None and not hasattr(model, "geometry"):
        raise QuadformerError(f"--mosaics needs a Quadformer model; {lm.name} has no mosaic")
    names = list(lm.class_names) or [str(i) for i in range(lm.num_classes)]
    k = min(args.top_k, lm.num_classes)
    transform = create_transforms(lm.image_size, is_training=False, mean=lm.mean, std=lm.std)

    from tqdm import tqdm

    records, skipped = [], []
    used: set[str] = set()  # mosaic file names (two folders may hold the same file name)
    bar = tqdm(total=len(files), desc="predict", unit="img", disable=not args.progress, dynamic_ncols=True)
    with torch.inference_mode():
        for i in range(0, len(files), args.batch_size):
            ok, bad = _read(files[i:i + args.batch_size], transform)
            skipped += bad
            if ok:
                x = torch.stack([t for _, t in ok]).to(device)
                logits = model(x).float()
                probs = logits.sigmoid() if lm.multilabel else logits.softmax(-1)
                top = probs.topk(k, dim=-1)
                for (p, _), s, j in zip(ok, top.values.tolist(), top.indices.tolist()):
                    records.append({"image": str(p), "top": [{"class": names[c], "index": c, "score": round(v, 6)}
                                                             for v, c in zip(s, j)]})
                if args.mosaics is not None:
                    _mosaics(model, x, [p for p, _ in ok], args.mosaics, lm, used)
            bar.update(len(ok) + len(bad))
    bar.close()
    if not records:
        raise QuadformerError(f"none of the {len(files)} images could be read ({'; '.join(w for _, w in skipped[:3])}"
                              f"{'; ...' if len(skipped) > 3 else ''}); pass readable images")
    for p, why in skipped:
        print(f"skipped {p}: {why}", file=sys.stderr)
    if args.csv:
        _write_csv(args.csv, records, k)
    if args.json:
        from ..utils.io import atomic_write

        doc = {"model": lm.source, "architecture": lm.name, "weights": lm.weights, "top_k": k,
               "multilabel": lm.multilabel, "predictions": records,
               "skipped": [{"image": str(p), "reason": why} for p, why in skipped]}
        atomic_write(args.json, lambda f: f.write((json.dumps(doc, indent=1) + "\n").encode()))
    if not args.csv and not args.json:
        for r in records:
            print(f"{r['image']}: " + ", ".join(f"{t['class']} {t['score']:.3f}" for t in r["top"]))
    else:
        print(f"{len(records)} images predicted, {len(skipped)} skipped" +
              "".join(f"; wrote {p}" for p in (args.csv, args.json) if p))
    return 0


def _write_csv(path: Path, records: list[dict], k: int) -> None:
    from ..utils.io import atomic_write

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["image"] + [f"{c}{r}" for r in range(1, k + 1) for c in ("class", "score")])
    for rec in records:
        w.writerow([rec["image"]] + [v for t in rec["top"] for v in (t["class"], t["score"])])
    atomic_write(path, lambda f: f.write(buf.getvalue().encode()))


def _mosaics(model, x: torch.Tensor, paths: list[Path], folder: Path, lm, used: set[str]) -> None:
    from ..tokenize import mosaic
    from ..viz import save_mosaic_grid

    g = model.geometry
    pixels, boxes, _ = mosaic(x, g, model.scorer, getattr(model, "resample", "reference"))
    for i, p in enumerate(paths):
        name, n = f"{p.stem}.png", 1
        while name in used:
            n += 1
            name = f"{p.stem}_{n}.png"
        used.add(name)
        save_mosaic_grid(folder / name, x[i:i + 1].cpu(), pixels[i:i + 1].cpu(), boxes[i:i + 1].cpu(),
                         g.p_min, [f"{p.name}  N={g.num_patches}"], mean=lm.mean, std=lm.std)
