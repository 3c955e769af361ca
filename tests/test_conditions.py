"""Claims tested under the conditions they are about: LRN activity measured, each arm at its own
learning rate chosen on validation, declared seeds as the confirmatory n, subsets that follow the
seed, compute and precision stated."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from bench.choose import at_chosen_rates, choose_lr
from bench.models import create_model
from bench.models.lrn import LocalResponseNorm, data_share, lrn_activity
from bench.report.claims import NOT_TESTED, assess
from bench.report.verdict import AGREES, NOT_RESOLVABLE
from bench.sweep.study import Study, load_study
from tests.test_sweep import sweep_study, write_study

# --- LRN activity --------------------------------------------------------------------------


def test_data_share_is_the_hand_computation():
    # one pixel, three channels a = (1, 2, 3); size 3: windows {0,1}, {0,1,2}, {1,2}
    x = torch.tensor([1.0, 2.0, 3.0]).reshape(1, 3, 1, 1)
    alpha, k = 0.1, 2.0
    sums = torch.tensor([1 + 4, 1 + 4 + 9, 4 + 9], dtype=torch.float32)
    expected = alpha * sums / (k + alpha * sums)  # 0.5/2.5, 1.4/3.4, 1.3/3.3
    assert data_share(x, 3, alpha, k).flatten() == pytest.approx(expected.tolist(), rel=1e-6)
    assert expected.tolist() == pytest.approx([0.2, 1.4 / 3.4, 1.3 / 3.3])


def test_lrn_activity_reports_each_layer_and_restores_training_mode():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Identity(), LocalResponseNorm(3, alpha=0.1, k=2.0))
    model.train()
    x = torch.tensor([1.0, 2.0, 3.0]).reshape(1, 3, 1, 1)
    out = lrn_activity(model, x)
    assert set(out) == {"lrn_1_share_mean", "lrn_1_share_p99"}
    assert out["lrn_1_share_mean"] == pytest.approx((0.2 + 1.4 / 3.4 + 1.3 / 3.3) / 3, rel=1e-6)
    assert model.training
    assert lrn_activity(create_model("layers-80sec"), torch.zeros(1, 3, 32, 32)) == {}


def test_lrn_alpha_at_the_paper_input_scale_normalises():
    """The paper's alpha on standardised inputs leaves LRN a constant gain; alpha * c^2 does not."""
    torch.manual_seed(0)
    x = torch.randn(32, 3, 32, 32)
    paper = lrn_activity(create_model("alexnet", init="kaiming", width=0.125), x)
    scaled = lrn_activity(create_model("alexnet", init="kaiming", width=0.125, lrn_alpha=0.4), x)
    assert paper["lrn_norm1_share_mean"] < 1e-3 < 0.01 < scaled["lrn_norm1_share_mean"]


# --- claims: the LRN gate, declared seeds, MACs, precision ----------------------------------

BASE = {"norm": "lrn", "pool": "overlap"}
LRN_EFFECT = {0: 1.0, 1: 1.2, 2: 0.8, 3: 1.1, 4: -3.0}  # seed 4: not declared


def _runs(share: float | None = 0.05, seeds=(0, 1, 2, 3, 4)) -> pd.DataFrame:
    rows = []
    for s in seeds:
        base = 40.0 + s
        common = {"seed": s, "status": "ok", "cfg_model": "alexnet", "dtype_resolved": "fp32"}
        rows.append({**common, **BASE, "final_test_top1_err_pct": base, "macs": 100.0})
        rows.append({**common, "norm": "none", "pool": "overlap", "final_test_top1_err_pct": base + LRN_EFFECT[s]})
        rows[-1]["macs"] = 100.0
        rows.append(
            {**common, "norm": "lrn", "pool": "nonoverlap", "final_test_top1_err_pct": base + 0.5, "macs": 56.0}
        )
    runs = pd.DataFrame(rows)
    if share is not None:
        runs["lrn_norm1_share_mean_final"] = runs["norm"].map({"lrn": share, "none": math.nan})
    return runs


def _by_factor(runs, **kwargs):
    return {a.claim.factor: a for a in assess(runs, BASE, **kwargs)}


def test_lrn_claim_is_not_tested_where_lrn_is_a_constant_gain():
    active = _by_factor(_runs(0.05), declared_seeds=[0, 1, 2, 3])["norm"]
    assert active.verdict == AGREES and "LRN active" in active.note and "norm1 5%" in active.note
    gain = _by_factor(_runs(0.002), declared_seeds=[0, 1, 2, 3])["norm"]
    assert gain.verdict == f"{NOT_TESTED}: LRN acts as a constant gain" and "0.2%" in gain.note
    unknown = _by_factor(_runs(None), declared_seeds=[0, 1, 2, 3])["norm"]
    assert unknown.verdict == NOT_TESTED and "not recorded" in unknown.note


