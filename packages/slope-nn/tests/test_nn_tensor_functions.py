"""slope_nn.tensor_functions: PyTorch's eq/ne/lt/le/gt/ge, clone, isfinite, type_as, masked_fill, index_select,
narrow, cumprod, sort, argsort and topk, registered by slope-nn's plugin as `slope.NAME` and Tensor methods; compared
with PyTorch (values, dtypes, NaN order, errors and gradients) where it is installed. split, chunk, roll, tril, triu,
unflatten, repeat, linspace, expand_as, tan, log2, log1p, exp2, reciprocal, amax, amin, argmax and argmin moved here
from slope-core: their conformance rows and differential entries cover them."""

from __future__ import annotations

import math

import numpy as np
import pytest

import slope

pytestmark = pytest.mark.usefixtures("each_backend")

NAMES = ["eq", "ne", "lt", "le", "gt", "ge", "clone", "isfinite", "type_as", "masked_fill", "index_select", "narrow"]
NAMES += ["cumprod", "sort", "argsort", "topk", "split", "chunk", "roll", "tril", "triu"]
NAMES += ["unflatten", "repeat", "linspace", "to", "cpu"]
NAMES += ["expand_as", "tan", "log2", "log1p", "exp2", "reciprocal", "amax", "amin", "argmax", "argmin"]
NAN = math.nan


def test_registered_by_the_nn_plugin_as_functions_and_methods():
    for name in NAMES:
        assert slope.plugins.owners[("function", name)] == "nn", name
        assert hasattr(slope.Tensor, name), name
    x, y = slope.tensor([1.0, 2.0, NAN]), slope.tensor([2.0, 2.0, NAN])
    for short, long in (("eq", "equal"), ("ne", "not_equal"), ("lt", "less"), ("le", "less_equal")):
        np.testing.assert_array_equal(getattr(x, short)(y).numpy(), getattr(slope, long)(x, y).numpy())
    np.testing.assert_array_equal(x.gt(1.5).numpy(), [False, True, False])
    np.testing.assert_array_equal(slope.ge(x, 2).numpy(), [False, True, False])


def test_clone_is_the_same_values_and_passes_gradients():
    x = slope.tensor([-0.0, 1.5, NAN])
    out = x.clone().numpy()
    np.testing.assert_array_equal(out, [-0.0, 1.5, NAN])
    assert np.signbit(out[0])
    grad = slope.grad(lambda t: (t.clone() * t).sum())(slope.tensor([1.0, 3.0]))
    np.testing.assert_array_equal(grad.numpy(), [2.0, 6.0])


def test_isfinite_and_type_as():
    x = slope.tensor([1.0, math.inf, -math.inf, NAN, -0.0])
    np.testing.assert_array_equal(slope.isfinite(x).numpy(), [True, False, False, False, True])
    assert slope.isfinite(slope.tensor([1, 2])).numpy().all()
    out = slope.tensor([1.7, -2.5]).type_as(slope.tensor([1], dtype=slope.int8))
    assert out.dtype == slope.int8
    np.testing.assert_array_equal(out.numpy(), [1, -2])


def test_to_takes_pytorchs_device_dtype_and_tensor_forms(each_backend):
    """`x.to("cpu")`, `x.to("cpu", dtype)`, `x.to(device=, dtype=)`, `x.to(other)` and `x.cpu()`, as PyTorch's, eager
    and traced (x.to("cpu") was "unknown or unsupported dtype 'cpu'"); a device the backend lacks is an error, under
    jit too. Values against torch's for the same calls."""
    torch = pytest.importorskip("torch")
    data = np.array([1.7, -2.5, 300.0], np.float32)
    x, t = slope.tensor(data), torch.tensor(data)
    calls = [
        (lambda a: a.to("cpu"), lambda a: a.to("cpu")),
        (lambda a: a.to("cpu", slope.float64), lambda a: a.to("cpu", torch.float64)),
        (lambda a: a.to(device="cpu", dtype=slope.int8), lambda a: a.to(device="cpu", dtype=torch.int8)),
        (lambda a: a.to(slope.zeros(1, dtype=slope.int16)), lambda a: a.to(torch.zeros(1, dtype=torch.int16))),
        (lambda a: a.cpu(), lambda a: a.cpu()),
    ]
    for ours, theirs in calls:
        for run in (ours, slope.jit(ours)):
            out, expected = run(x), theirs(t)
            assert out.dtype.name == str(expected.dtype).removeprefix("torch."), (out.dtype, expected.dtype)
            assert out.device == "cpu"
            np.testing.assert_array_equal(out.numpy(), expected.numpy())
    grad = slope.grad(lambda a: (a.to("cpu", slope.float64) ** 2).sum())(x)
    np.testing.assert_array_equal(grad.numpy(), 2 * data)
    assert x.to("cpu") is x and x.to("cpu", copy=True) is not x  # (a copy has its own buffer, as PyTorch's)
    batched = slope.vmap(lambda a, b: a.to(b))(slope.ones((2, 3)), slope.zeros((2, 3), dtype=slope.int32))
    assert batched.dtype == slope.int32
    for run in (lambda a: a.to("cuda:7"), slope.jit(lambda a: a.to("cuda:7", slope.float64))):
        with pytest.raises(slope.SlopeBackendError, match="device 'cuda:7' is not available"):
            run(x)


