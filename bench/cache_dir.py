"""Where the project keeps what it makes once per machine: `$BENCH_CACHE`, else ~/.cache/alexnet-bench.

Below every layer (standard library only), so that each user of the cache reaches it without
importing another layer: the decoded data sets (`bench.data.cache`), the native LRN kernels
(`bench.models.lrn_native`) and inductor's compiled kernels (`bench.train.modes`) each keep a
folder under it.
"""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """`$BENCH_CACHE`, else ~/.cache/alexnet-bench (not created here)."""
    return Path(os.environ.get("BENCH_CACHE", Path.home() / ".cache" / "alexnet-bench"))
