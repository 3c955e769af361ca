"""Numbers as text, and tables as Markdown and LaTeX, written by hand (no tabulate, no jinja2).

A table here is a `Table`: a title, a list of column headers (units in them), rows
of already-formatted strings, and notes printed under it. The numeric version of
each table is written beside it as CSV by `bench.report.tables`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

MISSING = "—"  # a value that could not be measured: the reason is in the row or the notes


@dataclass
class Table:
    name: str  # file stem under tables/
    title: str
    columns: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        return to_markdown(self.columns, self.rows) + "".join(f"\n{n}\n" for n in self.notes)

    def latex(self) -> str:
        return to_latex(self.columns, self.rows, self.title, self.name, self.notes)


def missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def num(value, digits: int = 2, signed: bool = False) -> str:
    if missing(value):
        return MISSING
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def count(value) -> str:
    """1234 -> '1.23 k', 60965224 -> '61.0 M', 7.24e8 -> '724 M': three significant digits."""
    if missing(value):
        return MISSING
    value = float(value)
    for scale, unit in ((1e9, " G"), (1e6, " M"), (1e3, " k"), (1, "")):
        if abs(value) >= scale or scale == 1:
            v = value / scale
            digits = 0 if abs(v) >= 100 or (scale == 1 and v == int(v)) else 1 if abs(v) >= 10 else 2
            return f"{v:.{digits}f}{unit}"
    return str(value)


def rate(value) -> str:
    """Images per second: no decimals above 100, three significant digits below."""
    if missing(value):
        return MISSING
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def mean_sd(mean, sd, n: int, digits: int = 2, why_missing: str = "") -> str:
    """'90.00 ± 1.23 (n=3)', '90.00 (n=1)', or the reason the value is missing."""
    if n == 0 or missing(mean):
        return f"{MISSING} ({why_missing})" if why_missing else MISSING
    if n == 1 or missing(sd):
        return f"{mean:.{digits}f} (n={n})"
    return f"{mean:.{digits}f} ± {sd:.{digits}f} (n={n})"


def interval(lo, hi, n: int, digits: int = 2, signed: bool = False) -> str:
    if n == 1:
        return "one seed: no interval"
    if missing(lo) or missing(hi):
        return MISSING
    return f"[{num(lo, digits, signed)}, {num(hi, digits, signed)}]"


def diff_with_interval(diff, lo, hi, n_pair: tuple[int, int], digits: int = 2) -> str:
    """'+1.23 [-0.50, +2.96]', or '+1.23 (one seed: no interval)'."""
    if missing(diff):
        return MISSING
    if min(n_pair) < 2:
        return f"{diff:+.{digits}f} (one seed: no interval)"
    return f"{diff:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]"


# --- Markdown ----------------------------------------------------------------------


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _numeric(text: str) -> bool:
    return bool(re.match(r"^[+\-−]?[\d.,]+", str(text).strip()))


def to_markdown(columns: list[str], rows: list[list[str]]) -> str:
    """A GitHub-flavoured Markdown table; columns whose cells start with a number align right."""
    right = [bool(rows) and all(_numeric(r[i]) or r[i].startswith(MISSING) for r in rows) for i in range(len(columns))]
    lines = [
        "| " + " | ".join(_md_cell(c) for c in columns) + " |",
        "|" + "|".join("---:" if r else "---" for r in right) + "|",
    ]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


# --- LaTeX -------------------------------------------------------------------------

_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}
_LATEX_UNICODE = {
    "±": r"$\pm$",
    "×": r"$\times$",
    "Δ": r"$\Delta$",
    "≥": r"$\geq$",
    "≤": r"$\leq$",
    "—": "---",
    "–": "--",
    "−": "$-$",
    "→": r"$\to$",
    "≈": r"$\approx$",
    "·": r"$\cdot$",
    "√": r"$\surd$",
    "§": r"\S{}",
}


def latex_escape(text: str) -> str:
    out = "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))
    for uni, tex in _LATEX_UNICODE.items():  # after escaping, so their $ and \ survive
        out = out.replace(uni, tex)
    return out


def to_latex(columns: list[str], rows: list[list[str]], caption: str, label: str, notes: list[str] = ()) -> str:
    """A booktabs table (needs \\usepackage{booktabs}); notes become a footnote-size paragraph."""
    right = [bool(rows) and all(_numeric(r[i]) or r[i].startswith(MISSING) for r in rows) for i in range(len(columns))]
    spec = "".join("r" if r else "l" for r in right)
    body = [
        r"% generated by `python -m bench report`; needs \usepackage{booktabs}",
        r"\begin{table}[ht]",
        r"\centering",
        r"\small",
        rf"\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        " & ".join(latex_escape(c) for c in columns) + r" \\",
        r"\midrule",
    ]
    body += [" & ".join(latex_escape(c) for c in row) + r" \\" for row in rows]
    body += [r"\bottomrule", r"\end{tabular}"]
    if notes:
        body.append(r"\par\vspace{2pt}{\footnotesize " + " ".join(latex_escape(n) for n in notes) + "}")
    body += [
        rf"\caption{{{latex_escape(caption)}}}",
        rf"\label{{tab:{re.sub(r'[^A-Za-z0-9:-]', '-', label)}}}",
        r"\end{table}",
    ]
    return "\n".join(body) + "\n"
