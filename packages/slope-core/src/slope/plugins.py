"""The plugin host: pluggy hook specs, entry-point discovery, the registries hooks fill (see "Writing a plugin")."""

from __future__ import annotations

import os
import sys
import threading
import warnings
from functools import partial
from importlib.metadata import entry_points
from importlib.metadata import version as distribution_version
from typing import Any, Callable, Iterator

import pluggy

from .errors import SlopePluginError, SlopePluginWarning, env
from .tensors import Tensor, functions

hookspec, hookimpl = pluggy.HookspecMarker("slope"), pluggy.HookimplMarker("slope")


class HookSpecs:
    """The hooks a Slope plugin may implement (each with `@slope.plugins.hookimpl`)."""

    @hookspec
    def slope_operators(self) -> list:
        """Return a list of `slope.Operator` instances to register (each becomes `slope.NAME` and a Tensor method)."""

    @hookspec
    def slope_procedures(self) -> dict[str, Callable]:
        """Return `{name: function}`: plain functions over tensors, built from operators and other procedures."""

    @hookspec
    def slope_backends(self) -> list[type]:
        """Return a list of `slope.Backend` subclasses; each is selectable by its `name`."""

    @hookspec
    def slope_translations(self, backend: Any) -> dict[str, Callable]:
        """Return `{operator name: translation}` for `backend` (check `backend.name`), or None for other backends."""

    @hookspec
    def slope_commands(self, subparsers: Any) -> None:
        """Add subcommands to `slope` with `subparsers.add_parser`; set the default `run=function(args) -> exit code`."""

    @hookspec
    def slope_conformance_rows(self) -> list:
        """Return `slope.testing.Row`s for this plugin's operators and procedures (the conformance matrix runs them)."""


manager = pluggy.PluginManager("slope")
manager.add_hookspecs(HookSpecs)

operators: dict[str, Any] = {}
procedures: dict[str, Callable] = {}
backends: dict[str, type] = {}
owners: dict[tuple[str, str], str] = {}  # (kind, name) -> plugin name
failed: dict[str, list[str]] = {}  # plugin name -> its problems (a plugin that failed to load, contributions skipped)
distributions: dict[str, tuple[str, str]] = {}  # plugin name -> (distribution, version), for entry-point plugins
on_refresh: list[Callable[[], None]] = []  # what other modules reset when the registries change (the backend caches)
_lock = threading.RLock()  # one rebuild at a time; readers in other threads never see a kept entry missing


def _env_set(variable: str) -> set[str]:
    return {name.strip() for name in os.environ.get(variable, "").split(",") if name.strip()}


def problem(plugin: str, message: str, strict: bool = False, outcome: str = "skipped") -> None:
    """Report a plugin's mistake: a SlopePluginWarning naming it and its distribution, or an error when strict."""
    dist, version = distributions.get(plugin, (None, None))
    where = f"plugin {plugin!r} (distribution {dist} {version})" if dist else f"plugin {plugin!r}"
    hint = f"; disable it with SLOPE_DISABLE_PLUGINS={plugin} or `pip uninstall {dist}`" if dist else ""
    if message not in failed.setdefault(plugin, []):
        failed[plugin].append(message)
    if strict or env("SLOPE_STRICT_PLUGINS", False):
        raise SlopePluginError(f"slope: {where}: {message}")
    warnings.warn(SlopePluginWarning(f"slope: {where}: {message}; {outcome}{hint}"), stacklevel=3)


def _reserved(name: str) -> bool:
    """Names Slope itself uses: `slope.grad`, `slope.nn`, Tensor's own methods such as `numpy`."""
    ours = getattr(Tensor.__dict__.get(name), "_slope_function", name not in Tensor.__dict__)  # (plugins' methods)
    return name in vars(sys.modules["slope"]) or name in ("nn", "testing", "distributed") or not ours


