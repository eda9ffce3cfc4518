"""Fused CPU kernels of the tokenizer's eager inference path, compiled with numba (issue 13).

Two passes that PyTorch spells as many small ops, each one loop nest in :mod:`.cpu` (numba is
imported with it, on first use):

* :func:`blur_error_sums` -- the pixel-blur scorer: per image plane, the down-sampled image of
  every scale (the ``resample="reference"`` pyramid, written out for the gather) and the
  per-cell sums of ``(blur_s - x)^2``, the blur rebuilt two rows at a time in cache instead of
  as full-size temporaries;
* :func:`gather_tokens` -- the embedding's gather: each token's ``C*p*p`` pixels copied from
  its scale's image, band of rows by band of rows, and the token's bias row (position +
  projection bias), ready for one ``addmm`` per image.

Both run on ``torch.get_num_threads()`` threads (the kernels release the GIL; the caller's
thread takes the first share), so they follow ``torch.set_num_threads``. Values: the pyramid
and the gathered pixels are bitwise those of the PyTorch path; the blur-error sums differ from
it by float rounding only (the sums run in another order; ``tests/test_cpu_kernels.py``).
``benchmarks/pixel_blur.py`` and ``benchmarks/run_all.py`` time both paths side by side.

:func:`map_streams` is the same pool for PyTorch ops: data parallel over items (e.g. the
feature scorer's chunks of images), each thread running its share with one intra-op thread.
Small convolutions (ShuffleNetV2's) gain little from a second intra-op thread; two streams of
one thread each ran the feature scorer ~1.3x faster on 2 cores (``benchmarks/run_all.py``).

The kernels are compiled on first use in each process (a few seconds), never read from
numba's on-disk cache: that cache is pickled, and this project reads no pickle.
``QUADFORMER_CPU_KERNELS=0`` in the environment, or :func:`set_enabled` ``(False)``, selects
the PyTorch path (e.g. to compare the two).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import torch

__all__ = ["enabled", "map_streams", "parallel_for", "set_enabled"]

T = TypeVar("T")

_ENABLED = os.environ.get("QUADFORMER_CPU_KERNELS", "1").strip().lower() not in ("0", "false", "no", "off")


def enabled() -> bool:
    """Whether eager CPU inference uses these kernels (default: yes)."""
    return _ENABLED


def set_enabled(flag: bool) -> None:
    """Select these kernels (``True``) or the PyTorch ops (``False``) for this process."""
    global _ENABLED
    _ENABLED = bool(flag)


_POOL: ThreadPoolExecutor | None = None
_POOL_WORKERS = 0
_POOL_LOCK = threading.Lock()


def _reset_pool() -> None:  # a forked child has none of its parent's threads
    global _POOL, _POOL_WORKERS
    _POOL, _POOL_WORKERS = None, 0


os.register_at_fork(after_in_child=_reset_pool)


def _pool(workers: int) -> ThreadPoolExecutor:
    global _POOL, _POOL_WORKERS
    with _POOL_LOCK:
        if _POOL is None or _POOL_WORKERS < workers:
            if _POOL is not None:
                _POOL.shutdown(wait=False)
            _POOL, _POOL_WORKERS = ThreadPoolExecutor(workers, thread_name_prefix="quadformer-cpu"), workers
        return _POOL


def parallel_for(kernel, n: int, *args) -> None:
    """``kernel(*args, start, stop)`` over ``[0, n)`` cut into ``torch.get_num_threads()``
    contiguous parts, the first on the calling thread (``kernel`` must release the GIL)."""
    parts = max(1, min(n, torch.get_num_threads()))
    if parts == 1:
        kernel(*args, 0, n)
        return
    bounds = [n * i // parts for i in range(parts + 1)]
    futures = [_pool(parts - 1).submit(kernel, *args, bounds[i], bounds[i + 1]) for i in range(1, parts)]
    try:
        kernel(*args, bounds[0], bounds[1])
    finally:
        for f in futures:
            f.result()


def map_streams(fn: Callable[[Any], T], items: Sequence[Any]) -> list[T]:
    """``[fn(item) for item in items]`` on ``min(len(items), torch.get_num_threads())`` threads,
    each taking a contiguous share of ``items`` with one intra-op thread; results in order.

    The caller's grad mode, inference mode and CPU autocast state hold in every thread (they
    are thread-local in PyTorch). ``fn`` must not depend on the batch it is given beyond its
    own item (the feature scorer: per image). With one thread, or one item, it is the plain
    loop on the calling thread."""
    threads = torch.get_num_threads()
    parts = max(1, min(len(items), threads))
    if parts == 1:
        return [fn(item) for item in items]
    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()
    autocast = torch.is_autocast_enabled("cpu")
    autocast_dtype = torch.get_autocast_dtype("cpu")
    bounds = [len(items) * i // parts for i in range(parts + 1)]

    def share(a: int, b: int) -> list[T]:
        torch.set_num_threads(1)
        try:
            with torch.inference_mode(inference), torch.set_grad_enabled(grad), \
                    torch.autocast("cpu", dtype=autocast_dtype, enabled=autocast):
                return [fn(item) for item in items[a:b]]
        finally:
            torch.set_num_threads(threads)  # also the process-wide default new threads start with

    futures = [_pool(parts - 1).submit(share, bounds[i], bounds[i + 1]) for i in range(1, parts)]
    try:
        out = share(bounds[0], bounds[1])
    finally:
        rest = [f.result() for f in futures]
    for r in rest:
        out.extend(r)
    return out
