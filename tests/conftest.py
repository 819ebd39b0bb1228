"""Shared pytest configuration of the repository tests: the conformance matrix's size in the terminal summary and
the hypothesis profiles of the differential suite, and the `backend` and `torch` fixtures test files share."""

from __future__ import annotations

import sys
import warnings
from collections import Counter
from pathlib import Path

import pytest

import slope
from slope_testing import backends_under_test

sys.path.insert(0, str(Path(__file__).parent))  # test modules import each other (test_plugins)

MATRIX_TEST = "test_conformance.py::test_matrix["


@pytest.fixture(params=backends_under_test())
def backend(request):
    """Each backend under test (slope_testing.backends_under_test), active for the test; a test file that needs
    another set defines its own `backend` fixture."""
    with slope.use_backend(request.param):
        yield request.param


@pytest.fixture
def torch():
    """PyTorch, the reference (the test skips without it), its warnings (degrees of freedom <= 0, deprecated index
    forms) silenced."""
    module = pytest.importorskip("torch")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield module


try:  # hypothesis is a test dependency; without it the differential suite skips itself
    from hypothesis import HealthCheck, Phase, settings
except ImportError:
    pass
else:
    # "ci" (the default): the same examples on every run (derandomized), few enough for CI's time budget, no
    # shrinking (a failure prints its blob: rerun it locally under "deep" to shrink); "deep": many random examples
    # with shrinking, for hunting (`pytest tests/differential --hypothesis-profile=deep`).
    _quiet_checks = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
    settings.register_profile(
        "ci",
        derandomize=True,
        max_examples=25,
        deadline=None,
        print_blob=True,
        phases=(Phase.explicit, Phase.reuse, Phase.generate),
        suppress_health_check=_quiet_checks,
    )
    settings.register_profile(
        "deep", max_examples=300, deadline=None, print_blob=True, suppress_health_check=_quiet_checks
    )
    settings.load_profile("ci")


def _matrix_outcomes(terminalreporter) -> dict[str, tuple[str, str]]:
    """Final outcome (and skip reason) of every conformance cell, keyed by its id `backend:name:transform:dtype`."""
    outcomes: dict[str, tuple[str, str]] = {}
    for category, reports in terminalreporter.stats.items():
        for report in reports:
            nodeid = getattr(report, "nodeid", "")
            if MATRIX_TEST not in nodeid:
                continue
            cell = nodeid.split(MATRIX_TEST, 1)[1].rstrip("]")
            if category not in ("passed", "failed", "skipped", "error", "xfailed", "xpassed"):
                continue  # setup and teardown reports that passed
            if category == "passed" and getattr(report, "when", "call") != "call":
                continue
            reason = ""
            if category == "skipped" and isinstance(report.longrepr, tuple):
                reason = str(report.longrepr[2]).removeprefix("Skipped: ")
            if category in ("failed", "error") or cell not in outcomes:
                outcomes[cell] = ("failed" if category == "error" else category, reason)
    return outcomes


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """Report the conformance matrix's size: operators+procedures x transforms x dtypes, per backend."""
    outcomes = _matrix_outcomes(terminalreporter)
    if not outcomes:
        return
    terminalreporter.section("conformance matrix")
    by_backend: dict[str, dict[str, tuple[str, str]]] = {}
    for cell, outcome in outcomes.items():
        by_backend.setdefault(cell.split(":", 1)[0], {})[cell] = outcome
    for backend, cells in sorted(by_backend.items()):
        parts = [cell.split(":") for cell in cells]
        if len(parts) == 1 and len(parts[0]) == 2:  # the single "not installed" cell
            outcome, reason = next(iter(cells.values()))
            terminalreporter.write_line(f"backend {backend}: {outcome}: {reason}")
            continue
        names = {p[1] for p in parts if len(p) == 4}
        transforms = {p[2] for p in parts if len(p) == 4}
        dtypes = {p[3] for p in parts if len(p) == 4}
        counts = Counter(outcome for outcome, _ in cells.values())
        summary = ", ".join(f"{n} {category}" for category, n in sorted(counts.items()))
        terminalreporter.write_line(
            f"conformance matrix on {backend}: {len(names)} operators+procedures x {len(transforms)} transforms x "
            f"{len(dtypes)} dtypes = {len(cells)} cells ({summary})"
        )
        reasons = Counter(reason for outcome, reason in cells.values() if outcome == "skipped")
        for reason, n in reasons.most_common():
            terminalreporter.write_line(f"    {n} skipped: {reason}")
