"""The ONNX Runtime backend: each Program becomes one ONNX model and one InferenceSession; buffers are OrtValues."""

from __future__ import annotations

import ctypes
import functools
import importlib.metadata
import os
import re
import sys
import threading
import warnings
from collections import OrderedDict
from sys import getrefcount
from typing import Any, Callable
from weakref import ref

import numpy as np

import slope
from slope import Backend, Executable, Program
from slope.errors import SlopeConfigError, env

# onnx and onnxruntime, and this package's modules built on them, load when the backend is first made
# (`_load_libraries`), not when `import slope` registers it: importing them takes longer than the rest of Slope.
onnx: Any = None
ort: Any = None
ort_c: Any = None


def build_model(program: Program, translations: dict[str, Callable]) -> tuple:
    """`graph.build_model` (imported here: graph.py needs onnx)."""
    from .graph import build_model

    return build_model(program, translations)


def element_type(dtype: slope.DType) -> int:
    """`graph.element_type` (imported here: graph.py needs onnx)."""
    from .graph import element_type

    return element_type(dtype)


def for_cpu_session(model: Any) -> Any:
    """`cpu_rewrites.for_cpu_session` (imported here: cpu_rewrites.py needs onnx)."""
    from .cpu_rewrites import for_cpu_session

    return for_cpu_session(model)


def _onnxruntime_conflict() -> str:
    """Why onnxruntime may be broken when both its CPU and its GPU distribution are installed, else ''."""
    found = []
    for name in ("onnxruntime", "onnxruntime-gpu"):
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    if len(found) < 2:
        return ""
    return (
        f"slope: both {found[0]} and {found[1]} are installed; they write the same `onnxruntime` package over each "
        "other, so the backend may fail or lack CUDA. Keep one: `pip uninstall -y onnxruntime onnxruntime-gpu`, then "
        "`pip install onnxruntime-gpu` (Linux x86_64, Windows x64) or `pip install onnxruntime` (elsewhere)"
    )


def _load_libraries() -> None:
    """Import onnx and onnxruntime into this module, and give OnnxBackend its translations."""
    global onnx, ort, ort_c
    if ort_c is not None:
        return
    conflict = _onnxruntime_conflict()
    if conflict:
        warnings.warn(conflict, RuntimeWarning, stacklevel=4)
    import onnx

    try:
        import onnxruntime as ort
    except ImportError as error:
        raise slope.SlopeBackendError(f"slope: onnxruntime failed to import ({error}) {conflict}".strip()) from None

    from .translate import translations

    OnnxBackend.translations = translations
    from onnxruntime.capi import _pybind_state as ort_c  # last: the others are set once this one is


_ERROR = 3  # onnxruntime logger severities
_FATAL = 4
# onnxruntime's NoopElimination drops `x + 0`, which is not an identity in IEEE arithmetic: -0.0 + 0 is +0.0, and the
# translations add 0 on purpose where a result must not be -0.0 (|x| of -0.0, say; rsqrt(|-0.0|) became -inf);
# DivMulFusion makes Div(1, x) * y into y / x (rounded once, not twice as eagerly) where the 1 is one that
# onnxruntime itself folded (jacrev's seed of a one-element output; known ones are Reciprocal already, graph.py);
# NchwcTransformer (constant filters) gives conv(x, b) + conv(x, a) a Sum input that the kernel adds onto block by
# block (3e38 + 3e38 - 3e38 became inf) and skips padding (inf * 0 was not NaN): `cpu_rewrites` makes NCHWc itself;
# GeluFusionL1/L2 run a hand-written x * 0.5 * (1 + erf(x / s)) as a Gelu kernel (see graph.py's unmatched_gelu)
_DISABLED_OPTIMIZERS = ["NoopElimination", "DivMulFusion", "NchwcTransformer", "GeluFusionL1", "GeluFusionL2"]

# Programs whose tensors are all at most this big gain nothing from a thread pool.
SMALL_PROGRAM_ELEMENTS = 1 << 15


