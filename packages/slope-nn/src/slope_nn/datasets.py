"""Datasets: the MNIST loader (standard IDX files, gzipped or not), a NumPy mini-batch iterator, and `loader`, which
gives mini-batches as tensors, slicing and transferring the next ones in a background thread while a step runs.

Where MNIST is looked for, in order: the `data_dir` argument, `$MNIST_DIR`, `$SLOPE_DATA_DIR/mnist` (or
`$SLOPE_DATA/mnist`), and `~/.cache/slope/mnist`. Missing files are downloaded into that folder from the public mirrors when the network
allows; otherwise the error says which files to put where.
"""

from __future__ import annotations

import gzip
import itertools
import os
import queue
import struct
import threading
import zlib
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import numpy as np

import slope

__all__ = [
    "MNIST_FILES",
    "MNIST_MIRRORS",
    "Dataset",
    "batches",
    "default_cache",
    "has_mnist",
    "loader",
    "mnist",
    "mnist_dir",
    "read_idx",
]

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class Dataset(NamedTuple):
    """Images (N, 28, 28) uint8 and labels (N,) int64, as NumPy arrays."""

    images: np.ndarray
    labels: np.ndarray


def mnist_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The folder MNIST is read from (and downloaded to): argument, $MNIST_DIR, $SLOPE_DATA_DIR/mnist, or the cache."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    if os.environ.get("MNIST_DIR"):
        return Path(os.environ["MNIST_DIR"]).expanduser()
    for variable in ("SLOPE_DATA_DIR", "SLOPE_DATA"):
        if os.environ.get(variable):
            return Path(os.environ[variable]).expanduser() / "mnist"
    return default_cache()


