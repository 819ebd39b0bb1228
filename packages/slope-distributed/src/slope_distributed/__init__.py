"""slope-distributed: data-parallel training for Slope on an existing distributed engine (MPI through mpi4py by
default, torch.distributed's gloo, or one local process). `import slope.distributed as dist`."""

from __future__ import annotations

from .checkpoint import load, save
from .collectives import all_reduce, barrier, broadcast, engine, init, leaf_names, rank, shard, world_size
from .engines import SlopeDistributedError
from .parallel import data_parallel, pmean, psum, train_step

__version__ = "0.1.0"

__all__ = [
    "SlopeDistributedError",
    "all_reduce",
    "barrier",
    "broadcast",
    "data_parallel",
    "engine",
    "init",
    "leaf_names",
    "load",
    "pmean",
    "psum",
    "rank",
    "save",
    "shard",
    "train_step",
    "world_size",
]
