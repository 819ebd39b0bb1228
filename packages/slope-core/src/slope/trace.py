"""The interpreter stack: `bind` hands an operator to the innermost active transformation."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from . import tree
from .backend import eager_run
from .errors import SlopeTraceError, TransformError
from .ir import Aval, Instruction, Program, Var
from .tensors import Tensor


@dataclass(eq=False, slots=True)
class MainTrace:
    """One level of the interpreter stack: a transformation in progress."""

    level: int
    trace_type: type
    data: Any


class Trace:
    """A transformation's interpreter: `pure` wraps a value (or an outer tracer) as its tracer, `run` applies a rule."""

    def __init__(self, main: MainTrace):
        self.main = main

    def full_raise(self, value: Tensor) -> Tensor:
        """The value as a tracer of this trace: concrete values and outer tracers are lifted, inner ones refused."""
        if not isinstance(value, Tensor):
            raise TypeError(f"slope.bind: expected Tensor arguments, got {type(value).__name__}")
        if not isinstance(value, Tracer) or value._trace.main.level < self.main.level:
            return self.pure(value)
        if value._trace.main is self.main:
            return value
        raise SlopeTraceError(f"slope: a traced value escaped the transformation that created it (a {value.aval} tracer "
                              f"of level {value._trace.main.level} used at level {self.main.level}); return values from "
                              "transformed functions instead of storing them")  # fmt: skip


class Tracer(Tensor):
    """A Tensor seen by a transformation: it carries an abstract value and its trace."""

    __slots__ = ("_trace",)

    def __init__(self, trace: Trace, aval: Aval):  # no buffer: bool(), .numpy() raise the "traced value" error
        self._trace, self.aval, self.buffer = trace, aval, None

    def full_lower(self) -> Tensor:
        """This value at the lowest level it can be expressed at."""
        return self


class EagerTrace(Trace):
    """The bottom of the stack: run each operator at once on the current backend."""

    def pure(self, value: Tensor) -> Tensor:
        return value

    def run(self, op: Any, tracers: list[Tensor], params: dict) -> list[Tensor]:
        return run_procedure(op, tracers, params) if op.inline else eager_run(op, tracers, params)


def run_procedure(op: Any, tracers: list[Tensor], params: dict, rule: str = "this") -> list[Tensor]:
    """Run an operator as its procedure, giving a list of outputs like `Trace.run` (in place of a missing `rule`)."""
    if op.procedure is None:
        raise TransformError(f"slope.{op.name}: has no {rule} rule and no procedure to derive one from")
    outs = op.procedure(*tracers, **params)
    return list(outs) if op.multiple_results else [outs]


class _Stacks(threading.local):
    """This thread's interpreter stack and its dynamic part: each thread transforms (and runs eagerly) on its own."""

    stack = dynamic = (MainTrace(0, EagerTrace, None),)  # tuples, replaced and never mutated: a shared start is safe


_local = _Stacks()
_busy: list = []  # an entry per transformation in progress in any thread: while empty, bind need not read _local


@contextmanager
def new_main(trace_type: type, data: Any = None, dynamic: bool = False) -> Iterator[Trace]:
    """Push a transformation on this thread's stack for the block, giving its trace (a dynamic one sees every bind)."""
    saved = _local.stack, _local.dynamic
    main = MainTrace(len(saved[0]), trace_type, data)
    _local.stack, _local.dynamic = saved[0] + (main,), saved[1] + (main,) if dynamic else saved[1]
    _busy.append(None)  # (list append and pop are atomic: no lock)
    try:
        yield trace_type(main)
    finally:
        _busy.pop()
        _local.stack, _local.dynamic = saved


def active(trace_type: type | None = None) -> bool:
    """Whether a transformation (of this kind, if given) is in progress in this thread."""
    return bool(_busy) and any(trace_type in (None, main.trace_type) for main in _local.stack[1:])


def is_eager() -> bool:
    """Whether no transformation is active in this thread (operators run at once)."""
    return not _busy or len(_local.stack) == 1


