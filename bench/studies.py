"""Study files (`ablations/*.toml`): found, read and validated here, with no torch.

Both the sweep (`bench.sweep.study`, which turns a study into training cells) and
the report (level order, baselines, descriptions) read study files through this
module, so the two cannot disagree on what a file means.

A study file has four parts:

    [study]      name, description, design ("one-at-a-time" | "factorial"), seeds,
                 optional target = { metric = "train_running_err_pct", value = 25.0, stop_after = 2 }
                 (a cell stops `stop_after` epochs after reaching it; absent: runs all epochs;
                 a test-set metric cannot stop a cell: that would select on the test set),
                 optional fastest_lr_per = ["setup", "activation"] (below)
    [base]       a TrainConfig (any of its fields; knobs as a table)
    [factors.X]  either key = "knobs.activation" with levels = ["relu", "tanh"], or
                 levels = { name = { <config overrides> }, ... }; `baseline` names the
                 baseline level (default: the first)
    [profiles.P] config overrides for profile P (smoke | cpu | cpu-full | gpu), plus `seeds`,
                 `measure` ("quick" | "full" | "none"), per-level overrides under
                 levels.<factor>.<level>, only = { factor = [levels] } to run a
                 subset of a factor's levels at this profile, and confirm_seeds (below)

`confirm_seeds` makes a profile two-stage: the profile's seeds run every learning rate, then
`confirm_seeds` run only the rates chosen on them (`bench.choose`, on training or validation
error, never test error). The study file says how they are chosen, one of two ways:

`fastest_lr_per = ["setup", "activation"]` (in [study]; Figure 1's rule): the study has a
factor `lr`, and per combination of the factors named, its level that reaches `study.target`
in the fewest epochs is chosen (`bench.choose.choose_fastest`; the target must not be a test
metric). A factor it leaves out is pooled: one rate is chosen over all its levels. The
confirming seeds then run each combination at its chosen rate: each further seed costs one
cell per combination, not a grid. The report's Figure 1 chooses the same way.

`tune_lr = [0.0125, 0.025, 0.05]` (in a profile) gives every arm (level combination) its own learning
rate, chosen on validation error (`bench.choose.choose_lr`): the profile's seeds run every arm at
every rate of the grid; with `confirm_seeds`, those seeds then run each arm at its chosen
rate alone. The report compares each arm at its own rate, and flags a choice at the edge
of the grid.

`data_follows_seed = true` draws the training subset, the validation split and the test
subset from the cell's seed (cells of one seed still share them, so pairs stay paired);
without it every seed uses `data_seed`, and intervals are conditional on that one draw.

The seeds a profile declares are its confirmatory n: its `confirm_seeds` in a two-stage
profile (whose `seeds` only tune: they choose each arm's rate and count in no verdict), else
its `seeds`. The report's verdicts use those seeds alone and show any other seed's cells as
exploratory.

A sweep records its study's `Design` at the profile beside the tables (study.json):
which runs.csv columns are factors, each one's levels in the study's order (those the
profile runs) and its baseline level. The report reads that, not the columns' positions.

`study.exclude` lists level combinations never to run, e.g. a learning-rate grid
that differs per setup: exclude = [{ setup = "paper", lr = 0.05 }].

A cell's configuration is base, then profile, then the factor levels, then the
profile's per-level overrides; `knobs` tables merge, other keys replace. Every
mistake is a UserError naming the file, the key and the valid values. What this
module cannot check without torch (each value a valid TrainConfig, each model
buildable) `bench.sweep.study.load_study` checks before a sweep runs.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from bench.errors import UserError
from bench.train.config import MAX_SEED, TrainConfig  # a plain dataclass: importing it imports no torch

PROFILES = ("smoke", "cpu", "cpu-full", "gpu")
DESIGNS = ("one-at-a-time", "factorial")
MEASURE_MODES = ("quick", "full", "none")
STUDY_KEYS = {"name", "description", "design", "seeds", "target", "exclude", "fastest_lr_per"}
# A study's name is a folder under --out: one plain path component, never "..", "/" or a hidden name.
STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
TARGET_METRICS = ("train_running_err_pct", "train_clean_top1_err_pct", "val_top1_err_pct", "test_top1_err_pct")
RENAMED_METRICS = {"train_err_pct": "train_running_err_pct"}  # old name -> new, for a one-line hint
FACTOR_KEYS = {"key", "levels", "baseline", "description"}
PROFILE_EXTRA_KEYS = {
    "seeds",
    "confirm_seeds",
    "measure",
    "levels",
    "only",
    "description",
    "gpus_per_cell",
    "cpus_per_cell",
    "tune_lr",
    "data_follows_seed",
}
CONFIG_KEYS = {f.name for f in fields(TrainConfig)}
STUDY_JSON = "study.json"  # a results folder's recorded `Design`, beside runs.csv


def studies_dir() -> Path:
    """The shipped study files: the `ablations` package, which installs beside `bench`
    (site-packages/ablations) and is the checkout's ablations/ in a source tree."""
    return Path(__file__).resolve().parents[1] / "ablations"


