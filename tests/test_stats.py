"""`bench.stats` and `bench.report.claims` on hand-made numbers.

Every expected interval and quantile below was computed once with scipy 1.17.1
(scipy.stats.t.ppf / t.sf, ttest_rel(...).confidence_interval(), ttest_ind(...,
equal_var=False)), which is not a dependency of this project, and written here
as constants.
"""

from __future__ import annotations

import math

import pandas as pd
import pytest

from bench.report.claims import (
    CLAIMS,
    Claim,
    assess,
    assess_speedup,
    claims_for,
    claims_table,
)
from bench.report.verdict import AGREES, DISAGREES, NOT_RESOLVABLE, overfit_verdict, verdict
from bench.stats import PAIRED, WELCH, Difference, compare, paired, summarize, t_quantile, t_sf, welch

# scipy.stats.t.ppf(p, df)
T_PPF = {
    (0.975, 1): 12.706204736174694,
    (0.975, 2): 4.302652729749462,
    (0.975, 2.5): 3.5746548420036817,
    (0.975, 3): 3.1824463052837078,
    (0.975, 4.5): 2.6589123472044034,
    (0.975, 7): 2.364624251592784,
    (0.975, 30): 2.0422724563012378,
    (0.975, 31): 2.039513446396408,
    (0.975, 120): 1.9799304050824402,
    (0.975, 1000): 1.9623390808264083,
    (0.975, 1e5): 1.9599877075346095,
    (0.995, 1): 63.656741162871526,
    (0.995, 2.5): 7.163728138948783,
    (0.995, 10): 3.16927267261695,
    (0.9, 2): 1.8856180831641272,
    (0.9, 4.5): 1.5008853175085577,
    (0.9, 60): 1.295821093515731,
    (0.6, 1): 0.32491969623290634,
    (0.6, 3): 0.2766706623326898,
    (0.6, 1e5): 0.25334777715718015,
}
# scipy.stats.t.sf(t, df)
T_SF = {
    (0.5, 3): 0.3257239824240755,
    (2.0, 5): 0.050969739414929174,
    (-1.0, 2.5): 0.7979694863608632,
    (4.0, 1): 0.07797913037736932,
    (10.0, 30): 2.287625704114809e-11,
}

# Seeds 0-3: the baseline varies a lot from seed to seed, the level follows it closely.
BASE = {0: 30.0, 1: 34.0, 2: 28.0, 3: 32.5}
LEVEL = {3: 33.4, 0: 30.8, 2: 29.1, 1: 34.6}  # not in seed order: pairing is by seed, not by position
PAIRED_CI = (0.8500000000000005, 0.5187604865582153, 1.1812395134417857)  # ttest_rel(LEVEL, BASE), 3 df
UNPAIRED_CI = (0.8500000000000014, -3.608420075564145, 5.308420075564148, 5.974052941319793)  # Welch, + df
# Unequal n and spread, no seed in common.
TIGHT = {0: 20.1, 1: 20.5, 2: 19.8, 3: 20.3, 4: 20.0}
WIDE = {10: 22.0, 11: 25.5, 12: 21.0}
WELCH_WIDE = (2.6933333333333316, -3.1128948210442786, 8.499561487710942, 2.031439677583042)
POOLED_WIDE = (0.22383290325595162, 5.1628337634107115)  # equal_var=True: excludes 0, wrongly
HIGH = {10: 24.0, 11: 24.6, 12: 23.5}
WELCH_HIGH = (3.893333333333331, 2.7077769246491386, 5.078889742017523, 2.5922581897034798)


def test_t_quantile_and_tail_match_scipy():
    for (p, df), q in T_PPF.items():
        assert t_quantile(p, df) == pytest.approx(q, rel=1e-9, abs=1e-12), (p, df)
        assert t_quantile(1 - p, df) == pytest.approx(-q, rel=1e-9, abs=1e-12), (p, df)
    for (t, df), sf in T_SF.items():
        assert t_sf(t, df) == pytest.approx(sf, rel=1e-9), (t, df)
    assert t_quantile(0.5, 7) == 0.0
    # Cauchy (df 1) near 0: exactly 1/2 - arctan(t)/pi; x = df/(df+t^2) rounds to 1 there
    assert t_sf(1e-8, 1) == pytest.approx(0.5 - math.atan(1e-8) / math.pi, abs=1e-15)
    for p, df in ((0.0, 3), (1.0, 3), (0.5, 0)):
        with pytest.raises(ValueError):
            t_quantile(p, df)


def test_paired_interval_matches_scipy_and_pairs_by_seed():
    d = compare(BASE, LEVEL)
    assert (d.method, d.n, d.n_a, d.n_b, d.df) == (PAIRED, 4, 4, 4, 3.0)
    assert (d.diff, d.lo, d.hi) == pytest.approx(PAIRED_CI, rel=1e-9)
    assert verdict(d, +1) == AGREES and verdict(d, -1) == DISAGREES


