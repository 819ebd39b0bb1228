"""Shared machinery of the operator tests: input specs, tolerances, NumPy references and finite differences.

The operator table (`slope_testing.table`) describes every operator and procedure as data; the checks here run one
table case under one transformation and compare it with an independent reference:

- forward values against a NumPy reference evaluated in float64 on the very inputs Slope received;
- `jvp` against central finite differences of that NumPy reference along a random tangent;
- `grad` (reverse mode) against per-element central finite differences of the reference;
- `vmap` against a Python loop of the un-batched function;
- `grad` of `grad` against per-element finite differences of Slope's own (already checked) gradient, jitted and
  evaluated in float64.

Finite differences are always taken in float64, so low-precision dtypes are compared with an accurate reference;
the tolerance of each comparison is stated per dtype in FORWARD_TOLERANCE and DERIVATIVE_TOLERANCE.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import numpy as np
import pytest

import slope

# ----------------------------------------------------------------------------------------------- dtypes

FLOATS = (slope.float16, slope.bfloat16, slope.float32, slope.float64)
INTEGERS = (slope.int8, slope.uint8, slope.int16, slope.int32, slope.int64)
NUMBERS = FLOATS + INTEGERS
BITS = INTEGERS + (slope.bool_,)
ALL_DTYPES = NUMBERS + (slope.bool_,)

# (rtol, atol) for values; atol is relative to max(1, largest |reference|) so sums of many terms are judged fairly.
FORWARD_TOLERANCE = {
    "float64": (1e-9, 1e-9),
    "float32": (2e-5, 2e-5),
    "float16": (5e-3, 5e-3),
    "bfloat16": (4e-2, 4e-2),
}
# Derivatives are compared with float64 finite differences (error ~1e-9), so the tolerance is the dtype's own error;
# float64's is ten times the largest error over every float64 cell of every backend (1e-9 passes them all, 1e-10 not)
DERIVATIVE_TOLERANCE = {
    "float64": (1e-8, 1e-8),
    "float32": (2e-4, 2e-4),
    "float16": (2e-2, 2e-2),
    "bfloat16": (1e-1, 1e-1),
}
FD_STEP = 1e-6  # central differences of float64 NumPy references
FD_STEP_SECOND = 1e-5  # central differences of Slope's float64 gradient (grad of grad)


def is_float(dtype: Any) -> bool:
    """Whether a slope or NumPy dtype is floating point (bfloat16 included)."""
    if isinstance(dtype, slope.DType):
        return dtype.is_float
    return slope.dtypes.as_dtype(dtype).is_float


def tolerance(table: dict, dtype: slope.DType, scale: float = 1.0) -> tuple[float, float]:
    """(rtol, atol) of a dtype, scaled by a row's factor; integers and bools compare exactly."""
    if not dtype.is_float:
        return 0.0, 0.0
    rtol, atol = table[dtype.name]
    return rtol * scale, atol * scale


# ----------------------------------------------------------------------------------------------- comparison


def to_float64(array: Any) -> np.ndarray:
    """A NumPy float64 copy (bools and integers too) of an array or tensor."""
    return np.asarray(array).astype(np.float64)


def assert_close(actual: Any, expected: Any, rtol: float, atol: float, what: str) -> None:
    """Elementwise |actual - expected| <= atol * max(1, max|expected|) + rtol * |expected|, NaNs and infs equal."""
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape}, expected {expected.shape}"
    if actual.size == 0:
        return
    a = to_float64(actual)
    e = to_float64(expected)
    nan_a, nan_e = np.isnan(a), np.isnan(e)
    assert np.array_equal(nan_a, nan_e), f"{what}: NaN at {np.argwhere(nan_a != nan_e)[:5].tolist()}\n{a}\n{e}"
    infinite = np.isinf(e) | np.isinf(a)
    assert np.array_equal(a[infinite], e[infinite]), f"{what}: infinities differ\n actual {a}\n expected {e}"
    finite = ~(nan_e | infinite)
    if not finite.any():
        return
    scale = max(1.0, float(np.max(np.abs(e[finite]))))
    error = np.abs(a - e)
    bound = atol * scale + rtol * np.abs(e)
    bad = finite & (error > bound)
    if bad.any():
        worst = np.unravel_index(np.argmax(np.where(finite, error - bound, -np.inf)), a.shape)
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {a.size} elements differ beyond rtol={rtol:g}, atol={atol:g} "
            f"(worst at {tuple(int(i) for i in worst)}: {a[worst]!r} vs {e[worst]!r})\n actual:\n{a}\n expected:\n{e}"
        )


def flat_outputs(value: Any) -> list:
    """A function's outputs as a flat list (procedures such as split return lists)."""
    if isinstance(value, (list, tuple)):
        return [leaf for item in value for leaf in flat_outputs(item)]
    return [value]


