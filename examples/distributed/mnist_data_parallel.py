"""Train the MNIST MLP (784-100-10) data-parallel: every rank computes gradients on its half of each batch, the
gradients are averaged over the ranks (MPI allreduce), every rank applies the same Adam update.

    python examples/distributed/mnist_data_parallel.py                 # one process (the reference)
    mpiexec -n 2 python examples/distributed/mnist_data_parallel.py    # two processes, the same global batch
    mpiexec -n 2 python examples/distributed/mnist_data_parallel.py --checkpoint out/run.safetensors  # resumable

The global batch (200) and its order are the same for any number of ranks, so the runs compute the same training
up to the order of float additions: the test accuracy agrees to a few test images. With --checkpoint the state is
written after every epoch by rank 0 (atomically) and a run started again resumes from it on every rank.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

import slope
import slope.distributed as dist
import slope.nn as nn
from slope_distributed.engines import launcher_rank_and_size

if (launcher_rank_and_size() or (0, 1))[0] != 0:
    os.environ["TQDM_DISABLE"] = "1"  # one progress bar, rank 0's (tqdm reads this when it is imported)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "nn"))  # the MNIST examples' shared helpers

from common import load_mnist, normalize, parser, train_epoch  # noqa: E402


def make_model() -> nn.Module:
    """784 -> 100 -> 10 with ReLU."""
    return nn.Sequential(nn.Linear(784, 100), nn.ReLU(), nn.Linear(100, 10))


def loss_fn(model: nn.Module, images: slope.Tensor, labels: slope.Tensor) -> slope.Tensor:
    """Mean cross-entropy of the model's logits."""
    return nn.cross_entropy(model(normalize(images)), labels)


def say(*args: object) -> None:
    """Print on rank 0 only."""
    if dist.rank() == 0:
        print(*args, flush=True)


def main() -> None:
    """Train data-parallel, evaluate on every rank's shard of the test set, optionally checkpoint."""
    p = parser(__doc__.splitlines()[0], epochs=3, batch_size=200, lr=5e-3)
    p.add_argument("--engine", default=None, help="mpi (default), gloo or local")
    p.add_argument("--checkpoint", default=None, help="write (model, optimizer state, epoch) here after every epoch")
    args = p.parse_args()
    dist.init(args.engine)
    if args.backend:
        slope.set_backend(args.backend)
    slope.manual_seed(args.seed)
    size = dist.world_size()
    say(f"engine {dist.engine().name}, {size} rank(s), backend {slope.get_backend().name}")
    if args.batch_size % size:
        sys.exit(f"--batch-size {args.batch_size} must be a multiple of the number of ranks ({size})")
    train, test = load_mnist(args.data)
    train_images = train.images.reshape(len(train.images), 784)
    test_images = test.images.reshape(len(test.images), 784)

    model = dist.broadcast(make_model())  # every rank starts from rank 0's initialization
    steps = len(train_images) // args.batch_size
    if args.steps is not None:
        steps = min(steps, args.steps)
    optimizer = nn.Adam(nn.optim.cosine_decay(args.lr, total_steps=args.epochs * steps))
    state = optimizer.init(model)
    first_epoch = 1
    if args.checkpoint and Path(args.checkpoint).exists():
        model, state, done = dist.load(args.checkpoint, like=(model, state, slope.tensor(0)))
        first_epoch = int(done) + 1
        say(f"resumed from {args.checkpoint} after epoch {int(done)}")

    @dist.data_parallel
    def train_step(model: nn.Module, state: nn.optim.AdamState, images: slope.Tensor, labels: slope.Tensor):
        loss, grads = slope.value_and_grad(loss_fn)(model, images, labels)
        loss, grads = dist.pmean((loss, grads))  # the one line that makes the step data-parallel
        model, state = optimizer.step(model, grads, state)
        return model, state, loss

    predict = slope.jit(lambda model, images: model(normalize(images)).argmax(-1))
    my_test_images, my_test_labels = dist.shard(test_images, test.labels)
    shuffle = np.random.default_rng(args.seed)
    for _ in range(1, first_epoch):  # the same shuffles as a run that was not interrupted
        shuffle.permutation(len(train_images))

    def test_accuracy(model: nn.Module) -> float:
        predicted = predict(model, slope.tensor(my_test_images)).numpy()
        correct = dist.all_reduce(np.array(float((predicted == my_test_labels).sum())))
        return float(correct) / (len(my_test_labels) * size)

    # (a run resumed after its last epoch trains nothing: its accuracy is measured, not the 0.0 it printed)
    accuracy = test_accuracy(model) if first_epoch > args.epochs else None
    for epoch in range(first_epoch, args.epochs + 1):
        order = shuffle.permutation(len(train_images))[: steps * args.batch_size]
        # this rank's slice of every global batch, batch after batch
        my_order = dist.shard(order.reshape(steps, args.batch_size).T).T.reshape(-1)
        dist.barrier()
        start = time.perf_counter()
        model, state, losses = train_epoch(train_step, model, state, train_images, train.labels, my_order,
                                           args.batch_size // size, steps, f"epoch {epoch}", 25)  # fmt: skip
        epoch_time = time.perf_counter() - start
        accuracy = test_accuracy(model)
        say(f"epoch {epoch}: {steps} steps in {epoch_time:.2f} s ({1000 * epoch_time / steps:.2f} ms/step), "
            f"loss {np.mean(losses):.4f}, test accuracy {accuracy:.4f}")  # fmt: skip
        if args.checkpoint:
            Path(args.checkpoint).parent.mkdir(parents=True, exist_ok=True)
            dist.save((model, state, slope.tensor(epoch)), args.checkpoint)
    leaves = [leaf.numpy().tobytes() for leaf in slope.tree.leaves(model)]
    assert all(r == leaves for r in dist.engine().gather(leaves)), "the ranks' models differ"
    say(f"final test accuracy {accuracy:.4f} (the {size} ranks' models are identical)")


if __name__ == "__main__":
    main()
