"""Checkpoints: state dicts written as safetensors (default) or `.npz`; tensors only, never pickled code."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

import slope
from slope import Tensor

__all__ = ["load", "save"]


def _arrays(state: Any) -> dict[str, np.ndarray]:
    from .module import Module

    if isinstance(state, Module):
        state = state.state_dict()
    if not isinstance(state, dict):
        raise TypeError(f"slope.nn.save: expected a Module or a dict of tensors, got {type(state).__name__}")
    arrays = {}
    for name, value in state.items():
        if not isinstance(name, str):
            raise TypeError(f"slope.nn.save: state names must be strings, got {name!r}")
        array = value.numpy() if isinstance(value, Tensor) else np.asarray(value)
        if array.dtype == object:
            raise TypeError(f"slope.nn.save: {name!r} is not numeric data")
        arrays[name] = np.ascontiguousarray(array)
    return arrays


def save(state: Any, path: str | os.PathLike) -> None:
    """Write a Module's state dict (or a dict of tensors/arrays): `.npz` by suffix, else safetensors."""
    path = Path(path)
    arrays = _arrays(state)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npz":
        np.savez(path, **arrays)
        return
    from safetensors.numpy import save_file

    save_file(arrays, str(path), metadata={"format": "slope"})


def load(path: str | os.PathLike, as_numpy: bool = False) -> dict[str, Any]:
    """Read a checkpoint written by `save` into a dict of tensors (or NumPy arrays with as_numpy=True)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"slope.nn.load: no checkpoint at {path}")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    else:
        from safetensors.numpy import load_file

        arrays = load_file(str(path))
    if as_numpy:
        return arrays
    return {name: slope.tensor(array) for name, array in arrays.items()}
