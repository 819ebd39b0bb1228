"""Rewrites of the model a CPU session runs, for kernels onnxruntime's own optimizer cannot pick in a training step.

`.code` and exported models keep the plain graph; only the copy handed to a CPU session with a thread pool (a jitted
step with real work) is rewritten, by `for_cpu_session`. Both rewrites give the plain graph's values, up to float
rounding in the convolutions (a window holding a NaN pools to NaN in both, its index naming the last NaN).

- Blocked-channel ("NCHWc") convolutions. onnxruntime runs a 2-d Conv with its fast NCHWc kernel only when the
  filter is a constant: it reorders the filter once, into blocks of B input by B output channels, while building
  the session. A training step's filters are inputs, so its Conv falls back to im2col + GEMM, 30-40% slower. The
  rewrite builds the graph onnxruntime's optimizer would, with the filter reordered inside the graph:
  `ReorderInput(x) -> com.microsoft.nchwc Conv(x, Transpose(w), b, activation) -> ReorderOutput`. B depends on the
  CPU (16 with AVX-512, 8 with AVX2): `block_size` reads it off a filter onnxruntime reordered itself. Constant
  filters take it too (onnxruntime folds their Transpose): its own rewrite (NchwcTransformer) is off in Slope's
  sessions (backend.py). The kernel skips padding, so a padded Conv gets a `Pad` first: an infinite weight meets
  its zeros (NaN, as the plain Conv and PyTorch).
- Pooling by phases. `MaxPool(Relu(Conv(x)))` with non-overlapping k x k windows, when the MaxPool's indices are
  used (a training step) and the convolution is cheap (a first layer: few input channels), computes the convolution
  once per window position ("phase") with stride k instead: the window maximum is then an element-wise Max of the
  k*k phases, and its index the first phase equal to it (a chain of Where at pooled size). onnxruntime's MaxPool
  with indices is a scalar loop (2 ms for a 64x32x26x26 input on 2 cores); the phases take a third of that. The
  translation's NaN guard (a MaxPool over the positions of NaNs: each window's last one) is taken by phases too.
"""

from __future__ import annotations

import functools
import math
import os
import tempfile
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from .graph import IR_VERSION, OPSET

DOMAIN = "com.microsoft.nchwc"
# phases pay off when the convolution reads at most this many values per output (a first layer's 1-3 channels)
PHASE_CONV_READS = 32
PHASE_KERNELS = (2, 3)  # pooling windows done by phases: k*k convolutions and a k*k-long chain of Where


