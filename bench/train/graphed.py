"""The whole training step as one CUDA graph: forward, loss, backward, SGD and the lr it uses.

A small net at batch 128 spends most of its step launching kernels: the four-layer
CIFAR net ran 2.74 ms a step on an H100 for 9.5 GFLOP, about 0.35% of the chip's
bf16 peak. Capturing the step once and replaying it launches the whole step as one
graph. Compiling the model alone (`reduce-overhead`) leaves the backward's and the
optimizer's launches outside; here all of it is inside, as in PyTorch's "whole
network capture" recipe (torch.cuda.graphs docs).

What a graph needs, and how this provides it:

- Static inputs: the graph reads the batch from fixed buffers; each step copies its
  batch into them on the device (the data path stays on the GPU: a device-to-device
  copy, no host transfer).
- A learning rate that can change: every param group's `lr` becomes a 0-d tensor on
  the device (`capturable_lrs`), which the schedules write in place between replays
  (`bench.train.schedule.LrSchedule`, or `set_lr`); a Python float would be baked into
  the captured kernels. `release` puts floats back, so the optimizer ends as it was
  given, at the schedule's current rate.
- Warm-up on a side stream before capture (cuDNN's and cuBLAS's workspace choices,
  the momentum buffers SGD creates on its first step), then undone: the weights,
  buffers and momentum are put back as they were.
- fp16's loss scaler branches on the host and is refused; bf16 and fp32 need none.

The step returns the batch's summed loss and correct count as the graph's output
tensors: read them before the next replay overwrites them (the loop synchronises
once per logging point, as it does eagerly).

In training (`graph = true`, `Stepper`) a captured step takes batches of one shape
only. The last batch of an epoch is short whenever the training set is not a multiple
of the batch (45,000 images at batch 128 leave 72): it runs as an ordinary eager step
on the same model and optimizer, so a graphed run sees every image of every epoch,
exactly as an eager run of the same configuration does, and only the speed differs.
Dropping it instead would change the data each epoch trains on (and the running
error's denominator) for one step in 352. The summary records the choice
(`graph_partial_batch`) and the counts of replayed and eager steps.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from bench.errors import UserError
from bench.train.modes import graph_unavailable_reason
from bench.train.step import forward_loss, train_step

__all__ = ["GraphedStep", "Stepper", "capturable_lrs", "graph_unavailable_reason", "lr_value"]

WARMUP_STEPS = 3  # eager steps on a side stream before capture: workspaces chosen, momentum buffers made
PARTIAL_BATCH = "eager"  # what a graphed run does with an epoch's short last batch (see the module docstring)


def capturable_lrs(optimizer: torch.optim.Optimizer, device: torch.device | str) -> Callable[[], None]:
    """Make each param group's lr a 0-d tensor on `device` that SGD reads there; returns the undo.

    SGD multiplies by a tensor lr on the device only on its one-tensor-at-a-time path and
    when the lr requires grad; otherwise it reads the lr with .item(), a host sync, which
    capture forbids. Launches do not matter inside a graph, so the slower path costs nothing.
    A schedule then writes the tensor in place (under no_grad: it is a leaf that requires
    grad). The undo puts a float back, at the tensor's current value, and the group's
    `foreach` as it was.
    """
    groups = optimizer.param_groups
    foreach = [g.get("foreach") for g in groups]
    for g in groups:
        g["lr"] = torch.tensor(float(g["lr"]), device=device, requires_grad=True)
        g["foreach"] = False

    def restore() -> None:
        for g, was in zip(groups, foreach):
            g["lr"] = lr_value(g["lr"])
            g["foreach"] = was

    return restore


def lr_value(lr: float | torch.Tensor) -> float:
    """A param group's lr as a float, a tensor one (a graphed run's) included: one host sync."""
    return float(lr.detach()) if isinstance(lr, torch.Tensor) else float(lr)


class GraphedStep:
    """`step(x, y)` replays the captured step on a batch; `set_lr(lr)` changes the lr inside the graph;
    `release()` gives the optimizer back with float learning rates."""

    def __init__(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, dtype: str
    ):
        reason = graph_unavailable_reason(x.device, dtype)
        if reason is not None:
            raise UserError(reason)
        self.model, self.optimizer, self.dtype = model, optimizer, dtype
        self._restore_lrs = capturable_lrs(optimizer, x.device)
        self._lrs = [g["lr"] for g in optimizer.param_groups]  # the tensors the graph reads
        self.x, self.y = x.clone(), y.clone()  # the graph's input buffers
        # Warm-up trains; the run must start from the weights and momentum it was given, so they are put back.
        before = [t.detach().clone() for t in self._state()]
        momentum = self._momentum_buffers()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                self._eager_step()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        self.optimizer.zero_grad(set_to_none=True)  # the backward inside the graph allocates from its pool
        with torch.cuda.graph(self.graph):
            self.loss_sum, self.correct = self._eager_step(zero_grad=False)
        with torch.no_grad():  # in place: the graph holds these tensors' addresses
            for t, saved in zip(self._state(), before):
                t.copy_(saved)
            for p, state in self.optimizer.state.items():
                buf = state.get("momentum_buffer")
                if buf is None:
                    continue
                if id(p) in momentum:
                    buf.copy_(momentum[id(p)])
                else:
                    # made by the warm-up: zeroed, not removed (the graph holds it); SGD without
                    # dampening then takes its first step as with none, 0.9 * 0 + g = g
                    buf.zero_()

    def _state(self) -> list[torch.Tensor]:
        return [*self.model.parameters(), *self.model.buffers()]

    def _momentum_buffers(self) -> dict:
        return {
            id(p): s["momentum_buffer"].detach().clone()
            for p, s in self.optimizer.state.items()
            if s.get("momentum_buffer") is not None
        }

    def _eager_step(self, zero_grad: bool = True):
        self.model.train()
        if zero_grad:
            self.optimizer.zero_grad(set_to_none=True)
        logits, loss = forward_loss(self.model, self.x, self.y, self.dtype)
        loss.backward()
        self.optimizer.step()
        with torch.no_grad():
            return loss.detach() * self.y.numel(), (logits.argmax(1) == self.y).sum()

    def set_lr(self, lr: float, group: int | None = None) -> None:
        groups = self.optimizer.param_groups if group is None else [self.optimizer.param_groups[group]]
        with torch.no_grad():
            for g in groups:
                g["lr"].fill_(lr)

    def release(self) -> None:
        """Give the optimizer back as it was given (float learning rates, at their current values); the
        graph is gone, and a later call raises."""
        if self.graph is not None:
            self._restore_lrs()
            self.graph = None

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.graph is None:
            raise RuntimeError("this captured step was released")
        if x.shape != self.x.shape:
            raise ValueError(f"a captured step takes batches of {tuple(self.x.shape)}, got {tuple(x.shape)}")
        if any(g["lr"] is not t for g, t in zip(self.optimizer.param_groups, self._lrs)):
            # a scheduler that assigns a float instead of writing the tensor would leave the graph at the old rate
            raise RuntimeError(
                "a param group's lr tensor was replaced, not written in place; the captured step cannot see it"
            )
        self.x.copy_(x, non_blocking=True)
        self.y.copy_(y, non_blocking=True)
        self.graph.replay()
        return self.loss_sum, self.correct


class Stepper:
    """The training loop's step: `train_step`, or with `graph` a captured step replayed for every full
    batch (captured at the first one) and an eager step for a short one (see the module docstring).

    `make_graphed` builds the captured step (default `GraphedStep`, looked up when needed, so that a test
    can stand in for it on the CPU). `close()` releases it, giving the optimizer back with float
    learning rates.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        batch_size: int,
        dtype: str,
        scaler: torch.amp.GradScaler | None = None,
        graph: bool = False,
        make_graphed=None,
    ):
        self.net, self.optimizer, self.batch_size, self.dtype, self.scaler = net, optimizer, batch_size, dtype, scaler
        self.graph, self.make_graphed = graph, make_graphed
        self.graphed = None
        self.replays = self.eager_steps = 0

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.graph or len(y) != self.batch_size:
            self.eager_steps += 1
            return train_step(self.net, self.optimizer, x, y, dtype=self.dtype, scaler=self.scaler)
        if self.graphed is None:
            make = self.make_graphed or GraphedStep
            self.graphed = make(self.net, self.optimizer, x, y, self.dtype)
        self.replays += 1
        return self.graphed(x, y)

    def facts(self) -> dict:
        """What the run's summary records of a graphed run; nothing for an eager one."""
        if not self.graph:
            return {}
        return {
            "graph_partial_batch": PARTIAL_BATCH,
            "graph_replays": self.replays,
            "graph_eager_steps": self.eager_steps,
        }

    def close(self) -> None:
        if self.graphed is not None:
            self.graphed.release()
