"""A two-stage profile's second stage: the cells its confirming seeds run, at what its first stage chose.

The first stage's seeds ran every learning rate; the rates are chosen on their cells by the
rule the study file names (`bench.choose`, the module the report chooses with too, so the two
cannot choose differently): a `tune_lr` profile's arms each at the rate of lowest validation error
(`choose_lr`), a `fastest_lr_per` study's `lr` level fastest to its target per combination of
the factors named (`choose_fastest`). Neither reads a test column.
"""

from __future__ import annotations

import logging
from pathlib import Path

from bench.choose import arm_key, choose_fastest, choose_lr, chosen_rates
from bench.sweep.results import ResultsFolder, latest_per_configuration, recorded_target, rename_columns
from bench.sweep.study import Cell, Study

log = logging.getLogger(__name__)


def confirming_cells(
    folder: Path, study: Study, profile: str, confirm: list[int], overrides: dict | None, seeds: set[int]
) -> list[Cell]:
    """The cells of seeds `confirm` at the levels chosen on the cells of `seeds` in `folder`."""
    if study.lr_grid(profile):
        return study.cells(profile, confirm, overrides, rates=chosen_rates_of(folder, study, seeds))
    return study.cells(profile, confirm, overrides, combinations=chosen_combinations(folder, study, profile, seeds))


def chosen_rates_of(folder: Path, study: Study, seeds: set[int]) -> dict:
    """Each arm's learning rate, chosen on the validation error of the grid's cells of `seeds`
    (`bench.choose.choose_lr`): arm key -> rate."""
    runs, _, _ = ResultsFolder(folder, ["study", "profile", "status", *study.factors]).read()
    choice = choose_lr(runs, list(study.factors), sorted(seeds))
    for _, r in choice.iterrows():
        where = ", ".join(f"{f}={r[f]}" for f in study.factors)
        edge = f" (the {r['edge']} rate of its grid)" if r["edge"] else ""
        log.info("%s: %s: lr %g chosen on validation error %.2f%%%s", folder, where, r["lr"], r["val_err"], edge)
    if not len(choice):
        log.warning("%s: no finished grid cell to choose a learning rate from; no confirming seeds run", folder)
    return chosen_rates(choice, list(study.factors))


def chosen_combinations(folder: Path, study: Study, profile: str, seeds: set[int]) -> list[dict]:
    """The level combinations of the profile's design at the `lr` level chosen per combination of the
    study's `fastest_lr_per` (`bench.choose.choose_fastest`), judged on the cells of `seeds` in `folder`,
    read as the report reads them: older column names under today's, the latest row of a configuration."""

    def warn(line: str) -> None:
        log.warning("%s: %s", folder, line)

    factors = list(study.factors)
    runs, history, progress = ResultsFolder(folder, ["study", "profile", "status", *factors]).read()
    by = study.fastest_lr_per
    chosen = {}
    if len(runs):
        runs, _ = latest_per_configuration(rename_columns(runs), [f for f in factors if f in runs], warn)
        target = recorded_target(runs) or study.target
        runs = runs[runs["seed"].isin(list(seeds))]
        history = rename_columns(history)
        choice = choose_fastest(runs, history, progress if len(progress) else None, target, by, warn=warn)
        chosen = {arm_key(r, by): r["lr"] for _, r in choice.chosen.iterrows()}
    # each combination of the design whose lr is the one chosen for its levels of `by`
    combos = [c for c in study.combinations(profile) if chosen.get(arm_key(c, by)) == c["lr"]]
    if not combos:
        log.warning("%s: no finished cell to choose a learning rate from; no confirming seeds run", folder)
    for combo in combos:
        log.info("%s: chosen for the confirming seeds: %s", folder, ", ".join(f"{f}={v}" for f, v in combo.items()))
    return combos
