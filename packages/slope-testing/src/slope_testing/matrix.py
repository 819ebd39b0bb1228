"""The conformance matrix: every operator and procedure x every transformation x every backend x its dtypes.

The cells come from the registries (`slope.plugins.operators`, `.procedures`, `.backends`) and the rows (the table in
`slope_testing.table` and those plugins give through the `slope_conformance_rows` hook), so a new backend joins by
being installed and a new operator by its row. Each cell runs the row's first case and compares it with NumPy or
finite differences (`slope_testing.checks`). Run by `pytest --slope-backend=NAME` (this distribution's pytest plugin)
and by the Slope repository's tests/test_conformance.py.
"""

from __future__ import annotations

import os

import pytest

import slope

from .checks import (
    Prepared,
    Row,
    check_eager,
    check_grad,
    check_grad_of_grad,
    check_jit,
    check_jvp,
    check_vmap,
    seeded_rng,
)
from .table import ROWS, known_failure

TRANSFORMS = ("eager", "jit", "jvp", "grad", "vmap", "grad_of_grad")
# the backends the project ships; any other installed backend plugin joins the matrix too
KNOWN_BACKENDS = {"onnxruntime": "slope-core[onnx]", "iree": "slope-core[iree]", "numpy": "slope-core[numpy]"}
ARGUMENTS = ("backend", "name", "transform", "dtype_name")
# installed backends that compile every new program (iree: 0.15-0.5 s a module): the conformance matrix runs all of
# their cells (from a cold compile cache the whole iree matrix fits CI's budget: benchmarks/RESULTS.md), but the
# other shared suites (differential, edges, ops), whose random shapes would each compile anew, leave them out unless
# asked for by name (SLOPE_TEST_BACKENDS=iree, or =all)
OPT_IN = {
    "iree": "iree: the shared suites other than the conformance matrix run on it with SLOPE_TEST_BACKENDS=iree "
    "(each new shape is a compile); the matrix runs all of its cells",
}


def backends_under_test() -> list[str]:
    """The installed backends the shared tests run on: SLOPE_TEST_BACKENDS (names, or "all"), else all but OPT_IN."""
    installed = sorted(slope.plugins.backends)
    requested = [name.strip() for name in os.environ.get("SLOPE_TEST_BACKENDS", "").split(",") if name.strip()]
    if requested == ["all"]:
        return installed
    return [name for name in installed if (name in requested if requested else name not in OPT_IN)]


def rows() -> dict[str, Row]:
    """Slope's table of rows, with the rows plugins supply for their functions through their `slope_conformance_rows`
    hooks. A hook that fails, or a row that is not a Row or names a function of Slope's own table (a plugin's row for
    `exp` replaced Slope's, and a wrong `exp` translation then passed it), is that plugin's problem (a
    SlopePluginWarning, once), not the matrix's."""
    table = dict(ROWS)
    for impl in slope.plugins.manager.hook.slope_conformance_rows.get_hookimpls():
        plugin = slope.plugins.manager.get_name(impl.plugin) or repr(impl.plugin)
        try:
            plugin_rows = list(impl.function() or [])
        except Exception as error:
            _problem(plugin, f"its slope_conformance_rows hook failed: {type(error).__name__}: {error}")
            continue
        for row in plugin_rows:
            name = getattr(row, "name", None)
            if isinstance(row, Row) and name not in ROWS:
                table[name] = row
            else:
                _problem(plugin, f"its conformance row {name or row!r} is not a Row, or replaces Slope's own row")
    return table


def _problem(plugin: str, message: str) -> None:
    if message not in slope.plugins.failed.get(plugin, []):  # (rows() runs for every cell: one warning)
        slope.plugins.problem(plugin, message, outcome="the row left out")


def registered() -> list[str]:
    """Every registered operator and procedure name."""
    return sorted(set(slope.plugins.operators) | set(slope.plugins.procedures))


