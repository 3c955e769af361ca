"""Using a trained run: self-contained checkpoints, predict, evaluate, fine-tuning, TensorBoard.

One tiny model is trained once (module fixture) on the synthetic source, whose
classes are CIFAR-10's names; fine-tuning moves it to a 3-class ImageFolder tree.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import write_tree
from PIL import Image

from bench.cli import main
from bench.data import load_data
from bench.errors import UserError
from bench.models import create_model, list_models
from bench.train.checkpoint import (
    FORMAT_VERSION,
    load_checkpoint,
    save_checkpoint,
    upgrade_checkpoint,
)
from bench.train.config import TrainConfig
from bench.train.dataspec import data_spec
from bench.train.finetune import apply_finetune, head_of
from bench.train.loop import run_training, train
from tests import tiny

REPO = Path(__file__).resolve().parents[1]
CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
HEAD = "classifier.3"  # layers-80sec's last Linear layer


def tiny_config(**changes) -> TrainConfig:
    """tests/tiny.py's 200 synthetic training images, over 3 epochs and with no validation split."""
    return tiny.config(**{"epochs": 3, "val_size": 0, **changes})


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A trained run folder: (path, config, its data)."""
    out = tmp_path_factory.mktemp("use") / "run"
    cfg = tiny_config()
    run_training(cfg, out, progress=False)
    return out, cfg, load_data(data_spec(cfg), cache_dir=None)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """A 3-class ImageFolder tree of 32x32 images (the conftest fixture, module-wide)."""
    return write_tree(tmp_path_factory.mktemp("tree") / "tiny")


def assert_one_line_error(stderr: str, *needles: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in stderr, stderr
    for needle in needles:
        assert needle in stderr, (needle, stderr)


class Pickled:
    """Any class instance: a checkpoint holding one must not be unpickled."""


# --- checkpoints ---------------------------------------------------------------------


def test_checkpoint_is_self_contained(run):
    out, cfg, data = run
    summary = json.loads((out / "summary.json").read_text())
    ckpt = load_checkpoint(out)  # a run folder means its checkpoint.pt
    assert ckpt.path == out / "checkpoint.pt" and ckpt.format_version == FORMAT_VERSION
    assert ckpt.classes == CIFAR10 and ckpt.input_size == 32
    assert (ckpt.model_name, ckpt.knobs, ckpt.init) == (cfg.model, cfg.knobs, cfg.init)
    assert ckpt.normalizer.mode == "standardize"
    assert torch.equal(ckpt.normalizer.mean, data.normalizer.mean)
    assert torch.equal(ckpt.normalizer.std, data.normalizer.std)
    assert ckpt.data["data_source"] == "synthetic" and ckpt.data["train_images"] == 200
    assert ckpt.metrics["final_test_top1_err_pct"] == summary["final_test_top1_err_pct"]
    assert ckpt.versions["torch"] == torch.__version__ and ckpt.versions["bench"]
    assert ckpt.train_config() == cfg
    raw = torch.load(out / "checkpoint.pt", weights_only=True)  # plain values and tensors only
    assert all(t.device.type == "cpu" for t in raw["state_dict"].values())
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_meanonly_checkpoint_keeps_the_mean_image(tmp_path):
    cfg = tiny_config(preprocess="meanonly", epochs=1, train_per_class=2, test_per_class=1)
    data = load_data(data_spec(cfg), cache_dir=None)
    save_checkpoint(tmp_path / "c.pt", create_model(cfg.model), cfg, data, {})
    norm = load_checkpoint(tmp_path / "c.pt").normalizer
    assert norm.mode == "meanonly" and norm.mean.shape == (3, 32, 32)
    assert torch.equal(norm.mean, data.normalizer.mean)


def test_a_pickled_object_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format_version": FORMAT_VERSION, "state_dict": {}, "extra": Pickled()}, path)
    with pytest.raises(UserError, match=r"carries a pickled Python object \(.*Pickled\).*refused") as e:
        load_checkpoint(path)
    assert "\n" not in str(e.value)


def test_an_old_format_checkpoint_says_how_to_resave(run, tmp_path):
    out, cfg, _ = run
    old = tmp_path / "old" / "checkpoint.pt"
    old.parent.mkdir()
    torch.save({"model": load_checkpoint(out).state_dict, "config": cfg.to_dict()}, old)
    with pytest.raises(UserError, match="predates self-contained checkpoints") as e:
        load_checkpoint(old.parent)
    assert f"python -m bench.train.checkpoint {old}" in str(e.value) and "\n" not in str(e.value)
    upgrade_checkpoint(old)  # re-reads the training data: the same classes and normalisation
    ckpt, new = load_checkpoint(old), load_checkpoint(out)
    assert ckpt.classes == CIFAR10 and torch.equal(ckpt.normalizer.std, new.normalizer.std)
    assert all(torch.equal(ckpt.state_dict[k], v) for k, v in new.state_dict.items())
    with pytest.raises(UserError, match="not an old-format checkpoint"):
        upgrade_checkpoint(old)


def test_a_truncated_checkpoint_is_a_user_error(run, tmp_path):
    data = (run[0] / "checkpoint.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(tmp_path / "cut.pt")
    with pytest.raises(UserError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing")


# --- predict ---------------------------------------------------------------------------


def write_png(path: Path, array: np.ndarray, mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path)
    return path


def test_predict_gives_what_the_model_gives_on_the_training_data_path(run, tmp_path, capsys):
    out, _, data = run
    model = load_checkpoint(out).build_model()
    for i in range(4):  # test images, losslessly
        write_png(tmp_path / "imgs" / f"{i}.png", data.test_x[i].permute(1, 2, 0).numpy())
    with torch.no_grad():
        want = torch.softmax(model(data.normalizer(data.test_x[:4])), 1)

    assert main(["predict", str(out), str(tmp_path / "imgs"), "--json", "--topk", "3", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["conversion"] is None and result["input_size"] == 32 and result["model"] == "layers-80sec"
    rows = result["predictions"]
    assert [Path(r["image"]).name for r in rows] == ["0.png", "1.png", "2.png", "3.png"]
    for r, p in zip(rows, want):
        assert len(r["top"]) == 3 and r["conversion"] is None
        assert r["top"][0]["class"] == CIFAR10[int(p.argmax())]
        assert r["top"][0]["probability"] == pytest.approx(float(p.max()), abs=1e-5)
        assert [t["probability"] for t in r["top"]] == sorted((t["probability"] for t in r["top"]), reverse=True)

    assert main(["predict", str(out / "checkpoint.pt"), str(tmp_path / "imgs" / "0.png"), "--device", "cpu"]) == 0
    text = capsys.readouterr().out.strip().splitlines()
    assert len(text) == 1 and text[0].startswith(f"{tmp_path / 'imgs' / '0.png'}: {rows[0]['top'][0]['class']} ")
    assert text[0].count("%") == 5  # top 5 by default


def test_predict_converts_another_size_and_mode_as_training_did(run, tmp_path, capsys):
    out, _, _ = run
    gray = np.random.default_rng(0).integers(0, 256, size=(40, 50), dtype=np.uint8)  # 50 wide, 40 high
    path = write_png(tmp_path / "gray.png", gray, "L")
    rgb = write_png(tmp_path / "rgb.png", np.zeros((32, 32, 3), dtype=np.uint8))
    ckpt = load_checkpoint(out)
    with Image.open(path) as im:  # the folder source's decoding: RGB, then bilinear to the input size
        x = torch.from_numpy(np.asarray(im.convert("RGB").resize((32, 32), Image.BILINEAR)).copy()).permute(2, 0, 1)
    with torch.no_grad():
        want = torch.softmax(ckpt.build_model()(ckpt.normalizer(x[None])), 1)[0]

    assert main(["predict", str(out), str(path), str(rgb), "--topk", "2", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "converted as the training data was: grayscale->RGB (1 of 2 images), 50x40->32x32 (bilinear)"
    assert len(lines) == 3 and lines[1].startswith(f"{path}: {CIFAR10[int(want.argmax())]} ")

    assert main(["predict", str(out), str(path), "--json", "--device", "cpu"]) == 0
    row = json.loads(capsys.readouterr().out)["predictions"][0]
    assert row["mode"] == "L" and row["size"] == [50, 40]
    assert row["conversion"] == "grayscale->RGB, 50x40->32x32 (bilinear)"
    assert row["top"][0]["probability"] == pytest.approx(float(want.max()), abs=1e-5)


def _png_header(width: int, height: int) -> bytes:
    """A PNG that claims width x height grey pixels and holds none: what a decompression bomb's header says."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_predict_bad_input(run, tmp_path, capsys):
    out, _, _ = run
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.png").write_text("not an image")
    (tmp_path / "huge.png").write_bytes(_png_header(20000, 20000))
    for args, needle in (
        ([str(tmp_path / "huge.png")], "cannot read image"),
        (["nowhere.png"], "does not exist"),
        ([str(tmp_path / "empty")], "no images in folder"),
        ([str(tmp_path / "notes.png")], "cannot read image"),
        ([str(tmp_path / "notes.png"), "--topk", "0"], "--topk must be at least 1"),
    ):
        assert main(["predict", str(out), *args, "--device", "cpu"]) == 2
        assert_one_line_error(capsys.readouterr().err, needle)


