"""`python -m bench <command>`: train, measure, ablate, report, plan, gate, predict, evaluate.

Each command lives in its own module exposing `add_arguments(parser)` and
`run(args) -> int`. Only the chosen command's module is imported (the others
would pull in torch, plotting or data code for nothing); `--help` lists every
command from the COMMANDS table alone. A `UserError` anywhere becomes one line
on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from bench.errors import UserError

COMMANDS = {
    "train": ("bench.train.command", "train one model once and write a run folder"),
    "measure": ("bench.measure.command", "count params/FLOPs and measure throughput and memory"),
    "ablate": ("bench.ablate", "run studies (ablations/*.toml) into tidy tables"),
    "report": ("bench.report.command", "figures, tables and report.md from saved results tables"),
    "plan": ("bench.report.plan", "seeds a study needs for its claims' target half-width, from a pilot"),
    "gate": ("bench.gate.command", "throughput regression gate: save a baseline or compare with one"),
    "predict": ("bench.use.predict", "class probabilities for image files from a run's checkpoint"),
    "evaluate": ("bench.use.evaluate", "a run's test error per class, with a confusion matrix"),
}


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the problem, exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser(command: str | None = None) -> Parser:
    """Every command's subparser, but only `command`'s with its arguments (its module imported)."""
    parser = Parser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            mod = importlib.import_module(module)
            mod.add_arguments(p)
            p.set_defaults(_run=mod.run)
    return parser


def command_of(argv: list[str]) -> str | None:
    """The command named in `argv`: its first word, as the top-level options take no value."""
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(command_of(argv))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        return args._run(args) or 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished results are kept", file=sys.stderr)
        return 130
