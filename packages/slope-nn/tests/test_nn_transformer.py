"""The pieces of a transformer against PyTorch: attention, Embedding with a tied output layer, LayerNorm, Dropout,
GELU, AdamW with a decay filter, clipping, the warm-up + cosine schedule and cross-entropy over (batch, time, vocab).

Forward values and gradients on every backend under test, in float32 and float64 (tolerances per dtype below).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from nn_helpers import rng

import slope
import slope.nn as nn

torch = pytest.importorskip("torch")

DTYPES = ("float32", "float64")
# (rtol, atol): float32 goes through other summation orders (MatMul, reductions) than PyTorch's kernels
TOL = {"float32": (2e-5, 2e-5), "float64": (1e-10, 1e-10)}


def close(actual, expected, dtype, scale=1.0):
    rtol, atol = TOL[dtype]
    actual = actual.numpy() if isinstance(actual, slope.Tensor) else np.asarray(actual)
    expected = expected.detach().numpy() if isinstance(expected, torch.Tensor) else np.asarray(expected)
    np.testing.assert_allclose(actual, expected, rtol=rtol * scale, atol=atol * scale)


def data(shape, dtype, seed=0, scale=1.0):
    return (rng(seed).standard_normal(shape) * scale).astype(dtype)


def both(array):
    """The same values as a slope tensor and a PyTorch tensor that requires a gradient."""
    return slope.tensor(array), torch.tensor(array, requires_grad=True)


# ----------------------------------------------------------------------------------------------- attention

SDPA_CASES = {
    "4-d, no mask": ((2, 3, 4, 5), (2, 3, 6, 5), (2, 3, 6, 7), None, {}),
    "causal, L = S": ((2, 2, 5, 4), (2, 2, 5, 4), (2, 2, 5, 4), None, {"is_causal": True}),
    "causal, L < S (top-left)": ((1, 3, 4), (1, 6, 4), (1, 6, 4), None, {"is_causal": True}),
    "bool mask, broadcast": ((2, 2, 3, 4), (2, 2, 5, 4), (2, 2, 5, 4), "bool", {}),
    "float mask": ((3, 4), (5, 4), (5, 2), "float", {}),
    "bool mask, a row masked everywhere": ((2, 4, 4), (2, 5, 4), (2, 5, 3), "bool, dead row", {}),
    "float mask, a row of -inf": ((2, 4, 4), (2, 5, 4), (2, 5, 3), "float, dead row", {}),
    "scale": ((2, 3, 4), (2, 3, 4), (2, 3, 4), None, {"scale": 0.3}),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", sorted(SDPA_CASES))
def test_scaled_dot_product_attention(case, dtype, each_backend):
    q_shape, k_shape, v_shape, mask_kind, kwargs = SDPA_CASES[case]
    mask_kind = mask_kind or ""
    q, k, v = data(q_shape, dtype, 1), data(k_shape, dtype, 2), data(v_shape, dtype, 3)
    mask = None
    if mask_kind.startswith("bool"):  # True where attention is allowed; every row keeps at least one key
        mask = rng(4).random((q_shape[-2], k_shape[-2])) > 0.4
        mask[:, 0] = True
    elif mask_kind.startswith("float"):
        mask = data((q_shape[-2], k_shape[-2]), dtype, 4)
    if mask_kind.endswith("dead row"):  # ...but this one: PyTorch's output and gradients there are 0, not NaN
        mask[1] = False if mask.dtype == bool else -np.inf
    cot = data(q_shape[:-1] + v_shape[-1:], dtype, 5)
    (sq, tq), (sk, tk), (sv, tv) = both(q), both(k), both(v)
    smask = None if mask is None else slope.tensor(mask)
    tmask = None if mask is None else torch.tensor(mask)

    def loss(q, k, v):
        out = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=smask, **kwargs)
        return (out * slope.tensor(cot)).sum(), out

    (value, out), grads = slope.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(sq, sk, sv)
    expected = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, attn_mask=tmask, **kwargs)
    (expected * torch.tensor(cot)).sum().backward()
    close(out, expected, dtype)
    for got, want in zip(grads, (tq.grad, tk.grad, tv.grad)):
        close(got, want, dtype, scale=5.0)
    # the procedure is registered: slope.scaled_dot_product_attention is the same function
    close(slope.scaled_dot_product_attention(sq, sk, sv, attn_mask=smask, **kwargs), expected, dtype)


def test_attention_dropout_uses_the_key_and_errors_name_the_function():
    q = slope.tensor(data((2, 4, 8), "float32"))
    a = nn.functional.scaled_dot_product_attention(q, q, q, dropout_p=0.5, key=slope.random.key(1))
    b = nn.functional.scaled_dot_product_attention(q, q, q, dropout_p=0.5, key=slope.random.key(1))
    c = nn.functional.scaled_dot_product_attention(q, q, q, dropout_p=0.5, key=slope.random.key(2))
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert not np.array_equal(a.numpy(), c.numpy())
    # the weights of a row are dropped independently and the rest scaled by 2: the mean over keys is unbiased
    ones = slope.ones((1, 4000, 1))
    out = nn.functional.scaled_dot_product_attention(slope.zeros((1, 1, 1)), ones, ones, dropout_p=0.5,
                                                     key=slope.random.key(3))  # fmt: skip
    assert abs(float(out.sum()) - 1.0) < 0.1
    with pytest.raises(slope.ShapeError, match="scaled_dot_product_attention"):
        nn.functional.scaled_dot_product_attention(q, slope.ones((2, 4, 7)), q)
    with pytest.raises(ValueError, match="scaled_dot_product_attention.*not both"):
        nn.functional.scaled_dot_product_attention(q, q, q, attn_mask=slope.ones((4, 4), dtype=slope.bool_),
                                                   is_causal=True)  # fmt: skip
    with pytest.raises(RuntimeError, match="scaled_dot_product_attention"):
        slope.jit(lambda q: nn.functional.scaled_dot_product_attention(q, q, q, dropout_p=0.1))(q)


def test_attention_to_no_keys_gives_zeros_as_pytorch(each_backend):
    """An empty key sequence (S = 0) with a mask: PyTorch's scaled_dot_product_attention gives zeros (and
    MultiheadAttention its output projection's bias), with zero gradients; Slope raised "slope.max: cannot reduce over
    an empty dimension" for a bool or float attn_mask and for a key_padding_mask of shape (N, 0)."""
    q, k, v = data((2, 3, 4), "float32", 1), np.ones((2, 0, 4), np.float32), np.ones((2, 0, 5), np.float32)
    sdpa = nn.functional.scaled_dot_product_attention
    for mask in (np.ones((3, 0), bool), np.zeros((3, 0), np.float32)):
        tq = torch.tensor(q, requires_grad=True)
        expected = torch.nn.functional.scaled_dot_product_attention(tq, torch.tensor(k), torch.tensor(v),
                                                                    torch.tensor(mask))  # fmt: skip
        expected.sum().backward()
        tensors = [slope.tensor(a) for a in (q, k, v, mask)]
        close(sdpa(*tensors), expected, "float32")
        close(slope.jit(sdpa)(*tensors), expected, "float32")
        close(slope.grad(lambda q, k, v, m: sdpa(q, k, v, m).sum())(*tensors), tq.grad, "float32")
    layer = nn.MultiHeadAttention(4, 2, key=slope.random.key(3))
    reference = torch_mha(layer, "float32")
    # (PyTorch's key_padding_mask path fails in a reshape of 0 elements for N > 1 or need_weights=False)
    q, k = q[:1], k[:1]
    for masks in (
        {"key_padding_mask": np.zeros((1, 0), bool)},
        {"key_padding_mask": np.zeros((1, 0), np.float32)},
        {"attn_mask": np.ones((3, 0), bool)},
        {"attn_mask": np.zeros((3, 0), np.float32)},
    ):
        expected, _ = reference(*(torch.tensor(a) for a in (q, k, k)), need_weights=True,
                                **{n: torch.tensor(m) for n, m in masks.items()})  # fmt: skip
        got = layer(*(slope.tensor(a) for a in (q, k, k)), **{n: slope.tensor(m) for n, m in masks.items()})
        close(got, expected, "float32")
    both_masks = {"attn_mask": slope.zeros((3, 0)), "key_padding_mask": slope.zeros((2, 0), dtype=slope.bool_)}
    got = layer(*(slope.tensor(np.repeat(a, 2, 0)) for a in (q, k, k)), **both_masks)  # (N = 2, both masks)
    close(got, np.repeat(expected.detach().numpy(), 2, 0), "float32")


