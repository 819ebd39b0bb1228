"""Checkpoints of a distributed run: written once, by rank 0, atomically; read by rank 0 and broadcast, so every rank
resumes from the same values whether or not the ranks share a file system.

The file is slope.nn's checkpoint format (safetensors, or `.npz` by suffix), one entry per leaf of the tree, named
by its path (`0.layers.0.weight`, `1.mu.0`, ...): a model, its optimizer state and any counters in one file.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

import slope
from slope import Tensor

from . import collectives
from .engines import SlopeDistributedError


def save(tree: Any, path: str | os.PathLike) -> None:
    """Write a pytree of tensors (say `(model, opt_state)`) to `path` from rank 0 only, atomically: call it on every
    rank, which returns once the file is complete (an error on rank 0 is raised on every rank)."""
    from slope_nn import checkpoint

    # every rank is here (within the timeout) before rank 0 writes: a rank that left, or one in another call (`if rank
    # == 0: dist.save(...)`), is an error naming it, not a wait without end in the gather below
    group = collectives.agree("save", f"save({os.fspath(path)!r})")
    failure = None
    if group.rank == 0:
        try:
            leaves, names = slope.tree.leaves(tree), collectives.leaf_names(tree)
            if len(set(names)) != len(names):  # (one of two leaves named alike was dropped: {"a.b": t, "a": {"b": u}})
                twice = sorted({name for name in names if names.count(name) > 1})
                raise ValueError(f"leaves named alike ({', '.join(twice)}) would overwrite each other")
            checkpoint.save(dict(zip(names, leaves)), path)
        except Exception as error:  # every rank must hear of it, or the others would go on without a checkpoint
            failure = f"{type(error).__name__}: {error}"
    failures = group.gather(failure)
    if failures[0] is not None:
        raise SlopeDistributedError(
            f"slope.distributed.save: rank 0 could not write {os.fspath(path)!r}: {failures[0]}"
        )


def load(path: str | os.PathLike, like: Any) -> Any:
    """Read a checkpoint written by `save` into a tree structured like `like` (say a fresh `(model, opt_state)`): rank
    0 reads the file and broadcasts it, so the other ranks need no access to it."""
    from slope_nn import checkpoint

    leaves, treedef = slope.tree.flatten(like)
    group = collectives.agree("load", f"load({os.fspath(path)!r})")  # (every rank here: as in save)
    failure = None
    if group.rank == 0:
        try:
            stored = checkpoint.load(path, as_numpy=True)
            names = collectives.leaf_names(like)
            missing = [name for name in names if name not in stored]
            if missing or len(stored) != len(names):
                raise ValueError(f"the checkpoint holds {len(stored)} entries ({', '.join(list(stored)[:4])}, ...) "
                                 f"but the tree has {len(names)} leaves; missing: {', '.join(missing[:4])}")  # fmt: skip
            for name, leaf in zip(names, leaves):  # (numbers and NumPy leaves too: they failed to load)
                shape, dtype = _shape_and_dtype(leaf)
                if (stored[name].shape, stored[name].dtype) != (shape, dtype):
                    raise ValueError(f"entry {name} is {stored[name].dtype} {stored[name].shape}, the tree's leaf "
                                     f"is {dtype} {shape}")  # fmt: skip
            leaves = [collectives._like(leaf, stored[name], private=True) for name, leaf in zip(names, leaves)]
        except Exception as error:  # said on every rank, which would otherwise wait in the broadcast
            failure = f"{type(error).__name__}: {error}"
    failures = group.gather(failure)
    if failures[0] is not None:
        raise SlopeDistributedError(f"slope.distributed.load: rank 0 could not read {os.fspath(path)!r}: {failures[0]}")
    return collectives.broadcast(slope.tree.unflatten(treedef, leaves), root=0)


def _shape_and_dtype(leaf: Any) -> tuple[tuple, np.dtype]:
    """A leaf's shape and NumPy dtype, as a checkpoint stores it (a tensor's data is not read)."""
    if isinstance(leaf, Tensor):
        return tuple(leaf.shape), np.dtype(leaf.dtype.numpy)
    array = np.asarray(leaf)
    return array.shape, array.dtype
