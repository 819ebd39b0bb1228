"""Every optimizer's update against a hand-computed NumPy update (PyTorch's formulas), schedules, frozen parameters,
buffers, and the jitted train step. float32 updates are compared with rtol 1e-5 / atol 1e-6 (a few ulps per step)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import slope
import slope.nn as nn

pytestmark = pytest.mark.usefixtures("each_backend")
RTOL, ATOL = 1e-5, 1e-6
STEPS = 3


def model_and_grads(seed: int = 0):
    g = np.random.default_rng(seed)
    params = {"w": g.standard_normal((3, 2)).astype(np.float32), "b": g.standard_normal(2).astype(np.float32)}
    grads = [{k: g.standard_normal(v.shape).astype(np.float32) for k, v in params.items()} for _ in range(STEPS)]
    return params, grads


def run_optimizer(optimizer, params, grads, jit: bool):
    model = {k: slope.tensor(v) for k, v in params.items()}
    state = optimizer.init(model)
    step = slope.jit(optimizer.step) if jit else optimizer.step
    for grad in grads:
        model, state = step(model, {k: slope.tensor(v) for k, v in grad.items()}, state)
    return {k: v.numpy() for k, v in model.items()}, state


def numpy_sgd(params, grads, lr, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0):
    params = {k: v.astype(np.float64) for k, v in params.items()}
    buffers = {}
    for grad in grads:
        for k in params:
            g = grad[k] + weight_decay * params[k]
            if momentum:
                buffers[k] = g if k not in buffers else momentum * buffers[k] + (1 - dampening) * g
                g = g + momentum * buffers[k] if nesterov else buffers[k]
            params[k] = params[k] - lr * g
    return params


def numpy_adam(params, grads, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, decoupled=False):
    params = {k: v.astype(np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(p) for k, p in params.items()}
    for t, grad in enumerate(grads, start=1):
        for k in params:
            g = grad[k].astype(np.float64)
            if weight_decay and decoupled:
                params[k] = params[k] * (1 - lr * weight_decay)
            elif weight_decay:
                g = g + weight_decay * params[k]
            m[k] = betas[0] * m[k] + (1 - betas[0]) * g
            v[k] = betas[1] * v[k] + (1 - betas[1]) * g * g
            m_hat = m[k] / (1 - betas[0] ** t)
            v_hat = v[k] / (1 - betas[1] ** t)
            params[k] = params[k] - lr * m_hat / (np.sqrt(v_hat) + eps)
    return params


SGD_CASES = {
    "plain": dict(lr=0.1),
    "momentum": dict(lr=0.1, momentum=0.9),
    "dampening": dict(lr=0.05, momentum=0.8, dampening=0.3),
    "nesterov": dict(lr=0.1, momentum=0.9, nesterov=True),
    "weight_decay": dict(lr=0.1, momentum=0.5, weight_decay=0.01),
}


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("case", sorted(SGD_CASES))
def test_sgd_matches_numpy(case, jit):
    params, grads = model_and_grads()
    kwargs = SGD_CASES[case]
    result, state = run_optimizer(nn.SGD(**kwargs), params, grads, jit)
    expected = numpy_sgd(params, grads, **kwargs)
    for k in params:
        np.testing.assert_allclose(result[k], expected[k], rtol=RTOL, atol=ATOL)
    assert int(state.count) == STEPS


ADAM_CASES = {
    "adam": (nn.Adam, dict(lr=0.01), dict(lr=0.01)),
    "adam_betas": (nn.Adam, dict(lr=0.05, betas=(0.8, 0.99), eps=1e-6), dict(lr=0.05, betas=(0.8, 0.99), eps=1e-6)),
    "adam_l2": (nn.Adam, dict(lr=0.01, weight_decay=0.1), dict(lr=0.01, weight_decay=0.1)),
    "adamw": (nn.AdamW, dict(lr=0.01), dict(lr=0.01, weight_decay=0.01, decoupled=True)),
    "adamw_strong": (nn.AdamW, dict(lr=0.02, weight_decay=0.5), dict(lr=0.02, weight_decay=0.5, decoupled=True)),
}


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("case", sorted(ADAM_CASES))
def test_adam_matches_numpy(case, jit):
    cls, kwargs, reference_kwargs = ADAM_CASES[case]
    params, grads = model_and_grads(1)
    result, _ = run_optimizer(cls(**kwargs), params, grads, jit)
    expected = numpy_adam(params, grads, **reference_kwargs)
    for k in params:
        np.testing.assert_allclose(result[k], expected[k], rtol=RTOL, atol=ATOL)


def test_schedules_values():
    steps = slope.tensor([0.0, 1.0, 5.0, 10.0, 20.0])
    np.testing.assert_allclose(nn.optim.step_decay(1.0, 5, 0.5)(steps).numpy(), [1, 1, 0.5, 0.25, 0.0625], rtol=1e-6)
    np.testing.assert_allclose(nn.optim.exponential_decay(2.0, 0.9)(steps).numpy(), 2 * 0.9 ** steps.numpy(), rtol=1e-5)
    cosine = nn.optim.cosine_decay(1.0, 10, final_lr=0.1)(steps).numpy()
    expected = [0.1 + 0.45 * (1 + math.cos(math.pi * min(s, 10) / 10)) for s in [0, 1, 5, 10, 20]]
    np.testing.assert_allclose(cosine, expected, rtol=1e-5, atol=1e-7)
    warm = nn.optim.linear_warmup(0.5, 4)(steps).numpy()
    np.testing.assert_allclose(warm, [0.125, 0.25, 0.5, 0.5, 0.5], rtol=1e-6)
    pieces = nn.optim.piecewise_constant([2, 10], [1.0, 0.1, 0.01])(steps).numpy()
    np.testing.assert_allclose(pieces, [1.0, 1.0, 0.1, 0.01, 0.01], rtol=1e-6)


def test_schedules_compute_in_float64_for_every_step_type():
    """An int step (Python or NumPy int, int32/int64 tensor) or a float32 one: piecewise_constant's first rate was
    0 (full_like of an int step), the others computed in float32 (cosine_decay(0.1, 1000)(333) 0.07504532486 for
    PyTorch's 0.07504533127), and learning_rate(2**24 + 1) rounded the count to float32. Exact references: Python
    floats, as PyTorch's schedulers compute (within 1e-14 for the cosines, 2 ulp)."""
    cases = [
        (
            nn.optim.piecewise_constant([5, 10], [0.1, 0.01, 0.001]),
            lambda s: 0.1 if s < 5 else 0.01 if s < 10 else 0.001,
        ),
        (nn.optim.cosine_decay(0.1, 1000, 0.001), lambda s: 0.001 + 0.099 * 0.5 * (1 + math.cos(math.pi * s / 1000))),
        (nn.optim.step_decay(0.1, 7, 0.3), lambda s: 0.1 * 0.3 ** (s // 7)),
        (nn.optim.exponential_decay(0.1, 0.999), lambda s: 0.1 * 0.999**s),
        (nn.optim.linear_warmup(nn.optim.exponential_decay(0.1, 0.999), 500), lambda s: (s + 1) / 500 * 0.1 * 0.999**s),
        (nn.optim.warmup_cosine(0.1, 100, 1000), lambda s: 0.1 * 0.5 * (1 + math.cos(math.pi * (s - 100) / 900))),
    ]
    for schedule, exact in cases:
        for step in (333, np.int64(333), slope.tensor(333), slope.tensor(333, dtype=slope.int32), 333.0,
                     slope.tensor(333.0), slope.tensor(333.0, dtype=slope.float64)):  # fmt: skip
            rate = schedule(step)
            assert rate.dtype == slope.float64, (schedule, step)
            np.testing.assert_allclose(float(rate), exact(333), rtol=1e-14, err_msg=f"{schedule} at {step!r}")
        jitted = slope.jit(lambda s, schedule=schedule: schedule(s))(slope.tensor(333))
        np.testing.assert_allclose(float(jitted), exact(333), rtol=1e-14)
    count = 2**24 + 1  # not a float32
    for optimizer in (nn.SGD(nn.optim.step_decay(1.0, count, 0.5)), nn.SGD(nn.optim.exponential_decay(1.0, 0.999999))):
        expected = float(optimizer.learning_rate(slope.tensor(count)))  # the state's int64 count: exact
        assert optimizer.learning_rate(count) == expected == optimizer.lr(float(count)) and expected != 1.0


def test_schedule_changes_the_rate_without_recompiling():
    optimizer = nn.SGD(nn.optim.step_decay(1.0, 1, 0.5))
    model = {"w": slope.tensor([0.0])}
    state = optimizer.init(model)
    traces = []

    def counted_step(model, grads, state):
        traces.append(1)
        return optimizer.step(model, grads, state)

    step = slope.jit(counted_step)
    history = []
    for _ in range(4):
        history.append(optimizer.lr_at(state))
        model, state = step(model, {"w": slope.tensor([1.0])}, state)
    assert history == [1.0, 0.5, 0.25, 0.125]
    np.testing.assert_allclose(model["w"].numpy(), [-1.875])
    assert len(traces) == 1


def test_frozen_parameters_buffers_and_trainable_filter_are_left_alone():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.Linear(2, 1))
    model.freeze("0.bias")
    grads = slope.tree.map(slope.ones_like, model)
    optimizer = nn.SGD(0.1, momentum=0.9)
    state = optimizer.init(model)
    assert state.momentum[1] is None and state.momentum[4] is None  # frozen bias, running_mean
    new, state = optimizer.step(model, grads, state)
    for name, before in model.state_dict().items():
        after = new.state_dict()[name].numpy()
        changed = not np.array_equal(after, before.numpy())
        assert changed == (name not in ("0.bias", "1.running_mean", "1.running_var")), name
    only_last = nn.Adam(0.1, trainable="2")
    new, _ = only_last.step(model, grads, only_last.init(model))
    changed = [n for n, t in new.state_dict().items() if not np.array_equal(t.numpy(), model.state_dict()[n].numpy())]
    assert changed == ["2.weight", "2.bias"]


def test_one_jitted_train_step_learns():
    slope.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 1))
    optimizer = nn.Adam(0.05)
    state = optimizer.init(model)
    x = slope.tensor(np.random.default_rng(0).uniform(-1, 1, (64, 2)).astype(np.float32))
    y = (x[:, :1] * x[:, 1:]).sin()

    traces = []

    @slope.jit
    def train_step(model, state, x, y):
        traces.append(1)
        loss, grads = slope.value_and_grad(lambda m: nn.mse(m(x), y))(model)
        model, state = optimizer.step(model, grads, state)
        return model, state, loss

    losses = []
    for _ in range(100):
        model, state, loss = train_step(model, state, x, y)
        losses.append(float(loss))
    assert losses[-1] < 0.1 * losses[0]
    assert len(traces) == 1


