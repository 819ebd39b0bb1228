"""Where char_gpt's train step's time goes in onnxruntime: per-node kernel times from onnxruntime's profiler.

    .venv/bin/python benchmarks/profile_gpt.py            # per-operator sums of per-node minimum kernel times
    .venv/bin/python benchmarks/profile_gpt.py --runs 40 --top 30

The step is char_gpt's (`make_train_step`: loss, gradients, clipping, AdamW) on its defaults, lowered by `slope.jit`
on the onnxruntime backend; its ONNX model runs in a session with Slope's thread setup (one thread unless
SLOPE_ORT_THREADS says otherwise) and onnxruntime's profiler on. Each node's time is its minimum over the runs (the
machine is shared: minima are what the code costs), summed by operator kind, largest first.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("SLOPE_ORT_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "nn"))
import char_gpt  # noqa: E402
from profile_cnn import profile_session  # noqa: E402 (beside this script)

import slope  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Profile the lowered train step and print where its kernel time goes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40, help="profiled runs (default 40)")
    parser.add_argument("--top", type=int, default=20, help="nodes listed (default 20)")
    parser.add_argument("--save", help="also write the ONNX model here")
    args = parser.parse_args(argv)

    import onnx

    from slope_onnx.cpu_rewrites import for_cpu_session

    slope.set_backend("onnxruntime")
    data = char_gpt.CharData(char_gpt.default_data().read_text(encoding="utf-8"))
    model = char_gpt.GPT(len(data.chars), **char_gpt.CONFIG, key=slope.random.key(1337))
    optimizer = char_gpt.make_optimizer(1e-3, 2000)
    state = optimizer.init(model)
    x, y = char_gpt.get_batch(data.train, 12, 64, np.random.default_rng(0))
    inputs = (model, state, slope.tensor(x), slope.tensor(y), slope.random.key(0))
    lowered = char_gpt.make_train_step(optimizer).lower(*inputs)
    onnx_model = for_cpu_session(lowered.executable.model)
    if args.save:
        onnx.save(onnx_model, args.save)
    leaves = [leaf.numpy() for leaf in slope.tree.leaves(inputs) if isinstance(leaf, slope.Tensor)]
    feeds = {i.name: v for i, v in zip(onnx_model.graph.input, leaves)}
    minima, kinds, runs = profile_session(onnx_model, feeds, args.runs, "gpt")
    by_kind: dict[str, list[float]] = collections.defaultdict(list)
    for name, value in minima.items():
        by_kind[kinds[name]].append(value)
    total = sum(minima.values())
    print(f"nodes after onnxruntime's optimizer: {len(minima)} (model: {len(onnx_model.graph.node)} nodes)")
    print(f"sum of per-node minima: {total:.2f} ms; model_run min {min(runs[5:]):.2f} ms, "
          f"median {float(np.median(runs[5:])):.2f} ms")  # fmt: skip
    print("\nby operator: nodes, ms, share")
    for kind, values in sorted(by_kind.items(), key=lambda kv: -sum(kv[1])):
        print(f"  {kind:24s} {len(values):5d} {sum(values):8.3f} ms {100 * sum(values) / total:5.1f}%")
    print(f"\nlargest {args.top} nodes:")
    for name, value in sorted(minima.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"  {value:7.3f} ms  {kinds[name]:16s} {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