# ----------------------------------------------------------------------------------------------- input specs


def _int_limits(dtype: slope.DType, low: float, high: float) -> tuple[int, int]:
    info = np.iinfo(dtype.numpy)
    return max(int(math.ceil(low)), int(info.min)), min(int(math.floor(high)), int(info.max))


@dataclass(frozen=True)
class Data:
    """A tensor input that takes the cell's dtype (the one that is differentiated and batched).

    Floats are uniform in [low, high]; `distinct` gives distinct values on a 1/4 grid offset by 3/32 (no ties, nothing
    within 0.09 of an integer or half-integer, exactly representable in bfloat16), so kinks (max, relu, floor, ...)
    stay far from the finite-difference steps; `nonzero` keeps |x| >= 0.5; `specials` plants inf, -inf and NaN;
    `choices` draws floats from a few given values.
    Integers are drawn from [low, high] clipped to the dtype; bools are fair coins.
    """

    shape: tuple = (2, 3)
    low: float = -2.0
    high: float = 2.0
    distinct: bool = False
    nonzero: bool = False
    specials: bool = False
    choices: tuple = ()  # floats drawn from these values instead

    def make(self, rng: np.random.Generator, dtype: slope.DType) -> np.ndarray:
        size = math.prod(self.shape)
        if dtype == slope.bool_:
            return rng.random(self.shape) < 0.5
        if not dtype.is_float:
            lo, hi = _int_limits(dtype, self.low, self.high)
            values = rng.integers(lo, hi + 1, size=self.shape)
            if self.nonzero:
                values = np.where(values == 0, hi if hi != 0 else lo, values)
            return values.astype(dtype.numpy)
        if self.choices:
            values = rng.choice(np.asarray(self.choices, dtype=np.float64), size)
        elif self.distinct:
            steps = rng.permutation(size) - size // 2
            values = (self.low + self.high) / 2 + (steps + 0.375) * 0.25
        elif self.nonzero:
            magnitude = rng.uniform(0.5, max(abs(self.low), abs(self.high), 0.5), size)
            values = magnitude * rng.choice([-1.0, 1.0], size)
        else:
            values = rng.uniform(self.low, self.high, size)
        if self.specials and size >= 3:
            values[:3] = [np.inf, -np.inf, np.nan]
            values = rng.permutation(values)
        array = values.reshape(self.shape).astype(dtype.numpy)
        if self.distinct and size:
            rounded = array.astype(np.float64).ravel()
            assert len(set(rounded.tolist())) == size, f"distinct inputs collided in {dtype.name}: {rounded}"
        return array

    def with_shape(self, shape: tuple) -> Data:
        return replace(self, shape=shape)


@dataclass(frozen=True)
class Fixed:
    """An input that keeps its own value and dtype in every cell (indices, masks, targets): never differentiated."""

    value: Any

    def make(self, rng: np.random.Generator, dtype: slope.DType) -> np.ndarray:
        return np.asarray(self.value)

    def with_shape(self, shape: tuple) -> Fixed:
        return self


@dataclass(frozen=True)
class Key:
    """A Threefry key input (int64 of shape (2,)): a different seed for every draw."""

    def make(self, rng: np.random.Generator, dtype: slope.DType) -> np.ndarray:
        return np.array([int(rng.integers(0, 2**32)), int(rng.integers(0, 2**32))], dtype=np.int64)

    def with_shape(self, shape: tuple) -> Key:
        return self


@dataclass(frozen=True)
class FloatData(Data):
    """Like Data, but always floating: the cell's dtype when it is a float, else float32 (e.g. scatter updates)."""

    def make(self, rng: np.random.Generator, dtype: slope.DType) -> np.ndarray:
        return super().make(rng, dtype if dtype.is_float else slope.float32)


def seeded_rng(*parts: Any) -> np.random.Generator:
    """A generator seeded by the cell's identity, so every run and xdist worker draws the same inputs."""
    return np.random.default_rng(zlib.crc32("/".join(str(p) for p in parts).encode()))


# ----------------------------------------------------------------------------------------------- table rows


@dataclass
class Case:
    """One call of an operator: its inputs, extra arguments and NumPy reference.

    By default the call is `slope.NAME(*tensors, *params, **kwargs)` and, as a method,
    `tensors[0].NAME(*tensors[1:], *params, **kwargs)`; `call` replaces both for calls of another form.
    The reference receives NumPy arrays (floats as float64) in the same order and returns an array or a list.
    """

    inputs: Sequence[Any]
    ref: Callable
    params: tuple = ()
    kwargs: dict = field(default_factory=dict)
    call: Callable | None = None
    method_call: Callable | None = None  # the method form, where `call` is not the default function form
    dtype_arg: bool = False  # `call` takes the cell's dtype as a `dtype=` keyword (creation, random)
    label: str = ""
    tol: float = 1.0
    method: bool = True
    out_dtype: Callable[[slope.DType], slope.DType] | None = None  # overrides the row's


