"""Environment variables read through slope.errors.env, and small API edges found in review (session 20)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import slope
from slope.errors import SlopeBackendError, TransformError


def _fresh(code: str, **env: str) -> subprocess.CompletedProcess:
    """`python -c code` in a fresh process with these environment variables set."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})  # fmt: skip


@pytest.mark.parametrize(
    "name,value,expected",
    [("SLOPE_JIT_CACHE_SIZE", "abc", "a whole number >= 0"), ("SLOPE_EAGER_CACHE_SIZE", "-3", "a whole number >= 0"),
     ("SLOPE_JIT_CACHE_SIZE", "2.5", "a whole number >= 0"), ("LOG_JIT", "maybe", "1/true/yes/on or 0/false/no/off")],
)  # fmt: skip
def test_a_bad_environment_variable_is_an_error_naming_it(name, value, expected):
    # a bad cache size killed `import slope` with a bare "invalid literal for int()" naming no variable
    result = _fresh("import slope; slope.jit(lambda x: x + 1)(slope.ones(2))", **{name: value})
    assert result.returncode != 0
    assert f"SlopeConfigError: ${name}={value!r}: expected {expected}" in result.stderr, result.stderr[-2000:]


@pytest.mark.parametrize("value,prints", [("false", False), ("OFF", False), ("no", False), ("0", False), ("", False),
                                          ("1", True), ("true", True), ("On", True), (" yes ", True)])  # fmt: skip
def test_log_jit_reads_flags_as_words(value, prints):
    # LOG_JIT=false (or off, no) printed every program: any value but "" and "0" meant on
    result = _fresh("import slope; slope.jit(lambda x: x * 3)(slope.ones(2))", LOG_JIT=value)
    assert result.returncode == 0, result.stderr
    assert ("--- slope program" in result.stdout) == prints


def test_env_reads_flags_and_numbers(monkeypatch):
    from slope.errors import SlopeConfigError, env

    for value, expected in [("", 7), ("12", 12), (" 0 ", 0)]:
        monkeypatch.setenv("SLOPE_TEST_NUMBER", value)
        assert env("SLOPE_TEST_NUMBER", 7) == expected
    monkeypatch.setenv("SLOPE_TEST_NUMBER", "0.25")
    assert env("SLOPE_TEST_NUMBER", 1.0) == 0.25
    for value in ("-1", "nan", "1e3x"):
        monkeypatch.setenv("SLOPE_TEST_NUMBER", value)
        with pytest.raises(SlopeConfigError, match=r"\$SLOPE_TEST_NUMBER="):
            env("SLOPE_TEST_NUMBER", 1.0)
    monkeypatch.delenv("SLOPE_TEST_NUMBER")
    assert env("SLOPE_TEST_NUMBER", True) is True and env("SLOPE_TEST_NUMBER", 3) == 3


@pytest.mark.parametrize("device", [0, "", False])
def test_a_falsy_device_is_not_the_default_one(backend, device):
    # slope.tensor(..., device=0) (PyTorch: cuda:0), device="" and device=False silently gave cpu
    with pytest.raises(SlopeBackendError, match="is not available on backend"):
        slope.tensor([1.0], device=device)


def test_arange_of_a_0d_tensor_as_pytorch(backend):
    torch = pytest.importorskip("torch")
    # arange(tensor(5)) raised "cannot count from 0 to tensor(5, ...)" where PyTorch counts to 5
    for args in [(slope.tensor(5),), (1, slope.tensor(2.5)), (slope.tensor(1), 7, slope.tensor(2))]:
        got = slope.arange(*args)
        expected = torch.arange(*[torch.tensor(a.item()) if isinstance(a, slope.Tensor) else a for a in args])
        assert str(got.dtype.name) == str(expected.dtype).removeprefix("torch.")
        assert got.numpy().tolist() == expected.tolist()
    with pytest.raises(slope.SlopeError, match="traced"):
        slope.jit(lambda n: slope.arange(n))(slope.tensor(3))


def test_grad_with_a_numpy_int_argnums_gives_one_gradient(backend):
    # grad(f, argnums=np.int64(1)) returned a 1-tuple (JAX: the one array, as with argnums=1)
    x, y = slope.tensor([1.0, 2.0]), slope.tensor([3.0, 4.0])
    got = slope.grad(lambda a, b: (a * b).sum(), argnums=np.int64(1))(x, y)
    assert isinstance(got, slope.Tensor) and got.numpy().tolist() == [1.0, 2.0]


