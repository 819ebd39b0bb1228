"""Layers: Linear, convolutions, normalizations, Embedding, Dropout, attention, pooling, containers, activations.

Parameters are created at construction from `key` when one is given, else from the global generator
(`slope.manual_seed`), with PyTorch's default initializations. Shapes and the meaning of arguments follow PyTorch.
"""

from __future__ import annotations

import math
from typing import Any, Iterator, Sequence

import numpy as np

import slope
from slope import Tensor
from slope.operators import check_indices, ints
from slope.procedures import _centered

from . import functional, init
from .module import Module, check_buffer_update, check_key, next_key
from .operators import layer_norm, overflow_to_nan

__all__ = [
    "AvgPool1d",
    "AvgPool2d",
    "AvgPool3d",
    "BatchNorm",
    "BatchNorm1d",
    "BatchNorm2d",
    "Conv1d",
    "Conv2d",
    "Conv3d",
    "ConvTranspose1d",
    "ConvTranspose2d",
    "ConvTranspose3d",
    "Dropout",
    "Embedding",
    "Flatten",
    "GELU",
    "Identity",
    "LayerNorm",
    "LeakyReLU",
    "Linear",
    "LogSoftmax",
    "MaxPool1d",
    "MaxPool2d",
    "ModuleList",
    "MultiHeadAttention",
    "MultiheadAttention",
    "ReLU",
    "RMSNorm",
    "Sequential",
    "SiLU",
    "Sigmoid",
    "Softmax",
    "Softplus",
    "Tanh",
    "dropout",
]


def _keys(layer: Module, key: Tensor | None, count: int) -> list[Tensor | None]:
    """`count` independent keys from the layer's `key` (checked), or Nones (meaning: use the global generator)."""
    check_key(f"nn.{type(layer).__name__}", key, layer.pytorch_argument_at_key)
    if key is None:
        return [None] * count
    split = slope.random.split(key, count)
    return [split[i] for i in range(count)]


def _ints(layer: Module, value: Any, what: str, lowest: int | None = 0, count: int | None = None) -> tuple[int, ...]:
    """Checked int arguments of a layer (errors name it: slope.nn.Linear, ...)."""
    return ints(f"nn.{type(layer).__name__}", value, what, lowest, count)


# ----------------------------------------------------------------------------------------------- linear


class Linear(Module):
    """y = x @ weight.T + bias, weight (out_features, in_features); init U(-1/sqrt(in), 1/sqrt(in))."""

    # PyTorch's argument in the position of `key`, named by the error when one lands there (nn.Linear(3, 4, True, "cpu"))
    pytorch_argument_at_key = "device"

    def __init__(self, in_features: int, out_features: int, bias: bool = True, key: Tensor | None = None,
                 dtype: Any = None) -> None:  # fmt: skip
        super().__init__()
        self.in_features, self.out_features = _ints(self, (in_features, out_features), "in_features and out_features")
        weight_key, bias_key = _keys(self, key, 2)
        bound = 1.0 / math.sqrt(in_features) if in_features > 0 else 0.0
        self.weight = init.uniform((out_features, in_features), -bound, bound, key=weight_key, dtype=dtype)
        self.bias = init.uniform((out_features,), -bound, bound, key=bias_key, dtype=dtype) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        """Apply the affine map to the last dimension."""
        x = functional._tensor(x)
        functional.check_linear_dtypes("nn.Linear", x, self.weight, self.bias, hint=_dtype_hint(x, self.weight))
        return functional.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


# ----------------------------------------------------------------------------------------------- convolution


