"""What the transformations' differential tests (tests/differential/test_differential_transforms.py) found, as focused
checks on every backend under test: fill values that differ only in the sign of zero (eager caches), and log1p's
higher derivatives at 0."""

from __future__ import annotations

import math

import numpy as np
import pytest

import slope


@pytest.mark.parametrize("first", [0.0, -0.0])
def test_full_and_pad_keep_the_sign_of_a_zero_fill(backend: str, first: float) -> None:
    """full(-0.0) after full(0.0) (and the other way) gave the first one's zeros: the eager cache's key compared the
    fill values with ==, for which -0.0 is 0.0 (vmap(neg) of a 0-d 0.0 gave +0.0 after any abs had run)."""
    x = slope.tensor(np.ones(2, np.float32))
    for value in (first, -first):
        sign = bool(np.signbit(value))
        assert np.signbit(slope.full((2,), value).numpy()).tolist() == [sign] * 2, f"full((2,), {value})"
        assert np.signbit(slope.full((), value).numpy()) == sign, f"full((), {value})"
        assert np.signbit(slope.pad(x, (1, 1), value=value).numpy()).tolist() == [sign, False, False, sign]
    slope.vmap(slope.abs)(slope.tensor(np.zeros(1, np.float32)))  # (abs adds a constant 0.0 of the example's shape)
    assert np.signbit(slope.vmap(slope.neg)(slope.tensor(np.zeros(1, np.float32))).numpy()).tolist() == [True]


def test_full_finds_a_nan_fill_in_its_cache(backend: str) -> None:
    """NaN != NaN: each full(NaN) compiled (and cached) its program anew."""
    slope.full((3,), float("nan"))
    compiled = len(slope.backend._compiled)
    for _ in range(3):
        assert np.isnan(slope.full((3,), float("nan")).numpy()).all()
    assert len(slope.backend._compiled) == compiled


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_log1p_derivatives_at_zero(backend: str, dtype: str) -> None:
    """At 0 (and where x * x underflows) log1p was x itself: first derivative 1, but the second 0 (it is -1) and
    the third 0 (it is 2); elsewhere the derivatives are -1 / (1 + x)**2 and 2 / (1 + x)**3."""
    points = np.array([0.0, -0.0, 1e-30, 0.25, -0.5], dtype)
    x = slope.tensor(points)

    def first(v: slope.Tensor) -> slope.Tensor:
        return slope.grad(lambda u: slope.log1p(u).sum())(v)

    def second(v: slope.Tensor) -> slope.Tensor:
        return slope.grad(lambda u: first(u).sum())(v)

    third = slope.grad(lambda u: second(u).sum())(x)
    wide = points.astype(np.float64)
    rtol = 1e-6 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(first(x).numpy(), 1 / (1 + wide), rtol=rtol)
    np.testing.assert_allclose(second(x).numpy(), -1 / (1 + wide) ** 2, rtol=rtol)
    np.testing.assert_allclose(third.numpy(), 2 / (1 + wide) ** 3, rtol=rtol)
    forward = slope.jvp(lambda u: slope.jvp(slope.log1p, (u,), (slope.ones_like(u),))[1], (x,), (slope.ones_like(x),))
    np.testing.assert_allclose(forward[1].numpy(), -1 / (1 + wide) ** 2, rtol=rtol)
    assert np.signbit(slope.log1p(x).numpy()).tolist() == [False, True, False, False, True]  # -0.0 stays


@pytest.mark.parametrize("options", [{"reduction": "sum"}, {"reduction": "mean", "label_smoothing": 0.2},
                                     {"reduction": "mean", "ignore_index": 1}])  # fmt: skip
