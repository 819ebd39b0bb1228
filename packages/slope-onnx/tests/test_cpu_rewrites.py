"""The rewrites of a CPU session's model (`slope_onnx.cpu_rewrites`): NCHWc convolutions (filters that are inputs
or constants), and max pooling by phases. Each case is big enough for a session with threads (where the rewrites
apply) and is compared with the NumPy backend, values and gradients; the rewritten graph is checked to hold the new
forms."""

from __future__ import annotations

import numpy as np
import pytest

import slope

pytestmark = pytest.mark.skipif("onnxruntime" not in slope.plugins.backends, reason="slope-onnx is not registered")

cpu_rewrites = pytest.importorskip("slope_onnx.cpu_rewrites")
backend_module = pytest.importorskip("slope_onnx.backend")

# float32: sums of a few hundred products cancel, so the absolute error follows the array's largest magnitude
RTOL, ATOL_OF_LARGEST = 2e-4, 2e-5


@pytest.fixture(autouse=True)
def session_models(monkeypatch) -> list:
    """The models handed to CPU sessions during a test (what `for_cpu_session` returned)."""
    seen: list = []

    def spy(model):
        seen.append(cpu_rewrites.for_cpu_session(model))
        return seen[-1]

    monkeypatch.setattr(backend_module, "for_cpu_session", spy)
    return seen


def _compare(loss, arrays: list[np.ndarray], session_models: list) -> list:
    """Loss and gradients of every argument on both backends (compared), and the ONNX graph the CPU session ran."""
    results = {}
    for backend in ("numpy", "onnxruntime"):
        with slope.use_backend(backend):
            tensors = [slope.tensor(a) for a in arrays]
            step = slope.jit(slope.value_and_grad(loss, argnums=tuple(range(len(arrays)))))
            value, grads = step(*tensors)
            results[backend] = [value.numpy(), *(g.numpy() for g in grads)]
            if backend == "onnxruntime":
                plain = step.lower(*tensors).executable.model
    for expected, got in zip(*results.values()):
        np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL_OF_LARGEST * np.abs(expected).max())
    assert all(node.domain == "" for node in plain.graph.node)  # `.code` and exports stay plain ONNX
    assert len(session_models) == 1  # the step ran in a session with threads, which got the rewritten model
    return list(session_models[0].graph.node)


def test_block_size_is_read_from_onnxruntime():
    assert cpu_rewrites.block_size() in (0, 4, 8, 16)


CONVS = [  # (input shape, filter shape, conv parameters, ReLU after it)
    ((4, 16, 20, 20), (32, 16, 3, 3), {}, True),
    ((8, 16, 21, 20), (16, 16, 3, 3), {"stride": 2, "padding": 1}, False),
    ((3, 32, 18, 19), (16, 32, 3, 2), {"dilation": 2, "padding": ((1, 2), (0, 1))}, True),
    ((4, 16, 24, 24), (32, 16, 1, 1), {"stride": (1, 2)}, False),
]


@pytest.mark.parametrize(("x_shape", "w_shape", "params", "relu"), CONVS)
def test_blocked_convolutions_match_numpy(x_shape, w_shape, params, relu, session_models):
    rng = np.random.default_rng(len(params))
    arrays = [rng.standard_normal(s).astype(np.float32) for s in (x_shape, w_shape, w_shape[:1])]

    def loss(x, w, b):
        y = slope.conv(x, w, b, **params)
        return ((slope.relu(y) if relu else y) ** 2).sum()

    kinds = [node.op_type for node in _compare(loss, arrays, session_models)]
    if cpu_rewrites.block_size():
        assert "ReorderInput" in kinds and "ReorderOutput" in kinds
        assert ("Relu" not in kinds) if relu else True  # the ReLU runs inside the NCHWc convolution


def test_convolutions_with_channels_not_in_blocks_stay_plain(session_models):
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(s).astype(np.float32) for s in ((4, 6, 30, 30), (10, 6, 3, 3))]
    nodes = _compare(lambda x, w: (slope.conv(x, w) ** 2).sum(), arrays, session_models)
    assert all(node.domain == "" for node in nodes)


PHASES = [  # (input shape, filter shape, conv parameters, pooling window, ReLU, bias)
    ((8, 1, 26, 26), (32, 1, 3, 3), {}, 2, True, True),  # the benchmark CNN's first layer
    ((6, 3, 25, 26), (8, 3, 3, 3), {"padding": 1}, 3, True, False),  # odd sizes: floor pooling drops rows
    ((8, 2, 27, 25), (16, 2, 2, 3), {"padding": ((1, 0), (0, 2))}, 2, False, True),
]


