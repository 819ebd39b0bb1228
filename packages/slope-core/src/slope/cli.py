"""The `slope` command: `slope info` lists plugins, backends, devices and operator coverage; `slope cache`."""

from __future__ import annotations

import argparse
import os
import shutil
import sys


def info() -> str:
    """A report of installed plugins, backends with their devices, and per-backend operator coverage."""
    import slope
    from slope import plugins

    lines = [f"slope {slope.__version__} (Python {sys.version.split()[0]})", "", "plugins:"]
    for name, version in sorted(plugins.plugin_versions().items()):
        lines.append(f"  {name} {version}")
    for name, error in sorted(plugins.failed.items()):
        lines.append(f"  {name} FAILED: {error}")
    lines += ["", "backends:"]
    operator_names = sorted(plugins.operators)
    for name in sorted(plugins.backends):
        try:
            backend = slope.get_backend(name)
            devices = ", ".join(backend.devices())
        except Exception as error:  # a broken backend is reported, not fatal
            lines.append(f"  {name}: unavailable ({type(error).__name__}: {error})")
            continue
        default = " (default)" if slope.get_backend().name == name else ""
        lines.append(f"  {name}{default}: devices {devices}")
        native = [op for op in operator_names if op in backend.translations]
        fallback = [op for op in operator_names if op not in backend.translations and plugins.operators[op].procedure]
        missing = [op for op in operator_names if op not in native and op not in fallback]
        lines.append(f"    native ({len(native)}): {' '.join(native)}")
        lines.append(f"    by procedure ({len(fallback)}): {' '.join(fallback)}")
        if missing:
            lines.append(f"    unavailable ({len(missing)}): {' '.join(missing)}")
    lines += ["", f"operators: {len(plugins.operators)}, procedures: {len(plugins.procedures)}"]
    return "\n".join(lines)


def cache(clear: bool = False) -> str:
    """The size of each backend's compile cache ($SLOPE_CACHE_DIR/<backend>); `clear` empties them."""
    from slope import plugins

    root = os.environ.get("SLOPE_CACHE_DIR") or os.path.expanduser("~/.cache/slope")  # as the backends read it
    lines = [f"compile caches in {root}" + (" (cleared)" if clear else "")]
    for folder in sorted(os.path.join(root, name) for name in plugins.backends):  # (SLOPE_CACHE_DIR may hold more)
        sizes = [os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files]
        lines.append(f"  {os.path.basename(folder)}: {len(sizes)} files, {sum(sizes) / 1e6:.1f} MB")
        if clear:
            shutil.rmtree(folder, ignore_errors=True)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `slope` command."""
    parser = argparse.ArgumentParser(prog="slope", description="Slope: automatic differentiation for ML")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("info", help="list plugins, backends, devices and operator coverage")
    cache_parser = sub.add_parser("cache", help="show the compile caches' sizes; `slope cache clear` empties them")
    cache_parser.add_argument("action", nargs="?", choices=["clear"])
    args = parser.parse_args(argv)
    if args.command in ("info", "cache"):
        print(info() if args.command == "info" else cache(args.action == "clear"))
        return 0
    parser.print_help()
    return 1
