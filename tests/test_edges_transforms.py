"""What the transformations' differential tests (tests/differential/test_differential_transforms.py) found, as focused
checks on every backend under test: fill values that differ only in the sign of zero (eager caches), and log1p's
higher derivatives at 0."""

from __future__ import annotations

import numpy as np
import pytest

import slope


@pytest.mark.parametrize("first", [0.0, -0.0])
def test_full_and_pad_keep_the_sign_of_a_zero_fill(backend: str, first: float) -> None:
    """full(-0.0) after full(0.0) (and the other way) gave the first one's zeros: the eager cache's key compared the
    fill values with ==, for which -0.0 is 0.0 (vmap(neg) of a 0-d 0.0 gave +0.0 after any abs had run)."""
    x = slope.tensor(np.ones(2, np.float32))
    for value in (first, -first):
        sign = bool(np.signbit(value))
        assert np.signbit(slope.full((2,), value).numpy()).tolist() == [sign] * 2, f"full((2,), {value})"
        assert np.signbit(slope.full((), value).numpy()) == sign, f"full((), {value})"
        assert np.signbit(slope.pad(x, (1, 1), value=value).numpy()).tolist() == [sign, False, False, sign]
    slope.vmap(slope.abs)(slope.tensor(np.zeros(1, np.float32)))  # (abs adds a constant 0.0 of the example's shape)
    assert np.signbit(slope.vmap(slope.neg)(slope.tensor(np.zeros(1, np.float32))).numpy()).tolist() == [True]


def test_full_finds_a_nan_fill_in_its_cache(backend: str) -> None:
    """NaN != NaN: each full(NaN) compiled (and cached) its program anew."""
    slope.full((3,), float("nan"))
    compiled = len(slope.backend._compiled)
    for _ in range(3):
        assert np.isnan(slope.full((3,), float("nan")).numpy()).all()
    assert len(slope.backend._compiled) == compiled


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_log1p_derivatives_at_zero(backend: str, dtype: str) -> None:
    """At 0 (and where x * x underflows) log1p was x itself: first derivative 1, but the second 0 (it is -1) and
    the third 0 (it is 2); elsewhere the derivatives are -1 / (1 + x)**2 and 2 / (1 + x)**3."""
    points = np.array([0.0, -0.0, 1e-30, 0.25, -0.5], dtype)
    x = slope.tensor(points)

    def first(v: slope.Tensor) -> slope.Tensor:
        return slope.grad(lambda u: slope.log1p(u).sum())(v)

    def second(v: slope.Tensor) -> slope.Tensor:
        return slope.grad(lambda u: first(u).sum())(v)

    third = slope.grad(lambda u: second(u).sum())(x)
    wide = points.astype(np.float64)
    rtol = 1e-6 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(first(x).numpy(), 1 / (1 + wide), rtol=rtol)
    np.testing.assert_allclose(second(x).numpy(), -1 / (1 + wide) ** 2, rtol=rtol)
    np.testing.assert_allclose(third.numpy(), 2 / (1 + wide) ** 3, rtol=rtol)
    forward = slope.jvp(lambda u: slope.jvp(slope.log1p, (u,), (slope.ones_like(u),))[1], (x,), (slope.ones_like(x),))
    np.testing.assert_allclose(forward[1].numpy(), -1 / (1 + wide) ** 2, rtol=rtol)
    assert np.signbit(slope.log1p(x).numpy()).tolist() == [False, True, False, False, True]  # -0.0 stays
