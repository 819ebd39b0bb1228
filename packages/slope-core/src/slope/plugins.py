"""The plugin host: pluggy hook specs, entry-point discovery and the registries filled from the hooks."""

from __future__ import annotations

import warnings
from importlib.metadata import entry_points
from importlib.metadata import version as distribution_version
from typing import Any, Callable

import pluggy

from .errors import SlopePluginError  # noqa: F401 - re-exported

hookspec = pluggy.HookspecMarker("slope")
hookimpl = pluggy.HookimplMarker("slope")


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


manager = pluggy.PluginManager("slope")
manager.add_hookspecs(HookSpecs)

operators: dict[str, Any] = {}
procedures: dict[str, Callable] = {}
backends: dict[str, type] = {}
owners: dict[tuple[str, str], str] = {}  # (kind, name) -> plugin name
failed: dict[str, str] = {}  # plugin name -> error text


def _claim(kind: str, name: str, plugin: str) -> None:
    other = owners.get((kind, name))
    if other is not None and other != plugin:
        raise SlopePluginError(f"slope: {kind} {name!r} is defined by both plugin {other!r} and plugin {plugin!r}")
    owners[(kind, name)] = plugin


def refresh() -> None:
    """Rebuild the registries from every registered plugin's hooks."""
    from .tensors import Tensor, functions

    for registry in (operators, procedures, backends, owners):
        registry.clear()
    hooks = [("slope_operators", "function", operators), ("slope_procedures", "function", procedures),
             ("slope_backends", "backend", backends)]  # fmt: skip
    for hook_name, kind, registry in hooks:
        for impl in reversed(getattr(manager.hook, hook_name).get_hookimpls()):
            plugin = manager.get_name(impl.plugin) or repr(impl.plugin)
            value = impl.function() or {}
            table = value if isinstance(value, dict) else {item.name: item for item in value}  # lists of named things
            for name, item in table.items():
                _claim(kind, name, plugin)
                registry[name] = item
    functions.clear()
    functions.update(operators)
    functions.update(procedures)
    for name, value in list(Tensor.__dict__.items()):  # methods of unregistered plugins go with them
        if getattr(value, "_slope_function", False) and name not in functions:
            delattr(Tensor, name)
    for name, fn in functions.items():
        if name not in Tensor.__dict__ or getattr(Tensor.__dict__[name], "_slope_function", False):
            setattr(Tensor, name, _as_method(fn))
    from . import backend

    active = backend._state["backend"]
    backend._instances.clear()  # translations may have changed
    backend._compiled.clear()
    backend._state["backend"] = None
    if active is not None and active.name in backends:  # the backend the user chose stays chosen
        backend._state["backend"] = backend.get_backend(active.name)


def _as_method(fn: Callable) -> Callable:
    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        return fn(self, *args, **kwargs)

    method.__name__ = getattr(fn, "__name__", "method")
    method.__doc__ = getattr(fn, "__doc__", None)
    method._slope_function = True  # type: ignore[attr-defined]
    return method


def register(plugin: Any, name: str | None = None) -> None:
    """Register an in-process plugin (a module or object with `@hookimpl` functions)."""
    manager.register(plugin, name)
    try:
        refresh()
    except Exception:
        manager.unregister(plugin)
        refresh()
        raise


def unregister(plugin: Any) -> None:
    """Remove an in-process plugin."""
    manager.unregister(plugin)
    refresh()


def load_entry_points() -> None:
    """Load every plugin of the `slope` entry-point group; a broken one becomes a warning."""
    for entry_point in entry_points(group="slope"):
        if manager.get_plugin(entry_point.name) is not None:
            continue
        try:
            module = entry_point.load()
            manager.register(module, entry_point.name)
        except Exception as error:
            reason = f"{type(error).__name__}: {error}"
            failed[entry_point.name] = reason
            warnings.warn(
                f"slope: plugin {entry_point.name!r} ({entry_point.value}) failed to load: {reason}", stacklevel=2
            )
    refresh()


def plugin_versions() -> dict[str, str]:
    """Installed plugins and the version of the distribution that provides each."""
    versions = {}
    for entry_point in entry_points(group="slope"):
        dist = getattr(entry_point, "dist", None)
        versions[entry_point.name] = dist.version if dist is not None else "?"
    for name, _ in manager.list_name_plugin():
        if name.startswith("slope-core"):
            versions.setdefault(name, f"{distribution_version('slope-core')} (built in)")
        versions.setdefault(name, "in-process")
    return versions
