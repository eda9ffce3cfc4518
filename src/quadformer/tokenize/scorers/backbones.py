"""Frozen feature backbones for :class:`~.feature.FeatureScorer` (docs/design/mixed_resolution.md §7).

A backbone is any module mapping ``[B, 3, h, w]`` to ``[B, C', h/stride, w/stride]`` and
carrying its ``stride``. Weights come only from a local file or an explicitly named
timm/torchvision checkpoint: nothing is ever downloaded silently.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...utils.errors import QuadformerError
from ...utils.state_dict import read_state_dict as read_weights

#: Output stride of each ShuffleNetV2 tap (docs/design/mixed_resolution.md §7): the last module kept for it.
SHUFFLENET_TAPS: dict[int, str] = {8: "stage2", 16: "stage3", 32: "conv5"}
_SHUFFLENET_ORDER = ("conv1", "maxpool", "stage2", "stage3", "stage4", "conv5")

WEIGHTS_HELP = (
    "pass weights= a local checkpoint file (.safetensors/.pth/.pt, e.g. one trained with "
    "`quadformer train-scorer`), an explicit name such as 'torchvision:IMAGENET1K_V1' or "
    "'timm:<model name>' (these may download, because you named them), or 'random' for an "
    "untrained backbone (tests only)"
)


class ShuffleNetTap(nn.Module):
    """A torchvision ShuffleNetV2 cut after the module of the requested stride (classifier
    dropped). Submodule names match torchvision's, so its state-dict keys do too."""

    def __init__(self, net: nn.Module, tap_stride: int = 32) -> None:
        super().__init__()
        if tap_stride not in SHUFFLENET_TAPS:
            raise ValueError(f"ShuffleNetV2 taps are at strides {sorted(SHUFFLENET_TAPS)}, got tap_stride={tap_stride}")
        last = _SHUFFLENET_ORDER.index(SHUFFLENET_TAPS[tap_stride])
        self.names = _SHUFFLENET_ORDER[: last + 1]
        for name in self.names:
            setattr(self, name, getattr(net, name))
        self.stride = tap_stride

    def forward(self, x: Tensor) -> Tensor:
        for name in self.names:
            x = getattr(self, name)(x)
        return x


class TimmTap(nn.Module):
    """One output of a timm ``features_only`` model, with its reduction as ``stride``."""

    def __init__(self, model: nn.Module, tap_stride: int) -> None:
        super().__init__()
        reductions = list(model.feature_info.reduction())
        if tap_stride not in reductions:
            raise QuadformerError(f"timm model has feature strides {reductions}, not tap_stride={tap_stride!r}")
        self.model = model
        self.index = reductions.index(tap_stride)
        self.stride = tap_stride

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)[self.index]


def timm_backbone(name: str, tap_stride: int = 32, pretrained: bool = True) -> TimmTap:
    """A timm backbone as ``features_only`` (``pretrained=True`` uses timm's own cache or
    download, which is allowed only because the caller named the model)."""
    import timm

    return TimmTap(timm.create_model(name, pretrained=pretrained, features_only=True), tap_stride)


