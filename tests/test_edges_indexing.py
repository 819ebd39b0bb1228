"""Edges of reductions, indexing and dimensions against PyTorch, on every backend (issue 10, points 2, 3, 4, 10, 12).

Each family is a small differential loop: random inputs holding NaN, infinities, ties, 0-d and size-0 shapes go
through Slope (eagerly and under `jit`) and through PyTorch, and values, dtypes, shapes and whether an error is raised
must agree. Values are compared exactly (NaN equal to NaN): maxima, indices and selections involve no rounding; means
and variances of empty or one-element inputs are NaN or exact; the dim-taking functions that compute (softmax and its
kin, on small float32 inputs) are compared to a relative 1e-6. PyTorch is imported with `importorskip`, so the tests
that need it skip cleanly where it is not installed.
"""

from __future__ import annotations

import numpy as np
import pytest

import slope

FLOATS = ["float16", "bfloat16", "float32", "float64"]
SPECIALS = np.array([np.nan, np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, 1.0])  # NaN, infinities, signed zeros, ties


def _torch_dtype(torch, name: str):
    return getattr(torch, name)


def _as_numpy(value) -> np.ndarray:
    if isinstance(value, slope.Tensor):
        array = value.numpy()
        return array.astype(np.float64) if value.dtype.is_float else array
    array = value.detach()
    return (array.double() if array.is_floating_point() else array).numpy()


def _same(got, expected, context) -> None:
    """Equal values (NaN equal to NaN, 0.0 equal to -0.0), shapes and dtype names."""
    g, e = _as_numpy(got), _as_numpy(expected)
    assert g.shape == e.shape, f"{context}: shape {g.shape} != {e.shape}"
    np.testing.assert_array_equal(g, e, err_msg=str(context))
    assert got.dtype.name == str(expected.dtype).removeprefix("torch."), f"{context}: dtype {got.dtype} vs {expected}"


def _random_arrays(rng: np.random.Generator, count: int):
    """A NaN after the first place of a row and of a column, then arrays drawn from SPECIALS and normal values: 0-d,
    1-d to 3-d, some with a size-0 dimension."""
    yield np.array([[1.0, np.nan, 3.0], [np.nan, -np.inf, np.nan], [2.0, 5.0, 5.0]])
    for _ in range(count):
        ndim = int(rng.integers(0, 4))
        shape = tuple(int(s) for s in rng.integers(0 if rng.random() < 0.15 else 1, 4, ndim))
        values = np.where(rng.random(shape) < 0.5, rng.choice(SPECIALS, shape), rng.standard_normal(shape))
        yield np.asarray(values)


def _outcome(fn, *args):
    """("ok", fn(*args)) or ("error", the exception it raised)."""
    try:
        return "ok", fn(*args)
    except Exception as error:  # noqa: BLE001 - the kind is compared, not the class (PyTorch raises RuntimeError)
        return "error", error


# ----------------------------------------------------------------------------------------------- point 2: NaN


def test_the_issue_examples_max_min_argmax_of_a_nan(backend):
    x = slope.tensor([1.0, float("nan"), 3.0])
    assert np.isnan(x.max().item()) and np.isnan(x.min().item())
    assert x.argmax().item() == 1 and x.argmin().item() == 1  # PyTorch: the first NaN, for both


REDUCTIONS = {  # name: (slope function, torch function) of (x, dim, keepdim); dim None means all
    "max": (lambda x, d, k: slope.max(x) if d is None else slope.max(x, d, k),
            lambda t, x, d, k: t.amax(x) if d is None else t.amax(x, d, k)),
    "min": (lambda x, d, k: slope.min(x) if d is None else slope.min(x, d, k),
            lambda t, x, d, k: t.amin(x) if d is None else t.amin(x, d, k)),
    "argmax": (lambda x, d, k: slope.argmax(x, d, k), lambda t, x, d, k: t.argmax(x, d, k)),
    "argmin": (lambda x, d, k: slope.argmin(x, d, k), lambda t, x, d, k: t.argmin(x, d, k)),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(REDUCTIONS))
