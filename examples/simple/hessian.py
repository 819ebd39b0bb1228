"""hessian: the matrix of second derivatives (jacfwd of jacrev), checked against the closed form."""

import numpy as np

import slope


def f(x: slope.Tensor) -> slope.Tensor:
    """x0**2 * x1 + x1**3 + x0 * x2."""
    return x[0] ** 2 * x[1] + x[1] ** 3 + x[0] * x[2]


x = slope.tensor([1.0, 2.0, 3.0])
h = slope.hessian(f)(x)
expected = np.array([[2 * 2.0, 2 * 1.0, 1.0], [2 * 1.0, 6 * 2.0, 0.0], [1.0, 0.0, 0.0]])
print("hessian:")
print(h.numpy())
print("matches the closed form:", bool(np.allclose(h.numpy(), expected)))
