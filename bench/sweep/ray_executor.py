"""Cells as Ray tasks: one machine's GPUs, or a whole cluster's, behind the `Executor` interface.

Ray only places and runs cells; the runner in this process still records every row,
holds the results-folder lock and writes the tables.

- Each cell is a task asking for `gpus_per_cell` GPUs (a fraction shares one) and
  `cpus_per_cell` CPUs. Ray sets CUDA_VISIBLE_DEVICES for the task, so it trains on
  `cuda` (device 0 of what it sees), and OMP_NUM_THREADS to its CPU count.
- The data set is loaded here, from the cache, once per distinct data spec and put
  into the object store once; tasks read it from there (without a copy on the same
  node), so workers need neither the data path nor the cache.
- A worker process that dies mid-cell (killed, segfault, a node lost) is retried up
  to `max_retries` times; after that the cell is a `crashed` row with Ray's message and
  the sweep goes on. An exception inside the cell (CUDA out of memory included) never
  reaches Ray: `run_cell` makes it the row's status.
- Leaving early (Ctrl-C, an error here) stops a Ray runtime this process started, which ends
  its tasks; on a runtime it joined, it cancels every task not yet finished and waits until
  Ray has settled each cancellation.
- A Ray runtime started here is watched by a small process of its own (`_REAPER`): when this
  process ends, however it ends (kill -9 included), it kills whatever of that runtime is left.
- Cells that no machine could ever run (more CPUs or GPUs than any node has) and an address
  where nothing listens are one-line errors before anything runs, not a sweep that waits forever.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, fields
from pathlib import Path

import torch

import bench
from bench.data import Dataset, load_data
from bench.device import pick_device
from bench.env import environment, git_commit
from bench.errors import UserError
from bench.sweep.runner import CellFn
from bench.train.dataspec import data_spec
from bench.train.result import CRASHED

log = logging.getLogger(__name__)

# Test hook: "<cell_id>:<marker file>" makes that cell's worker process SIGKILL itself the
# first time it runs the cell (it creates the marker file first, so a retry runs normally).
CRASH_HOOK = "BENCH_TEST_CRASH_CELL"
WAIT_SECONDS = 1.0  # how long one ray.wait may block: Ctrl-C is seen between waits
CANCEL_SECONDS = 30.0  # how long a cancelled task may take to stop before its worker is killed
CONNECT_SECONDS = 5.0  # for a cluster's port to answer; Ray itself retries an address for minutes

_connection: str | None = None  # how this process joined Ray, as `connect` returns it
_reaper: subprocess.Popen | None = None  # holds the pipe whose closing tells the reaper this process ended

# Run as `python -c _REAPER SESSION_DIR RAY_DIR` with a pipe from the driver as stdin. Its read
# returns when the driver has exited: every process of that Ray session still alive (a Ray
# program, with a file open in the session folder) is then killed. Ray ties its head processes to
# the driver, but the agents the raylet starts outlived a killed driver by minutes.
_REAPER = r"""
import os, signal, sys, time
session, ray_dir = sys.argv[1].rstrip("/") + "/", sys.argv[2]
sys.stdin.buffer.read()

def in_session(pid):
    try:
        cmd = open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace")
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    if not (cmd.startswith("ray::") or ray_dir in cmd):
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(session):
                return True
        except OSError:
            pass
    return False

