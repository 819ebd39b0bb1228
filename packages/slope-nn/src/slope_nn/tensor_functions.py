"""General tensor functions PyTorch users look for (`torch.X` / `Tensor.X`), built from Slope's public API.

Registered as procedures through slope-nn's plugin, so each is `slope.NAME(...)` and `Tensor.NAME(...)`:

- comparisons under PyTorch's short names: `eq`, `ne`, `lt`, `le`, `gt`, `ge` (Slope's `equal`, `not_equal`, ...);
- `clone` (tensors are immutable: the same values, the gradient flows), `isfinite`, `type_as`, `to` (dtype, device,
  or another tensor's, as PyTorch's) and `cpu`;
- `masked_fill(x, mask, value)`, `index_select(x, dim, index)`, `narrow(x, dim, start, length)`;
- `cumprod(x, dim, dtype=None)`: left to right as PyTorch's kernel (operator `running_product`), gradients exact with zeros;
- `norm(x, p, dim, keepdim, dtype)`: torch.norm of vectors (and Frobenius), with PyTorch's gradients (custom JVP);
- `sort`, `argsort`, `topk`: ranks from pairwise comparisons (O(n^2) per row, see `sort`);
- `prod` and `cumsum` (with PyTorch's dtype=, which casts x first), `gather`, `split`, `chunk`, `roll`, `tril`,
  `triu`, `unflatten`, `repeat`, `linspace`, `expand_as`, and `tan`, `log2`, `log1p`, `exp2`, `reciprocal`, `amax`,
  `amin`, `argmax`, `argmin` (moved here from slope-core, whose source is at its line budget).
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Callable, NamedTuple, Sequence

import slope
from slope import Tensor
from slope.backend import checked_device, get_backend
from slope.operators import (
    _python_value,
    arange,
    as_float,
    as_tensor,
    broadcast_to,
    cast,
    cat,
    constant,
    equal,
    full,
    gather_nd,
    greater,
    greater_equal,
    ints,
    less,
    less_equal,
    max_,
    normalize_dim,
    normalize_dims,
    shape_args,
    slice_along,
    where,
)
from slope.procedures import (
    _dtype,
    _numbers,
    _positions,
    _reverse_order,
    _wide,
    check_indices,
    isnan,
    min_,
    not_equal,
    stack,
)

from .functional import checked_when_run
from .operators import _tensor, fail_if, running_product, take_along_dim

# ----------------------------------------------------------------------------------------------- small ones


def clone(x: Any) -> Tensor:
    """A copy of x (gradients flow through it): a concrete tensor gets its own buffer, so donating x leaves it."""
    x = _tensor(x, "clone")
    return slope.stop_gradient(x) if type(x) is Tensor else x  # (a traced one is itself: tracers are never donated)


def isfinite(x: Any) -> Tensor:
    """Where x is neither NaN nor +-inf (everywhere for integers and bools, as PyTorch)."""
    x = _tensor(x, "isfinite")
    if not x.dtype.is_float:
        return slope.full(x.shape, True, dtype=slope.bool_)
    return (x == x) & (x != math.inf) & (x != -math.inf)


def type_as(x: Any, other: Any) -> Tensor:
    """x cast to other's dtype."""
    return _tensor(x, "type_as").astype(_tensor(other, "type_as").dtype)


def to(x: Any, *args: Any, dtype: Any = None, device: str | None = None, non_blocking: bool = False,
       copy: bool = False) -> Tensor:  # fmt: skip
    """x in another dtype and/or on another device, as PyTorch's `x.to(dtype)`, `x.to(device, dtype)`, `x.to(other)`
    and `x.to(device=..., dtype=...)` (a string naming a device type: "cpu", "cuda", "cuda:1", the backend's)."""
    for arg in args:
        if isinstance(arg, Tensor):  # to(other): its dtype and device (a traced one has no device)
            dtype, device = arg.dtype, getattr(arg, "device", device)
        elif isinstance(arg, str) and arg.split(":")[0] in {"cpu", "cuda", *(d.split(":")[0] for d in slope.devices())}:
            device = arg  # (another string is a dtype's name: "complex64" is refused as a dtype)
        else:
            dtype = arg
    x = _tensor(x, "to")
    x = x if dtype is None else cast(x, dtype)
    x = clone(x) if copy else x  # (its own buffer: donating the original leaves it)
    if device is None:
        return x
    device = checked_device(get_backend(), device)  # (an absent device is an error, under jit too)
    return x if getattr(x, "device", device) == device else slope.tensor(x, device=device)


def cpu(x: Any) -> Tensor:
    """x on the CPU (`x.cpu()`, as PyTorch)."""
    return to(x, device="cpu")


