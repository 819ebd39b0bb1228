"""The engines that move the bytes: `mpi` (mpi4py), `gloo` (torch.distributed) and `local` (one process).

Slope has no networking of its own. Every engine reduces or broadcasts one contiguous NumPy buffer in place (the
caller packs a whole pytree into it), checks a small header first under a deadline (`header`), and gathers small
Python objects for error messages (`gather`). When every MPI rank runs on one machine, reductions and headers go
through MPI-3 shared memory instead (`SharedMemory`). mpi4py and torch are imported when their engine starts, never at
`import slope`.
"""

from __future__ import annotations

import collections
import os
import pickle
import sys
import time
from typing import Any

import numpy as np

from slope import SlopeError
from slope.errors import SlopeConfigError, env


class SlopeDistributedError(SlopeError, RuntimeError):
    """A distributed run went wrong: a rank that died or stopped answering, trees that differ between ranks, a
    missing engine."""


# the rank and size variables of the launchers: MPICH/Hydra (and Slurm's pmi2), Open MPI, torchrun, Slurm's srun (the
# size of its step: sbatch sets SLURM_PROCID=0 and the allocation's SLURM_NTASKS for the batch script itself, whose
# plain `python train.py` is one process, not rank 0 of SLURM_NTASKS)
LAUNCHERS = (("PMI_RANK", "PMI_SIZE"), ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"), ("RANK", "WORLD_SIZE"),
             ("SLURM_PROCID", "SLURM_STEP_NUM_TASKS"))  # fmt: skip
MPI_LAUNCHED = ("PMI_RANK", "PMIX_RANK", "OMPI_COMM_WORLD_RANK")  # set where an MPI process manager started the ranks


def launcher_variables() -> tuple[str, str] | None:
    """The names of the rank and size variables of the launcher that started this process, or None."""
    return next(((r, s) for r, s in LAUNCHERS if r in os.environ and s in os.environ), None)


def launcher_rank_and_size() -> tuple[int, int] | None:
    """This process's rank and the world size as the launcher set them (MPICH/Hydra, Open MPI, Slurm, torchrun)."""
    names = launcher_variables()
    if names is None:
        return None
    try:
        rank, size = int(os.environ[names[0]]), int(os.environ[names[1]])
    except ValueError:
        rank = size = -1
    if not 0 <= rank < size:
        raise SlopeDistributedError(
            f"slope.distributed: the launcher's ${names[0]}={os.environ[names[0]]!r} and ${names[1]}="
            f"{os.environ[names[1]]!r} are not a rank and a world size (whole numbers, 0 <= rank < size)"
        )
    return rank, size


def launched_by_mpi() -> bool:
    """Whether an MPI process manager (mpiexec, `srun --mpi=pmi2` or `pmix`) started this process."""
    return any(name in os.environ for name in MPI_LAUNCHED)


def torch_group() -> tuple[int, int] | None:
    """This process's rank and the world size of a torch.distributed process group the program started itself
    (PyTorch's `mp.spawn` pattern: no launcher's variables), or None; torch is not imported to find out."""
    torch_dist = sys.modules.get("torch.distributed")
    if (
        torch_dist is None
        or not getattr(torch_dist, "is_available", lambda: False)()
        or not torch_dist.is_initialized()
    ):
        return None
    return torch_dist.get_rank(), torch_dist.get_world_size()


