"""The throughput suite's pytest plugin: its options, its cases, and the device and versions in every saved run.

`python -m bench gate` loads it into the pytest it starts (`-p bench.gate.plugin`)
to run `bench.gate.throughput_suite`. The options are the gate's
(`bench.gate.options.OPTIONS`), each with the prefix `--bench-` here so that it
cannot meet one of pytest's: `--bench-quick`, `--bench-dtype`,
`--[no-]bench-channels-last`, `--bench-batches`, `--bench-batch-size`,
`--bench-width`, `--bench-rounds`, `--bench-model`, `--bench-inject-slowdown`,
and `--bench-device` (auto | cpu | cuda | cuda:N | mps; the gate passes its own
`--device`). `python -m bench gate --help` says what each does.
"""

from __future__ import annotations

import pytest
import torch

from bench.device import pick_device
from bench.env import environment
from bench.errors import UserError
from bench.gate.options import DEVICE, OPTIONS, prefixed, values_of
from bench.gate.suite import cases, device_id, options_from
from bench.measure.timing import release_memory

_OPTIONS = pytest.StashKey()


def pytest_addoption(parser):
    group = parser.getgroup("bench", "throughput suite (bench.gate)")
    for flag, spec in OPTIONS.items():
        group.addoption(prefixed(flag), **spec)
    group.addoption(prefixed(DEVICE), default="auto", help="auto | cpu | cuda | cuda:N | mps (default auto)")


def pytest_configure(config):
    try:
        config.stash[_OPTIONS] = options_from(
            values_of(config.option, in_pytest=True), pick_device(config.option.bench_device)
        )
        cases(config.stash[_OPTIONS])  # a model pattern that matches nothing fails here
    except (UserError, ValueError) as exc:  # one line, not a traceback
        raise pytest.UsageError(str(exc)) from None


def suite_options(config):
    """The resolved `bench.gate.suite.Options` of this session."""
    return config.stash[_OPTIONS]


@pytest.fixture(scope="session")
def options(pytestconfig):
    """The resolved `bench.gate.suite.Options`."""
    return suite_options(pytestconfig)


def pytest_generate_tests(metafunc):
    """Every test taking `case` runs once per case of `bench.gate.suite.cases`, named by its id."""
    if "case" in metafunc.fixturenames:
        chosen = cases(suite_options(metafunc.config))
        metafunc.parametrize("case", chosen, ids=[c.id for c in chosen])


def pytest_benchmark_update_machine_info(config, machine_info):
    """Device, versions (GPU name, driver, CUDA, cuDNN, torch, torchvision) and threads, and the suite's settings.

    `bench.gate` reads `machine_info["bench"]` to refuse a baseline from another
    device or measured at other settings. The thread count comes from the
    environment (OMP_NUM_THREADS, else one per core): it is part of what is measured.
    """
    options = suite_options(config)
    env = environment(options.device)
    machine_info["bench"] = {"device_id": device_id(env), "environment": env, "settings": options.recorded()}


@pytest.fixture(autouse=True)
def _release_memory(options):
    """Each benchmark starts with the memory the last one freed returned (CUDA's cache emptied)."""
    yield
    release_memory(torch.device(options.device))