class _Threads:
    """Where sessions get their threads.

    - A program of one operator (every eager operation) or of small tensors runs on the calling thread, with no pool
      at all: thousands of cached eager programs add no thread.
    - A larger program (a jitted train step) gets `intra_op` threads (the caller and intra_op - 1 workers) that never
      spin: workers sleep between parallel sections and between runs, leaving the CPUs to the rest of the process.
      At most `pooled_sessions` such sessions are open at once (`_PooledRun`): past that, the least recently run one
      closes, ending its threads, and is rebuilt when it runs again. So threads stay bounded however many programs
      are cached (onnxruntime has no way to share a per-session pool between sessions).
    `SLOPE_ORT_THREADS=n` (n >= 1) sets intra_op (default: the CPUs this process may use),
    `SLOPE_ORT_POOLED_SESSIONS=n` (n >= 1) the open pooled sessions (default 8). `SLOPE_ORT_SPIN_US=n` lets the
    workers of pooled sessions spin up to n µs after their work before they sleep (default 0: never): a train step run
    back to back then wakes no sleeping thread, at the price of CPU time burnt. `SLOPE_ORT_GLOBAL_POOL=1` (a flag:
    1/true/yes/on) puts every session on onnxruntime's one process-wide pool instead (one set of threads for any number
    of programs), whose workers do spin after each run (onnxruntime's Python API has no switch for that), and which
    makes onnxruntime refuse every other session in the process that does not set `use_per_session_threads = False`.
    Other values are a SlopeConfigError when the backend is made (`_at_least_one`, `slope.errors.env`).
    """

    intra_op = max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    pooled_sessions = 8
    spin_us = 0
    global_pool: bool | None = None  # None until the backend is first made

    @classmethod
    def setup(cls) -> None:
        """Read the settings once; create the global pool if asked (before onnxruntime's environment exists)."""
        if cls.global_pool is not None:
            return
        intra_op = _at_least_one("SLOPE_ORT_THREADS", cls.intra_op, "the threads of a pooled session")
        pooled_sessions = _at_least_one(
            "SLOPE_ORT_POOLED_SESSIONS", cls.pooled_sessions, "pooled sessions open at once"
        )
        spin_us = env("SLOPE_ORT_SPIN_US", 0)
        global_pool = env("SLOPE_ORT_GLOBAL_POOL", False)
        cls.intra_op, cls.pooled_sessions, cls.spin_us = intra_op, pooled_sessions, spin_us  # (all read, all valid)
        cls.global_pool = False
        if global_pool and cls.intra_op > 1:
            try:
                ort_c.set_global_thread_pool_sizes(cls.intra_op, 1)
                cls.global_pool = True
            except Exception:  # the environment already exists (a session was made first): keep per-session threads
                pass


def _at_least_one(name: str, default: int, what: str) -> int:
    """$name as a whole number >= 1 (unset or empty: the default), else a SlopeConfigError naming it."""
    try:
        value = env(name, default)
    except SlopeConfigError:
        value = 0
    if value < 1:
        raise SlopeConfigError(f"${name}={os.environ[name]!r}: expected a whole number >= 1 ({what})") from None
    return value


_open_pools: OrderedDict[_PooledRun, None] = OrderedDict()  # open pooled sessions, the least recently run first
_last_pooled: list = [None]  # the most recently run one (a session closes only when others ran after it)
_pools_lock = threading.Lock()


class _PooledRun:
    """The `run` of a program whose session has a thread pool: it opens the session again (rebuilt by `open_session`)
    if it was closed, marks it the most recently run, and closes the least recently run ones past the limit."""

    def __init__(self, open_session: Callable[[], tuple[Any, Callable]], session: Any, runner: Callable):
        self.open_session = open_session
        self.session: Any = session
        self.runner: Callable | None = runner
        self.open()

    def __call__(self, buffers: list) -> list:
        runner = self.runner
        if runner is not None and _last_pooled[0] is self:  # run last: still the most recent, no bookkeeping
            return runner(buffers)
        return self.open()(buffers)

    def open(self) -> Callable:
        """The runner of the open session (opened now if it was closed)."""
        opened = self.open_session() if self.runner is None else None  # outside the lock: building one takes a while
        with _pools_lock:
            if self.runner is None:  # (opened now if another thread closed it after the check above: a rare race)
                self.session, self.runner = opened or self.open_session()
            runner = self.runner
            _open_pools[self] = None
            _open_pools.move_to_end(self)
            _last_pooled[0] = self
            while len(_open_pools) > _Threads.pooled_sessions:
                closed = _open_pools.popitem(last=False)[0]
                closed.session = closed.runner = None  # its threads end once no run in progress holds it
        return runner


