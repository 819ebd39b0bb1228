"""Collectives on pytrees: `init`, `rank`, `world_size`, `all_reduce`, `broadcast`, `barrier`, `shard`.

A reduction packs every leaf of a dtype into one flat NumPy buffer, reused from call to call, and hands it to the
engine in place: one engine call per dtype, never one per leaf (25x slower for 100 leaves). Ranks that share one
machine pack into a shared-memory window instead and add each other's segments straight into the result leaves. Before the data moves,
every rank contributes a 64-bit digest of its tree (structure, leaf names, shapes, dtypes, operation) to a small header reduced
under a deadline: a rank that died or stopped answering is then a timeout naming it, and trees that differ between
ranks are an error naming the rank and the leaf, never a hang or a garbled sum.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import optree

import slope
from slope import Tensor

from .engines import (
    ENGINES,
    Engine,
    SlopeDistributedError,
    default_timeout,
    launched_by_mpi,
    launcher_rank_and_size,
    launcher_variables,
    torch_group,
)

OPS = ("sum", "mean", "max")
DTYPES = (
    "bool",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float16",
    "bfloat16",
    "float32",
    "float64",
)  # the NumPy leaves' dtypes every engine path reduces and sends
_state: dict[str, Any] = {"engine": None}
_buffers: dict[tuple, np.ndarray] = {}  # (dtype, size) -> the flat buffer reused by every reduction of that size
_digests: dict[tuple, int] = {}
_names: dict[Any, tuple[str, ...]] = {}  # tree structure -> its leaves' names (dict keys, Module attributes)


def init(engine: str | None = None, timeout: float | None = None) -> None:
    """Join the group the launcher started (`mpiexec`, `srun`, `torchrun`): engine "mpi", "gloo" or "local" (default:
    the launcher's, see `_default_engine`); `timeout` (s, default $SLOPE_DISTRIBUTED_TIMEOUT or 300) bounds every wait
    for the other ranks."""
    import os

    name = engine or os.environ.get("SLOPE_DISTRIBUTED_ENGINE") or _default_engine()
    if name not in ENGINES:
        raise ValueError(f"slope.distributed.init: unknown engine {name!r}; expected one of {sorted(ENGINES)}")
    if timeout is not None and not (isinstance(timeout, (int, float)) and timeout > 0):  # (0: every wait fails)
        raise ValueError(f"slope.distributed.init: timeout must be a number of seconds > 0, got {timeout!r}")
    current = _state["engine"]
    if current is not None:
        if current.name != name:
            raise SlopeDistributedError(f"slope.distributed.init: already running on engine {current.name!r}, "
                                        f"cannot switch to {name!r} in the same process")  # fmt: skip
        return
    _state["engine"] = ENGINES[name](default_timeout() if timeout is None else float(timeout))
    _share_cpus()


def _share_cpus() -> None:
    """Ranks on one machine share its CPUs: each backend thread pool gets cpus // ranks here (as torchrun sets
    OMP_NUM_THREADS), unless $SLOPE_ORT_THREADS says otherwise. Oversubscribed, ranks wait on each other's threads."""
    import os

    local = [os.environ.get(n) for n in ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "LOCAL_WORLD_SIZE")]
    ranks_here = next((int(n) for n in local if n and n.strip().isdigit()), 1)
    if ranks_here > 1 and not os.environ.get("SLOPE_ORT_THREADS", "").strip():  # (empty: unset, as slope-onnx reads it)
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        os.environ["SLOPE_ORT_THREADS"] = str(max(1, cpus // ranks_here))  # (read when onnxruntime first runs)


def _default_engine() -> str:
    """The launcher's engine: gloo on a torch.distributed process group the program started itself (`mp.spawn`), or
    under torchrun (its $RANK and $WORLD_SIZE, no MPI launcher's variables); else mpi where mpi4py is installed (the
    engine checks that MPI's group is the launcher's); else local for one process."""
    import importlib.util

    if torch_group() is not None:
        return "gloo"
    placed = launcher_rank_and_size()
    if placed is not None and launcher_variables() == ("RANK", "WORLD_SIZE") and not launched_by_mpi():
        if importlib.util.find_spec("torch") is not None:
            return "gloo"
        raise SlopeDistributedError(
            f"slope.distributed.init: torchrun started this process (rank {placed[0]} of {placed[1]}: $RANK, "
            "$WORLD_SIZE) but PyTorch, which the gloo engine needs, is not installed: `pip install "
            "slope-distributed[gloo]`, or launch with mpiexec (`pip install slope-distributed[mpi]`)"
        )
    if importlib.util.find_spec("mpi4py") is not None:
        return "mpi"
    if placed is None or placed[1] == 1:
        return "local"
    raise SlopeDistributedError(
        f"slope.distributed.init: this is rank {placed[0]} of {placed[1]} but mpi4py is not installed: "
        "`pip install slope-distributed[mpi]`, or init(engine='gloo') with PyTorch"
    )


def engine() -> Engine:
    """The engine this process runs on (started with the default on first use)."""
    if _state["engine"] is None:
        init()
    return _state["engine"]


def rank() -> int:
    """This process's rank, 0 to world_size() - 1."""
    return engine().rank


def world_size() -> int:
    """The number of processes in the group."""
    return engine().size


def alone() -> bool:
    """Whether this is one process that runs no engine yet and has no group to join: no launcher started it and it
    started no torch.distributed process group (a process that did is one rank of several, engine or not)."""
    return _state["engine"] is None and launcher_rank_and_size() is None and torch_group() is None


def started_world_size() -> int:
    """The world size, or 1 for a process that is `alone()` (without starting an engine)."""
    return 1 if alone() else engine().size


def barrier() -> None:
    """Wait until every rank reaches this call."""
    engine().barrier()


def shard(*arrays: Any) -> Any:
    """This rank's slice of a dataset: rows [rank*n, (rank+1)*n) of each array, n = len // world_size (the last
    len % world_size rows are left out, so every rank gets as many rows and runs as many steps). Arrays may come in
    tuples and dicts (pytrees: `shard((x, y))` is `(x's rows, y's rows)`); a list is one array of rows."""
    leaves, treedef = slope.tree.flatten(arrays, is_leaf=lambda a: isinstance(a, list))
    if not leaves:
        raise TypeError("slope.distributed.shard: expected at least one array")
    lengths = {len(a) for a in leaves}
    if len(lengths) != 1:
        raise ValueError(f"slope.distributed.shard: the arrays have different lengths {[len(a) for a in leaves]}")
    size, index = world_size(), rank()
    rows = lengths.pop() // size
    if rows == 0:
        raise ValueError(f"slope.distributed.shard: {len(leaves[0])} rows cannot be split over {size} ranks")
    shards = slope.tree.unflatten(treedef, [a[index * rows : (index + 1) * rows] for a in leaves])
    return shards[0] if len(shards) == 1 else shards


def all_reduce(tree: Any, op: str = "sum") -> Any:
    """The elementwise sum, mean or max of a pytree over every rank (a tree like the input on every rank)."""
    if op not in OPS:
        raise ValueError(f"slope.distributed.all_reduce: op must be one of {OPS}, got {op!r}")
    leaves, treedef = slope.tree.flatten(tree)
    if any(isinstance(leaf, slope.trace.Tracer) for leaf in leaves):  # inside jit / grad: an operator in the program
        from .parallel import all_reduce_operator

        return slope.tree.unflatten(treedef, all_reduce_operator(leaves, op))
    reduced = _all_reduce(leaves, treedef, op, 0 if op == "mean" else len(leaves))
    return tree if reduced is None else slope.tree.unflatten(treedef, reduced)


class Context:
    """What a reduction inside a traced step belongs to: the step (`where`, for messages) and its arguments' leaves
    (names, shapes, dtypes), checked with the reduced leaves, so that ranks whose models differ (names, dtypes) are
    told apart and the message names the model's leaf, not the reduction's."""

    def __init__(self, where: str, leaves: list[tuple[str, Any, str]]):
        self.where, self.leaves = where, leaves
        text = repr((where, leaves)).encode()
        self.digest = int(np.frombuffer(hashlib.blake2b(text, digest_size=8).digest(), np.int64)[0])


def sum_and_mean(sums: list, means: list, context: Context | None = None) -> tuple[list, list]:
    """The sums over every rank of the leaves `sums` and the means of `means`, in one reduction (one header, one
    engine call per dtype): what `data_parallel` runs for a psum and a pmean at the same stage of a step."""
    leaves = [*sums, *means]
    reduced = _all_reduce(leaves, slope.tree.structure(leaves), "sum", len(sums), context) or leaves
    return reduced[: len(sums)], reduced[len(sums) :]


def _all_reduce(leaves: list, treedef: Any, op: str, mean_from: int, context: Context | None = None) -> list | None:
    """The reduced leaves (those from index `mean_from` on divided by the world size), or None where nothing moves
    (one rank, no leaves)."""
    arrays = [_as_numpy("all_reduce", leaf) for leaf in leaves]
    if not leaves:  # (the shared-memory path has nothing to pack)
        return None
    _check_floats("all_reduce", arrays, leaves, treedef, mean_from)
    if alone():
        return None  # one process with no group to join: the identity, without starting an engine
    group = engine()
    if group.size == 1:
        return None
    n = len(leaves)
    what = (
        op if op == "max" or 0 < mean_from == n else "mean" if mean_from == 0 else f"sum of {mean_from}, mean of rest"
    )
    _check_same_trees(group, "all_reduce", treedef, arrays, leaves, what, context)
    reduce = "max" if op == "max" else "sum"
    if getattr(group, "shared", None) is not None:  # every rank on this machine: combined out of shared memory
        outs, targets = zip(*[_empty_like(leaf, array) for leaf, array in zip(leaves, arrays)])
        group.shared.all_reduce(arrays, list(targets), reduce)
        for target in targets[mean_from:]:
            np.divide(target, group.size, out=target)
        return [_like(leaf, t, True) if o is None else o for leaf, o, t in zip(leaves, outs, targets)]
    # leaves that need memory of their own (arrays, numbers, numpy-backend tensors) get views of one copy of the
    # buffer; tensors of a backend that copies (onnxruntime, iree) are made from views of the buffer itself
    copy_out = any(not isinstance(leaf, Tensor) or isinstance(leaf.buffer, np.ndarray) for leaf in leaves)
    reduced = _reduce_flat(group, arrays, reduce, mean_from, copy_out)
    return [_like(leaf, view, copy_out) for leaf, view in zip(leaves, reduced)]


def broadcast(tree: Any, root: int = 0) -> Any:
    """The root rank's pytree on every rank (the others pass a tree of the same structure, shapes and dtypes)."""
    group = engine()
    if not 0 <= root < group.size:
        raise ValueError(f"slope.distributed.broadcast: root {root} is not a rank of a world of size {group.size}")
    leaves, treedef = slope.tree.flatten(tree)
    arrays = [_as_numpy("broadcast", leaf) for leaf in leaves]
    if group.size == 1:
        return tree
    _check_same_trees(group, "broadcast", treedef, arrays, leaves, f"root={root}")
    received = []
    for dtype, indices in _by_dtype(arrays).items():
        buffer = _pack(arrays, indices, dtype)
        group.broadcast(buffer.view(np.uint8), root)  # (bytes: every dtype, bfloat16 and bool too)
        received += [(i, view) for i, view in zip(indices, _views(buffer, arrays, indices))]
    if group.rank == root:
        return tree
    by_index = dict(received)
    return slope.tree.unflatten(treedef, [_like(leaf, by_index[i]) for i, leaf in enumerate(leaves)])


# ----------------------------------------------------------------------------------------------- flat buffers


def _reduce_flat(group: Engine, arrays: list[np.ndarray], op: str, mean_from: int, copy_out: bool = False) -> list:
    """Reduce ("sum" or "max") the arrays through one reused flat buffer per dtype, dividing those from index
    `mean_from` on by the world size; views of the buffers (to be copied out before the next reduction; with
    copy_out, views of one new copy of each buffer), in the arrays' order."""
    out: list = [None] * len(arrays)
    for dtype, indices in _by_dtype(arrays).items():
        buffer = _pack(arrays, indices, dtype)
        _engine_reduce(group, buffer, op)
        # a mean is the rank-ordered sum divided: bitwise what one process summing the shards gets (in place: a
        # fresh array would cost its page faults)
        if indices[0] >= mean_from:
            np.divide(buffer, group.size, out=buffer)
        elif indices[-1] >= mean_from:  # (this dtype's leaves are summed and averaged: the averaged ones' views)
            for i, view in zip(indices, _views(buffer, arrays, indices)):
                if i >= mean_from:
                    np.divide(view, group.size, out=view)
        for i, view in zip(indices, _views(buffer.copy() if copy_out else buffer, arrays, indices)):
            out[i] = view
    return out


def _engine_reduce(group: Engine, buffer: np.ndarray, op: str) -> None:
    """The engine's in-place reduction, with NumPy's and PyTorch's meanings where MPI's or gloo's differ: bool + bool
    is `or`; max propagates NaN (MPI's MAX drops it); bfloat16, which neither engine knows, is reduced as float32."""
    if buffer.dtype == np.bool_:
        return group.all_reduce(buffer.view(np.uint8), "max")  # (the max of 0s and 1s is their `or`)
    if buffer.dtype.name == "bfloat16":
        wide = buffer.astype(np.float32)
        _engine_reduce(group, wide, op)
        buffer[...] = wide
        return
    nan = np.isnan(buffer).view(np.uint8) if op == "max" and buffer.dtype.kind in "fc" else None
    if nan is not None:
        group.all_reduce(nan, "max")  # (a second reduction, for max only: which elements are NaN on some rank)
    group.all_reduce(buffer, op)
    if nan is not None:
        buffer[nan.view(np.bool_)] = np.nan


def _by_dtype(arrays: list[np.ndarray]) -> dict[np.dtype, list[int]]:
    groups: dict[np.dtype, list[int]] = {}
    for i, array in enumerate(arrays):
        groups.setdefault(array.dtype, []).append(i)
    return groups


def _pack(arrays: list[np.ndarray], indices: list[int], dtype: np.dtype) -> np.ndarray:
    total = sum(arrays[i].size for i in indices)
    key = (dtype, total)
    buffer = _buffers.get(key)
    if buffer is None:
        if len(_buffers) >= 16:  # (a run reduces a few sizes over and over: keep those, not every size ever seen)
            _buffers.clear()
        buffer = _buffers[key] = np.empty(total, dtype)
    np.concatenate([arrays[i].reshape(-1) for i in indices], out=buffer)  # (one call: no Python loop of copies)
    return buffer


def _views(buffer: np.ndarray, arrays: list[np.ndarray], indices: list[int]) -> list[np.ndarray]:
    views, offset = [], 0
    for i in indices:
        size = arrays[i].size
        views.append(buffer[offset : offset + size].reshape(arrays[i].shape))
        offset += size
    return views


def _as_numpy(where: str, leaf: Any) -> np.ndarray:
    """The leaf's values as a NumPy array, only read (a view of an onnxruntime CPU tensor: one copy less)."""
    if isinstance(leaf, Tensor):
        buffer = leaf.buffer
        if type(buffer).__name__ == "OrtValue" and leaf.device == "cpu" and leaf.dtype != slope.bfloat16:
            return buffer.numpy()  # (the OrtValue's memory: read once, into the flat buffer)
        return leaf.numpy()
    if type(leaf) is int and not -(2**63) <= leaf < 2**63:  # (NumPy made 2**63 + 5 a uint64, as slope.tensor refuses)
        raise OverflowError(f"slope.distributed.{where}: the Python int {leaf} does not fit int64")
    if isinstance(leaf, (np.ndarray, np.generic, int, float, bool)):
        array = np.asarray(leaf)
        if array.dtype.name not in DTYPES:  # (strings were summed through shared memory, MPI raised a bare KeyError)
            raise slope.DTypeError(f"slope.distributed.{where}: a NumPy leaf of dtype {array.dtype} and shape "
                                   f"{array.shape} cannot be reduced or sent; expected one of {', '.join(DTYPES)}")  # fmt: skip
        return array
    raise TypeError(f"slope.distributed.{where}: leaves must be tensors, NumPy arrays or numbers, got "
                    f"{type(leaf).__name__}")  # fmt: skip


def _empty_like(leaf: Any, array: np.ndarray) -> tuple[Any, np.ndarray]:
    """A new leaf like `leaf` for a result of the array's shape and dtype, and a writable array to put the result in:
    the new tensor's own memory where its backend lends it (then nothing is copied afterwards), else (None, a new
    array) for `_like` to make the leaf from."""
    if isinstance(leaf, Tensor) and leaf.device == "cpu" and (empty := getattr(leaf.backend, "empty_cpu", None)):
        made = empty(array.shape, array.dtype)
        if made is not None:
            return Tensor(made[0], leaf.aval, leaf.backend, leaf.device), made[1]
    return None, np.empty(array.shape, array.dtype)


def _like(leaf: Any, view: np.ndarray, private: bool = False) -> Any:
    """A new leaf of the input leaf's kind holding the view's values, never sharing the reused buffer (`private`: the
    view is of a copy already, which the new leaf may keep)."""
    if isinstance(leaf, Tensor):
        made, memory = _empty_like(leaf, view)
        if made is not None:  # a new tensor of the leaf's backend, the view copied straight into its memory
            np.copyto(memory, view)
            return made
        # (on the leaf's own backend, not the active one: bfloat16 on onnxruntime, every dtype on iree, come here)
        backend = leaf.backend
        array = view if private or backend.copies_from_numpy else view.copy()
        return Tensor(backend.from_numpy(array, leaf.device), leaf.aval, backend, leaf.device)
    if isinstance(leaf, np.ndarray):
        return view if private else view.copy()
    return type(leaf)(view.item()) if isinstance(leaf, (int, float, bool)) else view[()].copy()


# ----------------------------------------------------------------------------------------------- checks


def _check_floats(where: str, arrays: list[np.ndarray], leaves: list, treedef: Any, start: int = 0) -> None:
    """Leaves from index `start` on (those to average) must be floating-point."""
    for i, array in enumerate(arrays[start:], start):
        if array.dtype.kind not in "fc" and array.dtype.name != "bfloat16":
            name = leaf_names(slope.tree.unflatten(treedef, leaves))[i]
            raise slope.DTypeError(f"slope.distributed.{where}: op='mean' needs floating-point leaves; leaf {name} is "
                                   f"{array.dtype} {array.shape} (use op='sum')")  # fmt: skip


def _leaf_names(treedef: Any, leaves: list) -> tuple[str, ...]:
    """The leaves' names (`leaf_names`), worked out once per tree structure (a Module's structure holds its attribute
    names, a dict's its keys)."""
    names = _names.get(treedef)
    if names is None:
        if len(_names) >= 256:  # (a run reduces a few structures over and over)
            _names.clear()
        names = _names[treedef] = tuple(leaf_names(slope.tree.unflatten(treedef, leaves)))
    return names


def _digest(treedef: Any, arrays: list[np.ndarray], leaves: list, extra: str) -> int:
    key = (treedef, tuple((a.shape, a.dtype.str) for a in arrays), extra)
    digest = _digests.get(key)
    if digest is None:  # the leaves' names too: trees that differ only in dict keys or attribute names pair unrelated
        # leaves (rank 0's "encoder" with rank 1's "decoder")
        text = repr((slope.tree.describe(treedef), _leaf_names(treedef, leaves), key[1], extra)).encode()
        digest = _digests[key] = int(np.frombuffer(hashlib.blake2b(text, digest_size=8).digest(), np.int64)[0])
    return digest


def agree(where: str, what: str) -> Engine:
    """The engine, once every rank has arrived in the same call `where` (save, load) within the timeout: else an error
    naming the rank that did not answer, or the call it made instead. `what` (the call with its argument) names it."""
    group = engine()
    if group.size > 1:
        _check_same_trees(group, where, slope.tree.structure(()), [], [], "", label=what)
    return group


def _check_same_trees(group: Engine, where: str, treedef: Any, arrays: list, leaves: list, extra: str,
                      context: Context | None = None, label: str | None = None) -> None:  # fmt: skip
    """Every rank passes a tree of the same structure, leaf names, shapes and dtypes (and operation; within a step,
    the step's arguments too), or an error that says which rank and which leaf differ; a rank that does not arrive is
    a timeout naming it."""
    called = f"{where}({extra})"
    digest = _digest(treedef, arrays, leaves, called)
    if context is not None:
        where, digest = context.where, digest ^ context.digest
    what = label or f"{where} of {len(arrays)} leaves"  # (what a timeout names)
    header = np.array([digest, -digest], np.int64)  # max(d) == d and max(-d) == -d on every rank iff all d are equal
    group.header(header, what)
    if header[0] == digest and header[1] == -digest:
        return
    names = _leaf_names(treedef, leaves)
    mine = (slope.tree.describe(treedef), called, [(n, a.shape, str(a.dtype)) for n, a in zip(names, arrays)])
    every = group.gather((mine, None if context is None else context.leaves))
    raise SlopeDistributedError(f"slope.distributed.{where}: {_difference(every)}")


def _difference(every: list) -> str:
    """The first way a rank's step arguments, call or tree differs from rank 0's, in words."""
    (structure0, called0, leaves0), arguments0 = every[0]
    for r, (_, arguments) in enumerate(every[1:], start=1):
        if arguments is not None and arguments0 is not None and arguments != arguments0:
            found = _leaves_difference(r, arguments, arguments0, "argument leaf")
            return "the ranks passed different trees: " + (
                found or f"rank {r} passed {len(arguments)} argument leaves where rank 0 passed {len(arguments0)}"
            )
    for r, ((_, called, _), _) in enumerate(every[1:], start=1):
        if called != called0:
            return (f"the ranks are in different calls: rank {r} called {called} where rank 0 called {called0} (every "
                    "rank makes the same collective calls in the same order, dist.save and dist.load included)")  # fmt: skip
    for r, ((structure, _, leaves), _) in enumerate(every[1:], start=1):
        if found := _leaves_difference(r, leaves, leaves0, "leaf"):
            return f"the ranks passed different trees: {found}"
        if structure != structure0 or len(leaves) != len(leaves0):
            return (f"the ranks passed different trees: rank {r} passed {len(leaves)} leaves structured {structure} "
                    f"where rank 0 passed {len(leaves0)} structured {structure0}")  # fmt: skip
    return "the ranks passed different trees (the digests differ but the trees look alike)"


def _leaves_difference(r: int, leaves: list, leaves0: list, what: str) -> str | None:
    """The first leaf of rank r named or typed otherwise than rank 0's at the same place, in words (or None)."""
    for (name, shape, dtype), (name0, shape0, dtype0) in zip(leaves, leaves0):
        if name != name0:
            return (f"rank {r} has {what} {name} where rank 0 has {what} {name0} (dict keys or attribute names differ: "
                    "unrelated leaves would be combined)")  # fmt: skip
        if (shape, dtype) != (shape0, dtype0):
            return (f"rank {r}'s {what} {name} is {dtype} of shape {shape} where rank 0's {what} {name0} is {dtype0} "
                    f"of shape {shape0}")  # fmt: skip
    return None


def leaf_names(tree: Any) -> list[str]:
    """A readable path for every leaf, in flatten order (module attributes by name: `model.0.weight`)."""
    names: list[str] = []

    def walk(node: Any, path: str) -> None:
        if optree.tree_is_leaf(node, namespace="slope"):
            names.append(path or "(the tree itself)")
            return
        children, meta, entries, _ = optree.tree_flatten_one_level(node, namespace="slope")
        if hasattr(node, "_fields"):  # a namedtuple (optimizer states)
            entries = node._fields
        elif hasattr(node, "tree_flatten") and isinstance(meta, tuple):  # a slope.nn.Module: its attribute names
            entries = [entry for entry in meta if isinstance(entry, str)]
        for entry, child in zip(entries, children):
            walk(child, f"{path}.{entry}" if path else str(entry))

    walk(tree, "")
    return names