for _ in range(20):  # a few passes: a process may start while the first one runs
    left = [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid() and in_session(p)]
    if not left:
        break
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    time.sleep(0.5)
"""


def import_ray():
    try:
        import ray
    except ImportError:
        raise UserError("--executor ray needs Ray: pip install 'alexnet-bench[ray]'") from None
    return ray


# Ray runs its workers at nice 15. On this machine's own runtime the cells are the sweep's whole
# work, as they are under the local executor (nice 0): at 15, any other busy process takes nearly
# all of the CPU from them (the Ray tests stalled for over ten minutes beside two busy loops).
LOCAL_SYSTEM_CONFIG = {"worker_niceness": 0}


def connect(address: str | None = None) -> str:
    """Join the Ray cluster at `address` ($RAY_ADDRESS when None), or start Ray on this machine
    when neither is given (it stops when this process exits). Returns "local", "remote", or
    "existing" for a connection this process already had (a test's local runtime, say).
    """
    global _connection
    ray = import_ray()
    if ray.is_initialized():
        return _connection or "existing"
    flag = "--ray-address" if address else "RAY_ADDRESS="
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    quiet = {"logging_level": logging.WARNING, "log_to_driver": False}  # rows carry each cell's outcome
    if address == "local":
        context = ray.init(address="local", include_dashboard=False, _system_config=LOCAL_SYSTEM_CONFIG, **quiet)
        _start_reaper(ray, context.address_info["session_dir"])
        _connection = "local"
        return _connection
    _check_listening(address, flag)
    try:
        # The workers run this checkout's bench (torch and the rest must be on every node).
        ray.init(address=address, runtime_env={"py_modules": [bench]}, **quiet)
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise UserError(
            f"--ray-address {address}: no Ray cluster reached ({str(e).splitlines()[0]}); "
            f"start one with `ray start --head`, or leave --ray-address out to run on this machine"
        ) from None
    _connection = "remote"
    return _connection


def will_start_ray(address: str | None) -> bool:
    """Whether `connect(address)` would start a Ray runtime on this machine."""
    return not import_ray().is_initialized() and (address or os.environ.get("RAY_ADDRESS") or "local") == "local"


def _check_listening(address: str, flag: str) -> None:
    """Refuse HOST:PORT (or ray://HOST:PORT) where nothing answers: ray.init would retry for minutes."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():  # "auto", or a form Ray's own error names
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_SECONDS).close()
    except OSError as e:
        raise UserError(
            f"{flag}{'' if flag.endswith('=') else ' '}{address}: nothing answers at {host}:{port} "
            f"({e.strerror or type(e).__name__}); start a cluster with `ray start --head` and pass its "
            f"address, or leave --ray-address out to run on this machine"
        ) from None


def _start_reaper(ray, session_dir: str) -> None:
    global _reaper
    if not os.path.isdir("/proc"):  # the reaper finds the session's processes through /proc (Linux)
        return
    _reaper = subprocess.Popen(
        [sys.executable, "-c", _REAPER, session_dir, os.path.dirname(ray.__file__)],
        stdin=subprocess.PIPE,
        start_new_session=True,  # Ctrl-C in a terminal reaches the driver, not the reaper
    )


def _started_here(ray) -> bool:
    """Whether this process started the Ray runtime it is connected to (`ray.init()` without an
    address, a test's say): one machine, no autoscaler. Ray has no public call for it."""
    node = getattr(ray._private.worker, "_global_node", None)
    return bool(getattr(node, "all_processes", None))


def _this_machine() -> dict:
    """What a Ray runtime started here will offer, before starting it: Ray counts the same GPUs
    and at most these CPUs (fewer under a CPU quota, which `check` then sees)."""
    return {"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}


def _cancel(ray, refs: list) -> None:
    """Stop the tasks of `refs` and wait until Ray has settled each one.

    A plain cancel raises KeyboardInterrupt inside the task and the worker lives on. Killing
    the worker (force) races Ray's retry of a task whose worker died, and the driver then can
    abort with `Check failed: it != submissible_tasks_.end()` (ray-project/ray#54798): force is
    kept for a task still running CANCEL_SECONDS after the plain cancel.
    """
    for force in (False, True):
        for ref in refs:
            ray.cancel(ref, force=force)
        _, refs = ray.wait(refs, num_returns=len(refs), timeout=CANCEL_SECONDS)
        if not refs:
            return
    log.warning("%d cancelled Ray tasks had not stopped after %g s", len(refs), 2 * CANCEL_SECONDS)


@dataclass(frozen=True)
class _ShippedData:
    """A `bench.data.Dataset`, every field of it, with its tensors as numpy arrays (which Ray's
    object store hands out without copying). Every field travels, so a cell under Ray has the
    validation split and the clean-training subset a local cell has."""

    arrays: dict  # each tensor field (None where the data set has none) -> np.ndarray
    others: dict  # every other field: classes, normalizer, provenance, crop size, ...

    @classmethod
    def of(cls, data: Dataset) -> _ShippedData:
        arrays, others = {}, {}
        for f in fields(Dataset):
            value = getattr(data, f.name)
            if isinstance(value, torch.Tensor):
                arrays[f.name] = value.numpy()
            else:
                others[f.name] = value
        return cls(arrays, others)

    def dataset(self) -> Dataset:
        with warnings.catch_warnings():  # read-only shared memory; training never writes into the images
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            tensors = {k: torch.from_numpy(v) for k, v in self.arrays.items()}
        return Dataset(**tensors, **self.others)


def _run_in_worker(fn: CellFn, cell, device: str, shipped: _ShippedData, crash_marker: str | None):
    if crash_marker and not Path(crash_marker).exists():
        Path(crash_marker).touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return fn(cell, device, data=shipped.dataset())


def _number(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise UserError(f"{what} must be a non-negative number, got {value!r}")
    return float(value)


class RayExecutor:
    """Every cell a Ray task; results are yielded in the order they finish."""

    def __init__(
        self,
        device: str = "auto",
        *,
        address: str | None = None,
        gpus_per_cell: float | None = None,
        cpus_per_cell: float = 1.0,
        max_retries: int = 2,
    ):
        kind, _, index = device.partition(":")
        if index:
            raise UserError(f"--device {device}: under --executor ray, Ray picks each cell's GPU; use --device cuda")
        if kind not in ("auto", "cpu", "cuda", "mps"):
            pick_device(device)  # its message lists the valid devices
        if gpus_per_cell is not None:
            gpus_per_cell = _number(gpus_per_cell, "--gpus-per-cell")
            if gpus_per_cell > 1 and not gpus_per_cell.is_integer():
                raise UserError(f"--gpus-per-cell {gpus_per_cell:g}: above 1 it must be a whole number of GPUs")
            if gpus_per_cell and kind in ("cpu", "mps"):
                raise UserError(
                    f"--gpus-per-cell {gpus_per_cell:g} with --device {device}: GPUs would be reserved "
                    f"and left unused; use --device cuda or auto"
                )
            if not gpus_per_cell and kind == "cuda":
                raise UserError("--device cuda under --executor ray needs --gpus-per-cell above 0")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise UserError(f"--max-retries must be a non-negative integer, got {max_retries!r}")
        self.device = kind
        self.address = address
        self.gpus_per_cell = gpus_per_cell
        self.cpus_per_cell = _number(cpus_per_cell, "--cpus-per-cell")
        self.max_retries = max_retries

    def check(self) -> None:
        """Connect, settle GPUs per cell (as given, else none on cpu/mps, else one if the cluster
        has GPUs or --device cuda asks for them), and refuse cells that no node could run. For a
        runtime started here that is checked first against this machine, before Ray starts."""
        ray = import_ray()
        if will_start_ray(self.address):
            self._fit(self._per_cell(_this_machine()["GPU"]), _this_machine(), local=True)
        where = connect(self.address)
        have = ray.cluster_resources().get("GPU", 0)
        largest = {}  # a task runs on one node: what the biggest live node has of each resource
        for node in ray.nodes():
            for name, amount in node.get("Resources", {}).items() if node.get("Alive") else ():
                largest[name] = max(largest.get(name, 0.0), amount)
        self.gpus_per_cell = self._per_cell(have)
        self._fit(self.gpus_per_cell, largest, local=where == "local" or _started_here(ray))

    def _per_cell(self, have_gpus: float) -> float:
        if self.gpus_per_cell is not None:
            return self.gpus_per_cell
        return 0.0 if self.device in ("cpu", "mps") else float(self.device == "cuda" or have_gpus > 0)

    def _fit(self, gpus_per_cell: float, node: dict, *, local: bool) -> None:
        for name, flag, ask in (
            ("GPU", "--gpus-per-cell", gpus_per_cell),
            ("CPU", "--cpus-per-cell", self.cpus_per_cell),
        ):
            have = node.get(name, 0.0)
            if ask <= have:
                continue
            if local:  # no autoscaler will ever add one: the cell would wait forever
                fix = f"lower {flag}" + (" or use --device cpu" if name == "GPU" else "")
                raise UserError(
                    f"{flag} {ask:g}: each cell asks for {ask:g} {name}{'s' * (ask != 1)} and this machine has {have:g} "
                    f"that Ray can use; {fix}"
                )
            log.warning(
                "no node of the Ray cluster has %g %ss (%s); cells wait until such a node joins "
                "(an autoscaler adds one)",
                ask,
                name,
                flag,
            )

    def _task_device(self) -> str:
        if self.gpus_per_cell:
            return "cuda"  # the GPU(s) Ray gave this task, which are all it sees
        return "mps" if self.device == "mps" else "cpu"

    def environment(self) -> dict:
        ray = import_ray()
        self.check()
        return {
            "executor": "ray",
            "ray": ray.__version__,
            "ray_cluster": {k: v for k, v in ray.cluster_resources().items() if not k.startswith("node:")},
            "gpus_per_cell": self.gpus_per_cell,
            "cpus_per_cell": self.cpus_per_cell,
            "max_retries": self.max_retries,
            "driver": environment(torch.device("cpu")),
        }

    def run(self, cells, fn: CellFn):
        ray = import_ray()
        self.check()
        task = ray.remote(_run_in_worker).options(
            num_gpus=self.gpus_per_cell, num_cpus=self.cpus_per_cell, max_retries=self.max_retries
        )
        device = self._task_device()
        crash_id, _, crash_marker = os.environ.get(CRASH_HOOK, "").partition(":")
        shipped, failed = _ship(ray, cells)
        for cell, message in failed:
            yield fn.failed(cell, "error", message)
        running = {}  # ObjectRef -> (cell, submitted at)
        try:
            for cell in cells:
                if cell.id in shipped:
                    ref = task.remote(fn, cell, device, shipped[cell.id], crash_marker if cell.id == crash_id else None)
                    running[ref] = (cell, time.perf_counter())
            shipped.clear()  # the tasks hold the data now; it leaves the store with the last of them
            while running:
                ready, _ = ray.wait(list(running), num_returns=1, timeout=WAIT_SECONDS)
                for ref in ready:
                    cell, submitted = running.pop(ref)
                    yield self._result(ray, ref, cell, fn, time.perf_counter() - submitted)
        finally:  # Ctrl-C, or the caller stopped: nothing keeps running after the sweep
            if running and _connection == "local":
                # Ours: stopping it ends the tasks. Cancelling them first raced the replies of
                # tasks that were finishing, and Ray's driver aborted about one Ctrl-C in five
                # (`Check failed: ... Tried to complete task that was not pending`).
                ray.shutdown()
            elif running:
                _cancel(ray, list(running))

    def _result(self, ray, ref, cell, fn: CellFn, seconds: float):
        try:
            result = ray.get(ref)
            # bench shipped to a cluster (py_modules) has no .git; it is this checkout's code
            result.row["git_commit"] = result.row.get("git_commit") or git_commit()
            return result
        except ray.exceptions.RayTaskError as e:  # an exception outside run_cell's own handling
            cause = e.cause if getattr(e, "cause", None) is not None else e
            return fn.failed(cell, "error", f"{type(cause).__name__}: {cause}", seconds)
        except ray.exceptions.RayError as e:  # the worker process or its node died, retries used up
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            return fn.failed(
                cell, CRASHED, f"{type(e).__name__} (retries used up: {self.max_retries}): {first}", seconds
            )


def _ship(ray, cells) -> tuple[dict, list]:
    """Load each distinct data set once and put it in the object store: {cell id: ref}, and the
    cells whose data failed to load with the message (they become error rows, as they do locally)."""
    refs, by_spec, failed = {}, {}, []
    for cell in cells:
        spec = data_spec(cell.config)
        if spec not in by_spec:
            try:
                by_spec[spec] = ray.put(_ShippedData.of(load_data(spec)))
            except Exception as e:  # noqa: BLE001 - a data error is each of its cells' row, as in run_cell
                by_spec[spec] = f"{type(e).__name__}: {e}"
        if isinstance(by_spec[spec], str):
            failed.append((cell, by_spec[spec]))
        else:
            refs[cell.id] = by_spec[spec]
    return refs, failed