def list_studies() -> list[str]:
    return sorted(p.stem for p in studies_dir().glob("*.toml"))


def find_study(name_or_path: str) -> Path:
    """A shipped study's file by name (`alexnet`), or a path to a .toml file."""
    path = Path(name_or_path)
    if path.suffix == ".toml":
        if not path.exists():
            raise UserError(f"study file {path} does not exist")
        return path
    candidate = studies_dir() / f"{name_or_path}.toml"
    if not candidate.exists():
        raise UserError(
            f"unknown study {name_or_path!r}; choose one of: {', '.join(list_studies())}, or a path to a .toml file"
        )
    return candidate


def load_study(name_or_path: str) -> StudyFile:
    """Read and validate a study file (a shipped study's name or a path); see the module docstring."""
    return StudyFile.read(find_study(name_or_path))


@dataclass
class StudyFile:
    """A validated study file. Factor levels are strings, in the file's order."""

    name: str
    path: Path
    description: str
    design: str
    factors: dict  # factor -> {"levels": {level: overrides}, "baseline": level, "description": text}
    base: dict
    profiles: dict
    seeds: list[int]
    target: dict | None = None
    exclude: list = field(default_factory=list)  # level combinations never run
    fastest_lr_per: list = field(default_factory=list)  # factors the lr fastest to the target is chosen per

    @classmethod
    def read(cls, path: Path):
        path = Path(path)
        try:
            doc = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise UserError(f"{path}: not valid TOML ({e})") from None
        _check_keys(path, "", doc, {"study", "base", "factors", "profiles"})
        meta = doc.get("study", {})
        _check_keys(path, "study.", meta, STUDY_KEYS)
        design = meta.get("design", "one-at-a-time")
        if design not in DESIGNS:
            raise UserError(f"{path}: study.design={design!r} is not valid; choose one of: {', '.join(DESIGNS)}")
        seeds = meta.get("seeds", [0])
        _check_seeds(path, "study.seeds", seeds)
        target = _target(path, meta.get("target"))
        base = doc.get("base", {})
        _check_overrides(path, "base.", base)
        factors = {name: _factor(path, name, spec) for name, spec in doc.get("factors", {}).items()}
        exclude = _exclude(path, meta.get("exclude", []), factors)
        fastest_lr_per = _fastest_lr_per(path, meta.get("fastest_lr_per"), factors, target)
        profiles = doc.get("profiles", {})
        for pname, prof in profiles.items():
            _check_profile(path, pname, prof, factors)
            _check_only_keeps_baselines(path, pname, prof, factors, design)
            _check_confirm(path, pname, prof, fastest_lr_per, seeds)
        study = cls(
            _study_name(path, meta),
            path,
            meta.get("description", ""),
            design,
            factors,
            base,
            profiles,
            seeds,
            target,
            exclude,
            fastest_lr_per,
        )
        for pname in profiles:
            _check_resolved(study, pname)
        return study

    def levels(self, factor: str) -> list[str]:
        return list(self.factors[factor]["levels"])

    def profile(self, name: str) -> dict:
        if name not in self.profiles:
            raise UserError(
                f"{self.path}: no [profiles.{name}] section; this study has: {', '.join(self.profiles) or 'none'}"
            )
        return self.profiles[name]

    def confirm_seeds(self, profile: str) -> list[int]:
        """The seeds that run only at the chosen learning rates (a two-stage profile), else []."""
        return list(self.profile(profile).get("confirm_seeds", []))

    def declared_seeds(self, profile: str) -> list[int]:
        """The seeds the profile declares before anything runs to count in its verdicts: its confirmatory n.
        In a two-stage profile those are the confirming seeds alone: the tuning seeds chose each arm's
        rate, and an arm's error on the seed that chose its rate is biased low."""
        prof = self.profile(profile)
        return list(prof.get("confirm_seeds", [])) or list(prof.get("seeds", self.seeds))

    def tuning_seeds(self, profile: str) -> list[int]:
        """The seeds that choose each arm's rate in a two-stage profile (its `seeds`), else []."""
        prof = self.profile(profile)
        return list(prof.get("seeds", self.seeds)) if prof.get("confirm_seeds") else []

    def lr_grid(self, profile: str) -> list[float]:
        """The learning rates every arm tries at `profile` (`tune_lr`), else []."""
        return [float(v) for v in self.profile(profile).get("tune_lr", [])]

    def baseline(self, profile: str | None = None) -> dict[str, str]:
        """Each factor's baseline level at `profile`: the study's, or the first level the profile's
        `only` keeps where it leaves the study's out (a factorial design's cells then still have one
        to be compared with)."""
        only = self.profile(profile).get("only", {}) if profile is not None else {}
        return {
            f: spec["baseline"] if spec["baseline"] in only.get(f, [spec["baseline"]]) else only[f][0]
            for f, spec in self.factors.items()
        }

    def design_at(self, profile: str | None = None) -> Design:
        """The factors, their levels and baselines at `profile` (None: the study's own), as a
        results folder records them: levels the profile's `only` leaves out are outside its design."""
        only = self.profiles.get(profile, {}).get("only", {})
        base = self.baseline(profile if profile in self.profiles else None)
        known = profile in self.profiles
        return Design(
            self.name,
            profile or "",
            {f: [lv for lv in spec["levels"] if lv in only.get(f, [lv])] for f, spec in self.factors.items()},
            base,
            {f: spec["description"] for f, spec in self.factors.items()},
            self.declared_seeds(profile) if known else None,
            self.tuning_seeds(profile) if known else [],
        )

    def is_baseline(self, combo: dict, profile: str | None = None) -> bool:
        base = self.baseline(profile)
        return all(level == base[f] for f, level in combo.items())

    def combinations(self, profile: str) -> list[dict]:
        """The level combinations (factor -> level) run at `profile`: the design's, less the
        profile's `only` and the study's `exclude`."""
        only = self.profile(profile).get("only", {})
        return [
            combo
            for combo in self._design()
            if not any(combo[f] not in levels for f, levels in only.items())
            and not any(all(combo[f] == lv for f, lv in ex.items()) for ex in self.exclude)
        ]

    def settings(self, combo: dict, profile: str, overrides: dict | None = None) -> dict:
        """The configuration keys of one combination at `profile` (all but the seed); see the
        module docstring for the order in which they merge."""
        prof = self.profile(profile)
        cfg = copy.deepcopy(self.base)
        _merge(cfg, {k: v for k, v in prof.items() if k not in PROFILE_EXTRA_KEYS})
        for factor, level in combo.items():
            _merge(cfg, self.factors[factor]["levels"][level])
            _merge(cfg, prof.get("levels", {}).get(factor, {}).get(level, {}))
        _merge(cfg, overrides or {})
        return cfg

    def _design(self) -> list[dict]:
        names = list(self.factors)
        base = {f: self.factors[f]["baseline"] for f in names}
        if self.design == "factorial":
            return [dict(zip(names, c)) for c in itertools.product(*(self.factors[f]["levels"] for f in names))]
        combos = [base]
        for f in names:
            for level in self.factors[f]["levels"]:
                if level != base[f]:
                    combos.append({**base, f: level})
        return combos