def test_masked_fill_values_gradients_and_errors():
    x = slope.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = slope.tensor([True, False, True])
    np.testing.assert_array_equal(x.masked_fill(mask, NAN).numpy()[0], [NAN, 2.0, NAN])
    # broadcasting the mask over a smaller x, as PyTorch's out-of-place masked_fill
    wide = slope.masked_fill(slope.tensor([1.0, 2.0]), slope.tensor([[True, False], [False, False]]), 0.0)
    np.testing.assert_array_equal(wide.numpy(), [[0.0, 2.0], [1.0, 2.0]])
    # an int x truncates a float value; uint8 wraps -1 (PyTorch's)
    np.testing.assert_array_equal(slope.tensor([0, 0]).masked_fill(slope.tensor([True, False]), 1.7).numpy(), [1, 0])
    ints = slope.tensor([0, 0], dtype=slope.uint8).masked_fill(slope.tensor([True, False]), -1)
    np.testing.assert_array_equal(ints.numpy(), [255, 0])
    # gradients: x's where not filled, a 0-d tensor value's the sum where filled
    gx, gv = slope.grad(lambda a, v: (a.masked_fill(mask, v) * x).sum(), argnums=(0, 1))(x, slope.tensor(2.0))
    np.testing.assert_array_equal(gx.numpy(), [[0.0, 2.0, 0.0], [0.0, 5.0, 0.0]])
    assert gv.numpy() == 1.0 + 3.0 + 4.0 + 6.0
    with pytest.raises(slope.DTypeError, match="masked_fill: the mask must be bool"):
        x.masked_fill(slope.tensor([1, 0, 1]), 0.0)
    with pytest.raises(ValueError, match="masked_fill: value must be a number or a 0-d tensor"):
        x.masked_fill(mask, slope.tensor([1.0]))
    with pytest.raises(ValueError, match="masked_fill.*does not fit uint8"):
        slope.tensor([0], dtype=slope.uint8).masked_fill(slope.tensor([True]), 300)
    with pytest.raises(ValueError, match="masked_fill.*does not fit int64"):
        slope.tensor([0]).masked_fill(slope.tensor([True]), slope.tensor(math.inf))


def test_index_select_values_gradients_and_errors():
    x = slope.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    np.testing.assert_array_equal(x.index_select(1, slope.tensor([2, 0, 2])).numpy(), [[3, 1, 3], [6, 4, 6]])
    np.testing.assert_array_equal(slope.index_select(x, 0, slope.tensor(1, dtype=slope.int32)).numpy(), [[4, 5, 6]])
    assert slope.index_select(slope.tensor(5.0), 0, slope.tensor([0])).shape == ()
    grad = slope.grad(lambda t: t.index_select(1, slope.tensor([2, 0, 2])).sum())(x)
    np.testing.assert_array_equal(grad.numpy(), [[1.0, 0.0, 2.0], [1.0, 0.0, 2.0]])
    with pytest.raises(IndexError, match="index_select"):
        x.index_select(1, slope.tensor([-1]))  # negative: refused, as PyTorch (not counted from the end)
    with pytest.raises(IndexError, match="index_select"):
        x.index_select(1, slope.tensor([3]))
    with pytest.raises(IndexError, match="index_select: index must be 1-d"):
        x.index_select(1, slope.tensor([[0]]))
    with pytest.raises(slope.DTypeError, match="index_select: index must be int32 or int64"):
        x.index_select(1, slope.tensor([0], dtype=slope.int16))


def test_index_select_traced_out_of_range_is_an_error_when_run():
    x = slope.tensor([1.0, 2.0, 3.0])
    select = slope.jit(lambda t, i: t.index_select(0, i))
    np.testing.assert_array_equal(select(x, slope.tensor([2, 0])).numpy(), [3.0, 1.0])
    named = r"slope\.index_select: an index is out of range; expected 0 to {} for dimension 0 of shape {}"  # (it
    with pytest.raises(IndexError, match=named.format(2, r"\(3,\)")):  # named take_along_dim)
        select(x, slope.tensor([-1, 0])).numpy()
    with pytest.raises(IndexError, match=named.format(0, r"\(\)")):  # a 0-d x takes only the index 0
        select(slope.tensor(1.0), slope.tensor([1])).numpy()