class _ConvBase(Module):
    """What convolutions and transposed convolutions share: arguments, PyTorch's initialization, unbatched inputs."""

    spatial_dims = 2
    pytorch_argument_at_key = "padding_mode"

    def _setup(self, in_channels: int, out_channels: int, kernel_size: Any, stride: Any, dilation: Any, groups: int,
               weight_channels: tuple[int, int], bias: bool, key: Tensor | None, dtype: Any) -> None:  # fmt: skip
        """Check and store the arguments; make the weight, (weight_channels[0], weight_channels[1] / groups,
        *kernel), and the bias, both uniform in +-1/sqrt(fan_in)."""
        n = self.spatial_dims
        in_channels, out_channels = _ints(self, (in_channels, out_channels), "in_channels and out_channels")
        (groups,) = _ints(self, groups, "groups", 1, 1)
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"{type(self).__name__}: in_channels ({in_channels}) and out_channels ({out_channels}) must be "
                f"divisible by groups ({groups})"
            )
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = _ints(self, kernel_size, "kernel_size", 1, n)
        self.stride = _ints(self, stride, "stride", 1, n)
        self.dilation = _ints(self, dilation, "dilation", 1, n)
        shape = (weight_channels[0], weight_channels[1] // groups, *self.kernel_size)
        fan_in = init.fans(shape)[0]  # (0 without input channels: an empty weight, a zero bias, as Linear(0, n))
        bound = 1.0 / math.sqrt(fan_in) if fan_in else 0.0
        weight_key, bias_key = _keys(self, key, 2)
        self.weight = init.uniform(shape, -bound, bound, key=weight_key, dtype=dtype)
        self.bias = init.uniform((out_channels,), -bound, bound, key=bias_key, dtype=dtype) if bias else None

    def _batched(self, x: Tensor, convolve: Any) -> Tensor:
        """convolve(x) for x of shape (N, C_in, *spatial); an unbatched (C_in, *spatial) x gets a batch of one."""
        unbatched = x.ndim == self.spatial_dims + 1
        out = convolve(x.unsqueeze(0) if unbatched else x)
        return out.squeeze(0) if unbatched else out


PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def _padding_mode(layer: Module, mode: Any, allowed: tuple) -> str:
    """A checked padding_mode: PyTorch's four for convolutions, only 'zeros' for transposed ones (PyTorch's errors)."""
    name = type(layer).__name__
    if mode not in PADDING_MODES or not isinstance(mode, str):
        raise ValueError(f"nn.{name}: padding_mode must be one of {PADDING_MODES}, but got padding_mode={mode!r}")
    if mode not in allowed:
        raise ValueError(f'nn.{name}: only "zeros" padding mode is supported for {name} (as PyTorch), got {mode!r}')
    return mode


class _ConvNd(_ConvBase):
    """N-d convolution (cross-correlation) with PyTorch's arguments and initialization."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Any, stride: Any = 1, padding: Any = 0,
                 dilation: Any = 1, groups: int = 1, bias: bool = True, key: Tensor | None = None,
                 dtype: Any = None, *, padding_mode: str = "zeros") -> None:  # fmt: skip
        super().__init__()
        self._setup(in_channels, out_channels, kernel_size, stride, dilation, groups, (out_channels, in_channels),
                    bias, key, dtype)  # fmt: skip
        self.padding_mode = _padding_mode(self, padding_mode, PADDING_MODES)
        unstrided = set(self.stride) == {1}  # PyTorch allows padding="same" only without a stride
        if isinstance(padding, str) and not (padding == "valid" or (padding == "same" and unstrided)):
            raise ValueError(
                f"{type(self).__name__}: padding must be 'valid', 'same' (with stride 1) or sizes, got {padding!r}"
            )
        self.padding = padding if isinstance(padding, str) else _ints(self, padding, "padding", 0, self.spatial_dims)

    def forward(self, x: Tensor) -> Tensor:
        """Convolve x of shape (N, C_in, *spatial) (or unbatched (C_in, *spatial)); a padding_mode other than 'zeros'
        pads with F.pad's mode first and convolves without padding, as PyTorch."""
        if self.padding_mode == "zeros":
            padding = self.padding
        else:
            x, padding = self._mode_padded(functional._tensor(x)), 0
        return self._batched(
            x, lambda a: slope.conv(a, self.weight, self.bias, self.stride, padding, self.dilation, self.groups)
        )

    def _mode_padded(self, x: Tensor) -> Tensor:
        """x padded in its spatial dimensions by self.padding_mode (padding='same': PyTorch's split, the odd one
        after)."""
        if self.padding == "same":
            totals = [d * (k - 1) for k, d in zip(self.kernel_size, self.dilation)]
            pads = tuple((total // 2, total - total // 2) for total in totals)
        else:
            pads = tuple((p, p) for p in ((0,) * self.spatial_dims if self.padding == "valid" else self.padding))
        return functional.pad_by_mode(f"nn.{type(self).__name__}", x, pads, self.padding_mode)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, groups={self.groups}, bias={self.bias is not None}"
            + ("" if self.padding_mode == "zeros" else f", padding_mode={self.padding_mode}")
        )


class Conv1d(_ConvNd):
    """1-d convolution over (N, C, L)."""

    spatial_dims = 1


class Conv2d(_ConvNd):
    """2-d convolution over (N, C, H, W)."""

    spatial_dims = 2


class Conv3d(_ConvNd):
    """3-d convolution over (N, C, D, H, W)."""

    spatial_dims = 3


class _ConvTransposeNd(_ConvBase):
    """N-d transposed convolution; weight (in_channels, out_channels / groups, *kernel), as PyTorch."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Any, stride: Any = 1, padding: Any = 0,
                 output_padding: Any = 0, groups: int = 1, bias: bool = True, dilation: Any = 1,
                 key: Tensor | None = None, dtype: Any = None, *, padding_mode: str = "zeros") -> None:  # fmt: skip
        super().__init__()
        self.padding_mode = _padding_mode(self, padding_mode, ("zeros",))
        self.padding = _ints(self, padding, "padding", 0, self.spatial_dims)
        self.output_padding = _ints(self, output_padding, "output_padding", 0, self.spatial_dims)
        self._setup(in_channels, out_channels, kernel_size, stride, dilation, groups, (in_channels, out_channels),
                    bias, key, dtype)  # fmt: skip

    def forward(self, x: Tensor, output_size: Any = None) -> Tensor:
        """Transposed convolution of x of shape (N, C_in, *spatial) (or unbatched); output_size (the spatial sizes,
        or the whole shape) picks the output padding instead of output_padding, as PyTorch."""
        x = functional._tensor(x)
        output_padding = self.output_padding if output_size is None else self._output_padding(x, output_size)
        return self._batched(
            x,
            lambda a: functional.conv_transpose(
                a, self.weight, self.bias, self.stride, self.padding, output_padding, self.groups, self.dilation
            ),
        )

    def _output_padding(self, x: Tensor, output_size: Any) -> tuple[int, ...]:
        """PyTorch's output padding for a requested output size: its excess over the smallest output, which must be
        below the stride (PyTorch's ValueErrors)."""
        n, name = self.spatial_dims, f"nn.{type(self).__name__}"
        leading = 2 if x.ndim == n + 2 else 1
        for size in output_size if isinstance(output_size, (tuple, list)) else [output_size]:
            functional.refuse_traced(name, "output_size", size)
        sizes = tuple(output_size)
        sizes = sizes[leading:] if len(sizes) == leading + n else sizes
        if len(sizes) != n:
            raise ValueError(f"{name}: for {x.ndim}D input, output_size must have {n} or {leading + n} elements (got "
                             f"{len(tuple(output_size))}), as PyTorch")  # fmt: skip
        sizes = _ints(self, sizes, "output_size", 0, n)
        smallest = tuple(
            (size - 1) * st - 2 * p + d * (k - 1) + 1
            for size, st, p, d, k in zip(x.shape[leading:], self.stride, self.padding, self.dilation, self.kernel_size)
        )
        largest = tuple(low + st - 1 for low, st in zip(smallest, self.stride))
        if any(not low <= size <= high for size, low, high in zip(sizes, smallest, largest)):
            raise ValueError(f"{name}: requested an output size of {list(sizes)}, but valid sizes range from "
                             f"{list(smallest)} to {list(largest)} (for an input of {x.shape[leading:]}), as PyTorch")  # fmt: skip
        return tuple(size - low for size, low in zip(sizes, smallest))

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, output_padding={self.output_padding}, bias={self.bias is not None}"
        )


class ConvTranspose1d(_ConvTransposeNd):
    """1-d transposed convolution over (N, C, L)."""

    spatial_dims = 1


class ConvTranspose2d(_ConvTransposeNd):
    """2-d transposed convolution over (N, C, H, W)."""

    spatial_dims = 2


class ConvTranspose3d(_ConvTransposeNd):
    """3-d transposed convolution over (N, C, D, H, W)."""

    spatial_dims = 3


# ----------------------------------------------------------------------------------------------- pooling


class _PoolNd(Module):
    spatial_dims = 2
    mode = "max"

    def __init__(self, kernel_size: Any, stride: Any = None, padding: Any = 0, dilation: Any = 1,
                 return_indices: bool = False, ceil_mode: bool = False) -> None:  # fmt: skip
        super().__init__()
        n = self.spatial_dims
        self.kernel_size = _ints(self, kernel_size, "kernel_size", None, n)
        self.stride = self.kernel_size if stride is None else _ints(self, stride, "stride", None, n)
        self.padding = _ints(self, padding, "padding", None, n)
        self.dilation = _ints(self, dilation, "dilation", None, n)
        self.return_indices, self.ceil_mode, self.count_include_pad = bool(return_indices), bool(ceil_mode), True
        self.divisor_override = None

    def forward(self, x: Tensor) -> Tensor:
        """Pool over the trailing spatial dimensions."""
        n = self.spatial_dims
        if x.ndim not in (n + 1, n + 2):  # (the functions pool any leading dimensions; PyTorch's layers refuse them)
            raise slope.ShapeError(f"slope.nn.{type(self).__name__}: expected input of {n + 1} or {n + 2} dimensions "
                                   f"((C, *spatial) or (N, C, *spatial)), got shape {x.shape}")  # fmt: skip
        if self.mode == "max":
            return functional.max_pool(x, self.kernel_size, self.stride, self.padding, self.dilation,
                                       return_indices=self.return_indices, ceil_mode=self.ceil_mode)  # fmt: skip
        return functional.avg_pool(x, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                                   self.count_include_pad, self.divisor_override)  # fmt: skip

    def extra_repr(self) -> str:
        shown = f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"
        return shown + (f", dilation={self.dilation}, ceil_mode={self.ceil_mode}" if self.mode == "max" else "")


class MaxPool1d(_PoolNd):
    """Max pooling over (N, C, L)."""

    spatial_dims = 1


class MaxPool2d(_PoolNd):
    """Max pooling over (N, C, H, W)."""

    spatial_dims = 2


class MaxPool3d(_PoolNd):
    """Max pooling over (N, C, D, H, W)."""

    spatial_dims = 3


class _AvgPoolNd(_PoolNd):
    mode = "avg"

    def __init__(self, kernel_size: Any, stride: Any = None, padding: Any = 0, ceil_mode: bool = False,
                 count_include_pad: bool = True, divisor_override: int | None = None) -> None:  # fmt: skip
        super().__init__(kernel_size, stride, padding, ceil_mode=ceil_mode)
        if divisor_override is not None and self.spatial_dims == 1:  # (PyTorch: an unexpected keyword argument)
            raise TypeError(f"nn.{type(self).__name__}: PyTorch's AvgPool1d takes no divisor_override (AvgPool2d and "
                            f"AvgPool3d do), got {divisor_override!r}")  # fmt: skip
        self.count_include_pad, self.divisor_override = bool(count_include_pad), divisor_override


class AvgPool1d(_AvgPoolNd):
    """Average pooling over (N, C, L) (zero padding counted unless count_include_pad=False, as PyTorch)."""

    spatial_dims = 1


class AvgPool2d(_AvgPoolNd):
    """Average pooling over (N, C, H, W) (zero padding counted unless count_include_pad=False, as PyTorch)."""

    spatial_dims = 2


class AvgPool3d(_AvgPoolNd):
    """Average pooling over (N, C, D, H, W) (zero padding counted unless count_include_pad=False, as PyTorch)."""

    spatial_dims = 3


# ----------------------------------------------------------------------------------------------- normalization


class BatchNorm(Module):
    """Batch normalization over dim 1 of (N, C, *spatial), with running statistics kept as buffers.

    In training mode it normalizes with the batch statistics and assigns updated `running_mean`/`running_var` to
    itself (PyTorch's momentum rule, unbiased running variance; momentum=None averages all batches so far, counted in
    the `num_batches_tracked` buffer). Inside jit or grad, get the updated model back
    with `out, model = nn.apply(model, x)` (elsewhere the update would be lost, and is an error). In eval mode it uses
    the running statistics.
    """

    input_dims: tuple[int, ...] | None = None  # the ranks of input it takes (None: any from 2; PyTorch's 1d: 2 or 3)

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, dtype: Any = None) -> None:  # fmt: skip
        super().__init__()
        (self.num_features,) = _ints(self, num_features, "num_features", 0, 1)
        self.eps = float(eps)
        self.momentum = None if momentum is None else float(momentum)
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        dtype = _parameter_dtype(self, dtype, affine)
        self.weight = init.ones((num_features,), dtype) if affine else None
        self.bias = init.zeros((num_features,), dtype) if affine else None
        if track_running_stats:
            self.register_buffer("running_mean", init.zeros((num_features,), dtype))
            self.register_buffer("running_var", init.ones((num_features,), dtype))
            if momentum is None:  # (PyTorch keeps the count for every momentum; here only where it is read)
                self.register_buffer("num_batches_tracked", slope.zeros((), dtype=slope.int64))

    def _from_pytorch_state(self, state: dict, prefix: str) -> dict:
        """The state without PyTorch's `num_batches_tracked` where this layer keeps no count (a momentum is set)."""
        key = f"{prefix}num_batches_tracked"
        if key not in state or (self.track_running_stats and self.momentum is None):
            return state
        return {name: value for name, value in state.items() if name != key}

    def forward(self, x: Tensor) -> Tensor:
        """Normalize each channel."""
        ranks_ok = x.ndim >= 2 if self.input_dims is None else x.ndim in self.input_dims
        if not ranks_ok or x.shape[1] != self.num_features:
            ranks = "" if self.input_dims is None else f" of {' or '.join(map(str, self.input_dims))} dimensions"
            raise ValueError(
                f"{type(self).__name__}: expected input (N, {self.num_features}, ...){ranks}, got shape {x.shape}"
            )
        self._check_unstacked()
        narrow = _check_norm_dtypes(self, x, self.weight, self.bias, getattr(self, "running_mean", None))
        batch_statistics = self.training or not self.track_running_stats
        if not (self.eps > 0 if batch_statistics else self.eps >= 0):  # (PyTorch's checks and messages)
            which = "positive during training" if batch_statistics else "non-negative"
            raise ValueError(f"{type(self).__name__}: batch_norm eps must be {which}, but got {self.eps}")
        wide = x.astype(slope.float32) if narrow else x
        shape = (1, self.num_features) + (1,) * (x.ndim - 2)
        dims = (0, *range(2, x.ndim))
        if batch_statistics:
            if x.numel() == self.num_features:  # (one value per channel has no spread to normalise by)
                raise ValueError(f"{type(self).__name__}: expected more than 1 value per channel when using batch "
                                 f"statistics, got input of shape {x.shape} (as PyTorch)")  # fmt: skip
            # the mean refined by a second pass (a constant channel normalises to 0s), the centering kept for `out`:
            # as many reductions as the mean and slope.var's two, which centered again
            mean, centered = _centered(wide, dims)
            var = (centered * centered).mean(dims)
            mean = mean.reshape(var.shape)
            rstd = overflow_to_nan(var, self.eps)  # (a variance that overflowed: NaN, not a channel of 0s)
            if self.training and self.track_running_stats:
                count = x.numel() // self.num_features
                if count or self.momentum is None:  # (an update a transformation would lose is an error)
                    check_buffer_update(self)
                if self.momentum is None:  # the cumulative average: batch n weighs 1 / n
                    self.num_batches_tracked = self.num_batches_tracked + 1
                    m = 1.0 / self.num_batches_tracked.astype(slope.float64)
                else:
                    m = self.momentum
                unbiased = var.detach() * (count / max(count - 1, 1))
                kept = self.running_mean.dtype  # (the statistics keep their dtype, as PyTorch's buffers)
                if count:  # (an empty batch leaves them as they are, as PyTorch: its NaN mean made them NaN)
                    # (in float32 for halves: float16's 1 - 0.01 is 0.990234, and the statistics drifted 2.4% high)
                    old_mean, old_var = (s.detach().astype(wide.dtype) for s in (self.running_mean, self.running_var))
                    self.running_mean = (old_mean * (1.0 - m) + mean.detach() * m).astype(kept)
                    self.running_var = (old_var * (1.0 - m) + unbiased * m).astype(kept)
        else:  # (halves' statistics in float32: var + eps and its rsqrt were rounded to bfloat16)
            centered = wide - self.running_mean.detach().astype(wide.dtype).reshape(shape)
            rstd = (self.running_var.detach().astype(wide.dtype) + self.eps).rsqrt()
        out = centered * rstd.reshape(shape)
        if self.affine:
            out = out * self.weight.reshape(shape) + self.bias.reshape(shape)
        return out.astype(x.dtype) if narrow else out

    def _check_unstacked(self) -> None:
        """Refuse statistics and parameters stacked by a vmap (nn.apply under vmap keeps each example's statistics):
        they were read as one layer's and failed in an unrelated reshape."""
        names = ("running_mean", "running_var", "weight", "bias", "num_batches_tracked")
        leaves = [(name, getattr(self, name, None)) for name in names]
        shapes = {name: () if name == "num_batches_tracked" else (self.num_features,) for name in names}
        stacked = [(name, leaf.shape) for name, leaf in leaves if leaf is not None and leaf.shape != shapes[name]]
        if not stacked:
            return
        described = ", ".join(f"{name} {shape}" for name, shape in stacked)
        raise slope.ShapeError(
            f"slope.nn.{type(self).__name__}: expected running statistics and parameters of shape "
            f"({self.num_features},), got {described}: a model returned by nn.apply under slope.vmap holds each "
            "example's running statistics (its leaves stacked along a new dim 0). Call it under vmap again "
            "(`slope.vmap(lambda m, x: nn.apply(m, x))(model, xs)`), take one example's copy "
            "(`slope.tree.map(lambda leaf: leaf[i], model)`), or run nn.apply outside vmap for statistics over the whole "
            "batch (BatchNorm normalizes over dim 0 itself)"
        )

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}"


