"""report.md: provenance, missing data, each section's figures and tables, and the paper's claims
beside what was measured."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from bench.report import format as fmt
from bench.report.claims import PAPER, TOP1, claims_table
from bench.report.load import StudyData, run_mode
from bench.report.provenance import check as provenance_check
from bench.report.verdict import VERDICT_RULE
from bench.stats import PAIRED, WELCH
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
    sizes = [
        f"{_fmt_int(tr)} training / {_fmt_int(te)} test images"
        for tr, te in dict.fromkeys(
            zip(
                runs.get("train_images", pd.Series(dtype=str)).astype(str),
                runs.get("test_images", pd.Series(dtype=str)).astype(str),
            )
        )
        if tr != "nan"
    ]
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
        ("mode", run_mode(sd) or "not recorded"),
        ("software", ", ".join(versions) or "unknown"),
        ("profile", sd.profile),
        ("seeds", f"{', '.join(str(s) for s in seeds)} ({len(seeds)} seed{'s' if len(seeds) != 1 else ''})"),
        *_declared(sd, seeds),
        *_subsets(runs),
        ("cells", f"{len(runs)} ({', '.join(f'{k} {s}' for s, k in status.items()) or 'none'})"),
    ]
    for what, column in (("epochs", "cfg_epochs"), ("batch size", "cfg_batch_size"), ("model", "cfg_model")):
        if _values(sd, column):
            lines.append((what, ", ".join(_values(sd, column))))
    if _values(sd, "git_commit"):
        lines.append(("git commit", ", ".join(_values(sd, "git_commit"))))
    flag = provenance_check(_values(sd, "git_commit"))
    if flag:
        lines.append(("⚠ provenance", flag))
    if _values(sd, "finished_at"):
        lines.append(("last cell finished", max(_values(sd, "finished_at"))))
    lines += _wall_time(pd.concat([runs, sd.grid_runs]) if sd.grid_runs is not None else runs)
    return lines


def _wall_time(runs: pd.DataFrame) -> list[tuple[str, str]]:
    """The sweep's wall time (first cell's start to last cell's finish, idle gaps between resumed
    sweeps included) beside the cells' own seconds, whose sum exceeds it where cells ran side by side."""
    if not {"finished_at", "wall_seconds"} <= set(runs) or not len(runs):
        return []
    seconds = pd.to_numeric(runs["wall_seconds"], errors="coerce")
    finished = pd.to_datetime(runs["finished_at"], errors="coerce")
    ok = seconds.notna() & finished.notna()
    if not ok.any():
        return []
    started = finished[ok] - pd.to_timedelta(seconds[ok], unit="s")
    span = (finished[ok].max() - started.min()).total_seconds()
    return [
        (
            "wall time",
            f"{span:,.0f} s from the first cell's start to the last's finish; the cells' own: {seconds[ok].sum():,.0f} s",
        )
    ]


def _subsets(runs: pd.DataFrame) -> list[tuple[str, str]]:
    """Whether the data subsets follow the seed, or every interval is conditional on one draw of them."""
    if "cfg_data_seed" not in runs or not len(runs):
        return []
    data_seeds = pd.to_numeric(runs["cfg_data_seed"], errors="coerce")
    if (data_seeds == pd.to_numeric(runs["seed"], errors="coerce")).all() and runs["seed"].nunique() > 1:
        return [
            ("data subsets", "drawn per seed (training subset, validation split, test subset); shared by a seed's arms")
        ]
    if data_seeds.nunique() == 1:
        return [
            (
                "data subsets",
                f"one draw (data_seed {int(data_seeds.iloc[0])}) for every seed: the intervals are conditional on "
                "that training subset, validation split and test subset",
            )
        ]
    return [("data subsets", "data seeds " + ", ".join(str(int(v)) for v in sorted(data_seeds.dropna().unique())))]


def _declared(sd: StudyData, seeds: list) -> list[tuple[str, str]]:
    """The seeds the profile declared before it ran (the verdicts' n), and any others (exploratory)."""
    if sd.declared_seeds is None:
        return []
    declared = ", ".join(str(s) for s in sd.declared_seeds)
    extra = [s for s in seeds if s not in set(sd.declared_seeds) | set(sd.tuning_seeds)]
    lines = [("declared seeds (the verdicts' n)", declared)]
    if sd.tuning_seeds:
        tuning = ", ".join(str(s) for s in sd.tuning_seeds)
        lines.append(("tuning seeds (choose each arm's rate; in no verdict)", tuning))
    if extra:
        lines.append(("exploratory seeds (not declared; beside the verdicts only)", ", ".join(str(s) for s in extra)))
    return lines


