"""Slope's ONNX Runtime backend: slope IR -> ONNX graph (opset 21) -> onnxruntime sessions."""

import slope  # noqa: F401 - first: importing slope loads this plugin, which needs slope to be importable

from .backend import OnnxBackend
from .graph import IR_VERSION, OPSET, NoTranslationError, OnnxGraph

__all__ = ["IR_VERSION", "OPSET", "NoTranslationError", "OnnxBackend", "OnnxGraph"]
