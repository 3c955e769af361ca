"""What predict and evaluate share: the checkpoint's model on a device, inputs prepared as in training, top-k."""

from __future__ import annotations

import torch
from torch import nn

from bench.device import pick_device
from bench.train.checkpoint import Checkpoint, load_checkpoint


def load_model(path, device: str = "auto") -> tuple[Checkpoint, nn.Module, torch.device]:
    """The checkpoint (or run folder's), its model in eval mode on `device`, and that device."""
    dev = pick_device(device)  # an absent device fails before reading the weights
    ckpt = load_checkpoint(path)
    return ckpt, ckpt.build_model().to(dev), dev


def top_k(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(probabilities, class indices) of the `k` likeliest classes per row, likeliest first."""
    probs = torch.softmax(logits.float(), dim=1)
    return probs.topk(min(k, logits.shape[1]), dim=1)
