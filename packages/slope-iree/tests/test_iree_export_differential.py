"""Exported iree modules (.vmfb, run with iree.runtime and NumPy only) give Slope's numbers, at the edges.

Every entry of the differential table (tests/differential/table.py: each operator and procedure, inputs with +-0,
+-inf, NaN, subnormals and huge values) and the composite programs of tests/exported_models.py are jitted on the
iree backend, exported to .mlir + .vmfb and the .vmfb run on iree's local-sync CPU driver: outputs must equal
Slope's jitted results bit for bit (NaN positions, signs of zeros and infinities included). Each export compiles a
module (about 0.3 s), so CI draws one example per entry, in float32 (or the entry's first dtype).
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

pytestmark = pytest.mark.skipif("iree" not in slope.plugins.backends, reason="slope-iree is not registered")

RUNNERS = {"iree module": em.run_artifact.run}
EXAMPLES = em.examples(ci=1)


@pytest.fixture(autouse=True)
def iree_backend():
    with slope.use_backend("iree") as backend:
        yield backend


@pytest.mark.parametrize("name", sorted(ENTRIES))
@EXAMPLES
@given(data=st.data())
def test_table_entry(name: str, data: st.DataObject) -> None:
    em.table_test(name, data, RUNNERS, dtypes=1)


# the CNN's train step and its predictor with weights as inputs cost two compilations each of ~10 s (Slope's jit and
# the export) for what the other composites and the onnx and numpy tests cover
SLOW = {"mnist_cnn_train_step", "mnist_cnn_predict"}


@pytest.mark.parametrize("label", [label for label in em.COMPOSITES if label not in SLOW])
def test_composite_program(label: str, tmp_path: Path) -> None:
    problems = em.check(em.composite_case(label), RUNNERS, tmp_path)
    assert not problems, "\n".join(problems)


def test_the_artifact_runs_without_slope(tmp_path: Path) -> None:
    em.check_runs_without_slope(tmp_path)


# ----------------------------------------------------------------------------------------------- regressions


def test_exports_with_random_draws_compile_and_flag_bad_indices(tmp_path: Path) -> None:
    # a randn's key is a constant of the exported module: the compiler's const-eval of its cos failed to link
    # ("undefined symbol: cos"), so the program did not export; exports now compute constants when they run
    import numpy as np

    f = slope.jit(lambda: slope.randn((5,)))
    (got,) = em.run_artifact.run(f.lower().export(tmp_path / "draws"), [])
    assert em.same_bits(got, f().numpy()) is None
    # `main` returns the outputs, then a flag per index check (README): true where Slope raises an IndexError
    x, index = np.arange(4, dtype=np.float32), np.array([1, 7])
    g = slope.jit(lambda t, i: t[i])
    files = g.lower(slope.tensor(x), slope.tensor(np.array([1, 2]))).export(tmp_path / "gather")
    values, failed = em.run_artifact.run(files, [x, np.array([1, 2])])
    assert values.tolist() == [1.0, 2.0] and not failed
    assert em.run_artifact.run(files, [x, index])[1]
    with pytest.raises(IndexError):
        g(slope.tensor(x), slope.tensor(index))


def test_a_constant_of_zeros_of_both_signs_keeps_its_signs(tmp_path: Path) -> None:
    # `dense` took [0.0, -0.0] (equal by value) for a splat of its first element: the exported module gave 1 / C as
    # [inf, inf] where Slope's jit gives [inf, -inf]
    import numpy as np

    for dtype in (slope.float32, slope.float64, slope.float16, slope.bfloat16):
        c = slope.tensor([0.0, -0.0, 0.0], dtype=dtype)
        f = slope.jit(lambda x, c=c: x / c)
        x = slope.ones(3, dtype=dtype)
        (got,) = em.run_artifact.run(f.lower(x).export(tmp_path / dtype.name), [x.numpy()])
        assert np.signbit(got.astype(np.float32)).tolist() == [False, True, False], dtype
        assert em.same_bits(got, f(x).numpy()) is None


def test_constant_only_parts_of_an_export_compute_as_jit_does(tmp_path: Path) -> None:
    # an export writes the program's constants into the module, and IREE folded what depends only on them in its own
    # way (even with const-eval off): gelu(tanh) of a closed-over weight was 0.6% off jit's (which gets them as
    # arguments), c * 1.37 + 0.29 unfused where jit fuses it
    import numpy as np

    import slope.nn as nn

    c = slope.tensor(np.array([-4.0333214, -2.363366, 0.5], np.float32))
    programs = {
        "gelu": lambda x: nn.functional.gelu(c, approximate="tanh") * x,
        "affine": lambda x: (c * 1.37 + 0.29) * x,
    }
    x = slope.ones(3)
    for name, function in programs.items():
        f = slope.jit(function)
        (got,) = em.run_artifact.run(f.lower(x).export(tmp_path / name), [x.numpy()])
        assert em.same_bits(got, f(x).numpy()) is None, name


def test_an_export_with_a_loop_runs_and_names_the_flags_it_was_compiled_with(tmp_path: Path) -> None:
    # a float64 power is a stablehlo.while; such modules are compiled without indirect command buffers (IREE 3.13
    # failed them at run time): the file's header named only the target's flags, so a module recompiled from it
    # with those flags was not the one Slope exported
    import numpy as np

    f = slope.jit(lambda t: 0.999**t)
    t = slope.tensor(np.array([1.0, 1700.0, 0.5]))
    paths = f.lower(t).export(tmp_path / "power")
    header = Path(paths[0]).read_text().splitlines()[0]
    assert "--iree-hal-indirect-command-buffers=false" in header and "--iree-opt-const-eval=false" in header
    (got,) = em.run_artifact.run(paths, [t.numpy()])
    assert em.same_bits(got, f(t).numpy()) is None
