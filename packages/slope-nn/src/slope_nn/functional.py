"""Neural-network functions (`slope.nn.functional`, like `torch.nn.functional`): activations, softmax and its kin,
one-hot, linear, transposed convolution, pooling and cross-entropy.

They are registered through slope-nn's plugin (`slope_nn.plugin`), so with slope-nn installed each is also
`slope.NAME(...)` and `Tensor.NAME(...)`. They are built from Slope's public API only, as any plugin's would be;
`gelu`, `softmax`, `log_softmax`, `relu`, `max_pool` and the two indexing operators it differentiates with are
operators (`slope_nn.operators`).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import numpy as np

import slope
from slope import Tensor
from slope.ir import Aval
from slope.operator import UndefinedPrimal
from slope.operators import conv, ints, normalize_dims, slice_along
from slope.trace import Tracer

from .module import check_key, next_key
from .operators import (
    _tensor,
    ceil_mode_extra,
    check_indices,
    fail_if,
    gelu,
    log_softmax,
    max_pool,
    max_pool_argmax,
    pool_args,
    pool_windows,
    relu,
    scatter_add,
    shift_for_exp,
    softmax,
    take_along_dim,
)

__all__ = [
    "avg_pool",
    "conv_transpose",
    "cross_entropy",
    "gelu",
    "leaky_relu",
    "linear",
    "log_softmax",
    "logsumexp",
    "max_pool",
    "max_pool_argmax",
    "one_hot",
    "relu",
    "scaled_dot_product_attention",
    "scatter_add",
    "sigmoid",
    "silu",
    "softmax",
    "softplus",
    "take_along_dim",
]


def __dir__() -> list[str]:
    """The public functions (`__all__`): dir() listed the helpers slope-nn's modules share and the modules imported
    here (np, math, slope, ...) among them, where `slope.nn.functional` stands for torch.nn.functional."""
    return sorted(__all__)


def _float(x: Any) -> Tensor:
    """x as a tensor, integers and bools converted to the default float (as PyTorch's float functions do)."""
    x = _tensor(x)
    return x if x.dtype.is_float else x.astype(slope.dtypes.default_float)


def refuse_traced(name: str, what: str, value: Any, error: type[Exception] = TypeError, kind: str = "number",
                  hint: str = "") -> None:  # fmt: skip
    """An error naming the function and argument when a hyperparameter that must be a Python number is traced (under
    slope.jit a Python float argument is a traced 0-d tensor), saying how to keep it a number (`hint`: what else works)."""
    if isinstance(value, Tracer):
        raise error(f"{name}: {what} must be a Python {kind}, but it is a traced tensor ({type(value).__name__}: "
                    f"slope.jit traces the jitted function's arguments, Python {kind}s too, and slope.grad/jvp/vmap "
                    f"what they differentiate or batch); {hint + '; under jit ' if hint else ''}pass it through jit's "
                    "static_argnums/static_argnames, or close over it instead of passing it as an argument")  # fmt: skip


def _number(name: str, value: Any, what: str) -> Any:
    """A Python number argument, else a TypeError naming the function."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        refuse_traced(f"slope.{name}", what, value)  # (a traced one: its own message; only where the check fails)
        raise TypeError(f"slope.{name}: {what} must be a number, got {type(value).__name__} {value!r}")
    return value


def dropped(x: Tensor, p: float, key: Tensor) -> Tensor:
    """x with elements zeroed with probability p (0 < p < 1) by `key`, the rest scaled by 1/(1-p): times the mask, as
    PyTorch (a dropped NaN or inf stays NaN; a where gave 0, hiding a diverging activation)."""
    keep = slope.random.bernoulli(key, 1.0 - p, x.shape)
    # the scale in float64 for float64 (float32's 1 / 0.9 was 4.8e-8 off), through float32 for the others (PyTorch's)
    scale = slope.tensor(1.0 / (1.0 - p), dtype=slope.float64 if x.dtype == slope.float64 else slope.float32)
    return x * slope.where(keep, scale, 0.0).astype(x.dtype)


# ----------------------------------------------------------------------------------------------- activations


def _half_in_float32(fn: Callable) -> Callable:
    """fn of a float16 or bfloat16 x computed in float32 and rounded once, as PyTorch's kernels compute them (step by
    step in float16, silu was up to 9 ulps off and its gradient up to 528: -0.000244 for -0.000181 at -1.28)."""

    @functools.wraps(fn)
    def in_float32(x: Any, *args: Any, **kwargs: Any) -> Tensor:
        x = _float(x)
        if x.dtype in (slope.float16, slope.bfloat16):
            return fn(x.astype(slope.float32), *args, **kwargs).astype(x.dtype)
        return fn(x, *args, **kwargs)

    return in_float32


@_half_in_float32
def sigmoid(x: Any) -> Tensor:
    """1 / (1 + exp(-x)), computed stably: exp(x) / (1 + exp(x)) for x < 0."""
    x = _float(x)
    positive = x >= 0
    # exp(-|x|) never overflows; a `where` (not abs) keeps the derivative at 0 and sends NaN down the second branch
    e = slope.exp(slope.where(positive, -x, x))
    denominator = 1.0 + e
    return slope.where(positive, 1.0 / denominator, e / denominator)


@_half_in_float32  # (in float16, 0.01 rounded to 0.0100021 first: 7,740 of its normal values a rounding off)
def leaky_relu(x: Any, negative_slope: float = 0.01) -> Tensor:
    """x where x > 0, else negative_slope * x."""
    x = _float(x)
    return slope.where(x > 0, x, x * _number("leaky_relu", negative_slope, "negative_slope"))


@_half_in_float32
def silu(x: Any) -> Tensor:
    """x * sigmoid(x)."""
    return _silu(_float(x))


@slope.custom_jvp
def _silu(x: Tensor) -> Tensor:
    return x * sigmoid(x)


@_silu.defjvp
def _silu_jvp(primals: tuple, tangents: tuple) -> tuple:
    # PyTorch's derivative s (1 + x (1 - s)): the product rule's cotangent times x overflowed where s' is 0 (NaN for
    # x = 1e20 with a cotangent of 1e20, where PyTorch gives 1e20)
    (x,), (t,) = primals, tangents
    s = sigmoid(x)
    return x * s, t * (s * (1.0 + x * (1.0 - s)))


def _log1p_of_small(e: Tensor) -> Tensor:
    """log(1 + e) for 0 <= e <= 1, accurate for tiny e: log(u) + (e - (u - 1)) / u with u = 1 + e corrects u's rounding
    (u - 1 is exact), and its derivative is 1 / u; no division by zero, so no NaN in the gradient."""
    u = 1.0 + e
    return slope.log(u) + (e - (u - 1.0)) / u


@_half_in_float32
def softplus(x: Any, beta: float = 1.0, threshold: float = 20.0) -> Tensor:
    """log(1 + exp(beta x)) / beta, computed stably; x itself where beta x > threshold (as PyTorch)."""
    x = _float(x)
    beta = _number("softplus", beta, "beta")
    threshold = _number("softplus", threshold, "threshold")

    def value(x: Tensor) -> Tensor:
        scaled = x * beta
        positive = scaled > 0
        # max(scaled, 0) + log1p(exp(-|scaled|)), with `where`s instead of max and abs: the derivative at 0 is 1/2
        e = slope.exp(slope.where(positive, -scaled, scaled))
        out = (slope.where(positive, scaled, 0.0) + _log1p_of_small(e)) / beta
        return slope.where(scaled > threshold, x, out)

    if 1e-4 <= abs(beta) <= 1e4:  # (value's own derivative is PyTorch's for such betas, and costs no trace per call)
        return value(x)

    def rule(primals: tuple, tangents: tuple) -> tuple:
        # PyTorch's derivative: 1 above the threshold, sigmoid(beta x) below. Through beta x and the division by beta,
        # the untaken branch's zero cotangent came back times beta: 0 * inf = NaN everywhere for beta = inf, 0 / 0 for
        # beta = 0 (PyTorch: 0 below 0 and 1 above for inf, 1/2 for 0); NaN where the value is (inf / inf for an
        # infinite beta x under an infinite threshold, as PyTorch's)
        (x,), (t,) = primals, tangents
        scaled, y = x * beta, softplus_of(x)
        derivative = slope.where(scaled > threshold, 1.0, sigmoid(scaled))
        return y, t * slope.where(slope.isnan(y), y, derivative)

    softplus_of = slope.custom_jvp(value)  # (per call: beta and threshold are Python numbers, -0.0 apart from 0.0)
    softplus_of.defjvp(rule)
    return softplus_of(x)


# ----------------------------------------------------------------------------------------------- softmax


def logsumexp(x: Any, dim: Any = None, keepdim: bool = False) -> Tensor:
    """log(sum(exp(x))), computed stably."""
    x = _float(x)
    dim = normalize_dims("logsumexp", dim, x.ndim, empty_means_all=True)  # (as sum: () is every dim)
    top = shift_for_exp(x, dim)
    top = slope.where(slope.isinf(top), slope.zeros_like(top), top)
    out = slope.log(slope.exp(x - top).sum(dim, keepdim=True)) + top
    return out if keepdim else out.reshape(tuple(s for d, s in enumerate(x.shape) if d not in dim))


def one_hot(x: Any, num_classes: int = -1) -> Tensor:
    """Integer class indices as one-hot int64 vectors along a new last dimension."""
    x = _tensor(x)
    if not x.dtype.is_int:  # bools too, as in PyTorch
        raise TypeError(f"slope.one_hot: expected integer class indices, got {x.dtype.name}")
    (num_classes,) = ints("one_hot", num_classes, "num_classes", count=1)
    if num_classes < -1:  # (-2 was inferred too; PyTorch refuses it)
        raise ValueError(f"slope.one_hot: num_classes must be -1 (inferred) or at least 0, got {num_classes}")
    if num_classes < 0:  # (from the values: an operation on them is traced inside grad too, x.max().item() failed)
        if x.buffer is None or not x.numel():
            what = "an empty tensor" if x.buffer is not None else (
                "traced indices (jit, grad and vmap trace the values they compute); pass num_classes")  # fmt: skip
            raise ValueError(f"slope.one_hot: cannot infer the number of classes from {what}")
        num_classes = int(x.numpy().max()) + 1
    check_indices("one_hot", x, 0, num_classes, f"{num_classes} classes")
    x = checked_when_run("one_hot", x, num_classes, f"{num_classes} classes") if x.buffer is None else x
    classes = slope.arange(num_classes).reshape((1,) * x.ndim + (num_classes,))
    return (x.unsqueeze(-1) == classes).astype(slope.int64)


def checked_when_run(name: str, index: Tensor, size: int, what: str) -> Tensor:
    """Traced indices as they are (0 where out of range), checked as the program runs: one outside [0, size), a
    negative one too (which a gather would count from the end), is an IndexError naming `name`, in check_indices'
    words (concrete indices are checked eagerly, by check_indices)."""
    index = index.astype(slope.int64)  # (a uint8 index compared with a size of 300 would compare with 44)
    outside = fail_if((index < 0) | (index >= size), f"slope.{name}: an index is out of range; expected 0 to "
                      f"{size - 1} for {what} (found as the program ran: jit, grad and vmap trace the indices)", IndexError)  # fmt: skip
    return slope.where(outside, 0, index)


# ----------------------------------------------------------------------------------------------- layers


def linear(x: Any, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """x @ weight.T + bias (PyTorch's F.linear)."""
    # a batched x makes one 2-d product (see matmul); a 1-d weight is one output feature, its dimension dropped (PyTorch)
    weight = _tensor(weight)
    x, bias = _tensor(x), None if bias is None else _tensor(bias)
    if weight.ndim > 2:  # (a 3-d weight was batched by matmul; PyTorch refuses it)
        raise slope.ShapeError(f"slope.linear: weight must be (out_features, in_features) or 1-d, got {weight.shape}")
    check_linear_dtypes("linear", x, weight, bias)
    if bias is not None and x.dtype in (slope.float16, slope.bfloat16):
        # the product plus bias rounded once, as PyTorch's addmm (rounded twice, float16 (1 + 2**-10)**2 - (1 + 2**-9)
        # was 0, not 2**-20)
        return linear(*(t.astype(slope.float32) for t in (x, weight, bias))).astype(x.dtype)
    out = slope.matmul(x, weight if weight.ndim == 1 else slope.transpose(weight, -1, -2))
    return out if bias is None else out + bias


def check_linear_dtypes(name: str, x: Tensor, weight: Tensor, bias: Tensor | None, what: str = "input",
                        hint: str = "") -> None:  # fmt: skip
    """Refuse a linear map's input, weight and bias of different dtypes, as PyTorch ("mat1 and mat2 must have the same
    dtype"): a bias of another dtype promoted the result (float16 input and weight, float32 bias: float32), and an
    input of another dtype failed in slope.matmul naming neither the layer nor the shapes."""
    for role, value in (("weight", weight), ("bias", bias)):
        if value is not None and not isinstance(value, Tensor):  # (a NumPy weight: "weight float32 ... float32")
            raise TypeError(f"slope.{name}: the {role} is a {type(value).__module__}.{type(value).__name__}, not a "
                            f"slope Tensor (PyTorch: a Parameter or None expected); assign slope.tensor(...) of it")  # fmt: skip
    if x.dtype == weight.dtype and (bias is None or bias.dtype == x.dtype):
        return
    got = [f"{what} {x.dtype.name} of shape {x.shape}", f"weight {weight.dtype.name} of shape {weight.shape}"]
    got += [] if bias is None else [f"bias {bias.dtype.name} of shape {bias.shape}"]
    raise slope.DTypeError(f"slope.{name}: expected the {what}, weight{'' if bias is None else ' and bias'} of one "
                           f"dtype, as PyTorch; got {', '.join(got[:-1])} and {got[-1]}{hint}")  # fmt: skip


def conv_transpose(x: Any, weight: Any, bias: Any = None, stride: Any = 1, padding: Any = 0, output_padding: Any = 0,
                   groups: int = 1, dilation: Any = 1) -> Tensor:  # fmt: skip
    """Transposed convolution (PyTorch's conv_transpose): weight (C_in, C_out/groups, *kernel); x (N, C_in, *spatial)
    or (C_in, *spatial)."""
    x, weight = _tensor(x), _tensor(weight)
    if x.ndim == weight.ndim - 1 > 1:  # a batch-less input, as in PyTorch
        unbatched = x.reshape((1, *x.shape))
        return conv_transpose(unbatched, weight, bias, stride, padding, output_padding, groups, dilation)[0]
    n = x.ndim - 2
    if n < 1 or weight.ndim != x.ndim or weight.shape[0] != x.shape[1]:
        raise slope.ShapeError(f"slope.conv_transpose: input {x.shape} does not fit weight {weight.shape} (C_in first)")
    name = "conv_transpose"
    stride, dilation = ints(name, stride, "stride", 1, n), ints(name, dilation, "dilation", 1, n)
    padding, output_padding = ints(name, padding, "padding", 0, n), ints(name, output_padding, "output_padding", 0, n)
    (groups,) = ints(name, groups, "groups", 1, 1)
    if any(extra >= max(s, d) for extra, s, d in zip(output_padding, stride, dilation)):
        raise ValueError(
            f"slope.conv_transpose: output_padding {output_padding} must be smaller than stride {stride} or dilation "
            f"{dilation}"
        )
    (batch, c_in, *size), (_, c_out, *kernel) = x.shape, weight.shape  # c_out per group
    if c_in % groups:
        raise slope.ShapeError(f"slope.conv_transpose: {c_in} input channels do not split into {groups} groups")
    if c_out == 0:  # as PyTorch (which also says so for its convolutions)
        raise slope.ShapeError(
            f"slope.conv_transpose: weight {weight.shape} has no output channels (expected at least 1)"
        )
    if not x.dtype.is_float or x.dtype != weight.dtype:
        raise slope.DTypeError(f"slope.conv_transpose: expected floats of one dtype, got {x.dtype.name} and "
                               f"{weight.dtype.name}")  # fmt: skip
    if bias is not None and (bias := _tensor(bias)).shape != (c_out * groups,):
        raise slope.ShapeError(f"slope.conv_transpose: expected a bias of shape ({c_out * groups},), got {bias.shape}")
    if x.dtype in (slope.float16, slope.bfloat16):  # products and sums in float32, the result rounded once, as
        # PyTorch's bfloat16 kernel (each tap's sum rounded: up to 254 ulps off where terms cancel)
        wide = [None if t is None else t.astype(slope.float32) for t in (x, weight, bias)]
        return conv_transpose(*wide, stride, padding, output_padding, groups, dilation).astype(x.dtype)
    spatial = tuple(
        (s - 1) * st - 2 * p + d * (k - 1) + op + 1
        for s, st, p, d, k, op in zip(size, stride, padding, dilation, kernel, output_padding)
    )
    if min(spatial) < (1 if batch else 0):  # PyTorch: an empty output only with no batch
        raise slope.ShapeError(f"slope.conv_transpose: input {x.shape} with weight {weight.shape} gives an output of "
                               f"size {spatial} (too small)")  # fmt: skip
    if 0 in size and batch and c_in:  # PyTorch: an empty spatial dimension only with no batch or no channels
        raise slope.ShapeError(f"slope.conv_transpose: input {x.shape} is empty in a spatial dimension (weight "
                               f"{weight.shape}); only a batch or channels of 0 may be empty")  # fmt: skip
    # The transpose of a convolution with this weight (slope-core's rule, also a conv's input gradient): each input
    # element times the weight, one product per group, added into the output at its offsets (PyTorch's col2im). No
    # product with an inserted or padding zero, so an infinite weight gives NaN only where PyTorch's does.
    output, pairs = UndefinedPrimal(Aval((batch, groups * c_out, *spatial), x.dtype)), tuple((p, p) for p in padding)
    out, _ = conv.transpose([x], output, weight, stride=stride, padding=pairs, dilation=dilation, groups=groups)
    return out if bias is None else out + bias.reshape((-1,) + (1,) * n)


def pad_by_mode(name: str, x: Tensor, pads: tuple, mode: str) -> Tensor:
    """x padded in its trailing len(pads) dimensions by (before, after) amounts with PyTorch's F.pad mode 'reflect'
    (mirrored, the edge once), 'replicate' (the edge repeated) or 'circular' (wrapped), and PyTorch's limits."""
    lead = x.ndim - len(pads)
    for axis, (lo, hi) in enumerate(pads, lead):
        size = x.shape[axis]
        if (mode == "reflect" and max(lo, hi) >= size) or (mode == "circular" and max(lo, hi) > size) or size == 0:
            limit = "less than" if mode == "reflect" else "at most"
            raise slope.ShapeError(f"slope.{name}: {mode} padding ({lo}, {hi}) of dimension {axis} must be {limit} "
                                   f"its size, as PyTorch's, got input of shape {x.shape}")  # fmt: skip
        if not (lo or hi):
            continue

        def grown(edge: Tensor, n: int, axis: int = axis) -> Tensor:
            """The one-wide edge repeated n times along axis."""
            return edge.expand(*(n if d == axis else -1 for d in range(edge.ndim)))

        if mode == "reflect":  # (the edge itself not repeated)
            before = slope.flip(slice_along(x, axis, 1, lo + 1), (axis,)) if lo else None
            after = slope.flip(slice_along(x, axis, size - 1 - hi, size - 1), (axis,)) if hi else None
        elif mode == "replicate":
            before = grown(slice_along(x, axis, 0, 1), lo) if lo else None
            after = grown(slice_along(x, axis, size - 1, size), hi) if hi else None
        else:
            before = slice_along(x, axis, size - lo, size) if lo else None
            after = slice_along(x, axis, 0, hi) if hi else None
        x = slope.concatenate([piece for piece in (before, x, after) if piece is not None], axis)
    return x


def avg_pool(x: Any, kernel_size: Any, stride: Any = None, padding: Any = 0, ceil_mode: bool = False,
             count_include_pad: bool = True, divisor_override: int | None = None) -> Tensor:  # fmt: skip
    """Average pooling, PyTorch's: padding counts as zeros in the divisor unless count_include_pad=False; ceil_mode
    keeps a last window that runs past the padded input (divided by its positions inside the padded input);
    divisor_override (2-d and 3-d, as PyTorch) divides every window's sum by that nonzero int instead. int64, as
    PyTorch: the int64 window sums divided rounding toward zero; other integers and bools raise, as in PyTorch."""
    x = _tensor(x, "avg_pool")
    args = (kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
    if x.dtype == slope.int64:
        return _window_means(x, *args)
    if not x.dtype.is_float:
        raise slope.DTypeError(f"slope.avg_pool: expected a float or int64 tensor (PyTorch has no average pooling of "
                               f"{x.dtype.name}), got {x.dtype.name} of shape {x.shape}; cast it first")  # fmt: skip
    return _float_window_means(x, *args)


@_half_in_float32  # (the window sums rounded before the division: PyTorch rounds once)
def _float_window_means(x: Tensor, *args: Any) -> Tensor:
    """avg_pool of a float x (float16 and bfloat16 in float32, rounded once)."""
    return _window_means(x, *args)


def _divisor_override(value: Any, n: int) -> int:
    """PyTorch's checked divisor_override: a nonzero int, for 2-d and 3-d pooling only (avg_pool1d has none)."""
    name = "slope.avg_pool"
    if n == 1:  # (PyTorch: "avg_pool1d() got an unexpected keyword argument 'divisor_override'")
        raise TypeError(f"{name}: divisor_override is for 2-d and 3-d pooling only, as PyTorch's avg_pool2d/3d "
                        f"(its avg_pool1d and AvgPool1d take none), got a 1-d kernel")  # fmt: skip
    refuse_traced(name, "divisor_override", value, kind="int")
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: divisor_override must be an int, as PyTorch's, got {type(value).__name__} {value!r}")
    if value == 0:
        raise ValueError(f"{name}: divisor_override must not be zero (PyTorch: divisor must be not zero)")
    return int(value)


def _window_means(x: Tensor, kernel_size: Any, stride: Any, padding: Any, ceil_mode: bool, count_include_pad: bool,
                  divisor_override: int | None = None) -> Tensor:  # fmt: skip
    """avg_pool of a float or int64 x: the window sums over PyTorch's divisor (int64: rounded toward zero)."""
    kernel, stride, padding, dilation = pool_args("avg_pool", x, kernel_size, stride, padding, 1, bool(ceil_mode))
    n, lead = len(kernel), x.ndim - len(kernel)
    override = None if divisor_override is None else _divisor_override(divisor_override, n)
    spatial = x.shape[lead:]
    extra = ceil_mode_extra(spatial, kernel, stride, padding, dilation) if ceil_mode else (0,) * n
    if count_include_pad and not any(extra) and override is None:
        windows = pool_windows(x, kernel, stride, padding, dilation, 0)
        if x.dtype.is_float:
            return windows.mean(-1)
        sums, divisor = windows.sum(-1), np.array(math.prod(kernel))
    else:
        x = slope.pad(x, lo=(0,) * lead + padding, hi=(0,) * lead + tuple(p + e for p, e in zip(padding, extra)))
        sums = pool_windows(x, kernel, stride, (0,) * n, dilation, 0).sum(-1)
        divisor = 1  # PyTorch's: the window's positions inside the padded input, or inside the input only
        for size, k, st, p, count in zip(spatial, kernel, stride, padding, sums.shape[lead:]):
            starts = np.arange(count) * st - p
            ends = np.minimum(starts + k, size + p)
            lengths = ends - starts if count_include_pad else np.minimum(ends, size) - np.maximum(starts, 0)
            divisor = np.multiply.outer(divisor, lengths)
        divisor = divisor if override is None else np.array(override)
    if x.dtype.is_float:
        return sums / slope.tensor(np.asarray(divisor, dtype=np.float64), dtype=sums.dtype)
    return slope.div(sums, slope.tensor(np.asarray(divisor, dtype=np.int64)), rounding_mode="trunc")


# ----------------------------------------------------------------------------------------------- attention


def _attention_args(q: Any, k: Any, v: Any, attn_mask: Any, is_causal: bool, dropout_p: float) -> tuple:
    """Checked (q, k, v, mask) of scaled_dot_product_attention: shapes (..., L, E), (..., S, E), (..., S, Ev)."""
    query_dtype = _tensor(q).dtype
    q, k, v = _float(q), _float(k), _float(v)
    name = "slope.scaled_dot_product_attention"
    if min(q.ndim, k.ndim, v.ndim) < 2 or q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise slope.ShapeError(
            f"{name}: expected query (..., L, E), key (..., S, E) and value (..., S, Ev) (query and key of the same "
            f"size E, key and value of the same length S), got {q.shape}, {k.shape} and {v.shape}"
        )
    batch = _attention_batch(name, q.shape, k.shape, v.shape)
    if not q.dtype == k.dtype == v.dtype:
        raise slope.DTypeError(f"{name}: query, key and value must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not isinstance(is_causal, (bool, np.bool_)):  # (PyTorch refuses others; its fifth argument is dropout_p: 0.5
        raise TypeError(f"{name}: is_causal must be a bool, got {is_causal!r}")  # there was taken as is_causal=True)
    if not 0.0 <= _number("scaled_dot_product_attention", dropout_p, "dropout_p") <= 1.0:
        raise ValueError(f"{name}: dropout_p must be in [0, 1], got {dropout_p}")
    if attn_mask is not None:
        if is_causal:
            raise ValueError(f"{name}: pass either attn_mask or is_causal=True, not both (as PyTorch)")
        attn_mask = _tensor(attn_mask)  # bool: where allowed; others are added
        # PyTorch's rule: bool, float32 or the query's dtype (an integer mask for float scores is likely a 0/1 mask
        # meant as bool; a float64 mask for float32 scores is refused too)
        if attn_mask.dtype not in (slope.bool_, slope.float32, query_dtype):
            raise slope.DTypeError(f"{name}: attn_mask must be bool, float32 or the query's dtype "
                                   f"({query_dtype.name}), got {attn_mask.dtype.name} (as PyTorch)")  # fmt: skip
        scores = (*batch, q.shape[-2], k.shape[-2])
        if _broadcast(name, attn_mask.shape, scores) != scores:  # (a mask may not add dimensions to the output)
            raise slope.ShapeError(f"{name}: attn_mask of shape {attn_mask.shape} does not broadcast to the scores' "
                                   f"shape {scores}")  # fmt: skip
    return q, k, v, attn_mask


def _attention_batch(name: str, query: tuple, key: tuple, value: tuple) -> tuple:
    """The broadcast batch dimensions (all but the last two) of query, key and value, or a ShapeError naming the three
    shapes (it was slope.matmul's "shapes (2, 4) and (2, 2) cannot be broadcast together")."""
    batch = _broadcast_or_none(query[:-2], key[:-2], value[:-2])
    if batch is not None:
        return batch
    message = (f"{name}: the batch dimensions (all but the last two) of query {query}, key {key} and value {value} "
               f"must broadcast together (as PyTorch)")  # fmt: skip
    heads = len(query) >= 3 and len(key) >= 3 and key[-3] != query[-3] and key[-3] > 0 and query[-3] % key[-3] == 0
    if heads and _broadcast_or_none(query[:-3], key[:-3], value[:-3]) is not None and key[:-2] == value[:-2]:
        message += (f"; only the head counts differ ({query[-3]} query heads, {key[-3]} key/value heads): "
                    f"grouped-query attention (PyTorch's enable_gqa) is not offered, so repeat each key and value head "
                    f"{query[-3] // key[-3]} times along dimension -3")  # fmt: skip
    raise slope.ShapeError(message)


def _broadcast_or_none(*shapes: tuple) -> tuple | None:
    """The broadcast of the shapes, or None when they do not broadcast."""
    try:
        return tuple(np.broadcast_shapes(*shapes))
    except ValueError:
        return None


def _broadcast(name: str, *shapes: tuple) -> tuple:
    shape = _broadcast_or_none(*shapes)
    if shape is None:
        raise slope.ShapeError(f"{name}: shapes {', '.join(map(str, shapes))} do not broadcast")
    return shape


def masked_softmax(scores: Tensor) -> Tensor:
    """Softmax over the last dimension of masked attention scores, with zeros (and zero gradients) in rows that are
    -inf everywhere, as PyTorch's scaled_dot_product_attention gives (a plain softmax gives NaN there)."""
    if scores.shape[-1] == 0:  # no keys: no weights (their max raised "cannot reduce over an empty dimension")
        return scores
    dead = scores.max(-1, keepdim=True) == -math.inf  # (NaN rows stay NaN: NaN is not -inf)
    return slope.where(dead, 0.0, softmax(slope.where(dead, 0.0, scores), -1))


def scaled_dot_product_attention(q: Any, k: Any, v: Any, attn_mask: Any = None, is_causal: bool = False,
                                 dropout_p: float = 0.0, key: Tensor | None = None,
                                 scale: float | None = None) -> Tensor:  # fmt: skip
    """softmax(q @ k^T * scale + mask) @ v, with PyTorch's meanings: a bool attn_mask is True where attention is
    allowed, a float one is added to the scores; is_causal masks the upper triangle (top-left aligned); dropout_p
    drops attention weights with random `key` (else the active `nn.rng` block); scale defaults to 1/sqrt(E)."""
    q, k, v, attn_mask = _attention_args(q, k, v, attn_mask, is_causal, dropout_p)
    check_key("scaled_dot_product_attention", key, "scale")
    if q.dtype in (slope.float16, slope.bfloat16):  # scores, softmax and the weighted sum in float32, rounded once, as
        # PyTorch's CPU kernel (bfloat16 scores 600 and 601.5 both rounded to 600: weights 0.5 and 0.5, not 0.18, 0.82)
        wide = [t.astype(slope.float32) for t in (q, k, v)]
        mask = attn_mask if attn_mask is None or attn_mask.dtype == slope.bool_ else attn_mask.astype(slope.float32)
        return scaled_dot_product_attention(*wide, mask, is_causal, dropout_p, key, scale).astype(q.dtype)
    length, source = q.shape[-2], k.shape[-2]
    if scale is None:  # (no features: PyTorch's 1 / sqrt(0) is inf, and the scores of empty products are 0s)
        scale = 1.0 / math.sqrt(q.shape[-1]) if q.shape[-1] else 1.0
    scale = _number("scaled_dot_product_attention", scale, "scale")
    scores = (q * scale) @ slope.transpose(k, -2, -1)
    if is_causal:
        attn_mask = slope.tril(slope.ones((length, source), dtype=slope.bool_))
    if attn_mask is not None and attn_mask.dtype == slope.bool_:
        scores = slope.where(attn_mask, scores, -math.inf)
    elif attn_mask is not None:
        scores = scores + attn_mask.astype(scores.dtype)
    # (a causal mask leaves every row a key; other masks may not, and such a row attends to nothing)
    weights = softmax(scores, -1) if attn_mask is None or is_causal else masked_softmax(scores)
    if dropout_p > 0.0:
        if dropout_p == 1.0:
            weights = weights * 0.0
        else:
            key = next_key("scaled_dot_product_attention", (weights, v)) if key is None else key
            weights = dropped(weights, dropout_p, key)
    return weights @ v


# ----------------------------------------------------------------------------------------------- losses


def cross_entropy(logits: Any, target: Any, weight: Any = None, ignore_index: int = -100, reduction: str = "mean",
                  label_smoothing: float = 0.0) -> Tensor:  # fmt: skip
    """Softmax cross-entropy over dim 1 (or the only dim) with class-index or probability targets, with PyTorch's
    arguments: `weight` per class, `ignore_index` (class-index targets equal to it add nothing, and "mean" divides by
    the summed weights of the others), `reduction`, `label_smoothing`."""
    logits, target = _tensor(logits), _tensor(target)
    if not logits.dtype.is_float:  # as in PyTorch (class scores are floats; integers are likely class indices)
        raise slope.DTypeError(f"slope.cross_entropy: expected floating-point logits, got {logits.dtype.name}")
    if logits.ndim == 0:
        raise slope.ShapeError("slope.cross_entropy: expected logits with a class dimension, got a 0-d tensor")
    if not 0.0 <= _number("cross_entropy", label_smoothing, "label_smoothing") <= 1.0:
        raise ValueError(f"slope.cross_entropy: label_smoothing must be in [0, 1], got {label_smoothing}")
    class_dim = 1 if logits.ndim > 1 else 0
    classes = logits.shape[class_dim]
    if target.shape == logits.shape and not target.dtype.is_float:  # (PyTorch's probabilities: a target of the logits'
        # shape; it was read as class indices, "targets of shape (2, 4) do not fit input of shape (2, 4)")
        indices = logits.shape[:class_dim] + logits.shape[class_dim + 1 :]
        raise slope.DTypeError(f"slope.cross_entropy: expected floating-point targets for class probabilities (a "
                               f"target of the logits' shape {logits.shape}), got {target.dtype.name}, as PyTorch; "
                               f"class indices have shape {indices}")  # fmt: skip
    # class-index targets: a weight of the logits' dtype; probabilities: any, promoted with them (as PyTorch)
    weight = _class_weight("cross_entropy", weight, logits, class_dim, same_dtype=not target.dtype.is_float)
    if not target.dtype.is_float:
        half = logits.dtype in (slope.float16, slope.bfloat16)  # then log-probabilities, products and sums in float32,
        logp = log_softmax(logits.astype(slope.float32) if half else logits, class_dim)  # rounded once
        return class_index_loss("cross_entropy", logp, target, weight, ignore_index, reduction, label_smoothing,
                                dtype=logits.dtype)  # fmt: skip
    indices = logits.shape[:class_dim] + logits.shape[class_dim + 1 :]
    if target.shape == indices:  # (float labels: the error spoke of probability targets; PyTorch: "expected target
        # dtype to be Long")
        raise slope.DTypeError(f"slope.cross_entropy: class-index targets (of shape {indices} for logits of shape "
                               f"{logits.shape}) must be integers, got {target.dtype.name}, as PyTorch: convert them, "
                               "e.g. target.astype(slope.int64); probability targets have the logits' shape")  # fmt: skip
    if ignore_index != -100:  # (it was ignored: PyTorch refuses it)
        raise ValueError("slope.cross_entropy: ignore_index is not supported for probability (floating-point) targets")
    if target.shape != logits.shape:
        raise slope.ShapeError(
            f"slope.cross_entropy: probability targets {target.shape} must match logits {logits.shape}"
        )
    # the result in PyTorch's dtype, the promotion of the logits', the targets' and the weight's (float16 logits and
    # float32 targets: float32; float32 logits and targets with a float64 weight: float64), computed in it (float16 and
    # bfloat16 in float32, rounded once)
    out = slope.dtypes.promote(logits.dtype, target.dtype)
    out = out if weight is None else slope.dtypes.promote(out, weight.dtype)
    wide = slope.float32 if out in (slope.float16, slope.bfloat16) else out
    logp = log_softmax(logits.astype(wide), class_dim)
    target, weight = target.astype(wide), None if weight is None else weight.astype(wide)
    probs = target * (1.0 - label_smoothing) + label_smoothing / classes if label_smoothing else target
    if weight is not None:
        probs = probs * weight
    return reduce_loss("cross_entropy", -(probs * logp).sum(class_dim), reduction).astype(out)


def _class_weight(name: str, weight: Any, scores: Tensor, class_dim: int, same_dtype: bool = True) -> Tensor | None:
    """A per-class weight checked against the scores (N, C, ...) and shaped to multiply them (C, 1, ...); of the scores'
    dtype unless `same_dtype` is False (cross_entropy's probability targets promote with it, as PyTorch)."""
    if weight is None:
        return None
    if isinstance(weight, str):  # (Slope before 2026-12 took reduction third; PyTorch's third argument is weight)
        raise TypeError(f"slope.{name}: weight must be a tensor, got {weight!r}: pass reduction= by keyword")
    weight, classes = _tensor(weight), scores.shape[class_dim]
    wanted = f"a {scores.dtype.name} tensor" if same_dtype else "a tensor"
    if weight.shape != (classes,):
        raise slope.ShapeError(f"slope.{name}: weight must be {wanted} of shape ({classes},) (one per class), got "
                               f"{weight.dtype.name} of shape {weight.shape}")  # fmt: skip
    if same_dtype and weight.dtype != scores.dtype:  # (PyTorch: "expected scalar type Float but found Double")
        raise slope.DTypeError(f"slope.{name}: weight must be {wanted} (the input's dtype, as PyTorch) of shape "
                               f"({classes},), got {weight.dtype.name} of shape {weight.shape}")  # fmt: skip
    return weight.reshape((classes,) + (1,) * (scores.ndim - class_dim - 1))


def class_index_loss(name: str, logp: Tensor, target: Tensor, weight: Tensor | None, ignore_index: int,
                     reduction: str, label_smoothing: float = 0.0, dtype: slope.DType | None = None) -> Tensor:  # fmt: skip
    """The negative log-likelihood of log-probabilities (N, C, ...) at class indices (N, ...), as PyTorch's nll_loss
    (and cross_entropy's label smoothing): per-class `weight` (already shaped (C, 1, ...)), targets equal to
    `ignore_index` left out, "mean" divided by the summed weights of the targets kept (NaN when none is); the result
    in `dtype` (logp's unless given: cross_entropy passes float16 and bfloat16 logits' log-probabilities in float32)."""
    if not target.dtype.is_int:
        raise slope.DTypeError(f"slope.{name}: target must hold class indices (integers), got {target.dtype.name}")
    (ignore_index,) = ints(name, ignore_index, "ignore_index", count=1)  # (1.5 was taken and ignored nothing)
    target = target.astype(slope.int64)  # (in uint8, ignore_index -100 wrapped to class 156, and int8's 156 to -100)
    class_dim = 1 if logp.ndim > 1 else 0
    classes = logp.shape[class_dim]
    expected = logp.shape[:class_dim] + logp.shape[class_dim + 1 :]
    if target.shape != expected:
        raise slope.ShapeError(f"slope.{name}: class-index targets of shape {target.shape} do not fit input of shape "
                               f"{logp.shape} (expected {expected})")  # fmt: skip
    ignored = target == _number(name, ignore_index, "ignore_index")
    dtype = dtype or logp.dtype
    half = dtype if dtype in (slope.float16, slope.bfloat16) else None
    if half is not None:  # products and sums in float32, rounded once at the end, as PyTorch's kernel (rounding each
        logp = logp.astype(slope.float32)  # weight * log-probability to float16 was up to 2.7 ulps off)
        weight = None if weight is None else weight.astype(slope.float32)
    what = f"input of shape {logp.shape} ({classes} classes)"
    if target.buffer is not None:  # concrete: the error names this function (traced: the gather's check, below)
        values = target.numpy()
        check_indices(name, slope.tensor(values[values != ignore_index]), 0, classes, what)
    if target.buffer is None and classes:  # traced: a target out of range is an IndexError when it runs
        target = slope.where(ignored, -1, checked_when_run(name, slope.where(ignored, 0, target), classes, what))
    elif 0 <= ignore_index < classes:  # (an ignored class must match no class; others never do)
        target = slope.where(ignored, -1, target)
    # each example's row of the classes, True at its target (none for an ignored one, whose target is not a class)
    chosen = target.reshape(target.shape + (1,)) == slope.tensor(np.arange(classes)).astype(target.dtype)
    if class_dim == 1 and logp.ndim > 2:
        chosen = chosen.permute((0, chosen.ndim - 1, *range(1, chosen.ndim - 1)))
    # the target's log-probability (a select, not a gather: its gradient is no scatter, which costs more on small
    # outputs), 0 for an ignored target; times its class's weight, where PyTorch's 0 * -inf is NaN too
    at_target = slope.where(chosen, logp, 0.0).sum(class_dim, keepdim=True)
    if weight is None:
        weights = (~ignored).astype(logp.dtype)
    else:
        weights = slope.where(chosen, weight, 0.0).sum(class_dim)
        at_target = weights.unsqueeze(class_dim) * at_target
    if not classes:  # nothing to pick: PyTorch's 0 for an ignored target; NaN for another (traced: eager raises above)
        at_target = slope.where(ignored.unsqueeze(class_dim), at_target, math.nan)
    if reduction == "mean":  # (each term divided on its own, as PyTorch: 0 / 0 is NaN even beside a smooth term)
        losses = -at_target.sum() / weights.sum()
    else:
        losses = -at_target.squeeze(class_dim)
    if label_smoothing:  # PyTorch's terms: the sum over all classes is rounded to logits' dtype (may overflow)
        smooth = -(logp if weight is None else logp * weight).sum(class_dim)
        if half is not None:  # (only its overflow kept: rounding it to float16 too was up to 1.1 ulps off)
            rounded = smooth.astype(half).astype(slope.float32)
            smooth = slope.where(slope.isinf(rounded), rounded, smooth)
        smooth = slope.where(ignored, 0.0, smooth)
        smooth = smooth.sum() / weights.sum() if reduction == "mean" else smooth
        losses = losses * (1.0 - label_smoothing) + smooth * (label_smoothing / classes if classes else math.nan)
    losses = losses if reduction == "mean" else reduce_loss(name, losses, reduction)
    return losses if half is None else losses.astype(half)


def reduce_loss(name: str, losses: Tensor, reduction: str) -> Tensor:
    """Per-example losses reduced as PyTorch's `reduction` argument says ("mean", "sum" or "none")."""
    if reduction == "mean":
        return losses.mean()
    if reduction == "sum":
        return losses.sum()
    if reduction == "none":
        return losses
    raise ValueError(f"slope.{name}: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


# the functions registered as procedures (the operators register themselves through slope_operators)
procedures: dict[str, Callable] = {
    fn.__name__: fn
    for fn in (
        sigmoid,
        leaky_relu,
        silu,
        softplus,
        logsumexp,
        one_hot,
        linear,
        conv_transpose,
        avg_pool,
        cross_entropy,
        scaled_dot_product_attention,
    )
}
