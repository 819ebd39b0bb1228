"""slope-nn's operators on the iree backend (slope_nn.iree_translations): what the translations do beyond the shared
conformance matrix: PyTorch's values at the edges (NaN, infinities, -0.0, ties), erf's accuracy, the run-time index
checks, that a scatter leaves its inputs alone, and that max pooling's gradient is one pooling and no scatter."""

from __future__ import annotations

import math

import numpy as np
import pytest

import slope

pytestmark = pytest.mark.skipif("iree" not in slope.plugins.backends, reason="needs slope-iree")


@pytest.fixture(autouse=True)
def on_iree():
    with slope.use_backend("iree"):
        yield


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_erf_below_float64_is_rounded_from_float64(dtype):
    """float32 erf goes through the float64 kernel and is rounded once: within half an ulp of the exact value
    (PyTorch's is as good; the Abramowitz-Stegun fallback is 1.5e-7 off). float16/bfloat16 round twice (through
    float32): within an ulp, subnormal results included."""
    x = np.concatenate([np.linspace(-5, 5, 2001), np.geomspace(1e-30, 4, 500), [0.0, -0.0, math.inf, -math.inf]])
    t = slope.tensor(x, dtype=dtype)
    inputs = t.astype(slope.float64).numpy()
    got = slope.erf(t).astype(slope.float64).numpy()
    exact = np.array([math.erf(v) for v in inputs])
    spacing = np.spacing(np.abs(exact).astype(slope.dtypes.as_dtype(dtype).numpy)).astype(np.float64)
    ulps = 0.5 if dtype == "float32" else 1.0
    assert (np.abs(got - exact) <= ulps * spacing).all(), np.abs(got - exact).max()
    assert math.copysign(1.0, got[2001 + 500 + 1]) == -1.0  # erf(-0.0) is -0.0
    nan = slope.erf(slope.tensor([math.nan], dtype=dtype)).astype(slope.float64).numpy()
    assert math.isnan(nan[0])


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")  # 3e38 in float16 is inf, in PyTorch too
def test_log_softmax_of_nan_and_infinities_matches_pytorch():
    torch = pytest.importorskip("torch")
    inf, nan = math.inf, math.nan
    rows = [[1.0, 2.0, 3.0], [nan, 1.0, 2.0], [-inf, -inf, -inf], [inf, 1.0, 2.0], [inf, -inf, 0.0],
            [-inf, 1.0, 2.0], [3e38, 3e38, -3e38], [-0.0, 0.0, 1.0]]  # fmt: skip
    x = np.array(rows)
    for dtype in ("float32", "float64", "float16"):
        expected = torch.log_softmax(torch.tensor(x).to(getattr(torch, dtype)), 1).double().numpy()
        for run in (slope.log_softmax, slope.jit(slope.log_softmax, static_argnums=1)):
            got = run(slope.tensor(x, dtype=dtype), 1).astype(slope.float64).numpy()
            rtol = {"float16": 1e-3, "float32": 1e-6, "float64": 1e-14}[dtype]
            np.testing.assert_allclose(got, expected, rtol=rtol, atol=rtol, equal_nan=True)
        # along dimension 0 too (the reduction's layout differs)
        got = slope.log_softmax(slope.tensor(x.T, dtype=dtype), 0).astype(slope.float64).numpy()
        np.testing.assert_allclose(got, expected.T, rtol=rtol, atol=rtol, equal_nan=True)


def test_relu_keeps_nan_and_negative_zero():
    x = slope.tensor([math.nan, -0.0, -1.0, 2.0, -math.inf])
    got = slope.relu(x).numpy()
    assert math.isnan(got[0]) and got[1] == 0.0 and math.copysign(1.0, got[1]) == -1.0
    np.testing.assert_array_equal(got[2:], [0.0, 2.0, 0.0])
    np.testing.assert_array_equal(slope.relu(slope.tensor([-3, 0, 4], dtype="int8")).numpy(), [0, 0, 4])


POOLS = [  # (input shape, kernel, stride, padding, dilation): overlapping, padded and dilated windows
    ((2, 3, 7, 5), (3, 3), 2, 1, 1),
    ((1, 2, 9, 8), (2, 3), 1, 0, 2),
    ((2, 2, 11), (3,), 2, 1, 1),
    ((2, 3, 6, 6), (2, 2), None, 0, 1),
    ((2, 3, 7, 9), (2, 2), None, 0, 1),  # tiles that leave a row and a column out
    # one window that leaves input or padding unread at the end: IREE 3.13's compiler failed on these
    ((1, 2, 4), (2,), 3, 0, 1),
    ((1, 1, 1), (2,), 2, 1, 1),
    ((2, 2, 5, 4), (3, 3), 3, 0, 1),
    ((1, 2, 4, 6), (3, 2), 2, 1, 1),
]


