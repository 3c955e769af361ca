"""Readers that turn each data source into uint8 tensors: N x 3 x H x W images, int64 labels.

Three sources, one result type (`Split` pairs):
- `cifar10`: the official set through `torchvision.datasets.CIFAR10` (md5-checked by
  torchvision, downloaded when missing and the network allows);
- a folder: any ImageFolder tree with `train/` and `test/` (or `val/`) class
  sub-folders, or a `.tar.gz` of one, read straight from the archive;
- `synthetic`: random CIFAR-shaped tensors, to measure the model without data cost.
"""

from __future__ import annotations

import io
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from bench.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".gif", ".webp", ".tif", ".tiff")
EVAL_SPLITS = ("test", "val")


@dataclass
class RawData:
    """A whole data set in memory as uint8 tensors, before any subsetting."""

    train_x: torch.Tensor  # N x 3 x H x W, uint8
    train_y: torch.Tensor  # N, int64
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]
    conversion: str | None = None  # what decoding changed, e.g. 'grayscale->RGB, 28x28->32x32 (bilinear)'
    mixed_sizes: bool = False  # images of several sizes were resized to one (allowed only when asked for)


# --- official CIFAR-10 ----------------------------------------------------------


def cifar10_missing_message(root: Path, reason: str) -> str:
    return (
        f"CIFAR-10 is not in {root} and could not be downloaded ({reason}). "
        f"Fix: put the official `cifar-10-batches-py/` folder (from cifar-10-python.tar.gz) "
        f"inside {root}, or pass --data-root DIR where DIR holds it, or point --data at a "
        f"folder copy in ImageFolder layout (a directory or .tar.gz with train/ and test/ "
        f"class sub-folders), e.g. --data ../shared/data/cifar10-jpeg.tar.gz."
    )


def cifar10_files(root: Path) -> list[Path]:
    from torchvision.datasets import CIFAR10  # here: torchvision adds ~1 s to every command's start-up

    names = [n for n, _ in CIFAR10.train_list + CIFAR10.test_list] + [CIFAR10.meta["filename"]]
    return [root / CIFAR10.base_folder / n for n in names]


def read_cifar10(root: Path, download: bool = True) -> RawData:
    from torchvision.datasets import CIFAR10  # here: as in cifar10_files

    root = Path(root)
    try:
        splits = [CIFAR10(str(root), train=train, download=False) for train in (True, False)]
    except RuntimeError:
        if not download:
            raise UserError(cifar10_missing_message(root, "download disabled")) from None
        made = [p for p in (root, *root.parents) if not p.exists()]  # deepest first
        try:
            root.mkdir(parents=True, exist_ok=True)
            splits = [CIFAR10(str(root), train=train, download=True) for train in (True, False)]
        except (OSError, RuntimeError) as e:  # URLError is an OSError
            _unmake(made, CIFAR10.filename)
            raise UserError(cifar10_missing_message(root, f"{type(e).__name__}: {e}")) from None
        except (pickle.UnpicklingError, EOFError, KeyError, ValueError) as e:
            raise UserError(_torn_cifar(root, e)) from None
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError) as e:
        raise UserError(_torn_cifar(root, e)) from None

    def tensors(ds):
        x = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))
        return x, torch.tensor(ds.targets, dtype=torch.int64)

    (trx, try_), (tex, tey) = (tensors(s) for s in splits)
    return RawData(trx, try_, tex, tey, list(splits[0].classes))


def _unmake(made: list[Path], archive: str) -> None:
    """Remove the folders a failed download created (an offline run leaves no empty data/ behind).

    Only folders that did not exist before, deepest first, and only once empty; inside
    the deepest, a partial download of `archive` is ours too.
    """
    if not made:
        return
    (made[0] / archive).unlink(missing_ok=True)
    for folder in made:
        try:
            folder.rmdir()
        except OSError:  # not empty (someone else's files) or already gone: leave it
            return


def _torn_cifar(root: Path, e: Exception) -> str:
    return (
        f"a CIFAR-10 batch file in {root / 'cifar-10-batches-py'} is corrupt or truncated "
        f"({type(e).__name__}: {e}); delete that folder and download it again."
    )


# --- ImageFolder trees (directory or .tar.gz) --------------------------------------


def is_archive(path: Path) -> bool:
    return path.name.endswith((".tar.gz", ".tgz", ".tar"))


@dataclass(frozen=True)
class Decoded:
    image: torch.Tensor  # 3 x H x W uint8, at the asked size
    mode: str  # the file's PIL colour mode before conversion to RGB
    size: tuple[int, int]  # the file's (width, height) before resizing


SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I")  # PIL's modes for 16-bit grayscale files (PNG, TIFF)


