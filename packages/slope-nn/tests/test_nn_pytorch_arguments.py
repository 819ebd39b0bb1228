"""PyTorch arguments slope-nn once refused with a bare "unexpected keyword argument": each against torch (forward
values and gradients, eager and under jit, float32 and float64, on every backend) and PyTorch's errors."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
from nn_helpers import assert_close, rng

import slope
import slope.nn as nn
from slope.operators import ints
from slope_nn.operators import ceil_mode_extra

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


# ----------------------------------------------------------------------------------------------- layers with weights


def with_weights(layer: nn.Module, method=None):
    """A function of (x, weight, bias) calling a copy of the layer holding that weight and bias."""

    def call(x, weight, bias, **kwargs):
        copy = slope.tree.map(lambda leaf: leaf, layer)
        copy.weight, copy.bias = weight, bias
        return copy(x, **kwargs) if method is None else method(copy, x, weight, bias)

    return call


def weights_of(reference) -> list:
    return [reference.weight.detach().numpy(), reference.bias.detach().numpy()]


def torch_with_weights(reference):
    """A function of (x, weight, bias) calling the torch layer with that weight and bias."""
    return lambda x, weight, bias, **kwargs: torch.func.functional_call(reference, {"weight": weight, "bias": bias},
                                                                        (x,), kwargs)  # fmt: skip


# ----------------------------------------------------------------------------------------------- padding_mode

CONVS = [  # (spatial dims, kernel, stride, padding, dilation, groups)
    (1, 3, 1, 2, 1, 1),
    (2, (3, 2), (2, 1), (1, 1), 1, 2),
    (2, (4, 3), 1, "same", (1, 2), 1),
    (2, 3, 1, "valid", 1, 1),
    (3, 2, 1, 1, 1, 1),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("padding_mode", ["reflect", "replicate", "circular"])
@pytest.mark.parametrize("dims, kernel, stride, padding, dilation, groups", CONVS)
def test_conv_padding_mode_as_pytorch(dims, kernel, stride, padding, dilation, groups, padding_mode, dtype, mode):
    """PyTorch pads with F.pad's mode, then convolves without padding ('same' splits an odd total with the extra one
    after); was "__init__() got an unexpected keyword argument 'padding_mode'"."""
    torch.manual_seed(0)
    options = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, padding_mode=padding_mode)
    reference = getattr(torch.nn, f"Conv{dims}d")(2, 4, kernel, **options).to(getattr(torch, dtype))
    layer = getattr(nn, f"Conv{dims}d")(2, 4, kernel, **options, dtype=getattr(slope, dtype))
    assert layer.padding_mode == padding_mode and f"padding_mode={padding_mode}" in repr(layer)
    x = rng(0).standard_normal((2, 2) + (4, 5, 3)[:dims])
    check_against_torch(with_weights(layer), torch_with_weights(reference), [x, *weights_of(reference)], dtype, mode)
    if dims == 1:  # an unbatched input
        check_against_torch(with_weights(layer), torch_with_weights(reference), [x[0], *weights_of(reference)], dtype,
                            mode)  # fmt: skip


@pytest.mark.parametrize(
    "padding_mode, padding, size, match",
    [("reflect", 2, 2, r"reflect padding \(2, 2\) of dimension 2 must be less than its size"),
     ("circular", 4, 3, r"circular padding \(4, 4\) of dimension 2 must be at most its size")],
)  # fmt: skip
def test_conv_padding_mode_limits_as_pytorch(padding_mode, padding, size, match):
    """PyTorch: "Padding size should be less than the corresponding input dimension" and "Padding value causes
    wrapping around more than once"; replicate takes any padding."""
    x = rng(0).standard_normal((1, 1, size)).astype("float32")
    with pytest.raises(RuntimeError):
        torch.nn.Conv1d(1, 1, 5, padding=padding, padding_mode=padding_mode)(torch.tensor(x))
    with pytest.raises(slope.ShapeError, match=rf"slope\.nn\.Conv1d: {match}"):
        nn.Conv1d(1, 1, 5, padding=padding, padding_mode=padding_mode)(slope.tensor(x))
    assert nn.Conv1d(1, 1, 5, padding=padding, padding_mode="replicate")(slope.tensor(x)).shape == (
        1,
        1,
        size + 2 * padding - 4,
    )


