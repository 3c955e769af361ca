"""The Ray executor on a local Ray runtime (two CPUs): same results as the local executor,
data shipped from the driver, worker crashes retried or recorded as `crashed` rows; and the
command as a user runs it (its own process and Ray runtime): cells no node can run and an
address where nothing listens refused at once, Ctrl-C and kill -9 leaving no Ray process."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from bench.cli import main
from bench.errors import UserError
from bench.sweep.ray_executor import CRASH_HOOK, LOCAL_SYSTEM_CONFIG, RayExecutor
from bench.sweep.runner import run_study
from bench.sweep.study import load_study
from tests.tiny import ACTIVATION, study_toml

REPO = Path(__file__).resolve().parents[1]
ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'alexnet-bench[ray]' (CI installs it)")


def ray_study(
    train: int = 8, test: int = 4, val: int = 0, train_eval: int = 5000, factors=None, lr=(0.01, 0.02)
) -> str:
    """The tiny study (tests/tiny.py) at these sizes per class, batch 8, factors activation and lr."""
    return study_toml(
        train_per_class=train,
        test_per_class=test,
        batch_size=8,
        val_size=val,
        train_eval_size=train_eval,
        factors=factors,
        lr=lr,
    )


def short_and_long_cells() -> str:
    """The tiny study with a first factor `epochs` of 1 and 3,000 in place of `lr`: the two short cells run
    first and finish in seconds, the long ones take minutes on an idle machine and hours on a busy
    one. An interrupt sent once a cell is recorded so always lands while cells still run, however
    loaded the machine (with 30 epochs for all four, two busy loops let the sweep finish first)."""
    return ray_study(factors={"epochs": ("epochs", [1, 3000]), **ACTIVATION}, lr=None)


@pytest.fixture(scope="module", autouse=True)
def ray_runtime():
    """One local Ray runtime for the module: starting one costs seconds."""
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=False,
        _system_config=LOCAL_SYSTEM_CONFIG,
    )
    yield
    ray.shutdown()


def tiny_study(tmp_path: Path, train: int = 8, test: int = 4, val: int = 0, train_eval: int = 5000):
    path = tmp_path / "tiny.toml"
    path.write_text(ray_study(train, test, val, train_eval))
    return load_study(str(path))


def read_runs(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "runs.csv", dtype={"cell_id": str}).set_index("cell_id").sort_index()


def test_smoke_study_on_ray_matches_the_local_executor(tmp_path):
    tiny_study(tmp_path)
    common = [
        "ablate",
        "--study",
        str(tmp_path / "tiny.toml"),
        "--profile",
        "smoke",
        "--seeds",
        "0,1",
        "--no-progress",
        "--no-report",
    ]
    assert main([*common, "--out", str(tmp_path / "local")]) == 0
    assert main([*common, "--out", str(tmp_path / "ray"), "--executor", "ray"]) == 0
    local, remote = (read_runs(tmp_path / where / "tiny" / "smoke") for where in ("local", "ray"))
    assert len(local) == 8 and set(local["seed"]) == {0, 1}
    assert list(remote.index) == list(local.index)  # the same cells, each once
    assert (remote["status"] == local["status"]).all() and set(local["status"]) == {"ok"}
    assert (remote["seed"] == local["seed"]).all()
    pd.testing.assert_series_equal(remote["final_test_top1_err_pct"], local["final_test_top1_err_pct"])
    folder = tmp_path / "ray" / "tiny" / "smoke"
    env = json.loads((folder / "environment.json").read_text())
    assert env["executor"] == "ray" and env["ray"] == ray.__version__ and env["gpus_per_cell"] == 0
    hist = pd.read_csv(folder / "history.csv")
    assert len(hist) == len(remote) and not hist.duplicated(["cell_id", "epoch"]).any()
    assert not list((folder / "cells").glob("*"))  # every recorded cell merged into the tables


# Columns that differ between two runs of the same cell for reasons other than its numbers.
RUN_DEPENDENT = ("wall_seconds", "finished_at", "train_seconds", "median_train_images_per_s", "hostname", "git_commit")


def test_ray_cells_have_the_validation_split_and_clean_training_subset(tmp_path):
    """Every field of the data set travels: a cell under Ray chooses its best epoch on the same
    validation images and measures clean training error on the same subset as a local cell."""
    tiny_study(tmp_path, val=20, train_eval=12)
    common = ["ablate", "--study", str(tmp_path / "tiny.toml"), "--profile", "smoke", "--no-progress", "--no-report"]
    assert main([*common, "--out", str(tmp_path / "local")]) == 0
    assert main([*common, "--out", str(tmp_path / "ray"), "--executor", "ray"]) == 0
    local, remote = (read_runs(tmp_path / where / "tiny" / "smoke") for where in ("local", "ray"))
    assert local["best_val_top1_err_pct"].notna().all() and local["final_train_clean_top1_err_pct"].notna().all()
    assert (local["val_images"] == 20).all() and (local["train_eval_images"] == 12).all()
    columns = [c for c in local.columns if c not in RUN_DEPENDENT and not c.startswith(("measure", "cuda", "device"))]
    assert set(columns) <= set(remote.columns)
    pd.testing.assert_frame_equal(remote[columns], local[columns], check_dtype=False)


def test_workers_get_the_data_from_the_driver_not_from_disk(tmp_path, image_tree, bench_cache, monkeypatch):
    """The folder and its cache are gone once the driver has loaded them: the tasks must train
    on what the driver put in the object store."""
    import bench.sweep.ray_executor

    load = bench.sweep.ray_executor.load_data
    loads = []

    def load_then_delete(spec, *args, **kwargs):
        data = load(spec, *args, **kwargs)
        loads.append(spec)
        shutil.rmtree(image_tree.path)
        shutil.rmtree(bench_cache, ignore_errors=True)
        return data

    monkeypatch.setattr(bench.sweep.ray_executor, "load_data", load_then_delete)  # the driver's one load
    study = tiny_study(tmp_path, train=4, test=2)
    runs = run_study(
        study,
        "smoke",
        out_root=tmp_path / "results",
        overrides={"data": str(image_tree.path)},
        executor=RayExecutor("cpu"),
        progress=False,
    )
    assert len(loads) == 1  # once for the four cells
    assert len(runs) == 4 and set(runs["status"]) == {"ok"}, runs[["status", "error"]]
    assert (runs["data_source"] == "folder:tiny").all() and (runs["train_images"] == 12).all()


@pytest.mark.parametrize("retries", [1, 0])
def test_a_worker_killed_mid_cell_is_retried_or_recorded_as_crashed(tmp_path, monkeypatch, retries):
    study = tiny_study(tmp_path)
    victim = study.cells("smoke")[1]
    marker = tmp_path / "killed-once"
    monkeypatch.setenv(CRASH_HOOK, f"{victim.id}:{marker}")
    runs = run_study(
        study, "smoke", out_root=tmp_path / "results", executor=RayExecutor("cpu", max_retries=retries), progress=False
    ).set_index("cell_id")
    assert marker.exists()  # the worker did die in that cell
    assert len(runs) == 4
    others = runs.drop(index=victim.id)
    assert set(others["status"]) == {"ok"}  # the sweep went on
    if retries:
        assert runs.loc[victim.id, "status"] == "ok"
    else:
        assert runs.loc[victim.id, "status"] == "crashed"
        assert "retries used up: 0" in runs.loc[victim.id, "error"]
        assert "WorkerCrashedError" in runs.loc[victim.id, "error"]
        assert runs.loc[victim.id, "activation"] == victim.levels["activation"]  # a full row, levels included
        # the crashed cell is not finished: running again retries it alone
        again = run_study(
            study, "smoke", out_root=tmp_path / "results", executor=RayExecutor("cpu"), progress=False
        ).set_index("cell_id")
        assert again.loc[victim.id, "status"] == "ok"
        assert (again.loc[others.index, "finished_at"] == others["finished_at"]).all()


@pytest.mark.parametrize(
    "device, gpus, needle",
    [("cuda:1", None, "Ray picks each cell's GPU"), ("cpu", 1, "left unused"), ("auto", 1.5, "whole number")],
)
def test_gpu_settings_that_cannot_work_are_refused(device, gpus, needle):
    with pytest.raises(UserError, match=needle):
        RayExecutor(device, gpus_per_cell=gpus)


def test_ctrl_c_cancels_the_tasks_keeps_finished_rows_and_exits_130(tmp_path, capsys):
    """SIGINT to this process once the first cell is recorded, as Ctrl-C would send."""
    study = tmp_path / "tiny.toml"
    study.write_text(short_and_long_cells())
    out = tmp_path / "results"
    folder = out / "tiny" / "smoke"

    def interrupt_after_first_cell():
        # An event, not a duration: the first recorded cell. On a machine too loaded for one to
        # appear in half an hour no signal is sent, the sweep finishes, and the test fails on its
        # exit status instead of interrupting before any row exists. A recorded cell is merged at
        # once, its file then deleted: the poll looks for either, or it can miss the file and wait
        # out the long cells (it did once, for over 6 minutes).
        deadline = time.time() + 1800
        while time.time() < deadline:
            if list(folder.glob("cells/*.json")) or (folder / "runs.csv").exists():
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.05)

    threading.Thread(target=interrupt_after_first_cell, daemon=True).start()
    status = main(
        [
            "ablate",
            "--study",
            str(study),
            "--profile",
            "smoke",
            "--out",
            str(out),
            "--no-progress",
            "--no-report",
            "--executor",
            "ray",
        ]
    )
    assert status == 130
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == "interrupted; finished results are kept"
    assert "Traceback" not in err
    runs = pd.read_csv(folder / "runs.csv")
    assert 1 <= len(runs) < 4 and set(runs["status"]) == {"ok"}  # finished rows kept, cancelled ones absent
    deadline = time.time() + 300  # the cancelled tasks give their CPUs back: nothing goes on running
    while time.time() < deadline and ray.available_resources().get("CPU", 0) < 2:
        time.sleep(0.2)
    assert ray.available_resources().get("CPU", 0) == 2


# --- ending cleanly: cells no node can run, an address where nothing listens, Ctrl-C, kill -9 ------

HANG_GUARD = 1800  # seconds: only a hang guard; every wait below is for an event


def ablate_argv(study: Path, out: Path) -> list[str]:
    return ["ablate", "--study", str(study), "--profile", "smoke", "--out", str(out), "--no-progress", "--no-report"]


def user_env() -> dict:
    """This environment without what Ray put there (RAY_AUTH_MODE, say, which also silences a
    warning a user sees), and without RAY_ADDRESS."""
    return {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}


def cli(tmp_path: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m bench ablate --executor ray ...` as a user runs it: its own process, no Ray runtime
    of the test's (no RAY_ADDRESS), so it starts one of its own unless told an address."""
    tiny_study(tmp_path)
    argv = [sys.executable, "-m", "bench", *ablate_argv(tmp_path / "tiny.toml", tmp_path / "results"), "--executor"]
    environ = user_env() | (env or {})
    return subprocess.run(
        [*argv, "ray", *extra], cwd=REPO, env=environ, capture_output=True, text=True, timeout=HANG_GUARD
    )