def test_narrow_values_and_errors():
    x = slope.arange(6.0)
    np.testing.assert_array_equal(x.narrow(0, -2, 2).numpy(), [4.0, 5.0])
    np.testing.assert_array_equal(slope.narrow(x, 0, slope.tensor(1), 2).numpy(), [1.0, 2.0])
    assert slope.narrow(x, 0, 6, 0).shape == (0,)
    with pytest.raises(IndexError, match="narrow: start 7 is out of range"):
        x.narrow(0, 7, 0)
    with pytest.raises(ValueError, match="narrow: start 4 \\+ length 3 exceeds"):
        x.narrow(0, 4, 3)
    with pytest.raises(ValueError, match="narrow: length must be non-negative"):
        x.narrow(0, 2, -1)
    with pytest.raises(IndexError, match="narrow: expected a tensor with at least one dimension"):
        slope.tensor(1.0).narrow(0, 0, 1)


def test_cumprod_gradients_are_exact_with_zeros():
    torch = pytest.importorskip("torch")
    values = [[2.0, 0.0, 3.0, 0.0, -1.5], [0.5, 4.0, 0.0, 2.0, 3.0], [1.5, -2.0, 0.5, 3.0, 0.25]]
    weights = [[1.0, -2.0, 0.5, 3.0, 1.0], [2.0, 1.0, -1.0, 0.5, 2.0], [1.0, 1.0, 1.0, 1.0, 1.0]]
    x = slope.tensor(values, dtype=slope.float64)
    out = slope.cumprod(x, 1)
    grad = slope.grad(lambda t: (slope.cumprod(t, dim=1) * slope.tensor(weights, dtype=slope.float64)).sum())(x)
    tx = torch.tensor(values, dtype=torch.float64, requires_grad=True)
    expected = torch.cumprod(tx, 1)
    (expected * torch.tensor(weights, dtype=torch.float64)).sum().backward()
    np.testing.assert_allclose(out.numpy(), expected.detach().numpy(), rtol=1e-15)
    np.testing.assert_allclose(grad.numpy(), tx.grad.numpy(), rtol=1e-14)  # (dividing by x gave NaN at the zeros)


@pytest.mark.parametrize("jit", [False, True])
def test_float32_cumprod_accumulates_in_float64_as_pytorch(jit):
    """float32 products were taken in float32: [1e30, 1e30, 1e-30, 1e-30] ended in inf * 1e-30 = NaN (PyTorch's CPU
    kernel accumulates in double: 1.0), and the tree of products was 2.8e-5 off over 10,000 values near 1 (PyTorch:
    6e-8, within float32's rounding). Values against PyTorch's float32 cumprod; gradients against PyTorch's float64
    ones rounded to float32 (its float32 backward of the first row is NaN at the two 1e30s, where the exact gradient
    is 1 + 2e-30), the long row's within 2e-7 of the largest magnitude."""
    torch = pytest.importorskip("torch")
    run = slope.jit(slope.cumprod, static_argnums=1) if jit else slope.cumprod
    short = np.array([1e30, 1e30, 1e-30, 1e-30], np.float32)
    rng = np.random.default_rng(0)
    long = (1 + (rng.uniform(0, 1, 10_000) - 0.5) * 1e-3).astype(np.float32)
    for x, tol in ((short, 0.0), (long, 2e-7)):
        w = np.arange(x.size, dtype=np.float32) % 3 - 1
        got = run(slope.tensor(x), 0).numpy()
        np.testing.assert_allclose(got, torch.tensor(x).cumprod(0).numpy(), rtol=max(tol, 1e-7))
        grad = slope.grad(lambda t, w=w: (run(t, 0) * slope.tensor(w)).sum())(slope.tensor(x)).numpy()
        t = torch.tensor(x.astype(np.float64), requires_grad=True)
        (expected,) = torch.autograd.grad((t.cumprod(0) * torch.tensor(w.astype(np.float64))).sum(), t)
        with np.errstate(over="ignore"):  # (1e60 rounds to inf in float32)
            expected = expected.numpy().astype(np.float32)
        np.testing.assert_allclose(grad, expected, rtol=tol, atol=tol * np.abs(expected[np.isfinite(expected)]).max())


