"""Tests for the offline diversity / transfer suite (quadformer.data.procedural)."""

from __future__ import annotations

import hashlib
import logging
import shutil

import numpy as np
import pytest
import torch

from quadformer.utils.errors import QuadformerError
from quadformer.data import IMAGENET_MEAN, IMAGENET_STD, BuiltinDataset, build_dataset
from quadformer.data import procedural as S
from quadformer.data.procedural import SUITE, SUITE_TASKS, build_suite_dataset
from quadformer.data.procedural import photos
from quadformer.data.procedural.draw import rgb_hue

TASKS = list(SUITE_TASKS)
N = 120  # small sets keep the file fast


def _hashes(images: np.ndarray) -> set[str]:
    return {hashlib.sha1(np.ascontiguousarray(im).tobytes()).hexdigest() for im in images}


def test_suite_lists_registered_tasks():
    assert SUITE["upstream"] == "shapes-textures"
    assert {"sk-digits", "sk-patches", "hue"} <= set(SUITE["single_label"])
    assert {"scenes", "scenes-hard"} <= set(SUITE["multi_label"])
    for name in [SUITE["upstream"], *SUITE["single_label"], *SUITE["multi_label"]]:
        cls = SUITE_TASKS[name]
        assert cls.task == name
        assert cls.multilabel == (name in SUITE["multi_label"])
    assert SUITE_TASKS["shapes-textures"].upstream
    assert not any(SUITE_TASKS[n].upstream for n in SUITE["single_label"] + SUITE["multi_label"])


