"""The compile cache: StableHLO text -> .vmfb bytes, in memory and on disk under $SLOPE_CACHE_DIR/iree.

A compile costs 0.15-0.5 s whatever the module's size, so every compiled module is kept on disk, keyed by a hash of
the MLIR text, the compiler's version, the target and the flags (and, for `--iree-llvmcpu-target-cpu=host`, the
CPU that flag resolves to: a cache shared between machines must not hand a module built for one CPU's instructions to
another, which dies with "Illegal instruction"): a new process (or another one running at the same time) loads it
instead of compiling again. Files are written to a temporary name and renamed into place, so a reader
never sees half a module and several processes may fill the cache at once (the temporary file is synced first, so
a power loss cannot leave a truncated module under the real name). A file damaged all the same (it does not load)
is removed, compiled again and rewritten (runtime.load). `slope cache` shows its size and `slope cache clear`
deletes its files (`own_files`: its modules and temporary files, nothing else in the folder). In memory only the
MEMORY_MODULES modules used last are kept (a loaded module holds its own copy).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import platform
import re
import subprocess
import sys
import tempfile
import warnings
from typing import Any

from slope.backend import BoundedCache
from slope.errors import env

FORMAT = "slope-iree-cache-1"  # bump when the way modules are compiled changes in a way the key does not show

# The compiler's target backend and flags for each target; the runtime picks the target from the device.
TARGET_BACKENDS = {"cpu": "llvm-cpu", "cuda": "cuda", "vulkan": "vulkan-spirv", "metal": "metal-spirv"}
# IREE 3.13's fusion of an operation with several uses into its consumers' dispatches is turned off for every program
# (no slower: benchmarks/bench.py mlp and hessian). With it, IREE computed a wrong number without error, at every
# optimization level, for the second-order gradient of x * (rsqrt(v) + (v - v)), v = (x * x).sum(1, keepdim=True)
# (LayerNorm's and training-mode BatchNorm's overflow_to_nan), and Adam with weight_decay under jit failed at run time:
# "indirect buffer reference slot 0 is out range" (a command buffer __init records, copying a NaN constant).
COMMON_FLAGS = (
    "--iree-input-type=stablehlo",
    "--iree-input-demote-f64-to-f32=false",
    "--iree-dispatch-creation-fuse-multi-use=false",
)


def _error(message: str) -> Exception:
    from slope import SlopeBackendError  # (imported late: `import slope` loads this package's plugin)

    return SlopeBackendError(message)


_LIBM = re.compile(r"stablehlo\.(sine|cosine|tan|tanh|remainder) ")  # float64 forms IREE leaves to libm
_NO_CONST_EVAL = "--iree-opt-const-eval=false"
_NO_INDIRECT = "--iree-hal-indirect-command-buffers=false"


def target_flags(target: str) -> tuple[str, ...]:
    """The compiler flags for a target ("cpu", "cuda", "vulkan", "metal"), besides its target backend."""
    if target == "cpu":
        # a generic CPU target is 2-3x slower and warns on every compile; a system library (not IREE's embedded ELF)
        # links the float64 sin, cos, tanh and fmod that IREE leaves to libm ("undefined symbol: cos" otherwise)
        return (*COMMON_FLAGS, "--iree-llvmcpu-target-cpu=host", "--iree-llvmcpu-link-embedded=false")
    if target == "cuda":
        # IREE 3.13 cannot compile for sm_90 ("missing GPU target"); sm_80 PTX runs on newer GPUs too
        return (*COMMON_FLAGS, f"--iree-cuda-target={os.environ.get('SLOPE_IREE_CUDA_TARGET', 'sm_80')}")
    if target == "metal":
        # no Metal toolchain here: keep the shaders as MSL source in the module (the Metal runtime compiles them)
        return (*COMMON_FLAGS, "--iree-metal-compile-to-metallib=false")
    if target == "vulkan" and os.environ.get("SLOPE_IREE_VULKAN_TARGET"):  # (IREE's default has no float64)
        return (*COMMON_FLAGS, f"--iree-vulkan-target={os.environ['SLOPE_IREE_VULKAN_TARGET']}")
    if target in TARGET_BACKENDS:
        return COMMON_FLAGS
    raise _error(f"slope: the iree backend has no compile target {target!r}; targets: {sorted(TARGET_BACKENDS)}")


def compiler_version() -> str:
    """The IREE compiler's version and revision, read without importing the compiler (an import costs ~0.2 s)."""
    global _version
    if _version is None:
        spec = importlib.util.find_spec("iree.compiler")
        if spec is None or not spec.submodule_search_locations:
            raise _error(
                "slope: the iree backend needs the IREE compiler: pip install iree-base-compiler iree-base-runtime"
            )
        try:
            with open(os.path.join(list(spec.submodule_search_locations)[0], "version.py")) as handle:
                text = handle.read()
            _version = " ".join(re.findall(r"^(?:VERSION|REVISIONS) = (.*)$", text, re.MULTILINE)) or text
        except OSError:
            _version = "unknown"
    return _version


