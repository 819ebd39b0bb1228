"""Run by tests/test_plugins.py in a subprocess whose PYTHONPATH holds the throwaway `slope-toy` distribution.

It fails with an AssertionError at the first thing that does not hold and prints "toy plugin ok" at the end.
"""

from __future__ import annotations

import numpy as np

import slope

EPS = 0.01
POINTS = np.array([-1.5, -0.2, 0.05, 0.3, 2.0])


def smooth_abs_sum(x: slope.Tensor) -> slope.Tensor:
    return slope.smooth_abs(x, EPS).sum()


def finite_differences(f, x: np.ndarray, step: float = 1e-6) -> np.ndarray:
    """Central differences of scalar f in float64."""
    grads = []
    for i in range(x.size):
        offset = np.zeros_like(x)
        offset[i] = step
        grads.append((f(slope.tensor(x + offset)).item() - f(slope.tensor(x - offset)).item()) / (2 * step))
    return np.array(grads)


def check_discovery() -> None:
    versions = slope.plugins.plugin_versions()
    assert versions.get("toy") == "0.1", versions
    assert "toy" in slope.plugins.backends, slope.plugins.backends
    assert "smooth_abs" in slope.plugins.operators
    assert slope.plugins.owners[("backend", "toy")] == "toy"
    assert slope.plugins.owners[("function", "smooth_abs")] == "toy"
    assert callable(slope.smooth_abs) and callable(slope.Tensor.smooth_abs)


def check_backend() -> None:
    backend = slope.set_backend("toy")
    assert slope.get_backend() is backend and backend.name == "toy"
    assert backend.devices() == ["cpu"] and slope.devices() == ["cpu"]
    assert "tanh" not in backend.translations and "smooth_abs" in backend.translations
    x = slope.tensor([[0.3, -0.2], [0.1, 0.4]])
    out = (x @ x + 1.0).tanh().sum(0)  # tanh runs through its procedure on this backend
    assert out.backend is backend
    reference = np.tanh(x.numpy() @ x.numpy() + 1.0).sum(0)
    np.testing.assert_allclose(out.numpy(), reference, rtol=1e-5, atol=1e-6)
    grad = slope.grad(lambda x: (x @ x).tanh().sum())(x)
    square = lambda t: (t.reshape(2, 2) @ t.reshape(2, 2)).tanh().sum()  # noqa: E731
    numeric = finite_differences(square, x.numpy().astype(np.float64).ravel())
    np.testing.assert_allclose(grad.numpy().ravel(), numeric, rtol=1e-3, atol=1e-4)


def check_operator() -> None:
    x = slope.tensor(POINTS.astype(np.float32))
    expected = np.sqrt(POINTS**2 + EPS)
    np.testing.assert_allclose(slope.smooth_abs(x, EPS).numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(x.smooth_abs(EPS).numpy(), expected, rtol=1e-6)
    derivative = POINTS / np.sqrt(POINTS**2 + EPS)
    second = EPS / (POINTS**2 + EPS) ** 1.5
    numeric = finite_differences(smooth_abs_sum, POINTS.copy())
    np.testing.assert_allclose(numeric, derivative, rtol=1e-6)
    grad = slope.grad(smooth_abs_sum)
    np.testing.assert_allclose(grad(x).numpy(), numeric, rtol=1e-5)
    np.testing.assert_allclose(slope.jit(grad)(x).numpy(), numeric, rtol=1e-5)
    np.testing.assert_allclose(
        slope.vmap(slope.grad(lambda v: slope.smooth_abs(v, EPS)))(x).numpy(), numeric, rtol=1e-5
    )
    np.testing.assert_allclose(
        slope.jvp(smooth_abs_sum, (x,), (slope.ones_like(x),))[1].item(), numeric.sum(), rtol=1e-5
    )
    second_grad = slope.vmap(slope.grad(slope.grad(lambda v: slope.smooth_abs(v, EPS))))(x)
    np.testing.assert_allclose(second_grad.numpy(), second, rtol=1e-4)
    batch = slope.tensor(np.stack([POINTS, -POINTS, 2 * POINTS]).astype(np.float32))
    np.testing.assert_allclose(
        slope.vmap(lambda row: slope.smooth_abs(row, EPS), in_axes=1, out_axes=1)(batch).numpy(),
        np.sqrt(batch.numpy().astype(np.float64) ** 2 + EPS),
        rtol=1e-6,
    )
    lowered = slope.jit(smooth_abs_sum).lower(x)
    assert "slope.smooth_abs(x0, eps=0.01)" in str(lowered.program), lowered.program
    assert "np.hypot" in lowered.code, lowered.code  # the toy backend's own translation
    with slope.use_backend("numpy"):
        lowered = slope.jit(smooth_abs_sum).lower(x)
        assert "np.hypot" not in lowered.code and "np.sqrt" in lowered.code, lowered.code  # the procedure
        np.testing.assert_allclose(slope.grad(smooth_abs_sum)(x).numpy(), numeric, rtol=1e-5)
    try:
        slope.smooth_abs(x, -1.0)
    except ValueError as error:
        assert "slope.smooth_abs" in str(error) and "-1.0" in str(error)
    else:
        raise AssertionError("a negative eps must be rejected by the operator's inference")


check_discovery()
check_backend()
check_operator()
print("toy plugin ok")
