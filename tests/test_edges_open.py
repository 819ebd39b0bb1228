"""The last discrepancies the differential suite (tests/differential) found against PyTorch, each pinned on every
installed backend: integer division by zero, gradients at ties and rounding (clamp, fmod), empty indices and
unflatten of empty tensors, creation with values outside the dtype, bool inputs PyTorch refuses, std's range and
float16 accuracy, conv_transpose's infinities and arguments, log_softmax beside +inf and max-pool windows of padding.

Values are compared with PyTorch exactly (NaN with NaN) unless a tolerance is stated at the assertion.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

import slope

torch = pytest.importorskip("torch")
F = torch.nn.functional


def same(result: slope.Tensor, expected: torch.Tensor, rtol: float = 0.0) -> None:
    got = np.asarray(result.numpy(), dtype=np.float64)
    want = expected.detach().double().numpy()
    assert got.shape == want.shape, (got.shape, want.shape)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=0.0, equal_nan=True)


# ----------------------------------------------------------------------------------------------- division


@pytest.mark.parametrize("dtype", ["int8", "uint8", "int32", "int64"])
def test_integer_div_by_zero_raises_eagerly(backend, dtype):
    x, y = slope.tensor([4, 3], dtype=dtype), slope.tensor([2, 0], dtype=dtype)
    with pytest.raises(ZeroDivisionError, match="slope.div"):  # PyTorch's integer division (trunc) raises too
        slope.div(x, y, rounding_mode="trunc")
    assert slope.div(x, slope.tensor([2, 3], dtype=dtype), rounding_mode="trunc").tolist() == [2, 1]
    assert slope.div(x, y).tolist() == [2.0, math.inf]  # true division, as torch.div (it truncated, as lax.div)


@pytest.mark.parametrize("dtype", ["int8", "uint8", "int32", "int64", "bool", "float32"])
@pytest.mark.parametrize("mode", [None, "trunc", "floor"])
def test_div_is_pytorch_div(backend, dtype, mode):
    # slope.div / Tensor.div truncated integers silently (the core operator's lax.div semantics): [2, -3, 1] for
    # torch.div's [2.5, -3.5, 1.5]
    values = [[5, 7, 3, 0], [1, 1, 0, 1]] if dtype == "bool" else [[5, -7, 3, -8], [2, 2, -2, 3]]
    values = [[abs(v) for v in row] for row in values] if dtype == "uint8" else values
    x, y = (slope.tensor(v, dtype=dtype) for v in values)
    tx, ty = (torch.tensor(v, dtype=getattr(torch, dtype)) for v in values)
    if dtype == "bool" and mode:
        return  # (PyTorch refuses rounded division of bools; Slope's message is checked in test_bad_input)
    for got, want in [(slope.div(x, y, rounding_mode=mode), torch.div(tx, ty, rounding_mode=mode)),
                      (x.div(2, rounding_mode=mode), tx.div(2, rounding_mode=mode)),
                      (slope.jit(lambda a, b: a.div(b, rounding_mode=mode))(x, y), torch.div(tx, ty, rounding_mode=mode))]:  # fmt: skip
        assert got.dtype.name == str(want.dtype).removeprefix("torch."), (got.dtype, want.dtype)
        same(got, want)


def test_fmod_gradient_in_y_uses_the_rounded_quotient(backend):
    # 100 / 0.1f rounds to 1000 in float32; the exact quotient is 999.99...: PyTorch's d/dy is -1000
    x, y = np.float32(100.0), np.array([0.1, 3.0, -7.5], dtype=np.float32)
    gy = slope.grad(lambda b: slope.fmod(slope.tensor(x), b).sum())(slope.tensor(y))
    ty = torch.tensor(y, requires_grad=True)
    torch.fmod(torch.tensor(x), ty).sum().backward()
    same(gy, ty.grad)


@pytest.mark.parametrize(
    "x,lo,hi",
    [([-1.5, 0.0, 2.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]), ([-1.5, 3.0, 0.5], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0])],
)
def test_clamp_gradient_where_min_is_not_below_max(backend, x, lo, hi):
    def f(x, lo, hi):
        return (slope.clamp(x, lo, hi) * slope.tensor([1.0, 2.0, 3.0])).sum()

    grads = slope.grad(f, argnums=(0, 1, 2))(*(slope.tensor(v) for v in (x, lo, hi)))
    leaves = [torch.tensor(v, requires_grad=True) for v in (x, lo, hi)]
    (torch.clamp(*leaves) * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    for g, leaf in zip(grads, leaves):
        same(g, leaf.grad)


def test_clamp_needs_a_bound(backend):
    with pytest.raises(ValueError, match="slope.clip"):
        slope.clamp(slope.ones(2), None, None)


# ----------------------------------------------------------------------------------------------- shapes, indices


def test_unflatten_of_an_empty_dimension(backend):
    assert slope.unflatten(slope.zeros(0, 2, 2), -2, (-1, 2)).shape == (0, 1, 2, 2)  # -1 from the dimension alone
    assert slope.unflatten(slope.zeros(0, 3), 0, (0, 5)).shape == (0, 5, 3)
    with pytest.raises(slope.ShapeError, match="slope.unflatten"):
        slope.unflatten(slope.zeros(0), 0, (2,))


def test_an_empty_index_list_selects_nothing(backend):
    x = slope.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert x[[]].shape == (0, 2)
    assert x.at[[]].set(5.0).tolist() == x.tolist()
    assert x.at[[]].add(5.0).tolist() == x.tolist()
    assert slope.zeros(0).at[[]].add(1.0).shape == (0,)


@pytest.mark.parametrize("index", [(False, [0]), ([], [7]), (slice(None), [])])
def test_indices_beside_an_empty_index_are_not_checked(backend, index):
    # PyTorch checks the range of what an advanced index takes: beside an empty index it takes nothing
    x, expected = slope.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    same(x[index], expected[index])
    with pytest.raises(IndexError, match="slope.getitem"):
        x[[0], [7]]


CAT_CASES = [  # (shapes, dtypes, dim): PyTorch's legacy rule skips 1-d empty tensors (its dtype still counts)
    ([(0,), (2, 3)], ["float32", "float32"], 0),
    ([(2, 3), (0,)], ["float32", "float64"], 1),
    ([(0,), (2, 3), (0,)], ["int64", "float32", "float32"], -1),
    ([(0,), (0,)], ["float32", "int32"], 0),
    ([(0, 3), (2, 3)], ["float32", "float32"], 0),
]


@pytest.mark.parametrize("shapes,dtypes,dim", CAT_CASES)
def test_cat_skips_1d_empty_tensors_as_pytorch(backend, shapes, dtypes, dim):
    """The accumulator idiom `cat([tensor([]), x])`: values, dtype and gradients as PyTorch's, eager and jitted."""
    data = [np.arange(math.prod(s)).reshape(s) + 1.0 for s in shapes]
    ts = [torch.tensor(d, dtype=getattr(torch, t), requires_grad=t.startswith("float")) for d, t in zip(data, dtypes)]
    expected = torch.cat(ts, dim)
    xs = [slope.tensor(d, dtype=t) for d, t in zip(data, dtypes)]
    for cat in (slope.cat, slope.jit(slope.cat, static_argnums=1)):
        out = cat(xs, dim)
        assert out.dtype == slope.dtypes.as_dtype(str(expected.dtype).removeprefix("torch."))
        same(out, expected)
    if expected.dtype.is_floating_point and all(t.requires_grad for t in ts):
        (expected * expected).sum().backward()
        grads = slope.grad(lambda *a: (slope.cat(list(a), dim) ** 2).sum(), argnums=tuple(range(len(xs))))(*xs)
        for g, t in zip(grads, ts):
            same(g, t.grad)


