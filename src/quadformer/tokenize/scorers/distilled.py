"""Distilled saliency scorer: a small CNN that predicts, per ``p_min`` cell, the saliency a
full-resolution teacher assigns to the true class (Grad-CAM or input gradients), so the
mosaic follows what a classifier trained on the user's data looks at, without labels at
inference. Trained by ``quadformer train-scorer --kind distilled`` (see
``quadformer.train.saliency`` and ``docs/scorers.md``).

Weights files are safetensors whose metadata names the architecture
(``quadformer_scorer=saliency-net``) and its configuration (``config``: JSON), so a file of
another architecture is refused with one line instead of loading garbage.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...utils.errors import QuadformerError
from ...utils.io import atomic_write
from ..geometry import QuadGeometry
from ._checks import check_images
from .base import PatchScorer
from .macs import count_macs

ARCH = "saliency-net"
POOLS = ("max", "mean")


class SaliencyNet(nn.Module):
    """``[B, 3, H, W] -> [B, H/stride, W/stride]`` saliency logits.

    ``log2(stride)`` stages with ``widths`` channels (the last width repeats for extra
    stages): a 3x3 stride-2 conv and ReLU, plus a 3x3 conv and ReLU after the first stage
    (full-resolution layers are what costs), then ``context`` 3x3 convs with dilation 2, 4, ...
    at the last stage (cheap at stride 8; two widen the receptive field from 39 to 135 px,
    so a cell is judged against the rest of the image, e.g. a glyph plate against a blank
    one), then a 1x1 conv to one channel. About 8 MMACs at 128x128 without context
    (+2.4 per context layer), ~15% of a micro ViT at N=64.
    No normalisation layers: train and eval mode compute the same function (the end-to-end
    scorer runs it twice per step)."""

    def __init__(self, widths: Sequence[int] = (8, 16, 32), stride: int = 8, in_chans: int = 3,
                 context: int = 0) -> None:
        super().__init__()
        if stride < 2 or stride & (stride - 1):
            raise ValueError(f"stride must be a power of two >= 2, got {stride}")
        stages = int(math.log2(stride))
        widths = list(widths) + [widths[-1]] * max(0, stages - len(widths))
        self.widths, self.stride = tuple(int(w) for w in widths[:stages]), int(stride)
        layers: list[nn.Module] = []
        c = in_chans
        for i, w in enumerate(self.widths):
            layers += [nn.Conv2d(c, w, 3, 2, 1), nn.ReLU(inplace=True)]
            if i:
                layers += [nn.Conv2d(w, w, 3, 1, 1), nn.ReLU(inplace=True)]
            c = w
        self.context = int(context)
        for i in range(self.context):
            layers += [nn.Conv2d(c, c, 3, 1, 2 ** (i + 1), dilation=2 ** (i + 1)), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Conv2d(c, 1, 1)

    def config(self) -> dict:
        cfg = {"widths": list(self.widths), "stride": self.stride}
        return cfg | ({"context": self.context} if self.context else {})

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x)).squeeze(1)


def save_saliency_net(net: SaliencyNet, path: str | os.PathLike, extra: dict | None = None) -> Path:
    """Write ``net`` as safetensors with its architecture in the metadata (atomically)."""
    from safetensors.torch import save

    meta = {"quadformer_scorer": ARCH, "config": json.dumps(net.config())}
    meta.update({k: json.dumps(v) for k, v in (extra or {}).items()})
    state = {k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    blob = save(state, metadata=meta)
    return atomic_write(path, lambda f: f.write(blob))


def load_saliency_net(path: str | os.PathLike) -> tuple[SaliencyNet, dict]:
    """Read a file written by :func:`save_saliency_net`; anything else is a one-line
    :class:`QuadformerError` naming the file and how to make a right one."""
    from safetensors import safe_open

    path = Path(path)
    fix = "train one with `quadformer train-scorer --kind distilled --data <spec>`"
    if not path.is_file():
        raise QuadformerError(f"distilled scorer weights not found: {path}; {fix}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001  (safetensors raises several kinds for a bad file)
        raise QuadformerError(f"cannot read {path} as safetensors ({e.__class__.__name__}); {fix}") from None
    if meta.get("quadformer_scorer") != ARCH:
        what = meta.get("quadformer_scorer") or "no quadformer scorer metadata"
        raise QuadformerError(f"{path} is not a distilled saliency scorer ({what}); {fix}")
    try:
        net = SaliencyNet(**json.loads(meta["config"]))
    except (KeyError, TypeError, ValueError) as e:
        raise QuadformerError(f"{path} has an unreadable scorer config ({e}); {fix}") from None
    own = net.state_dict()
    bad = sorted(set(own) ^ set(state)) or [k for k in own if own[k].shape != state[k].shape]
    if bad:
        raise QuadformerError(f"{path} holds weights of another architecture (e.g. {bad[0]}); {fix}")
    net.load_state_dict(state, assign=True)  # also under a meta-device build (a config check)
    info = {k: json.loads(v) for k, v in meta.items() if k not in ("quadformer_scorer", "config")}
    return net, info


def scale_maps(sal: Tensor, geometry: QuadGeometry, pool: str) -> list[Tensor]:
    """A saliency map ``[B, h, w]`` (at least as fine as the scale-1 grid, an integer
    multiple per axis) -> the L-1 scale maps: max or mean over each cell."""
    maps = []
    for s in range(1, geometry.num_scales):
        gh, gw = geometry.grid(s)
        h, w = sal.shape[-2:]
        if h < gh or w < gw or h % gh or w % gw:
            raise QuadformerError(
                f"the scorer's saliency map is {h}x{w} but scale {s} needs a multiple of {gh}x{gw}; "
                f"use a scorer network with stride <= {geometry.patch_size(1)} (p_min x 2)")
        k = (h // gh, w // gw)
        x = sal.unsqueeze(1)
        m = F.max_pool2d(x, k) if pool == "max" else F.avg_pool2d(x, k)
        maps.append(m.squeeze(1))
    return maps


class DistilledScorer(PatchScorer):
    """Label-free saliency from a :class:`SaliencyNet` distilled from a teacher's maps.

    Args:
        weights: a file from ``quadformer train-scorer --kind distilled`` (architecture read
            from it), or ``'random'`` with ``widths``/``stride``/``context`` (e.g. before loading a
            Quadformer checkpoint that holds the scorer under ``scorer.``).
        pool: how a cell of a coarser scale scores: ``'max'`` (any salient p_min cell inside
            makes it salient: small objects are not diluted) or ``'mean'``.
    Frozen: eval mode under ``model.train()``, no gradients.
    """

    trainable = False

    def __init__(self, weights: str | os.PathLike | None = None, *, widths: Sequence[int] = (8, 16, 32),
                 stride: int = 8, pool: str = "max", context: int = 0) -> None:
        super().__init__()
        if pool not in POOLS:
            raise QuadformerError(f"pool={pool!r} is not one of {POOLS}")
        if weights is None:
            raise QuadformerError("the distilled scorer needs weights=<file> (train one with `quadformer "
                                  "train-scorer --kind distilled --data <spec>`) or weights='random'")
        if str(weights) == "random":
            self.net, self.info = SaliencyNet(widths, stride, context=context), {}
        else:
            self.net, self.info = load_saliency_net(weights)
        self.pool = pool
        self._macs: dict[tuple[int, int], int] = {}
        if not self.trainable:
            self.net.requires_grad_(False)
            self.net.eval()

    def train(self, mode: bool = True) -> "DistilledScorer":
        super().train(mode and self.trainable)
        return self

    def saliency(self, images: Tensor) -> Tensor:
        """Per-cell saliency in (0, 1), ``[B, H/stride, W/stride]`` (with grad if enabled)."""
        return torch.sigmoid(self.net(images.float()))

    def score(self, images: Tensor, geometry: QuadGeometry, **inputs) -> list[Tensor]:
        check_images(images, geometry, channels=3)
        if geometry.num_scales == 1:
            return []
        return scale_maps(self.saliency(images), geometry, self.pool)

    def gmacs(self, geometry: QuadGeometry) -> float:
        """One pass of the network, counted with hooks over its convolutions."""
        size = (geometry.height, geometry.width)
        if size not in self._macs:
            self._macs[size] = count_macs(self.net, *size)
        return self._macs[size] / 1e9

    def extra_repr(self) -> str:
        return f"pool={self.pool!r}, trainable={self.trainable}"
