"""Optimizers and gradient clipping on float16 and bfloat16 parameters: each update is computed in float32 and rounded
once, as PyTorch's kernels round their results, so a step lands on the exact update rounded to the half dtype (up to
float32's own rounding near a half-way point). Each step is checked against the exact update (float64) of the state
Slope stored, and the errors are counted next to PyTorch's, which rounds some intermediates to the half dtype.
Rounding the learning rate, the step size and the products to the half dtype put hundreds of 4096 elements an ulp or
more off (Adam at lr 1e-5 in float16 did not move at all); found by a review helper."""

from __future__ import annotations

import numpy as np
import pytest

import slope
import slope.nn as nn

torch = pytest.importorskip("torch")
ml_dtypes = pytest.importorskip("ml_dtypes")

pytestmark = pytest.mark.usefixtures("each_backend")
N, STEPS = 4096, 4
ALLOWED = N * STEPS // 1000  # elements 1 ulp off: float32's rounding can move an update across a half-way point
NUMPY_DTYPES = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16}


def rounded(x: np.ndarray, dtype: str) -> np.ndarray:
    """Float64 values rounded once to the half dtype (and back to float64)."""
    return np.asarray(x, np.float64).astype(NUMPY_DTYPES[dtype]).astype(np.float64)


def ulps(a: np.ndarray, b: np.ndarray, dtype: str) -> np.ndarray:
    """How many representable half values apart a and b are, elementwise."""

    def ordered(x: np.ndarray) -> np.ndarray:
        bits = np.asarray(x, np.float64).astype(NUMPY_DTYPES[dtype]).view(np.int16).astype(np.int64)
        return np.where(bits < 0, -(bits & 0x7FFF), bits)

    return np.abs(ordered(a) - ordered(b))


def f64(x) -> np.ndarray | None:
    """A Slope tensor or a torch tensor as a float64 array (None stays None)."""
    if x is None:
        return None
    if isinstance(x, slope.Tensor):
        return x.astype("float64").numpy()
    return x.detach().double().numpy().copy()


