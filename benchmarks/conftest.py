"""Benchmarks: the ``variants`` marker (the variants study) runs only when ``-m`` selects it.

``pytest benchmarks --benchmark-disable -q`` (CI) skips the study and runs its micro-budget smoke
test; ``pytest benchmarks -m variants`` runs the study (about 20 minutes on 2 CPU cores).
"""

import pytest


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