def check_launcher(engine: str, size: int) -> None:
    """Raise where the engine's group (`size` processes) is not the one the launcher started: each process would
    otherwise train on its own, on all the data, and write checkpoints as rank 0."""
    group = torch_group()
    if engine != "gloo" and group is not None and group[1] != size:
        raise SlopeDistributedError(
            f"slope.distributed.init: the {engine} engine's group has {size} process{'es' if size > 1 else ''} but "
            f"this program started a torch.distributed process group of {group[1]} (this is its rank {group[0]}): "
            "use the gloo engine, which runs on that group (SLOPE_DISTRIBUTED_ENGINE=gloo or init(engine='gloo'))"
        )
    placed = launcher_rank_and_size()
    if placed is None or placed[1] == size:
        return
    rank_name, size_name = launcher_variables()  # type: ignore[misc]
    if engine == "local":
        fix = "use the mpi engine under mpiexec or srun, or the gloo engine under torchrun"
    elif size_name == "WORLD_SIZE":
        fix = "under torchrun, use the gloo engine (SLOPE_DISTRIBUTED_ENGINE=gloo or init(engine='gloo'))"
    elif size_name == "SLURM_STEP_NUM_TASKS":
        fix = "under Slurm, let MPI start the ranks: `srun --mpi=pmi2` (or `--mpi=pmix`, as your MPI was built)"
    else:
        fix = "launch with the mpiexec of the MPI library that mpi4py uses"
    one = f"{size_name}=1"  # how to run one process on purpose, under this launcher
    if size_name == "SLURM_STEP_NUM_TASKS":
        one = "srun -n 1, or a plain `python` in the batch script"
    outcome = "every process would run alone, as rank 0 of 1, on all the data" if size == 1 else "the ranks disagree"
    raise SlopeDistributedError(
        f"slope.distributed.init: the {engine} engine's group has {size} process{'es' if size > 1 else ''} but the "
        f"launcher started {placed[1]} (${size_name}={placed[1]}, ${rank_name}={placed[0]}): {outcome}. {fix[0].upper()}"
        f"{fix[1:]}. To run one process on purpose, start it without a launcher (or with {one})"
    )


def default_timeout() -> float:
    """Seconds a rank waits for the others before it says which ones did not answer ($SLOPE_DISTRIBUTED_TIMEOUT)."""
    if (seconds := float(env("SLOPE_DISTRIBUTED_TIMEOUT", 300.0))) == 0:  # (every wait would fail at once)
        raise SlopeConfigError("$SLOPE_DISTRIBUTED_TIMEOUT='0': expected a number of seconds > 0")
    return seconds


class Engine:
    """One process's view of the group: its rank, the world size and in-place collectives on NumPy buffers."""

    name = ""
    rank = 0
    size = 1

    def __init__(self, timeout: float):
        self.timeout = timeout

    def all_reduce(self, buffer: np.ndarray, op: str) -> None:
        """Reduce the buffer over every rank, in place ("sum" or "max")."""

    def broadcast(self, buffer: np.ndarray, root: int) -> None:
        """Overwrite the buffer with the root's, in place."""

    def header(self, header: np.ndarray, what: str) -> None:
        """The elementwise maximum of a small int64 header over every rank, in place, within the timeout."""

    def gather(self, value: Any) -> list:
        """Every rank's value (small, picklable), in rank order."""
        return [value]

    def barrier(self) -> None:
        """Wait until every rank is here."""

    def others(self) -> list[int]:
        """The other ranks."""
        return [r for r in range(self.size) if r != self.rank]


class LocalEngine(Engine):
    """One process: every collective is the identity (what tests and single-machine scripts use)."""

    name = "local"

    def __init__(self, timeout: float):
        super().__init__(timeout)
        check_launcher(self.name, 1)


