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
