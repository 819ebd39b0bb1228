"""Every layer's forward pass against a NumPy reference with the same weights, and its gradients against finite
differences (float64). Tolerances per dtype are in nn_helpers.TOLERANCES and nn_helpers.FD_TOLERANCE."""

from __future__ import annotations

import math

import numpy as np
import pytest
from nn_helpers import assert_close, finite_difference_check, rng

import slope
import slope.nn as nn

pytestmark = pytest.mark.usefixtures("each_backend")

DTYPES = ["float32", "float64"]


def as_dtype(name: str):
    return getattr(slope, name)


def run(module: nn.Module, *inputs):
    """The layer's output through jit (one compiled program per test; a BatchNorm's updated statistics dropped)."""
    return slope.jit(lambda m, *xs: nn.apply(m, *xs)[0])(module, *inputs)


def weighted_sum_loss(module: nn.Module, x: slope.Tensor, weights: slope.Tensor) -> slope.Tensor:
    """A scalar that depends on every output element differently (a BatchNorm's updated statistics dropped)."""
    return (nn.apply(module, x)[0] * weights).sum()


def check_gradients(module: nn.Module, x: slope.Tensor, seed: int = 1) -> None:
    out = run(module, x)
    weights = slope.tensor(rng(seed).standard_normal(out.shape))
    finite_difference_check(weighted_sum_loss, (module, x, weights))


# ----------------------------------------------------------------------------------------------- references


