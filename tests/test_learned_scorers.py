"""APT's cheap scorers, the distilled saliency scorer and the end-to-end learned scorer."""

from __future__ import annotations

import pytest
import torch

from quadformer.tokenize import QuadGeometry
from quadformer.tokenize.scorers import (
    DistilledScorer,
    EntropyScorer,
    LaplacianScorer,
    LearnedScorer,
    SaliencyNet,
    create_scorer,
    load_saliency_net,
    save_saliency_net,
)
from quadformer.tokenize.scorers.learned import decision_tables
from quadformer.utils.errors import QuadformerError

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
G = QuadGeometry(32, 32, 8, 32, 10)  # scales 8/16/32: maps 2x2 (scale 1) and 1x1 (scale 2)


def normalised(grey01: torch.Tensor) -> torch.Tensor:
    """``[B, H, W]`` grey levels in [0, 1] -> ImageNet-normalised RGB."""
    return (grey01.unsqueeze(1).expand(-1, 3, -1, -1) - MEAN) / STD


def test_entropy_counts_bits_per_patch():
    img = torch.full((1, 32, 32), 0.5)
    img[0, :8, :4] = 0.0  # top-left 16-px cell: two grey levels in its top-left 8x8 block
    img[0, :8, 4:8] = 1.0
    maps = EntropyScorer(bins=16)(normalised(img), G)
    assert [tuple(m.shape) for m in maps] == [(1, 2, 2), (1, 1, 1)]
    # 16-px cell (0, 0): 32 px at 0.0, 32 at 1.0, 192 at 0.5 -> H(1/8, 1/8, 3/4)
    p = torch.tensor([1 / 8, 1 / 8, 3 / 4])
    assert maps[0][0, 0, 0] == pytest.approx(float(-(p * p.log2()).sum()), abs=1e-5)
    assert maps[0][0, 1, 1] == 0.0  # flat cell: no information
    assert maps[1][0, 0, 0] > 0


def test_laplacian_variance_is_zero_on_ramps_and_high_on_edges():
    ramp = torch.linspace(0, 1, 32).view(1, 1, 32).expand(1, 32, 32).clone()
    maps = LaplacianScorer()(normalised(ramp), G)
    assert float(maps[0].max()) < 1e-3  # linear: zero Laplacian (but at the replicated border)
    edges = torch.zeros(1, 32, 32)
    edges[0, 16:, 16:] = (torch.arange(16).view(1, 16) + torch.arange(16).view(16, 1)) % 2  # checkerboard
    m = LaplacianScorer()(normalised(edges), G)[0]
    assert m[0, 1, 1] > 10 * m[0, 0, 0] + 1e-3


def test_cheap_scorers_registered_with_costs():
    for name in ("entropy", "laplacian"):
        s = create_scorer(name)
        assert 0 < s.gmacs(QuadGeometry(128, 128, 8, 32, 64)) < 0.001


def test_distilled_round_trip_and_frozen(tmp_path):
    torch.manual_seed(0)
    net = SaliencyNet((4, 8, 8), 8)
    path = save_saliency_net(net, tmp_path / "s.safetensors", extra={"data": "builtin:glyphs"})
    net2, info = load_saliency_net(path)
    assert info["data"] == "builtin:glyphs"
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(net(x), net2(x))
    from quadformer.models.factory import build_model

    model = build_model("quadformer_micro_patch8_128", 10, 128, 64, {"scorer": "distilled",
                                                                   "scorer_kwargs": {"weights": str(path)}})
    model.train()
    assert not model.scorer.training
    assert not any(p.requires_grad for p in model.scorer.parameters())
    assert model.gmacs() == pytest.approx(
        build_model("quadformer_micro_patch8_128", 10, 128, 64, {"scorer": "random"}).gmacs()
        + model.scorer.gmacs(model.geometry))
    x = torch.randn(2, 3, 128, 128)
    maps = model.scorer(x, model.geometry)
    assert [tuple(m.shape) for m in maps] == [(2, 8, 8), (2, 4, 4)]
    # max pooling: a coarse cell scores its most salient p_min cell
    with torch.no_grad():
        sal = model.scorer.saliency(x)
    assert torch.allclose(maps[1], torch.nn.functional.max_pool2d(sal[:, None], 4)[:, 0])


def test_distilled_refuses_other_architectures_in_one_line(tmp_path):
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"conv1.0.weight": torch.zeros(24, 3, 3, 3)}, str(other))
    with pytest.raises(QuadformerError, match="not a distilled saliency scorer") as e:
        DistilledScorer(weights=other)
    assert "\n" not in str(e.value) and "train-scorer --kind distilled" in str(e.value)
    # right metadata, wrong tensors (e.g. edited or another version)
    net = SaliencyNet((4, 8, 8), 8)
    from quadformer.tokenize.scorers.distilled import ARCH

    import json

    state = {k: v for k, v in net.state_dict().items() if not k.startswith("head")}
    save_file(state, str(tmp_path / "bad.safetensors"), metadata={"quadformer_scorer": ARCH,
                                                                 "config": json.dumps(net.config())})
    with pytest.raises(QuadformerError, match="another architecture"):
        DistilledScorer(weights=tmp_path / "bad.safetensors")
    with pytest.raises(QuadformerError, match="weights="):
        DistilledScorer()
    with pytest.raises(QuadformerError, match="not found"):
        DistilledScorer(weights=tmp_path / "missing.safetensors")


