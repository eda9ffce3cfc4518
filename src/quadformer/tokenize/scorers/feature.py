"""Feature-based scorer (docs/design/mixed_resolution.md §7, the paper's main scorer).

A region deserves small patches if blurring it to the resolution of a bigger patch changes
what a small frozen CNN sees there: ``map_j = mean_channels (F(blur_j) - F(x))^2``.

Frozen backbone and state dicts: the backbone's parameters are converted to buffers
(:func:`~.backbones.freeze_as_buffers`), so they never appear in ``parameters()`` (hence in
no optimizer), yet they are saved and loaded with the scorer: in a parent model that holds
the scorer as ``self.scorer`` they appear as ``scorer.backbone.<torchvision key>`` (e.g.
``scorer.backbone.conv1.0.weight``). To restore such a checkpoint, build the scorer with
``weights="random"`` and load the parent state dict over it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN as IMAGENET_MEAN
from timm.data import IMAGENET_DEFAULT_STD as IMAGENET_STD
from torch import Tensor, nn

from ...utils.errors import QuadformerError
from ..geometry import QuadGeometry
from ..kernels import map_streams
from ..validation import is_tracing
from ._checks import check_images
from .backbones import (
    SHUFFLENET_TAPS,
    FastShuffleNet,
    freeze_as_buffers,
    load_backbone_weights,
    read_state_dict,
    shufflenet_backbone,
)
from .base import PatchScorer, to_grid
from .blur import blur
from .blur import downsample as blur_down
from .macs import count_macs, module_device_dtype
from .rescale import resized

#: ``precision=`` values: the backbone's compute dtype
PRECISIONS = ("float32", "bfloat16")
#: ``normalize=`` values: ``'mean'`` divides each scale's map by its mean over the image
NORMALIZE = ("none", "mean")


def _stats(v: Sequence[float], what: str) -> tuple[float, ...]:
    t = tuple(float(x) for x in v)
    if len(t) != 3:
        raise ValueError(f"{what} must have 3 values (RGB), got {t}")
    return t


def _as_stride(stride: object) -> int:
    """An int, or a pair of equal ints (e.g. a bare ``nn.Conv2d``'s ``stride``)."""
    if isinstance(stride, (tuple, list)) and len(stride) == 2 and stride[0] == stride[1]:
        stride = stride[0]
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ValueError(
            f"a custom backbone needs its output stride as one positive int (got {stride!r}): "
            "pass stride= or give it a .stride attribute"
        )
    return stride


class FeatureScorer(PatchScorer):
    """Importance from a frozen backbone's feature change under blur.

    Args:
        weights: for the default ShuffleNetV2-x0.5 backbone, a local checkpoint file,
            ``'torchvision:IMAGENET1K_V1'``, ``'timm:<name>'`` (a timm ``features_only``
            backbone instead) or ``'random'``. ``None`` raises (no silent download). With a
            custom ``backbone``: ``None``/``'random'`` keeps its weights, a file is loaded
            strictly into it.
        backbone: optional custom module ``[B, 3, h, w] -> [B, C', h', w']``, frozen in place
            (its parameters become buffers).
        stride: the custom backbone's output stride (default: its ``stride`` attribute).
        tap_stride: ShuffleNetV2/timm tap: 8 (stage2), 16 (stage3) or 32 (conv5).
        input_scale: backbone input resized by ``r`` (bilinear, antialiased below 1);
            effective stride = stride / r. ``tap_stride=8, input_scale=0.5, normalize='mean'``
            is the fast setting: the default's score grids at 1/11 of its MACs, ~0.4x its time
            on CPU (docs/scorers.md).
        error: ``'mse'`` (mean squared feature difference) or ``'cosine'`` (1 - cosine).
        input_mean, input_std: normalisation of the images given to the scorer (the ViT's).
        backbone_mean, backbone_std: normalisation the backbone expects (default ImageNet,
            or the timm model's own for ``'timm:'`` weights).
        p_min: optional, to check the stride rule at construction already.
        chunk_size: images scored per backbone call (each call still batches the images
            with their L-1 blurs). ``None``: on CPU, 16 images of 256x256 pixels (as many
            pixels) with the fast ShuffleNetV2 path, else 8 (smaller temporaries, ~1.5x
            faster than a 64-image call); the whole batch on other devices.
        channels_last: backbone input in channels-last memory format; ``None``: on CPU
            only, where it made ShuffleNetV2 ~1.5-2x faster in our measurements. On CPU in
            float32, a torchvision ShuffleNetV2 tap runs as a
            :class:`~.backbones.FastShuffleNet` (channels-last, same outputs up to float
            rounding, ~2x faster) unless ``channels_last=False``.
        precision: ``'float32'`` (default, exact) or ``'bfloat16'``: the backbone computes in
            bfloat16 (~2x faster on CPUs with AVX512-BF16/AMX; feature maps within ~3%, which
            changes some selections, hence opt-in). CPU ``torch.autocast`` in bfloat16 selects
            it too.
        normalize: ``'none'`` (default) or ``'mean'``: each scale's map is divided by its mean
            over the image, so the quadtree ranks a cell against its own scale's typical change.
            With ``input_scale=0.5`` the finest blur is barely visible to the backbone (mean
            ``map_1 / map_2`` ~0.2 on the built-in tasks, 0.6-0.95 at full size), so it splits
            too few cells finely; ``'mean'`` gives those splits back (docs/scorers.md).
        streams: ``None`` (default) or ``True``: on CPU with several intra-op threads, the
            chunks of a batch run on as many threads, each with one intra-op thread
            (:func:`~quadformer.tokenize.kernels.map_streams`: the backbone's small convolutions
            scale badly inside each op; ~1.3x faster on 2 cores, same values). ``False``: one
            chunk after the other, each op on all threads.
    """

    CPU_CHUNK = 8
    #: backbone input pixels per chunk with the fast ShuffleNetV2 path (whose stem runs
    #: in smaller groups, so its temporaries stay small whatever the chunk)
    CPU_CHUNK_PIXELS = 16 * 256 * 256
    #: the same with ``streams`` (one intra-op thread per chunk: 8 images of 256x256 ran
    #: ~1.15x faster than 16 and 4 on 2 cores)
    STREAM_CHUNK_PIXELS = 8 * 256 * 256

    def __init__(
        self,
        weights: str | os.PathLike | None = None,
        *,
        backbone: nn.Module | None = None,
        stride: int | None = None,
        tap_stride: int = 32,
        input_scale: float = 1.0,
        error: str = "mse",
        input_mean: Sequence[float] = IMAGENET_MEAN,
        input_std: Sequence[float] = IMAGENET_STD,
        backbone_mean: Sequence[float] | None = None,
        backbone_std: Sequence[float] | None = None,
        p_min: int | None = None,
        chunk_size: int | None = None,
        channels_last: bool | None = None,
        precision: str = "float32",
        normalize: str = "none",
        streams: bool | None = None,
    ) -> None:
        super().__init__()
        if precision not in PRECISIONS:
            raise QuadformerError(f"feature scorer: precision={precision!r} is not one of {PRECISIONS}")
        if normalize not in NORMALIZE:
            raise QuadformerError(f"feature scorer: normalize={normalize!r} is not one of {NORMALIZE}")
        if error not in ("mse", "cosine"):
            raise QuadformerError(f"feature scorer: error={error!r} is not one of ('mse', 'cosine')")
        if isinstance(input_scale, bool) or not isinstance(input_scale, (int, float)) \
                or not math.isfinite(input_scale) or not input_scale > 0:
            raise QuadformerError(f"feature scorer: input_scale={input_scale!r} must be a number > 0 "
                                  "(e.g. 0.5: the backbone sees the image at half size, see docs/scorers.md)")
        if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int)
                                       or chunk_size < 1):
            raise QuadformerError(f"feature scorer: chunk_size={chunk_size!r} must be an int >= 1 or None")
        if streams is not None and not isinstance(streams, bool):
            raise QuadformerError(f"feature scorer: streams={streams!r} must be true, false or null (default: on "
                                  "CPU with several threads)")
        if backbone is None:
            backbone = shufflenet_backbone(tap_stride, weights)
            self.default_taps = True
        else:
            self.default_taps = False
            if isinstance(weights, str) and weights.startswith(("timm:", "torchvision:")):
                raise ValueError(f"weights={weights!r} names a model; with a custom backbone pass a file or 'random'")
            if weights is not None and weights != "random":
                load_backbone_weights(backbone, read_state_dict(weights))
        stride = _as_stride(stride if stride is not None else getattr(backbone, "stride", None))
        if backbone_mean is None or backbone_std is None:
            cfg = getattr(getattr(backbone, "model", None), "pretrained_cfg", None) or {}
            backbone_mean = backbone_mean or cfg.get("mean", IMAGENET_MEAN)
            backbone_std = backbone_std or cfg.get("std", IMAGENET_STD)
        self.backbone = freeze_as_buffers(backbone).eval()
        self.stride = stride
        self.input_scale = float(input_scale)
        self.error = error
        self.chunk_size = chunk_size
        self.channels_last = channels_last
        self.precision = precision
        self.normalize = normalize
        self.streams = streams
        # x_b = ((x * std_in + mean_in) - mean_b) / std_b = x * a + c
        m_in, s_in = _stats(input_mean, "input_mean"), _stats(input_std, "input_std")
        m_b, s_b = _stats(backbone_mean, "backbone_mean"), _stats(backbone_std, "backbone_std")
        self.convert = (m_in, s_in) != (m_b, s_b)
        a = torch.tensor([si / sb for si, sb in zip(s_in, s_b)]).view(1, 3, 1, 1)
        c = torch.tensor([(mi - mb) / sb for mi, mb, sb in zip(m_in, m_b, s_b)]).view(1, 3, 1, 1)
        self.register_buffer("norm_scale", a, persistent=False)
        self.register_buffer("norm_shift", c, persistent=False)
        self._macs: dict[tuple[int, int], int] = {}
        if p_min is not None:
            self.check_stride(p_min)

    @property
    def effective_stride(self) -> float:
        return self.stride / self.input_scale

    def check_stride(self, p_min: int) -> None:
        """Spec §7: the feature map must be at least as fine as the scale-1 grid, i.e.
        effective stride <= 2 * p_min; otherwise say which tap or input scale would do."""
        eff = self.effective_stride
        if eff <= 2 * p_min:
            return
        need_r = self.stride / (2 * p_min)
        taps = [s for s in sorted(SHUFFLENET_TAPS) if s / self.input_scale <= 2 * p_min] if self.default_taps else []
        tap_hint = (
            f"a shallower tap (tap_stride={taps[-1]} gives effective stride {taps[-1] / self.input_scale:g})"
            if taps
            else f"a shallower tap (stride <= {2 * p_min * self.input_scale:g} at input_scale={self.input_scale:g})"
        )
        raise QuadformerError(
            f"feature scorer: effective backbone stride {eff:g} (stride {self.stride} / input_scale "
            f"{self.input_scale:g}) exceeds 2*p_min = {2 * p_min} for p_min={p_min}; the feature map would "
            f"be coarser than the scale-1 grid. Use {tap_hint} or a larger input_scale (>= {need_r:g})"
        )

    # -- inference copy with BatchNorm folded into the convolutions --------------------------
    def _inference_backbone(self, bfloat16: bool = False) -> nn.Module:
        """The frozen backbone with every Conv2d->BatchNorm2d pair folded into one conv
        (~1.6x faster on CPU), or its :class:`~.backbones.FastShuffleNet` form; with
        ``bfloat16`` the fast form's bfloat16 copy. A private copy: state-dict keys stay
        torchvision's; it is rebuilt after ``load_state_dict`` and after ``.to()``/``.half()``
        (see ``_apply``)."""
        fused = self.__dict__.get("_fused")
        if fused is None:
            fused = None if self.channels_last is False else FastShuffleNet.from_tap(self.backbone)
            if fused is None:
                fused = fold_batchnorm(self.backbone)
            self.__dict__["_fused"] = fused
        if bfloat16 and isinstance(fused, FastShuffleNet):
            if "_fused_bf16" not in self.__dict__:
                self.__dict__["_fused_bf16"] = fused.to_bfloat16()
            return self.__dict__["_fused_bf16"]
        return fused

    def _drop_copies(self) -> None:
        self.__dict__.pop("_fused", None)
        self.__dict__.pop("_fused_bf16", None)

    def _apply(self, fn, recurse: bool = True):
        self._drop_copies()
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, *args, **kwargs):
        self._drop_copies()
        return super()._load_from_state_dict(*args, **kwargs)

    def _bfloat16(self, device: torch.device) -> bool:
        """bfloat16 backbone: asked for, or CPU autocast in bfloat16 (eager only)."""
        if self.precision == "bfloat16":
            return True
        return (device.type == "cpu" and torch.is_autocast_enabled("cpu")
                and torch.get_autocast_dtype("cpu") == torch.bfloat16)

    def train(self, mode: bool = True) -> "FeatureScorer":
        """The backbone stays in eval mode (frozen norm statistics) whatever ``mode``."""
        super().train(mode)
        self.backbone.eval()
        return self

    def score(self, images: Tensor, geometry: QuadGeometry, **inputs) -> list[Tensor]:
        check_images(images, geometry, channels=3)
        self.check_stride(geometry.p_min)
        if geometry.num_scales == 1:
            return []
        with torch.no_grad():
            parallel = (self.streams is not False and images.device.type == "cpu" and not is_tracing()
                        and torch.get_num_threads() > 1)
            streams = parallel and images.shape[0] > 1
            chunk = self.chunk_size
            pixels = images.shape[-2] * images.shape[-1] * self.input_scale**2
            if is_tracing():
                chunk = images.shape[0]  # one graph for any batch size
            elif chunk is None:
                if images.device.type != "cpu":
                    chunk = images.shape[0]
                elif isinstance(self._inference_backbone(), FastShuffleNet):
                    chunk = max(1, int(self.CPU_CHUNK_PIXELS // pixels))
                else:
                    chunk = self.CPU_CHUNK
                if streams:  # smaller chunks on one intra-op thread each
                    chunk = max(1, min(chunk, int(self.STREAM_CHUNK_PIXELS // pixels)))
            if streams:  # at least one chunk per thread
                chunk = min(chunk, -(-images.shape[0] // torch.get_num_threads()))
            if images.shape[0] <= chunk:  # one image with streams: its passes split between the threads
                return self._score_chunk(images, geometry, split_passes=parallel)
            chunks = images.split(chunk)
            if streams:
                self._inference_backbone(self._bfloat16(images.device))  # built once, before the threads
                parts = map_streams(lambda c: self._score_chunk(c, geometry), chunks)
            else:
                parts = [self._score_chunk(c, geometry) for c in chunks]
            return [torch.cat(maps) for maps in zip(*parts)]

    def _score_chunk(self, images: Tensor, geometry: QuadGeometry, split_passes: bool = False) -> list[Tensor]:
        """The image and its L-1 blurs go through the backbone as one batch (the fast
        ShuffleNetV2 path takes each blur as its down-sampled image and runs the up-sampling
        and the first convolution as one convolution of that small image); with
        ``split_passes``, the fast path's passes in contiguous groups, one per thread
        (:func:`~quadformer.tokenize.kernels.map_streams`)."""
        b, _, h, w = images.shape
        n = geometry.num_scales - 1
        x = images.float()
        if self.convert:
            x = x * self.norm_scale.to(x.device) + self.norm_shift.to(x.device)
        # Traced (export, ONNX, torch.compile): the frozen module itself; the CPU fast copy uses
        # oneDNN-only ops and out= writes. Equal up to float rounding.
        low = not is_tracing() and self._bfloat16(images.device)
        backbone = self.backbone if is_tracing() else self._inference_backbone(low)
        fast = isinstance(backbone, FastShuffleNet)
        passes: list = [x]
        size = (round(h * self.input_scale), round(w * self.input_scale))
        if self.input_scale != 1.0 and not is_tracing() and h % 2**n == 0 and w % 2**n == 0:
            # resized straight from each blur's small image (no full-size blur; equal up to rounding)
            passes = [resized(x, 2**j, size) for j in range(n + 1)]
        else:
            for j in range(1, n + 1):
                f = 2**j
                if fast and self.input_scale == 1.0 and f in backbone.UPSAMPLED and h % f == 0 and w % f == 0:
                    passes.append((blur_down(x, f), f))  # the backbone up-samples it inside its stem
                else:
                    passes.append(blur(x, j))
            if self.input_scale != 1.0:
                passes = [
                    F.interpolate(p, size=size, mode="bilinear", align_corners=False, antialias=self.input_scale < 1)
                    for p in passes
                ]
        device, dtype = module_device_dtype(self.backbone)
        passes = [
            (p[0].to(device=device, dtype=dtype), p[1]) if isinstance(p, tuple) else p.to(device=device, dtype=dtype)
            for p in passes
        ]
        if fast:
            with torch.autocast("cpu", enabled=False):  # its dtype is its own (float32 or bfloat16)
                if split_passes and len(passes) > 1:
                    k = min(len(passes), torch.get_num_threads())
                    groups = [passes[len(passes) * i // k:len(passes) * (i + 1) // k] for i in range(k)]
                    feats = torch.cat(map_streams(backbone.forward_passes, groups))
                else:
                    feats = backbone.forward_passes(passes)  # no cat of the inputs
        else:
            batch = torch.cat(passes)
            if self.channels_last or (self.channels_last is None and device.type == "cpu"):
                batch = batch.contiguous(memory_format=torch.channels_last)
            if low and self.precision == "bfloat16":
                with torch.autocast(device.type, dtype=torch.bfloat16):
                    feats = backbone(batch)
            else:
                feats = backbone(batch)
        if not isinstance(feats, Tensor) or feats.dim() != 4 or feats.shape[0] != b * (n + 1):
            shape = tuple(feats.shape) if isinstance(feats, Tensor) else type(feats).__name__
            raise RuntimeError(f"backbone must return [B, C, h, w] for {b * (n + 1)} images, got {shape}")
        feats = feats.float().to(images.device)
        ref, blurred = feats[:b], feats[b:].unflatten(0, (n, b))
        maps = []
        for j in range(1, n + 1):
            fj = blurred[j - 1]
            if self.error == "mse":
                m = (fj - ref).square().mean(dim=1)
            else:
                m = 1.0 - F.cosine_similarity(fj, ref, dim=1, eps=1e-8)
            m = to_grid(m, *geometry.grid(j))
            if self.normalize == "mean":  # per image: chunking does not change it
                m = m / m.mean(dim=(1, 2), keepdim=True).clamp_min(torch.finfo(m.dtype).tiny)
            maps.append(m)
        return maps

    def backbone_gmacs(self, height: int, width: int) -> float:
        """GMACs of one backbone pass on one image of the scorer's input size."""
        size = (round(height * self.input_scale), round(width * self.input_scale))
        if size not in self._macs:
            self._macs[size] = count_macs(self.backbone, *size)
        return self._macs[size] / 1e9

    def gmacs(self, geometry: QuadGeometry) -> float:
        """``1 + (L-1)`` backbone passes (the image and its L-1 blurs), counted with hooks over
        Conv2d/Linear at the actual input size (blur and resizing are negligible)."""
        if geometry.num_scales == 1:
            return 0.0  # a uniform grid needs no scores
        return geometry.num_scales * self.backbone_gmacs(geometry.height, geometry.width)

    def extra_repr(self) -> str:
        return (
            f"stride={self.stride}, input_scale={self.input_scale:g}, error={self.error!r}, "
            f"normalisation_conversion={self.convert}" + (f", precision={self.precision!r}"
                                                          if self.precision != "float32" else "")
            + (f", normalize={self.normalize!r}" if self.normalize != "none" else "")
        )


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """A copy of ``module`` (eval-mode semantics) in which each ``Conv2d`` directly followed by
    a ``BatchNorm2d`` inside an ``nn.Sequential`` becomes one conv with folded weights."""
    import copy

    from torch.nn.utils.fusion import fuse_conv_bn_weights

    m = copy.deepcopy(module).eval()
    for seq in list(m.modules()):
        if not isinstance(seq, nn.Sequential):
            continue
        names = list(seq._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = seq._modules[a], seq._modules[b]
            if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats):
                continue
            w, bias = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps,
                                           bn.weight, bn.bias)
            new = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                            conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode,
                            device=conv.weight.device, dtype=conv.weight.dtype)
            with torch.no_grad():
                new.weight.copy_(w)
                new.bias.copy_(bias)
            new.requires_grad_(False)
            seq._modules[a] = new
            seq._modules[b] = nn.Identity()
    return m
