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


def test_exported_program_checks_its_inputs(tmp_path: Path) -> None:
    # the exported .py took any input: mean(0) traced for (2, 3) gave [2.5, 2.5, 2.5] for (5, 3) ones, float64 and
    # int64 arrays ran, and a list failed with "'list' object has no attribute 'dtype'"
    import importlib.util

    import numpy as np

    f = slope.jit(lambda x, n: x.mean(0) * n)
    x, n = np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1, -2, 3], np.int32)
    (path,) = f.lower(slope.tensor(x), slope.tensor(n)).export(tmp_path / "mean")
    spec = importlib.util.spec_from_file_location("exported_mean", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    want = f(slope.tensor(x), slope.tensor(n)).numpy()  # [1.5, -5.0, 10.5]: exact in float32
    (got,) = module.program(x, n)
    assert got.dtype == np.float32 and np.array_equal(got, want)
    (got,) = module.program(x.tolist(), [1, -2, 3])  # Python lists of the traced shape: converted
    assert got.dtype == np.float32 and np.array_equal(got, want)
    with pytest.raises(ValueError, match=r"program\(\): input 0 \(x0\) has shape \(5, 3\), expected \(2, 3\)"):
        module.program(np.ones((5, 3), np.float32), n)
    with pytest.raises(ValueError, match=r"input 1 \(x1\) has shape \(2,\), expected \(3,\)"):
        module.program(x, [1, 2])
    with pytest.raises(TypeError, match=r"input 0 \(x0\) has dtype float64, expected float32"):
        module.program(x.astype(np.float64), n)
    with pytest.raises(TypeError, match=r"input 1 \(x1\) has dtype int64, expected int32"):
        module.program(x, n.astype(np.int64))
    with pytest.raises(TypeError, match=r"input 1 \(x1\) holds float64 values, expected int32"):
        module.program(x, [1.5, 2.0, 3.0])  # no silent truncation
    with pytest.raises(ValueError, match=r"input 1 \(x1\) holds values outside the range of int32"):
        module.program(x, [2**40, 2, 3])  # no silent wrap-around
