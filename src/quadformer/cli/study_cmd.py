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
import logging
import time


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..study import ARCHS, CONDITIONS

    p.add_argument("name", choices=["diversity-transfer"], help="which study")
    p.add_argument("--seeds", type=int, default=None, help="seeds per condition (default 5; --quick: 2)")
    p.add_argument("--quick", action="store_true", help="small data and few epochs: a smoke run")
    p.add_argument("--arch", default="vit", choices=list(ARCHS), help="architecture of every studied model")
    p.add_argument("--conditions", nargs="+", default=None, choices=list(CONDITIONS), help="default: the core set")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples")
    p.add_argument("--out", default=None, help="output folder (default outputs/study, or outputs/study_quick)")


def run(args: argparse.Namespace) -> int:
    from ..study import Study, StudyConfig
    from ..study.report import write_report

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    kw = {"arch": args.arch, "num_threads": args.threads}
    if args.seeds is not None:
        if args.seeds < 1:
            raise ValueError(f"--seeds {args.seeds}: need at least 1 (5 for the paired contrasts)")
        kw["seeds"] = args.seeds
    if args.conditions:
        kw["conditions"] = tuple(args.conditions)
    sc = StudyConfig.quick(**kw) if args.quick else StudyConfig(**kw)
    t0 = time.perf_counter()
    study = Study(sc, args.out or ("outputs/study_quick" if args.quick else "outputs/study"))
    rows = study.run()
    tag = f"{sc.arch}{'_quick' if args.quick else ''}"
    from dataclasses import asdict

    from ..utils.io import file_lock

    with file_lock(study.out / f"report_{tag}.lock"):  # processes sharing the folder write it in turn
        analysis = write_report(rows, study.out, tag, asdict(sc), args.resamples, study.compute_seconds())
    print(f"study finished in {(time.perf_counter() - t0) / 60:.1f} min; report: {study.out / f'report_{tag}.md'}")
    for h in analysis.get("h3", []):
        print(f"  {h['contrast']}: {len(h['tasks_won'])} single-label tasks won; target {'met' if h['met'] else 'not met'}")
    for m, r in analysis.get("h4", {}).items():
        if not m.startswith("d_"):
            print(f"  partial r({m}, T | A) = {r['partial_r']:+.2f} [{r['partial_r_ci_low']:+.2f}, {r['partial_r_ci_high']:+.2f}]")
    return 0
