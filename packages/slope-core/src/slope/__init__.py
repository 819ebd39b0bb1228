"""Slope: a small automatic-differentiation engine with PyTorch-style tensors and JAX-style transformations."""

from __future__ import annotations

from typing import Any

from . import dtypes, operators, plugins, procedures, tree
from .backend import Backend, Executable, default_device, devices, get_backend, set_backend, set_device, use_backend
from .dtypes import DType, bfloat16, bool_, float16, float32, float64, int8, int16, int32, int64, uint8
from .errors import DTypeError, ShapeError, SlopeBackendError, SlopeError, SlopeMemoryError, SlopePluginError
from .ir import Aval, Instruction, Program, Var
from .operator import Operator, UndefinedPrimal
from .random import manual_seed
from .tensors import Tensor, functions, missing_function_hint
from .trace import SlopeTraceError, bind
from .transforms import (
    TransformError,
    custom_jvp,
    custom_vjp,
    grad,
    hessian,
    jacfwd,
    jacrev,
    jit,
    jvp,
    linearize,
    value_and_grad,
    vjp,
    vmap,
)

__version__ = "0.1.0"
bool, float, double, half, int, long = bool_, float32, float64, float16, int32, int64  # noqa: A001 - dtypes, as torch's


if plugins.manager.get_plugin("slope-core.operators") is None:  # not again on importlib.reload(slope)
    plugins.manager.register(operators, "slope-core.operators")
    plugins.manager.register(procedures, "slope-core.procedures")
plugins.load_entry_points()


def __getattr__(name: str) -> Any:
    """Operators and procedures are `slope.NAME` (including those added by plugins)."""
    if name in functions:
        return functions[name]
    if name in ("nn", "distributed"):  # imported on first use: they need slope-nn / slope-distributed
        import importlib

        return importlib.import_module(f"slope.{name}")
    raise AttributeError(f"module 'slope' has no attribute {name!r}{missing_function_hint(name)}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(functions))
