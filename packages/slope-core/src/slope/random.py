"""Counter-based random numbers (Threefry-2x32 on 32-bit words held in int64): one key gives one stream everywhere."""

from __future__ import annotations

import math
import threading
from contextlib import nullcontext
from typing import Any

import numpy as np

from . import dtypes
from . import operators as ops
from .tensors import Tensor
from .trace import EagerTrace, active, new_main
from .transforms import BatchTrace, TransformError, _got, jit

_MASK = 0xFFFFFFFF
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def _mask(x: Tensor) -> Tensor:
    return ops.bitwise_and(x, ops.constant(_MASK, dtypes.int64, x.shape))


def _shift_right(x: Tensor, n: int) -> Tensor:
    return ops.div(x, ops.constant(1 << n, dtypes.int64, x.shape), "trunc")  # (non-negative words: a shift)


def threefry2x32(k0: Tensor, k1: Tensor, x0: Tensor, x1: Tensor) -> tuple[Tensor, Tensor]:
    """Threefry-2x32 block cipher of counters (x0, x1) under key words (k0, k1); all int64 holding 32-bit words."""
    keys = (k0, k1, ops.bitwise_xor(ops.bitwise_xor(k0, k1), ops.constant(0x1BD11BDA, dtypes.int64, k0.shape)))
    x0, x1 = _mask(x0 + k0), _mask(x1 + k1)
    for block in range(5):
        for r in _ROTATIONS[block % 2]:  # x1 rotated left by r (x1 < 2**32, r < 32: x1 * 2**r < 2**63), then ^ x0
            x0 = _mask(x0 + x1)
            x1 = ops.bitwise_xor(ops.bitwise_or(_mask(x1 * (1 << r)), _shift_right(x1, 32 - r)), x0)
        x0, x1 = _mask(x0 + keys[(block + 1) % 3]), _mask(x1 + keys[(block + 2) % 3] + (block + 1))
    return x0, x1


def random_bits(key: Tensor, count: int) -> Tensor:
    """`count` random 32-bit words (as int64) derived from a key."""
    half = max(1, math.ceil(count / 2))
    counters = ops.arange(2 * half, dtype=dtypes.int64)
    return ops.cat(threefry2x32(key[0].expand(half), key[1].expand(half), counters[:half], counters[half:]))[:count]


_bits = jit(random_bits, static_argnums=1)  # eagerly one compiled program per count, not ~150 operators (traced as is)


def _unit_floats(key: Tensor, count: int, dtype: dtypes.DType, bits: int = 23) -> Tensor:
    """`count` floats in [0, 1) from `bits` random bits each (exact in float32)."""
    return ops.cast(_shift_right(random_bits(key, count), 32 - bits), dtype) * (2.0**-bits)


def uniform_bits_procedure(key: Tensor, shape: tuple, dtype: dtypes.DType) -> Tensor:
    """The procedure of `random_uniform`: as many random bits as dtype holds below 1 (more would round up to 1.0)."""
    bits = {"float16": 11, "bfloat16": 8}.get(dtype.name, 23)
    return ops.cast(_unit_floats(key, math.prod(shape), dtypes.float32, bits).reshape(shape), dtype)


def normal_procedure(key: Tensor, shape: tuple, dtype: dtypes.DType) -> Tensor:
    """The procedure of `random_normal`: Box-Muller on two uniform streams, in float64, rounded once to float32."""
    count = math.prod(shape)
    u = _unit_floats(key, 2 * count, dtypes.float64)  # (float32 log and cos differ by backend, float64's in last bits)
    z = (-2.0 * (1.0 - u[:count]).log()).sqrt() * (u[count:] * (2 * math.pi)).cos()  # (angles of 0 to 2 pi)
    return ops.cast(ops.cast(z.reshape(shape), dtype if dtype.bits < 32 else dtypes.float32), dtype)  # (float16: once)


