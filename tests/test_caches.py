"""Bounded caches (eager programs, constants, jit), Python scalars traced by jit, and the size check that refuses
tensors too big for memory before a backend allocates them (these tests allocate nothing big)."""

from __future__ import annotations

import collections
import math
import os
import subprocess
import sys

import numpy as np
import pytest

import slope
from slope import backend as backend_module
from slope import operators
from slope.backend import BoundedCache
from slope_testing import backends_under_test

BACKENDS = backends_under_test()


@pytest.fixture(params=BACKENDS)
def on_backend(request):
    """Run the test with each installed backend active."""
    with slope.use_backend(request.param) as backend:
        yield backend


# ----------------------------------------------------------------------------------------------- BoundedCache


def _lookup(cache: BoundedCache, key, made: list):
    value = cache.recent.get(key)
    if value is None:
        value = cache.add(key, lambda: made.append(key) or f"value {key}")
    return value


def test_bounded_cache_keeps_at_most_its_limit():
    cache, made = BoundedCache(8), []
    for key in range(100):
        assert _lookup(cache, key, made) == f"value {key}"
        assert len(cache) <= 8
    assert made == list(range(100))


def test_bounded_cache_keeps_what_is_used_in_every_generation():
    cache, made = BoundedCache(8), []
    for key in range(100):
        _lookup(cache, key, made)
        _lookup(cache, "hot", made)  # used all along: never evicted, made once
    assert made.count("hot") == 1
    assert len(cache) <= 8


def test_bounded_cache_by_bytes():
    cache = BoundedCache(1000, max_bytes=1000, size_of=len)
    for key in range(50):
        cache.add(key, lambda: b"x" * 100)
    assert sum(len(v) for v in [*cache.recent.values(), *cache.old.values()]) <= 1000 + 100
    assert len(cache) <= 12


def test_eager_cache_is_bounded(on_backend, monkeypatch):
    monkeypatch.setattr(backend_module._eager, "limit", 4)  # (a generation: the cache holds at most 8 programs)
    backend_module._eager.old.clear()  # (what earlier tests cached would take two generations to go)
    backend_module._eager.recent.clear()
    for n in range(1, 40):
        x = slope.full((n,), 1.5)
        assert (x * 2.0).tolist() == [3.0] * n
        assert len(backend_module._eager) <= 8
    # a program used recently is still there: its next call compiles nothing
    compiled = []
    monkeypatch.setattr(backend_module, "_compile_one", lambda *a: compiled.append(a) or pytest.fail("recompiled"))
    assert (slope.full((39,), 1.5) * 2.0).tolist() == [3.0] * 39
    assert compiled == []


def test_constant_cache_is_bounded_by_bytes(on_backend, monkeypatch):
    cache = operators._constant_cache
    monkeypatch.setattr(cache, "max_bytes", 4000)  # a generation of 4,000 bytes: 8,000 at most in the cache
    cache.old.clear()
    cache.recent.clear()
    for value in range(60):
        tensor = operators.constant(float(value), slope.float32, (100,))  # 400 bytes each
        assert tensor.tolist() == [float(value)] * 100
    held = [t for t in [*cache.recent.values(), *cache.old.values()] if t.shape == (100,)]
    assert len(held) * 400 <= 8000 + 400


def test_the_eager_cache_size_comes_from_the_environment():
    code = "import slope.backend as b; print(2 * b._eager.limit, b.JIT_CACHE_SIZE)"
    env = dict(os.environ, SLOPE_EAGER_CACHE_SIZE="100", SLOPE_JIT_CACHE_SIZE="6")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["100", "6"]


def test_jit_cache_is_bounded(on_backend, monkeypatch):
    monkeypatch.setattr(backend_module, "JIT_CACHE_SIZE", 4)
    double = slope.jit(lambda x: x * 2.0)
    for n in range(1, 20):
        assert double(slope.ones(n)).tolist() == [2.0] * n
        assert len(double.cache) <= 4


# ----------------------------------------------------------------------------------------------- scalars under jit


def test_jit_traces_python_floats_no_recompile_for_a_new_learning_rate(on_backend):
    step = slope.jit(lambda w, g, lr: w - lr * g)
    w, g = slope.tensor([1.0, 2.0]), slope.tensor([0.5, -1.0])
    for lr in np.linspace(0.001, 1.0, 25):
        lr = float(lr)
        np.testing.assert_allclose(step(w, g, lr).numpy(), (w - lr * g).numpy(), rtol=1e-6)
    assert len(step.cache) == 1


def test_jit_traces_python_ints_as_int64(on_backend):
    scaled = slope.jit(lambda x, n: (x * n, n))
    for n in (2, 3, -7):
        out, traced = scaled(slope.tensor([1.0, 2.0]), n)
        assert out.tolist() == [n, 2.0 * n] and traced.dtype == slope.int64 and traced.item() == n
    assert len(scaled.cache) == 1


