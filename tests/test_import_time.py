"""`import slope` stays light (issue 12, point 12): plugins are discovered, but a backend's libraries (onnx,
onnxruntime, iree) load when that backend is first used, and ml_dtypes when bfloat16 is first used."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

HEAVY = ("onnx", "onnxruntime", "ml_dtypes", "iree.runtime", "iree.compiler")


def _loaded_after(code: str, backend: str | None = None) -> dict:
    """Run `code` in a fresh interpreter; which HEAVY modules it had imported before and after."""
    script = (
        "import sys, json\n"
        "import slope\n"
        f"before = [m for m in {HEAVY!r} if m in sys.modules]\n"
        f"{code}\n"
        f"print(json.dumps({{'before': before, 'after': [m for m in {HEAVY!r} if m in sys.modules]}}))\n"
    )
    env = dict(os.environ, SLOPE_BACKEND=backend) if backend else None
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_import_slope_loads_no_backend_library():
    loaded = _loaded_after("assert slope.plugins.backends")
    assert loaded["before"] == [] and loaded["after"] == []


def test_the_onnxruntime_backend_loads_its_libraries_on_first_use():
    pytest.importorskip("slope_onnx")
    loaded = _loaded_after("assert (slope.tensor([1.0, 2.0]) * 2).tolist() == [2.0, 4.0]", "onnxruntime")
    assert loaded["before"] == [] and {"onnx", "onnxruntime"} <= set(loaded["after"])


def test_bfloat16_support_loads_when_bfloat16_is_first_used():
    pytest.importorskip("slope_numpy")
    pytest.importorskip("ml_dtypes")
    code = (
        "assert (slope.tensor([1.0, 2.0]) * 2).tolist() == [2.0, 4.0]\n"
        "assert 'ml_dtypes' not in sys.modules\n"
        "assert slope.bfloat16 in slope.get_backend().dtypes\n"
        "assert (slope.tensor([1.5, 2.0], dtype=slope.bfloat16) * 2).tolist() == [3.0, 4.0]"
    )
    loaded = _loaded_after(code, "numpy")
    assert loaded["before"] == [] and loaded["after"] == ["ml_dtypes"]
