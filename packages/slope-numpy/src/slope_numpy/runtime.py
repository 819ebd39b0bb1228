"""Helpers the generated code calls; this file is also copied into exported programs, so it imports only NumPy."""

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def checked_input(function: str, position: int, name: str, value: object, shape: tuple, dtype: np.dtype) -> np.ndarray:
    """Input `position` of an exported program as a NumPy array of the shape and dtype it was traced for, else a
    TypeError or ValueError saying which input, what was expected and what came (as onnxruntime refuses for .onnx)."""
    array = np.asarray(value)
    python = isinstance(value, (list, tuple, bool, int, float)) and not isinstance(value, np.generic)  # (np.float64)
    if python and array.dtype != dtype:  # Python's numbers, in NumPy's default dtype: converted when of the same kind
        if array.size and not np.can_cast(array.dtype, dtype, "same_kind"):  # (as torch.tensor(value, dtype=dtype))
            raise TypeError(f"{function}(): input {position} ({name}) holds {array.dtype} values, expected {dtype}")
        converted = array.astype(dtype)
        if dtype.kind in "iu" and not np.array_equal(converted, array):
            raise ValueError(f"{function}(): input {position} ({name}) holds values outside the range of {dtype}")
        array = converted
    if array.dtype != dtype:
        raise TypeError(
            f"{function}(): input {position} ({name}) has dtype {array.dtype}, expected {dtype} (as traced)"
        )
    if array.shape != shape:
        raise ValueError(
            f"{function}(): input {position} ({name}) has shape {array.shape}, expected {shape} (as traced)"
        )
    return array


def int_div(x, y):
    """Integer division truncating toward zero (C semantics), as the slope `div` operator defines it."""
    quotient = np.floor_divide(x, y)
    adjust = (np.remainder(x, y) != 0) & ((x < 0) != (y < 0))
    return (quotient + adjust).astype(x.dtype)


def pairwise_sum(x, axis, keepdims):
    """A sum over `axis` added pairwise however x lies in memory: NumPy adds pairwise only along the axis innermost in
    memory and one by one along the others (float64 0.1s over axis 0 of 10^5 x 10 are 1.7 10^4 units in the last
    place off). The reduced axes are moved last into one contiguous row per output."""
    kept = [d for d in range(x.ndim) if d not in axis]
    count = 1
    for d in axis:
        count *= x.shape[d]
    rows = np.ascontiguousarray(np.transpose(x, kept + list(axis)).reshape([x.shape[d] for d in kept] + [count]))
    total = np.add.reduce(rows, axis=-1)
    return total.reshape([1 if d in axis else size for d, size in enumerate(x.shape)]) if keepdims else total


def float_pow(x, y):
    """x ** y by C's pow (PyTorch's for tensor exponents): NumPy takes an exponent of 0.5 it reads as one number (0-d,
    or broadcast) for sqrt, which makes -0.0 ** 0.5 -0.0 and -inf ** 0.5 NaN (C: 0.0 and inf)."""
    out = np.power(x, y)
    half = y == 0.5
    if half.any():
        out = np.where(half & np.signbit(x) & ((x == 0) | np.isinf(x)), -x, out)
    return out


def int_pow(x, y):
    """Integer x ** y as PyTorch computes it: wrapping around on overflow; a negative exponent gives 0 unless |x| is 1
    (x ** (y mod 2) then, which NumPy computes where it refuses negative exponents)."""
    negative = y < 0
    out = np.power(x, np.where(negative, y & 1, y))
    return np.where(negative & (x != 1) & (x != -1), np.zeros((), out.dtype), out)


def gather_nd(x, idx):
    """x indexed by the last dimension of idx."""
    if idx.shape[-1] == 0:  # empty index vectors pick all of x (x[()] would not repeat it over idx's batch)
        return np.broadcast_to(x, idx.shape[:-1] + np.shape(x))
    shape = idx.shape[:-1] + np.shape(x)[idx.shape[-1] :]
    if 0 in shape and 0 not in np.shape(x)[: idx.shape[-1]]:  # an empty result checks no index, as in PyTorch
        return np.empty(shape, x.dtype)
    try:
        return x[tuple(np.moveaxis(idx, -1, 0))]
    except IndexError as error:  # an index outside [-size, size): say which operator met it
        raise IndexError(f"slope.gather_nd (x[index], slope.getitem): {error}; indices lie in [-size, size)") from None