def test_pairing_is_what_resolves_it():
    """The same numbers as two unrelated samples: Welch's interval contains 0, so a function that
    ignored the pairing could not say `agrees`."""
    unpaired = compare(BASE, {s + 100: v for s, v in LEVEL.items()})
    assert unpaired.method == WELCH and (unpaired.n_a, unpaired.n_b) == (4, 4)
    assert (unpaired.diff, unpaired.lo, unpaired.hi, unpaired.df) == pytest.approx(UNPAIRED_CI, rel=1e-9)
    assert verdict(unpaired, +1) == NOT_RESOLVABLE
    assert verdict(compare(BASE, LEVEL), +1) == AGREES
    # zipped by position instead of seed, the differences would be 3.4, -3.2, 1.1, 2.1: no verdict
    by_position = paired(dict(enumerate(BASE.values())), dict(enumerate(LEVEL.values())))
    assert verdict(by_position, +1) == NOT_RESOLVABLE


def test_paired_uses_only_common_finite_seeds():
    level = {0: math.nan, 1: 34.6, 2: 29.1, 3: 33.4, 9: 50.0}  # seed 0 failed, seed 9 has no partner
    d = compare(BASE, level)
    assert (d.method, d.n, d.df) == (PAIRED, 3, 2.0)
    assert (d.diff, d.lo, d.hi) == pytest.approx(
        (0.8666666666666671, 0.2415057187290901, 1.4918276146042442), rel=1e-9
    )  # ttest_rel on seeds 1-3
    worse = paired(BASE, {0: 29.0, 1: 33.1, 2: 27.2, 3: 31.4})
    assert (worse.diff, worse.lo, worse.hi) == pytest.approx(
        (-0.9500000000000002, -1.155426025676053, -0.7445739743239473), rel=1e-9
    )
    assert verdict(worse, +1) == DISAGREES and verdict(worse, -1) == AGREES


def test_welch_unequal_n_and_spread_matches_scipy_not_pooled():
    d = compare(TIGHT, WIDE)
    assert (d.method, d.n, d.n_a, d.n_b) == (WELCH, 3, 5, 3)
    assert (d.diff, d.lo, d.hi, d.df) == pytest.approx(WELCH_WIDE, rel=1e-9)
    assert d.lo != pytest.approx(POOLED_WIDE[0], abs=0.1) and d.hi != pytest.approx(POOLED_WIDE[1], abs=0.1)
    assert verdict(d, +1) == NOT_RESOLVABLE  # a pooled variance would have said `agrees`
    high = compare(TIGHT, HIGH)
    assert (high.diff, high.lo, high.hi, high.df) == pytest.approx(WELCH_HIGH, rel=1e-9)
    assert verdict(high, +1) == AGREES and verdict(high, -1) == DISAGREES
    back = welch(summarize(HIGH.values()), summarize(TIGHT.values()))
    assert (back.diff, back.lo, back.hi) == pytest.approx((-WELCH_HIGH[0], -WELCH_HIGH[2], -WELCH_HIGH[1]), rel=1e-9)
    assert verdict(back, -1) == AGREES and verdict(back, +1) == DISAGREES


def test_one_seed_is_never_a_direction():
    one_pair = compare({0: 10.0, 1: 11.0}, {0: 30.0})  # a big difference, one pair
    assert (one_pair.method, one_pair.n, one_pair.diff) == (PAIRED, 1, 20.0)
    assert math.isnan(one_pair.lo) and math.isnan(one_pair.hi)
    one_side = compare({0: 10.0, 1: 11.0, 2: 10.5}, {5: 30.0})  # no common seed, one value on one side
    assert (one_side.method, one_side.n, one_side.n_a, one_side.n_b) == (WELCH, 1, 3, 1)
    # even an interval that excludes 0 is not used below two seeds
    forged = Difference(5.0, 4.0, 6.0, 1.0, PAIRED, 1, 1, 1)
    for d in (one_pair, one_side, forged, None, compare({}, {})):
        assert verdict(d, +1) == verdict(d, -1) == NOT_RESOLVABLE
    with pytest.raises(ValueError):
        verdict(one_pair, 0)