@dataclass(frozen=True)
class Design:
    """A study at one profile as its results folder records it (study.json): the factors, which
    are columns of runs.csv, each one's levels in the study's order, its baseline and description."""

    study: str
    profile: str
    levels: dict[str, list[str]]  # factor -> the levels the profile runs, in the study's order
    baseline: dict[str, str]  # factor -> the level every other configuration is compared with
    descriptions: dict[str, str]
    # The seeds the profile declared when the sweep ran (the verdicts' n) and those that only tuned:
    # recorded, so a later edit of the study file cannot change what a finished folder counts.
    declared_seeds: list[int] | None = None
    tuning_seeds: list[int] = field(default_factory=list)

    @property
    def factors(self) -> list[str]:
        return list(self.levels)

    def to_json(self) -> str:
        factors = [
            {"name": f, "levels": lv, "baseline": self.baseline[f], "description": self.descriptions.get(f, "")}
            for f, lv in self.levels.items()
        ]
        doc = {"study": self.study, "profile": self.profile, "factors": factors}
        if self.declared_seeds is not None:
            doc |= {"declared_seeds": self.declared_seeds, "tuning_seeds": self.tuning_seeds}
        return json.dumps(doc, indent=2) + "\n"

    @classmethod
    def read(cls, path: Path) -> Design:
        """A study.json as a sweep wrote it; anything else is a `UserError` naming the file and the fix."""

        def refuse(why: str):
            raise UserError(
                f"{path}: {why}, so it is not a {STUDY_JSON} a sweep wrote; move it aside (the report then "
                f"takes the design from the study file) or run the sweep again to record it"
            ) from None

        try:
            doc = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, ValueError) as e:
            refuse(f"unreadable ({type(e).__name__})")
        factors = doc.get("factors") if isinstance(doc, dict) else None
        if not isinstance(factors, list):
            refuse("no list of factors")
        levels, baseline, descriptions = {}, {}, {}
        for f in factors:
            name = f.get("name") if isinstance(f, dict) else None
            lv = f.get("levels") if isinstance(f, dict) else None
            if not isinstance(name, str) or not (isinstance(lv, list) and lv and all(isinstance(v, str) for v in lv)):
                refuse(f"factor {f!r} has no name or no list of levels")
            if f.get("baseline") not in lv:
                refuse(f"factor {name!r}: baseline {f.get('baseline')!r} is not one of its levels {lv}")
            levels[name], baseline[name] = lv, f["baseline"]
            descriptions[name] = str(f.get("description", ""))
        seeds = {k: doc.get(k) for k in ("declared_seeds", "tuning_seeds")}
        for k, v in seeds.items():
            if v is not None and not (isinstance(v, list) and all(isinstance(x, int) for x in v)):
                refuse(f"{k} {v!r} is not a list of integers")
        return cls(
            str(doc.get("study", "")),
            str(doc.get("profile", "")),
            levels,
            baseline,
            descriptions,
            seeds["declared_seeds"],
            seeds["tuning_seeds"] or [],
        )


