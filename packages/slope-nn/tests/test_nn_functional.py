"""slope.nn.functional and slope-nn's plugin: the neural-network functions registered through the `slope` entry
point (they are `slope.NAME` and Tensor methods), ReLU's and max pooling's PyTorch semantics, and the operators
max pooling is differentiated with."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

import slope
import slope.nn.functional as F  # noqa: N812 - the name torch users know

pytestmark = pytest.mark.usefixtures("each_backend")

OPERATORS = ["relu", "max_pool", "max_pool_argmax", "take_along_dim", "scatter_add"]


def test_functional_is_registered_by_the_nn_plugin():
    import slope_nn.functional

    assert F is slope_nn.functional and slope.nn.functional is F
    assert "nn" in slope.plugins.plugin_versions()  # through the entry point, as a third party's plugin
    for name in F.__all__:
        assert slope.plugins.owners[("function", name)] == "nn", name
        assert getattr(slope, name) is getattr(F, name), name
        assert hasattr(slope.Tensor, name), name
    assert set(OPERATORS) <= set(slope.plugins.operators)
    assert {"cross_entropy", "sigmoid"} <= set(slope.plugins.procedures)
    assert {"softmax", "gelu"} <= set(slope.plugins.operators)  # operators since they have fused kernels


def test_functional_lists_only_its_public_functions_each_with_a_docstring():
    """dir(slope.nn.functional), the torch.nn.functional analogue, listed ~17 internal helpers (check_indices, ints,
    reduce_loss, dropped, ...) and the modules np, math, slope: now only `__all__`, the functions the README lists
    (in its Functions section), each callable with a docstring."""
    import inspect
    import pathlib

    readme = pathlib.Path(__file__).parents[1] / "README.md"
    listed = {
        "sigmoid", "leaky_relu", "gelu", "silu", "softplus", "softmax", "log_softmax", "logsumexp", "one_hot",
        "linear", "conv_transpose", "avg_pool", "cross_entropy", "scaled_dot_product_attention", *OPERATORS,
    }  # fmt: skip
    assert set(F.__all__) == listed and len(F.__all__) == len(listed)
    assert dir(F) == sorted(F.__all__)
    for name in F.__all__:
        function = getattr(F, name)
        assert callable(function) and not inspect.ismodule(function), name
        assert (inspect.getdoc(function) or "").strip(), f"{name} has no docstring"
        if readme.exists():
            assert f"`{name}" in readme.read_text(), f"{name} is not in slope-nn's README"
    names = {}
    exec("from slope.nn.functional import *", names)
    assert set(names) - {"__builtins__"} == listed


def test_relu_keeps_nan_and_has_derivative_zero_at_zero():
    x = slope.tensor([float("nan"), -math.inf, -1.0, 0.0, 2.0, math.inf])
    out = slope.relu(x).numpy()
    np.testing.assert_array_equal(out, [np.nan, 0.0, 0.0, 0.0, 2.0, np.inf])
    grad = slope.grad(lambda t: slope.relu(t).sum())(slope.tensor([-1.0, 0.0, 2.0]))
    np.testing.assert_array_equal(grad.numpy(), [0.0, 0.0, 1.0])
    jitted = slope.jit(slope.grad(lambda t: (slope.relu(t) * 3.0).sum()))(slope.tensor([-1.0, 0.0, 2.0]))
    np.testing.assert_array_equal(jitted.numpy(), [0.0, 0.0, 3.0])
    np.testing.assert_array_equal(slope.relu(slope.tensor([-2, 0, 3])).numpy(), [0, 0, 3])


def test_max_pool_routes_the_gradient_to_the_first_maximum():
    x = slope.tensor(np.array([[[[1.0, 3.0, 2.0, 2.0], [3.0, 0.0, 2.0, 2.0]]]], np.float32))
    values, indices = slope.max_pool(x, 2, return_indices=True)
    np.testing.assert_array_equal(values.numpy(), [[[[3.0, 2.0]]]])
    np.testing.assert_array_equal(indices.numpy(), [[[[1, 2]]]])  # ties go to the first (PyTorch's indices)
    for transform in (lambda f: f, slope.jit):
        grad = transform(slope.grad(lambda t: (slope.max_pool(t, 2) * slope.tensor([[[[5.0, 7.0]]]])).sum()))(x)
        np.testing.assert_array_equal(grad.numpy(), [[[[0.0, 5.0, 7.0, 0.0], [0.0, 0.0, 0.0, 0.0]]]])


def test_overlapping_windows_add_their_gradients():
    x = slope.tensor(np.array([[[0.0, 5.0, 1.0, 2.0, 0.5]]], np.float32))
    grad = slope.jit(slope.grad(lambda t: slope.max_pool(t, 3, stride=1).sum()))(x)
    np.testing.assert_array_equal(grad.numpy(), [[[0.0, 2.0, 0.0, 1.0, 0.0]]])  # the 5 wins two windows


def test_max_pool_under_vmap_of_grad_matches_a_loop():
    rng = np.random.default_rng(0)
    images = rng.standard_normal((3, 2, 6, 5)).astype(np.float32)

    def loss(x):
        return (slope.max_pool(x, 3, stride=2, padding=1) ** 2).sum()

    batched = slope.vmap(slope.grad(loss))(slope.tensor(images))
    for n in range(3):
        np.testing.assert_allclose(batched.numpy()[n], slope.grad(loss)(slope.tensor(images[n])).numpy(), rtol=1e-6)


def test_take_along_dim_and_scatter_add_are_each_others_transpose():
    x = slope.tensor(np.arange(12.0, dtype=np.float32).reshape(3, 4))
    index = slope.tensor(np.array([[0, 3, 3], [1, 0, 2], [2, 2, 0]]))
    picked = slope.take_along_dim(x, index, 1)
    np.testing.assert_array_equal(picked.numpy(), np.take_along_axis(x.numpy(), index.numpy(), 1))
    weights = slope.tensor(np.arange(9.0, dtype=np.float32).reshape(3, 3))
    grad = slope.grad(lambda t: (slope.take_along_dim(t, index, 1) * weights).sum())(x)
    expected = np.zeros((3, 4), np.float32)
    np.add.at(expected, (np.arange(3)[:, None], index.numpy()), weights.numpy())
    np.testing.assert_array_equal(grad.numpy(), expected)
    np.testing.assert_array_equal(slope.scatter_add(slope.zeros(3, 4), 1, index, weights).numpy(), expected)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "float64"])
def test_unique_take_along_dim_gradient_counts_negative_indices_from_the_end(dtype):
    """With unique_indices=True, onnxruntime's float32 route (MaxUnpool over rows of the whole tensor) read row r's
    -1 as row r - 1's last element ([[1, 2, 0, 3], [6, 0, 0, 0], ...] for PyTorch's [[1, 2, 0, 0], [4, 0, 0, 3],
    ...]) and, in row 0, raised MaxUnpool's own error; float16 and bfloat16 go the same way (exact: small integers)."""
    torch = pytest.importorskip("torch")
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    index = np.array([[0, 1], [-1, 0], [2, -4]])
    weights = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], np.float32)
    xt = torch.tensor(x, requires_grad=True)
    (torch.take_along_dim(xt, torch.tensor(index), 1) * torch.tensor(weights)).sum().backward()

    def loss(a, i):
        picked = slope.take_along_dim(a, i, 1, unique_indices=True)
        return (picked * slope.tensor(weights).astype(dtype)).sum()

    args = slope.tensor(x).astype(dtype), slope.tensor(index)
    for transform in (lambda f: f, slope.jit):  # under jit the index is traced
        grad = transform(slope.grad(loss))(*args)
        np.testing.assert_array_equal(grad.astype("float32").numpy(), xt.grad.numpy())
    rows = slope.vmap(
        slope.grad(lambda a: slope.take_along_dim(a, slope.tensor([-1, 0]), 0, unique_indices=True).sum())
    )
    expected = np.zeros((3, 4), np.float32)
    expected[:, [0, 3]] = 1.0
    np.testing.assert_array_equal(rows(args[0]).astype("float32").numpy(), expected)