def _images(shape: tuple, rng: np.random.Generator) -> np.ndarray:
    """Mostly-zero images (as MNIST's background): with a positive bias whole windows tie at a positive value."""
    return (rng.random(shape) < 0.3).astype(np.float32) * rng.random(shape).astype(np.float32)


@pytest.mark.parametrize(("x_shape", "w_shape", "params", "window", "relu", "bias"), PHASES)
def test_pooling_by_phases_matches_numpy_with_ties(x_shape, w_shape, params, window, relu, bias, session_models):
    rng = np.random.default_rng(window)
    arrays = [_images(x_shape, rng), rng.standard_normal(w_shape).astype(np.float32)]
    if bias:
        arrays.append(np.abs(rng.standard_normal(w_shape[:1])).astype(np.float32) + 0.1)

    def pooled(x, w, *b):
        y = slope.conv(x, w, *b, **params)
        return slope.max_pool(slope.relu(y) if relu else y, window)

    with slope.use_backend("numpy"):
        shape = pooled(*(slope.tensor(a) for a in arrays)).shape
    probe = slope.tensor(rng.random(shape).astype(np.float32))  # a weight per pooled element: routes told apart

    def loss(x, w, *b):
        return (pooled(x, w, *b) * probe).sum()

    kinds = [node.op_type for node in _compare(loss, arrays, session_models)]
    assert kinds.count("MaxPool") == 0 and kinds.count("Max") == 1  # the maxima (each window's last NaN: in an If)
    assert kinds.count("If") == 1
    assert kinds.count("Conv") >= window * window  # one strided convolution per window position


def test_pooling_by_phases_keeps_the_first_maximum_like_maxpool():
    """Windows of equal values: the indices (and so the gradient) go to each window's first element."""
    x = np.zeros((8, 1, 26, 26), np.float32)
    w, b = np.zeros((32, 1, 3, 3), np.float32), np.full(32, 0.5, np.float32)  # every output 0.5: all windows tie
    rows, columns = np.meshgrid(np.arange(12), np.arange(12), indexing="ij")
    expected = (2 * rows * 24 + 2 * columns)[None, None] + np.arange(8 * 32).reshape(8, 32, 1, 1) * 24 * 24
    for backend in ("numpy", "onnxruntime"):
        with slope.use_backend(backend):
            step = slope.jit(lambda a, k, c: slope.max_pool_argmax(slope.relu(slope.conv(a, k, c)), 2))
            got = step(slope.tensor(x), slope.tensor(w), slope.tensor(b)).numpy()
        np.testing.assert_array_equal(got, expected % (24 * 24), err_msg=backend)


def test_pooling_by_phases_gives_nan_for_a_nan_in_a_window():
    x = np.zeros((8, 1, 26, 26), np.float32)
    x[0, 0, 5, 5] = x[3, 0, 20, 11] = np.nan
    w, b = np.ones((32, 1, 3, 3), np.float32), np.ones(32, np.float32)

    def pooled(a, k, c):
        return slope.max_pool(slope.relu(slope.conv(a, k, c)), 2)

    def values_and_grad(a, k, c):  # two MaxPools of one input (values, indices): the plain form, NaN-guarded
        return pooled(a, k, c), slope.grad(lambda kk: pooled(a, kk, c).sum())(k)

    results = {}
    for backend in ("numpy", "onnxruntime"):
        with slope.use_backend(backend):
            values, _ = slope.jit(values_and_grad)(*(slope.tensor(a) for a in (x, w, b)))
            results[backend] = values.numpy()
    assert np.isnan(results["numpy"]).sum() == 2 * 32 * 4  # each NaN reaches 9 outputs in 4 windows, per channel
    np.testing.assert_array_equal(np.isnan(results["onnxruntime"]), np.isnan(results["numpy"]))


def test_expensive_convolutions_and_overlapping_windows_keep_maxpool(session_models):
    rng = np.random.default_rng(3)
    arrays = [rng.standard_normal(s).astype(np.float32) for s in ((4, 8, 26, 26), (16, 8, 3, 3))]
    nodes = _compare(lambda x, w: slope.max_pool(slope.relu(slope.conv(x, w)), 2).sum(), arrays, session_models)
    assert [n.op_type for n in nodes].count("MaxPool") == 1  # 8 channels x 3 x 3 reads: the conv is not cheap
    assert [n.op_type for n in nodes].count("If") == 1  # the NaN guard's MaxPool, run when the input holds NaN
    arrays = [rng.standard_normal(s).astype(np.float32) for s in ((8, 1, 30, 30), (16, 1, 3, 3))]
    session_models.clear()
    nodes = _compare(
        lambda x, w: slope.max_pool(slope.relu(slope.conv(x, w)), 3, stride=2).sum(), arrays, session_models
    )
    assert [n.op_type for n in nodes].count("MaxPool") == 1