def test_reductions_with_nan_inf_and_ties_match_pytorch(backend, torch, name):
    ours, theirs = REDUCTIONS[name]
    rng = np.random.default_rng(sum(map(ord, name)))
    checked = 0
    for array in _random_arrays(rng, 24):
        dtype = FLOATS[checked % len(FLOATS)]
        t = torch.tensor(array).to(_torch_dtype(torch, dtype))
        x = slope.tensor(array, dtype=dtype)
        for dim in [None, *range(-array.ndim, array.ndim), *([0] if array.ndim == 0 else [])]:
            keepdim = bool(rng.random() < 0.5)
            context = (name, array.tolist(), dtype, dim, keepdim)
            expected = _outcome(theirs, torch, t, dim, keepdim)
            runs = [ours, slope.jit(ours, static_argnums=(1, 2))] if checked % 3 == 0 else [ours]
            for run in runs:
                got = _outcome(run, x, dim, keepdim)
                assert got[0] == expected[0], f"{context}: {got} vs {expected}"
                if got[0] == "ok":
                    _same(got[1], expected[1], context)
            checked += 1
    assert checked > 40


def test_elementwise_maximum_minimum_and_clip_propagate_nan(backend, torch):
    rng = np.random.default_rng(2)
    for dtype in FLOATS:
        for shapes in [((7,), (7,)), ((3, 1), (1, 4)), ((), (5,)), ((2, 0), (1,)), ((64,), ())]:
            a, b = (np.where(rng.random(s) < 0.5, rng.choice(SPECIALS, s), rng.standard_normal(s)) for s in shapes)
            x, y = slope.tensor(a, dtype=dtype), slope.tensor(b, dtype=dtype)
            tx, ty = (torch.tensor(v).to(_torch_dtype(torch, dtype)) for v in (a, b))
            for fn, ref in [(slope.maximum, torch.maximum), (slope.minimum, torch.minimum)]:
                _same(fn(x, y), ref(tx, ty), (fn, dtype, shapes))
                _same(fn(y, x), ref(ty, tx), (fn, dtype, shapes, "swapped"))
            low, high = np.minimum(b, 0.5), np.maximum(b, 0.5)  # tensor bounds, NaN ones included
            tl, th = (torch.tensor(v).to(_torch_dtype(torch, dtype)) for v in (low, high))
            lo, hi = slope.tensor(low, dtype=dtype), slope.tensor(high, dtype=dtype)
            _same(slope.clip(x, lo, hi), torch.clamp(tx, tl, th), ("clip", dtype, shapes))
            for bounds in [(float("nan"), None), (None, float("nan")), (-0.5, 0.5), (0.5, -0.5)]:
                _same(slope.clip(x, *bounds), torch.clamp(tx, *bounds), ("clip", dtype, shapes, bounds))


def _grad_pair(torch, values, slope_fn, torch_fn):
    t = torch.tensor(values, requires_grad=True)
    torch_fn(t).backward()
    return slope.grad(slope_fn)(slope.tensor(values)).numpy(), t.grad.numpy()


def test_gradient_of_max_with_ties_and_nan_matches_pytorch(backend, torch):
    nan = float("nan")
    for values in ([1.0, 3.0, 3.0], [3.0, 3.0, 3.0], [1.0, nan, 3.0, nan], [-np.inf, -np.inf, 0.0]):
        # a full reduction shares the gradient among the maxima (the NaNs, when there are some), as torch's max()
        got, expected = _grad_pair(torch, np.array(values), lambda x: x.max(), lambda t: t.max())
        np.testing.assert_array_equal(got, expected, err_msg=str(values))
        got, expected = _grad_pair(torch, np.array(values), lambda x: x.min(), lambda t: t.min())
        np.testing.assert_array_equal(got, expected, err_msg=str(values))
    a, b = np.array([1.0, nan, 3.0, nan, 2.0]), np.array([nan, 3.0, 1.0, nan, 2.0])
    for ours, theirs in [(slope.maximum, "maximum"), (slope.minimum, "minimum")]:  # NaNs: both inputs get it all
        ta, tb = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
        getattr(torch, theirs)(ta, tb).sum().backward()
        grads = slope.grad(lambda u, v, f=ours: f(u, v).sum(), argnums=(0, 1))(slope.tensor(a), slope.tensor(b))
        np.testing.assert_array_equal(np.stack([g.numpy() for g in grads]), np.stack([ta.grad, tb.grad]), theirs)
    ties = np.array([[1.0, 4.0, 4.0], [2.0, 2.0, 0.0]])
    for dim in (0, 1):  # over a dimension, as torch's amax: ties share (torch's max(dim) picks one: see the README)
        got, expected = _grad_pair(torch, ties, lambda x, d=dim: x.max(d).sum(), lambda t, d=dim: t.amax(d).sum())
        np.testing.assert_array_equal(got, expected, err_msg=f"dim {dim}")


