"""Shape edges of indexing and convolutions against PyTorch 2.13, on every backend under test.

getitem: a 0-d integer index (tensor or NumPy array) is an int, as PyTorch's select (always checked, and it moves no
other index's dimensions); an empty result checks only the indices into empty dimensions (and none when an index is
empty); Python bools, None, Ellipsis, slices and index arrays mix as PyTorch mixes them. `.at[index].set(v)` drops
leading 1s of v beyond x[index]'s rank, as `x[index] = v` does. The gradients of `conv` with an empty output are
zeros, and `conv_transpose` gives an empty output for an empty batch, as PyTorch. Values are compared exactly
(indexing moves values; the convolutions here are empty or zeros). PyTorch is imported with `importorskip`.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

import slope


def _torch_index(torch, index: tuple) -> tuple:
    """The same index for PyTorch: arrays and lists as tensors (a 0-d one stays 0-d)."""
    convert = {np.ndarray: lambda i: torch.from_numpy(i.copy()), list: lambda i: torch.tensor(i, dtype=torch.int64)}
    return tuple(convert.get(type(i), lambda i: i)(i) for i in index)


def _outcome(fn):
    """fn()'s value as a NumPy array, or the exception type it raised."""
    try:
        out = fn()
    except Exception as error:  # noqa: BLE001 - the type is compared with PyTorch's
        return type(error)
    return out.numpy() if isinstance(out, slope.Tensor) else out.detach().numpy()


def _agree(got, expected, context) -> None:
    if isinstance(expected, type):  # PyTorch raised (an IndexError or a RuntimeError): Slope an IndexError
        assert isinstance(got, type) and issubclass(got, IndexError), f"{context}: {got} where PyTorch raised"
        return
    assert not isinstance(got, type), f"{context}: {got.__name__} where PyTorch gives shape {expected.shape}"
    assert got.shape == expected.shape, f"{context}: shape {got.shape}, PyTorch {expected.shape}"
    np.testing.assert_array_equal(got, expected, err_msg=str(context))


# (shape, index): each gave a wrong shape, a wrong value or a wrong error before
GETITEM_CASES = [
    ((0, 1), (slice(None), True, None, np.array(0))),  # PyTorch (0, 1, 1); was (1, 0, 1)
    ((2, 1), (slice(None), True, None, np.array(0))),
    ((2, 3, 4), (np.array(1), slice(None), [0, 1])),  # select, then one index: in place (3, 2)
    ((2, 3, 4), ([0, 1], slice(None), np.array(-1))),
    ((2, 3, 4), (slice(None), np.array(2), None, [1, 2, 3])),
    ((3, 3, 3), (np.array(-2), slice(-4, -4, 2), None, np.array([[-1], [2]]))),  # PyTorch (0, 1, 2, 1)
    ((2, 2, 2), (np.array(0), slice(-4, -4, 1), np.array([-1, 1, 1]))),
    ((1, 3, 3), (0, np.array(-2), slice(None), np.array(True))),
    ((1, 0), (np.array([-2, 2, 2]),)),  # an empty result: its indices are not checked, as in PyTorch
    ((1, 1, 0), (np.array([-2]), True)),
    ((1, 1), (slice(5, 1), Ellipsis, np.array([2]))),
    ((0, 1, 3), (None, np.array(1), False)),  # a 0-d index out of range raises, as a select does
    ((3, 0, 1), (np.array(5), [])),
    ((0, 1, 0), (np.array([-2, -1]), slice(None), None)),  # an index into an empty dimension always raises
    ((0, 3, 2), (True, [1], [])),  # ... unless another index is empty
    ((3, 2), (slice(0, 0), False, Ellipsis, np.array([[0]]))),  # a 0-length Ellipsis does not separate
    ((2, 3, 4), ([0, 1], slice(None), [1, 2])),  # separated index arrays: their dimensions first
    ((2, 3, 4), (slice(None), [0, 1], [1, 2])),
]


