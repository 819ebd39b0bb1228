"""The Backend contract, the lower pass, backend and device selection, and the eager (one-operator) cache."""

from __future__ import annotations

import math
import os
import threading
from contextlib import contextmanager
from operator import attrgetter
from typing import Any, Callable, ClassVar, Iterator

import numpy as np

from . import plugins
from .dtypes import DType
from .errors import SlopeBackendError, SlopeMemoryError, env
from .ir import Aval, Instruction, Program, Var, dead_code_elimination
from .tensors import Tensor


class Executable:
    """A compiled Program: `run(buffers) -> buffers`, plus the backend code it was built from."""

    __slots__ = ("run", "code", "program", "out_avals")  # (out_avals: read on every eager call)

    def __init__(self, run: Callable[[list], list], code: str, program: Program):
        self.run, self.code, self.program, self.out_avals = run, code, program, program.out_avals


class Backend:
    """A compiler from Programs to runnable code: subclass it and register it through the `slope_backends` hook."""

    name: ClassVar[str] = ""
    dtypes: ClassVar[frozenset[DType]] = frozenset()
    translations: ClassVar[dict[str, Callable]] = {}
    copies_from_numpy: ClassVar[bool] = False  # True: from_numpy copies its array, so slope.tensor makes no copy itself
    checks_translations: ClassVar[bool] = False  # True: its compile checks every result against `infer` itself

    def __init__(self) -> None:
        self.translations, self.translation_plugins = plugins.translations_for(self)  # (and which plugin gave each)

    def devices(self) -> list[str]:
        """The devices this backend can run on, e.g. ["cpu", "cuda:0"]."""
        return ["cpu"]

    def device_problem(self, device: str) -> str:
        """Why a device this backend does not list is missing ("" when it has no reason to give)."""
        return ""

    def compile(self, program: Program, device: str) -> Executable:
        """Compile a lowered Program into an Executable for a device."""
        raise NotImplementedError

    def from_numpy(self, array: np.ndarray, device: str) -> Any:
        """Turn a NumPy array into a backend buffer on a device."""
        raise NotImplementedError

    def to_numpy(self, buffer: Any) -> np.ndarray:
        """Turn a backend buffer into a NumPy array."""
        raise NotImplementedError

    def export(self, program: Program, path: str) -> list[str]:
        """Write a lowered Program as a standalone model; returns the files written."""
        raise NotImplementedError(f"backend {self.name!r} cannot export programs")

    def check_dtype(self, dtype: DType, function: str) -> None:
        """Raise a clear error naming the function when this backend cannot hold the dtype."""
        if dtype not in self.dtypes:
            raise SlopeBackendError(f"slope.{function}: backend {self.name!r} cannot run dtype {dtype.name} (it supports "
                                    f"{sorted(d.name for d in self.dtypes)}); cast the tensor or use another backend")  # fmt: skip


def lower(program: Program, supported: frozenset[str] | set[str]) -> Program:
    """Replace every operator the backend lacks by its procedure (recursively), then drop dead code."""
    if all(instruction.op.name in supported for instruction in program.instructions):
        return dead_code_elimination(program)
    from .trace import eval_program, make_program

    if missing := [i.op.name for i in program.instructions if i.op.name not in supported and i.op.procedure is None]:
        raise SlopeBackendError(f"slope: operators {sorted(set(missing))} have no translation and no procedure")
    lowered = make_program(lambda *inputs: eval_program(program, list(inputs)), program.in_avals, frozenset(supported))
    return dead_code_elimination(lowered)  # (the replay re-records it: its constants, a procedure's too, stay so)


def lower_instruction(instruction: Instruction, supported: frozenset[str], backend: str) -> Program:
    """One instruction lowered through its procedure: a backend's way round a translation refusing these inputs."""
    program = Program(instruction.inputs, [instruction], instruction.outputs)
    if instruction.op.procedure is None:
        raise SlopeBackendError(f"slope.{instruction.op.name}: the {backend} backend cannot run it for inputs "
                                f"{program.in_avals} and it has no procedure")  # fmt: skip
    return lower(program, frozenset(supported) - {instruction.op.name})


_instances: dict[str, Backend] = {}
_state: dict[str, Any] = {"backend": None, "device": os.environ.get("SLOPE_DEVICE", "cpu")}  # process-wide


def _default_backend_name() -> str:
    installed = [name for name in ("onnxruntime", "iree", "numpy", *plugins.backends) if name in plugins.backends]
    if name := os.environ.get("SLOPE_BACKEND") or next(iter(installed), None):  # else the first installed, ours first
        return name
    raise SlopeBackendError("slope: no backend is installed (pip install slope-core[onnx], or [iree], [numpy])")


