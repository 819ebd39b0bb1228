"""Differential tests of the transformations against torch.func (CPU), driven by hypothesis, on every backend.

Properties, each per backend and differentiable row of differential/table.py (its layouts, tolerances and strict
xfails, here under the checks "jvp", "vmap" and "hessian"):

- test_jvp: `slope.jvp` against `torch.func.jvp` (primal and tangent outputs) in float32 and float64, at the
  finite values of moderate size test_gradient uses (kinks and ties included: +-0, integers, +-100, +-300).
- test_vmap: `slope.vmap` over a new batch axis (at the front, or at any other position of each argument, or not
  mapped) against Slope applied to each example (whose values test_forward compares with PyTorch), specials included.
- test_hessian: the Hessian-vector product `jvp(grad(loss))` (forward over reverse) against torch.func's
  reverse-over-reverse `grad(<grad(loss), v>)` in float64; with one small input also `slope.hessian` against
  `torch.func.hessian`.
- test_special_points: kinks, ties and the points where PyTorch defines a derivative by convention (relu, abs,
  clamp, max, maximum at ties, where with NaN or inf in the branch not taken, sqrt, log and pow at 0, infinities):
  grad, jvp and the second derivative against PyTorch's.

The "ci" profile runs a quarter of its examples per cell (the file's time on 2 cores stays at about 2 minutes);
"deep" runs a quarter of its many.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is the reference: pip install torch==2.13.0")
pytest.importorskip("hypothesis", reason="the differential suite draws with hypothesis: pip install hypothesis")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

import slope  # noqa: E402
from differential.strategies import (  # noqa: E402
    FLOATS,
    GRAD_DTYPES,
    GRAD_RTOL,
    fill,
    flat_results,
    mismatch,
    placeholders,
    to_torch,
)
from differential.table import ENTRIES  # noqa: E402
from differential.test_differential import (  # noqa: E402
    BACKENDS,
    REGISTERED,
    Call,
    _cotangent,
    _draw_arrays,
    _entry,
    _finite_parameters,
    _quiet,
    _same,
)

EXAMPLES = settings(max_examples=max(settings().max_examples // 4, 1))
TRANSFORM_CHECKS = ("jvp", "vmap", "hessian")
# Where PyTorch's forward-mode formula disagrees with its own reverse mode, the reference JVP is PyTorch's VJP
# transposed (double backward): Slope's JVP is the transpose of its VJP, which test_gradient compares with PyTorch's.
JVP_FROM_VJP = {
    name: "at a tie with one tensor bound (x == min, or x == max) PyTorch's forward mode takes the bound's tangent, "
    "its reverse mode x's (torch.func.jvp(clamp) is not the transpose of torch.autograd.grad(clamp))"
    for name in ("clamp", "clip")
}
# Keyword arguments PyTorch does not differentiate, held fixed here (tests/test_edges_transforms.py checks Slope's
# derivatives in them against finite differences): cross_entropy's class weights, which PyTorch's reverse mode
# refuses (nll_loss is not differentiable in its weight) and its forward mode gives only label smoothing's term of
HELD_FIXED = {"cross_entropy": ("weight",)}


def _differentiable(name: str) -> bool:
    entry = ENTRIES.get(name)
    return entry is not None and entry.grad is None and any(d in entry.dtypes for d in GRAD_DTYPES)


def _cells(check: str) -> list:
    cells = []
    for backend in BACKENDS:
        for name in filter(_differentiable, REGISTERED):
            entry = ENTRIES[name]
            reason = entry.xfail.get((backend, check)) or entry.xfail.get(("*", check))
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            cells.append(pytest.param(backend, name, id=f"{backend}:{name}", marks=marks))
    return cells


def _tangent(shape: tuple, salt: int = 0) -> np.ndarray:
    """A fixed direction of varied values in [-0.75, 0.75] (multiples of 1/4, zeros too: a zero tangent at a kink
    must give a zero derivative, not NaN)."""
    n = int(np.prod(shape, dtype=np.int64))
    return ((np.arange(n) * 3 + 1 + salt) % 7 - 3).reshape(shape) / 4


class Differentiated:
    """One call's float inputs as functions' arguments: the same function of them in Slope and in PyTorch."""

    def __init__(self, call: Call, dtype: str):
        self.call = call
        tensors = placeholders((call.layout.args, call.layout.kwargs))
        held = [call.layout.kwargs.get(k) for k in HELD_FIXED.get(call.entry.name, ())]
        self.diff = [t for t in tensors if (t.dtype or dtype) in FLOATS and not any(t is h for h in held)]
        self.fixed = [t for t in tensors if t not in self.diff]
        self.floating: list[int] = []

    def by_id(self, make: Callable, values: tuple) -> dict:
        """The differentiated tensors' values and the fixed ones' arrays made tensors, by placeholder."""
        return {**{id(t): make(self.call.arrays[id(t)]) for t in self.fixed}, **dict(zip(map(id, self.diff), values))}

    def torch_fn(self, *values: Any) -> tuple:
        args, kwargs = self.call.torch_args(self.by_id(to_torch, values), make=_same)
        # the fused CPU attention kernel has no forward mode and no second derivative: its math form
        with sdpa_kernel(SDPBackend.MATH):
            outs = flat_results(self.call.entry.torch_fn(*args, **kwargs))
        return tuple(outs[k] for k in self.floating)

    def slope_fn(self, *values: Any) -> list:
        by_id = self.by_id(slope.tensor, values)
        outs = flat_results(self.call.entry.call_slope()(*fill(self.call.layout.args, by_id, _same),
                                                        **fill(self.call.layout.kwargs, by_id, _same)))  # fmt: skip
        return [outs[k] for k in self.floating]

    def prepare(self) -> bool:
        """Whether the call is one to differentiate: float inputs, finite parameters, finite float outputs (the
        derivative at a NaN means nothing) and valid in both (test_forward compares the errors)."""
        if not self.diff or not _finite_parameters((self.call.layout.args, self.call.layout.kwargs)):
            return False
        args, kwargs = self.call.torch_args()
        out, error = _quiet(lambda: self.call.entry.torch_fn(*args, **kwargs))
        if error is not None or self.call.run_slope()[1] is not None:
            return False
        outs = flat_results(out)
        self.floating = [k for k, o in enumerate(outs) if o.dtype.is_floating_point]
        return bool(self.floating) and all(bool(torch.isfinite(outs[k]).all()) for k in self.floating)

    def primals(self) -> tuple[list, list]:
        arrays = [self.call.arrays[id(t)] for t in self.diff]
        return [to_torch(a) for a in arrays], [slope.tensor(a) for a in arrays]

    def tangents(self) -> tuple[list, list]:
        arrays = [_tangent(self.call.arrays[id(t)].shape, k).astype(self.call.arrays[id(t)].dtype)
                  for k, t in enumerate(self.diff)]  # fmt: skip
        return [to_torch(a) for a in arrays], [slope.tensor(a) for a in arrays]

    def torch_loss(self, *values: Any) -> Any:
        outs = self.torch_fn(*values)
        return sum((o * to_torch(_cotangent(tuple(o.shape), o.dtype)).to(o.dtype)).sum() for o in outs)

    def slope_loss(self, *values: Any) -> Any:
        total = None
        for o in self.slope_fn(*values):
            term = (o * slope.tensor(_cotangent(tuple(o.shape), None).astype(o.dtype.numpy))).sum()
            total = term if total is None else total + term
        return total


def _not_implemented(error: BaseException | None) -> bool:
    return error is not None and ("not implemented" in str(error) or isinstance(error, NotImplementedError))


def _compare(what: str, outs: list, refs: list, rtol: float, atol: Any = None) -> str | None:
    for k, (out, ref) in enumerate(zip(outs, refs)):
        ref = torch.zeros(ref.shape, dtype=ref.dtype) if ref._is_zerotensor() else ref.detach()  # (torch.func's zeros)
        problem = mismatch(out, ref, rtol, rtol if atol is None else atol)
        if problem:
            return f"{what} {k}: {problem}"
    return None


def _run(check: Callable, backend: str, name: str, data: st.DataObject, dtypes: tuple) -> None:
    entry = _entry(name)
    layout = data.draw(entry.layout, label="layout")
    problems = []
    with slope.use_backend(backend):
        for dtype in dtypes:
            if dtype in entry.dtypes:
                problem = check(entry, layout, dtype, data)
                if problem:
                    problems.append(f"{backend} {dtype}: {problem}")
    if problems:
        raise AssertionError("\n".join(problems))


# ----------------------------------------------------------------------------------------------- jvp


def _jvp_problem(entry: Any, layout: Any, dtype: str, data: st.DataObject) -> str | None:
    call = Call(entry, layout, _draw_arrays(data, layout, dtype, for_grad=True), dtype)
    d = Differentiated(call, dtype)
    if not d.prepare():
        return None
    (torch_primals, slope_primals), (torch_tangents, slope_tangents) = d.primals(), d.tangents()
    expected, error = _quiet(lambda: torch.func.jvp(d.torch_fn, tuple(torch_primals), tuple(torch_tangents)))
    if _not_implemented(error) or entry.name in JVP_FROM_VJP:  # (no forward-mode formula: the double-backward JVP)
        expected, error = _quiet(
            lambda: torch.autograd.functional.jvp(d.torch_fn, tuple(torch_primals), tuple(torch_tangents))
        )
    if error is not None:
        return None if not _not_implemented(error) else f"PyTorch has no JVP: {error!r}"
    result, error = _quiet(lambda: slope.jvp(d.slope_fn, slope_primals, slope_tangents))
    where = f"jvp of {call.describe()}"
    if error is not None:
        return f"{where}\n    slope.jvp raised {type(error).__name__}: {str(error)[:300]!r}"
    rtol = entry.rtol.get(f"grad {dtype}", GRAD_RTOL[dtype])
    for k in range(len(d.floating)):
        problem = mismatch(result[0][k], expected[0][k].detach(), *call.tolerance(expected[0][k], d.floating[k]))
        problem = problem and f"primal output {k}: {problem}"
        problem = problem or _compare("tangent output", [result[1][k]], [expected[1][k]], rtol)
        if problem:
            return f"{where}\n    {problem}"
    return None


@pytest.mark.parametrize(("backend", "name"), _cells("jvp"))
@EXAMPLES
@given(data=st.data())
def test_jvp(backend: str, name: str, data: st.DataObject) -> None:
    _run(_jvp_problem, backend, name, data, GRAD_DTYPES)


# ----------------------------------------------------------------------------------------------- vmap


def _vmap_problem(entry: Any, layout: Any, dtype: str, data: st.DataObject) -> str | None:
    tensors = placeholders((layout.args, layout.kwargs))
    if not tensors:
        return None
    size = data.draw(st.integers(1, 3), label="batch size")
    examples = [_draw_arrays(data, layout, dtype) for _ in range(size)]
    axes = [data.draw(st.sampled_from([0, 0, len(t.shape), None]), label=f"in_axes of {t.shape}") for t in tensors]
    if all(a is None for a in axes):
        axes[0] = 0
    batched = {
        id(t): examples[0][id(t)] if a is None else np.stack([e[id(t)] for e in examples], axis=a)
        for t, a in zip(tensors, axes)
    }
    calls = [Call(entry, layout, {id(t): e[id(t)] if a is not None else examples[0][id(t)] for t, a in
                                  zip(tensors, axes)}, dtype) for e in examples]  # fmt: skip
    singles = [c.run_slope() for c in calls]
    if any(error is not None for _, error in singles):
        return None  # an invalid call (test_forward compares its error)
    fn = entry.call_slope()

    def mapped(*values: slope.Tensor) -> tuple:
        by_id = dict(zip(map(id, tensors), values))
        return tuple(flat_results(fn(*fill(layout.args, by_id, _same), **fill(layout.kwargs, by_id, _same))))

    result, error = _quiet(
        lambda: slope.vmap(mapped, in_axes=tuple(axes))(*[slope.tensor(batched[id(t)]) for t in tensors])
    )
    where = f"vmap(in_axes={tuple(axes)}) over {size} examples like {calls[0].describe()}"
    if error is not None:
        return f"{where}\n    slope.vmap raised {type(error).__name__}: {str(error)[:300]!r}"
    per_example = [flat_results(out) for out, _ in singles]
    for k, out in enumerate(result):
        parts = [to_torch(np.asarray(outs[k].numpy())) for outs in per_example]
        expected = torch.stack(parts)
        bounds = [c.tolerance(p, k) for c, p in zip(calls, parts)]
        atol = np.stack([np.broadcast_to(np.asarray(b[1], np.float64), p.shape) for b, p in zip(bounds, parts)])
        problem = mismatch(out, expected, bounds[0][0], atol, zero_signs=entry.zero_sign is None)
        if problem:
            return f"{where}\n    output {k}: {problem}"
    return None


@pytest.mark.parametrize(("backend", "name"), _cells("vmap"))
@EXAMPLES
@given(data=st.data())
def test_vmap(backend: str, name: str, data: st.DataObject) -> None:
    _run(_vmap_problem, backend, name, data, GRAD_DTYPES)


# ----------------------------------------------------------------------------------------------- second order


def _torch_hvp(loss: Callable, primals: list, tangents: list) -> tuple:
    """torch.func's Hessian-vector product: forward over reverse (Slope's order: where a rule masks a point, as pow's
    at y == 0, both orders of PyTorch's own Hessian differ), else reverse over reverse (the gradient of <grad, v>)."""
    argnums = tuple(range(len(primals)))
    gradient = torch.func.grad(loss, argnums=argnums)
    expected, error = _quiet(lambda: torch.func.jvp(gradient, tuple(primals), tuple(tangents))[1])
    if not _not_implemented(error):
        return _reraise(expected, error)

    def directional(*values: Any) -> Any:
        return sum((g * v).sum() for g, v in zip(gradient(*values), tangents))

    return torch.func.grad(directional, argnums=argnums)(*primals)


