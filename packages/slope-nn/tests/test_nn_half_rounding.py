"""float16 and bfloat16 layers computed in float32 and rounded once, as PyTorch's CPU kernels: each case below came
out wrong when the half dtype rounded every step (found by a review helper; the values are PyTorch's)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import slope
import slope.nn as nn

torch = pytest.importorskip("torch")
F = torch.nn.functional

E = 2.0**-10


def half(values, dtype: str = "float16") -> slope.Tensor:
    return slope.tensor(values, dtype=getattr(slope, dtype))


def values(t) -> list:
    return np.asarray(t.numpy(), dtype=np.float64).ravel().tolist()


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("dtype,query", [("bfloat16", [[[600.0, 1.5]]]), ("float16", [[[3000.0, 1.0]]])])
def test_attention_scores_are_not_rounded_to_the_half_dtype(dtype, query, jit, each_backend):
    # bfloat16 scores 600 and 601.5 both rounded to 600: weights 0.5 and 0.5 where PyTorch gives 0.18 and 0.82
    keys, vals = [[[1.0, 0.0], [1.0, 1.0]]], [[[0.0], [1.0]]]
    expected = F.scaled_dot_product_attention(*(torch.tensor(a, dtype=getattr(torch, dtype)) for a in (query, keys, vals)),
                                              scale=1.0)  # fmt: skip
    attend = lambda q, k, v: slope.scaled_dot_product_attention(q, k, v, scale=1.0)  # noqa: E731
    got = (slope.jit(attend) if jit else attend)(*(half(a, dtype) for a in (query, keys, vals)))
    assert got.dtype == getattr(slope, dtype) and values(got) == expected.double().ravel().tolist()


@pytest.mark.parametrize("dtype,big,small", [("bfloat16", 600.0, 1.5), ("float16", 3000.0, 1.0)])
def test_multi_head_attention_of_halves_attends_in_float32(dtype, big, small, each_backend):
    # identity projections: the scores 600 and 601.5 (times sqrt 2 / sqrt 2) rounded to 600 and 600 in bfloat16 gave
    # the value 0.5 where PyTorch's half module (attention in float32 in its CPU kernel) gives 0.82
    layer = nn.MultiHeadAttention(2, 1, dtype=getattr(slope, dtype))
    reference = torch.nn.MultiheadAttention(2, 1, batch_first=True, dtype=getattr(torch, dtype))
    for projection in (layer.q_proj, layer.k_proj, layer.v_proj, layer.out_proj):
        projection.weight, projection.bias = slope.eye(2, dtype=getattr(slope, dtype)), slope.zeros(2, dtype=dtype)
    with torch.no_grad():
        reference.in_proj_weight.copy_(torch.eye(2).repeat(3, 1))
        reference.in_proj_bias.zero_()
        reference.out_proj.weight.copy_(torch.eye(2))
        reference.out_proj.bias.zero_()
    query, keys, vals = [[[big * 2**0.5, small * 2**0.5]]], [[[1.0, 0.0], [1.0, 1.0]]], [[[0.0, 0.0], [1.0, 1.0]]]
    expected = reference(
        *(torch.tensor(a, dtype=getattr(torch, dtype)) for a in (query, keys, vals)), need_weights=False
    )
    got = layer(*(half(a, dtype) for a in (query, keys, vals)))
    assert got.dtype == getattr(slope, dtype) and values(got) == expected[0].detach().double().ravel().tolist()


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("function", ["softmax", "log_softmax"])
@pytest.mark.parametrize("dtype,gap", [("float16", 2.0**-10), ("bfloat16", 2.0**-7)])
def test_softmax_derivatives_of_halves_are_rounded_once(dtype, gap, function, jit, each_backend):
    # float16 softmax's gradient was [0.0, 0.000488] for PyTorch's [-0.000244, 0.000244]
    weights = [1.0, 1.0 + gap]
    x = torch.zeros(2, dtype=getattr(torch, dtype), requires_grad=True)
    (getattr(torch, function)(x, 0) * torch.tensor(weights, dtype=x.dtype)).sum().backward()
    gradient = slope.grad(lambda v: (getattr(slope, function)(v, 0) * half(weights, dtype)).sum())
    got = (slope.jit(gradient) if jit else gradient)(slope.zeros(2, dtype=getattr(slope, dtype)))
    assert values(got) == x.grad.double().tolist()


def test_bfloat16_conv_transpose_rounds_once(each_backend):
    # each tap's sum was rounded to bfloat16: the middle element was 0.0, not 2**-14
    x, w = [[[1 + 2**-7, 1.0]]], [[[-(1 + 2**-6), 1 + 2**-7]]]
    got = slope.conv_transpose(half(x, "bfloat16"), half(w, "bfloat16"))
    assert (
        values(got) == F.conv_transpose1d(torch.tensor(x), torch.tensor(w)).to(torch.bfloat16).double().ravel().tolist()
    )
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((2, 3, 8, 8)), rng.standard_normal((3, 2, 5, 5))
    args = [torch.tensor(a).to(torch.bfloat16) for a in (x, w)]
    exact = F.conv_transpose2d(*(a.double() for a in args), stride=2).to(torch.bfloat16).float().numpy()
    got = slope.conv_transpose(*(slope.tensor(a.float().numpy()).astype("bfloat16") for a in args), stride=2)
    ulps = np.abs(got.numpy().astype(np.float32) - exact) / np.maximum(np.abs(exact) * 2.0**-7, 2.0**-133)
    assert ulps.max() <= 1.0  # (float32 sums, then one rounding; each tap rounded gave up to 254 ulps)


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_linear_bias_and_average_pooling_of_halves_round_once(jit, each_backend):
    t = lambda v: torch.tensor(v, dtype=torch.float16)  # noqa: E731
    linear = slope.jit(slope.linear) if jit else slope.linear
    got = linear(half([[1 + E]]), half([[1 + E]]), half([-(1 + 2 * E)]))
    assert values(got) == [F.linear(t([[1 + E]]), t([[1 + E]]), t([-(1 + 2 * E)])).item()]  # 2**-20, was 0.0
    pool = lambda v: slope.avg_pool(v, 3, stride=1, padding=1, count_include_pad=False)  # noqa: E731
    got = (slope.jit(pool) if jit else pool)(half([[[1.0, E, E / 2]]]))
    expected = F.avg_pool1d(t([[[1.0, E, E / 2]]]), 3, stride=1, padding=1, count_include_pad=False)
    assert values(got) == expected.double().ravel().tolist()  # the middle was 0.333984, not 0.333740


def test_float64_dropout_scales_by_float64s_reciprocal(each_backend):
    x = slope.ones(64, dtype=slope.float64)
    for got in (
        nn.dropout(x, 0.1, key=slope.random.key(1)),
        nn.dropout(x.astype("float32"), 0.1, key=slope.random.key(1)),
    ):
        kept = set(values(got)) - {0.0}
        assert kept == {1.0 / 0.9 if got.dtype == slope.float64 else float(np.float32(1.0) / np.float32(0.9))}


def test_init_uniform_of_halves_stays_below_its_bound():
    for dtype in ("float16", "bfloat16"):
        drawn = nn.init.uniform((100_000,), 10.0, 11.0, key=slope.random.key(0), dtype=dtype).numpy().astype(np.float32)
        assert drawn.min() >= 10.0 and drawn.max() < 11.0  # float16 drew 11.0 for 0.4% of values, bfloat16 3.1%


def test_rng_blocks_are_per_thread():
    # the nn.rng stack was shared: two threads' dropout drew each other's keys (a third of the masks differed)
    model = nn.Sequential(nn.Dropout(0.5), nn.Dropout(0.5))
    model.train()
    x, keys = slope.ones(64), [slope.random.key(i) for i in range(2)]
    expected = [values(nn.apply(model, x, key=key)[0]) for key in keys]
    wrong = [0, 0]

    def work(i: int) -> None:
        for _ in range(100):
            wrong[i] += values(nn.apply(model, x, key=keys[i])[0]) != expected[i]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrong == [0, 0]


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_leaky_relu_of_halves_scales_in_float32(jit, each_backend):
    # 0.01 was rounded to float16 (0.0100021) before the product: 7,740 of float16's normal values a rounding off
    x = np.arange(2**16, dtype=np.uint16).view(np.float16)
    x = x[np.isfinite(x) & ((np.abs(x) >= 2.0**-14) | (x == 0))]
    function = slope.jit(nn.functional.leaky_relu) if jit else nn.functional.leaky_relu
    for dtype in ("float16", "bfloat16"):
        values = torch.tensor(x.astype(np.float32)).to(getattr(torch, dtype))
        expected = F.leaky_relu(values).double().numpy()
        got = function(slope.tensor(values.float().numpy()).astype(dtype))
        assert got.dtype == getattr(slope, dtype) and (np.asarray(got.numpy(), np.float64) == expected).all()


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_rms_norm_of_halves_rounds_once(dtype, each_backend):
    # normalised, rounded, times the weight, rounded again: 0.71484375 where PyTorch (and the exact value) is 0.71875,
    # and the input's gradient up to 300 ulps off
    weight, x = [0.1, 0.3, 0.7, 1.1], [[1.0, 2.0, 3.0, 4.5], [-0.5, 0.25, 8.0, -3.0]]
    reference = torch.nn.RMSNorm(4, dtype=getattr(torch, dtype))
    with torch.no_grad():
        reference.weight.copy_(torch.tensor(weight))
    source = torch.tensor(x, dtype=getattr(torch, dtype), requires_grad=True)
    expected = reference(source)
    expected.backward(torch.tensor([[1.0, -2.0, 0.5, 3.0], [0.25, 1.0, -1.0, 2.0]], dtype=source.dtype))
    layer = nn.RMSNorm(4, dtype=getattr(slope, dtype))
    layer.weight = half(weight, dtype)
    got, pullback = slope.vjp(layer, half(x, dtype))
    (gradient,) = pullback(half([[1.0, -2.0, 0.5, 3.0], [0.25, 1.0, -1.0, 2.0]], dtype))
    assert values(got) == expected.detach().double().ravel().tolist()
    assert values(gradient) == source.grad.double().ravel().tolist()


def test_batch_norm_of_halves_uses_its_statistics_in_float32(each_backend):
    # eval: var + eps and its rsqrt were rounded to bfloat16 (8.375 for PyTorch's 8.3125); training: float16's
    # 1 - 0.01 is 0.990234, so the running statistics drifted 2.4% high over 1,000 batches
    layer = nn.BatchNorm1d(1, dtype=slope.bfloat16).eval()
    layer.running_var = half([0.09], "bfloat16")
    assert values(layer(half([[2.5]], "bfloat16"))) == [8.3125]
    layer, reference = nn.BatchNorm1d(1, momentum=0.01, dtype=slope.float16), torch.nn.BatchNorm1d(1, momentum=0.01)
    reference = reference.half()
    batches = np.random.default_rng(0).standard_normal((300, 64, 1)).astype(np.float16) + np.float16(1.0)
    step = slope.jit(lambda model, x: nn.apply(model, x)[1])
    for batch in batches:
        layer = step(layer, slope.tensor(batch))
        reference(torch.tensor(batch))
    for name in ("running_mean", "running_var"):
        got, expected = values(getattr(layer, name))[0], getattr(reference, name).double().item()
        assert abs(got - expected) <= 4 * 2.0**-10 * abs(expected), name  # (a 1% drift before)


def test_gelu_derivative_of_halves_survives_a_large_cotangent(each_backend):
    # the float16 derivative is 0 or subnormal below -4.3: times a loss-scaled cotangent it gave 0 (or 1.7x too much)
    x = np.linspace(-8.0, -3.0, 400).astype(np.float16)
    for approximate in ("none", "tanh"):
        source = torch.tensor(x, requires_grad=True)
        F.gelu(source, approximate=approximate).backward(torch.full((400,), 1024.0, dtype=torch.float16))
        exact = torch.tensor(x.astype(np.float64), requires_grad=True)
        F.gelu(exact, approximate=approximate).backward(torch.full((400,), 1024.0, dtype=torch.float64))
        _, pullback = slope.vjp(lambda v, a=approximate: slope.gelu(v, approximate=a), slope.tensor(x))
        got = np.asarray(pullback(slope.full((400,), 1024.0, dtype=slope.float16))[0].numpy(), np.float64)
        rounded = exact.grad.half().double().numpy()
        ours, theirs = np.abs(got - rounded), np.abs(source.grad.double().numpy() - rounded)
        assert (ours <= np.maximum(theirs, np.spacing(np.abs(rounded).astype(np.float16)) * 4)).all(), approximate


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_silu_gradient_is_finite_where_the_cotangent_times_x_overflows(dtype, each_backend):
    # x * sigmoid(x)'s product rule formed cotangent * x (inf) and met a derivative of 0: NaN where PyTorch gives 1e20
    x, cotangent = torch.tensor([1e20, -1e20, 3.0, -2.0]), torch.tensor([1e20, 1e20, 1.0, 2.0])
    source = x.to(getattr(torch, dtype)).requires_grad_()
    F.silu(source).backward(cotangent.to(source.dtype))
    _, pullback = slope.vjp(slope.silu, slope.tensor(x.detach().numpy()).astype(dtype))
    got = pullback(slope.tensor(cotangent.numpy()).astype(dtype))[0]
    np.testing.assert_allclose(values(got), source.grad.double().numpy(), rtol=2.0**-7 if dtype == "bfloat16" else 1e-6)
    second = slope.grad(slope.grad(slope.silu))(slope.tensor(0.7, dtype=slope.float64))
    assert abs(second.item() - 0.39122059467797876) < 1e-12  # (s (1 - s) (2 + x (1 - 2 s)) at 0.7)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_layer_norm_tangent_of_halves_is_rounded_once(dtype, each_backend):
    # slope.layer_norm's jvp ran in the half dtype: half of the tangents a rounding off (cancelling ones 0 in bfloat16)
    rng = np.random.default_rng(0)
    x, t = (torch.tensor(rng.standard_normal((64, 32)).astype(np.float32)).to(getattr(torch, dtype)) for _ in "xt")
    _, exact = torch.func.jvp(lambda v: F.layer_norm(v, (32,)), (x.double(),), (t.double(),))
    rounded = exact.to(getattr(torch, dtype)).double().numpy()
    as_slope = [slope.tensor(a.float().numpy()).astype(dtype) for a in (x, t)]
    _, got = slope.jvp(slope.layer_norm, (as_slope[0],), (as_slope[1],))
    assert got.dtype == getattr(slope, dtype) and (np.asarray(got.numpy(), np.float64) != rounded).sum() <= 16


def test_tanh_gelu_of_halves_is_within_an_ulp(each_backend):
    # 0.5 x (1 + tanh u) cancelled below 0: float16 results up to 2 ulps off (iree: 6, its tanh coarser), PyTorch's 3
    x = np.arange(2**16, dtype=np.uint16).view(np.float16)
    x = x[np.isfinite(x) & ((np.abs(x) >= 2.0**-14) | (x == 0))]
    exact = F.gelu(torch.tensor(x.astype(np.float64)), approximate="tanh").half().double().numpy()
    got = np.asarray(slope.gelu(slope.tensor(x), approximate="tanh").numpy(), np.float64)
    finite = np.isfinite(exact)
    ulps = np.abs(got - exact)[finite] / np.spacing(np.abs(exact[finite]).astype(np.float16)).astype(np.float64)
    assert ulps.max() <= 1.0
