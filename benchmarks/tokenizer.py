"""Tokenizer throughput, and its cost as a fraction of a ViT-S forward at the same N.

Everything is measured side by side in one run (interleaved repeats, medians), so the
ratios hold on a noisy, shared machine. Usage:

    OMP_WAIT_POLICY=PASSIVE python benchmarks/tokenizer.py [--threads 2] [--quick] [--csv out.csv]

Columns: ms/img and images/s of the full tokenizer (score + select + resample + embed,
D=384; ``Tokenizer`` runs the Quadformer's own ``embed_mosaic`` path), ms/img of a timm
ViT-S forward on N uniform tokens, and tokenizer/ViT-S. A second table times selection
alone over N (Python overhead must not grow with N). ``benchmarks/run_all.py`` prints all
README tables (model forward, training step, peak memory, CUDA).
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from timm.models.vision_transformer import VisionTransformer  # noqa: E402

from quadformer.tokenize import QuadGeometry, Tokenizer, nearest_legal_budgets, select_tokens  # noqa: E402
from quadformer.tokenize.scorers import FeatureScorer, PixelBlurScorer  # noqa: E402
from quadformer.tokenize.tokenizer import uniform_grid_for_budget  # noqa: E402

SETTINGS = [(224, 16, 32), (256, 16, 64), (384, 16, 64)]
TARGET_N = (64, 100, 196)


def legal_n(size: int, pmin: int, pmax: int, n: int) -> int:
    return nearest_legal_budgets(n, size, size, pmin, pmax)[0]


def vit_small(n: int) -> VisionTransformer:
    gh, gw = uniform_grid_for_budget(n, (1, 1))
    return VisionTransformer(img_size=(gh * 16, gw * 16), patch_size=16, embed_dim=384, depth=12, num_heads=6,
                             num_classes=1000).eval()


def timed(fn, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def interleaved(fns: dict, reps: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds per call of each fn, measured round-robin."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            times[k] += timed(fn, 1)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="256 px, N=100 only")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--csv", default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} CPUs (other jobs change the ratios: compare runs on a quiet machine)")
    pixel = PixelBlurScorer()
    feature = FeatureScorer(weights="random")  # same compute as trained weights
    rows = []
    settings = [(256, 16, 64)] if args.quick else SETTINGS
    targets = (100,) if args.quick else TARGET_N
    hdr = (f"{'size':>4} {'pmin/pmax':>9} {'N':>4} {'batch':>5} | {'pixel-blur ms/img':>17} {'img/s':>7} "
           f"{'/ViT-S':>7} | {'feature ms/img':>14} {'img/s':>7} {'/ViT-S':>7} | {'ViT-S ms/img':>12}")
    print(hdr)
    print("-" * len(hdr))
    with torch.inference_mode():
        for size, pmin, pmax in settings:
            for target in targets:
                n = legal_n(size, pmin, pmax, target)
                vit = vit_small(n)
                gh, gw = uniform_grid_for_budget(n, (1, 1))
                toks = {name: Tokenizer(size, pmin, pmax, n, 384, scorer=sc).eval()
                        for name, sc in (("pixel", pixel), ("feature", feature))}
                for batch in (1, 64):
                    x = torch.randn(batch, 3, size, size)
                    xs = torch.randn(batch, 3, gh * 16, gw * 16)
                    reps = args.reps if batch == 64 else 4 * args.reps
                    med = interleaved({
                        "pixel": lambda: toks["pixel"](x),
                        "feature": lambda: toks["feature"](x),
                        "vit": lambda: vit(xs),
                    }, reps)
                    ms = {k: 1e3 * v / batch for k, v in med.items()}
                    row = dict(size=size, p_min=pmin, p_max=pmax, N=n, batch=batch,
                               pixel_ms=ms["pixel"], feature_ms=ms["feature"], vit_ms=ms["vit"],
                               pixel_ratio=ms["pixel"] / ms["vit"], feature_ratio=ms["feature"] / ms["vit"])
                    rows.append(row)
                    print(f"{size:>4} {f'{pmin}/{pmax}':>9} {n:>4} {batch:>5} | {ms['pixel']:>17.2f} "
                          f"{1e3 / ms['pixel']:>7.0f} {row['pixel_ratio']:>7.1%} | {ms['feature']:>14.2f} "
                          f"{1e3 / ms['feature']:>7.0f} {row['feature_ratio']:>7.1%} | {ms['vit']:>12.2f}")
                    sys.stdout.flush()

        # Single-threaded end-to-end pixel-blur tokenizer (the reference took ~8-10 ms/img here).
        torch.set_num_threads(1)
        tok = Tokenizer(256, 16, 64, 100, 384, scorer=pixel).eval()
        x = torch.randn(64, 3, 256, 256)
        t = interleaved({"tok": lambda: tok(x)}, args.reps)["tok"]
        print(f"\nsingle thread, pixel-blur tokenizer, 256 px, N=100, batch 64: {1e3 * t / 64:.2f} ms/img")
        torch.set_num_threads(args.threads)

        # Selection alone vs N: the cost must not grow with N in Python overhead.
        print("\nselection only (scores given), 384 px, patches 16..64, batch 64:")
        g0 = QuadGeometry(384, 384, 16, 64, 36)
        scores = [torch.rand(64, *g0.grid(s)) for s in range(1, g0.num_scales)]
        for n in (36, 99, 195, 399, 576):
            g = g0.with_budget(n)
            t = interleaved({"sel": lambda: select_tokens(scores, g)}, args.reps * 2)["sel"]
            print(f"  N={n:>4}: {1e3 * t:.2f} ms/batch")
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
