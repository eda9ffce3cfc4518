"""Atomic file writes (a crash or a concurrent writer leaves the old file or the new one, never a
torn one), the JSON/CSV/text writers built on it, and a file lock (so several processes can
share one output folder)."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import socket
import tempfile
from glob import escape as glob_escape
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Sequence


def _temp_prefix(path: Path, pid: int | None = None) -> str:
    return f".{path.name}.{socket.gethostname()}-{os.getpid() if pid is None else pid}."


def _remove_stale_temps(path: Path) -> None:
    """Remove temp files of ``path`` left by writers of this host that were killed mid-write
    (SIGKILL runs no cleanup); a live writer's temp file is kept."""
    host = f".{path.name}.{socket.gethostname()}-"
    for tmp in path.parent.glob(f".{glob_escape(path.name)}.*.tmp"):
        rest = tmp.name[len(host):] if tmp.name.startswith(host) else ""
        pid = rest.split(".", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:  # that writer is gone
            with contextlib.suppress(OSError):
                tmp.unlink()
        except PermissionError:  # alive, another user's
            pass


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(f)`` on a unique temp file beside ``path``, fsync, then rename it over ``path``.

    Temp files carry the writer's host and PID, so the next write of ``path`` removes those of
    a killed writer: nothing is left behind once a killed run has been resumed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Atomically write ``data`` to ``path``."""
    return atomic_write(path, lambda f: f.write(data))


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically write ``text`` (UTF-8) to ``path``."""
    return write_bytes(path, text.encode("utf-8"))


def jsonable(x: Any) -> Any:
    """``x`` with numpy scalars/arrays as Python numbers/lists, tuples as lists, dict keys as
    strings and NaN/inf as ``None`` (JSON has neither)."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if hasattr(x, "tolist") and hasattr(x, "dtype"):  # numpy array or scalar
        return jsonable(x.tolist())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    """Atomically write ``obj`` (made :func:`jsonable`) as JSON."""
    return write_text(path, json.dumps(jsonable(obj), indent=indent) + "\n")


def write_csv(path: str | os.PathLike, rows: Iterable[dict[str, Any]], fieldnames: Sequence[str] | None = None,
              extrasaction: str = "raise") -> Path:
    """Atomically write dict rows as CSV (header: ``fieldnames``, default the first row's keys)."""
    rows = list(rows)
    names = list(fieldnames) if fieldnames is not None else (list(rows[0]) if rows else [])
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=names, extrasaction=extrasaction)  # type: ignore[arg-type]
    w.writeheader()
    w.writerows(rows)
    return write_text(path, buf.getvalue())


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, blocking: bool = True) -> Iterator[bool]:
    """Hold an exclusive lock on ``path`` (created if missing) for the ``with`` body
    (``filelock.FileLock``).

    Yields True when held; with ``blocking=False`` yields False at once when another holder
    (another process, or another ``file_lock`` of this one) has it. The OS drops the lock when
    its holder dies, so a killed run never leaves a stale lock."""
    from filelock import FileLock, Timeout

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path), timeout=-1 if blocking else 0)
    try:
        lock.acquire()
    except Timeout:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()
