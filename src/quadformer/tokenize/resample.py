"""Patch resampling and token gathering (see ``docs/design/mixed_resolution.md``).

Every token carries ``p_min x p_min`` pixels whatever its size: scale ``s`` patches are
cut from the image resized by ``2**-s``.

Speed (issue 13): all shapes are fixed by the geometry (no data-dependent branch or host
sync), so the same code runs under ``torch.export``, ONNX and CUDA graphs. In eager mode on
CPU, :func:`gather_pixels` works through the batch a few images at a time, so that the
multi-scale cell table of a chunk stays in cache; the selected rows are copied with one
``index_select`` and, given ``project``, embedded before the next chunk (the full-batch
pixel tensor never exists; fresh large allocations cost page faults on CPU). Inference on
CPU goes further (:func:`gather_embed`): no cell table at all, each token's pixel rows are
copied from the image or the pixel-blur scorer's pyramid and projected straight into the
output.
"""

from __future__ import annotations

from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from .geometry import QuadGeometry
from .quadtree import canonical_scales, cell_tables
from . import kernels
from .validation import is_tracing

Resample = Literal["reference", "area"]
RESAMPLE_MODES = ("reference", "area")

#: image elements per chunk of the CPU gather (2 images of 3x256x256)
CPU_CHUNK_ELEMENTS = 1 << 19


