"""10,000 eager operations over 50 distinct shapes: the process's thread count and memory must stay flat.

    .venv/bin/python benchmarks/threads_memory.py [--backend onnxruntime] [--ops 10000] [--shapes 50]

Each distinct (operator, shape) compiles one cached program (for onnxruntime: one InferenceSession). The first pass
over the shapes fills that cache; after it, the thread count must not move at all and the resident memory must not
grow by more than a small allowance (allocator noise). Exits with status 1 when either is not flat.
"""

from __future__ import annotations

import argparse
import gc
import sys

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


def main(argv: list[str] | None = None) -> int:
    """Run the check and print a table; non-zero exit status when threads or memory grow."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default=None, help="backend to use (default: Slope's default)")
    parser.add_argument("--ops", type=int, default=10_000)
    parser.add_argument("--shapes", type=int, default=50)
    args = parser.parse_args(argv)
    if args.backend:
        slope.set_backend(args.backend)
    start_threads, start_rss = process_status()
    checkpoints = run(args.ops, args.shapes)
    warm_ops, warm_threads, warm_rss = checkpoints[0]
    end_ops, end_threads, end_rss = checkpoints[-1]
    print(f"backend {slope.get_backend().name}: {end_ops} eager operations over {args.shapes} shapes")
    print(f"before any operation: {start_threads} threads, {start_rss:.1f} MiB")
    print("| operations | threads | resident MiB |")
    print("|---:|---:|---:|")
    for ops, threads, rss in checkpoints:
        print(f"| {ops} | {threads} | {rss:.1f} |")
    thread_growth = max(t for _, t, _ in checkpoints) - warm_threads
    rss_growth = end_rss - warm_rss
    flat = thread_growth == 0 and rss_growth <= RSS_ALLOWANCE_MB
    print(
        f"after the first pass ({warm_ops} ops, every program compiled): threads +{thread_growth}, "
        f"memory {rss_growth:+.1f} MiB (allowance {RSS_ALLOWANCE_MB} MiB) -> {'flat' if flat else 'NOT FLAT'}"
    )
    return 0 if flat else 1


if __name__ == "__main__":
    sys.exit(main())