@pytest.mark.parametrize("case", range(len(GETITEM_CASES)))
def test_getitem_matches_pytorch(backend, torch, case):
    """x[index] with 0-d indices, bool scalars, None, Ellipsis, slices and index arrays: shape, values, errors."""
    shape, index = GETITEM_CASES[case]
    data = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)
    expected = _outcome(lambda: torch.from_numpy(data)[_torch_index(torch, index)])
    _agree(_outcome(lambda: slope.tensor(data)[index]), expected, (backend, shape, index))
    if isinstance(expected, type):
        return
    # the same under jit (the index a constant of the program), and the gradient (PyTorch's autograd)
    _agree(_outcome(lambda: slope.jit(lambda x: x[index])(slope.tensor(data))), expected, (backend, "jit", index))
    leaf = torch.from_numpy(data.copy()).requires_grad_()
    weights = np.asarray(np.linspace(-1.0, 2.0, expected.size, dtype=np.float32).reshape(expected.shape))
    (leaf[_torch_index(torch, index)] * torch.from_numpy(weights)).sum().backward()
    grad = slope.grad(lambda x: (x[index] * slope.tensor(weights)).sum())(slope.tensor(data))
    _agree(grad.numpy(), leaf.grad.numpy(), (backend, "grad", index))


def _random_item(rng: random.Random):
    kind = rng.randrange(11)
    if kind == 0:
        return rng.randint(-3, 3)
    if kind in (1, 2, 3):
        return [None, Ellipsis, rng.choice([True, False])][kind - 1]
    if kind in (4, 5):
        bounds = [None, -4, -1, 0, 1, 2, 5]
        return slice(rng.choice(bounds), rng.choice(bounds), rng.choice([None, 1, 2]))
    if kind == 6:
        return np.array(rng.randint(-2, 2))
    if kind == 7:
        return np.array([rng.randint(-2, 2) for _ in range(rng.randint(0, 3))], dtype=np.int64)
    if kind == 8:
        return np.array([[rng.randint(-2, 2)] for _ in range(rng.randint(1, 2))], dtype=np.int64)
    if kind == 9:
        return np.array(rng.choice([True, False]))
    return slice(None)


def test_getitem_random_expressions_match_pytorch(backend, torch):
    """A seeded enumeration of index expressions of 1 to 4 items on shapes of sizes 0 to 3 (PyTorch's outcome)."""
    rng = random.Random(9)
    for _ in range(300 if backend in ("numpy", "onnxruntime") else 30):
        shape = tuple(rng.choice([0, 1, 2, 3]) for _ in range(rng.randint(0, 3)))
        index = tuple(_random_item(rng) for _ in range(rng.randint(1, 4)))
        if sum(i is Ellipsis for i in index) > 1:
            continue
        data = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)
        expected = _outcome(lambda d=data, i=index: torch.from_numpy(d)[_torch_index(torch, i)])
        _agree(_outcome(lambda d=data, i=index: slope.tensor(d)[i]), expected, (backend, shape, index))


def test_traced_random_expressions_match_pytorch(backend, torch):
    """The same enumeration under jit with every integer index array a traced argument (0-d ones too): where the
    index arrays' dimensions go must not depend on whether their values are known."""
    rng = random.Random(19)
    done = 0
    while done < (100 if backend in ("numpy", "onnxruntime") else 10):
        shape = tuple(rng.choice([1, 2, 3]) for _ in range(rng.randint(1, 3)))
        index = tuple(_random_item(rng) for _ in range(rng.randint(1, 4)))
        arrays = [k for k, i in enumerate(index) if isinstance(i, np.ndarray) and i.dtype != bool]
        data = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)
        expected = _outcome(lambda d=data, i=index: torch.from_numpy(d)[_torch_index(torch, i)])
        if not arrays or sum(i is Ellipsis for i in index) > 1 or isinstance(expected, type):
            continue
        done += 1

        def pick(x, *traced, index=index, arrays=arrays):
            items = list(index)
            for k, value in zip(arrays, traced):
                items[k] = value
            return x[tuple(items)]

        got = slope.jit(pick)(slope.tensor(data), *[slope.tensor(index[k]) for k in arrays]).numpy()
        _agree(got, expected, (backend, "traced", shape, index))


