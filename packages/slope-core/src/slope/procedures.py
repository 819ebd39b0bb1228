"""Procedures: the rest of the Tensor API from operators; each public function is `slope.NAME` and `Tensor.NAME`."""

from __future__ import annotations

import functools
import inspect
import math
from typing import Any, Callable, Sequence

import numpy as np

from . import dtypes
from . import operators as ops
from . import random as random_module
from .backend import checked_device, from_numpy, get_backend, to_backend
from .errors import DTypeError, ShapeError, SlopeTraceError
from .ir import Aval, aval_of
from .operators import as_tensor, broadcast_to, cast, check_indices, coerce, constant, normalize_dims, reshape, where
from .plugins import hookimpl
from .tensors import Tensor


def _dtype(dtype: Any, default: dtypes.DType = dtypes.default_float) -> dtypes.DType:
    return default if dtype is None else dtypes.as_dtype(dtype)


def _to_device(t: Tensor, device: str | None) -> Tensor:
    if device is None or t.buffer is None:
        return t
    return to_backend(t, get_backend(), checked_device(get_backend(), device))


def tensor(data: Any, dtype: Any = None, device: str | None = None) -> Tensor:
    """A tensor from data (Python floats become float32, ints int64, bools bool; NumPy arrays keep their dtype)."""
    if type(data) is np.ndarray and dtype is None and (own := dtypes.by_numpy.get(data.dtype)) and data.dtype.isnative:
        return from_numpy(data if get_backend().copies_from_numpy else data.copy(), aval_of(data.shape, own), device)
    if isinstance(data, Tensor):  # a concrete one is copied (as PyTorch's, JAX's array): donating one leaves the other
        cast_data = cast(data, dtypes.as_dtype(dtype)) if dtype is not None else data
        return _to_device(ops.stop_gradient(data) if cast_data is data and type(data) is Tensor else cast_data, device)
    data = np.asarray(data) if hasattr(data, "__array__") and not np.isscalar(data) else data  # torch, JAX: their dtype
    if isinstance(data, np.ndarray):  # NumPy's cast, as PyTorch's for arrays (floats truncate, ints wrap)
        dtype = dtypes.as_dtype(data.dtype if dtype is None else dtype)  # (a given one: the array's may be unheld)
        data = data.astype(np.float32) if dtype.name == "float16" and data.dtype.str[1:] == "f8" else data  # (as cast)
        array = (np.asarray if get_backend().copies_from_numpy else np.array)(data, dtype=dtype.numpy, order="C")
        return from_numpy(array, Aval(tuple(array.shape), dtype), device)
    dtype = _dtype(dtype, dtypes.as_dtype(data.dtype) if isinstance(data, np.generic) else _infer_sequence(data))
    try:  # PyTorch takes Python numbers into a float dtype through float64 (2**1100 overflows)
        values = np.asarray(data, dtype=np.float64 if dtype.is_float else None)
    except OverflowError as error:
        raise ValueError(f"slope.tensor: the data does not fit {dtype.name} ({error})") from None
    except SlopeTraceError:  # traced values in a list are stacked, as JAX's jnp.array (the dtype as for concrete ones)
        return stack([tensor(item, dtype) for item in data])
    if dtype.is_int:  # PyTorch's range check, each number by its type: ints from -max wrap into unsigned (-2 is 254),
        ends = (values.min(initial=0), values.max(initial=0))  # floats do not (uint8: -0.5 fails), NaN fits none
        for n in ends if values.dtype.kind in "iub" else np.asarray(data, dtype=object).flat:
            ops._python_value("tensor", n, dtype)
    array = np.asarray(dtypes.wrap(values.astype(np.int64, copy=False) if dtype.is_int else values, dtype))  # (0-d too)
    return from_numpy(array, Aval(tuple(array.shape), dtype), device)