def np_conv(x, w, b, stride, padding, dilation, groups):
    n = x.ndim - 2
    x = np.pad(x, [(0, 0), (0, 0)] + [(p, p) for p in padding])
    out_channels, per_group = w.shape[0], w.shape[1]
    kernel = w.shape[2:]
    spatial = [(s - d * (k - 1) - 1) // st + 1 for s, k, st, d in zip(x.shape[2:], kernel, stride, dilation)]
    out = np.zeros((x.shape[0], out_channels, *spatial), dtype=np.float64)
    out_per_group = out_channels // groups
    for g in range(groups):
        xg = x[:, g * per_group : (g + 1) * per_group]
        for offset in np.ndindex(*kernel):
            window = tuple(
                slice(o * d, o * d + (m - 1) * st + 1, st) for o, d, m, st in zip(offset, dilation, spatial, stride)
            )
            patch = xg[(slice(None), slice(None), *window)]
            wk = w[(slice(g * out_per_group, (g + 1) * out_per_group), slice(None), *offset)]
            out[:, g * out_per_group : (g + 1) * out_per_group] += np.einsum("nc...,oc->no...", patch, wk)
    if b is not None:
        out += b.reshape((1, -1) + (1,) * n)
    return out


def np_conv_transpose(x, w, b, stride, padding, output_padding, dilation, groups):
    n = x.ndim - 2
    in_per_group, out_per_group = w.shape[0] // groups, w.shape[1]
    kernel = w.shape[2:]
    full = [
        (s - 1) * st + d * (k - 1) + 1 + op
        for s, st, d, k, op in zip(x.shape[2:], stride, dilation, kernel, output_padding)
    ]
    out = np.zeros((x.shape[0], out_per_group * groups, *full), dtype=np.float64)
    for g in range(groups):
        xg = x[:, g * in_per_group : (g + 1) * in_per_group]
        for offset in np.ndindex(*kernel):
            target = tuple(
                slice(o * d, o * d + (s - 1) * st + 1, st) for o, d, s, st in zip(offset, dilation, x.shape[2:], stride)
            )
            wk = w[(slice(g * in_per_group, (g + 1) * in_per_group), slice(None), *offset)]
            out[(slice(None), slice(g * out_per_group, (g + 1) * out_per_group), *target)] += np.einsum(
                "nc...,co->no...", xg, wk
            )
    sizes = [(s - 1) * st - 2 * p + d * (k - 1) + op + 1
             for s, st, p, d, k, op in zip(x.shape[2:], stride, padding, dilation, kernel, output_padding)]  # fmt: skip
    out = out[(slice(None), slice(None), *(slice(p, p + size) for p, size in zip(padding, sizes)))]
    if b is not None:
        out += b.reshape((1, -1) + (1,) * n)
    return out


def np_pool(x, kernel, stride, padding, mode):
    n = len(kernel)
    fill = -np.inf if mode == "max" else 0.0
    x = np.pad(x, [(0, 0)] * (x.ndim - n) + [(p, p) for p in padding], constant_values=fill)
    spatial = [(s - k) // st + 1 for s, k, st in zip(x.shape[-n:], kernel, stride)]
    windows = []
    for offset in np.ndindex(*kernel):
        window = tuple(slice(o, o + (m - 1) * st + 1, st) for o, m, st in zip(offset, spatial, stride))
        windows.append(x[(Ellipsis, *window)])
    stacked = np.stack(windows, -1)
    return stacked.max(-1) if mode == "max" else stacked.mean(-1)


def np_softmax(x, axis=-1):
    shifted = x - x.max(axis, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis, keepdims=True)


def np_linear(x, w, b):
    return x @ w.T + (0 if b is None else b)


def np_attention(module, q, k, v, attn_mask=None, key_padding_mask=None, is_causal=False):
    p = {name: t.numpy().astype(np.float64) for name, t in module.named_parameters()}
    heads = module.num_heads
    e = module.embed_dim
    d = e // heads

    def project(x, name):
        y = np_linear(x, p[f"{name}.weight"], p[f"{name}.bias"])
        return y.reshape(y.shape[0], y.shape[1], heads, d).transpose(0, 2, 1, 3)

    qh, kh, vh = project(q, "q_proj"), project(k, "k_proj"), project(v, "v_proj")
    scores = qh @ kh.transpose(0, 1, 3, 2) / math.sqrt(d)
    if is_causal:
        scores = np.where(np.triu(np.ones(scores.shape[-2:], bool), 1), -np.inf, scores)
    if attn_mask is not None:
        scores = np.where(attn_mask, -np.inf, scores) if attn_mask.dtype == bool else scores + attn_mask
    if key_padding_mask is not None:
        scores = np.where(key_padding_mask[:, None, None, :], -np.inf, scores)
    weights = np_softmax(scores)
    out = (weights @ vh).transpose(0, 2, 1, 3).reshape(q.shape[0], q.shape[1], e)
    return np_linear(out, p["out_proj.weight"], p["out_proj.bias"]), weights.mean(1)


def params(module: nn.Module) -> dict[str, np.ndarray]:
    return {name: t.numpy().astype(np.float64) for name, t in module.state_dict().items()}


# ----------------------------------------------------------------------------------------------- linear, conv


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
def test_linear(dtype, bias):
    layer = nn.Linear(5, 3, bias=bias, key=slope.random.key(0), dtype=as_dtype(dtype))
    x = rng().standard_normal((2, 4, 5)).astype(dtype)
    p = params(layer)
    assert layer.weight.shape == (3, 5) and layer.weight.dtype == as_dtype(dtype)
    assert np.abs(p["weight"]).max() <= 1 / math.sqrt(5)  # PyTorch's default bound
    expected = np_linear(x.astype(np.float64), p["weight"], p.get("bias"))
    assert_close(run(layer, slope.tensor(x)), expected, dtype)


CONV_CASES = {
    "conv1d": (nn.Conv1d, dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1, groups=2), (2, 4, 9)),
    "conv2d": (
        nn.Conv2d,
        dict(in_channels=3, out_channels=4, kernel_size=(3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2)),
        (2, 3, 7, 8),
    ),  # fmt: skip
    "conv2d_nobias": (nn.Conv2d, dict(in_channels=2, out_channels=2, kernel_size=3, bias=False), (1, 2, 5, 5)),
    "conv2d_same": (nn.Conv2d, dict(in_channels=2, out_channels=3, kernel_size=3, padding="same"), (2, 2, 6, 5)),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_conv(case, dtype):
    cls, kwargs, shape = CONV_CASES[case]
    layer = cls(**kwargs, key=slope.random.key(1), dtype=as_dtype(dtype))
    x = rng().standard_normal(shape).astype(dtype)
    p = params(layer)
    n = len(shape) - 2
    padding = (1,) * n if layer.padding == "same" else layer.padding
    expected = np_conv(x.astype(np.float64), p["weight"], p.get("bias"), layer.stride, padding, layer.dilation,
                       layer.groups)  # fmt: skip
    assert_close(run(layer, slope.tensor(x)), expected, dtype)


TRANSPOSE_CASES = {
    "conv_transpose2d": (
        nn.ConvTranspose2d,
        dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1, output_padding=1, groups=2),
        (2, 4, 4, 5),
    ),  # fmt: skip
    "conv_transpose2d_plain": (
        nn.ConvTranspose2d,
        dict(in_channels=3, out_channels=2, kernel_size=(2, 3)),
        (1, 3, 3, 4),
    ),
    "conv_transpose1d": (
        nn.ConvTranspose1d,
        dict(in_channels=2, out_channels=3, kernel_size=4, stride=3, dilation=2),
        (2, 2, 5),
    ),  # fmt: skip
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", sorted(TRANSPOSE_CASES))
def test_conv_transpose(case, dtype):
    cls, kwargs, shape = TRANSPOSE_CASES[case]
    layer = cls(**kwargs, key=slope.random.key(2), dtype=as_dtype(dtype))
    x = rng().standard_normal(shape).astype(dtype)
    p = params(layer)
    expected = np_conv_transpose(x.astype(np.float64), p["weight"], p.get("bias"), layer.stride, layer.padding,
                                 layer.output_padding, layer.dilation, layer.groups)  # fmt: skip
    assert_close(run(layer, slope.tensor(x)), expected, dtype)


# ----------------------------------------------------------------------------------------------- pooling


POOL_CASES = {
    "max2d": (nn.MaxPool2d(2), "max", (2, 3, 6, 8)),
    "max2d_overlap": (nn.MaxPool2d(3, stride=2, padding=1), "max", (1, 2, 7, 6)),
    "avg2d": (nn.AvgPool2d(2), "avg", (2, 3, 6, 8)),
    "avg2d_stride": (nn.AvgPool2d((3, 2), stride=(1, 2)), "avg", (1, 2, 5, 6)),
    "max1d": (nn.MaxPool1d(3), "max", (2, 3, 9)),
    "avg1d": (nn.AvgPool1d(2, padding=1), "avg", (2, 3, 7)),
}


@pytest.mark.parametrize("case", sorted(POOL_CASES))
def test_pool(case):
    layer, mode, shape = POOL_CASES[case]
    x = rng().standard_normal(shape).astype(np.float32)
    expected = np_pool(x.astype(np.float64), layer.kernel_size, layer.stride, layer.padding, mode)
    assert_close(run(layer, slope.tensor(x)), expected)


# ----------------------------------------------------------------------------------------------- normalization


@pytest.mark.parametrize("dtype", DTYPES)
def test_batchnorm_training_and_running_statistics(dtype):
    layer = nn.BatchNorm2d(3, momentum=0.2, dtype=as_dtype(dtype))
    layer = layer.load_state_dict({"weight": [1.0, 2.0, 0.5], "bias": [0.0, -1.0, 3.0],
                                   "running_mean": [0.1, 0.2, 0.3], "running_var": [1.0, 2.0, 3.0]})  # fmt: skip
    x = (rng().standard_normal((4, 3, 5, 2)) * 2 + 1).astype(dtype)
    out, updated = slope.jit(lambda m, x: nn.apply(m, x))(layer, slope.tensor(x))
    x64 = x.astype(np.float64)
    mean = x64.mean((0, 2, 3))
    var = x64.var((0, 2, 3))
    shape = (1, 3, 1, 1)
    normalized = (x64 - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + 1e-5)
    expected = normalized * np.array([1.0, 2.0, 0.5]).reshape(shape) + np.array([0.0, -1.0, 3.0]).reshape(shape)
    assert_close(out, expected, dtype)
    count = 4 * 5 * 2
    assert_close(updated.running_mean, 0.8 * np.array([0.1, 0.2, 0.3]) + 0.2 * mean, dtype)
    assert_close(updated.running_var, 0.8 * np.array([1.0, 2.0, 3.0]) + 0.2 * var * count / (count - 1), dtype)
    # the argument is untouched (functional); eagerly, calling the layer updates it in place as PyTorch does
    assert_close(layer.running_mean, [0.1, 0.2, 0.3], dtype)
    layer(slope.tensor(x))
    assert_close(layer.running_mean, updated.running_mean.numpy(), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_batchnorm_eval_uses_running_statistics(dtype):
    layer = nn.BatchNorm1d(4, dtype=as_dtype(dtype)).eval()
    layer.load_state_dict({"running_mean": [1.0, 2.0, 3.0, 4.0], "running_var": [1.0, 4.0, 9.0, 16.0]}, strict=False)
    x = rng().standard_normal((5, 4)).astype(dtype)
    expected = (x.astype(np.float64) - [1.0, 2.0, 3.0, 4.0]) / np.sqrt(np.array([1.0, 4.0, 9.0, 16.0]) + 1e-5)
    assert_close(run(layer, slope.tensor(x)), expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_layernorm(dtype):
    layer = nn.LayerNorm((4, 5), dtype=as_dtype(dtype))
    layer.load_state_dict({"weight": rng(1).standard_normal((4, 5)), "bias": rng(2).standard_normal((4, 5))})
    x = rng().standard_normal((3, 4, 5)).astype(dtype)
    x64 = x.astype(np.float64)
    mean = x64.mean((1, 2), keepdims=True)
    var = x64.var((1, 2), keepdims=True)
    p = params(layer)
    expected = (x64 - mean) / np.sqrt(var + 1e-5) * p["weight"] + p["bias"]
    assert_close(run(layer, slope.tensor(x)), expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rmsnorm(dtype):
    layer = nn.RMSNorm(6, eps=1e-6, dtype=as_dtype(dtype))
    layer.load_state_dict({"weight": rng(1).standard_normal(6)})
    x = rng().standard_normal((2, 3, 6)).astype(dtype)
    x64 = x.astype(np.float64)
    expected = x64 / np.sqrt((x64**2).mean(-1, keepdims=True) + 1e-6) * params(layer)["weight"]
    assert_close(run(layer, slope.tensor(x)), expected, dtype)


@pytest.mark.parametrize("layer", ["LayerNorm", "RMSNorm"])
@pytest.mark.parametrize("shape", [[], ()])
def test_norm_layers_refuse_an_empty_normalized_shape(layer, shape):
    """nn.LayerNorm([]) and nn.RMSNorm([]) normalised over the whole tensor; PyTorch refuses them ("Expected
    normalized_shape to be at least 1-dimensional")."""
    with pytest.raises(ValueError, match=f"nn.{layer}: expected normalized_shape to be at least 1-dimensional"):
        getattr(nn, layer)(shape)
    assert getattr(nn, layer)(3).normalized_shape == (3,)


# ----------------------------------------------------------------------------------------------- embedding, dropout


def test_embedding_with_padding_index():
    layer = nn.Embedding(10, 4, padding_idx=0, key=slope.random.key(3))
    weight = layer.weight.numpy()
    assert np.all(weight[0] == 0)
    indices = np.array([[1, 0, 9], [3, 3, 0]])
    assert_close(run(layer, slope.tensor(indices)), weight[indices])
    grads = slope.grad(lambda m: (m(slope.tensor(indices)) ** 2).sum())(layer)
    assert np.all(grads.weight.numpy()[0] == 0)  # the padding row gets no gradient


def test_dropout_eval_is_identity_and_training_scales_kept_values():
    layer = nn.Dropout(0.25)
    x = slope.tensor(rng().standard_normal((200, 50)).astype(np.float32))
    assert_close(run(layer.eval(), x), x.numpy())
    out = slope.jit(lambda m, x, k: nn.apply(m, x, key=k)[0])(layer.train(), x, slope.random.key(4)).numpy()
    kept = out != 0
    assert abs(kept.mean() - 0.75) < 0.02
    np.testing.assert_allclose(out[kept], x.numpy()[kept] / 0.75, rtol=1e-6)
    again = slope.jit(lambda m, x, k: nn.apply(m, x, key=k)[0])(layer, x, slope.random.key(5)).numpy()
    assert not np.array_equal(again != 0, kept)  # another key, another mask


@pytest.mark.parametrize("training", ["False", 0, None])
def test_dropout_refuses_a_training_flag_that_is_not_a_bool(training):
    """nn.dropout(x, 0.5, training="False") dropped (a truthy string); PyTorch: "argument 'train' must be bool"."""
    with pytest.raises(TypeError, match="nn.dropout: training must be a bool"):
        nn.dropout(slope.ones((2, 4)), 0.5, training=training, key=slope.random.key(0))
    assert (nn.dropout(slope.ones((2, 4)), 0.5, training=np.bool_(False)).numpy() == 1.0).all()


def test_dropout_needs_a_key_under_jit():
    layer = nn.Dropout(0.5)
    with pytest.raises(RuntimeError, match="nn.apply"):
        slope.jit(lambda m, x: m(x))(layer, slope.ones(3))


# ----------------------------------------------------------------------------------------------- attention


@pytest.mark.parametrize("dtype", DTYPES)
def test_multi_head_attention(dtype):
    layer = nn.MultiHeadAttention(8, 2, key=slope.random.key(6), dtype=as_dtype(dtype))
    g = rng()
    q = g.standard_normal((2, 3, 8)).astype(dtype)
    kv = g.standard_normal((2, 4, 8)).astype(dtype)
    padding = np.array([[False, False, False, True], [False, True, False, False]])
    out, weights = slope.jit(lambda m, q, k, pad: m(q, k, k, key_padding_mask=pad, need_weights=True))(
        layer, slope.tensor(q), slope.tensor(kv), slope.tensor(padding)
    )
    expected, expected_weights = np_attention(layer, q.astype(np.float64), kv.astype(np.float64), kv.astype(np.float64),
                                              key_padding_mask=padding)  # fmt: skip
    assert_close(out, expected, dtype)
    assert_close(weights, expected_weights, dtype)


def test_multi_head_self_attention_causal_and_unbatched():
    layer = nn.MultiHeadAttention(6, 3, key=slope.random.key(7))
    x = rng().standard_normal((5, 6)).astype(np.float32)
    out = slope.jit(lambda m, x: m(x, is_causal=True))(layer, slope.tensor(x))
    expected, _ = np_attention(layer, x[None].astype(np.float64), x[None], x[None], is_causal=True)
    assert_close(out, expected[0])


# ----------------------------------------------------------------------------------------------- activations


def np_gelu(x):
    from math import erf

    return 0.5 * x * (1 + np.vectorize(erf)(x / math.sqrt(2)))


ACTIVATIONS = {
    "relu": (nn.ReLU(), lambda x: np.maximum(x, 0)),
    "leaky_relu": (nn.LeakyReLU(0.1), lambda x: np.where(x > 0, x, 0.1 * x)),
    "gelu": (nn.GELU(), np_gelu),
    "gelu_tanh": (nn.GELU("tanh"), lambda x: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))),
    "silu": (nn.SiLU(), lambda x: x / (1 + np.exp(-x))),
    "sigmoid": (nn.Sigmoid(), lambda x: 1 / (1 + np.exp(-x))),
    "tanh": (nn.Tanh(), np.tanh),
    "softplus": (nn.Softplus(2.0), lambda x: np.log1p(np.exp(2 * x)) / 2),
    "softmax": (nn.Softmax(1), lambda x: np_softmax(x, 1)),
    "log_softmax": (nn.LogSoftmax(-1), lambda x: np.log(np_softmax(x, -1))),
    "identity": (nn.Identity(), lambda x: x),
    "flatten": (nn.Flatten(), lambda x: x.reshape(x.shape[0], -1)),
}


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation(name):
    layer, reference = ACTIVATIONS[name]
    x = (rng().standard_normal((3, 4, 5)) * 3).astype(np.float32)
    assert_close(run(layer, slope.tensor(x)), reference(x.astype(np.float64)))


def test_sequential():
    model = nn.Sequential(nn.Linear(4, 3, key=slope.random.key(8)), nn.Tanh(), nn.Linear(3, 2, key=slope.random.key(9)))
    p = params(model)
    x = rng().standard_normal((5, 4)).astype(np.float32)
    hidden = np.tanh(np_linear(x.astype(np.float64), p["0.weight"], p["0.bias"]))
    assert_close(run(model, slope.tensor(x)), np_linear(hidden, p["2.weight"], p["2.bias"]))
    assert len(model) == 3 and isinstance(model[1], nn.Tanh) and len(model[:2]) == 2


# ----------------------------------------------------------------------------------------------- gradients


def f64(shape, seed=0):
    return slope.tensor(rng(seed).standard_normal(shape))


GRADIENT_CASES = {
    "linear": lambda: (nn.Linear(4, 3, dtype=slope.float64), f64((2, 4))),
    "conv1d": lambda: (nn.Conv1d(4, 2, 3, stride=2, padding=1, groups=2, dtype=slope.float64), f64((2, 4, 7))),
    "conv2d": lambda: (nn.Conv2d(2, 3, (2, 3), stride=(1, 2), dilation=(2, 1), dtype=slope.float64), f64((2, 2, 5, 6))),
    "conv_transpose2d": lambda: (
        nn.ConvTranspose2d(2, 4, 3, stride=2, padding=1, output_padding=1, groups=2, dtype=slope.float64),
        f64((1, 2, 3, 4)),
    ),  # fmt: skip
    "conv_transpose1d": lambda: (nn.ConvTranspose1d(3, 2, 2, stride=2, dtype=slope.float64), f64((2, 3, 4))),
    "batchnorm_train": lambda: (nn.BatchNorm2d(3, dtype=slope.float64), f64((4, 3, 2, 2))),
    "batchnorm_eval": lambda: (nn.BatchNorm1d(3, dtype=slope.float64).eval(), f64((4, 3))),
    "layernorm": lambda: (nn.LayerNorm(5, dtype=slope.float64), f64((3, 5))),
    "rmsnorm": lambda: (nn.RMSNorm(5, dtype=slope.float64), f64((3, 5))),
    "attention": lambda: (nn.MultiHeadAttention(4, 2, dtype=slope.float64), f64((2, 3, 4))),
    "maxpool2d": lambda: (nn.MaxPool2d(2), f64((2, 2, 4, 4))),
    "avgpool2d": lambda: (nn.AvgPool2d(3, stride=2, padding=1), f64((1, 2, 5, 5))),
    "gelu": lambda: (nn.GELU(), f64((3, 4))),
    "silu": lambda: (nn.SiLU(), f64((3, 4))),
    "softplus": lambda: (nn.Softplus(), f64((3, 4))),
    "leaky_relu": lambda: (nn.LeakyReLU(0.2), f64((3, 4))),
    "log_softmax": lambda: (nn.LogSoftmax(-1), f64((3, 4))),
    "sequential": lambda: (
        nn.Sequential(nn.Linear(3, 4, dtype=slope.float64), nn.Tanh(), nn.Linear(4, 2, dtype=slope.float64)),
        f64((5, 3)),
    ),  # fmt: skip
}


@pytest.mark.parametrize("case", sorted(GRADIENT_CASES))
def test_gradients_match_finite_differences(case):
    slope.manual_seed(11)
    module, x = GRADIENT_CASES[case]()
    check_gradients(module, x)


def test_embedding_gradient_matches_finite_differences():
    layer = nn.Embedding(6, 3, dtype=slope.float64, key=slope.random.key(10))
    indices = slope.tensor(np.array([[1, 5], [1, 2]]))
    weights = f64((2, 2, 3), seed=2)
    finite_difference_check(weighted_sum_loss, (layer, indices, weights))


# ----------------------------------------------------------------------------------------------- mixed dtypes

NORMS = {
    "layernorm": (lambda d: nn.LayerNorm(6, dtype=d), lambda f, x, p: f.layer_norm(x, (6,), p[0], p[1])),
    "rmsnorm": (lambda d: nn.RMSNorm(6, eps=1e-6, dtype=d), lambda f, x, p: f.rms_norm(x, (6,), p[0], eps=1e-6)),
    "batchnorm_train": (
        lambda d: nn.BatchNorm1d(6, dtype=d),
        lambda f, x, p: f.batch_norm(x, p[2], p[3], p[0], p[1], training=True),
    ),
    "batchnorm_eval": (
        lambda d: nn.BatchNorm1d(6, dtype=d).eval(),
        lambda f, x, p: f.batch_norm(x, p[2], p[3], p[0], p[1], training=False),
    ),
}


@pytest.mark.filterwarnings("ignore:Mismatch dtype between input and weight")  # (PyTorch's, for rms_norm)
@pytest.mark.parametrize("param_dtype", ["float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize("x_dtype", ["float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize("norm", sorted(NORMS))
def test_norm_layers_mix_dtypes_as_pytorch(norm, x_dtype, param_dtype):
    """A normalization's input and parameters of different dtypes: PyTorch's result dtype and values (float16 and
    bfloat16 inputs computed in float32, float32 parameters allowed with them), or an error where PyTorch raises."""
    torch = pytest.importorskip("torch")
    make, reference = NORMS[norm]
    layer = make(as_dtype(param_dtype))
    values = {  # weight near 1, running_var positive
        n: rng(i).standard_normal(np.shape(v)) * 0.5 + (1.0 if n in ("weight", "running_var") else 0.0)
        for i, (n, v) in enumerate(params(layer).items())
    }
    layer.load_state_dict(values)
    x32 = rng(9).standard_normal((4, 6)).astype(np.float32) * 3 + 1
    tx = torch.tensor(x32).to(getattr(torch, x_dtype))
    names = ["weight", "bias", "running_mean", "running_var"]
    tp = [torch.tensor(values[n]).to(getattr(torch, param_dtype)) if n in values else None for n in names]
    try:
        expected = reference(torch.nn.functional, tx, tp)
    except RuntimeError:
        with pytest.raises(slope.DTypeError, match=f"slope.nn.{type(layer).__name__}: the input is {x_dtype}"):
            layer(slope.tensor(x32).astype(as_dtype(x_dtype)))
        return
    got = run(layer, slope.tensor(x32).astype(as_dtype(x_dtype)))
    assert got.dtype.name == str(expected.dtype).removeprefix("torch."), (got.dtype, expected.dtype)
    assert_close(got.astype(slope.float64), expected.double().numpy(), got.dtype.name)


NORM_AFFINE = {"LayerNorm": "elementwise_affine", "RMSNorm": "elementwise_affine", "BatchNorm1d": "affine"}


@pytest.mark.filterwarnings("ignore:Mismatch dtype between input and weight")  # (PyTorch's, for rms_norm)
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("x_dtype", ["int64", "int32", "bool"])
@pytest.mark.parametrize("norm", sorted(NORM_AFFINE))
def test_norm_layers_refuse_integer_and_bool_inputs_as_pytorch(norm, x_dtype, affine):
    """An integer or bool input to a normalization: PyTorch raises ("rms_norm" not implemented for 'Long'). RMSNorm
    returned the normalised values truncated to the input's dtype ([1, 2, 3, 10] -> [0, 0, 0, 1]), LayerNorm and
    BatchNorm without parameters normalised it in float32, and with parameters advised "make the layer with
    dtype=int64"."""
    torch = pytest.importorskip("torch")
    x = np.array([[1, 2, 3, 10], [3, 4, 5, 6]]).astype(x_dtype)
    options = {NORM_AFFINE[norm]: affine}
    with pytest.raises(RuntimeError):  # (NotImplementedError is a RuntimeError)
        getattr(torch.nn, norm)(4, **options)(torch.tensor(x))
    with pytest.raises(slope.DTypeError, match=rf"^slope\.nn\.{norm}: expected a floating-point input, got {x_dtype} "
                       r"of shape \(2, 4\)"):  # fmt: skip
        getattr(nn, norm)(4, **options)(slope.tensor(x))


@pytest.mark.parametrize("dtype", ["int64", "int8", "bool"])
@pytest.mark.parametrize("norm", sorted(NORM_AFFINE))
def test_norm_layers_of_integer_dtype_are_refused_as_pytorch(norm, dtype):
    """A normalization made with an integer or bool dtype: PyTorch refuses its parameters (only floating-point tensors
    can require gradients); Slope made them, and an int64 BatchNorm truncated its running statistics to 0. Without
    parameters PyTorch makes the layer, and Slope too (its input is refused when it runs)."""
    torch = pytest.importorskip("torch")
    with pytest.raises(RuntimeError, match="floating point"):
        getattr(torch.nn, norm)(4, dtype=getattr(torch, dtype))
    with pytest.raises(slope.DTypeError, match=rf"^slope\.nn\.{norm}: parameters must have a floating-point dtype, "
                       f"got dtype={dtype}"):  # fmt: skip
        getattr(nn, norm)(4, dtype=slope.dtypes.as_dtype(dtype))
    getattr(torch.nn, norm)(4, dtype=getattr(torch, dtype), **{NORM_AFFINE[norm]: False})
    layer = getattr(nn, norm)(4, dtype=slope.dtypes.as_dtype(dtype), **{NORM_AFFINE[norm]: False})
    if norm == "BatchNorm1d":  # its running statistics are of that dtype: a float input is refused when it runs
        with pytest.raises(
            slope.DTypeError, match=f"slope.nn.BatchNorm1d: the input is float32 .* parameters are {dtype}"
        ):
            layer(slope.ones((2, 4)))


@pytest.mark.parametrize(
    "make, where, pytorch_argument, described",
    [
        (lambda: nn.Conv2d(1, 2, 3, 1, 0, 1, 1, True, "reflect"), "nn.Conv2d", "padding_mode", "'reflect'"),
        (
            lambda: nn.ConvTranspose2d(1, 2, 3, 1, 0, 0, 1, True, 1, "zeros"),
            "nn.ConvTranspose2d",
            "padding_mode",
            "'zeros'",
        ),
        (lambda: nn.Linear(3, 4, True, "cpu"), "nn.Linear", "device", "'cpu'"),
        (lambda: nn.Embedding(10, 3, None, 2.0), "nn.Embedding", "max_norm", "2.0"),
        (lambda: nn.MultiHeadAttention(8, 2, 0.0, True, 8, 8, 4), "nn.MultiHeadAttention", "kdim", "4"),
        (lambda: nn.dropout(slope.ones((4, 5)), 0.5, True, False), "nn.dropout", "inplace", "False"),
        (
            lambda: nn.functional.scaled_dot_product_attention(*[slope.ones((2, 3))] * 3, None, False, 0.5, 0.1),
            "scaled_dot_product_attention",
            "scale",
            "0.1",
        ),
    ],
)
def test_pytorch_arguments_landing_on_key_are_named(make, where, pytorch_argument, described):
    """PyTorch's positional arguments in the position of Slope's `key` failed inside slope.random.split / normal,
    naming neither the layer nor the argument."""
    with pytest.raises(TypeError, match=rf"^slope\.{where}: key must be a random key, an int64 tensor of shape \(2,\) "
                       rf".*got {described} \(PyTorch's {where.split('.')[-1]} takes {pytorch_argument} in this position"):  # fmt: skip
        make()
    if where == "nn.Linear":  # a key of the wrong kind given by keyword
        with pytest.raises(TypeError, match=r"slope.nn.Linear: key must be a random key.* got float32 tensor of shape"):
            nn.Linear(3, 4, key=slope.randn(3))


def test_init_normal_in_float64_keeps_float64_resolution():
    # drawn, scaled and shifted in float32 then widened: std 1e-9 around 1 gave 1000 equal values (PyTorch: distinct)
    values = nn.init.normal((1000,), mean=1.0, std=1e-9, key=slope.random.key(0), dtype=slope.float64).numpy()
    assert values.dtype == np.float64 and len(np.unique(values)) == 1000
    assert 0.8e-9 < values.std() < 1.2e-9 and abs(values.mean() - 1.0) < 1e-10


@pytest.mark.parametrize("draw", [nn.init.normal, nn.init.uniform, nn.init.kaiming_normal, nn.init.xavier_normal])
@pytest.mark.parametrize("dtype", [slope.int64, slope.int32, slope.bool_])
def test_init_draws_refuse_integer_dtypes(draw, dtype):
    # they returned truncated draws ([-2, 1, -3, ...], mostly zeros, all True); PyTorch's normal_ refuses integers
    with pytest.raises(TypeError, match="floating-point dtype"):
        draw((4, 3), key=slope.random.key(0), dtype=dtype)
    with pytest.raises(TypeError, match="floating-point dtype"):
        draw(slope.zeros((4, 3), dtype=dtype), key=slope.random.key(0))


@pytest.mark.parametrize(
    "make, weight_shape",
    [
        (lambda k: nn.Conv2d(0, 3, 3, key=k), (3, 0, 3, 3)),
        (lambda k: nn.Conv1d(0, 3, 3, key=k), (3, 0, 3)),
        (lambda k: nn.ConvTranspose2d(3, 0, 3, key=k), (3, 0, 3, 3)),
        (lambda k: nn.Conv2d(0, 0, 3, key=k), (0, 0, 3, 3)),
    ],
)
def test_convolutions_without_channels_build_as_pytorch(make, weight_shape):
    """Conv1d/Conv2d(in_channels=0) and ConvTranspose2d(out_channels=0): a ZeroDivisionError (fan_in 0); PyTorch builds
    them (its init is a no-op on zero-element weights) with the weight shapes here, and so does Linear(0, n)."""
    layer = make(slope.random.key(0))
    assert layer.weight.shape == weight_shape
    assert np.isfinite(layer.bias.numpy()).all()


@pytest.mark.parametrize("draw", [nn.init.kaiming_uniform, nn.init.kaiming_normal])
@pytest.mark.parametrize("mode", ["fan_in", "fan_out"])
@pytest.mark.parametrize("shape", [(3, 0), (0, 3), (0, 0, 2)])
def test_init_of_zero_element_weights_is_empty(draw, mode, shape):
    """init.kaiming_uniform((3, 0)) raised ZeroDivisionError; torch.nn.init.kaiming_uniform_ leaves a zero-element
    tensor as it is (a warning): an empty tensor of the shape."""
    assert draw(shape, mode=mode, key=slope.random.key(0)).shape == shape
    assert nn.init.xavier_uniform((0, 0), key=slope.random.key(0)).shape == (0, 0)


@pytest.mark.parametrize("name, args", [("ReLU", ()), ("LeakyReLU", (0.2,)), ("SiLU", ()), ("Dropout", (0.5,))])
def test_layers_take_pytorchs_inplace_flag(name, args):
    """`nn.ReLU(inplace=True)` (torchvision's models write it) raised "Module.__init__() got an unexpected keyword
    argument 'inplace'", naming no layer. Slope's tensors never change, so the flag is taken, kept, and the result is
    PyTorch's; positionally too (`nn.ReLU(True)`); a non-bool is refused naming the layer."""
    torch = pytest.importorskip("torch")
    x = rng(0).standard_normal((3, 4)).astype(np.float32)
    for inplace in (True, False):
        layer = getattr(nn, name)(*args, inplace=inplace)
        reference = getattr(torch.nn, name)(*args, inplace=inplace)
        assert layer.inplace is inplace
        if name == "Dropout":
            layer.eval(), reference.eval()
        np.testing.assert_allclose(layer(slope.tensor(x)).numpy(), reference(torch.tensor(x)).numpy(), rtol=1e-6)
        gradient = slope.grad(lambda v, f=layer: f(v).sum())(slope.tensor(x))
        t = torch.tensor(x, requires_grad=True)
        (expected,) = torch.autograd.grad(reference(t * 1.0).sum(), t)  # (t * 1.0: in place on a leaf is refused)
        np.testing.assert_allclose(gradient.numpy(), expected.numpy(), rtol=1e-5, atol=1e-7)  # (float32 formulas)
    assert getattr(nn, name)(*args, True).inplace is True
    with pytest.raises(TypeError, match=f"slope.nn.{name}: inplace must be a bool"):
        getattr(nn, name)(*args, inplace="yes")
