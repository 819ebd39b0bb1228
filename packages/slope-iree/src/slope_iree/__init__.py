"""Slope's IREE backend: slope IR -> StableHLO MLIR text -> iree-base-compiler -> iree-base-runtime."""

import slope  # noqa: F401 - first: importing slope loads this plugin, which needs slope to be importable

from .backend import IreeBackend

__all__ = ["IreeBackend"]
