"""Translations of slope operators to ONNX nodes: `f(graph, inputs, instruction) -> output name`.

onnxruntime's CPU kernels do not cover every dtype of every ONNX operator. Where a kernel is missing, the translation
computes in a wider type that gives the same result (int8/uint8/int16 in int32, whose wrap-around agrees modulo 256;
float16/bfloat16 in float32, rounded once at the end; bool in uint8) and casts back. Where no wider type is exact
(erf in float64), it raises `NoTranslationError` and the instruction is lowered through its procedure.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

import slope
from slope import Aval, DType, Instruction

from .graph import NoTranslationError, OnnxGraph, element_type

_FLOATS = {"float16", "float32", "float64"}
_INTS = {"int8", "uint8", "int16", "int32", "int64"}
_NUMBERS = _FLOATS | _INTS
_ALL = _NUMBERS | {"bool"}

# dtypes with an onnxruntime CPU kernel, per ONNX operator (probed on onnxruntime 1.31, opset 21). float16 only where
# the kernel is float16's own: for the others onnxruntime inserts casts to float32 and back, then drops each pair of
# Cast(float32 -> float16) -> Cast(float16 -> float32) where one of them is its own, so a chain of float16 operations
# (or one between casts from and to float32) skipped float16's rounding (x.half().log().float() was log(x), not
# PyTorch's log of the rounded x, rounded); pairs of the translations' own casts are kept (graph.float16_in_float32
# casts the operands of the float16 nodes that translations make directly).
_WIDE = {"float32", "float64"}
_NO_HALF = _NUMBERS - {"float16"}
NATIVE: dict[str, set[str]] = {
    "Add": _NO_HALF, "Sub": _NO_HALF, "Mul": _NO_HALF,
    "Div": _NO_HALF - {"int16"}, "Max": _NUMBERS - {"int16"}, "Pow": _WIDE | {"int32", "int64"},
    "Equal": _ALL - {"float16"}, "Less": _NO_HALF, "Greater": _NO_HALF, "LessOrEqual": _NO_HALF,
    "GreaterOrEqual": _NO_HALF, "Mod": _NUMBERS,
    "BitwiseAnd": _INTS, "BitwiseOr": _INTS, "BitwiseXor": _INTS, "BitwiseNot": _INTS,
    "Exp": _WIDE, "Log": _WIDE, "Sin": _WIDE, "Cos": _WIDE, "Sqrt": _WIDE, "Tanh": _WIDE,
    "Erf": {"float32"}, "Floor": _WIDE, "Ceil": _WIDE, "Round": _FLOATS,
    "Where": _NO_HALF - {"int16"},
    "ReduceSum": _WIDE | {"int32", "int64"}, "ReduceMax": _ALL - {"int16", "float16"},
    "Expand": _ALL, "Pad": _ALL - {"int16", "float16"},
    "MatMul": _WIDE | {"int32", "int64"},
    "Conv": {"float32"},
    "ScatterND": _NUMBERS - {"float16"},  # its float16 kernel rejects reduction="add" when it runs
}  # fmt: skip

_WIDER = {
    "int8": slope.int32,
    "uint8": slope.int32,
    "int16": slope.int32,
    "float16": slope.float32,
    "bfloat16": slope.float32,
    "bool": slope.uint8,
}


def compute_dtype(op_type: str, dtype: DType) -> DType:
    """The dtype an ONNX operator runs in for inputs of `dtype`: itself, or a wider one with the same results."""
    native = NATIVE.get(op_type)
    if native is None or dtype.name in native:
        return dtype
    wider = _WIDER.get(dtype.name)
    if wider is None or wider.name not in native:
        raise NoTranslationError
    return wider


def emit(graph: OnnxGraph, op_type: str, inputs: list[str], dtype: DType, shape: tuple, out_dtype: DType | None = None,
         extra: tuple[str, ...] = (), **attributes: Any) -> str:  # fmt: skip
    """One ONNX node computing in a dtype ORT has a kernel for: `inputs` of `dtype`, then `extra` inputs (axes,
    shapes) as they are; `out_dtype` when the output's dtype differs from the inputs'."""
    compute = compute_dtype(op_type, dtype)
    if compute != dtype:
        inputs = [graph.cast(name, compute) for name in inputs]
    out = graph.node(op_type, [*inputs, *extra], shape=shape, **attributes)
    if out_dtype is None and compute != dtype:
        out = graph.cast(out, dtype)
    return out


def _in(instruction: Instruction, i: int = 0) -> Any:
    return instruction.inputs[i].aval


def _out(instruction: Instruction) -> Any:
    return instruction.outputs[0].aval


# ----------------------------------------------------------------------------------------------- elementwise


def _unary(op_type: str) -> Callable:
    def translate(graph: OnnxGraph, inputs: list[str], instruction: Instruction) -> str:
        out = _out(instruction)
        return emit(graph, op_type, inputs, out.dtype, out.shape)

    return translate


def _elementwise(graph: OnnxGraph, out: Aval) -> Callable:
    """`node(op, *operands)`: a node of out's shape whose Python-number operands become scalars of out's dtype."""

    def node(op: str, *operands: Any) -> str:
        return graph.node(op, [v if isinstance(v, str) else graph.scalar(v, out.dtype) for v in operands],
                          shape=out.shape)  # fmt: skip

    return node


# pi/2 in three parts of 33 bits (fdlibm's pio2_1, pio2_2, pio2_3): k * part is exact for |k| < 2**20; then the
# rest (pio2_3t), whose product rounds but is tiny: without it x near k * pi/2 kept k * 8.5e-32 of error (cos of
# 321307.9594422229, a value of 4.4e-17, was 2.8 million ulps off)
_HALF_PI_PARTS = (1.57079632673412561417e00, 6.07710050630396597660e-11, 2.02226624871116645580e-21,
                  8.47842766036889956997e-32)  # fmt: skip


def _sine(op_type: str) -> Callable:
    """Sin or Cos; float64 reduced by k * pi/2 first (Cody and Waite): onnxruntime's float64 kernels reduce their
    argument coarsely (sin(pi) was -0.0, not 1.2e-16; 18,000 ulps off near pi, 54 at the 99th percentile on
    [-20, 20]) and are within 3 ulps on [-pi/4, pi/4]. Beyond |k| = 2**20 (|x| > 1.6e6) the kernel's own result."""

    def translate(graph: OnnxGraph, inputs: list[str], instruction: Instruction) -> str:
        out = _out(instruction)
        if out.dtype != slope.float64:
            return emit(graph, op_type, inputs, out.dtype, out.shape)
        x, shape, node = inputs[0], out.shape, _elementwise(graph, out)
        k = node("Round", node("Mul", x, 2 / math.pi))
        reduced = x
        for part in _HALF_PI_PARTS:
            reduced = node("Sub", reduced, node("Mul", k, part))
        # (onnxruntime's Where turns a -0.0 it takes from its X input into +0.0: -0.0 and its sine come from Y)
        reduced = node("Where", node("Greater", node("Abs", k), 0.0), reduced, x)
        # x = k * pi/2 + r: sin x is sin r, cos r, -sin r, -cos r for k = 0, 1, 2, 3 (mod 4); cos x = sin(x + pi/2)
        quadrant = node("Add", k, 1.0) if op_type == "Cos" else k
        quadrant = node("Sub", quadrant, node("Mul", node("Floor", node("Mul", quadrant, 0.25)), 4.0))
        odd = node("Equal", graph.node("Mod", [quadrant, graph.scalar(2.0, slope.float64)], shape=shape, fmod=1), 1.0)
        value = node("Where", odd, node("Cos", reduced), node("Sin", reduced))
        value = node("Where", node("GreaterOrEqual", quadrant, 2.0), node("Neg", value), value)
        return node("Where", node("GreaterOrEqual", node("Abs", k), 2.0**20), node(op_type, x), value)

    return translate