def test_cross_entropy_derivative_in_its_class_weights(backend: str, options: dict) -> None:
    """PyTorch does not differentiate cross_entropy's weight (reverse mode refuses, forward mode gives 0 for the
    nll term), so the differential tests hold it fixed: Slope's jvp and grad in it against central differences."""
    x = np.array([[2.0, -2.0, 1.0, -0.5], [1.0, 0.0, -1.0, 3.0], [0.5, 1.5, -2.5, 0.0]])
    target, w, direction = np.array([1, 2, 3]), np.array([0.2, 0.7, 0.4, 1.3]), np.array([0.3, -0.2, 0.5, 0.1])

    def loss(weight: slope.Tensor) -> slope.Tensor:
        return slope.cross_entropy(slope.tensor(x), slope.tensor(target), weight=weight, **options)

    eps = 1e-6
    central = (loss(slope.tensor(w + eps * direction)).item() - loss(slope.tensor(w - eps * direction)).item()) / (
        2 * eps
    )
    tangent = slope.jvp(loss, (slope.tensor(w),), (slope.tensor(direction),))[1].item()
    along_grad = float((slope.grad(loss)(slope.tensor(w)).numpy() * direction).sum())
    assert tangent == pytest.approx(central, rel=1e-7, abs=1e-9)
    assert along_grad == pytest.approx(tangent, rel=1e-12)


@pytest.mark.parametrize("bound", ["min", "max"])
def test_clamp_jvp_at_a_tie_is_its_vjp_transposed(backend: str, bound: str) -> None:
    """At x == a tensor bound PyTorch's forward mode takes the bound's tangent and its reverse mode x's gradient; Slope's
    jvp is the transpose of its vjp (which matches PyTorch's): <jvp(t), c> == <t, vjp(c)>."""
    x, b = np.array([1.0, 2.0, 3.0]), np.array([2.0, 2.0, 2.0])
    tx, tb, ct = np.array([0.5, -0.25, 0.75]), np.array([-1.0, 0.5, 0.25]), np.array([1.0, -2.0, 0.5])

    def fn(v: slope.Tensor, bound_value: slope.Tensor) -> slope.Tensor:
        return slope.clamp(v, **{bound: bound_value})

    primals = (slope.tensor(x), slope.tensor(b))
    tangent = slope.jvp(fn, primals, (slope.tensor(tx), slope.tensor(tb)))[1].numpy()
    gx, gb = slope.vjp(fn, *primals)[1](slope.tensor(ct))
    assert float((tangent * ct).sum()) == pytest.approx(float((gx.numpy() * tx).sum() + (gb.numpy() * tb).sum()))
    assert tangent[1] == tx[1]  # the tie: x's tangent, as PyTorch's reverse mode (its forward mode gives tb[1])


def test_vmap_passes_unmapped_python_numbers_as_they_are(backend: str) -> None:
    """An in_axes=None Python number became a float32/int64 0-d tensor: a float64 input times 0.1 used float32's
    0.1, a float16 one became float32, an int32 one int64, and a size for reshape failed (JAX keeps them as given)."""
    x = slope.tensor([1.0, 3.0], dtype=slope.float64)
    scaled = slope.vmap(lambda a, s: a * s, in_axes=(0, None))(x, 0.1)
    assert scaled.dtype == slope.float64 and scaled.tolist() == [0.1, 3.0 * 0.1]
    half = slope.tensor([1.5, 2.5], dtype=slope.float16)
    assert slope.vmap(lambda a, s: a * s, in_axes=(0, None))(half, 0.1).dtype == slope.float16
    ints = slope.tensor([1, 2], dtype=slope.int32)
    assert slope.vmap(lambda a, n: a * n, in_axes=(0, None))(ints, 3).dtype == slope.int32
    assert slope.vmap(lambda a, n: a.reshape(n, -1), in_axes=(0, None))(slope.ones(2, 6), 2).shape == (2, 2, 3)


def test_grad_refuses_repeated_argnums(backend: str) -> None:
    """argnums=(0, 0) gave (0, 12) for a * a * b at (3, 2): the first copy's gradient was lost (torch.func refuses)."""
    a, b = slope.tensor(3.0), slope.tensor(2.0)
    for argnums in ((0, 0), (0, -2), (1, -1)):
        with pytest.raises(slope.TransformError, match="out of range or repeats"):
            slope.grad(lambda a, b: a * a * b, argnums=argnums)(a, b)
    assert [g.item() for g in slope.grad(lambda a, b: a * a * b, argnums=(0, 1))(a, b)] == [12.0, 9.0]


def test_arange_of_numpy_integers_counts_in_integers(backend: str) -> None:
    """NumPy integers counted as floats: arange(np.int64(3)) was float32, and 2**24 + 1 was lost."""
    assert slope.arange(np.int64(3)).dtype == slope.int64
    assert slope.arange(2**24, np.int64(2**24 + 3)).tolist() == [2**24, 2**24 + 1, 2**24 + 2]
    assert slope.arange(np.int32(1), 7, np.int8(3)).tolist() == [1, 4]