class BatchNorm1d(BatchNorm):
    """Batch normalization over (N, C) or (N, C, L)."""

    input_dims = (2, 3)


class BatchNorm2d(BatchNorm):
    """Batch normalization over (N, C, H, W)."""

    input_dims = (4,)


def _normalized_shape(layer: Module, normalized_shape: Any) -> tuple[int, ...]:
    """A norm layer's checked normalized_shape, at least one dimension (an empty one normalised the whole tensor)."""
    shape = _ints(layer, normalized_shape, "normalized_shape")
    if not shape:
        raise ValueError(f"slope.nn.{type(layer).__name__}: expected normalized_shape to be at least 1-dimensional "
                         f"(at least one element, as PyTorch), got {normalized_shape!r}")  # fmt: skip
    return shape


class LayerNorm(Module):
    """Layer normalization over the trailing `normalized_shape` dimensions."""

    def __init__(self, normalized_shape: Any, eps: float = 1e-5, elementwise_affine: bool = True, bias: bool = True,
                 dtype: Any = None) -> None:  # fmt: skip
        super().__init__()
        self.normalized_shape = _normalized_shape(self, normalized_shape)
        self.eps = float(eps)
        dtype = _parameter_dtype(self, dtype, elementwise_affine)
        self.weight = init.ones(self.normalized_shape, dtype) if elementwise_affine else None
        self.bias = init.zeros(self.normalized_shape, dtype) if elementwise_affine and bias else None

    def forward(self, x: Tensor) -> Tensor:
        """Normalize over the last dimensions."""
        k = len(self.normalized_shape)
        if x.shape[x.ndim - k :] != self.normalized_shape:
            raise ValueError(f"LayerNorm: input {x.shape} does not end with normalized_shape {self.normalized_shape}")
        dims = tuple(range(x.ndim - k, x.ndim))
        narrow = _check_norm_dtypes(self, x, self.weight, self.bias)
        wide = x.astype(slope.float32) if narrow else x
        if k == 1:  # one operator (onnxruntime: one LayerNormalization node, its statistic reused by the gradient)
            out = layer_norm(wide, self.eps)
        else:
            centered = _centered(wide, dims)[1]  # (var would redo the centering)
            out = centered * overflow_to_nan((centered * centered).mean(dims, keepdim=True), self.eps)
        if self.weight is not None:
            out = out * self.weight
        if self.bias is not None:
            out = out + self.bias
        return out.astype(x.dtype) if narrow else out

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.weight is not None}"


