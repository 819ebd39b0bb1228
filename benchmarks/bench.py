"""Side-by-side timings: Slope on every installed backend against onnxruntime run directly, PyTorch and JAX.

    .venv/bin/python benchmarks/bench.py            # prints a markdown table of medians and ratios
    .venv/bin/python benchmarks/bench.py --quick    # fewer samples (a smoke run)
    .venv/bin/python benchmarks/bench.py --markdown benchmarks/RESULTS.md
    .venv/bin/python benchmarks/bench.py --only cnn   # one workload (repeatable: --only mlp --only eager)

Workloads (each contender is timed in interleaved rounds, so background load hits all of them alike):
- eager `x * 2.0` on a 3-element float32 tensor (cache hit), per call;
- an MNIST-shaped MLP train step (784 -> 100 ReLU -> 10, batch 200, softmax cross-entropy, SGD), one jitted step;
- the first call of that step (trace + compile), with a fresh `slope.jit` each time;
- a small CNN train step (conv3x3 32, ReLU, maxpool2, conv3x3 64, ReLU, maxpool2, linear 10; batch 64, 28x28);
- the Hessian of `sum(tanh(x) ** 3)` for x of 100 floats (forward-over-reverse), jitted;
- a jitted tiny function, `sin(x) * 2 + 1` on float32[1000]: a NumPy array in, `.numpy()` out, per steady call;
- an epoch of `examples/nn/mnist_mlp.py`'s loop (300 steps, batches from `slope.nn.datasets.loader`) against
  PyTorch's same loop (the reference), on MNIST-shaped random data.
The reference of each workload (ratio 1.00) is onnxruntime's own `run` for eager, the MLP step hand-built as one
ONNX graph and run in onnxruntime with `io_binding` into preallocated ping-pong output buffers (the physical floor:
our overhead is the gap to it; the same graph through the plain `run` is the row beside it), a bare onnxruntime
session's `run` (NumPy in, NumPy out) for the tiny function (the same session through an `io_binding`, the cheapest
call from NumPy and back, is the row beside it), and PyTorch eager for the CNN and `torch.func.hessian`
for the Hessian. PyTorch and JAX are optional: absent ones are skipped with a note.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable

import numpy as np

import slope

LEARNING_RATE = 0.1
MLP_SIZES = (200, 784, 100, 10)  # batch, inputs, hidden, classes
CNN_BATCH = 64


# ----------------------------------------------------------------------------------------------- timing


def cpu_count() -> int:
    """The CPUs this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class Contender:
    """One way of running a workload: a callable timed in blocks of `inner` calls."""

    def __init__(self, workload: str, name: str, fn: Callable[[], Any], inner: int = 1, reference: bool = False,
                 backend: str | None = None):  # fmt: skip
        self.workload = workload
        self.name = name
        self.fn = fn
        self.inner = inner
        self.reference = reference
        self.backend = backend  # the Slope backend made active before this contender runs
        self.samples: list[float] = []

    def activate(self) -> None:
        """Make this contender's Slope backend the active one (outside the timed loop)."""
        if self.backend is not None:
            slope.set_backend(self.backend)

    def measure(self, count: int) -> None:
        """Append `count` samples (seconds per call)."""
        self.activate()
        fn, inner = self.fn, self.inner
        for _ in range(count):
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            self.samples.append((time.perf_counter() - start) / inner)

    @property
    def median(self) -> float:
        """The median seconds per call."""
        return statistics.median(self.samples)


def run_rounds(contenders: list[Contender], rounds: int, per_round: int, warmup: int) -> None:
    """Warm every contender up, then time them in interleaved rounds."""
    for contender in contenders:
        contender.activate()
        for _ in range(warmup):
            contender.fn()
    for _ in range(rounds):
        for contender in contenders:
            gc.collect()
            gc.disable()
            try:
                contender.measure(per_round)
            finally:
                gc.enable()


# ----------------------------------------------------------------------------------------------- data