def _infer_sequence(data: Any) -> dtypes.DType:
    """PyTorch's dtype for nested data: NumPy numbers and arrays and tensors in it keep theirs ([np.int8(5)]: int8)."""
    own, python, rows = set(), set(), [data] if isinstance(data, (list, tuple)) else []
    while rows:
        row = rows.pop()
        kinds = set(map(type, row))
        python |= {dtypes.infer_python(kind()) for kind in kinds & {bool, int, float}}  # (a zero of each kind)
        others = [v for v in row if type(v) not in (bool, int, float)] if kinds - {bool, int, float} else []
        own |= {dtypes.as_dtype(v.dtype) for v in others if isinstance(v, (np.generic, np.ndarray, Tensor))}
        rows += [v for v in others if isinstance(v, (list, tuple))]
    return functools.reduce(dtypes.promote, own | python) if own else dtypes.infer_python(data)


def zeros(*shape: Any, dtype: Any = None, device: str | None = None) -> Tensor:
    """A tensor of zeros."""
    return _to_device(ops.full(ops.shape_args("zeros", shape, 0), 0, _dtype(dtype)), device)


def ones(*shape: Any, dtype: Any = None, device: str | None = None) -> Tensor:
    """A tensor of ones."""
    return _to_device(ops.full(ops.shape_args("ones", shape, 0), 1, _dtype(dtype)), device)


def zeros_like(x: Tensor, dtype: Any = None) -> Tensor:
    """Zeros of x's shape (and dtype)."""
    return ops.full((x := as_tensor(x)).shape, 0, _dtype(dtype, x.dtype))  # (array-likes too, as JAX)


def ones_like(x: Tensor, dtype: Any = None) -> Tensor:
    """Ones of x's shape (and dtype)."""
    return ops.full((x := as_tensor(x)).shape, 1, _dtype(dtype, x.dtype))


def full_like(x: Tensor, value: Any, dtype: Any = None) -> Tensor:
    """A tensor of x's shape filled with value."""
    dtype = _dtype(dtype, (x := as_tensor(x)).dtype)
    value = value if isinstance(value, Tensor) else ops._python_value("full_like", value, dtype)  # (a tensor: traced)
    return ops.full(x.shape, value, dtype)


def eye(n: int, m: int | None = None, dtype: Any = None) -> Tensor:
    """The identity matrix (n x m)."""
    n, m = ops.shape_args("eye", (n, n if m is None else m), 0)
    return cast(ops.arange(n).reshape((n, 1)) == ops.arange(m).reshape((1, m)), _dtype(dtype))


def randn(*shape: Any, dtype: Any = None) -> Tensor:
    """Standard normal samples from the global generator (see slope.manual_seed)."""
    return random_module.normal(random_module.next_key(), ops.shape_args("randn", shape, 0), dtype)


def rand(*shape: Any, dtype: Any = None) -> Tensor:
    """Uniform samples in [0, 1) from the global generator."""
    return random_module.uniform(random_module.next_key(), ops.shape_args("rand", shape, 0), dtype)


def randint(low: int, high: int | None = None, size: Any = (), dtype: Any = None) -> Tensor:
    """Integers in [low, high) from the global generator (`randint(high, size)` also works)."""
    if high is None or isinstance(high, (tuple, list)):
        low, high, size = 0, low, size if high is None else high
    return random_module.randint(random_module.next_key(), size, low, high, dtype)


def neg(x: Any) -> Tensor:
    """-x."""
    x = as_tensor(x)
    if x.dtype == dtypes.bool_:
        raise DTypeError(f"slope.neg: negating a bool tensor (shape {x.shape}) is not supported; use logical_not or ~")
    return ops.sub(constant(-0.0 if x.dtype.is_float else 0, x.dtype, x.shape), x)  # -0.0 - 0.0 is -0.0, as -x


def sign(x: Any) -> Tensor:
    """-1, 0 or 1 by the sign of x (a bool is its own sign, as in PyTorch)."""
    x = as_tensor(x)
    return x if x.dtype == dtypes.bool_ else cast(x > 0, x.dtype) - cast(x < 0, x.dtype)


