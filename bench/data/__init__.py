"""The data path: one interface over three sources, held whole in memory as uint8.

    data = load_data(DataSpec(source="../shared/data/cifar10-jpeg.tar.gz"))
    data = data.to(device)
    for x, y in data.batches("train", 128, augment=parse_augment("crop+flip"), generator=g):
        ...

Batches are made by indexing the on-device tensors; augmentation runs on whole
batches (bench.data.augment). Nothing here runs at import time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bench.data.augment import AUGMENTS, PREPROCESS, Normalizer, augment_batch, parse_augment
from bench.data.cache import cached, default_cache_dir
from bench.data.sources import (
    CIFAR10_CLASSES,
    RawData,
    cifar10_files,
    folder_fingerprint,
    make_synthetic,
    read_cifar10,
    read_folder,
)
from bench.errors import UserError

__all__ = ["AUGMENTS", "PREPROCESS", "DataSpec", "Dataset", "load_data", "parse_augment", "default_data_source"]

NAMED_SOURCES = ("cifar10", "synthetic")


def default_data_source() -> str:
    """`$BENCH_DATA` when set (a folder copy, say), else the official CIFAR-10."""
    return os.environ.get("BENCH_DATA", "cifar10")


def default_data_root() -> str:
    return os.environ.get("BENCH_DATA_ROOT", "data")


@dataclass(frozen=True)
class DataSpec:
    source: str = "cifar10"  # cifar10 | synthetic | path to an ImageFolder tree or .tar.gz
    root: str = "data"  # where cifar-10-batches-py/ lives (or is downloaded to)
    image_size: int = 32  # folder images are resized to this side on decode
    train_per_class: int | None = None  # stratified subset of the training split
    test_per_class: int | None = None
    preprocess: str = "standardize"  # standardize | meanonly
    synthetic_train: int = 5000  # images in the synthetic source's splits
    synthetic_test: int = 1000
    download: bool = True

    def kind(self) -> str:
        if self.source in NAMED_SOURCES:
            return self.source
        return "folder"


@dataclass
class Dataset:
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]
    normalizer: Normalizer
    provenance: dict = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return self.train_x.device

    def to(self, device) -> "Dataset":
        return Dataset(
            self.train_x.to(device), self.train_y.to(device), self.test_x.to(device), self.test_y.to(device),
            self.classes, self.normalizer.to(device), self.provenance,
        )

    def batches(self, split: str, batch_size: int, *, augment: frozenset[str] = frozenset(),
                generator: torch.Generator | None = None):
        """Yield normalised (x, y) batches; shuffled and augmented when a generator is given."""
        x_all, y_all = (self.train_x, self.train_y) if split == "train" else (self.test_x, self.test_y)
        n = len(y_all)
        order = torch.randperm(n, generator=generator, device=self.device) if generator is not None else None
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size] if order is not None else slice(start, start + batch_size)
            x = self.normalizer(x_all[idx])
            if augment and generator is not None:  # unseeded draws would make runs irreproducible
                x = augment_batch(x, augment, self.normalizer, generator)
            yield x, y_all[idx]

    def num_batches(self, split: str, batch_size: int) -> int:
        n = len(self.train_y if split == "train" else self.test_y)
        return -(-n // batch_size)


def _stratified(x: torch.Tensor, y: torch.Tensor, per_class: int | None, classes: list[str], split: str,
                seed: int = 0):
    """The first `per_class` images of each class under a fixed shuffle (the same for every run).

    Exactly `per_class` of every class, or an error: a quietly smaller class would skew the subset.
    """
    if per_class is None:
        return x, y
    if per_class < 1:
        raise UserError(f"per-class subset must be at least 1, got {per_class}")
    counts = torch.bincount(y, minlength=len(classes))
    short = int(counts.argmin())
    if counts[short] < per_class:
        raise UserError(f"the {split} split has {int(counts[short])} images of class {classes[short]!r}, fewer than "
                        f"the {per_class} per class asked for; pass --{split}-per-class {int(counts[short])} or less")
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(y), generator=g)
    keep = torch.cat([order[y[order] == c][:per_class] for c in range(len(classes))])
    keep = keep.sort().values
    return x[keep], y[keep]


def _read(spec: DataSpec, cache_dir: Path | None) -> tuple[RawData, dict]:
    kind = spec.kind()
    if kind == "synthetic":
        n_classes = len(CIFAR10_CLASSES)  # large enough for any per-class subset asked for
        raw = make_synthetic(max(spec.synthetic_train, n_classes * (spec.train_per_class or 0)),
                             max(spec.synthetic_test, n_classes * (spec.test_per_class or 0)), spec.image_size)
        return raw, {"data_source": "synthetic", "data_key": None}
    if kind == "cifar10":
        if spec.image_size not in (None, 32):
            raise UserError(f"the cifar10 source is 32x32 but the model takes {spec.image_size}x{spec.image_size}: "
                            f"pass --data PATH (a folder is decoded at the model's size) or a 32x32 model")
        root = Path(spec.root)
        files = cifar10_files(root)
        if all(f.exists() for f in files):
            fp = [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files]
            raw, key = cached("cifar10", fp, lambda: read_cifar10(root, spec.download), cache_dir)
        else:  # torchvision downloads (or the user gets the how-to-fix message)
            raw = read_cifar10(root, spec.download)
            key = None
        return raw, {"data_source": "cifar10", "data_path": str(root.resolve()), "data_key": key}
    path = Path(spec.source).expanduser()
    fp = [folder_fingerprint(path), spec.image_size]
    raw, key = cached("folder", fp, lambda: read_folder(path, spec.image_size), cache_dir)
    return raw, {"data_source": f"folder:{path.name}", "data_path": str(path.resolve()), "data_key": key}


def load_data(spec: DataSpec, cache_dir: Path | None | str = "default") -> Dataset:
    """Read (or load from cache) a source, take the subsets and fit normalisation on train."""
    if cache_dir == "default":
        cache_dir = default_cache_dir()
    raw, prov = _read(spec, cache_dir)
    trx, try_ = _stratified(raw.train_x, raw.train_y, spec.train_per_class, raw.classes, "train")
    tex, tey = _stratified(raw.test_x, raw.test_y, spec.test_per_class, raw.classes, "test")
    norm = Normalizer.fit(trx, spec.preprocess)
    prov.update(
        classes=len(raw.classes), train_images=len(try_), test_images=len(tey),
        train_per_class=spec.train_per_class, test_per_class=spec.test_per_class, preprocess=spec.preprocess,
    )
    return Dataset(trx, try_, tex, tey, list(raw.classes), norm, prov)
