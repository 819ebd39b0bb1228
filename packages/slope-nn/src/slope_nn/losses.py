"""Losses as functions (and as parameter-free modules, PyTorch style). `reduction` is "mean", "sum" or "none"."""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

import slope
from slope import Tensor

from . import functional
from .functional import reduce_loss
from .module import Module
from .operators import fail_if

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
    if log_probs.ndim == 0:  # (an IndexError, "tuple index out of range"; PyTorch: "Expected 1 or more dimensions")
        raise slope.ShapeError("slope.nn.nll: expected log-probabilities with a class dimension, got a 0-d tensor")
    weight = functional._class_weight("nn.nll", weight, log_probs, 1 if log_probs.ndim > 1 else 0)
    return functional.class_index_loss("nn.nll", log_probs, functional._tensor(target), weight, ignore_index, reduction)


def mse(input: Any, target: Any, reduction: str = "mean") -> Tensor:  # noqa: A002 - PyTorch's name
    """Squared error (input - target)**2, averaged by default."""
    input = functional._tensor(input)  # noqa: A001
    target = target if isinstance(target, Tensor) else slope.tensor(target, dtype=input.dtype)
    _check_same_shape("mse", input, target)
    common = slope.dtypes.promote(input.dtype, target.dtype)  # (PyTorch's: a bool target of float inputs is 0 or 1)
    if not common.is_float:  # (two integers were squared in their dtype and wrapped: int8 [1, 2] and [-100, 100] gave
        # a sum of -163, not 19805)
        raise slope.DTypeError(f"slope.nn.mse: expected a float input or target, got {input.dtype.name} and "
                               f"{target.dtype.name} (PyTorch's mse_loss has no kernel for integers or bools: convert "
                               "one, e.g. input.astype(slope.float32))")  # fmt: skip
    input, target = input.astype(common), target.astype(common)  # noqa: A001
    difference = input - target
    return reduce_loss("nn.mse", difference * difference, reduction)


def _binary_args(name: str, input: Any, target: Any, **weights: Any) -> tuple:  # noqa: A002 - PyTorch's name
    """(input, target, *weights) of a binary cross-entropy, checked as PyTorch checks them: floats (of one dtype for
    binary_cross_entropy; with logits they compute in the wider one), one shape, and weights that broadcast to the
    input's shape (not beyond it), taken in the input's dtype."""
    input = functional._tensor(input)  # noqa: A001
    target = target if isinstance(target, Tensor) else slope.tensor(target, dtype=input.dtype)
    logits = name.endswith("logits")
    if not input.dtype.is_float or not target.dtype.is_float or (target.dtype != input.dtype and not logits):
        raise slope.DTypeError(f"slope.nn.{name}: expected a floating-point input and a target of "
                               f"{'floats' if logits else 'its dtype'}, got {input.dtype.name} and "
                               f"{target.dtype.name} (as PyTorch)")  # fmt: skip
    if logits and target.dtype != input.dtype:
        wide = slope.dtypes.promote(input.dtype, target.dtype)
        input, target = input.astype(wide), target.astype(wide)  # noqa: A001
    _check_same_shape(name, input, target)
    checked = []
    for what, weight in weights.items():
        if isinstance(weight, str):  # (reduction given in PyTorch's position of weight or pos_weight: "cannot make a
            # tensor from str", from slope.tensor)
            raise TypeError(f"slope.nn.{name}: {what} must be a tensor, got {weight!r}: pass reduction= by keyword")
        if weight is not None:
            weight = functional._tensor(weight)
            if functional._broadcast(f"slope.nn.{name}", weight.shape, input.shape) != input.shape:
                raise slope.ShapeError(f"slope.nn.{name}: {what} of shape {weight.shape} does not broadcast to the "
                                       f"input's shape {input.shape}")  # fmt: skip
            weight = weight.astype(input.dtype)  # (PyTorch's result keeps the input's dtype)
        checked.append(weight)
    return (input, target, *checked)


def _known_values(value: Tensor) -> np.ndarray | None:
    """The values of `value` where they are known before it runs (eager, or the primal of an eager grad or jvp)."""
    from slope.transforms import JVPTracer

    while isinstance(value, JVPTracer):
        value = value.primal
    return value.numpy() if isinstance(value, Tensor) and value.buffer is not None else None


_FLOAT32_1E_12 = float(np.float32(1e-12))


@slope.custom_jvp
def _binary_log_loss(p: Tensor, t: Tensor) -> Tensor:
    """-(t log p + (1 - t) log(1 - p)), each log clamped at -100 (PyTorch's terms)."""
    return -(t * slope.clip(p.log(), -100.0, None) + (1.0 - t) * slope.clip(slope.log1p(-p), -100.0, None))


