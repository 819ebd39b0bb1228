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
    close(nn.CrossEntropyLoss(reduction)(slope.tensor(logits), slope.tensor(labels)),
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
    close(nn.NLLLoss(reduction)(slope.tensor(logp), slope.tensor(labels)), expected)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_mse(g, reduction):
    a, b = g.standard_normal((2, 4, 3)).astype(np.float32)
    expected = reduce((a.astype(np.float64) - b) ** 2, reduction)
    close(nn.mse(slope.tensor(a), slope.tensor(b), reduction=reduction), expected)
    close(nn.MSELoss(reduction)(slope.tensor(a), slope.tensor(b)), expected)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_binary_cross_entropy(g, reduction):
    p = g.uniform(0.01, 0.99, (4, 3)).astype(np.float32)
    t = g.uniform(0, 1, (4, 3)).astype(np.float32)
    p64 = p.astype(np.float64)
    expected = reduce(-(t * np.log(p64) + (1 - t) * np.log(1 - p64)), reduction)
    close(nn.binary_cross_entropy(slope.tensor(p), slope.tensor(t), reduction=reduction), expected)
    close(nn.BCELoss(reduction)(slope.tensor(p), slope.tensor(t)), expected)
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
    close(nn.BCEWithLogitsLoss(reduction)(slope.tensor(x), slope.tensor(t)), expected)
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


def test_loss_errors():
    with pytest.raises(ValueError, match="reduction"):
        nn.mse(slope.ones(2), slope.ones(2), reduction="avg")
    with pytest.raises(ValueError, match="differ"):
        nn.mse(slope.ones(2), slope.ones(3))
    with pytest.raises(TypeError, match="class indices"):
        nn.nll(slope.ones(2, 3), slope.ones(2))
