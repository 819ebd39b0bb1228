"""Allreduce of parameter trees between ranks, and what `data_parallel` adds to a train step.

    mpiexec -n 2 .venv/bin/python benchmarks/allreduce.py                                # engine mpi (mpi4py)
    SLOPE_DISTRIBUTED_ENGINE=gloo mpiexec -n 2 .venv/bin/python benchmarks/allreduce.py  # torch.distributed gloo
    mpiexec -n 2 .venv/bin/python benchmarks/allreduce.py --quick                        # fewer samples

Rows (median of many rounds, each after a barrier, float32, times from rank 0):
- `engine, flat buffer`: the engine's own in-place allreduce of one reused contiguous buffer (the floor);
- `engine, fresh output`: the same into a newly allocated output buffer each call (what reusing avoids);
- `dist.all_reduce, NumPy tree` / `Tensor tree`: Slope's pytree allreduce (digest header, pack, reduce, unpack) of a
  tree of 100 leaves, NumPy arrays or onnxruntime tensors; with every rank on one machine that is the shared-memory
  path, and the `MPI_Allreduce path` rows time the same trees through MPI_Allreduce (the path across machines);
- `per leaf`: one engine call per leaf of the same tree (what one flat buffer avoids).
Then the train step of a 784-1024-1024-10 MLP (1.86M parameters, batch 100 per rank, SGD): the plain jitted step
(no reduction), the `data_parallel` step, and the bare allreduce of its gradients; the overhead of data_parallel
is the step minus the plain step minus the bare allreduce (splitting, copies between backend and host, checks).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import slope
import slope.distributed as dist
import slope.nn as nn

STATISTIC = {"fn": np.median}  # --min: the fastest round instead (on a machine other jobs load, the floor)


def median_ms(fn, rounds: int) -> float:
    """Median (or minimum, --min) wall time of fn() in ms over rounds, each started together on every rank."""
    fn()
    times = []
    for _ in range(rounds):
        dist.barrier()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * float(STATISTIC["fn"](times))


def tree_of(total: int, leaves: int = 100) -> list[np.ndarray]:
    rng = np.random.default_rng(dist.rank())
    return [rng.standard_normal(total // leaves).astype(np.float32) for _ in range(leaves)]


def allreduce_rows(quick: bool) -> list[tuple[str, float]]:
    rows = []
    for label, total in (("4 MB (1M floats)", 1 << 20), ("100 MB (25M floats)", 25 << 20)):
        rounds = (10 if quick else 50) if total < 1 << 22 else (3 if quick else 10)
        rows += [(f"{label}: {name}", ms) for name, ms in allreduce_times(total, rounds).items()]
    return rows


def allreduce_times(total: int, rounds: int) -> dict[str, float]:
    engine = dist.engine()
    flat = np.ones(total, np.float32)
    arrays = tree_of(total)
    tensors = [slope.tensor(a) for a in arrays]
    times = {"engine, flat buffer": median_ms(lambda: engine.all_reduce(flat, "sum"), rounds)}
    if engine.name == "mpi":
        fresh = lambda: engine.comm.Allreduce(flat, np.empty_like(flat), op=engine.MPI.SUM)  # noqa: E731
        times["engine, fresh output"] = median_ms(fresh, rounds)
    times["dist.all_reduce, NumPy tree (100 leaves)"] = median_ms(lambda: dist.all_reduce(arrays), rounds)
    times["dist.all_reduce, Tensor tree (100 leaves)"] = median_ms(lambda: dist.all_reduce(tensors), rounds)
    shared = getattr(engine, "shared", None)
    if shared is not None:  # the same through MPI_Allreduce (what ranks on several machines use), in the same run
        engine.shared = None
        times["dist.all_reduce, NumPy tree, MPI_Allreduce path"] = median_ms(lambda: dist.all_reduce(arrays), rounds)
        times["dist.all_reduce, Tensor tree, MPI_Allreduce path"] = median_ms(lambda: dist.all_reduce(tensors), rounds)
        engine.shared = shared
    times["per leaf (100 engine calls)"] = median_ms(lambda: [engine.all_reduce(a, "sum") for a in arrays], rounds)
    return times


def train_step_rows(quick: bool) -> list[tuple[str, float]]:
    slope.manual_seed(0)
    model = dist.broadcast(nn.Sequential(nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(),
                                         nn.Linear(1024, 10)))  # fmt: skip
    optimizer = nn.SGD(0.01)
    state = optimizer.init(model)
    rng = np.random.default_rng(dist.rank())
    x = slope.tensor(rng.standard_normal((100, 784)).astype(np.float32))
    y = slope.tensor(rng.integers(0, 10, 100))

    def loss_fn(model, x, y):
        return nn.cross_entropy(model(x), y)

    def plain(model, state, x, y):
        loss, grads = slope.value_and_grad(loss_fn)(model, x, y)
        model, state = optimizer.step(model, grads, state)
        return model, state, loss

    def parallel(model, state, x, y):
        loss, grads = slope.value_and_grad(loss_fn)(model, x, y)
        loss, grads = dist.pmean((loss, grads))
        model, state = optimizer.step(model, grads, state)
        return model, state, loss

    plain_step, parallel_step = slope.jit(plain), dist.data_parallel(parallel)
    parameters = sum(int(np.prod(leaf.shape)) for leaf in slope.tree.leaves(model))
    flat = np.ones(parameters + 1, np.float32)
    rounds = 20 if quick else 100
    engine = dist.engine()
    times = {}
    for _ in range(2):  # interleaved twice: background load hits each alike
        for name, fn in (("jitted step, no reduction", lambda: plain_step(model, state, x, y)[2].numpy()),
                         ("data_parallel step", lambda: parallel_step(model, state, x, y)[2].numpy()),
                         ("bare allreduce of the gradients", lambda: engine.all_reduce(flat, "sum"))):  # fmt: skip
            times.setdefault(name, []).append(median_ms(fn, rounds))
    best = {name: min(values) for name, values in times.items()}
    overhead = best["data_parallel step"] - best["jitted step, no reduction"] - best["bare allreduce of the gradients"]
    label = f"MLP train step ({parameters / 1e6:.2f}M parameters, {parameters * 4 / 2**20:.1f} MB of gradients)"
    rows = [(f"{label}: {name}", ms) for name, ms in best.items()]
    rows.append((f"{label}: data_parallel overhead over the bare allreduce", overhead))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer rounds")
    p.add_argument("--backend", default=None, help="Slope backend (default onnxruntime)")
    p.add_argument("--min", action="store_true", help="report the fastest round, not the median")
    args = p.parse_args()
    if args.min:
        STATISTIC["fn"] = np.min
    dist.init()
    if args.backend:
        slope.set_backend(args.backend)
    rows = allreduce_rows(args.quick) + train_step_rows(args.quick)
    if dist.rank() == 0:
        engine = dist.engine()
        print(f"engine {engine.name}, {engine.size} ranks, backend {slope.get_backend().name}\n")
        print(f"| what | {'minimum' if args.min else 'median'} ms |\n|---|---:|")
        for name, ms in rows:
            print(f"| {name} | {ms:.2f} |")


if __name__ == "__main__":
    main()
