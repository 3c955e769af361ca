"""`python -m bench.gate ARGS`: the same as `python -m bench gate ARGS`."""

import sys

from bench.cli import main as bench_main


def main(argv: list[str] | None = None) -> int:
    return bench_main(["gate", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
