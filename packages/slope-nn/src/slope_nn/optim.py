"""Functional optimizers: `state = opt.init(model)`, then `model, state = opt.step(model, grads, state)`.

The model may be any pytree (a `Module`, a dict of tensors, ...); `grads` has the same structure (what
`slope.grad(loss)(model, ...)` returns). The optimizer's hyperparameters are static configuration baked into a jitted
step, read-only once the optimizer is made (a change would be ignored by a step already compiled); the step count
lives in the state as a tensor, so a learning-rate schedule (a function of the step count) changes the rate every step
without recompiling. Optimizers update only trainable leaves: buffers, parameters
frozen with `Module.freeze()` and leaves rejected by the `trainable` filter keep their values and hold no state.

Updates follow PyTorch's formulas (torch.optim.SGD, Adam, AdamW) so results match it step for step.
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

import slope
from slope import Tensor
from slope.trace import Tracer

from .functional import refuse_traced
from .module import check_not_jitted, leaf_kinds

__all__ = [
    "SGD",
    "Adam",
    "AdamState",
    "AdamW",
    "Optimizer",
    "SGDState",
    "clip_grad_norm",
    "constant_schedule",
    "cosine_decay",
    "exponential_decay",
    "global_norm",
    "linear_warmup",
    "no_decay_on_biases_and_norms",
    "piecewise_constant",
    "step_decay",
    "warmup_cosine",
]

Schedule = Callable[[Tensor], Any]


# ----------------------------------------------------------------------------------------------- schedules


def _at_least_one(name: str, lowest: int = 1, **counts: Any) -> None:
    """A ValueError naming the schedule unless each count of steps is an integer of at least `lowest` (1)."""
    for what, count in counts.items():
        if isinstance(count, bool) or not hasattr(count, "__index__") or count.__index__() < lowest:
            raise ValueError(f"{name}: {what} must be an integer of at least {lowest}, got {count!r}")


def _float64(step: Any) -> Tensor:
    """A step count (Python or NumPy number, tensor of any dtype) as a float64 tensor, so every schedule computes in
    float64 (an int64 count is exact up to 2**53; a float32 one rounded beyond 2**24, and an int step made
    piecewise_constant's rates integers)."""
    if isinstance(step, Tensor):
        return step.astype(slope.float64)
    return slope.tensor(int(step) if isinstance(step, numbers.Integral) else float(step), dtype=slope.float64)


def constant_schedule(lr: float) -> Schedule:
    """The same learning rate at every step."""
    return lambda step: lr


def step_decay(lr: float, step_size: int, gamma: float = 0.1) -> Schedule:
    """lr * gamma ** floor(step / step_size) (PyTorch's StepLR, counted in steps)."""
    _at_least_one("step_decay", step_size=step_size)
    return lambda step: lr * gamma ** slope.floor(_float64(step) / float(step_size))


def exponential_decay(lr: float, gamma: float) -> Schedule:
    """lr * gamma ** step."""
    return lambda step: lr * gamma ** _float64(step)


def cosine_decay(lr: float, total_steps: int, final_lr: float = 0.0) -> Schedule:
    """Cosine annealing from lr to final_lr over total_steps, then final_lr."""
    _at_least_one("cosine_decay", total_steps=total_steps)  # (0 made the first rate NaN: 0 / 0)

    def schedule(step: Tensor) -> Tensor:
        progress = slope.clip(_float64(step) / float(total_steps), 0.0, 1.0)
        return final_lr + (lr - final_lr) * 0.5 * (1.0 + slope.cos(progress * math.pi))

    return schedule


def linear_warmup(schedule: Schedule | float, warmup_steps: int) -> Schedule:
    """Scale a schedule (or constant rate) linearly from 1/warmup_steps up to 1 over the first warmup_steps."""
    if callable(schedule):
        base = schedule
    elif isinstance(schedule, Tracer):  # (a hypergradient's rate: float() failed on it; the other schedules take it)
        if schedule.shape != ():
            raise ValueError(f"linear_warmup: the rate must be a scalar, got a traced tensor of shape {schedule.shape}")
        base = constant_schedule(schedule)
    else:
        base = constant_schedule(float(schedule))
    _at_least_one("linear_warmup", warmup_steps=warmup_steps)  # (-4 gave negative rates: gradient ascent)

    def warmed(step: Tensor) -> Tensor:
        step = _float64(step)
        factor = slope.clip((step + 1.0) / float(warmup_steps), None, 1.0)
        return factor * base(step)

    return warmed


def warmup_cosine(lr: float, warmup_steps: int, total_steps: int, final_lr: float = 0.0) -> Schedule:
    """lr * (step + 1) / warmup_steps for the first warmup_steps steps, then a cosine from lr down to final_lr
    at total_steps, then final_lr (PyTorch's SequentialLR of LinearLR(1 / warmup_steps, total_iters=warmup_steps - 1)
    and CosineAnnealingLR(total_steps - warmup_steps, final_lr) up to total_steps; after it PyTorch's cosine rises
    again, this one stays at final_lr, as optax's warmup_cosine_decay_schedule)."""
    _at_least_one("warmup_cosine", 0, warmup_steps=warmup_steps)  # (0.5, 5.5 and True were taken as step counts)
    _at_least_one("warmup_cosine", total_steps=total_steps)
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(f"warmup_cosine: expected 0 <= warmup_steps < total_steps, got {warmup_steps}, {total_steps}")

    def schedule(step: Tensor) -> Tensor:
        step = _float64(step)
        warm = lr * (step + 1.0) / float(max(warmup_steps, 1))
        progress = slope.clip((step - float(warmup_steps)) / float(total_steps - warmup_steps), 0.0, 1.0)
        cosine = final_lr + (lr - final_lr) * 0.5 * (1.0 + slope.cos(progress * math.pi))
        return slope.where(step < float(warmup_steps), warm, cosine)

    return schedule


def piecewise_constant(boundaries: Sequence[int], values: Sequence[float]) -> Schedule:
    """values[0] before boundaries[0], values[1] until boundaries[1], ... (len(values) = len(boundaries) + 1)."""
    if len(values) != len(boundaries) + 1:
        raise ValueError(
            f"piecewise_constant: expected {len(boundaries) + 1} values for {len(boundaries)} boundaries, got {len(values)}"
        )
    if list(boundaries) != sorted(boundaries):
        raise ValueError(f"piecewise_constant: the boundaries must be in increasing order, got {list(boundaries)}")

    values = [float(v) if _real(v) else v for v in values]  # (NumPy's float32 beside a float64 count: a warning)

    def schedule(step: Tensor) -> Tensor:
        step = _float64(step)
        rate = slope.full_like(step, values[0])
        for boundary, value in zip(boundaries, values[1:]):
            rate = slope.where(step >= float(boundary), value, rate)
        return rate

    return schedule


# ----------------------------------------------------------------------------------------------- gradient helpers


def global_norm(tree: Any, norm_type: Any = 2.0) -> Tensor:
    """The norm of all floating-point leaves of a pytree together (in float64 when a leaf is, else float32): PyTorch's
    norm_type, 2 by default, any p (inf: the largest magnitude, -inf: the smallest; 0, as PyTorch's norm of the leaves'
    norms: the count of leaves with a nonzero)."""
    p = _norm_type("global_norm", norm_type)
    floats = [leaf for leaf in slope.tree.leaves(tree) if isinstance(leaf, Tensor) and leaf.dtype.is_float]
    wide = slope.float64 if any(leaf.dtype == slope.float64 for leaf in floats) else slope.float32
    magnitudes = [leaf.astype(wide) if p == 2 else leaf.astype(wide).abs() for leaf in floats if leaf.numel()]  # (x**2)
    if not magnitudes:
        return slope.tensor(0.0, dtype=wide)
    if math.isinf(p):  # (the largest or smallest of each leaf's, as PyTorch's norm of the per-leaf norms)
        extremes = slope.stack([m.max() if p > 0 else m.min() for m in magnitudes])
        return extremes.max() if p > 0 else extremes.min()
    if p == 0:  # PyTorch's norm of the per-leaf norms: the count of leaves with a nonzero element
        powers = [(m != 0).astype(wide).max() for m in magnitudes]
    else:
        powers = [(m**2 if p == 2 else m**p).sum() for m in magnitudes]
    total = powers[0]
    for power in powers[1:]:
        total = total + power
    return total if p in (0, 1) else total.sqrt() if p == 2 else total ** (1.0 / p)


def _norm_type(name: str, norm_type: Any) -> float:
    """PyTorch's norm_type as a float: a real number or a string float() reads ('inf'); a TypeError naming the
    function otherwise."""
    refuse_traced(f"slope.nn.optim.{name}", "norm_type", norm_type)
    if isinstance(norm_type, str):
        try:
            return float(norm_type)
        except ValueError:  # (PyTorch's float(norm_type): "could not convert string to float")
            raise ValueError(f"slope.nn.optim.{name}: norm_type must be a number or 'inf', got {norm_type!r}") from None
    if _real(norm_type):
        return float(norm_type)
    raise TypeError(f"slope.nn.optim.{name}: norm_type must be a real number or 'inf' (PyTorch's float(norm_type)), "
                    f"got {type(norm_type).__name__} {norm_type!r}")  # fmt: skip


def clip_grad_norm(grads: Any, max_norm: float, norm_type: Any = 2.0,
                   error_if_nonfinite: bool = False) -> tuple[Any, Tensor]:  # fmt: skip
    """Scale gradients so their global norm (PyTorch's norm_type, 2 by default) is at most max_norm; returns (clipped
    grads, norm before clipping). error_if_nonfinite=True raises PyTorch's RuntimeError on a NaN or infinite norm
    (eagerly only: under jit the norm has no value to check)."""
    if not (_real(max_norm) or isinstance(max_norm, Tensor)):  # ("inf" failed in slope.div, naming neither)
        raise TypeError(f"slope.nn.optim.clip_grad_norm: max_norm must be a real number or a tensor, got "
                        f"{type(max_norm).__name__} {max_norm!r} (for no clipping pass math.inf)")  # fmt: skip
    p = _norm_type("clip_grad_norm", norm_type)
    norm = global_norm(grads, p)
    if error_if_nonfinite:
        if isinstance(norm, Tracer):
            raise RuntimeError("slope.nn.optim.clip_grad_norm: error_if_nonfinite=True checks the norm's value, which "
                               "a traced norm (under jit, grad or vmap) does not have; check "
                               "slope.isfinite(norm) of the returned norm outside the trace instead")  # fmt: skip
        if not math.isfinite(float(norm)):
            raise RuntimeError(f"slope.nn.optim.clip_grad_norm: the total norm of order {p} for gradients is "
                               f"non-finite ({float(norm)}), so it cannot be clipped (as PyTorch); to scale the "
                               f"gradients by the non-finite norm anyway, set error_if_nonfinite=False")  # fmt: skip
    scale = slope.clip(max_norm / (norm + 1e-6), None, 1.0)

    def clip(leaf: Any) -> Any:
        if isinstance(leaf, Tensor) and leaf.dtype.is_float:  # (halves: the product in float32, rounded once)
            return (_widened(leaf) * scale.astype(_wide(leaf.dtype))).astype(leaf.dtype)
        return leaf

    return slope.tree.map(clip, grads), norm


def no_decay_on_biases_and_norms(name: str, param: Tensor) -> bool:
    """A `decay` filter: weight decay for matrices and embeddings (2 or more dimensions), none for biases, norm
    scales and other vectors (the usual rule for transformers)."""
    return param.ndim >= 2


# ----------------------------------------------------------------------------------------------- base


def _wide(dtype: Any) -> Any:
    """The dtype an update of this dtype is computed in: float32 for float16 and bfloat16, else the dtype itself."""
    return slope.float32 if dtype.bits < 32 else dtype


def _widened(x: Tensor) -> Tensor:
    """x in its update dtype (a float16 or bfloat16 tensor in float32; others as they are)."""
    return x.astype(_wide(x.dtype))


def _real(value: Any) -> bool:
    """Whether a hyperparameter is a real number: Python's or NumPy's (np.float32(0.1), np.int64(1)), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _in_range(owner: str, name: str, value: Any, low: float, high: float = math.inf) -> float:
    """A hyperparameter as a Python float in [low, high), else a ValueError naming the optimizer."""
    if not _real(value) or not low <= value < high:
        _refuse_traced(owner, name, value)
        raise ValueError(f"{owner}: {name} must be a number in [{low}, {high}), got {value!r}")
    return float(value)


def _refuse_traced(
    owner: str, name: str, value: Any, error: type[Exception] = ValueError, kind: str = "number"
) -> None:
    """functional.refuse_traced for an optimizer's hyperparameter, with what works: a traced learning rate as a schedule
    that returns it (a hypergradient, a rate passed to a jitted step, a vmap over rates), the others as numbers."""
    schedule = f"{owner}(lambda step: lr)"
    hints = {
        "lr": f"a traced rate works as a schedule that returns it, {schedule}: for a hypergradient, a rate passed to a "
        "jitted step, or a vmap over rates; or keep it a number",
        "number": "no derivative with respect to it is taken (of the hyperparameters only the learning rate may be "
        f"traced, as a schedule that returns it: {schedule}); keep it a number",
    }
    refuse_traced(owner, name, value, error, kind, hints.get("lr" if name == "lr" else kind, ""))


def _under(name: str, prefix: str) -> bool:
    """Whether a dotted parameter name is the prefix or lies under it ("1.weight" under "1", not under "1.w")."""
    return name == prefix or name.startswith(prefix + ".")


def _sealing(init: Callable) -> Callable:
    """An optimizer class's `__init__` that makes the attributes read-only once the outermost constructor returns
    (a subclass's `__init__` runs its base's first; the signature stays the original's, through `__wrapped__`)."""

    @functools.wraps(init)
    def sealed_init(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        if type(self).__init__ is sealed_init:
            self.__dict__["_made"] = True

    return sealed_init


class Optimizer:
    """Base of the functional optimizers: learning rate or schedule, and which leaves are trainable and decayed.

    `trainable` filters parameters by dotted name: a function `name -> bool`, or a string / sequence of name
    prefixes to train (everything else is left alone; a prefix that names no parameter is an error). `decay` says
    which trained parameters get weight decay: a function `(name, param) -> bool` (`no_decay_on_biases_and_norms`
    keeps it to matrices), default all.

    The hyperparameters are read-only once the optimizer is made: a jitted step keeps the values it traced, so a
    change (PyTorch's `param_group["lr"] = ...`) would be ignored there. A rate that changes is a schedule.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = _sealing(cls.__init__)

    def __setattr__(self, name: str, value: Any) -> None:
        if self.__dict__.get("_made"):
            raise AttributeError(self._read_only(f"setting {name!r}"))
        super().__setattr__(name, value)

    def __delattr__(self, name: str) -> None:
        if self.__dict__.get("_made"):
            raise AttributeError(self._read_only(f"deleting {name!r}"))
        super().__delattr__(name)

    def _read_only(self, what: str) -> str:
        owner = type(self).__name__
        return (
            f"{owner}: the hyperparameters are read-only once the optimizer is made ({what}): a jitted step keeps the "
            "values it traced, so the change would be ignored there. For a learning rate that changes, pass a schedule "
            "(nn.optim.step_decay, cosine_decay, piecewise_constant, ... or any function of the step count); "
            f"otherwise make a new optimizer ({owner}(...)) and jit a new step that uses it"
        )

    weight_decay = 0.0
    state_type: type | None = None  # the NamedTuple its init makes (None: a subclass's own, not checked)
    decay: Callable[[str, Tensor], bool] | None = None
    maximize = False  # (PyTorch's: ascend, each gradient negated first)
    positional = "(lr)"  # the positional arguments, PyTorch's order less `params` (for messages)

    def __init__(self, lr: float | Schedule, trainable: Callable[[str], bool] | str | Sequence[str] | None = None):
        if not callable(lr) and not (_real(lr) and lr >= 0):
            _refuse_traced(type(self).__name__, "lr", lr)
            raise ValueError(f"{type(self).__name__}: lr must be a non-negative number or a schedule, got {lr!r}")
        self.lr = lr if callable(lr) else float(lr)  # (NumPy's scalars too, as PyTorch takes them)
        self.prefixes: tuple[str, ...] = ()  # trainable's prefixes, each of which must name some parameter
        if trainable is None or callable(trainable):
            self.trainable = trainable
        else:
            prefixes = self.prefixes = (trainable,) if isinstance(trainable, str) else tuple(trainable)
            self.trainable = lambda name: any(_under(name, p) for p in prefixes)

    def _flag(self, name: str, value: Any) -> bool:
        """A boolean hyperparameter, else a TypeError naming the optimizer (a number there: an argument misplaced)."""
        if not isinstance(value, (bool, np.bool_)):
            _refuse_traced(type(self).__name__, name, value, TypeError, "bool")
            owner = type(self).__name__
            raise TypeError(f"{owner}: {name} must be a bool, got {value!r} (the positional order is PyTorch's: "
                            f"{owner}{self.positional})")  # fmt: skip
        return bool(value)

    # subclasses define these two (and _per_step where a value of the step count serves every leaf)
    def _init_leaf(self, param: Tensor) -> tuple:
        raise NotImplementedError

    def _update_leaf(
        self, param: Tensor, grad: Tensor, slots: tuple, count: Tensor, lr: Any, decay: float, shared: Any
    ) -> tuple:
        raise NotImplementedError

    def _per_step(self, count: Tensor) -> Any:
        """What every leaf's update reads of the step count, made once per step (Adam's bias corrections), or None."""
        return None

    def _mask(self, model: Any, leaves: list) -> list[bool]:
        kinds = leaf_kinds(model)
        mask, owners = [], {}
        for leaf, (name, kind) in zip(leaves, kinds):
            ok = kind == "param" and isinstance(leaf, Tensor) and leaf.dtype.is_float
            if ok and self.trainable is not None:
                ok = bool(self.trainable(name))
            if ok and owners.setdefault(id(leaf), name) != name:  # (b.weight = a.weight: two leaves of a pytree)
                raise ValueError(
                    f"{type(self).__name__}: {owners[id(leaf)]} and {name} are one tensor; a model is a pytree, so "
                    "they would be trained as two copies that drift apart (PyTorch updates one shared parameter): "
                    "tie weights through a function of one parameter instead, as Embedding.attend does"
                )
            mask.append(ok)
        names = [name for name, kind in kinds if kind != "buffer"]
        for prefix in self.prefixes:  # (a misspelt prefix trained nothing, silently)
            if not any(_under(name, prefix) for name in names):
                raise ValueError(
                    f"{type(self).__name__}: trainable prefix {prefix!r} names no parameter of the model; its "
                    f"parameters are {names}"
                )
        return mask

    def _decays(self, model: Any, leaves: list) -> list[float]:
        """The weight decay of each leaf: the optimizer's, or 0 where the `decay` filter says no."""
        if self.decay is None or not self.weight_decay:
            return [self.weight_decay] * len(leaves)
        return [
            self.weight_decay if self.decay(name, leaf) else 0.0 for leaf, (name, _) in zip(leaves, leaf_kinds(model))
        ]

    def learning_rate(self, count: Any) -> Any:
        """The learning rate for the step after `count` completed steps (a float or a tensor)."""
        if callable(self.lr):
            rate = self.lr(_float64(count))  # a scalar: float64 keeps float64 models exact
            return float(rate) if _real(rate) else rate  # (a NumPy scalar from the schedule as a Python float)
        return self.lr

    def lr_at(self, state: Any) -> float:
        """The learning rate the next step will use, as a Python float."""
        return float(self.learning_rate(state.count))

    def init(self, model: Any) -> Any:
        """The optimizer state for a model: a step count and per-leaf slots (None for leaves it does not train)."""
        check_not_jitted(f"{type(self).__name__}.init", model)
        leaves = slope.tree.leaves(model)
        mask = self._mask(model, leaves)
        slots = [self._init_leaf(leaf) if trainable else None for leaf, trainable in zip(leaves, mask)]
        return self._make_state(slope.zeros((), dtype=slope.int64), slots)

    def step(self, model: Any, grads: Any, state: Any) -> tuple[Any, Any]:
        """Apply one update: returns (new model, new state). Pure, so it can run inside a jitted train step."""
        check_not_jitted(f"{type(self).__name__}.step", model)
        leaves, treedef = slope.tree.flatten(model)
        grad_leaves = slope.tree.leaves(grads)
        if len(grad_leaves) != len(leaves):
            raise ValueError(
                f"{type(self).__name__}.step: the gradients have {len(grad_leaves)} leaves but the model has "
                f"{len(leaves)}; pass what slope.grad(loss)(model, ...) returns"
            )
        if slope.tree.structure(grads) != treedef:  # (matched by position, b took c's gradient)
            self._check_names(model, grads)
        self._check_state(model, leaves, state)
        slots = self._slots(state)
        mask = self._mask(model, leaves)
        decays = self._decays(model, leaves)
        lr = self.learning_rate(state.count)
        count = state.count + 1
        shared = self._per_step(count)
        new_leaves, new_slots = [], []
        for i, (param, grad, slot, trainable, decay) in enumerate(zip(leaves, grad_leaves, slots, mask, decays)):
            if trainable and slot is None:  # (it was skipped: a frozen backbone unfrozen later never trained)
                raise ValueError(
                    f"{type(self).__name__}.step: leaf {i} {leaf_kinds(model)[i][0]!r} {param.aval} is trained but "
                    "has no state (the state was made while it was frozen, or by another optimizer); call init(model) "
                    "again"
                )
            if not trainable:
                new_leaves.append(param)
                new_slots.append(slot)
                continue
            if not isinstance(grad, Tensor) or grad.shape != param.shape:
                described = f"has shape {grad.shape}" if isinstance(grad, Tensor) else f"is {type(grad).__name__}"
                raise ValueError(
                    f"{type(self).__name__}.step: the gradient of {leaf_kinds(model)[i][0]!r} (leaf {i}) {described} "
                    f"where the parameter's shape is {param.shape}; pass the gradients of this model "
                    "(what slope.grad(loss)(model, ...) returns)"
                )
            if grad.dtype != param.dtype:  # (it was cast silently: a float64 gradient rounded onto a float32 weight)
                raise TypeError(
                    f"{type(self).__name__}.step: the gradient of {leaf_kinds(model)[i][0]!r} (leaf {i}) is "
                    f"{grad.dtype.name} where the parameter is {param.dtype.name}; a gradient must have its "
                    "parameter's dtype, as slope.grad returns it (PyTorch refuses another dtype too): cast it with "
                    "astype(param.dtype) if that is meant"
                )
            # halves update in float32 and round each result once, as PyTorch's addcdiv_ and addcmul_ (its SGD's add_
            # rounds lr to the half dtype first): in float16, Adam's step size at lr 1e-5 was subnormal
            param_lr = lr.astype(_wide(param.dtype)) if isinstance(lr, Tensor) else lr
            grad = -grad if self.maximize else grad
            new_param, slot = self._update_leaf(
                _widened(param), _widened(grad), tuple(_widened(s) for s in slot), count, param_lr, decay, shared
            )
            new_leaves.append(new_param.astype(param.dtype))
            new_slots.append(tuple(s.astype(param.dtype) for s in slot))
        return slope.tree.unflatten(treedef, new_leaves), self._make_state(count, new_slots)

    def _check_state(self, model: Any, leaves: list, state: Any) -> None:
        """A TypeError or ValueError naming the step unless the state is one `init(model)` makes for a model of these
        leaves (another optimizer's state, None, or another model's: AttributeErrors or a broadcast error of
        slope.add). Python comparisons only: under jit they run while tracing."""
        owner = type(self).__name__
        kind = self.state_type
        if kind is None:  # (a subclass with a state of its own)
            return
        expected = f"the {kind.__name__} {owner}.init(model) returns for this model"
        if not isinstance(state, kind):
            given = "None" if state is None else type(state).__name__
            hint = " (another optimizer's state)" if isinstance(state, (SGDState, AdamState)) else ""
            raise TypeError(f"{owner}.step: expected {expected}, got {given}{hint}")
        count = state.count
        if not isinstance(count, (Tensor, numbers.Integral)) or isinstance(count, (bool, np.bool_)):
            raise TypeError(f"{owner}.step: the state's count must be a tensor (the steps taken), got {count!r}; "
                            f"pass {expected}")  # fmt: skip
        for field in state._fields[1:]:
            slots = getattr(state, field)
            if slots is None and kind._field_defaults.get(field, 0) is None:  # (nu_max without amsgrad)
                continue
            if not isinstance(slots, (list, tuple)) or len(slots) != len(leaves):
                given = f"{len(slots)} entries" if isinstance(slots, (list, tuple)) else repr(type(slots).__name__)
                raise ValueError(f"{owner}.step: the state's {field} has {given} where the model has {len(leaves)} "
                                 f"leaves (a state made for another model?); pass {expected}")  # fmt: skip
            for i, (slot, leaf) in enumerate(zip(slots, leaves)):
                if slot is None or (isinstance(slot, Tensor) and isinstance(leaf, Tensor) and slot.shape == leaf.shape):
                    continue
                name = leaf_kinds(model)[i][0]
                given = f"has shape {slot.shape}" if isinstance(slot, Tensor) else f"is {type(slot).__name__}"
                leaf_shape = f"shape is {leaf.shape}" if isinstance(leaf, Tensor) else f"is {type(leaf).__name__}"
                raise ValueError(f"{owner}.step: the state's {field} for {name!r} (leaf {i}) {given} where the "
                                 f"parameter's {leaf_shape} (a state made for another model?); pass {expected}")  # fmt: skip

    def _check_names(self, model: Any, grads: Any) -> None:
        """A ValueError unless the gradients' leaves have the model's names (a module's static attributes may vary)."""
        names, grad_names = [name for name, _ in leaf_kinds(model)], [name for name, _ in leaf_kinds(grads)]
        for i, (name, grad_name) in enumerate(zip(names, grad_names)):
            if name != grad_name:
                # the first node where the structures part (a dict of a Linear's gradients: its keys are sorted, so
                # the leaf names alone read as if 'weight' were missing)
                top = slope.tree.structure(model), slope.tree.structure(grads)
                start, node, grad_node = _first_difference(*top) or (0, *top)  # (names differ in equal structures)
                ours, theirs = names[start : start + node.num_leaves], grad_names[start : start + grad_node.num_leaves]
                path = _node_path(node, grad_node, ours + theirs)
                raise ValueError(
                    f"{type(self).__name__}.step: the gradients are not shaped like the model: "
                    f"{'at ' + repr(path) + ' ' if path else ''}expected {_node_text(node, ours)}, got "
                    f"{_node_text(grad_node, theirs)} (gradient leaf {i} is {grad_name!r} where the model's is "
                    f"{name!r}); pass the gradients shaped like the model, as nn.grad(loss_fn)(model, ...) returns them"
                )

    def _make_state(self, count: Tensor, slots: list) -> Any:
        raise NotImplementedError

    def _slots(self, state: Any) -> list:
        raise NotImplementedError


def _first_difference(node: Any, grad_node: Any, start: int = 0) -> tuple[int, Any, Any] | None:
    """(index of its first leaf, the model's node, the gradients' node) where two structures first part: another
    type, another number of children or other keys; None where they differ only in static data."""
    if node.type is not grad_node.type or node.entries() != grad_node.entries():
        return start, node, grad_node
    for child, grad_child in zip(node.children(), grad_node.children()):
        if (found := _first_difference(child, grad_child, start)) is not None:
            return found
        start += child.num_leaves
    return None


def _node_path(node: Any, grad_node: Any, names: list[str]) -> str:
    """The dotted path of two nodes that hold the leaves `names` ('' for the top): a leaf's own name, else the
    longest path all these names are under."""
    parts = [name.split(".") for name in names]
    common = []
    for column in zip(*parts):
        if len(set(column)) != 1:
            break
        common.append(column[0])
    if not (node.is_leaf() or grad_node.is_leaf()) and any(len(p) == len(common) for p in parts):
        common = common[:-1]  # (a node of one leaf: the path is above that leaf)
    return ".".join(common)


def _node_text(node: Any, names: list[str], shown: int = 6) -> str:
    """A node for messages: `Linear(*, *) with leaves ['weight', 'bias']` (a leaf: `a leaf`)."""
    if node.is_leaf():
        return "a leaf"
    listed = ", ".join(repr(name) for name in names[:shown]) + (", ..." if len(names) > shown else "")
    return f"{slope.tree.describe(node)} with leaves [{listed}]"


# ----------------------------------------------------------------------------------------------- SGD


class SGDState(NamedTuple):
    """SGD's state: the step count and the momentum buffers (None where a leaf is not trained)."""

    count: Tensor
    momentum: list


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, dampening, Nesterov momentum and L2 weight decay (`maximize`
    ascends)."""

    positional = "(lr, momentum, dampening, weight_decay, nesterov)"
    state_type = SGDState

    def __init__(self, lr: float | Schedule = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, *, maximize: bool = False, trainable: Any = None,
                 decay: Callable[[str, Tensor], bool] | None = None) -> None:  # fmt: skip
        super().__init__(lr, trainable)
        self.decay, self.maximize = decay, self._flag("maximize", maximize)
        self.nesterov = self._flag("nesterov", nesterov)
        self.momentum = _in_range("SGD", "momentum", momentum, 0.0)
        self.dampening = _in_range("SGD", "dampening", dampening, -math.inf)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("SGD: Nesterov momentum requires momentum > 0 and dampening = 0")
        self.weight_decay = _in_range("SGD", "weight_decay", weight_decay, 0.0)

    def _init_leaf(self, param: Tensor) -> tuple:
        return (slope.zeros_like(param),) if self.momentum else ()

    def _update_leaf(
        self, param: Tensor, grad: Tensor, slots: tuple, count: Tensor, lr: Any, decay: float, shared: Any
    ) -> tuple:
        if decay:
            grad = grad + decay * param
        if self.momentum:
            (buffer,) = slots
            buffer = self.momentum * buffer + (1.0 - self.dampening) * grad
            if self.dampening:  # PyTorch starts the buffer at the first gradient, undamped
                buffer = slope.where(count == 1, grad, buffer)
            grad = grad + self.momentum * buffer if self.nesterov else buffer
            slots = (buffer,)
        return param - lr * grad, slots

    def _make_state(self, count: Tensor, slots: list) -> SGDState:
        return SGDState(count, [s[0] if s else None for s in slots])

    def _slots(self, state: SGDState) -> list:
        if not self.momentum:
            return [() if m is None else (m,) for m in state.momentum]  # () marks "trainable, no buffer"
        return [None if m is None else (m,) for m in state.momentum]

    def init(self, model: Any) -> SGDState:
        """The state: a step count and, with momentum, one zero buffer per trainable leaf."""
        check_not_jitted(f"{type(self).__name__}.init", model)
        leaves = slope.tree.leaves(model)
        mask = self._mask(model, leaves)
        if self.momentum:
            buffers = [slope.zeros_like(leaf) if trainable else None for leaf, trainable in zip(leaves, mask)]
        else:
            buffers = [None] * len(leaves)
        return SGDState(slope.zeros((), dtype=slope.int64), buffers)


# ----------------------------------------------------------------------------------------------- Adam, AdamW


class AdamState(NamedTuple):
    """Adam's state: the step count and the first and second moment estimates (None where not trained), and with
    amsgrad the largest second moments so far."""

    count: Tensor
    mu: list
    nu: list
    nu_max: list | None = None


class Adam(Optimizer):
    """Adam (Kingma and Ba) with bias correction; weight_decay adds an L2 term to the gradient (PyTorch's Adam;
    `maximize` ascends, `amsgrad` divides by the largest second moment so far)."""

    decoupled = False
    positional = "(lr, betas, eps, weight_decay, amsgrad)"
    state_type = AdamState

    def __init__(self, lr: float | Schedule = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, amsgrad: bool = False, *, maximize: bool = False, trainable: Any = None,
                 decay: Callable[[str, Tensor], bool] | None = None) -> None:  # fmt: skip
        super().__init__(lr, trainable)
        name = type(self).__name__
        self.decay, self.maximize = decay, self._flag("maximize", maximize)
        self.amsgrad = self._flag("amsgrad", amsgrad)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"{name}: betas must be a pair (beta1, beta2), got {betas!r} (the positional order is "
                             f"PyTorch's: {name}{self.positional})")  # fmt: skip
        self.beta1, self.beta2 = (_in_range(name, f"betas[{i}]", beta, 0.0, 1.0) for i, beta in enumerate(betas))
        self.eps = _in_range(name, "eps", eps, 0.0)
        self.weight_decay = _in_range(name, "weight_decay", weight_decay, 0.0)

    def _init_leaf(self, param: Tensor) -> tuple:
        return (slope.zeros_like(param),) * (3 if self.amsgrad else 2)

    def _update_leaf(
        self, param: Tensor, grad: Tensor, slots: tuple, count: Tensor, lr: Any, decay: float, shared: Any
    ) -> tuple:
        mu, nu = slots[:2]
        if decay:
            if self.decoupled:
                param = param * (1.0 - lr * decay)
            else:
                grad = grad + decay * param
        # both moments read the scaled gradient, so a backend can fold the scaling into the product that made the
        # gradient (onnxruntime: a Gemm's alpha), one pass less over the parameter; nu's factor undoes the scaling
        scaled = (1.0 - self.beta1) * grad
        mu = self.beta1 * mu + scaled
        # (the factor goes first, as PyTorch's addcmul: scaled * scaled overflowed float32 from |grad| = 1.8e20, not
        # 5.8e20, and then nu stayed inf: the parameter never moved again)
        # (halves arrive in float32: grad * grad in float16 overflowed from |grad| = 256, PyTorch's addcmul from 8100)
        nu = self.beta2 * nu + (((1.0 - self.beta2) / (1.0 - self.beta1) ** 2) * scaled) * scaled
        correction1, root2 = shared
        # PyTorch's sqrt(nu) / root2 + eps, times root2 on both sides of the fraction: the scalars fold into the
        # step size and eps, which saves one pass over every parameter (the same value up to rounding)
        largest = slope.maximum(slots[2], nu) if self.amsgrad else nu
        denominator = largest.sqrt() + (self.eps * root2).astype(param.dtype)
        step_size = (lr * root2 / correction1).astype(param.dtype)
        return param - step_size * mu / denominator, (mu, nu, largest)[: len(slots)]

    def _per_step(self, count: Tensor) -> tuple[Tensor, Tensor]:
        """The bias corrections 1 - beta1**t and sqrt(1 - beta2**t), once per step (not per leaf: on iree each float64
        power is a loop), in float64 as PyTorch's (Python floats): float32's 1 - 0.9999**t is 1.7e-4 off."""
        t = count.astype(slope.float64)
        return 1.0 - self.beta1**t, (1.0 - self.beta2**t).sqrt()

    def _make_state(self, count: Tensor, slots: list) -> AdamState:
        mu, nu, *largest = ([s[i] if s else None for s in slots] for i in range(3 if self.amsgrad else 2))
        return AdamState(count, mu, nu, largest[0] if largest else None)

    def _slots(self, state: AdamState) -> list:
        if self.amsgrad and state.nu_max is None:
            raise ValueError(f"{type(self).__name__}.step: the state has no nu_max (made without amsgrad); call init")
        largest = state.nu_max if self.amsgrad else [None] * len(state.mu)
        return [
            None if m is None else (m, v, u)[: 3 if self.amsgrad else 2] for m, v, u in zip(state.mu, state.nu, largest)
        ]


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov and Hutter): param *= 1 - lr * weight_decay before the update."""

    decoupled = True

    def __init__(self, lr: float | Schedule = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01, amsgrad: bool = False, *, maximize: bool = False, trainable: Any = None,
                 decay: Callable[[str, Tensor], bool] | None = None) -> None:  # fmt: skip
        super().__init__(lr, betas, eps, weight_decay, amsgrad, maximize=maximize, trainable=trainable, decay=decay)
