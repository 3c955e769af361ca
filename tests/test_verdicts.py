"""Verdicts that weigh the paper's effect, the power plan, tuning seeds apart, the claims'
preconditions and the provenance flag, each on hand-made tables."""

from __future__ import annotations

import math
import subprocess

import pandas as pd
import pytest

from bench.report import provenance
from bench.report.claims import EARLY_TRAINING, NOT_TESTED, assess, assess_speedup, still_improving
from bench.report.plan import ClaimPlan, plan_table, sd_of, seeds_for
from bench.report.verdict import AGREES, DISAGREES, NOT_RESOLVABLE, SMALLER, detectable, verdict, where_paper_lies
from bench.stats import PAIRED, Difference, paired, t_quantile
from bench.studies import StudyFile


def _d(lo: float, hi: float, n: int = 4) -> Difference:
    return Difference((lo + hi) / 2, lo, hi, n - 1.0, PAIRED, n, n, n)


# --- verdicts against 0 and the paper's value ---------------------------------------------------


@pytest.mark.parametrize(
    ("lo", "hi", "expected", "where"),
    [
        (0.5, 2.5, AGREES, "inside"),  # excludes 0 on the paper's side, contains +1.4
        (2.0, 3.0, AGREES, "above"),  # agrees in sign, larger than the paper's
        (0.2, 1.0, AGREES, "below"),  # agrees in sign, smaller than the paper's
        (-3.0, -1.0, DISAGREES, "below"),
        (-6.06, 0.23, SMALLER, "below"),  # the committed "LRN removed": rules out +1.4, not the sign
        (-1.0, 2.0, NOT_RESOLVABLE, "inside"),  # contains both 0 and +1.4
    ],
)
def test_verdict_weighs_the_paper_effect(lo, hi, expected, where):
    d = _d(lo, hi)
    assert verdict(d, +1, 1.4) == expected
    assert where in where_paper_lies(d, 1.4)


def test_verdict_on_the_other_side_and_without_a_number():
    # PCA lighting: the paper's effect is -1.0 (error down)
    assert verdict(_d(-0.4, 0.6), -1, -1.0) == SMALLER
    assert verdict(_d(-2.0, -0.5), -1, -1.0) == AGREES
    # a sign-only claim never reads "smaller"
    assert verdict(_d(-0.4, 0.6), +1) == NOT_RESOLVABLE
    with pytest.raises(ValueError):
        verdict(_d(0.0, 1.0), +1, -1.0)  # the paper's number must have the claim's sign
    assert verdict(Difference(1.0, math.nan, math.nan, math.nan, PAIRED, 1, 1, 1), +1, 1.4) == NOT_RESOLVABLE


def test_ratio_claim_against_one_and_six():
    relu = {0: 10.0, 1: 12.0, 2: 11.0, 3: 9.0}
    faster = assess_speedup(relu, {s: e * r for (s, e), r in zip(relu.items(), (1.5, 1.6, 1.4, 1.55))})
    assert faster.verdict == AGREES  # ReLU faster, by ×1.5: the interval excludes 1
    assert "below the paper's ×6" in faster.note
    wide = assess_speedup(relu, {s: e * r for (s, e), r in zip(relu.items(), (0.7, 2.5, 1.1, 1.9))})
    assert wide.verdict == SMALLER  # contains ×1, but lies wholly below ×6
    assert math.exp(wide.effect.hi) < 6 and math.exp(wide.effect.lo) < 1


def test_detectable_effect_is_the_power_formula():
    diffs = {0: 1.0, 1: 2.5, 2: -0.5, 3: 1.5, 4: 0.0}
    d = paired({s: 0.0 for s in diffs}, diffs)
    se = (d.hi - d.lo) / 2 / t_quantile(0.975, 4)
    assert detectable(d) == pytest.approx((t_quantile(0.975, 4) + t_quantile(0.8, 4)) * se)


# --- the power plan ------------------------------------------------------------------------------


def test_plan_n_is_the_hand_computation():
    # sd 2 pp, target 1.5 pp: n = 9 gives t(0.975, 8) * 2 / 3 = 1.537 > 1.5; n = 10 gives 1.431
    assert t_quantile(0.975, 8) * 2 / 3 > 1.5 >= t_quantile(0.975, 9) * 2 / math.sqrt(10)
    assert seeds_for(2.0, 1.5) == 10
    assert seeds_for(0.0, 1.5) == 2
    assert sd_of(-1.0, 3.0, 4) == pytest.approx(2.0 * 2 / t_quantile(0.975, 3))


def test_plan_over_budget_declares_what_fits_and_shows_what_it_detects():
    plans = [ClaimPlan("a", 2.0, 3, 1.5, 10), ClaimPlan("b", 4.0, 3, 1.5, seeds_for(4.0, 1.5))]
    table, n, why = plan_table(plans, arms=5, grid_cells=20, seconds=60.0, budget_s=3600.0)
    # (3600 - 20 * 60) / (5 * 60) = 8 seeds fit
    assert n == 8 and "over the" in why
    assert table["half-width at n"].iloc[0] == pytest.approx(t_quantile(0.975, 7) * 2 / math.sqrt(8))
    _, n_all, why_all = plan_table(plans[:1], arms=5, grid_cells=20, seconds=60.0, budget_s=10 * 3600.0)
    assert n_all == 10 and "for every claim" in why_all


# --- tuning seeds apart --------------------------------------------------------------------------

BASE = {"norm": "lrn"}


