"""Edges the differential suite's deep profile found (reductions, normalization, attention, elementwise specials,
indexing), against PyTorch on every installed backend (iree included), eagerly and under `slope.jit`.

Values are compared exactly (NaN with NaN) unless a tolerance is stated at the assertion.
"""

from __future__ import annotations

import numpy as np
import pytest

import slope

BACKENDS = sorted(slope.plugins.backends)
MODES = {"eager": lambda f: f, "jit": slope.jit}


@pytest.fixture(params=BACKENDS)
def backend(request):
    with slope.use_backend(request.param):
        yield request.param


def check(actual: slope.Tensor, expected, what: str, rtol: float = 0.0) -> None:
    """Same shape and dtype name as the PyTorch tensor, values within rtol (NaN where it has NaN)."""
    assert actual.shape == tuple(expected.shape), f"{what}: shape {actual.shape}, expected {tuple(expected.shape)}"
    assert actual.dtype.name == str(expected.dtype).removeprefix("torch."), f"{what}: dtype {actual.dtype.name}"
    np.testing.assert_allclose(actual.astype("float64").numpy(), expected.double().numpy(), rtol=rtol, err_msg=what)


@pytest.mark.parametrize("mode", MODES)
def test_products_over_an_empty_contraction_are_zeros_as_pytorch(backend, mode, torch):
    """matmul (and attention over no keys) where the summed dimension has size 0: zeros (IREE's compiler crashed)."""
    F = torch.nn.functional
    rng = np.random.default_rng(0)
    a, b = np.ones((2, 3, 0), np.float32), np.ones((2, 0, 4), np.float32)
    matmul = MODES[mode](lambda x, y: x @ y)
    check(matmul(slope.tensor(a), slope.tensor(b)), torch.tensor(a) @ torch.tensor(b), f"{backend} {mode} matmul")
    q, k, v = rng.standard_normal((2, 3, 4)), np.zeros((2, 0, 4)), np.zeros((2, 0, 5))
    attend = MODES[mode](slope.scaled_dot_product_attention)
    expected = F.scaled_dot_product_attention(*(torch.tensor(t, dtype=torch.float32) for t in (q, k, v)))
    got = attend(*(slope.tensor(t.astype(np.float32)) for t in (q, k, v)))
    check(got, expected, f"{backend} {mode} attention over no keys")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-15), ("float32", 1e-6), ("float16", 1e-3)])
def test_log1p_is_accurate_for_tiny_inputs_as_pytorch(backend, mode, dtype, rtol, torch):
    """log1p was log(1 + x): 0 for float32 x = 1e-8, float64 values off by 6e-9 relative; gradients too."""
    x = np.array(
        [0.0, -0.0, 1e-8, -1e-8, 1e-3, -0.3, 0.4999, -0.5, 0.7, -1.0, -2.0, 3.0, 1e30, np.inf, -np.inf, np.nan]
    )
    x = x.astype(dtype)
    expected = torch.log1p(torch.tensor(x))
    got = MODES[mode](slope.log1p)(slope.tensor(x))
    check(got, expected, f"{backend} {mode} log1p {dtype}", rtol)
    assert list(np.signbit(got.numpy()[:2])) == [False, True], "log1p(-0.0) is -0.0, as in PyTorch"
    if dtype == "float16":
        return
    finite = x[np.isfinite(x) & (x > -1)]
    source = torch.tensor(finite, requires_grad=True)
    torch.log1p(source).sum().backward()
    grad = MODES[mode](slope.grad(lambda t: slope.log1p(t).sum()))(slope.tensor(finite))
    check(grad, source.grad, f"{backend} {mode} log1p' {dtype}", rtol)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("wide", ["float16", "float32", "float64"])