def torch_mha(layer: nn.MultiHeadAttention, dtype: str):
    """A torch.nn.MultiheadAttention with the layer's weights (PyTorch packs q, k, v into one in_proj)."""
    reference = torch.nn.MultiheadAttention(layer.embed_dim, layer.num_heads, batch_first=True,
                                            dtype=getattr(torch, dtype))  # fmt: skip
    with torch.no_grad():
        reference.in_proj_weight.copy_(torch.tensor(np.concatenate(
            [p.weight.numpy() for p in (layer.q_proj, layer.k_proj, layer.v_proj)])))  # fmt: skip
        reference.in_proj_bias.copy_(torch.tensor(np.concatenate(
            [p.bias.numpy() for p in (layer.q_proj, layer.k_proj, layer.v_proj)])))  # fmt: skip
        reference.out_proj.weight.copy_(torch.tensor(layer.out_proj.weight.numpy()))
        reference.out_proj.bias.copy_(torch.tensor(layer.out_proj.bias.numpy()))
    return reference


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,heads,causal", [((2, 5, 8), 2, True), ((1, 3, 12), 3, False), ((3, 4, 4), 1, True)])
def test_multi_head_attention_against_pytorch(shape, heads, causal, dtype, each_backend):
    layer = nn.MultiHeadAttention(shape[-1], heads, key=slope.random.key(3), dtype=slope.dtypes.as_dtype(dtype))
    reference = torch_mha(layer, dtype)
    x = data(shape, dtype, 6)
    cot = data(shape, dtype, 7)
    sx, tx = both(x)

    def loss(model, x):
        out = model(x, is_causal=causal)
        return (out * slope.tensor(cot)).sum(), out

    (_, out), (grad_model, grad_x) = slope.value_and_grad(loss, argnums=(0, 1), has_aux=True)(layer, sx)
    mask = torch.triu(torch.ones(shape[1], shape[1], dtype=torch.bool), 1) if causal else None
    expected, _ = reference(tx, tx, tx, attn_mask=mask, need_weights=False)
    (expected * torch.tensor(cot)).sum().backward()
    close(out, expected, dtype)
    close(grad_x, tx.grad, dtype, scale=5.0)
    embed = shape[-1]
    close(grad_model.q_proj.weight, reference.in_proj_weight.grad[:embed], dtype, scale=5.0)
    close(grad_model.v_proj.bias, reference.in_proj_bias.grad[2 * embed :], dtype, scale=5.0)
    close(grad_model.out_proj.weight, reference.out_proj.weight.grad, dtype, scale=5.0)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dims", [None, (3, 5)], ids=["packed", "kdim_vdim"])
