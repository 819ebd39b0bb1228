"""Slope's IREE backend: slope IR -> StableHLO MLIR text -> iree-base-compiler -> iree-base-runtime."""

from .backend import IreeBackend

__all__ = ["IreeBackend"]
