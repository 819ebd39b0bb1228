"""Symbolic zeros in forward mode: a tangent known to be zero (of a constant, an integer, a zero-derivative operator)
is never materialized, so rules leave its terms out: no `t * 0` in jvp-of-grad programs (Hessians, HVPs), and no NaN
from `0 * inf` where the primal is infinite. JAX's semantics (jax.jvp drops symbolic-zero terms), which
torch.func.jvp shares where the zero tangent comes from a constant."""

from __future__ import annotations

import math

import numpy as np
import pytest

import slope
from slope.ir import Program

BACKENDS = sorted(slope.plugins.backends)
SPECIAL = [math.inf, -math.inf, math.nan, 0.0, -0.0, 1.5, -2.0]


def _jvp(backend: str, fn, x: list, t: list) -> tuple[np.ndarray, np.ndarray]:
    with slope.use_backend(backend):
        out, tangent = slope.jvp(fn, (slope.tensor(x),), (slope.tensor(t),))
        return out.numpy(), tangent.numpy()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("name", "fn", "torch_fn"),
    [
        ("x * c", lambda x: x * 2.0, lambda x: x * 2.0),
        ("c * x", lambda x: 3.0 * x, lambda x: 3.0 * x),
        ("x / c", lambda x: x / 2.0, lambda x: x / 2.0),
        ("c / x", lambda x: 2.0 / x, lambda x: 2.0 / x),
        ("x * x + c", lambda x: x * x + 1.0, lambda x: x * x + 1.0),
        ("c - x", lambda x: 1.0 - x, lambda x: 1.0 - x),
    ],
)
def test_constant_terms_bring_no_nan(backend: str, name: str, fn, torch_fn) -> None:
    """jvp of x * c at x = inf is c * t (old: t * c + x * 0 = NaN); the reference is torch.func.jvp."""
    torch = pytest.importorskip("torch")
    t = [1.0] * len(SPECIAL)
    out, tangent = _jvp(backend, fn, SPECIAL, t)
    ref_out, ref_tangent = torch.func.jvp(torch_fn, (torch.tensor(SPECIAL),), (torch.tensor(t),))
    np.testing.assert_allclose(out, ref_out.numpy(), rtol=1e-6, equal_nan=True, err_msg=name)
    np.testing.assert_allclose(tangent, ref_tangent.numpy(), rtol=1e-6, equal_nan=True, err_msg=name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_differentiated_operand_with_inf(backend: str) -> None:
    """x * c with c holding inf and 0: the tangent is t * c (torch.func.jvp: [inf, 0, 2, 1])."""
    c = [math.inf, 0.0, 2.0, 1.0]
    with slope.use_backend(backend):
        constant = slope.tensor(c)
        _, tangent = slope.jvp(lambda x: x * constant, (slope.tensor([1.0, math.inf, 0.0, 2.0]),), (slope.ones(4),))
        np.testing.assert_array_equal(tangent.numpy(), np.array(c, np.float32))


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_derivative_operators_give_symbolic_zeros(backend: str) -> None:
    """floor, ceil, round and stop_gradient have a symbolic-zero tangent, as in JAX: the tangent of floor(x) * x at
    x = inf is floor(x) * t = inf (JAX); torch.func.jvp materializes floor's zero and gives 0 * inf = NaN."""
    x = [math.inf, 1.5, -2.5, 3.0]
    for op in ("floor", "ceil", "round", "stop_gradient"):
        out, tangent = _jvp(backend, lambda v, op=op: getattr(slope, op)(v) * v, x, [1.0] * 4)
        primal = {"floor": np.floor, "ceil": np.ceil, "round": np.round, "stop_gradient": lambda a: a}[op]
        np.testing.assert_array_equal(tangent, primal(np.array(x, np.float32)), err_msg=op)
        _, alone = _jvp(backend, getattr(slope, op), x, [1.0] * 4)  # a zero tangent output is still zeros
        np.testing.assert_array_equal(alone, np.zeros(4, np.float32), err_msg=op)


def _zero_vars(program: Program) -> set:
    """The variables of a program that hold zeros: `full` of 0 and what reshapes or broadcasts one."""
    zeros = set()
    for instruction in program.instructions:
        name = instruction.op.name
        if name == "full" and instruction.params["value"] == 0:
            zeros.update(instruction.outputs)
        elif name in ("reshape", "expand", "permute", "cast") and instruction.inputs[0] in zeros:
            zeros.update(instruction.outputs)
    return zeros


@pytest.mark.parametrize("backend", BACKENDS)
def test_hessian_program_multiplies_by_no_zeros(backend: str) -> None:
    """The jitted Hessian of sum(tanh(x) ** 3) (forward over reverse) has no multiplication or addition with zeros:
    the cotangent basis and constants carry symbolic-zero tangents (main's program had 4 such products)."""
    with slope.use_backend(backend):
        x = slope.tensor(np.linspace(-2, 2, 10, dtype=np.float32))
        program = slope.jit(slope.hessian(lambda v: (v.tanh() ** 3).sum())).lower(x).program
    zeros = _zero_vars(program)
    wasted = [i for i in program.instructions if i.op.name in ("mul", "add", "matmul") and set(i.inputs) & zeros]
    assert not wasted, f"products or sums with zeros in the Hessian program:\n{program}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("jitted", [False, True])
def test_hessian_values_with_special_inputs(backend: str, jitted: bool) -> None:
    """Values (inf, -inf, NaN included) match torch.func.hessian exactly where it is 0 or NaN, to 1e-5 elsewhere."""
    torch = pytest.importorskip("torch")
    x = [math.inf, -math.inf, math.nan, 0.5, -0.0, 3.0, -1.25]
    expected = torch.func.hessian(lambda v: (torch.tanh(v) ** 3).sum())(torch.tensor(x)).numpy()
    with slope.use_backend(backend):
        hessian = slope.hessian(lambda v: (v.tanh() ** 3).sum())
        got = (slope.jit(hessian) if jitted else hessian)(slope.tensor(x)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6, equal_nan=True)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))


@pytest.mark.parametrize("backend", BACKENDS)
def test_hvp_matches_finite_differences_of_the_gradient(backend: str) -> None:
    """A Hessian-vector product (jvp of grad) of a function with constants and a product with a constant tensor."""
    rng = np.random.default_rng(0)
    x0, v0, c0 = (rng.standard_normal(5).astype(np.float64) for _ in range(3))
    with slope.use_backend(backend):
        c = slope.tensor(c0)

        def f(x: slope.Tensor) -> slope.Tensor:
            return ((x * c + 1.0).sin() * x / 2.0).sum()

        grad = slope.grad(f)
        _, hvp = slope.jvp(grad, (slope.tensor(x0),), (slope.tensor(v0),))
        eps = 1e-6
        fd = (grad(slope.tensor(x0 + eps * v0)).numpy() - grad(slope.tensor(x0 - eps * v0)).numpy()) / (2 * eps)
    np.testing.assert_allclose(hvp.numpy(), fd, rtol=1e-5, atol=1e-7)