@slope.custom_jvp
def _binary_log_loss_slope(p: Tensor, t: Tensor) -> Tensor:
    """PyTorch's derivative of the loss in p: (p - t) / max(p (1 - p), 1e-12), finite at p = 0 and 1."""
    return (p - t) / slope.maximum((1.0 - p) * p, _FLOAT32_1E_12)


def _binary_log_loss_slope_jvp(primals: tuple, tangents: tuple) -> tuple:
    # PyTorch's second derivatives (binary_cross_entropy_double_backward and its _target): in p, (p^2 - 2 p t + t) /
    # ((p + eps)^2 (1 - p + eps)^2) with a C double eps = 1e-12, not the clamped quotient's derivative (that was
    # 1 / 1e-12 for p below 1e-12 or above 1 - 1e-12: 1e12 where the loss -log(1 - p) has 1); in t, -1 / max(p (1 - p),
    # 1e-12)
    (p, t), (dp, dt) = primals, tangents
    terms = []
    if dp is not None:
        near, far = p + 1e-12, 1.0 - p + 1e-12
        terms.append(dp * ((p * p - 2.0 * p * t + t) / (near * near * (far * far))))
    if dt is not None:
        terms.append(-dt / slope.maximum((1.0 - p) * p, 1e-12))  # (here a C double 1e-12)
    return _binary_log_loss_slope(p, t), sum(terms[1:], terms[0])


_binary_log_loss_slope.defjvp(_binary_log_loss_slope_jvp, symbolic_zeros=True)


def _binary_log_loss_jvp(primals: tuple, tangents: tuple) -> tuple:
    # PyTorch's derivatives: (p - t) / max(p (1 - p), 1e-12) for p, finite at p = 0 and 1 (the clamped logs'
    # derivatives give 0 * inf = NaN there), and the unclamped log(1 - p) - log(p) for the target
    # (its 1e-12 is a C float, 9.99999996e-13, in float64 too); a tangent known to be zero (None: a constant target,
    # say) adds no term (a zero times the target's infinite factor at p = 0 or 1 was NaN in forward mode)
    (p, t), (dp, dt) = primals, tangents
    terms = [] if dp is None else [dp * _binary_log_loss_slope(p, t)]
    terms += [] if dt is None else [dt * (slope.log1p(-p) - p.log())]
    return _binary_log_loss(p, t), sum(terms[1:], terms[0])


_binary_log_loss.defjvp(_binary_log_loss_jvp, symbolic_zeros=True)


def binary_cross_entropy(input: Any, target: Any, weight: Tensor | None = None,  # noqa: A002
                         reduction: str = "mean") -> Tensor:  # fmt: skip
    """Binary cross-entropy of probabilities in [0, 1]; logs are clamped at -100, as PyTorch does. An input or target
    outside [0, 1] (or NaN) is a ValueError, as PyTorch's error: where its values are known (eager, and under jvp)
    when called, else (jit, grad, vmap) when the program runs; a backend that cannot raise gives a NaN loss."""
    name = "binary_cross_entropy"
    input, target, weight = _binary_args(name, input, target, weight=weight)  # noqa: A001
    failed = None
    for what, value in (("input", input), ("target", target)):
        expected = f"slope.nn.{name}: all elements of {what} should be between 0 and 1 (as PyTorch)"
        values = _known_values(value)
        if values is not None and not ((values >= 0) & (values <= 1)).all():
            outside = values[~((values >= 0) & (values <= 1))]
            raise ValueError(f"{expected}, got {outside[:3]} in {what} of shape {value.shape}")
        if values is None:  # (an IndexError naming take_along_dim did under grad, jit and vmap; a target of labels
            # 0..9 gave a finite, meaningless loss and gradient before that)
            message = f"{expected}; an element of {what} (shape {value.shape}) is not (found as the program ran: "
            outside = fail_if(~((value >= 0.0) & (value <= 1.0)), message + "jit, grad and vmap trace the values)")
            failed = outside if failed is None else failed | outside
    losses = _binary_log_loss(input, target)
    if failed is not None:  # (NaN, gradient too, where the backend raises nothing)
        losses = slope.where(failed, math.nan, losses)
    if weight is not None:
        losses = losses * weight
    return reduce_loss("nn.binary_cross_entropy", losses, reduction)


@slope.custom_jvp
def _blend(t: Tensor, a: Tensor, b: Tensor, a_minus_b: Tensor) -> Tensor:
    """t a + (1 - t) b (no cancellation where a or b is small), whose derivative in t is `a_minus_b`: the caller's
    form of a - b, exact where the difference of the two values cancels."""
    return t * a + (1.0 - t) * b


