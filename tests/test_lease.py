"""The GPU lease (scripts/gpu_lease.py) on the CPU: what comes back from $OUT obeys the device tool's
rules, the archive holds each stage's log and record, a SIGKILL of the script mid-stage leaves the
archive of the stages before (and no stage running), the whole group of a stage is stopped at its
budget, the budgets fit the deadline, and the archive unpacks into results/ by the normal resume.

The dry run here runs three of the seven stages (setup, the smoke check on synthetic data and a tiny
JPEG archive, figure1 stopped at its budget); every stage's dry run is `python3 scripts/gpu_lease.py
--dry-run --out DIR` (about two minutes on two busy cores).
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def script(name: str):
    """A script of scripts/ as a module (they are not a package)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


lease_py = script("gpu_lease")


def start_lease(tmp: Path, *extra: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BENCH_")}
    env["OMP_NUM_THREADS"] = "1"
    argv = [sys.executable, str(SCRIPTS / "gpu_lease.py"), "--dry-run", "--out", str(tmp / "out")]
    argv += ["--work", str(tmp / "work"), "--results-from", str(tmp / "committed"), *extra]
    return subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def tiny_jpeg_archive(path: Path) -> Path:
    """An ImageFolder .tar.gz of 10 classes, 8 training and 3 test 32x32 JPEGs each: the real-data path."""
    with tarfile.open(path, "w:gz") as tar:
        for c in range(10):
            for split, n in (("train", 8), ("test", 3)):
                for i in range(n):
                    buf = io.BytesIO()
                    Image.new("RGB", (32, 32), (25 * c, 7 * i, 255 - 25 * c)).save(buf, "JPEG")
                    info = tarfile.TarInfo(f"tiny/{split}/class{c}/{i:04d}.jpg")
                    info.size = len(buf.getvalue())
                    tar.addfile(info, io.BytesIO(buf.getvalue()))
    return path


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lease")
    data = tiny_jpeg_archive(tmp / "tiny.tar.gz")
    # budgets 5x (not figure1's, stopped at its budget by design): a loaded CPU never stops the smoke check
    proc = start_lease(tmp, "--stages", "setup,smoke,figure1", "--data", str(data), "--budget-scale", "5")
    output, _ = proc.communicate(timeout=600)
    return tmp, proc.returncode, output


def members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive, "r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def test_what_comes_back_from_out_obeys_the_device_tools_rules(dry_run):
    tmp, status, output = dry_run
    assert status == 0, output
    out = tmp / "out"
    files = [p for p in out.rglob("*") if p.is_file()]
    assert {p.name for p in files} == {"lease.tar.gz", "lease.json"}
    assert len(files) <= 8
    for p in out.rglob("*"):
        rel = p.relative_to(out)
        assert len(rel.parts) <= 3, rel  # $OUT/a/b/file at most
        assert all(set(part) <= NAME_CHARS for part in rel.parts), rel
        assert p.is_dir() or p.stat().st_size < 16 << 20


def test_the_archive_holds_each_stages_log_and_record(dry_run):
    tmp, _, output = dry_run
    got = members(tmp / "out" / "lease.tar.gz")
    record = json.loads(got["lease.json"])
    assert record == json.loads((tmp / "out" / "lease.json").read_text())  # the summary beside it is the same
    assert [s["stage"] for s in record["stages"]] == [s.name for s in lease_py.plan(dry_lease(tmp))]
    ran = [s for s in record["stages"] if s["status"] != "skipped"]
    assert [s["stage"] for s in ran] == ["setup", "smoke", "figure1"]
    for number, stage in enumerate(record["stages"]):
        if stage["status"] == "skipped":
            assert stage["why"] == "not asked for (--stages)"
            continue
        log = got[f"logs/{number:02d}-{stage['stage']}.log"].decode()
        assert json.loads(got[f"logs/{number:02d}-{stage['stage']}.json"]) == stage
        assert {"budget_s", "seconds", "exit", "started"} <= set(stage)
        assert log.startswith("wheels:" if stage["stage"] == "setup" else "$ ")  # the whole log, from its start
    assert "smoke: 11 cells, 0 eager failed, 0 graphed failed" in got["logs/01-smoke.log"].decode()
    assert record["gpu"] == {"name": "none", "driver": "none", "memory": "none", "slug": "cpu"}
    assert ran[1]["status"] == "ok", output  # the smoke check passed
    assert ran[2]["status"] in ("ok", "stopped")  # figure1 runs until its budget: stopped, its cells kept
    smoke = pd.read_csv(io.BytesIO(got["results/lease/cpu/smoke.csv"]))
    eager = smoke[~smoke["graph"]]
    assert set(eager["data"]) == {"synthetic", "archive"} and (eager["verdict"] == "ok").all()
    assert (smoke.loc[smoke["graph"], "verdict"] == "refused").all()  # graph = true is refused on a CPU, in one line


def dry_lease(tmp: Path, **changes):
    record = {"gpu": {"slug": "cpu"}, "data": None}
    fields = dict(out=tmp, work=tmp / "w", cache=tmp / "c", site=tmp / "s", dry_run=True, device="cpu", record=record)
    fields["results_from"] = tmp
    return lease_py.Lease(**{**fields, **changes})


def figure1_folder(folder: Path, cells: list[tuple[str, str, str]]) -> None:
    """A results/figure1/smoke folder as a sweep leaves it: study.json, runs.csv and history.csv of `cells`
    (cell id, status, finished_at)."""
    from bench.io import atomic_write_text, write_csv
    from bench.sweep.study import Study, find_study

    atomic_write_text(folder / "study.json", Study.read(find_study("figure1")).design_at("smoke").to_json())
    rows = [
        {"study": "figure1", "profile": "smoke", "cell_id": c, "setup": "modern", "activation": "relu", "lr": "0.1"}
        | {"seed": 0, "status": status, "finished_at": at}
        for c, status, at in cells
    ]
    write_csv(folder / "runs.csv", rows)
    write_csv(folder / "history.csv", [{"cell_id": c, "epoch": 1, "finished_at": at} for c, _, at in cells])


def with_study_folder(archive: Path, into: Path, cells) -> Path:
    """`archive` with a figure1/smoke folder of `cells` in place of whatever its figure1 stage left (the dry
    run's figure1 is stopped after seconds: how many cells it finished depends on the machine)."""
    folder = into / "lease-folder"
    figure1_folder(folder, cells)
    out = into / "lease.tar.gz"
    with tarfile.open(out, "w:gz") as tar:
        for name, data in members(archive).items():
            if not name.startswith("results/figure1/"):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        for path in folder.iterdir():
            tar.add(path, f"results/figure1/smoke/{path.name}")
    return out


def test_the_archive_unpacks_into_results_by_the_normal_resume(dry_run, tmp_path):
    tmp, _, _ = dry_run
    unpack = script("unpack_lease")
    lease_cells = [("a1", "ok", "T1"), ("b2", "error", "T2"), ("c3", "ok", "T3")]
    archive = with_study_folder(tmp / "out" / "lease.tar.gz", tmp_path, lease_cells)
    results, storage = tmp_path / "results", tmp_path / "store"
    local = results / "figure1" / "smoke"
    # here already: b2 finished, c3 as the lease began with it (it comes back unchanged), d4 of this machine
    figure1_folder(local, [("b2", "ok", "T0"), ("c3", "ok", "T3"), ("d4", "ok", "T4")])
    with pytest.raises(SystemExit, match="dry run"):
        unpack.unpack(archive, results, storage)
    said = unpack.unpack(archive, results, storage, allow_dry_run=True)
    assert f"{local}: 1 of the lease's 3 cells recorded" in said  # a1: new; b2: failed there; c3: the same row
    runs = pd.read_csv(local / "runs.csv").set_index("cell_id")
    assert sorted(runs.index) == ["a1", "b2", "c3", "d4"]
    assert runs.loc["b2", "status"] == "ok" and runs.loc["b2", "finished_at"] == "T0"
    assert sorted(pd.read_csv(local / "history.csv")["cell_id"]) == ["a1", "b2", "c3", "d4"]
    assert not any((local / "cells").glob("*.json"))  # merged, as a sweep merges
    again = unpack.unpack(archive, results, storage, allow_dry_run=True)  # twice: nothing doubled
    assert f"{local}: 0 of the lease's 3 cells recorded" in again
    assert len(pd.read_csv(local / "runs.csv")) == 4
    stages = pd.read_csv(results / "lease" / "cpu" / "stages.csv")
    assert list(stages["stage"]) == [s.name for s in lease_py.plan(dry_lease(tmp))]  # one lease, once
    assert (results / "lease" / "cpu" / "smoke.csv").is_file()
    assert lease_py.done_before(results, "cpu") == {"setup", "smoke"}  # what a next lease on this GPU skips


def test_a_finished_lease_row_replaces_a_finished_row_of_an_older_stopper(tmp_path):
    """A cell run again (Figure 1 on the trailing-epoch stopper) comes back finished at another time."""
    unpack = script("unpack_lease")
    lease, local = tmp_path / "lease" / "figure1" / "smoke", tmp_path / "results" / "figure1" / "smoke"
    figure1_folder(lease, [("b2", "ok", "T9")])
    figure1_folder(local, [("b2", "ok", "T0")])
    unpack.merge_study(lease, local)
    assert pd.read_csv(local / "runs.csv")["finished_at"].tolist() == ["T9"]


def test_a_lease_killed_mid_stage_leaves_the_archive_of_the_stages_before(tmp_path):
    proc = start_lease(tmp_path, "--stages", "setup,smoke")
    summary = tmp_path / "out" / "lease.json"
    deadline = time.monotonic() + 300
    record = {}
    while time.monotonic() < deadline and proc.poll() is None:
        record = json.loads(summary.read_text()) if summary.is_file() else {}
        if record.get("running") == "smoke" and record["stages"][-1].get("pid"):
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the lease ended before it could be killed mid-stage"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    got = members(tmp_path / "out" / "lease.tar.gz")  # readable: a whole archive
    assert "logs/00-setup.log" in got and json.loads(got["logs/00-setup.json"])["status"] == "ok"
    assert [s["stage"] for s in json.loads(got["lease.json"])["stages"]] == ["setup"]
    assert not any(name.startswith("logs/01-") for name in got)
    stage_pid = record["stages"][-1]["pid"]  # the smoke stage's leader dies with the script
    assert wait_gone(stage_pid), f"stage process {stage_pid} outlived the killed lease"


def wait_gone(pid: int, within: float = 30.0) -> bool:
    """Whether `pid` is gone (or a zombie no one has reaped yet) within `within` seconds."""
    end = time.monotonic() + within
    while time.monotonic() < end:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, IndexError):
            return True
        if state == "Z":
            return True
        time.sleep(0.2)
    return False


