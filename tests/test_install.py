"""The distributions install (issue 12, point 9): `tools/build_wheels.py` builds every wheel, and
`pip install --find-links dist "slope-core[EXTRA]"` into a fresh virtual environment gives a Slope that computes a
gradient and runs a jitted function there.

To stay fast and offline, the fresh environments see this environment's third-party packages (NumPy, onnx,
onnxruntime, ...) through a folder of links that leaves out every Slope distribution, and pip installs with
`--no-index`: it must resolve each extra's requirements (markers, version bounds) against what is there and install
our wheels from dist/ alone. Deselect with `-m "not install"`.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import build_wheels  # noqa: E402

pytestmark = pytest.mark.install

EXTRAS = {  # extra -> the backends it must provide
    "numpy": ["numpy"],
    "onnx": ["onnxruntime"],
    "nn": ["onnxruntime"],
    "all": ["numpy", "onnxruntime"],
    "testing": [],  # the conformance kit alone: no backend
    "distributed": ["onnxruntime"],
}
if (ROOT / "packages" / "slope-iree").is_dir():
    EXTRAS["iree"] = ["iree"]
    EXTRAS["all"].append("iree")

CHECK = """
import json, sys
import slope
assert "site-packages" in slope.__file__, slope.__file__  # the installed wheel, not the source tree
results = {}
for name in sorted(slope.plugins.backends):
    with slope.use_backend(name):
        x = slope.tensor([1.0, 2.0, 3.0])
        grad = slope.grad(lambda x: (x * x * x).sum())(x).tolist()
        jitted = slope.jit(lambda x: (x * 2.0).exp().sum())(x).item()
        results[name] = [grad, jitted]
nn = slope.nn.Linear(3, 2) if WITH_NN else None
if WITH_TESTING:
    import slope.testing
    assert slope.testing.ROWS
if WITH_DISTRIBUTED:
    import slope.distributed as dist
    dist.init("local")  # (mpich's libmpi sits in the environment's lib/, outside the linked site-packages)
    assert dist.all_reduce([slope.ones(2)], op="mean")[0].tolist() == [1.0, 1.0] and dist.world_size() == 1
print(json.dumps({"version": slope.__version__, "results": results, "nn": nn is not None}))
"""


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> Path:
    """dist/ of a fresh build (with the installed setuptools when it is new enough, as CI's is)."""
    out = tmp_path_factory.mktemp("dist")
    try:
        import setuptools

        isolation = int(setuptools.__version__.split(".")[0]) < 77
    except ImportError:
        isolation = True
    built = build_wheels.build(out, isolation=isolation)
    assert sorted(path.name.split("-")[0] for path in built) == sorted(
        path.name.replace("-", "_") for path in build_wheels.distributions()
    )
    return out


@pytest.fixture(scope="module")
def third_party(tmp_path_factory) -> Path:
    """A folder of links to this environment's installed packages, every Slope distribution left out."""
    folder = tmp_path_factory.mktemp("third_party")
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        name = entry.name.lower()
        if name.startswith(("slope", "__editable__", "__pycache__")) or name.endswith(".pth"):
            continue
        (folder / entry.name).symlink_to(entry)
    return folder


def test_pip_install_find_links_dist(wheels, third_party, tmp_path):
    """Each extra in its own fresh environment (one test, so that one worker builds the wheels once)."""
    import slope

    for extra in sorted(EXTRAS):
        report = _install_and_check(extra, wheels, third_party, tmp_path / extra)
        assert sorted(report["results"]) == sorted(EXTRAS[extra]), extra
        for grad, jitted in report["results"].values():
            assert grad == [3.0, 12.0, 27.0], extra
            assert jitted == pytest.approx(sum(math.exp(2 * v) for v in (1, 2, 3)), rel=1e-5), extra
        assert report["nn"] == (extra in ("nn", "all")), extra
        assert report["version"] == slope.__version__, extra


def _install_and_check(extra: str, wheels: Path, third_party: Path, folder: Path) -> dict:
    """`pip install --find-links WHEELS "slope-core[EXTRA]"` into a fresh environment; CHECK's report from there."""
    environment = folder / "venv"
    venv.EnvBuilder(with_pip=False).create(environment)
    python = environment / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    site = Path(subprocess.check_output([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        text=True).strip())  # fmt: skip
    (site / "third_party.pth").write_text(str(third_party) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_REQUIRE_VIRTUALENV")}
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-index",
               "--find-links", str(wheels), f"slope-core[{extra}]"]  # fmt: skip
    done = subprocess.run(install, capture_output=True, text=True, env=env, cwd=folder, timeout=300)
    assert done.returncode == 0, f"[{extra}] " + done.stdout + done.stderr
    code = CHECK.replace("WITH_NN", str(extra in ("nn", "all"))).replace("WITH_TESTING", str(extra == "testing"))
    code = code.replace("WITH_DISTRIBUTED", str(extra == "distributed"))
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, env=env, cwd=folder, timeout=300)
    assert done.returncode == 0, f"[{extra}] " + done.stdout + done.stderr
    return json.loads(done.stdout.splitlines()[-1])