def _merge(cfg: dict, overrides: dict) -> None:
    for key, value in overrides.items():
        if key == "knobs":
            cfg.setdefault("knobs", {})
            cfg["knobs"] = {**cfg["knobs"], **value}
        else:
            cfg[key] = value


def _check_keys(path: Path, where: str, table: dict, valid: set[str]) -> None:
    unknown = sorted(set(table) - valid)
    if unknown:
        raise UserError(f"{path}: unknown key {where}{unknown[0]!r}; valid keys: {', '.join(sorted(valid))}")


def _check_overrides(path: Path, where: str, overrides, allow_extra: set[str] = frozenset()) -> None:
    if not isinstance(overrides, dict):
        raise UserError(f"{path}: {where} must be a table of configuration keys, got {overrides!r}")
    _check_keys(path, where, overrides, CONFIG_KEYS | allow_extra)
    if "knobs" in overrides and not isinstance(overrides["knobs"], dict):
        raise UserError(f'{path}: {where}knobs must be a table, e.g. knobs = {{ activation = "tanh" }}')


def _set_path(dotted: str, value) -> dict:
    """`knobs.activation` -> {"knobs": {"activation": value}}."""
    head, _, rest = dotted.partition(".")
    return {head: _set_path(rest, value) if rest else value}


def _check_levels(path: Path, where: str, factors: dict, chosen: dict) -> None:
    for fname, levels in chosen.items():
        if fname not in factors:
            raise UserError(f"{path}: {where}: no factor {fname!r}; factors: {', '.join(factors)}")
        for lv in levels:
            if lv not in factors[fname]["levels"]:
                raise UserError(
                    f"{path}: {where}: {fname} has no level {lv!r}; levels: {', '.join(factors[fname]['levels'])}"
                )