def test_a_spent_deadline_skips_what_is_left_and_says_so(tmp_path):
    proc = start_lease(tmp_path, "--deadline-s", "35")  # 5 s after the margin: under any stage's minimum
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 3, output  # the smoke check did not run: nothing is trusted
    record = json.loads((tmp_path / "out" / "lease.json").read_text())
    assert [s["status"] for s in record["stages"]] == ["skipped"] and "s left" in record["stages"][0]["why"]
    assert members(tmp_path / "out" / "lease.tar.gz")["lease.json"]


def test_a_stage_at_its_budget_is_stopped_with_its_whole_group(tmp_path):
    """A leader that ignores SIGINT and a grandchild in its group: SIGINT, then SIGKILL, both gone."""
    child = (
        "import signal, subprocess, sys, time; signal.signal(signal.SIGINT, signal.SIG_IGN); "
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
        "print(p.pid, flush=True); time.sleep(120)"
    )
    log_path, stop = tmp_path / "stage.log", []

    def budget_spent(pid: int) -> None:  # once the grandchild runs: the budget is over (a slow machine waits)
        if log_path.read_text().strip():
            stop.append("budget")

    with log_path.open("w") as log:
        argv, env = [sys.executable, "-c", child], dict(os.environ)
        status, stopped, pid = lease_py.run_group(argv, 300.0, log, env, 1.0, on_wait=budget_spent, stop=stop)
    grandchild = int(log_path.read_text().split()[0])
    assert stopped and status == -signal.SIGKILL
    assert wait_gone(pid) and wait_gone(grandchild)