class MPIEngine(Engine):
    """MPI through mpi4py: blocking in-place collectives on the data, a watched nonblocking one on the header."""

    name = "mpi"
    _PING = 7301  # the tag of the "are you there" messages after a timeout

    def __init__(self, timeout: float):
        super().__init__(timeout)
        shared_memory = env("SLOPE_DISTRIBUTED_SHARED_MEMORY", True)
        try:
            from mpi4py import MPI
        except ImportError as error:
            raise SlopeDistributedError(
                "slope.distributed.init: the mpi engine needs mpi4py and an MPI library: "
                "`pip install slope-distributed[mpi]` (mpi4py and mpich), or engine='gloo' or 'local'"
            ) from error
        self.MPI, self.comm = MPI, MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self._ops = {"sum": MPI.SUM, "max": MPI.MAX}
        self.shared: SharedMemory | None = None
        check_launcher(self.name, self.size)
        if self.size > 1:
            _abort_on_uncaught_exception(self)
            node = self.comm.Split_type(MPI.COMM_TYPE_SHARED)  # (collective: every rank decides alike)
            if node.Get_size() == self.size and shared_memory:
                self.shared = SharedMemory(self, node)

    def all_reduce(self, buffer: np.ndarray, op: str) -> None:
        # blocking and in place: MPI.IN_PLACE reuses the caller's buffer; a rank that died shows up at the header
        self.comm.Allreduce(self.MPI.IN_PLACE, buffer, op=self._ops[op])

    def broadcast(self, buffer: np.ndarray, root: int) -> None:
        self.comm.Bcast(buffer, root=root)

    def header(self, header: np.ndarray, what: str) -> None:
        if self.shared is not None:
            return self.shared.header(header, what)
        request = self.comm.Iallreduce(self.MPI.IN_PLACE, header, op=self.MPI.MAX)
        self._wait(request, what)

    def _wait(self, request: Any, what: str) -> None:
        if request.Test():
            return
        deadline = time.monotonic() + self.timeout
        while not request.Test():
            if time.monotonic() > deadline:
                silent = self._silent_ranks(min(2.0, self.timeout))
                raise SlopeDistributedError(
                    f"slope.distributed: rank {self.rank} of {self.size} waited {self.timeout:g} s in {what}; "
                    f"rank{'s' if len(silent) > 1 else ''} {', '.join(map(str, silent)) or '(none named)'} did "
                    "not answer (exited early, crashed or stuck; ranks must make the same collective calls in the "
                    "same order). $SLOPE_DISTRIBUTED_TIMEOUT sets the wait"
                )
            time.sleep(0)  # (a yield: on a shared core the rank we wait for needs the CPU)

    def _silent_ranks(self, wait: float) -> list[int]:
        """After a timeout: ping every other rank; those that do not ping back within `wait` seconds."""
        token = np.zeros(1, np.int8)
        sends = [self.comm.Isend(token, dest=r, tag=self._PING) for r in self.others()]
        replies = {r: np.zeros(1, np.int8) for r in self.others()}
        receives = {r: self.comm.Irecv(replies[r], source=r, tag=self._PING) for r in self.others()}
        deadline = time.monotonic() + wait
        pending = dict(receives)
        while pending and time.monotonic() < deadline:
            pending = {r: q for r, q in pending.items() if not q.Test()}
            time.sleep(0.01)
        for request in [*sends, *pending.values()]:
            request.Cancel()
        return sorted(pending)

    def gather(self, value: Any) -> list:
        return self.comm.allgather(value)

    def barrier(self) -> None:
        self.header(np.zeros(1, np.int64), "barrier()")


class SharedMemory:
    """Reductions among ranks that all run on one machine, through MPI-3 shared memory: every rank packs its tree into
    its own segment of a shared window, and after one barrier each rank combines every segment, in rank order, straight
    into its result leaves. Every rank gets the same bits (those of one process adding the ranks' values in rank
    order), and the data is read once from where the other rank wrote it, with no copies through MPI's buffers.

    Two barriers per reduction keep it safe without locks: the header's, after which every rank has finished reading
    the previous reduction's segments, and the data's. Headers alternate between two slots for the same reason.
    """

    HEADER = 8  # int64 slots per rank and parity

    def __init__(self, engine: MPIEngine, comm: Any):
        self.engine, self.comm, self.rank = engine, comm, comm.Get_rank()
        self._header_window, headers = self._allocate(2 * self.HEADER * 8)
        self.headers = [h.view(np.int64).reshape(2, self.HEADER) for h in headers]
        self.parity = 0
        self.window: Any = None
        self.segments: list[np.ndarray] = []

    def _allocate(self, nbytes: int) -> tuple[Any, list[np.ndarray]]:
        MPI = self.engine.MPI
        window = MPI.Win.Allocate_shared(nbytes, 1, comm=self.comm)
        window.Lock_all(MPI.MODE_NOCHECK)  # (one passive epoch for the window's life; Sync orders the accesses)
        return window, [np.frombuffer(window.Shared_query(r)[0], np.uint8) for r in range(self.comm.Get_size())]

    def _barrier(self, window: Any, what: str) -> None:
        window.Sync()
        self.engine._wait(self.comm.Ibarrier(), what)
        window.Sync()

    def header(self, header: np.ndarray, what: str) -> None:
        """The elementwise maximum of a small int64 header over every rank, in place."""
        n, parity = len(header), self.parity
        self.headers[self.rank][parity, :n] = header
        self._barrier(self._header_window, what)
        for slots in self.headers:
            np.maximum(header, slots[parity, :n], out=header)
        self.parity ^= 1

    def _segments(self, nbytes: int) -> list[np.ndarray]:
        """Every rank's segment, at least nbytes long (call with the same nbytes on every rank: a new window is a
        collective call; the header check before it makes sure the trees and so their sizes agree)."""
        if not self.segments or len(self.segments[0]) < nbytes:
            if self.window is not None:
                self.window.Unlock_all()
                self.window.Free()
            capacity = max(nbytes, 2 * len(self.segments[0]) if self.segments else 0)  # (growth: few reallocations)
            self.window, self.segments = self._allocate(capacity)
        return self.segments

    def all_reduce(self, arrays: list[np.ndarray], targets: list[np.ndarray], op: str) -> None:
        """The sum or max over every rank of each array, written into its target (an array of the same shape and
        dtype). Each dtype's arrays are packed into one region of the segment, as one flat buffer."""
        regions, nbytes = [], 0
        for dtype in dict.fromkeys(a.dtype for a in arrays):
            indices = [i for i, a in enumerate(arrays) if a.dtype == dtype]
            size = sum(arrays[i].size for i in indices)
            regions.append((dtype, indices, nbytes, size))
            nbytes += (size * dtype.itemsize + 63) // 64 * 64  # (regions aligned for vector loads)
        if nbytes == 0:
            return
        segments = self._segments(nbytes)
        for dtype, indices, start, size in regions:
            flat = segments[self.rank][start : start + size * dtype.itemsize].view(dtype)
            np.concatenate([arrays[i].reshape(-1) for i in indices], out=flat)
        self._barrier(self.window, f"all_reduce of {len(arrays)} leaves")
        combine = np.maximum if op == "max" else np.add
        for dtype, indices, start, size in regions:
            parts = [segment[start : start + size * dtype.itemsize].view(dtype) for segment in segments]
            offset = 0
            for i in indices:
                end, out = offset + arrays[i].size, targets[i].reshape(-1)
                combine(parts[0][offset:end], parts[1][offset:end], out=out)
                for part in parts[2:]:
                    combine(out, part[offset:end], out=out)
                offset = end


