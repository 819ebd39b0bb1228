"""Shape-generic modules for elementwise programs, so that eager mode compiles once per operator and dtype.

Eager mode compiles every operator for every new signature; with IREE that is 0.15-0.5 s a time, which would make
eager mode unusable. Most eager calls are elementwise (arithmetic, comparisons, casts, unary functions: every input
and output of one shape), and an elementwise program gives the same numbers on its inputs flattened to one dimension.
So such a program is translated once for a 1-D input of a placeholder length, and the placeholder becomes a dynamic
dimension (`tensor<?xf32>`): one module then serves every shape of every rank, and a call only re-views its buffers
as 1-D and its results back (a HalBufferView is a shape over a buffer: nothing is copied).

Splat constants and broadcasts a translation wrote for the placeholder shape become `dynamic_broadcast_in_dim`s to
the runtime length. Anything else that mentions the placeholder length leaves the program static (correct, just
compiled per shape); other programs (reductions, reshapes, matmul, ...) are compiled per shape and kept on disk.
"""

from __future__ import annotations

import re
from typing import Any, Callable

from slope import Aval, Instruction, Program, Var
from slope.operators import Elementwise

PLACEHOLDER = 65521  # the length the generic program is translated for (a prime no translation computes by chance)
_TYPE = re.compile(rf"tensor<{PLACEHOLDER}x([a-z0-9]+)>")
_CONSTANT = re.compile(r"^(\s*)(%\w+) = stablehlo\.constant (dense<[^>]*>) : tensor<\?x(\w+)>$")
_BROADCAST = re.compile(r"^(\s*)(%\w+) = stablehlo\.broadcast_in_dim (%\w+), dims = \[\] : \((tensor<\w+>)\) -> "
                        r"tensor<\?x(\w+)>$")  # fmt: skip


def elementwise_shape(program: Program) -> tuple[int, ...] | None:
    """The one shape of every value of a program made only of elementwise operators (None for other programs)."""
    if program.constants or not program.inputs or not program.instructions:
        return None
    shape = program.inputs[0].aval.shape
    for instruction in program.instructions:
        if not isinstance(instruction.op, Elementwise):
            return None
        if any(v.aval.shape != shape for v in instruction.inputs + instruction.outputs):
            return None
    if any(v.aval.shape != shape for v in program.inputs + program.outputs):
        return None
    return shape


def flat_program(program: Program) -> Program:
    """The same program on 1-D values of the placeholder length."""
    flat: dict[Var, Var] = {}

    def var(v: Var) -> Var:
        if v not in flat:
            flat[v] = Var(Aval((PLACEHOLDER,), v.aval.dtype))
        return flat[v]

    inputs = [var(v) for v in program.inputs]
    instructions = [
        Instruction(i.op, [var(v) for v in i.inputs], i.params, [var(v) for v in i.outputs])
        for i in program.instructions
    ]
    return Program(inputs, instructions, [var(v) for v in program.outputs])


def generic_text(text: str) -> str | None:
    """The module text of a flat program with its placeholder length made dynamic; None where that is not safe."""
    lines = text.splitlines()
    signature = re.match(r"func\.func @main\((%\w+): tensor<" + str(PLACEHOLDER) + r"x(\w+)>", lines[0])
    if signature is None:
        return None
    text = _TYPE.sub(r"tensor<?x\1>", text)
    out = []
    for line in text.splitlines():
        constant, broadcast = _CONSTANT.match(line), _BROADCAST.match(line)
        if constant:
            indent, name, value, element = constant.groups()
            out.append(f"{indent}{name}_scalar = stablehlo.constant {value} : tensor<{element}>")
            out.append(f"{indent}{name} = stablehlo.dynamic_broadcast_in_dim {name}_scalar, %slope_length, dims = [] "
                       f": (tensor<{element}>, tensor<1xi32>) -> tensor<?x{element}>")  # fmt: skip
        elif broadcast:
            indent, name, source, source_type, element = broadcast.groups()
            out.append(f"{indent}{name} = stablehlo.dynamic_broadcast_in_dim {source}, %slope_length, dims = [] "
                       f": ({source_type}, tensor<1xi32>) -> tensor<?x{element}>")  # fmt: skip
        else:
            out.append(line)
    if str(PLACEHOLDER) in "\n".join(out):  # a size computed from the length: keep the program static
        return None
    first, element = signature.groups()
    length = []
    if element.startswith("ui"):  # IREE cannot take the size of an unsigned tensor: measure its signless twin
        signless = element[1:]
        length.append(f"    %slope_signless = stablehlo.bitcast_convert {first} : (tensor<?x{element}>) -> "
                      f"tensor<?x{signless}>")  # fmt: skip
        first, element = "%slope_signless", signless
    length += [
        f"    %slope_size = stablehlo.get_dimension_size {first}, dim = 0 : (tensor<?x{element}>) -> tensor<i32>",
        "    %slope_length = stablehlo.reshape %slope_size : (tensor<i32>) -> tensor<1xi32>",
    ]
    return "\n".join(out[:1] + length + out[1:]) + "\n"


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
