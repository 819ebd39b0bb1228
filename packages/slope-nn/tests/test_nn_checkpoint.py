"""save/load round trips (safetensors and .npz), never pickled code, and loading into a fresh model."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys

import numpy as np
import pytest

import slope
import slope.nn as nn


def make_model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 3))


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_round_trip(tmp_path, suffix):
    slope.manual_seed(0)
    model = make_model()
    # move the buffers away from their initial values so the round trip has something to carry
    _, model = nn.apply(model, slope.randn(3, 1, 4, 4))
    path = tmp_path / f"model{suffix}"
    model.save(path)
    slope.manual_seed(1)
    fresh = make_model()
    assert not np.array_equal(fresh[0].weight.numpy(), model[0].weight.numpy())
    assert fresh.load(path) is fresh
    for name, value in model.state_dict().items():
        loaded = fresh.state_dict()[name]
        assert loaded.dtype == value.dtype and np.array_equal(loaded.numpy(), value.numpy()), name
    x = slope.randn(2, 1, 4, 4)
    np.testing.assert_array_equal(fresh.eval()(x).numpy(), model.eval()(x).numpy())


def test_safetensors_file_is_plain_data(tmp_path):
    path = tmp_path / "linear.safetensors"
    nn.save(nn.Linear(2, 3), path)
    raw = path.read_bytes()
    (header_size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_size])
    assert header["__metadata__"] == {"format": "slope"}
    assert header["weight"]["shape"] == [3, 2] and header["weight"]["dtype"] == "F32"
    from safetensors.numpy import load_file

    assert set(load_file(str(path))) == {"weight", "bias"}


def test_npz_loads_without_pickle(tmp_path):
    path = tmp_path / "state.npz"
    nn.save({"a": slope.tensor([1, 2, 3]), "b": np.eye(2)}, path)
    with np.load(path, allow_pickle=False) as archive:
        assert sorted(archive.files) == ["a", "b"]
    loaded = nn.load(path)
    assert loaded["a"].dtype == slope.int64 and loaded["a"].tolist() == [1, 2, 3]
    assert nn.load(path, as_numpy=True)["b"].dtype == np.float64


def test_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        nn.load(tmp_path / "missing.safetensors")
    with pytest.raises(TypeError, match="Module or a dict"):
        nn.save([1, 2], tmp_path / "x.safetensors")
    path = tmp_path / "small.safetensors"
    nn.Linear(2, 2).save(path)
    with pytest.raises(ValueError, match="shape"):
        nn.Linear(3, 2).load(path)


# ----------------------------------------------------------------------------------------------- every dtype and shape

DTYPES = ["bool", "int8", "uint8", "int16", "int32", "int64", "float16", "bfloat16", "float32", "float64"]
SHAPES = [(), (0,), (3, 0, 2), (1,), (2, 3), (1 << 20,)]
SUFFIXES = [".safetensors", ".npz"]


def _values(dtype: str, shape: tuple) -> np.ndarray:
    rng = np.random.default_rng(len(shape) * 31 + DTYPES.index(dtype))
    if dtype == "bool":
        return rng.random(shape) < 0.5
    target = getattr(slope, dtype).numpy
    if dtype.startswith(("int", "uint")):
        info = np.iinfo(target)
        return rng.integers(info.min, info.max, shape, dtype=target, endpoint=True)
    values = rng.standard_normal(shape) * 1e3
    if values.size >= 4:  # special values survive too
        values.reshape(-1)[:4] = [np.inf, -np.inf, np.nan, -0.0]
    return values.astype(target)


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_dtype_and_shape_round_trips_exactly(tmp_path, suffix, dtype):
    state = {f"x{i}": slope.tensor(_values(dtype, shape)) for i, shape in enumerate(SHAPES)}
    path = tmp_path / f"state{suffix}"
    nn.save(state, path)
    for as_numpy in (False, True):
        loaded = nn.load(path, as_numpy=as_numpy)
        assert sorted(loaded) == sorted(state)
        for name, value in state.items():
            expected = value.numpy()
            got = loaded[name] if as_numpy else loaded[name].numpy()
            if not as_numpy:
                assert loaded[name].dtype == value.dtype and loaded[name].shape == value.shape, name
            assert got.dtype == expected.dtype and got.shape == expected.shape, (name, got.dtype, got.shape)
            # bit for bit (NaN payloads and -0.0 included)
            assert got.tobytes() == expected.tobytes(), name


class _Scalars(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = slope.tensor(2.5)
        self.steps = slope.tensor(7)
        self.empty = slope.zeros(0, 3)
        self.half = slope.tensor([1.5, -2.0], dtype=slope.bfloat16)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_a_model_reloads_its_own_checkpoint(tmp_path, suffix):
    # a 0-d parameter came back with shape (1,), and then its own checkpoint failed to load (shape mismatch)
    model = _Scalars()
    path = tmp_path / f"scalars{suffix}"
    model.save(path)
    fresh = _Scalars()
    fresh.scale, fresh.steps = slope.tensor(0.0), slope.tensor(0)
    fresh.load(path)
    for name, value in model.state_dict().items():
        loaded = fresh.state_dict()[name]
        assert loaded.shape == value.shape and loaded.dtype == value.dtype, name
        assert np.array_equal(loaded.numpy(), value.numpy()), name
    assert fresh.scale.shape == () and fresh.scale.item() == 2.5
    fresh.save(path)  # and the reloaded model saves and loads again
    assert nn.load(path)["scale"].shape == ()


def test_npz_reserved_name(tmp_path):
    with pytest.raises(ValueError, match="reserved"):
        nn.save({"__slope_dtypes__": slope.ones(2)}, tmp_path / "x.npz")


# ----------------------------------------------------------------------------------------------- atomic saves


def _interrupted(original, position, fail):
    """A library writer that writes the file (argument `position`), cuts it in half (a write that stopped midway),
    then calls fail()."""

    def write(*args, **kwargs):
        original(*args, **kwargs)
        target = args[position]
        if hasattr(target, "truncate"):
            target.flush()
            target.truncate(target.tell() // 2)
        else:
            with open(target, "r+b") as handle:
                handle.truncate(os.path.getsize(target) // 2)
        fail()

    return write


def _break_writers(monkeypatch, fail):
    import safetensors.numpy

    monkeypatch.setattr(np, "savez", _interrupted(np.savez, 0, fail))
    monkeypatch.setattr(safetensors.numpy, "save_file", _interrupted(safetensors.numpy.save_file, 1, fail))


def _disk_full():
    raise OSError("disk full")


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path, suffix, monkeypatch):
    path = tmp_path / f"model{suffix}"
    old = {"w": slope.arange(6, dtype=slope.float32).reshape(2, 3)}
    nn.save(old, path)
    before = path.read_bytes()
    _break_writers(monkeypatch, _disk_full)
    with pytest.raises(OSError, match="disk full"):
        nn.save({"w": slope.zeros(100, 100)}, path)
    assert path.read_bytes() == before
    assert nn.load(path)["w"].tolist() == old["w"].tolist()
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary file left behind
    monkeypatch.undo()
    nn.save({"w": slope.ones(2)}, path)  # a save that completes replaces it
    assert nn.load(path)["w"].tolist() == [1.0, 1.0]


_KILLED_SAVE = """
import os, signal, sys
import pytest
import slope, slope.nn as nn
sys.path.insert(0, sys.argv[2])
from test_nn_checkpoint import _break_writers

