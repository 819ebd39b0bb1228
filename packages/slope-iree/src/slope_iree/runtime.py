"""The IREE runtime side of the backend: devices, buffers, loading compiled modules and calling them.

- One VM instance per process and one HAL device per driver, shared by every program: no thread pool per cached
  program. `cpu` is the single-threaded `local-sync` device, plus the threaded `local-task` device (one pool, as many
  workers as CPUs) made the first time a program turns out to run faster on it; `cuda:N` is IREE's CUDA driver, listed
  only when it really loads (the wheel lists the driver on every machine).
- Buffers are IREE `HalBufferView`s that stay on their device between calls; NumPy only at `to_numpy`.
- A module is loaded once per device (cache key: its MLIR), whatever the number of programs (eager shapes) using it,
  and lives as long as one of them: each function called holds its module, `_modules` only finds the live ones (weak
  references), so a program dropped from the jit or eager cache frees its module (read or compiled again if needed).
- On the CPU, a program runs on `local-sync`; one whose first call took longer than `SLOW_CALL` seconds is then timed
  on both devices for a few calls and moves to `local-task` only if the threads win clearly and consistently
  (SLOPE_IREE_DRIVER=local-sync|local-task fixes the choice).
"""

from __future__ import annotations

import os
import threading
import time
import warnings
import weakref
from typing import Any, Callable

import numpy as np

import slope
from slope.dtypes import all_dtypes
from slope.errors import SlopeConfigError

from . import cache

SLOW_CALL = 200e-6  # a call shorter than this cannot win from threads: the task driver's dispatch costs ~20 µs
TRIALS = 8  # timed calls per driver when choosing (after one warm-up call each)
TASK_GAIN = 0.8  # threads must beat 0.8x local-sync's best time in 3 of 4 trials: on a busy machine they cost more

_lock = threading.RLock()
_iree: Any = None  # the iree.runtime module, imported on first use (its import costs ~0.1 s)
_vm_instance: Any = None
_devices: dict[str, Device] = {}  # "cpu", "cpu-task", "cuda:0", ... -> Device
_available: list[str] | None = None
_modules: weakref.WeakValueDictionary[tuple[str, str], Module] = weakref.WeakValueDictionary()  # (key, device) ->
# a loaded module that a function still holds


def iree() -> Any:
    """The iree.runtime module."""
    global _iree, _vm_instance
    if _iree is None:
        with _lock:
            try:
                import iree.runtime as runtime_module
            except ImportError as error:
                raise slope.SlopeBackendError(
                    f"slope: the iree backend needs IREE's runtime ({error}): pip install iree-base-runtime"
                ) from None
            _vm_instance = runtime_module.VmInstance()
            # nanobind reports every IREE object still alive when the interpreter tears its modules down ("leaked 18
            # instances" after a jitted function kept in a global): teardown order, not a leak; IREE's switch for it
            getattr(getattr(runtime_module, "_binding", None), "disable_leak_checker", lambda: None)()
            _iree = runtime_module
    return _iree


def _cuda_devices() -> list[str]:
    """The CUDA devices IREE can open (an empty list where the CUDA driver library does not load)."""
    try:
        driver = iree().get_driver("cuda")
        return [f"cuda:{i}" for i in range(len(driver.query_available_devices()))]
    except Exception:  # no libcuda, no GPU, or a driver that fails: IREE's CUDA is not there
        return []


def devices() -> list[str]:
    """The devices the iree backend can use: cpu always, cuda:N where IREE's CUDA driver loads and finds a GPU."""
    global _available
    if _available is None:
        _available = ["cpu", *_cuda_devices()]
    return list(_available)


def target(device: str) -> str:
    """The compile target of a device ("cpu" for both CPU drivers, "cuda")."""
    return device.split(":")[0].split("-")[0]


