"""slope-testing's pytest plugin (entry point `pytest11: slope`): `pytest --slope-backend=NAME` runs Slope's
conformance matrix on a backend; `--slope-functions=a,b` restricts it to some operators and procedures."""

from __future__ import annotations

from pathlib import Path

import pytest

MATRIX = str(Path(__file__).with_name("matrix.py"))


def pytest_addoption(parser: pytest.Parser) -> None:
    """The plugin's options."""
    group = parser.getgroup("slope", "Slope's conformance matrix")
    group.addoption(
        "--slope-backend",
        action="append",
        default=[],
        help="run the conformance matrix on this backend (repeatable, comma-separated; 'all': every installed one)",
    )
    group.addoption("--slope-functions", default="", help="only these operators and procedures (comma-separated)")


def pytest_configure(config: pytest.Config) -> None:
    """With --slope-backend, collect the matrix: alone, or beside the paths given on the command line."""
    if not config.getoption("slope_backend"):
        return
    if config.args_source == pytest.Config.ArgsSource.ARGS:
        config.args.append(MATRIX)
    else:  # no paths given: only the matrix, not the project's whole test suite
        config.args[:] = [MATRIX]