class RMSNorm(Module):
    """Root-mean-square normalization over the trailing dimensions (eps defaults to the input dtype's machine epsilon)."""

    def __init__(self, normalized_shape: Any, eps: float | None = None, elementwise_affine: bool = True,
                 dtype: Any = None) -> None:  # fmt: skip
        super().__init__()
        self.normalized_shape = _normalized_shape(self, normalized_shape)
        self.eps = eps
        dtype = _parameter_dtype(self, dtype, elementwise_affine)
        self.weight = init.ones(self.normalized_shape, dtype) if elementwise_affine else None

    def forward(self, x: Tensor) -> Tensor:
        """Scale x by the reciprocal root mean square of its last dimensions."""
        k = len(self.normalized_shape)
        if x.shape[x.ndim - k :] != self.normalized_shape:
            raise ValueError(f"RMSNorm: input {x.shape} does not end with normalized_shape {self.normalized_shape}")
        dims = tuple(range(x.ndim - k, x.ndim))
        # (an integer input gave its normalised values truncated: [1, 2, 3, 10] -> [0, 0, 0, 1]); PyTorch's mixed float
        # dtypes stay allowed here (rms_norm takes any float weight, unlike layer_norm and batch_norm)
        _check_float_input(self, x)
        # as PyTorch's rms_norm: float16/bfloat16 in float32, and the result in the input's dtype whatever the weight's
        wide = x.astype(slope.float32) if x.dtype in (slope.float16, slope.bfloat16) else x
        eps = self.eps if self.eps is not None else _finfo_eps(wide.dtype)  # the computation's (float32's for float16)
        # (a mean square that overflowed gives 0s, as PyTorch's: NaN there would also turn [1, inf] into NaNs, not [0, NaN])
        out = wide * ((wide * wide).mean(dims, keepdim=True) + eps).rsqrt()
        if self.weight is not None:  # (times the weight in float32 too: rounded twice, its gradients were 300 ulps off)
            out = out * self.weight.astype(wide.dtype)
        return out.astype(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.weight is not None}"


def _parameter_dtype(layer: Module, dtype: Any, has_parameters: bool) -> Any:
    """The dtype of a normalization's parameters: a floating one where it has parameters, as PyTorch (an int64
    BatchNorm truncated its running statistics to 0)."""
    if dtype is None or not has_parameters:
        return dtype
    checked = slope.dtypes.as_dtype(dtype)
    if not checked.is_float:
        raise slope.DTypeError(f"slope.nn.{type(layer).__name__}: parameters must have a floating-point dtype, got "
                               f"dtype={checked.name} (PyTorch: only tensors of floating point dtype can require "
                               "gradients)")  # fmt: skip
    return checked


