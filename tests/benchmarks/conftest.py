"""Micro-benchmarks kept beside the tests (the throughput gate's suite lives in `bench.gate`).

Run by hand, e.g. `python -m pytest tests/benchmarks/test_lrn_speed.py --benchmark-only`.
The fixtures below replace those of tests/conftest.py that would distort a timing.
"""

from __future__ import annotations

import gc

import pytest


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Replaces tests/conftest.py's one-thread fixture: the thread count is part of what is measured.

    It comes from the environment (OMP_NUM_THREADS, else one per core).
    """
    yield


@pytest.fixture(autouse=True)
def bench_cache():
    """Replaces tests/conftest.py's data-cache fixture: benchmarks read no data."""
    yield


@pytest.fixture(autouse=True)
def _release_memory():
    """Each benchmark starts with the memory the last one freed returned."""
    yield
    gc.collect()