def test_jit_scalars_promote_as_their_0d_tensors(on_backend):
    # a 0-d tensor promotes like a Python scalar of its kind: float16 * lr stays float16, int32 * n stays int32
    x16 = slope.tensor([1.0, 2.0], dtype=slope.float16)
    out = slope.jit(lambda x, lr: x * lr)(x16, 0.5)
    assert out.dtype == slope.float16 and out.tolist() == [0.5, 1.0]
    out = slope.jit(lambda x, n: x * n)(slope.tensor([1, 2], dtype=slope.int32), 3)
    assert out.dtype == slope.int32 and out.tolist() == [3, 6]


def test_jit_keeps_bools_none_and_static_arguments_in_the_key(on_backend):
    calls = []

    def f(x, flag, scale, offset=None):
        calls.append((flag, scale, offset))
        y = x * scale if flag else x
        return y if offset is None else y + offset

    g = slope.jit(f, static_argnums=2)
    x = slope.tensor([1.0, 2.0])
    assert g(x, True, 3.0).tolist() == [3.0, 6.0]
    assert g(x, False, 3.0).tolist() == [1.0, 2.0]
    assert g(x, True, 4.0).tolist() == [4.0, 8.0]  # static: a new value is a new program, the value a Python float
    assert g(x, True, 4.0, offset=1.0).tolist() == [5.0, 9.0]  # traced keyword
    assert g(x, True, 4.0, offset=2.0).tolist() == [6.0, 10.0]
    assert len(g.cache) == 4
    assert all(isinstance(scale, float) for _, scale, _ in calls)
    h = slope.jit(lambda x, n: x.reshape(n, -1), static_argnames="n")
    assert h(slope.ones(6), n=2).shape == (2, 3) and h(slope.ones(6), n=3).shape == (3, 2)


def test_jit_static_arguments_key_by_type_and_float_bits(on_backend):
    # a static 1, 1.0 and True, or 0.0 and -0.0, are different programs (they compare equal in Python: a cache keyed by
    # == gave full's dtype and 1 / -0.0 from whichever was traced first); a NaN reuses its program
    full = slope.jit(lambda x, v: slope.full((2,), v) + x * 0, static_argnums=1)
    x = slope.tensor([1, 2], dtype=slope.int8)
    assert [full(x, v).dtype for v in (1, True, 1.0, (1,)[0])] == [slope.int64, slope.int8, slope.float32, slope.int64]
    divide = slope.jit(lambda x, s: x / s, static_argnums=1)
    one = slope.tensor([1.0])
    assert divide(one, 0.0).tolist() == [math.inf] and divide(one, -0.0).tolist() == [-math.inf]
    assert np.isnan(divide(one, math.nan).numpy()).all() and np.isnan(divide(one, float("nan")).numpy()).all()
    assert len(divide.cache) == 3
    scale = slope.jit(lambda x, s: x * s[0], static_argnames="s")  # tuples item by item
    assert scale(one, s=(-0.0,)).tolist() == [-0.0] and math.copysign(1, scale(one, s=(0.0,)).item()) == 1
    assert scale(one.int(), s=(2,)).dtype == slope.int32 and scale(one.int(), s=(2.0,)).dtype == slope.float32
    point = collections.namedtuple("point", "v")  # namedtuples item by item too (they were keyed by ==)
    assert scale(one, s=point(-0.0)).tolist() == [-0.0] and math.copysign(1, scale(one, s=point(0.0)).item()) == 1
    assert scale(one.int(), s=point(2)).dtype == slope.int32 and scale(one.int(), s=point(2.0)).dtype == slope.float32
    # leaves that are neither tensors nor traced numbers (NumPy scalars, bools) are keyed the same way
    full_of = slope.jit(lambda x, v: slope.full((1,), float(v)) * x)
    assert math.copysign(1, full_of(one, np.float32(0.0)).item()) == 1
    assert math.copysign(1, full_of(one, np.float32(-0.0)).item()) == -1


def test_jit_python_int_used_as_a_shape_says_to_mark_it_static(on_backend):
    with pytest.raises(slope.SlopeTraceError, match="static_argnums"):
        slope.jit(lambda x, n: x.reshape(n, -1))(slope.ones(6), 2)


def test_optimizer_steps_do_not_recompile(on_backend):
    nn = pytest.importorskip("slope_nn")
    model = nn.Linear(3, 2)
    optimizer = nn.Adam(nn.optim.cosine_decay(0.01, total_steps=10))
    state = optimizer.init(model)

    @slope.jit
    def step(model, state, x, scale):
        grads = slope.grad(lambda m: (m(x) * scale).sum())(model)
        return optimizer.step(model, grads, state)

    for i in range(5):
        model, state = step(model, state, slope.ones(4, 3), 1.0 + i)
    assert len(step.cache) == 1


# ----------------------------------------------------------------------------------------------- sizes


