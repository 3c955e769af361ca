"""The data set's methodology: validation hold-out, seeded subsets, train_eval, PCA lighting, and bad input."""

from __future__ import annotations

import logging
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import bench.data
from bench.data import DataSpec, load_data, parse_augment
from bench.data.augment import Normalizer, pca_lighting
from bench.data.splits import hold_out, proportional
from bench.errors import UserError

REPO = pathlib.Path(__file__).resolve().parents[1]


def cifar_spec(fx, **kw) -> DataSpec:
    return DataSpec(source="cifar10", root=str(fx.root), download=False, **kw)


def row_keys(x: torch.Tensor) -> list[int]:
    """An (almost surely) unique integer per image, to match rows between tensors."""
    w = torch.randint(1, 2**20, (x[0].numel(),), generator=torch.Generator().manual_seed(0))
    return (x.flatten(1).long() * w).sum(1).tolist()


def counts(y: torch.Tensor) -> list[int]:
    return torch.bincount(y, minlength=10).tolist()


# --- the validation split ----------------------------------------------------------


def test_val_split_is_a_disjoint_stratified_hold_out_of_train(cifar10_root, cifar10_md5_bypass):
    # the fixture: 100 training images, 10 per class, random pixels (so rows are unique)
    full = load_data(cifar_spec(cifar10_root))
    data = load_data(cifar_spec(cifar10_root, val_size=20))
    assert counts(data.val_y) == [2] * 10 and counts(data.train_y) == [8] * 10
    train_keys, val_keys = row_keys(data.train_x), row_keys(data.val_x)
    assert not set(train_keys) & set(val_keys)
    assert sorted(train_keys + val_keys) == sorted(row_keys(full.train_x))  # nothing lost, nothing made up
    label_of = dict(zip(row_keys(full.train_x), full.train_y.tolist()))
    assert [label_of[k] for k in val_keys] == data.val_y.tolist()  # each image keeps its label
    assert not set(val_keys) & set(row_keys(data.test_x))
    # Evaluated like test: normalised with the training statistics, in order, never augmented.
    x = torch.cat([xb for xb, _ in data.batches("val", 7)])
    assert torch.equal(x, data.normalizer(data.val_x))
    assert torch.equal(torch.cat([yb for _, yb in data.batches("val", 7)]), data.val_y)
    assert data.num_batches("val", 7) == 3 and data.size("val") == 20 and data.has("val")
    with pytest.raises(ValueError, match="never augmented"):
        next(data.batches("val", 7, augment=parse_augment("flip")))
    # Normalisation is fitted on what is trained on: the held-out images do not leak into it.
    assert torch.allclose(data.normalizer.mean.flatten().double(), data.train_x.double().mean((0, 2, 3)), atol=1e-3)
    p = data.provenance
    assert (p["val_size"], p["val_images"], p["val_per_class"], p["data_seed"]) == (20, 20, 2, 0)
    assert p["train_images"] == 80 and p["train_class_counts"] == 8


def test_val_split_follows_the_data_seed_only(cifar10_root, cifar10_md5_bypass):
    spec = cifar_spec(cifar10_root, val_size=30)
    torch.manual_seed(1)
    a = load_data(spec)
    torch.manual_seed(2)  # the global RNG plays no part
    torch.rand(7)
    b = load_data(spec)
    c = load_data(cifar_spec(cifar10_root, val_size=30, data_seed=1))
    assert torch.equal(a.val_x, b.val_x) and torch.equal(a.train_x, b.train_x)
    assert set(row_keys(c.val_x)) != set(row_keys(a.val_x))
    assert c.provenance["data_seed"] == 1 and counts(c.val_y) == [3] * 10


