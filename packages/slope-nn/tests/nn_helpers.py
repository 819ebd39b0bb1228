"""Helpers of the slope-nn tests: NumPy conversion, tolerances per dtype, finite differences, the MNIST folder."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

import slope

# Tolerances per dtype for comparing a layer against its NumPy reference (relative, absolute). float32 results go
# through different summation orders (MatMul, Conv kernels), so they agree to a few ulps of the largest terms.
# float16 and bfloat16 results are computed in float32 and rounded once, so they agree to about one of their ulps.
TOLERANCES = {
    "float16": (2e-3, 2e-3),
    "bfloat16": (1.6e-2, 1.6e-2),
    "float32": (2e-5, 2e-5),
    "float64": (1e-10, 1e-10),
}
# Gradients against central finite differences in float64 with step 1e-6: the truncation error is ~1e-12 * f''' and
# the rounding error ~1e-16 * |f| / 1e-6, so (relative 1e-6, absolute 1e-6) bounds both for these test functions.
FD_STEP = 1e-6
FD_TOLERANCE = (1e-6, 1e-6)

REPO = Path(__file__).resolve().parents[3]
SHARED_MNIST = REPO.parent / "shared" / "data" / "mnist"


def mnist_folder() -> Path | None:
    """The MNIST folder tests may use: $MNIST_DIR, else ../shared/data/mnist beside the repository, else None."""
    if os.environ.get("MNIST_DIR") and Path(os.environ["MNIST_DIR"]).is_dir():
        return Path(os.environ["MNIST_DIR"])
    return SHARED_MNIST if SHARED_MNIST.is_dir() else None


def to_numpy(value: Any) -> np.ndarray:
    """A NumPy array of a tensor (or anything array-like)."""
    return value.numpy() if isinstance(value, slope.Tensor) else np.asarray(value)


def assert_close(actual: Any, expected: Any, dtype: str = "float32") -> None:
    """Compare with the tolerance of the dtype."""
    rtol, atol = TOLERANCES[dtype]
    np.testing.assert_allclose(to_numpy(actual), np.asarray(expected), rtol=rtol, atol=atol)


def rng(seed: int = 0) -> np.random.Generator:
    """A seeded NumPy generator."""
    return np.random.default_rng(seed)


def finite_difference_check(fn: Callable, args: tuple, samples: int = 6, seed: int = 0) -> None:
    """Check slope.grad of scalar `fn(*args)` for every float64 leaf of every argument at a few random coordinates.

    Module buffers are skipped (layers read them through stop_gradient). The function is jitted once; the perturbed
    evaluations reuse the compiled program.
    """
    import slope.nn as nn

    kinds = [kind for _, kind in nn.leaf_kinds(args)]
    jitted = slope.jit(fn)
    differentiable = tuple(
        i
        for i, arg in enumerate(args)
        if all(isinstance(a, slope.Tensor) and a.dtype.is_float for a in slope.tree.leaves(arg))
    )
    grads = slope.jit(slope.grad(fn, argnums=differentiable))(*args)
    grads_by_arg = dict(zip(differentiable, grads))
    leaves, treedef = slope.tree.flatten(args)
    grad_leaves = []
    for i, arg in enumerate(args):
        count = len(slope.tree.leaves(arg))
        grad_leaves += slope.tree.leaves(grads_by_arg[i]) if i in grads_by_arg else [None] * count
    generator = np.random.default_rng(seed)
    rtol, atol = FD_TOLERANCE
    for index, (leaf, grad_leaf) in enumerate(zip(leaves, grad_leaves)):
        if (
            grad_leaf is None
            or kinds[index] == "buffer"
            or not isinstance(leaf, slope.Tensor)
            or leaf.dtype != slope.float64
        ):
            continue
        base = leaf.numpy()
        analytic = grad_leaf.numpy()
        for flat in generator.choice(base.size, size=min(samples, base.size), replace=False):
            position = np.unravel_index(flat, base.shape)
            values = []
            for sign in (1.0, -1.0):
                perturbed = base.copy()
                perturbed[position] += sign * FD_STEP
                new_leaves = list(leaves)
                new_leaves[index] = slope.tensor(perturbed)
                values.append(float(jitted(*slope.tree.unflatten(treedef, new_leaves))))
            numeric = (values[0] - values[1]) / (2 * FD_STEP)
            assert abs(analytic[position] - numeric) <= atol + rtol * abs(numeric), (
                f"leaf {index} at {position}: analytic {analytic[position]!r}, finite difference {numeric!r}"
            )
