"""A sweep records its study's design beside the tables (study.json), and a resumed sweep records it again."""

from __future__ import annotations

import json

from bench.report.load import load
from bench.studies import STUDY_JSON, Design
from bench.sweep.runner import run_study
from bench.sweep.study import load_study
from tests.test_sweep import sweep_study, write_study


def test_a_sweep_records_its_design_and_a_finished_sweep_records_it_again(tmp_path):
    text = sweep_study("one-at-a-time", 1).replace("levels = [0.01, 0.02]", 'levels = [0.01, 0.02]\nbaseline = "0.02"')
    study = load_study(str(write_study(tmp_path, text=text)))
    out = tmp_path / "results"
    run_study(study, "smoke", out_root=out, progress=False)
    folder = out / "tiny" / "smoke"
    recorded = json.loads((folder / STUDY_JSON).read_text())
    assert (recorded["study"], recorded["profile"]) == ("tiny", "smoke")
    assert [(f["name"], f["levels"], f["baseline"]) for f in recorded["factors"]] == [
        ("activation", ["relu", "tanh"], "relu"),
        ("lr", ["0.01", "0.02"], "0.02"),
    ]
    assert Design.read(folder / STUDY_JSON) == study.design_at("smoke")

    (folder / STUDY_JSON).unlink()  # a folder swept before designs were recorded
    before = (folder / "runs.csv").read_text()
    run_study(study, "smoke", out_root=out, progress=False)  # every cell finished: nothing runs
    assert (folder / "runs.csv").read_text() == before
    assert Design.read(folder / STUDY_JSON) == study.design_at("smoke")
    sd = load(folder)
    assert sd.factors == ["activation", "lr"] and sd.baseline == {"activation": "relu", "lr": "0.02"}
    assert sd.levels == {"activation": ["relu", "tanh"], "lr": ["0.01", "0.02"]}
