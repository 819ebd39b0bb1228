"""custom_vjp: a function with a hand-written backward pass (a numerically safe log(1 + exp(x)))."""

import slope


@slope.custom_vjp
def softplus(x: slope.Tensor) -> slope.Tensor:
    """log(1 + exp(x)), computed without overflow."""
    return slope.maximum(x, 0.0) + (-x.abs()).exp().log1p()


def softplus_fwd(x: slope.Tensor) -> tuple:
    """The output and what the backward pass needs."""
    return softplus(x), x


def softplus_bwd(x: slope.Tensor, cotangent: slope.Tensor) -> tuple:
    """d softplus / dx = sigmoid(x)."""
    return (cotangent * x.sigmoid(),)


softplus.defvjp(softplus_fwd, softplus_bwd)

x = slope.tensor([-100.0, -1.0, 0.0, 1.0, 100.0])
print("softplus(x)       =", softplus(x).tolist())
print("grad (custom_vjp) =", slope.grad(lambda t: softplus(t).sum())(x).tolist())
print("sigmoid(x)        =", x.sigmoid().tolist())
print("under jit         =", slope.jit(slope.grad(lambda t: softplus(t).sum()))(x).tolist())