@dataclass
class Row:
    """Everything the tests know about one registered operator or procedure.

    `dtypes` are the dtypes the matrix runs it with; `out_dtype` maps the cell's dtype to the result's (default: the
    same); `zero_derivative` says the defined derivative is zero even where the reference's finite differences are
    not (stop_gradient); `skips` gives, per transformation, the reason a cell does not apply; `tol` scales the dtype
    tolerances, `atol_floor` is an absolute error the row is allowed (a documented approximation) and
    `computed_in` a dtype the operation computes in whatever the output dtype (random normals: float32).
    The first case is the one the conformance matrix runs; test_ops runs them all.
    """

    name: str
    cases: list[Case]
    dtypes: tuple = FLOATS
    out_dtype: Callable[[slope.DType], slope.DType] | None = None
    zero_derivative: bool = False
    skips: dict[str, str] = field(default_factory=dict)
    tol: float = 1.0
    atol_floor: float = 0.0
    computed_in: slope.DType | None = None

    def expected_dtype(self, case: Case, dtype: slope.DType) -> slope.DType:
        out_dtype = case.out_dtype or self.out_dtype
        return dtype if out_dtype is None else out_dtype(dtype)

    def function(self, case: Case, dtype: slope.DType) -> Callable:
        """The case as a function of tensors, through `slope.NAME`."""
        if case.call is not None:
            if case.dtype_arg:
                return lambda *tensors: case.call(*tensors, dtype=dtype)
            return case.call
        fn = slope.functions[self.name]
        return lambda *tensors: fn(*tensors, *case.params, **case.kwargs)

    def has_method_form(self, case: Case) -> bool:
        return case.method_call is not None or (case.call is None and case.method and bool(case.inputs))

    def method(self, case: Case) -> Callable:
        """The case as a function of tensors, through the Tensor method."""
        if case.method_call is not None:
            return case.method_call
        name = self.name
        return lambda first, *rest: getattr(first, name)(*rest, *case.params, **case.kwargs)


# ----------------------------------------------------------------------------------------------- a prepared call


class Prepared:
    """A case's inputs drawn for one dtype on the active backend: NumPy arrays, reference arrays and tensors."""

    def __init__(self, row: Row, case: Case, dtype: slope.DType, rng: np.random.Generator):
        self.row = row
        self.case = case
        self.dtype = dtype
        self.rng = rng
        self.fn = row.function(case, dtype)
        self.arrays = [spec.make(rng, dtype) for spec in case.inputs]
        self.tensors = [slope.tensor(a) for a in self.arrays]
        # inputs that are differentiated: floating tensors of the cell's dtype (not indices, masks or keys)
        self.float_positions = [
            i
            for i, (spec, a) in enumerate(zip(case.inputs, self.arrays))
            if isinstance(spec, Data) and is_float(a.dtype)
        ]
        self.out_dtype = row.expected_dtype(case, dtype)
        # the float dtype losses are accumulated in (outputs are cast to it; integer cells use float32)
        self.loss_dtype = dtype if dtype.is_float else slope.float32

    def inputs_to_differentiate(self) -> list[tuple[int, np.ndarray]]:
        return [(i, self.arrays[i]) for i in self.float_positions]

    def reference_inputs(self, arrays: list[np.ndarray] | None = None) -> list[np.ndarray]:
        """The inputs the NumPy reference sees: floats widened to float64, the rest unchanged."""
        arrays = self.arrays if arrays is None else arrays
        return [to_float64(a) if is_float(a.dtype) else a for a in arrays]

    def reference(self, arrays: list[np.ndarray] | None = None) -> list[np.ndarray]:
        return [np.asarray(r) for r in flat_outputs(self.call_reference(self.reference_inputs(arrays)))]

    def call_reference(self, arrays: list[np.ndarray]) -> Any:
        """The NumPy reference on these inputs (creation cases also learn the dtype they build)."""
        if self.case.dtype_arg and not self.case.inputs:
            return self.case.ref(dtype=self.dtype)
        return self.case.ref(*arrays)

    def _tolerance(self, table: dict, dtypes_involved: list) -> tuple[float, float]:
        """The loosest tolerance of the float dtypes involved (exact when none is a float)."""
        floats = [d for d in dtypes_involved if d is not None and d.is_float]
        if not floats:
            return 0.0, 0.0
        pairs = [tolerance(table, d, self.scale) for d in floats]
        return max(p[0] for p in pairs), max(max(p[1] for p in pairs), self.row.atol_floor)

    def forward_tolerance(self) -> tuple[float, float]:
        return self._tolerance(FORWARD_TOLERANCE, [self.dtype, self.out_dtype, self.row.computed_in])

    def derivative_tolerance(self) -> tuple[float, float]:
        return self._tolerance(
            DERIVATIVE_TOLERANCE, [self.loss_dtype, self.out_dtype if self.out_dtype.is_float else None]
        )

    @property
    def scale(self) -> float:
        return self.row.tol * self.case.tol

    def check_outputs(self, outputs: Any, what: str) -> list:
        """Compare the function's outputs (any pytree of tensors) with the NumPy reference; returns them flat."""
        outs = flat_outputs(outputs)
        refs = self.reference()
        assert len(outs) == len(refs), f"{what}: {len(outs)} outputs, the reference has {len(refs)}"
        rtol, atol = self.forward_tolerance()
        for k, (out, ref) in enumerate(zip(outs, refs)):
            assert isinstance(out, slope.Tensor), f"{what}: output {k} is a {type(out).__name__}, not a Tensor"
            assert out.dtype == self.out_dtype, (
                f"{what}: output {k} has dtype {out.dtype.name}, expected {self.out_dtype.name}"
            )
            assert out.shape == ref.shape, f"{what}: output {k} has shape {out.shape}, the reference {ref.shape}"
            assert_close(out.numpy(), ref, rtol, atol, f"{what}: output {k}")
        return outs