def test_multi_head_attention_loads_pytorchs_state_dict(dims, bias):
    # PyTorch stacks q, k and v in in_proj_weight / in_proj_bias (q_proj_weight, ... with kdim or vdim): a strict
    # load_state_dict of its state dict was a KeyError naming them
    kdim, vdim = dims or (None, None)
    torch.manual_seed(0)
    reference = torch.nn.MultiheadAttention(4, 2, bias=bias, kdim=kdim, vdim=vdim, batch_first=True)
    state = reference.state_dict()
    layer = nn.MultiheadAttention(4, 2, bias=bias, kdim=kdim, vdim=vdim, batch_first=True).load_state_dict(state)
    model = nn.Sequential(nn.Linear(4, 4), nn.MultiHeadAttention(4, 2, bias=bias, kdim=kdim, vdim=vdim))
    model.load_state_dict({"0.weight": np.eye(4), "0.bias": np.zeros(4), **{f"1.{k}": v for k, v in state.items()}})
    generator = np.random.default_rng(0)
    q, k, v = (generator.standard_normal((2, 3, size or 4)).astype(np.float32) for size in (None, kdim, vdim))
    expected, _ = reference(torch.tensor(q), torch.tensor(k), torch.tensor(v))
    close(layer(*map(slope.tensor, (q, k, v)))[0], expected, "float32")
    close(model[1](*map(slope.tensor, (q, k, v))), expected, "float32")
    with pytest.raises(ValueError, match=r"MultiHeadAttention.load_state_dict: 1.in_proj_weight has shape \(8, 4\), "
                       "expected 12 rows"):  # fmt: skip
        model.load_state_dict({"1.in_proj_weight": np.zeros((8, 4))}, strict=False)


MHA_CASES = ("plain", "bool masks", "float masks", "per-head mask", "no weights", "per-head weights",
             "causal hint", "causal hint with weights", "unbatched")  # fmt: skip