def _options(pooled: bool) -> ort.SessionOptions:
    """Session options: quiet, sequential, never spinning; threads only for programs with real work."""
    options = ort.SessionOptions()
    options.log_severity_level = _FATAL  # failures raise exceptions; do not also print them in red
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    spin = pooled and _Threads.spin_us > 0
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.add_session_config_entry("session.disable_quant_qdq", "1")  # (no quantized rewrites of DequantizeLinear)
    if spin:
        options.add_session_config_entry("session.intra_op.spin_duration_us", str(_Threads.spin_us))
    if _Threads.global_pool:
        options.use_per_session_threads = False  # required by onnxruntime once a global pool exists
    else:
        options.intra_op_num_threads = _Threads.intra_op if pooled else 1  # 1: no pool, the caller's thread runs
    if pooled:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    else:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.enable_cpu_mem_arena = False  # thousands of small sessions must not each keep an arena
        options.enable_mem_pattern = False
    return options


def _wants_pool(program: Program) -> bool:
    """Whether a program has enough work for threads: more than one operator and a tensor that is not small."""
    if len(program.instructions) <= 1:
        return False
    sizes = [v.aval.size for v in program.inputs + program.outputs]
    sizes += [v.aval.size for instruction in program.instructions for v in instruction.outputs]
    return max(sizes, default=0) > SMALL_PROGRAM_ELEMENTS


def _numpy_dtypes() -> dict[str, Any]:
    table = {}
    for dtype in slope.dtypes.all_dtypes:
        try:
            table[dtype.name] = dtype.numpy
        except TypeError:  # bfloat16 without ml_dtypes
            pass
    return table