_version: str | None = None
# The bytes of the modules this process compiled or read last, for loading them again (another driver, a program
# compiled again) without reading the disk: an approximate LRU, not every module of the process (each was ~22 KB).
MEMORY_MODULES, MEMORY_BYTES = 64, 64 * 2**20
_memory = BoundedCache(MEMORY_MODULES, MEMORY_BYTES, lambda entry: len(entry[0]))  # key -> (bytes, file read or None)
_warned: list[str] = []
stats = {"compiled": 0, "read": 0}  # modules compiled and modules read from disk by this process


def key(mlir: str, target: str, flags: tuple[str, ...]) -> str:
    """The cache key of a module: a hash of everything that changes the compiled bytes."""
    host = host_cpu() if any(_HOST_FLAG.match(flag) for flag in flags) else ""
    digest = hashlib.sha256()
    for part in (FORMAT, compiler_version(), target, host, "\0".join(flags), mlir):
        digest.update(part.encode())
        digest.update(b"\0\1")
    return digest.hexdigest()


_HOST_FLAG = re.compile(r"--iree-llvmcpu-target-cpu(-features)?=host$")
# /proc/cpuinfo's lines that name the CPU and its instruction sets (x86, ARM, RISC-V, POWER), not the ones that change
# while it runs or from boot to boot (cpu MHz, bogomips, microcode)
_CPU_FIELDS = {"vendor_id", "cpu family", "model", "model name", "flags", "features", "cpu implementer",
               "cpu architecture", "cpu variant", "cpu part", "isa", "uarch", "cpu"}  # fmt: skip
_host_cpu: str | None = None


def host_cpu() -> str:
    """A hash of this machine's CPU model and instruction sets, what `--iree-llvmcpu-target-cpu=host` compiles for."""
    global _host_cpu
    if _host_cpu is None:
        _host_cpu = hashlib.sha256(describe_cpu().encode()).hexdigest()[:32]
    return _host_cpu


def describe_cpu() -> str:
    """This machine's CPU as the OS describes it: on Linux the model and flags lines of /proc/cpuinfo (every distinct
    one: big and little cores differ), on macOS `sysctl machdep.cpu hw.optional`, else platform.processor()."""
    parts = [platform.system(), platform.machine()]
    if sys.platform.startswith("linux"):
        try:
            with open("/proc/cpuinfo", errors="replace") as handle:
                lines = handle.read().splitlines()
            fields = (line.split(":", 1) for line in lines if ":" in line)
            parts += sorted({f"{name.strip()}: {value.strip()}" for name, value in fields
                             if name.strip().lower() in _CPU_FIELDS})  # fmt: skip
        except OSError:
            pass
    elif sys.platform == "darwin":
        try:
            parts.append(subprocess.run(["sysctl", "machdep.cpu", "hw.optional"], capture_output=True, text=True,
                                        timeout=10).stdout)  # fmt: skip
        except (OSError, subprocess.SubprocessError):
            pass
    if len(parts) == 2 or not parts[-1]:
        parts.append(platform.processor())
    return "\n".join(parts)


