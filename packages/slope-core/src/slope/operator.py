"""The Operator contract: one definition holds an operator's parameters, inference and transformation rules."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

from .errors import DTypeError, ShapeError, SlopeError, SlopeMemoryError  # noqa: F401 - re-exported
from .ir import Aval
from .tensors import Tensor
from .trace import bind, make_program, run_procedure


@dataclass(slots=True)
class UndefinedPrimal:
    """Stands for a linear input while a linear Program is transposed."""

    aval: Aval


class Operator:
    """A primitive operation backends translate and transformations know: subclasses give `name`, `infer` and rules."""

    name: str = ""  # (by default the class name in snake case: class GatherNd is operator gather_nd)
    multiple_results: bool = False
    linear_inputs: tuple[int, ...] | str = ()  # jointly linear inputs, "all", or "each" (multilinear): gives the JVP
    symbolic_zeros: bool = False  # the JVP rule takes None for a tangent known to be zero (so does the product rule)
    inline: bool = False  # run eagerly through its procedure (Programs record it: replayed, it meets the transforms)
    procedure: Callable | None = None  # `procedure(*args, **params)` from other operators: for backends and rules

    def __init_subclass__(cls) -> None:  # (the default name)
        snake_case = re.sub(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", cls.__name__).lower()
        cls.name = cls.__dict__.get("name") or snake_case

    def __init__(self, name: str | None = None, doc: str | None = None):  # one class may serve several operators,
        self.name, self.__doc__ = name or self.name, doc or self.__doc__  # each with its own name and docstring

    __call__ = bind  # (`op(*args, **params)` is `bind(op, *args, **params)`)

    def infer(self, *avals: Aval, **params: Any) -> Aval | list[Aval]:
        """The output abstract value(s), by default from tracing the procedure; a ShapeError or DTypeError for misfits."""
        if self.procedure is None:
            raise NotImplementedError(f"slope.{self.name}: the operator defines neither `infer` nor a `procedure`")
        outs = make_program(lambda *xs: run_procedure(self, list(xs), params), list(avals)).out_avals
        return outs if self.multiple_results else outs[0]

    def jvp(self, primals: list, tangents: list, **params: Any) -> tuple[list, list]:
        """Forward-mode rule giving `(primal_outs, tangent_outs)`; linear operators get it from `linear_inputs`."""
        if not self.linear_inputs:
            raise NotImplementedError
        if self.linear_inputs == "each":  # the product rule: a term per input with a tangent (None: a zero one)
            given = [(i, t) for i, t in enumerate(tangents) if t is not None]
            terms = [bind(self, *primals[:i], t, *primals[i + 1 :], **params) for i, t in given]
            return [bind(self, *primals, **params)], [sum(terms[1:], terms[0])]
        linear = range(len(primals)) if self.linear_inputs == "all" else self.linear_inputs
        args = [t if i in linear else p for i, (p, t) in enumerate(zip(primals, tangents))]
        return [bind(self, *primals, **params)], [bind(self, *args, **params)]

    def transpose(self, cotangents: list, *args: Any, **params: Any) -> list:
        """Transpose rule: `[cotangent or None per input]`, where the linear inputs arrive as `UndefinedPrimal`."""
        raise NotImplementedError

    def vmap(self, axis_size: int, args: list, dims: list, **params: Any) -> tuple[list, list]:
        """Batching rule: `(outs, out_dims)`, where a dim is an int or None (not batched)."""
        raise NotImplementedError

    def has_rule(self, rule: str) -> bool:
        """Whether the operator defines this rule itself (rather than through its procedure)."""
        if rule == "jvp" and self.linear_inputs and (self.has_rule("transpose") or not self.has_rule("procedure")):
            return True  # (from linear_inputs; without a transpose, a procedure's JVP keeps reverse mode working)
        return getattr(type(self), rule) is not getattr(Operator, rule)

    def shape_error(self, message: str) -> ShapeError:
        """A ShapeError that names this operator."""
        return ShapeError(f"slope.{self.name}: {message}")

    def dtype_error(self, message: str) -> DTypeError:
        """A DTypeError that names this operator."""
        return DTypeError(f"slope.{self.name}: {message}")

    def __repr__(self) -> str:
        return f"slope.{self.name}"


def move_axis(x: Tensor, source: int, destination: int) -> Tensor:
    """The tensor with one dimension moved."""
    perm = [d for d in range(x.ndim) if d != source]  # (permute returns x itself for the identity)
    perm.insert(destination, source)
    return x.permute(tuple(perm))


def batch_to_front(x: Tensor, dim: int | None, axis_size: int) -> Tensor:
    """The tensor with its batch dimension first; an unbatched tensor is broadcast along a new one."""
    return x.reshape((1, *x.shape)).expand((axis_size, *x.shape)) if dim is None else move_axis(x, dim, 0)
