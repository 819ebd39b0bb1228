"""Program -> ONNX model: names, initializers, nodes, and the clean-ups that keep the graph as lean as a hand-built one.

A translation is `f(graph, inputs, instruction) -> output name (or names)`: `inputs` are the ONNX names of the
instruction's inputs, `instruction.params` its parameters, `instruction.inputs[i].aval` / `instruction.outputs[i].aval`
the abstract values. It adds nodes with `graph.node(...)` and constants with `graph.constant(...)`. A translation
that has no faithful ONNX form for some dtypes or parameters raises `NoTranslationError`, and the instruction is
lowered through its procedure by the shared `lower` pass instead.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import onnx
from onnx import TensorProto, helper

from slope import Aval, DType, Instruction, Program, Var, float16

OPSET = 21  # what onnxruntime 1.31 runs every translation with (newer opsets break the random operators there)
IR_VERSION = 10  # onnxruntime 1.31 rejects newer IR versions
# protobuf cannot hold a message over 2 GB: initializers beyond this many bytes in all (a big model captured by a
# closure) are kept out of the model, the largest first, as external data: fed to a session by name, written to a data
# file beside an export. (Tests lower it to take this path with small constants.)
CONSTANTS_LIMIT = 2**31 - 2**26
FED_BY_SESSION = "slope-fed-by-the-session"  # the external-data location of those kept out (no such file)

ELEMENT_TYPES: dict[str, int] = {
    "bool": TensorProto.BOOL,
    "int8": TensorProto.INT8,
    "uint8": TensorProto.UINT8,
    "int16": TensorProto.INT16,
    "int32": TensorProto.INT32,
    "int64": TensorProto.INT64,
    "float16": TensorProto.FLOAT16,
    "bfloat16": TensorProto.BFLOAT16,
    "float32": TensorProto.FLOAT,
    "float64": TensorProto.DOUBLE,
}

# ONNX operators that broadcast their inputs NumPy-style: an Expand feeding them can usually be skipped.
BROADCASTING = frozenset(
    {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Equal", "Less", "Greater", "Where", "And", "Or", "Xor",
     "BitwiseAnd", "BitwiseOr", "BitwiseXor"}
)  # fmt: skip

# ONNX operators with onnxruntime CPU kernels of float16's own (probed on onnxruntime 1.31). For any other operator on
# float16 tensors onnxruntime inserts casts to float32 and back, then drops each of them together with a neighbouring
# Cast of the opposite direction, ours included: float16's rounding was skipped (`x.half() == 2048` was false for
# 2049.0, `ceil(x.half())` of 1.0001 was 2, and `isinf` missed a float16 overflow). `float16_in_float32` casts such
# nodes' operands itself, which onnxruntime keeps.
FLOAT16_KERNELS = frozenset(
    {"Cast", "Identity", "Reshape", "Transpose", "Slice", "Concat", "Gather", "GatherElements", "GatherND", "Squeeze",
     "Unsqueeze", "Flatten", "Expand", "ScatterElements", "ScatterND", "Max", "Min", "Mod", "Round", "Sign", "IsNaN",
     "IsInf", "If"}
)  # fmt: skip

# Slope operators (core and slope-nn) whose indices (input 1) onnxruntime checks when it runs them
_CHECKS_INDICES = frozenset({"gather_nd", "scatter_nd", "take_along_dim", "scatter_add"})


def _indexes_an_empty_dimension(instruction: Instruction) -> bool:
    """Whether an indexing instruction has indices into an empty dimension: all out of range, so PyTorch raises even
    where the result is empty (it checks no other index of an empty result), and onnxruntime must run the node."""
    name = instruction.op.name
    if name not in _CHECKS_INDICES or (index := instruction.inputs[1].aval).size == 0:
        return False
    x = instruction.inputs[0].aval
    if name in ("gather_nd", "scatter_nd"):  # index vectors along the last axis, into x's leading dimensions
        return 0 in x.shape[: index.shape[-1]]
    return x.shape[instruction.params["dim"]] == 0


class NoTranslationError(Exception):
    """Raised by a translation with no faithful ONNX form for its inputs: the instruction is lowered instead."""


def element_type(dtype: DType) -> int:
    """The ONNX element type of a slope dtype."""
    return ELEMENT_TYPES[dtype.name]


def external_tensor(name: str, data_type: int, shape: Any, location: str, offset: int, length: int) -> TensorProto:
    """A tensor whose data lies outside the model: `length` bytes at `offset` of the file `location`."""
    stub = TensorProto(name=name, data_type=data_type, dims=shape)
    stub.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = stub.external_data.add()
        entry.key, entry.value = key, value
    return stub


def tensor_proto(array: np.ndarray, name: str) -> TensorProto:
    """An ONNX tensor holding a NumPy array (bfloat16 arrays from ml_dtypes included)."""
    if array.dtype.name == "bfloat16":
        return helper.make_tensor(name, TensorProto.BFLOAT16, array.shape, array.view(np.uint16).tobytes(), raw=True)
    return onnx.numpy_helper.from_array(np.array(array, order="C", copy=None), name)  # keeps 0-d arrays 0-d


class OnnxGraph:
    """An ONNX graph under construction, with what the clean-ups need to know about each name."""

    def __init__(self, translations: dict[str, Callable]):
        self.translations = translations
        self.nodes: list[onnx.NodeProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.values: dict[str, np.ndarray] = {}  # the initializers (made into TensorProtos by `model`)
        self.shapes: dict[str, tuple[int, ...]] = {}  # static shapes, where known
        self.dtypes: dict[str, DType] = {}  # slope dtypes of instruction outputs and inputs
        self.producers: dict[str, onnx.NodeProto] = {}
        self.narrower: dict[str, str] = {}  # name -> a name that broadcasts to it (Expand input, leading-1 reshape)
        self.padded: dict[str, tuple] = {}  # name -> (source, lo, hi, value): a constant padding of source
        self.taps: dict[str, tuple] = {}  # name -> ((products, taps, size), {k: offset}): a sum of `_tap`s
        self._constants: dict[tuple, str] = {}
        self._count = 0
        self.checks: dict[str, frozenset[str]] = {}  # name -> the index-checking outputs its value comes from
        self.kept_checks: set[str] = set()  # those whose dependents were all replaced by empty constants
        self.kept_out: dict[str, np.ndarray] = {}  # initializers kept out of the model (CONSTANTS_LIMIT)

    # ------------------------------------------------------------------------------------------- building blocks
    def fresh(self, hint: str = "t") -> str:
        """A new unique tensor name."""
        self._count += 1
        return f"{hint}_{self._count}"

    def node(self, op_type: str, inputs: list[str], shape: tuple[int, ...] | None = None, outputs: int = 1,
             **attributes: Any) -> Any:  # fmt: skip
        """Add a node; returns its output name (or names when `outputs` > 1). `shape`: the output's static shape."""
        if op_type in BROADCASTING and shape is not None:
            inputs = [self._broadcastable(name, shape) for name in self._narrow(inputs, shape)]
        names = [self.fresh(op_type.lower()) for _ in range(outputs)]
        node = helper.make_node(op_type, inputs, names, **attributes)
        self.nodes.append(node)
        for name in names:
            self.producers[name] = node
        if shape is not None:
            self.shapes[names[0]] = tuple(shape)
        return names[0] if outputs == 1 else names

    def constant(self, array: np.ndarray, name: str | None = None) -> str:
        """An initializer holding the array; small ones are shared by value."""
        key = None
        if array.size <= 16 and name is None:
            key = (array.dtype.str, array.shape, array.tobytes())
            if key in self._constants:
                return self._constants[key]
        name = name or self.fresh("const")
        self.values[name] = array
        self.shapes[name] = tuple(array.shape)
        if key is not None:
            self._constants[key] = name
        return name

    def scalar(self, value: Any, dtype: DType) -> str:
        """A rank-0 initializer of a slope dtype."""
        return self.constant(np.array(value, dtype=dtype.numpy))

    def int64s(self, values: Any) -> str:
        """A 1-D int64 initializer (shapes, axes, pads, ...)."""
        return self.constant(np.array(list(values), dtype=np.int64))

    def cast(self, name: str, dtype: DType) -> str:
        """The tensor cast to a slope dtype; a cast of a lossless cast reads the original.

        onnxruntime (every session, even ORT_DISABLE_ALL) merges Cast(a -> b) -> Cast(b -> integer) into one Cast
        where b loses values, skipping b's rounding or wrap-around (float32 100.97 to float16 to int8 gave 100, not
        101; 3e9 to int64 to int32 gave -2**31): a Reshape to its own shape between them, which no optimizer drops,
        keeps b's values."""
        producer = self.producers.get(name)
        if producer is not None and producer.op_type == "Cast":
            source = producer.input[0]
            if _holds(self.dtypes.get(name), self.dtypes.get(source)):
                name = source
            elif not dtype.is_float and self.dtypes.get(name) not in (None, dtype) and name in self.shapes:
                middle, shape = self.dtypes[name], self.shapes[name]
                name = self.node("Reshape", [name, self.int64s(shape)], shape=shape, allowzero=1)
                self.dtypes[name] = middle
        if self.dtypes.get(name) == dtype:
            return name
        out = self.node("Cast", [name], shape=self.shapes.get(name), to=element_type(dtype))
        self.dtypes[out] = dtype
        return out

    def expand(self, name: str, shape: tuple[int, ...]) -> str:
        """The tensor broadcast to a shape; consumers that broadcast themselves read the unexpanded tensor."""
        if self.shapes.get(name) == tuple(shape):
            return name
        out = self._concat_expand(name, tuple(shape), keep_outer=False)
        if out is None:
            out = self.node("Expand", [name, self.int64s(shape)], shape=shape)
        self.narrower[out] = name
        return out

    def _broadcastable(self, name: str, shape: tuple[int, ...]) -> str:
        """The input itself, or, where onnxruntime would broadcast it element by element, a copy expanded by Concat."""
        source_shape = self.shapes.get(name)
        if source_shape is None or source_shape == tuple(shape):
            return name
        return self._concat_expand(name, tuple(shape), keep_outer=True) or name

    def _concat_expand(self, name: str, shape: tuple[int, ...], keep_outer: bool) -> str | None:
        """Broadcast by concatenating copies, where onnxruntime's broadcasting would go element by element.

        onnxruntime broadcasts in runs of the innermost contiguous block; a size-1 axis inside the shape (a pooling
        window's gradient: (n, c, h, 1, w, 1) against (n, c, h, 2, w, 2)) makes those runs one element long and the
        op 10-30x slower than a copy. Concat copies whole blocks. With `keep_outer`, a leading broadcast stays for the
        consumer (onnxruntime handles that fast). Returns None where the native broadcast is fine.
        """
        source_shape = self.shapes.get(name)
        if source_shape is None or len(source_shape) > len(shape) or math.prod(shape) < 4096:
            return None
        blocks = _broadcast_blocks(source_shape, shape)
        interior = [i for i, (kind, _, size) in enumerate(blocks) if kind == "b" and i > 0]
        if not interior or blocks[-1][2] >= 32 or any(blocks[i][2] > 16 for i in interior):
            return None
        out = self.reshape(name, tuple(inner for _, inner, _ in blocks))
        merged = [inner for _, inner, _ in blocks]
        for i in reversed(interior):
            merged[i] = blocks[i][2]
            out = self.node("Concat", [out] * blocks[i][2], shape=tuple(merged), axis=i)
        padded = (1,) * (len(shape) - len(source_shape)) + tuple(source_shape)
        if keep_outer and blocks[0][0] == "b":
            lead = 0
            for size, source_size in zip(shape, padded):  # the leading broadcast dimensions stay 1
                if size != 1 and size == source_size:
                    break
                lead += 1
            target = (1,) * lead + tuple(shape[lead:])
        elif blocks[0][0] == "b":
            merged[0] = blocks[0][2]
            out = self.node("Expand", [out, self.int64s(merged)], shape=tuple(merged))
            target = tuple(shape)
        else:
            target = tuple(shape)
        return self.reshape(out, target)

    def check(self, failed: str, shape: tuple[int, ...], message: str, error: type[Exception]) -> str:
        """`failed` (bools of `shape`) as it is, tied to a check that raises `error(message)` when the model runs
        where one of its elements is true: a GatherElements from a one-element table at index 1 there (out of range),
        in a node whose name the backend reads the error from (`backend.CHECK`: ONNX has no assertion)."""
        from .backend import CHECK

        count = math.prod(shape)
        index = self.node("Cast", [self.reshape(failed, (count,))], shape=(count,), to=TensorProto.INT64)
        table = self.constant(np.zeros(1, np.bool_))
        checked = self.node(
            "GatherElements",
            [table, index],
            shape=(count,),
            axis=0,
            name=CHECK.format(error, message, len(self.checks)),
        )
        out = self.reshape(checked, shape)
        self.checks[out] = frozenset({checked})  # (kept where all that reads it is empty: see `translate`)
        return out

    def reshape(self, name: str, shape: tuple[int, ...]) -> str:
        """The tensor reshaped; chains of reshapes collapse into one."""
        source = name
        producer = self.producers.get(name)
        if producer is not None and producer.op_type == "Reshape":
            source = producer.input[0]
        if self.shapes.get(source) == tuple(shape):
            return source
        zero = 0 in shape  # allowzero: a 0 in the target shape means size 0, not "copy the input's dimension"
        out = self.node("Reshape", [source, self.int64s(shape)], shape=shape, **({"allowzero": 1} if zero else {}))
        source_shape = self.shapes.get(source)
        if (
            source_shape is not None
            and _strip_ones(source_shape) == _strip_ones(shape)
            and len(shape) >= len(source_shape)
        ):
            self.narrower[out] = source  # only leading 1s added: NumPy broadcasting adds them itself
        return out

    def value(self, name: str) -> np.ndarray | None:
        """The known value of a name (an initializer, or a broadcast one), else None."""
        while name not in self.values and name in self.narrower:
            name = self.narrower[name]
        return self.values.get(name)

    def _narrow(self, inputs: list[str], shape: tuple[int, ...]) -> list[str]:
        """Replace broadcast inputs by their narrower sources while the broadcast result keeps its shape."""
        chosen = list(inputs)
        for i, name in enumerate(inputs):
            while name in self.narrower:
                candidate = self.narrower[name]
                trial = chosen[:i] + [candidate] + chosen[i + 1 :]
                trial_shapes = [self.shapes.get(n) for n in trial]
                if any(s is None for s in trial_shapes) or np.broadcast_shapes(*trial_shapes) != tuple(shape):
                    break
                name = chosen[i] = candidate
        return chosen

    # ------------------------------------------------------------------------------------------- translation
    def translate(self, instruction: Instruction, env: dict[Var, str]) -> None:
        """Translate one instruction, binding its outputs' names in env."""
        inputs = [env[v] for v in instruction.inputs]
        translation = self.translations.get(instruction.op.name)
        if all(v.aval.size == 0 for v in instruction.outputs) and not _indexes_an_empty_dimension(instruction):
            # nothing to compute; and onnxruntime's shape inference takes broadcast(1, 0) for 1, so it would drop
            # an Expand to size 0 as a no-op and hand the next node a tensor of the wrong shape
            outs = [self.constant(np.zeros(v.aval.shape, v.aval.dtype.numpy)) for v in instruction.outputs]
            self.kept_checks.update(*(self.checks.get(name, ()) for name in inputs))  # they must still run
        else:
            try:
                if translation is None:
                    raise NoTranslationError
                outs = translation(self, inputs, instruction)
            except NoTranslationError:
                outs = self.inline_procedure(instruction, inputs)
        outs = [outs] if isinstance(outs, str) else list(outs)
        checks = frozenset().union(*(self.checks.get(name, ()) for name in inputs))
        if instruction.op.name in _CHECKS_INDICES and instruction.inputs[1].aval.size:
            checks |= {outs[0]}  # (onnxruntime raises on an index out of range)
        for var, name in zip(instruction.outputs, outs):
            if checks and name in self.producers:
                self.checks[name] = checks
            env[var] = name
            self.shapes.setdefault(name, var.aval.shape)
            self.dtypes.setdefault(name, var.aval.dtype)

    def inline_procedure(self, instruction: Instruction, inputs: list[str]) -> list[str]:
        """Lower one instruction through its procedure (the shared pass) and translate the result in place."""
        from slope.backend import lower_instruction

        lowered = lower_instruction(instruction, frozenset(self.translations), "onnxruntime")
        env: dict[Var, str] = dict(zip(lowered.inputs, inputs))
        for var, value in zip(lowered.constants, lowered.constant_values):
            env[var] = self.constant(value.numpy())
        for inner in lowered.instructions:
            self.translate(inner, env)
        return [env[v] for v in lowered.outputs]

    # ------------------------------------------------------------------------------------------- the model
    def add_input(self, name: str, aval: Aval) -> None:
        """Declare a graph input."""
        self.inputs.append(helper.make_tensor_value_info(name, element_type(aval.dtype), list(aval.shape)))
        self.shapes[name] = aval.shape
        self.dtypes[name] = aval.dtype

    def model(self, outputs: list[tuple[str, Aval]], graph_name: str = "slope_program") -> onnx.ModelProto:
        """The finished model: output names fixed up, dead nodes and initializers removed."""
        input_names = {i.name for i in self.inputs}
        output_infos, used = [], set()
        for name, aval in outputs:
            if name in input_names or name in self.values or name in used or name not in self.producers:
                name = self.node("Identity", [name], shape=aval.shape)
            used.add(name)
            output_infos.append(helper.make_tensor_value_info(name, element_type(aval.dtype), list(aval.shape)))
        live = {info.name for info in output_infos} | self.kept_checks
        self.nodes = merge_duplicates(fuse_nodes(self.nodes, self, live), live)
        kept = []
        for node in reversed(self.nodes):
            if any(o in live for o in node.output):
                kept.append(node)
                live.update(i for i in node.input if i)
        kept.reverse()
        values = {name: array for name, array in self.values.items() if name in live}
        total = sum(array.nbytes for array in values.values())
        for name in sorted(values, key=lambda name: -values[name].nbytes):  # the largest out until the rest fit
            if total <= CONSTANTS_LIMIT:
                break
            self.kept_out[name] = values[name]
            total -= values[name].nbytes
        initializers = [tensor_proto(array, name) if name not in self.kept_out else
                        external_tensor(name, ELEMENT_TYPES[array.dtype.name], array.shape, FED_BY_SESSION, 0,
                                        array.nbytes) for name, array in values.items()]  # fmt: skip
        graph = helper.make_graph(kept, graph_name, self.inputs, output_infos, initializer=initializers)
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION, producer_name="slope"
        )
        halves = float16 in self.dtypes.values() or any(t.data_type == TensorProto.FLOAT16 for t in initializers)
        return float16_in_float32(model, self) if halves else model


