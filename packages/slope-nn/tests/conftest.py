"""pytest configuration of the slope-nn tests: helpers live in nn_helpers.py (importable from every test module),
and `each_backend` runs a test once per installed backend."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import slope  # noqa: E402 - after the path setup, like the helpers

try:  # slope-testing's choice (iree is opt-in: SLOPE_TEST_BACKENDS=all); every installed backend without it
    from slope_testing import backends_under_test  # noqa: E402

    BACKENDS = backends_under_test()
except ImportError:
    BACKENDS = sorted(slope.plugins.backends)


@pytest.fixture(params=BACKENDS)
def each_backend(request):
    """Run the test once on every backend under test (iree only with SLOPE_TEST_BACKENDS=all or =iree)."""
    with slope.use_backend(request.param):
        yield request.param
