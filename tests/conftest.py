"""Shared test setup: tests/ on sys.path (factories, oracle) and the torch tier.

Tests that need torch carry ``@pytest.mark.torch`` (whole modules: ``pytestmark = pytest.mark.torch``
before ``pytest.importorskip("torch")``). CI runs ``-m "not torch"`` in a virtual environment without
torch, so an unmarked test that needs torch fails there; here, marked tests are skipped when torch is
not installed.
"""

import importlib.util
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

HAVE_TORCH = importlib.util.find_spec("torch") is not None


def pytest_collection_modifyitems(config, items):
    if HAVE_TORCH:
        return
    skip = pytest.mark.skip(reason="needs torch (pip install -e '.[train]')")
    for item in items:
        if "torch" in item.keywords:
            item.add_marker(skip)
