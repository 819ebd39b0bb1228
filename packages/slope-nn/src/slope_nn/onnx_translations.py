"""ONNX translations of slope-nn's operators for the onnxruntime backend, in slope-onnx's translation API
(`f(graph, inputs, instruction) -> output name`; `NoTranslationError` lowers an instruction through its procedure).

- `erf` is ONNX Erf (float64 through its procedure: ORT has no float64 kernel, and float32 would lose precision).
- `relu` is ONNX Relu (NaN stays NaN, as in PyTorch); onnxruntime fuses it into a preceding Conv.
- `log_softmax` is ONNX LogSoftmax (float16 and bfloat16 computed in float32; float64 through its procedure), and
  `softmax` ONNX Softmax likewise.
- `gelu` is ONNX Gelu (opset 20) for the exact form in float32 (float16 and bfloat16 computed in float32): within
  4.5e-7 of the float64 result where PyTorch's float32 kernel is within 1.1e-6. The tanh form (onnxruntime's is 4x
  less accurate than PyTorch's in the negative tail) and float64 (no Erf kernel) go through the procedure.
- `layer_norm` and `layer_norm_rstd` are the Y and InvStdDev outputs of one LayerNormalization node (scale 1) per
  input and eps, so a training step's normalisation and its gradient's statistic cost one pass (float32; float16 and
  bfloat16 computed in float32; float64 and rows longer than LAYER_NORM_KERNEL_MAX through the procedures). Its
  statistics are at least as accurate as PyTorch's float32 kernel (also for a mean large against the spread).
- `max_pool` is MaxPool, with NaN put back in the windows that hold one (see `_with_nans`). `max_pool_argmax` is the
  same MaxPool with its Indices output (positions in the whole tensor, turned into positions in the pooled
  dimensions); a max_pool of the same input and parameters reuses that node's values, so a training step pools once.
  A window holding NaN gives NaN and its last NaN's index, as PyTorch (see `_last_nans`; values alone: `_with_nans`).
  Windows of padding only are left to the procedures.
- `running_product` (cumprod) is a Scan along its dimension whose body multiplies the running product by the next
  slice: left to right, PyTorch's order (ONNX has no CumProd). 6 ms for a (64, 1024) float32 cumprod (in float64).
- `take_along_dim` is GatherElements; `scatter_add` is ScatterElements with reduction="add", or, when its indices are
  unique along the last dimension (non-overlapping pooling windows), MaxUnpool, which writes without atomics
  (indices not from max pooling are counted from the end and checked first: see `_checked_rows`).
- `fail_if` is slope-onnx's check (`OnnxGraph.check`): a failed one raises its own error and message.
"""

from __future__ import annotations

import math
import weakref
from typing import Any, Callable

import numpy as np
from onnx import helper

import slope
from slope import Instruction
from slope_onnx.graph import NoTranslationError, OnnxGraph, element_type
from slope_onnx.translate import emit

from .operators import padding_only_windows, pooled_shape

# per graph: (input name, pooling parameters) -> (values name, indices name or None), so MaxPool nodes are shared;
# (input name, eps) -> (normalised, rstd) of a LayerNormalization node
_pools: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_norms: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _float_compute(dtype: slope.DType) -> slope.DType:
    """The dtype the float kernels run in: float32/float64 themselves, float16/bfloat16 in float32 (exact here)."""
    if dtype.name in ("float32", "float64"):
        return dtype
    if dtype.name in ("float16", "bfloat16"):
        return slope.float32
    raise NoTranslationError


def _erf(graph: OnnxGraph, inputs: list[str], instruction: Instruction) -> str:
    out = instruction.outputs[0].aval
    if out.dtype == slope.float64:  # no float64 kernel, and float32 would lose precision
        raise NoTranslationError
    return emit(graph, "Erf", inputs, out.dtype, out.shape)


def _relu(graph: OnnxGraph, inputs: list[str], instruction: Instruction) -> str:
    out = instruction.outputs[0].aval
    compute = _float_compute(out.dtype)
    x = inputs[0] if compute == out.dtype else graph.cast(inputs[0], compute)
    result = graph.node("Relu", [x], shape=out.shape)
    return result if compute == out.dtype else graph.cast(result, out.dtype)


