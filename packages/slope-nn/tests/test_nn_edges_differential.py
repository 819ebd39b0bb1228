"""slope.nn at the edges, against PyTorch: saturated and out-of-range inputs, NaN and infinities, argument checks,
forward and gradient, eager and under jit, on every backend under test."""

from __future__ import annotations

import numpy as np
import pytest

import slope
import slope.nn as nn

torch = pytest.importorskip("torch")
F = torch.nn.functional

# (relative, absolute) per dtype; float32 values and gradients go through different summation orders
TOLERANCES = {"float32": (1e-5, 1e-6), "float64": (1e-12, 1e-12)}


def value_and_grads(fn, args: list, wrt: tuple, jit: bool) -> tuple:
    """slope's fn(*args) and the gradients of its sum with respect to the arguments numbered in `wrt`."""
    tensors = [slope.tensor(a) for a in args]
    value = (slope.jit(fn) if jit else fn)(*tensors)
    grad = slope.grad(lambda *a: fn(*a).sum(), argnums=wrt)
    grads = (slope.jit(grad) if jit else grad)(*tensors)
    return value.numpy(), [g.numpy() for g in grads]


def torch_value_and_grads(fn, args: list, wrt: tuple) -> tuple:
    """PyTorch's fn(*args) and the gradients of its sum with respect to the arguments numbered in `wrt`."""
    tensors = [torch.tensor(a, requires_grad=i in wrt) for i, a in enumerate(args)]
    value = fn(*tensors)
    grads = torch.autograd.grad(value.sum(), [tensors[i] for i in wrt])
    return value.detach().numpy(), [g.numpy() for g in grads]


def assert_matches_pytorch(slope_fn, torch_fn, args: list, wrt: tuple = (0,), jit: bool = False) -> None:
    """Values (dtype, shape, NaN and infinities included) and gradients of slope_fn and torch_fn agree."""
    rtol, atol = TOLERANCES[np.asarray(args[0]).dtype.name]
    value, grads = value_and_grads(slope_fn, args, wrt, jit)
    expected, expected_grads = torch_value_and_grads(torch_fn, args, wrt)
    assert value.dtype == expected.dtype and value.shape == expected.shape
    np.testing.assert_allclose(value, expected, rtol=rtol, atol=atol, equal_nan=True)
    for i, grad, expected_grad in zip(wrt, grads, expected_grads):
        np.testing.assert_allclose(grad, expected_grad, rtol=rtol, atol=atol, equal_nan=True, err_msg=f"argument {i}")


# ----------------------------------------------------------------------------------------------- binary cross-entropy


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_binary_cross_entropy_of_saturated_probabilities(dtype, jit, each_backend):
    # PyTorch's derivative for the input is (p - t) / max(p (1 - p), 1e-12): finite at p = 0 and 1 (slope's was NaN,
    # 0 * inf, and 0 where a log was clamped at -100); for the target the unclamped log(1 - p) - log(p)
    p = np.array([0.0, 1.0, 1e-30, 1 - 1e-7, 0.5, 0.0, 1.0, 0.3, 1e-10], dtype)
    t = np.array([1.0, 0.0, 1.0, 0.0, 0.5, 0.0, 1.0, 0.3, 0.0], dtype)
    w = np.linspace(0.5, 2.0, p.size).astype(dtype)
    for reduction in ("none", "mean"):
        assert_matches_pytorch(
            lambda a, b, c, r=reduction: nn.binary_cross_entropy(a, b, c, reduction=r),
            lambda a, b, c, r=reduction: F.binary_cross_entropy(a, b, c, reduction=r),
            [p, t, w], wrt=(0, 1), jit=jit,
        )  # fmt: skip