def _numbers(name: str, x: Tensor) -> Tensor:  # x, if it is not a bool tensor (PyTorch refuses those)
    if x.dtype == dtypes.bool_:
        raise DTypeError(f"slope.{name}: expected numbers, got a bool tensor of shape {x.shape} (as in PyTorch)")
    return x


def abs_(x: Any) -> Tensor:
    """|x|."""
    x = _numbers("abs", as_tensor(x))
    return x * sign(x) + 0  # + 0: |-0.0| is 0.0 (x * sign(x) is -0.0 there)


def rsqrt(x: Any) -> Tensor:
    """1 / sqrt(x) (float16/bfloat16 in float32, rounded once, as PyTorch)."""
    x = ops.as_float(x)
    return cast(1.0 / ops.sqrt(cast(x, _wide(x.dtype))), x.dtype)


def square(x: Any) -> Tensor:
    """x * x (bools as int64, as PyTorch's x ** 2)."""
    x = as_tensor(x, dtypes.int64 if getattr(x, "dtype", None) == dtypes.bool_ else None)
    return x * x


def _fmod(name: str, x: Any, y: Any) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    x, coerced = coerce(name, x, y)
    mod = ops.fmod(_numbers(name, x), y, name=name)  # (y as given: coerce traces numbers; fmod sees a 0 under jit too)
    return x, coerced, mod, (mod != 0) & ((coerced < 0) != (mod < 0))  # the last: where x % y is mod + y


def floor_divide(x: Any, y: Any) -> Tensor:
    """x // y, rounding toward negative infinity (floats as PyTorch: from fmod, so 1.0 // 0.1 is 9.0)."""
    if half := ops._half_and_number(x, y, number_first=False):  # in float32, rounded once (PyTorch's, as * and /)
        return cast(floor_divide(*(cast(v, dtypes.float32) if isinstance(v, Tensor) else v for v in (x, y))), half)
    x, y, mod, wrong_sign = _fmod("floor_divide", x, y)
    quotient = ops.div.checked(x - mod, y) - cast(wrong_sign, x.dtype)  # exact for integers
    if not x.dtype.is_float:
        return quotient
    true_quotient = ops.div(x, y)  # for zero divisors, and the sign of zeros (in `where`'s y: ORT keeps -0.0 there)
    floored = ops.floor(quotient)
    floored = where(y == 0, true_quotient, floored + cast(quotient - floored > 0.5, x.dtype))
    return ops.stop_gradient(where((quotient != 0) | (y == 0), floored, true_quotient * 0.0))


def remainder(x: Any, y: Any) -> Tensor:
    """x mod y with the sign of y (Python's %)."""
    x, y, mod, wrong_sign = _fmod("remainder", x, y)
    return where(wrong_sign, mod + y, mod)


def _reverse_order(x: Tensor) -> Tensor:
    """An order-reversing bijection of x's dtype: -x for floats, bitwise not for integers and bools (no overflow)."""
    return -x if x.dtype.is_float else ops.invert(x)


def minimum(x: Any, y: Any) -> Tensor:
    """Elementwise minimum."""
    x, y = coerce("minimum", x, y)
    return _reverse_order(ops.maximum(_reverse_order(x), _reverse_order(y)))


def not_equal(x: Any, y: Any) -> Tensor:
    """x != y."""
    return ops.invert(ops.equal(*coerce("not_equal", x, y)))


def logical_not(x: Any) -> Tensor:
    """not x."""
    return ops.invert(cast(as_tensor(x), dtypes.bool_))


def logical_and(x: Any, y: Any) -> Tensor:
    """x and y."""
    return ops.bitwise_and(*[cast(t, dtypes.bool_) for t in coerce("logical_and", x, y)])


def logical_or(x: Any, y: Any) -> Tensor:
    """x or y."""
    return ops.bitwise_or(*[cast(t, dtypes.bool_) for t in coerce("logical_or", x, y)])


def isnan(x: Any) -> Tensor:
    """Where x is NaN."""
    return not_equal(x, x)


