"""Slope's error classes: `SlopeError`s, each also the built-in it refines (elsewhere plain built-ins, as PyTorch)."""


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
