"""Threads and memory: flat thread count and memory, two threads training at once, bounded caches and thread pools.

    .venv/bin/python benchmarks/threads_memory.py [--backend onnxruntime] [--ops 10000] [--shapes 50]
    .venv/bin/python benchmarks/threads_memory.py --seconds 30        # two threads for 30 s (jit(grad) + eager)
    .venv/bin/python benchmarks/threads_memory.py --distinct 20000    # eager cache bound after 20,000 new shapes
    .venv/bin/python benchmarks/threads_memory.py --programs 200      # threads after 200 large jitted programs

Without a flag it runs the first check: 10,000 eager operations over 50 distinct shapes. Each distinct (operator,
shape) compiles one cached program (for onnxruntime: one InferenceSession); after the first pass over the shapes the
thread count must not move and the resident memory must not grow by more than a small allowance (allocator noise).

`--seconds S`: one thread trains a small MLP with a jitted gradient step (re-traced each round, a Python float
learning rate) while another runs an eager gradient-descent loop (explicit random keys), for S seconds. Every round of
each must equal, bit for bit, the same round run single-threaded before, and no call may raise.

`--distinct N`: 4 eager operators on N distinct shapes; the eager cache (SLOPE_EAGER_CACHE_SIZE programs) must stay
within its bound and the resident memory must level off once the cache is full.

`--programs N`: N jitted programs of large tensors (on onnxruntime each a session with a thread pool); the thread
count must stay under a bound that does not grow with N.

Exits with status 1 when any check fails.
"""

from __future__ import annotations

import argparse
import gc
import sys
import threading
import time
from typing import Callable

import numpy as np

import slope

RSS_ALLOWANCE_MB = 8.0


def process_status() -> tuple[int, float]:
    """(threads, resident MiB) of this process, from /proc."""
    threads, rss_kb = 0, 0
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("Threads:"):
                threads = int(line.split()[1])
            elif line.startswith("VmRSS:"):
                rss_kb = int(line.split()[1])
    return threads, rss_kb / 1024


# ----------------------------------------------------------------------------------------------- flat eager check


def eager_ops(x: slope.Tensor) -> slope.Tensor:
    """A mix of five eager operations (each its own cached program per shape)."""
    y = x * 2.0
    y = y + x
    y = y.exp()
    y = slope.maximum(y, x)
    return y.sum(0)


def run(total_ops: int, shape_count: int) -> list[tuple[int, int, float]]:
    """Run the ops and return checkpoints (operations done, threads, resident MiB)."""
    rng = np.random.default_rng(0)
    inputs = [slope.tensor(rng.random((i + 1, 7), dtype=np.float32)) for i in range(shape_count)]
    ops_per_call = 5
    calls = total_ops // ops_per_call
    checkpoints = []
    done = 0
    for call in range(calls):
        eager_ops(inputs[call % shape_count]).numpy()
        done += ops_per_call
        if (call + 1) % shape_count == 0 and (done % 1000 == 0 or call + 1 == shape_count):
            gc.collect()
            threads, rss = process_status()
            checkpoints.append((done, threads, rss))
    return checkpoints


def flat_check(ops: int, shapes: int) -> bool:
    """The original check: threads and memory stay flat once every program is compiled."""
    start_threads, start_rss = process_status()
    checkpoints = run(ops, shapes)
    warm_ops, warm_threads, warm_rss = checkpoints[0]
    end_ops, end_threads, end_rss = checkpoints[-1]
    print(f"backend {slope.get_backend().name}: {end_ops} eager operations over {shapes} shapes")
    print(f"before any operation: {start_threads} threads, {start_rss:.1f} MiB")
    print("| operations | threads | resident MiB |")
    print("|---:|---:|---:|")
    for done, threads, rss in checkpoints:
        print(f"| {done} | {threads} | {rss:.1f} |")
    thread_growth = max(t for _, t, _ in checkpoints) - warm_threads
    rss_growth = end_rss - warm_rss
    flat = thread_growth == 0 and rss_growth <= RSS_ALLOWANCE_MB
    print(
        f"after the first pass ({warm_ops} ops, every program compiled): threads +{thread_growth}, "
        f"memory {rss_growth:+.1f} MiB (allowance {RSS_ALLOWANCE_MB} MiB) -> {'flat' if flat else 'NOT FLAT'}"
    )
    return flat


# ----------------------------------------------------------------------------------------------- two threads


