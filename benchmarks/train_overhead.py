"""Training-step time of a Quadformer vs the vanilla ViT at the same N (ratio, one run).

Interleaved repeats, medians; the scorer (pixel-blur or feature) runs inside every step,
as in real training. Usage:

    OMP_WAIT_POLICY=PASSIVE python benchmarks/train_overhead.py [--threads 2] [--batch 64]
        [--model micro|tiny|small] [--amp off|bf16]

Targets (issue 3): <= 1.10x with pixel-blur, <= 1.30x with the feature scorer.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import timm  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import quadformer.models  # noqa: E402,F401

SETTINGS = {  # size -> (res, default N)
    "micro": (128, 64),
    "tiny": (256, 100),
    "small": (256, 100),
}


def step_fn(model, x, y, opt, amp):
    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp == "bf16"):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--model", default="micro", choices=list(SETTINGS))
    ap.add_argument("--num-patches", type=int, default=None)
    ap.add_argument("--amp", default="off", choices=("off", "bf16"))
    ap.add_argument("--reps", type=int, default=6)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    res, n = SETTINGS[args.model]
    n = args.num_patches or n
    patch = 8 if args.model == "micro" else 16
    x = torch.randn(args.batch, 3, res, res)
    y = torch.randint(0, 10, (args.batch,))
    models = {
        "vanilla": timm.create_model(f"uniform_vit_{args.model}_patch{patch}_{res}", num_patches=n, num_classes=10),
        "pixel-blur": timm.create_model(f"quadformer_{args.model}_patch{patch}_{res}", num_patches=n, num_classes=10,
                                        scorer="pixel-blur"),
        "feature": timm.create_model(f"quadformer_{args.model}_patch{patch}_{res}", num_patches=n, num_classes=10,
                                     scorer="feature",
                                     scorer_kwargs={"weights": "random", "tap_stride": 16 if patch == 8 else 32}),
    }
    steps = {}
    for k, m in models.items():
        m.train()
        opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)
        steps[k] = step_fn(m, x, y, opt, args.amp)
        steps[k]()  # warm-up
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(args.reps):
        for k, fn in steps.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"torch {torch.__version__}, threads {args.threads}, {args.model} @ {res}px, N={n}, batch {args.batch}, "
          f"amp {args.amp}, {args.reps} interleaved reps (median)")
    for k in steps:
        print(f"  {k:>10}: {1e3 * med[k]:8.1f} ms/step  {args.batch / med[k]:7.1f} img/s  "
              f"ratio to vanilla {med[k] / med['vanilla']:.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
