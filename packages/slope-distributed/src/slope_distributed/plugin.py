"""Registers slope-distributed with Slope (entry point `slope: distributed`): the `all_reduce` operator, and
`slope.distributed` as a name for the `slope_distributed` package."""

from __future__ import annotations

import sys

import slope_distributed
from slope.plugins import hookimpl

sys.modules.setdefault("slope.distributed", slope_distributed)  # `import slope.distributed as dist`


@hookimpl
def slope_operators() -> list:
    """all_reduce: a reduction over ranks that data_parallel splits compiled programs around."""
    from .parallel import ALL_REDUCE

    return [ALL_REDUCE]