def test_build_dataset_dispatch_keeps_old_builtin_names():
    ds = build_dataset("builtin:shapes-textures", "val", 32, size=10, seed=3)
    assert isinstance(ds, S.ShapesTexturesDataset) and len(ds) == 10 and ds.seed == 3
    x, y = ds[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and isinstance(y, int)
    raw = build_dataset("builtin:scenes", "test", 24, size=5, output="uint8")
    assert raw[0][0].dtype == torch.uint8 and raw[0][0].shape == (3, 24, 24)
    old = build_dataset("builtin:glyphs", "val", 32, size=2)
    assert isinstance(old, BuiltinDataset)
    with pytest.raises(ValueError, match="unknown built-in task 'nope'.*shapes-textures"):
        build_dataset("builtin:nope", "val", 32)
    with pytest.raises(ValueError, match="unknown suite task"):
        build_suite_dataset("nope")


@pytest.mark.parametrize("task", TASKS)
def test_determinism_shapes_and_normalisation(task):
    a = build_suite_dataset(task, "train", 32, size=N, seed=0)
    b = build_suite_dataset(task, "train", 32, size=N, seed=0)
    c = build_suite_dataset(task, "train", 32, size=N, seed=1)
    assert a.images.shape == (N, 32, 32, 3) and a.images.dtype == np.uint8
    assert not a.images.flags.writeable
    assert np.array_equal(a.images, b.images) and np.array_equal(a.targets, b.targets)
    assert not np.array_equal(a.images, c.images)
    assert len(a) == N and a.num_classes == len(a.class_names) == len(set(a.class_names))
    if a.multilabel:
        assert a.targets.shape == (N, a.num_classes) and a.targets.dtype == np.float32
        assert set(np.unique(a.targets)) <= {0.0, 1.0}
    else:
        assert a.targets.shape == (N,) and a.targets.dtype == np.int64
        assert 0 <= a.targets.min() and a.targets.max() < a.num_classes
    # items: normalised float by default, the raw array with output="uint8"
    x, y = a[7]
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    ref = (torch.from_numpy(a.images[7].copy()).permute(2, 0, 1).float() / 255 - mean) / std
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert torch.allclose(x, ref, atol=1e-5)
    if a.multilabel:
        assert torch.equal(y, torch.from_numpy(a.targets[7].copy()))
    else:
        assert y == int(a.targets[7])
    u = build_suite_dataset(task, "train", 32, size=N, output="uint8")
    assert torch.equal(u[7][0], torch.from_numpy(a.images[7].copy()).permute(2, 0, 1))
    xs, ys = a.tensors()
    assert xs.shape == (N, 3, 32, 32) and torch.allclose(xs[7], ref, atol=1e-5)
    assert torch.equal(a.tensors("uint8")[0][7], u[7][0])
    assert a[-1][0].shape == (3, 32, 32)
    with pytest.raises(IndexError):
        a[N]


@pytest.mark.parametrize("task", TASKS)
def test_prefix_is_independent_of_size_and_other_resolutions(task):
    small = build_suite_dataset(task, "test", 20, size=30)
    big = build_suite_dataset(task, "test", 20, size=S.BLOCK + 10)
    assert np.array_equal(big.images[:30], small.images)
    assert np.array_equal(big.targets[:30], small.targets)
    assert build_suite_dataset(task, "val" if task not in ("sk-digits", "sk-digits-hard") else "test", 16,
                               size=4).images.shape == (4, 16, 16, 3)


@pytest.mark.parametrize("task", ["shapes-textures", "hue", "scenes", "scenes-hard"])
def test_procedural_splits_are_disjoint(task):
    splits = {s: build_suite_dataset(task, s, 32, size=N) for s in ("train", "val", "test")}
    hs = {s: _hashes(d.images) for s, d in splits.items()}
    assert not hs["train"] & hs["val"] and not hs["train"] & hs["test"] and not hs["val"] & hs["test"]


def test_bad_arguments():
    with pytest.raises(ValueError, match="at least 16"):
        build_suite_dataset("hue", "train", 15)
    with pytest.raises(ValueError, match="square"):
        build_suite_dataset("hue", "train", (32, 48))
    with pytest.raises(ValueError, match="split"):
        build_suite_dataset("hue", "dev", 32)
    with pytest.raises(ValueError, match="output"):
        build_suite_dataset("hue", "train", 32, size=2, output="bgr")
    with pytest.raises(ValueError, match="size"):
        build_suite_dataset("hue", "train", 32, size=-1)


def test_default_sizes():
    assert S.ShapesTexturesDataset.default_sizes == {"train": 6000, "val": 1000, "test": 1000}
    assert len(build_suite_dataset("sk-digits", "train", 16)) == 1000
    assert len(build_suite_dataset("sk-digits", "test", 16)) == 797
    p = build_suite_dataset("sk-patches", "test", 16)
    assert len(p) == 40 * p.num_classes


def test_shapes_textures_labels_balanced_and_composed():
    ds = build_suite_dataset("shapes-textures", "train", 32, size=2 * S.BLOCK)
    assert ds.num_classes == 40 and ds.upstream and not ds.multilabel
    assert np.all(ds.class_counts() == 2 * S.BLOCK // 40)
    assert ds.class_names[0] == f"{S.SHAPES[0]}-{S.TEXTURES[0]}"
    assert ds.class_names[13] == f"{S.SHAPES[2]}-{S.TEXTURES[3]}"
    assert len(S.SHAPES) == 8 and len(S.TEXTURES) == 5
    # nuisances: the foreground colour / position vary within a class
    cls0 = ds.images[ds.targets == 0].astype(np.float32)
    assert cls0.std(0).mean() > 20


def test_hue_labels_follow_the_foreground_hue():
    ds = build_suite_dataset("hue", "train", 32, size=S.BLOCK)
    assert ds.num_classes == 6 and np.all(ds.class_counts() == S.BLOCK // 6)
    img = ds.images.astype(np.float64) / 255
    mx, mn = img.max(-1), img.min(-1)
    sat = (mx - mn) / np.maximum(mx, 1e-6)
    sext = np.floor(rgb_hue(img) * 6).astype(int) % 6
    strong = (sat > 0.55) & (mx > 0.5)
    hist = np.stack([((sext == k) & strong).mean((1, 2)) for k in range(6)], 1)  # [N, 6]
    acc = (hist.argmax(1) == ds.targets).mean()
    assert acc > 0.8, acc


@pytest.mark.parametrize("task, grid, nshape", [("scenes", 2, 4), ("scenes-hard", 3, 6)])
def test_scene_targets_consistent(task, grid, nshape):
    ds = build_suite_dataset(task, "train", 32, size=S.BLOCK)
    assert ds.multilabel and ds.num_classes == 2 * nshape
    if task == "scenes-hard":
        assert ds.num_classes >= 12
    shapes, colours = ds.targets[:, :nshape], ds.targets[:, nshape:]
    assert np.all(shapes.sum(1) >= 1) and np.all(colours.sum(1) >= 1)  # at least one object
    assert np.all(shapes.sum(1) <= grid * grid) and np.all(colours.sum(1) <= grid * grid)
    # every label occurs and none is always on
    freq = ds.targets.mean(0)
    assert np.all(freq > 0.1) and np.all(freq < 0.9)
    assert ds.class_counts().shape == (ds.num_classes,)
    # images with more labels have more coloured (saturated) pixels
    img = ds.images.astype(np.float64) / 255
    sat = ((img.max(-1) - img.min(-1)) > 0.4).mean((1, 2))
    nlab = ds.targets.sum(1)
    assert sat[nlab >= np.median(nlab) + 1].mean() > sat[nlab <= 2].mean()


def test_scene_colour_labels_match_pixels():
    ds = build_suite_dataset("scenes", "test", 32, size=S.BLOCK)
    img = ds.images.astype(np.float64) / 255
    mx, mn = img.max(-1), img.min(-1)
    strong = ((mx - mn) / np.maximum(mx, 1e-6) > 0.6) & (mx > 0.55)
    hue = rgb_hue(img)
    centres = np.array([h for _, h in S.ScenesDataset.FAMILIES])
    d = np.abs((hue[..., None] - centres + 0.5) % 1 - 0.5)  # circular distance to each centre
    fam = d.argmin(-1)
    counts = np.stack([((fam == k) & strong & (d.min(-1) < 0.06)).sum((1, 2)) for k in range(4)], 1)
    present = counts >= 6
    agree = (present == (ds.targets[:, 4:] > 0)).mean()
    assert agree > 0.95, agree


def test_sk_digits_split_is_fixed_and_disjoint():
    tr = build_suite_dataset("sk-digits", "train", 16)
    te = build_suite_dataset("sk-digits", "test", 16)
    assert len(tr) == 1000 and len(te) == 797
    assert not set(tr.source_indices) & set(te.source_indices)
    assert len(set(tr.source_indices) | set(te.source_indices)) == 1797
    # the split does not depend on the nuisance seed
    tr2 = build_suite_dataset("sk-digits", "train", 16, seed=5)
    assert np.array_equal(tr.source_indices, tr2.source_indices)
    assert np.array_equal(tr.targets, tr2.targets) and not np.array_equal(tr.images, tr2.images)
    from sklearn.datasets import load_digits

    assert np.array_equal(tr.targets, load_digits().target[tr.source_indices])
    assert np.all(np.bincount(tr.targets, minlength=10) > 70)
    # size subsamples the split (a prefix of its shuffled order)
    sub = build_suite_dataset("sk-digits", "train", 16, size=50)
    assert np.array_equal(sub.source_indices, tr.source_indices[:50])
    with pytest.raises(ValueError, match="797"):
        build_suite_dataset("sk-digits", "test", 16, size=800)
    # no val by default; val_size carves a disjoint val from the 1000 train digits
    with pytest.raises(ValueError, match="val_size"):
        build_suite_dataset("sk-digits", "val", 16)
    tr3 = build_suite_dataset("sk-digits", "train", 16, val_size=200)
    va3 = build_suite_dataset("sk-digits", "val", 16, val_size=200)
    assert len(tr3) == 800 and len(va3) == 200
    assert set(tr3.source_indices) | set(va3.source_indices) == set(tr.source_indices)
    assert not set(tr3.source_indices) & set(va3.source_indices)
    hard = build_suite_dataset("sk-digits-hard", "test", 16)
    assert np.array_equal(hard.source_indices, te.source_indices)
    assert hard.images.astype(float).std() > 0


def test_sk_patches_regions_and_labels():
    tr = build_suite_dataset("sk-patches", "train", 24)
    va = build_suite_dataset("sk-patches", "val", 24)
    te = build_suite_dataset("sk-patches", "test", 24)
    C = tr.num_classes
    assert C >= 10 and tr.class_names == te.class_names
    assert np.all(tr.class_counts() == 80) and np.all(va.class_counts() == 20) and np.all(te.class_counts() == 40)
    W = tr.source_shapes[:, 1]
    H = tr.source_shapes[:, 0]
    for ds in (tr, va):
        x1 = ds.crop_boxes[:, 2]
        assert np.all(x1 <= 0.65 * W[ds.targets] + 1e-6)
    x0 = te.crop_boxes[:, 0]
    assert np.all(x0 >= 0.65 * W[te.targets] - 1e-6)
    assert np.all(te.crop_boxes[:, 2] <= W[te.targets] + 1e-6)
    side = tr.crop_boxes[:, 2] - tr.crop_boxes[:, 0]
    assert np.allclose(side, tr.crop_boxes[:, 3] - tr.crop_boxes[:, 1])
    assert np.all(side <= 0.4 * H[tr.targets] + 1e-6)
    assert np.all(tr.crop_boxes[:, 3] <= H[tr.targets] + 1e-6)
    # a balanced prefix
    sub = build_suite_dataset("sk-patches", "train", 24, size=2 * C)
    assert np.all(sub.class_counts() == 2)


def test_sk_patches_skips_missing_photos(tmp_path, monkeypatch, caplog):
    import skimage.data as skd
    import os

    src = os.path.dirname(skd.__file__)
    for fn in ("camera.png", "coins.png", "moon.png"):
        shutil.copy(os.path.join(src, fn), tmp_path / fn)
    monkeypatch.setattr(photos, "skimage_dirs", lambda: [str(tmp_path)])
    photos.load_named_photos.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="quadformer.data.procedural.photos"):
            ds = build_suite_dataset("sk-patches", "test", 16)
        assert ds.class_names == ["camera", "coins", "moon"]
        assert len(ds) == 120 and ds.images.shape[-1] == 3
        assert "astronaut" in caplog.text and "skipping" in caplog.text
        monkeypatch.setattr(photos, "skimage_dirs", lambda: [str(tmp_path / "none")])
        photos.load_named_photos.cache_clear()
        with pytest.raises(QuadformerError, match="none of the scikit-image photos"):
            build_suite_dataset("sk-patches", "test", 16)
    finally:
        photos.load_named_photos.cache_clear()


def test_dataloader_and_transform():
    ds = build_suite_dataset("scenes-hard", "val", 32, size=10, transform=lambda x: x * 0 + 1)
    loader = torch.utils.data.DataLoader(ds, batch_size=4)
    x, y = next(iter(loader))
    assert x.shape == (4, 3, 32, 32) and torch.all(x == 1)
    assert y.shape == (4, ds.num_classes) and y.dtype == torch.float32
    pil = build_suite_dataset("hue", "val", 32, size=3, output="pil")
    assert pil[0][0].size == (32, 32)