def test_clip_grad_norm():
    grads = {"a": slope.tensor([3.0, 0.0]), "b": slope.tensor([4.0])}
    clipped, norm = nn.optim.clip_grad_norm(grads, 1.0)
    assert abs(float(norm) - 5.0) < 1e-6
    assert abs(float(nn.optim.global_norm(clipped)) - 1.0) < 1e-5
    unchanged, _ = nn.optim.clip_grad_norm(grads, 10.0)
    np.testing.assert_allclose(unchanged["a"].numpy(), [3.0, 0.0], rtol=1e-6)


@pytest.mark.parametrize("max_norm", ["inf", "1.0", None, [1.0]])
def test_clip_grad_norm_refuses_a_max_norm_that_is_not_a_number(max_norm):
    # clip_grad_norm(g, "inf") failed in slope.div ("cannot combine float32 with str"), naming neither the function
    # nor max_norm
    with pytest.raises(TypeError, match="clip_grad_norm: max_norm must be a real number or a tensor"):
        nn.optim.clip_grad_norm({"w": slope.ones((3,))}, max_norm)
    clipped, _ = nn.optim.clip_grad_norm({"w": slope.ones((3,))}, math.inf)
    np.testing.assert_array_equal(clipped["w"].numpy(), np.ones(3, np.float32))