@pytest.mark.parametrize("unique", [False, True])
def test_traced_scatter_add_index_out_of_range_raises(unique, each_backend):
    """A traced index outside [0, size) raises when it runs (scatter_add's call makes a traced negative one `size`),
    with unique_indices too: onnxruntime's MaxUnpool route wrote -1 and `size` into the next row's first element.
    The error names slope.scatter_add on every backend (numpy's named the internal scatter_nd its procedure uses)."""
    scatter = slope.jit(lambda x, i, s: slope.scatter_add(x, 1, i, s, unique_indices=unique))
    zeros, ones = slope.zeros(3, 4), slope.ones(3, 2)
    for bad in (-1, 4, 7):
        with pytest.raises(IndexError, match=r"^slope\.scatter_add: an index is out of range"):
            scatter(zeros, slope.tensor([[bad, 0], [1, 2], [0, 3]]), ones).numpy()
    fine = scatter(zeros, slope.tensor([[3, 0], [1, 2], [0, 3]]), slope.tensor(np.full((3, 2), -0.0, np.float32)))
    assert fine.tolist() == [[0.0] * 4] * 3 and not np.signbit(fine.numpy()).any()  # 0.0 + -0.0 stays 0.0
    got = scatter(slope.tensor(np.full((3, 4), -0.0, np.float32)), slope.tensor([[3, 0], [1, 2], [0, 3]]),
                  slope.tensor([[-0.0, np.nan], [1.0, -np.inf], [2.0, -0.0]]))  # fmt: skip
    np.testing.assert_array_equal(got.numpy(), [[np.nan, -0.0, -0.0, -0.0], [-0.0, 1.0, -np.inf, -0.0],
                                                [2.0, -0.0, -0.0, -0.0]])  # fmt: skip


