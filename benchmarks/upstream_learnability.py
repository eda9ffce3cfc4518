"""How fast does an architecture learn the study's upstream task from scratch?

Plain supervised training (AdamW, no augmentation) on ``builtin:shapes-textures`` at 32 px,
test top-1 printed after every epoch. Used to choose the study's recipe.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/upstream_learnability.py --model uniform_vit_nano_patch4_32 --pool token
    OMP_WAIT_POLICY=PASSIVE python benchmarks/upstream_learnability.py --model resnet10t
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import timm  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import quadformer.models  # noqa: E402,F401
from quadformer.data import build_dataset  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="uniform_vit_nano_patch4_32")
    p.add_argument("--pool", default=None, help="ViTs: token | avg | max")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--train-size", type=int, default=4000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    tr = build_dataset("builtin:shapes-textures", "train", 32, size=a.train_size)
    te = build_dataset("builtin:shapes-textures", "test", 32, size=1000)
    x, y = tr.tensors("normalized")
    xt, yt = te.tensors("normalized")
    kw = {"global_pool": a.pool} if a.pool else {}
    if a.model.startswith(("uniform_vit_", "quadformer_")):
        kw["num_patches"] = 64 if a.model.startswith("uniform") else 28
    model = timm.create_model(a.model, num_classes=40, **kw)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.05)
    t0 = time.perf_counter()
    for epoch in range(a.epochs):
        model.train()
        perm = torch.randperm(len(x))
        for i in range(0, len(x) - 63, 64):
            ix = perm[i:i + 64]
            loss = F.cross_entropy(model(x[ix]), y[ix])
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            acc = (model(xt).argmax(-1) == yt).float().mean().item()
        print(f"{a.model} pool={a.pool} epoch {epoch + 1}: test top-1 {acc:.3f} ({time.perf_counter() - t0:.0f} s)",
              flush=True)


if __name__ == "__main__":
    main()