def _reraise(value: Any, error: BaseException | None) -> Any:
    if error is not None:
        raise error
    return value


def _hessian_problem(entry: Any, layout: Any, dtype: str, data: st.DataObject) -> str | None:
    call = Call(entry, layout, _draw_arrays(data, layout, dtype, for_grad=True), dtype)
    d = Differentiated(call, dtype)
    if not d.prepare():
        return None
    (torch_primals, slope_primals), (torch_tangents, slope_tangents) = d.primals(), d.tangents()
    expected, error = _quiet(lambda: _torch_hvp(d.torch_loss, torch_primals, torch_tangents))
    if error is not None:
        return None if not _not_implemented(error) else f"PyTorch has no second derivative: {error!r}"
    argnums = tuple(range(len(slope_primals)))
    where = f"Hessian of sum(out * ct) for {call.describe()}"
    result, error = _quiet(
        lambda: slope.jvp(slope.grad(d.slope_loss, argnums=argnums), slope_primals, slope_tangents)[1]
    )
    if error is not None:
        return f"{where}\n    jvp(grad) raised {type(error).__name__}: {str(error)[:300]!r}"
    rtol = entry.rtol.get(f"grad {dtype}", GRAD_RTOL[dtype])
    problem = _compare("Hessian-vector product of input", list(result), list(expected), rtol)
    if problem or len(slope_primals) != 1 or not 0 < math.prod(slope_primals[0].shape) <= 6:
        return problem and f"{where}\n    {problem}"
    expected, error = _quiet(lambda: torch.func.hessian(d.torch_loss)(torch_primals[0]))
    if _not_implemented(error):
        expected, error = _quiet(lambda: torch.autograd.functional.hessian(d.torch_loss, torch_primals[0]))
    if error is not None:
        return None
    result, error = _quiet(lambda: slope.hessian(d.slope_loss)(slope_primals[0]))
    if error is not None:
        return f"{where}\n    slope.hessian raised {type(error).__name__}: {str(error)[:300]!r}"
    problem = _compare("slope.hessian", [result], [expected], rtol)
    return problem and f"{where}\n    {problem}"


