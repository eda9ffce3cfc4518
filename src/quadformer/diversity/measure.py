"""Run a model over a fixed probe set and measure activation diversity (A1, A2, A3; docs/design/diverse_transfer.md §2).

* Probe set: a seeded subset (``probe_indices``) of a held-out dataset; the indices are
  returned so they can be saved and reused (e.g. for the init model).
* A1 on the transfer representation ``model.forward_head(model.forward_features(x),
  pre_logits=True)`` -- for a ViT the CLS token after the final norm, or the pooled tokens per
  its ``global_pool``; ``A1_meanpool``: mean of the ``forward_features`` patch tokens (ViT).
* A2 per tap (ViT block outputs; timm ``feature_info`` modules for CNNs) with a row per
  image: ``cls`` (ViT with a class token) and ``meanpool`` (patch tokens / spatial positions
  averaged); option ``tokens``: every (image, position) a row, strided subsample to
  ``max_rows``.
* A3 on the A1 features. Eval mode, no grad, fixed seed, float64 metrics.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, RandomSampler

from ..models.inference import forward_pre_logits, has_pre_logits, model_device, pre_logits
from ..utils.errors import QuadformerError
from . import metrics as M
from .layers import activation_taps, is_vit, tap_channels

__all__ = ["probe_indices", "ProbeFeatures", "collect_features", "activation_diversity", "recommended_num_images",
           "default_a2_variant", "feature_dim", "item_images"]


def probe_indices(num_total: int, num_images: int, seed: int = 0) -> list[int]:
    """``min(num_images, num_total)`` distinct indices drawn with ``seed`` (sorted)."""
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    g = torch.Generator().manual_seed(int(seed))
    n = min(num_images, num_total)
    return sorted(torch.randperm(num_total, generator=g)[:n].tolist())


def recommended_num_images(feature_dim: int) -> int:
    """docs/design/diverse_transfer.md §2: A1 wants N >= max(2000, 5d)."""
    return max(2000, 5 * int(feature_dim))


def feature_dim(model: nn.Module, example: Tensor) -> int:
    """d of the A1 representation, from one forward of ``example`` ``[C, H, W]`` (eval, no grad)."""
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[]), torch.inference_mode():
            return int(pre_logits(model, example[None].to(model_device(model))).shape[1])
    finally:
        model.train(was_training)


def default_a2_variant(model: nn.Module) -> str:
    """The A2 variant matching the model's own pooling: ``cls`` for a ViT pooling its class
    token (``global_pool='token'``), else ``meanpool``."""
    pool = getattr(model, "global_pool", "token")
    if is_vit(model) and getattr(model, "cls_token", None) is not None and pool == "token":
        return "cls"
    return "meanpool"


@dataclass
class ProbeFeatures:
    """What one pass over the probe set collected (float64, CPU)."""

    z: Tensor  # A1 features [N, d]
    z_meanpool: Tensor | None  # ViT: mean of forward_features patch tokens [N, D]
    a2: dict[str, dict[str, Tensor]]  # variant -> tap -> rows [rows, C]
    indices: list[int]
    source: str  # "dataset", "tensor" or "loader"
    tokens_stride: dict[str, int] = field(default_factory=dict)


def item_images(item: Any) -> Tensor:
    x = item[0] if isinstance(item, (tuple, list)) else item
    if isinstance(x, dict):
        x = x.get("image", x.get("pixel_values"))
    if not isinstance(x, Tensor):
        raise QuadformerError(f"probe data yields {type(x).__name__}, not image tensors; build the dataset with a "
                              f"tensor transform (e.g. quadformer.data.create_transforms(size, is_training=False))")
    return x


def _batches(data: Any, num_images: int, batch_size: int, seed: int,
             indices: list[int] | None) -> tuple[Iterator[Tensor], list[int], str]:
    if isinstance(data, DataLoader):
        if isinstance(data.sampler, RandomSampler):
            warnings.warn("the probe DataLoader shuffles; pass the Dataset itself for a fixed, saved probe set",
                          stacklevel=3)
        n_total = len(data.dataset) if hasattr(data.dataset, "__len__") else num_images  # type: ignore[arg-type]
        n = min(num_images, n_total)

        def gen_loader() -> Iterator[Tensor]:
            left = n
            for item in data:
                x = item_images(item)
                if left <= 0:
                    break
                yield x[:left]
                left -= x.shape[0]

        return gen_loader(), list(range(n)), "loader"
    if isinstance(data, Tensor):
        if data.dim() != 4:
            raise ValueError(f"probe images must be [N, C, H, W], got shape {tuple(data.shape)}")
        idx = list(indices) if indices is not None else probe_indices(data.shape[0], num_images, seed)
        t = data

        def gen_tensor() -> Iterator[Tensor]:
            for a in range(0, len(idx), batch_size):
                yield t[idx[a:a + batch_size]]

        return gen_tensor(), idx, "tensor"
    if not hasattr(data, "__getitem__") or not hasattr(data, "__len__"):
        raise TypeError(f"probe data must be a Dataset, a DataLoader or an image tensor, got {type(data).__name__}")
    ds: Dataset = data
    idx = list(indices) if indices is not None else probe_indices(len(ds), num_images, seed)  # type: ignore[arg-type]
    if idx and (min(idx) < 0 or max(idx) >= len(ds)):  # type: ignore[arg-type]
        raise ValueError(f"probe indices out of range for a dataset of {len(ds)} items")  # type: ignore[arg-type]

    def gen_ds() -> Iterator[Tensor]:
        for a in range(0, len(idx), batch_size):
            yield torch.stack([item_images(ds[i]) for i in idx[a:a + batch_size]])

    return gen_ds(), idx, "dataset"


class _TapRecorder:
    """Forward hooks turning tap outputs into A2 rows as they come (bounded memory)."""

    def __init__(self, model: nn.Module, taps: dict[str, nn.Module], num_images: int, tokens: bool, max_rows: int):
        self.vit = is_vit(model)
        self.prefix = int(getattr(model, "num_prefix_tokens", 0)) if self.vit else 0
        self.has_cls = self.vit and getattr(model, "cls_token", None) is not None
        self.channels = tap_channels(model)
        self.num_images, self.tokens, self.max_rows = num_images, tokens, max_rows
        self.rows: dict[str, dict[str, list[Tensor]]] = {}
        self.seen: dict[str, int] = {}  # tokens: global row counter per tap
        self.stride: dict[str, int] = {}
        self.handles = [m.register_forward_hook(self._hook(name)) for name, m in taps.items()]

    def _add(self, variant: str, name: str, rows: Tensor) -> None:
        self.rows.setdefault(variant, {}).setdefault(name, []).append(rows.detach().to("cpu", torch.float64))

    def _hook(self, name: str):
        def hook(_m: nn.Module, _inp: Any, out: Any) -> None:
            if isinstance(out, (tuple, list)):
                out = out[0]
            if not isinstance(out, Tensor):
                return
            out = out.detach()
            b = out.shape[0]
            if out.dim() == 4:  # [B, C, H, W] (or NHWC per feature_info)
                c = self.channels.get(name)
                if c is not None and out.shape[1] != c and out.shape[-1] == c:
                    out = out.permute(0, 3, 1, 2)
                pos = out.flatten(2).transpose(1, 2)  # [B, HW, C]
            elif out.dim() == 3:  # [B, T, D] tokens
                if self.has_cls:
                    self._add("cls", name, out[:, 0])
                pos = out[:, self.prefix:] if self.vit else out
            elif out.dim() == 2:
                self._add("meanpool", name, out)
                return
            else:
                return
            self._add("meanpool", name, pos.mean(1))
            if self.tokens:
                p = pos.shape[1]
                if name not in self.stride:
                    self.stride[name] = max(1, math.ceil(self.num_images * p / self.max_rows))
                s, start = self.stride[name], self.seen.get(name, 0)
                flat = pos.reshape(b * p, pos.shape[-1])
                first = (-start) % s  # first global row index in this batch divisible by s
                self._add("tokens", name, flat[first::s])
                self.seen[name] = start + b * p

        return hook

    def close(self) -> dict[str, dict[str, Tensor]]:
        for h in self.handles:
            h.remove()
        out = {v: {n: torch.cat(r) for n, r in taps.items()} for v, taps in self.rows.items()}
        if "tokens" in out:
            out["tokens"] = {n: r[: self.max_rows] for n, r in out["tokens"].items()}
        return out


def collect_features(model: nn.Module, data: Any, num_images: int = 2000, batch_size: int = 64,
                     device: str | torch.device | None = None, seed: int = 0, *,
                     indices: Iterable[int] | None = None, taps: dict[str, nn.Module] | None = None,
                     tokens: bool = False, max_rows: int = 20000) -> ProbeFeatures:
    """One eval-mode, no-grad pass over the probe set. ``device``: moves ``model`` there
    (default: where its parameters are). ``seed`` draws the probe subset and seeds torch's RNG
    for the pass (random scorers), without touching the caller's RNG state."""
    if not has_pre_logits(model):
        raise QuadformerError(f"{type(model).__name__} has no forward_features/forward_head; activation diversity "
                              f"needs a timm-style model")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    dev = torch.device(device) if device is not None else model_device(model)
    model.to(dev)
    batches, idx, source = _batches(data, num_images, batch_size, seed, list(indices) if indices is not None else None)
    n = len(idx)
    if n < 2:
        raise QuadformerError(f"the probe set has {n} image(s); activation diversity needs at least 2")
    taps = activation_taps(model) if taps is None else taps
    was_training = model.training
    model.eval()
    rec = _TapRecorder(model, taps, n, tokens, max_rows)
    zs: list[Tensor] = []
    zm: list[Tensor] = []
    prefix = int(getattr(model, "num_prefix_tokens", 0))
    fork = [dev] if dev.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=fork), torch.inference_mode():
            torch.manual_seed(seed)
            for x in batches:
                f, z = forward_pre_logits(model, x.to(dev))
                zs.append(z.to("cpu", torch.float64))
                if is_vit(model) and f.dim() == 3:
                    zm.append(f[:, prefix:].mean(1).to("cpu", torch.float64))
    finally:
        a2 = rec.close()
        model.train(was_training)
    z = torch.cat(zs)
    if z.shape[0] != n:
        raise RuntimeError(f"collected {z.shape[0]} feature rows for {n} probe images")
    return ProbeFeatures(z=z, z_meanpool=torch.cat(zm) if zm else None, a2=a2, indices=idx, source=source,
                         tokens_stride=dict(rec.stride))


