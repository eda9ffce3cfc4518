"""Tests for the natural-photo tasks (quadformer.data.procedural.natural)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from quadformer.data import NaturalDataset, build_dataset, list_natural_tasks
from quadformer.data.procedural import natural as N
from quadformer.data.procedural.photos import find_photo, read_photo
from quadformer.utils.errors import QuadformerError

S = 64  # small images keep the tests fast; object sizes are in pixels


def test_names_and_factory():
    assert list_natural_tasks() == ["natural", "natural-multi", "natural-3k", "natural-multi-3k"]
    ds = build_dataset("builtin:natural", "train", S, size=5, seed=1)
    assert isinstance(ds, NaturalDataset) and len(ds) == 5 and ds.num_classes == 10
    assert not ds.multilabel and ds.class_names[0] == "hstripes"
    x, y = ds[0]
    assert x.shape == (3, S, S) and x.dtype == torch.float32 and isinstance(y, int)
    m = build_dataset("builtin:natural-multi", "test", S, size=3, output="uint8")
    x, y = m[2]
    assert x.dtype == torch.uint8 and y.shape == (10,) and y.dtype == torch.float32
    with pytest.raises(QuadformerError, match="unknown built-in task 'naturel'.*natural-3k"):
        build_dataset("builtin:naturel", "train", S)


def test_deterministic_and_seed_split_dependent():
    a = NaturalDataset("natural", "train", 6, S, seed=0)
    b = NaturalDataset("natural", "train", 6, S, seed=0)
    c = NaturalDataset("natural", "train", 6, S, seed=1)
    v = NaturalDataset("natural", "val", 6, S, seed=0)
    for i in range(6):
        assert np.array_equal(a.render(i).image, b.render(i).image)
    assert not np.array_equal(a.render(0).image, c.render(0).image)
    assert not np.array_equal(a.render(0).image, v.render(0).image)
    assert not np.array_equal(a.render(0).image, a.render(1).image)


def test_train_and_test_backgrounds_come_from_disjoint_photo_regions():
    tr = NaturalDataset("natural", "train", 200, S)
    te = NaturalDataset("natural", "test", 200, S)
    widths = {name: read_photo(find_photo(fn)).shape[1] for name, fn in N.NATURAL_PHOTOS.items()}
    seen = set()
    for i in range(200):
        name, (x0, y0, x1, y1) = tr.background_box(i)
        assert x1 <= round(widths[name] * N.SPLIT_X) + 1e-6 and x0 >= 0
        seen.add(name)
        name, (x0, y0, x1, y1) = te.background_box(i)
        assert x0 >= round(widths[name] * N.SPLIT_X) - 1e-6 and x1 <= widths[name] + 1e-6
    assert len(seen) >= 4  # several photos are used
    # the pixels themselves: the test bank at scale 1 is the right-hand region of the photo
    name, fn = next(iter(N.NATURAL_PHOTOS.items()))
    photo = read_photo(find_photo(fn)).astype(np.float32) / 255
    cut = int(round(photo.shape[1] * N.SPLIT_X))
    test_level = N._bank(True, S, S)[0][0]
    train_level = N._bank(False, S, S)[0][0]
    assert test_level.shape == photo[:, cut:].shape and train_level.shape == photo[:, :cut].shape
    assert np.abs(test_level - photo[:, cut:]).max() < 1e-6


@pytest.mark.parametrize("task", ["natural", "natural-multi"])
def test_masks_cover_exactly_the_drawn_objects(task):
    ds = NaturalDataset(task, "train", 12, S)
    for i in range(12):
        s = ds.render(i, return_mask=True)
        bg = ds.render(i, objects=False).image
        assert s.mask.shape == s.distractor_mask.shape == (S, S) and s.mask.dtype == np.float32
        assert 0 <= s.mask.min() and s.mask.max() <= 1 and s.mask.max() > 0.7  # a class object is there
        changed = np.abs(s.image.astype(int) - bg.astype(int)).max(-1) > 1
        covered = (s.mask > 0) | (s.distractor_mask > 0)
        assert not (changed & ~covered).any(), "pixels changed outside the object masks"
        assert changed[s.mask > 0.75].mean() > 0.8  # class plates are visible where the mask says
        assert s.distractor_mask.max() > 0  # every image has at least one character distractor
        assert np.array_equal(s.image, ds.render(i).image)  # masks do not change the picture


def test_single_label_targets_balanced_and_consistent():
    ds = NaturalDataset("natural", "train", 40, S, seed=2)
    ys = ds.targets
    assert sorted(ys[:10]) == list(range(10)) and sorted(ys[10:20]) == list(range(10))
    for i in range(5):
        assert ds.render(i).target == ys[i] == ds[i][1]


def test_multi_label_targets():
    ds = NaturalDataset("natural-multi", "val", 30, S)
    t = np.stack(ds.targets)
    assert t.shape == (30, 10) and t.dtype == np.float32 and set(np.unique(t)) <= {0.0, 1.0}
    assert 1 <= t.sum(1).min() and t.sum(1).max() <= 3 and len(np.unique(t.sum(1))) > 1
    assert torch.equal(ds[4][1], torch.from_numpy(t[4]))


def test_class_texture_vanishes_at_half_resolution():
    """The class lives in detail a 2x down-scale removes: on the class plates most of the
    variance is lost by 2x average pooling, and more of it than on the photo around them."""
    from scipy import ndimage

    ds = NaturalDataset("natural", "train", 10, 128)
    lost, ratio = [], []
    for i in range(10):
        s = ds.render(i, return_mask=True)
        x = s.image.astype(np.float32) / 255
        lo = x.reshape(64, 2, 64, 2, 3).mean((1, 3)).repeat(2, 0).repeat(2, 1)
        hf = ((x - lo) ** 2).sum(-1)
        inside = ndimage.binary_erosion(s.mask > 0.75, iterations=2)
        photo = ~ndimage.binary_dilation((s.mask > 0) | (s.distractor_mask > 0), iterations=2)
        var = ((x - x[inside].mean(0)) ** 2).sum(-1)
        lost.append(hf[inside].sum() / var[inside].sum())
        ratio.append(hf[inside].mean() / hf[photo].mean())
    assert np.median(lost) > 0.55 and np.median(ratio) > 1.5


def test_fixed_size_mode():
    full = NaturalDataset("natural", "train", 5, S)
    fixed = build_dataset("builtin:natural-3k", "train", S)
    assert len(fixed) == 3000 and fixed.task == "natural-3k"
    for i in range(3):
        assert np.array_equal(fixed.render(i).image, full.render(i).image)  # the first images of natural
    assert len(build_dataset("builtin:natural-3k", "test", S)) == 1000
    assert len(build_dataset("builtin:natural-3k", "train", S, size=100)) == 100
    with pytest.raises(QuadformerError, match="3000 training images.*builtin:natural"):
        build_dataset("builtin:natural-3k", "train", S, size=3001)


def test_cache_roundtrip(tmp_path):
    a = build_dataset("builtin:natural", "test", S, size=4, cache_dir=tmp_path)
    b = NaturalDataset("natural", "test", 4, S)
    assert a.cache_path is not None and a.cache_path.exists()
    for i in range(4):
        assert torch.equal(a[i][0], b[i][0]) and a[i][1] == b[i][1]


def test_bad_arguments():
    with pytest.raises(QuadformerError, match="at least 32"):
        NaturalDataset("natural", "train", 2, 16)
    with pytest.raises(QuadformerError, match="split"):
        NaturalDataset("natural", "dev", 2, S)
    with pytest.raises(QuadformerError, match="unknown natural-photo task"):
        NaturalDataset("nature", "train", 2, S)