@pytest.mark.parametrize(("backend", "name"), _cells("hessian"))
@EXAMPLES
@given(data=st.data())
def test_hessian(backend: str, name: str, data: st.DataObject) -> None:
    _run(_hessian_problem, backend, name, data, ("float64",))


# ----------------------------------------------------------------------------------------------- special points

INF, NAN = math.inf, math.nan
# (id, Slope function, PyTorch function, inputs): each input a list of float64 values, differentiated at once
SPECIAL_POINTS = [
    ("relu at 0", slope.relu, torch.relu, [[0.0, -0.0, 1.0, -1.0]]),
    ("abs at 0", slope.abs, torch.abs, [[0.0, -0.0, 2.0, -2.0]]),
    (
        "clamp at its bounds",
        lambda x: slope.clamp(x, -1.0, 1.0),
        lambda x: torch.clamp(x, -1.0, 1.0),
        [[-1.0, 1.0, 0.0, 2.0, -2.0]],
    ),
    ("clamp with tensor bounds at ties", slope.clamp, torch.clamp, [[0.0, 1.0, 2.0], [0.0, 0.0, 3.0], [1.0, 1.0, 2.0]]),
    ("max with ties", lambda x: slope.max(x, dim=0), lambda x: torch.amax(x, dim=0), [[1.0, 3.0, 3.0, 2.0]]),
    ("min with ties", lambda x: slope.min(x), lambda x: torch.amin(x), [[1.0, -3.0, -3.0, 2.0]]),
    ("maximum at ties", slope.maximum, torch.maximum, [[1.0, 2.0, 0.0], [1.0, 3.0, -0.0]]),
    ("minimum at ties", slope.minimum, torch.minimum, [[1.0, 2.0, 0.0], [1.0, 3.0, -0.0]]),
    (
        "where, NaN in the other branch",
        lambda x: slope.where(x > 0, slope.sqrt(x), 0.0),
        lambda x: torch.where(x > 0, torch.sqrt(x), 0.0),
        [[-1.0, 4.0, 0.0]],
    ),
    (
        "where, inf in the other branch",
        lambda x: slope.where(x != 0, 1 / x, x),
        lambda x: torch.where(x != 0, 1 / x, x),
        [[0.0, 2.0, -0.5]],
    ),
    ("sqrt at 0", slope.sqrt, torch.sqrt, [[0.0, 4.0]]),
    ("log at 0", slope.log, torch.log, [[0.0, 1.0]]),
    ("pow at a base of 0", slope.pow, torch.pow, [[0.0, 0.0, 0.0, 0.0, 2.0], [0.0, 1.0, 2.0, 0.5, 0.0]]),
    ("pow to a constant 2 at 0", lambda x: x**2, lambda x: x**2, [[0.0, -0.0, 3.0]]),
    ("pow to a constant 0.5 at 0", lambda x: x**0.5, lambda x: x**0.5, [[0.0, 4.0]]),
    ("pow at a negative base", slope.pow, torch.pow, [[-2.0, -2.0], [2.0, 3.0]]),
    ("exp at infinities", slope.exp, torch.exp, [[-INF, 0.0]]),
    ("tanh at infinities", slope.tanh, torch.tanh, [[INF, -INF, 0.0]]),
    ("sigmoid at infinities", slope.sigmoid, torch.sigmoid, [[INF, -INF, 0.0]]),
    ("softplus at infinities", slope.softplus, torch.nn.functional.softplus, [[INF, -INF, 0.0]]),
    ("relu at infinities", slope.relu, torch.relu, [[INF, -INF]]),
    ("maximum with an infinity", slope.maximum, torch.maximum, [[INF, 1.0], [1.0, -INF]]),
    ("logsumexp with -inf", slope.logsumexp, lambda x: torch.logsumexp(x, 0), [[-INF, 0.0, 1.0]]),
    ("softmax with -inf", lambda x: slope.softmax(x, dim=0), lambda x: torch.softmax(x, 0), [[-INF, 0.0, 1.0]]),
    ("sign at 0", slope.sign, torch.sign, [[0.0, -0.0, 2.0]]),
    (
        "round, floor at ties",
        lambda x: slope.round(x) + slope.floor(x),
        lambda x: torch.round(x) + torch.floor(x),
        [[0.5, 1.0, -1.5]],
    ),
    ("fmod at multiples", slope.fmod, torch.fmod, [[4.0, -3.0, 1.5], [2.0, 1.5, 0.5]]),
    ("remainder at multiples", slope.remainder, torch.remainder, [[4.0, -3.0, 1.5], [2.0, 1.5, 0.5]]),
    ("prod with zeros", lambda x: slope.prod(x), torch.prod, [[0.0, 2.0, 3.0]]),
    ("prod with two zeros", lambda x: slope.prod(x), torch.prod, [[0.0, 2.0, 0.0]]),
    ("std of equal values", lambda x: slope.std(x), torch.std, [[1.0, 1.0, 1.0]]),
    ("var of equal values", lambda x: slope.var(x), torch.var, [[1.0, 1.0, 1.0]]),
    ("leaky_relu at 0", slope.leaky_relu, torch.nn.functional.leaky_relu, [[0.0, -0.0, 1.0]]),
    (
        "max_pool with ties",
        lambda x: slope.max_pool(x, (2,)),
        lambda x: torch.nn.functional.max_pool1d(x, 2),
        [[[[1.0, 1.0, 2.0, 2.0]]]],
    ),
    ("norm at 0", lambda x: slope.sqrt((x * x).sum()), lambda x: torch.sqrt((x * x).sum()), [[0.0, 0.0]]),
]


