"""Measurement: counts checked against independent arithmetic and torch's FlopCounterMode; speed rows sane."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from bench.device import pick_device
from bench.env import environment
from bench.errors import UserError
from bench.flop_convention import FLOP_CONVENTION, upgrade_counts
from bench.io import read_csv
from bench.measure import (
    COLUMNS,
    Settings,
    achieved_columns,
    count_model,
    count_ops,
    measure_models,
    measure_throughput,
)
from bench.measure.flops import ACTIVATION_COST, LRN_EXTRA_COST
from bench.measure.table import merge_tables
from bench.measure.timing import Rounds, Timing, measure, steps_per_round, time_rounds, warm_up
from bench.models import create_model, registry

ROOT = Path(__file__).resolve().parent.parent
TINY = Settings(warmup=1, repeats=2, steps=1, latency_iters=2, batch_size=4)


def _with_input_size(model: nn.Module, side: int) -> nn.Module:
    model.input_size = side
    return model


def _grouped() -> nn.Module:
    return _with_input_size(
        nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, groups=4),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(8 * 6 * 6, 10),
        ),
        8,
    )


def _flop_counter_mode_flops(model: nn.Module, side: int) -> int:
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, side, side))
    return counter.get_total_flops()  # counts conv and matmul only, 2 per multiply-add, no bias


# ------------------------------------------------------------------- counts


def test_params_are_the_sum_of_numel_and_frozen_ones_are_not_trainable():
    model = create_model("layers-80sec")
    counts = count_model(model, model.input_size)
    assert counts["params_total"] == sum(p.numel() for p in model.parameters()) == 145_578
    model.features[0].weight.requires_grad_(False)
    counts = count_model(model, model.input_size)
    assert counts["params_trainable"] == 145_578 - 3 * 32 * 5 * 5
    assert counts["flops"] == 2 * counts["macs"] + counts["elementwise_ops"]


@pytest.mark.parametrize(
    "build",
    [
        lambda: create_model("layers-80sec"),
        _grouped,
        lambda: create_model("alexnet"),
        lambda: create_model("alexnet", groups=2),
    ],
    ids=["layers-80sec", "grouped", "alexnet", "alexnet-groups2"],
)
def test_macs_are_half_of_flop_counter_mode(build):
    model = build()
    counts = count_ops(model, model.input_size)
    assert counts["macs"] > 0
    assert _flop_counter_mode_flops(model, model.input_size) == 2 * counts["macs"]  # conv + linear only
    assert counts["elementwise_ops"] > 0  # activations and pooling, counted beside the MACs
    assert counts["flops"] == 2 * counts["macs"] + counts["elementwise_ops"]


def test_elementwise_ops_by_hand():
    """A conv, then one ReLU, a 2x2/2 max-pool and a size-3 LRN, on a 3x6x6 input."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2), nn.LocalResponseNorm(3))
    counts = count_ops(model, 6)
    conv = (4 * 6 * 6) * (3 * 3 * 3)  # output elements x (in channels x kernel) multiply-adds
    relu = 4 * 6 * 6 * 1  # one compare-and-select per element
    pool = 4 * 3 * 3 * (2 * 2 - 1)  # 3x3 outputs per channel, 3 comparisons each
    lrn = 4 * 3 * 3 * (3 + 5)  # square, sum of 3, scale, add k, pow, divide
    assert (counts["macs"], counts["elementwise_ops"]) == (conv, relu + pool + lrn) == (3888, 540)
    assert counts["flops"] == 2 * 3888 + 540 == 8316
    assert counts["uncounted_ops"] == ""