# ----------------------------------------------------------------------------------------------- finite differences


def fd_directional(prepared: Prepared, tangents: dict[int, np.ndarray]) -> list[np.ndarray]:
    """Central finite differences of the reference along a tangent of the float inputs (float64)."""
    base = prepared.reference_inputs()

    def shifted(sign: float) -> list[np.ndarray]:
        args = list(base)
        for i, t in tangents.items():
            args[i] = base[i] + sign * FD_STEP * t
        return [to_float64(r) for r in flat_outputs(prepared.call_reference(args))]

    plus, minus = shifted(1.0), shifted(-1.0)
    return [(p - m) / (2 * FD_STEP) for p, m in zip(plus, minus)]


def fd_gradient(scalar_fn: Callable[[list], float], args: list[np.ndarray], positions: list[int], step: float) -> list:
    """Per-element central finite differences of a scalar function of a list of float64 arrays."""
    grads = []
    for i in positions:
        grad = np.zeros(args[i].shape)
        for index in np.ndindex(*args[i].shape):
            values = []
            for sign in (1.0, -1.0):
                shifted = list(args)
                shifted[i] = args[i].copy()
                shifted[i][index] += sign * step
                values.append(scalar_fn(shifted))
            grad[index] = (values[0] - values[1]) / (2 * step)
        grads.append(grad)
    return grads


def reference_loss(prepared: Prepared, cotangents: list[np.ndarray]) -> Callable[[list], float]:
    """sum_k sum(reference_output_k * cotangent_k), a scalar function of the reference inputs."""

    def loss(args: list) -> float:
        outs = flat_outputs(prepared.call_reference(args))
        return float(sum(np.sum(to_float64(o) * c) for o, c in zip(outs, cotangents)))

    return loss


def slope_loss(prepared: Prepared, cotangents: list, loss_dtype: slope.DType, base: list | None = None) -> Callable:
    """sum_k sum(cast(output_k) * cotangent_k) as a Slope function of the differentiated inputs."""
    base = prepared.tensors if base is None else base
    positions = prepared.float_positions

    def loss(*diff_args: slope.Tensor) -> slope.Tensor:
        args = list(base)
        for i, value in zip(positions, diff_args):
            args[i] = value
        total = None
        for out, ct in zip(flat_outputs(prepared.fn(*args)), cotangents):
            term = (slope.cast(out, loss_dtype) * ct).sum()
            total = term if total is None else total + term
        return total

    return loss


def random_like(rng: np.random.Generator, shape: tuple, dtype: slope.DType) -> np.ndarray:
    """Random values in [-1, 1] rounded to a float dtype (tangents and cotangents)."""
    return rng.uniform(-1.0, 1.0, shape).astype(dtype.numpy)


# ----------------------------------------------------------------------------------------------- the checks


def check_eager(prepared: Prepared) -> None:
    """Eager call against NumPy."""
    prepared.check_outputs(prepared.fn(*prepared.tensors), "eager")


def check_jit(prepared: Prepared) -> None:
    """jit against NumPy, twice (the second call comes from the cache, which holds one entry)."""
    jitted = slope.jit(prepared.fn)
    prepared.check_outputs(jitted(*prepared.tensors), "jit")
    prepared.check_outputs(jitted(*prepared.tensors), "jit (cached)")
    assert len(jitted.cache) == 1, f"jit compiled {len(jitted.cache)} times for one signature"


