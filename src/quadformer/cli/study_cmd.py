"""Run a study end to end: train, measure, analyse, report.

  quadformer study diversity-transfer --quick            # smoke: 2 seeds, small data (< 10 min, 2 CPU cores)
  quadformer study diversity-transfer --seeds 5          # the full study
  quadformer study diversity-transfer --arch quadformer  # the same with the mixed-resolution ViT

Trains every pretraining scheme (supervised, -kd, -long, ssl, ssl-then-supervised(-kd), joint)
on the built-in upstream task for each seed, measures upstream accuracy, diversity
(W1, W2, A1, A2, A3) and linear-probe transfer on the built-in downstream suite, and writes
OUT/report_<arch>.md with tables, regressions with bootstrap intervals and plots.
Every run and measurement is kept on disk: rerun the same command to continue.
Start the same command in several processes to split the seeds between them (each seed runs
under a lock file); on 2 cores, two processes with --threads 1 beat one with --threads 2.
"""

from __future__ import annotations

import argparse
import time

from ..utils.errors import QuadformerError
from .common import add_common, positive_int


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..study import ARCHS, CONDITIONS

    p.add_argument("name", choices=["diversity-transfer"], help="which study")
    p.add_argument("--seeds", type=positive_int, nargs="+", default=None,
                   help="seeds per condition (default 5; --quick: 2); one value per --arch, or one for all")
    p.add_argument("--quick", action="store_true", help="small data and few epochs: a smoke run")
    p.add_argument("--arch", nargs="+", default=["vit"], choices=list(ARCHS),
                   help="architecture(s) of the studied models; with several, also a pooled report "
                        "(architecture fixed effects, accuracy vs GMACs)")
    p.add_argument("--conditions", nargs="+", default=None, choices=list(CONDITIONS), help="default: the core set")
    p.add_argument("--resamples", type=positive_int, default=2000, help="bootstrap resamples (default: 2000)")
    p.add_argument("--out", default=None, help="output folder (default outputs/study, or outputs/study_quick)")
    # the engine picks the device and each run keeps its own progress setting; only --threads and the log level
    add_common(p, device=False, progress=False, log_level_default="warning")


def run(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from ..study import Study, StudyConfig
    from ..study.report import write_pooled_report, write_report
    from ..utils.io import file_lock

    archs = list(dict.fromkeys(args.arch))
    seeds = args.seeds or [None]
    if len(seeds) not in (1, len(archs)):
        raise QuadformerError(f"--seeds {' '.join(map(str, seeds))}: give one value, or one per --arch ({len(archs)})")
    if any(n is not None and n < 1 for n in seeds):
        raise QuadformerError(f"--seeds {' '.join(map(str, seeds))}: need at least 1 (5 for the paired contrasts)")
    seeds = seeds * len(archs) if len(seeds) == 1 else seeds
    t0 = time.perf_counter()
    out = args.out or ("outputs/study_quick" if args.quick else "outputs/study")
    pooled: list[dict] = []
    for arch, n_seeds in zip(archs, seeds):
        kw = {"arch": arch, "num_threads": args.threads}
        if n_seeds is not None:
            kw["seeds"] = n_seeds
        if args.conditions:
            kw["conditions"] = tuple(args.conditions)
        sc = StudyConfig.quick(**kw) if args.quick else StudyConfig(**kw)
        study = Study(sc, out)
        rows = study.run()
        pooled += rows
        tag = f"{sc.arch}{'_quick' if args.quick else ''}"
        with file_lock(study.out / ".locks" / f"report_{tag}.lock"):  # processes sharing the folder write it in turn
            analysis = write_report(rows, study.out, tag, asdict(sc), args.resamples, study.compute_seconds())
        print(f"{arch}: report {study.out / f'report_{tag}.md'}")
        for h in analysis.get("h3", []):
            print(f"  {h['contrast']}: {len(h['tasks_won'])} single-label tasks won; "
                  f"target {'met' if h['met'] else 'not met'}")
        for m, r in analysis.get("h4", {}).items():
            if not m.startswith("d_"):
                print(f"  partial r({m}, T | A) = {r['partial_r']:+.2f} "
                      f"[{r['partial_r_ci_low']:+.2f}, {r['partial_r_ci_high']:+.2f}]")
    if len(archs) > 1:
        tag = "+".join(archs) + ("_quick" if args.quick else "")
        with file_lock(study.out / ".locks" / f"report_{tag}.lock"):
            write_pooled_report(pooled, study.out, tag, args.resamples)
        print(f"pooled report: {study.out / f'report_{tag}.md'}")
    print(f"study finished in {(time.perf_counter() - t0) / 60:.1f} min")
    return 0
