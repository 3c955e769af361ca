"""Unpack a GPU lease's archive (scripts/gpu_lease.py) into results/ and the gate's baselines.

    python3 scripts/unpack_lease.py PATH/lease.tar.gz [--results results] [--storage DIR]

What goes where, each by the package's own path:

- a study's folder (results/<study>/<profile>/): each of the lease's cells is recorded into the
  local folder as a finished sweep records it (`bench.sweep.results.ResultsFolder`: a cell file,
  then a merge that puts it in place of that cell's rows), so the next sweep, here or in the next
  lease, skips it as finished. A lease row never replaces a finished local row of the same cell
  unless it is itself finished (a cell run again: Figure 1's on the trailing-epoch stopper); the
  rows the lease started from come back unchanged and are left alone.
- results/measure/*.csv: merged as `measure` merges its tables (`merge_tables`): the lease's rows
  replace those they measured again, the others stay.
- results/lease/<gpu>/: the smoke cells and the gate's comparison (replaced: the latest lease's),
  lease.json, and stages.csv, every stage of every lease on that GPU model (appended), which the
  next lease reads to skip what finished.
- gate/<device id>/...: stored as `gate --save` stores a baseline (`bench.gate.command.store`, the
  next number), in --storage (default: the gate's, .benchmarks in the checkout or
  $BENCH_GATE_STORAGE); a file already stored is not stored twice.

A dry run's archive is refused unless --allow-dry-run (its rows are CPU smoke rows).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pandas as pd  # noqa: E402

from bench.io import read_csv, write_csv  # noqa: E402
from bench.studies import STUDY_JSON  # noqa: E402
from bench.sweep.results import ResultsFolder  # noqa: E402
from bench.sweep.runner import _sweep_lock  # noqa: E402 -- the sweeps' own lock, so the two exclude each other
from bench.train.result import FINISHED  # noqa: E402

STAGE_COLUMNS = ["lease_id", "stage", "status", "exit", "seconds", "budget_s", "started", "gpu", "driver", "dry_run"]


def unpack(archive: Path, results: Path, storage: Path | None, allow_dry_run: bool = False) -> list[str]:
    """Everything the archive holds, put in place; one line per thing done."""
    with tempfile.TemporaryDirectory(prefix="lease-") as tmp:
        root = Path(tmp)
        extract(archive, root)
        record = json.loads((root / "lease.json").read_text())
        if record.get("dry_run") and not allow_dry_run:
            raise SystemExit(f"{archive} is a CPU dry run's; --allow-dry-run unpacks it anyway")
        done = []
        for folder in study_folders(root / "results"):
            done.append(merge_study(folder, results / folder.relative_to(root / "results")))
        for table in sorted((root / "results" / "measure").glob("*.csv")):
            done.append(merge_measure(table, results / "measure" / table.name))
        done += copy_lease_files(root, results, record)
        done += store_baselines(root / "gate", storage)
    return done


def extract(archive: Path, into: Path) -> None:
    """The archive's regular files, each under `into` (a member naming a path outside it is refused)."""
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            target = (into / member.name).resolve()
            if not member.isfile() or into.resolve() not in target.parents:
                raise SystemExit(f"{archive}: member {member.name!r} is not a file inside the archive's folder")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tar.extractfile(member).read())


def study_folders(results: Path) -> list[Path]:
    """results/<study>/<profile>/ folders of sweeps (they hold study.json), lease/ and measure/ aside."""
    return sorted(p.parent for p in results.glob(f"*/*/{STUDY_JSON}") if p.parts[-3] not in ("lease", "measure"))


def merge_study(src: Path, dst: Path) -> str:
    design = json.loads((src / STUDY_JSON).read_text())
    columns = ["study", "profile", "status", *(f["name"] for f in design["factors"])]
    runs, history, progress = ResultsFolder(src, columns).read()
    local = ResultsFolder(dst, columns)
    dst.mkdir(parents=True, exist_ok=True)
    with _sweep_lock(dst):  # the lock a sweep holds: never while one writes this folder
        mine = local.read()[0]
        taken = [row for _, row in runs.iterrows() if takes(row, mine)]
        for row in taken:
            cell = row["cell_id"]
            local.record(row.dropna().to_dict(), rows_of(history, cell), rows_of(progress, cell))
        if taken:
            if not (dst / STUDY_JSON).exists():  # what the report reads beside the tables
                shutil.copyfile(src / STUDY_JSON, dst / STUDY_JSON)
            local.merge()
    return f"{dst}: {len(taken)} of the lease's {len(runs)} cells recorded"


