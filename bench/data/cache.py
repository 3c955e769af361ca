"""Decode a source once into a cached uint8 tensor file keyed by what the source holds."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from bench.data.sources import RawData
from bench.errors import UserError
from bench.io import WriteError, atomic_write

log = logging.getLogger(__name__)

# Bump when decoding changes, so old caches are never read as new ones.
# 2: RawData records the decoding's conversions (colour mode, size).
CACHE_FORMAT = 2


def check_cache_dir(cache_dir: Path) -> None:
    """Fail now, naming the folder, if the cache cannot be written: not after minutes of decoding."""
    cache_dir = Path(cache_dir)
    what = f"the data cache {cache_dir}" + (" (from BENCH_CACHE)" if os.environ.get("BENCH_CACHE") else "")
    fix = "point BENCH_CACHE at a writable folder (it is created if missing)"
    if cache_dir.exists() and not cache_dir.is_dir():
        raise UserError(f"{what} is a file, not a folder; {fix}")
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=cache_dir):  # a real write: permission bits lie for root and on some mounts
            pass
    except OSError as e:
        raise UserError(f"{what} is not writable ({e.strerror or type(e).__name__}); {fix}") from None


def _reason(e: Exception) -> str:
    """Why a cache file failed to load, in a few words.

    Not torch's own message: for a file holding more than tensors it advises
    loading with weights_only=False, which would run whatever the file holds.
    """
    if isinstance(e, pickle.UnpicklingError):
        return "it holds objects other than tensors and plain values"
    first = str(e).split(". ")[0].splitlines()[0] if str(e) else ""
    if "weights_only" in first:
        first = ""
    return f"{type(e).__name__}: {first[:120]}" if first else type(e).__name__


def cache_key(kind: str, fingerprint) -> str:
    blob = json.dumps([CACHE_FORMAT, kind, fingerprint], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cached(kind: str, fingerprint, build: Callable[[], RawData], cache_dir: Path | None) -> tuple[RawData, str]:
    """Load the source's tensors from the cache, or build and store them. Returns (data, key)."""
    key = cache_key(kind, fingerprint)
    if cache_dir is None:
        return build(), key
    path = Path(cache_dir) / f"{kind}-{key}.pt"
    if path.exists():
        try:
            return RawData(**torch.load(path, weights_only=True)), key
        except Exception as e:  # noqa: BLE001 -- a torn cache file is rebuilt, never trusted
            log.warning("cache %s unreadable (%s); decoding the source again", path, _reason(e))
    data = build()
    try:  # whole or not at all: a torn cache file is never left to be read
        atomic_write(path, lambda f: torch.save(data.__dict__, f), binary=True)
    except WriteError as e:  # a full disk: the data decoded is good, only the next run decodes it again
        log.warning("could not store the data cache %s (%s); going on without it", e.path, e.reason)
    return data, key
