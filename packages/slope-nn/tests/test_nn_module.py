"""Module as a pytree: parameters and children from attributes, buffers and frozen parameters, state dicts,
train/eval, jit caching, functional buffer updates (nn.apply) and nn.value_and_grad."""

from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
import gc
import re
import types
import weakref
from typing import Callable

import numpy as np
import pytest
from nn_helpers import assert_close

import slope
import slope.nn as nn


class Block(nn.Module):
    """A user-defined module: a child, a tensor, a list of tensors, a buffer and static configuration."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 2, key=slope.random.key(0))
        self.scale = slope.tensor([2.0, 3.0])
        self.extras = [slope.tensor(1.0), slope.tensor([0.5, 0.25])]
        self.register_buffer("count", slope.tensor(0.0))
        self.activation = "tanh"
        self.sizes = [3, 2]

    def forward(self, x: slope.Tensor) -> slope.Tensor:
        h = self.linear(x) * self.scale * self.extras[0] + self.extras[1]
        return h.tanh() if self.activation == "tanh" else h


def test_module_is_a_pytree_with_named_leaves():
    block = Block()
    leaves, treedef = slope.tree.flatten(block)
    names = [name for name, _, _ in block.named_leaves()]
    assert names == ["linear.weight", "linear.bias", "scale", "extras.0", "extras.1", "count"]
    assert len(leaves) == 6 and all(isinstance(leaf, slope.Tensor) for leaf in leaves)
    rebuilt = slope.tree.unflatten(treedef, leaves)
    assert isinstance(rebuilt, Block) and rebuilt.activation == "tanh" and rebuilt.sizes == [3, 2]
    assert slope.tree.structure(Block()) == treedef  # same configuration, same structure (jit caches on it)
    other = Block()
    other.activation = "none"
    assert slope.tree.structure(other) != treedef
    assert hash(treedef) == hash(slope.tree.structure(Block()))


def test_named_leaves_follow_the_pytree_order_of_dict_keys():
    class Keyed(nn.Module):
        def __init__(self):
            super().__init__()
            self.by_step = {2: slope.tensor([2.0]), 10: slope.tensor([10.0]), 1: nn.Linear(1, 1)}

    model = Keyed()
    model.by_step[1].freeze()
    named = [(name, leaf) for name, leaf, _ in model.named_leaves()]
    assert [id(leaf) for _, leaf in named] == [id(leaf) for leaf in slope.tree.leaves(model)]  # (by repr: "10" < "2")
    assert [name for name, _ in named] == ["by_step.1.weight", "by_step.1.bias", "by_step.2", "by_step.10"]
    assert [kind for _, kind in nn.leaf_kinds(model)] == ["frozen", "frozen", "param", "param"]


def test_parameters_buffers_and_state_dict():
    block = Block()
    assert [n for n, _ in block.named_parameters()] == ["linear.weight", "linear.bias", "scale", "extras.0", "extras.1"]
    assert [n for n, _ in block.named_buffers()] == ["count"]
    assert len(block.parameters()) == 5 and block.num_parameters() == 6 + 2 + 2 + 1 + 2
    assert list(block.state_dict()) == ["linear.weight", "linear.bias", "scale", "extras.0", "extras.1", "count"]
    assert [name for name, _ in block.named_modules()] == ["", "linear"]


def test_grad_is_shaped_like_the_model():
    block = Block()
    x = slope.randn(4, 3)
    grads = slope.grad(lambda m: m(x).sum())(block)
    assert isinstance(grads, Block)
    for (name, param), (grad_name, grad) in zip(block.state_dict().items(), grads.state_dict().items()):
        assert name == grad_name and grad.shape == param.shape
    assert float(grads.count) == 0.0  # buffers get no gradient
    # the same through jit: the module crosses the jit boundary as a pytree
    jitted = slope.jit(slope.grad(lambda m, x: m(x).sum()))(block, x)
    assert_close(jitted.linear.weight, grads.linear.weight.numpy())


def test_train_eval_switch_recompiles_and_changes_behaviour():
    model = nn.Sequential(nn.Dropout(0.5))
    traces = []

    def apply_first(m, x, key):
        traces.append(1)
        return nn.apply(m, x, key=key)[0]

    forward = slope.jit(apply_first)
    x = slope.ones(1000)
    train_out = forward(model.train(), x, slope.random.key(0)).numpy()
    assert 0.4 < (train_out == 0).mean() < 0.6
    assert model.training and model[0].training
    eval_out = forward(model.eval(), x, slope.random.key(0)).numpy()
    assert not model[0].training and np.all(eval_out == 1.0)
    forward(model, x, slope.random.key(1))
    assert len(traces) == 2


def counting_jit() -> tuple:
    """A jitted `model(x)` and the list that grows by one each time it traces."""
    calls: list = []

    @slope.jit
    def run(model: nn.Module, x: slope.Tensor) -> slope.Tensor:
        calls.append(1)
        return model(x)

    return run, calls


def test_jit_caches_one_program_per_structure():
    step, calls = counting_jit()
    model = nn.Linear(3, 2)
    step(model, slope.ones(3))
    step(nn.Linear(3, 2), slope.ones(3))  # new weights, same structure: no retrace
    assert len(calls) == 1
    step(nn.Linear(3, 2, bias=False), slope.ones(3))
    assert len(calls) == 2


class Scaled(nn.Module):
    """A module with a static float: the structure must tell -0.0 from 0.0 (x * -0.0 is -0.0) and find a NaN again."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor
        self.scale = slope.ones(2)

    def forward(self, x: slope.Tensor) -> slope.Tensor:
        return x * self.factor * self.scale


def test_static_floats_keep_their_sign_and_nan_compiles_once():
    run, calls = counting_jit()
    x = slope.ones(2)
    assert np.signbit(run(Scaled(0.0), x).numpy()).tolist() == [False, False]
    assert np.signbit(run(Scaled(-0.0), x).numpy()).tolist() == [True, True]  # was the 0.0 program: +0.0
    leaves, structure = slope.tree.flatten(Scaled(-0.0))
    assert np.signbit(slope.tree.unflatten(structure, leaves).factor)
    assert len(calls) == 2
    for _ in range(3):  # every NaN object is one structure: one program, not one per call
        assert np.isnan(run(Scaled(float("nan")), x).numpy()).all()
    assert len(calls) == 3
    run(Scaled(0.0), x)
    assert len(calls) == 3


def test_static_numpy_floats_keep_their_sign():
    # np.float32(-0.0) == 0.0 and hashes alike: the second module ran the first one's program (inf, not -inf)
    run, _ = counting_jit()
    x = slope.ones(2)
    first, second = (run(Scaled(np.float32(v)), x).numpy() for v in (0.0, -0.0))
    assert np.signbit(first).tolist() == [False, False] and np.signbit(second).tolist() == [True, True]


def test_load_state_dict_keeps_modules_in_dicts_and_tuples():
    class Heads(nn.Module):
        def __init__(self):
            super().__init__()
            self.heads = {"a": nn.Linear(2, 2)}
            self.pair = (nn.Linear(2, 2), nn.Linear(2, 2))

    model = Heads()
    head, first = model.heads["a"], model.pair[0]
    model.load_state_dict({name: np.zeros(v.shape, np.float32) for name, v in model.state_dict().items()})
    assert model.heads["a"] is head and model.pair[0] is first  # updated in place, as PyTorch's
    assert not head.weight.numpy().any() and not first.bias.numpy().any()


def test_load_state_dict_rounds_float64_into_float16_through_float32():
    # NumPy's one rounding gave 1.0009765625 for 1 + 2**-11 + 2**-40; PyTorch (and slope.tensor(...).astype) give 1.0
    layer = slope.tree.map(lambda t: t.astype(slope.float16), nn.Linear(1, 1, bias=False))
    layer.load_state_dict({"weight": np.array([[1 + 2**-11 + 2**-40]])})
    assert layer.weight.dtype == slope.float16 and layer.weight.item() == 1.0
    layer.load_state_dict({"weight": np.array([[3]], np.int64)})  # other conversions as before
    assert layer.weight.dtype == slope.float16 and layer.weight.item() == 3.0


def test_load_state_dict_takes_pytorch_bfloat16_tensors_exactly():
    # np.asarray(torch bfloat16 tensor) raised torch's "Got unsupported ScalarType BFloat16"
    torch = pytest.importorskip("torch")
    theirs = torch.nn.Linear(3, 2).to(torch.bfloat16)
    with torch.no_grad():  # values that no float16 holds, a subnormal, -0.0 and NaN
        theirs.weight.copy_(torch.tensor([[3e38, -1e-39, -0.0], [float("nan"), 1 / 3, -7.1e-5]]))
    ours = nn.Linear(3, 2, dtype=slope.bfloat16)
    for state in (theirs.state_dict(), dict(theirs.named_parameters())):  # (parameters require grad)
        ours.load_state_dict(state)
        for name, value in state.items():
            got = getattr(ours, name)
            assert got.dtype == slope.bfloat16
            np.testing.assert_array_equal(
                got.numpy().view(np.uint16), value.detach().view(torch.int16).numpy().view(np.uint16)
            )
    ours32 = nn.Linear(3, 2).load_state_dict(theirs.state_dict())  # into float32: exact too
    np.testing.assert_array_equal(ours32.weight.numpy(), theirs.weight.detach().float().numpy())


def test_a_tensor_shared_by_two_parameters_is_refused_by_optimizers():
    # b.weight = a.weight trained as two copies that drift apart; PyTorch trains one shared parameter
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 3, bias=False), nn.Linear(3, 3, bias=False)
            self.b.weight = self.a.weight

    for optimizer in (nn.SGD(lr=0.1), nn.SGD(lr=0.1, momentum=0.9), nn.Adam(1e-3)):
        with pytest.raises(ValueError, match="a.weight and b.weight are one tensor"):
            optimizer.init(Tied())
    Block()  # separate parameters (zeros included) are never one tensor
    nn.Adam(1e-3).init(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)))


