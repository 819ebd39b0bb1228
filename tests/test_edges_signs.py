"""The sign of zero and relative accuracy near 0, against PyTorch on every installed backend, eager and under jit:
what the differential suite's stricter comparison (tests/differential/strategies.py, `mismatch`) found.

Zeros are compared with their signs (np.signbit) where PyTorch's result is exactly +-0.0; tiny results relatively.
"""

from __future__ import annotations

import numpy as np
import pytest

import slope
from slope_testing import backends_under_test

torch = pytest.importorskip("torch")

FLOATS = ["float16", "bfloat16", "float32", "float64"]
MODES = {"eager": lambda fn: fn, "jit": slope.jit}


@pytest.fixture(params=backends_under_test())
def backend(request):
    with slope.use_backend(request.param):
        yield request.param


def as_slope(values: list, dtype: str) -> slope.Tensor:
    return slope.tensor(np.asarray(values, np.float64)).astype(dtype)


def as_torch(values: list, dtype: str):
    return torch.tensor(np.asarray(values, np.float64)).to(getattr(torch, dtype))


def same_with_signs(got: slope.Tensor, expected, what: str) -> None:
    """Bit for bit the same values (NaN with NaN) and the same signs, zeros included."""
    a = np.asarray(got.numpy()).astype(np.float64)
    e = expected.detach().double().numpy()
    assert a.shape == e.shape, f"{what}: shape {a.shape}, PyTorch {e.shape}"
    np.testing.assert_array_equal(a, e, err_msg=what)
    assert (np.signbit(a) == np.signbit(e)).all(), f"{what}: signs {np.signbit(a)}, PyTorch {np.signbit(e)}"


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("dtype", FLOATS)
def test_where_keeps_the_sign_of_a_selected_zero(backend, mode, dtype):
    """onnxruntime's Where gave +0.0 for a -0.0 taken from x (its kernel merges x and y by `x != 0 ? x : y`)."""
    condition = np.array([True, False, True, False, True, False])
    x = [-0.0, -0.0, 0.0, 1.5, float("nan"), -0.0]
    y = [0.0, -0.0, -0.0, float("-inf"), 2.0, 0.0]
    call = MODES[mode](slope.where)
    expected = torch.where(torch.tensor(condition), as_torch(x, dtype), as_torch(y, dtype))
    got = call(slope.tensor(condition), as_slope(x, dtype), as_slope(y, dtype))
    same_with_signs(got, expected, f"{backend} {mode} where {dtype}, both sides tensors")
    # broadcast: a 0-d -0.0 selected everywhere
    expected = torch.where(torch.tensor(condition), as_torch(-0.0, dtype), as_torch(y, dtype))
    got = call(slope.tensor(condition), as_slope(-0.0, dtype), as_slope(y, dtype))
    same_with_signs(got, expected, f"{backend} {mode} where {dtype}, x a 0-d -0.0")


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("dtype", FLOATS)
def test_where_with_a_constant_side_keeps_the_sign_of_a_selected_zero(backend, mode, dtype, request):
    """Where one side is a constant (relu's gradient, masks) onnxruntime's Where still turns X's -0.0 into +0.0."""
    if backend == "onnxruntime" and mode == "jit" and dtype != "bfloat16":  # (eager: 1.0 is an input; bfloat16: a Cast)
        request.applymarker(pytest.mark.xfail(strict=True, reason="slope-onnx keeps onnxruntime's plain Where where a "
                                              "side is a constant: the sign-keeping form costs the CNN step 7%"))  # fmt: skip
    condition = np.array([True, False, True, False])
    x = [-0.0, -0.0, 0.0, 1.5]
    expected = torch.where(torch.tensor(condition), as_torch(x, dtype), torch.tensor(1.0, dtype=getattr(torch, dtype)))
    got = MODES[mode](lambda c, v: slope.where(c, v, 1.0))(slope.tensor(condition), as_slope(x, dtype))
    same_with_signs(got, expected, f"{backend} {mode} where {dtype}, y a constant")


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("dtype", FLOATS)
def test_exp2_is_exact_at_integers_and_relatively_accurate(backend, mode, dtype):
    """exp2 was exp(x * ln 2), x * ln 2 rounded in x's dtype first: bfloat16 2 ** 100 gave 9.26e29 (27% off)."""
    top = {"float16": 15, "bfloat16": 127, "float32": 127, "float64": 1023}[dtype]
    x = [float(v) for v in range(-24, top + 1)] + [top + 1.0, 0.0, -0.0, float("inf"), float("-inf")]
    expected = torch.exp2(as_torch(x, dtype))
    got = MODES[mode](slope.exp2)(as_slope(x, dtype))
    same_with_signs(got, expected, f"{backend} {mode} exp2 {dtype}")