def test_binary_cross_entropy_checks_its_arguments_as_pytorch():
    half = slope.tensor([0.5, 0.5])
    for bad in ([0.5, 1.5], [-0.25, 0.5], [0.5, float("nan")]):  # concrete values outside [0, 1]: PyTorch's error
        with pytest.raises(ValueError, match=r"slope.nn.binary_cross_entropy: all elements of input"):
            nn.binary_cross_entropy(slope.tensor(bad), half)
        with pytest.raises(ValueError, match=r"slope.nn.binary_cross_entropy: all elements of target"):
            nn.binary_cross_entropy(half, slope.tensor(bad))
    wide = slope.tensor(np.array([0.5, 0.5]))
    with pytest.raises(slope.DTypeError, match="binary_cross_entropy: .* target of its dtype, got float32 and float64"):
        nn.binary_cross_entropy(half, wide)  # (PyTorch: "Found dtype Double but expected Float")
    for loss in (nn.binary_cross_entropy, nn.binary_cross_entropy_with_logits):
        with pytest.raises(slope.DTypeError, match="got float32 and int64"):
            loss(half, slope.tensor([1, 0]))
        with pytest.raises(slope.ShapeError, match=r"weight of shape \(3, 2\) does not broadcast"):
            loss(half, half, slope.ones((3, 2)), reduction="none")
        # a float64 weight leaves the loss in the input's dtype, as PyTorch's; lists are taken as tensors
        assert loss(half, half, slope.tensor(np.array([1.0, 2.0]))).dtype == slope.float32
        assert loss([0.5, 0.25], [0.5, 0.5]).dtype == slope.float32
    with pytest.raises(slope.ShapeError, match=r"pos_weight of shape \(3, 2\)"):
        nn.binary_cross_entropy_with_logits(half, half, pos_weight=slope.ones((3, 2)))
    pos_weight = slope.tensor(np.array([1.0, 2.0]))
    assert nn.binary_cross_entropy_with_logits(half, half, pos_weight=pos_weight).dtype == slope.float32
    for x_dtype, t_dtype in (("float32", "float64"), ("float64", "float16")):  # with logits: the target's dtype
        x, t = np.array([0.5, -3.0]), np.array([1.0, 0.25])
        got = nn.binary_cross_entropy_with_logits(slope.tensor(x, dtype=x_dtype), slope.tensor(t, dtype=t_dtype))
        expected = F.binary_cross_entropy_with_logits(torch.tensor(x).to(getattr(torch, x_dtype)),
                                                      torch.tensor(t).to(getattr(torch, t_dtype)))  # fmt: skip
        assert got.dtype.name == t_dtype and abs(float(got) - float(expected)) < 1e-3
    np.testing.assert_allclose(nn.mse_loss([1.0, 2.0], [0.0, 0.0]).numpy(), 2.5)


def test_binary_cross_entropy_of_traced_values_outside_zero_one_is_an_error():
    # as PyTorch's "all elements of input should be between 0 and 1", when the program runs (it was NaN there)
    loss = slope.jit(lambda p, t: nn.binary_cross_entropy(p, t, reduction="none"))
    assert np.isfinite(loss(slope.tensor([1.0, 0.5]), slope.tensor([0.5, 0.5])).numpy()).all()
    with pytest.raises(ValueError, match="binary_cross_entropy: all elements of input should be between 0 and 1"):
        loss(slope.tensor([1.5, 0.5]), slope.tensor([0.5, 0.5])).numpy()


# ----------------------------------------------------------------------------------------------- activations


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_relu_derivative_matches_pytorch_but_at_nan(jit, each_backend):
    x = np.array([np.nan, -np.inf, -1.0, -0.0, 0.0, 2.0, np.inf], np.float32)
    assert_matches_pytorch(slope.relu, F.relu, [x[1:]], jit=jit)
    grad = slope.grad(lambda a: slope.relu(a).sum())
    assert (slope.jit(grad) if jit else grad)(slope.tensor(x)).numpy()[0] == 0.0  # PyTorch: 1 (README, Differences)


# ----------------------------------------------------------------------------------------------- attention


def mha_pair(dtype: str = "float64"):
    """A slope MultiHeadAttention and a torch.nn.MultiheadAttention with its weights."""
    layer = nn.MultiHeadAttention(8, 2, key=slope.random.key(4), dtype=slope.dtypes.as_dtype(dtype))
    reference = torch.nn.MultiheadAttention(8, 2, batch_first=True, dtype=getattr(torch, dtype))
    projections = (layer.q_proj, layer.k_proj, layer.v_proj)
    with torch.no_grad():
        reference.in_proj_weight.copy_(torch.tensor(np.concatenate([p.weight.numpy() for p in projections])))
        reference.in_proj_bias.copy_(torch.tensor(np.concatenate([p.bias.numpy() for p in projections])))
        reference.out_proj.weight.copy_(torch.tensor(layer.out_proj.weight.numpy()))
        reference.out_proj.bias.copy_(torch.tensor(layer.out_proj.bias.numpy()))
    return layer, reference