def test_pooling_and_indexing_errors_name_the_function():
    # windows of padding only are taken, as PyTorch does (tests/test_edges_open.py compares them)
    assert slope.max_pool(slope.ones(1, 1, 2, 2), 2, stride=1, padding=1, dilation=3).tolist() == [[[[-math.inf]]]]
    with pytest.raises(ValueError, match="slope.max_pool.*positive"):
        slope.max_pool(slope.ones(1, 1, 4, 4), 2, stride=0)
    with pytest.raises(IndexError, match="slope.take_along_dim.*-4 to 3"):  # negative ones count from the end
        slope.take_along_dim(slope.ones(2, 4), slope.tensor([[4], [0]]), 1)
    with pytest.raises(slope.ShapeError, match="slope.scatter_add"):
        slope.scatter_add(slope.ones(2, 4), 1, slope.tensor([[1, 2], [0, 3]]), slope.ones(2, 1))  # src < index
    with pytest.raises(slope.DTypeError, match="slope.relu.*bool"):
        slope.relu(slope.tensor([True]))


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_avg_pool_of_int64_is_pytorchs_truncated_mean(dims):
    """int64 windows are averaged as PyTorch does: the int64 sum over the divisor, rounded toward zero (-3 / 2 is -1),
    with padding, ceil_mode and count_include_pad (it was a float32 mean: 1.5 for PyTorch's 1); the integers and
    bools PyTorch has no average pooling for raise, naming the function (they were averaged in float32)."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(dims)
    x = rng.integers(-20, 20, (2, 2, 5, 4, 3)[: dims + 2])
    pool = getattr(torch.nn.functional, f"avg_pool{dims}d")
    for kernel, stride, padding, ceil_mode, count_include_pad in [(2, None, 0, False, True), (3, 2, 1, True, False),
                                                                  (3, 2, 1, True, True), (2, 1, 1, False, False)]:  # fmt: skip
        expected = pool(torch.tensor(x), kernel, stride, padding, ceil_mode, count_include_pad)
        got = slope.avg_pool(slope.tensor(x), (kernel,) * dims, stride, padding, ceil_mode, count_include_pad)
        assert got.dtype == slope.int64
        np.testing.assert_array_equal(got.numpy(), expected.numpy())
    assert slope.jit(lambda v: slope.avg_pool(v, 2))(slope.tensor([[[3, 0, -1, -2]]])).tolist() == [[[1, -1]]]
    for dtype in ("int32", "uint8", "bool"):
        with pytest.raises(slope.DTypeError, match=f"slope.avg_pool: expected a float or int64 tensor.*got {dtype}"):
            slope.avg_pool(slope.zeros((1, 1, 4), dtype=dtype), 2)


def test_logsumexp_over_no_dims_reduces_every_dim():
    # dim=() failed with a reshape error (every other reduction takes it for every dim; PyTorch: -inf when empty)
    assert slope.logsumexp(slope.zeros((0, 3)), ()).item() == float("-inf")
    np.testing.assert_allclose(slope.logsumexp(slope.ones((2, 3)), (), keepdim=True).numpy(), [[1 + np.log(6)]])


def _sgd_step(x, lr, **options):
    optimizer = slope.nn.SGD(lr, **options)
    return optimizer.step([x], [x], optimizer.init([x]))[0][0]


TRACED_HYPERPARAMETERS = {  # (the function's name in the message, the argument, the call, a good value, the error)
    "leaky_relu": ("slope.leaky_relu", "negative_slope", lambda x, s: F.leaky_relu(x, s), 0.2, TypeError),
    "softplus beta": ("slope.softplus", "beta", lambda x, s: F.softplus(x, beta=s), 2.0, TypeError),
    "softplus threshold": ("slope.softplus", "threshold", lambda x, s: F.softplus(x, threshold=s), 1.0, TypeError),
    "sdpa scale": ("slope.scaled_dot_product_attention", "scale",
                   lambda x, s: F.scaled_dot_product_attention(x, x, x, scale=s), 0.5, TypeError),
    "sdpa dropout_p": ("slope.scaled_dot_product_attention", "dropout_p",
                       lambda x, s: F.scaled_dot_product_attention(x, x, x, dropout_p=s), 0.0, TypeError),
    "cross_entropy": ("slope.cross_entropy", "label_smoothing",
                      lambda x, s: slope.nn.cross_entropy(x, slope.tensor([1]), label_smoothing=s), 0.1, TypeError),
    "dropout": ("slope.nn.dropout", "p", lambda x, s: slope.nn.dropout(x, s, True, slope.random.key(0)), 0.5, TypeError),
    "Dropout": ("Dropout", "p", lambda x, s: slope.nn.Dropout(s)(x, slope.random.key(0)), 0.5, TypeError),
    "SGD lr": ("SGD", "lr", lambda x, s: _sgd_step(x, s), 0.1, ValueError),
    "SGD momentum": ("SGD", "momentum", lambda x, s: _sgd_step(x, 0.1, momentum=s), 0.9, ValueError),
    "Adam eps": ("Adam", "eps", lambda x, s: slope.nn.Adam(1e-3, eps=s).init([x])[0], 1e-8, ValueError),
    "AdamW betas": ("AdamW", r"betas\[1\]", lambda x, s: slope.nn.AdamW(1e-3, betas=(0.9, s)).init([x])[0], 0.99,
                    ValueError),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(TRACED_HYPERPARAMETERS))
def test_a_traced_hyperparameter_under_jit_says_to_make_it_static(case):
    # a Python float passed to a jitted function is traced: the error named "ProgramTracer" and no remedy
    name, what, fn, value, error = TRACED_HYPERPARAMETERS[case]
    x = slope.tensor(np.array([[-1.0, 0.5, 2.0]], np.float32))
    with pytest.raises(
        error, match=rf"^{name}: {what} must be a Python number, but it is a traced tensor .*static_argnums"
    ):
        slope.jit(fn)(x, value)
    np.testing.assert_array_equal(slope.jit(fn, static_argnums=1)(x, value).numpy(), fn(x, value).numpy())


def test_layer_norm_takes_an_int_eps_by_name_but_not_in_normalized_shapes_position():
    # layer_norm(x, 4) normalised with eps=4 silently (PyTorch's F.layer_norm(x, normalized_shape)); eps=1 by name, as
    # PyTorch takes it, was then refused too
    x = slope.tensor([[1.0, 2.0, 4.0, 8.0]])
    with pytest.raises(TypeError, match="normalized_shape"):
        slope.layer_norm(x, 4)
    torch = pytest.importorskip("torch")
    t = torch.tensor(x.numpy())
    for ours, eps in [(slope.layer_norm(x, eps=1), 1), (slope.layer_norm(x, 0.5), 0.5)]:
        expected = torch.nn.functional.layer_norm(t, (4,), eps=eps).numpy()
        np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-6)


@pytest.mark.parametrize("error", [ValueError, IndexError])
def test_fail_if_raises_its_own_error_where_the_values_are_traced(error):
    """slope-nn's run-time check of traced values (`operators.fail_if`, what binary_cross_entropy's range check and a
    traced narrow start use): its bools pass through when all are false, and a true one raises the error and message
    it was given in every mode, on every backend; its procedure (for backends without a translation) raises an
    IndexError naming take_along_dim."""
    from slope_nn.operators import fail_if

    message = "slope.demo: all elements of 'x' should be in [0, 1] (as PyTorch)"
    modes = {
        "eager": lambda t: fail_if(t, message, error),
        "jit": slope.jit(lambda t: fail_if(t, message, error)),
        "vmap": slope.vmap(lambda t: fail_if(t, message, error)),
        "grad": lambda t: slope.grad(lambda x: slope.where(fail_if(t, message, error), math.nan, x * x).sum())(
            slope.tensor([1.0, 2.0])
        ),
    }
    for mode, fn in modes.items():
        passed = fn(slope.tensor([False, False])).numpy()
        expected = [2.0, 4.0] if mode == "grad" else [False, False]
        np.testing.assert_array_equal(passed, expected, err_msg=mode)
        with pytest.raises(error, match=f"^{re.escape(message)}$"):
            fn(slope.tensor([False, True])).numpy()
    np.testing.assert_array_equal(fail_if.procedure(slope.tensor([False]), message=message, error=error), [False])
    with pytest.raises(IndexError, match="take_along_dim"):
        fail_if.procedure(slope.tensor([True, False]), message=message, error=error).numpy()


@pytest.mark.parametrize("num_classes", [-1, 4])
def test_one_hot_of_concrete_labels_inside_grad_matches_pytorch(num_classes):
    """one_hot of integer labels (not differentiated) inside a differentiated function of float inputs, with the
    number of classes inferred (an error before: `x.max().item()` on a value traced inside grad) or given; the one
    value the labels cannot give is an inferred count from labels computed inside grad, a clear error."""
    torch = pytest.importorskip("torch")
    labels, w = np.array([0, 3, 1, 3]), np.random.default_rng(1).standard_normal((4, 4)).astype(np.float32)

    def loss(lib, weights, classes):
        return ((lib.nn.functional.one_hot(classes(labels), num_classes) * weights) ** 2).sum()

    tw = torch.tensor(w, requires_grad=True)
    (expected,) = torch.autograd.grad(loss(torch, tw, torch.tensor), tw)
    for fn in (
        slope.grad(lambda v: loss(slope, v, slope.tensor)),
        slope.jit(slope.grad(lambda v: loss(slope, v, slope.tensor))),
    ):
        np.testing.assert_allclose(fn(slope.tensor(w)).numpy(), expected.numpy(), rtol=1e-6)
    computed = slope.grad(lambda v: loss(slope, v, lambda a: slope.tensor(a) + 0))
    if num_classes > 0:
        np.testing.assert_allclose(computed(slope.tensor(w)).numpy(), expected.numpy(), rtol=1e-6)
    else:
        with pytest.raises(ValueError, match=r"^slope.one_hot: cannot infer the number of classes from traced .* pass"):
            computed(slope.tensor(w))
