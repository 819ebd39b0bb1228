"""Translations of slope operators to StableHLO MLIR text: `f(fn, inputs, instruction) -> SSA name (or names)`.

`fn` is the `Function` under construction, `inputs` the SSA names (`%x0`, `%v3`, ...) of the instruction's inputs,
`instruction.params` / `.inputs[i].aval` / `.outputs[i].aval` its parameters and abstract values. A translation adds
operations with `fn.emit(text, aval)` (or the helpers below, which spell the types) and returns the name of its
result. There are no Python builders for StableHLO: this module writes MLIR text, which IREE parses. Dimension
attributes are `array<i64: ...>`. A translation with no faithful StableHLO form for some dtypes or parameters raises
`NoTranslationError`, and the instruction is lowered through its procedure in place.

Semantics are those of the other backends (PyTorch's): NaN propagates through maximum and max, integer division
truncates and gives 0 for a zero divisor, fmod takes the dividend's sign, sums have a bounded error, an index out of
range is an IndexError when the program runs (`fn.check`).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

import slope
from slope import Aval, DType, Instruction, Program, Var

ELEMENT_TYPES = {
    "bool": "i1", "int8": "i8", "uint8": "ui8", "int16": "i16", "int32": "i32", "int64": "i64",
    "float16": "f16", "bfloat16": "bf16", "float32": "f32", "float64": "f64",
}  # fmt: skip

_HALF = ("float16", "bfloat16")


class NoTranslationError(Exception):
    """Raised by a translation with no faithful StableHLO form for its inputs: the instruction is lowered instead."""


def tensor_type(aval: Aval) -> str:
    """The MLIR tensor type of an abstract value: `tensor<2x3xf32>`, `tensor<f32>` for 0-d."""
    return f"tensor<{''.join(f'{d}x' for d in aval.shape)}{ELEMENT_TYPES[aval.dtype.name]}>"


def literal(value: Any, dtype: DType) -> str:
    """A scalar as an MLIR literal of `dtype`: floats by their bits (exact, NaN and inf too), ints in decimal."""
    if dtype == slope.bool_:
        return "true" if value else "false"
    if dtype.is_float:
        bits = np.array(value, dtype=dtype.numpy).view(f"u{dtype.bits // 8}").item()
        return f"0x{bits:0{dtype.bits // 4}X}"
    return str(int(np.array(value).astype(dtype.numpy)))


def dense(array: np.ndarray, dtype: DType) -> str:
    """A whole array as an MLIR `dense<...>` attribute (its bytes in hex; bools as a list)."""
    if array.size and np.all(array == array.reshape(-1)[0]) and not (dtype.is_float and np.isnan(array).any()):
        return f"dense<{literal(array.reshape(-1)[0], dtype)}>"
    if dtype == slope.bool_:
        nested = np.vectorize(lambda b: "true" if b else "false", otypes=[object])(array).tolist() if array.size else []
        return f"dense<{nested}>".replace("'", "")
    raw = np.ascontiguousarray(array.astype(dtype.numpy)).tobytes()
    return f'dense<"0x{raw.hex().upper()}">'


def compare_type(dtype: DType) -> str:
    """The comparison type StableHLO needs for a dtype."""
    return "FLOAT" if dtype.is_float else "SIGNED" if dtype.kind == "int" else "UNSIGNED"


def array_attr(values: Any) -> str:
    """A dimension attribute: `array<i64: 0, 1>` (`array<i64>` when empty)."""
    values = list(values)
    return f"array<i64: {', '.join(str(int(v)) for v in values)}>" if values else "array<i64>"


class Function:
    """A StableHLO function under construction: lines of MLIR text and the abstract value of every SSA name."""

    def __init__(self, translations: dict[str, Callable], backend_name: str = "iree", dynamic: bool = False):
        self.translations = translations
        self.dynamic = dynamic  # every dimension spelled `?`: one module serves every shape of a rank (elementwise)
        self.backend_name = backend_name
        self.lines: list[str] = []
        self.avals: dict[str, Aval] = {}
        self.checks: list[tuple[str, str]] = []  # (i1 scalar that is true when something is wrong, the error message)
        self._count = 0

    # ------------------------------------------------------------------------------------------- emitting
    def emit(self, text: str, aval: Aval | None) -> str:
        """Add `%vN = text` (its result of abstract value `aval`; None for a value that is no slope tensor, such as
        a shape); returns %vN."""
        name = f"%v{self._count}"
        self._count += 1
        self.lines.append(f"    {name} = {text}")
        if aval is not None:
            self.avals[name] = aval
        return name

    def tensor_type(self, aval: Aval) -> str:
        """The MLIR type of an abstract value in this function (`tensor<?x?xf32>` when dynamic)."""
        if self.dynamic:
            return f"tensor<{'?x' * aval.ndim}{ELEMENT_TYPES[aval.dtype.name]}>"
        return tensor_type(aval)

    def type(self, name: str) -> str:
        """The MLIR type of an SSA name."""
        return self.tensor_type(self.avals[name])

    def check(self, failed: str, message: str) -> None:
        """Raise IndexError(message) after a run in which the i1 scalar `failed` is true."""
        self.checks.append((failed, message))

    # ------------------------------------------------------------------------------------------- helpers
    def unary(self, op: str, x: str, aval: Aval | None = None) -> str:
        """`stablehlo.<op> x`, of x's type unless `aval` says otherwise."""
        aval = aval or self.avals[x]
        if aval == self.avals[x]:
            return self.emit(f"stablehlo.{op} {x} : {self.tensor_type(aval)}", aval)
        return self.emit(f"stablehlo.{op} {x} : ({self.type(x)}) -> {self.tensor_type(aval)}", aval)

    def binary(self, op: str, x: str, y: str) -> str:
        """`stablehlo.<op> x, y` of two operands of one type."""
        return self.emit(f"stablehlo.{op} {x}, {y} : {self.type(x)}", self.avals[x])

    def compare(self, direction: str, x: str, y: str) -> str:
        """`x <direction> y` (EQ, NE, LT, LE, GT, GE) element by element, as bools; NaN compares unequal."""
        aval = self.avals[x]
        out = Aval(aval.shape, slope.bool_)
        kind = compare_type(aval.dtype)
        text = f"stablehlo.compare {direction}, {x}, {y}, {kind} : ({self.type(x)}, {self.type(y)}) -> {self.tensor_type(out)}"
        return self.emit(text, out)

    def convert(self, x: str, dtype: DType) -> str:
        """x converted to `dtype` (x itself when it has that dtype)."""
        aval = self.avals[x]
        if aval.dtype == dtype:
            return x
        return self.unary("convert", x, Aval(aval.shape, dtype))

    def select(self, condition: str, x: str, y: str) -> str:
        """x where the condition holds, else y."""
        return self.emit(f"stablehlo.select {condition}, {x}, {y} : {self.type(condition)}, {self.type(x)}",
                         self.avals[x])  # fmt: skip

    def constant(self, value: Any, aval: Aval) -> str:
        """A tensor of `aval` filled with a scalar."""
        return self.emit(f"stablehlo.constant dense<{literal(value, aval.dtype)}> : {self.tensor_type(aval)}", aval)

    def array(self, array: np.ndarray, dtype: DType) -> str:
        """A constant tensor holding a NumPy array."""
        aval = Aval(tuple(array.shape), dtype)
        return self.emit(f"stablehlo.constant {dense(array, dtype)} : {self.tensor_type(aval)}", aval)

    def like(self, value: Any, x: str) -> str:
        """A constant of x's shape and dtype (of x's run-time shape when dynamic)."""
        aval = self.avals[x]
        if not self.dynamic or not aval.ndim:
            return self.constant(value, aval)
        scalar = self.constant(value, Aval((), aval.dtype))
        shape = self.emit(f"shape.shape_of {x} : {self.type(x)} -> tensor<{aval.ndim}xindex>", None)
        return self.emit(f"stablehlo.dynamic_broadcast_in_dim {scalar}, {shape}, dims = [] : ({self.type(scalar)}, "
                         f"tensor<{aval.ndim}xindex>) -> {self.type(x)}", aval)  # fmt: skip

    def reshape(self, x: str, shape: tuple) -> str:
        """x reshaped (x itself when it has that shape)."""
        aval = self.avals[x]
        if tuple(shape) == aval.shape:
            return x
        return self.unary("reshape", x, Aval(tuple(shape), aval.dtype))

    def broadcast(self, x: str, shape: tuple, dims: Any = None) -> str:
        """x broadcast to `shape`, its dimension i becoming `dims[i]` (by default its trailing dimensions)."""
        aval = self.avals[x]
        shape = tuple(shape)
        dims = tuple(range(len(shape) - aval.ndim, len(shape))) if dims is None else tuple(dims)
        if shape == aval.shape and dims == tuple(range(aval.ndim)):
            return x
        out = Aval(shape, aval.dtype)
        text = f"stablehlo.broadcast_in_dim {x}, dims = [{', '.join(map(str, dims))}] : ({self.type(x)}) -> "
        return self.emit(text + self.tensor_type(out), out)

    def transpose(self, x: str, perm: Any) -> str:
        """x with its dimensions permuted."""
        perm = tuple(perm)
        aval = self.avals[x]
        if perm == tuple(range(aval.ndim)):
            return x
        out = Aval(tuple(aval.shape[p] for p in perm), aval.dtype)
        return self.emit(f"stablehlo.transpose {x}, dims = [{', '.join(map(str, perm))}] : ({self.type(x)}) -> "
                         f"{self.tensor_type(out)}", out)  # fmt: skip

    def reduce(self, x: str, op: str, init: Any, dims: Any) -> str:
        """x reduced over `dims` by a StableHLO binary operation (add, maximum, or, ...) from `init`."""
        aval = self.avals[x]
        dims = tuple(sorted(dims))
        if not dims:
            return x
        out = Aval(tuple(s for i, s in enumerate(aval.shape) if i not in dims), aval.dtype)
        start = self.constant(init, Aval((), aval.dtype))
        text = (f"stablehlo.reduce({x} init: {start}) applies stablehlo.{op} across dimensions = "
                f"[{', '.join(map(str, dims))}] : ({self.type(x)}, {self.type(start)}) -> {self.tensor_type(out)}")  # fmt: skip
        return self.emit(text, out)

    def any(self, x: str) -> str:
        """A bool scalar: whether any element of the bool tensor x is true."""
        return self.reduce(x, "or", False, range(self.avals[x].ndim))

    # ------------------------------------------------------------------------------------------- translating
    def translate(self, instruction: Instruction, env: dict[Var, str]) -> None:
        """Translate one instruction, binding its outputs' SSA names in env."""
        inputs = [env[v] for v in instruction.inputs]
        if all(v.aval.size == 0 for v in instruction.outputs):  # nothing to compute (IREE dislikes some empty ops)
            outs: Any = [self.constant(0, v.aval) for v in instruction.outputs]
        else:
            translation = self.translations.get(instruction.op.name)
            try:
                if translation is None:
                    raise NoTranslationError
                outs = translation(self, inputs, instruction)
            except NoTranslationError:
                outs = self.inline_procedure(instruction, inputs)
        outs = [outs] if isinstance(outs, str) else list(outs)
        for var, name in zip(instruction.outputs, outs):
            if self.avals.get(name) != var.aval:
                from slope import plugins

                owner = plugins.owners.get(("operator", instruction.op.name), "?")
                raise slope.SlopeBackendError(
                    f"slope.{instruction.op.name}: the {self.backend_name} translation (operator from plugin "
                    f"{owner!r}) gave {self.avals.get(name)} where the operator's inference says {var.aval}"
                )
            env[var] = name

    def inline_procedure(self, instruction: Instruction, inputs: list[str]) -> list[str]:
        """Lower one instruction through its procedure (the shared pass) and translate the result in place."""
        from slope.backend import lower

        op = instruction.op
        if op.procedure is None:
            raise slope.SlopeBackendError(
                f"slope.{op.name}: the {self.backend_name} backend cannot run it for inputs "
                f"{[v.aval for v in instruction.inputs]} and it has no procedure"
            )
        in_vars = [Var(v.aval) for v in instruction.inputs]
        out_vars = [Var(v.aval) for v in instruction.outputs]
        single = Program(in_vars, [Instruction(op, in_vars, instruction.params, out_vars)], out_vars)
        lowered = lower(single, frozenset(self.translations) - {op.name})
        env: dict[Var, str] = dict(zip(lowered.inputs, inputs))
        for var, value in zip(lowered.constants, lowered.constant_values):
            env[var] = self.array(value.numpy(), var.aval.dtype)
        for inner in lowered.instructions:
            self.translate(inner, env)
        return [env[v] for v in lowered.outputs]