def _to_8_bits(im: Image.Image) -> Image.Image:
    """A 16-bit grayscale image scaled to 8 bits (value / 257, 65535 -> 255).

    PIL's own convert("RGB") clips these at 255 instead, which turns almost every pixel white.
    Mode "I" holds 32-bit integers, but PIL opens 16-bit PNGs as "I" or "I;16" and the range
    of real 32-bit images is undefined, so "I" is read as 16-bit too.
    """
    if im.mode not in SIXTEEN_BIT:
        return im
    wide = np.asarray(im, dtype=np.float64)
    return Image.fromarray(np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8), mode="L")


def _decode(data: bytes, name: str, image_size: int | None) -> Decoded:
    try:
        with Image.open(io.BytesIO(data)) as im:
            mode, size = im.mode, im.size
            im = _to_8_bits(im).convert("RGB")
            if image_size is not None and im.size != (image_size, image_size):
                im = im.resize((image_size, image_size), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except Image.DecompressionBombError as e:  # a header claiming more pixels than any image here needs
        raise UserError(f"cannot read image {name} ({e}); shrink it or remove that file.") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise UserError(f"cannot read image {name} ({e}); remove or replace that file.") from None
    return Decoded(torch.from_numpy(arr.copy()).permute(2, 0, 1), mode, size)


MODE_NAMES = {
    "L": "grayscale",
    "LA": "grayscale+alpha",
    "1": "1-bit",
    "P": "palette",
    "RGBA": "RGBA",
    "I": "16-bit grayscale, scaled to 8 bits",  # see _to_8_bits
    "I;16": "16-bit grayscale, scaled to 8 bits",
    "I;16L": "16-bit grayscale, scaled to 8 bits",
    "I;16B": "16-bit grayscale, scaled to 8 bits",
    "F": "float grayscale",
    "CMYK": "CMYK",
}


def mixed_sizes_message(path, image_size: int | None, example: str = "") -> str:
    n = image_size or "N"
    return (
        f"images in {path} differ in size{example}; they are not stretched to one size unless asked: "
        f"pass --image-size {n} to resize every image to {n}x{n}"
    )


def _wxh(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def describe_conversion(modes: dict[str, int], sizes: dict[tuple[int, int], int], image_size: int | None) -> str | None:
    """What decoding changed, for the record: colour modes turned RGB, sizes resized."""
    total = sum(modes.values())
    parts = []
    other = {m: k for m, k in modes.items() if m != "RGB"}
    if other:
        names = "+".join(MODE_NAMES.get(m, m) for m in sorted(other))
        some = sum(other.values())
        parts.append(f"{names}->RGB" + (f" ({some} of {total} images)" if some < total else ""))
    target = (image_size, image_size)
    if image_size is not None and set(sizes) != {target}:
        shown = ", ".join(_wxh(s) for s in sorted(sizes)[:3]) + (", ..." if len(sizes) > 3 else "")
        parts.append(f"{shown}->{_wxh(target)} (bilinear)")
    return ", ".join(parts) or None


def _split_of(parts: tuple[str, ...]) -> tuple[str, str] | None:
    """(split, class) for a path `.../<split>/<class>/<file>`, else None."""
    if len(parts) < 3 or not parts[-1].lower().endswith(IMAGE_SUFFIXES):
        return None
    split, cls = parts[-3], parts[-2]
    if split not in ("train",) + EVAL_SPLITS:
        return None
    return split, cls


def _folder_entries(path: Path):
    """Yield (split, class, name, bytes-reader) for every image in a tree or archive."""
    if is_archive(path):
        try:
            with tarfile.open(path) as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    where = _split_of(Path(member.name).parts)
                    if where:
                        yield (*where, f"{path}:{member.name}", tar.extractfile(member).read())
        except (tarfile.TarError, EOFError, OSError) as e:
            raise UserError(f"cannot read archive {path} ({e}); it may be truncated: copy it again.") from None
        return
    for split, cls, f in _folder_images(path):
        yield split, cls, str(f), f.read_bytes()


def _folder_images(path: Path):
    """Yield (split, class, file) for every image of a folder tree, following links as reading does."""
    for split in ("train",) + EVAL_SPLITS:
        top = path / split
        if not top.is_dir():
            continue
        for cls_dir in sorted(p for p in top.iterdir() if p.is_dir()):
            for f in sorted(cls_dir.iterdir()):
                if f.name.lower().endswith(IMAGE_SUFFIXES):
                    yield split, cls_dir.name, f


def check_folder(path: Path) -> None:
    if not path.exists():
        raise UserError(
            f"data path {path} does not exist; pass a folder or .tar.gz with train/ and test/ class sub-folders."
        )
    if path.is_dir() and not (path / "train").is_dir():
        subdirs = [p for p in path.iterdir() if p.is_dir() and (p / "train").is_dir()]
        if len(subdirs) != 1:
            raise UserError(
                f"data folder {path} has no train/ sub-folder; pass the folder that holds train/ and test/ (or val/)."
            )


def resolve_folder(path: Path) -> Path:
    """Accept the tree's parent when it holds exactly one tree (as an extracted archive does)."""
    check_folder(path)
    if path.is_dir() and not (path / "train").is_dir():
        return next(p for p in path.iterdir() if p.is_dir() and (p / "train").is_dir())
    return path


def read_folder(path: Path, image_size: int | None = 32, resize_mixed: bool = False) -> RawData:
    """Decode a tree at `image_size` (None: as stored); images of several sizes are an error unless `resize_mixed`."""
    path = resolve_folder(Path(path))
    images: dict[str, list[tuple[str, str, torch.Tensor]]] = {s: [] for s in ("train",) + EVAL_SPLITS}
    modes: dict[str, int] = {}
    sizes: dict[tuple[int, int], int] = {}
    first = None
    for split, cls, name, data in _folder_entries(path):
        d = _decode(data, name, image_size)
        first = first or (d.size, name)
        if d.size != first[0] and not (resize_mixed and image_size is not None):
            example = f" ({_wxh(first[0])} in {first[1]}, {_wxh(d.size)} in {name})"
            raise UserError(mixed_sizes_message(path, image_size, example))  # before decoding the rest
        modes[d.mode] = modes.get(d.mode, 0) + 1
        sizes[d.size] = sizes.get(d.size, 0) + 1
        images[split].append((cls, name, d.image))
    if not images["train"]:
        raise UserError(
            f"no images under {path}/train/<class>/; expected an ImageFolder tree with train/ and test/ (or val/)."
        )
    eval_split = next((s for s in EVAL_SPLITS if images[s]), None)
    if eval_split is None:
        raise UserError(f"no images under {path}/test/ or {path}/val/; the folder needs an evaluation split.")
    classes = sorted({c for c, _, _ in images["train"]})
    unknown = sorted({c for c, _, _ in images[eval_split]} - set(classes))
    if unknown:
        raise UserError(
            f"{eval_split}/ has classes not in train/: {', '.join(unknown)}; the two splits must share class folders."
        )
    index = {c: i for i, c in enumerate(classes)}

    def stack(items):
        items = sorted(items, key=lambda t: (index[t[0]], t[1]))  # archive order is arbitrary
        return torch.stack([t[2] for t in items]), torch.tensor([index[t[0]] for t in items])

    trx, try_ = stack(images["train"])
    tex, tey = stack(images[eval_split])
    return RawData(trx, try_, tex, tey, classes, describe_conversion(modes, sizes, image_size), len(sizes) > 1)


def folder_fingerprint(path: Path) -> list:
    """What identifies a folder source's content cheaply: names, sizes and mtimes.

    Exactly the files that reading decodes (through links too): a new image in a linked
    class folder changes the key, a stray README or .DS_Store does not.
    """
    path = resolve_folder(Path(path))
    if path.is_file():
        st = path.stat()
        return [str(path.resolve()), st.st_size, st.st_mtime_ns]
    rows = []
    for _, _, f in _folder_images(path):
        st = f.stat()
        rows.append([f.relative_to(path).as_posix(), st.st_size, st.st_mtime_ns])
    return [str(path.resolve()), sorted(rows)]


# --- synthetic ---------------------------------------------------------------------

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def make_synthetic(n_train: int = 5000, n_test: int = 1000, image_size: int = 32, seed: int = 0) -> RawData:
    """Random CIFAR-shaped uint8 images whose class is learnable from a noisy per-class pattern.

    A learnable signal (not random labels) lets smoke runs and tests see the loss fall.
    The patterns are coarse (a 4x4 grid of colour blocks): per-pixel white-noise
    patterns are washed out by the pooling of the small nets, which then sit at
    chance loss for many epochs.
    """
    g = torch.Generator().manual_seed(seed)
    shape = (3, image_size, image_size)
    coarse = torch.rand((10, 3, 4, 4), generator=g) * 255
    prototypes = torch.nn.functional.interpolate(coarse, size=(image_size, image_size), mode="nearest")

    def draw(n):  # classes as balanced as n allows, in random order
        y = (torch.arange(n) % len(CIFAR10_CLASSES))[torch.randperm(n, generator=g)]
        noise = torch.rand((n, *shape), generator=g) * 255
        x = (0.4 * prototypes[y] + 0.6 * noise).round().to(torch.uint8)
        return x, y

    trx, try_ = draw(n_train)
    tex, tey = draw(n_test)
    return RawData(trx, try_, tex, tey, list(CIFAR10_CLASSES))
