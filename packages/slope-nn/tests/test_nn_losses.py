"""Losses against NumPy references (float32: rtol 1e-5, atol 1e-6), every reduction, and their gradients."""

from __future__ import annotations

import numpy as np
import pytest
from nn_helpers import finite_difference_check

import slope
import slope.nn as nn

pytestmark = pytest.mark.usefixtures("each_backend")
RTOL, ATOL = 1e-5, 1e-6


def log_softmax(x, axis=1):
    shifted = x - x.max(axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis, keepdims=True))


def reduce(losses, reduction):
    return {"mean": losses.mean(), "sum": losses.sum(), "none": losses}[reduction]


def close(actual, expected):
    np.testing.assert_allclose(actual.numpy(), expected, rtol=RTOL, atol=ATOL)


@pytest.fixture
def g():
    return np.random.default_rng(0)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_indices_and_probabilities(g, reduction):
    logits = g.standard_normal((6, 4)).astype(np.float32)
    labels = g.integers(0, 4, 6)
    logp = log_softmax(logits.astype(np.float64))
    expected = reduce(-logp[np.arange(6), labels], reduction)
    close(nn.cross_entropy(slope.tensor(logits), slope.tensor(labels), reduction=reduction), expected)
    probs = np.exp(log_softmax(g.standard_normal((6, 4)))).astype(np.float32)
    expected = reduce(-(probs * logp).sum(1), reduction)
    close(nn.cross_entropy(slope.tensor(logits), slope.tensor(probs), reduction=reduction), expected)
    close(nn.CrossEntropyLoss(reduction=reduction)(slope.tensor(logits), slope.tensor(labels)),
          reduce(-logp[np.arange(6), labels], reduction))  # fmt: skip


def test_cross_entropy_spatial_and_label_smoothing(g):
    logits = g.standard_normal((2, 3, 4, 5)).astype(np.float32)
    labels = g.integers(0, 3, (2, 4, 5))
    logp = log_softmax(logits.astype(np.float64))
    picked = np.take_along_axis(logp, labels[:, None], 1)[:, 0]
    close(nn.cross_entropy(slope.tensor(logits), slope.tensor(labels)), -picked.mean())
    flat_logits = logits[:, :, 0, 0]
    flat_logp = logp[:, :, 0, 0]
    targets = np.eye(3)[labels[:, 0, 0]] * 0.9 + 0.1 / 3
    close(nn.cross_entropy(slope.tensor(flat_logits), slope.tensor(labels[:, 0, 0]), label_smoothing=0.1),
          -(targets * flat_logp).sum(1).mean())  # fmt: skip


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_nll(g, reduction):
    logp = log_softmax(g.standard_normal((5, 3))).astype(np.float32)
    labels = g.integers(0, 3, 5)
    expected = reduce(-logp[np.arange(5), labels].astype(np.float64), reduction)
    close(nn.nll(slope.tensor(logp), slope.tensor(labels), reduction=reduction), expected)
    close(nn.NLLLoss(reduction=reduction)(slope.tensor(logp), slope.tensor(labels)), expected)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_mse(g, reduction):
    a, b = g.standard_normal((2, 4, 3)).astype(np.float32)
    expected = reduce((a.astype(np.float64) - b) ** 2, reduction)
    close(nn.mse(slope.tensor(a), slope.tensor(b), reduction=reduction), expected)
    close(nn.MSELoss(reduction)(slope.tensor(a), slope.tensor(b)), expected)


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_mse_with_a_bool_operand_promotes_as_pytorch(dtype):
    """A bool target (or input) of a float one counts as 0 and 1 in the float's dtype, as PyTorch's mse_loss (it
    raised 'slope.sub: cannot subtract bools'); values, dtype and the gradient against PyTorch's (exact here). Bools
    with bools or integers raise naming nn.mse, as PyTorch has no kernel for them."""
    torch = pytest.importorskip("torch")
    x, flags = np.array([[1.0, 0.5], [-0.25, 2.0]], dtype), np.array([[True, False], [False, True]])
    for reduction in ("mean", "sum", "none"):
        expected = torch.nn.functional.mse_loss(torch.tensor(x), torch.tensor(flags), reduction=reduction)
        for got in (nn.mse(slope.tensor(x), slope.tensor(flags), reduction=reduction),
                    nn.MSELoss(reduction)(slope.tensor(x), slope.tensor(flags)),
                    nn.mse_loss(slope.tensor(flags), slope.tensor(x), reduction=reduction)):  # fmt: skip
            assert got.dtype.name == dtype
            np.testing.assert_array_equal(got.astype(slope.float64).numpy(), expected.double().numpy())
    tx = torch.tensor(x, requires_grad=True)
    torch.nn.functional.mse_loss(tx, torch.tensor(flags)).backward()
    grad = slope.grad(lambda v: nn.mse(v, slope.tensor(flags)))(slope.tensor(x))
    assert grad.dtype.name == dtype
    np.testing.assert_array_equal(grad.astype(slope.float64).numpy(), tx.grad.double().numpy())
    for other in (flags, flags.astype(np.int64)):
        with pytest.raises(slope.DTypeError, match="slope.nn.mse: expected a float input or target, got bool"):
            nn.mse(slope.tensor(flags), slope.tensor(other))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_binary_cross_entropy(g, reduction):
    p = g.uniform(0.01, 0.99, (4, 3)).astype(np.float32)
    t = g.uniform(0, 1, (4, 3)).astype(np.float32)
    p64 = p.astype(np.float64)
    expected = reduce(-(t * np.log(p64) + (1 - t) * np.log(1 - p64)), reduction)
    close(nn.binary_cross_entropy(slope.tensor(p), slope.tensor(t), reduction=reduction), expected)
    close(nn.BCELoss(reduction=reduction)(slope.tensor(p), slope.tensor(t)), expected)
    # probabilities of exactly 0 and 1: logs clamped at -100 as PyTorch does
    edge = nn.binary_cross_entropy(slope.tensor([0.0, 1.0]), slope.tensor([1.0, 0.0]), reduction="none")
    np.testing.assert_allclose(edge.numpy(), [100.0, 100.0])


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_binary_cross_entropy_with_logits(g, reduction):
    x = (g.standard_normal((4, 3)) * 5).astype(np.float32)
    t = g.uniform(0, 1, (4, 3)).astype(np.float32)
    x64 = x.astype(np.float64)
    expected = reduce(np.maximum(x64, 0) - x64 * t + np.log1p(np.exp(-np.abs(x64))), reduction)
    close(nn.binary_cross_entropy_with_logits(slope.tensor(x), slope.tensor(t), reduction=reduction), expected)
    close(nn.BCEWithLogitsLoss(reduction=reduction)(slope.tensor(x), slope.tensor(t)), expected)
    big = nn.binary_cross_entropy_with_logits(slope.tensor([200.0, -200.0]), slope.tensor([0.0, 1.0]), reduction="none")
    np.testing.assert_allclose(big.numpy(), [200.0, 200.0], rtol=1e-6)  # no overflow