def test_the_lrn_gate_reads_the_most_active_layer():
    """Two LRN layers, one normalising (5%) and one a constant gain (0.2%): the LRN normalised, so
    the claim is tested, on any net that carries the claim."""
    for model in ("alexnet", "cifar-conv-local"):
        runs = _runs(0.05).assign(cfg_model=model)
        runs["lrn_norm2_share_mean_final"] = runs["norm"].map({"lrn": 0.002, "none": math.nan})
        (lrn,) = [a for a in assess(runs, BASE, declared_seeds=[0, 1, 2, 3]) if a.claim.factor == "norm"]
        assert lrn.verdict == AGREES and "LRN active" in lrn.note and "norm2 0.2%" in lrn.note, model


def test_the_cifar_lrn_claim_is_not_tested_where_lrn_is_a_constant_gain():
    cifar = _runs(0.002).assign(cfg_model="cifar-conv-local")
    (lrn,) = [a for a in assess(cifar, BASE, declared_seeds=[0, 1, 2, 3]) if a.claim.factor == "norm"]
    assert lrn.claim.data == "CIFAR-10" and lrn.verdict == f"{NOT_TESTED}: LRN acts as a constant gain"


def test_verdicts_use_the_declared_seeds_and_show_the_rest_as_exploratory():
    declared = _by_factor(_runs(), declared_seeds=[0, 1, 2, 3])["norm"]
    assert declared.effect.n == 4 and declared.verdict == AGREES
    assert declared.effect.diff == pytest.approx(sum(LRN_EFFECT[s] for s in range(4)) / 4)
    assert "exploratory, with seed(s) 4" in declared.note and "5 pairs (not resolvable)" in declared.note
    # with every seed declared, all five count and nothing is exploratory
    everything = _by_factor(_runs(), declared_seeds=[0, 1, 2, 3, 4])["norm"]
    assert everything.effect.n == 5 and everything.verdict == NOT_RESOLVABLE and "exploratory" not in everything.note


def test_an_arm_that_changes_compute_has_its_macs_ratio():
    rows = _by_factor(_runs(), declared_seeds=[0, 1, 2, 3])
    assert "MACs ×0.56 of the baseline's" in rows["pool"].note
    assert "MACs" not in rows["norm"].note


def test_cells_of_different_precision_are_not_pooled():
    runs = _runs()
    runs.loc[runs["seed"] == 3, "dtype_resolved"] = "bf16"
    rows = _by_factor(runs, declared_seeds=[0, 1, 2, 3])
    assert {a.verdict for a in rows.values()} == {NOT_RESOLVABLE}
    assert all("different precision (bf16, fp32)" in a.note for a in rows.values())


def test_the_cifar_lrn_claim_is_measured_on_the_cifar_net_only():
    alexnet = assess(_runs(), BASE, declared_seeds=[0, 1, 2, 3])
    assert [a.claim.data for a in alexnet if a.claim.factor == "norm"] == ["ImageNet"]
    cifar = _runs().assign(cfg_model="cifar-conv-local")
    assert [a.claim.data for a in assess(cifar, BASE) if a.claim.factor == "norm"] == ["CIFAR-10"]


# --- each arm's learning rate, chosen on validation ----------------------------------------


def _grid() -> pd.DataFrame:
    """Two arms, three rates, seeds 0-1. Validation favours 0.05 for lrn and 0.1 for none;
    test error favours the opposite ends, so a choice that reads it would differ."""
    val = {("lrn", 0.025): 30, ("lrn", 0.05): 20, ("lrn", 0.1): 25, ("none", 0.025): 40, ("none", 0.05): 35}
    val[("none", 0.1)] = 30
    rows = []
    for (norm, lr), v in val.items():
        for seed in (0, 1):
            test = 10.0 if lr == 0.025 else 50.0
            rows.append(
                {
                    "norm": norm,
                    "seed": seed,
                    "status": "ok",
                    "cfg_lr": lr,
                    "best_val_top1_err_pct": v + seed,
                    "final_test_top1_err_pct": test,
                    "test_top1_err_pct_at_best_val": test,
                }
            )
    return pd.DataFrame(rows)


def test_each_arm_gets_the_rate_with_the_lowest_validation_error():
    choice = choose_lr(_grid(), ["norm"], [0, 1]).set_index("norm")
    assert choice.loc["lrn", "lr"] == 0.05 and choice.loc["lrn", "edge"] == ""
    assert choice.loc["none", "lr"] == 0.1 and choice.loc["none", "edge"] == "highest"
    assert choice.loc["lrn", "val_err"] == pytest.approx(20.5) and choice.loc["lrn", "grid"] == [0.025, 0.05, 0.1]


