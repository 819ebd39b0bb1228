"""gelu, softmax, layer_norm and layer_norm_rstd as operators (one onnxruntime kernel each: Gelu, Softmax, one
LayerNormalization for the last two) against PyTorch: values, first and
second derivatives, NaN and inf, float32 and float64, eager and jitted, on every backend under test. The reference is
PyTorch in float64: float32 results agree within 4e-6 of the largest magnitude (PyTorch's own float32 gelu is 1.1e-6
off, its second derivatives more), float64 within 1e-12."""

from __future__ import annotations

import numpy as np
import pytest

import slope

torch = pytest.importorskip("torch")

TOL = {"float32": (1e-5, 4e-6), "float64": (1e-12, 1e-12)}  # rtol, atol relative to the largest magnitude


def _x(dtype: str, shape: tuple = (4, 7), scale: float = 3.0, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


def _torch_grads(fn, x: np.ndarray, weights: np.ndarray) -> tuple:
    t = torch.tensor(x.astype(np.float64), requires_grad=True)
    out = fn(t)
    (grad,) = torch.autograd.grad((out * torch.tensor(weights.astype(np.float64))).sum(), t, create_graph=True)
    (second,) = torch.autograd.grad((grad * torch.tensor(weights[::-1].copy().astype(np.float64))).sum(), t)
    return out.detach().numpy(), grad.detach().numpy(), second.numpy()


def _slope_grads(fn, x: np.ndarray, weights: np.ndarray, jit: bool) -> tuple:
    w, w2 = slope.tensor(weights), slope.tensor(weights[::-1].copy())

    def loss(t):
        return (fn(t) * w).sum()

    def grad_sum(t):
        return (slope.grad(loss)(t) * w2).sum()  # weighted: a softmax gradient's plain sum is 0

    out_fn, grad_fn, second_fn = fn, slope.grad(loss), slope.grad(grad_sum)
    if jit:
        out_fn, grad_fn, second_fn = slope.jit(out_fn), slope.jit(grad_fn), slope.jit(second_fn)
    t = slope.tensor(x)
    return out_fn(t).numpy(), grad_fn(t).numpy(), second_fn(t).numpy()


CASES = {
    "gelu": (lambda t: slope.gelu(t), lambda t: torch.nn.functional.gelu(t)),
    "gelu tanh": (lambda t: slope.gelu(t, "tanh"), lambda t: torch.nn.functional.gelu(t, approximate="tanh")),
    "softmax last": (lambda t: slope.softmax(t, -1), lambda t: torch.softmax(t, -1)),
    "softmax dim 0": (lambda t: slope.softmax(t, 0), lambda t: torch.softmax(t, 0)),
    "layer_norm": (lambda t: slope.layer_norm(t), lambda t: torch.nn.functional.layer_norm(t, t.shape[-1:])),
    "layer_norm eps": (
        lambda t: slope.layer_norm(t, 0.5),
        lambda t: torch.nn.functional.layer_norm(t, t.shape[-1:], eps=0.5),
    ),
    "layer_norm_rstd": (
        lambda t: slope.layer_norm_rstd(t),
        lambda t: (t.var(-1, unbiased=False, keepdim=True) + 1e-5).rsqrt(),
    ),
    "layer_norm and rstd": (
        lambda t: slope.layer_norm(t) * slope.layer_norm_rstd(t),
        lambda t: (
            torch.nn.functional.layer_norm(t, t.shape[-1:]) * (t.var(-1, unbiased=False, keepdim=True) + 1e-5).rsqrt()
        ),
    ),
}


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_fused_operators_match_pytorch_with_two_derivatives(each_backend, case, dtype, jit):
    ours, theirs = CASES[case]
    x = _x(dtype)
    weights = _x(dtype, scale=1.0, seed=1)
    expected = _torch_grads(theirs, x, weights)
    got = _slope_grads(ours, x, weights, jit)
    rtol, atol = TOL[dtype]
    for name, a, b in zip(("value", "gradient", "second derivative"), got, expected):
        assert a.dtype == np.dtype(dtype), name
        if name == "second derivative" and dtype == "float32":
            rtol, atol = 1e-3, 6e-5  # 1 - tanh(u)^2 cancels in float32: the procedures gave 4.3e-5 before too
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol * np.abs(b).max(), err_msg=f"{case} {name}")


