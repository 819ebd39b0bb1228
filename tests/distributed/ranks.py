"""What each rank runs under `mpiexec -n 2` for tests/distributed/test_distributed.py (not collected by pytest).

    mpiexec -n 2 python tests/distributed/ranks.py SCENARIO[:BACKEND][,SCENARIO[:BACKEND]...]

Each scenario asserts on every rank and prints `OK <scenario> rank <r>`; a failed assertion aborts every rank.
"""

from __future__ import annotations

import gc
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

import slope
import slope.distributed as dist
import slope.nn as nn

STEPS = 20


def make_model() -> nn.Module:
    slope.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 5))


def loss_fn(model: nn.Module, x: slope.Tensor, y: slope.Tensor) -> slope.Tensor:
    return nn.cross_entropy(model(x), y)


def batches(global_batch: int = 32) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(1)
    return [(rng.standard_normal((global_batch, 12)).astype(np.float32), rng.integers(0, 5, global_batch))
            for _ in range(STEPS)]  # fmt: skip


def leaves(tree: object) -> list[np.ndarray]:
    return [leaf.numpy() for leaf in slope.tree.leaves(tree)]


def train() -> None:
    """20 SGD steps: bitwise equal to one process summing the shards' gradients in rank order, close to full-batch
    training, identical on every rank."""
    optimizer = nn.SGD(0.1, momentum=0.9)
    model = dist.broadcast(make_model())
    state = optimizer.init(model)

    @dist.data_parallel
    def step(model, state, x, y):
        loss, grads = slope.value_and_grad(loss_fn)(model, x, y)
        grads = dist.pmean(grads)
        model, state = optimizer.step(model, grads, state)
        return model, state, loss

    split = step.lower(model, state, *map(slope.tensor, dist.shard(*batches()[0])))
    assert len(split.programs) == 2, [str(p) for p in split.programs]
    for x, y in batches():
        x, y = dist.shard(x, y)
        model, state, loss = step(model, state, slope.tensor(x), slope.tensor(y))
    ours = leaves((model, state))

    # identical on every rank (the bytes of every leaf)
    everyone = dist.engine().gather([leaf.tobytes() for leaf in ours])
    assert all(r == everyone[0] for r in everyone), "the ranks' parameters differ"

    if dist.rank() == 0:  # the reference: one process, both shards' gradients summed in rank order, then / 2
        grad_fn = slope.jit(slope.grad(loss_fn))
        update = slope.jit(optimizer.step)
        reference = make_model()
        reference_state = optimizer.init(reference)
        size = dist.world_size()
        for x, y in batches():
            rows = len(x) // size
            shard_grads = [grad_fn(reference, slope.tensor(x[r * rows : (r + 1) * rows]),
                                   slope.tensor(y[r * rows : (r + 1) * rows])) for r in range(size)]  # fmt: skip
            flat = [np.asarray(g.numpy()) for g in slope.tree.leaves(shard_grads[0])]
            for other in shard_grads[1:]:
                flat = [a + b.numpy() for a, b in zip(flat, slope.tree.leaves(other))]
            mean = slope.tree.unflatten(slope.tree.structure(shard_grads[0]), [slope.tensor(a / size) for a in flat])
            reference, reference_state = update(reference, mean, reference_state)
        for i, (a, b) in enumerate(zip(ours, leaves((reference, reference_state)))):
            assert a.dtype == b.dtype and np.array_equal(a, b), f"leaf {i}: max diff {np.abs(a - b).max()}"

        full_step = slope.jit(lambda m, s, x, y: optimizer.step(m, slope.grad(loss_fn)(m, x, y), s))
        full, full_state = make_model(), optimizer.init(make_model())
        for x, y in batches():
            full, full_state = full_step(full, full_state, slope.tensor(x), slope.tensor(y))
        for a, b in zip(ours, leaves((full, full_state))):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def make_batchnorm_model() -> nn.Module:
    slope.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 8),
                         nn.BatchNorm1d(8, momentum=None), nn.ReLU(), nn.Linear(8, 5))  # fmt: skip


