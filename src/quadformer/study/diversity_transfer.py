"""The diversity-transfer study (docs/design/diverse_transfer.md §1, §5), top to bottom.

1. Train a KD teacher (a wider supervised model) once.
2. For every seed: train each scheme on the built-in upstream task (the SSL run is shared as
   stage A of the two-stage schemes), plus the untrained init as a reference.
3. Measure every model (scores in percent): upstream head accuracy, upstream linear-probe accuracy (A),
   diversity (W1, W2, A1, A2, A3 and their change from init) and linear-probe transfer (T)
   on the built-in downstream suite.
4. Analyse (:mod:`quadformer.study.analysis`) and write the report (:mod:`quadformer.study.report`).

Every step writes its result to disk; a rerun skips what is done, so an interrupted study
continues where it stopped.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..utils.errors import QuadformerError
from ..utils.io import write_json
from ..utils.metrics import accuracy_topk

log = logging.getLogger("quadformer.study")

# condition name -> pretraining scheme
CONDITIONS: dict[str, str] = {
    "sup": "supervised",
    "sup_kd": "supervised-kd",
    "sup_long": "supervised-long",
    "ssl": "ssl",
    "ssl_sup": "ssl-then-supervised",
    "ssl_sup_kd": "ssl-then-supervised-kd",
    "ssl_sup_lowlr": "ssl-then-supervised-lowlr",
    "joint": "joint",
}
CORE = ("sup", "sup_kd", "sup_long", "ssl", "ssl_sup", "ssl_sup_kd", "joint")
CONTRASTS = (("ssl", "sup"), ("ssl_sup", "sup"), ("ssl_sup_kd", "sup_kd"), ("sup_long", "sup"))

ARCHS: dict[str, dict[str, Any]] = {
    "vit": {"name": "uniform_vit_nano_patch4_32", "num_patches": 64},
    "quadformer": {"name": "quadformer_nano_patch4_32", "num_patches": 28},
    "resnet": {"name": "resnet10t", "num_patches": None},
}
TEACHER_KWARGS = {"embed_dim": 128, "depth": 4, "num_heads": 4}  # the micro trunk: about 4x wider in MACs


@dataclass
class StudyConfig:
    arch: str = "vit"
    seeds: int = 5
    conditions: tuple[str, ...] = CORE
    upstream: str = "builtin:shapes-textures"
    image_size: int = 32
    train_size: int = 6000
    val_size: int = 1000
    batch_size: int = 64
    lr: float = 1e-3
    sup_epochs: int = 12
    ssl_epochs: int = 16
    ssl_lr: float = 1e-3
    teacher_epochs: int = 16
    long_factor: int = 2
    joint_lambda: float = 0.3
    probe_grid: str = "full"
    upstream_probe_train: int = 3000  # upstream linear probe: train images (A)
    diversity_images: int = 2000
    trajectory_points: int = 6  # stage-B snapshots of ssl_sup measured along the way (0: off)
    num_threads: int | None = None
    extra_overrides: list[str] = field(default_factory=list)

    @classmethod
    def quick(cls, **kw: Any) -> "StudyConfig":
        base = dict(seeds=2, train_size=1024, val_size=500, batch_size=64, sup_epochs=3, ssl_epochs=3,
                    teacher_epochs=3, long_factor=2, probe_grid="smoke", upstream_probe_train=1000,
                    diversity_images=500)
        base.update(kw)
        return cls(**base)


def _base_overrides(sc: StudyConfig) -> list[str]:
    arch = ARCHS[sc.arch]
    ov = [f"model.name={arch['name']}", f"model.num_patches={'null' if arch['num_patches'] is None else arch['num_patches']}",
          f"data.train={sc.upstream}", f"data.image_size={sc.image_size}", f"data.train_size={sc.train_size}",
          f"data.val_size={sc.val_size}", f"data.batch_size={sc.batch_size}", f"optim.lr={sc.lr}",
          f"train.epochs={sc.sup_epochs}", "train.amp=off", "train.progress=true", "output.tensorboard=false",
          "optim.warmup_epochs=1", "optim.label_smoothing=0.0", f"objective.joint_lambda={sc.joint_lambda}"]
    return ov + list(sc.extra_overrides)


def in_percent(row: dict[str, Any]) -> dict[str, Any]:
    """A measurement row with its scores in percent: rows cached before the unit became percent
    (no ``unit`` key) held fractions for ``up_lp``, ``up_acc`` and every ``T_<task>``."""
    if row.get("unit") == "percent":
        return row
    out = dict(row, unit="percent")
    for k, v in row.items():
        if (k in ("up_lp", "up_acc") or k.startswith("T_")) and isinstance(v, (int, float)) and v is not None:
            out[k] = 100.0 * v
    return out


class Study:
    def __init__(self, sc: StudyConfig, out: str | Path) -> None:
        if sc.arch not in ARCHS:
            raise QuadformerError(f"--arch {sc.arch!r}; use one of {', '.join(ARCHS)}")
        unknown = [c for c in sc.conditions if c not in CONDITIONS]
        if unknown:
            raise QuadformerError(f"unknown conditions {unknown}; use {', '.join(CONDITIONS)}")
        for name in ("seeds", "image_size", "train_size", "val_size", "batch_size", "sup_epochs", "ssl_epochs",
                     "teacher_epochs", "long_factor", "upstream_probe_train", "diversity_images"):
            v = getattr(sc, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise QuadformerError(f"study setting {name}={v!r} must be an integer >= 1")
        for name in ("lr", "ssl_lr"):
            if not getattr(sc, name) > 0:
                raise QuadformerError(f"study setting {name}={getattr(sc, name)!r} must be > 0")
        if sc.trajectory_points < 0:
            raise QuadformerError(f"study setting trajectory_points={sc.trajectory_points} must be >= 0")
        self.sc, self.out = sc, Path(out)
        self.runs = self.out / "runs" / sc.arch
        self.measure_dir = self.out / "measurements" / sc.arch
        self.cache_dir = self.out / "feature_cache"

    # ------------------------------------------------------------------ training
    def config(self, seed: int, *extra: str):
        from ..train import load_config

        return load_config(None, _base_overrides(self.sc) + [f"seed={seed}", *extra])

    def teacher(self) -> Path:
        """A wider supervised model on the upstream task, trained once for all seeds."""
        from ..train import run_scheme

        out = self.out / "runs" / "teacher"
        kw = "{" + ", ".join(f"{k}: {v}" for k, v in TEACHER_KWARGS.items()) + "}"
        arch = ARCHS["vit"]
        cfg = self.config(1000, f"model.name={arch['name']}", f"model.num_patches={arch['num_patches']}",
                          f"model.kwargs={kw}", f"train.epochs={self.sc.teacher_epochs}")
        run_scheme("supervised", cfg, out)
        return out / "model.safetensors"

    def train_condition(self, cond: str, seed: int, teacher: Path | None) -> Path:
        from ..train import SchemeOptions, run_scheme

        out = self.runs / f"seed{seed}" / cond
        ssl_dir = self.runs / f"seed{seed}" / "ssl"
        stage_a = [f"train.epochs={self.sc.ssl_epochs}", f"optim.lr={self.sc.ssl_lr}"]
        opts = SchemeOptions(teacher=str(teacher) if teacher else None, stage_a_overrides=stage_a,
                             long_factor=self.sc.long_factor)
        scheme = CONDITIONS[cond]
        if scheme.startswith("ssl-then"):  # the seed's SSL run is every two-stage scheme's stage A
            run_scheme("ssl", self.config(seed), ssl_dir, SchemeOptions(stage_a_overrides=stage_a))
            opts.stage_a = str(ssl_dir)
        extra = [f"train.snapshots={self.sc.trajectory_points}"] if cond == "ssl_sup" else []
        run_scheme(scheme, self.config(seed, *extra), out, opts)
        return out / "model.safetensors"

    def trajectory(self, seed: int) -> list[Path]:
        """ssl_sup's stage-B snapshots, in step order (empty when the run kept none)."""
        return sorted((self.runs / f"seed{seed}" / "ssl_sup" / "stage_b" / "snapshots").glob("step*.safetensors"))

    # ------------------------------------------------------------------ measuring
    def measure(self, cond: str, seed: int, weights: Path | None) -> dict[str, Any]:
        """Upstream accuracy, diversity and transfer of one model (cached as JSON)."""
        path = self.measure_dir / f"{cond}_seed{seed}.json"
        if path.is_file():
            return in_percent(json.loads(path.read_text()))
        from ..diversity import fresh_init, measure_diversity
        from ..models.factory import model_gmacs
        from ..models.loading import load_model
        from ..train import build_model
        from ..transfer import DataRef, build_eval_dataset, builtin_tasks, get_features, linear_probe

        t0 = time.perf_counter()
        init_spec = ARCHS[self.sc.arch]["name"]
        cfg = self.config(seed)
        init_model = fresh_init(lambda: build_model(cfg, self._upstream_classes()), seed).eval()
        if weights is None:  # the untrained reference: the init of this seed's runs
            model, digest = init_model, f"init:{init_spec}:{seed}:{self.sc.image_size}"
        else:
            lm = load_model(str(weights))
            model, digest = lm.model, lm.digest
        row: dict[str, Any] = {"arch": self.sc.arch, "condition": cond, "seed": seed, "weights": str(weights),
                               "unit": "percent"}

        # upstream: head accuracy (supervised conditions) and linear-probe accuracy A
        up_tr = DataRef(self.sc.upstream, "train", self.sc.image_size, size=self.sc.upstream_probe_train)
        up_te = DataRef(self.sc.upstream, "test", self.sc.image_size, size=self.sc.val_size)
        f_tr = get_features(model, digest, up_tr, cache_dir=self.cache_dir)
        f_te = get_features(model, digest, up_te, cache_dir=self.cache_dir)
        row["up_lp"] = linear_probe(f_tr.features, f_tr.targets, f_te.features, f_te.targets,
                                    grid=self.sc.probe_grid).score
        row["up_acc"] = self._head_accuracy(model, up_te) if cond not in ("rand", "ssl") else None

        # diversity on the held-out upstream validation split
        probe = build_eval_dataset(DataRef(self.sc.upstream, "val", self.sc.image_size, size=self.sc.val_size))
        div = measure_diversity(model, probe, init_model, num_images=min(self.sc.diversity_images, len(probe)),
                                seed=0)
        for k, v in div["metrics"].items():
            row[k] = v
        for k, v in (div.get("delta_vs_init") or {}).get("metrics", {}).items():
            row[f"d_{k}"] = v

        # transfer: linear probes on the downstream suite
        for task in builtin_tasks():
            tr = DataRef(task.train, task.split_train, self.sc.image_size, size=task.train_size, seed=task.seed)
            te = DataRef(task.test, task.split_test, self.sc.image_size, size=task.test_size, seed=task.seed)
            a, b = get_features(model, digest, tr, cache_dir=self.cache_dir), get_features(model, digest, te,
                                                                                          cache_dir=self.cache_dir)
            res = linear_probe(a.features, a.targets, b.features, b.targets, multilabel=a.multilabel,
                               num_classes=a.num_classes, grid=self.sc.probe_grid)
            row[f"T_{task.name}"] = res.score
            if a.multilabel:
                row.setdefault("multilabel_tasks", []).append(task.name)
        row["gmacs"] = model_gmacs(model, self.sc.image_size)[0]
        row["seconds"] = time.perf_counter() - t0
        write_json(path, row)
        return row

    def _upstream_classes(self) -> int:
        if not hasattr(self, "_n_up"):
            from ..data import build_dataset

            self._n_up = int(build_dataset(self.sc.upstream, "val", self.sc.image_size, size=8).num_classes)
        return self._n_up

    def _head_accuracy(self, model: torch.nn.Module, ref) -> float | None:
        """Top-1 (percent) of the model's own head on the upstream test split."""
        from ..models.inference import predict
        from ..transfer import build_eval_dataset

        if getattr(model, "num_classes", 0) != self._upstream_classes():
            return None
        logits, ys = predict(model, build_eval_dataset(ref), batch_size=256)
        return accuracy_topk(logits, torch.cat([torch.as_tensor(y) for y in ys]), ks=(1,))[1]

    def compute_seconds(self) -> dict[str, float]:
        """Summed epoch wall time of every training run, by condition (stage A counted under ``ssl``,
        where it ran), plus the shared teacher: what the study cost, as the runs logged it."""
        out: dict[str, float] = {}
        teacher = self.out / "runs" / "teacher" / "summary.json"
        if teacher.is_file():
            out["teacher"] = float(json.loads(teacher.read_text()).get("train_seconds", 0.0))
        for summary in sorted(self.runs.glob("seed*/*/summary.json")) + sorted(self.runs.glob("seed*/*/stage_b/summary.json")):
            cond = summary.parent.name if summary.parent.name != "stage_b" else summary.parent.parent.name
            out[cond] = out.get(cond, 0.0) + float(json.loads(summary.read_text()).get("train_seconds", 0.0))
        return out

    # ------------------------------------------------------------------ all
    def run(self) -> list[dict[str, Any]]:
        """Train and measure every condition x seed; returns the rows (trajectory rows included).

        Each seed is done under a lock file, so the same command started in several processes
        (e.g. two with ``--threads 1`` on a 2-core machine, or one per machine on a shared file
        system) splits the seeds between them: a process skips seeds another one holds, then
        waits for them and reads their cached results."""
        from tqdm import tqdm

        from ..utils.io import file_lock

        if self.sc.num_threads:
            torch.set_num_threads(self.sc.num_threads)
        self.out.mkdir(parents=True, exist_ok=True)
        write_json(self.out / f"study_{self.sc.arch}.json", asdict(self.sc))
        needs_teacher = any(CONDITIONS[c].endswith("-kd") for c in self.sc.conditions)
        teacher = None
        if needs_teacher:
            with file_lock(self.out / ".locks" / "teacher.lock"):
                teacher = self.teacher()
        per_seed = 1 + len(self.sc.conditions)
        bar = tqdm(total=self.sc.seeds * per_seed, desc=f"study {self.sc.arch}", dynamic_ncols=True)
        rows: dict[int, list[dict[str, Any]]] = {}
        for blocking in (False, True):  # first the seeds nobody holds, then wait for the others
            for seed in range(self.sc.seeds):
                if seed in rows:
                    continue
                with file_lock(self.out / ".locks" / f"{self.sc.arch}_seed{seed}.lock", blocking=blocking) as held:
                    if held:
                        rows[seed] = self._run_seed(seed, teacher, bar)
        bar.close()
        return [r for seed in sorted(rows) for r in rows[seed]]

    def _run_seed(self, seed: int, teacher: Path | None, bar) -> list[dict[str, Any]]:
        rows = []
        for cond in ("rand", *self.sc.conditions):
            bar.set_postfix_str(f"seed {seed} {cond}")
            weights = None if cond == "rand" else self.train_condition(cond, seed, teacher)
            rows.append(self.measure(cond, seed, weights))
            if cond == "ssl_sup" and self.sc.trajectory_points:
                for k, snap in enumerate(self.trajectory(seed)):
                    row = self.measure(f"traj{k + 1}", seed, snap)
                    row["step"] = int(snap.stem.removeprefix("step"))
                    rows.append(row)
            bar.update(1)
        return rows
