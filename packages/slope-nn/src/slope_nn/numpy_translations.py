"""NumPy translations of slope-nn's operators for the numpy backend, in slope-numpy's translation API
(`f(inputs, params, out) -> a Python expression`, `inputs` the names of the input arrays, `out` the output's Aval).
The other operators run through their procedures there.
"""

from __future__ import annotations

from typing import Callable

translations: dict[str, Callable] = {
    "relu": lambda ins, params, out: f"np.where({ins[0]} < 0, np.zeros((), {ins[0]}.dtype), {ins[0]})",
    "take_along_dim": lambda ins, params, out: f"runtime.take_along_axis({ins[0]}, {ins[1]}, {params['dim']})",
    # (multiply.accumulate multiplies left to right: PyTorch's order)
    "running_product": lambda ins, params, out: (
        f"np.multiply.accumulate({ins[0]}, axis={params['dim']}, dtype={ins[0]}.dtype)"
    ),
    "scatter_add": lambda ins, params, out: f"runtime.scatter_add({ins[0]}, {ins[1]}, {ins[2]}, {params['dim']})",
    "fail_if": lambda ins, params, out: f"runtime.fail_if({ins[0]}, {params['message']!r}, {params['error'].__name__})",
}