# ----------------------------------------------------------------------------------------------- point 3: .at[].set


def test_the_issue_example_a_repeated_index_is_written_once(backend):
    np.testing.assert_array_equal(slope.zeros(3).at[[0, 0]].set(5.0).numpy(), [5.0, 0.0, 0.0])


def test_at_without_an_index_is_refused_as_in_jax(backend):
    # `x.at.set(v)` wrote v into every element (the missing index defaulted to None, a new axis); JAX raises an
    # AttributeError ('_IndexUpdateHelper' object has no attribute 'set'), and x.at[None] still means a new axis there
    x = slope.tensor([1.0, 2.0])
    for method in ("set", "add"):
        with pytest.raises(AttributeError, match=rf"`t\.at\.{method}\(\.\.\.\)` needs an index: `t\.at\[index\]"):
            getattr(x.at, method)(5.0)
    np.testing.assert_array_equal(x.at[None].set(5.0).numpy(), [5.0, 5.0])  # (JAX: [5. 5.])
    np.testing.assert_array_equal(x.at[...].add(1.0).numpy(), [2.0, 3.0])


def test_set_with_repeated_indices_keeps_the_last_write_like_numpy(backend):
    rng = np.random.default_rng(3)
    for case in range(12):
        shape = (int(rng.integers(1, 5)), int(rng.integers(1, 5)))
        base = rng.standard_normal(shape).astype(np.float32)
        rows = rng.integers(-shape[0], shape[0], int(rng.integers(1, 9)))
        cols = rng.integers(0, shape[1], rows.shape)
        values = rng.standard_normal(rows.shape).astype(np.float32)
        expected = base.copy()
        expected[rows, cols] = values  # NumPy: the last write wins
        x, v = slope.tensor(base), slope.tensor(values)
        np.testing.assert_array_equal(x.at[rows, cols].set(v).numpy(), expected, err_msg=f"case {case}")
        traced = slope.jit(lambda a, r, c, u: a.at[r, c].set(u))(x, slope.tensor(rows), slope.tensor(cols), v)
        np.testing.assert_array_equal(traced.numpy(), expected, err_msg=f"case {case}, traced indices")
        rows_only = base.copy()
        rows_only[rows] = values[0]  # whole rows, a scalar value
        np.testing.assert_array_equal(x.at[rows].set(float(values[0])).numpy(), rows_only, err_msg=f"case {case}")
        if case < 4:  # gradients: only the winning write of each element gets the value's gradient
            weights = rng.standard_normal(shape).astype(np.float32)
            loser_free = np.zeros(rows.shape, np.float32)
            flat = (rows % shape[0]) * shape[1] + cols
            for k in range(len(flat)):
                if k == len(flat) - 1 - list(flat[::-1]).index(flat[k]):
                    loser_free[k] = weights.reshape(-1)[flat[k]]
            for index in ((rows, cols), (slope.tensor(rows), slope.tensor(cols))):

                def loss(u, x=x, index=index, weights=slope.tensor(weights)):
                    return (x.at[index].set(u) * weights).sum()

                np.testing.assert_allclose(slope.grad(loss)(v).numpy(), loser_free, rtol=1e-6)
                np.testing.assert_allclose(slope.jit(slope.grad(loss))(v).numpy(), loser_free, rtol=1e-6)


def test_set_with_repeated_indices_matches_pytorch_index_put(backend, torch):
    z = torch.zeros(4)
    z.index_put_((torch.tensor([1, 3, 1]),), torch.tensor([5.0, 6.0, 7.0]))
    got = slope.zeros(4).at[slope.tensor([1, 3, 1])].set(slope.tensor([5.0, 6.0, 7.0]))
    np.testing.assert_array_equal(got.numpy(), z.numpy())


