"""Registers slope-distributed with Slope (entry point `slope: distributed`): the `all_reduce` operator, and
`slope.distributed` as a name for the `slope_distributed` package."""

from __future__ import annotations

import sys

import slope
import slope_distributed
from slope.plugins import hookimpl

sys.modules.setdefault("slope.distributed", slope_distributed)  # `import slope.distributed as dist`


@hookimpl
def slope_operators() -> list:
    """all_reduce: a reduction over ranks that data_parallel splits compiled programs around."""
    from .parallel import ALL_REDUCE

    return [ALL_REDUCE]


@hookimpl
def slope_conformance_rows() -> list:
    """all_reduce in one process (the identity) under every transformation, dtype and backend."""
    from slope_testing.checks import FLOATS, Case, Data, Row

    def call(x: slope.Tensor) -> slope.Tensor:
        return slope.all_reduce(x, reduce="sum")[0]

    def method(x: slope.Tensor) -> slope.Tensor:
        return x.all_reduce(reduce="mean")[0]

    shapes = [((2, 3), "2x3"), ((), "0-d"), ((0, 3), "empty")]
    cases = [Case([Data(shape)], lambda x: x, call=call, method_call=method, label=label) for shape, label in shapes]
    return [Row("all_reduce", cases, FLOATS)]
