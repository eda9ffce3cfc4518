"""Scorer quality: how much of the class-carrying objects' area lands in the finest patches.

For every scorer and budget N, on test images of built-in tasks whose generator knows the
object masks: the fraction of object area in p_min patches and the mean patch side over the
objects, the same for the distractors (blank plates / decoys), against the random scorer and
the oracle (the object mask itself through the precomputed scorer), with the scorer's GMACs
and ms/img (1 thread, min over interleaved repeats) beside each. Usage:

    python benchmarks/scorer_quality.py [--tasks glyphs natural] [--budgets 28 64 100]
        [--scorers pixel-blur entropy laplacian distilled:runs/sal/scorer.safetensors]
        [--images 256] [--json OUT.json]

``random`` and ``oracle`` are always measured. A scorer with weights is ``NAME:FILE``
(``distilled``/``learned``: a saliency-net file; ``feature``: a backbone weights file).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD  # noqa: E402

from quadformer.data import build_dataset  # noqa: E402
from quadformer.tokenize import QuadGeometry  # noqa: E402
from quadformer.tokenize.quadtree import select_tokens  # noqa: E402
from quadformer.tokenize.scorers import PrecomputedScorer, RandomScorer, create_scorer  # noqa: E402
from quadformer.tokenize.scorers.quality import mask_coverage, summarise  # noqa: E402
from quadformer.utils.errors import QuadformerError  # noqa: E402
from quadformer.utils.io import atomic_write  # noqa: E402

DEFAULT_SCORERS = ["pixel-blur", "entropy", "laplacian"]


def load_task(task: str, n: int, size: int, split: str = "test", seed: int = 0):
    """Normalised images ``[n, 3, size, size]``, object and distractor masks ``[n, size, size]``."""
    from quadformer.data import builtin_task_names

    if task not in builtin_task_names():
        raise QuadformerError(f"unknown built-in task {task!r}; tasks with object masks: glyphs, natural, ...")
    ds = build_dataset(f"builtin:{task}", split, size, size=n, seed=seed)
    if not hasattr(ds, "render"):
        raise QuadformerError(f"task {task!r} cannot render object masks; use a built-in task such as glyphs")
    imgs, masks, dmasks = [], [], []
    for i in range(n):
        s = ds.render(i, return_mask=True)
        if s.mask is None:
            raise QuadformerError(f"task {task!r} gives no object masks; use a built-in task")
        imgs.append(s.image)
        masks.append(s.mask)
        dmasks.append(s.distractor_mask if s.distractor_mask is not None else np.zeros_like(s.mask))
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float().div_(255)
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1)
    return (x - mean) / std, torch.from_numpy(np.stack(masks)), torch.from_numpy(np.stack(dmasks))


def build(spec: str):
    name, _, path = spec.partition(":")
    if name == "random":
        return RandomScorer(seed=0)
    if name == "oracle":
        return PrecomputedScorer()
    if path:
        return create_scorer(name, weights=path)
    return create_scorer(name)


def scores_of(name: str, scorer, images: torch.Tensor, masks: torch.Tensor, g: QuadGeometry, chunk: int = 64):
    out = []
    for i in range(0, images.shape[0], chunk):
        x = images[i:i + chunk]
        extra = {"saliency": masks[i:i + chunk]} if name == "oracle" else {}
        out.append(scorer(x, g, **extra))
    return [torch.cat(m) for m in zip(*out)]


def measure(tasks, budgets, scorer_specs, n_images, size=128, p_min=8, p_max=32, repeats=3, log=print,
            builders=None):
    """``builders``: optional ``{spec: () -> scorer}`` for settings a spec string cannot name."""
    records = []
    specs = ["random", "oracle"] + [s for s in scorer_specs if s not in ("random", "oracle")]
    for task in tasks:
        images, masks, dmasks = load_task(task, n_images, size)
        g0 = QuadGeometry(size, size, p_min, p_max, budgets[0])
        scorers = {s: (builders or {}).get(s, lambda s=s: build(s))() for s in specs}
        for s in scorers.values():
            s.eval()
        times = {s: float("inf") for s in specs}
        maps = {}
        for _ in range(repeats):  # interleaved: every scorer once per round
            for s in specs:
                if isinstance(scorers[s], RandomScorer):
                    scorers[s].reset()
                t0 = time.perf_counter()
                maps[s] = scores_of(s.partition(":")[0], scorers[s], images, masks, g0)
                times[s] = min(times[s], (time.perf_counter() - t0) * 1000 / images.shape[0])
        for n in budgets:
            g = g0.with_budget(n)
            rows = {}
            for s in specs:
                index = select_tokens(maps[s], g, images.shape[0], images.device)
                obj, dis = summarise(mask_coverage(index, g, masks)), summarise(mask_coverage(index, g, dmasks))
                rows[s] = (obj, dis)
            for s in specs:
                (of, oside), (df, dside) = rows[s]
                rec = {"task": task, "scorer": s, "num_patches": n, "object_fine_fraction": round(of, 4),
                       "object_mean_side": round(oside, 2), "distractor_fine_fraction": round(df, 4),
                       "distractor_mean_side": round(dside, 2),
                       "random_fine_fraction": round(rows["random"][0][0], 4),
                       "oracle_fine_fraction": round(rows["oracle"][0][0], 4),
                       "gmacs": round(scorers[s].gmacs(g), 6), "ms_per_image": round(times[s], 3),
                       "images": int(images.shape[0]), "image_size": size, "p_min": p_min, "p_max": p_max}
                records.append(rec)
                log(f"| {task} | {s} | {n} | {100 * of:.1f} | {oside:.1f} | {100 * df:.1f} | {dside:.1f} | "
                    f"{rec['gmacs']:.4f} | {rec['ms_per_image']:.2f} |")
    return records


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", nargs="+", default=["glyphs"])
    p.add_argument("--budgets", type=int, nargs="+", default=[28, 64, 100])
    p.add_argument("--scorers", nargs="+", default=DEFAULT_SCORERS)
    p.add_argument("--images", type=int, default=256, help="test images per task (default 256)")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--p-min", type=int, default=8)
    p.add_argument("--p-max", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, metavar="OUT", help="write one record per (task, scorer, N)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print("| task | scorer | N | object area in finest (%) | object mean side (px) | distractor area in "
          "finest (%) | distractor mean side (px) | scorer GMACs | ms/img |")
    print("|---|---|---|---|---|---|---|---|---|")
    try:
        records = measure(args.tasks, args.budgets, args.scorers, args.images, args.size, args.p_min, args.p_max,
                          args.repeats)
    except QuadformerError as e:
        print(f"scorer_quality: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        blob = json.dumps(records, indent=1).encode()
        atomic_write(args.json, lambda f: f.write(blob))
        print(f"wrote {args.json} ({len(records)} records)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