def test_the_benchmark_cnn_step_matches_numpy(session_models):
    """Both rewrites in one graph (conv1 + pool1 by phases, conv2 in NCHWc), with the linear layer, softmax
    cross-entropy and the ReLU masks taken at pooled size: loss and every gradient as on the NumPy backend."""
    rng = np.random.default_rng(7)
    shapes = [(32, 1, 3, 3), (32,), (64, 32, 3, 3), (64,), (10, 64 * 5 * 5), (10,)]
    arrays = [(rng.standard_normal(s) * 0.1).astype(np.float32) for s in shapes]
    images, labels = _images((16, 1, 28, 28), rng), rng.integers(0, 10, 16)

    def loss(w1, b1, w2, b2, w3, b3):
        h = slope.max_pool(slope.relu(slope.conv(slope.tensor(images), w1, b1)), 2)
        h = slope.max_pool(slope.relu(slope.conv(h, w2, b2)), 2)
        return slope.cross_entropy(h.reshape(h.shape[0], -1) @ w3.T + b3, slope.tensor(labels))

    kinds = [node.op_type for node in _compare(loss, arrays, session_models)]
    assert kinds.count("MaxPool") == 1 and kinds.count("Max") == 1  # pool1 by phases, pool2 MaxPool
    assert kinds.count("If") == 2  # their NaN guards, run only when a value is NaN
    if cpu_rewrites.block_size():
        assert kinds.count("ReorderInput") == 1  # conv2 in NCHWc (32 and 64 channels: whole blocks of 4, 8, 16)
    assert kinds.count("Col2Im") == 1  # conv2's input gradient: one GEMM, its products added in place


def test_pooling_by_phases_keeps_a_nan_in_a_window(session_models):
    """A training step pooled by phases (no MaxPool left): each window holding a NaN pools to NaN, as on NumPy."""
    x = np.zeros((8, 1, 26, 26), np.float32)
    x[0, 0, 5, 5] = x[3, 0, 20, 11] = np.nan
    w, b = np.ones((32, 1, 3, 3), np.float32), np.ones(32, np.float32)

    def loss(k, a, c):
        pooled = slope.max_pool(slope.relu(slope.conv(a, k, c)), 2)
        return pooled.sum(), pooled

    results = {}
    for backend in ("numpy", "onnxruntime"):
        with slope.use_backend(backend):
            (_, pooled), _ = slope.jit(slope.value_and_grad(loss, has_aux=True))(*(slope.tensor(a) for a in (w, x, b)))
            results[backend] = pooled.numpy()
    kinds = [node.op_type for node in session_models[-1].graph.node]
    assert "MaxPool" not in kinds and kinds.count("Max") == 1 and kinds.count("If") == 1, kinds
    assert np.isnan(results["numpy"]).sum() == 2 * 32 * 4  # each NaN reaches 9 outputs in 4 windows, per channel
    np.testing.assert_array_equal(np.isnan(results["onnxruntime"]), np.isnan(results["numpy"]))


def test_pooling_by_phases_names_the_last_nan_of_a_window_as_pytorch(session_models):
    """The index of a window holding NaN is its last NaN (PyTorch's), by phases as by MaxPool, and so is the gradient's
    route; the windows without NaN keep the first maximum."""
    torch = pytest.importorskip("torch")
    x = np.zeros((8, 1, 27, 27), np.float32)
    x[0, 0, 4:6, 4:6] = np.nan  # four NaNs in the windows around (4..5, 4..5)
    x[3, 0, 20, 11] = x[3, 0, 20, 13] = np.nan
    w, b = np.ones((32, 1, 2, 2), np.float32), np.ones(32, np.float32)
    conv = torch.nn.functional.conv2d(torch.tensor(x), torch.tensor(w), torch.tensor(b)).relu()
    expected = torch.nn.functional.max_pool2d(conv, 2, return_indices=True)[1].numpy()
    for backend in ("numpy", "onnxruntime"):
        session_models.clear()
        with slope.use_backend(backend):
            step = slope.jit(lambda a, k, c: slope.max_pool_argmax(slope.relu(slope.conv(a, k, c)), 2))
            got = step(*(slope.tensor(a) for a in (x, w, b))).numpy()
        np.testing.assert_array_equal(got, expected, err_msg=backend)
    assert "MaxPool" not in [node.op_type for node in session_models[-1].graph.node]  # by phases