def masked_fill(x: Any, mask: Any, value: Any) -> Tensor:
    """x with `value` (a number or a 0-d tensor, cast to x's dtype) where the bool `mask` (broadcasting) is True."""
    x, mask = _tensor(x, "masked_fill"), _tensor(mask, "masked_fill")
    if mask.dtype != slope.bool_:
        raise slope.DTypeError(
            f"slope.masked_fill: the mask must be bool, got {mask.dtype.name} of shape {mask.shape} (as in PyTorch)"
        )
    if isinstance(value, Tensor):
        if value.ndim != 0:
            raise ValueError(f"slope.masked_fill: value must be a number or a 0-d tensor, got shape {value.shape}")
        if value.buffer is not None:  # a concrete one must fit x's dtype, as PyTorch checks (inf into int64 fails)
            _python_value("masked_fill", value.item(), x.dtype)
        fill = value.astype(x.dtype)
    else:
        fill = slope.full((), _python_value("masked_fill", value, x.dtype), dtype=x.dtype)  # (checked: it must fit)
    return slope.where(mask, fill, x)


def gather(x: Any, dim: int, index: Any) -> Tensor:
    """PyTorch's gather: out[i][j] = x[index[i][j]][j] for dim 0 (and likewise for other dims)."""
    x, index = as_tensor(x), as_tensor(index)
    if not index.dtype.is_int:
        raise slope.DTypeError(f"slope.gather: index must hold integers, got {index.dtype.name} of shape {index.shape}")
    dim = normalize_dim("gather", dim, max(x.ndim, 1))  # PyTorch: a 0-d x or index as 1-d; an empty index unchecked
    if (x.ndim + index.ndim <= 1 or index.numel() == 0) and (x.ndim, index.ndim) != (1, 1):
        return gather(x.reshape(-1), 0, index.reshape(-1)).reshape(index.shape)
    if index.ndim != x.ndim or any(i > n for d, (i, n) in enumerate(zip(index.shape, x.shape)) if d != dim):
        raise slope.ShapeError(
            f"slope.gather: index of shape {index.shape} does not fit x of shape {x.shape} (dim {dim})"
        )
    check_indices("gather", index, 0, x.shape[dim], f"dimension {dim} of shape {x.shape}")
    index = cast(index, slope.int64)  # (the size in int8 wrapped: -1 into a dimension of 128 read x[0])
    index = where(index < 0, constant(x.shape[dim], slope.int64, index.shape), index)  # traced: an error when run
    return gather_nd(x, stack([index if d == dim else _positions(index.shape, d) for d in range(index.ndim)], -1))


def index_select(x: Any, dim: int, index: Any) -> Tensor:
    """The entries of x at `index` (a 1-d or 0-d int32/int64 tensor, each in [0, size)) along dim."""
    x, index = _tensor(x, "index_select"), _tensor(index, "index_select")
    if index.dtype not in (slope.int32, slope.int64):
        raise slope.DTypeError(f"slope.index_select: index must be int32 or int64, got {index.dtype.name}")
    if index.ndim > 1:
        raise IndexError(f"slope.index_select: index must be 1-d or 0-d, got shape {index.shape}")
    dim = normalize_dim("index_select", dim, x.ndim)
    size = x.shape[dim] if x.ndim else 1
    index = index.reshape((-1,)).astype(slope.int64)
    check_indices("index_select", index, 0, size, f"dimension {dim} of shape {x.shape}")
    if index.buffer is None:
        index = checked_when_run("index_select", index, size, f"dimension {dim} of shape {x.shape}")  # (traced)
    if x.ndim == 0:  # PyTorch: a 0-d x takes exactly one index, 0, and gives itself (gathered: a traced index other
        if index.shape[0] != 1:  # than 0 is then an error when run)
            raise IndexError(f"slope.index_select: a 0-d x takes exactly one index, got {index.shape[0]}")
        return take_along_dim(x.reshape((1,)), index, 0).reshape(())
    along = tuple(index.shape[0] if d == dim else 1 for d in range(x.ndim))
    return take_along_dim(x, index.reshape(along), dim)


