"""Bad input as a PyTorch or JAX user would pass it (issue 10, point 15), one row per call, on every backend.

A row is a call written once for a module `m`: it runs with `m = slope` and, as the reference, with `m = torch`
(or a separate PyTorch call, or none for JAX-style transforms). A `bad` row must raise the given exception type
with a message that names the function the user called; PyTorch must reject the call too. An `ok` row is one
PyTorch accepts: Slope must accept it as well and give PyTorch's values and dtype.

`python tests/test_bad_input.py` counts, per backend, how the rows fare (good / raw library or Python error /
silently accepted / a Slope error naming the wrong function or of the wrong type).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pytest

import slope
from slope import DTypeError, ShapeError, TransformError
from slope_testing import backends_under_test

BACKENDS = backends_under_test()
SAME = "same"  # the reference is the same call with m = torch


@dataclass
class Row:
    """One call: what it must raise (None: it must succeed) and what the message must contain."""

    id: str
    call: Callable[[Any], Any]
    error: type[BaseException] | None
    fragment: str
    reference: Any  # SAME, a callable taking torch, or None (no PyTorch equivalent)
    waits_for: str = ""  # the helper whose fix this row needs (the row is xfail until it lands)


def bad(id: str, call: Callable, error: type, fragment: str, reference: Any = SAME, waits_for: str = "") -> Row:
    return Row(id, call, error, fragment, reference, waits_for)


def ok(id: str, call: Callable, reference: Any = SAME, waits_for: str = "") -> Row:
    return Row(id, call, None, "", reference, waits_for)


def x23(m):
    return m.arange(6.0).reshape(2, 3)


def image(m):
    return m.ones(1, 1, 4, 4)


def kernel(m):
    return m.ones(1, 1, 2, 2)


def key():
    return slope.random.key(0)


def f_sum(x, y=None):
    return (x * x).sum()


def _linearized(tangent):
    _, f_jvp = slope.linearize(lambda x: x * 2.0, slope.ones(3))
    return f_jvp(tangent)


def _jit_index(i):
    return slope.jit(lambda x, i: x[i])(slope.arange(6.0), slope.tensor(i))


ROWS = [
    # ------------------------------------------------------------------------------------------- tensor creation
    bad("zeros-str", lambda m: m.zeros("a"), TypeError, "slope.zeros"),
    bad("zeros-float", lambda m: m.zeros(2.5), TypeError, "slope.zeros"),
    bad("zeros-none", lambda m: m.zeros(None), TypeError, "slope.zeros"),
    bad("zeros-bool", lambda m: m.zeros(True), TypeError, "slope.zeros"),
    bad("zeros-negative", lambda m: m.zeros(-1), ValueError, "slope.zeros"),
    bad("zeros-list-with-str", lambda m: m.zeros([2, "a"]), TypeError, "slope.zeros"),
    bad("ones-float-in-tuple", lambda m: m.ones((2, 2.5)), TypeError, "slope.ones"),
    bad("ones-negative-in-tuple", lambda m: m.ones((2, -3)), ValueError, "slope.ones"),
    ok("zeros-numpy-int", lambda m: m.zeros(np.int64(3))),
    bad("zeros_like-none", lambda m: m.zeros_like(None), TypeError, "NoneType"),  # (AttributeError: no .shape)
    bad("expand_as-str", lambda m: x23(m).expand_as("a"), TypeError, "str"),
    ok("zeros-0d", lambda m: m.zeros(())),
    bad("full-negative", lambda m: m.full((2, -1), 1.0), ValueError, "slope.full"),
    bad("full-shape-float", lambda m: m.full(2.5, 1.0), TypeError, "slope.full"),
    bad("full-value-str", lambda m: m.full((2,), "a"), TypeError, "slope.full"),
    bad("full-int32-overflow", lambda m: m.full((2,), 2**40, dtype=m.int32), ValueError, "slope.full"),
    bad("full-int8-overflow", lambda m: m.full((2,), 200, dtype=m.int8), ValueError, "slope.full"),
    bad("full-int-nan", lambda m: m.full((2,), math.nan, dtype=m.int64), ValueError, "slope.full"),
    ok("full-float-into-int", lambda m: m.full((2,), 1.5, dtype=m.int64)),
    ok("full-int64-max", lambda m: m.full((2,), 2**63 - 1, dtype=m.int64)),
    bad("full-like-str", lambda m: m.full_like(m.ones(3), "a"), TypeError, "slope.full_like"),
    bad("tensor-2**63", lambda m: m.tensor(2**63), ValueError, "slope.tensor"),
    bad("tensor-list-2**63", lambda m: m.tensor([1, 2**63]), ValueError, "slope.tensor"),
    bad("tensor-uint8-300", lambda m: m.tensor([300], dtype=m.uint8), ValueError, "slope.tensor"),
    bad("tensor-int32-2**40", lambda m: m.tensor(2**40, dtype=m.int32), ValueError, "slope.tensor"),
    bad("tensor-int-nan", lambda m: m.tensor(math.nan, dtype=m.int64), ValueError, "slope.tensor"),
    bad("tensor-int-inf", lambda m: m.tensor(math.inf, dtype=m.int64), ValueError, "slope.tensor"),
    bad("tensor-none", lambda m: m.tensor(None), TypeError, "slope.tensor"),
    ok("tensor-float-into-int", lambda m: m.tensor([1.5, -2.5], dtype=m.int64)),
    ok("tensor-empty", lambda m: m.tensor([])),
    ok("tensor-int64-max", lambda m: m.tensor([2**63 - 1, -(2**63)])),
    bad("arange-inf", lambda m: m.arange(math.inf), ValueError, "slope.arange"),
    bad("arange-nan", lambda m: m.arange(math.nan), ValueError, "slope.arange"),
    bad("arange-stop-nan", lambda m: m.arange(0, math.nan), ValueError, "slope.arange"),
    bad("arange-str", lambda m: m.arange("a"), ValueError, "slope.arange"),
    bad("arange-none", lambda m: m.arange(None), ValueError, "slope.arange"),
    bad("arange-wrong-sign", lambda m: m.arange(0, 10, -1), ValueError, "slope.arange"),
    bad("arange-wrong-sign-up", lambda m: m.arange(10, 0, 2), ValueError, "slope.arange"),
    ok("arange-equal-ends", lambda m: m.arange(5, 5, -1)),
    ok("arange-infinite-step", lambda m: m.arange(0, 5, math.inf)),  # no point after the first: empty, as PyTorch
    ok("arange-infinite-step-equal-ends", lambda m: m.arange(0.5, 0.5, -math.inf)),
    bad("arange-infinite-step-wrong-sign", lambda m: m.arange(0, 5, -math.inf), ValueError, "slope.arange"),
    ok("arange-float-step", lambda m: m.arange(0, 1, 0.25)),
    ok("arange-negative-step", lambda m: m.arange(5, 0, -2)),
    bad("linspace-nan-steps", lambda m: m.linspace(0, 1, math.nan), TypeError, "slope.linspace"),
    bad("linspace-float-steps", lambda m: m.linspace(0, 1, 2.5), TypeError, "slope.linspace"),
    bad("linspace-negative-steps", lambda m: m.linspace(0, 1, -1), ValueError, "slope.linspace"),
    ok("linspace-zero-steps", lambda m: m.linspace(0, 1, 0)),
    ok("linspace-one-step", lambda m: m.linspace(2, 5, 1)),
    ok("linspace-zero-steps-start-beyond-dtype", lambda m: m.linspace(1000.0, 0, 0, dtype=m.int8)),  # no point
    bad("linspace-one-step-beyond-dtype", lambda m: m.linspace(1000.0, 0, 1, dtype=m.int8), ValueError, "linspace"),
    bad("eye-negative", lambda m: m.eye(-1), ValueError, "slope.eye"),
    bad("eye-negative-columns", lambda m: m.eye(2, -1), ValueError, "slope.eye"),
    bad("eye-float", lambda m: m.eye(2.5), TypeError, "slope.eye"),
    bad("eye-str", lambda m: m.eye("a"), TypeError, "slope.eye"),
    ok("eye-zero", lambda m: m.eye(0)),
    ok("eye-rectangular", lambda m: m.eye(2, 3)),
    # ------------------------------------------------------------------------------------------- random
    bad("randn-negative", lambda m: m.randn(-1), ValueError, "slope.randn"),
    bad("randn-float", lambda m: m.randn(2.5), TypeError, "slope.randn"),
    bad("randn-str", lambda m: m.randn("a"), TypeError, "slope.randn"),
    bad("rand-none", lambda m: m.rand(None), TypeError, "slope.rand"),
    bad("rand-negative-in-tuple", lambda m: m.rand((2, -1)), ValueError, "slope.rand"),
    bad("randint-empty-range", lambda m: m.randint(5, 2, (2,)), ValueError, "randint"),
    bad("randint-negative-size", lambda m: m.randint(0, 5, (-1,)), ValueError, "randint"),
    bad("randint-float-high", lambda m: m.randint(0, 5.5, (2,)), TypeError, "randint"),
    bad("randint-int32-overflow", lambda m: m.randint(0, 2**40, (2,), dtype=m.int32), ValueError, "randint"),
    bad("random-normal-negative", lambda m: slope.random.normal(key(), (-1,)), ValueError, "slope.random.normal",
        None),
    bad("random-uniform-float-shape", lambda m: slope.random.uniform(key(), (2.5,)), TypeError,
        "slope.random.uniform", None),
    bad("random-split-negative", lambda m: slope.random.split(key(), -1), ValueError, "slope.random.split", None),
    bad("random-split-float", lambda m: slope.random.split(key(), 2.5), TypeError, "slope.random.split", None),
    bad("random-key-str", lambda m: slope.random.key("a"), TypeError, "slope.random.key", None),
    bad("random-key-float", lambda m: slope.random.key(2.5), TypeError, "slope.random.key", None),
    bad("random-key-2**64", lambda m: slope.random.key(2**64), OverflowError, "slope.random.key", None),  # (was key(0))
    bad("random-key-below-int64", lambda m: slope.random.key(-(2**63) - 1), OverflowError, "slope.random.key", None),
    bad("manual-seed-2**64", lambda m: m.manual_seed(2**64), OverflowError, "slope.manual_seed",
        lambda torch: torch.manual_seed(2**64)),
    bad("random-permutation-negative", lambda m: slope.random.permutation(key(), -1), ValueError,
        "slope.random.permutation", None),
    bad("random-randint-float-shape", lambda m: slope.random.randint(key(), (2.5,), 0, 3), TypeError,
        "slope.random.randint", None),
    # ------------------------------------------------------------------------------------------- elementwise
    ok("maximum-bool", lambda m: m.maximum(m.tensor([True, False]), m.tensor([False, False]))),
    ok("minimum-bool", lambda m: m.minimum(m.tensor([True, False]), m.tensor([True, True]))),
    bad("minimum-str", lambda m: m.minimum(m.ones(3), "a"), TypeError, "slope.minimum"),
    bad("minimum-shapes", lambda m: m.minimum(m.ones(2), m.ones(3)), ShapeError, "slope.minimum"),
    bad("maximum-shapes", lambda m: m.maximum(m.ones(2), m.ones(3)), ShapeError, "slope.maximum"),
    bad("clip-str", lambda m: m.clip(m.ones(3), "a"), TypeError, "slope.clip"),
    bad("clip-shapes", lambda m: m.clip(m.ones(3), max=m.ones(2)), ShapeError, "slope.clip"),
    bad("where-str", lambda m: m.where(m.ones(3) > 0, m.ones(3), "a"), TypeError, "slope.where"),
    bad("pow-str", lambda m: m.ones(3) ** "a", TypeError, "slope.pow"),
    bad("true-divide-shapes", lambda m: m.ones(2) / m.ones(3), ShapeError, "slope.div"),
    bad("floor-divide-str", lambda m: m.ones(3) // "a", TypeError, "slope.floor_divide"),
    bad("remainder-shapes", lambda m: m.ones(2) % m.ones(3), ShapeError, "slope.remainder"),
    # bools: both named slope.fmod, which the user never called (PyTorch: "div_floor_cpu" / "remainder_cpu" not
    # implemented for 'Bool'); an integer by a bool number is fine in both
    bad("floor-divide-bools", lambda m: m.tensor([True, False]) // m.tensor([True, True]), DTypeError,
        "slope.floor_divide: expected numbers, got a bool tensor"),
    bad("floor-divide-bool-by-true", lambda m: m.floor_divide(m.tensor([True, False]), True), DTypeError,
        "slope.floor_divide"),
    bad("remainder-bools", lambda m: m.tensor([True, False]) % m.tensor([True, True]), DTypeError,
        "slope.remainder: expected numbers, got a bool tensor"),
    ok("floor-divide-int-by-true", lambda m: m.tensor([1, 2]) // True),
    ok("remainder-int-by-true", lambda m: m.tensor([1, 2]) % True),
    bad("invert-float", lambda m: ~m.ones(3), DTypeError, "slope.invert"),
    bad("logical-and-shapes", lambda m: m.logical_and(m.ones(2), m.ones(3)), ShapeError, "slope.logical_and"),
    bad("logical-or-shapes", lambda m: m.logical_or(m.ones(2), m.ones(3)), ShapeError, "slope.logical_or"),
    bad("not-equal-shapes", lambda m: m.ones(2) != m.ones(3), ShapeError, "slope.not_equal"),
    bad("less-equal-shapes", lambda m: m.ones(2) <= m.ones(3), ShapeError, "slope.less_equal"),
    bad("greater-equal-str", lambda m: m.ones(2) >= "a", TypeError, "slope.greater_equal"),
    bad("sub-bool", lambda m: m.tensor([True]) - m.tensor([True]), TypeError, "slope.sub"),
    bad("neg-bool", lambda m: -m.tensor([True]), TypeError, "slope.neg"),
    ok("int32-plus-big-int", lambda m: m.ones(3, dtype=m.int32) + 2**40),
    ok("uint8-plus-300", lambda m: m.ones(3, dtype=m.uint8) + 300),
    ok("int8-times-1000", lambda m: m.ones(3, dtype=m.int8) * 1000),
    ok("log-of-bool", lambda m: m.tensor([True, False]).log()),
    ok("matmul-int", lambda m: m.ones(2, 2, dtype=m.int64) @ m.ones(2, 2, dtype=m.int64)),
    bad("matmul-bool-vectors", lambda m: m.tensor([True]) @ m.tensor([True]), DTypeError, "slope.matmul"),
    # ------------------------------------------------------------------------------------------- reductions
    bad("sum-dim-str", lambda m: x23(m).sum(dim="a"), TypeError, "slope.sum"),
    bad("sum-dim-float", lambda m: x23(m).sum(dim=1.5), TypeError, "slope.sum"),
    bad("sum-dim-bool", lambda m: x23(m).sum(dim=True), TypeError, "slope.sum"),
    bad("sum-dim-repeated", lambda m: x23(m).sum(dim=(0, 0)), ValueError, "slope.sum"),
    bad("sum-dim-repeated-negative", lambda m: x23(m).sum(dim=(0, -2)), ValueError, "slope.sum"),
    bad("sum-dim-list-with-none", lambda m: x23(m).sum(dim=[0, None]), TypeError, "slope.sum"),
    ok("sum-dim-empty", lambda m: x23(m).sum(dim=())),
    ok("sum-dim-empty-list", lambda m: x23(m).sum(dim=[])),
    ok("sum-int-dtype", lambda m: x23(m).sum(dtype=m.int64)),
    bad("mean-dim-str", lambda m: x23(m).mean("a"), TypeError, "slope.mean"),
    bad("mean-dim-repeated", lambda m: x23(m).mean((1, 1)), ValueError, "slope.mean"),
    ok("mean-dim-empty", lambda m: x23(m).mean(dim=())),
    bad("var-dim-str", lambda m: x23(m).var("a"), TypeError, "slope.var"),
    bad("var-dim-repeated", lambda m: x23(m).var((0, 0)), ValueError, "slope.var"),
    ok("var-dim-empty", lambda m: x23(m).var(())),
    ok("var-correction-float", lambda m: x23(m).var(1, correction=0.5)),
    ok("std-unbiased-false", lambda m: x23(m).std(0, unbiased=False)),
    ok("var-correction-none", lambda m: x23(m).var(0, correction=None)),
    ok("std-correction-int", lambda m: m.std(x23(m), correction=0)),
    bad("var-correction-str", lambda m: x23(m).var(0, correction="1"), TypeError, "slope.var"),
    bad("std-correction-list", lambda m: m.std(x23(m), correction=[1]), TypeError, "slope.std"),
    bad("var-unbiased-int", lambda m: m.var(x23(m), unbiased=1), TypeError, "slope.var"),
    bad("std-unbiased-str", lambda m: x23(m).std(unbiased="yes"), TypeError, "slope.std"),
    bad("var-correction-and-unbiased", lambda m: x23(m).var(correction=2, unbiased=True), TypeError, "slope.var"),
    bad("std-dim-out-of-range", lambda m: x23(m).std(2), IndexError, "slope.std"),
    bad("std-dim-float", lambda m: x23(m).std(0.5), TypeError, "slope.std"),
    ok("std-dim-empty", lambda m: x23(m).std(())),
    bad("amax-dim-repeated", lambda m: x23(m).amax((0, 0)), ValueError, "slope.max"),
    bad("amin-dim-repeated", lambda m: x23(m).amin((0, 0)), ValueError, "slope.min"),
    bad("amin-dim-out-of-range", lambda m: x23(m).amin(2), IndexError, "slope.min"),
    ok("amax-dim-empty", lambda m: x23(m).amax(())),
    ok("amin-dim-empty", lambda m: x23(m).amin(())),
    bad("prod-dim-str", lambda m: x23(m).prod("a"), TypeError, "slope.prod"),
    ok("all-dim-empty", lambda m: (x23(m) > 2).all(())),
    ok("any-dim-empty", lambda m: (x23(m) > 2).any([])),
    ok("all-0d", lambda m: m.tensor(True).all(0)),
    bad("all-dim-repeated", lambda m: x23(m).all((0, 0)), ValueError, "slope.all"),
    bad("any-dim-out-of-range", lambda m: x23(m).any(2), IndexError, "slope.any"),
    bad("argmax-dim-tuple", lambda m: x23(m).argmax((0, 1)), TypeError, "slope.argmax"),  # as PyTorch: dim is an int
    bad("argmin-dim-str", lambda m: x23(m).argmin("a"), TypeError, "slope.argmin"),
    bad("argmin-dim-out-of-range", lambda m: x23(m).argmin(2), IndexError, "slope.argmin"),
    bad("cumsum-dim-tuple", lambda m: x23(m).cumsum((0, 1)), ValueError, "slope.cumsum"),
    bad("cumsum-dim-none", lambda m: x23(m).cumsum(None), TypeError, "slope.cumsum"),
    bad("cumsum-no-dim", lambda m: x23(m).cumsum(), TypeError, "cumsum"),  # (dim 0 silently; JAX's flattens)
    bad("transpose-one-dim", lambda m: x23(m).transpose(1), TypeError, "transpose"),  # (the identity, silently)
    ok("amax-tensor-dim", lambda m: m.amax(x23(m), m.tensor(1))),  # (was maximum(x, 1), silently)
    ok("amin-tensor-dim", lambda m: x23(m).amin(m.tensor(0), True)),
    bad("amax-float-tensor-dim", lambda m: m.amax(x23(m), m.tensor(1.0)), TypeError, "slope.amax"),
    ok("div-int", lambda m: m.tensor([5, -7, 3]).div(2)),  # (it gave [2, -3, 1], truncated, silently)
    ok("div-int-tensors", lambda m: m.div(m.tensor([5, -7, 3]), m.tensor([2, 2, 0]))),
    ok("div-int-trunc", lambda m: m.tensor([5, -7, 3]).div(2, rounding_mode="trunc")),
    ok("div-float-trunc", lambda m: m.div(x23(m) - 2.5, 2.0, rounding_mode="trunc")),
    ok("div-int-floor", lambda m: m.div(m.tensor([5, -7, 3]), -2, rounding_mode="floor")),
    bad("div-rounding-mode", lambda m: m.div(x23(m), 2.0, rounding_mode="round"), ValueError, "slope.div"),
    ok("cumsum-bool", lambda m: m.tensor([True, True, False]).cumsum(0)),
    bad("logsumexp-dim-str", lambda m: x23(m).logsumexp("a"), TypeError, "slope.logsumexp"),
    bad("logsumexp-dim-repeated", lambda m: x23(m).logsumexp((0, 0)), ValueError, "slope.logsumexp"),
    bad("softmax-dim-str", lambda m: x23(m).softmax("a"), TypeError, "slope.softmax"),
    bad("softmax-dim-none", lambda m: m.softmax(x23(m), None), TypeError, "slope.softmax"),
    bad("softmax-dim-tuple", lambda m: x23(m).softmax((0, 1)), ValueError, "slope.softmax"),
    bad("log-softmax-dim-float", lambda m: x23(m).log_softmax(1.5), TypeError, "slope.log_softmax"),
    bad("one-hot-classes-float", lambda m: m.nn.functional.one_hot(m.tensor([0, 1]), 2.5), TypeError,
        "slope.one_hot"),
    bad("one-hot-negative-index", lambda m: m.nn.functional.one_hot(m.tensor([-1]), 3), IndexError,
        "slope.one_hot"),
    # ------------------------------------------------------------------------------------------- shapes
    bad("reshape-str", lambda m: m.ones(6).reshape("a"), TypeError, "slope.reshape"),
    bad("reshape-float", lambda m: m.ones(4).reshape((2.0, 2)), TypeError, "slope.reshape"),
    bad("reshape-none", lambda m: m.ones(4).reshape(None), TypeError, "slope.reshape"),
    bad("reshape-minus-two", lambda m: m.ones(6).reshape(-2, -3), ShapeError, "slope.reshape"),
    bad("expand-str", lambda m: m.ones(3).expand("a"), TypeError, "slope.expand"),
    bad("expand-float", lambda m: m.ones(3).expand(2.0, 3), TypeError, "slope.expand"),
    bad("expand-minus-two", lambda m: m.ones(3).expand(-2, 3), ShapeError, "slope.expand"),
    bad("permute-out-of-range", lambda m: x23(m).permute(0, 5), IndexError, "slope.permute"),
    bad("permute-str", lambda m: x23(m).permute(0, "a"), TypeError, "slope.permute"),
    bad("permute-float", lambda m: x23(m).permute(0, 1.0), TypeError, "slope.permute"),
    bad("transpose-str", lambda m: x23(m).transpose(0, "a"), TypeError, "slope.transpose"),
    bad("transpose-float", lambda m: x23(m).transpose(0, 1.0), TypeError, "slope.transpose"),
    bad("flip-repeated", lambda m: x23(m).flip((0, 0)), ValueError, "slope.flip"),
    bad("flip-str", lambda m: x23(m).flip("a"), TypeError, "slope.flip"),
    ok("flip-empty", lambda m: x23(m).flip(())),
    ok("tensor-uint16-given-dtype", lambda m: m.tensor(np.array([1, 40000], np.uint16), dtype=m.float32)),  # (refused)
    ok("mul-numpy-bool-scalar", lambda m: m.ones(2) * np.True_),  # (np.bool_ was refused; other NumPy scalars not)
    bad("layer-norm-shape-for-eps", lambda m: slope.layer_norm(m.ones(2, 4), (4,)), TypeError, "slope.layer_norm",
        None),  # (PyTorch's F.layer_norm(x, normalized_shape) order: it was float()'s bare TypeError)
    bad("layer-norm-int-shape-for-eps", lambda m: slope.layer_norm(m.ones(2, 4), 4), TypeError, "slope.layer_norm",
        None),  # (it normalised with eps=4, silently)
    bad("flip-no-dims", lambda m: x23(m).flip(), TypeError, "slope.flip"),  # (it flipped nothing)
    bad("flip-function-no-dims", lambda m: m.flip(x23(m)), TypeError, "slope.flip"),
    ok("flip-varargs", lambda m: x23(m).flip(0, -1)),  # (PyTorch's Tensor.flip(*dims); it raised a TypeError)
    bad("flip-repeated-varargs", lambda m: x23(m).flip(1, 1), ValueError, "slope.flip"),
    bad("squeeze-str", lambda m: m.ones(1, 3).squeeze("a"), TypeError, "slope.squeeze"),
    bad("squeeze-repeated", lambda m: m.ones(1, 3).squeeze((0, -2)), ValueError, "slope.squeeze"),
    ok("squeeze-empty", lambda m: m.ones(1, 3).squeeze(())),
    bad("unsqueeze-float", lambda m: x23(m).unsqueeze(1.5), TypeError, "slope.unsqueeze"),
    bad("unsqueeze-tuple", lambda m: x23(m).unsqueeze((0, 1)), ValueError, "slope.unsqueeze"),
    bad("unsqueeze-out-of-range", lambda m: x23(m).unsqueeze(4), IndexError, "slope.unsqueeze"),
    bad("flatten-start-after-end", lambda m: m.ones(2, 3, 4).flatten(1, 0), ValueError, "slope.flatten"),
    bad("flatten-str", lambda m: x23(m).flatten("a"), TypeError, "slope.flatten"),
    bad("unflatten-float", lambda m: m.ones(6).unflatten(0, (2.0, 3)), TypeError, "slope.unflatten"),
    ok("unflatten-minus-one", lambda m: m.ones(6).unflatten(0, (2, -1))),
    bad("unflatten-two-minus-ones", lambda m: m.ones(0).unflatten(0, (-1, -1)), ValueError, "slope.unflatten"),
    bad("repeat-negative", lambda m: m.ones(3).repeat(2, -1), ValueError, "slope.repeat"),
    bad("repeat-float", lambda m: m.ones(3).repeat(2.5), TypeError, "slope.repeat"),
    bad("repeat-str", lambda m: m.ones(3).repeat("a"), TypeError, "slope.repeat"),
    bad("cat-tensor", lambda m: m.cat(m.ones(2, 3)), ShapeError, "slope.cat"),
    bad("cat-dim-float", lambda m: m.cat([m.ones(2)], 1.5), TypeError, "slope.cat"),
    bad("cat-dim-str", lambda m: m.cat([m.ones(2), m.ones(2)], "a"), TypeError, "slope.cat"),
    bad("cat-0d", lambda m: m.cat([m.tensor(1.0), m.tensor(2.0)]), ShapeError, "slope.cat"),
    ok("cat-mixed-dtypes", lambda m: m.cat([m.ones(2), m.ones(2, dtype=m.int64)])),
    bad("stack-tensor", lambda m: m.stack(m.ones(2, 3)), ShapeError, "slope.stack"),
    bad("stack-dim-out-of-range", lambda m: m.stack([m.ones(2)], -3), IndexError, "slope.stack"),
    bad("stack-dim-str", lambda m: m.stack([m.ones(2)], "a"), TypeError, "slope.stack"),
    bad("split-float", lambda m: m.ones(3).split(2.5), TypeError, "slope.split"),
    bad("split-zero", lambda m: m.ones(3).split(0), ValueError, "slope.split"),
    bad("split-negative-section", lambda m: m.ones(1).split([2, -1]), ValueError, "slope.split"),
    bad("split-float-sections", lambda m: m.ones(3).split([1.5, 1.5]), TypeError, "slope.split"),
    bad("split-dim-str", lambda m: m.ones(3).split(1, "a"), TypeError, "slope.split"),
    bad("chunk-float", lambda m: m.ones(3).chunk(2.5), TypeError, "slope.chunk"),
    bad("chunk-str", lambda m: m.ones(3).chunk("a"), TypeError, "slope.chunk"),
    bad("chunk-dim-out-of-range", lambda m: m.ones(3).chunk(2, 1), IndexError, "slope.chunk"),
    bad("roll-more-shifts", lambda m: m.ones(3).roll((1, 2), 0), ValueError, "slope.roll"),
    bad("roll-more-dims", lambda m: x23(m).roll(1, (0, 1)), ValueError, "slope.roll"),
    bad("roll-float", lambda m: m.ones(3).roll(1.5, 0), TypeError, "slope.roll"),
    bad("roll-0d", lambda m: m.tensor(1.0).roll(1, 0), IndexError, "slope.roll"),
    ok("roll-repeated-dims", lambda m: x23(m).roll((1, 2), (0, 0))),
    ok("roll-negative", lambda m: m.arange(6).roll(-2, 0)),
    ok("roll-flat", lambda m: x23(m).roll(4)),
    bad("tril-diagonal-float", lambda m: m.ones(3, 3).tril(1.5), TypeError, "slope.tril"),
    bad("triu-diagonal-str", lambda m: m.ones(3, 3).triu("a"), TypeError, "slope.triu"),
    bad("pad-int", lambda m: slope.pad(m.ones(3), 1), TypeError, "slope.pad",
        lambda t: t.nn.functional.pad(t.ones(3), 1)),
    bad("pad-float", lambda m: slope.pad(m.ones(3), (1.5, 1)), TypeError, "slope.pad",
        lambda t: t.nn.functional.pad(t.ones(3), (1.5, 1))),
    bad("pad-value-str", lambda m: slope.pad(m.ones(3), (1, 1), "a"), TypeError, "slope.pad",
        lambda t: t.nn.functional.pad(t.ones(3), (1, 1), value="a")),
    bad("pad-crop-too-much", lambda m: slope.pad(m.ones(3), (-5, 0)), ValueError, "slope.pad",
        lambda t: t.nn.functional.pad(t.ones(3), (-5, 0))),
    bad("pad-int-value-overflow", lambda m: slope.pad(m.ones(2, dtype=m.int8), (1, 0), 300), ValueError,
        "slope.pad", lambda t: t.nn.functional.pad(t.ones(2, dtype=t.int8), (1, 0), value=300)),
    bad("pad-int8-value-200", lambda m: slope.pad(m.ones(2, dtype=m.int8), (1, 0), 200), ValueError, "slope.pad",
        lambda t: t.nn.functional.pad(t.ones(2, dtype=t.int8), (1, 0), value=200)),
    bad("pad-uint8-value-300", lambda m: slope.pad(m.ones(2, dtype=m.uint8), (1, 0), 300), ValueError, "slope.pad",
        lambda t: t.nn.functional.pad(t.ones(2, dtype=t.uint8), (1, 0), value=300)),
    bad("pad-uint8-value-minus-1", lambda m: slope.pad(m.ones(2, dtype=m.uint8), (1, 0), -1), ValueError,
        "slope.pad", lambda t: t.nn.functional.pad(t.ones(2, dtype=t.uint8), (1, 0), value=-1)),
    ok("pad-uint8-value-truncated", lambda m: slope.pad(m.ones(2, dtype=m.uint8), (1, 1), 2.7),
       lambda t: t.nn.functional.pad(t.ones(2, dtype=t.uint8), (1, 1), value=2.7)),
    ok("pad-bool-value-nonzero", lambda m: slope.pad(m.zeros(2, dtype=m.bool), (1, 1), -1),
       lambda t: t.nn.functional.pad(t.zeros(2, dtype=t.bool), (1, 1), value=-1)),
    ok("pad-crop-and-pad", lambda m: slope.pad(m.arange(4.0), (-1, 2)),
       lambda t: t.nn.functional.pad(t.arange(4.0), (-1, 2))),
    bad("gather-index-too-big", lambda m: m.gather(m.ones(3, 3), 0, m.zeros((2, 5), dtype=m.int64)), ValueError,
        "slope.gather"),
    bad("gather-index-ndim", lambda m: m.gather(m.ones(3, 3), 0, m.tensor([0])), ValueError, "slope.gather"),
    bad("gather-out-of-range", lambda m: m.gather(m.ones(3, 3), 0, m.tensor([[5]])), IndexError, "slope.gather"),
    bad("gather-negative-index", lambda m: m.gather(m.ones(3, 3), 0, m.tensor([[-1]])), IndexError,
        "slope.gather"),
    bad("gather-dim-str", lambda m: m.gather(m.ones(3, 3), "a", m.tensor([[0]])), TypeError, "slope.gather"),
    bad("scatter-add-out-of-range", lambda m: m.scatter_add(m.zeros(3), 0, m.tensor([5]), m.ones(1)), IndexError,
        "slope.scatter_add"),
    # ------------------------------------------------------------------------------------------- indexing
    bad("getitem-str", lambda m: m.ones(3)["a"], IndexError, "slope.getitem"),
    bad("getitem-float", lambda m: m.ones(3)[1.5], IndexError, "slope.getitem"),
    bad("getitem-mask-length", lambda m: m.ones(3)[m.tensor([True, False])], IndexError, "slope.getitem"),
    ok("getitem-true", lambda m: m.ones(3)[True]),
    ok("getitem-false", lambda m: m.ones(3)[False]),
    bad("getitem-jit-out-of-range", lambda m: _jit_index(-7), IndexError, "slope.getitem",
        lambda t: t.arange(6.0)[t.tensor(-7)]),
    # ------------------------------------------------------------------------------------------- conv and pooling
    bad("conv-stride-zero", lambda m: slope.conv(image(m), kernel(m), stride=0), ValueError, "slope.conv",
        lambda t: t.nn.functional.conv2d(image(t), kernel(t), stride=0)),
    bad("conv-stride-float", lambda m: slope.conv(image(m), kernel(m), stride=1.5), TypeError, "slope.conv",
        lambda t: t.nn.functional.conv2d(image(t), kernel(t), stride=1.5)),
    bad("conv-padding-negative", lambda m: slope.conv(image(m), kernel(m), padding=-1), ValueError, "slope.conv",
        lambda t: t.nn.functional.conv2d(image(t), kernel(t), padding=-1)),
    bad("conv-dilation-zero", lambda m: slope.conv(image(m), kernel(m), dilation=0), ValueError, "slope.conv",
        lambda t: t.nn.functional.conv2d(image(t), kernel(t), dilation=0)),
    bad("conv-groups-zero", lambda m: slope.conv(image(m), kernel(m), groups=0), ValueError, "slope.conv",
        lambda t: t.nn.functional.conv2d(image(t), kernel(t), groups=0)),
    bad("conv-groups-float", lambda m: slope.conv(m.ones(1, 2, 4, 4), kernel(m).expand(2, 1, 2, 2), groups=2.5),
        TypeError, "slope.conv",
        lambda t: t.nn.functional.conv2d(t.ones(1, 2, 4, 4), t.ones(2, 1, 2, 2), groups=2.5)),
    bad("conv-padding-unknown", lambda m: slope.conv(image(m), kernel(m), padding="foo"), ValueError, "slope.conv",
        lambda t: t.nn.functional.conv2d(image(t), kernel(t), padding="foo")),
    bad("conv-same-strided", lambda m: slope.conv(image(m), kernel(m), stride=2, padding="same"), ValueError,
        "slope.conv", lambda t: t.nn.functional.conv2d(image(t), kernel(t), stride=2, padding="same")),
    bad("conv-bias-shape", lambda m: slope.conv(image(m), m.ones(2, 1, 2, 2), m.ones(3)), ShapeError,
        "slope.conv", lambda t: t.nn.functional.conv2d(image(t), t.ones(2, 1, 2, 2), t.ones(3))),
    bad("conv-padding-length", lambda m: slope.conv(image(m), kernel(m), padding=(1, 1, 1)), ValueError,
        "slope.conv", lambda t: t.nn.functional.conv2d(image(t), kernel(t), padding=(1, 1, 1))),
    bad("conv-transpose-output-padding", lambda m: slope.conv_transpose(image(m), kernel(m), output_padding=1),
        ValueError, "slope.conv_transpose",
        lambda t: t.nn.functional.conv_transpose2d(image(t), kernel(t), output_padding=1)),
    bad("conv-transpose-stride-zero", lambda m: slope.conv_transpose(image(m), kernel(m), stride=0), ValueError,
        "slope.conv_transpose", lambda t: t.nn.functional.conv_transpose2d(image(t), kernel(t), stride=0)),
    bad("conv-transpose-groups-zero", lambda m: slope.conv_transpose(image(m), kernel(m), groups=0), ValueError,
        "slope.conv_transpose", lambda t: t.nn.functional.conv_transpose2d(image(t), kernel(t), groups=0)),
    bad("max-pool-kernel-float", lambda m: slope.max_pool(image(m), 2.5), TypeError, "slope.max_pool",
        lambda t: t.nn.functional.max_pool2d(image(t), 2.5)),
    bad("max-pool-kernel-zero", lambda m: slope.max_pool(image(m), 0), ValueError, "slope.max_pool",
        lambda t: t.nn.functional.max_pool2d(image(t), 0)),
    bad("max-pool-padding-too-big", lambda m: slope.max_pool(image(m), 2, padding=2), ValueError, "slope.max_pool",
        lambda t: t.nn.functional.max_pool2d(image(t), 2, padding=2)),
    bad("avg-pool-padding-too-big", lambda m: slope.avg_pool(image(m), 2, padding=2), ValueError, "slope.avg_pool",
        lambda t: t.nn.functional.avg_pool2d(image(t), 2, padding=2)),
    bad("avg-pool-stride-str", lambda m: slope.avg_pool(image(m), 2, "a"), TypeError, "slope.avg_pool",
        lambda t: t.nn.functional.avg_pool2d(image(t), 2, "a")),
    # ------------------------------------------------------------------------------------------- nn functions
    bad("gelu-approximate-unknown", lambda m: m.nn.functional.gelu(m.ones(3), approximate="foo"), ValueError,
        "slope.gelu"),
    bad("leaky-relu-slope-str", lambda m: m.nn.functional.leaky_relu(m.ones(3), "a"), TypeError,
        "slope.leaky_relu"),
    bad("softplus-beta-str", lambda m: m.nn.functional.softplus(m.ones(3), "a"), TypeError, "slope.softplus"),
    bad("cross-entropy-smoothing", lambda m: m.nn.functional.cross_entropy(
        m.ones(2, 3), m.tensor([0, 1]), label_smoothing=1.5), ValueError, "slope.cross_entropy"),
    bad("relu-bool", lambda m: m.relu(m.tensor([True])), DTypeError, "slope.relu"),
    bad("nll-float-target", lambda m: slope.nn.nll_loss(m.ones(2, 3), m.ones(2)), TypeError, "nll",
        lambda t: t.nn.functional.nll_loss(t.ones(2, 3), t.ones(2))),
    bad("mse-shapes", lambda m: slope.nn.mse_loss(m.ones(3), m.ones(4)), ValueError, "mse",
        lambda t: t.nn.functional.mse_loss(t.ones(3), t.ones(4))),
    # ------------------------------------------------------------------------------------------- nn layers
    bad("Linear-negative", lambda m: m.nn.Linear(-1, 3), ValueError, "Linear"),
    bad("Linear-float", lambda m: m.nn.Linear(2.5, 3), TypeError, "Linear"),
    bad("Linear-call-shape", lambda m: m.nn.Linear(3, 4)(m.ones(2, 5)), ShapeError, "slope.matmul"),
    bad("Conv2d-groups-zero", lambda m: m.nn.Conv2d(3, 4, 3, groups=0), ValueError, "Conv2d"),
    bad("Conv2d-padding-unknown", lambda m: m.nn.Conv2d(3, 4, 3, padding="foo"), ValueError, "Conv2d"),
    bad("Conv2d-same-strided", lambda m: m.nn.Conv2d(3, 4, 3, padding="same", stride=2), ValueError, "Conv2d"),
    bad("Conv2d-negative-channels", lambda m: m.nn.Conv2d(-3, 4, 3), ValueError, "Conv2d"),
    bad("Conv2d-stride-zero-call", lambda m: m.nn.Conv2d(1, 1, 2, stride=0)(image(m)), ValueError, "Conv2d"),
    bad("Conv2d-padding-negative-call", lambda m: m.nn.Conv2d(1, 1, 2, padding=-1)(image(m)), ValueError, "Conv2d"),
    bad("ConvTranspose2d-groups-zero", lambda m: m.nn.ConvTranspose2d(2, 2, 3, groups=0), ValueError,
        "ConvTranspose2d"),
    bad("BatchNorm2d-negative", lambda m: m.nn.BatchNorm2d(-1), ValueError, "BatchNorm2d"),
    bad("BatchNorm2d-float", lambda m: m.nn.BatchNorm2d(2.5), TypeError, "BatchNorm2d"),
    bad("BatchNorm2d-call-channels", lambda m: m.nn.BatchNorm2d(3)(m.ones(2, 4, 5, 5)), ValueError, "BatchNorm2d"),
    bad("LayerNorm-negative", lambda m: m.nn.LayerNorm(-1), ValueError, "LayerNorm"),
    bad("LayerNorm-float", lambda m: m.nn.LayerNorm(2.5), TypeError, "LayerNorm"),
    bad("LayerNorm-call-shape", lambda m: m.nn.LayerNorm(4)(m.ones(2, 3)), ValueError, "LayerNorm"),
    bad("RMSNorm-negative", lambda m: m.nn.RMSNorm(-1), ValueError, "RMSNorm"),
    bad("Embedding-negative", lambda m: m.nn.Embedding(-1, 3), ValueError, "Embedding"),
    bad("Embedding-float", lambda m: m.nn.Embedding(2.5, 3), TypeError, "Embedding"),
    bad("Embedding-padding-idx", lambda m: m.nn.Embedding(10, 3, padding_idx=10), ValueError, "Embedding"),
    bad("Embedding-call-out-of-range", lambda m: m.nn.Embedding(10, 3)(m.tensor([10])), IndexError, "Embedding"),
    bad("Dropout-negative", lambda m: m.nn.Dropout(-0.1), ValueError, "Dropout"),
    bad("MultiheadAttention-zero-heads", lambda m: m.nn.MultiheadAttention(10, 0), ValueError,
        "MultiheadAttention"),  # (PyTorch's spelling is its own class, named by its errors)
    bad("MultiheadAttention-negative-heads", lambda m: m.nn.MultiheadAttention(10, -2), ValueError,
        "MultiheadAttention"),
    bad("MultiHeadAttention-zero-heads", lambda m: m.nn.MultiHeadAttention(10, 0), ValueError,
        "MultiHeadAttention", reference=None),
    bad("MaxPool2d-zero-call", lambda m: m.nn.MaxPool2d(0)(image(m)), ValueError, "slope.max_pool"),
    # PyTorch's F.max_pool2d takes ceil_mode sixth, return_indices seventh: Slope's flags are keyword-only
    bad("max_pool-positional-flags", lambda m: m.nn.functional.max_pool(image(m), 2, 2, 0, 1, False, True), TypeError,
        "positional", reference=None),
    bad("linear-3d-weight", lambda m: m.nn.functional.linear(m.ones(2, 3), m.ones(1, 2, 3)), ValueError, "slope.linear"),
    bad("dropout-of-integers", lambda m: m.nn.dropout(m.tensor([10] * 8), 0.3), TypeError, "slope.nn.dropout",
        reference=lambda torch: torch.nn.functional.dropout(torch.tensor([10] * 8), 0.3)),
    bad("one_hot-minus-two", lambda m: m.nn.functional.one_hot(m.tensor([1, 2]), -2), ValueError, "slope.one_hot"),
    bad("cross_entropy-float-ignore-index", lambda m: m.nn.functional.cross_entropy(m.ones(2, 3), m.tensor([0, 1]),
        ignore_index=1.5), TypeError, "ignore_index"),  # fmt: skip
    bad("ModuleList-of-ints", lambda m: m.nn.ModuleList([1, 2]), TypeError, "ModuleList"),
    # MultiHeadAttention's shape errors named a matmul or reshape deep inside it
    bad("MultiHeadAttention-embed-dim", lambda m: m.nn.MultiHeadAttention(4, 2)(m.ones(2, 3, 5)), ValueError,
        "MultiHeadAttention: expected query (N, L, 4)", reference=None),
    bad("MultiHeadAttention-key-value-lengths", lambda m: m.nn.MultiHeadAttention(4, 2)(m.ones(2, 3, 4),
        m.ones(2, 4, 4), m.ones(2, 5, 4)), ValueError, "MultiHeadAttention", reference=None),  # fmt: skip
    bad("MultiHeadAttention-padding-mask", lambda m: m.nn.MultiHeadAttention(4, 2)(m.ones(2, 3, 4),
        key_padding_mask=m.zeros(2, 5, dtype=m.bool_)), ValueError, "key_padding_mask", reference=None),  # fmt: skip
    bad("bce_with_logits-pos-weight", lambda m: m.nn.binary_cross_entropy_with_logits(m.ones(2, 3), m.ones(2, 3),
        pos_weight=m.ones(4)), ValueError, "binary_cross_entropy_with_logits",
        reference=lambda torch: torch.nn.functional.binary_cross_entropy_with_logits(torch.ones(2, 3), torch.ones(2, 3),
                                                                                    pos_weight=torch.ones(4))),  # fmt: skip
    bad("AvgPool2d-float-call", lambda m: m.nn.AvgPool2d(2.5)(image(m)), TypeError, "AvgPool2d"),
    bad("Flatten-call-start-after-end", lambda m: m.nn.Flatten(2, 1)(m.ones(2, 3, 4)), ValueError,
        "slope.flatten"),
    bad("Softmax-call-dim", lambda m: m.nn.Softmax(5)(x23(m)), IndexError, "slope.softmax"),
    bad("Sequential-not-a-module", lambda m: m.nn.Sequential(5), TypeError, "Sequential"),
    bad("SGD-negative-lr", lambda m: slope.nn.SGD(lr=-1), ValueError, "SGD",
        lambda t: t.optim.SGD([t.ones(1, requires_grad=True)], lr=-1)),
    bad("SGD-negative-momentum", lambda m: slope.nn.SGD(lr=0.1, momentum=-1), ValueError, "SGD",
        lambda t: t.optim.SGD([t.ones(1, requires_grad=True)], lr=0.1, momentum=-1)),
    bad("SGD-negative-weight-decay", lambda m: slope.nn.SGD(lr=0.1, weight_decay=-1), ValueError, "SGD",
        lambda t: t.optim.SGD([t.ones(1, requires_grad=True)], lr=0.1, weight_decay=-1)),
    bad("Adam-beta-too-big", lambda m: slope.nn.Adam(betas=(1.5, 0.9)), ValueError, "Adam",
        lambda t: t.optim.Adam([t.ones(1, requires_grad=True)], betas=(1.5, 0.9))),
    bad("Adam-negative-eps", lambda m: slope.nn.Adam(eps=-1), ValueError, "Adam",
        lambda t: t.optim.Adam([t.ones(1, requires_grad=True)], eps=-1)),
    # ------------------------------------------------------------------------------------------- transforms (JAX)
    bad("jvp-bare-tensors", lambda m: slope.jvp(lambda x: x * 2.0, x23(m), x23(m)), TransformError, "slope.jvp",
        None),
    bad("jvp-bare-tangent", lambda m: slope.jvp(lambda x: x * 2.0, (x23(m),), x23(m)), TransformError,
        "slope.jvp", None),
    bad("jvp-not-callable", lambda m: slope.jvp(5, (m.ones(3),), (m.ones(3),)), TypeError, "slope.jvp", None),
    bad("grad-not-callable", lambda m: slope.grad(5), TypeError, "slope.grad", None),
    bad("grad-of-a-counting-batch-norm", lambda m: slope.grad(lambda n: n.eval()(m.ones(2, 3)).sum())(
        slope.nn.BatchNorm1d(3, momentum=None)), TransformError, "num_batches_tracked", None,
        waits_for="core-grad-leaf"),
    bad("value-and-grad-not-callable", lambda m: slope.value_and_grad("f"), TypeError, "slope.value_and_grad",
        None),
    bad("vjp-not-callable", lambda m: slope.vjp(None, m.ones(3)), TypeError, "slope.vjp", None),
    bad("vmap-not-callable", lambda m: slope.vmap([1]), TypeError, "slope.vmap", None),
    bad("linearize-not-callable", lambda m: slope.linearize(3, m.ones(3)), TypeError, "slope.linearize", None),
    bad("grad-argnums-str", lambda m: slope.grad(f_sum, argnums="a")(m.ones(3)), TypeError, "slope.grad", None),
    bad("grad-argnums-float", lambda m: slope.grad(f_sum, argnums=0.0)(m.ones(3)), TypeError, "slope.grad", None),
    bad("grad-argnums-empty", lambda m: slope.grad(f_sum, argnums=())(m.ones(3)), TransformError, "slope.grad",
        None),  # (JAX: max() arg is an empty sequence)
    bad("jacfwd-argnums-empty", lambda m: slope.jacfwd(f_sum, argnums=())(m.ones(3)), ValueError, "slope.jacfwd",
        None),
    ok("jacfwd-argnums-tuple", lambda m: slope.jacfwd(f_sum, argnums=(0, 1))(m.ones(3), m.arange(3.0))[0],
       lambda t: t.func.jacfwd(f_sum, argnums=(0, 1))(t.ones(3), t.arange(3.0))[0]),  # (JAX's and torch.func's tuple)
    ok("jacrev-argnums-tuple", lambda m: slope.jacrev(f_sum, argnums=(0, 1))(m.arange(3.0), m.ones(3))[0],
       lambda t: t.func.jacrev(f_sum, argnums=(0, 1))(t.arange(3.0), t.ones(3))[0]),
    bad("jacrev-pytree-output", lambda m: slope.jacrev(lambda x: (x, x))(m.ones(3)), TransformError, "slope.jacrev",
        None),  # (it crashed with an AttributeError)
    bad("jacrev-tuple-input", lambda m: slope.jacrev(lambda p: p[0] * p[1])((m.ones(3), m.ones(3))), TransformError,
        "slope.jacrev", None),  # (the tuple was stacked: one (3, 2, 3) Jacobian, where JAX and torch.func give two)
    bad("jacfwd-list-input", lambda m: slope.jacfwd(lambda p: p[0] * p[1])([m.ones(3), m.ones(3)]), TransformError,
        "slope.jacfwd", None),
    bad("hessian-dict-input", lambda m: slope.hessian(lambda p: (p["a"] ** 2).sum())({"a": m.ones(3)}),
        TransformError, "slope.hessian", None),  # (it named slope.jacfwd: hessian is jacfwd(jacrev))
    bad("hessian-not-callable", lambda m: slope.hessian(5), TypeError, "slope.hessian", None),  # (named slope.jacrev)
    bad("hessian-argnums-str", lambda m: slope.hessian(f_sum, argnums="x")(m.ones(3)), TypeError, "slope.hessian",
        None),
    bad("jacfwd-int-input", lambda m: slope.jacfwd(lambda x: x * 2)(m.tensor([1, 2])), TransformError,
        "slope.jacfwd", None),
    bad("jacrev-int-input", lambda m: slope.jacrev(lambda x: x * 2)(m.tensor([1, 2])), TransformError,
        "slope.jacrev", None),
    bad("linearize-tangent-shape", lambda m: _linearized(m.ones(4)), TransformError, "slope.linearize", None),
    bad("linearize-tangent-dtype", lambda m: _linearized(m.ones(3, dtype=m.float64)), TransformError,
        "slope.linearize", None),
    bad("vjp-cotangent-dtype", lambda m: slope.vjp(lambda x: x * 2.0, m.ones(3))[1](m.ones(3, dtype=m.int64)),
        TransformError, "slope.vjp", None),
    bad("vmap-in-axes-str", lambda m: slope.vmap(lambda a: a, in_axes="a")(m.ones(3)), TransformError,
        "slope.vmap", None),
    bad("vmap-in-axes-float", lambda m: slope.vmap(lambda a: a, in_axes=0.0)(m.ones(3)), TransformError,
        "slope.vmap", None),
    bad("vmap-out-axes-str", lambda m: slope.vmap(lambda a: a, out_axes="a")(m.ones(3)), TransformError,
        "slope.vmap", None),
]  # fmt: skip


WAITING: dict[str, str] = {  # waits_for name -> why the row is xfail until that change lands
    "core-grad-leaf": "slope-core: slope.grad's message for an integer leaf names only the argument, not the leaf "
    "(BatchNorm(momentum=None)'s int64 num_batches_tracked; nn.value_and_grad takes it) (nn24's report)",
}


def _param(row: Row) -> Any:
    marks = [pytest.mark.xfail(strict=True, reason=WAITING[row.waits_for])] if row.waits_for else []
    return pytest.param(row, id=row.id, marks=marks)


def _torch_reference(row: Row) -> Callable | None:
    if row.reference is None:
        return None
    torch = pytest.importorskip("torch")
    return (lambda: row.call(torch)) if row.reference == SAME else (lambda: row.reference(torch))


def _same(got: Any, expected: Any) -> bool:
    """Whether a Slope tensor has a PyTorch tensor's shape, dtype and values (NaN equal to NaN)."""
    same_dtype = got.dtype.name == str(expected.dtype).removeprefix("torch.")
    values = expected.detach().numpy()
    return same_dtype and got.shape == values.shape and np.array_equal(got.numpy(), values, equal_nan=True)