def test_negative_steps_match_numpy(backend):
    """Negative steps and out-of-range slice bounds (PyTorch has no negative steps: NumPy's outcome)."""
    data = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    for index in [(slice(None, None, -1),), (slice(5, -5, -2), None, slice(-1, 0, -3)), (Ellipsis, slice(0, 4, -1)),
                  (slice(None), slice(-1, -5, -1), [3, 0]), (slice(1, None, -1), [2, 0], slice(None, None, -2))]:  # fmt: skip
        expected = data[index]
        got = slope.tensor(data)[index].numpy()
        assert got.shape == expected.shape and np.array_equal(got, expected), (backend, index)


TRACED_CASES = [
    (lambda x, i: x[i, :, [0, 1]]),
    (lambda x, i: x[[0, 1], i, :]),
    (lambda x, i: x[:, [0, 1], i]),
    (lambda x, i: x[[1], :, i]),
    (lambda x, i: x[:, i, None, [1, 2, 3]]),
    (lambda x, i: x[:, True, i]),
]


@pytest.mark.parametrize("case", range(len(TRACED_CASES)))
def test_traced_0d_index_moves_no_dimension(backend, torch, case):
    """A 0-d index traced under jit or vmap places the other index arrays' dimensions as PyTorch's select does;
    the gradient with respect to x agrees too."""
    fn = TRACED_CASES[case]
    data = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    expected = fn(torch.from_numpy(data), torch.tensor(1)).numpy()
    x, i = slope.tensor(data), slope.tensor(1)
    _agree(slope.jit(fn)(x, i).numpy(), expected, (backend, "jit", case))
    batched = slope.vmap(fn, in_axes=(None, 0))(x, slope.tensor([0, 1])).numpy()
    _agree(batched, np.stack([fn(torch.from_numpy(data), torch.tensor(k)).numpy() for k in (0, 1)]), (backend, case))
    weights = np.linspace(-1.0, 1.0, expected.size, dtype=np.float32).reshape(expected.shape)
    leaf = torch.from_numpy(data).requires_grad_()
    (fn(leaf, torch.tensor(1)) * torch.from_numpy(weights)).sum().backward()
    grad = slope.jit(slope.grad(lambda x, i: (fn(x, i) * slope.tensor(weights)).sum()))(x, i)
    _agree(grad.numpy(), leaf.grad.numpy(), (backend, "grad", case))


# (shape, index, value shape, mode); PyTorch's reference is x[index] = v or index_put_(accumulate=True)
UPDATE_CASES = [
    ((2, 3), (slice(None), np.array([[1]])), (1, 2, 1, 1), "set"),  # leading 1s of the value go, as in x[i] = v
    ((2,), ([1, -2],), (1, 2), "set"),
    ((), (None, True), (1, 1, 1), "set"),
    ((2, 3), (np.array(1),), (1, 3), "set"),
    ((2, 3, 4), (np.array(1), slice(None), [0, 3]), (3, 2), "set"),  # the 0-d index is a select
    ((2, 3, 4), (np.array(1), slice(None), [0, 3]), (3, 2), "add"),
    ((4,), ([0, -4, 3, -1, 0],), (5,), "add"),  # duplicates (counting negatives) accumulate
    ((3, 2), (np.array([True, False, True]),), (2, 2), "add"),
    ((3, 2), ([],), (0, 2), "add"),  # nothing written
    ((1, 0), (np.array([-2, 2, 2]),), (3, 0), "set"),  # an empty x[index]: its indices are not checked
]