# ----------------------------------------------------------------------------------------------- point 4: getitem


def test_indexing_matches_pytorch_for_masks_bools_and_their_combinations(backend, torch):
    rng = np.random.default_rng(4)
    base = rng.standard_normal((3, 4)).astype(np.float32)
    row, col = rng.random(3) < 0.5, rng.random(4) < 0.5
    row[0], col[1] = True, True  # at least one element each
    scalar = np.float32(2.5)
    cases = [  # (array, index built from a converter: torch.tensor or slope.tensor)
        (base, lambda c: c(row)), (base, lambda c: (c(row), 1)), (base, lambda c: (1, c(col))),
        (base, lambda c: (Ellipsis, c(col))), (base, lambda c: (None, c(row))), (base, lambda c: c(base > 0)),
        (base, lambda c: (c(row), slice(None, None, 2))), (base, lambda c: (c(row), c(np.array([0])))),
        (base, lambda c: True), (base, lambda c: False), (base, lambda c: (slice(None), True)),
        (base, lambda c: (1, False)), (base, lambda c: c(np.array(True))), (base, lambda c: c(np.array(False))),
        (base, lambda c: (True, 2)), (base, lambda c: c(np.zeros((3, 4), bool))),
        (scalar, lambda c: True), (scalar, lambda c: False), (scalar, lambda c: c(np.array(True))),
        (scalar, lambda c: (None, True)), (np.zeros((0, 2), np.float32), lambda c: c(np.zeros(0, bool))),
        (np.zeros((0, 2), np.float32), lambda c: (slice(None), c(np.array([True, False])))),
        (base, lambda c: [True, False, True]), (base, lambda c: c(np.array([-1, -3]))),
    ]  # fmt: skip
    for k, (array, index) in enumerate(cases):
        expected = torch.tensor(array)[index(torch.tensor)]
        x = slope.tensor(array)
        _same(x[index(slope.tensor)], expected, f"case {k}")
        _same(x[index(np.asarray)], expected, f"case {k} (NumPy index)")


def test_numpy_bools_tuples_and_ranges_index_as_numpy_does(backend):
    """x[np.True_] raised NumPy's "truth value of an empty array is ambiguous" (the check for an empty list compared
    the NumPy bool with []); a tuple or range inside the index (x[:, (0, 1)], x[range(2)]) was refused, where NumPy
    and PyTorch take it as a sequence of indices."""
    base = np.arange(12.0).reshape(3, 4)
    cases = [np.True_, np.False_, (0, np.True_), (slice(None), (0, 2)), ((0, 1),), range(2), (range(1, 3), 1), []]
    for k, index in enumerate(cases):
        expected = base[index]
        got = slope.tensor(base)[index].numpy()
        assert got.shape == expected.shape and np.array_equal(got, expected), f"case {k}: {index}"
    assert slope.tensor(base).at[:, (0, 2)].set(-1.0).numpy()[:, [0, 2]].tolist() == [[-1.0, -1.0]] * 3
    np.testing.assert_array_equal(slope.tensor(base).at[np.True_].add(1.0).numpy(), base + 1.0)
    values = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])  # a repeated position in a tuple: the last write wins
    for index in ((slice(None), (1, 1)), (slice(None), (1, -3)), (slice(None), range(1, 3))):
        expected = base.copy()
        expected[index] = values
        for fn in (lambda a, v, i=index: a.at[i].set(v), slope.jit(lambda a, v, i=index: a.at[i].set(v))):
            np.testing.assert_array_equal(fn(slope.tensor(base), slope.tensor(values)).numpy(), expected)


BAD_INDICES = {  # what PyTorch also refuses, each with the words of the IndexError Slope raises
    "a mask of the wrong length": (lambda x: x[slope.tensor([True, False])], "mask of shape (2,)"),
    "a mask of the wrong shape": (lambda x: x.reshape(2, 3)[np.ones((3, 2), bool)], "mask of shape (3, 2)"),
    "a mask of too many dimensions": (lambda x: x[np.ones((6, 1), bool)], "too many indices"),
    "a float": (lambda x: x[1.5], "got float"),
    "a float in a tuple": (lambda x: x[(1.0,)], "got float"),
    "a NumPy float": (lambda x: x[np.float64(2)], "got float64"),
    "a float tensor": (lambda x: x[slope.tensor([1.0])], "must be integers"),
    "an int out of range": (lambda x: x[6], "out of range"),
    "a concrete tensor out of range": (lambda x: x[slope.tensor([0, -7])], "range from -7"),
}