def for_cpu_session(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with the rewrites above (a copy; the model itself when none applies)."""
    if not any(node.op_type == "Conv" and node.domain == "" for node in model.graph.node):
        return model
    try:
        graph = _Graph(model)
    except Exception:  # no static shapes to be had (a model over 2 GB, say): keep the plain graph
        return model
    changed = graph.phase_pools()
    changed = graph.lazy_nan_guards() or changed
    changed = graph.blocked_convs() or changed
    return graph.finish() if changed else model


@functools.cache
def block_size() -> int:
    """The channel block of onnxruntime's NCHWc kernels on this CPU (0 where it has none)."""
    channels = 32  # a multiple of every block size onnxruntime uses
    weight = np.random.default_rng(0).standard_normal((channels, channels, 1, 1)).astype(np.float32)
    shape = [1, channels, 2, 2]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"])],
        "block_size",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        initializer=[numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    options = ort.SessionOptions()
    options.log_severity_level = 4  # fatal only: saving an NCHWc model warns that it is hardware-specific
    options.intra_op_num_threads = 1
    try:
        with tempfile.TemporaryDirectory() as folder:
            options.optimized_model_filepath = os.path.join(folder, "optimized.onnx")
            ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
            optimized = onnx.load(options.optimized_model_filepath)
    except Exception:  # no writable temporary folder, say: keep onnxruntime's plain convolutions
        return 0
    if not any(node.domain == DOMAIN for node in optimized.graph.node):
        return 0
    reordered = [numpy_helper.to_array(t) for t in optimized.graph.initializer if list(t.dims) == list(weight.shape)]
    for block in (16, 8, 4):
        if reordered and np.array_equal(_blocked_filter(weight, block).reshape(weight.shape), reordered[0]):
            return block
    return 0


def _blocked_filter(weight: np.ndarray, block: int) -> np.ndarray:
    """NumPy reference of the NCHWc filter layout: (O/B, I/B, kh, kw, Bi, Bo)."""
    o, i, kh, kw = weight.shape
    return weight.reshape(o // block, block, i // block, block, kh, kw).transpose(0, 2, 4, 5, 3, 1)


def _attributes(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


class _Graph:
    """A model being rewritten: static types of its tensors, producers and consumers, and node replacements."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.types: dict[str, tuple[int, tuple[int, ...]]] = {}
        inferred = onnx.shape_inference.infer_shapes(model)
        for info in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
            tensor = info.type.tensor_type
            if tensor.HasField("shape") and all(d.HasField("dim_value") for d in tensor.shape.dim):
                self.types[info.name] = (tensor.elem_type, tuple(d.dim_value for d in tensor.shape.dim))
        self.constants = {t.name for t in model.graph.initializer}
        self.types.update((t.name, (t.data_type, tuple(t.dims))) for t in model.graph.initializer)
        self.outputs = {o.name for o in model.graph.output}
        self.producers = {name: node for node in model.graph.node for name in node.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in model.graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.replaced: dict[int, list[onnx.NodeProto]] = {}  # id(node) -> the nodes that take its place
        self.initializers: list[onnx.TensorProto] = []
        self.domains: set[str] = set()

    def constant(self, name: str, value: Any, dtype: Any = np.int64) -> str:
        self.initializers.append(numpy_helper.from_array(np.array(value, dtype), name))
        return name

    def only_use(self, name: str, node: onnx.NodeProto | None) -> bool:
        """Whether `node` is the one consumer of `name` (which is no graph output)."""
        users = self.consumers.get(name, [])
        return node is not None and name not in self.outputs and len(users) == 1 and users[0] is node

    def float_shape(self, name: str, rank: int) -> tuple[int, ...] | None:
        found = self.types.get(name)
        return found[1] if found is not None and found[0] == TensorProto.FLOAT and len(found[1]) == rank else None

    def finish(self) -> onnx.ModelProto:
        nodes = []
        for node in self.model.graph.node:
            nodes.extend(self.replaced.get(id(node), [node]))
        result = onnx.ModelProto()
        result.CopyFrom(self.model)
        del result.graph.node[:]
        result.graph.node.extend(nodes)
        result.graph.initializer.extend(self.initializers)
        result.opset_import.extend(helper.make_opsetid(domain, 1) for domain in sorted(self.domains))
        return result

    # ------------------------------------------------------------------------------------------- NCHWc convolutions
    def blocked_convs(self) -> bool:
        """Give each float32 2-d Conv (channels in whole blocks, one group) the NCHWc kernel."""
        changed = False
        for node in self.model.graph.node:
            if id(node) not in self.replaced and node.op_type == "Conv" and node.domain == "":
                changed = self._blocked_conv(node) or changed
        return changed

    def _blocked_conv(self, node: onnx.NodeProto) -> bool:
        x, w = node.input[0], node.input[1]
        attributes = _attributes(node)
        filter_shape = self.float_shape(w, 4)
        if self.float_shape(x, 4) is None or filter_shape is None:
            return False
        if attributes.get("group", 1) != 1 or attributes.get("auto_pad", b"NOTSET") != b"NOTSET":
            return False
        block = block_size()
        out_channels, in_channels, kh, kw = filter_shape
        if block == 0 or out_channels % block or in_channels % block:  # fewer channels: im2col is as fast
            return False
        name = node.output[0]
        blocked = [out_channels // block, block, in_channels // block, block, kh, kw]
        nodes = [  # the filter as (O/B, I/B, kh, kw, Bi, Bo), the input in channel blocks
            helper.make_node("Reshape", [w, self.constant(f"{name}_nchwc_blocks", blocked)], [f"{name}_nchwc_w6"]),
            helper.make_node("Transpose", [f"{name}_nchwc_w6"], [f"{name}_nchwc_wt"], perm=[0, 2, 4, 5, 3, 1]),
            helper.make_node(
                "Reshape", [f"{name}_nchwc_wt", self.constant(f"{name}_nchwc_shape", filter_shape)], [f"{name}_nchwc_w"]
            ),  # fmt: skip
        ]
        pads = attributes.pop("pads", [0, 0, 0, 0])
        if any(pads):  # the NCHWc kernel skips padding: an explicit Pad's zeros meet the filter (inf * 0 is NaN)
            amounts = self.constant(f"{name}_nchwc_pads", [0, 0, pads[0], pads[1], 0, 0, pads[2], pads[3]])
            nodes.append(helper.make_node("Pad", [x, amounts], [f"{name}_nchwc_padded"]))
            x = f"{name}_nchwc_padded"
        nodes.append(helper.make_node("ReorderInput", [x], [f"{name}_nchwc_x"], domain=DOMAIN, channels_last=0))
        result = name
        users = self.consumers.get(name, [])
        if self.only_use(name, users[0] if users else None) and users[0].op_type == "Relu" and users[0].domain == "":
            attributes["activation"] = "Relu"  # the Relu runs inside the convolution
            result = users[0].output[0]
            self.replaced[id(users[0])] = []
        inputs = [f"{name}_nchwc_x", f"{name}_nchwc_w", *node.input[2:3]]
        nodes.append(helper.make_node("Conv", inputs, [f"{name}_nchwc_y"], domain=DOMAIN, **attributes))
        nodes.append(helper.make_node("ReorderOutput", [f"{name}_nchwc_y"], [result], domain=DOMAIN, channels_last=0,
                                      channels=out_channels))  # fmt: skip
        self.replaced[id(node)] = nodes
        self.domains.add(DOMAIN)
        return True

    # ------------------------------------------------------------------------------------------- pooling by phases
    def _nan_guard(self, pool: onnx.NodeProto, only: bool = True) -> list[onnx.NodeProto] | None:
        """The nodes of the translation's NaN guard of this MaxPool, `MaxPool(Where(IsNaN(x), positions, -1))` (each
        window's last NaN), when they are (`only`) the pooled input's only other use, else None."""
        chain = [node for node in self.consumers.get(pool.input[0], []) if node is not pool]
        chain = chain if only else [node for node in chain if node.op_type == "IsNaN"]
        if len(chain) != 1 or chain[0].op_type != "IsNaN":
            return None
        for op_type in ("Where", "MaxPool"):
            users = self.consumers.get(chain[-1].output[0], [])
            if len(users) != 1 or users[0].op_type != op_type or chain[-1].output[0] in self.outputs:
                return None
            chain.append(users[0])
        if chain[1].input[0] != chain[0].output[0] or len(chain[2].output) != 1:
            return None
        return chain if pool.input[0] not in self.outputs else None

    def lazy_nan_guards(self) -> bool:
        """Run the NaN guard of each MaxPool with indices left (see `_guard_lazily`) only when its input holds a NaN."""
        changed = False
        for pool in self.model.graph.node:
            if pool.op_type == "MaxPool" and len(pool.output) == 2 and id(pool) not in self.replaced:
                guard = self._nan_guard(pool, only=False)
                changed = bool(guard) and self._guard_lazily(pool, guard, guard, pool.input[0]) or changed
        return changed

    def _guard_lazily(self, pool: onnx.NodeProto, plain: list, nodes: list, probe: str) -> bool:
        """Whether the translation's NaN guard of this MaxPool (`plain`: IsNaN, Where, MaxPool) and its uses (the
        values and indices of the windows holding NaN) were put in an If, with `nodes` computing the guard's MaxPool's
        result: they run only when the sum of `probe` is NaN, which it is when a window holds NaN (and for inf - inf,
        where the If only costs the guard's work). A training step without NaN skips them all."""
        last, (maxima, index) = plain[2].output[0], pool.output
        users = self.consumers.get(last, [])
        holds = next((node for node in users if node.op_type == "Greater"), None)
        cast = next((node for node in users if node.op_type == "Cast"), None)
        add = (self.consumers.get(cast.output[0]) or [None])[0] if cast is not None else None
        wheres = self.consumers.get(holds.output[0], []) if holds is not None else []
        guarded = {n.input[2]: n for n in wheres if n.op_type == "Where" and n.input[0] == holds.output[0]}
        inner = [holds, cast, add]
        single = add is not None and [id(n) for n in self.consumers.get(add.output[0], [])] == [id(guarded.get(index))]
        sources = [name for name in (maxima, index) if name in guarded]  # (the values' guard may be unused, so gone)
        outer = [guarded[name].output[0] for name in sources] if index in sources else []
        found = self.types.get(maxima)
        if len(users) != 2 or len(wheres) != len(sources) or not single or not outer or found is None:
            return False
        if any(n.output[0] in self.outputs for n in inner):
            return False
        rename = {name: f"{name}_if" for name in [last, *(node.output[0] for node in inner), *outer]}
        then_nodes = []
        for node in [*nodes, *inner, *(guarded[name] for name in sources)]:
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            copy.input[:] = [rename.get(name, name) for name in copy.input]
            copy.output[:] = [rename.get(name, name) for name in copy.output]
            then_nodes.append(copy)
        kept = [f"{name}_kept" for name in outer]

        def branch(body: list, outputs: list, label: str) -> onnx.GraphProto:
            types = [found[0] if name == maxima else TensorProto.INT64 for name in sources]
            infos = [helper.make_tensor_value_info(o, t, list(found[1])) for o, t in zip(outputs, types)]
            return helper.make_graph(body, f"{maxima}_{label}", [], infos)

        then_branch = branch(then_nodes, [rename[name] for name in outer], "nan_guard")
        else_branch = branch([helper.make_node("Identity", [source], [out]) for source, out in zip(sources, kept)],
                             kept, "no_nan")  # fmt: skip
        for node in (*plain, *inner, guarded[index]):
            self.replaced[id(node)] = []
        self.replaced[id(guarded[sources[0]])] = [
            helper.make_node("ReduceSum", [probe], [f"{maxima}_sum"], keepdims=0),
            helper.make_node("IsNaN", [f"{maxima}_sum"], [f"{maxima}_sum_isnan"]),
            helper.make_node("If", [f"{maxima}_sum_isnan"], outer, then_branch=then_branch, else_branch=else_branch),
        ]
        return True

    def phase_pools(self) -> bool:
        """Rewrite each qualifying MaxPool(Relu(Conv(x))) with used indices as phase convolutions (see above)."""
        changed = False
        for node in self.model.graph.node:
            if node.op_type == "MaxPool" and node.domain == "" and len(node.output) == 2 and node.output[1]:
                changed = self._phase_pool(node) or changed
        return changed

    def _phase_pool(self, pool: onnx.NodeProto) -> bool:
        window = _attributes(pool)
        kernel = window.get("kernel_shape", [])
        if len(kernel) != 2 or kernel[0] != kernel[1] or kernel[0] not in PHASE_KERNELS:
            return False
        k = kernel[0]
        if window.get("strides") != [k, k] or any(window.get("pads", [0])) or window.get("ceil_mode", 0):
            return False
        if window.get("auto_pad", b"NOTSET") != b"NOTSET":
            return False
        if any(d != 1 for d in window.get("dilations", [1])) or window.get("storage_order", 0):
            return False
        pooled_input = pool.input[0]
        relu = self.producers.get(pooled_input)
        if relu is not None and relu.op_type == "Relu" and relu.domain == "":
            conv_output = relu.input[0]
        else:
            relu, conv_output = None, pooled_input
        conv = self.producers.get(conv_output)
        if conv is None or conv.op_type != "Conv" or conv.domain != "" or id(conv) in self.replaced:
            return False
        guard = [] if self.only_use(pooled_input, pool) else self._nan_guard(pool)
        if guard is None or (relu is not None and not self.only_use(conv_output, relu)):
            return False
        conv_attributes = _attributes(conv)
        if conv_attributes.get("group", 1) != 1 or conv_attributes.get("auto_pad", b"NOTSET") != b"NOTSET":
            return False
        if any(s != 1 for s in conv_attributes.get("strides", [1])):
            return False
        if any(d != 1 for d in conv_attributes.get("dilations", [1])):
            return False
        shape, filter_shape = self.float_shape(pooled_input, 4), self.float_shape(conv.input[1], 4)
        if shape is None or filter_shape is None or math.prod(filter_shape[1:]) > PHASE_CONV_READS:
            return False
        if math.prod(shape) >= 1 << 24:  # the indices are computed in float32: exact below 2**24
            return False
        n, c, h, w = shape
        rows, columns = h // k, w // k
        if rows == 0 or columns == 0:
            return False
        name = pool.output[0]
        nodes = []
        x = conv.input[0]
        pads = conv_attributes.get("pads", [0, 0, 0, 0])
        if any(pads):
            x = f"{name}_phase_padded"
            pad_amounts = self.constant(f"{name}_phase_pads", [0, 0, pads[0], pads[1], 0, 0, pads[2], pads[3]])
            nodes.append(helper.make_node("Pad", [conv.input[0], pad_amounts], [x]))
        kh, kw = filter_shape[2:]
        axes = self.constant(f"{name}_phase_axes", [2, 3])
        phases = []  # (offset of the phase in its window, flattened, name of its values)
        for a in range(k):
            for b in range(k):
                tag = f"{name}_phase{a}{b}"
                starts = self.constant(f"{tag}_starts", [a, b])
                ends = self.constant(f"{tag}_ends", [a + k * (rows - 1) + kh, b + k * (columns - 1) + kw])
                nodes.append(helper.make_node("Slice", [x, starts, ends, axes], [f"{tag}_x"]))
                values = f"{tag}_conv"
                nodes.append(helper.make_node("Conv", [f"{tag}_x", *conv.input[1:]], [values], strides=[k, k]))
                if relu is not None:
                    nodes.append(helper.make_node("Relu", [values], [f"{tag}_relu"]))
                    values = f"{tag}_relu"
                phases.append((a * w + b, values))
        maxima = pool.output[0]
        nodes.append(helper.make_node("Max", [values for _, values in phases], [maxima]))
        # the first phase holding the maximum (MaxPool's choice among ties), from the last phase backwards
        offset = self.constant(f"{name}_phase_offset{len(phases) - 1}", float(phases[-1][0]), np.float32)
        for i in range(len(phases) - 2, -1, -1):
            start, values = phases[i]
            nodes.append(helper.make_node("Equal", [values, maxima], [f"{name}_phase_is{i}"]))
            start_name = self.constant(f"{name}_phase_start{i}", float(start), np.float32)
            nodes.append(
                helper.make_node("Where", [f"{name}_phase_is{i}", start_name, offset], [f"{name}_phase_at{i}"])
            )
            offset = f"{name}_phase_at{i}"
        # each window's first element in the whole tensor, the numbering of MaxPool's indices
        origins = np.arange(n * c).reshape(n, c, 1, 1) * (h * w) + k * (
            np.arange(rows)[:, None] * w + np.arange(columns)
        )
        origins_name = self.constant(f"{name}_phase_origins", origins, np.float32)
        nodes.append(helper.make_node("Add", [offset, origins_name], [f"{name}_phase_index"]))
        nodes.append(helper.make_node("Cast", [f"{name}_phase_index"], [pool.output[1]], to=TensorProto.INT64))
        self.replaced[id(pool)] = nodes
        self.replaced[id(conv)] = []
        if guard:  # each window's last NaN, from the phases: the latest position among those holding NaN
            lowest = self.constant(f"{name}_phase_none", -1.0, np.float32)
            firsts = k * (np.arange(rows)[:, None] * w + np.arange(columns))  # each window's first element
            marked = []
            for start, values in phases:
                positions = self.constant(f"{name}_phase_positions{start}", firsts + start, np.float32)
                guard.append(helper.make_node("IsNaN", [values], [f"{values}_isnan"]))
                guard.append(helper.make_node("Where", [f"{values}_isnan", positions, lowest], [f"{values}_nan_at"]))
                marked.append(f"{values}_nan_at")
            guard.append(helper.make_node("Max", marked, [guard[2].output[0]]))
            if not self._guard_lazily(pool, guard[:3], guard[3:], maxima):  # (the Max of the phases keeps NaNs)
                self.replaced[id(guard[0])] = self.replaced[id(guard[1])] = []
                self.replaced[id(guard[2])] = guard[3:]
        if relu is not None:
            self.replaced[id(relu)] = []
        return True