def test_grouped_conv_macs_by_hand():
    counts = count_ops(_grouped(), 8)
    conv1 = 8 * 8 * 8 * 3 * 3 * 3  # out positions x out channels x (in channels x kernel)
    conv2 = 6 * 6 * 8 * (8 // 4) * 3 * 3  # each output channel sees in/groups channels
    fc = 8 * 6 * 6 * 10
    assert counts["macs"] == conv1 + conv2 + fc


def test_tanh_costs_more_than_relu_by_the_documented_amount():
    relu = count_ops(create_model("layers-80sec", activation="relu"), 32)
    tanh = count_ops(create_model("layers-80sec", activation="tanh"), 32)
    # Activation outputs at batch 1: after pool1 32x16x16, conv2 32x16x16, conv3 64x8x8, fc 64.
    elements = 32 * 16 * 16 + 32 * 16 * 16 + 64 * 8 * 8 + 64
    assert relu["macs"] == tanh["macs"]
    extra = (ACTIVATION_COST["tanh"] - ACTIVATION_COST["relu"]) * elements
    assert tanh["elementwise_ops"] - relu["elementwise_ops"] == tanh["flops"] - relu["flops"] == extra


def _lrn_modules():
    mods = [nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)]
    try:
        from bench.models.lrn import LocalResponseNorm
    except ImportError:
        return mods
    return mods + [LocalResponseNorm(5)]


@pytest.mark.parametrize("lrn", _lrn_modules(), ids=lambda m: type(m).__module__)
def test_lrn_adds_size_plus_five_per_element(lrn):
    conv = nn.Conv2d(3, 6, 3, padding=1)
    without = count_ops(nn.Sequential(conv, nn.ReLU()), 7)
    with_lrn = count_ops(nn.Sequential(conv, nn.ReLU(), lrn), 7)
    assert with_lrn["macs"] == without["macs"]
    assert with_lrn["elementwise_ops"] - without["elementwise_ops"] == (5 + LRN_EXTRA_COST) * 6 * 7 * 7
    assert with_lrn["uncounted_ops"] == ""


def test_functional_lrn_costs_the_same_as_the_module():
    from torch.nn.functional import local_response_norm

    class Functional(nn.Module):
        def forward(self, x):
            return local_response_norm(x, 3)

    counts = count_ops(Functional(), 4)
    assert (counts["macs"], counts["elementwise_ops"]) == (0, (3 + LRN_EXTRA_COST) * 3 * 4 * 4)


def test_overlapping_pooling_costs_as_documented():
    def pool_ops(pool):
        counts = count_ops(_with_input_size(nn.Sequential(pool), 9), 9)
        assert counts["macs"] == 0
        return counts["elementwise_ops"]

    # 9x9 input: 3/2 and 2/2 windows both give 4x4 outputs (per channel; 3 channels).
    outputs = 3 * 4 * 4
    assert pool_ops(nn.MaxPool2d(3, 2)) == outputs * (3 * 3 - 1)
    assert pool_ops(nn.MaxPool2d(2, 2)) == outputs * (2 * 2 - 1)
    assert pool_ops(nn.AvgPool2d(3, 2)) == outputs * 3 * 3


@pytest.mark.parametrize("knob, value", [("activation", "tanh"), ("norm", "none"), ("pool", "nonoverlap")])
def test_alexnet_ablations_change_counts(knob, value):
    """Each ablation the alexnet study runs is a knob of the model that changes its counted FLOPs."""
    base = count_ops(create_model("alexnet"), 32)
    try:
        model = create_model("alexnet", **{knob: value})
    except UserError as e:
        pytest.fail(f"alexnet lost the ablation {knob}={value}: {e}")
    assert count_ops(model, 32)["flops"] != base["flops"], f"{knob}={value} costs the same as the baseline"


OLD_CONVENTION = "macs=multiply-adds; flops=2*macs; per image, forward pass"


def test_old_tables_convert_exactly_to_the_current_counts():
    """The committed measure table predates `elementwise_ops`: its alexnet row, converted, is today's count."""
    path = ROOT / "results" / "measure" / "cpu.csv"
    if not path.is_file():
        pytest.skip("no committed results/measure/cpu.csv")
    saved = read_csv(path, ["knobs"])
    if "core_macs" not in saved:
        pytest.skip("results/measure/cpu.csv already has the current columns")
    row = upgrade_counts(saved).set_index("model").loc["alexnet"]
    counts = count_ops(create_model("alexnet"), 32)
    assert (row["macs"], row["elementwise_ops"], row["flops"]) == (
        counts["macs"],
        counts["elementwise_ops"],
        counts["flops"],
    )
    assert row["flop_convention"].startswith(FLOP_CONVENTION) and OLD_CONVENTION in row["flop_convention"]