LOSS_FUNCTIONS = {
    "cross_entropy": lambda x, t: nn.cross_entropy(x, t),
    "nll": lambda x, t: nn.nll(slope.log_softmax(x, 1), t),
    "mse": lambda x, t: nn.mse(x, t.astype(x.dtype).reshape((-1, 1)).expand(x.shape)),
    "bce": lambda x, t: nn.binary_cross_entropy(x.sigmoid(), (t.astype(x.dtype) / 3).reshape((-1, 1)).expand(x.shape)),
    "bce_logits": lambda x, t: nn.binary_cross_entropy_with_logits(
        x, (t.astype(x.dtype) / 3).reshape((-1, 1)).expand(x.shape)
    ),
}


@pytest.mark.parametrize("name", sorted(LOSS_FUNCTIONS))
def test_loss_gradients_match_finite_differences(g, name):
    x = slope.tensor(g.standard_normal((5, 4)))
    t = slope.tensor(g.integers(0, 4, 5))
    finite_difference_check(LOSS_FUNCTIONS[name], (x, t))


@pytest.mark.parametrize("dtypes", [("int8", "int8"), ("int64", "int64"), ("int32", "int64"), ("int64", "bool")])
def test_mse_of_integers_is_refused_as_pytorch(dtypes):
    """Two integer operands: PyTorch's mse_loss raises ("mse_cpu" not implemented for 'Char'); Slope squared the
    difference in the integer dtype and wrapped (int8 [1, 2] and [-100, 100]: a sum of -163, not 19805). An integer
    with a float operand promotes to the float: values (exact here) and dtype as PyTorch's."""
    torch = pytest.importorskip("torch")
    a, b = np.array([1, 2]).astype(dtypes[0]), np.array([-100, 100]).astype(dtypes[1])
    for reduction in ("mean", "sum", "none"):
        with pytest.raises(RuntimeError, match="not implemented"):
            torch.nn.functional.mse_loss(torch.tensor(a), torch.tensor(b), reduction=reduction)
        for loss in (nn.mse, lambda x, y, reduction: nn.MSELoss(reduction)(x, y)):
            with pytest.raises(slope.DTypeError, match=rf"^slope\.nn\.mse: expected a float input or target, got "
                               f"{dtypes[0]} and {dtypes[1]}"):  # fmt: skip
                loss(slope.tensor(a), slope.tensor(b), reduction=reduction)
        for dtype in ("float16", "bfloat16", "float32", "float64"):
            expected = torch.nn.functional.mse_loss(
                torch.tensor(a).to(getattr(torch, dtype)), torch.tensor(b), reduction=reduction
            )
            got = nn.mse(slope.tensor(a).astype(getattr(slope, dtype)), slope.tensor(b), reduction=reduction)
            assert got.dtype.name == dtype
            np.testing.assert_array_equal(got.astype(slope.float64).numpy(), expected.double().numpy())


def test_loss_errors():
    with pytest.raises(ValueError, match="reduction"):
        nn.mse(slope.ones(2), slope.ones(2), reduction="avg")
    with pytest.raises(ValueError, match="differ"):
        nn.mse(slope.ones(2), slope.ones(3))
    with pytest.raises(TypeError, match="class indices"):
        nn.nll(slope.ones(2, 3), slope.ones(2))


# ----------------------------------------------------------------------------------------------- against PyTorch

