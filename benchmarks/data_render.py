"""Rendering cost of the procedural tasks, per image, measured side by side in one run.

Usage: ``OMP_NUM_THREADS=1 python benchmarks/data_render.py [--n 200]``

The glyph and natural-photo tasks render one image per call (ms/img at 128 px, the natural
tasks' target is under 5 ms on one core); the suite tasks render whole blocks at construction
(ms/img at 32 px). Repeats are interleaved and the median is printed, so the figures hold on a
shared machine; the last column is each task relative to ``glyphs``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

from quadformer.data import NaturalDataset, build_dataset, build_suite_dataset  # noqa: E402

PER_IMAGE = ["glyphs", "glyphs-multi", "digits", "natural", "natural-multi"]
SUITE = ["shapes-textures", "scenes", "scenes-hard", "sk-digits"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="images per repeat")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    sets = {t: build_dataset(f"builtin:{t}", "train", 128, size=args.n) for t in PER_IMAGE}
    for ds in sets.values():
        ds.render(0, return_mask=isinstance(ds, NaturalDataset))  # one-off set-up (photo bank, fonts)
    times: dict[str, list[float]] = {t: [] for t in PER_IMAGE + SUITE}
    for _ in range(args.repeats):
        for t, ds in sets.items():
            t0 = time.perf_counter()
            for i in range(args.n):
                ds.render(i)
            times[t].append((time.perf_counter() - t0) / args.n * 1e3)
        for t in SUITE:
            t0 = time.perf_counter()
            build_suite_dataset(t, "train", 32, size=min(args.n, 797) if t == "sk-digits" else args.n)
            times[t].append((time.perf_counter() - t0) / args.n * 1e3)
    ref = statistics.median(times["glyphs"])
    print(f"{'task':18s} {'px':>4s} {'ms/img':>8s} {'vs glyphs':>10s}")
    for t, ts in times.items():
        m = statistics.median(ts)
        print(f"{t:18s} {128 if t in PER_IMAGE else 32:4d} {m:8.2f} {m / ref:10.2f}")


if __name__ == "__main__":
    main()