def test_custom_rules_must_match_their_outputs_and_inputs(backend: str) -> None:
    """A custom_jvp rule's tangent of the wrong shape gave jacfwd a (3,) Jacobian of a (3,) -> (3,) function, and a
    custom_vjp cotangent of another dtype a float32 gradient for a float64 input, silently (JAX refuses both)."""
    x = slope.tensor([0.1, 0.2, 0.3], dtype=slope.float64)
    g = slope.custom_jvp(lambda v: v.sin())
    g.defjvp(lambda p, t: (p[0].sin(), (t[0] * p[0].cos()).sum()))
    with pytest.raises(slope.TransformError, match="custom_jvp: the rule's outputs and tangents"):
        slope.jacfwd(g)(x)
    f = slope.custom_vjp(lambda v: v * 2.0)
    f.defvjp(lambda v: (v * 2.0, None), lambda r, ct: (ct.astype(slope.float32) * 2.0,))
    with pytest.raises(slope.TransformError, match="custom_vjp: the backward function returned a cotangent"):
        slope.grad(lambda v: f(v).sum())(x)
    good = slope.custom_jvp(lambda v: v.sin())
    good.defjvp(lambda p, t: (p[0].sin(), t[0] * p[0].cos()))
    np.testing.assert_allclose(slope.jacfwd(good)(x).numpy(), np.diag(np.cos(x.numpy())))


def test_jit_static_argnums_count_from_the_end(backend: str) -> None:
    """static_argnums=-1 was ignored: the size was traced, and reshape failed on a traced tensor."""
    f = slope.jit(lambda x, n: x.reshape(n, -1), static_argnums=-1)
    assert f(slope.ones(6), 2).shape == (2, 3) and f(slope.ones(6), 3).shape == (3, 2)
    with pytest.raises(slope.TransformError, match="static_argnums"):
        slope.jit(lambda x, n: x, static_argnums=-3)(slope.ones(2), 1)


def test_jit_refuses_python_ints_beyond_int64_as_slope_tensor_does(backend: str) -> None:
    """A Python int of 2**63 or more, as a jitted call's argument or result, wrapped to a negative int64 silently."""
    x = slope.tensor([1.0])
    calls = [(lambda x, n: x * n, (x, 2**63)), (lambda x: 2**64 - 1, (x,)), (lambda t: t[0] * t[1], ((x, 2**63),))]
    for function, args in calls:
        with pytest.raises(ValueError, match="does not fit int64"):
            slope.jit(function)(*args)
    assert slope.jit(lambda x, n: x * n)(x, -(2**63)).item() == -(2.0**63)
    assert slope.jit(lambda x, n: x * n)(x, 2**63 - 1).item() == 2.0**63


def test_jit_returns_numpy_scalars_in_their_own_dtype(backend: str) -> None:
    """np.float64(0.1) returned by a jitted function came back float32 (taken for a Python float), slope.tensor's is
    float64."""
    x = slope.tensor([1.0])
    for value in (np.float64(0.1), np.float32(0.1), np.int8(3), np.uint8(7), np.bool_(True)):
        got = slope.jit(lambda x, v=value: v)(x)
        assert got.dtype == slope.tensor(value).dtype and got.item() == value.item(), value


def test_jit_static_argnames_are_static_when_passed_by_position(backend: str) -> None:
    """A static_argnames argument passed by position was traced (a float64 x times a static 0.1 used float32's 0.1, a
    size could not reshape); JAX reads its position from the signature."""
    x = slope.tensor([1.0], dtype=slope.float64)
    scale = slope.jit(lambda x, c: x * c, static_argnames="c")
    assert scale(x, 0.1).item() == 0.1 and scale(x, c=0.1).item() == 0.1
    assert scale(x, 0.0).item() == 0.0 and math.copysign(1, scale(x, -0.0).item()) == -1
    rows = slope.jit(lambda x, n: x.reshape(n, -1), static_argnames=("n",))
    assert rows(slope.ones(6), 2).shape == (2, 3) and rows(slope.ones(6), n=3).shape == (3, 2)


