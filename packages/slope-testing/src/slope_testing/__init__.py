"""slope-testing: Slope's conformance matrix and operator table, for Slope itself and for plugin authors.

- `pytest --slope-backend=NAME` (this distribution's pytest plugin) runs the matrix on a backend;
- a plugin's operators and procedures join the matrix through the `slope_conformance_rows` hook, returning `Row`s
  built from `Case` and `Data` (see the README's "Writing a plugin").
"""

from __future__ import annotations

from .checks import BITS, FLOATS, INTEGERS, NUMBERS, Case, Data, Fixed, FloatData, Row
from .matrix import cells, rows, run_cell
from .table import ROWS, known_failure

__all__ = ["BITS", "FLOATS", "INTEGERS", "NUMBERS", "ROWS", "Case", "Data", "Fixed", "FloatData", "Row"]
__all__ += ["cells", "known_failure", "rows", "run_cell"]
__version__ = "0.1.0"