@pytest.mark.parametrize("resource", ["--cpus-per-cell", "--gpus-per-cell"])
def test_cells_no_node_can_run_are_one_line_before_the_sweep_starts(tmp_path, capsys, resource):
    """Ray would hold such a task forever: the check against the cluster's nodes refuses it first."""
    have = ray.cluster_resources().get({"--cpus-per-cell": "CPU", "--gpus-per-cell": "GPU"}[resource], 0)
    ask = str(int(have) + 1)
    tiny_study(tmp_path)
    out = tmp_path / "results"
    argv = [*ablate_argv(tmp_path / "tiny.toml", out), "--executor", "ray", resource, ask]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and f"{resource} {ask}: each cell asks for {ask} " in err, err
    assert f"has {have:g} that Ray can use; lower {resource}" in err
    assert not out.exists()  # no folder made, no lock file


@pytest.mark.parametrize("resource", ["--cpus-per-cell", "--gpus-per-cell"])
def test_cells_this_machine_cannot_run_are_refused_before_ray_starts(tmp_path, resource):
    """On a runtime it would start itself, the check comes before Ray does: one line, no Ray log lines."""
    import torch

    have = os.cpu_count() if resource == "--cpus-per-cell" else torch.cuda.device_count()
    done = cli(tmp_path, resource, str(have + 1))
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.splitlines() == [done.stderr.strip()], done.stderr  # the error alone
    assert f"error: {resource} {have + 1}: each cell asks for {have + 1} " in done.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("how", ["--ray-address", "RAY_ADDRESS"])