def cells(backends: list[str] | None = None, names: list[str] | None = None) -> list:
    """The matrix's cells as pytest params (backend, name, transform, dtype name), for some backends or functions."""
    table, result = rows(), []
    for backend in backends or sorted(set(slope.plugins.backends) | set(KNOWN_BACKENDS)):
        if backend not in slope.plugins.backends:
            hint = f"pip install {KNOWN_BACKENDS[backend]}" if backend in KNOWN_BACKENDS else "is its plugin loaded?"
            reason = f"backend {backend!r} is not installed ({hint}); installed: {sorted(slope.plugins.backends)}"
            mark = pytest.mark.skip(reason=reason) if backend in KNOWN_BACKENDS and not backends else ()
            result.append(pytest.param(backend, None, None, None, id=f"{backend}:not installed", marks=mark))
            continue
        whole = backend in OPT_IN and not os.environ.get("SLOPE_TEST_BACKENDS", "").strip()  # (the matrix: always)
        if backend not in backends_under_test() and not backends and not whole:
            reason = OPT_IN.get(backend, "not in SLOPE_TEST_BACKENDS")
            result.append(
                pytest.param(backend, None, None, None, id=f"{backend}:opt-in", marks=pytest.mark.skip(reason))
            )
            continue
        supported = slope.get_backend(backend).dtypes
        for name in names or registered():
            row = table.get(name)
            if row is None:  # fails: every registered function needs a row
                result.append(pytest.param(backend, name, None, None, id=f"{backend}:{name}:no row:-"))
                continue
            for transform in TRANSFORMS:
                for dtype in row.dtypes:
                    if dtype not in supported:
                        continue
                    reason = known_failure(backend, name, transform, dtype.name)
                    marks = [pytest.mark.xfail(reason=reason, strict=True)] if reason else []
                    cell_id = f"{backend}:{name}:{transform}:{dtype.name}"
                    result.append(pytest.param(backend, name, transform, dtype.name, id=cell_id, marks=marks))
    return result


def run_cell(backend: str, name: str | None, transform: str | None, dtype_name: str | None) -> None:
    """Run one cell: the row's first case under one transformation, dtype and backend, against its reference."""
    if backend not in slope.plugins.backends:
        pytest.fail(f"backend {backend!r} is not installed; installed backends: {sorted(slope.plugins.backends)}")
    row = rows().get(name)
    if row is None and name not in slope.plugins.operators and name not in slope.plugins.procedures:
        pytest.fail(f"slope.{name} is not registered: a typo in --slope-functions, or its plugin is not loaded")
    if row is None:
        pytest.fail(
            f"slope.{name} is registered but has no conformance row: add one to slope_testing.table, or return it "
            "from its plugin's `slope_conformance_rows` hook"
        )
    reason = row.skips.get(transform)
    if reason:
        pytest.skip(reason)
    dtype = slope.dtypes.as_dtype(dtype_name)
    with slope.use_backend(backend) as active:
        prepared = Prepared(row, row.cases[0], dtype, seeded_rng(name, transform, dtype_name))
        checks = {"eager": check_eager, "jit": check_jit, "jvp": check_jvp, "grad": check_grad, "vmap": check_vmap}
        if transform == "grad_of_grad":
            check_grad_of_grad(prepared, active)
        elif transform in checks:
            checks[transform](prepared)
        else:
            pytest.fail(f"unknown transformation {transform!r}")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """The cells `--slope-backend` and `--slope-functions` choose (this module, collected by the pytest plugin)."""
    if metafunc.definition.name == "test_matrix" and metafunc.module.__name__ == __name__:
        backends = [b for option in metafunc.config.getoption("slope_backend") for b in option.split(",") if b]
        names = [n for n in metafunc.config.getoption("slope_functions").split(",") if n]
        metafunc.parametrize(ARGUMENTS, cells(None if backends == ["all"] else backends, names or None))


def test_matrix(backend: str, name: str | None, transform: str | None, dtype_name: str | None) -> None:
    """One conformance cell."""
    run_cell(backend, name, transform, dtype_name)
