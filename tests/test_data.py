"""The data path on tiny fixtures: readers, cache, subsets, normalisation, augmentation, errors."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import bench.data
from bench.data import DataSpec, load_data, parse_augment
from bench.data.augment import Normalizer, augment_batch, pca_lighting, random_crop, random_flip
from bench.errors import UserError

REAL_CIFAR_JPEG = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def cifar_spec(fx, **kw) -> DataSpec:
    return DataSpec(source="cifar10", root=str(fx.root), download=False, **kw)


def cache_files(cache: Path) -> list[Path]:
    return sorted(cache.glob("*.pt")) if cache.exists() else []


def forbid(monkeypatch, name: str) -> None:
    """Make the reader `bench.data.<name>` fail if called: the data must come from the cache."""

    def fail(*args, **kwargs):
        raise AssertionError(f"{name} called although the cache holds this source")

    monkeypatch.setattr(bench.data, name, fail)


def count_calls(monkeypatch, name: str) -> list:
    calls = []
    real = getattr(bench.data, name)

    def spy(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(bench.data, name, spy)
    return calls


# --- official CIFAR-10 pickles -----------------------------------------------------------


def test_cifar10_pickles_shapes_labels_and_pixel_layout(cifar10_root, cifar10_md5_bypass):
    fx = cifar10_root
    # A known value in each colour plane of training image 0, at distinct (h, w):
    # plane c of a row holds 1024 values, row-major over (h, w).
    # Elsewhere at those (h, w), zeros; so a plane or axis mix-up reads a wrong value.
    marks = {(0, 1, 2): 201, (1, 30, 5): 202, (2, 7, 31): 203}
    for (c, h, w), v in marks.items():
        for k in range(3):
            fx.train_data[0, k * 1024 + h * 32 + w] = v if k == c else 0
    path = fx.folder / "data_batch_1"
    batch = pickle.loads(path.read_bytes(), encoding="latin1")
    batch["data"][0] = fx.train_data[0]
    path.write_bytes(pickle.dumps(batch, protocol=2))

    data = load_data(cifar_spec(fx))
    n_train, n_test = len(fx.train_labels), len(fx.test_labels)
    assert data.train_x.shape == (n_train, 3, 32, 32) and data.train_x.dtype == torch.uint8
    assert data.test_x.shape == (n_test, 3, 32, 32) and data.test_x.dtype == torch.uint8
    assert data.train_y.dtype == torch.int64
    assert data.train_y.tolist() == fx.train_labels  # data_batch_1..5 in order
    assert data.test_y.tolist() == fx.test_labels
    assert data.classes == fx.label_names
    for (c, h, w), v in marks.items():
        assert data.train_x[0, :, h, w].tolist() == [v if k == c else 0 for k in range(3)], (c, h, w)
    # Every pixel, against the documented layout (R plane, then G, then B; row-major).
    expect = torch.from_numpy(fx.train_data.reshape(-1, 3, 32, 32))
    assert torch.equal(data.train_x, expect)
    assert torch.equal(data.test_x, torch.from_numpy(fx.test_data.reshape(-1, 3, 32, 32)))
    assert data.provenance["data_source"] == "cifar10"


def test_cifar10_fixture_is_rejected_without_md5_bypass(cifar10_root):
    """The md5 check is really on: the bypass fixture is what lets the tiny files through."""
    with pytest.raises(UserError, match="--data-root"):
        load_data(cifar_spec(cifar10_root))


def test_cifar10_second_load_comes_from_cache(cifar10_root, cifar10_md5_bypass, bench_cache, monkeypatch):
    first = load_data(cifar_spec(cifar10_root))
    files = cache_files(bench_cache)
    assert [f.name for f in files] == [f"cifar10-{first.provenance['data_key']}.pt"]
    forbid(monkeypatch, "read_cifar10")
    second = load_data(cifar_spec(cifar10_root))
    assert torch.equal(first.train_x, second.train_x) and torch.equal(first.test_y, second.test_y)
    assert second.classes == first.classes
    assert second.provenance["data_key"] == first.provenance["data_key"]


def test_cifar10_torn_pickle_is_a_user_error(cifar10_root, cifar10_md5_bypass):
    path = cifar10_root.folder / "data_batch_3"
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(UserError) as e:
        load_data(cifar_spec(cifar10_root))
    msg = str(e.value)
    assert "corrupt or truncated" in msg and "cifar-10-batches-py" in msg and "download it again" in msg


def test_cifar10_missing_with_download_disabled_says_how_to_fix(tmp_path, no_download):
    root = tmp_path / "empty"
    with pytest.raises(UserError) as e:
        load_data(DataSpec(source="cifar10", root=str(root), download=False))
    msg = str(e.value)
    assert "download disabled" in msg and str(root) in msg
    assert "cifar-10-batches-py" in msg and "--data-root" in msg and "--data " in msg
    assert no_download == []  # disabled means not even tried


def test_cifar10_missing_and_download_fails_says_how_to_fix(tmp_path, no_download):
    root = tmp_path / "empty"
    with pytest.raises(UserError) as e:
        load_data(DataSpec(source="cifar10", root=str(root), download=True))
    msg = str(e.value)
    assert len(no_download) == 1 and "cifar-10-python.tar.gz" in no_download[0]  # it did try
    assert "could not be downloaded" in msg and "URLError" in msg
    assert "--data-root" in msg and "ImageFolder" in msg


# --- ImageFolder trees and archives ------------------------------------------------


def test_folder_tree_reads_images_labels_and_sorted_classes(image_tree):
    data = load_data(DataSpec(source=str(image_tree.path)))
    assert data.classes == ["apple", "mango", "zebra"]  # sorted, not creation order
    assert data.train_x.shape == (12, 3, 32, 32) and data.train_x.dtype == torch.uint8  # notes.txt skipped
    assert data.test_x.shape == (6, 3, 32, 32)
    assert data.train_y.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert data.test_y.tolist() == [0, 0, 1, 1, 2, 2]
    # Within a class, images are in file-name order; PNGs round-trip exactly.
    for (split, cls, name), array in image_tree.pngs.items():
        names = ["0000.png", "0001.jpg", "0002.png", "0003.jpg"] if split == "train" else ["0000.png", "0001.jpg"]
        i = data.classes.index(cls) * len(names) + names.index(name)
        x = data.train_x if split == "train" else data.test_x
        assert torch.equal(x[i], torch.from_numpy(array).permute(2, 0, 1)), (split, cls, name)
    assert data.provenance["data_source"] == "folder:tiny"


def test_tar_gz_gives_the_same_tensors_as_the_folder(image_tree, image_tar):
    folder = load_data(DataSpec(source=str(image_tree.path)))
    archive = load_data(DataSpec(source=str(image_tar)))
    assert archive.classes == folder.classes
    for name in ("train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(getattr(archive, name), getattr(folder, name)), name
    assert archive.provenance["data_key"] != folder.provenance["data_key"]


def test_parent_of_a_single_tree_is_accepted(image_tree):
    """An archive extracted into a folder leaves <folder>/<name>/train/...: accept the parent."""
    data = load_data(DataSpec(source=str(image_tree.path.parent)))
    assert data.classes == ["apple", "mango", "zebra"] and len(data.train_y) == 12


def test_folder_second_load_comes_from_cache(image_tree, bench_cache, monkeypatch):
    first = load_data(DataSpec(source=str(image_tree.path)))
    assert [f.name for f in cache_files(bench_cache)] == [f"folder-{first.provenance['data_key']}.pt"]
    forbid(monkeypatch, "read_folder")
    second = load_data(DataSpec(source=str(image_tree.path)))
    assert torch.equal(first.train_x, second.train_x) and torch.equal(first.test_x, second.test_x)
    assert second.classes == first.classes


def test_cache_is_rebuilt_when_a_source_file_changes(image_tree, bench_cache, monkeypatch):
    calls = count_calls(monkeypatch, "read_folder")
    first = load_data(DataSpec(source=str(image_tree.path)))
    target = image_tree.path / "train" / "mango" / "0000.png"
    Image.fromarray(np.full((32, 32, 3), 7, np.uint8)).save(target)
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a distinct mtime even on coarse clocks
    second = load_data(DataSpec(source=str(image_tree.path)))
    assert len(calls) == 2  # decoded again, not served stale from the cache
    assert second.provenance["data_key"] != first.provenance["data_key"]
    i = second.classes.index("mango") * 4
    assert (second.train_x[i] == 7).all() and not (first.train_x[i] == 7).all()
    assert len(cache_files(bench_cache)) == 2


def test_cache_key_follows_linked_class_folders_and_ignores_stray_files(image_tree, tmp_path, monkeypatch):
    from bench.data.sources import folder_fingerprint

    # train/mango becomes a link to a folder elsewhere, as a shared data set often is
    linked = tmp_path / "elsewhere" / "mango"
    linked.parent.mkdir()
    (image_tree.path / "train" / "mango").rename(linked)
    (image_tree.path / "train" / "mango").symlink_to(linked, target_is_directory=True)
    key = folder_fingerprint(image_tree.path)
    (image_tree.path / "README.txt").write_text("notes")
    (image_tree.path / "train" / ".DS_Store").write_bytes(b"\0")
    assert folder_fingerprint(image_tree.path) == key  # nothing that is read changed
    Image.fromarray(np.full((32, 32, 3), 9, np.uint8)).save(linked / "extra.png")
    assert folder_fingerprint(image_tree.path) != key  # a new image behind the link is new data
    assert len(load_data(DataSpec(source=str(image_tree.path))).train_y) == 13


def test_cache_key_changes_with_image_size(image_tree):
    a = load_data(DataSpec(source=str(image_tree.path)))
    b = load_data(DataSpec(source=str(image_tree.path), image_size=16))
    assert b.train_x.shape == (12, 3, 16, 16) and a.provenance["data_key"] != b.provenance["data_key"]


def test_corrupt_cache_file_is_rebuilt(image_tree, bench_cache, monkeypatch):
    first = load_data(DataSpec(source=str(image_tree.path)))
    (cache,) = cache_files(bench_cache)
    blob = cache.read_bytes()
    cache.write_bytes(blob[: len(blob) // 2])  # a torn write
    calls = count_calls(monkeypatch, "read_folder")
    second = load_data(DataSpec(source=str(image_tree.path)))
    assert len(calls) == 1
    assert torch.equal(first.train_x, second.train_x) and torch.equal(first.test_y, second.test_y)
    assert cache.stat().st_size == len(blob)  # rewritten whole
    assert torch.load(cache, weights_only=True)["classes"] == first.classes


def test_missing_path_is_a_user_error(tmp_path):
    missing = tmp_path / "no-such-folder"
    with pytest.raises(UserError, match="does not exist") as e:
        load_data(DataSpec(source=str(missing)))
    assert str(missing) in str(e.value) and "train/" in str(e.value)


def test_folder_without_train_is_a_user_error(image_tree):
    shutil.rmtree(image_tree.path / "train")
    with pytest.raises(UserError, match="no train/ sub-folder") as e:
        load_data(DataSpec(source=str(image_tree.path)))
    assert str(image_tree.path) in str(e.value)


def test_unreadable_jpeg_is_a_user_error_naming_the_file(image_tree, bench_cache):
    bad = image_tree.path / "train" / "zebra" / "0009.jpg"
    bad.write_bytes(b"\xff\xd8 this is not really a JPEG " * 10)
    with pytest.raises(UserError) as e:
        load_data(DataSpec(source=str(image_tree.path)))
    assert "cannot read image" in str(e.value) and "0009.jpg" in str(e.value)
    assert cache_files(bench_cache) == []  # nothing half-built was cached


def test_truncated_archive_is_a_user_error(image_tar):
    blob = image_tar.read_bytes()
    image_tar.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(UserError, match="cannot read archive .*truncated"):
        load_data(DataSpec(source=str(image_tar)))


def test_images_of_different_sizes_name_the_fix(image_tree):
    Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(image_tree.path / "train" / "apple" / "0004.png")
    with pytest.raises(UserError, match="--image-size"):
        load_data(DataSpec(source=str(image_tree.path), image_size=None))


# --- synthetic source and stratified subsets -------------------------------------------


@pytest.mark.parametrize("size", [32, 24])
def test_synthetic_shapes(size):
    data = load_data(DataSpec(source="synthetic", synthetic_train=50, synthetic_test=20, image_size=size))
    assert data.train_x.shape == (50, 3, size, size) and data.test_x.shape == (20, 3, size, size)
    assert data.train_x.dtype == torch.uint8 and data.train_y.dtype == torch.int64
    assert 0 <= data.train_y.min() and data.train_y.max() <= 9
    assert data.classes == CIFAR10_CLASSES
    assert data.provenance["data_source"] == "synthetic"


def _row_keys(x: torch.Tensor) -> list[int]:
    """An (almost surely) unique integer per image, to match rows between tensors."""
    w = torch.randint(1, 2**20, (x[0].numel(),), generator=torch.Generator().manual_seed(0))
    return (x.flatten(1).long() * w).sum(1).tolist()  # integer arithmetic: exact whatever the batch


def test_stratified_subset_is_exact_per_class_and_deterministic():
    full = load_data(DataSpec(source="synthetic", synthetic_train=300, synthetic_test=100))
    spec = DataSpec(source="synthetic", synthetic_train=300, synthetic_test=100, train_per_class=7, test_per_class=3)
    a, b = load_data(spec), load_data(spec)
    assert torch.bincount(a.train_y, minlength=10).tolist() == [7] * 10
    assert torch.bincount(a.test_y, minlength=10).tolist() == [3] * 10
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.train_y, b.train_y)
    assert torch.equal(a.test_x, b.test_x)
    # The subset is drawn from the full split, each image keeping its own label.
    label_of = dict(zip(_row_keys(full.train_x), full.train_y.tolist()))
    assert [label_of[k] for k in _row_keys(a.train_x)] == a.train_y.tolist()
    assert a.provenance["train_images"] == 70 and a.provenance["train_per_class"] == 7


def test_stratified_subset_of_cifar10_fixture(cifar10_root, cifar10_md5_bypass):
    data = load_data(cifar_spec(cifar10_root, train_per_class=4, test_per_class=1))
    assert torch.bincount(data.train_y, minlength=10).tolist() == [4] * 10
    assert torch.bincount(data.test_y, minlength=10).tolist() == [1] * 10


def test_subset_larger_than_a_class_is_a_user_error_naming_class_and_fix(image_tree):
    # the tree has 4 training images per class (3 classes) and 2 test images per class
    with pytest.raises(
        UserError,
        match=r"the train split has 4 images of class 'apple', fewer than the 5 per "
        r"class asked for; pass --train-per-class 4 or less",
    ):
        load_data(DataSpec(source=str(image_tree.path), train_per_class=5))


def test_synthetic_grows_to_fit_the_subset_and_is_balanced():
    data = load_data(DataSpec(source="synthetic", synthetic_train=50, synthetic_test=20, train_per_class=30))
    assert torch.bincount(data.train_y, minlength=10).tolist() == [30] * 10
    full = load_data(DataSpec(source="synthetic", synthetic_train=50, synthetic_test=20))
    assert torch.bincount(full.train_y, minlength=10).tolist() == [5] * 10


def test_cifar10_for_a_model_of_another_input_size_is_a_user_error(cifar10_root, cifar10_md5_bypass):
    with pytest.raises(UserError, match=r"cifar10 source is 32x32 but the model takes 227x227: pass --data PATH"):
        load_data(cifar_spec(cifar10_root, image_size=227))


def test_subset_below_one_is_a_user_error():
    with pytest.raises(UserError, match="at least 1"):
        load_data(DataSpec(source="synthetic", synthetic_train=50, synthetic_test=20, train_per_class=0))


# --- normalisation ----------------------------------------------------------------


def test_standardize_gives_zero_mean_unit_std_per_channel_on_train():
    # Fitted on the subset actually used for training, not on the full split.
    data = load_data(DataSpec(source="synthetic", synthetic_train=400, synthetic_test=50, train_per_class=10))
    x = torch.cat([xb for xb, _ in data.batches("train", 32)])
    assert x.dtype == torch.float32 and x.shape == data.train_x.shape
    mean = x.double().mean((0, 2, 3))
    std = x.double().permute(1, 0, 2, 3).flatten(1).std(1, unbiased=False)
    assert torch.allclose(mean, torch.zeros(3, dtype=torch.float64), atol=1e-4), mean
    assert torch.allclose(std, torch.ones(3, dtype=torch.float64), atol=1e-4), std
    # The raw channel statistics it removed, computed independently.
    raw = data.train_x.double()
    assert torch.allclose(data.normalizer.mean.flatten().double(), raw.mean((0, 2, 3)), atol=1e-3)


def test_meanonly_subtracts_the_per_pixel_mean_image():
    data = load_data(DataSpec(source="synthetic", synthetic_train=200, synthetic_test=50, preprocess="meanonly"))
    mean_image = data.train_x.double().mean(0)  # 3 x H x W
    x = torch.cat([xb for xb, _ in data.batches("train", 64)])
    assert torch.allclose(x.double(), data.train_x.double() - mean_image, atol=1e-3)
    assert data.normalizer.mean.shape == (3, 32, 32)
    # Per-pixel, not per-channel: the mean image is not flat.
    assert mean_image.flatten(1).std(1).min() > 1.0
    # The test split is shifted by the training mean image, not its own.
    xt = torch.cat([xb for xb, _ in data.batches("test", 64)])
    assert torch.allclose(xt.double(), data.test_x.double() - mean_image, atol=1e-3)


def test_unknown_preprocess_is_a_user_error():
    with pytest.raises(UserError, match="standardize, meanonly"):
        load_data(DataSpec(source="synthetic", synthetic_train=20, synthetic_test=10, preprocess="zca"))


# --- augmentation ---------------------------------------------------------------


@pytest.fixture(scope="module")
def small_data():
    return load_data(DataSpec(source="synthetic", synthetic_train=100, synthetic_test=20))


def _epoch(data, seed, augment="crop+flip+pca", batch_size=32):
    g = torch.Generator().manual_seed(seed)
    return list(data.batches("train", batch_size, augment=parse_augment(augment), generator=g))


def test_augmented_batches_keep_shapes_and_follow_the_seed(small_data):
    a, b, c = _epoch(small_data, 1), _epoch(small_data, 1), _epoch(small_data, 2)
    assert [x.shape for x, _ in a] == [(32, 3, 32, 32)] * 3 + [(4, 3, 32, 32)]
    assert sum(len(y) for _, y in a) == 100
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    assert not torch.equal(a[0][0], c[0][0])
    # Same labels per epoch, reshuffled: a permutation of the split.
    assert sorted(torch.cat([y for _, y in a]).tolist()) == sorted(small_data.train_y.tolist())


def test_no_generator_means_no_shuffle_and_no_augmentation(small_data):
    batches = list(small_data.batches("train", 32, augment=parse_augment("crop+flip")))
    x = torch.cat([xb for xb, _ in batches])
    assert torch.equal(x, small_data.normalizer(small_data.train_x))
    assert torch.equal(torch.cat([y for _, y in batches]), small_data.train_y)


def test_crop_moves_a_single_pixel_by_at_most_the_padding():
    n = 200
    x = torch.zeros(n, 3, 32, 32)
    x[:, :, 16, 16] = 1.0
    out = random_crop(x, 4, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    assert torch.equal(out.sum((2, 3)), torch.ones(n, 3))  # the pixel is moved, never lost or copied
    pos = out[:, 0].flatten(1).argmax(1)
    rows, cols = pos // 32, pos % 32
    assert ((rows - 16).abs() <= 4).all() and ((cols - 16).abs() <= 4).all()
    assert torch.equal(out[:, 1], out[:, 0]) and torch.equal(out[:, 2], out[:, 0])  # one shift per image
    shifts = set(zip((rows - 16).tolist(), (cols - 16).tolist()))
    assert len(shifts) > 20  # really random: most of the 81 offsets occur
    assert {-4, 4} <= {r for r, _ in shifts} and {-4, 4} <= {c for _, c in shifts}


def test_crop_is_a_window_of_the_zero_padded_image():
    x = torch.randn(16, 3, 32, 32)
    out = augment_batch(x, frozenset({"crop"}), None, torch.Generator().manual_seed(3))
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(len(x)):
        windows = [padded[i, :, dy : dy + 32, dx : dx + 32] for dy in range(9) for dx in range(9)]
        assert any(torch.equal(out[i], w) for w in windows), i


def test_flip_mirrors_whole_images():
    x = torch.randn(64, 3, 32, 32)
    out = random_flip(x, torch.Generator().manual_seed(0))
    same = [torch.equal(out[i], x[i]) for i in range(64)]
    mirrored = [torch.equal(out[i], x[i].flip(-1)) for i in range(64)]
    assert all(s or m for s, m in zip(same, mirrored))
    assert 10 < sum(mirrored) < 54  # about half, each image independently


def test_pca_lighting_adds_one_colour_shift_per_image():
    raw = torch.randint(0, 256, (50, 3, 32, 32), dtype=torch.uint8)
    raw[:, 1] = (raw[:, 0].int() // 2 + raw[:, 1].int() // 2).to(torch.uint8)  # correlated channels
    norm = Normalizer.fit(raw, "standardize")
    x = norm(raw)
    out = pca_lighting(x, norm, torch.Generator().manual_seed(0))
    shift = out - x
    per_image = shift[:, :, :1, :1]
    assert torch.allclose(shift, per_image.expand_as(shift), atol=1e-5)  # constant over each image
    assert (per_image.abs().sum((1, 2, 3)) > 0).all()
    assert per_image.flatten(1).std(0).min() > 0  # different images get different shifts
    assert per_image.abs().max() < 1.0  # sigma 0.1 along unit-ish axes: a small colour cast
    # The shift lies along the data's principal colour axes, scaled by their eigenvalues
    # (on the [0, 1] scale: the shift in normalised units times std / 255).
    shift01 = per_image.flatten(1) * norm.std.flatten() / 255
    alpha = shift01 @ norm.pca_eigvec / norm.pca_eigval
    assert 0.05 < alpha.std() < 0.2  # alpha ~ N(0, 0.1)


def test_parse_augment_rejects_unknown_names_with_the_choices():
    assert parse_augment("none") == frozenset()
    assert parse_augment("flip+crop") == frozenset({"crop", "flip"})
    with pytest.raises(UserError, match="crop, flip, pca"):
        parse_augment("crop+blur")


# --- the real CIFAR-10 JPEG copy --------------------------------------------------


@pytest.mark.skipif(not REAL_CIFAR_JPEG.exists(), reason=f"{REAL_CIFAR_JPEG} not present")
def test_real_cifar10_jpeg_archive(bench_cache):
    """Decodes all 60,000 JPEGs into the test's own empty cache (~25 s on one core)."""
    data = load_data(DataSpec(source=str(REAL_CIFAR_JPEG)))
    assert data.classes == CIFAR10_CLASSES
    assert data.train_x.shape == (50000, 3, 32, 32) and data.test_x.shape == (10000, 3, 32, 32)
    assert data.train_x.dtype == torch.uint8
    assert torch.bincount(data.train_y, minlength=10).tolist() == [5000] * 10
    assert torch.bincount(data.test_y, minlength=10).tolist() == [1000] * 10
    assert len(cache_files(bench_cache)) == 1
    # Real photographs: per-channel means near CIFAR-10's (125, 123, 114) in 0-255 units.
    mean = data.train_x[::10].double().mean((0, 2, 3))  # every class: the split is sorted by class
    assert ((mean - torch.tensor([125.3, 123.0, 113.9], dtype=torch.float64)).abs() < 8).all(), mean
