"""slope-toy: a throwaway third-party plugin with a backend (`toy`) and an operator (`smooth_abs`)."""

from __future__ import annotations

import math
from typing import Any

import slope
from slope.plugins import hookimpl
from slope_numpy import NumpyBackend


class ToyBackend(NumpyBackend):
    """The NumPy backend under another name and without a native tanh, so tanh runs through its procedure."""

    name = "toy"
    translations = {op: rule for op, rule in NumpyBackend.translations.items() if op != "tanh"}

    def devices(self) -> list[str]:
        return ["cpu"]


class SmoothAbs(slope.Operator):
    """`sqrt(x**2 + eps)`: |x| with a smooth minimum, as one operator."""

    name = "smooth_abs"

    def __call__(self, x: Any, eps: float = 0.01) -> slope.Tensor:
        x = x if isinstance(x, slope.Tensor) else slope.tensor(x)
        return slope.bind(self, x if x.dtype.is_float else x.float(), eps=float(eps))

    def infer(self, x: slope.Aval, *, eps: float) -> slope.Aval:
        if not x.dtype.is_float:
            raise self.dtype_error(f"expected a floating-point tensor, got {x.dtype.name} of shape {x.shape}")
        if eps <= 0:
            raise ValueError(f"slope.smooth_abs: eps must be positive, got {eps}")
        return x

    def jvp(self, primals: list, tangents: list, *, eps: float) -> tuple[list, list]:
        (x,), (t,) = primals, tangents
        y = smooth_abs(x, eps)
        return [y], [t * x / y]

    def vmap(self, axis_size: int, args: list, dims: list, *, eps: float) -> tuple[list, list]:
        return [smooth_abs(args[0], eps)], dims

    def procedure(self, x: slope.Tensor, *, eps: float) -> slope.Tensor:
        return (x * x + eps).sqrt()


smooth_abs = SmoothAbs()


def _translate_smooth_abs(inputs: list[str], params: dict, out: Any) -> str:
    # the constant in x's dtype: NumPy would promote bfloat16 with a Python float to float32 (ml_dtypes < 0.7)
    return f"np.hypot({inputs[0]}, np.asarray({math.sqrt(params['eps'])!r}, {inputs[0]}.dtype))"


@hookimpl
def slope_backends() -> list:
    """The toy backend."""
    return [ToyBackend]


@hookimpl
def slope_operators() -> list:
    """The smooth_abs operator."""
    return [smooth_abs]


@hookimpl
def slope_translations(backend: Any) -> dict | None:
    """A native smooth_abs for the toy backend; every other backend runs the procedure."""
    if backend.name == "toy":
        return {"smooth_abs": _translate_smooth_abs}
    return None


@hookimpl
def slope_conformance_rows() -> list:
    """smooth_abs's row: the conformance matrix (slope-testing) runs it on every backend, like Slope's own."""
    import numpy as np
    from slope_testing import FLOATS, Case, Data, Row

    return [Row("smooth_abs", [Case([Data()], lambda x: np.sqrt(x * x + 0.01))], dtypes=FLOATS)]
