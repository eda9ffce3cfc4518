"""End-to-end learned scorer: a :class:`~.distilled.SaliencyNet` trained by the classification
loss through a straight-through relaxation of the top-k split selection.

The forward pass is the hard selection (same tokens as a frozen scorer would give). Each
token's embedding is then multiplied by

    m = 1 + (s_parent - sg(s_parent)) - (s_own - sg(s_own))

(``sg`` = stop-gradient; ``s_parent`` the score of the split that created the token, 0 for
roots; ``s_own`` the score that was too low to split it, 0 for p_min leaves), so ``m == 1``
in value and the loss's gradient w.r.t. ``m`` (``<dL/dt, t>``) reaches the scores that
decided the token: a token that helps raises its parent's score and lowers its own, as in
straight-through estimators (Bengio et al., 2013) and learned token selection (e.g.
DynamicViT, Rao et al., 2021). The Quadformer calls :meth:`gate` after the patch embedding
when ``scorer.trainable`` is true; in eval mode the gate is the identity.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import lru_cache

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ..geometry import QuadGeometry
from .distilled import DistilledScorer, SaliencyNet, scale_maps


@lru_cache(maxsize=32)
def decision_tables(geometry: QuadGeometry) -> tuple[Tensor, Tensor]:
    """For every cell of the canonical layout (scale L-1 first, raster within): the index of
    its own score and of its parent's score in the flattened score layout (scales L-1..1),
    ``T`` (= number of internal cells, a zero column) where there is none."""
    L = geometry.num_scales
    offsets, start = {}, 0
    for s in range(L - 1, -1, -1):
        offsets[s] = start
        gh, gw = geometry.grid(s)
        start += gh * gw
    t = sum(geometry.grid(s)[0] * geometry.grid(s)[1] for s in range(1, L))
    own, parent = [], []
    for s in range(L - 1, -1, -1):
        gh, gw = geometry.grid(s)
        rows, cols = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
        rows, cols = rows.reshape(-1), cols.reshape(-1)
        own.append(offsets[s] + rows * gw + cols if s >= 1 else torch.full_like(rows, t))
        if s + 1 <= L - 1:
            pw = geometry.grid(s + 1)[1]
            parent.append(offsets[s + 1] + (rows // 2) * pw + cols // 2)
        else:
            parent.append(torch.full_like(rows, t))
    return torch.cat(own), torch.cat(parent)


class LearnedScorer(DistilledScorer):
    """A saliency network trained jointly with the Quadformer (``trainable = True``): it is
    not frozen and follows ``model.train()``.

    The trained parameters are offsets ``delta`` from the starting weights ``w0`` (kept in
    ``net``, frozen): ``w = w0 + step_scale * delta`` with ``delta = 0`` at the start. With
    Adam-type optimisers the step in ``w`` is ``step_scale`` times the model's learning rate,
    and weight decay pulls ``w`` back to the starting scorer instead of to zero (in our runs
    a scorer trained directly with the model's learning rate and weight decay collapsed to a
    constant map within 3 epochs).

    Args:
        weights: ``'random'`` (default) or a distilled scorer file to start from (recommended:
            the straight-through signal refines a sensible mosaic faster than it finds one).
        widths, stride, pool, context: as :class:`~.distilled.DistilledScorer`.
        gate_scale: multiplies the straight-through term.
        step_scale: the scorer's learning rate relative to the model's (see above).
    """

    trainable = True

    def __init__(self, weights: str | os.PathLike | None = "random", *, widths: Sequence[int] = (8, 16, 32),
                 stride: int = 8, pool: str = "max", gate_scale: float = 1.0, step_scale: float = 0.1,
                 context: int = 0) -> None:
        super().__init__(weights, widths=widths, stride=stride, pool=pool, context=context)
        self.gate_scale = float(gate_scale)
        self.step_scale = float(step_scale)
        self.net.requires_grad_(False)
        self.delta = nn.ParameterDict({k.replace(".", "__"): nn.Parameter(torch.zeros_like(v))
                                       for k, v in self.net.named_parameters()})

    def effective_weights(self) -> dict[str, Tensor]:
        return {k: v + self.step_scale * self.delta[k.replace(".", "__")] for k, v in self.net.named_parameters()}

    def saliency(self, images: Tensor) -> Tensor:
        return torch.sigmoid(functional_call(self.net, self.effective_weights(), (images.float(),)))

    def merged_net(self) -> SaliencyNet:
        """A plain :class:`SaliencyNet` with the current weights (for export)."""
        net = SaliencyNet(**self.net.config())
        with torch.no_grad():
            net.load_state_dict({k: v.detach().clone() for k, v in self.effective_weights().items()})
        return net.eval()

    def gate(self, tokens: Tensor, index: Tensor, geometry: QuadGeometry, images: Tensor) -> Tensor:
        """``tokens [B, N, D]`` of cells ``index [B, N]`` times the straight-through factor."""
        if not (self.training and torch.is_grad_enabled()) or geometry.num_scales == 1:
            return tokens
        maps = scale_maps(self.saliency(images), geometry, self.pool)
        flat = torch.cat([maps[s - 1].flatten(1) for s in range(geometry.num_scales - 1, 0, -1)], 1)
        flat = torch.cat([flat, flat.new_zeros(flat.shape[0], 1)], 1)
        own, parent = (t.to(index.device) for t in decision_tables(geometry))
        s_par = flat.gather(1, parent[index])
        s_own = flat.gather(1, own[index])
        m = 1.0 + self.gate_scale * ((s_par - s_par.detach()) - (s_own - s_own.detach()))
        return tokens * m.unsqueeze(-1).to(tokens.dtype)