@pytest.mark.parametrize(
    "make, names",
    [
        (lambda: nn.SGD(0.1, momentum=0.9), ["lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize"]),
        (lambda: nn.Adam(0.1), ["lr", "beta1", "beta2", "betas", "eps", "weight_decay", "amsgrad", "trainable"]),
        (lambda: nn.AdamW(0.1), ["lr", "weight_decay", "decay"]),
    ],
    ids=["sgd", "adam", "adamw"],
)
def test_hyperparameters_are_read_only_once_made(make, names):
    """`opt.lr = 0.0` after a jitted step had compiled was ignored by it (lr 0.1 kept) while opt.lr_at said 0.0: the
    hyperparameters are read-only now, with an error that names the optimizer and attribute and says what to do."""
    optimizer = make()
    owner = type(optimizer).__name__
    step = slope.jit(lambda m, s, g: optimizer.step(m, g, s))
    model, grads = {"w": slope.tensor(np.ones(2, np.float32))}, {"w": slope.tensor(np.ones(2, np.float32))}
    model, state = step(model, optimizer.init(model), grads)
    for name in names:
        before = getattr(optimizer, name, None)
        with pytest.raises(AttributeError, match=rf"{owner}: .*read-only.*setting '{name}'.*jitted step.*schedule"):
            setattr(optimizer, name, 0.0)
        assert getattr(optimizer, name, None) is before
    with pytest.raises(AttributeError, match=rf"{owner}: .*read-only.*deleting 'lr'"):
        del optimizer.lr
    assert optimizer.lr_at(state) == 0.1


def test_numpy_scalar_hyperparameters_update_as_pytorchs():
    """nn.SGD(np.float32(0.1)) raised "lr must be a non-negative number or a schedule, got np.float32(0.1)" (and
    np.int64 rates, np.float32 momentum, betas, eps, weight_decay the same), where PyTorch takes NumPy's scalars."""
    torch = pytest.importorskip("torch")
    start, grads = model_and_grads(4)
    start, grads = start["w"], [g["w"] for g in grads]
    f32, f64, i64 = np.float32, np.float64, np.int64
    sgd = dict(lr=f32(0.1), momentum=f32(0.9), dampening=f64(0.25), weight_decay=f32(1e-2))
    adam = dict(lr=f32(1e-2), betas=(f32(0.8), f64(0.99)), eps=f32(1e-6), weight_decay=f64(0.1))
    cases = [
        (nn.SGD, torch.optim.SGD, sgd),
        (nn.SGD, torch.optim.SGD, dict(lr=i64(1), momentum=f32(0.5), nesterov=np.bool_(True))),
        (nn.Adam, torch.optim.Adam, adam),
        (nn.AdamW, torch.optim.AdamW, adam),
        (nn.Adam, torch.optim.Adam, dict(lr=i64(1), amsgrad=np.bool_(True))),
    ]
    for ours, theirs, kwargs in cases:
        optimizer = ours(**kwargs)
        assert type(optimizer.lr) is float and optimizer.lr == float(kwargs["lr"])
        model = {"w": slope.tensor(start)}
        state = optimizer.init(model)
        w = torch.tensor(start, requires_grad=True)
        # (PyTorch's Adam refuses betas that are not both Python floats, np.float32 included: their values here)
        torch_kwargs = {**kwargs, "betas": tuple(map(float, kwargs["betas"]))} if "betas" in kwargs else kwargs
        reference = theirs([w], **torch_kwargs, foreach=False)
        for grad in grads:
            model, state = slope.jit(optimizer.step)(model, {"w": slope.tensor(grad)}, state)
            w.grad = torch.tensor(grad)
            reference.step()
        np.testing.assert_allclose(model["w"].numpy(), w.detach().numpy(), rtol=RTOL, atol=ATOL, err_msg=str(kwargs))
    for bad in (np.bool_(True), f32(np.nan), f32(-0.1)):
        with pytest.raises(ValueError, match="SGD: lr must be a non-negative number or a schedule"):
            nn.SGD(bad)
    with pytest.raises(ValueError, match=r"Adam: betas\[0\] must be a number in \[0.0, 1.0\), got np.float32\(1.0\)"):
        nn.Adam(1e-3, betas=(f32(1.0), 0.999))


