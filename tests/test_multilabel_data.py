"""Tests for quadformer.data.real.multilabel: VOC 2007, COCO and CSV multi-label loaders."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from quadformer.utils.errors import QuadformerError
from quadformer.data import build_dataset
from quadformer.data.real.multilabel import VOC_CLASSES, COCOMultiLabel, CSVMultiLabel, VOCMultiLabel


def _img(path, seed=0, size=(20, 16)):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def _onehot(names, classes):
    v = np.zeros(len(classes), np.float32)
    for n in names:
        v[list(classes).index(n)] = 1
    return v


# --------------------------------------------------------------------------- VOC

_VOC_OBJECTS = {
    "000001": [("dog", 0), ("person", 0), ("person", 0)],
    "000002": [("cat", 1), ("cat", 0)],  # a difficult and a clear cat
    "000003": [("car", 1), ("bird", 0)],  # car only difficult
    "000004": [("chair", 0)],
    "000005": [("tvmonitor", 0), ("sofa", 1)],
}


def _voc_xml(objects, with_difficult_tag=True):
    parts = ["<annotation><folder>VOC2007</folder><size><width>20</width><height>16</height></size>"]
    for name, diff in objects:
        d = f"<difficult>{diff}</difficult>" if with_difficult_tag else ""
        parts.append(f"<object><name>{name}</name><pose>Left</pose>{d}<bndbox><xmin>1</xmin><ymin>1</ymin>"
                     f"<xmax>5</xmax><ymax>5</ymax></bndbox></object>")
    parts.append("</annotation>")
    return "".join(parts)


@pytest.fixture
def voc(tmp_path):
    base = tmp_path / "VOCdevkit" / "VOC2007"
    for d in ("Annotations", "ImageSets/Main", "JPEGImages"):
        (base / d).mkdir(parents=True)
    for i, (iid, objs) in enumerate(_VOC_OBJECTS.items()):
        (base / "Annotations" / f"{iid}.xml").write_text(_voc_xml(objs, with_difficult_tag=iid != "000004"))
        _img(base / "JPEGImages" / f"{iid}.jpg", i)
    (base / "ImageSets/Main/trainval.txt").write_text("000001\n000002\n000003\n000004\n")
    (base / "ImageSets/Main/train.txt").write_text("000001\n000002\n")
    (base / "ImageSets/Main/val.txt").write_text("000003\n000004\n")
    (base / "ImageSets/Main/test.txt").write_text("000005\n000003\n")
    return tmp_path


def test_voc_targets_and_difficult_policies(voc):
    ds = VOCMultiLabel(voc / "VOCdevkit", "trainval")
    assert ds.num_classes == 20 and ds.class_names == list(VOC_CLASSES) and ds.multilabel
    expect = np.stack([
        _onehot(["dog", "person"], VOC_CLASSES),
        _onehot(["cat"], VOC_CLASSES),
        _onehot(["bird"], VOC_CLASSES),  # difficult-only car ignored
        _onehot(["chair"], VOC_CLASSES),
    ])
    assert ds.targets.dtype == np.float32 and np.array_equal(ds.targets, expect)
    assert ds.image_ids == ["000001", "000002", "000003", "000004"]
    car = VOC_CLASSES.index("car")
    assert ds.difficult_mask[2, car] and ds.difficult_mask.sum() == 1  # the clear cat masks the difficult one

    pos = VOCMultiLabel(voc, "trainval", difficult="positive")  # root = parent of VOCdevkit
    expect_pos = expect.copy()
    expect_pos[2, car] = 1
    assert np.array_equal(pos.targets, expect_pos)

    exc = VOCMultiLabel(voc / "VOCdevkit" / "VOC2007", "trainval", difficult="exclude")
    assert exc.image_ids == ["000001", "000002", "000004"]
    assert np.array_equal(exc.targets, expect[[0, 1, 3]])
    assert len(exc.paths) == 3 and exc.paths[2].endswith("000004.jpg")

    test = VOCMultiLabel(voc / "VOCdevkit", "test")
    assert np.array_equal(test.targets[0], _onehot(["tvmonitor"], VOC_CLASSES))
    with pytest.raises(ValueError, match="difficult must be"):
        VOCMultiLabel(voc, "trainval", difficult="maybe")


def test_voc_items_transforms_and_factory(voc):
    ds = VOCMultiLabel(voc, "train")
    img, y = ds[0]
    assert isinstance(img, Image.Image) and img.mode == "RGB"
    assert torch.equal(y, torch.from_numpy(_onehot(["dog", "person"], VOC_CLASSES)))
    fb = build_dataset(f"voc2007:{voc / 'VOCdevkit'}", "test", 32)
    x, y = fb[1]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert y.dtype == torch.float32 and y[VOC_CLASSES.index("bird")] == 1
    sub = build_dataset(f"voc2007:{voc}", "trainval", 32, size=2, difficult="positive")
    assert len(sub) == 2 and sub.difficult == "positive"
    loader = torch.utils.data.DataLoader(build_dataset(f"voc2007:{voc}", "val", 16), batch_size=2)
    xb, yb = next(iter(loader))
    assert xb.shape == (2, 3, 16, 16) and yb.shape == (2, 20)


def test_voc_errors(voc, tmp_path):
    with pytest.raises(QuadformerError, match="does not exist"):
        VOCMultiLabel(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(QuadformerError, match="Annotations"):
        VOCMultiLabel(empty)
    with pytest.raises(ValueError, match="split"):
        VOCMultiLabel(voc, "dev")
    base = voc / "VOCdevkit" / "VOC2007"
    (base / "ImageSets/Main/train.txt").unlink()
    with pytest.raises(QuadformerError, match="train.txt"):
        VOCMultiLabel(voc, "train")
    (base / "Annotations/000004.xml").unlink()
    with pytest.raises(QuadformerError, match="000004.xml"):
        VOCMultiLabel(voc, "val")
    (base / "Annotations/000003.xml").write_text(_voc_xml([("unicorn", 0)]))
    with pytest.raises(ValueError, match="000003.xml.*unicorn"):
        VOCMultiLabel(voc, "test")
    (base / "Annotations/000005.xml").write_text("<annotation><object>")
    with pytest.raises(ValueError, match="000005.xml"):
        VOCMultiLabel(voc, "test")


def test_voc_corrupt_image_is_named(voc, caplog):
    bad = voc / "VOCdevkit" / "VOC2007" / "JPEGImages" / "000002.jpg"
    bad.write_bytes(b"not a jpeg")
    ds = VOCMultiLabel(voc, "train")
    with caplog.at_level(logging.WARNING):
        img, y = ds[1]  # replaced by the next readable sample (with its target)
    assert str(bad) in caplog.text
    assert ds.skipped_paths == [str(bad)] and ds.num_skipped == 1
    assert torch.equal(y, torch.from_numpy(ds.targets[0]))
    strict = VOCMultiLabel(voc, "train", on_error="raise")
    with pytest.raises(OSError, match="000002.jpg"):
        strict[1]
    verified = VOCMultiLabel(voc, "train", verify=True)
    assert len(verified) == 1 and verified.skipped_paths == [str(bad)]


# --------------------------------------------------------------------------- COCO


@pytest.fixture
def coco(tmp_path):
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    (root / "val2014").mkdir()
    cats = [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}, {"id": 3, "name": "car"},
            {"id": 90, "name": "toothbrush"}]
    images = [{"id": 42, "file_name": "COCO_val2014_000000000042.jpg"},
              {"id": 7, "file_name": "COCO_val2014_000000000007.jpg"},
              {"id": 9, "file_name": "COCO_val2014_000000000009.jpg"}]  # no annotations
    anns = [{"id": 1, "image_id": 42, "category_id": 18, "iscrowd": 0},
            {"id": 2, "image_id": 42, "category_id": 1, "iscrowd": 0},
            {"id": 3, "image_id": 42, "category_id": 1, "iscrowd": 0},
            {"id": 4, "image_id": 7, "category_id": 90, "iscrowd": 0},
            {"id": 5, "image_id": 7, "category_id": 3, "iscrowd": 1}]
    (root / "annotations" / "instances_val2014.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": cats}))
    for i, im in enumerate(images):
        _img(root / "val2014" / im["file_name"], i)
    return root


def test_coco_targets(coco):
    ds = COCOMultiLabel(coco, "val")
    assert ds.class_names == ["person", "car", "dog", "toothbrush"]  # category-id order
    assert ds.category_ids == [1, 3, 18, 90] and ds.num_classes == 4 and ds.multilabel
    assert ds.image_ids.tolist() == [7, 9, 42]
    expect = np.array([[0, 1, 0, 1], [0, 0, 0, 0], [1, 0, 1, 0]], np.float32)
    assert np.array_equal(ds.targets, expect)
    img, y = ds[2]
    assert isinstance(img, Image.Image) and torch.equal(y, torch.from_numpy(expect[2]))
    dropped = COCOMultiLabel(coco, "test", keep_empty=False)  # test means val
    assert dropped.image_ids.tolist() == [7, 42] and np.array_equal(dropped.targets, expect[[0, 2]])
    nocrowd = COCOMultiLabel(coco, "val", include_crowd=False)
    assert nocrowd.targets[0].tolist() == [0, 0, 0, 1]
    direct = COCOMultiLabel(coco / "annotations" / "instances_val2014.json")
    assert np.array_equal(direct.targets, expect) and direct[0][0].size == (20, 16)
    fb = build_dataset(f"coco:{coco}", "val", 24, size=2)
    x, y = fb[0]
    assert len(fb) == 2 and x.shape == (3, 24, 24) and y.shape == (4,)


def test_coco_errors(coco, tmp_path):
    with pytest.raises(QuadformerError, match="instances_train2014.json"):
        COCOMultiLabel(coco, "train")
    with pytest.raises(QuadformerError, match="does not exist"):
        COCOMultiLabel(tmp_path / "nope", "val")
    with pytest.raises(QuadformerError, match="instances_val2017.json"):
        COCOMultiLabel(coco, "val", year=2017)
    with pytest.raises(QuadformerError, match="missing.json"):
        COCOMultiLabel(tmp_path / "missing.json")
    ann = coco / "annotations" / "instances_val2014.json"
    data = json.loads(ann.read_text())
    data["annotations"].append({"id": 9, "image_id": 7, "category_id": 55})
    ann.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="unknown category_id 55"):
        COCOMultiLabel(coco, "val")
    ann.write_text("{not json")
    with pytest.raises(ValueError, match="instances_val2014.json"):
        COCOMultiLabel(coco, "val")
    import shutil

    shutil.rmtree(coco / "val2014")
    with pytest.raises(QuadformerError, match="val2014"):
        COCOMultiLabel(coco, "val")


# --------------------------------------------------------------------------- CSV


@pytest.fixture
def csv_dir(tmp_path):
    (tmp_path / "img").mkdir()
    for i in range(4):
        _img(tmp_path / "img" / f"{i}.png", i)
    return tmp_path


def test_csv_labels_column(csv_dir):
    f = csv_dir / "list.csv"
    f.write_text("path,labels,split\nimg/0.png,cat;dog,train\nimg/1.png,dog,train\nimg/2.png,,test\n"
                 f"{csv_dir / 'img' / '3.png'}, bird ; cat ,test\n")
    ds = CSVMultiLabel(f)
    assert ds.format == "labels" and ds.class_names == ["bird", "cat", "dog"]  # sorted union
    expect = np.array([[0, 1, 1], [0, 0, 1], [0, 0, 0], [1, 1, 0]], np.float32)
    assert np.array_equal(ds.targets, expect)
    assert ds.paths[0] == str(csv_dir / "img" / "0.png") and ds.paths[3] == str(csv_dir / "img" / "3.png")
    img, y = ds[3]
    assert img.size == (20, 16) and torch.equal(y, torch.from_numpy(expect[3]))
    tr = CSVMultiLabel(f, split="train")
    assert len(tr) == 2 and np.array_equal(tr.targets, expect[:2])
    assert tr.class_names == ds.class_names  # class list from the whole file, not the split
    given = CSVMultiLabel(f, classes=["dog", "cat", "bird", "fish"])
    assert given.class_names == ["dog", "cat", "bird", "fish"]
    assert given.targets[0].tolist() == [1, 1, 0, 0] and given.targets[3].tolist() == [0, 1, 1, 0]
    with pytest.raises(ValueError, match=r"line 5: unknown class 'bird'"):
        CSVMultiLabel(f, classes=["cat", "dog"])
    (csv_dir / "classes.txt").write_text("cat\ndog\n")
    with pytest.raises(ValueError, match=r"list.csv line 5.*'bird'"):
        CSVMultiLabel(f, classes=csv_dir / "classes.txt")
    fb = build_dataset(f"csv:{f}", "test", 16)
    assert len(fb) == 2 and fb[0][0].shape == (3, 16, 16)


def test_csv_onehot_columns(csv_dir):
    f = csv_dir / "onehot.csv"
    f.write_text("image,zebra,ant,cow\nimg/0.png,1,0,1\nimg/1.png,0,0,0\nimg/2.png,0,1,\n")
    ds = CSVMultiLabel(f)
    assert ds.format == "onehot" and ds.class_names == ["zebra", "ant", "cow"]  # header order
    assert np.array_equal(ds.targets, np.array([[1, 0, 1], [0, 0, 0], [0, 1, 0]], np.float32))
    sel = CSVMultiLabel(f, classes=["cow", "zebra"])
    assert np.array_equal(sel.targets, np.array([[1, 1], [0, 0], [0, 0]], np.float32))
    with pytest.raises(ValueError, match="classes \\['yak'\\] have no column"):
        CSVMultiLabel(f, classes=["yak"])
    (csv_dir / "train.csv").write_text("path,a,b\nimg/0.png,1,0\n")
    fb = build_dataset(f"csv:{csv_dir}/{{split}}.csv", "train", 16)
    assert fb.class_names == ["a", "b"] and fb[0][1].tolist() == [1.0, 0.0]
    f.write_text("image,zebra,ant\nimg/0.png,1,2\n")
    with pytest.raises(ValueError, match="line 2: column 'ant' has value '2'"):
        CSVMultiLabel(f)


def test_csv_split_files_share_the_training_classes(csv_dir):
    (csv_dir / "train.csv").write_text("path,labels\nimg/0.png,ant;cat\nimg/1.png,bee\n")
    (csv_dir / "val.csv").write_text("path,labels\nimg/2.png,cat\n")  # no ant, no bee
    spec = f"csv:{csv_dir}/{{split}}.csv"
    tr, va = build_dataset(spec, "train", 16), build_dataset(spec, "val", 16)
    assert tr.class_names == va.class_names == ["ant", "bee", "cat"]
    assert va.targets.tolist() == [[0.0, 0.0, 1.0]]  # cat keeps index 2
    (csv_dir / "test.csv").write_text("path,labels\nimg/2.png,dog\n")
    with pytest.raises(QuadformerError, match="test.csv line 2: unknown class 'dog'"):
        build_dataset(spec, "test", 16)


def test_csv_errors_and_corrupt_image(csv_dir, caplog):
    with pytest.raises(QuadformerError, match="nope.csv"):
        CSVMultiLabel(csv_dir / "nope.csv")
    with pytest.raises(QuadformerError, match="nope.csv"):
        build_dataset(f"csv:{csv_dir / 'nope.csv'}", "train", 16)
    f = csv_dir / "short.csv"
    f.write_text("path,labels\nimg/0.png\n")
    with pytest.raises(ValueError, match="line 2: 1 fields"):
        CSVMultiLabel(f)
    f.write_text("")
    with pytest.raises(ValueError, match="empty"):
        CSVMultiLabel(f)
    (csv_dir / "img" / "bad.png").write_bytes(b"\x89PNG broken")
    f.write_text("path,labels\nimg/bad.png,a\nimg/missing.png,b\nimg/1.png,c\n")
    ds = CSVMultiLabel(f)
    with caplog.at_level(logging.WARNING):
        img, y = ds[0]
    assert str(csv_dir / "img" / "bad.png") in caplog.text and str(csv_dir / "img" / "missing.png") in caplog.text
    assert y.tolist() == [0, 0, 1]
    with pytest.raises(OSError, match="bad.png"):
        CSVMultiLabel(f, on_error="raise")[0]


def test_factory_schemes_and_errors(tmp_path):
    from quadformer.data import DATASET_SCHEMES

    assert {"voc2007", "coco", "csv"} <= set(DATASET_SCHEMES)
    with pytest.raises(QuadformerError, match="VOC"):
        build_dataset(f"voc2007:{tmp_path / 'x'}", "trainval", 16)
    with pytest.raises(QuadformerError, match="COCO"):
        build_dataset(f"coco:{tmp_path / 'x'}", "train", 16)
    with pytest.raises(ValueError, match="needs a folder"):
        build_dataset("coco:", "train", 16)