@pytest.fixture(params=BACKENDS)
def backend(request):
    with slope.use_backend(request.param) as active:
        yield active


def test_the_table_is_large_and_ids_are_unique():
    assert len({row.id for row in ROWS}) == len(ROWS) >= 150


@pytest.mark.parametrize("row", [_param(row) for row in ROWS if row.error is not None])
def test_bad_input_raises_a_clear_error(backend, row):
    with pytest.raises(row.error) as raised:
        row.call(slope)
    message = str(raised.value)
    assert row.fragment in message, f"{type(raised.value).__name__}: {message!r} does not name {row.fragment!r}"


@pytest.mark.parametrize("row", [_param(row) for row in ROWS if row.error is None])
def test_input_pytorch_accepts_gives_pytorch_result(backend, row):
    expected = _torch_reference(row)()
    got = row.call(slope)
    assert _same(got, expected), f"got {got!r}, PyTorch gives {expected!r}"


@pytest.mark.parametrize("row", [pytest.param(row, id=row.id) for row in ROWS if row.reference is not None])
def test_pytorch_agrees_the_input_is_bad(row):
    """The reference: PyTorch rejects every `bad` row (and accepts every `ok` row, checked above)."""
    reference = _torch_reference(row)
    if row.error is None:
        reference()
    else:
        with pytest.raises(Exception):  # noqa: B017, PT011 - PyTorch's own exception types vary
            reference()