@pytest.mark.filterwarnings("error")
def test_schedules_of_numpy_scalars():
    """A piecewise_constant of np.float32 values beside the float64 step count: NumPy's overflow warning, each step."""
    optimizer = nn.SGD(nn.optim.piecewise_constant([np.int64(1)], [np.float32(0.5), np.float32(0.25)]))
    model, state = {"w": slope.tensor([0.0])}, None
    state = optimizer.init(model)
    rates = []
    for _ in range(2):
        rates.append(optimizer.lr_at(state))
        model, state = optimizer.step(model, {"w": slope.tensor([1.0])}, state)
    assert rates == [0.5, 0.25] and model["w"].tolist() == [-0.75]
    assert type(nn.SGD(nn.optim.constant_schedule(np.float32(0.5))).learning_rate(0)) is float


def test_optimizer_errors():
    with pytest.raises(ValueError, match="lr"):
        nn.SGD(-1.0)
    with pytest.raises(ValueError, match="Nesterov"):
        nn.SGD(0.1, nesterov=True)
    model = nn.Linear(2, 2)
    optimizer = nn.SGD(0.1)
    with pytest.raises(ValueError, match="leaves"):
        optimizer.step(model, {"w": slope.ones(2)}, optimizer.init(model))


@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("decoupled", [False, True])
@pytest.mark.parametrize("beta2", [0.999, 0.9999, 0.99999])
def test_float32_adam_matches_torch_with_a_beta2_near_one(beta2, decoupled, amsgrad):
    # the bias corrections are Python floats in PyTorch; in float32, 1 - 0.99999**t was 7e-4 off (0.4% of 5 steps)
    torch = pytest.importorskip("torch")
    g = np.random.default_rng(3)
    start, grads = g.standard_normal(1000).astype(np.float32), g.standard_normal((5, 1000)).astype(np.float32)
    kind, torch_kind = (nn.AdamW, torch.optim.AdamW) if decoupled else (nn.Adam, torch.optim.Adam)
    optimizer = kind(1e-2, betas=(0.9, beta2), weight_decay=0.01, amsgrad=amsgrad)
    model = {"w": slope.tensor(start)}
    state = optimizer.init(model)
    w = torch.tensor(start, requires_grad=True)
    reference = torch_kind([w], lr=1e-2, betas=(0.9, beta2), weight_decay=0.01, amsgrad=amsgrad)
    for grad in grads:
        model, state = slope.jit(optimizer.step)(model, {"w": slope.tensor(grad)}, state)
        w.grad = torch.tensor(grad)
        reference.step()
    moved = np.abs(w.detach().numpy() - start).max()
    assert np.abs(model["w"].numpy() - w.detach().numpy()).max() < 2e-5 * moved


@pytest.mark.parametrize("dtype, big", [("float16", 300.0), ("float16", 8000.0), ("bfloat16", 3e19), ("float32", 3e20)])
def test_adam_second_moment_overflows_where_pytorchs_does(dtype, big):
    # grad * grad overflowed float16 from |grad| = 256 (PyTorch's addcmul: 8100) and float32's scaled square from
    # 1.8e20 (PyTorch: 5.8e20); nu then stayed inf and the parameter never moved again
    torch = pytest.importorskip("torch")
    optimizer = nn.Adam(0.01)
    model = {"w": slope.ones(1, dtype=dtype)}
    state = optimizer.init(model)
    w = torch.ones(1, dtype=getattr(torch, dtype), requires_grad=True)
    reference = torch.optim.Adam([w], lr=0.01, foreach=False)
    for g in [big] + [1.0] * 5:
        model, state = slope.jit(optimizer.step)(model, {"w": slope.tensor([g]).astype(dtype)}, state)
        w.grad = torch.tensor([g]).to(w.dtype)
        reference.step()
    assert np.isfinite(state.nu[0].astype("float64").numpy()).all()
    expected = w.detach().double().numpy()
    assert expected[0] < 1.0
    np.testing.assert_allclose(
        model["w"].astype("float64").numpy(), expected, rtol=4e-3 if dtype != "float32" else 1e-6
    )


def test_a_parameter_without_state_is_an_error_not_skipped():
    # the state of a frozen parameter is None; unfrozen later (fine-tuning), it was silently never trained, as were all
    # parameters of SGD(momentum) stepped with a state made without momentum
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    model.freeze("0.weight")
    grads = slope.tree.map(slope.ones_like, model)
    for optimizer in (nn.Adam(0.1), nn.AdamW(0.1), nn.SGD(0.1, momentum=0.9)):
        state = optimizer.init(model)
        model.unfreeze()
        with pytest.raises(ValueError, match=r"step: leaf 0 .* no state .*call init"):
            optimizer.step(model, grads, state)
        model.freeze("0.weight")
    with pytest.raises(ValueError, match="no state"):
        nn.SGD(0.1, momentum=0.9).step(model, grads, nn.SGD(0.1).init(model))