def test_vjp_checks_numpy_and_number_cotangents_and_jacrev_wants_float_outputs(backend: str) -> None:
    """A NumPy or Python-number cotangent of the wrong shape was broadcast (a (3, 3) "gradient" of a (3,) input); the
    Jacobian of an integer or bool output was zeros (PyTorch and JAX refuse)."""
    x = slope.tensor([0.5, -1.0, 2.0], dtype=slope.float64)
    _, pullback = slope.vjp(lambda v: v * 2, x)
    for cotangent in (np.ones((3, 1)), np.array([1.0]), 2.0):
        with pytest.raises(slope.TransformError, match=r"slope.vjp: cotangent \[.*f64\] does not match the output"):
            pullback(cotangent)
    assert pullback(np.ones(3, np.float32))[0].tolist() == [2.0, 2.0, 2.0]  # NumPy data takes the output's dtype
    assert slope.vjp(lambda v: v.sum(), x)[1](1.0)[0].tolist() == [1.0, 1.0, 1.0]
    for integral in (lambda v: slope.argmax(v), lambda v: v > 0, lambda v: (v * 10).astype(slope.int32)):
        with pytest.raises(slope.TransformError, match="jacrev: expected one floating-point output"):
            slope.jacrev(integral)(x)
    np.testing.assert_array_equal(slope.jacrev(lambda v: v * 2)(x).numpy(), 2 * np.eye(3))


def test_vmap_refuses_bool_axes(backend: str) -> None:
    """in_axes=(0, False) mapped the second argument along axis 0 (False is an int): JAX and PyTorch refuse bools."""
    x, w = slope.ones((3, 2)), slope.ones((3, 3))
    for in_axes, out_axes in (((0, False), 0), ((0, None), True)):
        with pytest.raises(slope.TransformError, match="do not match the structure"):
            slope.vmap(lambda a, m: m @ slope.cat([a, a[:1]]), in_axes=in_axes, out_axes=out_axes)(x, w)


def test_vmap_passes_keyword_arguments_through_unmapped(backend: str) -> None:
    """A keyword argument raised "<lambda>() got an unexpected keyword argument" (naming the user's function, which
    takes it); torch.func.vmap passes keyword arguments to every example unmapped."""
    scaled = slope.vmap(lambda a, b=1.0: a * b)
    np.testing.assert_array_equal(scaled(slope.ones((3, 2)), b=slope.tensor([1.0, 2.0])).numpy(), [[1.0, 2.0]] * 3)
    assert scaled(slope.ones(3), b=3.0).tolist() == [3.0, 3.0, 3.0]
    jitted = slope.jit(lambda x, y: scaled(x, b=y))
    np.testing.assert_array_equal(jitted(slope.ones((3, 2)), slope.tensor([1.0, 2.0])).numpy(), [[1.0, 2.0]] * 3)


def test_vmap_of_conv_over_an_empty_batch_of_weights(backend: str) -> None:
    """A batch of no weights bound conv with groups * 0 and raised ZeroDivisionError (every other op gives an empty
    result of the per-example shape)."""
    x, w = slope.zeros((2, 3, 5, 5)), slope.zeros((0, 4, 3, 3, 3))
    assert slope.vmap(slope.conv, in_axes=(None, 0))(x, w).shape == (0, 2, 4, 3, 3)
    assert slope.vmap(slope.conv, in_axes=(0, 0))(slope.zeros((0, 2, 3, 5, 5)), w).shape == (0, 2, 4, 3, 3)
    assert slope.jit(slope.vmap(slope.conv, in_axes=(None, 0)))(x, w).shape == (0, 2, 4, 3, 3)


