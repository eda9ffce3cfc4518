"""Speed of the model's own path (issue 13), printed as the README's markdown tables.

Everything is timed side by side in one process with interleaved repeats (round-robin over
the compared callables, min and median of k), so ratios hold on a shared machine:

* tokenizer: ``Quadformer.tokenize()`` (score, select, resample, embed) for the pixel-blur
  and feature scorers (feature with ``weights="random"``: same compute as trained weights;
  ``feature-half``: its fast setting, the backbone at half size, ``docs/scorers.md``; on CPU
  also the pixel-blur call without its fused kernels, "PyTorch ops", and the feature call with
  its chunks one after the other, "one stream"), with its ratio to the forward of a timm ViT of the same width on N uniform tokens, beside
  that ViT's own patch embedding (the part the tokenizer replaces: its floor, since both
  project N tokens of ``3*p_min^2`` pixels);
* tokenizer stages: the scorer, the quadtree selection and the embedding (resample, project,
  positions) of ``tokenize()``, each as a share of the whole call;
* model forward: the Quadformer vs the vanilla ViT at equal N (``UniformViT``);
* training step (forward, backward, AdamW) of the same pairs;
* micro models at 128 px: img/s of the Quadformer at N=64 vs the vanilla ViT at N=64 and N=256;
* memory: peak extra memory of one ``tokenize()`` at batch 256, 384 px, as a multiple of the input
  batch's bytes (issue-13 target: at most 2x).

Peak memory beside every time: on CUDA ``torch.cuda.max_memory_allocated`` minus the memory
allocated before the call; on CPU the process's resident-set high-water mark (``VmHWM``,
reset through ``/proc/self/clear_refs``) minus its resident set before the call, i.e. what
the call made the process touch; free heap is handed back to the system first (glibc
``malloc_trim``), so memory the call reuses from earlier calls is counted too.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/run_all.py [--quick | --full] [--device cuda]
        [--threads 2] [--json out.json]

The default grid finishes in well under 10 minutes on 2 CPU cores; ``--full`` runs 224/256/384
px at batch 1/16/64/256 (long on a CPU); ``--quick`` one setting per table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from timm.models.vision_transformer import VisionTransformer  # noqa: E402

warnings.filterwarnings("ignore", message=".*Overwriting.*")

from quadformer.models.quadformer import SIZES, Quadformer, UniformViT  # noqa: E402
from quadformer.tokenize import kernels, nearest_legal_budgets  # noqa: E402
from quadformer.tokenize.tokenizer import uniform_grid_for_budget  # noqa: E402
from quadformer.utils.io import write_json  # noqa: E402

# size -> (p_min, p_max, target N)
SETTINGS = {224: (16, 32, 100), 256: (16, 64, 100), 384: (16, 64, 144)}
#: scorers timed in the tokenizer, forward, training and memory tables (--scorers)
SCORERS = ["pixel-blur", "feature", "feature-half"]


# ------------------------------------------------------------------------------------------
# measurement

VANILLA = "vanilla ViT (uniform N)"

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(fns: dict, reps: int, device: torch.device, warmup: int = 1) -> dict[str, dict[str, float]]:
    """Seconds per call of each fn, round-robin over ``reps`` rounds: min and median."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[k].append(time.perf_counter() - t0)
    return {k: {"min": min(v), "median": statistics.median(v)} for k, v in times.items()}


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _trim_heap() -> None:
    """Return free heap pages to the system (glibc), so a later RSS rise counts reused memory."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_memory_mb(fn, device: torch.device) -> float | None:
    """Extra memory one call of ``fn`` needs at its peak, in MiB (see the module doc)."""
    if device.type == "cuda":
        _sync(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        _sync(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    _trim_heap()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the high-water mark to the current RSS
        before = _status_kb("VmRSS")
        fn()
        return max(0, _status_kb("VmHWM") - before) / 1024
    except OSError:
        return None


def legal_n(size: int, pmin: int, pmax: int, n: int) -> int:
    return nearest_legal_budgets(n, size, size, pmin, pmax)[0]


def timm_vit(d: int, depth: int, heads: int, n: int, patch: int, device) -> VisionTransformer:
    """A plain timm ViT of the same width on a uniform grid of N tokens (its own image size)."""
    gh, gw = uniform_grid_for_budget(n, (1, 1))
    return VisionTransformer(img_size=(gh * patch, gw * patch), patch_size=patch, embed_dim=d, depth=depth,
                             num_heads=heads, num_classes=1000).to(device).eval()


def scorer_kwargs(scorer: str, pmin: int) -> dict:
    if scorer == "feature-half":  # the fast setting of docs/scorers.md: the backbone at half size
        return {"scorer": "feature", "scorer_kwargs": {"weights": "random", "tap_stride": max(8, pmin // 2),
                                                       "input_scale": 0.5, "normalize": "mean"}}
    if scorer == "feature":
        return {"scorer": "feature", "scorer_kwargs": {"weights": "random", "tap_stride": 32 if pmin >= 16 else 16}}
    return {"scorer": scorer}


def quadformer(size: int, pmin: int, pmax: int, n: int, width: str, scorer: str, device, classes=1000):
    d, depth, heads = SIZES[width]
    torch.manual_seed(0)
    return Quadformer(img_size=size, patch_size=pmin, max_patch_size=pmax, num_patches=n, embed_dim=d, depth=depth,
                      num_heads=heads, num_classes=classes, **scorer_kwargs(scorer, pmin)).to(device).eval()


def uniform(size: int, pmin: int, n: int, width: str, device, classes=1000):
    d, depth, heads = SIZES[width]
    torch.manual_seed(0)
    return UniformViT(img_size=size, patch_size=pmin, num_patches=n, embed_dim=d, depth=depth, num_heads=heads,
                      num_classes=classes).to(device).eval()


def torch_ops(fn, *args):
    """``fn(*args)`` on the PyTorch ops of the eager CPU path (``quadformer.tokenize.kernels`` off)."""
    kernels.set_enabled(False)
    try:
        return fn(*args)
    finally:
        kernels.set_enabled(True)


def one_stream(model, fn, *args):
    """``fn(*args)`` with the feature scorer's chunks one after the other, each op on all threads
    (``streams=False``; the default runs one chunk per thread, one intra-op thread each)."""
    model.scorer.streams = False
    try:
        return fn(*args)
    finally:
        model.scorer.streams = None


def _row(name: str, t: dict, batch: int, mem: float | None, base: dict | None) -> dict:
    ms = 1e3 * t["min"] / batch
    return {"what": name, "batch": batch, "ms_per_img": ms, "img_per_s": 1e3 / ms,
            "ms_per_img_median": 1e3 * t["median"] / batch, "peak_mb": mem,
            "ratio": (t["min"] / base["min"]) if base else None}


# ------------------------------------------------------------------------------------------
# sections

def tokenizer_table(grid, batches, reps, device, dtype) -> list[dict]:
    """The model's own tokenize() vs a timm ViT-S forward at the same N."""
    rows = []
    for size in grid:
        pmin, pmax, target = SETTINGS[size]
        n = legal_n(size, pmin, pmax, target)
        d, depth, heads = SIZES["small"]
        vit = timm_vit(d, depth, heads, n, pmin, device)
        models = {s: quadformer(size, pmin, pmax, n, "small", s, device) for s in SCORERS}
        gh, gw = uniform_grid_for_budget(n, (1, 1))
        for b in batches:
            x = torch.randn(b, 3, size, size, device=device, dtype=dtype)
            xs = torch.randn(b, 3, gh * pmin, gw * pmin, device=device, dtype=dtype)
            fns = {f"tokenize {s}": (lambda m=m: m.tokenize(x)) for s, m in models.items()}
            if device.type == "cpu" and "pixel-blur" in models:  # the same call without the fused kernels
                fns["tokenize pixel-blur, PyTorch ops"] = lambda m=models["pixel-blur"]: torch_ops(m.tokenize, x)
            if device.type == "cpu" and "feature" in models and torch.get_num_threads() > 1:
                fns["tokenize feature, one stream"] = lambda m=models["feature"]: one_stream(m, m.tokenize, x)
            fns["ViT-S patch embed"] = lambda: vit.patch_embed(xs)  # what the tokenizer replaces
            fns["ViT-S forward"] = lambda: vit(xs)
            with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=dtype == torch.bfloat16):
                t = interleaved(fns, reps if b >= 16 else 4 * reps, device)
                mem = {k: peak_memory_mb(fn, device) for k, fn in fns.items()}
            for k in fns:
                r = _row(k, t[k], b, mem[k], t["ViT-S forward"] if k != "ViT-S forward" else None)
                rows.append({"table": "tokenizer", "size": size, "p_min": pmin, "p_max": pmax, "N": n, **r})
            _print_rows(rows[-len(fns):])
    return rows