def skewed_batches(steps: int = 5, global_batch: int = 32) -> list[tuple[np.ndarray, np.ndarray]]:
    """Batches whose second half (rank 1's shard) is scaled and shifted: the ranks' batch statistics differ."""
    data = []
    for x, y in batches(global_batch)[:steps]:
        x = x.copy()
        x[global_batch // 2 :] = x[global_batch // 2 :] * 2.0 + 1.0
        data.append((x, y))
    return data


def with_buffers_of(model: object, source: object) -> object:
    """`model` with the buffers of `source` (a model of the same structure)."""
    kinds = nn.leaf_kinds(model)
    mixed = [
        b if kind == "buffer" else a
        for a, b, (_, kind) in zip(slope.tree.leaves(model), slope.tree.leaves(source), kinds)
    ]
    return slope.tree.unflatten(slope.tree.structure(model), mixed)


def buffers() -> None:
    """dist.train_step on a model with BatchNorm (running statistics and an int64 num_batches_tracked): every rank
    ends with the same buffers, rank 0's (PyTorch's DDP, broadcast_buffers=True), bitwise those of one process that
    averages the shards' gradients and keeps shard 0's statistics; under gloo, close to torch's own DDP."""
    optimizer = nn.SGD(0.1, momentum=0.9)
    start = dist.broadcast(make_batchnorm_model())
    model, state = start, optimizer.init(start)
    step = dist.train_step(loss_fn, optimizer)
    engine, headers = dist.engine(), []
    engine.header = lambda header, what, original=engine.header: headers.append(what) or original(header, what)
    for x, y in skewed_batches():
        model, state, _ = step(model, state, *map(slope.tensor, dist.shard(x, y)))
    del engine.header
    assert len(headers) == 5, headers  # one reduction a step: the buffers travel with the gradients
    ours = leaves((model, state))
    everyone = dist.engine().gather([leaf.tobytes() for leaf in ours])
    assert all(r == everyone[0] for r in everyone), "the ranks' models (buffers) differ"
    named = dict(zip([n for n, _ in nn.leaf_kinds(model)], leaves(model)))
    assert named["4.num_batches_tracked"].dtype == np.int64 and named["4.num_batches_tracked"] == 5
    assert not np.array_equal(named["1.running_mean"], np.zeros(16, np.float32))  # (the old step kept them)

    if dist.rank() == 0:  # one process: the shards' gradients summed in rank order and halved, shard 0's buffers

        def applied(m, x, y):
            out, m = nn.apply(m, x)
            return nn.cross_entropy(out, y), m

        grad_fn = slope.jit(nn.value_and_grad(applied, has_aux=True))
        update = slope.jit(optimizer.step)
        reference, reference_state = make_batchnorm_model(), optimizer.init(make_batchnorm_model())
        size = dist.world_size()
        for x, y in skewed_batches():
            rows = len(x) // size
            shards = [grad_fn(reference, slope.tensor(x[r * rows : (r + 1) * rows]),
                              slope.tensor(y[r * rows : (r + 1) * rows])) for r in range(size)]  # fmt: skip
            (_, updated0), _ = shards[0]
            (_, updated1), _ = shards[1]
            assert not np.array_equal(updated0[1].running_var.numpy(), updated1[1].running_var.numpy())
            flat = [np.asarray(g.numpy()) for g in slope.tree.leaves(shards[0][1])]
            for _, other in shards[1:]:
                flat = [a + b.numpy() for a, b in zip(flat, slope.tree.leaves(other))]
            kinds = [kind for _, kind in nn.leaf_kinds(reference)]
            mean = [slope.tensor(a / size if kind == "param" else a) for a, kind in zip(flat, kinds)]
            reference, reference_state = update(reference, slope.tree.unflatten(slope.tree.structure(reference), mean),
                                                reference_state)  # fmt: skip
            reference = with_buffers_of(reference, updated0)
        for (name, _), a, b in zip(nn.leaf_kinds(model), ours, leaves(reference)):
            assert a.dtype == b.dtype and np.array_equal(a, b), f"{name}: max diff {np.abs(a - b).max()}"

    if dist.engine().name == "gloo":  # torch's own DistributedDataParallel on the same process group
        import torch

        reference = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(),
                                        torch.nn.Linear(16, 8), torch.nn.BatchNorm1d(8, momentum=None),
                                        torch.nn.ReLU(), torch.nn.Linear(8, 5))  # fmt: skip
        with torch.no_grad():
            for name, value in zip([n for n, _ in nn.leaf_kinds(start)], leaves(start)):
                reference.state_dict()[name].copy_(torch.from_numpy(value.copy()))
        ddp = torch.nn.parallel.DistributedDataParallel(reference)  # (broadcast_buffers=True, its default)
        torch_optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
        for x, y in skewed_batches():
            x, y = dist.shard(x, y)
            torch_optimizer.zero_grad()
            torch.nn.functional.cross_entropy(ddp(torch.from_numpy(x)), torch.from_numpy(y)).backward()
            torch_optimizer.step()
        for name, value in named.items():  # (torch's rank 1 keeps its own last update until its next forward pass)
            if "running" in name and dist.rank() != 0:
                continue
            theirs = reference.state_dict()[name].numpy()
            if name.endswith("num_batches_tracked"):
                assert theirs == value, (name, theirs, value)
            else:
                np.testing.assert_allclose(value, theirs, rtol=1e-5, atol=1e-6, err_msg=name)
        del ddp, torch_optimizer  # (before the process group closes at exit: a DDP collected later aborted the rank)
        gc.collect()