class OnnxBackend(Backend):
    """Runs Programs as ONNX models in onnxruntime sessions (CPU, and CUDA where the CUDA provider runs)."""

    name = "onnxruntime"
    export_suffix = ".onnx"
    copies_from_numpy = True

    def __init__(self) -> None:
        _load_libraries()
        super().__init__()
        self.numpy_dtypes = _numpy_dtypes()
        self.dtypes = frozenset(d for d in slope.dtypes.all_dtypes if d.name in self.numpy_dtypes)
        ort_c.set_default_logger_severity(_ERROR)
        _Threads.setup()
        self._devices: list[str] | None = None
        self.cuda_problem = ""  # why CUDA is not offered, for error messages
        self._ort_devices = {"cpu": ort_c.OrtDevice(ort_c.OrtDevice.cpu(), ort_c.OrtDevice.default_memory(), 0)}
        self._run_options = ort_c.RunOptions()  # one for every run in every thread: onnxruntime only reads it

    # ------------------------------------------------------------------------------------------- devices
    def devices(self) -> list[str]:
        """`cpu`, plus `cuda:N` for each GPU the CUDA provider actually runs a session on."""
        if self._devices is None:
            self._devices = ["cpu"] + self._cuda_devices()
        return self._devices

    def _cuda_devices(self) -> list[str]:
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            self.cuda_problem = "this onnxruntime build has no CUDA provider"
            return []
        count = _cuda_device_count()
        if count == 0:
            self.cuda_problem = "no CUDA driver or GPU found"
            return []
        # the wheel lists CUDA even where its libraries are missing: only a session that runs on it proves it works
        ort_c.set_default_logger_severity(_FATAL)
        try:
            model = _probe_model().SerializeToString()
            session = ort.InferenceSession(
                model,
                _options(pooled=False),
                providers=["CUDAExecutionProvider", "CPUExecutionProvider"],
                enable_fallback=0,  # no "EP Error ... falling back" banner on stdout
            )
            works = "CUDAExecutionProvider" in session.get_providers()
        except Exception as error:
            self.cuda_problem = f"the CUDA provider failed to start ({error})"
            return []
        finally:
            ort_c.set_default_logger_severity(_ERROR)
        if not works:
            self.cuda_problem = "the CUDA provider could not start (missing CUDA/cuDNN libraries?)"
            return []
        return [f"cuda:{i}" for i in range(count)]

    def device_problem(self, device: str) -> str:
        """Why a CUDA device is not offered (the CUDA provider's own reason), else ''."""
        return self.cuda_problem if str(device).startswith("cuda") and device not in self.devices() else ""  # (False)

    def _device(self, device: str) -> Any:
        known = self._ort_devices.get(device)
        if known is None:
            if device not in self.devices():
                raise slope.SlopeBackendError(
                    f"slope: device {device!r} is not available on backend 'onnxruntime' "
                    f"({self.cuda_problem or 'unknown device'}); available devices: {self.devices()}"
                )
            index = int(device.split(":")[1])
            known = ort_c.OrtDevice(ort_c.OrtDevice.cuda(), ort_c.OrtDevice.default_memory(), index)
            self._ort_devices[device] = known
        return known

    # ------------------------------------------------------------------------------------------- buffers
    def from_numpy(self, array: np.ndarray, device: str) -> Any:
        """An OrtValue owning a copy of the array (on the device)."""
        array = np.asarray(array, order="C")  # (ascontiguousarray would turn 0-d arrays 1-d)
        if device == "cpu" and array.dtype.kind in "fiu":  # a copy the OrtValue owns (DLPack's deleter frees it)
            return ort_c.OrtValue.from_dlpack(array.copy().__dlpack__(), False)  # (cheaper than filling a new one)
        bfloat16 = array.dtype.kind == "V" and array.dtype.name == "bfloat16"  # NumPy has none of its own
        if device == "cpu" and not bfloat16:
            value = ort_c.OrtValue.ortvalue_from_shape_and_type(array.shape, array.dtype, self._ort_devices["cpu"])
            value.update_inplace(array)
            return value
        target = self._device(device)
        if not bfloat16:
            return ort_c.OrtValue.ortvalue_from_numpy(array, target)  # copied to the GPU
        if device != "cpu":
            raise slope.SlopeBackendError("slope: the onnxruntime backend holds bfloat16 tensors on the CPU only")
        value = ort_c.OrtValue.ortvalue_from_shape_and_onnx_type(
            list(array.shape), element_type(slope.bfloat16), target
        )
        ctypes.memmove(value.data_ptr(), array.ctypes.data, array.nbytes)  # copy the bytes
        return value

    def empty_cpu(self, shape: tuple, dtype: np.dtype) -> tuple[Any, np.ndarray] | None:
        """A new CPU OrtValue (contents undefined) and a writable NumPy view of its memory, for code that fills a
        tensor in place (slope-distributed sums into it); None for bfloat16, which NumPy cannot view."""
        if dtype.kind == "V":
            return None
        value = ort_c.OrtValue.ortvalue_from_shape_and_type(list(shape), dtype, self._ort_devices["cpu"])
        return value, value.numpy()

    def _maker(self, aval: slope.Aval) -> Callable[[], Any]:
        """A function making a new CPU OrtValue of the abstract value (its contents undefined)."""
        shape, cpu = list(aval.shape), self._ort_devices["cpu"]
        if aval.dtype == slope.bfloat16:
            return lambda: ort_c.OrtValue.ortvalue_from_shape_and_onnx_type(shape, element_type(slope.bfloat16), cpu)
        dtype = self.numpy_dtypes[aval.dtype.name]
        return lambda: ort_c.OrtValue.ortvalue_from_shape_and_type(shape, dtype, cpu)

    def to_numpy(self, buffer: Any) -> np.ndarray:
        """A NumPy copy of an OrtValue."""
        try:
            return buffer.numpy().copy()  # .numpy() is a view of the OrtValue's memory: copy, tensors are immutable
        except RuntimeError:  # onnxruntime has no NumPy type for bfloat16: copy the bytes
            if buffer.data_type() != "tensor(bfloat16)":
                raise
        out = np.empty(buffer.shape(), dtype=self.numpy_dtypes["bfloat16"])
        ctypes.memmove(out.ctypes.data, buffer.data_ptr(), out.nbytes)
        return out

    # ------------------------------------------------------------------------------------------- compile
    def model(self, program: Program) -> tuple[onnx.ModelProto, list[str], list[str]]:
        """The ONNX model of a lowered Program, with its input and output names."""
        return build_model(program, self.translations)

    def compile(self, program: Program, device: str) -> Executable:
        built = self.model(program)
        if not built[2]:  # no outputs
            return OnnxExecutable(lambda buffers: [], self, program)
        pooled = _wants_pool(program)
        session, run = self._open(built, device, pooled, program)
        if pooled and not _Threads.global_pool:  # a bounded number of these sessions stay open (_Threads)
            # (reopened from the model built now: the program's constants may have been donated since)
            run = _PooledRun(lambda: self._open(built, device, True, program), session, run)
            session = None
        return OnnxExecutable(run, self, program, session)

    def _open(self, built: tuple, device: str, pooled: bool, program: Program) -> tuple[ort.InferenceSession, Callable]:
        """A session of a built model and its `run(buffers) -> buffers`."""
        model, input_names, output_names, kept_out = built
        if device == "cpu" and pooled:  # NCHWc convolutions, pooling by phases; `.code` and exports stay plain
            model = for_cpu_session(model)
        session = self._session(model.SerializeToString(), device, pooled, kept_out)
        if device == "cpu" and len(program.instructions) > 1:  # a jitted program: its outputs go into reused buffers
            makers = [self._maker(aval) for aval in program.out_avals]
            sizes = [aval.size * aval.dtype.bits // 8 for aval in program.out_avals]
            kind = _TurnRun if _TurnRun.fits(program, input_names, output_names, sizes) else _BoundRun
            run = kind(session, input_names, output_names, self._run_options, makers, sizes)
        elif device == "cpu":
            run = _runner(session, input_names, output_names, self._run_options)
        else:
            run = _device_runner(session, input_names, output_names, self._run_options, self._device(device))
        if any(node.op_type in _INDEXING for node in model.graph.node):
            run = _index_errors(run)
        return session, run

    def _session(self, model_bytes: bytes, device: str, pooled: bool, kept_out: dict | None = None) -> Any:
        """A session of the model, fed the values of the initializers kept out of it (graph.CONSTANTS_LIMIT)."""
        self._device(device)
        options = _options(pooled)
        arrays = [np.asarray(array, order="C") for array in (kept_out or {}).values()]
        fed = [_user_owned(array) for array in arrays]
        if fed:  # (onnxruntime reads them in place: they live as long as the session)
            options.add_external_initializers(list(kept_out), fed)
        session = self._open_session(model_bytes, options, device)
        if fed:
            session._slope_fed = (arrays, fed)
        return session

    def _open_session(self, model_bytes: bytes, options: Any, device: str) -> ort.InferenceSession:
        """An onnxruntime session on the device (CPU, or CUDA with the CPU for what CUDA lacks)."""
        if device == "cpu":
            return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"], enable_fallback=0,
                                        disabled_optimizers=_DISABLED_OPTIMIZERS)  # fmt: skip
        index = int(device.split(":")[1])
        providers = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
        return ort.InferenceSession(model_bytes, options, providers=providers, enable_fallback=0,
                                    disabled_optimizers=_DISABLED_OPTIMIZERS)  # fmt: skip

    def export(self, program: Program, path: str) -> list[str]:
        """Write the Program as a checked `.onnx` model that plain onnxruntime runs (with its constants in a `.data`
        file beside it when they are over graph.CONSTANTS_LIMIT bytes in all: protobuf's limit is 2 GB)."""
        if not program.outputs:  # (the checker takes such a model; onnxruntime cannot load it)
            raise ValueError(f"slope-onnx: cannot export {path!r}: the program has no outputs (return a tensor)")
        if not path.endswith(".onnx"):
            path += ".onnx"
        from .graph import external_tensor, zeros_added_for_export

        model, _, _, kept_out = self.model(program)
        model = zeros_added_for_export(model)
        if not kept_out:
            onnx.checker.check_model(model, full_check=True)
            onnx.save(model, path)
            return [path]
        # constants over graph.CONSTANTS_LIMIT bytes (protobuf's limit is 2 GB): ONNX external data, in a file beside
        data_path = path + ".data"
        with open(data_path, "wb") as file:
            for tensor in model.graph.initializer:
                if tensor.name in kept_out:
                    array = np.ascontiguousarray(kept_out[tensor.name]).reshape(-1).view(np.uint8)
                    offset = file.tell()
                    file.write(array.data)
                    location = os.path.basename(data_path)
                    tensor.CopyFrom(external_tensor(tensor.name, tensor.data_type, tensor.dims, location, offset,
                                                    array.size))  # fmt: skip
        onnx.save(model, path)
        onnx.checker.check_model(path, full_check=True)  # (by path: the checker reads the data file beside it)
        return [path, data_path]