def test_float16_to_bfloat16_rounds_inside_a_program_as_pytorch(backend, mode, wide, torch):
    """float16 -> bfloat16 -> a wider dtype in one program: IREE folded the two conversions into one (127.875 stayed
    127.875, not bfloat16's 128)."""
    x = np.array([127.875, -128.875, 255.5, 1.0009765625, 65504.0, 6e-8, -0.0, np.inf, np.nan], np.float16)
    convert = MODES[mode](lambda t: t.astype("bfloat16").astype(wide))
    expected = torch.tensor(x).to(torch.bfloat16).to(getattr(torch, wide))
    check(convert(slope.tensor(x)), expected, f"{backend} {mode} float16 -> bfloat16 -> {wide}")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", ["uint8", "int8", "int64", "bool"])
def test_clamp_promotes_x_with_both_bounds_first_as_pytorch(backend, mode, dtype, torch):
    """clamp applied each bound in its own promotion: uint8 0 clamped to [-1, 1.5] was 1.5 (-1 wrapped to 255 against
    uint8 x before 1.5 made the result float32); PyTorch promotes x, min and max together (0.0)."""
    x = np.array([0, 1, 100], dtype)
    for low, high in ((-1, 1.5), (300, 1000.5), (-0.5, 2), (0, 1.5), (-1, None)):
        if dtype == "bool" and high is None:
            continue  # (a bool tensor with one int bound: PyTorch refuses it)
        clamp = MODES[mode](lambda t, low=low, high=high: slope.clamp(t, low, high))
        expected = torch.clamp(torch.tensor(x), low, high)
        check(clamp(slope.tensor(x)), expected, f"{backend} {mode} clamp({dtype}, {low}, {high})")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_neg_and_abs_give_the_sign_of_zero_as_pytorch(backend, mode, dtype, torch):
    """-x of 0.0 was 0.0 (0 - x; PyTorch: -0.0) and abs(-0.0) -0.0 (x * sign(x); PyTorch: 0.0)."""
    x = np.array([0.0, -0.0, 1.5, -2.0, np.inf, -np.inf, np.nan])
    reference = torch.tensor(x).to(getattr(torch, dtype))
    for name, fn, expected in (("neg", lambda t: -t, -reference), ("abs", slope.abs, torch.abs(reference))):
        got = MODES[mode](fn)(slope.tensor(x).astype(dtype))
        check(got, expected, f"{backend} {mode} {name} {dtype}")
        signs = np.signbit(got.astype("float64").numpy()[:-1])  # (not NaN's sign bit)
        np.testing.assert_array_equal(signs, torch.signbit(expected).numpy()[:-1], err_msg=f"{name}: signs of zero")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_erf_is_accurate_near_zero(backend, mode, dtype, torch):
    """The numpy backend's float32/float16/bfloat16 erf was Abramowitz and Stegun 7.1.26, 1.5e-7 off absolutely:
    erf(1e-8) was 0, float32 erf(1e-5) 2% low and float16 erf(1e-3) -9.8e-4. Against PyTorch in float32 and float64;
    in float16 and bfloat16 (where PyTorch's kernels are themselves a few ulps off near 0) against math.erf of the
    rounded input, within one ulp of the dtype (one subnormal spacing for subnormal results)."""
    import math

    x = np.array([0.0, -0.0, 1e-30, 1e-8, -1e-5, 1e-3, 0.1, -0.5, 0.9999, 1.0, 1.0001, 2.0, -3.0, 5.0, 7.0, np.inf])
    got = MODES[mode](slope.erf)(slope.tensor(x).astype(dtype))
    if dtype in ("float32", "float64"):
        check(got, torch.erf(torch.tensor(x).to(getattr(torch, dtype))), f"{backend} {mode} erf", 4e-7)
    else:
        rounded = slope.tensor(x).astype(dtype).astype("float64").numpy()
        exact = np.array([math.erf(v) for v in rounded])
        ulp, tiniest = {"float16": (2.0**-10, 2.0**-24), "bfloat16": (2.0**-7, 2.0**-133)}[dtype]  # (subnormal spacing)
        np.testing.assert_allclose(got.astype("float64").numpy(), exact, rtol=ulp, atol=tiniest, err_msg=backend + mode)
    assert list(np.signbit(got.astype("float64").numpy()[:2])) == [False, True], "erf(-0.0) is -0.0"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype, rtol", [("float16", 2e-3), ("bfloat16", 1.6e-2)])
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_half_precision_gelu_is_computed_in_float32_as_pytorch(backend, mode, dtype, rtol, approximate, torch):
    """float16/bfloat16 gelu (the procedure: numpy and iree) was computed in the half dtype, where 1 + erf(x / sqrt 2)
    cancels: bfloat16 gelu(-3) was -0.00586 (PyTorch: -0.00406), float16 gelu(-4) -0.0 (-1.27e-4); its gradient too."""
    x = np.array([-4.0, -3.0, -2.5, -1.0, -0.0, 0.5, 1.0, 3.0, 10.0])
    reference = torch.tensor(x, dtype=getattr(torch, dtype), requires_grad=True)
    expected = torch.nn.functional.gelu(reference, approximate=approximate)
    expected.backward(torch.ones_like(expected))
    got = MODES[mode](lambda t: slope.gelu(t, approximate=approximate))(slope.tensor(x).astype(dtype))
    check(got, expected.detach(), f"{backend} {mode} gelu {approximate} {dtype}", rtol)
    grad = MODES[mode](slope.grad(lambda t: slope.gelu(t, approximate=approximate).astype("float32").sum()))
    check(grad(slope.tensor(x).astype(dtype)), reference.grad, f"{backend} {mode} gelu' {approximate} {dtype}", rtol)