def mlp_data() -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Weights (PyTorch layout: w1 (100, 784), b1, w2 (10, 100), b2), inputs and class targets."""
    batch, inputs, hidden, classes = MLP_SIZES
    rng = np.random.default_rng(0)
    params = [
        (rng.standard_normal((hidden, inputs)) * 0.05).astype(np.float32),
        np.zeros(hidden, np.float32),
        (rng.standard_normal((classes, hidden)) * 0.05).astype(np.float32),
        np.zeros(classes, np.float32),
    ]
    x = rng.random((batch, inputs), dtype=np.float32)
    y = rng.integers(0, classes, batch).astype(np.int64)
    return params, x, y


def cnn_data() -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """CNN weights (PyTorch layout), a batch of 28x28 images and class targets."""
    rng = np.random.default_rng(1)
    shapes = [(32, 1, 3, 3), (32,), (64, 32, 3, 3), (64,), (10, 64 * 5 * 5), (10,)]
    params = [(rng.standard_normal(s) * 0.1).astype(np.float32) for s in shapes]
    x = rng.random((CNN_BATCH, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, CNN_BATCH).astype(np.int64)
    return params, x, y


# ----------------------------------------------------------------------------------------------- slope


def slope_mlp_loss(params: tuple, x: Any, y: Any) -> Any:
    """Softmax cross-entropy of the MLP."""
    w1, b1, w2, b2 = params
    hidden = slope.relu(x @ w1.T + b1)
    return slope.cross_entropy(hidden @ w2.T + b2, y)


def slope_mlp_step(params: tuple, x: Any, y: Any) -> tuple:
    """Forward, gradient and SGD update of the MLP."""
    loss, grads = slope.value_and_grad(slope_mlp_loss)(params, x, y)
    return tuple(p - LEARNING_RATE * g for p, g in zip(params, grads)), loss


def slope_cnn_loss(params: tuple, x: Any, y: Any) -> Any:
    """Softmax cross-entropy of the CNN."""
    w1, b1, w2, b2, w3, b3 = params
    h = slope.max_pool(slope.relu(slope.conv(x, w1, b1)), 2)
    h = slope.max_pool(slope.relu(slope.conv(h, w2, b2)), 2)
    return slope.cross_entropy(h.reshape(h.shape[0], -1) @ w3.T + b3, y)


def slope_cnn_step(params: tuple, x: Any, y: Any) -> tuple:
    """Forward, gradient and SGD update of the CNN."""
    loss, grads = slope.value_and_grad(slope_cnn_loss)(params, x, y)
    return tuple(p - 0.01 * g for p, g in zip(params, grads)), loss


class SlopeTrainer:
    """A jitted train step on one backend that feeds its updated parameters back in."""

    def __init__(self, backend: str, step: Callable, data: tuple):
        self.backend = backend
        params, x, y = data
        with slope.use_backend(backend):
            self.params = tuple(slope.tensor(p) for p in params)
            self.x, self.y = slope.tensor(x), slope.tensor(y)
        self.step = slope.jit(step)

    def __call__(self) -> Any:
        self.params, loss = self.step(self.params, self.x, self.y)
        return loss

    def loss(self) -> float:
        """The loss of one step (for the sanity check)."""
        with slope.use_backend(self.backend):
            return float(self().item())


def slope_first_call(backend: str) -> Callable[[], Any]:
    """Trace and compile the MLP step with a fresh jit (no cache), and run it once."""
    params, x, y = mlp_data()
    with slope.use_backend(backend):
        tensors = tuple(slope.tensor(p) for p in params), slope.tensor(x), slope.tensor(y)

    def first_call() -> Any:
        return slope.jit(slope_mlp_step)(*tensors)[1].item()

    return first_call


HESSIAN_SIZE = 100


def hessian_data() -> np.ndarray:
    """The point the Hessian workload differentiates at."""
    return np.random.default_rng(2).standard_normal(HESSIAN_SIZE).astype(np.float32)


def slope_hessian(backend: str) -> Callable[[], Any]:
    """The jitted Hessian of sum(tanh(x) ** 3), as in the README's tour."""
    with slope.use_backend(backend):
        x = slope.tensor(hessian_data())
    hessian = slope.jit(slope.hessian(lambda v: (v.tanh() ** 3).sum()))
    return lambda: hessian(x)


def slope_eager_mul(backend: str) -> Callable[[], Any]:
    """`x * 2.0` on a 3-element tensor, eagerly."""
    with slope.use_backend(backend):
        x = slope.tensor(np.array([1.0, 2.0, 3.0], np.float32))
    return lambda: x * 2.0


# ----------------------------------------------------------------------------------------------- onnxruntime


