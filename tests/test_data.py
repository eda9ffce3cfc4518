"""Tests for quadformer.data: built-in procedural tasks, folder / CIFAR loaders, factory."""

from __future__ import annotations

import hashlib
import logging
import pickle
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from quadformer.utils.errors import QuadformerError
from quadformer.data import (
    BuiltinDataset,
    CIFARDataset,
    ImageFolderDataset,
    TaskSpec,
    build_dataset,
    generate,
    get_task,
    list_tasks,
    register_task,
    sample_objects,
)


def _digest(a: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(a).tobytes()).hexdigest()


# --------------------------------------------------------------------------- task registry


def test_registry_has_upstream_multilabel_and_transfer_tasks():
    names = list_tasks()
    assert {"glyphs", "glyphs-multi", "digits", "dice", "lines", "lines-multi", "count"} <= set(names)
    up = get_task("glyphs")
    assert up.num_classes == 10 and not up.multilabel and up.upstream
    assert get_task("glyphs-multi").multilabel and get_task("glyphs-multi").num_classes == 10
    assert get_task("count").class_names == ("1", "2", "3", "4", "5")
    transfer = [get_task(n) for n in names if not get_task(n).upstream]
    assert len(transfer) >= 3
    for spec in transfer:  # transfer content is disjoint from the upstream objects
        assert spec.family != up.family
        assert not set(spec.objects) & set(up.objects)
    offsets = [get_task(n).seed_offset for n in names]
    assert len(set(offsets)) == len(offsets)
    assert get_task(up) is up