def isinf(x: Any) -> Tensor:
    """Where x is +inf or -inf."""
    x = as_tensor(x)
    return (x == math.inf) | (x == -math.inf) if x.dtype.is_float else ops.full(x.shape, False, dtypes.bool_)


def clip(x: Any, min: Any = None, max: Any = None) -> Tensor:  # noqa: A002 - PyTorch's names
    """x limited to [min, max] (gradient 1 inside and on the bounds, and NaN for a NaN bound, as PyTorch)."""
    if min is None and max is None:
        raise ValueError("slope.clip: at least one of min and max must be given (as in PyTorch)")
    x = coerce("clip", x, *[b for b in (min, max) if b is not None], checked=True)[0]  # in the result dtype first
    for bound, outside in ((min, ops.less), (max, ops.greater)):
        if bound is not None:
            value, x = coerce("clip", bound, x)  # (promoted as given: a 0-d min stays a 0-d tensor until here)
            if outside is ops.less and isinstance(min, Tensor) and max is not None:  # min's gradient is 0 where min >=
                value = where(min < max, value, ops.stop_gradient(value))  # max (PyTorch's rule)
            nan_bound = isinstance(bound, Tensor) or bound != bound  # comparisons with a NaN bound are false
            x = where(outside(x, value) | isnan(value) if nan_bound else outside(x, value), value, x)
    return x


def _count(name: str, x: Tensor, dim: Any) -> int:
    return math.prod(x.shape[d] for d in normalize_dims(name, dim, x.ndim, True))


def _wide(dtype: dtypes.DType) -> dtypes.DType:  # statistics of halves in float32 (PyTorch), of integers in float64
    return dtype if dtype.is_float and dtype.bits >= 32 else dtypes.float32 if dtype.is_float else dtypes.float64


def mean(x: Any, dim: Any = None, keepdim: bool = False, dtype: Any = None) -> Tensor:
    """Average over dimensions (of x cast to dtype first, if given; halves summed and divided in float32, rounded once)."""
    if dtype is not None and not (dtype := dtypes.as_dtype(dtype)).is_float:  # (a mean of truncated values: no)
        raise DTypeError(f"slope.mean: dtype must be a floating-point dtype (as in PyTorch), got {dtype.name}")
    x = as_tensor(x) if dtype is None else cast(x, dtype)
    count = _count("mean", x, dim)  # first, so a bad dim is reported as mean's; 0 gives NaN, as in PyTorch
    result = ops.sum_(x, dim, keepdim, dtype=_wide(x.dtype)) / float(count)
    return cast(result, x.dtype if x.dtype.is_float else dtypes.default_float)


def var(x: Any, dim: Any = None, correction: Any = None, keepdim: bool = False, unbiased: bool | None = None) -> Tensor:
    """Variance (with Bessel's correction by default, as PyTorch; float16 and bfloat16 computed in float32)."""
    return _spread("var", x, dim, _correction("var", correction, unbiased), keepdim)


def std(x: Any, dim: Any = None, correction: Any = None, keepdim: bool = False, unbiased: bool | None = None) -> Tensor:
    """Standard deviation (float16/bfloat16 in float32, rounded once; gradient 0 where it is 0, as in PyTorch)."""
    return _spread("std", x, dim, _correction("std", correction, unbiased), keepdim)


def _correction(name: str, correction: Any, unbiased: Any) -> Any:  # PyTorch's: a number (None: 1) or a bool
    numeric = isinstance(correction, (int, float, np.number, Tensor, type(None)))
    if not numeric or type(unbiased) not in (bool, type(None)) or correction is not None and unbiased is not None:
        raise TypeError(f"slope.{name}: expected a number as correction or a bool as unbiased, not both (as in "
                        f"PyTorch), got correction={correction!r}, unbiased={unbiased!r}")  # fmt: skip
    return 1 if correction is None and unbiased is None else correction if unbiased is None else int(unbiased)


