"""The accelerator path has no host syncs and no data-dependent shapes (issue 13 item 3).

A GPU runs the code path every non-CPU device takes (the CPU-only fast paths check
``device.type == "cpu"``). Running it on the ``meta`` device proves, without a GPU, what CUDA
graphs and ``torch.compile`` need: a meta tensor has no values, so ``.item()``, ``.tolist()``,
``bool(tensor)``, ``nonzero`` or a mask-indexed shape would raise here, as they would sync (or
break a graph) on CUDA. The negative control shows that the check can fail.
"""

from __future__ import annotations

import pytest
import timm
import torch

import quadformer.models  # noqa: F401
from quadformer.tokenize.geometry import QuadGeometry
from quadformer.tokenize.scorers.base import PatchScorer
from quadformer.tokenize.tokenizer import Tokenizer

TINY = {"embed_dim": 32, "depth": 1, "num_heads": 2, "num_classes": 5}
CASES = {
    "pixel-blur": ("quadformer_nano_patch4_32", dict(scorer="pixel-blur", num_patches=28)),
    "feature": ("quadformer_nano_patch4_32",
                dict(scorer="feature", scorer_kwargs={"weights": "random", "tap_stride": 8}, num_patches=40)),
    "distilled": ("quadformer_nano_patch4_32",
                  dict(scorer="distilled", scorer_kwargs={"weights": "random", "stride": 4}, num_patches=28)),
    "uniform": ("uniform_vit_nano_patch4_32", dict(num_patches=16)),
}


def on_meta(case: str) -> torch.nn.Module:
    name, kw = CASES[case]
    return timm.create_model(name, **TINY, **kw).to("meta")


@pytest.mark.parametrize("case", list(CASES))
def test_inference_and_training_step_run_without_values(case):
    m = on_meta(case).eval()
    x = torch.empty(3, 3, 32, 32, device="meta")
    with torch.inference_mode():
        assert m(x).shape == (3, 5)
    m.train()
    loss = m(x).logsumexp(1).mean()
    loss.backward()
    assert all(p.grad is not None for p in m.parameters() if p.requires_grad)


def test_tokenizer_runs_without_values():
    tok = Tokenizer(img_size=64, p_min=8, p_max=32, num_patches=40, embed_dim=16).to("meta")
    tokens, boxes, meta = tok(torch.empty(2, 3, 64, 64, device="meta"))
    assert tokens.shape == (2, 41, 16) and boxes.shape == (2, 40, 4) and meta.shape == (2, 40, 3)


class HostSyncScorer(PatchScorer):
    """Reads a value back to the host, as a careless custom scorer would."""

    def score(self, images, geometry: QuadGeometry, **inputs):
        gain = 2.0 if images.mean().item() > 0 else 1.0
        return [images.new_ones(images.shape[0], *geometry.grid(s)) * gain for s in range(1, geometry.num_scales)]


def test_a_host_sync_is_caught():
    tok = Tokenizer(img_size=64, p_min=8, p_max=32, num_patches=40, embed_dim=16, scorer=HostSyncScorer()).to("meta")
    with pytest.raises((RuntimeError, NotImplementedError)):
        tok(torch.empty(2, 3, 64, 64, device="meta"))