def _softmax_kind(op_type: str) -> Callable:
    def translate(graph: OnnxGraph, inputs: list[str], instruction: Instruction) -> str:
        out = instruction.outputs[0].aval
        if out.ndim == 0 or out.dtype == slope.float64:  # an axis is needed; LogSoftmax's float64 kernel gives a
            raise NoTranslationError  # finite element beside +inf -inf, where PyTorch (and the procedure) give NaN
        compute = _float_compute(out.dtype)
        x = inputs[0] if compute == out.dtype else graph.cast(inputs[0], compute)
        result = graph.node(op_type, [x], shape=out.shape, axis=instruction.params["dim"])
        return result if compute == out.dtype else graph.cast(result, out.dtype)

    return translate


def _gelu(graph: OnnxGraph, inputs: list[str], instruction: Instruction) -> str:
    out = instruction.outputs[0].aval
    if instruction.params["approximate"] != "none" or out.dtype == slope.float64:
        raise NoTranslationError
    compute = _float_compute(out.dtype)
    x = inputs[0] if compute == out.dtype else graph.cast(inputs[0], compute)
    result = graph.node("Gelu", [x], shape=out.shape, approximate="none")
    return result if compute == out.dtype else graph.cast(result, out.dtype)


# The longest rows LayerNormalization normalises: its statistics' error grows with the row (over 262,144 float32
# values 7.2e-6 off where PyTorch's is 4.7e-7; 1.5e-4 over 2e6), so longer rows go through the procedures, whose sums
# are blocked (at 16,384 the kernel is as accurate as PyTorch's, at 32,768 3x less)
LAYER_NORM_KERNEL_MAX = 16384


def _layer_norm_outputs(graph: OnnxGraph, inputs: list[str], instruction: Instruction) -> tuple[str, str]:
    """(normalised x, rstd) from one LayerNormalization node per input and eps, in x's dtype."""
    x_aval, eps = instruction.inputs[0].aval, instruction.params["eps"]
    if x_aval.dtype == slope.float64 or x_aval.size == 0 or x_aval.shape[-1] > LAYER_NORM_KERNEL_MAX:
        raise NoTranslationError
    memo = _norms.setdefault(graph, {})
    key = (inputs[0], eps)
    if key not in memo:
        compute = _float_compute(x_aval.dtype)
        x = inputs[0] if compute == x_aval.dtype else graph.cast(inputs[0], compute)
        ones, zeros = (graph.constant(np.full(x_aval.shape[-1], v, compute.numpy)) for v in (1, 0))  # (the bias 0:
        y, _, rstd = graph.node(  # no -0.0 in y, as PyTorch's kernel, which adds its bias after scaling)
            "LayerNormalization", [x, ones, zeros], shape=x_aval.shape, outputs=3, axis=-1, epsilon=eps
        )
        graph.shapes[rstd] = (*x_aval.shape[:-1], 1)
        if compute != x_aval.dtype:
            y, rstd = graph.cast(y, x_aval.dtype), graph.cast(rstd, x_aval.dtype)
        memo[key] = (y, rstd)
    return memo[key]


def _pool(graph: OnnxGraph, inputs: list[str], instruction: Instruction, with_indices: bool) -> tuple[str, Any]:
    """(values, indices in the whole tensor or None), both of shape (N, C, *pooled), from one MaxPool node."""
    x_aval, params = instruction.inputs[0].aval, instruction.params
    kernel = params["kernel"]
    n = len(kernel)
    if n > 3 or x_aval.size == 0 or padding_only_windows(x_aval.shape[x_aval.ndim - n :], **params) is not None:
        raise NoTranslationError  # (PyTorch's values and indices for windows of padding only: the procedures)
    compute = _float_compute(x_aval.dtype)
    memo = _pools.setdefault(graph, {})
    key = (inputs[0], kernel, params["stride"], params["padding"], params["dilation"])
    found = memo.get(key)
    if found is not None and (found[1] is not None or not with_indices):
        return found
    lead, spatial = x_aval.shape[: x_aval.ndim - n], x_aval.shape[x_aval.ndim - n :]
    x = inputs[0] if compute == x_aval.dtype else graph.cast(inputs[0], compute)
    if len(lead) != 2:  # MaxPool wants (N, C, *spatial): every leading dimension becomes a channel
        lead = (1, math.prod(lead))
        x = graph.reshape(x, (*lead, *spatial))
    shape = (*lead, *pooled_shape(spatial, kernel, params["stride"], params["padding"], params["dilation"]))
    attributes = {
        "kernel_shape": list(kernel),
        "strides": list(params["stride"]),
        "pads": list(params["padding"]) * 2,
        "dilations": list(params["dilation"]),
    }
    if with_indices:
        values, indices = graph.node("MaxPool", [x], shape=shape, outputs=2, **attributes)
        graph.shapes[indices] = shape
        values, indices = _last_nans(graph, x, values, indices, compute, attributes, shape, spatial)
    else:
        values = _with_nans(graph, x, graph.node("MaxPool", [x], shape=shape, **attributes), compute, attributes, shape)
        if compute == slope.float32:  # (float64's MaxPool starts from -inf)
            values = _with_infinities(graph, x, values, x_aval.dtype == slope.float32, attributes, shape)
        indices = None
    if compute != x_aval.dtype:
        values = graph.cast(values, x_aval.dtype)
    memo[key] = (values, indices)
    return values, indices


