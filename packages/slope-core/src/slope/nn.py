"""`import slope.nn as nn`: the slope-nn distribution re-exported (`slope.nn.functional` is `slope_nn.functional`)."""

from __future__ import annotations

import sys

try:
    from slope_nn import *  # noqa: F403
    from slope_nn import __all__, __version__, functional  # noqa: F401
except ImportError as error:
    if getattr(error, "name", None) not in ("slope_nn", None):
        raise
    hint = "slope.nn needs the slope-nn distribution: `pip install slope-nn` (or `pip install slope-core[nn]`)"
    raise ImportError(hint) from error
sys.modules[f"{__name__}.functional"] = functional  # so `import slope.nn.functional as F` works
