"""Files written whole or not at all: write a temporary file beside the target, then rename.

A run killed at any moment (Ctrl-C, kill -9) leaves either the old file or the
new one, never a torn one; os.replace is atomic on POSIX within one file system.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pandas as pd


def atomic_write(path: Path, write, binary: bool = False) -> None:
    """Write `path` whole or not at all: `write(file)` fills a temporary file beside it, then a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes files private; results are meant to be shared
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text))


def write_csv(path: Path, rows_or_frame) -> None:
    frame = rows_or_frame if isinstance(rows_or_frame, pd.DataFrame) else pd.DataFrame(rows_or_frame)
    atomic_write_text(path, frame.to_csv(index=False))


def read_csv(path: Path, text_columns=()) -> pd.DataFrame:
    """A tidy table as written by `write_csv`: `text_columns` stay text (a level "none" or
    "NA", an all-digit id), and only an empty field is missing. pandas' errors pass through."""
    return pd.read_csv(path, dtype={c: str for c in text_columns}, keep_default_na=False, na_values=[""])