def reference_mlp_model(lr: float = LEARNING_RATE) -> Any:
    """The MLP train step written by hand as one ONNX graph: what a person would build for onnxruntime."""
    from onnx import TensorProto, helper

    batch, inputs, hidden, classes = MLP_SIZES
    f32 = TensorProto.FLOAT

    def tensor(name: str, values: Any, dtype: int = f32) -> Any:
        array = np.asarray(values)
        return helper.make_tensor(name, dtype, array.shape, array.reshape(-1).tolist())

    initializers = [
        tensor("axis0", [0], TensorProto.INT64),
        tensor("zero", 0.0),
        tensor("depth", [classes], TensorProto.INT64),
        tensor("onehot_values", [0.0, 1.0]),
        tensor("inv_batch", 1.0 / batch),
        tensor("lr", lr),
    ]
    node = helper.make_node
    nodes = [
        node("Gemm", ["x", "w1", "b1"], ["h_pre"], transB=1),
        node("Relu", ["h_pre"], ["h"]),
        node("Gemm", ["h", "w2", "b2"], ["logits"], transB=1),
        node("LogSoftmax", ["logits"], ["logp"], axis=1),
        node("OneHot", ["y", "depth", "onehot_values"], ["onehot"], axis=-1),
        node("Mul", ["onehot", "logp"], ["picked"]),
        node("ReduceSum", ["picked"], ["picked_sum"], keepdims=0),
        node("Mul", ["picked_sum", "inv_batch"], ["neg_loss"]),
        node("Neg", ["neg_loss"], ["loss"]),
        node("Exp", ["logp"], ["probs"]),
        node("Sub", ["probs", "onehot"], ["diff"]),
        node("Mul", ["diff", "inv_batch"], ["dlogits"]),
        node("Gemm", ["dlogits", "h", "w2"], ["w2_new"], transA=1, alpha=-lr, beta=1.0),
        node("ReduceSum", ["dlogits", "axis0"], ["db2"], keepdims=0),
        node("Mul", ["db2", "lr"], ["db2_lr"]),
        node("Sub", ["b2", "db2_lr"], ["b2_new"]),
        node("MatMul", ["dlogits", "w2"], ["dh"]),
        node("Greater", ["h", "zero"], ["active"]),
        node("Where", ["active", "dh", "zero"], ["dh_pre"]),
        node("Gemm", ["dh_pre", "x", "w1"], ["w1_new"], transA=1, alpha=-lr, beta=1.0),
        node("ReduceSum", ["dh_pre", "axis0"], ["db1"], keepdims=0),
        node("Mul", ["db1", "lr"], ["db1_lr"]),
        node("Sub", ["b1", "db1_lr"], ["b1_new"]),
    ]
    info = helper.make_tensor_value_info
    graph_inputs = [
        info("w1", f32, [hidden, inputs]),
        info("b1", f32, [hidden]),
        info("w2", f32, [classes, hidden]),
        info("b2", f32, [classes]),
        info("x", f32, [batch, inputs]),
        info("y", TensorProto.INT64, [batch]),
    ]
    graph_outputs = [
        info("w1_new", f32, [hidden, inputs]),
        info("b1_new", f32, [hidden]),
        info("w2_new", f32, [classes, hidden]),
        info("b2_new", f32, [classes]),
        info("loss", f32, []),
    ]
    graph = helper.make_graph(nodes, "mlp_step", graph_inputs, graph_outputs, initializer=initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def _ort_session(model_bytes: bytes) -> Any:
    """A session with Slope's thread setup for large programs (all CPUs, sequential, workers spinning only as long as
    SLOPE_ORT_SPIN_US says, by default never), all optimizations.

    The same setup as Slope's own sessions, so the comparison measures the graph and the call overhead, not thread
    settings (spinning workers would also slow every other library timed in this process).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    global_pool, spin_us = False, 0
    if importlib.util.find_spec("slope_onnx") is not None:
        from slope_onnx.backend import _Threads

        _Threads.setup()  # (the settings as the backend reads them, if it was not made yet)
        global_pool, spin_us = bool(_Threads.global_pool), _Threads.spin_us
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin_us else "0")
    if spin_us:  # (SLOPE_ORT_SPIN_US, as Slope's pooled sessions)
        options.add_session_config_entry("session.intra_op.spin_duration_us", str(spin_us))
    if global_pool:
        options.use_per_session_threads = False  # required once a global pool exists
    else:
        options.intra_op_num_threads = cpu_count()
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def _ort_value(array: np.ndarray) -> Any:
    """A native OrtValue owning a copy of the array."""
    from onnxruntime.capi import _pybind_state as ort_c

    device = ort_c.OrtDevice(ort_c.OrtDevice.cpu(), ort_c.OrtDevice.default_memory(), 0)
    value = ort_c.OrtValue.ortvalue_from_shape_and_type(array.shape, array.dtype, device)
    value.update_inplace(np.ascontiguousarray(array))
    return value


class _FastRun:
    """onnxruntime's cheapest Python call: the native session's `run_with_ort_values` on native OrtValues.

    (The public `InferenceSession.run_with_ort_values` wraps every output in a Python object, about 30 µs more.)
    """

    def __init__(self, session: Any, output_names: list[str]):
        from onnxruntime.capi import _pybind_state as ort_c

        self.run_native = session._sess.run_with_ort_values
        self.output_names = output_names
        self.run_options = ort_c.RunOptions()

    def __call__(self, feeds: dict) -> list:
        outs = self.run_native(feeds, self.output_names, self.run_options)
        return [outs[i] for i in range(len(self.output_names))]


class OnnxMlpTrainer:
    """The hand-built MLP step run directly in onnxruntime, with OrtValues fed back in."""

    def __init__(self) -> None:
        import onnx

        model = reference_mlp_model()
        onnx.checker.check_model(model)
        params, x, y = mlp_data()
        self.values = [_ort_value(a) for a in (*params, x, y)]
        self.input_names = ["w1", "b1", "w2", "b2", "x", "y"]
        self.run = _FastRun(_ort_session(model.SerializeToString()), ["w1_new", "b1_new", "w2_new", "b2_new", "loss"])

    def __call__(self) -> Any:
        outs = self.run(dict(zip(self.input_names, self.values)))
        self.values[:4] = outs[:4]
        return outs[4]

    def loss(self) -> float:
        """The loss of one step."""
        return float(self().numpy())


class OnnxMlpTrainerBound:
    """The hand-built MLP step run through an `io_binding`: inputs bound as OrtValues, the outputs written into two
    preallocated sets of buffers used in turn (ping-pong), the new parameters bound as the next step's inputs."""

    def __init__(self) -> None:
        import onnx
        from onnxruntime.capi import _pybind_state as ort_c

        model = reference_mlp_model()
        onnx.checker.check_model(model)
        session = _ort_session(model.SerializeToString())
        params, x, y = mlp_data()
        self.names = ["w1", "b1", "w2", "b2"]
        self.params = [_ort_value(p) for p in params]
        self.spare = [_ort_value(p) for p in params]  # the buffers the next step writes into
        self.loss_values = [_ort_value(np.zeros((), np.float32)) for _ in range(2)]
        self.binding = session.io_binding()._iobinding
        self.binding.bind_ortvalue_input("x", _ort_value(x))
        self.binding.bind_ortvalue_input("y", _ort_value(y))
        self.run_bound = session._sess.run_with_iobinding
        self.run_options = ort_c.RunOptions()

    def __call__(self) -> Any:
        binding = self.binding
        for name, value, out in zip(self.names, self.params, self.spare):
            binding.bind_ortvalue_input(name, value)
            binding.bind_ortvalue_output(name + "_new", out)
        loss = self.loss_values[0]
        binding.bind_ortvalue_output("loss", loss)
        self.run_bound(binding, self.run_options)
        self.params, self.spare = self.spare, self.params
        self.loss_values.reverse()
        return loss

    def loss(self) -> float:
        """The loss of one step."""
        return float(self().numpy())


def onnx_eager_mul() -> Callable[[], Any]:
    """onnxruntime's own cost of one `Mul` of 3 floats: a prebuilt session run on prebuilt OrtValues."""
    from onnx import TensorProto, helper

    info = helper.make_tensor_value_info
    graph = helper.make_graph([helper.make_node("Mul", ["x", "c"], ["y"])], "mul",
                              [info("x", TensorProto.FLOAT, [3]), info("c", TensorProto.FLOAT, [3])],
                              [info("y", TensorProto.FLOAT, [3])])  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    run = _FastRun(_ort_session(model.SerializeToString()), ["y"])
    feeds = {"x": _ort_value(np.ones(3, np.float32)), "c": _ort_value(np.full(3, 2.0, np.float32))}
    return lambda: run(feeds)


# ----------------------------------------------------------------------------------------------- tiny function

TINY_SIZE = 1000


def tiny_data() -> np.ndarray:
    """The NumPy input of the tiny function."""
    return np.random.default_rng(3).standard_normal(TINY_SIZE).astype(np.float32)


def slope_tiny(backend: str) -> Callable[[], Any]:
    """`sin(x) * 2 + 1` under `slope.jit`: a NumPy array in, `.numpy()` out (through `slope.tensor` where jit takes
    no NumPy arrays)."""
    x = tiny_data()
    tiny = slope.jit(lambda v: slope.sin(v) * 2.0 + 1.0)
    with slope.use_backend(backend):
        try:
            tiny(x)
        except slope.TransformError:
            return lambda: tiny(slope.tensor(x)).numpy()
    return lambda: tiny(x).numpy()


def onnx_tiny() -> Callable[[], Any]:
    """The same function as a hand-built ONNX graph in a bare onnxruntime session: `session.run`, NumPy in and out."""
    from onnx import TensorProto, helper

    info = helper.make_tensor_value_info
    nodes = [helper.make_node("Sin", ["x"], ["s"]), helper.make_node("Mul", ["s", "two"], ["m"]),
             helper.make_node("Add", ["m", "one"], ["y"])]  # fmt: skip
    constants = [helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]),
                 helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])]  # fmt: skip
    graph = helper.make_graph(nodes, "tiny", [info("x", TensorProto.FLOAT, [TINY_SIZE])],
                              [info("y", TensorProto.FLOAT, [TINY_SIZE])], initializer=constants)  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    session = onnx_tiny.session = _ort_session(model.SerializeToString())  # type: ignore[attr-defined]
    x = tiny_data()
    return lambda: session.run(None, {"x": x})[0]