def test_trainable_and_decay_name_a_dict_models_leaves_by_key():
    model = {"w": slope.ones((2, 2)), "b": slope.ones(2), "head": nn.Linear(2, 1)}
    grads = slope.tree.map(slope.ones_like, model)
    assert [name for name, _ in nn.leaf_kinds(model)] == ["b", "head.weight", "head.bias", "w"]
    only_w = nn.SGD(0.1, trainable=lambda name: name == "w")
    new, _ = only_w.step(model, grads, only_w.init(model))
    np.testing.assert_allclose(new["w"].numpy(), 0.9)
    np.testing.assert_array_equal(new["b"].numpy(), 1.0)
    decayed = nn.SGD(0.1, weight_decay=1.0, decay=lambda name, leaf: name == "w")
    new, _ = decayed.step(model, slope.tree.map(slope.zeros_like, model), decayed.init(model))
    np.testing.assert_allclose(new["w"].numpy(), 0.9)
    np.testing.assert_array_equal(new["b"].numpy(), 1.0)


def test_linear_warmup_refuses_a_step_count_below_one():
    for steps in (-4, 0, 1.5):
        with pytest.raises(ValueError, match="linear_warmup: warmup_steps"):
            nn.optim.linear_warmup(0.1, steps)


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW"])
def test_signatures_are_pytorchs(name):
    # SGD(lr, momentum, dampening, nesterov, weight_decay) took nn.SGD(0.1, 0.9, 0, 1e-2) as nesterov=0.01 and no
    # weight decay; Adam's fifth positional argument was `trainable` (PyTorch's: amsgrad), and SGD's lr 0.01 (1e-3)
    import inspect

    torch = pytest.importorskip("torch")
    ours = inspect.signature(getattr(nn, name)).parameters.values()
    theirs = list(inspect.signature(getattr(torch.optim, name)).parameters.values())[1:]  # (less params)
    positional = [(p.name, p.default) for p in ours if p.kind == p.POSITIONAL_OR_KEYWORD]
    assert positional == [(p.name, p.default) for p in theirs if p.kind == p.POSITIONAL_OR_KEYWORD]
    keyword = {p.name: p.default for p in ours if p.kind == p.KEYWORD_ONLY}
    assert keyword["maximize"] == dict((p.name, p.default) for p in theirs)["maximize"] is False
    assert {"trainable", "decay"} <= set(keyword)


def test_positional_hyperparameters_update_as_pytorchs():
    torch = pytest.importorskip("torch")
    start, grads = model_and_grads(2)
    start, grads = start["w"], [g["w"] for g in grads]
    cases = [
        (nn.SGD(0.1, 0.9, 0, 1e-2), torch.optim.SGD, (0.1, 0.9, 0, 1e-2)),
        (nn.SGD(0.1, 0.9, 0, 0.5, True), torch.optim.SGD, (0.1, 0.9, 0, 0.5, True)),
        (nn.Adam(1e-2, (0.8, 0.99), 1e-6, 0.1, True), torch.optim.Adam, (1e-2, (0.8, 0.99), 1e-6, 0.1, True)),
        (nn.AdamW(1e-2, (0.8, 0.99), 1e-6, 0.1, True), torch.optim.AdamW, (1e-2, (0.8, 0.99), 1e-6, 0.1, True)),
    ]
    for optimizer, torch_kind, args in cases:
        model = {"w": slope.tensor(start)}
        state = optimizer.init(model)
        w = torch.tensor(start, requires_grad=True)
        reference = torch_kind([w], *args, foreach=False)
        for grad in grads:
            model, state = optimizer.step(model, {"w": slope.tensor(grad)}, state)
            w.grad = torch.tensor(grad)
            reference.step()
        np.testing.assert_allclose(model["w"].numpy(), w.detach().numpy(), rtol=RTOL, atol=ATOL, err_msg=str(args))


def test_flags_must_be_bools_and_betas_a_pair():
    with pytest.raises(TypeError, match=r"SGD: nesterov must be a bool, got 0\.01 .*SGD\(lr, momentum, dampening, "):
        nn.SGD(0.1, 0.9, 0, 0, 1e-2)
    with pytest.raises(TypeError, match="Adam: amsgrad must be a bool, got 1"):
        nn.Adam(1e-3, (0.9, 0.999), 1e-8, 0, 1)
    with pytest.raises(TypeError, match="AdamW: maximize must be a bool"):
        nn.AdamW(maximize="yes")
    with pytest.raises(ValueError, match=r"Adam: betas must be a pair \(beta1, beta2\), got True"):
        nn.Adam(1e-3, True)  # ("'bool' object is not iterable", naming no optimizer)
    with pytest.raises(TypeError):
        nn.SGD(0.1, 0, 0, 0, False, None)  # (trainable is keyword-only)
    assert nn.SGD(0.1, nesterov=np.bool_(False)).nesterov is False


