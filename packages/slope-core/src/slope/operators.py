"""The core operators: the only operations a backend must translate. Each holds its inference and rules."""

from __future__ import annotations

import functools
import itertools
import math
import sys
from typing import Any, Callable, Sequence

import numpy as np

from . import backend as backend_module
from . import dtypes
from .dtypes import DType
from .ir import Aval
from .operator import DTypeError, Operator, ShapeError, UndefinedPrimal, batch_to_front, move_axis
from .plugins import hookimpl
from .tensors import Tensor, functions
from .trace import _busy, bind, is_eager

_constant_cache = backend_module.BoundedCache(4096, 64 * 2**20, lambda t: t.aval.size * t.dtype.bits // 8)
_scalar_runs = backend_module.BoundedCache(4096, 64 * 2**20, lambda e: e[1].aval.size * e[1].dtype.bits // 8)


def constant(value: Any, dtype: DType, shape: tuple[int, ...] = (), device: str | None = None) -> Tensor:
    """A tensor filled with a Python scalar; eager ones are cached, so `x * 2.0` costs one operator."""
    if not is_eager():
        return full(shape, dtypes.wrap(value, dtype), dtype)
    device = device or backend_module.default_device()
    key = (value or repr(value), type(value), dtype, shape, backend_module._state["backend"], device)  # -0.0 != 0.0
    if (tensor := _constant_cache.recent.get(key)) is None:
        array = np.full(shape, dtypes.wrap(value, dtype), dtype=dtype.numpy)
        tensor = _constant_cache.add(key, backend_module.from_numpy, array, Aval(shape, dtype), device)
    return tensor


def as_tensor(value: Any, dtype: DType | None = None) -> Tensor:
    """A Tensor from a Tensor, a Python scalar or nested list, or a NumPy array."""
    if isinstance(value, Tensor):
        return value if dtype is None or value.dtype == dtype else cast(value, dtype)
    if type(value) in (bool, int, float) and (type(value) is not int or -(2**63) <= value < 2**63):  # (not NumPy's)
        return constant(value, dtype or dtypes.infer_python(value))
    return functions["tensor"](value, dtype)  # (which refuses ints beyond int64, as PyTorch: constant wraps them)


def as_float(value: Any) -> Tensor:
    """A Tensor of a floating dtype: integers and bools become float32, as in PyTorch's floating-point functions."""
    x = as_tensor(value)
    return x if x.dtype.is_float else cast(x, dtypes.default_float)


def broadcast_shapes(name: str, *shapes: tuple[int, ...]) -> tuple[int, ...]:
    """The NumPy broadcast of several shapes, or an error that names the operator and the shapes."""
    ndim, result = max((len(s) for s in shapes), default=0), []
    for i in range(ndim):
        sizes = {s[i - ndim + len(s)] for s in shapes if i - ndim + len(s) >= 0} - {1}
        if len(sizes) > 1:
            listed = " and ".join(str(tuple(s)) for s in shapes)
            raise ShapeError(f"slope.{name}: shapes {listed} cannot be broadcast together")
        result.append(sizes.pop() if sizes else 1)
    return tuple(result)


def broadcast_to(x: Tensor, shape: tuple[int, ...]) -> Tensor:
    """The tensor broadcast (NumPy rules) to a shape."""
    return x if x.shape == shape else expand(x, shape)  # expand adds the leading dimensions


HALF_MAX = 65504.0  # float16's largest finite value: a Python number within it fits every float dtype


def coerce(name: str, *values: Any, dtype: DType | None = None, checked: bool | tuple = False) -> list[Tensor]:
    """Promote values to one dtype (PyTorch's result_type) and broadcast them to one shape (checked: numbers must fit
    it; a tuple of dtypes: numbers must fit those and the integer dtypes, as PyTorch's where takes 1e39 into inf)."""
    try:
        dtype = dtype or dtypes.result_type(*values)
    except TypeError as error:  # NumPy's numbers count as Python's, as in PyTorch (converted here, off the common path)
        if not any(isinstance(v, np.generic) for v in values):
            raise DTypeError(f"slope.{name}: {str(error).removeprefix('slope: ')}") from None
        return coerce(name, *[v.item() if isinstance(v, np.generic) else v for v in values], checked=checked)
    shape = broadcast_shapes(name, *[v.shape for v in values if isinstance(v, Tensor)])  # (none: ())
    if checked is True or checked and (dtype.is_int or dtype in checked):  # where, clamp (not +: 1e39 gives inf)
        for v in [v for v in values if type(v) in (int, float) and (dtype.is_int or abs(v) > HALF_MAX)]:
            _python_value(name, v, dtype)
    tensors = [constant(v, dtype, shape) if isinstance(v, (int, float)) else as_tensor(v, dtype) for v in values]
    return [broadcast_to(t, shape) for t in tensors]  # (a number's constant is of that shape already)


def zeros_like(x: Tensor | Aval) -> Tensor:
    """Zeros of a tensor's (or abstract value's) shape and dtype."""
    return full(x.shape, 0, x.dtype)


def ints(name: str, value: Any, what: str, lowest: int | None = None, count: int | None = None) -> tuple[int, ...]:
    """Int arguments of function `name` as a tuple (a lone int is repeated `count` times), each at least `lowest`."""
    values = tuple(value) if isinstance(value, (tuple, list)) else (value,) * (1 if count is None else count)
    if count is not None and len(values) != count:
        raise ValueError(f"slope.{name}: expected {count} values for {what}, got {value!r}")
    if not all(type(v) is int for v in values):  # plain ints (nearly always) need no conversion
        if any(isinstance(v, bool) or not hasattr(v, "__index__") for v in values):
            raise TypeError(f"slope.{name}: {what} must be int(s), got {type(value).__name__} {value!r}")
        values = tuple(v.__index__() for v in values)
    if lowest is not None and min(values, default=lowest) < lowest:
        raise ShapeError(f"slope.{name}: {what} must be {'positive' if lowest else 'non-negative'}, got {values}")
    return values


def normalize_dims(name: str, dim: Any, ndim: int, empty_means_all: bool = False) -> tuple[int, ...]:
    """Dims made non-negative, checked, sorted (None: all, () too if asked; a 0-d tensor's 0 or -1, as PyTorch: ())."""
    if dim is None or (empty_means_all and isinstance(dim, (tuple, list)) and not dim):
        return tuple(range(ndim))
    dims, limit = ints(name, dim, "dim"), max(ndim, 1)
    for d in dims:
        if not -limit <= d < limit:
            raise IndexError(f"slope.{name}: dimension {d} is out of range {-limit} to {limit - 1} ({ndim} dimensions)")
    unique = tuple(sorted({d % limit for d in dims}))
    if len(unique) < len(dims):
        raise ShapeError(f"slope.{name}: dim {dim} names a dimension more than once (tensor of {ndim} dimensions)")
    return unique if ndim else ()


def normalize_dim(name: str, dim: Any, ndim: int, needs_dim: bool = False) -> int:
    """One dim (an int) made non-negative and checked; a 0-d tensor's 0 or -1 is 0, as PyTorch, unless `needs_dim`."""
    if needs_dim and ndim == 0:
        raise IndexError(f"slope.{name}: expected a tensor with at least one dimension, got a 0-d tensor")
    return (normalize_dims(name, ints(name, dim, "dim", count=1), ndim) or (0,))[0]


def shape_args(name: str, shape: tuple, lowest: int | None = None) -> tuple[int, ...]:
    """A shape given as `f(2, 3)` or `f((2, 3))`, as a tuple of ints (each at least `lowest`)."""
    return ints(name, shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape, "sizes", lowest)


class Elementwise(Operator):
    """An operator applied element by element to inputs of one shape: batching just lines the batch dims up."""

    def vmap(self, axis_size: int, args: list, dims: list, **params: Any) -> tuple[list, list]:
        if all(d == dims[0] for d in dims):
            return [bind(self, *args, **params)], [dims[0]]
        return [bind(self, *[batch_to_front(a, d, axis_size) for a, d in zip(args, dims)], **params)], [0]


class Unary(Elementwise):
    """An elementwise operator of one input: `Unary(name, tangent)`, or a subclass for other rules."""

    allowed = "float"  # "float", "integer" (ints and bools) or "any"
    tangent: Callable | None = None  # `tangent(t, x, y)`: y's tangent from x's tangent t, x and y = op(x); None: 0

    def __init__(self, name: str = "", tangent: Callable | None = None, allowed: str = "", doc: str = ""):
        super().__init__(name, doc)
        self.tangent, self.allowed = tangent or self.tangent, allowed or self.allowed

    def __call__(self, x: Any) -> Tensor:
        return bind(self, as_float(x) if self.allowed == "float" else as_tensor(x))

    def infer(self, x: Aval) -> Aval:
        if self.allowed == "float" and not x.dtype.is_float:
            raise self.dtype_error(f"expected a floating-point tensor, got {x.dtype.name} of shape {x.shape}")
        if self.allowed == "integer" and x.dtype.is_float:
            raise self.dtype_error(f"expected an integer or bool tensor, got {x.dtype.name} of shape {x.shape}")
        return x

    def jvp(self, primals: list, tangents: list) -> tuple[list, list]:
        y = bind(self, primals[0])
        return [y], [self.tangent(tangents[0], primals[0], y) if self.tangent else None]  # (None: a zero tangent)


class Cos(Unary):
    """Cosine; an operator because the procedure, sin(x + pi/2), loses accuracy as |x| grows."""

    tangent = staticmethod(lambda t, x, y: t * -sin(x))
    procedure = staticmethod(lambda x: sin(x + math.pi / 2))


class Tanh(Unary):
    """Hyperbolic tangent; an operator (with a procedure) because backends have accurate kernels for it."""

    tangent = staticmethod(lambda t, x, y: t * (1.0 - y * y))

    def procedure(self, x: Tensor) -> Tensor:
        e = exp(mul(functions["abs"](x), constant(-2.0, x.dtype, x.shape)))
        return functions["sign"](x) * (1.0 - e) / (1.0 + e)


class Rounding(Unary):
    """floor, ceil and round (to nearest, ties to even); integers pass as they are; zero derivative."""

    def __call__(self, x: Any) -> Tensor:
        x = as_tensor(x)
        return x if x.dtype.is_int else bind(self, x)  # bools are refused by infer, as in PyTorch


class Cast(Elementwise):
    """Conversion to another dtype (linear: only float-to-float casts carry tangents, the others give integers)."""

    linear_inputs = (0,)

    def __call__(self, x: Any, dtype: Any) -> Tensor:
        x, dtype = as_tensor(x), dtypes.as_dtype(dtype)
        return x if x.dtype == dtype else bind(self, x, dtype=dtype)

    def infer(self, x: Aval, *, dtype: DType) -> Aval:
        return Aval(x.shape, dtype)

    def transpose(self, cotangents: list, x: Any, *, dtype: DType) -> list:
        return [cast(cotangents[0], x.aval.dtype)]


_SCALAR_KINDS = {float: ("float",), int: ("int", "uint")}  # a Python scalar of this type takes a tensor's dtype
_HALVES, _IN_FLOAT32 = (dtypes.float16, dtypes.bfloat16), ("mul", "div")


def _half_and_number(x: Any, y: Any, number_first: bool = True) -> DType | None:
    """x's half dtype where x (float16/bfloat16) with a number or 0-d tensor y (or a number x before it) is computed in
    float32 and rounded once, as PyTorch (x / 65535.0 is not x / inf); a 0-d tensor before x is rounded to it first."""
    if isinstance(x, Tensor) and x.dtype in _HALVES and (isinstance(y, (int, float, np.number)) or
                                                         isinstance(y, Tensor) and x.ndim > y.ndim == 0):  # fmt: skip
        return x.dtype
    first = number_first and isinstance(x, (int, float, np.number))
    return y.dtype if first and isinstance(y, Tensor) and y.dtype in _HALVES else None


class Binary(Elementwise):
    """An elementwise operator of two inputs of one shape and dtype (callers get NumPy broadcasting)."""

    allowed = "number"  # "number", "integer" (ints and bools) or "any"
    result: DType | None = None  # fixed output dtype (bool for comparisons)

    def __call__(self, x: Any, y: Any) -> Tensor:
        if type(x) is Tensor:  # the eager fast paths: `x op x`, `x op 2.0` and `2.0 op x`
            if type(y) is Tensor and x.aval == y.aval:
                return bind(self, x, y)
            if x.aval.dtype.kind in _SCALAR_KINDS.get(type(y), ()):
                return self.with_scalar(x, y, True)
        elif type(y) is Tensor and y.aval.dtype.kind in _SCALAR_KINDS.get(type(x), ()):
            return self.with_scalar(y, x, False)
        if self.name == "sub" and any(type(v) is bool or getattr(v, "dtype", 0) == dtypes.bool_ for v in (x, y)):
            raise self.dtype_error("cannot subtract bools (as in PyTorch); use ^ (logical_xor) or cast them first")
        if self.name in _IN_FLOAT32 and (half := _half_and_number(x, y)):
            x, y = (cast(v, dtypes.float32) if isinstance(v, Tensor) else v for v in (x, y))
            return cast(Binary.__call__(self, x, y), half)
        return bind(self, *coerce(self.name, x, y))

    def with_scalar(self, x: Tensor, value: Any, first: bool) -> Tensor:
        """`x op value` (first) or `value op x` in x's dtype; eagerly, one lookup finds the scalar's tensor and program."""
        key = (self, value or repr(value), type(value), x.aval, x.backend, x.device)  # (-0.0: its repr; either order)
        if not _busy and x.backend is backend_module._state["backend"] and (hit := _scalar_runs.recent.get(key)):
            buffers = [x.buffer, hit[1].buffer] if first else [hit[1].buffer, x.buffer]  # (hit: run, scalar, aval)
            return Tensor(hit[0](buffers)[0], hit[2], x.backend, x.device)
        if self.name in _IN_FLOAT32 and x.aval.dtype in _HALVES:  # (as _half_and_number says)
            return cast(self.with_scalar(cast(x, dtypes.float32), value, first), x.aval.dtype)
        scalar = constant(value, x.aval.dtype, x.aval.shape, x.device)  # (of x's aval: eager_run's key below)
        out = bind(self, x, scalar) if first else bind(self, scalar, x)
        eager = not _busy and x.backend is scalar.backend is backend_module._state["backend"]  # (no move in eager_run)
        if eager and (program := backend_module._compiled.get((self, (), (x.aval, x.aval), x.backend, x.device))):
            _scalar_runs.add(key, tuple, (program.run, scalar, out.aval))  # (tuple(entry): the entry itself)
        return out

    def infer(self, x: Aval, y: Aval) -> Aval:
        if x.shape != y.shape:
            raise self.shape_error(f"expected inputs of one shape, got {x.shape} and {y.shape}")
        if x.dtype != y.dtype:
            raise self.dtype_error(f"expected inputs of one dtype, got {x.dtype.name} and {y.dtype.name}")
        if self.allowed == "number" and x.dtype == dtypes.bool_:
            raise self.dtype_error(f"expected numbers, got bool tensors of shape {x.shape}")
        if self.allowed == "integer" and x.dtype.is_float:
            raise self.dtype_error(f"expected integer or bool tensors, got {x.dtype.name} of shape {x.shape}")
        return Aval(x.shape, self.result or x.dtype)


class Add(Binary):
    """x + y, elementwise (PyTorch's broadcasting and type promotion; bool + bool is logical or)."""

    allowed = "any"  # bool + bool is logical or, as in PyTorch
    linear_inputs = (0, 1)

    def transpose(self, cotangents: list, x: Any, y: Any) -> list:
        return [cotangents[0] if isinstance(a, UndefinedPrimal) else None for a in (x, y)]


class Sub(Binary):
    """x - y, elementwise (bools are refused, as in PyTorch)."""

    linear_inputs = (0, 1)

    def transpose(self, cotangents: list, x: Any, y: Any) -> list:
        ct = cotangents[0]
        return [ct if isinstance(x, UndefinedPrimal) else None, -ct if isinstance(y, UndefinedPrimal) else None]


class Mul(Binary):
    """x * y, elementwise (bool * bool is logical and)."""

    allowed = "any"  # bool * bool is logical and, as in PyTorch
    linear_inputs = "each"

    def transpose(self, cotangents: list, x: Any, y: Any) -> list:
        return [mul(cotangents[0], y), None] if isinstance(x, UndefinedPrimal) else [None, mul(x, cotangents[0])]


class Div(Binary):
    """Division; the operator divides integers with truncation toward zero (as C, lax.div), `slope.div` as PyTorch."""

    symbolic_zeros = True  # x / c: t / c, without the NaN that out * 0 gives where out is inf

    def __call__(self, x: Any, y: Any, rounding_mode: str | None = None) -> Tensor:
        """x / y as PyTorch's div: true division (of integers too), or rounded toward zero ("trunc") or down ("floor")."""
        if rounding_mode == "floor":
            return functions["floor_divide"](x, y)
        if rounding_mode not in (None, "trunc"):
            raise ValueError(f"slope.div: rounding_mode must be None, 'trunc' or 'floor', got {rounding_mode!r}")
        if rounding_mode and (half := _half_and_number(x, y, number_first=False)):  # truncated in float32 (PyTorch)
            return cast(self(*(cast(v, dtypes.float32) if isinstance(v, Tensor) else v for v in (x, y)), "trunc"), half)
        if rounding_mode is None and not (isinstance(x, Tensor) and x.aval.dtype.is_float):  # integers as floats (each:
            x, y = (float(dtypes.wrap(v, dtypes.float64)) if isinstance(v, (int, np.integer)) else v for v in (x, y))
            if not any(type(v) is float or isinstance(v, Tensor) and v.dtype.is_float for v in (x, y)):  # not to int8
                x, y = as_float(x), as_float(y)  # first: int8 x / a 0-d int64 200 was / -56; uint8 x / -1 is -x)
        out = self.checked(x, y)
        return where(out < 0, ceil(out), floor(out)) if rounding_mode and out.dtype.is_float else out  # (trunc)

    def checked(self, x: Any, y: Any, name: str = "div") -> Tensor:  # name: the function that asked (//, %, fmod)
        """The operator on x and y promoted and broadcast; integer division by a concrete zero raises."""
        out = Binary.__call__(self, x, y)  # integer division by a concrete zero raises, as PyTorch (a traced one can't)
        if not out.dtype.is_float and (type(y) is Tensor or not isinstance(y, Tensor)) and out.numel():  # (y concrete)
            if not np.all(dtypes.wrap(y.numpy() if type(y) is Tensor else y, out.dtype)):  # (256 is int8's 0)
                raise ZeroDivisionError(f"slope.{name}: integer division by zero")
        return out

    def jvp(self, primals: list, tangents: list) -> tuple[list, list]:
        (x, y), (tx, ty) = primals, tangents
        out = div(x, y)  # (a constant y: no out * 0 term, NaN where out is inf)
        tangent = tx if ty is None else -mul(out, ty) if tx is None else sub(tx, mul(out, ty))
        return [out], [div(tangent, y)]

    def transpose(self, cotangents: list, x: Any, y: Any) -> list:
        return [div(cotangents[0], y), None]


class Pow(Binary):
    """x ** y; integer powers wrap around, and a negative exponent gives 0 unless |x| is 1 (as in PyTorch)."""

    symbolic_zeros = True  # d/dy is NaN where x < 0: a y that is not differentiated must not bring it into d/dx

    def __call__(self, x: Any, y: Any) -> Tensor:
        if isinstance(x, Tensor) and isinstance(y, (int, float)):  # (an int exponent must fit x's dtype, as PyTorch)
            if type(y) is int and not x.dtype.is_float and (y < 0 or _python_value(self.name, y, x.dtype) is None):
                raise self.dtype_error(f"Integers to negative integer powers are not allowed ({x.dtype.name} ** {y})")
            if x.dtype in (dtypes.float16, dtypes.bfloat16) and abs(y) > HALF_MAX:  # PyTorch: y must fit halves
                _python_value(self.name, y, x.dtype)
            if y in (0.5, -0.5) and x.dtype.is_float:  # PyTorch's sqrt and rsqrt: (-inf) ** 0.5 NaN, (-0.0) ** 0.5 -0.0
                return functions["sqrt" if y > 0 else "rsqrt"](x)
            products = range(3 if x.dtype.bits < 32 else 4) if x.dtype.is_float else range(5)  # that round once
            if y in products and dtypes.result_type(x, y) == x.dtype:  # as products: cheap (y may be inf)
                return functools.reduce(mul, [x] * (int(y) - 1), x) if y else full(x.shape, 1, x.dtype)
            if isinstance(y, float) and x.dtype.bits < 64 and x.dtype.is_float and float(dtypes.wrap(y, x.dtype)) != y:
                return cast(power(cast(x, dtypes.float64), y), x.dtype)  # (PyTorch's y is exact: not 2.2000000477)
        return super().__call__(x, y)

    def jvp(self, primals: list, tangents: list) -> tuple[list, list]:
        (x, y), (tx, ty) = primals, tangents
        out, zero, one = power(x, y), zeros_like(x), constant(1, x.dtype, x.shape)
        terms = [] if tx is None else [mul(tx, where(equal(y, zero), zero, mul(y, power(x, sub(y, one)))))]
        if ty is not None:  # PyTorch's rules: d/dx 0 where y == 0 (x 0 or inf too), d/dy 0 where x == 0 <= y
            terms.append(mul(ty, where(bitwise_and(equal(x, zero), greater_equal(y, zero)), zero, mul(out, log(x)))))
        return [out], [sum(terms[1:], terms[0])]


class Fmod(Binary):
    """The remainder of x / y rounded toward zero, with x's sign (C's fmod, PyTorch's torch.fmod)."""

    __call__ = functools.partialmethod(Div.checked, name="fmod")

    symbolic_zeros = True  # fmod(x, c): tx alone (its d/dy term was 0 * inf = NaN where x / c overflows)

    def jvp(self, primals: list, tangents: list) -> tuple[list, list]:  # d/dy is -trunc(x / y), x / y rounded (PyTorch)
        (x, y), (tx, ty) = primals, tangents
        dy = None if ty is None else mul(ty, sub(quotient := div(x, y), fmod(quotient, 1.0)))
        return [fmod(x, y)], [tx if dy is None else sub(zeros_like(x) if tx is None else tx, dy)]


class Maximum(Binary):
    """The elementwise maximum of x and y (NaN where either is NaN, as in PyTorch)."""

    allowed = "any"  # bools too (logical or), as in PyTorch

    def jvp(self, primals: list, tangents: list) -> tuple[list, list]:
        (x, y), (tx, ty) = primals, tangents
        half = (tx + ty) * 0.5  # ties share the tangent; a NaN (no order) takes both, as in PyTorch
        return [maximum(x, y)], [where(greater(x, y), tx, where(less(x, y), ty, where(equal(x, y), half, tx + ty)))]


class Compare(Binary):
    result, allowed = dtypes.bool_, "any"

    def __init__(self, name: str, symbol: str):  # (the symbol: Python's operator, for the docstring)
        super().__init__(name, f"x {symbol} y, elementwise, as a bool tensor (False where either is NaN).")


class CompareOrEqual(Compare):
    """less_equal and greater_equal: the strict comparison or equality (not `not greater`: NaN compares false)."""

    def procedure(self, x: Tensor, y: Tensor) -> Tensor:
        return bitwise_or(functions[self.name.removesuffix("_equal")](x, y), equal(x, y))


class Bitwise(Binary):
    allowed = "integer"

    def __init__(self, kind: str, symbol: str):  # Bitwise("and", "&") is the operator bitwise_and
        super().__init__(f"bitwise_{kind}", f"Bitwise {kind} of integers, logical {kind} of bools (`x {symbol} y`).")


class Where(Elementwise):
    """`where(condition, x, y)`: x where the condition holds, else y."""

    linear_inputs = (1, 2)

    def __call__(self, condition: Any, x: Any, y: Any) -> Tensor:
        condition, (x, y) = as_tensor(condition), coerce(self.name, x, y, checked=(dtypes.float32,))  # (PyTorch's)
        shape = broadcast_shapes(self.name, condition.shape, x.shape)
        return bind(self, broadcast_to(condition, shape), broadcast_to(x, shape), broadcast_to(y, shape))

    def infer(self, condition: Aval, x: Aval, y: Aval) -> Aval:
        if condition.dtype != dtypes.bool_:
            raise self.dtype_error(f"expected a bool condition, got {condition.dtype.name} of shape {condition.shape}")
        if not condition.shape == x.shape == y.shape:
            raise self.shape_error(f"expected inputs of one shape, got {condition.shape}, {x.shape} and {y.shape}")
        if x.dtype != y.dtype:
            raise self.dtype_error(f"expected x and y of one dtype, got {x.dtype.name} and {y.dtype.name}")
        return x

    def transpose(self, cotangents: list, c: Any, x: Any, y: Any) -> list:
        ct, zeros = cotangents[0], zeros_like(cotangents[0])
        x_ct = where(c, ct, zeros) if isinstance(x, UndefinedPrimal) else None
        y_ct = where(c, zeros, ct) if isinstance(y, UndefinedPrimal) else None
        return [None, x_ct, y_ct]


class Reduce(Operator):
    """A reduction over some dimensions."""

    def __call__(self, x: Any, dim: Any = None, keepdim: bool = False) -> Tensor:
        x = as_tensor(x)
        return bind(self, x, dim=normalize_dims(self.name, dim, x.ndim, empty_means_all=True), keepdim=bool(keepdim))

    def infer(self, x: Aval, *, dim: tuple[int, ...], keepdim: bool) -> Aval:
        if any(not 0 <= d < max(x.ndim, 1) for d in dim):
            raise self.shape_error(f"dimensions {dim} out of range for shape {x.shape}")
        return Aval(tuple(1 if i in dim else s for i, s in enumerate(x.shape) if keepdim or i not in dim), x.dtype)

    def vmap(self, axis_size: int, args: list, dims: list, *, dim: tuple, **params: Any) -> tuple[list, list]:
        return [bind(self, move_axis(args[0], dims[0], 0), dim=tuple(d + 1 for d in dim), **params)], [0]  # (Flip's)


class Sum(Reduce):
    """The sum over dims (all by default); integers and bools are summed as int64, as in PyTorch."""

    linear_inputs = (0,)

    def __call__(self, x: Any, dim: Any = None, keepdim: bool = False, dtype: Any = None) -> Tensor:
        x = as_tensor(x)
        x = cast(x, dtype if dtype is not None else x.dtype if x.dtype.is_float else dtypes.int64)  # as PyTorch
        return super().__call__(x, dim, keepdim)

    def transpose(self, cotangents: list, x: Any, *, dim: tuple, keepdim: bool) -> list:
        kept = self.infer(x.aval, dim=dim, keepdim=True).shape  # x's shape with size 1 where summed
        return [expand(reshape(cotangents[0], kept), x.aval.shape)]


class Max(Reduce):
    """The largest values over dims (all by default; values only, no indices); `max(x, tensor)` is maximum."""

    def __call__(self, x: Any, dim: Any = None, keepdim: bool = False) -> Tensor:  # (a tensor dim: max(x, other))
        return functions["maximum"](x, dim) if isinstance(dim, Tensor) else super().__call__(x, dim, keepdim)

    def infer(self, x: Aval, *, dim: tuple[int, ...], keepdim: bool) -> Aval:
        if any(x.shape[d] == 0 for d in dim):
            raise self.shape_error(f"cannot reduce over an empty dimension (shape {x.shape}, dim {dim})")
        return super().infer(x, dim=dim, keepdim=keepdim)

    def jvp(self, primals: list, tangents: list, *, dim: tuple, keepdim: bool) -> tuple[list, list]:
        x, t = primals[0], tangents[0]
        out = bind(self, x, dim=dim, keepdim=True)
        hit = equal(x, expand(out, x.shape))  # ties share the tangent equally; so do the NaNs of a NaN maximum
        mask = cast(bitwise_or(hit, functions["isnan"](x)) if x.dtype.is_float else hit, x.dtype)
        tangent = div(bind(sum_, mul(t, mask), dim=dim, keepdim=keepdim), bind(sum_, mask, dim=dim, keepdim=keepdim))
        return [out if keepdim else reshape(out, tangent.shape)], [tangent]


class Reshape(Operator):
    """The tensor with a new shape of as many elements (one size may be -1: the rest)."""

    linear_inputs = (0,)

    def __call__(self, x: Any, *shape: Any) -> Tensor:
        x, shape = as_tensor(x), shape_args(self.name, shape)
        if shape.count(-1) > 1:
            raise self.shape_error(f"only one dimension can be -1, got {shape}")
        if -1 in shape:
            known = math.prod(s for s in shape if s != -1)
            if known and x.numel() % known == 0:  # otherwise infer reports the shape, -1 and all
                shape = tuple(x.numel() // known if s == -1 else s for s in shape)
        return x if shape == x.shape else bind(self, x, shape=shape)

    def infer(self, x: Aval, *, shape: tuple[int, ...]) -> Aval:
        if any(s < 0 for s in shape) or math.prod(shape) != x.size:
            raise self.shape_error(f"cannot reshape a tensor of shape {x.shape} ({x.size} elements) into shape {shape}")
        return Aval(shape, x.dtype)

    def transpose(self, cotangents: list, x: Any, *, shape: tuple) -> list:
        return [reshape(cotangents[0], x.aval.shape)]

    def vmap(self, axis_size: int, args: list, dims: list, *, shape: tuple) -> tuple[list, list]:
        return [bind(self, move_axis(args[0], dims[0], 0), shape=(axis_size, *shape))], [0]  # also Expand's rule


class Expand(Operator):
    """Broadcast dimensions of size 1 to a larger size (new leading dimensions are added first)."""

    linear_inputs = (0,)

    def __call__(self, x: Any, *shape: Any) -> Tensor:
        x, shape = as_tensor(x), shape_args(self.name, shape)
        if len(shape) < x.ndim:
            raise self.shape_error(f"cannot expand a tensor of shape {x.shape} to fewer dimensions {shape}")
        lead = len(shape) - x.ndim
        shape = tuple(x.shape[i - lead] if s == -1 and i >= lead else s for i, s in enumerate(shape))
        x = reshape(x, (1,) * lead + x.shape) if lead else x
        return x if shape == x.shape else bind(self, x, shape=shape)

    def infer(self, x: Aval, *, shape: tuple[int, ...]) -> Aval:
        if len(shape) != x.ndim or any(a != b and a != 1 for a, b in zip(x.shape, shape)) or min(shape, default=0) < 0:
            raise self.shape_error(f"cannot expand a tensor of shape {x.shape} to shape {shape}")
        return Aval(shape, x.dtype)

    def transpose(self, cotangents: list, x: Any, *, shape: tuple) -> list:
        dims = tuple(i for i, (a, b) in enumerate(zip(x.aval.shape, shape)) if a != b)
        return [sum_(cotangents[0], dims, keepdim=True) if dims else cotangents[0]]

    vmap = Reshape.vmap


class Permute(Operator):
    """The tensor with its dimensions reordered: dimension i is x's dimension perm[i]."""

    linear_inputs = (0,)

    def __call__(self, x: Any, *perm: Any) -> Tensor:
        x, perm = as_tensor(x), shape_args(self.name, perm)
        in_range = len(perm) == x.ndim  # then an out-of-range dim is an IndexError, as in PyTorch
        normalized = tuple(normalize_dim(self.name, p, x.ndim) for p in perm) if in_range else perm
        if not in_range or sorted(normalized) != list(range(x.ndim)):
            raise self.shape_error(f"{perm} is not a permutation of the {x.ndim} dimensions of shape {x.shape}")
        return x if normalized == tuple(range(x.ndim)) else bind(self, x, perm=normalized)

    def infer(self, x: Aval, *, perm: tuple[int, ...]) -> Aval:
        if sorted(perm) != list(range(x.ndim)):
            raise self.shape_error(f"{perm} is not a permutation of the dimensions of shape {x.shape}")
        return Aval(tuple(x.shape[p] for p in perm), x.dtype)

    def transpose(self, cotangents: list, x: Any, *, perm: tuple) -> list:
        return [permute(cotangents[0], tuple(np.argsort(perm).tolist()))]

    def vmap(self, axis_size: int, args: list, dims: list, *, perm: tuple) -> tuple[list, list]:
        return [permute(move_axis(args[0], dims[0], 0), (0, *(p + 1 for p in perm)))], [0]


class Slice(Operator):
    """`x[start:stop:step]` in every dimension, with 0 <= start <= stop <= size and step >= 1."""

    linear_inputs = (0,)

    def __call__(self, x: Any, start: Sequence[int], stop: Sequence[int], step: Sequence[int] | None = None) -> Tensor:
        x = as_tensor(x)
        return bind(self, x, start=tuple(start), stop=tuple(stop), step=(1,) * x.ndim if step is None else tuple(step))

    def infer(self, x: Aval, *, start: tuple, stop: tuple, step: tuple) -> Aval:
        if not len(start) == len(stop) == len(step) == x.ndim:
            raise self.shape_error(f"expected start/stop/step of length {x.ndim} for shape {x.shape}")
        for d, (a, b, s, n) in enumerate(zip(start, stop, step, x.shape)):
            if not (0 <= a <= b <= n and s >= 1):
                raise self.shape_error(f"bad slice {a}:{b}:{s} of dimension {d} (size {n}) of shape {x.shape}")
        return Aval(tuple(-(-(b - a) // s) for a, b, s in zip(start, stop, step)), x.dtype)

    def transpose(self, cotangents: list, x: Any, *, start: tuple, stop: tuple, step: tuple) -> list:
        return [_strided_place(cotangents[0], step, start, x.aval.shape)]

    def vmap(self, axis_size: int, args: list, dims: list, *, start: tuple, stop: tuple, step: tuple) -> tuple:
        return [slice_(move_axis(args[0], dims[0], 0), (0, *start), (axis_size, *stop), (1, *step))], [0]


def slice_along(x: Tensor, dim: int, start: int, stop: int) -> Tensor:
    """`x[start:stop]` along one dimension."""
    begin, end = zip(*((start, stop) if d == dim else (0, n) for d, n in enumerate(x.shape)))
    return slice_(x, begin, end)


def _strided_place(x: Tensor, step: Sequence[int], lo: Sequence[int], shape: tuple[int, ...]) -> Tensor:
    """Zeros of `shape` holding x from offset `lo` every `step` elements, cut to fit (a strided slice's transpose)."""
    for axis, factor in enumerate(step):
        if factor > 1 and x.shape[axis] > 1:  # factor - 1 zeros after each element (one element needs none)
            size, before, after = x.shape[axis], x.shape[:axis], x.shape[axis + 1 :]
            x = reshape(x, (*before, size, 1, *after))
            x = pad(x, lo=(0,) * x.ndim, hi=tuple(factor - 1 if i == axis + 1 else 0 for i in range(x.ndim)))
            x = reshape(x, (*before, size * factor, *after))
    return pad(x, lo=tuple(lo), hi=tuple(n - a - c for n, a, c in zip(shape, lo, x.shape)))  # negative amounts crop


class Pad(Operator):
    """Constant padding: `lo[i]` values before and `hi[i]` after dimension i (negative amounts crop)."""

    def __call__(self, x: Any, pad: Sequence[int] | None = None, value: Any = 0, *, lo: Any = None, hi: Any = None):
        x = as_tensor(x)
        if pad is not None:  # PyTorch order: (last_lo, last_hi, second_last_lo, ...)
            if not isinstance(pad, (tuple, list)):
                raise TypeError(f"slope.pad: pad must be a tuple of ints (as in PyTorch), got {type(pad).__name__}")
            if len(pad) % 2 or len(pad) // 2 > x.ndim:
                raise self.shape_error(f"pad {tuple(pad)} must have an even length of at most {2 * x.ndim}")
            unpadded = (0,) * (x.ndim - len(pad) // 2)
            lo, hi = unpadded + tuple(pad[-2::-2]), unpadded + tuple(pad[::-2])
        lo, hi = ints(self.name, lo, "lo"), ints(self.name, hi, "hi")
        if len(lo) != x.ndim or len(hi) != x.ndim:
            raise self.shape_error(f"expected lo/hi of length {x.ndim} for shape {x.shape}, got {lo} and {hi}")
        if any(a < 0 for a in lo + hi):
            if any(n + min(a, 0) + min(b, 0) < 0 for n, a, b in zip(x.shape, lo, hi)):
                raise self.shape_error(f"lo={lo}, hi={hi} crop more than all of shape {x.shape}")
            x = slice_(x, [max(-a, 0) for a in lo], [n - max(-b, 0) for n, b in zip(x.shape, hi)])
            lo, hi = tuple(max(a, 0) for a in lo), tuple(max(b, 0) for b in hi)
        if isinstance(value, Tensor) and value.buffer is None and value.ndim == 0 and any(lo + hi):  # as JAX's lax.pad
            border = self(full(x.shape, False, dtypes.bool_), lo=lo, hi=hi, value=True)  # (its gradient: the count)
            return where(border, cast(value, x.dtype), self(x, lo=lo, hi=hi))
        if not any(lo + hi):  # (as PyTorch: the fill value is not checked then)
            return x
        return bind(self, x, lo=lo, hi=hi, value=_python_value(self.name, value, x.dtype, wraps=False))

    def infer(self, x: Aval, *, lo: tuple, hi: tuple, value: Any) -> Aval:
        if len(lo) != x.ndim or len(hi) != x.ndim or any(a < 0 for a in lo + hi):
            raise self.shape_error(f"bad padding lo={lo}, hi={hi} for shape {x.shape}")
        return Aval(tuple(n + a + b for n, a, b in zip(x.shape, lo, hi)), x.dtype)

    def jvp(self, primals: list, tangents: list, *, lo: tuple, hi: tuple, value: Any) -> tuple[list, list]:
        return [pad(primals[0], lo=lo, hi=hi, value=value)], [pad(tangents[0], lo=lo, hi=hi)]

    def transpose(self, cotangents: list, x: Any, *, lo: tuple, hi: tuple, value: Any) -> list:
        return [slice_(cotangents[0], lo, tuple(a + n for a, n in zip(lo, x.aval.shape)))]

    def vmap(self, axis_size: int, args: list, dims: list, *, lo: tuple, hi: tuple, value: Any) -> tuple:
        return [pad(move_axis(args[0], dims[0], 0), lo=(0, *lo), hi=(0, *hi), value=value)], [0]


class Flip(Operator):
    """The tensor with the order of its elements reversed along the given dims."""

    linear_inputs = (0,)

    def __call__(self, x: Any, *dims: Any) -> Tensor:  # flip(x, (0, 1)) or x.flip(0, 1), as PyTorch
        if not dims:  # (x.flip() flipped nothing; NumPy flips every axis, PyTorch wants dims)
            raise TypeError("slope.flip: expected the dims to flip, such as x.flip(0) or slope.flip(x, (0, 1))")
        x = as_tensor(x)
        return bind(self, x, dim=normalize_dims(self.name, dims[0] if len(dims) == 1 else dims, x.ndim))

    def infer(self, x: Aval, *, dim: tuple) -> Aval:
        return x

    def transpose(self, cotangents: list, x: Any, *, dim: tuple) -> list:
        return [bind(self, cotangents[0], dim=dim)]

    vmap = Reduce.vmap


class Cat(Operator):
    """Tensors joined along an existing dimension (of one shape but in that dimension)."""

    linear_inputs = "all"

    def __call__(self, tensors: Sequence[Any], dim: int = 0) -> Tensor:
        if not isinstance(tensors, (tuple, list)) or not tensors:
            raise self.shape_error(f"expected a non-empty sequence of tensors, got {type(tensors).__name__}")
        tensors = [as_tensor(t) for t in tensors]
        dtype = functools.reduce(dtypes.promote, [t.dtype for t in tensors])
        kept = [t for t in tensors if t.shape != (0,)] or tensors[:1]  # PyTorch skips 1-d empty tensors (legacy rule)
        tensors = [cast(t, dtype) for t in kept]
        if tensors[0].ndim == 0:
            raise self.shape_error("0-d tensors cannot be concatenated (as in PyTorch); use slope.stack")
        dim = normalize_dim(self.name, dim, tensors[0].ndim, needs_dim=True)
        return tensors[0] if len(tensors) == 1 else bind(self, *tensors, dim=dim)

    def infer(self, *xs: Aval, dim: int) -> Aval:
        first = xs[0]
        for x in xs[1:]:
            if x.dtype != first.dtype:
                raise self.dtype_error(f"expected tensors of one dtype, got {first.dtype.name} and {x.dtype.name}")
            if x.ndim != first.ndim or any(a != b for i, (a, b) in enumerate(zip(x.shape, first.shape)) if i != dim):
                raise self.shape_error(f"shapes {[a.shape for a in xs]} must match except in dimension {dim}")
        return Aval(first.shape[:dim] + (sum(x.shape[dim] for x in xs),) + first.shape[dim + 1 :], first.dtype)

    def transpose(self, cotangents: list, *xs: Any, dim: int) -> list:
        offsets = [0, *itertools.accumulate(x.aval.shape[dim] for x in xs)]
        pieces = zip(xs, offsets, offsets[1:])
        return [slice_along(cotangents[0], dim, a, b) if isinstance(x, UndefinedPrimal) else None for x, a, b in pieces]

    def vmap(self, axis_size: int, args: list, dims: list, *, dim: int) -> tuple[list, list]:
        return [bind(self, *[batch_to_front(a, d, axis_size) for a, d in zip(args, dims)], dim=dim + 1)], [0]


class _Value(float):
    """A fill value (full's, pad's) that eager_run's cache key tells from the other zero and finds again when NaN."""

    def __hash__(self) -> int:
        return hash(repr(self))  # (a float NaN's hash is its id)

    def __eq__(self, other: Any) -> bool:
        return repr(self) == repr(other)


def _python_value(name: str, value: Any, dtype: DType, wraps: bool = True) -> Any:  # wraps: uint8's -2 is 254
    value = value.item() if isinstance(value, (Tensor, np.generic)) else value  # (np.float32(2**31) fits no int32)
    if isinstance(value, str) or not np.isscalar(value):
        raise TypeError(f"slope.{name}: expected a number to fill with, got {type(value).__name__} {value!r}")
    if dtype == dtypes.bool_:
        return bool(value)
    numpy_dtype = dtype.numpy  # first: for bfloat16 it loads ml_dtypes, whose finfo knows bfloat16 (NumPy's may not)
    limits = (sys.modules.get("ml_dtypes", np).finfo if dtype.is_float else np.iinfo)(numpy_dtype)
    high = float(limits.max) if dtype.is_float else int(limits.max)
    symmetric = dtype.is_float or wraps and dtype.kind == "uint" and isinstance(value, (int, np.integer))  # (full's)
    low = -high if symmetric else int(limits.min)
    if not (low <= value <= high or dtype.is_float and not math.isfinite(value)):  # PyTorch's ranges (NaN: not ints)
        raise ValueError(f"slope.{name}: {value!r} does not fit {dtype.name}")
    return _Value(dtypes.wrap(value, dtype)) if dtype.is_float else int(dtypes.wrap(int(value), dtype))


class Full(Operator):
    """A tensor of a shape filled with one value (its dtype by default from the value)."""

    def __call__(self, shape: Any, value: Any, dtype: Any = None) -> Tensor:
        shape = shape_args(self.name, (shape,), 0)
        if isinstance(value, Tensor) and value.buffer is None:  # traced (jit, grad): broadcast, in its kind's dtype
            kind = float if value.dtype.is_float else int if value.dtype.is_int else bool  # (as_dtype maps the types)
            return broadcast_to(cast(value, dtypes.as_dtype(dtype or kind)), shape)
        dtype = dtypes.as_dtype(dtype) if dtype is not None else dtypes.infer_python(value, self.name)
        return bind(self, shape=shape, value=_python_value(self.name, value, dtype), dtype=dtype)

    def infer(self, *, shape: tuple, value: Any, dtype: DType) -> Aval:
        return Aval(shape, dtype)  # __call__ checked the shape


class Arange(Operator):
    """The values start, start + step, ... up to but not including stop (`arange(stop)` counts from 0)."""

    def __call__(self, start: Any, stop: Any = None, step: Any = 1, dtype: Any = None) -> Tensor:
        start, stop = (0, start) if stop is None else (start, stop)
        start, stop, step = values = [v.item() if getattr(v, "ndim", 1) == 0 else v for v in (start, stop, step)]
        default = dtypes.default_int if all(isinstance(v, (int, np.integer)) for v in values) else dtypes.default_float
        dtype = default if dtype is None else dtypes.as_dtype(dtype)
        numbers = all(isinstance(v, (int, float, np.number)) and not math.isnan(v) for v in values)
        fits = dtype.is_float or dtype.is_int and all(float(v).is_integer() for v in values)  # no bool
        if not numbers or math.isinf(start) or math.isinf(stop) or step == 0 or (stop - start) * step < 0 or not fits:
            raise self.shape_error(f"cannot count from {start!r} to {stop!r} in steps of {step!r} in {dtype.name}")
        if isinstance(start, float) and math.isfinite(step):  # PyTorch's first value: start + 0 * step (-0.0 up: +0.0)
            start = _Value(start + 0.0 * step)  # (told from the other zero in the cache)
        return bind(self, start=start, stop=stop, step=step, dtype=dtype)

    def infer(self, *, start: Any, stop: Any, step: Any, dtype: DType) -> Aval:
        return Aval((max(0, math.ceil((stop - start) / step)),), dtype)


class RandomSample(Operator):
    """random_uniform ([0, 1)) and random_normal (standard normal) samples from a Threefry key, the same on all backends."""

    def __call__(self, key: Tensor, shape: Any, dtype: Any = None) -> Tensor:
        shape = shape_args(self.name, (shape,), 0)
        return bind(self, key, shape=shape, dtype=dtypes.as_dtype(dtype or dtypes.default_float))

    def infer(self, key: Aval, *, shape: tuple, dtype: DType) -> Aval:
        if key.shape != (2,) or key.dtype != dtypes.int64:
            raise self.dtype_error(f"expected a key (int64 of shape (2,)), got {key}; make one with slope.random.key")
        if not dtype.is_float:
            raise self.dtype_error(f"expected a floating dtype, got {dtype.name}")
        return Aval(shape, dtype)

    def procedure(self, key: Tensor, *, shape: tuple, dtype: DType) -> Tensor:
        from .random import normal_procedure, uniform_bits_procedure  # slope.random imports this module

        return (normal_procedure if self.name == "random_normal" else uniform_bits_procedure)(key, shape, dtype)


class Matmul(Operator):
    """Matrix product over the last two dimensions, with equal batch dimensions (callers get broadcasting)."""

    linear_inputs = "each"

    def __call__(self, x: Any, y: Any) -> Tensor:
        x, y = as_tensor(x), as_tensor(y)
        if x.ndim == 0 or y.ndim == 0:
            raise self.shape_error(f"both arguments need at least 1 dimension, got shapes {x.shape} and {y.shape}")
        if x.dtype != y.dtype:  # as in PyTorch (no promotion)
            raise self.dtype_error(f"expected both arguments of one dtype, got {x.dtype.name} and {y.dtype.name}")
        squeeze = [d for d, t in ((-2, x), (-1, y)) if t.ndim == 1]  # vectors as a row and a column, dropped after
        x, y = reshape(x, (1, *x.shape)) if x.ndim == 1 else x, reshape(y, (*y.shape, 1)) if y.ndim == 1 else y
        if x.shape[-1] != y.shape[-2]:
            shapes = f"{'x'.join(map(str, x.shape))} and {'x'.join(map(str, y.shape))}"
            raise self.shape_error(f"shapes {shapes} cannot be multiplied ({x.shape[-1]} != {y.shape[-2]})")
        (m, k), n = x.shape[-2:], y.shape[-1]  # one 2-d product where either has no batch (a broadcast one's gradient
        if y.ndim <= x.ndim > 2 and math.prod(y.shape[:-2]) == 1:  # is not summed back in its dtype, batch by batch)
            flat = bind(self, reshape(x, (math.prod(x.shape[:-1]), k)), reshape(y, (k, n)))
            out = reshape(flat, (*x.shape[:-1], n))
        elif x.ndim <= y.ndim > 2 and x.dtype in _HALVES and math.prod(x.shape[:-2]) == 1:  # x times every y: one
            ys = reshape(permute(reshape(y, (count := math.prod(y.shape[:-2]), k, n)), (1, 0, 2)), (k, count * n))
            flat = bind(self, reshape(x, (m, k)), ys)  # (m, k) @ (k, batch * n), y copied (float32's is exact enough)
            out = reshape(permute(reshape(flat, (m, count, n)), (1, 0, 2)), (*y.shape[:-2], m, n))
        else:
            batch = broadcast_shapes(self.name, x.shape[:-2], y.shape[:-2])
            out = bind(self, broadcast_to(x, batch + x.shape[-2:]), broadcast_to(y, batch + y.shape[-2:]))
        return reshape(out, tuple(s for i, s in enumerate(out.shape) if i - out.ndim not in squeeze))

    def infer(self, x: Aval, y: Aval) -> Aval:
        if x.ndim < 2 or x.ndim != y.ndim or x.shape[:-2] != y.shape[:-2] or x.shape[-1] != y.shape[-2]:
            raise self.shape_error(f"shapes {x.shape} and {y.shape} cannot be multiplied")
        if x.dtype != y.dtype or x.dtype == dtypes.bool_:
            raise self.dtype_error(f"expected numeric inputs of one dtype, got {x.dtype.name} and {y.dtype.name}")
        return Aval(x.shape[:-1] + y.shape[-1:], x.dtype)

    def transpose(self, cotangents: list, x: Any, y: Any) -> list:
        if isinstance(x, UndefinedPrimal):
            return [bind(self, cotangents[0], functions["transpose"](y, -2, -1)), None]
        return [None, bind(self, functions["transpose"](x, -2, -1), cotangents[0])]

    def vmap(self, axis_size: int, args: list, dims: list) -> tuple[list, list]:  # (halves: an unbatched operand in one
        if args[0].dtype in _HALVES:  # product, its gradient rounded once; else per example, as a loop, bit for bit)
            return [self(*(a if d is None else move_axis(a, d, 0) for a, d in zip(args, dims)))], [0]
        return [bind(self, *(batch_to_front(a, d, axis_size) for a, d in zip(args, dims)))], [0]


class Conv(Operator):
    """N-d cross-correlation (PyTorch's conv): x (N, C, *spatial), w (O, C/groups, *kernel)."""

    linear_inputs = "each"

    def __call__(self, x: Any, w: Any, bias: Any = None, stride: Any = 1, padding: Any = 0, dilation: Any = 1,
                 groups: int = 1) -> Tensor:  # fmt: skip
        x, w, bias = as_tensor(x), as_tensor(w), None if bias is None else as_tensor(bias)
        half = x.dtype.is_float and x.dtype.bits < 32  # with its bias in float32, rounded once, as PyTorch's kernel
        if half and x.dtype == w.dtype and (bias is None or bias.dtype == x.dtype and bias.shape == w.shape[:1]):
            wide = [None if t is None else cast(t, dtypes.float32) for t in (x, w, bias)]  # (its gradients too)
            return cast(self(*wide, stride, padding, dilation, groups), x.dtype)
        if x.ndim == w.ndim - 1 > 1:  # a batch-less input (C, *spatial), as in PyTorch
            return self(reshape(x, (1, *x.shape)), w, bias, stride, padding, dilation, groups)[0]
        n = max(w.ndim - 2, 0)  # (the weight's: infer reports an input of another rank)
        stride, dilation = ints(self.name, stride, "stride", 1, n), ints(self.name, dilation, "dilation", 1, n)
        if padding == "valid" or (padding == "same" and set(stride) <= {1}):
            total = [d * (k - 1) if padding == "same" else 0 for d, k in zip(dilation, w.shape[2:])]
            padding = tuple((t // 2, t - t // 2) for t in total)
        elif isinstance(padding, str):
            raise ValueError(f"slope.conv: padding must be 'valid', 'same' (for stride 1) or sizes, got {padding!r}")
        elif isinstance(padding, (tuple, list)) and all(isinstance(p, (tuple, list)) for p in padding):
            padding = tuple(ints(self.name, p, "padding", 0, 2) for p in padding)
        else:
            padding = tuple((p, p) for p in ints(self.name, padding, "padding", 0, n))
        out = bind(self, x, w, stride=stride, padding=padding, dilation=dilation,  # (of one dtype: infer checks it)
                   groups=ints(self.name, groups, "groups", 1)[0])  # fmt: skip
        if bias is not None and bias.aval != (expected := Aval(out.shape[1:2], out.dtype)):
            kind = self.dtype_error if bias.dtype != out.dtype else self.shape_error
            raise kind(f"expected a bias {expected} for weight {w.aval}, got {bias.aval}")
        return out if bias is None else out + reshape(bias, (-1,) + (1,) * n)

    def infer(self, x: Aval, w: Aval, *, stride: tuple, padding: tuple, dilation: tuple, groups: int) -> Aval:
        if x.ndim < 3 or w.ndim != x.ndim or not len(stride) == len(padding) == len(dilation) == x.ndim - 2:
            raise self.shape_error(f"expected x (N, C, *spatial), w (O, C/groups, *kernel), got {x.shape}, {w.shape}")
        if x.shape[1] != w.shape[1] * groups or w.shape[0] % groups or not w.shape[0]:  # (PyTorch: O > 0 too)
            misfit = f"input of shape {x.shape} ({x.shape[1]} channels) does not fit weight of shape {w.shape}"
            expected = f"{w.shape[1] * groups} input channels, and output channels a positive multiple of {groups}"
            raise self.shape_error(f"{misfit} with groups={groups} (expected {expected})")
        if x.dtype != w.dtype or not x.dtype.is_float:
            raise self.dtype_error(f"expected floating inputs of one dtype, got {x.dtype.name} and {w.dtype.name}")
        spatial, kernel = [], w.shape[2:]
        for size, k, s, (lo, hi), d in zip(x.shape[2:], kernel, stride, padding, dilation):
            span = d * (k - 1) + 1
            if size + lo + hi < span or size == 0 < x.shape[0] * x.shape[1]:  # PyTorch: empty only with N or C 0
                raise self.shape_error(f"kernel {kernel} (dilation {dilation}) is larger than input {x.shape} padded by "
                                       f"{padding}, or the input is empty in a spatial dimension")  # fmt: skip
            spatial.append((size + lo + hi - span) // s + 1)
        return Aval((x.shape[0], w.shape[0], *spatial), x.dtype)

    def transpose(self, cotangents: list, x: Any, w: Any, *, stride: tuple, padding: tuple, dilation: tuple,
                  groups: int) -> list:  # fmt: skip
        ct, n = cotangents[0], cotangents[0].ndim - 2
        if 0 in ct.shape + (x if isinstance(x, UndefinedPrimal) else w).aval.shape:  # (convolutions below may not fit)
            return [zeros_like(p.aval) if isinstance(p, UndefinedPrimal) else None for p in (x, w)]  # an empty one: 0
        if isinstance(x, UndefinedPrimal):  # slope.conv_transpose's way: no product with an inserted or padding zero
            (batch, _, *size), (_, _, *kernel), per_out, parts = ct.shape, w.shape, ct.shape[1] // groups, []
            ct = permute(reshape(ct, (batch, groups, per_out, -1)), (1, 2, 3, 0))  # (g, O/g, positions, images)
            cols = matmul(permute(reshape(w, (groups, per_out, -1)), (0, 2, 1)), reshape(ct, (groups, per_out, -1)))
            for k, offset in enumerate(np.ndindex(*kernel)):  # each tap's products added into x at its offset (col2im)
                lo = (0, *(at * d - p for at, d, (p, _) in zip(offset, dilation, padding)), 0)  # (images innermost)
                spans = zip(lo[1:-1], x.aval.shape[2:], size, stride)  # (first position, x's size, count, stride)
                if all(any(0 <= a + j * st < m for j in range(s)) for a, m, s, st in spans):  # a position in x
                    tap = reshape(slice_(cols, (0, k, 0), cols.shape, (1, math.prod(kernel), 1)), (-1, *size, batch))
                    parts.append(_strided_place(tap, (1, *stride, 1), lo, (*x.aval.shape[1:], batch)))
            return [permute(functools.reduce(add, parts), (-1, *range(n + 1))) if parts else zeros_like(x.aval), None]
        batch, per_group, out_ch = x.shape[0], x.shape[1] // groups, ct.shape[1]  # the weight's: x correlated with ct
        xp = pad(x, lo=(0, 0, *(p[0] for p in padding)), hi=(0, 0, *(p[1] for p in padding)))
        xp = reshape(xp, (batch, groups, per_group, *xp.shape[2:]))
        xp = reshape(permute(xp, (2, 1, 0, *range(3, 3 + n))), (per_group, groups * batch, *xp.shape[3:]))
        kt = reshape(ct, (batch, groups, out_ch // groups, *ct.shape[2:]))
        kt = reshape(permute(kt, (1, 2, 0, *range(3, 3 + n))), (out_ch, batch, *ct.shape[2:]))
        gw = bind(self, xp, kt, stride=dilation, padding=((0, 0),) * n, dilation=stride, groups=groups)
        return [None, slice_(permute(gw, (1, 0, *range(2, 2 + n))), (0,) * gw.ndim, w.aval.shape)]

    def vmap(self, axis_size: int, args: list, dims: list, **params: Any) -> tuple[list, list]:
        (x, w), (dx, dw) = args, dims
        if axis_size == 0:  # (no weights: groups * 0 divided by zero) zeros of the per-example shape
            avals = [a.aval if d is None else Aval(a.shape[:d] + a.shape[d + 1 :], a.dtype) for a, d in zip(args, dims)]
            return [full((0, *self.infer(*avals, **params).shape), 0, x.dtype)], [0]
        if dw is None:
            x = move_axis(x, dx, 0)
            out = bind(self, reshape(x, (axis_size * x.shape[1], *x.shape[2:])), w, **params)
            return [reshape(out, (axis_size, x.shape[1], *out.shape[1:]))], [0]
        x, w = move_axis(batch_to_front(x, dx, axis_size), 0, 1), move_axis(w, dw, 0)  # x: (N, batch, C, ...)
        x = reshape(x, (x.shape[0], axis_size * x.shape[2], *x.shape[3:]))
        w = reshape(w, (axis_size * w.shape[1], *w.shape[2:]))
        out = bind(self, x, w, **{**params, "groups": params["groups"] * axis_size})
        return [reshape(out, (out.shape[0], axis_size, out.shape[1] // axis_size, *out.shape[2:]))], [1]


def check_indices(name: str, index: Tensor, low: int, high: int, what: str) -> None:
    """An IndexError naming `name` when concrete indices fall outside [low, high), or any index when it is empty."""
    if index.numel() == 0 or index.buffer is None and low < high:  # (traced ones are checked when they run)
        return
    values = index.numpy() if index.buffer is not None else None  # (None: traced, into an empty range)
    if values is None or values.min() < low or values.max() >= high:
        found = "an index is out of range" if values is None else f"indices range from {values.min()} to {values.max()}"
        raise IndexError(f"slope.{name}: {found}; expected {low} to {high - 1} for {what}")


def _indices(op: Operator, idx: Any) -> Tensor:
    idx = as_tensor(idx)
    if not idx.dtype.is_int:
        raise op.dtype_error(f"indices must be integers, got {idx.dtype.name} of shape {idx.shape}")
    return cast(idx, dtypes.int64)


class GatherNd(Operator):
    """`x[idx[..., 0], ...]`: idx (..., k) indexes x's first k dims in [-size, size) (else IndexError when it runs)."""

    linear_inputs = (0,)

    def __call__(self, x: Any, idx: Any) -> Tensor:
        return bind(self, as_tensor(x), _indices(self, idx))

    def infer(self, x: Aval, idx: Aval) -> Aval:
        if not idx.dtype.is_int or idx.ndim < 1 or idx.shape[-1] > x.ndim:
            raise self.shape_error(f"expected integer indices of shape (..., k) with k <= {x.ndim}, got {idx}")
        return Aval(idx.shape[:-1] + x.shape[idx.shape[-1] :], x.dtype)

    def transpose(self, cotangents: list, x: Any, idx: Any) -> list:
        return [scatter_nd(zeros_like(x.aval), idx, cotangents[0]), None]

    def vmap(self, axis_size: int, args: list, dims: list) -> tuple[list, list]:
        x, idx = args
        if dims[0] is None:
            return [bind(self, x, move_axis(idx, dims[1], 0))], [0]
        return [bind(self, move_axis(x, dims[0], 0), _with_batch_index(idx, dims[1], axis_size))], [0]


def _with_batch_index(idx: Tensor, dim: int | None, axis_size: int) -> Tensor:
    idx = batch_to_front(idx, dim, axis_size)
    batch = expand(reshape(arange(axis_size), (axis_size,) + (1,) * (idx.ndim - 1)), idx.shape[:-1] + (1,))
    return cat([batch, idx], idx.ndim - 1)


class ScatterNd(Operator):
    """A copy of x with `updates` added at `idx` (repeated indices accumulate)."""

    linear_inputs = (0, 2)

    def __call__(self, x: Any, idx: Any, updates: Any) -> Tensor:
        x = as_tensor(x)
        return bind(self, x, _indices(self, idx), as_tensor(updates, x.dtype))

    def infer(self, x: Aval, idx: Aval, updates: Aval) -> Aval:
        if updates != (expected := GatherNd.infer(self, x, idx)):  # what x[idx] is (after the same checks of idx)
            raise self.shape_error(f"expected updates {expected} for x {x} and indices {idx}, got {updates}")
        return x

    def transpose(self, cotangents: list, x: Any, idx: Any, updates: Any) -> list:
        ct = cotangents[0]
        updates_ct = gather_nd(ct, idx) if isinstance(updates, UndefinedPrimal) else None
        return [ct if isinstance(x, UndefinedPrimal) else None, None, updates_ct]

    def vmap(self, axis_size: int, args: list, dims: list) -> tuple[list, list]:
        x, updates = (batch_to_front(args[i], dims[i], axis_size) for i in (0, 2))
        return [bind(self, x, _with_batch_index(args[1], dims[1], axis_size), updates)], [0]


exp = Unary("exp", lambda t, x, y: t * y, doc="e to the power of each element.")
log = Unary("log", lambda t, x, y: t / x, doc="The natural logarithm of each element.")
sin = Unary("sin", lambda t, x, y: t * cos(x), doc="The sine of each element (in radians).")
sqrt = Unary("sqrt", lambda t, x, y: t / (y * 2.0), doc="The square root of each element.")
invert = Unary("invert", allowed="integer", doc="Bitwise not of integers, logical not of bools (`~x`).")
stop_gradient = Unary("stop_gradient", allowed="any", doc="The tensor itself, with derivative 0 (PyTorch's detach).")
cos, cast, tanh = Cos(), Cast(), Tanh()
floor = Rounding("floor", doc="Each element rounded down to an integer (integer tensors are returned as they are).")
ceil = Rounding("ceil", doc="Each element rounded up to an integer (integer tensors are returned as they are).")
round_ = Rounding("round", doc="Each element rounded to the nearest integer, halves to even (integers as they are).")
add, sub, mul, div, power, fmod, maximum = Add(), Sub(), Mul(), Div(), Pow(), Fmod(), Maximum()
equal, less, greater = Compare("equal", "=="), Compare("less", "<"), Compare("greater", ">")
less_equal, greater_equal = CompareOrEqual("less_equal", "<="), CompareOrEqual("greater_equal", ">=")
bitwise_and, bitwise_or, bitwise_xor = Bitwise("and", "&"), Bitwise("or", "|"), Bitwise("xor", "^")
where, sum_, max_ = Where(), Sum(), Max()
reshape, expand, permute, slice_, pad, flip, cat = Reshape(), Expand(), Permute(), Slice(), Pad(), Flip(), Cat()
full, arange = Full(), Arange()
random_uniform = RandomSample("random_uniform", "Uniform samples in [0, 1) from a key (see slope.random.uniform).")
random_normal = RandomSample("random_normal", "Standard normal samples from a key (see slope.random.normal).")
matmul, conv, gather_nd, scatter_nd = Matmul(), Conv(), GatherNd(), ScatterNd()


@hookimpl
def slope_operators() -> list[Operator]:
    """The core operators (this module's Operator instances), registered like any plugin's."""
    return [value for value in list(globals().values()) if isinstance(value, Operator)]
