"""Causal attention on onnxruntime's CPU provider: the decomposition Slope emits vs the fused kernels.

    python benchmarks/attention_ort.py                 # char_gpt's shapes: batch 12, 4 heads, T 64, head 32
    python benchmarks/attention_ort.py --batch 1       # generation's shape

Three single-node-ish ONNX graphs over the same (B, H, T, D) float32 q, k, v, each run in its own session with
intra-op threads as given: (1) the decomposition (MatMul, scale, causal Where, Softmax, MatMul), (2) com.microsoft
MultiHeadAttention (inputs (B, T, H*D), causal through `unidirectional`), (3) the standard ONNX Attention operator
(opset 23, is_causal=1). Outputs are checked against each other; medians of many runs are printed.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper


def decomposition(b: int, h: int, t: int, d: int) -> onnx.ModelProto:
    """(B,H,T,D) q, k, v -> softmax(q k^T / sqrt(D) masked) v, the nodes Slope's procedure lowers to."""
    shape = [b, h, t, d]
    mask = helper.make_tensor("mask", TensorProto.BOOL, [t, t], np.tril(np.ones((t, t), bool)).ravel().tolist())
    nodes = [
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
        helper.make_node("Mul", ["q", "scale"], ["qs"]),
        helper.make_node("MatMul", ["qs", "kt"], ["scores"]),
        helper.make_node("Where", ["mask", "scores", "neginf"], ["masked"]),
        helper.make_node("Softmax", ["masked"], ["weights"], axis=-1),
        helper.make_node("MatMul", ["weights", "v"], ["out"]),
    ]
    inits = [mask, helper.make_tensor("scale", TensorProto.FLOAT, [], [1 / np.sqrt(d)]),
             helper.make_tensor("neginf", TensorProto.FLOAT, [], [-np.inf])]  # fmt: skip
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in "qkv"]
    graph = helper.make_graph(nodes, "decomposition", inputs, [helper.make_tensor_value_info("out", 1, shape)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def contrib_mha(b: int, h: int, t: int, d: int) -> onnx.ModelProto:
    """com.microsoft MultiHeadAttention on (B, T, H*D) inputs; the (B,H,T,D) layout is converted in the graph."""
    shape = [b, h, t, d]
    nodes = [helper.make_node("Transpose", [n], [n + "t"], perm=[0, 2, 1, 3]) for n in "qkv"]
    nodes += [helper.make_node("Reshape", [n + "t", "flat"], [n + "f"]) for n in "qkv"]
    nodes += [helper.make_node("MultiHeadAttention", ["qf", "kf", "vf"], ["o"], domain="com.microsoft", num_heads=h,
                               unidirectional=1)]  # fmt: skip
    nodes += [helper.make_node("Reshape", ["o", "split"], ["o4"]),
              helper.make_node("Transpose", ["o4"], ["out"], perm=[0, 2, 1, 3])]  # fmt: skip
    inits = [helper.make_tensor("flat", TensorProto.INT64, [3], [b, t, h * d]),
             helper.make_tensor("split", TensorProto.INT64, [4], [b, t, h, d])]  # fmt: skip
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in "qkv"]
    graph = helper.make_graph(nodes, "mha", inputs, [helper.make_tensor_value_info("out", 1, shape)], inits)
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )


def onnx_attention(b: int, h: int, t: int, d: int) -> onnx.ModelProto:
    """The standard Attention operator (opset 23) on (B, H, T, D)."""
    shape = [b, h, t, d]
    nodes = [helper.make_node("Attention", ["q", "k", "v"], ["out"], is_causal=1)]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in "qkv"]
    graph = helper.make_graph(nodes, "attention", inputs, [helper.make_tensor_value_info("out", 1, shape)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])


def time_model(model: onnx.ModelProto, feeds: dict, repeats: int, threads: int) -> tuple[float, np.ndarray]:
    """Median milliseconds per run and the output."""
    model.ir_version = min(model.ir_version, 10)  # what onnxruntime 1.2x reads
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    out = session.run(None, feeds)[0]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times), out


def main() -> None:
    """Time the three graphs and print a Markdown table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=12)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--length", type=int, default=64)
    p.add_argument("--head-dim", type=int, default=32)
    p.add_argument("--repeats", type=int, default=300)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    b, h, t, d = args.batch, args.heads, args.length, args.head_dim
    rng = np.random.default_rng(0)
    feeds = {n: rng.standard_normal((b, h, t, d)).astype(np.float32) for n in "qkv"}
    print(f"| causal attention (B={b}, H={h}, T={t}, D={d}), onnxruntime {ort.__version__}, {args.threads} thread(s) "
          "| median ms |")  # fmt: skip
    print("|---|---|")
    q, k, v = (feeds[n].astype(np.float64) for n in "qkv")
    scores = np.where(np.tril(np.ones((t, t), bool)), q @ k.swapaxes(-1, -2) / np.sqrt(d), -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    reference = (weights / weights.sum(-1, keepdims=True)) @ v
    for name, build in (("decomposition (Slope's procedure)", decomposition),
                        ("com.microsoft MultiHeadAttention", contrib_mha),
                        ("ONNX Attention (opset 23)", onnx_attention)):  # fmt: skip
        try:
            ms, out = time_model(build(b, h, t, d), feeds, args.repeats, args.threads)
        except Exception as error:  # noqa: BLE001 - a kernel this onnxruntime lacks is a result too
            print(f"| {name} | not available: {str(error).splitlines()[0][:100]} |")
            continue
        error = float(np.abs(out - reference).max())
        print(f"| {name} | {ms:.3f} (max difference from float64 NumPy {error:.1e}) |")


if __name__ == "__main__":
    main()