def root() -> str:
    """Slope's cache folder: $SLOPE_CACHE_DIR with ~ expanded, made absolute once (default ~/.cache/slope)."""
    global _root
    raw = os.environ.get("SLOPE_CACHE_DIR", "")
    if _root is None or _root[0] != raw:  # (a relative folder stays where it was when first read, whatever chdir)
        _root = (raw, os.path.abspath(os.path.expanduser(raw if raw.strip() else "~/.cache/slope")))
    return _root[1]


_root: tuple[str, str] | None = None


def directory() -> str:
    """The folder of this backend's compiled modules: $SLOPE_CACHE_DIR/iree (default ~/.cache/slope/iree)."""
    return os.path.join(root(), "iree")


def enabled() -> bool:
    """Whether compiled modules are kept on disk (SLOPE_IREE_DISK_CACHE=0/false/no/off turns it off)."""
    return bool(env("SLOPE_IREE_DISK_CACHE", True))


_MODULE_FILE = re.compile(r"[0-9a-f]{64}\.vmfb")
_TEMPORARY_FILE = re.compile(r"\.[A-Za-z0-9_]+\.tmp")  # (_write's, named by tempfile.mkstemp)


def own_files() -> list[str]:
    """The files of the disk cache: the modules and temporary files it wrote (not whatever else its folder holds)."""
    folder, found = directory(), []
    if not os.path.isdir(folder):
        return found
    for sub in sorted(os.listdir(folder)):
        path = os.path.join(folder, sub)
        if re.fullmatch("[0-9a-f]{2}", sub) and os.path.isdir(path):
            for name in sorted(os.listdir(path)):
                if (_MODULE_FILE.fullmatch(name) and name[:2] == sub) or _TEMPORARY_FILE.fullmatch(name):
                    found.append(os.path.join(path, name))
    return found


def clear_disk() -> list[str]:
    """Delete the disk cache's files (`own_files`, then its emptied folders); the ones left, each with the reason."""
    left, files = [], own_files()
    for path in files:
        try:
            os.remove(path)
        except FileNotFoundError:  # (another `slope cache clear`)
            pass
        except OSError as error:
            left.append(f"{path}: {error.strerror or error}")
    for folder in [*sorted({os.path.dirname(path) for path in files}), directory()]:  # only the ones now empty go
        with contextlib.suppress(OSError):
            os.rmdir(folder)
    return left


def compile_mlir(mlir: str, target: str = "cpu", extra_flags: tuple[str, ...] = (), fresh: bool = False) -> bytes:
    """The .vmfb bytes of a StableHLO module for a target: from memory, else from disk, else compiled (and stored).

    `fresh=True` removes its file and compiles it again, whatever memory or disk hold (for a file that did not load).
    """
    return obtain(mlir, target, extra_flags, fresh)[0]


def obtain(
    mlir: str, target: str = "cpu", extra_flags: tuple[str, ...] = (), fresh: bool = False
) -> tuple[bytes, str | None]:
    """compile_mlir's bytes and the file they were read from (None where this process compiled them)."""
    flags, name, path = _where(mlir, target, extra_flags)
    if fresh:
        with contextlib.suppress(OSError):  # (already gone, or a read-only cache: compiled all the same)
            os.remove(path)
        with _memory.lock:
            _memory.recent.pop(name, None)
            _memory.old.pop(name, None)
    else:
        entry = _memory.recent.get(name)
        if entry is not None:
            return entry
    return _memory.add(name, _read_or_compile, mlir, target, flags, path, fresh)


def _read_or_compile(
    mlir: str, target: str, flags: tuple[str, ...], path: str, fresh: bool
) -> tuple[bytes, str | None]:
    """A module's bytes from its file (and the file), else compiled (and stored)."""
    module = _read(path) if enabled() and not fresh else None
    if module is not None:
        stats["read"] += 1
        return module, path
    module = _compile(mlir, TARGET_BACKENDS[target], flags)
    stats["compiled"] += 1
    if enabled():
        _write(path, module)
    return module, None


