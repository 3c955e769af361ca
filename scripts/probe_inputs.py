"""Re-run every bad input of issue 24 as a new user would, and print one markdown row per case.

    nice -n 19 .nox/tests/bin/python scripts/probe_inputs.py [--only SUBSTRING] [--keep]

Each case runs the real command line (`python -m bench ...` in a subprocess, with a
timeout as a hang guard) in its own fresh temporary folder, with its own data cache and no
BENCH_/RAY_ settings from the shell. The inputs are made the way a user comes by them: one
tiny model trained once with the smoke-sized settings, one tiny study swept once, one gate
baseline saved once (all three by the CLI), then copies of those edited by hand.

A row: the case, the exit status, the `error:` line (else the first line of stderr, else
of stdout), the seconds it took, whether a traceback appeared anywhere in the output, what
was checked afterwards (the case's folder unchanged, the cell file kept, no partial run
folder, no process left behind) and `clean`: yes for one `error:` line, the last on
stderr, with exit status 2, no traceback and nothing changed; for the 16-bit images, also
yes for a run that reads them right.

A full disk (a small tmpfs) and a read-only file system (a read-only bind mount) need
root and `mount`; elsewhere those cases are skipped, saying why. Ray's processes are found
by a token in their environment (they inherit the case's) and killed by pid if left behind.
The script always exits 0: it is a probe, not a test.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: its bench and tests
from tests.tiny import CHECKPOINT_EDITS, TRAIN_ARGS, cli_env, study_toml

REPO = Path(__file__).resolve().parents[1]
TOKEN_VAR = "PROBE_INPUTS_TOKEN"  # marks every process a case starts, Ray's included
# The tiny inputs are the tests' own (tests/tiny.py): the smoke-sized `train` options (2 training and
# 1 test image per class, one epoch, on the CPU), the tiny study, the edited checkpoints, and the
# environment a command runs in.
TINY = TRAIN_ARGS
STUDY = study_toml()
SWEPT = Path("tiny/smoke")  # where the tiny study's tables land under --out


class Skip(Exception):
    """A case that cannot run here; the message says why."""


# --- running the CLI -------------------------------------------------------------------


def case_env(cache: Path, token: str) -> dict:
    env = cli_env(cache)
    env[TOKEN_VAR] = token
    return env


@dataclass
class Outcome:
    status: int | str  # the exit status, or "hung (...)"
    stdout: str
    stderr: str
    seconds: float


def run_cli(argv: list[str], cwd: Path, env: dict, timeout: float) -> Outcome:
    start = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench", *argv],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        start_new_session=True,  # its own process group, so a hang can be ended whole
    )
    try:
        out, err = proc.communicate(timeout=timeout)
        status: int | str = proc.returncode
    except subprocess.TimeoutExpired:
        # what a user does at a hang: Ctrl-C (SIGINT to the foreground group), then kill
        os.killpg(proc.pid, signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=20)
            status = f"hung; Ctrl-C at {timeout:.0f} s: exit {proc.returncode}"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            status = f"hung; Ctrl-C at {timeout:.0f} s ignored 20 s: killed"
    return Outcome(status, out, err, time.monotonic() - start)


def processes_with(token: str) -> dict[int, str]:
    """pid -> command name of every live process whose environment carries `token`."""
    found = {}
    needle = f"{TOKEN_VAR}={token}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found[int(entry.name)] = (entry / "comm").read_text().strip()
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


def reap(token: str, grace: float = 15.0) -> str:
    """Wait up to `grace` seconds for the case's processes to end; kill (by pid) any left."""
    deadline = time.monotonic() + grace
    while (left := processes_with(token)) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if not left:
        return ""
    names = sorted(set(left.values()))
    return f"{len(left)} processes left behind {grace:.0f} s after exit ({', '.join(names)}; killed)"


def snapshot(folder: Path, skip: tuple[str, ...] = ("cache",)) -> dict[str, str]:
    """Every path under `folder` (but the data cache) with a file's content hash."""
    found = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if rel.parts[0] in skip:
            continue
        try:
            found[str(rel)] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        except OSError as e:
            found[str(rel)] = f"unreadable ({e.strerror})"
    return found


