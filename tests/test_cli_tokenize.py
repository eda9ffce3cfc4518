"""`quadformer tokenize`: outputs and one-line errors (run in-process through main())."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from quadformer.cli.main import main
from quadformer.tokenize import QuadGeometry
from quadformer.tokenize.quadtree import cell_tables

from .conftest import REFERENCE_DATA


def test_json_and_png(tmp_path, photo_paths):
    out_json, out_png = tmp_path / "b.json", tmp_path / "m.png"
    rc = main(["tokenize", *map(str, photo_paths), "--size", "256", "--min-patch", "16", "--max-patch", "64",
               "--budget", "100", "--json", str(out_json), "--png", str(out_png)])
    assert rc == 0
    records = json.loads(out_json.read_text())
    assert len(records) == len(photo_paths)
    for r, p in zip(records, photo_paths):
        assert r["image"] == str(p) and r["size"] == [256, 256] and r["budget"] == 100
        boxes = np.array(r["boxes"])
        assert boxes.shape == (100, 4)
        area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).sum()
        assert area == 256 * 256
        sides = boxes[:, 2] - boxes[:, 0]
        assert list(sides) == sorted(sides, reverse=True)
    from PIL import Image

    with Image.open(out_png) as im:
        assert im.width > 2 * 256 and im.height >= 256 * len(photo_paths)


def test_illegal_budget_one_line(capsys, photo_paths):
    rc = main(["tokenize", str(photo_paths[0]), "--size", "384", "--budget", "100"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "nearest: 99, 102" in err and "Traceback" not in err


def test_corrupt_image_names_path(tmp_path, capsys):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    rc = main(["tokenize", str(bad)])
    err = capsys.readouterr().err
    assert rc == 2 and str(bad) in err and err.count("\n") == 1


def test_precomputed_oracle_maps(tmp_path, photo_paths):
    npz = REFERENCE_DATA / "oracle_importance_maps" / "oracle_importance_maps.npz"
    if not npz.exists():
        npz = tmp_path / "maps.npz"
        np.savez(npz, **{p.stem: np.random.rand(16, 16).astype(np.float32) for p in photo_paths})
    out = tmp_path / "b.json"
    rc = main(["tokenize", *map(str, photo_paths), "--scorer", "precomputed", "--saliency", str(npz),
               "--budget", "64", "--json", str(out)])
    assert rc == 0
    rec = json.loads(out.read_text())[0]
    # the first split goes to the root containing the hottest oracle cell
    with np.load(npz) as z:
        m = torch.from_numpy(z[photo_paths[0].stem])
    s2 = torch.nn.functional.avg_pool2d(m[None, None], 4)[0, 0]
    r, c = divmod(int(s2.argmax()), 4)
    boxes = [tuple(b) for b in rec["boxes"]]
    assert (c * 64, r * 64, c * 64 + 64, r * 64 + 64) not in boxes  # that root was split
    g = QuadGeometry(256, 256, 16, 64, 64)
    allowed = {tuple(b) for b in cell_tables(g).boxes.tolist()}
    assert set(boxes) <= allowed


def test_saliency_without_precomputed_is_an_error(capsys, photo_paths, tmp_path):
    np.save(tmp_path / "m.npy", np.zeros((16, 16), np.float32))
    rc = main(["tokenize", str(photo_paths[0]), "--saliency", str(tmp_path / "m.npy")])
    assert rc == 2 and "--scorer precomputed" in capsys.readouterr().err


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "tokenize" in capsys.readouterr().out


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGBA", "CMYK", "I;16", "I", "F", "RGB"])
def test_every_mode_and_depth_tokenizes(tmp_path, mode):
    """Every Pillow mode tokenizes; a 16-bit or float image keeps its contrast (not clipped to
    white as ``convert("RGB")`` would)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (48, 64)).astype(np.uint8)
    if mode == "I;16":
        im = Image.fromarray(grey.astype(np.uint16) * 257)  # full 16-bit range
        path = tmp_path / "img.png"
    elif mode == "I":
        im = Image.fromarray(grey.astype(np.int32) * 257)
        path = tmp_path / "img.tif"
    elif mode == "F":
        im = Image.fromarray(grey.astype(np.float32) / 255.0)
        path = tmp_path / "img.tif"
    else:
        im = Image.fromarray(np.stack([grey] * 3, -1)).convert(mode)
        path = tmp_path / ("img.jpg" if mode == "CMYK" else "img.tif" if mode == "1" else "img.png")
    im.save(path)
    out = tmp_path / "b.json"
    assert main(["tokenize", str(path), "--size", "64", "--min-patch", "8", "--max-patch", "32", "--budget", "10",
                 "--json", str(out)]) == 0
    assert len(json.loads(out.read_text())[0]["boxes"]) == 10
    if mode in ("I;16", "I", "F"):
        from quadformer.utils.images import load_rgb

        a = np.asarray(load_rgb(path))[..., 0].astype(int)
        assert (a == 255).mean() < 0.05 and abs(a - grey).max() <= 1


def test_scorer_kwargs_reach_the_scorer(tmp_path, photo_paths, monkeypatch):
    """--scorer-kwargs values are YAML scalars passed to the scorer's constructor."""
    import quadformer.cli.tokenize_cmd as cmd

    built = []
    real = cmd.build_scorer
    monkeypatch.setattr(cmd, "build_scorer", lambda name, **kw: built.append((name, kw)) or real(name, **kw))
    out = tmp_path / "b.json"
    rc = main(["tokenize", str(photo_paths[0]), "--scorer", "feature", "--scorer-weights", "random",
               "--scorer-kwargs", "tap_stride=8", "input_scale=0.5", "normalize=mean", "--json", str(out)])
    assert rc == 0
    assert built == [("feature", {"weights": "random", "tap_stride": 8, "input_scale": 0.5, "normalize": "mean"})]
    assert np.array(json.loads(out.read_text())[0]["boxes"]).shape == (100, 4)


@pytest.mark.parametrize("scorer", ["distilled", "laplacian", "entropy"])
def test_label_free_scorers(scorer, photo_paths, capsys):
    extra = ["--scorer-weights", "random", "--scorer-kwargs", "context=2"] if scorer == "distilled" else []
    assert main(["tokenize", str(photo_paths[0]), "--scorer", scorer, *extra]) == 0
    assert "100 patches" in capsys.readouterr().out


@pytest.mark.parametrize("args,names", [
    (["--scorer", "feature", "--scorer-kwargs", "tapstride=8"], "'tapstride'"),
    (["--scorer", "feature", "--scorer-kwargs", "tap_stride"], "KEY=VALUE"),
    (["--scorer", "feature", "--scorer-weights", "random", "--scorer-kwargs", "tap_stride=[1"], "'[1'"),
    (["--scorer", "laplacian", "--scorer-weights", "w.safetensors"], "--scorer-weights"),
])
def test_bad_scorer_options_one_line(args, names, photo_paths, capsys):
    assert main(["tokenize", str(photo_paths[0]), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and names in err and "Traceback" not in err