def onnx_tiny_bound() -> Callable[[], Any]:
    """The same graph through an `io_binding`: the input wrapped as an OrtValue without a copy, the output written into
    a preallocated OrtValue and copied out as NumPy (the cheapest onnxruntime call from NumPy and back: the floor)."""
    from onnxruntime.capi import _pybind_state as ort_c

    session = onnx_tiny.session  # type: ignore[attr-defined]
    cpu = ort_c.OrtDevice(ort_c.OrtDevice.cpu(), ort_c.OrtDevice.default_memory(), 0)
    binding, run_options = session.io_binding()._iobinding, ort_c.RunOptions()
    output = ort_c.OrtValue.ortvalue_from_shape_and_type([TINY_SIZE], np.float32, cpu)
    binding.bind_ortvalue_output("y", output)
    run_bound, x = session._sess.run_with_iobinding, tiny_data()

    def run() -> np.ndarray:
        binding.bind_ortvalue_input("x", ort_c.OrtValue.ortvalue_from_numpy(x, cpu))  # (x outlives the run)
        run_bound(binding, run_options)
        return np.array(output.numpy())

    return run


def torch_tiny() -> Callable[[], Any]:
    """The same function in PyTorch eager mode, from and to NumPy."""
    import torch

    x = tiny_data()
    return lambda: (torch.sin(torch.from_numpy(x)) * 2.0 + 1.0).numpy()


def jax_tiny() -> Callable[[], Any]:
    """The same function under `jax.jit`, NumPy in, NumPy out."""
    jax = _jax()
    tiny = jax.jit(lambda v: jax.numpy.sin(v) * 2.0 + 1.0)
    x = tiny_data()
    return lambda: np.asarray(tiny(x))


# ----------------------------------------------------------------------------------------------- MNIST epoch

EPOCH_ROWS, EPOCH_BATCH = 60_000, 200  # MNIST's training set: 300 steps of 200 images per epoch


def epoch_data() -> tuple[np.ndarray, np.ndarray]:
    """MNIST-shaped data: uint8 images (60,000 x 784) and int64 labels (random: only the time is measured)."""
    rng = np.random.default_rng(4)
    return rng.integers(0, 256, (EPOCH_ROWS, 784), dtype=np.uint8), rng.integers(0, 10, EPOCH_ROWS)


class SlopeEpoch:
    """One epoch of `examples/nn/mnist_mlp.py`'s loop: 784-100-10 MLP, Adam, pixels normalized inside the jitted
    step, batches from `slope.nn.datasets.loader` (or sliced and made tensors in the loop where it is missing), the
    step losses read once at the end."""

    def __init__(self, backend: str):
        import slope.nn as nn

        self.backend = backend
        self.images, self.labels = epoch_data()
        self.order_rng = np.random.default_rng(0)
        with slope.use_backend(backend):
            slope.manual_seed(0)
            self.model = nn.Sequential(nn.Linear(784, 100), nn.ReLU(), nn.Linear(100, 10))
            optimizer = nn.Adam(5e-3)
            self.state = optimizer.init(self.model)

        def loss_fn(model: Any, images: Any, labels: Any) -> Any:
            pixels = images.astype(slope.float32) * (1.0 / (255.0 * 0.3081)) - 0.1307 / 0.3081
            return nn.cross_entropy(model(pixels), labels)

        @slope.jit
        def step(model: Any, state: Any, images: Any, labels: Any) -> tuple:
            loss, grads = slope.value_and_grad(loss_fn)(model, images, labels)
            model, state = optimizer.step(model, grads, state)
            return model, state, loss

        self.step = step
        self.loader = getattr(nn.datasets, "loader", None)

    def batches(self, order: np.ndarray) -> Any:
        """The epoch's batches as tensors."""
        if self.loader is not None:
            return self.loader(self.images, self.labels, batch_size=EPOCH_BATCH, order=order)
        return ((slope.tensor(self.images[order[i : i + EPOCH_BATCH]]), slope.tensor(self.labels[order[i : i + EPOCH_BATCH]]))
                for i in range(0, EPOCH_ROWS, EPOCH_BATCH))  # fmt: skip

    def __call__(self) -> list[float]:
        losses = []
        for images, labels in self.batches(self.order_rng.permutation(EPOCH_ROWS)):
            self.model, self.state, loss = self.step(self.model, self.state, images, labels)
            losses.append(loss)
        return [float(loss) for loss in losses]