@pytest.mark.parametrize(
    "make, function, shape",
    [
        (lambda: slope.zeros(10**12), "full", "(1000000000000,)"),
        (lambda: slope.randn(10**10), "random_normal", "(10000000000,)"),
        (lambda: slope.ones(10**6, 10**6, dtype=slope.float64), "full", "(1000000, 1000000)"),
    ],
)
def test_too_big_for_memory_is_a_slope_error_before_the_backend(on_backend, make, function, shape):
    with pytest.raises(slope.SlopeMemoryError) as info:
        make()
    message = str(info.value)
    assert f"slope.{function}:" in message and shape in message and "bytes" in message
    assert f"{backend_module.PHYSICAL_MEMORY:,}" in message
    assert isinstance(info.value, MemoryError) and isinstance(info.value, slope.SlopeError)


def test_too_big_intermediate_under_jit(on_backend):
    with pytest.raises(slope.SlopeMemoryError, match=r"slope\.expand: .*\(100000, 100000, 100000\).*float32"):
        slope.jit(lambda x: x.reshape(1, 1, -1).expand(10**5, 10**5, 10**5).sum())(slope.ones(10**5))


def test_sizes_beyond_int64_are_refused(on_backend):
    with pytest.raises(slope.SlopeMemoryError, match="2\\*\\*63"):
        slope.zeros(0, 2**62, 4)


def test_the_check_uses_the_machines_memory(on_backend, monkeypatch):
    monkeypatch.setattr(backend_module, "PHYSICAL_MEMORY", 1000)
    with pytest.raises(slope.SlopeMemoryError, match="needs 4,004 bytes with its inputs; this machine has 1,000"):
        slope.full((1001,), 3.0)  # (a shape no other test compiled: the check runs when a program compiles)
    assert slope.full((10,), 3.0).tolist() == [3.0] * 10


# ----------------------------------------------------------------------------------------------- onnxruntime threads


def test_onnxruntime_threads_stay_bounded_however_many_large_programs():
    pytest.importorskip("slope_onnx")
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(os.path.join(os.path.dirname(__file__), os.pardir, 'benchmarks'))!r})\n"
        "import threads_memory\n"
        "sys.exit(threads_memory.main(['--programs', '12']))\n"
    )
    # 12 programs with pools of 4 threads: 36 workers before; now at most 2 sessions (6 workers) open at once
    env = dict(os.environ, SLOPE_BACKEND="onnxruntime", SLOPE_ORT_THREADS="4", SLOPE_ORT_POOLED_SESSIONS="2")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "bound " in done.stdout and "-> bounded" in done.stdout


_SPIN_CHECK = """
import numpy as np, slope
step = slope.jit(lambda x: (x @ x.T).sum(0) * 2.0)  # large enough for a session with a thread pool
x = slope.tensor(np.random.default_rng(0).standard_normal((300, 300)).astype(np.float32))
options = step.lower(x).executable.session.get_session_options()
spin = options.get_session_config_entry("session.intra_op.allow_spinning")
try:
    duration = options.get_session_config_entry("session.intra_op.spin_duration_us")
except Exception:  # (no entry)
    duration = "-"
print(spin, duration, float(step(x).sum()))
"""


@pytest.mark.parametrize("setting", [None, "150"])
def test_onnxruntime_workers_spin_only_when_asked(setting):
    """SLOPE_ORT_SPIN_US=n lets a pooled session's workers spin n µs (issue 4: by default they never spin); the
    results are the same either way."""
    pytest.importorskip("slope_onnx")
    env = dict(os.environ, SLOPE_BACKEND="onnxruntime", SLOPE_ORT_THREADS="2")
    env.pop("SLOPE_ORT_SPIN_US", None)
    if setting is not None:
        env["SLOPE_ORT_SPIN_US"] = setting
    done = subprocess.run([sys.executable, "-c", _SPIN_CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    spin, duration, total = done.stdout.split()
    assert (spin, duration) == (("0", "-") if setting is None else ("1", setting))
    x = np.random.default_rng(0).standard_normal((300, 300)).astype(np.float32)
    np.testing.assert_allclose(float(total), float(((x @ x.T).sum(0) * 2.0).sum()), rtol=1e-4)


def test_jit_gives_dicts_in_sorted_key_order_whatever_the_callers_order(on_backend):
    # optree's structures are equal for every insertion order, so a cached program handed the function its dicts in
    # the first caller's order: stack(d.values()) of {"b": 2, "a": 1} gave [1, 2] after a call with {"a": 1, "b": 2}
    one = slope.tensor([1.0])
    stack = slope.jit(lambda d: slope.stack(list(d.values())))
    assert stack({"b": one * 2, "a": one}).tolist() == [[1.0], [2.0]]  # a fresh trace: sorted, as JAX
    assert stack({"a": one, "b": one * 2}).tolist() == [[1.0], [2.0]]
    nested = slope.jit(lambda t: [v * 1 for v in t[1]["in"].values()])
    assert [v.item() for v in nested((one, {"in": {"y": one * 3, "x": one}}))] == [1.0, 3.0]
    keywords = slope.jit(lambda x, **kw: [x * v for v in kw.values()])
    assert [v.item() for v in keywords(one, a=1.0, b=2.0)] == [1.0, 2.0]
    assert [v.item() for v in keywords(one, b=2.0, a=1.0)] == [1.0, 2.0]
    assert len(stack.cache) == 1 and len(keywords.cache) == 1