def get_backend(name: str | None = None) -> Backend:
    """The active backend (or the named one)."""
    if name is None:
        return _state["backend"] or set_backend(_default_backend_name())
    if (backend := _instances.get(name)) is None:  # (read once: a plugin refresh in another thread may clear it)
        if name not in plugins.backends:  # (ours: the distribution to install; SLOPE_BACKEND's: said so)
            extra = {"onnxruntime": "onnx", "iree": "iree", "numpy": "numpy"}.get(name)
            hint = " ($SLOPE_BACKEND)" if os.environ.get("SLOPE_BACKEND") == name else ""
            hint += f" (pip install slope-core[{extra}])" if extra else ""
            raise SlopeBackendError(f"slope: unknown backend {name!r}{hint}; installed backends: "
                                    f"{sorted(plugins.backends)}")  # fmt: skip
        backend = _instances.setdefault(name, plugins.backends[name]())  # threads asking at once get the first kept
    return backend


def _reset() -> None:
    """Forget backend instances and compiled code when plugins change (translations may have); keep the choice."""
    active = _state["backend"]
    for cache in (_instances, _compiled, _checked):
        cache.clear()
    _state["backend"] = get_backend(active.name) if active is not None and active.name in plugins.backends else None


def set_backend(name: str) -> Backend:
    """Make the named backend the active one."""
    _state["backend"] = get_backend(name)
    return _state["backend"]


@contextmanager
def use_backend(name: str) -> Iterator[Backend]:
    """Use the named backend inside the block."""
    previous = _state["backend"]
    try:
        yield set_backend(name)
    finally:
        _state["backend"] = previous


def checked_device(backend: Backend, device: str) -> str:
    """The device name ("cuda" and 0 mean "cuda:0", as PyTorch), or a clear error if the backend cannot use it."""
    device = "cuda:0" if device == "cuda" else f"cuda:{device}" if type(device) is int else device
    if device not in backend.devices():
        why = backend.device_problem(device)  # (onnxruntime: why its CUDA provider is not offered)
        raise SlopeBackendError(f"slope: device {device!r} is not available on backend {backend.name!r}"
                                f"{f' ({why})' if why else ''}; available devices: {backend.devices()}")  # fmt: skip
    return device


def default_device() -> str:
    """The device new tensors and programs go to: set_device's, else SLOPE_DEVICE (read at import), else cpu."""
    return checked_device(_state["backend"] or get_backend(), _state["device"])


def set_device(device: str) -> None:
    """Make a device the default one for new tensors and programs."""
    _state["device"] = checked_device(get_backend(), device)  # (a device that is not there is never selected)


def devices() -> list[str]:
    """The devices the active backend can use."""
    return get_backend().devices()