def stages_table(grid, batches, reps, device, dtype) -> list[dict]:
    """Where ``tokenize()`` spends its time: the model's own stages, each timed on its own inputs
    (``select_cells``' scores and index computed once): the scorer, the quadtree selection, and
    ``embed_cells`` (resample, patch projection, positions, cls); ratio to the whole call."""
    from quadformer.tokenize.quadtree import select_tokens

    rows = []
    for size in grid:
        pmin, pmax, target = SETTINGS[size]
        n = legal_n(size, pmin, pmax, target)
        for s in SCORERS:
            m = quadformer(size, pmin, pmax, n, "small", s, device)
            g = m.geometry
            for b in batches:
                x = torch.randn(b, 3, size, size, device=device, dtype=dtype)
                with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16,
                                                            enabled=dtype == torch.bfloat16):
                    index, pyramid = m.select_cells(x)

                    def score(m=m, x=x, g=g, share=pyramid is not None):  # a fresh pyramid dict, as the model
                        return m.scorer(x, g, **({"pyramid": {}} if share else {}))

                    scores = score()
                    fns = {f"{s}: score": score,
                           f"{s}: select (quadtree)": lambda: select_tokens(scores, g, b, x.device),
                           f"{s}: embed (resample, project, positions)": lambda: m.embed_cells(x, index, pyramid),
                           f"{s}: tokenize()": lambda: m.tokenize(x)}
                    t = interleaved(fns, reps if b >= 16 else 4 * reps, device)
                total = t[f"{s}: tokenize()"]
                for k in fns:
                    r = _row(k, t[k], b, None, total if not k.endswith("tokenize()") else None)
                    rows.append({"table": "tokenizer stages (ratio: share of tokenize())", "size": size,
                                 "p_min": pmin, "p_max": pmax, "N": n, **r})
                _print_rows(rows[-len(fns):])
    return rows


