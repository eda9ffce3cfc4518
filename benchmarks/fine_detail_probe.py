"""Is the class in the fine detail? A linear probe on the class objects, at full and half resolution.

For single-label tasks whose generator knows the class objects' masks (``glyphs``, ``natural``, ...): a
12x12 window at the centre of the largest class object, its 2D power spectrum (log), a
standardised logistic regression trained on ``--train`` images and scored on ``--test`` test
images; then the same after a 2x average-pool down-scale (what a uniform grid of 16-px patches
embedded at 8 px sees). The object is located by its mask (an oracle), so the figures bound what
the detail alone carries. Usage:

    OMP_NUM_THREADS=1 python benchmarks/fine_detail_probe.py [--tasks natural glyphs] [--train 2000]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from quadformer.data import build_dataset  # noqa: E402

SIZE, WIN = 128, 12


def features(task: str, split: str, n: int, half: bool) -> tuple[np.ndarray, np.ndarray]:
    ds = build_dataset(f"builtin:{task}", split, SIZE, size=n)
    if ds.multilabel or not hasattr(ds, "render"):
        raise SystemExit(f"fine_detail_probe: {task} is not a single-label task with object masks")
    xs, ys = [], []
    for i in range(n):
        s = ds.render(i, return_mask=True)
        img = s.image.astype(np.float32) / 255
        if half:
            img = img.reshape(SIZE // 2, 2, SIZE // 2, 2, 3).mean((1, 3)).repeat(2, 0).repeat(2, 1)
        lab, k = ndimage.label(s.mask > 0.5)
        j = int(np.argmax(ndimage.sum(np.ones_like(s.mask), lab, range(1, k + 1)))) + 1
        cy, cx = (min(max(int(round(v)), WIN // 2), SIZE - WIN // 2) for v in ndimage.center_of_mass(lab == j))
        g = img[cy - WIN // 2:cy + WIN // 2, cx - WIN // 2:cx + WIN // 2]
        power = np.abs(np.fft.fft2(g - g.mean((0, 1)), axes=(0, 1))) ** 2
        xs.append(np.log1p(1e3 * power.sum(-1)).ravel())
        ys.append(int(s.target))
    return np.array(xs), np.array(ys)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=["natural", "glyphs"])
    ap.add_argument("--train", type=int, default=2000)
    ap.add_argument("--test", type=int, default=800)
    args = ap.parse_args()
    print("| task | full-res top-1 (%) | half-res top-1 (%) | chance (%) |")
    print("|---|---|---|---|")
    for task in args.tasks:
        acc = []
        for half in (False, True):
            xtr, ytr = features(task, "train", args.train, half)
            xte, yte = features(task, "test", args.test, half)
            clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.1)).fit(xtr, ytr)
            acc.append(100 * clf.score(xte, yte))
        print(f"| {task} | {acc[0]:.1f} | {acc[1]:.1f} | {100 / len(np.unique(ytr)):.1f} |", flush=True)


if __name__ == "__main__":
    main()
