"""Results that a backend's graph rewrites (its own or its runtime's) must not change: each case runs eagerly and
under `jit` on every installed backend and is compared with PyTorch bit for bit (NaN with NaN, the sign of zero).

Found on onnxruntime by review: its int64 Max kernel, its float16 casts merged with ours, its Cast chains merged into
one Cast, its NotWhereFusion swapping Where's inputs, and a Gemm fold of C beside a scale that overflows.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import slope

torch = pytest.importorskip("torch")


def bits(result: slope.Tensor, expected: torch.Tensor) -> None:
    got, want = np.asarray(result.numpy()), expected.numpy()
    assert got.shape == want.shape and str(got.dtype) == str(want.dtype).replace("torch.", ""), (got, want)
    if got.dtype.kind == "f":  # the sign of zero counts (not a NaN's)
        assert np.array_equal(np.signbit(got) & ~np.isnan(got), np.signbit(want) & ~np.isnan(want)), (got, want)
    np.testing.assert_array_equal(got, want)


def eager_and_jit(f, *arrays):
    """f's results eagerly and jitted, from fresh tensors of the arrays."""
    return f(*(slope.tensor(a) for a in arrays)), slope.jit(f)(*(slope.tensor(a) for a in arrays))


def test_int64_maximum_and_minimum_beyond_32_bits(backend):
    x = np.array([2**31, 2**32 - 1, -(2**31) - 1, 2**62, -(2**63), 5], np.int64)
    y = np.array([0, 2**32, 0, 2**62 + 1, 2**63 - 1, -(2**63)], np.int64)
    tx, ty = torch.tensor(x), torch.tensor(y)
    for result in eager_and_jit(lambda a, b: (slope.maximum(a, b), slope.minimum(a, b), slope.relu(a)), x, y):
        bits(result[0], torch.maximum(tx, ty))
        bits(result[1], torch.minimum(tx, ty))
        bits(result[2], torch.relu(tx))


def test_where_of_a_negated_mask_keeps_negative_zero(backend):
    v = np.array([-0.0, np.nan, 1.5, -0.0], np.float32)
    tv = torch.tensor(v)
    for result in eager_and_jit(lambda v: (slope.where(slope.isnan(v), 0.0, v), slope.where(~(v > 1), v, 0.0)), v):
        bits(result[0], torch.where(torch.isnan(tv), 0.0, tv))
        bits(result[1], torch.where(~(tv > 1), tv, 0.0))


def test_a_scaled_product_plus_a_tensor_overflows_as_in_pytorch(backend):
    a, w = np.ones((1, 1), np.float32), np.full((1, 2), 2e38, np.float32)
    b = np.array([-np.inf, -3e38], np.float32)
    ta, tw, tb = (torch.tensor(v) for v in (a, w, b))
    for result in eager_and_jit(lambda a, w, b: ((a @ w) * 3.0 + b, -b - (a @ w) * 3.0, b - (a @ w) * 0.5), a, w, b):
        bits(result[0], (ta @ tw) * 3.0 + tb)  # [nan, inf]: 6e38 overflows before b is added
        bits(result[1], -tb - (ta @ tw) * 3.0)
        bits(result[2], tb - (ta @ tw) * 0.5)


HALF_CASES = {
    "equal": lambda x: x.half() == 2048,
    "less": lambda x: x.half() < 2049,
    "greater_equal": lambda x: x.half() >= 2049,
    "isinf": lambda x: (x.half() * 2).isinf(),
    "floor": lambda x: (x.half() * 3).floor(),
    "ceil": lambda x: x.half().ceil(),
    "clip": lambda x: x.half().clip(1.0, 3000.0) - 1.0,
    "where": lambda x: x.half().where(x.half() > 0, 0.0).sin(),
    "pad": lambda x: slope.pad(x.half(), (1, 1)).sin(),
    "max": lambda x: x.half().max() - 2048,
    "argmax": lambda x: x[:2].half().argmax(),
    "neg": lambda x: (-(x.half() * 3)).sin(),
    "abs": lambda x: (x.half() * -3).abs().sin(),
}