@pytest.mark.parametrize("jitted", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("case", MHA_CASES)
def test_pytorch_spelled_multihead_attention_keeps_pytorchs_contract(case, batch_first, jitted):
    """nn.MultiheadAttention is torch.nn.MultiheadAttention: (L, N, E) unless batch_first and (output, weights) from
    forward (it was batch first and returned the output alone: `out, _ = mha(x, x, x)` unpacked the batch, and an
    (L, N, E) input attended over the batch). PyTorch's weights loaded; values, weights and gradients compared."""
    n, length, source, embed, heads = 2, 4, 5, 8, 2
    generator = np.random.default_rng(12)

    def array(*shape):
        return generator.standard_normal(shape).astype(np.float32)

    def layout(batch, steps):
        return (
            (steps, embed) if case == "unbatched" else (batch, steps, embed) if batch_first else (steps, batch, embed)
        )

    q, k, v = array(*layout(n, length)), array(*layout(n, source)), array(*layout(n, source))
    kwargs = {}
    if case in ("bool masks", "unbatched"):  # True: not allowed; every row keeps key 0
        kwargs["attn_mask"] = generator.random((length, source)) > 0.6
        kwargs["key_padding_mask"] = generator.random((source,) if case == "unbatched" else (n, source)) > 0.6
        kwargs["attn_mask"][:, 0] = False
        kwargs["key_padding_mask"][..., 0] = False
    elif case == "float masks":
        kwargs.update(attn_mask=array(length, source), key_padding_mask=array(n, source))
    elif case == "per-head mask":
        kwargs["attn_mask"] = array(n * heads, length, source)
    elif case.startswith("causal hint"):  # PyTorch: the hint needs attn_mask (here a causal one)
        kwargs.update(attn_mask=np.triu(np.ones((length, source), bool), 1), is_causal=True)
    kwargs["need_weights"] = case not in ("no weights", "causal hint")
    kwargs["average_attn_weights"] = case != "per-head weights"
    torch.manual_seed(0)
    reference = torch.nn.MultiheadAttention(embed, heads, batch_first=batch_first)
    layer = nn.MultiheadAttention(embed, heads, batch_first=batch_first).load_state_dict(reference.state_dict())
    masks = {name: slope.tensor(value) for name, value in kwargs.items() if isinstance(value, np.ndarray)}
    flags = {name: value for name, value in kwargs.items() if not isinstance(value, np.ndarray)}
    cot = array(*layout(n, length))

    def loss(model, q, k, v):
        out, weights = model(q, k, v, **masks, **flags)
        total = (out * slope.tensor(cot)).sum() + (0.0 if weights is None else (weights * weights).sum())
        return total, (out, weights)

    run = slope.value_and_grad(loss, argnums=(0, 1, 2, 3), has_aux=True)
    (_, (out, weights)), (grad_model, *grad_inputs) = (slope.jit(run) if jitted else run)(
        layer, *map(slope.tensor, (q, k, v))
    )
    tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
    t_kwargs = {name: torch.tensor(value) if isinstance(value, np.ndarray) else value for name, value in kwargs.items()}
    expected, expected_weights = reference(tq, tk, tv, **t_kwargs)
    assert (weights is None) == (expected_weights is None)
    total = (expected * torch.tensor(cot)).sum()
    if expected_weights is not None:
        assert weights.shape == tuple(expected_weights.shape)
        close(weights, expected_weights, "float32")
        total = total + (expected_weights * expected_weights).sum()
    total.backward()
    assert out.shape == tuple(expected.shape)
    close(out, expected, "float32")
    for got, want in zip(grad_inputs, (tq.grad, tk.grad, tv.grad)):
        close(got, want, "float32", scale=5.0)
    for ours, rows in ((grad_model.q_proj, slice(0, embed)), (grad_model.k_proj, slice(embed, 2 * embed))):
        close(ours.weight, reference.in_proj_weight.grad[rows], "float32", scale=5.0)
        close(ours.bias, reference.in_proj_bias.grad[rows], "float32", scale=5.0)
    close(grad_model.out_proj.weight, reference.out_proj.weight.grad, "float32", scale=5.0)


def test_pytorch_spelled_multihead_attention_refuses_what_it_does_not_take():
    """PyTorch's positional arguments take PyTorch's meanings (add_bias_kv fifth, kdim seventh): what Slope does not
    support is refused by name; Slope's own MultiHeadAttention (kdim fifth) names PyTorch's order."""
    layer = nn.MultiheadAttention(8, 2, 0.0, True, False, False, 4, 6, True)
    assert (layer.k_proj.weight.shape, layer.v_proj.weight.shape, layer.batch_first) == ((8, 4), (8, 6), True)
    with pytest.raises(NotImplementedError, match="MultiheadAttention: add_bias_kv=True is not supported"):
        nn.MultiheadAttention(8, 2, 0.1, True, True)
    with pytest.raises(NotImplementedError, match="MultiheadAttention: add_zero_attn=True is not supported"):
        nn.MultiheadAttention(8, 2, 0.1, True, False, True)
    with pytest.raises(ValueError, match="MultiheadAttention: device must be None or 'cpu'"):
        nn.MultiheadAttention(8, 2, device="cuda")
    with pytest.raises(TypeError, match="MultiHeadAttention: kdim must be an int or None, got True .*add_bias_kv"):
        nn.MultiHeadAttention(8, 2, 0.1, True, True)
    x = slope.ones((3, 2, 8))
    with pytest.raises(RuntimeError, match="MultiheadAttention: is_causal .* needs attn_mask"):
        nn.MultiheadAttention(8, 2)(x, x, x, is_causal=True)
    with pytest.raises(slope.ShapeError, match="MultiheadAttention: expected key and value of 3 dimensions"):
        nn.MultiheadAttention(8, 2)(x, x[0], x[0])
    with pytest.raises(TypeError):  # PyTorch's key and value are required
        nn.MultiheadAttention(8, 2)(x)


@pytest.mark.parametrize("dtype", DTYPES)
def test_multi_head_attention_with_a_sequence_padded_everywhere(dtype, each_backend):
    """key_padding_mask hiding every key of one sequence: PyTorch's output there is the output projection's bias
    (attention gives 0, as its scaled_dot_product_attention), and every gradient is finite and PyTorch's."""
    layer = nn.MultiHeadAttention(8, 2, key=slope.random.key(4), dtype=slope.dtypes.as_dtype(dtype))
    reference = torch_mha(layer, dtype)
    x, cot = data((2, 3, 8), dtype, 8), data((2, 3, 8), dtype, 9)
    padding = np.array([[True, True, True], [False, True, False]])  # True: a key to leave out
    sx, tx = both(x)

    def loss(model, x):
        out = model(x, key_padding_mask=slope.tensor(padding))
        return (out * slope.tensor(cot)).sum(), out

    (_, out), (grad_model, grad_x) = slope.value_and_grad(loss, argnums=(0, 1), has_aux=True)(layer, sx)
    expected, _ = reference(tx, tx, tx, key_padding_mask=torch.tensor(padding), need_weights=False)
    (expected * torch.tensor(cot)).sum().backward()
    assert np.isfinite(out.numpy()).all()
    close(out, expected, dtype)
    close(grad_x, tx.grad, dtype, scale=5.0)
    close(grad_model.q_proj.weight, reference.in_proj_weight.grad[:8], dtype, scale=5.0)
    close(grad_model.out_proj.bias, reference.out_proj.bias.grad, dtype, scale=5.0)


def test_multi_head_attention_returns_the_weights_after_dropout_as_pytorch(each_backend):
    """In training, PyTorch's need_weights gives the weights the values were multiplied by: after dropout (Slope gave
    them before: rows summing to 1 while the output used dropped ones)."""
    layer = nn.MultiHeadAttention(8, 1, dropout=0.5, key=slope.random.key(5))
    x = slope.tensor(data((2, 6, 8), "float32", 10))
    _, kept = layer.eval()(x, need_weights=True)
    out, dropped = layer.train()(x, need_weights=True)
    kept, dropped = kept.numpy(), dropped.numpy()
    assert (dropped == 0).any() and (dropped != 0).any()
    np.testing.assert_allclose(dropped[dropped != 0], 2 * kept[dropped != 0], rtol=1e-6)
    values = layer.v_proj(x)
    expected = layer.out_proj(slope.tensor(dropped) @ values)
    np.testing.assert_allclose(out.numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)


def test_attention_refuses_pytorch_positional_orders_and_masks_of_the_wrong_shape():
    """PyTorch's scaled_dot_product_attention takes dropout_p fifth and its MultiheadAttention key_padding_mask fourth:
    here those land on is_causal and attn_mask, so non-bool flags are refused and the masks keyword-only (0.5 ran as
    is_causal=True; a (N, S) padding mask broadcast as an attention mask). A mask must broadcast to the scores."""
    q = slope.tensor(data((2, 3, 4), "float32", 11))
    sdpa = nn.functional.scaled_dot_product_attention
    with pytest.raises(TypeError, match="scaled_dot_product_attention: is_causal must be a bool, got 0.5"):
        sdpa(q, q, q, None, 0.5)
    with pytest.raises(slope.ShapeError, match=r"scaled_dot_product_attention: attn_mask of shape \(5, 1, 3, 3\)"):
        sdpa(q, q, q, slope.ones((5, 1, 3, 3), dtype=slope.bool_))
    np.testing.assert_allclose(sdpa(q, q, q, None, np.True_).numpy(), sdpa(q, q, q, is_causal=True).numpy())
    layer = nn.MultiHeadAttention(4, 2, key=slope.random.key(6))
    with pytest.raises(TypeError):
        layer(q, q, q, slope.zeros((2, 3), dtype=slope.bool_))
    with pytest.raises(TypeError, match="MultiHeadAttention: is_causal must be a bool"):
        layer(q, is_causal=1.0)
    with pytest.raises(slope.ShapeError, match=r"MultiHeadAttention: a 2-d attn_mask must be of shape \(3, 3\)"):
        layer(q, attn_mask=slope.zeros((1, 3), dtype=slope.bool_))


def test_attention_checks_the_batch_dimensions_of_query_key_and_value_up_front():
    """Batch dimensions that do not broadcast (4 query heads, 2 key/value heads) said "slope.matmul: shapes (2, 4) and
    (2, 2) cannot be broadcast together"; now the error names the function and the three shapes, as PyTorch refuses
    them (its enable_gqa, which Slope does not offer, is the hint when only the head counts differ)."""
    sdpa = nn.functional.scaled_dot_product_attention
    q, kv = slope.ones((2, 4, 3, 8)), slope.ones((2, 2, 5, 8))
    shapes = r"query \(2, 4, 3, 8\), key \(2, 2, 5, 8\) and value \(2, 2, 5, 8\) must broadcast"
    for mask in (None, slope.ones((3, 5), dtype=slope.bool_)):
        with pytest.raises(slope.ShapeError, match=rf"scaled_dot_product_attention: the batch dimensions .*{shapes}"):
            sdpa(q, kv, kv, attn_mask=mask)
    with pytest.raises(slope.ShapeError, match=r"4 query heads, 2 key/value heads\): grouped-query attention \(Py"):
        sdpa(q, kv, kv)
    for key, value in (((3, 5, 8), (3, 5, 8)), ((2, 5, 8), (3, 5, 8))):  # (key and value disagree: no heads hint)
        with pytest.raises(slope.ShapeError, match=r"scaled_dot_product_attention: the batch dim") as error:
            sdpa(slope.ones((2, 3, 8)), slope.ones(key), slope.ones(value))
        assert "enable_gqa" not in str(error.value)
        with pytest.raises(RuntimeError):
            torch.nn.functional.scaled_dot_product_attention(torch.ones(2, 3, 8), torch.ones(key), torch.ones(value))
    with pytest.raises(slope.ShapeError, match="query and key of the same size E, key and value of the same length S"):
        sdpa(slope.ones((3, 8)), slope.ones((5, 8)), slope.ones((4, 8)))
    # batch dimensions that broadcast still do, as PyTorch's
    out = sdpa(slope.ones((1, 3, 8)), slope.ones((2, 5, 8)), slope.ones((2, 5, 4)))
    expected = torch.nn.functional.scaled_dot_product_attention(torch.ones(1, 3, 8), torch.ones(2, 5, 8),
                                                                 torch.ones(2, 5, 4))  # fmt: skip
    assert out.shape == tuple(expected.shape)


# ----------------------------------------------------------------------------------------------- layers


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,vocab", [((2, 5), 7), ((3,), 4)])
def test_embedding_with_tied_output_layer(shape, vocab, dtype, each_backend):
    width = 6
    layer = nn.Embedding(vocab, width, key=slope.random.key(4), dtype=slope.dtypes.as_dtype(dtype))
    indices = rng(8).integers(0, vocab, shape)
    cot = data(shape + (vocab,), dtype, 9)
    weight = torch.tensor(layer.weight.numpy())

    def loss(model, indices):
        logits = model.attend(slope.tanh(model(indices)))  # the same table embeds and scores
        return (logits * slope.tensor(cot)).sum(), logits

    (_, out), grads = slope.value_and_grad(loss, has_aux=True)(layer, slope.tensor(indices))
    embedding = torch.nn.Embedding(vocab, width, _weight=weight)
    head = torch.nn.Linear(width, vocab, bias=False)
    head.weight = embedding.weight  # PyTorch's weight tying: one parameter
    expected = head(torch.tanh(embedding(torch.tensor(indices))))
    (expected * torch.tensor(cot)).sum().backward()
    close(out, expected, dtype)
    close(grads.weight, embedding.weight.grad, dtype, scale=5.0)
    with pytest.raises(slope.ShapeError, match="Embedding.attend"):
        layer.attend(slope.ones((2, width + 1)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,normalized,bias", [((2, 3, 8), (8,), True), ((2, 3, 8), (8,), False),
                                                    ((4, 3, 5), (3, 5), True)])  # fmt: skip
def test_layernorm_against_pytorch(shape, normalized, bias, dtype, each_backend):
    layer = nn.LayerNorm(normalized, bias=bias, dtype=slope.dtypes.as_dtype(dtype))
    layer.weight = slope.tensor(data(normalized, dtype, 10) + 1)
    if bias:
        layer.bias = slope.tensor(data(normalized, dtype, 11))
    reference = torch.nn.LayerNorm(normalized, bias=bias, dtype=getattr(torch, dtype))
    with torch.no_grad():
        reference.weight.copy_(torch.tensor(layer.weight.numpy()))
        if bias:
            reference.bias.copy_(torch.tensor(layer.bias.numpy()))
    x, cot = data(shape, dtype, 12, 3.0), data(shape, dtype, 13)
    sx, tx = both(x)

    def loss(model, x):
        out = model(x)
        return (out * slope.tensor(cot)).sum(), out

    (_, out), (grad_model, grad_x) = slope.value_and_grad(loss, argnums=(0, 1), has_aux=True)(layer, sx)
    expected = reference(tx)
    (expected * torch.tensor(cot)).sum().backward()
    close(out, expected, dtype, scale=5.0)
    close(grad_x, tx.grad, dtype, scale=20.0)
    close(grad_model.weight, reference.weight.grad, dtype, scale=5.0)
    if bias:
        close(grad_model.bias, reference.bias.grad, dtype, scale=5.0)
    else:
        assert layer.bias is None and "bias" not in dict(layer.named_parameters())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_against_pytorch(approximate, dtype, each_backend):
    x = data((3, 7), dtype, 14, 3.0)
    sx, tx = both(x)
    out, grad = slope.value_and_grad(lambda x: nn.GELU(approximate)(x).sum())(sx), None
    out, grad = out
    expected = torch.nn.GELU(approximate)(tx)
    expected.sum().backward()
    close(out, expected.sum(), dtype, scale=5.0)
    close(grad, tx.grad, dtype, scale=5.0)
    close(nn.functional.gelu(sx, approximate), expected, dtype)


def test_dropout_keys_train_and_eval(each_backend):
    model = nn.Sequential(nn.Linear(6, 6, key=slope.random.key(0)), nn.Dropout(0.5))
    x = slope.tensor(data((4, 6), "float32"))
    run = slope.jit(lambda m, x, k: nn.apply(m, x, key=k)[0])
    a, b, c = run(model, x, slope.random.key(1)), run(model, x, slope.random.key(1)), run(model, x, slope.random.key(2))
    np.testing.assert_array_equal(a.numpy(), b.numpy())  # the same key drops the same elements
    assert not np.array_equal(a.numpy(), c.numpy())
    dense = model[0](x).numpy()
    kept = a.numpy() != 0
    np.testing.assert_allclose(a.numpy()[kept], 2 * dense[kept], rtol=1e-6)  # kept values scaled by 1 / (1 - p)
    model.eval()
    assert not model[1].training
    np.testing.assert_allclose(slope.jit(lambda m, x: m(x))(model, x).numpy(), dense, rtol=1e-6)
    model.train()
    assert model[1].training


# ----------------------------------------------------------------------------------------------- loss, optimizer


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 5, 7), (3, 1, 65)])
def test_cross_entropy_over_batch_time_vocab(shape, dtype, each_backend):
    logits = data(shape, dtype, 15, 2.0)
    targets = rng(16).integers(0, shape[-1], shape[:-1])
    sl, tl = both(logits)
    value, grad = slope.value_and_grad(lambda x: nn.cross_entropy(x.reshape((-1, shape[-1])),
                                                                  slope.tensor(targets).reshape((-1,))))(sl)  # fmt: skip
    expected = torch.nn.functional.cross_entropy(tl.transpose(1, 2), torch.tensor(targets))  # (N, C, T) in PyTorch
    expected.backward()
    close(value, expected, dtype)
    close(grad, tl.grad, dtype)


