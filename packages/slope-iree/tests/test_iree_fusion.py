"""Programs IREE 3.13 got wrong with its multi-use fusion on (now off for every program, cache.COMMON_FLAGS): a
second-order gradient through a normalization computed a wrong number without error, and Adam with weight_decay under
jit failed at run time ("indirect buffer reference slot 0 is out range"). Checked against PyTorch."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("iree.compiler")
pytest.importorskip("iree.runtime")
torch = pytest.importorskip("torch")

import slope  # noqa: E402
import slope.nn as nn  # noqa: E402
from slope_iree import cache  # noqa: E402


def test_multi_use_fusion_is_off_for_every_target():
    for target in ("cpu", "cuda", "vulkan", "metal"):
        assert "--iree-dispatch-creation-fuse-multi-use=false" in cache.target_flags(target)


def _penalty_gradient(f, x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """slope.jit on iree of d/dx sum(grad(sum(f(x) * c))(x) ** 2)."""
    with slope.use_backend("iree"):
        sc = slope.tensor(c)

        def penalty(x):
            g = slope.grad(lambda x: (f(x) * sc).sum())(x)
            return (g * g).sum()

        return slope.jit(slope.grad(penalty))(slope.tensor(x)).numpy()


def _torch_penalty_gradient(f, x: np.ndarray, c: np.ndarray) -> np.ndarray:
    tx = torch.tensor(x, requires_grad=True)
    (g,) = torch.autograd.grad((f(tx) * torch.tensor(c)).sum(), tx, create_graph=True)
    return torch.autograd.grad((g * g).sum(), tx)[0].numpy()


def test_second_order_gradient_through_a_layer_norm_over_two_dimensions():
    R = np.random.RandomState(0)
    x, c = R.randn(2, 2, 3), R.randn(2, 2, 3)
    ln = nn.LayerNorm((2, 3), elementwise_affine=False, dtype=slope.float64)
    want = _torch_penalty_gradient(lambda t: torch.nn.functional.layer_norm(t, (2, 3)), x, c)
    np.testing.assert_allclose(_penalty_gradient(ln, x, c), want, rtol=1e-9, atol=1e-12)


def test_second_order_gradient_of_the_smallest_form():
    # x * (rsqrt(v) + (v - v)): the (v - v) is what overflow_to_nan adds (NaN where v overflowed)
    R = np.random.RandomState(0)
    x, c = R.randn(1, 3), R.randn(1, 3)

    def f(x):
        v = (x * x).sum(1, keepdim=True)
        return x * (v.rsqrt() + (v - v))

    want = _torch_penalty_gradient(f, x, c)
    np.testing.assert_allclose(_penalty_gradient(f, x, c), want, rtol=1e-9, atol=1e-12)


ADAMS = [
    ("Adam", dict(weight_decay=0.1), slope.float32),
    ("Adam", dict(amsgrad=True), slope.float64),
    ("AdamW", dict(amsgrad=True, weight_decay=0.1), slope.float64),
    ("Adam", dict(amsgrad=True, weight_decay=0.1, maximize=True), slope.float32),
]


@pytest.mark.parametrize("name,options,dtype", ADAMS, ids=[f"{n}-{'-'.join(o)}-{d}" for n, o, d in ADAMS])
def test_a_jitted_adam_step_runs_and_matches_pytorch(name, options, dtype):
    R = np.random.RandomState(1)
    npdt = np.float32 if dtype == slope.float32 else np.float64
    w, b = R.randn(3, 4).astype(npdt), R.randn(3).astype(npdt)
    x, y = R.randn(8, 4).astype(npdt), R.randn(8, 3).astype(npdt)
    with slope.use_backend("iree"):
        model = nn.Linear(4, 3, dtype=dtype)
        model.weight, model.bias = slope.tensor(w), slope.tensor(b)
        opt = getattr(nn, name)(0.01, **options)
        state = opt.init(model)
        sx, sy = slope.tensor(x), slope.tensor(y)

        def step(m, s, x, y):
            return opt.step(m, slope.grad(lambda m: ((m(x) - y) ** 2).sum())(m), s)

        new, _ = slope.jit(step)(model, state, sx, sy)
        got_w, got_b = new.weight.numpy(), new.bias.numpy()
    tw, tb = torch.tensor(w, requires_grad=True), torch.tensor(b, requires_grad=True)
    topt = getattr(torch.optim, name)([tw, tb], lr=0.01, **options)
    ((torch.tensor(x) @ tw.T + tb - torch.tensor(y)) ** 2).sum().backward()
    topt.step()
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == slope.float32 else dict(rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(got_w, tw.detach().numpy(), **tol)
    np.testing.assert_allclose(got_b, tb.detach().numpy(), **tol)
