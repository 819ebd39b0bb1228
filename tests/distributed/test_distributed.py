"""slope-distributed: the collectives and data_parallel in one process (engine "local"), and under `mpiexec -n 2`
(tests/distributed/ranks.py) with the mpi engine and, where PyTorch is installed, gloo.

The two-rank runs check: 20 SGD steps bitwise equal to one process summing the shards' gradients in rank order,
close to full-batch training (rtol 1e-5) and identical on every rank; train_step on a BatchNorm model gives every rank
rank 0's running statistics (PyTorch's DDP), bitwise one process's, close to torch's DDP under gloo; collectives on
mixed trees; trees that differ between ranks and a rank that leaves or crashes are errors naming the rank, within a
timeout, never a hang.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import slope
import slope.nn as nn

dist = pytest.importorskip("slope.distributed", reason="slope-distributed is not installed")

RANKS = Path(__file__).with_name("ranks.py")
MPIEXEC = shutil.which("mpiexec", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
BACKENDS = [name for name in ("numpy", "onnxruntime") if name in slope.plugins.backends]
needs_mpi = pytest.mark.skipif(
    MPIEXEC is None or importlib.util.find_spec("mpi4py") is None,
    reason="needs mpi4py and mpiexec: pip install slope-distributed[mpi]",
)


def launch(scenarios: str, timeout: float = 240, **env: str) -> tuple[subprocess.CompletedProcess, float]:
    """mpiexec -n 2 ranks.py SCENARIOS: (the finished process, seconds); a hang fails the test at the timeout."""
    # generous bounds: on a loaded CI machine one rank may compile for many seconds while the other waits
    environment = {**os.environ, "RANKS_TIMEOUT": "120", "SLOPE_DISTRIBUTED_ENGINE": "mpi", **env}
    for name in [n for n in environment if n.startswith(("PMI_", "OMPI_", "SLURM_"))]:  # (pytest run under a launcher)
        del environment[name]
    start = time.perf_counter()
    try:
        result = subprocess.run([MPIEXEC, "-n", "2", sys.executable, str(RANKS), scenarios], capture_output=True,
                                text=True, timeout=timeout, env=environment)  # fmt: skip
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"mpiexec -n 2 {scenarios} hung for {timeout} s:\n{error.stdout}\n{error.stderr}")
    return result, time.perf_counter() - start


def assert_ok(result: subprocess.CompletedProcess, scenarios: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    for scenario in scenarios.split(","):
        for rank in (0, 1):
            assert f"OK {scenario} rank {rank}" in result.stdout, output[-5000:]


def free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


# ----------------------------------------------------------------------------------------------- two ranks


@needs_mpi
def test_two_ranks_mpi():
    """Training (each backend), collectives, mismatched trees and checkpoints under mpiexec -n 2, one launch."""
    scenarios = ",".join([f"{s}:{b}" for s in ("train", "buffers") for b in BACKENDS]
                         + ["collectives", "dtypes", "mismatch", "checkpoint"])  # fmt: skip
    result, _ = launch(scenarios)
    assert_ok(result, scenarios)
    for rank in (0, 1):  # the error names the rank and the leaf that differ, on every rank
        assert (
            f"error on rank {rank}: slope.distributed.all_reduce: the ranks passed different trees: rank 1's "
            "leaf 0.weight is float64 of shape (16, 12) where rank 0's leaf 0.weight is float32"
        ) in result.stdout


@needs_mpi
def test_two_ranks_mpi_without_shared_memory():
    """The same through MPI_Allreduce, the path of ranks on several machines ($SLOPE_DISTRIBUTED_SHARED_MEMORY=off, or
    0/false/no, takes it on one machine): bitwise the same training, the same dtype semantics, the same errors."""
    scenarios = ",".join(
        [f"{s}:{b}" for s in ("train", "buffers") for b in BACKENDS] + ["collectives", "dtypes", "mismatch"]
    )
    result, _ = launch(scenarios, SLOPE_DISTRIBUTED_SHARED_MEMORY="off")
    assert_ok(result, scenarios)
    assert "leaf 0.weight is float64 of shape (16, 12)" in result.stdout


@needs_mpi
def test_two_ranks_gloo():
    """The same training and collectives with torch.distributed's gloo engine (launched by mpiexec)."""
    pytest.importorskip("torch")
    scenarios = ",".join(
        [f"{s}:{b}" for s in ("train", "buffers") for b in BACKENDS]
        + ["collectives", "dtypes", "mismatch", "exit_race"]
    )
    result, _ = launch(scenarios, SLOPE_DISTRIBUTED_ENGINE="gloo", MASTER_PORT=free_port())
    assert_ok(result, scenarios)


@needs_mpi
@pytest.mark.parametrize("engine", ["mpi", "gloo"])
def test_a_rank_that_leaves_is_an_error_naming_it(engine):
    """Rank 1 exits before a reduction: rank 0 fails with an error naming rank 1 within the timeout (5 s)."""
    if engine == "gloo":
        pytest.importorskip("torch")
    result, seconds = launch("dead", RANKS_TIMEOUT="5", SLOPE_DISTRIBUTED_ENGINE=engine, MASTER_PORT=free_port())
    assert_ok(result, "dead")
    assert "rank 1 did not answer" in result.stdout
    assert seconds < 90  # (three waits of 5 s: all_reduce, save, load)


@needs_mpi
def test_a_rank_that_crashes_stops_every_rank():
    """Rank 1 raises: its traceback, a line naming it, and every rank aborted at once (not after the timeout)."""
    result, seconds = launch("crash", RANKS_TIMEOUT="120")
    assert result.returncode != 0
    assert "RuntimeError: rank 1 crashes on purpose" in result.stderr
    assert "slope.distributed: rank 1 of 2 failed (RuntimeError); aborting every rank" in result.stderr
    assert "went on although" not in result.stderr and seconds < 60


# ----------------------------------------------------------------------------------------------- one process


@pytest.fixture(autouse=True)
def local_engine(monkeypatch):
    """In-process tests run on the local engine (one rank), whatever is installed."""
    from slope_distributed import collectives

    monkeypatch.setitem(collectives._state, "engine", None)
    monkeypatch.setenv("SLOPE_DISTRIBUTED_ENGINE", "local")
    for name in [n for n in os.environ if n.startswith(("PMI_", "OMPI_", "SLURM_"))]:
        monkeypatch.delenv(name)


def test_import_paths():
    import slope_distributed

    assert slope.distributed is slope_distributed and dist is slope_distributed
    assert "all_reduce" in slope.plugins.operators
    assert (dist.rank(), dist.world_size(), dist.engine().name) == (0, 1, "local")