@pytest.mark.parametrize("case", sorted(HALF_CASES))
def test_float16_operations_round_their_operands(backend, case):
    # 2049 and 1.0001 are not float16 numbers: each operation must see the rounded value (2048, 1.0)
    x = np.array([2049.0, 2048.0, 40000.0, 1.0001, 0.6665, -0.0], np.float32)
    f = HALF_CASES[case]
    t = torch.tensor(x)
    expected = {
        "equal": t.half() == 2048,
        "less": t.half() < 2049,
        "greater_equal": t.half() >= 2049,
        "isinf": (t.half() * 2).isinf(),
        "floor": (t.half() * 3).floor(),
        "ceil": t.half().ceil(),
        "clip": t.half().clip(1.0, 3000.0) - 1.0,
        "where": torch.where(t.half() > 0, t.half(), 0.0).float().sin().half(),
        "pad": torch.nn.functional.pad(t.half().float(), (1, 1)).sin().half(),
        "max": t.half().max() - 2048,
        "argmax": t[:2].half().argmax(),
        "neg": (-(t.half() * 3)).float().sin().half(),
        "abs": (t.half() * -3).abs().float().sin().half(),
    }[case]
    for result in eager_and_jit(f, x):
        bits(result, expected)


CAST_DTYPES = ["bool", "int8", "uint8", "int16", "int32", "int64", "float16", "bfloat16", "float32", "float64"]
CAST_VALUES = [0, -0.0, 1, -1, 0.5, 1.5, 2.5, -2.5, 127, 128, 255, 256, -129, 4464, 32767, 65504, 65520, 70000,
               2**24 + 1, 2**31 - 1, 1e20, 1 + 2**-11 + 2**-40, 100.97, 3e9]  # fmt: skip


INTEGERS = ("int8", "uint8", "int16", "int32", "int64")


@pytest.mark.parametrize("source", CAST_DTYPES)
def test_chains_of_casts_keep_each_step(backend, source):
    # x.astype(a).astype(b) as PyTorch's .to(a).to(b); a float converted to an integer type is compared only where C
    # defines the conversion (finite, in range)
    array = np.asarray(slope.tensor(np.array(CAST_VALUES)).astype(getattr(slope, source)).astype(slope.float64).numpy())
    t = torch.tensor(array).to(getattr(torch, source))
    pairs = [(a, b) for a, b in itertools.product(CAST_DTYPES, repeat=2) if len({source, a, b}) == 3]

    def chains(*xs):  # (one input per chain: a Cast with one consumer, as onnxruntime merges)
        return [x.astype(getattr(slope, a)).astype(getattr(slope, b)) for x, (a, b) in zip(xs, pairs)]

    for results in eager_and_jit(chains, *[slope.tensor(array).astype(getattr(slope, source))] * len(pairs)):
        for (a, b), result in zip(pairs, results):
            middle = t.to(getattr(torch, a))
            defined = _defined(t, a) & _defined(middle, b)
            want = middle.to(getattr(torch, b)).double().numpy()[defined]
            got = np.asarray(result.astype(slope.float64).numpy())[defined]
            assert np.array_equal(got, want, equal_nan=True), (source, a, b, got, want)
            assert np.array_equal(np.signbit(got) & (got == 0), np.signbit(want) & (want == 0)), (source, a, b, got)


def _defined(x: torch.Tensor, dtype: str) -> np.ndarray:
    """Where C defines x's conversion to dtype: everywhere but floats outside an integer type's range (NaN, inf)."""
    if dtype not in INTEGERS or not x.is_floating_point():
        return np.ones(x.shape, bool)
    info, wide = torch.iinfo(getattr(torch, dtype)), x.double()
    return (wide.isfinite() & (wide > float(info.min) - 1) & (wide < float(info.max) + 1)).numpy()


@pytest.mark.parametrize(
    "args,dtype",
    [((2**53, 2**53 + 3), None), ((2**62, 2**62 + 3), None), ((0, 2**31 - 1, 2**30), "int32"),
     ((-5, 7, 3), "int8"), ((2, 9, 2), "uint8"), ((2**31 - 3, 2**31), "int64")],
)  # fmt: skip
def test_arange_of_large_integers(backend, args, dtype):
    expected = torch.arange(*args, dtype=getattr(torch, dtype) if dtype else None)
    kwargs = {"dtype": getattr(slope, dtype)} if dtype else {}
    for result in (slope.arange(*args, **kwargs), slope.jit(lambda: slope.arange(*args, **kwargs))()):
        bits(result, expected)


