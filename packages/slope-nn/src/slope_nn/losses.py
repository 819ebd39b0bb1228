"""Losses as functions (and as parameter-free modules, PyTorch style). `reduction` is "mean", "sum" or "none"."""

from __future__ import annotations

from typing import Any, Callable

import slope
from slope import Tensor

from . import functional
from .functional import reduce_loss
from .module import Module

__all__ = [
    "BCELoss",
    "BCEWithLogitsLoss",
    "CrossEntropyLoss",
    "MSELoss",
    "NLLLoss",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "cross_entropy",
    "mse",
    "mse_loss",
    "nll",
    "nll_loss",
]


def _check_same_shape(name: str, input: Tensor, target: Tensor) -> None:  # noqa: A002 - PyTorch's name
    if input.shape != target.shape:
        raise ValueError(f"slope.nn.{name}: input of shape {input.shape} and target of shape {target.shape} differ")


def cross_entropy(logits: Tensor, target: Any, weight: Tensor | None = None, ignore_index: int = -100,
                  reduction: str = "mean", label_smoothing: float = 0.0) -> Tensor:  # fmt: skip
    """Softmax cross-entropy of logits (N, C, ...) with class indices (N, ...) or probabilities (N, C, ...)."""
    return functional.cross_entropy(logits, target, weight, ignore_index, reduction, label_smoothing)


def nll(log_probs: Tensor, target: Any, weight: Tensor | None = None, ignore_index: int = -100,
        reduction: str = "mean") -> Tensor:  # fmt: skip
    """Negative log-likelihood of log-probabilities (N, C, ...) at class indices (N, ...), PyTorch's arguments."""
    log_probs = functional._tensor(log_probs)
    weight = functional._class_weight("nn.nll", weight, log_probs, 1 if log_probs.ndim > 1 else 0)
    return functional.class_index_loss("nn.nll", log_probs, functional._tensor(target), weight, ignore_index, reduction)


def mse(input: Tensor, target: Any, reduction: str = "mean") -> Tensor:  # noqa: A002 - PyTorch's name
    """Squared error (input - target)**2, averaged by default."""
    target = target if isinstance(target, Tensor) else slope.tensor(target, dtype=input.dtype)
    _check_same_shape("mse", input, target)
    difference = input - target
    return reduce_loss("nn.mse", difference * difference, reduction)


def binary_cross_entropy(input: Tensor, target: Any, weight: Tensor | None = None,  # noqa: A002
                         reduction: str = "mean") -> Tensor:  # fmt: skip
    """Binary cross-entropy of probabilities in [0, 1]; logs are clamped at -100, as PyTorch does."""
    target = target if isinstance(target, Tensor) else slope.tensor(target, dtype=input.dtype)
    _check_same_shape("binary_cross_entropy", input, target)
    log_p = slope.clip(input.log(), -100.0, None)
    log_not_p = slope.clip((1.0 - input).log(), -100.0, None)
    losses = -(target * log_p + (1.0 - target) * log_not_p)
    if weight is not None:
        losses = losses * weight
    return reduce_loss("nn.binary_cross_entropy", losses, reduction)


def binary_cross_entropy_with_logits(input: Tensor, target: Any, weight: Tensor | None = None,  # noqa: A002
                                     pos_weight: Tensor | None = None, reduction: str = "mean") -> Tensor:  # fmt: skip
    """Binary cross-entropy of sigmoid(input), computed stably from the logits."""
    target = target if isinstance(target, Tensor) else slope.tensor(target, dtype=input.dtype)
    _check_same_shape("binary_cross_entropy_with_logits", input, target)
    log_sigmoid = -functional.softplus(-input)  # log(sigmoid(x))
    log_not_sigmoid = -functional.softplus(input)  # log(1 - sigmoid(x))
    positive = target * log_sigmoid if pos_weight is None else pos_weight * target * log_sigmoid
    losses = -(positive + (1.0 - target) * log_not_sigmoid)
    if weight is not None:
        losses = losses * weight
    return reduce_loss("nn.binary_cross_entropy_with_logits", losses, reduction)


mse_loss = mse
nll_loss = nll


class CrossEntropyLoss(Module):
    """Module form of `cross_entropy`."""

    def __init__(self, weight: Tensor | None = None, ignore_index: int = -100, reduction: str = "mean",
                 label_smoothing: float = 0.0) -> None:  # fmt: skip
        super().__init__()
        self.weight, self.ignore_index = weight, ignore_index
        self.reduction = reduction
        self.label_smoothing = float(label_smoothing)

    def forward(self, logits: Tensor, target: Any) -> Tensor:
        """The loss."""
        return cross_entropy(logits, target, self.weight, self.ignore_index, self.reduction, self.label_smoothing)


class _Loss(Module):
    """Module form of a loss function `loss(input, target, reduction=...)`."""

    loss: Callable[..., Tensor]  # each subclass's function, as a staticmethod

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = reduction

    def forward(self, input: Tensor, target: Any) -> Tensor:  # noqa: A002 - PyTorch's name
        """The loss."""
        return type(self).loss(input, target, reduction=self.reduction)


class NLLLoss(Module):
    """Module form of `nll`."""

    def __init__(self, weight: Tensor | None = None, ignore_index: int = -100, reduction: str = "mean") -> None:
        super().__init__()
        self.weight, self.ignore_index, self.reduction = weight, ignore_index, reduction

    def forward(self, log_probs: Tensor, target: Any) -> Tensor:
        """The loss."""
        return nll(log_probs, target, self.weight, self.ignore_index, self.reduction)


class MSELoss(_Loss):
    """Module form of `mse`."""

    loss = staticmethod(mse)


class BCELoss(_Loss):
    """Module form of `binary_cross_entropy`."""

    loss = staticmethod(binary_cross_entropy)


class BCEWithLogitsLoss(_Loss):
    """Module form of `binary_cross_entropy_with_logits`."""

    loss = staticmethod(binary_cross_entropy_with_logits)