def torch_epoch() -> Callable[[], Any]:
    """The same epoch in PyTorch: the same model and Adam, batches indexed from tensors of the whole set."""
    import torch

    images, labels = epoch_data()
    images_t, labels_t = torch.from_numpy(images), torch.from_numpy(labels)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(784, 100), torch.nn.ReLU(), torch.nn.Linear(100, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    order_rng = np.random.default_rng(0)

    def epoch() -> list[float]:
        order = torch.from_numpy(order_rng.permutation(EPOCH_ROWS))
        losses = []
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # its fastest setting for steps this small (OpenMP workers wait longer than they work)
        for i in range(0, EPOCH_ROWS, EPOCH_BATCH):
            index = order[i : i + EPOCH_BATCH]
            pixels = images_t[index].float() * (1.0 / (255.0 * 0.3081)) - 0.1307 / 0.3081
            loss = torch.nn.functional.cross_entropy(model(pixels), labels_t[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.detach())
        torch.set_num_threads(threads)
        return [float(loss) for loss in losses]

    return epoch


# ----------------------------------------------------------------------------------------------- IREE


STABLEHLO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "stablehlo")


class IreeReference:
    """A hand-written StableHLO module (benchmarks/stablehlo/NAME.mlir) compiled by IREE with the iree backend's
    flags and called through its runtime: the floor the iree backend's jitted program is measured against."""

    def __init__(self, name: str, inputs: list[np.ndarray], outputs: int, feed_back: int = 0):
        from slope_iree import runtime

        with open(os.path.join(STABLEHLO, name + ".mlir")) as handle:
            self.run = runtime.function(handle.read(), "cpu", outputs)
        self.buffers = [runtime.from_numpy(a, "cpu") for a in inputs]
        self.feed_back = feed_back  # the first outputs replace the first inputs (a train step's parameters)
        self.to_numpy = runtime.to_numpy

    def __call__(self) -> Any:
        outs = self.run(self.buffers)
        self.buffers[: self.feed_back] = outs[: self.feed_back]
        return outs[-1]

    def loss(self) -> float:
        """The loss of one step."""
        return float(self.to_numpy(self()))


def iree_mlp_reference() -> IreeReference:
    """The MLP step written by hand in StableHLO, its parameters fed back in."""
    params, x, y = mlp_data()
    return IreeReference("mlp_step", [*params, x, y], outputs=5, feed_back=4)


def iree_hessian_reference() -> IreeReference:
    """The closed-form Hessian of sum(tanh(x) ** 3) written by hand in StableHLO."""
    return IreeReference("hessian", [hessian_data()], outputs=1)


# ----------------------------------------------------------------------------------------------- PyTorch, JAX


def torch_mlp_step() -> Callable[[], Any]:
    """The MLP step in PyTorch eager mode."""
    import torch

    params, x, y = mlp_data()
    weights = [torch.tensor(p, requires_grad=True) for p in params]
    inputs, targets = torch.tensor(x), torch.tensor(y)

    def step() -> Any:
        w1, b1, w2, b2 = weights
        logits = torch.relu(inputs @ w1.T + b1) @ w2.T + b2
        loss = torch.nn.functional.cross_entropy(logits, targets)
        grads = torch.autograd.grad(loss, weights)
        with torch.no_grad():
            for p, g in zip(weights, grads):
                p -= LEARNING_RATE * g
        return loss

    return step


def torch_cnn_step() -> Callable[[], Any]:
    """The CNN step in PyTorch eager mode."""
    import torch

    functional = torch.nn.functional
    params, x, y = cnn_data()
    weights = [torch.tensor(p, requires_grad=True) for p in params]
    inputs, targets = torch.tensor(x), torch.tensor(y)

    def step() -> Any:
        w1, b1, w2, b2, w3, b3 = weights
        h = functional.max_pool2d(functional.relu(functional.conv2d(inputs, w1, b1)), 2)
        h = functional.max_pool2d(functional.relu(functional.conv2d(h, w2, b2)), 2)
        loss = functional.cross_entropy(h.flatten(1) @ w3.T + b3, targets)
        grads = torch.autograd.grad(loss, weights)
        with torch.no_grad():
            for p, g in zip(weights, grads):
                p -= 0.01 * g
        return loss

    return step


def torch_hessian() -> Callable[[], Any]:
    """torch.func.hessian of the same function (forward-over-reverse, like slope.hessian)."""
    import torch

    x = torch.tensor(hessian_data())
    hessian = torch.func.hessian(lambda v: (torch.tanh(v) ** 3).sum())
    return lambda: hessian(x)


def torch_eager_mul() -> Callable[[], Any]:
    """`x * 2.0` on 3 floats in PyTorch."""
    import torch

    x = torch.tensor([1.0, 2.0, 3.0])
    return lambda: x * 2.0


def _jax() -> Any:
    import jax

    jax.config.update("jax_platforms", "cpu")
    return jax


def jax_mlp_step() -> Callable[[], Any]:
    """The MLP step under `jax.jit`, parameters fed back in."""
    jax = _jax()
    jnp = jax.numpy
    params, x, y = mlp_data()

    def loss_fn(weights: tuple, inputs: Any, targets: Any) -> Any:
        w1, b1, w2, b2 = weights
        logits = jax.nn.relu(inputs @ w1.T + b1) @ w2.T + b2
        logp = jax.nn.log_softmax(logits, axis=1)
        return -jnp.mean(jnp.take_along_axis(logp, targets[:, None], axis=1))

    @jax.jit
    def step(weights: tuple, inputs: Any, targets: Any) -> tuple:
        loss, grads = jax.value_and_grad(loss_fn)(weights, inputs, targets)
        return tuple(p - LEARNING_RATE * g for p, g in zip(weights, grads)), loss

    state = {"weights": tuple(jnp.asarray(p) for p in params)}
    inputs, targets = jnp.asarray(x), jnp.asarray(y)

    def run() -> Any:
        state["weights"], loss = step(state["weights"], inputs, targets)
        loss.block_until_ready()
        return loss

    return run


def jax_first_call() -> Callable[[], Any]:
    """Trace and compile the MLP step with a fresh `jax.jit`, and run it once."""
    jax = _jax()
    jnp = jax.numpy
    params, x, y = mlp_data()
    weights, inputs, targets = tuple(jnp.asarray(p) for p in params), jnp.asarray(x), jnp.asarray(y)

    def run() -> Any:
        def loss_fn(w: tuple, a: Any, t: Any) -> Any:
            logits = jax.nn.relu(a @ w[0].T + w[1]) @ w[2].T + w[3]
            return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits, axis=1), t[:, None], axis=1))

        def step(w: tuple, a: Any, t: Any) -> tuple:
            loss, grads = jax.value_and_grad(loss_fn)(w, a, t)
            return tuple(p - LEARNING_RATE * g for p, g in zip(w, grads)), loss

        return float(jax.jit(step)(weights, inputs, targets)[1])

    return run


