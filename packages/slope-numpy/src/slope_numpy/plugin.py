"""Registers the NumPy backend with Slope (entry point `slope: numpy`)."""

from slope.plugins import hookimpl


@hookimpl
def slope_backends() -> list:
    """The NumPy backend."""
    from .backend import NumpyBackend

    return [NumpyBackend]