def build_module(program: Program, translations: dict[str, Callable], embed_constants: bool = False,
                 backend_name: str = "iree", dynamic: bool = False) -> tuple[str, list]:  # fmt: skip
    """The StableHLO module (`func.func @main`) of a lowered Program, and how many check outputs follow its outputs.

    `@main` takes the program's inputs, then its constants (unless `embed_constants` writes them into the text, as
    an export does); it returns the program's outputs, then one i1 scalar per run-time check (see Function.check).
    `dynamic` spells every dimension `?` (for programs of DYNAMIC_SAFE operators only).
    """
    fn = Function(translations, backend_name, dynamic)
    names = program.names()
    env: dict[Var, str] = {}
    arguments = []
    for var in program.inputs:
        env[var] = f"%{names[var]}"
        arguments.append(var)
    for var, value in zip(program.constants, program.constant_values):
        if embed_constants:
            env[var] = fn.array(value.numpy(), var.aval.dtype)
        else:
            env[var] = f"%{names[var]}"
            arguments.append(var)
    for var in arguments:
        fn.avals[env[var]] = var.aval
    for instruction in program.instructions:
        fn.translate(instruction, env)
    results = [env[v] for v in program.outputs] + [failed for failed, _ in fn.checks]
    signature = ", ".join(f"{env[v]}: {fn.tensor_type(v.aval)}" for v in arguments)
    result_types = ", ".join(fn.type(r) for r in results)
    lines = [f"func.func @main({signature}) -> ({result_types}) {{", *fn.lines]
    lines.append(f"    return {', '.join(results)} : {result_types}" if results else "    return")
    lines.append("}")
    return "\n".join(lines) + "\n", fn.checks