def float16_in_float32(model: onnx.ModelProto, graph: OnnxGraph) -> onnx.ModelProto:
    """The model with each float16 node that has no float16 kernel in onnxruntime (see FLOAT16_KERNELS) computed in
    float32 between casts of our own: the result rounded once, as onnxruntime's own casts would, had it kept them."""
    inferred = onnx.shape_inference.infer_shapes(model)
    values = [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    types = {v.name: v.type.tensor_type.elem_type for v in values}
    types.update((t.name, t.data_type) for t in model.graph.initializer)
    nodes: list[onnx.NodeProto] = []
    for node in model.graph.node:
        if node.domain or node.op_type in FLOAT16_KERNELS or TensorProto.FLOAT16 not in map(types.get, node.input):
            nodes.append(node)
            continue
        widened, narrowed = list(node.input), list(node.output)
        for i, name in enumerate(node.input):
            if types.get(name) == TensorProto.FLOAT16:
                widened[i] = graph.fresh("wide")
                nodes.append(helper.make_node("Cast", [name], [widened[i]], to=TensorProto.FLOAT))
        node = onnx.NodeProto.FromString(node.SerializeToString())
        del node.input[:]
        node.input.extend(widened)
        for i, name in enumerate(narrowed):
            if types.get(name) == TensorProto.FLOAT16:
                node.output[i] = graph.fresh("wide")
        nodes.append(node)
        nodes.extend(helper.make_node("Cast", [wide], [name], to=TensorProto.FLOAT16)
                     for wide, name in zip(node.output, narrowed) if wide != name)  # fmt: skip
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


# ----------------------------------------------------------------------------------------------- node fusion

_GEMM_DTYPES = ("float32", "float64")


def fuse_nodes(nodes: list[onnx.NodeProto], graph: OnnxGraph, outputs: set[str]) -> list[onnx.NodeProto]:
    """Fold nodes into the fewer ones a person would write: matrix products into Gemm, squeezes into reductions.

    `x @ w.T + b` becomes one Gemm(x, w, b, transB=1); a weight update `w - lr * (a.T @ b).T` becomes one
    Gemm(b, a, w, transA=1, alpha=-lr). Reverse mode produces these transposes and scalings everywhere; onnxruntime
    fuses only some of them (its MatMul+Add fusion misses transposed operands). A reduction with keepdims=1 whose only
    use is a reshape dropping those axes becomes the reduction with keepdims=0. A per-channel bias added to a Conv
    becomes the Conv's bias input (onnxruntime then fuses a following Relu into the Conv as well).
    """
    uses: dict[str, int] = {}
    for node in nodes:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    for name in outputs:
        uses[name] = uses.get(name, 0) + 1
    producer: dict[str, int] = {}
    result: list[onnx.NodeProto | None] = []

    def made(name: str, op_type: str) -> onnx.NodeProto | None:
        """The node (still in the result) that makes `name`, if it is an `op_type`."""
        index = producer.get(name)
        node = result[index] if index is not None else None
        return node if node is not None and node.op_type == op_type else None

    def transposed_source(name: str) -> str | None:
        node = made(name, "Transpose")
        return node.input[0] if node is not None and list(node.attribute[0].ints) == [1, 0] else None

    def untransposed(name: str) -> tuple[str, int]:
        flag = 0
        source = transposed_source(name)
        while source is not None:
            name, flag = source, 1 - flag
            source = transposed_source(name)
        return name, flag

    def single_use_gemm(name: str, allow_c: bool = False) -> int | None:
        index = producer.get(name)
        node = result[index] if index is not None else None
        if node is None or node.op_type != "Gemm" or uses.get(name, 0) != 1 or (len(node.input) > 2 and not allow_c):
            return None
        return index

    def unkept_reduction(reshape: onnx.NodeProto) -> onnx.NodeProto | None:
        """The keepdims=1 reduction (used only here) that this reshape squeezes: it can drop the axes itself."""
        index = producer.get(reshape.input[0])
        node = result[index] if index is not None else None
        if node is None or node.op_type not in ("ReduceSum", "ReduceMax") or uses.get(reshape.input[0]) != 1:
            return None
        keepdims = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "keepdims"), 1)
        axes, kept = graph.value(node.input[1]) if len(node.input) == 2 else None, graph.shapes.get(reshape.input[0])
        if keepdims != 1 or axes is None or kept is None:
            return None
        squeezed = tuple(size for i, size in enumerate(kept) if i not in set(axes.tolist()))
        return node if squeezed == graph.shapes.get(reshape.output[0]) else None

    def conv_bias(add: onnx.NodeProto) -> tuple[int, str] | None:
        """(index of the single-use, bias-free Conv that `add` adds a per-channel bias to, the bias), else None."""
        for position in (0, 1):
            index = producer.get(add.input[position])
            conv = result[index] if index is not None else None
            if conv is None or conv.op_type != "Conv" or len(conv.input) != 2 or uses.get(add.input[position]) != 1:
                continue
            conv_shape, bias = graph.shapes.get(conv.output[0]), add.input[1 - position]
            bias_shape = graph.shapes.get(bias)
            if conv_shape is None or bias_shape is None or len(bias_shape) > len(conv_shape):
                continue
            channels = (1,) * (len(conv_shape) - len(bias_shape)) + tuple(bias_shape)
            if channels[1:] == (conv_shape[1],) + (1,) * (len(conv_shape) - 2) and channels[0] == 1:
                source = producer.get(bias)  # a reshape of the 1-D bias: read the bias itself
                source_node = result[source] if source is not None else None
                if source_node is not None and source_node.op_type == "Reshape":
                    if graph.shapes.get(source_node.input[0]) == (conv_shape[1],):
                        bias = source_node.input[0]
                return index, bias
        return None

    def constant_first(node: onnx.NodeProto) -> onnx.NodeProto | None:
        """A Conv's output times (or plus) a constant, the constant first: onnxruntime's ConvMulFusion and
        ConvAddFusion (every session but ORT_DISABLE_ALL) fold a constant in the second place into the Conv's weight
        or bias ahead of time (a 1e-30 weight times 1e-20 underflowed to 0, where conv(x, w) * 1e-20 is 3e-20; a
        bias plus a constant overflowed first); they do not look at the first place."""
        x, c = node.input
        if made(x, "Conv") is None or graph.value(c) is None or (node.op_type == "Add" and conv_bias(node)):
            return None
        return helper.make_node(node.op_type, [c, x], list(node.output))

    def produced(name: str) -> tuple[str, onnx.NodeProto | None]:
        """The name behind any reshapes of `name`, and the node that makes it."""
        index = producer.get(name)
        node = result[index] if index is not None else None
        while node is not None and node.op_type == "Reshape":
            name = node.input[0]
            index = producer.get(name)
            node = result[index] if index is not None else None
        return name, node

    def masked_unpool(where: onnx.NodeProto) -> list[onnx.NodeProto] | None:
        """Where(T > c, unpool(S, I), 0) where I are MaxPool(T)'s indices, as unpool(Where(MaxPool(T) > c, S, 0), I):
        at each position the unpooling writes, T equals its window's maximum, so the mask can be taken on the pooled
        values (a ReLU's gradient behind a max pool's: a quarter of the work for 2x2 windows). Also in the form that
        keeps a -0.0 of S (translate._where), Where(Xor(T > c, true), 0, unpool(S, I)), which it keeps."""
        condition, written, zero = where.input
        negated = None
        if graph.value(written) is not None:  # the sign-keeping form: the constant first, the condition negated
            zero, written = written, zero
            _, negated = produced(condition)
            true = graph.value(negated.input[1]) if negated is not None and negated.op_type == "Xor" else None
            if true is None or not true.all():
                return None
            condition = negated.input[0]
        zero_value = graph.value(zero)
        _, test = produced(condition)
        _, unpool = produced(written)
        if zero_value is None or zero_value.size != 1 or zero_value.reshape(-1)[0] != 0:
            return None
        if test is None or test.op_type != "Greater" or unpool is None or unpool.op_type != "MaxUnpool":
            return None
        indices, pool = produced(unpool.input[1])
        holds = None  # slope-nn's NaN guard: Where(window holds NaN, its last NaN's position, MaxPool's index)
        if pool is not None and pool.op_type == "Where":
            holds, (indices, pool) = pool.input[0], produced(pool.input[2])
        if pool is None or pool.op_type != "MaxPool" or list(pool.output)[1:] != [indices]:
            return None
        maximum = pool.output[0]
        if holds is not None:  # its values, NaN where the index names a NaN (which fails the test, as there)
            guards = [n for n in result if n is not None and n.op_type == "Where" and n.input[::2] == [holds, maximum]]
            if not guards:
                return None
            maximum = guards[0].output[0]
        bound = graph.value(test.input[1])
        pooled, values = test.input[0], unpool.input[0]
        shape = graph.shapes.get(values)
        if pool.input[0] != pooled or bound is None or bound.size != 1 or shape is None or uses.get(written) != 1:
            return None
        if graph.shapes.get(pooled) != graph.shapes.get(where.output[0]) or graph.shapes.get(maximum) is None:
            return None
        maxima = helper.make_node("Reshape", [maximum, graph.int64s(shape)], [graph.fresh("reshape")])
        mask = [helper.make_node("Greater", [maxima.output[0], test.input[1]], [graph.fresh("greater")])]
        if negated is None:
            masked = helper.make_node("Where", [mask[-1].output[0], values, zero], [graph.fresh("where")])
        else:
            mask.append(helper.make_node("Xor", [mask[-1].output[0], negated.input[1]], [graph.fresh("xor")]))
            masked = helper.make_node("Where", [mask[-1].output[0], zero, values], [graph.fresh("where")])
        unpooled = helper.make_node("MaxUnpool", [masked.output[0], *unpool.input[1:]], [graph.fresh("maxunpool")],
                                    **{a.name: helper.get_attribute_value(a) for a in unpool.attribute})  # fmt: skip
        reshaped = graph.int64s(graph.shapes[where.output[0]])
        return [maxima, *mask, masked, unpooled, helper.make_node("Reshape", [unpooled.output[0], reshaped],
                                                                   list(where.output))]  # fmt: skip

    def absolute(add: onnx.NodeProto) -> onnx.NodeProto | None:
        """slope.abs's `x * sign(x) + 0` (sign as Cast(x > 0) - Cast(x < 0); + 0 turns -0.0 into 0.0) as Abs(x): the
        same values in one node, which onnxruntime's NoopElimination cannot break by dropping the + 0."""

        def is_zero(name: str) -> bool:
            value = graph.value(name)
            return value is not None and value.size == 1 and value.reshape(-1)[0] == 0 and not np.signbit(value).any()

        for position in (0, 1):
            mul, sub = made(add.input[position], "Mul"), None
            if mul is None or not is_zero(add.input[1 - position]):
                continue
            for x, sign in ((mul.input[0], mul.input[1]), (mul.input[1], mul.input[0])):
                sub = made(sign, "Sub")
                casts = [made(name, "Cast") for name in sub.input] if sub is not None else [None]
                if None in casts or graph.shapes.get(x) != graph.shapes.get(add.output[0]):
                    continue
                tests = [made(cast.input[0], op) for cast, op in zip(casts, ("Greater", "Less"))]
                if all(t is not None and t.input[0] == x and is_zero(t.input[1]) for t in tests):
                    return helper.make_node("Abs", [x], list(add.output))
        return None

    def unmatched_gelu(add: onnx.NodeProto) -> onnx.NodeProto | None:
        """c + erf(y), c a one-element constant, as c - (-erf(y)) (the same bits): onnxruntime's GeluFusionL1 (on in
        every session but ORT_DISABLE_ALL: a user's default session) ran a hand-written x * 0.5 * (1 + erf(x / s)) as
        its Gelu kernel for any s within about 1e-5 of sqrt(2), with sqrt(2) (1.4142: 3e-6 off, 10% in the tail) and
        without the product's overflow (3e38 for inf). Sub is what it does not match."""
        for position in (0, 1):
            value = graph.value(add.input[1 - position])
            if made(add.input[position], "Erf") is None or value is None or value.size != 1:
                continue
            negated = helper.make_node("Neg", [add.input[position]], [graph.fresh("neg")])
            producer[negated.output[0]] = len(result)
            result.append(negated)
            return helper.make_node("Sub", [add.input[1 - position], negated.output[0]], list(add.output))
        return None

    def dequantized(mul: onnx.NodeProto) -> onnx.NodeProto | None:
        """Mul(Cast(x: int8 or uint8 -> float32), s), s a finite float32 constant of one element, as
        DequantizeLinear(x, s): the same products (an 8-bit integer is exact in float32) in one pass over the tensor
        instead of two. onnxruntime's quantization rewrites then see it: with an infinite scale, the quantize /
        dequantize pairs they put around a Transpose gave NaN (inf / inf), and a batched MatMul of two dequantized
        tensors became MatMulIntegerToFloat (its int32 sum wrapped; the scales' product underflowed): only matrices
        (at most 2-D, whose products are Gemms) are dequantized."""
        for position in (0, 1):
            cast, factor = made(mul.input[position], "Cast"), graph.value(mul.input[1 - position])
            if cast is None or factor is None or factor.size != 1 or not np.isfinite(factor).all():
                continue
            source, shape = graph.dtypes.get(cast.input[0]), graph.shapes.get(cast.input[0])
            to_float = helper.get_attribute_value(cast.attribute[0]) == TensorProto.FLOAT
            if not to_float or factor.dtype != np.float32 or source is None or source.name not in ("int8", "uint8"):
                continue
            if shape is None or shape != graph.shapes.get(mul.output[0]) or len(shape) > 2:  # (no new dimensions)
                continue
            uses[mul.input[position]] -= 1
            uses[cast.input[0]] = uses.get(cast.input[0], 0) + 1
            return helper.make_node("DequantizeLinear", [cast.input[0], graph.constant(factor.reshape(()))],
                                    list(mul.output))  # fmt: skip
        return None

    def scalar(name: str) -> float | None:
        value = graph.value(name)
        return float(value.reshape(-1)[0]) if value is not None and value.size == 1 else None

    def spread(node: onnx.NodeProto, position: int, shape: tuple | None) -> onnx.NodeProto | None:
        """The node with its one-element constant input at `position` given one element per row of the last
        dimension of `shape` of more than one (the same values): onnxruntime's value-changing fusions below take
        only one-element constants. None where it has no such input or `shape` no such dimension."""
        value = graph.value(node.input[position])
        wide = [axis for axis, size in enumerate(shape or ()) if size > 1]
        if value is None or value.size != 1 or not wide:
            return None
        inputs = list(node.input)
        inputs[position] = graph.constant(np.full((shape[wide[-1]],) + (1,) * (len(shape) - 1 - wide[-1]),
                                                  value.reshape(())))  # fmt: skip
        return helper.make_node(node.op_type, inputs, list(node.output))

    def wide_product_scale(node: onnx.NodeProto) -> onnx.NodeProto | None:
        """A MatMul's product times (or divided by) a one-element constant, the constant spread (or applied twice
        along a new last axis and sliced back, for a product of one element): MatMulScaleFusion (all optimizations
        on: a user's default session, Slope's pooled ones) moves it into FusedMatMul's alpha, a float32 attribute
        ((x @ y) * 0.1 of float64 gave 0.4000000059604645 for 0.4), which the kernel applies to each block
        (_MLAS_BLOCK) of the inner dimension (float32 (a @ b) * 0.5 was 2e38 where the sum overflows to inf)."""
        for position in (0, 1) if node.op_type == "Mul" else (1,):
            shape, value = graph.shapes.get(node.output[0]), graph.value(node.input[position])
            product = made(node.input[1 - position], "MatMul")
            if product is None or value is None or value.size != 1 or shape is None:
                continue
            inner = (graph.shapes.get(product.input[0]) or (0,))[-1]
            if getattr(graph.dtypes.get(node.output[0]), "name", None) != "float64" and inner <= _MLAS_BLOCK:
                continue
            if (spread_node := spread(node, position, shape)) is not None:
                return spread_node
            inputs = list(node.input)
            inputs[position] = graph.constant(np.full((2,), value.reshape(())))
            twice = helper.make_node(node.op_type, inputs, [graph.fresh("twice")])
            producer[twice.output[0]] = len(result)
            result.append(twice)
            ends = [graph.int64s([0]), graph.int64s([1]), graph.int64s([-1])]
            return helper.make_node("Slice", [twice.output[0], *ends], list(node.output))
        return None

    def unfused_scale(name: str) -> str:
        """x * c, c * x or x / c (c a one-element constant) as a MatMul's input, with c spread: onnxruntime's
        MatMulScaleFusion (all optimizations on: a user's default session, Slope's pooled ones) moves such a scale
        onto the product, (x @ w) * c, which rounds differently and overflows where (x * c) @ w does not
        ((3e38 * 0.5) @ w finite, 3e38 @ w inf); also through transposes, which onnxruntime folds into the product.
        An x of one element is scaled twice along a new last axis and sliced back. The name the MatMul reads."""
        source = name
        while (transpose := made(source, "Transpose")) is not None:
            source = transpose.input[0]
        index = producer.get(source)
        scaling = result[index] if index is not None else None
        if scaling is None or scaling.op_type not in ("Mul", "Div"):
            return name
        for position in (0, 1) if scaling.op_type == "Mul" else (1,):
            x_shape = graph.shapes.get(scaling.input[1 - position])
            spread_scaling = spread(scaling, position, x_shape)
            if spread_scaling is not None:
                result[index] = spread_scaling
                return name
            factor = graph.value(scaling.input[position])
            if factor is None or factor.size != 1 or not x_shape or graph.shapes.get(name) != x_shape:
                continue
            inputs = list(scaling.input)  # x_shape is all 1s here (no row to spread along)
            inputs[position] = graph.constant(np.full((2,), factor.reshape(())))
            twice = helper.make_node(scaling.op_type, inputs, [graph.fresh("twice")])
            first = helper.make_node("Slice", [twice.output[0], graph.int64s([0]), graph.int64s([1]),
                                               graph.int64s([-1])], [graph.fresh("slice")])  # fmt: skip
            for extra in (twice, first):
                producer[extra.output[0]] = len(result)
                result.append(extra)
            return first.output[0]
        return name

    def reciprocal(div: onnx.NodeProto) -> onnx.NodeProto | None:
        """Div(1, x) as Reciprocal(x) (float32, float64; other dtypes: the 1 spread where a Mul is its only use):
        onnxruntime's DivMulFusion (on in every session but ORT_DISABLE_ALL; off in Slope's) turns Div(1, x) * y into
        y / x, which rounds differently and stays finite where 1 / x overflows (1e-10 * (1 / 1e-45) is inf,
        1e-10 / 1e-45 7e34); it takes only a one-element constant 1. A matrix product divided by a one-element
        constant keeps its Div, the constant spread: MatMulScaleFusion made it a multiplication by 1 / c."""
        one = graph.value(div.input[0])
        if made(div.input[0], "MatMul") is not None:
            return spread(div, 1, graph.shapes.get(div.output[0]))
        cast, kind = made(div.input[0], "Cast"), lambda name: getattr(graph.dtypes.get(name), "name", None)
        if cast is not None and kind(cast.input[0]) == "bool" and kind(div.output[0]) in ("float32", "float64"):
            # a numerator of 0s and 1s, n / x = n * (1 / x) exactly: onnxruntime folds a constant one (jacrev's seed
            # of a one-element output, Cast(Equal(Range, Range))) at session time, and DivMulFusion's y / x rounded
            # once and lost the dimensions the 1 added (an exported jit(jacrev(f)) gave (4,), not (1, 4))
            inverse = helper.make_node("Reciprocal", [div.input[1]], [graph.fresh("inverse")])
            producer[inverse.output[0]] = len(result)
            result.append(inverse)
            return helper.make_node("Mul", [div.input[0], inverse.output[0]], list(div.output))
        if one is None and cast is not None and graph.shapes.get(div.input[1]) == graph.shapes.get(div.output[0]):
            one = graph.value(cast.input[0])  # a cast constant (slope.tensor(1) / x): onnxruntime folds the Cast
        if one is None or one.size != 1 or one.reshape(-1)[0] != 1:
            return None
        if kind(div.output[0]) in ("float32", "float64"):
            return helper.make_node("Reciprocal", [div.input[1]], list(div.output))
        return spread(div, 0, graph.shapes.get(div.output[0])) if uses.get(div.output[0]) == 1 else None

    def unskipped_norm(norm: onnx.NodeProto) -> list[onnx.NodeProto] | None:
        """A LayerNormalization (last axis) of a sum of two (B, S, H) tensors, done on its (B * S, H) view:
        onnxruntime's SkipLayerNormFusion (all optimizations on: a user's default session, Slope's pooled ones) makes
        Add + LayerNormalization of 3-D tensors one SkipLayerNormalization, which rounds differently and gives NaN
        where the variance overflows (LayerNormalization: 0s, README); it takes only a LayerNormalization fed by the
        Add itself."""
        add, shape = made(norm.input[0], "Add"), graph.shapes.get(norm.input[0])
        axis = next((helper.get_attribute_value(a) for a in norm.attribute if a.name == "axis"), -1)
        if add is None or shape is None or len(shape) != 3 or axis not in (-1, 2):
            return None
        if graph.shapes.get(add.input[0]) != shape or graph.shapes.get(add.input[1]) != shape:
            return None
        flat = helper.make_node("Reshape", [norm.input[0], graph.int64s((-1, shape[2]))], [graph.fresh("reshape")])
        kept = [name if uses.get(name) else "" for name in norm.output]  # Y, Mean, InvStdDev
        views = [graph.fresh("view") if name else "" for name in kept]
        flat_norm = helper.make_node(norm.op_type, [flat.output[0], *norm.input[1:]], views,
                                     **{a.name: helper.get_attribute_value(a) for a in norm.attribute})  # fmt: skip
        backs = [helper.make_node("Reshape", [view, graph.int64s(shape if k == 0 else (*shape[:2], 1))], [name])
                 for k, (view, name) in enumerate(zip(views, kept)) if name]  # fmt: skip
        return [flat, flat_norm, *backs]

    def one_block(gemm: onnx.NodeProto) -> bool:
        """Whether onnxruntime's kernel (MLAS) computes a Gemm as alpha * (the whole sum) + C, as the unfused graph
        does, so C and a scale may be folded into it. MLAS adds each block of K terms, times alpha, onto C in turn: a
        block is _MLAS_BLOCK terms (its SGEMM and DGEMM strides), deeper where the output is narrow and A is not
        transposed (256 at most here, a prepacked constant B's block). Beyond it C joined partway through the sum and
        alpha scaled each block's sum (x @ w + b was 2.12e38 and (x @ w) * 0.5 2.56e38 where the sum overflows to inf,
        eager and PyTorch; a small SGD update w - lr * (a @ b) was lost block by block). One-row and one-column
        products take other kernels, which start from C (b + x @ w of one row) or sum in another order than MatMul's.
        An inner dimension of 0 or unknown is no block either: there onnxruntime's Gemm is beta * C alone (it ignores
        alpha, and C's -0.0 stays -0.0 where the unfused 0 + -0.0 is 0.0)."""
        lhs, out = graph.shapes.get(gemm.input[0]), graph.shapes.get(gemm.output[0]) or (0, 0)
        trans_a = next((helper.get_attribute_value(a) for a in gemm.attribute if a.name == "transA"), 0)
        inner = lhs[0 if trans_a else 1] if lhs and len(lhs) == 2 else 0
        narrow = 32 if getattr(graph.dtypes.get(gemm.output[0]), "name", None) == "float64" else 64
        block = 2 * _MLAS_BLOCK if not trans_a and 0 < out[1] <= narrow and out[1] < inner else _MLAS_BLOCK
        return out[0] > 1 and out[1] > 1 and 0 < inner <= block

    def folded_alpha(gemm: onnx.NodeProto, factor: float, op: str) -> float | None:
        """Gemm's alpha for `gemm * factor` (Mul) or `gemm / factor` (Div, by a power of 2: exact), where that is the
        same computation: one finite nonzero factor (0 and inf would meet 0 * inf differently) that alpha, a float32
        attribute, holds exactly without overflow or underflow (a float64 0.1 would be rounded), on products that
        sum at least one term (onnxruntime ignores alpha where the inner dimension is 0). None where it is not."""
        attributes = {a.name: helper.get_attribute_value(a) for a in gemm.attribute}
        finite = math.isfinite(factor) and factor != 0
        if attributes["alpha"] != 1.0 or not (finite and one_block(gemm)):
            return None
        if op == "Div" and math.frexp(factor)[0] not in (0.5, -0.5):
            return None
        alpha, largest = (factor if op == "Mul" else 1 / factor), np.finfo(np.float32)
        exact = float(largest.tiny) <= abs(alpha) <= float(largest.max) and float(np.float32(alpha)) == alpha
        return alpha if exact else None

    def replace(consumer: onnx.NodeProto, index: int, inputs: list[str], **changes: Any) -> onnx.NodeProto:
        gemm = result[index]
        attributes = {a.name: helper.get_attribute_value(a) for a in gemm.attribute}
        attributes.update(changes)
        result[index] = None
        return helper.make_node("Gemm", inputs, list(consumer.output), **attributes)

    for node in nodes:
        op = node.op_type
        out = node.output[0]
        dtype = graph.dtypes.get(out)
        if op == "MatMul":
            a, b = node.input
            gemm = dtype is not None and dtype.name in _GEMM_DTYPES
            if gemm and len(graph.shapes.get(a, ())) == 2 and len(graph.shapes.get(b, ())) == 2:
                source_a, trans_a = untransposed(a)
                source_b, trans_b = untransposed(b)
                node = helper.make_node("Gemm", [source_a, source_b], [out], alpha=1.0, beta=1.0, transA=trans_a,
                                        transB=trans_b)  # fmt: skip
                for old, new in ((a, source_a), (b, source_b)):
                    if new != old:
                        uses[old] -= 1
                        uses[new] = uses.get(new, 0) + 1
            else:  # Gemm has no such fusion
                node = helper.make_node("MatMul", [unfused_scale(a), unfused_scale(b)], [out])
        elif op == "Transpose" and list(node.attribute[0].ints) == [1, 0]:
            index = single_use_gemm(node.input[0])
            if index is not None:  # (A @ B).T = B.T @ A.T
                gemm = result[index]
                attributes = {a.name: helper.get_attribute_value(a) for a in gemm.attribute}
                node = replace(node, index, [gemm.input[1], gemm.input[0]], transA=1 - attributes["transB"],
                               transB=1 - attributes["transA"])  # fmt: skip
        elif op == "Add" and len(node.input) == 2 and (absolute_value := absolute(node)) is not None:
            node = absolute_value
        elif op == "Add" and len(node.input) == 2 and (unmatched := unmatched_gelu(node)) is not None:
            node = unmatched
        elif op == "Mul" and len(node.input) == 2 and (dequantizing := dequantized(node)) is not None:
            node = dequantizing
        elif op == "Div" and (inverse := reciprocal(node)) is not None:
            node = inverse
        elif (
            op in ("Mul", "Div")
            and getattr(dtype, "name", None) in ("float64", "float32")
            and (unfused := wide_product_scale(node))
        ):
            node = unfused
        elif op in ("Mul", "Add") and len(node.input) == 2 and (swapped := constant_first(node)) is not None:
            node = swapped
        elif op in ("Mul", "Div") and len(node.input) == 2:
            for position in (0, 1) if op == "Mul" else (0,):
                index = single_use_gemm(node.input[position])
                factor = scalar(node.input[1 - position])
                if index is not None and factor is not None and (alpha := folded_alpha(result[index], factor, op)):
                    node = replace(node, index, list(result[index].input), alpha=alpha)
                    break
        elif op == "Reshape" and unkept_reduction(node) is not None:
            index = producer[node.input[0]]
            reduction = result[index]
            result[index] = None
            node = helper.make_node(reduction.op_type, list(reduction.input), list(node.output), keepdims=0)
        elif op == "Add" and len(node.input) == 2 and conv_bias(node) is not None:
            index, bias = conv_bias(node)
            conv = result[index]
            if graph.shapes.get(bias) != (graph.shapes[conv.output[0]][1],):
                reshape = helper.make_node("Reshape", [bias, graph.int64s(graph.shapes[conv.output[0]][1:2])],
                                           [graph.fresh("reshape")])  # fmt: skip
                producer[reshape.output[0]] = len(result)
                result.append(reshape)
                bias = reshape.output[0]
            result[index] = None
            node = helper.make_node("Conv", [*conv.input, bias], [out], **{a.name: helper.get_attribute_value(a)
                                                                          for a in conv.attribute})  # fmt: skip
        elif op == "LayerNormalization" and (flat_norm := unskipped_norm(node)) is not None:
            *before, node = flat_norm
            for extra in before:
                for name in extra.output:
                    producer[name] = len(result)
                result.append(extra)
        elif op == "Where" and masked_unpool(node) is not None:
            *before, node = masked_unpool(node)
            for extra in before:
                producer[extra.output[0]] = len(result)
                result.append(extra)
        elif op in ("Add", "Sub") and len(node.input) == 2:
            for position in (0, 1):
                index = single_use_gemm(node.input[position])
                other = node.input[1 - position]
                fits = index is not None and _fits_gemm_c(graph.shapes.get(other), graph.shapes.get(out))
                if not fits or not one_block(result[index]):
                    continue
                gemm = result[index]
                alpha = helper.get_attribute_value(next(a for a in gemm.attribute if a.name == "alpha"))
                if abs(alpha) > 1:  # Gemm adds C to alpha * AB unrounded: (a @ w) * 3 + b was finite where 3 * (a @ w)
                    continue  # overflows (PyTorch: inf + -inf = NaN); |alpha| <= 1 cannot overflow (an SGD step's lr)
                if op == "Add":
                    node = replace(node, index, [*gemm.input, other], beta=1.0)
                elif position == 1:  # other - gemm
                    node = replace(node, index, [*gemm.input, other], alpha=-alpha, beta=1.0)
                else:  # gemm - other
                    node = replace(node, index, [*gemm.input, other], beta=-1.0)
                break
        for name in node.output:
            producer[name] = len(result)
        result.append(node)
    return [node for node in result if node is not None]