class OnnxExecutable(Executable):
    """An Executable that rebuilds its ONNX model (and text) only when asked: sessions keep their own copy."""

    __slots__ = ("backend", "_session")

    def __init__(self, run: Any, backend: OnnxBackend, program: Program, session: Any = None):
        super().__init__(run, "", program)
        self.backend = backend
        self._session = session

    @property
    def session(self) -> Any:
        """The onnxruntime session (a pooled one is opened again if it was closed)."""
        if isinstance(self.run, _PooledRun):
            self.run.open()
            return self.run.session
        return self._session

    @property
    def model(self) -> onnx.ModelProto:
        """The ONNX model the session runs."""
        return self.backend.model(self.program)[0]  # (constants over graph.CONSTANTS_LIMIT are external data)

    @property  # type: ignore[override]
    def code(self) -> str:
        """The ONNX model in its readable text form."""
        return onnx.printer.to_text(self.model)

    @code.setter
    def code(self, value: str) -> None:
        pass


def _runner(session: ort.InferenceSession, input_names: list[str], output_names: list[str], run_options: Any) -> Any:
    """A `run(buffers) -> buffers` closure with the names prebound: the eager hot path."""
    run_with_ort_values = session._sess.run_with_ort_values
    count = len(output_names)
    if count == 1 and len(input_names) == 1:
        (name,) = input_names

        def run(buffers: list) -> list:
            return [run_with_ort_values({name: buffers[0]}, output_names, run_options)[0]]

    elif count == 1 and len(input_names) == 2:
        first, second = input_names

        def run(buffers: list) -> list:
            return [run_with_ort_values({first: buffers[0], second: buffers[1]}, output_names, run_options)[0]]

    else:

        def run(buffers: list) -> list:
            outs = run_with_ort_values(dict(zip(input_names, buffers)), output_names, run_options)
            return [outs[i] for i in range(count)]

    return run


