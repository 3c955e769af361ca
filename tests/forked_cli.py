"""Run many `python -m bench ...` command lines, each in its own process, paying for the imports once.

    python tests/forked_cli.py CASES.json RESULTS.json [JOBS]

CASES.json maps a case name to {"argv": [...], "cwd": "...", "env": {...}, "timeout": seconds,
"obey_permission_bits": bool (root's child drops its file-permission overrides: tests/permissions.py)}.
This process imports the command modules (and with them torch) once, then forks one
child per case. The child takes the case's environment and working folder, points
its stdout and stderr at files, and runs the `bench` package as `python -m bench`
does (runpy, as `__main__`): an exception that escapes prints its traceback and
exits 1, as the interpreter would. A fresh interpreter per case costs ~5 s of CPU
importing torch; a fork costs milliseconds. RESULTS.json maps each case name to
{"returncode", "stdout", "stderr", "seconds"}; a case past its timeout is killed
(returncode -9).
"""

from __future__ import annotations

import importlib
import json
import os
import runpy
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

from permissions import obey_permission_bits

# Every command module and what they import late, so that no child pays for an import
# (torchvision.models alone is ~1,000 modules, for `tv:` models and the gate's cases).
PRELOAD = (
    "bench.cli",
    "bench.train.command",
    "bench.measure.command",
    "bench.ablate",
    "bench.report.command",
    "bench.gate.command",
    "bench.report",
    "bench.gate.suite",
    "bench.gate.compare",
    "bench.sweep.runner",
    "bench.env",
    "torchvision.models",
    "torchvision.datasets",
)


def _child(case: dict, stdout: str, stderr: str) -> None:
    """Become `python -m bench ARGV` in the case's folder and environment; never returns."""
    code = 1
    try:
        os.chdir(case["cwd"])
        os.environ.clear()
        os.environ.update(case["env"])
        for fd, path in ((1, stdout), (2, stderr)):
            target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(target, fd)
            os.close(target)
        if case.get("obey_permission_bits"):  # a "folder not writable" case: root too must be refused
            obey_permission_bits()
        sys.argv = ["-m", *case["argv"]]
        try:
            runpy.run_module("bench", run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as e:
            if e.code is None or isinstance(e.code, int):
                code = e.code or 0
            else:  # SystemExit("message"): the interpreter prints it and exits 1
                print(e.code, file=sys.stderr)
                code = 1
        except BaseException:  # noqa: BLE001 - what the interpreter does with an exception nobody caught
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def run_cases(cases: dict, jobs: int = 2) -> dict:
    for module in PRELOAD:
        importlib.import_module(module)
    results = {}
    with tempfile.TemporaryDirectory(prefix="forked-cli-") as tmp:
        waiting = list(enumerate(cases.items()))
        running: dict[int, tuple[str, float, str, str]] = {}
        while waiting or running:
            while waiting and len(running) < jobs:
                i, (name, case) = waiting.pop(0)
                out, err = (os.path.join(tmp, f"{i}.{k}") for k in ("out", "err"))
                pid = os.fork()
                if pid == 0:
                    _child(case, out, err)
                running[pid] = (name, time.monotonic(), out, err)
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                now = time.monotonic()
                for p, (name, start, _, _) in running.items():
                    if now - start > cases[name].get("timeout", 120):
                        os.kill(p, signal.SIGKILL)
                time.sleep(0.01)
                continue
            name, start, out, err = running.pop(pid)
            results[name] = {
                "returncode": os.waitstatus_to_exitcode(status),
                "stdout": Path(out).read_text(errors="replace"),
                "stderr": Path(err).read_text(errors="replace"),
                "seconds": time.monotonic() - start,
            }
    return results


if __name__ == "__main__":
    cases_path, results_path, *rest = sys.argv[1:]
    found = run_cases(json.loads(Path(cases_path).read_text()), int(rest[0]) if rest else 2)
    Path(results_path).write_text(json.dumps(found, indent=1))