@pytest.mark.parametrize("case", sorted(BAD_INDICES))
def test_indexing_that_pytorch_refuses_raises_an_index_error(backend, case):
    fn, words = BAD_INDICES[case]
    with pytest.raises(IndexError, match="slope.getitem") as error:
        fn(slope.arange(6.0))
    assert words in str(error.value)


@pytest.mark.parametrize("index", [-7, 6, 100, -100])
def test_a_traced_index_out_of_range_raises_when_the_program_runs(backend, index):
    x = slope.arange(6.0)
    take = slope.jit(lambda a, i: a[i])
    with pytest.raises(IndexError, match=r"slope\.gather_nd \(x\[index\], slope\.getitem\): .*out of"):
        take(x, slope.tensor(index))
    with pytest.raises(IndexError, match=r"slope\.(gather|scatter)_nd"):  # a batch of indices, in a gradient
        slope.jit(slope.grad(lambda a, i: a[i].sum()))(x, slope.tensor([0, index]))
    assert take(x, slope.tensor(-6)).item() == 0.0 and take(x, slope.tensor(5)).item() == 5.0  # the ends still work


def test_gather_refuses_negative_indices_as_pytorch(backend, torch):
    x = np.arange(6.0).reshape(2, 3)
    with pytest.raises(RuntimeError):
        torch.gather(torch.tensor(x), 1, torch.tensor([[0, -1]]))
    with pytest.raises(IndexError, match="slope.gather"):
        slope.gather(slope.tensor(x), 1, slope.tensor([[0, -1]]))
    with pytest.raises(IndexError, match="slope.gather_nd"):
        slope.jit(lambda a, i: slope.gather(a, 1, i))(slope.tensor(x), slope.tensor([[0, -1]]))
    traced = slope.jit(lambda a, i: slope.gather(a, 0, i))  # narrow index dtypes: int8 -1 into 128 read x[0]
    for size, index, dtype in ((128, -1, np.int8), (200, -3, np.int8), (40000, -1, np.int16), (32768, -5, np.int16)):
        with pytest.raises(IndexError, match="slope.gather_nd"):
            traced(slope.arange(float(size)), slope.tensor(np.array([index], dtype)))
    assert traced(slope.arange(200.0), slope.tensor(np.array([127], np.int8))).tolist() == [127.0]
    expected = torch.gather(torch.tensor(2.0), 0, torch.tensor(0))  # 0-d input and index
    _same(slope.gather(slope.tensor(2.0), 0, slope.tensor(0)), expected, "0-d gather")


