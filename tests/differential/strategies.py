"""What the differential suite draws and how it compares: argument layouts, values with special numbers, conversion
to and from PyTorch, and the comparison of one result with PyTorch's (values, NaN and inf positions, dtypes).

A table entry's layout strategy draws everything about a call except the values of its tensors (shapes, dims, Python
arguments, index arrays); the tensors are left as `T` placeholders that the test fills for each dtype, so one layout
runs with every dtype the function takes. Tensors are drawn with hypothesis, so failures shrink to small inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import ml_dtypes
import numpy as np
import torch
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import slope

FLOATS = ("float16", "bfloat16", "float32", "float64")
INTS = ("int8", "uint8", "int16", "int32", "int64")
NUMBERS = FLOATS + INTS
BITS = INTS + ("bool",)
ALL = NUMBERS + ("bool",)
GRAD_DTYPES = ("float32", "float64")

# Relative tolerance per dtype: about 40 ulps for float16/bfloat16 (PyTorch computes them in float32 and rounds,
# Slope's backends may compute natively), ~80 ulps for float32, ~4500 for float64; integers and bools are exact.
# Forward values: errors are relative, down to the dtype's smallest normal number (zero_floor), unless an entry scales
# an absolute part (sums: rtol x the sum of |terms|, the cancellation a different order of the additions may show);
# gradients (sums over broadcast dimensions) and promotion keep an absolute part of rtol (relative to max(1, |x|)).
RTOL = {"float16": 5e-3, "bfloat16": 4e-2, "float32": 1e-5, "float64": 1e-12}
GRAD_RTOL = {"float32": 1e-5, "float64": 1e-12}
# Gradients are compared at finite values of moderate size, kinks and ties included (+-0, integers, +-100, +-300):
# at NaN, infinities, subnormals and overflow the derivative formulas of any two implementations legitimately differ
# (x * 0 against 0 * inf), while forward values there are compared exactly.
GRADIENT_KIND = "moderate"


def numpy_dtype(name: str) -> Any:
    return slope.dtypes.as_dtype(name).numpy


def torch_dtype(name: str) -> torch.dtype:
    return torch.bool if name == "bool" else getattr(torch, name)


def dtype_name(dtype: Any) -> str:
    """The dtype name of a torch tensor, a Slope tensor or a NumPy array."""
    if isinstance(dtype, torch.dtype):
        return str(dtype).removeprefix("torch.")
    return slope.dtypes.as_dtype(dtype).name


# ----------------------------------------------------------------------------------------------- layouts


@dataclass(frozen=True)
class T:
    """A tensor argument filled in per dtype: `shape`, the example's dtype unless `dtype` names one, and `kind`:

    "any" (ordinary values; in half the arrays also specials: +-0, +-inf, NaN, subnormals, huge, dtype extremes),
    "finite" (ordinary values only), "intsmall" (integers in [-3, 3], floats as "any"), "small" (integers and
    floats in [-3, 3]), "unit" ([0, 1]), "castable" (floats in [0, 100]: float to integer casts of NaN, infinities
    and values out of the target's range are undefined behaviour in C, so in PyTorch; integers as "any"),
    "classes" (0 to 3: one_hot's classes), "moderate" (gradients: ordinary floats of at least 1e-3 in size and
    +-0, +-30, +-100, +-300; integers in [-5, 5]).
    """

    shape: tuple
    kind: str = "any"
    dtype: str | None = None


@dataclass(frozen=True, eq=False)
class A:
    """A tensor argument with fixed values (indices, keys, targets): the same array in every dtype's call."""

    array: np.ndarray


@dataclass
class Layout:
    """Positional and keyword arguments of one call; `T` placeholders (also inside lists) become tensors."""

    args: tuple = ()
    kwargs: dict = field(default_factory=dict)


def shapes(min_dims: int = 0, max_dims: int = 3, min_side: int = 0, max_side: int = 4) -> st.SearchStrategy:
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side, max_side=max_side)


