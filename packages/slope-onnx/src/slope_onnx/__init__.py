"""Slope's ONNX Runtime backend: slope IR -> ONNX graph (opset 21) -> onnxruntime sessions."""

from typing import Any

import slope  # noqa: F401 - first: importing slope loads this plugin, which needs slope to be importable

from .backend import OnnxBackend

__all__ = ["IR_VERSION", "OPSET", "NoTranslationError", "OnnxBackend", "OnnxGraph"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """The ONNX graph names, imported on first use: they need the onnx package, which is slow to import."""
    if name in ("IR_VERSION", "OPSET", "NoTranslationError", "OnnxGraph"):
        from . import graph

        return getattr(graph, name)
    raise AttributeError(f"module 'slope_onnx' has no attribute {name!r}")
