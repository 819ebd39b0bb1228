"""Max pooling on the backends that translate it natively (onnxruntime: MaxPool with its Indices output, MaxUnpool
for the gradient; iree: reduce_window over values and positions, a dense unpooling for the gradient) against the
NumPy backend: ties (whole windows of equal values), -inf, odd sizes (floor pooling drops a row), float16, 1-d to
3-d, and what a NaN in a window does."""

from __future__ import annotations

import numpy as np
import pytest

import slope

# the backends with native max pooling translations (slope-nn's onnx_translations and iree_translations)
NATIVE = [name for name in ("onnxruntime", "iree") if name in slope.plugins.backends]

CASES = [  # (input shape, kernel): the benchmark CNN's two pools (fewer images), odd sizes, 1-d and 3-d tiles
    ((2, 32, 26, 26), (2, 2)),
    ((2, 64, 11, 11), (2, 2)),
    ((3, 2, 7, 9), (3, 2)),
    ((2, 3, 17), (4,)),
    ((2, 2, 5, 6, 7), (2, 3, 2)),
    ((5, 9, 8), (2, 2)),  # unbatched: every leading dimension is a channel
]


def _tied(shape: tuple, kernel: tuple, seed: int) -> np.ndarray:
    """Values from {-inf, 0, 1, 2}: most windows hold ties; some whole windows are one repeated positive value."""
    rng = np.random.default_rng(seed)
    x = rng.choice(np.array([-np.inf, 0.0, 1.0, 2.0]), size=shape, p=[0.1, 0.3, 0.3, 0.3])
    n = len(kernel)
    window = tuple(slice(0, k) for k in kernel)
    x[(Ellipsis, *window)] = 3.0  # the first window of every channel: all equal, positive
    x[(0,) * (x.ndim - n) + tuple(slice(k, 2 * k) for k in kernel)] = -np.inf  # one window of -inf only
    return x


def _run(backend: str, x: np.ndarray, kernel: tuple, dtype: slope.DType) -> list[np.ndarray]:
    weights = np.arange(1, 1 + np.prod(_pooled(x.shape, kernel)), dtype=np.float32).reshape(_pooled(x.shape, kernel))

    def step(t: slope.Tensor) -> tuple:
        indices = slope.max_pool_argmax(t, kernel)  # first, as the derivative binds it: one node for both
        values = slope.max_pool(t, kernel)
        grad = slope.grad(lambda u: (slope.max_pool(u, kernel) * slope.tensor(weights, dtype=dtype)).sum())(t)
        return values, indices, grad

    with slope.use_backend(backend):
        return [np.asarray(r.numpy(), np.float64) for r in slope.jit(step)(slope.tensor(x, dtype=dtype))]


def _pooled(shape: tuple, kernel: tuple) -> tuple:
    n = len(kernel)
    return shape[: len(shape) - n] + tuple(s // k for s, k in zip(shape[len(shape) - n :], kernel))


@pytest.mark.parametrize("backend", NATIVE)
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize(("shape", "kernel"), CASES)
def test_tiled_max_pool_natively_matches_numpy_on_ties(backend, shape, kernel, dtype):
    dtype = getattr(slope, dtype)
    for seed in range(2):
        x = _tied(shape, kernel, seed)
        expected = _run("numpy", x, kernel, dtype)
        got = _run(backend, x, kernel, dtype)
        for name, e, g in zip(("values", "indices", "gradient"), expected, got):
            np.testing.assert_array_equal(g, e, err_msg=f"{name} of {shape} pooled by {kernel}")
        # ties go to the first maximum in row-major window order: the all-equal first window picks its corner
        assert (got[1][(Ellipsis, *(0,) * len(kernel))] == 0).all()


@pytest.mark.parametrize("backend", NATIVE)
def test_max_pool_of_random_values_natively_matches_a_numpy_reference(backend):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((4, 8, 13, 11)).astype(np.float32)
    values, indices = _run(backend, x, (2, 2), slope.float32)[:2]
    windows = x[:, :, :12, :10].reshape(4, 8, 6, 2, 5, 2).transpose(0, 1, 2, 4, 3, 5).reshape(4, 8, 6, 5, 4)
    k = windows.argmax(-1)
    rows, cols = np.arange(6)[:, None] * 2 + k // 2, np.arange(5) * 2 + k % 2
    np.testing.assert_array_equal(indices, rows * 11 + cols)
    np.testing.assert_array_equal(values, windows.max(-1))


def test_a_nan_in_a_window_gives_nan_as_in_pytorch(each_backend):
    x = np.array([[1, np.nan, 3, 2], [np.nan, 1, 2, 3], [np.nan, np.nan, 1, 1], [-np.inf, np.nan, -np.inf, 0]])
    values = _run(each_backend, x.reshape(1, 4, 2, 2), (2, 2), slope.float32)[0]
    assert np.isnan(values).all(), values


POOLS = [  # (input shape, kernel, stride, padding, dilation): tiles, overlaps, padding, dilation, 1-d and 3-d
    ((2, 3, 6, 6), (2, 2), None, 0, 1),
    ((2, 3, 7, 5), (3, 3), 2, 1, 1),
    ((1, 2, 9, 8), (2, 3), 1, 0, 2),
    ((2, 2, 11), (3,), 2, 1, 1),
    ((1, 2, 4, 5, 4), (2, 2, 2), None, 0, 1),
]


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
@pytest.mark.parametrize(("shape", "kernel", "stride", "padding", "dilation"), POOLS)
def test_max_pool_of_nan_and_infinities_matches_pytorch(each_backend, shape, kernel, stride, padding, dilation, dtype):
    """Values equal PyTorch's everywhere (NaN for each window holding a NaN, wherever it lies in the window); the
    indices too (in a window holding NaN: its last NaN, as PyTorch)."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(len(shape) * 10 + len(dtype))
    specials = np.array([np.nan, np.inf, -np.inf, 0.0, 1.0])
    x = np.where(rng.random(shape) < 0.15, rng.choice(specials, shape), rng.standard_normal(shape))
    x[(0,) * (len(shape) - 1) + (1,)] = np.nan  # not first in its window
    pool = getattr(torch.nn.functional, f"max_pool{len(kernel)}d")
    tx = torch.tensor(x).to(getattr(torch, dtype))
    expected, expected_index = pool(tx, kernel, stride, padding, dilation, return_indices=True)
    t = slope.tensor(x, dtype=dtype)
    for run in (slope.max_pool, slope.jit(slope.max_pool, static_argnums=(1, 2, 3, 4))):
        got = run(t, kernel, stride, padding, dilation)
        np.testing.assert_array_equal(got.numpy().astype(np.float64), expected.double().numpy())
    index = slope.jit(slope.max_pool_argmax, static_argnums=(1, 2, 3, 4))(t, kernel, stride, padding, dilation)
    plain = ~np.isnan(expected.double().numpy())
    assert np.isnan(x).any() and not plain.all()  # the case does hold windows with NaN
    np.testing.assert_array_equal(index.numpy(), expected_index.numpy())