def broadcast_pair(max_dims: int = 3) -> st.SearchStrategy:
    """Two shapes that broadcast together, or (one draw in five) two unrelated shapes: PyTorch decides."""
    related = hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=max_dims, max_side=4).map(
        lambda s: s.input_shapes
    )
    unrelated = st.tuples(shapes(max_dims=max_dims), shapes(max_dims=max_dims))
    return st.one_of(related, related, related, related, unrelated)


def sometimes(draw: Any) -> bool:
    """One draw in five: replace a well-formed argument by an arbitrary one, for PyTorch to accept or refuse."""
    return draw(st.integers(0, 4)) == 3


@st.composite
def dims(draw: Any, ndim: int, valid_only: bool = False) -> int:
    """A dimension index (negative ones too; a 0-d tensor takes 0 and -1); sometimes one out of range."""
    if valid_only or not sometimes(draw):
        return draw(st.integers(-max(ndim, 1), max(ndim, 1) - 1))
    return draw(st.sampled_from([ndim, -ndim - 1, ndim + 1]))


@st.composite
def dim_arg(draw: Any, ndim: int) -> Any:
    """None, a dim, or a tuple of dims (distinct, but now and then repeated or out of range)."""
    form = draw(st.sampled_from(["none", "int", "tuple"]))
    if form == "none":
        return None
    if form == "int":
        return draw(dims(ndim))
    if sometimes(draw):
        return tuple(draw(st.lists(dims(ndim), min_size=1, max_size=3)))
    # not (): PyTorch reduces everything for dim=() (NumPy nothing), a legacy corner not compared here
    chosen = draw(st.lists(st.integers(0, max(ndim, 1) - 1), min_size=1, max_size=max(ndim, 1), unique=True))
    return tuple(d - max(ndim, 1) if draw(st.booleans()) else d for d in chosen)


def index_array(shape: tuple, size: int, allow_negative: bool = True) -> st.SearchStrategy:
    """An int64 array of indices into a dimension of `size` (negative ones too where PyTorch allows them)."""
    low = -size if allow_negative else 0
    if size == 0:
        return st.just(np.zeros(shape, np.int64)) if math.prod(shape) == 0 else st.nothing()
    return hnp.arrays(np.int64, shape, elements=st.integers(low, size - 1))


# ----------------------------------------------------------------------------------------------- values

ORDINARY = st.one_of(
    st.integers(-3, 3).map(float),  # ties and exact integers (argmax, floor, round half to even)
    st.sampled_from([0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 0.25]),
    st.floats(-8.0, 8.0, allow_subnormal=False, width=32),
)


def _float_specials(name: str) -> list[float]:
    info = ml_dtypes.finfo(numpy_dtype(name))
    return [
        0.0,
        -0.0,
        math.inf,
        -math.inf,
        math.nan,
        float(info.max),
        -float(info.max),
        float(info.smallest_subnormal),
        -float(info.tiny) / 2,  # a subnormal
        1e20,
        -3e4,
        100.0,
        -100.0,
        1e-30,
    ]


def _int_specials(name: str) -> list[int]:
    info = np.iinfo(numpy_dtype(name))
    return [int(info.min), int(info.max), int(info.min) + 1, int(info.max) - 1, 0, 1, -1, 100, -100]


