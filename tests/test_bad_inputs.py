"""The bad-input corpus: every CLI command on every bad input of its kind.

Each case runs ``quadformer.cli.main.main([...])`` in-process and asserts what the README
promises: a non-zero exit, exactly one line on stderr that names the bad value, no traceback,
no file changed outside the case's own output folder, and no code executed (the malicious
files carry a payload that would create a marker file). The count is printed; every new
entry point adds its rows here.
"""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
import re
import struct
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from quadformer.cli.main import COMMANDS, main

MICRO = ["model.name=quadformer_micro_patch4_32", "model.kwargs={embed_dim: 32, depth: 2, num_heads: 2}",
         "model.num_patches=16", "data.image_size=32"]
TINY_DATA = ["data.train=builtin:glyphs", "data.train_size=32", "data.val_size=16", "data.batch_size=16",
             "train.epochs=1", "train.progress=false", "output.tensorboard=false"]


class _Payload:
    """Unpickling it creates ``path`` (what a malicious file would do, harmlessly)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


class _StderrNow(logging.Handler):
    """Log records go to the current sys.stderr (the captured one), so they count as lines."""

    def emit(self, record: logging.LogRecord) -> None:
        sys.stderr.write(self.format(record) + "\n")


@dataclass
class Case:
    id: str
    argv: list[str]
    expect: str  # must appear in the one stderr line (the bad value)
    xfail: str | None = None


# ----------------------------------------------------------------------------------------------
# Fixtures: one world of files shared by every case
# ----------------------------------------------------------------------------------------------


def _png(path: Path, arr: np.ndarray, mode: str | None = None) -> Path:
    Image.fromarray(arr, mode) if mode else Image.fromarray(arr)
    Image.fromarray(arr).save(path)
    return path


def _safetensors_raw(path: Path, header: bytes, body: bytes = b"") -> Path:
    path.write_bytes(struct.pack("<Q", len(header)) + header + body)
    return path


def _build_world(root: Path) -> dict[str, Path]:
    w: dict[str, Path] = {"root": root}
    marker = root / "PWNED"
    w["marker"] = marker
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)

    # -- a tiny trained run (the good model every checkpoint case starts from) --
    run = root / "run"
    assert main(["train", "--out", str(run), *MICRO, *TINY_DATA, "train.ema_decay=0.5"]) == 0
    w["run"] = run
    w["last"] = run / "last.pt"
    w["export"] = run / "model.safetensors"
    good = root / "good.png"
    Image.fromarray(img).save(good)
    w["good"] = good

    # -- images --
    ims = root / "images"
    ims.mkdir()
    (ims / "empty.png").write_bytes(b"")
    (ims / "text.jpg").write_text("this is not an image\n")
    (ims / "html.png").write_text("<html><body>404 not found</body></html>")
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG")
    (ims / "truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG")
    (ims / "truncated.jpg").write_bytes(buf.getvalue()[:200])
    (ims / "jpeg_header_only.jpg").write_bytes(b"\xff\xd8\xff\xe0")
    (ims / "png_magic_only.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (ims / "gif_magic_only.gif").write_bytes(b"GIF89a")
    (ims / "bmp_magic_only.bmp").write_bytes(b"BM" + b"\x00" * 10)
    (ims / "tiff_magic_only.tif").write_bytes(b"II*\x00")
    (ims / "webp_magic_only.webp").write_bytes(b"RIFF\x00\x00\x00\x00WEBP")
    (ims / "zeros.png").write_bytes(b"\x00" * 1024)
    (ims / "pickle.png").write_bytes(pickle.dumps(_Payload(marker)))
    # a decompression bomb: a valid PNG header claiming 40000 x 40000 pixels
    import zlib

    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", 40000, 40000, 8, 2, 0, 0, 0)
    (ims / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) +
                                   chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + chunk(b"IEND", b""))
    (ims / "dir.png").mkdir()
    w["images"] = ims

    # -- checkpoints and weights files --
    ck = root / "ckpt"
    ck.mkdir()
    last_bytes = w["last"].read_bytes()
    exp_bytes = w["export"].read_bytes()
    (ck / "empty.pt").write_bytes(b"")
    (ck / "random.pt").write_bytes(rng.integers(0, 255, 4096, dtype=np.uint8).tobytes())
    (ck / "text.pt").write_text("model weights go here\n")
    (ck / "truncated.pt").write_bytes(last_bytes[: len(last_bytes) // 2])
    (ck / "truncated_end.pt").write_bytes(last_bytes[:-100])
    with open(ck / "payload.pt", "wb") as f:
        pickle.dump({"model": _Payload(marker)}, f)
    with open(ck / "payload_proto2.pt", "wb") as f:
        pickle.dump(_Payload(marker), f, protocol=2)
    torch.save({"model": {"w": torch.zeros(1)}, "extra": _Payload(marker)}, ck / "payload_zip.pt")
    torch.save({"config": {"model": {"name": "quadformer_micro_patch4_32"}}, "model": [1, 2]}, ck / "list_model.pt")
    torch.save([torch.zeros(2)], ck / "list.pt")
    torch.save(torch.zeros(3), ck / "tensor.pt")
    torch.save({"a": 1, "b": "x"}, ck / "dict_no_tensors.pt")
    torch.save({"conv.weight": torch.zeros(4, 3, 3, 3)}, ck / "other_arch.pth")
    full = torch.load(w["last"], weights_only=True)
    bad_cfg = dict(full)
    bad_cfg["config"] = {**full["config"], "model": {**full["config"]["model"], "name": "no_such_model_xyz"}}
    torch.save(bad_cfg, ck / "unknown_arch.pt")
    wkey, ekey = ("state_dict", "state_dict_ema") if "state_dict" in full else ("model", "ema")  # timm / older keys
    shapes = dict(full)
    shapes[wkey] = {k: (v[:1] if v.ndim else v) for k, v in full[wkey].items()}
    shapes[ekey] = shapes[wkey]
    torch.save(shapes, ck / "wrong_shapes.pt")
    missing = dict(full)
    missing[wkey] = dict(list(full[wkey].items())[:3])
    missing[ekey] = missing[wkey]
    torch.save(missing, ck / "missing_keys.pt")
    with zipfile.ZipFile(ck / "zip_garbage.pt", "w") as z:
        z.writestr("archive/data.pkl", b"garbage")
    (ck / "empty.safetensors").write_bytes(b"")
    (ck / "text.safetensors").write_text("not safetensors")
    _safetensors_raw(ck / "huge_header.safetensors", b"{}")
    (ck / "huge_header.safetensors").write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    _safetensors_raw(ck / "bad_json.safetensors", b"{not json")
    _safetensors_raw(ck / "bad_offsets.safetensors",
                     json.dumps({"w": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 4000]}}).encode(), b"\0" * 8)
    (ck / "truncated.safetensors").write_bytes(exp_bytes[: len(exp_bytes) // 2])
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(ck / "bare.safetensors"))
    save_file({"w": torch.zeros(2)}, str(ck / "bad_meta.safetensors"), metadata={"quadformer": "{broken"})
    save_file({"w": torch.zeros(2)}, str(ck / "meta_no_model.safetensors"), metadata={"quadformer": json.dumps({"x": 1})})
    save_file({"w": torch.zeros(2)}, str(ck / "meta_list.safetensors"), metadata={"quadformer": "[1, 2]"})
    # an export whose sibling model.json names another architecture / is broken
    for name, side in (("mismatch", {"model": {"name": "quadformer_micro_patch4_32", "num_patches": 16,
                                               "kwargs": {"embed_dim": 64, "depth": 2, "num_heads": 2}},
                                     "image_size": 32, "num_classes": 10}),
                       ("sidebroken", None), ("sideunknown", {"model": {"name": "nope_model"}, "image_size": 32})):
        d = ck / name
        d.mkdir()
        (d / "model.safetensors").write_bytes(exp_bytes)
        (d / "model.json").write_text("{oops" if side is None else json.dumps(side))
    np.save(ck / "object.npy", np.array([_Payload(marker)], dtype=object), allow_pickle=True)
    np.savez(ck / "object.npz", x=np.array([_Payload(marker)], dtype=object))
    np.save(ck / "map3d.npy", np.zeros((2, 3, 4, 5), np.float32))
    np.save(ck / "map_nan.npy", np.full((16, 16), np.nan, np.float32))
    (ck / "emptydir").mkdir()
    w["ck"] = ck

    # -- configs --
    cf = root / "configs"
    cf.mkdir()
    configs = {
        "python_object": f"!!python/object/apply:builtins.open ['{marker}', 'w']\n",
        "python_object_in_key": f"train:\n  epochs: !!python/object/apply:builtins.open ['{marker}', 'w']\n",
        "python_name": "model:\n  name: !!python/name:os.system\n",
        "python_new": f"data: !!python/object/new:builtins.open ['{marker}', 'w']\n",
        "python_module": "x: !!python/module:os\n",
        "invalid_yaml": "model: [unclosed\n",
        "tabs": "model:\n\tname: x\n",
        "list_top": "- a\n- b\n",
        "scalar_top": "just a string\n",
        "unknown_section": "nosuchsection:\n  a: 1\n",
        "unknown_key": "optim:\n  nosuchkey: 1\n",
        "section_scalar": "optim: 3\n",
        "wrong_type_lr": "optim:\n  lr: fast\n",
        "wrong_type_epochs": "train:\n  epochs: [1, 2]\n",
        "negative_lr": "optim:\n  lr: -1.0\n",
        "bad_amp": "train:\n  amp: fp8\n",
        "bad_objective": "objective:\n  kind: telepathy\n",
        "kd_no_teacher": "objective:\n  kind: kd\n",
        "bad_ema": "train:\n  ema_decay: 1.5\n",
        "binary_garbage": None,
        "anchor_bomb": "a: &a [1,1,1,1,1,1,1,1,1]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
                       "model: [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n",
    }
    for name, text in configs.items():
        p = cf / f"{name}.yaml"
        if text is None:
            p.write_bytes(b"\x00\xff\xfe\x00garbage")
        else:
            p.write_text(text)
    w["configs"] = cf
    w["config_names"] = list(configs)  # type: ignore[assignment]

    # -- data folders --
    df = root / "data"
    df.mkdir()
    (df / "empty").mkdir()
    (df / "no_classes" / "train").mkdir(parents=True)
    (df / "no_classes" / "train" / "a.png").write_bytes(b"")
    for cls in ("cat", "dog"):
        (df / "empty_classes" / "train" / cls).mkdir(parents=True)
        (df / "empty_classes" / "val" / cls).mkdir(parents=True)
    (df / "broken_images" / "train" / "cat").mkdir(parents=True)
    (df / "broken_images" / "train" / "cat" / "x.png").write_text("not an image")
    (df / "broken_images" / "val" / "cat").mkdir(parents=True)
    (df / "broken_images" / "val" / "cat" / "x.png").write_text("not an image")
    (df / "file_not_dir").write_text("x")
    cifar = df / "cifar_payload" / "cifar-10-batches-py"
    cifar.mkdir(parents=True)
    for f in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
              "batches.meta"]:
        with open(cifar / f, "wb") as fh:
            pickle.dump({"data": _Payload(marker), "labels": [0]}, fh, protocol=2)
    garbage = df / "cifar_garbage" / "cifar-10-batches-py"
    garbage.mkdir(parents=True)
    for f in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
              "batches.meta"]:
        (garbage / f).write_bytes(b"\x80\x04garbage")
    (df / "cifar_missing" / "cifar-10-batches-py").mkdir(parents=True)
    (df / "labels.csv").write_text("path,labels\nnope.png,cat\n")
    (df / "empty.csv").write_text("")
    (df / "badheader.csv").write_text("a,b,c\n1,2,3\n")
    (df / "coco.json").write_text("{broken")
    w["data"] = df

    # -- transfer task files --
    tf = root / "tasks"
    tf.mkdir()
    tasks = {
        "not_yaml": "tasks: [\n",
        "empty": "",
        "no_tasks": "other: 1\n",
        "empty_list": "tasks: []\n",
        "not_mapping": "tasks:\n  - just-a-string\n",
        "no_name": "tasks:\n  - train: builtin:glyphs\n",
        "no_train": "tasks:\n  - name: a\n",
        "unknown_key": "tasks:\n  - name: a\n    train: builtin:glyphs\n    split_test: val\n    colour: red\n",
        "missing_folder": "tasks:\n  - name: a\n    train: imagefolder:does/not/exist\n",
        "unknown_builtin": "tasks:\n  - name: a\n    train: builtin:no-such-task\n",
        "duplicate": "tasks:\n  - {name: a, train: 'builtin:glyphs', split_test: val}\n"
                     "  - {name: a, train: 'builtin:glyphs', split_test: val}\n",
        "negative_size": "tasks:\n  - {name: a, train: 'builtin:glyphs', split_test: val, size: -5}\n",
        "python_tag": f"tasks: !!python/object/apply:builtins.open ['{marker}', 'w']\n",
        "same_split": "tasks:\n  - {name: a, train: 'builtin:glyphs', split_train: train, split_test: train}\n",
        "cifar_payload": f"tasks:\n  - {{name: a, train: 'cifar10:{df / 'cifar_payload'}'}}\n",
    }
    for name, text in tasks.items():
        (tf / f"{name}.yaml").write_text(text)
    w["tasks"] = tf
    w["task_names"] = list(tasks)  # type: ignore[assignment]
    return w


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    old = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"
    root = tmp_path_factory.mktemp("world")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        yield _build_world(root)
    finally:
        os.chdir(cwd)
        if old is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = old


# ----------------------------------------------------------------------------------------------
# The table
# ----------------------------------------------------------------------------------------------

MODEL_CMDS = ("eval", "predict", "diversity", "transfer")


def _model_argv(cmd: str, spec: str, w, out: str) -> list[str]:
    """A command that takes a model spec, with every other argument good."""
    if cmd == "eval":
        return ["eval", spec, "--no-timing", "--no-progress", "--json", f"{out}/eval.json"]
    if cmd == "predict":
        return ["predict", spec, str(w["good"]), "--json", f"{out}/p.json", "--no-progress"]
    if cmd == "diversity":
        return ["diversity", spec, "--out", out, "--num-images", "8"]
    if cmd == "transfer":
        return ["transfer", spec, "--out", out, "--no-cache", "--grid", "smoke", "--no-progress"]
    if cmd == "export":
        return ["export", spec, "--format", "onnx", "--out", f"{out}/model.onnx", "--no-check"]
    raise AssertionError(cmd)


def _help(cmd: str) -> str:
    """``quadformer CMD --help`` (which options a command has)."""
    import contextlib

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.suppress(SystemExit):
        main([cmd, "--help"])
    return buf.getvalue()


def cases(w) -> list[Case]:
    c: list[Case] = []
    root, ck, ims, cf, df, tf = w["root"], w["ck"], w["images"], w["configs"], w["data"], w["tasks"]
    good, run = str(w["good"]), str(w["run"])
    O = "OUT"  # replaced by the case's own output folder
    model_cmds = [m for m in (*MODEL_CMDS, "export") if m in COMMANDS]

    # -- 1. model specs and checkpoint files, for every command taking a model --
    specs = {
        "missing_file": (str(root / "nope" / "last.pt"), "nope"),
        "missing_pt": ("missing.pt", "missing.pt"),
        "unknown_name": ("no_such_model_xyz", "no_such_model_xyz"),
        "empty_string": ("", "neither"),
        "empty_dir": (str(ck / "emptydir"), "emptydir"),
        "hf_hub_offline": ("hf-hub:nobody/no-such-model", "no-such-model"),
        "local_dir_missing": ("local-dir:" + str(root / "nope"), "nope"),
        "data_dir": (str(df / "empty"), "empty"),
        "image_as_model": (good, "good.png"),
    }
    for f in sorted(ck.iterdir()):
        if f.is_file() and f.suffix in (".pt", ".pth", ".safetensors") or f.is_dir() and f.name != "emptydir":
            specs[f.name] = (str(f), f.name)
    # these name the architecture they ask for, the bad value inside the file
    specs["unknown_arch.pt"] = (specs["unknown_arch.pt"][0], "no_such_model_xyz")
    specs["sideunknown"] = (specs["sideunknown"][0], "nope_model")
    for cmd in model_cmds:
        for name, (spec, expect) in specs.items():
            c.append(Case(f"model-{cmd}-{name}", _model_argv(cmd, spec, w, O), expect))

    # -- 2. shared options, every command that has them --
    base = {
        "tokenize": ["tokenize", good, "--json", f"{O}/b.json"],
        "eval": ["eval", run, "--no-timing", "--no-progress"],
        "predict": ["predict", run, good, "--no-progress"],
        "diversity": ["diversity", run, "--out", O, "--num-images", "8"],
        "transfer": ["transfer", run, "--out", O, "--no-cache", "--no-progress"],
        "study": ["study", "diversity-transfer", "--quick", "--out", O],
        "demo": ["demo", "--quick", "--out", O],
        "train": ["train", "--out", O, *MICRO, *TINY_DATA],
        "pretrain": ["pretrain", "--scheme", "supervised", "--out", O, *MICRO, *TINY_DATA],
        "train-scorer": ["train-scorer", "--out", O, *TINY_DATA],
        "export": ["export", run, "--format", "onnx", "--out", f"{O}/m.onnx", "--no-check"],
    }
    opts = [("threads0", ["--threads", "0"], "0"), ("threads-1", ["--threads", "-1"], "-1"),
            ("threadsabc", ["--threads", "abc"], "abc"), ("device-cuda7", ["--device", "cuda:7"], "cuda:7"),
            ("device-tpu", ["--device", "tpu"], "tpu"), ("device-garbage", ["--device", "gpu!"], "gpu!"),
            ("device-cuda", ["--device", "cuda"], "cuda"), ("device-cuda-neg", ["--device", "cuda:-1"], "cuda:-1")]
    for cmd, argv in base.items():
        flags = set(re.findall(r"--[a-z][a-z0-9-]*", _help(cmd)))
        for name, extra, expect in opts:
            if extra[0] in flags:
                if name == "device-cuda" and torch.cuda.is_available():
                    continue
                c.append(Case(f"opt-{cmd}-{name}", argv + extra, expect))
    # per-command numeric options
    numeric = [
        ("eval", ["--batch-sizes", "0"], "0"), ("eval", ["--batch-sizes", "16", "-4"], "-4"),
        ("eval", ["--batch-size", "0"], "0"), ("eval", ["--repeats", "0"], "0"),
        ("eval", ["--num-patches", "0"], "0"), ("eval", ["--num-patches", "5"], "N=5"),
        ("eval", ["--num-patches", "100000"], "100000"), ("eval", ["--data-size", "0"], "0"),
        ("eval", ["--split", "train"], "train"), ("eval", ["--ema", "--arch", "vit_tiny_patch16_224"], "vit_tiny"),
        ("predict", ["--top-k", "0"], "0"), ("predict", ["--top-k", "x"], "x"), ("predict", ["--batch-size", "0"], "0"),
        ("demo", ["--epochs", "0"], "0"), ("demo", ["--train-size", "0"], "0"), ("demo", ["--test-size", "0"], "0"),
        ("demo", ["--epochs", "-2"], "-2"), ("demo", ["--budgets", "0"], "0"), ("demo", ["--budgets", "7", "--scorer", "laplacian"], "N=7"),
        ("demo", ["--task", "no-such-task"], "no-such-task"),
        ("study", ["--resamples", "0"], "0"), ("study", ["--seeds", "0"], "0"), ("study", ["--seeds", "-1"], "-1"),
        ("transfer", ["--batch-size", "0"], "0"), ("transfer", ["--knn-k", "0"], "0"),
        ("transfer", ["--shots", "0"], "0"), ("transfer", ["--draws", "0"], "0"), ("transfer", ["--epochs", "0"], "0"),
        ("transfer", ["--image-size", "0"], "0"), ("transfer", ["--lrs", "abc"], "abc"),
        ("transfer", ["--protocol", "telepathy"], "telepathy"),
        ("diversity", ["--batch-size", "0"], "0"), ("diversity", ["--num-images", "0"], "0"), ("diversity", ["--num-images", "1"], "--num-images 1"),
        ("diversity", ["--image-size", "0"], "0"), ("diversity", ["--model-kwargs", "{broken"], "--model-kwargs"),
        ("diversity", ["--data", "nosuch:thing"], "nosuch:thing"),
    ]
    for cmd, extra, expect in numeric:
        c.append(Case(f"num-{cmd}-{'_'.join(extra)}", base[cmd] + extra, expect))

    # -- 3. images of every broken kind: tokenize (one file) and predict (the only file) --
    for f in sorted(ims.iterdir()):
        c.append(Case(f"image-tokenize-{f.name}", ["tokenize", str(f), "--json", f"{O}/b.json"], f.name))
        c.append(Case(f"image-predict-{f.name}", ["predict", run, str(f), "--no-progress"], f.name))
    c.append(Case("image-tokenize-missing", ["tokenize", str(root / "nope.png")], "nope.png"))
    c.append(Case("image-predict-missing", ["predict", run, str(root / "nope.png")], "nope.png"))
    c.append(Case("image-predict-emptydir", ["predict", run, str(df / "empty")], "empty"))
    c.append(Case("image-predict-only-bad", ["predict", run, str(ims / "text.jpg"), str(ims / "empty.png"),
                                             "--no-progress"], "text.jpg"))

    # -- 4. budgets and geometries --
    geo = [
        (["--budget", "0"], "N=0"), (["--budget", "-1"], "-1"), (["--budget", "1"], "N=1"),
        (["--budget", "17"], "N=17"), (["--budget", "100000"], "100000"), (["--budget", "abc"], "abc"),
        (["--size", "384", "--budget", "100"], "100"), (["--size", "0"], "0"), (["--size", "-256"], "-256"),
        (["--size", "100"], "100"), (["--size", "255"], "255"), (["--min-patch", "0"], "p_min=0"),
        (["--min-patch", "-16"], "-16"), (["--min-patch", "24"], "24"), (["--max-patch", "48"], "48"),
        (["--max-patch", "8"], "8"), (["--max-patch", "0"], "0"), (["--min-patch", "16", "--max-patch", "16"], "16"),
        (["--size", "64", "--max-patch", "128"], "128"), (["--scorer", "oracle"], "oracle"),
        (["--resample", "nearest"], "nearest"), (["--scorer", "precomputed"], "--saliency"),
        (["--saliency", str(ck / "map3d.npy")], "precomputed"),
        (["--scorer", "precomputed", "--saliency", str(ck / "object.npy")], "object.npy"),
        (["--scorer", "precomputed", "--saliency", str(ck / "object.npz")], "object.npz"),
        (["--scorer", "precomputed", "--saliency", str(ck / "map3d.npy")], "shape"),
        (["--scorer", "precomputed", "--saliency", str(ck / "map_nan.npy")], "NaN"),
        (["--scorer", "precomputed", "--saliency", str(ck / "payload.pt")], "payload.pt"),
        (["--scorer", "precomputed", "--saliency", str(ck / "random.pt")], "random.pt"),
        (["--scorer", "precomputed", "--saliency", str(root / "nope.npy")], "nope.npy"),
        (["--scorer", "precomputed", "--saliency", good], "good.png"),
        (["--scorer", "precomputed", "--saliency", str(ck / "map3d.npy"), str(ck / "map3d.npy")], "2 saliency"),
        (["--scorer", "feature", "--scorer-weights", str(root / "nope.safetensors")], "nope.safetensors"),
        (["--scorer", "feature", "--scorer-weights", str(ck / "payload.pt")], "payload.pt"),
        (["--scorer", "feature", "--scorer-weights", str(ck / "text.safetensors")], "text.safetensors"),
        (["--scorer", "feature", "--scorer-weights", str(ck / "other_arch.pth")], "other_arch.pth"),
        (["--scorer", "feature", "--scorer-weights", "torchvision:IMAGENET1K_V1"], "torchvision"),
        (["--scorer", "feature", "--scorer-weights", "nonsense:weights"], "nonsense"),
        (["--scorer", "feature"], "weights"),
        (["--scorer", "distilled"], "weights"),
        (["--scorer", "distilled", "--scorer-weights", str(ck / "other_arch.pth")], "other_arch.pth"),
        (["--scorer", "laplacian", "--scorer-weights", str(ck / "other_arch.pth")], "--scorer-weights"),
        (["--scorer", "feature", "--scorer-weights", "random", "--scorer-kwargs", "tapstride=8"], "'tapstride'"),
        (["--scorer", "feature", "--scorer-weights", "random", "--scorer-kwargs", "tap_stride"], "KEY=VALUE"),
        (["--scorer", "feature", "--scorer-weights", "random", "--scorer-kwargs", "tap_stride=[8"], "'[8'"),
        (["--scorer", "feature", "--scorer-weights", "random", "--scorer-kwargs", "tap_stride=12"], "12"),
        (["--scorer", "feature", "--scorer-weights", "random", "--scorer-kwargs", "input_scale=0"], "input_scale"),
        (["--scorer", "feature", "--scorer-weights", "random", "--scorer-kwargs", "streams=2"], "streams=2"),
        (["--png", str(df / "file_not_dir") + "/m.png"], "file_not_dir"),
        (["--json", str(df / "file_not_dir") + "/b.json"], "file_not_dir"),
        (["--json", str(df / "empty")], "empty"),
    ]
    for extra, expect in geo:
        c.append(Case(f"tokenize-{'_'.join(extra)[-60:]}", ["tokenize", good, *extra], expect))
    for n, expect in (("0", "0"), ("5", "N=5"), ("100000", "100000"), ("-3", "-3")):
        c.append(Case(f"train-num_patches={n}", ["train", "--out", O, *MICRO, *TINY_DATA, f"model.num_patches={n}"],
                      expect))
    # the distilled scorer (issue 10): images smaller than p_max, a teacher of another label space,
    # weights of another architecture
    dist = ["train-scorer", "--kind", "distilled", "--out", O]
    for extra, expect in ((["--image-size", "16"], "16x16"), (["--p-min", "3"], "--p-min 3"),
                          (["--image-size", "64", "--p-max", "48"], "p_max=48"),
                          (["--data", "builtin:dice", "--teacher", run, "--train-size", "16", "--image-size", "32",
                            "--p-min", "4"], "predicts 10 classes")):
        c.append(Case(f"train-scorer-distilled-{'_'.join(extra)[-40:]}", dist + extra, expect))
    for f in (ck / "other_arch.pth", w["export"]):
        kw = f"model.kwargs={{embed_dim: 32, depth: 2, num_heads: 2, scorer: distilled, scorer_kwargs: {{weights: {f}}}}}"
        c.append(Case(f"train-distilled-weights-{f.name}", ["train", "--out", O, *MICRO, *TINY_DATA, kw], f.name))
    # options added with the natural-photo recipe and the fast feature scorer
    c.append(Case("train-negative-shift", ["train", "--out", O, *MICRO, *TINY_DATA, "data.shift=-3"], "data.shift=-3"))
    kw = "model.kwargs={embed_dim: 32, depth: 2, num_heads: 2, scorer: feature, scorer_kwargs: {precision: fp8}}"
    c.append(Case("train-feature-precision", ["train", "--out", O, *MICRO, *TINY_DATA, kw], "'fp8'"))
    for bad, expect in (("input_scale: 0", "input_scale"), ("normalize: max", "'max'")):
        kw = f"model.kwargs={{embed_dim: 32, depth: 2, num_heads: 2, scorer: feature, scorer_kwargs: {{{bad}}}}}"
        c.append(Case(f"train-feature-{bad.split(':')[0]}", ["train", "--out", O, *MICRO, *TINY_DATA, kw], expect))

    # -- 5. configs and overrides: train, pretrain, train-scorer --
    cfg_cmds = {
        "train": ["train", "--out", O, *MICRO, *TINY_DATA],
        "pretrain": ["pretrain", "--scheme", "supervised", "--out", O, *MICRO, *TINY_DATA],
        "train-scorer": ["train-scorer", "--out", O, *TINY_DATA],
    }
    for cmd, argv in cfg_cmds.items():
        for name in w["config_names"]:
            expect = "'a'" if name == "anchor_bomb" else f"{name}.yaml" if name not in (
                "unknown_key", "wrong_type_lr", "wrong_type_epochs", "negative_lr", "zero_epochs", "zero_batch",
                "bad_amp", "bad_objective", "kd_no_teacher", "bad_ema", "unknown_section", "section_scalar") else {
                "unknown_key": "nosuchkey", "wrong_type_lr": "fast", "wrong_type_epochs": "epochs",
                "negative_lr": "-1", "bad_amp": "fp8",
                "bad_objective": "telepathy", "kd_no_teacher": "teacher", "bad_ema": "1.5",
                "unknown_section": "nosuchsection", "section_scalar": "optim"}[name]
            if cmd == "train" or name not in ("bad_objective", "kd_no_teacher"):
                c.append(Case(f"config-{cmd}-{name}", argv[:1] + ["--config", str(cf / f"{name}.yaml")] + argv[1:],
                              expect))
        c.append(Case(f"config-{cmd}-missing", argv[:1] + ["--config", str(cf / "nope.yaml")] + argv[1:], "nope.yaml"))
        c.append(Case(f"config-{cmd}-dir", argv[:1] + ["--config", str(cf)] + argv[1:], "configs"))
        overrides = [
            ("no_equals", "optim.lr", "optim.lr"), ("no_section", "lr=0.1", "'lr'"),
            ("unknown_section", "nosuch.x=1", "nosuch"), ("unknown_key", "optim.nosuch=1", "nosuch"),
            ("bad_float", "optim.lr=abc", "abc"), ("bad_int", "train.epochs=1.5", "1.5"),
            ("bad_bool", "data.augment=maybe", "maybe"), ("bad_kwargs", "model.kwargs={broken", "broken"),
            ("tag_kwargs", f"model.kwargs=!!python/object/apply:builtins.open ['{w['marker']}', 'w']", "kwargs"),
            ("deep_key", "optim.lr.x=1", "optim.lr"), ("empty_key", "=1", "''"),
            ("zero_epochs", "train.epochs=0", "epochs"), ("zero_batch", "data.batch_size=0", "batch_size"),
            ("negative_epochs", "train.epochs=-1", "epochs"), ("nan_lr", "optim.lr=nan", "lr"),
            ("unknown_model", "model.name=no_such_model_xyz", "no_such_model_xyz"),
            ("hub_model", "model.name=hf-hub:nobody/no-such-model", "no-such-model"),
            ("local_dir_model", f"model.name=local-dir:{root / 'nope'}", "nope"),
            ("bad_kwarg", "model.kwargs={no_such_kwarg: 1}", "no_such_kwarg"),
            ("bad_data", "data.train=nosuch:thing", "nosuch:thing"),
            ("bad_builtin", "data.train=builtin:no-such-task", "no-such-task"),
            ("image_size_small", "data.image_size=8", "8"),
        ]
        for name, ov, expect in overrides:
            if cmd == "train-scorer" and name in ("unknown_model", "bad_kwarg", "hub_model", "local_dir_model"):
                continue
            c.append(Case(f"override-{cmd}-{name}", argv + [ov], expect))
    # resume, init and vanilla checkpoints in train
    for name in ("empty.pt", "random.pt", "truncated.pt", "payload.pt", "payload_zip.pt", "text.pt", "list.pt"):
        c.append(Case(f"train-resume-{name}", ["train", "--out", O, *MICRO, *TINY_DATA, "--resume", str(ck / name)],
                      name))
        c.append(Case(f"train-vanilla-{name}", ["train", "--out", O, *MICRO, *TINY_DATA,
                                                f"model.vanilla_checkpoint={ck / name}"], name))
        c.append(Case(f"train-init-{name}", ["train", "--out", O, *MICRO, *TINY_DATA,
                                             f"model.init_checkpoint={ck / name}"], name))
    c.append(Case("train-resume-missing", ["train", "--out", O, *MICRO, *TINY_DATA, "--resume", "nope.pt"], "nope.pt"))
    c.append(Case("train-out-is-file", ["train", "--out", str(df / "file_not_dir"), *MICRO, *TINY_DATA], "file_not_dir"))
    c.append(Case("train-out-under-file", ["train", "--out", str(df / "file_not_dir" / "x"), *MICRO, *TINY_DATA],
                  "file_not_dir"))
    for name in ("payload.pt", "random.pt", "nope.safetensors"):
        c.append(Case(f"pretrain-teacher-{name}", ["pretrain", "--scheme", "supervised-kd", "--out", O, *MICRO,
                                                   *TINY_DATA, "--teacher", str(ck / name)], name))
    c.append(Case("pretrain-stage-a-missing", ["pretrain", "--scheme", "ssl-then-supervised", "--out", O, *MICRO,
                                               *TINY_DATA, "--stage-a", str(root / "nope")], "nope"))
    c.append(Case("pretrain-bad-scheme", ["pretrain", "--scheme", "telepathy", "--out", O], "telepathy"))
    c.append(Case("pretrain-out-is-file", ["pretrain", "--scheme", "supervised", "--out", str(df / "file_not_dir"),
                                           *MICRO, *TINY_DATA], "file_not_dir"))

    # -- 6. data folders: train (data.train) and eval (--data) --
    data_specs = {
        "empty_imagefolder": (f"imagefolder:{df / 'empty'}", "empty"),
        "no_classes": (f"imagefolder:{df / 'no_classes'}", "no_classes"),
        "empty_classes": (f"imagefolder:{df / 'empty_classes'}", "empty_classes"),
        "broken_images": (f"imagefolder:{df / 'broken_images'}", "broken_images"),  # train: names the batch size
        "missing_folder": (f"imagefolder:{root / 'nope'}", "nope"),
        "file_as_folder": (f"imagefolder:{df / 'file_not_dir'}", "file_not_dir"),
        "cifar_payload": (f"cifar10:{df / 'cifar_payload'}", "cifar_payload"),
        "cifar_garbage": (f"cifar10:{df / 'cifar_garbage'}", "cifar_garbage"),
        "cifar_missing": (f"cifar10:{df / 'cifar_missing'}", "cifar_missing"),
        "cifar100_empty": (f"cifar100:{df / 'empty'}", "empty"),
        "csv_missing_images": (f"csv:{df / 'labels.csv'}", "labels.csv"),
        "csv_empty": (f"csv:{df / 'empty.csv'}", "empty.csv"),
        "csv_badheader": (f"csv:{df / 'badheader.csv'}", "badheader.csv"),
        "csv_missing": (f"csv:{df / 'nope.csv'}", "nope.csv"),
        "coco_broken": (f"coco:{df / 'coco.json'}", "coco.json"),
        "voc_empty": (f"voc2007:{df / 'empty'}", "empty"),
        "unknown_scheme": ("nosuch:thing", "nosuch:thing"),
        "unknown_builtin": ("builtin:no-such-task", "no-such-task"),
        "empty_scheme": ("imagefolder:", "imagefolder"),
        "other_task": ("builtin:dice", "dice"),
    }
    for name, (spec, expect) in data_specs.items():
        if name != "other_task":
            # a folder of only unreadable files is found out while loading: the batch-size check names it
            t_expect = "data.batch_size" if name in ("broken_images", "csv_missing_images") else expect
            c.append(Case(f"data-train-{name}", ["train", "--out", O, *MICRO, *TINY_DATA, f"data.train={spec}"],
                          t_expect))
        c.append(Case(f"data-eval-{name}", ["eval", run, "--no-timing", "--data", spec], expect))
    c.append(Case("data-train-val-other", ["train", "--out", O, *MICRO, *TINY_DATA, f"data.val={data_specs['empty_classes'][0]}"],
                  "empty_classes"))

    # -- 7. transfer task files --
    for name in w["task_names"]:
        c.append(Case(f"tasks-{name}", ["transfer", run, "--out", O, "--no-cache", "--tasks", str(tf / f"{name}.yaml")],
                      f"{name}.yaml" if name not in ("cifar_payload",) else "cifar_payload"))
    c.append(Case("tasks-missing", ["transfer", run, "--out", O, "--tasks", str(tf / "nope.yaml")], "nope.yaml"))
    c.append(Case("tasks-dir", ["transfer", run, "--out", O, "--tasks", str(tf)], "tasks"))

    # -- 8. output paths of every command --
    blocked = str(df / "file_not_dir")
    outs = [
        ("eval", ["eval", run, "--no-timing", "--json", blocked + "/r.json"]),

        ("predict-csv", ["predict", run, good, "--csv", blocked + "/p.csv"]),
        ("predict-json", ["predict", run, good, "--json", blocked + "/p.json"]),
        ("predict-mosaics", ["predict", run, good, "--mosaics", blocked]),
        ("diversity", ["diversity", run, "--out", blocked, "--num-images", "8"]),
        ("transfer", ["transfer", run, "--out", blocked, "--no-cache"]),
        ("study", ["study", "diversity-transfer", "--quick", "--out", blocked]),
        ("demo", ["demo", "--quick", "--out", blocked]),
        ("train-scorer", ["train-scorer", "--out", blocked, *TINY_DATA]),
        ("transfer-cache", ["transfer", run, "--out", O, "--cache-dir", blocked]),
    ]
    for name, argv in outs:
        c.append(Case(f"out-{name}", argv, "file_not_dir"))
    c.append(Case("out-eval-json-is-dir", ["eval", run, "--no-timing", "--json", str(df / "empty")], "empty"))

    if "export" in COMMANDS:
        exp = ["export", run, "--format", "onnx", "--out", f"{O}/m.onnx", "--no-check"]
        for name, extra, expect in [("format", ["--format", "tflite"], "tflite"), ("budget0", ["--num-patches", "0"], "0"),
                                    ("budget5", ["--num-patches", "5"], "N=5"), ("batch0", ["--batch-size", "0"], "0"),
                                    ("arch", ["--arch", "vit_tiny_patch16_224"], "vit_tiny_patch16_224")]:
            c.append(Case(f"export-{name}", exp + extra, expect))
        c.append(Case("export-out-is-dir", ["export", run, "--format", "onnx", "--out", str(df / "empty")], "empty"))
        c.append(Case("export-out-under-file", ["export", run, "--format", "pt2", "--out", blocked + "/m.pt2"],
                      "file_not_dir"))

    # -- 9. unknown arguments and commands --
    c.append(Case("argv-unknown-command", ["no-such-command"], "no-such-command"))
    for cmd in COMMANDS:
        c.append(Case(f"argv-{cmd}-unknown-flag", [*base.get(cmd, [cmd]), "--no-such-flag"], "--no-such-flag"))
    seen: dict[str, int] = {}
    for case in c:  # ids stay readable; repeated ones get a number
        seen[case.id] = seen.get(case.id, 0) + 1
        if seen[case.id] > 1:
            case.id = f"{case.id}#{seen[case.id]}"
    return c


# ----------------------------------------------------------------------------------------------
# The runner
# ----------------------------------------------------------------------------------------------


_BAR = re.compile(r"\d+%\|")


def _snapshot(root: Path, skip: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for p in root.rglob("*"):
        if skip in p.parents or p == skip:
            continue
        try:
            st = p.lstat()
        except FileNotFoundError:
            continue
        out[str(p)] = (st.st_size, st.st_mtime_ns) if p.is_file() else (-1, 0)
    return out


def _run_case(case: Case, w, outs: Path, capsys) -> str | None:
    """None when the case is handled as promised, else what went wrong."""
    out = outs / case.id.replace("/", "_")[:120]
    argv = [a.replace("OUT", str(out)) for a in case.argv]
    before = _snapshot(w["root"], outs)
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    except BaseException as e:  # noqa: BLE001 - a traceback is what the corpus catches
        import traceback

        if w["marker"].exists():
            w["marker"].unlink()
            return f"CODE EXECUTED and raised {type(e).__name__}"
        return f"raised {type(e).__name__}: {str(e)[:200]}\n" + "".join(traceback.format_exc().splitlines(True)[-4:])
    cap = capsys.readouterr()
    err = cap.err
    # progress bars (redrawn with \r) are not messages; every other line counts
    lines = [ln for ln in err.splitlines() if ln.strip() and "\r" not in ln and not _BAR.search(ln)]
    problems = []
    if rc in (0, None):
        problems.append(f"exit code {rc}")
    if len(lines) != 1:
        problems.append(f"{len(lines)} stderr lines")
    if "Traceback" in err:
        problems.append("traceback")
    if lines and case.expect.lower() not in lines[-1].lower():
        problems.append(f"message does not name {case.expect!r}")
    if w["marker"].exists():
        w["marker"].unlink()
        problems.append("CODE EXECUTED (marker file written)")
    after = _snapshot(w["root"], outs)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    if changed:
        problems.append(f"changed outside the output folder: {changed[:3]}")
    if problems:
        return "; ".join(problems) + f"\n    stderr: {err.strip()[:400]!r}"
    return None


def test_bad_input_corpus(world, tmp_path, capsys, monkeypatch):
    """Every case handled: exit != 0, one stderr line naming the value, nothing else touched."""
    root_logger = logging.getLogger()
    handler = _StderrNow()
    saved = root_logger.handlers[:]
    root_logger.handlers = [handler]
    root_logger.setLevel(logging.WARNING)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    table = cases(world)
    assert len({c.id for c in table}) == len(table), "case ids must be unique"
    outs = world["root"] / "outs"
    outs.mkdir(exist_ok=True)
    failures, xfails = {}, {}
    durations: dict[str, float] = {}
    try:
        for case in table:
            logging.getLogger().setLevel(logging.WARNING)
            t0 = time.perf_counter()
            problem = _run_case(case, world, outs, capsys)
            durations[case.id] = time.perf_counter() - t0
            if problem is not None:
                (xfails if case.xfail else failures)[case.id] = problem
    finally:
        root_logger.handlers = saved
    n = len(table)
    handled = n - len(failures) - len(xfails)
    with capsys.disabled():
        print(f"\nbad-input corpus: {n} cases, {handled} handled ({100.0 * handled / n:.1f}%), "
              f"{len(xfails)} known failures (xfail), {len(failures)} failures; "
              f"{sum(durations.values()):.1f} s in the cases")
        kinds: dict[str, int] = {}
        for case in table:
            kinds[case.id.split("-")[0]] = kinds.get(case.id.split("-")[0], 0) + 1
        print("  by kind: " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])))
        if os.environ.get("QUADFORMER_CORPUS_TIMES"):
            for k in sorted(durations, key=durations.get, reverse=True)[:25]:
                print(f"  {durations[k]:6.2f} s  {k}")
        for k, v in {**failures}.items():
            print(f"  FAIL {k}: {v}")
    assert n >= 300
    assert not failures, f"{len(failures)} of {n} bad inputs not handled: {sorted(failures)[:20]}"
