"""PyTorch arguments slope-nn once refused with a bare "unexpected keyword argument": each against torch (forward
values and gradients, eager and under jit, float32 and float64, on every backend) and PyTorch's errors."""

from __future__ import annotations

import numpy as np
import pytest
from nn_helpers import assert_close, rng

import slope
import slope.nn as nn

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.usefixtures("each_backend")

DTYPES = ["float32", "float64"]
MODES = ["eager", "jit"]


def check_against_torch(slope_fn, torch_fn, arrays: list, dtype: str, mode: str, seed: int = 1) -> None:
    """slope_fn(*tensors) and its gradients (of a weighted sum) against torch_fn on the same arrays."""
    arrays = [np.asarray(a, dtype=dtype) for a in arrays]
    leaves = [torch.tensor(a, requires_grad=True) for a in arrays]
    expected = torch_fn(*leaves)
    weights = rng(seed).standard_normal(tuple(expected.shape)).astype(dtype)
    (expected * torch.tensor(weights)).sum().backward()

    def loss(*xs):
        return (slope_fn(*xs) * slope.tensor(weights)).sum()

    forward, gradient = slope_fn, slope.grad(loss, argnums=tuple(range(len(arrays))))
    if mode == "jit":
        forward, gradient = slope.jit(forward), slope.jit(gradient)
    tensors = [slope.tensor(a) for a in arrays]
    got = forward(*tensors)
    assert got.dtype.name == dtype and got.shape == tuple(expected.shape), (got.dtype, got.shape, expected.shape)
    assert_close(got, expected.detach().numpy(), dtype)
    for grad, leaf in zip(gradient(*tensors), leaves):
        assert_close(grad, leaf.grad.numpy(), dtype)


# ----------------------------------------------------------------------------------------------- divisor_override

POOLS = [  # (spatial dims, kernel, stride, padding, ceil_mode, count_include_pad, divisor)
    (2, 2, None, 0, False, True, 3),
    (2, 3, 2, 1, True, False, -4),
    (2, (2, 3), (1, 2), (1, 0), False, True, 5),
    (3, 2, 1, 1, True, True, 7),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dims, kernel, stride, padding, ceil_mode, count_include_pad, divisor", POOLS)
def test_avg_pool_divisor_override_as_pytorch(dims, kernel, stride, padding, ceil_mode, count_include_pad, divisor,
                                              dtype, mode):  # fmt: skip
    """The window sums over divisor_override (the padding and ceil_mode windows otherwise as without it); was
    "avg_pool() got an unexpected keyword argument 'divisor_override'"."""
    x = rng(0).standard_normal((2, 2) + (5, 4, 3)[:dims] if dims == 3 else (2, 2, 5, 6))
    layer = getattr(nn, f"AvgPool{dims}d")(kernel, stride, padding, ceil_mode, count_include_pad, divisor)
    reference = getattr(torch.nn, f"AvgPool{dims}d")(kernel, stride, padding, ceil_mode, count_include_pad, divisor)
    check_against_torch(layer, reference, [x], dtype, mode)
    functional = lambda t: nn.functional.avg_pool(t, kernel, stride, padding, ceil_mode, count_include_pad,  # noqa: E731
                                                  divisor_override=divisor)  # fmt: skip
    check_against_torch(functional, reference, [x], dtype, mode)


def test_avg_pool_divisor_override_of_int64_truncates_as_pytorch():
    x = np.arange(32).reshape(1, 2, 4, 4)
    expected = torch.nn.functional.avg_pool2d(torch.tensor(x), 3, 2, 1, ceil_mode=True, divisor_override=-4)
    got = nn.AvgPool2d(3, 2, 1, ceil_mode=True, divisor_override=-4)(slope.tensor(x))
    assert got.dtype == slope.int64
    np.testing.assert_array_equal(got.numpy(), expected.numpy())


@pytest.mark.parametrize(
    "divisor, error, match",
    [(0, ValueError, "must not be zero"), (2.0, TypeError, "must be an int"), (True, TypeError, "must be an int")],
)
def test_avg_pool_divisor_override_errors_as_pytorch(divisor, error, match):
    """PyTorch: "divisor must be not zero" (RuntimeError) and "must be int, not float/bool" (TypeError)."""
    x = rng(0).standard_normal((1, 1, 4, 4)).astype("float32")
    with pytest.raises((RuntimeError, TypeError)):
        torch.nn.AvgPool2d(2, divisor_override=divisor)(torch.tensor(x))
    with pytest.raises(error, match=rf"slope\.avg_pool: divisor_override {match}"):
        nn.AvgPool2d(2, divisor_override=divisor)(slope.tensor(x))


def test_avg_pool1d_refuses_divisor_override_as_pytorch():
    """PyTorch's AvgPool1d and avg_pool1d have no divisor_override (a TypeError); the errors name the layer."""
    with pytest.raises(TypeError):
        torch.nn.AvgPool1d(2, divisor_override=2)
    with pytest.raises(TypeError, match=r"nn\.AvgPool1d: PyTorch's AvgPool1d takes no divisor_override"):
        nn.AvgPool1d(2, divisor_override=2)
    with pytest.raises(TypeError, match=r"slope\.avg_pool: divisor_override is for 2-d and 3-d pooling only"):
        nn.functional.avg_pool(slope.ones((1, 1, 4)), 2, divisor_override=2)