def test_hessian_errors_name_hessian(backend):
    # hessian of a non-scalar-float output named slope.jacrev and printed tracers ("(JVPTracer([f32]), ...)")
    x = slope.tensor([1.0, 2.0])
    with pytest.raises(TransformError, match=r"^slope\.hessian: expected one floating-point output, got tuple"):
        slope.hessian(lambda x: ((x * x).sum(), (x > 1).sum()))(x)
    with pytest.raises(TransformError, match=r"^slope\.hessian: .* got \[i64\]"):
        slope.hessian(lambda x: (x > 1).sum())(x)
    with pytest.raises(TransformError, match=r"^slope\.jacrev: .* got \[i64\]"):
        slope.jacrev(lambda x: (x > 1).sum())(x)


def test_custom_vjp_ignores_a_float_cotangent_for_an_integer_input(backend):
    # bwd returning float zeros for an int input (JAX accepts them) was refused: "... for input 1 ... (int64); expected
    # both"; an integer input has no gradient, so whatever bwd returns for it is ignored
    @slope.custom_vjp
    def scale(x, n):
        return x * n

    scale.defvjp(lambda x, n: (scale(x, n), n), lambda n, ct: (ct * n, slope.zeros(2)))
    x, n = slope.tensor([1.0, 2.0]), slope.tensor([3, 4])
    assert slope.grad(lambda x: scale(x, n).sum())(x).numpy().tolist() == [3.0, 4.0]
    with pytest.raises(TransformError, match="for input 0 of shape"):  # a float input's cotangent is still checked
        scale.defvjp(lambda x, n: (scale(x, n), n), lambda n, ct: (slope.zeros(3), None))
        slope.grad(lambda x: scale(x, n).sum())(x)


def test_array_likes_keep_their_dtype(backend):
    # a torch tensor (or any object with __array__) went through the nested-list path: float64 became float32
    # (16777217 -> 16777216), int16 and uint8 became int64; NumPy and PyTorch keep the dtype
    torch = pytest.importorskip("torch")
    for data, name in [(torch.tensor([0.1, 16777217.0], dtype=torch.float64), "float64"),
                       (torch.tensor([1, -2], dtype=torch.int16), "int16"), (torch.tensor([1, 2], dtype=torch.uint8), "uint8"),
                       (torch.tensor(3.5), "float32")]:  # fmt: skip
        got = slope.tensor(data)
        assert got.dtype.name == name and got.numpy().tolist() == data.tolist()


@pytest.mark.parametrize("make", ["full", "tensor", "list"])
def test_a_numpy_float_just_past_an_integer_dtype_is_refused(backend, make):
    # np.float32(2**31) into int32 wrapped to -2**31 (NumPy 2 compares the Python bound 2**31 - 1 in float32, where it
    # is 2**31); a Python float of that value was refused, as PyTorch refuses both
    value = np.float32(2**31)
    build = {"full": lambda: slope.full((2,), value, dtype="int32"), "tensor": lambda: slope.tensor(value, dtype="int32"),
             "list": lambda: slope.tensor([value, 1.0], dtype="int32")}[make]  # fmt: skip
    with pytest.raises(ValueError, match="2147483648.0 does not fit int32"):
        build()
    assert slope.full((1,), np.float32(2**30), dtype="int32").numpy().tolist() == [2**30]


def test_full_takes_a_bfloat16_fill_value(backend):
    # full((2,), a bfloat16 0-d tensor) raised "cannot make a tensor from Tensor (NumPy dtype bfloat16)"; PyTorch (and
    # Slope for float16) fill float32
    for value in (slope.tensor(1.5, dtype=slope.bfloat16), slope.tensor(0.5, dtype=slope.float16)):
        got = slope.full((2,), value)
        assert got.dtype == slope.float32 and got.numpy().tolist() == [value.item()] * 2


def test_big_endian_float64_to_float16_rounds_as_native(backend):
    v = 1 + 2**-11 + 2**-40  # through float32 (PyTorch's, and Slope's for native arrays) it rounds to 1.0
    native, swapped = np.array([v], "<f8"), np.array([v], ">f8")
    assert (
        slope.tensor(swapped, dtype="float16").numpy().tolist()
        == slope.tensor(native, dtype="float16").numpy().tolist()
        == [1.0]
    )