# ----------------------------------------------------------------------------------------------- elementwise


def _in(instruction: Instruction, i: int = 0) -> Aval:
    return instruction.inputs[i].aval


def _out(instruction: Instruction) -> Aval:
    return instruction.outputs[0].aval


def in_float32(fn: Function, inputs: list[str], dtype: DType, compute: Callable[..., str]) -> str:
    """`compute(*inputs)`, with float16/bfloat16 inputs computed in float32 and rounded once at the end."""
    if dtype.name not in _HALF:
        return compute(*inputs)
    return fn.convert(compute(*[fn.convert(x, slope.float32) for x in inputs]), dtype)


def _unary(op: str) -> Callable:
    def translate(fn: Function, inputs: list[str], instruction: Instruction) -> str:
        return in_float32(fn, inputs, _out(instruction).dtype, lambda x: fn.unary(op, x))

    return translate


def _identity(fn: Function, inputs: list[str], instruction: Instruction) -> str:
    return inputs[0]


def _cast(fn: Function, inputs: list[str], instruction: Instruction) -> str:
    return fn.convert(inputs[0], instruction.params["dtype"])


def _invert(fn: Function, inputs: list[str], instruction: Instruction) -> str:
    return fn.unary("not", inputs[0])


def _binary(op: str, on_bools: str | None = None) -> Callable:
    """A binary operation; `on_bools` the one bools take (StableHLO's add of i1 is xor in IREE, not or)."""

    def translate(fn: Function, inputs: list[str], instruction: Instruction) -> str:
        dtype = _in(instruction).dtype
        if dtype == slope.bool_ and on_bools:
            return fn.binary(on_bools, *inputs)
        return in_float32(fn, inputs, dtype, lambda x, y: fn.binary(op, x, y))

    return translate