# ONNX operators whose outputs differ from call to call: two of them with the same inputs are not one
_NONDETERMINISTIC = frozenset({"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial",
                               "Bernoulli", "Dropout"})  # fmt: skip


# The terms of the inner dimension that onnxruntime's matrix kernel (MLAS) sums before it adds the sum, scaled, onto
# the output (C, or the sums of the blocks before): a Gemm's C and alpha, and FusedMatMul's alpha, are exact only
# within one block (fuse_nodes: one_block, wide_product_scale)
_MLAS_BLOCK = 128


def merge_duplicates(nodes: list[onnx.NodeProto], outputs: set[str]) -> list[onnx.NodeProto]:
    """Drop every node that repeats an earlier one (same operator, inputs and attributes), reading the earlier one's
    outputs instead. Reverse mode makes such repeats: a conv's weight and input gradients each transpose the same
    cotangent to the images-last layout, for example. Graph outputs keep their producers."""
    renamed: dict[str, str] = {}
    seen: dict[tuple, onnx.NodeProto] = {}
    result = []
    for node in nodes:
        if any(name in renamed for name in node.input):
            node.input[:] = [renamed.get(name, name) for name in node.input]
        if node.op_type in _NONDETERMINISTIC or any(name in outputs for name in node.output):
            result.append(node)
            continue
        key = (node.domain, node.op_type, tuple(node.input), len(node.output),
               tuple(a.SerializeToString(deterministic=True) for a in node.attribute))  # fmt: skip
        earlier = seen.get(key)
        if earlier is None:
            seen[key] = node
            result.append(node)
            continue
        for mine, theirs in zip(node.output, earlier.output):
            if mine:
                renamed[mine] = theirs
    return result


