"""The NumPy backend: each Program becomes one Python function of NumPy calls, compiled once with exec."""

from __future__ import annotations

import base64
import importlib.util
import inspect
import io
from typing import Any

import numpy as np

import slope
from slope import Backend, Executable, Program

from . import runtime
from .translate import translations

try:  # `np.errstate(all="ignore")` costs 1 µs a call (it rebuilds its state each time); set that state directly
    from numpy._core._ufunc_config import _extobj_contextvar as _errors
    from numpy._core._ufunc_config import _make_extobj

    _IGNORE_ERRORS = _make_extobj(all="ignore")
except ImportError:  # (NumPy 1.x): errstate itself

    class _ErrorsIgnored:
        """`np.errstate(all="ignore")` behind the set/reset of NumPy 2's context variable."""

        def set(self, _: Any) -> Any:
            state = np.errstate(all="ignore")
            state.__enter__()
            return state

        def reset(self, state: Any) -> None:
            state.__exit__(None, None, None)

    _errors, _IGNORE_ERRORS = _ErrorsIgnored(), None

_float_types = {slope.float16, slope.float32, slope.float64}
_other_types = {slope.bool_, slope.int8, slope.uint8, slope.int16, slope.int32, slope.int64}


class _NumpyDtypes(dict):
    """NumPy dtypes by name; bfloat16's is looked up when first used (its ml_dtypes is slow to import)."""

    def __missing__(self, name: str) -> np.dtype:
        if name != "bfloat16":
            raise KeyError(name)
        self[name] = slope.bfloat16.numpy
        return self[name]


def _numpy_dtypes() -> dict[str, Any]:
    return _NumpyDtypes({d.name: np.dtype(d.name) for d in _float_types | _other_types})


class NumpyBackend(Backend):
    """Runs Programs as generated NumPy code on the CPU."""

    name = "numpy"
    translations = translations
    export_suffix = ".py"

    def __init__(self) -> None:
        super().__init__()
        self.numpy_dtypes = _numpy_dtypes()
        bfloat16 = {slope.bfloat16} if importlib.util.find_spec("ml_dtypes") else set()
        self.dtypes = frozenset(_float_types | _other_types | bfloat16)

    def devices(self) -> list[str]:
        return ["cpu"]

    def source(self, program: Program, function_name: str = "program", runner: bool = False) -> str:
        """The Python source of a Program (as `run(buffers)`, NumPy's errors ignored inside it, for a runner)."""
        names = program.names()
        args = ", ".join(names[v] for v in program.inputs)
        lines = [f"def {function_name}({args}):"]
        indent = "    "
        if runner:  # one Python call per run: the buffers unpacked and the error state set in the program itself
            lines = [f"def {function_name}(buffers):", f"    ({args}{',' if args else ''}) = buffers",
                     "    token = _errors.set(_IGNORE_ERRORS)", "    try:"]  # fmt: skip
            indent = "        "
        for instruction in program.instructions:
            inputs = [names[v] for v in instruction.inputs]
            expression = self.translations[instruction.op.name](inputs, instruction.params, instruction.outputs[0].aval)
            lines.append(f"{indent}{names[instruction.outputs[0]]} = {expression}")
        lines.append(f"{indent}return [{', '.join(names[v] for v in program.outputs)}]")
        if runner:
            lines += ["    finally:", "        _errors.reset(token)"]
        return "\n".join(lines)

    def _namespace(self, program: Program) -> dict[str, Any]:
        names = program.names()
        # generated code spells non-finite constants (full, pad values) as inf and nan
        namespace: dict[str, Any] = {"np": np, "runtime": runtime, "dtypes": self.numpy_dtypes, "inf": np.inf,
                                     "nan": np.nan}  # fmt: skip
        for var, value in zip(program.constants, program.constant_values):
            namespace[names[var]] = self.to_numpy(value.buffer) if value.backend is self else value.numpy()
        return namespace

    def compile(self, program: Program, device: str) -> Executable:
        for instruction in program.instructions:
            if len(instruction.outputs) != 1:
                raise slope.SlopeBackendError(f"numpy backend: {instruction.op.name} has several outputs")
        namespace = self._namespace(program)
        # NumPy's errors ignored while it runs: IEEE results (inf, nan) without warnings, as other backends give
        namespace.update(_errors=_errors, _IGNORE_ERRORS=_IGNORE_ERRORS)
        exec(compile(self.source(program, "run", runner=True), "<slope numpy program>", "exec"), namespace)
        return Executable(namespace["run"], self.source(program), program)

    def from_numpy(self, array: np.ndarray, device: str) -> np.ndarray:
        return array

    def empty_cpu(self, shape: tuple, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
        """A new array (contents undefined), twice: the buffer and its writable view are one and the same."""
        buffer = np.empty(shape, dtype)
        return buffer, buffer

    def to_numpy(self, buffer: np.ndarray) -> np.ndarray:
        """A NumPy copy of a buffer (the buffer itself may be a program's constant or another tensor's: immutable)."""
        return np.array(buffer)

    def export(self, program: Program, path: str) -> list[str]:
        """Write a standalone .py module defining `program(*inputs)` with NumPy only."""
        if not path.endswith(".py"):
            path += ".py"
        names = program.names()
        parts = [
            '"""A program exported by Slope\'s NumPy backend; needs only NumPy."""',
            "import base64",
            "import io",
            "import types",
            "",
            "import numpy as np",
            "",
            "runtime = types.SimpleNamespace()",
            "exec(" + repr(inspect.getsource(runtime)) + ", runtime.__dict__)",
            "dtypes = {"
            + ", ".join(f"{k!r}: np.dtype({str(v)!r})" for k, v in self.numpy_dtypes.items() if k != "bfloat16")
            + "}",
            "inf, nan = np.inf, np.nan  # the generated code spells non-finite constants (full, pad values) so",
            "",
        ]
        # each input checked first: another shape or dtype than traced would give wrong numbers or a NumPy error
        header, *body = self.source(program).split("\n")
        checks = [
            f"    {names[v]} = runtime.checked_input('program', {i}, {names[v]!r}, {names[v]}, {v.aval.shape!r}, "
            f"dtypes[{v.aval.dtype.name!r}])"
            for i, v in enumerate(program.inputs)
        ]
        source = "\n".join([header, *checks, *body])
        bfloat16 = "bfloat16" in source or any(v.dtype == slope.bfloat16 for v in program.constant_values)
        if bfloat16:  # NumPy has no bfloat16: the program needs ml_dtypes' (as its inputs do)
            parts[-1:-1] = ["import ml_dtypes", "", "dtypes['bfloat16'] = np.dtype(ml_dtypes.bfloat16)"]
        for var, value in zip(program.constants, program.constant_values):
            buffer, array = io.BytesIO(), value.numpy()
            bits = value.dtype == slope.bfloat16  # np.load reads ml_dtypes' bfloat16 back as void: store the bits
            np.save(buffer, array.view(np.uint16) if bits else array, allow_pickle=False)
            encoded = base64.b64encode(buffer.getvalue()).decode()
            view = ".view(dtypes['bfloat16'])" if bits else ""
            parts.append(f"{names[var]} = np.load(io.BytesIO(base64.b64decode({encoded!r}))){view}")
        parts += ["", "", source, ""]
        with open(path, "w") as handle:
            handle.write("\n".join(parts))
        return [path]