def collectives() -> None:
    """all_reduce (sum, mean, max over mixed dtypes), broadcast, shard, barrier, pmean eagerly and under grad/vmap."""
    r = dist.rank()
    tree = {"a": slope.tensor([1.0, 2.0]) * (r + 1), "b": np.arange(3) * (r + 1), "c": float(r)}
    summed = dist.all_reduce(tree)
    assert summed["a"].tolist() == [3.0, 6.0] and summed["b"].tolist() == [0, 3, 6] and summed["c"] == 1.0
    assert isinstance(summed["a"], slope.Tensor) and isinstance(summed["b"], np.ndarray)
    assert dist.all_reduce({"a": tree["a"]}, op="max")["a"].tolist() == [2.0, 4.0]
    assert dist.all_reduce(tree["a"], op="mean").tolist() == [1.5, 3.0]
    assert dist.all_reduce({}) == {} and dist.pmean(()) == ()  # (the shared-memory path had nothing to unpack)
    got = dist.broadcast({"w": slope.tensor([float(r), 7.0])}, root=1)
    assert got["w"].tolist() == [1.0, 7.0]
    assert dist.shard(np.arange(5)).tolist() == [[0, 1], [2, 3]][r]
    dist.barrier()
    # a reduction under grad, through data_parallel; as in JAX the transpose of a mean over ranks is a mean over
    # ranks, so each rank's cotangent of 1 stays 1 and rank r gets 2 (r+1) x
    g = dist.data_parallel(slope.grad(lambda x: dist.pmean(x * x * (r + 1)).sum()))(slope.tensor([1.0, 2.0]))
    assert g.tolist() == [2.0 * (r + 1), 4.0 * (r + 1)], g.tolist()
    # and under vmap: each row reduced over the ranks
    v = dist.data_parallel(slope.vmap(lambda x: dist.psum(x * (r + 1))))(slope.ones((2, 3)))
    assert v.tolist() == [[3.0] * 3] * 2, v.tolist()
    # inside a plain slope.jit with 2 ranks: an error that points at data_parallel
    try:
        slope.jit(lambda x: dist.pmean(x))(slope.tensor([1.0]))
    except dist.SlopeDistributedError as error:
        assert "data_parallel" in str(error)
    else:
        raise AssertionError("pmean inside a plain jit with 2 ranks did not fail")


