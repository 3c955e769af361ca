"""report.md: provenance, missing data, each section's figures and tables, and the paper's claims
beside what was measured."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from bench.report import format as fmt
from bench.report.claims import CLAIMS, PAPER, Claim
from bench.report.effects import TOP1
from bench.report.load import StudyData
from bench.train.result import DIVERGED, FINISHED


@dataclass
class Section:
    title: str
    text: list[str] = field(default_factory=list)  # paragraphs
    figures: list[tuple[str, str]] = field(default_factory=list)  # (relative path of the PNG, caption)
    tables: list[fmt.Table] = field(default_factory=list)


def _values(sd: StudyData, column: str) -> list[str]:
    if column not in sd.runs or not sd.runs[column].notna().any():
        return []
    return [str(v) for v in dict.fromkeys(sd.runs[column].dropna())]


def _fmt_int(text: str) -> str:
    try:
        return f"{int(float(text)):,}"
    except ValueError:
        return text


def provenance(sd: StudyData) -> list[tuple[str, str]]:
    """(what, value) lines: data source, device, versions, profile, seeds, cells."""
    env, runs = sd.env, sd.runs
    data = ", ".join(_values(sd, "data_source")) or "unknown (no data_source column)"
    sizes = [f"{_fmt_int(tr)} training / {_fmt_int(te)} test images"
             for tr, te in dict.fromkeys(zip(runs.get("train_images", pd.Series(dtype=str)).astype(str),
                                             runs.get("test_images", pd.Series(dtype=str)).astype(str)))
             if tr != "nan"]
    devices = _values(sd, "device_name") or [env.get("device_name", "")]
    device = ", ".join(filter(None, devices)) or "unknown"
    kinds = ", ".join(_values(sd, "device")) or env.get("device", "")
    versions = [f"{k} {v}" for k in ("torch", "torchvision") for v in (_values(sd, k) or [env.get(k)]) if v]
    cuda = _values(sd, "cuda") or ([env["cuda"]] if env.get("cuda") else [])
    versions += [f"CUDA {c}" for c in cuda]
    if env.get("python"):
        versions.append(f"Python {env['python']}")
    status = runs["status"].value_counts() if len(runs) else pd.Series(dtype=int)
    seeds = sorted(runs["seed"].unique().tolist()) if len(runs) else []
    lines = [
        ("data", data + (f" ({'; '.join(sizes)})" if sizes else "")),
        ("device", f"{device} ({kinds})" if kinds else device),
        ("software", ", ".join(versions) or "unknown"),
        ("profile", sd.profile),
        ("seeds", f"{', '.join(str(s) for s in seeds)} ({len(seeds)} seed{'s' if len(seeds) != 1 else ''})"),
        ("cells", f"{len(runs)} ({', '.join(f'{k} {s}' for s, k in status.items()) or 'none'})"),
    ]
    for what, column in (("epochs", "cfg_epochs"), ("batch size", "cfg_batch_size"), ("model", "cfg_model")):
        if _values(sd, column):
            lines.append((what, ", ".join(_values(sd, column))))
    if _values(sd, "git_commit"):
        lines.append(("git commit", ", ".join(_values(sd, "git_commit"))))
    if _values(sd, "finished_at"):
        lines.append(("last cell finished", max(_values(sd, "finished_at"))))
    return lines


# --- the paper's claims beside the measurements --------------------------------------

def _agreement(claim: Claim, diff: float, lo: float, hi: float, n_pair: tuple[int, int]) -> str:
    if math.isnan(diff):
        return "not measured"
    same = (diff > 0) == (claim.paper_diff > 0) and diff != 0
    if min(n_pair) < 2:
        return ("same direction" if same else "no difference" if diff == 0 else "opposite direction") + \
            " (one seed: no interval)"
    if lo <= 0 <= hi:
        return "inconclusive: 95% interval includes 0"
    return "same direction, 95% interval excludes 0" if same else "opposite direction, 95% interval excludes 0"


def claim_rows(sd: StudyData, eff: pd.DataFrame | None = None, ratios: dict | None = None) -> list[list[str]]:
    """One row per paper claim that this study re-measures: section, claim, paper, here, agreement."""
    rows = []
    where = f"data: {', '.join(_values(sd, 'data_source')) or 'unknown'}, {sd.profile} profile"
    for claim in CLAIMS:
        if claim.factor not in sd.factors:
            continue
        paper = f"{claim.quote} ({claim.data})"
        if claim.kind == "speedup":
            if not ratios:
                continue
            for setup, r in ratios.items():
                label = f"setup {setup}: " if setup else ""
                if r.kind == "none":
                    here, agree = f"{label}{r.text}", "not measured"
                else:
                    here = f"{label}{r.text}"
                    agree = "ReLU faster" if r.ratio > 1 else "ReLU not faster"
                    agree += f" ({r.ratio / claim.paper_diff:.2g} of the paper's ratio)" if r.kind == "measured" else ""
                rows.append([claim.section, claim.subject, paper, here, agree])
            continue
        if eff is None or not len(eff):
            continue
        match = eff[(eff["factor"] == claim.factor) & (eff["level"] == claim.level)]
        base = eff[eff["is_baseline"]]
        if not len(match):
            rows.append([claim.section, claim.subject, paper, "not in this study's levels", "not measured"])
            continue
        m = match.iloc[0]
        n_pair = (int(base.iloc[0]["n"]) if len(base) else 0, int(m["n"]))
        if claim.kind == "top1_diff":
            value, _, rest = fmt.diff_with_interval(m["diff"], m["diff_lo"], m["diff_hi"], n_pair).partition(" ")
            here = f"{value} pp" + (f" {rest}" if rest else "")
            if math.isnan(m["diff"]):
                here = f"missing ({'not run' if m['cells'] == 0 else m['failed'] or 'no finished cell'})"
            agree = _agreement(claim, m["diff"], m["diff_lo"], m["diff_hi"], n_pair)
            rows.append([claim.section, claim.subject, f"{paper}; as Δ here: {claim.paper_diff:+.1f} pp", here, agree])
        elif claim.kind == "overfit":
            if not len(base) or math.isnan(m["gap_mean"]) or math.isnan(base.iloc[0]["gap_mean"]):
                rows.append([claim.section, claim.subject, paper, "missing", "not measured"])
                continue
            gb, gl = base.iloc[0]["gap_mean"], m["gap_mean"]
            here = (f"last-epoch test − train error: {gl:+.2f} pp with {claim.factor} = {claim.level}, "
                    f"{gb:+.2f} pp at the baseline")
            agree = "larger gap, as claimed" if gl > gb else "no larger gap"
            if min(n_pair) < 2:
                agree += " (one seed)"
            rows.append([claim.section, claim.subject, paper, here, agree])
    return [[*r[:3], f"{r[3]} ({where})" if r[3] and not r[3].startswith(("not", "missing")) else r[3], r[4]]
            for r in rows]


def claims_section(rows: list[list[str]]) -> Section | None:
    if not rows:
        return None
    notes = []
    if any("ImageNet" in r[2] for r in rows):
        notes.append("The paper's ImageNet numbers come from full-size AlexNet on 1.2 M images at 224×224; here the "
                     "nets and data are CIFAR-10 sized, so only the direction and rough size of an effect compare.")
    if any("one seed" in r[4] for r in rows):
        notes.append("'one seed': no interval, so nothing beyond the sign can be said.")
    table = fmt.Table("paper_claims", f"The paper's claims ({PAPER}) beside this study's measurements",
                      ["§", "what is compared", "paper", "measured here", "agreement"], rows, notes)
    return Section("The paper's claims beside these measurements", tables=[table])


# --- the document ------------------------------------------------------------------------

def render(sd: StudyData, sections: list[Section], command: str) -> str:
    out = [f"# {sd.study}: {sd.profile} profile", ""]
    if sd.description:
        out += [f"> {sd.description}", ""]
    out += [f"Drawn by `{command}` from `runs.csv` and `history.csv` alone (nothing is retrained). "
            "Errors are in percent; differences in percentage points (pp).", ""]
    out += ["| | |", "|---|---|"] + [f"| {k} | {fmt._md_cell(v)} |" for k, v in provenance(sd)] + [""]
    if sd.notes.lines:
        out += ["## Missing data", ""] + [f"- {line}" for line in sd.notes.lines] + [""]
    for s in sections:
        out += [f"## {s.title}", ""]
        for p in s.text:
            out += [p, ""]
        for path, caption in s.figures:
            pdf = Path(path).with_suffix(".pdf").as_posix()
            out += [f"![{caption}]({path})", "", f"*{caption}* ([PDF]({pdf}))", ""]
        for t in s.tables:
            links = " · ".join(f"[{ext}](tables/{t.name}.{ext})" for ext in ("md", "tex", "csv")) \
                if t.name != "paper_claims" else ""
            out += [f"**{t.title}**" + (f" ({links})" if links else ""), "", t.markdown(), ""]
    return "\n".join(out).rstrip() + "\n"


def cell_status_lines(sd: StudyData) -> None:
    """One warning line for the cells that failed, one for those that diverged."""
    runs = sd.runs
    if not len(runs):
        return

    def name(r) -> str:
        levels = " ".join(f"{f}={r[f]}" for f in sd.factors)
        return f"{levels} seed {r['seed']}".strip()

    failed = runs[~runs["status"].isin(FINISHED)]
    if len(failed):
        what = "; ".join(f"{name(r)} ({r['status']}" + (f": {r['error']}" if isinstance(r.get("error"), str) else "")
                         + ")" for _, r in failed.iterrows())
        sd.notes.warn(f"{len(failed)} of {len(runs)} cells did not finish, shown as missing: {what}")
    diverged = runs[runs["status"] == DIVERGED]
    if len(diverged):
        sd.notes.warn(f"{len(diverged)} cell(s) diverged (loss NaN/inf): final errors left out, curves kept: "
                      + "; ".join(name(r) for _, r in diverged.iterrows()))
    if TOP1 not in runs and len(runs):
        sd.column(TOP1, why="test error of each cell")