def test_registry_errors():
    with pytest.raises(ValueError, match="unknown built-in task 'nope'.*glyphs"):
        get_task("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_task(get_task("glyphs"))
    with pytest.raises(ValueError, match="unknown object family"):
        TaskSpec("x", "no-such-family", "clutter")
    with pytest.raises(ValueError, match="unknown scene"):
        TaskSpec("x", "microtex", "no-such-scene")


# --------------------------------------------------------------------------- generation


def test_generate_is_deterministic_and_index_dependent():
    a = generate("glyphs", 3, "train", seed=0)
    b = generate("glyphs", 3, "train", seed=0)
    assert np.array_equal(a.image, b.image) and a.target == b.target
    others = [generate("glyphs", i, "train", seed=0).image for i in range(4, 8)]
    assert all(not np.array_equal(a.image, o) for o in others)
    assert not np.array_equal(a.image, generate("glyphs", 3, "train", seed=1).image)
    # the label stream is consistent with the rendered sample
    assert sample_objects("glyphs", 3, "train", 0)[1] == a.target


@pytest.mark.parametrize("task", ["glyphs", "glyphs-multi", "digits", "dice", "lines", "lines-multi", "count"])
def test_every_task_renders(task):
    s = generate(task, 0, "val", image_size=(64, 96), return_mask=True)
    assert s.image.shape == (64, 96, 3) and s.image.dtype == np.uint8
    assert s.mask.shape == (64, 96) and s.mask.max() > 0.9  # objects are drawn
    assert s.image.std() > 5  # not a flat picture


def test_splits_are_disjoint():
    def hashes(split):
        return {_digest(generate("glyphs", i, split, image_size=32).image) for i in range(60)}

    tr, va, te = hashes("train"), hashes("val"), hashes("test")
    assert len(tr) == 60
    assert not tr & va and not tr & te and not va & te


def test_tasks_with_same_index_differ():
    a = generate("glyphs", 0).image
    b = generate("glyphs-multi", 0).image
    assert not np.array_equal(a, b)


@pytest.mark.parametrize("size", [32, 33, (40, 72), (128, 96), 128])
def test_shapes_square_and_non_square(size):
    ds = BuiltinDataset("glyphs", "train", size=3, image_size=size)
    h, w = (size, size) if isinstance(size, int) else size
    x, y = ds[0]
    assert x.shape == (3, h, w) and x.dtype == torch.float32
    assert isinstance(y, int) and 0 <= y < 10
    assert ds.image_size == (h, w)


def test_rejects_small_images_and_bad_args():
    with pytest.raises(ValueError, match="at least 32x32"):
        BuiltinDataset("glyphs", size=1, image_size=16)
    with pytest.raises(ValueError, match="split must be one of"):
        BuiltinDataset("glyphs", "training", size=1)
    with pytest.raises(ValueError, match="output must be one of"):
        BuiltinDataset("glyphs", size=1, output="jpeg")
    ds = BuiltinDataset("glyphs", size=2)
    with pytest.raises(IndexError):
        ds[2]


def test_output_modes_agree():
    kw = dict(task="digits", split="val", size=2, image_size=48)
    raw = BuiltinDataset(**kw, output="numpy")[1][0]
    u8 = BuiltinDataset(**kw, output="uint8")[1][0]
    fl = BuiltinDataset(**kw, output="float")[1][0]
    nz = BuiltinDataset(**kw)[1][0]
    pil = BuiltinDataset(**kw, output="pil")[1][0]
    assert raw.shape == (48, 48, 3) and raw.dtype == np.uint8
    assert u8.dtype == torch.uint8 and torch.equal(u8, torch.from_numpy(raw).permute(2, 0, 1))
    assert torch.allclose(fl, u8.float() / 255)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    assert torch.allclose(nz, (fl - mean) / std, atol=1e-5)
    assert isinstance(pil, Image.Image) and np.array_equal(np.asarray(pil), raw)
    tf = BuiltinDataset(**kw, output="float", transform=lambda t: t * 2)[1][0]
    assert torch.allclose(tf, fl * 2)


def test_multilabel_targets():
    ds = BuiltinDataset("glyphs-multi", "train", size=200, image_size=32)
    assert ds.multilabel and ds.num_classes == 10 and len(ds.class_names) == 10
    x, y = ds[5]
    assert y.dtype == torch.float32 and y.shape == (10,)
    assert set(y.unique().tolist()) <= {0.0, 1.0}
    t = np.stack(ds.targets)
    k = t.sum(1)
    assert k.min() >= 1 and k.max() <= 3 and len(np.unique(k)) == 3
    freq = t.mean(0)
    assert freq.min() > 0.5 * freq.mean()  # every class appears, roughly evenly
    # the target matches the classes actually drawn
    classes, target = sample_objects("glyphs-multi", 5, "train", 0)
    assert np.flatnonzero(target).tolist() == classes == np.flatnonzero(y.numpy()).tolist()


def test_class_balance_single_label():
    for task, c in [("glyphs", 10), ("count", 5), ("dice", 6)]:
        ds = BuiltinDataset(task, "train", size=10 * c + 3, image_size=32)
        counts = np.bincount(ds.targets, minlength=c)
        assert counts.min() >= 10 and counts.max() <= 11, (task, counts)
        assert ds.targets[: 3 * c] != sorted(ds.targets[: 3 * c])  # shuffled within blocks


def test_count_task_draws_count_objects():
    for i in range(10):
        classes, y = sample_objects("count", i, "val", 0)
        assert len(classes) == y + 1


def _hf_energy(img_u8: np.ndarray) -> np.ndarray:
    """Per-pixel energy of the detail a 2x down/up-scale removes (2x2 box mean, repeated)."""
    g = img_u8.astype(np.float32).mean(-1) / 255
    h, w = g.shape
    box = g.reshape(h // 2, 2, w // 2, 2).mean((1, 3))
    return (g - box.repeat(2, 0).repeat(2, 1)) ** 2


@pytest.mark.parametrize("task", ["glyphs", "glyphs-multi", "digits", "dice", "lines", "count"])
def test_high_frequency_energy_is_on_the_objects(task):
    share, area, density, top_hits = [], [], [], 0
    n = 20
    for i in range(n):
        s = generate(task, i, "val", image_size=128, return_mask=True)
        e = _hf_energy(s.image)
        on = s.mask > 0.5
        background = ~on & (s.distractor_mask <= 0.5)
        share.append(e[on].sum() / e.sum())
        area.append(on.mean())
        density.append(e[on].mean() / e[background].mean())
        # pixel-blur style saliency: the 8x8 patch with the most detail holds an object
        pe = e.reshape(16, 8, 16, 8).sum((1, 3))
        py, px = np.unravel_index(pe.argmax(), pe.shape)
        top_hits += s.mask[py * 8:(py + 1) * 8, px * 8:(px + 1) * 8].max() > 0.5
    assert np.mean(area) < 0.06  # small objects...
    assert np.median(density) > 20  # ...with far denser detail than the scene
    assert top_hits >= 0.85 * n
    if task.startswith("glyphs"):  # upstream: most of all detail, blanks and clutter included
        assert np.median(share) > 0.6


def test_half_resolution_removes_the_micro_texture():
    """Inside the upstream objects almost all contrast is texture, and an antialiased 2x
    down-scale removes most of it (the object stays visible as a flat plate)."""
    kept = []
    for i in range(12):
        s = generate("glyphs", i, "val", image_size=128, return_mask=True)
        x = torch.from_numpy(s.image).permute(2, 0, 1)[None].float()
        d = torch.nn.functional.interpolate(x, scale_factor=0.5, mode="bilinear", antialias=True)
        u = torch.nn.functional.interpolate(d, size=(128, 128), mode="bilinear")
        core = torch.from_numpy(s.mask > 0.99)
        core = core & core.roll(2, 0) & core.roll(-2, 0) & core.roll(2, 1) & core.roll(-2, 1)  # erode
        if core.sum() < 20:
            continue
        full = x[0][:, core].std(1).mean()
        half = u[0][:, core].std(1).mean()
        kept.append(float(half / full))
    assert len(kept) >= 8
    assert np.median(kept) < 0.5


# --------------------------------------------------------------------------- cache


def test_cache_roundtrip(tmp_path):
    kw = dict(task="lines", split="test", size=6, image_size=(32, 48), seed=2)
    ds = BuiltinDataset(**kw, cache_dir=tmp_path)
    files = list(tmp_path.glob("*.npy"))
    assert len(files) == 1 and ds.cache_path == files[0]
    assert not list(tmp_path.glob("*.tmp"))
    arr = np.load(files[0])
    assert arr.shape == (6, 32, 48, 3) and arr.dtype == np.uint8
    fresh = BuiltinDataset(**kw)
    for i in range(6):
        a, ya = ds[i]
        b, yb = fresh[i]
        assert torch.equal(a, b) and ya == yb
    # a second instance reuses the file (no rewrite)
    mtime = files[0].stat().st_mtime_ns
    again = BuiltinDataset(**kw, cache_dir=tmp_path)
    assert files[0].stat().st_mtime_ns == mtime and torch.equal(again[3][0], ds[3][0])


def test_cache_rebuilds_a_bad_file(tmp_path, caplog):
    kw = dict(task="glyphs", split="val", size=3, image_size=32)
    path = BuiltinDataset(**kw, cache_dir=tmp_path).cache_path
    np.save(path, np.zeros((2, 32, 32, 3), np.uint8))  # wrong shape
    with caplog.at_level(logging.WARNING):
        ds = BuiltinDataset(**kw, cache_dir=tmp_path)
    assert "rebuilding" in caplog.text
    assert np.load(path).shape == (3, 32, 32, 3)
    assert torch.equal(ds[1][0], BuiltinDataset(**kw)[1][0])


def test_dataloader_batches():
    ds = BuiltinDataset("glyphs-multi", "train", size=8, image_size=32)
    x, y = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert x.shape == (4, 3, 32, 32) and y.shape == (4, 10)


# --------------------------------------------------------------------------- image folders


def _write_folder(root, corrupt=True):
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            arr = rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / c / f"{i}.png")
    (root / "dog" / "notes.txt").write_text("not an image")
    bad = root / "cat" / "1b_broken.jpg"
    if corrupt:
        bad.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    return bad


def test_imagefolder_skips_corrupt_file_at_load_time(tmp_path, caplog):
    bad = _write_folder(tmp_path / "train")
    ds = ImageFolderDataset(tmp_path / "train")
    assert ds.class_names == ["cat", "dog"] and len(ds) == 7  # .txt ignored, broken file listed
    bad_index = [p for p, _ in ds.samples].index(str(bad))
    with caplog.at_level(logging.WARNING, logger="quadformer.data.real.base"):
        img, label = ds[bad_index]
    assert isinstance(img, Image.Image) and img.mode == "RGB"
    assert ds.num_skipped == 1 and ds.skipped_paths == [str(bad)]
    assert str(bad) in caplog.text
    # the substitute is the next sample, with its own label
    assert label == ds.samples[bad_index + 1][1]
    items = [ds[i] for i in range(len(ds))]
    assert len(items) == 7 and ds.num_skipped == 1  # reported once


def test_imagefolder_verify_at_scan_time(tmp_path, caplog):
    bad = _write_folder(tmp_path / "train")
    with caplog.at_level(logging.WARNING, logger="quadformer.data.real.base"):
        ds = ImageFolderDataset(tmp_path / "train", verify=True, image_size=32)
    assert len(ds) == 6 and ds.num_skipped == 1 and ds.skipped_paths == [str(bad)]
    assert str(bad) in caplog.text
    x, y = ds[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == 0
    assert ds.targets == [0, 0, 0, 1, 1, 1]


def test_imagefolder_truncated_file_passes_verify_but_is_skipped_at_load(tmp_path, caplog):
    root = tmp_path / "data"
    _write_folder(root, corrupt=False)
    arr = np.random.default_rng(3).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    full = root / "dog" / "big.jpg"
    Image.fromarray(arr).save(full, quality=95)
    full.write_bytes(full.read_bytes()[: full.stat().st_size // 2])  # header intact, data cut
    ds = ImageFolderDataset(root, verify=True)
    assert ds.num_skipped == 0 and len(ds) == 7
    i = [p for p, _ in ds.samples].index(str(full))
    with caplog.at_level(logging.WARNING, logger="quadformer.data.real.base"):
        ds[i]
    assert ds.skipped_paths == [str(full)] and "big.jpg" in caplog.text


def test_imagefolder_errors(tmp_path):
    with pytest.raises(QuadformerError, match="does not exist"):
        ImageFolderDataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(QuadformerError, match="no class sub-folders"):
        ImageFolderDataset(tmp_path / "empty")
    (tmp_path / "noimg" / "a").mkdir(parents=True)
    with pytest.raises(QuadformerError, match="no images"):
        ImageFolderDataset(tmp_path / "noimg")
    (tmp_path / "allbad" / "a").mkdir(parents=True)
    (tmp_path / "allbad" / "a" / "x.png").write_bytes(b"junk")
    ds = ImageFolderDataset(tmp_path / "allbad")
    with pytest.raises(QuadformerError, match="could not read image 0"):
        ds[0]


# --------------------------------------------------------------------------- CIFAR


def _write_cifar10(folder, n=4):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            b"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8),
            b"labels": [int(v) for v in rng.integers(0, 10, n)],
            b"batch_label": name.encode(),
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f)
    return folder


def test_cifar10_reads_local_pickles(tmp_path):
    folder = _write_cifar10(tmp_path / "cifar-10-batches-py")
    ds = CIFARDataset(tmp_path, "train")  # parent folder works too
    assert len(ds) == 20 and ds.num_classes == 10 and ds.class_names[3] == "c3"
    with open(folder / "data_batch_1", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    img, y = ds[1]
    assert np.array_equal(np.asarray(img), raw[b"data"][1].reshape(3, 32, 32).transpose(1, 2, 0))
    assert y == raw[b"labels"][1]
    test = CIFARDataset(folder, "val", image_size=48)
    x, _ = test[0]
    assert len(test) == 4 and x.shape == (3, 48, 48)


def test_cifar100_and_missing_files(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(2)
    for name, n in (("train", 5), ("test", 3)):
        with open(folder / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8),
                         "fine_labels": list(range(n)), "coarse_labels": [0] * n}, f)
    ds = CIFARDataset(tmp_path, "train", "cifar100")
    assert len(ds) == 5 and ds.num_classes == 100 and ds[4][1] == 4
    assert CIFARDataset(tmp_path, "test", "cifar100", label="coarse").num_classes == 20
    with pytest.raises(QuadformerError, match=r"data_batch_1.*cifar-10-batches-py"):
        CIFARDataset(tmp_path / "nowhere", "train")
    with pytest.raises(QuadformerError, match=str(tmp_path / "nowhere")):
        CIFARDataset(tmp_path / "nowhere", "test", "cifar100")


# --------------------------------------------------------------------------- factory


def test_build_dataset_factory(tmp_path):
    ds = build_dataset("builtin:dice", "val", 32, size=5)
    assert isinstance(ds, BuiltinDataset) and len(ds) == 5 and ds.task == "dice" and ds[0][0].shape == (3, 32, 32)
    _write_folder(tmp_path / "imnet" / "train", corrupt=False)
    folder = build_dataset(f"imagefolder:{tmp_path / 'imnet'}", "train", 40)
    x, _ = folder[0]
    assert isinstance(folder, ImageFolderDataset) and x.shape == (3, 40, 40)
    assert len(build_dataset(str(tmp_path / "imnet"), "train", 40, size=2)) == 2
    pil = build_dataset(f"imagefolder:{tmp_path / 'imnet' / 'train'}", None, transform=None)
    assert isinstance(pil[0][0], Image.Image)
    _write_cifar10(tmp_path / "c10")
    c10 = build_dataset(f"cifar10:{tmp_path / 'c10'}", "test", 64)
    assert isinstance(c10, CIFARDataset) and c10[0][0].shape == (3, 64, 64)


def test_build_dataset_errors(tmp_path):
    with pytest.raises(ValueError, match=r"unknown dataset 'imagenet'.*builtin:<task>.*cifar100:<root>"):
        build_dataset("imagenet", "train", 64)
    with pytest.raises(ValueError, match="unknown dataset 'mnist:/x'"):
        build_dataset("mnist:/x")
    with pytest.raises(ValueError, match="unknown built-in task 'nope'"):
        build_dataset("builtin:nope")
    with pytest.raises(ValueError, match="needs a folder"):
        build_dataset("cifar10:")
    with pytest.raises(QuadformerError, match="no 'val' folder"):
        (tmp_path / "train" / "a").mkdir(parents=True)
        build_dataset(f"imagefolder:{tmp_path}", "val", 64)


# --------------------------------------------------------------------------- safe CIFAR reading


class _Payload:
    """Unpickling this would call ``fn(*args)``: the marker file shows whether it ran."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


@pytest.mark.parametrize("kind", ["system", "open", "eval"])
def test_cifar_batch_with_code_payload_is_refused_and_not_run(tmp_path, kind):
    import builtins
    import os

    folder = _write_cifar10(tmp_path / "cifar-10-batches-py")
    marker = tmp_path / "PWNED"
    payload = {
        "system": _Payload(os.system, f"touch {marker}"),
        "open": _Payload(builtins.open, str(marker), "w"),
        "eval": _Payload(builtins.eval, f"open({str(marker)!r}, 'w')"),
    }[kind]
    with open(folder / "data_batch_1", "wb") as f:
        pickle.dump({b"data": payload, b"labels": [0]}, f, protocol=2)
    with pytest.raises(QuadformerError, match=r"data_batch_1 is not a valid cifar10 batch.*refused global") as e:
        build_dataset(f"cifar10:{tmp_path}", "train", 32)
    assert "\n" not in str(e.value)
    assert not marker.exists()


def test_cifar_reads_python2_style_protocol2_batches(tmp_path):
    folder = _write_cifar10(tmp_path / "cifar-10-batches-py")
    data = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": data, b"labels": [3, 4], b"filenames": [b"a.png", b"b.png"]}, f, protocol=2)
    ds = CIFARDataset(folder, "test")
    assert len(ds) == 2 and ds[1][1] == 4
    assert np.array_equal(np.asarray(ds[0][0]), data[0].reshape(3, 32, 32).transpose(1, 2, 0))


# --------------------------------------------------------------------------- image modes and depths


def _gradient16():
    return (np.arange(64 * 64, dtype=np.float64).reshape(64, 64) * (65535 / (64 * 64 - 1))).round().astype(np.uint16)


@pytest.mark.parametrize("kind", ["png16", "tiff_float", "tiff_int32"])
def test_high_depth_images_are_scaled_not_clipped(tmp_path, kind):
    from quadformer.utils.images import load_rgb

    a16 = _gradient16()
    expect = np.rint(a16 * (255 / 65535)).astype(np.uint8)
    if kind == "png16":
        path = tmp_path / "x.png"
        Image.fromarray(a16).save(path)
        assert Image.open(path).mode == "I;16"
    elif kind == "tiff_float":
        path = tmp_path / "x.tif"
        Image.fromarray((a16 / 65535).astype(np.float32)).save(path)
        assert Image.open(path).mode == "F"
    else:
        path = tmp_path / "x.tif"
        Image.fromarray(a16.astype(np.int32)).save(path)
        assert Image.open(path).mode == "I"
    rgb = np.asarray(load_rgb(path))
    assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8
    assert (rgb == 255).mean() < 0.01  # Pillow's convert("RGB") makes ~99.6% of them 255
    assert np.abs(rgb[..., 0].astype(int) - expect).max() <= 1
    # the ImageFolder loader decodes through the same function
    (tmp_path / "root" / "cls").mkdir(parents=True)
    shutil.copy(path, tmp_path / "root" / "cls" / path.name)
    img, _ = ImageFolderDataset(tmp_path / "root")[0]
    assert np.array_equal(np.asarray(img), rgb)


def test_other_modes_convert_to_rgb(tmp_path):
    from quadformer.utils.images import load_rgb

    la = Image.fromarray(np.stack([np.full((4, 4), 100, np.uint8), np.full((4, 4), 7, np.uint8)], -1), "LA")
    p = Image.new("P", (4, 4), 1)
    p.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    pt = p.copy()
    pt.info["transparency"] = 0
    cmyk = Image.new("CMYK", (4, 4), (0, 0, 0, 0))
    one = Image.fromarray(np.eye(4, dtype=bool))
    cases = {"la.png": (la, (100, 100, 100)), "p.png": (p, (10, 200, 30)), "pt.png": (pt, (10, 200, 30)),
             "cmyk.jpg": (cmyk, (255, 255, 255)), "one.png": (one, None)}
    for name, (im, colour) in cases.items():
        im.save(tmp_path / name)
        rgb = np.asarray(load_rgb(tmp_path / name))
        assert rgb.shape == (4, 4, 3) and rgb.dtype == np.uint8, name
        if colour is not None:
            assert np.abs(rgb.reshape(-1, 3) - np.array(colour)).max() <= 2, name
    bits = np.asarray(load_rgb(tmp_path / "one.png"))[..., 0]
    assert np.array_equal(bits, np.eye(4, dtype=np.uint8) * 255)


def test_decompression_bomb_is_one_line_error(tmp_path, monkeypatch):
    from quadformer.utils.images import load_rgb

    Image.new("RGB", (64, 64)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(QuadformerError, match=r"big.png is too large to decode safely") as e:
        load_rgb(tmp_path / "big.png")
    assert "\n" not in str(e.value)


# --------------------------------------------------------------------------- label spaces


def _tree(root, spec):
    for cls, n in spec.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(root / cls / f"{i}.png")


def test_imagefolder_val_missing_a_class_keeps_the_training_labels(tmp_path):
    from quadformer.data import check_same_classes

    _tree(tmp_path / "train", {"ant": 2, "bee": 2, "cat": 2})
    _tree(tmp_path / "val", {"ant": 1, "cat": 2})
    tr = build_dataset(f"imagefolder:{tmp_path}", "train", 8, transform=None)
    va = build_dataset(f"imagefolder:{tmp_path}", "val", 8, transform=None)
    assert va.class_names == tr.class_names == ["ant", "bee", "cat"]
    assert va.targets == [0, 2, 2]  # cat keeps label 2 although val has no bee
    check_same_classes(tr, va, "data.val")
    alone = ImageFolderDataset(tmp_path / "val")
    with pytest.raises(QuadformerError, match=r"data.val: the classes differ.*lacks bee") as e:
        check_same_classes(tr, alone, "data.val")
    assert "\n" not in str(e.value)
    _tree(tmp_path / "val", {"dog": 1})
    with pytest.raises(QuadformerError, match=r"class folders \['dog'\] that the training classes lack"):
        build_dataset(f"imagefolder:{tmp_path}", "val", 8, transform=None)


def test_empty_class_folder_is_an_error(tmp_path):
    _tree(tmp_path / "d", {"a": 2})
    (tmp_path / "d" / "empty").mkdir()
    with pytest.raises(QuadformerError, match=r"class folder .*empty holds no images") as e:
        ImageFolderDataset(tmp_path / "d")
    assert "\n" not in str(e.value)


def test_every_builtin_task_reports_class_names():
    from quadformer.data import builtin_task_names, check_same_classes

    for name in builtin_task_names():
        a = build_dataset(f"builtin:{name}", "test", 32, size=2)
        assert len(a.class_names) == a.num_classes > 0
        check_same_classes(a, a, name)
    with pytest.raises(QuadformerError, match="classes differ"):
        check_same_classes(build_dataset("builtin:glyphs", "test", 32, size=2),
                           build_dataset("builtin:digits", "test", 32, size=2), "eval --data")