class Device:
    """One IREE HAL device with its VM `hal` module, shared by every module loaded on it."""

    def __init__(self, name: str, driver: str, hal_device: Any):
        runtime = iree()
        self.name, self.driver, self.hal = name, driver, hal_device
        self.hal_module = runtime.create_hal_module(_vm_instance, hal_device)
        self.memory_type, self.usage = runtime.MemoryType.DEVICE_LOCAL, runtime.BufferUsage.DEFAULT

    def from_numpy(self, array: np.ndarray) -> Any:
        """A HalBufferView on this device holding a copy of the array."""
        array = np.asarray(array, order="C")
        element_type = _element_types().get(array.dtype.name)
        if element_type is None:
            raise slope.SlopeBackendError(f"slope: the iree backend cannot hold NumPy dtype {array.dtype}")
        if array.dtype.name == "bfloat16":  # (ml_dtypes' arrays do not export a buffer IREE reads)
            array = array.view(np.uint16)
        return self.hal.allocator.allocate_buffer_copy(
            memory_type=self.memory_type, allowed_usage=self.usage, device=self.hal, buffer=array,
            element_type=element_type,
        )  # fmt: skip


_element_table: dict[str, Any] = {}
_numpy_dtypes: dict[int, np.dtype] = {}  # HalElementType -> NumPy dtype


def _element_types() -> dict[str, Any]:
    """NumPy dtype name -> IREE element type, for the dtypes Slope holds."""
    if not _element_table:
        element = iree().HalElementType
        table = {
            "bool": element.BOOL_8, "int8": element.SINT_8, "uint8": element.UINT_8, "int16": element.SINT_16,
            "int32": element.SINT_32, "int64": element.SINT_64, "float16": element.FLOAT_16,
            "bfloat16": element.BFLOAT_16, "float32": element.FLOAT_32, "float64": element.FLOAT_64,
        }  # fmt: skip
        for dtype in all_dtypes:
            try:
                _numpy_dtypes[int(table[dtype.name])] = np.dtype(dtype.numpy)
            except (TypeError, KeyError):  # bfloat16 without ml_dtypes
                pass
        for bits in (8, 16, 32, 64):  # compiled functions return signless integers: Slope's ints are signed
            _numpy_dtypes[int(getattr(element, f"INT_{bits}"))] = np.dtype(f"int{bits}")
        _element_table.update(table)
    return _element_table


def to_numpy(view: Any) -> np.ndarray:
    """A NumPy copy of a buffer view (of any device)."""
    _element_types()
    dtype = _numpy_dtypes[int(view.element_type)]
    buffer = view.get_buffer()
    runtime = iree()
    if buffer.memory_type() & int(runtime.MemoryType.HOST_VISIBLE) and buffer.allowed_usage() & int(
        runtime.BufferUsage.MAPPING_SCOPED
    ):
        return np.array(view.map().asarray(view.shape, dtype))  # a copy: tensors are immutable, arrays are not
    owner = next((d for d in _devices.values() if not d.driver.startswith("local-")), None)
    if owner is None:
        raise slope.SlopeBackendError("slope: an iree buffer is on no device this process opened")
    # (a GPU buffer: DeviceArray copies it back through the device's queue)
    return np.array(runtime.DeviceArray(owner.hal, view, override_dtype=dtype).to_host())


def device(name: str) -> Device:
    """The shared Device of a name ("cpu", "cpu-task" for the threaded CPU driver, "cuda:N")."""
    found = _devices.get(name)
    if found is not None:
        return found
    with _lock:
        if name in _devices:
            return _devices[name]
        runtime = iree()
        if name in ("cpu", "cpu-task"):
            driver = "local-sync" if name == "cpu" else "local-task"
            hal_device = runtime.get_driver(driver).create_default_device()
        elif name.startswith("cuda") and name in devices():
            driver = "cuda"
            infos = runtime.get_driver("cuda").query_available_devices()
            hal_device = runtime.get_driver("cuda").create_device(infos[int(name.split(":")[1])]["device_id"])
        else:
            raise slope.SlopeBackendError(
                f"slope: device {name!r} is not available on backend 'iree'; available devices: {devices()}"
            )
        _devices[name] = Device(name, driver, hal_device)
        return _devices[name]


def from_numpy(array: np.ndarray, device_name: str) -> Any:
    """A buffer on a device holding a copy of the array."""
    return device(device_name).from_numpy(array)