def test_upgrade_converts_old_rows_and_leaves_current_ones():
    old = {
        "model": "a",
        "knobs": "",
        "macs": 1100,
        "core_macs": 1000,
        "flops": 2200,
        "flop_convention": OLD_CONVENTION,
        "train_images_per_s": 10.0,
        "train_achieved_flops_per_s": 3 * 2200 * 10.0,
        "train_pct_of_matmul": 66.0,
    }
    new = {
        "model": "b",
        "knobs": "",
        "macs": 500,
        "elementwise_ops": 7,
        "flops": 1007,
        "flop_convention": FLOP_CONVENTION,
        "train_images_per_s": 1.0,
        "train_achieved_flops_per_s": 3021.0,
        "train_pct_of_matmul": 3.021,
    }
    failed = {"model": "c", "knobs": "", "flop_convention": OLD_CONVENTION}  # counting failed: nothing to convert
    frame = upgrade_counts(pd.DataFrame([old, new, failed])).set_index("model")
    assert "core_macs" not in frame
    a, b, c = frame.loc["a"], frame.loc["b"], frame.loc["c"]
    assert (a["macs"], a["elementwise_ops"], a["flops"]) == (1000, 100, 2100)
    assert a["train_achieved_flops_per_s"] == pytest.approx(3 * 2100 * 10.0)  # a rate of `flops`, rescaled
    assert a["train_pct_of_matmul"] == pytest.approx(66.0 * 2100 / 2200)
    assert a["flop_convention"] == f"{FLOP_CONVENTION} (converted from: {OLD_CONVENTION})"
    assert (b["macs"], b["elementwise_ops"], b["flops"], b["train_pct_of_matmul"]) == (500, 7, 1007, 3.021)
    assert pd.isna(c["macs"]) and c["flop_convention"] == OLD_CONVENTION
    # The measure command updates an old table: its old rows come out in the current convention.
    merged = merge_tables(
        pd.DataFrame([old]).assign(device_name="x", dtype="fp32", memory_format="contiguous", quick=True),
        pd.DataFrame([new]).assign(device_name="x", dtype="fp32", memory_format="contiguous", quick=True),
    )
    assert merged["macs"].tolist() == [1000, 500] and merged["elementwise_ops"].tolist() == [100, 7]


# ------------------------------------------------------------------- speed and memory


def test_warm_up_runs_the_steps_one_by_one_for_at_least_the_count():
    done = []
    step_s = warm_up(done.append, torch.device("cpu"), Timing(warmup_steps=3, rounds=1))
    assert done == [1, 1, 1] and len(step_s) == 3 and all(s >= 0 for s in step_s)


def test_rounds_are_sized_by_the_fastest_warm_up_step_after_the_first():
    timed = Timing(warmup_steps=2, rounds=1, min_round_s=0.5)
    assert steps_per_round([9.0, 0.125, 0.25], timed) == 4  # 0.5 s at 0.125 s a step; the first step ignored
    assert steps_per_round([9.0, 2.0], timed) == 1  # a slow step: one per round
    assert steps_per_round([0.001], Timing(warmup_steps=1, rounds=1, round_steps=20)) == 20  # fixed-size rounds
    assert steps_per_round([0.125, 0.25], Timing(warmup_steps=2, rounds=1, round_steps=8, min_round_s=0.5)) == 8
    with pytest.raises(ValueError, match="rounds"):
        Timing(warmup_steps=1, rounds=0)


