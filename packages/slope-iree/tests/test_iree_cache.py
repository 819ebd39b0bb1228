"""The iree backend's compile cache: on disk under $SLOPE_CACHE_DIR/iree, keyed by everything that changes the
compiled bytes, safe with several processes, shown and emptied by `slope cache`."""

from __future__ import annotations

import gc
import os
import platform
import re
import subprocess
import sys
import weakref

import numpy as np
import pytest

pytest.importorskip("iree.compiler")
pytest.importorskip("iree.runtime")

from slope_iree import cache, runtime  # noqa: E402

MODULE = """func.func @main(%a: tensor<3xf32>) -> tensor<3xf32> {
    %0 = stablehlo.add %a, %a : tensor<3xf32>
    return %0 : tensor<3xf32>
}
"""


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    """A fresh, empty cache folder for this test (and nothing held in memory)."""
    monkeypatch.setenv("SLOPE_CACHE_DIR", str(tmp_path))
    cache.clear_memory()
    return tmp_path


def cached_files(root) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root) for f in files)


def test_a_compiled_module_is_written_once_and_read_back(cache_dir, monkeypatch):
    module = cache.compile_mlir(MODULE, "cpu")
    files = cached_files(cache_dir)
    assert len(files) == 1 and files[0].startswith("iree" + os.sep) and files[0].endswith(".vmfb")
    assert cache.compile_mlir(MODULE, "cpu") is module  # this process: from memory
    cache.clear_memory()

    def no_compiler(*args):
        raise AssertionError("compiled again although the module is on disk")

    monkeypatch.setattr(cache, "_compile", no_compiler)
    assert cache.compile_mlir(MODULE, "cpu") == module  # a new process: from disk


def test_the_key_covers_text_target_flags_and_compiler():
    flags = cache.target_flags("cpu")
    base = cache.key(MODULE, "cpu", flags)
    assert cache.key(MODULE, "cpu", flags) == base
    assert cache.key(MODULE.replace("add", "multiply"), "cpu", flags) != base
    assert cache.key(MODULE, "cuda", flags) != base
    assert cache.key(MODULE, "cpu", (*flags, "--iree-opt-level=O3")) != base
    assert "3." in cache.compiler_version()


def test_the_key_holds_the_cpu_that_host_resolves_to(monkeypatch):
    """The key held the literal flag --iree-llvmcpu-target-cpu=host: a cache shared between machines (a cluster's
    home folder, a CI cache) gave a module built for another CPU's instructions ("Illegal instruction")."""
    flags, cuda_flags = cache.target_flags("cpu"), cache.target_flags("cuda")
    keys = []
    for description in ["x86_64 model name: AMD EPYC flags: avx2 avx512f", "x86_64 model name: Intel Xeon flags: avx2"]:
        monkeypatch.setattr(cache, "describe_cpu", lambda description=description: description, raising=False)
        monkeypatch.setattr(cache, "_host_cpu", None, raising=False)
        keys.append((cache.key(MODULE, "cpu", flags), cache.key(MODULE, "cuda", cuda_flags)))
    assert keys[0][0] != keys[1][0]  # another CPU, another module
    assert keys[0][1] == keys[1][1]  # (a cuda module does not depend on the host's CPU)


def test_the_cpu_description_names_the_cpu_and_nothing_that_changes():
    description = cache.describe_cpu()
    assert description == cache.describe_cpu() and description.split("\n")[1] == platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        assert re.search(r"^(flags|Features|isa|cpu)\s*:", description, re.MULTILINE), description
        assert not re.search(r"MHz|bogomips|microcode", description, re.IGNORECASE)


