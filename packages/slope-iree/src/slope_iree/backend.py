"""The IREE backend: each Program becomes one StableHLO module, compiled by iree-base-compiler (llvm-cpu; cuda where
IREE's CUDA driver loads), kept in the disk cache (cache.py) and run by iree-base-runtime (runtime.py); buffers are
IREE HalBufferViews on their device from creation to `.numpy()`. Elementwise programs (most eager calls) compile to
one shape-generic module (eager.py).

The IREE libraries are imported on first use, not at `import slope`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import slope
from slope import Backend, Executable, Program

from . import cache, eager, runtime, translate
from .simplify import sink_permutes
from .translate import build_module, translations


class IreeBackend(Backend):
    """Runs Programs as StableHLO modules compiled by IREE (llvm-cpu)."""

    name = "iree"
    translations = translations
    export_suffix = ".vmfb"
    # translate.Function.translate checks every translation's result against `infer` while building the module: no
    # probe compile per plugin translation (each would be an IREE compile)
    checks_translations = True
    dtypes = frozenset(
        [slope.float16, slope.bfloat16, slope.float32, slope.float64, slope.int8, slope.int16, slope.int32,
         slope.int64, slope.uint8, slope.bool_]
    )  # fmt: skip

    def devices(self) -> list[str]:
        return runtime.devices()

    # ------------------------------------------------------------------------------------------- runtime
    def from_numpy(self, array: np.ndarray, device: str) -> Any:
        """An IREE buffer view on the device holding a copy of the array."""
        return runtime.from_numpy(array, device)

    def to_numpy(self, buffer: Any) -> np.ndarray:
        """A NumPy copy of an IREE buffer view."""
        return runtime.to_numpy(buffer)

    # ------------------------------------------------------------------------------------------- compile
    def module_text(self, program: Program, embed_constants: bool = False) -> tuple[str, list]:
        """The StableHLO text of a lowered Program and its run-time checks (see translate.build_module), its
        permutes sunk toward its inputs first (simplify.py)."""
        return build_module(sink_permutes(program), self.translations, embed_constants, self.name)

    def compile_text(self, text: str, target: str = "cpu") -> bytes:
        """A compiled IREE module (.vmfb bytes) of StableHLO text, from the disk cache when it was compiled before."""
        return cache.compile_mlir(text, target)

    def compile(self, program: Program, device: str) -> Executable:
        count = len(program.outputs)
        shape = eager.elementwise_shape(program)
        main = None
        if shape is not None:  # one module for every shape (eager mode's common case)
            text, checks = "", []
            try:
                text = eager.generic_text(program, self.translations)
                if text not in eager.failed:
                    main = eager.reshaping(runtime.function(text, device, count), shape, runtime.iree())
            except (slope.SlopeBackendError, translate.NoTranslationError):  # no dynamic form: compiled per shape
                eager.failed.add(text)
        if main is None and (single := eager.single_run(program, self.translations, device)) is not None:
            run, code = single
            return Executable(run, code or self.module_text(program)[0], program)  # (no module: what it computes)
        if main is None:
            text, checks = self.module_text(program)
            if count == 0 and not checks:
                return Executable(lambda buffers: [], text, program)
            main = runtime.function(text, device, count + len(checks))
        constants = [value.buffer if value.backend is self and value.device == device
                     else self.from_numpy(value.numpy(), device) for value in program.constant_values]  # fmt: skip
        if not constants and not checks:
            return Executable(main, text, program)

        def run(buffers: list) -> list:
            outs = main([*buffers, *constants])
            for (_, message, error), failed in zip(checks, outs[count:]):
                if runtime.to_numpy(failed):
                    raise error(message)
            return outs[:count]

        return Executable(run, text, program)

    def export(self, program: Program, path: str, target: str = "cpu") -> list[str]:
        """Write `path.mlir` (the StableHLO, constants inside) and `path.vmfb` compiled for a target (cpu, cuda,
        vulkan; metal compiles only) that run without Slope. `main` returns the program's outputs, then one bool
        per check (x[index], .at[], gathers, slope-nn's checks of traced values: true where an index was out of range or
        a value failed, where Slope raises the check's error and the outputs are undefined)."""
        text, _ = self.module_text(program, embed_constants=True)
        return runtime.export(text, path, target)