def read_from(mlir: str, target: str = "cpu", extra_flags: tuple[str, ...] = ()) -> str | None:
    """The file this process read a module's bytes from (None where it compiled them, or holds them no more)."""
    _, name, _ = _where(mlir, target, extra_flags)
    entry = _memory.recent.get(name) or _memory.old.get(name)
    return entry[1] if entry is not None else None


def compiler_flags(mlir: str, target: str = "cpu", extra_flags: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The flags a module is compiled with (the target's, the extra ones, and those its code needs)."""
    return _where(mlir, target, extra_flags)[0]


def _where(mlir: str, target: str, extra_flags: tuple[str, ...]) -> tuple[tuple[str, ...], str, str]:
    """A module's compiler flags, cache key and file."""
    if target == "cpu" and _LIBM.search(mlir) and _NO_CONST_EVAL not in extra_flags:
        # IREE evaluates a program's constant parts while compiling, with code that links no libm: a sine of a
        # constant (a positional encoding's) failed with "undefined symbol: sin" under jit; computed when it runs
        extra_flags = (*extra_flags, _NO_CONST_EVAL)
    if "stablehlo.while" in mlir and _NO_INDIRECT not in extra_flags:
        # IREE 3.13's indirect command buffers fail at run time in some programs with loops (two float64 pows and
        # their gradient: "indirect buffer reference slot 0 is out range of the declared binding capacity")
        extra_flags = (*extra_flags, _NO_INDIRECT)
    flags = target_flags(target) + tuple(extra_flags)
    name = key(mlir, target, flags)
    return flags, name, os.path.join(directory(), name[:2], name + ".vmfb")


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError:  # not cached yet (or unreadable: compile again)
        return None


def _write(path: str, module: bytes) -> None:
    folder = os.path.dirname(path)
    try:
        os.makedirs(folder, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=folder, prefix=".", suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as file:
                file.write(module)
                file.flush()
                os.fsync(file.fileno())  # on disk before the rename: a power loss leaves no truncated module
            os.replace(temporary, path)  # atomic: readers see the whole module or none
        except BaseException:
            os.unlink(temporary)
            raise
    except OSError as error:  # a read-only or full disk costs speed, not correctness
        if not _warned:
            _warned.append(folder)
            warnings.warn(f"slope: cannot write the iree compile cache in {folder!r} ({error}); "
                          "set SLOPE_CACHE_DIR to a writable folder", RuntimeWarning, stacklevel=3)  # fmt: skip


def _compile(mlir: str, target_backend: str, flags: tuple[str, ...]) -> bytes:
    from iree.compiler import CompilerToolError, compile_str

    try:
        return compile_str(mlir, target_backends=[target_backend], extra_args=list(flags))
    except CompilerToolError as error:
        if target_backend in ("vulkan-spirv", "metal-spirv") and re.search(r"\bf64\b", str(error)):
            raise _error(
                f"slope: the {target_backend} target has no float64, which this program uses (float32 sums, cumsums "
                "and contractions longer than 65,536 accumulate in float64); for vulkan choose a GPU target that has it with SLOPE_IREE_VULKAN_TARGET "
                f"(e.g. ampere, rdna3):\n{_summary(error)}"
            ) from None
        raise _error(
            f"slope: the IREE compiler rejected a module for {target_backend} (a bug in slope-iree's translation; "
            f"please report it with LOG_JIT=1 output):\n{_summary(error)}"
        ) from None


def _summary(error: Any) -> str:
    lines = [line for line in str(error).splitlines() if "error" in line.lower()]
    return "\n".join(lines[:10]) or str(error)[:2000]


def clear_memory() -> None:
    """Forget the modules' bytes held in this process (the disk cache stays; loaded modules stay while used)."""
    with _memory.lock:
        _memory.recent.clear()
        _memory.old.clear()
        _memory.nbytes = 0