def _check_float_input(layer: Module, x: Tensor) -> None:
    """Refuse an integer or bool input to a normalization, as PyTorch (its kernels are not implemented for them)."""
    if not x.dtype.is_float:
        raise slope.DTypeError(f"slope.nn.{type(layer).__name__}: expected a floating-point input, got "
                               f"{x.dtype.name} of shape {tuple(x.shape)} (PyTorch's normalizations are not "
                               "implemented for integers or bools; convert it: x.astype(slope.float32))")  # fmt: skip


def _check_norm_dtypes(layer: Module, x: Tensor, *params: Tensor | None) -> bool:
    """PyTorch's rule for a normalization's input and parameters: a floating-point input and parameters of its dtype,
    or float32 for a float16 or bfloat16 input (computed in float32 and returned in the input's dtype); anything else is
    an error. True for such a narrow input."""
    _check_float_input(layer, x)
    narrow = x.dtype in (slope.float16, slope.bfloat16)
    for p in params:
        if p is not None and p.dtype != x.dtype and not (narrow and p.dtype == slope.float32):
            allowed = f"{x.dtype.name} or float32" if narrow else x.dtype.name
            raise slope.DTypeError(
                f"slope.nn.{type(layer).__name__}: the input is {x.dtype.name} {tuple(x.shape)} but its parameters "
                f"are {p.dtype.name}; expected {allowed} parameters, as PyTorch (make the layer with dtype={x.dtype.name})"
            )
    return narrow


def _finfo_eps(dtype: Any) -> float:
    import ml_dtypes  # its finfo knows bfloat16 too (NumPy's only from ml_dtypes 0.7)
    import numpy as np

    try:
        return float(ml_dtypes.finfo(dtype.numpy).eps)
    except (TypeError, ValueError):
        return float(np.finfo(np.float32).eps)


# ----------------------------------------------------------------------------------------------- embedding, dropout


class Embedding(Module):
    """A lookup table: integer indices -> rows of weight (num_embeddings, embedding_dim), init N(0, 1).

    The row at `padding_idx` starts at zero and receives no gradient (it may be set to another padding vector).
    """

    pytorch_argument_at_key = "max_norm"

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None,
                 key: Tensor | None = None, dtype: Any = None, *, max_norm: float | None = None) -> None:  # fmt: skip
        super().__init__()
        if max_norm is not None:  # (it was "__init__() got an unexpected keyword argument", naming no layer)
            raise TypeError(f"nn.Embedding: max_norm={max_norm!r} is not supported: PyTorch renormalizes the looked-up "
                            f"rows of its weight in place during forward, a hidden update of a parameter that a "
                            f"traced or differentiated Slope layer cannot make; renormalize the weight explicitly "
                            f"between steps instead")  # fmt: skip
        self.num_embeddings, self.embedding_dim = _ints(self, (num_embeddings, embedding_dim), "sizes")
        if padding_idx is not None:
            (padding_idx,) = _ints(self, padding_idx, "padding_idx", None, 1)
            if not -num_embeddings <= padding_idx < num_embeddings:
                raise ValueError(f"Embedding: padding_idx {padding_idx} is out of range for {num_embeddings} rows")
            padding_idx %= num_embeddings
        self.padding_idx = padding_idx
        check_key("nn.Embedding", key, self.pytorch_argument_at_key)
        weight = init.normal((num_embeddings, embedding_dim), key=key, dtype=dtype)
        if padding_idx is not None:
            weight = weight.at[padding_idx].set(0.0)
        self.weight = weight

    def forward(self, indices: Any) -> Tensor:
        """The rows of the table at these indices (output shape: indices.shape + (embedding_dim,))."""
        indices = slope.tensor(indices) if not isinstance(indices, Tensor) else indices
        if not indices.dtype.is_int:
            raise TypeError(f"Embedding: indices must be integers, got {indices.dtype.name}")
        check_indices("nn.Embedding", indices, 0, self.num_embeddings, f"{self.num_embeddings} embeddings")
        if indices.buffer is None:  # traced: a negative index is out of range when it runs (not counted from the end)
            indices = slope.where(indices < 0, self.num_embeddings, indices.astype(slope.int64))
        rows = self.weight[indices]
        if self.padding_idx is not None:  # PyTorch's: the padding row as it is (zeros unless set), with no gradient
            padding = indices.astype(slope.int64) == self.padding_idx  # (uint8 indices wrapped 300 to 44)
            rows = slope.where(padding.unsqueeze(-1), slope.stop_gradient(rows), rows)
        return rows

    def attend(self, x: Tensor) -> Tensor:
        """x @ weight.T: scores against every row, the output layer of a model whose weights are tied to its input
        embedding (the gradients of both uses add up in `weight`, as with PyTorch's shared parameter)."""
        if x.shape[-1:] != (self.embedding_dim,):
            raise slope.ShapeError(f"slope.nn.Embedding.attend: expected (..., {self.embedding_dim}), got {x.shape}")
        return functional.linear(x, self.weight)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}"


def dropout(x: Tensor, p: float = 0.5, training: bool = True, key: Tensor | None = None) -> Tensor:
    """Zero elements with probability p and scale the rest by 1/(1-p) (identity when not training)."""
    functional.refuse_traced("slope.nn.dropout", "p", p)
    check_key("nn.dropout", key, "inplace")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"slope.nn.dropout: p must be in [0, 1], got {p}")
    if not isinstance(training, (bool, np.bool_)):  # ("False" is truthy: it dropped)
        raise TypeError(f"slope.nn.dropout: training must be a bool, got {type(training).__name__} {training!r} "
                        "(as PyTorch)")  # fmt: skip
    if not training or p == 0.0:
        return x
    if not x.dtype.is_float:  # (as PyTorch: the scale 1 / (1 - p) truncated to an integer 1 kept 10, not 14.29)
        raise slope.DTypeError(f"slope.nn.dropout: expected a floating-point tensor to drop from, got {x.dtype.name}")
    if p == 1.0:
        return x * 0.0
    return functional.dropped(x, p, next_key("Dropout", x) if key is None else key)


class Dropout(Module):
    """Dropout in training mode (keys from `nn.apply(model, x, key=...)`, or the global generator eagerly)."""

    forward_key_is_random = True  # (its forward's own `key` is a random key: nn.apply(dropout, x, key=k) is no mix-up)

    def __init__(self, p: float = 0.5, inplace: bool = False) -> None:
        super().__init__()
        functional.refuse_traced("Dropout", "p", p)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1], got {p}")
        self.p, self.inplace = float(p), _inplace("Dropout", inplace)

    def forward(self, x: Tensor, key: Tensor | None = None) -> Tensor:
        """Randomly zero elements (training) or pass x through (eval)."""
        return dropout(x, self.p, self.training, key)

    def extra_repr(self) -> str:
        return f"p={self.p}"


