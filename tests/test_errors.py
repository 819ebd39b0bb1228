"""Bad input (SPEC §8): every error names the operator or function, the shapes or dtypes involved, and what was
expected; Slope catches it before any backend library sees it.

Each case is one bad call, the exception type it must raise, and fragments its message must contain. The whole
table runs on every installed backend, so a backend crash can never be the first error a user sees.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import warnings

import numpy as np
import pytest

import slope
from slope import DTypeError, ShapeError, SlopeBackendError, SlopeTraceError, TransformError
from slope.plugins import SlopePluginError
from slope_testing import backends_under_test

BACKENDS = backends_under_test()


@pytest.fixture(params=BACKENDS)
def on_backend(request):
    """Run the test with each installed backend active."""
    with slope.use_backend(request.param) as backend:
        yield backend


def ones(*shape, dtype=None):
    return slope.ones(*shape, dtype=dtype)


def arr(values, dtype=np.float32):
    return slope.tensor(np.asarray(values, dtype=dtype))


# ----------------------------------------------------------------------------------------------- helpers for cases


def _custom_vjp_without_rule():
    @slope.custom_vjp
    def clipped(x):
        return x * 1.0

    return slope.grad(lambda x: clipped(x).sum())(ones(3))


def _custom_jvp_without_rule():
    @slope.custom_jvp
    def smooth(x):
        return x.sin()

    return slope.jvp(smooth, (ones(3),), (ones(3),))


def _custom_vjp_with_backward(backward):
    @slope.custom_vjp
    def double(x):
        return (x * 2.0).sum()

    double.defvjp(lambda x: (double.fun(x), None), backward)
    return slope.grad(double)(ones(3))


def _custom_vjp_identity():
    @slope.custom_vjp
    def identity(x):
        return x * 1.0

    identity.defvjp(lambda x: (x * 1.0, None), lambda res, g: (g,))
    return identity


class NotADataclass:
    pass


def _traced_bool_in_jit():
    return slope.jit(lambda x: x * 2.0 if x.sum() > 0 else x)(ones(3))


def _traced_int_in_grad():
    return slope.grad(lambda x: (x * int(x.sum())).sum())(ones(3))


def _traced_index_in_jit():
    return slope.jit(lambda x, n: x[:n])(ones(3), slope.tensor(2))


def _traced_bool_in_vmap():
    return slope.vmap(lambda x: x if x > 0 else -x)(ones(3))


def _traced_float_in_jvp():
    return slope.jvp(lambda x: x * float(x), (slope.tensor(1.0),), (slope.tensor(1.0),))


def _bool_mask_under_jit():
    return slope.jit(lambda x: x[x > 0])(ones(3))


def _set_item():
    t = ones(3)
    t[0] = 5.0


def _dataclass_not_registered():
    @dataclasses.dataclass
    class Params:
        w: object

    return slope.grad(lambda p: p.w.sum())(Params(ones(3)))


# ----------------------------------------------------------------------------------------------- the table

# (id, bad call, exception type, fragments the message must contain)
CASES = [
    # broadcasting and elementwise
    ("add-broadcast", lambda: ones(2, 3) + ones(4), ShapeError, ["slope.add", "(2, 3)", "(4,)", "broadcast"]),
    ("mul-broadcast", lambda: ones(2, 3) * ones(2, 2), ShapeError, ["slope.mul", "(2, 3)", "(2, 2)", "broadcast"]),
    ("where-broadcast", lambda: slope.where(ones(3) > 0, ones(3), ones(4)), ShapeError, ["slope.where", "(3,)", "(4,)"]),
    ("where-condition-dtype", lambda: slope.where(ones(3), ones(3), ones(3)), DTypeError,
     ["slope.where", "bool condition", "float32", "(3,)"]),
    ("bitwise-on-float", lambda: ones(3) & ones(3), DTypeError, ["slope.bitwise_and", "integer or bool", "float32"]),
    ("combine-with-str", lambda: ones(3) + "a", DTypeError, ["slope.add", "float32", "str", "'a'"]),
    ("combine-with-none", lambda: ones(2) * None, DTypeError, ["slope.mul", "float32", "NoneType"]),
    # matmul
    ("matmul-inner", lambda: ones(2, 3) @ ones(4, 5), ShapeError,
     ["slope.matmul", "shapes 2x3 and 4x5 cannot be multiplied", "3 != 4"]),
    ("matmul-vectors", lambda: ones(3) @ ones(4), ShapeError, ["slope.matmul", "cannot be multiplied", "3 != 4"]),
    ("matmul-0d", lambda: slope.tensor(1.0) @ ones(3), ShapeError, ["slope.matmul", "at least 1 dimension", "()", "(3,)"]),
    ("matmul-batch", lambda: ones(2, 3, 4) @ ones(3, 4, 5), ShapeError, ["slope.matmul", "(2,)", "(3,)", "broadcast"]),
    ("matmul-bool", lambda: slope.tensor([[True]]) @ slope.tensor([[True]]), DTypeError, ["slope.matmul", "bool"]),
    # shape operators
    ("reshape-size", lambda: ones(2, 3).reshape(4, 2), ShapeError,
     ["slope.reshape", "(2, 3)", "6 elements", "(4, 2)"]),
    ("reshape-infer", lambda: ones(2, 3).reshape(-1, 4), ShapeError, ["slope.reshape", "(2, 3)", "(-1, 4)"]),
    ("reshape-two-minus-one", lambda: ones(2, 3).reshape(-1, -1), ShapeError, ["slope.reshape", "only one", "-1"]),
    ("unflatten-size", lambda: ones(6).unflatten(0, (4, 2)), ShapeError, ["unflatten", "(6,)", "(4, 2)"]),
    ("permute-repeat", lambda: ones(2, 3).permute(0, 0), ShapeError,
     ["slope.permute", "(0, 0)", "not a permutation", "(2, 3)"]),
    ("permute-length", lambda: ones(2, 3).permute(0, 1, 2), ShapeError,
     ["slope.permute", "(0, 1, 2)", "2 dimensions", "(2, 3)"]),
    ("permute-out-of-range", lambda: ones(2, 3, 4).permute(-5, 0, 2), IndexError,
     ["slope.permute", "-5", "3 dimensions"]),
    ("expand", lambda: ones(2, 3).expand(4, 3), ShapeError, ["slope.expand", "(2, 3)", "(4, 3)"]),
    ("expand-negative", lambda: ones(3).expand(-1, -1), ShapeError, ["slope.expand", "(-1, 3)"]),
    ("transpose-dim", lambda: ones(2, 3).transpose(0, 3), IndexError,
     ["slope.transpose", "dimension 3", "2 dimensions", "-2 to 1"]),
    ("squeeze-dim", lambda: ones(2, 3).squeeze(4), IndexError, ["slope.squeeze", "dimension 4", "2 dimensions"]),
    ("flip-dim", lambda: ones(3).flip(2), IndexError, ["slope.flip", "dimension 2", "1 dimensions"]),
    ("repeat-too-few", lambda: ones(2, 3).repeat(2), ShapeError, ["slope.repeat", "1 repeats", "(2, 3)"]),
    ("split-sections", lambda: ones(5).split([2, 2]), ShapeError, ["slope.split", "[2, 2]", "(5,)"]),
    ("chunk-zero", lambda: ones(3).chunk(0), ShapeError, ["slope.chunk", "positive", "0"]),
    ("tril-1d", lambda: ones(3).tril(), ShapeError, ["slope.tril", "2 dimensions", "(3,)"]),
    # reductions and dims
    ("sum-dim", lambda: ones(2, 3).sum(2), IndexError, ["slope.sum", "dimension 2", "2 dimensions", "-2 to 1"]),
    ("sum-dim-0d", lambda: slope.tensor(1.0).sum(1), IndexError, ["slope.sum", "dimension 1", "0 dimensions"]),
    ("mean-dim", lambda: ones(2).mean((0, 5)), IndexError, ["slope.mean", "dimension 5", "1 dimensions"]),
    ("softmax-dim", lambda: ones(2, 3).softmax(5), IndexError, ["slope.softmax", "dimension 5", "2 dimensions"]),
    ("log-softmax-dim", lambda: ones(2, 3).log_softmax(-3), IndexError, ["slope.log_softmax", "dimension -3"]),
    ("argmax-dim", lambda: ones(3).argmax(2), IndexError, ["slope.argmax", "dimension 2", "1 dimensions"]),
    ("max-empty", lambda: ones(0, 3).max(0), ShapeError, ["slope.max", "empty", "(0, 3)"]),
    # cat / stack
    ("cat-dim", lambda: slope.cat([ones(2, 3), ones(2, 3)], 3), IndexError, ["slope.cat", "dimension 3", "2 dimensions"]),
    ("cat-shapes", lambda: slope.cat([ones(2, 3), ones(3, 3)], 1), ShapeError,
     ["slope.cat", "(2, 3)", "(3, 3)", "except in dimension 1"]),
    ("cat-ndim", lambda: slope.cat([ones(2, 3), ones(3)], 0), ShapeError, ["slope.cat", "(2, 3)", "(3,)"]),
    ("cat-empty", lambda: slope.cat([]), ShapeError, ["slope.cat", "non-empty"]),
    ("stack-shapes", lambda: slope.stack([ones(2), ones(3)]), ShapeError, ["slope.stack", "(2,)", "(3,)", "one shape"]),
    # convolution and pooling
    ("conv-channels", lambda: slope.conv(ones(1, 3, 8, 8), ones(4, 2, 3, 3)), ShapeError,
     ["slope.conv", "(1, 3, 8, 8)", "(4, 2, 3, 3)", "expected 2 input channels"]),
    ("conv-kernel-larger", lambda: slope.conv(ones(1, 3, 2, 2), ones(4, 3, 3, 3)), ShapeError,
     ["slope.conv", "kernel (3, 3)", "larger", "(1, 3, 2, 2)"]),
    ("conv-ndim", lambda: slope.conv(ones(3, 3), ones(2, 2)), ShapeError, ["slope.conv", "(N, C, *spatial)", "(3, 3)"]),
    ("conv-int", lambda: slope.conv(ones(1, 1, 3, 3, dtype=slope.int64), ones(1, 1, 2, 2, dtype=slope.int64)),
     DTypeError, ["slope.conv", "floating", "int64"]),
    ("conv-stride-length", lambda: slope.conv(ones(1, 1, 3, 3), ones(1, 1, 2, 2), stride=(1, 1, 1)), ValueError,
     ["slope.conv", "expected 2 values", "(1, 1, 1)"]),
    ("max-pool-kernel-larger", lambda: slope.max_pool(ones(1, 1, 2, 2), 3), ShapeError,
     ["slope.max_pool", "kernel (3, 3)", "larger", "(1, 1, 2, 2)"]),
    ("avg-pool-kernel-larger", lambda: slope.avg_pool(ones(1, 1, 2, 2), (3, 1)), ShapeError,
     ["slope.avg_pool", "kernel (3, 1)", "(1, 1, 2, 2)"]),
    # pad
    ("pad-odd", lambda: ones(2, 3).pad((1,)), ShapeError, ["slope.pad", "(1,)", "even length", "at most 4"]),
    ("pad-too-long", lambda: ones(2, 3).pad((1, 1, 1, 1, 1, 1)), ShapeError, ["slope.pad", "(1, 1, 1, 1, 1, 1)"]),
    ("pad-lo-hi", lambda: slope.pad(ones(3), lo=(1, 1), hi=(1, 1)), ShapeError,
     ["slope.pad", "length 1", "(3,)", "(1, 1)"]),
    # indexing
    ("index-out-of-range", lambda: ones(2, 3)[5], IndexError, ["slope.getitem", "index 5", "dimension 0 of size 2"]),
    ("index-out-of-range-dim1", lambda: ones(2, 3)[0, -4], IndexError,
     ["slope.getitem", "index -4", "dimension 1 of size 3"]),
    ("index-tensor-out-of-range", lambda: ones(2, 3)[slope.tensor([0, 5])], IndexError,
     ["slope.getitem", "5", "dimension 0 of size 2", "-2 to 1"]),
    ("too-many-indices", lambda: ones(2, 3)[0, 0, 0], IndexError, ["slope.getitem", "too many indices", "(2, 3)"]),
    ("slice-step-zero", lambda: ones(2, 3)[:, ::0], ValueError, ["slope.getitem", "step cannot be zero", "dim 1", "(2, 3)"]),
    ("slice-step-zero-update", lambda: slope.index_update(ones(4), slice(0, 2, 0), 1.0), ValueError,
     ["slope.getitem", "step cannot be zero", "dim 0", "(4,)"]),
    # (PyTorch takes x[..., 0, ...]: each ellipsis stands for the dimensions no other item names; here the second 0
    # falls past the last dimension, which PyTorch refuses too)
    ("two-ellipses", lambda: ones(2, 3, 4)[..., 0, ..., 0], IndexError, ["slope.getitem", "ellipses", "(2, 3, 4)"]),
    ("float-tensor-index", lambda: ones(2, 3)[arr([0.5])], IndexError, ["slope.getitem", "integers", "float32"]),
    ("bool-mask-under-jit", _bool_mask_under_jit, TypeError, ["slope.getitem", "boolean mask", "slope.where"]),
    ("setitem", _set_item, TypeError, ["immutable", "t.at[i].set(v)"]),
    ("at-set-shape", lambda: ones(3).at[0:2].set(ones(3)), ShapeError, ["slope.index_update", "(3,)", "(2,)"]),
    ("at-set-too-big", lambda: ones(3).at[0:2].set(ones(3, 2)), ShapeError, ["slope.index_update", "(3, 2)", "(2,)"]),
    ("at-out-of-range", lambda: ones(3).at[7].set(1.0), IndexError, ["index 7", "size 3"]),
    ("gather-float-index", lambda: slope.gather(ones(3, 3), 0, ones(1, 1)), DTypeError,
     ["slope.gather", "integers", "float32", "(1, 1)"]),
    ("gather-dim", lambda: slope.gather(ones(3, 3), 3, slope.tensor([[0]])), IndexError, ["slope.gather", "dimension 3"]),
    ("gather-nd-float-index", lambda: slope.gather_nd(ones(3), ones(1, 1)), DTypeError, ["slope.gather_nd", "float32"]),
    ("scatter-nd-updates", lambda: slope.scatter_nd(ones(3), slope.tensor([[0]]), ones(2)), ShapeError,
     ["slope.scatter_nd", "[1, f32]", "[2, f32]"]),
    # conversion of traced values (Python control flow under transformations)
    ("traced-bool-in-jit", _traced_bool_in_jit, SlopeTraceError,
     ["bool(tensor)", "traced", "[b8]", "slope.where", "static_argnums"]),
    ("traced-int-in-grad", _traced_int_in_grad, SlopeTraceError, ["int(tensor)", "traced", "[f32]", "slope.where"]),
    ("traced-index-in-jit", _traced_index_in_jit, SlopeTraceError, ["index", "traced", "[i64]", "static_argnums"]),
    ("traced-bool-in-vmap", _traced_bool_in_vmap, SlopeTraceError, ["bool(tensor)", "traced", "slope.where"]),
    ("traced-float-in-jvp", _traced_float_in_jvp, SlopeTraceError, ["float(tensor)", "traced", "static_argnums"]),
    ("numpy-of-traced", lambda: slope.jit(lambda x: np.asarray(x))(ones(2)), SlopeTraceError,
     ["Tensor.numpy()", "traced", "[2, f32]"]),
    # concrete conversions
    ("bool-of-many", lambda: bool(ones(3)), ValueError, ["bool(tensor)", "one-element", "(3,)"]),
    ("float-of-many", lambda: float(ones(2, 2)), ValueError, ["float(tensor)", "one-element", "(2, 2)"]),
    ("item-of-many", lambda: ones(3).item(), ValueError, ["item", "one-element", "(3,)"]),
    ("len-of-0d", lambda: len(slope.tensor(1.0)), TypeError, ["len()", "0-d"]),
    # grad / vjp / jvp / linearize
    ("grad-non-scalar", lambda: slope.grad(lambda x: x * 2.0)(ones(3)), TransformError,
     ["slope.grad", "scalar", "[3, f32]", "sum"]),
    ("grad-int-output", lambda: slope.grad(lambda x: (x > 0).sum())(ones(3)), TransformError,
     ["slope.grad", "scalar", "floating-point", "i64"]),
    ("grad-int-input", lambda: slope.grad(lambda x: (x * 2).sum())(slope.tensor([1, 2])), TransformError,
     ["slope.grad", "argument 0", "int64", "floating-point"]),
    ("grad-str-input", lambda: slope.grad(lambda x: x)("abc"), TransformError, ["slope.grad", "argument 0", "str"]),
    ("grad-unregistered-dataclass", _dataclass_not_registered, TransformError, ["slope.grad", "argument 0", "Params", "slope.tree.register"]),
    ("grad-argnums", lambda: slope.grad(lambda x: x.sum(), argnums=2)(ones(3)), TransformError,
     ["slope.grad", "argnums 2", "1 arguments"]),
    ("grad-argnums-negative", lambda: slope.grad(lambda x, y: x.sum(), argnums=(0, -3))(ones(3), ones(3)),
     TransformError, ["slope.grad", "(0, -3)", "2 arguments"]),
    ("grad-has-aux-not-pair", lambda: slope.grad(lambda x: x.sum(), has_aux=True)(ones(3)), TransformError,
     ["slope.grad", "has_aux=True", "pair (output, aux)", "got [f32]"]),
    ("grad-has-aux-triple", lambda: slope.value_and_grad(lambda x: (x.sum(), 1, 2), has_aux=True)(ones(3)),
     TransformError, ["grad", "has_aux=True", "pair", "tuple of 3"]),
    ("jacfwd-argnums", lambda: slope.jacfwd(lambda x: x, argnums=3)(ones(3)), TransformError,
     ["slope.jacfwd", "argnums 3", "1 arguments"]),
    ("jacrev-argnums", lambda: slope.jacrev(lambda x, y: x, argnums=2)(ones(3), ones(3)), TransformError,
     ["slope.jacrev", "argnums 2", "2 arguments"]),
    ("hessian-argnums", lambda: slope.hessian(lambda x: x.sum(), argnums=3)(ones(3)), TransformError,
     ["slope.hessian", "argnums 3", "1 arguments"]),  # (they named slope.jacfwd, which hessian is built from)
    ("hessian-int-input", lambda: slope.hessian(lambda x: (x * 2).sum())(slope.tensor([1, 2])), TransformError,
     ["slope.hessian", "argument 0", "int64", "floating-point"]),
    ("jvp-tangent-shape", lambda: slope.jvp(lambda x: x * 2.0, (ones(3),), (ones(4),)), TransformError,
     ["slope.jvp", "[3, f32]", "[4, f32]", "match"]),
    ("jvp-tangent-dtype", lambda: slope.jvp(lambda x: x * 2.0, (ones(3),), (ones(3, dtype=slope.float64),)),
     TransformError, ["slope.jvp", "[3, f32]", "[3, f64]"]),
    ("jvp-structure", lambda: slope.jvp(lambda x, y: x, (ones(3), ones(3)), (ones(3),)), TransformError,
     ["slope.jvp", "tuple(*, *)", "tuple(*)", "structure"]),
    ("vjp-cotangent-shape", lambda: slope.vjp(lambda x: x * 2.0, ones(3))[1](ones(4)), TransformError,
     ["slope.vjp", "[4, f32]", "[3, f32]"]),
    # custom rules
    ("custom-vjp-without-defvjp", _custom_vjp_without_rule, TransformError,
     ["slope.custom_vjp", "clipped", ".defvjp(fwd, bwd)"]),
    ("custom-jvp-without-defjvp", _custom_jvp_without_rule, TransformError,
     ["slope.custom_jvp", "smooth", ".defjvp(rule)"]),
    ("custom-vjp-backward-not-tuple", lambda: _custom_vjp_with_backward(lambda res, g: g), TransformError,
     ["slope.custom_vjp", "backward", "tuple"]),
    ("custom-vjp-backward-count", lambda: _custom_vjp_with_backward(lambda res, g: (g, g)), TransformError,
     ["slope.custom_vjp", "one per input", "expected: 1, got: 2"]),
    ("custom-vjp-backward-shape", lambda: _custom_vjp_with_backward(lambda res, g: (ones(4),)), TransformError,
     ["slope.custom_vjp", "(4,)", "(3,)"]),
    ("custom-vjp-forward-mode", lambda: slope.jvp(lambda x: _custom_vjp_identity()(x), (ones(3),), (ones(3),)),
     TransformError, ["slope.custom_vjp", "forward mode", "jvp", "custom_jvp"]),
    # vmap
    ("vmap-axis-sizes", lambda: slope.vmap(lambda a, b: a + b)(ones(3), ones(4)), TransformError,
     ["slope.vmap", "same size", "size 3", "size 4"]),
    ("vmap-in-axes-range", lambda: slope.vmap(lambda a: a, in_axes=2)(ones(3)), TransformError,
     ["slope.vmap", "in_axes 2", "(3,)"]),
    ("vmap-in-axes-0d", lambda: slope.vmap(lambda a: a)(slope.tensor(1.0)), TransformError,
     ["slope.vmap", "in_axes 0", "shape ()"]),
    ("vmap-in-axes-length", lambda: slope.vmap(lambda a, b: a, in_axes=(0,))(ones(3), ones(3)), TransformError,
     ["slope.vmap", "in_axes (0,)", "2 arguments"]),
    ("vmap-in-axes-structure", lambda: slope.vmap(lambda d: d["a"], in_axes=({"b": 0},))({"a": ones(3)}),
     TransformError, ["slope.vmap", "{'b': 0}", "structure"]),
    ("vmap-no-mapped-axis", lambda: slope.vmap(lambda a: a, in_axes=None)(ones(3)), TransformError,
     ["slope.vmap", "in_axes", "batch axis"]),
    ("vmap-out-axes-range", lambda: slope.vmap(lambda a: a, out_axes=3)(ones(3, 2)), TransformError,
     ["slope.vmap", "out_axes 3", "(2,)", "-2 to 1"]),
    # jit
    ("jit-static-argnums", lambda: slope.jit(lambda x, n: x * n, static_argnums=3)(ones(3), 2), TransformError,
     ["slope.jit", "static_argnums 3", "2 arguments"]),
    ("jit-unhashable-static", lambda: slope.jit(lambda x, n: x, static_argnums=1)(ones(3), [1]), TransformError,
     ["slope.jit", "hashable", "list"]),
    # dtypes and creation
    ("unknown-dtype-name", lambda: ones(3, dtype="float128"), TypeError, ["dtype 'float128'", "float32", "int64"]),
    ("unknown-dtype-cast", lambda: ones(3).to("complex64"), TypeError, ["dtype 'complex64'", "bfloat16"]),
    ("tensor-from-str", lambda: slope.tensor("abc"), TypeError, ["slope.tensor", "str"]),
    ("tensor-ragged", lambda: slope.tensor([[1.0, 2.0], [3.0]]), ValueError, ["slope.tensor", "rectangular"]),
    ("full-negative", lambda: slope.ones(-1, 3), ShapeError, ["slope.ones", "negative", "(-1, 3)"]),
    ("arange-step-zero", lambda: slope.arange(0, 5, 0), ShapeError, ["slope.arange", "step"]),
    ("one-hot-float", lambda: slope.one_hot(ones(3), 3), TypeError, ["slope.one_hot", "integer", "float32"]),
    ("one-hot-out-of-range", lambda: slope.one_hot(slope.tensor([0, 5]), 3), IndexError,
     ["slope.one_hot", "5", "3 classes", "0 to 2"]),
    ("tree-register", lambda: slope.tree.register(NotADataclass), TypeError,
     ["slope.tree.register", "NotADataclass", "dataclass"]),
    # losses
    ("cross-entropy-target-shape", lambda: slope.cross_entropy(ones(4, 3), slope.tensor([0, 1, 2])), ShapeError,
     ["slope.cross_entropy", "(3,)", "(4, 3)", "expected (4,)"]),
    ("cross-entropy-probability-shape", lambda: slope.cross_entropy(ones(4, 3), ones(4, 2)), ShapeError,
     ["slope.cross_entropy", "(4, 2)", "(4, 3)"]),
    ("cross-entropy-class-range", lambda: slope.cross_entropy(ones(4, 3), slope.tensor([0, 1, 2, 3])), IndexError,
     ["slope.cross_entropy", "3", "(4, 3)", "0 to 2"]),
    ("cross-entropy-reduction", lambda: slope.cross_entropy(ones(2, 3), slope.tensor([0, 1]), reduction="avg"),
     ValueError, ["slope.cross_entropy", "'mean'", "'avg'"]),
    # random
    ("random-key-shape", lambda: slope.random.normal(slope.tensor([1, 2, 3]), (3,)), TypeError,
     ["slope.random.normal", "key", "[3, i64]", "(2,)"]),
    ("random-key-dtype", lambda: slope.random.uniform(arr([1.0, 2.0]), (3,)), TypeError,
     ["slope.random.uniform", "int64", "[2, f32]"]),
    ("random-key-int", lambda: slope.random.split(5), TypeError, ["slope.random.split", "key", "int"]),
    ("random-float-dtype", lambda: slope.random.uniform(slope.random.key(0), (3,), slope.int32), DTypeError,
     ["slope.random_uniform", "floating", "int32"]),
    ("random-randint-range", lambda: slope.random.randint(slope.random.key(0), (3,), 5, 2), ValueError,
     ["slope.random.randint", "minval < maxval", "5", "2"]),
    # under vmap, the user's shapes (batch 7 was added to the messages: (7, 2, 3) into (7, 4, 2), groups=7 ...)
    ("vmap-reshape-shapes", lambda: slope.vmap(lambda a: a.reshape(4, 2))(ones(7, 2, 3)), ShapeError,
     ["slope.reshape", "shape (2, 3) (6 elements)", "into shape (4, 2)"]),
    ("vmap-conv-shapes", lambda: slope.vmap(slope.conv)(ones(7, 1, 3, 5, 5), ones(7, 2, 4, 2, 2)), ShapeError,
     ["slope.conv", "input of shape (1, 3, 5, 5)", "weight of shape (2, 4, 2, 2) with groups=1"]),
    ("vmap-cat-shapes", lambda: slope.vmap(lambda a, b: slope.cat([a, b], 0))(ones(7, 2, 3), ones(7, 2, 4)),
     ShapeError, ["slope.cat", "[(2, 3), (2, 4)]", "except in dimension 0"]),
    ("vmap-ceil-bool", lambda: slope.vmap(slope.ceil)(ones(7, 2, 3) > 0), DTypeError,
     ["slope.ceil", "bool of shape (2, 3)"]),
    # conv with an input of another rank than the weight's (named "expected 0 values for stride")
    ("conv-input-rank", lambda: slope.conv(ones(5, 5), ones(2, 1, 3, 3), stride=(1, 1)), ShapeError,
     ["slope.conv", "(N, C, *spatial)", "(5, 5), (2, 1, 3, 3)"]),
    ("conv-input-rank-5d", lambda: slope.conv(ones(1, 1, 1, 5, 5), ones(2, 1, 3, 3), stride=(1, 1)), ShapeError,
     ["slope.conv", "(1, 1, 1, 5, 5), (2, 1, 3, 3)"]),
    # backends and devices
    ("unknown-backend", lambda: slope.set_backend("tpu"), SlopeBackendError,
     ["unknown backend 'tpu'", "installed backends", *BACKENDS]),
    ("unknown-backend-context", lambda: slope.use_backend("nope").__enter__(), SlopeBackendError,
     ["unknown backend 'nope'", *BACKENDS]),
    ("unknown-device-tensor", lambda: slope.tensor([1.0], device="cuda:7"), SlopeBackendError,
     ["device 'cuda:7'", "not available", "cpu"]),
    ("unknown-device-set", lambda: slope.set_device("tpu:0"), SlopeBackendError,
     ["device 'tpu:0'", "not available", "cpu"]),
]  # fmt: skip


@pytest.mark.parametrize("call, error, fragments", [pytest.param(*case[1:], id=case[0]) for case in CASES])
def test_bad_input(on_backend, call, error, fragments):
    with pytest.raises(error) as raised:
        call()
    message = str(raised.value)
    missing = [fragment for fragment in fragments if fragment not in message]
    assert not missing, f"message {message!r} lacks {missing}"
    # the error comes from Slope, not from deep inside a backend library
    assert "slope" in message.lower() or "tensor" in message.lower() or "len()" in message


def test_enough_distinct_cases():
    assert len({case[0] for case in CASES}) == len(CASES) >= 30


def test_failed_device_selection_leaves_the_device_unchanged(on_backend):
    with pytest.raises(SlopeBackendError, match="cuda:3"):
        slope.set_device("cuda:3")
    assert slope.ones(2).device == "cpu"
    assert (slope.ones(2) * 2.0).tolist() == [2.0, 2.0]


@pytest.mark.parametrize("name", ["jacfwd", "jacrev", "hessian"])
def test_jacobians_name_the_function_called_and_no_pytrees(on_backend, name):
    # an int argument: hessian's error named slope.jacfwd, and all three said "(or pytrees of them; register
    # containers with slope.tree.register)", though they take no pytrees (grad does, and still says so)
    with pytest.raises(TransformError) as raised:
        getattr(slope, name)(lambda x: (x * 2).sum())(slope.tensor([1, 2]))
    assert str(raised.value).startswith(f"slope.{name}: argument 0 holds int64") and "pytree" not in str(raised.value)
    with pytest.raises(TransformError, match="pytrees of them"):
        slope.grad(lambda x: (x * 2).sum())(slope.tensor([1, 2]))


def test_integer_exp_promotes_instead_of_failing(on_backend):
    out = slope.tensor([0, 1]).exp()
    assert out.dtype == slope.float32
    np.testing.assert_allclose(out.numpy(), np.exp([0.0, 1.0]), rtol=1e-6)


def test_grad_error_is_raised_before_any_backend_work(on_backend):
    """The dtype check of grad happens before the function is traced (the function is never called)."""
    calls = []

    def loss(x):
        calls.append(x)
        return x.sum()

    with pytest.raises(TransformError, match="int64"):
        slope.grad(loss)(slope.tensor([1, 2]))
    assert calls == []


def test_custom_vjp_fwd_must_return_a_pair(on_backend):
    """A fwd returning the output alone raised "too many values to unpack" (or, for two rows, took them as output and
    residuals and failed later naming slope.custom_jvp)."""
    twice = slope.custom_vjp(lambda x: x * 2)
    twice.defvjp(lambda x: x * 2, lambda residuals, cotangent: (cotangent * 2,))
    for shape, got in (((3,), "[3, f32]"), ((2,), "[2, f32]")):
        with pytest.raises(TransformError, match=rf"slope\.custom_vjp: fwd must return a pair .*got \{got}"):
            slope.grad(lambda x: twice(x).sum())(ones(*shape))


def test_custom_jvp_rule_must_return_a_pair(on_backend):
    """A rule returning the tangent alone raised "iteration over a 0-d tensor" (or, for two rows, took them as output
    and tangent and failed later, comparing avals); now the error names the function and what the rule returned."""
    double = slope.custom_jvp(lambda x: x * 2)
    double.defjvp(lambda primals, tangents: tangents[0] * 2)
    for shape, got in (((), "[f32]"), ((2,), "[2, f32]")):
        must = r"slope\.custom_jvp: the rule of <lambda> must return a pair \(output, tangent\)"
        with pytest.raises(TransformError, match=rf"{must}, got \{got}"):
            slope.grad(lambda x: double(x).sum())(ones(*shape))


def test_pow_with_a_modulo_is_a_type_error(on_backend):
    """pow(tensor, 3, 5) raised KeyError: 5 (the modulo filled a lambda's default); PyTorch raises a TypeError."""
    with pytest.raises(TypeError, match="positional arguments"):
        pow(slope.tensor(2), 3, 5)


def test_errors_under_jit_name_the_operator(on_backend):
    """Shape errors found while tracing for jit are the same clear errors as in eager mode."""
    with pytest.raises(ShapeError, match=r"slope\.matmul: shapes 2x3 and 4x5 cannot be multiplied"):
        slope.jit(lambda a, b: a @ b)(ones(2, 3), ones(4, 5))
    with pytest.raises(ShapeError, match=r"slope\.add: shapes \(2, 3\) and \(4,\)"):
        slope.jit(slope.grad(lambda a, b: (a + b).sum()))(ones(2, 3), ones(4))
    with pytest.raises(ShapeError, match=r"slope\.reshape"):
        slope.vmap(lambda a: a.reshape(4))(ones(2, 3))


def test_plugin_that_fails_to_import_is_a_warning(monkeypatch):
    """A broken plugin is reported (by name, with its error) and the rest of Slope keeps working."""
    broken = importlib.metadata.EntryPoint(
        name="broken-test-plugin", value="slope_no_such_module_for_tests", group="slope"
    )
    real = slope.plugins.entry_points
    monkeypatch.setattr(slope.plugins, "entry_points", lambda group: [*real(group=group), broken])
    try:
        with pytest.warns(UserWarning, match=r"plugin 'broken-test-plugin'.*ModuleNotFoundError"):
            slope.plugins.load_entry_points()
        assert "broken-test-plugin" in slope.plugins.failed
        assert (slope.ones(2) + 1.0).tolist() == [2.0, 2.0]
    finally:
        slope.plugins.failed.pop("broken-test-plugin", None)


def test_plugin_name_clash_names_both_plugins():
    class First:
        @slope.plugins.hookimpl
        def slope_procedures(self):
            return {"clash_for_tests": lambda x: x}

    class Second:
        @slope.plugins.hookimpl
        def slope_procedures(self):
            return {"clash_for_tests": lambda x: x * 2.0}

    first = First()
    slope.plugins.register(first, "first-plugin")
    try:
        with pytest.raises(SlopePluginError) as raised:
            slope.plugins.register(Second(), "second-plugin")
        assert "clash_for_tests" in str(raised.value)
        assert "first-plugin" in str(raised.value) and "second-plugin" in str(raised.value)
        assert slope.clash_for_tests(slope.ones(1)).tolist() == [1.0]  # the first one still works
    finally:
        slope.plugins.unregister(first)
    assert "clash_for_tests" not in slope.plugins.procedures


def test_warnings_do_not_hide_errors():
    """Bad input raises even when warnings are turned into errors (no warning is emitted first)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ShapeError):
            ones(2, 3) @ ones(4, 5)


def test_every_error_is_a_slope_error_defined_in_errors_py():
    """Issue 12 point 13: one module holds Slope's errors; each is a SlopeError and the built-in it refines."""
    import inspect

    from slope import errors

    classes = {
        name: cls for name, cls in vars(errors).items() if inspect.isclass(cls) and cls.__module__ == errors.__name__
    }
    assert set(classes) >= {"SlopeError", "ShapeError", "DTypeError", "SlopeMemoryError", "SlopeBackendError",
                            "SlopePluginError", "SlopeTraceError", "TransformError"}  # fmt: skip
    for cls in classes.values():
        assert issubclass(cls, slope.SlopeError), cls
    assert issubclass(SlopeBackendError, RuntimeError) and issubclass(SlopePluginError, RuntimeError)
    assert issubclass(SlopeTraceError, TypeError) and issubclass(TransformError, ValueError)
    # the old import places keep working and name the same classes
    assert (
        slope.operator.ShapeError is errors.ShapeError and slope.backend.SlopeBackendError is errors.SlopeBackendError
    )
    assert slope.plugins.SlopePluginError is slope.SlopePluginError is SlopePluginError
    assert slope.trace.SlopeTraceError is SlopeTraceError and slope.transforms.TransformError is TransformError
    # no error class is defined anywhere else in slope-core
    for module in (slope.operator, slope.backend, slope.plugins, slope.trace, slope.transforms, slope.tensors):
        assert not [c for c in vars(module).values() if inspect.isclass(c) and issubclass(c, BaseException)
                    and c.__module__ == module.__name__], module  # fmt: skip


def test_a_backend_that_is_not_installed_names_its_distribution(monkeypatch):
    # SLOPE_BACKEND=iree without slope-iree said only "unknown backend 'iree'; installed backends: [...]"
    monkeypatch.setenv("SLOPE_BACKEND", "iree")
    monkeypatch.setattr(slope.plugins, "backends", {k: v for k, v in slope.plugins.backends.items() if k != "iree"})
    monkeypatch.setattr(slope.backend, "_instances", {})
    with pytest.raises(SlopeBackendError, match=r"'iree' \(\$SLOPE_BACKEND\) \(pip install slope-core\[iree\]\)"):
        slope.get_backend("iree")
    with pytest.raises(SlopeBackendError, match=r"unknown backend 'tpu'; installed backends"):
        slope.get_backend("tpu")