CLASS_LOSS_CASES = {  # (logits shape, targets, kwargs): targets -100 are PyTorch's default ignore_index
    "ignored targets": ((5, 4), [1, -100, 3, 0, -100], {}),
    "weights": ((5, 4), [1, 2, 3, 0, 3], {"weight": [0.5, 2.0, 1.0, 0.25]}),
    "weights and ignored": ((5, 4), [1, -100, 3, 0, 2], {"weight": [0.5, 2.0, 1.0, 0.25]}),
    "ignore_index a class": ((5, 4), [1, 2, 3, 0, 2], {"ignore_index": 2}),
    "label smoothing, weights, ignored": (
        (5, 4),
        [1, -100, 3, 0, 2],
        {"weight": [0.5, 2.0, 1.0, 0.25], "label_smoothing": 0.2},
    ),  # fmt: skip
    "N-d with ignored": ((2, 3, 4), [[0, -100, 2, 1], [2, 2, -100, 0]], {"weight": [1.0, 3.0, 0.5]}),
    "unbatched": ((4,), 3, {"weight": [0.5, 2.0, 1.0, 0.25]}),
    "every target ignored": ((3, 4), [-100, -100, -100], {}),
    "probabilities, weights, smoothing": ((3, 4), "probs", {"weight": [0.5, 2.0, 1.0, 0.25], "label_smoothing": 0.1}),
}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize(
    "case,loss",  # nll takes class indices and no label smoothing (as PyTorch)
    [(case, loss) for case in sorted(CLASS_LOSS_CASES) for loss in ("cross_entropy", "nll")
     if loss == "cross_entropy" or "probabilities" not in case and "smoothing" not in case],
)  # fmt: skip
def test_class_losses_match_pytorch(case, loss, reduction, dtype):
    """cross_entropy and nll with PyTorch's weight, ignore_index and label_smoothing: values and gradients."""
    torch = pytest.importorskip("torch")
    shape, targets, kwargs = CLASS_LOSS_CASES[case]
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape).astype(dtype) * 2
    t = rng.random(shape).astype(dtype) if targets == "probs" else np.array(targets, np.int64)
    kwargs = {k: np.array(v, dtype) if k == "weight" else v for k, v in kwargs.items()}
    tx = torch.tensor(x, requires_grad=True)
    tkw = {k: torch.tensor(v) if k == "weight" else v for k, v in kwargs.items()}
    skw = {k: slope.tensor(v) if k == "weight" else v for k, v in kwargs.items()}
    if loss == "cross_entropy":
        expected = torch.nn.functional.cross_entropy(tx, torch.tensor(t), reduction=reduction, **tkw)
        fn = lambda v: nn.cross_entropy(v, slope.tensor(t), reduction=reduction, **skw)  # noqa: E731
    else:
        log_probs = torch.log_softmax(tx, 1 if tx.ndim > 1 else 0)
        expected = torch.nn.functional.nll_loss(log_probs, torch.tensor(t), reduction=reduction, **tkw)
        fn = lambda v: nn.nll(slope.log_softmax(v, 1 if v.ndim > 1 else 0), slope.tensor(t), reduction=reduction, **skw)  # noqa: E731
    cot = rng.standard_normal(tuple(expected.shape)).astype(dtype)
    (expected * torch.tensor(cot)).sum().backward()
    grad = slope.grad(lambda v: (fn(v) * slope.tensor(cot)).sum())(slope.tensor(x))
    tol = {"float32": (2e-5, 2e-6), "float64": (1e-12, 1e-12)}[dtype]
    got = fn(slope.tensor(x)).numpy()
    np.testing.assert_allclose(got, expected.detach().numpy(), *tol)  # NaN where PyTorch's is (every target ignored)
    np.testing.assert_allclose(grad.numpy(), tx.grad.numpy(), *tol)  # (0 where every target is ignored, as PyTorch)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_class_losses_are_rounded_once(dtype):
    """float16 and bfloat16 cross_entropy and nll with class weights and label smoothing: log-probabilities, products
    and sums in float32, rounded once, so within 1 ulp of the exact value (PyTorch in float64 of the same inputs; Slope
    rounded each weight * log-probability first: up to 1.6 ulps off, 2.7 with label smoothing). PyTorch's own float16
    is no reference here: it rounds the log-probabilities (1,465 ulps off for a loss near 0, as 0.0 for 2.06e-4)."""
    torch = pytest.importorskip("torch")
    ml_dtypes = pytest.importorskip("ml_dtypes")
    functional, tdtype = torch.nn.functional, getattr(torch, dtype)
    rng = np.random.default_rng(7)
    for trial in range(12):
        n, c = int(rng.integers(1, 6)), int(rng.integers(2, 8))
        x = torch.tensor(rng.standard_normal((n, c)) * 3).to(tdtype)
        t = torch.tensor(rng.integers(0, c, n))
        t[0] = -100 if trial % 3 == 0 else t[0]
        w = torch.tensor(rng.random(c)).to(tdtype)
        half = lambda a: slope.tensor(a.float().numpy()).astype(dtype)  # noqa: E731
        for reduction in ("mean", "sum", "none"):
            for loss, smoothing in (("cross_entropy", 0.0), ("cross_entropy", 0.3), ("nll", 0.0)):
                scores = x if loss == "cross_entropy" else torch.log_softmax(x, 1)  # (nll: of float16 inputs)
                options = {"reduction": reduction, **({"label_smoothing": smoothing} if smoothing else {})}
                if loss == "cross_entropy":
                    exact = functional.cross_entropy(scores.double(), t, weight=w.double(), **options).numpy()
                else:
                    exact = functional.nll_loss(scores.double(), t, weight=w.double(), **options).numpy()
                got = getattr(nn, loss)(half(scores), slope.tensor(t.numpy()), weight=half(w), **options)
                assert got.dtype == getattr(slope, dtype)
                ulp = np.spacing(np.abs(exact).astype(np.float16 if dtype == "float16" else ml_dtypes.bfloat16))
                got = got.astype(slope.float64).numpy()
                assert np.array_equal(np.isnan(got), np.isnan(exact))  # (NaN: "mean" of every target ignored)
                off = np.abs(got - exact)[~np.isnan(exact)] / ulp[~np.isnan(exact)].astype(np.float64)
                assert np.all(off <= 1.0), (loss, smoothing, reduction, x, t, w, got, exact)


@pytest.mark.parametrize("logits_dtype,target_dtype", [("float16", "float32"), ("float16", "float64"),
                                                       ("bfloat16", "float32"), ("bfloat16", "float64"),
                                                       ("float16", "bfloat16"), ("float32", "float64")])  # fmt: skip