def _torchvision_shufflenet(weights_name: str | None) -> nn.Module:
    from torchvision.models import ShuffleNet_V2_X0_5_Weights, shufflenet_v2_x0_5

    if weights_name is None:
        return shufflenet_v2_x0_5(weights=None)
    key = weights_name.split(".")[-1]
    try:
        enum = ShuffleNet_V2_X0_5_Weights[key]
    except KeyError:
        valid = ", ".join(ShuffleNet_V2_X0_5_Weights.__members__)
        raise QuadformerError(
            f"unknown torchvision weights {weights_name!r} for shufflenet_v2_x0_5; valid: {valid}"
        ) from None
    try:
        return shufflenet_v2_x0_5(weights=enum)
    except OSError as e:  # URLError included: no network, and not in torch's cache
        raise QuadformerError(f"torchvision weights {weights_name!r} are not in the torch hub cache and cannot be "
                              f"downloaded ({e.__class__.__name__}); pass a local weights file") from None


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a checkpoint: ``.safetensors`` or a ``torch.save`` file (``weights_only=True``)
    holding a state dict or ``{'state_dict': ...}`` / ``{'model': ...}``. A ``module.``
    (DDP) or ``backbone.`` prefix shared by all keys is stripped."""
    path = Path(path)
    if not path.is_file():
        raise QuadformerError(f"backbone weights file {str(path)!r} does not exist; {WEIGHTS_HELP}")
    sd = read_weights(path, "backbone weights")  # module./_orig_mod. stripped, never runs code
    if sd and all(k.startswith("backbone.") for k in sd):
        sd = {k[len("backbone."):]: v for k, v in sd.items()}
    return sd


def load_backbone_weights(
    module: nn.Module, state_dict: Mapping[str, Tensor], allowed_extra: set[str] | None = None
) -> None:
    """Strictly load ``state_dict`` into ``module``: every key of the module must be present.
    Classifier keys (``fc.*``) and ``allowed_extra`` keys (deeper stages of a cut backbone)
    are ignored; anything else unexpected raises."""
    own = set(module.state_dict())
    extra = allowed_extra or set()
    given = {k for k in state_dict if not k.startswith("fc.")}
    missing = sorted(own - given)
    unexpected = sorted(given - own - extra)
    if missing or unexpected:
        raise QuadformerError(
            f"backbone weights do not match {type(module).__name__}: missing keys {missing[:8]}"
            f"{' ...' if len(missing) > 8 else ''}, unexpected keys {unexpected[:8]}"
            f"{' ...' if len(unexpected) > 8 else ''}"
        )
    module.load_state_dict({k: state_dict[k] for k in own}, strict=True)


def shufflenet_backbone(tap_stride: int = 32, weights: str | os.PathLike | None = None) -> nn.Module:
    """ShuffleNetV2-x0.5 cut at ``tap_stride`` (8: stage2, 16: stage3, 32: conv5).

    ``weights``: a local file, ``'torchvision:<enum name>'``, ``'timm:<name>'`` (then a timm
    ``features_only`` backbone of that name is returned instead) or ``'random'``.
    ``None`` raises: a scorer with silently random or downloaded weights is a trap.
    """
    if isinstance(tap_stride, bool) or tap_stride not in SHUFFLENET_TAPS:
        raise QuadformerError(f"feature scorer: tap_stride={tap_stride!r} is not a ShuffleNetV2 tap; use one of "
                              f"{sorted(SHUFFLENET_TAPS)}")
    if weights is None:
        raise QuadformerError(f"the feature scorer's backbone has no weights: {WEIGHTS_HELP}")
    if isinstance(weights, str) and weights.startswith("timm:"):
        return timm_backbone(weights[len("timm:"):], tap_stride, pretrained=True)
    if isinstance(weights, str) and weights.startswith("torchvision:"):
        return ShuffleNetTap(_torchvision_shufflenet(weights[len("torchvision:"):]), tap_stride)
    if isinstance(weights, str) and weights == "random":
        return ShuffleNetTap(_torchvision_shufflenet(None), tap_stride)
    if isinstance(weights, (str, os.PathLike)):
        full = _torchvision_shufflenet(None)
        tap = ShuffleNetTap(full, tap_stride)
        full_keys = {k for k in full.state_dict() if not k.startswith("fc.")}
        try:
            load_backbone_weights(tap, read_state_dict(weights), allowed_extra=full_keys)
        except QuadformerError as e:
            raise QuadformerError(f"{weights}: {e}") from None
        return tap
    raise TypeError(f"weights must be a str or path, got {type(weights).__name__}; {WEIGHTS_HELP}")


def freeze_as_buffers(module: nn.Module) -> nn.Module:
    """Turn every parameter of ``module`` into a (persistent) buffer of the same name.

    The values stay in ``state_dict()`` under the same keys and follow ``.to()``, but
    ``parameters()`` no longer yields them, so no optimizer (nor weight decay, nor a
    parameter count) of a parent model can touch them."""
    for sub in module.modules():
        for name, p in list(sub._parameters.items()):
            if p is None:
                continue
            del sub._parameters[name]
            sub.register_buffer(name, p.detach().requires_grad_(False))
    return module


# -------------------------------------------------------------------------------------------
# fast CPU inference copy of a ShuffleNetV2 tap

_CL = torch.channels_last


def _conv(x: Tensor, w: Tensor, b: Tensor | None, stride: int, padding: int, groups: int, relu: bool) -> Tensor:
    """``F.conv2d`` then an in-place ReLU. (oneDNN's fused conv+ReLU op,
    ``mkldnn::_convolution_pointwise``, gives the same bits but costs ~30-50 us more per call
    with torch 2.14: 1.2x slower at batch 1, no faster at 64.)"""
    y = F.conv2d(x, w, b, stride, padding, 1, groups)
    return y.relu_() if relu else y


def _max_pool_3s2(y: Tensor, out: Tensor) -> None:
    """``out = max_pool2d(y, 3, stride=2, padding=1)`` (no indices), as a separable strided
    max of shifted views: ~2x faster than ``max_pool2d_with_indices`` on channels-last."""
    h, w = y.shape[-2:]
    n, nb = (h + 1) // 2, h // 2
    if nb == n:
        r = torch.maximum(y[:, :, 0::2], y[:, :, 1::2])
    else:
        r = y[:, :, 0::2].contiguous(memory_format=_CL)
        if nb:
            torch.maximum(r[:, :, :nb], y[:, :, 1::2], out=r[:, :, :nb])
    if n > 1:
        torch.maximum(r[:, :, 1:], y[:, :, 1:2 * n - 2:2], out=r[:, :, 1:])
    n, nb = (w + 1) // 2, w // 2
    if nb == n:
        torch.maximum(r[..., 0::2], r[..., 1::2], out=out)
    else:
        out.copy_(r[..., 0::2])
        if nb:
            torch.maximum(out[..., :nb], r[..., 1::2], out=out[..., :nb])
    if n > 1:
        torch.maximum(out[..., 1:], r[..., 1:2 * n - 2:2], out=out[..., 1:])


def _fold(conv: nn.Module, bn: nn.Module) -> tuple[Tensor, Tensor]:
    from torch.nn.utils.fusion import fuse_conv_bn_weights

    w, b = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias)
    return w.detach().float().clone(), b.detach().float().clone()


def _is_conv(m: nn.Module, k: int, stride: int | None = None, groups_eq_in: bool = False) -> bool:
    return (
        type(m) is nn.Conv2d
        and m.kernel_size == (k, k)
        and m.dilation == (1, 1)
        and m.padding == ((k // 2, k // 2))
        and m.padding_mode == "zeros"
        and m.stride[0] == m.stride[1]
        and (stride is None or m.stride[0] == stride)
        and (m.groups == m.in_channels == m.out_channels if groups_eq_in else m.groups == 1)
    )


def _is_bn(m: nn.Module, c: int) -> bool:
    return type(m) is nn.BatchNorm2d and m.track_running_stats and m.running_mean is not None and m.num_features == c


def _seq(m: nn.Module, kinds: str) -> list[nn.Module] | None:
    """The children of Sequential ``m`` if their types spell ``kinds`` (c: conv, b: bn, r: relu)."""
    if type(m) is not nn.Sequential or len(m) != len(kinds):
        return None
    want = {"c": nn.Conv2d, "b": nn.BatchNorm2d, "r": nn.ReLU}
    mods = list(m)
    return mods if all(type(x) is want[k] for x, k in zip(mods, kinds)) else None


class FastShuffleNet(nn.Module):
    """A CPU inference copy of a :class:`ShuffleNetTap` (same outputs up to float rounding),
    built by :meth:`from_tap`; ~2x faster than the module with BatchNorm folded:

    * BatchNorm folded into the convolutions; ReLU in place after each;
      everything in channels-last, weights included (a 3-channel conv with a contiguous
      weight on channels-last input is several times slower);
    * no channel shuffle and no ``chunk``: the block outputs are never interleaved in memory.
      The network is traced once symbolically, keeping for each logical channel the tensor
      and channel holding it; a 1x1 convolution (or a depthwise one) reads its input in any
      channel order once its weight is permuted the same way, so each block only gathers
      (one ``cat`` of channel slices) the half it transforms. The tap output is put back
      in torchvision's channel order;
    * the stem's max-pool is computed before the ReLU (they commute), without indices;
    * :meth:`forward_passes` runs the high-resolution head (stem and stage2) in groups of
      :attr:`HEAD_PIXELS` (no ``cat`` of the inputs, small temporaries; the stems of small
      inputs, e.g. one image and its blurs, share one call of stage2),
      into one buffer, then the rest as one batch; an input given as ``(s, f)`` (images
      up-sampled ``f`` times, e.g. the scorer's blurs) has its first convolution computed
      on ``s`` (:meth:`_stem_up`), without the up-sampled images.

    * :meth:`to_bfloat16` gives a bfloat16 copy (about 2x faster on CPUs with AVX512-BF16 or
      AMX, not exact: it changes some selections, so the scorer offers it as an opt-in).

    Weights are copies: rebuild after changing the source module.
    """

    #: input pixels per call of the high-resolution head (stem and stage2): small groups keep
    #: its tensors in cache, and fresh large allocations cost page faults (up to 40% of the
    #: time of 24-image calls)
    HEAD_PIXELS = 8 * 256 * 256

    def __init__(self) -> None:
        super().__init__()
        self.stem: tuple[Tensor, Tensor] = (torch.empty(0), torch.empty(0))
        self.stem_channels = 0
        self.steps: list[tuple] = []
        self.output = 0  # the value holding the tap output
        self.out_channels = 0
        self.out_perm: Tensor | None = None
        self.split = 0
        self.stride = 0
        self.dtype = torch.float32  # of the weights, the activations and the output

    def to_bfloat16(self) -> "FastShuffleNet":
        """A copy computing in bfloat16 (weights folded in float32, then rounded); its inputs
        are cast to bfloat16 and its output is bfloat16."""
        bf = torch.bfloat16
        new = type(self)()
        for name in ("stem_channels", "output", "out_channels", "out_perm", "split", "stride", "HEAD_PIXELS"):
            setattr(new, name, getattr(self, name))
        new.dtype = bf
        new.stem = tuple(t.to(bf) for t in self.stem)
        new.steps = [((st[0], st[1], st[2], st[3].to(bf), st[4].to(bf), *st[5:]) if st[0] == "conv" else st, free)
                     for st, free in self.steps]
        return new

    @classmethod
    def from_tap(cls, tap: nn.Module) -> "FastShuffleNet | None":
        """The fast copy of ``tap``, or ``None`` if it is not a torchvision ShuffleNetV2 cut
        this class knows exactly (or not float32 on CPU)."""
        try:
            return cls._build(tap)
        except _Unsupported:
            return None

    @classmethod
    def _build(cls, tap: nn.Module) -> "FastShuffleNet":
        if not isinstance(tap, ShuffleNetTap) or tuple(tap.names[:2]) != ("conv1", "maxpool"):
            raise _Unsupported
        for t in list(tap.parameters()) + list(tap.buffers()):
            if t.is_floating_point() and (t.device.type != "cpu" or t.dtype != torch.float32):
                raise _Unsupported
        self = cls()
        self.stride = tap.stride
        mods = _seq(tap.conv1, "cbr")
        if mods is None or not _is_conv(mods[0], 3, 2) or mods[0].in_channels != 3 \
                or not _is_bn(mods[1], mods[0].out_channels):
            raise _Unsupported
        pool = tap.maxpool
        if not (
            type(pool) is nn.MaxPool2d
            and pool.kernel_size in (3, (3, 3))
            and pool.stride in (2, (2, 2))
            and pool.padding in (1, (1, 1))
            and pool.dilation in (1, (1, 1))
            and not pool.ceil_mode
            and not pool.return_indices
        ):
            raise _Unsupported
        w, b = _fold(mods[0], mods[1])
        self.stem = (w.contiguous(memory_format=_CL), b)
        c = self.stem_channels = w.shape[0]

        # symbolic trace: logical channel k lives in value where[k][0], channel where[k][1]
        width = {0: c}  # channels of each value
        where = [(0, i) for i in range(c)]
        steps: list[tuple] = []

        def new_value(ch: int) -> int:
            vid = len(width)
            width[vid] = ch
            return vid

        def gather(logical: list[int], keep_order: bool = False, force: bool = False) -> tuple[int, list[int]]:
            """A value holding the given logical channels (a new one, made by one ``cat`` of
            channel slices, unless one value holds exactly them and ``force`` is false);
            returns it and, for each of its channels, the logical index it holds."""
            items = [(where[k], k) for k in logical]
            if not keep_order:
                items.sort()
            runs: list[list[int]] = []  # [vid, start, stop]
            for (vid, ch), _ in items:
                if runs and runs[-1][0] == vid and runs[-1][2] == ch:
                    runs[-1][2] += 1
                else:
                    runs.append([vid, ch, ch + 1])
            order = [k for _, k in items]
            if not force and len(runs) == 1 and runs[0][1] == 0 and runs[0][2] == width[runs[0][0]]:
                return runs[0][0], order
            out = new_value(len(logical))
            steps.append(("cat", out, [tuple(r) for r in runs]))
            return out, order

        def conv(src: int, w: Tensor, b: Tensor, m: nn.Conv2d, relu: bool) -> int:
            out = new_value(w.shape[0])
            steps.append(("conv", out, src, w.contiguous(memory_format=_CL), b.contiguous(), m.stride[0],
                          m.padding[0], m.groups, relu))
            return out

        names = tap.names[2:]
        if not names or names[0] != "stage2":
            raise _Unsupported
        for name in names:
            if name == "conv5":
                mods = _seq(tap.conv5, "cbr")
                if mods is None or not _is_conv(mods[0], 1) or not _is_bn(mods[1], mods[0].out_channels) \
                        or mods[0].in_channels != len(where):
                    raise _Unsupported
                src, order = gather(list(range(len(where))))
                w, b = _fold(mods[0], mods[1])
                out = conv(src, w[:, order], b, mods[0], True)
                where = [(out, i) for i in range(w.shape[0])]
                continue
            stage = getattr(tap, name)
            if type(stage) is not nn.Sequential:
                raise _Unsupported
            for block in stage:
                where = cls._block(block, where, gather, conv)
            if name == "stage2":
                # the end of the high-resolution head, run image group by image group: its
                # output is gathered into one buffer (in torchvision's order if it is the tap)
                vid, order = gather(list(range(len(where))), keep_order=name == names[-1], force=True)
                self.split = len(steps) - 1
                where = [None] * len(order)
                for ch, k in enumerate(order):
                    where[k] = (vid, ch)
        if all(vid == where[0][0] for vid, _ in where) and [ch for _, ch in where] == list(range(len(where))) \
                and width[where[0][0]] == len(where):
            self.output = where[0][0]
        else:  # many channel runs: gather in any order, then permute the channels once
            vid, order = gather(list(range(len(where))))
            self.output = vid
            self.out_perm = torch.tensor([order.index(k) for k in range(len(order))])
        self.out_channels = len(where)
        # free each value after its last use
        last: dict[int, int] = {}
        for i, st in enumerate(steps):
            srcs = [r[0] for r in st[2]] if st[0] == "cat" else [st[2]]
            for s in srcs:
                last[s] = i
        self.steps = [(st, [v for v, i2 in last.items() if i2 == i and v != self.output]) for i, st in enumerate(steps)]
        return self

    @staticmethod
    def _block(block: nn.Module, where: list, gather, conv) -> list:
        if type(block).__name__ != "InvertedResidual" or not hasattr(block, "branch2"):
            raise _Unsupported
        stride = getattr(block, "stride", None)
        b2 = _seq(block.branch2, "cbrcbcbr")
        if b2 is None:
            raise _Unsupported
        pw1, bn1, _, dw, bn2, pw2, bn3, _ = b2
        cin = len(where)
        f = pw2.out_channels
        if not (_is_conv(pw1, 1) and _is_conv(dw, 3, stride, groups_eq_in=True) and _is_conv(pw2, 1)
                and pw1.out_channels == f and dw.in_channels == f and pw2.in_channels == f
                and _is_bn(bn1, f) and _is_bn(bn2, f) and _is_bn(bn3, f)):
            raise _Unsupported
        w1, c1 = _fold(pw1, bn1)
        wd, cd = _fold(dw, bn2)
        w2, c2 = _fold(pw2, bn3)
        if stride == 1:
            if len(block.branch1) != 0 or cin != 2 * f or pw1.in_channels != f:
                raise _Unsupported
            src, order = gather(list(range(f, 2 * f)))
            t = conv(src, w1[:, [k - f for k in order]], c1, pw1, True)
            t = conv(t, wd, cd, dw, False)
            out = conv(t, w2, c2, pw2, True)
            first = where[:f]
            second = [(out, i) for i in range(f)]
        else:
            b1 = _seq(block.branch1, "cbcbr")
            if b1 is None or pw1.in_channels != cin:
                raise _Unsupported
            dw1, bn4, pw3, bn5, _ = b1
            if not (_is_conv(dw1, 3, stride, groups_eq_in=True) and dw1.in_channels == cin and _is_conv(pw3, 1)
                    and pw3.in_channels == cin and pw3.out_channels == f and _is_bn(bn4, cin) and _is_bn(bn5, f)):
                raise _Unsupported
            src, order = gather(list(range(cin)))
            wd1, cd1 = _fold(dw1, bn4)
            w3, c3 = _fold(pw3, bn5)
            t = conv(src, wd1[order], cd1[order], dw1, False)
            left = conv(t, w3[:, order], c3, pw3, True)
            t = conv(src, w1[:, order], c1, pw1, True)
            t = conv(t, wd, cd, dw, False)
            right = conv(t, w2, c2, pw2, True)
            first = [(left, i) for i in range(f)]
            second = [(right, i) for i in range(f)]
        # cat((first, second), 1) then channel_shuffle(groups=2): interleave
        return [p for pair in zip(first, second) for p in pair]

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_passes([x])

    def forward_passes(self, xs: list[Tensor | tuple[Tensor, int]]) -> Tensor:
        """The features of the concatenation of ``xs`` (images of one size), without that
        ``cat``. An entry ``(s, f)`` stands for the images ``s`` up-sampled ``f`` times
        (``f`` in :attr:`UPSAMPLED`; bilinear, ``align_corners=False``: the up-sampling of
        :func:`~.blur.blur`), computed from ``s`` without making them (see :meth:`_stem_up`)."""
        sizes = [(x.shape[-2] * x_f, x.shape[-1] * x_f) for x, x_f in map(_pass, xs)]
        h, w = sizes[0]
        if any(sz != (h, w) for sz in sizes):
            raise ValueError(f"all inputs must have one size, got {sorted(set(sizes))}")
        total = sum(x.shape[0] for x, _ in map(_pass, xs))
        group = max(1, self.HEAD_PIXELS // (h * w))
        split_step, _ = self.steps[self.split]
        buf = None
        i = 0
        pending: list[Tensor] = []  # stem outputs of small parts, run through stage2 together

        def head() -> None:
            nonlocal buf, i
            stem = pending[0] if len(pending) == 1 else torch.cat(pending)
            pending.clear()
            vals = {0: stem}
            self._run(self.steps[:self.split], vals)
            pieces = [vals[v][:, a:z] for v, a, z in split_step[2]]
            if buf is None:
                hs, ws = pieces[0].shape[-2:]
                channels = sum(z - a for _, a, z in split_step[2])
                buf = torch.empty(total, channels, hs, ws, dtype=pieces[0].dtype, device=pieces[0].device,
                                  memory_format=_CL)
            torch.cat(pieces, 1, out=buf[i:i + stem.shape[0]])
            i += stem.shape[0]

        for x, f in map(_pass, xs):
            for part in x.split(group):
                pending.append(self._stem(part) if f == 1 else self._stem_up(part, f))
                if sum(p.shape[0] for p in pending) >= max(1, group // 2):  # else wait for more (cache-hot)
                    head()
        if pending:
            head()
        vals = {split_step[1]: buf}
        self._run(self.steps[self.split + 1:], vals)
        out = vals[self.output]
        if self.out_perm is not None:
            out = out.index_select(1, self.out_perm.to(out.device))
        return out

    def _stem(self, x: Tensor) -> Tensor:
        """conv1 and its ReLU, then the max-pool (ReLU and max-pool commute)."""
        w, b = self.stem
        y = _conv(x.to(dtype=self.dtype, memory_format=_CL), w, b, 2, 1, 1, True)  # one copy: cast + layout
        h, wd = y.shape[-2:]
        out = torch.empty(y.shape[0], y.shape[1], (h + 1) // 2, (wd + 1) // 2, dtype=y.dtype, device=y.device,
                          memory_format=_CL)
        _max_pool_3s2(y, out)
        return out

    #: up-sampling factors :meth:`forward_passes` takes as ``(small image, f)``
    UPSAMPLED = (2, 4)

    def _stem_up(self, s: Tensor, f: int) -> Tensor:
        """The stem of ``up_f(s)`` (bilinear, ``align_corners=False``) from ``s`` itself.

        The 3x3 / 2 convolution is linear, and so is the up-sampling: away from the image
        edges, each of the ``P^2`` phases (``P = f/2``) of the conv output (output pixel
        ``P*m + p``) is a 3x3 convolution of ``s`` around ``m``. The bilinear clamping at the
        edges is the same as padding ``s`` with its edge values, which also makes the conv's
        zero row (column) above (left of) the image a copy of the first row (column) of
        ``up_f(s)``: its contribution to the first output row (column) is taken out again.
        With ``P = 2`` the max-pool reads the phases directly. ``f``x fewer input pixels
        and no up-sampled image at all; equal to the stem of ``up_f(s)`` up to rounding.
        """
        kernels = self._up_kernels(f)
        k, k_row, k_col, k_corner, bias = kernels
        p = f // 2
        c = self.stem_channels
        b, _, sh, sw = s.shape
        s = s.to(self.dtype)
        sp = F.pad(s, (1, 1, 1, 1), mode="replicate").contiguous(memory_format=_CL)
        o = _conv(sp, k, bias, 1, 0, 1, False)  # [b, p*p*c, sh, sw]: phase (i, j) = channels (i*p + j)*c ...
        row = _conv(sp[:, :, 1:2], k_row, None, 1, 0, 1, False)  # [b, p*c, 1, sw]: phases (0, j), first row
        col = _conv(sp[..., 1:2], k_col, None, 1, 0, 1, False)  # [b, p*c, sh, 1]: phases (i, 0), first column
        corner = s[:, :, 0, 0] @ k_corner  # [b, c]: the conv's corner tap, taken out twice above
        o[:, :p * c, 0].sub_(row[:, :, 0])
        ph = o.unflatten(1, (p, p * c))
        ph[:, :, :c, :, 0].sub_(col.unflatten(1, (p, c))[..., 0])
        o[:, :c, 0, 0].add_(corner)
        if p == 1:
            out = torch.empty(b, c, (sh + 1) // 2, (sw + 1) // 2, dtype=o.dtype, device=o.device, memory_format=_CL)
            _max_pool_3s2(o, out)
            return out.relu_()
        # p == 2: conv output pixel (2m + i, 2l + j) is phase (i, j) at (m, l); a pooling window
        # (rows 2m-1..2m+1) covers phase rows (1, m-1), (0, m), (1, m); likewise for columns
        even = torch.maximum(o[:, 0:c], o[:, c:2 * c])
        torch.maximum(even[..., 1:], o[:, c:2 * c, :, :-1], out=even[..., 1:])
        odd = torch.maximum(o[:, 2 * c:3 * c], o[:, 3 * c:4 * c])
        torch.maximum(odd[..., 1:], o[:, 3 * c:4 * c, :, :-1], out=odd[..., 1:])
        out = torch.maximum(even, odd)
        torch.maximum(out[:, :, 1:], odd[:, :, :-1], out=out[:, :, 1:])
        return out.relu_()

    def _up_kernels(self, f: int) -> tuple[Tensor, ...]:
        cache = self.__dict__.setdefault("_up_cache", {})
        if f not in cache:
            if f not in self.UPSAMPLED:
                raise ValueError(f"up-sampled inputs are supported for f in {self.UPSAMPLED}, got {f}")
            w, b = self.stem
            w64 = w.double()  # bfloat16 copies: from their rounded weights, like their plain stem
            p = f // 2
            # a[i, k, t]: weight of s[m + t - 1] in up_f(s) row f*m + 2*i - 1 + k (conv tap k of phase i)
            a = torch.zeros(p, 3, 3, dtype=torch.float64)
            for i in range(p):
                for k in range(3):
                    src = (2 * i - 1 + k + 0.5) / f - 0.5
                    t0 = math.floor(src)
                    lam = src - t0
                    a[i, k, t0 + 1] += 1 - lam
                    a[i, k, t0 + 2] += lam
            k_full = torch.einsum("ocyx,iyY,jxX->ijocYX", w64, a, a).reshape(p * p * w.shape[0], 3, 3, 3)
            k_row = torch.einsum("ocx,jxX->jocX", w64[:, :, 0], a).reshape(p * w.shape[0], 3, 1, 3)
            k_col = torch.einsum("ocy,iyY->iocY", w64[:, :, :, 0], a).reshape(p * w.shape[0], 3, 3, 1)
            dt = self.dtype
            cache[f] = (
                k_full.to(dt).contiguous(memory_format=_CL),
                k_row.to(dt).contiguous(memory_format=_CL),
                k_col.to(dt).contiguous(memory_format=_CL),
                w[:, :, 0, 0].t().to(dt).contiguous(),
                b.repeat(p * p).to(dt).contiguous(),
            )
        return cache[f]

    @staticmethod
    def _run(steps: list, vals: dict[int, Tensor]) -> None:
        for st, free in steps:
            if st[0] == "cat":
                _, out, runs = st
                vals[out] = torch.cat([vals[v][:, a:z] for v, a, z in runs], 1)
            else:
                _, out, src, cw, cb, s, p, g, relu = st
                vals[out] = _conv(vals[src], cw, cb, s, p, g, relu)
            for v in free:
                vals.pop(v, None)


class _Unsupported(Exception):
    pass


def _pass(x: Tensor | tuple[Tensor, int]) -> tuple[Tensor, int]:
    return x if isinstance(x, tuple) else (x, 1)