def _centered(x: Tensor, dim: Any) -> tuple[Tensor, Tensor]:
    """(mean, x - mean) over dims (kept), the first mean's rounding undone by the centred mean (a constant row: 0s)."""
    first = mean(x, dim, keepdim=True)
    shift = mean(x - first, dim, keepdim=True)
    shift = where(abs_(shift) < math.inf, shift, 0.0)
    return first + shift, x - first - shift


def _spread(name: str, x: Any, dim: Any, correction: int, keepdim: bool) -> Tensor:
    x = as_tensor(x)  # bfloat16 in float64: sums overflow float32, squares underflow it (not PyTorch's Welford's)
    out = x.dtype if x.dtype.is_float else dtypes.default_float
    wide = cast(x, dtypes.float64 if x.dtype == dtypes.bfloat16 else _wide(x.dtype))
    count, centered = _count(name, x, dim), _centered(wide, dim)[1]  # the count first: it checks dim
    if scaled := count and (name == "std" or count <= correction):  # over the largest: no square under/overflows
        top = ops.stop_gradient(ops.max_(abs_(centered), dim, keepdim=True))  # (inf where the mean overflowed: inf,
        centered = centered / (scale := where((top == 0.0) | (top == math.inf), 1.0, top))  # as PyTorch gives)
    variance = ops.sum_(centered * centered, dim, keepdim, dtype=dtypes.float64) / float(max(count - correction, 0))
    if name == "var":  # (the scale twice: its square may underflow where variance is inf)
        return cast(variance * (s := scale.reshape(variance.shape)) * s if scaled else variance, out)
    root = where(variance == 0.0, 0.0, ops.sqrt(where(variance == 0.0, 1.0, variance)))
    return cast(root * scale.reshape(root.shape) if scaled else root, out)


def min_(x: Any, dim: Any = None, keepdim: bool = False) -> Tensor:
    """Minimum over dimensions (of a tensor `dim`: the elementwise minimum, as PyTorch's min(x, other))."""
    if isinstance(dim, Tensor):
        return minimum(x, dim)
    normalize_dims("min", dim, as_tensor(x).ndim, empty_means_all=True)  # bad dims are reported as min's
    return _reverse_order(ops.max_(_reverse_order(as_tensor(x)), dim, keepdim))


def all_(x: Any, dim: Any = None, keepdim: bool = False) -> Tensor:
    """Whether all elements are true (uint8 for uint8 input, as in PyTorch; bool for the others)."""
    normalize_dims("all", dim, as_tensor(x).ndim, empty_means_all=True)  # bad dims are reported as all's
    return _like_uint8(x, logical_not(any_(logical_not(x), dim, keepdim)))


def _like_uint8(x: Any, result: Tensor) -> Tensor:
    return cast(result, dtypes.uint8) if getattr(x, "dtype", None) == dtypes.uint8 else result


def any_(x: Any, dim: Any = None, keepdim: bool = False) -> Tensor:
    """Whether any element is true (uint8 for uint8 input, as in PyTorch; bool for the others)."""
    x, given = cast(as_tensor(x), dtypes.bool_), x
    normalize_dims("any", dim, x.ndim, empty_means_all=True)
    no_dims = isinstance(dim, (tuple, list)) and not dim  # reduce nothing, as in PyTorch (whose sum reduces all)
    return _like_uint8(given, x if no_dims else ops.sum_(cast(x, dtypes.int32), dim, keepdim) > 0)


def _positions(shape: tuple[int, ...], dim: int) -> Tensor:
    """Each element's index along dim, for a tensor of `shape`."""
    along = tuple(n if d == dim else 1 for d, n in enumerate(shape))
    return broadcast_to(ops.arange(shape[dim]).reshape(along), shape)


def transpose(x: Any, dim0: int, dim1: int) -> Tensor:
    """x with two dimensions swapped."""
    x = as_tensor(x)
    dim0, dim1 = (ops.normalize_dim("transpose", d, x.ndim) for d in (dim0, dim1))
    return ops.permute(x, tuple(dim1 if d == dim0 else dim0 if d == dim1 else d for d in range(x.ndim)))  # 0-d: itself