@pytest.mark.parametrize("jitted", [False, True])
def test_custom_jvp_rules_hold_under_second_derivatives(backend: str, jitted: bool) -> None:
    """The outer derivative of grad(f(x) ** 2) used sin's derivative, not the rule's: the inner linearization traced
    the custom function's primal straight through its body, so the rule was gone when the outer transform replayed it
    (2.1612 where JAX gives 8 cos^2 - 4 sin^2 = 5.2418). A custom_vjp's second derivative differentiates its backward
    function (JAX's too: 2.1612)."""
    f = slope.custom_jvp(lambda v: v.sin())
    f.defjvp(lambda p, t: (f(p[0]), 2.0 * p[0].cos() * t[0]))  # a derivative on purpose unlike sin's
    g = slope.custom_vjp(lambda v: v.sin())
    g.defvjp(lambda v: (v.sin(), v.cos()), lambda c, ct: (2.0 * c * ct,))
    maybe_jit = slope.jit if jitted else (lambda fn: fn)
    x, x1 = slope.tensor(0.5, dtype=slope.float64), slope.tensor([0.5], dtype=slope.float64)
    rule = 8 * math.cos(0.5) ** 2 - 4 * math.sin(0.5) ** 2
    square = lambda fn: lambda v: fn(v) ** 2  # noqa: E731
    assert maybe_jit(slope.grad(slope.grad(square(f))))(x).item() == pytest.approx(rule, rel=1e-12)
    assert maybe_jit(slope.hessian(lambda v: square(f)(v).sum()))(x1).numpy()[0, 0] == pytest.approx(rule, rel=1e-12)
    assert maybe_jit(lambda v: slope.jvp(slope.grad(square(f)), (v,), (slope.ones_like(v),))[1])(x).item() == (
        pytest.approx(rule, rel=1e-12)
    )
    backward = 4 * math.cos(0.5) ** 2 - 4 * math.sin(0.5) ** 2
    assert maybe_jit(slope.grad(slope.grad(square(g))))(x).item() == pytest.approx(backward, rel=1e-12)


def test_custom_jvp_symbolic_zeros_and_primal_outputs_checked(backend: str) -> None:
    """defjvp(rule, symbolic_zeros=True) gives None for a tangent known to be zero (JAX's option), so a rule can leave
    out a term that is 0 * inf there; by default the rule gets zeros. A rule's (or custom_vjp fwd's) primal output
    unlike the function's was taken silently: vjp's output had the fwd's shape."""
    seen = []

    def rule(primals: tuple, tangents: tuple) -> tuple:
        seen.append([t is None for t in tangents])
        return h(*primals), sum(t * p for t, p in zip(tangents, primals) if t is not None)

    h = slope.custom_jvp(lambda a, b: a * b)
    h.defjvp(rule, symbolic_zeros=True)
    x, c = slope.tensor([1.0, 2.0]), slope.tensor([3.0, 4.0])
    assert slope.jvp(lambda a: h(a, c), (x,), (slope.ones(2),))[1].tolist() == [1.0, 2.0]
    assert seen[-1] == [False, True]
    h.defjvp(rule)
    slope.jvp(lambda a: h(a, c), (x,), (slope.ones(2),))
    assert seen[-1] == [False, False]
    wrong = slope.custom_vjp(lambda v: v * 2.0)
    wrong.defvjp(lambda v: ((v * 2.0).sum(), None), lambda r, ct: (ct,))
    with pytest.raises(slope.TransformError, match=r"rule's outputs and tangents .* should be"):
        slope.vjp(wrong, x)


@pytest.mark.parametrize("kind", ["custom_jvp", "custom_vjp"])
def test_custom_rules_keep_python_numbers_as_numbers(backend: str, kind: str) -> None:
    """A Python float argument of a custom_jvp/custom_vjp function became a float32 tensor under grad/jvp: float64
    code lost precision (x * 0.1 gave 0.1000000015 as its derivative; JAX with x64 and PyTorch: 0.1) and float16
    code became float32; a bool flag could not steer the function. Numbers now reach the function and the rules as
    they are (their tangents: 0.0, or None with symbolic_zeros)."""
    fn = getattr(slope, kind)(lambda v, c, flag: v * c if flag else v)
    if kind == "custom_jvp":
        fn.defjvp(lambda p, t: (fn(*p), t[0] * p[1] + t[1] * p[0] if p[2] else t[0]))
    else:
        fn.defvjp(lambda v, c, flag: (fn(v, c, flag), c if flag else 1.0), lambda r, ct: (ct * r, None, None))
    for dtype, rel in ((slope.float64, 1e-15), (slope.float32, 1e-7), (slope.float16, 1e-3)):
        x = slope.tensor([1.0, 2.0], dtype=dtype)
        gradient = slope.grad(lambda v: fn(v, 0.1, True).sum())(x)
        assert gradient.dtype == dtype and gradient.numpy().tolist() == pytest.approx([0.1, 0.1], rel=rel)
        assert slope.jit(slope.grad(lambda v: fn(v, 0.1, False).sum()))(x).numpy().tolist() == [1.0, 1.0]
        if kind == "custom_jvp":
            out, tangent = slope.jvp(lambda v: fn(v, 0.1, True), (x,), (slope.ones_like(x),))
            assert out.dtype == tangent.dtype == dtype
            assert tangent.numpy().tolist() == pytest.approx([0.1, 0.1], rel=rel)