def dtypes() -> None:
    """all_reduce and broadcast in NumPy's and PyTorch's meanings for every dtype and engine path: bool + bool is
    `or`, max propagates NaN (MPI's MAX drops it), int8 wraps around, bfloat16 and float16 work, empty leaves too."""
    import ml_dtypes

    engine = dist.engine()
    if engine.name == "mpi":  # ranks on one machine reduce through shared memory unless told not to
        assert (engine.shared is not None) == slope.errors.env("SLOPE_DISTRIBUTED_SHARED_MEMORY", True)
    r = dist.rank()
    tree = {
        "bool": np.array([True, False, False]) if r == 0 else np.array([True, True, False]),
        "f16": np.array([1.5, 2.0], np.float16) * (r + 1),
        "bf16": np.array([1.5, -2.0], ml_dtypes.bfloat16) * (r + 1),
        "i8": np.array([100, -1], np.int8),
        "i16": np.array([30000, -1], np.int16),  # (gloo reduces no int16: "Invalid scalar type")
        "u16": np.array([40000, 3], np.uint16) * np.uint16(r + 1),  # (nor uint16, uint32, uint64)
        "u32": np.array([3_000_000_000, 3], np.uint32) * np.uint32(r + 1),
        "u64": np.array([2**63 + 5, 3], np.uint64) * np.uint64(r + 1),
        "nan": np.array([np.nan, 1.0, 2.0]) if r == 0 else np.array([1.0, np.nan, 3.0]),
        "t_bf16": slope.tensor([1.0, 2.0]).astype(slope.bfloat16) * (r + 1),
        "t_i64": slope.tensor([1, 2]) * (r + 1),
        "empty": np.zeros((0, 3), np.float32),
    }
    summed, biggest = dist.all_reduce(tree), dist.all_reduce(tree, op="max")
    expect_sum = {"bool": [True, True, False], "f16": [4.5, 6.0], "bf16": [4.5, -6.0], "i8": [-56, -2], "i16": [-5536, -2],
                  "nan": [np.nan, np.nan, 5.0], "t_bf16": [3.0, 6.0], "t_i64": [3, 6], "empty": []}  # fmt: skip
    expect_max = {"bool": [True, True, False], "f16": [3.0, 4.0], "bf16": [3.0, -2.0], "i8": [100, -1], "i16": [30000, -1],
                  "nan": [np.nan, np.nan, 3.0], "t_bf16": [2.0, 4.0], "t_i64": [2, 4], "empty": []}  # fmt: skip
    for got, expected in ((summed, expect_sum), (biggest, expect_max)):
        for name, values in expected.items():
            value = got[name].numpy() if isinstance(got[name], slope.Tensor) else got[name]
            assert value.dtype == np.asarray(tree[name].numpy() if name.startswith("t_") else tree[name]).dtype, name
            np.testing.assert_array_equal(value.astype(np.float64).reshape(-1), np.array(values, np.float64), name)
    unsigned = {"u16": ([54464, 9], [40000, 6]), "u32": ([410065408, 9], [3_000_000_000, 6]),
                "u64": ([2**63 + 15, 9], [2**63 + 5, 6])}  # (each wraps; the second rank's uint64 is 10)  # fmt: skip
    for name, (total, largest) in unsigned.items():
        assert summed[name].dtype == biggest[name].dtype == tree[name].dtype, name
        assert summed[name].tolist() == total and biggest[name].tolist() == largest, (name, summed[name], biggest[name])
    with slope.use_backend("numpy"):  # (a bfloat16 onnxruntime tensor came back on the active backend)
        back = dist.all_reduce(tree["t_bf16"]), dist.broadcast(tree["t_bf16"], root=1)
    assert [t.backend.name for t in back] == [tree["t_bf16"].backend.name] * 2, [t.backend.name for t in back]
    assert back[0].tolist() == [3.0, 6.0] and back[1].tolist() == [2.0, 4.0]
    got = dist.broadcast({"w": slope.tensor([float(r), 7.0]).astype(slope.bfloat16), "m": np.array([r == 1])}, root=1)
    assert got["w"].numpy().astype(np.float32).tolist() == [1.0, 7.0] and got["m"].tolist() == [True]