def _elements(name: str, kind: str, specials: bool) -> st.SearchStrategy:
    if name == "bool":
        return st.booleans()
    if name in INTS:
        info = np.iinfo(numpy_dtype(name))
        ranges = {"small": (-3, 3), "intsmall": (-3, 3), "unit": (0, 1), "classes": (0, 3)}
        low, high = ranges.get(kind, (-5, 5))
        base = st.integers(max(low, int(info.min)), min(high, int(info.max)))
        if specials and kind != "intsmall":
            fitting = [v for v in _int_specials(name) if info.min <= v <= info.max]
            base = st.one_of(base, base, st.sampled_from(fitting))
        return base
    if kind == "small":
        return st.floats(-3.0, 3.0, width=32)
    if kind == "moderate":  # no tiny values either: 1 / x**2 overflows differently in different formulas
        moderate = ORDINARY.filter(lambda v: v == 0 or abs(v) >= 1e-3)
        return st.one_of(moderate, moderate, st.sampled_from([0.0, -0.0, 100.0, -100.0, 300.0, -300.0, 30.0, -30.0]))
    if kind == "unit":
        return st.floats(0.0, 1.0, width=32)
    if kind == "classes":
        return st.integers(0, 3).map(float)
    if kind == "castable":
        return st.floats(0.0, 100.0, width=32)
    if specials:
        return st.one_of(ORDINARY, ORDINARY, st.sampled_from(_float_specials(name)))
    return ORDINARY


@st.composite
def values(draw: Any, shape: tuple, name: str, kind: str = "any") -> np.ndarray:
    """An array of `shape` and dtype `name` (bfloat16 as ml_dtypes), values of `kind` (see T)."""
    special_kind = kind in ("any", "intsmall") or (kind == "castable" and name in INTS)
    specials = special_kind and draw(st.booleans(), label="with specials")
    elements = _elements(name, kind, specials)
    flat = draw(st.lists(elements, min_size=math.prod(shape), max_size=math.prod(shape)))
    if name in FLOATS:
        with np.errstate(over="ignore"):  # huge values become infinities in narrow dtypes
            return np.array(flat, np.float64).astype(numpy_dtype(name)).reshape(shape)
    return np.array(flat, dtype=numpy_dtype(name)).reshape(shape)


def fill(item: Any, arrays: dict, make: Any) -> Any:
    """`item` with every T replaced by `make(array)` for its drawn array, every A by `make(A.array)`."""
    if isinstance(item, T):
        return make(arrays[id(item)])
    if isinstance(item, A):
        return make(item.array)
    if isinstance(item, list):
        return [fill(i, arrays, make) for i in item]
    if isinstance(item, tuple):
        return tuple(fill(i, arrays, make) for i in item)
    if isinstance(item, dict):
        return {k: fill(v, arrays, make) for k, v in item.items()}
    return item


def placeholders(item: Any) -> list[T]:
    """Every T in an argument (lists, tuples and dicts walked), in order."""
    if isinstance(item, T):
        return [item]
    if isinstance(item, (list, tuple)):
        return [t for i in item for t in placeholders(i)]
    if isinstance(item, dict):
        return [t for v in item.values() for t in placeholders(v)]
    return []


# ----------------------------------------------------------------------------------------------- conversion


def to_torch(array: np.ndarray) -> torch.Tensor:
    if array.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(array.astype(np.float32)).to(torch.bfloat16)
    return torch.from_numpy(np.array(array))


def torch_numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach()
    return (t.float() if t.dtype == torch.bfloat16 else t).numpy()


def as_torch_arg(value: Any) -> Any:
    """Python arguments for the torch call: NumPy index arrays become tensors, Slope dtypes torch dtypes."""
    if isinstance(value, np.ndarray):
        return to_torch(value)
    if isinstance(value, slope.DType):
        return torch_dtype(value.name)
    if isinstance(value, list):
        return [as_torch_arg(v) for v in value]
    if isinstance(value, tuple):
        return tuple(as_torch_arg(v) for v in value)
    if isinstance(value, dict):
        return {k: as_torch_arg(v) for k, v in value.items()}
    return value


def flat_results(value: Any) -> list:
    """A result as a flat list of tensors (split returns lists, max_pool with indices a pair, torch namedtuples)."""
    if isinstance(value, (list, tuple)):
        return [leaf for item in value for leaf in flat_results(item)]
    return [value]


# ----------------------------------------------------------------------------------------------- comparison


def describe(array: np.ndarray) -> str:
    return np.array2string(np.asarray(array, dtype=np.float64), threshold=30, precision=9)


