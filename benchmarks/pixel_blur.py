"""The pixel-blur scorer's ``score()`` on CPU: the fused kernel, the PyTorch ops and the previous
eager path, side by side (issue 13).

The fused kernel is ``quadformer.tokenize.kernels`` (the default on CPU); the PyTorch ops are the
same scorer with the kernels switched off (``kernels.set_enabled(False)``). The previous path (padded copies of the down-sampled image and of the column-up-sampled
rows, then ``sub_``, ``square_`` and one ``mean`` over a 6-d view) is copied below, so both
run in one process with interleaved repeats (round-robin, min and median of ``--reps``).
Also printed: the largest relative difference of the scores, and the number of aten ops
per call at batch 1 (profiler), since Python/dispatcher calls dominate there.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/pixel_blur.py [--threads 2] [--reps 15] [--json out.json]

``--cpu-time`` (with ``--threads 1``) times with the thread's CPU clock, which other jobs on a
shared machine disturb less than the wall clock.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from quadformer.tokenize import QuadGeometry, kernels  # noqa: E402
from quadformer.tokenize.scorers import PixelBlurScorer  # noqa: E402
from quadformer.utils.io import atomic_write  # noqa: E402

# (size, p_min, p_max, N, batch): the ViT-S setting and the micro models
SETTINGS = [(256, 16, 64, 100, 64), (256, 16, 64, 100, 1), (128, 8, 32, 64, 64), (128, 8, 32, 64, 1)]


# ---- the previous eager path (kept here only to measure against) ----
def _taps(f: int) -> list[tuple[int, float]]:
    out = []
    for k in range(f):
        src = (k + 0.5) / f - 0.5
        lo = -1 if src < 0 else 0
        out.append((lo + 1, src - lo))
    return out


def _edges(t: Tensor, dim: int) -> Tensor:
    shape, strides = list(t.shape), list(t.stride())
    strides[dim] *= shape[dim] - 1
    shape[dim] = 2
    return t.as_strided(shape, strides, t.storage_offset())


def _old_downsample(x: Tensor, factor: int, out: Tensor) -> Tensor:
    a = factor // 2 - 1
    *lead, h, w = x.shape
    rows = x.reshape(*lead, h // factor, factor, w)[..., a:a + 2, :]
    cols = torch.lerp(rows[..., a::factor], rows[..., a + 1::factor], 0.5)
    return torch.lerp(cols[..., 0, :], cols[..., 1, :], 0.5, out=out)


def _old_up_padded_rows(sp: Tensor, f: int, out: Tensor) -> Tensor:
    *lead, n2, w = sp.shape
    n = n2 - 2
    st = sp.stride()
    shape = (*lead, n, 2, f // 2, w)
    strides = (*st[:-2], st[-2], st[-2], 0, st[-1])
    lo = sp.as_strided(shape, strides, sp.storage_offset())
    hi = sp.as_strided(shape, strides, sp.storage_offset() + st[-2])
    wt = torch.tensor([wt for _, wt in _taps(f)], dtype=sp.dtype).view(2, f // 2, 1)
    torch.lerp(lo, hi, wt, out=out.view(shape))
    return out.view(*lead, n * f, w)


def _old_blur_into(x: Tensor, f: int, out: Tensor, work: Tensor, small: Tensor) -> Tensor:
    b, c, h, w = x.shape
    hs, ws = h // f, w // f
    n_small = b * c * hs * (ws + 2)
    sp = work[:n_small].view(b, c, hs, ws + 2)
    sp[..., 1:ws + 1].copy_(small)
    _edges(sp, -1).copy_(_edges(small, -1))
    cp = work[n_small:n_small + b * c * (hs + 2) * w].view(b, c, hs + 2, w)
    cols = cp[:, :, 1:hs + 1].view(b, c, hs, ws, f)
    for k, (o, wt) in enumerate(_taps(f)):
        torch.lerp(sp[..., o:o + ws], sp[..., o + 1:o + 1 + ws], wt, out=cols[..., k])
    _edges(cp, -2).copy_(_edges(cols.view(b, c, hs, w), -2))
    return _old_up_padded_rows(cp, f, out)


def old_score(images: Tensor, g: QuadGeometry, pyramid: dict, chunk_elements: int = 1 << 19) -> list[Tensor]:
    b, c, h, w = images.shape
    chunk = min(b, max(1, chunk_elements // images[0].numel()))
    for s in range(1, g.num_scales):
        pyramid[s] = images.new_empty(b, c, h >> s, w >> s)
    work_u = images.new_empty(chunk, c, h, w)
    work = images.new_empty(chunk * c * (h // 2 + 2) * (w + w // 2 + 2))
    parts = []
    for i in range(0, b, chunk):
        x = images[i:i + chunk]
        k = x.shape[0]
        maps = []
        for s in range(1, g.num_scales):
            f, p = 1 << s, g.patch_size(s)
            small = _old_downsample(x, f, out=pyramid[s][i:i + k])
            err = _old_blur_into(x, f, work_u[:k], work, small).sub_(x).square_()
            mse = err.view(k, c, h // p, p, w // p, p).mean(dim=(1, 3, 5))
            maps.append((mse * p).sqrt())
        parts.append(maps)
    return [torch.cat(m) for m in zip(*parts)] if len(parts) > 1 else parts[0]
# ---- end of the previous path ----


def aten_ops(fn) -> int:
    from torch.profiler import profile

    with profile() as prof:
        fn()
    return sum(e.count for e in prof.key_averages() if e.key.startswith("aten::"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--cpu-time", action="store_true", help="thread CPU clock (use with --threads 1)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.thread_time if args.cpu_time else time.perf_counter
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY')}, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs, "
          f"{'thread CPU time' if args.cpu_time else 'wall time'}")
    print("| size | p | batch | previous ms/img (min/med) | PyTorch ops ms/img (min/med) | fused kernel ms/img (min/med) "
          "| fused vs PyTorch ops (min) | fused vs previous (min) | max rel diff (ops / fused) | aten ops prev/ops |")
    print("|---|---|---|---|---|---|---|---|---|")
    scorer = PixelBlurScorer()
    rows = []
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for size, pmin, pmax, n, batch in SETTINGS:
            g = QuadGeometry(size, size, pmin, pmax, n)
            x = torch.rand(batch, 3, size, size, generator=gen)
            def ops(x=x, g=g):
                kernels.set_enabled(False)
                try:
                    return scorer(x, g, pyramid={})
                finally:
                    kernels.set_enabled(True)

            fns = {"old": lambda x=x, g=g: old_score(x, g, {}), "new": ops,
                   "fused": lambda x=x, g=g: scorer(x, g, pyramid={})}
            ref = fns["old"]()
            rel = {k: max(((a - b).abs() / b.abs().clamp_min(1e-12)).max().item() for a, b in zip(ref, fns[k]()))
                   for k in ("new", "fused")}
            reps = args.reps if batch > 1 else args.reps * 20
            times: dict[str, list[float]] = {k: [] for k in fns}
            for _ in range(reps):
                for k, fn in fns.items():
                    t0 = clock()
                    fn()
                    times[k].append((clock() - t0) / batch * 1e3)
            n_ops = {k: aten_ops(fn) if batch == 1 else None for k, fn in fns.items() if k != "fused"}
            mn = {k: min(v) for k, v in times.items()}
            md = {k: statistics.median(v) for k, v in times.items()}
            row = {"size": size, "p_min": pmin, "p_max": pmax, "batch": batch, "old_min": mn["old"],
                   "old_med": md["old"], "new_min": mn["new"], "new_med": md["new"], "fused_min": mn["fused"],
                   "fused_med": md["fused"], "fused_vs_ops": mn["new"] / mn["fused"],
                   "fused_vs_previous": mn["old"] / mn["fused"], "max_rel_diff_ops": rel["new"],
                   "max_rel_diff_fused": rel["fused"], "ops_old": n_ops["old"], "ops_new": n_ops["new"]}
            rows.append(row)
            op_txt = f"{n_ops['old']}/{n_ops['new']}" if batch == 1 else "-"
            print(f"| {size} | {pmin}..{pmax} | {batch} | {mn['old']:.3f} / {md['old']:.3f} | {mn['new']:.3f} / "
                  f"{md['new']:.3f} | {mn['fused']:.3f} / {md['fused']:.3f} | {row['fused_vs_ops']:.2f}x | "
                  f"{row['fused_vs_previous']:.2f}x | {rel['new']:.1e} / {rel['fused']:.1e} | {op_txt} |")
    if args.json:
        text = json.dumps({"threads": args.threads, "rows": rows}, indent=1).encode()
        atomic_write(args.json, lambda f: f.write(text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