def _study_name(path: Path, meta: dict) -> str:
    """study.name (the file's stem if absent): the results folder's name, so a plain file name."""
    name = meta.get("name", path.stem)
    if not (isinstance(name, str) and STUDY_NAME.fullmatch(name) and ".." not in name):
        where = f"study.name={name!r}" if "name" in meta else f"the file name {path.name!r} (no study.name)"
        raise UserError(
            f"{path}: {where} is not a valid study name: it names the results folder, so use letters, "
            f'digits, ".", "_" and "-", starting with a letter or digit (e.g. name = "my-study")'
        )
    return name


def _target(path: Path, target) -> dict | None:
    if target is None:
        return None
    _check_keys(path, "study.target.", target, {"metric", "value", "stop_after"})
    if target.get("metric") in RENAMED_METRICS:
        raise UserError(
            f"{path}: study.target.metric {target['metric']!r} is now called "
            f"{RENAMED_METRICS[target['metric']]!r} (the running in-epoch training error)"
        )
    if target.get("metric") not in TARGET_METRICS or not isinstance(target.get("value"), (int, float)):
        raise UserError(f"{path}: study.target needs metric (one of {', '.join(TARGET_METRICS)}) and a numeric value")
    if isinstance(target["value"], bool) or not math.isfinite(target["value"]):
        raise UserError(
            f"{path}: study.target.value={target['value']!r} is not a finite number; give the error (in %) "
            f"to reach, e.g. value = 25.0"
        )
    if not isinstance(target.get("stop_after", 0), int) or target.get("stop_after", 0) < 0:
        raise UserError(
            f"{path}: study.target.stop_after must be a non-negative integer (epochs to go on after the target)"
        )
    if "stop_after" in target and target["metric"].startswith("test_"):
        raise UserError(
            f"{path}: study.target.stop_after with metric {target['metric']!r} would stop on the "
            f"test set; stop on val_top1_err_pct, or drop stop_after to only record the time to it"
        )
    return target


def _check_seeds(path: Path, where: str, seeds) -> None:
    if not (isinstance(seeds, list) and seeds and all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)):
        raise UserError(f"{path}: {where} must be a non-empty list of integers, got {seeds!r}")
    out_of_range = [s for s in seeds if not 0 <= s <= MAX_SEED]
    if out_of_range:  # now, not when a later stage makes its cells
        raise UserError(
            f"{path}: {where} has seed {out_of_range[0]}; seeds must be from 0 to 2**63-1 "
            f"(what torch.manual_seed takes), got {seeds!r}"
        )
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise UserError(
            f"{path}: {where} repeats seed {repeated[0]}; each seed must appear once "
            f"(a repeat would be the same run counted twice), got {seeds!r}"
        )


def _factor(path: Path, fname: str, spec) -> dict:
    """A factor as {"levels": {level name: overrides}, "baseline", "description"}; a list of
    levels names each by its value, and the baseline defaults to the first."""
    where = f"factors.{fname}."
    if not isinstance(spec, dict):
        raise UserError(f"{path}: factors.{fname} must be a table with levels")
    _check_keys(path, where, spec, FACTOR_KEYS)
    levels = spec.get("levels")
    if isinstance(levels, list) and levels:
        if "key" not in spec:
            raise UserError(
                f'{path}: {where}levels is a list, so {where}key must name the setting it varies (e.g. "knobs.activation")'
            )
        key = spec["key"]
        if key.split(".")[0] not in CONFIG_KEYS:
            raise UserError(
                f"{path}: {where}key={key!r} is not a configuration key; valid: {', '.join(sorted(CONFIG_KEYS))}"
            )
        names = [str(v) for v in levels]
        repeated = next((n for i, n in enumerate(names) if n in names[:i]), None)
        if repeated is not None:
            raise UserError(
                f"{path}: {where}levels lists {repeated!r} twice ({levels!r}); "
                f"each level is one arm of the study: list it once"
            )
        levels = {str(v): _set_path(key, v) for v in levels}
    elif isinstance(levels, dict) and levels:
        for lname, ov in levels.items():
            _check_overrides(path, f"{where}levels.{lname}.", ov)
    else:
        raise UserError(f"{path}: {where}levels must be a non-empty list or table")
    baseline = str(spec.get("baseline", next(iter(levels))))
    if baseline not in levels:
        raise UserError(f"{path}: {where}baseline={baseline!r} is not one of its levels: {', '.join(levels)}")
    return {"levels": levels, "baseline": baseline, "description": spec.get("description", "")}


