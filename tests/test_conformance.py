"""The conformance matrix: every operator and procedure x every transformation x every backend x its dtypes.

The cells come from the registries (`slope.plugins.operators`, `.procedures`, `.backends`) and the rows of
operator_table.py, so a new backend joins by being installed and a new operator by its row. Each cell runs the row's
first case and compares it with NumPy or finite differences (see helpers.py). The terminal summary reports the
matrix's size (conftest.py).
"""

from __future__ import annotations

import pytest
from helpers import (
    Prepared,
    check_eager,
    check_grad,
    check_grad_of_grad,
    check_jit,
    check_jvp,
    check_vmap,
    seeded_rng,
)
from operator_table import ROWS, known_failure

import slope

TRANSFORMS = ("eager", "jit", "jvp", "grad", "vmap", "grad_of_grad")
# the backends the project ships; any other installed backend plugin joins the matrix too
KNOWN_BACKENDS = {"onnxruntime": "slope-core[onnx]", "iree": "slope-core[iree]", "numpy": "slope-core[numpy]"}
# the functions registered when the tests were collected (before any test registers an in-process plugin)
REGISTERED = sorted(set(slope.plugins.operators) | set(slope.plugins.procedures))


def _cells() -> list:
    cells = []
    backends = sorted(set(slope.plugins.backends) | set(KNOWN_BACKENDS))
    for backend in backends:
        if backend not in slope.plugins.backends:
            reason = f"backend {backend!r} is not installed (pip install {KNOWN_BACKENDS[backend]})"
            cells.append(
                pytest.param(
                    backend, None, None, None, id=f"{backend}:not installed", marks=pytest.mark.skip(reason=reason)
                )
            )
            continue
        supported = slope.get_backend(backend).dtypes
        for name in REGISTERED:
            row = ROWS.get(name)
            if row is None:  # fails: every registered function needs a row
                cells.append(pytest.param(backend, name, None, None, id=f"{backend}:{name}:no row:-"))
                continue
            for transform in TRANSFORMS:
                for dtype in row.dtypes:
                    if dtype not in supported:
                        continue
                    marks = []
                    reason = known_failure(backend, name, transform, dtype.name)
                    if reason:
                        marks.append(pytest.mark.xfail(reason=reason, strict=True))
                    cell_id = f"{backend}:{name}:{transform}:{dtype.name}"
                    cells.append(pytest.param(backend, name, transform, dtype.name, id=cell_id, marks=marks))
    return cells


@pytest.mark.parametrize(("backend", "name", "transform", "dtype_name"), _cells())
def test_matrix(backend: str, name: str, transform: str | None, dtype_name: str | None) -> None:
    row = ROWS.get(name)
    if row is None:
        pytest.fail(f"slope.{name} is registered but has no row in tests/operator_table.py")
    reason = row.skips.get(transform)
    if reason:
        pytest.skip(reason)
    dtype = slope.dtypes.as_dtype(dtype_name)
    with slope.use_backend(backend) as active:
        prepared = Prepared(row, row.cases[0], dtype, seeded_rng(name, transform, dtype_name))
        if transform == "eager":
            check_eager(prepared)
        elif transform == "jit":
            check_jit(prepared)
        elif transform == "jvp":
            check_jvp(prepared)
        elif transform == "grad":
            check_grad(prepared)
        elif transform == "vmap":
            check_vmap(prepared)
        elif transform == "grad_of_grad":
            check_grad_of_grad(prepared, active)
        else:
            pytest.fail(f"unknown transformation {transform!r}")


# ----------------------------------------------------------------------------------------------- coverage


def test_every_registered_function_has_a_row() -> None:
    missing = [name for name in REGISTERED if name not in ROWS]
    assert not missing, f"registered operators/procedures without a row in tests/operator_table.py: {missing}"


def test_every_row_names_a_registered_function() -> None:
    stale = sorted(set(ROWS) - set(REGISTERED))
    assert not stale, f"rows in tests/operator_table.py for functions that are not registered: {stale}"


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
    params = _cells()
    backends = {p.values[0] for p in params}
    assert set(slope.plugins.backends) <= backends
    for backend in slope.plugins.backends:
        cells = [p for p in params if p.values[0] == backend]
        assert len(cells) >= len(REGISTERED) * len(TRANSFORMS), f"{backend}: only {len(cells)} cells"