@pytest.mark.parametrize("case", range(len(UPDATE_CASES)))
def test_index_updates_match_pytorch(backend, torch, case):
    """`.at[index].set/add(v)`: values, and the gradients with respect to x and v (PyTorch's autograd)."""
    shape, index, value_shape, mode = UPDATE_CASES[case]
    data = np.arange(1, 1 + int(np.prod(shape)), dtype=np.float32).reshape(shape)
    value = np.arange(100, 100 + 100 * int(np.prod(value_shape)), 100, dtype=np.float32).reshape(value_shape)
    weights = np.linspace(-2.0, 3.0, data.size, dtype=np.float32).reshape(shape)
    leaf, leaf_v = torch.from_numpy(data.copy()).requires_grad_(), torch.from_numpy(value.copy()).requires_grad_()
    tindex = _torch_index(torch, index)
    if mode == "set":
        expected = leaf.clone()
        expected[tindex] = leaf_v
    else:
        positions = torch.arange(data.size).reshape(shape)[tindex]
        flat = leaf.reshape(-1).index_add(0, positions.reshape(-1), leaf_v.broadcast_to(positions.shape).reshape(-1))
        expected = flat.reshape(shape)
    (expected * torch.from_numpy(weights)).sum().backward()

    def loss(x, v):
        return (getattr(x.at[index], mode)(v) * slope.tensor(weights)).sum()

    x, v = slope.tensor(data), slope.tensor(value)
    _agree(getattr(x.at[index], mode)(v).numpy(), expected.detach().numpy(), (backend, case))
    gx, gv = slope.grad(loss, argnums=(0, 1))(x, v)
    _agree(gx.numpy(), leaf.grad.numpy(), (backend, "grad x", case))
    _agree(gv.numpy(), np.zeros(value_shape, np.float32) if leaf_v.grad is None else leaf_v.grad.numpy(), case)


@pytest.mark.parametrize("shape", [(0, 2), (0,)])
@pytest.mark.parametrize("mode", ["get", "set", "add", "add, then more empty work"])
def test_traced_indices_into_an_empty_result_are_still_checked(backend, shape, mode):
    """Under jit an index into an empty dimension raises even where the result is empty (as in PyTorch): onnxruntime's
    translation gives empty results as constants, and those once dropped the index checks that fed them."""
    functions = {
        "get": lambda x, i: x[i],
        "set": lambda x, i: x.at[i].set(1.0),
        "add": lambda x, i: x.at[i].add(1.0),
        "add, then more empty work": lambda x, i: (x.at[i].add(1.0) * 2).reshape(-1).sum(-1, keepdim=True),
    }
    expected_shape = {"get": (0, *shape[1:]), "add, then more empty work": (1,)}.get(mode, shape)
    step = slope.jit(functions[mode])
    with pytest.raises(IndexError, match=r"slope\.\w+.*out of (range|bounds)"):
        step(slope.zeros(shape), slope.tensor([shape[0] + 2]))
    nothing = step(slope.zeros(shape), slope.tensor(np.zeros(0, np.int64)))  # no index: nothing to check
    assert nothing.shape == expected_shape


def test_index_add_keeps_the_value_shape_strict(backend):
    """`.at[i].add(v)` refuses a v with more dimensions than x[i], as PyTorch's index_put_ and `+=` do."""
    with pytest.raises(slope.ShapeError, match=r"slope\.index_update: a value of shape \(1, 1, 3\) does not fit"):
        slope.zeros((2, 3)).at[[0, 1]].add(slope.ones((1, 1, 3)))


def test_index_update_names_the_value_and_target_shapes(backend):
    """A value that does not broadcast to x[index] is a ShapeError naming both shapes (it named two shapes that
    "cannot be broadcast together" without saying which was the value)."""
    with pytest.raises(slope.ShapeError, match=r"a value of shape \(3, 4\) does not fit x\[index\] of shape \(2, 4\)"):
        slope.zeros((3, 4)).at[[0, 1]].set(slope.ones((3, 4)))


CONV_GRAD_CASES = [  # (x shape, w shape, keywords): batch 0, empty in space, a non-empty output shape
    ((0, 2, 0), (3, 2, 1), {"padding": 1}),
    ((0, 2, 0), (3, 2, 2), {"padding": 1}),
    ((0, 2, 0, 3), (3, 2, 1, 1), {"padding": (1, 0)}),
    ((0, 2, 0), (4, 1, 3), {"padding": 3, "groups": 2, "dilation": 2, "stride": 2}),
]


