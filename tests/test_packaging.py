"""Every distribution's metadata (issue 12, point 10): the MIT license as an SPDX expression with its file, one
version for all of them, read from each package's `__version__`, bounds between our packages that admit it, and
READMEs that stand alone (they are the distributions' descriptions on an index, where relative links break)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")
requirements = pytest.importorskip("packaging.requirements")
specifiers = pytest.importorskip("packaging.specifiers")

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = sorted(path.parent for path in (ROOT / "packages").glob("*/pyproject.toml"))
OURS = {package.name for package in PACKAGES}


def project(package: Path) -> dict:
    return tomllib.loads((package / "pyproject.toml").read_text())


def version_of(package: Path) -> str:
    """The `__version__` literal that the pyproject names as the version's one source."""
    data = project(package)
    assert data["project"]["dynamic"] == ["version"] and "version" not in data["project"], package.name
    module = data["tool"]["setuptools"]["dynamic"]["version"]["attr"].rsplit(".", 1)[0]
    init = package / "src" / module.replace(".", "/") / "__init__.py"
    found = re.findall(r'^__version__ = "([^"]+)"$', init.read_text(), flags=re.M)
    assert len(found) == 1, init
    return found[0]


def test_one_version_for_every_distribution_and_bounds_that_admit_it():
    import slope

    versions = {package.name: version_of(package) for package in PACKAGES}
    assert set(versions.values()) == {slope.__version__}, versions
    for package in PACKAGES:
        data = project(package)["project"]
        listed = data.get("dependencies", []) + sum(data.get("optional-dependencies", {}).values(), [])
        for text in listed:
            requirement = requirements.Requirement(text)
            if requirement.name in OURS:
                assert requirement.specifier, f"{package.name}: {text} has no version bound"
                assert slope.__version__ in requirement.specifier, f"{package.name}: {text}"


def test_license_is_an_spdx_expression_with_its_file():
    license_text = (ROOT / "LICENSE").read_text()
    assert license_text.startswith("MIT License") and "the Slope authors" in license_text
    for package in PACKAGES:
        data = project(package)
        assert data["project"]["license"] == "MIT" and data["project"]["license-files"] == ["LICENSE"], package.name
        assert (package / "LICENSE").read_text() == license_text, package.name
        assert int(re.search(r"setuptools>=(\d+)", data["build-system"]["requires"][0]).group(1)) >= 77


def test_readmes_stand_alone():
    for package in PACKAGES:
        assert project(package)["project"]["readme"] == "README.md"
        text = (package / "README.md").read_text()
        for target in re.findall(r"\]\(([^)]+)\)", text):
            assert target.startswith("https://"), f"{package.name}/README.md links to {target!r}"
        assert "repository README" not in text, package.name


def test_onnxruntime_bound_is_the_oldest_that_passes_conformance():
    # `onnxruntime(-gpu)>=1.20` let pip install releases that fail the conformance matrix (1.20.1: no
    # OrtValue.from_dlpack; 1.21-1.30: NOT_IMPLEMENTED kernels such as Cos(7) double and Where(16) int8), e.g.
    # onnxruntime-gpu 1.23.2 on Python 3.10, for which 1.31 has no wheels (it requires Python >= 3.11)
    data = project(ROOT / "packages" / "slope-onnx")["project"]
    runtimes = [requirements.Requirement(text) for text in data["dependencies"]]
    runtimes = [r for r in runtimes if r.name in ("onnxruntime", "onnxruntime-gpu")]
    assert sorted(r.name for r in runtimes) == ["onnxruntime", "onnxruntime-gpu"]
    for requirement in runtimes:
        assert "1.31.0" in requirement.specifier and "1.30.0" not in requirement.specifier, str(requirement)
    python = specifiers.SpecifierSet(data["requires-python"])
    assert "3.10" not in python and "3.11" in python, data["requires-python"]


def test_ml_dtypes_required_where_used_unconditionally():
    # slope-nn (checkpoints, RMSNorm's eps) imports ml_dtypes on every backend but did not require it: a
    # `slope-core[numpy]` + slope-nn install failed with ModuleNotFoundError
    bounds = {}
    for name in ("slope-nn", "slope-onnx", "slope-iree"):
        if not (ROOT / "packages" / name).is_dir():  # (slope-iree may be left out of a checkout)
            continue
        listed = [
            requirements.Requirement(text) for text in project(ROOT / "packages" / name)["project"]["dependencies"]
        ]
        bounds[name] = [str(r.specifier) for r in listed if r.name == "ml_dtypes"]
    assert all(len(bound) == 1 for bound in bounds.values()), bounds
    assert len({bound[0] for bound in bounds.values()}) == 1, bounds  # one bound everywhere
