"""Self-contained checkpoints: the weights and everything it takes to use them.

Beside the weights, a checkpoint holds the class names, the normalisation (mode
and statistics, fitted on the training split), the input size, the model's name,
knobs and init, the data source's provenance, the metrics at save time, the
resolved config, the format version and the versions that wrote it. `predict`,
`evaluate` and `train --init-from` need nothing else: no run folder, no data.

Everything in the file is a tensor or a plain value (str, int, float, bool, None,
list, dict), so it is read with `torch.load(weights_only=True)`, which never runs
pickled code: a file carrying any other pickled object is refused. Tensors are
saved on the CPU, so a checkpoint written on a GPU loads on a CPU-only machine.

    python -m bench.train.checkpoint OLD.pt [--data SOURCE]   # re-save an old checkpoint
"""

from __future__ import annotations

import argparse
import json
import pickle
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

import bench
from bench.data import Dataset, load_data
from bench.data.augment import PREPROCESS, Normalizer
from bench.env import git_commit
from bench.errors import UserError
from bench.io import atomic_write
from bench.models import create_model
from bench.train.config import TrainConfig
from bench.train.dataspec import data_spec

FORMAT_VERSION = 1
FILENAME = "checkpoint.pt"  # inside a run folder
_NORMALIZER_TENSORS = ("mean", "std", "pca_eigval", "pca_eigvec")
_KEYS = ("format_version", "state_dict", "model", "classes", "normalization", "data", "metrics", "config", "versions")


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint: build the model with `build_model`, prepare images with `normalizer`."""

    path: Path
    model_name: str
    knobs: dict
    init: str
    input_size: int  # side of the square images the model was trained on
    classes: list[str]
    normalizer: Normalizer
    state_dict: dict = field(repr=False)
    data: dict  # the training data's provenance (source, path, split sizes, conversion)
    metrics: dict  # the run's summary when saved (final and best test error, ...)
    config: dict  # the resolved TrainConfig, as a dict
    versions: dict  # torch, bench, python, git commit, save time
    format_version: int = FORMAT_VERSION

    def build_model(self) -> nn.Module:
        """The model with these weights, on the CPU, in eval mode."""
        try:
            model = create_model(self.model_name, num_classes=len(self.classes), init=self.init, **self.knobs)
        except (UserError, ValueError, TypeError) as e:  # a builder's own check of a knob value raises ValueError
            raise UserError(f"{self.path}: {e}; {_EDITED}") from None
        _check_weights(self.path, model, self.state_dict, f"{self.model_name} with {len(self.classes)} classes")
        model.load_state_dict(self.state_dict)
        return model.eval()

    def train_config(self) -> TrainConfig:
        return TrainConfig.from_dict(self.config, where=f"the config in {self.path}")


def checkpoint_path(path: Path | str) -> Path:
    """A run folder means its checkpoint.pt; a missing file is a UserError."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / FILENAME
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}; pass a run folder (holding {FILENAME}) or a .pt file")
    return path