# --- the paper's claims beside the measurements --------------------------------------

CLAIM_COLUMNS = [
    "§",
    "claim",
    "paper",
    "measured effect [95% interval]",
    "half-width; detectable (80% power)",
    "n",
    "method",
    "verdict",
    "note",
]
CLAIMS_TABLE = "paper_claims"
METHODS = {PAIRED: "paired t", WELCH: "Welch"}


def claim_rows(sd: StudyData, extra: list[dict] = ()) -> list[dict]:
    """One row per paper claim this study re-measures (`claims.Assessment.row`): `extra` (the kind's own,
    e.g. Figure 1's speed-up per setup) first, then those `claims.claims_table` finds in a study
    with a baseline."""
    rows = list(extra)
    if sd.baseline is not None and len(sd.runs) and sd.factors:
        rows += claims_table(
            sd.runs,
            sd.baseline,
            only=sd.only,
            declared_seeds=sd.declared_seeds,
            tuning_seeds=sd.tuning_seeds,
            history=sd.history,
        )
    return rows


def claims_section(sd: StudyData, rows: list[dict]) -> tuple[Section, fmt.Table] | None:
    """The claims section (its table not yet added: `Output.table` writes and adds it) and the table: claim | paper | measured effect [95% interval] | n | method |
    verdict | note, and the verdict rule under it."""
    if not rows:
        return None
    data = ", ".join(_values(sd, "data_source")) or "unknown data"
    notes = [
        f"Measured on {data}, {sd.profile} profile. Effect: configuration − baseline (pp of top-1 error; "
        "for the overfitting claims, of the gap test − clean training error); Figure 1: tanh / ReLU epochs, "
        "geometric mean over seeds.",
        VERDICT_RULE,
    ]
    if any("ImageNet" in r["data"] for r in rows):
        notes.append(
            "The paper's ImageNet numbers come from full-size AlexNet on 1.2 M images at 224×224; here the "
            "nets and data are CIFAR-10 sized, so only the direction and rough size of an effect compare."
        )
    table_rows = [
        [
            r["section"],
            r["claim"],
            f"{r['quote']}; as measured here: {r['paper']}",
            r["measured"],
            r["spread"],
            r["n_text"],
            METHODS.get(r["method"], r["method"] or fmt.MISSING),
            r["verdict"],
            r["note"],
        ]
        for r in rows
    ]
    table = fmt.Table(CLAIMS_TABLE, f"The paper's claims ({PAPER}) re-measured", CLAIM_COLUMNS, table_rows, notes)
    return Section("The paper's claims: verdicts"), table


# --- the document ------------------------------------------------------------------------

PIPELINE_CHECK_PROFILES = ("cpu", "smoke")  # reduced data, one seed: they check the pipeline, not the paper
PIPELINE_CHECK = (
    "pipeline check: reduced data and one seed; verdicts are 'not resolvable' where the interval allows no conclusion"
)


def render(sd: StudyData, sections: list[Section], command: str) -> str:
    out = [f"# {sd.study}: {sd.profile} profile", ""]
    if sd.profile in PIPELINE_CHECK_PROFILES:
        out += [f"**{PIPELINE_CHECK}.**", ""]
    if sd.description:
        out += [f"> {sd.description}", ""]
    out += [
        f"Drawn by `{command}` from `runs.csv` and `history.csv` alone (nothing is retrained). "
        "Errors are in percent; differences in percentage points (pp).",
        "",
    ]
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
            links = " · ".join(f"[{ext}](tables/{t.name}.{ext})" for ext in ("md", "tex", "csv"))
            out += [f"**{t.title}** ({links})", "", t.markdown(), ""]
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
        what = "; ".join(
            f"{name(r)} ({r['status']}" + (f": {r['error']}" if isinstance(r.get("error"), str) else "") + ")"
            for _, r in failed.iterrows()
        )
        sd.notes.warn(f"{len(failed)} of {len(runs)} cells did not finish, shown as missing: {what}")
    diverged = runs[runs["status"] == DIVERGED]
    if len(diverged):
        sd.notes.warn(
            f"{len(diverged)} cell(s) diverged (loss NaN/inf): final errors left out, curves kept: "
            + "; ".join(name(r) for _, r in diverged.iterrows())
        )
    if TOP1 not in runs and len(runs):
        sd.column(TOP1, why="test error of each cell")