@pytest.mark.parametrize("case", range(len(CONV_GRAD_CASES)))
def test_conv_gradient_of_an_empty_batch_is_zero(backend, torch, case):
    """conv with batch 0 and an input empty in space (padding makes the output non-empty in space): the empty
    output, and zero gradients of x's and w's shapes, eagerly and under jit."""
    xs, ws, keywords = CONV_GRAD_CASES[case]
    conv_t = getattr(torch.nn.functional, f"conv{len(xs) - 2}d")
    x, w = torch.zeros(xs, requires_grad=True), torch.ones(ws, requires_grad=True)
    out = conv_t(x, w, **keywords)
    out.sum().backward()

    def loss(a, b):
        return slope.conv(a, b, **keywords).sum()

    sx, sw = slope.zeros(xs), slope.ones(ws)
    _agree(slope.conv(sx, sw, **keywords).numpy(), out.detach().numpy(), (backend, case))
    for gradient in (slope.grad(loss, argnums=(0, 1)), slope.jit(slope.grad(loss, argnums=(0, 1)))):
        gx, gw = gradient(sx, sw)
        _agree(gx.numpy(), x.grad.numpy(), (backend, "grad x", case))
        _agree(gw.numpy(), w.grad.numpy(), (backend, "grad w", case))


def test_conv_of_an_input_empty_in_space_raises_without_padding(backend):
    """Without padding the kernel does not fit an empty spatial dimension: a ShapeError naming slope.conv (PyTorch
    raises too), whatever the batch."""
    for xs in [(0, 2, 0), (1, 2, 0)]:
        with pytest.raises(slope.ShapeError, match=r"slope\.conv: kernel \(1,\) .* larger than input"):
            slope.conv(slope.zeros(xs), slope.ones((3, 2, 1)))


@pytest.mark.parametrize(
    ("xs", "ws", "keywords"),
    [
        ((0, 2, 0), (2, 3, 1), {}),
        ((0, 2, 2), (2, 3, 1), {"padding": 1}),
        ((0, 2, 2, 3), (2, 3, 1, 1), {"padding": (1, 0)}),
    ],
)
def test_conv_transpose_with_an_empty_batch_may_give_an_empty_output(backend, torch, xs, ws, keywords):
    """conv_transpose with batch 0 and an output of size 0 in space: PyTorch's empty shape, zero gradients."""
    conv_t = getattr(torch.nn.functional, f"conv_transpose{len(xs) - 2}d")
    x, w = torch.zeros(xs, requires_grad=True), torch.ones(ws, requires_grad=True)
    out = conv_t(x, w, **keywords)
    out.sum().backward()
    conv_transpose = slope.nn.functional.conv_transpose

    def loss(a, b):
        return conv_transpose(a, b, **keywords).sum()

    sx, sw = slope.zeros(xs), slope.ones(ws)
    _agree(conv_transpose(sx, sw, **keywords).numpy(), out.detach().numpy(), (backend, xs, ws))
    _agree(slope.jit(lambda a, b: conv_transpose(a, b, **keywords))(sx, sw).numpy(), out.detach().numpy(), xs)
    gx, gw = slope.grad(loss, argnums=(0, 1))(sx, sw)
    _agree(gx.numpy(), x.grad.numpy(), (backend, "grad x", xs))
    _agree(gw.numpy(), w.grad.numpy(), (backend, "grad w", xs))


@pytest.mark.parametrize(("xs", "padding"), [((1, 2, 2), 1), ((0, 2, 1), 1), ((2, 2, 0), 1)])
def test_conv_transpose_output_too_small_raises(backend, xs, padding):
    """An output of size 0 with a batch, or a negative one, is a ShapeError naming conv_transpose and the shapes."""
    with pytest.raises(slope.ShapeError, match=r"slope\.conv_transpose: input \(.*\) with weight \(2, 3, 1\) gives"):
        slope.nn.functional.conv_transpose(slope.zeros(xs), slope.ones((2, 3, 1)), padding=padding)


ALONG_CASES = [  # (function, x shape, index, dim, src shape or None); PyTorch's value and shape, and its gradient
    ("take_along_dim", (2, 3), [[0, 5]], None, None),  # no dim: PyTorch's default flattens x and index
    ("take_along_dim", (2, 3), [2, 0, 1, 1], None, None),
    ("take_along_dim", (), [0, 0], None, None),
    ("gather", (3,), 2, 0, None),  # a 0-d index on a 1-d x
    ("gather", (), [0, 0], -1, None),
    ("gather", (2, 3), np.zeros((0, 5, 7), np.int64), 1, None),  # an empty index: its shape, nothing checked
    ("gather", (2, 3), np.zeros((0, 9), np.int64), -1, None),
    ("scatter_add", (), [0, 0, 0], 0, (3,)),  # a 0-d x with a 1-d index and src
    ("scatter_add", (), 0, -1, ()),
    ("scatter_add", (3,), 2, 0, ()),  # a 0-d index and src on a 1-d x
]


