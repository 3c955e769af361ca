"""Fine-tuning: start a run from a checkpoint's weights, optionally with fixed features or a fresh head.

The classifier head of every model family is its last `nn.Linear` (AlexNet's fc8,
a ResNet's fc, LeNet's output layer; `head_of` checks that it has one output per
class); the features are everything else. `--freeze features` makes the features
a fixed function: their parameters get no gradients, and their modules stay in
eval mode while training, so BatchNorm normalises with the loaded statistics (and
keeps them) and dropout before the head is off. Only the head learns.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from bench.errors import UserError
from bench.models import create_model
from bench.train.checkpoint import Checkpoint, load_checkpoint
from bench.train.config import TrainConfig

log = logging.getLogger(__name__)


def head_of(model: nn.Module) -> tuple[str, nn.Linear]:
    """(name, module) of the classifier head: the model's last Linear layer."""
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise UserError(
            f"{type(model).__name__} has no Linear layer to serve as the classifier head; "
            f"--freeze features and --reinit-head need one"
        )
    return linears[-1]


def check_fits(cfg: TrainConfig, num_classes: int) -> Checkpoint | None:
    """Fail (UserError) unless `cfg.init_from`'s weights fit the run's model; run before anything is written.

    The model is built on the meta device: shapes only, no memory, no random draws.
    """
    if cfg.init_from is None:
        return None
    ckpt = load_checkpoint(cfg.init_from)
    with torch.device("meta"):
        model = create_model(cfg.model, num_classes=num_classes, init=cfg.init, **cfg.knobs)
    _loadable(model, ckpt, cfg)
    return ckpt


def apply_finetune(model: nn.Module, cfg: TrainConfig, classes: list[str]) -> nn.Module:
    """Apply `cfg`'s fine-tuning to a freshly built model: load `init_from`, keep a fresh head, freeze."""
    if cfg.init_from is not None:
        ckpt = load_checkpoint(cfg.init_from)
        state = _loadable(model, ckpt, cfg)
        missing, unexpected = model.load_state_dict(state, strict=not cfg.reinit_head)
        if cfg.reinit_head:  # strict, but for the head left as freshly initialised
            head = head_of(model)[0]
            if unexpected or any(not k.startswith(head + ".") for k in missing):
                raise UserError(
                    f"--init-from {cfg.init_from}: keys do not match beyond the head {head!r}: "
                    f"missing {missing[:3]}, unexpected {unexpected[:3]}"
                )
        elif list(ckpt.classes) != list(classes):
            log.warning(
                "--init-from %s: its classes (%s) are not this data's (%s); its head is kept: "
                "pass --reinit-head to start the head afresh",
                cfg.init_from,
                _short(ckpt.classes),
                _short(classes),
            )
    if cfg.freeze == "features":
        freeze_features(model)
    return model


def freeze_features(model: nn.Module) -> None:
    """Everything but the head: no gradients, and eval mode whenever the model runs (see module doc)."""
    head, _ = head_of(model)
    for name, p in model.named_parameters():
        if not name.startswith(head + "."):
            p.requires_grad_(False)
    for name, m in model.named_modules():
        is_head_or_above = name == head or head.startswith(name + ".") or name == ""
        if not is_head_or_above and not any(True for _ in m.children()):
            m.register_forward_pre_hook(_keep_eval)


def _keep_eval(module: nn.Module, args) -> None:
    module.training = False  # model.train() sets it back before every step; undo it before each use


def _loadable(model: nn.Module, ckpt: Checkpoint, cfg: TrainConfig) -> dict:
    """The checkpoint's weights to load into `model`: all of them, or all but the head's with reinit_head."""
    ours = model.state_dict()
    theirs = ckpt.state_dict
    missing = sorted(set(ours) - set(theirs))
    unexpected = sorted(set(theirs) - set(ours))
    if missing or unexpected:
        raise UserError(
            f"--init-from {cfg.init_from} holds a {ckpt.model_name} with knobs {ckpt.knobs}, whose layers do not "
            f"match {cfg.model} with knobs {cfg.knobs} (e.g. {(missing or unexpected)[0]!r}); pass "
            f"--model {ckpt.model_name} and the same knobs"
        )
    head = head_of(model)[0]
    if cfg.reinit_head:
        theirs = {k: v for k, v in theirs.items() if not k.startswith(head + ".")}
    for k, v in theirs.items():
        if tuple(v.shape) != tuple(ours[k].shape):
            layer, kind = k.rsplit(".", 1)
            shapes = f"layer {layer!r} ({kind}) is {list(v.shape)} in the checkpoint"
            if layer == head:
                raise UserError(
                    f"--init-from {cfg.init_from}: {shapes} ({len(ckpt.classes)} classes) but "
                    f"{list(ours[k].shape)} in the new model ({ours[head + '.weight'].shape[0]} "
                    f"classes); pass --reinit-head to start the classifier afresh"
                )
            raise UserError(
                f"--init-from {cfg.init_from}: {shapes} but {list(ours[k].shape)} in the new model; "
                f"pass the knobs it was trained with: {ckpt.knobs}"
            )
    return theirs


def _short(classes: list[str], n: int = 4) -> str:
    return ", ".join(classes[:n]) + (", ..." if len(classes) > n else "")