def narrow(x: Any, dim: int, start: Any, length: int) -> Tensor:
    """x[..., start:start + length, ...] along dim (start negative counts from the end; a 0-d integer tensor start
    too, traced ones included: under jit, grad or vmap its range is checked as the program runs)."""
    x = _tensor(x, "narrow")
    if x.ndim == 0:
        raise IndexError("slope.narrow: expected a tensor with at least one dimension, got a 0-d tensor")
    dim = normalize_dim("narrow", dim, x.ndim)
    traced = isinstance(start, Tensor) and start.buffer is None
    if isinstance(start, Tensor):
        if start.ndim != 0 or not start.dtype.is_int:
            raise TypeError(f"slope.narrow: start must be an int or a 0-d integer tensor, got {start!r}")
        start = start if traced else int(start.item())
    (start,) = (start,) if traced else ints("narrow", start, "start")
    (length,) = ints("narrow", length, "length")
    size = x.shape[dim]
    if not traced and not -size <= start <= size:
        raise IndexError(
            f"slope.narrow: start {start} is out of range [-{size}, {size}] for dimension {dim} of {x.shape}"
        )
    if length < 0:
        raise ValueError(f"slope.narrow: length must be non-negative, got {length}")
    if traced:  # (was a TypeError; inside grad, a start computed from concrete tensors is traced too)
        return _narrow_at(x, dim, start, length)
    start = start + size if start < 0 else start
    if start + length > size:
        raise ValueError(f"slope.narrow: start {start} + length {length} exceeds dimension {dim} of size {size}")
    lo = tuple(start if d == dim else 0 for d in range(x.ndim))
    hi = tuple(start + length if d == dim else n for d, n in enumerate(x.shape))
    return slope.slice(x, lo, hi)


def _narrow_at(x: Tensor, dim: int, start: Tensor, length: int) -> Tensor:
    """narrow at a traced start: x gathered at start, ..., start + length - 1 along dim, after checks of the start
    that raise as the program runs (PyTorch's errors and narrow's eager messages)."""
    size, traced = x.shape[dim], "(the start is traced: checked as the program ran)"
    start = start.astype(slope.int64)
    start = where(start < 0, start + size, start)
    outside = fail_if((start < 0) | (start > size), f"slope.narrow: start is out of range [-{size}, {size}] for "
                      f"dimension {dim} of {x.shape} {traced}", IndexError)  # fmt: skip
    exceeds = f"slope.narrow: start + length {length} exceeds dimension {dim} of size {size} {traced}"
    beyond = fail_if(~outside & (start + length > size), exceeds)  # (after `outside`, whose error comes first)
    positions = slope.where(outside | beyond, 0, start) + slope.arange(length)
    return take_along_dim(x, positions.reshape(tuple(length if d == dim else 1 for d in range(x.ndim))), dim)


# ----------------------------------------------------------------------------------------------- cumprod


def _cast_first(x: Any, dtype: Any) -> tuple[Tensor, Any]:
    """x as a tensor cast to `dtype` (PyTorch's dtype= casts the input before the operation), and the result's dtype:
    `dtype`, else x's for floats and int64 for integers and bools (PyTorch's)."""
    x = as_tensor(x)
    if dtype is None:
        return x, x.dtype if x.dtype.is_float else slope.int64
    dtype = slope.dtypes.as_dtype(dtype)
    return cast(x, dtype), dtype