def test_custom_rules_numbers_keep_half_dtypes_ints_and_vmap(backend: str) -> None:
    """A number's tangent was a float32 0-d tensor: a float16 0-d (or vmapped element) rule output turned float32
    (refused), an int passed through to an output got a float tangent (refused), a custom_vjp bwd's 0 for an int
    input was refused, and grad(vmap(custom_vjp)) with a number residual mapped over the number (JAX: all fine)."""
    fn = slope.custom_jvp(lambda v, c, n: (v * c, n))
    fn.defjvp(lambda p, t: (fn(*p), (t[0] * p[1] + t[1] * p[0], t[2])))
    g = slope.custom_vjp(lambda v, c, n: v * c * n)
    g.defvjp(lambda v, c, n: (g(v, c, n), (c * n, n)), lambda r, ct: (ct * r[0], 0.0, 0))
    for dtype in (slope.float16, slope.bfloat16, slope.float32):
        x, row = slope.tensor(2.0, dtype=dtype), slope.tensor([1.0, 2.0, 3.0], dtype=dtype)
        gradient = slope.grad(lambda v: fn(v, 0.5, 3)[0])(x)
        assert gradient.dtype == dtype and gradient.item() == 0.5
        each = slope.grad(lambda v: slope.vmap(lambda e: fn(e, 0.5, 3)[0])(v).sum())(row)
        assert each.dtype == dtype and each.numpy().tolist() == [0.5] * 3
        assert slope.grad(lambda v: g(v, 0.5, 3))(x).item() == 1.5
        mapped = slope.grad(lambda v: slope.vmap(lambda e: g(e, 0.5, 3))(v).sum())(row)
        assert mapped.dtype == dtype and mapped.numpy().tolist() == [1.5] * 3


def test_forward_mode_of_fmod_by_a_constant_has_no_nan(backend: str) -> None:
    """fmod(x, c)'s tangent multiplied c's zero tangent by trunc(x / c), inf where x / c overflows: NaN (grad: 1;
    torch.func.jvp: 1)."""
    x = slope.tensor([1e30, -3e38])
    for fn in (lambda v: slope.fmod(v, 1e-30), lambda v: slope.remainder(v, 1e-30)):
        assert slope.jvp(fn, (x,), (slope.ones(2),))[1].tolist() == [1.0, 1.0]
        assert slope.jacfwd(fn)(x).numpy().diagonal().tolist() == [1.0, 1.0]


def test_vmap_passes_unmapped_non_arrays_and_has_aux_takes_a_list(backend: str) -> None:
    """vmap with in_axes None for a string or a function argument tried to make it a tensor (JAX and torch.func pass
    it through); grad(has_aux=True) refused an [output, aux] list (JAX takes a list too)."""
    x = slope.tensor([1.0, 2.0])
    assert slope.vmap(lambda v, mode: v * 2 if mode == "a" else v, in_axes=(0, None))(x, "a").tolist() == [2.0, 4.0]
    np.testing.assert_allclose(slope.vmap(lambda v, fn: fn(v), in_axes=(0, None))(x, slope.sin).numpy(), np.sin([1, 2]))
    gradient, aux = slope.grad(lambda v: [(v**2).sum(), v * 3], has_aux=True)(x)
    assert gradient.tolist() == [2.0, 4.0] and aux.tolist() == [3.0, 6.0]


