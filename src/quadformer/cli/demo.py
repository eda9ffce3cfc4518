"""The main job, on data that ships with the project (no download).

Renders mixed-resolution mosaics of scikit-image's bundled photos at several token budgets
with the pixel-blur scorer, into OUT/mosaics.png.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..tokenize import QuadGeometry, mosaic
from ..tokenize.tokenizer import build_scorer
from ..utils.images import eval_transform

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("outputs/demo"), help="output folder (default outputs/demo)")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--budgets", type=int, nargs="+", default=[28, 64, 100])


def bundled_photos(size: int) -> tuple[torch.Tensor, list[str]]:
    from PIL import Image
    from skimage import data as skdata

    tf = eval_transform(size)
    ims, names = [], []
    for name in PHOTOS:
        arr = getattr(skdata, name)()
        ims.append(tf(Image.fromarray(arr).convert("RGB")))
        names.append(name)
    return torch.stack(ims), names


def run(args: argparse.Namespace) -> int:
    images, names = bundled_photos(args.size)
    scorer = build_scorer("pixel-blur")
    from ..viz import save_mosaic_grid

    for n in args.budgets:
        g = QuadGeometry(args.size, args.size, 16, 64, n)
        pixels, boxes, _ = mosaic(images, g, scorer)
        path = save_mosaic_grid(args.out / f"mosaics_N{n}.png", images, pixels, boxes, 16,
                                [f"{nm}  N={n}  pixel-blur" for nm in names])
        print(f"wrote {path}")
    return 0