def test_the_choice_never_reads_test_columns():
    grid = _grid()
    blind = grid.drop(columns=[c for c in grid if "test" in c])
    scrambled = grid.assign(final_test_top1_err_pct=-1.0, test_top1_err_pct_at_best_val=float("nan"))
    expected = choose_lr(grid, ["norm"], [0, 1])
    for frame in (blind, scrambled):
        pd.testing.assert_frame_equal(choose_lr(frame, ["norm"], [0, 1]), expected)
    # and it does read the validation column: change it, and the choice follows
    flipped = grid.assign(best_val_top1_err_pct=-grid["best_val_top1_err_pct"])
    assert choose_lr(flipped, ["norm"], [0, 1]).set_index("norm").loc["lrn", "lr"] != 0.05


def test_the_choice_reads_only_the_seeds_it_is_given():
    """A confirming seed's validation error never joins the rate choice: a seed-2 row favouring
    another rate (by far) leaves the choice on seeds [0, 1] as it was."""
    grid = _grid()
    expected = choose_lr(grid, ["norm"], [0, 1])
    confirming = grid[(grid["seed"] == 0) & (grid["cfg_lr"] == 0.025)].assign(seed=2, best_val_top1_err_pct=0.0)
    pd.testing.assert_frame_equal(choose_lr(pd.concat([grid, confirming]), ["norm"], [0, 1]), expected)
    assert set(choose_lr(pd.concat([grid, confirming]), ["norm"], [2])["lr"]) == {0.025}  # it would have won


def test_a_diverged_rate_is_the_worst_and_ties_go_to_the_smaller_rate():
    grid = _grid()
    grid.loc[(grid["norm"] == "none") & (grid["cfg_lr"] == 0.1), "status"] = "diverged"
    grid.loc[grid["norm"] == "lrn", "best_val_top1_err_pct"] = 20.0
    choice = choose_lr(grid, ["norm"], [0, 1]).set_index("norm")
    assert choice.loc["none", "lr"] == 0.05 and choice.loc["lrn", "lr"] == 0.025
    mask = at_chosen_rates(grid, choice.reset_index(), ["norm"])
    assert set(grid[mask]["cfg_lr"]) == {0.025, 0.05} and mask.sum() == 4


TUNED = sweep_study(epochs=1, lr=None).replace(
    'measure = "none"',
    'measure = "none"\nseeds = [0]\nconfirm_seeds = [1]\ntune_lr = [0.005, 0.01, 0.02]\ndata_follows_seed = true',
)


def test_a_tuned_sweep_confirms_each_arm_at_its_validation_choice(tmp_path):
    from bench.sweep.runner import run_study

    study = load_study(str(write_study(tmp_path, text=TUNED)))
    runs = run_study(study, "smoke", out_root=tmp_path / "out", progress=False)
    grid, confirming = runs[runs["seed"] == 0], runs[runs["seed"] == 1]
    assert len(grid) == 6 and sorted(grid["cfg_lr"].unique()) == [0.005, 0.01, 0.02]
    expected = choose_lr(grid, ["activation"], [0]).set_index("activation")["lr"]
    assert len(confirming) == 2
    for _, r in confirming.iterrows():
        assert r["cfg_lr"] == expected[r["activation"]]
    assert (runs["cfg_data_seed"] == runs["seed"]).all()  # the subsets follow the seed


def test_subsets_follow_the_seed_and_are_shared_within_it(tmp_path):
    from bench.data import load_data
    from bench.train.dataspec import data_spec

    study = Study.read(write_study(tmp_path, text=TUNED))
    cells = study.cells("smoke", seeds=[0, 1])
    data = {}
    for c in cells:
        d = load_data(data_spec(c.config))
        data.setdefault(c.config.seed, []).append(d)
    for sets in data.values():
        for d in sets[1:]:  # every arm and rate of a seed: the same images
            for split in ("train_x", "val_x", "test_x"):
                assert torch.equal(getattr(d, split), getattr(sets[0], split))
    a, b = data[0][0], data[1][0]
    for split in ("train_x", "val_x"):
        assert not torch.equal(getattr(a, split), getattr(b, split)), split
    # the test subset is drawn by the same seed (synthetic data makes exactly test_per_class images,
    # so its subset is all of them: check the draw itself)
    from bench.data import splits

    y = torch.arange(10).repeat(20)
    classes = [str(c) for c in range(10)]
    assert not torch.equal(splits.per_class(y, 4, classes, "test", 0), splits.per_class(y, 4, classes, "test", 1))