# --- evaluate --------------------------------------------------------------------------


def test_evaluate_writes_files_that_match_the_run(run, tmp_path):
    out, _, _ = run
    summary = json.loads((out / "summary.json").read_text())
    assert main(["evaluate", str(out), "--data", "synthetic", "--device", "cpu"]) == 0
    folder = out / "evaluate"
    assert {p.name for p in folder.iterdir()} == {"summary.json", "per_class.csv", "confusion.png"}
    got = json.loads((folder / "summary.json").read_text())
    assert got["test_top1_err_pct"] == summary["final_test_top1_err_pct"]
    assert got["test_top5_err_pct"] == summary["final_test_top5_err_pct"]
    assert got["test_images"] == 50 and got["run_final_test_top1_err_pct"] == summary["final_test_top1_err_pct"]
    table = pd.read_csv(folder / "per_class.csv")
    assert list(table["class"]) == CIFAR10 and table["images"].tolist() == [5] * 10  # test_per_class=5
    # the per-class errors add up to the run's (one top-k definition for both)
    assert (table["top1_err_pct"] * table["images"]).sum() / 50 == pytest.approx(got["test_top1_err_pct"])
    assert (table["top5_err_pct"] * table["images"]).sum() / 50 == pytest.approx(got["test_top5_err_pct"])
    assert (table["top5_err_pct"] <= table["top1_err_pct"]).all()
    assert (table["most_confused_pct"] <= table["top1_err_pct"]).all()
    assert (folder / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_per_class_table_counts_true_classes_in_rows():
    """Rows are the true class, columns the prediction: 3 cats (1 taken for a dog), 1 dog, 0 birds."""
    from bench.use.evaluate import per_class_table

    y = torch.tensor([0, 0, 0, 1])
    predicted = [0, 0, 1, 1]
    logits = torch.full((4, 6), -1.0)  # 6 classes, so that top-5 leaves one out
    for i, p in enumerate(predicted):
        logits[i, p] = 1.0
    classes = ["cat", "dog", "bird", "fish", "frog", "ship"]
    table, confusion = per_class_table(logits, y, classes)
    assert table["images"].tolist() == [3, 1, 0, 0, 0, 0]
    assert confusion[0].tolist() == [2, 1, 0, 0, 0, 0] and confusion[1].tolist() == [0, 1, 0, 0, 0, 0]
    cat = table.set_index("class").loc["cat"]
    assert cat["top1_err_pct"] == pytest.approx(100 / 3) and cat["most_confused_with"] == "dog"
    assert table.set_index("class").loc["dog", "top1_err_pct"] == 0.0


def test_evaluate_refuses_data_with_other_classes(run, tree, capsys):
    assert main(["evaluate", str(run[0]), "--data", str(tree.path), "--device", "cpu"]) == 2
    assert_one_line_error(capsys.readouterr().err, "are not the checkpoint's", "apple")


# --- fine-tuning -----------------------------------------------------------------------


def on_tree(cfg: TrainConfig, tree, **changes) -> TrainConfig:
    """`cfg` moved to the 3-class tree (12 training images: no subsets)."""
    return cfg.replace(data=str(tree.path), train_per_class=None, test_per_class=None, batch_size=4, **changes)


@pytest.mark.parametrize("name", list_models())
def test_every_model_has_a_classifier_head(name):
    with torch.device("meta"):  # shapes only: no memory, no time
        model = create_model(name, num_classes=7)
    _, head = head_of(model)
    assert head.out_features == 7


def test_init_from_starts_from_the_checkpoints_weights(run):
    out, cfg, data = run
    ckpt = load_checkpoint(out)
    model = apply_finetune(create_model(cfg.model), cfg.replace(init_from=str(out)), data.classes)
    assert all(torch.equal(v, ckpt.state_dict[k]) for k, v in model.state_dict().items())


def test_reinit_head_keeps_the_features_and_draws_a_fresh_head(run, tree):
    out, cfg, _ = run
    ckpt = load_checkpoint(out)
    torch.manual_seed(0)
    fresh = create_model(cfg.model, num_classes=3).state_dict()
    torch.manual_seed(0)
    model = create_model(cfg.model, num_classes=3)
    model = apply_finetune(model, on_tree(cfg, tree, init_from=str(out), reinit_head=True), tree.classes)
    for k, v in model.state_dict().items():
        assert torch.equal(v, fresh[k] if k.startswith(HEAD + ".") else ckpt.state_dict[k]), k


def test_freeze_features_trains_only_the_head(run, tree):
    out, cfg, _ = run
    ckpt = load_checkpoint(out)
    ft = on_tree(cfg, tree, init_from=str(out), reinit_head=True, freeze="features", epochs=2, lr=0.05)
    result = train(ft, progress=False)
    assert result.status == "ok"
    state = result.model.state_dict()
    changed = {k for k, v in state.items() if not k.startswith(HEAD + ".") and not torch.equal(v, ckpt.state_dict[k])}
    assert not changed  # parameters and BatchNorm statistics alike
    assert state[HEAD + ".weight"].shape == (3, 64)
    trainable = {n for n, p in result.model.named_parameters() if p.requires_grad}
    assert trainable == {HEAD + ".weight", HEAD + ".bias"}


def test_a_head_that_does_not_fit_names_layer_shapes_and_flag(run, tree, tmp_path):
    out, cfg, _ = run
    ft = on_tree(cfg, tree, init_from=str(out))
    with pytest.raises(UserError) as e:
        train(ft, progress=False)
    msg = str(e.value)
    assert f"'{HEAD}'" in msg and "[10, 64]" in msg and "[3, 64]" in msg and "--reinit-head" in msg
    with pytest.raises(UserError, match="needs init_from"):
        cfg.replace(reinit_head=True)
    with pytest.raises(UserError, match="freeze='all' is not valid"):
        cfg.replace(freeze="all")
    with pytest.raises(UserError, match="whose layers do not match"):
        apply_finetune(create_model("lenet5"), cfg.replace(model="lenet5", init_from=str(out)), CIFAR10)


def test_init_from_via_the_cli_writes_a_checkpoint_with_the_new_classes(run, tree, tmp_path):
    ft = tmp_path / "ft"
    assert (
        main(
            [
                "train",
                "--data",
                str(tree.path),
                "--init-from",
                str(run[0]),
                "--reinit-head",
                "--freeze",
                "features",
                "--val-size",
                "0",
                "--epochs",
                "1",
                "--batch-size",
                "4",
                "--augment",
                "none",
                "--device",
                "cpu",
                "--no-progress",
                "--out",
                str(ft),
            ]
        )
        == 0
    )
    ckpt = load_checkpoint(ft)
    assert ckpt.classes == tree.classes and ckpt.config["init_from"] == str(run[0])
    assert ckpt.config["freeze"] == "features" and ckpt.config["reinit_head"] is True
    assert ckpt.data["data_source"] == "folder:tiny"


# --- TensorBoard -----------------------------------------------------------------------


def test_tensorboard_scalars_are_the_history(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "runs" / "tb-run"
    assert (
        main(
            [
                "train",
                *tiny.TRAIN_ARGS,
                "--epochs",
                "2",
                "--out",
                str(run),
                "--tensorboard",
                str(tmp_path / "tb"),
            ]
        )
        == 0
    )
    events = EventAccumulator(str(tmp_path / "tb" / "tb-run"))
    events.Reload()
    history = pd.read_csv(run / "history.csv")
    scalars = events.Scalars("test_top1_err_pct")
    assert [s.step for s in scalars] == [1, 2]
    assert [s.value for s in scalars] == pytest.approx(list(history["test_top1_err_pct"]))
    assert {"train_running_loss", "lr", "train_images_per_s"} <= set(events.Tags()["scalars"])


def test_tensorboard_missing_says_what_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as when not installed
    assert (
        main(
            [
                "train",
                "--data",
                "synthetic",
                "--epochs",
                "1",
                "--device",
                "cpu",
                "--no-progress",
                "--out",
                str(tmp_path / "run"),
                "--tensorboard",
                str(tmp_path / "tb"),
            ]
        )
        == 2
    )
    assert_one_line_error(capsys.readouterr().err, "pip install tensorboard")
    assert not (tmp_path / "run").exists() and not (tmp_path / "tb").exists()


# --- through the real entry point: one line, exit 2, no traceback ------------------------


def run_bench(args: list[str], cwd: Path, cache: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BENCH_")}
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
        BENCH_CACHE=str(cache),
        OMP_NUM_THREADS="1",
    )
    return subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_errors_through_the_entry_point(run, tree, tmp_path):
    out, cfg, _ = run
    torch.save({"format_version": FORMAT_VERSION, "extra": Pickled()}, tmp_path / "evil.pt")
    torch.save({"model": load_checkpoint(out).state_dict, "config": cfg.to_dict()}, tmp_path / "old.pt")
    image = write_png(tmp_path / "x.png", np.zeros((8, 8, 3), dtype=np.uint8))
    cases = {
        "pickled": (["predict", str(tmp_path / "evil.pt"), str(image)], ["pickled Python object", "refused"]),
        "old format": (
            ["evaluate", str(tmp_path / "old.pt")],
            ["predates self-contained", "python -m bench.train.checkpoint"],
        ),
        "head": (
            [
                "train",
                "--data",
                str(tree.path),
                "--init-from",
                str(out),
                "--val-size",
                "0",
                "--epochs",
                "1",
                "--device",
                "cpu",
                "--out",
                str(tmp_path / "ft"),
            ],
            [f"'{HEAD}'", "[10, 64]", "[3, 64]", "--reinit-head"],
        ),
    }
    with ThreadPoolExecutor(max_workers=2) as pool:
        done = {c: pool.submit(run_bench, args, tmp_path, tmp_path / "cache") for c, (args, _) in cases.items()}
    for case, (_, needles) in cases.items():
        r = done[case].result()
        assert r.returncode == 2, (case, r.stderr)
        assert_one_line_error(r.stderr, *needles)
    assert not (tmp_path / "ft").exists()  # the weights are checked before anything is written


def test_ablate_writes_one_tensorboard_run_per_cell(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed: pip install 'alexnet-bench[tb]'")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = tmp_path / "tb"
    assert (
        main(
            [
                "ablate",
                "--study",
                "figure1",
                "--profile",
                "smoke",
                "--out",
                str(tmp_path / "results"),
                "--tensorboard",
                str(tb),
                "--no-progress",
                "--no-report",
                "--seeds",
                "0",
            ]
        )
        == 0
    )
    runs = sorted(p for p in (tb / "figure1" / "smoke").iterdir())
    assert len(runs) == 16 and all("seed=0" in p.name for p in runs)  # one per cell, named by its levels
    events = EventAccumulator(str(runs[0]))
    events.Reload()
    assert "train_running_loss" in events.Tags()["scalars"]
