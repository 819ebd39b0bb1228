"""Edges the differential suite's deep profile found (reductions, normalization, attention, elementwise specials,
indexing), against PyTorch on every installed backend (iree included), eagerly and under `slope.jit`.

Values are compared exactly (NaN with NaN) unless a tolerance is stated at the assertion.
"""

from __future__ import annotations

import numpy as np
import pytest

import slope

BACKENDS = sorted(slope.plugins.backends)
MODES = {"eager": lambda f: f, "jit": slope.jit}


@pytest.fixture(params=BACKENDS)
def backend(request):
    with slope.use_backend(request.param):
        yield request.param


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


def check(actual: slope.Tensor, expected, what: str, rtol: float = 0.0) -> None:
    """Same shape and dtype name as the PyTorch tensor, values within rtol (NaN where it has NaN)."""
    assert actual.shape == tuple(expected.shape), f"{what}: shape {actual.shape}, expected {tuple(expected.shape)}"
    assert actual.dtype.name == str(expected.dtype).removeprefix("torch."), f"{what}: dtype {actual.dtype.name}"
    np.testing.assert_allclose(actual.astype("float64").numpy(), expected.double().numpy(), rtol=rtol, err_msg=what)


@pytest.mark.parametrize("mode", MODES)
def test_products_over_an_empty_contraction_are_zeros_as_pytorch(backend, mode, torch):
    """matmul (and attention over no keys) where the summed dimension has size 0: zeros (IREE's compiler crashed)."""
    F = torch.nn.functional
    rng = np.random.default_rng(0)
    a, b = np.ones((2, 3, 0), np.float32), np.ones((2, 0, 4), np.float32)
    matmul = MODES[mode](lambda x, y: x @ y)
    check(matmul(slope.tensor(a), slope.tensor(b)), torch.tensor(a) @ torch.tensor(b), f"{backend} {mode} matmul")
    q, k, v = rng.standard_normal((2, 3, 4)), np.zeros((2, 0, 4)), np.zeros((2, 0, 5))
    attend = MODES[mode](slope.scaled_dot_product_attention)
    expected = F.scaled_dot_product_attention(*(torch.tensor(t, dtype=torch.float32) for t in (q, k, v)))
    got = attend(*(slope.tensor(t.astype(np.float32)) for t in (q, k, v)))
    check(got, expected, f"{backend} {mode} attention over no keys")
