"""The operators slope-nn adds to Slope: `erf`, `log_softmax`, `softmax`, `gelu`, `layer_norm`, `layer_norm_rstd`,
`relu`, `max_pool` and the indexing operators max pooling is differentiated with, each with its shape inference, JVP,
transpose and batching rules and a procedure for backends without them.

- `erf(x)`: the error function (the exact gelu); backends translate it where they have a kernel (onnxruntime's Erf).
- `log_softmax(x, dim)`: one stable kernel where a backend has it (onnxruntime's LogSoftmax); its derivative reads
  only its output.
- `softmax(x, dim)`: likewise one kernel (onnxruntime's Softmax) whose derivative y * (t - sum(y * t)) reads only its
  output: the attention weights of a transformer take one pass forward and four back instead of eleven.
- `layer_norm(x, eps)` and `layer_norm_rstd(x, eps)`: x normalised over its last dimension, and 1 / sqrt(var + eps)
  (kept as a dimension of size 1). One onnxruntime LayerNormalization node gives both, so a training step normalises
  in one pass and its gradient r * (t - mean(t) - y * mean(y * t)) reads the output and the statistic (no backend
  has a LayerNorm-gradient kernel outside training builds).
- `gelu(x, approximate)`: PyTorch's gelu, one kernel where a backend has it (onnxruntime's Gelu, exact form); its
  derivative Phi(x) + x phi(x) is computed from x (no backend has a GELU-gradient kernel outside training builds).

- `relu(x)`: max(x, 0) as PyTorch defines it: NaN stays NaN, the derivative at 0 is 0. Its derivative reads the
  output, not the input, so a backend may fuse the ReLU into what produced its input (onnxruntime's FusedConv).
- `max_pool(x, kernel_size, stride, padding, dilation)`: the maximum of each window of the trailing dimensions. Its
  derivative picks the tangent at each window's arg-max (the first maximum on ties, as PyTorch does), which
  `max_pool_argmax` finds, with `take_along_dim`; in reverse mode that becomes `scatter_add`, which routes each
  cotangent to its arg-max (and adds where windows overlap).
- `take_along_dim(x, index, dim)` and `scatter_add(x, dim, index, src)` are PyTorch's (on index tensors of the
  shape of the result / of src); they are each other's transposes. The operators take indices in [-size, size),
  negative ones counted from the end; scatter_add's call refuses negative ones, as PyTorch's does. `unique_indices=True` promises that no index
  repeats along `dim` (non-overlapping windows), so a backend may write instead of add.
- `fail_if(failed, message, error)` (not registered: slope-nn's functions bind it) raises `error(message)` where an
  element of the bools `failed` is true, as the program runs: the checks of traced values that name their function.

They use only Slope's public API, as a third-party plugin would.
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Any, Callable

import numpy as np

import slope
from slope import Aval, Operator, Tensor
from slope.operator import batch_to_front, move_axis
from slope.operators import Unary, ints, normalize_dim
from slope.procedures import _centered, check_indices


def _tensor(x: Any, name: str | None = None) -> Tensor:
    """x as a tensor (NumPy arrays, numbers and nested lists converted); with a name, a TypeError naming the function."""
    if isinstance(x, Tensor):
        return x
    try:
        return slope.tensor(x)
    except (TypeError, ValueError) as error:
        if name is None:
            raise
        raise TypeError(f"slope.{name}: expected a tensor, got {type(x).__name__} {x!r} ({error})") from None


def lowest(dtype: slope.DType) -> Any:
    """The smallest value of a dtype (-inf for floats): the padding of max pooling."""
    return -math.inf if dtype.is_float else int(np.iinfo(dtype.numpy).min)


# ----------------------------------------------------------------------------------------------- relu


class Relu(Operator):
    """max(x, 0): NaN propagates, the derivative is 0 at 0 (PyTorch's relu) and at NaN (PyTorch's: 1)."""

    name = "relu"

    def __call__(self, x: Any) -> Tensor:
        return slope.bind(self, _tensor(x))

    def infer(self, x: Aval) -> Aval:
        if x.dtype == slope.bool_:
            raise self.dtype_error(f"expected a tensor of numbers, got bool of shape {x.shape}")
        return x

    def jvp(self, primals: list, tangents: list) -> tuple[list, list]:
        out = relu(primals[0])
        tangent = tangents[0]
        # `out > 0` is `x > 0`, NaN included (false for both); reading the output leaves the input free to fuse.
        # (PyTorch's threshold_backward passes the tangent at NaN: `out <= 0` would, but slope-onnx recognises this
        # form behind a max pool, a quarter of the CNN step's mask work: README, Differences)
        return [out], [slope.where(out > 0, tangent, slope.zeros_like(tangent))]

    def vmap(self, axis_size: int, args: list, dims: list) -> tuple[list, list]:
        return [relu(args[0])], [dims[0]]

    def procedure(self, x: Tensor) -> Tensor:
        return slope.where(x < 0, slope.zeros_like(x), x)  # NaN < 0 is false: NaN stays


_HALVES = (slope.float16, slope.bfloat16)


def _tangent_in_float32(jvp: Callable) -> Callable:
    """A jvp rule that, for float16 and bfloat16, runs in float32 and rounds its output and tangent once, as PyTorch's
    backward kernels (step by step in the half dtype, gelu's derivative times a loss-scaled cotangent came out 0
    below -4.3, layer_norm's cancelling elements 0). softmax's rules read their rounded output instead, as PyTorch."""

    @functools.wraps(jvp)
    def rule(self: Operator, primals: list, tangents: list, **params: Any) -> tuple[list, list]:
        x = primals[0]
        if x.dtype not in _HALVES:
            return jvp(self, primals, tangents, **params)
        (out,), (tangent,) = jvp(self, [x.astype(slope.float32)], [tangents[0].astype(slope.float32)], **params)
        return [out.astype(x.dtype)], [tangent.astype(x.dtype)]  # (the op's own result: it computes in float32 too)

    return rule


class LogSoftmax(Operator):
    """x - logsumexp(x) along one dimension. An operator because backends have one stable kernel for it (ONNX
    LogSoftmax), and because its derivative reads only the output: t - sum(softmax(x) * t). `dtype` (PyTorch's) casts
    the input to it first: float16 input with dtype=float32 gives float32 results, and the gradient comes back in float16."""

    name = "log_softmax"

    def __call__(self, x: Any, dim: int = -1, dtype: Any = None) -> Tensor:
        x = _tensor(x)
        if dtype is not None:  # PyTorch's: the input is cast to dtype first (a float16 input's softmax in float32)
            x = x.astype(self._float_dtype(dtype))
        x = x if x.dtype.is_float else x.astype(slope.dtypes.default_float)
        return slope.bind(self, x, dim=normalize_dim(self.name, dim, x.ndim))

    def _float_dtype(self, dtype: Any) -> slope.DType:
        """The dtype= argument as a floating-point DType, else a DTypeError naming the function."""
        try:
            wanted = slope.dtypes.as_dtype(dtype)
        except TypeError:
            wanted = None
        if wanted is None or not wanted.is_float:
            given = wanted.name if wanted is not None else f"{type(dtype).__name__} {dtype!r}"
            raise self.dtype_error(f"dtype must be a floating-point dtype (the input is cast to it first), got {given}")
        return wanted

    def infer(self, x: Aval, *, dim: int) -> Aval:
        if not x.dtype.is_float:
            raise self.dtype_error(f"expected a floating-point tensor, got {x.dtype.name} of shape {x.shape}")
        if not 0 <= dim < max(x.ndim, 1):
            raise self.shape_error(f"dimension {dim} is out of range for shape {x.shape}")
        return x

    def jvp(self, primals: list, tangents: list, *, dim: int) -> tuple[list, list]:
        out = (log_softmax if self.name == "log_softmax" else softmax)(primals[0], dim)
        if out.dtype not in _HALVES:
            return [out], [self.tangent(out, tangents[0], dim)]
        # from the rounded output, in float32, rounded once, as PyTorch's backward kernels (step by step in float16
        # the terms cancelled: the gradient [-0.000244, 0.000244] came out as [0.0, 0.000488])
        wide = self.tangent(out.astype(slope.float32), tangents[0].astype(slope.float32), dim)
        return [out], [wide.astype(out.dtype)]

    @staticmethod
    def tangent(out: Tensor, tangent: Tensor, dim: int) -> Tensor:
        """log_softmax's tangent from its output: t - sum(softmax(x) * t)."""
        return tangent - (slope.exp(out) * tangent).sum(dim, keepdim=True)

    def vmap(self, axis_size: int, args: list, dims: list, *, dim: int) -> tuple[list, list]:
        function, x = log_softmax if self.name == "log_softmax" else softmax, move_axis(args[0], dims[0], 0)
        if x.ndim == 1:  # 0-d examples (dim 0): each is a row of one
            return [function(x.reshape((axis_size, 1)), 1).reshape((axis_size,))], [0]
        return [function(x, dim + 1)], [0]

    def procedure(self, x: Tensor, *, dim: int) -> Tensor:
        if x.dtype in _HALVES:  # in float32, rounded once: as the onnxruntime and iree kernels (and PyTorch)
            return self.procedure(x.astype(slope.float32), dim=dim).astype(x.dtype)
        shifted = x - shift_for_exp(x, dim)  # a row of only -inf gives NaN, as in PyTorch
        return shifted - slope.log(slope.exp(shifted).sum(dim, keepdim=True))


class Softmax(LogSoftmax):
    """exp(x) normalised to sum to 1 along one dimension. An operator because backends have one kernel for it (ONNX
    Softmax), and because its derivative reads only the output: y * (t - sum(y * t))."""

    name = "softmax"

    @staticmethod
    def tangent(out: Tensor, tangent: Tensor, dim: int) -> Tensor:
        """softmax's tangent from its output: y * (t - sum(y * t))."""
        return out * (tangent - (out * tangent).sum(dim, keepdim=True))

    def procedure(self, x: Tensor, *, dim: int) -> Tensor:
        if x.dtype in _HALVES:  # (as log_softmax's)
            return self.procedure(x.astype(slope.float32), dim=dim).astype(x.dtype)
        e = slope.exp(x - shift_for_exp(x, dim))  # a row of only -inf gives NaN, as in PyTorch
        return e / e.sum(dim, keepdim=True)


class _LastDimNorm(Operator):
    """Shared by layer_norm and layer_norm_rstd: a float tensor (integers promote), eps, the last dimension."""

    def __call__(self, x: Any, *positional: Any, eps: float = 1e-5) -> Tensor:
        """x normalised over its last dimension: `(x, eps)`, eps a float given by position or by name."""
        if len(positional) > 1 or positional and isinstance(positional[0], numbers.Integral):
            eps = positional  # (PyTorch's position of normalized_shape: an int there is a size, not an eps;
        elif positional:  # layer_norm(x, 4) normalised with eps 4, silently)
            eps = positional[0]
        if isinstance(eps, (bool, tuple)) or not isinstance(eps, numbers.Real):
            given = f"got {type(eps).__name__} {eps!r}; slope.{self.name}(x, eps) normalises the last dimension"
            raise TypeError(f"slope.{self.name}: eps must be a float, {given} (nn.LayerNorm takes normalized_shape)")
        x = _tensor(x)
        x = x if x.dtype.is_float else x.astype(slope.dtypes.default_float)
        if x.ndim == 0:
            raise slope.ShapeError(f"slope.{self.name}: expected at least one dimension to normalise, got a 0-d tensor")
        return slope.bind(self, x, eps=float(eps))

    def infer(self, x: Aval, *, eps: float) -> Aval:
        if not x.dtype.is_float:
            raise self.dtype_error(f"expected a floating-point tensor, got {x.dtype.name} of shape {x.shape}")
        if x.ndim == 0:
            raise self.shape_error("expected at least one dimension to normalise, got a 0-d tensor")
        return x

    def vmap(self, axis_size: int, args: list, dims: list, *, eps: float) -> tuple[list, list]:
        return [self(move_axis(args[0], dims[0], 0), eps)], [0]  # the last dimension stays the last


def _centered_and_rstd(x: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """x - mean and 1 / sqrt(var + eps), in float32 for float16 and bfloat16 (as PyTorch's kernels), in x's dtype."""
    narrow = x.dtype in (slope.float16, slope.bfloat16)
    wide = x.astype(slope.float32) if narrow else x
    centered = _centered(wide, -1)[1]
    rstd = overflow_to_nan((centered * centered).mean(-1, keepdim=True), eps)
    return (centered.astype(x.dtype), rstd.astype(x.dtype)) if not narrow else (centered, rstd)


def overflow_to_nan(variance: Tensor, eps: float) -> Tensor:
    """1 / sqrt(variance + eps), NaN where the variance overflowed: rstd 0 would make the row all 0s, a wrong result
    that looks right (PyTorch gives NaN or 0s, by the values; onnxruntime's float32 LayerNormalization kernel still
    gives 0s: the README's Differences).
    It costs a subtraction and an addition per row (variance - variance: 0, or NaN for inf), where the true values
    would cost a pass over x."""
    return (variance + eps).rsqrt() + (variance - variance)


class LayerNormOp(_LastDimNorm):
    """(x - mean) / sqrt(var + eps) over the last dimension (biased variance, as PyTorch's layer_norm)."""

    name = "layer_norm"

    @_tangent_in_float32
    def jvp(self, primals: list, tangents: list, *, eps: float) -> tuple[list, list]:
        x, t = primals[0], tangents[0]
        y, r = layer_norm(x, eps), layer_norm_rstd(x, eps)
        return [y], [r * (t - t.mean(-1, keepdim=True) - y * (y * t).mean(-1, keepdim=True))]

    def procedure(self, x: Tensor, *, eps: float) -> Tensor:
        centered, rstd = _centered_and_rstd(x, eps)
        return (centered * rstd + 0.0).astype(x.dtype)  # + 0.0: no -0.0, as PyTorch's kernel (x * scale + bias)


class LayerNormRstd(_LastDimNorm):
    """1 / sqrt(var + eps) over the last dimension, kept as a dimension of size 1 (layer_norm's statistic)."""

    name = "layer_norm_rstd"

    def infer(self, x: Aval, *, eps: float) -> Aval:
        super().infer(x, eps=eps)
        return Aval((*x.shape[:-1], 1), x.dtype)

    @_tangent_in_float32
    def jvp(self, primals: list, tangents: list, *, eps: float) -> tuple[list, list]:
        x, t = primals[0], tangents[0]
        y, r = layer_norm(x, eps), layer_norm_rstd(x, eps)
        return [r], [-(r * r) * (y * t).mean(-1, keepdim=True)]

    def procedure(self, x: Tensor, *, eps: float) -> Tensor:
        return _centered_and_rstd(x, eps)[1].astype(x.dtype)


_SQRT_HALF = 1 / math.sqrt(2)
_TANH_SCALE = math.sqrt(2 / math.pi)


class Gelu(Operator):
    """Gaussian error linear unit: x * Phi(x) (approximate="none", with erf) or PyTorch's tanh approximation."""

    name = "gelu"

    def __call__(self, x: Any, approximate: str = "none") -> Tensor:
        x = _tensor(x)
        x = x if x.dtype.is_float else x.astype(slope.dtypes.default_float)
        if approximate not in ("none", "tanh"):
            raise ValueError(f"slope.gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
        return slope.bind(self, x, approximate=approximate)

    def infer(self, x: Aval, *, approximate: str) -> Aval:
        if not x.dtype.is_float:
            raise self.dtype_error(f"expected a floating-point tensor, got {x.dtype.name} of shape {x.shape}")
        return x

    @_tangent_in_float32
    def jvp(self, primals: list, tangents: list, *, approximate: str) -> tuple[list, list]:
        x = primals[0]
        return [gelu(x, approximate)], [tangents[0] * gelu_derivative(x, approximate)]

    def vmap(self, axis_size: int, args: list, dims: list, *, approximate: str) -> tuple[list, list]:
        return [gelu(args[0], approximate)], [dims[0]]

    def procedure(self, x: Tensor, *, approximate: str) -> Tensor:
        if x.dtype in (slope.float16, slope.bfloat16):  # in float32 and rounded once, as PyTorch: in float16 1 + erf
            return self.procedure(x.astype(slope.float32), approximate=approximate).astype(x.dtype)  # cancels (-3: 8%)
        if approximate == "tanh":  # x (1 + tanh u) / 2 as x e / (1 + e), e = exp(2u), below 0: 1 + tanh u cancelled
            inner = _TANH_SCALE * (x + 0.044715 * x * x * x)  # (iree's float16 results up to 6 ulps off near -4)
            e = slope.exp(-2.0 * slope.abs(inner))
            return x * (slope.where(inner < 0, e, 1.0) / (1.0 + e))
        return 0.5 * x * (1.0 + erf(x * _SQRT_HALF))


def gelu_derivative(x: Tensor, approximate: str = "none") -> Tensor:
    """d gelu / dx: Phi(x) + x phi(x), or the tanh approximation's derivative (NaN at +-inf, as PyTorch's); float16
    and bfloat16 in float32, rounded once."""
    if x.dtype in (slope.float16, slope.bfloat16):
        return gelu_derivative(x.astype(slope.float32), approximate).astype(x.dtype)
    if approximate == "tanh":
        inner = _TANH_SCALE * (x + 0.044715 * x * x * x)
        slope_of_inner = _TANH_SCALE * (1.0 + (3 * 0.044715) * (x * x))
        # t = tanh(inner) from e = exp(-2 |inner|), which never overflows: 1 - t * t as 4 e / (1 + e)^2, no cancellation
        # where t rounds to +-1, and (1 + t) / 2 as e / (1 + e) below 0 (1 + tanh(-8) in float32 kept 2 bits, iree's
        # none). A `where` on the sign, not abs, whose derivative at 0 is 0 (the second derivative at x = 0 came out
        # half of sqrt(2 / pi)). Near 0, tanh itself: the derivatives of the quotients in e cancel there (the third
        # derivative at x = 1e-300 was 4e-301 for -1.6e-300), tanh's (1 - t * t) do not.
        negative = inner < 0
        e = slope.exp(slope.where(negative, 2.0 * inner, -2.0 * inner))
        near_zero = (inner > -0.5) & (inner < 0.5)
        t = slope.tanh(slope.where(near_zero, inner, 0.0))
        half_one_plus_t = slope.where(near_zero, 0.5 + 0.5 * t, slope.where(negative, e, 1.0) / (1.0 + e))
        one_minus_t_squared = slope.where(near_zero, 1.0 - t * t, 4.0 * e / ((1.0 + e) * (1.0 + e)))
        return half_one_plus_t + (0.5 * x) * one_minus_t_squared * slope_of_inner
    scaled = x * _SQRT_HALF
    # 0.5 + 0.5 erf(x / sqrt 2) + x exp(-x^2 / 2) / sqrt(2 pi), in nine elementwise passes (1 / sqrt(2 pi) goes
    # into the exponent, which also spares a negation)
    density = slope.exp(-0.5 * math.log(2 * math.pi) - scaled * scaled)
    return (erf(scaled) * 0.5 + 0.5) + x * density  # (PyTorch's order: adding 0.5 last lost x * density below -8)


def shift_for_exp(x: Tensor, dim: Any) -> Tensor:
    """The maximum along dim (kept), a constant that keeps exp(x - it) from overflowing; 0 for an empty x, which has
    no maximum (its softmax is empty and its logsumexp -inf, as in PyTorch)."""
    if x.numel() == 0:
        return slope.zeros_like(x.sum(dim, keepdim=True))
    return slope.stop_gradient(x.max(dim, keepdim=True))


# ----------------------------------------------------------------------------------------------- pooling


def pool_args(name: str, x: Tensor, kernel_size: Any, stride: Any, padding: Any, dilation: Any,
              ceil_mode: bool = False) -> tuple:  # fmt: skip
    """(kernel, stride, padding, dilation) as tuples over the trailing dimensions, checked against x's shape (with
    ceil_mode, a kernel larger than the padded input still makes PyTorch's one partial window)."""
    n = len(kernel_size) if isinstance(kernel_size, (tuple, list)) else max(x.ndim - 2, 1)
    kernel = ints(name, kernel_size, "kernel_size", 1, n)
    stride = kernel if stride is None else ints(name, stride, "stride", 1, n)
    padding, dilation = ints(name, padding, "padding", 0, n), ints(name, dilation, "dilation", 1, n)
    if any(p > k // 2 for k, p in zip(kernel, padding)):  # PyTorch's rule: the kernel's size, whatever the dilation
        raise ValueError(f"slope.{name}: padding {padding} must be at most half the kernel {kernel}, as in PyTorch")
    if x.ndim < n:
        raise slope.ShapeError(
            f"slope.{name}: a {n}-d kernel {kernel} needs at least {n} dimensions, got shape {x.shape}"
        )
    if 0 in x.shape[max(x.ndim - n - 1, 0) :]:  # only the batch dimension may be empty, as in PyTorch
        raise slope.ShapeError(f"slope.{name}: the channel and pooled dimensions of shape {x.shape} must not be empty")
    for size, k, st, p, d in zip(x.shape[x.ndim - n :], kernel, stride, padding, dilation):
        if window_count(size, k, st, p, d, ceil_mode) < 1:
            raise slope.ShapeError(
                f"slope.{name}: kernel {kernel} (dilation {dilation}) is larger than the input of shape {x.shape} "
                f"with padding {padding}"
            )
    return kernel, stride, padding, dilation


def window_count(size: int, k: int, stride: int, padding: int, dilation: int, ceil_mode: bool = False) -> int:
    """The number of windows along one pooled dimension; with PyTorch's ceil_mode a last, partial window is kept where
    it starts inside the input or its left padding."""
    span = size + 2 * padding - dilation * (k - 1) - 1
    if not ceil_mode:
        return span // stride + 1
    count = -(-span // stride) + 1
    return count - ((count - 1) * stride >= size + padding)


def pooled_shape(spatial: tuple, kernel: tuple, stride: tuple, padding: tuple, dilation: tuple) -> tuple:
    """The number of windows along each pooled dimension."""
    return tuple(map(window_count, spatial, kernel, stride, padding, dilation))


def ceil_mode_extra(spatial: tuple, kernel: tuple, stride: tuple, padding: tuple, dilation: tuple) -> tuple:
    """How far past the padded input each dimension's last window runs with PyTorch's ceil_mode."""
    return tuple(
        max((window_count(size, k, st, p, d, True) - 1) * st - (size + 2 * p - d * (k - 1) - 1), 0)
        for size, k, st, p, d in zip(spatial, kernel, stride, padding, dilation)
    )


def pool_windows(x: Tensor, kernel: tuple, stride: tuple, padding: tuple, dilation: tuple, fill: Any) -> Tensor:
    """Every kernel offset's strided view of the trailing dimensions, stacked along a new last dimension.

    Windows that tile the input (stride = kernel, no padding or dilation) come from one reshape and permute;
    the others from one strided slice per kernel offset.
    """
    n = len(kernel)
    lead = x.ndim - n
    out = pooled_shape(x.shape[lead:], kernel, stride, padding, dilation)
    if stride == kernel and not any(padding) and set(dilation) == {1}:
        covered = tuple(o * k for o, k in zip(out, kernel))
        if covered != x.shape[lead:]:
            x = slope.slice(x, (0,) * x.ndim, x.shape[:lead] + covered)
        x = x.reshape((*x.shape[:lead], *(v for o, k in zip(out, kernel) for v in (o, k))))
        perm = (*range(lead), *(lead + 2 * i for i in range(n)), *(lead + 2 * i + 1 for i in range(n)))
        return x.permute(perm).reshape((*x.shape[:lead], *out, math.prod(kernel)))
    if any(padding):
        x = slope.pad(x, lo=(0,) * lead + padding, hi=(0,) * lead + padding, value=fill)
    views = []
    for offset in np.ndindex(*kernel):
        begin = [o * d for o, d in zip(offset, dilation)]
        end = [b + (m - 1) * st + 1 for b, m, st in zip(begin, out, stride)]
        views.append(slope.slice(x, (0,) * lead + tuple(begin), x.shape[:lead] + tuple(end), (1,) * lead + stride))
    return slope.stack(views, -1)


def padding_only_windows(spatial: tuple, kernel: tuple, stride: tuple, padding: tuple, dilation: tuple) -> Any:
    """For pooling windows that hold only padding (max -inf, or the lowest integer), PyTorch's index: the flat position
    of each dimension's first tap at or after 0, which lies past the input in some dimension; -1 for the other
    windows. None where every window holds an element (the usual case)."""
    firsts, inside, place = [], [], 1
    for size, k, st, p, d in reversed(list(zip(spatial, kernel, stride, padding, dilation))):
        starts = np.arange(pooled_shape((size,), (k,), (st,), (p,), (d,))[0]) * st - p
        first = starts + d * np.maximum(0, -(starts // d))  # PyTorch: while (start < 0) start += dilation
        firsts.insert(0, first * place)
        inside.insert(0, (first <= starts + (k - 1) * d) & (first < size))
        place *= size
    n = len(kernel)
    along = [lambda a, i=i: a.reshape([-1 if j == i else 1 for j in range(n)]) for i in range(n)]  # dim i's axis
    empty = ~np.logical_and.reduce(np.broadcast_arrays(*(f(a) for f, a in zip(along, inside))))
    if not empty.any():
        return None
    return np.where(empty, sum(f(a) for f, a in zip(along, firsts)), -1).astype(np.int64)


def windows_overlap(kernel: tuple, stride: tuple, dilation: tuple) -> bool:
    """Whether an input element can lie in two windows."""
    return any(st < d * (k - 1) + 1 for k, st, d in zip(kernel, stride, dilation))


class _Pooling(Operator):
    """Shared by max_pool and max_pool_argmax: parameters, inference, batching."""

    def params(self, x: Tensor, kernel_size: Any, stride: Any, padding: Any, dilation: Any, ceil_mode: bool = False
               ) -> dict:  # fmt: skip
        kernel, stride, padding, dilation = pool_args(self.name, x, kernel_size, stride, padding, dilation, ceil_mode)
        return {"kernel": kernel, "stride": stride, "padding": padding, "dilation": dilation}

    def infer(self, x: Aval, *, kernel: tuple, stride: tuple, padding: tuple, dilation: tuple) -> Aval:
        n = len(kernel)
        if x.dtype == slope.bool_:
            raise self.dtype_error(f"expected a tensor of numbers, got bool of shape {x.shape}")
        if x.ndim < n:
            raise self.shape_error(f"a {n}-d kernel {kernel} needs at least {n} dimensions, got shape {x.shape}")
        out = pooled_shape(x.shape[x.ndim - n :], kernel, stride, padding, dilation)
        if min(out, default=1) < 1:
            raise self.shape_error(f"kernel {kernel} (dilation {dilation}) does not fit the input of shape {x.shape}")
        return Aval(x.shape[: x.ndim - n] + out, self.out_dtype(x.dtype))

    def out_dtype(self, dtype: slope.DType) -> slope.DType:
        return dtype

    def vmap(self, axis_size: int, args: list, dims: list, **params: Any) -> tuple[list, list]:
        x, dim = args[0], dims[0]
        if dim >= x.ndim - len(params["kernel"]):  # a pooled dimension: make it a leading one
            x, dim = move_axis(x, dim, 0), 0
        return [slope.bind(self, x, **params)], [dim]


def _flat_in(index: Tensor, padded: tuple, spatial: tuple) -> Tensor:
    """Flat positions in trailing dimensions of shape `padded` as the flat positions of the same coordinates in
    dimensions of shape `spatial` (a padding on the right removed)."""
    out, rest, place = slope.zeros_like(index), index, 1
    for padded_size, size in reversed(list(zip(padded, spatial))):
        out = out + (rest % padded_size) * place
        rest, place = rest // padded_size, place * size
    return out


class MaxPool(_Pooling):
    """Max pooling over the trailing dimensions (N-d; stride defaults to the kernel size), PyTorch's max_pool."""

    name = "max_pool"

    def __call__(self, x: Any, kernel_size: Any, stride: Any = None, padding: Any = 0, dilation: Any = 1, *,
                 return_indices: bool = False, ceil_mode: bool = False) -> Any:  # fmt: skip
        # (the flags keyword-only: PyTorch's F.max_pool2d takes ceil_mode sixth and return_indices seventh)
        x = _tensor(x)
        params = self.params(x, kernel_size, stride, padding, dilation, bool(ceil_mode))
        n = len(params["kernel"])
        extra = ceil_mode_extra(x.shape[x.ndim - n :], **params) if ceil_mode else ()
        spatial = x.shape[x.ndim - n :]
        if any(extra):  # PyTorch's last, partial windows: the input padded on the right with what max ignores
            x = slope.pad(x, lo=(0,) * x.ndim, hi=(0,) * (x.ndim - n) + extra, value=lowest(x.dtype))
        if not return_indices:
            return slope.bind(self, x, **params)
        index = slope.bind(max_pool_argmax, x, **params)  # before the values: a backend may compute both at once
        if any(extra):  # positions in the padded input, as positions in x (PyTorch's: a window past x keeps its own)
            index = _flat_in(index, x.shape[x.ndim - n :], spatial)
        return slope.bind(self, x, **params), index

    def jvp(self, primals: list, tangents: list, **params: Any) -> tuple[list, list]:
        x, tangent = primals[0], tangents[0]
        index = slope.bind(max_pool_argmax, x, **params)  # before the values: a backend may compute both at once
        out = slope.bind(self, x, **params)
        n = len(params["kernel"])
        lead = x.shape[: x.ndim - n]
        flat_tangent = tangent.reshape((*lead, math.prod(x.shape[x.ndim - n :])))
        flat_index = index.reshape((*lead, math.prod(index.shape[x.ndim - n :])))
        unique = not windows_overlap(params["kernel"], params["stride"], params["dilation"])
        fallback = padding_only_windows(x.shape[x.ndim - n :], **params)
        if fallback is not None:  # a window of padding only is constant: no tangent (its index may lie outside x)
            fallback = slope.tensor(fallback.reshape(-1) >= 0)
            flat_index = slope.where(fallback, 0, flat_index)
        picked = slope.bind(take_along_dim, flat_tangent, flat_index, dim=len(lead), unique_indices=unique)
        if fallback is not None:
            picked = slope.where(fallback, slope.zeros_like(picked), picked)
        return [out], [picked.reshape(out.shape)]

    def procedure(self, x: Tensor, **params: Any) -> Tensor:
        return pool_windows(x, **params, fill=lowest(x.dtype)).max(-1)


class MaxPoolArgmax(_Pooling):
    """Where each window's maximum lies: its flat position in the input's pooled (trailing) dimensions, the first
    maximum on ties, the last NaN of a window holding NaN, and for a window of padding only PyTorch's index
    (padding_only_windows). PyTorch's max_pool indices."""

    name = "max_pool_argmax"

    def __call__(self, x: Any, kernel_size: Any, stride: Any = None, padding: Any = 0, dilation: Any = 1) -> Tensor:
        x = _tensor(x)
        return slope.bind(self, x, **self.params(x, kernel_size, stride, padding, dilation))

    def out_dtype(self, dtype: slope.DType) -> slope.DType:
        return slope.int64

    def procedure(self, x: Tensor, **params: Any) -> Tensor:
        spatial = x.shape[x.ndim - len(params["kernel"]) :]
        size = math.prod(spatial)
        windows = pool_windows(x, **params, fill=lowest(x.dtype))
        # each window element's flat position, built from operators (a procedure adds no constants of its own)
        positions = pool_windows(slope.arange(size).reshape(spatial), **params, fill=size)
        hit = windows == windows.max(-1, keepdim=True)
        # padding positions hold the input size: a real element wins every tie with them; PyTorch's index is the
        # last NaN of a window, and a window of padding only has its own (padding_only_windows)
        index = slope.where(hit, positions, size).min(-1)
        if x.dtype.is_float:
            last_nan = slope.where(windows != windows, positions, -1).max(-1)
            index = slope.where(last_nan >= 0, last_nan, index)
        fallback = padding_only_windows(spatial, **params)
        return index if fallback is None else slope.where(slope.tensor(fallback >= 0), slope.tensor(fallback), index)


# ----------------------------------------------------------------------------------------------- indexing


def _index_tensor(op: Operator, index: Any) -> Tensor:
    index = _tensor(index)
    if not index.dtype.is_int:
        raise op.dtype_error(f"index must hold integers, got {index.dtype.name} of shape {index.shape}")
    return index.astype(slope.int64)


def _check_along(op: Operator, x: Aval, index: Aval, dim: int) -> None:
    if index.ndim != x.ndim or any(a != b for d, (a, b) in enumerate(zip(x.shape, index.shape)) if d != dim):
        raise op.shape_error(
            f"index of shape {index.shape} does not fit the tensor of shape {x.shape}: they need the same sizes "
            f"except in dimension {dim}"
        )


class TakeAlongDim(Operator):
    """`out[..., j, ...] = x[..., index[..., j, ...], ...]` along `dim`: PyTorch's take_along_dim (gather); with no
    dim (PyTorch's default), along x and index flattened."""

    name = "take_along_dim"

    def __call__(self, x: Any, index: Any, dim: int | None = None, *, unique_indices: bool = False) -> Tensor:
        x, index = _tensor(x), _index_tensor(self, index)
        if dim is None:  # PyTorch's default: both flattened
            x, index, dim = x.reshape(-1), index.reshape(-1), 0
        if index.ndim != x.ndim:
            raise self.shape_error(f"index of shape {index.shape} needs as many dimensions as x of shape {x.shape}")
        dim = normalize_dim(self.name, dim, x.ndim, needs_dim=True)
        try:
            common = np.broadcast_shapes(x.shape[:dim] + x.shape[dim + 1 :], index.shape[:dim] + index.shape[dim + 1 :])
        except ValueError:
            raise self.shape_error(f"x of shape {x.shape} and index of shape {index.shape} do not broadcast") from None
        x = x.expand((*common[:dim], x.shape[dim], *common[dim:]))
        index = index.expand((*common[:dim], index.shape[dim], *common[dim:]))
        size = x.shape[dim]  # negative indices count from the end, as in PyTorch
        check_indices(self.name, index, -size, size, f"dimension {dim} of size {size}")
        return slope.bind(self, x, index, dim=dim, unique_indices=bool(unique_indices))

    def infer(self, x: Aval, index: Aval, *, dim: int, unique_indices: bool) -> Aval:
        if not index.dtype.is_int:
            raise self.dtype_error(f"index must hold integers, got {index.dtype.name}")
        _check_along(self, x, index, dim)
        return Aval(index.shape, x.dtype)

    def jvp(self, primals: list, tangents: list, **params: Any) -> tuple[list, list]:
        x, index = primals
        return [slope.bind(self, x, index, **params)], [slope.bind(self, tangents[0], index, **params)]

    def transpose(self, cotangents: list, x: Any, index: Tensor, **params: Any) -> list:
        zeros = slope.full(x.aval.shape, 0, x.aval.dtype)
        return [slope.bind(scatter_add, zeros, index, cotangents[0], **params), None]

    def vmap(self, axis_size: int, args: list, dims: list, *, dim: int, unique_indices: bool) -> tuple[list, list]:
        x, index = (batch_to_front(a, d, axis_size) for a, d in zip(args, dims))
        return [slope.bind(self, x, index, dim=dim + 1, unique_indices=unique_indices)], [0]

    def procedure(self, x: Tensor, index: Tensor, *, dim: int, unique_indices: bool) -> Tensor:
        return slope.gather(x, dim, slope.where(index < 0, index + x.shape[dim], index))


class ScatterAdd(Operator):
    """x with `src[..., j, ...]` added at `[..., index[..., j, ...], ...]` along `dim` (repeats accumulate):
    PyTorch's scatter_add. The operator takes index and src of one shape, x's apart from `dim`; the call brings
    PyTorch's looser shapes (src larger than index, x larger apart from `dim`) to that."""

    name = "scatter_add"

    def __call__(self, x: Any, dim: int, index: Any, src: Any, *, unique_indices: bool = False) -> Tensor:
        x, index = _tensor(x), _index_tensor(self, index)
        if isinstance(src, Tensor) and src.dtype != x.dtype:  # (it was cast: 0.6 + 0.6 added nothing to an int64 x)
            raise self.dtype_error(f"expected src of x's dtype {x.dtype.name}, got {src.dtype.name} (as PyTorch)")
        src = _tensor(src).astype(x.dtype)
        if min(x.ndim, index.ndim, src.ndim) == 0 and max(x.ndim, index.ndim, src.ndim) <= 1:  # 0-d as 1-d (PyTorch)
            flat = [t.reshape(-1) for t in (x, index, src)]
            return self(flat[0], dim, *flat[1:], unique_indices=unique_indices).reshape(x.shape)
        dim = normalize_dim(self.name, dim, x.ndim, needs_dim=True)
        if index.numel() == 0:  # nothing to add: PyTorch asks nothing more of the shapes then
            return x
        # PyTorch's rule: index no larger than src, nor than x apart from `dim`; src is read only where index is
        sizes = list(zip(index.shape, src.shape, x.shape))
        same_ndim = index.ndim == src.ndim == x.ndim
        if not same_ndim or any(i > s or (i > n and d != dim) for d, (i, s, n) in enumerate(sizes)):
            raise self.shape_error(
                f"index of shape {index.shape} must have the dimensions of x {x.shape} and src {src.shape} and be no "
                f"larger than src, nor than x apart from dimension {dim}"
            )
        check_indices(self.name, index, 0, x.shape[dim], f"dimension {dim} of size {x.shape[dim]}")
        if index.buffer is None:  # traced: a negative index is out of range when it runs, not counted from the end
            index = slope.where(index < 0, x.shape[dim], index)
        src = src[tuple(slice(0, i) for i in index.shape)]
        short = [0 if d == dim else n - i for d, (i, _, n) in enumerate(sizes)]
        if any(short):  # index covers part of x: the rest gets index 0 and -0.0, which leaves every value as it was
            index = slope.pad(index, lo=(0,) * x.ndim, hi=short)
            src = slope.pad(src, lo=(0,) * x.ndim, hi=short, value=-0.0)
            unique_indices = False
        return slope.bind(self, x, index, src, dim=dim, unique_indices=bool(unique_indices))

    def infer(self, x: Aval, index: Aval, src: Aval, *, dim: int, unique_indices: bool) -> Aval:
        if not index.dtype.is_int:
            raise self.dtype_error(f"index must hold integers, got {index.dtype.name}")
        if src.shape != index.shape or src.dtype != x.dtype:
            raise self.shape_error(f"src {src} must have the shape of index {index} and the dtype of x {x}")
        _check_along(self, x, index, dim)
        return x

    def jvp(self, primals: list, tangents: list, **params: Any) -> tuple[list, list]:
        x, index, src = primals
        tangent = slope.bind(self, tangents[0], index, tangents[2], **params)
        return [slope.bind(self, x, index, src, **params)], [tangent]

    def transpose(self, cotangents: list, x: Any, index: Tensor, src: Any, **params: Any) -> list:
        ct = cotangents[0]
        picked = slope.bind(take_along_dim, ct, index, **params) if isinstance(src, slope.UndefinedPrimal) else None
        return [ct if isinstance(x, slope.UndefinedPrimal) else None, None, picked]

    def vmap(self, axis_size: int, args: list, dims: list, *, dim: int, unique_indices: bool) -> tuple[list, list]:
        x, index, src = (batch_to_front(a, d, axis_size) for a, d in zip(args, dims))
        return [slope.bind(self, x, index, src, dim=dim + 1, unique_indices=unique_indices)], [0]

    def procedure(self, x: Tensor, index: Tensor, src: Tensor, *, dim: int, unique_indices: bool) -> Tensor:
        grids = [
            slope.arange(n).reshape(tuple(n if d == k else 1 for k in range(index.ndim)))
            for d, n in enumerate(index.shape)
        ]
        coords = [index if d == dim else grid.expand(index.shape) for d, grid in enumerate(grids)]
        return slope.scatter_nd(x, slope.stack(coords, -1), src)


# erf in float64: x * P(x^2) for |x| < 1, and 1 - exp(-x^2) * N(|x|) / D(|x|) for 1 <= |x| < 6 (N / D approximates
# erfc(x) exp(x^2); beyond 6, erf is 1 in float64). The coefficients were fitted for Slope by least squares in
# 60-digit arithmetic on Chebyshev nodes (P relative to erf(x) / x, N / D by iterated reweighting); the result is
# within 1 ulp of mpmath's erf on a dense grid of [-7, 7] and on the tails down to 1e-300 (test_nn_functional).
_ERF_SMALL = (
    -7.77682913736281e-10, 1.3709519207384055e-08, -1.6205964194101388e-07, 1.6447084274239356e-06,
    -1.4924708324571507e-05, 0.00012055293361789941, -0.0008548325921832884, 0.005223977605955977,
    -0.026866170643090832, 0.1128379167094405, -0.37612638903183515, 1.1283791670955126,
)  # fmt: skip
_ERFC_NUMERATOR = (
    -4.4123873641201936e-11, 0.003233536714611885, 0.036053990789018074, 0.19514298458194118, 0.6364626023609369,
    1.3115335619938249, 1.6319609625628984, 1.0000000606583963,
)  # fmt: skip
_ERFC_DENOMINATOR = (
    0.005731290109154513, 0.06390415658793619, 0.3487455065770557, 1.1600775393475482, 2.49448357920113,
    3.426241562781378, 2.7603407440010006, 1.0,
)  # fmt: skip


def _polynomial(coefficients: tuple, x: Tensor) -> Tensor:
    """sum(c * x ** k) with the coefficients from the highest power down (Horner)."""
    result = x * coefficients[0] + coefficients[1]
    for coefficient in coefficients[2:]:
        result = result * x + coefficient
    return result


def _erf_float64(x: Tensor) -> Tensor:
    squared = x * x
    small = x * _polynomial(_ERF_SMALL, squared)
    capped = slope.where(squared < 36.0, squared, 36.0)
    magnitude = slope.sqrt(capped)
    erfc = slope.exp(-capped) * (_polynomial(_ERFC_NUMERATOR, magnitude) / _polynomial(_ERFC_DENOMINATOR, magnitude))
    large = slope.where(x < 0, erfc - 1.0, 1.0 - erfc)
    return slope.where(squared >= 1.0, large, small)  # NaN compares false: it stays in `small`


class FailIf(Operator):
    """`failed` itself (a bool tensor, all false when it passes), and `error(message)` when the program runs where one
    of its elements is true: a check of traced values (under jit, grad or vmap) that names the function asking, where
    the values are known only as it runs. Backends raise it with the message (onnxruntime, iree, numpy); elsewhere the
    procedure raises an IndexError naming take_along_dim. Bound by slope-nn's functions only, not registered."""

    name = "fail_if"

    def __call__(self, failed: Tensor, message: str, error: type[Exception] = ValueError) -> Tensor:
        return slope.bind(self, failed, message=message, error=error)

    def infer(self, failed: Aval, *, message: str, error: type) -> Aval:
        if failed.dtype != slope.bool_ or error not in (ValueError, IndexError):
            raise self.dtype_error(f"expected bools and ValueError or IndexError, got {failed.dtype.name} and {error}")
        return failed

    def vmap(self, axis_size: int, args: list, dims: list, **params: Any) -> tuple[list, list]:
        return [slope.bind(self, args[0], **params)], [dims[0]]

    def procedure(self, failed: Tensor, *, message: str, error: type) -> Tensor:
        index = failed.astype(slope.int64).reshape((-1,))  # 1 is out of range of a one-element table
        return take_along_dim(slope.tensor(np.zeros(1, np.bool_)), index, 0).reshape(failed.shape)


class Erf(Unary):
    """The error function (for gelu). The procedure: `_erf_float64`'s approximation (1 ulp in float64), evaluated in
    float32 for float32, float16 and bfloat16 (a few float32 ulps, relative: Abramowitz and Stegun 7.1.26, used before,
    is 1.5e-7 off absolutely, so erf(1e-8) was 0 and float16 erf(1e-3) -9.8e-4)."""

    name = "erf"

    def jvp(self, primals: list, tangents: list) -> tuple[list, list]:
        x = primals[0]
        return [erf(x)], [tangents[0] * slope.exp(-(x * x)) * (2.0 / math.sqrt(math.pi))]

    def procedure(self, x: Tensor) -> Tensor:
        if x.dtype in (slope.float32, slope.float64):
            return _erf_float64(x)
        return _erf_float64(x.astype(slope.float32)).astype(x.dtype)


class RunningProduct(Operator):
    """x_0, x_0 * x_1, x_0 * x_1 * x_2, ... along `dim`, multiplied left to right in x's dtype (slope-nn's cumprod
    binds it in PyTorch's accumulation dtype). A sequential kernel on numpy (multiply.accumulate) and onnxruntime (an
    ONNX Scan): the order is PyTorch's CPU kernel's, so are its bits, its overflows to inf and its inf * 0 = NaN. The
    procedure (iree and backends without a translation) is a log-step scan, in another order. The
    tangent is that scan's, carried with (value, tangent) pairs: no division, exact where x has zeros."""

    name = "running_product"

    def __call__(self, x: Any, dim: int) -> Tensor:
        x = _tensor(x)
        return slope.bind(self, x, dim=normalize_dim(self.name, dim, x.ndim, needs_dim=True))

    def infer(self, x: Aval, *, dim: int) -> Aval:
        if x.dtype in (slope.bool_, slope.float16, slope.bfloat16) or not 0 <= dim < x.ndim:  # (cumprod widens halves)
            raise self.shape_error(f"expected numbers other than bool, float16, bfloat16 with a dimension {dim}, got "
                                   f"{x.dtype.name} of shape {x.shape}")  # fmt: skip
        return x

    @staticmethod
    def scan(x: Tensor, t: Tensor | None, dim: int) -> tuple[Tensor, Tensor | None]:
        """The log-step scan of products along dim, and with a tangent t the scan's tangent (the product rule at each
        step). Where a step keeps x (before `shift`) it keeps it as is: x * 1's tangent x * 0 is NaN where x is inf."""
        size = x.shape[dim]
        positions = slope.arange(size).reshape(tuple(size if d == dim else 1 for d in range(x.ndim)))
        for shift in (2**i for i in range(max(size - 1, 0).bit_length())):  # 1, 2, 4, ... below size
            lo = tuple(shift if d == dim else 0 for d in range(x.ndim))
            hi = tuple(-n for n in lo)  # (a negative hi crops: x shifted by `shift`)
            shifted, keep = slope.pad(x, lo=lo, hi=hi), positions >= shift
            if t is not None:
                t = slope.where(keep, t * shifted + x * slope.pad(t, lo=lo, hi=hi), t)
            x = slope.where(keep, x * shifted, x)
        return x, t

    def jvp(self, primals: list, tangents: list, *, dim: int) -> tuple[list, list]:
        return [running_product(primals[0], dim)], [self.scan(primals[0], tangents[0], dim)[1]]

    def vmap(self, axis_size: int, args: list, dims: list, *, dim: int) -> tuple[list, list]:
        return [running_product(move_axis(args[0], dims[0], 0), dim + 1)], [0]

    def procedure(self, x: Tensor, *, dim: int) -> Tensor:
        return self.scan(x, None, dim)[0]


erf = Erf()
log_softmax = LogSoftmax()
softmax = Softmax()
gelu = Gelu()
layer_norm = LayerNormOp()
layer_norm_rstd = LayerNormRstd()
relu = Relu()
max_pool = MaxPool()
max_pool_argmax = MaxPoolArgmax()
take_along_dim = TakeAlongDim()
scatter_add = ScatterAdd()
fail_if = FailIf()  # (not in `operators`: not registered)
running_product = RunningProduct()
operators = [
    erf,
    log_softmax,
    softmax,
    gelu,
    layer_norm,
    layer_norm_rstd,
    relu,
    max_pool,
    max_pool_argmax,
    take_along_dim,
    scatter_add,
    running_product,
]