def bind(op: Any, *args: Tensor, **params: Any) -> Any:
    """Apply an operator to tensors through the innermost transformation that sees them."""
    if not _busy or len(_local.stack) == 1:
        outs = eager_run(op, args, params)
    else:
        tracer_mains = [a._trace.main for a in args if isinstance(a, Tracer)]
        main = max([_local.dynamic[-1], *tracer_mains], key=lambda m: m.level)  # (on a tie, the first: the dynamic one)
        top = main.trace_type(main)
        tracers = list(map(top.full_raise, args))  # (not a comprehension: that would make `top` a cell on every call)
        outs = [o.full_lower() if isinstance(o, Tracer) else o for o in top.run(op, tracers, params)]
    return outs if op.multiple_results else outs[0]


@dataclass
class ProgramBuilder:
    """Collects the instructions of a Program while a function is traced."""

    lower_for: frozenset[str] | None = None
    instructions: list[Instruction] = field(default_factory=list)
    constants: dict[int, tuple[Tensor, ProgramTracer]] = field(default_factory=dict)


class ProgramTracer(Tracer):
    """A value inside a function being traced to a Program."""

    __slots__ = ("ir_var",)

    def __init__(self, trace: Trace, aval: Aval):
        super().__init__(trace, aval)
        self.ir_var = Var(aval)


class ProgramTrace(Trace):
    """Records every operator into a Program (used by jit, linearize and the lower pass)."""

    def pure(self, value: Tensor) -> Tensor:
        constants = self.main.data.constants  # a closed-over tensor becomes one constant, however often it is used
        entry = constants.get(id(value)) or constants.setdefault(id(value), (value, ProgramTracer(self, value.aval)))
        return entry[1]  # (a tracer made only for a tensor seen the first time)

    def run(self, op: Any, tracers: list[Tensor], params: dict) -> list[Tensor]:
        builder: ProgramBuilder = self.main.data
        if builder.lower_for is not None and op.name not in builder.lower_for and op.procedure is not None:
            return run_procedure(op, tracers, params)
        out_avals = op.infer(*[t.aval for t in tracers], **params)
        outs = [ProgramTracer(self, aval) for aval in (out_avals if op.multiple_results else [out_avals])]
        builder.instructions.append(Instruction(op, [t.ir_var for t in tracers], params, [t.ir_var for t in outs]))
        return outs


def make_program(flat_fn: Callable, in_avals: list[Aval], lower_for: frozenset[str] | None = None) -> Program:
    """Trace a function of a flat list of tensors (to a list of tensors) to a Program (every operator is recorded)."""
    builder = ProgramBuilder(lower_for)
    with new_main(ProgramTrace, builder, dynamic=True) as trace:
        in_tracers = [ProgramTracer(trace, aval) for aval in in_avals]
        out_tracers = [trace.full_raise(o) for o in flat_fn(*in_tracers)]
    inputs, outputs = [t.ir_var for t in in_tracers], [t.ir_var for t in out_tracers]
    constants = builder.constants.values()
    return Program(inputs, builder.instructions, outputs, [t.ir_var for _, t in constants], [v for v, _ in constants])


def eval_program(program: Program, args: list[Tensor]) -> list[Tensor]:
    """Run a Program by binding each instruction (so any active transformation sees it)."""
    env: dict[Var, Tensor] = dict(zip([*program.constants, *program.inputs], [*program.constant_values, *args]))
    for instruction in program.instructions:
        outs = bind(instruction.op, *[env[v] for v in instruction.inputs], **instruction.params)
        env.update(zip(instruction.outputs, outs if instruction.op.multiple_results else [outs]))
    return [env[v] for v in program.outputs]


def flatten_fun(fn: Callable, in_tree: tree.TreeDef) -> tuple[Callable, list]:
    """Wrap a pytree function as a function of flat tensors (to flat tensors); the output tree lands in the list."""
    from .operators import as_tensor  # (operators import this module)

    out_tree_box: list = []

    def flat_fn(*flat_args: Tensor) -> list:
        leaves, out_tree = tree.flatten(fn(*tree.unflatten(in_tree, flat_args)))
        out_tree_box.append(out_tree)
        return [as_tensor(leaf) for leaf in leaves]

    return flat_fn, out_tree_box