# ----------------------------------------------------------------------------------------------- fresh processes


README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def readme_tour() -> str:
    """The README's tour (its first Python block under "A short tour")."""
    with open(README) as handle:
        text = handle.read()
    return text.split("## A short tour", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]


def child(task: str, backend: str) -> None:
    """What a fresh process measures (run as `bench.py --child TASK BACKEND`): prints seconds."""
    if task == "tour":
        os.chdir(os.environ.get("TMPDIR", "/tmp"))  # (the tour exports a model into the working folder)
        exec(compile(readme_tour(), "README tour", "exec"), {})
        return
    slope.set_backend(backend)
    params, x, y = mlp_data()
    tensors = tuple(slope.tensor(p) for p in params), slope.tensor(x), slope.tensor(y)
    start = time.perf_counter()
    slope.jit(slope_mlp_step)(*tensors)[1].item()
    print(time.perf_counter() - start)


class FreshProcess(Contender):
    """A contender timed in a new Python process each sample, after one run that fills the disk caches: the tour's
    wall time (interpreter start and `import slope` included), or the first call as the process measures it."""

    def __init__(self, workload: str, name: str, task: str, backend: str):
        super().__init__(workload, name, lambda: None)
        self.task, self.backend_name = task, backend
        self.warm = False

    def run_child(self) -> float:
        """One fresh process: the seconds it took."""
        import subprocess

        env = {**os.environ, "SLOPE_BACKEND": self.backend_name}
        start = time.perf_counter()
        done = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", self.task, self.backend_name],
                              env=env, capture_output=True, text=True)  # fmt: skip
        elapsed = time.perf_counter() - start
        if done.returncode:
            last = (done.stderr.strip().splitlines() or ["?"])[-1]
            raise RuntimeError(f"{self.workload} / {self.name}: the process failed: {last}")
        return elapsed if self.task == "tour" else float(done.stdout.split()[-1])

    def measure(self, count: int) -> None:
        """Append `count` samples (the first run, which may compile, is not one)."""
        if not self.warm:
            self.run_child()
            self.warm = True
        self.samples += [self.run_child() for _ in range(count)]


# ----------------------------------------------------------------------------------------------- the run


def available(module: str) -> bool:
    """Whether a module can be imported."""
    return importlib.util.find_spec(module) is not None


IREE_MLP_REFERENCE = "hand-written StableHLO in IREE"
MLP_REFERENCE = "hand-built ONNX in onnxruntime, io_binding"
MLP_PLAIN_RUN = "hand-built ONNX in onnxruntime, plain run"
TINY = "jitted sin(x) * 2 + 1 (1000)"
EPOCH = "MNIST MLP epoch (300 steps)"
IREE_HESSIAN_REFERENCE = "hand-written StableHLO in IREE (closed form)"