def test_gelu_and_softmax_specials_match_pytorch(each_backend):
    x = np.array([np.nan, -np.inf, -30.0, -0.0, 0.0, 1e-30, 30.0], np.float32)
    got = slope.gelu(slope.tensor(x)).numpy()
    np.testing.assert_array_equal(got[:-1], torch.nn.functional.gelu(torch.tensor(x)).numpy()[:-1])
    assert got[-1] == 30.0
    # gradient: NaN stays NaN; 0 and 1 in the tails; 0.5 at 0
    grad = slope.grad(lambda t: slope.gelu(t).sum())(slope.tensor(x[[0, 2, 3, 6]])).numpy()
    np.testing.assert_array_equal(grad, [np.nan, 0.0, 0.5, 1.0])
    rows = np.array([[0.0, np.inf, 1.0], [-np.inf, -np.inf, -np.inf], [np.nan, 1.0, 2.0], [-np.inf, 0.0, 0.0]])
    for dtype in ("float32", "float64"):
        got = slope.softmax(slope.tensor(rows.astype(dtype)), -1).numpy()
        np.testing.assert_array_equal(got, torch.softmax(torch.tensor(rows.astype(dtype)), -1).numpy())


def test_fused_operators_vmap_and_integers(each_backend):
    x = _x("float32", (3, 4, 5))
    batched = slope.vmap(lambda t: slope.softmax(t, 0), in_axes=1)(slope.tensor(x)).numpy()
    np.testing.assert_allclose(batched, np.moveaxis(torch.softmax(torch.tensor(x), 0).numpy(), 1, 0), rtol=2e-6)
    batched = slope.vmap(slope.gelu)(slope.tensor(x)).numpy()
    np.testing.assert_allclose(batched, torch.nn.functional.gelu(torch.tensor(x)).numpy(), rtol=2e-6, atol=2e-6)
    assert slope.gelu(slope.tensor([1, 2])).dtype == slope.float32  # integers promote, as the procedures did
    with pytest.raises(ValueError, match="slope.gelu: approximate"):
        slope.gelu(slope.tensor([1.0]), "sigmoid")


SOFTMAX_DTYPE_ROUTES = {
    "slope": lambda name: lambda t, dim, dtype: getattr(slope, name)(t, dim, dtype=dtype),
    "method": lambda name: (
        lambda t, dim, dtype: getattr(t, name)(dim, dtype)
    ),  # (positional, as torch.softmax takes it)
    "functional": lambda name: lambda t, dim, dtype: getattr(slope.nn.functional, name)(t, dim=dim, dtype=dtype),
}


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("route", sorted(SOFTMAX_DTYPE_ROUTES))
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
@pytest.mark.parametrize("dtypes", [("float32", "float64"), ("float16", "float32"), ("int64", "float64")])
def test_softmax_dtype_casts_the_input_first_as_pytorch(each_backend, name, route, dtypes, jit):
    # dtype= was refused: "LogSoftmax.__call__() got an unexpected keyword argument 'dtype'"; PyTorch casts the input
    # to dtype before the operation, and the gradient comes back in the input's dtype
    given, wanted = dtypes
    x = _x("float32", (3, 5)) if given != "int64" else np.arange(15).reshape(3, 5) % 4
    x = x.astype(given)
    weights = _x(wanted, (3, 5), 1.0, seed=1)
    ours = SOFTMAX_DTYPE_ROUTES[route](name)
    fn = (lambda t: ours(t, 0, getattr(slope, wanted))) if route != "slope" else (lambda t: ours(t, 0, wanted))
    run = slope.jit(fn) if jit else fn
    out = run(slope.tensor(x))
    t = torch.tensor(x, requires_grad=given != "int64")
    expected = getattr(torch, name)(t, 0, dtype=getattr(torch, wanted))
    assert out.dtype == getattr(slope, wanted)
    rtol = {"float32": 2e-6, "float64": 1e-13}[wanted]  # (the same cast input: only the kernels' rounding differs)
    np.testing.assert_allclose(out.numpy(), expected.detach().numpy(), rtol=rtol, atol=rtol)
    if given == "int64":
        return
    grad = slope.grad(lambda t: (fn(t) * slope.tensor(weights)).sum())
    got = (slope.jit(grad) if jit else grad)(slope.tensor(x))
    (theirs,) = torch.autograd.grad((expected * torch.tensor(weights)).sum(), t)
    assert got.dtype == getattr(slope, given) and theirs.dtype == getattr(torch, given)
    scale = np.abs(theirs.numpy().astype(np.float64)).max()
    tol = {"float32": 2e-6, "float16": 1e-3}[given]  # (each rounds a wider gradient to the input's dtype once)
    np.testing.assert_allclose(got.numpy().astype(np.float64), theirs.numpy(), rtol=tol, atol=tol * scale)