def _mlp_loss(params: tuple, x: slope.Tensor, y: slope.Tensor) -> slope.Tensor:
    hidden = (x @ params[0] + params[1]).tanh()
    return ((hidden @ params[2] - y) ** 2).mean()


def _mlp_step(params: tuple, x: slope.Tensor, y: slope.Tensor, lr: float) -> tuple:
    loss, grads = slope.value_and_grad(_mlp_loss)(params, x, y)
    return tuple(p - lr * g for p, g in zip(params, grads)), loss


def jit_training(steps: int = 10) -> list[np.ndarray]:
    """A small MLP trained by a freshly traced `jit(value_and_grad)` step: its final weights and its losses."""
    rng = np.random.default_rng(1)
    x = slope.tensor(rng.standard_normal((64, 16), dtype=np.float32))
    y = slope.tensor(rng.standard_normal((64, 1), dtype=np.float32))
    params = tuple(
        slope.tensor(0.3 * rng.standard_normal(shape, dtype=np.float32)) for shape in [(16, 32), (32,), (32, 1)]
    )
    step = slope.jit(_mlp_step)  # a new jit each round: this thread traces while the other runs eagerly
    losses = []
    for i in range(steps):
        params, loss = step(params, x, y, 0.05 + 0.01 * i)  # a Python float learning rate: traced, one program
        losses.append(loss.item())
    assert len(step.cache) == 1, f"the jitted step compiled {len(step.cache)} programs"
    return [p.numpy() for p in params] + [np.array(losses)]


def eager_training(steps: int = 10) -> list[np.ndarray]:
    """Eager gradient descent on least squares with random perturbations from explicit keys: weights and losses."""
    rng = np.random.default_rng(2)
    x = slope.tensor(rng.standard_normal((32, 8), dtype=np.float32))
    y = slope.tensor(rng.standard_normal((32, 1), dtype=np.float32))
    w = slope.zeros(8, 1)
    key = slope.random.key(3)
    losses = []
    for i in range(steps):
        residual = x @ w - y
        losses.append((residual**2).mean().item())
        w = w - 0.05 * (x.T @ residual) * (2.0 / 32)
        w = w + 0.001 * slope.random.normal(slope.random.fold_in(key, i), (8, 1))
        w = slope.maximum(w, -(w.abs().exp() + 1.0))  # a few more operators (a no-op on the values)
    return [w.numpy(), np.array(losses)]


def _same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(x.shape == y.shape and np.array_equal(x, y) for x, y in zip(a, b))