@pytest.mark.parametrize("jit", [False, True])
def test_float32_cumsum_accumulates_in_float64_as_pytorch(jit):
    """float32 cumsum was a float32 scan: [1e8, 1, -1e8, 1, 1] gave [1e8, 1e8, 0, 0, 0] (PyTorch's CPU kernel accumulates
    in double: [1e8, 1e8, 1, 2, 3]) and 84% of the prefixes of 1e7 normals were not the exact sums rounded. Now values
    and gradients (a reverse cumsum) agree with PyTorch's float32 ones bit for bit, on rows with large cancelling
    values in them."""
    torch = pytest.importorskip("torch")
    run = slope.jit(slope.cumsum, static_argnums=1) if jit else slope.cumsum
    rng = np.random.default_rng(0)
    spikes = np.where(rng.random(59_995) < 0.01, 1e6, 1.0)
    x = np.concatenate([[1e8, 1.0, -1e8, 1.0, 1.0], rng.standard_normal(59_995) * spikes]).astype(np.float32)
    x = x.reshape(2, 30_000)
    w = np.flip(x, 1).copy()
    got = run(slope.tensor(x), 1)
    np.testing.assert_array_equal(got.numpy(), torch.tensor(x).cumsum(1).numpy())
    assert got.numpy()[0, :5].tolist() == [1e8, 1e8, 1.0, 2.0, 3.0]
    grad = slope.grad(lambda t: (run(t, 1) * slope.tensor(w)).sum())(slope.tensor(x)).numpy()
    t = torch.tensor(x, requires_grad=True)
    (expected,) = torch.autograd.grad((t.cumsum(1) * torch.tensor(w)).sum(), t)
    np.testing.assert_array_equal(grad, expected.numpy())