def test_timed_rounds_run_the_sized_steps_and_report_median_and_spread():
    done = []

    def fake_loop(one_round, k):  # runs one round, reports three
        return [one_round() or 2.0, 1.0, 4.0][:k]

    rounds = time_rounds(done.append, torch.device("cpu"), steps=5, rounds=3, loop=fake_loop)
    assert done == [5] and rounds == Rounds(5, (2.0, 1.0, 4.0))
    rate = rounds.per_s(100)
    assert (rate.median, rate.min, rate.max) == (50.0, 25.0, 100.0) and rounds.median_s() == 2.0
    done.clear()
    rounds = measure(done.append, torch.device("cpu"), Timing(warmup_steps=2, rounds=3, round_steps=4))
    assert done == [1, 1, 4, 4, 4] and len(rounds.seconds) == 3 and rounds.steps == 4


def test_throughput_quick_is_positive_and_finite():
    model = create_model("layers-80sec")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    row = measure_throughput(model, device="cpu", settings=TINY)
    assert row["error"] is None and row["batch_size"] == 4
    for key in (
        "train_images_per_s",
        "train_images_per_s_min",
        "train_images_per_s_max",
        "infer_images_per_s",
        "latency_ms_b1",
        "peak_mem_mb",
    ):
        assert math.isfinite(row[key]) and row[key] > 0, key
    assert row["train_images_per_s_min"] <= row["train_images_per_s"] <= row["train_images_per_s_max"]
    # Weights, gradients and momentum are at least three copies of the parameters.
    assert row["peak_mem_mb"] * 2**20 >= 3 * 4 * 145_578
    assert row["peak_mem_kind"] == "tracked_tensor_peak"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # caller's model untouched


def test_no_latency_iterations_leave_latency_empty_not_the_row_broken():
    settings = Settings(warmup=1, repeats=1, steps=1, latency_iters=0, batch_size=2)
    row = measure_throughput(create_model("lenet5"), device="cpu", settings=settings)
    assert row["error"] is None and row["latency_ms_b1"] is None and row["train_images_per_s"] > 0


class _Broken(nn.Module):
    input_size = 8

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        raise RuntimeError("deliberately broken\nsecond line")


class _OomAbove(nn.Module):
    """Raises CUDA's out-of-memory error for batches above `limit`, like a too-large batch would."""

    input_size = 8

    def __init__(self, limit: int):
        super().__init__()
        self.limit = limit
        self.fc = nn.Linear(3 * 8 * 8, 10)

    def forward(self, x):
        if x.shape[0] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.fc(x.flatten(1))


def test_failure_is_an_error_row_not_an_exception():
    row = measure_throughput(_Broken(), device="cpu", settings=TINY)
    assert row["error"] == "RuntimeError: deliberately broken"
    assert row["train_images_per_s"] is None and row["peak_mem_mb"] is None


def test_out_of_memory_halves_the_batch():
    row = measure_throughput(_OomAbove(limit=5), device="cpu", batch_size=16, settings=TINY)
    assert row["error"] is None and row["batch_size"] == 4
    row = measure_throughput(_OomAbove(limit=0), device="cpu", batch_size=2, settings=TINY)
    assert row["batch_size"] == 1 and "out of memory even at batch 1" in row["error"]


def test_achieved_flops_convention():
    cols = achieved_columns(10.0, {"train_images_per_s": 2.0, "infer_images_per_s": 3.0}, 600.0)
    assert cols["train_achieved_flops_per_s"] == 3 * 10.0 * 2.0  # forward + backward = 3 x forward
    assert cols["infer_achieved_flops_per_s"] == 10.0 * 3.0
    assert cols["train_pct_of_matmul"] == pytest.approx(10.0)
    assert achieved_columns(None, {"train_images_per_s": None}, 600.0)["train_pct_of_matmul"] is None


