"""Fixtures shared by the test modules.

Helper modules live beside the tests: ``*_support.py`` (builders per area) and ``twins.py`` (the slow
reference implementation of every kernel). ``pythonpath = ["tests"]`` in pyproject.toml puts this folder on
the import path, so ``from training_support import ...`` works from any working directory and import mode.

Markers (pyproject.toml): ``slow`` tests are deselected by default (``-m "not slow"`` in ``addopts``); run them
with ``python -m pytest -m slow``. Without torch (the ``train`` extra), modules that import it skip themselves
with ``pytest.importorskip("torch", ...)`` before importing it, and tests marked ``requires_torch`` (torch-free
test code that drives a verb needing torch, e.g. through the console script) are skipped here.
"""

from __future__ import annotations

import importlib.util

import pytest

from training_support import simulate_tiny

TORCH_MISSING = importlib.util.find_spec("torch") is None


def pytest_collection_modifyitems(config, items):
    if not TORCH_MISSING:
        return
    skip = pytest.mark.skip(reason="needs torch: the [train] extra")
    for item in items:
        if item.get_closest_marker("requires_torch") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_recording(tmp_path_factory):
    """``tiny_recording(seed, exposures)`` -> the path of ``training_support.simulate_tiny(seed, exposures)``
    (spikes 16x24, images 64x96, 13-frame exposures, 3 ground-truth frames each), simulated once per session
    for each (seed, exposures) and shared by every module that asks for the same one. Treat it as read-only."""
    made = {}

    def make(seed: int = 1, exposures: int = 2):
        key = (seed, exposures)
        if key not in made:
            made[key] = simulate_tiny(tmp_path_factory.mktemp(f"tiny-seed{seed}-x{exposures}") / "rec", seed=seed,
                                      exposures=exposures)
        return made[key]

    return make