def test_the_stage_budgets_fit_the_deadline_with_a_margin(tmp_path):
    for dry in (False, True):
        stages = lease_py.plan(dry_lease(tmp_path, dry_run=dry, record={"gpu": {"slug": "x"}, "data": "d.tar.gz"}))
        assert sum(s.budget_s for s in stages) <= lease_py.DEADLINE_S - lease_py.MARGIN_S
        lease_py.check_plan(stages, lease_py.DEADLINE_S, lease_py.MARGIN_S)
        assert [s.name for s in stages][:2] == ["setup", "smoke"] and stages[-1].name == "figure1"
    with pytest.raises(ValueError, match="over the deadline"):
        lease_py.check_plan(stages, 100.0, 30.0)


def test_a_copy_without_git_is_made_a_checkout_again_from_the_carried_history(tmp_path):
    repo, copy = tmp_path / "repo", tmp_path / "copy"
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo)]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    for text in ("one", "two", "three"):
        (repo / "f.txt").write_text(text)
        subprocess.run([*git, "add", "f.txt"], check=True)
        subprocess.run([*git, "commit", "-qm", text], check=True)
    bare = tmp_path / "repo.git"
    subprocess.run(["git", "init", "-q", "--bare", str(bare)], check=True)
    subprocess.run(["git", "fetch", "-q", "--depth=2", f"file://{repo}", "HEAD"], cwd=bare, check=True)
    subprocess.run(["git", "update-ref", "refs/heads/lease", "FETCH_HEAD"], cwd=bare, check=True)
    subprocess.run(["git", "symbolic-ref", "HEAD", "refs/heads/lease"], cwd=bare, check=True)
    copy.mkdir()
    (copy / "f.txt").write_text("three, changed")  # the working tree as it travels, uncommitted change and all
    with (tmp_path / "log").open("w") as log:
        assert lease_py.restore_git(copy, bare, log)
    show = subprocess.run(["git", "show", "HEAD~:f.txt"], cwd=copy, capture_output=True, text=True)
    assert show.stdout == "two"  # HEAD~ is there for gate --against
    status = subprocess.run(["git", "status", "--porcelain"], cwd=copy, capture_output=True, text=True).stdout
    assert status.strip() == "M f.txt"  # the change stays a change