@pytest.mark.parametrize("case", range(len(ALONG_CASES)))
def test_along_dim_indexing_matches_pytorch(backend, torch, case):
    """take_along_dim, gather and scatter_add with 0-d tensors (PyTorch reads them as 1-d), empty indices and no
    dim: values, shapes and the gradients with respect to x (and src)."""
    name, shape, index, dim, src_shape = ALONG_CASES[case]
    data = np.asarray(np.arange(1, 1 + int(np.prod(shape)), dtype=np.float32).reshape(shape))
    index = np.asarray(index, dtype=np.int64)
    src = None if src_shape is None else np.asarray(np.full(src_shape, 10.0, np.float32))
    leaf = torch.from_numpy(data.copy()).requires_grad_()
    leaf_src = None if src is None else torch.from_numpy(src.copy()).requires_grad_()
    tindex = torch.from_numpy(index.copy())
    if name == "take_along_dim":
        expected = torch.take_along_dim(leaf, tindex, dim)
    elif name == "gather":
        expected = torch.gather(leaf, dim, tindex)
    else:
        expected = torch.scatter_add(leaf, dim, tindex, leaf_src)
    weights = np.asarray(np.linspace(1.0, 2.0, expected.numel(), dtype=np.float32).reshape(tuple(expected.shape)))
    (expected * torch.from_numpy(weights)).sum().backward()

    def call(x, *rest):
        if name == "take_along_dim":
            return slope.take_along_dim(x, slope.tensor(index), dim)
        if name == "gather":
            return slope.gather(x, dim, slope.tensor(index))
        return slope.scatter_add(x, dim, slope.tensor(index), rest[0])

    args = [slope.tensor(data)] + ([] if src is None else [slope.tensor(src)])
    _agree(call(*args).numpy(), expected.detach().numpy(), (backend, case))
    _agree(slope.jit(call)(*args).numpy(), expected.detach().numpy(), (backend, "jit", case))
    grads = slope.grad(lambda *a: (call(*a) * slope.tensor(weights)).sum(), argnums=tuple(range(len(args))))(*args)
    for got, leaf_tensor in zip(grads, [leaf, leaf_src]):
        _agree(got.numpy(), leaf_tensor.grad.numpy(), (backend, "grad", case))


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("name", ["take_along_dim", "gather", "scatter_add"])
def test_along_dim_indices_into_an_empty_dimension_raise(backend, torch, name, jit):
    """An index into a dimension of size 0 raises an IndexError naming the function, eager and under jit, as PyTorch
    raises: under jit take_along_dim's plugin translation failed its check on zeros (a SlopeBackendError), and iree's
    scatter_add returned the empty x."""
    index, x = np.zeros((2, 1), np.int64), np.zeros((2, 0), np.float32)
    calls = {"take_along_dim": lambda m, t, i: m.take_along_dim(t, i, 1), "gather": lambda m, t, i: m.gather(t, 1, i),
             "scatter_add": lambda m, t, i: m.scatter_add(t, 1, i, m.ones((2, 1)))}  # fmt: skip
    with pytest.raises(RuntimeError):  # PyTorch refuses it too
        calls[name](torch, torch.from_numpy(x), torch.from_numpy(index))
    run = slope.jit(lambda t, i: calls[name](slope, t, i)) if jit else lambda t, i: calls[name](slope, t, i)
    with pytest.raises(IndexError, match=f"slope.{name}"):
        run(slope.tensor(x), slope.tensor(index))


def test_gather_of_a_0d_x_with_a_2d_index_raises(backend):
    """Only a 1-d index may stand for a 0-d x (PyTorch raises for more dimensions; Slope gave values)."""
    with pytest.raises(slope.ShapeError, match=r"slope\.gather: index of shape \(1, 1\) does not fit x of shape"):
        slope.gather(slope.tensor(5.0), 0, slope.tensor([[0]]))


