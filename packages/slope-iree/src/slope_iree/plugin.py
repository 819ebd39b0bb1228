"""Registers the IREE backend with Slope (entry point `slope: iree`) and its `slope cache` command."""

import contextlib
import os
import sys
from typing import Any

from slope.plugins import hookimpl


@hookimpl
def slope_backends() -> list:
    """The IREE backend."""
    from .backend import IreeBackend

    return [IreeBackend]


@hookimpl
def slope_commands(subparsers: Any) -> None:
    """`slope cache` shows the iree compile cache's size ($SLOPE_CACHE_DIR/iree); `slope cache clear` deletes it."""
    parser = subparsers.add_parser("cache", help="show the iree compile cache's size; `slope cache clear` deletes it")
    parser.add_argument("action", nargs="?", choices=["clear"])
    parser.set_defaults(run=_cache)


def _cache(args: Any) -> int:
    from . import cache

    folder = cache.directory()
    try:
        files = cache.own_files()
    except OSError as error:
        print(f"slope cache: cannot read the iree compile cache {folder}: {error}", file=sys.stderr)
        return 1
    sizes = []
    for path in files:
        with contextlib.suppress(OSError):  # (gone meanwhile)
            sizes.append(os.path.getsize(path))
    shown = f"iree compile cache {folder}: {len(files)} files, {size_text(sum(sizes))}" if files else (
        f"iree compile cache {folder}: empty")  # fmt: skip
    if args.action != "clear" or not files:
        print(shown)
        return 0
    left = cache.clear_disk()
    if not left:
        print(f"{shown}, deleted")
        return 0
    print(shown)
    print(f"slope cache clear: could not delete {len(left)} of the {len(files)} files:", *left[:5],
          *(["..."] if len(left) > 5 else []), sep="\n  ", file=sys.stderr)  # fmt: skip
    return 1


def size_text(nbytes: float) -> str:
    """A size as people read it: 512 bytes, 48 KB, 3.5 MB, 12 GB (powers of 1,000)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if nbytes >= scale:
            value = nbytes / scale
            return f"{value:.1f} {unit}" if value < 9.95 else f"{value:.0f} {unit}"
    return f"{int(nbytes)} bytes"
