"""Shared fixtures: tiny data sets and study files written into tmp_path (the study files from
tests/tiny.py, which also holds the tiny configuration and command line), and an isolated cache.

Nothing here touches the network, ~/.cache or the project's results/ folder.
"""

from __future__ import annotations

import pickle
import signal
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from permissions import obey_permission_bits
from PIL import Image

from tests import tiny

REPO = Path(__file__).resolve().parents[1]

# The CIFAR-10 fixture: images per batch file (5 training batches + 1 test batch).
CIFAR_PER_BATCH = 20
CIFAR_LABEL_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

# The ImageFolder fixture: classes are written in this (unsorted) order, and must
# come back sorted; per class, image names and their formats.
TREE_CLASSES = ["zebra", "apple", "mango"]
TREE_TRAIN = ["0000.png", "0001.jpg", "0002.png", "0003.jpg"]
TREE_TEST = ["0000.png", "0001.jpg"]


@pytest.fixture(autouse=True, scope="session")
def _ctrl_c_delivered():
    """A shell starts a background job (`nohup nox -s tests &`, a script's `cmd &`) with SIGINT
    ignored; Python then never raises KeyboardInterrupt, in itself or in the commands it starts,
    and the Ctrl-C tests waited out their hour-long cells. They need Ctrl-C delivered."""
    before = signal.getsignal(signal.SIGINT)
    if before is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny models on a shared 2-core machine: extra threads only spin and wait.

    With other work beside the tests, two intra-op threads made a 20-image step
    ~15x slower than one.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True, scope="session")
def _kernels_built_once(tmp_path_factory):
    """The native LRN kernels are built once for the whole run, into a folder of its own (the data
    cache below is new for every test; a build in every CLI test's process would add up)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BENCH_KERNELS", str(tmp_path_factory.mktemp("kernels")))
        yield


@pytest.fixture(autouse=True)
def bench_cache(tmp_path, monkeypatch) -> Path:
    """Every test gets its own empty data cache (never ~/.cache) and no data defaults from the shell."""
    cache = tmp_path / "bench-cache"
    monkeypatch.setenv("BENCH_CACHE", str(cache))
    monkeypatch.delenv("BENCH_DATA", raising=False)
    monkeypatch.delenv("BENCH_DATA_ROOT", raising=False)
    return cache


# --- tiny study files (tests/tiny.py) -----------------------------------------------------


@pytest.fixture
def tiny_study_file(tmp_path):
    """A factory: `tiny_study_file(**kwargs)` writes `tiny.study_toml(**kwargs)` to tmp_path/tiny.toml
    (another name with `name_=`) and returns the path."""

    def write(name_: str = "tiny.toml", **kwargs) -> Path:
        path = tmp_path / name_
        path.write_text(tiny.study_toml(**kwargs))
        return path

    return write


# --- official-format CIFAR-10 ------------------------------------------------------


@dataclass
class CifarFixture:
    root: Path  # pass as DataSpec.root / --data-root; holds cifar-10-batches-py/
    train_data: np.ndarray  # (n, 3072) uint8 exactly as written, batches 1..5 in order
    train_labels: list[int]
    test_data: np.ndarray
    test_labels: list[int]
    label_names: list[str]

    @property
    def folder(self) -> Path:
        return self.root / "cifar-10-batches-py"


def _dump(path: Path, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar10(root: Path, per_batch: int = CIFAR_PER_BATCH, seed: int = 0) -> CifarFixture:
    """Write a tiny `cifar-10-batches-py/` in the official pickle format.

    Labels cycle through 0..9 under a per-batch shuffle, so every batch has
    `per_batch / 10` images of each class.
    """
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.permutation(np.arange(per_batch) % 10)]
        _dump(folder / name, {"batch_label": name, "data": data, "labels": labels, "filenames": []})
        batches[name] = (data, labels)
    _dump(
        folder / "batches.meta", {"label_names": CIFAR_LABEL_NAMES, "num_cases_per_batch": per_batch, "num_vis": 3072}
    )
    train = [batches[f"data_batch_{i}"] for i in range(1, 6)]
    return CifarFixture(
        root=root,
        train_data=np.concatenate([d for d, _ in train]),
        train_labels=[label for _, labels in train for label in labels],
        test_data=batches["test_batch"][0],
        test_labels=batches["test_batch"][1],
        label_names=list(CIFAR_LABEL_NAMES),
    )


@pytest.fixture
def cifar10_md5_bypass(monkeypatch):
    """Make torchvision accept the fixture's batch files, whose md5s are not the official ones.

    `torchvision.datasets.CIFAR10` checks every file's md5 (through the
    `check_integrity` name imported into `torchvision.datasets.cifar`) and treats a
    mismatch as "not downloaded". Tests that read the tiny fixture request this
    explicitly; without it, the fixture is (rightly) rejected.
    """
    import torchvision.datasets.cifar

    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args, **kwargs: True)


@pytest.fixture
def cifar10_root(tmp_path) -> CifarFixture:
    """A tiny official-format CIFAR-10 (100 training, 20 test images); see `cifar10_md5_bypass`."""
    return write_cifar10(tmp_path / "cifar-root")


@pytest.fixture
def no_download(monkeypatch):
    """torchvision's CIFAR-10 downloader fails as it does offline, whatever the network; records calls."""
    import urllib.error

    import torchvision.datasets.cifar

    calls = []

    def fail(url, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("no network in this test")

    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", fail)
    return calls


# --- ImageFolder tree and its archive ------------------------------------------------


@dataclass
class TreeFixture:
    path: Path  # the folder holding train/ and test/
    classes: list[str]  # sorted, as the loader must order them
    pngs: dict  # (split, class, name) -> HxWx3 uint8 array written losslessly


def write_image(path: Path, array: np.ndarray) -> None:
    """Save an HxWx3 uint8 array; the format follows the suffix (.png lossless, .jpg lossy)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, "RGB").save(path)


def write_tree(path: Path, seed: int = 0) -> TreeFixture:
    """train/<class>/ (4 images) and test/<class>/ (2 images) for 3 classes, PNG and JPEG mixed."""
    rng = np.random.default_rng(seed)
    pngs = {}
    for split, names in (("train", TREE_TRAIN), ("test", TREE_TEST)):
        for cls in TREE_CLASSES:
            for name in names:
                array = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
                write_image(path / split / cls / name, array)
                if name.endswith(".png"):
                    pngs[(split, cls, name)] = array
    (path / "train" / "apple" / "notes.txt").write_text("not an image; must be skipped\n")
    return TreeFixture(path, sorted(TREE_CLASSES), pngs)


@pytest.fixture
def image_tree(tmp_path) -> TreeFixture:
    """An ImageFolder tree at tmp_path/trees/tiny: 3 classes, 12 train and 6 test 32x32 images."""
    return write_tree(tmp_path / "trees" / "tiny")


@pytest.fixture
def image_tar(image_tree, tmp_path) -> Path:
    """The `image_tree` as a .tar.gz whose members sit under a top folder, as a real archive's do."""
    archive = tmp_path / "tiny.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(image_tree.path, arcname="tiny")
    return archive


@pytest.fixture
def obey_bits():
    """Root obeys permission bits for this test (tests/permissions.py), so its "not writable" case runs as root."""
    restore = obey_permission_bits()
    yield
    restore()