class _BoundRun:
    """The `run` of a jitted CPU program through an `io_binding` whose outputs are written into buffers of earlier
    runs that nothing holds any more (`sys.getrefcount`: only this object's list refers to them), else into new ones:
    a train step that gets its previous parameters back (dropped, or donated with `jit(donate_argnums=...)`) writes
    its new ones into the memory of those before, in turn, as a hand-written loop with preallocated outputs would.
    A run that finds the binding in use by another thread takes the plain path."""

    REUSED = 2  # buffers kept per output: a train step's parameters alternate between two
    KEPT_BYTES = 1 << 28  # outputs above this size are not kept: the memory held after the caller drops them is bounded

    def __init__(self, session: Any, input_names: list[str], output_names: list[str], run_options: Any,
                 makers: list[Callable[[], Any]], sizes: list[int]):  # fmt: skip
        binding = session.io_binding()._iobinding
        self.bind_input, self.bind_output = binding.bind_ortvalue_input, binding.bind_ortvalue_output
        self.run_bound = functools.partial(session._sess.run_with_iobinding, binding, run_options)
        self.plain = _runner(session, input_names, output_names, run_options)
        self.inputs = input_names
        keep = [self.REUSED if size <= self.KEPT_BYTES else 0 for size in sizes]
        self.outputs = [[name, make, [], n, 0] for name, make, n in zip(output_names, makers, keep)]
        # (name, maker, the buffers kept, how many, and the id() of the buffer bound last: one the binding holds
        # already is not bound again. A kept buffer's id matches only if it is the one bound last: that one stays kept,
        # so alive, until a call makes a new one.)
        self.idle = [True]  # taken while a call runs: list pop and append are atomic, a non-blocking lock for less

    def __call__(self, buffers: list) -> list:
        try:
            self.idle.pop()
        except IndexError:  # another thread is running it
            return self.plain(buffers)
        try:
            for name, buffer in zip(self.inputs, buffers):
                self.bind_input(name, buffer)
            outs = []
            for output in self.outputs:
                name, make, kept, keep, bound = output
                for out in kept:
                    if getrefcount(out) == _FREE:
                        break
                else:
                    out = make()
                    kept.append(out)
                    if len(kept) > keep:
                        del kept[0]
                    bound = 0  # (a new buffer may sit where the last bound one was, if that is not kept)
                if id(out) != bound:
                    self.bind_output(name, out)
                    output[4] = id(out)
                outs.append(out)
            self.run_bound()
            return outs
        finally:
            self.idle.append(True)


