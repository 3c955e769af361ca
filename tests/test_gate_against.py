"""`gate --against REF`, shown to work: this checkout and a commit, timed in alternating rounds.

End to end (real git export, real worker processes), the working tree's own gate:
against a commit whose worker counts 8 times the images it times (its rounds look
8 times as fast: the working tree is -87.5% against it, a margin that 50 ms rounds
on a loaded 2-core machine keep), it fails naming both benchmarks, at a 50% threshold; the point there is that the two sides run different
code and the ratio points the right way, not the verdict's fine print, which the
scripted-worker tests check on exact numbers. A killed gate leaves no worker and no
exported tree behind. The modelled-machine test runs the verdict against a recorded
noise model, not against this machine's speed.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bench.cli import main as cli_main
from bench.env import environment
from bench.gate import command, paired
from bench.gate.compare import confirm, regressed
from bench.measure.worker import PROTOCOL

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--quick", "--model", "alexnet", "--width", "0.125", "--batch-size", "16"]
FAST_REF = ('"images_per_round": images * steps,', '"images_per_round": 8 * images * steps,')


def _gate(*args: str) -> int:
    return cli_main(["gate", *args])


def _one_line_error(capfd) -> str:
    err = capfd.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err


# ---------------------------------------------------------------- end to end


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def faster_ref(tmp_path_factory) -> tuple[Path, str]:
    """A repository (its git folder) holding the working tree's package as a commit whose worker counts 8 times
    the images it times; and that commit's id."""
    repo = tmp_path_factory.mktemp("against") / "repo"
    for part in ("bench", "ablations"):
        shutil.copytree(ROOT / part, repo / part, ignore=shutil.ignore_patterns("__pycache__"))
    worker = repo / "bench" / "measure" / "worker.py"
    text = worker.read_text()
    assert FAST_REF[0] in text, "the patch below no longer applies: update FAST_REF"
    worker.write_text(text.replace(*FAST_REF, 1))
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "a faster-looking worker")
    return repo / ".git", _git(repo, "rev-parse", "HEAD")


def _gate_process(git_dir: Path, *args: str, **kw) -> subprocess.Popen:
    """`python -m bench gate --against ...` of the working tree, reading commits from the repository `git_dir`."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GIT_DIR": str(git_dir), **kw.pop("env", {})}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    argv = [sys.executable, "-m", "bench", "gate", "--device", "cpu", *args]
    return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_the_working_trees_gate_fails_against_a_faster_commit_naming_what_lost(faster_ref, tmp_path):
    """This side runs the working tree, the commit's its own code (a mix-up, or an inverted ratio, would pass)."""
    git_dir, commit = faster_ref
    # No confirming pairs (--confirm 0) and few pairs: the scripted tests below check those.
    quick = [*TINY, "--pairs", "5", "--confirm", "0", "--threshold", "0.5", "--report", str(tmp_path / "r.csv")]
    out, err = _gate_process(git_dir, "--against", commit, *quick).communicate(timeout=600)
    verdict = out.strip().splitlines()[-1] if out.strip() else err
    assert verdict.startswith(f"FAILED: 2 of 2 benchmarks lost more than 50% against {commit}"), out + err
    assert "train alexnet" in verdict and "infer alexnet" in verdict
    assert re.search(r"^train alexnet .* -[5-9]\d\.\d% \[", out, re.M), out  # -87.5% give or take the load
    rows = (tmp_path / "r.csv").read_text().splitlines()
    assert rows[0].startswith("benchmark,") and sum(r.endswith(",regressed") for r in rows) == 2