def check_jvp(prepared: Prepared, also_jit: bool = True) -> None:
    """jvp against finite differences of the reference along a random tangent (integer inputs: zero tangents)."""
    tangent_arrays = {
        i: random_like(prepared.rng, a.shape, slope.dtypes.as_dtype(a.dtype))
        for i, a in prepared.inputs_to_differentiate()
    }
    tangents = []
    for i, a in enumerate(prepared.arrays):
        tangents.append(slope.tensor(tangent_arrays[i]) if i in tangent_arrays else slope.tensor(np.zeros_like(a)))
    expected = fd_directional(prepared, {i: to_float64(t) for i, t in tangent_arrays.items()})
    if prepared.row.zero_derivative or not prepared.out_dtype.is_float:  # integer and bool outputs: zero tangents
        expected = [np.zeros_like(e) for e in expected]

    def jvp_fn(primals: list, tangent_list: list) -> tuple:
        return slope.jvp(prepared.fn, primals, tangent_list)

    runs = [("jvp", jvp_fn)] + ([("jit(jvp)", slope.jit(jvp_fn))] if also_jit else [])
    rtol, atol = prepared.derivative_tolerance()
    for what, fn in runs:
        primal_out, tangent_out = fn(list(prepared.tensors), tangents)
        outs = prepared.check_outputs(primal_out, f"{what} primal")
        tangent_outs = flat_outputs(tangent_out)
        assert len(tangent_outs) == len(outs), f"{what}: {len(tangent_outs)} tangents for {len(outs)} outputs"
        for k, (out, t, e) in enumerate(zip(outs, tangent_outs, expected)):
            assert t.shape == out.shape and t.dtype == out.dtype, f"{what}: tangent {t.aval} for output {out.aval}"
            assert_close(t.numpy(), e, rtol, atol, f"{what}: tangent {k}")


def _cotangents(prepared: Prepared) -> tuple[list[np.ndarray], list[slope.Tensor]]:
    shapes = [r.shape for r in prepared.reference()]
    arrays = [random_like(prepared.rng, s, prepared.loss_dtype) for s in shapes]
    return arrays, [slope.tensor(a) for a in arrays]


def check_integer_grad_error(prepared: Prepared) -> None:
    """grad of a function of integer inputs is refused with an error that names the dtype (SPEC section 8)."""
    if not prepared.tensors:
        pytest.skip("no tensor inputs: nothing to differentiate")
    _, cts = _cotangents(prepared)
    loss = slope_loss(prepared, cts, prepared.loss_dtype)
    with pytest.raises(slope.TransformError, match=prepared.arrays[0].dtype.name if prepared.arrays else "dtype"):
        slope.grad(lambda *args: loss(*args))(prepared.tensors[0])


def check_grad(prepared: Prepared, also_jit: bool = True) -> None:
    """Reverse mode against per-element finite differences of the reference."""
    if not prepared.float_positions:
        check_integer_grad_error(prepared)
        return
    ct_arrays, cts = _cotangents(prepared)
    argnums = tuple(range(len(prepared.float_positions)))
    loss = slope_loss(prepared, cts, prepared.loss_dtype)
    reference_args = prepared.reference_inputs()
    if prepared.row.zero_derivative or not prepared.out_dtype.is_float:
        expected = [np.zeros(reference_args[i].shape) for i in prepared.float_positions]
    else:
        ref_loss = reference_loss(prepared, [to_float64(c) for c in ct_arrays])
        expected = fd_gradient(ref_loss, reference_args, prepared.float_positions, FD_STEP)
    diff_args = [prepared.tensors[i] for i in prepared.float_positions]
    grad_fn = slope.grad(loss, argnums=argnums)
    runs = [("grad", grad_fn)] + ([("jit(grad)", slope.jit(grad_fn))] if also_jit else [])
    rtol, atol = prepared.derivative_tolerance()
    for what, fn in runs:
        grads = fn(*diff_args)
        assert isinstance(grads, tuple) and len(grads) == len(diff_args), f"{what}: returned {type(grads).__name__}"
        for k, (g, x, e) in enumerate(zip(grads, diff_args, expected)):
            assert g.shape == x.shape and g.dtype == x.dtype, f"{what}: gradient {g.aval} for input {x.aval}"
            assert_close(g.numpy(), e, rtol, atol, f"{what}: gradient of input {prepared.float_positions[k]}")


