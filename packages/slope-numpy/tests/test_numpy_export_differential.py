"""Exported NumPy programs (.py, NumPy only) give Slope's numbers, at the edges.

Every entry of the differential table (tests/differential/table.py: each operator and procedure, inputs with +-0,
+-inf, NaN, subnormals and huge values) and the composite programs of tests/exported_models.py are jitted on the
numpy backend, exported to a .py module and run by importing that module alone: outputs must equal Slope's jitted
results bit for bit (NaN positions, signs of zeros and infinities included). Bounded for CI: a few drawn examples
per entry.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the differential table's strategies need PyTorch: pip install torch==2.13.0")
pytest.importorskip("hypothesis", reason="the differential table draws with hypothesis: pip install hypothesis")

from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import slope  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests"))
import exported_models as em  # noqa: E402
from differential.table import ENTRIES  # noqa: E402

pytestmark = pytest.mark.skipif("numpy" not in slope.plugins.backends, reason="slope-numpy is not registered")

RUNNERS = {"numpy module": em.run_artifact.run}
EXAMPLES = em.examples(ci=3)


@pytest.fixture(autouse=True)
def numpy_backend():
    with slope.use_backend("numpy") as backend:
        yield backend


@pytest.mark.parametrize("name", sorted(ENTRIES))
@EXAMPLES
@given(data=st.data())
def test_table_entry(name: str, data: st.DataObject) -> None:
    em.table_test(name, data, RUNNERS)


@pytest.mark.parametrize("label", em.COMPOSITES)
def test_composite_program(label: str, tmp_path: Path) -> None:
    problems = em.check(em.composite_case(label), RUNNERS, tmp_path)
    assert not problems, "\n".join(problems)


def test_the_artifact_runs_without_slope(tmp_path: Path) -> None:
    em.check_runs_without_slope(tmp_path)


# ----------------------------------------------------------------------------------------------- regressions


def test_non_finite_parameters_and_bfloat16_constants_export(tmp_path: Path) -> None:
    # the exported module lacked the `nan` and `inf` the generated code spells (clamp(x, nan) raised NameError),
    # and its bfloat16 (no dtypes entry: KeyError; constants read back as void)
    import numpy as np
    from ml_dtypes import bfloat16

    x = np.array([2.0, -0.0, np.inf, np.nan], bfloat16)
    scale = slope.tensor(np.array([1.5, -1.0, -0.5, 1.0], bfloat16))
    for f in (slope.jit(lambda t: slope.clamp(t, float("nan"))), slope.jit(lambda t: t * scale - 1.0)):
        (got,) = em.run_artifact.run(f.lower(slope.tensor(x)).export(tmp_path / "model"), [x])
        assert em.same_bits(got, f(slope.tensor(x)).numpy()) is None
    y = np.array([0.5, -3.0], np.float32)
    f = slope.jit(lambda t: slope.clip(t, float("-inf"), float("nan")))
    (got,) = em.run_artifact.run(f.lower(slope.tensor(y)).export(tmp_path / "model"), [y])
    assert em.same_bits(got, f(slope.tensor(y)).numpy()) is None
