"""Decode a source once into a cached uint8 tensor file keyed by what the source holds."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Callable

import torch

from bench.data.sources import RawData

log = logging.getLogger(__name__)

# Bump when decoding changes, so old caches are never read as new ones.
CACHE_FORMAT = 1


def default_cache_dir() -> Path:
    return Path(os.environ.get("BENCH_CACHE", Path.home() / ".cache" / "alexnet-bench"))


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
        except Exception as e:  # a torn cache file is rebuilt, never trusted
            log.warning("cache %s unreadable (%s); rebuilding", path, e)
    data = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(data.__dict__, tmp)
    os.replace(tmp, path)
    return data, key