# ----------------------------------------------------------------------------------------------- attention


class MultiHeadAttention(Module):
    """Multi-head scaled dot-product attention with input and output projections (batch first: (N, L, E)).

    `forward(query, key=None, value=None, *, attn_mask=None, key_padding_mask=None, is_causal=False,
    need_weights=False)`: key and value default to query (self-attention); the masks and flags are keyword-only
    (PyTorch's positional order differs: its fourth argument is key_padding_mask; `nn.MultiheadAttention`, PyTorch's
    spelling, keeps PyTorch's order, layout and return value). Boolean masks are True where attention is
    not allowed (PyTorch's convention); float masks are added to the scores. `attn_mask` is (L, S) or, per head,
    (N * num_heads, L, S); `key_padding_mask` is (N, S). Returns the output, or
    `(output, weights averaged over heads)` with `need_weights=True` (in training after dropout, as PyTorch).
    """

    layout = "(N, L, E)"  # (how errors name the inputs' layout)

    pytorch_argument_at_key = "kdim"

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 kdim: int | None = None, vdim: int | None = None, key: Tensor | None = None,
                 dtype: Any = None) -> None:  # fmt: skip
        super().__init__()
        for what, size in (("kdim", kdim), ("vdim", vdim)):  # (PyTorch's add_bias_kv, add_zero_attn land here)
            if size is not None and (isinstance(size, bool) or not hasattr(size, "__index__")):
                hint = (
                    " (PyTorch's MultiheadAttention takes add_bias_kv and add_zero_attn in this position: "
                    "nn.MultiheadAttention takes PyTorch's arguments in PyTorch's order)"
                    if self.pytorch_argument_at_key
                    else ""
                )
                raise TypeError(f"slope.nn.{type(self).__name__}: {what} must be an int or None, got {size!r}{hint}")
        _ints(self, (embed_dim, num_heads), "embed_dim and num_heads", 1)
        if embed_dim % num_heads:
            raise ValueError(f"MultiHeadAttention: embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim = int(embed_dim)
        self.num_heads = int(num_heads)
        self.dropout = float(dropout)
        keys = _keys(self, key, 4)
        # (`kdim or embed_dim` read kdim=0 as embed_dim: a (4, 4) k_proj where PyTorch's is (4, 0))
        kdim, vdim = (embed_dim if size is None else size for size in (kdim, vdim))
        self.q_proj = Linear(embed_dim, embed_dim, bias, key=keys[0], dtype=dtype)
        self.k_proj = Linear(kdim, embed_dim, bias, key=keys[1], dtype=dtype)
        self.v_proj = Linear(vdim, embed_dim, bias, key=keys[2], dtype=dtype)
        self.out_proj = Linear(embed_dim, embed_dim, bias, key=keys[3], dtype=dtype)
        # PyTorch's initialization: Xavier-uniform projections (q, k and v as one (3E, E) matrix when kdim and vdim
        # are E, so fan_out 3E); the output projection keeps Linear's weight. (PyTorch's biases start at 0; these
        # keep Linear's: zero constants make iree's exported modules round differently from jit, tests/exported_models)
        packed = kdim == vdim == embed_dim
        for projection, projection_key in zip((self.q_proj, self.k_proj, self.v_proj), keys):
            shape = (3 * embed_dim, embed_dim) if packed else projection.weight.shape
            bound = math.sqrt(6.0 / sum(init.fans(shape)))
            projection.weight = init.uniform(projection.weight.shape, -bound, bound, key=projection_key, dtype=dtype)

    def _from_pytorch_state(self, state: dict, prefix: str) -> dict:
        """The state with PyTorch's keys for this layer (`in_proj_weight` (3E, E) and `in_proj_bias` (3E,), or
        `q_proj_weight`, `k_proj_weight` and `v_proj_weight` with kdim or vdim) as q_proj, k_proj and v_proj's."""
        if not any(f"{prefix}{name}" in state for name in ("in_proj_weight", "in_proj_bias", "q_proj_weight")):
            return state
        state = dict(state)
        for name, attribute in (("in_proj_weight", "weight"), ("in_proj_bias", "bias")):
            if f"{prefix}{name}" in state:
                value = state.pop(f"{prefix}{name}")
                array = value.numpy() if isinstance(value, Tensor) else np.asarray(value)
                if array.shape[:1] != (3 * self.embed_dim,):
                    raise ValueError(f"MultiHeadAttention.load_state_dict: {prefix}{name} has shape {array.shape}, "
                                     f"expected {3 * self.embed_dim} rows (q, k and v stacked)")  # fmt: skip
                for projection, part in zip("qkv", np.split(array, 3)):
                    state[f"{prefix}{projection}_proj.{attribute}"] = part
        for projection in "qkv":
            if f"{prefix}{projection}_proj_weight" in state:
                state[f"{prefix}{projection}_proj.weight"] = state.pop(f"{prefix}{projection}_proj_weight")
        return state

    def _heads(self, x: Tensor) -> Tensor:
        batch, length, _ = x.shape
        head_dim = self.embed_dim // self.num_heads
        return x.reshape((batch, length, self.num_heads, head_dim)).permute((0, 2, 1, 3))

    def forward(self, query: Tensor, key: Tensor | None = None, value: Tensor | None = None, *,
                attn_mask: Tensor | None = None, key_padding_mask: Tensor | None = None, is_causal: bool = False,
                need_weights: bool = False) -> Any:  # fmt: skip
        """Attend from query (N, L, E) to key/value (N, S, E); unbatched (L, E) inputs work too."""
        key = query if key is None else key
        value = key if value is None else value
        out, weights = self._attend(query, key, value, attn_mask, key_padding_mask, is_causal)
        if not need_weights:
            return out
        return out, weights.mean(-3).astype(out.dtype)

    def _attend(self, query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None,
                key_padding_mask: Tensor | None, is_causal: bool) -> tuple[Tensor, Tensor]:  # fmt: skip
        """The output (N, L, E) and the per-head weights (N, H, L, S) after dropout (unbatched: without N); the
        weights of halves in float32."""
        # (a NumPy mask failed with an AttributeError: taken as a tensor, as slope's functions take arrays)
        attn_mask, key_padding_mask = (
            None if m is None else functional._tensor(m) for m in (attn_mask, key_padding_mask)
        )
        unbatched = query.ndim == 2
        if unbatched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        if query.ndim != 3 or key.ndim != 3 or value.ndim != 3:
            raise ValueError(
                f"{type(self).__name__}: expected {self.layout} inputs, got {query.shape}, {key.shape}, {value.shape}"
            )
        kdim, vdim = self.k_proj.weight.shape[1], self.v_proj.weight.shape[1]
        batch, source = query.shape[0], key.shape[1]
        if (query.shape[2], key.shape[2], value.shape[2]) != (self.embed_dim, kdim, vdim) or not (
            key.shape[0] == value.shape[0] == batch and value.shape[1] == source
        ):  # (a matmul or reshape deep inside named itself)
            raise slope.ShapeError(
                f"slope.nn.{type(self).__name__}: expected query (N, L, {self.embed_dim}), key (N, S, "
                f"{kdim}) and value (N, S, {vdim}), got {query.shape}, {key.shape}, {value.shape}"
            )
        if key_padding_mask is not None and key_padding_mask.shape != (batch, source):
            raise slope.ShapeError(f"slope.nn.{type(self).__name__}: key_padding_mask must be of shape (N, S) = "
                                   f"{(batch, source)}, got {key_padding_mask.shape}")  # fmt: skip
        for what, given, projection in (("query", query, self.q_proj), ("key", key, self.k_proj),
                                        ("value", value, self.v_proj)):  # fmt: skip
            hint = _dtype_hint(given, projection.weight)  # (a float32 input to a float64 layer failed in matmul)
            functional.check_linear_dtypes(f"nn.{type(self).__name__}", given, projection.weight, projection.bias,
                                           what, hint)  # fmt: skip
        q = self._heads(self.q_proj(query))
        k = self._heads(self.k_proj(key))
        v = self._heads(self.v_proj(value))
        # halves: scores, softmax and weighted sum in float32, rounded once (as scaled_dot_product_attention)
        dtype = q.dtype
        if dtype in (slope.float16, slope.bfloat16):
            q, k, v = q.astype(slope.float32), k.astype(slope.float32), v.astype(slope.float32)
        head_dim = self.embed_dim // self.num_heads
        scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(head_dim))  # (N, H, L, S)
        length, source = scores.shape[-2], scores.shape[-1]
        _check_is_causal(self, is_causal)
        if is_causal:
            causal = slope.triu(slope.ones((length, source), dtype=slope.bool_), 1)
            scores = slope.where(causal, -math.inf, scores)
        batch = scores.shape[0]
        if attn_mask is not None and attn_mask.ndim not in (2, 3):  # (a 1-d or 4-d one was broadcast; PyTorch asserts)
            raise slope.ShapeError(f"slope.nn.{type(self).__name__}: expected attn_mask to be 2-d (L, S) or 3-d (N * "
                                   f"num_heads, L, S), got a {attn_mask.ndim}-d mask of shape {attn_mask.shape} (as "
                                   "PyTorch)")  # fmt: skip
        if attn_mask is not None and attn_mask.ndim == 2 and attn_mask.shape != (length, source):
            raise slope.ShapeError(f"slope.nn.{type(self).__name__}: a 2-d attn_mask must be of shape {(length, source)} "
                                   f"(L, S), got {attn_mask.shape} (as PyTorch)")  # fmt: skip
        for what, mask in (("attn_mask", attn_mask), ("key_padding_mask", key_padding_mask)):
            if mask is not None and mask.dtype != slope.bool_ and not mask.dtype.is_float:  # (as PyTorch)
                raise slope.DTypeError(f"slope.nn.{type(self).__name__}: {what} must be bool or floating-point, got "
                                       f"{mask.dtype.name}")  # fmt: skip
            if mask is not None and mask.dtype.is_float and mask.dtype != query.dtype:  # (float64 on a float32 layer
                # failed in slope.matmul; PyTorch: "Expected attn_mask dtype to be bool or float or to match query dtype")
                raise slope.DTypeError(f"slope.nn.{type(self).__name__}: a floating-point {what} must have the query's "
                                       f"dtype {query.dtype.name} (or be bool), got {mask.dtype.name}, as PyTorch: "
                                       f"convert it with .astype(slope.{query.dtype.name})")  # fmt: skip
        if attn_mask is not None and attn_mask.ndim == 3:  # PyTorch's per-head masks: (N * num_heads, L, S)
            if attn_mask.shape != (batch * self.num_heads, length, source):
                raise slope.ShapeError(f"slope.nn.{type(self).__name__}: a 3-d attn_mask must be of shape "
                                       f"{(batch * self.num_heads, length, source)}, got {attn_mask.shape}")  # fmt: skip
            attn_mask = attn_mask.reshape((batch, self.num_heads, length, source))
        for mask in (attn_mask, None if key_padding_mask is None else key_padding_mask.reshape((batch, 1, 1, source))):
            if mask is not None:  # bool: True where not allowed; a float mask is added (both PyTorch's)
                scores = slope.where(mask, -math.inf, scores) if mask.dtype == slope.bool_ else scores + mask
        masked = attn_mask is not None or key_padding_mask is not None  # (rows masked everywhere attend to nothing)
        weights = functional.masked_softmax(scores) if masked else functional.softmax(scores, -1)
        weights = dropout(weights, self.dropout, self.training)  # (the weights returned too, as PyTorch)
        attended = (weights @ v).astype(dtype)  # (N, H, L, D)
        attended = attended.permute((0, 2, 1, 3)).reshape((batch, length, self.embed_dim))
        out = self.out_proj(attended)
        return (out.squeeze(0), weights.squeeze(0)) if unbatched else (out, weights)

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}"