def test_only_missing_wheels_are_installed(tmp_path):
    for name in ("pytest-8.0.0-py3-none-any.whl", "no_such_dist-1.0-py3-none-any.whl"):
        (tmp_path / name).write_bytes(b"")
    assert lease_py.missing_wheels(tmp_path) == ["no-such-dist"]  # pytest is installed here: the image's stays


def test_a_figure1_seed_leaves_out_cells_stopped_by_the_older_rule(tmp_path):
    from bench.io import write_csv

    stages = script("lease_stages")
    src = tmp_path / "committed" / "figure1" / "gpu"
    rows = [
        {"study": "figure1", "profile": "gpu", "cell_id": cid, "setup": "modern", "activation": "relu", "lr": "0.1"}
        | {"seed": 0, "status": status, "target_statistic": stat}
        for cid, status, stat in (("a1", "ok", "trailing-epoch mean"), ("b2", "ok", None), ("c3", "error", None))
    ]
    write_csv(src / "runs.csv", rows)
    write_csv(src / "history.csv", [{"cell_id": c, "epoch": 1} for c in ("a1", "b2")])
    assert stages.seed_study("figure1", "gpu", tmp_path / "committed", tmp_path / "lease") == 1
    seeded = pd.read_csv(tmp_path / "lease" / "figure1" / "gpu" / "runs.csv")
    assert list(seeded["cell_id"]) == ["a1"]  # b2 stopped on one window: run again; c3 failed: run again
    assert list(pd.read_csv(tmp_path / "lease" / "figure1" / "gpu" / "history.csv")["cell_id"]) == ["a1"]
    assert stages.seed_study("figure1", "gpu", tmp_path / "committed", tmp_path / "lease") == 0  # once