def test_local_collectives_are_identities():
    tree = {"w": slope.tensor([1.0, 2.0]), "n": np.arange(3), "s": 2.5}
    for op in ("sum", "mean", "max"):
        if op == "mean":
            tree = {"w": tree["w"], "s": 2.5}
        assert dist.all_reduce(tree, op=op) is tree
    assert dist.broadcast(tree) is tree
    dist.barrier()
    x, y = dist.shard(np.arange(10), np.arange(10) * 2)
    assert x.tolist() == list(range(10)) and y.tolist() == list(range(0, 20, 2))


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"slope.distributed.all_reduce: op must be one of \('sum', 'mean', 'max'\)"):
        dist.all_reduce([slope.ones(2)], op="min")
    with pytest.raises(slope.DTypeError, match=r"op='mean' needs floating-point leaves; leaf 1 is int64 \(3,\)"):
        dist.all_reduce([slope.ones(2), np.arange(3)], op="mean")
    with pytest.raises(ValueError, match="unknown engine 'nccl'"):
        dist.init("nccl")
    with pytest.raises(ValueError, match="different lengths"):
        dist.shard(np.arange(3), np.arange(4))
    with pytest.raises(TypeError, match="slope.distributed.all_reduce: leaves must be tensors"):
        dist.all_reduce(["text"])


@pytest.mark.parametrize(
    "leaf",
    [np.array(["a", "b"]), np.array([1 + 2j]), np.array([{}], object), np.array(["2024-01-01"], "datetime64[D]"),
     np.longdouble(1.5), np.str_("text")],
    ids=["str", "complex", "object", "datetime", "longdouble", "str-scalar"],
)  # fmt: skip
def test_numpy_leaves_of_other_dtypes_are_refused(leaf):
    """all_reduce and broadcast took any NumPy array: strings were summed through shared memory, MPI raised a bare
    KeyError, one process returned them as they were. Now an error naming the call, the dtype and those allowed."""
    dtype = re.escape(str(np.asarray(leaf).dtype))
    for call, where in ((dist.all_reduce, "all_reduce"), (dist.psum, "all_reduce"), (dist.broadcast, "broadcast")):
        with pytest.raises(slope.DTypeError, match=rf"slope.distributed.{where}: a NumPy leaf of dtype {dtype} and "
                           r"shape .*expected one of bool, int8, .*bfloat16, float32, float64$"):  # fmt: skip
            call({"w": np.ones(2, np.float32), "bad": leaf})


def test_collectives_give_tensors_on_the_inputs_backend(monkeypatch):
    """A reduction or broadcast over ranks made bfloat16 tensors of onnxruntime, and every tensor of iree (backends
    that lend no writable memory), on the active backend: they came back as numpy tensors. Now every result is on its
    input's backend and device, as float32 onnxruntime tensors were. (One process posing as rank 0 of 2: the local
    engine moves nothing, so a sum gives the input's values and a mean half of them, through the same code.)"""
    from slope_distributed import collectives

    monkeypatch.setattr(collectives.engine(), "size", 2)
    names = [name for name in slope.plugins.backends if name != "numpy"]
    tree = {}
    for name in names:
        with slope.use_backend(name):
            tree[name] = (slope.tensor([1.0, -2.0]).astype(slope.bfloat16), slope.tensor([3.0, 4.0]))
    with slope.use_backend("numpy"):
        for got, scale in ((dist.psum(tree), 1.0), (dist.pmean(tree), 0.5), (dist.broadcast(tree, root=1), 1.0)):
            for name in names:
                for out, leaf in zip(got[name], tree[name]):
                    assert (out.backend.name, out.device, out.dtype) == (name, leaf.device, leaf.dtype), (name, out)
                    assert out.tolist() == [v * scale for v in leaf.tolist()], (name, out)


def plain_environment(**env: str) -> dict[str, str]:
    """This process's environment without any launcher's or engine's variables, plus `env`."""
    launched = ("PMI_", "PMIX_", "OMPI_", "SLURM_", "SLOPE_DISTRIBUTED_")
    names = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"}
    return {**{k: v for k, v in os.environ.items() if not k.startswith(launched) and k not in names}, **env}


def test_torchrun_ranks_run_on_gloo_by_default():
    """Two processes started as torchrun starts them ($RANK, $WORLD_SIZE, $MASTER_PORT; no MPI launcher): init()
    picks gloo and they form one group of 2. (With mpi4py installed the default was mpi, an MPI singleton: both
    processes said rank 0 of 1 and trained on all the data, silently.)"""
    pytest.importorskip("torch")
    code = (
        "import slope, slope.distributed as dist; dist.init(); "
        "print('RESULT', dist.engine().name, dist.rank(), dist.world_size(), dist.shard(slope.arange(4)).tolist(), "
        "dist.all_reduce(slope.ones(2) * (dist.rank() + 1)).tolist())"
    )
    port = free_port()
    ranks = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         env=plain_environment(RANK=str(r), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=port))
        for r in (0, 1)
    ]  # fmt: skip
    outputs = [rank.communicate(timeout=240)[0] for rank in ranks]
    for r, output in enumerate(outputs):
        assert f"RESULT gloo {r} 2 {[2 * r, 2 * r + 1]} [3.0, 3.0]" in output, output[-3000:]


SPAWNED = """
import sys, numpy as np, torch.distributed as td
rank, mode = int(sys.argv[1]), sys.argv[2]
td.init_process_group("gloo", rank=rank, world_size=2)  # as under mp.spawn: no $RANK, no $WORLD_SIZE
import slope, slope.distributed as dist, slope.nn as nn
if mode == "pmean":  # the first Slope call a reduction, before anything started Slope's engine
    try:  # an engine that is not on that group
        dist.init("local")
    except dist.SlopeDistributedError as error:
        print("REFUSED", "started a torch.distributed process group of 2 (this is its rank" in str(error), flush=True)
    print("RESULT", dist.pmean(slope.tensor([1.0, 2.0]) * (rank + 1)).tolist(), dist.engine().name, flush=True)
else:  # train_step first: traced before the engine ran, then reused
    slope.manual_seed(0)
    model, optimizer = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2)), nn.SGD(0.1)
    state, step = optimizer.init(model), dist.train_step(lambda m, x, y: nn.cross_entropy(m(x), y), optimizer)
    y = slope.tensor(np.arange(4) % 2)
    for i in range(2):
        x = slope.tensor(np.random.default_rng(10 * i + rank).standard_normal((4, 3)).astype(np.float32))
        own = nn.apply(model, x)[1][1].running_mean.numpy()  # this rank's own update of the statistics
        model, state, _ = step(model, state, x, y)
        every, owns = [None, None], [None, None]
        td.all_gather_object(every, [leaf.numpy().tobytes() for leaf in slope.tree.leaves(model)])
        td.all_gather_object(owns, own.tobytes())
        print("RESULT", i, every[0] == every[1], model[1].running_mean.numpy().tobytes() == owns[0], flush=True)
td.barrier()
"""


