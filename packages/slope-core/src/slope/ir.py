"""The intermediate representation: abstract values, Programs of Instructions, printing and passes."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any

from .dtypes import DType


class Aval:
    """An abstract value: the shape and dtype of a tensor, without its data."""

    __slots__ = ("shape", "dtype", "_hash")

    def __init__(self, shape: tuple[int, ...], dtype: DType):
        self.shape, self.dtype, self._hash = shape, dtype, hash((shape, dtype))

    @property
    def ndim(self) -> int:
        """Number of dimensions."""
        return len(self.shape)

    @property
    def size(self) -> int:
        """Number of elements."""
        return math.prod(self.shape)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Aval) and self.shape == other.shape and self.dtype == other.dtype

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        return f"[{', '.join(str(d) for d in self.shape)}{', ' if self.shape else ''}{self.dtype.short}]"


aval_of = functools.lru_cache(1024)(Aval)  # one object per shape and dtype (cache keys then compare them by identity)


@dataclass(eq=False, slots=True)
class Var:
    """A value in a Program: produced by an input, a constant or an Instruction."""

    aval: Aval


@dataclass(eq=False, slots=True)
class Instruction:
    """One operator application: `outputs = op(*inputs, **params)`."""

    op: Any
    inputs: list[Var]
    params: dict
    outputs: list[Var]


@dataclass(eq=False, repr=False)
class Program:
    """A traced function: inputs, constants (closed-over values), instructions and outputs."""

    inputs: list[Var]
    instructions: list[Instruction]
    outputs: list[Var]
    constants: list[Var] = field(default_factory=list)
    constant_values: list[Any] = field(default_factory=list)

    @property
    def in_avals(self) -> list[Aval]:
        """Abstract values of the inputs."""
        return [v.aval for v in self.inputs]

    @property
    def out_avals(self) -> list[Aval]:
        """Abstract values of the outputs (interned: the cache keys of tensors made from them compare by identity)."""
        return [aval_of(v.aval.shape, v.aval.dtype) for v in self.outputs]

    def names(self) -> dict[Var, str]:
        """Readable names: x0.. for inputs, c0.. for constants, y0.. for everything computed."""
        names: dict[Var, str] = {}
        for prefix, variables in (("x", self.inputs), ("c", self.constants)):
            for i, v in enumerate(variables):
                names.setdefault(v, f"{prefix}{i}")
        computed = [v for instruction in self.instructions for v in instruction.outputs]
        return names | {v: f"y{i}" for i, v in enumerate(computed)}

    def __str__(self) -> str:
        names = self.names()
        args = ", ".join(f"{names[v]}: {v.aval}" for v in self.inputs)
        lines = [f"def program({args}):", *(f"    {names[v]} = constant  # {v.aval}" for v in self.constants)]
        for instruction in self.instructions:
            ins, outs = instruction.inputs, instruction.outputs
            call = ", ".join([names[v] for v in ins] + [f"{k}={p!r}" for k, p in instruction.params.items()])
            avals = f"({', '.join(str(v.aval) for v in ins)}) -> {', '.join(str(v.aval) for v in outs)}"
            lines.append(f"    {', '.join(names[v] for v in outs)} = slope.{instruction.op.name}({call}) # {avals}")
        lines.append(f"    return {', '.join(names[v] for v in self.outputs)}")
        return "\n".join(lines)

    __repr__ = __str__


def dead_code_elimination(program: Program) -> Program:
    """Drop instructions whose outputs no output depends on."""
    live, kept = set(program.outputs), []
    for instruction in reversed(program.instructions):
        if any(v in live for v in instruction.outputs):
            kept.append(instruction)
            live.update(instruction.inputs)
    used = [(v, value) for v, value in zip(program.constants, program.constant_values) if v in live]
    return Program(program.inputs, kept[::-1], program.outputs, [v for v, _ in used], [value for _, value in used])