def test_padding_mode_errors_as_pytorch():
    """An unknown mode, and any but 'zeros' for a transposed convolution, are PyTorch's ValueErrors naming the layer."""
    for mode in ["foo", None]:
        with pytest.raises(ValueError):
            torch.nn.Conv2d(1, 1, 3, padding_mode=mode)
        with pytest.raises(ValueError, match=r"nn\.Conv2d: padding_mode must be one of .*got padding_mode="):
            nn.Conv2d(1, 1, 3, padding_mode=mode)
    with pytest.raises(ValueError, match='Only "zeros" padding mode is supported for ConvTranspose2d'):
        torch.nn.ConvTranspose2d(1, 1, 3, padding_mode="reflect")
    with pytest.raises(ValueError, match=r'nn\.ConvTranspose2d: only "zeros" padding mode is supported for ConvTr'):
        nn.ConvTranspose2d(1, 1, 3, padding_mode="reflect")
    assert nn.ConvTranspose2d(1, 1, 3, padding_mode="zeros").padding_mode == "zeros"
    assert nn.Conv2d(1, 1, 3, padding=1, padding_mode="zeros").padding_mode == "zeros"


# ----------------------------------------------------------------------------------------------- output_size

TRANSPOSED = [  # (spatial dims, kernel, stride, padding, dilation, input spatial size, output_size)
    (1, 3, 2, 1, 1, (4,), [8]),
    (1, 3, 3, 0, 2, (3,), (1, 4, 13)),  # the whole shape; stride 3 with dilation 2
    (2, (3, 2), (2, 3), (1, 0), 1, (3, 2), [6, 6]),
    (2, 2, 2, 0, 1, (2, 3), [1, 4, 4, 6]),  # output_padding (0, 0): the smallest size
    (3, 2, 2, 0, 1, (2, 1, 2), [5, 2, 4]),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dims, kernel, stride, padding, dilation, spatial, output_size", TRANSPOSED)
def test_conv_transpose_output_size_as_pytorch(dims, kernel, stride, padding, dilation, spatial, output_size, dtype,
                                               mode):  # fmt: skip
    """forward(x, output_size=...) sets the output padding to the requested size's excess over the smallest (the
    layer's own output_padding ignored, as PyTorch); was "forward() got an unexpected keyword argument"."""
    torch.manual_seed(0)
    options = dict(stride=stride, padding=padding, dilation=dilation, output_padding=0)
    reference = getattr(torch.nn, f"ConvTranspose{dims}d")(2, 3, kernel, **options).to(getattr(torch, dtype))
    layer = getattr(nn, f"ConvTranspose{dims}d")(2, 3, kernel, **options, dtype=getattr(slope, dtype))
    batch = 1 if len(output_size) == dims + 2 else 2
    x = rng(0).standard_normal((batch, 2) + spatial)
    arrays = [x, *weights_of(reference)]
    slope_fn, torch_fn = with_weights(layer), torch_with_weights(reference)
    check_against_torch(lambda *a: slope_fn(*a, output_size=output_size),
                        lambda *a: torch_fn(*a, output_size=output_size), arrays, dtype, mode)  # fmt: skip
    if len(output_size) == dims:  # an unbatched input
        arrays[0] = x[0]
        check_against_torch(lambda *a: slope_fn(*a, output_size=output_size),
                            lambda *a: torch_fn(*a, output_size=output_size), arrays, dtype, mode)  # fmt: skip


@pytest.mark.parametrize(
    "output_size, match",
    [([9], r"requested an output size of \[9\], but valid sizes range from \[7\] to \[8\] \(for an input of \(4,\)\)"),
     ([6], r"requested an output size of \[6\], but valid sizes range from \[7\] to \[8\]"),
     ([1, 8], r"for 3D input, output_size must have 1 or 3 elements \(got 2\)")],
)  # fmt: skip
def test_conv_transpose_output_size_errors_as_pytorch(output_size, match):
    x = rng(0).standard_normal((1, 2, 4)).astype("float32")
    with pytest.raises(ValueError):
        torch.nn.ConvTranspose1d(2, 3, 3, stride=2, padding=1)(torch.tensor(x), output_size=output_size)
    with pytest.raises(ValueError, match=rf"nn\.ConvTranspose1d: {match}"):
        nn.ConvTranspose1d(2, 3, 3, stride=2, padding=1)(slope.tensor(x), output_size=output_size)


def test_conv_transpose_traced_output_size_names_it():
    """jit traces the sizes given to a jitted call: the error names output_size and says to make it static (it was
    an index error of the trace naming neither); static sizes work."""
    layer = nn.ConvTranspose1d(2, 3, 3, stride=2, padding=1)
    x = slope.tensor(rng(0).standard_normal((1, 2, 4)).astype("float32"))
    with pytest.raises(TypeError, match=r"nn\.ConvTranspose1d: output_size must be a Python number.*static_argnames"):
        slope.jit(lambda m, a, output_size: m(a, output_size=output_size))(layer, x, output_size=[8])
    fixed = slope.jit(lambda m, a, output_size: m(a, output_size=output_size), static_argnames="output_size")
    assert fixed(layer, x, output_size=(8,)).shape == (1, 3, 8)
    # a jitted layer names its forward's arguments, as a jitted function does (it was "static_argnums 1 is out of
    # range for 1 arguments": a module's __call__ takes *args)
    for static in (dict(static_argnums=1), dict(static_argnames="output_size")):
        jitted = slope.jit(layer, **static)
        assert jitted(x, output_size=(8,)).shape == (1, 3, 8)
        assert jitted(x, (7,)).shape == (1, 3, 7)
    assert str(inspect.signature(layer)) == str(inspect.signature(layer.forward))
    assert "in_channels" in inspect.signature(nn.ConvTranspose1d).parameters  # (the class: its constructor's)

    class Scaled(nn.Module):  # (its own __call__, not forward: that is what a call takes)
        def __call__(self, a, n=1):
            return a * n

    assert slope.jit(Scaled(), static_argnums=1)(x, n=3).shape == x.shape


# ----------------------------------------------------------------------------------------------- clip_grad_norm


def torch_total_norm(leaves: list, norm_type):
    """PyTorch's clip_grad_norm_ total: the norm of the per-leaf norms."""
    norms = [torch.linalg.vector_norm(leaf, float(norm_type)) for leaf in leaves]
    return torch.linalg.vector_norm(torch.stack(norms), float(norm_type))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("norm_type", [1, 3.5, -1.5, "inf", float("-inf"), 0, 2.0])
@pytest.mark.parametrize("max_norm", [0.5, 100.0])
def test_clip_grad_norm_norm_type_as_pytorch(norm_type, max_norm, dtype, mode):
    """Clipped gradients and the total norm of PyTorch's norm_type, and the norm's gradient; was "clip_grad_norm() got
    an unexpected keyword argument 'norm_type'" (0: PyTorch's count of leaves with a nonzero, its norm of norms)."""
    generator = rng(0)
    arrays = [generator.standard_normal((3, 2)).astype(dtype), generator.standard_normal(4).astype(dtype),
              np.zeros(2, dtype)]  # fmt: skip
    parameters = [torch.nn.Parameter(torch.zeros(a.shape, dtype=getattr(torch, dtype))) for a in arrays]
    for parameter, a in zip(parameters, arrays):
        parameter.grad = torch.tensor(a)
    expected = torch.nn.utils.clip_grad_norm_(parameters, max_norm, norm_type)
    clip = lambda grads: nn.optim.clip_grad_norm(grads, max_norm, norm_type=norm_type)  # noqa: E731
    clip = slope.jit(clip) if mode == "jit" else clip
    clipped, norm = clip({"a": slope.tensor(arrays[0]), "b": [slope.tensor(a) for a in arrays[1:]]})
    assert norm.dtype.name == dtype
    assert_close(norm, expected.numpy(), dtype)
    for got, parameter in zip([clipped["a"], *clipped["b"]], parameters):
        assert got.dtype.name == dtype
        assert_close(got, parameter.grad.numpy(), dtype)
    if float(norm_type) < 0:  # (a zero element: Slope's gradient is NaN where PyTorch's is 0, a known difference)
        arrays = arrays[:2]
    leaves = [torch.tensor(a, requires_grad=True) for a in arrays]
    torch_total_norm(leaves, norm_type).backward()
    gradient = slope.grad(lambda grads: nn.optim.global_norm(grads, norm_type))
    gradient = slope.jit(gradient) if mode == "jit" else gradient
    for got, leaf in zip(gradient([slope.tensor(a) for a in arrays]), leaves):
        assert_close(got, np.zeros(leaf.shape) if leaf.grad is None else leaf.grad.numpy(), dtype)  # (0: None)


def test_clip_grad_norm_error_if_nonfinite_as_pytorch():
    grads = [slope.tensor([1.0, float("nan")]), slope.tensor([2.0])]
    parameters = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(1))]
    for parameter, grad in zip(parameters, grads):
        parameter.grad = torch.tensor(grad.numpy())
    with pytest.raises(RuntimeError, match="non-finite"):
        torch.nn.utils.clip_grad_norm_(parameters, 1.0, error_if_nonfinite=True)
    with pytest.raises(RuntimeError, match=r"clip_grad_norm: the total norm of order inf for gradients is non-finite"):
        nn.optim.clip_grad_norm(grads, 1.0, "inf", error_if_nonfinite=True)
    with pytest.raises(RuntimeError, match="error_if_nonfinite=True checks the norm's value, which a traced norm"):
        slope.jit(lambda g: nn.optim.clip_grad_norm(g, 1.0, error_if_nonfinite=True))(grads)
    _, norm = nn.optim.clip_grad_norm(grads, 1.0)  # (by default a NaN norm is returned, as PyTorch)
    assert math.isnan(float(norm))
    _, norm = nn.optim.clip_grad_norm([slope.tensor([3.0, -4.0])], 1.0, error_if_nonfinite=True)
    assert float(norm) == pytest.approx(5.0)


