"""The MNIST loader: IDX parsing (gzipped or not), folder resolution, the missing-files message, and the real
files when ../shared/data/mnist (or $MNIST_DIR) is there."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
from nn_helpers import mnist_folder

import slope
import slope.nn as nn


def write_idx(path, array: np.ndarray, compress: bool) -> None:
    codes = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)


def fake_mnist(folder, count: int, compress: bool) -> tuple[np.ndarray, np.ndarray]:
    g = np.random.default_rng(0)
    images = g.integers(0, 256, (count, 28, 28), dtype=np.uint8)
    labels = g.integers(0, 10, count).astype(np.uint8)
    suffix = ".gz" if compress else ""
    for split in ("train", "t10k"):
        write_idx(folder / f"{split}-images-idx3-ubyte{suffix}", images, compress)
        write_idx(folder / f"{split}-labels-idx1-ubyte{suffix}", labels, compress)
    return images, labels


@pytest.mark.parametrize("compress", [True, False], ids=["gzip", "raw"])
def test_reads_idx_files(tmp_path, compress):
    images, labels = fake_mnist(tmp_path, 7, compress)
    data = nn.datasets.mnist("train", tmp_path, download=False)
    assert data.images.dtype == np.uint8 and data.images.shape == (7, 28, 28)
    assert data.labels.dtype == np.int64
    np.testing.assert_array_equal(data.images, images)
    np.testing.assert_array_equal(data.labels, labels)


def test_read_idx_big_endian_ints(tmp_path):
    values = (np.arange(6) - 2).astype(">i4").reshape(2, 3)
    write_idx(tmp_path / "ints", values, compress=False)
    out = nn.datasets.read_idx(tmp_path / "ints")
    assert out.dtype.isnative and out.tolist() == [[-2, -1, 0], [1, 2, 3]]
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="not an IDX file"):
        nn.datasets.read_idx(tmp_path / "bad")


def test_truncated_or_damaged_idx_files_are_named(tmp_path):
    # a partial copy gave EOFError (gzip cut short), struct.error (raw header cut) or BadGzipFile (trailing bytes),
    # none naming the file
    images = np.zeros((7, 28, 28), np.uint8)
    write_idx(tmp_path / "full.gz", images, compress=True)
    write_idx(tmp_path / "full", images, compress=False)
    whole, raw = (tmp_path / "full.gz").read_bytes(), (tmp_path / "full").read_bytes()
    flipped = whole[:12] + bytes(b ^ 0xFF for b in whole[12:20]) + whole[20:]  # damaged deflate data: zlib.error
    cases = {"cut.gz": whole[:-30], "junk.gz": whole + b"junk", "crc.gz": whole[:-8] + bytes(8), "flip.gz": flipped,
             "header": raw[:6], "data": raw[:-5]}  # fmt: skip
    for name, payload in cases.items():
        (tmp_path / name).write_bytes(payload)
        with pytest.raises(ValueError, match=f"read_idx: .*{name} is truncated or damaged"):
            nn.datasets.read_idx(tmp_path / name)
    fake_mnist(tmp_path, 7, compress=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(whole[:-30])
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.gz is truncated or damaged"):
        nn.datasets.mnist("test", tmp_path, download=False)


def test_folder_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("MNIST_DIR", raising=False)
    monkeypatch.delenv("SLOPE_DATA", raising=False)
    monkeypatch.delenv("SLOPE_DATA_DIR", raising=False)
    assert str(nn.datasets.mnist_dir()).endswith(".cache/slope/mnist")
    monkeypatch.setenv("SLOPE_DATA_DIR", str(tmp_path))
    assert nn.datasets.mnist_dir() == tmp_path / "mnist"
    monkeypatch.setenv("MNIST_DIR", str(tmp_path / "here"))
    assert nn.datasets.mnist_dir() == tmp_path / "here"
    assert nn.datasets.mnist_dir(tmp_path / "arg") == tmp_path / "arg"


def test_missing_files_say_where_to_put_them(tmp_path, monkeypatch):
    folder = tmp_path / "empty"
    with pytest.raises(FileNotFoundError) as error:
        nn.datasets.mnist("test", folder, download=False)
    message = str(error.value)
    assert str(folder) in message and "t10k-images-idx3-ubyte.gz" in message and "MNIST_DIR" in message

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr("urllib.request.urlopen", offline)  # datasets imports urllib.request when it downloads
    with pytest.raises(FileNotFoundError, match="could not be downloaded .*network is unreachable"):
        nn.datasets.mnist("train", folder)


def test_batches_cover_the_data_once():
    x = np.arange(10)
    seen = np.concatenate([b for (b,) in nn.datasets.batches(x, batch_size=3, seed=0)])
    assert len(seen) == 9 and len(set(seen.tolist())) == 9
    kept = list(nn.datasets.batches(x, x * 2, batch_size=4, shuffle=False, drop_last=False))
    assert [len(b[0]) for b in kept] == [4, 4, 2] and np.array_equal(kept[2][1], [16, 18])


@pytest.mark.skipif(mnist_folder() is None, reason="no MNIST folder (../shared/data/mnist or $MNIST_DIR)")
def test_real_mnist():
    train = nn.datasets.mnist("train", mnist_folder(), download=False)
    test = nn.datasets.mnist("test", mnist_folder(), download=False)
    assert train.images.shape == (60000, 28, 28) and test.images.shape == (10000, 28, 28)
    assert set(np.unique(test.labels).tolist()) == set(range(10))
    assert train.labels[:5].tolist() == [5, 0, 4, 1, 9]


@pytest.mark.parametrize("prefetch", [1, 3])
def test_loader_gives_the_batches_of_batches_as_tensors(prefetch):
    import slope

    images = np.arange(50 * 4, dtype=np.uint8).reshape(50, 4)
    labels = np.arange(50, dtype=np.int64)
    order = np.random.default_rng(0).permutation(50)
    for name in sorted(slope.plugins.backends):
        with slope.use_backend(name):
            expected = list(nn.datasets.batches(images, labels, batch_size=8, order=order))
            got = list(nn.datasets.loader(images, labels, batch_size=8, order=order, prefetch=prefetch))
            assert len(got) == len(expected) == 6
            for (x, y), (ex, ey) in zip(got, expected):
                assert x.dtype == slope.uint8 and y.dtype == slope.int64 and x.backend is slope.get_backend()
                np.testing.assert_array_equal(x.numpy(), ex)
                np.testing.assert_array_equal(y.numpy(), ey)
            # unshuffled batches are views of the caller's array: the tensors keep their own copies
            plain = list(nn.datasets.loader(images, labels, batch_size=16, shuffle=False, steps=2))
            assert len(plain) == 2
            images[0, 0] = 255
            assert plain[0][0].numpy()[0, 0] == 0
            images[0, 0] = 0


def test_loader_gathers_shuffled_rows_straight_into_onnxruntime_buffers(monkeypatch):
    # each shuffled batch was gathered into a new array that onnxruntime's from_numpy then copied once more (4 us of
    # a (200, 784) uint8 batch on the loader's thread, beside the step): the rows now go into the OrtValue itself
    if "onnxruntime" not in slope.plugins.backends:
        pytest.skip("slope-onnx is not installed")
    rng = np.random.default_rng(3)
    arrays = [rng.integers(0, 256, (40, 7), dtype=np.uint8), rng.standard_normal((40, 2, 3)).astype(np.float16),
              rng.random(40) > 0.5, np.arange(40, dtype=np.int64), np.arange(80.0).reshape(40, 2).astype(">f8")]  # fmt: skip
    order = np.concatenate([rng.permutation(40)[:30], -np.arange(1, 11)])  # negative rows too (within range)
    with slope.use_backend("onnxruntime") as backend:
        copied = []
        from_numpy = type(backend).from_numpy
        monkeypatch.setattr(
            type(backend), "from_numpy", lambda self, a, d: copied.append(a.dtype) or from_numpy(self, a, d)
        )
        got = list(nn.datasets.loader(*arrays, batch_size=8, order=order, drop_last=False))
        assert [str(d) for d in copied] == ["float64"] * 5  # only the big-endian array (converted first) is copied
    expected = list(nn.datasets.batches(*arrays, batch_size=8, order=order, drop_last=False))
    assert len(got) == len(expected) == 5
    for batch, want in zip(got, expected):
        for tensor, array in zip(batch, want):
            assert tensor.dtype == slope.tensor(array).dtype and tensor.shape == array.shape
            np.testing.assert_array_equal(tensor.numpy(), array)


def test_loader_stops_its_thread_and_reports_errors():
    import threading
    import time

    images = np.zeros((100, 3), np.float32)
    batches = nn.datasets.loader(images, batch_size=10, seed=1)
    next(batches)
    batches.close()  # the caller stops listening: the worker ends
    deadline = time.monotonic() + 5
    while any(t.name == "slope-loader" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(t.name == "slope-loader" for t in threading.enumerate())
    with pytest.raises(ValueError, match="arrays differ in length"):
        next(nn.datasets.loader(images, np.zeros(3), batch_size=10))
    with pytest.raises(ValueError, match="order must be a 1-d array"):
        next(nn.datasets.loader(images, batch_size=10, order=np.zeros((2, 2))))
    with pytest.raises(ValueError, match="prefetch must be at least 1"):
        next(nn.datasets.loader(images, batch_size=10, prefetch=0))


def test_loader_takes_big_endian_arrays_as_slope_tensor_does():
    # the loader handed the backend the bytes as they were: iree read '>f4' 1.0 as 4.6e-41, onnxruntime refused it
    for dtype in (">f4", ">f8", ">i8", ">i4", ">i2"):
        data = np.arange(6).astype(dtype)
        (batch,) = next(iter(nn.datasets.loader(data, batch_size=3, shuffle=False)))
        assert batch.tolist() == [0, 1, 2] and batch.dtype == slope.tensor(data).dtype, dtype


def test_loader_takes_backend_and_checks_arguments_at_the_call():
    # loader was a generator function: its body ran at the first next(), so a loader made inside
    # `with slope.use_backend(...)` and iterated after it gave tensors of the default backend, and bad arguments
    # raised only at the first next() (PyTorch's DataLoader checks them at construction)
    others = [name for name in sorted(slope.plugins.backends) if name != slope.get_backend().name]
    if not others:
        pytest.skip("one backend installed")
    data = np.arange(12, dtype=np.float32).reshape(6, 2)
    with slope.use_backend("numpy" if "numpy" in others else others[0]):
        made = nn.datasets.loader(data, batch_size=2, shuffle=False)
        backend, device = slope.get_backend(), slope.backend.default_device()
    batches = list(made)
    assert [x.backend for (x,) in batches] == [backend] * 3 and all(x.device == device for (x,) in batches)
    assert [x.tolist() for (x,) in batches] == data.reshape(3, 2, 2).tolist()
    for function in (nn.datasets.loader, nn.datasets.batches):
        with pytest.raises(ValueError, match=f"{function.__name__}: batch_size must be a positive integer"):
            function(data, batch_size=0)
        with pytest.raises(ValueError, match=f"{function.__name__}: arrays differ in length"):
            function(data, data[:3], batch_size=2)
        with pytest.raises(ValueError, match=f"{function.__name__}: order must be a 1-d array"):
            function(data, batch_size=2, order=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="loader: prefetch must be at least 1"):
        nn.datasets.loader(data, batch_size=2, prefetch=0)
    with pytest.raises(TypeError, match=r"loader: arrays\[1\] has dtype uint16, which slope tensors do not hold"):
        nn.datasets.loader(data, np.zeros(6, np.uint16), batch_size=2)


def test_loader_and_batches_take_array_likes_and_refuse_bad_inputs_clearly():
    # a list worked shuffled but not unshuffled (AttributeError: 'list' object has no attribute 'dtype'); no arrays:
    # IndexError; steps=-1: an empty epoch; prefetch=None, a generator, a 0-d array or a slope.random key as seed: raw
    # TypeErrors from NumPy or Python; an order index out of range: NumPy's IndexError at the first batch
    for shuffle in (False, True):  # array-likes through np.asarray, as PyTorch's default_collate (Python floats: f64)
        got = [x.tolist() for (x,) in nn.datasets.loader([1.0, 2.0, 3.0, 4.0], batch_size=2, shuffle=shuffle, seed=0)]
        ref = [b.tolist() for (b,) in nn.datasets.batches(np.array([1.0, 2.0, 3.0, 4.0]), batch_size=2, seed=0,
                                                          shuffle=shuffle)]  # fmt: skip
        assert got == ref and sorted(sum(got, [])) == [1.0, 2.0, 3.0, 4.0]
        (x,) = next(nn.datasets.loader([1.0, 2.0], batch_size=2, shuffle=shuffle))
        assert x.dtype == slope.float64
    assert [b.tolist() for (b,) in nn.datasets.batches([1, 2, 3, 4], batch_size=2, shuffle=False)] == [[1, 2], [3, 4]]
    assert len(list(nn.datasets.loader(np.zeros(4), batch_size=2, steps=0))) == 0
    x, key = np.zeros(4, np.float32), slope.random.key(0)
    for function in (nn.datasets.loader, nn.datasets.batches):
        name = function.__name__
        cases = [
            (TypeError, f"{name}: no arrays given", (), {}),
            (TypeError, rf"{name}: arrays\[1\] is an iterator \(generator\)", (x, (i for i in range(4))), {}),
            (ValueError, rf"{name}: arrays\[0\] must have a first dimension .* shape \(\)", (np.array(3.0),), {}),
            (ValueError, rf"{name}: arrays\[0\] must have a first dimension .* got 3", (3,), {}),
            (ValueError, rf"{name}: arrays\[0\] \(list\) could not be made a NumPy array", ([[1, 2], [3]],), {}),
            (TypeError, f"{name}: seed must be .* Tensor of shape .*slope.random key", (x,), dict(seed=key)),
            (TypeError, f"{name}: seed must be a non-negative integer or None, got 'a'", (x,), dict(seed="a")),
            (ValueError, f"{name}: seed must be a non-negative integer or None, got -1", (x,), dict(seed=-1)),
            (IndexError, f"{name}: order holds row index 4, out of range .* 4 rows", (x,), dict(order=[0, 4])),
        ]  # fmt: skip
        for error, words, arrays, keywords in cases:
            with pytest.raises(error, match=words):
                function(*arrays, batch_size=2, **keywords)
    for steps in (-1, 1.5, True):
        with pytest.raises(ValueError, match="loader: steps must be None .* or a non-negative integer"):
            nn.datasets.loader(x, batch_size=2, steps=steps)
    for prefetch in (None, 2.0):
        with pytest.raises(ValueError, match="loader: prefetch must be at least 1 .*an integer"):
            nn.datasets.loader(x, batch_size=2, prefetch=prefetch)
    assert len(list(nn.datasets.batches(x, batch_size=2, seed=np.random.default_rng(0)))) == 2  # NumPy's seeds too


def test_loader_reads_the_order_as_it_was_when_called():
    """The order is checked at the call and read by the loader's thread later: a change in between (here an index
    out of range, which the thread's gather would wrap to row 3) must not reach the batches."""
    x, order = np.arange(10, dtype=np.float32).reshape(10, 1), np.arange(10)
    batches = nn.datasets.loader(x, batch_size=5, order=order)
    order[0] = 13
    assert [b[0].numpy().ravel().tolist() for b in batches] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
