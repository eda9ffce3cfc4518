"""Export a Quadformer or uniform model: ``torch.export`` (``.pt2``) or ONNX (dynamo exporter).

The whole forward, scorer and quadtree selection included, is one fixed-shape graph: the
tokenizer has no host syncs and no data-dependent branches (``quadformer.tokenize``), and
traced code takes the functional paths of its CPU fast kernels (same values up to float
rounding). The batch dimension stays dynamic. Every export is checked against eager on a
random batch (ONNX with onnxruntime when it is installed).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ..tokenize.scorers.feature import FeatureScorer
from ..tokenize.scorers.pixel_blur import PixelBlurScorer
from ..utils.errors import QuadformerError
from ..utils.io import atomic_write

FORMATS = ("onnx", "pt2")

#: scorers whose forward is known to trace; a failure with any other scorer is reported as
#: the scorer's (one line), a failure with these is a bug and raises as it is
TRACEABLE_SCORERS: tuple[type, ...] = (PixelBlurScorer, FeatureScorer)


@dataclass
class ExportResult:
    path: Path
    format: str
    max_abs_diff: float | None  # exported vs eager on the check batch (None: not checked)
    checked_with: str  # "torch.export module", "onnxruntime" or "" (not checked)


def _scorer_guard(model: nn.Module, fmt: str, error: BaseException) -> None:
    """Raise a one-line QuadformerError when ``error`` comes from an unknown custom scorer."""
    scorer = getattr(model, "scorer", None)
    if scorer is None or type(scorer) in TRACEABLE_SCORERS:
        return
    first = str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__
    raise QuadformerError(
        f"cannot export to {fmt}: the scorer {type(scorer).__name__} does not trace ({first}); use a built-in "
        f"scorer (pixel-blur, feature) or make its score() free of .item(), data-dependent Python branches "
        f"and out= writes"
    ) from error


def _dynamic_batch(example: Tensor) -> dict:
    return {"x": {0: torch.export.Dim("batch", min=1, max=4096)}} if example.shape[0] > 1 else {}


class _Forward(nn.Module):
    """``forward(x)`` of the wrapped model, so the exported input is named ``x``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


def export_program(model: nn.Module, example: Tensor) -> torch.export.ExportedProgram:
    """``torch.export.export`` of ``model(x)`` with a dynamic batch dimension."""
    model = model.eval()
    try:
        return torch.export.export(_Forward(model).eval(), (example,), dynamic_shapes=_dynamic_batch(example))
    except Exception as e:  # noqa: BLE001 - re-raised unless the custom scorer is the cause
        _scorer_guard(model, "pt2", e)
        raise


def _save_file(src: Path, dest: Path) -> None:
    def write(f) -> None:
        with open(src, "rb") as s:
            shutil.copyfileobj(s, f)

    atomic_write(dest, write)


def export_model(model: nn.Module, out: str | os.PathLike, fmt: str, image_size: int | tuple[int, int],
                 batch: int = 2, check: bool = True, seed: int = 0) -> ExportResult:
    """Export ``model`` (eval mode) for ``[batch, 3, H, W]`` images to ``out`` as ``fmt``."""
    if fmt not in FORMATS:
        raise QuadformerError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, h, w, generator=gen).to(device)
    model = model.eval()
    out = Path(out)
    with torch.no_grad():
        ref = model(x)
    if fmt == "pt2":
        ep = export_program(model, x)
        atomic_write(out, lambda f: torch.export.save(ep, f))
        if not check:
            return ExportResult(out, fmt, None, "")
        with torch.no_grad():
            got = ep.module()(x)
        return ExportResult(out, fmt, float((got - ref).abs().max()), "torch.export module")
    with tempfile.TemporaryDirectory() as tmp:
        tmp_file = Path(tmp) / "model.onnx"
        try:
            prog = torch.onnx.export(_Forward(model).eval(), (x,), dynamo=True, dynamic_shapes=_dynamic_batch(x),
                                     input_names=["x"], output_names=["logits"], verbose=False)
        except Exception as e:  # noqa: BLE001 - re-raised unless the custom scorer is the cause
            _scorer_guard(model, "onnx", e)
            raise
        prog.save(str(tmp_file))
        _save_file(tmp_file, out)
    if not check:
        return ExportResult(out, fmt, None, "")
    try:
        import onnxruntime as ort
    except ImportError:
        return ExportResult(out, fmt, None, "")
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.cpu().numpy()})[0])
    return ExportResult(out, fmt, float((got - ref.cpu()).abs().max()), "onnxruntime")