def _compare(direction: str) -> Callable:
    def translate(fn: Function, inputs: list[str], instruction: Instruction) -> str:
        return fn.compare(direction, *inputs)

    return translate


def safe_int_div(fn: Function, x: str, y: str) -> str:
    """Integer x / y truncated toward zero, 0 where y is 0, wrapping around for INT_MIN / -1 (as NumPy)."""
    dtype = fn.avals[x].dtype
    zero, one = fn.like(0, y), fn.like(1, y)
    is_zero = fn.compare("EQ", y, zero)
    unsafe = is_zero
    is_minus_one = None
    if dtype.kind == "int":
        is_minus_one = fn.compare("EQ", y, fn.like(-1, y))
        unsafe = fn.binary("or", is_zero, is_minus_one)
    quotient = fn.binary("divide", x, fn.select(unsafe, one, y))
    if is_minus_one is not None:
        quotient = fn.select(is_minus_one, fn.binary("subtract", fn.like(0, x), x), quotient)
    return fn.select(is_zero, zero, quotient)


def _div(fn: Function, inputs: list[str], instruction: Instruction) -> str:
    dtype = _out(instruction).dtype
    if dtype.is_float:
        return in_float32(fn, inputs, dtype, lambda x, y: fn.binary("divide", x, y))
    return safe_int_div(fn, *inputs)


