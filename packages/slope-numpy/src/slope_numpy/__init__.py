"""Slope's NumPy backend: slope IR -> Python source calling NumPy, compiled with exec."""

from .backend import NumpyBackend

__all__ = ["NumpyBackend"]
__version__ = "0.1.0"