def test_load_state_dict_in_place_and_errors():
    source, target = Block(), Block()
    target.linear = nn.Linear(3, 2, key=slope.random.key(5))
    linear = target.linear
    returned = target.load_state_dict(source.state_dict())
    assert returned is target and target.linear is linear  # child modules keep their identity
    assert_close(target.linear.weight, source.linear.weight.numpy())
    with pytest.raises(KeyError, match="missing keys"):
        target.load_state_dict({"scale": np.zeros(2)})
    with pytest.raises(ValueError, match="shape"):
        target.load_state_dict({"scale": np.zeros(3)}, strict=False)
    target.load_state_dict({"scale": np.array([7, 8])}, strict=False)  # ints are cast to the parameter's dtype
    assert target.scale.dtype == slope.float32 and target.scale.tolist() == [7.0, 8.0]


def test_freeze_and_requires_grad():
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 1))
    model.freeze("0.weight")
    kinds = dict(nn.leaf_kinds(model))
    assert kinds == {"0.weight": "frozen", "0.bias": "param", "2.weight": "param", "2.bias": "param"}
    assert [n for n, _ in model.named_trainable_parameters()] == ["0.bias", "2.weight", "2.bias"]
    model[2].requires_grad_(False)
    assert [n for n, _ in model.named_trainable_parameters()] == ["0.bias"]
    model.unfreeze()
    assert len(model.named_trainable_parameters()) == 4
    with pytest.raises(KeyError, match="no parameters named"):
        model.freeze("nope")


def test_apply_returns_updated_buffers_without_touching_the_argument():
    model = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
    before = model[1].running_mean.numpy().copy()

    @slope.jit
    def train_step(model, x, y):
        def loss_fn(model):
            out, model = nn.apply(model, x)
            return ((out - y) ** 2).mean(), model

        (loss, model), grads = nn.value_and_grad(loss_fn, has_aux=True)(model)
        return loss, model, grads

    x, y = slope.randn(8, 2), slope.randn(8, 3)
    loss, updated, grads = train_step(model, x, y)
    assert np.array_equal(model[1].running_mean.numpy(), before)
    assert not np.allclose(updated[1].running_mean.numpy(), before)
    assert float(abs(grads[1].running_mean).sum()) == 0.0 and float(abs(grads[1].running_var).sum()) == 0.0
    assert float(abs(grads[0].weight).sum()) > 0.0


def batch_norm_models(torch, counted: bool = True):
    """A float64 model with BatchNorm layers (with `counted`, a second one with momentum=None: an int64
    num_batches_tracked, which slope.grad refuses) and PyTorch's copy."""
    slope.manual_seed(3)
    ours = nn.Sequential(nn.Linear(4, 5, dtype=slope.float64), nn.BatchNorm1d(5, dtype=slope.float64), nn.ReLU(),
                         nn.Linear(5, 3, dtype=slope.float64))  # fmt: skip
    theirs = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.BatchNorm1d(5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    if counted:
        ours.append(nn.BatchNorm1d(3, momentum=None, dtype=slope.float64))
        theirs.append(torch.nn.BatchNorm1d(3, momentum=None))
    theirs.double()
    with torch.no_grad():
        for name, value in ours.state_dict().items():
            theirs.state_dict()[name].copy_(torch.from_numpy(np.array(value.numpy())))
    return ours, theirs


def batch_norm_batches(steps: int = 3) -> list:
    generator = np.random.default_rng(4)
    return [(generator.standard_normal((8, 4)) * 2.0 + 3.0, generator.integers(0, 3, 8)) for _ in range(steps)]


def torch_sgd_steps(torch, model, batches) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for x, y in batches:
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        optimizer.step()


def assert_state_matches_pytorch(ours, theirs) -> None:
    """Every parameter and buffer (running statistics, num_batches_tracked) of `ours` as PyTorch's, float64 to 1e-12."""
    state = theirs.state_dict()
    for name, value in ours.state_dict().items():
        np.testing.assert_allclose(value.numpy(), state[name].numpy(), rtol=1e-12, atol=1e-12, err_msg=name)


def test_traced_buffer_updates_that_would_be_lost_are_errors():
    """A training-mode BatchNorm run by slope.value_and_grad or jit on a copy of the model that is never returned
    left the running statistics at zeros without a word (PyTorch updates them): now an error naming the layer."""
    torch = pytest.importorskip("torch")
    model, theirs = batch_norm_models(torch, counted=False)
    (x, y), optimizer = batch_norm_batches(1)[0], nn.SGD(0.1)
    x, y = slope.tensor(x), slope.tensor(y)
    message = (
        r"slope\.nn\.BatchNorm1d: .*statistics would be lost.*nn\.apply\(model, x\).*has_aux=True.*model\.eval\(\)"
    )
    with pytest.raises(RuntimeError, match=message):
        slope.value_and_grad(lambda q: nn.cross_entropy(q(x), y))(model)

    @slope.jit
    def step(model, state, x, y):
        loss, grads = slope.value_and_grad(lambda q: nn.cross_entropy(q(x), y))(model)
        return (*optimizer.step(model, grads, state), loss)

    with pytest.raises(RuntimeError, match=message):
        step(model, optimizer.init(model), x, y)
    with pytest.raises(RuntimeError, match=message):
        slope.jit(lambda q, a: q(a))(model, x)
    assert not model[1].running_mean.numpy().any()  # (no tracer left behind)
    evaluated = slope.jit(lambda q, a: q(a))(model.eval(), x)  # eval mode reads the statistics: nothing to update
    np.testing.assert_allclose(evaluated.numpy(), theirs.eval()(torch.from_numpy(x.numpy())).detach().numpy(),
                               rtol=1e-12, atol=1e-12)  # fmt: skip
    model.train(), theirs.train()
    model(x), theirs(torch.from_numpy(x.numpy()))  # eagerly: PyTorch's in-place update, as before
    assert_state_matches_pytorch(model, theirs)


class NestedBatchNorm(nn.Module):
    """A BatchNorm run by its parent's forward pass inside a transformation of its own (`how`), or directly."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.bn, self.how = nn.BatchNorm1d(4, dtype=slope.float64), how

    def forward(self, x: slope.Tensor) -> slope.Tensor:
        if self.how == "grad":  # (a gradient penalty's second forward pass)
            return x + 0.0 * slope.grad(lambda bn: bn(x).sum())(self.bn).weight
        if self.how == "vmap":
            return slope.vmap(lambda bn, a: bn(a), in_axes=(None, 0))(self.bn, x[None])[0]
        if self.how == "jit":  # (compiled when called eagerly: its own copy of the layer; traced through under jit)
            return slope.jit(lambda bn, a: bn(a))(self.bn, x)
        if self.how == "apply in grad":
            return x + 0.0 * slope.grad(lambda bn: nn.apply(bn, x)[0].sum())(self.bn).weight
        if self.how == "eval in grad":
            # a copy in eval mode reads the running statistics: nothing to update
            evaluated = slope.tree.unflatten(*reversed(slope.tree.flatten(self.bn))).eval()
            return self.bn(x) + 0.0 * slope.grad(lambda bn: bn(x).sum())(evaluated).weight
        return self.bn(x)


@pytest.mark.parametrize("how", ["grad", "vmap", "jit", "apply in grad", "eval in grad", "direct"])
@pytest.mark.parametrize("jitted", [False, True])
def test_buffer_updates_in_a_transformation_nested_in_nn_apply_are_errors(how, jitted):
    """nn.apply's block is open around the forward pass, and a BatchNorm run inside a grad/vmap (or an eagerly
    compiled jit) within it updated that transformation's copy of the layer: the running statistics stayed at zeros
    without a word. Now an error; the direct and eval-mode passes keep PyTorch's statistics (float64, 1e-12)."""
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).standard_normal((8, 4)) * 2.0 + 1.0
    model = NestedBatchNorm(how)
    applied = slope.jit(lambda m, a: nn.apply(m, a)) if jitted else nn.apply
    lost = how in ("grad", "vmap", "apply in grad") or (how == "jit" and not jitted)
    if lost:
        which = r"slope\.nn\.apply: the model's buffers" if how == "apply in grad" else r"slope\.nn\.BatchNorm1d: .*"
        with pytest.raises(RuntimeError, match=which + r".*nested within a `buffer_updates\(\)` block.*would be lost"):
            applied(model, slope.tensor(x))
        return
    _, updated = applied(model, slope.tensor(x))
    theirs = torch.nn.BatchNorm1d(4).double()
    theirs(torch.from_numpy(x))
    np.testing.assert_allclose(updated.bn.running_mean.numpy(), theirs.running_mean.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(updated.bn.running_var.numpy(), theirs.running_var.numpy(), rtol=1e-12, atol=1e-12)
    assert not model.bn.running_mean.numpy().any()


def test_nested_nn_apply_outside_any_block_returns_its_model():
    """Without an enclosing block (nn.value_and_grad inside nn.value_and_grad, as meta-learning does) the model an
    inner nn.apply returns is the caller's to return: allowed, with PyTorch's statistics (float64, 1e-12)."""
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(1).standard_normal((8, 4)) * 2.0 + 1.0
    model = nn.BatchNorm1d(4, dtype=slope.float64)

    def inner(m):
        out, m = nn.apply(m, slope.tensor(x))
        return (out**2).sum(), m

    def outer(m):
        (loss, m), _ = nn.value_and_grad(inner, has_aux=True)(m)
        return loss, m

    (_, updated), _ = nn.value_and_grad(outer, has_aux=True)(model)
    theirs = torch.nn.BatchNorm1d(4).double()
    theirs(torch.from_numpy(x))
    np.testing.assert_allclose(updated.running_mean.numpy(), theirs.running_mean.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("jitted", [True, False])
def test_nn_apply_steps_keep_pytorchs_running_statistics(jitted):
    """The documented pattern: nn.apply in the loss, the updated model returned through nn.value_and_grad's aux."""
    torch = pytest.importorskip("torch")
    model, theirs = batch_norm_models(torch)
    optimizer, batches = nn.SGD(0.1), batch_norm_batches()

    def loss_fn(model, x, y):
        logits, model = nn.apply(model, x)
        return nn.cross_entropy(logits, y), model

    def step(model, state, x, y):
        (loss, model), grads = nn.value_and_grad(loss_fn, has_aux=True)(model, x, y)
        return (*optimizer.step(model, grads, state), loss)

    step = slope.jit(step) if jitted else step
    state = optimizer.init(model)
    for x, y in batches:
        model, state, _ = step(model, state, slope.tensor(x), slope.tensor(y))
    torch_sgd_steps(torch, theirs, batches)
    assert_state_matches_pytorch(model, theirs)


def test_value_and_grad_matches_slope_and_zeroes_frozen_parameters():
    model = nn.Linear(3, 2, key=slope.random.key(2))
    x = slope.randn(5, 3)

    def loss_fn(m):
        return (m(x) ** 2).sum()

    loss, grads = nn.value_and_grad(loss_fn)(model)
    reference_loss, reference = slope.value_and_grad(loss_fn)(model)
    assert_close(loss, reference_loss.numpy())
    assert_close(grads.weight, reference.weight.numpy())
    model.freeze("bias")
    _, grads = nn.value_and_grad(loss_fn)(model)
    assert float(abs(grads.bias).sum()) == 0.0
    assert_close(grads.weight, reference.weight.numpy())


def test_nn_value_and_grad_aux_is_differentiable_by_an_outer_transformation():
    """nn.value_and_grad/nn.grad applied stop_gradient to aux, which stopped every level: the derivative of the aux
    y * 3 under an outer slope.grad or jvp was 0.0. Now 3.0, as slope.value_and_grad(has_aux=True) and JAX give."""
    x = slope.tensor(2.0, dtype=slope.float64)

    def inner(y):
        return y**2, y * 3

    def through_value_and_grad(a):
        return nn.value_and_grad(inner, has_aux=True)(a)[0][1]

    def through_grad(a):
        return nn.grad(inner, has_aux=True)(a)[1]

    for outer in (through_value_and_grad, through_grad):
        assert slope.grad(outer)(x).item() == 3.0
        assert slope.jit(slope.grad(outer))(x).item() == 3.0
        assert slope.jvp(outer, (x,), (slope.ones_like(x),))[1].item() == 3.0
    (_, aux), grads = nn.value_and_grad(inner, has_aux=True)(x)  # the inner level still ignores aux
    assert (aux.item(), grads.item()) == (6.0, 4.0)


def _torch_meta_gradient(torch, theirs: object, loss, inner_names: list, steps: int, lr: float, data: list) -> dict:
    """torch.func's meta-gradient: `steps` SGD steps on the parameters `inner_names` (create_graph), then the query
    loss, differentiated with respect to every parameter."""
    xs, ys, xq, yq = (torch.from_numpy(a) for a in data)

    def task_loss(params: dict, x, y):
        return loss(torch.func.functional_call(theirs, params, (x,)), y)

    def adapted_loss(adapted: dict, params: dict):
        return task_loss({**params, **adapted}, xs, ys)

    def query_loss(params: dict):
        for _ in range(steps):
            adapted = {k: v for k, v in params.items() if k in inner_names}
            grads = torch.func.grad(adapted_loss)(adapted, params)
            params = {**params, **{k: adapted[k] - lr * grads[k] for k in adapted}}
        return task_loss(params, xq, yq)

    return torch.func.grad(query_loss)({k: v.detach() for k, v in theirs.named_parameters()})


def _meta_data(shapes: list) -> list:
    generator = np.random.default_rng(7)
    return [generator.standard_normal(shape) for shape in shapes]


def _assert_meta_gradient(ours: nn.Module, theirs: dict) -> None:
    """Every parameter's meta-gradient as torch.func's: float64, to 1e-10."""
    for name, value in ours.named_parameters():
        np.testing.assert_allclose(value.numpy(), theirs[name].numpy(), rtol=1e-10, atol=1e-10, err_msg=name)


@pytest.mark.parametrize("backend, jitted", [("onnxruntime", False), ("onnxruntime", True), ("numpy", False)])
def test_maml_with_batch_norm_through_nn_value_and_grad_aux_matches_torch_func(backend, jitted):
    """MAML as the README's pattern writes the inner step: `(loss, model), grads = nn.value_and_grad(loss_fn,
    has_aux=True)(model, ...)` with a training-mode BatchNorm. The model that came back as aux had stop_gradient
    parameters, so the meta-gradient (second order, through 2 inner SGD steps) was off by up to 3.5 against
    torch.func; now equal to 1e-10 (float64)."""
    torch = pytest.importorskip("torch")
    if backend not in slope.plugins.backends:
        pytest.skip(f"the {backend} backend is not installed")
    slope.manual_seed(5)
    ours = nn.Sequential(nn.Linear(4, 6, dtype=slope.float64), nn.BatchNorm1d(6, dtype=slope.float64), nn.Tanh(),
                         nn.Linear(6, 1, dtype=slope.float64))  # fmt: skip
    theirs = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.BatchNorm1d(6), torch.nn.Tanh(), torch.nn.Linear(6, 1))
    theirs.double().load_state_dict({k: torch.from_numpy(np.array(v.numpy())) for k, v in ours.state_dict().items()})
    torch.func.replace_all_batch_norm_modules_(theirs)  # (batch statistics, no running statistics to update in place)
    data, lr, optimizer = _meta_data([(8, 4), (8, 1), (5, 4), (5, 1)]), 0.3, nn.SGD(0.3)

    def inner_loss(model, x, y):
        out, model = nn.apply(model, x)
        return nn.mse(out, y), model

    def query_loss(model, xs, ys, xq, yq):
        state = optimizer.init(model)
        for _ in range(2):
            (_, model), grads = nn.value_and_grad(inner_loss, has_aux=True)(model, xs, ys)
            model, state = optimizer.step(model, grads, state)
        return nn.mse(nn.apply(model, xq)[0], yq)

    meta = slope.grad(query_loss)
    with slope.use_backend(backend):
        got = (slope.jit(meta) if jitted else meta)(ours, *(slope.tensor(a) for a in data))
    names = [name for name, _ in ours.named_parameters()]
    expected = _torch_meta_gradient(torch, theirs, torch.nn.functional.mse_loss, names, 2, lr, data)
    _assert_meta_gradient(got, expected)


@pytest.mark.parametrize("backend, jitted", [("onnxruntime", False), ("onnxruntime", True), ("numpy", False)])
def test_anil_with_a_frozen_backbone_through_nn_grad_matches_torch_func(backend, jitted):
    """ANIL: the backbone frozen (`freeze("0")`) for the inner loop's nn.grad, the outer slope.grad training every
    parameter. nn.grad held the frozen parameters constant with stop_gradient, which also hid them from the outer
    gradient: the backbone's second-order terms (through the adapted head) were lost, off by 0.1-0.3 against
    torch.func. Now equal to 1e-10 (float64); the inner gradients of the frozen leaves stay zeros."""
    torch = pytest.importorskip("torch")
    if backend not in slope.plugins.backends:
        pytest.skip(f"the {backend} backend is not installed")
    slope.manual_seed(6)
    ours = nn.Sequential(nn.Linear(3, 4, dtype=slope.float64), nn.Tanh(), nn.Linear(4, 1, dtype=slope.float64))
    theirs = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)).double()
    theirs.load_state_dict({k: torch.from_numpy(np.array(v.numpy())) for k, v in ours.state_dict().items()})
    data, lr, optimizer = _meta_data([(6, 3), (6, 1), (5, 3), (5, 1)]), 0.5, nn.SGD(0.5)

    def loss(model, x, y):
        return nn.mse(model(x), y)

    def query_loss(model, xs, ys, xq, yq):
        model = model.freeze("0")
        state = optimizer.init(model)
        grads = nn.grad(loss)(model, xs, ys)
        model, state = optimizer.step(model, grads, state)
        return loss(model, xq, yq)

    meta = slope.grad(query_loss)
    tensors = [slope.tensor(a) for a in data]
    with slope.use_backend(backend):
        got = (slope.jit(meta) if jitted else meta)(ours, *tensors)
        inner = nn.grad(loss)(ours.freeze("0"), *tensors[:2])
    expected = _torch_meta_gradient(torch, theirs, torch.nn.functional.mse_loss, ["2.weight", "2.bias"], 1, lr, data)
    _assert_meta_gradient(got, expected)
    assert not inner[0].weight.numpy().any() and not inner[0].bias.numpy().any() and inner[2].weight.numpy().any()