def take_along_axis(x, idx, axis):
    """np.take_along_axis for slope.take_along_dim (registered by slope-nn), whose out-of-range error names it."""
    try:
        return np.take_along_axis(x, idx, axis=axis)
    except IndexError as error:
        raise IndexError(
            f"slope.take_along_dim: an index is out of range (indices must lie in [-size, size) of the dimension they "
            f"index); numpy: {error}"
        ) from None


def fail_if(failed, message, error):
    """failed itself where all of it is false, else error(message): slope-nn's run-time check of traced values."""
    if np.any(failed):
        raise error(message)
    return failed


def _bfloat16(dtype: np.dtype) -> bool:
    """Whether dtype is ml_dtypes' bfloat16 (of NumPy kind "V": NumPy has no kernels of its own for it)."""
    return dtype.kind == "V"


def scatter_add(x, idx, src, axis):
    """x with src added at idx along axis (repeats accumulate) for slope.scatter_add (registered by slope-nn), whose
    out-of-range error names it: run through its procedure, a scatter_nd, the error named that internal operator."""
    coords = list(np.indices(idx.shape, sparse=True))
    coords[axis] = idx
    return scatter_nd(x, np.stack(np.broadcast_arrays(*coords), -1), src, "scatter_add")


def scatter_nd(x, idx, updates, name="scatter_nd (x.at[index], gradients of x[index])"):
    """A copy of x with updates added at idx (repeated indices accumulate; float16 and bfloat16 in float32, rounded
    once, as onnxruntime: 1000 bfloat16 ones added one by one in bfloat16 stop at 256); an index out of range is an
    IndexError naming `name`."""
    wide = np.float32 if x.dtype == np.float16 or _bfloat16(x.dtype) else x.dtype
    if idx.shape[-1] == 0:  # every update adds to all of x
        return (x + np.sum(updates.reshape((-1,) + np.shape(x)), axis=0, dtype=wide)).astype(x.dtype)
    if 0 in np.shape(updates) and 0 not in np.shape(x)[: idx.shape[-1]]:  # no updates: no index checked (as gather_nd)
        return x.copy()
    out = x.astype(wide)  # (a copy)
    try:
        np.add.at(out, tuple(np.moveaxis(idx, -1, 0)), updates.astype(wide, copy=False))
    except IndexError as error:
        raise IndexError(
            f"slope.{name}: an index is out of range (indices must lie in [-size, size) of the dimension they index); "
            f"numpy: {error}"
        ) from None
    return out.astype(x.dtype, copy=False)


def matmul(x, y):
    """x @ y; bfloat16 in float32, rounded once (ml_dtypes' bfloat16 matmul returns the float32 values unrounded)."""
    if not _bfloat16(x.dtype):
        return np.matmul(x, y)
    return np.matmul(x.astype(np.float32), y.astype(np.float32)).astype(x.dtype)


def conv(x, w, stride, padding, dilation, groups):
    """N-d cross-correlation: x (N, C, *S), w (O, C/groups, *K)."""
    n = x.ndim - 2
    dtype = x.dtype
    if _bfloat16(dtype):  # einsum has no bfloat16 kernels: compute in float32
        x, w = x.astype(np.float32), w.astype(np.float32)
    x = np.pad(x, [(0, 0), (0, 0), *padding])
    batch, channels = x.shape[:2]
    out_channels, kernel = w.shape[0], w.shape[2:]
    spans = [d * (k - 1) + 1 for d, k in zip(dilation, kernel)]
    windows = sliding_window_view(x, spans, axis=tuple(range(2, 2 + n)))
    index = (
        slice(None),
        slice(None),
        *(slice(None, None, s) for s in stride),
        *(slice(None, None, d) for d in dilation),
    )
    windows = windows[index]
    out_spatial = windows.shape[2 : 2 + n]
    windows = windows.reshape(batch, groups, channels // groups, *out_spatial, *kernel)
    weights = w.reshape(groups, out_channels // groups, channels // groups, *kernel)
    letters = "abcdefghijklmnopqrstuvwxyz"
    space, taps = letters[:n], letters[n : 2 * n]
    result = np.einsum(f"NGC{space}{taps},GOC{taps}->NGO{space}", windows, weights, optimize=True)
    return np.ascontiguousarray(result.reshape(batch, out_channels, *out_spatial)).astype(dtype, copy=False)