def _exclude(path: Path, exclude, factors: dict) -> list[dict]:
    if not isinstance(exclude, list) or not all(isinstance(e, dict) and e for e in exclude):
        raise UserError(f"{path}: study.exclude must be a list of tables of factor = level")
    exclude = [{f: str(v) for f, v in e.items()} for e in exclude]
    for e in exclude:
        _check_levels(path, "study.exclude", factors, {f: [lv] for f, lv in e.items()})
    return exclude


def _check_only_keeps_baselines(path: Path, pname: str, prof: dict, factors: dict, design: str) -> None:
    """A one-at-a-time design varies each factor from the baseline: `only` must keep every baseline level."""
    if design != "one-at-a-time":
        return
    for f, kept in prof.get("only", {}).items():
        if factors[f]["baseline"] not in kept:
            raise UserError(
                f"{path}: profiles.{pname}.only leaves out {f}'s baseline level {factors[f]['baseline']!r}, "
                f'from which a one-at-a-time design varies every factor; keep it, or set study.design = "factorial"'
            )


def _check_profile(path: Path, pname: str, prof, factors: dict) -> None:
    """Validate [profiles.`pname`]; its `only` levels become strings in place."""
    if pname not in PROFILES:
        raise UserError(f"{path}: unknown profile {pname!r}; valid profiles: {', '.join(PROFILES)}")
    _check_overrides(path, f"profiles.{pname}.", prof, PROFILE_EXTRA_KEYS)
    if "seeds" in prof:
        _check_seeds(path, f"profiles.{pname}.seeds", prof["seeds"])
    if prof.get("measure", "quick") not in MEASURE_MODES:
        raise UserError(f"{path}: profiles.{pname}.measure must be one of: {', '.join(MEASURE_MODES)}")
    only = prof.get("only", {})
    if not isinstance(only, dict) or not all(isinstance(v, list) for v in only.values()):
        raise UserError(f"{path}: profiles.{pname}.only must be a table of factor = [levels]")
    prof["only"] = {f: [str(v) for v in lv] for f, lv in only.items()}
    if "tune_lr" in prof:
        grid = prof["tune_lr"]
        numbers = isinstance(grid, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in grid)
        if not (numbers and len(grid) >= 2 and all(0 < v < float("inf") for v in grid)):
            raise UserError(
                f"{path}: profiles.{pname}.tune_lr must be a list of at least two positive learning rates, "
                f"e.g. [0.0125, 0.025, 0.05], got {grid!r}"
            )
        if len(set(grid)) != len(grid):
            raise UserError(f"{path}: profiles.{pname}.tune_lr repeats a rate ({grid!r}); list each rate once")
        setting_lr = [
            f for f, spec in factors.items() if f == "lr" or any("lr" in ov for ov in spec["levels"].values())
        ]
        if setting_lr:
            raise UserError(
                f"{path}: profiles.{pname}.tune_lr tunes lr, which factor {setting_lr[0]!r} of this study already "
                f"sets; drop tune_lr, or the lr from that factor's levels"
            )
    if not isinstance(prof.get("data_follows_seed", False), bool):
        raise UserError(f"{path}: profiles.{pname}.data_follows_seed must be true or false")
    _check_levels(path, f"profiles.{pname}.only", factors, prof["only"])
    for fname, lv in prof.get("levels", {}).items():
        if fname not in factors:
            raise UserError(f"{path}: profiles.{pname}.levels.{fname}: no such factor; factors: {', '.join(factors)}")
        for lname, ov in lv.items():
            if lname not in factors[fname]["levels"]:
                raise UserError(
                    f"{path}: profiles.{pname}.levels.{fname}.{lname}: no such level; levels: {', '.join(factors[fname]['levels'])}"
                )
            _check_overrides(path, f"profiles.{pname}.levels.{fname}.{lname}.", ov)


