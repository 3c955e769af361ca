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
  the device, which the schedule writes with `fill_` between replays (`set_lr`); a
  Python float would be baked into the captured kernels.
- Warm-up on a side stream before capture (cuDNN's and cuBLAS's workspace choices,
  the momentum buffers SGD creates on its first step).
- fp16's loss scaler branches on the host and is refused; bf16 and fp32 need none.

The step returns the batch's summed loss and correct count as the graph's output
tensors: read them before the next replay overwrites them (the loop synchronises
once per logging point, as it does eagerly).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from bench.errors import UserError
from bench.train.step import forward_loss

WARMUP_STEPS = 3  # eager steps on a side stream before capture: workspaces chosen, momentum buffers made


def graph_unavailable_reason(device: torch.device | str, dtype: str) -> str | None:
    """None when the whole step can be captured on `device` in `dtype`, otherwise why not."""
    device = torch.device(device)
    if device.type != "cuda":
        return f"whole-step CUDA graphs need a CUDA device, not {device.type}"
    if dtype == "fp16":
        return "fp16's loss scaler decides on the host whether to step, which a CUDA graph cannot replay; use bf16"
    return None


class GraphedStep:
    """`step(x, y)` replays the captured step on a batch; `set_lr(lr)` changes the lr inside the graph."""

    def __init__(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, dtype: str
    ):
        reason = graph_unavailable_reason(x.device, dtype)
        if reason is not None:
            raise UserError(reason)
        self.model, self.optimizer, self.dtype = model, optimizer, dtype
        for group in optimizer.param_groups:
            # SGD multiplies by a tensor lr on the device only on its one-tensor-at-a-time path and
            # when the lr requires grad; otherwise it reads the lr with .item(), a host sync, which
            # capture forbids. Launches do not matter inside a graph, so the slower path costs nothing.
            group["lr"] = torch.tensor(float(group["lr"]), device=x.device, requires_grad=True)
            group["foreach"] = False
        self.x, self.y = x.clone(), y.clone()  # the graph's input buffers
        # Warm-up trains; the run must start from the weights it was given, so they are put back.
        before = [t.detach().clone() for t in self._state()]
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
            for state in self.optimizer.state.values():
                if state.get("momentum_buffer") is not None:
                    # zero, not None: SGD's first step sets the buffer to the gradient, as 0.9 * 0 + g does
                    state["momentum_buffer"].zero_()

    def _state(self) -> list[torch.Tensor]:
        return [*self.model.parameters(), *self.model.buffers()]

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

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.shape != self.x.shape:
            raise ValueError(f"a captured step takes batches of {tuple(self.x.shape)}, got {tuple(x.shape)}")
        self.x.copy_(x, non_blocking=True)
        self.y.copy_(y, non_blocking=True)
        self.graph.replay()
        return self.loss_sum, self.correct
