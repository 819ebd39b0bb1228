"""The conformance matrix: every operator and procedure x every transformation x every backend x its dtypes.

The matrix itself ships in slope-testing (`slope_testing.matrix`, its rows in `slope_testing.table` plus those plugins
give through the `slope_conformance_rows` hook), so plugin authors run the same cells with
`pytest --slope-backend=NAME`. The terminal summary reports the matrix's size (conftest.py).
"""

from __future__ import annotations

import pytest

import slope
from slope_testing.matrix import ARGUMENTS, TRANSFORMS, backends_under_test, cells, rows, run_cell
from slope_testing.table import ROWS

# the functions registered when the tests were collected (before any test registers an in-process plugin)
REGISTERED = sorted(set(slope.plugins.operators) | set(slope.plugins.procedures))


@pytest.mark.parametrize(ARGUMENTS, cells())
def test_matrix(backend: str, name: str, transform: str | None, dtype_name: str | None) -> None:
    run_cell(backend, name, transform, dtype_name)


# ----------------------------------------------------------------------------------------------- coverage


def test_every_registered_function_has_a_row() -> None:
    missing = [name for name in REGISTERED if name not in rows()]  # (plugins' rows included)
    assert not missing, f"registered operators/procedures without a conformance row: {missing}"


def test_every_row_names_a_registered_function() -> None:
    stale = sorted(set(ROWS) - set(REGISTERED))
    assert not stale, f"rows in slope_testing.table for functions that are not registered: {stale}"


def test_every_row_has_cases_dtypes_and_stated_skips() -> None:
    for name, row in ROWS.items():
        assert row.cases, f"{name}: a row needs at least one case"
        assert row.dtypes, f"{name}: a row needs at least one dtype"
        for transform, reason in row.skips.items():
            assert transform in TRANSFORMS, f"{name}: skip for unknown transformation {transform!r}"
            assert isinstance(reason, str) and len(reason) > 10, f"{name}: skip of {transform} needs a stated reason"


def test_only_rows_without_tensor_inputs_skip_cells() -> None:
    """An operator or procedure of tensors runs under every transformation: it has its rules or a procedure."""
    for name, row in ROWS.items():
        if row.cases[0].inputs:
            assert not row.skips, f"{name} skips {sorted(row.skips)}, but it takes tensors"


def test_matrix_covers_every_installed_backend() -> None:
    params = cells()
    backends = {p.values[0] for p in params}
    assert set(slope.plugins.backends) <= backends
    for backend in slope.plugins.backends:  # an opt-in backend (iree) has its whole matrix when asked for by name
        own = [p for p in (params if backend in backends_under_test() else cells([backend])) if p.values[0] == backend]
        assert len(own) >= len(REGISTERED) * len(TRANSFORMS), f"{backend}: only {len(own)} cells"


def test_opt_in_backend_runs_its_whole_matrix(monkeypatch):
    """iree's whole matrix runs in CI (it was a subset): no cell skipped for time, by default or asked for by name;
    only the rows' stated skips (no tensor inputs) skip, when the cell runs. The other shared suites leave it out."""
    from slope_testing.matrix import OPT_IN

    for backend in sorted(set(OPT_IN) & set(slope.plugins.backends)):
        for requested in (None, backend):
            if requested is None:
                monkeypatch.delenv("SLOPE_TEST_BACKENDS", raising=False)
            else:
                monkeypatch.setenv("SLOPE_TEST_BACKENDS", requested)
            own = [p for p in cells() if p.values[0] == backend]
            assert len(own) >= len(REGISTERED) * len(TRANSFORMS)
            assert not [p.id for p in own if any(m.name == "skip" for m in p.marks)], f"{backend} cells skipped"
            assert {(p.values[1], p.values[2]) for p in own} == {(n, t) for n in REGISTERED for t in TRANSFORMS}
            assert (backend in backends_under_test()) == (requested is not None)  # the other suites: when asked for
        monkeypatch.setenv("SLOPE_TEST_BACKENDS", "numpy")  # another backend asked for: iree's cells are skipped
        assert all(p.marks for p in cells() if p.values[0] == backend)