# ----------------------------------------------------------------------------------------------- bool and uint8


def test_bool_inputs_as_pytorch(backend):
    b = slope.tensor([True, False])
    assert slope.sign(b).tolist() == [True, False] and slope.sign(b).dtype == slope.bool_
    assert slope.square(b).tolist() == [1, 0] and slope.square(b).dtype == slope.int64
    for name in ("floor", "ceil", "round", "abs", "argmax", "argmin"):
        with pytest.raises(slope.DTypeError, match=f"slope.{name}"):
            slope.functions[name](b)
    with pytest.raises(slope.ShapeError, match="slope.arange"):
        slope.arange(3, dtype="bool")
    with pytest.raises(slope.DTypeError, match="slope.linspace"):
        slope.linspace(0, 3, 3, dtype="bool")


def test_all_and_any_of_uint8_are_uint8(backend):
    x = slope.tensor([[1, 0], [2, 3]], dtype="uint8")
    for name in ("all", "any"):
        out = slope.functions[name](x, 1)
        expected = getattr(torch, name)(torch.tensor([[1, 0], [2, 3]], dtype=torch.uint8), 1)
        assert out.dtype == slope.uint8 and out.tolist() == expected.tolist()


def test_arange_refuses_fractions_for_integer_dtypes(backend):
    with pytest.raises(ValueError, match="slope.arange"):
        slope.arange(0, 2.5, 0.5, dtype="int32")
    same(slope.arange(3, 0.1, -0.1, dtype="float16"), torch.arange(3, 0.1, -0.1, dtype=torch.float16))


# ----------------------------------------------------------------------------------------------- std


@pytest.mark.parametrize(
    "values,dtype",
    [([0.0, 0.0, 1e20], "float32"), ([1e30, -1e30, 3e30], "float32"), ([0.0, -3.05e-5], "float16"),
     ([1e-3, 2e-3, 5e-3], "bfloat16"), ([2.0, 2.0, 2.0], "float64")],
)  # fmt: skip
def test_std_cannot_overflow_and_rounds_once(backend, values, dtype):
    x = slope.tensor(values).astype(dtype)
    expected = torch.tensor(values, dtype=torch.float64).to(getattr(torch, dtype)).std()
    same(x.std(), expected, rtol={"float32": 1e-6, "float64": 1e-12}.get(dtype, 1e-2))
    assert x.std().dtype == x.dtype


def test_std_gradient_with_scaling(backend):
    values = np.array([[1.0, 2.0, 4.0], [3.0, 3.0, 3.0]], dtype=np.float64)
    g = slope.grad(lambda x: (x.std(1) * slope.tensor([1.0, 2.0], dtype="float64")).sum())(slope.tensor(values))
    leaf = torch.tensor(values, requires_grad=True)
    (leaf.std(1) * torch.tensor([1.0, 2.0], dtype=torch.float64)).sum().backward()
    same(g, leaf.grad, rtol=1e-12)


# ----------------------------------------------------------------------------------------------- creation