def test_cross_entropy_probabilities_of_another_dtype_promote(logits_dtype, target_dtype):
    """Probability targets of another float dtype: the loss in PyTorch's dtype, the promotion of the two (float16 logits
    and float32 targets: float32; it was float16, rounded), computed in it: within float32's (rtol 2e-6) or float64's
    (1e-13) rounding of the exact value, PyTorch's float64 of the same inputs. (PyTorch's own value rounds the
    log-probabilities to the logits' half dtype first: 1.6027833 for 1.5997770 with bfloat16 logits.)"""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    x = torch.tensor(rng.standard_normal((4, 5)) * 2).to(getattr(torch, logits_dtype))
    t = torch.tensor(rng.random((4, 5))).to(getattr(torch, target_dtype))
    w = torch.tensor(rng.random(5)).to(x.dtype)
    tol = 1e-13 if "float64" in (logits_dtype, target_dtype) else 2e-6  # (the result's dtype: float64 or float32)
    sx = slope.tensor(x.double().numpy()).astype(logits_dtype)
    st = slope.tensor(t.double().numpy()).astype(target_dtype)
    for options in ({}, {"reduction": "none"}, {"reduction": "sum", "label_smoothing": 0.2}, {"weight": w}):
        expected = torch.nn.functional.cross_entropy(x, t, **options)
        exact = torch.nn.functional.cross_entropy(
            x.double(), t.double(), **{k: v.double() if k == "weight" else v for k, v in options.items()}
        )
        skw = {k: slope.tensor(v.double().numpy()).astype(logits_dtype) if k == "weight" else v
               for k, v in options.items()}  # fmt: skip
        got = nn.cross_entropy(sx, st, **skw)
        assert got.dtype.name == str(expected.dtype).removeprefix("torch."), (options, got.dtype)
        np.testing.assert_allclose(got.astype(slope.float64).numpy(), exact.numpy(), rtol=tol, err_msg=str(options))
    grad = slope.grad(lambda v: nn.cross_entropy(v, st).astype(slope.float32))(sx)
    assert grad.dtype == sx.dtype


@pytest.mark.parametrize("weight_dtype", ["float16", "float32", "float64", "int64"])
@pytest.mark.parametrize("logits_dtype,target_dtype", [("float32", "float32"), ("float32", "float64"),
                                                       ("float16", "float16"), ("float64", "float32")])  # fmt: skip
def test_cross_entropy_probabilities_promote_with_the_weight(logits_dtype, target_dtype, weight_dtype):
    """Probability targets with a weight of another dtype: PyTorch promotes the three (float32 logits and targets with a
    float64 weight: float64); Slope raised a ShapeError ("weight must be a float32 tensor"). The dtype as PyTorch's,
    the value within the result's rounding (float16 5e-4, float32 2e-6, float64 1e-13) of PyTorch's float64 value."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(6)
    x = torch.tensor(rng.standard_normal((4, 5)) * 2).to(getattr(torch, logits_dtype))
    t = torch.tensor(rng.random((4, 5))).to(getattr(torch, target_dtype))
    w = torch.tensor([1, 2, 3, 1, 2]).to(getattr(torch, weight_dtype))  # (exact in every dtype)
    sx, st = (slope.tensor(a.double().numpy()).astype(a.numpy().dtype.name) for a in (x, t))
    for options in ({}, {"reduction": "none"}, {"reduction": "sum", "label_smoothing": 0.2}):
        expected = torch.nn.functional.cross_entropy(x, t, w, **options)
        exact = torch.nn.functional.cross_entropy(x.double(), t.double(), w.double(), **options)
        got = nn.cross_entropy(sx, st, slope.tensor(w.numpy()), **options)
        assert got.dtype.name == str(expected.dtype).removeprefix("torch."), (options, got.dtype)
        tol = {"float16": 5e-4, "float32": 2e-6, "float64": 1e-13}[got.dtype.name]
        np.testing.assert_allclose(got.astype(slope.float64).numpy(), exact.numpy(), rtol=tol, err_msg=str(options))


@pytest.mark.parametrize("weight_dtype", ["float16", "float64", "int64"])
@pytest.mark.parametrize("loss", ["cross_entropy", "nll"])
def test_class_index_losses_refuse_a_weight_of_another_dtype(loss, weight_dtype):
    """With class-index targets the weight must be of the input's dtype, as PyTorch ("expected scalar type Float but
    found Double"): a DTypeError naming the function and both dtypes (it was a ShapeError)."""
    torch = pytest.importorskip("torch")
    with pytest.raises(RuntimeError, match=r"expected scalar type Float but found"):
        getattr(torch.nn.functional, f"{loss}_loss" if loss == "nll" else loss)(
            torch.ones(2, 4), torch.tensor([0, 1]), torch.ones(4, dtype=getattr(torch, weight_dtype))
        )
    with pytest.raises(slope.DTypeError, match=rf"^slope\.(nn\.)?{loss}: weight must be a float32 tensor \(the "
                       rf"input's dtype, as PyTorch\) of shape \(4,\), got {weight_dtype}"):  # fmt: skip
        getattr(nn, loss)(slope.ones((2, 4)), slope.tensor([0, 1]), slope.ones(4, dtype=getattr(slope, weight_dtype)))


@pytest.mark.parametrize("target_dtype", ["int64", "int32", "bool"])
@pytest.mark.parametrize("shape", [(2, 4), (2, 4, 3), (4,)])
def test_cross_entropy_integer_probability_targets_are_refused_as_pytorch(shape, target_dtype):
    """A target of the logits' shape holds class probabilities (PyTorch's rule): an integer or bool one is an error,
    as PyTorch's "Expected floating point type for target with class probabilities" (it was read as class indices:
    "class-index targets of shape (2, 4) do not fit input of shape (2, 4)")."""
    torch = pytest.importorskip("torch")
    target = np.zeros(shape, target_dtype)
    with pytest.raises(RuntimeError, match="Expected floating point type for target with class probabilities"):
        torch.nn.functional.cross_entropy(torch.ones(shape), torch.tensor(target))
    with pytest.raises(slope.DTypeError, match=r"^slope\.cross_entropy: expected floating-point targets for class "
                       rf"probabilities .*got {target_dtype}"):  # fmt: skip
        nn.cross_entropy(slope.ones(shape), slope.tensor(target))