def run_threads(seconds: float, workloads: list[Callable[[], list[np.ndarray]]], min_rounds: int = 1) -> dict:
    """Run each workload in its own thread, round after round, for `seconds` (and at least `min_rounds` rounds each);
    compare every round with a single-threaded run. Returns counts of rounds, errors and mismatches per workload."""
    expected = [workload() for workload in workloads]
    report = {w.__name__: {"rounds": 0, "errors": [], "mismatches": 0} for w in workloads}
    start = threading.Barrier(len(workloads))
    deadline: list[float] = []

    def loop(workload: Callable, reference: list[np.ndarray]) -> None:
        entry = report[workload.__name__]
        if start.wait() == 0:
            deadline.append(time.perf_counter() + seconds)
        start.wait()  # every thread has seen the deadline
        while entry["rounds"] < min_rounds or time.perf_counter() < deadline[0]:
            try:
                if not _same(workload(), reference):
                    entry["mismatches"] += 1
            except Exception as error:  # counted and shown: the check is that there are none
                entry["errors"].append(f"{type(error).__name__}: {error}")
            entry["rounds"] += 1

    threads = [threading.Thread(target=loop, args=(w, e)) for w, e in zip(workloads, expected)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return report


def threads_check(seconds: float) -> bool:
    """Two threads for `seconds`: zero errors and every round equal to the single-threaded one."""
    report = run_threads(seconds, [jit_training, eager_training])
    ok = True
    print(f"backend {slope.get_backend().name}: two threads for {seconds:g} s")
    print("| thread | rounds | errors | rounds different from the single-threaded run |")
    print("|---|---:|---:|---:|")
    for name, entry in report.items():
        print(f"| {name} | {entry['rounds']} | {len(entry['errors'])} | {entry['mismatches']} |")
        for error in sorted(set(entry["errors"]))[:5]:
            print(f"    {error}")
        ok = ok and not entry["errors"] and not entry["mismatches"] and entry["rounds"] > 0
    print("-> " + ("zero errors, every round equal" if ok else "FAILED"))
    return ok


# ----------------------------------------------------------------------------------------------- caches and pools


def distinct_check(count: int) -> bool:
    """4 eager operators on `count` distinct shapes: the eager caches stay bounded and so does the memory."""
    from slope.backend import _eager
    from slope.operators import _constant_cache as constants

    bound, constant_bound = 2 * _eager.limit, constants.max_bytes * 2 / 2**20
    print(f"backend {slope.get_backend().name}: 4 eager operators on {count} distinct shapes")
    print(f"bounds: {bound} cached programs, about {constant_bound:.0f} MiB of cached constants")
    print("| shapes | cached programs | cached constants MiB | threads | resident MiB |")
    print("|---:|---:|---:|---:|---:|")
    rows = []
    for i in range(count):
        x = slope.tensor(np.full((i + 1,), 0.5, np.float32))
        ((x * 2.0 + x).exp().sum()).numpy()  # (x * 2.0 caches a constant 2.0 of x's shape)
        if (i + 1) % max(1, count // 10) == 0 or i + 1 == count:
            gc.collect()
            threads, rss = process_status()
            held = sum(constants.size_of(t) for t in [*constants.recent.values(), *constants.old.values()]) / 2**20
            rows.append((i + 1, len(_eager), held, rss))
            print(f"| {i + 1} | {len(_eager)} | {held:.1f} | {threads} | {rss:.1f} |")
    most_programs, most_constants = max(r[1] for r in rows), max(r[2] for r in rows)
    bounded = most_programs <= bound and most_constants <= constant_bound + 1
    half = [rss for shapes, _, _, rss in rows if shapes >= count // 2]
    print(
        f"at most {most_programs} cached programs and {most_constants:.1f} MiB of constants; resident memory in the "
        f"second half {min(half):.1f}-{max(half):.1f} MiB -> {'bounded' if bounded else 'NOT BOUNDED'}"
    )
    return bounded


def programs_check(count: int) -> bool:
    """`count` jitted programs of large tensors: the thread count must stay under a bound that does not grow with them
    (onnxruntime: at most SLOPE_ORT_POOLED_SESSIONS sessions with a pool of SLOPE_ORT_THREADS open at once)."""
    step = slope.jit(lambda x: ((x * 2.0).exp() + 1.0).sum(0))
    (slope.ones(2) * 2.0).tolist()  # the backend's libraries load on first use: their own threads are not counted
    start_threads, _ = process_status()
    bound = start_threads
    if slope.get_backend().name == "onnxruntime":
        from slope_onnx.backend import _Threads

        bound += _Threads.pooled_sessions * (_Threads.intra_op - 1)
    most = 0
    for i in range(count):
        x = slope.ones(200 + i, 200)
        assert step(x).tolist() == step(x).tolist()  # run twice: (200, 200) ones give 200 * (e**2 + 1) each
        most = max(most, process_status()[0])
    again = [float(step(slope.ones(200 + i, 200))[0]) for i in range(min(count, 5))]  # closed sessions reopen
    threads, rss = process_status()
    ok = most <= bound and np.allclose(again, [(200 + i) * (np.exp(2.0) + 1.0) for i in range(len(again))], rtol=1e-5)
    print(
        f"backend {slope.get_backend().name}: {count} large jitted programs ({len(step.cache)} cached): threads "
        f"{start_threads} before, at most {most} (bound {bound}), {threads} after; {rss:.1f} MiB "
        f"-> {'bounded' if ok else 'NOT BOUNDED'}"
    )
    return ok


def main(argv: list[str] | None = None) -> int:
    """Run the checks asked for and print their tables; non-zero exit status when one fails."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default=None, help="backend to use (default: Slope's default)")
    parser.add_argument("--ops", type=int, default=10_000)
    parser.add_argument("--shapes", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=None, help="run the two-thread check for this long")
    parser.add_argument("--distinct", type=int, default=None, help="run the eager cache check on this many shapes")
    parser.add_argument("--programs", type=int, default=None, help="run the thread pool check on this many programs")
    args = parser.parse_args(argv)
    if args.backend:
        slope.set_backend(args.backend)
    results = []
    if args.seconds is not None:
        results.append(threads_check(args.seconds))
    if args.distinct is not None:
        results.append(distinct_check(args.distinct))
    if args.programs is not None:
        results.append(programs_check(args.programs))
    if not results:
        results.append(flat_check(args.ops, args.shapes))
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