def build(quick: bool) -> tuple[list[list[Contender]], list[str], dict[str, list[Contender]]]:
    """The contenders of each workload, notes on skipped ones, and the first-call contenders."""
    backends = sorted(slope.plugins.backends, key=lambda name: (name != "onnxruntime", name))
    notes = []
    has_torch, has_jax, has_ort = available("torch"), available("jax"), available("onnxruntime")
    if not has_torch:
        notes.append("PyTorch not installed: its rows are skipped (`pip install torch`).")
    if not has_jax:
        notes.append("JAX not installed: its rows are skipped (`pip install jax jaxlib`).")
    eager = [Contender("eager x * 2.0", f"slope {b}", slope_eager_mul(b), inner=200, backend=b) for b in backends]
    if has_ort:
        eager.insert(
            0, Contender("eager x * 2.0", "onnxruntime run (raw)", onnx_eager_mul(), inner=200, reference=True)
        )
    if has_torch:
        eager.append(Contender("eager x * 2.0", "PyTorch eager", torch_eager_mul(), inner=200))
    mlp = [Contender("MLP train step", f"slope {b} (jit)", SlopeTrainer(b, slope_mlp_step, mlp_data()), backend=b)
           for b in backends]  # fmt: skip
    if has_ort:
        mlp.insert(0, Contender("MLP train step", MLP_PLAIN_RUN, OnnxMlpTrainer()))
        mlp.insert(0, Contender("MLP train step", MLP_REFERENCE, OnnxMlpTrainerBound(), reference=True))
    if "iree" in backends:
        mlp.append(Contender("MLP train step", IREE_MLP_REFERENCE, iree_mlp_reference()))
    if has_torch:
        mlp.append(Contender("MLP train step", "PyTorch eager", torch_mlp_step()))
    if has_jax:
        mlp.append(Contender("MLP train step", "jax.jit", jax_mlp_step()))
    cnn = [Contender("CNN train step", f"slope {b} (jit)", SlopeTrainer(b, slope_cnn_step, cnn_data()), backend=b)
           for b in backends if b != "numpy" or not quick]  # fmt: skip
    if has_torch:
        cnn.insert(0, Contender("CNN train step", "PyTorch eager", torch_cnn_step(), reference=True))
    hessian = [Contender("Hessian (100)", f"slope {b} (jit)", slope_hessian(b), inner=5, backend=b) for b in backends]
    if "iree" in backends:
        hessian.append(Contender("Hessian (100)", IREE_HESSIAN_REFERENCE, iree_hessian_reference(), inner=5))
    if has_torch:
        hessian.insert(0, Contender("Hessian (100)", "torch.func.hessian", torch_hessian(), inner=5, reference=True))
    tiny = [Contender(TINY, f"slope {b} (jit)", slope_tiny(b), inner=100, backend=b) for b in backends]
    if has_ort:
        tiny.insert(0, Contender(TINY, "bare onnxruntime session", onnx_tiny(), inner=100, reference=True))
        tiny.insert(1, Contender(TINY, "bare onnxruntime session, io_binding", onnx_tiny_bound(), inner=100))
    if has_torch:
        tiny.append(Contender(TINY, "PyTorch eager", torch_tiny(), inner=100))
    if has_jax:
        tiny.append(Contender(TINY, "jax.jit", jax_tiny(), inner=100))
    epochs = [Contender(EPOCH, "slope onnxruntime (jit, loader)", SlopeEpoch("onnxruntime"), backend="onnxruntime")]
    if has_torch:
        epochs.insert(0, Contender(EPOCH, "PyTorch eager", torch_epoch(), reference=True))
    first = [Contender("MLP first call (trace + compile)", f"slope {b}", slope_first_call(b), backend=b)
             for b in backends]  # fmt: skip
    if has_jax:
        first.append(Contender("MLP first call (trace + compile)", "jax.jit", jax_first_call()))
    if "iree" in backends:
        first.append(FreshProcess("MLP first call, fresh process, warm disk cache", "slope iree", "first", "iree"))
        first.append(FreshProcess("README tour, fresh process, warm cache", "slope iree", "tour", "iree"))
    return [eager, mlp, cnn, hessian, tiny, epochs], notes, {"first": first}


def check_losses(groups: list[list[Contender]]) -> list[str]:
    """Every MLP contender starts from the same weights: their first losses must agree."""
    lines = []
    for contender in groups[1] + groups[2]:
        loss_of = getattr(contender.fn, "loss", None)
        if loss_of is not None:
            lines.append(f"{contender.workload} / {contender.name}: first loss {loss_of():.6f}")
    return lines


def table(groups: list[list[Contender]]) -> str:
    """The markdown table of medians and ratios to each workload's reference."""
    rows = ["| workload | contender | median | ratio to reference |", "|---|---|---:|---:|"]
    for group in groups:
        reference = next((c for c in group if c.reference), None)
        for c in group:
            median = c.median
            shown = f"{median * 1e6:.2f} µs" if median < 1e-3 else f"{median * 1e3:.3f} ms"
            ratio = f"{median / reference.median:.2f}" if reference else "-"
            mark = " (reference)" if c.reference else ""
            rows.append(f"| {c.workload} | {c.name}{mark} | {shown} | {ratio} |")
    return "\n".join(rows)


def acceptance(groups: list[list[Contender]], first: list[Contender]) -> list[str]:
    """Issue #4's acceptance points, checked against this run."""
    by_name = {(c.workload, c.name): c for group in groups + [first] for c in group}
    lines = []

    def find(workload: str, name: str) -> Contender | None:
        return by_name.get((workload, name))

    eager = find("eager x * 2.0", "slope onnxruntime")
    if eager:
        ok = eager.median <= 15e-6
        lines.append(f"- eager `x * 2.0` (cache hit): {eager.median * 1e6:.2f} µs <= 15 µs: {'yes' if ok else 'NO'}")
    numpy_eager = find("eager x * 2.0", "slope numpy")
    for name, contender, bound in [("onnxruntime", eager, 5e-6), ("numpy", numpy_eager, 2.5e-6)]:
        if contender:
            ok = contender.median <= bound
            lines.append(f"- eager `x * 2.0` on {name} (issue 15): {contender.median * 1e6:.2f} µs <= "
                         f"{bound * 1e6:.1f} µs: {'yes' if ok else 'NO'}")  # fmt: skip
    ours, ref = find("MLP train step", "slope onnxruntime (jit)"), find("MLP train step", MLP_REFERENCE)
    if ours and ref:
        ratio = ours.median / ref.median
        lines.append(f"- MLP step vs hand-built ONNX with io_binding: {ratio:.3f}x <= 1.10x (issue 15): "
                     f"{'yes' if ratio <= 1.10 else 'NO'}")  # fmt: skip
    epoch, torch_loop = find(EPOCH, "slope onnxruntime (jit, loader)"), find(EPOCH, "PyTorch eager")
    if epoch:
        ratio = f" and {epoch.median / torch_loop.median:.2f}x PyTorch's loop <= 1.2x" if torch_loop else ""
        ok = epoch.median <= 0.25 and (not torch_loop or epoch.median <= 1.2 * torch_loop.median)
        lines.append(f"- MNIST MLP epoch: {epoch.median:.3f} s <= 0.25 s{ratio} (issue 15): {'yes' if ok else 'NO'}")
    tiny = find(TINY, "slope onnxruntime (jit)")
    if tiny:
        ok = tiny.median <= 12e-6
        lines.append(f"- jitted tiny function on onnxruntime: {tiny.median * 1e6:.2f} µs <= 12 µs (issue 15): "
                     f"{'yes' if ok else 'NO'}")  # fmt: skip
    jax_step = find("MLP train step", "jax.jit")
    if ours and jax_step:
        faster = ours.median < jax_step.median
        lines.append(f"- MLP step faster than jax.jit ({ours.median * 1e3:.3f} vs {jax_step.median * 1e3:.3f} ms): "
                     f"{'yes' if faster else 'NO'}")  # fmt: skip
    compile_time = find("MLP first call (trace + compile)", "slope onnxruntime")
    if compile_time:
        ok = compile_time.median <= 0.1
        lines.append(f"- MLP first call: {compile_time.median * 1e3:.1f} ms <= 100 ms: {'yes' if ok else 'NO'}")
    cnn, torch_cnn = find("CNN train step", "slope onnxruntime (jit)"), find("CNN train step", "PyTorch eager")
    if cnn and torch_cnn:
        ok = cnn.median <= torch_cnn.median
        lines.append(f"- CNN step vs PyTorch eager: {cnn.median * 1e3:.2f} vs {torch_cnn.median * 1e3:.2f} ms: "
                     f"{'yes' if ok else 'NO'}")  # fmt: skip
    lines += iree_acceptance(find)
    return lines