def test_take_along_dim_counts_negative_indices_from_the_end_as_pytorch(backend, torch):
    rng = np.random.default_rng(0)
    x, weights = rng.standard_normal((2, 3)), rng.standard_normal((2, 5))
    index = np.array([[-1, 0, -3, 2, -1], [-2, -2, 1, -3, 0]])  # every index of [-3, 3), repeats too
    source = torch.tensor(x, requires_grad=True)
    picked = torch.take_along_dim(source, torch.tensor(index), 1)
    (picked * torch.tensor(weights)).sum().backward()

    def loss(a, i):
        return (slope.take_along_dim(a, i, 1) * slope.tensor(weights)).sum()

    for mode, transform in (("eager", lambda f: f), ("jit", slope.jit)):
        take = transform(lambda a, i: slope.take_along_dim(a, i, 1))
        _same(take(slope.tensor(x), slope.tensor(index)), picked.detach(), f"take_along_dim {mode}")
        grad = transform(slope.grad(loss))(slope.tensor(x), slope.tensor(index))
        np.testing.assert_allclose(grad.numpy(), source.grad.numpy(), rtol=1e-12, err_msg=mode)
        batched = transform(slope.vmap(lambda a, i: slope.take_along_dim(a, i, 0)))(
            slope.tensor(x), slope.tensor(index)
        )
        _same(batched, picked.detach(), f"vmap {mode}")
    for bad in (-4, 3):  # outside [-3, 3): PyTorch's gather raises (its CPU take_along_dim wraps, see README)
        with pytest.raises(RuntimeError):
            torch.gather(torch.tensor(x), 1, torch.tensor([[bad], [0]]))
        with pytest.raises(IndexError, match=r"slope\.take_along_dim: .* expected -3 to 2 for dimension 1"):
            slope.take_along_dim(slope.tensor(x), slope.tensor([[bad], [0]]), 1)
        # traced: when the program runs, naming the operator on every backend (numpy's said only "index -4 is out...")
        with pytest.raises(IndexError, match=r"slope\.take_along_dim: an index is out of range"):
            slope.jit(lambda a, i: slope.take_along_dim(a, i, 1))(slope.tensor(x), slope.tensor([[bad], [0]]))
    empty = slope.tensor(np.zeros((2, 0), np.int64))  # no index: a zero gradient (IREE's compiler crashed on it)
    for transform in (lambda f: f, slope.jit):
        grad = transform(slope.grad(lambda a: slope.take_along_dim(a, empty, 1).sum()))(slope.tensor(x))
        np.testing.assert_array_equal(grad.numpy(), np.zeros_like(x))
    with pytest.raises(IndexError, match="slope.scatter_add"):  # PyTorch's scatter_add refuses negative indices
        slope.scatter_add(slope.tensor(x), 1, slope.tensor([[-1], [0]]), slope.tensor(np.ones((2, 1), x.dtype)))


# ----------------------------------------------------------------------------------------------- point 10: empty


STATISTICS = {  # name: (slope function, torch function) of (x, dim); dim None means all
    "mean": (lambda x, d: x.mean(d), lambda t, d: t.mean() if d is None else t.mean(d)),
    "var": (lambda x, d: x.var(d), lambda t, d: t.var() if d is None else t.var(d)),
    "std": (lambda x, d: x.std(d), lambda t, d: t.std() if d is None else t.std(d)),
    "var0": (lambda x, d: x.var(d, correction=0), lambda t, d: t.var(d, correction=0)),
    "var2": (lambda x, d: x.var(d, correction=2), lambda t, d: t.var(d, correction=2)),
    "sum": (lambda x, d: x.sum(d), lambda t, d: t.sum() if d is None else t.sum(d)),
    "prod": (lambda x, d: x.prod(d), lambda t, d: t.prod() if d is None else t.prod(d)),
    "amax": (lambda x, d: x.max(d), lambda t, d: t.amax() if d is None else t.amax(d)),
    "argmax": (lambda x, d: x.argmax(d), lambda t, d: t.argmax(d)),
    "cumsum": (lambda x, d: slope.cumsum(x, 0 if d is None else d), lambda t, d: t.cumsum(0 if d is None else d)),
}


@pytest.mark.parametrize("name", sorted(STATISTICS))
def test_reductions_of_empty_and_one_element_inputs_match_pytorch(backend, torch, name):
    ours, theirs = STATISTICS[name]
    for shape in [(0,), (0, 3), (3, 0), (1,), (1, 3), (2, 1), (2,)]:
        array = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
        for dim in [None, *range(len(shape)), -1]:
            expected = _outcome(theirs, torch.tensor(array), dim)
            got = _outcome(ours, slope.tensor(array), dim)
            assert got[0] == expected[0], f"{name}{shape} dim {dim}: {got} vs {expected}"
            if got[0] == "ok":
                _same(got[1], expected[1], (name, shape, dim))


def test_mean_of_empty_is_nan_as_in_the_issue(backend):
    assert np.isnan(slope.zeros(0).mean().item())
    assert np.isnan(slope.zeros(0, 3).mean(0).numpy()).all()
    assert slope.zeros(0).sum().item() == 0.0 and slope.zeros(0).prod().item() == 1.0
    with pytest.raises(slope.ShapeError, match="slope.max"):
        slope.zeros(0).max()


# ----------------------------------------------------------------------------------------------- point 12: dims