FILL_VALUES = [True, -3, 0.5, -2.5, 1e300, math.inf, math.nan, 2**40, -(2**63), 2**63, 255, 256, -255, -256]
DTYPES = ["float16", "bfloat16", "float32", "float64", "int8", "uint8", "int16", "int32", "int64", "bool"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("value", FILL_VALUES)
def test_full_takes_and_refuses_values_as_pytorch(backend, value, dtype):
    try:  # PyTorch's check for tensors of more than one element (Slope checks every shape)
        expected = torch.full((2,), value, dtype=getattr(torch, dtype))
    except (RuntimeError, OverflowError):
        with pytest.raises(ValueError, match="slope.full"):
            slope.full((2,), value, dtype=dtype)
        return
    for fill in (
        lambda: slope.full((2,), value, dtype=dtype),
        lambda: slope.full_like(slope.ones(2, dtype=dtype), value),
    ):
        out = fill()
        assert out.dtype == slope.dtypes.as_dtype(dtype)
        same(out, expected)


@pytest.mark.parametrize("data", [[-2], [-255, 3], [True, -2], -2, [-256], [300], [-1.5], [2**63]])
def test_tensor_wraps_negative_ints_into_unsigned_as_pytorch(backend, data):
    try:
        expected = torch.tensor(data, dtype=torch.uint8)
    except (RuntimeError, ValueError):
        with pytest.raises(ValueError, match="slope.tensor"):
            slope.tensor(data, dtype="uint8")
        return
    same(slope.tensor(data, dtype="uint8"), expected)


LINSPACE_CASES = [
    (0.1, 0.7, 7),
    (0, 1, 49),
    (-3.3, 7.1, 101),
    (1e-3, 0.9, 13),
    (0.2, 0.9, 1000),
    (1000.0, 1, 2),
    (3, -7, 4),
]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize("start,end,steps", LINSPACE_CASES)
def test_linspace_counts_the_second_half_from_the_end_as_pytorch(backend, start, end, steps, dtype):
    """PyTorch rounds the ends to the dtype and counts the second half back from the end, so the last point is the
    end exactly (bfloat16 linspace(1000, 1, 2) was [1000, 0]); its vectorized kernel may round a point differently."""
    out, expected = (
        slope.linspace(start, end, steps, dtype=dtype),
        torch.linspace(start, end, steps, dtype=getattr(torch, dtype)),
    )
    same(out[-1:], expected[-1:])
    same(out[:1], expected[:1])
    bound = 2.0 * float(torch.finfo(expected.dtype).eps) * max(abs(start), abs(end))  # a rounding of the ends' size
    np.testing.assert_allclose(out.numpy().astype(np.float64), expected.double().numpy(), rtol=0.0, atol=bound)


NUMBERS = [-0.5, -0.0, 255.9, 127.5, -128.9, 1e20, 2**64, -(2**64), 2**1100]
MIXED = [[1.5, -0.5], [2**63, -1], [-1, 0.0], [-1, 2.5], [True, -0.5], [[-255, 1.0], [3, 255.0]], [-128, 127.5]]
TENSOR_VALUES = [*FILL_VALUES, *NUMBERS, *MIXED]  # each int and float by its own rule, as PyTorch


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("data", TENSOR_VALUES, ids=lambda v: repr(v)[:24])
def test_tensor_takes_and_refuses_python_numbers_as_pytorch(backend, data, dtype):
    """PyTorch checks a Python float against an integer dtype's range before truncating it (uint8 refuses -0.5 and
    255.9, int8 127.5) and takes ints beyond int64 into a float dtype (2**63 into bfloat16, 2**64 into float32)."""
    try:
        expected = torch.tensor(data, dtype=getattr(torch, dtype))
    except (RuntimeError, OverflowError, ValueError):
        with pytest.raises(ValueError, match=r"slope\.tensor: .*does not fit"):
            slope.tensor(data, dtype=dtype)
        return
    with np.errstate(over="ignore"):  # NumPy warns of an overflow to inf in float16 (PyTorch gives inf silently)
        out = slope.tensor(data, dtype=dtype)
    assert out.dtype == slope.dtypes.as_dtype(dtype)
    same(out, expected)


@pytest.mark.parametrize("low,high,dtype", [(4, 8, "bool"), (0, 3, "bool"), (-1, 3, "uint8"), (0, 257, "uint8")])
def test_randint_bounds_outside_the_dtype_are_refused(backend, low, high, dtype):
    with pytest.raises(ValueError, match="randint"):
        slope.randint(low, high, (2,), dtype=dtype)
    assert slope.randint(0, 2, (3,), dtype="bool").dtype == slope.bool_


# ----------------------------------------------------------------------------------------------- slope-nn


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
def test_layer_norm_of_rows_of_negative_zeros_is_positive_zero(backend, dtype):
    """PyTorch's kernel adds its bias (0) after scaling, so no result is -0.0; Slope gave -0.0 for a row of -0.0s."""
    x = np.full((3, 2), -0.0, np.float32)
    x[2, 1] = 0.0
    expected = F.layer_norm(torch.tensor(x).to(getattr(torch, dtype)), (2,))
    for run in (slope.layer_norm, slope.jit(slope.layer_norm)):
        out = run(slope.cast(slope.tensor(x), dtype)).numpy().astype(np.float32)
        assert np.signbit(out).tolist() == np.signbit(expected.float().numpy()).tolist()


POOL_CASES = [
    ((1, 1, 6), (2,)),
    ((2, 3, 6), (2,)),
    ((1, 1, 4, 4), (2, 2)),
    ((1, 1, 5, 5), (3, 3)),
    ((1, 1, 4, 4, 4), (2, 2, 2)),
]


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("shape,kernel", POOL_CASES)
def test_max_pool_of_windows_of_only_minus_inf_is_minus_inf(backend, shape, kernel, dtype):
    """onnxruntime's float32 MaxPool without indices gave float32's lowest number (-3.4e38) for a window of only
    -inf; a window whose largest element is that number keeps it. Eager and jitted, as PyTorch."""
    lowest = float(np.finfo(np.float32).min) if dtype == "float32" else -2.0
    x = np.random.default_rng(0).choice(np.array([-np.inf, lowest, 1.0, np.nan, -2.0], np.float32), shape)
    x.reshape(-1)[: x.size // 2] = -np.inf  # windows of only -inf among the first
    pool = [F.max_pool1d, F.max_pool2d, F.max_pool3d][len(kernel) - 1]
    expected = pool(torch.tensor(x).to(getattr(torch, dtype)), kernel)
    for run in (slope.max_pool, slope.jit(slope.max_pool, static_argnums=1)):
        same(run(slope.cast(slope.tensor(x), dtype), kernel), expected)


F = torch.nn.functional


@pytest.mark.parametrize(
    "x_shape,w_shape,kwargs",
    [((1, 1, 3), (1, 1, 2), {"stride": 2}), ((2, 4, 5), (4, 3, 2), {"stride": 2, "padding": 1, "output_padding": 1,
      "groups": 2}), ((1, 2, 4, 3), (2, 1, 3, 2), {"stride": (2, 1), "padding": 1, "dilation": 2}),
     ((3, 5), (3, 2, 3), {"stride": 3})],
)  # fmt: skip
def test_conv_transpose_with_infinite_weights_and_without_batch(backend, x_shape, w_shape, kwargs):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    w.reshape(-1)[1] = np.inf  # PyTorch: inf or NaN only where an input element meets it, never an inserted zero
    bias = rng.standard_normal(w_shape[1] * kwargs.get("groups", 1)).astype(np.float32)
    n = len(w_shape) - 2
    expected = getattr(F, f"conv_transpose{n}d")(torch.tensor(x), torch.tensor(w), torch.tensor(bias), **kwargs)
    out = slope.conv_transpose(slope.tensor(x), slope.tensor(w), slope.tensor(bias), **kwargs)
    same(out, expected, rtol=1e-5)
    with pytest.raises(slope.ShapeError, match="slope.conv_transpose: expected a bias"):
        slope.conv_transpose(slope.tensor(x), slope.tensor(w), slope.ones(7), **kwargs)


CONV_GRADIENTS = [  # (x shape, w shape, kwargs, index of the infinite weight)
    ((1, 1, 5, 5), (1, 1, 3, 3), {}, 4),  # the review's find: 16 NaNs where PyTorch has none
    ((2, 4, 7, 6), (8, 4, 3, 3), {"padding": 1}, 0),  # onnxruntime float32: one GEMM and a Col2Im
    ((2, 4, 9, 8), (6, 2, 3, 2), {"stride": (2, 1), "padding": ((1, 2), (0, 1)), "dilation": (1, 2), "groups": 2}, 1),
    ((2, 3, 11), (4, 3, 3), {"stride": 2, "padding": 2, "dilation": 2}, 2),
    ((1, 2, 4, 5, 5), (2, 1, 2, 2, 3), {"stride": 2, "padding": 1, "groups": 2}, 3),
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("x_shape,w_shape,kwargs,at", CONV_GRADIENTS)
def test_conv_input_gradient_never_multiplies_an_inserted_zero(backend, x_shape, w_shape, kwargs, at, dtype):
    """A convolution's input gradient is conv_transpose's sum (above): an infinite weight gives inf or NaN only where
    a cotangent element meets it, as PyTorch. It correlated the zero-padded, stride-dilated cotangent with the
    flipped weight, so inf * 0 made NaN wherever the weight met padding (float64 everywhere; float32 but for
    onnxruntime's jitted 2-d stride-1 form). Eager and jitted."""
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal(x_shape).astype(dtype), rng.standard_normal(w_shape).astype(dtype)
    w.reshape(-1)[at] = np.inf
    padding = kwargs.get("padding", 0)
    padding = padding if isinstance(padding, tuple) else ((padding, padding),) * (len(x_shape) - 2)
    params = {k: v for k, v in kwargs.items() if k != "padding"}
    tx = torch.tensor(x, requires_grad=True)
    padded = F.pad(tx, [amount for pair in reversed(padding) for amount in pair])  # PyTorch's convs pad evenly
    out = getattr(F, f"conv{len(x_shape) - 2}d")(padded, torch.tensor(w), **params)
    probe = rng.standard_normal(tuple(out.shape)).astype(dtype)
    (out * torch.tensor(probe)).sum().backward()

    def grad(a, k, c):
        return slope.grad(lambda t: (slope.conv(t, k, **kwargs) * c).sum())(a)

    for run in (grad, slope.jit(grad)):
        got = run(slope.tensor(x), slope.tensor(w), slope.tensor(probe)).numpy()
        np.testing.assert_array_equal(np.isnan(got), np.isnan(tx.grad.numpy()))
        np.testing.assert_allclose(got, tx.grad.numpy(), rtol=1e-5, atol=1e-5, equal_nan=True)


def test_conv_takes_a_batchless_input_and_checks_its_bias(backend):
    x, w = np.arange(12.0, dtype=np.float32).reshape(2, 6), np.ones((3, 2, 2), np.float32)
    same(slope.conv(slope.tensor(x), slope.tensor(w)), F.conv1d(torch.tensor(x), torch.tensor(w)))
    with pytest.raises(slope.ShapeError, match="slope.conv: expected a bias"):
        slope.conv(slope.tensor(x), slope.tensor(w), slope.ones(1))


EMPTY_CONVS = [  # (x shape, w shape, kwargs): an input empty in a spatial dimension
    ((1, 1, 1, 0), (1, 1, 1, 1), {"padding": 1}),  # the differential suite's find: zeros of shape (1, 1, 3, 2)
    ((2, 3, 0), (4, 3, 2), {"padding": 2}),
    ((1, 1, 0, 2, 2), (1, 1, 1, 1, 1), {"padding": 1}),
    ((3, 0), (2, 3, 1), {"padding": 1}),  # batch-less
    ((0, 1, 1, 0), (1, 1, 1, 1), {"padding": 1}),  # no batch: PyTorch's empty result
]


@pytest.mark.parametrize("x_shape,w_shape,kwargs", EMPTY_CONVS)
@pytest.mark.parametrize("transposed", [False, True])
def test_a_convolution_of_an_input_empty_in_space_raises_as_pytorch(backend, x_shape, w_shape, kwargs, transposed):
    """PyTorch refuses an input empty in a spatial dimension unless its batch (or channel) dimension is empty too;
    Slope returned zeros there (padding made the output non-empty): a ShapeError naming the function and shapes."""
    n = len(w_shape) - 2
    name = "conv_transpose" if transposed else "conv"
    if transposed:  # weight (C_in, C_out, *kernel); padding of the output, so none here
        w_shape, kwargs = (w_shape[1], w_shape[0], *(3 for _ in w_shape[2:])), {}  # outputs of size 2 and more
    reference = getattr(F, f"conv_transpose{n}d" if transposed else f"conv{n}d")
    x, w = np.zeros(x_shape, np.float32), np.ones(w_shape, np.float32)
    try:
        expected = reference(torch.tensor(x), torch.tensor(w), **kwargs)
    except RuntimeError:
        expected = None
    shapes = "|".join(re.escape(str(shape)) for shape in (x_shape, (1, *x_shape)))  # batch-less: with a batch of 1
    for transform in (lambda f: f, slope.jit):
        call = transform(lambda a, b: getattr(slope, name)(a, b, **kwargs))
        if expected is None:
            with pytest.raises(slope.ShapeError, match=rf"slope\.{name}: .*({shapes})"):
                call(slope.tensor(x), slope.tensor(w))
        else:
            same(call(slope.tensor(x), slope.tensor(w)), expected)


def test_log_softmax_beside_inf(backend):
    values = [[-0.5, 1e-30, 0.25], [np.inf, 1.0, -np.inf]]
    for dtype in ("float32", "float64"):
        expected = torch.log_softmax(torch.tensor(values, dtype=getattr(torch, dtype)), 0)
        same(slope.log_softmax(slope.tensor(values).astype(dtype), 0), expected, rtol=1e-6)


def test_cross_entropy_with_an_infinite_logit(backend):
    logits, target = [[-np.inf, -7.5, 5.25]], [1]
    for dtype in ("float32", "float64"):
        expected = F.cross_entropy(torch.tensor(logits, dtype=getattr(torch, dtype)), torch.tensor(target))
        same(slope.cross_entropy(slope.tensor(logits).astype(dtype), slope.tensor(target)), expected, rtol=1e-6)
    with pytest.raises(slope.DTypeError, match="slope.cross_entropy"):
        slope.cross_entropy(slope.tensor([[1, 2]]), slope.tensor([0]))
    with pytest.raises(TypeError, match="slope.one_hot"):
        slope.one_hot(slope.tensor([True]), 2)


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_max_pool_indices_name_the_last_nan(backend, dtype):
    nan = math.nan
    x = np.array([[[nan, 1, nan, 2], [1, nan, nan, 0], [nan, nan, 1, 5], [2, nan, 3, nan]]], dtype=dtype)
    for kernel, stride in (((4,), None), ((2,), 1), ((3,), 1)):
        values, index = slope.max_pool(slope.tensor(x), kernel, stride=stride, return_indices=True)
        ref_values, ref_index = F.max_pool1d(torch.tensor(x), kernel, stride=stride, return_indices=True)
        same(values, ref_values)
        assert index.tolist() == ref_index.tolist()


def test_max_pool_window_of_padding_only(backend):
    x = np.array([[[-100.0], [-2.0], [2.9375]], [[1.5], [0.25], [6.875]]], np.float32)
    kwargs = {"stride": 2, "padding": 1, "dilation": 2}
    values, index = slope.max_pool(slope.tensor(x), (3, 2), return_indices=True, **kwargs)
    ref_values, ref_index = F.max_pool2d(torch.tensor(x), (3, 2), return_indices=True, **kwargs)
    same(values, ref_values)
    assert index.tolist() == ref_index.tolist()
    g = slope.grad(lambda a: slope.max_pool(a, (3, 2), **kwargs).sum())(slope.tensor(x))
    assert g.tolist() == np.zeros_like(x).tolist()  # a constant window: no gradient (PyTorch's goes to its index)


def test_integer_division_of_an_empty_tensor_by_zero(backend):
    for name in ("div", "floor_divide", "remainder", "fmod"):
        out = slope.functions[name](slope.zeros(4, 0, dtype="int32"), slope.tensor(0, dtype="int32"))
        assert out.shape == (4, 0)


# ----------------------------------------------------------------------------------------------- found by the
# differential suite after the merges (issue 10): repeated ellipses, unflatten(()), pooling padding, clip's dtype,
# bfloat16 conv_transpose and cross_entropy with label smoothing

REPEATED_ELLIPSES = [
    (Ellipsis, Ellipsis),
    (Ellipsis, 0, Ellipsis),
    (0, Ellipsis, Ellipsis),
    (None, Ellipsis, Ellipsis),
    (Ellipsis, None, Ellipsis),
    (Ellipsis, slice(1, None), Ellipsis),
    (Ellipsis, Ellipsis, Ellipsis, 0, 0, 0),
    (0, Ellipsis, 0, Ellipsis, 0),
    (Ellipsis, Ellipsis, slice(0, None)),
    (Ellipsis, Ellipsis, slice(None, 5)),
    (Ellipsis, 0, Ellipsis, 0),  # PyTorch: out of bounds (each ellipsis stands for the same dimensions)
    (Ellipsis, Ellipsis, 0),
    (Ellipsis, Ellipsis, slice(1, None)),
    (Ellipsis, Ellipsis, None),
]


@pytest.mark.parametrize("index", REPEATED_ELLIPSES, ids=str)
def test_repeated_ellipses_index_as_pytorch(backend, index):
    x = np.arange(24.0, dtype=np.float32).reshape(2, 3, 4)
    try:
        expected = torch.tensor(x)[index]
    except IndexError:
        with pytest.raises(IndexError, match="slope.getitem"):
            slope.tensor(x)[index]
        return
    same(slope.tensor(x)[index], expected)
    assert slope.tensor(1.0)[..., ...].shape == ()


def test_unflatten_refuses_empty_sizes(backend):
    for shape in ((1,), (3, 1)):
        with pytest.raises(RuntimeError, match="sizes must be non-empty"):
            torch.ones(shape).unflatten(0, ())
        with pytest.raises(slope.ShapeError, match="slope.unflatten"):
            slope.ones(*shape).unflatten(0, ())


@pytest.mark.parametrize("kernel,padding,dilation", [(3, 2, 2), (2, 2, 3), (4, 3, 2), (1, 1, 3)])
def test_max_pool_padding_above_half_the_kernel_raises_whatever_the_dilation(backend, kernel, padding, dilation):
    x = np.ones((1, 2, 9, 9), np.float32)
    with pytest.raises(RuntimeError, match="half of"):
        F.max_pool2d(torch.tensor(x), kernel, padding=padding, dilation=dilation)
    with pytest.raises(ValueError, match="slope.max_pool"):
        slope.max_pool(slope.tensor(x), kernel, padding=padding, dilation=dilation)
    ok = slope.max_pool(slope.tensor(x), 4, padding=2, dilation=2, return_indices=True)
    expected = F.max_pool2d(torch.tensor(x), 4, padding=2, dilation=2, return_indices=True)
    same(ok[0], expected[0])
    assert ok[1].tolist() == expected[1].tolist()


@pytest.mark.parametrize("dtype", ["int8", "uint8", "int16", "int32", "float16"])
def test_clip_of_a_0d_tensor_by_a_number_and_a_0d_tensor_keeps_its_dtype(backend, dtype):
    # PyTorch reads the 0-d tensor bound as a number then (its clamp(Tensor, Scalar, Scalar)): x's dtype
    x, bound = np.array(5, dtype), np.array(2, dtype)
    for lo, hi in ((0, bound), (bound, 1)):
        expected = torch.clamp(
            torch.tensor(x), *(torch.tensor(b) if isinstance(b, np.ndarray) else b for b in (lo, hi))
        )
        got = slope.clip(slope.tensor(x), *(slope.tensor(b) if isinstance(b, np.ndarray) else b for b in (lo, hi)))
        assert got.dtype.name == str(expected.dtype).removeprefix("torch.") == dtype
        same(got, expected)


def test_bfloat16_conv_transpose_is_the_exact_sum_rounded(backend):
    # PyTorch's bfloat16 CPU kernel reads subnormal inputs as zero; its float64 kernel and Slope give the
    # exact sum rounded once (README, Differences from PyTorch)
    x = np.array([[[1.5, -5.877471754111438e-39, 0.5], [0.25, 0.73828125, 2.5]]], np.float32)
    w = np.array([[[7.6875, -1.5, 9.183549615799121e-41]], [[-4.34375, -3.3895313892515355e38, -1.0]]], np.float32)
    args = [torch.tensor(a).to(torch.bfloat16) for a in (x, w)]
    expected = F.conv_transpose1d(*(a.double() for a in args), padding=1).to(torch.bfloat16)
    got = slope.conv_transpose(*(slope.tensor(a).astype("bfloat16") for a in (x, w)), padding=1)
    assert got.dtype == slope.bfloat16
    same(got, expected, rtol=2**-7)  # one bfloat16 rounding apart: the sums are not added in PyTorch's order


def test_cross_entropy_with_label_smoothing_rounds_the_class_sum_as_pytorch(backend):
    big = float(torch.finfo(torch.bfloat16).max)
    logits, target = [[big, -0.44921875, -29952.0], [0.0, 0.5, -0.0]], [1, 1]
    for dtype in ("bfloat16", "float16", "float32", "float64"):
        values = [[min(v, float(torch.finfo(getattr(torch, dtype)).max)) for v in row] for row in logits]
        for reduction in ("mean", "none"):
            expected = F.cross_entropy(torch.tensor(values, dtype=getattr(torch, dtype)), torch.tensor(target),
                                       reduction=reduction, label_smoothing=0.5)  # fmt: skip
            got = slope.cross_entropy(slope.tensor(values).astype(dtype), slope.tensor(target), reduction=reduction,
                                      label_smoothing=0.5)  # fmt: skip
            same(got, expected, rtol={"bfloat16": 2e-2, "float16": 2e-3}.get(dtype, 1e-6))


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("source", ["float64", "int64", "int32", "float32"])
def test_conversion_to_float16_rounds_through_float32_as_pytorch(backend, jit, source):
    # PyTorch converts to float16 through float32 (two roundings): float64 1 + 2**-11 + 2**-40 is 1.0, int64 2**40 inf;
    # the numpy backend's one NumPy rounding gave 1.0009765625 (onnxruntime and iree already went through float32)
    values = [1 + 2**-11 + 2**-40, 2**-25 + 2**-50, 1 + 2**-8 + 2**-40, 70000, -1e-8, 2049, 2051, 65519, 65520, 2**40]
    data = np.array(values, np.float64).astype(source)
    cast = (lambda x: x.astype(slope.float16)) if not jit else slope.jit(lambda x: x.astype(slope.float16))
    got = cast(slope.tensor(data))
    expected = torch.from_numpy(data).to(torch.float16)
    np.testing.assert_array_equal(got.numpy().view(np.uint16), expected.numpy().view(np.uint16))
    if not jit and source == "float64":  # slope.tensor(array, dtype=float16): NumPy's one rounding gave 1.0009765625
        direct = slope.tensor(data, dtype=slope.float16)  # and 65504 for 65519.99 (PyTorch's torch.tensor: 1.0, inf)
        np.testing.assert_array_equal(direct.numpy().view(np.uint16), expected.numpy().view(np.uint16))


SCALAR_INTO_HALF = {  # each case as f(library, h, v): the same code for slope and torch, where their APIs agree
    "tensor": lambda lib, h, v: lib.tensor([v], dtype=lib.float16),
    "full": lambda lib, h, v: lib.full((1,), v, dtype=lib.float16),
    "full_like": lambda lib, h, v: lib.full_like(h, v),
    "equal": lambda lib, h, v: h == v,
    "add": lambda lib, h, v: h + v,
    "where": lambda lib, h, v: lib.where(h > 0, v, h),
    "clip": lambda lib, h, v: h.clip(max=v),
    "arange": lambda lib, h, v: lib.arange(1, 1.01, v - 1, dtype=lib.float16)[:3],
    "pad": lambda lib, h, v: (slope.pad(h, (1, 0), value=v) if lib is slope else F.pad(h, (1, 0), value=v))[:1],
    "set": lambda lib, h, v: (
        h.at[0].set(v) if lib is slope else h.index_put((torch.tensor([0]),), torch.tensor(v, dtype=h.dtype))
    ),
}


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("case", sorted(SCALAR_INTO_HALF))
def test_python_floats_become_float16_through_float32(backend, jit, case):
    # float64 1 + 2**-11 + 2**-40 is 1.0 in PyTorch's float16 (through float32), 1.0009765625 in NumPy's one rounding
    v, h = 1 + 2**-11 + 2**-40, slope.tensor([1.0], dtype=slope.float16)
    f = SCALAR_INTO_HALF[case]
    got = (slope.jit(lambda h: f(slope, h, v)) if jit else lambda h: f(slope, h, v))(h)
    expected = f(torch, torch.tensor([1.0], dtype=torch.float16), v)
    np.testing.assert_array_equal(np.asarray(got.numpy()), expected.numpy())


HALF_BY_NUMBER = {  # f(h, v) for slope and torch alike: PyTorch computes these in float32 and rounds once
    "mul": lambda h, v: h * v,
    "rmul": lambda h, v: v * h,
    "div": lambda h, v: h / v,
    "div-0d": lambda h, v: h / (slope.tensor(v) if isinstance(h, slope.Tensor) else torch.tensor(v)),
    "mul-numpy": lambda h, v: h * np.float64(v),
    "floor_divide": lambda h, v: h // v,  # (3.0 // 0.1 in float16 gave 30, PyTorch 29; // 1e-8 gave NaN at 0)
    "div-trunc": lambda h, v: h.div(v, rounding_mode="trunc"),  # (truncated in float32, then rounded)
    # a 0-d tensor before the half tensor is rounded to the half dtype first in PyTorch, and so is a number before //
    "mul-0d-first": lambda h, v: (slope.tensor(v) if isinstance(h, slope.Tensor) else torch.tensor(v)) * h,
    "div-0d-first": lambda h, v: (slope.tensor(v) if isinstance(h, slope.Tensor) else torch.tensor(v)) / h,
    "floor_divide-number-first": lambda h, v: v // h,
}


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("case", sorted(HALF_BY_NUMBER))
def test_a_half_tensor_times_or_over_a_number_rounds_once_as_pytorch(backend, jit, case):
    # the number was rounded to the half dtype first: float16 x / 65535.0 was x / inf = 0 (PyTorch: 0.9155 for 60000),
    # x * 1e5 was NaN at 0 and inf at 1e-3 (PyTorch 0 and 100.06), x / 70000 was 0; bfloat16 3 * 1.3 was 1 ulp off
    f = HALF_BY_NUMBER[case]
    for dtype in ("float16", "bfloat16"):
        values = [0.0, 1e-3, 0.3, 3.0, -7.5, -9.0, 1000.0, 60000.0]
        h, th = slope.tensor(values, dtype=getattr(slope, dtype)), torch.tensor(values, dtype=getattr(torch, dtype))
        for v in (65535.0, 1e5, 70000, 0.1, 1.3, 1e-7, 1e-8, 2.0, 1 / 3):
            got = (slope.jit(lambda h, v=v: f(h, v)) if jit else lambda h, v=v: f(h, v))(h)
            expected = f(th, v)
            assert got.dtype == getattr(slope, dtype), (case, dtype, v)
            got, expected = np.asarray(got.numpy(), np.float64), expected.double().numpy()
            if backend == "iree":  # (its CPU runtime may flush subnormal results to zero: slope-iree's README)
                tiny = 2.0**-14 if dtype == "float16" else 2.0**-126
                got = np.where((np.abs(expected) < tiny) & (got == 0), expected, got)
            np.testing.assert_array_equal(got, expected, err_msg=f"{case} {dtype} {v}")


def test_the_gradient_of_a_half_tensor_over_a_number_is_pytorchs(backend):
    # d/dx of float16 x / 65535.0 was 0 (1 / inf); PyTorch's is 1.526e-05, as float16
    x, tx = slope.tensor([1.0, 60000.0], dtype=slope.float16), torch.tensor([1.0, 60000.0], dtype=torch.float16)
    got = slope.grad(lambda a: (a / 65535.0).sum())(x)
    tx.requires_grad_(True)
    (tx / 65535.0).sum().backward()
    assert got.dtype == slope.float16
    got, expected = np.asarray(got.numpy(), np.float64), tx.grad.double().numpy()
    if backend == "iree":  # (1.526e-05 is a float16 subnormal, which iree's CPU runtime may flush to zero)
        got = np.where(got == 0, expected, got)
    np.testing.assert_array_equal(got, expected)


def _every_finite(dtype: str) -> np.ndarray:
    """Every finite float16 or bfloat16 value, as float32."""
    if dtype == "float16":
        values = np.arange(2**16, dtype=np.uint16).view(np.float16).astype(np.float32)
    else:
        values = (np.arange(2**16, dtype=np.uint32) << 16).view(np.float32)
    return values[np.isfinite(values)]


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("name", ["tan", "log1p", "rsqrt"])
def test_half_tan_log1p_rsqrt_round_once_as_pytorch(backend, name, jit):
    # step by step in the half dtype, 13-22% of float16 values were up to 2 ulps from PyTorch's (correctly rounded)
    # results (tan(0.06299) in bfloat16 gave 0.06348); in float32, rounded once, a few double roundings remain
    for dtype in ("float16", "bfloat16"):
        values = _every_finite(dtype)
        if backend == "iree":  # (its CPU runtime flushes subnormals to zero: slope-iree's README)
            values = values[(values == 0) | (np.abs(values) >= (2.0**-14 if dtype == "float16" else 2.0**-126))]
        expected = getattr(torch, name)(torch.tensor(values).to(getattr(torch, dtype))).float().numpy()
        function = slope.jit(getattr(slope, name)) if jit else getattr(slope, name)
        got = function(slope.tensor(values).astype(dtype)).numpy().astype(np.float32)
        differ = ~((got == expected) | (np.isnan(got) & np.isnan(expected)))
        assert differ.sum() <= 8, (dtype, values[differ][:8])
        ulp = np.spacing(np.abs(expected[differ]).astype(np.float16 if dtype == "float16" else np.float32))
        assert (np.abs(got[differ] - expected[differ]) <= (ulp if dtype == "float16" else ulp * 2.0**16)).all()


def test_half_conv_with_bias_rounds_once(backend):
    # the product and the bias were each rounded to float16: (1 + 2**-10)**2 - (1 + 2**-9) gave 0, not 2**-20
    e = 2.0**-10
    for dtype in ("float16", "bfloat16"):
        x, w, b = [[[1 + e, 0.5]]], [[[1 + e]], [[1.0]]], [-(1 + 2 * e), 0.25]
        expected = F.conv1d(*(torch.tensor(a, dtype=getattr(torch, dtype)) for a in (x, w, b)))
        got = slope.conv(*(slope.tensor(a).astype(dtype) for a in (x, w, b)))
        assert got.dtype == getattr(slope, dtype)
        same(got, expected)
    with pytest.raises(slope.ShapeError, match=r"expected a bias \[1, f16\] for weight \[1, 1, 1, f16\]"):
        slope.conv(*(slope.tensor(a).astype("float16") for a in ([[[1.0]]], [[[1.0]]], [1.0, 2.0])))


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("exponent", [2, 3, 4])
def test_small_integer_powers_round_as_pytorch(backend, exponent, jit):
    # x ** 3 and x ** 4 of halves were products rounded after each step (float16 0.0031 ** 3 gave 0, not 5.96e-8;
    # 5,000 of float16's 20,000 normal cubes a rounding off) and float32's x ** 4 up to 1.95 ulps off. Halves are
    # checked against the exact power rounded once (PyTorch's float16 powers; its bfloat16 x ** 3 rounds twice)
    power = slope.jit(lambda v: v**exponent) if jit else (lambda v: v**exponent)
    for dtype in ("float16", "bfloat16"):
        values = _every_finite(dtype)
        if backend == "iree":  # (its CPU runtime flushes subnormals to zero: slope-iree's README)
            values = values[(values == 0) | (np.abs(values) >= (2.0**-14 if dtype == "float16" else 2.0**-126))]
        expected = (torch.tensor(values, dtype=torch.float64) ** exponent).to(getattr(torch, dtype)).float().numpy()
        got = power(slope.tensor(values).astype(dtype)).numpy().astype(np.float32)
        if backend == "iree":
            got, expected = got[np.abs(expected) >= 2.0**-14], expected[np.abs(expected) >= 2.0**-14]
        differ = ~((got == expected) | (np.isnan(got) & np.isnan(expected)))
        assert differ.sum() <= 8, (dtype, values[differ][:8])
    x = np.random.default_rng(0).uniform(-3, 3, 10_000).astype(np.float32)
    expected = torch.tensor(x) ** exponent
    got = power(slope.tensor(x)).numpy()
    assert (np.abs(got - expected.numpy()) <= np.spacing(np.abs(expected.numpy()))).all()