def iree_acceptance(find: Callable[[str, str], Contender | None]) -> list[str]:
    """Issue #11's acceptance points for the iree backend, checked against this run."""
    lines = []
    eager = find("eager x * 2.0", "slope iree")
    if eager:
        ok = eager.median <= 15e-6
        lines.append(f"- iree eager `x * 2.0`: {eager.median * 1e6:.2f} µs <= 15 µs: {'yes' if ok else 'NO'}")
    for workload, ours, reference, bound in [("MLP train step", "slope iree (jit)", IREE_MLP_REFERENCE, 1.15),
                                             ("Hessian (100)", "slope iree (jit)", IREE_HESSIAN_REFERENCE, 1.2)]:  # fmt: skip
        mine, hand = find(workload, ours), find(workload, reference)
        if mine and hand:
            ratio = mine.median / hand.median
            lines.append(f"- iree {workload} vs hand-written StableHLO: {ratio:.3f}x <= {bound}x: "
                         f"{'yes' if ratio <= bound else 'NO'}")  # fmt: skip
    for workload, bound in [("MLP first call, fresh process, warm disk cache", 0.02),
                            ("README tour, fresh process, warm cache", 2.0)]:  # fmt: skip
        fresh = find(workload, "slope iree")
        if fresh:
            ok = fresh.median <= bound
            lines.append(
                f"- iree {workload}: {fresh.median * 1e3:.1f} ms <= {bound * 1e3:.0f} ms: {'yes' if ok else 'NO'}"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    """Run every workload and print (or write) the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples: a smoke run")
    parser.add_argument("--markdown", help="also write the results to this markdown file")
    parser.add_argument("--only", choices=["eager", "mlp", "cnn", "hessian", "tiny", "epoch", "first"], action="append",
                        help="run only these workloads (repeatable; default: all)")  # fmt: skip
    parser.add_argument("--rounds", type=int, help="interleaved rounds of every timed workload (default 10, CNN 5)")
    parser.add_argument("--child", nargs=2, metavar=("TASK", "BACKEND"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child)
        return 0
    only = set(args.only or ("eager", "mlp", "cnn", "hessian", "tiny", "epoch", "first"))
    if available("torch"):
        import torch

        torch.set_num_threads(cpu_count())
    groups, notes, extra = build(args.quick)
    first = extra["first"]
    sanity = check_losses(groups)
    scale = 0.2 if args.quick else 1.0
    plan = [(groups[0], 10, int(15 * scale) or 2, 2000), (groups[1], 10, int(60 * scale) or 3, 30),
            (groups[2], 5, int(12 * scale) or 2, 3), (groups[3], 10, int(20 * scale) or 2, 10),
            (groups[4], 10, int(15 * scale) or 2, 500), (groups[5], 3, 1, 1)]  # fmt: skip
    workloads = ("eager", "mlp", "cnn", "hessian", "tiny", "epoch")
    for (workload, group), (_, rounds, per_round, warmup) in zip(zip(workloads, groups), plan):
        group[:] = [c for c in group if c.fn is not None] if workload in only else []
        rounds = args.rounds or rounds
        run_rounds(group, rounds if not args.quick else 2, per_round, warmup if not args.quick else 3)
    if "first" not in only:
        first[:] = []
    for contender in list(first):
        try:
            for _ in range(3 if args.quick else 5 if isinstance(contender, FreshProcess) else 7):
                contender.measure(1)
        except RuntimeError as error:  # a fresh process that failed: reported, the rest of the run goes on
            notes.append(str(error))
            first.remove(contender)
    header = [
        f"Slope benchmarks — {platform.processor() or platform.machine()}, {cpu_count()} CPU cores, "
        f"Python {platform.python_version()}, " + ", ".join(_versions()),
        "",
        "Command: `.venv/bin/python benchmarks/bench.py`",
        "",
    ]
    report = (
        "\n".join(header)
        + table(groups + [first])
        + "\n\nAcceptance (issue #4; the iree lines: issue #11):\n"
        + "\n".join(acceptance(groups, first))
    )
    if notes:
        report += "\n\nNotes:\n" + "\n".join(f"- {n}" for n in notes)
    report += "\n\nSanity (all contenders start from the same weights):\n" + "\n".join(f"- {s}" for s in sanity)
    print(report)
    if args.markdown:
        with open(args.markdown, "w") as handle:
            handle.write("# Benchmark results\n\n" + report + "\n")
    return 0


def _versions() -> list[str]:
    names = ["onnxruntime", "torch", "jax", "numpy"]
    out = [f"slope {slope.__version__}"]
    for name in names:
        if available(name):
            module = __import__(name)
            out.append(f"{name} {module.__version__}")
    return out


if __name__ == "__main__":
    sys.exit(main())
