"""The natural-photo recipe's configs (docs/recipe.md): they load, the documented overrides are
valid, and the two steps (glyph pretraining, fine-tuning with the distilled scorer) run end to end
at tiny sizes, on built-in data and on an image folder."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from quadformer.train import load_config, train
from quadformer.utils.errors import QuadformerError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RECIPE, PRETRAIN = CONFIGS / "recipe_natural.yaml", CONFIGS / "recipe_pretrain_glyphs.yaml"
TINY = ["data.batch_size=8", "data.val_size=8", "train.epochs=1", "optim.warmup_epochs=0", "train.progress=false",
        "output.tensorboard=false"]


def test_recipe_configs_load_with_the_documented_overrides(tmp_path):
    pre = load_config(PRETRAIN)
    cfg = load_config(RECIPE)
    assert pre.data.train == "builtin:glyphs" and pre.model.kwargs["scorer"] == "pixel-blur"
    assert cfg.model.name == pre.model.name  # the fine-tune keeps the pretrained backbone
    assert cfg.model.init_checkpoint == str(Path(pre.output.dir) / "last.pt")
    assert cfg.model.kwargs["scorer"] == "distilled" and cfg.data.augment and cfg.data.shift > 0
    assert cfg.data.train_size is None  # an image folder is used whole
    user = load_config(RECIPE, ["data.train=imagefolder:some/dir", "model.num_patches=100", "train.epochs=20"])
    assert (user.data.train, user.model.num_patches, user.train.epochs) == ("imagefolder:some/dir", 100, 20)
    with pytest.raises(QuadformerError, match="unknown config key 'data.augmentation'"):
        load_config(RECIPE, ["data.augmentation=true"])


@pytest.fixture(scope="module")
def steps(tmp_path_factory):
    """Step 1 (pretraining) and a scorer file as step 2 writes it (an untrained student)."""
    from quadformer.tokenize.scorers import SaliencyNet, save_saliency_net

    tmp = tmp_path_factory.mktemp("recipe")
    pre = load_config(PRETRAIN, TINY + ["data.train_size=16", f"output.dir={tmp / 'pre'}",
                                        f"data.cache_dir={tmp / 'cache'}"])
    train(pre)
    torch.manual_seed(0)
    scorer = save_saliency_net(SaliencyNet((8, 16, 32), 8), tmp / "scorer.safetensors",
                               extra={"data": "builtin:natural-3k"})
    return tmp, [f"model.init_checkpoint={tmp / 'pre' / 'last.pt'}",
                 f"model.kwargs={{global_pool: max, scorer: distilled, scorer_kwargs: {{weights: {scorer}}}}}"]


def test_recipe_fine_tunes_on_the_natural_photos(steps):
    tmp, over = steps
    cfg = load_config(RECIPE, TINY + over + ["data.train_size=16", f"output.dir={tmp / 'nat'}",
                                             f"data.cache_dir={tmp / 'cache'}"])
    res = train(cfg)
    assert 0 <= res["val_top1"] <= 100 and res["gmacs"] > 0
    with open(tmp / "nat" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and float(rows[0]["train_loss"]) > 0
    assert (tmp / "nat" / "model.safetensors").is_file()


def test_recipe_fine_tunes_on_an_image_folder_with_augmentation(steps):
    from PIL import Image

    tmp, over = steps
    root = tmp / "folder"
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 2)):
        for c in ("cat", "dog"):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (150, 170, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")
    cfg = load_config(RECIPE, TINY + over + [f"data.train=imagefolder:{root}", "data.val_size=null",
                                             f"output.dir={tmp / 'folder_run'}"])
    res = train(cfg)
    assert res["epoch"] == 1 and 0 <= res["val_top1"] <= 100
    from quadformer.train.checkpoint import load_checkpoint

    assert load_checkpoint(tmp / "folder_run" / "last.pt")["num_classes"] == 2  # a new head for the new classes


def test_shift_translates_built_in_training_images_reproducibly():
    from quadformer.train.data import SeededItems, build_dataset

    plain = build_dataset("builtin:glyphs", "train", 4, False, 64, 0, None)
    shifted = SeededItems(build_dataset("builtin:glyphs", "train", 4, False, 64, 0, None, shift=6), seed=0)
    x0, (x1, y1) = plain[2][0], shifted[2]
    assert y1 == plain[2][1] and torch.equal(shifted[2][0], x1)  # same (seed, epoch, index): same view
    found = [(dy, dx) for dy in range(-6, 7) for dx in range(-6, 7)
             if torch.equal(torch.roll(x0, (dy, dx), (1, 2))[:, 6:-6, 6:-6], x1[:, 6:-6, 6:-6])]
    assert len(found) == 1 and found[0] != (0, 0)  # a pure translation (no resize, no flip)
    shifted.epoch = 1
    assert not torch.equal(shifted[2][0], x1)  # another epoch, another shift
    with pytest.raises(QuadformerError, match=r"data.shift=-1 must be >= 0"):
        load_config(RECIPE, ["data.shift=-1"])
