"""Linear regression by gradient descent: a jitted train step with value_and_grad (loss printed every step)."""

import numpy as np

import slope

N = 50
rng = np.random.default_rng(0)
x = slope.tensor(rng.standard_normal((N, 2)).astype(np.float32))  # 50 x 2 inputs
true_w = slope.tensor([[2.0], [-3.0]])  # 2 x 1
y = x @ true_w + 0.1 * slope.tensor(rng.standard_normal((N, 1)).astype(np.float32))  # 50 x 1 targets


def loss_fn(x: slope.Tensor, w: slope.Tensor, y: slope.Tensor) -> slope.Tensor:
    """Sum of squared errors of x @ w against y."""
    return ((x @ w - y) ** 2).sum()


@slope.jit
def train_step(x: slope.Tensor, w: slope.Tensor, y: slope.Tensor) -> tuple:
    """One step of gradient descent on w with learning rate 0.001."""
    loss, (grad_w,) = slope.value_and_grad(loss_fn, argnums=(1,))(x, w, y)
    return loss, w - 0.001 * grad_w


w = slope.zeros(2, 1)
losses = []
for step in range(10):
    loss, w = train_step(x, w, y)
    losses.append(loss.item())
    print(f"step {step}: loss {losses[-1]:.4f}")
print("w =", [round(float(v), 3) for v in w.numpy().ravel()], "(true w: [2.0, -3.0])")
print("loss strictly decreasing:", all(b < a for a, b in zip(losses, losses[1:])))