def forward_table(grid, batches, reps, device, dtype, width="small") -> list[dict]:
    rows = []
    for size in grid:
        pmin, pmax, target = SETTINGS[size]
        n = legal_n(size, pmin, pmax, target)
        models = {f"quadformer {s}": quadformer(size, pmin, pmax, n, width, s, device) for s in SCORERS}
        models[VANILLA] = uniform(size, pmin, n, width, device)
        for b in batches:
            x = torch.randn(b, 3, size, size, device=device, dtype=dtype)
            fns = {k: (lambda m=m: m(x)) for k, m in models.items()}
            with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=dtype == torch.bfloat16):
                t = interleaved(fns, reps if b >= 16 else 4 * reps, device)
                mem = {k: peak_memory_mb(fn, device) for k, fn in fns.items()}
            rows += _rows_vs_vanilla(f"forward ({width})", t, mem, b, size=size, p_min=pmin, p_max=pmax, N=n)
    return rows


def _rows_vs_vanilla(table: str, times: dict, mem: dict, batch: int, **setting) -> list[dict]:
    """One row per timed model, each with its ratio to the vanilla ViT at the same N; printed."""
    base = times[VANILLA]
    rows = [{"table": table, **setting, **_row(k, times[k], batch, mem[k], base if k != VANILLA else None)}
            for k in times]
    _print_rows(rows)
    return rows