def downsample(x: Tensor, factor: int, out: Tensor | None = None) -> Tensor:
    """Bilinear down-scale ``[..., H, W]`` by an even ``factor`` (``align_corners=False``, no
    antialias): the mean of the two middle pixels of each block per axis, exactly what
    ``F.interpolate`` computes (|diff| < 1e-6), several times faster on CPU. Columns first, then
    rows (the pixel-blur scorer's values depend on that order). Eager mode reads only the two
    middle rows of each block; ``out`` (optional) receives the result. Its views are single
    ``as_strided`` calls (at batch 1 the dispatcher calls are the cost)."""
    a = factor // 2 - 1  # the two middle pixels of each block: a, a + 1
    if is_tracing():
        cols = torch.lerp(x[..., a::factor], x[..., a + 1::factor], 0.5)
        return torch.lerp(cols[..., a::factor, :], cols[..., a + 1::factor, :], 0.5)
    *lead, h, w = x.shape
    st = x.stride()
    shape = (*lead, h // factor, 2, w // factor)  # rows a, a+1 of each block; columns a (and a+1)
    strides = (*st[:-2], factor * st[-2], st[-2], factor * st[-1])
    base = x.storage_offset() + a * (st[-2] + st[-1])
    cols = torch.lerp(x.as_strided(shape, strides, base), x.as_strided(shape, strides, base + st[-1]), 0.5)
    cs, half = cols.stride(), (*lead, h // factor, w // factor)
    lo_hi = (*cs[:-3], cs[-3], cs[-1])
    return torch.lerp(cols.as_strided(half, lo_hi, cols.storage_offset()),
                      cols.as_strided(half, lo_hi, cols.storage_offset() + cs[-2]), 0.5, out=out)


def downscale(images: Tensor, factor: int, resample: Resample = "reference") -> Tensor:
    """Resize ``[B, C, H, W]`` by ``1/factor`` (``factor`` a power of two).

    ``reference``: bilinear, ``align_corners=False``, no antialias, i.e. each output pixel is
    the mean of the 2x2 source pixels at the centre of its block (the reference tokenizer's
    behaviour, so its weights transfer; the pixel-blur scorer's pyramid, so the two share it).
    ``area``: exact block mean.
    """
    if factor == 1:
        return images
    if resample == "reference":
        return downsample(images, factor)
    if resample == "area":
        return F.avg_pool2d(images, factor)
    raise ValueError(f"resample={resample!r} is not one of {RESAMPLE_MODES}")


def patchify(images: Tensor, patch: int) -> Tensor:
    """``[B, C, H, W] -> [B, (H/p)(W/p), C*p*p]`` in raster order, channel-major rows
    (the ``Conv2d`` weight / ``F.unfold`` layout)."""
    b, c, h, w = images.shape
    gh, gw = h // patch, w // patch
    x = images.reshape(b, c, gh, patch, gw, patch).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, gh * gw, c * patch * patch)


def multiscale_patches(images: Tensor, geometry: QuadGeometry, resample: Resample = "reference") -> Tensor:
    """All cells of all scales as ``[B, M, C*p_min^2]`` in canonical order."""
    return torch.cat(
        [patchify(downscale(images, 1 << s, resample), geometry.p_min) for s in canonical_scales(geometry)], 1
    )


def _fill_cells(out: Tensor, images: Tensor, geometry: QuadGeometry, resample: Resample,
                pyramid: dict[int, Tensor] | None = None, start_image: int = 0) -> None:
    """``out[:] = multiscale_patches(images)``, written scale by scale into ``out`` (no cat);
    ``pyramid[s][start_image:...]`` (the scorer's down-scaled images) replaces ``downscale``."""
    b, c = images.shape[:2]
    p = geometry.p_min
    start = 0
    for s in canonical_scales(geometry):
        gh, gw = geometry.grid(s)
        dst = out[:, start:start + gh * gw].view(b, gh, gw, c, p, p).permute(0, 3, 1, 4, 2, 5)
        src = pyramid.get(s) if pyramid and s else None
        src = downscale(images, 1 << s, resample) if src is None else src[start_image:start_image + b]
        dst.copy_(src.view(b, c, gh, p, gw, p))
        start += gh * gw


def check_images(images: Tensor, geometry: QuadGeometry) -> None:
    if images.dim() != 4 or tuple(images.shape[-2:]) != (geometry.height, geometry.width):
        raise ValueError(
            f"images of shape {tuple(images.shape)} do not match the tokenizer's "
            f"{geometry.height}x{geometry.width} geometry; resize/crop them to "
            f"[B, C, {geometry.height}, {geometry.width}] (the tokenizer never resizes)"
        )
    if not images.is_floating_point():
        raise TypeError(f"images must be a floating-point tensor, got {images.dtype}")


def gather_pixels(
    images: Tensor,
    index: Tensor,
    geometry: QuadGeometry,
    resample: Resample = "reference",
    project: Callable[[Tensor], Tensor] | None = None,
    pyramid: dict[int, Tensor] | None = None,
) -> Tensor:
    """Pixels ``[B, N, C*p_min^2]`` of the cells ``index`` ``[B, N]`` (canonical cell
    indices), or ``project(pixels)`` when ``project`` is given (e.g. the patch embedding,
    which then runs chunk by chunk on CPU and keeps its autograd graph). ``pyramid``: the
    down-scaled images by scale, when a scorer already computed them (eager CPU chunks).

    A row-gather (``index_select``) from the multi-scale cell table: one fixed-shape
    computation for every device and for export."""
    b, n = index.shape
    m = geometry.num_cells
    d = images.shape[1] * geometry.p_min**2
    chunk = max(1, CPU_CHUNK_ELEMENTS // max(1, images[0].numel())) if b else 1
    eager_cpu = images.device.type == "cpu" and not is_tracing()
    if not eager_cpu or b <= chunk or (images.requires_grad and torch.is_grad_enabled()):
        cells = multiscale_patches(images, geometry, resample).reshape(b * m, d)
        rows = index + torch.arange(b, device=index.device).view(b, 1) * m
        pixels = cells.index_select(0, rows.reshape(-1)).view(b, n, d)
        return pixels if project is None else project(pixels)
    cells = images.new_empty(chunk, m, d)
    offsets = torch.arange(chunk, device=index.device).view(chunk, 1) * m
    out = images.new_empty(b, n, d) if project is None else None
    parts = []
    for i in range(0, b, chunk):
        x = images[i:i + chunk]
        k = x.shape[0]
        _fill_cells(cells[:k], x, geometry, resample, pyramid, i)
        rows = (index[i:i + k] + offsets[:k]).view(-1)
        if out is not None:
            torch.index_select(cells.view(-1, d), 0, rows, out=out[i:i + k].view(k * n, d))
        else:
            parts.append(project(cells.view(-1, d).index_select(0, rows).view(k, n, d)))
    return out if out is not None else torch.cat(parts)


def gather_tokens(
    images: Tensor, index: Tensor, geometry: QuadGeometry, resample: Resample = "reference"
) -> tuple[Tensor, Tensor, Tensor]:
    """Pixels, boxes and meta of the cells ``index`` ``[B, N]``."""
    tables = cell_tables(geometry, images.device)
    return gather_pixels(images, index, geometry, resample), tables.boxes[index], tables.meta[index]


_SEGMENT_CACHE: dict[tuple, tuple[Tensor, Tensor, Tensor]] = {}


def _segment_tables(geometry: QuadGeometry, channels: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Per cell (canonical order), where its pixels lie in its scale's down-scaled image seen
    as rows of ``p_min`` pixels ("segments"): ``seg [M, C*p_min]`` segment indices within one
    image, ``stride [M]`` segments per image of that scale, and ``starts [L]`` the first cell
    of every scale in canonical order. Cached per (geometry, channels, device)."""
    g, p = geometry, geometry.p_min
    key = (g.height, g.width, p, g.p_max, channels, device)
    tables = _SEGMENT_CACHE.get(key)
    if tables is None:
        segs, strides, starts, start = [], [], [], 0
        for s in canonical_scales(g):
            gh, gw = g.grid(s)
            hs, per_row = g.height >> s, (g.width >> s) // p
            rows, cols = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
            base = (rows.reshape(-1) * p * per_row + cols.reshape(-1)).view(-1, 1, 1)
            seg = base + torch.arange(channels).view(1, -1, 1) * (hs * per_row) + torch.arange(p).view(1, 1, -1) * per_row
            segs.append(seg.reshape(gh * gw, channels * p))
            strides.append(torch.full((gh * gw,), channels * hs * per_row))
            starts.append(start)
            start += gh * gw
        tables = (torch.cat(segs).to(device), torch.cat(strides).to(device), torch.tensor(starts, device=device))
        _SEGMENT_CACHE[key] = tables
    return tables


def gather_embed(
    images: Tensor,
    index: Tensor,
    geometry: QuadGeometry,
    weight: Tensor,
    cell_bias: Tensor,
    prefix: Tensor | None = None,
    resample: Resample = "reference",
    pyramid: dict[int, Tensor] | None = None,
) -> Tensor:
    """``[B, P+N, D]``: ``prefix`` ``[P, D]`` rows, then per token ``cell_bias[cell] + pixels @ weight.T``
    (``weight`` ``[D, C*p_min^2]``; ``cell_bias`` ``[M, D]``, e.g. position + projection bias).

    The eager-CPU inference path of the embedding (no autograd, no tracing: callers check).
    Image by image, each token's ``C*p_min`` pixel rows are copied straight from the image or
    its down-scaled copy (``pyramid``, when the scorer made it; tokens of one scale are
    contiguous in canonical order, so one ``index_select`` per scale) into a cache-resident
    buffer, and one ``addmm`` projects them into the output, whose bias rows were gathered
    first. No multi-scale cell table is built, and the pixels, the projection, the position
    sum and the prefix concatenation never exist as full-batch tensors. Equal to
    ``gather_pixels`` + linear + bias up to float rounding of the sum order."""
    b, n = index.shape
    c = images.shape[1]
    p = geometry.p_min
    d = c * p * p
    scales = canonical_scales(geometry)
    levels = {s: (pyramid.get(s) if pyramid else None) for s in scales}
    levels = {s: (downscale(images, 1 << s, resample) if v is None else v).contiguous() for s, v in levels.items()}
    if kernels.enabled() and images.dtype == torch.float32 and cell_bias.dtype == torch.float32:
        return _gather_embed_fused(list(levels.values()), index, geometry, weight, cell_bias, prefix)
    levels = {s: v.view(-1, p) for s, v in levels.items()}
    seg, stride, starts = _segment_tables(geometry, c, images.device)
    flat = index.reshape(-1)
    image_of = torch.arange(b, device=index.device).view(b, 1, 1)
    rows = torch.addcmul(seg.index_select(0, flat).view(b, n, c * p), stride.index_select(0, flat).view(b, n, 1),
                         image_of)  # [B, N, C*p] segment rows in each token's scale
    bounds = torch.searchsorted(index.contiguous(), starts.expand(b, -1).contiguous()).tolist()  # per image, first token of each scale
    prefix_len = 0 if prefix is None else prefix.shape[0]
    out = images.new_empty(b, prefix_len + n, weight.shape[0])
    if prefix_len:
        out[:, :prefix_len] = prefix
    wt = weight.reshape(weight.shape[0], d).t()
    pixels = images.new_empty(n * c * p, p)
    for j in range(b):
        lo_hi = bounds[j] + [n]
        for k, s in enumerate(scales):
            lo, hi = lo_hi[k], lo_hi[k + 1]
            if hi > lo:
                torch.index_select(levels[s], 0, rows[j, lo:hi].reshape(-1), out=pixels[lo * c * p:hi * c * p])
        o = out[j, prefix_len:]
        torch.index_select(cell_bias, 0, index[j], out=o)
        o.addmm_(pixels.view(n, d), wt)
    return out


_CELL_CACHE: dict[tuple, tuple] = {}
CHUNK_IMAGES = 8


def _cell_origins(geometry: QuadGeometry):
    """Per canonical cell: its level (position in canonical scale order) and the row and
    column of its first pixel in that level's image (int64 arrays, cached per geometry)."""
    g = geometry
    key = (g.height, g.width, g.p_min, g.p_max)
    cells = _CELL_CACHE.get(key)
    if cells is None:
        level, ys, xs = [], [], []
        for k, s in enumerate(canonical_scales(g)):
            gh, gw = g.grid(s)
            rows, cols = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
            level.append(torch.full((gh * gw,), k))
            ys.append(rows.reshape(-1) * g.p_min)
            xs.append(cols.reshape(-1) * g.p_min)
        cells = tuple(torch.cat(t).numpy() for t in (level, ys, xs))
        _CELL_CACHE[key] = cells
    return cells


def _gather_embed_fused(levels: list[Tensor], index: Tensor, geometry: QuadGeometry, weight: Tensor,
                        cell_bias: Tensor, prefix: Tensor | None) -> Tensor:
    """:func:`gather_embed` with the gather in a fused kernel (:func:`.kernels.cpu.gather_tokens`):
    chunks of a few images gathered in parallel into a cache-resident buffer, then one
    ``addmm`` per image, as in the PyTorch path (the same values, bitwise)."""
    from .kernels.cpu import gather_tokens

    b, n = index.shape
    c = levels[0].shape[1]
    p = geometry.p_min
    d = c * p * p
    prefix_len = 0 if prefix is None else prefix.shape[0]
    out = levels[0].new_empty(b, prefix_len + n, weight.shape[0])
    if prefix_len:
        out[:, :prefix_len] = prefix
    wt = weight.reshape(weight.shape[0], d).t()
    rows = prefix_len + n  # out's rows per image; the pixel rows of the prefix stay zero
    chunk = max(1, min(b, CHUNK_IMAGES))
    pixels = levels[0].new_empty(chunk * rows, d)
    pixels.view(chunk, rows, d)[:, :prefix_len].zero_()  # the kernel writes every other row
    index = index.contiguous()
    cells = _cell_origins(geometry)
    bias = cell_bias.contiguous()
    flat = out.view(b * rows, -1)
    for i in range(0, b, chunk):
        k = min(chunk, b - i)
        gather_tokens(levels, cells, index, p, bias, out, prefix_len, pixels, i, i + k)
        flat[i * rows:(i + k) * rows].addmm_(pixels[:k * rows], wt)  # prefix rows: + 0 @ W
    return out