def _fits_gemm_c(shape: tuple | None, out: tuple | None) -> bool:
    """Whether a tensor of `shape` broadcasts one way to Gemm's output `out` (as Gemm's C input must)."""
    if shape is None or out is None or len(out) != 2 or len(shape) > 2:
        return False
    padded = (1,) * (2 - len(shape)) + tuple(shape)
    return all(s in (1, o) for s, o in zip(padded, out))


_EXACT_IN = {  # dtype -> the dtypes that hold each of its values exactly
    "bool": {"int8", "uint8", "int16", "int32", "int64", "float16", "bfloat16", "float32", "float64"},
    "int8": {"int16", "int32", "int64", "float16", "bfloat16", "float32", "float64"},
    "uint8": {"int16", "int32", "int64", "float16", "bfloat16", "float32", "float64"},
    "int16": {"int32", "int64", "float32", "float64"},
    "int32": {"int64", "float64"},
    "float16": {"float32", "float64"},
    "bfloat16": {"float32", "float64"},
    "float32": {"float64"},
}


def _holds(wide: DType | None, narrow: DType | None) -> bool:
    return wide is not None and narrow is not None and wide.name in _EXACT_IN.get(narrow.name, ())


def _broadcast_blocks(source: tuple[int, ...], target: tuple[int, ...]) -> list[tuple[str, int, int]]:
    """The broadcast of `source` to `target` as merged blocks: ("s", size, size) kept, ("b", 1, size) broadcast."""
    padded = (1,) * (len(target) - len(source)) + tuple(source)
    blocks: list[list] = []
    for inner, outer in zip(padded, target):
        if outer == 1:
            continue
        kind = "s" if inner == outer else "b"
        if blocks and blocks[-1][0] == kind:
            blocks[-1][1] *= inner
            blocks[-1][2] *= outer
        else:
            blocks.append([kind, inner, outer])
    return [tuple(b) for b in blocks]


