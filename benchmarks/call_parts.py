"""The jit and eager call paths part by part, in CPU microseconds per call (`benchmarks/RESULTS.md`, issue 15).

    .venv/bin/python benchmarks/call_parts.py      # one line of name=µs pairs

Each figure is the median of 7 repeats of many calls, timed with `time.thread_time` (or `time.process_time` where
onnxruntime's threads take part): CPU time, which other jobs on the machine disturb far less than wall time. Run it
alternately in two trees (before and after a change) and compare the medians.
"""

from __future__ import annotations

import gc
import os
import sys
import time
from typing import Any, Callable

import numpy as np

import slope
from slope import backend as backend_module
from slope import tree

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402 - the same workloads as bench.py


def per_call(fn: Callable[[], Any], calls: int = 20000, repeats: int = 7, clock: Callable = time.thread_time) -> float:
    """The median over repeats of the CPU µs per call."""
    for _ in range(200):
        fn()
    samples = []
    gc.disable()
    try:
        for _ in range(repeats):
            start = clock()
            for _ in range(calls):
                fn()
            samples.append((clock() - start) / calls * 1e6)
    finally:
        gc.enable()
    return sorted(samples)[repeats // 2]


def main() -> None:
    """Print every part's figure."""
    parts: dict[str, float] = {}
    slope.set_backend("onnxruntime")
    x = bench.tiny_data()
    tiny = slope.jit(lambda v: slope.sin(v) * 2.0 + 1.0)
    x_tensor = slope.tensor(x)
    out = tiny(x)
    parts["tensor_from_numpy"] = per_call(lambda: slope.tensor(x))
    parts["lookup_tensor"] = per_call(lambda: tiny._compiled((x_tensor,), {}))
    parts["lookup_numpy"] = per_call(lambda: tiny._compiled((x,), {}))
    (_, executable, out_tree), tensors, backend, device = tiny._compiled((x_tensor,), {})
    buffers = [x_tensor.buffer]
    parts["run"] = per_call(lambda: executable.run(buffers), clock=time.process_time)
    run_executable = backend_module.run_executable
    parts["run_executable"] = per_call(
        lambda: run_executable(executable, tensors, backend, device), clock=time.process_time
    )
    outs = run_executable(executable, tensors, backend, device)
    parts["unflatten"] = per_call(lambda: tree.unflatten(out_tree, outs))
    parts["numpy_out"] = per_call(lambda: out.numpy())
    parts["whole_tensor"] = per_call(lambda: tiny(x_tensor), clock=time.process_time)
    parts["whole_numpy"] = per_call(lambda: tiny(x).numpy(), clock=time.process_time)
    trainer = bench.SlopeTrainer("onnxruntime", bench.slope_mlp_step, bench.mlp_data())
    trainer()
    step_args = (trainer.params, trainer.x, trainer.y)
    parts["mlp_lookup"] = per_call(lambda: trainer.step._compiled(step_args, {}), calls=5000)
    for name in ("numpy", "onnxruntime"):
        with slope.use_backend(name):
            three = slope.tensor(np.array([1.0, 2.0, 3.0], np.float32))
            parts[f"eager_{name}"] = per_call(lambda t=three: t * 2.0)
    for name in [b for b in ("iree", "onnxruntime") if b in slope.plugins.backends]:
        slope.set_backend(name)
        hessian = slope.jit(slope.hessian(lambda v: (v.tanh() ** 3).sum()))
        point = slope.tensor(bench.hessian_data())
        hessian(point)
        (_, compiled, _), _, _, _ = hessian._compiled((point,), {})
        point_buffers = [point.buffer]
        parts[f"hess_{name}_whole"] = per_call(lambda h=hessian, p=point: h(p), calls=3000, clock=time.process_time)
        parts[f"hess_{name}_run"] = per_call(
            lambda c=compiled, b=point_buffers: c.run(b), calls=3000, clock=time.process_time
        )
    print(" ".join(f"{key}={value:.2f}" for key, value in parts.items()))


if __name__ == "__main__":
    main()