def default_cache() -> Path:
    """~/.cache/slope/mnist: where MNIST goes when nothing else is configured."""
    return Path.home() / ".cache" / "slope" / "mnist"


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (gzipped when its name ends in .gz, or when it starts with the gzip magic)."""
    path = Path(path)
    with open(path, "rb") as raw:
        head = raw.read(2)
    damaged = f"slope.nn.datasets.read_idx: {path} is truncated or damaged"
    advice = "copy or download it again (mnist() downloads the files missing from its folder)"
    if head == b"\x1f\x8b":
        try:  # cut short: EOFError; a bad CRC or bytes after the stream: BadGzipFile; damaged data: zlib.error
            with gzip.open(path, "rb") as f:
                data = f.read()
        except (EOFError, gzip.BadGzipFile, zlib.error) as error:
            raise ValueError(f"{damaged} (gzip: {type(error).__name__}: {error}); {advice}") from error
    else:
        data = path.read_bytes()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise ValueError(f"slope.nn.datasets.read_idx: {path} is not an IDX file (bad magic number)")
    ndim = data[3]
    offset = 4 + 4 * ndim
    if len(data) < offset:
        raise ValueError(
            f"{damaged}: its header ends after {len(data)} bytes, a {ndim}-d IDX header has {offset}; {advice}"
        )
    shape = struct.unpack(f">{ndim}I", data[4:offset])
    dtype = np.dtype(_IDX_TYPES[data[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - offset != expected:
        raise ValueError(f"{damaged}: it holds {len(data) - offset} bytes of data, its header {shape} {dtype} asks for "
                         f"{expected}; {advice}")  # fmt: skip
    array = np.frombuffer(data, dtype=dtype, offset=offset).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=False)


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx")):
        candidate = folder / name
        if candidate.exists():
            return candidate
    return None


def has_mnist(folder: str | os.PathLike) -> bool:
    """Whether a folder holds all four MNIST IDX files."""
    return all(_find(Path(folder), stem) is not None for stems in MNIST_FILES.values() for stem in stems)


def _download(folder: Path, stem: str, timeout: float) -> Path:
    import urllib.error  # here, not at the top: urllib.request (ssl, http) would add to every `import slope`
    import urllib.request

    errors = []
    for mirror in MNIST_MIRRORS:
        url = f"{mirror}{stem}.gz"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                payload = response.read()
        except (urllib.error.URLError, OSError, ValueError) as error:
            errors.append(f"{url}: {error}")
            continue
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{stem}.gz"
        partial = target.with_suffix(".gz.part")
        partial.write_bytes(payload)
        partial.replace(target)  # atomic: a half-written file never looks complete
        return target
    raise OSError("; ".join(errors))


def _missing_message(folder: Path, missing: list[str], reason: str) -> str:
    files = ", ".join(f"{stem}.gz" for stem in missing)
    return (
        f"slope.nn.datasets.mnist: MNIST files are missing from {folder} ({files}) and could not be downloaded "
        f"({reason}). Put the four standard IDX files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
        f"t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz; gzipped or not) in {folder}, or point $MNIST_DIR "
        "(or data_dir=, or $SLOPE_DATA_DIR with an mnist/ subfolder) at the folder that holds them."
    )


def mnist(split: str = "train", data_dir: str | os.PathLike | None = None, download: bool = True,
          timeout: float = 30.0) -> Dataset:  # fmt: skip
    """The MNIST train (60,000) or test (10,000) split: images (N, 28, 28) uint8 and labels (N,) int64."""
    if split not in MNIST_FILES:
        raise ValueError(f"slope.nn.datasets.mnist: split must be 'train' or 'test', got {split!r}")
    folder = mnist_dir(data_dir)
    paths = {stem: _find(folder, stem) for stem in MNIST_FILES[split]}
    missing = [stem for stem, path in paths.items() if path is None]
    if missing and not download:
        raise FileNotFoundError(_missing_message(folder, missing, "download=False"))
    for stem in missing:
        try:
            paths[stem] = _download(folder, stem, timeout)
        except OSError as error:
            raise FileNotFoundError(_missing_message(folder, missing, str(error))) from None
    images_stem, labels_stem = MNIST_FILES[split]
    images = read_idx(paths[images_stem])
    labels = read_idx(paths[labels_stem]).astype(np.int64)
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"slope.nn.datasets.mnist: images {images.shape} and labels {labels.shape} in {folder} do not match"
        )
    return Dataset(images, labels)


def batches(*arrays: np.ndarray, batch_size: int, shuffle: bool = True, seed: int | None = None,
            drop_last: bool = True, order: np.ndarray | None = None) -> Iterator[tuple[np.ndarray, ...]]:  # fmt: skip
    """Mini-batches of NumPy arrays sliced along their first dimension (shuffled with `seed` when asked, or taken in
    the given `order` of row indices). The arguments are checked, and the shuffled order drawn, at the call."""
    arrays, order = _plan("batches", arrays, batch_size, shuffle, seed, order)
    return _slices(arrays, batch_size, order, drop_last)


def _plan(function: str, arrays: tuple, batch_size: int, shuffle: bool, seed: int | None,
          order: np.ndarray | None) -> tuple[tuple[np.ndarray, ...], np.ndarray | None]:  # fmt: skip
    """The checked arrays of `batches` and `loader` (array-likes as NumPy arrays) and the order of their rows (None:
    as they are)."""
    name = f"slope.nn.datasets.{function}"
    arrays = tuple(_as_array(name, i, a) for i, a in enumerate(arrays))
    if not arrays:
        raise TypeError(f"{name}: no arrays given: pass the arrays to slice into batches, e.g. {function}(images, "
                        "labels, batch_size=...)")  # fmt: skip
    if not _whole(batch_size, 1):
        raise ValueError(f"{name}: batch_size must be a positive integer, got {batch_size!r}")
    if not (seed is None or _whole(seed, 0) or isinstance(seed, _NUMPY_SEEDS)):
        message = f"{name}: seed must be a non-negative integer or None, got {_describe(seed)}"
        if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):  # a negative integer
            raise ValueError(message)
        hint = " (a slope.random key is not a NumPy seed: pass an integer)" if isinstance(seed, slope.Tensor) else ""
        raise TypeError(message + hint)
    count = len(arrays[0])
    if any(len(a) != count for a in arrays):
        raise ValueError(f"{name}: arrays differ in length: {[len(a) for a in arrays]}")
    if order is None:
        return arrays, (np.random.default_rng(seed).permutation(count) if shuffle else None)
    order = np.array(order)  # (a copy: it is checked here and read later, by the thread, with mode="wrap")
    if order.ndim != 1 or order.dtype.kind not in "iu":
        raise ValueError(f"{name}: order must be a 1-d array of row indices, got {order.shape} {order.dtype}")
    if order.size and (order.min() < -count or order.max() >= count):
        bad = order.min() if order.min() < -count else order.max()
        raise IndexError(f"{name}: order holds row index {bad}, out of range for arrays of {count} rows")
    return arrays, order


_NUMPY_SEEDS = (np.random.Generator, np.random.BitGenerator, np.random.SeedSequence)  # (np.random.default_rng's)


def _whole(value: Any, least: int) -> bool:
    """Whether value is an integer (a bool is not one here) of at least `least`."""
    return not isinstance(value, bool) and isinstance(value, (int, np.integer)) and value >= least


def _describe(value: Any) -> str:
    """A short account of an argument for an error message: its value, or its type and shape."""
    if isinstance(value, (np.ndarray, slope.Tensor)):
        return f"{type(value).__name__} of shape {tuple(value.shape)}"
    return repr(value) if isinstance(value, (int, float, str, type(None), np.generic)) else type(value).__name__


def _as_array(name: str, i: int, value: Any) -> np.ndarray:
    """An array to batch: a NumPy array as it is, an array-like (a list, a tensor) through np.asarray; one with no
    first dimension, or an iterator (np.asarray would make a 0-d object array of it), is refused."""
    if isinstance(value, Iterator):
        raise TypeError(f"{name}: arrays[{i}] is an iterator ({type(value).__name__}), not an array: make a list or "
                        "array of its items first")  # fmt: skip
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as error:  # a ragged list, ...
        message = f"{name}: arrays[{i}] ({type(value).__name__}) could not be made a NumPy array: {error}"
        raise ValueError(message) from None
    if array.ndim == 0:
        raise ValueError(f"{name}: arrays[{i}] must have a first dimension to slice into batches (a 0-d array or "
                         f"a scalar has none), got {_describe(value)}")  # fmt: skip
    return array


def _slices(arrays: tuple[np.ndarray, ...], batch_size: int, order: np.ndarray | None, drop_last: bool,
            empty: Any = None) -> Iterator[tuple[Any, ...]]:  # fmt: skip
    """The batches of rows `order` (None: in place, as views) of the arrays. With `empty` (a backend's `empty_cpu`),
    rows `order` are gathered straight into new buffers of the backend's, as `_Filled` (no copy into it after)."""
    count = len(arrays[0]) if order is None else len(order)
    stop = count - count % batch_size if drop_last else count
    for start in range(0, stop, batch_size):
        if order is None:
            yield tuple(a[start : start + batch_size] for a in arrays)
        else:
            index = order[start : start + batch_size]
            yield tuple(_gathered(a, index, empty) for a in arrays)


class _Filled(NamedTuple):
    """A batch gathered into a backend's buffer: the buffer, and the shape and NumPy dtype of its rows."""

    buffer: Any
    shape: tuple
    dtype: np.dtype


def _gathered(array: np.ndarray, index: np.ndarray, empty: Any) -> np.ndarray | _Filled:
    """Rows `index` (checked by `_plan`: within [-len, len)) of the array: a new array, or with `empty`, a backend
    buffer filled in place (a (200, 784) uint8 batch: 4 us less than gathering, then copying into an OrtValue)."""
    made = empty((len(index), *array.shape[1:]), array.dtype) if empty is not None and array.dtype.isnative else None
    if made is None:
        return np.take(array, index, axis=0)  # (as a[index], in 3/4 of its time for rows)
    np.take(array, index, axis=0, out=made[1], mode="wrap")  # ("raise" gathers into a temporary and copies that)
    return _Filled(made[0], made[1].shape, array.dtype)


def loader(*arrays: np.ndarray, batch_size: int, shuffle: bool = True, seed: int | None = None, drop_last: bool = True,
           order: np.ndarray | None = None, steps: int | None = None, prefetch: int = 2) -> Iterator[tuple[Any, ...]]:  # fmt: skip
    """Mini-batches as tensors on the backend (and device) active at the call (see `batches` for the slicing; at most
    `steps` of them): a background thread slices and transfers up to `prefetch` batches ahead while the caller's step
    runs (backends release the interpreter while they compute). The arguments are checked at the call, as by PyTorch's
    DataLoader; the thread starts at the first batch asked for."""
    arrays, order = _plan("loader", arrays, batch_size, shuffle, seed, order)
    if steps is not None and not _whole(steps, 0):
        raise ValueError(f"slope.nn.datasets.loader: steps must be None (the whole epoch) or a non-negative integer, "
                         f"got {steps!r}")  # fmt: skip
    if not _whole(prefetch, 1):
        raise ValueError(f"slope.nn.datasets.loader: prefetch must be at least 1 (an integer: the batches made ahead), "
                         f"got {prefetch!r}")  # fmt: skip
    backend, device = slope.get_backend(), slope.backend.default_device()  # here: a `with slope.use_backend` may end
    # a backend that copies NumPy arrays into its own buffers gets the rows gathered into one of them instead
    empty = getattr(backend, "empty_cpu", None) if device == "cpu" and backend.copies_from_numpy else None
    source = _slices(arrays, batch_size, order, drop_last, empty)
    if steps is not None:
        source = itertools.islice(source, steps)
    for i, array in enumerate(arrays):  # before the first batch is asked for, and the worker must not switch backends
        try:
            dtype = slope.dtypes.as_dtype(array.dtype)
        except TypeError:
            names = ", ".join(sorted(d.name for d in backend.dtypes))
            raise TypeError(f"slope.nn.datasets.loader: arrays[{i}] has dtype {array.dtype}, which slope tensors do "
                            f"not hold (they hold {names}): convert it, e.g. with .astype") from None  # fmt: skip
        backend.check_dtype(dtype, "nn.datasets.loader")
    return _prefetched(source, backend, device, prefetch)


def _prefetched(source: Iterator[tuple[np.ndarray, ...]], backend: Any, device: Any,
                prefetch: int) -> Iterator[tuple[Any, ...]]:  # fmt: skip
    """The batches of `source` as tensors of `backend` on `device`, made by a thread up to `prefetch` ahead. Each batch
    is a fresh array, so it goes to the backend without a copy of its own where the backend keeps NumPy arrays as they
    are."""
    ready: queue.Queue = queue.Queue(prefetch)
    stop = threading.Event()

    def to_tensor(array: np.ndarray | _Filled) -> Any:
        dtype = slope.dtypes.as_dtype(array.dtype)
        if type(array) is _Filled:  # (gathered into the backend's buffer already)
            return slope.Tensor(array.buffer, slope.Aval(array.shape, dtype), backend, device)
        if not array.dtype.isnative:  # big-endian data ('>f4'), as slope.tensor takes it (iree read its bytes as they
            array = array.astype(array.dtype.newbyteorder("="))  # were: 1.0 was 4.6e-41; onnxruntime refused it)
        elif not (backend.copies_from_numpy or array.flags.owndata):  # a slice of the caller's array: copy it here
            array = array.copy()
        return slope.Tensor(backend.from_numpy(np.ascontiguousarray(array), device), slope.Aval(array.shape, dtype),
                            backend, device)  # fmt: skip

    def fill() -> None:
        item: Any = None  # the end
        try:
            for batch in source:
                if not put(tuple(to_tensor(a) for a in batch)):
                    return
        except BaseException as error:  # raised again in the caller's thread
            item = error
        put(item)

    def put(item: Any) -> bool:
        """Queue an item unless the caller stopped listening; whether it was queued."""
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    worker = threading.Thread(target=fill, name="slope-loader", daemon=True)
    worker.start()
    try:
        while True:
            item = ready.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
