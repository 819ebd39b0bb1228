"""Start-up time: `import slope` and a first eager operation, beside `import torch` and `import jax`.

    .venv/bin/python benchmarks/import_time.py [--runs 5] [--only Slope]

Each statement runs as `python -c STATEMENT` in a fresh process, `--runs` times after one untimed warm-up run (so
the files are in the OS cache and the bytecode is compiled, as for a user's second start; PYTHONDONTWRITEBYTECODE is
dropped for that: an editable install compiles its sources on every start without the cache); the table gives the
median and the fastest wall-clock time of the whole process, interpreter start-up included (`pass` shows that part),
and the median CPU time (user + system) of the process, which a busy machine inflates less. PyTorch and JAX rows are
skipped when they are not installed. Acceptance (issue 12, with every Slope distribution installed): `import slope`
at most 0.3 s, `import slope; print(slope.tensor([1., 2.]) * 2)` at most 0.6 s. Exits with status 1 when one is
over. `python -X importtime -c "import slope"` shows where the time goes.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import subprocess
import sys
import time

SLOPE_IMPORT = "import slope"
SLOPE_FIRST_OP = "import slope; print(slope.tensor([1., 2.]) * 2)"
LIMITS = {SLOPE_IMPORT: 0.3, SLOPE_FIRST_OP: 0.6}

# (label, statement, module that must be installed, extra environment)
CASES = [
    ("interpreter start-up", "pass", None, {}),
    ("NumPy", "import numpy", "numpy", {}),
    ("Slope", SLOPE_IMPORT, "slope", {}),
    ("Slope, first op (default backend)", SLOPE_FIRST_OP, "slope", {}),
    ("Slope, first op (numpy backend)", SLOPE_FIRST_OP, "slope_numpy", {"SLOPE_BACKEND": "numpy"}),
    ("PyTorch", "import torch", "torch", {}),
    ("PyTorch, first op", "import torch; print(torch.tensor([1., 2.]) * 2)", "torch", {}),
    ("JAX", "import jax", "jax", {}),
    ("JAX, first op", "import jax.numpy as jnp; print(jnp.array([1., 2.]) * 2)", "jax", {}),
]


def _children_cpu() -> float:
    """CPU seconds (user + system) of this process's finished children; 0 where the OS does not say."""
    try:
        import resource
    except ImportError:  # Windows
        return 0.0
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(statement: str, env: dict[str, str]) -> tuple[float, float]:
    """Wall-clock and CPU seconds of one fresh `python -c statement`."""
    cpu, start = _children_cpu(), time.perf_counter()
    subprocess.run([sys.executable, "-c", statement], env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start, _children_cpu() - cpu


def measure(runs: int, only: str = "") -> list[tuple[str, str, float, float, float]]:
    """(label, statement, median, fastest, median CPU) for every case whose module is installed."""
    rows = []
    for label, statement, module, extra in CASES:
        if only not in label:
            continue
        if module is not None and importlib.util.find_spec(module) is None:
            print(f"{label}: skipped ({module} is not installed)", file=sys.stderr)
            continue
        env = {k: v for k, v in {**os.environ, **extra}.items() if k != "PYTHONDONTWRITEBYTECODE"}
        timed(statement, env)  # warm-up: OS file cache and bytecode
        times, cpus = zip(*(timed(statement, env) for _ in range(runs)))
        rows.append((label, statement, statistics.median(times), min(times), statistics.median(cpus)))
    return rows


def versions() -> str:
    """The versions that matter here."""
    from importlib.metadata import PackageNotFoundError, version

    found = [f"Python {platform.python_version()}"]
    for name in ("slope-core", "slope-numpy", "slope-onnx", "slope-nn", "slope-iree", "onnx", "onnxruntime-gpu",
                 "onnxruntime", "ml_dtypes", "numpy", "torch", "jax"):  # fmt: skip
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            pass
    return ", ".join(found)


def main(argv: list[str] | None = None) -> int:
    """Measure, print the table, check the acceptance limits."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed fresh processes per statement (default 5)")
    parser.add_argument("--only", default="", help="only the rows whose label contains this (e.g. Slope)")
    args = parser.parse_args(argv)
    rows = measure(args.runs, args.only)
    print(versions())
    print(f"median and fastest of {args.runs} fresh processes each\n")
    print("| what | statement | median | fastest | median CPU |")
    print("|---|---|---:|---:|---:|")
    failed = []
    for label, statement, median, fastest, cpu in rows:
        env = " (SLOPE_BACKEND=numpy)" if "numpy backend" in label else ""
        print(f"| {label} | `{statement}`{env} | {median:.3f} s | {fastest:.3f} s | {cpu:.3f} s |")
        limit = LIMITS.get(statement)
        if limit is not None and "numpy backend" not in label and median > limit:
            failed.append(f"{statement!r}: median {median:.3f} s > {limit} s")
    for line in failed:
        print(f"OVER THE LIMIT: {line}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
