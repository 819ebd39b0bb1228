"""What the examples share: command-line flags (and their argparse types), finding MNIST, the loss plot."""

from __future__ import annotations

import argparse
import gc
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from tqdm import tqdm

import slope
import slope.nn as nn

HERE = Path(__file__).resolve().parent


def bounded(kind: type, lowest: float, highest: float | None = None) -> Callable[[str], Any]:
    """An argparse type: an int or a finite float (`kind`) from `lowest` to `highest` (None: no upper bound). A value
    outside gives argparse's usage error naming the flag (0 steps ended in a ZeroDivisionError after the set-up, a
    negative learning rate ascended the gradient: torch.optim.AdamW refuses it)."""
    number = "an integer" if kind is int else "a number"
    expected = f"{number} of at least {lowest}" if highest is None else f"{number} from {lowest} to {highest}"

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or value < lowest or highest is not None and value > highest:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    parse.__name__ = expected  # (argparse names the type by it in its other messages)
    return parse


positive_int = bounded(int, 1)
non_negative_int = bounded(int, 0)
non_negative_float = bounded(float, 0.0)
probability = bounded(float, 0.0, 1.0)


def parser(description: str, epochs: int, batch_size: int, lr: float) -> argparse.ArgumentParser:
    """The flags every MNIST training example takes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--backend", default=None, help="onnxruntime, iree or numpy (default: Slope's default backend)")
    p.add_argument(
        "--epochs", type=positive_int, default=epochs, help=f"passes over the training set (default {epochs})"
    )
    p.add_argument(
        "--steps", type=positive_int, default=None, help="stop each epoch after this many steps (short runs, CI)"
    )
    p.add_argument(
        "--batch-size", type=positive_int, default=batch_size, help=f"examples per step (default {batch_size})"
    )
    p.add_argument("--lr", type=non_negative_float, default=lr, help=f"learning rate (default {lr})")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed for initialization and shuffling")
    p.add_argument(
        "--data",
        default=None,
        help="folder with the MNIST IDX files (default: $MNIST_DIR, $SLOPE_DATA_DIR/mnist, ~/.cache/slope/mnist)",
    )
    p.add_argument("--out", default=str(HERE / "out"), help="folder for the loss plot and exported model")
    p.add_argument("--no-plot", action="store_true", help="do not write the loss plot")
    return p


def setup(args: argparse.Namespace) -> None:
    """Select the backend and seed the global generator."""
    if args.backend:
        slope.set_backend(args.backend)
    slope.manual_seed(args.seed)
    print(f"backend: {slope.get_backend().name}")


def data_dir(explicit: str | None) -> str | None:
    """Where MNIST is: --data, else $MNIST_DIR / $SLOPE_DATA_DIR (None lets the loader read them), else the cache
    when it holds the files, else the shared folder beside this repository when it exists, else the cache."""
    if explicit or any(os.environ.get(v) for v in ("MNIST_DIR", "SLOPE_DATA_DIR", "SLOPE_DATA")):
        return explicit
    cache = nn.datasets.default_cache()
    shared = HERE.parents[2] / "shared" / "data" / "mnist"
    if not nn.datasets.has_mnist(cache) and nn.datasets.has_mnist(shared):
        return str(shared)
    return None


def load_mnist(explicit: str | None) -> tuple[nn.datasets.Dataset, nn.datasets.Dataset]:
    """The train and test splits (exits with the loader's message when the files are missing, truncated or damaged)."""
    folder = data_dir(explicit)
    try:
        return nn.datasets.mnist("train", folder), nn.datasets.mnist("test", folder)
    except (FileNotFoundError, ValueError) as error:  # ValueError: a file that is no IDX file, truncated or damaged
        sys.exit(str(error))


def normalize(images: slope.Tensor) -> slope.Tensor:
    """uint8 pixels to standardized float32 (MNIST's mean 0.1307 and std 0.3081): (x / 255 - mean) / std, as one scale
    and one shift (two passes over the batch, the scale fused with the conversion on onnxruntime)."""
    return images.astype(slope.float32) * (1.0 / (255.0 * 0.3081)) - 0.1307 / 0.3081


def warm_up(train_step: Any, step_args: tuple, evaluate: Any, evaluate_args: tuple) -> float:
    """Trace, compile and run the step once (its result is discarded: the step is a pure function), compile the
    evaluation, and collect start-up's garbage; the seconds it took. The epoch timings then measure steady-state
    training: the garbage collector's first full pass over the ~50,000 objects of the imports and of compiling would
    otherwise pause one of the first epochs for about 10 ms (later ones are rare: the loop keeps few objects)."""
    start = time.perf_counter()
    float(train_step(*step_args)[2])
    evaluate.lower(*evaluate_args)
    gc.collect()
    return time.perf_counter() - start


def train_epoch(
    train_step: Any,
    model: Any,
    state: Any,
    images: np.ndarray,
    labels: np.ndarray,
    order: np.ndarray,
    batch_size: int,
    steps: int,
    desc: str,
    update_every: int,
) -> tuple:
    """One epoch of jitted steps over shuffled batches with a progress bar; returns model, state and step losses.
    The batches come from `slope.nn.datasets.loader`, which slices and transfers the next ones while a step runs."""
    step_losses = []
    batches = nn.datasets.loader(images, labels, batch_size=batch_size, order=order, steps=steps)
    with tqdm(total=steps, desc=desc, unit="step", leave=False) as bar:
        for i, (batch_images, batch_labels) in enumerate(batches):
            model, state, loss = train_step(model, state, batch_images, batch_labels)
            step_losses.append(loss)
            if (i + 1) % update_every == 0 or i + 1 == steps:
                bar.set_postfix(loss=f"{float(loss):.4f}", refresh=False)
                bar.update(i + 1 - bar.n)
    return model, state, [float(loss) for loss in step_losses]  # converted once per epoch


def plot_losses(losses: list[float], steps_per_epoch: int, path: Path, title: str) -> None:
    """Write the training loss curve as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4))
    steps = np.arange(1, len(losses) + 1)
    ax.plot(steps, losses, linewidth=0.8, alpha=0.5, label="loss per step")
    window = min(50, len(losses))
    if window > 1:
        smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1 :], smooth, linewidth=1.5, label=f"mean of {window} steps")
    for boundary in range(steps_per_epoch, len(losses), steps_per_epoch):
        ax.axvline(boundary, color="gray", linewidth=0.5, linestyle="--")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy loss")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"loss plot: {path}")