def mismatch() -> None:
    """Trees that differ between ranks: an error on every rank naming rank 1 and the leaf."""
    model = make_model()
    grads = slope.tree.map(lambda p: p.astype(slope.float64) if dist.rank() == 1 else p, model)
    try:
        dist.all_reduce(grads, op="mean")
    except dist.SlopeDistributedError as error:
        message = str(error)
        assert "rank 1" in message and "float64" in message and "leaf 0.weight" in message, message
        print(f"error on rank {dist.rank()}: {message}", flush=True)
    else:
        raise AssertionError("no error for different trees")
    try:
        dist.all_reduce([slope.ones(3)] * (dist.rank() + 1))
    except dist.SlopeDistributedError as error:
        assert "rank 1 passed 2 leaves" in str(error), str(error)
    else:
        raise AssertionError("no error for different structures")
    # dict keys and Module attribute names are part of the tree: equal shapes paired rank 0's "encoder" with rank 1's
    # "decoder" without a word (the digest had the structure, shapes and dtypes only)
    r = dist.rank()
    grads = (
        {"encoder": slope.ones(2), "head": slope.ones(2)}
        if r == 0
        else {"decoder": slope.ones(2), "encoder": slope.ones(2)}
    )
    expect_error(lambda: dist.all_reduce(grads), "all_reduce", "rank 1 has leaf decoder where rank 0 has leaf encoder")

    class Two(nn.Module):
        def __init__(self, names: list[str]):
            super().__init__()
            for name in names:
                setattr(self, name, nn.Linear(2, 2))

    two = Two(["encoder", "head"] if r == 0 else ["decoder", "encoder"])
    expect_error(
        lambda: dist.broadcast(two), "broadcast", "rank 1 has leaf decoder.weight where rank 0 has leaf encoder.weight"
    )
    # in a train step the message names the model's leaf (it named "leaf 0 ... of shape ()": the loss)
    dtype = slope.float64 if r == 1 else slope.float32
    model, optimizer = nn.Sequential(nn.Linear(4, 3, dtype=dtype)), nn.SGD(0.1)
    x, y = slope.randn(4, 4).astype(dtype), slope.tensor(np.arange(4) % 3)
    expect_error(lambda: dist.train_step(loss_fn, optimizer)(model, optimizer.init(model), x, y),
                 "data_parallel(train_step(loss_fn))",
                 "rank 1's argument leaf model.0.weight is float64 of shape (3, 4) where rank 0's argument leaf "
                 "model.0.weight is float32")  # fmt: skip
    assert dist.all_reduce({"w": slope.ones(1)})["w"].tolist() == [2.0]  # (the ranks go on together)


def expect_error(call: object, where: str, words: str) -> None:
    """`call()` raises slope.distributed.<where>'s error holding `words` on every rank."""
    try:
        call()  # type: ignore[operator]
    except dist.SlopeDistributedError as error:
        assert f"slope.distributed.{where}: " in str(error) and words in str(error), str(error)
    else:
        raise AssertionError(f"no error from {where}: expected {words!r}")


