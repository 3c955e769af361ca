"""A study as training cells: a study file (`bench.studies`) expanded into cells at a profile.

`load_study` reads and validates the file (`bench.studies`), then resolves every
cell of every profile into a `TrainConfig` and builds each distinct model on the
meta device, so that a bad value fails when the study loads, not hours into a sweep.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import torch

from bench.choose import arm_key
from bench.errors import UserError
from bench.models import create_model
from bench.studies import PROFILES, StudyFile, find_study, list_studies
from bench.train.config import TrainConfig

__all__ = ["PROFILES", "Cell", "Study", "find_study", "list_studies", "load_study"]


_ABSENT = object()


@dataclass(frozen=True)
class Cell:
    """One training run of a study: its factor levels, seed and resolved configuration."""

    study: str
    levels: dict  # factor -> level name
    config: TrainConfig
    is_baseline: bool = False

    @property
    def id(self) -> str:
        """A hash of the configuration's non-default fields: a field added to TrainConfig later
        (with a default that keeps today's behaviour) leaves every existing cell's id alone."""
        defaults = TrainConfig().to_dict()
        changed = {k: v for k, v in self.config.to_dict().items() if defaults.get(k, _ABSENT) != v}
        blob = json.dumps(changed, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


class Study(StudyFile):
    """A study file whose combinations expand into cells."""

    def cells(
        self,
        profile: str,
        seeds: list[int] | None = None,
        overrides: dict | None = None,
        combinations: list[dict] | None = None,
        rates: dict | None = None,
    ) -> list[Cell]:
        """Expand the design at a profile into cells (one per level combination per seed, and per
        rate of the profile's `tune_lr` grid).

        Seed by seed: every combination of the first seed runs before any of the next, so that a
        sweep stopped part-way holds complete seeds, each a full set of pairs for the paired statistics.
        `combinations` (default: the profile's design) are the chosen ones of a two-stage profile;
        `rates` (arm key, `bench.choose.arm_key`, -> learning rate) runs each arm at its chosen
        rate instead of the whole grid.
        """
        prof = self.profile(profile)
        seeds = seeds if seeds is not None else prof.get("seeds", self.seeds)
        chosen = combinations if combinations is not None else self.combinations(profile)
        combos = [(combo, self.settings(combo, profile, overrides)) for combo in chosen]
        grid = self.lr_grid(profile)
        cells = []
        for seed in seeds:
            for combo, cfg in combos:
                baseline = self.is_baseline(combo, profile)
                key = arm_key(combo, list(self.factors))
                if rates is not None and key not in rates:
                    continue  # an arm with no finished grid cell has no chosen rate
                lrs = [rates[key]] if rates is not None else grid or [None]
                for lr in lrs:
                    settings = {**cfg, "seed": seed}
                    if lr is not None:
                        settings["lr"] = lr
                    if prof.get("data_follows_seed", False):
                        settings["data_seed"] = seed
                    try:
                        config = TrainConfig(**settings)
                    except UserError as e:
                        where = ", ".join(f"{f}={lv}" for f, lv in combo.items()) or "base"
                        raise UserError(f"{self.path}: cell {where} at profile {profile}: {e}") from None
                    cells.append(Cell(self.name, dict(combo), config, baseline))
        return cells


def load_study(name_or_path: str) -> Study:
    """A shipped study's name or a .toml path -> a Study whose every cell and model is checked."""
    study = Study.read(find_study(name_or_path))
    for pname in study.profiles:  # impossible combinations fail now, before anything runs
        _check_models(study.path, study.cells(pname))
    return study


def _check_models(path, cells: list[Cell]) -> None:
    """Build every distinct model on the meta device (no memory, no compute) so that a
    bad knob value fails when the study loads, not hours into a sweep."""
    seen = set()
    for cell in cells:
        c = cell.config
        key = json.dumps([c.model, c.knobs, c.init], sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        try:
            with torch.device("meta"):
                create_model(c.model, init=c.init, **c.knobs)
        except (UserError, ValueError, TypeError) as e:  # a builder's own check of a knob value
            raise UserError(f"{path}: cell {cell.levels}: {e}") from None