def check_grad_of_grad(prepared: Prepared, backend: slope.Backend) -> None:
    """grad of (gradient . w) against finite differences of Slope's jitted float64 gradient."""
    if not prepared.float_positions:
        check_integer_grad_error(prepared)
        return
    reference_dtype = slope.float64 if slope.float64 in backend.dtypes else slope.float32
    step = FD_STEP_SECOND if reference_dtype == slope.float64 else 1e-2
    ct_arrays, cts = _cotangents(prepared)
    weights = [
        random_like(prepared.rng, a.shape, slope.dtypes.as_dtype(a.dtype))
        for _, a in prepared.inputs_to_differentiate()
    ]
    argnums = tuple(range(len(prepared.float_positions)))

    def directional(loss: Callable, weight_tensors: list) -> Callable:
        gradient = slope.grad(loss, argnums=argnums)

        def h(*diff_args: slope.Tensor) -> slope.Tensor:
            total = None
            for g, w in zip(gradient(*diff_args), weight_tensors):
                term = (g * w).sum()
                total = term if total is None else total + term
            return total

        return h

    # the checked function, in the cell's dtype
    h = directional(slope_loss(prepared, cts, prepared.loss_dtype), [slope.tensor(w) for w in weights])
    diff_args = [prepared.tensors[i] for i in prepared.float_positions]
    second = slope.grad(h, argnums=argnums)(*diff_args)
    # the reference: finite differences of the same construction in float64, jitted once and reused
    wide_base = [
        slope.tensor(r.astype(reference_dtype.numpy)) if is_float(r.dtype) else slope.tensor(r)
        for r in prepared.reference_inputs()
    ]
    wide_cts = [slope.tensor(to_float64(c).astype(reference_dtype.numpy)) for c in ct_arrays]
    wide_weights = [slope.tensor(to_float64(w).astype(reference_dtype.numpy)) for w in weights]
    wide_loss = slope_loss(prepared, wide_cts, reference_dtype, base=wide_base)
    wide_h = slope.jit(directional(wide_loss, wide_weights))
    wide_args = [to_float64(prepared.arrays[i]) for i in prepared.float_positions]

    def h_value(args: list) -> float:
        return float(wide_h(*[slope.tensor(a.astype(reference_dtype.numpy)) for a in args]).item())

    if prepared.row.zero_derivative or not prepared.out_dtype.is_float:
        expected = [np.zeros(a.shape) for a in wide_args]
    else:
        expected = fd_gradient(h_value, wide_args, list(range(len(wide_args))), step)
    rtol, atol = prepared.derivative_tolerance()
    if reference_dtype != slope.float64:
        rtol, atol = max(rtol, 2e-2), max(atol, 2e-2)
    assert len(second) == len(diff_args)
    for k, (g, x, e) in enumerate(zip(second, diff_args, expected)):
        assert g.shape == x.shape and g.dtype == x.dtype, f"grad of grad: {g.aval} for input {x.aval}"
        assert_close(g.numpy(), e, rtol, atol, f"grad of grad: input {prepared.float_positions[k]}")


VMAP_SIZE = 3


def check_vmap(prepared: Prepared, also_jit: bool = True) -> None:
    """vmap against a Python loop of the un-batched function: all inputs batched (at varied axes), then the first only."""
    if not prepared.tensors:
        pytest.skip("no tensor inputs: nothing to map over")
    case = prepared.case
    rng = prepared.rng
    batches = [np.stack([spec.make(rng, prepared.dtype) for _ in range(VMAP_SIZE)]) for spec in case.inputs]
    # batch axis: 0 for the first input, the last axis for the second, 1 (where possible) for the third, ...
    axes = []
    for i, b in enumerate(batches):
        preferred = [0, b.ndim - 1, 1][i % 3]
        axes.append(min(preferred, b.ndim - 1))
    moved = [np.moveaxis(b, 0, a) for b, a in zip(batches, axes)]
    variants = [("all inputs batched", axes, moved)]
    if len(batches) > 1:
        variants.append(("first input batched", [0] + [None] * (len(batches) - 1), [batches[0]] + prepared.arrays[1:]))
    rtol, atol = prepared.forward_tolerance()
    for label, in_axes, arrays in variants:
        tensors = [slope.tensor(np.ascontiguousarray(a)) for a in arrays]
        expected = []
        for n in range(VMAP_SIZE):
            args = [
                t if ax is None else slope.tensor(np.ascontiguousarray(np.take(a, n, axis=ax)))
                for t, a, ax in zip(tensors, arrays, in_axes)
            ]
            expected.append([o.numpy() for o in flat_outputs(prepared.fn(*args))])
        vmapped = slope.vmap(prepared.fn, in_axes=tuple(in_axes))
        runs = [("vmap", vmapped)] + ([("jit(vmap)", slope.jit(vmapped))] if also_jit else [])
        for what, fn in runs:
            outs = flat_outputs(fn(*tensors))
            assert len(outs) == len(expected[0]), f"{what} ({label}): {len(outs)} outputs, expected {len(expected[0])}"
            for k, out in enumerate(outs):
                stacked = np.stack([e[k] for e in expected])
                assert out.dtype == prepared.out_dtype, f"{what} ({label}): dtype {out.dtype.name}"
                assert_close(out.numpy(), stacked, rtol, atol, f"{what} ({label}): output {k}")