def _check(kind: str, name: Any, item: Any, plugin: str, taken: dict) -> str | None:
    """What is wrong with one contribution, or None."""
    from .backend import Backend
    from .operator import Operator

    if kind == "operator" and not isinstance(item, Operator):
        return f"operator {name!r} must be a slope.Operator instance (not a class), got {item!r}"
    if kind == "operator" and not item.has_rule("infer") and item.procedure is None:
        return f"operator {name!r} defines neither `infer` nor a `procedure` to derive it from"
    if kind == "procedure" and not callable(item):
        return f"procedure {name!r} is not callable: {item!r}"
    if kind == "backend":
        if not (isinstance(item, type) and issubclass(item, Backend)):
            return f"backend {name!r} must be a slope.Backend subclass (the class, not an instance), got {item!r}"
        lacking = [m for m in ("compile", "from_numpy", "to_numpy") if getattr(item, m) is getattr(Backend, m)]
        if lacking or not (isinstance(name, str) and name.strip()):
            return f"backend {name!r} needs a name and its own {', '.join(lacking or ['name'])}"
        if not item.dtypes and item.__init__ is Backend.__init__:  # (a backend may set its dtypes in __init__)
            return f"backend {name!r} declares no dtypes"
    elif not (isinstance(name, str) and name.isidentifier()):
        return f"{kind} name {name!r} is not a Python identifier"
    elif not plugin.startswith("slope-core.") and _reserved(name):
        return f"{kind} {name!r} would shadow Slope's own `slope.{name}` or `Tensor.{name}`"
    other = taken.get(("backend" if kind == "backend" else "function", name))
    return f"{kind} {name!r} is defined by plugin {other!r} first, and again by {plugin!r}" if other else None


def _table(kind: str, value: Any) -> dict:
    """A hook's result as `{name: item}`: procedures and translations come as dicts, operators and backends as lists."""
    as_dict = kind in ("procedure", "translation")
    if value is not None and not isinstance(value, dict if as_dict else (list, tuple)):
        raise TypeError(f"slope_{kind}s must return a {'dict' if as_dict else 'list'}, got {type(value).__name__}")
    table = dict(value or {}) if as_dict else {getattr(item, "name", repr(item)): item for item in value or ()}
    if kind == "translation" and not all(isinstance(name, str) and callable(fn) for name, fn in table.items()):
        raise TypeError(f"expected a dict of operator name -> function or None, got {value!r:.80}")
    return table


def refresh(strict_plugin: str | None = None) -> None:
    """Rebuild the registries from every registered plugin's hooks (a bad contribution is skipped with a warning)."""
    with _lock:
        tables: dict[str, dict] = {"operator": {}, "procedure": {}, "backend": {}, "owner": {}}
        for kind in ("operator", "procedure", "backend"):
            for plugin, table in results(f"slope_{kind}s", partial(_table, kind), strict_plugin):
                for name, item in table.items():
                    if message := _check(kind, name, item, plugin, tables["owner"]):
                        problem(plugin, message, plugin == strict_plugin)
                        continue
                    tables["owner"][("backend" if kind == "backend" else "function", name)] = plugin
                    tables[kind][name] = item
        tables["function"] = {**tables["operator"], **tables["procedure"]}
        for registry, table in zip((operators, procedures, backends, owners, functions), tables.values()):
            registry.update(table)  # in place, adding before removing: other threads may be reading it
            for name in registry.keys() - table.keys():
                del registry[name]
        for name, fn in functions.items():
            if name not in Tensor.__dict__ or getattr(Tensor.__dict__[name], "_slope_function", False):
                setattr(Tensor, name, _as_method(fn))
        for name, value in list(Tensor.__dict__.items()):  # methods of unregistered plugins go with them
            if getattr(value, "_slope_function", False) and name not in functions:
                delattr(Tensor, name)
        for reset in on_refresh:
            reset()