def _tanh(graph: OnnxGraph, inputs: list[str], instruction: Instruction) -> str:
    """Tanh; beyond |x| = 1 as sign(x) (1 - 2 / (exp(2|x|) + 1)): onnxruntime's float32 kernel gives values up to
    1.0000002 from |x| = 8.2 (tanh's derivative, 1 - y**2, was negative there) and its float64 kernel rounds to +-1
    from |x| = 17.7 in long tensors (1 - 8e-16 there); float32 below |x| = 2**-12 is x (tanh x rounds to x there,
    where the kernel was up to 104 ulps off)."""
    out, x = _out(instruction), inputs[0]
    if out.dtype not in (slope.float32, slope.float64):
        return emit(graph, "Tanh", inputs, out.dtype, out.shape)
    node = _elementwise(graph, out)
    size = node("Abs", x)
    tail = node(
        "Mul",
        node("Sign", x),
        node("Sub", 1.0, node("Div", 2.0, node("Add", node("Exp", node("Add", size, size)), 1.0))),
    )
    # (-0.0 comes from Where's second input: its first turns -0.0 into +0.0)
    value = node("Where", node("Greater", size, 1.0), tail, node("Tanh", x))
    return node("Where", node("GreaterOrEqual", size, 2.0**-12), value, x) if out.dtype == slope.float32 else value


def _invert(graph: OnnxGraph, inputs: list[str], instruction: Instruction) -> str:
    out = _out(instruction)
    if out.dtype == slope.bool_:  # (not Not: onnxruntime's NotWhereFusion swaps Where(Not(c), x, y)'s x and y, and
        # its Where turns a -0.0 it takes from X into +0.0, so where(~isnan(v), v, 0.0) lost -0.0)
        return graph.node("Xor", [inputs[0], graph.scalar(True, slope.bool_)], shape=out.shape)
    return emit(graph, "BitwiseNot", inputs, out.dtype, out.shape)


def _identity(graph: OnnxGraph, inputs: list[str], instruction: Instruction) -> str:
    return inputs[0]


def _cast(graph: OnnxGraph, inputs: list[str], instruction: Instruction) -> str:
    return graph.cast(inputs[0], instruction.params["dtype"])


def _binary(op_type: str) -> Callable:
    def translate(graph: OnnxGraph, inputs: list[str], instruction: Instruction) -> str:
        out = _out(instruction)
        return emit(graph, op_type, inputs, _in(instruction).dtype, out.shape)

    return translate


def _maximum(graph: OnnxGraph, inputs: list[str], instruction: Instruction) -> str:
    """Max; int64 as Where(x < y, y, x): onnxruntime 1.31's int64 Max kernel is wrong above 2**31 (max(2**31, 0) was
    0), its Less is right."""
    out = _out(instruction)
    if out.dtype != slope.int64:
        return emit(graph, "Max", inputs, out.dtype, out.shape)
    return graph.node("Where", [graph.node("Less", inputs, shape=out.shape), inputs[1], inputs[0]], shape=out.shape)


def _compare(op_type: str) -> Callable:
    def translate(graph: OnnxGraph, inputs: list[str], instruction: Instruction) -> str:
        out = _out(instruction)
        if op_type == "Equal":
            infinite = _isinf_operand(graph, inputs, _in(instruction).dtype)
            if infinite is not None:
                return graph.node("IsInf", [infinite], shape=out.shape)
        return emit(graph, op_type, inputs, _in(instruction).dtype, out.shape, out_dtype=out.dtype)

    return translate


def _isinf_operand(graph: OnnxGraph, inputs: list[str], dtype: DType) -> str | None:
    """x where the comparison is `x * sign(x) == inf` (slope's isinf procedure), else None.

    `x * (cast(x > 0) - cast(x < 0)) == inf` holds exactly when x is +inf or -inf (NaN, zeros and finite values give
    false), which is ONNX's IsInf: one node instead of seven, in every logsumexp, softmax and cross-entropy.
    """
    if dtype.name not in ("float32", "float64"):
        return None
    for position in (0, 1):
        bound = graph.value(inputs[1 - position])
        if bound is None or bound.size != 1 or not np.isposinf(bound.reshape(-1)[0]):
            continue
        product = graph.producers.get(inputs[position])
        if product is None or product.op_type != "Mul":
            continue
        for x, sign in (product.input, reversed(product.input)):
            difference = graph.producers.get(sign)
            if difference is None or difference.op_type != "Sub":
                continue
            casts = [graph.producers.get(name) for name in difference.input]
            tests = [graph.producers.get(c.input[0]) if c is not None and c.op_type == "Cast" else None for c in casts]
            if [t.op_type if t is not None else None for t in tests] != ["Greater", "Less"]:
                continue
            if all(t.input[0] == x and _is_zero(graph.value(t.input[1])) for t in tests):
                return x
    return None


def _is_zero(value: np.ndarray | None) -> bool:
    return value is not None and value.size == 1 and value.reshape(-1)[0] == 0


def _bitwise(op_type: str, logical: str) -> Callable:
    def translate(graph: OnnxGraph, inputs: list[str], instruction: Instruction) -> str:
        out = _out(instruction)
        if out.dtype == slope.bool_:
            return graph.node(logical, inputs, shape=out.shape)
        return emit(graph, op_type, inputs, out.dtype, out.shape)

    return translate


def _div(graph: OnnxGraph, inputs: list[str], instruction: Instruction) -> str:
    out = _out(instruction)
    dtype, shape = out.dtype, out.shape
    if dtype.is_float:
        return emit(graph, "Div", inputs, dtype, shape)
    compute = compute_dtype("Div", dtype)  # int8, uint8, int16 divide in int32, where INT8_MIN / -1 cannot overflow
    x, y = inputs
    if compute != dtype:
        x, y = graph.cast(x, compute), graph.cast(y, compute)
    # ORT raises on x / 0 and traps on INT_MIN / -1; slope gives 0 and wraps around (as NumPy does)
    traps = compute == dtype and dtype.kind == "int"
    divisor = graph.value(inputs[1])
    if divisor is not None and not np.any(divisor == 0) and not (traps and np.any(divisor == -1)):
        quotient = graph.node("Div", [x, y], shape=shape)
    else:
        zero, one = graph.scalar(0, compute), graph.scalar(1, compute)
        is_zero = graph.node("Equal", [y, zero], shape=shape)
        unsafe = is_zero
        if traps:
            is_minus_one = graph.node("Equal", [y, graph.scalar(-1, compute)], shape=shape)
            unsafe = graph.node("Or", [is_zero, is_minus_one], shape=shape)
        quotient = graph.node("Div", [x, graph.node("Where", [unsafe, one, y], shape=shape)], shape=shape)
        if traps:
            negated = graph.node("Sub", [zero, x], shape=shape)
            quotient = graph.node("Where", [is_minus_one, negated, quotient], shape=shape)
        quotient = graph.node("Where", [is_zero, zero, quotient], shape=shape)
    return graph.cast(quotient, dtype) if compute != dtype else quotient


