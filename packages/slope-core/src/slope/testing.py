"""`slope.testing`: the slope-testing distribution (the conformance matrix and its rows) under Slope's name."""

from slope_testing import *  # noqa: F403 - needs `pip install slope-testing` (or slope-core[testing])
from slope_testing import __all__  # noqa: F401