MHA_MASKS = {  # PyTorch's forms: a float key_padding_mask is added, a 3-d attn_mask is (N * num_heads, L, S)
    "float key_padding_mask": lambda r: {"key_padding_mask": np.where(r.random((2, 4)) > 0.5, -np.inf, 0.3)},
    "3-d float attn_mask": lambda r: {"attn_mask": r.standard_normal((4, 3, 4))},
    "3-d bool attn_mask": lambda r: {"attn_mask": r.random((4, 3, 4)) > 0.7},
    "float attn_mask and bool key_padding_mask": lambda r: {
        "attn_mask": r.standard_normal((3, 4)), "key_padding_mask": np.array([[True, True, False, True], [False, True] * 2])
    },
}  # fmt: skip


@pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask")
@pytest.mark.parametrize("case", sorted(MHA_MASKS))
def test_multi_head_attention_masks_of_every_pytorch_form(case, each_backend):
    layer, reference = mha_pair()
    generator = np.random.default_rng(5)
    x, kv = generator.standard_normal((2, 3, 8)), generator.standard_normal((2, 4, 8))
    masks = MHA_MASKS[case](generator)
    out, weights = layer(slope.tensor(x), slope.tensor(kv), need_weights=True,
                         **{k: slope.tensor(v) for k, v in masks.items()})  # fmt: skip
    expected, expected_weights = reference(torch.tensor(x), torch.tensor(kv), torch.tensor(kv), need_weights=True,
                                           **{k: torch.tensor(v) for k, v in masks.items()})  # fmt: skip
    np.testing.assert_allclose(out.numpy(), expected.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(weights.numpy(), expected_weights.detach().numpy(), rtol=1e-10, atol=1e-12)


def test_attention_masks_of_integers_are_errors_as_in_pytorch():
    # an integer 0/1 mask was added to the scores as floats: a likely bool mask, silently wrong
    q = slope.ones((3, 4))
    for dtype in (slope.int64, slope.float64, slope.float16):  # PyTorch's "float" is float32
        with pytest.raises(slope.DTypeError, match="scaled_dot_product_attention: attn_mask must be bool, float32"):
            nn.functional.scaled_dot_product_attention(q, q, q, slope.ones((3, 3), dtype=dtype))
    q64 = q.astype(slope.float64)
    assert nn.functional.scaled_dot_product_attention(q64, q64, q64, slope.ones((3, 3))).dtype == slope.float64
    ints = slope.ones((3, 4), dtype=slope.int64)  # (a mask of the query's dtype is PyTorch's third form)
    assert nn.functional.scaled_dot_product_attention(
        ints, ints, ints, slope.ones((3, 3), dtype=slope.int64)
    ).shape == (3, 4)
    layer, x = nn.MultiHeadAttention(4, 2), slope.ones((2, 3, 4))
    with pytest.raises(slope.DTypeError, match="MultiHeadAttention: attn_mask must be bool or floating"):
        layer(x, attn_mask=slope.ones((3, 3), dtype=slope.int32))
    with pytest.raises(slope.DTypeError, match="MultiHeadAttention: key_padding_mask must be bool or floating"):
        layer(x, key_padding_mask=slope.zeros((2, 3), dtype=slope.int64))
    with pytest.raises(slope.ShapeError, match=r"3-d attn_mask must be of shape \(4, 3, 3\)"):
        layer(x, attn_mask=slope.zeros((2, 3, 3)))


# ----------------------------------------------------------------------------------------------- normalization


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("momentum", [None, 0.0, 1.0, 0.3])
def test_batchnorm_running_statistics_over_several_batches(momentum, jit, each_backend):
    # momentum=None is PyTorch's cumulative average (it was a TypeError); 0 and 1 keep or replace the statistics
    layer, reference = nn.BatchNorm1d(3, momentum=momentum), torch.nn.BatchNorm1d(3, momentum=momentum)
    forward = slope.jit(nn.apply) if jit else nn.apply
    generator = np.random.default_rng(2)
    for scale in (1.0, 3.0, 0.5):
        x = (generator.standard_normal((4, 3, 5)) * scale + scale).astype(np.float32)
        out, layer = forward(layer, slope.tensor(x))
        expected = reference(torch.tensor(x))
        np.testing.assert_allclose(out.numpy(), expected.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer.running_mean.numpy(), reference.running_mean.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.running_var.numpy(), reference.running_var.numpy(), rtol=1e-5, atol=1e-6)
    layer.eval(), reference.eval()
    np.testing.assert_allclose(layer(slope.tensor(x)).numpy(), reference(torch.tensor(x)).detach().numpy(), rtol=1e-5,
                               atol=1e-5)  # fmt: skip


def test_batchnorm_empty_batches_and_input_ranks_as_pytorch():
    layer = nn.BatchNorm1d(3)
    out = layer(slope.zeros((0, 3, 5)))  # an empty batch leaves the statistics alone (they were NaN)
    assert out.shape == (0, 3, 5)
    np.testing.assert_array_equal(layer.running_mean.numpy(), [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(layer.running_var.numpy(), [1.0, 1.0, 1.0])
    with pytest.raises(
        ValueError, match=r"BatchNorm2d: expected input \(N, 3, ...\) of 4 dimensions, got shape \(4, 3, 5\)"
    ):
        nn.BatchNorm2d(3)(slope.ones((4, 3, 5)))  # PyTorch: "expected 4D input (got 3D input)"
    with pytest.raises(ValueError, match=r"BatchNorm1d: expected input \(N, 3, ...\) of 2 or 3 dimensions"):
        nn.BatchNorm1d(3)(slope.ones((4, 3, 5, 2)))
    assert nn.BatchNorm(3)(slope.ones((4, 3, 5, 2, 2)) * slope.arange(2)).shape == (4, 3, 5, 2, 2)  # (any rank)


# ----------------------------------------------------------------------------------------------- modules and schedules


def test_softplus_module_takes_pytorchs_threshold():
    x = np.array([-3.0, 0.5, 2.5, 30.0], np.float32)
    expected = torch.nn.Softplus(2.0, 3.0)(torch.tensor(x)).numpy()
    np.testing.assert_allclose(nn.Softplus(2.0, 3.0)(slope.tensor(x)).numpy(), expected, rtol=1e-6)


def test_schedules_refuse_step_counts_that_give_nan():
    from slope_nn import optim

    for make in (lambda: optim.cosine_decay(0.1, 0), lambda: optim.step_decay(0.1, 0)):
        with pytest.raises(ValueError, match="must be an integer of at least 1, got 0"):
            make()  # cosine_decay(lr, 0)'s first rate was NaN (0 / 0), step_decay's too
    with pytest.raises(ValueError, match="piecewise_constant: the boundaries must be in increasing order"):
        optim.piecewise_constant([5, 2], [1.0, 2.0, 3.0])


@pytest.mark.parametrize("layer", ["MaxPool1d", "AvgPool1d", "MaxPool2d", "AvgPool2d", "MaxPool3d", "AvgPool3d"])
def test_pooling_layers_check_the_input_rank_as_pytorch(layer):
    spatial = int(layer[-2])
    pool = getattr(nn, layer)(2)
    for ndim in (spatial + 1, spatial + 2):  # (C, *spatial) or (N, C, *spatial)
        assert pool(slope.ones((3,) * ndim)).shape == (3,) * (ndim - spatial) + (1,) * spatial
    for ndim in (spatial, spatial + 3):  # the functions pool the trailing dimensions of any rank; the layers did too
        with pytest.raises(slope.ShapeError, match=f"slope.nn.{layer}: expected input of {spatial + 1} or"):
            pool(slope.ones((3,) * ndim))


def test_multi_head_attention_masks_of_other_ranks_dtypes_and_numpy():
    # 1-d and 4-d attn_masks were broadcast (PyTorch asserts "2-D or 3-D"); a float mask of another dtype than the
    # query failed in slope.matmul (PyTorch: "Expected attn_mask dtype to be bool or float or to match query dtype");
    # a NumPy mask raised AttributeError (now taken as a tensor)
    layer = nn.MultiHeadAttention(4, 2, key=slope.random.key(0))
    q, kv = slope.tensor(np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)), slope.ones((2, 5, 4))
    for shape in ((5,), (2, 2, 3, 5)):
        with pytest.raises(slope.ShapeError, match=f"expected attn_mask to be 2-d .* got a {len(shape)}-d mask"):
            layer(q, kv, kv, attn_mask=slope.zeros(shape))
    for what, shape in (("attn_mask", (3, 5)), ("key_padding_mask", (2, 5))):
        for dtype in (slope.float64, slope.float16):
            with pytest.raises(slope.DTypeError, match=f"floating-point {what} must have the query's dtype float32"):
                layer(q, kv, kv, **{what: slope.zeros(shape, dtype=dtype)})
    mask = np.random.default_rng(1).random((3, 5)) > 0.6
    mask[:, 0] = False
    expected = layer(q, kv, kv, attn_mask=slope.tensor(mask)).numpy()
    np.testing.assert_array_equal(layer(q, kv, kv, attn_mask=mask).numpy(), expected)
    padding = np.array([[False, True, False, False, True], [False] * 5])
    expected = layer(q, kv, kv, key_padding_mask=slope.tensor(padding)).numpy()
    np.testing.assert_array_equal(layer(q, kv, kv, key_padding_mask=padding).numpy(), expected)


@pytest.mark.parametrize("dims", [{}, {"kdim": 16, "vdim": 8}])
def test_multi_head_attention_initializes_as_pytorch(dims):
    # PyTorch: Xavier-uniform q, k, v projections (packed as one (3E, E) matrix when kdim = vdim = E); slope's were
    # Linear's (bound 1 / sqrt(fan_in)). (PyTorch's zero biases are not taken over: see MultiHeadAttention)
    layer = nn.MultiHeadAttention(64, 4, key=slope.random.key(0), **dims)
    fan_out = 64 * (3 if not dims else 1)
    for projection in (layer.q_proj, layer.k_proj, layer.v_proj):
        fan_in = projection.weight.shape[1]
        bound = np.sqrt(6.0 / (fan_in + fan_out))
        weight = projection.weight.numpy()
        assert np.abs(weight).max() <= bound and np.abs(weight).max() > 0.9 * bound
    assert 0.9 / 8 < np.abs(layer.out_proj.weight.numpy()).max() <= 1 / 8  # Linear's 1 / sqrt(64)


@pytest.mark.parametrize("dims", [{"kdim": 0}, {"vdim": 0}, {"kdim": 0, "vdim": 0}])
def test_multi_head_attention_keeps_a_kdim_or_vdim_of_zero(dims):
    # `kdim or embed_dim` read 0 as embed_dim: k_proj (4, 4) where PyTorch's k_proj_weight is (4, 0)
    layer = nn.MultiHeadAttention(4, 2, key=slope.random.key(0), **dims)
    assert layer.k_proj.weight.shape == (4, dims.get("kdim", 4)) and layer.v_proj.weight.shape == (
        4,
        dims.get("vdim", 4),
    )
    q = slope.ones((2, 3, 4))
    k, v = slope.ones((2, 5, dims.get("kdim", 4))), slope.ones((2, 5, dims.get("vdim", 4)))
    assert layer(q, k, v).shape == (2, 3, 4)


@pytest.mark.parametrize("is_causal", [False, True])
def test_attention_over_no_features_averages_the_values(is_causal, each_backend):
    # query and key of 0 features: PyTorch's scores are 0s, so the weights are uniform (slope divided by sqrt(0))
    generator = np.random.default_rng(3)
    q, k, v = np.zeros((2, 3, 0), np.float32), np.zeros((2, 5, 0), np.float32), generator.standard_normal((2, 5, 4))
    v = v.astype(np.float32)
    out = nn.functional.scaled_dot_product_attention(slope.tensor(q), slope.tensor(k), slope.tensor(v),
                                                     is_causal=is_causal)  # fmt: skip
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
        expected = F.scaled_dot_product_attention(
            torch.tensor(q), torch.tensor(k), torch.tensor(v), is_causal=is_causal
        )
    np.testing.assert_allclose(out.numpy(), expected.numpy(), rtol=1e-6, atol=1e-6)


def test_one_hot_says_when_it_cannot_infer_the_number_of_classes():
    # PyTorch: "Can not infer total number of classes from empty tensor"; slope's error named slope.max
    with pytest.raises(ValueError, match="slope.one_hot: cannot infer the number of classes from an empty tensor"):
        slope.one_hot(slope.tensor(np.zeros(0, np.int64)))
    with pytest.raises(
        ValueError, match=r"slope.one_hot: cannot infer .* traced indices \(jit, grad and vmap .*\); pass "
    ):
        slope.jit(lambda a: slope.one_hot(a))(slope.tensor([1, 2]))
    np.testing.assert_array_equal(slope.one_hot(slope.tensor([2, 0])).numpy(), [[0, 0, 1], [1, 0, 0]])


def test_linear_with_a_one_dimensional_weight_as_pytorch(each_backend):
    x, w = np.random.default_rng(4).standard_normal((2, 5, 3)), np.random.default_rng(5).standard_normal(3)
    assert_matches_pytorch(nn.functional.linear, F.linear, [x, w], wrt=(0, 1))  # (slope's raised a transpose error)


LINEAR_MIXED_DTYPES = [
    ("float16", "float16", "float32"),
    ("float32", "float32", "float64"),
    ("bfloat16", "bfloat16", "float16"),
    ("float32", "float64", "float64"),
    ("float64", "float32", None),
]


@pytest.mark.parametrize("x_dtype,w_dtype,b_dtype", LINEAR_MIXED_DTYPES)
def test_linear_refuses_mixed_dtypes_as_pytorch(x_dtype, w_dtype, b_dtype):
    """F.linear of an input, weight or bias of different dtypes: PyTorch raises ("self and mat2 must have the same
    dtype"). Slope promoted a bias of another dtype (float16 input and weight with a float32 bias gave float32); an
    input of another dtype than the weight's failed in slope.matmul. Now a DTypeError naming slope.linear, the dtypes
    and shapes."""
    x, w = np.ones((2, 3)), np.ones((4, 3))
    b = None if b_dtype is None else np.ones(4)
    dtypes = (x_dtype, w_dtype, b_dtype)
    with pytest.raises(RuntimeError, match="same dtype"):
        F.linear(*(None if a is None else torch.tensor(a).to(getattr(torch, d)) for a, d in zip((x, w, b), dtypes)))
    bias = "" if b is None else rf", weight {w_dtype} of shape \(4, 3\) and bias {b_dtype} of shape \(4,\)"
    weight = rf" and weight {w_dtype} of shape \(4, 3\)" if b is None else ""
    with pytest.raises(slope.DTypeError, match=rf"^slope\.linear: expected the input, weight( and bias)? of one dtype, "
                       rf"as PyTorch; got input {x_dtype} of shape \(2, 3\){bias}{weight}$"):  # fmt: skip
        nn.functional.linear(*(None if a is None else slope.tensor(a).astype(d) for a, d in zip((x, w, b), dtypes)))


@pytest.mark.parametrize(
    "layer_dtype,x_dtype", [("float64", "float32"), ("float32", "float16"), ("float32", "float64")]
)
def test_linear_and_attention_layers_name_themselves_for_an_input_of_another_dtype(layer_dtype, x_dtype):
    """A Linear or MultiHeadAttention given an input of another dtype than its parameters': PyTorch raises ("mat1 and
    mat2 must have the same dtype"); Slope's error was slope.matmul's, naming neither the layer nor the shapes. Now
    the layer, the input's and the weight's dtypes and shapes, and the two ways out."""
    hint = rf" \(convert it with \.astype\(slope\.{layer_dtype}\), or make the layer with dtype=slope\.{x_dtype}\)$"
    with pytest.raises(RuntimeError, match="same dtype"):
        torch.nn.Linear(3, 4, dtype=getattr(torch, layer_dtype))(torch.ones((2, 3), dtype=getattr(torch, x_dtype)))
    with pytest.raises(slope.DTypeError, match=rf"^slope\.nn\.Linear: expected the input, weight and bias of one "
                       rf"dtype, as PyTorch; got input {x_dtype} of shape \(2, 3\), weight {layer_dtype} of shape "
                       rf"\(4, 3\) and bias {layer_dtype} of shape \(4,\){hint}"):  # fmt: skip
        nn.Linear(3, 4, dtype=getattr(slope, layer_dtype))(slope.ones((2, 3), dtype=getattr(slope, x_dtype)))
    reference = torch.nn.MultiheadAttention(4, 2, batch_first=True, dtype=getattr(torch, layer_dtype))
    layer = nn.MultiHeadAttention(4, 2, dtype=getattr(slope, layer_dtype))
    own, other = (slope.ones((1, 2, 4), dtype=getattr(slope, d)) for d in (layer_dtype, x_dtype))
    for what, inputs in (("query", (other, own, own)), ("key", (own, other, own)), ("value", (own, own, other))):
        with pytest.raises(RuntimeError, match="dtype"):
            reference(*(torch.tensor(t.numpy()) for t in inputs))
        with pytest.raises(slope.DTypeError, match=rf"^slope\.nn\.MultiHeadAttention: expected the {what}, weight and "
                           rf"bias of one dtype, as PyTorch; got {what} {x_dtype} of shape \(1, 2, 4\), weight "
                           rf"{layer_dtype} of shape \(4, 4\) and bias {layer_dtype} of shape \(4,\)"
                           + hint):  # fmt: skip
            layer(*inputs)


@pytest.mark.parametrize("batch_size", [0, -2, 2.0])
def test_batches_refuse_a_batch_size_that_is_no_positive_integer(batch_size):
    from slope_nn import datasets

    with pytest.raises(ValueError, match="batches: batch_size must be a positive integer"):  # (0: ZeroDivisionError)
        next(datasets.batches(np.arange(6), batch_size=batch_size))
    assert [b.tolist() for (b,) in datasets.batches(np.arange(5), batch_size=2, shuffle=False, drop_last=False)] == [
        [0, 1], [2, 3], [4]
    ]  # fmt: skip


POOL_CASES = [  # (layer, spatial size, arguments): PyTorch's ceil_mode and count_include_pad (neither existed)
    ("MaxPool1d", 6, dict(kernel_size=3, stride=2, padding=1, dilation=1, ceil_mode=True)),
    ("MaxPool2d", 5, dict(kernel_size=2, stride=2, padding=1, dilation=2, ceil_mode=True)),
    ("MaxPool2d", 6, dict(kernel_size=3, stride=3, padding=0, dilation=1, ceil_mode=True)),
    ("AvgPool1d", 6, dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=True)),
    ("AvgPool2d", 6, dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False)),
    ("AvgPool2d", 5, dict(kernel_size=3, stride=2, padding=1, ceil_mode=False, count_include_pad=False)),
    ("AvgPool2d", 5, dict(kernel_size=2, stride=2, padding=0, ceil_mode=True, count_include_pad=True)),
    ("MaxPool3d", 5, dict(kernel_size=(2, 3, 2), stride=(2, 1, 2), padding=1, dilation=(1, 2, 1), ceil_mode=True)),
    ("AvgPool3d", 5, dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False)),
    ("AvgPool3d", 4, dict(kernel_size=2, divisor_override=3)),
]


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("layer,size,arguments", POOL_CASES)
def test_pooling_ceil_mode_and_count_include_pad(layer, size, arguments, jit, each_backend):
    spatial = int(layer[-2])
    x = np.random.default_rng(6).standard_normal((2, 3) + (size,) * spatial)
    x[0, 0, ..., -1] = -np.inf  # the last, partial windows hold an infinity
    pool = getattr(nn, layer)(**arguments)
    assert_matches_pytorch(pool, getattr(torch.nn, layer)(**arguments), [x], jit=jit)