@pytest.mark.parametrize("name", ["jacfwd", "jacrev"])
def test_jacobians_with_an_argnums_sequence_return_a_tuple(backend: str, name: str) -> None:
    """jacfwd(f, argnums=(0,))(x) returned the bare Jacobian, so JAX's `[0]` gave its first row, silently; a tuple of two
    was refused. As JAX: one Jacobian per argument, in a tuple inside each output leaf (hessian: ((H00, H01), ...))."""
    transform = getattr(slope, name)
    x, y = np.array([1.0, 2.0, 3.0], np.float32), np.array([1.5, -2.0], np.float32)
    (jx,) = transform(lambda v: v**2, argnums=(0,))(slope.tensor(x))
    np.testing.assert_allclose(jx.numpy(), np.diag(2 * x), rtol=1e-6)
    jx, jy = transform(lambda a, b: a * b.sum(), argnums=[0, 1])(slope.tensor(x), slope.tensor(y))
    np.testing.assert_allclose(jx.numpy(), np.diag(np.full(3, y.sum())), rtol=1e-6)
    np.testing.assert_allclose(jy.numpy(), np.repeat(x[:, None], 2, axis=1), rtol=1e-6)
    assert transform(lambda v: v**2, argnums=0)(slope.tensor(x)).shape == (3, 3)  # (an int: the Jacobian itself)
    with pytest.raises(slope.TransformError, match="repeats"):
        transform(lambda a, b: a * b.sum(), argnums=(0, 0))(slope.tensor(x), slope.tensor(y))


def test_hessian_with_an_argnums_sequence_nests_as_jax(backend: str) -> None:
    """hessian(f, argnums=(0, 1)) is ((d2f/da2, d2f/da db), (d2f/db da, d2f/db2)); argnums=(0,) gives ((H,),)."""
    a, b = np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0])
    f = lambda u, v: (u**2).sum() * (v**3).sum()  # noqa: E731
    ((haa, hab), (hba, hbb)) = slope.hessian(f, argnums=(0, 1))(slope.tensor(a), slope.tensor(b))
    np.testing.assert_allclose(haa.numpy(), 2 * (b**3).sum() * np.eye(3))
    np.testing.assert_allclose(hab.numpy(), np.outer(2 * a, 3 * b**2))
    np.testing.assert_allclose(hba.numpy(), np.outer(3 * b**2, 2 * a))
    np.testing.assert_allclose(hbb.numpy(), (a**2).sum() * np.diag(6 * b))
    ((h,),) = slope.hessian(lambda u: (u**3).sum(), argnums=(0,))(slope.tensor(a))
    np.testing.assert_allclose(h.numpy(), np.diag(6 * a))


def test_a_jitted_function_inside_other_transformations_takes_numbers_as_a_call_does(backend: str) -> None:
    """Inside vmap or grad, jit traced straight through and Python numbers kept the eager rules: vmap(jit(f)) of an int8
    batch times 300 gave int8 [-124, -36] where each jitted call gives int64 900, 1500 (JAX: vmap(f)(xs)[i] ==
    f(xs[i])), and a float16 input times 0.1 became float16 inside grad but float32 when called."""
    f = slope.jit(lambda x, n: x * n)
    x8 = slope.tensor(np.array([3, 5], np.int8))
    mapped = slope.vmap(f, in_axes=(0, None))(x8, 300)
    called = [f(x8[i], 300) for i in range(2)]
    assert mapped.dtype == called[0].dtype == slope.int64 and mapped.numpy().tolist() == [900, 1500]
    x16 = slope.tensor(np.array([1.0, 3.0], np.float16))
    assert slope.vmap(f, in_axes=(0, None))(x16, 0.1).dtype == f(x16[0], 0.1).dtype == slope.float32
    value, gradient = slope.value_and_grad(lambda a: f(a, 0.1).astype(slope.float32))(x16[1])
    assert value.numpy() == f(x16[1], 0.1).numpy() and gradient.dtype == slope.float16
    static = slope.jit(lambda x, scale, flag: x * scale if flag else x, static_argnums=(1, 2))
    assert slope.grad(lambda a: static(a, 2, True).sum())(slope.tensor([1.0, 2.0])).numpy().tolist() == [2.0, 2.0]


def test_jit_static_argnums_of_an_argument_given_by_keyword(backend: str) -> None:
    """As JAX: static_argnums=1 names the parameter too, so `f(x, n=3)` is static (it was "static_argnums 1 is out of
    range for 1 arguments"); a number out of range that no keyword names is still refused."""

    def f(x: slope.Tensor, n: int) -> slope.Tensor:
        return x.reshape(n, -1)

    jitted = slope.jit(f, static_argnums=1)
    assert jitted(slope.ones(6), n=3).shape == (3, 2) and jitted(slope.ones(6), 2).shape == (2, 3)
    assert slope.grad(lambda x: (jitted(x, n=3) * 2.0).sum())(slope.ones(6)).numpy().tolist() == [2.0] * 6
    with pytest.raises(slope.TransformError, match="static_argnums 3 is out of range for 2 arguments"):
        slope.jit(f, static_argnums=3)(slope.ones(6), 2)


