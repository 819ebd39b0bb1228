"""save/load round trips (safetensors and .npz), never pickled code, and loading into a fresh model."""

from __future__ import annotations

import json
import struct

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
