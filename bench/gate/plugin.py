"""The throughput suite's pytest plugin: its options, its cases, and the device and versions in every saved run.

`python -m bench gate` loads it into the pytest it starts (`-p bench.gate.plugin`) to
run `bench.gate.throughput_suite`, and hands it the suite's options as one JSON
object, `--bench-options`: the keyword arguments of `bench.gate.suite.resolve_options`
(`{"device": "cpu", "quick": true, "models": "lenet5"}`), resolved here by the same
function as in the gate, so that both resolve them alike. By hand:
`python -m pytest -p bench.gate.plugin --pyargs bench.gate.throughput_suite --benchmark-only
--bench-options '{"quick": true}'`.
"""

from __future__ import annotations

import json

import pytest
import torch

from bench.device import pick_device
from bench.env import environment
from bench.gate.suite import cases, device_id, resolve_options
from bench.measure.timing import release_memory

OPTION = "--bench-options"
_OPTIONS = pytest.StashKey()


def pytest_addoption(parser):
    group = parser.getgroup("bench", "throughput suite (bench.gate)")
    group.addoption(OPTION, default="{}", help="the suite's options as JSON: resolve_options' keywords")


def pytest_configure(config):
    try:
        values = json.loads(config.option.bench_options)
        values["device"] = pick_device(values.get("device", "auto"))
        config.stash[_OPTIONS] = resolve_options(**values)
        cases(config.stash[_OPTIONS])  # a model pattern that matches nothing fails here
    except (ValueError, TypeError) as exc:  # one line, not a traceback (UserError is a ValueError)
        raise pytest.UsageError(f"{OPTION}: {exc}") from None


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
