"""The GPU lease script's CPU dry run: every stage runs in order, results land under --out as
cells finish, and a deadline stops the studies without losing a finished cell."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_lease.py"


def lease(out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--out", str(out), *extra],
        cwd=REPO,
        capture_output=True,
        text=True,
    )


def test_dry_run_runs_every_stage_into_out(tmp_path):
    done = lease(tmp_path / "out", "--studies", "cifar-lrn,alexnet", "--deadline-s", "3600")  # no race with load
    assert done.returncode == 0, done.stdout + done.stderr
    log = (tmp_path / "out" / "lease.log").read_text()
    stages = ("smoke check", "whole-step graph test", "gate baseline", "speed modes", "packed cells")
    order = [log.index(f"start {what}") for what in (*stages, "cifar-lrn/smoke", "alexnet/smoke")]
    assert order == sorted(order)
    for what in stages:  # "speed modes" and "packed cells" are followed by the model's name
        ends = [line for line in log.splitlines() if f"] end {what}" in line]
        assert ends and all(": exit 0," in line for line in ends), log
    for study in ("cifar-lrn", "alexnet"):
        runs = pd.read_csv(tmp_path / "out" / "results" / study / "smoke" / "runs.csv")
        assert len(runs) and (runs["status"] == "ok").all()
    measured = tmp_path / "out" / "results" / "measure"
    assert (measured / "modes-layers-80sec.csv").is_file() and (measured / "packing-layers-80sec.csv").is_file()
    assert list((tmp_path / "out" / "gate").rglob("*.json"))  # the gate's baseline, where the lease returns it


def test_a_spent_deadline_skips_what_is_left_and_says_so(tmp_path):
    done = lease(tmp_path / "out", "--deadline-s", "4")
    log = (tmp_path / "out" / "lease.log").read_text()
    assert "skip smoke check" in log and done.returncode == 3  # nothing ran, so nothing is trusted