def test_warmup_cosine_matches_pytorch():
    lr, warmup, total, final = 1e-3, 10, 50, 1e-4
    schedule = nn.optim.warmup_cosine(lr, warmup, total, final)
    param = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([param], lr=lr)
    torch_schedule = torch.optim.lr_scheduler.SequentialLR(opt, [
        torch.optim.lr_scheduler.LinearLR(opt, 1 / warmup, 1.0, total_iters=warmup - 1),
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, total - warmup, final),
    ], milestones=[warmup])  # fmt: skip
    expected = []
    for _ in range(total + 1):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        torch_schedule.step()
    got = [float(schedule(slope.tensor(float(step)))) for step in range(total + 1)]
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert float(schedule(slope.tensor(float(total + 20)))) == pytest.approx(final)
    with pytest.raises(ValueError, match="warmup_cosine"):
        nn.optim.warmup_cosine(lr, 10, 10)


@pytest.mark.parametrize(
    "args, what",
    [((0.5, 5), "warmup_steps"), ((2, 5.5), "total_steps"), ((True, 5), "warmup_steps"), ((-1, 5), "warmup_steps")],
)
def test_warmup_cosine_refuses_step_counts_that_are_not_integers(args, what):
    # 0.5, 5.5 and True were taken as step counts (cosine_decay, step_decay and linear_warmup refuse them)
    with pytest.raises(ValueError, match=f"warmup_cosine: {what} must be an integer of at least"):
        nn.optim.warmup_cosine(0.1, *args)
    assert float(nn.optim.warmup_cosine(0.1, 0, 5)(slope.tensor(0.0))) == pytest.approx(0.1)