def test_bfloat16_matmul_is_rounded_to_bfloat16(backend):
    # ml_dtypes' bfloat16 matmul (the numpy backend's) returned its float32 values: [1, 2**-8] @ [1, 1] - 1 was 2**-8
    a, b = np.array([[1.0, 2.0**-8]], np.float32), np.ones((2, 1), np.float32)
    expected = torch.tensor(a).bfloat16() @ torch.tensor(b).bfloat16() - 1.0
    for result in eager_and_jit(lambda a, b: a.astype(slope.bfloat16) @ b.astype(slope.bfloat16) - 1.0, a, b):
        assert result.dtype == slope.bfloat16
        bits(result.astype(slope.float32), expected.float())


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_repeated_scatter_adds_accumulate_in_float32(backend, dtype):
    # 1000 bfloat16 ones added one by one in bfloat16 stop at 256 (float16: 3000 at 2048); onnxruntime and PyTorch's
    # scatter_add add in float32 and round once: the numpy backend and iree's .at[].add and gather gradient did not
    n = 1000 if dtype == "bfloat16" else 3000
    index, ones = slope.zeros((n,), dtype=slope.int64), slope.ones((n,), dtype=dtype)
    zero = slope.zeros((1,), dtype=dtype)
    expected = torch.zeros(1, dtype=getattr(torch, dtype)).scatter_add(0, torch.zeros(n, dtype=torch.int64),
                                                                        torch.ones(n, dtype=getattr(torch, dtype)))  # fmt: skip
    results = [slope.scatter_add(zero, 0, index, ones), zero.at[index].add(ones),
               slope.jit(lambda z, i, u: z.at[i].add(u))(zero, index, ones),
               slope.grad(lambda w: w[index].astype(slope.float32).sum())(slope.ones((2,), dtype=dtype))[:1]]  # fmt: skip
    for result in results:
        assert result.astype(slope.float32).item() == expected.float().item() == n


def test_numpy_of_a_tensor_is_a_copy(backend):
    # the numpy backend handed back its buffer: writing to it changed a jitted program's constant and other tensors
    f = slope.jit(lambda x: (x, slope.tensor([1.0, 2.0]) * 1.0 + x * 0.0))
    x = slope.ones((2,))
    a, c = f(x)
    c.numpy()[0], a.numpy()[1] = 99.0, -5.0
    np.asarray(x)[0] = 7.0
    assert f(slope.ones((2,)))[1].tolist() == [1.0, 2.0] and x.tolist() == [1.0, 1.0] and a.tolist() == [1.0, 1.0]
    y = slope.tensor([1.0, 2.0, 3.0])
    np.asarray(y.flip(0))[0] = 0.0
    assert y.tolist() == [1.0, 2.0, 3.0]


def test_tanh_stays_within_one_and_its_derivative_non_negative(backend):
    # onnxruntime's float32 Tanh gave up to 1.0000002 from |x| = 8.2 (so 1 - y**2, the derivative, was negative and
    # gelu(tanh) positive at -5.04), tanh(1e-37) 14 ulps off and tanh(7e-45) 0; its float64 Tanh rounded to 1 from
    # |x| = 17.7 in long tensors (1 - 8e-16 there)
    grid = np.linspace(8.0, 9.5, 20001, dtype=np.float32)
    for values in eager_and_jit(slope.tanh, grid):
        assert values.numpy().max() <= 1.0
    slopes = slope.jit(slope.grad(lambda v: slope.tanh(v).sum()))(slope.tensor(grid)).numpy()
    assert slopes.min() >= 0.0
    gelu = slope.gelu(slope.tensor(np.float32([-5.04468298])), approximate="tanh") if hasattr(slope, "gelu") else None
    assert gelu is None or gelu.item() < 0
    tiny = np.array([1e-37, -2.2e-38, 7e-45, -0.0, 0.0, np.nan, 2.0**-13, -np.inf], np.float32)
    for result in eager_and_jit(slope.tanh, tiny):
        bits(result, torch.tanh(torch.tensor(tiny)))
    wide = np.concatenate([np.linspace(17.0, 19.5, 1001), -np.linspace(17.0, 19.5, 1001), [-0.0, 0.0, -1e-300]])
    expected = torch.tanh(torch.tensor(wide)).numpy()
    for result in eager_and_jit(slope.tanh, wide):
        got = result.numpy()
        assert np.all(np.abs(got - expected) <= np.spacing(np.abs(expected))), np.abs(got - expected).max()
        assert np.array_equal(np.signbit(got), np.signbit(expected))