class BoundedCache:
    """An approximate LRU with free hits: lookups read the dict `recent`, misses `add`; a full `recent` turns `old`."""

    def __init__(self, limit: int, max_bytes: float = math.inf, size_of: Callable[[Any], int] = lambda _: 0):
        self.recent, self.old, self.nbytes, self.lock = {}, {}, 0, threading.Lock()  # (the lock: misses only)
        self.limit, self.max_bytes, self.size_of = max(1, limit // 2), max_bytes / 2, size_of

    def __len__(self) -> int:
        return len(self.recent) + len(self.old)

    def __reduce__(self) -> tuple:  # copy.deepcopy and pickle (of a jit, a model holding one): a fresh, empty cache
        return BoundedCache, (self.limit * 2, self.max_bytes * 2, self.size_of)

    def add(self, key: Any, make: Callable[..., Any], *args: Any) -> Any:
        """The value of a key missing from `recent`: taken back from `old`, else `make(*args)` (outside the lock)."""
        value = self.old.pop(key, None)  # (args, not a closure: a caller's lambda makes cells of its variables: slower)
        value = make(*args) if value is None else value
        with self.lock:
            if len(self.recent) >= self.limit or self.nbytes > self.max_bytes:
                self.old, self.nbytes = dict(self.recent), 0
                self.recent.clear()
            self.recent[key] = value
            self.nbytes += self.size_of(value)
        return value


_eager = BoundedCache(env("SLOPE_EAGER_CACHE_SIZE", 4096))
_compiled: dict[tuple, Executable] = _eager.recent  # the hot path reads it directly
JIT_CACHE_SIZE = env("SLOPE_JIT_CACHE_SIZE", 256)  # programs per jitted function
plugins.on_refresh.append(_reset)
PHYSICAL_MEMORY = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else math.inf


def compile_program(program: Program, backend: Backend, device: str) -> Executable:
    """Lower, check (sizes against memory, dtypes against the backend) and compile a Program; LOG_JIT=1 prints it."""
    lowered = lower(program, backend.translations.keys())
    for instruction in program.instructions + lowered.instructions:  # the program's own first: they name the call
        avals = [v.aval for v in instruction.inputs + instruction.outputs]
        needed = sum(a.size * a.dtype.bits // 8 for a in avals)  # at least its inputs and outputs at once
        if needed > PHYSICAL_MEMORY or any(math.prod(d for d in a.shape if d) >= 2**63 for a in avals):
            what = f"a result {instruction.outputs[0].aval.shape} of {instruction.outputs[0].aval.dtype.name} needs"
            raise SlopeMemoryError(f"slope.{instruction.op.name}: {what} {needed:,} bytes with its inputs; this machine "
                                   f"has {PHYSICAL_MEMORY:,} bytes of memory (sizes must be below 2**63)")  # fmt: skip
        for aval in avals:
            backend.check_dtype(aval.dtype, instruction.op.name)
    check_translations(lowered, backend, device)
    executable = backend.compile(lowered, device)
    if env("LOG_JIT", False):
        print(f"--- slope program ({backend.name}, {device})\n{program}")
        if str(lowered) != str(program):  # only when procedures or dead-code removal changed it
            print(f"--- lowered\n{lowered}")
        print(f"--- {backend.name} code\n{executable.code}")
    return executable


_checked: set[tuple] = set()  # plugin translations that passed, by (backend, operator, params, input avals)


def check_translations(program: Program, backend: Backend, device: str) -> None:
    """Run each plugin-supplied translation once on zeros: its outputs' shapes and dtypes must be those of `infer`."""
    given_by = {} if backend.checks_translations else getattr(backend, "translation_plugins", {})
    for instruction in [i for i in program.instructions if i.op.name in given_by]:
        op, in_avals = instruction.op, [v.aval for v in instruction.inputs]
        if (key := (backend.name, op, repr(instruction.params), tuple(in_avals))) in _checked:
            continue
        what = f"slope.{op.name}: the translation for backend {backend.name!r} from plugin {given_by[op.name]!r}"
        ins, outs = [Var(a) for a in in_avals], [Var(v.aval) for v in instruction.outputs]
        try:
            probe = backend.compile(Program(ins, [Instruction(op, ins, instruction.params, outs)], outs), device)
            zeros = [backend.from_numpy(np.zeros(a.shape, a.dtype.numpy), device) for a in in_avals]
            results = [np.asarray(backend.to_numpy(buffer)) for buffer in probe.run(zeros)]
        except Exception as error:
            raise SlopeBackendError(f"{what} fails on inputs {in_avals}: {error}") from error
        got = [f"{r.dtype}{list(r.shape)}" for r in results]
        expected = [f"{v.aval.dtype.numpy}{list(v.aval.shape)}" for v in outs]
        if got != expected:
            raise SlopeBackendError(f"{what} returns {got} where the operator's `infer` gives {expected}")
        if len(_checked) >= 4096:  # (bounded: a shape checked again costs one more probe)
            _checked.clear()
        _checked.add(key)


def to_backend(tensor: Tensor, backend: Backend, device: str) -> Tensor:
    """The tensor with its buffer on this backend and device (copied through NumPy when needed)."""
    if tensor.backend is backend and tensor.device == device:
        return tensor
    return Tensor(backend.from_numpy(tensor.numpy(), device), tensor.aval, backend, device)


_aval = attrgetter("aval")  # (a C function: cheaper than a comprehension on every call)


def eager_run(op: Any, args: tuple | list, params: dict) -> list[Tensor]:
    """Run one operator on concrete tensors: a one-instruction Program, compiled once per signature."""
    backend, device = _state["backend"] or get_backend(), args[0].device if args else default_device()
    key = (op, tuple(params.items()) if params else (), tuple(map(_aval, args)), backend, device)
    try:
        executable = _compiled[key]
    except KeyError:
        executable = _eager.add(key, _compile_one, op, args, params, backend, device)
    except TypeError as error:  # an unhashable parameter: a user error the operator explains
        raise TypeError(f"slope.{op.name}: parameters must be hashable, got {params}") from error
    return run_executable(executable, args, backend, device)


def run_executable(executable: Executable, args: Any, backend: Backend, device: str) -> list[Tensor]:
    """Run an Executable on tensors (moved to its backend and device when elsewhere); its outputs as tensors."""
    buffers = []
    for a in args:  # (no comprehension here: it would make backend and device cells, slower on every call)
        buffers.append((a if a.backend is backend and a.device == device else to_backend(a, backend, device)).buffer)
    if len(avals := executable.out_avals) == 1:  # (most operators: a loop over zip costs more than the Tensor)
        return [Tensor(executable.run(buffers)[0], avals[0], backend, device)]
    return list(map(Tensor, executable.run(buffers), avals, [backend] * len(avals), [device] * len(avals)))


def _compile_one(op: Any, args: Any, params: dict, backend: Backend, device: str) -> Executable:
    out_avals = op.infer(*[a.aval for a in args], **params)
    ins, outs = [Var(a.aval) for a in args], [Var(aval) for aval in (out_avals if op.multiple_results else [out_avals])]
    return compile_program(Program(ins, [Instruction(op, ins, params, outs)], outs), backend, device)


def from_numpy(array: np.ndarray, aval: Aval, device: str | None = None) -> Tensor:
    """A concrete tensor on the active backend from a NumPy array of the right dtype."""
    backend = _state["backend"] or get_backend()
    device = checked_device(backend, _state["device"] if device is None else device)
    backend.check_dtype(aval.dtype, "tensor")
    return Tensor(backend.from_numpy(array, device), aval, backend, device)
