"""`python -m bench report`: figures, tables and report.md from results/<study>/<profile>/ tables."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from bench.errors import UserError
from bench.io import cannot_create_in

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
    # here: the plotting libraries (matplotlib, seaborn) load only when a report is drawn, not for --help
    from bench.report.draw import find_result_folders, report_all

    for path in args.paths:  # every path is checked before anything is written
        for folder in find_result_folders(path):
            _check_writable(folder)
    reports = [r for path in args.paths for r in report_all(path)]
    for r in reports:
        log.info("wrote %s", r)
    return 0


def _check_writable(folder: Path) -> None:
    """The report writes beside runs.csv: a folder that takes nothing is one line now, not a traceback later."""
    why = cannot_create_in(folder)
    if why is not None:
        raise UserError(
            f"{folder}: cannot write the report there ({why}); copy the folder somewhere writable and report the copy"
        )
