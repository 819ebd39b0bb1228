"""Checkpoints: state dicts written as safetensors (default) or `.npz`; tensors only, never pickled code.

Every dtype and shape (0-d and size-0 included) comes back exactly. Saves are atomic: the data goes to a temporary
file in the same folder, is flushed to disk, and then replaces the checkpoint in one step, so a save that fails or is
killed midway leaves the previous checkpoint as it was (a killed one may leave its hidden `.NAME.*.tmp` file).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

import slope
from slope import Tensor

__all__ = ["load", "save"]

# .npz has no bfloat16: such arrays are stored as their uint16 bits, their names listed in this entry
_NPZ_DTYPES = "__slope_dtypes__"


def as_array(value: Any) -> np.ndarray:
    """A state value (a Slope tensor, a PyTorch tensor, a NumPy array or nested numbers) as a NumPy array, exactly."""
    if isinstance(value, Tensor):
        return value.numpy()
    torch = sys.modules.get("torch")  # (torch is never imported here: a torch tensor means it already is)
    if torch is not None and isinstance(value, torch.Tensor):
        value = value.detach().cpu()  # (a parameter that requires grad, or one on a GPU)
        if value.dtype == torch.bfloat16:  # NumPy has no torch bfloat16 ("Got unsupported ScalarType BFloat16"):
            return value.view(torch.int16).numpy().view(slope.bfloat16.numpy)  # its bits as ml_dtypes' bfloat16
        return value.numpy()
    return np.asarray(value)


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
        if name == _NPZ_DTYPES:
            raise ValueError(f"slope.nn.save: the name {name!r} is reserved for the checkpoint's own metadata")
        array = as_array(value)
        if array.dtype == object:
            raise TypeError(f"slope.nn.save: {name!r} is not numeric data")
        arrays[name] = np.asarray(array, order="C")  # (ascontiguousarray would make 0-d arrays 1-d)
    return arrays


def _write_npz(arrays: dict[str, np.ndarray], file: Path) -> None:
    bfloat16 = sorted(name for name, array in arrays.items() if array.dtype.name == "bfloat16")
    stored = {name: array.view(np.uint16) if name in bfloat16 else array for name, array in arrays.items()}
    if bfloat16:
        stored[_NPZ_DTYPES] = np.array(json.dumps({name: "bfloat16" for name in bfloat16}))
    with open(file, "wb") as handle:  # a file object: np.savez would add ".npz" to a name
        np.savez(handle, **stored)


def _write_safetensors(arrays: dict[str, np.ndarray], file: Path) -> None:
    from safetensors.numpy import save_file

    save_file(arrays, str(file), metadata={"format": "slope"})


def _write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """write(file) to a new file beside `path`, flushed to disk, then renamed over `path` in one step."""
    import secrets  # here, not at the top: it adds to every `import slope`

    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        write(temporary)
        descriptor = os.open(temporary, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    if hasattr(os, "O_DIRECTORY"):  # the rename itself made durable (POSIX)
        descriptor = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def save(state: Any, path: str | os.PathLike) -> None:
    """Write a Module's state dict (or a dict of tensors/arrays) atomically: `.npz` by suffix, else safetensors."""
    path = Path(path)
    arrays = _arrays(state)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = _write_npz if path.suffix == ".npz" else _write_safetensors
    _write_atomically(path, lambda file: writer(arrays, file))


def load(path: str | os.PathLike, as_numpy: bool = False) -> dict[str, Any]:
    """Read a checkpoint written by `save` into a dict of tensors (or NumPy arrays with as_numpy=True)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"slope.nn.load: no checkpoint at {path}")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
        for name, dtype in json.loads(str(arrays.pop(_NPZ_DTYPES, "{}"))).items():
            arrays[name] = arrays[name].view(getattr(slope, dtype).numpy)
    else:
        from safetensors.numpy import load_file

        slope.bfloat16.numpy  # noqa: B018 - imports ml_dtypes, which makes NumPy know "bfloat16" (a fresh process failed)
        arrays = load_file(str(path))
    if as_numpy:
        return arrays
    return {name: slope.tensor(array) for name, array in arrays.items()}