def test_a_process_group_the_program_started_is_the_world():
    """PyTorch's mp.spawn pattern: each process starts a gloo group of 2 itself (rank and size as arguments, none of a
    launcher's variables). Slope saw one process until something started its engine: the first pmean returned each
    rank's own values, a first train_step trained every rank on its own and kept its "rank 0 of 1" trace (BatchNorm
    statistics then summed over the ranks). Now such a group is the world, on the gloo engine by default."""
    pytest.importorskip("torch")
    ranks = []
    for mode in ("pmean", "train"):
        port = free_port()
        ranks += [
            subprocess.Popen([sys.executable, "-c", SPAWNED, str(r), mode], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True,
                             env=plain_environment(MASTER_ADDR="127.0.0.1", MASTER_PORT=port))
            for r in (0, 1)
        ]  # fmt: skip
    outputs = [rank.communicate(timeout=240)[0] for rank in ranks]
    for output in outputs[:2]:
        assert "REFUSED True" in output and "RESULT [1.5, 3.0] gloo" in output, output[-3000:]
    for output in outputs[2:]:  # identical models, rank 0's own running statistics, at both steps
        assert "RESULT 0 True True" in output and "RESULT 1 True True" in output, output[-3000:]


@pytest.mark.skipif(importlib.util.find_spec("mpi4py") is None, reason="needs mpi4py")
def test_an_mpi_group_that_is_not_the_launchers_is_an_error():
    """One process that a launcher says is rank 1 of 2 (torchrun's or Slurm's variables: srun without PMI) makes an
    MPI singleton, rank 0 of 1: init raises, naming both sizes and the fix, instead of training alone on all the data.
    One plain process tries each case (no mpiexec needed); a bad $SLOPE_DISTRIBUTED_SHARED_MEMORY is an error too."""
    code = """
import os, slope.distributed as dist
cases = [({"RANK": "1", "WORLD_SIZE": "2"}, "mpi"),
         ({"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_STEP_NUM_TASKS": "2"}, None),
         ({"SLOPE_DISTRIBUTED_SHARED_MEMORY": "maybe"}, "mpi"),
         ({"SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_STEP_NUM_TASKS": "1"}, None),
         ({"SLURM_PROCID": "0", "SLURM_NTASKS": "4"}, None)]  # (sbatch's batch script, no srun step: one process)
for env, engine in cases:
    os.environ.update(env)
    try:
        dist.init(engine)
        print("CASE", env, "rank", dist.rank(), "of", dist.world_size(), dist.engine().name)
    except Exception as error:
        print("CASE", env, type(error).__name__, error)
    for name in env:
        del os.environ[name]
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env=plain_environment())  # fmt: skip
    lines = [line for line in result.stdout.splitlines() if line.startswith("CASE")]
    assert len(lines) == 5, result.stdout + result.stderr
    assert "SlopeDistributedError slope.distributed.init: the mpi engine's group has 1 process but the launcher " \
        "started 2 ($WORLD_SIZE=2, $RANK=1): every process would run alone" in lines[0]  # fmt: skip
    assert "gloo engine (SLOPE_DISTRIBUTED_ENGINE=gloo" in lines[0] and "with WORLD_SIZE=1" in lines[0]
    assert "group has 1 process but the launcher started 2 ($SLURM_STEP_NUM_TASKS=2, $SLURM_PROCID=1)" in lines[1]
    assert "`srun --mpi=pmi2` (or `--mpi=pmix`" in lines[1] and "(or with srun -n 1, or a plain `python`" in lines[1]
    assert "SlopeConfigError $SLOPE_DISTRIBUTED_SHARED_MEMORY='maybe': expected 1/true/yes/on" in lines[2]
    assert lines[3].endswith("rank 0 of 1 mpi") and lines[4].endswith("rank 0 of 1 mpi"), lines[3:]


def test_the_local_engine_under_a_launcher_of_several_ranks_is_an_error(monkeypatch):
    """engine='local' where the launcher started 2 processes: each would train alone on all the data; init says so
    and how to run one process on purpose. One process (WORLD_SIZE=1) is fine."""
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(dist.SlopeDistributedError, match=r"local engine's group has 1 process but the launcher started "
                       r"2 \(\$WORLD_SIZE=2, \$RANK=1\).*gloo engine under torchrun.*with WORLD_SIZE=1"):  # fmt: skip
        dist.init("local")
    monkeypatch.setenv("WORLD_SIZE", "x")
    with pytest.raises(dist.SlopeDistributedError, match=r"\$RANK='1' and \$WORLD_SIZE='x' are not a rank and a world"):
        dist.init("local")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    dist.init("local")
    assert (dist.rank(), dist.world_size()) == (0, 1)


def test_a_batch_scripts_plain_python_under_slurm_is_one_process(monkeypatch):
    """sbatch sets SLURM_PROCID=0 and the allocation's SLURM_NTASKS for the batch script itself: its plain `python
    train.py` (no srun step) was refused as "rank 0 of 4" ("start it ... with SLURM_NTASKS=1"). Only srun's step
    (SLURM_STEP_NUM_TASKS) makes ranks now; a step of 2 on a group of 1 is still an error, with the right advice."""
    from slope_distributed import collectives, engines

    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert engines.launcher_rank_and_size() is None and collectives.alone()
    dist.init("local")
    assert (dist.rank(), dist.world_size()) == (0, 1)
    monkeypatch.setitem(collectives._state, "engine", None)
    monkeypatch.setenv("SLURM_PROCID", "1")
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "2")
    with pytest.raises(dist.SlopeDistributedError, match=r"local engine's group has 1 process but the launcher started "
                       r"2 \(\$SLURM_STEP_NUM_TASKS=2, \$SLURM_PROCID=1\).*Use the mpi engine under mpiexec or srun.*"
                       r"\(or with srun -n 1, or a plain `python` in the batch script\)$"):  # fmt: skip
        dist.init("local")


def test_torchrun_without_pytorch_is_an_error(monkeypatch):
    """torchrun's variables and no MPI launcher's: the default engine is gloo; without PyTorch, an error saying so."""
    from slope_distributed import collectives

    monkeypatch.delenv("SLOPE_DISTRIBUTED_ENGINE")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    if importlib.util.find_spec("torch") is not None:
        assert collectives._default_engine() == "gloo"
    monkeypatch.setitem(sys.modules, "torch", None)  # (find_spec: not installed)
    with pytest.raises(dist.SlopeDistributedError, match=r"torchrun started this process \(rank 1 of 2.*not installed"):
        dist.init()
    if importlib.util.find_spec("mpi4py") is not None:  # under mpiexec, $RANK is not torchrun's: the mpi engine
        monkeypatch.setenv("PMI_RANK", "1")
        monkeypatch.setenv("PMI_SIZE", "2")
        assert collectives._default_engine() == "mpi"


@pytest.mark.parametrize("value", ["abc", "-5", "nan", "0"])
def test_a_bad_timeout_is_an_error(monkeypatch, value):
    # 0 passed the checks and made every wait fail at once ("waited 0 s" on mpi, a raw DistStoreError on gloo)
    monkeypatch.setenv("SLOPE_DISTRIBUTED_TIMEOUT", value)
    with pytest.raises(
        slope.errors.SlopeConfigError, match=rf"\$SLOPE_DISTRIBUTED_TIMEOUT='{value}': expected a number"
    ):
        dist.init("local")
    monkeypatch.setenv("SLOPE_DISTRIBUTED_TIMEOUT", "2.5")
    dist.init("local")
    assert dist.engine().timeout == 2.5
    with pytest.raises(ValueError, match=r"slope.distributed.init: timeout must be a number of seconds > 0, got 'abc'"):
        dist.init("local", timeout="abc")  # type: ignore[arg-type]
    for bad in (-1, 0):
        with pytest.raises(ValueError, match=f"timeout must be a number of seconds > 0, got {bad}"):
            dist.init("local", timeout=bad)


def make_model() -> nn.Module:
    slope.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


def loss_fn(model, x, y):
    return nn.cross_entropy(model(x), y)


@pytest.mark.parametrize("backend", BACKENDS)
def test_data_parallel_splits_around_pmean_and_matches_jit(backend):
    """One rank: the split step gives exactly what the plain jitted step gives; the program is cut in two."""
    optimizer = nn.Adam(1e-2)
    rng = np.random.default_rng(0)
    x, y = slope.tensor(rng.standard_normal((16, 6)).astype(np.float32)), slope.tensor(rng.integers(0, 3, 16))

    def step(model, state, x, y):
        loss, grads = slope.value_and_grad(loss_fn)(model, x, y)
        grads = dist.pmean(grads)
        model, state = optimizer.step(model, grads, state)
        return model, state, loss

    with slope.use_backend(backend):
        model = make_model()
        state = optimizer.init(model)
        parallel, plain = dist.data_parallel(slope.jit(step)), slope.jit(step)
        split = parallel.lower(model, state, x, y)
        assert len(split.programs) == 2 and split.reduction_count == 1
        assert all("all_reduce" not in str(p) for p in split.programs)
        a = b = (model, state)
        built = dist.train_step(loss_fn, optimizer)
        c = (model, state)
        for _ in range(3):
            *a, loss_a = parallel(*a, x, y)
            *b, loss_b = plain(*b, x, y)
            *c, _ = built(*c, x, y)
        for u, v, w in zip(slope.tree.leaves(a), slope.tree.leaves(b), slope.tree.leaves(c)):
            assert np.array_equal(u.numpy(), v.numpy()) and np.array_equal(u.numpy(), w.numpy())
        assert loss_a.item() == loss_b.item()


@pytest.mark.parametrize("backend", BACKENDS)
def test_train_step_updates_a_models_buffers(backend):
    """One rank: train_step keeps BatchNorm's running statistics and its int64 num_batches_tracked as a jitted step
    through nn.apply does (it dropped them: the gradient's copy of the model was updated, and an int64 leaf failed)."""
    optimizer = nn.SGD(0.1, momentum=0.9)
    rng = np.random.default_rng(0)
    x, y = slope.tensor(rng.standard_normal((16, 6)).astype(np.float32)), slope.tensor(rng.integers(0, 3, 16))

    def applied(model, x, y):
        out, model = nn.apply(model, x)
        return nn.cross_entropy(out, y), model

    @slope.jit
    def reference(model, state, x, y):
        (loss, updated), grads = nn.value_and_grad(applied, has_aux=True)(model, x, y)
        model, state = optimizer.step(model, grads, state)
        kinds = [kind for _, kind in nn.leaf_kinds(model)]
        mixed = [
            b if k == "buffer" else a for a, b, k in zip(slope.tree.leaves(model), slope.tree.leaves(updated), kinds)
        ]
        return slope.tree.unflatten(slope.tree.structure(model), mixed), state, loss

    with slope.use_backend(backend):
        slope.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 4),
                              nn.BatchNorm1d(4, momentum=None), nn.Linear(4, 3))  # fmt: skip
        a = b = (model, optimizer.init(model))
        step = dist.train_step(loss_fn, optimizer)
        for _ in range(3):
            *a, loss_a = step(*a, x, y)
            *b, loss_b = reference(*b, x, y)
        assert a[0][4].num_batches_tracked.item() == 3 and a[0][4].num_batches_tracked.dtype == slope.int64
        assert not np.array_equal(a[0][1].running_mean.numpy(), np.zeros(8, np.float32))
        for u, v in zip(slope.tree.leaves(a), slope.tree.leaves(b)):
            assert u.dtype == v.dtype and np.array_equal(u.numpy(), v.numpy())
        assert loss_a.item() == loss_b.item()


def applied_once(model, x, y, key):
    return nn.cross_entropy(nn.apply(model, x, key=key)[0], y)  # (the model nn.apply returns is not returned)


def applied_twice(model, x, y, key):
    first, model = nn.apply(model, x[:8], key=key)  # two forward passes, the second on the model the first returned
    second, _ = nn.apply(model, x[8:], key=key)
    return (nn.cross_entropy(first, y[:8]) + nn.cross_entropy(second, y[8:])) / 2.0


@pytest.mark.parametrize("loss", [applied_once, applied_twice])
def test_train_step_keeps_the_buffers_of_nn_apply_in_the_loss(loss):
    """One rank: a loss_fn that calls the model through nn.apply (the way to feed Dropout keys) and drops the model it
    returns: train_step kept BatchNorm's running statistics at zeros (it saw only direct updates of its model). Now
    nn.apply reports its copy's buffers to train_step: PyTorch's running statistics after 3 steps, float64 to 1e-12."""
    torch = pytest.importorskip("torch")
    slope.manual_seed(5)
    f64 = slope.float64
    model = nn.Sequential(nn.Linear(4, 5, dtype=f64), nn.BatchNorm1d(5, dtype=f64), nn.ReLU(),
                          nn.Linear(5, 3, dtype=f64), nn.BatchNorm1d(3, momentum=None, dtype=f64))  # fmt: skip
    theirs = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.BatchNorm1d(5), torch.nn.ReLU(),
                                 torch.nn.Linear(5, 3), torch.nn.BatchNorm1d(3, momentum=None)).double()  # fmt: skip
    with torch.no_grad():
        for name, value in model.state_dict().items():
            theirs.state_dict()[name].copy_(torch.from_numpy(np.array(value.numpy())))
    optimizer, torch_optimizer = nn.SGD(0.1), torch.optim.SGD(theirs.parameters(), lr=0.1)
    step, state = dist.train_step(loss, optimizer), optimizer.init(model)
    generator = np.random.default_rng(6)
    for i in range(3):
        x, y = generator.standard_normal((16, 4)) * 2.0 + 3.0, generator.integers(0, 3, 16)
        model, state, _ = step(model, state, slope.tensor(x), slope.tensor(y), slope.random.key(i))
        torch_optimizer.zero_grad()
        tx, ty, cross_entropy = torch.from_numpy(x), torch.from_numpy(y), torch.nn.functional.cross_entropy
        if loss is applied_once:
            cross_entropy(theirs(tx), ty).backward()
        else:
            first, second = theirs(tx[:8]), theirs(tx[8:])
            ((cross_entropy(first, ty[:8]) + cross_entropy(second, ty[8:])) / 2).backward()
        torch_optimizer.step()
    reference = theirs.state_dict()
    for name, value in model.state_dict().items():
        np.testing.assert_allclose(value.numpy(), reference[name].numpy(), rtol=1e-12, atol=1e-12, err_msg=name)
    assert model[4].num_batches_tracked.item() == (3 if loss is applied_once else 6)


def squares(tree) -> slope.Tensor:
    return sum((leaf**2).sum() for leaf in slope.tree.leaves(tree) if leaf.dtype.is_float)


def penalised(model, x, y):  # a gradient penalty: slope.grad runs a second forward pass on its own copy of the model
    return nn.cross_entropy(model(x), y) + 0.0 * squares(slope.grad(lambda m: nn.cross_entropy(m(x), y))(model))


def penalised_by_nn_apply(model, x, y):
    penalty = squares(slope.grad(lambda m: nn.cross_entropy(nn.apply(m, x)[0], y))(model))
    return nn.cross_entropy(model(x), y) + 0.0 * penalty


def per_example(model, x, y):
    return nn.cross_entropy(slope.vmap(lambda m, a: m(a), in_axes=(None, 0))(model, x[None])[0], y)


def penalised_in_eval_mode(model, x, y):  # the penalty's pass reads the running statistics: nothing to lose
    evaluated = slope.tree.unflatten(*reversed(slope.tree.flatten(model))).eval()  # (a copy: model stays training)
    return nn.cross_entropy(model(x), y) + 0.0 * squares(slope.grad(lambda m: nn.cross_entropy(m(x), y))(evaluated))


@pytest.mark.parametrize("loss", [penalised, penalised_by_nn_apply, per_example, penalised_in_eval_mode])
def test_train_step_refuses_buffer_updates_in_a_nested_transformation(loss):
    """A loss_fn that runs a training-mode BatchNorm inside a slope.grad or vmap of its own: train_step's block was
    open, so the layer updated the inner transformation's copy of the model and the running statistics lost that
    pass without a word (a gradient penalty's second pass: PyTorch's statistics see both). Now an error naming the
    layer; a nested pass in eval mode keeps PyTorch's statistics (float64, 1e-12, 2 steps)."""
    torch = pytest.importorskip("torch")
    slope.manual_seed(5)
    f64 = slope.float64
    model = nn.Sequential(
        nn.Linear(4, 5, dtype=f64), nn.BatchNorm1d(5, dtype=f64), nn.ReLU(), nn.Linear(5, 3, dtype=f64)
    )
    optimizer = nn.SGD(0.1)
    step, state = dist.train_step(loss, optimizer), optimizer.init(model)
    generator = np.random.default_rng(7)
    batches = [(generator.standard_normal((8, 4)) * 2.0 + 3.0, generator.integers(0, 3, 8)) for _ in range(2)]
    if loss is not penalised_in_eval_mode:
        which = r"slope\.nn\.apply: the model's buffers" if loss is penalised_by_nn_apply else r"slope\.nn\.BatchNorm1d"
        with pytest.raises(RuntimeError, match=which + r".*nested within a `buffer_updates\(\)` block.*would be lost"):
            step(model, state, *map(slope.tensor, batches[0]))
        return
    theirs = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.BatchNorm1d(5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    theirs.double()
    with torch.no_grad():
        for name, value in model.state_dict().items():
            theirs.state_dict()[name].copy_(torch.from_numpy(np.array(value.numpy())))
    torch_optimizer = torch.optim.SGD(theirs.parameters(), lr=0.1)
    for x, y in batches:
        model, state, _ = step(model, state, slope.tensor(x), slope.tensor(y))
        torch_optimizer.zero_grad()
        torch.nn.functional.cross_entropy(theirs(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        torch_optimizer.step()
    reference = theirs.state_dict()
    for name, value in model.state_dict().items():
        np.testing.assert_allclose(value.numpy(), reference[name].numpy(), rtol=1e-12, atol=1e-12, err_msg=name)


def test_train_step_refuses_two_buffer_updates_from_one_state():
    """Two nn.apply calls on the one model passed to loss_fn: one update of the statistics would be lost."""
    model = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5))
    optimizer = nn.SGD(0.1)

    def siamese(model, x, y):
        return nn.cross_entropy(nn.apply(model, x)[0], y) + nn.cross_entropy(nn.apply(model, x * 2.0)[0], y)

    x, y = slope.randn(8, 4), slope.tensor(np.zeros(8, np.int64))
    with pytest.raises(RuntimeError, match=r"updated twice from the same state.*one update would be lost"):
        dist.train_step(siamese, optimizer)(model, optimizer.init(model), x, y)


def test_train_step_takes_a_loss_with_aux():
    """A loss_fn returning (loss, aux) failed in train_step with slope.nn.value_and_grad's "the loss must be a scalar
    floating tensor, got tuple", naming a function the user never called and no way out. Now the error names
    train_step and has_aux=True, which returns (model, opt_state, (loss, aux)): the model and loss of the plain loss
    (bitwise), aux this rank's own logits (float32, 1e-6 against an eager call)."""
    model, optimizer = make_model(), nn.SGD(0.1)
    state, x, y = optimizer.init(model), slope.randn(4, 6), slope.tensor(np.arange(4) % 3)

    def with_logits(model, x, y):
        logits = model(x)
        return nn.cross_entropy(logits, y), {"logits": logits}

    with pytest.raises(TypeError, match=r"^slope.distributed.train_step\(with_logits\): loss_fn must return the loss, a "
                       r"scalar floating-point tensor, got a tuple of 2; .*train_step\(loss_fn, optimizer, has_aux=True\)"):  # fmt: skip
        dist.train_step(with_logits, optimizer)(model, state, x, y)
    with pytest.raises(TypeError, match=r"^slope.distributed.train_step\(loss_fn\): with has_aux=True, loss_fn must "
                       r"return \(loss, aux\), got a tensor \[f32\]$"):  # fmt: skip
        dist.train_step(loss_fn, optimizer, has_aux=True)(model, state, x, y)
    new, new_state, (loss, aux) = dist.train_step(with_logits, optimizer, has_aux=True)(model, state, x, y)
    plain, plain_state, plain_loss = dist.train_step(loss_fn, optimizer)(model, state, x, y)
    assert loss.item() == plain_loss.item()
    np.testing.assert_allclose(aux["logits"].numpy(), model(x).numpy(), rtol=1e-6, atol=1e-6)
    for a, b in zip(slope.tree.leaves((new, new_state)), slope.tree.leaves((plain, plain_state))):
        assert np.array_equal(a.numpy(), b.numpy())


def test_pmean_under_transforms_in_one_process():
    """With one rank the reduction is the identity under grad, vmap, jvp and jit."""
    f = lambda x: (dist.pmean(x * x) * 3.0).sum()  # noqa: E731
    x = slope.tensor([1.0, -2.0])
    assert slope.grad(f)(x).tolist() == [6.0, -12.0]
    assert slope.jit(slope.grad(f))(x).tolist() == [6.0, -12.0]
    assert slope.vmap(lambda r: dist.psum(r * 2.0))(slope.ones((2, 3))).tolist() == [[2.0] * 3] * 2
    _, tangent = slope.jvp(lambda v: dist.pmean(v), (x,), (slope.ones(2),))
    assert tangent.tolist() == [1.0, 1.0]
    with pytest.raises(slope.errors.TransformError, match="reduce='max' is not differentiable"):
        slope.grad(lambda v: dist.all_reduce(v, op="max").sum())(x)


def test_data_parallel_stages_that_read_earlier_pieces_and_other_leaves_by_bits():
    """A reduction at a later stage reading a value of an earlier piece raised KeyError; a non-tensor argument's
    cache key compared with == (np.float64 0.0 and -0.0, np.int64(2) and np.float64(2.0) shared one program)."""
    x = slope.tensor([1.0, 2.0])
    f = lambda v: dist.psum((dist.psum(v) * 2.0, v * 3.0))  # noqa: E731
    for got, want in zip(dist.data_parallel(f)(x), f(x)):
        assert got.tolist() == want.tolist()
    divide = dist.data_parallel(lambda v, s: dist.psum(v / s))
    assert divide(x, np.float64(0.0)).tolist() == [np.inf] * 2 and divide(x, np.float64(-0.0)).tolist() == [-np.inf] * 2
    ints = slope.tensor(np.array([3, 5], np.int32))
    scale = dist.data_parallel(lambda v, s: dist.psum(v * s))
    assert scale(ints, np.int64(2)).dtype == slope.int32 and scale(ints, np.float64(2.0)).dtype == slope.float32
    assert dist.all_reduce({}) == {} and dist.pmean(()) == ()


def test_data_parallel_without_pmean_runs_on_one_rank_only(monkeypatch):
    from slope_distributed import collectives

    step = dist.data_parallel(lambda x: x * 2.0)
    assert step(slope.ones(2)).tolist() == [2.0, 2.0]
    monkeypatch.setattr(collectives.engine(), "size", 2)
    with pytest.raises(dist.SlopeDistributedError, match=r"does not average its gradients.*dist\w*\.pmean\(grads\)"):
        dist.data_parallel(lambda x: x * 2.0)(slope.ones(2))


def test_ranks_on_one_machine_share_its_cpus(monkeypatch):
    """init() gives each of the ranks on this machine cpus // ranks backend threads, unless told otherwise."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    monkeypatch.setenv("MPI_LOCALNRANKS", "2")
    monkeypatch.delenv("SLOPE_ORT_THREADS", raising=False)
    dist.init("local")
    assert os.environ["SLOPE_ORT_THREADS"] == str(max(1, cpus // 2))
    from slope_distributed import collectives

    monkeypatch.setitem(collectives._state, "engine", None)
    monkeypatch.setenv("SLOPE_ORT_THREADS", "7")
    dist.init("local")
    assert os.environ["SLOPE_ORT_THREADS"] == "7"


def mnist_folder() -> Path | None:
    """$MNIST_DIR, else ../shared/data/mnist beside the repository (or a folder above it), else None."""
    if os.environ.get("MNIST_DIR") and Path(os.environ["MNIST_DIR"]).is_dir():
        return Path(os.environ["MNIST_DIR"])
    root = Path(__file__).resolve().parents[2]
    return next((p / "shared/data/mnist" for p in (root.parent, root.parent.parent) if (p / "shared/data/mnist").is_dir()),
                None)  # fmt: skip


@needs_mpi
@pytest.mark.slow
@pytest.mark.skipif(mnist_folder() is None, reason="no MNIST folder (../shared/data/mnist or $MNIST_DIR)")
def test_mnist_example_on_two_ranks_resumes_from_its_checkpoint(tmp_path):
    """The data-parallel example, short: 2 ranks train to identical models, write a checkpoint, resume from it."""
    example = Path(__file__).resolve().parents[2] / "examples" / "distributed" / "mnist_data_parallel.py"
    checkpoint = tmp_path / "run.safetensors"
    outputs = []
    for epochs in ("1", "2", "2"):  # the third run resumes after its last epoch: it trains nothing
        command = [MPIEXEC, "-n", "2", sys.executable, str(example), "--epochs", epochs, "--steps", "20",
                   "--checkpoint", str(checkpoint)]  # fmt: skip
        environment = {**os.environ, "MNIST_DIR": str(mnist_folder()), "SLOPE_DISTRIBUTED_ENGINE": "mpi"}
        result = subprocess.run(command, capture_output=True, text=True, timeout=240, env=environment)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        outputs.append(result.stdout)
    assert "final test accuracy" in outputs[0] and "the 2 ranks' models are identical" in outputs[0]
    assert "resumed from" in outputs[1] and "after epoch 1" in outputs[1] and "epoch 2: 20 steps" in outputs[1]
    assert "epoch 1: 20 steps" not in outputs[1]
    # (it printed "final test accuracy 0.0000": the loaded model was never evaluated)
    final = [line for output in outputs[1:] for line in output.splitlines() if "final test accuracy" in line]
    assert len(final) == 2 and final[0] == final[1] and "steps in" not in outputs[2], final


def test_data_parallel_keeps_a_jitted_steps_static_arguments(tmp_path):
    # data_parallel(slope.jit(f, static_argnums=1)) took only f: a static 0.1 was traced (float32's 0.1), a static
    # size could not reshape
    x = slope.tensor(np.array([1.0, 3.0]))
    scaled = slope.jit(lambda x, s: dist.psum(x * s), static_argnums=1)
    assert dist.data_parallel(scaled)(x, 0.1).tolist() == scaled(x, 0.1).tolist() == [0.1, 0.30000000000000004]
    rows = slope.jit(lambda x, n: dist.psum(x.reshape(n, 1)), static_argnames="n")
    assert dist.data_parallel(rows)(x, 2).shape == (2, 1)
    with pytest.raises(OverflowError, match="the Python int 9223372036854775813 does not fit int64"):
        dist.psum(2**63 + 5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_data_parallel_keeps_a_jitted_steps_donated_arguments(backend):
    """data_parallel(slope.jit(step, donate_argnums=0)) took only the function: the step no longer donated, so the old
    parameters stayed alive (their memory never went back to the backend). Now it donates as the jitted step does: the
    same results as without donation, the donated tensors refuse any later use, the others and an argument returned
    untouched stay usable."""

    def step(params, x):
        grads = dist.pmean(slope.grad(lambda p: ((x @ p[0] + p[1]).tanh() ** 2).sum())(params))
        return tuple(p - 0.1 * g for p, g in zip(params, grads)), params[1], x

    rng = np.random.default_rng(0)
    w, x = rng.standard_normal((3, 3)).astype(np.float32), rng.standard_normal((4, 3)).astype(np.float32)
    with slope.use_backend(backend):
        plain, parallel = dist.data_parallel(slope.jit(step)), dist.data_parallel(slope.jit(step, donate_argnums=0))
        kept = given = (slope.tensor(w), slope.zeros(3))
        xs = slope.tensor(x)
        for _ in range(2):
            kept, _, _ = plain(kept, xs)
            old, old_bias = given, given[1].tolist()
            given, bias, same_x = parallel(given, xs)
            with pytest.raises(slope.TransformError, match=r"this tensor was donated \(donate_argnums\)"):
                old[0].numpy()
            with pytest.raises(slope.TransformError, match="donated"):
                old[1] + 1.0
            assert bias.tolist() == old_bias and same_x is xs  # (returned untouched: a new tensor, not donated)
        for p, q in zip(kept, given):
            np.testing.assert_array_equal(p.numpy(), q.numpy())
        assert xs.numpy().shape == (4, 3) and parallel.donate_argnums == (0,)


def test_data_parallel_of_a_jitted_method_of_a_module():
    """data_parallel(slope.jit(trainer.step)) of an nn.Module's method: since slope.jit keeps the module apart (its
    argument 0), data_parallel called the unbound function without it ("missing 1 required positional argument")."""
    nn = pytest.importorskip("slope.nn")

    class Trainer(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = slope.tensor(2.0)

        def step(self, model, x, power):
            grads = dist.pmean(slope.grad(lambda m: (m(x) * self.scale).sum() ** power)(model))
            return model, grads, (model(x) * self.scale).sum()

    trainer, model, x = Trainer(), nn.Linear(2, 1), slope.ones((3, 2))
    expected = slope.jit(trainer.step, static_argnames="power")(model, x, power=2)
    got = dist.data_parallel(slope.jit(trainer.step, static_argnames="power"))(model, x, 2)  # (by position)
    assert got[2].item() == expected[2].item()
    for a, b in zip(slope.tree.leaves(got[1]), slope.tree.leaves(expected[1])):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6)


def test_data_parallel_of_a_jitted_method_reads_the_modules_weights_at_each_call():
    """data_parallel(slope.jit(model.predict)) bound the model into its function: its weights were constants of the
    first trace, so after `model.lin.weight = ...` it returned the old outputs (the jitted method alone read them)."""
    nn = pytest.importorskip("slope.nn")

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 2)

        def predict(self, x):
            return dist.pmean(self.lin(x))

    model, x = Model(), slope.ones((1, 2))
    jitted = slope.jit(model.predict)
    parallel = dist.data_parallel(jitted)
    np.testing.assert_allclose(parallel(x).numpy(), jitted(x).numpy(), rtol=1e-6)
    model.lin.weight = model.lin.weight * 0 + 3.0
    np.testing.assert_allclose(parallel(x).numpy(), model.lin(x).numpy(), rtol=1e-6)
    np.testing.assert_allclose(jitted(x).numpy(), model.lin(x).numpy(), rtol=1e-6)


def test_checkpoints_of_numbers_and_numpy_leaves_load_and_names_must_differ(tmp_path):
    # load compared a number's (no .shape) or a NumPy leaf's dtype with a Slope dtype and failed; save dropped one of
    # two leaves named alike without a word
    path = tmp_path / "run.safetensors"
    dist.save((slope.ones(2), 7, np.arange(3), 2.5, True), path)
    model, step, counts, rate, flag = dist.load(path, like=(slope.zeros(2), 0, np.zeros(3, np.int64), 0.0, False))
    assert model.tolist() == [1.0, 1.0] and (step, rate, flag) == (7, 2.5, True) and counts.tolist() == [0, 1, 2]
    assert type(step) is int and isinstance(counts, np.ndarray)
    with pytest.raises(dist.SlopeDistributedError, match=r"leaves named alike \(a.b\)"):
        dist.save({"a.b": slope.ones(1), "a": {"b": slope.ones(1)}}, tmp_path / "twice.safetensors")


def test_data_parallel_takes_keyword_arguments():
    """data_parallel took positional arguments only (TypeError for `step(x, scale=3.0)`); now keywords as slope.jit
    takes them: traced, or static where the jitted step names them in static_argnames."""

    def f(x, scale=2.0):
        return dist.psum(x * scale)

    x = slope.ones(2)
    assert dist.data_parallel(f)(x, scale=3.0).tolist() == slope.jit(f)(x, scale=3.0).tolist() == [3.0, 3.0]
    assert dist.data_parallel(f)(x).tolist() == [2.0, 2.0]
    rows = slope.jit(lambda x, n: dist.psum(x.reshape(n, 1)), static_argnames="n")
    assert (
        dist.data_parallel(rows)(x, n=2).shape == (2, 1) and dist.data_parallel(rows).lower(x, n=2).reduction_count == 1
    )


def test_a_step_traced_before_the_engine_started_is_traced_again(monkeypatch):
    """A data_parallel step traced while no engine ran (one process, nothing to join) decided 'one rank' and was
    reused once an engine of 2 ran: no 'does not average' error, and train_step's trace kept 'this is rank 0'. Now
    traces are keyed on the engine they were made under."""
    from slope_distributed import collectives

    step = dist.data_parallel(lambda x: x * 2.0)
    assert step(slope.ones(2)).tolist() == [2.0, 2.0]
    monkeypatch.setattr(collectives.engine(), "size", 2)
    with pytest.raises(dist.SlopeDistributedError, match="does not average its gradients"):
        step(slope.ones(2))


def test_a_step_that_averages_only_its_loss_is_an_error(monkeypatch):
    """pmean of the loss inside value_and_grad, no pmean of the gradients: the returned loss is the mean over the
    ranks, the gradients each rank's own (JAX's transpose rule), and the models drifted apart without an error (the
    step held a reduction, so the 'no reduction' rule passed). Now the same error, saying why; steps that reduce
    their gradients (too), train_step around such a loss, and a gradient through a forward pmean that the step does
    not return are not refused."""
    from slope_distributed import collectives

    model, optimizer = make_model(), nn.SGD(0.1)
    state, x, y = optimizer.init(model), slope.randn(4, 6), slope.tensor(np.arange(4) % 3)

    def averaged_loss(model, x, y):
        return dist.pmean(loss_fn(model, x, y))

    def step(model, state, x, y, also_grads):
        loss, grads = slope.value_and_grad(averaged_loss)(model, x, y)
        model, state = optimizer.step(model, dist.pmean(grads) if also_grads else grads, state)
        return model, state, loss

    monkeypatch.setattr(collectives.engine(), "size", 2)
    with pytest.raises(dist.SlopeDistributedError, match=r"does not average its gradients over the ranks \(it averages "
                       r"its loss inside the differentiated function.*dist\w*\.pmean\(grads\)"):  # fmt: skip
        dist.data_parallel(step).lower(model, state, x, y, False)
    assert dist.data_parallel(step).lower(model, state, x, y, True).reduction_count == 3
    assert dist.train_step(averaged_loss, optimizer).lower(model, state, x, y).reduction_count == 3
    forward = dist.data_parallel(slope.grad(lambda v: dist.pmean(v * v).sum()))
    assert forward.lower(slope.tensor([1.0, 2.0])).reduction_count >= 1


def test_gloo_takes_an_infinite_timeout():
    """init(timeout=inf) (or $SLOPE_DISTRIBUTED_TIMEOUT=inf) passes the checks; the gloo engine then died with a bare
    OverflowError from datetime.timedelta(seconds=inf). Now it waits without a practical bound, as asked."""
    pytest.importorskip("torch")
    code = (
        "import slope, slope.distributed as dist; dist.init(engine='gloo'); "
        "print('RESULT', dist.all_reduce(slope.ones(2)).tolist(), dist.engine().timeout)"
    )
    for env in ({"SLOPE_DISTRIBUTED_TIMEOUT": "inf"}, {}):
        result = subprocess.run([sys.executable, "-c", code if env else code.replace("init(", "init(timeout=float('inf'), ")],
                                capture_output=True, text=True, timeout=120,
                                env=plain_environment(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                                                      MASTER_PORT=free_port(), **env))  # fmt: skip
        assert "RESULT [1.0, 1.0] inf" in result.stdout, result.stdout + result.stderr


def test_gloo_ranks_that_do_not_meet_within_the_timeout_get_an_error_saying_why():
    """A short timeout also bounds the gloo group's first meeting: a rank alone (the other not started, or late) got
    torch's bare DistStoreError (rank 0, the store's host) or DistNetworkError (another rank). Now an error naming the
    engine, the timeout, where to raise it and the likely cause, chained from torch's."""
    pytest.importorskip("torch")
    code = """
import os, slope.distributed as dist
from slope_distributed import collectives
for rank in ("0", "1"):
    os.environ["RANK"] = rank
    collectives._state["engine"] = None
    try:
        dist.init("gloo", timeout=0.5)
    except dist.SlopeDistributedError as error:
        print("ERROR", rank, type(error.__cause__).__name__, str(error).replace(chr(10), " "))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env=plain_environment(WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=free_port()))  # fmt: skip
    lines = [line for line in result.stdout.splitlines() if line.startswith("ERROR")]
    assert len(lines) == 2, result.stdout + result.stderr[-3000:]
    for rank, line in enumerate(lines):
        assert line.startswith(f"ERROR {rank} Dist") and "Error slope.distributed.init: the gloo engine's rank" in line
        assert f"rank {rank} of 2 waited 0.5 s for the other ranks" in line and "another rank did not start" in line
        assert "$SLOPE_DISTRIBUTED_TIMEOUT or init(timeout=...) (torch: " in line, line


def test_shard_takes_tuples_and_dicts_of_arrays(monkeypatch):
    """`dist.shard((x, y))` sliced the tuple itself: rank 0 got (x,), rank 1 (y,), silently; a dict raised
    "unhashable type: 'slice'". Tuples and dicts are pytrees of arrays now; a list is still one array of rows."""
    from slope_distributed import collectives

    monkeypatch.setattr(collectives, "world_size", lambda: 2)
    monkeypatch.setattr(collectives, "rank", lambda: 1)
    x, y = np.arange(6), np.arange(6) * 10
    got = dist.shard((x, y))
    assert isinstance(got, tuple) and [g.tolist() for g in got] == [[3, 4, 5], [30, 40, 50]]
    got = dist.shard({"x": x, "y": slope.tensor(y)})
    assert got["x"].tolist() == [3, 4, 5] and got["y"].tolist() == [30, 40, 50]
    assert dist.shard(list(range(4))) == [2, 3] and [a.tolist() for a in dist.shard(x, y)] == [[3, 4, 5], [30, 40, 50]]
    with pytest.raises(ValueError, match="different lengths"):
        dist.shard((x, np.arange(4)))
