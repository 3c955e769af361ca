"""`python -m bench plan`: how many seeds a study needs before it runs, from a pilot's spread.

For each claim the study re-measures, the pilot's per-seed differences give the sd of a paired
difference; the plan is the smallest n whose 95% half-width t(0.975, n − 1) · sd / √n reaches the
target: half the paper's effect or 1.5 pp, whichever is larger (a claim with a sign only: 1.5 pp;
Figure 1's ratio: half of ln 6 on the log scale). The study runs every arm at the largest n its
claims need; the CPU time is that n times the arms times the pilot's seconds per cell, plus the
tuning grid. Where that is more than the budget, the plan says so, gives the n that fits, and what
that n can detect. A profile declares its n from such a plan before any confirming cell runs.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bench.errors import UserError
from bench.report.claims import claims_table
from bench.report.load import StudyData, load
from bench.report.paper import CLAIMS
from bench.stats import CONFIDENCE, t_quantile
from bench.studies import load_study

MIN_HALF_WIDTH = 1.5  # pp: below this, a CPU-sized study cannot go for every claim
POWER = 0.80
MAX_N = 200  # seeds; a plan above this is reported as out of reach


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--study", required=True, help="a shipped study's name or a study file (.toml)")
    p.add_argument(
        "--pilot", required=True, type=Path, help="a results/<study>/<profile> folder to take the spread from"
    )
    p.add_argument("--profile", default="cpu-full", help="the profile to plan (default cpu-full)")
    p.add_argument("--budget-hours", type=float, default=2.0, help="CPU time the cells may take (default 2)")
    p.add_argument(
        "--seconds-per-cell",
        type=float,
        default=None,
        help="seconds per cell at the planned profile, where it differs from the pilot's (default: the pilot's median)",
    )


@dataclass(frozen=True)
class ClaimPlan:
    claim: str
    sd: float  # of a paired difference (pp, or ln ratio), from the pilot
    pilot_n: int
    target: float  # the half-width aimed at, same units
    n: int  # seeds for the target (MAX_N + 1: out of reach)

    def half_width(self, n: int) -> float:
        return t_quantile(0.5 + CONFIDENCE / 2, n - 1) * self.sd / math.sqrt(n) if n >= 2 else math.inf

    def detectable(self, n: int) -> float:
        if n < 2:
            return math.inf
        return (t_quantile(0.5 + CONFIDENCE / 2, n - 1) + t_quantile(POWER, n - 1)) * self.sd / math.sqrt(n)


def seeds_for(sd: float, target: float) -> int:
    """The smallest n >= 2 with t(0.975, n - 1) * sd / sqrt(n) <= target (MAX_N + 1 where none up to MAX_N)."""
    if not (sd >= 0 and target > 0):
        raise ValueError(f"sd={sd} and target={target} must be a spread and a positive half-width")
    for n in range(2, MAX_N + 1):
        if t_quantile(0.5 + CONFIDENCE / 2, n - 1) * sd / math.sqrt(n) <= target:
            return n
    return MAX_N + 1


def sd_of(lo: float, hi: float, n: int) -> float:
    """The sd of the per-seed differences behind a paired 95% t-interval [lo, hi] over n seeds."""
    return (hi - lo) / 2 * math.sqrt(n) / t_quantile(0.5 + CONFIDENCE / 2, n - 1)


def target_for(paper_effect: float | None, kind: str) -> float:
    if kind == "speedup":
        return abs(paper_effect) / 2
    return max(abs(paper_effect) / 2, MIN_HALF_WIDTH) if paper_effect is not None else MIN_HALF_WIDTH


def claim_plans(sd: StudyData) -> list[ClaimPlan]:
    """One plan per claim the pilot re-measures with a paired interval (its tuning seeds left out)."""
    rows = pilot_rows(sd)
    plans = []
    for r in rows:
        claim = next(c for c in CLAIMS if r["claim"].endswith(c.subject))  # Figure 1's rows name their setup
        lo, hi = r["lo"], r["hi"]
        if r["method"] != "paired" or r["n"] < 2 or not (math.isfinite(lo) and math.isfinite(hi)):
            continue
        if claim.kind == "speedup":
            lo, hi = math.log(lo), math.log(hi)
        spread = sd_of(lo, hi, int(r["n"]))
        target = target_for(claim.paper_effect, claim.kind)
        plans.append(ClaimPlan(r["claim"], spread, int(r["n"]), target, seeds_for(spread, target)))
    return plans


def pilot_rows(sd: StudyData) -> list[dict]:
    """The claims rows of the pilot over every seed but its tuning seeds (the plan wants the spread)."""
    from bench.report.kinds import figure1  # here: its plotting imports only for a Figure 1 pilot

    if figure1.applies(sd):
        choice = figure1.fastest(sd)  # bench.choose's rule, as the report and the sweep apply it
        return figure1.speedup_claims(choice.cells, choice.chosen) if len(choice.chosen) else []
    if sd.baseline is None:
        return []
    return claims_table(sd.runs, sd.baseline, only=sd.only, tuning_seeds=sd.tuning_seeds)


def seconds_per_cell(sd: StudyData) -> float:
    wall = pd.to_numeric(sd.runs.get("wall_seconds", pd.Series(dtype=float)), errors="coerce").dropna()
    if not len(wall):
        raise UserError(f"{sd.folder}: no wall_seconds in runs.csv; give --seconds-per-cell")
    return float(wall.median())


def plan_table(
    plans: list[ClaimPlan], arms: int, grid_cells: int, seconds: float, budget_s: float
) -> tuple[pd.DataFrame, int, str]:
    """Per claim: sd, target, n for it, and at the n the study declares (the largest needed, or what the
    budget fits) the half-width and the detectable effect; with the study's n and a sentence on cost."""
    tuning_s = grid_cells * seconds
    need = max((p.n for p in plans), default=2)
    cost = tuning_s + need * arms * seconds
    fits = max(2, int((budget_s - tuning_s) // (arms * seconds))) if arms else need
    n = min(need, fits, MAX_N)
    hours = lambda s: f"{s / 3600:.1f} h"  # noqa: E731 - a local formatter
    if need <= fits:
        why = f"n = {n} for every claim's target: {hours(cost)} of cells ({hours(tuning_s)} of them tuning)"
    else:
        why = (
            f"the targets need n = {need if need <= MAX_N else f'> {MAX_N}'} ({hours(cost)} of cells), over the "
            f"{hours(budget_s)} budget; n = {n} fits ({hours(tuning_s + n * arms * seconds)}), and the rows show "
            "what it can detect"
        )
    rows = [
        {
            "claim": p.claim,
            "pilot n": p.pilot_n,
            "sd": p.sd,
            "target half-width": p.target,
            "n for target": p.n if p.n <= MAX_N else f"> {MAX_N}",
            "declared n": n,
            "half-width at n": p.half_width(n),
            "detectable at n": p.detectable(n),
        }
        for p in plans
    ]
    return pd.DataFrame(rows), n, why


def run(args: argparse.Namespace) -> int:
    study = load_study(args.study)
    study.profile(args.profile)  # a UserError naming the profiles where it has none
    if args.budget_hours <= 0 or (args.seconds_per_cell is not None and args.seconds_per_cell <= 0):
        raise UserError("--budget-hours and --seconds-per-cell must be positive")
    sd = load(args.pilot)
    if sd.study != study.name:
        raise UserError(f"{args.pilot} holds study {sd.study!r}, not {study.name!r}; pass a pilot of the same study")
    plans = claim_plans(sd)
    if not plans:
        raise UserError(f"{args.pilot}: no claim with a paired interval over two or more seeds to take a spread from")
    arms = len(study.combinations(args.profile))
    grid_cells = len(study.lr_grid(args.profile)) * arms * len(study.tuning_seeds(args.profile))
    seconds = args.seconds_per_cell or seconds_per_cell(sd)
    table, n, why = plan_table(plans, arms, grid_cells, seconds, args.budget_hours * 3600)
    print(f"# plan: {study.name} at {args.profile}, from {args.pilot} ({seconds:.0f} s per cell, {arms} arms)")
    print(table.to_markdown(index=False, floatfmt=".2f") if _has_tabulate() else table.to_string(index=False))
    print(f"\n{why}. Units: pp of top-1 error (gap claims: of the gap); Figure 1: ln of the epochs ratio.")
    return 0


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401 - pandas' to_markdown needs it
    except ImportError:
        return False
    return True
