"""The sign of zero and relative accuracy near 0, against PyTorch on every installed backend, eager and under jit:
what the differential suite's stricter comparison (tests/differential/strategies.py, `mismatch`) found.

Zeros are compared with their signs (np.signbit) where PyTorch's result is exactly +-0.0; tiny results relatively.
"""

from __future__ import annotations

import numpy as np
import pytest

import slope

torch = pytest.importorskip("torch")

FLOATS = ["float16", "bfloat16", "float32", "float64"]
MODES = {"eager": lambda fn: fn, "jit": slope.jit}


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
def test_where_with_a_constant_side_keeps_the_sign_of_a_selected_zero(backend, mode, dtype):
    """Where one side is a constant (relu's gradient, masks), onnxruntime's Where turned X's -0.0 into +0.0 under jit
    (the data now goes to Y's side, the condition negated); the constant's side keeps its sign too."""
    condition = np.array([True, False, True, False])
    x = [-0.0, -0.0, 0.0, 1.5]
    expected = torch.where(torch.tensor(condition), as_torch(x, dtype), torch.tensor(1.0, dtype=getattr(torch, dtype)))
    got = MODES[mode](lambda c, v: slope.where(c, v, 1.0))(slope.tensor(condition), as_slope(x, dtype))
    same_with_signs(got, expected, f"{backend} {mode} where {dtype}, y a constant")
    expected = torch.where(torch.tensor(condition), torch.tensor(-0.0, dtype=getattr(torch, dtype)), as_torch(x, dtype))
    got = MODES[mode](lambda c, v: slope.where(c, -0.0, v))(slope.tensor(condition), as_slope(x, dtype))
    same_with_signs(got, expected, f"{backend} {mode} where {dtype}, x a constant -0.0")
    expected = torch.where(torch.tensor(condition), as_torch(x, dtype), torch.tensor(-0.0, dtype=getattr(torch, dtype)))
    got = MODES[mode](lambda c, v: slope.where(c, v, -0.0))(slope.tensor(condition), as_slope(x, dtype))
    same_with_signs(got, expected, f"{backend} {mode} where {dtype}, both may be -0.0, y a constant")


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("dtype", FLOATS)
def test_exp2_is_exact_at_integers_and_relatively_accurate(backend, mode, dtype):
    """exp2 was exp(x * ln 2), x * ln 2 rounded in x's dtype first: bfloat16 2 ** 100 gave 9.26e29 (27% off)."""
    top = {"float16": 15, "bfloat16": 127, "float32": 127, "float64": 1023}[dtype]
    x = [float(v) for v in range(-24, top + 1)] + [top + 1.0, 0.0, -0.0, float("inf"), float("-inf")]
    expected = torch.exp2(as_torch(x, dtype))
    got = MODES[mode](slope.exp2)(as_slope(x, dtype))
    same_with_signs(got, expected, f"{backend} {mode} exp2 {dtype}")


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("mode", MODES)
def test_index_writes_keep_the_sign_of_zeros(backend, dtype, mode):
    # x.at[i].set(-0.0) gave +0.0 on every backend (the written values were scattered into +0.0), repeated writes too;
    # on iree an element that no index reached turned from -0.0 into +0.0 (its scatter started from +0.0)
    values = [-0.0, 1.0, -0.0, 2.0, 0.0]
    index, written = [3, 1, 3], [5.0, 0.0, -0.0]
    x, i, v = as_slope(values, dtype), slope.tensor(index), as_slope(written, dtype)
    expected = as_torch(values, dtype)
    expected[torch.tensor(index)] = as_torch(written, dtype)  # PyTorch CPU keeps the last of repeated writes
    same_with_signs(MODES[mode](lambda a, b, c: a.at[b].set(c))(x, i, v), expected, "set")
    added = as_torch(values, dtype).index_put((torch.tensor([1]),), as_torch([-0.0], dtype), accumulate=True)
    same_with_signs(
        MODES[mode](lambda a, b, c: a.at[b].add(c))(x, slope.tensor([1]), as_slope([-0.0], dtype)), added, "add"
    )