def flatten(x: Any, start_dim: int = 0, end_dim: int = -1) -> Tensor:
    """x with dimensions start_dim..end_dim merged into one."""
    x = as_tensor(x)
    start, end = (ops.normalize_dim("flatten", d, x.ndim) for d in (start_dim, end_dim))  # 0-d: 0 and 0, so 1-d
    if start > end:
        raise ShapeError(f"slope.flatten: start_dim {start_dim} comes after end_dim {end_dim} for shape {x.shape}")
    return x.reshape((*x.shape[:start], math.prod(x.shape[start : end + 1]), *x.shape[end + 1 :]))


def squeeze(x: Any, dim: Any = None) -> Tensor:
    """x without dimensions of size 1 (all, or the given ones)."""
    x = as_tensor(x)
    dims = normalize_dims("squeeze", dim, x.ndim)
    return x.reshape(tuple(s for d, s in enumerate(x.shape) if s != 1 or d not in dims))


def unsqueeze(x: Any, dim: int) -> Tensor:
    """x with a new dimension of size 1 at dim."""
    x = as_tensor(x)
    dim = ops.normalize_dim("unsqueeze", dim, x.ndim + 1)
    return x.reshape((*x.shape[:dim], 1, *x.shape[dim:]))


def stack(tensors: Sequence[Any], dim: int = 0) -> Tensor:
    """Tensors of one shape joined along a new dimension."""
    if not isinstance(tensors, (tuple, list)) or not tensors:
        raise ShapeError(f"slope.stack: expected a non-empty sequence of tensors, got {type(tensors).__name__}")
    tensors = [as_tensor(t) for t in tensors]
    if len({t.shape for t in tensors}) > 1:
        raise ShapeError(f"slope.stack: expected tensors of one shape, got {[t.shape for t in tensors]}")
    dim = ops.normalize_dim("stack", dim, tensors[0].ndim + 1)
    return ops.cat([unsqueeze(t, dim) for t in tensors], dim)


_SEQUENCES = (list, tuple, range, bool, np.bool_)  # index items made arrays, as NumPy's (an empty one of integers)


def _is_bool_mask(item: Any) -> bool:
    return isinstance(item, (Tensor, np.ndarray)) and item.dtype.name == "bool"  # (slope's and NumPy's name)


