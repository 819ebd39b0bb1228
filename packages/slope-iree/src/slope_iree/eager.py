"""Shape-generic modules, so that eager mode compiles once per operator and dtype (and parameters), not per shape.

Eager mode compiles every operator for every new signature; with IREE that is 0.15-0.5 s a time, which would make
eager mode unusable. Most eager calls are elementwise (arithmetic, comparisons, casts, unary functions: every input
and output of one shape), and an elementwise program gives the same numbers on its inputs flattened to one dimension.
So such a program is translated once, flattened, in translate.py's dynamic mode (`tensor<?xf32>`): one module serves
every shape of every rank, and a call only re-views its buffers as 1-D and its results back (a HalBufferView is a
shape over a buffer: nothing is copied).

A program of one other operator (eager mode's other calls) is, where the operator allows it (`single_run`):
- `reshape`: a new view of the same buffer (no module); `full`: a NumPy array copied to the device (no module);
- `permute`, `sum`, `max`, `matmul`, `expand`: one module with every dimension dynamic (`tensor<?x?xf32>`), serving
  every shape of a rank: a reduction's dimensions, a permutation and an expansion's pattern (which dimensions grow
  from 1) are in the text, so shapes that differ in them get their own module; `keepdim` re-views the result;
  `expand` takes its target shape as a run-time argument. float64 sums (added in stages whose number depends on the
  size) and programs with an empty tensor are compiled per shape;
- `slice`, `pad`: one module per rank and dtype (and a slice's steps), their bounds, amounts and padding value
  run-time arguments (a gradient slices and pads at every new shape and offset: the conformance matrix compiled ~400
  such modules in 1,700); uint8 pads and 0-d programs are compiled per shape. A jitted one-operator function shares
  these modules, so its `.lower(...).code` shows the generic text (`.export` writes the per-shape module).
`expand`, `slice` and `pad` write their dynamic text themselves: where a plugin replaces one's translation, that
operator is compiled per shape with the plugin's.
Other programs (gathers, concatenations, jitted functions, ...) are compiled per shape, and kept on disk like every
module.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

import slope
from slope import Aval, Instruction, Program, Var
from slope.operators import Elementwise

from . import runtime, translate
from .translate import DOT_UNBLOCKED, DYNAMIC_SAFE, ELEMENT_TYPES, array_attr, build_module

failed: set[str] = set()  # generic modules the compiler rejected: those programs are compiled per shape


def elementwise_shape(program: Program) -> tuple[int, ...] | None:
    """The one shape of every value of a program made only of elementwise operators (None for other programs)."""
    if program.constants or not program.inputs or not program.instructions:
        return None
    shape = program.inputs[0].aval.shape
    for instruction in program.instructions:
        if not isinstance(instruction.op, Elementwise) or instruction.op.name not in DYNAMIC_SAFE:
            return None
        if any(v.aval.shape != shape for v in instruction.inputs + instruction.outputs):
            return None
    if any(v.aval.shape != shape for v in program.inputs + program.outputs):
        return None
    return shape


def generic_text(program: Program, translations: dict[str, Callable]) -> str:
    """The module of an elementwise program flattened to 1-D, its length dynamic (`tensor<?xf32>`)."""
    flat: dict[Var, Var] = {}

    def var(v: Var) -> Var:
        if v not in flat:
            flat[v] = Var(Aval((1,), v.aval.dtype))  # (any length: the dynamic module never spells it)
        return flat[v]

    instructions = [
        Instruction(i.op, [var(v) for v in i.inputs], i.params, [var(v) for v in i.outputs])
        for i in program.instructions
    ]
    flat_program = Program([var(v) for v in program.inputs], instructions, [var(v) for v in program.outputs])
    return build_module(flat_program, translations, dynamic=True)[0]


def reshaping(call: Callable[[list], list], shape: tuple[int, ...], views: Any) -> Callable[[list], list]:
    """`call` on buffers re-viewed as 1-D, its results re-viewed in `shape` (no copies)."""
    if len(shape) == 1:
        return call
    size = 1
    for d in shape:
        size *= d
    flat, full = [size], list(shape)
    view_type = views.HalBufferView

    def run(buffers: list) -> list:
        outs = call([view_type(b.get_buffer(), flat, b.element_type) for b in buffers])
        return [view_type(b.get_buffer(), full, b.element_type) for b in outs]

    return run


# operators whose one-instruction programs compile to a module with every dimension dynamic (see single_run)
DYNAMIC_SINGLE = frozenset(["permute", "sum", "max", "matmul", "expand", "slice", "pad"])
# those whose dynamic module single_run writes itself (not with the translation in use)
_OWN_TEXT = {"expand": translate._expand, "slice": translate._slice, "pad": translate._pad}


def single_instruction(program: Program) -> Instruction | None:
    """The one instruction of a program that applies it to its inputs and returns its outputs, of no empty tensor."""
    if program.constants or len(program.instructions) != 1:
        return None
    (instruction,) = program.instructions
    if list(program.inputs) != list(instruction.inputs) or list(program.outputs) != list(instruction.outputs):
        return None
    if any(v.aval.size == 0 for v in instruction.inputs + instruction.outputs):
        return None  # (IREE dislikes some empty operations: the per-shape translation handles them)
    return instruction


def single_run(program: Program, translations: dict[str, Callable], device: str) -> tuple[Callable, str] | None:
    """A run for a one-operator program that needs no module of its shapes, and its code: its dynamic module's text,
    "" when it runs no module (None for other programs)."""
    instruction = single_instruction(program)
    if instruction is None:
        return None
    name, out = instruction.op.name, instruction.outputs[0].aval
    views = runtime.iree().HalBufferView
    if name == "reshape":
        shape = list(out.shape)
        return (lambda buffers: [views(buffers[0].get_buffer(), shape, buffers[0].element_type)]), ""
    if name == "full":
        array = np.full(out.shape, scalar(instruction.params["value"], out.dtype), out.dtype.numpy)
        return (lambda buffers: [runtime.from_numpy(array, device)]), ""
    if name not in DYNAMIC_SINGLE or (name == "sum" and out.dtype == slope.float64):
        return None
    if name == "matmul" and out.dtype.is_float and instruction.inputs[0].aval.shape[-1] > DOT_UNBLOCKED:
        return None  # contracted in blocks, which a module of every shape cannot choose (translate.blocked_product)
    if name in _OWN_TEXT and translations.get(name) is not _OWN_TEXT[name]:
        return None  # (a plugin's translation replaces slope-iree's: its text, per shape)
    if name in ("slice", "pad") and out.ndim == 0:
        return None
    if name == "pad" and out.dtype == slope.uint8:
        return None  # (IREE 3.13 cannot extract a ui8 scalar for the padding value: padded per shape)
    extra: list = []  # arrays passed after the inputs, then integers
    numbers: tuple[int, ...] = ()
    if name == "expand":
        text = _expand_text(instruction)
        extra = [np.array(out.shape, np.int64)]
    elif name in ("slice", "pad"):
        text, extra, numbers = _slice_text(instruction) if name == "slice" else _pad_text(instruction)
    else:
        if name in ("sum", "max") and instruction.params["keepdim"]:  # reduced without keepdim, then re-viewed
            params = {**instruction.params, "keepdim": False}
            reduced = Var(instruction.op.infer(instruction.inputs[0].aval, **params))
            instruction = Instruction(instruction.op, instruction.inputs, params, [reduced])
        generic = Program(list(instruction.inputs), [instruction], list(instruction.outputs))
        text = build_module(generic, translations, dynamic=True)[0]
    if text in failed:
        return None
    try:
        call = runtime.function(text, device, 1, scalars=numbers)
    except slope.SlopeBackendError:  # the compiler rejected it: this program is compiled per shape
        failed.add(text)
        return None
    if extra:
        extra = [runtime.from_numpy(array, device) for array in extra]
        plain = call
        call = lambda buffers: plain([*buffers, *extra])  # noqa: E731
    if instruction.outputs[0].aval.shape == out.shape:
        return call, text
    shape = list(out.shape)

    def reviewed(buffers: list) -> list:
        (result,) = call(buffers)
        return [views(result.get_buffer(), shape, result.element_type)]

    return reviewed, text


def _slice_text(instruction: Instruction) -> tuple[str, list, tuple[int, ...]]:
    """slice as a real_dynamic_slice whose start and stop are run-time integers (its steps are in the text: a copy of
    run-time steps is not vectorized), one module per rank, dtype and steps."""
    tensor, params, ndim = _dynamic_type(instruction), instruction.params, instruction.outputs[0].aval.ndim
    index = f"tensor<{ndim}xi64>"
    names = {side: [f"%{side}{d}" for d in range(ndim)] for side in ("start", "stop")}
    text = (
        f"func.func @main(%x: {tensor}, {', '.join(f'{n}: i64' for n in names['start'] + names['stop'])}) -> ({tensor}) {{\n"
        f"    %start = tensor.from_elements {', '.join(names['start'])} : {index}\n"
        f"    %stop = tensor.from_elements {', '.join(names['stop'])} : {index}\n"
        f"    %step = stablehlo.constant dense<[{', '.join(map(str, params['step']))}]> : {index}\n"
        f"    %v0 = stablehlo.real_dynamic_slice %x, %start, %stop, %step : ({tensor}, {index}, {index}, {index}) "
        f"-> {tensor}\n    return %v0 : {tensor}\n}}\n"
    )
    return text, [], (*params["start"], *params["stop"])


def _pad_text(instruction: Instruction) -> tuple[str, list, tuple[int, ...]]:
    """pad as a tensor.pad whose value (a 0-d tensor) and amounts (integers) are run-time arguments, one module per
    rank and dtype (StableHLO's dynamic_pad does not compile in IREE 3.13)."""
    tensor, out, params = _dynamic_type(instruction), instruction.outputs[0].aval, instruction.params
    element = ELEMENT_TYPES[out.dtype.name]
    names = {side: [f"%{side}{d}" for d in range(out.ndim)] for side in ("lo", "hi")}
    lines = [f"func.func @main(%x: {tensor}, %value: tensor<{element}>, "
             f"{', '.join(f'{n}: i64' for n in names['lo'] + names['hi'])}) -> ({tensor}) {{",
             f"    %fill = tensor.extract %value[] : tensor<{element}>"]  # fmt: skip
    lines += [f"    {n}_index = arith.index_cast {n} : i64 to index" for n in names["lo"] + names["hi"]]
    low, high = (", ".join(f"{n}_index" for n in names[side]) for side in ("lo", "hi"))
    lines += [
        f"    %v0 = tensor.pad %x low[{low}] high[{high}] {{",
        f"    ^bb0({', '.join(f'%i{d}: index' for d in range(out.ndim))}):",
        f"      tensor.yield %fill : {element}",
        f"    }} : {tensor} to {tensor}",
        f"    return %v0 : {tensor}\n}}\n",
    ]
    value = np.array(scalar(params["value"], out.dtype), out.dtype.numpy)
    return "\n".join(lines), [value], (*params["lo"], *params["hi"])


def _dynamic_type(instruction: Instruction) -> str:
    """The type of an instruction's output with every dimension dynamic: `tensor<?x?xf32>`."""
    out = instruction.outputs[0].aval
    return f"tensor<{'?x' * out.ndim}{ELEMENT_TYPES[out.dtype.name]}>"


def scalar(value: Any, dtype: slope.DType) -> Any:
    """A parameter's value as the dtype holds it (as translate.literal writes it into a module)."""
    if dtype == slope.bool_:
        return bool(value)
    if dtype.is_float:
        return np.array(value, dtype=dtype.numpy)
    return np.array(value).astype(dtype.numpy)


def _expand_text(instruction: Instruction) -> str:
    """expand as a dynamic_broadcast_in_dim to a run-time shape; which dimensions grow from 1 is in the text."""
    x, out = instruction.inputs[0].aval, instruction.outputs[0].aval
    growing = [d for d in range(out.ndim) if x.shape[d] == 1 and out.shape[d] != 1]
    kept = [d for d in range(out.ndim) if d not in growing]
    element = ELEMENT_TYPES[out.dtype.name]
    tensor = f"tensor<{'?x' * out.ndim}{element}>"
    shape = f"tensor<{out.ndim}xi64>"
    return (
        f"func.func @main(%x: {tensor}, %shape: {shape}) -> ({tensor}) {{\n"
        f"    %v0 = stablehlo.dynamic_broadcast_in_dim %x, %shape, dims = [{', '.join(map(str, range(out.ndim)))}] "
        f"{{known_expanding_dimensions = {array_attr(growing)}, known_nonexpanding_dimensions = {array_attr(kept)}}}"
        f" : ({tensor}, {shape}) -> {tensor}\n"
        f"    return %v0 : {tensor}\n}}\n"
    )
