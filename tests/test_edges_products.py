"""Products at their edges (session 20 review): a batched matmul whose operand has no batch, half-precision gradients
of matmul and conv, and conv taps that fall wholly in the padding. References: PyTorch (optional) and float64."""

from __future__ import annotations

import numpy as np
import pytest

import slope

torch = pytest.importorskip("torch")
HALVES = {"float16": (slope.float16, 2.0**-10), "bfloat16": (slope.bfloat16, 2.0**-7)}  # dtype, ulp of 1

SHAPES = [((4, 64), (5, 64, 4)), ((64,), (5, 64, 4)), ((1, 4, 6), (5, 6, 3)), ((5, 4, 6), (1, 6, 3)),
          ((2, 1, 4, 3), (1, 5, 3, 2)), ((1, 1, 4, 3), (2, 5, 3, 2)), ((4, 3), (0, 3, 2)), ((4, 0), (3, 0, 2)),
          ((0, 4, 3), (3, 2)), ((1, 4, 3), (1, 3, 2)), ((3,), (2, 3, 4))]  # fmt: skip


@pytest.mark.parametrize("shapes", SHAPES, ids=str)
def test_matmul_with_an_unbatched_operand_as_pytorch(backend, shapes):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(shapes[0]), rng.standard_normal(shapes[1])
    ta, tb = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
    (ta @ tb).pow(2).sum().backward()
    value = (torch.tensor(a) @ torch.tensor(b)).numpy()
    for fn in (lambda f: f, slope.jit):
        out = fn(lambda x, y: x @ y)(slope.tensor(a), slope.tensor(b)).numpy()
        assert out.shape == value.shape and np.allclose(out, value, rtol=1e-12, atol=1e-12)
        ga, gb = fn(slope.grad(lambda x, y: ((x @ y) ** 2).sum(), argnums=(0, 1)))(slope.tensor(a), slope.tensor(b))
        np.testing.assert_allclose(ga.numpy(), ta.grad.numpy(), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(gb.numpy(), tb.grad.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", HALVES)
@pytest.mark.parametrize("case", ["broadcast", "vmap"])
def test_half_gradient_of_an_operand_shared_by_a_batch_is_rounded_once(backend, dtype, case):
    # the gradient of an operand broadcast over a batch (or unbatched under vmap) was summed batch by batch in the
    # half dtype: (4,64) @ (4096,64,4) float16 80 ulps off, bfloat16 up to 930; PyTorch 0.5-1.3 (review, session 20)
    half, ulp = HALVES[dtype]
    rng = np.random.default_rng(1)
    a, b = rng.uniform(-1, 1, (4, 64)), rng.uniform(-1, 1, (2048, 64, 4))
    g = rng.uniform(-1, 1, (2048, 4, 4))
    a, b, g = (np.asarray(slope.tensor(v).astype(half).astype(slope.float64).numpy()) for v in (a, b, g))
    A, B, G = (slope.tensor(v).astype(half) for v in (a, b, g))
    if case == "broadcast":
        got = slope.vjp(lambda x: x @ B, A)[1](G)[0]
    else:
        got = slope.grad(lambda x: (slope.vmap(lambda y: x @ y)(B) * G).sum())(A)
    exact = (g @ np.swapaxes(b, -1, -2)).sum(0)
    assert got.dtype == half
    scale = np.exp2(np.floor(np.log2(np.maximum(np.abs(exact), 1e-30))))  # the ulp at each exact value
    assert (np.abs(got.numpy().astype(np.float64) - exact) / (scale * ulp)).max() <= 1.0


@pytest.mark.parametrize("dtype", HALVES)
def test_half_conv_input_gradient_without_bias_is_rounded_once(backend, dtype):
    # bfloat16 conv without a bias added the input gradient's taps one by one in bfloat16: 3806 ulps off where
    # values cancel (PyTorch 0.5); with a bias it was already computed in float32
    half, ulp = HALVES[dtype]
    rng = np.random.default_rng(2)
    x, w, g = rng.uniform(-1, 1, (1, 4, 300)), rng.uniform(-1, 1, (8, 4, 51)), rng.uniform(-1, 1, (1, 8, 250))
    x, w, g = (np.asarray(slope.tensor(v).astype(half).astype(slope.float64).numpy()) for v in (x, w, g))
    X, W, G = (slope.tensor(v).astype(half) for v in (x, w, g))
    got = slope.vjp(lambda a: slope.conv(a, W), X)[1](G)[0]
    exact = torch.nn.grad.conv1d_input(x.shape, torch.tensor(w), torch.tensor(g)).numpy()
    scale = np.exp2(np.floor(np.log2(np.maximum(np.abs(exact), 1e-30))))
    assert got.dtype == half and (np.abs(got.numpy().astype(np.float64) - exact) / (scale * ulp)).max() <= 1.0


@pytest.mark.parametrize("config", [((1, 2, 1), (3, 2, 3), 3, 2), ((1, 3, 7, 7), (4, 3, 11, 11), 4, 2),
                                    ((2, 1, 5), (2, 1, 4), 3, 3)], ids=str)  # fmt: skip
def test_conv_input_gradient_with_taps_wholly_in_the_padding(backend, config):
    # a kernel tap whose positions all fall in the low padding crashed the input gradient ("slope.pad: ... crop more
    # than all of shape"): stride >= 3 and padding >= 2 with a short output (AlexNet's first layer on a small image)
    xs, ws, stride, padding = config
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal(xs), rng.standard_normal(ws)
    conv = torch.nn.functional.conv1d if len(xs) == 3 else torch.nn.functional.conv2d
    tx = torch.tensor(x, requires_grad=True)
    (conv(tx, torch.tensor(w), None, stride, padding) ** 2).sum().backward()
    got = slope.grad(lambda a: (slope.conv(a, slope.tensor(w), None, stride, padding) ** 2).sum())(slope.tensor(x))
    np.testing.assert_allclose(got.numpy(), tx.grad.numpy(), rtol=1e-10, atol=1e-10)


def test_conv_bias_of_another_dtype_is_a_dtype_error(backend):
    x, w = slope.ones((1, 2, 5), dtype=slope.float16), slope.ones((3, 2, 2), dtype=slope.float16)
    with pytest.raises(slope.DTypeError, match="slope.conv: expected a bias"):
        slope.conv(x, w, slope.ones(3, dtype=slope.float32))


PROD_CASES = [  # values, dtype: products whose intermediate results overflowed (inf, NaN) where PyTorch's are finite
    ([300.0, 1e-3, 300.0, 1e-3], "float16"),
    ([1e30, 1e-30, 1e30, 1e-30], "float32"),
    ([1e30, 1e30, 1e-30, 1e-30, 5.0], "float32"),
    ([1e200, 1e-200, 1e200, 1e-200], "float64"),
    ([6e4, 6e4, 1e-4, 1e-4, 2.0], "bfloat16"),
]


@pytest.mark.parametrize(("values", "dtype"), PROD_CASES, ids=str)
def test_prod_of_large_and_small_values_is_finite(backend, values, dtype):
    # prod multiplied x[:half] * x[half:]: 1e30 * 1e30 overflowed before 1e-30 came in (NaN where PyTorch gives 1.0),
    # and halves were multiplied in their own dtype (PyTorch: in float32). Reference: the product of the dtype's
    # values in float64, rounded once (PyTorch's float32 sequential product is inf for the third case)
    rounded = torch.tensor(values, dtype=getattr(torch, dtype)).double().requires_grad_()
    (grad,) = torch.autograd.grad(rounded.prod(), rounded)
    x = slope.tensor(values, dtype=getattr(slope, dtype))
    for fn in (lambda f: f, slope.jit):
        out = fn(slope.prod)(x)
        assert out.dtype == x.dtype
        expected = float(rounded.prod().to(getattr(torch, dtype)))
        np.testing.assert_allclose(out.numpy().astype(np.float64), expected, rtol=1e-12)
        got = fn(slope.grad(lambda v: slope.prod(v).astype(slope.float32)))(x).numpy().astype(np.float64)
        np.testing.assert_allclose(got, grad.to(getattr(torch, dtype)).double().numpy(), rtol=2**-7)  # halves' ulps


def test_prod_of_a_long_float32_row_near_one():
    # a float32 tree of values near 1 rounded one way (1 + a + b + ab lands on half-ulps, ab tips it): 300,000 values
    # in 1 +- 5e-4 were 7e-4 off (PyTorch 5e-5, a sequential float32 product 1e-6); multiplied in float64 now
    rng = np.random.default_rng(0)
    y = (1 + (rng.uniform(0, 1, 300_000) - 0.5) * 1e-3).astype(np.float32)
    exact = np.prod(y.astype(np.float64))
    got = slope.prod(slope.tensor(y)).item()
    assert abs(got / exact - 1) < 2**-23