def _fmod(fn: Function, inputs: list[str], instruction: Instruction) -> str:
    dtype = _out(instruction).dtype
    if dtype.is_float:  # StableHLO's remainder is C's fmod: the dividend's sign
        return in_float32(fn, inputs, dtype, lambda x, y: fn.binary("remainder", x, y))
    x, y = inputs
    return fn.binary("subtract", x, fn.binary("multiply", safe_int_div(fn, x, y), y))


def _where(fn: Function, inputs: list[str], instruction: Instruction) -> str:
    return fn.select(*inputs)


# ----------------------------------------------------------------------------------------------- reductions

# The most elements one float64 reduction adds into each output: the sum is done in stages of at most this many, so
# its error stays below (stages * SUM_BLOCK) units in the last place of sum(|x|) (see tests/test_edges_sums.py).
SUM_BLOCK = 256


def _sum(fn: Function, inputs: list[str], instruction: Instruction) -> str:
    """A sum with a bounded error: float16/bfloat16/float32 add in float64 and round once; float64 adds in stages of at
    most SUM_BLOCK elements; integers wrap around; a sum of bools that stays bool is `any`."""
    out, dim = _out(instruction), instruction.params["dim"]
    x, shape = inputs[0], _in(instruction).shape
    if out.dtype == slope.bool_:
        return fn.reshape(fn.reduce(x, "or", False, dim), out.shape)
    if not out.dtype.is_float:
        return fn.reshape(fn.reduce(x, "add", 0, dim), out.shape)
    count = math.prod(shape[d] for d in dim)
    if out.dtype != slope.float64 or count <= SUM_BLOCK:
        return fn.reshape(fn.convert(fn.reduce(fn.convert(x, slope.float64), "add", 0.0, dim), out.dtype), out.shape)
    kept = [d for d in range(len(shape)) if d not in dim]
    rows = fn.reshape(fn.transpose(x, kept + list(dim)), tuple(shape[d] for d in kept) + (count,))
    while count > 1:
        blocks = -(-count // SUM_BLOCK)
        if blocks * SUM_BLOCK != count:
            padded = Aval(fn.avals[rows].shape[:-1] + (blocks * SUM_BLOCK,), slope.float64)
            rows = _pad_value(fn, rows, [0] * len(kept) + [0], [0] * len(kept) + [blocks * SUM_BLOCK - count], 0.0,
                              padded)  # fmt: skip
        rows = fn.reshape(rows, tuple(shape[d] for d in kept) + (blocks, SUM_BLOCK))
        rows = fn.reduce(rows, "add", 0.0, [len(kept) + 1])
        count = blocks
    return fn.reshape(rows, out.shape)


def _lowest(dtype: DType) -> Any:
    if dtype == slope.bool_:
        return False
    if dtype.is_float:
        return -math.inf
    return int(np.iinfo(dtype.numpy).min)


def _max(fn: Function, inputs: list[str], instruction: Instruction) -> str:
    """The largest element; NaN where a NaN is reduced (StableHLO's maximum propagates NaN)."""
    out, dim = _out(instruction), instruction.params["dim"]
    op = "or" if out.dtype == slope.bool_ else "maximum"
    return fn.reshape(fn.reduce(inputs[0], op, _lowest(out.dtype), dim), out.shape)


# ----------------------------------------------------------------------------------------------- shape


def _reshape(fn: Function, inputs: list[str], instruction: Instruction) -> str:
    return fn.reshape(inputs[0], _out(instruction).shape)


def _expand(fn: Function, inputs: list[str], instruction: Instruction) -> str:
    out = _out(instruction)
    return fn.broadcast(inputs[0], out.shape, range(out.ndim))


def _permute(fn: Function, inputs: list[str], instruction: Instruction) -> str:
    return fn.transpose(inputs[0], instruction.params["perm"])


def _slice(fn: Function, inputs: list[str], instruction: Instruction) -> str:
    params, out = instruction.params, _out(instruction)
    if out.shape == _in(instruction).shape:
        return inputs[0]
    text = (f"stablehlo.slice {inputs[0]} [{', '.join(f'{a}:{b}:{s}' for a, b, s in zip(params['start'], params['stop'], params['step']))}]"
            f" : ({fn.type(inputs[0])}) -> {fn.tensor_type(out)}")  # fmt: skip
    return fn.emit(text, out)


def _pad_value(fn: Function, x: str, lo: Any, hi: Any, value: Any, out: Aval) -> str:
    padding = fn.constant(value, Aval((), out.dtype))
    zeros = [0] * out.ndim
    text = (
        f"stablehlo.pad {x}, {padding}, low = [{', '.join(map(str, lo))}], high = [{', '.join(map(str, hi))}], "
        f"interior = [{', '.join(map(str, zeros))}] : ({fn.type(x)}, {fn.type(padding)}) -> {fn.tensor_type(out)}"
    )
    return fn.emit(text, out)


def _pad(fn: Function, inputs: list[str], instruction: Instruction) -> str:
    params = instruction.params
    return _pad_value(fn, inputs[0], params["lo"], params["hi"], params["value"], _out(instruction))


def _flip(fn: Function, inputs: list[str], instruction: Instruction) -> str:
    dims = [d for d in instruction.params["dim"] if _in(instruction).shape[d] > 1]
    if not dims:
        return inputs[0]
    return fn.emit(f"stablehlo.reverse {inputs[0]}, dims = [{', '.join(map(str, dims))}] : {fn.type(inputs[0])}",
                   _out(instruction))  # fmt: skip


def _cat(fn: Function, inputs: list[str], instruction: Instruction) -> str:
    out = _out(instruction)
    types = ", ".join(fn.type(x) for x in inputs)
    return fn.emit(f"stablehlo.concatenate {', '.join(inputs)}, dim = {instruction.params['dim']} : ({types}) -> "
                   f"{fn.tensor_type(out)}", out)  # fmt: skip


# ----------------------------------------------------------------------------------------------- init


def _full(fn: Function, inputs: list[str], instruction: Instruction) -> str:
    return fn.constant(instruction.params["value"], _out(instruction))


def _arange(fn: Function, inputs: list[str], instruction: Instruction) -> str:
    """start + i * step, computed in int64 for integer arguments and float64 otherwise (as NumPy), then converted."""
    out, params = _out(instruction), instruction.params
    exact = all(isinstance(params[k], int) for k in ("start", "step"))
    compute = slope.int64 if exact else slope.float64
    index = fn.emit(f"stablehlo.iota dim = 0 : {fn.tensor_type(Aval(out.shape, compute))}", Aval(out.shape, compute))
    value = fn.binary("multiply", index, fn.like(params["step"], index))
    return fn.convert(fn.binary("add", value, fn.like(params["start"], index)), out.dtype)


# ----------------------------------------------------------------------------------------------- general


def _matmul(fn: Function, inputs: list[str], instruction: Instruction) -> str:
    """dot_general over the last two dimensions (float16/bfloat16 accumulate in float32, as PyTorch on the CPU)."""
    out = _out(instruction)
    batch = list(range(out.ndim - 2))

    def product(x: str, y: str) -> str:
        aval = Aval(out.shape, fn.avals[x].dtype)
        dims = f"batching_dims = [{', '.join(map(str, batch))}] x [{', '.join(map(str, batch))}], " if batch else ""
        text = (f"stablehlo.dot_general {x}, {y}, {dims}contracting_dims = [{out.ndim - 1}] x [{out.ndim - 2}] : "
                f"({fn.type(x)}, {fn.type(y)}) -> {fn.tensor_type(aval)}")  # fmt: skip
        return fn.emit(text, aval)

    return in_float32(fn, inputs, out.dtype, product)


def _conv(fn: Function, inputs: list[str], instruction: Instruction) -> str:
    """N-d cross-correlation, x (N, C, *spatial) and w (O, C/groups, *kernel); float16/bfloat16 in float32."""
    out, params = _out(instruction), instruction.params
    if _in(instruction, 0).size == 0 or _in(instruction, 1).size == 0:  # sums over no input channels
        return fn.constant(0, out)
    n = out.ndim - 2
    spatial = ", ".join(map(str, range(n)))
    layout = f"[b, f, {spatial}]x[o, i, {spatial}]->[b, f, {spatial}]"
    padding = ", ".join(f"[{lo}, {hi}]" for lo, hi in params["padding"])

    def convolve(x: str, w: str) -> str:
        aval = Aval(out.shape, fn.avals[x].dtype)
        text = (f"stablehlo.convolution({x}, {w}) dim_numbers = {layout}, window = {{stride = "
                f"[{', '.join(map(str, params['stride']))}], pad = [{padding}], rhs_dilate = "
                f"[{', '.join(map(str, params['dilation']))}]}} {{batch_group_count = 1 : i64, feature_group_count = "
                f"{params['groups']} : i64}} : ({fn.type(x)}, {fn.type(w)}) -> {fn.tensor_type(aval)}")  # fmt: skip
        return fn.emit(text, aval)

    return in_float32(fn, inputs, out.dtype, convolve)


def checked_indices(fn: Function, index: str, sizes: tuple, message: str) -> str:
    """int64 indices (..., k) into dimensions of `sizes`, negative ones counted from the end; a run with one outside
    [-size, size) raises IndexError(message)."""
    aval = fn.avals[index]
    bound = fn.broadcast(fn.array(np.array(sizes, dtype=np.int64), slope.int64), aval.shape, [aval.ndim - 1])
    negative = fn.compare("LT", index, fn.like(0, index))
    index = fn.select(negative, fn.binary("add", index, bound), index)
    outside = fn.binary("or", fn.compare("LT", index, fn.like(0, index)), fn.compare("GE", index, bound))
    fn.check(fn.any(outside), message)
    return index


_GATHER = "slope.gather_nd (x[index], slope.getitem)"
_SCATTER = "slope.scatter_nd (x.at[index], gradients of x[index])"
_RANGE = "an index is out of range (indices must lie in [-size, size) of the dimension they index)"


def _gather_nd(fn: Function, inputs: list[str], instruction: Instruction) -> str:
    x_aval, index_aval, out = _in(instruction, 0), _in(instruction, 1), _out(instruction)
    k, batch = index_aval.shape[-1], index_aval.ndim - 1
    if k == 0:  # empty index vectors pick all of x
        return fn.broadcast(inputs[0], out.shape)
    index = checked_indices(fn, inputs[1], x_aval.shape[:k], f"{_GATHER}: {_RANGE}")
    offsets = ", ".join(map(str, range(batch, batch + x_aval.ndim - k)))
    leading = ", ".join(map(str, range(k)))
    sizes = array_attr([1] * k + list(x_aval.shape[k:]))
    text = (f'"stablehlo.gather"({inputs[0]}, {index}) {{dimension_numbers = #stablehlo.gather<offset_dims = '
            f"[{offsets}], collapsed_slice_dims = [{leading}], start_index_map = [{leading}], index_vector_dim = "
            f"{batch}>, indices_are_sorted = false, slice_sizes = {sizes}}} : ({fn.type(inputs[0])}, "
            f"{fn.type(index)}) -> {fn.tensor_type(out)}")  # fmt: skip
    return fn.emit(text, out)


def _scatter_nd(fn: Function, inputs: list[str], instruction: Instruction) -> str:
    x_aval, index_aval, out = _in(instruction, 0), _in(instruction, 1), _out(instruction)
    x, index, updates = inputs
    k, batch = index_aval.shape[-1], index_aval.ndim - 1
    combine = "or" if out.dtype == slope.bool_ else "add"
    if k == 0:  # every update adds to all of x
        total = fn.reduce(updates, combine, False if combine == "or" else 0, range(batch))
        return fn.binary(combine, x, total)
    index = checked_indices(fn, index, x_aval.shape[:k], f"{_SCATTER}: {_RANGE}")
    window = ", ".join(map(str, range(batch, batch + x_aval.ndim - k)))
    leading = ", ".join(map(str, range(k)))
    scalar = tensor_type(Aval((), out.dtype))
    text = (f'"stablehlo.scatter"({x}, {index}, {updates}) ({{\n'
            f"      ^bb0(%a: {scalar}, %b: {scalar}):\n"
            f"        %s = stablehlo.{combine} %a, %b : {scalar}\n"
            f"        stablehlo.return %s : {scalar}\n"
            f"    }}) {{indices_are_sorted = false, scatter_dimension_numbers = #stablehlo.scatter<update_window_dims = "
            f"[{window}], inserted_window_dims = [{leading}], scatter_dims_to_operand_dims = [{leading}], "
            f"index_vector_dim = {batch}>, unique_indices = false}} : ({fn.type(x)}, {fn.type(index)}, "
            f"{fn.type(updates)}) -> {fn.tensor_type(out)}")  # fmt: skip
    return fn.emit(text, out)


# operators whose translations work in a dynamic Function (every dimension `?`): the elementwise ones
DYNAMIC_SAFE = frozenset(
    ["exp", "log", "sin", "cos", "sqrt", "tanh", "floor", "ceil", "round", "invert", "stop_gradient", "cast", "add",
     "sub", "mul", "div", "pow", "fmod", "maximum", "equal", "less", "greater", "less_equal", "greater_equal",
     "bitwise_and", "bitwise_or", "bitwise_xor", "where"]
)  # fmt: skip

translations: dict[str, Callable] = {
    "exp": _unary("exponential"),
    "log": _unary("log"),
    "sin": _unary("sine"),
    "cos": _unary("cosine"),
    "sqrt": _unary("sqrt"),
    "tanh": _unary("tanh"),
    "floor": _unary("floor"),
    "ceil": _unary("ceil"),
    "round": _unary("round_nearest_even"),  # half to even, as PyTorch
    "invert": _invert,
    "stop_gradient": _identity,
    "cast": _cast,
    "add": _binary("add", on_bools="or"),
    "sub": _binary("subtract"),
    "mul": _binary("multiply", on_bools="and"),
    "div": _div,
    "pow": _binary("power"),  # integers: wraps around; a negative exponent gives 0 unless |x| is 1 (checked)
    "fmod": _fmod,
    "maximum": _binary("maximum", on_bools="or"),
    "equal": _compare("EQ"),
    "less": _compare("LT"),
    "greater": _compare("GT"),
    "less_equal": _compare("LE"),
    "greater_equal": _compare("GE"),
    "bitwise_and": _binary("and"),
    "bitwise_or": _binary("or"),
    "bitwise_xor": _binary("xor"),
    "where": _where,
    "sum": _sum,
    "max": _max,
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

__all__ = [
    "DYNAMIC_SAFE",
    "Function",
    "NoTranslationError",
    "build_module",
    "in_float32",
    "tensor_type",
    "translations",
]