def test_max_pool_ceil_mode_with_indices():
    # (it was refused where ceil_mode adds a window: test_nn_pytorch_arguments checks those against PyTorch)
    _, indices = slope.max_pool(slope.ones((1, 1, 6)), 3, 2, return_indices=True, ceil_mode=True)
    np.testing.assert_array_equal(indices.numpy(), [[[0, 2, 4]]])  # (PyTorch's: the first of each tie)
    values, indices = nn.MaxPool1d(2, return_indices=True, ceil_mode=True)(slope.tensor([[[1.0, 3.0, 2.0, 0.0]]]))
    np.testing.assert_array_equal(indices.numpy(), [[[1, 2]]])  # (no window added: the indices are PyTorch's)


def test_max_pool_3d_indices_match_pytorch(each_backend):
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 4, 6)).astype(np.float32)
    arguments = dict(kernel_size=(2, 2, 3), stride=(1, 2, 2), padding=1, return_indices=True, ceil_mode=True)
    values, indices = nn.MaxPool3d(**arguments)(slope.tensor(x))
    expected_values, expected_indices = torch.nn.MaxPool3d(**arguments)(torch.tensor(x))
    np.testing.assert_array_equal(values.numpy(), expected_values.numpy())
    assert indices.dtype == slope.int64
    np.testing.assert_array_equal(indices.numpy(), expected_indices.numpy())