@pytest.mark.parametrize("jitted", [False, True])
def test_load_state_dict_of_traced_values_names_itself_and_the_pytree_way(jitted):
    """Module.load_state_dict of traced values inside grad/jit failed in Tensor.numpy() ("needs a concrete value"),
    naming neither; now an error that names it and the pytree forms, which work (exact values)."""
    model, x = nn.Linear(2, 1, key=slope.random.key(1)), slope.ones((3, 2))

    def loaded(m):
        fresh = nn.Linear(2, 1)
        fresh.load_state_dict({k: v * 2.0 for k, v in m.state_dict().items()})
        return fresh(x).sum()

    transform = (lambda f: slope.jit(slope.grad(f))) if jitted else slope.grad
    with pytest.raises(slope.errors.SlopeTraceError,
                       match=r"^Module\.load_state_dict: the value of 'weight' is traced .*slope\.tree\.map"):  # fmt: skip
        transform(loaded)(model)
    by_tree = transform(lambda m: slope.tree.map(lambda t: t * 2.0, m)(x).sum())(model)
    assert by_tree.weight.numpy().tolist() == [[6.0, 6.0]] and by_tree.bias.numpy().tolist() == [6.0]
    assert transform(lambda m: slope.tree.map(lambda t: t, m).eval()(x).sum())(model).weight.numpy().tolist() == [
        [3.0, 3.0]
    ]


def test_repr_lists_children():
    text = repr(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU()))
    assert "(0): Conv2d(1, 4, kernel_size=(3, 3)" in text and "(1): ReLU()" in text


def test_module_error_messages():
    with pytest.raises(TypeError, match="not a Module"):
        nn.Sequential(nn.ReLU(), 3)
    with pytest.raises(ValueError, match="expected input"):
        nn.BatchNorm2d(3)(slope.ones(2, 4, 2, 2))
    with pytest.raises(ValueError, match="divisible by groups"):
        nn.Conv2d(3, 4, 3, groups=2)