@pytest.mark.parametrize("dtype", FLOATS)
def test_arange_starts_with_pytorchs_zero(backend, dtype):
    """arange's first value is start + 0 * step, as PyTorch's: -0.0 counting up is +0.0, counting down -0.0. The
    numpy backend gave -0.0 counting up, and the eager cache took 0.0 and -0.0 for one start (whichever came first)."""
    for start, stop, step in [(0.0, 2.0, 1.0), (-0.0, 2.0, 1.0), (-0.0, -2.0, -1.0), (0.0, -2.0, -1.0)] * 2:
        expected = torch.arange(start, stop, step, dtype=getattr(torch, dtype))
        for mode, transform in MODES.items():
            got = transform(lambda a=start, b=stop, c=step: slope.arange(a, b, c, dtype=dtype))()
            same_with_signs(got, expected, f"{mode} arange({start}, {stop}, {step}, {dtype})")


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("dtype", FLOATS)
def test_cumsum_of_negative_zeros_is_positive_zero_as_pytorch(backend, mode, dtype):
    """PyTorch's running sum starts from +0.0, so it never gives -0.0; the scan padded with +0.0 in some positions
    only ([-0.0, -0.0] gave [0.0, -0.0]; a size-1 dim -0.0)."""
    for values, dim in (([-0.0], 0), ([-0.0, -0.0, 1.0, -1.0, -0.0], 0), ([[-0.0], [-0.0]], 1), ([[-0.0, -0.0]], 1)):
        expected = torch.cumsum(as_torch(values, dtype), dim)
        got = MODES[mode](lambda x, dim=dim: slope.cumsum(x, dim))(as_slope(values, dtype))
        same_with_signs(got, expected, f"cumsum({values}, {dim}) {dtype}")


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("mode", MODES)
def test_half_powers_are_sqrt_and_rsqrt_as_pytorch(backend, mode, dtype):
    # PyTorch computes x ** 0.5 and x ** -0.5 as sqrt and rsqrt: (-inf) ** 0.5 is NaN, (-0.0) ** 0.5 is -0.0 (and its
    # gradient -inf), (-0.0) ** -0.5 is -inf; Slope used C's pow (inf, 0.0, +inf). PyTorch's float16 kernel alone
    # keeps pow's values: float16 is compared with PyTorch's float32 results, rounded. The gradient of x ** -0.5
    # follows rsqrt's (PyTorch's pow rule differs at -0.0 and -inf only), so it is compared where x > 0
    values, ulp = [-np.inf, -0.0, 0.0, 0.25, 4.0, np.inf, np.nan], {"float16": 2**-10, "bfloat16": 2**-7}
    reference = "float32" if dtype == "float16" else dtype
    for y in (0.5, -0.5):
        want = (as_torch(values, reference) ** y).to(getattr(torch, dtype)).double().numpy()
        got = MODES[mode](lambda x, y=y: x**y)(as_slope(values, dtype)).numpy().astype(np.float64)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(np.signbit(got) & ~np.isnan(got), np.signbit(want) & ~np.isnan(want))  # (zeros)
    leaf = as_torch(values, reference).requires_grad_()
    (want,) = torch.autograd.grad((leaf**0.5).sum(), leaf)
    got = MODES[mode](slope.grad(lambda x: (x**0.5).sum()))(as_slope(values, dtype)).numpy().astype(np.float64)
    np.testing.assert_allclose(got, want.to(getattr(torch, dtype)).double().numpy(), rtol=ulp.get(dtype, 0.0))
    positive = [0.25, 4.0, 9.0, 0.3]
    leaf = as_torch(positive, "float64").requires_grad_()
    (want,) = torch.autograd.grad((leaf**-0.5).sum(), leaf)  # the exact gradient, which both round
    got = MODES[mode](slope.grad(lambda x: (x**-0.5).sum()))(as_slope(positive, dtype)).numpy().astype(np.float64)
    np.testing.assert_allclose(got, want.numpy(), rtol=2 * ulp.get(dtype, 2**-23 if dtype == "float32" else 2**-52))
