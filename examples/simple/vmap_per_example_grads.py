"""vmap: per-example gradients of a linear model's loss, the loop done by a batching transformation."""

import numpy as np

import slope


def loss(w: slope.Tensor, x: slope.Tensor, y: slope.Tensor) -> slope.Tensor:
    """Squared error of one example."""
    return ((x @ w - y) ** 2).sum()


slope.manual_seed(0)
w = slope.randn(3)
xs = slope.randn(5, 3)
ys = slope.randn(5)

# one gradient per example: map grad over the batch axis of x and y, not over w
per_example = slope.jit(slope.vmap(slope.grad(loss), in_axes=(None, 0, 0)))(w, xs, ys)
print("per-example gradients, shape", per_example.shape)
print(np.round(per_example.numpy(), 4))

# the same with a Python loop, for comparison
looped = np.stack([slope.grad(loss)(w, xs[i], ys[i]).numpy() for i in range(5)])
print("matches a Python loop:", bool(np.allclose(per_example.numpy(), looped, atol=1e-5)))
