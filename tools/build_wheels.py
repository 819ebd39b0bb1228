"""Build the wheel of every Slope distribution (each folder of packages/) into dist/.

    python tools/build_wheels.py            # then: pip install --find-links dist "slope-core[all]"

Each package is built from a temporary copy, so the source tree gets no build/ or egg-info folders. Older Slope
wheels in the output folder are removed first, so `--find-links` sees only this build. Needs pip (it runs
`pip wheel --no-deps`); `--no-build-isolation` builds with the setuptools already installed (77 or newer) instead of
fetching one into a fresh environment per package, which is faster and works offline.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def distributions() -> list[Path]:
    """The folders of packages/ that hold a distribution."""
    return sorted(path.parent for path in (ROOT / "packages").glob("*/pyproject.toml"))


def build(out: Path, isolation: bool = True) -> list[Path]:
    """Build every distribution's wheel into `out`; returns the wheels."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("slope_*.whl"):
        old.unlink()
    with tempfile.TemporaryDirectory(prefix="slope-build-") as scratch:
        copies = []
        for package in distributions():
            copy = Path(scratch) / package.name
            shutil.copytree(package, copy, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", "tests"))
            copies.append(str(copy))
        command = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(out), *copies]
        if not isolation:
            command.insert(4, "--no-build-isolation")
        subprocess.run(command, check=True)
    return sorted(out.glob("slope_*.whl"))


def main(argv: list[str] | None = None) -> int:
    """Command line: build the wheels and list them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist", help="output folder (default: dist/)")
    parser.add_argument("--no-build-isolation", action="store_true", help="build with the installed setuptools")
    args = parser.parse_args(argv)
    for wheel in build(args.out, isolation=not args.no_build_isolation):
        print(wheel)
    return 0


if __name__ == "__main__":
    sys.exit(main())
