"""Benchmarks: the ``variants`` marker (the variants study) runs only when ``-m`` selects it.

``pytest benchmarks --benchmark-disable -q`` (CI) skips the study and runs its micro-budget smoke
test; ``pytest benchmarks -m variants`` runs the study (about 15 minutes on 2 CPU cores).
The spec runs with one torch thread (``spec_tests/plugin.py``); benchmarks use every core.
"""

import os

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _all_cores():
    """Benchmarks measure the machine: all its cores (``BARE_LM_THREADS`` overrides), not the spec's one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("BARE_LM_THREADS", os.cpu_count() or 1)))
    yield
    torch.set_num_threads(before)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "variants: the variants study (minutes of training); run with `pytest benchmarks -m variants`")


def pytest_collection_modifyitems(config, items):
    if "variants" in (config.getoption("markexpr", "") or ""):
        return  # `-m variants` (or any expression naming it): pytest's own -m filter decides
    skip = pytest.mark.skip(reason="the variants study trains for minutes: run it with `pytest benchmarks -m variants`")
    for item in items:
        if item.get_closest_marker("variants"):
            item.add_marker(skip)