@pytest.mark.parametrize("norm_type, error", [("fro", ValueError), (None, TypeError)])
def test_clip_grad_norm_refuses_norm_types_as_pytorch(norm_type, error):
    parameter = torch.nn.Parameter(torch.zeros(2))
    parameter.grad = torch.ones(2)
    with pytest.raises(error):
        torch.nn.utils.clip_grad_norm_([parameter], 1.0, norm_type)
    with pytest.raises(error, match=r"slope\.nn\.optim\.clip_grad_norm: norm_type must be"):
        nn.optim.clip_grad_norm([slope.ones(2)], 1.0, norm_type)


def test_embedding_max_norm_is_refused_naming_the_layer():
    """PyTorch renormalizes rows of the weight in place in forward; Slope refuses it, naming the layer and argument
    (it was "__init__() got an unexpected keyword argument 'max_norm'")."""
    torch.nn.Embedding(10, 3, max_norm=1.0)  # (PyTorch takes it)
    with pytest.raises(TypeError, match=r"nn\.Embedding: max_norm=1\.0 is not supported: PyTorch renormalizes"):
        nn.Embedding(10, 3, max_norm=1.0)
    assert nn.Embedding(10, 3, max_norm=None).weight.shape == (10, 3)


# ----------------------------------------------------------------------------------------------- max_pool indices

