"""Files written whole or not at all: write a temporary file beside the target, then rename.

A run killed at any moment (Ctrl-C, kill -9) leaves either the old file or the
new one, never a torn one; os.replace is atomic on POSIX within one file system. A write
that fails (a full disk, a read-only mount) leaves no temporary file and is a one-line
`WriteError` naming the file, not a traceback.
What can still arrive torn (a copy cut short, a bad edit) `check_table` refuses, and
`check_writable` tells before the work whether its results could be written.
"""

from __future__ import annotations

import csv
import errno
import io
import os
import tempfile
from pathlib import Path

import pandas as pd

from bench.errors import UserError


class WriteError(UserError):
    """A file could not be written (a full disk, a read-only file system): one line, naming the file."""

    def __init__(self, path: Path, reason: str, fix: str):
        super().__init__(f"could not write {path}: {reason}; {fix}")
        self.path, self.reason = path, reason


def atomic_write(path: Path, write, binary: bool = False) -> None:
    """Write `path` whole or not at all: `write(file)` fills a temporary file beside it, then a rename.

    An OSError on the way (ENOSPC, EROFS, EACCES, ...) leaves the old file, or none, and no
    temporary file, and is raised as `WriteError`. torch.save reports its file's OSError as
    a RuntimeError caused by it: that one is a `WriteError` too.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.chmod(tmp, 0o644)  # mkstemp makes files private; results are meant to be shared
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        cause = _os_error(e)
        if cause is None:
            raise
        why = cause.strerror or type(cause).__name__
        fix = "free space on that disk or write elsewhere" if cause.errno == errno.ENOSPC else "write elsewhere"
        raise WriteError(path, why, f"{fix}, and run again") from None


def _os_error(e: BaseException) -> OSError | None:
    """`e` if it is an OSError, or the OSError it was raised from (torch.save wraps its file's), else None."""
    if not isinstance(e, Exception):  # Ctrl-C stays Ctrl-C
        return None
    for err in (e, e.__cause__ or e.__context__):
        if isinstance(err, OSError):
            return err
    return None


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text))


def write_csv(path: Path, rows_or_frame) -> None:
    frame = rows_or_frame if isinstance(rows_or_frame, pd.DataFrame) else pd.DataFrame(rows_or_frame)
    atomic_write_text(path, frame.to_csv(index=False))


def read_csv(path: Path, text_columns=()) -> pd.DataFrame:
    """A tidy table as written by `write_csv`: `text_columns` stay text (a level "none" or
    "NA", an all-digit id), and only an empty field is missing. pandas' errors pass through."""
    return pd.read_csv(path, dtype={c: str for c in text_columns}, keep_default_na=False, na_values=[""])


def check_table(
    path: Path, required: tuple[str, ...] = (), fix: str = "restore it from git or re-run the study"
) -> None:
    """Refuse a table that was cut short or garbled, naming the damage (`UserError`).

    Tables are written whole (`write_csv`), but a copy cut short or a bad edit is read by
    pandas without complaint: a torn last row of runs.csv becomes a cell with its last
    numbers missing, still marked `ok`. Damage is: no bytes at all; a row whose field
    count is not the header's; a header cut short (no line end, no rows, a `required`
    column missing); a row with a `required` field empty. The text pandas writes for a
    table with no columns ("\\n") is a table, not damage.
    """

    def refuse(detail: str):
        raise UserError(f"{path} is not a readable table ({detail}); {fix}")

    try:
        text = path.read_text()
    except UnicodeDecodeError as e:
        refuse(f"UnicodeDecodeError: {e.reason} at byte {e.start}")
    if not text:
        refuse("it is empty: 0 bytes, not even a header")
    reader = csv.reader(io.StringIO(text))
    header = next(reader, [])
    rows = [(reader.line_num, row) for row in reader if row]
    width = len(header)
    if not rows and not text.endswith("\n") and not set(required) <= set(header):
        refuse(f"the header, line 1, is cut short: {header[-1]!r} ends it, and it has no line end")
    if rows and all(len(row) > width for _, row in rows):
        refuse(f"the header, line 1, is torn: it has {width} fields, line {rows[0][0]} has {len(rows[0][1])}")
    for line, row in rows:
        if len(row) < width:
            refuse(f"line {line} is torn: {len(row)} of the header's {width} fields")
        if len(row) > width:
            refuse(f"line {line} has {len(row)} fields, the header {width}")
        for name in required:
            if name in header and not row[header.index(name)].strip():
                refuse(f"line {line} has no {name}")


def check_writable(path: Path, flag: str, *, folder: bool) -> None:
    """Fail now, naming `flag`, if `path` cannot be written: before minutes of work, not after it.

    `path` is a folder to create or fill (`folder=True`) or a file to create or replace.
    The deepest part of it that exists must be a folder in which this process can create
    entries; that is tried for real (a folder made and removed at once), because
    permission bits do not stop root, and /proc or a read-only mount pass them.
    """
    path = Path(path).expanduser()
    if os.path.exists(path) and path.is_dir() != folder:
        kind, fix = ("a file", "a folder") if folder else ("a folder", "a file path")
        raise UserError(f"{flag} {path} is {kind}; pass {fix}")
    probe = path if folder else path.parent
    while not os.path.exists(probe) and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"{flag} {path}: {probe} is a file, not a folder; pass {flag} in a writable folder")
    why = cannot_create_in(probe)
    if why is not None:
        raise UserError(f"{flag} {path}: cannot create anything in {probe} ({why}); pass {flag} in a writable folder")


def cannot_create_in(folder: Path) -> str | None:
    """Why this process cannot create entries in `folder`, or None where it can: tried for real (a
    folder made and removed at once), because permission bits do not stop root, and /proc or a
    read-only mount pass them."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".bench-write-check-", dir=folder))
    except OSError as e:
        return e.strerror or type(e).__name__
    return None