def problem(dtype: str, seed: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    """Parameters around 0.02 and gradients around 0.3, in the half dtype (no gradient small enough that PyTorch's
    float16 second moment underflows to 0, where its update is inf)."""
    g = np.random.default_rng(seed)
    start = rounded(0.02 + 0.01 * g.standard_normal(N), dtype)
    grads = [rounded(g.choice([-1.0, 1.0], N) * g.uniform(0.05, 0.6, N), dtype) for _ in range(STEPS)]
    return start, grads


def count_off(new: np.ndarray, exact: np.ndarray, dtype: str) -> tuple[int, int]:
    """(elements at least 1 ulp off the exact update rounded once, elements at least 2 ulps off)."""
    off = ulps(new, rounded(exact, dtype), dtype)
    return int((off >= 1).sum()), int((off >= 2).sum())


def check_counts(ours: list[tuple[int, int]], theirs: list[tuple[int, int]]) -> None:
    """Slope's updates are the exact ones rounded once (a few 1 ulp off), and never further off than PyTorch's."""
    assert sum(c[1] for c in ours) == 0, ours
    assert sum(c[0] for c in ours) <= ALLOWED, ours
    assert sum(c[0] for c in ours) <= sum(c[0] for c in theirs), (ours, theirs)


def exact_adam(p, g, m, v, v_max, t, lr, wd, decoupled, maximize, betas=(0.9, 0.999), eps=1e-8):
    """PyTorch's Adam / AdamW update in float64 from a stored state (float64 arrays; v_max None without amsgrad)."""
    g = -g if maximize else g
    if wd and decoupled:
        p = p * (1 - lr * wd)
    elif wd:
        g = g + wd * p
    m = betas[0] * m + (1 - betas[0]) * g
    v = betas[1] * v + (1 - betas[1]) * g * g
    if v_max is not None:
        v = np.maximum(v_max, v)
    return p - lr / (1 - betas[0] ** t) * m / (np.sqrt(v) / np.sqrt(1 - betas[1] ** t) + eps)


ADAM_CASES = {
    "adam": dict(),
    "adam_weight_decay": dict(weight_decay=0.01),
    "adamw": dict(decoupled=True, weight_decay=0.1),
    "amsgrad": dict(weight_decay=0.01, amsgrad=True),
    "maximize_schedule": dict(maximize=True, schedule=True),
}


@pytest.mark.parametrize("case", sorted(ADAM_CASES))
@pytest.mark.parametrize("lr", [1e-3, 1e-4, 1e-5])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_adam_steps_are_the_exact_update_rounded_once(dtype, lr, case):
    config = dict(ADAM_CASES[case])
    decoupled, schedule = config.pop("decoupled", False), config.pop("schedule", False)
    wd, amsgrad, maximize = config.pop("weight_decay", 0.0), config.get("amsgrad", False), config.get("maximize", False)
    kind, torch_kind = (nn.AdamW, torch.optim.AdamW) if decoupled else (nn.Adam, torch.optim.Adam)
    start, grads = problem(dtype)
    # a schedule's rate is a tensor: it was rounded to the half dtype (1e-5 is subnormal in float16)
    optimizer = kind(nn.optim.exponential_decay(lr, 0.9) if schedule else lr, weight_decay=wd, **config)
    model = {"w": slope.tensor(start).astype(dtype)}
    state = optimizer.init(model)
    w = torch.tensor(start).to(getattr(torch, dtype)).requires_grad_()
    reference = torch_kind([w], lr=lr, weight_decay=wd, foreach=False, **config)
    ours, theirs = [], []
    for t, grad in enumerate(grads, start=1):
        rate = lr * 0.9 ** (t - 1) if schedule else lr
        hyper = (t, rate, wd, decoupled, maximize)
        stored = model["w"], state.mu[0], state.nu[0], state.nu_max[0] if amsgrad else None
        exact = exact_adam(f64(stored[0]), grad, *map(f64, stored[1:]), *hyper)
        model, state = slope.jit(optimizer.step)(model, {"w": slope.tensor(grad).astype(dtype)}, state)
        ours.append(count_off(f64(model["w"]), exact, dtype))
        s = reference.state.get(w) or dict.fromkeys(["exp_avg", "exp_avg_sq", "max_exp_avg_sq"], torch.zeros(N))
        stored = s["exp_avg"], s["exp_avg_sq"], s["max_exp_avg_sq"] if amsgrad else None
        exact = exact_adam(f64(w), grad, *map(f64, stored), *hyper)
        reference.param_groups[0]["lr"] = rate
        w.grad = torch.tensor(grad).to(w.dtype)
        reference.step()
        theirs.append(count_off(f64(w), exact, dtype))
    check_counts(ours, theirs)


def test_float16_adam_moves_a_parameter_by_a_small_step():
    # at lr 1e-5 the step size 1e-5 * sqrt(0.001) / 0.1 was subnormal in float16 and step_size * mu rounded to it
    optimizer = nn.Adam(1e-5)
    model = {"w": slope.tensor([0.02, 0.3], dtype=slope.float16)}
    model, _ = optimizer.step(model, {"w": slope.tensor([0.05, 0.2], dtype=slope.float16)}, optimizer.init(model))
    w = torch.tensor([0.02, 0.3], dtype=torch.float16, requires_grad=True)
    reference = torch.optim.Adam([w], lr=1e-5, foreach=False)
    w.grad = torch.tensor([0.05, 0.2], dtype=torch.float16)
    reference.step()
    np.testing.assert_array_equal(f64(model["w"]), f64(w))
    assert f64(model["w"])[0] < np.float16(0.02)


def exact_sgd(p, g, buffer, t, lr, momentum, dampening, nesterov, wd):
    """PyTorch's SGD update in float64 from a stored parameter and momentum buffer."""
    g = g + wd * p
    if momentum:
        buffer = g if t == 1 else momentum * buffer + (1 - dampening) * g
        g = g + momentum * buffer if nesterov else buffer
    return p - lr * g


SGD_CASES = {
    "plain": dict(),
    "momentum": dict(momentum=0.9),
    "nesterov_weight_decay": dict(momentum=0.9, nesterov=True, weight_decay=0.01),
    "dampening_weight_decay": dict(momentum=0.9, dampening=0.5, weight_decay=0.1),
}


@pytest.mark.parametrize("case", sorted(SGD_CASES))
@pytest.mark.parametrize("lr", [0.1, 0.01, 1e-3])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_sgd_steps_are_the_exact_update_rounded_once(dtype, lr, case):
    config = SGD_CASES[case]
    momentum, dampening = config.get("momentum", 0.0), config.get("dampening", 0.0)
    nesterov, wd = config.get("nesterov", False), config.get("weight_decay", 0.0)
    start, grads = problem(dtype, seed=1)
    optimizer = nn.SGD(lr, **config)
    model = {"w": slope.tensor(start).astype(dtype)}
    state = optimizer.init(model)
    w = torch.tensor(start).to(getattr(torch, dtype)).requires_grad_()
    reference = torch.optim.SGD([w], lr=lr, foreach=False, **config)
    ours, theirs = [], []
    for t, grad in enumerate(grads, start=1):
        param, buffer = f64(model["w"]), f64(state.momentum[0]) if momentum else None
        model, state = slope.jit(optimizer.step)(model, {"w": slope.tensor(grad).astype(dtype)}, state)
        exact = exact_sgd(param, grad, buffer, t, lr, momentum, dampening, nesterov, wd)
        ours.append(count_off(f64(model["w"]), exact, dtype))
        param, buffer = f64(w), f64(reference.state[w]["momentum_buffer"]) if momentum and t > 1 else None
        w.grad = torch.tensor(grad).to(w.dtype)
        reference.step()
        exact = exact_sgd(param, grad, buffer, t, lr, momentum, dampening, nesterov, wd)
        theirs.append(count_off(f64(w), exact, dtype))
    check_counts(ours, theirs)


@pytest.mark.parametrize("max_norm", [0.01, 1.0, 5.0])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_clip_grad_norm_scales_in_float32_and_rounds_once(dtype, max_norm):
    # the scale was rounded to the half dtype first, as PyTorch's clip_grad_norm_ does (its norm is a half tensor)
    g = np.random.default_rng(2)
    grads = {"a": rounded(0.3 * g.standard_normal(N), dtype), "b": rounded(0.3 * g.standard_normal(100), dtype)}
    clipped, norm = nn.optim.clip_grad_norm({k: slope.tensor(v).astype(dtype) for k, v in grads.items()}, max_norm)
    exact_norm = np.sqrt(sum((v * v).sum() for v in grads.values()))
    np.testing.assert_allclose(float(norm.numpy()), exact_norm, rtol=1e-6)
    scale = min(max_norm / (exact_norm + 1e-6), 1.0)
    tensors = {k: torch.tensor(v).to(getattr(torch, dtype)).requires_grad_() for k, v in grads.items()}
    for k, t in tensors.items():
        t.grad = torch.tensor(grads[k]).to(t.dtype)
    torch.nn.utils.clip_grad_norm_(list(tensors.values()), max_norm)
    ours = [count_off(f64(clipped[k]), grads[k] * scale, dtype) for k in grads]
    theirs = [count_off(f64(tensors[k].grad), grads[k] * scale, dtype) for k in grads]
    assert sum(c[1] for c in ours) == 0 and sum(c[0] for c in ours) <= N // 500, ours
    assert sum(c[0] for c in ours) <= sum(c[0] for c in theirs), (ours, theirs)
