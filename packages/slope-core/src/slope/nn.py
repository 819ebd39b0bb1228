"""`import slope.nn as nn`: the slope-nn distribution (modules, layers, losses, optimizers), re-exported."""

from __future__ import annotations

try:
    from slope_nn import *  # noqa: F403
    from slope_nn import __all__, __version__  # noqa: F401
except ImportError as error:
    if getattr(error, "name", None) not in ("slope_nn", None):
        raise
    raise ImportError(
        "slope.nn needs the slope-nn distribution: install it with `pip install slope-nn` "
        "(or `pip install slope-core[nn]`)"
    ) from error