def _fmod(graph: OnnxGraph, inputs: list[str], instruction: Instruction) -> str:
    out = _out(instruction)
    if out.dtype.is_float:
        return emit(graph, "Mod", inputs, out.dtype, out.shape, fmod=1)
    # integers: x - trunc(x / y) * y through `div`'s translation, which gives 0 for a zero divisor (Mod would trap)
    product = graph.node("Mul", [_div(graph, inputs, instruction), inputs[1]], shape=out.shape)
    return graph.node("Sub", [inputs[0], product], shape=out.shape)


def _pow(graph: OnnxGraph, inputs: list[str], instruction: Instruction) -> str:
    """Pow for floats; for integers square-and-multiply (onnxruntime's integer Pow goes through double: it saturates
    where PyTorch wraps around, and gives INT_MIN for 0 ** -1 where PyTorch gives 0)."""
    out = _out(instruction)
    if out.dtype.is_float:
        return emit(graph, "Pow", inputs, out.dtype, out.shape)
    compute = compute_dtype("Where", out.dtype)  # int16 in int32: the wrap-around agrees modulo 2**16
    x, y = (name if compute == out.dtype else graph.cast(name, compute) for name in inputs)
    zero, one, two = (graph.scalar(v, compute) for v in (0, 1, 2))
    known, signed, negative = graph.value(inputs[1]), out.dtype.kind == "int", None
    if known is not None and known.min() >= 0:  # a constant exponent: as many squarings as its bits
        bits = max(int(known.max()).bit_length(), 1)
    else:
        bits = np.iinfo(out.dtype.numpy).bits - signed
    if signed and (known is None or known.min() < 0):  # a negative y gives x ** (y mod 2) where |x| is 1, else 0
        negative = graph.node("Less", [y, zero], shape=out.shape)
        y = graph.node("Where", [negative, graph.node("BitwiseAnd", [y, one], shape=out.shape), y], shape=out.shape)
    result, power = None, x
    for bit in range(bits):
        odd = graph.node("Equal", [graph.node("BitwiseAnd", [y, one], shape=out.shape), one], shape=out.shape)
        factor = graph.node("Where", [odd, power, one], shape=out.shape)
        result = factor if result is None else graph.node("Mul", [result, factor], shape=out.shape)
        if bit < bits - 1:
            power = graph.node("Mul", [power, power], shape=out.shape)
            y = graph.node("Div", [y, two], shape=out.shape)
    if negative is not None:
        unit = graph.node("Or", [graph.node("Equal", [x, one], shape=out.shape),
                                 graph.node("Equal", [x, graph.scalar(-1, compute)], shape=out.shape)], shape=out.shape)  # fmt: skip
        vanishes = graph.node("And", [negative, graph.node("Not", [unit], shape=out.shape)], shape=out.shape)
        result = graph.node("Where", [vanishes, zero, result], shape=out.shape)
    return result if compute == out.dtype else graph.cast(result, out.dtype)


def _may_be_negative_zero(graph: OnnxGraph, name: str) -> bool:
    producer = graph.producers.get(name)
    while graph.value(name) is None and producer is not None and producer.op_type in ("Expand", "Reshape"):
        name = producer.input[0]  # a broadcast constant (a zero cotangent's Expand)
        producer = graph.producers.get(name)
    value = graph.value(name)
    return value is None or bool(np.signbit(value[value == 0]).any())


def _where(graph: OnnxGraph, inputs: list[str], instruction: Instruction) -> str:
    """Where, keeping the sign of a selected zero: onnxruntime's kernel gives +0.0 for a -0.0 it takes from X (not
    from Y). Where only X may hold -0.0 (a side with no -0.0 is a constant: relu's gradient, masks), X goes to Y's
    side and the condition is negated (one pass over bools); where both may, each side is taken in Y's place with
    -0.0 as the other's filler (exact: v + -0.0 == v)."""
    out = _out(instruction)
    compute = compute_dtype("Where", out.dtype)
    condition, x, y = inputs
    if compute != out.dtype:
        x, y = graph.cast(x, compute), graph.cast(y, compute)
    if not out.dtype.is_float or not _may_be_negative_zero(graph, x):
        result = graph.node("Where", [condition, x, y], shape=out.shape)
    else:
        true = graph.scalar(True, slope.bool_)
        negated = graph.node("Xor", [condition, true], shape=instruction.inputs[0].aval.shape)
        if not _may_be_negative_zero(graph, y):  # c ? x : y as (not c) ? y : x
            result = graph.node("Where", [negated, y, x], shape=out.shape)
        else:  # (c ? x : -0.0) - (c ? +0.0 : -y)
            zero = graph.scalar(0, compute)
            minus_x = graph.node("Where", [negated, zero, graph.node("Neg", [x])], shape=out.shape)
            minus_y = graph.node("Where", [condition, zero, graph.node("Neg", [y])], shape=out.shape)
            result = graph.node("Sub", [graph.node("Neg", [minus_x], shape=out.shape), minus_y], shape=out.shape)
    return graph.cast(result, out.dtype) if compute != out.dtype else result


# ----------------------------------------------------------------------------------------------- reductions


def _reduce_max(graph: OnnxGraph, inputs: list[str], instruction: Instruction) -> str:
    """ReduceMax, and NaN where a NaN is reduced (as PyTorch and NumPy give): onnxruntime's kernel keeps a NaN only
    when it comes first, so the NaNs are reduced apart (IsNaN and a ReduceMax of bools) and put back with a Where."""
    out, dim = _out(instruction), instruction.params["dim"]
    if not dim:
        return inputs[0]
    axes, keepdims = graph.int64s(dim), int(instruction.params["keepdim"])
    if not out.dtype.is_float:
        return emit(graph, "ReduceMax", inputs, out.dtype, out.shape, extra=(axes,), keepdims=keepdims)
    compute = compute_dtype("ReduceMax", out.dtype)
    x = inputs[0] if compute == out.dtype else graph.cast(inputs[0], compute)
    top = graph.node("ReduceMax", [x, axes], shape=out.shape, keepdims=keepdims)
    nans = graph.node("IsNaN", [x], shape=_in(instruction).shape)
    any_nan = graph.node("ReduceMax", [nans, axes], shape=out.shape, keepdims=keepdims)
    result = graph.node("Where", [any_nan, graph.scalar(math.nan, compute), top], shape=out.shape)
    return result if compute == out.dtype else graph.cast(result, out.dtype)


# The most elements one floating-point ReduceSum node adds into each output. onnxruntime adds them one by one (a few
# lanes at most): 10^6 float32 copies of 0.1 summed to 99,910. Bounding the count per node bounds the error; see _sum.
SUM_BLOCK = 256


