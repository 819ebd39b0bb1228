"""Train a 784-100-10 MLP on MNIST, plot the loss, and export the predictor to ONNX.

    python examples/nn/mnist_mlp.py                      # 3 epochs on the default backend (onnxruntime)
    python examples/nn/mnist_mlp.py --backend numpy --epochs 1
    python examples/nn/mnist_mlp.py --steps 100          # a short run

One jitted function does the whole train step (forward, gradient, Adam update); batches are sliced from the
shuffled uint8 images in NumPy and normalized inside the step. The exported ONNX model takes uint8 images
(N, 784) and returns labels; it is checked in plain onnxruntime against the trained model's predictions.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from common import load_mnist, normalize, parser, plot_losses, setup, train_epoch, warm_up

import slope
import slope.nn as nn


def make_model() -> nn.Module:
    """784 -> 100 -> 10 with ReLU."""
    return nn.Sequential(nn.Linear(784, 100), nn.ReLU(), nn.Linear(100, 10))


def loss_fn(model: nn.Module, images: slope.Tensor, labels: slope.Tensor) -> slope.Tensor:
    """Mean cross-entropy of the model's logits."""
    return nn.cross_entropy(model(normalize(images)), labels)


def predict(model: nn.Module, images: slope.Tensor) -> slope.Tensor:
    """Predicted digit for each row of uint8 pixels."""
    return model(normalize(images)).argmax(-1)


_CHECK_IN_PLAIN_ONNXRUNTIME = """
import sys
import numpy as np
import onnxruntime
model, images, labels = sys.argv[1:4]
session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
(predicted,) = session.run(None, {session.get_inputs()[0].name: np.load(images)})
print(float((predicted == np.load(labels)).mean()))
"""


def export_onnx(model: nn.Module, images: np.ndarray, labels: np.ndarray, accuracy: float, out: Path) -> None:
    """Export the jitted predictor (weights as constants) to ONNX and check it in plain onnxruntime."""
    if "onnxruntime" not in slope.plugins.backends:
        print("ONNX export skipped: the onnxruntime backend (slope-onnx) is not installed")
        return
    out.mkdir(parents=True, exist_ok=True)
    with slope.use_backend("onnxruntime"):
        predictor = slope.jit(lambda x: predict(model, x))
        files = predictor.lower(slope.tensor(images)).export(out / "mnist_mlp.onnx")
    # a separate Python process that imports only onnxruntime and NumPy: the model must run without Slope
    np.save(out / "test_images.npy", images)
    np.save(out / "test_labels.npy", labels)
    command = [sys.executable, "-c", _CHECK_IN_PLAIN_ONNXRUNTIME, str(files[0]), str(out / "test_images.npy"),
               str(out / "test_labels.npy")]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"the exported model failed in plain onnxruntime:\n{result.stderr}")
    onnx_accuracy = float(result.stdout.split()[-1])
    verdict = "matches" if onnx_accuracy == accuracy else "DIFFERS FROM"
    print(f"exported {files[0]}: test accuracy in plain onnxruntime {onnx_accuracy:.4f} ({verdict} the trained model)")
    if onnx_accuracy != accuracy:
        raise SystemExit(1)


def main() -> None:
    """Parse flags, train, evaluate, plot and export."""
    args = parser(__doc__.splitlines()[0], epochs=3, batch_size=200, lr=5e-3).parse_args()
    setup(args)
    train, test = load_mnist(args.data)
    train_images = train.images.reshape(len(train.images), 784)
    test_images = test.images.reshape(len(test.images), 784)

    model = make_model()
    steps = len(train_images) // args.batch_size
    if args.steps is not None:
        steps = min(steps, args.steps)
    # Adam with the learning rate annealed to zero along a cosine over the whole run
    optimizer = nn.Adam(nn.optim.cosine_decay(args.lr, total_steps=args.epochs * steps))
    state = optimizer.init(model)

    @slope.jit
    def train_step(model: nn.Module, state: nn.optim.AdamState, images: slope.Tensor, labels: slope.Tensor):
        loss, grads = slope.value_and_grad(loss_fn)(model, images, labels)
        model, state = optimizer.step(model, grads, state)
        return model, state, loss

    evaluate = slope.jit(predict)
    test_images_tensor = slope.tensor(test_images)
    warm_batch = slope.tensor(train_images[: args.batch_size]), slope.tensor(train.labels[: args.batch_size])
    seconds = warm_up(train_step, (model, state, *warm_batch), evaluate, (model, test_images_tensor))
    print(f"train step and evaluation traced and compiled, the step warmed up, in {seconds:.2f} s")
    shuffle = np.random.default_rng(args.seed)
    losses: list[float] = []
    accuracy = 0.0
    for epoch in range(1, args.epochs + 1):
        order = shuffle.permutation(len(train_images))
        start = time.perf_counter()
        desc = f"epoch {epoch}/{args.epochs}"
        model, state, epoch_losses = train_epoch(
            train_step, model, state, train_images, train.labels, order, args.batch_size, steps, desc, 25
        )
        losses.extend(epoch_losses)
        epoch_time = time.perf_counter() - start
        predicted = evaluate(model, test_images_tensor).numpy()
        accuracy = float((predicted == test.labels).mean())
        print(
            f"epoch {epoch}: {steps} steps in {epoch_time:.2f} s ({1000 * epoch_time / steps:.2f} ms/step), "
            f"loss {np.mean(losses[-steps:]):.4f}, test accuracy {accuracy:.4f}"
        )
    out = Path(args.out)
    if not args.no_plot:
        plot_losses(losses, steps, out / "mnist_mlp_loss.png", "MNIST MLP 784-100-10 (Adam, cosine decay)")
    export_onnx(model, test_images, test.labels, accuracy, out)


if __name__ == "__main__":
    main()
