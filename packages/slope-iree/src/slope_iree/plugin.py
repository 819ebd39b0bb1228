"""Registers the IREE backend with Slope (entry point `slope: iree`); the core's `slope cache` shows its cache."""

from slope.plugins import hookimpl


@hookimpl
def slope_backends() -> list:
    """The IREE backend."""
    from .backend import IreeBackend

    return [IreeBackend]