class Module:
    """A compiled module loaded on a device: its VM context and functions. Calls into one context are serialized."""

    def __init__(self, vmfb: bytes, on: Device):
        runtime = iree()
        self.device = on
        self.vm_module = runtime.VmModule.copy_buffer(_vm_instance, vmfb)  # (the bytes may be freed after)
        self.context = runtime.VmContext(_vm_instance, [on.hal_module, self.vm_module])
        self.lock = threading.Lock()  # an IREE context is thread-compatible, not thread-safe

    def function(self, name: str, outputs: int, scalars: tuple[int, ...] = ()) -> Callable[[list], list]:
        """A Python callable `buffers -> buffers` for one exported function (it keeps the module loaded); `scalars`,
        64-bit integers, follow the buffers in every call."""
        runtime = iree()
        function = self.vm_module.lookup_function(name)
        if function is None:
            raise slope.SlopeBackendError(f"slope: the compiled iree module has no function {name!r}")
        new_list, view_type, invoke, lock = runtime.VmVariantList, runtime.HalBufferView, self.context.invoke, self.lock
        indices = range(outputs)

        def call(buffers: list) -> list:
            inputs, results = new_list(len(buffers)), new_list(outputs)
            for buffer in buffers:
                inputs.push_ref(buffer.ref)
            for number in scalars:
                inputs.push_int(number)
            with lock:
                invoke(function, inputs, results)
            if outputs == 1:  # (most programs: no loop)
                return [results.get_as_object(0, view_type)]
            return [results.get_as_object(i, view_type) for i in indices]

        call.module = self  # type: ignore[attr-defined]  # (an attribute, not read when called: the module lives on)
        return call


def load(mlir: str, device_name: str) -> Module:
    """The module compiled from MLIR (disk cache, else the compiler) and loaded on a device, once per process."""
    name = cache.key(mlir, target(device_name), cache.target_flags(target(device_name)))
    module = _modules.get((name, device_name))
    if module is None:
        vmfb, path = cache.obtain(mlir, target(device_name))
        with _lock:
            module = _modules.get((name, device_name))
            if module is None:
                module = _modules[(name, device_name)] = _loaded(mlir, vmfb, path, device(device_name))
    return module


def _loaded(mlir: str, vmfb: bytes, path: str | None, on: Device) -> Module:
    """A module loaded on a device; one read from a cache file (`path`) that is damaged is compiled again (and the
    file rewritten)."""
    try:
        return Module(vmfb, on)
    except Exception as error:
        if path is None:  # compiled by this process: a real error (compiling again would not help)
            raise
        message = f"slope: the iree compile cache file {path!r} does not load ({error}); compiling it again"
        warnings.warn(message, RuntimeWarning, stacklevel=2)
        return Module(cache.compile_mlir(mlir, target(on.name), fresh=True), on)


def function(
    mlir: str, device_name: str, outputs: int, name: str = "main", scalars: tuple[int, ...] = ()
) -> Callable[[list], list]:
    """A callable `buffers -> buffers` running a function of an MLIR module on a device (`scalars`: integer arguments
    after the buffers, the same in every call).

    On the CPU it starts on the single-threaded driver and moves to the threaded one when measurement says so.
    """
    call = load(mlir, device_name).function(name, outputs, scalars)
    if device_name != "cpu":
        return call
    forced = forced_driver()
    if forced == "local-task":
        return load(mlir, "cpu-task").function(name, outputs, scalars)
    if forced == "local-sync" or _cpus() < 2:
        return call
    return _DriverChoice(call, lambda: load(mlir, "cpu-task").function(name, outputs, scalars)).run


CPU_DRIVERS = ("local-sync", "local-task")


