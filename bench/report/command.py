"""`python -m bench report`: figures, tables and report.md from results/<study>/<profile>/ tables."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "paths",
        nargs="*",
        type=Path,
        default=[Path("results")],
        metavar="PATH",
        help="a results/<study>/<profile> folder holding runs.csv, or a folder above such folders "
        "(every <study>/<profile> under it is reported); default: results",
    )


def run(args: argparse.Namespace) -> int:
    from bench.report import find_result_folders, report_all

    for path in args.paths:  # every path is checked before anything is written
        find_result_folders(path)
    reports = [r for path in args.paths for r in report_all(path)]
    for r in reports:
        log.info("wrote %s", r)
    return 0