def test_vmap_returns_modules_as_a_loop_would():
    """Per-example gradients of a model: vmap rebuilt its output tree with placeholder objects, which a Module takes
    for static attributes (a ValueError: "Too few leaves for PyTreeSpec")."""
    model, x = nn.Linear(3, 2), slope.tensor(np.random.default_rng(0).standard_normal((4, 3)), dtype=slope.float32)
    per_example = slope.grad(lambda m, a: m(a).sum())
    for out_axes in (0, 1):
        grads = slope.vmap(per_example, in_axes=(None, 0), out_axes=out_axes)(model, x)
        loop = [per_example(model, x[i]) for i in range(4)]
        assert isinstance(grads, nn.Linear)
        np.testing.assert_array_equal(grads.weight.numpy(), np.stack([g.weight.numpy() for g in loop], out_axes))
        np.testing.assert_array_equal(grads.bias.numpy(), np.stack([g.bias.numpy() for g in loop], out_axes))


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("track", [True, False])
def test_batch_norm_state_dicts_load_both_ways_with_pytorch(momentum, track):
    # PyTorch keeps num_batches_tracked for every momentum; Slope only where it reads it (momentum=None), and a
    # strict load of PyTorch's state dict was a KeyError (found by a docs review)
    torch = pytest.importorskip("torch")
    theirs = torch.nn.Sequential(
        torch.nn.Conv2d(1, 3, 1), torch.nn.BatchNorm2d(3, momentum=momentum, track_running_stats=track)
    )
    with torch.no_grad():
        theirs[1].weight.uniform_(0.5, 1.5)
        if track:
            theirs[1].running_mean.uniform_(-1.0, 1.0)
            theirs[1].num_batches_tracked.fill_(7)
    ours = nn.Sequential(nn.Conv2d(1, 3, 1), nn.BatchNorm2d(3, momentum=momentum, track_running_stats=track))
    ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    np.testing.assert_array_equal(ours[1].weight.numpy(), theirs[1].weight.detach().numpy())
    if track:
        np.testing.assert_array_equal(ours[1].running_mean.numpy(), theirs[1].running_mean.numpy())
    if track and momentum is None:
        assert int(ours[1].num_batches_tracked) == 7
    back = torch.nn.Sequential(
        torch.nn.Conv2d(1, 3, 1), torch.nn.BatchNorm2d(3, momentum=momentum, track_running_stats=track)
    )
    back.load_state_dict({k: torch.tensor(np.asarray(v)) for k, v in ours.state_dict().items()})  # (strict)
    np.testing.assert_array_equal(back[1].weight.detach().numpy(), ours[1].weight.numpy())


def test_arguments_pytorch_refuses_are_refused():
    # found by a review helper: each computed something (NaN, or ignored the argument) where PyTorch raises
    x = slope.ones((4, 3))
    with pytest.raises(ValueError, match="eps must be positive during training, but got 0.0"):
        nn.BatchNorm1d(3, eps=0.0)(x)
    with pytest.raises(ValueError, match="eps must be non-negative, but got -2.0"):
        nn.BatchNorm1d(3, eps=-2.0).eval()(x)
    np.testing.assert_array_equal(nn.BatchNorm1d(3, eps=0.0).eval()(x).numpy(), np.ones((4, 3)))  # (as PyTorch)
    logits, probabilities = slope.ones((2, 3)), slope.full((2, 3), 1 / 3)
    with pytest.raises(ValueError, match="ignore_index is not supported for probability"):
        nn.cross_entropy(logits, probabilities, ignore_index=0)
    assert np.isfinite(float(nn.cross_entropy(logits, probabilities)))
    with pytest.raises(ValueError, match="negative_slope True not a valid number"):
        nn.init.calculate_gain("leaky_relu", True)
    with pytest.raises(ValueError, match="expected std >= 0"):
        nn.init.normal((3,), 0.0, -1.0, key=slope.random.key(0))


def test_ceil_mode_pooling_keeps_a_partial_window_larger_than_the_input():
    # PyTorch's ceil_mode makes one partial window where the kernel is larger than the padded input; Slope refused it
    # as "kernel larger than the input" (found by a review helper); without ceil_mode both refuse
    torch = pytest.importorskip("torch")
    tf = torch.nn.functional
    x = np.array([[[4.0, 6.0, 8.0]]], np.float32)
    cases = [(lambda t: nn.functional.avg_pool(t, 4, 2, ceil_mode=True), lambda t: tf.avg_pool1d(t, 4, 2, ceil_mode=True)),
             (lambda t: slope.max_pool(t, 4, 2, ceil_mode=True), lambda t: tf.max_pool1d(t, 4, 2, ceil_mode=True)),
             (lambda t: nn.MaxPool1d(5, 3, padding=1, ceil_mode=True)(t), lambda t: tf.max_pool1d(t, 5, 3, 1, ceil_mode=True))]  # fmt: skip
    for ours, theirs in cases:
        np.testing.assert_array_equal(ours(slope.tensor(x)).numpy(), theirs(torch.tensor(x)).numpy())
    with pytest.raises(slope.ShapeError, match="larger than the input"):
        slope.max_pool(slope.tensor(x), 4, 2)


def test_apply_and_rng_take_only_random_keys_and_never_the_forwards_own_key():
    """nn.apply's key= is the random key: MultiHeadAttention's forward also has a `key` (the attention keys), and
    nn.apply(mha, q, key=kv, value=kv) ran self-attention silently; a float tensor was taken as a random key."""
    layer = nn.MultiHeadAttention(8, 2, key=slope.random.key(0))
    generator = np.random.default_rng(1)
    q, kv = (slope.tensor(generator.standard_normal((2, 5, 8)).astype(np.float32)) for _ in range(2))
    with pytest.raises(TypeError, match=r"nn.apply: MultiHeadAttention.forward has its own `key` parameter.*"
                       r"nn.apply\(model, query, <its key>, \.\.\., key=random_key\)"):  # fmt: skip
        nn.apply(layer, q, key=kv, value=kv)
    with pytest.raises(TypeError, match="forward has its own `key`"):  # (a valid random key too: it is ambiguous)
        nn.apply(layer, q, key=slope.random.key(1))
    out, _ = nn.apply(layer, q, kv, kv, key=slope.random.key(1))  # both: the attention keys positionally
    np.testing.assert_array_equal(out.numpy(), layer(q, kv, kv).numpy())
    torch_spelled = nn.MultiheadAttention(8, 2, batch_first=True, key=slope.random.key(0))
    with pytest.raises(TypeError, match="MultiheadAttention.forward has its own `key`"):
        nn.apply(torch_spelled, q, key=kv, value=kv)
    # Dropout's forward key is a random key itself: no mix-up
    dropped, _ = nn.apply(nn.Dropout(0.5), slope.ones(100), key=slope.random.key(2))
    assert 0 < int((dropped.numpy() == 0).sum()) < 100
    model = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5))
    for bad, described in ((slope.randn(2, 5, 8), r"float32 tensor of shape \(2, 5, 8\)"),
                           (slope.tensor([1, 2], dtype=slope.int32), r"int32 tensor of shape \(2,\)"),
                           (3, "3")):  # fmt: skip
        with pytest.raises(TypeError, match=f"slope.nn.apply: key must be a random key.* got {described}$"):
            nn.apply(model, slope.ones((1, 3)), key=bad)
        with pytest.raises(TypeError, match=f"slope.nn.rng: key must be a random key.* got {described}$"):
            nn.rng(bad)
    traced = slope.jit(lambda m, x, k: nn.apply(m, x, key=k)[0])(model, slope.ones((1, 3)), slope.random.key(3))
    assert traced.shape == (1, 3)


def _distinct_rows(out: slope.Tensor) -> int:
    rows = out.numpy().reshape(out.shape[0], -1)
    return len({row.tobytes() for row in rows})


def in_block_with(a: slope.Tensor, k: slope.Tensor) -> slope.Tensor:
    """A Dropout inside an nn.rng block opened with the key `k`."""
    with nn.rng(k):
        return nn.Dropout(0.5)(a)