DIM_FUNCTIONS = {  # name: (slope call of (x, dim), torch call of (torch, t, dim)) of a dim-taking function
    "sum": (lambda x, d: x.sum(d), lambda torch, t, d: t.sum(d)),
    "sum keepdim": (lambda x, d: x.sum(d, keepdim=True), lambda torch, t, d: t.sum(d, keepdim=True)),
    "mean": (lambda x, d: x.mean(d), lambda torch, t, d: t.mean(d)),
    "mean keepdim": (lambda x, d: x.mean(d, keepdim=True), lambda torch, t, d: t.mean(d, keepdim=True)),
    "var": (lambda x, d: x.var(d), lambda torch, t, d: t.var(d)),
    "std": (lambda x, d: x.std(d, correction=0), lambda torch, t, d: t.std(d, correction=0)),
    "prod": (lambda x, d: x.prod(d), lambda torch, t, d: t.prod(d)),
    "prod keepdim": (lambda x, d: x.prod(d, keepdim=True), lambda torch, t, d: t.prod(d, keepdim=True)),
    "max": (lambda x, d: x.max(d), lambda torch, t, d: t.amax(d)),
    "min": (lambda x, d: x.min(d), lambda torch, t, d: t.amin(d)),
    "amax keepdim": (lambda x, d: slope.amax(x, d, True), lambda torch, t, d: t.amax(d, keepdim=True)),
    "argmax": (lambda x, d: x.argmax(d), lambda torch, t, d: t.argmax(d)),
    "argmin keepdim": (lambda x, d: x.argmin(d, keepdim=True), lambda torch, t, d: t.argmin(d, keepdim=True)),
    "all": (lambda x, d: slope.all(x, d), lambda torch, t, d: t.all(d)),
    "any": (lambda x, d: slope.any(x, d), lambda torch, t, d: t.any(d)),
    "cumsum": (lambda x, d: slope.cumsum(x, d), lambda torch, t, d: t.cumsum(d)),
    "squeeze": (lambda x, d: x.squeeze(d), lambda torch, t, d: t.squeeze(d)),
    "unsqueeze": (lambda x, d: x.unsqueeze(d), lambda torch, t, d: t.unsqueeze(d)),
    "flatten": (lambda x, d: x.flatten(d), lambda torch, t, d: t.flatten(d)),
    "flatten end": (lambda x, d: x.flatten(0, d), lambda torch, t, d: t.flatten(0, d)),
    "transpose": (lambda x, d: x.transpose(d, 0), lambda torch, t, d: t.transpose(d, 0)),
    "flip": (lambda x, d: slope.flip(x, (d,)), lambda torch, t, d: t.flip((d,))),
    "softmax": (lambda x, d: slope.softmax(x, d), lambda torch, t, d: t.softmax(d)),
    "log_softmax": (lambda x, d: slope.log_softmax(x, d), lambda torch, t, d: t.log_softmax(d)),
    "logsumexp": (lambda x, d: slope.logsumexp(x, d), lambda torch, t, d: t.logsumexp(d)),
    "stack": (lambda x, d: slope.stack([x, x], d), lambda torch, t, d: torch.stack([t, t], d)),
    "gather": (lambda x, d: slope.gather(x, d, slope.zeros_like(x, dtype="int64")),
               lambda torch, t, d: t.gather(d, torch.zeros_like(t, dtype=torch.int64))),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(DIM_FUNCTIONS))
def test_dims_of_0d_and_other_tensors_match_pytorch(backend, torch, name):
    ours, theirs = DIM_FUNCTIONS[name]
    for array in [np.array(2.5), np.array([1.5, -2.0]), np.arange(6.0).reshape(2, 1, 3)]:
        for dim in range(-array.ndim - 2, array.ndim + 2):
            expected = _outcome(theirs, torch, torch.tensor(array, dtype=torch.float32), dim)
            got = _outcome(ours, slope.tensor(array, dtype="float32"), dim)
            context = (name, array.shape, dim)
            assert got[0] == expected[0], f"{context}: {got} vs {expected}"
            if got[0] == "ok":
                np.testing.assert_allclose(_as_numpy(got[1]), _as_numpy(expected[1]), rtol=1e-6, err_msg=str(context))
                assert got[1].shape == tuple(expected[1].shape), context
            else:
                assert isinstance(got[1], (IndexError, slope.ShapeError)), f"{context}: {got[1]!r}"