def getitem(x: Any, index: Any) -> Tensor:
    """x[index] with ints, slices (any step), None, Ellipsis, integer tensors (gather) and bool masks."""
    x, index = as_tensor(x), index if isinstance(index, tuple) else (index,)  # bools are masks, [] an empty int index
    items = [np.asarray(i, None if np.size(i) else int) if isinstance(i, _SEQUENCES) else i for i in index]
    consumed = sum(i.ndim if _is_bool_mask(i) else 1 for i in items if i is not None and i is not Ellipsis)
    if consumed > x.ndim:
        raise IndexError(f"slope.getitem: too many indices ({consumed}) for a tensor of shape {x.shape}")
    ellipses = [k for k, item in enumerate(items) if item is Ellipsis]
    for k in reversed(ellipses):  # each one stands for the dimensions no other item names, repeated ones too (PyTorch)
        items[k : k + 1] = [slice(None)] * (x.ndim - consumed)
    kept = len(items) - max(len(ellipses) - 1, 0) * (x.ndim - consumed)  # repeats run past the last dimension,
    for i in items[kept:]:  # where only ':' (or '0:', ':n') is harmless, as in PyTorch
        if not (isinstance(i, slice) and (i.start or 0, i.step or 1) == (0, 1) and (i.stop or 0) >= 0):
            raise IndexError(f"slope.getitem: repeated ellipses put {i} past the last dimension of shape {x.shape}")
    expanded, dim = [], 0  # bool masks become integer index tensors (of concrete masks: they decide the shape)
    for item in items[:kept]:
        if not _is_bool_mask(item):
            expanded.append(as_tensor(item) if isinstance(item, np.ndarray) else item)
            dim += 0 if item is None else 1
            continue
        mask = as_tensor(item)
        if mask.buffer is None:
            raise TypeError("slope.getitem: a boolean mask inside a transformation gives a data-dependent shape; use "
                            "slope.where(mask, x, 0) instead")  # fmt: skip
        if mask.shape != x.shape[dim : dim + mask.ndim]:
            raise IndexError(f"slope.getitem: a mask of shape {mask.shape} does not fit shape {x.shape} at dim {dim}")
        if mask.ndim == 0:  # a 0-d mask adds a dimension of size 1 and masks it, as in PyTorch
            x = x.reshape((*x.shape[:dim], 1, *x.shape[dim:]))
        expanded.extend(as_tensor(n.astype(np.int64)) for n in np.nonzero(mask.numpy().reshape(mask.shape or (1,))))
        dim += max(mask.ndim, 1)
    items = expanded + [slice(None)] * (x.ndim - dim)
    bounds, flips, out_shape, advanced, dim = [], [], [], [], 0  # basic indexing: (start, stop, step) bounds, flips
    for item in items:
        if item is None:
            out_shape.append(1)
            continue
        size = x.shape[dim]
        if isinstance(item, Tensor) and (item.dtype.is_float or item.dtype == dtypes.bool_):
            raise IndexError(f"slope.getitem: tensors used as indices must be integers, got {item.dtype.name}")
        if isinstance(item, Tensor) and item.ndim == 0 and item.buffer is not None:
            item = int(item)  # a concrete 0-d index is an int (PyTorch's select): checked, moves no dimension
        if isinstance(item, Tensor):  # the whole dimension here; the gather below picks from it
            advanced.append((len(out_shape), dim, item))
            item = slice(None)
        if isinstance(item, slice):
            if item.step == 0:  # (Python's own error would not name getitem)
                raise ValueError(f"slope.getitem: slice step cannot be zero ({item} in dim {dim} of shape {x.shape})")
            out_shape.append(len(range(*item.indices(size))))
        elif not isinstance(item, (int, np.integer)):  # PyTorch's list of what can index
            raise IndexError("slope.getitem: only integers, slices, ellipsis (...), None and integer or bool tensors are "
                             f"valid indices, got {type(item).__name__}")  # fmt: skip
        elif not -size <= (position := int(item)) < size:
            raise IndexError(f"slope.getitem: index {position} is out of range for dimension {dim} of size {size}")
        else:
            item = slice(position % size, position % size + 1)  # one element, and no dimension in out_shape
        begin, end, stride = item.indices(size)
        if stride < 0:  # walk backwards: flip, then slice forwards
            flips.append(dim)
            begin, end, stride = size - 1 - begin, size - 1 - end, -stride
        bounds.append((begin, max(begin, end), stride))
        dim += 1
    x = ops.flip(x, tuple(flips)) if flips else x
    if any(bound != (0, n, 1) for bound, n in zip(bounds, x.shape)):
        x = ops.slice_(x, *zip(*bounds))  # starts, stops, steps
    x = x.reshape(tuple(out_shape))  # the ints' dimensions dropped, the Nones' added
    return _gather_advanced(x, advanced) if advanced else x


def _gather_advanced(x: Tensor, advanced: list) -> Tensor:
    positions = [p for p, _, _ in advanced]
    rest = [d for d in range(x.ndim) if d not in positions]
    for p, d, index in advanced:  # no checks where an index is empty, only of empty dimensions where the result is
        if all(i.numel() for _, _, i in advanced) and (0 not in [x.shape[r] for r in rest] or x.shape[p] == 0):
            check_indices("getitem", index, -x.shape[p], x.shape[p], f"dimension {d} of size {x.shape[p]}")
    stacked = stack(coerce("getitem", *[i for _, _, i in advanced], dtype=dtypes.int64), -1)  # (int64: -1 is the last)
    out = ops.gather_nd(x.permute((*positions, *rest)), stacked)
    spread = [p for p, _, i in advanced if i.ndim] or [0]  # 0-d indices (traced selects) separate none
    batch_ndim, lead = stacked.ndim - 1, sum(d < spread[0] for d in rest)
    perm = (*range(batch_ndim, batch_ndim + lead), *range(batch_ndim), *range(batch_ndim + lead, out.ndim))
    return out.permute(perm) if set(range(spread[0], spread[-1] + 1)) <= set(positions) and lead else out


