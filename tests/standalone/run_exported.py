"""Run a model exported by `slope.jit(f).lower(x).export(path)` without Slope (used by tests/test_transforms.py).

Usage: python run_exported.py PATH VALUES_JSON -> prints the first output as JSON. Importing Slope is blocked.
"""

import json
import sys

import numpy as np

for blocked in ("slope", "slope_numpy", "slope_onnx", "slope_iree", "slope_nn"):
    sys.modules[blocked] = None  # any import of Slope now fails

path, values = sys.argv[1], np.asarray(json.loads(sys.argv[2]), dtype=np.float32)
if path.endswith(".py"):
    import importlib.util

    spec = importlib.util.spec_from_file_location("exported_program", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    output = module.program(values)[0]
elif path.endswith(".onnx"):
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    output = session.run(None, {session.get_inputs()[0].name: values})[0]
else:
    raise SystemExit(f"no standalone runner for {path}")
print(json.dumps(np.asarray(output).tolist()))
