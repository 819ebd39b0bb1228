"""slope-nn's elementwise functions at their edges, against PyTorch on every installed backend (issue 10): sigmoid,
softplus, log-sigmoid, silu and tanh for large |x| (values and gradients, every float dtype), softplus's derivative
at 0, logsumexp with infinities, and erf (so gelu) to float64 accuracy.

Tolerances: relative per dtype (RTOL), and an absolute one of the dtype's smallest normal number, as a backend may
flush subnormal results to zero.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest

import slope
import slope.nn.functional as F  # noqa: N812 - the name torch users know

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.usefixtures("each_backend")

RTOL = {"float16": 2e-3, "bfloat16": 1.6e-2, "float32": 4e-6, "float64": 1e-13}
LARGE = [-1000.0, -400.0, -350.0, -300.0, -100.0, -30.0, -20.0, -1.0, -1e-3, 0.0, 1e-3, 1.0, 20.0, 30.0, 100.0,
         300.0, 400.0, 1000.0, -math.inf, math.inf, math.nan]  # fmt: skip
FUNCTIONS = {
    "sigmoid": (F.sigmoid, torch.sigmoid),
    "softplus": (F.softplus, torch.nn.functional.softplus),
    "softplus beta 2": (lambda x: F.softplus(x, 2.0), lambda x: torch.nn.functional.softplus(x, 2.0)),
    "log_sigmoid": (lambda x: -F.softplus(-x), torch.nn.functional.logsigmoid),
    "silu": (F.silu, torch.nn.functional.silu),
    "tanh": (slope.tanh, torch.tanh),
}


def assert_close(actual: np.ndarray, expected: np.ndarray, dtype: str, what: str, atol: float | None = None) -> None:
    if atol is None:  # the smallest normal number of the dtype
        atol = {"float16": 2.0**-14, "float64": float(np.finfo(np.float64).tiny)}.get(dtype, 2.0**-126)
    np.testing.assert_allclose(actual, expected, rtol=RTOL[dtype], atol=atol, equal_nan=True, err_msg=what)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_activations_at_large_magnitudes_match_pytorch(dtype, name):
    """Values and gradients are finite and right far out: sigmoid(-350) is 0 with derivative 0, not 0 / 0."""
    ours, theirs = FUNCTIONS[name]
    x = np.array(LARGE)
    tx = torch.tensor(x).to(getattr(torch, dtype)).requires_grad_()
    expected = theirs(tx)
    (expected_grad,) = torch.autograd.grad(expected.sum(), tx)
    t = slope.tensor(x).astype(dtype)
    value, grad = slope.value_and_grad(lambda v: ours(v).astype("float64").sum())(t)
    assert ours(t).dtype == t.dtype
    assert_close(ours(t).astype("float64").numpy(), expected.detach().double().numpy(), dtype, f"{name} value")
    # PyTorch's derivatives are y * (1 - y) and 1 - y * y, off by up to an epsilon where y rounds to 1 (Slope's
    # sigmoid derivative is exact there: 2e-9 at 20 in float32 where PyTorch gives 0); compare where x is finite
    finite, eps = np.isfinite(x), float(torch.finfo(getattr(torch, dtype)).eps)
    expected_grad = expected_grad.double().numpy()[finite]
    assert_close(grad.astype("float64").numpy()[finite], expected_grad, dtype, f"{name} grad", atol=eps)
    jitted = slope.jit(slope.grad(lambda v: ours(v).astype("float64").sum()))(t)
    assert_close(jitted.astype("float64").numpy()[finite], expected_grad, dtype, f"{name} jit grad", atol=eps)


def test_sigmoid_derivative_is_accurate_far_out():
    """exp(-|x|) / (1 + exp(-|x|))^2 to float64 precision, also where y * (1 - y) would cancel to 0."""
    x = np.array([-700.0, -300.0, -20.0, 20.0, 30.0, 300.0, 700.0])
    grad = slope.grad(lambda t: F.sigmoid(t).sum())(slope.tensor(x)).numpy()
    e = np.exp(-np.abs(x))
    np.testing.assert_allclose(grad, e / (1.0 + e) ** 2, rtol=1e-14, atol=0)


def test_softplus_and_sigmoid_derivatives_at_zero():
    grad = slope.grad(lambda t: F.softplus(t).sum())(slope.tensor([0.0, -0.0]))
    np.testing.assert_array_equal(grad.numpy(), [0.5, 0.5])  # was 0: relu'(0) + |x|'(0), both 0
    grad = slope.grad(lambda t: F.softplus(t, 3.0).sum())(slope.tensor([0.0]))
    np.testing.assert_array_equal(grad.numpy(), [0.5])
    grad = slope.grad(lambda t: F.sigmoid(t).sum())(slope.tensor([0.0]))
    np.testing.assert_array_equal(grad.numpy(), [0.25])
    hessian = slope.grad(lambda t: slope.grad(lambda u: F.softplus(u).sum())(t).sum())(slope.tensor([0.0]))
    np.testing.assert_allclose(hessian.numpy(), [0.25], rtol=1e-6)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize("beta", [math.inf, -math.inf, 0.0, -0.0, 1e-300, 2.0])
def test_softplus_gradient_for_infinite_and_zero_beta_matches_pytorch(beta, dtype):
    """The untaken branch's zero cotangent came back through beta x times beta: 0 * inf gave NaN gradients
    everywhere for beta = inf (PyTorch: 0 below 0, NaN at 0, 1 above) and 0 / 0 for beta = 0 (PyTorch: 1/2)."""
    x = np.array([-2.0, -1e-30, 0.0, -0.0, 1e-30, 3.0, 25.0, -math.inf, math.inf, math.nan])
    for threshold in (20.0, math.inf):
        tx = torch.tensor(x, dtype=getattr(torch, dtype), requires_grad=True)
        expected = torch.nn.functional.softplus(tx, beta, threshold)
        (expected_grad,) = torch.autograd.grad(expected.sum(), tx)
        expected, expected_grad = expected.detach().double().numpy(), expected_grad.double().numpy()

        def loss(v, threshold=threshold):
            return F.softplus(v, beta, threshold).astype("float64").sum()

        t = slope.tensor(x, dtype=dtype)
        value = F.softplus(t, beta, threshold).astype("float64").numpy()
        assert_close(value, expected, dtype, f"value, threshold {threshold}")
        zero = value == 0
        assert np.array_equal(np.signbit(value[zero]), np.signbit(expected[zero])), value  # (-0.0 for beta -inf)
        # without a threshold, PyTorch's derivative exp(bx) / (exp(bx) + 1) is inf / inf where bx = inf and its value
        # is inf; Slope gives the limit, 1 (as with a threshold). Where the value is NaN, both are NaN.
        kept = ~np.isinf(x) | np.isnan(expected) | (threshold != math.inf)
        for what, grad in (("grad", slope.grad(loss)(t)), ("jit grad", slope.jit(slope.grad(loss))(t))):
            got = grad.astype("float64").numpy()
            assert_close(got[kept], expected_grad[kept], dtype, f"{what}, threshold {threshold}")
        forward = slope.jvp(functools.partial(F.softplus, beta=beta, threshold=threshold), (t,), (slope.ones_like(t),))[
            1
        ]
        got = forward.astype("float64").numpy()
        assert_close(got[kept], expected_grad[kept], dtype, f"jvp, threshold {threshold}")


def test_softplus_threshold_and_accuracy_for_tiny_results():
    """x itself above the threshold (PyTorch's), and log1p accuracy where exp(x) is tiny: softplus(-30) = 9.4e-14."""
    x = np.array([-30.0, -20.0, 15.0, 25.0])
    for kwargs in ({}, {"beta": 2.0, "threshold": 10.0}):
        expected = torch.nn.functional.softplus(torch.tensor(x, dtype=torch.float32), **kwargs).numpy()
        got = F.softplus(slope.tensor(x), **kwargs).numpy()
        np.testing.assert_allclose(got, expected, rtol=4e-6, atol=0)


def test_binary_cross_entropy_with_logits_at_large_logits():
    logits = np.array([-400.0, -100.0, -30.0, 0.0, 30.0, 100.0, 400.0])
    target = np.array([1.0, 0.0, 1.0, 0.5, 0.0, 1.0, 0.0])
    tl = torch.tensor(logits, requires_grad=True)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(tl, torch.tensor(target), reduction="sum")
    (expected_grad,) = torch.autograd.grad(expected, tl)
    loss = slope.value_and_grad(lambda v: slope.nn.binary_cross_entropy_with_logits(v, target, reduction="sum"))
    value, grad = loss(slope.tensor(logits))
    np.testing.assert_allclose(value.item(), expected.item(), rtol=1e-13)
    # PyTorch's sigmoid(x) - t rounds to 0 at x = 100 where Slope keeps -3.7e-44: agreement to an epsilon there
    np.testing.assert_allclose(grad.numpy(), expected_grad.numpy(), rtol=1e-13, atol=1e-16)


@pytest.mark.parametrize(
    "row",
    [
        [math.inf, 1.0],
        [-math.inf, -math.inf],
        [math.inf, -math.inf],
        [math.nan, 1.0],
        [math.inf, math.inf],
        [-math.inf, 2.0],
        [1e38, 1.0],
    ],  # fmt: skip
)
def test_logsumexp_with_infinities_matches_pytorch(row):
    tx = torch.tensor(row, requires_grad=True)
    expected = torch.logsumexp(tx, 0)
    (expected_grad,) = torch.autograd.grad(expected, tx)
    value, grad = slope.value_and_grad(lambda v: slope.logsumexp(v, 0))(slope.tensor(row))
    np.testing.assert_allclose(value.item(), expected.item(), rtol=1e-6)
    np.testing.assert_allclose(grad.numpy(), expected_grad.numpy(), rtol=1e-6, equal_nan=True)


def test_float64_erf_is_accurate_to_an_ulp():
    """float64 erf (onnxruntime has no float64 kernel; NumPy none at all) within 2 ulps of math.erf (itself within
    1) on a dense grid, the tails down to 1e-300 and the special values; -0.0 keeps its sign."""
    x = np.concatenate(
        [np.linspace(-7, 7, 40001), np.geomspace(1e-300, 7, 3001), -np.geomspace(1e-300, 7, 3001), [0.0, 1.0, 6.0]]
    )
    got = slope.erf(slope.tensor(x)).numpy()
    expected = np.array([math.erf(v) for v in x])
    ulps = np.abs(got - expected) / np.spacing(np.abs(expected))
    assert ulps.max() <= 2, f"worst {ulps.max()} ulps at {x[ulps.argmax()]}"
    special = slope.erf(slope.tensor([math.inf, -math.inf, math.nan, -0.0], dtype="float64")).numpy()
    np.testing.assert_array_equal(special[:2], [1.0, -1.0])
    assert math.isnan(special[2]) and special[3] == 0.0 and math.copysign(1.0, special[3]) == -1.0
    gelu = F.gelu(slope.tensor(x[:40001])).numpy()
    np.testing.assert_allclose(gelu, torch.nn.functional.gelu(torch.tensor(x[:40001])).numpy(), rtol=1e-14, atol=1e-15)


def test_float32_erf_keeps_its_accuracy(each_backend):
    """onnxruntime's float32 Erf kernel; elsewhere the Abramowitz-Stegun procedure: 1.5e-7, plus float32 rounding."""
    x = np.linspace(-5, 5, 2001, dtype=np.float32)
    got = slope.erf(slope.tensor(x)).numpy()
    atol = 2e-7 if each_backend == "onnxruntime" else 5e-7
    np.testing.assert_allclose(got, [math.erf(v) for v in x.astype(np.float64)], rtol=0, atol=atol)


def _half_ulps(actual: np.ndarray, reference: np.ndarray, dtype: str) -> float:
    """The largest distance in units of the half dtype's last place (both already of that dtype, as float64)."""
    finite = np.isfinite(reference)
    spacing = np.spacing(np.abs(reference[finite]).astype(np.float16)).astype(np.float64)
    if dtype == "bfloat16":
        spacing = spacing * 2.0**3  # (bfloat16 keeps 8 bits of mantissa, float16 11: an ulp is 8 times wider)
    spacing = np.maximum(spacing, 2.0**-24 if dtype == "float16" else 2.0**-133)
    return float(np.max(np.abs(actual[finite] - reference[finite]) / spacing))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("name", ["sigmoid", "silu", "softplus"])
def test_half_activations_are_computed_in_float32_and_rounded_once(dtype, name):
    """Step by step in float16, silu was up to 9 ulps off (-0.0 for -5.4e-7 at -17.3) and its gradient up to 528 ulps
    (-0.000244 for -0.000181 at -1.28): PyTorch computes them in float32 and rounds once."""
    ours, theirs = FUNCTIONS[name]
    every = np.arange(0, 65536, dtype=np.uint16).view(np.float16)
    x = every[np.isfinite(every) & (np.abs(every.astype(np.float32)) < 40)].astype(np.float32)
    t = slope.tensor(x).astype(dtype)
    x32 = t.astype("float32").numpy()
    reference = theirs(torch.tensor(x32, dtype=torch.float64)).to(getattr(torch, dtype)).double().numpy()
    assert _half_ulps(ours(t).astype("float64").numpy(), reference, dtype) <= 1.0
    tx = torch.tensor(x32, dtype=torch.float64, requires_grad=True)
    (slopes,) = torch.autograd.grad(theirs(tx).sum(), tx)
    slopes = slopes.to(getattr(torch, dtype)).double().numpy()
    grad = slope.jit(slope.grad(lambda v: ours(v).astype("float32").sum()))(t)
    assert _half_ulps(grad.astype("float64").numpy(), slopes, dtype) <= 1.0


def test_exact_gelu_derivative_keeps_its_small_term_far_out():
    """(0.5 erf + x phi) + 0.5 lost x phi below -8 in float64 (0 for -7.7e-22 at -10); PyTorch adds x phi last."""
    x = np.array([-8.0, -10.0, -12.0, -20.0, -30.0, 8.0])
    tx = torch.tensor(x, requires_grad=True)
    (expected,) = torch.autograd.grad(torch.nn.functional.gelu(tx).sum(), tx)
    for grad in (slope.grad, lambda f: slope.jit(slope.grad(f))):
        got = grad(lambda v: F.gelu(v).sum())(slope.tensor(x)).numpy()
        np.testing.assert_allclose(got, expected.numpy(), rtol=1e-12, atol=0)


def _gelu_derivatives(approximate: str) -> list:
    """gelu's first three derivatives, elementwise, each by reverse mode over the one before."""
    first = slope.grad(lambda v: F.gelu(v, approximate).sum())
    second = slope.grad(lambda v: first(v).sum())
    return [first, second, slope.grad(lambda v: second(v).sum())]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_higher_derivatives_at_zero_tiny_and_special_values_match_pytorch(approximate, dtype):
    """The tanh form's derivative took exp(-2 |inner|), and abs's derivative at 0 is 0: its second derivative at x = 0
    was sqrt(2 / pi) / 2 for sqrt(2 / pi). Its third derivative near 0 came from quotients that cancel (4e-301 for
    -1.6e-300 at 1e-300). Reverse, forward (jvp of the second) and jit, up to the third derivative."""
    tiny = 1e-300 if dtype == "float64" else 1e-30
    x = np.array([0.0, -0.0, tiny, -tiny, 1e-8, -1e-8, 0.5, -0.5, 1.0, -1.0, 3.0, -3.0, math.inf, -math.inf, math.nan])
    tx = torch.tensor(x, dtype=torch.float64, requires_grad=True)  # (PyTorch's float32 cancels at -3: 1e-5 off)
    expected, y = [], torch.nn.functional.gelu(tx, approximate=approximate)
    for _ in range(3):
        (y,) = torch.autograd.grad(y.sum(), tx, create_graph=True)
        expected.append(y.detach().double().numpy())
    t = slope.tensor(x, dtype=dtype)
    derivatives = _gelu_derivatives(approximate)
    for order, (derivative, reference) in enumerate(zip(derivatives, expected), 1):
        assert_close(derivative(t).astype("float64").numpy(), reference, dtype, f"derivative {order}")
    second = derivatives[1]
    forward = slope.jvp(second, (t,), (slope.ones_like(t),))[1]
    assert_close(forward.astype("float64").numpy(), expected[2], dtype, "jvp of the second derivative")
    assert_close(slope.jit(derivatives[2])(t).astype("float64").numpy(), expected[2], dtype, "jit third derivative")


def test_tanh_gelu_higher_derivatives_far_out_are_exact():
    """Where PyTorch's float64 formulas lose the tail (its second derivative at 8: -7.27e-19), against closed forms
    evaluated in 400-digit arithmetic (sympy and mpmath); at 1e10 the derivatives are 0 (PyTorch's third: NaN)."""
    x = np.array([8.0, -8.0, 20.0, -20.0, 1e10, -1e10])
    second = [-7.045821396097292e-19, -7.045821396097292e-19, -2.5620732028460163e-257, -2.5620732028460163e-257, 0, 0]
    third = [1.0366020188743248e-17, -1.0366020188743248e-17, 2.2283598993344149e-255, -2.2283598993344149e-255, 0, 0]
    derivatives = _gelu_derivatives("tanh")
    t = slope.tensor(x, dtype="float64")
    np.testing.assert_allclose(derivatives[1](t).numpy(), second, rtol=1e-13, atol=0)
    np.testing.assert_allclose(derivatives[2](t).numpy(), third, rtol=1e-13, atol=0)
