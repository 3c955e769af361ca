"""Training: the run configuration, the one training step, the one loop, and the `train` command.

    config.py   TrainConfig: one frozen dataclass, validated, saved with every run
    step.py     train_step, the optimizer (weight decay on weights only, or on all), the fp16 loss scaler, autocast
    schedule.py learning-rate schedules, the paper's plateau rule
    target.py   progress points per epoch, the trailing-epoch mean, the interpolated crossing of a target
    loop.py     train (in memory) and run_training (into a run folder)
    hooks.py    what hangs off the loop: the Hook interface, LRN activity, plain callbacks
    distributed.py  data-parallel training under torchrun: process group, shards, DDP, rank-0 writes
    result.py   RunResult, its summary, and the run and sweep-cell statuses
    command.py  `python -m bench train`

Import from the modules: this package imports none of them, so that `bench.train.result`
and `bench.train.config` stay free of torch for the report and the study reader.
"""