def _sum(graph: OnnxGraph, inputs: list[str], instruction: Instruction) -> str:
    """A sum with a bounded error: floats in blocks of at most SUM_BLOCK per node, integers exactly.

    Floats (float16 and bfloat16 add in float32 and round once), with n elements per output and unit roundoff u of
    the dtype: n <= SUM_BLOCK adds in one node, error <= (n - 1) u sum(|x|); float32 adds blocks of at most SUM_BLOCK
    in float32 and their partial sums in float64, error <= SUM_BLOCK u sum(|x|) (for n < 2^40); float64 adds in
    stages of at most SUM_BLOCK, error <= SUM_BLOCK u sum(|x|) per stage. onnxruntime's integer ReduceSum adds in
    double (inexact above 2^53, saturating on overflow): integers add by a MatMul with ones, exact and wrapping around.

    SUM_BLOCK = 256 by measurement: the staged sums of the CNN step (43,264 and 7,744 per output) run 2-5% faster
    than one ReduceSum (CPU time, one thread), and the MLP step's sums (10 and 200 elements) stay single nodes.
    """
    out = _out(instruction)
    dim, keepdim = instruction.params["dim"], instruction.params["keepdim"]
    x, shape = inputs[0], _in(instruction).shape
    count = math.prod(shape[d] for d in dim)
    if not dim or count == 1:
        return graph.reshape(x, out.shape)
    if out.dtype == slope.bool_:  # a sum of bools that stays bool is `any`
        return graph.node("ReduceMax", [x, graph.int64s(dim)], shape=out.shape, keepdims=int(keepdim))
    if count == 0 or (out.dtype.is_float and count <= SUM_BLOCK):
        leading = _leading_sum(graph, x, instruction)
        if leading is not None:
            return leading
        return emit(graph, "ReduceSum", [x], out.dtype, out.shape, extra=(graph.int64s(dim),), keepdims=int(keepdim))
    sizes, reduced = _merged(list(shape), [d in dim for d in range(len(shape))])
    summed = _float_sum if out.dtype.is_float else _int_sum
    return graph.reshape(summed(graph, x, out.dtype, sizes, reduced), out.shape)


# A float sum over leading axes (a bias gradient: (batch, features) -> (features)) that keeps at most this many
# elements per row runs as a CumSum: onnxruntime's ReduceSum takes its row-wise kernel only for more than 256 x its
# threads, and a generic loop below that, 3-5x slower ((200, 100): 15 us against 5 us on one or two threads).
LEADING_SUM_KEPT = 256
LEADING_SUM_ELEMENTS = 2048  # (below this, the two extra nodes cost about what they save)


def _leading_sum(graph: OnnxGraph, x: str, instruction: Instruction) -> str | None:
    """A float32/float64 sum over leading axes (at most SUM_BLOCK rows) as the last row of a CumSum plus 0.0, else
    None. The values are ReduceSum's bit for bit: both add the rows one by one in order, and its sum starts from +0.0
    (a column of -0.0 sums to +0.0, as in PyTorch: the added 0.0 does that and changes no other value). Only a NaN's
    sign bit can differ, where a column holds NaNs of both signs (this keeps the first one's, as PyTorch)."""
    out, shape = _out(instruction), _in(instruction).shape
    if out.dtype not in (slope.float32, slope.float64) or _in(instruction).dtype != out.dtype:
        return None
    sizes, reduced = _merged(list(shape), [d in instruction.params["dim"] for d in range(len(shape))])
    if reduced != [True, False] or sizes[1] > LEADING_SUM_KEPT or sizes[0] * sizes[1] < LEADING_SUM_ELEMENTS:
        return None
    rows, kept = sizes
    running = graph.node("CumSum", [graph.reshape(x, (rows, kept)), graph.constant(np.array(0, np.int64))],
                         shape=(rows, kept))  # fmt: skip
    last = graph.node("Gather", [running, graph.constant(np.array(rows - 1, np.int64))], shape=(kept,), axis=0)
    return graph.reshape(graph.node("Add", [last, graph.scalar(0.0, out.dtype)], shape=(kept,)), out.shape)


def _merged(sizes: list[int], reduced: list[bool]) -> tuple[list[int], list[bool]]:
    """The axes without those of size 1, neighbours that are both reduced or both kept merged into one."""
    merged_sizes: list[int] = []
    merged_reduced: list[bool] = []
    for size, is_reduced in zip(sizes, reduced):
        if size == 1:
            continue
        if merged_reduced and merged_reduced[-1] == is_reduced:
            merged_sizes[-1] *= size
        else:
            merged_sizes.append(size)
            merged_reduced.append(is_reduced)
    return merged_sizes, merged_reduced


def _float_sum(graph: OnnxGraph, x: str, dtype: DType, sizes: list[int], reduced: list[bool]) -> str:
    compute = slope.float64 if dtype == slope.float64 else slope.float32
    x = graph.reshape(graph.cast(x, compute), tuple(sizes))
    partial = False  # whether x holds float32 blocks' partial sums, in float64: the rest is added in one node
    while True:
        remaining = [i for i, r in enumerate(reduced) if r]
        last = partial or math.prod(sizes[i] for i in remaining) <= SUM_BLOCK
        x, axes = (x, remaining) if last else _next_block(graph, x, compute, sizes, reduced)
        left = [i for i in range(len(sizes)) if i not in axes]
        sizes, reduced = [sizes[i] for i in left], [reduced[i] for i in left]
        # keepdims=0: onnxruntime's reductions are several times slower on inputs with axes of size 1
        x = graph.node("ReduceSum", [x, graph.int64s(sorted(axes))], shape=tuple(sizes), keepdims=0)
        graph.dtypes[x] = compute
        if last:
            return graph.cast(x, dtype)
        sizes, reduced = _merged(sizes, reduced)
        x = graph.reshape(x, tuple(sizes))
        if compute == slope.float32:
            x, compute, partial = graph.cast(x, slope.float64), slope.float64, True


