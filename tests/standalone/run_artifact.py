"""Run a model exported by `slope.jit(f).lower(*args).export(path)` as a user would, with its runtime and NumPy only.

As a script: `python run_artifact.py MODEL INPUTS.npz OUTPUTS.npz [onnx level]` (importing Slope is blocked; the
inputs are arr_0, arr_1, ... in order; bfloat16 travels as uint16 bits, named bf16_N). As a module (imported by
the export differential tests): `run(files, inputs, level)`. MODEL is the `.onnx` (onnxruntime, in a session with
default options, or the graph optimization `level` named: ORT_ENABLE_ALL, ORT_DISABLE_ALL, ...), the `.vmfb` (iree's
runtime, its local-sync CPU driver) or the `.py` (NumPy).
"""

from __future__ import annotations

import ctypes
import importlib.util
import sys
from typing import Any

import numpy as np

try:  # bfloat16 tensors (ml_dtypes comes with onnx and iree; NumPy has no bfloat16)
    from ml_dtypes import bfloat16
except ImportError:  # pragma: no cover
    bfloat16 = None

ONNX_BFLOAT16 = 16  # TensorProto.BFLOAT16


def run_onnx(path: str, inputs: list, level: str | None = None) -> list:
    """Outputs of an .onnx model in a plain onnxruntime session (default options unless a level is named)."""
    import onnxruntime as ort

    if level is None:
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    else:
        options = ort.SessionOptions()
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    feeds = {}
    for info, array in zip(session.get_inputs(), inputs):
        if array.dtype == bfloat16:  # onnxruntime's NumPy bridge has no bfloat16: pass the bits
            feeds[info.name] = ort.OrtValue.ortvalue_from_numpy_with_onnx_type(array.view(np.uint16), ONNX_BFLOAT16)
        else:  # np.array, not np.ascontiguousarray: that makes 0-d arrays 1-d
            feeds[info.name] = ort.OrtValue.ortvalue_from_numpy(np.array(array, order="C"))
    outputs = []
    for value in session.run_with_ort_values(None, feeds):
        if value.data_type() == "tensor(bfloat16)":
            out = np.empty(value.shape(), bfloat16)
            ctypes.memmove(out.ctypes.data, value.data_ptr(), out.nbytes)
            outputs.append(out)
        else:
            outputs.append(np.array(value.numpy()))
    return outputs


def run_vmfb(path: str, inputs: list) -> list:
    """Outputs of an iree .vmfb on the local-sync CPU driver."""
    import iree.runtime as rt

    module = rt.load_vm_flatbuffer_file(path, driver="local-sync")
    outs = module.main(*[np.array(a, order="C") for a in inputs])
    outs = outs if isinstance(outs, (tuple, list)) else [outs]
    return [np.asarray(o.to_host()) for o in outs]


def run_py(path: str, inputs: list) -> list:
    """Outputs of a NumPy .py export."""
    spec = importlib.util.spec_from_file_location("exported_program", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with np.errstate(all="ignore"):  # IEEE results (inf, NaN) are the point, not warnings
        outs = module.program(*inputs)
    return [np.asarray(o) for o in (outs if isinstance(outs, (tuple, list)) else [outs])]


def run(files: list, inputs: list, level: str | None = None) -> list:
    """The outputs of the exported model among `files` (.onnx, .vmfb or .py) for `inputs`."""
    model = next(str(f) for f in files if str(f).endswith((".onnx", ".vmfb", ".py")))
    if model.endswith(".onnx"):
        return run_onnx(model, inputs, level)
    return run_vmfb(model, inputs) if model.endswith(".vmfb") else run_py(model, inputs)


def pack(arrays: list) -> dict[str, Any]:
    """Arrays for np.savez: bfloat16 ones as their uint16 bits (np.load cannot read ml_dtypes)."""
    return {(f"bf16_{k}" if a.dtype == bfloat16 else f"arr_{k}"): (a.view(np.uint16) if a.dtype == bfloat16 else a)
            for k, a in enumerate(arrays)}  # fmt: skip


def unpack(stored: Any) -> list:
    """The arrays `pack` stored, in order."""
    names = sorted(stored.files, key=lambda name: int(name.split("_")[1]))
    return [stored[n].view(bfloat16) if n.startswith("bf16_") else stored[n] for n in names]


if __name__ == "__main__":
    for blocked in ("slope", "slope_numpy", "slope_onnx", "slope_iree", "slope_nn"):
        sys.modules[blocked] = None  # any import of Slope now fails
    model_path, inputs_path, outputs_path, *level = sys.argv[1:]
    results = run([model_path], unpack(np.load(inputs_path)), *level)
    np.savez(outputs_path, **pack(results))
    print(sorted(m for m in sys.modules if m.split(".")[0].startswith("slope") and sys.modules[m] is not None))
