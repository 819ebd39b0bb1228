"""The `slope` command: `slope info [-v] [--json]` lists plugins, backends, devices and operator coverage."""

from __future__ import annotations

import argparse
import json
import sys
from importlib.metadata import version

from slope import plugins


def report() -> dict:
    """What `slope info` shows, as data: plugins (with their problems), backends (devices, coverage), functions."""
    import slope

    data: dict = {"slope": slope.__version__, "python": sys.version.split()[0], "default": None, "backends": {}}
    versions = plugins.plugin_versions()  # (a plugin that failed to load has problems but no version)
    data["plugins"] = {name: {"version": versions.get(name), "problems": plugins.failed.get(name, [])}
                       for name in sorted({**versions, **plugins.failed})}  # fmt: skip
    for kind, registry in (("operators", plugins.operators), ("procedures", plugins.procedures)):
        data[kind] = {name: plugins.owners[("function", name)] for name in sorted(registry)}
    try:
        data["default"] = slope.get_backend().name
    except Exception as error:  # none installed, or SLOPE_BACKEND names a missing or broken one: `slope info` says so
        data["default_error"] = f"{type(error).__name__}: {error}"
    for name in sorted(plugins.backends):
        entry = data["backends"][name] = {"plugin": plugins.owners[("backend", name)]}
        try:
            backend = slope.get_backend(name)
            entry["devices"] = backend.devices()
        except Exception as error:  # a broken backend is reported, not fatal
            entry["error"] = f"{type(error).__name__}: {error}"
            continue
        native = entry["native"] = [op for op in data["operators"] if op in backend.translations]
        entry["by_procedure"] = [op for op in data["operators"] if op not in native and plugins.operators[op].procedure]
        entry["unavailable"] = [op for op in data["operators"] if op not in native + entry["by_procedure"]]
    return data


def info(verbose: bool = False, data: dict | None = None) -> str:
    """`slope info` as text (from `report()`); `verbose`: also every operator and procedure with its plugin."""
    data = data or report()
    lines = [f"slope {data['slope']} (Python {data['python']})", "", "plugins:"]
    for name, plugin in data["plugins"].items():
        loaded, problems = plugin["version"] is not None, plugin["problems"]
        lines.append(f"  {name} {plugin['version']}" if loaded else f"  {name} FAILED: {problems[0]}")
        lines += [f"    skipped: {problem}" for problem in problems if loaded]
    lines += ["", "backends:"]
    for name, entry in data["backends"].items():
        if "error" in entry:
            lines.append(f"  {name}: unavailable ({entry['error']})")
            continue
        default = " (default)" if name == data["default"] else ""
        lines.append(f"  {name}{default}: devices {', '.join(entry['devices'])} (plugin {entry['plugin']})")
        for kind in ("native", "by_procedure", "unavailable"):
            if entry[kind] or kind != "unavailable":
                lines.append(f"    {kind.replace('_', ' ')} ({len(entry[kind])}): {' '.join(entry[kind])}")
    lines += [f"  no default backend: {data['default_error']}"] if "default_error" in data else []
    lines += ["", f"operators: {len(data['operators'])}, procedures: {len(data['procedures'])}"]
    for kind in ("operators", "procedures") if verbose else ():
        lines += ["", f"{kind}:", *(f"  {name} (plugin {plugin})" for name, plugin in data[kind].items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `slope` command; `slope info` exits 1 when the default backend is not usable."""
    parser = argparse.ArgumentParser(prog="slope", description="Slope: automatic differentiation for ML")
    parser.add_argument("--version", action="version", version=f"slope {version('slope-core')}")
    sub = parser.add_subparsers(dest="command")
    info_parser = sub.add_parser("info", help="list plugins, backends, devices and operator coverage")
    info_parser.add_argument("-v", "--verbose", action="store_true", help="also list every operator and procedure")
    info_parser.add_argument("--json", action="store_true", help="print the report as JSON, for tools")
    list(plugins.results("slope_commands", subparsers=sub))  # a subcommand sets `run` (slope-iree's `cache`)
    args = parser.parse_args(argv)
    if hasattr(args, "run"):
        return args.run(args)
    if args.command == "info":
        data = report()
        print(json.dumps(data, indent=2) if args.json else info(args.verbose, data))
        return 0 if "devices" in data["backends"].get(data["default"], {}) else 1  # (none, or broken)
    parser.print_help()
    return 1