def test_a_lazy_nan_guard_of_maxpool_names_the_last_nan_as_pytorch(session_models):
    """A MaxPool left as is (an expensive convolution before it) runs its NaN guard in an If: taken when the input
    holds NaN, each such window gives NaN and its last NaN's index, as PyTorch; skipped otherwise."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    x, w = rng.standard_normal((4, 8, 26, 26)).astype(np.float32), rng.standard_normal((16, 8, 3, 3)).astype(np.float32)
    x[1, :, 6:8, 6:8] = np.nan  # NaN in every channel of the convolution around there
    conv = torch.nn.functional.conv2d(torch.tensor(x), torch.tensor(w)).relu()
    values, expected = torch.nn.functional.max_pool2d(conv, 2, return_indices=True)
    for data in (x, np.nan_to_num(x)):
        session_models.clear()
        with slope.use_backend("onnxruntime"):
            step = slope.jit(lambda a, k: slope.max_pool(slope.relu(slope.conv(a, k)), 2, return_indices=True))
            got_values, got = step(slope.tensor(data), slope.tensor(w))
        assert [node.op_type for node in session_models[-1].graph.node].count("If") == 1
        if data is x:
            np.testing.assert_array_equal(got.numpy(), expected.numpy())
            np.testing.assert_array_equal(np.isnan(got_values.numpy()), np.isnan(values.numpy()))


def _jit_and_eager(f, *arrays: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """f jitted on onnxruntime (a session with threads) and eagerly on the NumPy backend."""
    jitted = slope.jit(f)(*(slope.tensor(a) for a in arrays)).numpy()
    with slope.use_backend("numpy"):
        return jitted, f(*(slope.tensor(a) for a in arrays)).numpy()


@pytest.mark.parametrize("closed_over", [False, True])
@pytest.mark.parametrize("groups", [1, 16])
def test_blocked_convolutions_multiply_the_padding(closed_over, groups, session_models):
    """An infinite weight meets the padding's zeros: NaN there, as eagerly (the NCHWc kernel skips padding, so the
    rewrite pads first; onnxruntime's own NCHWc rewrite of constant filters gave no NaN, depthwise ones too)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 16, 40, 40)).astype(np.float32)
    w = rng.standard_normal((16, 16 // groups, 3, 3)).astype(np.float32)
    w[0, 0, 0, 0] = np.inf
    if closed_over:
        filters = slope.tensor(w)
        jitted, eager = _jit_and_eager(lambda a: slope.conv(a, filters, padding=1, groups=groups) * 2, x)
    else:
        jitted, eager = _jit_and_eager(lambda a, k: slope.conv(a, k, padding=1, groups=groups) * 2, x, w)
    assert np.isnan(eager).sum() == 2 * 79  # the first row and column of channel 0, in both images
    np.testing.assert_array_equal(np.isnan(jitted), np.isnan(eager))
    finite = np.abs(eager[np.isfinite(eager)]).max()
    np.testing.assert_allclose(jitted, eager, rtol=RTOL, atol=ATOL_OF_LARGEST * finite)
    kinds = [node.op_type for node in session_models[-1].graph.node]
    if cpu_rewrites.block_size() and groups == 1:  # constant filters are rewritten too
        assert kinds.count("ReorderInput") == 1 and kinds.count("Pad") == 1


def test_a_sum_of_two_convolutions_is_not_accumulated_in_blocks(session_models):
    """conv(x, b) + conv(x, a) with closed-over filters: onnxruntime's NchwcTransformer (now off) made the second
    convolution add its blocks of input channels onto the first's output one by one, so 3e38 + 3e38 - 3e38 became inf
    and 2**24 + 1 + 1 stayed 2**24; Slope's NCHWc rewrite keeps the Add outside."""
    x = np.ones((2, 32, 24, 24), np.float32)
    for big, first, second in ((3e38, 3e38, -3e38), (2.0**24, 1.0, 1.0)):
        wa, wb = np.zeros((16, 32, 3, 3), np.float32), np.zeros((16, 32, 3, 3), np.float32)
        wa[:, 0, 1, 1], wb[:, 0, 1, 1], wb[:, 16, 1, 1] = big, first, second
        a, b = slope.tensor(wa), slope.tensor(wb)

        def summed(t, a=a, b=b):
            return slope.conv(t, b, padding=1) + slope.conv(t, a, padding=1)

        jitted, eager = _jit_and_eager(summed, x)
        assert eager[0, 0, 5, 5] == np.float32(big) + np.float32(first + second)
        np.testing.assert_array_equal(jitted, eager)
        if cpu_rewrites.block_size():
            kinds = [node.op_type for node in session_models[-1].graph.node]
            assert kinds.count("ReorderInput") == 2 and kinds.count("Add") == 1