def _point_derivatives(slope_fn: Callable, torch_fn: Callable, inputs: list) -> str | None:
    arrays = [np.array(x, np.float64) for x in inputs]
    argnums = tuple(range(len(arrays)))
    torch_x, slope_x = [torch.tensor(a) for a in arrays], [slope.tensor(a) for a in arrays]
    torch_v, slope_v = ([f(np.ones_like(a) * 0.5) for a in arrays] for f in (torch.tensor, slope.tensor))

    def torch_loss(*xs: Any) -> Any:
        out = torch_fn(*xs)
        return (out * torch.tensor(_cotangent(tuple(out.shape), None))).sum()

    def slope_loss(*xs: Any) -> Any:
        out = slope_fn(*xs)
        return (out * slope.tensor(_cotangent(tuple(out.shape), None))).sum()

    expected = {
        "grad": torch.func.grad(torch_loss, argnums=argnums)(*torch_x),
        "jvp": torch.func.jvp(torch_fn, tuple(torch_x), tuple(torch_v))[1:],
        "Hessian-vector product": _torch_hvp(torch_loss, torch_x, torch_v),
    }
    actual = {
        "grad": lambda: slope.grad(slope_loss, argnums=argnums)(*slope_x),
        "jvp": lambda: slope.jvp(slope_fn, slope_x, slope_v)[1:],
        "Hessian-vector product": lambda: slope.jvp(slope.grad(slope_loss, argnums=argnums), slope_x, slope_v)[1],
    }
    for what, ref in expected.items():
        result, error = _quiet(actual[what])
        if error is not None:
            return f"{what}: Slope raised {error!r}"
        problem = _compare(what, list(result), list(ref), GRAD_RTOL["float64"])
        if problem:
            return problem
    return None


@pytest.mark.parametrize(
    ("point", "slope_fn", "torch_fn", "inputs"), SPECIAL_POINTS, ids=[p[0] for p in SPECIAL_POINTS]
)
def test_special_points(backend: str, point: str, slope_fn: Callable, torch_fn: Callable, inputs: list) -> None:
    problem = _point_derivatives(slope_fn, torch_fn, inputs)
    assert problem is None, f"{backend}: {point} at {inputs}: {problem}"


def test_transform_checks_name_differentiable_entries() -> None:
    for name, entry in ENTRIES.items():
        for _backend, check in entry.xfail:
            assert check not in TRANSFORM_CHECKS or _differentiable(name), f"{name}: {check} xfail of no cell"
