"""The fused CPU kernels (``quadformer.tokenize.kernels``) against the PyTorch ops they replace.

The pyramid and the gathered pixels must be bitwise those of the PyTorch path, the blur-error
scores equal up to float rounding of the sum order, the tokens the same; for any thread count,
in a forked child, and switched off by the environment variable.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys

import pytest
import torch

from quadformer.tokenize import QuadGeometry, kernels
from quadformer.tokenize import resample as rs
from quadformer.tokenize.kernels.cpu import gather_tokens
from quadformer.tokenize.quadtree import canonical_scales, select_tokens
from quadformer.tokenize.scorers.pixel_blur import PixelBlurScorer


def _torch_ops(fn, *args, **kw):
    was = kernels.enabled()
    kernels.set_enabled(False)
    try:
        return fn(*args, **kw)
    finally:
        kernels.set_enabled(was)


# (H, W, p_min, p_max, N, C): factors 2 and 4 (written-out loops), 8 (generic), non-square,
# one channel, p_min 1 (cells of the whole image)
SCORER_CASES = [(256, 256, 16, 64, 100, 3), (128, 128, 8, 32, 64, 3), (128, 96, 4, 32, 42, 1),
                (64, 128, 8, 64, 5, 3), (32, 32, 1, 16, 4, 2)]


@pytest.mark.parametrize("h,w,pmin,pmax,n,c", SCORER_CASES)
@pytest.mark.parametrize("batch", [1, 5])
def test_scorer_kernel_equals_the_torch_ops(h, w, pmin, pmax, n, c, batch):
    g = QuadGeometry(h, w, pmin, pmax, n)
    x = torch.randn(batch, c, h, w, generator=torch.Generator().manual_seed(h + w + batch))
    assert kernels.enabled()
    with torch.inference_mode():
        pyr_k, pyr_t = {}, {}
        fused = PixelBlurScorer()(x, g, pyramid=pyr_k)
        ref = _torch_ops(PixelBlurScorer(), x, g, pyramid=pyr_t)
    assert sorted(pyr_k) == sorted(pyr_t) == list(range(1, g.num_scales))
    for s in pyr_t:
        assert torch.equal(pyr_k[s], pyr_t[s])
    for a, b in zip(fused, ref):
        torch.testing.assert_close(a, b, rtol=2e-6, atol=1e-7)
    assert torch.equal(select_tokens(fused, g), select_tokens(ref, g))


def test_scorer_kernel_takes_any_dtype_and_strides():
    g = QuadGeometry(64, 64, 8, 32, 25)
    base = torch.randn(4, 3, 80, 72, generator=torch.Generator().manual_seed(3))
    x = base[::2, :, 8:72, 4:68]  # neither contiguous nor at offset 0
    ref = PixelBlurScorer()(x.contiguous(), g)
    for a, b in zip(PixelBlurScorer()(x, g), ref):
        assert torch.equal(a, b)
    pyramid = {}
    half = PixelBlurScorer()(x.bfloat16(), g, pyramid=pyramid)
    assert not pyramid  # only float32 images share their pyramid
    for a, b in zip(half, PixelBlurScorer()(x.bfloat16().float(), g)):
        assert a.dtype == torch.float32 and torch.equal(a, b)


def test_nan_images_are_refused_on_both_paths():
    from quadformer.tokenize.tokenizer import select

    g = QuadGeometry(64, 64, 8, 32, 25)
    x = torch.rand(2, 3, 64, 64)
    x[1, 0, 5, 7] = float("nan")
    for run in (select, lambda *a: _torch_ops(select, *a)):
        with pytest.raises(ValueError, match="NaN"):
            run(x, g, PixelBlurScorer())


def _gather_case(pmin: int, prefix_len: int, seed: int = 0):
    size, pmax = 16 * pmin, 4 * pmin
    g = QuadGeometry(size, size, pmin, pmax, 16 + 3 * 12)
    gen = torch.Generator().manual_seed(seed)
    b, d = 3, 24
    x = torch.randn(b, 3, size, size, generator=gen)
    index = select_tokens([torch.rand(b, *g.grid(s), generator=gen) for s in range(1, g.num_scales)], g)
    weight = torch.randn(d, 3, pmin, pmin, generator=gen)
    cell_bias = torch.randn(g.num_cells, d, generator=gen)
    prefix = torch.randn(prefix_len, d, generator=gen) if prefix_len else None
    return g, x, index, weight, cell_bias, prefix


@pytest.mark.parametrize("pmin", [16, 8, 6])  # the written-out copy, and the generic one
@pytest.mark.parametrize("prefix_len", [0, 1, 2])
def test_gathered_pixels_and_bias_rows_are_bitwise_the_torch_gather(pmin, prefix_len):
    g, x, index, weight, cell_bias, prefix = _gather_case(pmin, prefix_len)
    b, n = index.shape
    levels = [x if s == 0 else rs.downscale(x, 1 << s) for s in canonical_scales(g)]
    out = torch.full((b, prefix_len + n, cell_bias.shape[1]), -7.0)
    pixels = torch.full((b * (prefix_len + n), 3 * pmin * pmin), -7.0)
    gather_tokens(levels, rs._cell_origins(g), index, pmin, cell_bias, out, prefix_len, pixels, 0, b)
    pixels = pixels.view(b, prefix_len + n, -1)
    assert torch.equal(pixels[:, prefix_len:], rs.gather_pixels(x, index, g))
    assert torch.equal(out[:, prefix_len:], cell_bias[index])
    assert (pixels[:, :prefix_len] == -7).all() and (out[:, :prefix_len] == -7).all()  # left alone


@pytest.mark.parametrize("pmin", [16, 6])
@pytest.mark.parametrize("prefix_len", [0, 1])
def test_fused_embedding_equals_the_torch_ops(pmin, prefix_len):
    g, x, index, weight, cell_bias, prefix = _gather_case(pmin, prefix_len, seed=1)
    pyramid = {s: rs.downscale(x, 1 << s) for s in range(1, g.num_scales)}
    for pyr in (None, pyramid):
        fused = rs.gather_embed(x, index, g, weight, cell_bias, prefix, pyramid=pyr)
        ref = _torch_ops(rs.gather_embed, x, index, g, weight, cell_bias, prefix, pyramid=pyr)
        torch.testing.assert_close(fused, ref, rtol=0, atol=1e-5)
        if prefix is not None:
            assert torch.equal(fused[:, :prefix_len], prefix.expand(x.shape[0], -1, -1))


def _tokenize_all_threads():
    from quadformer.tokenize import Tokenizer

    torch.manual_seed(0)
    tok = Tokenizer(128, 8, 32, 64, embed_dim=32).eval()
    x = torch.randn(5, 3, 128, 128, generator=torch.Generator().manual_seed(2))
    outs = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            with torch.inference_mode():
                outs.append((PixelBlurScorer()(x, tok.geometry, pyramid={}), tok(x)[0]))
    finally:
        torch.set_num_threads(before)
    return outs


def test_kernels_give_the_same_values_on_any_thread_count():
    outs = _tokenize_all_threads()
    for scores, tokens in outs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(scores, outs[0][0]))
        torch.testing.assert_close(tokens, outs[0][1], rtol=0, atol=1e-6)  # the GEMM's own threads


def _blur_sums(threads: int) -> torch.Tensor:
    """The scorer kernel alone (no torch op: OpenMP itself cannot run threads in a forked child)."""
    from quadformer.tokenize.kernels.cpu import blur_error_sums

    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    smalls = [torch.empty(4, 3, 64 >> s, 64 >> s) for s in (1, 2)]
    sums = [torch.empty(4, 3, 64 // (8 << s), 64 // (8 << s)) for s in (1, 2)]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        blur_error_sums(x, 8, smalls, sums)
    finally:
        torch.set_num_threads(before)
    return torch.cat([t.reshape(-1) for t in smalls + sums])


def _child(queue):
    queue.put(_blur_sums(2).numpy().tobytes())


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
def test_kernel_threads_work_in_a_forked_child():
    parent = _blur_sums(2)  # the thread pool exists before the fork
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue,))
    proc.start()
    proc.join(60)
    if proc.exitcode is None:
        proc.kill()
    assert proc.exitcode == 0, "the forked child hung or failed"
    assert queue.get(timeout=5) == parent.numpy().tobytes()


def test_environment_switch_and_lazy_numba_import():
    code = ("import sys, quadformer, quadformer.models; from quadformer.tokenize import kernels; "
            "print(kernels.enabled(), 'numba' in sys.modules)")
    env = {**os.environ, "QUADFORMER_CPU_KERNELS": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
    env["QUADFORMER_CPU_KERNELS"] = "1"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False"]  # numba is imported on first use only


# -- map_streams: data parallel PyTorch ops, one intra-op thread per stream ---------------------

def _on_threads(n: int, fn):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        return fn()
    finally:
        torch.set_num_threads(before)


def test_map_streams_keeps_order_modes_and_the_callers_thread_count():
    import threading

    seen = []

    def fn(i):
        seen.append((threading.get_ident(), torch.get_num_threads(), torch.is_grad_enabled(),
                     torch.is_inference_mode_enabled(), torch.is_autocast_enabled("cpu")))
        return i * 10

    def run():
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            out = kernels.map_streams(fn, list(range(7)))
        after = []
        t = threading.Thread(target=lambda: after.append(torch.get_num_threads()))  # the process default
        t.start()
        t.join()
        return out, torch.get_num_threads(), after[0]

    assert _on_threads(2, run) == (list(range(0, 70, 10)), 2, 2)
    assert len({s[0] for s in seen}) == 2  # two threads
    assert {s[1:] for s in seen} == {(1, False, True, True)}  # one intra-op thread each, the caller's modes
    seen.clear()
    assert _on_threads(1, lambda: kernels.map_streams(fn, [0, 1])) == [0, 10]
    assert {s[0] for s in seen} == {threading.get_ident()}  # one thread: the plain loop


def test_map_streams_raises_a_streams_error_and_restores_the_thread_count():
    def fn(i):
        if i == 5:
            raise ValueError("item 5")
        return i

    def run():
        with pytest.raises(ValueError, match="item 5"):
            kernels.map_streams(fn, list(range(6)))  # item 5 is in the worker's share
        return torch.get_num_threads()

    assert _on_threads(2, run) == 2


def test_map_streams_nest_the_kernels_pool_without_waiting_on_itself():
    """A stream's work may run a kernel (``parallel_for``): inside a stream there is one thread,
    so the kernel runs inline instead of queueing behind the stream on the shared pool."""
    spans = []

    def fn(i):
        kernels.parallel_for(lambda a, b: spans.append((i, a, b)), 4)
        return i

    assert _on_threads(2, lambda: kernels.map_streams(fn, list(range(4)))) == [0, 1, 2, 3]
    assert sorted(spans) == [(i, 0, 4) for i in range(4)]  # one inline span per item
