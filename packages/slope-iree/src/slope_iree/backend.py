"""The IREE backend: each Program becomes one StableHLO module, compiled by iree-base-compiler for the CPU (llvm-cpu)
and run by iree-base-runtime; buffers are IREE DeviceArrays from creation to `.numpy()`.

The IREE libraries are imported on first use, not at `import slope`.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

import numpy as np

import slope
from slope import Backend, Executable, Program

from .translate import build_module, translations

# flags of every CPU compile: the host's instructions (a generic CPU is 2-3x slower and warns on each compile), and
# float64 kept as float64 (IREE demotes it to float32 by default)
CPU_FLAGS = ("--iree-hal-target-backends=llvm-cpu", "--iree-llvmcpu-target-cpu=host",
             "--iree-input-demote-f64-to-f32=false")  # fmt: skip


class IreeBackend(Backend):
    """Runs Programs as StableHLO modules compiled by IREE (llvm-cpu)."""

    name = "iree"
    translations = translations
    export_suffix = ".vmfb"
    dtypes = frozenset(
        [slope.float16, slope.bfloat16, slope.float32, slope.float64, slope.int8, slope.int16, slope.int32,
         slope.int64, slope.uint8, slope.bool_]
    )  # fmt: skip

    def __init__(self) -> None:
        super().__init__()
        self._config: Any = None
        self._lock = threading.Lock()
        self._modules: dict[str, Callable] = {}  # MLIR text -> loaded `main` (one compile per distinct module)

    def devices(self) -> list[str]:
        return ["cpu"]

    # ------------------------------------------------------------------------------------------- runtime
    @property
    def config(self) -> Any:
        """The IREE runtime configuration (instance and device), made on first use."""
        if self._config is None:
            import iree.runtime as runtime

            with self._lock:
                if self._config is None:
                    self._config = runtime.Config("local-sync")
        return self._config

    def from_numpy(self, array: np.ndarray, device: str) -> Any:
        """A DeviceArray holding a copy of the array."""
        import iree.runtime as runtime

        return runtime.asdevicearray(self.config.device, np.asarray(array, order="C"))

    def to_numpy(self, buffer: Any) -> np.ndarray:
        """A NumPy copy of a DeviceArray."""
        return np.array(buffer.to_host())

    # ------------------------------------------------------------------------------------------- compile
    def module_text(self, program: Program, embed_constants: bool = False) -> tuple[str, list]:
        """The StableHLO text of a lowered Program and its run-time checks (see translate.build_module)."""
        return build_module(program, self.translations, embed_constants, self.name)

    def compile_text(self, text: str, flags: tuple[str, ...] = CPU_FLAGS) -> bytes:
        """A compiled IREE module (.vmfb bytes) of StableHLO text."""
        import iree.compiler as compiler

        try:
            return compiler.compile_str(text, input_type="stablehlo", extra_args=list(flags))
        except compiler.CompilerToolError as error:
            raise slope.SlopeBackendError(f"slope: IREE could not compile the program:\n{error}\n{text}") from None

    def load(self, text: str) -> Callable:
        """The `main` function of a module, compiled once per distinct text."""
        main = self._modules.get(text)
        if main is None:
            import iree.runtime as runtime

            vmfb = self.compile_text(text)
            context = runtime.SystemContext(config=self.config)
            context.add_vm_module(runtime.VmModule.copy_buffer(context.instance, vmfb))
            main = self._modules.setdefault(text, context.modules.module["main"])
        return main

    def compile(self, program: Program, device: str) -> Executable:
        text, checks = self.module_text(program)
        count = len(program.outputs)
        if count == 0 and not checks:
            return Executable(lambda buffers: [], text, program)
        main = self.load(text)
        constants = [value.buffer if value.backend is self else self.from_numpy(value.numpy(), device)
                     for value in program.constant_values]  # fmt: skip

        def run(buffers: list) -> list:
            outs = main(*buffers, *constants)
            outs = list(outs) if isinstance(outs, tuple) else [outs]
            for (_, message), failed in zip(checks, outs[count:]):
                if failed.to_host():
                    raise IndexError(message)
            return outs[:count]

        return Executable(run, text, program)

    def export(self, program: Program, path: str, target: str = "cpu") -> list[str]:
        """Write `path.mlir` (the StableHLO, constants inside) and `path.vmfb` (compiled) that run without Slope."""
        for suffix in (".vmfb", ".mlir"):
            path = path.removesuffix(suffix)
        text, _ = self.module_text(program, embed_constants=True)
        with open(path + ".mlir", "w") as handle:
            handle.write(text)
        with open(path + ".vmfb", "wb") as handle:
            handle.write(self.compile_text(text))
        return [path + ".mlir", path + ".vmfb"]