def _cumprod_rows(dtype: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """Rows of length n in float64 (rounded to `dtype`): PyTorch's edge rows (overflow beside a zero), random rows with
    zeros, and random rows with zeros, infs and NaNs."""
    big = {"float16": 6e4, "bfloat16": 3e38, "float32": 3e38, "float64": 1.797e308}[dtype]
    edge = [[0.0, 3.0, -big], [0.0, big, 300.0], [-big, -big, 0.0], [big, big, 1 / big], [2.0, -0.0, math.inf]]
    rows = [(row * n)[:n] for row in edge]
    for special in ([0.0], [0.0, math.inf, -math.inf, math.nan]):
        values = rng.uniform(-3, 3, n) * np.where(rng.random(n) < 0.3, big**0.1, 1.0)
        rows.append(np.where(rng.random(n) < 0.15, rng.choice(special, n), values))
    return np.array(rows)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_cumprod_is_pytorchs_left_to_right_product(dtype, each_backend):
    """cumprod was a log-step scan, multiplying partial products that leave a zero out: they overflowed, so float64
    [0, 3, -1.797e308] gave [0, 0, nan] (PyTorch: [0, 0, -0]) and bfloat16 [0, 3e38, 300] [0, 0, nan] (PyTorch: 0s),
    and the other way [-M, -M, 0] gave 0 where PyTorch's inf * 0 is NaN. PyTorch's CPU kernel multiplies left to
    right in float32 (float16, bfloat16) or float64 (float32) and rounds each output: the same bits here (signed
    zeros, infs and NaNs included), eager and jitted, along either dimension, and with dtype= and under vmap."""
    torch = pytest.importorskip("torch")
    if each_backend == "iree":
        pytest.skip("iree runs cumprod's log-step scan (a while loop of one slice a step was 16-950x slower): another "
                    "order than PyTorch's, as slope-nn's iree_translations says")  # fmt: skip
    rng = np.random.default_rng(len(dtype))
    cumprod = slope.jit(slope.cumprod, static_argnums=(1, 2))
    for n in (1, 2, 7, 8, 9, 100, 1000):
        t = torch.tensor(_cumprod_rows(dtype, n, rng)).to(getattr(torch, dtype))
        x = slope.tensor(t.to(torch.float64).numpy()).astype(getattr(slope, dtype))
        expected = t.cumprod(1).to(torch.float64).numpy()
        for got in [cumprod(x, 1, None), cumprod(x.T, 0, None).T] + ([slope.cumprod(x, -1)] if n in (9, 100) else []):
            np.testing.assert_array_equal(got.astype(slope.float64).numpy(), expected, err_msg=f"n={n}")
            signs = np.signbit(got.astype(slope.float64).numpy()) == np.signbit(expected)
            assert (signs | np.isnan(expected)).all(), f"n={n}"  # (zeros' signs too; a NaN's sign is no value)
    wide = slope.vmap(lambda row: slope.cumprod(row, 0, dtype=slope.float64))(x)
    np.testing.assert_array_equal(wide.numpy(), t.cumprod(1, dtype=torch.float64).numpy())


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cumprod_gradient_on_rows_with_zeros_is_torch_autograds(dtype):
    """Gradients of weighted cumprods of rows with zeros (one, two, none; lengths 2 to 100) against torch.autograd's,
    jitted and under vmap (PyTorch's backward divides by x only when a row has no zero)."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    tol = {"float32": 2e-6, "float64": 1e-12}[dtype]
    for n in (2, 7, 9, 100):
        x = rng.uniform(0.5, 1.5, (4, n)) * rng.choice([-1.0, 1.0], (4, n))
        x[0, n // 2], x[1, 0], x[1, -1], x[2, 1], x[2, n - 1] = 0.0, 0.0, 0.0, 0.0, 0.0
        w = rng.standard_normal((4, n))
        t = torch.tensor(x, dtype=getattr(torch, dtype), requires_grad=True)
        (expected,) = torch.autograd.grad((t.cumprod(1) * torch.tensor(w, dtype=t.dtype)).sum(), t)
        weights = slope.tensor(w).astype(getattr(slope, dtype))
        xs = slope.tensor(x).astype(getattr(slope, dtype))
        for grad in (
            slope.jit(slope.grad(lambda a, b: (slope.cumprod(a, 1) * b).sum()))(xs, weights),
            slope.vmap(slope.grad(lambda a, b: (slope.cumprod(a, 0) * b).sum()))(xs, weights),
        ):
            scale = np.abs(expected.numpy()).max()
            np.testing.assert_allclose(grad.numpy(), expected.numpy(), rtol=tol, atol=tol * scale, err_msg=f"n={n}")


def test_cumprod_refuses_bool_dtype_and_running_product_halves():
    """cumprod(x, dtype=bool): PyTorch's "not implemented for 'Bool'" (it named the internal running_product); the
    running_product operator itself refuses halves (onnxruntime's Scan had no kernel: cumprod widens them first)."""
    with pytest.raises(slope.DTypeError, match="slope.cumprod: dtype bool is not supported"):
        slope.cumprod(slope.tensor([True, False]), 0, dtype=slope.bool_)
    for dtype in (slope.float16, slope.bfloat16):
        with pytest.raises(slope.ShapeError, match="running_product: expected numbers other than bool, float16"):
            slope.running_product(slope.tensor([[2.0, 3.0]]).astype(dtype), 1)


def test_cumprod_dtypes():
    assert slope.cumprod(slope.tensor([True, False]), 0).dtype == slope.int64
    out = slope.cumprod(slope.tensor([2, 3, 4], dtype=slope.int8), 0)
    assert out.dtype == slope.int64 and out.numpy().tolist() == [2, 6, 24]
    given = slope.cumprod(slope.tensor([2.0, 100.0]), 0, dtype=slope.int8)  # the dtype asked for, wrapping (PyTorch)
    assert given.dtype == slope.int8 and given.numpy().tolist() == [2, -56]
    wide = slope.cumprod(slope.tensor([300.0, 300.0], dtype=slope.float16), 0, dtype=slope.float32)
    assert wide.dtype == slope.float32 and wide.numpy().tolist() == [300.0, 90000.0]


@pytest.mark.parametrize(
    "dtype", ["int8", "uint8", "int32", "int64", "bool", "float16", "bfloat16", "float32", "float64"]
)
def test_cumsum_and_prod_take_pytorchs_dtype(dtype):
    """cumsum(x, dim, dtype=) and prod(x, dim, keepdim, dtype=) were refused (PyTorch takes them): x is cast to dtype
    first, the result has it (int8 [100, 100, 100] sums to [100, -56, 44], wrapping). PyTorch refuses a bool cumsum;
    floats within the dtype's rounding of PyTorch's (exact for integers and bools)."""
    torch = pytest.importorskip("torch")
    tdtype = getattr(torch, dtype)
    tol = {"float16": 1e-3, "bfloat16": 8e-3, "float32": 1e-6, "float64": 1e-15}.get(dtype, 0)
    for values in ([[1.7, -2.5, 0.0, 3.0], [3.9, 1.0, -1.2, 0.5]], [[100, 100, 100, 7], [-3, 90, 2, 1]]):
        x, t = slope.tensor(values), torch.tensor(values)
        cases = [(slope.prod(x, dtype=dtype), torch.prod(t, dtype=tdtype)),
                 (slope.prod(x, 1, keepdim=True, dtype=dtype), torch.prod(t, 1, keepdim=True, dtype=tdtype)),
                 (x.prod(0, dtype=dtype), t.prod(0, dtype=tdtype))]  # fmt: skip
        if dtype != "bool":
            cases += [(slope.cumsum(x, 1, dtype=dtype), torch.cumsum(t, 1, dtype=tdtype)),
                      (x.cumsum(0, dtype=dtype), t.cumsum(0, dtype=tdtype))]  # fmt: skip
        for got, expected in cases:
            assert got.dtype.name == dtype and got.shape == tuple(expected.shape)
            np.testing.assert_allclose(got.astype("float64").numpy(), expected.double().numpy(), rtol=tol)
    with pytest.raises(slope.DTypeError, match="slope.cumsum: dtype bool"):
        slope.cumsum(slope.tensor([1, 2]), 0, dtype=slope.bool_)
    wrapped = slope.cumsum(slope.tensor([100, 100, 100], dtype=slope.int8), 0, dtype=slope.int8)
    assert wrapped.dtype == slope.int8 and wrapped.tolist() == [100, -56, 44]
    assert slope.jit(lambda v: slope.prod(v, dtype=slope.float64))(slope.tensor([3, 5], dtype=slope.int8)).item() == 15


def test_sort_order_nan_ties_and_gradient():
    x = slope.tensor([3.0, NAN, 1.0, -0.0, 0.0, 3.0, -math.inf])
    result = slope.sort(x)
    values, indices = result
    assert result.values is values and result.indices is indices
    np.testing.assert_array_equal(values.numpy(), [-math.inf, -0.0, 0.0, 1.0, 3.0, 3.0, NAN])
    np.testing.assert_array_equal(indices.numpy(), [6, 3, 4, 2, 0, 5, 1])  # ties (+-0, 3) in index order
    down = x.sort(descending=True)
    np.testing.assert_array_equal(down.indices.numpy(), [1, 0, 5, 2, 3, 4, 6])  # NaN largest, ties still in order
    np.testing.assert_array_equal(x.argsort(descending=True).numpy(), down.indices.numpy())
    weights = slope.arange(3.0)
    grad = slope.grad(lambda t: (t.sort().values * weights).sum())(slope.tensor([3.0, 1.0, 2.0]))
    np.testing.assert_array_equal(grad.numpy(), [2.0, 0.0, 1.0])


def test_sort_under_jit_and_vmap_matches_eager():
    rng = np.random.default_rng(0)
    x = slope.tensor(rng.integers(-3, 4, size=(4, 7)).astype(np.float32))
    eager = slope.sort(x, dim=0, descending=True)
    jitted = slope.jit(lambda t: tuple(slope.sort(t, dim=0, descending=True)))(x)
    mapped = slope.vmap(lambda t: tuple(slope.sort(t, descending=True)), in_axes=1, out_axes=1)(x)
    for got in (jitted, mapped):
        np.testing.assert_array_equal(got[0].numpy(), eager.values.numpy())
        np.testing.assert_array_equal(got[1].numpy(), eager.indices.numpy())


def test_sort_and_topk_match_pytorch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    data = rng.integers(-2, 3, size=(3, 9)).astype(np.float32)
    data[rng.random(data.shape) < 0.2] = np.nan
    x, tx = slope.tensor(data), torch.tensor(data)
    for dim in (0, 1, -1):
        for descending in (False, True):
            ours = slope.sort(x, dim, descending)
            theirs = torch.sort(tx, dim=dim, descending=descending, stable=True)
            np.testing.assert_array_equal(ours.values.numpy(), theirs.values.numpy())
            np.testing.assert_array_equal(ours.indices.numpy(), theirs.indices.numpy())
    for largest in (True, False):
        ours, theirs = slope.topk(x, 4, largest=largest), torch.topk(tx, 4, largest=largest)
        np.testing.assert_array_equal(ours.values.numpy(), theirs.values.numpy())  # (NaN counted as the largest)
        picked = np.take_along_axis(data, ours.indices.numpy(), 1)
        np.testing.assert_array_equal(picked, theirs.values.numpy())


def test_topk_errors_and_gradient():
    x = slope.tensor([[1.0, 5.0, 3.0], [2.0, 0.0, 4.0]])
    with pytest.raises(IndexError, match="topk: k=4 is out of range"):
        x.topk(4)
    with pytest.raises(slope.DTypeError, match="topk: expected numbers, got a bool"):
        slope.topk(slope.tensor([True, False]), 1)
    grad = slope.grad(lambda t: t.topk(2, dim=1).values.sum())(x)
    np.testing.assert_array_equal(grad.numpy(), [[0.0, 1.0, 1.0], [1.0, 0.0, 1.0]])


@pytest.mark.parametrize("p", [2, "fro", 1, 3, 0.5, -1, 0, math.inf, -math.inf])
def test_norm_values_and_gradients_match_pytorch_at_zeros(p):
    torch = pytest.importorskip("torch")
    for values in ([[0.0, 0.0, 0.0], [0.0, 2.0, -2.0]], [[1.0, 0.0, -3.0], [0.5, 2.0, 2.0]]):
        x, tx = slope.tensor(values), torch.tensor(values, requires_grad=True)
        for dim in (None, 1):
            expected = torch.norm(tx, p=p, dim=dim)
            out = slope.norm(x, p, dim)
            np.testing.assert_allclose(out.numpy(), expected.detach().numpy(), rtol=1e-6)
            weights = torch.arange(1.0, 1.0 + expected.numel()).reshape(expected.shape)
            (expected * weights).sum().backward()
            w = slope.tensor(weights.numpy())
            grad = slope.grad(lambda t, d=dim, w=w: (slope.norm(t, p, d) * w).sum())(x)
            expected_grad = tx.grad if tx.grad is not None else torch.zeros_like(tx)  # (p=0: None, zero)
            np.testing.assert_allclose(grad.numpy(), expected_grad.numpy(), rtol=1e-6)  # 0 at the zero vector
            tx.grad = None


@pytest.mark.parametrize("p", [0.3, 0.5, -1, 1.2, 1.5, 2, 3, math.inf])
def test_norm_hessian_matches_torch_func_at_zeros(p):
    """The second derivative is PyTorch's (torch.func.hessian, float64, NaN in the same places): NaN at a zero
    element for 1 < p < 2 and at the zero vector for p < 2 (the exact value is inf there; it was 0)."""
    torch = pytest.importorskip("torch")
    for values in ([0.0, 1.0, -2.0, 3.0], [0.0, 0.0, 0.0], [1e-3, 0.0, -4.0], [0.0, math.inf, 1.0]):
        x = np.array(values)
        hessian = slope.hessian(lambda t: slope.norm(t, p))(slope.tensor(x)).numpy()
        expected = torch.func.hessian(lambda t: torch.norm(t, p))(torch.tensor(x)).numpy()
        np.testing.assert_allclose(hessian, expected, rtol=1e-12, atol=1e-15, err_msg=f"x={values}")


@pytest.mark.parametrize("p", [math.inf, -math.inf])
def test_norm_inf_gradient_with_a_nan_is_pytorchs(p):
    """With a NaN element the +-inf norm is NaN and its gradient PyTorch's 0 (the NaN is the extreme, its sign 0);
    it was NaN everywhere (the extreme matched no element: 0 / 0)."""
    torch = pytest.importorskip("torch")
    values = [[math.nan, 1.0, 0.0], [2.0, -3.0, 1.0]]
    grad = slope.grad(lambda t: slope.norm(t, p, 1).sum())(slope.tensor(values)).numpy()
    tx = torch.tensor(values, requires_grad=True)
    torch.norm(tx, p, 1).sum().backward()
    np.testing.assert_array_equal(grad, tx.grad.numpy())


def test_cumprod_gradient_with_inf_and_nan_is_torch_funcs():
    """With an inf or NaN next to a zero, PyTorch's gradients disagree with each other: plain backward() takes an
    O(n) zero-handling path ([0, inf, 2] -> [inf, 0, 0]), torch.func.grad and create_graph=True its O(n^2)
    exact-products path ([inf, 0, nan]). Slope's cumprod differentiates its products (exact at every order), so it
    follows torch.func.grad."""
    torch = pytest.importorskip("torch")
    for values in ([0.0, math.inf, 2.0], [math.inf, 0.0, 2.0], [0.0, 0.0, math.nan], [1.0, 0.0, 3.0]):
        grad = slope.grad(lambda t: slope.cumprod(t, 0).sum())(slope.tensor(values, dtype=slope.float64)).numpy()
        expected = torch.func.grad(lambda t: torch.cumprod(t, 0).sum())(torch.tensor(values, dtype=torch.float64))
        np.testing.assert_array_equal(grad, expected.numpy(), err_msg=f"x={values}")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cumprod_forward_mode_with_inf_in_the_running_product(dtype):
    """The scan multiplied the elements before `shift` by 1, whose tangent x * 0 is NaN where x is inf: the jvp of
    [1, inf, 2] with tangent [0.5, 1, 1] was [0.5, nan, inf] (exact and torch.func.jvp: [0.5, inf, inf]). Against the
    exact sum over j of t_j * prod_{i <= k, i != j} x_i in Python floats (terms of a zero tangent are 0); torch.func.jvp
    agrees except for a leading inf, where its formula gives NaN for the exact t_0."""
    torch = pytest.importorskip("torch")
    cases = [([1.0, math.inf, 2.0], [0.5, 1.0, 1.0]), ([math.inf, 2.0, 3.0, 4.0, 5.0], [1.0, 0.5, 0.0, 1.0, 2.0]),
             ([2.0, -math.inf, 0.5, 1.0, 3.0, 1.0], [1.0, 0.0, 2.0, 1.0, 0.0, 1.0])]  # fmt: skip
    for values, tangent in cases:
        x, t = (slope.tensor(v, dtype=dtype) for v in (values, tangent))
        _, got = slope.jvp(lambda a: slope.cumprod(a, 0), (x,), (t,))
        exact = [
            sum(
                t_j * math.prod(values[i] for i in range(k + 1) if i != j)
                for j, t_j in enumerate(tangent[: k + 1])
                if t_j
            )
            for k in range(len(values))
        ]
        np.testing.assert_allclose(got.numpy(), exact, rtol=1e-6, err_msg=f"x={values}, t={tangent}")
    _, reference = torch.func.jvp(
        lambda a: torch.cumprod(a, 0), (torch.tensor(cases[0][0]),), (torch.tensor(cases[0][1]),)
    )
    np.testing.assert_array_equal(reference.numpy(), [0.5, math.inf, math.inf])


def test_norm_method_dtypes_and_errors():
    x = slope.tensor([[3.0, 4.0], [0.0, 0.0]], dtype=slope.float16)
    out = x.norm(2, 1, True, dtype=slope.float32)
    assert out.dtype == slope.float32 and out.numpy().tolist() == [[5.0], [0.0]]
    halves = slope.tensor([300.0, 300.0], dtype=slope.float16).norm()  # squares in float32, as PyTorch (not inf)
    assert halves.dtype == slope.float16 and math.isclose(float(halves.numpy()), 424.25)
    huge = slope.tensor([[3e38], [1e-30]]).norm(3, 1)  # one element: |x|, no overflow or underflow (PyTorch's)
    np.testing.assert_array_equal(huge.numpy(), np.array([3e38, 1e-30], np.float32))
    tiny = slope.tensor(4.3e-24)  # a 0-d x given a dim: PyTorch's formula, whose square underflows; without: |x|
    assert tiny.norm(dim=0).numpy() == 0.0 and tiny.norm().numpy() == np.float32(4.3e-24)
    with pytest.raises(slope.DTypeError, match="norm: expected a float tensor"):
        slope.norm(slope.tensor([1, 2]))
    with pytest.raises(slope.DTypeError, match="norm: x of float32 does not convert to dtype float16"):
        slope.norm(slope.tensor([1.0]), dtype=slope.float16)
    with pytest.raises(ValueError, match="norm: p must be 'fro' or a number"):
        slope.norm(slope.tensor([1.0]), "nuc")
    with pytest.raises(ValueError, match="norm: the inf norm of an empty reduction"):
        slope.norm(slope.zeros(0), math.inf)
    with pytest.raises(ValueError, match="norm: the Frobenius norm takes 1 or 2 dims"):
        slope.norm(slope.zeros(2, 2, 2), "fro", (0, 1, 2))


@pytest.mark.parametrize("start", [1, -3, 2, 4, -4])
def test_narrow_at_a_traced_start_matches_pytorch(start):
    """narrow with a 0-d integer tensor start (PyTorch takes one) that is traced: computed inside grad from concrete
    tensors, a jitted argument, or batched by vmap. It was a TypeError asking for a concrete start; the values and
    gradients are PyTorch's, and a start out of range is PyTorch's kind of error, naming narrow, as the program runs."""
    torch = pytest.importorskip("torch")
    x = np.arange(12.0, dtype=np.float32).reshape(3, 4)
    length = 4 - start if start >= 0 else min(-start, 2)
    tx = torch.tensor(x, requires_grad=True)
    expected = torch.narrow(tx, 1, torch.tensor(start), length)
    (gradient,) = torch.autograd.grad((expected**2).sum(), tx)
    s = slope.tensor(start)
    jitted = slope.jit(lambda a, i: a.narrow(1, i, length))
    np.testing.assert_array_equal(jitted(slope.tensor(x), s).numpy(), expected.detach().numpy())
    batched = slope.vmap(lambda i: slope.narrow(slope.tensor(x), 1, i, length))(slope.stack([s, s]))
    np.testing.assert_array_equal(batched.numpy(), np.stack([expected.detach().numpy()] * 2))
    inside = slope.grad(lambda a: (a.narrow(1, s + 0, length) ** 2).sum())(slope.tensor(x))  # (s + 0: traced)
    jitted_grad = slope.jit(slope.grad(lambda a, i: (a.narrow(1, i, length) ** 2).sum()))(slope.tensor(x), s)
    for got in (inside, jitted_grad):
        np.testing.assert_array_equal(got.numpy(), gradient.numpy())


@pytest.mark.parametrize("start, length", [(5, 0), (-5, 1), (3, 2)])
def test_narrow_at_a_traced_start_out_of_range_is_pytorchs_error(start, length):
    torch = pytest.importorskip("torch")
    x = np.zeros((3, 4), np.float32)
    error = IndexError if length < 2 else ValueError  # (PyTorch's IndexError, and RuntimeError for start + length)
    with pytest.raises(IndexError if length < 2 else RuntimeError, match="out of range|exceeds"):
        torch.narrow(torch.tensor(x), 1, torch.tensor(start), length)
    message = "narrow: start is out of range .-4, 4." if length < 2 else f"narrow: start \\+ length {length} exceeds"
    calls = (
        lambda i: slope.jit(lambda a, j: a.narrow(1, j, length))(slope.tensor(x), i),
        lambda i: slope.grad(lambda a: a.narrow(1, i + 0, length).sum())(slope.tensor(x)),
        lambda i: slope.vmap(lambda j: slope.tensor(x).narrow(1, j, length))(i.reshape(1)),
    )
    for call in calls:
        with pytest.raises(error, match=f"^slope.{message}.* .the start is traced"):
            call(slope.tensor(start)).numpy()