def _words(name: str, what: str, value: Any) -> list[Tensor]:
    """The high and low 32-bit words of a 64-bit integer: a Python int, or an integer tensor of one element (traced)."""
    if isinstance(value, Tensor) and value.dtype.is_int and value.numel() == 1:  # (fold_in(key, step) inside jit)
        value = ops.cast(value, dtypes.int64).reshape((1,))
        low = _mask(value)
        return [_mask(_shift_right(value - low, 32)), low]  # (an exact division: value - low is a multiple of 2**32)
    (value,) = ops.ints(f"random.{name}", value, what, count=1)
    if not -(2**63) <= value < 2**64:  # (it wrapped: key(2**64) was key(0)); from 2**63 as the int64 of the same bits
        raise OverflowError(f"slope.random.{name}: the {what} {value} does not fit in 64 bits")
    return [ops.as_tensor(np.array([word & _MASK], np.int64)) for word in (value >> 32, value)]  # (not cached)


def key(seed: int | Tensor) -> Tensor:
    """A random key from an integer seed."""
    return ops.cat(_words("key", "seed", seed))


def _check_key(name: str, k: Any, shape: Any = ()) -> tuple[int, ...]:
    if not isinstance(k, Tensor) or k.shape != (2,) or k.dtype != dtypes.int64:  # (a batch of keys: vmap it)
        raise TypeError(f"slope.random.{name}: expected a key (int64 tensor of shape (2,)), got {_got(k)}")
    return ops.shape_args(f"random.{name}", (shape,), 0)


def split(k: Tensor, num: int = 2) -> Tensor:
    """`num` new independent keys, shape (num, 2)."""
    (num,) = _check_key("split", k, num)
    return _bits(k, 2 * num).reshape((num, 2))


_fold_in = jit(lambda k, high, low: ops.cat(threefry2x32(k[0:1], k[1:2], high, low)))  # (the words: arguments)


def fold_in(k: Tensor, data: int | Tensor) -> Tensor:
    """A new key derived from a key and an integer."""
    _check_key("fold_in", k)
    return _fold_in(k, *_words("fold_in", "data", data))


def uniform(k: Tensor, shape: Any = (), dtype: Any = None, minval: float = 0.0, maxval: float = 1.0) -> Tensor:
    """Uniform samples in [minval, maxval) (rounding up to maxval gives its next value down; tensor bounds: JAX's)."""
    values = ops.random_uniform(k, _check_key("uniform", k, shape), dtype)
    if isinstance(minval, Tensor) or isinstance(maxval, Tensor):  # traced bounds, as JAX's: max(lo, u * (hi - lo) + lo)
        low, high = (ops.broadcast_to(ops.as_tensor(bound, values.dtype), values.shape) for bound in (minval, maxval))
        return ops.maximum(values * (high - low) + low, low)
    top = float(np.nextafter(np.array(np.inf, values.dtype.numpy), np.array(0, values.dtype.numpy)))  # the largest
    if not (minval <= maxval and math.isfinite(minval) and maxval - minval <= top):
        raise ValueError(f"slope.random.uniform: expected finite minval <= maxval, at most the {values.dtype.name} "
                         f"maximum apart (as PyTorch), got {minval} and {maxval}")  # fmt: skip
    below = np.nextafter(np.array(maxval, values.dtype.numpy), np.array(minval, values.dtype.numpy))
    return values if (minval, maxval) == (0.0, 1.0) else (values * (maxval - minval) + minval).clip(max=float(below))


def normal(k: Tensor, shape: Any = (), dtype: Any = None) -> Tensor:
    """Standard normal samples."""
    return ops.random_normal(k, _check_key("normal", k, shape), dtype)