def test_overfit_needs_a_wider_and_positive_gap():
    base_gap = {0: 5.0, 1: 4.5, 2: 5.5}  # test 25.0, 26.0, 24.5 minus clean train 20.0, 21.5, 19.0
    level_gap = {0: 15.0, 1: 14.0, 2: 14.5}  # test 27.0, 27.5, 26.0 minus clean train 12.0, 13.5, 11.5
    wider = compare(base_gap, level_gap)
    assert (wider.diff, wider.lo, wider.hi) == pytest.approx((9.5, 8.257931144124836, 10.742068855875164), rel=1e-9)
    gap = summarize(level_gap.values())
    assert (gap.lo, gap.hi) == pytest.approx((13.257931144124836, 15.742068855875164), rel=1e-9)
    assert overfit_verdict(wider, gap) == AGREES
    # wider (from about -6 to about 0), but test error not above clean training error: no overfitting shown
    wider = compare({0: -6.0, 1: -5.0, 2: -7.0}, {0: -1.0, 1: 0.5, 2: -0.2})
    assert (wider.lo, wider.hi) == pytest.approx((3.458511917179895, 8.074821416153439), rel=1e-9)
    assert verdict(wider, +1) == AGREES
    assert overfit_verdict(wider, summarize([-1.0, 0.5, -0.2])) == NOT_RESOLVABLE
    assert overfit_verdict(wider, summarize([-3.0, -2.5, -3.2])) == DISAGREES  # clearly no gap at all
    assert overfit_verdict(compare(level_gap, base_gap), summarize(base_gap.values())) == DISAGREES  # narrower
    assert overfit_verdict(compare({0: 5.0}, {0: 15.0}), summarize([15.0])) == NOT_RESOLVABLE  # one seed


# --- the claims ----------------------------------------------------------------------------


def _runs(clean: bool = True) -> pd.DataFrame:
    """A one-at-a-time study: baseline norm=lrn, dropout=0.5; levels norm=none, dropout=0.0."""
    rows = []
    base_gap, level_gap = {0: 5.0, 1: 4.5, 2: 5.5, 3: 5.0}, {0: 15.0, 1: 14.0, 2: 14.5, 3: 20.0}
    for seed in range(4):
        rows.append(
            {
                "norm": "lrn",
                "dropout": "0.5",
                "seed": seed,
                "status": "ok",
                "final_test_top1_err_pct": BASE[seed],
                "final_train_clean_top1_err_pct": BASE[seed] - base_gap[seed],
            }
        )
        rows.append(
            {
                "norm": "none",
                "dropout": "0.5",
                "seed": seed,
                "status": "ok",
                "final_test_top1_err_pct": LEVEL[seed],
                "final_train_clean_top1_err_pct": 1.0,
            }
        )
        # seed 3 failed: its numbers must not count
        rows.append(
            {
                "norm": "lrn",
                "dropout": "0.0",
                "seed": seed,
                "status": "ok" if seed < 3 else "error",
                "final_test_top1_err_pct": 5.0 + seed + level_gap[seed],
                "final_train_clean_top1_err_pct": 5.0 + seed,  # the unregularised arm fits its training set
            }
        )
    runs = pd.DataFrame(rows).assign(cfg_model="alexnet")
    # LRN normalises in these cells: 5% / 2% of its denominators come from the data after training
    runs["lrn_norm1_share_mean_final"] = runs["norm"].map({"lrn": 0.05, "none": math.nan})
    runs["lrn_norm2_share_mean_final"] = runs["norm"].map({"lrn": 0.02, "none": math.nan})
    return runs if clean else runs.drop(columns="final_train_clean_top1_err_pct")


def test_claims_table_rows():
    rows = claims_table(_runs(), {"norm": "lrn", "dropout": "0.5"})
    by = {(r["claim"]): r for r in rows}
    # the ImageNet LRN claim and dropout: the CIFAR-10 LRN claim is the paper's CIFAR net's alone
    assert len(rows) == 2
    for claim in claims_for("norm", "none", "top1_diff", models={"alexnet"}):
        if claim.sensitivity:
            assert claim.subject not in by  # its reference level (LRN at alpha 0.08) is not run here
            continue
        r = by[claim.subject]
        assert (r["effect"], r["lo"], r["hi"]) == pytest.approx(PAIRED_CI, rel=1e-9)
        assert (r["n"], r["n_text"], r["method"], r["verdict"]) == (4, "4 pairs", PAIRED, AGREES)
        assert r["measured"] == "+0.85 pp [+0.52, +1.18]" and r["paper"].startswith(f"{claim.paper_diff:+.1f} pp")
    r = by["no dropout in the first two FC layers"]
    assert (r["effect"], r["lo"], r["hi"]) == pytest.approx((9.5, 8.257931144124836, 10.742068855875164), rel=1e-9)
    assert (r["n"], r["verdict"]) == (3, AGREES) and "left out" in r["note"]  # seed 3 of the baseline
    assert r["measured"].startswith("gap wider by +9.50 pp [+8.26, +10.74]; gap without it +14.50 pp")