def _with_nans(graph: OnnxGraph, x: str, values: str, dtype: slope.DType, attributes: dict, shape: tuple) -> str:
    """MaxPool's values with NaN for each window that holds a NaN, as PyTorch gives (onnxruntime's MaxPool keeps a
    NaN only when it comes first in its window). A window's sum is NaN exactly where it holds a NaN once +inf is
    capped (no inf - inf; the cap is small enough that no sum overflows to +inf), and AveragePool sums fast (in
    float32, its only kernel: a float64 beyond float32's range becomes an infinity, which keeps the test exact)."""
    cap = graph.scalar(float(np.finfo(np.float32).max) / math.prod(attributes["kernel_shape"]), slope.float32)
    capped = graph.node("Min", [x if dtype == slope.float32 else graph.cast(x, slope.float32), cap])
    sums = graph.node("AveragePool", [capped], shape=shape, **attributes)
    nans = graph.node("IsNaN", [sums], shape=shape)
    return graph.node("Where", [nans, graph.scalar(math.nan, dtype), values], shape=shape)


def _with_infinities(graph: OnnxGraph, x: str, values: str, exact: bool, attributes: dict, shape: tuple) -> str:
    """MaxPool's float32 values with -inf for each window of only -inf, as PyTorch gives: onnxruntime's MaxPool
    without indices (MLAS) gives float32's lowest number there, its starting value. Where the input is float32 itself
    (`exact`), a window whose largest element is that lowest number keeps it (a second MaxPool finds them)."""
    lowest = graph.scalar(float(np.finfo(np.float32).min), slope.float32)
    suspect = graph.node("Equal", [values, lowest], shape=shape)
    if exact:
        held = graph.cast(graph.node("Equal", [x, lowest], shape=graph.shapes.get(x)), slope.float32)
        holds = graph.node("MaxPool", [held], shape=shape, **attributes)
        suspect = graph.node("And", [suspect, graph.node("Equal", [holds, graph.scalar(0.0, slope.float32)])])
    return graph.node("Where", [suspect, graph.scalar(-math.inf, slope.float32), values], shape=shape)


def _last_nans(
    graph: OnnxGraph,
    x: str,
    values: str,
    indices: str,
    dtype: slope.DType,
    attributes: dict,
    shape: tuple,
    spatial: tuple,
) -> tuple[str, str]:
    """MaxPool's values and indices with PyTorch's for each window holding a NaN: NaN, and the position of the
    window's last NaN (onnxruntime's MaxPool names its own choice there). A MaxPool over each NaN's position in its
    plane (-1 elsewhere) finds both: the latest position is the last NaN in PyTorch's scan order. (onnxruntime's
    MaxPool with indices is a scalar loop: this second one, without indices, costs less than the first.)"""
    plane = math.prod(spatial)
    where = slope.float32 if plane < 1 << 24 else slope.float64  # positions exact in it
    positions = graph.constant(np.arange(plane, dtype=where.numpy).reshape((1, 1, *spatial)))
    full = (*shape[:2], *spatial)
    nans = graph.node("Where", [graph.node("IsNaN", [x], shape=full), positions, graph.scalar(-1, where)], shape=full)
    last = graph.node("MaxPool", [nans], shape=shape, **attributes)
    holds = graph.node("Greater", [last, graph.scalar(-1, where)], shape=shape)
    values = graph.node("Where", [holds, graph.scalar(math.nan, dtype), values], shape=shape)
    rows = graph.constant(
        (np.arange(math.prod(shape[:2]), dtype=np.int64) * plane).reshape((*shape[:2],) + (1,) * len(spatial))
    )
    at = graph.node("Add", [graph.cast(last, slope.int64), rows], shape=shape)
    return values, graph.node("Where", [holds, at, indices], shape=shape)