CONV_MORE_CASES = [  # (transposed, x shape, w shape, keywords): values and gradients against PyTorch
    (True, (1, 1, 1), (1, 2, 3), {"stride": 2, "padding": 2, "dilation": 2}),  # a kernel offset wholly outside
    (True, (2, 2, 3, 1), (2, 1, 3, 3), {"stride": (2, 1), "padding": (1, 2), "dilation": 2, "groups": 2}),
    (False, (1, 0, 0), (4, 0, 1), {"stride": 2, "padding": 1, "groups": 2}),  # no input channels, empty in space
    (False, (2, 0, 0, 2), (1, 0, 1, 2), {"stride": 2, "padding": 1}),
]


@pytest.mark.parametrize("case", range(len(CONV_MORE_CASES)))
def test_convolution_edges_match_pytorch(backend, torch, case):
    """conv_transpose whose padding puts a kernel offset wholly outside the output (it raised a slope.pad error), and
    the gradient of a conv over no input channels and an input empty in space (it raised): PyTorch's values."""
    transposed, xs, ws, keywords = CONV_MORE_CASES[case]
    rng = np.random.RandomState(case)
    data, weight = rng.randn(*xs).astype(np.float32), rng.randn(*ws).astype(np.float32)
    n = len(xs) - 2
    reference = getattr(torch.nn.functional, f"conv_transpose{n}d" if transposed else f"conv{n}d")
    leaf, leaf_w = torch.from_numpy(data.copy()).requires_grad_(), torch.from_numpy(weight.copy()).requires_grad_()
    expected = reference(leaf, leaf_w, **keywords)
    expected.sum().backward()
    function = slope.nn.functional.conv_transpose if transposed else slope.conv
    x, w = slope.tensor(data), slope.tensor(weight)
    got = function(x, w, **keywords).numpy()
    if not transposed and xs[1] == 0:  # no input channels: zeros of (N, C_out, ...) (README); PyTorch (N, 0, ...)
        np.testing.assert_array_equal(got, np.zeros((xs[0], ws[0], *expected.shape[2:]), np.float32))
    else:
        np.testing.assert_allclose(got, expected.detach().numpy(), rtol=1e-5, atol=1e-5)
    gx, gw = slope.grad(lambda a, b: function(a, b, **keywords).sum(), argnums=(0, 1))(x, w)
    np.testing.assert_allclose(gx.numpy(), leaf.grad.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gw.numpy(), leaf_w.grad.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("transposed", [False, True])
def test_convolution_without_output_channels_raises(backend, transposed):
    """A weight with no output channels is a ShapeError naming the operator, as PyTorch raises (Slope gave an empty
    tensor)."""
    if transposed:
        with pytest.raises(slope.ShapeError, match=r"slope\.conv_transpose: weight \(2, 0, 1\) has no output channels"):
            slope.nn.functional.conv_transpose(slope.ones((1, 2, 3)), slope.ones((2, 0, 1)))
    else:
        with pytest.raises(slope.ShapeError, match=r"slope\.conv: .*weight of shape \(0, 2, 1\).*positive multiple"):
            slope.conv(slope.ones((1, 2, 3)), slope.ones((0, 2, 1)))


def test_gradient_of_a_step_longer_than_the_dimension_allocates_no_step_sized_buffer(backend):
    """x[::10**10]'s gradient padded every element with step - 1 zeros (a (1, 10**10, 4) buffer: SlopeMemoryError);
    a conv or pool stride of 30,000 over a 5 x 5 input took 40 s for the same reason."""
    x = slope.ones(3, 4)
    expected = np.zeros((3, 4), np.float32)
    expected[0] = 1.0
    np.testing.assert_array_equal(slope.grad(lambda v: v[:: 10**10].sum())(x).numpy(), expected)
    expected[0, 1:] = 0.0
    np.testing.assert_array_equal(slope.grad(lambda v: v[:: 10**8, :: 10**8].sum())(x).numpy(), expected)
    conv = slope.grad(lambda v, w: slope.conv(v, w, stride=30000).sum())(slope.ones(1, 1, 5, 5), slope.ones(1, 1, 1, 1))
    assert conv.numpy().sum() == 1.0 and conv.numpy()[0, 0, 0, 0] == 1.0