def test_class_loss_argument_errors():
    """A weight of the wrong shape or dtype, and the reduction passed where PyTorch takes the weight."""
    logits, target = slope.ones((2, 3)), slope.tensor([0, 2])
    with pytest.raises(slope.ShapeError, match=r"weight must be a float32 tensor of shape \(3,\)"):
        nn.cross_entropy(logits, target, weight=slope.ones(4))
    with pytest.raises(slope.DTypeError, match="got float64"):
        nn.nll(logits, target, weight=slope.ones(3, dtype=slope.float64))
    with pytest.raises(TypeError, match="pass reduction= by keyword"):
        nn.cross_entropy(logits, target, "sum")
    with pytest.raises(IndexError, match="cross_entropy: indices range from 5 to 5"):
        nn.cross_entropy(logits, slope.tensor([5, -100]))


@pytest.mark.parametrize("bad", [3, -1, -101])
@pytest.mark.parametrize("loss", ["cross_entropy", "nll"])
def test_class_targets_out_of_range_under_jit_are_errors(loss, bad):
    """A traced target outside [0, classes) (negative ones too, unless the ignore_index) raises IndexError when the
    program runs, as PyTorch does, instead of adding nothing to the loss (a wrong number)."""
    fn = nn.cross_entropy if loss == "cross_entropy" else nn.nll
    step = slope.jit(lambda x, t: fn(x, t))
    x = slope.tensor(np.zeros((2, 3), np.float32))
    assert np.isfinite(step(x, slope.tensor([2, -100])).numpy())
    name = r"slope\.cross_entropy" if loss == "cross_entropy" else r"slope\.nn\.nll"  # (it named take_along_dim)
    with pytest.raises(IndexError, match=name + r": an index is out of range; expected 0 to 2 for input of shape"):
        step(x, slope.tensor([bad, 0])).numpy()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_class_targets_with_no_classes_under_jit_give_nan(reduction):
    """Logits with no classes leave nothing to pick: PyTorch raises for a target that is not ignored, and a jitted
    Slope loss (whose run-time check needs a class to gather from) gives NaN there, never a finite number; ignored
    targets give PyTorch's values (0 each, summed 0, a mean over none NaN: they were NaN for every reduction)."""
    step = slope.jit(lambda x, t: nn.cross_entropy(x, t, reduction=reduction))
    x = slope.tensor(np.zeros((2, 0), np.float32))
    for target in ([1, 0], [-100, 1]):
        got = step(x, slope.tensor(target)).numpy()
        assert np.isnan(got[1:] if reduction == "none" else got).all()
    expected = {"none": [0.0, 0.0], "sum": 0.0, "mean": np.nan}[reduction]  # PyTorch 2.13's values
    np.testing.assert_array_equal(np.abs(step(x, slope.tensor([-100, -100])).numpy()), np.float32(expected))


@pytest.mark.parametrize("bad", [3, -1])
@pytest.mark.parametrize("what", ["one_hot", "embedding", "scatter_add"])
def test_indices_out_of_range_under_jit_are_errors(what, bad):
    """one_hot, nn.Embedding and scatter_add with a traced index outside [0, size): an IndexError when the program
    runs, as in PyTorch (one_hot gave a row of zeros, Embedding and scatter_add counted -1 from the end: wrong numbers
    without an error)."""
    table = nn.Embedding(3, 2, key=slope.random.key(0))
    calls = {
        "one_hot": lambda i: nn.functional.one_hot(i, 3),
        "embedding": table,
        "scatter_add": lambda i: slope.scatter_add(slope.zeros(3), 0, i, slope.ones(2)),
    }
    fn = slope.jit(calls[what])
    assert np.isfinite(fn(slope.tensor([2, 0])).numpy()).all()
    named = {"one_hot": r"slope\.one_hot: an index is out of range; expected 0 to 2 for 3 classes"}  # (take_along_dim)
    with pytest.raises(IndexError, match=named.get(what, "out of")):
        fn(slope.tensor([bad, 0])).numpy()


def test_bce_with_logits_keeps_its_curvature_far_from_0():
    # softplus's threshold (20) made the loss linear beyond |x| = 20: its second derivative was 0 (exact:
    # sigmoid(x) sigmoid(-x), 9.36e-14 at +-30, whatever the target), the gradient at 30 was 1.0, not 1 - 9.4e-14
    torch = pytest.importorskip("torch")
    x, t = np.array([-30.0, 30.0, 25.0, -40.0]), np.array([1.0, 0.0, 0.3, 0.0])

    def loss(v):
        return nn.binary_cross_entropy_with_logits(v, slope.tensor(t), reduction="sum")

    hessian = np.diag(slope.hessian(loss)(slope.tensor(x)).numpy())
    exact = 1 / (1 + np.exp(-x)) / (1 + np.exp(x))
    np.testing.assert_allclose(hessian, exact, rtol=1e-10)
    tx = torch.tensor(x, requires_grad=True)
    torch.nn.functional.binary_cross_entropy_with_logits(tx, torch.tensor(t), reduction="sum").backward()
    np.testing.assert_allclose(slope.grad(loss)(slope.tensor(x)).numpy(), tx.grad.numpy(), rtol=1e-15)


def test_gelu_tanh_second_derivative_keeps_its_tail():
    # 1 - tanh^2 cancelled where tanh rounds to 1: the second derivative at 7 was 0 (exact -3.23e-13)
    second = slope.grad(lambda v: slope.grad(lambda w: nn.functional.gelu(w, approximate="tanh").sum())(v).sum())
    got = second(slope.tensor([7.0, -7.0], dtype=slope.float64)).numpy()
    np.testing.assert_allclose(got, [-3.232e-13, -3.232e-13], rtol=3e-2)  # (onnxruntime's float64 tanh: 1.3%)


