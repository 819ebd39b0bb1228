"""pytest configuration of the slope-nn tests: helpers live in nn_helpers.py (importable from every test module),
and `each_backend` runs a test once per installed backend."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import slope  # noqa: E402 - after the path setup, like the helpers

BACKENDS = [name for name in ("onnxruntime", "iree", "numpy") if name in slope.plugins.backends]


@pytest.fixture(params=BACKENDS)
def each_backend(request):
    """Run the test once on every installed backend (onnxruntime, iree and numpy)."""
    with slope.use_backend(request.param):
        yield request.param