def prod(x: Any, dim: Any = None, keepdim: bool = False, *, dtype: Any = None) -> Tensor:
    """Product over dimensions (a tree of multiplications, so gradients stay exact with zeros); `dtype` casts x first."""
    x, out = _cast_first(x, dtype)
    x = x if x.dtype.is_float else cast(x, slope.int64)  # integers multiplied in int64 (wrapping as a narrower one)
    dims = normalize_dims("prod", dim, x.ndim, empty_means_all=True)  # (as sum's: () reduced nothing)
    kept = [d for d in range(x.ndim) if d not in dims]
    out_shape = tuple(1 if d in dims else n for d, n in enumerate(x.shape) if keepdim or d not in dims)
    reduced = math.prod(x.shape[d] for d in dims)  # not -1: that is ambiguous for empty tensors
    # float32 multiplied in float64 (a float32 tree of values near 1 rounded one way: 7e-4 off)
    x = cast(x, slope.float64 if x.dtype == slope.float32 else _wide(x.dtype)) if x.dtype.is_float else x
    x = x.permute((*kept, *dims)).reshape((*(x.shape[d] for d in kept), reduced))
    while x.shape[-1] > 1:  # neighbours multiplied (as in order: 1e30 * 1e-30 first, not 1e30 * 1e30 = inf)
        x = slope.pad(x, lo=(0,) * x.ndim, hi=(0,) * (x.ndim - 1) + (1,), value=1) if x.shape[-1] % 2 else x
        pairs = x.reshape((*x.shape[:-1], x.shape[-1] // 2, 2))
        x = pairs[..., 0] * pairs[..., 1]
    return cast(x.reshape(out_shape) if x.shape[-1] else full(out_shape, 1, x.dtype), out)  # (empty: 1)


# ----------------------------------------------------------------------------------------------- elementwise


def tan(x: Any) -> Tensor:
    """Tangent (float16/bfloat16 in float32, rounded once, as PyTorch: step by step, 2 ulps off for 22% of float16)."""
    x = as_float(x)
    wide = cast(x, _wide(x.dtype))
    return cast(slope.sin(wide) / slope.cos(wide), x.dtype)


def log2(x: Any) -> Tensor:
    """Base-2 logarithm (float16/bfloat16 in float32, rounded once), exact at powers of two (log2(8.0) was 2.99...)."""
    x = as_float(x)
    y = slope.log(cast(x, _wide(x.dtype))) / math.log(2)
    k = slope.round(y)
    return cast(y + slope.stop_gradient(where((2.0**k == cast(x, y.dtype)) & (k != y), k - y, 0.0)), x.dtype)


def log1p(x: Any) -> Tensor:
    """log(1 + x), exact for tiny x: log(u) + (x - (u - 1)) / u, u = 1 + x, where |x| < 0.5 (halves in float32)."""
    x = as_float(x)
    w = cast(x, _wide(x.dtype))
    t = where(slope.abs(w) >= 0.5, 0.0, w)  # where the correction is finite (no inf - inf, no 0 / 0), its gradient too
    series = t * (1.0 - t * (0.5 - t / 3.0))  # x where x * x is 0 (-0.0 too), with log1p's derivatives (d2 -1, not 0)
    return cast(where(w * w > 0.0, slope.log(w + 1.0) + (t - ((t + 1.0) - 1.0)) / (t + 1.0), series), x.dtype)


def exp2(x: Any) -> Tensor:
    """2 ** x, as pow: exp(x * ln 2) rounds x * ln 2 first (bfloat16 2 ** 100 was 27% off, float16's 0.3%)."""
    return 2.0 ** as_float(x)


def reciprocal(x: Any) -> Tensor:
    """1 / x."""
    return 1.0 / as_float(x)


# ----------------------------------------------------------------------------------------------- reductions


def amax(x: Any, dim: Any = None, keepdim: bool = False) -> Tensor:
    """Largest values over dims (a tensor dim is a dimension, never max's other operand)."""
    return max_(x, ints("amax", dim.tolist(), "dim") if isinstance(dim, Tensor) else dim, keepdim)


def amin(x: Any, dim: Any = None, keepdim: bool = False) -> Tensor:
    """Smallest values over dims (a tensor dim is a dimension, never min's other operand)."""
    return min_(x, ints("amin", dim.tolist(), "dim") if isinstance(dim, Tensor) else dim, keepdim)


def _arg_extreme(x: Any, dim: Any, keepdim: bool, name: str) -> Tensor:
    x = _numbers(name, as_tensor(x))
    dims = normalize_dims(name, None if dim is None else ints(name, [dim], "dim", count=1), x.ndim)
    out_shape = tuple(1 if d in dims else n for d, n in enumerate(x.shape) if keepdim or d not in dims)
    (dim,), values = (dims, x) if len(dims) == 1 else ((0,), x.reshape(-1))  # dim None, or a 0-d x: flattened
    values = values if name == "argmax" else _reverse_order(values)
    hit = values == max_(values, dim, keepdim=True)
    hit = hit | isnan(values) if values.dtype.is_float else hit  # a NaN is the extreme (PyTorch's first NaN)
    candidates = where(hit, _positions(values.shape, dim), values.shape[dim])  # past the end where no hit
    return min_(candidates, dim, keepdim=True).reshape(out_shape)


def argmax(x: Any, dim: Any = None, keepdim: bool = False) -> Tensor:
    """Index of the (first) largest element."""
    return _arg_extreme(x, dim, keepdim, "argmax")


def argmin(x: Any, dim: Any = None, keepdim: bool = False) -> Tensor:
    """Index of the (first) smallest element."""
    return _arg_extreme(x, dim, keepdim, "argmin")


def cumsum(x: Any, dim: int, *, dtype: Any = None) -> Tensor:
    """Running sum along a dimension (log-step scan of shifted adds; float16 and bfloat16 in float32, float32 in
    float64 as PyTorch's CPU kernel, its gradient too); `dtype` casts x first."""
    x, dtype = _cast_first(x, dtype)
    if dtype == slope.bool_:
        raise slope.DTypeError(f"slope.cumsum: dtype bool is not supported (as in PyTorch), x of shape {x.shape}")
    # (float32 in float64, rounded once: [1e8, 1, -1e8, 1, 1] summed in float32 gave [1e8, 1e8, 0, 0, 0] for PyTorch's
    # [1e8, 1e8, 1, 2, 3], and 84% of the prefixes of 1e7 normals were not the exact sum rounded; integers in int64:
    # exact, wrapping as PyTorch)
    wide = slope.float64 if dtype == slope.float32 else _wide(dtype)
    x = cast(x, wide if dtype.is_float else slope.int64)
    dim = normalize_dim("cumsum", dim, x.ndim)
    size = x.shape[dim] if x.ndim else 1
    for shift in (2**i for i in range(max(size - 1, 0).bit_length())):  # 1, 2, 4, ... below size
        lo = tuple(shift if d == dim else 0 for d in range(x.ndim))
        x = x + slope.pad(x, lo=lo, hi=tuple(-n for n in lo))  # x shifted by `shift` (a negative hi crops)
    return cast(x + 0.0 if dtype.is_float else x, dtype)  # (+0.0: a sum from +0.0 is never -0.0, as PyTorch's)


def cumprod(x: Any, dim: int, dtype: Any = None) -> Tensor:
    """Running product along dim (integers and bools as int64 unless dtype says), multiplied left to right in PyTorch's
    CPU kernel's accumulation dtype (float16/bfloat16 in float32, float32 in float64) and each output rounded, as that
    kernel: its bits, its infs, its inf * 0 = NaN. Gradients as PyTorch's, exact where x has zeros (no division)."""
    x = _tensor(x, "cumprod")
    if dtype is not None:  # x cast to it first; the result has it, an integer one too (PyTorch's)
        if (dtype := slope.dtypes.as_dtype(dtype)) == slope.bool_:
            raise slope.DTypeError(
                "slope.cumprod: dtype bool is not supported (as PyTorch: not implemented for 'Bool')"
            )
        x = x.astype(dtype)
    out = x.dtype if x.dtype.is_float or dtype is not None else slope.int64
    # (a log-step scan of products, before: it multiplied partial products that leave a zero out, which overflowed:
    # [0, 3, -1.797e308] gave [0, 0, nan] for PyTorch's [0, 0, -0], and [-M, -M, 0] gave 0 for its inf * 0 = NaN)
    wide = {slope.float16: slope.float32, slope.bfloat16: slope.float32, slope.float32: slope.float64}.get(out, out)
    x = x.astype(wide)
    dim = normalize_dim("cumprod", dim, x.ndim)
    if x.ndim == 0 or x.shape[dim] <= 1:
        return x.astype(out)
    return running_product(x, dim).astype(out)


# ----------------------------------------------------------------------------------------------- norm


def _norm_order(p: Any) -> float:
    """norm's p as a float (2 for "fro"), else an error naming the function."""
    if p == "fro":
        return 2.0
    if isinstance(p, str):
        raise ValueError(f"slope.norm: p must be 'fro' or a number, got {p!r} ('nuc' is not supported)")
    if isinstance(p, bool) or not isinstance(p, (int, float)):
        raise TypeError(f"slope.norm: p must be 'fro' or a number, got {type(p).__name__} {p!r}")
    return float(p)


def _vector_norm(a: Tensor, p: float, dims: tuple, keepdim: bool, single: bool) -> Tensor:
    """The p-norm of |x| (a) over dims, PyTorch's formulas: max / min for +-inf, the count of nonzeros for 0; `single`
    (one element reduced, see norm): |x| itself, as PyTorch (its square neither overflows nor underflows)."""
    if single:
        return a.sum(dims, keepdim)  # (the one element)
    if p == math.inf:
        return slope.amax(a, dims, keepdim)
    if p == -math.inf:
        return slope.amin(a, dims, keepdim)
    if p == 0:
        return (a != 0).astype(a.dtype).sum(dims, keepdim)
    if p == 1:
        return a.sum(dims, keepdim)
    if p == 2:
        return slope.sqrt((a * a).sum(dims, keepdim))
    return slope.pow(slope.pow(a, p).sum(dims, keepdim), 1.0 / p)


def _norm_tangent(x: Tensor, t: Tensor, norm: Tensor, p: float, dims: tuple, keepdim: bool, single: bool) -> Tensor:
    """PyTorch's derivative of the p-norm (norm_backward), in forward mode and written with the same operations, so
    that its own derivative (the Hessian) is PyTorch's too: NaN at a zero element for p < 2 (where the exact value is
    inf) and at the zero vector for p < 2; 0 where the norm is 0; for +-inf shared evenly among the elements at the
    extreme (a NaN element is the extreme and its sign 0, so the gradient is 0 there as in PyTorch)."""
    kept = norm if keepdim else norm.reshape(tuple(1 if d in dims else n for d, n in enumerate(x.shape)))
    zero = slope.zeros((), dtype=x.dtype)
    sign = slope.sign(x)
    if p == 0:
        return slope.zeros(norm.shape, dtype=x.dtype)
    if p == 1 or single:  # (one element: the norm is |x|)
        return (sign * t).sum(dims, keepdim)
    if math.isinf(p):
        at = ((slope.abs(x) == kept) | (slope.isnan(x) & slope.isnan(kept))).astype(x.dtype)
        return (sign * at * t).sum(dims, keepdim) / at.sum(dims, keepdim)
    if p < 1:  # sgn(x) |x|^(p-1) (0 where x is 0) times norm^(1-p), not masked where the norm is 0
        scaled = sign * slope.where(x == 0, zero, slope.pow(slope.abs(x), p - 1))
        return (scaled * t).sum(dims, keepdim) * slope.pow(norm, 1 - p)
    if p == 2:
        scaled = x
    elif p < 2:  # (not masked where x is 0: the derivative of |x|^(p-1) there is inf * 0, NaN, as in PyTorch)
        scaled = sign * slope.pow(slope.abs(x), p - 1)
    else:
        scaled = x * slope.pow(slope.abs(x), p - 2)
    power = norm if p == 2 else slope.pow(norm, p - 1)
    return slope.where(norm == 0, zero, (scaled * t).sum(dims, keepdim) / slope.where(norm == 0, 1.0, power))


def norm(x: Any, p: Any = "fro", dim: Any = None, keepdim: bool = False, dtype: Any = None) -> Tensor:
    """torch.norm of vectors: the p-norm over dim (None: all; "fro" is p=2, over 1 or 2 dims), p any number, inf,
    -inf or 0; float16/bfloat16 in float32; gradients PyTorch's (0 at the zero vector)."""
    x = _tensor(x, "norm")
    if not x.dtype.is_float:
        raise slope.DTypeError(f"slope.norm: expected a float tensor, got {x.dtype.name} of shape {x.shape}")
    if dtype is not None:
        dtype = slope.dtypes.as_dtype(dtype)
        if not dtype.is_float or slope.dtypes.promote(x.dtype, dtype) != dtype:
            raise slope.DTypeError(f"slope.norm: x of {x.dtype.name} does not convert to dtype {dtype.name} without "
                                   "narrowing (as PyTorch requires)")  # fmt: skip
        x = x.astype(dtype)
    order = _norm_order(p)
    dims = normalize_dims("norm", dim, x.ndim, empty_means_all=True)
    if p == "fro" and dim is not None and not isinstance(dim, int) and len(dims) > 2:
        raise ValueError(f"slope.norm: the Frobenius norm takes 1 or 2 dims, got {dim!r}")
    if (order < 0 or math.isinf(order)) and math.prod(x.shape[d] for d in dims) == 0 and x.ndim:
        raise ValueError(
            f"slope.norm: the {p} norm of an empty reduction has no identity (shape {x.shape}, dims {dims})"
        )
    out = x.dtype
    wide = x.astype(slope.float32) if out in (slope.float16, slope.bfloat16) else x
    # PyTorch reduces a single element to |x|, except a 0-d x given a dim (there: the formula, whose square may
    # underflow to 0)
    given = dim is not None and not (isinstance(dim, (tuple, list)) and not dim)
    single = order != 0 and math.prod(x.shape[d] for d in dims) == 1 and not (x.ndim == 0 and given)

    @slope.custom_jvp
    def p_norm(v: Tensor) -> Tensor:
        return _vector_norm(slope.abs(v), order, dims, keepdim, single)

    @p_norm.defjvp
    def p_norm_jvp(primals: tuple, tangents: tuple) -> tuple:
        (v,), (t,) = primals, tangents
        result = p_norm(v)
        return result, _norm_tangent(v, t, result, order, dims, keepdim, single)

    return p_norm(wide).astype(out)


# ----------------------------------------------------------------------------------------------- sorting


class SortResult(NamedTuple):
    """(values, indices), as PyTorch's torch.return_types.sort / topk."""

    values: Tensor
    indices: Tensor


def _ranks(x: Tensor, descending: bool) -> Tensor:
    """Each element's position in the sorted order of the last dimension (NaN largest, ties by index): the count of
    elements that come before it, from an (..., n, n) comparison."""
    n = x.shape[-1]
    a, b = x.unsqueeze(-1), x.unsqueeze(-2)  # a: element i (rows), b: element j (columns)
    if x.dtype.is_float:
        nan_a, nan_b = slope.isnan(a), slope.isnan(b)
        if descending:
            first = (b > a) | (nan_b & ~nan_a)
        else:
            first = (b < a) | (nan_a & ~nan_b)
        tied = (a == b) | (nan_a & nan_b)
    elif x.dtype == slope.bool_:  # False before True, in logic (a cast to int8 failed on backends without int8)
        first, tied = (b & ~a) if descending else (a & ~b), a == b
    else:
        first, tied = (b > a) if descending else (b < a), a == b
    positions = slope.arange(n)
    earlier = positions.reshape((1, n)) < positions.reshape((n, 1))  # [i, j]: j < i
    return (first | (tied & earlier)).astype(slope.int64).sum(-1)


def _order(x: Tensor, descending: bool) -> Tensor:
    """The indices that sort the last dimension (int64)."""
    n = x.shape[-1]
    ranks = _ranks(x, descending)
    placed = ranks.unsqueeze(-2) == slope.arange(n).reshape((n, 1))  # [k, i]: element i goes to place k
    return (placed.astype(slope.int64) * slope.arange(n)).sum(-1)


def _sorted(name: str, x: Any, dim: int, descending: bool) -> SortResult:
    x = _tensor(x, name)
    if not isinstance(descending, bool):
        raise TypeError(f"slope.{name}: descending must be a bool, got {type(descending).__name__}")
    dim = normalize_dim(name, dim, x.ndim)
    if x.ndim == 0:
        return SortResult(x, slope.zeros((), dtype=slope.int64))
    moved = x.transpose(dim, -1)
    indices = _order(moved, descending) if moved.shape[-1] else slope.zeros(moved.shape, dtype=slope.int64)
    values = take_along_dim(moved, indices, -1)
    return SortResult(values.transpose(dim, -1), indices.transpose(dim, -1))


def sort(x: Any, dim: int = -1, descending: bool = False, *, stable: bool = False) -> SortResult:
    """(values, indices) of x sorted along dim, NaN largest, ties in index order (stable whatever `stable` says).

    Cost: ranks from all pairwise comparisons, O(n^2) time and memory per row of n (fine up to a few thousand), then a
    gather, which carries the gradient to the values; it runs under jit, vmap and grad on every backend."""
    if not isinstance(stable, bool):
        raise TypeError(f"slope.sort: stable must be a bool, got {type(stable).__name__}")
    return _sorted("sort", x, dim, descending)


def argsort(x: Any, dim: int = -1, descending: bool = False, *, stable: bool = False) -> Tensor:
    """The indices that sort x along dim (int64), as `sort(...).indices`; O(n^2) per row of n."""
    if not isinstance(stable, bool):
        raise TypeError(f"slope.argsort: stable must be a bool, got {type(stable).__name__}")
    return _sorted("argsort", x, dim, descending).indices


def topk(x: Any, k: int, dim: int = -1, largest: bool = True, sorted: bool = True) -> SortResult:  # noqa: A002
    """(values, indices) of the k largest (or smallest) along dim, NaN largest, in sorted order; O(n^2) per row."""
    x = _tensor(x, "topk")
    if x.dtype == slope.bool_:
        raise slope.DTypeError(f"slope.topk: expected numbers, got a bool tensor of shape {x.shape} (as PyTorch)")
    (k,) = ints("topk", k, "k")
    dim = normalize_dim("topk", dim, x.ndim)
    size = x.shape[dim] if x.ndim else 1
    if not 0 <= k <= size:
        raise IndexError(f"slope.topk: k={k} is out of range for dimension {dim} of size {size} (shape {x.shape})")
    values, indices = _sorted("topk", x, dim, bool(largest))
    if x.ndim == 0:
        return SortResult(values, indices)
    return SortResult(narrow(values, dim, 0, k), narrow(indices, dim, 0, k))


# ----------------------------------------------------------------------------------------------- shapes


def split(x: Any, split_size_or_sections: Any, dim: int = 0) -> list[Tensor]:
    """x cut along dim into pieces of a size (the last may be smaller) or of the given sizes."""
    x = as_tensor(x)
    dim = normalize_dim("split", dim, x.ndim, needs_dim=True)
    size = x.shape[dim]
    if isinstance(split_size_or_sections, (tuple, list)):
        sections = list(ints("split", split_size_or_sections, "sections", 0))
        if sum(sections) != size:
            raise slope.ShapeError(
                f"slope.split: sections {sections} do not add up to dimension {dim} of shape {x.shape}"
            )
    else:
        (step,) = ints("split", split_size_or_sections, "split size", 1 if size else 0)
        sections = [min(step, size - start) for start in range(0, size, step)] if size else [0]  # torch: 1 empty
    offsets = [0, *itertools.accumulate(sections)]
    return [slice_along(x, dim, start, stop) for start, stop in zip(offsets, offsets[1:])]


def chunk(x: Any, chunks: int, dim: int = 0) -> list[Tensor]:
    """x cut into `chunks` nearly equal pieces along dim."""
    x, (chunks,) = as_tensor(x), ints("chunk", chunks, "the number of chunks", 1)
    d = normalize_dim("chunk", dim, x.ndim, needs_dim=True)
    return split(x, -(-x.shape[d] // chunks) if x.shape[d] else [0] * chunks, dim)  # empty: `chunks` empty pieces


def roll(x: Any, shifts: Any, dims: Any = None) -> Tensor:
    """x with elements shifted circularly along dims (flattened when dims is None)."""
    x = as_tensor(x)
    if dims is None:
        return roll(x.reshape(-1), shifts, 0).reshape(x.shape)
    shifts, dims = ints("roll", shifts, "shifts"), ints("roll", dims, "dims")
    if len(shifts) != len(dims):
        raise slope.ShapeError(f"slope.roll: shifts {shifts} and dims {dims} must have one length")
    for shift, dim in zip(shifts, dims):
        dim = normalize_dim("roll", dim, x.ndim, needs_dim=True)
        size = x.shape[dim]
        if size and shift % size:
            x = cat(split(x, [size - shift % size, shift % size], dim)[::-1], dim)  # the tail, then the head
    return x


def _triangle(x: Any, diagonal: int, lower: bool) -> Tensor:
    x, (diagonal,) = as_tensor(x), ints("tril" if lower else "triu", diagonal, "diagonal", count=1)
    if x.ndim < 2:
        name = "tril" if lower else "triu"
        raise slope.ShapeError(f"slope.{name}: expected at least 2 dimensions, got shape {x.shape}")
    above = _positions(x.shape[-2:], 1) - _positions(x.shape[-2:], 0)  # column - row: how far above the diagonal
    return where((above <= diagonal) if lower else (above >= diagonal), x, constant(0, x.dtype, x.shape))


def tril(x: Any, diagonal: int = 0) -> Tensor:
    """The lower triangle of the last two dimensions (others zeroed)."""
    return _triangle(x, diagonal, True)


def triu(x: Any, diagonal: int = 0) -> Tensor:
    """The upper triangle of the last two dimensions (others zeroed)."""
    return _triangle(x, diagonal, False)


def unflatten(x: Any, dim: int, sizes: Sequence[int]) -> Tensor:
    """x with one dimension split into sizes."""
    x = as_tensor(x)
    dim, sizes = normalize_dim("unflatten", dim, x.ndim, needs_dim=True), ints("unflatten", sizes, "sizes")
    known = math.prod(s for s in sizes if s != -1)  # -1 is inferred from dimension dim alone (not from x.numel())
    sizes = tuple(x.shape[dim] // known if s == -1 and known and sizes.count(-1) == 1 else s for s in sizes)
    if not sizes or math.prod(sizes) != x.shape[dim] or min(sizes, default=0) < 0:  # PyTorch refuses sizes ()
        raise slope.ShapeError(f"slope.unflatten: sizes {sizes} do not multiply to dimension {dim} of shape {x.shape}")
    return x.reshape((*x.shape[:dim], *sizes, *x.shape[dim + 1 :]))


def repeat(x: Any, *sizes: Any) -> Tensor:
    """x tiled sizes[i] times along each dimension (PyTorch's repeat)."""
    x, sizes = as_tensor(x), shape_args("repeat", sizes, 0)
    if len(sizes) < x.ndim:
        raise slope.ShapeError(f"slope.repeat: {len(sizes)} repeats given for a tensor of shape {x.shape}")
    x = x.reshape((1,) * (len(sizes) - x.ndim) + x.shape)
    interleaved = tuple(v for s in x.shape for v in (1, s))
    expanded = tuple(v for r, s in zip(sizes, x.shape) for v in (r, s))
    return x.reshape(interleaved).expand(expanded).reshape(tuple(r * s for r, s in zip(sizes, x.shape)))


def expand_as(x: Any, other: Tensor) -> Tensor:
    """x broadcast to other's shape."""
    return broadcast_to(as_tensor(x), as_tensor(other).shape)


# ----------------------------------------------------------------------------------------------- creation


def linspace(start: float, end: float, steps: int, dtype: Any = None) -> Tensor:
    """`steps` evenly spaced values from start to end inclusive."""
    dtype, (steps,) = _dtype(dtype), ints("linspace", steps, "steps", 0, 1)
    if dtype == slope.bool_ and steps > 1:
        raise slope.DTypeError("slope.linspace: bool is not a dtype to count in (as in PyTorch)")
    if steps <= 1:
        return full((steps,), _python_value("linspace", start, dtype) if steps else 0, dtype)
    wide = dtype if dtype.is_float else slope.float64  # integers counted in float64 (exact to 2**53), truncated
    start, end = (constant(_python_value("linspace", v, dtype), wide) for v in (start, end))  # PyTorch's: ends
    i, step = arange(steps, dtype=wide), (end - start) / (steps - 1)  # checked and rounded, the second half
    return cast(where(i < steps // 2, start + step * i, end - step * (steps - 1 - i)), dtype)  # counted from end


procedures: dict[str, Callable] = {
    "eq": equal,
    "ne": not_equal,
    "lt": less,
    "le": less_equal,
    "gt": greater,
    "ge": greater_equal,
    **{
        fn.__name__: fn
        for fn in (
            clone,
            isfinite,
            type_as,
            to,
            cpu,
            masked_fill,
            gather,
            index_select,
            narrow,
            prod,
            cumsum,
            cumprod,
            norm,
            sort,
            argsort,
            topk,
        )
    },
    **{fn.__name__: fn for fn in (split, chunk, roll, tril, triu, unflatten, repeat, linspace, expand_as)},
    **{fn.__name__: fn for fn in (tan, log2, log1p, exp2, reciprocal, amax, amin, argmax, argmin)},
}