@pytest.mark.parametrize(
    "optimizer", [nn.SGD(0.1), nn.SGD(0.1, 0.9), nn.Adam(0.1), nn.AdamW(0.1)], ids=["sgd", "momentum", "adam", "adamw"]
)
def test_gradients_shaped_unlike_the_model_are_refused(optimizer):
    # matched by position: {'a', 'c'} (or a plain list) for a model {'a', 'b'} gave b the gradient of c
    model = {"a": slope.ones(2), "b": slope.ones(2)}
    state = optimizer.init(model)
    name = type(optimizer).__name__
    with pytest.raises(ValueError, match=rf"{name}.step: the gradients are not shaped like the model: expected "
                       r"dict\(\*, \*\) with leaves \['a', 'b'\], got dict\(\*, \*\) with leaves \['a', 'c'\] "
                       r"\(gradient leaf 1 is 'c' where the model's is 'b'\)"):  # fmt: skip
        optimizer.step(model, {"a": slope.ones(2), "c": slope.ones(2)}, state)
    with pytest.raises(
        ValueError, match=rf"{name}.step: .* got list\(\*, \*\) .* leaf 0 is '0' where the model's is 'a'"
    ):
        optimizer.step(model, [slope.ones(2), slope.ones(2)], state)
    layer = nn.Linear(2, 1)
    with pytest.raises(ValueError, match=rf"{name}.step: .* leaf 0 is 'bias' where the model's is 'weight'"):
        optimizer.step(layer, {"bias": slope.ones(1), "weight": slope.ones((1, 2))}, optimizer.init(layer))
    # a module's static attributes may differ (gradients of its eval() copy)
    grads = nn.grad(lambda m: m(slope.ones((3, 2))).sum())(nn.Linear(2, 1).eval())
    new, _ = slope.jit(optimizer.step)(layer, grads, optimizer.init(layer))
    assert not np.array_equal(new.weight.numpy(), layer.weight.numpy())


@pytest.mark.parametrize(
    "optimizer",
    [nn.SGD(0.1), nn.SGD(0.1, maximize=True), nn.Adam(0.1), nn.AdamW(0.1)],
    ids=["sgd", "maximize", "adam", "adamw"],
)
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("param_dtype, grad_dtype", [("float32", "float64"), ("float32", "float16"),
                                                     ("bfloat16", "float32"), ("float64", "float32")])  # fmt: skip
def test_a_gradient_of_another_dtype_is_refused_as_pytorch(optimizer, jit, param_dtype, grad_dtype):
    """A gradient whose dtype is not its parameter's was cast silently (a float64 gradient rounded onto a float32
    weight; a float16 one, already rounded, widened): PyTorch refuses it ("assigned grad has data of a different
    type"). Now a TypeError naming the optimizer, the parameter's path and both dtypes; slope.grad's own gradients,
    clipped ones and accumulated ones keep the parameter's dtype and still step."""
    torch = pytest.importorskip("torch")
    weight = torch.ones(2, dtype=getattr(torch, param_dtype), requires_grad=True)
    with pytest.raises(RuntimeError, match="assigned grad has data of a different type|must match the tensor's grad_"):
        weight.grad = torch.ones(2, dtype=getattr(torch, grad_dtype))
    model = nn.Sequential(nn.Linear(3, 2, dtype=getattr(slope, param_dtype)))
    state, step = optimizer.init(model), slope.jit(optimizer.step) if jit else optimizer.step
    grads = nn.grad(lambda m: m(slope.ones((4, 3), dtype=getattr(slope, param_dtype))).astype(slope.float32).sum())(
        model
    )
    assert [g.dtype for g in slope.tree.leaves(grads)] == [getattr(slope, param_dtype)] * 2
    cast = slope.tree.map(lambda g: g.astype(getattr(slope, grad_dtype)), grads)
    name = type(optimizer).__name__
    with pytest.raises(TypeError, match=rf"{name}\.step: the gradient of '0\.weight' \(leaf 0\) is {grad_dtype} where "
                       rf"the parameter is {param_dtype}; a gradient must have its parameter's dtype"):  # fmt: skip
        step(model, cast, state)
    clipped, _ = nn.optim.clip_grad_norm(grads, 0.5)
    accumulated = slope.tree.map(lambda a, b: a + b, grads, clipped)
    for good in (grads, clipped, accumulated):
        new, _ = step(model, good, state)
        assert [p.dtype for p in slope.tree.leaves(new)] == [getattr(slope, param_dtype)] * 2