with pytest.MonkeyPatch.context() as monkeypatch:
    _break_writers(monkeypatch, lambda: os.kill(os.getpid(), signal.SIGKILL))
    nn.save({"w": slope.zeros(1000, 100)}, sys.argv[1])
"""


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_a_killed_save_keeps_the_previous_checkpoint(tmp_path, suffix):
    path = tmp_path / f"model{suffix}"
    nn.save({"w": slope.full((3,), 4.0)}, path)
    before = path.read_bytes()
    here = os.path.dirname(__file__)
    result = subprocess.run([sys.executable, "-c", _KILLED_SAVE, str(path), here], capture_output=True)
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()
    assert path.read_bytes() == before
    assert nn.load(path)["w"].tolist() == [4.0, 4.0, 4.0]


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_a_fresh_process_loads_bfloat16(tmp_path, suffix):
    # safetensors' reader names the dtype "bfloat16", which NumPy knows only once ml_dtypes is imported: a process
    # that had not used bfloat16 yet failed with "data type 'bfloat16' not understood"
    path = tmp_path / f"bf{suffix}"
    nn.save({"a": slope.tensor([1.5, -2.25]).astype(slope.bfloat16)}, path)
    code = f"import slope.nn as nn; t = nn.load({str(path)!r})['a']; print(t.dtype.name, t.astype('float32').tolist())"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["bfloat16", "[1.5,", "-2.25]"]


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_a_pytorch_bfloat16_state_saves_exactly(tmp_path, suffix):
    # np.asarray(torch bfloat16 tensor) raised torch's "Got unsupported ScalarType BFloat16"
    torch = pytest.importorskip("torch")
    state = {"w": torch.tensor([[3e38, -1e-39], [float("nan"), 1 / 3]], dtype=torch.bfloat16), "b": torch.ones(2)}
    nn.save(state, tmp_path / f"s{suffix}")
    back = nn.load(tmp_path / f"s{suffix}", as_numpy=True)
    assert back["w"].dtype == slope.bfloat16.numpy and back["b"].dtype == np.float32
    np.testing.assert_array_equal(back["w"].view(np.uint16), state["w"].view(torch.int16).numpy().view(np.uint16))
    np.testing.assert_array_equal(back["b"], state["b"].numpy())