# A machine with another CPU (pretended: its description) compiles for that CPU (Sapphire Rapids: AVX512-FP16, AMX)
# into the shared cache, without running it; then this machine runs the same program.
ANOTHER_MACHINE = """
from slope_iree import cache
cache.describe_cpu = lambda: "x86_64 model name: Intel Xeon Platinum 8480+ flags: avx512fp16 amx_tile amx_bf16"
cache._host_cpu = None
_compile = cache._compile
cache._compile = lambda mlir, backend, flags: _compile(
    mlir, backend, tuple(flag.replace("target-cpu=host", "target-cpu=sapphirerapids") for flag in flags))
"""
HALF_PRECISION_PROGRAM = """
import numpy as np, slope
from slope_iree import cache
slope.set_backend("iree")
a = slope.tensor(np.linspace(0, 1, 64 * 64, dtype=np.float16).reshape(64, 64))
f = slope.jit(lambda a, b: ((a * b + a) @ b).sum(0))
if "{run}" == "yes":
    print(float(f(a, a).numpy().astype(np.float64).sum()), cache.stats["read"])
else:
    f.lower(a, a)  # compiled and loaded, not run
"""


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="compiles for an x86 CPU")
def test_a_cache_shared_with_a_machine_of_another_cpu_is_not_read(cache_dir):
    env = {**os.environ, "SLOPE_CACHE_DIR": str(cache_dir)}
    other = ANOTHER_MACHINE + HALF_PRECISION_PROGRAM.format(run="no")
    subprocess.run([sys.executable, "-c", other], env=env, check=True, timeout=300)
    assert len(cached_files(cache_dir)) == 1
    here = subprocess.run([sys.executable, "-c", HALF_PRECISION_PROGRAM.format(run="yes")], env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert here.returncode == 0, here.stderr[-2000:]  # it read the other's module: -4 (SIGILL) on a CPU without AMX
    total, read = here.stdout.split()
    a = np.linspace(0, 1, 64 * 64, dtype=np.float16).reshape(64, 64).astype(np.float64)
    np.testing.assert_allclose(float(total), ((a * a + a) @ a).sum(), rtol=1e-2)  # (float16 products and sums)
    assert read == "0" and len(cached_files(cache_dir)) == 2


def test_cuda_target_default_and_override(monkeypatch):
    assert "--iree-cuda-target=sm_80" in cache.target_flags("cuda")
    monkeypatch.setenv("SLOPE_IREE_CUDA_TARGET", "sm_86")
    assert "--iree-cuda-target=sm_86" in cache.target_flags("cuda")
    with pytest.raises(Exception, match="no compile target 'tpu'"):
        cache.target_flags("tpu")


def test_several_processes_fill_the_cache_at_once(cache_dir):
    code = "import sys; from slope_iree import cache; sys.stdout.write(str(len(cache.compile_mlir(sys.argv[1]))))"
    env = {**os.environ, "SLOPE_CACHE_DIR": str(cache_dir)}
    processes = [subprocess.Popen([sys.executable, "-c", code, MODULE], env=env, stdout=subprocess.PIPE)
                 for _ in range(3)]  # fmt: skip
    sizes = {process.communicate(timeout=300)[0] for process in processes}
    assert all(process.returncode == 0 for process in processes)
    assert len(sizes) == 1
    files = cached_files(cache_dir)
    assert len(files) == 1 and not any(name.endswith(".tmp") for name in files)  # renamed into place, nothing left
    assert os.path.getsize(cache_dir / files[0]) == int(sizes.pop())


def run_in_new_process(monkeypatch) -> list:
    """MODULE's result for [1, 2, 3], loaded as a new process would: nothing in memory, the module from the cache."""
    cache.clear_memory()
    monkeypatch.setattr(runtime, "_modules", weakref.WeakValueDictionary())
    main = runtime.function(MODULE, "cpu", 1)
    return runtime.to_numpy(main([runtime.from_numpy(np.array([1, 2, 3], np.float32), "cpu")])[0]).tolist()


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_damaged_file_is_compiled_again_and_rewritten(cache_dir, monkeypatch, damage):
    assert run_in_new_process(monkeypatch) == [2, 4, 6]
    (name,) = cached_files(cache_dir)
    path = cache_dir / name
    module = path.read_bytes()
    path.write_bytes(module[: len(module) // 2] if damage == "truncated" else os.urandom(len(module)))
    with pytest.warns(RuntimeWarning, match=f"cache file '{re.escape(str(path))}' does not load.*compiling it again"):
        assert run_in_new_process(monkeypatch) == [2, 4, 6]
    assert path.read_bytes() == module  # rewritten: the next process reads it back without a warning
    assert run_in_new_process(monkeypatch) == [2, 4, 6] and cache.read_from(MODULE) == str(path)


def test_a_module_just_compiled_that_does_not_load_is_an_error(cache_dir, monkeypatch):
    compiles = []

    def garbage(*args):
        compiles.append(args)
        return b"not a module"

    monkeypatch.setattr(cache, "_compile", garbage)
    with pytest.raises(ValueError):
        run_in_new_process(monkeypatch)
    assert len(compiles) == 1  # no second compile
    with pytest.warns(RuntimeWarning, match="does not load"), pytest.raises(ValueError):
        run_in_new_process(monkeypatch)  # read from disk: compiled once more, then an error, no loop
    assert len(compiles) == 2


def test_programs_dropped_from_the_jit_cache_free_their_modules(monkeypatch):
    """Every distinct program stayed loaded (runtime._modules) and its bytes in memory (cache._memory) until the
    process ended, whatever the jit cache dropped: ~85 MB per 1,000 programs. Now a module lives as long as a program
    using it, and memory keeps the bytes of the last MEMORY_MODULES; a dropped program called again is read back."""
    import slope

    monkeypatch.setattr(slope.backend, "JIT_CACHE_SIZE", 4)
    x = np.arange(3, dtype=np.float32)
    with slope.use_backend("iree"):
        scale = slope.jit(lambda a, k: a * k, static_argnums=1)
        tensor = slope.tensor(x)
        gc.collect()
        before = set(runtime._modules.keys())
        for k in range(50):  # 50 distinct programs (a static argument), 4 of them in the jit cache
            np.testing.assert_array_equal(scale(tensor, float(k) + 0.5).numpy(), x * (k + 0.5))
        gc.collect()
        assert len(set(runtime._modules.keys()) - before) <= 4
        assert len(cache._memory) <= cache.MEMORY_MODULES
        cache.clear_memory()
        read = cache.stats["read"] + cache.stats["compiled"]
        np.testing.assert_array_equal(scale(tensor, 0.5).numpy(), x * 0.5)  # dropped: its module from disk again
        assert cache.stats["read"] + cache.stats["compiled"] == read + 1


def test_an_unwritable_cache_warns_and_still_compiles(cache_dir, monkeypatch):
    blocked = cache_dir / "file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("SLOPE_CACHE_DIR", str(blocked))
    monkeypatch.setattr(cache, "_warned", [])
    with pytest.warns(RuntimeWarning, match="cannot write the iree compile cache"):
        assert cache.compile_mlir(MODULE, "cpu")


def test_a_compiler_error_is_a_backend_error(cache_dir):
    import slope

    with pytest.raises(slope.SlopeBackendError, match="IREE compiler rejected"):
        cache.compile_mlir("func.func @main(%a: tensor<3xf32>) -> tensor<3xf32> { return %b : tensor<3xf32> }")


def slope_command(cache_root, *args: str, prelude: str = "", cwd=None, **env: str) -> subprocess.CompletedProcess:
    """`slope ARGS` in a new process with SLOPE_CACHE_DIR=cache_root (and `prelude` run first), in folder cwd."""
    code = prelude + "import sys; from slope.cli import main; sys.exit(main(sys.argv[1:]))"
    environment = {**os.environ, "SLOPE_CACHE_DIR": str(cache_root), **env}
    return subprocess.run([sys.executable, "-c", code, *args], env=environment, capture_output=True, text=True, cwd=cwd)


def test_slope_cache_shows_and_clears_only_its_own_files(cache_dir):
    """`slope cache clear` ran rmtree($SLOPE_CACHE_DIR/<name>) for every installed backend's name: with
    SLOPE_CACHE_DIR=project, project/numpy/src was deleted. Only the iree cache's own files go now."""
    cache.compile_mlir(MODULE, "cpu")
    keep = ["numpy/src/important.py", "onnxruntime/model.onnx", "iree/notes.txt", "unrelated/keep.txt"]
    for name in keep:
        (cache_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (cache_dir / name).write_text("not a cache")
    shown = slope_command(cache_dir, "cache")
    assert shown.returncode == 0 and shown.stdout.startswith(f"iree compile cache {cache_dir / 'iree'}: 1 files, ")
    assert re.search(r": 1 files, \d+ KB\n$", shown.stdout), shown.stdout  # a module is ~20 KB: not "0.0 MB"
    assert "numpy" not in shown.stdout and "onnxruntime" not in shown.stdout  # backend names are no caches
    cleared = slope_command(cache_dir, "cache", "clear")
    assert cleared.returncode == 0 and cleared.stdout.endswith(" KB, deleted\n"), cleared.stdout + cleared.stderr
    assert not [name for name in cached_files(cache_dir) if name.endswith(".vmfb")]
    assert all((cache_dir / name).read_text() == "not a cache" for name in keep)
    after = slope_command(cache_dir, "cache")
    assert after.stdout == f"iree compile cache {cache_dir / 'iree'}: empty\n"


def test_sizes_are_shown_in_units_people_read():
    from slope_iree.plugin import size_text

    assert [size_text(n) for n in (0, 512, 48_000, 23_456, 1_500_000, 12_345_678, 3 * 10**9)] == [
        "0 bytes", "512 bytes", "48 KB", "23 KB", "1.5 MB", "12 MB", "3.0 GB"]  # fmt: skip


def test_slope_cache_clear_reports_what_it_could_not_delete(cache_dir):
    """A cache it cannot delete (another user's, read-only) was reported "(cleared)" with exit status 0."""
    cache.compile_mlir(MODULE, "cpu")
    (name,) = cached_files(cache_dir)
    folder = (cache_dir / name).parent
    prelude = ""
    if getattr(os, "geteuid", lambda: 1)() == 0:  # root deletes files of read-only folders: the refusal is simulated
        prelude = (
            "import errno, os\n"
            "def refuse(path, *args, **kwargs):\n"
            "    raise PermissionError(errno.EACCES, 'Permission denied', path)\n"
            "os.remove = os.unlink = os.rmdir = refuse\n"
        )
    folder.chmod(0o555)
    try:
        cleared = slope_command(cache_dir, "cache", "clear", prelude=prelude)
    finally:
        folder.chmod(0o755)
    assert cleared.returncode == 1 and "deleted" not in cleared.stdout
    assert "could not delete 1 of the 1 files" in cleared.stderr
    assert f"{cache_dir / name}: Permission denied" in cleared.stderr
    assert (cache_dir / name).exists()


def test_slope_cache_dir_expands_home_and_a_relative_one_stays_put(tmp_path):
    """SLOPE_CACHE_DIR='~/x' made a folder named '~' in the current one; a relative folder followed os.chdir."""
    (tmp_path / "home").mkdir()
    (tmp_path / "work" / "elsewhere").mkdir(parents=True)
    other = MODULE.replace("add", "multiply")
    code = (
        "import os, sys; from slope_iree import cache\n"
        "cache.compile_mlir(sys.argv[1]); os.chdir('elsewhere'); cache.compile_mlir(sys.argv[2])"
    )
    for folder, where in [("~/c", tmp_path / "home" / "c"), ("rel", tmp_path / "work" / "rel")]:
        env = {**os.environ, "SLOPE_CACHE_DIR": folder, "HOME": str(tmp_path / "home")}
        subprocess.run([sys.executable, "-c", code, MODULE, other], env=env, cwd=tmp_path / "work", check=True)
        assert len(cached_files(where)) == 2, cached_files(tmp_path)
        shown = slope_command(folder, "cache", cwd=tmp_path / "work", HOME=str(tmp_path / "home"))
        assert shown.stdout.startswith(f"iree compile cache {where / 'iree'}: 2 files")
    assert not (tmp_path / "work" / "~").exists() and not (tmp_path / "work" / "elsewhere" / "rel").exists()


@pytest.mark.parametrize("value", ["0", "false", "No", "OFF"])
def test_the_disk_cache_turns_off_with_any_false_flag(cache_dir, monkeypatch, value):
    """SLOPE_IREE_DISK_CACHE=false (or no, off) kept the cache on: only "0" and "" turned it off."""
    monkeypatch.setenv("SLOPE_IREE_DISK_CACHE", value)
    assert cache.compile_mlir(MODULE, "cpu")
    assert cached_files(cache_dir) == []


def test_bad_iree_settings_are_errors_naming_the_choices(cache_dir, monkeypatch):
    """SLOPE_IREE_DRIVER=bogus was ignored (the timing chose), SLOPE_IREE_DISK_CACHE=maybe meant on."""
    import slope

    monkeypatch.setenv("SLOPE_IREE_DRIVER", "bogus")
    with pytest.raises(
        slope.errors.SlopeConfigError, match=r"SLOPE_IREE_DRIVER='bogus': expected one of local-sync, l"
    ):
        runtime.function(MODULE, "cpu", 1)
    monkeypatch.setenv("SLOPE_IREE_DRIVER", "Local-Task")
    assert runtime.function(MODULE, "cpu", 1)
    monkeypatch.setenv("SLOPE_IREE_DISK_CACHE", "maybe")
    with pytest.raises(slope.errors.SlopeConfigError, match=r"SLOPE_IREE_DISK_CACHE='maybe': expected 1/true/yes/on"):
        cache.compile_mlir(MODULE.replace("add", "subtract"), "cpu")