def changes(before: dict, after: dict) -> str:
    added = [f"+{k}" for k in after if k not in before]
    removed = [f"-{k}" for k in before if k not in after]
    edited = [f"~{k}" for k in before if k in after and before[k] != after[k]]
    every = added + removed + edited
    if not every:
        return ""
    return "changed: " + ", ".join(every[:4]) + (f" (+{len(every) - 4} more)" if len(every) > 4 else "")


# --- shared inputs, each made once through the CLI ---------------------------------------


class Shared:
    """A trained run, a swept study and a gate baseline, made on first use."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True)
        self._made: dict[str, Path | Skip] = {}
        (folder / "tiny.toml").write_text(STUDY)
        self.study = folder / "tiny.toml"
        self.image = folder / "img.png"
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(self.image)
        self._gate_quick: str | None = None

    def _make(self, name: str, argv: list[str], result: Path) -> Path:
        if name not in self._made:
            token = uuid.uuid4().hex
            print(f"making the shared {name}: python -m bench {' '.join(argv)}", file=sys.stderr, flush=True)
            got = run_cli(argv, self.folder, case_env(self.folder / "cache", token), timeout=600)
            reap(token)
            if got.status == 0 and result.exists():
                self._made[name] = result
            else:
                first = (got.stderr or got.stdout).strip().splitlines()[-1:] or ["no output"]
                self._made[name] = Skip(f"the shared {name} could not be made (exit {got.status}: {first[0]})")
        made = self._made[name]
        if isinstance(made, Skip):
            raise made
        return made

    def run(self) -> Path:
        """A run folder of one tiny model, trained as `train` does."""
        return self._make("run", ["train", *TINY, "--out", "run"], self.folder / "run" / "checkpoint.pt").parent

    def swept(self) -> Path:
        """results/tiny/smoke as a sweep of the tiny study leaves it (2 cells)."""
        argv = ["ablate", "--study", str(self.study), "--profile", "smoke", "--out", "swept", "--no-report"]
        return self._make("sweep", [*argv, "--no-progress"], self.folder / "swept" / SWEPT / "runs.csv").parent

    def quick(self) -> str:
        """The gate's small-suite flag: --bench-quick, or --quick once renamed."""
        if self._gate_quick is None:
            got = run_cli(["gate", "--help"], self.folder, case_env(self.folder / "cache", "help"), timeout=300)
            self._gate_quick = "--bench-quick" if "--bench-quick" in got.stdout else "--quick"
        return self._gate_quick

    def gate(self) -> Path:
        """A gate storage folder holding baseline 'base' of lenet5 on this CPU, saved by the gate."""
        argv = ["gate", "--save", "base", "--storage", "gate", "--device", "cpu", self.quick(), "--model", "lenet5"]
        self._make("gate baseline", [*argv, "--repeat", "1"], self.folder / "gate")
        if not list((self.folder / "gate").rglob("*_base.json")):
            raise Skip("the gate saved no *_base.json")
        return self.folder / "gate"


# --- a case --------------------------------------------------------------------------------


@dataclass
class Ctx:
    case: Path  # the case's own folder
    work: Path  # the command's working folder, inside it
    shared: Shared
    notes: list[str] = field(default_factory=list)  # what the checks found
    mounts: list[Path] = field(default_factory=list)  # unmounted after the case, last first
    ok: bool | None = None  # a check's verdict on an input that should work


@dataclass
class Case:
    name: str
    argv: Callable[[Ctx], list[str]]
    setup: Callable[[Ctx], None] | None = None
    check: Callable[[Ctx, Outcome], None] | None = None
    timeout: float = 300
    may_work: bool = False  # a right result is as good as a refusal (16-bit images)