def _next_block(graph: OnnxGraph, x: str, dtype: DType, sizes: list[int], reduced: list[bool]) -> tuple[str, list]:
    """(x, axes): the innermost reduced axes of at most SUM_BLOCK elements together, else a block split off the
    innermost reduced axis (updating sizes and reduced in place; x reshaped, and padded with zeros to whole blocks
    when its length has no large divisor)."""
    axes: list[int] = []
    for i in reversed(range(len(sizes))):
        if reduced[i] and math.prod(sizes[a] for a in axes) * sizes[i] > SUM_BLOCK:
            break
        axes += [i] if reduced[i] else []
    if axes:
        return x, axes
    i = max(a for a, r in enumerate(reduced) if r)
    size = sizes[i]
    factor = max(f for f in range(1, SUM_BLOCK + 1) if size % f == 0)
    if factor < SUM_BLOCK // 8:
        padding = -size % SUM_BLOCK
        pads = [0] * (2 * len(sizes))
        pads[len(sizes) + i] = padding
        sizes[i] = size = size + padding
        x = graph.node("Pad", [x, graph.int64s(pads), graph.scalar(0, dtype)], shape=tuple(sizes), mode="constant")
        factor = SUM_BLOCK
    sizes[i : i + 1], reduced[i : i + 1] = [size // factor, factor], [True, True]
    return graph.reshape(x, tuple(sizes)), [i + 1]


def _int_sum(graph: OnnxGraph, x: str, dtype: DType, sizes: list[int], reduced: list[bool]) -> str:
    compute = compute_dtype("MatMul", dtype)  # int8/uint8 in int32: the same sums modulo 256
    x = graph.cast(x, compute)  # (each MatMul reshapes x)
    for i in reversed([i for i, r in enumerate(reduced) if r]):  # innermost first: the large MatMul reads rows
        outer, size, inner = math.prod(sizes[:i]), sizes[i], math.prod(sizes[i + 1 :])
        ones = graph.expand(graph.scalar(1, compute), (size, 1) if inner == 1 else (1, size))
        if inner == 1:
            x = graph.node("MatMul", [graph.reshape(x, (outer, size)), ones], shape=(outer, 1))
        else:
            x = graph.node("MatMul", [ones, graph.reshape(x, (outer, size, inner))], shape=(outer, 1, inner))
        sizes[i] = 1
    graph.dtypes[x] = compute
    return graph.cast(x, dtype)


# ----------------------------------------------------------------------------------------------- shape


def _reshape(graph: OnnxGraph, inputs: list[str], instruction: Instruction) -> str:
    return graph.reshape(inputs[0], instruction.params["shape"])


def _expand_to(graph: OnnxGraph, name: str, dtype: DType, shape: tuple) -> str:
    compute = compute_dtype("Expand", dtype)
    if compute != dtype:
        return graph.cast(graph.expand(graph.cast(name, compute), shape), dtype)
    return graph.expand(name, shape)


def _expand(graph: OnnxGraph, inputs: list[str], instruction: Instruction) -> str:
    out = _out(instruction)
    return _expand_to(graph, inputs[0], out.dtype, out.shape)


def _permute(graph: OnnxGraph, inputs: list[str], instruction: Instruction) -> str:
    if not instruction.params["perm"]:  # a 0-d tensor (onnx cannot even spell an empty `perm`)
        return inputs[0]
    return graph.node("Transpose", inputs, shape=_out(instruction).shape, perm=list(instruction.params["perm"]))


def _slice(graph: OnnxGraph, inputs: list[str], instruction: Instruction) -> str:
    shape = _in(instruction).shape
    params = instruction.params
    axes = [
        d
        for d, (a, b, s, n) in enumerate(zip(params["start"], params["stop"], params["step"], shape))
        if (a, b, s) != (0, n, 1)
    ]
    if not axes:
        return inputs[0]
    starts = graph.int64s(params["start"][d] for d in axes)
    stops = graph.int64s(params["stop"][d] for d in axes)
    node_inputs = [inputs[0], starts, stops, graph.int64s(axes)]
    if any(params["step"][d] != 1 for d in axes):
        node_inputs.append(graph.int64s(params["step"][d] for d in axes))
    return graph.node("Slice", node_inputs, shape=_out(instruction).shape)


def _pad(graph: OnnxGraph, inputs: list[str], instruction: Instruction) -> str:
    params = instruction.params
    if not any(params["lo"]) and not any(params["hi"]):  # (Pad fails on a 0-d tensor)
        return inputs[0]
    result = _padded(graph, inputs, instruction)
    graph.padded[result] = (inputs[0], params["lo"], params["hi"], params["value"])
    return result


def _padded(graph: OnnxGraph, inputs: list[str], instruction: Instruction) -> str:
    out = _out(instruction)
    params = instruction.params
    shape = list(_in(instruction).shape)
    axes = [d for d, (lo, hi) in enumerate(zip(params["lo"], params["hi"])) if lo or hi]
    if any(math.prod(shape[d + 1 :]) < 32 for d in axes) and math.prod(out.shape) >= 4096:
        # onnxruntime's Pad copies element by element when the padded axis is (nearly) innermost; Concat copies
        # whole blocks (the strided-slice gradient pads a size-1 innermost axis: 10-20x faster this way)
        x = inputs[0]
        value = graph.scalar(params["value"], out.dtype)
        for d in axes:
            pieces = [x]
            for amount, position in ((params["lo"][d], 0), (params["hi"][d], 1)):
                if amount:
                    block = _expand_to(graph, value, out.dtype, tuple(shape[:d] + [amount] + shape[d + 1 :]))
                    pieces.insert(0 if position == 0 else len(pieces), block)
            shape[d] += params["lo"][d] + params["hi"][d]
            x = graph.node("Concat", pieces, shape=tuple(shape), axis=d)
        return x
    compute = compute_dtype("Pad", out.dtype)
    x = inputs[0] if compute == out.dtype else graph.cast(inputs[0], compute)
    pads = graph.int64s(list(params["lo"]) + list(params["hi"]))
    value = graph.scalar(params["value"], compute)
    result = graph.node("Pad", [x, pads, value], shape=out.shape, mode="constant")
    return result if compute == out.dtype else graph.cast(result, out.dtype)


def _flip(graph: OnnxGraph, inputs: list[str], instruction: Instruction) -> str:
    dims = [d for d in instruction.params["dim"] if _in(instruction).shape[d] > 1]
    if not dims:
        return inputs[0]
    count = len(dims)
    starts, stops = graph.int64s([-1] * count), graph.int64s([np.iinfo(np.int64).min] * count)
    node_inputs = [inputs[0], starts, stops, graph.int64s(dims), graph.int64s([-1] * count)]
    return graph.node("Slice", node_inputs, shape=_out(instruction).shape)


def _cat(graph: OnnxGraph, inputs: list[str], instruction: Instruction) -> str:
    return graph.node("Concat", inputs, shape=_out(instruction).shape, axis=instruction.params["dim"])


# ----------------------------------------------------------------------------------------------- init


def _full(graph: OnnxGraph, inputs: list[str], instruction: Instruction) -> str:
    out = _out(instruction)
    return _expand_to(graph, graph.scalar(instruction.params["value"], out.dtype), out.dtype, out.shape)


def _arange(graph: OnnxGraph, inputs: list[str], instruction: Instruction) -> str:
    out = _out(instruction)
    params = instruction.params
    count = out.shape[0]
    start, step = params["start"], params["step"]
    # start + i * step from i = Range(0, count, 1) (onnxruntime counts Range(start, limit, step)'s elements in float64:
    # from 2**53 to 2**53 + 3 it made 4), in int64 for integers (the values fit), else in float64, as NumPy does
    index = graph.node("Range", [graph.scalar(0, slope.int64), graph.scalar(count, slope.int64),
                                 graph.scalar(1, slope.int64)], shape=out.shape)  # fmt: skip
    if not out.dtype.is_float and all(float(v).is_integer() for v in (start, step)):
        values = graph.node("Mul", [index, graph.scalar(int(step), slope.int64)], shape=out.shape)
        values = graph.node("Add", [values, graph.scalar(int(start), slope.int64)], shape=out.shape)
        return graph.cast(values, out.dtype)
    values = graph.node("Mul", [graph.cast(index, slope.float64), graph.scalar(float(step), slope.float64)],
                        shape=out.shape)  # fmt: skip
    values = graph.node("Add", [values, graph.scalar(float(start), slope.float64)], shape=out.shape)
    return graph.cast(values, out.dtype) if out.dtype != slope.float64 else values


# ----------------------------------------------------------------------------------------------- general


def _matmul(graph: OnnxGraph, inputs: list[str], instruction: Instruction) -> str:
    out = _out(instruction)
    return emit(graph, "MatMul", inputs, out.dtype, out.shape)


def _conv(graph: OnnxGraph, inputs: list[str], instruction: Instruction) -> str:
    out = _out(instruction)
    params = instruction.params
    if _in(instruction, 0).size == 0 or _in(instruction, 1).size == 0:
        # sums over no input channels: zeros (onnxruntime's Conv leaves its output unwritten there, or never returns)
        return _expand_to(graph, graph.scalar(0, out.dtype), out.dtype, out.shape)
    kernel, positions = math.prod(_in(instruction, 1).shape[2:]), math.prod(out.shape[2:])
    if out.dtype in (slope.float32, slope.float64) and params["groups"] == 1 and kernel > 4 * positions:
        # a kernel larger than its output (a weight gradient): onnxruntime's Conv is slow there, one GEMM is not
        return (
            _weight_gradient_per_image(graph, inputs, instruction)
            or _weight_gradient_images_last(graph, inputs, instruction)
            or _conv_by_positions(graph, inputs, instruction)
        )
    if out.dtype == slope.float64:  # no float64 kernel: an exact im2col with a float64 MatMul
        return _conv_im2col(graph, inputs, instruction)
    pads = [lo for lo, _ in params["padding"]] + [hi for _, hi in params["padding"]]
    return emit(graph, "Conv", inputs, out.dtype, out.shape, strides=list(params["stride"]), pads=pads,
                dilations=list(params["dilation"]), group=params["groups"])  # fmt: skip


def _tap(graph: OnnxGraph, name: str) -> tuple[tuple, int, tuple] | None:
    """((products, taps, tap shape), k, offset) when `name` is pad(reshape(products[:, k::taps]), offset): tap k of a
    stride-1 2-d convolution's input gradient (slope-core's Conv.transpose), images innermost: the float32 products
    (groups, C/groups * taps, positions * N) placed into (C, H, W, N); else None."""
    source, lo, _, value = graph.padded.get(name, (name, (0, 0, 0, 0), (), 0))  # (a tap at offset 0: unpadded)
    reshape, lo = graph.producers.get(source) if len(lo) == 4 else None, list(lo)
    if reshape is not None and reshape.op_type == "Slice" and len(reshape.input) == 4:  # cropped (a negative offset)
        starts, axes = graph.value(reshape.input[1]), graph.value(reshape.input[3])
        crops = [] if axes is None or starts is None else list(zip(axes.tolist(), starts.tolist()))
        for axis, begin in crops:
            lo[axis % 4] -= begin
        reshape = graph.producers.get(reshape.input[0]) if crops and {a for a, _ in crops} <= {1, 2} else None
    sliced = graph.producers.get(reshape.input[0]) if reshape is not None and reshape.op_type == "Reshape" else None
    if value != 0 or sliced is None or sliced.op_type != "Slice" or len(sliced.input) != 5:
        return None
    starts, ends, axes, steps = (graph.value(n) for n in sliced.input[1:])
    products = sliced.input[0]
    shape = graph.shapes.get(products, ())
    if any(v is None or v.size != 1 for v in (starts, ends, axes, steps)) or axes[0] != 1 or len(shape) != 3:
        return None
    taps, tap_shape = int(steps[0]), graph.shapes.get(reshape.output[0], ())
    if ends[0] < shape[1] or graph.dtypes.get(products) != slope.float32 or lo[0] or lo[3] or len(tap_shape) != 4:
        return None
    if tap_shape[0] != shape[0] * (shape[1] // taps) or math.prod(tap_shape[1:]) != shape[2]:
        return None
    return (products, taps, tap_shape), int(starts[0]), tuple(lo[1:3])


def _col2im_sum(graph: OnnxGraph, inputs: list[str], instruction: Instruction) -> str | None:
    """A stride-1 2-d convolution's input gradient as one Col2Im, when this Add completes the sum of its taps'
    placements (`_tap`); else None, a partial sum noted (the Adds before the last are left unused). onnxruntime's
    Col2Im adds the products in place, with no padded copies: it reads the images as one wide image whose columns
    interleave them (a dilation of N along the width)."""
    parts = []
    for name in inputs:
        tap = None if name in graph.taps else _tap(graph, name)
        parts.append(graph.taps.get(name) or (tap and (tap[0], {tap[1]: tap[2]})))
    if None in parts or parts[0][0] != parts[1][0] or set(parts[0][1]) & set(parts[1][1]):
        return None
    (products, taps, (_, h, w, batch)), offsets, out = parts[0][0], {**parts[0][1], **parts[1][1]}, _out(instruction)
    if not set(offsets) <= set(range(taps)):
        return None
    if len(offsets) < taps:
        partial = graph.node("Add", inputs, shape=out.shape)
        graph.taps[partial] = (parts[0][0], offsets)
        return partial
    start = offsets[0]
    wide = next((k for k in range(1, taps) if offsets[k][0] != start[0]), taps)  # the kernel's width
    kernel = (taps // wide, wide)
    dilation = (offsets[wide][0] - start[0] if wide < taps else 1, offsets[1][1] - start[1] if wide > 1 else 1)
    if kernel[0] * wide != taps or min(dilation) < 1 or max(start) > 0 or out.dtype != slope.float32:
        return None
    if any(offsets[k] != tuple(s + d * i for s, d, i in zip(start, dilation, divmod(k, wide))) for k in offsets):
        return None
    channels, height, width, _ = out.shape
    end = [n + d * (k - 1) - m + s for n, d, k, m, s in zip((h, w), dilation, kernel, (height, width), start)]
    if min(end) < 0:
        return None
    groups = graph.shapes[products][0]
    image = graph.node("Col2Im", [products, graph.int64s((height, width * batch)), graph.int64s(kernel)],
                       shape=(groups, channels // groups, height, width * batch), strides=[1, 1],
                       dilations=[dilation[0], dilation[1] * batch],
                       pads=[-start[0], -start[1] * batch, end[0], end[1] * batch])  # fmt: skip
    return graph.reshape(image, out.shape)


def _add(graph: OnnxGraph, inputs: list[str], instruction: Instruction) -> str:
    return _col2im_sum(graph, inputs, instruction) or emit(graph, "Add", inputs, _in(instruction).dtype,
                                                           _out(instruction).shape)  # fmt: skip


def _padded_input(graph: OnnxGraph, x: str, instruction: Instruction) -> tuple[str, tuple[int, ...]]:
    x_aval, params = _in(instruction, 0), instruction.params
    spatial = tuple(s + lo + hi for s, (lo, hi) in zip(x_aval.shape[2:], params["padding"]))
    if any(lo or hi for lo, hi in params["padding"]):
        pads = [0, 0] + [lo for lo, _ in params["padding"]] + [0, 0] + [hi for _, hi in params["padding"]]
        x = graph.node("Pad", [x, graph.int64s(pads), graph.scalar(0.0, x_aval.dtype)],
                       shape=x_aval.shape[:2] + spatial, mode="constant")  # fmt: skip
    return x, x_aval.shape[:2] + spatial


def _swapped_source(graph: OnnxGraph, name: str, perm: list[int]) -> str | None:
    """x when `name` is reshape(transpose(reshape(x, (A, 1, B, ...)), perm), (B', A', ...)), else None."""
    outer = graph.producers.get(name)
    transpose = graph.producers.get(outer.input[0]) if outer is not None and outer.op_type == "Reshape" else None
    if transpose is None or transpose.op_type != "Transpose":
        return None
    inner = graph.producers.get(transpose.input[0])
    if inner is None or inner.op_type != "Reshape" or list(next(a.ints for a in transpose.attribute)) != perm:
        return None
    source = graph.shapes.get(inner.input[0])
    if source is None or graph.shapes.get(inner.output[0]) != (source[0], 1, *source[1:]):
        return None
    return inner.input[0]


def _weight_gradient_sources(graph: OnnxGraph, inputs: list[str], out: Aval) -> tuple[str, str] | None:
    """For a weight gradient conv(swap(x), swap(ct)): x (N, C, *spatial) and ct (N, O, *taps) before reverse mode's
    swaps of their first two axes, when the graph has them; else None."""
    n = out.ndim - 2
    x = _swapped_source(graph, inputs[0], [2, 1, 0, *range(3, n + 3)])
    cotangent = _swapped_source(graph, inputs[1], [1, 2, 0, *range(3, n + 3)])
    if x is None or cotangent is None:
        return None
    if graph.shapes[x][1] != out.shape[0] or graph.shapes[cotangent][1] != out.shape[1]:
        return None
    return x, cotangent


def _weight_gradient_per_image(graph: OnnxGraph, inputs: list[str], instruction: Instruction) -> str | None:
    """A weight gradient with few (input channels x kernel positions), image by image; else None.

    Reverse mode computes a weight gradient as conv(swap(x), swap(ct)): the images' input channels as a batch and the
    output cotangent as the kernel, which means transposing both. With few input channels (a first layer), summing
    per-image products ct_n @ windows(x_n)^T reads x and ct as they are: the transposes of the large cotangent go.
    """
    out, params = _out(instruction), instruction.params
    n = out.ndim - 2
    if any(lo or hi for lo, hi in params["padding"]) or out.shape[0] * math.prod(out.shape[2:]) > 32:
        return None
    sources = _weight_gradient_sources(graph, inputs, out)
    if sources is None:
        return None
    x, cotangent = sources
    (batch, channels, *_), (_, out_channels, *taps_shape) = graph.shapes[x], graph.shapes[cotangent]
    stride, dilation = params["stride"], params["dilation"]
    taps, positions = math.prod(taps_shape), math.prod(out.shape[2:])
    axes, steps = graph.int64s(range(2, 2 + n)), graph.int64s(dilation)
    windows = []
    for position in np.ndindex(*out.shape[2:]):
        begin = [p * s for p, s in zip(position, stride)]
        end = [b + (k - 1) * d + 1 for b, k, d in zip(begin, taps_shape, dilation)]
        window = graph.node("Slice", [x, graph.int64s(begin), graph.int64s(end), axes, steps],
                            shape=(batch, channels, *taps_shape))  # fmt: skip
        windows.append(graph.reshape(window, (batch, channels, 1, taps)))
    columns = windows[0] if positions == 1 else graph.node("Concat", windows, shape=(batch, channels, positions, taps),
                                                           axis=2)  # fmt: skip
    columns = graph.reshape(columns, (batch, channels * positions, taps))
    columns = graph.node("Transpose", [columns], shape=(batch, taps, channels * positions), perm=[0, 2, 1])
    flat_cotangent = graph.reshape(cotangent, (batch, out_channels, taps))
    products = graph.node("MatMul", [flat_cotangent, columns], shape=(batch, out_channels, channels * positions))
    total = graph.node("ReduceSum", [products, graph.int64s([0])], shape=(out_channels, channels * positions),
                       keepdims=0)  # fmt: skip
    total = graph.reshape(total, (out_channels, channels, positions))
    total = graph.node("Transpose", [total], shape=(channels, out_channels, positions), perm=[1, 0, 2])
    return graph.reshape(total, out.shape)


def _weight_gradient_images_last(graph: OnnxGraph, inputs: list[str], instruction: Instruction) -> str | None:
    """A weight gradient as one GEMM over windows of x and ct transposed with the images innermost; else None.

    Reverse mode transposes x (N, C, H, W) to (C, N, H, W) and the cotangent likewise. Transposing both to
    (C, H, W, N) instead makes every window of x a copy of rows of taps x N contiguous floats, where (C, N, H, W)
    copies rows of a kernel width: the im2col that feeds the GEMM runs several times faster.
    """
    out, params = _out(instruction), instruction.params
    n = out.ndim - 2
    if any(lo or hi for lo, hi in params["padding"]):
        return None
    sources = _weight_gradient_sources(graph, inputs, out)
    if sources is None:
        return None
    x, cotangent = sources
    (batch, channels, *spatial), (_, out_channels, *taps_shape) = graph.shapes[x], graph.shapes[cotangent]
    images_last = [1, *range(2, n + 2), 0]
    x = graph.node("Transpose", [x], shape=(channels, *spatial, batch), perm=images_last)
    cotangent = graph.node("Transpose", [cotangent], shape=(out_channels, *taps_shape, batch), perm=images_last)
    # every window of every position in one Gather of pixels (rows of `batch` floats): pixel (p * stride + t * dilation)
    # for kernel position p and tap t, as flat indices into the spatial grid
    stride, dilation = params["stride"], params["dilation"]
    positions, taps, row = math.prod(out.shape[2:]), math.prod(taps_shape), math.prod(taps_shape) * batch
    coordinates = [
        np.arange(k).reshape(-1, 1) * s + np.arange(t).reshape(1, -1) * d  # (position, tap) along one dimension
        for k, s, t, d in zip(out.shape[2:], stride, taps_shape, dilation)
    ]
    flat = np.zeros((1, 1), dtype=np.int64)
    for size, along in zip(spatial, coordinates):  # row-major: combine dimension by dimension
        flat = (flat[:, None, :, None] * size + along[None, :, None, :]).reshape(flat.shape[0] * along.shape[0], -1)
    pixels = graph.reshape(x, (channels, math.prod(spatial), batch))
    columns = graph.node("Gather", [pixels, graph.constant(flat)], shape=(channels, positions, taps, batch), axis=1)
    columns = graph.reshape(columns, (channels * positions, row))
    weights = graph.reshape(cotangent, (out_channels, row))
    product = graph.node("Gemm", [columns, weights], shape=(channels * positions, out_channels), transB=1)
    product = graph.reshape(product, (channels, positions, out_channels))
    result = graph.node("Transpose", [product], shape=(channels, out_channels, positions), perm=[0, 2, 1])
    return graph.reshape(result, out.shape)


def _conv_by_positions(graph: OnnxGraph, inputs: list[str], instruction: Instruction) -> str:
    """Conv (groups=1) as one GEMM over the few output positions: each position's input window is one row."""
    w_aval, out = _in(instruction, 1), _out(instruction)
    params = instruction.params
    stride, dilation = params["stride"], params["dilation"]
    x, (batch, channels, *_) = _padded_input(graph, inputs[0], instruction)
    kernel, out_spatial = w_aval.shape[2:], out.shape[2:]
    n, taps, positions = len(kernel), math.prod(kernel), math.prod(out_spatial)
    axes, steps = graph.int64s(range(2, 2 + n)), graph.int64s(dilation)
    rows = []
    for position in np.ndindex(*out_spatial):
        begin = [p * s for p, s in zip(position, stride)]
        end = [b + (k - 1) * d + 1 for b, k, d in zip(begin, kernel, dilation)]
        window = graph.node("Slice", [x, graph.int64s(begin), graph.int64s(end), axes, steps],
                            shape=(batch, channels, *kernel))  # fmt: skip
        rows.append(graph.reshape(window, (batch, 1, channels * taps)))
    columns = (
        rows[0] if positions == 1 else graph.node("Concat", rows, shape=(batch, positions, channels * taps), axis=1)
    )
    columns = graph.reshape(columns, (batch * positions, channels * taps))
    weights = graph.reshape(inputs[1], (out.shape[1], channels * taps))
    product = graph.node("Gemm", [columns, weights], shape=(batch * positions, out.shape[1]), transB=1)
    product = graph.reshape(product, (batch, positions, out.shape[1]))
    result = graph.node("Transpose", [product], shape=(batch, out.shape[1], positions), perm=[0, 2, 1])
    return graph.reshape(result, out.shape)


def _conv_im2col(graph: OnnxGraph, inputs: list[str], instruction: Instruction) -> str:
    x_aval, w_aval, out = _in(instruction, 0), _in(instruction, 1), _out(instruction)
    params = instruction.params
    stride, dilation, groups = params["stride"], params["dilation"], params["groups"]
    n = x_aval.ndim - 2
    batch, channels = x_aval.shape[:2]
    out_channels, kernel = w_aval.shape[0], w_aval.shape[2:]
    out_spatial = out.shape[2:]
    x = inputs[0]
    if any(lo or hi for lo, hi in params["padding"]):
        pads = [0, 0] + [lo for lo, _ in params["padding"]] + [0, 0] + [hi for _, hi in params["padding"]]
        padded_shape = tuple(s + lo + hi for s, (lo, hi) in zip(x_aval.shape[2:], params["padding"]))
        x = graph.node("Pad", [x, graph.int64s(pads), graph.scalar(0.0, out.dtype)],
                       shape=(batch, channels, *padded_shape), mode="constant")  # fmt: skip
    axes = graph.int64s(range(2, 2 + n))
    steps = graph.int64s(stride)
    windows = []
    for offset in np.ndindex(*kernel):
        begin = [o * d for o, d in zip(offset, dilation)]
        end = [b + (m - 1) * s + 1 for b, m, s in zip(begin, out_spatial, stride)]
        window = graph.node("Slice", [x, graph.int64s(begin), graph.int64s(end), axes, steps],
                            shape=(batch, channels, *out_spatial))  # fmt: skip
        windows.append(graph.reshape(window, (batch, channels, 1, math.prod(out_spatial))))
    taps = math.prod(kernel)
    columns = windows[0] if taps == 1 else graph.node("Concat", windows, axis=2, shape=None)
    per_group = channels // groups
    columns = graph.reshape(columns, (batch, groups, per_group * taps, math.prod(out_spatial)))
    weights = graph.reshape(inputs[1], (groups, out_channels // groups, per_group * taps))
    result = graph.node("MatMul", [weights, columns], shape=(batch, groups, out_channels // groups,
                                                              math.prod(out_spatial)))  # fmt: skip
    return graph.reshape(result, out.shape)


def _int64_index(graph: OnnxGraph, name: str, aval: Any) -> str:
    return name if aval.dtype == slope.int64 else graph.cast(name, slope.int64)


def _gather_nd(graph: OnnxGraph, inputs: list[str], instruction: Instruction) -> str:
    out = _out(instruction)
    if _in(instruction, 1).shape[-1] == 0:  # empty index vectors pick all of x (GatherND refuses a 0-d x)
        return _expand_to(graph, inputs[0], out.dtype, out.shape)
    index = _int64_index(graph, inputs[1], _in(instruction, 1))
    return graph.node("GatherND", [inputs[0], index], shape=out.shape)


def _scatter_nd(graph: OnnxGraph, inputs: list[str], instruction: Instruction) -> str:
    out = _out(instruction)
    x, index, updates = inputs
    index = _int64_index(graph, index, _in(instruction, 1))
    shape = out.shape or (1,)  # ScatterND refuses a 0-d x: scatter into it as shape (1,)
    if not out.shape:
        x, updates = graph.reshape(x, shape), graph.reshape(updates, _in(instruction, 2).shape + shape)
    if out.dtype == slope.bool_:  # adding bools is `or`: the max of 0/1
        x, updates = graph.cast(x, slope.uint8), graph.cast(updates, slope.uint8)
        result = graph.node("ScatterND", [x, index, updates], shape=shape, reduction="max")
        return graph.reshape(graph.cast(result, slope.bool_), out.shape)
    compute = compute_dtype("ScatterND", out.dtype)
    if compute != out.dtype:
        x, updates = graph.cast(x, compute), graph.cast(updates, compute)
    result = graph.node("ScatterND", [x, index, updates], shape=shape, reduction="add")
    return graph.reshape(result if compute == out.dtype else graph.cast(result, out.dtype), out.shape)


translations: dict[str, Callable] = {
    "exp": _unary("Exp"),
    "log": _unary("Log"),
    "sin": _sine("Sin"),
    "cos": _sine("Cos"),
    "sqrt": _unary("Sqrt"),
    "tanh": _tanh,
    "floor": _unary("Floor"),
    "ceil": _unary("Ceil"),
    "round": _unary("Round"),  # half to even, as PyTorch
    "invert": _invert,
    "stop_gradient": _identity,
    "cast": _cast,
    "add": _add,
    "sub": _binary("Sub"),
    "mul": _binary("Mul"),
    "div": _div,
    "pow": _pow,
    "fmod": _fmod,
    "maximum": _maximum,
    "equal": _compare("Equal"),
    "less": _compare("Less"),
    "greater": _compare("Greater"),
    "less_equal": _compare("LessOrEqual"),
    "greater_equal": _compare("GreaterOrEqual"),
    "bitwise_and": _bitwise("BitwiseAnd", "And"),
    "bitwise_or": _bitwise("BitwiseOr", "Or"),
    "bitwise_xor": _bitwise("BitwiseXor", "Xor"),
    "where": _where,
    "sum": _sum,
    "max": _reduce_max,
    "reshape": _reshape,
    "expand": _expand,
    "permute": _permute,
    "slice": _slice,
    "pad": _pad,
    "flip": _flip,
    "cat": _cat,
    "full": _full,
    "arange": _arange,
    "matmul": _matmul,
    "conv": _conv,
    "gather_nd": _gather_nd,
    "scatter_nd": _scatter_nd,
}

__all__ = ["NATIVE", "compute_dtype", "element_type", "emit", "translations"]