def test_decision_tables_point_at_the_scores_that_decided_each_cell():
    own, parent = decision_tables(G)
    # canonical layout: 1 root (scale 2), 4 cells of scale 1, 16 leaves; scores: root, then 4
    t = 5
    assert own.tolist() == [0, 1, 2, 3, 4] + [t] * 16
    assert parent[:5].tolist() == [t, 0, 0, 0, 0]
    leaves = parent[5:].view(4, 4)  # raster over the 4x4 leaf grid
    assert leaves.tolist() == [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]]


def test_learned_scorer_trains_with_the_model_and_keeps_outputs():
    from quadformer.models.factory import build_model

    torch.manual_seed(0)
    model = build_model("quadformer_micro_patch8_128", 10, 128, 64, {"scorer": "learned"})
    frozen = build_model("quadformer_micro_patch8_128", 10, 128, 64, {"scorer": "pixel-blur"})
    frozen.train()
    assert not frozen.scorer.training
    model.train()
    assert model.scorer.training and all(p.requires_grad for p in model.scorer.delta.parameters())
    assert not any(p.requires_grad for p in model.scorer.net.parameters())  # the starting point stays
    x, y = torch.randn(4, 3, 128, 128), torch.tensor([0, 1, 2, 3])
    train_logits = model(x)
    torch.nn.functional.cross_entropy(train_logits, y).backward()
    grads = [p.grad for p in model.scorer.delta.parameters()]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(x), train_logits.detach(), atol=1e-5)  # the gate is 1 in value
    assert model.gmacs() > frozen.gmacs()
    torch.optim.SGD(model.scorer.delta.parameters(), lr=1.0).step()  # the offsets move, the export follows
    with torch.no_grad():
        assert torch.allclose(model.scorer.saliency(x), torch.sigmoid(model.scorer.merged_net()(x)), atol=1e-6)
        assert not torch.allclose(model.scorer.saliency(x), torch.sigmoid(model.scorer.net(x)))


def test_learned_scorer_gradient_sign():
    """d(gate)/d(score): +token for the parent's split score, -token for the token's own score."""
    s = LearnedScorer(widths=(4, 4, 4), pool="mean")
    s.train()
    sal = torch.rand(1, 4, 4, requires_grad=True)  # the p_min-grid saliency the scorer would predict
    s.saliency = lambda images: sal
    x = torch.zeros(1, 3, 32, 32)
    tokens = torch.ones(1, 4, 2)
    leaves = torch.tensor([[5, 6, 9, 10]])  # the four 8-px leaves of the top-left 16-px cell
    out = s.gate(tokens, leaves, G, x)
    assert torch.equal(out, tokens)
    out.sum().backward()  # parent score = mean of sal[:2, :2]: 4 tokens x 2 dims / 4 cells each
    expect = torch.zeros(1, 4, 4)
    expect[0, :2, :2] = 2.0
    assert torch.allclose(sal.grad, expect)
    sal.grad = None
    s.gate(tokens[:, :1], torch.tensor([[1]]), G, x).sum().backward()  # a kept 16-px cell
    expect = torch.full((1, 4, 4), 2.0 / 16)  # + its parent (the root: mean of all 16)
    expect[0, :2, :2] -= 2.0 / 4  # - its own score
    assert torch.allclose(sal.grad, expect)
    s.eval()
    assert s.gate(tokens, leaves, G, x) is tokens


@pytest.fixture(scope="module")
def tiny_distilled(tmp_path_factory):
    """The whole distillation recipe at 32 px: teacher (resnet10t, one short epoch on glyphs,
    then one on dice from those weights), Grad-CAM targets, student, weights file."""
    from quadformer.train.saliency import distill

    out = tmp_path_factory.mktemp("distil")
    summary = distill("builtin:dice", out, teacher_model="resnet10t", teacher_epochs=1, train_size=64, image_size=32,
                      pretrain="builtin:glyphs", pretrain_epochs=1, pretrain_size=32, p_min=4, student_epochs=2,
                      widths=(4, 8), context=1, teacher_overrides=["data.batch_size=32", "train.progress=false",
                                                                   "data.val_size=32"])
    return out, summary


