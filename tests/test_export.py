"""Export (issue 11 item 4): torch.export, ONNX and torch.compile(fullgraph=True) give the
eager outputs, scorer and quadtree selection included; untraceable custom scorers fail as one line."""

from __future__ import annotations

import pytest
import timm
import torch

import quadformer.models  # noqa: F401
from quadformer.models.export import export_model, export_program
from quadformer.tokenize.scorers.base import PatchScorer
from quadformer.utils.errors import QuadformerError

TINY = {"embed_dim": 32, "depth": 1, "num_heads": 2}
CASES = {
    "pixel-blur": ("quadformer_nano_patch4_32", dict(scorer="pixel-blur", num_patches=28)),
    "feature": ("quadformer_nano_patch4_32",
                dict(scorer="feature", scorer_kwargs={"weights": "random", "tap_stride": 8}, num_patches=40)),
    "uniform": ("uniform_vit_nano_patch4_32", dict(num_patches=16)),
}


def make(case: str, **extra) -> torch.nn.Module:
    name, kw = CASES[case]
    torch.manual_seed(0)
    return timm.create_model(name, num_classes=5, **TINY, **kw, **extra).eval()


def images(b: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("case", list(CASES))
def test_torch_export_equals_eager_with_dynamic_batch(case):
    m = make(case)
    ep = export_program(m, images(2))
    for b in (2, 5):  # the batch dimension stays dynamic
        x = images(b, seed=b)
        with torch.no_grad():
            ref, got = m(x), ep.module()(x)
        assert torch.allclose(got, ref, atol=1e-5, rtol=0), (case, b, float((got - ref).abs().max()))


@pytest.mark.slow
def test_exported_selection_equals_eager_tokens():
    """The exported graph selects exactly the eager token cells (not just close logits)."""
    m = make("pixel-blur")

    class Index(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model.tokenize(x)[1]

    x = images(4)
    ep = torch.export.export(Index(m), (x,))
    with torch.no_grad():
        assert torch.equal(ep.module()(x), m.tokenize(x)[1])


def test_compile_fullgraph_traces_without_breaks():
    """fullgraph=True fails on any graph break (host sync, data-dependent branch, out= write)."""
    torch._dynamo.reset()
    m = make("pixel-blur")
    x = images(3)
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        assert torch.allclose(compiled(x), m(x), atol=1e-5, rtol=0)


class ItemScorer(PatchScorer):
    """A custom scorer with a host sync and a data-dependent branch."""

    def score(self, images, geometry, **inputs):
        scale = 2.0 if images.mean().item() > 0 else 1.0
        return [torch.rand(images.shape[0], *geometry.grid(s)) * scale for s in range(1, geometry.num_scales)]


def test_untraceable_custom_scorer_is_one_line_error(tmp_path):
    m = make("pixel-blur")
    m.scorer = ItemScorer()
    with pytest.raises(QuadformerError, match="ItemScorer does not trace") as e:
        export_model(m, tmp_path / "m.pt2", "pt2", 32)
    assert "\n" not in str(e.value)


def test_cli_export_pt2(tmp_path, capsys):
    from quadformer.cli.main import main

    out = tmp_path / "m.pt2"
    rc = main(["export", "uniform_vit_nano_patch4_32", "--format", "pt2", "--out", str(out), "--device", "cpu"])
    assert rc == 0 and out.is_file()
    assert "max |exported - eager|" in capsys.readouterr().out
    assert torch.export.load(str(out)).module()(images(3)).shape == (3, 64)  # a timm name: no head (features)


def test_cli_export_bad_format_and_folder(tmp_path, capsys):
    from quadformer.cli.main import main

    with pytest.raises(SystemExit):
        main(["export", "uniform_vit_nano_patch4_32", "--format", "tflite", "--out", str(tmp_path / "m")])
    rc = main(["export", "uniform_vit_nano_patch4_32", "--format", "pt2", "--out", str(tmp_path)])
    assert rc == 2 and "is a folder" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_onnx_equals_eager_in_onnxruntime(case, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    import onnxruntime as ort

    m = make(case)
    res = export_model(m, tmp_path / "m.onnx", "onnx", 32)
    assert res.checked_with == "onnxruntime" and res.max_abs_diff < 1e-5
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    x = images(5, seed=7)  # another batch size: dynamic
    got = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])
    with torch.no_grad():
        assert torch.allclose(got, m(x), atol=1e-5, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_compile_fullgraph_inductor_equals_eager(case):
    torch._dynamo.reset()
    m = make(case)
    x = images(3)
    with torch.no_grad():
        got = torch.compile(m, fullgraph=True)(x)
        assert torch.allclose(got, m(x), atol=1e-5, rtol=0)