def _children(pid: int, running: bytes) -> list[int]:
    """The child processes of `pid` whose command line holds `running`."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:  # a short-lived child (git, say) may be gone before its files are read
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and running in (stat.parent / "cmdline").read_bytes():
                found.append(int(stat.parent.name))
        except OSError:
            continue
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_kill_9_of_the_gate_leaves_no_worker_and_no_exported_tree(faster_ref, tmp_path):
    git_dir, commit = faster_ref
    gate = _gate_process(git_dir, "--against", commit, *TINY, env={"TMPDIR": str(tmp_path)})
    deadline, workers = time.monotonic() + 300, []
    while len(workers) < 2 and gate.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
        workers = _children(gate.pid, b"bench.measure.worker")
    assert len(workers) == 2 and list(tmp_path.glob("bench-gate-*/tree")), gate.communicate()
    gate.send_signal(signal.SIGKILL)
    gate.communicate()
    deadline = time.monotonic() + 10
    while (any(map(_alive, workers)) or list(tmp_path.iterdir())) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in workers if _alive(p)] and not list(tmp_path.iterdir())


# ---------------------------------------------------------------- the verdict, on exact numbers


@pytest.mark.parametrize(
    "change, lo, hi, status",
    [
        (-0.20, -0.25, -0.15, "suspect"),
        (-0.20, -0.40, +0.02, "ok"),  # a big drop whose interval allows none: not resolved
        (-0.08, -0.10, -0.06, "ok"),  # a sure drop, but within the threshold
        (+0.20, +0.15, +0.25, "faster"),
        (+0.20, -0.01, +0.40, "ok"),
    ],
)
def test_judge_needs_a_loss_beyond_the_threshold_and_an_interval_excluding_none(change, lo, hi, status):
    assert paired.judge(change, lo, hi, threshold=0.10) == status


def test_paired_change_is_the_geometric_mean_of_the_pairs_ratios_with_a_t_interval():
    ref, here = [100.0, 200.0, 400.0], [90.0, 180.0, 360.0]  # every pair -10%, whatever the machine's speed
    change, lo, hi = paired.paired_change(ref, here)
    assert change == pytest.approx(-0.10) and lo == pytest.approx(-0.10) and hi == pytest.approx(-0.10)
    change, lo, hi = paired.paired_change([100.0, 100.0], [80.0, 100.0])
    assert change == pytest.approx(math.sqrt(0.8) - 1)
    # log ratios 0 and log 0.8: mean m, sd s = |log 0.8| / sqrt 2, half-width t(0.975, 1) s / sqrt 2 = 12.706 |log 0.8| / 2
    half = 12.7062047 * abs(math.log(0.8)) / 2
    assert lo == pytest.approx(math.exp(math.log(0.8) / 2 - half) - 1, rel=1e-6)
    assert hi == pytest.approx(math.exp(math.log(0.8) / 2 + half) - 1, rel=1e-6)


# ---------------------------------------------------------------- the command, with scripted workers


class ScriptedWorker:
    """Instead of a worker process: rounds at the images/s `rate(side, benchmark, round)` gives; every request
    is logged in `log`, shared by both sides, as (side, request)."""

    def __init__(self, side: str, rate, cases: list[str], log: list, device_name: str | None = None):
        self.side, self.rate, self.cases, self.log = side, rate, cases, log
        self.env = {**environment(torch.device("cpu")), **({"device_name": device_name} if device_name else {})}
        self.hello = {"protocol": PROTOCOL}
        self.benchmark, self.rounds = None, 0

    @property
    def calls(self) -> list[dict]:
        return [request for side, request in self.log if side == self.side]

    def ask(self, **request) -> dict:
        self.log.append((self.side, request))
        if "environment" in request:
            return self.env
        if "setup" in request:
            spec = request["setup"]
            model = spec["config"]["model"]
            if model not in self.cases:
                raise paired.WorkerFailed(self.side, None, f"UserError: unknown model {model!r}")
            self.benchmark, self.rounds = f"test_{spec['phase']}[{model}]", 0
            return {"images_per_round": 100, "steps_per_round": 1}
        self.rounds += 1
        return {"seconds": 100 / self.rate(self.side, self.benchmark, self.rounds)}

    def close(self) -> None:
        pass


@pytest.fixture
def scripted(monkeypatch, tmp_path):
    """Install scripted workers (and no export: the end-to-end tests above export): `scripted(rate,
    ref_cases=..., ref_device=...)`; returns {side: worker} and the shared log of requests under "log"."""
    made: dict = {"log": []}

    def install(rate, ref_cases=("lenet5", "alexnet"), ref_device=None):
        def start(tree, where):
            assert tree == tmp_path
            made[paired.REF] = ScriptedWorker(paired.REF, rate, list(ref_cases), made["log"], ref_device)
            made[paired.HERE] = ScriptedWorker(paired.HERE, rate, ["lenet5", "alexnet"], made["log"])
            return made[paired.REF], made[paired.HERE]

        monkeypatch.setattr(paired, "start_workers", start)
        monkeypatch.setattr(paired, "exported", lambda root, commit: contextlib.nullcontext(tmp_path))
        return made

    return install


def _machine(side, benchmark, i):
    """The same code on a machine whose speed swings by 20% from one pair of rounds to the next."""
    return 1000.0 * (1.2 if i % 2 else 0.8)


def test_identical_code_on_a_swinging_machine_passes_in_strictly_alternating_rounds(scripted, capfd):
    workers = scripted(_machine)
    assert _gate("--against", "HEAD", "--model", "lenet5,alexnet", "--quick") == 0
    captured = capfd.readouterr()
    assert "PASSED: no benchmark of 4 lost more than 10% against HEAD" in captured.out
    assert "measuring" not in captured.err  # nothing was suspected
    setups = [(c["setup"]["phase"], c["setup"]["config"]["model"]) for c in workers[paired.REF].calls if "setup" in c]
    assert setups == [(p, c) for p in ("train", "infer") for c in ("alexnet", "lenet5")]  # registry order
    # One shared order: per benchmark, both set up, then R H R H ... for every pair, never two of a side in a row.
    per_benchmark = ["ref setup", "here setup"] + ["ref round", "here round"] * command.PAIRS
    order = [f"{side} {next(iter(request))}" for side, request in workers["log"] if "environment" not in request]
    assert order == per_benchmark * 4


def test_a_loss_in_every_set_of_pairs_fails_naming_it(scripted, capfd, tmp_path):
    def rate(side, benchmark, i):
        slow = side == paired.HERE and benchmark == "test_train[alexnet]"
        return _machine(side, benchmark, i) * (0.7 if slow else 1.0) * (1 + 0.01 * (i % 3))

    workers = scripted(rate)
    assert _gate("--against", "HEAD", "--quick", "--model", "lenet5,alexnet", "--report", str(tmp_path / "r.csv")) == 1
    captured = capfd.readouterr()
    assert "measuring 1 suspected benchmark(s) again in 10 fresh pairs of rounds (1 of at most 1): " in captured.err
    verdict = captured.out.strip().splitlines()[-1]
    assert verdict == (
        "FAILED: 1 of 4 benchmarks lost more than 10% against HEAD, with intervals excluding no loss: train alexnet"
    )
    assert "train alexnet: -30.0% [" in captured.out and "suspected every time: a regression" in captured.out
    last = [c["setup"] for c in workers[paired.HERE].calls if "setup" in c][-1]
    assert (last["phase"], last["config"]["model"]) == ("train", "alexnet")
    (slow,) = [r for r in (tmp_path / "r.csv").read_text().splitlines() if r.endswith(",regressed")]
    assert re.search(r",-0\.3000 \[-0\.3\d+ -0\.\d+\],regressed$", slow), slow  # the fresh pairs' change [interval]


def test_a_loss_that_fresh_pairs_do_not_show_passes(scripted, capfd):
    def rate(side, benchmark, i):
        first_set = sum("setup" in c for c in workers[paired.HERE].calls) <= 4
        blip = side == paired.HERE and benchmark == "test_infer[lenet5]" and first_set
        return 1000.0 * (0.6 if blip else 1.0) * (1 + 0.01 * (i % 3))

    workers = scripted(rate)
    assert _gate("--against", "HEAD", "--quick", "--model", "lenet5,alexnet") == 0
    out = capfd.readouterr().out
    assert "infer lenet5: -40.0% [" in out and "again +0.0% [+0.0%, +0.0%]; cleared: noise" in out
    assert "PASSED" in out.splitlines()[-1]


def test_a_benchmark_the_commit_cannot_build_is_listed_not_compared(scripted, capfd):
    scripted(_machine, ref_cases=("lenet5",))
    assert _gate("--against", "HEAD", "--quick", "--model", "lenet5,alexnet") == 0
    out = capfd.readouterr().out
    assert "PASSED: no benchmark of 2 lost" in out
    assert any(
        line.startswith("train alexnet") and line.endswith("new (not at the commit)") for line in out.splitlines()
    )


def test_workers_on_different_devices_are_refused(scripted, capfd):
    workers = scripted(_machine, ref_device="Another CPU")
    assert _gate("--against", "HEAD", *TINY) == 2
    assert "the worker of HEAD runs on cpu 'Another CPU', this checkout's on cpu" in _one_line_error(capfd)
    assert not any("setup" in request for _, request in workers["log"])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--against", ""], "--against needs a git ref (a branch, tag or commit id), got an empty one"),
        (["--against", "HEAD", "--pairs", "1"], "--pairs must be 2 or more"),
        (["--against", "HEAD", "--repeat", "3"], "--repeat is for --save and --compare"),
        (["--compare", "base", "--pairs", "5"], "--pairs is for --against"),
        (["--against", "no-such-ref-anywhere"], "--against 'no-such-ref-anywhere' names no commit"),
        (["--against", "HEAD", "--", "-x"], "--against runs no pytest"),
        (["--against", "HEAD", "--confirm", "-1"], "--confirm must be 0 or more"),
        (["--against", "HEAD", "--stat", "min"], "--stat is for --save and --compare; --against times --pairs"),
        (["--against", "HEAD", "--storage", "/tmp"], "--storage is for --save and --compare"),
    ],
)
def test_bad_arguments_are_one_line_exit_2(scripted, capfd, args, message):
    workers = scripted(_machine)
    assert _gate(*args) == 2
    assert message in _one_line_error(capfd)
    assert not workers["log"], "a worker started before the arguments were checked"


def test_outside_a_git_checkout_is_one_line_exit_2(scripted, capfd, tmp_path, monkeypatch):
    monkeypatch.setattr(command, "ROOT", tmp_path)
    assert _gate("--against", "main", *TINY) == 2
    assert "is not a git checkout; compare with a saved baseline instead" in _one_line_error(capfd)


# ---------------------------------------------------------------- a modelled noisy machine


def _simulated_against(rng: random.Random, slowdown: dict[str, float]) -> bool:
    """Whether --against fails, on a modelled machine: the verdict's logic, not this machine's speed.

    The noise model, from a 2-core AMD EPYC VM: the host's speed wanders from one
    benchmark to the next by -30% to +30% (single suite runs of one benchmark did),
    drifts within a benchmark by up to 5% a pair, and each round has its own 6%
    jitter (the measured spread of a pair's log ratio was 6-9%, that of 2 rounds).
    """
    speed: dict[str, float] = {}

    def rate(side, benchmark, i):
        if i == 1 and side == paired.REF:  # a new benchmark (or set of pairs): a new phase of the host
            speed[benchmark] = rng.uniform(0.7, 1.3)
        speed[benchmark] *= rng.uniform(0.975, 1.025)
        slower = slowdown.get(benchmark, 1.0) if side == paired.HERE else 1.0
        return 1000.0 * speed[benchmark] * slower * rng.lognormvariate(0, 0.06)

    cases = [f"case{i}" for i in range(10)]
    names = {f"test_{p}[{c}]": {"config": {"model": c}, "phase": p} for p in ("train", "infer") for c in cases}
    ref, here = ScriptedWorker(paired.REF, rate, cases, []), ScriptedWorker(paired.HERE, rate, cases, [])
    rows = [paired.row(n, *paired.time_pairs(ref, here, spec, command.PAIRS), 0.10) for n, spec in names.items()]

    def remeasure(suspects, attempt):
        return {n: paired.paired_change(*paired.time_pairs(ref, here, names[n], command.PAIRS)) for n in suspects}

    confirm(rows, remeasure, command.AGAINST_CONFIRM, functools.partial(paired.judge_again, threshold=0.10))
    return bool(regressed(rows))


def test_on_a_modelled_noisy_machine_identical_code_passes_and_half_the_threads_fails():
    """20 benchmarks, 10 gate runs each way; one thread of two costs 23-48% per benchmark (the issue's measure)."""
    rng = random.Random(0)
    names = [f"test_{p}[case{i}]" for p in ("train", "infer") for i in range(10)]
    identical = [_simulated_against(rng, {}) for _ in range(10)]
    half = [_simulated_against(rng, {n: rng.uniform(0.52, 0.77) for n in names}) for _ in range(10)]
    assert sum(identical) <= 1 and sum(half) == 10, (identical, half)


def test_the_csv_report_has_each_change_with_its_interval(scripted, tmp_path):
    scripted(_machine)
    assert _gate("--against", "HEAD", *TINY, "--report", str(tmp_path / "r.csv")) == 0
    header = (tmp_path / "r.csv").read_text().splitlines()[0].split(",")
    assert {"benchmark", "change", "lo", "hi", "pairs", "status"} <= set(header)
