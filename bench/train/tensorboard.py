"""Per-epoch history as TensorBoard scalars (optional: `pip install tensorboard`).

One TensorBoard run per training run, under `DIR/<name>`; each history.csv
column is a scalar of the same name, its step the epoch. The files in the run
folder stay the record: this is for watching runs side by side while they train.
"""

from __future__ import annotations

from pathlib import Path

from bench.errors import UserError
from bench.train.hooks import Hook

INSTALL = "pip install tensorboard (or pip install 'alexnet-bench[tb]')"


def summary_writer_class():
    """torch's SummaryWriter, or a UserError naming the package to install; call before training starts."""
    try:  # here, not at the top: tensorboard is optional, and only --tensorboard needs it
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch raises it when the tensorboard package is missing
        raise UserError(f"--tensorboard needs the tensorboard package: {INSTALL}") from None
    return SummaryWriter


class EpochScalars(Hook):
    """A hook (`train(hooks=...)`) writing each history row's numbers; `close()` when done."""

    def __init__(self, log_dir: Path, name: str, config_json: str | None = None):
        self._writer_class = summary_writer_class()  # fails now, before training, if tensorboard is missing
        self.log_dir, self.config_json = Path(log_dir) / name, config_json
        self.writer = None  # made at the first epoch: a run that fails to start leaves no TensorBoard run

    def on_epoch_end(self, row: dict) -> None:
        if self.writer is None:
            self.writer = self._writer_class(log_dir=str(self.log_dir))
            if self.config_json is not None:
                self.writer.add_text("config", f"```\n{self.config_json}\n```")
        step = int(row["epoch"])
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(key, value, step)
        self.writer.flush()  # an epoch is seconds to hours: show it now

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