def test_an_address_where_nothing_listens_is_one_line_not_a_hang(tmp_path, how):
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    done = cli(tmp_path, "--ray-address", address) if how == "--ray-address" else cli(tmp_path, env={how: address})
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.splitlines() == [done.stderr.strip()], done.stderr
    assert (
        f"nothing answers at {address}" in done.stderr
        and ("--ray-address " if how != "RAY_ADDRESS" else "RAY_ADDRESS=") in done.stderr
    )


def descendants(pid: int) -> dict[int, str]:
    """pid -> start time of every process below `pid` (its children, theirs, ...), from /proc."""
    children: dict[int, list[int]] = {}
    started = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(stat[1]), []).append(int(entry))
            started[int(entry)] = stat[19]
    found, todo = {}, [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found[child] = started[child]
            todo.append(child)
    return found


def alive(processes: dict[int, str]) -> list[str]:
    """Those of `processes` still running (a zombie nobody reaps counts as gone), with their names."""
    left = []
    for pid, start in processes.items():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[19] == start and fields[0] != "Z":
            left.append(f"{pid} {stat.split('(', 1)[1].rsplit(')', 1)[0]}")
    return left


def start_sweep(tmp_path: Path) -> tuple[subprocess.Popen, Path, Path]:
    """The CLI with a Ray runtime of its own, in its own process group (as a terminal runs it),
    once its first cell is recorded: (process, stderr file, results folder)."""
    study = tmp_path / "tiny.toml"
    study.write_text(short_and_long_cells())
    err = tmp_path / "stderr.txt"
    argv = [sys.executable, "-m", "bench", *ablate_argv(study, tmp_path / "results"), "--executor", "ray"]
    with open(err, "w") as stderr:
        proc = subprocess.Popen(argv, cwd=REPO, env=user_env(), stderr=stderr, start_new_session=True)
    deadline = time.time() + HANG_GUARD
    while time.time() < deadline and proc.poll() is None and "[ok]" not in err.read_text():
        time.sleep(0.2)
    assert proc.poll() is None, err.read_text()[-3000:]  # still running: three cells to go
    return proc, err, tmp_path / "results" / "tiny" / "smoke"


def wait_gone(processes: dict[int, str], seconds: float = 60) -> list[str]:
    """Wait until none of `processes` runs; what is still running after `seconds` (a hang guard)."""
    deadline = time.time() + seconds
    while alive(processes) and time.time() < deadline:
        time.sleep(0.2)
    return alive(processes)


def test_ctrl_c_of_the_command_exits_130_every_time_and_leaves_no_ray_process(tmp_path):
    """SIGINT to the command's process group, as Ctrl-C in a terminal sends it, while cells run on a
    Ray runtime the command started: exit 130, the last line says so, no Ray abort, nothing left."""
    proc, err, folder = start_sweep(tmp_path)
    ray_processes = descendants(proc.pid)
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=HANG_GUARD) == 130, err.read_text()[-3000:]
    text = err.read_text()
    assert text.strip().splitlines()[-1] == "interrupted; finished results are kept", text[-3000:]
    assert "Check failed" not in text and "Traceback" not in text, text[-3000:]
    runs = pd.read_csv(folder / "runs.csv")
    assert 1 <= len(runs) < 4 and set(runs["status"]) == {"ok"}
    assert wait_gone(ray_processes) == []