def test_clip_promotes_a_0d_min_as_given_when_max_has_dimensions(backend: str) -> None:
    """clip masks min's gradient where min >= max; that `where` broadcast a 0-d min to max's shape first, so it then
    promoted as a tensor with dimensions: clamp(f16, f64 0-d, f16[2]) gave float64 (PyTorch: float16), and jitted with a
    traced 100, int16 x gave int64 where eager gives int16."""
    torch = pytest.importorskip("torch")
    x, hi = np.array([0.1, 2.0, 0.5], np.float16), np.array([0.2, 1.0, 1.0], np.float16)
    got = slope.clamp(slope.tensor(x), slope.tensor(np.float64(0.3)), slope.tensor(hi))
    want = torch.clamp(torch.tensor(x), torch.tensor(0.3, dtype=torch.float64), torch.tensor(hi))
    assert got.dtype == slope.float16 and got.numpy().tolist() == want.numpy().tolist()
    xi, hi16 = slope.tensor(np.array([1, 200], np.int16)), slope.tensor(np.array([150, 150], np.int16))
    jitted = slope.jit(lambda x, lo, hi: slope.clamp(x, lo, hi))(xi, 100, hi16)
    assert jitted.dtype == slope.clamp(xi, 100, hi16).dtype == slope.int16 and jitted.numpy().tolist() == [100, 150]
    lo = slope.tensor(np.array([0.0, 5.0, 0.3], np.float32))  # min >= max in the middle: its gradient goes to max
    grads = slope.grad(lambda a, b: slope.clamp(slope.tensor([4.0, 4.0, 0.1]), a, b).sum(), argnums=(0, 1))
    glo, ghi = grads(lo, slope.tensor(np.array([3.0, 2.0, 1.0], np.float32)))
    assert glo.numpy().tolist() == [0.0, 0.0, 1.0] and ghi.numpy().tolist() == [1.0, 1.0, 0.0]


def test_jit_of_a_builtin_with_static_argnums_is_made(backend: str) -> None:
    """static_argnums now name parameters from the signature; a builtin without one (max) must still be jittable."""
    jitted = slope.jit(max, static_argnums=1)
    assert jitted is not None and jitted.static_argnames == ()


def test_vmap_axis_size_maps_functions_of_unmapped_arguments():
    """JAX's axis_size: the batch size where no argument is mapped (vmap refused such a call), checked against the
    mapped arguments' size; results broadcast along the new axis, under jit and grad too."""
    x = slope.tensor([1.0, 2.0])
    np.testing.assert_array_equal(slope.vmap(lambda a: a * 2, in_axes=None, axis_size=3)(x).numpy(), [[2.0, 4.0]] * 3)
    np.testing.assert_array_equal(slope.vmap(lambda: slope.ones(2), axis_size=2)().numpy(), np.ones((2, 2)))
    summed = slope.jit(slope.vmap(lambda a: a.sum(), in_axes=None, axis_size=4))(x)
    np.testing.assert_array_equal(summed.numpy(), [3.0] * 4)
    grad = slope.grad(lambda a: slope.vmap(lambda b: (b * b).sum(), in_axes=None, axis_size=3)(a).sum())(x)
    np.testing.assert_array_equal(grad.numpy(), 3 * 2 * x.numpy())  # (three copies of d/da sum(a^2))
    assert slope.vmap(lambda a, b: a + b, in_axes=(0, None), axis_size=2)(slope.ones((2, 3)), x[:1]).shape == (2, 3)
    with pytest.raises(slope.TransformError, match="argument leaf 0 has size 2, axis_size has size 3"):
        slope.vmap(lambda a: a, axis_size=3)(x)
    with pytest.raises(slope.TransformError, match="maps no argument; one must have a batch axis, or give axis_size"):
        slope.vmap(lambda a: a, in_axes=None)(x)
    with pytest.raises(TypeError, match="slope.vmap: axis_size must be int"):
        slope.vmap(lambda a: a, in_axes=None, axis_size=2.0)(x)
