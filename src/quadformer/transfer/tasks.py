"""Downstream task lists: the built-in suite or a ``TASKS.yaml``, validated before any work.

``TASKS.yaml``::

    tasks:
      - name: flowers                       # required, unique
        train: imagefolder:/data/flowers    # required: a quadformer.data spec
        test: imagefolder:/data/flowers     # default: the train spec
        split_train: train                  # default: train
        split_test: val                     # default: test
        size: 2000                          # optional cap on the number of images per split
        train_size: 1000                    # optional, overrides size for the train split
        test_size: 500                      # optional, overrides size for the test split
        seed: 0                             # optional: which seeded subset / draw

Relative paths are taken relative to the YAML file's folder. Every problem (unknown key, missing
folder or file, unknown built-in task, bad value) is collected and raised as one
:class:`~quadformer.utils.errors.QuadformerError` line before any model or data is touched.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..utils.errors import QuadformerError

__all__ = ["Task", "TASK_KEYS", "builtin_tasks", "load_tasks", "validate_spec", "check_label_spaces"]

TASK_KEYS = ("name", "train", "test", "split_train", "split_test", "size", "train_size", "test_size", "seed")

# Used only while quadformer.data.suite is not available: existing procedural tasks, small sizes.
_FALLBACK = [("digits", False), ("dice", False), ("lines", False), ("lines-multi", True)]
_FALLBACK_SIZES = (1000, 500)


@dataclass(frozen=True)
class Task:
    """One downstream task: a train split and a test split (possibly of different sources)."""

    name: str
    train: str
    test: str
    split_train: str = "train"
    split_test: str = "test"
    train_size: int | None = None
    test_size: int | None = None
    seed: int = 0
    multilabel: bool | None = None  # known up front for built-in tasks; else from the data

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _suite() -> dict | None:
    from ..data import SUITE

    return SUITE


def _as_spec(name: str) -> str:
    return name if ":" in name else f"builtin:{name}"


def builtin_tasks() -> list[Task]:
    """The built-in suite (``quadformer.data.suite.SUITE``: single-label then multi-label tasks,
    their own default sizes, splits train/test). Without the suite module: the procedural
    ``digits``, ``dice``, ``lines`` and ``lines-multi`` tasks at 1000/500 images."""
    suite = _suite()
    tasks: list[Task] = []
    if suite:
        for key, ml in (("single_label", False), ("multi_label", True)):
            for entry in suite.get(key, []):
                spec = _as_spec(str(entry))
                tasks.append(Task(spec.partition(":")[2], spec, spec, multilabel=ml))
        return tasks
    n_train, n_test = _FALLBACK_SIZES
    for name, ml in _FALLBACK:
        spec = f"builtin:{name}"
        tasks.append(Task(name, spec, spec, train_size=n_train, test_size=n_test, multilabel=ml))
    return tasks


def _known_schemes() -> tuple[str, ...]:
    from ..data import DATASET_SCHEMES

    return tuple(DATASET_SCHEMES)


def _builtin_names() -> list[str]:
    from ..data import builtin_task_names

    return builtin_task_names()


def validate_spec(spec: str, split: str | None, where: str) -> list[str]:
    """Problems with one data spec/split, as one-line messages (empty: fine). Checks the scheme,
    built-in task names and that the folder/file a real-data loader will read exists."""
    if not isinstance(spec, str) or not spec:
        return [f"{where}: expected a data spec such as imagefolder:/data/x or builtin:<task>, got {spec!r}"]
    scheme, sep, arg = spec.partition(":")
    scheme = scheme.lower()
    if not sep:
        return [f"{where}: {spec!r} has no scheme; use one of {', '.join(s + ':' for s in _known_schemes())}"]
    if scheme not in _known_schemes():
        return [f"{where}: unknown data scheme {scheme!r} in {spec!r}; valid: {', '.join(_known_schemes())}"]
    if scheme == "builtin":
        names = _builtin_names()
        if arg not in names:
            return [f"{where}: unknown built-in task {arg!r}; available: {', '.join(names)}"]
        if split not in ("train", "val", "test"):
            return [f"{where}: built-in split must be train, val or test, got {split!r}"]
        return []
    if not arg:
        return [f"{where}: {spec!r} needs a path after '{scheme}:'"]
    p = Path(arg)
    if scheme == "csv":
        return [] if p.is_file() else [f"{where}: CSV file not found: {p}"]
    if not p.is_dir():
        return [f"{where}: folder not found: {p}"]
    if scheme == "imagefolder" and split and not (p / split).is_dir():
        return [f"{where}: folder not found: {p / split} (imagefolder reads <root>/<split>/<class>/<image>)"]
    return []


def _resolve_path(spec: Any, base: Path) -> Any:
    if not isinstance(spec, str):
        return spec
    scheme, sep, arg = spec.partition(":")
    if sep and scheme.lower() != "builtin" and arg and not os.path.isabs(os.path.expanduser(arg)):
        return f"{scheme}:{(base / arg).as_posix()}"
    if sep and arg.startswith("~"):
        return f"{scheme}:{os.path.expanduser(arg)}"
    return spec


def _int_or_none(v: Any, where: str, errors: list[str], minimum: int = 1) -> int | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        errors.append(f"{where}: expected an integer >= {minimum}, got {v!r}")
        return None
    return int(v)


def load_tasks(source: str | os.PathLike) -> list[Task]:
    """``"builtin"`` (see :func:`builtin_tasks`) or the path of a ``TASKS.yaml`` (module docstring)."""
    if str(source) == "builtin":
        return builtin_tasks()
    import yaml

    path = Path(source)
    if not path.is_file():
        raise QuadformerError(f"--tasks: {path} is not a file; use 'builtin' or a TASKS.yaml")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise QuadformerError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("tasks"), list) or not doc["tasks"]:
        raise QuadformerError(f"{path}: expected a mapping with a non-empty list 'tasks:' "
                              f"(each task: {', '.join(TASK_KEYS)})")
    extra = sorted(set(doc) - {"tasks"})
    errors: list[str] = []
    if extra:
        errors.append(f"{path}: unknown top-level key(s) {', '.join(map(repr, extra))}; valid: tasks")
    base = path.resolve().parent
    tasks: list[Task] = []
    seen: set[str] = set()
    for i, entry in enumerate(doc["tasks"]):
        where = f"{path.name} task {i + 1}"
        if not isinstance(entry, dict):
            errors.append(f"{where}: expected a mapping with keys {', '.join(TASK_KEYS)}, got {entry!r}")
            continue
        name = entry.get("name")
        if isinstance(name, str) and name:
            where = f"{path.name} task {name!r}"
        unknown = sorted(set(map(str, entry)) - set(TASK_KEYS))
        if unknown:
            errors.append(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; "
                          f"valid keys: {', '.join(TASK_KEYS)}")
        if not isinstance(name, str) or not name:
            errors.append(f"{where}: 'name' is required (a non-empty string)")
        elif name in seen:
            errors.append(f"{where}: duplicate task name {name!r}")
        else:
            seen.add(name)
        if "train" not in entry:
            errors.append(f"{where}: 'train' is required (a data spec such as imagefolder:/data/x)")
            continue
        train = _resolve_path(entry["train"], base)
        test = _resolve_path(entry.get("test", entry["train"]), base)
        split_train = entry.get("split_train", "train")
        split_test = entry.get("split_test", "test")
        for key, v in (("split_train", split_train), ("split_test", split_test)):
            if not isinstance(v, str) or not v:
                errors.append(f"{where}: {key} must be a non-empty string, got {v!r}")
        size = _int_or_none(entry.get("size"), f"{where}: size", errors)
        train_size = _int_or_none(entry.get("train_size", size), f"{where}: train_size", errors)
        test_size = _int_or_none(entry.get("test_size", size), f"{where}: test_size", errors)
        seed = _int_or_none(entry.get("seed", 0), f"{where}: seed", errors, minimum=0) or 0
        errors += validate_spec(train, split_train, f"{where} train")
        errors += validate_spec(test, split_test, f"{where} test")
        if train == test and split_train == split_test:
            errors.append(f"{where}: train and test are the same split ({train} {split_train}); set split_test")
        tasks.append(Task(str(name), train, test, str(split_train), str(split_test), train_size, test_size, seed))
    if errors:
        raise QuadformerError("; ".join(errors))
    return tasks


def _label_space(ds: Any) -> tuple[list[str], int | None]:
    n = getattr(ds, "num_classes", None)
    return list(getattr(ds, "class_names", None) or []), (int(n) if n is not None else None)


def check_label_spaces(tasks: list[Task], image_size: int = 32) -> None:
    """Train and test of every task must share one label space, judged by ``class_names`` (and
    ``num_classes``): labels are indices into it, so a test class unknown to train, a class
    missing from one side or another order shifts every index. Builds the (lazily loading)
    datasets only, so it runs before any model work; a built-in task read from one generator
    on both sides has one label space by construction and is not built."""
    from .features import DataRef, build_eval_dataset

    errors = []
    for t in tasks:
        if t.train.startswith("builtin:") and t.train == t.test:
            continue
        small = 2 if t.train.startswith("builtin:") else None  # built-in: a tiny draw shows the classes
        try:
            tr = build_eval_dataset(DataRef(t.train, t.split_train, image_size, size=small or t.train_size,
                                            seed=t.seed))
            te = build_eval_dataset(DataRef(t.test, t.split_test, image_size, size=small or t.test_size,
                                            seed=t.seed))
        except (QuadformerError, OSError, KeyError) as e:
            errors.append(f"task {t.name!r}: {e}")
            continue
        (a, na), (b, nb) = _label_space(tr), _label_space(te)
        what = None
        if a and b and a != b:
            unknown = [c for c in b if c not in a]
            missing = [c for c in a if c not in b]
            what = (f"test classes unknown to train: {unknown[:5]}" if unknown else
                    f"classes missing from test: {missing[:5]}" if missing else "the same classes in another order")
        elif na is not None and nb is not None and na != nb:
            what = f"{na} training classes, {nb} test classes"
        if what:
            errors.append(f"task {t.name!r}: train and test label sets differ ({what}); give both splits the same "
                          f"class list (ImageFolder: the same class folders; CSV: one-hot columns or one file "
                          f"with a split column)")
    if errors:
        raise QuadformerError("; ".join(errors))