@pytest.mark.parametrize("mode", MODES)
def test_float16_operations_between_casts_round_as_pytorch(backend, mode, torch):
    """onnxruntime computes most float16 operations in float32 through casts it inserts, then drops the pairs of casts
    float32 -> float16 -> float32 between them: under jit, x.half().log().float() was log(x) (4.851053 for x = 127.875,
    whose float16 log is 4.8515625) and a chain of float16 operations skipped each rounding."""
    x = np.array([1.001, 127.875, 1.0001, 0.3001, -2.0002, 3.7771], np.float32)
    y = np.array([3.0003, -0.1234, 7.77, 1.0001, 5.5555, -0.3333], np.float32)
    m = (np.arange(16, dtype=np.float32).reshape(4, 4) * 0.1371).astype(np.float32)
    h = torch.float16
    cases = [
        ("log", lambda a, b: slope.log(a.astype("float16")).astype("float32"), lambda a, b: a.to(h).log().float()),
        ("exp", lambda a, b: slope.exp(a.astype("float16")).astype("float32"), lambda a, b: a.to(h).exp().float()),
        ("sqrt", lambda a, b: slope.sqrt(slope.abs(a).astype("float16")).astype("float32"),
         lambda a, b: a.abs().to(h).sqrt().float()),
        ("chain", lambda a, b: ((a.astype("float16") * b.astype("float16")) / b.astype("float16") - 0.1).astype("float32"),
         lambda a, b: ((a.to(h) * b.to(h)) / b.to(h) - 0.1).float()),
        ("sum", lambda a, b: (a.astype("float16") * b.astype("float16")).sum().astype("float32"),
         lambda a, b: (a.to(h) * b.to(h)).sum().float()),
    ]  # fmt: skip
    for name, fn, reference in cases:
        got = MODES[mode](fn)(slope.tensor(x), slope.tensor(y))
        check(got, reference(torch.tensor(x), torch.tensor(y)), f"{backend} {mode} float16 {name}")
    got = MODES[mode](lambda a: (a.astype("float16") @ a.astype("float16")).astype("float32"))(slope.tensor(m))
    check(got, (torch.tensor(m).to(h) @ torch.tensor(m).to(h)).float(), f"{backend} {mode} float16 matmul")
