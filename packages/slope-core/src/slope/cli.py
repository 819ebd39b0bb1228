"""The `slope` command: `slope info [-v]` lists plugins, backends, devices and operator coverage."""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import version

from slope import plugins


def info(verbose: bool = False) -> str:
    """Installed plugins (with their problems), backends with their devices and coverage; `verbose`: every function."""
    import slope

    lines = [f"slope {slope.__version__} (Python {sys.version.split()[0]})", "", "plugins:"]
    versions = plugins.plugin_versions()  # (a plugin that failed to load has problems but no version)
    for name in sorted({**versions, **plugins.failed}):
        problems = plugins.failed.get(name, [])
        lines.append(f"  {name} {versions[name]}" if name in versions else f"  {name} FAILED: {problems[0]}")
        lines += [f"    skipped: {problem}" for problem in problems if name in versions]
    lines += ["", "backends:"]
    operators = sorted(plugins.operators)
    for name in sorted(plugins.backends):
        try:
            backend = slope.get_backend(name)
            devices = ", ".join(backend.devices())
        except Exception as error:  # a broken backend is reported, not fatal
            lines.append(f"  {name}: unavailable ({type(error).__name__}: {error})")
            continue
        default = " (default)" if slope.get_backend().name == name else ""
        lines.append(f"  {name}{default}: devices {devices} (plugin {plugins.owners[('backend', name)]})")
        native = [op for op in operators if op in backend.translations]
        fallback = [op for op in operators if op not in native and plugins.operators[op].procedure]
        missing = [op for op in operators if op not in native and op not in fallback]
        for kind, names in (("native", native), ("by procedure", fallback), ("unavailable", missing)):
            if names or kind != "unavailable":
                lines.append(f"    {kind} ({len(names)}): {' '.join(names)}")
    lines += ["", f"operators: {len(plugins.operators)}, procedures: {len(plugins.procedures)}"]
    for kind, registry in (("operators", plugins.operators), ("procedures", plugins.procedures)) if verbose else ():
        lines += ["", f"{kind}:", *(f"  {n} (plugin {plugins.owners[('function', n)]})" for n in sorted(registry))]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `slope` command; `slope info` exits 1 when no backend is usable."""
    parser = argparse.ArgumentParser(prog="slope", description="Slope: automatic differentiation for ML")
    parser.add_argument("--version", action="version", version=f"slope {version('slope-core')}")
    sub = parser.add_subparsers(dest="command")
    info_parser = sub.add_parser("info", help="list plugins, backends, devices and operator coverage")
    info_parser.add_argument("-v", "--verbose", action="store_true", help="also list every operator and procedure")
    plugins.manager.hook.slope_commands(subparsers=sub)  # a plugin's subcommand sets `run` (slope-iree's `cache`)
    args = parser.parse_args(argv)
    if hasattr(args, "run"):
        return args.run(args)
    if args.command == "info":
        text = info(args.verbose)
        print(text)
        return 0 if " (default): devices" in text else 1  # only a usable default backend is marked
    parser.print_help()
    return 1