# How long the Ray processes of a killed driver may outlive it: the reaper's passes take at most 10 s
# (20 of 0.5 s); under two busy loops on 2 cores every process was gone within 1 s of kill -9.
REAPED_WITHIN = 10.0


def test_kill_9_of_the_driver_leaves_no_ray_process(tmp_path):
    """Ray ties its head processes to the driver, but the agents its raylet starts outlived it by
    minutes: the command's reaper kills every process of its Ray session once the driver is gone,
    within a short, bounded wait."""
    proc, err, folder = start_sweep(tmp_path)
    ray_processes = descendants(proc.pid)
    assert any("ray::" in name or "raylet" in name for name in alive(ray_processes)), alive(ray_processes)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=HANG_GUARD)
    assert wait_gone(ray_processes, REAPED_WITHIN) == []
    assert list(folder.glob("cells/*.json")) or len(pd.read_csv(folder / "runs.csv")) >= 1  # the finished cell kept


def test_the_runtime_ablate_starts_runs_its_cells_at_the_callers_priority():
    """Ray's default nice 15 would leave a sweep's cells a sliver of a machine shared with other work."""
    code = (
        "import os, ray\n"
        "from bench.sweep.ray_executor import connect\n"
        "assert connect() == 'local'\n"
        "print('nice', ray.get(ray.remote(lambda: os.nice(0)).remote()) - os.nice(0))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=HANG_GUARD, env=user_env(), cwd=REPO
    )
    assert done.returncode == 0, done.stderr
    assert "nice 0" in done.stdout.splitlines(), done.stdout
