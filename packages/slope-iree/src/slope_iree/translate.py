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
import re
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
    """A whole array as an MLIR `dense<...>` attribute (its bytes in hex; bools as a list; one value when all
    elements have the same bits: by value, [0.0, -0.0] was a splat of 0.0)."""
    flat = np.ascontiguousarray(array.astype(dtype.numpy)).reshape(-1)
    bits = flat.view(f"u{flat.itemsize}")
    if flat.size and np.all(bits == bits[0]):
        return f"dense<{literal(flat[0], dtype)}>"
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
        self.checks: list[tuple] = []  # (i1 scalar that is true when something is wrong, its message, its error)
        self.producers: dict[str, str] = {}  # result of fn.binary -> its StableHLO operation
        self.transposes: dict[str, tuple[str, tuple]] = {}  # transpose result -> (its source, perm)
        self.products: dict[str, tuple[str, str, bool, bool]] = {}  # matrix product -> (x, y, x_swapped, y_swapped)
        self.folded: set[str] = set()  # names the compiler can fold to a splat (splat constants, operations of those)
        self.may_fold: set[str] = set()  # names its canonicalizer may fold to a splat although they read an input
        self.splats: dict[str, str] = {}  # splat constant -> its MLIR literal
        self.materialized: set[Var] = set()  # values put behind a barrier (see _recomputed_under_broadcast)
        self._count = 0

    # ------------------------------------------------------------------------------------------- emitting
    def emit(self, text: str, aval: Aval | None) -> str:
        """Add `%vN = text` (its result of abstract value `aval`; None for a value that is no slope tensor, such as
        a shape); returns %vN."""
        name = f"%v{self._count}"
        self._count += 1
        operands = re.findall(r"%\w+", text)
        splat = text.startswith("stablehlo.constant dense<") and text[len("stablehlo.constant dense<")] not in '"['
        if splat:
            self.splats[name] = text[len("stablehlo.constant dense<") : text.index(">")]
        if splat or (operands and all(o in self.folded for o in operands)):
            self.folded.add(name)
        elif operands and self._may_fold(text, operands, aval):
            self.may_fold.add(name)
        self.lines.append(f"    {name} = {text}")
        if aval is not None:
            self.avals[name] = aval
        return name

    def _may_fold(self, text: str, operands: list[str], aval: Aval | None) -> bool:
        """Whether StableHLO's canonicalizer may make this operation a splat although it reads an input: x - x and
        x == x of integers, select(c, a, a), 1 ** y, an integer compared with 0 or its dtype's bound (an unsigned
        x >= 0, int8 x <= 127), clamp(x, c, c), other integer operations with a constant (x * 0), or what reads only
        such values and constants."""
        constant = [o in self.folded or o in self.may_fold for o in operands]
        if all(constant):
            return True
        op = text.split(" ", 1)[0].removeprefix("stablehlo.")
        if op == "select":  # (a constant condition, or both sides constant or the same)
            return constant[0] or all(constant[1:]) or operands[1] == operands[2]
        if op == "power":
            return any(constant)
        dtypes = [self.avals[o].dtype for o in operands if o in self.avals]
        if any(d.is_float for d in dtypes) or (aval is not None and aval.dtype.is_float):
            return False
        if len(set(operands)) < len(operands):  # x - x, x == x, x ^ x
            return True
        values = {self.splats.get(o) for o in operands} - {None}
        if op == "compare" and dtypes and dtypes[0] != slope.bool_:  # (a class index against the classes: no)
            bounds = np.iinfo(dtypes[0].numpy)
            return bool(values & {"0", str(bounds.min), str(bounds.max)})
        if op == "clamp":  # (a class index clamped into range: no)
            return operands[0] in self.splats and self.splats[operands[0]] == self.splats.get(operands[2])
        return any(constant)  # (integer arithmetic and bit operations with a constant: conservatively)

    def tensor_type(self, aval: Aval) -> str:
        """The MLIR type of an abstract value in this function (`tensor<?x?xf32>` when dynamic)."""
        if self.dynamic:
            return f"tensor<{'?x' * aval.ndim}{ELEMENT_TYPES[aval.dtype.name]}>"
        return tensor_type(aval)

    def type(self, name: str) -> str:
        """The MLIR type of an SSA name."""
        return self.tensor_type(self.avals[name])

    def check(self, failed: str, message: str, error: type[Exception] = IndexError) -> None:
        """Raise error(message) after a run in which the i1 scalar `failed` is true."""
        self.checks.append((failed, message, error))

    # ------------------------------------------------------------------------------------------- helpers
    def unary(self, op: str, x: str, aval: Aval | None = None) -> str:
        """`stablehlo.<op> x`, of x's type unless `aval` says otherwise."""
        aval = aval or self.avals[x]
        if aval == self.avals[x]:
            return self.emit(f"stablehlo.{op} {x} : {self.tensor_type(aval)}", aval)
        return self.emit(f"stablehlo.{op} {x} : ({self.type(x)}) -> {self.tensor_type(aval)}", aval)

    def binary(self, op: str, x: str, y: str) -> str:
        """`stablehlo.<op> x, y` of two operands of one type."""
        name = self.emit(f"stablehlo.{op} {x}, {y} : {self.type(x)}", self.avals[x])
        self.producers[name] = op
        return name

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
        if aval.dtype.is_float and dtype.is_int and dtype.bits < 32:
            # through int32, whose low bits it keeps, as the numpy and onnxruntime backends and PyTorch convert
            # (IREE saturates: float32 300.0 to uint8 was 255, not 44; -1.0 0, not 255; 200.0 to int8 127, not -56)
            return self.unary("convert", self.convert(x, slope.int32), Aval(aval.shape, dtype))
        if dtype.name in _HALF and aval.dtype not in (slope.float32, slope.float16):
            # through float32, as PyTorch converts (and IREE's direct f64 -> f16 flushes f16 subnormals to zero)
            x = self.unary("convert", x, Aval(aval.shape, slope.float32))
        if dtype == slope.bfloat16:
            # rounded in float32 first: IREE drops a conversion to bfloat16 followed by one back to a wider type (the
            # next operator's: a cast's, a comparison's, a sum's), so bfloat16's rounding went (88.8 stayed 88.8 under
            # jit, float16 127.875 stayed 127.875); reduce_precision keeps it (bit operations where shapes are dynamic)
            x = self.unary("convert", x, Aval(aval.shape, slope.float32)) if self.avals[x].dtype != slope.float32 else x
            x = _rounded_bits(self, x, dtype) if self.dynamic else self.emit(
                f"stablehlo.reduce_precision {x}, format = e8m7 : {self.type(x)}", self.avals[x])  # fmt: skip
        if aval.dtype.is_float and not dtype.is_float and x in self.folded and not self.dynamic:
            # IREE folds a conversion of a constant NaN, inf or out-of-range float to an integer to 0 (the CPU's
            # conversion at run time gives what the numpy backend and PyTorch give: NaN to int32 -2**31, -1.0 to
            # uint8 255): keep it for run time
            x = self.unfolded(x)
        return self.unary("convert", x, Aval(aval.shape, dtype))

    def select(self, condition: str, x: str, y: str) -> str:
        """x where the condition holds, else y."""
        return self.emit(f"stablehlo.select {condition}, {x}, {y} : {self.type(condition)}, {self.type(x)}",
                         self.avals[x])  # fmt: skip

    def constant(self, value: Any, aval: Aval) -> str:
        """A tensor of `aval` filled with a scalar."""
        out = self.emit(f"stablehlo.constant dense<{literal(value, aval.dtype)}> : {self.tensor_type(aval)}", aval)
        return self.unfolded(out) if isinstance(value, float) and math.isnan(value) else out

    def array(self, array: np.ndarray, dtype: DType) -> str:
        """A constant tensor holding a NumPy array."""
        aval = Aval(tuple(array.shape), dtype)
        out = self.emit(f"stablehlo.constant {dense(array, dtype)} : {self.tensor_type(aval)}", aval)
        return self.unfolded(out) if array.dtype.kind == "f" and np.isnan(array).any() else out

    def unfolded(self, x: str) -> str:
        """x behind an optimization barrier: IREE neither folds nor fuses across it (NaN constants: IREE 3.13 folded
        one into exp's expansion as a low bound, exp(x * nan) of float32 gave 0)."""
        return self.emit(f"stablehlo.optimization_barrier {x} : {self.type(x)}", self.avals[x])

    def like(self, value: Any, x: str) -> str:
        """A constant of x's shape and dtype (of x's run-time shape when dynamic)."""
        aval = self.avals[x]
        if not self.dynamic or not aval.ndim:
            return self.constant(value, aval)
        scalar = self.constant(value, Aval((), aval.dtype))
        shape = self.emit(f"shape.shape_of {x} : {self.type(x)} -> tensor<{aval.ndim}xindex>", None)
        return self.emit(f"stablehlo.dynamic_broadcast_in_dim {scalar}, {shape}, dims = [] : ({self.type(scalar)}, "
                         f"tensor<{aval.ndim}xindex>) -> {self.type(x)}", aval)  # fmt: skip

    def summable(self, x: str) -> str:
        """x ready to be summed: IREE 3.13 sums a splat it has folded (a converted constant, or what its canonicalizer
        made one) over the innermost dimensions as if they held one element or one vector (the sum of full((2, 3), 1.0)
        over dim 1 was 1, not 3: the gradient of log_softmax(x).sum() under jit; (1.0 ** x).sum() was 1, (u >= 0).sum()
        of uint8 1, 70,000 ones 4,375), so such a value goes behind a barrier."""
        return self.unfolded(x) if (x in self.folded or x in self.may_fold) and not self.dynamic else x

    def apart(self, x: str) -> str:
        """x kept apart from the gather or reverse that reads it: IREE 3.13 fails to compile one fused with a strided
        read of its operand (a slice or transpose of the function's input: "LLVM Translation failed for operation:
        builtin.unrealized_conversion_cast")."""
        return self.unfolded(x) if x.startswith("%v") else x

    def scatter_target(self, x: str) -> str:
        """x copied into a buffer of its own for a scatter to add into: IREE 3.13 scatters into its operand's buffer in
        place, and x may be the caller's (a jitted function's input came back changed). The copy is x plus the exact
        additive identity (-0.0, 0 or False) behind a barrier, which IREE can neither fold away nor turn into x."""
        aval = self.avals[x]
        if aval.dtype == slope.bool_:
            return self.binary("or", x, self.unfolded(self.constant(False, aval)))
        return self.binary("add", x, self.unfolded(self.constant(-0.0 if aval.dtype.is_float else 0, aval)))

    def loop(self, count: int, state: list[str], body: Callable[[list[str]], list[str]]) -> list[str]:
        """`state` after `count` applications of `body` (new values from the values), as one `stablehlo.while`: the
        body's code once, not `count` copies of it."""
        loop = f"%v{self._count}"
        self._count += 1
        counter = Aval((), slope.int64)
        arguments = [f"{loop}_{i}" for i in range(len(state) + 1)]
        self.avals.update(zip(arguments, [counter, *(self.avals[v] for v in state)]))
        outer, self.lines = self.lines, []
        try:
            results = [self.binary("add", arguments[0], self.constant(1, counter)), *body(arguments[1:])]
            inner = self.lines
        finally:
            self.lines = outer
        start, types = self.constant(0, counter), ", ".join(self.type(v) for v in [arguments[0], *state])
        # the initial values behind one barrier: IREE 3.13 failed to partition a loop whose initial values were
        # computed from constants alone ("circular dependency: input operation uses partition output": x ** nan)
        kept = self.emit(f"stablehlo.optimization_barrier {', '.join([start, *state])} : {types}", None)
        self.lines[-1] = self.lines[-1].replace(f"{kept} = ", f"{kept}:{len(arguments)} = ", 1)
        pairs = ", ".join(f"{a} = {kept}#{i}" for i, a in enumerate(arguments))
        text = "\n".join(
            [f"stablehlo.while({pairs}) : {types}", "    cond {",
             f"      {loop}_n = stablehlo.constant dense<{count}> : tensor<i64>",
             f"      {loop}_c = stablehlo.compare LT, {arguments[0]}, {loop}_n, SIGNED : (tensor<i64>, tensor<i64>) -> "
             "tensor<i1>",
             f"      stablehlo.return {loop}_c : tensor<i1>", "    } do {", *("  " + line for line in inner),
             f"      stablehlo.return {', '.join(results)} : {types}", "    }"]
        )  # fmt: skip
        self.lines.append(f"    {loop}:{len(arguments)} = {text}")
        names = [f"{loop}#{i}" for i in range(1, len(arguments))]
        self.avals.update(zip(names, (self.avals[v] for v in state)))
        return names

    def reshape(self, x: str, shape: tuple) -> str:
        """x reshaped (x itself when it has that shape)."""
        aval = self.avals[x]
        if tuple(shape) == aval.shape:
            return x
        if aval.size == 1 and len(shape) > aval.ndim and not self.dynamic:  # one element to more 1s: a broadcast
            # (iree-compile 3.13 failed on a reshaped 0-d half broadcast to two shapes and widened: "failed to
            # legalize unresolved source materialization from tensor<1x1xf16> to tensor<1x1xf32>")
            return self.broadcast(x, shape)
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
        name = self.emit(f"stablehlo.transpose {x}, dims = [{', '.join(map(str, perm))}] : ({self.type(x)}) -> "
                         f"{self.tensor_type(out)}", out)  # fmt: skip
        if out.dtype in (slope.float16, slope.bfloat16) and not self.dynamic:
            # (iree-compile 3.13 rejected a transposed half value whose two uses are each widened: "failed to legalize
            # unresolved source materialization from tensor<3x3xf16> to tensor<3x3xf32>", x.T[:, :, None] * x.T[:, None])
            name = self.unfolded(name)
        self.transposes[name] = (x, perm)
        return name

    def matrix_product(self, x: str, y: str, x_swapped: bool = False, y_swapped: bool = False) -> str:
        """x @ y over the last two dimensions (the others batch), as one dot_general (in blocks past DOT_UNBLOCKED
        contracted elements: blocked_product); `x_swapped` means x holds the transpose of the left factor's last two
        dimensions (and likewise y), which dot_general reads as it is."""
        x_aval, y_aval = self.avals[x], self.avals[y]
        n = x_aval.ndim
        rows = x_aval.shape[n - 1] if x_swapped else x_aval.shape[n - 2]
        columns = y_aval.shape[n - 2] if y_swapped else y_aval.shape[n - 1]
        out = Aval(x_aval.shape[:-2] + (rows, columns), x_aval.dtype)
        depth = x_aval.shape[n - 2] if x_swapped else x_aval.shape[n - 1]
        if depth > DOT_UNBLOCKED and out.dtype.is_float and not self.dynamic:
            return self.blocked_product(x, y, x_swapped, y_swapped, depth)
        batch = ", ".join(map(str, range(n - 2)))
        dims = f"batching_dims = [{batch}] x [{batch}], " if n > 2 else ""
        contract = f"contracting_dims = [{n - 2 if x_swapped else n - 1}] x [{n - 1 if y_swapped else n - 2}]"
        name = self.emit(f"stablehlo.dot_general {x}, {y}, {dims}{contract} : ({self.type(x)}, {self.type(y)}) -> "
                         f"{self.tensor_type(out)}", out)  # fmt: skip
        self.products[name] = (x, y, x_swapped, y_swapped)
        return name

    def blocked_product(self, x: str, y: str, x_swapped: bool, y_swapped: bool, depth: int) -> str:
        """matrix_product over a long contraction: products of blocks of DOT_BLOCK (batched, one dot_general), their
        partial sums added in float64 and rounded once. IREE 3.13 contracts one element at a time in one accumulator
        (ones(2e7) @ ones(2e7) was 16777216; a 4e6-long float32 dot 2.8e-3 off, where PyTorch's is 1.7e-5)."""
        blocks = -(-depth // DOT_BLOCK)

        def split(a: str, swapped: bool, left: bool) -> tuple[str, bool]:
            """a with its contracted dimension padded with zeros and split into (blocks, DOT_BLOCK), the blocks a batch
            dimension before the last two; whether the result holds its matrices swapped."""
            aval = self.avals[a]
            along = aval.ndim - (2 if swapped == left else 1)  # the contracted dimension
            if blocks * DOT_BLOCK != depth:
                high = [blocks * DOT_BLOCK - depth if d == along else 0 for d in range(aval.ndim)]
                shape = tuple(n + h for n, h in zip(aval.shape, high))
                a = _pad_value(self, a, [0] * aval.ndim, high, 0, Aval(shape, aval.dtype))
            shape = self.avals[a].shape
            a = self.reshape(a, shape[:along] + (blocks, DOT_BLOCK) + shape[along + 1 :])
            if along == aval.ndim - 2:  # (..., blocks, DOT_BLOCK, other): already batch-major
                return a, swapped
            m = aval.ndim - 1  # (..., other, blocks, DOT_BLOCK) -> (..., blocks, other, DOT_BLOCK)
            return self.transpose(a, (*range(m - 1), m, m - 1, m + 1)), swapped

        (xb, xs), (yb, ys) = split(x, x_swapped, True), split(y, y_swapped, False)
        partial = self.matrix_product(xb, yb, xs, ys)  # (..., blocks, rows, columns)
        self.products.pop(partial)  # (not a product of x and y: a transpose of it is no swapped product)
        dtype = self.avals[partial].dtype
        total = self.reduce(self.convert(partial, slope.float64), "add", 0.0, [self.avals[partial].ndim - 3])
        return self.convert(total, dtype)

    def unswapped(self, x: str) -> tuple[str, bool]:
        """(source, True) when x is a transpose of only the last two dimensions of source, else (x, False)."""
        source, perm = self.transposes.get(x, (x, None))
        n = self.avals[x].ndim
        if perm is None or n < 2 or perm != (*range(n - 2), n - 1, n - 2):
            return x, False
        return source, True

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
            env[var] = self.unfolded(name) if var in self.materialized else name

    def inline_procedure(self, instruction: Instruction, inputs: list[str]) -> list[str]:
        """Lower one instruction through its procedure (the shared pass) and translate the result in place."""
        from slope.backend import lower_instruction

        lowered = lower_instruction(instruction, frozenset(self.translations), self.backend_name)
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
        if embed_constants:  # behind a barrier: IREE folds what depends only on constants (even with its
            # const-eval off), in its own way (an exported gelu(tanh) of a constant was 0.6% off jit's, which gets
            # them as arguments)
            constant = fn.array(value.numpy(), var.aval.dtype)
            env[var] = fn.emit(f"stablehlo.optimization_barrier {constant} : {fn.type(constant)}", var.aval)
        else:
            env[var] = f"%{names[var]}"
            arguments.append(var)
    for var in arguments:
        fn.avals[env[var]] = var.aval
    fn.materialized = _recomputed_under_broadcast(program)
    for instruction in program.instructions:
        fn.translate(instruction, env)
    results = [env[v] for v in program.outputs] + [failed for failed, *_ in fn.checks]
    signature = ", ".join(f"{env[v]}: {fn.tensor_type(v.aval)}" for v in arguments)
    result_types = ", ".join(fn.type(r) for r in results)
    lines = [f"func.func @main({signature}) -> ({result_types}) {{", *_live(fn.lines, results)]
    lines.append(f"    return {', '.join(results)} : {result_types}" if results else "    return")
    lines.append("}")
    return "\n".join(lines) + "\n", fn.checks


# operators whose translation is long enough that recomputing it costs more than a dispatch of its own (float32
# tanh: a polynomial, an exp and a division, ~50 operations an element; float64's calls libm)
_COSTLY = frozenset(["tanh"])
_BROADCAST_ELEMENTS = 4096  # elements an expand adds from which recomputing a costly value outweighs a dispatch


def _recomputed_under_broadcast(program: Program) -> set[Var]:
    """The results of costly operators (_COSTLY) that reach, through elementwise operators, reshapes and permutes, an
    expand adding _BROADCAST_ELEMENTS or more elements. IREE fuses the broadcast's consumers with the work that feeds
    it and recomputes that work for every element of the broadcast result: slope.hessian of sum(tanh(x) ** 3) at
    n = 100 computed its tanh 10,000 times (1.8 of its 12.7 µs). Behind a barrier it is computed once, in a dispatch of
    its own (which costs ~1 µs where nothing is broadcast: hence not for every tanh)."""
    reaching: dict[Var, frozenset] = {}
    found: set[Var] = set()
    for instruction in program.instructions:
        name, out = instruction.op.name, instruction.outputs[0]
        sources = frozenset().union(*(reaching.get(v, frozenset()) for v in instruction.inputs))
        if name == "expand" and out.aval.size - instruction.inputs[0].aval.size >= _BROADCAST_ELEMENTS:
            found |= sources
        elif name in _COSTLY:
            reaching[out] = sources | {out}
        elif sources and (name in DYNAMIC_SAFE or name in ("reshape", "permute", "expand")):
            reaching.update((v, sources) for v in instruction.outputs)
    return found


_DEFINED = re.compile(r"\s*(%[\w.]+)(?::\d+)? = ")
_USED = re.compile(r"%[\w.]+")


def _live(lines: list[str], results: list[str]) -> list[str]:
    """The operations the results depend on (a translation may leave some unused, as a transpose folded into a
    matrix product): what `.code` shows, and less for IREE to parse."""
    used = {name.split("#")[0] for name in results}
    kept = []
    for line in reversed(lines):
        defined = _DEFINED.match(line)
        if defined is None or defined.group(1) in used:
            kept.append(line)
            used.update(_USED.findall(line.split(" = ", 1)[1] if defined else line))
    return kept[::-1]


# ----------------------------------------------------------------------------------------------- elementwise


def _in(instruction: Instruction, i: int = 0) -> Aval:
    return instruction.inputs[i].aval


def _out(instruction: Instruction) -> Aval:
    return instruction.outputs[0].aval


def in_float32(fn: Function, inputs: list[str], dtype: DType, compute: Callable[..., str]) -> str:
    """`compute(*inputs)`, with float16/bfloat16 inputs computed in float32 and rounded once at the end."""
    if dtype.name not in _HALF:
        return compute(*inputs)
    return rounded(fn, compute(*[fn.convert(x, slope.float32) for x in inputs]), dtype)


def _rounded_bits(fn: Function, x: str, dtype: DType) -> str:
    """float32 x rounded (to nearest, ties to even) to a float16/bfloat16 value, still in float32: the mantissa by
    integer operations on its bits (NaN kept), float16's subnormal range by scaling."""
    shape = fn.avals[x].shape
    drop = 16 if dtype == slope.bfloat16 else 13  # mantissa bits float32 has beyond the half type's
    bits = fn.unary("bitcast_convert", x, Aval(shape, slope.int32))
    lowest = fn.binary("and", fn.binary("shift_right_logical", bits, fn.like(drop, bits)), fn.like(1, bits))
    bits = fn.binary("add", fn.binary("add", bits, fn.like((1 << (drop - 1)) - 1, bits)), lowest)
    bits = fn.binary("and", bits, fn.like(-(1 << drop), bits))
    result = fn.unary("bitcast_convert", bits, Aval(shape, slope.float32))
    result = fn.select(fn.compare("NE", x, x), x, result)
    if dtype == slope.float16:  # below 2**-14 float16 is subnormal: multiples of 2**-24 (scaled by 2**24 exactly)
        steps = fn.unary("round_nearest_even", fn.binary("multiply", x, fn.like(2.0**24, x)))
        tiny = fn.compare("LT", fn.unary("abs", x), fn.like(2.0**-14, x))
        result = fn.select(tiny, fn.binary("multiply", steps, fn.like(2.0**-24, x)), result)
    return result


def rounded(fn: Function, x: str, dtype: DType) -> str:
    """float32 x rounded to float16/bfloat16: IREE drops a convert to a half type followed by a convert back (the next
    operator's), which would skip the rounding between operators; float16 rounds by bit operations first (its
    reduce_precision, e5m10, would flush its subnormals to zero; bfloat16's convert rounds, see Function.convert)."""
    if fn.avals[x].dtype != slope.float32 or dtype != slope.float16:
        return fn.convert(x, dtype)
    return fn.convert(_rounded_bits(fn, x, dtype), dtype)


def in_float64(fn: Function, inputs: list[str], dtype: DType, compute: Callable[..., str]) -> str:
    """`compute(*inputs)` in float64, rounded once to `dtype`: for functions whose narrower IREE kernels are not
    accurate enough (float64 ones are libm's)."""
    result = compute(*[fn.convert(x, slope.float64) for x in inputs])
    if dtype.name in _HALF:  # through float32, as PyTorch converts
        return rounded(fn, fn.convert(result, slope.float32), dtype)
    return fn.convert(result, dtype)


def _unary(op: str) -> Callable:
    def translate(fn: Function, inputs: list[str], instruction: Instruction) -> str:
        return in_float32(fn, inputs, _out(instruction).dtype, lambda x: fn.unary(op, x))

    return translate


def _periodic(op: str) -> Callable:
    """sin and cos in float64 for every float dtype: IREE's float32 kernels reduce large arguments badly (cos(30000)
    is 7e-4 off, and cos of 1e38 inf); float64 calls libm."""

    def translate(fn: Function, inputs: list[str], instruction: Instruction) -> str:
        return in_float64(fn, inputs, _out(instruction).dtype, lambda x: fn.unary(op, x))

    return translate


# (tanh(x) - x) / x**3 as a polynomial in x**2 on |x| <= 1, from the highest power down, fitted for Slope by
# reweighted least squares against mpmath (weighted by the term's share of tanh, which it leaves off by at most
# 0.007 * 2**-24 relative); evaluated in float32, the result is within an ulp of the correctly rounded tanh
_TANH_SMALL = (
    0.00012147014058427885, -0.0008411348680965602, 0.00307859038002789, -0.008595111779868603, 0.02178473025560379,
    -0.05395309627056122, 0.1333319991827011, -0.333333283662796,
)  # fmt: skip


def _tanh(fn: Function, inputs: list[str], instruction: Instruction) -> str:
    """tanh (float16 and bfloat16 in float32, rounded once; float64 is libm's). IREE's float32 kernel is up to 4 ulps
    off and rounds to +-1 from |x| = 8.0, where PyTorch's stays below 1 up to 9.01 (so tanh's derivative 1 - y**2 was
    0 there: 4.8e-7 at 8). Now x + x**3 P(x**2) on |x| < 1 and sign(x) (1 - 2 / (exp(2|x|) + 1)) beyond (as
    slope-onnx), within an ulp of PyTorch's; x itself below 2**-12, where tanh x rounds to x (and -0.0 stays -0.0)."""
    dtype = _out(instruction).dtype
    if dtype == slope.float64:
        return fn.unary("tanh", inputs[0])

    def compute(x: str) -> str:
        size, squared = fn.unary("abs", x), fn.binary("multiply", x, x)
        polynomial = fn.like(_TANH_SMALL[0], x)
        for coefficient in _TANH_SMALL[1:]:
            polynomial = fn.binary("add", fn.binary("multiply", polynomial, squared), fn.like(coefficient, x))
        small = fn.binary("add", x, fn.binary("multiply", x, fn.binary("multiply", squared, polynomial)))
        exp = fn.unary("exponential", fn.binary("add", size, size))
        quotient = fn.binary("divide", fn.like(2.0, x), fn.binary("add", exp, fn.like(1.0, x)))
        tail = fn.binary("subtract", fn.like(1.0, x), quotient)  # (NaN stays NaN: its comparisons are false)
        tail = fn.select(fn.compare("LT", x, fn.like(0.0, x)), fn.unary("negate", tail), tail)
        value = fn.select(fn.compare("LT", size, fn.like(1.0, x)), small, tail)
        return fn.select(fn.compare("LT", size, fn.like(2.0**-12, x)), x, value)

    return in_float32(fn, inputs, dtype, compute)


def _identity(fn: Function, inputs: list[str], instruction: Instruction) -> str:
    return inputs[0]


def _cast(fn: Function, inputs: list[str], instruction: Instruction) -> str:
    out = fn.convert(inputs[0], instruction.params["dtype"])
    if _in(instruction).dtype == slope.bool_ and instruction.params["dtype"].is_float:
        # IREE 3.13 folds x * convert(mask) into a select, which gives 0 for NaN * 0 and inf * 0 (jit only; a masked
        # NaN vanished, and a Hessian's inf * 0 was 0, not NaN): keep the product
        out = fn.unfolded(out)
    return out


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


def _two_product(fn: Function, a: str, b: str) -> tuple[str, str]:
    """a * b as an unevaluated sum p + e of float64s (Dekker's product with Veltkamp's split: StableHLO has no fma)."""

    def split(v: str) -> tuple[str, str]:
        scaled = fn.binary("multiply", v, fn.like(134217729.0, v))  # 2 ** 27 + 1
        high = fn.binary("subtract", scaled, fn.binary("subtract", scaled, v))
        return high, fn.binary("subtract", v, high)

    p = fn.binary("multiply", a, b)
    (ah, al), (bh, bl) = split(a), split(b)
    e = fn.binary("subtract", fn.binary("multiply", ah, bh), p)
    e = fn.binary("add", fn.binary("add", e, fn.binary("multiply", ah, bl)), fn.binary("multiply", al, bh))
    return p, fn.binary("add", e, fn.binary("multiply", al, bl))


def _double_double_product(fn: Function, a: tuple[str, str], b: tuple[str, str]) -> tuple[str, str]:
    p, e = _two_product(fn, a[0], b[0])
    e = fn.binary("add", e, fn.binary("add", fn.binary("multiply", a[0], b[1]), fn.binary("multiply", a[1], b[0])))
    high = fn.binary("add", p, e)
    return high, fn.binary("subtract", e, fn.binary("subtract", high, p))


# integer exponents up to 1700 in magnitude (beyond, a power is 0 or inf unless x is near 1): m ** 1700 stays within
# 2 ** +-850, where the double-double arithmetic neither overflows nor loses bits
_EXACT_POW_LIMIT, _EXACT_POW_BITS = 1700.0, 11


def _power_of_two(fn: Function, k: str) -> str:
    """2.0 ** k for float64 integers k in [-1022, 1023], built from its bits."""
    bits = fn.unary("convert", fn.binary("add", k, fn.like(1023.0, k)), Aval(fn.avals[k].shape, slope.int64))
    bits = fn.binary("shift_left", bits, fn.like(52, bits))
    return fn.unary("bitcast_convert", bits, fn.avals[k])


def _scaled(fn: Function, v: str, k: str) -> str:
    """v * 2 ** k for a float64 integer k of any size, by factors of at most 2 ** 1000: exact unless the result is
    out of the normal range (then 0 or inf, or subnormal where subnormals are kept)."""
    low, high = fn.like(-1000.0, k), fn.like(1000.0, k)
    for _ in range(3):
        step = fn.binary("minimum", fn.binary("maximum", k, low), high)
        v, k = fn.binary("multiply", v, _power_of_two(fn, step)), fn.binary("subtract", k, step)
    return v


def _integer_pow(fn: Function, x: str, y: str, fallback: str) -> str:
    """|x| ** y for float64 integer y, |y| <= _EXACT_POW_LIMIT: |x| = m 2 ** e with m in [sqrt(1/2), sqrt(2)),
    m ** |y| by squaring and multiplying in double-double arithmetic (relative error near 2 ** -100: correctly
    rounded but for ties that close), inverted for a negative y, then scaled by 2 ** (e y) exactly. So exact where
    the power is representable, as PyTorch's pow (0.5 ** 3 is 0.125; IREE's exp(y log x) gave 0.12500000000000003,
    2 ** 1024 a finite number). `fallback` for other x and y (0, subnormals, inf and NaN too)."""
    magnitude, n = fn.unary("abs", x), fn.unary("abs", y)
    zero, one, half = fn.like(0.0, x), fn.like(1.0, x), fn.like(0.5, x)
    shape = fn.avals[x].shape
    bits = fn.unary("bitcast_convert", magnitude, Aval(shape, slope.int64))
    biased = fn.binary("shift_right_logical", bits, fn.like(52, bits))
    e = fn.binary("subtract", fn.unary("convert", biased, Aval(shape, slope.float64)), fn.like(1023.0, x))
    fraction = fn.binary("and", bits, fn.like((1 << 52) - 1, bits))
    m = fn.unary("bitcast_convert", fn.binary("or", fraction, fn.like(1023 << 52, bits)), fn.avals[x])  # [1, 2)
    above = fn.compare("GT", m, fn.like(math.sqrt(2.0), x))
    m = fn.select(above, fn.binary("multiply", m, half), m)
    e = fn.select(above, fn.binary("add", e, one), e)

    def step(state: list[str]) -> list[str]:  # one bit of n: multiplied in where set, then the power squared
        n, *result, power_high, power_low = state
        halved = fn.unary("floor", fn.binary("multiply", n, fn.like(0.5, n)))
        odd = fn.compare("NE", fn.binary("add", halved, halved), n)
        product = _double_double_product(fn, result, (power_high, power_low))
        result = [fn.select(odd, p, r) for p, r in zip(product, result)]
        # (the last square, up to m ** 2048, may overflow: it is not used)
        return [halved, *result, *_double_double_product(fn, (power_high, power_low), (power_high, power_low))]

    # a loop, not _EXACT_POW_BITS copies of the step: an unrolled float64 pow was 780 lines, 15 s of iree-compile
    _, high, low, _, _ = fn.loop(_EXACT_POW_BITS, [n, one, zero, m, zero], step)  # within 2 ** +-850
    # m ** -n as 1 / (m ** n): q = 1 / high, corrected by the residual 1 - q * (high + low)
    q = fn.binary("divide", one, high)
    p, err = _two_product(fn, q, high)
    residual = fn.binary("subtract", fn.binary("subtract", one, p), err)
    residual = fn.binary("subtract", residual, fn.binary("multiply", q, low))
    inverse = fn.binary("add", q, fn.binary("multiply", q, residual))
    value = fn.select(fn.compare("LT", y, zero), inverse, fn.binary("add", high, low))
    value = _scaled(fn, value, fn.binary("multiply", e, y))
    integral = fn.compare("EQ", fn.unary("floor", y), y)
    usable = fn.binary("and", integral, fn.compare("LE", fn.unary("abs", y), fn.like(_EXACT_POW_LIMIT, y)))
    # normal x only: IREE's CPU code reads subnormal float64s as zero (and flushes subnormal results to zero)
    normal = fn.compare("GE", magnitude, fn.like(2.0**-1022, x))
    normal = fn.binary("and", normal, fn.compare("LT", magnitude, fn.like(math.inf, x)))
    return fn.select(fn.binary("and", usable, normal), value, fallback)


def _corrected_pow(fn: Function, magnitude: str, y: str, plain: str) -> str:
    """|x| ** y in float64 as exp(y log|x|), with log|x|'s rounding error (about |log x| ulps, which exp multiplies
    by y) estimated by |x| / exp(log|x|) - 1 and y log|x| kept as a double-double: a few ulps instead of
    |y log x| (1e300 ** 1.5 was 700 ulps off). `plain` where the estimate is not finite."""
    log = fn.unary("log", magnitude)
    back = fn.unary("exponential", log)
    correction = fn.binary("divide", fn.binary("subtract", magnitude, back), back)
    p, err = _two_product(fn, y, log)
    low = fn.binary("add", err, fn.binary("multiply", y, correction))
    high = fn.unary("exponential", p)
    out = fn.binary("add", high, fn.binary("multiply", high, low))
    finite = fn.compare("LT", fn.unary("abs", out), fn.like(math.inf, out))  # false for NaN too
    return fn.select(finite, out, plain)


def _float_pow(fn: Function, x: str, y: str, exact_integers: bool = False) -> str:
    """x ** y by C's rules (as PyTorch): IREE's power is exp(y log x), NaN for every negative base and for 1 ** nan;
    so |x| ** y, negated for a negative base and an odd integer y, NaN for a negative base and a non-integer y,
    and 1 where y is 0 or x is 1, or x is -1 and y infinite. `exact_integers` (float64): integer y by `_integer_pow`
    (exp(y log x) is |y log x| float64 ulps off, well within a float32 rounding)."""
    magnitude = fn.binary("power", fn.unary("abs", x), y)
    if exact_integers:
        magnitude = _integer_pow(fn, x, y, _corrected_pow(fn, fn.unary("abs", x), y, magnitude))
    zero, one, two = fn.like(0.0, x), fn.like(1.0, x), fn.like(2.0, x)
    integral = fn.compare("EQ", fn.unary("floor", y), y)
    half = fn.binary("divide", y, two)
    odd = fn.binary("and", integral, fn.compare("NE", fn.unary("floor", half), half))
    bits = fn.unary("bitcast_convert", x, Aval(fn.avals[x].shape, slope.int64))  # x is float64 here
    negative = fn.compare("LT", bits, fn.like(0, bits))  # the sign bit: -0.0 too (-0.0 ** -3 is -inf)
    infinite_y = fn.compare("EQ", fn.unary("abs", y), fn.like(math.inf, y))
    result = fn.select(fn.binary("and", negative, odd), fn.unary("negate", magnitude), magnitude)
    # NaN for a finite base below 0 only: -0.0 and -inf to a non-integer power are 0 or inf (C's pow, PyTorch)
    below = fn.binary("and", fn.compare("LT", x, zero), fn.compare("GT", x, fn.like(-math.inf, x)))
    invalid = fn.binary("and", below, fn.unary("not", fn.binary("or", integral, infinite_y)))
    result = fn.select(invalid, fn.like(math.nan, x), result)
    unit = fn.binary("or", fn.compare("EQ", y, zero), fn.compare("EQ", x, one))
    unit = fn.binary("or", unit, fn.binary("and", fn.compare("EQ", x, fn.like(-1.0, x)), infinite_y))
    return fn.select(unit, one, result)


def _int_pow(fn: Function, x: str, y: str) -> str:
    """Integer x ** y by squaring and multiplying, wrapping around (IREE's integer power stops early: 9 ** 68 gave
    6561); a negative y gives x ** (y mod 2) where |x| is 1, else 0 (PyTorch's rule)."""
    dtype = fn.avals[x].dtype
    signed = dtype.kind == "int"
    one = fn.like(1, y)
    negative = None
    if signed:
        negative = fn.compare("LT", y, fn.like(0, y))
        y = fn.select(negative, fn.binary("and", y, one), y)
    result, power = fn.like(1, x), x
    bits = dtype.bits - signed
    for bit in range(bits):
        odd = fn.compare("EQ", fn.binary("and", y, one), one)
        result = fn.select(odd, fn.binary("multiply", result, power), result)
        if bit < bits - 1:
            power = fn.binary("multiply", power, power)
            y = fn.binary("shift_right_logical", y, one)
    if negative is not None:
        unit = fn.binary("or", fn.compare("EQ", x, fn.like(1, x)), fn.compare("EQ", x, fn.like(-1, x)))
        result = fn.select(fn.binary("and", negative, fn.unary("not", unit)), fn.like(0, x), result)
    return result


def _pow(fn: Function, inputs: list[str], instruction: Instruction) -> str:
    """x ** y: floats in float64 (rounded once for narrower dtypes) with C's special cases, integers wrapping."""
    dtype = _out(instruction).dtype
    if dtype.is_float:
        return in_float64(fn, inputs, dtype, lambda x, y: _float_pow(fn, x, y, dtype == slope.float64))
    return _int_pow(fn, *inputs)


def _fmod(fn: Function, inputs: list[str], instruction: Instruction) -> str:
    dtype = _out(instruction).dtype
    if dtype.is_float:  # StableHLO's remainder is C's fmod: the dividend's sign
        return in_float32(fn, inputs, dtype, lambda x, y: fn.binary("remainder", x, y))
    x, y = inputs
    return fn.binary("subtract", x, fn.binary("multiply", safe_int_div(fn, x, y), y))


def _where(fn: Function, inputs: list[str], instruction: Instruction) -> str:
    return fn.select(*inputs)


# ----------------------------------------------------------------------------------------------- reductions

# A matrix product (matmul, conv) contracting more than DOT_UNBLOCKED elements is taken in blocks of DOT_BLOCK, whose
# products are added in float64 (Function.blocked_product); the MLP and CNN benchmarks' products (at most 43,264: the
# CNN's first weight gradient) stay one dot_general
DOT_UNBLOCKED = 65536
DOT_BLOCK = 4096

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
    x = fn.summable(x)
    if not out.dtype.is_float:
        return fn.reshape(fn.reduce(x, "add", 0, dim), out.shape)
    count = math.prod(shape[d] for d in dim)
    if fn.producers.get(x) == "multiply" and not fn.dynamic:
        # IREE 3.13 takes a sum of a product for a contraction and fails on some ("'vector.contract' op invalid
        # accumulator/result vector shape", a sum of a broadcast product in a second derivative): keep them apart
        x = fn.unfolded(x)
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
    """A transpose; that of a matrix product's last two dimensions is the product of the swapped factors (no copy:
    (x @ y)^T = y^T @ x^T, the factors read transposed by dot_general)."""
    result = fn.transpose(inputs[0], instruction.params["perm"])
    product = fn.products.get(inputs[0])
    if product is not None and fn.unswapped(result)[1]:
        x, y, x_swapped, y_swapped = product
        return fn.matrix_product(y, x, not y_swapped, not x_swapped)
    return result


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
    x, out = fn.apart(inputs[0]), _out(instruction)
    if out.dtype == slope.uint8:  # IREE 3.13 cannot lower a reverse of ui8: reverse the same bytes as i8
        x = fn.unary("bitcast_convert", x, Aval(out.shape, slope.int8))
    reversed_ = fn.emit(f"stablehlo.reverse {x}, dims = [{', '.join(map(str, dims))}] : {fn.type(x)}", fn.avals[x])
    return fn.unary("bitcast_convert", reversed_, out) if out.dtype == slope.uint8 else reversed_


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
    if _in(instruction, 0).shape[-1] == 0:  # sums of no products (IREE's compiler crashed on a dot of size 0)
        return fn.constant(0, out)
    if out.dtype.name in _HALF:
        return in_float32(fn, inputs, out.dtype, fn.matrix_product)
    # a factor that is a transpose of its last two dimensions is read as it is (the MLP step's x.T @ ct, ct @ w.T)
    (x, x_swapped), (y, y_swapped) = fn.unswapped(inputs[0]), fn.unswapped(inputs[1])
    return fn.matrix_product(x, y, x_swapped, y_swapped)


def _conv(fn: Function, inputs: list[str], instruction: Instruction) -> str:
    """N-d grouped, strided, dilated, padded cross-correlation, x (N, C, *spatial) and w (O, C/groups, *kernel), as one
    matrix product of patches (im2col), channels last: IREE 3.13 runs a stablehlo.convolution 10-20x slower than a
    matrix product of the same work on the CPU (45 ms for the MNIST CNN's second convolution, 2.8 ms this way) and
    fails to compile a grouped float16 one. The patches come from one strided slice per kernel offset, or per output
    position when the kernel has more offsets than the output has positions (a weight gradient's 24x24 "kernel").
    float16/bfloat16 in float32."""
    out, params = _out(instruction), instruction.params
    x_aval, w_aval = _in(instruction, 0), _in(instruction, 1)
    if x_aval.size == 0 or w_aval.size == 0:  # sums over no input channels
        return fn.constant(0, out)
    n, groups = out.ndim - 2, params["groups"]
    batch, channels, outs = x_aval.shape[0], x_aval.shape[1], out.shape[2:]
    kernel, per_group, out_per_group = w_aval.shape[2:], channels // groups, out.shape[1] // groups
    stride, dilation = params["stride"], params["dilation"]
    taps, positions = math.prod(kernel), math.prod(outs)

    def window(x: str, start: list, stop: list, step: list) -> str:
        aval = fn.avals[x]
        shape = tuple(-(-(b - a) // s) for a, b, s in zip(start, stop, step))
        if shape == aval.shape:
            return x
        spans = ", ".join(f"{a}:{b}:{s}" for a, b, s in zip(start, stop, step))
        out = Aval(shape, aval.dtype)
        return fn.emit(f"stablehlo.slice {x} [{spans}] : ({fn.type(x)}) -> {fn.tensor_type(out)}", out)

    def concat(parts: list[str], dim: int) -> str:
        if len(parts) == 1:
            return parts[0]
        avals = [fn.avals[p] for p in parts]
        shape = list(avals[0].shape)
        shape[dim] = sum(a.shape[dim] for a in avals)
        out = Aval(tuple(shape), avals[0].dtype)
        types = ", ".join(fn.type(p) for p in parts)
        return fn.emit(f"stablehlo.concatenate {', '.join(parts)}, dim = {dim} : ({types}) -> "
                       f"{fn.tensor_type(out)}", out)  # fmt: skip

    def convolve(x: str, w: str) -> str:
        x = fn.transpose(x, (0, *range(2, n + 2), 1))  # (N, *spatial, C)
        if any(lo or hi for lo, hi in params["padding"]):
            shape = fn.avals[x].shape
            padded = Aval((batch, *(s + lo + hi for s, (lo, hi) in zip(shape[1:-1], params["padding"])), channels),
                          fn.avals[x].dtype)  # fmt: skip
            lo, hi = zip(*params["padding"])
            x = _pad_value(fn, x, (0, *lo, 0), (0, *hi, 0), 0, padded)
        parts = []
        if taps <= positions:  # one strided view per kernel offset: (N, *outs, C) each
            for offset in np.ndindex(*kernel):
                begin = [k * d for k, d in zip(offset, dilation)]
                end = [b + (o - 1) * s + 1 for b, o, s in zip(begin, outs, stride)]
                parts.append(window(x, [0, *begin, 0], [batch, *end, channels], [1, *stride, 1]))
            patches = concat(parts, n + 1)  # (N, *outs, taps * C), offset-major
        else:  # one dilated window per output position: (N, 1, taps * C) each
            for position in np.ndindex(*outs):
                begin = [p * s for p, s in zip(position, stride)]
                end = [b + (k - 1) * d + 1 for b, k, d in zip(begin, kernel, dilation)]
                part = window(x, [0, *begin, 0], [batch, *end, channels], [1, *dilation, 1])
                parts.append(fn.reshape(part, (batch, 1, taps * channels)))
            patches = concat(parts, 1)
        # weights (O, C/g, *kernel) -> (g, taps * C/g, O/g), rows in the patches' (offset, channel) order
        weights = fn.reshape(w, (groups, out_per_group, per_group, *kernel))
        weights = fn.transpose(weights, (0, *range(3, n + 3), 2, 1))
        weights = fn.reshape(weights, (groups, taps * per_group, out_per_group))
        rows = batch * positions
        if groups == 1:
            flat = fn.reshape(patches, (rows, taps * channels))
            product = fn.matrix_product(flat, fn.reshape(weights, (taps * channels, out_per_group)))
        else:
            grouped = fn.reshape(patches, (rows, taps, groups, per_group))
            grouped = fn.reshape(fn.transpose(grouped, (2, 0, 1, 3)), (groups, rows, taps * per_group))
            product = fn.reshape(fn.transpose(fn.matrix_product(grouped, weights), (1, 0, 2)), (rows, out.shape[1]))
        product = fn.reshape(product, (batch, *outs, out.shape[1]))
        return fn.transpose(product, (0, n + 1, *range(1, n + 1)))

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
    # (0 in such a run, which raises: IREE reads and writes out of bounds otherwise, a crash for x[10**8])
    return fn.select(outside, fn.like(0, index), index)


_GATHER = "slope.gather_nd (x[index], slope.getitem)"
_SCATTER = "slope.scatter_nd (x.at[index], gradients of x[index])"
_RANGE = "an index is out of range (indices must lie in [-size, size) of the dimension they index)"


def _gather_nd(fn: Function, inputs: list[str], instruction: Instruction) -> str:
    x_aval, index_aval, out = _in(instruction, 0), _in(instruction, 1), _out(instruction)
    k, batch = index_aval.shape[-1], index_aval.ndim - 1
    if k == 0:  # empty index vectors pick all of x
        return fn.broadcast(inputs[0], out.shape)
    index = checked_indices(fn, inputs[1], x_aval.shape[:k], f"{_GATHER}: {_RANGE}")
    if 0 in x_aval.shape[:k]:  # no slice to take (StableHLO refuses one); any index fails the check when it runs
        return fn.constant(False if out.dtype == slope.bool_ else 0, out)
    x = fn.apart(inputs[0])
    offsets = ", ".join(map(str, range(batch, batch + x_aval.ndim - k)))
    leading = ", ".join(map(str, range(k)))
    sizes = array_attr([1] * k + list(x_aval.shape[k:]))
    text = (f'"stablehlo.gather"({x}, {index}) {{dimension_numbers = #stablehlo.gather<offset_dims = '
            f"[{offsets}], collapsed_slice_dims = [{leading}], start_index_map = [{leading}], index_vector_dim = "
            f"{batch}>, indices_are_sorted = false, slice_sizes = {sizes}}} : ({fn.type(x)}, "
            f"{fn.type(index)}) -> {fn.tensor_type(out)}")  # fmt: skip
    return fn.emit(text, out)


# the most elements a scatter's operand or updates may have: IREE 3.13 lowers a scatter with 32-bit offsets, and one
# into 2**31 + 100 uint8 elements added nothing (or crashed the process) where 2**31 - 1000 elements were right
SCATTER_LIMIT = 2**31 - 1


def check_scatter_size(operator: str, x: Aval, updates: Aval) -> None:
    """Raise SlopeBackendError for a scatter that IREE would get wrong: x or the updates past SCATTER_LIMIT elements."""
    for role, aval in (("x", x), ("the updates", updates)):
        if aval.size > SCATTER_LIMIT:
            raise slope.SlopeBackendError(
                f"{operator}: the iree backend cannot scatter with {role} of shape {aval.shape} ({aval.size} "
                f"elements): IREE's scatter handles at most 2**31 - 1 = {SCATTER_LIMIT} (it gave wrong values past "
                "that); use the onnxruntime or numpy backend, or split x"
            )


def _scatter_nd(fn: Function, inputs: list[str], instruction: Instruction) -> str:
    x_aval, index_aval, out = _in(instruction, 0), _in(instruction, 1), _out(instruction)
    if out.dtype.name in _HALF:  # added in float32, rounded once, as onnxruntime and the numpy backend (1000 bfloat16
        # ones added one by one in bfloat16 stop at 256)
        wide = Aval(out.shape, slope.float32)

        def scatter(x: str, updates: str) -> str:
            # IREE 3.13 fuses the conversion of the updates into the scatter's dispatch as a stack buffer, which fails
            # to compile past 32 KiB ("exceeded stack allocation limit": 256 float16 rows of 64, an embedding's
            # gradient): keep the converted updates apart
            updates = fn.unfolded(updates)
            return _scatter(fn, x, inputs[1], updates, wide, index_aval, wide)

        return in_float32(fn, [inputs[0], inputs[2]], out.dtype, scatter)
    return _scatter(fn, *inputs, x_aval, index_aval, out)


def _scatter(fn: Function, x: str, index: str, updates: str, x_aval: Aval, index_aval: Aval, out: Aval) -> str:
    k, batch = index_aval.shape[-1], index_aval.ndim - 1
    combine = "or" if out.dtype == slope.bool_ else "add"
    if k == 0:  # every update adds to all of x
        total = fn.reduce(fn.summable(updates), combine, False if combine == "or" else 0, range(batch))
        return fn.binary(combine, x, total)
    if 0 in index_aval.shape[:-1]:  # no updates: x (IREE 3.13's compiler crashes on a scatter of none)
        return x
    check_scatter_size(_SCATTER, x_aval, fn.avals[updates])
    index = checked_indices(fn, index, x_aval.shape[:k], f"{_SCATTER}: {_RANGE}")
    # each update is added into (a copy of) x in turn, in index order, as PyTorch, NumPy and onnxruntime do (summing
    # the updates into zeros first, then adding x, rounded and overflowed differently: [1e308, 0].at[[0, 0]].add(
    # [-1e308, -1e308]) gave -inf). StableHLO leaves the order of repeated indices to the implementation; IREE 3.13's
    # CPU code runs a scatter that is not `unique_indices` serially over the updates, in order (3000 updates into 3
    # rows agree bit for bit with PyTorch's: test_an_index_add_with_repeated_indices_adds_into_x_in_turn_as_pytorch)
    x = fn.scatter_target(x)
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
    "sin": _periodic("sine"),
    "cos": _periodic("cosine"),
    "sqrt": _unary("sqrt"),
    "tanh": _tanh,
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
    "pow": _pow,
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
    "SCATTER_LIMIT",
    "build_module",
    "check_scatter_size",
    "in_float32",
    "tensor_type",
    "translations",
]