def _strip_ones(shape: tuple[int, ...]) -> tuple[int, ...]:
    i = 0
    while i < len(shape) and shape[i] == 1:
        i += 1
    return tuple(shape[i:])


def build_model(program: Program, translations: dict[str, Callable]) -> tuple[onnx.ModelProto, list[str], list[str],
                                                                               dict[str, np.ndarray]]:  # fmt: skip
    """The ONNX model of a lowered Program, with its input and output names and the values of the initializers kept
    out of it (external data of location FED_BY_SESSION: over CONSTANTS_LIMIT bytes in all)."""
    graph = OnnxGraph(translations)
    names = program.names()
    env: dict[Var, str] = {}
    for var in program.inputs:
        env[var] = names[var]
        graph.add_input(names[var], var.aval)
    for var, value in zip(program.constants, program.constant_values):
        env[var] = graph.constant(value.numpy(), name=names[var])
    for instruction in program.instructions:
        graph.translate(instruction, env)
    model = graph.model([(env[v], v.aval) for v in program.outputs])
    input_names = [names[v] for v in program.inputs]
    output_names = [o.name for o in model.graph.output]
    return model, input_names, output_names, graph.kept_out


def zeros_added_for_export(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with each `x + 0` (Slope's way to make -0.0 0.0: cumsum, layer_norm's procedure) as
    Where(x == 0, 0, x): onnxruntime's NoopElimination, on in a user's default session (off in Slope's), drops an Add
    of a constant 0 that feeds another node, and -0.0 came through (an exported 1 / cumsum of -0.0s gave -inf)."""
    zeros = set()
    for initializer in model.graph.initializer:  # (float32 and float64: halves add in float32 here)
        if math.prod(initializer.dims) == 1 and initializer.data_type in (TensorProto.FLOAT, TensorProto.DOUBLE):
            value = onnx.numpy_helper.to_array(initializer)
            if value.reshape(-1)[0] == 0 and not np.signbit(value).any():
                zeros.add(initializer.name)
    nodes, changed = [], False
    for node in model.graph.node:
        zero = next((name for name in node.input if name in zeros), None) if node.op_type == "Add" else None
        if zero is None or len(node.input) != 2:
            nodes.append(node)
            continue
        x = node.input[1] if node.input[0] == zero else node.input[0]
        equal = helper.make_node("Equal", [x, zero], [f"{node.output[0]}_is_zero"])
        nodes += [equal, helper.make_node("Where", [equal.output[0], zero, x], list(node.output))]
        changed = True
    if not changed:
        return model
    model = onnx.ModelProto.FromString(model.SerializeToString())
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model
