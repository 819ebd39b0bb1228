"""Registers slope-nn with Slope (entry point `slope: nn`), through the hooks any third-party plugin uses.

The neural-network functions (`slope_nn.functional`) become procedures; `erf`, `log_softmax`, `softmax`, `gelu`,
`layer_norm`, `layer_norm_rstd`, `relu`, `max_pool` and the indexing operators max pooling is differentiated with (`slope_nn.operators`) become operators, and the ONNX
Runtime, IREE and NumPy backends learn native translations for some of them; every other backend runs them through
their procedures.
"""

from __future__ import annotations

from typing import Any, Callable

from slope.plugins import hookimpl


@hookimpl
def slope_operators() -> list:
    """erf, log_softmax, softmax, gelu, layer_norm(_rstd), relu, max_pool, max_pool_argmax, take_along_dim, scatter_add."""
    from .operators import operators

    return operators


@hookimpl
def slope_procedures() -> dict[str, Callable]:
    """The functions of slope.nn.functional that are not operators (sigmoid, cross_entropy, ...) and the general tensor
    functions of slope_nn.tensor_functions (masked_fill, index_select, cumprod, sort, topk, ...)."""
    from .functional import procedures
    from .tensor_functions import procedures as tensor_functions

    return {**procedures, **tensor_functions}


@hookimpl
def slope_translations(backend: Any) -> dict[str, Callable] | None:
    """ONNX nodes for the operators on onnxruntime; StableHLO for all of them on iree; NumPy expressions for some on
    numpy."""
    if backend.name == "onnxruntime":
        from .onnx_translations import translations

        return translations
    if backend.name == "iree":
        from .iree_translations import translations

        return translations
    if backend.name == "numpy":
        from .numpy_translations import translations

        return translations
    return None