def test_a_dict_of_a_linears_gradients_names_both_structures():
    """A dict {'weight', 'bias'} for a Linear: the message said only "gradient leaf 0 is 'bias' where the model's is
    'weight'" (a dict's keys are sorted), as if a gradient were missing. Now it names the structure expected and the
    one given, at the path where they part."""
    optimizer, layer = nn.Adam(0.1), nn.Linear(2, 1)
    given = {"weight": slope.ones((1, 2)), "bias": slope.ones(1)}
    with pytest.raises(ValueError, match=r"Adam\.step: the gradients are not shaped like the model: expected "
                       r"Linear\(\*, \*\) with leaves \['weight', 'bias'\], got dict\(\*, \*\) with leaves "
                       r"\['bias', 'weight'\]"):  # fmt: skip
        optimizer.step(layer, given, optimizer.init(layer))
    model = {"encoder": layer, "scale": slope.ones(1)}
    with pytest.raises(ValueError, match=r"Adam\.step: .* at 'encoder' expected Linear\(\*, \*\) with leaves "
                       r"\['encoder\.weight', 'encoder\.bias'\], got dict\(\*, \*\)"):  # fmt: skip
        optimizer.step(model, {"encoder": given, "scale": slope.ones(1)}, optimizer.init(model))
    with pytest.raises(ValueError, match=r"expected Linear\(\*, \*\) with leaves \['weight', 'bias'\], got "
                       r"list\(\*, \*\) with leaves \['0', '1'\]"):  # fmt: skip
        optimizer.step(layer, [slope.ones((1, 2)), slope.ones(1)], optimizer.init(layer))


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_a_state_of_another_model_or_optimizer_is_refused(jit):
    # another model's state: "slope.add: shapes (4, 3) and (2, 3)"; another optimizer's, or None: AttributeErrors
    model, other = nn.Linear(3, 2), nn.Linear(3, 4)
    grads = nn.grad(lambda m: m(slope.ones((1, 3))).sum())(model)
    adam, sgd = nn.Adam(0.1), nn.SGD(0.1, 0.9)
    run = (lambda opt: slope.jit(opt.step)) if jit else (lambda opt: opt.step)
    refused = [  # (optimizer, state, error, message)
        (adam, adam.init(other), ValueError, r"Adam.step: the state's mu for 'weight' \(leaf 0\) has shape \(4, 3\) "
         r"where the parameter's shape is \(2, 3\) .*pass the AdamState Adam.init\(model\) returns"),
        (sgd, sgd.init(other), ValueError, r"SGD.step: the state's momentum for 'weight' \(leaf 0\) has shape \(4, 3\)"),
        (adam, adam.init(model)._replace(nu=[None]), ValueError,
         r"Adam.step: the state's nu has 1 entries where the model has 2 leaves"),
        (adam, sgd.init(model), TypeError, r"Adam.step: expected the AdamState Adam.init\(model\) returns for this "
         r"model, got SGDState \(another optimizer's state\)"),
        (sgd, adam.init(model), TypeError, r"SGD.step: expected the SGDState SGD.init\(model\) returns .*, got AdamState"),
        (sgd, None, TypeError, r"SGD.step: expected the SGDState SGD.init\(model\) returns .*, got None"),
    ]  # fmt: skip
    if not jit:  # (jit's arguments must be tensors)
        refused.append((adam, adam.init(model)._replace(count=None), TypeError,
                        r"Adam.step: the state's count must be a tensor .*, got None"))  # fmt: skip
    for optimizer, state, error, message in refused:
        with pytest.raises(error, match=message):
            run(optimizer)(model, grads, state)
    # the gradients of another model: named by leaf
    other_grads = nn.grad(lambda m: m(slope.ones((1, 3))).sum())(other)
    with pytest.raises(ValueError, match=r"Adam.step: the gradient of 'weight' \(leaf 0\) has shape \(4, 3\) where the "
                       r"parameter's shape is \(2, 3\)"):  # fmt: skip
        run(adam)(model, other_grads, adam.init(model))
    # a state of the same model still steps, AdamW's for Adam too (the same kind of state)
    new, state = run(adam)(model, grads, nn.AdamW(0.1).init(model))
    assert isinstance(state, nn.optim.AdamState) and new.weight.shape == (2, 3)


def test_a_trainable_prefix_that_names_no_parameter_is_an_error():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.Linear(2, 1))
    for optimizer in (nn.SGD(trainable=["1."]), nn.Adam(trainable="2.weights"), nn.SGD(trainable=["0", "3"])):
        with pytest.raises(ValueError, match=rf"{type(optimizer).__name__}: trainable prefix '(1\.|2\.weights|3)' "
                           r"names no parameter of the model; its parameters are \['0.weight', '0.bias', '1.weight', "
                           r"'1.bias', '2.weight', '2.bias'\]"):  # fmt: skip
            optimizer.init(model)
    with pytest.raises(ValueError, match="trainable prefix '1.running_mean' names no parameter"):  # (a buffer)
        nn.SGD(trainable="1.running_mean").init(model)
    optimizer = nn.SGD(0.1, trainable=["0", "2.bias"])
    grads = slope.tree.map(slope.ones_like, model)
    new, _ = optimizer.step(model, grads, optimizer.init(model))
    changed = [n for n, t in new.state_dict().items() if not np.array_equal(t.numpy(), model.state_dict()[n].numpy())]
    assert changed == ["0.weight", "0.bias", "2.bias"]
    with pytest.raises(ValueError, match=r"SGD: trainable prefix '0' names no parameter of the model; its parameters "
                       r"are \['w'\]"):  # fmt: skip
        optimizer.step({"w": slope.ones(1)}, {"w": slope.ones(1)}, nn.SGD(0.1).init({"w": slope.ones(1)}))


def test_adam_bias_corrections_are_made_once_per_step_not_per_leaf():
    """beta1**t and beta2**t (float64 powers) were computed for every parameter tensor: an AdamW step of 8 tensors
    held 16 powers (on iree each is a loop of double-double arithmetic: 12,765 lines, 40 s to compile); now 2."""
    model = nn.Sequential(*[nn.Linear(3, 3) for _ in range(4)])
    for optimizer in (nn.AdamW(1e-3), nn.Adam(1e-3, amsgrad=True)):
        state = optimizer.init(model)
        program = slope.jit(optimizer.step).lower(model, model, state).program
        powers = [i for i in program.instructions if i.op.name == "pow" and i.outputs[0].aval.dtype == slope.float64]
        assert len(powers) == 2, str(program)


