"""What hangs off the training loop: one small interface, `Hook`, and the hooks every run has.

`bench.train.loop.train(hooks=[...])` calls each hook, in order, at four moments: the
run starts (the model built, before the first step), a progress point is logged (tens
per epoch), an epoch's history row is complete (a hook returning True ends training),
and the run has ended (its summary complete). Under torchrun every rank calls the hooks
it was given with the same row; the decision to stop is rank 0's. The run folder
(`bench.train.loop.RunFolder`), TensorBoard (`bench.train.tensorboard.EpochScalars`)
and a study's early stop (`bench.sweep.runner._Stopper`) are hooks; so are these:

    Hooks          several hooks as one
    LrnActivity    LRN activity on a fixed batch at init and after training, into the summary
    AddToSummary   fixed values (the data's provenance, the speed modes) into the summary
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from bench.data import Dataset
from bench.models.lrn import lrn_activity
from bench.train.result import RunResult

PROBE_IMAGES = 256  # the fixed validation batch on which LRN activity is measured, at init and after training


class Hook:
    """A no-op at every moment; a hook overrides the ones it needs."""

    def on_start(self, model: nn.Module, data: Dataset) -> None:
        """The model is built and on its device; no step has been taken."""

    def on_point(self, point: dict) -> None:
        """A progress point (`progress.csv`'s row) was logged."""

    def on_epoch_end(self, row: dict) -> bool | None:
        """An epoch's history row (`history.csv`'s row) is complete; True ends training."""

    def on_end(self, result: RunResult) -> None:
        """Training has ended; the hook may add to `result.summary`."""


class Hooks(Hook):
    """Several hooks as one: each is called in order, every one of them even after one has asked to stop."""

    def __init__(self, hooks: Iterable[Hook]):
        self.hooks = list(hooks)

    def on_start(self, model: nn.Module, data: Dataset) -> None:
        for hook in self.hooks:
            hook.on_start(model, data)

    def on_point(self, point: dict) -> None:
        for hook in self.hooks:
            hook.on_point(point)

    def on_epoch_end(self, row: dict) -> bool:
        return any([hook.on_epoch_end(row) for hook in self.hooks])

    def on_end(self, result: RunResult) -> None:
        for hook in self.hooks:
            hook.on_end(result)


class LrnActivity(Hook):
    """The summary's `lrn_*_init` and `lrn_*_final`: `lrn_activity` on the first `PROBE_IMAGES`
    validation images (fixed by the data seed), else clean-training ones; nothing for a model
    without LRN layers."""

    def on_start(self, model: nn.Module, data: Dataset) -> None:
        split = next((s for s in ("val", "train_eval") if data.has(s)), None)
        self.probe = next(iter(data.batches(split, PROBE_IMAGES)))[0] if split is not None else None
        self.init = self._measure(model, "_init")

    def on_end(self, result: RunResult) -> None:
        result.summary.update(self.init, **self._measure(result.model, "_final"))

    def _measure(self, model: nn.Module, suffix: str) -> dict:
        if self.probe is None:
            return {}
        return {k + suffix: v for k, v in lrn_activity(model, self.probe).items()}


class AddToSummary(Hook):
    """Fixed `values` added to the run's summary at its end."""

    def __init__(self, values: dict):
        self.values = values

    def on_end(self, result: RunResult) -> None:
        result.summary.update(self.values)