def test_a_smoke_check_stopped_at_its_budget_judges_the_cells_that_ran(tmp_path, monkeypatch):
    stages = script("lease_stages")
    ran = []

    def cell(args, name, data, graph, cuda):
        if len(ran) == 2:
            raise KeyboardInterrupt  # SIGINT at the budget, during the third cell
        ran.append(name)
        return stages.smoke_row(name, data, graph, {"status": "ok"}, 1.0, cuda)

    monkeypatch.setattr(stages, "smoke_cell", cell)
    args = stages.main_parser().parse_args(["smoke", "--out", str(tmp_path / "smoke.csv"), "--device", "cpu"])
    assert stages.smoke(args) == 0  # what ran passed
    rows = pd.read_csv(tmp_path / "smoke.csv")
    assert list(rows["verdict"][:2]) == ["ok", "ok"] and set(rows["verdict"][2:]) == {"not run"}
    assert len(rows) == 2 * len(stages.studies_in_order())  # every planned cell has its row


@pytest.mark.parametrize(
    ("stage", "entry", "expected"),
    [
        (dict(needed=True), {"status": "ok", "exit": 0}, 0),
        (dict(needed=True), {"status": "failed", "exit": 3}, 3),
        (dict(needed=True), {"status": "stopped", "exit": 0}, 1),  # stopped, and what ran passed: go on
        (dict(needed=True), {"status": "stopped", "exit": -9}, 3),
        (dict(needed=True), {"status": "skipped", "why": "5 s left"}, 3),
        (dict(needed=True), {"status": "skipped", "why": lease_py.NOT_ASKED}, 0),
        (dict(), {"status": "failed", "exit": 1}, 1),
        (dict(open_ended=True), {"status": "stopped", "exit": 130}, 0),
    ],
)
def test_what_a_stages_end_means_for_the_lease(stage, entry, expected):
    assert lease_py.outcome(lease_py.Stage("s", 1.0, **stage), entry) == expected


def test_the_speed_stage_measures_each_net_once_and_again_with_the_modes_measured_before():
    stages = script("lease_stages")
    nets = stages.study_nets("gpu")
    named = [(n["model"], tuple(sorted(n["knobs"].items())), n["mode"]) for n in nets]
    assert len(named) == len(set(named))  # a default spelt out by a study names the same net
    assert named[0] == ("layers-80sec", (), "bf16+cl")  # Figure 1's net first, in its profile's mode
    four_layer = nets[0]
    assert stages.net_modes(four_layer, cuda=True) == ["fp32", "bf16+cl", "graph+bf16+cl", "graph+fp32"]
    assert stages.net_modes(four_layer, cuda=False) == ["fp32", "bf16+cl"]
    # the committed H100 table: the four-layer net's modes without graphs; they are measured again beside them
    h100 = stages.saved_rows(REPO / "results" / "measure" / "modes-cuda.csv")
    name = "NVIDIA H100 80GB HBM3"
    assert set(stages.modes_in(h100, four_layer, name)) == {"fp32", "fp32+cl", "bf16", "bf16+cl"}
    assert stages.modes_done(h100, four_layer, ["fp32", "bf16+cl"], name, quick=False)
    assert not stages.modes_done(h100, four_layer, ["fp32", "graph+fp32"], name, quick=False)
    assert not stages.modes_done(h100, four_layer, ["fp32"], "NVIDIA H200", quick=False)