def _abort_on_uncaught_exception(engine: MPIEngine) -> None:
    """An uncaught exception on one rank aborts them all (as `python -m mpi4py` does) instead of leaving the others
    waiting: the launcher then stops every rank and names this one."""
    previous = sys.excepthook

    def abort(kind: type, value: BaseException, traceback: Any) -> None:
        if previous is sys.__excepthook__:  # the traceback and the verdict in one write, then time to forward them:
            import traceback as tb  # the launcher passes output on asynchronously, and MPI_Abort tears it down

            sys.stderr.write("".join(tb.format_exception(kind, value, traceback)))
        else:
            previous(kind, value, traceback)
        print(f"slope.distributed: rank {engine.rank} of {engine.size} failed ({kind.__name__}); aborting every rank",
              file=sys.stderr, flush=True)  # fmt: skip
        time.sleep(0.5)
        engine.comm.Abort(1)

    sys.excepthook = abort


def _leave_gloo(engine: GlooEngine) -> None:
    """At exit, while the interpreter still runs: wait until gloo's worker threads have let go of the last collectives'
    tensors, then close the group. A worker that dropped one (a Python object) during the interpreter's finalization
    took the GIL there and aborted the rank ("terminate called without an active exception", signal 6); that happens
    when something else (PyTorch's DistributedDataParallel does) keeps the process group, and its threads, alive."""
    deadline = time.monotonic() + 5.0
    while any(tensor._use_count() > 1 for tensor in engine.held) and time.monotonic() < deadline:
        time.sleep(0.001)  # (the GIL released: a worker may need it to drop its reference)
    engine.held.clear()
    if engine.dist.is_initialized():  # (unless the program closed it itself)
        engine.dist.destroy_process_group()