def test_narrow_integer_targets_and_indices_are_compared_as_int64():
    # uint8 targets compared with ignore_index -100 in uint8 (156: class 156 was ignored) and int8 classes beyond 127
    # wrapped onto -100; an Embedding's uint8 indices compared with padding_idx 300 in uint8 (row 44's gradient was 0)
    x = slope.tensor(np.random.default_rng(0).standard_normal((3, 200)).astype(np.float32))
    wide = slope.tensor(np.array([156, 3, 199]))
    for narrow in (wide.astype(slope.uint8), slope.tensor(np.array([-100, 3, 120], np.int8))):
        expected = nn.cross_entropy(x, narrow.astype(slope.int64), reduction="none").numpy()
        for loss in (nn.cross_entropy, slope.jit(nn.cross_entropy, static_argnames="reduction")):
            np.testing.assert_allclose(loss(x, narrow, reduction="none").numpy(), expected, rtol=1e-6)
            assert (
                nn.nll(slope.log_softmax(x, 1), narrow).item()
                == nn.nll(slope.log_softmax(x, 1), narrow.astype("int64")).item()
            )
    embedding = nn.Embedding(301, 2, padding_idx=300)
    rows = slope.tensor(np.array([44, 1, 44], np.uint8))
    assert slope.grad(lambda m: m(rows).sum())(embedding).weight.numpy()[44].tolist() == [2.0, 2.0]


def test_loss_class_weights_are_buffers_and_dropout_keeps_nan():
    weight = slope.tensor(np.array([1.0, 2.0, 3.0, 4.0], np.float32))
    for loss in (nn.CrossEntropyLoss(weight=weight), nn.NLLLoss(weight=weight)):
        assert [name for name, _ in loss.named_parameters()] == [] and "weight" in loss.state_dict()
    # a dropped NaN or inf stays NaN, as PyTorch's mask product gives (a where gave 0, hiding a diverging activation)
    x = slope.tensor(np.array([np.nan, np.inf] * 16, np.float32))
    for dropped in (nn.dropout(x, 0.5, key=slope.random.key(1)), nn.Dropout(0.5)(x)):
        values = dropped.numpy()
        assert not (values == 0).any() and np.isnan(values).sum() > 0
    q = slope.tensor(np.full((1, 4, 2), np.nan, np.float32))
    attended = slope.scaled_dot_product_attention(q, q, q, dropout_p=0.5, key=slope.random.key(2))
    assert np.isnan(attended.numpy()).all()


def test_bce_modules_take_pytorchs_weight_and_pos_weight():
    torch = pytest.importorskip("torch")
    g = np.random.default_rng(5)
    x, t = g.standard_normal((4, 3)).astype(np.float32), (g.random((4, 3)) > 0.5).astype(np.float32)
    w, pw = np.array([1.0, 2.0, 0.5], np.float32), np.array([3.0, 1.0, 0.25], np.float32)
    expected = torch.nn.BCEWithLogitsLoss(torch.tensor(w), pos_weight=torch.tensor(pw))(
        torch.tensor(x), torch.tensor(t)
    )
    loss = nn.BCEWithLogitsLoss(slope.tensor(w), pos_weight=slope.tensor(pw))
    np.testing.assert_allclose(loss(slope.tensor(x), slope.tensor(t)).item(), expected.item(), rtol=1e-6)
    p = 1 / (1 + np.exp(-x))
    expected = torch.nn.BCELoss(torch.tensor(w), reduction="sum")(torch.tensor(p), torch.tensor(t))
    got = nn.BCELoss(slope.tensor(w), reduction="sum")(slope.tensor(p), slope.tensor(t))
    np.testing.assert_allclose(got.item(), expected.item(), rtol=1e-5)
    assert [n for n, _ in loss.named_parameters()] == [] and set(loss.state_dict()) == {"weight", "pos_weight"}
    with pytest.raises(TypeError, match="first argument is weight .* pass reduction='sum'"):
        nn.BCELoss("sum")


def test_binary_cross_entropy_forward_mode_at_saturated_probabilities():
    """At p = 0 or 1 with a constant target, jvp and jacfwd gave NaN (the target's zero tangent times log1p(-p) -
    log(p), infinite there) where torch.func.jvp and reverse mode are finite; and hessian(bce ** 2), whose outer
    forward mode now sees the rule, was asymmetric (1.67 and 0; PyTorch: 0 and 0)."""
    torch = pytest.importorskip("torch")
    p, t = [0.3, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.5]
    f = lambda q: nn.binary_cross_entropy(q, slope.tensor(t), reduction="none")  # noqa: E731
    tf = lambda q: torch.nn.functional.binary_cross_entropy(q, torch.tensor(t), reduction="none")  # noqa: E731
    want = torch.func.jvp(tf, (torch.tensor(p),), (torch.ones(4),))[1].numpy()
    assert np.isfinite(want).all()
    np.testing.assert_allclose(slope.jvp(f, (slope.tensor(p),), (slope.ones(4),))[1].numpy(), want, rtol=1e-6)
    np.testing.assert_allclose(slope.jacfwd(f)(slope.tensor(p)).numpy().diagonal(), want, rtol=1e-6)
    np.testing.assert_allclose(slope.jacrev(f)(slope.tensor(p)).numpy().diagonal(), want, rtol=1e-6)
    square = lambda q: nn.binary_cross_entropy(q, slope.tensor([1.0, 1.0])) ** 2  # noqa: E731
    hessian = slope.hessian(square)(slope.tensor([0.3, 1.0])).numpy()
    tsquare = lambda q: torch.nn.functional.binary_cross_entropy(q, torch.tensor([1.0, 1.0])) ** 2  # noqa: E731
    want = torch.func.hessian(tsquare)(torch.tensor([0.3, 1.0])).numpy()
    np.testing.assert_allclose(hessian, want, rtol=1e-5)  # (H[1, 1] at p = 1: PyTorch's 0; the clamp's was 6e11)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_binary_cross_entropy_hessian_is_torch_funcs_near_0_and_1(dtype):
    """The second derivative is PyTorch's double backward, (p^2 - 2pt + t) / ((p + 1e-12)^2 (1 - p + 1e-12)^2) in p
    and -1 / max(p (1 - p), 1e-12) in p and t: for p below 1e-12 it was the clamped quotient's 1 / 1e-12 (p = 1e-13,
    t = 0: 1e12; PyTorch 0.0083, exact 1), and likewise above 1 - 1e-12 (p = 1, t = 1: 1e12; PyTorch 0).
    torch.func.hessian, rtol 1e-6 in float32 and 1e-12 in float64."""
    torch = pytest.importorskip("torch")
    rtol = {"float32": 1e-6, "float64": 1e-12}[dtype]
    ps = [1e-13, 0.0, 1.0, 0.3, 1e-10] + ([1 - 1e-13] if dtype == "float64" else [])
    for p in ps:
        for t in (0.0, 1.0, 0.3):
            x = np.array([p, 0.4], dtype)
            tt = np.array([t, 0.5], dtype)
            got = slope.hessian(lambda v, tt=tt: nn.binary_cross_entropy(v, slope.tensor(tt)))(slope.tensor(x)).numpy()
            tf = lambda v, tt=tt: torch.nn.functional.binary_cross_entropy(v, torch.tensor(tt))  # noqa: E731
            np.testing.assert_allclose(got, torch.func.hessian(tf)(torch.tensor(x)).numpy(), rtol=rtol, err_msg=f"{p}")
    both = np.array([1e-13, 0.0], dtype)  # (p, t) together: the mixed entries, -1e12 and -1e13 as PyTorch's
    got = slope.hessian(lambda v: nn.binary_cross_entropy(v[:1], v[1:], reduction="sum"))(slope.tensor(both))
    tf = lambda v: torch.nn.functional.binary_cross_entropy(v[:1], v[1:], reduction="sum")  # noqa: E731
    np.testing.assert_allclose(got.numpy(), torch.func.hessian(tf)(torch.tensor(both)).numpy(), rtol=rtol)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("weighted", ["plain", "weight", "pos_weight", "both"])