def test_vmap_refuses_one_rng_key_for_every_example_and_keeps_per_example_keys():
    """Dropout under vmap with the key of an nn.rng block (or nn.apply's key=) made outside the vmap gave every example
    the same mask, silently, and the no-key error suggested exactly that (`with nn.rng(key):`). Now such a key is
    refused inside the innermost vmap; keys batched by it (split, fold_in of a batched index, under jit, grad and
    nested vmaps) give each example the mask its own key gives eagerly, exactly; a key given to the layer itself is
    taken as given (JAX's semantics): one mask for every example."""
    layer, model = nn.Dropout(0.5), nn.Sequential(nn.Linear(8, 8, key=slope.random.key(1)), nn.Dropout(0.5))
    x, key = slope.ones(4, 8), slope.random.key(0)
    keys = slope.random.split(key, 4)
    shared = r"slope\.nn\.Dropout: inside vmap the random key of the `nn\.rng` block .* same mask.*slope\.random\.split"

    def in_block(a: slope.Tensor) -> slope.Tensor:
        with nn.rng(key):
            return layer(a)

    def in_block_around(xs: slope.Tensor) -> slope.Tensor:
        with nn.rng(key):
            return slope.vmap(layer)(xs)

    def loss(m: nn.Module, a: slope.Tensor, k: slope.Tensor) -> slope.Tensor:  # (the key derived inside the grad)
        return (nn.apply(m, a, key=slope.random.fold_in(k, 7))[0] ** 2).sum()

    refused = {
        "nn.rng around vmap": lambda: in_block_around(x),
        "nn.rng inside vmap": lambda: slope.vmap(in_block)(x),
        "nn.apply": lambda: slope.vmap(lambda a: nn.apply(layer, a, key=key)[0])(x),
        "in_axes None": lambda: slope.vmap(lambda a, k: nn.apply(layer, a, key=k)[0], in_axes=(0, None))(x, key),
        "jit of vmap": lambda: slope.jit(lambda xs, k: slope.vmap(lambda a: nn.apply(layer, a, key=k)[0])(xs))(x, key),
        "grad in vmap": lambda: slope.vmap(lambda a: nn.grad(loss)(model, a, key)[0].weight)(x),
        "outer vmap's key": lambda: slope.vmap(lambda xs, k: slope.vmap(lambda a: nn.apply(layer, a, key=k)[0])(xs))(
            x.reshape(2, 2, 8), keys[:2]
        ),
    }

    for name, call in refused.items():
        try:
            call()
        except RuntimeError as error:
            assert re.search(shared, str(error)), f"{name}: {error}"
        else:
            pytest.fail(f"{name}: one key for every example was not refused")
    with pytest.raises(RuntimeError, match=r"needs a random key inside vmap\. For a mask per example") as caught:
        slope.vmap(layer)(x)
    assert "with nn.rng(key)" not in str(caught.value)  # (it suggested the block around the vmap: identical masks)

    per_example = slope.vmap(lambda a, k: nn.apply(layer, a, key=k)[0])
    loop = np.stack([nn.apply(layer, x[i], key=keys[i])[0].numpy() for i in range(4)])
    assert _distinct_rows(slope.tensor(loop)) == 4
    np.testing.assert_array_equal(per_example(x, keys).numpy(), loop)
    np.testing.assert_array_equal(slope.jit(per_example)(x, keys).numpy(), loop)
    np.testing.assert_array_equal(slope.vmap(in_block_with)(x, keys).numpy(), loop)
    folded = slope.vmap(lambda a, i: nn.apply(layer, a, key=slope.random.fold_in(key, i))[0])(x, slope.arange(4))
    np.testing.assert_array_equal(folded.numpy(), [nn.apply(layer, x[i], key=slope.random.fold_in(key, i))[0].numpy()
                                                   for i in range(4)])  # fmt: skip
    ensemble = slope.vmap(lambda xs, k: per_example(xs, slope.random.split(k, 2)))(x.reshape(2, 2, 8), keys[:2])
    np.testing.assert_array_equal(ensemble.numpy().reshape(4, 8), [
        nn.apply(layer, x[i], key=slope.random.split(keys[i // 2], 2)[i % 2])[0].numpy() for i in range(4)
    ])  # fmt: skip
    grads = slope.vmap(lambda a, k: nn.grad(loss)(model, a, k)[0].weight)(x, keys)
    for i in range(4):
        np.testing.assert_array_equal(grads.numpy()[i], nn.grad(loss)(model, x[i], keys[i])[0].weight.numpy())
    assert _distinct_rows(grads) == 4
    # a key given to the layer (or function) itself: one mask for every example, on purpose
    for explicit in (lambda a: layer(a, key=key), lambda a: nn.dropout(a, key=key)):
        out = slope.vmap(explicit)(x)
        np.testing.assert_array_equal(out.numpy(), np.broadcast_to(nn.dropout(x[0], key=key).numpy(), (4, 8)))


def test_batch_norm_under_vmap_keeps_each_examples_statistics_and_refuses_them_unbatched():
    """nn.apply under vmap normalizes each example with its own statistics (PyTorch's BatchNorm on that example alone,
    float64, 1e-12) and returns them stacked (B, C); calling that model outside vmap failed in an unrelated reshape
    ("cannot reshape a tensor of shape (4, 3) ... into shape (1, 3)"). Now a ShapeError names the layer and its
    stacked statistics; under vmap again, or one example's copy, it runs."""
    torch = pytest.importorskip("torch")
    xs = np.random.default_rng(2).standard_normal((4, 5, 3)) * 2.0 + 1.0
    layer = nn.BatchNorm1d(3, dtype=slope.float64)
    out, stacked = slope.vmap(lambda a: nn.apply(layer, a))(slope.tensor(xs))
    assert stacked.running_mean.shape == (4, 3)
    for i in range(4):
        theirs = torch.nn.BatchNorm1d(3).double()
        expected = theirs(torch.from_numpy(xs[i])).detach().numpy()
        np.testing.assert_allclose(out.numpy()[i], expected, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(stacked.running_var.numpy()[i], theirs.running_var.numpy(), rtol=1e-12, atol=1e-12)
    for mode in ("eval", "train"):
        model = stacked.eval() if mode == "eval" else stacked.train()
        with pytest.raises(slope.ShapeError, match=r"slope\.nn\.BatchNorm1d: expected running statistics and "
                           r"parameters of shape \(3,\), got running_mean \(4, 3\), running_var \(4, 3\).*under "
                           r"slope\.vmap"):  # fmt: skip
            nn.apply(model, slope.ones(2, 3, dtype=slope.float64))
    again, restacked = slope.vmap(lambda m, a: nn.apply(m, a))(stacked.train(), slope.tensor(xs))
    assert again.shape == (4, 5, 3) and restacked.running_mean.shape == (4, 3)
    first = slope.tree.map(lambda leaf: leaf[0], stacked).eval()
    np.testing.assert_array_equal(first(slope.ones(2, 3, dtype=slope.float64)).shape, (2, 3))


def squares_dropped(a: slope.Tensor) -> slope.Tensor:
    return nn.dropout(a * a, p=0.5, training=True)


def jacobian_in_block(transform: Callable, a: slope.Tensor, k: slope.Tensor) -> slope.Tensor:
    """transform(squares_dropped)(a) (or hessian's of its sum) inside an nn.rng block opened with the key `k`."""
    with nn.rng(k):
        if transform is slope.hessian:
            return slope.hessian(lambda b: squares_dropped(b).sum())(a)
        return transform(squares_dropped)(a)


def test_jacfwd_and_hessian_of_dropout_in_an_rng_block_are_not_taken_for_a_vmap_over_examples():
    """jacfwd (and hessian = jacfwd of jacrev) vmap over basis tangents, and next_key took that vmap for one over
    examples: with one nn.rng key, jacfwd and hessian of a dropout were refused (jacrev was not), and so was the
    per-example `vmap(jacfwd(...))` with a key per example. Now a vmap that does not batch the dropped values needs no
    per-example key: the Jacobians are the exact ones (mask * 2x on the diagonal, the mask of the eager call; float32,
    exact), eager and under jit, and a vmap over examples still refuses one key for all of them."""
    x, key = slope.arange(1.0, 5.0), slope.random.key(0)
    with nn.rng(key):
        scale = squares_dropped(x).numpy() / x.numpy() ** 2  # (0 or 2: the mask of the eager call)
    assert set(scale.tolist()) == {0.0, 2.0}
    expected = {slope.jacrev: np.diag(scale * 2 * x.numpy()), slope.jacfwd: np.diag(scale * 2 * x.numpy()),
                slope.hessian: np.diag(scale * 2)}  # fmt: skip
    for transform, jacobian in expected.items():
        np.testing.assert_array_equal(jacobian_in_block(transform, x, key).numpy(), jacobian)
        jitted = slope.jit(lambda a, k, transform=transform: jacobian_in_block(transform, a, k))
        np.testing.assert_array_equal(jitted(x, key).numpy(), jacobian)

    # per example (the form of the README): a key per example, mapped with the inputs; float32 tolerance between modes
    model = nn.Sequential(nn.Linear(3, 16, key=slope.random.key(1)), nn.Dropout(0.5))
    xs, keys = slope.random.normal(slope.random.key(2), (5, 3)), slope.random.split(key, 5)

    def loss(m: nn.Module, a: slope.Tensor, k: slope.Tensor) -> slope.Tensor:
        return nn.apply(m, a, key=k)[0].sum()

    def per_example(transform: Callable) -> Callable:
        return slope.vmap(lambda m, a, k: transform(lambda b: loss(m, b, k))(a), in_axes=(None, 0, 0))

    loop = np.stack([slope.jacrev(lambda b, i=i: loss(model, b, keys[i]))(xs[i]).numpy() for i in range(5)])
    assert _distinct_rows(slope.tensor(loop)) == 5
    for transform in (slope.jacfwd, slope.jacrev):
        assert_close(per_example(transform)(model, xs, keys), loop)
        assert_close(slope.jit(per_example(transform))(model, xs, keys), loop)
    assert_close(per_example(slope.hessian)(model, xs, keys), np.zeros((5, 3, 3)))  # (linear in x)
    one_key = slope.vmap(lambda m, a, k: slope.jacfwd(lambda b: loss(m, b, k))(a), in_axes=(None, 0, None))
    with pytest.raises(RuntimeError, match=r"inside vmap the random key of the `nn\.rng` block .* same for every"):
        one_key(model, xs, key)  # (the vmap over examples around jacfwd's own: one mask for all of them, refused)


def test_sequential_append_refuses_what_is_not_a_module():
    # as ModuleList.append and PyTorch: an int was appended and failed only when the model was called
    model = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(TypeError, match="Sequential: item 1 is a int, not a Module"):
        model.append(5)
    assert len(model) == 1 and len(model.append(nn.ReLU())) == 2


def test_the_shared_entries_of_static_attributes_are_bounded():
    # every value of a module's static int attribute (a step count) added an entry for ever: 20,000 values, 20,000
    from slope_nn import module as module_module

    model = nn.Linear(2, 2, key=slope.random.key(0))
    first = slope.tree.structure(model)
    for step in range(5000):
        model.step = step
        slope.tree.structure(model)
    assert len(module_module._SHARED_ENTRIES) <= 4096
    del model.step
    assert slope.tree.structure(model) == first  # (a structure after a clear equals one from before)


# ----------------------------------------------------------------------------------------------- container attributes


class ScaledBlocks(nn.Module):
    """(layer, residual scale) pairs and a dict with a temperature: the floats, the string and the array are
    configuration, static as they are when they are attributes of their own."""

    def __init__(self, scales: tuple = (0.5, 0.25)) -> None:
        super().__init__()
        self.blocks = [(nn.Linear(2, 2, key=slope.random.key(i)), scale) for i, scale in enumerate(scales)]
        self.head = {"proj": nn.Linear(2, 2, key=slope.random.key(7)), "temperature": 2.0, "act": "tanh"}
        self.extra = (slope.tensor([1.0, -1.0]), np.array([3.0, 4.0], np.float32))

    def forward(self, x: slope.Tensor) -> slope.Tensor:
        for layer, scale in self.blocks:
            x = x + scale * layer(x)
        x = self.head["proj"](x) / self.head["temperature"]
        x = x.tanh() if self.head["act"] == "tanh" else x
        return x * self.extra[0] * slope.tensor(self.extra[1])


def scaled_blocks_step(model: nn.Module, x: slope.Tensor, y: slope.Tensor, opt: nn.Optimizer, state: object) -> tuple:
    grads = nn.grad(lambda m: ((m(x) - y) ** 2).mean())(model)
    return opt.step(model, grads, state)


def test_non_tensor_items_of_container_attributes_are_static_not_trained_leaves():
    # the 0.5 of [(Linear, 0.5)] was a leaf: traced under jit as a 0-d tensor, trained by SGD (0.5 -> 0.4266), a
    # state-less leaf for Adam, and a str there crashed nn.grad; eagerly it was left alone
    model = ScaledBlocks()
    names = [name for name, _, _ in model.named_leaves()]
    assert names == ["blocks.0.0.weight", "blocks.0.0.bias", "blocks.1.0.weight", "blocks.1.0.bias",
                     "head.proj.weight", "head.proj.bias", "extra.0"]  # fmt: skip
    assert len(slope.tree.leaves(model)) == 7 and all(isinstance(t, slope.Tensor) for t in slope.tree.leaves(model))
    x, y = slope.tensor([[1.0, 2.0]]), slope.tensor([[0.0, 1.0]])
    for opt in (nn.SGD(0.1), nn.Adam(0.1)):
        eager, eager_state = model, opt.init(model)
        jitted, jit_state = model, opt.init(model)
        step = slope.jit(functools.partial(scaled_blocks_step, opt=opt))
        for _ in range(2):
            eager, eager_state = scaled_blocks_step(eager, x, y, opt, eager_state)
            jitted, jit_state = step(jitted, x, y, state=jit_state)
        for ours in (eager, jitted):
            assert [scale for _, scale in ours.blocks] == [0.5, 0.25]
            assert all(type(scale) is float for _, scale in ours.blocks)
            assert ours.head["temperature"] == 2.0 and type(ours.head["temperature"]) is float
            assert ours.head["act"] == "tanh" and isinstance(ours.extra[1], np.ndarray)
        for a, b in zip(eager.state_dict().values(), jitted.state_dict().values()):
            assert_close(b, a.numpy())
        assert not np.array_equal(eager.blocks[0][0].weight.numpy(), model.blocks[0][0].weight.numpy())


def test_a_changed_static_item_of_a_container_compiles_again():
    run, calls = counting_jit()
    x = slope.tensor([[1.0, 2.0]])
    first = ScaledBlocks()
    assert_close(run(first, x), first(x).numpy())
    assert_close(run(ScaledBlocks(), x), first(x).numpy())  # same configuration: one program
    assert len(calls) == 1
    other = ScaledBlocks((0.5, 0.75))
    assert_close(run(other, x), other(x).numpy())
    assert len(calls) == 2
    other.head["act"] = "none"
    assert_close(run(other, x), other(x).numpy())
    assert len(calls) == 3
    returned = slope.jit(lambda m: m)(other)
    assert returned.blocks[1][1] == 0.75 and type(returned.blocks[1][1]) is float and returned.head["act"] == "none"


def test_modules_in_a_namedtuple_keep_their_kinds_and_names():
    # a namedtuple attribute was flattened whole: pair.0..pair.5 all "param", the BatchNorm's running statistics
    # decayed by SGD's weight decay, freeze() inside it ignored
    pair_type = collections.namedtuple("Pair", "enc norm")

    class Paired(nn.Module):
        def __init__(self):
            super().__init__()
            self.pair = pair_type(nn.Linear(2, 2), nn.BatchNorm1d(2))

        def forward(self, x):
            return self.pair.norm(self.pair.enc(x))

    model = Paired()
    assert [(n, k) for n, _, k in model.named_leaves()] == [
        ("pair.0.weight", "param"), ("pair.0.bias", "param"), ("pair.1.weight", "param"), ("pair.1.bias", "param"),
        ("pair.1.running_mean", "buffer"), ("pair.1.running_var", "buffer")]  # fmt: skip
    assert [n for n, _ in model.named_buffers()] == ["pair.1.running_mean", "pair.1.running_var"]
    x = slope.tensor([[1.0, 2.0], [3.0, -1.0], [0.5, 0.5]])
    model.pair.enc.freeze()
    assert [n for n, _ in model.named_trainable_parameters()] == ["pair.1.weight", "pair.1.bias"]
    model.eval()
    grads = nn.grad(lambda m: (m(x) ** 2).sum())(model)
    opt = nn.SGD(0.5, weight_decay=0.1)
    stepped, _ = opt.step(model, grads, opt.init(model))
    for name in ("pair.0.weight", "pair.1.running_mean", "pair.1.running_var"):
        np.testing.assert_array_equal(stepped.state_dict()[name].numpy(), model.state_dict()[name].numpy())
    assert not np.array_equal(stepped.pair.norm.weight.numpy(), model.pair.norm.weight.numpy())


@slope.tree.register
@dataclasses.dataclass
class Affine:
    w: slope.Tensor
    b: slope.Tensor


def test_registered_dataclass_and_deque_attributes_hold_parameters():
    # they were static: no parameters, the "gradient" was the weights themselves, jit baked them in
    class Holder(nn.Module):
        def __init__(self):
            super().__init__()
            self.p = Affine(slope.ones(2), slope.zeros(2))
            self.blocks = collections.deque([nn.Linear(2, 2), nn.Linear(2, 2)])

        def forward(self, x):
            for block in self.blocks:
                x = block(x)
            return (self.p.w * x + self.p.b).sum()

    model = Holder()
    assert [n for n, _ in model.named_parameters()] == [
        "p.0", "p.1", "blocks.0.weight", "blocks.0.bias", "blocks.1.weight", "blocks.1.bias"]  # fmt: skip
    assert len(slope.tree.leaves(model)) == 6
    x = slope.tensor([1.0, 2.0])
    grads = nn.grad(lambda m: m(x))(model)
    hidden = model.blocks[1](model.blocks[0](x))
    assert_close(grads.p.w, hidden.numpy())
    np.testing.assert_array_equal(grads.p.b.numpy(), [1.0, 1.0])
    assert grads.blocks[0].weight is not model.blocks[0].weight
    run = slope.jit(lambda m, x: m(x))
    run(model, x)
    model.p.w = slope.full((2,), 3.0)  # new weights: the program's inputs, not its constants
    assert_close(run(model, x), model(x).item())
    model.eval()
    assert not any(block.training for block in model.blocks)
    first = model.blocks[0]
    model.load_state_dict({name: np.zeros(t.shape, np.float32) for name, t in model.state_dict().items()})
    assert model.blocks[0] is first and not first.weight.numpy().any() and not model.p.w.numpy().any()


def test_an_unregistered_list_subclass_of_tensors_is_flattened_as_a_list_and_rebuilt_as_itself():
    # optree does not flatten a subclass of list it was not told about: it was one opaque leaf, so slope.jit(model)
    # baked its tensors (and the model's weights) into the program and kept them after the weights changed
    class Weights(list):
        pass

    class Holder(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 2)
            self.ws = Weights([slope.ones(2)])
            self.ws.note = "kept"
            self.mixed = [Weights([slope.ones(2), nn.Linear(2, 2)]), 0.5]

        def forward(self, x):
            return (self.lin(x) * self.ws[0] * self.mixed[0][1](self.mixed[0][0] * x)).sum() * self.mixed[1]

    model, x = Holder(), slope.ones(1, 2)
    assert all(type(leaf) is slope.Tensor for leaf in slope.tree.leaves(model))
    names = [n for n, _, _ in model.named_leaves()]
    assert names == ["lin.weight", "lin.bias", "ws.0", "mixed.0.0", "mixed.0.1.weight", "mixed.0.1.bias"]
    assert len(slope.tree.leaves(model)) == len(names) and [n for n, _ in model.named_modules()][-1] == "mixed.0.1"
    copy = slope.tree.map(lambda t: t, model)
    assert type(copy.ws) is Weights and copy.ws.note == "kept" and type(copy.mixed[0]) is Weights
    run = slope.jit(model)
    assert_close(run(x), model(x).item())
    model.lin.weight = model.lin.weight * 3  # new weights: read at each call, as for a plain list
    model.ws[0] = slope.full((2,), 2.0)
    assert_close(run(x), model(x).item())
    grads = nn.grad(lambda m: m(x))(model)
    expected = slope.grad(lambda w: (model.lin(x) * w * model.mixed[0][1](model.mixed[0][0] * x)).sum() * 0.5)
    assert type(grads.ws) is Weights
    assert_close(grads.ws[0], expected(model.ws[0]).numpy())


def test_freeze_reaches_modules_in_containers_and_items_of_tensor_lists():
    # freeze("layers") on a list of modules was accepted and froze nothing; freeze("ws.0") said 'ws.0' did not exist
    # while listing it among the parameters
    class Stack(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = [nn.Linear(2, 2), nn.Linear(2, 2)]
            self.head = nn.Linear(2, 1)
            self.ws = [slope.ones(2), slope.ones(2)]

        def forward(self, x):
            for layer in self.layers:
                x = layer(x)
            return (self.head(x * self.ws[0] * self.ws[1])).sum()

    model = Stack().freeze("layers")
    assert [n for n, _ in model.named_trainable_parameters()] == ["head.weight", "head.bias", "ws.0", "ws.1"]
    x = slope.ones(1, 2)
    opt = nn.SGD(0.1)
    stepped, _ = opt.step(model, nn.grad(lambda m: m(x))(model), opt.init(model))
    np.testing.assert_array_equal(stepped.layers[0].weight.numpy(), model.layers[0].weight.numpy())
    assert not np.array_equal(stepped.head.weight.numpy(), model.head.weight.numpy())
    model.unfreeze("layers.1.weight")
    assert [n for n, _ in model.named_trainable_parameters()][:1] == ["layers.1.weight"]
    model.unfreeze().freeze("head", "ws.0")
    assert [n for n, _ in model.named_trainable_parameters()] == [
        "layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias", "ws.1"]  # fmt: skip
    with pytest.raises(KeyError, match=r"no parameters named \['ws.2'\]"):
        model.freeze("ws.2")
    with pytest.raises(TypeError, match="register_buffer: 'mods' holds modules"):
        model.register_buffer("mods", [nn.Linear(2, 2)])
    assert "mods" not in model.__dict__


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(2, 2, bias=False), nn.Linear(2, 2, bias=False)
        self.b.weight = self.a.weight


def test_load_state_dict_and_load_keep_tied_weights(tmp_path):
    # loading gave a.weight and b.weight separate tensors (PyTorch keeps the tie), and the optimizers' check of
    # shared tensors passed afterwards, so the two copies drifted apart
    model = Tied()
    model.load_state_dict({name: np.full(t.shape, 2.0, np.float32) for name, t in model.state_dict().items()})
    assert model.a.weight is model.b.weight and model.a.weight.numpy().tolist() == [[2.0, 2.0], [2.0, 2.0]]
    model.save(tmp_path / "tied.safetensors")
    loaded = Tied().load(tmp_path / "tied.safetensors")
    assert loaded.a.weight is loaded.b.weight and loaded.b.weight.numpy().tolist() == [[2.0, 2.0], [2.0, 2.0]]
    with pytest.raises(ValueError, match="one tensor"):
        nn.SGD(0.1).init(loaded)
    loaded.load_state_dict({"b.weight": np.eye(2, dtype=np.float32)}, strict=False)  # either name loads both
    assert loaded.a.weight is loaded.b.weight and loaded.a.weight.numpy().tolist() == [[1.0, 0.0], [0.0, 1.0]]
    with pytest.raises(ValueError, match="'a.weight' and 'b.weight' are one tensor in the module"):
        loaded.load_state_dict({"a.weight": np.zeros((2, 2)), "b.weight": np.ones((2, 2))})
    assert loaded.a.weight.numpy().tolist() == [[1.0, 0.0], [0.0, 1.0]]  # (nothing loaded)


def test_tied_weights_are_one_parameter_as_pytorchs():
    model = Tied()
    assert [n for n, _ in model.named_parameters()] == ["a.weight"] and model.num_parameters() == 4
    assert len(model.parameters()) == 1 and list(model.state_dict()) == ["a.weight", "b.weight"]
    torch = pytest.importorskip("torch")
    theirs = torch.nn.Module()
    theirs.a, theirs.b = torch.nn.Linear(2, 2, bias=False), torch.nn.Linear(2, 2, bias=False)
    theirs.b.weight = theirs.a.weight
    assert [n for n, _ in theirs.named_parameters()] == ["a.weight"]
    assert sum(p.numel() for p in theirs.parameters()) == 4 and list(theirs.state_dict()) == ["a.weight", "b.weight"]


@dataclasses.dataclass
class Config:
    scale: float = 1.0
    sizes: list = dataclasses.field(default_factory=lambda: [1, 2])


class Configured(nn.Module):
    """A model with a config attribute (`cfg.scale` scales its output)."""

    def __init__(self, cfg):
        super().__init__()
        self.w = slope.ones(3)
        self.cfg = cfg

    def forward(self, x):
        return (self.w * x).sum() * self.cfg.scale


def test_a_mutable_dataclass_attribute_is_keyed_by_value():
    # an unhashable dataclass was keyed by identity: after `cfg.scale = 5.0` jit ran the program of scale 1.0
    run, calls = counting_jit()
    x = slope.ones(3)
    model = Configured(Config())
    assert run(model, x).item() == 3.0
    model.cfg.scale = 5.0
    assert run(model, x).item() == 15.0 and len(calls) == 2
    assert run(Configured(Config(5.0)), x).item() == 15.0 and len(calls) == 2  # equal configurations: one program
    model.cfg.sizes.append(3)
    run(model, x)
    assert len(calls) == 3


class Holder(nn.Module):
    """Keeps a jitted submodule, as `self.fast = torch.compile(self.sub)`, and a monkeypatched bound method."""

    def __init__(self) -> None:
        super().__init__()
        self.sub = nn.Linear(3, 3)
        self.fast = slope.jit(self.sub)
        self.double = types.MethodType(lambda self, v: self.sub(v) * 2, self)

    def forward(self, x: slope.Tensor) -> slope.Tensor:
        return self.fast(x) + self.double(x)


def test_a_jitted_submodule_or_bound_method_attribute_is_bound_to_the_copy_that_jit_and_grad_run():
    # the attribute kept the original module: nn.grad gave zero gradients for sub's weights and jit(model) kept the
    # weights of its first trace
    model, x = Holder(), slope.ones(1, 3)
    grads = nn.grad(lambda m: m(x).sum())(model)
    np.testing.assert_array_equal(grads.sub.weight.numpy(), np.full((3, 3), 3.0))  # d(3 * sub(x)).sum() / dW
    run, calls = counting_jit()
    run(model, x)
    model.sub.weight = model.sub.weight * 0 + 5.0
    assert_close(run(model, x), (model.sub(x) * 3).numpy())
    optimizer = nn.optim.SGD(lr=1.0)
    stepped, _ = optimizer.step(model, nn.grad(lambda m: m(x).sum())(model), optimizer.init(model))
    assert stepped.fast.owner is stepped.sub and stepped.double.__self__ is stepped and model.fast.owner is model.sub
    assert stepped.fast.cache is model.fast.cache  # (one compile cache for the jitted submodule)
    assert_close(stepped(x), (stepped.sub(x) * 3).numpy())
    assert_close(run(stepped, x), (stepped.sub(x) * 3).numpy())
    assert len(calls) == 1  # (the stepped model has the structure of the first: no new trace)
    jitted = slope.jit(model)
    jitted(x)
    model.sub.bias = model.sub.bias + 1.0
    assert_close(jitted(x), (model.sub(x) * 3).numpy())


def test_config_objects_are_keyed_by_their_attributes_and_plain_objects_by_identity():
    # a SimpleNamespace or argparse.Namespace config was keyed by identity: after `cfg.scale = 100` slope.jit(model)
    # ran the program of the first scale. A plain object (dataset, tokenizer, logger, meter) stays keyed by identity:
    # keyed by content it cost up to 60 ms per jit call and a counter bumped at each step recompiled every call
    class Plain:
        def __init__(self, scale):
            self.scale = scale

    class Namespace(types.SimpleNamespace):
        pass

    class Args(argparse.Namespace):
        pass

    x = slope.ones(3)
    for kind in (types.SimpleNamespace, argparse.Namespace, Namespace, Args):
        run, calls = counting_jit()
        model = Configured(kind(scale=1.0))
        jitted = slope.jit(model)
        assert run(model, x).item() == 3.0 and jitted(x).item() == 3.0
        model.cfg.scale = 100.0
        assert run(model, x).item() == 300.0 and jitted(x).item() == 300.0 and len(calls) == 2
        assert run(Configured(kind(scale=100.0)), x).item() == 300.0 and len(calls) == 2  # equal: one program
    run, calls = counting_jit()
    model = Configured(Plain(scale=1.0))
    for step in range(3):
        model.cfg.steps = step  # (a meter's count: not part of the key)
        assert run(model, x).item() == 3.0
    assert len(calls) == 1
    model.cfg = Plain(scale=2.0)  # (replaced, not mutated: a new key)
    assert run(model, x).item() == 6.0 and len(calls) == 2


def test_a_static_attribute_changed_in_place_retraces():
    # each flatten keys every static attribute again (a cache of keys by identity kept a read-only array's old key
    # after `a.flags.writeable = True; a[0] = 10` or a write through an earlier view, and kept every value alive)
    class Tables(nn.Module):
        def __init__(self, fixed):
            super().__init__()
            self.w = slope.ones(2)
            self.vocab = {"a": 1.0, "b": [2.0]}
            self.table = np.array([1.0, 2.0], np.float32)
            self.fixed = fixed
            self.cfg = types.SimpleNamespace(scale=1.0, sizes=[1])

        def forward(self, x):
            extra = self.vocab["a"] * self.vocab["b"][0] * float(self.table[1]) * float(self.fixed[1])
            return (self.w * x).sum() * extra * self.cfg.scale * self.cfg.sizes[0]

    fixed = np.array([1.0, 3.0], np.float32)
    view = fixed[:]  # (writeable, made before the array is made read-only)
    fixed.flags.writeable = False
    model, x = Tables(fixed), slope.ones(2)
    run, calls = counting_jit()
    assert run(model, x).item() == 24.0 and run(model, x).item() == 24.0 and len(calls) == 1

    def unlock_and_set(value):
        fixed.flags.writeable = True
        fixed[1] = value
        fixed.flags.writeable = False

    for change, expected in [
        (lambda: model.vocab.__setitem__("a", 2.0), 48.0),
        (lambda: model.vocab["b"].__setitem__(0, -2.0), -48.0),  # (in place, one level down)
        (lambda: model.table.__setitem__(1, 1.0), -24.0),  # (an array: compared by content)
        (lambda: model.cfg.sizes.append(5), -24.0),
        (lambda: model.cfg.sizes.__setitem__(0, 2), -48.0),
        (lambda: unlock_and_set(1.0), -16.0),  # (a read-only array made writeable again)
        (lambda: view.__setitem__(1, 2.0), -32.0),  # (written through a view)
        (lambda: model.vocab["b"].__setitem__(0, -0.0), -0.0),  # (the same value, another sign)
    ]:
        change()
        assert model(x).item() == expected and run(model, x).item() == expected
        assert str(run(model, x).item()) == str(expected)
    assert len(calls) == 9
    other = Tables(np.ones(2))
    held = weakref.ref(other.fixed)
    slope.tree.leaves(other)
    other = None
    gc.collect()
    assert held() is None  # (no static value kept alive once its model is gone)


def test_a_deeply_nested_or_self_holding_static_attribute_is_keyed_by_content():
    # past 64 levels a static value was keyed by identity: a change at the bottom of a 70-deep list ran the old program
    deep = [1.0]
    for _ in range(70):
        deep = [deep]

    def bottom(value):
        while isinstance(value[0], list):
            value = value[0]
        return value

    cfg = types.SimpleNamespace(scale=1.0)
    cfg.parent = cfg  # (a cycle: keyed by where it points, not followed for ever)
    model, x = Configured(cfg), slope.ones(3)
    model.deep = deep
    run, calls = counting_jit()
    assert run(model, x).item() == 3.0
    bottom(deep).append(2.0)
    assert run(model, x).item() == 3.0 and len(calls) == 2
    cfg.scale = 2.0
    assert run(model, x).item() == 6.0 and len(calls) == 3
    again = types.SimpleNamespace(scale=2.0)
    again.parent = again
    other = Configured(again)
    other.deep = [1.0, 2.0]
    for _ in range(70):
        other.deep = [other.deep]
    assert run(other, x).item() == 6.0 and len(calls) == 3  # (equal content, cycle included: one program)
    other.deep = other.deep[0]
    assert run(other, x).item() == 6.0 and len(calls) == 4  # (another depth: another program)


class Pair:
    """A registered node with its own == and hash (by what it holds), as a user's pytree class may have."""

    __slots__ = ("a",)

    def __init__(self, a):
        self.a = a

    def __eq__(self, other):
        return type(other) is Pair and other.a is self.a

    def __hash__(self):
        return id(self.a)


slope.tree.register(Pair, lambda p: ([p.a], None), lambda aux, children: Pair(children[0]))


def test_a_registered_node_that_comes_to_hold_a_tensor_is_a_child():
    # a node first holding 1.0 was static and its key kept by identity: once it held a tensor that tensor was left
    # out of the leaves (no gradient, not trained) and jit ran the program of 1.0
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = slope.ones(3)
            self.p = Pair(1.0)

        def forward(self, x):
            return (x * self.w * self.p.a).sum()

    model, x = Scaled(), slope.ones(3)
    jitted = slope.jit(model)
    assert jitted(x).item() == 3.0 and len(slope.tree.leaves(model)) == 1
    model.p.a = slope.tensor(2.0)
    assert len(slope.tree.leaves(model)) == 2 and jitted(x).item() == 6.0
    grads = nn.grad(lambda m: m(x))(model)
    assert grads.p.a.item() == 3.0
    np.testing.assert_array_equal(grads.w.numpy(), np.full(3, 2.0))


def test_a_jitted_model_where_the_model_is_expected_says_so():
    # nn.grad said "slope.tensor: cannot make a tensor from jit"; an optimizer's init returned a state of nothing
    model, x = nn.Linear(2, 2), slope.ones(1, 2)
    jitted = slope.jit(model)
    with pytest.raises(TypeError, match=r"slope.nn.grad: got slope.jit\(Linear\), .* pass the model itself"):
        nn.grad(lambda m: m(x).sum())(jitted)
    with pytest.raises(TypeError, match=r"slope.nn.value_and_grad: got slope.jit\(Linear\)"):
        nn.value_and_grad(lambda m: m(x).sum())(jitted)
    optimizer = nn.optim.SGD(lr=0.1)
    with pytest.raises(TypeError, match=r"SGD.init: got slope.jit\(Linear\)"):
        optimizer.init(jitted)
    with pytest.raises(TypeError, match=r"Adam.init: got slope.jit\(Linear\)"):
        nn.optim.Adam(lr=0.1).init(jitted)
    with pytest.raises(TypeError, match=r"SGD.step: got slope.jit\(Linear\)"):
        optimizer.step(jitted, nn.grad(lambda m: m(x).sum())(model), optimizer.init(model))


def test_train_takes_only_a_bool():
    # train("False") set training mode (a non-empty string is true); PyTorch raises ValueError
    model = nn.Dropout(0.5)
    with pytest.raises(ValueError, match="Module.train: mode must be a bool, got str 'False'"):
        model.train("False")
    assert model.training and not model.train(False).training and model.train(np.bool_(True)).training


def test_a_linear_layer_with_a_numpy_weight_says_so():
    # the message was "expected the input, weight and bias of one dtype ... input float32, weight float32"
    layer = nn.Linear(2, 1)
    layer.weight = np.array([[1.0, 2.0]], dtype=np.float32)
    with pytest.raises(TypeError, match="nn.Linear: the weight is a numpy.ndarray, not a slope Tensor"):
        layer(slope.tensor([[1.0, 1.0]]))


class _Layers(list):
    """An unregistered list subclass (flattened as a list)."""


_Pair = collections.namedtuple("_Pair", "layer scale")


def _held(kind: str, lin: nn.Linear) -> object:
    """`lin` held in the container kind `kind`."""
    return {
        "mixed": [(lin, 0.5)],
        "nested": {"a": [lin]},
        "namedtuple": _Pair(lin, 2),
        "deque": collections.deque([lin]),
        "subclass": _Layers([lin]),
    }[kind]


class _FastHolder(nn.Module):
    """Holds a Linear in some container (`held`) and a jit or bound method of it in some attribute (`fast`)."""

    def __init__(self, held: str, fast: str) -> None:
        super().__init__()
        lin = nn.Linear(3, 3)
        self.blocks = _held(held, lin)
        self.fast = {
            "jit": slope.jit(lin),
            "method": lin.forward,
            "list-of-jit": [slope.jit(lin), 2.0],
            "dict-of-method": {"f": lin.forward},
            "tuple-in-dict": {"f": (1, slope.jit(lin))},
        }[fast]

    def forward(self, x: slope.Tensor) -> slope.Tensor:
        fast = self.fast
        fast = fast[0] if isinstance(fast, list) else fast["f"] if isinstance(fast, dict) else fast
        return (fast[1] if isinstance(fast, tuple) else fast)(x)

    def lin(self) -> nn.Linear:
        return next(m for m in self.modules() if isinstance(m, nn.Linear))


@pytest.mark.parametrize(
    "held, fast",
    [(held, "jit") for held in ("mixed", "nested", "namedtuple", "deque", "subclass")]
    + [("mixed", "method"), ("nested", "list-of-jit"), ("subclass", "dict-of-method"), ("deque", "tuple-in-dict")],
)
def test_a_jit_or_bound_method_of_a_module_in_any_container_is_rebound(held: str, fast: str) -> None:
    # rebinding followed only attributes and exact list/tuple/dict items, and only a jit or method stored directly as
    # an attribute: with `lin` in `[(lin, 0.5)]`, a namedtuple, a deque, a list subclass, or the jit in `[jit(lin)]`,
    # the copy's jit ran the original module's weights: zero gradients, a jitted SGD loop that never trained
    model, x = _FastHolder(held, fast), slope.ones(2, 3)
    grads = nn.grad(lambda m: m(x).sum())(model)
    np.testing.assert_array_equal(grads.lin().weight.numpy(), np.full((3, 3), 2.0))  # d(lin(x)).sum() / dW
    np.testing.assert_array_equal(grads.lin().bias.numpy(), np.full(3, 2.0))
    run, calls = counting_jit()
    optimizer = nn.optim.SGD(lr=0.25)
    state, bias = optimizer.init(model), model.lin().bias.numpy()
    for _ in range(3):
        model, state = optimizer.step(model, slope.jit(nn.grad(lambda m: m(x).sum()))(model), state)
        assert_close(run(model, x), model.lin()(x).numpy())
    assert_close(model.lin().bias.numpy(), bias - 1.5)  # (3 steps of 0.25 * 2: it trains)
    assert len(calls) == 1  # (a stepped model keeps the structure: no new trace)
    assert type(model.blocks) is type(_held(held, nn.Linear(1, 1)))


def test_a_static_dict_is_keyed_by_its_insertion_order():
    # a static dict's key was sorted by repr(key): reordered in place (a forward iterating it computes another
    # function), jit reran the old program (eager 4, jit 3)
    class Ops(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = slope.ones(3)
            self.ops = {"scale": 2.0, "shift": 1.0}

        def forward(self, x: slope.Tensor) -> slope.Tensor:
            x = x * self.w
            for name, value in self.ops.items():
                x = x * value if name == "scale" else x + value
            return x

    model, x = Ops(), slope.ones(3)
    jitted = slope.jit(model)
    np.testing.assert_array_equal(jitted(x).numpy(), np.full(3, 3.0))
    model.ops["scale"] = model.ops.pop("scale")
    np.testing.assert_array_equal(model(x).numpy(), np.full(3, 4.0))
    np.testing.assert_array_equal(jitted(x).numpy(), np.full(3, 4.0))


class _JitBeside(nn.Module):
    """Holds a Linear and its jit side by side in one container, with a static number."""

    def __init__(self, kind: type = list) -> None:
        super().__init__()
        lin = nn.Linear(3, 3)
        self.blocks = kind([(lin, slope.jit(lin)), 0.5])

    def forward(self, x: slope.Tensor) -> slope.Tensor:
        return self.blocks[0][1](x)


@pytest.mark.parametrize("kind", [list, _Layers])
def test_a_jit_beside_its_module_in_a_container_is_rebound(kind: type) -> None:
    model, x = _JitBeside(kind), slope.ones(2, 3)
    grads = nn.grad(lambda m: m(x).sum())(model)
    np.testing.assert_array_equal(grads.blocks[0][0].weight.numpy(), np.full((3, 3), 2.0))
    run, calls = counting_jit()
    optimizer = nn.optim.SGD(lr=0.25)
    state = optimizer.init(model)
    for _ in range(2):
        model, state = optimizer.step(model, nn.grad(lambda m: m(x).sum())(model), state)
        assert_close(run(model, x), model.blocks[0][0](x).numpy())
    assert model.blocks[0][1].owner is model.blocks[0][0] and type(model.blocks) is kind and len(calls) == 1


def test_load_state_dict_keeps_a_jitted_submodule_bound_to_the_module_itself():
    # load_state_dict assigned the jit of the rebuilt copy: bound to that copy's submodule, outside the model's tree,
    # so later copies (grad, optimizer steps) kept it and it ran the loaded weights for ever (zero gradients)
    model, x = Holder(), slope.ones(1, 3)
    model.load_state_dict({name: tensor * 0 + 1.0 for name, tensor in model.state_dict().items()})
    assert model.fast.owner is model.sub and model.double.__self__ is model
    grads = nn.grad(lambda m: m(x).sum())(model)
    np.testing.assert_array_equal(grads.sub.weight.numpy(), np.full((3, 3), 3.0))


class _SlotsList(list):
    __slots__ = ("tag",)


class _NoDictList(list):
    __slots__ = ()


def test_a_list_subclass_with_slots_keeps_them_when_rebuilt():
    """A list subclass with __slots__ lost its slot values when the model was rebuilt (jit, grad, load_state_dict:
    "'_SlotsList' object has no attribute 'tag'"), and one without a __dict__ holding a jit of a submodule crashed
    ("no attribute '__dict__'"); both worked at the session's start."""

    class Tagged(nn.Module):
        def __init__(self):
            super().__init__()
            self.sub = nn.Linear(3, 3)
            self.layers = _SlotsList([nn.Linear(3, 3)])
            self.layers.tag = "relu"
            self.fast = _NoDictList([slope.jit(self.sub)])

        def forward(self, x):
            return getattr(slope, self.layers.tag)(self.layers[0](x)) + self.fast[0](x)

    model, x = Tagged(), slope.ones((2, 3))
    expected = model(x).numpy()
    np.testing.assert_allclose(slope.jit(model)(x).numpy(), expected, rtol=1e-6)
    grads = nn.grad(lambda m: m(x).sum())(model)
    assert grads.layers.tag == "relu" and type(grads.fast) is _NoDictList
    np.testing.assert_allclose(grads.sub.bias.numpy(), np.full(3, 2.0), rtol=1e-6)  # d/dbias of the jitted sub
    model.load_state_dict(model.state_dict())
    np.testing.assert_allclose(model(x).numpy(), expected, rtol=1e-6)