def takes(row: pd.Series, mine: pd.DataFrame) -> bool:
    """Whether the lease's row goes into the local folder (see the module docstring)."""
    if not len(mine):
        return True
    same = mine[mine["cell_id"] == row["cell_id"]]
    if not len(same):
        return True
    if row["status"] not in FINISHED:
        return False  # a failed run never replaces a row, finished or not, that is here
    finished_here = same[same["status"].isin(FINISHED)]
    at = str(row.get("finished_at"))
    return not (finished_here["finished_at"].astype(str) == at).any()  # else: the row the lease began with


def rows_of(table: pd.DataFrame, cell_id: str) -> list[dict]:
    if not len(table):
        return []
    return [r.dropna().to_dict() for _, r in table[table["cell_id"] == cell_id].iterrows()]


def merge_measure(src: Path, dst: Path) -> str:
    from bench.measure import modes, packing
    from bench.measure.table import ROW_KEY, merge_tables

    new = read_csv(src, ["knobs"])
    key = modes.ROW_KEY if "mode" in new else packing.ROW_KEY if "packed_cells" in new else ROW_KEY
    saved = read_csv(dst, ["knobs"]) if dst.is_file() and dst.stat().st_size else None
    write_csv(dst, new if saved is None else merge_tables(saved, new, key))
    return f"{dst}: {len(new)} rows merged"


def copy_lease_files(root: Path, results: Path, record: dict) -> list[str]:
    slug = record["gpu"]["slug"]
    src, dst = root / "results" / "lease" / slug, results / "lease" / slug
    dst.mkdir(parents=True, exist_ok=True)
    done = []
    for path in sorted(src.glob("*.csv")) if src.is_dir() else []:
        shutil.copyfile(path, dst / path.name)
        done.append(f"{dst / path.name}: the latest lease's")
    (dst / "lease.json").write_text((root / "lease.json").read_text())
    rows = [stage_row(record, s) for s in record["stages"]]
    stages = dst / "stages.csv"
    old = read_csv(stages) if stages.is_file() else pd.DataFrame(columns=STAGE_COLUMNS)
    old = old[old["lease_id"].astype(str) != record["lease_id"]]  # unpacked twice: once
    write_csv(stages, pd.concat([old, pd.DataFrame(rows, columns=STAGE_COLUMNS)], ignore_index=True))
    done.append(f"{stages}: {len(rows)} stages of lease {record['lease_id']}")
    return done


def stage_row(record: dict, stage: dict) -> dict:
    gpu = record["gpu"]
    return {
        "lease_id": record["lease_id"],
        **{k: stage.get(k) for k in ("stage", "status", "exit", "seconds", "budget_s", "started")},
        "gpu": gpu["name"],
        "driver": gpu["driver"],
        "dry_run": record.get("dry_run", False),
    }


def store_baselines(gate: Path, storage: Path | None) -> list[str]:
    """Each baseline under gate/<device id>/<machine>/NNNN_NAME.json, stored as `gate --save` stores one."""
    from bench.gate.command import storage_dir, store

    root = storage_dir(storage)
    done = []
    for path in sorted(gate.glob("*/*/[0-9][0-9][0-9][0-9]_*.json")) if gate.is_dir() else []:
        device_id, name = path.parts[-3], path.name[5:-5]
        folder = root / device_id
        if any(p.read_bytes() == path.read_bytes() for p in folder.glob(f"*/[0-9]*_{name}.json")):
            done.append(f"{path.name}: stored already in {folder}")
            continue
        done.append(f"baseline {name!r} for {device_id}: {store(path, folder, name)}")
    return done


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("archive", type=Path, help="the lease's lease.tar.gz")
    p.add_argument("--results", type=Path, default=REPO / "results", help="the results root (default %(default)s)")
    p.add_argument("--storage", type=Path, default=None, help="the gate's baselines (default: the gate's own)")
    p.add_argument("--allow-dry-run", action="store_true", help="unpack a CPU dry run's archive too")
    args = p.parse_args(argv)
    for line in unpack(args.archive, args.results, args.storage, args.allow_dry_run):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