# ----------------------------------------------------------------------------------------------- counting


def classify(row: Row) -> str:
    """How the current backend handles a row: good, raw, silent or wrong (a Slope error of the wrong kind)."""
    try:
        result = row.call(slope)
    except Exception as error:  # noqa: BLE001 - classifying every error is the point
        message = str(error)
        if row.error is not None and isinstance(error, row.error) and row.fragment in message:
            return "good"
        raw = "slope" not in message.lower() or isinstance(error, (OverflowError, KeyError, ZeroDivisionError))
        return "raw" if raw else "wrong"
    if row.error is not None:
        return "silent"
    try:
        import torch

        expected = row.call(torch) if row.reference == SAME else row.reference(torch)
        return "good" if _same(result, expected) else "silent"
    except ImportError:
        return "good"


def main() -> None:
    """Print the count of each outcome per backend, and the rows that are not good."""
    import warnings

    warnings.simplefilter("ignore")
    for name in BACKENDS:
        with slope.use_backend(name):
            outcomes = {row.id: classify(row) for row in ROWS}
        counts = {kind: sum(1 for v in outcomes.values() if v == kind) for kind in ("good", "raw", "silent", "wrong")}
        print(f"{name}: {len(ROWS)} rows: {counts}")
        if "-v" in sys.argv:
            for row_id, outcome in outcomes.items():
                if outcome != "good":
                    print(f"  {outcome:7} {row_id}")


if __name__ == "__main__":
    main()