def _dtype_hint(x: Tensor, weight: Tensor) -> str:
    """How a layer's error says to fix an input whose dtype is not its parameters'."""
    return f" (convert it with .astype(slope.{weight.dtype.name}), or make the layer with dtype=slope.{x.dtype.name})"


def _check_is_causal(layer: Module, is_causal: Any) -> None:
    if not isinstance(is_causal, (bool, np.bool_)):  # (PyTorch refuses others: 0.5 was taken as True)
        raise TypeError(f"slope.nn.{type(layer).__name__}: is_causal must be a bool, got {is_causal!r}")


class MultiheadAttention(MultiHeadAttention):
    """torch.nn.MultiheadAttention's contract (PyTorch's spelling): its arguments in its order, inputs (L, N, E)
    unless `batch_first=True` (unbatched (L, E)), and `forward` returning `(output, weights)`.

    `forward(query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None, average_attn_weights=True,
    is_causal=False)`: the weights are averaged over heads, (N, L, S), or per head, (N, num_heads, L, S), or None
    with `need_weights=False`. `is_causal` is PyTorch's hint that `attn_mask` is the causal mask (it needs one), as
    there. `add_bias_kv` and `add_zero_attn` are not supported; Slope's own `MultiHeadAttention` is batch first and
    returns the output alone. The random key for the parameters is keyword-only, `key=`.
    """

    pytorch_argument_at_key = None  # (key is keyword-only here)

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 add_bias_kv: bool = False, add_zero_attn: bool = False, kdim: int | None = None,
                 vdim: int | None = None, batch_first: bool = False, device: Any = None, dtype: Any = None, *,
                 key: Tensor | None = None) -> None:  # fmt: skip
        for what, flag in (("add_bias_kv", add_bias_kv), ("add_zero_attn", add_zero_attn)):
            if flag is not False:  # (Slope's MultiHeadAttention takes kdim and vdim in these positions)
                raise NotImplementedError(f"slope.nn.MultiheadAttention: {what}={flag!r} is not supported "
                                          "(only False, its default)")  # fmt: skip
        if device is not None and str(device) != "cpu":
            raise ValueError(f"slope.nn.MultiheadAttention: device must be None or 'cpu' (Slope's backend places the "
                             f"tensors), got {device!r}")  # fmt: skip
        if not isinstance(batch_first, (bool, np.bool_)):
            raise TypeError(f"slope.nn.MultiheadAttention: batch_first must be a bool, got {batch_first!r}")
        super().__init__(embed_dim, num_heads, dropout, bias, kdim, vdim, key=key, dtype=dtype)
        self.batch_first = bool(batch_first)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None = None,
                need_weights: bool = True, attn_mask: Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[Tensor, Tensor | None]:  # fmt: skip
        """Attend from query (L, N, E) (batch_first: (N, L, E)) to key/value; returns (output, weights or None)."""
        _check_is_causal(self, is_causal)
        if is_causal and attn_mask is None:
            raise RuntimeError("slope.nn.MultiheadAttention: is_causal is a hint that attn_mask is the causal mask "
                               "and needs attn_mask, as PyTorch")  # fmt: skip
        # PyTorch's: without weights or a padding mask the hint replaces attn_mask by the causal mask, else attn_mask
        causal = is_causal and key_padding_mask is None and not need_weights
        attn_mask = None if causal else attn_mask
        if query.ndim in (2, 3) and not key.ndim == value.ndim == query.ndim:
            raise slope.ShapeError(f"slope.nn.MultiheadAttention: expected key and value of {query.ndim} dimensions, "
                                   f"as the query {query.shape}, got {key.shape} and {value.shape}")  # fmt: skip
        sequence_first = query.ndim == 3 and not self.batch_first
        if sequence_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        out, weights = self._attend(query, key, value, attn_mask, key_padding_mask, bool(causal))
        if sequence_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        return out, (weights.mean(-3) if average_attn_weights else weights).astype(out.dtype)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, batch_first={self.batch_first}"

    @property
    def layout(self) -> str:
        """How errors name the inputs' layout."""
        return "(N, L, E)" if self.batch_first else "(L, N, E)"