def test_val_split_is_the_same_in_another_process():
    y = torch.arange(1000) % 10
    code = (
        "import torch; from bench.data.splits import hold_out; torch.manual_seed(123); "
        "print(hold_out(torch.arange(1000) % 10, 100, [str(i) for i in range(10)], 5)[1].tolist())"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert eval(out) == hold_out(y, 100, [str(i) for i in range(10)], 5)[1].tolist()


def test_val_split_does_not_change_with_train_per_class(cifar10_root, cifar10_md5_bypass):
    whole = load_data(cifar_spec(cifar10_root, val_size=10))
    small = load_data(cifar_spec(cifar10_root, val_size=10, train_per_class=3))
    assert torch.equal(whole.val_x, small.val_x) and torch.equal(whole.val_y, small.val_y)
    assert counts(small.train_y) == [3] * 10
    assert set(row_keys(small.train_x)) <= set(row_keys(whole.train_x))  # the subset is of what is left


def test_val_size_zero_means_no_validation_split_and_is_recorded(cifar10_root, cifar10_md5_bypass):
    data = load_data(cifar_spec(cifar10_root))  # the default
    assert not data.has("val") and data.size("val") == 0 and list(data.batches("val", 10)) == []
    assert data.val_x is None and len(data.train_y) == 100
    assert data.provenance["val_size"] == 0 and data.provenance["val_images"] == 0
    assert data.provenance["val_per_class"] is None


def test_val_size_that_divides_unevenly_is_as_equal_as_it_can_be(cifar10_root, cifar10_md5_bypass):
    data = load_data(cifar_spec(cifar10_root, val_size=25))
    assert counts(data.val_y) == [3] * 5 + [2] * 5 and data.provenance["val_per_class"] == "3/3/3/3/3/2/2/2/2/2"
    assert proportional([10, 30], 8) == [2, 6]  # unequal classes: in proportion (stratified)
    assert proportional([10, 30], 7) == [2, 5]  # remainders 0.75 vs 0.25 of a share
    assert proportional([5000] * 10, 5000) == [500] * 10


def test_val_size_too_large_names_a_size_that_works(cifar10_root, cifar10_md5_bypass):
    with pytest.raises(
        UserError,
        match=r"val_size 100 would hold out all 10 training images of class 'airplane'; "
        r"pass --val-size 90 or less \(0 for no validation split\)",
    ):
        load_data(cifar_spec(cifar10_root, val_size=100))
    assert counts(load_data(cifar_spec(cifar10_root, val_size=90)).train_y) == [1] * 10
    with pytest.raises(UserError, match="val_size must be a whole number of images, 0 or more, got -1"):
        load_data(cifar_spec(cifar10_root, val_size=-1))


def test_train_subset_short_after_hold_out_says_so(cifar10_root, cifar10_md5_bypass):
    with pytest.raises(
        UserError,
        match=r"the train split has 8 images of class 'airplane' left after the 20-image "
        r"validation hold-out, fewer than the 9 per class asked for; "
        r"pass --train-per-class 8 or less",
    ):
        load_data(cifar_spec(cifar10_root, val_size=20, train_per_class=9))


# --- per-class subsets and the data seed -----------------------------------------------


def test_per_class_subsets_follow_the_data_seed_and_seed_0_is_unchanged(cifar10_root, cifar10_md5_bypass):
    full = load_data(cifar_spec(cifar10_root))
    a = load_data(cifar_spec(cifar10_root, train_per_class=4, test_per_class=1))
    b = load_data(cifar_spec(cifar10_root, train_per_class=4, test_per_class=1, data_seed=3))
    assert counts(b.train_y) == [4] * 10 and counts(b.test_y) == [1] * 10
    assert set(row_keys(a.train_x)) != set(row_keys(b.train_x))
    assert b.provenance["data_seed"] == 3 and b.provenance["train_per_class"] == 4
    # Seed 0 draws exactly as before data_seed existed: results of earlier runs stay comparable.
    order = torch.randperm(100, generator=torch.Generator().manual_seed(0))
    keep = torch.cat([order[full.train_y[order] == c][:4] for c in range(10)]).sort().values
    assert torch.equal(a.train_x, full.train_x[keep])


# --- the default validation split: a tenth of the training split, at most 5,000 -----------


def test_the_default_validation_split_scales_with_the_data_set(cifar10_root, cifar10_md5_bypass, caplog):
    with caplog.at_level(logging.INFO, logger="bench.data"):
        data = load_data(cifar_spec(cifar10_root, val_size=None))  # 100 training images
    assert data.provenance["val_size"] == data.provenance["val_images"] == 10 and counts(data.val_y) == [1] * 10
    assert "validation split: 10 of the 100 training images (the default: a tenth, at most 5000" in caplog.text
    assert load_data(cifar_spec(cifar10_root, val_size=0)).provenance["val_size"] == 0  # asked: kept
    from bench.data import auto_val_size

    assert [auto_val_size(n) for n in (50_000, 60_000, 5_000, 12, 9)] == [5000, 5000, 500, 1, 0]


def test_a_small_image_folder_trains_with_the_default_options(tmp_path):
    """500 images a class is a user's first folder (issue 35: it was refused, the default held out
    5,000); here 2 classes of 30 and 3: a tenth held out, stratified, no class emptied."""
    from bench.train.config import TrainConfig
    from bench.train.dataspec import data_spec

    rng = np.random.default_rng(0)
    for cls, n in (("big", 30), ("small", 3)):
        for split in ("train", "test"):
            for i in range(n):
                path = tmp_path / "tree" / split / cls / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
    cfg = TrainConfig(model="layers-80sec", data=str(tmp_path / "tree"))
    assert cfg.val_size is None  # the default
    data = load_data(data_spec(cfg))
    assert data.provenance["val_size"] == 3 and torch.bincount(data.val_y, minlength=2).tolist() == [3, 0]
    assert torch.bincount(data.train_y, minlength=2).tolist() == [27, 3]


def test_the_default_synthetic_hold_out_comes_on_top_of_the_images_asked_for():
    data = load_data(DataSpec(source="synthetic", train_per_class=2, test_per_class=1, val_size=None), cache_dir=None)
    assert counts(data.train_y) == [2] * 10 and counts(data.val_y) == [1] * 10  # a tenth of 30, whole per class
    assert data.provenance["val_size"] == 10


# --- train_eval: the clean training error --------------------------------------------


def test_train_eval_is_a_fixed_stratified_unaugmented_subset_of_train(cifar10_root, cifar10_md5_bypass):
    data = load_data(cifar_spec(cifar10_root, val_size=20, train_eval_size=40))
    again = load_data(cifar_spec(cifar10_root, val_size=20, train_eval_size=40))
    assert data.size("train_eval") == 40 and data.num_batches("train_eval", 16) == 3
    assert torch.equal(data.train_eval_idx, again.train_eval_idx)
    batches = list(data.batches("train_eval", 16))
    x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    assert counts(y) == [4] * 10
    assert torch.equal(x, data.normalizer(data.train_x[data.train_eval_idx]))  # no augmentation, no shuffle
    assert torch.equal(y, data.train_y[data.train_eval_idx])
    assert set(row_keys(data.train_x[data.train_eval_idx])) <= set(row_keys(data.train_x))  # never val or test
    with pytest.raises(ValueError, match="never augmented"):
        next(data.batches("train_eval", 16, augment=parse_augment("crop+flip"), generator=torch.Generator()))
    assert data.provenance["train_eval_images"] == 40


def test_train_eval_is_drawn_by_the_data_seed(cifar10_root, cifar10_md5_bypass):
    """Each data seed draws its own clean-training subset (of the same training images here: no
    hold-out, no per-class subset), so seeds that follow the data do not share one sample."""
    a, b = (load_data(cifar_spec(cifar10_root, train_eval_size=40, data_seed=s)) for s in (0, 1))
    assert torch.equal(a.train_x, b.train_x)  # the same images to draw from
    assert not torch.equal(a.train_eval_idx, b.train_eval_idx)
    assert counts(b.train_y[b.train_eval_idx]) == [4] * 10  # still stratified


def test_train_eval_is_capped_at_the_train_size_and_can_be_off(cifar10_root, cifar10_md5_bypass):
    data = load_data(cifar_spec(cifar10_root, train_per_class=3))  # default 5,000 > 30
    assert data.size("train_eval") == 30 and data.provenance["train_eval_images"] == 30
    assert torch.equal(torch.cat([b[0] for b in data.batches("train_eval", 8)]), data.normalizer(data.train_x))
    off = load_data(cifar_spec(cifar10_root, train_eval_size=0))
    assert not off.has("train_eval")


def test_every_split_moves_with_to(cifar10_root, cifar10_md5_bypass):
    data = load_data(cifar_spec(cifar10_root, val_size=10, train_eval_size=20)).to("cpu")
    assert [data.size(s) for s in ("train", "val", "test", "train_eval")] == [90, 10, 20, 20]
    with pytest.raises(ValueError, match="train, val, test, train_eval"):
        data.size("holdout")


# --- PCA lighting -----------------------------------------------------------------


def correlated_images(n: int = 40, side: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    raw = torch.randint(0, 256, (n, 3, side, side), generator=g)
    raw[:, 1] = (raw[:, 0] + raw[:, 1]) // 2  # correlated channels, distinct variances
    raw[:, 2] = raw[:, 2] // 3 + 40
    return raw.to(torch.uint8)


@pytest.mark.parametrize("mode", ["standardize", "meanonly"])
def test_pca_shift_covariance_matches_an_independent_eigendecomposition(mode):
    """Cov(shift) = P diag(0.01 lam^2) P^T, with (lam, P) from numpy on the [0, 1]-scale pixels.

    200,000 draws: a covariance entry's sampling error is about sqrt(2/n) = 0.3% of the
    largest variance, so a tolerance of 3% of it is ~10 standard errors.
    """
    raw = correlated_images()
    pixels = raw.permute(0, 2, 3, 1).reshape(-1, 3).double().numpy() / 255.0
    lam, p = np.linalg.eigh(np.cov(pixels.T, bias=True))
    expected = p @ np.diag(0.01 * lam**2) @ p.T
    norm = Normalizer.fit(raw, mode)
    np.testing.assert_allclose(norm.pca_eigval.double().numpy(), lam, rtol=1e-4)

    n = 200_000
    base = raw[:1].expand(n, -1, -1, -1)[:, :, :1, :1]  # one pixel is enough: the shift is per image
    x = norm(base) if mode == "standardize" else base.float() - norm.mean[:, :1, :1]
    out = pca_lighting(x, norm, torch.Generator().manual_seed(0))
    # Undo the normalisation by its definition, back to [0, 1]: the shift the image got there.
    back = out * norm.std if mode == "standardize" else out
    back = back + (norm.mean if mode == "standardize" else norm.mean[:, :1, :1])
    shift01 = (back.double() / 255.0 - base.double() / 255.0).flatten(1).numpy()
    empirical = shift01.T @ shift01 / n  # the mean shift is 0 by construction
    assert np.abs(shift01.mean(0)).max() < 0.01 * np.sqrt(expected.diagonal().max())
    np.testing.assert_allclose(empirical, expected, rtol=0, atol=0.03 * expected.diagonal().max())


def test_pca_shift_is_p_times_alpha_l_added_on_the_0_1_scale():
    """Exactly the paper's formula, with the generator's alpha draws redone by hand."""
    raw = correlated_images(n=16)
    norm = Normalizer.fit(raw, "standardize")
    out = pca_lighting(norm(raw), norm, torch.Generator().manual_seed(5))
    alpha = torch.randn(16, 3, generator=torch.Generator().manual_seed(5)).double() * 0.1
    lam, p = norm.pca_eigval.double(), norm.pca_eigvec.double()
    delta = (p @ (alpha * lam).T).T  # 16 x 3, [0, 1] units
    expect = ((raw.double() / 255 + delta[:, :, None, None]) * 255 - norm.mean.double()) / norm.std.double()
    assert torch.allclose(out.double(), expect, atol=1e-4)


# --- bad input ------------------------------------------------------------------


def save(path: pathlib.Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_one_class_data_set_is_a_user_error(tmp_path):
    for split in ("train", "test"):
        save(tmp_path / "one" / split / "cat" / "0.png", np.zeros((32, 32, 3), np.uint8))
        save(tmp_path / "one" / split / "cat" / "1.png", np.ones((32, 32, 3), np.uint8))
    with pytest.raises(UserError, match=r"has 1 class \(cat\); classification needs at least 2 classes"):
        load_data(DataSpec(source=str(tmp_path / "one")))


def test_mixed_sizes_are_an_error_unless_an_image_size_is_given(image_tree, bench_cache, monkeypatch):
    save(image_tree.path / "train" / "apple" / "0004.png", np.zeros((20, 24, 3), np.uint8))  # 24 wide, 20 high
    with pytest.raises(
        UserError,
        match=r"differ in size \(32x32 in .*0000.png, 24x20 in .*0004.png\); they are "
        r"not stretched to one size unless asked: pass --image-size 32",
    ):
        load_data(DataSpec(source=str(image_tree.path)))
    assert not list(bench_cache.glob("*.pt"))
    data = load_data(DataSpec(source=str(image_tree.path), explicit_image_size=32))
    assert data.train_x.shape == (13, 3, 32, 32)
    assert data.provenance["conversion"] == "24x20, 32x32->32x32 (bilinear)"
    # Cached by the run that asked; a run that did not ask is still refused.
    monkeypatch.setattr(bench.data, "read_folder", lambda *a, **k: pytest.fail("decoded again"))
    with pytest.raises(UserError, match="pass --image-size 32"):
        load_data(DataSpec(source=str(image_tree.path)))
    with pytest.raises(UserError, match=r"--image-size 64 does not match the model's input of 32x32"):
        load_data(DataSpec(source=str(image_tree.path), explicit_image_size=64))


def test_grayscale_upscaled_images_are_converted_and_the_conversion_recorded(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("test", 1)):
        for cls in ("a", "b"):
            for i in range(n):
                save(tmp_path / "gray" / split / cls / f"{i}.png", rng.integers(0, 256, (28, 28), dtype=np.uint8))
    data = load_data(DataSpec(source=str(tmp_path / "gray")))
    assert data.train_x.shape == (6, 3, 32, 32)
    assert torch.equal(data.train_x[:, 0], data.train_x[:, 1]) and torch.equal(data.train_x[:, 0], data.train_x[:, 2])
    assert data.provenance["conversion"] == "grayscale->RGB, 28x28->32x32 (bilinear)"
    native = load_data(DataSpec(source=str(tmp_path / "gray"), image_size=28))
    assert native.provenance["conversion"] == "grayscale->RGB"


def test_no_conversion_is_recorded_as_none(image_tree):
    assert load_data(DataSpec(source=str(image_tree.path))).provenance["conversion"] is None


def test_bench_cache_that_is_a_file_fails_before_decoding(image_tree, tmp_path, monkeypatch):
    monkeypatch.setattr(bench.data, "read_folder", lambda *a, **k: pytest.fail("decoded before checking the cache"))
    blocker = tmp_path / "cache-file"
    blocker.write_text("")
    monkeypatch.setenv("BENCH_CACHE", str(blocker))
    with pytest.raises(
        UserError,
        match=r"the data cache .*cache-file \(from BENCH_CACHE\) is a file, not a folder; "
        r"point BENCH_CACHE at a writable folder",
    ):
        load_data(DataSpec(source=str(image_tree.path)))
    monkeypatch.setenv("BENCH_CACHE", str(blocker / "below"))  # a folder that cannot be made
    with pytest.raises(UserError, match=r"below \(from BENCH_CACHE\) is not writable"):
        load_data(DataSpec(source=str(image_tree.path)))


def test_bench_cache_without_write_permission_fails_before_decoding(image_tree, tmp_path, monkeypatch, obey_bits):
    monkeypatch.setattr(bench.data, "read_folder", lambda *a, **k: pytest.fail("decoded before checking the cache"))
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    monkeypatch.setenv("BENCH_CACHE", str(locked))
    with pytest.raises(UserError, match="is not writable"):
        load_data(DataSpec(source=str(image_tree.path)))


def test_offline_cifar10_leaves_no_empty_data_folder(tmp_path, no_download):
    root = tmp_path / "new" / "data"
    with pytest.raises(UserError, match="could not be downloaded"):
        load_data(DataSpec(source="cifar10", root=str(root), download=True))
    assert len(no_download) == 1 and not (tmp_path / "new").exists()
    kept = tmp_path / "mine"
    kept.mkdir()
    with pytest.raises(UserError, match="could not be downloaded"):
        load_data(DataSpec(source="cifar10", root=str(kept), download=True))
    assert kept.is_dir()  # a folder that was there before is the user's


def test_unreadable_cache_warning_does_not_advise_weights_only_false(image_tree, bench_cache, caplog):
    first = load_data(DataSpec(source=str(image_tree.path)))
    (cache,) = bench_cache.glob("*.pt")
    torch.save({"train_x": pathlib.PurePosixPath("not/a/tensor")}, cache)  # loads only with weights_only=False
    with caplog.at_level(logging.WARNING, logger="bench.data.cache"):
        second = load_data(DataSpec(source=str(image_tree.path)))
    assert torch.equal(first.train_x, second.train_x)  # rebuilt
    (record,) = [r for r in caplog.records if "unreadable" in r.getMessage()]
    assert "objects other than tensors" in record.getMessage()
    assert "weights_only" not in record.getMessage() and "\n" not in record.getMessage()


def test_synthetic_data_is_sized_to_what_was_asked(monkeypatch):
    made = []
    real = bench.data.make_synthetic

    def spy(n_train, n_test, size, *a):
        made.append((n_train, n_test, size))
        return real(n_train, n_test, size, *a)

    monkeypatch.setattr(bench.data, "make_synthetic", spy)
    data = load_data(DataSpec(source="synthetic", image_size=227, train_per_class=2, test_per_class=1))
    assert made == [(20, 10, 227)] and data.train_x.shape == (20, 3, 227, 227)
    data = load_data(DataSpec(source="synthetic", image_size=32, train_per_class=2, test_per_class=1, val_size=25))
    assert made[-1] == (20 + 30, 10, 32)  # the hold-out on top, a whole number per class
    assert counts(data.train_y) == [2] * 10 and data.size("val") == 25
    load_data(DataSpec(source="synthetic", test_per_class=1))
    assert made[-1] == (5000, 10, 32)  # nothing asked: the documented default


def test_sixteen_bit_grayscale_is_scaled_to_8_bits_not_clipped(tmp_path):
    """PIL's convert("RGB") clips 16-bit values at 255: uniform noise would read as almost all white."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("test", 1)):
        for cls in ("a", "b"):
            for i in range(n):
                path = tmp_path / "deep" / split / cls / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 65536, (32, 32), dtype=np.uint16)).save(path)
    grey = tmp_path / "deep" / "test" / "a" / "0.png"
    Image.fromarray(np.full((32, 32), 64 * 257, dtype=np.uint16)).save(grey)  # 16448 is 8-bit 64
    data = load_data(DataSpec(source=str(tmp_path / "deep")))
    assert 120 < data.train_x.float().mean().item() < 135  # uniform over 0..255, not ~254 (clipped)
    assert data.provenance["conversion"] == "16-bit grayscale, scaled to 8 bits->RGB"
    assert (data.test_x == 64).all(dim=(1, 2, 3)).any()  # the grey image, exactly
