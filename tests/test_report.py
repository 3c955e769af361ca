"""`bench.report` on small tidy tables written here by hand: what is drawn, and the numbers in the tables.

Every expected number is computed here independently of the report's code: means
and sds with `statistics`, t-quantiles from a table of published values (no scipy).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.errors import UserError
from bench.report import command
from bench.report.claims import CLAIMS
from bench.report.draw import report_all, report_study
from bench.report.format import latex_escape, to_latex, to_markdown
from bench.report.kinds import KINDS, kind_for
from bench.report.load import load, run_mode
from bench.report.markdown import PIPELINE_CHECK
from bench.report.plot import level_colors, palette
from bench.report.verdict import VERDICT_RULE
from bench.stats import summarize, t_quantile, welch
from bench.studies import STUDY_JSON, Design, StudyFile
from bench.sweep.results import ResultsFolder
from bench.train.target import crossing as bench_crossing

REPO = Path(__file__).resolve().parents[1]

# Student's t, 0.975 quantile, from printed tables.
T975 = {1: 12.706205, 2: 4.302653, 3: 3.182446, 4: 2.776445, 9: 2.262157, 30: 2.042272}
CONVENTION = "macs=multiply-adds; flops=2*macs; per image, forward pass"


# --- writing tidy tables as the study runner does ----------------------------------------


def cell(
    levels: dict, seed: int, *, status: str = "ok", top1=None, train=None, curve=None, base=False, **extra
) -> dict:
    """One runs.csv row plus its history. `curve`: [(train_err, test_err), ...] per epoch."""
    curve = curve or []
    if top1 is not None and not curve:
        curve = [(top1 + 20, top1 + 15), (train if train is not None else top1 - 5, top1)]
    return {"levels": levels, "seed": seed, "status": status, "base": base, "curve": curve, "extra": extra}


CLEAN_BELOW = 6.0  # the clean training error (no augmentation or dropout) this far below the running one


def write_study(
    folder: Path,
    study: str,
    factors: list[str],
    cells: list[dict],
    *,
    profile: str = "cpu",
    history: bool = True,
    env: bool = True,
    drop: tuple[str, ...] = (),
    target: dict | None = None,
    study_file: Path | None = None,
    old: bool = False,
    recorded: bool = True,
) -> Path:
    """runs.csv, history.csv, environment.json and study.json as the runner writes them. old: as older
    runs did (training error during the epoch as `train_err_pct`, no clean training error, a best test
    error). recorded=False: no study.json, as a folder swept before the design was recorded."""
    folder.mkdir(parents=True, exist_ok=True)
    running, final_running = (
        ("train_err_pct", "final_train_err_pct") if old else ("train_running_err_pct", "final_train_running_err_pct")
    )
    runs, hist = [], []
    for c in cells:
        cid = hashlib.sha256(json.dumps([c["levels"], c["seed"]], sort_keys=True).encode()).hexdigest()[:12]
        ok = c["status"] in ("ok", "diverged") and c["curve"]
        last = c["curve"][-1] if ok else (None, None)
        row = {
            "study": study,
            "profile": profile,
            "cell_id": cid,
            **c["levels"],
            "is_baseline": c["base"],
            "seed": c["seed"],
            "cfg_model": "alexnet",
            "cfg_epochs": 12,
            "cfg_lr": 0.02,
            "cfg_batch_size": 128,
            "device": "cpu",
            "device_name": "Test CPU",
            "torch": "2.0",
            "torchvision": "0.15",
            "cuda": None,
            "git_commit": "abc123",
            "status": c["status"],
            "error": None if c["status"] in ("ok", "diverged") else "RuntimeError: boom",
            "epochs_run": len(c["curve"]) if ok else None,
            final_running: last[0],
            "final_test_top1_err_pct": last[1],
            "final_test_top5_err_pct": None if last[1] is None else last[1] / 4,
            "params_total": 1000,
            "macs": 50000,
            "core_macs": 48000,
            "flop_convention": CONVENTION,
            "median_train_images_per_s": 500.0,
            "data_source": "synthetic",
            "train_images": 160,
            "test_images": 80,
            "wall_seconds": 1.0,
        }
        if old:
            row["best_test_top1_err_pct"] = None if last[1] is None else last[1] - 30  # must never be used
        else:
            row["final_train_clean_top1_err_pct"] = None if last[0] is None else last[0] - CLEAN_BELOW
            if c["levels"].get("norm", "lrn") == "lrn":  # LRN normalises: 5% of its denominator is data
                row["lrn_norm1_share_mean_final"] = 0.05
        row.update(c["extra"])
        if target:
            reached = next((e + 1 for e, (tr, _) in enumerate(c["curve"]) if tr <= target["value"]), None)
            row.update(
                target_metric=target["metric"],
                target_value=target["value"],
                epochs_to_target=reached,
                seconds_to_target=reached,
            )
        runs.append(row)
        for e, (tr, te) in enumerate(c["curve"] if ok else []):
            hist.append(
                {
                    "study": study,
                    "profile": profile,
                    "cell_id": cid,
                    **c["levels"],
                    "seed": c["seed"],
                    "epoch": e + 1,
                    "train_loss": 1.0,
                    running: tr,
                    "test_loss": 1.0,
                    "test_top1_err_pct": te,
                    "test_top5_err_pct": te / 4,
                    "lr": 0.02,
                    "epoch_seconds": 1.0,
                    "train_images_per_s": 500.0,
                    "elapsed_seconds": e + 1.0,
                    **({} if old else {"train_clean_top1_err_pct": tr - CLEAN_BELOW}),
                }
            )
    pd.DataFrame(runs).drop(columns=list(drop)).to_csv(folder / "runs.csv", index=False)
    if history:
        pd.DataFrame(hist).to_csv(folder / "history.csv", index=False)
    if recorded:
        ResultsFolder(folder).record_design(_design(study, profile, factors, cells, study_file))
    if env:
        (folder / "environment.json").write_text(
            json.dumps(
                {
                    "study": study,
                    "profile": profile,
                    "device": "cpu",
                    "python": "3.11",
                    "study_file": str(study_file or ""),
                }
            )
        )
    return folder


def _design(study: str, profile: str, factors: list[str], cells: list[dict], study_file: Path | None) -> Design:
    """What the sweep records: the study file's design at the profile; without one, the cells' levels in
    the order they appear, each factor's baseline the base cell's level (else its first)."""
    if study_file is not None:
        try:
            return StudyFile.read(study_file).design_at(profile)
        except UserError:  # a file edited since the sweep, which recorded the design when it still read
            pass
    levels = {f: list(dict.fromkeys(str(c["levels"][f]) for c in cells if f in c["levels"])) for f in factors}
    base = next((c["levels"] for c in cells if c["base"]), {})
    baseline = {f: str(base.get(f, (lv or [""])[0])) for f, lv in levels.items()}
    return Design(study, profile, {f: lv or [baseline[f]] for f, lv in levels.items()}, baseline, {})


def decay(start: float, end: float, epochs: int, gap: float) -> list[tuple[float, float]]:
    """A training curve from `start` to `end` % training error; test error `gap` points above at the end."""
    out = []
    for e in range(epochs):
        tr = start + (end - start) * (1 - (1 - e / (epochs - 1)) ** 2)
        out.append((tr, tr + gap * e / (epochs - 1) + 3))
    return out


# --- the ablation study ------------------------------------------------------------------

BASE = {"activation": "relu", "norm": "lrn", "pool": "overlap", "dropout": "0.5", "towers": "two"}
TOP1 = {  # configuration -> final test top-1 error per seed
    ("baseline", ""): [20.0, 21.0, 22.0],
    ("activation", "tanh"): [22.0, 23.5, 24.0],
    ("norm", "none"): [23.0, 25.0],  # seed 2 failed
    ("dropout", "0.0"): [21.5, 22.5, 23.5],
    ("pool", "nonoverlap"): [24.0],  # one seed
}


def ablation_cells() -> list[dict]:
    cells = []
    for (factor, level), values in TOP1.items():
        levels = dict(BASE) if factor == "baseline" else {**BASE, factor: level}
        for seed, v in enumerate(values):
            gap = 14.0 if factor == "dropout" else 4.0
            curve = decay(85.0, v - gap - 3, 8, gap)
            curve[-1] = (curve[-1][0], v)
            cells.append(cell(levels, seed, curve=curve, base=factor == "baseline"))
    cells.append(cell({**BASE, "norm": "none"}, 2, status="error"))
    cells.append(cell({**BASE, "towers": "one"}, 0, status="oom"))  # a level whose only cell failed
    return cells


class Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def ablation(tmp_path_factory) -> tuple[Path, list[str]]:
    """A one-at-a-time study's report, and the warning lines it logged."""
    folder = write_study(
        tmp_path_factory.mktemp("abl") / "toy-ablation" / "cpu", "toy-ablation", list(BASE), ablation_cells()
    )
    handler, logger = Lines(), logging.getLogger("bench.report")
    logger.addHandler(handler)
    try:
        report_study(folder)
    finally:
        logger.removeHandler(handler)
    return folder, handler.lines


