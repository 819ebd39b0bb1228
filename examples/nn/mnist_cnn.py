"""Train a small convolutional network on MNIST (two conv + max-pool blocks, then a linear classifier).

    python examples/nn/mnist_cnn.py                      # 2 epochs on the default backend (onnxruntime)
    python examples/nn/mnist_cnn.py --steps 100          # a short run

Same structure as mnist_mlp.py: one jitted train step (forward, gradient, AdamW update), batches sliced from the
shuffled uint8 images and normalized inside the step, test accuracy after each epoch, and a PNG of the loss.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from common import load_mnist, normalize, parser, plot_losses, setup, train_epoch, warm_up

import slope
import slope.nn as nn


def make_model() -> nn.Module:
    """(N, 1, 28, 28) -> conv 5x5 (16) -> pool -> conv 5x5 (32) -> pool -> linear 512 -> 10."""
    return nn.Sequential(
        nn.Conv2d(1, 16, kernel_size=5),  # 24 x 24
        nn.ReLU(),
        nn.MaxPool2d(2),  # 12 x 12
        nn.Conv2d(16, 32, kernel_size=5),  # 8 x 8
        nn.ReLU(),
        nn.MaxPool2d(2),  # 4 x 4
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 10),
    )


def loss_fn(model: nn.Module, images: slope.Tensor, labels: slope.Tensor) -> slope.Tensor:
    """Mean cross-entropy of the model's logits."""
    return nn.cross_entropy(model(normalize(images)), labels)


def predict(model: nn.Module, images: slope.Tensor) -> slope.Tensor:
    """Predicted digit for each (1, 28, 28) uint8 image."""
    return model(normalize(images)).argmax(-1)


def main() -> None:
    """Parse flags, train, evaluate and plot."""
    args = parser(__doc__.splitlines()[0], epochs=2, batch_size=64, lr=2e-3).parse_args()
    setup(args)
    train, test = load_mnist(args.data)
    train_images = train.images.reshape(-1, 1, 28, 28)
    test_images = test.images.reshape(-1, 1, 28, 28)

    model = make_model()
    steps = len(train_images) // args.batch_size
    if args.steps is not None:
        steps = min(steps, args.steps)
    optimizer = nn.AdamW(nn.optim.cosine_decay(args.lr, total_steps=args.epochs * steps), weight_decay=1e-4)
    state = optimizer.init(model)

    @slope.jit
    def train_step(model: nn.Module, state: nn.optim.AdamState, images: slope.Tensor, labels: slope.Tensor):
        loss, grads = slope.value_and_grad(loss_fn)(model, images, labels)
        model, state = optimizer.step(model, grads, state)
        return model, state, loss

    evaluate = slope.jit(predict)
    test_batch = 1000
    test_batches = [slope.tensor(test_images[i : i + test_batch]) for i in range(0, len(test_images), test_batch)]
    warm_batch = slope.tensor(train_images[: args.batch_size]), slope.tensor(train.labels[: args.batch_size])
    seconds = warm_up(train_step, (model, state, *warm_batch), evaluate, (model, test_batches[0]))
    print(f"train step and evaluation traced and compiled, the step warmed up, in {seconds:.2f} s")
    shuffle = np.random.default_rng(args.seed)
    losses: list[float] = []
    for epoch in range(1, args.epochs + 1):
        order = shuffle.permutation(len(train_images))
        start = time.perf_counter()
        desc = f"epoch {epoch}/{args.epochs}"
        model, state, epoch_losses = train_epoch(
            train_step, model, state, train_images, train.labels, order, args.batch_size, steps, desc, 10
        )
        losses.extend(epoch_losses)
        epoch_time = time.perf_counter() - start
        predicted = np.concatenate([evaluate(model, images).numpy() for images in test_batches])
        accuracy = float((predicted == test.labels).mean())
        print(
            f"epoch {epoch}: {steps} steps in {epoch_time:.2f} s ({1000 * epoch_time / steps:.2f} ms/step), "
            f"loss {np.mean(losses[-steps:]):.4f}, test accuracy {accuracy:.4f}"
        )
    if not args.no_plot:
        plot_losses(losses, steps, Path(args.out) / "mnist_cnn_loss.png", "MNIST CNN (AdamW, cosine decay)")


if __name__ == "__main__":
    main()
