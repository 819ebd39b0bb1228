"""Registers the IREE backend with Slope (entry point `slope: iree`) and its `slope cache` command."""

import os
import shutil
from typing import Any

from slope.plugins import hookimpl


@hookimpl
def slope_backends() -> list:
    """The IREE backend."""
    from .backend import IreeBackend

    return [IreeBackend]


@hookimpl
def slope_commands(subparsers: Any) -> None:
    """`slope cache` shows the size of each backend's compile cache ($SLOPE_CACHE_DIR/<backend>); `clear` empties them."""
    parser = subparsers.add_parser("cache", help="show the compile caches' sizes; `slope cache clear` empties them")
    parser.add_argument("action", nargs="?", choices=["clear"])
    parser.set_defaults(run=_cache)


def _cache(args: Any) -> int:
    import slope

    clear = args.action == "clear"
    root = os.environ.get("SLOPE_CACHE_DIR") or os.path.expanduser("~/.cache/slope")  # as the backends read it
    print(f"compile caches in {root}" + (" (cleared)" if clear else ""))
    for folder in sorted(os.path.join(root, name) for name in slope.plugins.backends):  # (the folder may hold more)
        sizes = [os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files]
        print(f"  {os.path.basename(folder)}: {len(sizes)} files, {sum(sizes) / 1e6:.1f} MB")
        if clear:
            shutil.rmtree(folder, ignore_errors=True)
    return 0