def _blend_jvp(primals: tuple, tangents: tuple) -> tuple:
    (t, a, b, a_minus_b), (dt, da, db, _) = primals, tangents  # (a_minus_b's tangent: a's minus b's, already here)
    terms = [] if dt is None else [dt * a_minus_b]
    terms += [] if da is None else [t * da]
    terms += [] if db is None else [(1.0 - t) * db]
    out = _blend(t, a, b, a_minus_b)
    return out, sum(terms[1:], terms[0]) if terms else slope.zeros_like(out)


_blend.defjvp(_blend_jvp, symbolic_zeros=True)


def binary_cross_entropy_with_logits(input: Any, target: Any, weight: Tensor | None = None,  # noqa: A002
                                     pos_weight: Tensor | None = None, reduction: str = "mean") -> Tensor:  # fmt: skip
    """Binary cross-entropy of sigmoid(input), computed stably from the logits; the losses are in the target's dtype,
    as PyTorch's (which computes them in place in a copy of the target)."""
    result = target.dtype if isinstance(target, Tensor) else None
    input, target, weight, pos_weight = _binary_args(  # noqa: A001
        "binary_cross_entropy_with_logits", input, target, weight=weight, pos_weight=pos_weight
    )
    # log(sigmoid(x)) and log(1 - sigmoid(x)), with no threshold: softplus's default made the loss linear beyond
    # |x| = 20, so its second derivative was 0 there (exact: sigmoid(x) sigmoid(-x), 9.4e-14 at 30)
    minus_log_sigmoid = functional.softplus(-input, threshold=math.inf)
    minus_log_not_sigmoid = functional.softplus(input, threshold=math.inf)
    # the derivative in the target: -x (PyTorch's), with pos_weight -x + (pos_weight - 1) softplus(-x) (PyTorch's
    # log_sigmoid(-x) - pos_weight log_sigmoid(x) without its cancellation), not the difference of the two softplus
    # values (-1.00136e-5 for -1e-5 at x = 1e-5 in float32, 0 for -1e-20 at 1e-20)
    positive, in_target = minus_log_sigmoid, -input
    if pos_weight is not None:
        positive, in_target = pos_weight * minus_log_sigmoid, in_target + (pos_weight - 1.0) * minus_log_sigmoid
    losses = _blend(target, positive, minus_log_not_sigmoid, in_target)
    if weight is not None:
        losses = losses * weight
    losses = losses if result is None else losses.astype(result)
    return reduce_loss("nn.binary_cross_entropy_with_logits", losses, reduction)


mse_loss = mse
nll_loss = nll


class CrossEntropyLoss(Module):
    """Module form of `cross_entropy`."""

    def __init__(self, weight: Tensor | None = None, ignore_index: int = -100, reduction: str = "mean",
                 label_smoothing: float = 0.0) -> None:  # fmt: skip
        super().__init__()
        self.register_buffer("weight", weight)  # (as PyTorch's: an attribute, it was trained as a parameter)
        self.ignore_index, self.reduction = ignore_index, reduction
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
        self.register_buffer("weight", weight)  # (as PyTorch's: an attribute, it was trained as a parameter)
        self.ignore_index, self.reduction = ignore_index, reduction

    def forward(self, log_probs: Tensor, target: Any) -> Tensor:
        """The loss."""
        return nll(log_probs, target, self.weight, self.ignore_index, self.reduction)


class MSELoss(_Loss):
    """Module form of `mse`."""

    loss = staticmethod(mse)


def _weight_argument(name: str, weight: Any) -> Any:
    """`weight` as given, unless it is a string: PyTorch's first argument is the weight, not the reduction."""
    if isinstance(weight, str):
        raise TypeError(f"slope.nn.{name}: the first argument is weight (as PyTorch's); pass reduction={weight!r}")
    return weight


class BCELoss(Module):
    """Module form of `binary_cross_entropy` (PyTorch's arguments: `weight` is a buffer, not trained)."""

    def __init__(self, weight: Tensor | None = None, reduction: str = "mean") -> None:
        super().__init__()
        self.register_buffer("weight", _weight_argument("BCELoss", weight))
        self.reduction = reduction

    def forward(self, input: Tensor, target: Any) -> Tensor:  # noqa: A002 - PyTorch's name
        """The loss."""
        return binary_cross_entropy(input, target, self.weight, self.reduction)


class BCEWithLogitsLoss(Module):
    """Module form of `binary_cross_entropy_with_logits` (PyTorch's arguments: `weight` and `pos_weight` are buffers)."""

    def __init__(self, weight: Tensor | None = None, reduction: str = "mean", pos_weight: Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("weight", _weight_argument("BCEWithLogitsLoss", weight))
        self.register_buffer("pos_weight", pos_weight)
        self.reduction = reduction

    def forward(self, input: Tensor, target: Any) -> Tensor:  # noqa: A002 - PyTorch's name
        """The loss."""
        return binary_cross_entropy_with_logits(input, target, self.weight, self.pos_weight, self.reduction)