def _max_pool(graph: OnnxGraph, inputs: list[str], instruction: Instruction) -> str:
    values, _ = _pool(graph, inputs, instruction, with_indices=False)
    return graph.reshape(values, instruction.outputs[0].aval.shape)


def _max_pool_argmax(graph: OnnxGraph, inputs: list[str], instruction: Instruction) -> str:
    _, indices = _pool(graph, inputs, instruction, with_indices=True)
    x_aval = instruction.inputs[0].aval
    plane = math.prod(x_aval.shape[x_aval.ndim - len(instruction.params["kernel"]) :])
    local = graph.node("Mod", [indices, graph.scalar(plane, slope.int64)], shape=graph.shapes[indices])
    return graph.reshape(local, instruction.outputs[0].aval.shape)


def _running_product(graph: OnnxGraph, inputs: list[str], instruction: Instruction) -> str:
    out, dim = instruction.outputs[0].aval, instruction.params["dim"]
    row = [n for d, n in enumerate(out.shape) if d != dim]  # one slice along dim: the state's shape
    kind = element_type(out.dtype)
    body = helper.make_graph(
        [helper.make_node("Mul", ["product", "next"], ["updated"]), helper.make_node("Identity", ["updated"], ["y"])],
        "running_product",
        [helper.make_tensor_value_info(name, kind, row) for name in ("product", "next")],
        [helper.make_tensor_value_info(name, kind, row) for name in ("updated", "y")],
    )
    ones = graph.constant(np.ones(row, out.dtype.numpy))
    _, result = graph.node("Scan", [ones, inputs[0]], shape=None, outputs=2, body=body, num_scan_inputs=1,
                           scan_input_axes=[dim], scan_output_axes=[dim])  # fmt: skip
    graph.shapes[result] = out.shape
    return result


def _take_along_dim(graph: OnnxGraph, inputs: list[str], instruction: Instruction) -> str:
    out = instruction.outputs[0].aval
    return graph.node("GatherElements", inputs, shape=out.shape, axis=instruction.params["dim"])


def _scatter_compute(dtype: slope.DType) -> slope.DType:
    if dtype.name in ("int32", "int64", "float32", "float64"):
        return dtype
    if dtype.name in ("int8", "uint8"):  # int32 wraps around to the same result modulo 256
        return slope.int32
    return _float_compute(dtype)


def _scatter_add(graph: OnnxGraph, inputs: list[str], instruction: Instruction) -> str:
    out, params = instruction.outputs[0].aval, instruction.params
    x, index, src = inputs
    compute = _scatter_compute(out.dtype)
    if compute != out.dtype:
        x, src = graph.cast(x, compute), graph.cast(src, compute)
    last = params["dim"] == out.ndim - 1
    if params["unique_indices"] and last and compute == slope.float32 and out.size:  # MaxUnpool: float32 only
        result = _unpool(graph, x, index, src, instruction.inputs[1].aval.shape, out.shape)
    else:
        result = graph.node("ScatterElements", [x, index, src], shape=out.shape, axis=params["dim"], reduction="add")
    return result if compute == out.dtype else graph.cast(result, out.dtype)


def _whole_tensor_indices(graph: OnnxGraph, index: str, size: int) -> str | None:
    """The positions in the whole tensor that `index` (positions within rows of `size`) was computed from by
    `Mod(whole, size)` and reshapes only (which keep the row-major order, so row r's offset is r * size), else None."""
    producer = graph.producers.get(index)
    while producer is not None and producer.op_type == "Reshape":
        producer = graph.producers.get(producer.input[0])
    if producer is None or producer.op_type != "Mod":
        return None
    divisor = graph.value(producer.input[1])
    return producer.input[0] if divisor is not None and divisor.size == 1 and int(divisor) == size else None