def save_checkpoint(path: Path | str, model: nn.Module, cfg: TrainConfig, data: Dataset, metrics: dict) -> Path:
    """Write a self-contained checkpoint whole (temporary file, then rename); returns its path."""
    norm = data.normalizer
    payload = {
        "format_version": FORMAT_VERSION,
        # contiguous(): a channels_last run's weights load into a model of either layout
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
        "model": {
            "name": cfg.model,
            "knobs": _plain(cfg.knobs),
            "init": cfg.init,
            "input_size": int(data.train_x.shape[-1]),
            "num_classes": len(data.classes),
        },
        "classes": [str(c) for c in data.classes],
        "normalization": {"mode": norm.mode, **{k: getattr(norm, k).detach().cpu() for k in _NORMALIZER_TENSORS}},
        "data": _plain(data.provenance),
        "metrics": _plain(metrics),
        "config": _plain(cfg.to_dict()),
        "versions": _plain(
            {
                "bench": bench.__version__,
                "torch": str(torch.__version__),  # a str subclass
                "python": sys.version.split()[0],
                "git_commit": git_commit(),
                "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
        ),
    }
    path = Path(path)
    _atomic_save(payload, path)
    return path


def load_checkpoint(path: Path | str) -> Checkpoint:
    """Read a checkpoint (or a run folder's) on the CPU; anything but a current-format checkpoint is a UserError."""
    path = checkpoint_path(path)
    raw = _read(path)
    if not isinstance(raw, dict):
        raise UserError(f"{path} is not a bench checkpoint (it holds a {type(raw).__name__}, not a dict)")
    if "format_version" not in raw and {"model", "config"} <= set(raw):
        raise UserError(
            f"{path} predates self-contained checkpoints (weights and config only, no class names or "
            f"normalisation); re-save it with: python -m bench.train.checkpoint {path}"
        )
    version = raw.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise UserError(
            f"{path} has checkpoint format {version!r}; this bench {bench.__version__} reads "
            f"format {FORMAT_VERSION} and older: upgrade bench"
        )
    missing = [k for k in _KEYS if k not in raw]
    if missing:
        raise UserError(f"{path} is not a complete bench checkpoint (no {', '.join(missing)}); re-run training")
    _check_fields(path, raw)
    m, n = raw["model"], raw["normalization"]
    return Checkpoint(
        path=path,
        model_name=m["name"],
        knobs=dict(m["knobs"]),
        init=m["init"],
        input_size=int(m["input_size"]),
        classes=list(raw["classes"]),
        normalizer=Normalizer(n["mode"], *(n[k] for k in _NORMALIZER_TENSORS)),
        state_dict=raw["state_dict"],
        data=raw["data"],
        metrics=raw["metrics"],
        config=raw["config"],
        versions=raw["versions"],
        format_version=version,
    )


_EDITED = "it was edited or damaged: copy it again from its run folder, or train again"


def _check_fields(path: Path, raw: dict) -> None:
    """`UserError` naming the first field that `load_checkpoint` and `build_model` could not use as saved."""

    def refuse(what: str):
        raise UserError(f"{path} {what}; {_EDITED}")

    def whole(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 1

    for key in ("model", "normalization", "state_dict", "data", "metrics", "config", "versions"):
        if not isinstance(raw[key], dict):
            refuse(f"has {key} {type(raw[key]).__name__}, not a table")
    m, n, classes = raw["model"], raw["normalization"], raw["classes"]
    for key, kind in (("name", str), ("init", str), ("knobs", dict)):
        if key not in m:
            refuse(f"has no model.{key}")
        if not isinstance(m[key], kind):
            refuse(f"has model.{key}={m[key]!r}, not a {kind.__name__}")
    if not whole(m.get("input_size")):
        refuse(f"has model.input_size={m.get('input_size')!r}, not a whole number of pixels")
    if not (isinstance(classes, list) and len(classes) >= 2 and all(isinstance(c, str) for c in classes)):
        refuse(f"has classes={str(classes)[:60]}, not a list of two or more class names")
    if "num_classes" in m and m["num_classes"] != len(classes):
        refuse(f"lists {len(classes)} class names, but its model has {m['num_classes']!r} outputs (model.num_classes)")
    if n.get("mode") not in PREPROCESS:
        refuse(f"has normalization.mode={n.get('mode')!r}, not one of {', '.join(PREPROCESS)}")
    side = m["input_size"]
    shapes = {
        "mean": [(3, 1, 1)] if n["mode"] == "standardize" else [(3, side, side)],
        "std": [(3, 1, 1)],
        "pca_eigval": [(3,)],
        "pca_eigvec": [(3, 3)],
    }
    for key, fits in shapes.items():
        value = n.get(key)
        if not (isinstance(value, torch.Tensor) and value.is_floating_point() and tuple(value.shape) in fits):
            got = list(value.shape) if isinstance(value, torch.Tensor) else repr(value)[:40]
            refuse(f"has normalization.{key} {got}, not a float tensor of shape {list(fits[0])}")
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in raw["state_dict"].items()):
        refuse("has a state_dict that is not layer names to tensors")


def _check_weights(path: Path, model: nn.Module, weights: dict, what: str) -> None:
    """`UserError` unless `weights` has exactly `model`'s entries, shape for shape, naming the first misfit."""
    ours = model.state_dict()
    misfits = [f"no {k}" for k in ours if k not in weights]
    misfits += [f"{k} is not a layer of the model" for k in weights if k not in ours]
    misfits += [
        f"{k} is {list(v.shape)} in the checkpoint, {list(ours[k].shape)} in the model"
        for k, v in weights.items()
        if k in ours and v.shape != ours[k].shape
    ]
    if misfits:
        more = f" (and {len(misfits) - 1} more)" if len(misfits) > 1 else ""
        raise UserError(f"{path}: its weights do not fit {what}: {misfits[0]}{more}; {_EDITED}")


def _read(path: Path):
    _check_magic(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if found:
            raise UserError(
                f"{path} carries a pickled Python object ({found.group(1)}), not only tensors and plain "
                f"values; refused, as unpickling it could run code: re-save it with save_checkpoint"
            ) from None
        raise UserError(_unreadable(path, e)) from None
    except Exception as e:  # noqa: BLE001 - a damaged file fails the unpickler in many ways (KeyError, IndexError, ...)
        raise UserError(_unreadable(path, e)) from None


def _check_magic(path: Path) -> None:
    """`UserError` for a file that does not start as torch.save writes (a zip archive, or a pickle before torch 1.6)."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as e:
        raise UserError(f"cannot read {path} ({e.strerror or type(e).__name__}); pass a readable checkpoint") from None
    if not head:
        raise UserError(f"{path} is empty (0 bytes), not a checkpoint; it may have been cut short: copy it again")
    if not head.startswith((b"PK\x03\x04", b"\x80")):
        raise UserError(
            f"{path} is not a PyTorch checkpoint (it begins {head!r}, not as a file torch.save wrote); "
            f"pass a run folder or the checkpoint.pt it holds"
        )


def _unreadable(path: Path, e: Exception) -> str:
    first = (str(e).strip().splitlines() or [""])[0][:120]
    return (
        f"{path} is not a readable PyTorch checkpoint ({type(e).__name__}: {first}); it may be truncated: copy it again"
    )


def _plain(obj):
    """Only str/int/float/bool/None/list/dict, as weights_only loading allows: anything else becomes its str."""
    return json.loads(json.dumps(obj, default=str))


def _atomic_save(payload: dict, path: Path) -> None:
    atomic_write(path, lambda f: torch.save(payload, f), binary=True)


# --- re-saving a checkpoint written before this format --------------------------------


def upgrade_checkpoint(path: Path | str, data: str | None = None, data_root: str | None = None) -> Path:
    """Re-save an old {"model", "config"} checkpoint in place, self-contained.

    The class names and normalisation come from reading its training data again
    (`data`/`data_root` override the config's, e.g. for a run made on another
    machine); the normalisation is fitted on the same training split, so it is the
    one the model was trained with. The metrics come from summary.json beside it.
    """
    path = checkpoint_path(path)
    raw = _read(path)
    if not (isinstance(raw, dict) and "format_version" not in raw and {"model", "config"} <= set(raw)):
        raise UserError(f"{path} is not an old-format checkpoint (a dict of 'model' and 'config'); nothing to do")
    cfg = TrainConfig.from_dict(raw["config"], where=f"the config in {path}")
    cfg = cfg.replace(data=data or cfg.data, data_root=data_root or cfg.data_root)
    dataset = load_data(data_spec(cfg))
    model = create_model(cfg.model, num_classes=len(dataset.classes), init=cfg.init, **cfg.knobs)
    try:
        model.load_state_dict(raw["model"])
    except RuntimeError as e:
        raise UserError(
            f"{path}: its weights do not fit {cfg.model} with the {len(dataset.classes)} classes of "
            f"{cfg.data} ({str(e).splitlines()[0]}); pass the --data it was trained on"
        ) from None
    summary = path.parent / "summary.json"
    metrics = json.loads(summary.read_text()) if summary.is_file() else {}
    return save_checkpoint(path, model, cfg, dataset, metrics)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.train.checkpoint",
        description="re-save an old checkpoint (weights and config only) self-contained",
    )
    p.add_argument("checkpoint", help="old checkpoint.pt, or the run folder holding it")
    p.add_argument("--data", default=None, help="its training data, if not where its config says")
    p.add_argument("--data-root", default=None, help="folder holding cifar-10-batches-py/, if not the config's")
    args = p.parse_args(argv)
    try:
        out = upgrade_checkpoint(args.checkpoint, args.data, args.data_root)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"re-saved {out} as a self-contained checkpoint (format {FORMAT_VERSION})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