class _TurnRun(_BoundRun):
    """A `_BoundRun` of a program with many inputs and outputs (a train step's): two io_bindings take the calls in turn
    and bind only the tensors that changed. A train step's parameters then come back as the inputs, and go out into
    the buffers, that the binding of its turn holds already: only the batch is bound again (binding costs about 0.5 us
    a tensor: 13 us of the MNIST step's 15 inputs and 14 outputs). A slot holds a weak reference to the buffer bound to
    it (no reference that the free-buffer test would count, and a test costing less than a call into onnxruntime):
    while that buffer lives, the binding reads or writes its memory already. Each binding keeps the inputs and outputs
    of its last call alive: those of the last two calls (a `_BoundRun`: the last one's), hence `fits`' bound on the
    inputs' bytes."""

    # inputs and outputs from which a program takes this path: from 5, fewer instructions a call (callgrind) whether
    # its results come back or not; the jitted tiny function's 2 keep `_BoundRun`'s
    TENSORS = 5

    @classmethod
    def fits(cls, program: Program, input_names: list[str], output_names: list[str], sizes: list[int]) -> bool:
        """Whether a program takes two bindings: many tensors, every output kept, inputs not too large to keep (and
        OrtValues that take weak references, as onnxruntime's have since its pybind11 bindings)."""
        inputs = sum(v.aval.size * v.aval.dtype.bits // 8 for v in program.inputs)
        many = len(input_names) + len(output_names) >= cls.TENSORS
        return many and max(sizes + [inputs]) <= cls.KEPT_BYTES and ort_c.OrtValue.__weakrefoffset__ > 0

    def __init__(self, session: Any, input_names: list[str], output_names: list[str], run_options: Any,
                 makers: list[Callable[[], Any]], sizes: list[int]):  # fmt: skip
        self.plain = _runner(session, input_names, output_names, run_options)
        self.inputs, self.running = input_names, threading.Lock()
        # (name, maker, the two buffers kept, oldest first; `fits`: every output is kept)
        self.outputs = [(name, make, [None, None]) for name, make in zip(output_names, makers)]
        self.turns = [_Turn(session, run_options, len(input_names), len(output_names)) for _ in range(2)]

    def __call__(self, buffers: list) -> list:
        if not self.running.acquire(False):  # another thread is running it
            return self.plain(buffers)
        try:
            turns = self.turns
            turn = turns[0]
            turns.reverse()
            bound, bind, names = turn.inputs, turn.bind_input, self.inputs
            for i, buffer in enumerate(buffers):
                if bound[i]() is not buffer:  # (a buffer that died, or another one)
                    bound[i] = _UNBOUND  # (until bound: an interrupt in bind leaves no stale slot)
                    bind(names[i], buffer)
                    bound[i] = ref(buffer)
            outs = []
            bound, bind = turn.outputs, turn.bind_output
            for i, (name, make, kept) in enumerate(self.outputs):
                out = kept[0]  # (None before the first buffers: never free)
                if getrefcount(out) != _FREE:
                    out = kept[1]
                    if getrefcount(out) != _FREE:
                        out = make()
                        kept[:] = kept[1], out
                if bound[i]() is not out:
                    bound[i] = _UNBOUND
                    bind(name, out)
                    bound[i] = ref(out)
                outs.append(out)
            turn.run()
            return outs
        finally:
            self.running.release()


class _Turn:
    """One io_binding of a `_TurnRun`: its prebound methods and weak references to the buffers bound to it."""

    def __init__(self, session: Any, run_options: Any, inputs: int, outputs: int):
        binding = session.io_binding()._iobinding
        self.bind_input, self.bind_output = binding.bind_ortvalue_input, binding.bind_ortvalue_output
        self.run = functools.partial(session._sess.run_with_iobinding, binding, run_options)
        self.inputs, self.outputs = [_UNBOUND] * inputs, [_UNBOUND] * outputs


class _Gone:
    """An object nothing holds: a weak reference to one is dead from the start (a slot with nothing bound)."""


_UNBOUND = ref(_Gone())


def _free_count() -> int:
    """What `sys.getrefcount` says, in `_BoundRun`'s loop, of an object only its list refers to (measured, as the count
    differs between Python versions)."""
    for probe in [object()]:
        return sys.getrefcount(probe)
    raise AssertionError  # (unreachable)


_FREE = _free_count()


# onnxruntime operators that reject an index out of range when they run, and the Slope operators they come from
_INDEXING = {
    "GatherND": "gather_nd (x[index], slope.getitem)",
    "ScatterND": "scatter_nd (x.at[index], gradients of x[index])",
    "GatherElements": "take_along_dim",
    "ScatterElements": "scatter_add",
}

# the name of a node that checks values (graph.OnnxGraph.check): its failure is this error, with this message (the
# number keeps node names unique: onnxruntime refuses a model with two nodes of one name, as two checks of one message)
CHECK = "slope check {2}: {0.__name__}: {1}"
_CHECK_FAILED = re.compile(r"Name:'slope check \d+: (ValueError|IndexError): (.*?)' Status Message:", re.S)


def _index_errors(run: Any) -> Any:
    """`run` raising onnxruntime's failures on an index out of range as IndexErrors that name the Slope operator, and
    those of a check (`CHECK`) as its error."""

    def checked(buffers: list) -> list:
        try:
            return run(buffers)
        except Exception as error:
            check = _CHECK_FAILED.search(str(error))
            if check is not None:
                raise {"ValueError": ValueError, "IndexError": IndexError}[check.group(1)](check.group(2)) from None
            found = re.search(r"running (\w+) node", str(error))
            if found is None or found.group(1) not in _INDEXING:
                raise
            detail = str(error).split("Status Message: ")[-1].split("] ")[-1].strip()
            raise IndexError(
                f"slope.{_INDEXING[found.group(1)]}: an index is out of range (indices must lie in [-size, size) of "
                f"the dimension they index); onnxruntime: {detail}"
            ) from None

    return checked


def _device_runner(session: ort.InferenceSession, input_names: list[str], output_names: list[str], run_options: Any,
                   device: Any) -> Any:  # fmt: skip
    """A `run` whose outputs stay on the device (plain `run_with_ort_values` would copy them to the CPU)."""
    run_with_vectors = session._sess.run_with_ortvaluevector
    fetch_devices = [device] * len(output_names)
    count = len(output_names)

    def run(buffers: list) -> list:
        feeds, fetches = ort_c.OrtValueVector(), ort_c.OrtValueVector()
        for buffer in buffers:
            feeds.push_back(buffer)
        run_with_vectors(run_options, input_names, feeds, output_names, fetches, fetch_devices)
        return [fetches[i] for i in range(count)]

    return run


def _user_owned(array: np.ndarray) -> Any:
    """An OrtValue over a C-ordered array's memory (no copy: the caller keeps the array alive), bfloat16 too."""
    if array.dtype.name == "bfloat16":  # (NumPy has no bfloat16 of its own: its bits, typed as ONNX's)
        return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(array.view(np.uint16), element_type(slope.bfloat16))
    return ort.OrtValue.ortvalue_from_numpy(array)


def _cuda_device_count() -> int:
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


def _probe_model() -> onnx.ModelProto:
    from onnx import helper

    from .graph import IR_VERSION, OPSET

    x = helper.make_tensor_value_info("x", element_type(slope.float32), [1])
    y = helper.make_tensor_value_info("y", element_type(slope.float32), [1])
    graph = helper.make_graph([helper.make_node("Neg", ["x"], ["y"])], "probe", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