def _checked_rows(graph: OnnxGraph, index: str, src: str, size: int, count: int) -> tuple[str, str]:
    """`index` (within rows of `size`) with negative ones counted from the end, as ScatterElements counts them, and
    `src`, tied to a check that raises the backend's IndexError for scatter_add when an index lies outside
    [-size, size): MaxUnpool reads row r's -1 or `size` as a position in row r - 1 or r + 1, and refuses only the
    positions outside the whole tensor, in an error that names no Slope operator."""
    known = graph.value(index)
    if known is not None:
        if known.size and (known.min() < -size or known.max() >= size):
            raise IndexError(
                f"slope.scatter_add: an index is out of range (indices must lie in [-size, size) of the dimension "
                f"they index); indices range from {known.min()} to {known.max()} for a dimension of size {size}"
            )
        return graph.constant(np.where(known < 0, known + size, known)), src
    # ScatterElements of -0.0 into `size` slots at every index: it checks the indices as scatter_add's other route
    # does, and its first slot, -0.0, added to src leaves every value as it is (-0.0 and NaN included)
    flat_index = graph.reshape(index, (count,))
    zero = graph.constant(np.array([-0.0], np.float32))
    updates = graph.node("Expand", [zero, graph.int64s((count,))], shape=(count,))
    slots = graph.constant(np.full(size, -0.0, np.float32))
    checked = graph.node("ScatterElements", [slots, flat_index, updates], shape=(size,), axis=0)
    first = graph.node("Slice", [checked, graph.int64s((0,)), graph.int64s((1,))], shape=(1,))
    src = graph.node("Add", [src, first], shape=graph.shapes.get(src))
    negative = graph.node("Less", [index, graph.scalar(0, slope.int64)], shape=graph.shapes.get(index))
    wrapped = graph.node("Add", [index, graph.scalar(size, slope.int64)], shape=graph.shapes.get(index))
    return graph.node("Where", [negative, wrapped, index], shape=graph.shapes.get(index)), src


def _unpool(graph: OnnxGraph, x: str, index: str, src: str, index_shape: tuple, shape: tuple) -> str:
    """x + (src written at the unique indices along the last dimension), by MaxUnpool over rows of the whole tensor."""
    rows, size, count = math.prod(shape[:-1]), shape[-1], index_shape[-1]
    whole = _whole_tensor_indices(graph, index, size)
    if whole is not None:  # max_pool_argmax's positions came from MaxPool's: use those, skipping Mod and Add
        flat = graph.reshape(whole, (1, rows, count))
    else:
        index, src = _checked_rows(graph, index, src, size, rows * count)
        offsets = graph.constant((np.arange(rows, dtype=np.int64) * size).reshape(1, rows, 1))
        flat = graph.node("Add", [graph.reshape(index, (1, rows, count)), offsets], shape=(1, rows, count))
    output_shape = graph.int64s((1, rows, size))
    written = graph.node("MaxUnpool", [graph.reshape(src, (1, rows, count)), flat, output_shape],
                         shape=(1, rows, size), kernel_shape=[1], strides=[1])  # fmt: skip
    written = graph.reshape(written, shape)
    base = graph.value(x)
    if base is not None and not base.any():
        return written
    return graph.node("Add", [written, x], shape=shape)


def _fail_if(graph: OnnxGraph, inputs: list[str], instruction: Instruction) -> str:
    params = instruction.params
    return graph.check(inputs[0], instruction.outputs[0].aval.shape, params["message"], params["error"])


translations: dict[str, Callable] = {
    "log_softmax": _softmax_kind("LogSoftmax"),
    "softmax": _softmax_kind("Softmax"),
    "gelu": _gelu,
    "layer_norm": lambda graph, inputs, instruction: _layer_norm_outputs(graph, inputs, instruction)[0],
    "layer_norm_rstd": lambda graph, inputs, instruction: _layer_norm_outputs(graph, inputs, instruction)[1],
    "erf": _erf,
    "relu": _relu,
    "max_pool": _max_pool,
    "max_pool_argmax": _max_pool_argmax,
    "running_product": _running_product,
    "take_along_dim": _take_along_dim,
    "scatter_add": _scatter_add,
    "fail_if": _fail_if,
}