def index_update(x: Any, index: Any, value: Any, mode: str = "set") -> Tensor:
    """A copy of x with value set (the last write wins where index repeats, as PyTorch) or added ("add") at x[index]."""
    x, index = as_tensor(x), index if isinstance(index, tuple) else (index,)  # (as getitem reads it)
    positions = getitem(ops.arange(x.numel()).reshape(x.shape), index)
    if mode == "add" and not x.dtype.is_float and (added := as_tensor(value).dtype).is_float:  # (0.9 was cast to 0)
        raise DTypeError(f"slope.index_update: cannot add {added.name} values into {x.dtype.name} x; cast first")
    if isinstance(value, (int, float)) and not x.dtype.is_float:  # checked, as PyTorch's x[index] = 300 (int8: raises)
        value = ops._python_value("index_update", value, x.dtype)
    value, shape = as_tensor(value, x.dtype), positions.shape
    if mode == "set" and set(value.shape[: value.ndim - len(shape)]) == {1}:  # leading 1s go, as in PyTorch's x[i] = v
        value = value.reshape(value.shape[value.ndim - len(shape) :])
    if value.ndim > len(shape) or any(v not in (1, n) for v, n in zip(value.shape[::-1], shape[::-1])):  # broadcasts?
        raise ShapeError(f"slope.index_update: a value of shape {value.shape} does not fit x[index] of shape {shape}")
    value, flat, target = broadcast_to(value, shape).reshape(-1), x.reshape(-1), positions.reshape((-1, 1))
    if mode == "add":
        return ops.scatter_nd(flat, target, value).reshape(x.shape)
    if mode != "set":
        raise ValueError(f"slope.index_update: mode must be 'set' or 'add', got {mode!r}")
    if any(isinstance(i, (list, tuple, range, np.ndarray, Tensor)) for i in index):
        n = target.shape[0]  # positions may repeat: keep each one's last
        if target.buffer is not None:
            last = np.isin(np.arange(n), n - 1 - np.unique(target.numpy()[::-1, 0], return_index=True)[1])
        else:  # traced: a write loses to any later one at its position (n * n comparisons)
            later = ops.arange(n).reshape((n, 1)) < ops.arange(n).reshape((1, n))
            last = logical_not(any_((target == target.reshape((1, n))) & later, 1))
        value = where(last, value, constant(-0.0 if x.dtype.is_float else 0, x.dtype, value.shape))  # v + -0.0: v
    written = ops.scatter_nd(constant(0, dtypes.int32, flat.shape), target, constant(1, dtypes.int32, value.shape)) > 0
    placed = ops.scatter_nd(constant(-0.0 if x.dtype.is_float else 0, x.dtype, flat.shape), target, value)
    return where(written, placed, flat).reshape(x.shape)


def _public(name: str, value: Any) -> bool:  # a public function defined here (not one imported)
    return inspect.isfunction(value) and value.__module__ == __name__ and not name.startswith("_")


registry: dict[str, Callable] = {name.rstrip("_"): f for name, f in list(globals().items()) if _public(name, f)}
registry.update(clamp=clip, astype=cast, concatenate=ops.cat, view=reshape, detach=ops.stop_gradient)
registry.update(true_divide=ops.div, divide=ops.div)  # (x / y is div: PyTorch's, integers divided as floats)


@hookimpl
def slope_procedures() -> dict[str, Callable]:
    """The core procedures, registered like any plugin's."""
    return registry