def dead() -> None:
    """Rank 1 leaves early: rank 0's next reduction fails within the timeout, naming rank 1."""
    if dist.rank() == 1:
        return
    try:
        dist.all_reduce({"w": slope.ones(4)})
    except dist.SlopeDistributedError as error:
        assert "rank 1 did not answer" in str(error), str(error)
        print(f"error on rank 0: {error}", flush=True)
    else:
        raise AssertionError("no error although rank 1 left")
    # save and load waited in an allgather with no deadline (MPI), or said "gather failed" (gloo)
    path = Path(tempfile.mkdtemp()) / "run.safetensors"
    for call, where in ((lambda: dist.save({"w": slope.ones(2)}, path), "save"),
                        (lambda: dist.load(path, like={"w": slope.ones(2)}), "load")):  # fmt: skip
        try:
            call()
        except dist.SlopeDistributedError as error:
            assert f"{where}('{path}')" in str(error) and "rank 1 did not answer" in str(error), str(error)
            print(f"error on rank 0: {error}", flush=True)
        else:
            raise AssertionError(f"no error from {where} although rank 1 left")
    assert not path.exists()  # (rank 0 checked that every rank was there before it wrote)


def crash() -> None:
    """Rank 1 raises: every rank is aborted (the launcher names rank 1), nobody hangs."""
    if dist.rank() == 1:
        raise RuntimeError("rank 1 crashes on purpose")
    dist.all_reduce({"w": slope.ones(4)})
    raise AssertionError("rank 0 went on although rank 1 crashed")


def exit_race() -> None:
    """Gloo: a DDP keeps the process group (and its worker threads) alive past destroy_process_group; gathers end the
    run. A worker dropping the last gather's tensors during the interpreter's finalization aborted the rank (signal 6,
    about 1 run in 12 on a loaded machine) until the engine waited for them at exit."""
    import torch

    ddp = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(3, 2))
    del ddp
    gc.collect()
    for i in range(20):
        assert dist.engine().gather((i, dist.rank())) == [(i, 0), (i, 1)]


def checkpoint() -> None:
    """Rank 0 writes once, atomically; every rank resumes with rank 0's values."""
    optimizer = nn.Adam(1e-2)
    model = make_model()
    if dist.rank() == 0:  # only rank 0's values may end up in the file
        model = slope.tree.map(lambda p: p + 1.0, model)
    state = optimizer.init(model)
    name = dist.broadcast(np.frombuffer(tempfile.mkdtemp().encode().ljust(256), np.uint8))  # rank 0's folder
    folder = Path(name.tobytes().decode().strip())
    dist.save((model, state), folder / "run.safetensors")
    assert sorted(p.name for p in folder.iterdir()) == ["run.safetensors"], list(folder.iterdir())
    fresh = make_model()
    restored = dist.load(folder / "run.safetensors", like=(fresh, optimizer.init(fresh)))
    expected = dist.broadcast((model, state))
    for a, b in zip(leaves(restored), leaves(expected)):
        assert np.array_equal(a, b)
    try:
        dist.load(folder / "missing.safetensors", like=(fresh, optimizer.init(fresh)))
    except dist.SlopeDistributedError as error:
        assert "rank 0 could not read" in str(error)
    else:
        raise AssertionError("no error for a missing checkpoint")
    # PyTorch's idiom `if rank == 0: torch.save(...)` written with dist.save, the other rank in its next reduction:
    # an error on both naming the two calls (was: the MPI timeout naming no save; gloo: "allocate 428 PiB")
    if dist.rank() == 0:
        expect_error(lambda: dist.save(model, folder / "alone.safetensors"), "save",
                     "rank 1 called all_reduce(sum) where rank 0 called save()")  # fmt: skip
    else:
        expect_error(lambda: dist.all_reduce({"w": slope.ones(2)}), "all_reduce",
                     "rank 1 called all_reduce(sum) where rank 0 called save()")  # fmt: skip
    assert not (folder / "alone.safetensors").exists()
    assert dist.all_reduce({"w": slope.ones(1)})["w"].tolist() == [2.0]  # (the ranks go on together)


if __name__ == "__main__":
    dist.init(timeout=float(os.environ.get("RANKS_TIMEOUT", "60")))
    for scenario in sys.argv[1].split(","):  # "train:numpy,collectives": one launch runs several (CI time)
        name, _, backend = scenario.partition(":")
        with slope.use_backend(backend or slope.get_backend().name):
            globals()[name]()
        print(f"OK {scenario} rank {dist.rank()}", flush=True)