def test_measure_models_one_row_per_model_failures_included(monkeypatch):
    monkeypatch.setitem(registry._BUILDERS, "test-broken", lambda *, num_classes=10: _Broken())
    monkeypatch.setitem(registry._INPUT_SIZE, "test-broken", 8)
    frame = measure_models(["layers-80sec", "test-broken", "no-such-model"], device="cpu", quick=True)
    assert list(frame.columns[: len(COLUMNS)]) == COLUMNS
    assert list(frame["model"]) == ["layers-80sec", "test-broken", "no-such-model"]
    ok, broken, unknown = (frame.iloc[i] for i in range(3))
    assert ok["error"] is None or (isinstance(ok["error"], float) and math.isnan(ok["error"]))
    assert ok["train_images_per_s"] > 0 and ok["matmul_flops_per_s"] > 0 and ok["train_pct_of_matmul"] > 0
    assert ok["flops"] == 2 * ok["macs"] + ok["elementwise_ops"] and ok["flop_convention"] == FLOP_CONVENTION
    assert ok["batch_size"] == 16 and ok["device"] == "cpu" and ok["cuda"] is None
    assert broken["error"].startswith("RuntimeError") and broken["params_total"] == 8
    assert "unknown model" in unknown["error"]


def test_measure_command_writes_the_csv(tmp_path, capsys):
    from bench.cli import main

    out = tmp_path / "m.csv"
    assert (
        main(["measure", "--model", "layers-8*", "--quick", "--device", "cpu", "--batch-size", "4", "--out", str(out)])
        == 0
    )
    import pandas as pd

    frame = pd.read_csv(out)
    assert list(frame["model"]) == ["layers-80sec"] and frame["batch_size"].tolist() == [4]
    assert "layers-80sec" in capsys.readouterr().out
    assert main(["measure", "--model", "nothing-like-this", "--device", "cpu", "--out", str(out)]) == 2
    assert "layers-80sec" in capsys.readouterr().err  # the error lists valid names
    assert main(["measure", "--model", "layers-8*", "--device", "cpu", "--out", str(tmp_path)]) == 2
    assert "must name a .csv file" in capsys.readouterr().err  # refused before measuring, not after


def test_measure_command_updates_the_table_instead_of_replacing_it(tmp_path, capsys):
    import pandas as pd

    from bench.cli import main

    out = tmp_path / "m.csv"
    tiny = ["--quick", "--device", "cpu", "--batch-size", "2", "--out", str(out)]
    assert main(["measure", "--model", "lenet5", *tiny]) == 0
    assert main(["measure", "--model", "lenet5-1998", *tiny]) == 0
    assert main(["measure", "--model", "lenet5", "--knob", "dropout=0.0", *tiny]) == 2  # no such knob: nothing written
    assert main(["measure", "--model", "lenet5", *tiny]) == 0  # measured again: replaces its row
    frame = pd.read_csv(out, keep_default_na=False)
    assert frame["model"].tolist() == ["lenet5", "lenet5-1998"] and frame["knobs"].tolist() == ["", ""]
    assert main(["measure", "--model", "alexnet", "--knob", "width=0.125", *tiny]) == 0
    frame = pd.read_csv(out, keep_default_na=False)
    assert frame[["model", "knobs"]].values.tolist() == [
        ["alexnet", "width=0.125"],
        ["lenet5", ""],
        ["lenet5-1998", ""],
    ]
    out.write_text('model,params\n"lenet5,1\n')  # torn
    capsys.readouterr()
    assert main(["measure", "--model", "lenet5", *tiny]) == 2
    assert "is not a readable table" in capsys.readouterr().err


# ------------------------------------------------------------------- environment


def test_pick_device():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(UserError, match="choose one of"):
        pick_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="--device cpu"):
            pick_device("cuda")


def test_environment_on_cpu():
    env = environment("cpu")
    assert env["device"] == "cpu" and env["device_name"]
    assert env["torch"] == torch.__version__ and env["cuda"] is None and env["cudnn"] is None
    assert env["num_threads"] == torch.get_num_threads()
    assert env["git_commit"] is None or len(env["git_commit"].split("-")[0]) == 40


def test_import_prints_no_warnings():
    done = subprocess.run(
        [sys.executable, "-W", "default", "-c", "import bench.measure"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and done.stderr == ""