# ----------------------------------------------------------------------------------------------- containers


class _Children(Module):
    """Modules held as children named "0", "1", ... (Sequential's and ModuleList's storage, as PyTorch names them)."""

    def _items(self) -> list[Module]:
        return [value for name, value in self.__dict__.items() if name.isdigit()]

    def __len__(self) -> int:
        return len(self._items())

    def __iter__(self) -> Iterator[Module]:
        return iter(self._items())

    def append(self, module: Module) -> Any:
        """Add a module at the end; returns self."""
        if not isinstance(module, Module):  # (as PyTorch; an int was kept and failed when called, or never)
            raise TypeError(f"{type(self).__name__}: item {len(self)} is a {type(module).__name__}, not a Module")
        self.__dict__[str(len(self))] = module
        return self


class Sequential(_Children):
    """Modules applied in order; children are named "0", "1", ... as in PyTorch."""

    def __init__(self, *modules: Module) -> None:
        super().__init__()
        for module in modules[0] if len(modules) == 1 and isinstance(modules[0], (list, tuple)) else modules:
            self.append(module)

    def forward(self, x: Any) -> Any:
        """Apply each module to the previous one's output."""
        for module in self._items():
            x = module(x)
        return x

    def __getitem__(self, index: int | slice) -> Any:
        items = self._items()
        return Sequential(*items[index]) if isinstance(index, slice) else items[index]


class ModuleList(_Children):
    """A list of modules (indexable, iterable), registered as children named "0", "1", ..."""

    def __init__(self, modules: Sequence[Module] = ()) -> None:
        super().__init__()
        for module in modules:
            self.append(module)

    def __getitem__(self, index: int) -> Module:
        return self._items()[index]


# ----------------------------------------------------------------------------------------------- activations


def _inplace(layer: str, inplace: Any) -> bool:
    """PyTorch's `inplace` flag, taken and kept for the repr: Slope's tensors never change, so the result is the same."""
    if not isinstance(inplace, (bool, np.bool_)):
        raise TypeError(f"slope.nn.{layer}: inplace must be a bool, got {type(inplace).__name__} {inplace!r}")
    return bool(inplace)


class Identity(Module):
    """Returns its input."""

    def forward(self, x: Any) -> Any:
        """x unchanged."""
        return x


class ReLU(Module):
    """max(x, 0)."""

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.inplace = _inplace("ReLU", inplace)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the activation."""
        return functional.relu(x)


class LeakyReLU(Module):
    """x if x > 0 else negative_slope * x."""

    def __init__(self, negative_slope: float = 0.01, inplace: bool = False) -> None:
        super().__init__()
        self.negative_slope, self.inplace = float(negative_slope), _inplace("LeakyReLU", inplace)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the activation."""
        return functional.leaky_relu(x, self.negative_slope)


class GELU(Module):
    """Gaussian error linear unit (approximate="tanh" for the tanh form)."""

    def __init__(self, approximate: str = "none") -> None:
        super().__init__()
        self.approximate = approximate

    def forward(self, x: Tensor) -> Tensor:
        """Apply the activation."""
        return functional.gelu(x, self.approximate)


class SiLU(Module):
    """x * sigmoid(x)."""

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.inplace = _inplace("SiLU", inplace)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the activation."""
        return functional.silu(x)


class Sigmoid(Module):
    """1 / (1 + exp(-x))."""

    def forward(self, x: Tensor) -> Tensor:
        """Apply the activation."""
        return functional.sigmoid(x)


class Tanh(Module):
    """tanh(x)."""

    def forward(self, x: Tensor) -> Tensor:
        """Apply the activation."""
        return slope.tanh(x)


class Softplus(Module):
    """log(1 + exp(beta * x)) / beta, and x where beta * x > threshold (PyTorch's)."""

    def __init__(self, beta: float = 1.0, threshold: float = 20.0) -> None:
        super().__init__()
        self.beta, self.threshold = float(beta), float(threshold)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the activation."""
        return functional.softplus(x, self.beta, self.threshold)


class Softmax(Module):
    """Softmax along `dim`."""

    def __init__(self, dim: int = -1) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        """Apply the softmax."""
        return functional.softmax(x, self.dim)


class LogSoftmax(Module):
    """Log-softmax along `dim`."""

    def __init__(self, dim: int = -1) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        """Apply the log-softmax."""
        return functional.log_softmax(x, self.dim)


class Flatten(Module):
    """Flatten dimensions start_dim..end_dim (default: all but the batch dimension)."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1) -> None:
        super().__init__()
        self.start_dim = start_dim
        self.end_dim = end_dim

    def forward(self, x: Tensor) -> Tensor:
        """Flatten the dimensions."""
        return slope.flatten(x, self.start_dim, self.end_dim)