def test_bce_with_logits_target_gradient_is_exact_as_pytorch(weighted, reduction, dtype):
    """d/d target is -x (PyTorch's), with pos_weight -x + (pos_weight - 1) softplus(-x) (PyTorch's log_sigmoid(-x) -
    pos_weight log_sigmoid(x) rewritten): it was the difference of two softplus values, which cancels for small |x|
    (float32 x = 1e-5: -1.00136e-5 for -1e-5; x = 1e-20: 0). Values and the logits' gradient against PyTorch's in
    float64 (float32 within 2e-6, float64 within 1e-12, relative), the target's gradient within those of its terms'
    magnitudes |x| + |pos_weight - 1| softplus(-x)."""
    torch = pytest.importorskip("torch")
    g = np.random.default_rng(7)
    x = np.array([[1e-5, 1e-20, -3e-4, 2.0, -1e-30, 5e-8], [-9.0, 9.0, 0.0, 1e-3, -0.7, 3.0]], dtype)
    t, w = g.random(x.shape).astype(dtype), g.random(x.shape[-1:]).astype(dtype) + 0.5
    pw = np.array([3.0, 1.0, 0.25, 0.5, 2.0, 1.5], dtype)
    w, pw = (w if weighted in ("weight", "both") else None), (pw if weighted in ("pos_weight", "both") else None)

    def ours(xs, ts):
        extra = {k: None if v is None else slope.tensor(v) for k, v in (("weight", w), ("pos_weight", pw))}
        return nn.binary_cross_entropy_with_logits(xs, ts, reduction=reduction, **extra)

    tx, tt = (torch.tensor(v.astype(np.float64), requires_grad=True) for v in (x, t))
    extra = {
        k: None if v is None else torch.tensor(v.astype(np.float64)) for k, v in (("weight", w), ("pos_weight", pw))
    }
    expected = torch.nn.functional.binary_cross_entropy_with_logits(tx, tt, reduction=reduction, **extra)
    expected_x, expected_t = torch.autograd.grad(expected.sum(), (tx, tt))
    value = ours(slope.tensor(x), slope.tensor(t))
    grad_x, grad_t = slope.grad(lambda a, b: ours(a, b).sum(), argnums=(0, 1))(slope.tensor(x), slope.tensor(t))
    rtol = 2e-6 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(value.numpy(), expected.detach().numpy(), rtol=rtol, atol=rtol * 1e-2)
    np.testing.assert_allclose(grad_x.numpy(), expected_x.numpy(), rtol=rtol, atol=rtol * 1e-2)
    x64, factor = x.astype(np.float64), (1.0 if w is None else w) / (x.size if reduction == "mean" else 1)
    if (
        pw is not None
    ):  # (PyTorch's own, log_sigmoid(-x) - pos_weight log_sigmoid(x), cancels too: 0 at 1e-20 in float64)
        expected_t = (-x64 + (pw - 1.0) * np.logaddexp(0.0, -x64)) * factor
    scale = (np.abs(x64) + np.abs((1.0 if pw is None else pw) - 1.0) * np.logaddexp(0.0, -x64)) * factor
    error = np.abs(grad_t.numpy().astype(np.float64) - np.asarray(expected_t))
    assert (error <= rtol * scale).all(), (grad_t.numpy(), expected_t.numpy())