def forced_driver() -> str:
    """$SLOPE_IREE_DRIVER: the CPU driver every program runs on ("" when unset: chosen per program by timing)."""
    forced = os.environ.get("SLOPE_IREE_DRIVER", "").strip().lower()
    if forced and forced not in CPU_DRIVERS:
        raise SlopeConfigError(
            f"$SLOPE_IREE_DRIVER={os.environ['SLOPE_IREE_DRIVER']!r}: expected one of {', '.join(CPU_DRIVERS)} "
            "(or unset: each program on the faster one, by timing)"
        )
    return forced


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class _DriverChoice:
    """The `run` of a CPU program: local-sync, unless timing shows the threaded local-task driver is faster.

    The first call is timed on local-sync; a fast one settles it. Otherwise the next calls alternate between both
    drivers (the first call on each, which warms it up, is not counted); local-task wins when at least 3 of 4 of its
    TRIALS calls beat TASK_GAIN times local-sync's best, and loses as soon as it no longer can. Not the medians: on a
    shared 2-core machine the threads' times spread from 0.6x to 10x local-sync's (a worker waits for a core) and
    local-sync's median of 5 calls was inflated by preemption, so they chose local-task in some processes (then up
    to 1.5x slower) and not in others; a single thread's time only grows with the load, so its best is its cost.
    The choice holds for the process: the steady calls are not timed.
    Buffers of both CPU drivers live in host memory, so either reads the other's results.
    """

    __slots__ = ("sync", "make_task", "task", "chosen", "times")

    def __init__(self, sync: Callable[[list], list], make_task: Callable[[], Callable[[list], list]]):
        self.sync, self.make_task, self.task = sync, make_task, None
        self.chosen: Callable[[list], list] | None = None
        self.times: dict[str, list[float]] = {"sync": [], "task": []}

    def run(self, buffers: list) -> list:
        """Run the program on the chosen driver (measuring until there is one)."""
        chosen = self.chosen
        if chosen is not None:
            return chosen(buffers)
        return self._measure(buffers)

    def _measure(self, buffers: list) -> list:
        sync_times, task_times = self.times["sync"], self.times["task"]
        use_task = bool(sync_times) and len(task_times) <= len(sync_times)
        if use_task and self.task is None:
            self.task = self.make_task()
            outs = self.task(buffers)  # starts the pool's threads: not a fair sample
            task_times.append(float("inf"))
            return outs
        start = time.perf_counter()
        outs = (self.task if use_task else self.sync)(buffers)
        (task_times if use_task else sync_times).append(time.perf_counter() - start)
        if len(sync_times) == 1 and sync_times[0] < SLOW_CALL:
            self.chosen = self.sync
        elif len(task_times) > 1 and len(sync_times) > 1:
            bar = TASK_GAIN * min(sync_times[1:])  # (a single thread's best: a busy machine only adds to it)
            losses = sum(elapsed >= bar for elapsed in task_times[1:])  # (the bar only falls: a loss stays one)
            if 4 * losses > TRIALS:  # local-task can no longer win 3 of 4: no more slow trials on a busy machine
                self.chosen = self.sync
            elif len(task_times) > TRIALS and len(sync_times) > TRIALS:
                self.chosen = self.task
        return outs

    @property
    def driver(self) -> str | None:
        """The chosen driver's name (None while measuring)."""
        if self.chosen is None:
            return None
        return "local-task" if self.chosen is self.task else "local-sync"


# An exported module holds its constants, which the compiler would evaluate while compiling (const-eval): its
# compile-time code links no libm ("undefined symbol: cos" for a randn, whose key is a constant), and a program
# must compute what Slope's jit computes, where the constants are inputs. So they are computed when it runs.
EXPORT_FLAGS = ("--iree-opt-const-eval=false",)


def export(mlir: str, path: str, target_name: str = "cpu") -> list[str]:
    """Write `path.mlir` and `path.vmfb` compiled for a target (cpu, cuda, vulkan, metal); returns the paths."""
    base = path[: -len(".vmfb")] if path.endswith(".vmfb") else path.removesuffix(".mlir")
    vmfb = cache.compile_mlir(mlir, target_name, EXPORT_FLAGS)
    # the flags in the file: IREE's defaults compute other numbers (float64 demoted to float32, constants folded at
    # compile time by other code: a float32 sum of 10**6 0.1s was 1% off)
    flags = " ".join((f"--iree-hal-target-backends={cache.TARGET_BACKENDS[target_name]}",
                      *cache.compiler_flags(mlir, target_name, EXPORT_FLAGS)))  # fmt: skip
    with open(base + ".mlir", "w") as handle:
        handle.write(f"// Compiled by Slope with: iree-compile {flags} {os.path.basename(base)}.mlir\n{mlir}")
    with open(base + ".vmfb", "wb") as handle:
        handle.write(vmfb)
    return [base + ".mlir", base + ".vmfb"]


def release() -> None:
    """Drop every loaded module and device (contexts before the devices they use), e.g. at exit."""
    with _lock:
        _modules.clear()
        _devices.clear()