@pytest.mark.slow  # ~10 s on a quiet machine: a teacher is trained
def test_distill_recipe_writes_a_scorer_the_quadformer_loads(tiny_distilled):
    out, summary = tiny_distilled
    assert summary["train_images"] == 64 and summary["saliency"] == "gradcam"
    assert summary["teacher_pretrain"] == "builtin:glyphs"
    import yaml

    # the teacher was fine-tuned from the glyphs-pretrained one (its head replaced: 10 -> 6 classes)
    cfg = yaml.safe_load((out / "teacher" / "config.yaml").read_text())
    assert cfg["model"]["init_checkpoint"] == str(out / "teacher_pretrain" / "last.pt")
    assert cfg["optim"]["lr"] == 1e-3 and cfg["data"]["train"] == "builtin:dice"
    from quadformer.models.factory import build_model

    model = build_model("quadformer_micro_patch4_32", 6, 32, 28, {"scorer": "distilled",
                                                                "scorer_kwargs": {"weights": summary["weights"]}})
    assert model.scorer.info["data"] == "builtin:dice" and model.scorer.net.context == 1
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 6)


@pytest.mark.slow
def test_distill_refuses_a_teacher_of_another_label_space(tiny_distilled):
    from quadformer.train.saliency import distill

    out, _ = tiny_distilled
    with pytest.raises(QuadformerError, match="predicts 6 classes but builtin:glyphs has 10") as e:
        distill("builtin:glyphs", out / "glyphs", teacher=str(out / "teacher"), train_size=32, image_size=32,
                p_min=4)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("kwargs, expect", [
    ({"image_size": 16}, "16x16 is not a multiple of p_max=32"),  # images smaller than p_max
    ({"image_size": 64, "p_max": 48}, "p_max=48"),
    ({"p_min": 3}, "--p-min 3"),
])
def test_distill_judges_sizes_before_training(tmp_path, kwargs, expect):
    from quadformer.train.saliency import distill

    with pytest.raises(QuadformerError, match=expect) as e:
        distill("builtin:glyphs", tmp_path / "x", train_size=8, **kwargs)
    assert "\n" not in str(e.value) and not (tmp_path / "x").exists()


def test_saliency_net_context_layers_widen_the_view(tmp_path):
    """Two dilated layers at the last stage: the receptive field spans the image, the
    architecture round-trips through the file, and files without ``context`` load as before."""
    torch.manual_seed(0)
    net = SaliencyNet((4, 8, 8), 8, context=2)
    net2, _ = load_saliency_net(save_saliency_net(net, tmp_path / "c.safetensors"))
    assert net2.context == 2 and net2.config() == net.config()
    x = torch.zeros(1, 3, 128, 128, requires_grad=True)
    net(x)[0, 0, 0].backward()  # the top-left cell sees pixels 60 px away (39 px field without context)
    assert x.grad[0, :, 60:].abs().sum() > 0
    x.grad = None
    SaliencyNet((4, 8, 8), 8)(x)[0, 0, 0].backward()
    assert x.grad[0, :, 40:].abs().sum() == 0 and SaliencyNet((4, 8, 8), 8).config() == {"widths": [4, 8, 8],
                                                                                          "stride": 8}


@pytest.mark.parametrize("loss", ["bce", "bce+list"])
def test_train_student_learns_where_the_target_is(loss):
    """A bright square on noise, its cell the target: the student ranks that cell first on
    new images, with either loss."""
    from quadformer.train.saliency import train_student

    g = torch.Generator().manual_seed(0)

    def make(n):
        x, t = torch.randn(n, 3, 16, 16, generator=g) * 0.3, torch.zeros(n, 4, 4)
        cells = torch.randint(0, 16, (n,), generator=g)
        for i, c in enumerate(cells.tolist()):
            r, q = divmod(c, 4)
            x[i, :, 4 * r:4 * r + 4, 4 * q:4 * q + 4] += 2.0
            t[i, r, q] = 1.0
        return x, t, cells

    x, t, _ = make(64)
    net, final = train_student(x, t, 4, (8, 16), epochs=20, lr=1e-2, batch_size=16, loss=loss)
    xt, _, cells = make(32)
    with torch.no_grad():
        top = net(xt).flatten(1).argmax(1)
    assert (top == cells).float().mean() >= 0.9 and final == final
    with pytest.raises(QuadformerError, match="--student-loss 'mse'"):
        train_student(x, t, 4, (8, 16), epochs=1, loss="mse")


def test_context_layers_survive_the_end_to_end_scorer_and_its_export(tmp_path):
    torch.manual_seed(0)
    net = SaliencyNet((4, 8, 8), 8, context=1)
    scorer = LearnedScorer(weights=save_saliency_net(net, tmp_path / "c.safetensors"))
    merged = scorer.merged_net()
    x = torch.randn(1, 3, 64, 64)
    assert merged.context == 1 and torch.allclose(merged(x), net(x))
    assert DistilledScorer("random", widths=(4, 8, 8), context=2).net.context == 2
