"""Accuracy of sums and the statistics built on them, on every backend, against exact sums (math.fsum) and PyTorch.

Guarantees checked here (u: the unit roundoff of the dtype, 2^-24 for float32; n: elements per output):
- float32 sums: |error| <= 257 u sum(|x|) for every n and every set of dimensions (onnxruntime adds blocks of at most
  256 elements in float32 and their partial sums in float64; NumPy adds in float64). Plain float32 addition was off
  by 0.09% for 10^6 copies of 0.1 (onnxruntime) and by 0.014% for 10^5 x 10 of them summed over axis 0 (NumPy).
- float64 sums: |error| <= 3 x 256 u sum(|x|) up to n = 2^24 (onnxruntime: stages of at most 256; NumPy: pairwise
  over all reduced axes, where NumPy itself adds one by one along every axis but the innermost in memory).
- float16 and bfloat16 sums, means, variances and cumulative sums accumulate in float32 (or better) and round once,
  as PyTorch: within one unit in the last place of PyTorch's result.
- integer sums are exact and wrap around modulo 2^64 (or the requested dtype's width), as PyTorch; onnxruntime's own
  integer ReduceSum adds in double and saturates.
- cumsum (a log-step scan): each prefix within ceil(log2 n) u of its float64 value, relative to the prefix of |x|.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest

import slope

U = {"float16": 2.0**-11, "bfloat16": 2.0**-8, "float32": 2.0**-24, "float64": 2.0**-53}
ULP = {"float16": 2.0**-10, "bfloat16": 2.0**-7}  # the spacing just above 1: the relative size of one ulp at most


def _sum(x, dims, keepdim, jit):
    fn = lambda x: x.sum(dims, keepdim=keepdim)  # noqa: E731
    return (slope.jit(fn) if jit else fn)(x)


def _reference(array: np.ndarray, dims, keepdim) -> tuple[np.ndarray, np.ndarray]:
    """The exact sum (math.fsum, rounded to float64) and the sum of absolute values (the scale of the error bound)."""
    dims = tuple(range(array.ndim)) if dims is None else dims
    kept = [d for d in range(array.ndim) if d not in dims]
    rows = np.transpose(array, kept + list(dims)).reshape([array.shape[d] for d in kept] + [-1]).astype(np.float64)
    exact = np.apply_along_axis(math.fsum, -1, rows) if rows.shape[-1] else np.zeros(rows.shape[:-1])
    scale = np.abs(rows).sum(axis=-1)
    shape = [1 if d in dims else s for d, s in enumerate(array.shape)] if keepdim else exact.shape
    return np.reshape(exact, shape), np.reshape(scale, shape)


# ----------------------------------------------------------------------------------------------- float sums


@pytest.mark.parametrize("jit", [False, True])
def test_a_million_tenths(backend, jit):
    # onnxruntime gave 99,910.33 (PyTorch and NumPy 100,000.01)
    x = slope.full((10**6,), 0.1)
    exact = float(np.float32(0.1)) * 10**6
    total = _sum(x, None, False, jit).item()
    assert abs(total - exact) <= 257 * U["float32"] * exact
    assert abs(total - exact) < 0.05
    mean = (slope.jit(lambda x: x.mean()) if jit else lambda x: x.mean())(x).item()
    assert abs(mean - float(np.float32(0.1))) <= 257 * U["float32"] * 0.1


CASES = [
    ((10**6,), None),
    ((10**5, 10), (0,)),  # NumPy itself adds along axis 0 one by one: 2,400 u off
    ((1000, 1000), (1,)),
    ((1000, 1000), (0,)),
    ((64, 32, 26, 26), (0, 2, 3)),  # a conv bias gradient
    ((200, 100), (0,)),
    ((600, 100), (0,)),  # a bias gradient of a larger batch
    ((7, 1009), (1,)),  # a prime length, longer than a block
    ((1009, 3), (0,)),
    ((3, 257, 2), (0, 1)),
    ((2, 130, 3, 130), (1, 3)),
    ((257,), (0,)),
    ((256,), (0,)),
    ((2, 4099, 3), (1,)),  # a prime length: padded to whole blocks
    ((5, 0, 3), (1,)),
    ((), None),
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape, dims", CASES, ids=[f"{s}-{d}" for s, d in CASES])
def test_float_sum_error_bound(backend, dtype, shape, dims):
    stages = 1 if dtype == "float32" else 3
    rng = np.random.default_rng(abs(hash(shape)) % 2**32)
    for data in (np.full(shape, 0.1), rng.random(shape) - 0.25):
        array = data.astype(dtype)
        x = slope.tensor(array)
        for keepdim, jit in ((False, False), (True, True)):
            got = _sum(x, dims, keepdim, jit)
            exact, scale = _reference(array, dims, keepdim)
            assert got.dtype == x.dtype and got.shape == exact.shape
            error = np.abs(got.numpy().astype(np.float64) - exact)
            bound = (stages * 256 + 1) * U[dtype] * scale
            assert np.all(error <= bound), (float(np.max(error / np.maximum(scale, 1e-300))) / U[dtype], "u")


def test_float_sum_gradient_is_unchanged(backend):
    x = slope.tensor(np.random.default_rng(6).standard_normal((300, 200)).astype(np.float32))
    g = slope.grad(lambda x: (x.sum(0) * slope.arange(200, dtype=slope.float32)).sum())(x)
    np.testing.assert_array_equal(g.numpy(), np.broadcast_to(np.arange(200, dtype=np.float32), (300, 200)))


# ----------------------------------------------------------------------------------------------- float16, bfloat16


def _within_one_ulp(got: float, expected: float, dtype: str) -> bool:
    return abs(got - expected) <= ULP[dtype] * abs(expected)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_sums_and_means_like_torch(backend, dtype):
    torch = pytest.importorskip("torch")
    # NumPy's bfloat16 sum stalls at 32 (a mean of 0.1 was 0.032); a float16 mean over 600,000 was 0 (the count
    # overflowed float16) on both backends
    for n, value in ((10**3, 0.1), (6 * 10**5, 0.1), (10**6, 0.1)):
        t = torch.full((n,), value, dtype=getattr(torch, dtype))
        x = slope.full((n,), value, dtype=getattr(slope, dtype))
        assert x.mean().dtype == x.dtype and x.sum().dtype == x.dtype
        assert x.mean().item() == t.mean().item(), n
        assert x.sum().item() == t.sum().item(), n
    rng = np.random.default_rng(0)
    data = rng.random((3000, 40)) * 2 - 0.5
    t = torch.tensor(data, dtype=torch.float32).to(getattr(torch, dtype))
    x = slope.tensor(t.float().numpy()).astype(getattr(slope, dtype))
    for dims in (None, 0, 1):
        for name in ("sum", "mean", "var", "std"):
            ours = getattr(x, name)(dims) if dims is not None else getattr(x, name)()
            theirs = getattr(t, name)(dims) if dims is not None else getattr(t, name)()
            assert ours.dtype == x.dtype
            for a, b in zip(ours.numpy().astype(np.float64).reshape(-1), theirs.double().numpy().reshape(-1)):
                assert _within_one_ulp(a, b, dtype), (name, dims, a, b)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_statistics_of_many_elements(backend, dtype):
    torch = pytest.importorskip("torch")
    data = np.random.default_rng(1).standard_normal(6 * 10**5) * 0.1 + 0.1
    t = torch.tensor(data, dtype=torch.float32).to(getattr(torch, dtype))
    x = slope.tensor(t.float().numpy()).astype(getattr(slope, dtype))
    for name in ("mean", "var", "std"):
        assert _within_one_ulp(getattr(x, name)().item(), getattr(t, name)().item(), dtype), name


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_cumsum_like_torch(backend, dtype):
    torch = pytest.importorskip("torch")
    data = np.random.default_rng(2).random(20000)
    t = torch.tensor(data, dtype=torch.float32).to(getattr(torch, dtype))
    x = slope.tensor(t.float().numpy()).astype(getattr(slope, dtype))
    ours = x.cumsum(0)
    assert ours.dtype == x.dtype
    got, expected = ours.numpy().astype(np.float64), t.cumsum(0).double().numpy()
    assert np.all(np.abs(got - expected) <= ULP[dtype] * np.abs(expected))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cumsum_error_bound(backend, dtype):
    n = 10**6 if dtype == "float32" else 10**5
    data = np.random.default_rng(3).random(n).astype(dtype)
    got = slope.tensor(data).cumsum(0).numpy().astype(np.float64)
    exact = np.cumsum(data.astype(np.float64)) if dtype == "float32" else np.array([math.fsum(data[:k]) for k in
                                                                                      range(1, n + 1, 997)])  # fmt: skip
    got = got if dtype == "float32" else got[::997]
    scale = np.cumsum(np.abs(data.astype(np.float64)))[:: 1 if dtype == "float32" else 997]
    assert np.all(np.abs(got - exact) <= (math.ceil(math.log2(n)) + 1) * U[dtype] * scale)


# ----------------------------------------------------------------------------------------------- integers

BIG = [
    [2**62, 2**62, 2**62, 1],  # wraps to -2^62 + 1 (onnxruntime saturated at 2^63 - 1)
    [2**63 - 1, 1],
    [-(2**63), -1],
    [2**60 + 1, 1, 3],  # onnxruntime gave 2^60 (its integer ReduceSum adds in double)
    [2**53 + 1, 2**53 + 1],
]


@pytest.mark.parametrize("values", BIG, ids=range(len(BIG)))
def test_int64_sums_wrap_like_torch(backend, values):
    torch = pytest.importorskip("torch")
    t = torch.tensor(values, dtype=torch.int64)
    x = slope.tensor(np.array(values, dtype=np.int64))
    for jit in (False, True):
        assert _sum(x, None, False, jit).item() == t.sum().item()
        assert _sum(x, (0,), True, jit).tolist() == t.sum(0, keepdim=True).tolist()
    assert x.cumsum(0).tolist() == t.cumsum(0).tolist()
    # the same numbers inside matrices, reduced over each dimension and both
    matrix = np.array(values * 3, dtype=np.int64).reshape(3, len(values))
    tm, xm = torch.tensor(matrix), slope.tensor(matrix)
    for dims in ((0,), (1,), (0, 1)):
        for keepdim in (False, True):
            assert _sum(xm, dims, keepdim, True).tolist() == tm.sum(dims, keepdim=keepdim).tolist(), dims
            assert _sum(xm.T, dims, keepdim, False).tolist() == tm.T.sum(dims, keepdim=keepdim).tolist(), dims


def test_int64_sums_of_many_large_numbers(backend):
    data = np.random.default_rng(4).integers(-(2**63), 2**63 - 1, (1000, 300), dtype=np.int64, endpoint=True)
    x = slope.tensor(data)
    with np.errstate(over="ignore"):
        for dims in ((0,), (1,), (0, 1)):
            np.testing.assert_array_equal(_sum(x, dims, False, True).numpy(), data.sum(axis=dims))


@pytest.mark.parametrize("dtype", ["int8", "uint8", "int16", "int32", "bool"])
def test_narrow_integer_sums(backend, dtype):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    info = np.iinfo(np.int32 if dtype == "bool" else dtype)
    data = rng.random((50, 70)) < 0.5 if dtype == "bool" else rng.integers(info.min, info.max, (50, 70), dtype=dtype)
    t, x = torch.tensor(data), slope.tensor(data)
    for dims in ((0,), (1,), (0, 1)):
        ours = x.sum(dims)
        assert ours.dtype == slope.int64 and ours.tolist() == t.sum(dims).tolist()  # as PyTorch: int64 by default
        if dtype != "bool":  # an explicit narrow dtype wraps around in it, as PyTorch
            narrow = x.sum(dims, dtype=getattr(slope, dtype))
            assert narrow.dtype == x.dtype and narrow.tolist() == t.sum(dims, dtype=getattr(torch, dtype)).tolist()


def test_integer_mean_var_and_std_are_computed_in_float64_as_numpy(backend):
    # each integer was rounded to float32 before the sum: 2**40 + 1 and -2**40 cancelled to a mean of 0 (NumPy 0.5)
    cases = [
        np.array([2**40 + 1, -(2**40)], np.int64),
        np.array([2**24 + 1, 2**24], np.int32),
        np.array([2**40 + 1, 2**40, 2**40 + 3], np.int64),
        np.array([[True, False, True], [False, False, True]]),
        np.array([200, 255, 1], np.uint8),
    ]
    for data in cases:
        x = slope.tensor(data)
        for axis in (None, 0):
            expected = [data.mean(axis), data.var(axis, ddof=1), data.std(axis, ddof=1)]
            statistics = functools.partial(lambda v, axis: [v.mean(axis), v.var(axis), v.std(axis)], axis=axis)
            for mine in (statistics, slope.jit(statistics)):
                for got, want in zip(mine(x), expected):
                    assert got.dtype == slope.float32
                    np.testing.assert_array_equal(got.numpy(), np.float32(want), err_msg=str(data))


def test_integer_cumsum_is_exact_beyond_2_53_and_wraps_as_pytorch(backend):
    torch = pytest.importorskip("torch")
    cases = [
        np.array([2**53 + 1, 0, 3], np.int64),
        np.array([2**62, 2**62, 5], np.int64),
        np.array([100, 100], np.int8),
    ]
    for data in cases:
        expected = torch.cumsum(torch.tensor(data), 0).numpy()
        for cumsum in (lambda v: slope.cumsum(v, 0), slope.jit(lambda v: slope.cumsum(v, 0))):
            got = cumsum(slope.tensor(data))
            assert got.dtype == slope.int64 and got.tolist() == expected.tolist(), data


@pytest.mark.parametrize("jit", [False, True])
def test_float16_sums_round_through_float32_as_pytorch(backend, jit):
    """The numpy backend rounded its float64 sum straight to float16 (1 + 2**-11 + 2**-24 gave 1.0009765625); PyTorch
    and the other backends accumulate in float32 and round that: 1.0 (a tie between 1 and 1 + 2**-10, to even)."""
    x = slope.tensor([1.0, 2.0**-11, 2.0**-24]).astype(slope.float16)
    total = slope.jit(lambda v: v.sum())(x) if jit else x.sum()
    assert total.dtype == slope.float16 and total.item() == 1.0


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_spread_removes_the_means_rounding(backend, dtype, jit):
    # var/std centred x on a mean that is not exact and never took its rounding back: constant float32 rows of
    # 1e6 + 0.3 had std 0.188 on onnxruntime (PyTorch 0), float64 [1e20] * 500 std 16400, and a 1e6 offset cost var
    # 3.7e-4 (numpy) to 3e-3 (onnxruntime) of relative error (PyTorch's batched rows 5e-8). Reference: float64 NumPy of x - x[0]
    rng = np.random.default_rng(0)
    noisy = (1e6 + rng.standard_normal((3, 500))).astype(dtype)
    constant = np.full((3, 500), 1e20 if dtype == "float64" else 1e6 + 0.3, dtype)
    var, std = (slope.jit(f, static_argnums=1) if jit else f for f in (slope.var, slope.std))
    for values in (noisy, constant):
        exact = np.var(values.astype(np.float64) - values[:, :1], axis=1, ddof=1)  # (shifted: well conditioned)
        np.testing.assert_allclose(var(slope.tensor(values), 1).numpy(), exact, rtol=64 * U[dtype], atol=0)
        np.testing.assert_allclose(std(slope.tensor(values), 1).numpy(), np.sqrt(exact), rtol=64 * U[dtype], atol=0)


def test_mean_takes_a_dtype_as_pytorch(backend):
    """mean(x, dtype=...) was refused (an unexpected keyword); PyTorch casts x to dtype first, so an int8 tensor's
    mean in float64 is exact and a float64 mean of float32 data keeps its digits."""
    torch = pytest.importorskip("torch")
    data = np.array([[100, 100, 101], [-128, 127, 3]], dtype=np.int8)
    for dtype, dims in (("float64", None), ("float64", 1), ("float16", 0), ("float32", (0, 1))):
        expected = torch.tensor(data).mean(dims, dtype=getattr(torch, dtype)) if dims is not None else None
        expected = torch.tensor(data).mean(dtype=getattr(torch, dtype)) if dims is None else expected
        got = slope.mean(slope.tensor(data), dims, dtype=getattr(slope, dtype))
        assert got.dtype.name == dtype and got.shape == tuple(expected.shape)
        np.testing.assert_array_equal(got.numpy(), expected.numpy())
    fine = np.array([1.0, 1e-8, -1.0], dtype=np.float32)  # the float64 mean of float32 data (not float32's)
    assert slope.tensor(fine).mean(dtype="float64").item() == torch.tensor(fine).mean(dtype=torch.float64).item()
    for dtype in ("int32", "bool"):  # a mean of truncated values, as float32: PyTorch refuses the dtype
        with pytest.raises(slope.DTypeError, match="slope.mean: dtype must be a floating-point dtype"):
            slope.mean(slope.tensor([1.9, 2.9]), dtype=dtype)
