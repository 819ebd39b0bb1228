"""A custom operator with its own rules, a custom procedure, and a translation for the NumPy backend."""

import numpy as np

import slope
from slope import plugins


class Cube(slope.Operator):
    """x ** 3 as one operator."""

    name = "cube"

    def __call__(self, x):
        return slope.bind(self, x if isinstance(x, slope.Tensor) else slope.tensor(x))

    def infer(self, x):
        if not x.dtype.is_float:
            raise self.dtype_error(f"expected a floating-point tensor, got {x.dtype.name} of shape {x.shape}")
        return x

    def jvp(self, primals, tangents):
        (x,), (t,) = primals, tangents
        return [cube(x)], [3.0 * x * x * t]

    def vmap(self, axis_size, args, dims):
        return [cube(args[0])], dims

    def procedure(self, x):  # used by every backend that has no translation for "cube"
        return x * x * x


cube = Cube()


class CubePlugin:
    """What a third-party package's entry-point module would hold."""

    @plugins.hookimpl
    def slope_operators(self):
        return [cube]

    @plugins.hookimpl
    def slope_procedures(self):
        def softsign(x):
            return x / (1.0 + x.abs())

        return {"softsign": softsign}

    @plugins.hookimpl
    def slope_translations(self, backend):
        if backend.name == "numpy":  # the NumPy backend's translations return a Python expression
            return {"cube": lambda inputs, params, out: f"np.power({inputs[0]}, 3)"}
        return None


plugins.register(CubePlugin())

x = slope.tensor([1.0, -2.0, 3.0])
print(slope.cube(x), x.softsign())
print(slope.grad(lambda x: slope.cube(x).sum())(x))  # 3 x^2
print(slope.vmap(slope.grad(lambda x: slope.cube(x)))(x))
print(slope.jit(lambda x: slope.cube(x) + 1.0).lower(x).program)
np.testing.assert_allclose(slope.grad(lambda x: slope.cube(x).sum())(x).numpy(), 3 * x.numpy() ** 2)