def results(hook: str, check: Callable = lambda value: value, strict_plugin: str | None = None, where: str = "",
            **kwargs: Any) -> Iterator[tuple[str, Any]]:  # fmt: skip
    """(plugin name, checked result) of each plugin's `hook`, Slope's first; one raising: skipped (strict: raised)."""
    for impl in getattr(manager.hook, hook).get_hookimpls():
        plugin = manager.get_name(impl.plugin) or repr(impl.plugin)
        try:
            result = check(impl.function(**{arg: kwargs[arg] for arg in impl.argnames}))
        except Exception as error:
            problem(plugin, f"its {hook} hook failed{where}: {type(error).__name__}: {error}", plugin == strict_plugin)
            continue
        yield plugin, result


def translations_for(backend: Any) -> tuple[dict[str, Callable], dict[str, str]]:
    """A backend's own translations updated with every plugin's, and which plugin gave each (a failing one is skipped)."""
    translations, given_by = dict(type(backend).translations), {}
    where = f" for backend {backend.name!r}"
    for plugin, table in results("slope_translations", partial(_table, "translation"), where=where, backend=backend):
        translations.update(table)
        given_by.update(dict.fromkeys(table, plugin))
    return translations, given_by


def _as_method(fn: Callable) -> Callable:
    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        return fn(self, *args, **kwargs)

    method.__name__, method.__doc__ = getattr(fn, "__name__", "method"), getattr(fn, "__doc__", None)
    method._slope_function = True  # type: ignore[attr-defined]
    return method


def register(plugin: Any, name: str | None = None) -> None:
    """Register an in-process plugin (a module or object with `@hookimpl` functions); its mistakes are errors."""
    with _lock:
        name = manager.register(plugin, name)
        try:
            manager.check_pending()  # a hookimpl no hook spec names (a misspelling) is an error, as in pytest
            refresh(strict_plugin=name)
        except Exception:
            failed.pop(name, None)
            unregister(plugin)
            raise


def unregister(plugin: Any) -> None:
    """Remove an in-process plugin."""
    with _lock:
        manager.unregister(plugin)
        refresh()


def load_entry_points() -> None:
    """Load the plugins of the `slope` entry-point group (as SLOPE_DISABLE_PLUGINS, SLOPE_PLUGINS allow)."""
    disabled, only = _env_set("SLOPE_DISABLE_PLUGINS"), _env_set("SLOPE_PLUGINS")
    autoload = not env("SLOPE_DISABLE_PLUGIN_AUTOLOAD", False)
    ours = ("slope-numpy", "slope-onnx", "slope-iree", "slope-nn", "slope-distributed")  # ours first (a clash: theirs)
    for entry_point in sorted(entry_points(group="slope"), key=lambda e: getattr(e.dist, "name", "") not in ours):
        label = (entry_point.dist.name, entry_point.dist.version) if entry_point.dist else ("?", "?")
        ids = {entry_point.name, label[0], f"{label[0]}:{entry_point.name}"}
        if ids & disabled or not (autoload or ids & only):
            continue
        clash = distributions.get(entry_point.name, label) != label  # a name another distribution took already
        name = f"{label[0]}:{entry_point.name}" if clash else entry_point.name  # both load, told apart by distribution
        if manager.get_plugin(name) is not None or name in failed:  # (importlib.reload(slope))
            continue
        distributions[name] = label
        if name != entry_point.name:
            taken = " ".join(distributions[entry_point.name])
            problem(name, f"entry-point name {entry_point.name!r} is taken by {taken}", outcome=f"loaded as {name!r}")
        try:
            manager.register(entry_point.load(), name)
            manager.check_pending()  # (pytest's check: a misspelled hook would contribute nothing, silently)
        except Exception as error:
            problem(name, f"{type(error).__name__}: {error} (loading {entry_point.value})")
            if manager.get_plugin(name) is not None:
                manager.unregister(name=name)
    refresh()


def plugin_versions() -> dict[str, str]:
    """Loaded plugins and the version of the distribution that provides each."""
    versions = {}
    for name, _ in manager.list_name_plugin():
        builtin = name.startswith("slope-core") and f"{distribution_version('slope-core')} (built in)"
        versions[name] = distributions[name][1] if name in distributions else builtin or "in-process"
    return versions