def train_table(configs, reps, device, amp: bool) -> list[dict]:
    """Training step (forward, backward, AdamW), scorer inside every step."""
    rows = []
    for width, size, pmin, pmax, n, b in configs:
        models = {f"quadformer {s}": quadformer(size, pmin, pmax, n, width, s, device, classes=10)
                  for s in SCORERS}
        models[VANILLA] = uniform(size, pmin, n, width, device, classes=10)
        x = torch.randn(b, 3, size, size, device=device)
        y = torch.randint(0, 10, (b,), device=device)
        fns = {}
        for k, m in models.items():
            m.train()
            opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)

            def step(m=m, opt=opt):
                with torch.autocast(device.type, torch.bfloat16, enabled=amp):
                    loss = F.cross_entropy(m(x).float(), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            fns[k] = step
        t = interleaved(fns, reps, device)
        mem = {k: peak_memory_mb(fn, device) for k, fn in fns.items()}
        rows += _rows_vs_vanilla(f"training step ({width})", t, mem, b, size=size, p_min=pmin, p_max=pmax, N=n)
    return rows


def micro_table(batches, reps, device) -> list[dict]:
    """Issue-13 micro-model targets: Quadformer N=64 vs vanilla N=64 and N=256 (128 px)."""
    rows = []
    models = {
        "quadformer pixel-blur N=64": quadformer(128, 8, 32, 64, "micro", "pixel-blur", device, classes=10),
        "quadformer feature N=64": quadformer(128, 8, 32, 64, "micro", "feature", device, classes=10),
        "vanilla ViT N=64": uniform(128, 8, 64, "micro", device, classes=10),
        "vanilla ViT N=256": uniform(128, 8, 256, "micro", device, classes=10),
    }
    for b in batches:
        x = torch.randn(b, 3, 128, 128, device=device)
        fns = {k: (lambda m=m: m(x)) for k, m in models.items()}
        with torch.inference_mode():
            t = interleaved(fns, reps if b >= 16 else 4 * reps, device)
            mem = {k: peak_memory_mb(fn, device) for k, fn in fns.items()}
        for k in fns:
            r = _row(k, t[k], b, mem[k], None)
            r["vs_vanilla_64"] = t["vanilla ViT N=64"]["min"] / t[k]["min"]  # img/s ratio
            r["vs_vanilla_256"] = t["vanilla ViT N=256"]["min"] / t[k]["min"]
            rows.append({"table": "micro 128 px", "size": 128, "p_min": 8, "p_max": 32, "N": 64, **r})
        _print_rows(rows[-len(fns):])
    return rows


def memory_table(device, batch: int = 256, size: int = 384) -> list[dict]:
    """Peak extra memory of one tokenize() call against the input batch's bytes (issue 13)."""
    pmin, pmax, target = SETTINGS[size]
    n = legal_n(size, pmin, pmax, target)
    x = torch.randn(batch, 3, size, size, device=device)
    input_mb = x.numel() * x.element_size() / 2**20
    rows = []
    for s in SCORERS:
        m = quadformer(size, pmin, pmax, n, "small", s, device)
        with torch.inference_mode():
            m.tokenize(x[:2])  # warm caches (tables, weights) outside the measured call
            t0 = time.perf_counter()
            mem = peak_memory_mb(lambda m=m: m.tokenize(x), device)
            dt = time.perf_counter() - t0
        r = _row(f"tokenize {s} (input {input_mb:.0f} MiB)", {"min": dt, "median": dt}, batch, mem, None)
        r["ratio"] = None if mem is None else mem / input_mb
        rows.append({"table": f"memory ({size} px, batch {batch})", "size": size, "p_min": pmin, "p_max": pmax,
                     "N": n, "input_mb": input_mb, **r})
        del m
    _print_rows(rows)
    return rows


# ------------------------------------------------------------------------------------------
# output

def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _print_rows(rows: list[dict]) -> None:
    for r in rows:
        extra = f" ratio {_fmt(r['ratio'], '.3f')}" if r.get("ratio") is not None else ""
        print(f"  [{r['table']}] {r['size']}px N={r['N']} b={r['batch']} {r['what']}: {r['ms_per_img']:.3f} ms/img, "
              f"peak {_fmt(r['peak_mb'], '.0f')} MiB{extra}", file=sys.stderr, flush=True)


def markdown(rows: list[dict]) -> str:
    out = []
    for table in dict.fromkeys(r["table"] for r in rows):
        part = [r for r in rows if r["table"] == table]
        micro, memory = table.startswith("micro"), table.startswith("memory")
        head = "| size, N | batch | what | ms/img | img/s | peak MiB |"
        head += (" x vanilla N=64 img/s | x vanilla N=256 img/s |" if micro
                 else " peak / input bytes |" if memory else " ratio |")
        out += [f"\n**{table}**\n", head, "|" + "---|" * (head.count("|") - 1)]
        for r in part:
            if micro:
                tail = f" {r['vs_vanilla_64']:.2f} | {r['vs_vanilla_256']:.2f} |"
            elif memory:
                tail = f" {_fmt(r['ratio'], '.2f')}x |"
            elif table.startswith("tokenizer"):  # shares of a forward or of tokenize(): percent
                tail = f" {_fmt(r['ratio'], '.1%')} |"
            else:
                tail = f" {_fmt(r['ratio'], '.3f')} |"
            out.append(f"| {r['size']}, {r['N']} | {r['batch']} | {r['what']} | {r['ms_per_img']:.3f} | "
                       f"{r['img_per_s']:.0f} | {_fmt(r['peak_mb'], '.0f')} |{tail}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="one setting per table (a few minutes on 2 cores)")
    mode.add_argument("--full", action="store_true", help="224/256/384 px, batch 1/16/64/256 (long on CPU)")
    ap.add_argument("--reps", type=int, default=None, help="interleaved rounds (default 5, 3 with --quick)")
    ap.add_argument("--batches", nargs="+", type=int, default=None,
                    help="batch sizes of the tokenizer, stages and micro tables (default: per mode)")
    ap.add_argument("--bf16", action="store_true", help="inference tables under bf16 autocast")
    ap.add_argument("--only", nargs="+", default=None, choices=("tokenizer", "stages", "forward", "train", "micro", "memory"))
    ap.add_argument("--json", type=Path, default=None, help="write every row as JSON")
    ap.add_argument("--scorers", nargs="+", default=list(SCORERS), choices=("pixel-blur", "feature", "feature-half"),
                    help="scorers of the tokenizer, forward, training and memory tables")
    ap.add_argument("--sizes", nargs="+", type=int, default=None, choices=sorted(SETTINGS),
                    help="image sizes of the tokenizer and forward tables (default: per mode)")
    args = ap.parse_args(argv)
    SCORERS[:] = args.scorers
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("run_all.py: error: --device cuda but no CUDA device here", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    cuda = device.type == "cuda"
    reps = args.reps or (3 if args.quick else 5)
    if args.full:
        grid, batches, fwd_batches = (224, 256, 384), (1, 16, 64, 256), (1, 16, 64, 256)
        train_cfgs = [("micro", 128, 8, 32, 64, 64), ("small", 256, 16, 64, 100, 64 if cuda else 32)]
    elif args.quick:
        grid, batches, fwd_batches = (256,), (64,), (16,)
        train_cfgs = [("micro", 128, 8, 32, 64, 64)]
    else:
        grid, batches, fwd_batches = ((224, 256, 384), (1, 64, 256), (1, 64)) if cuda else ((256, 384), (1, 64), (16,))
        train_cfgs = [("micro", 128, 8, 32, 64, 64), ("small", 256, 16, 64, 100, 64 if cuda else 16)]
    if args.sizes:
        grid = tuple(args.sizes)
    micro_batches = (1, 64)
    if args.batches:
        batches = micro_batches = tuple(args.batches)
    dtype = torch.float32
    only = set(args.only or ("tokenizer", "forward", "train", "micro") + (() if args.quick else ("stages", "memory")))
    info = {"torch": torch.__version__, "device": str(device), "threads": torch.get_num_threads(),
            "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"), "reps": reps, "bf16": args.bf16,
            "memory": "cuda max_memory_allocated delta" if cuda else "RSS high-water-mark delta (VmHWM)",
            "gpu": torch.cuda.get_device_name(device) if cuda else None, "load_start": os.getloadavg()[0]}
    print(f"# {json.dumps(info)}", file=sys.stderr, flush=True)
    rows: list[dict] = []
    t0 = time.time()
    if "tokenizer" in only:
        rows += tokenizer_table(grid, batches, reps, device, torch.bfloat16 if args.bf16 else dtype)
    if "stages" in only:
        rows += stages_table(grid[:1] if not args.full else grid, batches, reps, device,
                             torch.bfloat16 if args.bf16 else dtype)
    if "forward" in only:
        rows += forward_table(grid, fwd_batches, reps, device, torch.bfloat16 if args.bf16 else dtype)
    if "train" in only:
        rows += train_table(train_cfgs, reps, device, amp=args.bf16)
    if "micro" in only:
        rows += micro_table(micro_batches, reps, device)
    if "memory" in only:
        rows += memory_table(device)
    info["load_end"] = os.getloadavg()[0]
    info["seconds"] = round(time.time() - t0, 1)
    print(f"Measured with `benchmarks/run_all.py` on {info['gpu'] or 'CPU'}, torch {info['torch']}, "
          f"{info['threads']} threads, {reps} interleaved rounds (min), peak memory = {info['memory']}; "
          f"load average {info['load_start']:.1f} -> {info['load_end']:.1f}, {info['seconds']} s.")
    print(markdown(rows))
    if args.json:
        write_json(args.json, {"info": info, "rows": rows}, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
