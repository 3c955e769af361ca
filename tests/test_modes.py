"""Speed modes: dtype auto-resolution, backend flags, compilation, `measure --modes`, one measurement per seed group.

No GPU here: the CUDA branches are driven through monkeypatched capability
functions and the process-wide backend flags, which torch lets a CPU-only build set.
"""

from __future__ import annotations

import functools
import math
import os
import subprocess
import sys

import pandas as pd
import pytest
import torch
from torch import nn

import bench.measure
import bench.measure.modes
import bench.measure.table
import bench.train.graphed
import bench.train.loop
from bench.cli import build_parser, main
from bench.data import load_data
from bench.env import environment
from bench.errors import UserError
from bench.measure import Settings
from bench.measure.modes import Mode, measure_modes, parse_mode, parse_modes
from bench.measure.timing import Rounds, time_interleaved, time_phases
from bench.models import create_model
from bench.train.config import TrainConfig
from bench.train.dataspec import data_spec
from bench.train.flags import config_from_args
from bench.train.loop import run_training, train
from bench.train.modes import apply_backend_flags, compile_model, resolve_dtype

TINY = Settings(warmup=1, repeats=2, steps=1, latency_iters=0, batch_size=4)
CPU = torch.device("cpu")


def tiny_config(**changes) -> TrainConfig:
    base = dict(
        data="synthetic",
        train_per_class=3,
        test_per_class=2,
        epochs=2,
        batch_size=10,
        lr=0.01,
        schedule="constant",
        augment="none",
        device="cpu",
        seed=0,
    )
    return TrainConfig(**{**base, **changes})


@pytest.fixture(scope="module")
def synthetic():
    return load_data(data_spec(tiny_config()), cache_dir=None)


def _tiny_net() -> nn.Module:
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))
    net.input_size = 8
    return net


class _NoAutocast(nn.Module):
    """Fails under autocast, as a model with an op autocast cannot run would."""

    input_size = 8

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 8 * 8, 10)

    def forward(self, x):
        if torch.is_autocast_enabled("cpu"):
            raise RuntimeError("no autocast here")
        return self.fc(x.flatten(1))


# ------------------------------------------------------------------- dtype


@pytest.mark.parametrize(
    "amx, avx512_bf16, expected", [(True, False, "bf16"), (False, True, "bf16"), (False, False, "fp32")]
)
def test_auto_dtype_on_cpu_follows_torchs_bf16_detection(monkeypatch, amx, avx512_bf16, expected):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    assert resolve_dtype("cpu", "auto") == expected
    assert resolve_dtype("cpu", "fp16") == "fp16"  # an explicit dtype is kept


