"""The data path: one interface over three sources, held whole in memory as uint8.

    data = load_data(DataSpec(source="../shared/data/cifar10-jpeg.tar.gz", val_size=5000))
    data = data.to(device)
    for x, y in data.batches("train", 128, augment=parse_augment("crop+flip"), generator=g):
        ...
    for x, y in data.batches("val", 1000): ...         # held out of train; also "test"
    for x, y in data.batches("train_eval", 1000): ...  # training images, never augmented

Splits, in the order they are drawn (bench.data.splits), each seeded by `data_seed`:
1. `val`: a stratified hold-out of `val_size` images from the FULL training split,
   so it stays the same when `train_per_class` changes;
2. `train`: the rest, or exactly `train_per_class` of each class of the rest;
3. `test`: the source's test split, or `test_per_class` of each class;
4. `train_eval`: a stratified sample of `train_eval_size` training images (indices
   into `train`), for the clean training error: evaluated like `test`.
Normalisation and the PCA colour statistics are fitted on `train` only.

A model registered as taking crops (`register_model(..., crop_from=32)`: cuda-convnet's
24x24 nets) is fed crops of images held at 32x32, from any source: every batch is cut to
the model's side, a random window in training with `crop` augmentation, the centre window
otherwise and in every evaluation split (`Dataset.crop_size`, from `DataSpec.crop_size`).

Batches are made by indexing the on-device tensors; augmentation runs on whole
batches (bench.data.augment). Nothing here runs at import time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bench.cache_dir import default_cache_dir
from bench.data import splits
from bench.data.augment import AUGMENTS, PREPROCESS, Normalizer, augment_batch, center_crop, parse_augment
from bench.data.cache import cached, check_cache_dir
from bench.data.sources import (
    CIFAR10_CLASSES,
    RawData,
    cifar10_files,
    folder_fingerprint,
    make_synthetic,
    mixed_sizes_message,
    read_cifar10,
    read_folder,
)
from bench.errors import UserError

log = logging.getLogger(__name__)

__all__ = [
    "AUGMENTS",
    "PREPROCESS",
    "SPLITS",
    "DataSpec",
    "Dataset",
    "load_data",
    "parse_augment",
]

NAMED_SOURCES = ("cifar10", "synthetic")
SPLITS = ("train", "val", "test", "train_eval")
SYNTHETIC_TRAIN, SYNTHETIC_TEST = 5000, 1000  # the synthetic source's split sizes when nothing else is asked
# The default validation split (val_size None): a tenth of the full training split, at most 5,000 images,
# so CIFAR-10's 50,000 give 5,000 and a folder of 5,000 images 500.
AUTO_VAL_SHARE, AUTO_VAL_MAX = 0.1, 5000
CIFAR10_SIDE = 32  # the cifar10 source's images


@dataclass(frozen=True)
class DataSpec:
    source: str = "cifar10"  # cifar10 | synthetic | path to an ImageFolder tree or .tar.gz
    root: str = "data"  # where cifar-10-batches-py/ lives (or is downloaded to)
    image_size: int | None = 32  # side images are decoded to: the model's input (None: a folder's own size)
    explicit_image_size: int | None = None  # the user's --image-size: lets a folder of mixed sizes be resized
    train_per_class: int | None = None  # stratified subset of the training split (after the validation hold-out)
    test_per_class: int | None = None
    # images held out of the full training split for validation; 0: no validation split; None: the
    # default, a tenth of the full training split, at most 5,000 (`auto_val_size`)
    val_size: int | None = 0
    train_eval_size: int = 5000  # training images in the clean (un-augmented) train_eval split; capped at train
    data_seed: int = 0  # seeds every draw: hold-out, per-class subsets, train_eval
    preprocess: str = "standardize"  # standardize | meanonly
    synthetic_train: int | None = None  # synthetic training images; None: 5,000, or what train_per_class asks
    synthetic_test: int | None = None  # None: 1,000, or what test_per_class asks
    crop_size: int | None = None  # batches are cut to this side (the model's input) from image_size images
    download: bool = True

    def kind(self) -> str:
        if self.source in NAMED_SOURCES:
            return self.source
        return "folder"


@dataclass
class Dataset:
    """A data set in memory as uint8 tensors, split and ready to batch; `provenance` records how it was made."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]
    normalizer: Normalizer
    provenance: dict = field(default_factory=dict)
    val_x: torch.Tensor | None = None  # None: no validation split (val_size 0)
    val_y: torch.Tensor | None = None
    train_eval_idx: torch.Tensor | None = None  # indices into train_x; None: all of train
    crop_size: int | None = None  # side batches are cut to (random window or centre); None: whole images

    @property
    def device(self) -> torch.device:
        return self.train_x.device

    def to(self, device) -> Dataset:
        def move(t):
            return None if t is None else t.to(device)

        return Dataset(
            self.train_x.to(device),
            self.train_y.to(device),
            self.test_x.to(device),
            self.test_y.to(device),
            self.classes,
            self.normalizer.to(device),
            self.provenance,
            move(self.val_x),
            move(self.val_y),
            move(self.train_eval_idx),
            self.crop_size,
        )

    def has(self, split: str) -> bool:
        """Whether `split` holds images: the loop evaluates `val` only when one was held out."""
        return self.size(split) > 0

    def size(self, split: str) -> int:
        return len(self._split(split)[1])

    def _split(self, split: str):
        """(images, labels, indices or None) of a split; `train_eval` indexes into train."""
        if split == "train":
            return self.train_x, self.train_y, None
        if split == "test":
            return self.test_x, self.test_y, None
        if split == "val":
            if self.val_x is None:
                return self.train_x[:0], self.train_y[:0], None
            return self.val_x, self.val_y, None
        if split == "train_eval":
            if self.train_eval_idx is None:
                return self.train_x, self.train_y, None
            return self.train_x, self.train_y[self.train_eval_idx], self.train_eval_idx
        raise ValueError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")

    def batches(
        self,
        split: str,
        batch_size: int,
        *,
        augment: frozenset[str] = frozenset(),
        generator: torch.Generator | None = None,
        shard: tuple[int, int] | None = None,
    ):
        """Yield normalised (x, y) batches; shuffled when a generator is given, augmented only in `train`.

        `val`, `test` and `train_eval` are evaluation splits: never augmented, so that
        train_eval gives the clean training error. With a `crop_size`, every batch is
        cut to it: a random window when augmenting with `crop`, otherwise the centre.
        `shard=(rank, world)` yields only that rank's contiguous 1/world slice of each
        batch (possibly empty when a batch has fewer images than ranks); the order, and
        each image's augmentation, are the unsharded ones.
        """
        if augment and split != "train":
            raise ValueError(f"the {split} split is for evaluation and is never augmented")
        x_all, y_all, index = self._split(split)
        n = len(y_all)
        order = torch.randperm(n, generator=generator, device=self.device) if generator is not None else None
        augmenting = bool(augment) and generator is not None  # unseeded draws would make runs irreproducible
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            mine = slice(None) if shard is None else _shard_slice(stop - start, *shard)
            if order is None:  # a slice, so that the batch is a view
                r = range(start, stop)[mine]
                pick = slice(r.start, r.stop)
            else:
                pick = order[start:stop] if augmenting else order[start:stop][mine]
            rows = index[pick] if index is not None else pick
            x = self.normalizer(x_all[rows])
            if augmenting:
                # The draws are made for the whole batch, then sliced: the generator
                # stays in step with every other rank and with a single process.
                x = augment_batch(x, augment, self.normalizer, generator, crop_size=self.crop_size)[mine]
                pick = pick[mine]
            elif self.crop_size is not None:
                x = center_crop(x, self.crop_size)
            yield x, y_all[pick]

    def num_batches(self, split: str, batch_size: int) -> int:
        return -(-self.size(split) // batch_size)


def _shard_slice(n: int, rank: int, world: int) -> slice:
    """Rank `rank`'s contiguous part of `n` items split `world` ways, sizes differing by at most one."""
    return slice(n * rank // world, n * (rank + 1) // world)


def _subset(x: torch.Tensor, y: torch.Tensor, keep: torch.Tensor | None):
    return (x, y) if keep is None else (x[keep], y[keep])


def _synthetic_sizes(spec: DataSpec, n_classes: int) -> tuple[int, int]:
    """Images to make for each split: exactly what was asked, plus the validation hold-out.

    A 227x227 synthetic set for `train_per_class=2` is 20 images, not 5,000 (0.8 GB).
    The hold-out comes on top, a whole number per class, so that the training images
    left are still what was asked.
    """
    train = _synthetic_train(spec, n_classes)
    if spec.synthetic_test is not None:
        test = max(spec.synthetic_test, n_classes * (spec.test_per_class or 0))
    else:
        test = n_classes * spec.test_per_class if spec.test_per_class else SYNTHETIC_TEST
    return train + _synthetic_val(spec, train, n_classes), test


def _synthetic_train(spec: DataSpec, n_classes: int) -> int:
    """The synthetic training images asked for, before the hold-out."""
    if spec.synthetic_train is not None:
        return max(spec.synthetic_train, n_classes * (spec.train_per_class or 0))
    return n_classes * spec.train_per_class if spec.train_per_class else SYNTHETIC_TRAIN


def auto_val_size(n_train: int) -> int:
    """The default validation split of a full training split of `n_train` images: a tenth, at most 5,000."""
    return min(AUTO_VAL_MAX, int(n_train * AUTO_VAL_SHARE))


def _synthetic_val(spec: DataSpec, train: int, n_classes: int) -> int:
    """The synthetic hold-out, on top of the `train` images asked for, a whole number per class:
    `val_size`, or by default a tenth of the whole (train and hold-out), at most 5,000."""
    asked = spec.val_size if spec.val_size is not None else min(AUTO_VAL_MAX, -(-train // 9))
    return n_classes * -(-max(asked, 0) // n_classes)


def _read(spec: DataSpec, cache_dir: Path | None) -> tuple[RawData, dict]:
    kind = spec.kind()
    if kind == "synthetic":
        n_train, n_test = _synthetic_sizes(spec, len(CIFAR10_CLASSES))
        raw = make_synthetic(n_train, n_test, spec.image_size or 32)
        return raw, {"data_source": "synthetic", "data_key": None}
    if cache_dir is not None:
        check_cache_dir(cache_dir)
    if kind == "cifar10":
        if spec.image_size not in (None, CIFAR10_SIDE):
            raise UserError(
                f"the cifar10 source is 32x32 but the model takes {spec.image_size}x{spec.image_size}: "
                f"pass --data PATH (a folder is decoded at the model's size), or a model that takes "
                f"32x32 images or crops of them"
            )
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
    resize_mixed = spec.explicit_image_size is not None
    raw, key = cached("folder", fp, lambda: read_folder(path, spec.image_size, resize_mixed), cache_dir)
    if raw.mixed_sizes and not resize_mixed:  # decoded (and cached) by an earlier run that asked for it
        raise UserError(mixed_sizes_message(path, spec.image_size))
    return raw, {"data_source": f"folder:{path.name}", "data_path": str(path.resolve()), "data_key": key}


def _check_spec(spec: DataSpec) -> None:
    if spec.explicit_image_size is not None and spec.explicit_image_size != spec.image_size:
        raise UserError(
            f"--image-size {spec.explicit_image_size} does not match the model's input of "
            f"{spec.image_size}x{spec.image_size}; pass --image-size {spec.image_size}"
        )
    for name in ("val_size", "train_eval_size"):
        value = getattr(spec, name)
        if name == "val_size" and value is None:  # the default split, sized from the data set
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise UserError(f"{name} must be a whole number of images, 0 or more, got {value!r}")


def _default_val_size(spec: DataSpec, raw: RawData, classes: list[str]) -> int:
    """The validation split when none was given: a tenth of the full training split, at most 5,000,
    and never all of a class's images (a class of one image keeps it for training)."""
    n = len(raw.train_y)
    if spec.kind() == "synthetic":  # made on top of the training images asked for: that many again
        size = _synthetic_val(spec, _synthetic_train(spec, len(classes)), len(classes))
    else:
        size = splits.largest_hold_out(splits.class_counts(raw.train_y, len(classes)), auto_val_size(n))
    return size


def load_data(spec: DataSpec, cache_dir: Path | None | str = "default") -> Dataset:
    """Read (or load from cache) a source, hold out validation, take the subsets, fit normalisation on train."""
    _check_spec(spec)
    if cache_dir == "default":
        cache_dir = default_cache_dir()
    raw, prov = _read(spec, cache_dir)
    classes = list(raw.classes)
    if len(classes) < 2:
        raise UserError(
            f"the data set {prov['data_source']} has {len(classes)} class ({', '.join(classes)}); "
            f"classification needs at least 2 classes: add a second class folder under train/ and test/"
        )
    seed = spec.data_seed
    val_size = spec.val_size if spec.val_size is not None else _default_val_size(spec, raw, classes)
    rest, val = splits.hold_out(raw.train_y, val_size, classes, seed)
    if val_size:
        trx, try_ = raw.train_x[rest], raw.train_y[rest]
        vax, vay = raw.train_x[val], raw.train_y[val]
    else:
        trx, try_, vax, vay = raw.train_x, raw.train_y, None, None
    after = f" left after the {val_size}-image validation hold-out" if val_size else ""
    trx, try_ = _subset(trx, try_, splits.per_class(try_, spec.train_per_class, classes, "train", seed, after))
    tex, tey = _subset(raw.test_x, raw.test_y, splits.per_class(raw.test_y, spec.test_per_class, classes, "test", seed))
    train_eval = splits.sample(try_, spec.train_eval_size, len(classes), seed, "train_eval")
    norm = Normalizer.fit(trx, spec.preprocess)
    crop = spec.crop_size
    if crop is not None:
        prov["input_crop"] = (
            f"{crop}x{crop} of {trx.shape[-1]}x{trx.shape[-2]}: random with crop augmentation, else the centre"
        )

    def per_class(y):
        return None if y is None else splits.describe_counts(splits.class_counts(y, len(classes)))

    prov.update(
        classes=len(classes),
        train_images=len(try_),
        test_images=len(tey),
        train_per_class=spec.train_per_class,
        test_per_class=spec.test_per_class,
        preprocess=spec.preprocess,
        data_seed=seed,
        val_size=val_size,  # the split used: the default's size, where val_size was not given
        val_images=0 if vay is None else len(vay),
        val_per_class=per_class(vay),
        train_class_counts=per_class(try_),
        test_class_counts=per_class(tey),
        train_eval_images=len(train_eval),
        conversion=raw.conversion,
    )
    if spec.val_size is None:  # said once the data set is whole: a refused one says only why
        log.info(
            "validation split: %d of the %d training images (the default: a tenth, at most %d; --val-size to change)",
            val_size,
            len(raw.train_y),
            AUTO_VAL_MAX,
        )
    return Dataset(trx, try_, tex, tey, classes, norm, prov, vax, vay, train_eval, crop)