def t_interval(values: list[float]) -> tuple[float, float, float, float]:
    n, m = len(values), statistics.mean(values)
    sd = statistics.stdev(values)
    half = T975[n - 1] * sd / math.sqrt(n)
    return m, sd, m - half, m + half


def test_stats_match_published_t_quantiles():
    for df, q in T975.items():
        assert t_quantile(0.975, df) == pytest.approx(q, abs=2e-6)
    assert t_quantile(0.025, 2) == pytest.approx(-T975[2], abs=2e-6)
    one = summarize([5.0])
    assert one.n == 1 and one.mean == 5.0 and math.isnan(one.lo)
    d = welch(summarize([10.0, 11.0, 12.0]), summarize([12.0, 13.0, 14.0]))  # equal sds and n: df = 2(n-1)
    half = T975[4] * math.sqrt(1 / 3 + 1 / 3)
    assert (d.diff, d.df) == (pytest.approx(2.0), pytest.approx(4.0))
    assert (d.lo, d.hi) == (pytest.approx(2.0 - half), pytest.approx(2.0 + half))


def test_ablation_writes_figures_tables_and_report(ablation):
    ablation, _ = ablation
    for name in ("ablation_effects", "overfitting"):
        for ext in ("png", "pdf"):
            path = ablation / "figures" / f"{name}.{ext}"
            assert path.is_file() and path.stat().st_size > 5000, path
    assert (ablation / "figures" / "ablation_effects.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (ablation / "figures" / "ablation_effects.pdf").read_bytes()[:5] == b"%PDF-"
    for ext in ("md", "tex", "csv"):
        assert (ablation / "tables" / f"ablation_effects.{ext}").stat().st_size > 100
    report = (ablation / "report.md").read_text()
    assert "![" in report and "(figures/ablation_effects.png)" in report and "(figures/overfitting.png)" in report
    for needle in (
        "synthetic",
        "Test CPU",
        "0, 1, 2 (3 seeds)",
        "Welch",
        CONVENTION,
        "top-1 / top-5 error down 1.4% / 1.2% with LRN",
        "top-1 / top-5 error down 0.4% / 0.3%",
    ):
        assert needle in report, needle


def test_ablation_effects_numbers(ablation):
    ablation, _ = ablation
    eff = pd.read_csv(ablation / "tables" / "ablation_effects.csv", keep_default_na=False, na_values=[""])
    rows = {r["config"]: r for _, r in eff.iterrows()}
    base = TOP1[("baseline", "")]
    bm, bsd, blo, bhi = t_interval(base)
    b = rows["baseline"]
    assert (b["n"], b["top1_mean"], b["top1_sd"]) == (3, pytest.approx(bm), pytest.approx(bsd))
    assert (b["top1_lo"], b["top1_hi"]) == (pytest.approx(blo), pytest.approx(bhi))

    tanh = TOP1[("activation", "tanh")]
    m, sd, lo, hi = t_interval(tanh)
    r = rows["activation = tanh"]
    assert (r["top1_mean"], r["top1_lo"], r["top1_hi"]) == (pytest.approx(m), pytest.approx(lo), pytest.approx(hi))
    # paired over seeds 0, 1, 2: a t-interval on the per-seed differences, df = 2
    per_seed = [t - b for t, b in zip(tanh, base)]
    se = statistics.stdev(per_seed) / math.sqrt(3)
    assert r["diff"] == pytest.approx(m - bm) and r["diff_df"] == pytest.approx(2.0)
    assert (r["diff_method"], r["diff_n"]) == ("paired", 3)
    assert (r["diff_lo"], r["diff_hi"]) == (pytest.approx(m - bm - T975[2] * se), pytest.approx(m - bm + T975[2] * se))

    none = TOP1[("norm", "none")]  # two finished seeds of three: the failed one is counted, not averaged
    m, sd, lo, hi = t_interval(none)
    r = rows["norm = none"]
    assert (r["n"], r["cells"], r["failed"]) == (2, 3, "error×1")
    assert (r["top1_lo"], r["top1_hi"]) == (pytest.approx(lo), pytest.approx(hi))
    # paired over the two seeds both have: the baseline's seed 2 has no partner and is left out
    assert r["diff"] == pytest.approx(statistics.mean(none) - statistics.mean(base[:2]))
    assert (r["diff_method"], r["diff_n"]) == ("paired", 2)

    r = rows["pool = nonoverlap"]  # one seed: a mean, no interval
    assert r["n"] == 1 and r["top1_mean"] == 24.0 and math.isnan(r["top1_lo"]) and math.isnan(r["diff_lo"])
    assert r["diff"] == pytest.approx(24.0 - base[0])  # paired with the baseline's seed 0

    md = (ablation / "tables" / "ablation_effects.md").read_text()
    assert f"{m:.2f} ± {sd:.2f} (n=2)" in md and "24.00 (n=1)" in md and "one seed: no interval" in md
    d = statistics.mean(tanh) - bm
    assert f"{d:+.2f} [{d - T975[2] * se:+.2f}, {d + T975[2] * se:+.2f}] | paired, 3 seeds |" in md
    assert "[95% paired CI]" in md and "paired, 1 seed: no interval" in md
    tex = (ablation / "tables" / "ablation_effects.tex").read_text()
    assert r"\toprule" in tex and r"$\pm$" in tex and r"\%" in tex and "±" not in tex


def test_failed_cells_are_one_warning_line_and_shown_missing(ablation):
    ablation, lines = ablation
    failed = [line for line in lines if "did not finish" in line]
    assert len(failed) == 1 and "2 of 14 cells" in failed[0]
    assert "norm=none pool=overlap dropout=0.5 towers=two seed 2 (error" in failed[0]
    assert "towers=one seed 0 (oom" in failed[0]
    assert not [line for line in lines if "could not draw" in line]
    table = (ablation / "tables" / "ablation_effects.md").read_text()
    assert "| towers = one |" in table and "— (oom×1)" in table  # a level whose only cell failed is a row
    assert "did not finish" in (ablation / "report.md").read_text()


def test_missing_history_and_column_still_write_what_they_can(tmp_path, caplog):
    folder = write_study(
        tmp_path / "toy-ablation" / "cpu",
        "toy-ablation",
        list(BASE),
        ablation_cells(),
        history=False,
        env=False,
        drop=("macs",),
    )
    with caplog.at_level(logging.WARNING):
        report_study(folder)
    messages = " | ".join(r.getMessage() for r in caplog.records)
    assert "history.csv missing" in messages and "'macs' missing" in messages
    assert (folder / "figures" / "ablation_effects.png").is_file()
    assert not (folder / "figures" / "overfitting.png").exists()  # no curves to draw
    table = (folder / "tables" / "ablation_effects.md").read_text()
    assert "| baseline | 1.00 k | — |" in table
    assert "could not draw" not in messages


STUDY_TOML = """
[study]
name = "toy-ablation"
description = "a toy one-at-a-time study"
[factors.activation]
key = "knobs.activation"
levels = ["relu", "tanh"]
[factors.norm]
key = "knobs.norm"
levels = ["lrn", "none"]
[factors.pool]
key = "knobs.pool"
levels = ["overlap", "nonoverlap"]
[factors.dropout]
key = "knobs.dropout"
levels = [0.5, 0.0]
"""


def test_a_study_or_cell_not_run_is_shown_missing(tmp_path, caplog):
    root = tmp_path / "results"
    toml = tmp_path / "toy-ablation.toml"
    toml.write_text(STUDY_TOML)
    write_study(
        root / "toy-ablation" / "smoke",
        "toy-ablation",
        list(BASE)[:4],
        [{**c, "levels": {k: c["levels"][k] for k in list(BASE)[:4]}} for c in ablation_cells()[:2]],
        profile="smoke",
        study_file=toml,
    )
    with caplog.at_level(logging.WARNING):
        reports = report_all(root)
    assert [r.parent.name for r in reports] == ["smoke"]
    not_run = [r.getMessage() for r in caplog.records if "study not run" in r.getMessage()]
    assert any(m.startswith("figure1:") for m in not_run) and not any(
        "toy-ablation" in m.split(":")[0] for m in not_run
    )
    # levels the study file lists but the tables lack: shown as not run, not dropped
    table = (root / "toy-ablation" / "smoke" / "tables" / "ablation_effects.md").read_text()
    assert "| pool = nonoverlap |" in table and "— (not run)" in table
    assert "a toy one-at-a-time study" in (root / "toy-ablation" / "smoke" / "report.md").read_text()


def test_levels_a_profile_leaves_out_through_only_are_not_missing(tmp_path):
    """alexnet cpu-full runs the accuracy claims only (`only`): the overfitting study runs the other
    levels, so they are outside this profile's design, neither rows nor claims here."""
    toml = tmp_path / "toy-ablation.toml"
    toml.write_text(STUDY_TOML + '[profiles.smoke]\nonly = { pool = ["overlap"] }\n')
    factors = list(BASE)[:4]
    cells = [{**c, "levels": {k: c["levels"][k] for k in factors}} for c in ablation_cells()]
    folder = write_study(
        tmp_path / "toy-ablation" / "smoke",
        "toy-ablation",
        factors,
        [c for c in cells if c["levels"]["pool"] == "overlap"],
        profile="smoke",
        study_file=toml,
    )
    report_study(folder)
    effects = (folder / "tables" / "ablation_effects.md").read_text()
    claims = (folder / "tables" / "paper_claims.md").read_text()
    assert "| norm = none |" in effects and "pool = nonoverlap" not in effects
    assert "local response normalisation" in claims and "overlapping 3x3/2 pooling" not in claims
    toml.write_text(STUDY_TOML + "[profiles.smoke]\n")  # edited since the sweep: the recorded design stands
    report_study(folder)
    assert "pool = nonoverlap" not in (folder / "tables" / "ablation_effects.md").read_text()
    (folder / STUDY_JSON).unlink()  # a folder swept before the design was recorded: the study file's, no `only`
    report_study(folder)
    assert "| pool = nonoverlap |" in (folder / "tables" / "ablation_effects.md").read_text()
    assert "overlapping 3x3/2 pooling" in (folder / "tables" / "paper_claims.md").read_text()


def test_a_factorial_profile_without_the_baseline_level_compares_with_the_first_it_keeps(tmp_path):
    """figure1-precision's cpu profile keeps one learning rate, not the study's baseline rate: its
    fp32 cells are the baseline the bf16 ones are compared with, not a missing configuration."""
    toml = tmp_path / "toy-precision.toml"
    toml.write_text(
        '[study]\nname = "toy-precision"\ndesign = "factorial"\n[base]\nmodel = "layers-80sec"\n'
        '[factors.precision]\nkey = "dtype"\nlevels = ["fp32", "bf16"]\n'
        '[factors.lr]\nkey = "lr"\nlevels = [0.0125, 0.025]\n'
        "[profiles.smoke]\nonly = { lr = [0.025] }\n"
    )
    fp32 = [cell({"precision": "fp32", "lr": "0.025"}, s, top1=t) for s, t in ((0, 40.0), (1, 44.0))]
    bf16 = [cell({"precision": "bf16", "lr": "0.025"}, s, top1=t) for s, t in ((0, 41.0), (1, 46.0))]
    folder = write_study(
        tmp_path / "toy-precision" / "smoke",
        "toy-precision",
        ["precision", "lr"],
        fp32 + bf16,
        profile="smoke",
        study_file=toml,
    )
    report_study(folder)
    effects = (folder / "tables" / "ablation_effects.md").read_text()
    assert "not run" not in effects and "lr = " not in effects
    diffs = [1.0, 2.0]  # bf16 - fp32 per seed
    _, _, lo, hi = t_interval(diffs)
    assert f"+1.50 [{lo:+.2f}, {hi:+.2f}]" in effects


def test_empty_runs_table_writes_a_report(tmp_path):
    folder = tmp_path / "x" / "cpu"
    folder.mkdir(parents=True)
    (folder / "runs.csv").write_text("\n")  # what write_csv writes for a table with no rows
    assert report_study(folder).read_text().startswith("# ")
    (folder / "runs.csv").write_text("")  # no bytes at all: a copy cut short, not a table
    with pytest.raises(UserError, match=r"runs\.csv is not a readable table \(it is empty: 0 bytes"):
        report_study(folder)


# --- Figure 1 -----------------------------------------------------------------------------

TARGET = {"metric": "train_err_pct", "value": 25.0}
# (setup, activation, lr) -> per seed: epoch at which training error first reaches 25%, or None
# (then the curve ends at `final` after 12 epochs); `final` breaks ties.
FIG1 = {
    ("modern", "relu", "0.01"): ([3, 3], 20.0),
    ("modern", "relu", "0.02"): ([2, 3], 21.0),  # fastest: mean 2.5
    ("modern", "tanh", "0.01"): ([9, 11], 22.0),  # fastest: mean 10
    ("modern", "tanh", "0.02"): ([12, 12], 23.0),
    ("paper", "relu", "0.01"): ([4, 4], 20.0),
    ("paper", "relu", "0.02"): ([4, 4], 18.0),  # tie on epochs: lower final train error wins
    ("paper", "tanh", "0.01"): ([None, None], 30.0),
    ("paper", "tanh", "0.02"): ([None, None], 28.0),  # none reaches: lowest final train error
}


def fig1_curve(reach: int | None, final: float) -> list[tuple[float, float]]:
    if reach is None:
        return decay(85.0, final, 12, 2.0)
    # above 25% before `reach`, 24% at `reach`, and one more epoch (the runner's stop_after = 1)
    out = [(25.0 + 55.0 * (reach - e) / reach, 30.0) for e in range(1, reach)]
    return out + [(24.0, 29.0), (final, 28.0)]


def figure1_cells(setups=("modern", "paper")) -> list[dict]:
    cells = []
    for (setup, act, lr), (reaches, final) in FIG1.items():
        if setup not in setups:
            continue
        for seed, reach in enumerate(reaches):
            levels = {"setup": setup, "activation": act, "lr": lr} if len(setups) > 1 else {"activation": act, "lr": lr}
            cells.append(cell(levels, seed, curve=fig1_curve(reach, final)))
    return cells


@pytest.fixture(scope="module")
def fig1(tmp_path_factory) -> Path:
    folder = write_study(
        tmp_path_factory.mktemp("f1") / "toy-fig1" / "cpu",
        "toy-fig1",
        ["setup", "activation", "lr"],
        figure1_cells(),
        target=TARGET,
    )
    report_study(folder)
    return folder


def test_figure1_outputs(fig1):
    for ext in ("png", "pdf"):
        assert (fig1 / "figures" / f"figure1.{ext}").stat().st_size > 5000
    report = (fig1 / "report.md").read_text()
    assert "(figures/figure1.png)" in report and "ReLU six times faster" in report


def test_run_mode_names_precision_layout_and_compilation():
    runs = pd.DataFrame(
        {
            "dtype_resolved": ["bf16", "bf16", "fp32", None],
            "cfg_channels_last": [True, True, False, False],
            "cfg_compile": ["off", "off", "default", "off"],
        }
    )
    assert run_mode(argparse.Namespace(runs=runs)) == "bf16 autocast, channels_last, eager; fp32, compiled (default)"
    older = pd.DataFrame({"dtype_resolved": ["fp32"]})  # rows from before channels_last and compile were recorded
    assert run_mode(argparse.Namespace(runs=older)) == "fp32, eager"
    assert run_mode(argparse.Namespace(runs=pd.DataFrame({"seed": [0]}))) == ""


def test_figure1_chosen_learning_rates_and_ratio(fig1):
    chosen = pd.read_csv(fig1 / "tables" / "figure1.csv", dtype={"lr": str})
    got = {(r["setup"], r["activation"]): r for _, r in chosen.iterrows()}
    assert {k: v["lr"] for k, v in got.items()} == {
        ("modern", "relu"): "0.02",
        ("modern", "tanh"): "0.01",
        ("paper", "relu"): "0.02",
        ("paper", "tanh"): "0.02",
    }
    relu, tanh = statistics.mean([2, 3]), statistics.mean([9, 11])
    assert got[("modern", "relu")]["epochs_mean"] == pytest.approx(relu)
    assert got[("modern", "tanh")]["epochs_mean"] == pytest.approx(tanh)
    assert got[("paper", "relu")]["epochs_mean"] == pytest.approx(4.0)
    assert not got[("paper", "tanh")]["reached"] and math.isnan(got[("paper", "tanh")]["epochs_mean"])
    md = (fig1 / "tables" / "figure1.md").read_text()
    assert f"tanh/relu = {tanh / relu:.1f}×" in md
    assert "did not reach 25% within 12 epochs" in md
    assert f"tanh/relu ≥ {13 / 4:.1f}× (lower bound" in md  # 12 epochs + 1, over ReLU's 4; never extrapolated
    grid = (fig1 / "tables" / "figure1_lr_grid.md").read_text()
    assert "| modern | relu | 0.02 | 2 / 2 | 2, 3 |" in grid and "| paper | tanh | 0.01 | 0 / 2 | –, – |" in grid


def test_figure1_chooses_on_the_grid_not_the_confirming_seeds(tmp_path):
    """A two-stage profile: seed 0 ran the grid, seeds 1 and 2 only its fastest rate (confirm_seeds).
    Counting the confirming seeds in the choice would move it to the rate they never ran."""
    reach = {("relu", "0.01"): [3], ("relu", "0.02"): [2, 5, 5], ("tanh", "0.01"): [9, 10, 11], ("tanh", "0.02"): [12]}
    cells = [
        cell({"activation": act, "lr": lr}, seed, curve=fig1_curve(r, 20.0))
        for (act, lr), per_seed in reach.items()
        for seed, r in enumerate(per_seed)
    ]
    toml = tmp_path / "toy-fig1.toml"
    toml.write_text(
        '[study]\nname = "toy-fig1"\nseeds = [0]\ntarget = { metric = "train_running_err_pct", value = 25.0 }\n'
        'fastest_lr_per = ["activation"]\n'
        '[factors.activation]\nkey = "knobs.activation"\nlevels = ["relu", "tanh"]\n'
        '[factors.lr]\nkey = "lr"\nlevels = [0.01, 0.02]\n[profiles.cpu]\nconfirm_seeds = [1, 2]\n'
    )
    folder = write_study(
        tmp_path / "f" / "cpu", "toy-fig1", ["activation", "lr"], cells, target=TARGET, study_file=toml
    )
    report_study(folder)
    chosen = pd.read_csv(folder / "tables" / "figure1.csv", dtype={"lr": str}, keep_default_na=False)
    got = {r["activation"]: r for _, r in chosen.iterrows()}
    assert got["relu"]["lr"] == "0.02" and got["relu"]["n"] == 3  # on seed 0: 2 epochs vs 3
    assert got["relu"]["epochs_mean"] == pytest.approx(statistics.mean([2, 5, 5]))  # all three seeds
    assert got["tanh"]["lr"] == "0.01" and got["tanh"]["epochs_mean"] == pytest.approx(10.0)
    claims = (folder / "tables" / "paper_claims.md").read_text()
    assert "2 pairs" in claims  # paired over the confirming seeds: seed 0 chose the rates, so it is not counted


def test_figure1_chooses_per_the_factors_the_study_file_declares(tmp_path):
    """`fastest_lr_per` is one declaration for the sweep and the report: ["activation"] pools the setups
    (one rate per activation, one panel), and a declaration without the activation is no Figure 1."""
    from bench.report.kinds import figure1

    def study_with(per: str) -> Path:
        toml = tmp_path / f"toy-fig1-{len(per)}.toml"
        toml.write_text(
            '[study]\nname = "toy-fig1"\nseeds = [0, 1]\ntarget = { metric = "train_running_err_pct", value = 25.0 }\n'
            f"fastest_lr_per = {per}\n"
            "[factors.setup]\nlevels.modern = {}\nlevels.paper = {}\n"
            '[factors.activation]\nkey = "knobs.activation"\nlevels = ["relu", "tanh"]\n'
            '[factors.lr]\nkey = "lr"\nlevels = [0.01, 0.02]\n[profiles.cpu]\n'
        )
        cells = figure1_cells()
        return write_study(
            tmp_path / per / "cpu", "toy-fig1", ["setup", "activation", "lr"], cells, target=TARGET, study_file=toml
        )

    sd = load(study_with('["activation"]'))
    assert sd.fastest_lr_per == ["activation"] and kind_for(sd) is figure1
    chosen = figure1.fastest(sd).chosen
    # pooled over the setups: relu 0.02 (3.25 epochs vs 3.5); tanh reaches at neither rate in the paper
    # setup, so the lower final training error, 0.02 (modern alone would choose 0.01)
    assert chosen[["setup", "activation", "lr"]].values.tolist() == [["", "relu", "0.02"], ["", "tanh", "0.02"]]
    assert chosen["n"].tolist() == [4, 4]
    sd = load(study_with('["setup"]'))
    assert sd.fastest_lr_per == ["setup"] and kind_for(sd) is not figure1


def test_figure1_from_history_alone_and_without_setup(tmp_path):
    """No epochs_to_target column: recomputed from history.csv; no setup factor: one panel."""
    folder = write_study(
        tmp_path / "f" / "cpu",
        "toy-fig1",
        ["activation", "lr"],
        figure1_cells(("modern",)),
        target=TARGET,
        drop=("epochs_to_target",),
    )
    report_study(folder)
    chosen = pd.read_csv(folder / "tables" / "figure1.csv", dtype={"lr": str}, keep_default_na=False)
    assert chosen["lr"].tolist() == ["0.02", "0.01"]
    assert chosen["epochs_mean"].astype(float).tolist() == [2.5, 10.0]
    assert "tanh/relu = 4.0×" in (folder / "tables" / "figure1.md").read_text()
    assert (folder / "figures" / "figure1.png").stat().st_size > 5000


# --- architectures ----------------------------------------------------------------------------

ARCH = {
    "lenet5": ([40.0, 42.0], 60_000, 400_000),
    "alexnet": ([20.0, 22.0], 2_000_000, 40_000_000),
    "resnet18": ([10.0, 12.0], 11_000_000, 550_000_000),
}


@pytest.fixture(scope="module")
def arch(tmp_path_factory) -> Path:
    cells = []
    for name, (errs, params, macs) in ARCH.items():
        for seed, e in enumerate(errs, start=2 if name == "resnet18" else 0):  # resnet18: no seed in common
            cells.append(
                cell(
                    {"architecture": name},
                    seed,
                    top1=e,
                    base=name == "alexnet",
                    params_total=params,
                    macs=macs,
                    core_macs=macs,
                    train_images_per_s=1e6 / params**0.5,
                    infer_images_per_s=3e6 / params**0.5,
                )
            )
    cells += [cell({"architecture": "vgg16"}, s, status="oom") for s in (0, 1)]
    folder = write_study(
        tmp_path_factory.mktemp("arch") / "toy-arch" / "gpu", "toy-arch", ["architecture"], cells, profile="gpu"
    )
    report_study(folder)
    return folder


def test_architectures_outputs_and_numbers(arch):
    for name in ("architectures_error_vs_cost", "architectures_throughput"):
        for ext in ("png", "pdf"):
            assert (arch / "figures" / f"{name}.{ext}").stat().st_size > 5000
    eff = pd.read_csv(arch / "tables" / "architectures.csv", keep_default_na=False, na_values=[""])
    assert eff["level"].tolist() == ["lenet5", "alexnet", "resnet18", "vgg16"]  # the study's order
    r = eff.set_index("level").loc["resnet18"]
    assert r["diff"] == pytest.approx(11.0 - 21.0) and r["params"] == 11_000_000
    se = math.sqrt(2 / 2 + 2 / 2)  # both sides sd = sqrt(2), n = 2: Welch df = 2
    assert (r["diff_lo"], r["diff_hi"]) == (pytest.approx(-10 - T975[2] * se), pytest.approx(-10 + T975[2] * se))
    assert (r["diff_method"], eff.set_index("level").loc["lenet5", "diff_method"]) == ("welch", "paired")
    assert r["train_ips"] == pytest.approx(1e6 / 11_000_000**0.5)
    md = (arch / "tables" / "architectures.md").read_text()
    assert "| vgg16 |" in md and "oom×2" in md and "Δ top-1 vs alexnet" in md and "550 M" in md
    assert "[95% paired or Welch CI]" in md and "| Welch, 2 vs 2 seeds |" in md and "| paired, 2 seeds |" in md
    assert "pipeline check" not in (arch / "report.md").read_text()  # a gpu profile is not one
    assert "model only, median of timed repeats" in md


def test_architectures_error_vs_measured_speed(arch):
    """The issue's view of the lineage: error against MACs, parameters and the throughput measured here."""
    from bench.report.effects import effects, in_level_order
    from bench.report.kinds.architectures import architectures_cost

    sd = load(arch)
    fig = architectures_cost(sd, in_level_order(sd, effects(sd)))
    speed = fig.axes[2]
    assert speed.get_title() == "error vs measured speed (Test CPU)" and speed.get_xscale() == "log"
    x = sorted({float(line.get_xdata()[0]) for line in speed.lines if len(line.get_xdata())})  # markers, caps
    assert x == pytest.approx(sorted(1e6 / p**0.5 for _, p, _ in ARCH.values()))  # one point per net


# --- the command ------------------------------------------------------------------------------


def test_command_reports_a_root_and_rejects_a_folder_without_runs(tmp_path):
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    folder = write_study(tmp_path / "results" / "toy" / "smoke", "toy", ["arch"], [], profile="smoke")
    assert command.run(parser.parse_args([str(tmp_path / "results")])) == 0
    assert (folder / "report.md").is_file()
    empty = tmp_path / "nothing"
    empty.mkdir()
    with pytest.raises(UserError, match=r"nothing: no runs\.csv.*python -m bench ablate"):
        command.run(parser.parse_args([str(empty)]))
    with pytest.raises(UserError, match="does not exist"):
        command.run(parser.parse_args([str(tmp_path / "absent")]))
    with pytest.raises(UserError, match="no runs.csv"):
        report_study(empty)


def test_markdown_and_latex_writers():
    md = to_markdown(["a | b", "err. %"], [["x", "1.5"], ["y", "—"]])
    assert md.splitlines()[:2] == ["| a \\| b | err. % |", "|---|---:|"]
    assert latex_escape("50% of a_b & c±d") == r"50\% of a\_b \& c$\pm$d"
    tex = to_latex(["x"], [["1"]], "cap_tion", "lab")
    assert r"\caption{cap\_tion}" in tex and r"\label{tab:lab}" in tex


def test_rows_repeating_a_configuration_and_seed_count_once_the_latest(tmp_path, caplog):
    # The older row comes last in the file: "latest" is by finished_at, not by position.
    cells = [
        cell({"activation": "relu"}, 0, top1=50.0, base=True, finished_at="2026-02-01T10:00:00"),
        cell({"activation": "tanh"}, 0, top1=60.0, finished_at="2026-02-01T11:00:00"),
        cell(
            {"activation": "relu"}, 0, top1=90.0, base=True, cell_id="0ld0ld0ld0ld", finished_at="2026-01-01T10:00:00"
        ),
    ]
    folder = write_study(tmp_path / "toy" / "cpu", "toy", ["activation"], cells, history=False)
    with caplog.at_level(logging.WARNING):
        report_study(folder)
    assert any("1 older row(s) of runs.csv repeat a configuration and seed" in r.getMessage() for r in caplog.records)
    table = (folder / "tables" / "cells.md").read_text()
    assert "50.00 (n=1)" in table and "90.00" not in table and "70.00" not in table


@pytest.mark.parametrize(
    "text, line, fields",
    [
        ('study,cell_id,is_baseline,status\ntoy,"abc,1,ok\n', 2, "2 of the header's 4"),  # an open quote
        # torn after every required field: nothing else would notice the missing error column
        ("study,cell_id,status,final_test_top1_err_pct\ntoy,abc,ok,50.0\ntoy,def,ok\n", 3, "3 of the header's 4"),
    ],
)
def test_a_torn_runs_table_is_a_one_line_error(tmp_path, text, line, fields):
    folder = tmp_path / "toy" / "cpu"
    folder.mkdir(parents=True)
    (folder / "runs.csv").write_text(text)
    with pytest.raises(UserError, match=rf"runs\.csv is not a readable table \(line {line} is torn: {fields} fields\)"):
        report_study(folder)


def _damaged(tmp_path, table: str, damage) -> Path:
    folder = write_study(tmp_path / "toy-claims" / "cpu", "toy-claims", list(CLAIM_BASE), claim_cells())
    path = folder / table
    damage(path)
    return folder


def _tear_last_line(path: Path) -> None:
    text = path.read_text()
    path.write_text(text[: text.rstrip("\n").rfind(",")])  # the last row loses its last fields


def _text_in_a_number(path: Path) -> None:
    frame = pd.read_csv(path)
    frame["final_test_top1_err_pct"] = frame["final_test_top1_err_pct"].astype(object)
    frame.loc[1, "final_test_top1_err_pct"] = "abc"
    frame.to_csv(path, index=False)


@pytest.mark.parametrize(
    "table, damage, needle",
    [
        ("history.csv", _tear_last_line, r"history\.csv is not a readable table \(line \d+ is torn"),
        ("history.csv", lambda p: p.write_bytes(bytes(range(256)) * 8), r"history\.csv is not a readable table"),
        ("runs.csv", _text_in_a_number, r"runs\.csv: line 3: final_test_top1_err_pct='abc' is not a number"),
        (
            "runs.csv",
            lambda p: pd.read_csv(p).drop(columns="status").to_csv(p, index=False),
            r"runs\.csv has no status column, so which cells finished is unknown",
        ),
    ],
    ids=["torn history", "history of random bytes", "text in a number column", "no status column"],
)
def test_a_damaged_table_is_a_one_line_error_not_a_quieter_report(tmp_path, table, damage, needle):
    folder = _damaged(tmp_path, table, damage)
    with pytest.raises(UserError, match=needle):
        report_study(folder)
    assert not (folder / "report.md").exists()  # nothing drawn from damaged tables


def test_figure1_lower_bound_holds_over_every_learning_rate_tried(tmp_path):
    # tanh: lr 0.01 has one seed reach at epoch 8 (bound (8 + 13) / 2 = 10.5); lr 0.02 reaches
    # with no seed but ends lower, so it is the one drawn. The ratio's bound must use 10.5, not 13.
    grid = {
        ("relu", "0.01"): ([4, 4], 20.0),
        ("tanh", "0.01"): ([8, None], 30.0),
        ("tanh", "0.02"): ([None, None], 26.0),
    }
    cells = [
        cell({"activation": act, "lr": lr}, seed, curve=fig1_curve(reach, final))
        for (act, lr), (reaches, final) in grid.items()
        for seed, reach in enumerate(reaches)
    ]
    folder = write_study(tmp_path / "f" / "cpu", "toy-fig1", ["activation", "lr"], cells, target=TARGET)
    report_study(folder)
    chosen = pd.read_csv(folder / "tables" / "figure1.csv", dtype={"lr": str}, keep_default_na=False)
    assert chosen.set_index("activation").loc["tanh", "lr"] == "0.02"
    assert (
        f"tanh/relu ≥ {math.floor(10.5 / 4 * 10) / 10:.1f}× (lower bound"
        in (folder / "tables" / "figure1.md").read_text()
    )


# Progress points as the loop logs them near 25%: a linear trend, the first window of each epoch
# DIP below it (the reshuffle), +-NOISE alternately. Over any ten consecutive windows the middles
# average to t - 0.5, one window is dipped and the noise cancels: the trailing-epoch mean at t is
# start - slope * (t - 0.5) - DIP / 10, and it crosses 25% at 0.5 + (start - DIP / 10 - 25) / slope.
DIP, NOISE = 0.9, 0.2


def dipped_progress(start: float, slope: float, epochs: int) -> list[dict]:
    points = []
    for e in range(epochs):
        for j in range(10):
            t = e + (j + 1) / 10
            y = start - slope * (t - 0.05) + (NOISE if j % 2 == 0 else -NOISE) - (DIP if j == 0 else 0)
            points.append({"step": (10 * e + j + 1) * 39, "epoch": t, "train_running_err_pct": y})
    return points


def trailing_crossing(start: float, slope: float) -> float:
    return 0.5 + (start - DIP / 10 - 25.0) / slope


# activation -> per seed (trend start, slope in pp per epoch, epochs run)
DIPPED = {"relu": [(40.0, 3.0, 7), (40.3, 3.0, 7)], "tanh": [(30.0, 0.3, 18), (30.3, 0.3, 19)]}


def dipped_study(folder: Path, tanh_epochs: int | None = None) -> Path:
    """A Figure 1 study swept with progress points. runs.csv's epochs_to_target is the single-window
    crossing (as older rows were); `tanh_epochs`: the tanh runs stopped there (by the old rule)."""
    cells, progress = [], {}
    for act, seeds in DIPPED.items():
        for seed, (start, slope, ran) in enumerate(seeds):
            ran = tanh_epochs if act == "tanh" and tanh_epochs else ran
            curve = [(start - slope * (e - 0.5) - DIP / 10, 30.0) for e in range(1, ran + 1)]
            cells.append(cell({"activation": act, "lr": "0.02"}, seed, curve=curve, cfg_epochs=40))
            progress[(act, seed)] = dipped_progress(start, slope, ran)
    target = {"metric": "train_running_err_pct", "value": 25.0}
    write_study(folder, "toy-fig1", ["activation", "lr"], cells, target=target)
    runs = pd.read_csv(folder / "runs.csv", dtype={"cell_id": str, "lr": str})
    runs["epochs_to_target"] = runs["epochs_to_target"].astype(float)
    rows = []
    for i, r in runs.iterrows():
        points = progress[(r["activation"], r["seed"])]
        runs.loc[i, "epochs_to_target"] = bench_crossing(points, "train_running_err_pct", 25.0, at="epoch")
        rows += [
            {"cell_id": r["cell_id"], "activation": r["activation"], "lr": "0.02", "seed": r["seed"], **p}
            for p in points
        ]
    runs.to_csv(folder / "runs.csv", index=False)
    pd.DataFrame(rows).to_csv(folder / "progress.csv", index=False)
    return folder


def test_figure1_recomputes_epochs_on_the_trailing_epoch_mean_from_progress(tmp_path):
    folder = dipped_study(tmp_path / "f" / "cpu")
    report = report_study(folder).read_text()
    chosen = pd.read_csv(folder / "tables" / "figure1.csv", dtype={"lr": str}, keep_default_na=False)
    got = chosen.set_index("activation")
    relu = [trailing_crossing(a, s) for a, s, _ in DIPPED["relu"]]
    tanh = [trailing_crossing(a, s) for a, s, _ in DIPPED["tanh"]]
    assert tanh == pytest.approx([16.8667, 17.8667], abs=1e-4)  # runs.csv says about 15.1 and 16.1
    assert got.loc["relu", "epochs_mean"] == pytest.approx(statistics.mean(relu))
    assert got.loc["tanh", "epochs_mean"] == pytest.approx(statistics.mean(tanh))
    assert f"tanh/relu = {statistics.mean(tanh) / statistics.mean(relu):.1f}×" in report
    row = claims_by_subject(folder)[next(c.subject for c in CLAIMS if c.kind == "speedup")]
    logs = [math.log(t / r) for r, t in zip(relu, tanh)]
    assert row["effect"] == pytest.approx(math.exp(statistics.mean(logs))) and row["n"] == 2
    assert "below the paper's" in row["note"] or "inside the interval" in row["note"]  # x6 placed: all reached
    assert "4 of 4 cells were swept under the single-window rule" in report
    assert (got["censored"] == 0).all() and "unknown:" not in (folder / "tables" / "figure1.md").read_text()


def test_figure1_cells_stopped_before_the_trailing_mean_crossed_are_censored(tmp_path):
    # the old rule (one window, stop_after = 0) stopped both tanh runs at the end of epoch 16
    folder = dipped_study(tmp_path / "f" / "cpu", tanh_epochs=16)
    report = report_study(folder).read_text()
    chosen = pd.read_csv(folder / "tables" / "figure1.csv", dtype={"lr": str}, keep_default_na=False)
    tanh = chosen.set_index("activation").loc["tanh"]
    assert not tanh["reached"] and tanh["censored"] == 2 and tanh["epochs_per_seed"] == "> 16, > 16"
    md = (folder / "tables" / "figure1.md").read_text()
    assert "unknown: 2 of 2 seeds stopped before 25% (seeds: > 16, > 16)" in md
    assert "tanh/relu ≥" in md  # the bound 16 over ReLU's measured mean, never a point estimate
    grid = (folder / "tables" / "figure1_lr_grid.md").read_text()
    assert "| tanh | 0.02 | 0 / 2 (2 censored) | > 16, > 16 |" in grid
    assert "2 of 4 cells were stopped before their trailing-epoch mean reached the target" in report
    row = claims_by_subject(folder)[next(c.subject for c in CLAIMS if c.kind == "speedup")]
    assert row["verdict"] == "not resolvable" and row["n"] == 0
    assert row["note"].startswith("censored: 2 cell(s)") and "×6" not in row["note"]


def _damage_progress(folder: Path, how: str) -> None:
    path = folder / "progress.csv"
    if how == "torn":  # the last line cut in half, no line end
        text = path.read_text().rstrip("\n")
        path.write_text(text[: len(text) - len(text.rsplit("\n", 1)[1]) // 2])
    elif how == "random bytes":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    else:  # text in a number column
        prog = pd.read_csv(path, dtype={"cell_id": str})
        prog[how] = prog[how].astype(object)
        prog.loc[3, how] = "abc"
        prog.to_csv(path, index=False)


@pytest.mark.parametrize(
    ("how", "needle"),
    [
        ("torn", "is torn"),
        ("random bytes", "UnicodeDecodeError"),
        ("train_running_err_pct", "line 5: train_running_err_pct='abc' is not a number"),
        ("step", "line 5: step='abc' is not a number"),
    ],
)
def test_a_damaged_progress_table_is_refused_as_a_damaged_history_is(tmp_path, capsys, how, needle):
    """Figure 1's epochs to the target come from progress.csv: a torn, garbled or edited one is one
    line and exit 2, never a report whose Figure 1 quietly changes or goes."""
    from bench.cli import main

    folder = dipped_study(tmp_path / "f" / "cpu")
    _damage_progress(folder, how)
    assert main(["report", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and "progress.csv" in err and needle in err, err
    assert not (folder / "report.md").exists()


def test_progress_rows_of_no_cell_are_left_out_and_said(tmp_path, caplog):
    """Rows of no cell (an interrupted merge) are left out with a warning, as history.csv's are;
    a finished cell left with no progress points is said too, since its epochs to the target then
    come from whole epochs."""
    folder = dipped_study(tmp_path / "f" / "cpu")
    prog = pd.read_csv(folder / "progress.csv", dtype={"cell_id": str})
    lost = prog["cell_id"].iloc[0]
    prog.loc[prog["cell_id"] == lost, "cell_id"] = "ffffffffffff"
    prog.to_csv(folder / "progress.csv", index=False)
    with caplog.at_level(logging.WARNING):
        report = report_study(folder).read_text()
    rows = int((prog["cell_id"] == "ffffffffffff").sum())
    assert f"{rows} progress.csv rows belong to no cell of runs.csv (an interrupted cell); left out" in report
    assert "1 finished cell(s) have no rows in progress.csv; their epochs to the target are whole epochs" in report
    assert "belong to no cell" in caplog.text


def test_figure1_markers_lie_on_the_drawn_curves(tmp_path):
    from bench.report.kinds import figure1 as f1

    folder = dipped_study(tmp_path / "f" / "cpu")
    sd = load(folder)
    choice = f1.fastest(sd)
    chosen = choice.chosen
    fig = f1.figure1(sd, chosen, f1.speedups(chosen), choice.curves, choice.cells)
    lines = fig.axes[0].get_lines()
    drawn = [ln for ln in lines if len(ln.get_xdata()) > 2]  # not the target's dotted line
    dots = [ln for ln in lines if ln.get_marker() == "o"]
    assert len(drawn) == 4 and len(dots) == 4  # one line and one dot per seed
    for dot in dots:
        x, y = float(dot.get_xdata()[0]), float(dot.get_ydata()[0])
        assert y == pytest.approx(25.0)
        assert any(
            ln.get_color() == dot.get_color()
            and ln.get_xdata()[0] <= x <= ln.get_xdata()[-1]
            and float(np.interp(x, ln.get_xdata(), ln.get_ydata())) == pytest.approx(y)
            for ln in drawn
        )


# --- kinds of study, colours, and what the report imports --------------------------------------


def test_a_folder_with_no_recorded_design_and_no_study_file_is_one_warning_not_a_guess(tmp_path, caplog):
    # opt and bs sit between cell_id and is_baseline, where the sweep writes factors; without study.json
    # or a study file nothing says they are factors, and the report does not guess from their position
    cells = [
        cell({"opt": opt, "bs": bs}, 0, top1=30.0 + i, base=i == 0)
        for i, (opt, bs) in enumerate([("sgd", "64"), ("sgd", "128"), ("adam", "64"), ("adam", "128")])
    ]
    folder = write_study(tmp_path / "toy-grid" / "cpu", "toy-grid", ["opt", "bs"], cells, recorded=False)
    with caplog.at_level(logging.WARNING):
        report = report_study(folder).read_text()
    warned = [r.getMessage() for r in caplog.records if f"no {STUDY_JSON} and no study file" in r.getMessage()]
    assert len(warned) == 1 and "python -m bench ablate --study FILE --profile cpu" in warned[0]
    assert warned[0].split(": ", 1)[1] in report
    sd = load(folder)
    assert (sd.factors, sd.baseline) == ([], None) and kind_for(sd) is KINDS[-1]
    assert KINDS[-1].__name__.endswith(".generic") and not (folder / "figures").exists()


def test_factors_are_the_recorded_ones_wherever_their_columns_are(tmp_path):
    """The design says which columns are factors: not their place between cell_id and is_baseline."""
    cells = [{**c, "levels": {k: c["levels"][k] for k in CLAIM_BASE}} for c in claim_cells()]
    folder = write_study(tmp_path / "toy-claims" / "cpu", "toy-claims", list(CLAIM_BASE), cells)
    runs = pd.read_csv(folder / "runs.csv", dtype=str, keep_default_na=False)
    moved = ["study", "cell_id", "cfg_lr", "is_baseline"] + [c for c in runs if c not in ("study", "cell_id")]
    runs[list(dict.fromkeys(moved))].to_csv(folder / "runs.csv", index=False)
    sd = load(folder)
    assert sd.factors == list(CLAIM_BASE) and sd.baseline == CLAIM_BASE
    assert sd.levels["augment"] == ["crop+flip", "crop+flip+pca", "none"]  # the recorded order
    report_study(folder)
    rows = claims_by_subject(folder)
    assert rows["local response normalisation removed"]["verdict"] == "agrees"
    assert rows["no dropout in the first two FC layers"]["n"] == 3


def test_the_recorded_design_is_the_study_files_at_its_profile(tmp_path):
    """study.json round-trips the study file's factors, its profile's levels in order and its baselines."""
    toml = tmp_path / "toy-precision.toml"
    toml.write_text(
        '[study]\nname = "toy-precision"\ndesign = "factorial"\n'
        '[factors.precision]\ndescription = "autocast or not"\nkey = "dtype"\nlevels = ["fp32", "bf16"]\n'
        '[factors.lr]\nkey = "lr"\nlevels = [0.0125, 0.025, 0.05]\n'
        "[profiles.smoke]\nonly = { lr = [0.05, 0.025] }\n"
    )
    design = StudyFile.read(toml).design_at("smoke")
    ResultsFolder(tmp_path).record_design(design)
    again = Design.read(tmp_path / STUDY_JSON)
    assert again == design and again.factors == ["precision", "lr"]
    assert again.levels == {"precision": ["fp32", "bf16"], "lr": ["0.025", "0.05"]}  # the study's order
    assert again.baseline == {"precision": "fp32", "lr": "0.05"}  # the first level `only` lists
    assert again.descriptions["precision"] == "autocast or not"


@pytest.mark.parametrize(
    "text, needle",
    [
        ("{", "unreadable"),
        ('{"factors": {"norm": ["lrn"]}}', "no list of factors"),
        ('{"factors": [{"name": "norm", "levels": ["lrn", "none"], "baseline": "off"}]}', "baseline 'off'"),
    ],
)
def test_a_damaged_study_json_is_a_one_line_error(tmp_path, text, needle):
    folder = write_study(tmp_path / "toy" / "cpu", "toy", ["norm"], [cell({"norm": "lrn"}, 0, top1=30.0, base=True)])
    (folder / STUDY_JSON).write_text(text)
    with pytest.raises(UserError, match=rf"study\.json: .*{re.escape(needle)}.*move it aside"):
        report_study(folder)


def test_colours_follow_the_study_level_order_and_an_eleventh_level_gets_its_own(tmp_path):
    names = [f"net{i:02d}" for i in range(11)]  # more than the colorblind palette's ten colours
    cells = [cell({"architecture": n}, 0, top1=20.0 + i, base=n == "net03") for i, n in enumerate(names)]
    sd = load(write_study(tmp_path / "toy-arch" / "cpu", "toy-arch", ["architecture"], cells))
    colors = level_colors(sd)
    assert len({colors[("architecture", n)] for n in names}) == 11
    assert colors[("architecture", "net03")] == colors[(None, None)]  # the baseline: the first colour
    ten = palette(10)  # up to ten levels: the colorblind palette, baseline blue, the others in the study's order
    sd = load(write_study(tmp_path / "toy-arch2" / "cpu", "toy-arch2", ["architecture"], cells[:10]))
    assert [level_colors(sd)[("architecture", n)] for n in names[3:4] + names[:3] + names[4:10]] == ten
    assert ten[0] == pytest.approx((0.0039, 0.451, 0.698), abs=1e-3)  # seaborn colorblind blue
    assert ten[-1] == pytest.approx((0.925, 0.882, 0.2), abs=1e-3)  # its yellow, the hardest to see, last


def test_the_report_imports_no_torch(tmp_path):
    cells = [cell({"activation": "relu"}, 0, top1=30.0, base=True), cell({"activation": "tanh"}, 0, top1=32.0)]
    folder = write_study(tmp_path / "toy" / "cpu", "toy", ["activation"], cells)
    code = (
        "import argparse, sys\n"
        "from bench.report import command\n"
        "parser = argparse.ArgumentParser()\n"
        "command.add_arguments(parser)\n"
        f"assert command.run(parser.parse_args([{str(folder)!r}])) == 0\n"
        "assert 'torch' not in sys.modules, 'the report imported torch'\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (folder / "figures" / "ablation_effects.png").is_file()


def test_a_study_file_that_no_longer_validates_is_one_warning_not_a_failure(tmp_path, caplog):
    toml = tmp_path / "toy-ablation.toml"
    toml.write_text(STUDY_TOML.replace("[factors.activation]", "[factors.activation]\ncolour = 1"))
    folder = write_study(
        tmp_path / "toy-ablation" / "cpu",
        "toy-ablation",
        list(BASE)[:4],
        [{**c, "levels": {k: c["levels"][k] for k in list(BASE)[:4]}} for c in ablation_cells()[:2]],
        study_file=toml,
    )
    with caplog.at_level(logging.WARNING):
        report = report_study(folder).read_text()
    warned = [r.getMessage() for r in caplog.records if "that study file is not used" in r.getMessage()]
    assert len(warned) == 1 and str(toml) in warned[0] and "colour" in warned[0]
    assert "a toy one-at-a-time study" not in report and "that study file is not used" in report


# --- verdicts, overfitting and selection ---------------------------------------------------------

CLAIM_BASE = {"norm": "lrn", "pool": "overlap", "augment": "crop+flip", "dropout": "0.5"}
# configuration -> per seed (test top-1 error, clean training error), %
CLAIM_CELLS = {
    ("baseline", ""): [(30.0, 20.0), (31.0, 20.5), (32.0, 22.5)],  # gap 10, 10.5, 9.5
    ("norm", "none"): [(32.0, 25.0), (33.5, 26.0), (34.2, 27.0)],  # +2, +2.5, +2.2: the paper's side
    ("augment", "crop+flip+pca"): [(31.5, 21.0), (32.2, 21.0), (33.9, 23.0)],  # +1.5, +1.2, +1.9: not its side
    ("pool", "nonoverlap"): [(31.0, 8.0)],  # one seed (that fits its training set)
    ("dropout", "0.0"): [(33.0, 5.0), (34.0, 6.0), (35.0, 6.5)],  # gap 28, 28, 28.5: wider, and above 0
    ("augment", "none"): [(13.0, 9.0), (13.0, 9.5), (12.0, 9.0)],  # gap 4, 3.5, 3: narrower (and it fits)
}


def claim_cells() -> list[dict]:
    return [
        cell(
            CLAIM_BASE if f == "baseline" else {**CLAIM_BASE, f: lv},
            seed,
            top1=top1,
            base=f == "baseline",
            final_train_clean_top1_err_pct=clean,
        )
        for (f, lv), values in CLAIM_CELLS.items()
        for seed, (top1, clean) in enumerate(values)
    ]


def claims_by_subject(folder: Path) -> dict:
    table = pd.read_csv(folder / "tables" / "paper_claims.csv", keep_default_na=False, na_values=[""])
    return {r["claim"]: r for _, r in table.iterrows()}


def paired_interval(a: list[float], b: list[float]) -> tuple[float, float, float]:
    d = [y - x for x, y in zip(a, b)]
    m, half = statistics.mean(d), T975[len(d) - 1] * statistics.stdev(d) / math.sqrt(len(d))
    return m, m - half, m + half


@pytest.fixture(scope="module")
def claims_study(tmp_path_factory) -> Path:
    folder = write_study(
        tmp_path_factory.mktemp("claims") / "toy-claims" / "cpu", "toy-claims", list(CLAIM_BASE), claim_cells()
    )
    report_study(folder)
    return folder


def test_claims_table_verdicts_from_paired_seeds(claims_study):
    rows = claims_by_subject(claims_study)
    top1 = {k: [t for t, _ in v] for k, v in CLAIM_CELLS.items()}
    gap = {k: [t - c for t, c in v] for k, v in CLAIM_CELLS.items()}
    base = ("baseline", "")

    d, lo, hi = paired_interval(top1[base], top1[("norm", "none")])
    r = rows["local response normalisation removed"]  # the CIFAR-10 LRN claim is the CIFAR net's alone
    assert not any("CIFAR-10 net" in subject for subject in rows)
    assert (r["effect"], r["lo"], r["hi"]) == (pytest.approx(d), pytest.approx(lo), pytest.approx(hi))
    assert lo > 0 and (r["verdict"], r["n"], r["method"]) == ("agrees", 3, "paired") and "LRN active" in r["note"]

    d, lo, hi = paired_interval(top1[base], top1[("augment", "crop+flip+pca")])
    r = rows["PCA colour lighting added to crops and mirrors"]  # the paper expects lower error
    assert lo > 0 and r["lo"] == pytest.approx(lo) and r["verdict"] == "disagrees"

    d, lo, hi = paired_interval(gap[base], gap[("dropout", "0.0")])
    r = rows["no dropout in the first two FC layers"]
    assert lo > 0 and r["effect"] == pytest.approx(d) and r["verdict"] == "agrees"
    d, lo, hi = paired_interval(gap[base], gap[("augment", "none")])
    assert hi < 0 and rows["no crops or mirrors"]["verdict"] == "disagrees"  # the gap narrows

    for subject in (
        "non-overlapping 2x2/2 instead of overlapping 3x3/2 pooling",
        "non-overlapping 2x2/2 instead of overlapping 3x3/2 pooling: overfitting",
    ):
        r = rows[subject]  # one seed: a number, never a direction
        assert (r["n"], r["verdict"]) == (1, "not resolvable") and math.isnan(r["lo"])
        assert "fewer than two seeds" in r["note"]

    report = (claims_study / "report.md").read_text()
    assert (
        VERDICT_RULE in report
        and "| measured effect [95% interval] | half-width; detectable (80% power) | n |" in report
    )
    assert PIPELINE_CHECK in report.splitlines()[2]  # the cpu profile: said at the top
    for word in ("same direction", "opposite direction", "larger gap", "ReLU faster"):
        assert word not in report


def test_overfitting_gap_uses_the_clean_training_error(claims_study):
    gaps = pd.read_csv(claims_study / "tables" / "overfitting.csv", keep_default_na=False, na_values=[""])
    r = gaps.set_index("config").loc["dropout = 0.0"]
    values = CLAIM_CELLS[("dropout", "0.0")]
    assert r["gap_mean"] == pytest.approx(statistics.mean(t - c for t, c in values))  # not test − running (5 pp)
    assert r["gap_n"] == 3 and r["diff_method"] == "paired"
    assert (claims_study / "figures" / "overfitting.png").stat().st_size > 5000
    md = (claims_study / "tables" / "overfitting.md").read_text()
    assert "clean train" in md and "| paired, 3 seeds |" in md


def test_a_factorial_studys_crossed_arm_is_an_overfitting_row(tmp_path):
    """The unregularised arm (no dropout and no crops) changes two factors: its own row, and panel."""
    crossed = [(40.0, 1.0), (41.0, 2.0), (42.0, 1.5)]
    levels = {**CLAIM_BASE, "dropout": "0.0", "augment": "none"}
    cells = claim_cells() + [
        cell(levels, seed, top1=t, final_train_clean_top1_err_pct=c) for seed, (t, c) in enumerate(crossed)
    ]
    folder = write_study(tmp_path / "toy-claims" / "cpu", "toy-claims", list(CLAIM_BASE), cells)
    report_study(folder)
    gaps = pd.read_csv(folder / "tables" / "overfitting.csv", keep_default_na=False, na_values=[""])
    r = gaps.set_index("config").loc["augment = none, dropout = 0.0"]
    base = [t - c for t, c in CLAIM_CELLS[("baseline", "")]]
    d, lo, hi = paired_interval(base, [t - c for t, c in crossed])
    assert r["gap_mean"] == pytest.approx(statistics.mean(t - c for t, c in crossed))
    assert (r["diff"], r["diff_lo"], r["diff_hi"]) == (pytest.approx(d), pytest.approx(lo), pytest.approx(hi))
    assert gaps["config"].tolist()[-1] == "augment = none, dropout = 0.0"  # after the one-factor rows
    assert (folder / "figures" / "overfitting.png").stat().st_size > 5000


def test_older_results_map_running_error_and_refuse_overfitting(tmp_path, caplog):
    folder = write_study(
        tmp_path / "toy-claims" / "cpu",
        "toy-claims",
        list(CLAIM_BASE),
        [{**c, "extra": {}} for c in claim_cells()],
        old=True,
    )
    sd = load(folder)
    assert "final_train_running_err_pct" in sd.runs and "final_train_err_pct" not in sd.runs
    assert "best_test_top1_err_pct" not in sd.runs  # selecting on it would select on test data
    assert "train_running_err_pct" in sd.history and "train_err_pct" not in sd.history
    with caplog.at_level(logging.WARNING):
        report = report_study(folder).read_text()
    assert "no clean training error recorded (older run): overfitting not resolvable" in report
    assert not (folder / "figures" / "overfitting.png").exists()
    assert not (folder / "tables" / "overfitting.csv").exists()
    rows = claims_by_subject(folder)
    for subject in ("no dropout in the first two FC layers", "no crops or mirrors"):
        assert rows[subject]["verdict"] == "not resolvable" and rows[subject]["n"] == 0
    lrn = rows["local response normalisation removed"]  # test error is still there, LRN activity is not
    assert math.isfinite(lrn["effect"]) and lrn["verdict"] == "not tested" and "not recorded" in lrn["note"]
    for path in (folder / "tables").glob("*.csv"):
        assert "best_test" not in path.read_text(), path


def test_figure1_claim_is_paired_over_seeds_per_setup(fig1):
    rows = claims_by_subject(fig1)
    subject = next(c.subject for c in CLAIMS if c.kind == "speedup")
    modern, paper = rows[f"setup modern: {subject}"], rows[f"setup paper: {subject}"]
    logs = [math.log(t / r) for r, t in zip([2, 3], [9, 11])]  # tanh / ReLU epochs per seed, chosen rates
    m, half = statistics.mean(logs), T975[1] * statistics.stdev(logs) / math.sqrt(2)
    assert (modern["effect"], modern["lo"], modern["hi"]) == (
        pytest.approx(math.exp(m)),
        pytest.approx(math.exp(m - half)),
        pytest.approx(math.exp(m + half)),
    )
    assert m - half > 0 and (modern["verdict"], modern["n"], modern["method"]) == ("agrees", 2, "paired")
    assert paper["verdict"] == "not resolvable" and "did not reach the target" in paper["note"]
    assert "lower bound" in paper["note"]


def test_learning_rate_at_the_edge_of_its_grid_is_flagged(tmp_path, caplog):
    grid = {
        ("relu", "0.01"): [5, 5],
        ("relu", "0.02"): [3, 3],
        ("relu", "0.05"): [4, 4],  # fastest inside
        ("tanh", "0.01"): [9, 9],
        ("tanh", "0.02"): [8, 8],
        ("tanh", "0.05"): [6, 6],
    }  # fastest: the largest
    cells = [
        cell({"activation": act, "lr": lr}, seed, curve=fig1_curve(reach, 20.0))
        for (act, lr), reaches in grid.items()
        for seed, reach in enumerate(reaches)
    ]
    folder = write_study(tmp_path / "f" / "cpu", "toy-fig1", ["activation", "lr"], cells, target=TARGET)
    with caplog.at_level(logging.WARNING):
        report = report_study(folder).read_text()
    table = pd.read_csv(folder / "tables" / "figure1_lr_grid.csv", dtype={"lr": str}, keep_default_na=False)
    flagged = {(r["activation"], r["lr"]): (bool(r["chosen"]), r["edge"]) for _, r in table.iterrows()}
    assert flagged[("relu", "0.02")] == (True, "") and flagged[("tanh", "0.05")] == (True, "largest")
    assert sum(c for c, _ in flagged.values()) == 2 and [e for _, e in flagged.values() if e] == ["largest"]
    assert "lr 0.05 is the largest tried (0.01, 0.02, 0.05): the fastest rate may lie outside the grid" in report
    assert "lr 0.02 is the" not in report
    assert "| largest tried |" in (folder / "tables" / "figure1_lr_grid.md").read_text()
    assert "on training error (what the paper plots)" in report


def test_a_read_only_results_folder_is_one_line_before_anything_is_read(tmp_path, monkeypatch, capsys):
    """A results folder on a read-only file system (root too cannot write there): exit 2, one line, no traceback."""
    import tempfile

    from bench.cli import main

    folder = write_study(tmp_path / "toy" / "cpu", "toy", ["activation"], [cell({"activation": "relu"}, 0, top1=30.0)])
    before = sorted(p.name for p in folder.rglob("*"))

    def read_only(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    assert main(["report", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    assert f"{folder}: cannot write the report there (Read-only file system)" in err
    assert sorted(p.name for p in folder.rglob("*")) == before


def test_the_wall_time_spans_first_start_to_last_finish_beside_the_cells_own_seconds():
    from bench.report.markdown import _wall_time

    # two cells side by side (100 s each, the second starting 10 s later), then one of 50 s
    runs = pd.DataFrame(
        {
            "finished_at": ["2026-01-01T00:01:40", "2026-01-01T00:01:50", "2026-01-01T00:02:40"],
            "wall_seconds": [100.0, 100.0, 50.0],
        }
    )
    ((what, text),) = _wall_time(runs)
    assert what == "wall time"
    assert text.startswith("160 s from the first cell's start") and text.endswith("the cells' own: 250 s")
    assert _wall_time(runs.drop(columns="wall_seconds")) == []