# ----------------------------------------------------------------------------------------------- optimizers

OPTIMIZERS = {  # slope's and PyTorch's, with the same arguments
    "SGD maximize nesterov": (dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1, maximize=True), "SGD"),
    "SGD maximize dampening": (dict(lr=0.1, momentum=0.5, dampening=0.3, maximize=True), "SGD"),
    "Adam maximize": (dict(lr=0.01, weight_decay=0.1, maximize=True), "Adam"),
    "AdamW maximize": (dict(lr=0.01, weight_decay=0.5, maximize=True), "AdamW"),
    "Adam amsgrad": (dict(lr=0.01, betas=(0.5, 0.9), amsgrad=True), "Adam"),
    "AdamW amsgrad maximize": (dict(lr=0.01, weight_decay=0.5, amsgrad=True, maximize=True), "AdamW"),
}


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("case", sorted(OPTIMIZERS))
def test_optimizers_maximize_and_amsgrad_as_pytorch(case, jit):
    from slope_nn import optim

    arguments, name = OPTIMIZERS[case]
    generator = np.random.default_rng(7)
    start = generator.standard_normal((3, 4))
    optimizer = getattr(optim, name)(**arguments)
    model = {"w": slope.tensor(start)}
    state = optimizer.init(model)
    step = slope.jit(optimizer.step) if jit else optimizer.step
    weight = torch.tensor(start, requires_grad=True)
    reference = getattr(torch.optim, name)([weight], **arguments)
    for scale in (1.0, 3.0, 0.1, 0.5):  # (shrinking gradients: amsgrad keeps the larger second moments)
        grad = generator.standard_normal((3, 4)) * scale
        model, state = step(model, {"w": slope.tensor(grad)}, state)
        weight.grad = torch.tensor(grad)
        reference.step()
    np.testing.assert_allclose(model["w"].numpy(), weight.detach().numpy(), rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------------------------- embedding


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_embedding_padding_row_keeps_its_value_and_gets_no_gradient(jit, each_backend):
    # PyTorch returns the padding row as it is (zeros only at construction); slope's was always zeros
    weight = np.arange(12, dtype=np.float32).reshape(4, 3)
    layer = nn.Embedding(4, 3, padding_idx=1).load_state_dict({"weight": weight})
    reference = torch.nn.Embedding(4, 3, padding_idx=1)
    with torch.no_grad():
        reference.weight.copy_(torch.tensor(weight))
    indices, cot = np.array([[1, 2], [1, 3]]), np.random.default_rng(8).standard_normal((2, 2, 3)).astype(np.float32)

    def loss(model):
        out = model(slope.tensor(indices))
        return (out * slope.tensor(cot)).sum(), out

    (_, out), grads = (slope.jit if jit else lambda f: f)(slope.value_and_grad(loss, has_aux=True))(layer)
    expected = reference(torch.tensor(indices))
    (expected * torch.tensor(cot)).sum().backward()
    np.testing.assert_array_equal(out.numpy(), expected.detach().numpy())
    np.testing.assert_allclose(grads.weight.numpy(), reference.weight.grad.numpy(), rtol=1e-6, atol=1e-6)
