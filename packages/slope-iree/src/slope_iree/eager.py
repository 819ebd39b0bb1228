"""Shape-generic modules for elementwise programs, so that eager mode compiles once per operator and dtype.

Eager mode compiles every operator for every new signature; with IREE that is 0.15-0.5 s a time, which would make
eager mode unusable. Most eager calls are elementwise (arithmetic, comparisons, casts, unary functions: every input
and output of one shape), and an elementwise program gives the same numbers on its inputs flattened to one dimension.
So such a program is translated once, flattened, in translate.py's dynamic mode (`tensor<?xf32>`): one module serves
every shape of every rank, and a call only re-views its buffers as 1-D and its results back (a HalBufferView is a
shape over a buffer: nothing is copied). Other programs (reductions, reshapes, matmul, ...) are compiled per shape,
and kept on disk like every module.
"""

from __future__ import annotations

from typing import Any, Callable

from slope import Aval, Instruction, Program, Var
from slope.operators import Elementwise

from .translate import DYNAMIC_SAFE, build_module

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