@pytest.mark.parametrize(("shape", "kernel", "stride", "padding", "dilation"), POOLS)
def test_max_pool_gradient_matches_pytorch(shape, kernel, stride, padding, dilation):
    """Values, indices and the gradient (jitted, so the gradient's scatter sees max_pool_argmax's positions) against
    PyTorch, with ties (values from a few integers) and -inf in the windows."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(len(shape) + len(kernel))
    x = rng.choice(np.array([-np.inf, 0.0, 1.0, 2.0, 3.0]), size=shape, p=[0.1, 0.2, 0.3, 0.2, 0.2])
    pool = getattr(torch.nn.functional, f"max_pool{len(kernel)}d")
    tx = torch.tensor(x, requires_grad=True)
    expected, expected_index = pool(tx, kernel, stride, padding, dilation, return_indices=True)
    weights = rng.standard_normal(tuple(expected.shape))
    (expected * torch.tensor(weights)).sum().backward()

    w = slope.tensor(weights)

    def step(t):
        value = slope.max_pool(t, kernel, stride, padding, dilation)
        index = slope.max_pool_argmax(t, kernel, stride, padding, dilation)
        grad = slope.grad(lambda u: (slope.max_pool(u, kernel, stride, padding, dilation) * w).sum())(t)
        return value, index, grad

    value, index, grad = slope.jit(step)(slope.tensor(x))
    np.testing.assert_array_equal(value.numpy(), expected.detach().numpy())
    np.testing.assert_array_equal(index.numpy(), expected_index.numpy())
    np.testing.assert_allclose(grad.numpy(), tx.grad.numpy(), rtol=1e-14, atol=0)


def test_max_pool_gradient_of_tiles_pools_once_and_does_not_scatter():
    """The train step of a CNN pools once per max_pool (values and positions from one reduce_window) and routes the
    gradient without a scatter, which IREE runs serially."""
    x = slope.tensor(np.random.default_rng(0).standard_normal((4, 8, 12, 12)).astype(np.float32))
    code = slope.jit(slope.grad(lambda t: (slope.max_pool(t, 2) ** 2).sum())).lower(x).code
    assert code.count("stablehlo.reduce_window") == 1
    assert "stablehlo.scatter" not in code


def test_scatter_add_past_2_to_the_31_elements_is_refused_not_wrong():
    """IREE 3.13 scatters with 32-bit offsets: slope.scatter_add into 2**31 + 100 uint8 zeros added nothing (or crashed
    the process). Translated from avals only (nothing allocated): a SlopeBackendError naming the operator and shape."""
    from slope.ir import Aval, Instruction, Program, Var
    from slope_iree.translate import build_module

    op = slope.plugins.operators["scatter_add"]
    size = 2**31 + 100
    inputs = [Var(Aval((size,), slope.uint8)), Var(Aval((size,), slope.int64)), Var(Aval((size,), slope.uint8))]
    out = Var(op.infer(*(v.aval for v in inputs), dim=0, unique_indices=False))
    program = Program(inputs, [Instruction(op, inputs, {"dim": 0, "unique_indices": False}, [out])], [out])
    message = r"slope\.scatter_add: .*cannot scatter with x of shape \(2147483748,\)"
    with slope.use_backend("iree") as backend, pytest.raises(slope.SlopeBackendError, match=message):
        build_module(program, backend.translations)


def test_scatter_add_leaves_its_inputs_unchanged():
    """A jitted scatter_add called twice on the same tensors gives the same result and x keeps its values (IREE
    3.13 scatters in place into an argument's buffer)."""
    x = slope.tensor(np.array([[-0.0, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0]], np.float32))
    index = slope.tensor(np.array([[0, 3, 3], [1, 1, 0]]))
    src = slope.tensor(np.ones((2, 3), np.float32))
    f = slope.jit(lambda x, i, s: slope.scatter_add(x, 1, i, s))
    first, second = f(x, index, src).numpy(), f(x, index, src).numpy()
    expected = np.array([[1.0, 1.0, 2.0, 5.0], [5.0, 7.0, 6.0, 7.0]], np.float32)
    np.testing.assert_array_equal(first, expected)
    np.testing.assert_array_equal(second, expected)
    np.testing.assert_array_equal(x.numpy(), [[0.0, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0]])
    assert math.copysign(1.0, x.numpy()[0, 0]) == -1.0
    # an element no index names keeps its -0.0
    kept = f(x, slope.tensor(np.array([[1, 1, 2], [0, 0, 0]])), src).numpy()
    assert kept[0, 0] == 0.0 and math.copysign(1.0, kept[0, 0]) == -1.0


@pytest.mark.parametrize("op", ["take_along_dim", "scatter_add"])
def test_traced_indices_out_of_range_raise(op):
    """Indices only known when the program runs are checked then (IREE would clamp them)."""
    x = slope.tensor(np.arange(12.0).reshape(3, 4))
    if op == "take_along_dim":
        f = slope.jit(lambda x, i: slope.take_along_dim(x, i, 1))
    else:
        f = slope.jit(lambda x, i: slope.scatter_add(x, 1, i, slope.ones_like(x)))
    f(x, slope.tensor(np.array([[0, 1, 2, 3]] * 3)))
    # take_along_dim counts negative indices from the end (PyTorch's); scatter_add refuses them (PyTorch's too)
    negative = [[0, -5, 2, 3]] * 3 if op == "take_along_dim" else [[0, -1, 2, 3]] * 3
    for bad in ([[0, 1, 2, 4]] * 3, negative):
        with pytest.raises(IndexError, match=f"slope.{op}"):
            f(x, slope.tensor(np.array(bad)))


def test_max_pool_index_of_a_window_of_padding_only_is_pytorchs():
    # the window over rows -2..? of a 6-row input with stride 5 and padding 2 holds padding only: PyTorch's index is 2
    torch = pytest.importorskip("torch")
    x = np.arange(1, 7, dtype=np.float32).reshape(1, 1, 6, 1)
    args = ((4, 2), (5, 5), (1, 1), (2, 2))
    _, expected = torch.nn.functional.max_pool2d(torch.tensor(x), *args, return_indices=True)

    def pool(a):
        return slope.nn.functional.max_pool(a, *args, return_indices=True)[1]

    for f in (pool, slope.jit(pool)):
        np.testing.assert_array_equal(f(slope.tensor(x)).numpy(), expected.numpy())


def test_max_pool_results_transposed_under_jit_compile():
    # IREE 3.13 rejected a transpose of the two-result reduce_window ("'linalg.yield' op expected number of yield
    # values (2)"): a vmap over a max pool's channels under jit, and a permute of its indices
    x = np.random.default_rng(0).random((4, 2, 6, 6)).astype(np.float32)
    F = slope.nn.functional

    def loss(a):
        return (F.max_pool(a, (2, 2)) ** 2).sum()

    grads = slope.jit(slope.vmap(slope.grad(loss), in_axes=1, out_axes=1))(slope.tensor(x)).numpy()
    indices = slope.jit(lambda a: F.max_pool_argmax(a, (2, 2)).permute((1, 0, 2, 3)))(slope.tensor(x)).numpy()
    with slope.use_backend("numpy"):
        np.testing.assert_allclose(grads, slope.vmap(slope.grad(loss), 1, 1)(slope.tensor(x)).numpy(), rtol=1e-6)
        np.testing.assert_array_equal(indices, F.max_pool_argmax(slope.tensor(x), (2, 2)).permute((1, 0, 2, 3)).numpy())


def test_take_along_dim_of_a_strided_slice_compiles():
    """A gather fused with a strided read of its operand failed in iree-compile ("LLVM Translation failed for operation:
    builtin.unrealized_conversion_cast"): take_along_dim keeps its operand apart, as x[index] does."""
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    index = np.array([[0, 1], [1, 0]])
    got = slope.jit(lambda a, b: slope.take_along_dim(a[:, ::2], b, 1))(slope.tensor(x), slope.tensor(index))
    np.testing.assert_array_equal(got.numpy(), np.take_along_axis(x[:, ::2], index, 1))


@pytest.mark.parametrize("jitted", [False, True])
def test_scatter_add_adds_each_value_into_x_in_turn_as_pytorch(jitted):
    """scatter_add adds each src value into x in index order, as PyTorch's scatter_add (the values were summed into
    zeros first, then added to x: 1e308 plus -1e308 twice was -inf; 1 + 1e-16 + 1e-16 was 1 + 2.2e-16)."""
    torch = pytest.importorskip("torch")

    def scatter_add(x, i, s):
        return slope.scatter_add(x, 1, i, s)

    f = slope.jit(scatter_add) if jitted else scatter_add
    rng = np.random.default_rng(0)
    cases = [
        (np.array([[1e308, 0.0], [1.0, 0.0]]), np.array([[0, 0], [0, 0]]), np.array([[-1e308] * 2, [1e-16] * 2])),
        (rng.standard_normal((2, 3)) * 1e10, rng.integers(0, 3, (2, 2000)),
         rng.standard_normal((2, 2000)) * 10.0 ** rng.integers(-16, 16, (2, 2000))),
    ]  # fmt: skip
    for x, index, src in cases:
        expected = torch.tensor(x).scatter_add(1, torch.tensor(index), torch.tensor(src)).numpy()
        got = f(slope.tensor(x), slope.tensor(index), slope.tensor(src)).numpy()
        np.testing.assert_array_equal(got, expected)
