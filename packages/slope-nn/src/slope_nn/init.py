"""Initializers: functions that return new tensors (Slope tensors are immutable, so there is no in-place `_` form).

Each takes a shape (or a tensor to take the shape and dtype from), an optional `key` (default: the global generator
seeded by `slope.manual_seed`) and an optional `dtype`. Fans follow PyTorch: for a weight of shape
(out, in, *kernel), fan_in = in * prod(kernel) and fan_out = out * prod(kernel).
"""

from __future__ import annotations

import math
from typing import Any

import slope
from slope import Tensor

__all__ = [
    "calculate_gain",
    "constant",
    "fans",
    "kaiming_normal",
    "kaiming_uniform",
    "normal",
    "ones",
    "uniform",
    "xavier_normal",
    "xavier_uniform",
    "zeros",
]


def _shape_dtype(shape: Any, dtype: Any) -> tuple[tuple[int, ...], Any]:
    if isinstance(shape, Tensor):
        return shape.shape, dtype or shape.dtype
    if isinstance(shape, int):
        return (shape,), dtype or slope.float32
    return tuple(int(s) for s in shape), dtype or slope.float32


def _float_shape_dtype(name: str, shape: Any, dtype: Any) -> tuple[tuple[int, ...], Any]:
    """`_shape_dtype` for random draws: a floating dtype (an int64 weight drew truncated normals; PyTorch refuses)."""
    shape, dtype = _shape_dtype(shape, dtype)
    if not slope.dtypes.as_dtype(dtype).is_float:
        raise TypeError(f"slope.nn.init.{name}: random values need a floating-point dtype, got {dtype}")
    return shape, slope.dtypes.as_dtype(dtype)


def _key(key: Tensor | None) -> Tensor:
    if key is not None:
        return key
    from slope.random import next_key

    return next_key()


def fans(shape: Any) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight shape, as PyTorch computes them."""
    shape, _ = _shape_dtype(shape, None)
    if len(shape) < 2:
        raise ValueError(f"slope.nn.init: fans need a weight with at least 2 dimensions, got shape {shape}")
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """The recommended gain for a nonlinearity (PyTorch's table)."""
    if nonlinearity in ("linear", "identity", "sigmoid") or nonlinearity.startswith("conv"):
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        if param is not None and (isinstance(param, bool) or not isinstance(param, (int, float))):
            raise ValueError(f"slope.nn.init.calculate_gain: negative_slope {param!r} not a valid number")
        slope_value = 0.01 if param is None else param
        return math.sqrt(2.0 / (1 + slope_value**2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"slope.nn.init.calculate_gain: unknown nonlinearity {nonlinearity!r}")


def uniform(shape: Any, a: float = 0.0, b: float = 1.0, key: Tensor | None = None, dtype: Any = None) -> Tensor:
    """Samples from U(a, b)."""
    shape, dtype = _float_shape_dtype("uniform", shape, dtype)
    # drawn in the dtype, whose own rule keeps b out (drawn in float32 and rounded, float16 gave b for 0.4% of draws)
    return slope.random.uniform(_key(key), shape, dtype, minval=a, maxval=b)


def normal(shape: Any, mean: float = 0.0, std: float = 1.0, key: Tensor | None = None, dtype: Any = None) -> Tensor:
    """Samples from N(mean, std**2)."""
    if not std >= 0:
        raise ValueError(f"slope.nn.init.normal: expected std >= 0, got {std}")
    shape, dtype = _float_shape_dtype("normal", shape, dtype)  # (halves scaled in float32 and rounded once; float64
    wide = slope.float64 if dtype == slope.float64 else slope.float32  # in float64: std 1e-9 around 1 was all 1s)
    values = slope.random.normal(_key(key), shape, wide) * std + mean
    return values.astype(dtype) if dtype != wide else values


def constant(shape: Any, value: float, dtype: Any = None) -> Tensor:
    """A tensor filled with `value`."""
    shape, dtype = _shape_dtype(shape, dtype)
    return slope.full(shape, value, dtype=dtype)


def zeros(shape: Any, dtype: Any = None) -> Tensor:
    """A tensor of zeros."""
    return constant(shape, 0.0, dtype)


def ones(shape: Any, dtype: Any = None) -> Tensor:
    """A tensor of ones."""
    return constant(shape, 1.0, dtype)


def _fan(shape: Any, mode: str) -> int:
    fan_in, fan_out = fans(shape)
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"slope.nn.init: mode must be 'fan_in' or 'fan_out', got {mode!r}")
    return fan_in if mode == "fan_in" else fan_out


def kaiming_uniform(shape: Any, a: float = 0.0, mode: str = "fan_in", nonlinearity: str = "leaky_relu",
                    key: Tensor | None = None, dtype: Any = None) -> Tensor:  # fmt: skip
    """He initialization, uniform: U(-b, b) with b = gain * sqrt(3 / fan)."""
    fan = _fan(shape, mode)  # (0 for a zero-element weight: nothing to draw, PyTorch's no-op)
    bound = calculate_gain(nonlinearity, a) * math.sqrt(3.0 / fan) if fan else 0.0
    return uniform(shape, -bound, bound, key=key, dtype=dtype)


def kaiming_normal(shape: Any, a: float = 0.0, mode: str = "fan_in", nonlinearity: str = "leaky_relu",
                   key: Tensor | None = None, dtype: Any = None) -> Tensor:  # fmt: skip
    """He initialization, normal: N(0, std**2) with std = gain / sqrt(fan)."""
    fan = _fan(shape, mode)  # (0 for a zero-element weight: nothing to draw, PyTorch's no-op)
    std = calculate_gain(nonlinearity, a) / math.sqrt(fan) if fan else 0.0
    return normal(shape, 0.0, std, key=key, dtype=dtype)


def xavier_uniform(shape: Any, gain: float = 1.0, key: Tensor | None = None, dtype: Any = None) -> Tensor:
    """Glorot initialization, uniform: U(-b, b) with b = gain * sqrt(6 / (fan_in + fan_out))."""
    fan_in, fan_out = fans(shape)
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out)) if fan_in + fan_out else 0.0  # (a zero-element weight)
    return uniform(shape, -bound, bound, key=key, dtype=dtype)


def xavier_normal(shape: Any, gain: float = 1.0, key: Tensor | None = None, dtype: Any = None) -> Tensor:
    """Glorot initialization, normal: N(0, std**2) with std = gain * sqrt(2 / (fan_in + fan_out))."""
    fan_in, fan_out = fans(shape)
    std = gain * math.sqrt(2.0 / (fan_in + fan_out)) if fan_in + fan_out else 0.0  # (a zero-element weight)
    return normal(shape, 0.0, std, key=key, dtype=dtype)