class Tiny(nn.Module):
    def __init__(self, dtype):
        super().__init__()
        self.embed = nn.Embedding(5, 4, key=slope.random.key(1), dtype=dtype)
        self.norm = nn.LayerNorm(4, dtype=dtype)
        self.proj = nn.Linear(4, 4, key=slope.random.key(2), dtype=dtype)

    def forward(self, tokens):
        return self.embed.attend(self.proj(self.norm(self.embed(tokens))))


def torch_tiny(model: Tiny):
    class TorchTiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(5, 4, _weight=torch.tensor(model.embed.weight.numpy()))
            self.norm = torch.nn.LayerNorm(4, dtype=self.embed.weight.dtype)
            self.proj = torch.nn.Linear(4, 4, dtype=self.embed.weight.dtype)
            with torch.no_grad():
                self.proj.weight.copy_(torch.tensor(model.proj.weight.numpy()))
                self.proj.bias.copy_(torch.tensor(model.proj.bias.numpy()))

        def forward(self, tokens):
            return self.proj(self.norm(self.embed(tokens))) @ self.embed.weight.T

    return TorchTiny()


@pytest.mark.parametrize("dtype", DTYPES)
def test_adamw_with_decay_filter_clipping_and_schedule_matches_pytorch(dtype, each_backend):
    model = Tiny(slope.dtypes.as_dtype(dtype))
    reference = torch_tiny(model)
    lr, warmup, total = 1e-2, 2, 6
    optimizer = nn.AdamW(nn.optim.warmup_cosine(lr, warmup, total), weight_decay=0.1,
                         decay=nn.optim.no_decay_on_biases_and_norms)  # fmt: skip
    decayed = [p for p in reference.parameters() if p.ndim >= 2]
    others = [p for p in reference.parameters() if p.ndim < 2]
    torch_opt = torch.optim.AdamW([{"params": decayed, "weight_decay": 0.1}, {"params": others, "weight_decay": 0.0}],
                                  lr=lr)  # fmt: skip
    torch_schedule = torch.optim.lr_scheduler.SequentialLR(torch_opt, [
        torch.optim.lr_scheduler.LinearLR(torch_opt, 1 / warmup, 1.0, total_iters=warmup - 1),
        torch.optim.lr_scheduler.CosineAnnealingLR(torch_opt, total - warmup),
    ], milestones=[warmup])  # fmt: skip
    tokens = rng(17).integers(0, 5, (3, 4))
    targets = rng(18).integers(0, 5, (3, 4))

    def loss_fn(model, tokens, targets):
        return nn.cross_entropy(model(tokens).reshape((-1, 5)), targets.reshape((-1,)))

    @slope.jit
    def step(model, state, tokens, targets):
        loss, grads = slope.value_and_grad(loss_fn)(model, tokens, targets)
        grads, norm = nn.optim.clip_grad_norm(grads, 0.5)
        model, state = optimizer.step(model, grads, state)
        return model, state, loss, norm

    state = optimizer.init(model)
    for _ in range(total):
        model, state, loss, norm = step(model, state, slope.tensor(tokens), slope.tensor(targets))
        torch_opt.zero_grad()
        torch_loss = torch.nn.functional.cross_entropy(reference(torch.tensor(tokens)).reshape(-1, 5),
                                                       torch.tensor(targets).reshape(-1))  # fmt: skip
        torch_loss.backward()
        torch_norm = torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.5)
        torch_opt.step()
        torch_schedule.step()
        close(loss, torch_loss, dtype, scale=10.0)
        close(norm, torch_norm, dtype, scale=10.0)
    scale = 50.0  # six steps of Adam: 1/sqrt(nu) amplifies the first steps' rounding
    close(model.embed.weight, reference.embed.weight, dtype, scale)
    close(model.norm.weight, reference.norm.weight, dtype, scale)
    close(model.proj.bias, reference.proj.bias, dtype, scale)
    assert math.isfinite(float(loss))
