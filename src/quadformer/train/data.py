"""The training engine's data side: datasets of a config, seeded per-sample randomness and the
per-epoch loader that a mid-epoch resume re-enters at the right batch."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from ..utils.errors import QuadformerError
from .config import Config


class SeededItems(Dataset):
    """Makes random per-sample transforms a function of (seed, epoch, index): independent of
    worker count, world size and resume point. The global RNG state is left untouched."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int):
        s = (self.seed * 1_000_003 + self.epoch * 10_007 + index) % (2**63 - 1)
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(s)
            random.seed(s)
            np.random.seed(s % 2**32)  # some augmentations (lightly's blur, solarise) draw from numpy
            item = self.dataset[index]
        random.setstate(py_state)
        np.random.set_state(np_state)
        return item


class SkipSampler(Sampler):
    """Skips the first ``skip`` indices of ``sampler`` (mid-epoch resume)."""

    def __init__(self, sampler: Sampler, skip: int) -> None:
        self.sampler, self.skip = sampler, skip

    def __iter__(self) -> Iterator[int]:
        it = iter(self.sampler)
        for _ in range(self.skip):
            next(it, None)
        return it

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)  # type: ignore[arg-type]


@dataclass
class DataBundle:
    train: Dataset
    val: Dataset
    num_classes: int
    multilabel: bool
    class_names: list[str]


def build_dataset(source: str, split: str, size: int | None, augment: bool, image_size: int, seed: int,
                  cache_dir: str | None, shift: int = 0) -> Dataset:
    """One split of a data source. Real data gets timm's training augmentation only when
    ``augment`` (else the evaluation transform); built-in data none, or with ``shift`` a random
    translation by up to that many pixels, the uncovered border at the mean colour (label-safe on
    the natural-photo tasks, where flips swap classes and resizing removes the texture)."""
    from ..data import build_dataset as factory
    from ..data import create_transforms

    real = not source.startswith("builtin:")
    transform: Any = "auto"
    if real and not (augment and split == "train"):
        transform = create_transforms(image_size, is_training=False)
    if not real and shift:
        from torchvision.transforms import RandomCrop

        transform = RandomCrop(image_size, padding=shift, fill=0)  # 0 = the mean after normalisation
    try:
        return factory(source, split, image_size, transform=transform, size=size, seed=seed,
                       cache_dir=None if real else cache_dir)
    except KeyError as e:
        raise QuadformerError(str(e.args[0]) if e.args else str(e)) from None


def build_data(cfg: Config) -> DataBundle:
    """The train and val splits a config names."""
    d = cfg.data
    common = dict(image_size=d.image_size, seed=d.data_seed, cache_dir=d.cache_dir)
    train = build_dataset(d.train, "train", size=d.train_size, augment=d.augment, shift=d.shift, **common)
    val = build_dataset(d.val or d.train, "val", size=d.val_size, augment=False, **common)
    info = getattr(train, "num_classes", None)
    if info is None:
        raise QuadformerError(f"data source {d.train!r} does not report num_classes")
    return DataBundle(train, val, int(train.num_classes), bool(getattr(train, "multilabel", False)),
                      list(getattr(train, "class_names", [])))


def training_items(cfg: Config, data: DataBundle) -> SeededItems:
    """The training set as the loop sees it: multi-view for SSL objectives, seeded per item."""
    from .objectives import views_transform

    train_set = data.train
    if cfg.objective.kind in ("ssl", "joint"):
        from ..data.views import ViewsDataset

        train_set = ViewsDataset(train_set, views_transform(cfg.objective, cfg.data.image_size))
    return SeededItems(train_set, cfg.seed)


def epoch_loader(items: SeededItems, sampler: DistributedSampler, epoch: int, skip_steps: int, per_rank: int,
                 num_workers: int, pin_memory: bool) -> DataLoader:
    """This process's batches of ``epoch``, from batch ``skip_steps`` on (DDP: the global batch
    ``s`` is the same images for every world size, so a run may resume on another one)."""
    sampler.set_epoch(epoch)
    items.epoch = epoch
    return DataLoader(items, batch_size=per_rank, sampler=SkipSampler(sampler, skip_steps * per_rank),
                      num_workers=num_workers, drop_last=True, persistent_workers=False, pin_memory=pin_memory)