def _runs(effect: dict, share: float = 0.05, clean: dict | None = None) -> pd.DataFrame:
    rows = []
    for s, e in effect.items():
        common = {"seed": s, "status": "ok", "cfg_model": "alexnet", "dtype_resolved": "fp32"}
        rows.append({**common, "norm": "lrn", "final_test_top1_err_pct": 40.0 + s, "cell_id": f"b{s}"})
        rows.append({**common, "norm": "none", "final_test_top1_err_pct": 40.0 + s + e, "cell_id": f"n{s}"})
    runs = pd.DataFrame(rows)
    runs["lrn_norm1_share_mean_final"] = runs["norm"].map({"lrn": share, "none": math.nan})
    if clean is not None:
        runs["final_train_clean_top1_err_pct"] = runs["norm"].map(clean)
    return runs


def test_the_tuning_seed_is_left_out_of_n_and_of_the_exploratory_note():
    runs = _runs({0: -9.0, 1: 1.0, 2: 1.2, 3: 0.8})  # seed 0 tuned the rates: its -9 must count nowhere
    (a,) = [x for x in assess(runs, BASE, declared_seeds=[1, 2, 3], tuning_seeds=[0]) if x.claim.factor == "norm"]
    assert a.effect.n == 3 and a.effect.diff == pytest.approx(1.0)
    assert "exploratory" not in a.note


def test_two_stage_profile_declares_its_confirming_seeds_only(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(
        '[study]\nname = "s"\nseeds = [0]\n[base]\nmodel = "lenet5"\n'
        '[factors.norm]\nkey = "knobs.activation"\nlevels = ["relu", "tanh"]\n'
        "[profiles.cpu]\nseeds = [0]\nconfirm_seeds = [1, 2]\ntune_lr = [0.01, 0.02]\n"
        "[profiles.smoke]\nseeds = [0, 1]\n"
    )
    spec = StudyFile.read(path)
    assert spec.declared_seeds("cpu") == [1, 2] and spec.tuning_seeds("cpu") == [0]
    assert spec.declared_seeds("smoke") == [0, 1] and spec.tuning_seeds("smoke") == []


# --- preconditions -------------------------------------------------------------------------------


def _overfit_runs(clean_level: float) -> pd.DataFrame:
    rows = []
    for s in (1, 2, 3):
        common = {"seed": s, "status": "ok", "cfg_model": "alexnet", "dtype_resolved": "fp32", "cell_id": f"c{s}"}
        rows.append({**common, "dropout": "0.5", "final_test_top1_err_pct": 50.0, "final_train_clean_top1_err_pct": 45})
        rows.append(
            {
                **common,
                "dropout": "0.0",
                "final_test_top1_err_pct": 52.0 + s,
                "final_train_clean_top1_err_pct": clean_level,
            }
        )
    return pd.DataFrame(rows)


def test_an_overfitting_claim_on_an_underfit_table_is_not_tested():
    (under,) = assess(_overfit_runs(clean_level=40.0), {"dropout": "0.5"})
    assert under.verdict == f"{NOT_TESTED}: the nets do not fit their training set"
    assert "40.0%" in under.note
    (fits,) = assess(_overfit_runs(clean_level=3.0), {"dropout": "0.5"})
    assert fits.verdict == AGREES and "fits" in fits.note


def _history(cells: list[str], falling: bool) -> pd.DataFrame:
    rows = []
    for c in cells:
        for epoch in range(1, 9):
            val = 60.0 - 2.0 * epoch if falling else 60.0 - 2.0 * min(epoch, 4)
            rows.append({"cell_id": c, "epoch": epoch, "step": 100 * epoch, "val_top1_err_pct": val})
    return pd.DataFrame(rows)


def test_an_accuracy_claim_on_a_still_improving_history_reads_early_training():
    runs = _runs({1: 1.0, 2: 1.2, 3: 0.8})
    cells = list(runs["cell_id"])
    (early,) = [a for a in assess(runs, BASE, history=_history(cells, falling=True)) if a.claim.factor == "norm"]
    assert early.verdict == EARLY_TRAINING and "2.0 pp per epoch" in early.note
    (done,) = [a for a in assess(runs, BASE, history=_history(cells, falling=False)) if a.claim.factor == "norm"]
    assert done.verdict == AGREES


def test_still_improving_needs_the_best_epoch_last_and_a_steep_fall():
    h = _history(["a"], falling=True)
    assert still_improving(h) == pytest.approx(-2.0)
    flat = h.assign(val_top1_err_pct=60.0 - 0.2 * h["epoch"])  # falls 0.2 pp per epoch: done enough
    assert still_improving(flat) is None
    bounced = h.assign(val_top1_err_pct=[50, 40, 30, 20, 10, 12, 14, 11])  # best epoch not the last
    assert still_improving(bounced) is None


# --- provenance ----------------------------------------------------------------------------------


def _git(repo, *args) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout.strip()


def test_provenance_flags_dirty_and_mixed_commits(tmp_path):
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "config", "user.email", "t@t")
    _git(tmp_path, "config", "user.name", "t")
    (tmp_path / "bench" / "train").mkdir(parents=True)
    (tmp_path / "bench" / "train" / "loop.py").write_text("a = 1\n")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-qm", "one")
    first = _git(tmp_path, "rev-parse", "HEAD")
    (tmp_path / "README.md").write_text("docs\n")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-qm", "docs")
    docs = _git(tmp_path, "rev-parse", "HEAD")
    (tmp_path / "bench" / "train" / "loop.py").write_text("a = 2\n")
    _git(tmp_path, "commit", "-qam", "loop")
    loop = _git(tmp_path, "rev-parse", "HEAD")

    assert provenance.check([first, first], tmp_path) == ""
    assert "dirty" in provenance.check([f"{first}-dirty"], tmp_path)
    assert "same training path" in provenance.check([first, docs], tmp_path)
    changed = provenance.check([first, loop], tmp_path)
    assert "training path changed" in changed and "bench/train/loop.py" in changed
    assert "could not be checked" in provenance.check([first, "0" * 40], tmp_path)
