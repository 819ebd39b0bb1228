"""Slope's error classes: `SlopeError`s, each also the built-in it refines (elsewhere plain built-ins, as PyTorch)."""

import contextlib
import os


class SlopeError(Exception):
    """Base class of Slope's user-facing errors."""


class ShapeError(SlopeError, ValueError):
    """Shapes that do not fit an operator."""


class DTypeError(SlopeError, TypeError):
    """Dtypes that do not fit an operator."""


class SlopeMemoryError(SlopeError, MemoryError):
    """A tensor too big for this machine's memory (or for int64 sizes), refused before the backend allocates it."""


class SlopeBackendError(SlopeError, RuntimeError):
    """A backend or device that is not available, or a program a backend cannot run."""


class SlopePluginError(SlopeError, RuntimeError):
    """Two plugins define the same name, or a plugin returns something Slope cannot use."""


class SlopePluginWarning(SlopeError, UserWarning):  # noqa: N818 - a warning (that is also a SlopeError)
    """A plugin's contribution was skipped (raised, like an error, under `python -W error`)."""


class SlopeTraceError(SlopeError, TypeError):
    """A traced value was used where a concrete one is needed."""


class TransformError(SlopeError, ValueError):
    """A transformation used in a way it cannot support."""


class SlopeConfigError(SlopeError, ValueError):
    """An environment variable with a value Slope cannot use."""


_FLAGS = {"0": False, "false": False, "no": False, "off": False, "1": True, "true": True, "yes": True, "on": True}


def env(name: str, default: bool | int | float) -> bool | int | float:
    """$name as the default's type (flag: 1/true/yes/on, 0/false/no/off, any case; number >= 0); unset: default."""
    raw = os.environ.get(name, "").strip().lower()
    with contextlib.suppress(KeyError, ValueError):  # (not a flag, not a number: the error below)
        value = default if not raw else _FLAGS[raw] if isinstance(default, bool) else type(default)(raw)
        if value >= 0:
            return value
    whole = "whole " if type(default) is int else ""
    kind = "1/true/yes/on or 0/false/no/off" if isinstance(default, bool) else f"a {whole}number >= 0"
    raise SlopeConfigError(f"${name}={os.environ[name]!r}: expected {kind}")