# ----------------------------------------------------------------------------------------------- NumPy references


def np_erf(x: np.ndarray) -> np.ndarray:
    """The error function, exact (math.erf elementwise)."""
    return np.vectorize(math.erf, otypes=[np.float64])(x) if np.size(x) else np.asarray(x, np.float64)


def np_logsumexp(x: np.ndarray, axis: Any = None, keepdims: bool = False) -> np.ndarray:
    top = np.max(x, axis=axis, keepdims=True) if x.size else 0.0
    out = np.log(np.sum(np.exp(x - top), axis=axis, keepdims=True)) + top
    return out if keepdims else np.squeeze(out, axis=axis) if axis is not None else out.reshape(())


def np_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def np_log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return x - np_logsumexp(x, axis=axis, keepdims=True)


def _pairs(value: Any, n: int) -> list[tuple[int, int]]:
    if isinstance(value, int):
        return [(value, value)] * n
    return [tuple(v) if isinstance(v, (tuple, list)) else (v, v) for v in value]


def _ints(value: Any, n: int) -> tuple[int, ...]:
    return (value,) * n if isinstance(value, int) else tuple(value)


def np_conv(
    x: np.ndarray, w: np.ndarray, stride: Any = 1, padding: Any = 0, dilation: Any = 1, groups: int = 1
) -> np.ndarray:
    """N-d cross-correlation straight from its definition, one output position at a time.

    out[n, o, p] = sum_{c, k} x_padded[n, g * C/g + c, p * stride + k * dilation] * w[o, c, k], g = o // (O/g).
    """
    n = x.ndim - 2
    stride, dilation = _ints(stride, n), _ints(dilation, n)
    x = np.pad(x, [(0, 0), (0, 0)] + _pairs(padding, n))
    batch, channels = x.shape[:2]
    out_channels, in_per_group = w.shape[:2]
    kernel = w.shape[2:]
    out_per_group = out_channels // groups
    spatial = [(s - d * (k - 1) - 1) // st + 1 for s, k, st, d in zip(x.shape[2:], kernel, stride, dilation)]
    out = np.zeros((batch, out_channels, *spatial))
    for o in range(out_channels):
        g = o // out_per_group
        xs = x[:, g * in_per_group : (g + 1) * in_per_group]
        for position in np.ndindex(*spatial):
            window = tuple(
                slice(p * st, p * st + d * (k - 1) + 1, d) for p, st, d, k in zip(position, stride, dilation, kernel)
            )
            patch = xs[(slice(None), slice(None), *window)]  # (batch, C/g, *kernel)
            out[(slice(None), o, *position)] = np.sum(patch * w[o], axis=tuple(range(1, patch.ndim)))
    return out


def np_conv_transpose(
    x: np.ndarray,
    w: np.ndarray,
    stride: Any = 1,
    padding: Any = 0,
    output_padding: Any = 0,
    groups: int = 1,
    dilation: Any = 1,
) -> np.ndarray:
    """Transposed convolution by scattering: every input element adds x * w[c, o, k] at i * stride + k * dilation."""
    n = x.ndim - 2
    stride, padding = _ints(stride, n), _ints(padding, n)
    output_padding, dilation = _ints(output_padding, n), _ints(dilation, n)
    batch, in_channels = x.shape[:2]
    out_per_group, kernel = w.shape[1], w.shape[2:]
    in_per_group = in_channels // groups
    full = [
        (s - 1) * st + d * (k - 1) + 1 + op
        for s, st, d, k, op in zip(x.shape[2:], stride, dilation, kernel, output_padding)
    ]
    out = np.zeros((batch, out_per_group * groups, *full))
    for c in range(in_channels):
        g = c // in_per_group
        for position in np.ndindex(*x.shape[2:]):
            value = x[(slice(None), c, *position)]  # (batch,)
            for offset in np.ndindex(*kernel):
                target = tuple(p * st + k * d for p, st, k, d in zip(position, stride, offset, dilation))
                for o in range(out_per_group):
                    out[(slice(None), g * out_per_group + o, *target)] += value * w[(c, o, *offset)]
    crop = tuple(slice(p, f - p) for p, f in zip(padding, full))
    return out[(slice(None), slice(None), *crop)]


def np_pool(x: np.ndarray, kernel: Any, stride: Any, padding: Any, dilation: Any, reduce: str) -> np.ndarray:
    """Max or average pooling over the trailing len(kernel) dimensions (average counts padding as zeros)."""
    n = len(kernel)
    stride = kernel if stride is None else _ints(stride, n)
    padding, dilation = _ints(padding, n), _ints(dilation, n)
    fill = -np.inf if reduce == "max" else 0.0
    lead = x.ndim - n
    x = np.pad(x, [(0, 0)] * lead + [(p, p) for p in padding], constant_values=fill)
    spatial = [(s - d * (k - 1) - 1) // st + 1 for s, k, st, d in zip(x.shape[lead:], kernel, stride, dilation)]
    out = np.zeros(x.shape[:lead] + tuple(spatial))
    for position in np.ndindex(*spatial):
        window = tuple(
            slice(p * st, p * st + d * (k - 1) + 1, d) for p, st, d, k in zip(position, stride, dilation, kernel)
        )
        patch = x[(Ellipsis, *window)].reshape(x.shape[:lead] + (-1,))
        out[(Ellipsis, *position)] = patch.max(-1) if reduce == "max" else patch.mean(-1)
    return out


def np_cross_entropy(logits: np.ndarray, target: np.ndarray, reduction: str = "mean", label_smoothing: float = 0.0):
    class_axis = 1 if logits.ndim > 1 else 0
    classes = logits.shape[class_axis]
    logp = np_log_softmax(logits, axis=class_axis)
    if np.issubdtype(target.dtype, np.floating):
        probs = target
    else:
        probs = np.moveaxis(np.eye(classes)[target], -1, class_axis)
    probs = probs * (1.0 - label_smoothing) + label_smoothing / classes
    losses = -np.sum(probs * logp, axis=class_axis)
    return {"mean": np.mean, "sum": np.sum, "none": lambda v: v}[reduction](losses)


_MASK32 = 0xFFFFFFFF
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def np_threefry2x32(k0: Any, k1: Any, x0: Any, x1: Any) -> tuple[np.ndarray, np.ndarray]:
    """Threefry-2x32 with 20 rounds (Salmon et al. 2011), in uint64 NumPy arithmetic masked to 32 bits."""
    k0, k1, x0, x1 = (np.asarray(v, dtype=np.uint64) & np.uint64(_MASK32) for v in (k0, k1, x0, x1))
    mask = np.uint64(_MASK32)
    keys = (k0, k1, k0 ^ k1 ^ np.uint64(0x1BD11BDA))
    x0, x1 = (x0 + keys[0]) & mask, (x1 + keys[1]) & mask
    for block in range(5):
        for r in _ROTATIONS[block % 2]:
            x0 = (x0 + x1) & mask
            x1 = (((x1 << np.uint64(r)) | (x1 >> np.uint64(32 - r))) & mask) ^ x0
        x0 = (x0 + keys[(block + 1) % 3]) & mask
        x1 = (x1 + keys[(block + 2) % 3] + np.uint64(block + 1)) & mask
    return x0, x1


def np_random_bits(key: np.ndarray, count: int) -> np.ndarray:
    """Slope's bit stream: counters 0..2h-1 split in halves as the two words, outputs concatenated."""
    half = max(1, -(-count // 2))
    counters = np.arange(2 * half, dtype=np.uint64)
    y0, y1 = np_threefry2x32(key[0], key[1], counters[:half], counters[half:])
    return np.concatenate([y0, y1])[:count]


def np_uniform(key: np.ndarray, shape: tuple) -> np.ndarray:
    bits = np_random_bits(key, math.prod(shape)) >> np.uint64(9)
    return (bits.astype(np.float64) * 2.0**-23).reshape(shape)


def np_normal(key: np.ndarray, shape: tuple) -> np.ndarray:
    count = math.prod(shape)
    u = (np_random_bits(key, 2 * count) >> np.uint64(9)).astype(np.float64) * 2.0**-23
    return (np.sqrt(-2.0 * np.log(1.0 - u[:count])) * np.cos(u[count:] * 2 * np.pi)).reshape(shape)


def np_randint(key: np.ndarray, shape: tuple, low: int, high: int) -> np.ndarray:
    """Slope's randint: two words a draw, (first * 2**32 + second) % (high - low) + low, in Python's exact integers."""
    count = math.prod(shape)
    words = [int(word) for word in np_random_bits(key, 2 * count)]
    return np.array([(a * 2**32 + b) % (high - low) + low for a, b in zip(words[:count], words[count:])]).reshape(shape)


def np_split_key(key: np.ndarray, num: int) -> np.ndarray:
    return np_random_bits(key, 2 * num).astype(np.int64).reshape(num, 2)


def np_global_key(seed: int) -> np.ndarray:
    """The key the global generator hands out first after slope.manual_seed(seed)."""
    key = np.array([(seed >> 32) & _MASK32, seed & _MASK32], dtype=np.int64)
    return np_split_key(key, 2)[1]