def test_auto_dtype_on_cuda_is_bf16_only_where_native(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert resolve_dtype("cuda", "auto") == "bf16"  # Ampere and later
    # A pre-Ampere GPU: bf16 only through emulation, which is slower than fp32.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert resolve_dtype("cuda", "auto") == "fp32"
    assert resolve_dtype("mps", "auto") == "fp32"
    with pytest.raises(ValueError, match="auto"):
        resolve_dtype("cpu", "fp8")


def test_training_resolves_auto_once_and_records_it(monkeypatch, synthetic):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    seen = []
    real_step = bench.train.graphed.train_step  # the loop's steps go through bench.train.graphed.Stepper

    def spy(*args, dtype, **kwargs):
        seen.append(dtype)
        return real_step(*args, dtype=dtype, **kwargs)

    monkeypatch.setattr(bench.train.graphed, "train_step", spy)
    result = train(tiny_config(model="lenet5", dtype="auto", epochs=1), synthetic, progress=False)
    assert set(seen) == {"bf16"} and len(seen) == 3  # 30 images, batch 10
    assert result.summary["dtype_resolved"] == "bf16"
    assert result.summary["cudnn_benchmark"] is None and result.summary["tf32"] is None  # not on a CPU


# ------------------------------------------------------------------- backend flags


@pytest.fixture
def restore_backend_flags():
    saved = (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    yield
    torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_backend_flags_are_set_on_cuda_and_read_back_by_the_provenance(restore_backend_flags):
    assert apply_backend_flags(torch.device("cuda"), cudnn_benchmark=True, tf32=False) == {
        "cudnn_benchmark": True,
        "tf32": False,
    }
    assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.allow_tf32
    assert environment(CPU)["float32_matmul_precision"] == "highest"
    apply_backend_flags(torch.device("cuda:1"), cudnn_benchmark=False, tf32=True)
    assert not torch.backends.cudnn.benchmark and torch.backends.cudnn.allow_tf32
    assert torch.backends.cuda.matmul.allow_tf32 and environment(CPU)["float32_matmul_precision"] == "high"


def test_backend_flags_are_left_alone_off_cuda(restore_backend_flags):
    torch.backends.cudnn.benchmark = False
    assert apply_backend_flags(CPU, cudnn_benchmark=True, tf32=True) == {"cudnn_benchmark": None, "tf32": None}
    assert not torch.backends.cudnn.benchmark


# A child process: allocate and fill a 48 MB tensor 20 times (above glibc's largest adaptive
# mmap threshold, 32 MB, so each block would be unmapped when freed), and print the minor page
# faults of the last four; the heap takes a few rounds to settle around the process's other
# allocations. Pages count, not seconds: the test holds under any load.
_REFAULTS = """
import resource, sys, torch
from bench.train.modes import apply_backend_flags
if sys.argv[1] == "cpu-run":
    apply_backend_flags("cpu", cudnn_benchmark=True, tf32=True)
for _ in range(16):
    torch.empty(12 << 20).fill_(1.0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    torch.empty(12 << 20).fill_(1.0)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator settings: Linux only")
def test_a_cpu_run_keeps_its_freed_memory_instead_of_faulting_it_in_every_step():
    def refaults(kind: str) -> int:
        done = subprocess.run([sys.executable, "-c", _REFAULTS, kind], capture_output=True, text=True, check=True)
        return int(done.stdout.split()[-1])

    pages = (48 << 20) // os.sysconf("SC_PAGE_SIZE")
    assert refaults("bare") >= 3 * pages, "the allocator kept the block without being told: nothing to test"
    assert refaults("cpu-run") < pages // 10, "freed memory went back to the kernel and was faulted in again"


def test_train_command_takes_the_modes_as_one_consistent_set_of_options():
    def config(*argv):
        return config_from_args(build_parser("train").parse_args(["train", *argv]))

    d = config()
    assert (d.dtype, d.compile, d.cudnn_benchmark, d.tf32, d.channels_last) == ("fp32", "off", True, True, False)
    c = config("--dtype", "auto", "--compile", "max-autotune", "--no-cudnn-benchmark", "--no-tf32", "--channels-last")
    assert (c.dtype, c.compile, c.cudnn_benchmark, c.tf32, c.channels_last) == (
        "auto",
        "max-autotune",
        False,
        False,
        True,
    )
    with pytest.raises(UserError, match="compile='fast' is not valid"):  # the config's check, as a study's value
        config("--compile", "fast")


def test_config_validates_the_modes():
    with pytest.raises(UserError, match="compile='fast' is not valid; choose one of: off, default"):
        TrainConfig(compile="fast")
    with pytest.raises(UserError, match="dtype='fp8'.*auto"):
        TrainConfig(dtype="fp8")
    with pytest.raises(UserError, match="tf32='yes' has the wrong type"):
        TrainConfig(tf32="yes")


# ------------------------------------------------------------------- compile


def test_compile_model_validates_and_wraps_without_copying(bench_cache, monkeypatch):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)  # nox sets one; the default is what is checked here
    net = _tiny_net()
    assert compile_model(net, "off") is net
    with pytest.raises(ValueError, match="choose one of: off, default, max-autotune, reduce-overhead"):
        compile_model(net, "fast")
    compiled = compile_model(net, "reduce-overhead", backend="eager")
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(bench_cache / "inductor")  # the project's cache
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(compiled(x), net(x))


def test_compiled_training_matches_eager_and_saves_plain_weights(monkeypatch, tmp_path, synthetic):
    eager = train(tiny_config(), synthetic, progress=False)
    # The eager backend traces with dynamo as inductor would, without generating code (seconds, not minutes).
    monkeypatch.setattr(bench.train.loop, "compile_model", functools.partial(compile_model, backend="eager"))
    result = run_training(tiny_config(compile="default"), tmp_path / "run", progress=False)
    assert [h["train_running_loss"] for h in result.history] == pytest.approx(
        [h["train_running_loss"] for h in eager.history]
    )
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["state_dict"]
    assert set(saved) == set(create_model("layers-80sec").state_dict())  # no _orig_mod. prefix


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("BENCH_INDUCTOR_TESTS"),
    reason="inductor compiles C++ with gcc (tens of seconds); set BENCH_INDUCTOR_TESTS=1",
)
def test_inductor_compiles_a_training_step(monkeypatch):
    from bench.train.step import make_optimizer, train_step

    net = _tiny_net()
    compiled = compile_model(net, "default")
    optimizer = make_optimizer(net, lr=0.1)
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))
    before = net[0].weight.detach().clone()
    loss, _ = train_step(compiled, optimizer, x, y)
    assert math.isfinite(loss.item()) and not torch.equal(before, net[0].weight)  # the shared weights moved


# ------------------------------------------------------------------- timing helpers


def test_interleaved_rounds_run_round_r_of_every_run_before_round_r_plus_one():
    calls = []
    runs = [functools.partial(lambda i, n: calls.append((i, n)), i) for i in range(3)]
    rounds = time_interleaved(runs, CPU, steps=[1, 2, 3], rounds=2)
    assert calls == [(0, 1), (1, 2), (2, 3)] * 2
    assert [r.steps for r in rounds] == [1, 2, 3] and all(len(r.seconds) == 2 for r in rounds)
    with pytest.raises(ValueError, match="3 runs but 2"):
        time_interleaved(runs, CPU, steps=[1, 2], rounds=1)


def test_phases_are_timed_apart_in_step_order():
    calls = []
    phases = [functools.partial(calls.append, name) for name in "abc"]
    rounds = time_phases(phases, CPU, steps=2, rounds=3)
    assert calls == list("abc") * 6
    assert len(rounds) == 3 and all(isinstance(r, Rounds) and r.steps == 2 and len(r.seconds) == 3 for r in rounds)


# ------------------------------------------------------------------- measure --modes


def test_mode_names_parse_and_print_back():
    assert parse_mode("bf16+cl") == Mode("bf16", True, "off")
    assert parse_mode("cl+compile+bf16").name == "compile+bf16+cl"
    assert parse_mode("compile") == Mode("fp32", False, "default") and parse_mode("compile").name == "compile+fp32"
    assert parse_mode("reduce-overhead+bf16+cl").compile == "reduce-overhead"
    for bad in ("bf16+fp16", "cl+cl", "turbo", "compile+max-autotune"):
        with pytest.raises(ValueError, match="unknown or repeated"):
            parse_mode(bad)


def test_mode_lists_start_with_the_fp32_baseline():
    assert [m.name for m in parse_modes("bf16,bf16+cl,fp32", CPU)] == ["fp32", "bf16", "bf16+cl"]
    cpu = [m.name for m in parse_modes(None, CPU)]
    assert cpu == ["fp32", "bf16", "bf16+cl", "compile+fp32", "compile+bf16+cl"]
    cuda = [m.name for m in parse_modes(None, torch.device("cuda"))]
    assert cuda == [*cpu, "fp16", "reduce-overhead+bf16+cl", "graph+bf16+cl", "graph+fp32"]


def test_modes_are_timed_interleaved_with_ratios_to_fp32(monkeypatch):
    order = []
    real = bench.measure.modes.time_interleaved

    def spy(runs, device, *, steps, rounds):
        def recorded(i, run):
            return lambda n: (order.append(i), run(n))

        return real([recorded(i, r) for i, r in enumerate(runs)], device, steps=steps, rounds=rounds)

    monkeypatch.setattr(bench.measure.modes, "time_interleaved", spy)
    net = _tiny_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    modes = [parse_mode(m) for m in ("fp32", "bf16", "bf16+cl")]
    rows = measure_modes(net, modes, device=CPU, settings=TINY)
    assert order == [0, 1, 2, 0, 1, 2] * 2  # training rounds, then inference rounds, each interleaved
    assert [r["mode"] for r in rows] == ["fp32", "bf16", "bf16+cl"]
    assert [r["memory_format"] for r in rows] == ["contiguous", "contiguous", "channels_last"]
    assert rows[0]["train_vs_fp32"] == 1.0 and rows[0]["infer_vs_fp32"] == 1.0
    for row in rows:
        assert row.get("error") is None and row["rounds"] == 2 and row["batch_size"] == 4
        for key in (
            "train_images_per_s",
            "infer_images_per_s",
            "train_vs_fp32",
            "infer_vs_fp32",
            "train_first_call_s",
            "infer_first_call_s",
            "train_forward_ms",
            "train_backward_ms",
            "train_optimizer_ms",
        ):
            assert math.isfinite(row[key]) and row[key] > 0, key
        assert row["train_vs_fp32"] == pytest.approx(row["train_images_per_s"] / rows[0]["train_images_per_s"])
        assert row["train_images_per_s_min"] <= row["train_images_per_s"] <= row["train_images_per_s_max"]
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # caller's model untouched
    with pytest.raises(ValueError, match="lack fp32"):
        measure_modes(net, modes[1:], device=CPU, settings=TINY)


def test_a_failing_mode_is_a_row_and_the_others_go_on():
    rows = measure_modes(_NoAutocast(), [Mode(), parse_mode("bf16")], device=CPU, settings=TINY)
    assert rows[0].get("error") is None and rows[0]["train_vs_fp32"] == 1.0
    assert rows[1]["error"] == "RuntimeError: no autocast here" and rows[1]["train_images_per_s"] is None


def test_compiled_mode_is_measured_with_its_first_call():
    rows = measure_modes(
        _tiny_net(), [Mode(), parse_mode("compile")], device=CPU, settings=TINY, compile_backend="eager"
    )
    compiled = rows[1]
    assert compiled.get("error") is None and compiled["compile"] == "default"
    assert compiled["compile_backend"] == "eager" and rows[0]["compile_backend"] is None
    assert compiled["train_first_call_s"] > 0 and compiled["train_vs_fp32"] > 0


def test_measure_modes_command_writes_the_tidy_table(tmp_path, capsys):
    out = tmp_path / "modes.csv"
    tiny = ["--quick", "--device", "cpu", "--batch-size", "2", "--out", str(out)]
    assert main(["measure", "--model", "lenet5", "--modes", "bf16,fp32+cl", *tiny]) == 0
    frame = pd.read_csv(out)
    assert frame["mode"].tolist() == ["fp32", "bf16", "fp32+cl"] and set(frame["model"]) == {"lenet5"}
    assert frame["train_vs_fp32"].iloc[0] == 1.0 and frame["infer_vs_fp32"].iloc[0] == 1.0
    assert frame[["device_name", "torch", "git_commit"]].notna().all().all()  # provenance on every row
    assert "train_x" in capsys.readouterr().out
    assert main(["measure", "--model", "lenet5", "--modes", "fp32,turbo", *tiny]) == 2
    assert "'turbo' is unknown" in capsys.readouterr().err
    assert main(["measure", "--model", "lenet5", "--modes", "--dtype", "bf16", *tiny]) == 2
    with pytest.raises(SystemExit, match="2"):  # compile is a mode here, not an option
        main(["measure", "--model", "lenet5", "--compile", "default", *tiny])


def test_measure_resolves_auto_dtype(monkeypatch, tmp_path):
    monkeypatch.setattr(bench.train.modes, "native_bf16", lambda device: True)
    # This CPU emulates bf16: its reference matmul would take most of a minute.
    monkeypatch.setattr(bench.measure.table, "matmul_flops_per_s", lambda *args, **kwargs: 1e9)
    out = tmp_path / "m.csv"
    assert (
        main(
            [
                "measure",
                "--model",
                "lenet5",
                "--dtype",
                "auto",
                "--quick",
                "--device",
                "cpu",
                "--batch-size",
                "2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert pd.read_csv(out)["dtype"].tolist() == ["bf16"]


# ------------------------------------------------------------------- sweeps


def test_a_sweep_measures_a_configuration_once_for_all_its_seeds(monkeypatch):
    import bench.sweep.runner
    from bench.sweep.runner import _BoundCell
    from bench.sweep.study import Cell

    calls = []

    def fake_speed(model, **kwargs):
        calls.append(kwargs["dtype"])
        return {"train_images_per_s": 100.0 + len(calls), "batch_size": kwargs["batch_size"], "error": None}

    monkeypatch.setattr(bench.sweep.runner, "measure_throughput", fake_speed)
    config = tiny_config(epochs=1, dtype="auto")
    cells = [Cell("s", {}, config), Cell("s", {}, config.replace(seed=1)), Cell("s", {}, config.replace(lr=0.02))]
    fn = _BoundCell("quick", None, "smoke", False)
    rows = [fn(cell, "cpu").row for cell in cells]
    assert [r["status"] for r in rows] == ["ok"] * 3
    assert calls == [resolve_dtype(CPU, "auto")] * 2  # seeds 0 and 1 share one measurement; lr=0.02 has its own
    assert rows[0]["train_images_per_s"] == rows[1]["train_images_per_s"] == 101.0
    assert rows[0]["measure_cell_id"] == rows[1]["measure_cell_id"] == cells[0].id
    assert rows[2]["measure_cell_id"] == cells[2].id and rows[2]["train_images_per_s"] == 102.0
    _BoundCell("quick", None, "smoke", False)(cells[1], "cpu")  # another sweep measures afresh
    assert len(calls) == 3
