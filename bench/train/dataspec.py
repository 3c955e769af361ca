"""The data set a run configuration asks for: `TrainConfig` -> `bench.data.DataSpec`.

Its own module because the loop, checkpoints (re-loading a run's data), evaluation and
the sweep all need it, and the loop imports checkpoints.
"""

from __future__ import annotations

from bench.data import DataSpec
from bench.models import crop_from_of, input_size_of
from bench.train.config import TrainConfig


def data_spec(cfg: TrainConfig) -> DataSpec:
    return DataSpec(
        source=cfg.data,
        root=cfg.data_root,
        image_size=crop_from_of(cfg.model) or input_size_of(cfg.model),
        crop_size=input_size_of(cfg.model) if crop_from_of(cfg.model) else None,
        train_per_class=cfg.train_per_class,
        test_per_class=cfg.test_per_class,
        preprocess=cfg.preprocess,
        explicit_image_size=cfg.image_size,
        val_size=cfg.val_size,
        train_eval_size=cfg.train_eval_size,
        data_seed=cfg.data_seed,
    )
