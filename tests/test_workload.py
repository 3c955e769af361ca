"""The one timed subject (`bench.measure.workload`) and the worker process that times it a round at a time
(`bench.measure.worker`): what each builds, and the protocol `gate --against` and `measure --packs` share."""

from __future__ import annotations

import json

import pytest
import torch

from bench.errors import UserError
from bench.measure import worker
from bench.measure.workload import DATASET_BATCHES, Workload, spec
from bench.models import create_model, list_models
from bench.train.config import TrainConfig

CPU = torch.device("cpu")


def test_a_workload_is_built_from_a_config_and_leaves_the_caller_and_the_rng_as_they_were():
    config = TrainConfig(model="lenet5", device="cpu", batch_size=4, channels_last=True, lr=0.05, momentum=0.5)
    model = create_model("lenet5")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = torch.get_rng_state()
    work = Workload(config, model=model)
    assert torch.equal(torch.get_rng_state(), state)  # seeded apart: a sweep's randomness is not moved
    assert work.x.shape == (4, 3, 32, 32) and work.x.is_contiguous(memory_format=torch.channels_last)
    assert work.optimizer.param_groups[0]["lr"] == 0.05 and work.optimizer.param_groups[0]["momentum"] == 0.5
    work.train(2)
    work.infer(1)
    work.infer(1, images=1)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # trained a copy
    again = Workload(config)  # built by name, from the same seed: the same weights and batch
    assert torch.equal(Workload(config).x, again.x)
    assert all(torch.equal(a, b) for a, b in zip(Workload(config).model.parameters(), again.model.parameters()))
    with pytest.raises(ValueError, match="batches 'disk'"):
        Workload(config, batches="disk")


@pytest.mark.parametrize("model, side", [("alexnet", 32), ("cifar-conv-local", 24)])
def test_dataset_batches_are_drawn_normalised_and_augmented_like_training(model, side):
    if model not in list_models():
        pytest.skip(f"{model} is not registered")
    config = TrainConfig(model=model, knobs={"width": 0.125} if model == "alexnet" else {}, device="cpu",
                         batch_size=4, channels_last=True, augment="crop+flip")  # fmt: skip
    work = Workload(config, batches="dataset")
    drawn = [next(work._drawn) for _ in range(DATASET_BATCHES + 1)]
    for xb, yb in drawn:
        assert xb.shape == (4, 3, side, side) and xb.dtype == torch.float32 and yb.shape == (4,)
        assert xb.is_contiguous(memory_format=torch.channels_last)
    assert abs(float(torch.cat([b for b, _ in drawn]).mean())) < 0.5  # normalised, not 0-255
    assert not torch.equal(drawn[0][0], drawn[1][0])  # new images each step, not one fixed batch
    assert Workload(config)._drawn is None  # fixed: the one batch


# ---------------------------------------------------------------- the worker's protocol, in process


class _Recorded:
    """A workload whose steps are recorded, not run: the worker's calls in order."""

    def __init__(self):
        self.calls: list[int] = []

    def __call__(self, n: int) -> None:
        self.calls.append(n)


def _serve(requests: list[dict]) -> tuple[list[dict], list[int]]:
    run = _Recorded()
    replies: list[dict] = []
    lines = iter([json.dumps(r) for r in requests])
    worker.serve(lines, replies.append, build=lambda spec: (run, CPU, 8))
    return replies, run.calls


def test_every_timed_round_follows_an_untimed_re_warming():
    """Rounds of 4 steps (sized by `round_steps`, so no clock decides), each after ceil(4 x REWARM) untimed ones."""
    setup = {"setup": {"config": {}, "phase": "train", "timing": {"warmup_steps": 3, "round_steps": 4}}}
    replies, calls = _serve([setup, {"round": {}}, {"round": {}}, {"round": {"steps": 8}}])
    assert replies[0] == {"images_per_round": 32, "steps_per_round": 4}
    assert all(r["seconds"] >= 0 for r in replies[1:])
    assert calls == [1, 1, 1, 1, 4, 1, 4, 2, 8]  # warm-up steps one by one, then (re-warm, round) per round


def test_a_barrier_round_starts_its_clock_on_go_and_a_bad_request_is_an_error_reply():
    setup = {"setup": {"config": {}, "phase": "train", "timing": {"round_steps": 2}}}
    replies, calls = _serve([setup, {"round": {"barrier": True}}, {"go": True}, {"round": {"barrier": True}},
                             {"round": {}}, {"nothing": 1}])  # fmt: skip
    assert replies[1] == {"ready": True} and "seconds" in replies[2]
    assert replies[3] == {"ready": True} and "a barrier round waits for" in replies[4]["error"]
    assert replies[5]["error"].startswith("ValueError: unknown request")
    replies, _ = _serve([{"round": {}}])
    assert replies == [{"error": "ValueError: a round was asked for before any setup"}]


# ---------------------------------------------------------------- a real worker process


def test_a_worker_process_answers_by_its_protocol():
    config = TrainConfig(model="lenet5", device="cpu", batch_size=4)
    w = worker.Worker()
    try:
        assert w.hello == {"protocol": worker.PROTOCOL}
        assert w.ask(environment="cpu")["device"] == "cpu"
        with pytest.raises(worker.WorkerFailed, match="a round was asked for before any setup"):
            w.ask(round={})
        with pytest.raises(worker.WorkerFailed, match="'nope'"):
            w.ask(setup=spec(TrainConfig(model="nope", device="cpu"), "train"))
        setup = w.ask(setup=spec(config, "infer", timing={"round_steps": 2}))
        assert setup == {"images_per_round": 8, "steps_per_round": 2}
        assert w.ask(round={"threads": 1})["seconds"] > 0
    finally:
        w.close()
    assert w.process.returncode == 0


def test_a_worker_of_another_protocol_or_that_dies_is_one_line(tmp_path):
    """Stand-in packages (a worker runs its tree's code): one speaks protocol 1, one dies at start."""
    for name, code in (("old", "print('{\"protocol\": 1}', flush=True)\n"), ("dead", "raise SystemExit(3)\n")):
        (tmp_path / name / "bench" / "measure").mkdir(parents=True)
        for init in ("bench/__init__.py", "bench/measure/__init__.py"):
            (tmp_path / name / init).write_text("")
        (tmp_path / name / "bench" / "measure" / "worker.py").write_text(code)
    old, dead = worker.Worker(tmp_path / "old", "an old commit"), worker.Worker(tmp_path / "dead", "a broken one")
    try:
        with pytest.raises(
            UserError, match=f"the worker of an old commit speaks protocol 1, this one {worker.PROTOCOL}"
        ):
            assert old.hello is None  # never reached: reading it raises
        with pytest.raises(worker.WorkerFailed, match="exited with status 3"):
            dead.ask(environment="cpu")
    finally:
        old.close()
        dead.close()
