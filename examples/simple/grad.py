"""Gradients: slope.grad of a scalar function, of several arguments, and of a gradient (second derivative)."""

import slope


def f(x: slope.Tensor) -> slope.Tensor:
    """sum(x**3 + sin(x))."""
    return (x**3 + x.sin()).sum()


x = slope.tensor([0.0, 1.0, 2.0])
print("f(x)          =", f(x).item())
print("grad f(x)     =", slope.grad(f)(x).tolist(), "(3 x**2 + cos x)")

# second derivative of a scalar function: grad of grad
g = slope.grad(slope.grad(lambda t: t**3 + t.sin()))
print("f''(2.0)      =", g(slope.tensor(2.0)).item(), "(6 x - sin x)")

# several arguments at once, and the value together with the gradient
value, (dw, db) = slope.value_and_grad(lambda w, b: ((x * w + b) ** 2).mean(), argnums=(0, 1))(
    slope.tensor(2.0), slope.tensor(1.0)
)
print("loss, dw, db  =", value.item(), dw.item(), db.item())