def zero_floor(dtype: torch.dtype) -> float:
    """The absolute error any float result may carry: the dtype's smallest normal number. Below it precision is
    absolute (subnormals) and a backend may flush to zero (IREE's CPU runtime, its README); above it errors are
    relative, also for results far below 1 (log1p(1e-8) must not be 0)."""
    return float(torch.finfo(dtype).tiny)


def mismatch(actual: Any, expected: torch.Tensor, rtol: float, atol: Any, zero_signs: bool = False) -> str | None:
    """Why a Slope result differs from PyTorch's, or None: dtype, shape, NaN positions, infinities (with their
    signs), |actual - expected| <= rtol * |expected| + atol elsewhere (exact for integers and bools) and, with
    `zero_signs`, the sign of a zero where PyTorch's result is +-0.0; where atol is infinite, anything goes (a sum
    that overflows: its inf or NaN depends on the order of the additions)."""
    if not isinstance(actual, slope.Tensor):
        return f"returned a {type(actual).__name__}, PyTorch a tensor"
    if dtype_name(actual.dtype) != dtype_name(expected.dtype):
        return f"dtype {dtype_name(actual.dtype)}, PyTorch {dtype_name(expected.dtype)}"
    if tuple(actual.shape) != tuple(expected.shape):
        return f"shape {tuple(actual.shape)}, PyTorch {tuple(expected.shape)}"
    a = np.asarray(actual.numpy()).astype(np.float64)
    e = torch_numpy(expected).astype(np.float64)
    if a.size == 0:
        return None
    if not expected.dtype.is_floating_point:
        bad = a != e
        return (
            f"values differ at {np.argwhere(bad)[:4].tolist()}: {describe(a)} vs {describe(e)}" if bad.any() else None
        )
    free = np.isinf(np.broadcast_to(np.asarray(atol, np.float64), e.shape))  # anything goes there
    a, e = np.where(free, 0.0, a), np.where(free, 0.0, e)
    nan_a, nan_e = np.isnan(a), np.isnan(e)
    if (nan_a != nan_e).any():
        return f"NaN at different positions {np.argwhere(nan_a != nan_e)[:4].tolist()}: {describe(a)} vs {describe(e)}"
    infinite = np.isinf(a) | np.isinf(e)
    if (a[infinite] != e[infinite]).any():
        return f"infinities differ: {describe(a)} vs {describe(e)}"
    finite = ~(nan_e | infinite)
    bound = rtol * np.abs(e) + np.broadcast_to(np.asarray(atol, np.float64), e.shape)
    with np.errstate(invalid="ignore"):  # inf - inf where an infinity is compared (above)
        bad = finite & ~free & ~(np.abs(a - e) <= bound)
    if bad.any():
        worst = tuple(int(i) for i in np.argwhere(bad)[0])
        return (
            f"{int(bad.sum())} of {a.size} values beyond rtol={rtol:g} (first at {worst}: {a[worst]!r} vs "
            f"{e[worst]!r}): {describe(a)} vs {describe(e)}"
        )
    flipped = finite & ~free & (a == 0) & (e == 0) & (np.signbit(a) != np.signbit(e)) if zero_signs else None
    if flipped is not None and flipped.any():
        first = tuple(int(i) for i in np.argwhere(flipped)[0])
        return f"{int(flipped.sum())} zeros of the other sign (first at {first}: {a[first]!r} vs {e[first]!r})"
    return None


def clean_error(error: BaseException) -> bool:
    """Whether an error is Slope's own (its classes, or a Python error whose message names a slope function)
    rather than a raw error of a backend library or of Python."""
    slope_errors = (
        slope.SlopeError,
        slope.SlopeTraceError,
        slope.SlopeBackendError,
        slope.TransformError,
        slope.plugins.SlopePluginError,
    )
    if isinstance(error, slope_errors):
        return True
    named = isinstance(error, (ValueError, TypeError, IndexError, RuntimeError, ArithmeticError))
    return named and "slope" in str(error).lower()