def _a2_summary(rows: dict[str, Tensor]) -> dict[str, Any]:
    per = {name: M.layer_erank(r) for name, r in rows.items()}
    return {"mean": sum(per.values()) / len(per) if per else None, "per_layer": per,
            "rows": {name: int(r.shape[0]) for name, r in rows.items()}}


def activation_diversity(model: nn.Module, data: Any, num_images: int = 2000, batch_size: int = 64,
                         device: str | torch.device | None = None, seed: int = 0, *,
                         indices: Iterable[int] | None = None, a2_tokens: bool = False, max_rows: int = 20000,
                         features: ProbeFeatures | None = None) -> dict[str, Any]:
    """A1, A1_meanpool, A2 (+ per layer and every variant), A3 on a seeded probe subset of
    ``data`` (a Dataset, an image tensor ``[N, C, H, W]`` or a DataLoader taken in order).

    Returns ``{"A1", "A1_meanpool", "A2", "A2_per_layer", "A2_variant", "A2_variants", "A3",
    "A3_meanpool", "num_images", "feature_dim", "recommended_num_images", "indices", "seed",
    "warnings"}``; metrics that do not apply (e.g. ``A1_meanpool`` of a CNN) are ``None``.
    Fewer images than ``max(2000, 5d)`` is allowed (quick runs) but warns and is recorded."""
    pf = features or collect_features(model, data, num_images, batch_size, device, seed, indices=indices,
                                      tokens=a2_tokens, max_rows=max_rows)
    n, d = pf.z.shape
    notes: list[str] = []
    rec = recommended_num_images(d)
    if n < rec:
        msg = (f"A1 on N={n} probe images < max(2000, 5d)={rec} (d={d}): fine for a quick run, "
               f"not for reported numbers")
        warnings.warn(msg, stacklevel=2)
        notes.append(msg)
    variants = {v: _a2_summary(rows) for v, rows in pf.a2.items()}
    head = default_a2_variant(model)
    if head not in variants and variants:
        head = "meanpool" if "meanpool" in variants else next(iter(variants))
    if not variants:
        notes.append(f"no A2 taps found for {type(model).__name__} (not a ViT, no timm feature_info)")
    a3 = M.channel_correlation(pf.z) if d >= 2 else None
    return {
        "A1": M.feature_erank(pf.z),
        "A1_meanpool": M.feature_erank(pf.z_meanpool) if pf.z_meanpool is not None else None,
        "A2": variants[head]["mean"] if variants else None,
        "A2_per_layer": variants[head]["per_layer"] if variants else {},
        "A2_variant": head if variants else None,
        "A2_variants": variants,
        "A3": a3,
        "A3_meanpool": M.channel_correlation(pf.z_meanpool) if pf.z_meanpool is not None else None,
        "num_images": n, "feature_dim": d, "recommended_num_images": rec,
        "indices": list(pf.indices), "index_source": pf.source, "seed": seed,
        "tokens_stride": pf.tokens_stride, "warnings": notes,
    }
