"""Registers the ONNX Runtime backend with Slope (entry point `slope: onnxruntime`)."""

from slope.plugins import hookimpl


@hookimpl
def slope_backends() -> list:
    """The ONNX Runtime backend."""
    from .backend import OnnxBackend

    return [OnnxBackend]
