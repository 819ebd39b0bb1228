"""Where the CNN train step's time goes in onnxruntime: per-node kernel times from onnxruntime's profiler.

    .venv/bin/python benchmarks/profile_cnn.py            # per-node minimum kernel times over 60 runs
    .venv/bin/python benchmarks/profile_cnn.py --runs 100 --top 40

The step is bench.py's (`slope_cnn_step`), lowered by `slope.jit` on the onnxruntime backend; its ONNX model runs in a
session with Slope's thread setup and onnxruntime's profiler on. Each node's time is its minimum over the runs (the
machine is shared: minima are what the code costs), listed by node after onnxruntime's optimizer, largest first.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench  # noqa: E402

import slope  # noqa: E402


def profile_session(model: object, feeds: dict, runs: int, prefix: str) -> tuple[dict, dict, list]:
    """Run an ONNX model `runs + 5` times in a profiled CPU session with Slope's options: each node's minimum kernel
    time in ms (after the first five runs), each node's operator, and the model_run times."""
    import onnxruntime as ort

    from slope_onnx.backend import _options

    options = _options(pooled=True)
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as folder:
        options.profile_file_prefix = os.path.join(folder, prefix)
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        for _ in range(runs + 5):
            session.run(None, feeds)
        with open(session.end_profiling()) as handle:
            events = json.load(handle)
    times: dict[str, list[float]] = collections.defaultdict(list)
    kinds: dict[str, str] = {}
    run_times = []
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            name = event["name"][: -len("_kernel_time")]
            times[name].append(event["dur"] / 1e3)
            kinds[name] = event["args"].get("op_name", "?")
        elif event.get("cat") == "Session" and event["name"] == "model_run":
            run_times.append(event["dur"] / 1e3)
    return {name: min(values[5:] or values) for name, values in times.items()}, kinds, run_times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=60, help="profiled runs (default 60)")
    parser.add_argument("--top", type=int, default=30, help="nodes listed (default 30)")
    parser.add_argument("--save", help="also write the ONNX model here")
    args = parser.parse_args(argv)

    import onnx

    from slope_onnx.cpu_rewrites import for_cpu_session

    slope.set_backend("onnxruntime")
    params, x, y = bench.cnn_data()
    tensors = tuple(slope.tensor(p) for p in params), slope.tensor(x), slope.tensor(y)
    lowered = slope.jit(bench.slope_cnn_step).lower(*tensors)
    model = for_cpu_session(lowered.executable.model)  # what the backend's CPU session runs
    if args.save:
        onnx.save(model, args.save)
    feeds = {i.name: v for i, v in zip(model.graph.input, (*params, x, y))}
    minima, kinds, runs = profile_session(model, feeds, args.runs, "cnn")
    by_kind: dict[str, float] = collections.defaultdict(float)
    for name, value in minima.items():
        by_kind[kinds[name]] += value
    print(f"nodes after onnxruntime's optimizer: {len(minima)} (model: {len(model.graph.node)} nodes)")
    print(f"sum of per-node minima: {sum(minima.values()):.2f} ms; model_run min {min(runs[5:]):.2f} ms, "
          f"median {float(np.median(runs[5:])):.2f} ms")  # fmt: skip
    print("\nby operator:")
    for kind, value in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        print(f"  {kind:20s} {value:7.3f} ms")
    print(f"\nlargest {args.top} nodes:")
    for name, value in sorted(minima.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"  {value:7.3f} ms  {kinds[name]:16s} {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