def test_softmax_dtype_must_be_a_floating_point_dtype(each_backend):
    x = slope.tensor([1.0, 2.0])
    with pytest.raises(slope.DTypeError, match=r"slope.softmax: dtype must be a floating-point dtype .*got int64"):
        slope.softmax(x, 0, dtype=slope.int64)  # (PyTorch: "softmax_lastdim_kernel_impl" not implemented for 'Long')
    with pytest.raises(slope.DTypeError, match=r"slope.log_softmax: dtype must be .*, got str 'f64'"):
        x.log_softmax(0, dtype="f64")


def test_layer_norm_matches_pytorch_off_centre_and_in_vmap(each_backend):
    # a mean large against the spread (the statistics must not cancel) and a last dimension of 1
    for x in (1000.0 + _x("float32", (3, 64), 0.1), _x("float32", (4, 1))):
        expected = torch.nn.functional.layer_norm(torch.tensor(x.astype(np.float64)), x.shape[-1:]).numpy()
        np.testing.assert_allclose(slope.layer_norm(slope.tensor(x)).numpy(), expected, atol=1e-3)
    x = _x("float64", (3, 4, 5))
    batched = slope.vmap(slope.layer_norm, in_axes=2)(slope.tensor(x)).numpy()  # the batch axis is the last one
    expected = torch.nn.functional.layer_norm(torch.tensor(np.moveaxis(x, 2, 0)), (4,)).numpy()
    np.testing.assert_allclose(batched, expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(slope.ShapeError, match="slope.layer_norm: expected at least one dimension"):
        slope.layer_norm(slope.tensor(1.0))


def test_layer_norm_specials_match_pytorch(each_backend):
    rows = np.array([[np.nan, 0.0, 1.0], [np.inf, 0.0, 1.0], [-np.inf, 0.0, 1.0], [1.0, 2.0, 4.0]])
    for dtype in ("float32", "float64", "float16"):
        x = rows.astype(dtype)
        expected = torch.nn.functional.layer_norm(torch.tensor(x), (3,)).numpy()
        np.testing.assert_allclose(slope.layer_norm(slope.tensor(x)).numpy(), expected, rtol=2e-3, atol=2e-3)
        rstd = torch.ops.aten.native_layer_norm(torch.tensor(x), [3], None, None, 1e-5)[2].numpy()
        np.testing.assert_allclose(slope.layer_norm_rstd(slope.tensor(x)).numpy(), rstd, rtol=2e-3, atol=2e-3)


def test_layer_norm_layer_matches_pytorch_in_narrow_dtypes(each_backend):
    x = _x("float32", (2, 3, 8))
    for dtype in (slope.float16, slope.bfloat16):
        got = slope.nn.LayerNorm(8, dtype=dtype)(slope.tensor(x).astype(dtype))
        assert got.dtype == dtype
        expected = torch.nn.functional.layer_norm(torch.tensor(x).to(getattr(torch, dtype.name)), (8,))
        np.testing.assert_allclose(got.astype(slope.float32).numpy(), expected.float().numpy(), atol=2e-2)


def test_the_onnx_step_runs_gelu_and_softmax_as_single_nodes():
    if "onnxruntime" not in slope.plugins.backends:
        pytest.skip("the onnxruntime backend (slope-onnx) is not installed")
    with slope.use_backend("onnxruntime"):
        x = slope.tensor(_x("float32", (2, 3, 8)))
        lowered = slope.jit(lambda t: slope.softmax(slope.gelu(t), -1)).lower(x)
        ops = [node.op_type for node in lowered.executable.model.graph.node]
        assert ops == ["Gelu", "Softmax"]
        both = slope.jit(lambda t: slope.layer_norm(t) + slope.layer_norm_rstd(t)).lower(x)
        ops = [node.op_type for node in both.executable.model.graph.node]
    assert ops == ["LayerNormalization", "Add"]  # one node gives the normalised tensor and its statistic


@pytest.mark.parametrize("jit", [False, True])
def test_layer_norm_of_long_rows_is_as_accurate_as_pytorchs(jit, each_backend):
    """onnxruntime's LayerNormalization kernel loses accuracy as rows grow (7.2e-6 off over 262,144 float32 values
    where PyTorch's float32 kernel is 4.7e-7; 1.5e-4 over 2e6): rows longer than 16,384 are normalised by the procedures
    (blocked sums). nn.LayerNorm's values and gradient against PyTorch in float64, within twice PyTorch's float32
    error (and 1e-6); rows of 16,384 keep the kernel (the transformer shapes' speed)."""
    rng = np.random.default_rng(0)
    x = (np.array([[0.0], [100.0]]) + rng.standard_normal((2, 262_144))).astype(np.float32)
    w = rng.standard_normal(x.shape).astype(np.float32)
    norm = slope.nn.LayerNorm(x.shape[-1])
    forward = slope.jit(norm) if jit else norm
    got = forward(slope.tensor(x)).numpy()
    got_grad = slope.grad(lambda s: (forward(s) * slope.tensor(w)).sum())(slope.tensor(x)).numpy()
    t64, t32 = (torch.tensor(x, dtype=d, requires_grad=True) for d in (torch.float64, torch.float32))
    errors = []
    for t in (t64, t32):
        out = torch.nn.functional.layer_norm(t, x.shape[-1:])
        (grad,) = torch.autograd.grad((out * torch.tensor(w, dtype=t.dtype)).sum(), t)
        errors.append((out.detach().double().numpy(), grad.double().numpy()))
    (expected, expected_grad), (torch_value, torch_grad) = errors
    assert np.abs(got - expected).max() <= max(2 * np.abs(torch_value - expected).max(), 1e-6)
    assert np.abs(got_grad - expected_grad).max() <= max(2 * np.abs(torch_grad - expected_grad).max(), 1e-6)
    if each_backend == "onnxruntime":
        short = slope.tensor(x[:, :16_384])
        nodes = slope.jit(slope.layer_norm).lower(short).executable.model.graph.node
        assert [node.op_type for node in nodes] == ["LayerNormalization"]


def _against_torch_of_the_shifted_input(fn, torch_fn, x: np.ndarray, shift: np.ndarray) -> None:
    """fn(x) and the gradient of sum(fn(x) * w) against PyTorch's in float64 for x - shift (the normalisations are
    shift-invariant: a constant row becomes exactly 0s, where PyTorch's own float64 backward of [1e20] * 500 cancels
    to 0 and at 1e10 keeps float32's precision), within 1e-5 (float32) or 1e-12 (float64) of the largest magnitude."""
    w = np.random.default_rng(1).standard_normal(x.shape).astype(x.dtype)
    t = torch.tensor(x.astype(np.float64) - shift, requires_grad=True)
    expected = torch_fn(t)
    (expected_grad,) = torch.autograd.grad((expected * torch.tensor(w.astype(np.float64))).sum(), t)
    got = fn(slope.tensor(x))
    got_grad = slope.grad(lambda s: (fn(s) * slope.tensor(w)).sum())(slope.tensor(x))
    tol = 1e-5 if x.dtype == np.float32 else 1e-12
    for value, reference in ((got, expected.detach().numpy()), (got_grad, expected_grad.numpy())):
        np.testing.assert_allclose(value.numpy(), reference, rtol=tol, atol=tol * max(np.abs(reference).max(), 1.0))


@pytest.mark.parametrize(
    "x", [np.full((2, 3), 1000.1, np.float32), np.full((2, 500), 1e20)], ids=["float32", "float64"]
)
def test_layer_norm_of_constant_rows_refines_its_mean_as_pytorch(x, each_backend):
    """The mean's rounding error was left in every centered value: a constant float32 row of 1000.1 normalised to
    0.0193 (numpy and iree), float64 [1e20] * 500 to 1.0 (every backend), gradients to match; PyTorch gives 0s."""
    n, shift = x.shape[-1], x[..., :1].astype(np.float64)
    _against_torch_of_the_shifted_input(slope.layer_norm, lambda t: torch.nn.functional.layer_norm(t, (n,)), x, shift)
    _against_torch_of_the_shifted_input(  # (rstd: 1 / sqrt(eps) for a constant row, not 1 / sqrt(c^2 + eps))
        slope.layer_norm_rstd, lambda t: (t.var(-1, unbiased=False, keepdim=True) + 1e-5).rsqrt(), x, shift
    )
    _against_torch_of_the_shifted_input(  # normalized_shape (1, n): more than one normalized dim, the layer's own path
        lambda s: slope.nn.LayerNorm((1, n), elementwise_affine=False)(s.reshape((-1, 1, n))).reshape(x.shape),
        lambda t: torch.nn.functional.layer_norm(t.reshape(-1, 1, n), (1, n)).reshape(x.shape),
        x,
        shift,
    )


def test_layer_norm_layer_of_several_dims_and_batch_norm_refine_their_means(each_backend):
    """nn.LayerNorm((2, 3)) of a constant 1000.1 block gave -0.0193 on every backend, and BatchNorm's batch statistics
    (training) of a constant channel of three values 0.0193: both are 0, as PyTorch's float64 results (its float32
    BatchNorm is off by more)."""
    block = np.full((2, 2, 3), 1000.1, np.float32)
    _against_torch_of_the_shifted_input(
        slope.nn.LayerNorm((2, 3), elementwise_affine=False),
        lambda t: torch.nn.functional.layer_norm(t, (2, 3)),
        block,
        block.astype(np.float64),
    )
    for x in (np.full((3, 2), 1000.1, np.float32), np.stack([np.full(6, 1e20), np.arange(6.0)], 1)):
        dtype = slope.tensor(x).dtype
        _against_torch_of_the_shifted_input(  # (gradients of the batch statistics: no running statistics)
            slope.nn.BatchNorm1d(2, affine=False, track_running_stats=False, dtype=dtype),
            lambda t: torch.nn.functional.batch_norm(t, None, None, training=True),
            x,
            x[:1].astype(np.float64),
        )
        layer, reference = slope.nn.BatchNorm1d(2, dtype=dtype), torch.nn.BatchNorm1d(2).double()
        reference(torch.tensor(x.astype(np.float64)))
        layer(slope.tensor(x))
        for name in ("running_mean", "running_var"):
            np.testing.assert_allclose(getattr(layer, name).numpy(), getattr(reference, name).numpy(), rtol=1e-6)