def test_claims_without_a_verdict_say_why():
    no_clean = {a.claim.subject: a for a in assess(_runs(clean=False), {"norm": "lrn", "dropout": "0.5"})}
    a = no_clean["no dropout in the first two FC layers"]
    assert a.verdict == NOT_RESOLVABLE and "final_train_clean_top1_err_pct" in a.note and a.effect is None
    assert no_clean["local response normalisation removed"].verdict == AGREES  # the other claims still stand
    # the column name is the caller's
    renamed = _runs().rename(columns={"final_train_clean_top1_err_pct": "clean"})
    assert {a.claim.factor: a.verdict for a in assess(renamed, {"norm": "lrn", "dropout": "0.5"}, clean_train="clean")}[
        "dropout"
    ] == AGREES
    # the study's baseline is not the level the paper compares with
    runs = _runs()
    wrong = {a.claim.factor: a for a in assess(runs[runs["norm"] == "none"], {"norm": "none", "dropout": "0.5"})}
    assert wrong["norm"].verdict == NOT_RESOLVABLE and "not the paper's reference lrn" in wrong["norm"].note
    # one seed on each side
    one = assess(runs[runs["seed"] == 0], {"norm": "lrn", "dropout": "0.5"})
    assert {a.verdict for a in one} == {NOT_RESOLVABLE}
    assert all("no interval" in a.measured() and a.effect.n == 1 for a in one)
    # a level never run
    missing = assess(runs[runs["norm"] == "lrn"], {"norm": "lrn", "dropout": "0.5"})
    assert [a.note for a in missing if a.claim.factor == "norm"] == ["no finished level cell (none run)"]


def test_speedup_is_a_geometric_mean_ratio():
    a = assess_speedup({0: 3, 1: 4, 2: 3}, {0: 12, 1: 15, 2: 20})
    r = a.row()
    assert (r["effect"], r["lo"], r["hi"]) == pytest.approx(
        (4.641588833612778, 2.121294487968094, 10.15622631488348), rel=1e-9
    )
    assert (r["method"], r["n"], r["verdict"]) == (PAIRED, 3, AGREES)
    assert a.note == "the paper's ×6 lies inside the interval"  # [2.12, 10.16]
    # the verdict judges the direction; the note says where the paper's size lies
    small = assess_speedup({0: 6.0, 1: 5.4, 2: 6.1}, {0: 8.1, 1: 8.3, 2: 8.1})
    assert small.verdict == AGREES and small.note == "the interval lies below the paper's ×6"
    large = assess_speedup({0: 1.0, 1: 1.0, 2: 1.0}, {0: 9.0, 1: 10.0, 2: 11.0})
    assert large.note == "the interval lies above the paper's ×6"
    censored = assess_speedup({0: 3, 1: 4, 2: 3}, {0: 12, 1: math.nan, 2: 20})
    assert censored.verdict == NOT_RESOLVABLE and "lower bound" in censored.note


def test_claims_are_consistent():
    for c in CLAIMS:
        assert c.reference and c.side in (1, -1)
        if c.kind == "top1_diff":
            assert math.copysign(1, c.paper_diff) == c.side
    with pytest.raises(ValueError, match="disagrees with side"):
        Claim("x", "bad", "q", "d", "norm", "none", "top1_diff", 1.4, "lrn", -1)
    assert claims_for("dropout", "0") == claims_for("dropout", "0.0") != []


def test_an_interval_touching_zero_is_not_a_direction():
    """`agrees` / `disagrees` need 0 strictly outside the interval: an end at exactly 0 is `not resolvable`."""
    for lo, hi in ((0.0, 2.0), (-2.0, 0.0), (0.0, 0.0)):
        d = Difference(1.0, lo, hi, 2.0, PAIRED, 3, 3, 3)
        assert verdict(d, +1) == verdict(d, -1) == NOT_RESOLVABLE, (lo, hi)
    just_above = Difference(1.0, 1e-12, 2.0, 2.0, PAIRED, 3, 3, 3)
    assert verdict(just_above, +1) == AGREES and verdict(just_above, -1) == DISAGREES


def test_welch_with_no_spread_is_the_exact_difference():
    """Identical values on each side (sd 0, no common seed): the interval is the difference itself, not NaN."""
    d = compare({0: 10.0, 1: 10.0, 2: 10.0}, {3: 12.5, 4: 12.5})
    assert (d.method, d.n, d.n_a, d.n_b) == (WELCH, 2, 3, 2)
    assert (d.diff, d.lo, d.hi, d.df) == (2.5, 2.5, 2.5, 3.0)
    assert verdict(d, +1) == AGREES and verdict(d, -1) == DISAGREES
    same = compare({0: 10.0, 1: 10.0}, {3: 10.0, 4: 10.0})
    assert (same.diff, same.lo, same.hi) == (0.0, 0.0, 0.0) and verdict(same, +1) == NOT_RESOLVABLE
