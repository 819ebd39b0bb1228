"""Threads: each has its own interpreter stack, the global random generator draws atomically, and two threads
training at once (one `jit(grad)`, one eager) both get exactly their single-threaded results."""

from __future__ import annotations

import importlib.util
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import slope
from slope_testing import backends_under_test

BACKENDS = backends_under_test()
_SCRIPT = Path(__file__).parent.parent / "benchmarks" / "threads_memory.py"
_spec = importlib.util.spec_from_file_location("threads_memory", _SCRIPT)
threads_memory = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(threads_memory)


@pytest.fixture(params=BACKENDS)
def on_backend(request):
    """Run the test with each installed backend active."""
    with slope.use_backend(request.param) as backend:
        yield backend


def test_eager_calls_in_one_thread_while_another_is_inside_grad(on_backend):
    inside, release = threading.Event(), threading.Event()
    gradients = []

    def loss(w):
        y = (w * w).sum()
        inside.set()
        assert release.wait(30)
        return y

    worker = threading.Thread(target=lambda: gradients.append(slope.grad(loss)(slope.tensor([1.0, 2.0, 3.0]))))
    worker.start()
    try:
        assert inside.wait(30)
        x = slope.tensor([1.0, 2.0, 3.0])
        # before the stack was per thread, these saw the other thread's transformation: "traced" errors
        assert (x * 2.0 + 1.0).tolist() == [3.0, 5.0, 7.0]
        assert slope.jit(lambda a: a * 3.0)(x).tolist() == [3.0, 6.0, 9.0]
        assert slope.grad(lambda a: (a**3).sum())(x).tolist() == [3.0, 12.0, 27.0]
    finally:
        release.set()
        worker.join()
    assert gradients[0].tolist() == [2.0, 4.0, 6.0]


def test_two_threads_train_and_both_match_their_single_threaded_runs(on_backend):
    report = threads_memory.run_threads(0.5, [threads_memory.jit_training, threads_memory.eager_training], 2)
    for name, entry in report.items():
        assert entry["errors"] == [], f"{name}: {entry['errors'][:3]}"
        assert entry["mismatches"] == 0, f"{name}: {entry['mismatches']} of {entry['rounds']} rounds differ"


def test_two_threads_each_inside_grad_at_once(on_backend):
    # both threads transform at the same time (a barrier inside the traced function): each sees only its own stack
    barrier = threading.Barrier(2, timeout=30)

    def gradient(scale: float) -> list:
        def loss(w):
            y = (w * w * scale).sum()
            barrier.wait()
            return y

        return slope.grad(loss)(slope.tensor([1.0, 2.0])).tolist()

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(gradient, [1.0, 10.0]))
    assert results == [[2.0, 4.0], [20.0, 40.0]]


def test_global_generator_draws_are_atomic(on_backend):
    slope.manual_seed(7)
    expected = {tuple(slope.random.next_key().tolist()) for _ in range(24)}
    slope.manual_seed(7)
    with ThreadPoolExecutor(4) as pool:
        drawn = list(pool.map(lambda _: tuple(slope.random.next_key().tolist()), range(24)))
    assert len(set(drawn)) == 24, "two threads drew the same key"
    assert set(drawn) == expected


def test_randn_inside_a_transformation_advances_the_global_generator(on_backend):
    slope.manual_seed(3)
    first, second = slope.randn(3).numpy(), slope.randn(3).numpy()
    slope.manual_seed(3)
    gradient = slope.grad(lambda w: (w * slope.randn(3)).sum())(slope.ones(3))
    np.testing.assert_array_equal(gradient.numpy(), first)
    # the generator's state stayed a concrete key (it used to become the transformation's tracer)
    np.testing.assert_array_equal(slope.randn(3).numpy(), second)
    assert slope.random._global["key"].buffer is not None


def test_plugin_register_and_unregister_while_another_thread_computes():
    """Registering a plugin rebuilds the registries: another thread's backends and operators never go missing
    (they were cleared and refilled in place: "unknown backend 'numpy'; installed backends: []")."""

    class Doubler:
        @slope.plugins.hookimpl
        def slope_procedures(self) -> dict:
            return {"doubled_for_thread_test": lambda x: x * 2.0}

    errors: list[str] = []
    stop = threading.Event()
    x_values = np.arange(3, dtype=np.float32)
    installed = list(slope.plugins.backends)

    def compute() -> None:
        step = slope.jit(lambda x: (slope.sin(x) * 2.0 + 1.0).sum())
        while not stop.is_set():
            try:
                x = slope.tensor(x_values)
                np.testing.assert_allclose((x * 2.0 + slope.exp(x)).numpy(), x_values * 2 + np.exp(x_values), 1e-6)
                np.testing.assert_allclose(step(x).numpy(), (np.sin(x_values) * 2 + 1).sum(), 1e-6)
                np.testing.assert_allclose(slope.grad(lambda x: slope.sin(x).sum())(x).numpy(), np.cos(x_values), 1e-6)
                for name in installed:
                    slope.get_backend(name)
                slope.get_backend()
            except Exception as error:  # collected: the assertion below names them
                errors.append(f"{type(error).__name__}: {error}")

    worker = threading.Thread(target=compute)
    worker.start()
    try:
        plugin = Doubler()
        for _ in range(500):
            slope.plugins.register(plugin)
            slope.plugins.unregister(plugin)
    finally:
        stop.set()
        worker.join()
    assert not errors, sorted(set(errors))[:5]
    assert "doubled_for_thread_test" not in slope.plugins.procedures