def _torch_hypergradient(torch, rates: list[float], momentum: float = 0.0) -> float:
    """d(query loss)/d(lr) after SGD steps at the rates lr * rates[t] on a float64 linear regression (create_graph)."""
    generator = np.random.default_rng(11)
    x, y, xq, yq = (torch.from_numpy(generator.standard_normal(s)) for s in [(6, 3), (6, 1), (5, 3), (5, 1)])
    lr = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    w = torch.from_numpy(np.linspace(-1.0, 1.0, 3)[:, None]).requires_grad_()
    b = torch.tensor([0.3], dtype=torch.float64, requires_grad=True)
    velocity = None
    for rate in rates:
        gw, gb = torch.autograd.grad(((x @ w + b - y) ** 2).mean(), [w, b], create_graph=True)
        velocity = (gw, gb) if velocity is None else (momentum * velocity[0] + gw, momentum * velocity[1] + gb)
        w, b = w - lr * rate * velocity[0], b - lr * rate * velocity[1]
    (hypergradient,) = torch.autograd.grad(((xq @ w + b - yq) ** 2).mean(), [lr])
    return hypergradient.item()


def _slope_hypergradient(make_optimizer, steps: int, jit: bool) -> float:
    generator = np.random.default_rng(11)
    x, y, xq, yq = (slope.tensor(generator.standard_normal(s)) for s in [(6, 3), (6, 1), (5, 3), (5, 1)])
    model = {"w": slope.tensor(np.linspace(-1.0, 1.0, 3)[:, None]), "b": slope.tensor([0.3], dtype=slope.float64)}

    def query_loss(lr):
        optimizer, params = make_optimizer(lr), model
        state = optimizer.init(params)
        for _ in range(steps):
            grads = slope.grad(lambda p: nn.mse(x @ p["w"] + p["b"], y))(params)
            params, state = optimizer.step(params, grads, state)
        return nn.mse(xq @ params["w"] + params["b"], yq)

    hypergradient = slope.grad(query_loss)
    return (slope.jit(hypergradient) if jit else hypergradient)(slope.tensor(0.2, dtype=slope.float64)).item()


@pytest.mark.parametrize("jit", [False, True])
def test_hypergradients_through_a_schedule_and_linear_warmup_match_pytorch(jit):
    """A learning rate differentiated by slope.grad (a hypergradient) works as a schedule that returns it; linear_warmup
    of such a rate failed in float(schedule) with the generic traced-value message, while the other schedules took it.
    Both against PyTorch's create_graph=True (float64, 1e-10)."""
    torch = pytest.importorskip("torch")
    cases = [
        (lambda lr: nn.SGD(lambda step: lr), [1.0, 1.0], 0.0),
        (lambda lr: nn.SGD(nn.optim.linear_warmup(lr, 3)), [1 / 3, 2 / 3, 1.0, 1.0], 0.0),
        (lambda lr: nn.SGD(nn.optim.linear_warmup(lr, 2), momentum=0.9), [0.5, 1.0, 1.0], 0.9),
    ]
    for make_optimizer, rates, momentum in cases:
        expected = _torch_hypergradient(torch, rates, momentum)
        assert _slope_hypergradient(make_optimizer, len(rates), jit) == pytest.approx(expected, rel=1e-10, abs=1e-10)


def test_a_traced_hyperparameter_under_grad_names_the_schedule_that_works():
    """SGD(lr) with a rate slope.grad differentiates said to use jit's static_argnums; now it names the form that
    works for a hypergradient, SGD(lambda step: lr), and the other hyperparameters say that only the rate may be traced.
    """
    model = {"w": slope.ones(2)}
    grads = {"w": slope.ones(2)}

    def after_a_step(make_optimizer):
        def loss(value):
            optimizer = make_optimizer(value)
            return optimizer.step(model, grads, optimizer.init(model))[0]["w"].sum()

        return slope.grad(loss)(slope.tensor(0.1))

    with pytest.raises(ValueError, match=r"^SGD: lr must be a Python number, .*schedule that returns it, "
                                         r"SGD\(lambda step: lr\): for a hypergradient"):  # fmt: skip
        after_a_step(nn.SGD)
    with pytest.raises(ValueError, match=r"^Adam: lr .*Adam\(lambda step: lr\)"):
        after_a_step(nn.Adam)
    with pytest.raises(ValueError, match=r"^SGD: momentum must be a Python number, .*only the learning rate may be "
                                         r"traced, as a schedule that returns it: SGD\(lambda step: lr\)"):  # fmt: skip
        after_a_step(lambda value: nn.SGD(0.1, momentum=value))
    with pytest.raises(ValueError, match=r"^linear_warmup: the rate must be a scalar, got a traced tensor of shape"):
        slope.grad(lambda v: nn.optim.linear_warmup(v, 3)(0).sum())(slope.ones(2))
    assert after_a_step(lambda value: nn.SGD(lambda step: value)).item() == -2.0