def run_case(case: Case, base: Path, shared: Shared) -> dict:
    folder = base / (re.sub(r"[^A-Za-z0-9.]+", "-", case.name).strip("-") or "case")
    ctx = Ctx(folder, folder / "work", shared)
    ctx.work.mkdir(parents=True)
    token = uuid.uuid4().hex
    try:
        if case.setup:
            case.setup(ctx)
        argv = case.argv(ctx)
        before = snapshot(folder)
        got = run_cli(argv, ctx.work, case_env(folder / "cache", token), case.timeout)
        left = reap(token)
        if case.check:
            try:
                case.check(ctx, got)
            except Exception as e:  # noqa: BLE001 - a check that cannot read the result says so in the row
                ctx.notes.append(f"check failed: {type(e).__name__}: {e}")
        changed = changes(before, snapshot(folder))
    except Skip as e:
        return {"case": case.name, "skipped": str(e)}
    finally:
        for mount in reversed(ctx.mounts):
            unmount(mount)
    text = got.stdout + got.stderr
    lines = [line for line in got.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    # the error line says most; else the first line of stderr, else of stdout
    first = (errors or lines or [line for line in got.stdout.splitlines() if line.strip()] or [""])[0]
    traceback = "Traceback (most recent call last)" in text
    # one error line, the last thing said (progress lines of a run that failed while writing may come first)
    refused = got.status == 2 and len(errors) == 1 and lines[-1] == errors[0] and not traceback
    clean = refused and not changed and not left
    if case.may_work and got.status == 0 and ctx.ok and not traceback and not left:
        clean = True
    notes = [n for n in [*ctx.notes, changed or "folder unchanged", left] if n]
    return {
        "case": case.name,
        "status": got.status,
        "first": first,
        "lines": len(lines),
        "seconds": got.seconds,
        "traceback": traceback,
        "notes": "; ".join(notes),
        "clean": clean,
        "tail": (got.stderr.strip() or got.stdout.strip()).splitlines()[-6:],
    }


# --- mounts ---------------------------------------------------------------------------------


def _mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    if done.returncode:
        raise Skip(f"`mount {' '.join(args)}` failed: {done.stderr.strip() or done.returncode}")


def unmount(path: Path) -> None:
    if subprocess.run(["umount", str(path)], capture_output=True).returncode:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def tmpfs(ctx: Ctx, where: Path, size: str) -> None:
    if os.geteuid() != 0:
        raise Skip("mounting a small tmpfs needs root")
    where.mkdir(parents=True, exist_ok=True)
    _mount("-t", "tmpfs", "-o", f"size={size}", "probe-tmpfs", str(where))
    ctx.mounts.append(where)


def read_only(ctx: Ctx, source: Path, where: Path) -> None:
    """`source` seen read-only at `where` (a read-only bind mount: root cannot write there either)."""
    if os.geteuid() != 0:
        raise Skip("a read-only bind mount needs root (permission bits do not stop root)")
    where.mkdir(parents=True, exist_ok=True)
    _mount("--bind", str(source), str(where))
    ctx.mounts.append(where)
    _mount("-o", "remount,bind,ro", str(where))
    try:
        (where / ".probe").write_text("x")
    except OSError:
        return
    raise Skip(f"{where} stayed writable after the read-only remount")


# --- inputs ----------------------------------------------------------------------------------


def _typed(text: str):
    """A CSV field as the sweep's JSON cell record holds it."""
    if text == "":
        return None
    if text in ("True", "False"):
        return text == "True"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def read_rows(path: Path) -> tuple[list[str], list[dict]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def write_rows(path: Path, header: list[str], rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, header)
        writer.writeheader()
        writer.writerows(rows)


def results_copy(ctx: Ctx) -> Path:
    """A copy of the swept study's folder at work/results/tiny/smoke."""
    target = ctx.work / "results" / SWEPT
    shutil.copytree(ctx.shared.swept(), target)
    return target


def cell_without_status(ctx: Ctx) -> None:
    """The second cell taken out of the tables and recorded as its cell file, its row without status."""
    folder = results_copy(ctx)
    header, runs = read_rows(folder / "runs.csv")
    kept, moved = runs[:1], runs[1]
    cell = moved["cell_id"]
    write_rows(folder / "runs.csv", header, kept)
    record = {"row": {k: _typed(v) for k, v in moved.items() if k != "status"}}
    for table in ("history", "progress"):
        h, rows = read_rows(folder / f"{table}.csv")
        write_rows(folder / f"{table}.csv", h, [r for r in rows if r["cell_id"] != cell])
        record[table] = [{k: _typed(v) for k, v in r.items()} for r in rows if r["cell_id"] == cell]
    (folder / "cells").mkdir(exist_ok=True)  # a sweep leaves it, empty
    (folder / "cells" / f"{cell}.json").write_text(json.dumps(record))


def check_cell_kept(ctx: Ctx, _: Outcome) -> None:
    cells = list((ctx.work / "results" / SWEPT / "cells").glob("*.json"))
    ctx.notes.append("cell file kept" if cells else "cell file GONE")
    _, runs = read_rows(ctx.work / "results" / SWEPT / "runs.csv")
    seeds = {r["seed"] for r in runs}
    ctx.notes.append(f"runs.csv: {len(runs)} rows, seed values {sorted(seeds)}")


def runs_without_status(ctx: Ctx) -> None:
    folder = results_copy(ctx)
    header, runs = read_rows(folder / "runs.csv")
    for r in runs:
        del r["status"]
    write_rows(folder / "runs.csv", [h for h in header if h != "status"], runs)


def torn_history(ctx: Ctx) -> None:
    path = results_copy(ctx) / "history.csv"
    text = path.read_text().rstrip("\n")
    last = text.rsplit("\n", 1)[1]
    path.write_text(text[: len(text) - len(last) // 2])  # the last line cut in half, no newline


def abc_error(ctx: Ctx) -> None:
    path = results_copy(ctx) / "runs.csv"
    header, runs = read_rows(path)
    runs[0]["final_test_top1_err_pct"] = "abc"
    write_rows(path, header, runs)


def random_history(ctx: Ctx) -> None:
    (results_copy(ctx) / "history.csv").write_bytes(random.Random(0).randbytes(4096))


def read_only_results(ctx: Ctx) -> None:
    source = ctx.case / "on-disk"
    shutil.copytree(ctx.shared.swept(), source)
    read_only(ctx, source, ctx.work / "results" / SWEPT)


def full_disk(ctx: Ctx) -> None:
    tmpfs(ctx, ctx.case / "disk", "256k")  # the history and summary fit; the ~600 KB checkpoint does not


def check_no_partial_run(ctx: Ctx, _: Outcome) -> None:
    left = sorted(str(p.relative_to(ctx.case / "disk")) for p in (ctx.case / "disk").rglob("*"))
    ctx.notes.append("disk left empty" if not left else f"left on the full disk: {', '.join(left[:5])}")


def study_file(name: str, edit: Callable[[str], str]) -> Callable[[Ctx], None]:
    def setup(ctx: Ctx) -> None:
        (ctx.case / name).write_text(edit(STUDY))

    return setup


def check_cells(ctx: Ctx, _: Outcome) -> None:
    """How many cells a sweep that went ahead recorded (a level listed twice collapses)."""
    for runs in ctx.case.rglob("runs.csv"):
        header, rows = read_rows(runs)
        ctx.notes.append(f"{runs.relative_to(ctx.case)}: {len(rows)} cells")


def baseline(edit: Callable[[dict], None]) -> Callable[[Ctx], None]:
    def setup(ctx: Ctx) -> None:
        shutil.copytree(ctx.shared.gate(), ctx.case / "gate")
        (path,) = (ctx.case / "gate").rglob("*_base.json")
        run = json.loads(path.read_text())
        edit(run)
        path.write_text(json.dumps(run))

    return setup


def _empty_environment(run: dict) -> None:
    run["machine_info"]["bench"]["environment"] = {}


def _zero_round_times(run: dict) -> None:
    for b in run["benchmarks"]:
        for k in ("median", "min", "mean", "max", "q1", "q3", "iqr", "stddev"):
            b["stats"][k] = 0.0


def _no_extra_info(run: dict) -> None:
    for b in run["benchmarks"]:
        b.pop("extra_info", None)


def _png(path: Path, width: int, height: int, rows) -> None:
    """An 8-bit grayscale PNG written a chunk of rows at a time (`rows` yields raw filtered rows)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    with path.open("wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)))
        z = zlib.compressobj(9)
        for block in rows:
            if data := z.compress(block):
                f.write(chunk(b"IDAT", data))
        f.write(chunk(b"IDAT", z.flush()) + chunk(b"IEND", b""))


def huge_png(ctx: Ctx) -> None:
    """A real, valid 20000x20000 black PNG (~400 KB on disk, 400 MB decoded)."""
    side, per = 20000, 500
    block = (b"\0" * (side + 1)) * per  # filter byte 0, then the row
    _png(ctx.case / "huge.png", side, side, (block for _ in range(side // per)))


GRAY16 = 64 * 257  # the 16-bit value of 8-bit grey 64
GRAY_PNGS = ("g16.png", "g8.png", "white8.png")
GRAY_TRAIN = "--epochs 1 --batch-size 4 --augment none --val-size 0 --device cpu --no-progress".split()
JSON_ALL = ["--json", "--topk", "10", "--device", "cpu"]  # every class's probability


def gray16_images(ctx: Ctx) -> None:
    """A 16-bit grey image of 64*257, and the 8-bit images it could be read as: grey 64 (right), 255 (clipped)."""
    Image.fromarray(np.full((32, 32), GRAY16, dtype=np.uint16)).save(ctx.case / "g16.png")
    Image.fromarray(np.full((32, 32), 64, dtype=np.uint8), "L").save(ctx.case / "g8.png")
    Image.fromarray(np.full((32, 32), 255, dtype=np.uint8), "L").save(ctx.case / "white8.png")
    with Image.open(ctx.case / "g16.png") as im:
        if im.mode not in ("I;16", "I"):
            raise Skip(f"PIL wrote a {im.mode} image, not a 16-bit one")


def check_gray16_predict(ctx: Ctx, got: Outcome) -> None:
    if got.status != 0:
        return
    rows = {Path(r["image"]).name: r for r in json.loads(got.stdout)["predictions"]}
    probs = {n: {t["class"]: t["probability"] for t in r["top"]} for n, r in rows.items()}

    def gap(a: str, b: str) -> float:
        return sum(abs(probs[a][c] - probs[b].get(c, 0.0)) for c in probs[a])

    right, clipped = gap("g16.png", "g8.png"), gap("g16.png", "white8.png")
    ctx.ok = right < 1e-4 < clipped
    read = "as grey 64 (right)" if ctx.ok else "as white 255 (clipped)" if clipped < 1e-4 else "as neither"
    ctx.notes.append(f"16-bit grey {GRAY16} read {read}; conversion {rows['g16.png'].get('conversion')!r}")


def gray16_tree(ctx: Ctx) -> None:
    """A 2-class folder of 16-bit grayscale uniform noise: 2 training and 1 test image per class."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 2), ("test", 1)):
        for cls in ("cat", "dog"):
            for i in range(n):
                path = ctx.case / "g16" / split / cls / f"{i:04d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 65536, (32, 32), dtype=np.uint16)).save(path)


def check_gray16_train(ctx: Ctx, got: Outcome) -> None:
    if got.status != 0:
        return
    import torch

    raw = torch.load(ctx.work / "run" / "checkpoint.pt", weights_only=True)
    mean = float(raw["normalization"]["mean"].mean())
    ctx.ok = 100 < mean < 155
    conversion = raw.get("data", {}).get("conversion")
    ctx.notes.append(
        f"normalisation mean pixel {mean:.1f} of 255 (127.5 if read right, ~254.5 if clipped); "
        f"conversion {conversion!r}"
    )


def checkpoint(edit: Callable[[dict], None] | None = None, text: str | None = None) -> Callable[[Ctx], None]:
    """The shared run folder copied to work/run, its checkpoint edited by `edit` (or replaced by `text`)."""

    def setup(ctx: Ctx) -> None:
        shutil.copytree(ctx.shared.run(), ctx.work / "run")
        path = ctx.work / "run" / "checkpoint.pt"
        if text is not None:
            path.write_text(text)
        elif edit is not None:
            import torch

            raw = torch.load(io.BytesIO(path.read_bytes()), weights_only=True)
            edit(raw)
            torch.save(raw, path)

    return setup


# tests/tiny.py's edits: "a text file" is the file's new text, the others edit what torch.load gives
EDITS: dict[str, dict] = {
    what: {"text": edit} if isinstance(edit, str) else {"edit": edit} for what, edit in CHECKPOINT_EDITS.items()
}


def _both(*setups: Callable[[Ctx], None]) -> Callable[[Ctx], None]:
    def setup(ctx: Ctx) -> None:
        for one in setups:
            one(ctx)

    return setup


def _a_file(ctx: Ctx) -> None:
    (ctx.work / "a-file").write_text("keep")


def _read_only_place(ctx: Ctx) -> None:
    (ctx.case / "empty").mkdir()
    read_only(ctx, ctx.case / "empty", ctx.work / "ro")


def fixed(*argv: str) -> Callable[[Ctx], list[str]]:
    """An argv with {case}, {work} and {shared} filled in for the case."""
    return lambda ctx: [a.format(case=ctx.case, work=ctx.work, shared=ctx.shared.folder) for a in argv]


ABLATE = ("ablate", "--profile", "smoke", "--no-progress", "--no-report")
RAY = (
    "ablate",
    "--study",
    "{shared}/tiny.toml",
    "--profile",
    "smoke",
    "--no-progress",
    "--no-report",
    "--executor",
    "ray",
)
MEASURE = ("measure", "--model", "lenet5", "--quick", "--device", "cpu")


def gate_compare(ctx: Ctx) -> list[str]:
    storage = str(ctx.case / "gate")
    return [
        "gate",
        "--compare",
        "base",
        "--storage",
        storage,
        "--device",
        "cpu",
        ctx.shared.quick(),
        "--model",
        "lenet5",
    ]


def cases() -> list[Case]:
    found = [
        # --- study files ---
        Case(
            'study name "../../esc"',
            fixed(*ABLATE, "--study", "{case}/esc.toml", "--out", "deep/results"),
            study_file("esc.toml", lambda s: s.replace('name = "tiny"', 'name = "../../esc"')),
            check_cells,
        ),
        Case(
            "study name = 5",
            fixed(*ABLATE, "--study", "{case}/five.toml"),
            study_file("five.toml", lambda s: s.replace('name = "tiny"', "name = 5")),
        ),
        Case(
            'a level listed twice ["relu", "relu", "tanh"]',
            fixed(*ABLATE, "--study", "{case}/twice.toml"),
            study_file("twice.toml", lambda s: s.replace('["relu", "tanh"]', '["relu", "relu", "tanh"]')),
            check_cells,
        ),
        Case(
            "lr grid listed twice [0.1, 0.10]",
            fixed(*ABLATE, "--study", "{case}/lr.toml"),
            study_file("lr.toml", lambda s: s + '\n[factors.lr]\nkey = "lr"\nlevels = [0.1, 0.10]\n'),
            check_cells,
        ),
        Case(
            "target = { value = nan }",
            fixed(*ABLATE, "--study", "{case}/nan.toml"),
            study_file(
                "nan.toml",
                lambda s: s.replace(
                    "seeds = [0]", 'seeds = [0]\ntarget = { metric = "train_running_err_pct", value = nan }'
                ),
            ),
        ),
        # --- Ray ---
        Case("ablate --executor ray --cpus-per-cell 64", fixed(*RAY, "--cpus-per-cell", "64"), timeout=90),
        Case(
            "ablate --executor ray --ray-address 127.0.0.1:1", fixed(*RAY, "--ray-address", "127.0.0.1:1"), timeout=90
        ),
        Case("ablate --executor ray --gpus-per-cell 1 (no GPU)", fixed(*RAY, "--gpus-per-cell", "1"), timeout=90),
        # --- a results folder edited or damaged ---
        Case(
            "ablate: a cells/*.json record without status",
            fixed("ablate", "--study", "{shared}/tiny.toml", "--profile", "smoke", "--no-progress", "--no-report"),
            cell_without_status,
            check_cell_kept,
        ),
        Case(
            "report: a cells/*.json record without status",
            fixed("report", "results/tiny/smoke"),
            cell_without_status,
            check_cell_kept,
        ),
        Case(
            "ablate: runs.csv without a status column",
            fixed("ablate", "--study", "{shared}/tiny.toml", "--profile", "smoke", "--no-progress", "--no-report"),
            runs_without_status,
        ),
        Case("report: runs.csv without a status column", fixed("report", "results/tiny/smoke"), runs_without_status),
        Case(
            "train --out on a full disk (256 KB tmpfs)",
            fixed("train", *TINY, "--out", "{case}/disk/run"),
            full_disk,
            check_no_partial_run,
        ),
        Case("report: history.csv with a torn last line", fixed("report", "results/tiny/smoke"), torn_history),
        Case("report: runs.csv final_test_top1_err_pct = abc", fixed("report", "results/tiny/smoke"), abc_error),
        Case("report: history.csv of random bytes", fixed("report", "results/tiny/smoke"), random_history),
        Case("report: results on a read-only file system", fixed("report", "results/tiny/smoke"), read_only_results),
        # --- measure ---
        Case("measure --modes ''", fixed(*MEASURE, "--modes", "")),
        Case("measure --modes fp32,fp32", fixed(*MEASURE, "--modes", "fp32,fp32")),
        # --- gate ---
        Case("gate --compare: baseline with an empty environment", gate_compare, baseline(_empty_environment)),
        Case("gate --compare: baseline with zero round times", gate_compare, baseline(_zero_round_times)),
        Case("gate --compare: baseline without extra_info", gate_compare, baseline(_no_extra_info)),
        # --- images ---
        Case(
            "predict a 20000x20000 PNG",
            lambda ctx: ["predict", str(ctx.shared.run()), str(ctx.case / "huge.png"), "--device", "cpu"],
            huge_png,
        ),
        Case(
            "predict a 16-bit grayscale PNG",
            lambda ctx: ["predict", str(ctx.shared.run()), *(str(ctx.case / n) for n in GRAY_PNGS), *JSON_ALL],
            gray16_images,
            check_gray16_predict,
            may_work=True,
        ),
        Case(
            "train on 16-bit grayscale PNGs",
            fixed("train", "--data", "{case}/g16", *GRAY_TRAIN, "--out", "run"),
            gray16_tree,
            check_gray16_train,
            may_work=True,
        ),
    ]
    # --- edited checkpoints ---
    for what, edit in EDITS.items():
        found.append(
            Case(
                f"predict, checkpoint {what}",
                lambda ctx: ["predict", "run", str(ctx.shared.image), "--device", "cpu"],
                checkpoint(**edit),
            )
        )
        found.append(
            Case(f"evaluate, checkpoint {what}", fixed("evaluate", "run", "--device", "cpu"), checkpoint(**edit))
        )
    # --- evaluate's options ---
    found += [
        Case(
            "evaluate --test-per-class 0",
            fixed("evaluate", "run", "--device", "cpu", "--test-per-class", "0"),
            checkpoint(),
        ),
        Case(
            "evaluate --out an existing file",
            fixed("evaluate", "run", "--device", "cpu", "--out", "a-file"),
            _both(checkpoint(), _a_file),
        ),
        Case(
            "evaluate --out on a read-only file system",
            fixed("evaluate", "run", "--device", "cpu", "--out", "ro/eval"),
            _both(checkpoint(), _read_only_place),
        ),
    ]
    return found


# --- the table -----------------------------------------------------------------------------------


def cell(text) -> str:
    text = str(text).replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= 300 else text[:297] + "..."


def row(r: dict) -> str:
    if "skipped" in r:
        return f"| {cell(r['case'])} | skipped | {cell(r['skipped'])} | | | | no |"
    seconds = f"{r['seconds']:.1f}"
    lines = f"{r['lines']} stderr line{'s' if r['lines'] != 1 else ''}"
    tb = "yes" if r["traceback"] else "no"
    return (
        f"| {cell(r['case'])} | {r['status']} | {cell(r['first'])} | {seconds} | {tb} | "
        f"{cell(lines + '; ' + r['notes'])} | {'yes' if r['clean'] else '**no**'} |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="run only the cases whose name contains this")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folders (their path is printed)")
    args = parser.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="probe-inputs-"))
    chosen = [c for c in cases() if args.only in c.name]
    print(f"# issue 24 inputs, each through `python -m bench` in a fresh folder ({len(chosen)} cases)\n")
    print(
        "| case | exit | the error: line, else the first line of stderr (or stdout) | s | traceback | checked | clean |"
    )
    print("|---|---|---|---|---|---|---|", flush=True)
    results = []
    try:
        shared = Shared(base / "shared")
        for case in chosen:
            print(f"running: {case.name}", file=sys.stderr, flush=True)
            try:
                r = run_case(case, base, shared)
            except Exception as e:  # noqa: BLE001 - one case the probe cannot set up must not stop the others
                r = {"case": case.name, "skipped": f"the probe failed: {type(e).__name__}: {e}"}
            results.append(r)
            print(row(r), flush=True)
    finally:
        if args.keep:
            print(f"\nkept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    clean = [r for r in results if r.get("clean")]
    skipped = [r for r in results if "skipped" in r]
    print(f"\n{len(clean)} of {len(results)} clean; {len(skipped)} skipped.")
    for r in results:
        if not r.get("clean"):
            print(f"- not clean: {r['case']}" + (" (skipped)" if "skipped" in r else ""))
    unclean = [r for r in results if not r.get("clean") and r.get("tail")]
    if unclean:
        print("\nThe last lines of output of each case that is not clean:")
    for r in unclean:
        print(f"\n{r['case']} (exit {r['status']}):\n" + "\n".join(f"    {line}" for line in r["tail"]))
    return 0


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
    sys.exit(0)