REPEATED_DIMS = {
    "sum": lambda x: x.sum((0, 0)),
    "sum negative": lambda x: x.sum((1, -1)),
    "mean": lambda x: x.mean((1, 1)),
    "var": lambda x: x.var((0, -2)),
    "amax": lambda x: slope.amax(x, (1, 1)),
    "prod": lambda x: x.prod((0, 0)),
    "flip": lambda x: slope.flip(x, (1, -1)),
    "permute": lambda x: x.permute(0, 0),
    "logsumexp": lambda x: slope.logsumexp(x, (1, 1)),
    "squeeze": lambda x: x.squeeze((0, 0)),
    "0-d sum": lambda x: x.sum().sum((0, -1)),
}


@pytest.mark.parametrize("case", sorted(REPEATED_DIMS))
def test_a_repeated_dimension_is_refused_as_in_pytorch(backend, case):
    with pytest.raises(slope.ShapeError, match="slope."):
        REPEATED_DIMS[case](slope.ones(2, 2))


def test_adding_floats_into_an_integer_tensor_is_refused_as_in_pytorch(backend):
    # .at[].add and scatter_add cast the value to x's dtype: x.at[1].add(0.9) on int64 x changed nothing, 2.7 added 2
    x = slope.tensor([1, 2, 3])
    for add in (
        lambda: x.at[1].add(0.9),
        lambda: slope.jit(lambda x, v: x.at[1].add(v))(x, slope.tensor(2.7)),
    ):
        with pytest.raises(slope.DTypeError, match="slope.index_update: cannot add float32 values into"):
            add()
    if hasattr(slope, "scatter_add"):  # (slope-nn's)
        with pytest.raises(slope.DTypeError, match="slope.scatter_add: expected src of x's dtype int64, got float32"):
            slope.scatter_add(x, 0, slope.tensor([0, 0]), slope.tensor([0.6, 0.6]))
    assert x.at[1].add(5).tolist() == [1, 7, 3] and x.at[[0, 0]].add([1, 2]).tolist() == [4, 2, 3]
    assert x.at[1].set(2.9).tolist() == [1, 2, 3]  # set casts, as x[i] = v in PyTorch
    assert slope.ones(2).at[0].add(slope.tensor(1.0, dtype=slope.float64)).tolist() == [2.0, 1.0]


def test_max_and_min_of_a_tensor_other_are_elementwise_and_prod_of_no_dims_reduces_all(backend):
    # slope.max(x, tensor(0)) reduced over dim 0 ([3, 2]): PyTorch's max(x, other) is the elementwise maximum
    torch = pytest.importorskip("torch")
    data = np.array([[-1.0, 2.0], [3.0, -4.0]], np.float32)
    x, tx = slope.tensor(data), torch.tensor(data)
    for other in (np.array(0.0, np.float32), np.array(1, np.int64), np.array([[0.0, 5.0], [0.0, 0.0]], np.float32)):
        assert slope.max(x, slope.tensor(other)).tolist() == torch.max(tx, torch.tensor(other)).tolist()
        assert x.min(slope.tensor(other)).tolist() == tx.min(torch.tensor(other)).tolist()
    assert slope.max(x, 0).tolist() == [3.0, 2.0] and slope.min(x, 1).tolist() == [-1.0, -4.0]
    assert slope.prod(x, ()).item() == 24.0 and slope.sum(x, ()).item() == 0.0  # () is every dim, as sum's


def test_conv_refuses_mixed_dtypes_as_pytorch(backend):
    # float32 x and a float64 weight (or bias) were promoted to float64; PyTorch refuses, as slope's conv_transpose
    x, w = slope.ones((1, 1, 4, 4)), slope.ones((2, 1, 2, 2))
    with pytest.raises(slope.DTypeError, match="slope.conv: expected floating inputs of one dtype"):
        slope.conv(x, w.astype(slope.float64))
    with pytest.raises(slope.DTypeError, match=r"slope.conv: expected a bias \[2, f32\] .* got \[2, f64\]"):
        slope.conv(x, w, slope.ones(2, dtype=slope.float64))
    assert slope.conv(x, w, slope.ones(2)).tolist() == np.full((1, 2, 3, 3), 5.0).tolist()