def _check_resolved(study: StudyFile, pname: str) -> None:
    """What only a cell's merged settings show: a rate chosen on validation error needs a validation
    split; `data_follows_seed` sets every cell's data_seed, so one given too would be ignored."""
    prof = study.profiles[pname]
    for combo in study.combinations(pname):
        settings = study.settings(combo, pname)
        if "tune_lr" in prof and settings.get("val_size") == 0:
            raise UserError(
                f"{study.path}: profiles.{pname}.tune_lr chooses each arm's learning rate on the validation "
                f"error, and val_size = 0 leaves no validation split; set val_size above 0 (e.g. 1000), "
                f"or drop tune_lr"
            )
        if prof.get("data_follows_seed") and "data_seed" in settings:
            raise UserError(
                f"{study.path}: profiles.{pname}.data_follows_seed draws each cell's data from its seed, so "
                f"data_seed = {settings['data_seed']!r} would be ignored; drop one of the two"
            )


def _fastest_lr_per(path: Path, per, factors: dict, target: dict | None) -> list[str]:
    """study.fastest_lr_per, checked: factors of the study other than `lr`, each once, in a study with
    a factor `lr` and a target that is not a test metric; [] where absent."""
    if per is None:
        return []
    where = "study.fastest_lr_per"
    others = [f for f in factors if f != "lr"]
    example = "e.g. fastest_lr_per = [" + ", ".join(f'"{f}"' for f in others or ["activation"]) + "]"
    if not (isinstance(per, list) and per and all(isinstance(f, str) for f in per)):
        raise UserError(f"{path}: {where} must be a non-empty list of factor names, {example}; got {per!r}")
    for f in per:
        if f == "lr":
            raise UserError(
                f"{path}: {where} names 'lr', the factor whose level it chooses; list the factors the rate is "
                f"chosen per, {example}"
            )
        if f not in factors:
            raise UserError(
                f"{path}: {where} names {f!r}, which is not a factor of this study; factors: "
                f"{', '.join(factors) or 'none'}"
            )
    repeated = next((f for i, f in enumerate(per) if f in per[:i]), None)
    if repeated is not None:
        raise UserError(f"{path}: {where} lists {repeated!r} twice ({per!r}); list each factor once")
    if "lr" not in factors:
        raise UserError(
            f"{path}: {where} chooses a level of factor lr per combination of {', '.join(per)}, and this study "
            f'has no factor lr; add [factors.lr] with key = "lr" and the rates to try'
        )
    if target is None:
        raise UserError(
            f"{path}: {where} chooses the rate that reaches study.target in the fewest epochs, so it needs a "
            f'target; add one, e.g. target = {{ metric = "train_running_err_pct", value = 25.0 }}'
        )
    if target["metric"].startswith("test_"):
        raise UserError(
            f"{path}: {where} would choose each rate on the test set (study.target.metric = "
            f"{target['metric']!r}); choose on training or validation error, e.g. train_running_err_pct"
        )
    return list(per)


def _check_confirm(path: Path, pname: str, prof: dict, fastest_lr_per: list[str], seeds: list[int]) -> None:
    """`confirm_seeds` needs a rule to choose their rates by (`tune_lr` or `fastest_lr_per`), and new seeds."""
    if "confirm_seeds" not in prof:
        return
    where = f"profiles.{pname}.confirm_seeds"
    _check_seeds(path, where, prof["confirm_seeds"])
    if "tune_lr" not in prof and not fastest_lr_per:
        raise UserError(
            f"{path}: {where} runs more seeds at the learning rates the profile's seeds chose, and nothing says "
            f"how to choose them: add tune_lr = [...] to this profile (each arm's rate, on validation error), or "
            f"fastest_lr_per = [...] to [study] (per combination of those factors, the level of factor lr that "
            f"reaches study.target fastest)"
        )
    again = sorted(set(prof["confirm_seeds"]) & set(prof.get("seeds", seeds)))
    if again:
        raise UserError(
            f"{path}: {where} repeats seed {again[0]} of the profile's seeds; the chosen rates already "
            f"ran there, so give new seeds"
        )