class GlooEngine(Engine):
    """torch.distributed's gloo backend on CPU tensors that share the NumPy buffers' memory."""

    name = "gloo"

    def __init__(self, timeout: float):
        super().__init__(timeout)
        try:
            import torch
            import torch.distributed as torch_dist
        except ImportError as error:
            raise SlopeDistributedError(
                "slope.distributed.init: the gloo engine needs PyTorch: `pip install slope-distributed[gloo]`"
            ) from error
        import datetime

        self.torch, self.dist = torch, torch_dist
        if not torch_dist.is_initialized():
            placed = launcher_rank_and_size() or (0, 1)
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", "29500")
            try:
                torch_dist.init_process_group(
                    "gloo",
                    rank=placed[0],
                    world_size=placed[1],
                    timeout=datetime.timedelta(seconds=min(timeout, 10**9)),  # (inf: ~30 years)
                )
            except RuntimeError as error:  # (torch's DistStoreError, DistNetworkError)
                if "timed out" not in str(error).lower():
                    raise
                raise SlopeDistributedError(
                    f"slope.distributed.init: the gloo engine's rank {placed[0]} of {placed[1]} waited {timeout:g} s "
                    f"for the other ranks to meet at {os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} "
                    "($MASTER_ADDR:$MASTER_PORT): another rank did not start, or started later than the timeout "
                    "(still importing or compiling, queued), or was given another address or port. The timeout bounds "
                    "this first meeting too: raise it with $SLOPE_DISTRIBUTED_TIMEOUT or init(timeout=...) "
                    f"(torch: {str(error).splitlines()[0]})"
                ) from error
        import atexit

        atexit.register(_leave_gloo, self)  # (also for a group the program started: its workers hold our tensors)
        self.rank, self.size = torch_dist.get_rank(), torch_dist.get_world_size()
        self._ops = {"sum": torch_dist.ReduceOp.SUM, "max": torch_dist.ReduceOp.MAX}
        self.held: collections.deque = collections.deque(maxlen=16 + self.size)  # the last collectives' tensors (a
        # gather holds size + 1), which _leave_gloo waits for the workers to drop

    def _run(self, what: str, collective: Any, *args: Any, **kwargs: Any) -> None:
        for tensors in args:
            self.held.extend(tensors if isinstance(tensors, list) else [tensors])
        try:
            collective(*args, **kwargs)
        except RuntimeError as error:  # gloo: a closed connection (a rank died) or its timeout
            others = self.others()
            who = f"rank {others[0]}" if len(others) == 1 else f"one of ranks {', '.join(map(str, others))}"
            raise SlopeDistributedError(
                f"slope.distributed: rank {self.rank} of {self.size}: {what} failed: {who} did not answer (it died, "
                f"or is stuck past the {self.timeout:g} s timeout) (gloo: {str(error).splitlines()[0]})"
            ) from error

    # gloo reduces no int16, uint16, uint32 or uint64 ("Invalid scalar type", reported as a dead rank): the first three
    # in a wider signed type, wrapped back; uint64 as int64, its sign bit flipped for max (the order kept; a sum wraps
    # to the same bits either way)
    _wider = {np.dtype(np.int16): np.int32, np.dtype(np.uint16): np.int32, np.dtype(np.uint32): np.int64}

    def all_reduce(self, buffer: np.ndarray, op: str) -> None:
        if buffer.dtype in self._wider:
            wide = buffer.astype(self._wider[buffer.dtype])
            self.all_reduce(wide, op)
            buffer[...] = wide.astype(buffer.dtype)
            return
        if buffer.dtype == np.uint64:
            flip = np.uint64(2**63 if op == "max" else 0)
            signed = (buffer ^ flip).view(np.int64)
            self.all_reduce(signed, op)
            buffer[...] = signed.view(np.uint64) ^ flip
            return
        self._run("all_reduce", self.dist.all_reduce, self.torch.from_numpy(buffer), op=self._ops[op])

    def broadcast(self, buffer: np.ndarray, root: int) -> None:
        self._run("broadcast", self.dist.broadcast, self.torch.from_numpy(buffer), src=root)

    def header(self, header: np.ndarray, what: str) -> None:
        self._run(what, self.dist.all_reduce, self.torch.from_numpy(header), op=self._ops["max"])

    def gather(self, value: Any) -> list:
        mine = np.frombuffer(pickle.dumps(value), np.uint8)  # (not all_gather_object: its tensors are not held)
        sizes = np.zeros(self.size, np.int64)
        sizes[self.rank] = mine.size
        self.all_reduce(sizes, "sum")
        rows = np.zeros((self.size, sizes.max()), np.uint8)
        rows[self.rank, : mine.size] = mine
        self._run("gather", self.dist.all_gather, [self.torch.from_numpy(row) for row in rows],
                  self.torch.from_numpy(rows[self.rank].copy()))  # fmt: skip
        return [pickle.loads(row[:size].tobytes()) for row, size in zip(rows, sizes)]

    def barrier(self) -> None:
        self.header(np.zeros(1, np.int64), "barrier()")


ENGINES = {"mpi": MPIEngine, "gloo": GlooEngine, "local": LocalEngine}