def randint(k: Tensor, shape: Any, minval: int, maxval: int, dtype: Any = None) -> Tensor:
    """Integers uniform in [minval, maxval), as JAX: (high * 2**32 + low) % span of two words (one alone is biased)."""
    shape, (minval, maxval) = _check_key("randint", k, shape), ops.ints("random.randint", (minval, maxval), "bounds")
    dtype = dtypes.as_dtype(dtype or dtypes.int64)
    info = np.iinfo(dtype.numpy if dtype.is_int else np.int64)
    exact = {"float16": 2**11, "bfloat16": 2**8, "float32": 2**24, "float64": 2**53}.get(dtype.name)  # (integers)
    lowest, highest = (0, 1) if dtype == dtypes.bool_ else (-exact, exact - 1) if exact else (info.min, info.max)
    if not lowest <= minval < maxval <= highest + 1 or maxval - minval > 2**32:  # (the span fits 32 bits)
        raise ValueError(f"slope.random.randint: expected {lowest} <= minval < maxval <= {highest + 1} for "
                         f"{dtype.name}, at most 2**32 apart, got {minval} and {maxval}")  # fmt: skip
    span, step = maxval - minval, (1 << 16) % (maxval - minval)  # 2**32 % span is step * step % span (products < 2**48)
    numbers = (ops.as_tensor(np.array(n, np.int64)) for n in (span, step, minval))  # (not cached per value, as ints)
    return ops.cast(_randint(_bits(k, 2 * math.prod(shape)).reshape((2, *shape)), *numbers), dtype)


_randint = jit(lambda bits, span, step, low: ((bits[0] * step % span) * step % span + bits[1]) % span + low)


def bernoulli(k: Tensor, p: Any = 0.5, shape: Any = None) -> Tensor:
    """Bools that are True with probability p, one draw each: of p's shape broadcast with `shape` (as JAX's)."""
    if isinstance(p, (int, float)) and not 0.0 <= p <= 1.0:  # (1.5 was all True; NaN all False: PyTorch refuses)
        raise ValueError(f"slope.random.bernoulli: expected p in [0, 1], got {p}")
    p, shape = ops.as_tensor(p), () if shape is None else _check_key("bernoulli", k, shape)
    return uniform(k, ops.broadcast_shapes("random.bernoulli", shape, p.shape)) < p


def permutation(k: Tensor, n: Any) -> Tensor:
    """A random permutation of range(n) (or of a tensor's first dimension)."""
    source = n if isinstance(n, Tensor) and n.ndim else None  # a 0-d integer tensor is a count (as in JAX)
    (count,) = _check_key("permutation", k, source.shape[0] if source is not None else n)
    bits = _bits(k, count)
    if bits.buffer is not None:
        order = ops.as_tensor(np.argsort(bits.numpy(), kind="stable").astype(np.int64))
    else:  # traced: rank each element by comparison (quadratic, so only for small n)
        if count > 4096:
            raise ValueError(f"slope.random.permutation: under a transformation n must be at most 4096, got {count}")
        order_key = bits * count + ops.arange(count)
        ranks = (order_key.reshape((count, 1)) > order_key.reshape((1, count))).sum(1)
        order = ops.arange(count).at[ranks].set(ops.arange(count))
    return source[order] if source is not None else order


_global: dict[str, Any] = {"seed": 0, "key": None}
_global_lock = threading.Lock()  # one generator for the process: each draw reads and advances it atomically


def manual_seed(seed: int) -> None:
    """Seed the global generator used by slope.randn, slope.rand and slope.randint."""
    if not -(2**63) <= (seed := int(seed)) < 2**64:  # (PyTorch's range)
        raise OverflowError(f"slope.manual_seed: the seed {seed} does not fit in 64 bits")
    with _global_lock:
        _global.update(seed=seed, key=None)


def next_key() -> Tensor:
    """A fresh key from the global generator."""
    if active(BatchTrace):  # (one draw was shared by every example; PyTorch's vmap refuses too)
        raise TransformError("slope.randn/rand/randint: the global generator cannot draw inside vmap (every example "
                             "would get the same numbers); pass keys, vmapped over slope.random.split(key, n)")  # fmt: skip
    with _global_lock, new_main(EagerTrace, dynamic=True) if active() else nullcontext():  # (a concrete key)
        _global["key"], sub = split(key(_global["seed"]) if _global["key"] is None else _global["key"])
    return sub