@pytest.mark.parametrize("what", ["target", "input", "nan input"])
@pytest.mark.parametrize("how", ["eager", "grad", "jvp", "jit", "vmap", "jit_grad", "jit_value_and_grad", "vmap_grad"])
def test_binary_cross_entropy_out_of_range_is_one_clear_error_in_every_mode(how, what):
    """binary_cross_entropy with a target (labels 0..9 by mistake) or input outside [0, 1] (or NaN): PyTorch's error,
    "all elements of input/target should be between 0 and 1", as a ValueError naming the function in every mode: when
    called where the values are known, as the program runs where they are traced. Under eager grad, jit, vmap it was
    an IndexError naming take_along_dim (before that, a finite, meaningless loss and gradient); in range, the values
    and gradients are PyTorch's."""
    torch = pytest.importorskip("torch")
    good_p, good_t = np.array([0.3, 0.6], np.float32), np.array([0.0, 1.0], np.float32)
    bad = {
        "target": (good_p, np.array([2.0, 5.0], np.float32)),
        "input": (np.array([0.5, 1.5], np.float32), good_t),
        "nan input": (np.array([0.5, np.nan], np.float32), good_t),
    }
    grad = slope.grad(nn.binary_cross_entropy)
    transforms = {
        "eager": nn.binary_cross_entropy,
        "grad": grad,
        "jvp": lambda p, t: slope.jvp(lambda q: nn.binary_cross_entropy(q, t), (p,), (slope.ones_like(p),))[1],
        "jit": slope.jit(nn.binary_cross_entropy),
        "vmap": slope.vmap(nn.binary_cross_entropy),
        "jit_grad": slope.jit(grad),
        "jit_value_and_grad": slope.jit(lambda p, t: slope.value_and_grad(nn.binary_cross_entropy)(p, t)[1]),
        "vmap_grad": slope.vmap(grad),
    }
    fn = transforms[how]
    tp = torch.tensor(good_p, requires_grad=True)
    reference = torch.nn.functional.binary_cross_entropy(tp, torch.tensor(good_t), reduction="none")
    (gradient,) = torch.autograd.grad(reference.mean(), tp)
    expected = {"eager": reference.mean(), "jit": reference.mean(), "vmap": reference, "jvp": gradient.sum()}
    expected = expected.get(how, gradient * 2 if how == "vmap_grad" else gradient)  # (vmap: each example's mean)
    got = fn(slope.tensor(good_p), slope.tensor(good_t)).numpy()
    np.testing.assert_allclose(got, expected.detach().numpy(), rtol=2e-6)
    name = what.split()[-1]
    with pytest.raises(RuntimeError, match=f"all elements of {name} should be between 0 and 1"):
        torch.nn.functional.binary_cross_entropy(*(torch.tensor(v) for v in bad[what]))
    with pytest.raises(ValueError, match=f"^slope.nn.binary_cross_entropy: all elements of {name} should be between 0 "
                                         "and 1 \\(as PyTorch\\)"):  # fmt: skip
        fn(*(slope.tensor(v) for v in bad[what])).numpy()


def test_two_checked_losses_of_one_shape_in_one_jitted_program():
    """A GAN discriminator's loss: two binary_cross_entropy calls on the same shapes in one jitted step. Their range
    checks had nodes of one name on onnxruntime, which refuses such a model ("two nodes with same node name"); the
    values and gradients are PyTorch's, and a bad target in either still raises."""
    torch = pytest.importorskip("torch")
    real, fake = np.array([[0.9], [0.7]], np.float32), np.array([[0.2], [0.4]], np.float32)

    def loss(r, f, t1, t0):
        return nn.binary_cross_entropy(r, t1) + nn.binary_cross_entropy(f, t0)

    ones, zeros = slope.ones((2, 1)), slope.zeros((2, 1))
    value, grads = slope.jit(slope.value_and_grad(loss, argnums=(0, 1)))(slope.tensor(real), slope.tensor(fake), ones,
                                                                           zeros)  # fmt: skip
    tr, tf = torch.tensor(real, requires_grad=True), torch.tensor(fake, requires_grad=True)
    bce = torch.nn.functional.binary_cross_entropy
    expected = bce(tr, torch.ones(2, 1)) + bce(tf, torch.zeros(2, 1))
    np.testing.assert_allclose(value.numpy(), expected.item(), rtol=1e-6)
    for got, want in zip(grads, torch.autograd.grad(expected, (tr, tf))):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="all elements of target should be between 0 and 1"):
        slope.jit(loss)(slope.tensor(real), slope.tensor(fake), ones, slope.full((2, 1), 2.0)).numpy()


def test_nll_of_0d_log_probabilities_is_a_shape_error():
    """nn.nll / NLLLoss with 0-d log-probabilities raised IndexError ("tuple index out of range"); PyTorch: "Expected 1
    or more dimensions (got 0)"; the error cross_entropy gives."""
    for fn in (nn.nll, nn.NLLLoss()):
        with pytest.raises(
            slope.ShapeError, match="nn.nll: expected log-probabilities with a class dimension, got a 0-d"
        ):
            fn(slope.tensor(1.0), slope.tensor(0))


@pytest.mark.parametrize("logits_shape", [(3, 4), (2, 4, 5), (4,)])
def test_cross_entropy_of_float_class_indices_says_they_must_be_integers(logits_shape):
    """Float labels of the class-index shape: the error spoke of probability targets ("probability targets (3,) must
    match logits (3, 4)"); PyTorch: "expected target dtype to be Long"."""
    torch = pytest.importorskip("torch")
    indices_shape = logits_shape[:1] + logits_shape[2:] if len(logits_shape) > 1 else ()
    target = np.zeros(indices_shape, np.float32)
    with pytest.raises(RuntimeError, match="expected"):
        torch.nn.functional.cross_entropy(torch.ones(logits_shape), torch.tensor(target))
    with pytest.raises(slope.DTypeError, match="class-index targets .* must be integers, got float32"):
        nn.cross_entropy(slope.ones(logits_shape), slope.tensor(target))


def test_binary_cross_entropies_ask_for_reduction_by_keyword():
    """binary_cross_entropy(x, t, "sum"): PyTorch's third argument is weight; the error was slope.tensor's "cannot make
    a tensor from str", where cross_entropy and nll say "pass reduction= by keyword"."""
    p, t = slope.tensor([0.2, 0.7]), slope.tensor([0.0, 1.0])
    calls = {
        "binary_cross_entropy: weight": lambda: nn.binary_cross_entropy(p, t, "sum"),
        "binary_cross_entropy_with_logits: weight": lambda: nn.binary_cross_entropy_with_logits(p, t, "sum"),
        "binary_cross_entropy_with_logits: pos_weight": lambda: nn.binary_cross_entropy_with_logits(p, t, None, "sum"),
    }
    for what, call in calls.items():
        with pytest.raises(TypeError, match=f"nn.{what} must be a tensor, got 'sum': pass reduction= by keyword"):
            call()