CEIL_POOLS = [  # (input shape, kernel, stride, padding, dilation): ceil_mode adds a last, partial window in each
    ((2, 2, 5, 6), 3, 2, 1, 1),
    ((1, 1, 2, 2), 3, 2, 1, 1),
    ((2, 1, 4, 6), (2, 3), (3, 2), (0, 1), 1),
    ((1, 1, 3, 4), 3, 2, 1, 2),
    ((1, 2, 8), 3, 2, 1, 1),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape, kernel, stride, padding, dilation", CEIL_POOLS)
def test_max_pool_indices_with_ceil_mode_as_pytorch(shape, kernel, stride, padding, dilation, dtype, mode):
    """The indices of each window's maximum in the unpadded input, values and gradients; was "return_indices with a
    ceil_mode that adds windows is not supported"."""
    dims = len(shape) - 2
    assert any(ceil_mode_extra(shape[2:], *(ints("t", a, "a", 0, dims) for a in (kernel, stride, padding, dilation))))
    x = rng(0).standard_normal(shape)
    x[..., 0] = -np.inf  # (ties of -inf with the right padding: PyTorch's first in-bounds position)
    layer = getattr(nn, f"MaxPool{dims}d")(kernel, stride, padding, dilation, return_indices=True, ceil_mode=True)
    reference = getattr(torch.nn, f"MaxPool{dims}d")(kernel, stride, padding, dilation, return_indices=True,
                                                     ceil_mode=True)  # fmt: skip
    forward = (lambda t: layer(t)) if mode == "eager" else slope.jit(lambda t: layer(t))
    for values in [x, np.full(shape, -np.inf), np.round(x)]:  # (ties everywhere, and between equal values)
        expected, expected_index = reference(torch.tensor(values.astype(dtype)))
        got, index = forward(slope.tensor(values.astype(dtype)))
        assert index.dtype == slope.int64
        np.testing.assert_array_equal(index.numpy(), expected_index.numpy())
        np.testing.assert_array_equal(got.numpy(), expected.numpy())
    x = rng(1).standard_normal(shape)  # (gradients of finite values)
    check_against_torch(lambda t: layer(t)[0], lambda t: reference(t)[0], [x], dtype, mode)
