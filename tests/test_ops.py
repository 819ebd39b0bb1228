"""Every operator and procedure, every case of its row (broadcasting, 0-d, empty), against NumPy on every backend.

The table is slope_testing.table (the slope-testing distribution); here each case runs forward as `slope.NAME(...)`
and as a Tensor method, and its gradient is checked against finite differences in float64. The Python operators (`+`, `@`, `<`, `~`, ...) have a
table of their own below.
"""

from __future__ import annotations

import operator

import numpy as np
import pytest

import slope
from slope_testing import backends_under_test
from slope_testing.checks import (
    ALL_DTYPES,
    FORWARD_TOLERANCE,
    Data,
    Prepared,
    assert_close,
    check_eager,
    check_grad,
    np_threefry2x32,
    seeded_rng,
    tolerance,
)
from slope_testing.matrix import rows
from slope_testing.table import ROWS, known_failure

BACKENDS = backends_under_test()
REGISTERED = sorted(set(slope.plugins.operators) | set(slope.plugins.procedures))
# functions that are not called on a tensor they transform: creation, random keys, lists of tensors, x[...]
NOT_METHODS = {
    "tensor",
    "zeros",
    "ones",
    "full",
    "arange",
    "linspace",
    "eye",
    "rand",
    "randn",
    "randint",
    "random_uniform",
    "random_normal",
    "cat",
    "concatenate",
    "stack",
    "getitem",
    "index_update",
}


def forward_dtype(row) -> slope.DType:
    """The dtype a case runs forward at: float32 where the row takes floats, else int64, else its first."""
    for dtype in (slope.float32, slope.int64):
        if dtype in row.dtypes:
            return dtype
    return row.dtypes[0]


def _params(kind: str) -> list:
    params = []
    for backend in BACKENDS:
        for name, row in sorted(ROWS.items()):
            for k, case in enumerate(row.cases):
                if kind == "method" and not row.has_method_form(case):
                    continue
                differentiable = any(isinstance(spec, Data) for spec in case.inputs)
                if kind == "gradient" and not (differentiable and any(d.is_float for d in row.dtypes)):
                    continue
                reason = known_failure(backend, name, f"case:{case.label}", kind)
                marks = [pytest.mark.xfail(reason=reason, strict=True)] if reason else []
                params.append(pytest.param(backend, name, k, id=f"{backend}:{name}:{case.label}", marks=marks))
    return params


@pytest.mark.parametrize(("backend", "name", "index"), _params("forward"))
def test_forward(backend: str, name: str, index: int) -> None:
    row = ROWS[name]
    dtype = forward_dtype(row)
    with slope.use_backend(backend):
        check_eager(Prepared(row, row.cases[index], dtype, seeded_rng(name, index, "forward")))


@pytest.mark.parametrize(("backend", "name", "index"), _params("method"))
def test_method(backend: str, name: str, index: int) -> None:
    row = ROWS[name]
    case = row.cases[index]
    with slope.use_backend(backend):
        prepared = Prepared(row, case, forward_dtype(row), seeded_rng(name, index, "forward"))
        first = prepared.tensors[0]
        assert callable(getattr(first, name, None)), f"Tensor has no method {name}"
        prepared.check_outputs(row.method(case)(*prepared.tensors), f"Tensor.{name}")


@pytest.mark.parametrize(("backend", "name", "index"), _params("gradient"))
def test_gradient(backend: str, name: str, index: int) -> None:
    row = ROWS[name]
    with slope.use_backend(backend) as active:
        dtype = slope.float64 if slope.float64 in active.dtypes else slope.float32
        if dtype not in row.dtypes:
            dtype = next(d for d in (slope.float32, slope.float16) if d in row.dtypes)
        check_grad(Prepared(row, row.cases[index], dtype, seeded_rng(name, index, "gradient")), also_jit=False)


# ----------------------------------------------------------------------------------------------- coverage


def test_every_registered_function_is_a_function_and_a_method() -> None:
    for name in REGISTERED:
        assert getattr(slope, name) is slope.functions[name], name
        assert callable(getattr(slope.Tensor, name, None)), f"Tensor.{name} is missing"


def test_every_method_is_exercised_as_a_method() -> None:
    every_row = rows()  # (plugins' rows included: a plugin's operator is a method too)
    exercised = {name for name, row in every_row.items() if any(row.has_method_form(c) for c in row.cases)}
    missing = sorted(set(REGISTERED) - exercised - NOT_METHODS)
    assert not missing, f"no method-form case in slope_testing.table for: {missing}"


def test_every_row_has_shape_variety() -> None:
    """Rows with tensor inputs test more than one case (shapes, arguments or keyword forms)."""
    single = sorted(name for name, row in ROWS.items() if row.cases[0].inputs and len(row.cases) < 2)
    assert not single, f"rows with a single case: {single}"


def test_threefry_reference_matches_the_published_vectors() -> None:
    """The NumPy Threefry-2x32 the random rows compare with reproduces Random123's known-answer vectors."""
    vectors = [
        ((0, 0), (0, 0), (0x6B200159, 0x99BA4EFE)),
        ((0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF), (0x1CB996FC, 0xBB002BE7)),
        ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0)),
    ]
    for key, counter, expected in vectors:
        y0, y1 = np_threefry2x32(key[0], key[1], counter[0], counter[1])
        assert (int(y0), int(y1)) == expected


# ----------------------------------------------------------------------------------------------- Python operators

F32 = np.array([[1.5, -2.0, 0.5], [3.0, -0.25, 2.0]], np.float32)
F32_ROW = np.array([0.5, -1.5, 2.0], np.float32)
I64 = np.array([[7, -7, 3], [-2, 5, 0]], np.int64)
I64_ROW = np.array([2, -3, 4], np.int64)
I32 = I64.astype(np.int32)
U8 = np.array([[1, 6, 3], [0, 9, 12]], np.uint8)
F16 = F32.astype(np.float16)
BOOL = np.array([[True, False, True], [False, False, True]])
BOOL_ROW = np.array([True, True, False])
MATRIX = np.array([[1.0, 2.0], [-1.0, 0.5], [0.25, 3.0]], np.float32)


# (expression, operands, expected dtype, NumPy reference): operands are arrays (made tensors) or Python scalars
BINARY_TABLE = [
    ("x + y", operator.add, (F32, F32_ROW), slope.float32, np.add),
    ("x - y", operator.sub, (F32, F32_ROW), slope.float32, np.subtract),
    ("x * y", operator.mul, (I64, I64_ROW), slope.int64, np.multiply),
    ("x / y (floats)", operator.truediv, (F32, F32_ROW), slope.float32, np.true_divide),
    ("x / y (ints give float32)", operator.truediv, (I64, I64_ROW), slope.float32, np.true_divide),
    ("x // y (ints, toward -inf)", operator.floordiv, (I64, I64_ROW), slope.int64, np.floor_divide),
    ("x // y (floats)", operator.floordiv, (F32, F32_ROW), slope.float32, np.floor_divide),
    ("x % y (ints, sign of y)", operator.mod, (I64, I64_ROW), slope.int64, np.remainder),
    ("x % y (floats, sign of y)", operator.mod, (F32, F32_ROW), slope.float32, np.remainder),
    ("x ** y", operator.pow, (np.abs(F32) + 0.5, F32_ROW), slope.float32, np.power),
    ("x ** 2", operator.pow, (F32, 2), slope.float32, np.power),
    ("x ** 0.5", operator.pow, (np.abs(F32), 0.5), slope.float32, np.power),
    ("x @ y", operator.matmul, (F32, MATRIX), slope.float32, np.matmul),
    ("x @ y (vector)", operator.matmul, (F32, F32_ROW), slope.float32, np.matmul),
    ("x < y", operator.lt, (F32, F32_ROW), slope.bool_, np.less),
    ("x <= y", operator.le, (I64, I64_ROW), slope.bool_, np.less_equal),
    ("x == y", operator.eq, (I64, 0), slope.bool_, np.equal),
    ("x != y", operator.ne, (F32, 2.0), slope.bool_, np.not_equal),
    ("x > y", operator.gt, (U8, 5), slope.bool_, np.greater),
    ("x >= y", operator.ge, (F32, F32_ROW), slope.bool_, np.greater_equal),
    ("x & y (ints)", operator.and_, (I64, I64_ROW), slope.int64, np.bitwise_and),
    ("x | y (uint8)", operator.or_, (U8, 6), slope.uint8, np.bitwise_or),
    ("x ^ y (bools)", operator.xor, (BOOL, BOOL_ROW), slope.bool_, np.bitwise_xor),
    ("x & y (bool, scalar)", operator.and_, (BOOL, True), slope.bool_, np.bitwise_and),
    ("2.0 - x (reflected)", operator.sub, (2.0, F32), slope.float32, np.subtract),
    ("3 / x (reflected)", operator.truediv, (3, F32), slope.float32, np.true_divide),
    ("7 // x (reflected)", operator.floordiv, (7, I64_ROW), slope.int64, np.floor_divide),
    ("2 ** x (reflected)", operator.pow, (2.0, F32), slope.float32, np.power),
    ("1 + x (reflected)", operator.add, (1, I32), slope.int32, np.add),
    ("float16 * 2.0 keeps float16", operator.mul, (F16, 2.0), slope.float16, np.multiply),
    ("int64 * 2.5 gives float32", operator.mul, (I64, 2.5), slope.float32, np.multiply),
    ("int32 + int64 gives int64", operator.add, (I32, I64_ROW), slope.int64, np.add),
    ("bool + 1 gives int64", operator.add, (BOOL, 1), slope.int64, np.add),
    ("float16 + int64 gives float16", operator.add, (F16, I64_ROW), slope.float16, np.add),
    ("float32 * float64 gives float64", operator.mul, (F32, F32_ROW.astype(np.float64)), slope.float64, np.multiply),
]
UNARY_TABLE = [
    ("-x", operator.neg, F32, slope.float32, np.negative),
    ("-x (ints)", operator.neg, I64, slope.int64, np.negative),
    ("+x", operator.pos, F32, slope.float32, lambda x: x),
    ("abs(x)", abs, F32, slope.float32, np.abs),
    ("abs(x) (ints)", abs, I32, slope.int32, np.abs),
    ("~x (ints)", operator.invert, I64, slope.int64, np.invert),
    ("~x (uint8)", operator.invert, U8, slope.uint8, np.invert),
    ("~x (bools)", operator.invert, BOOL, slope.bool_, np.invert),
    ("x.T", lambda x: x.T, F32, slope.float32, lambda x: x.T),
    ("x.mT", lambda x: x.mT, F32.reshape(1, 2, 3), slope.float32, lambda x: np.swapaxes(x, -1, -2)),
    ("x.float()", lambda x: x.float(), I64, slope.float32, lambda x: x.astype(np.float32)),
    ("x.double()", lambda x: x.double(), F32, slope.float64, lambda x: x.astype(np.float64)),
    ("x.half()", lambda x: x.half(), F32, slope.float16, lambda x: x.astype(np.float16)),
    ("x.int()", lambda x: x.int(), F32, slope.int32, lambda x: x.astype(np.int32)),
    ("x.long()", lambda x: x.long(), F32, slope.int64, lambda x: x.astype(np.int64)),
    ("x.bool()", lambda x: x.bool(), F32, slope.bool_, lambda x: x.astype(bool)),
    ("x.detach()", lambda x: x.detach(), F32, slope.float32, lambda x: x),
    ("x.contiguous()", lambda x: x.contiguous(), F32, slope.float32, lambda x: x),
]


def _operand(value):
    return slope.tensor(value) if isinstance(value, np.ndarray) else value


def _compare(result, expected, dtype: slope.DType, what: str) -> None:
    assert isinstance(result, slope.Tensor), f"{what}: got {type(result).__name__}"
    assert result.dtype == dtype, f"{what}: dtype {result.dtype.name}, expected {dtype.name}"
    expected = np.asarray(expected)
    assert result.shape == expected.shape, f"{what}: shape {result.shape}, expected {expected.shape}"
    rtol, atol = tolerance(FORWARD_TOLERANCE, dtype)
    assert_close(result.numpy(), expected.astype(np.float64), rtol, atol, what)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("what", "op", "operands", "dtype", "reference"), BINARY_TABLE, ids=[c[0] for c in BINARY_TABLE]
)
def test_python_binary_operator(backend, what, op, operands, dtype, reference) -> None:
    with slope.use_backend(backend):
        result = op(*(_operand(v) for v in operands))
    with np.errstate(divide="ignore"):
        expected = reference(*(np.asarray(v, np.float64) if dtype.is_float else v for v in operands))
    _compare(result, expected, dtype, what)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("what", "op", "operand", "dtype", "reference"), UNARY_TABLE, ids=[c[0] for c in UNARY_TABLE])
def test_python_unary_operator_and_conversion(backend, what, op, operand, dtype, reference) -> None:
    with slope.use_backend(backend):
        result = op(slope.tensor(operand))
    _compare(result, reference(operand), dtype, what)


@pytest.mark.parametrize("backend", BACKENDS)
def test_operators_broadcast_and_keep_every_dtype(backend) -> None:
    """`x + y` and `x * y` on every dtype pair of equal kind broadcast like NumPy and keep the dtype."""
    with slope.use_backend(backend) as active:
        for dtype in ALL_DTYPES:
            if dtype not in active.dtypes or dtype == slope.bool_:
                continue
            x = np.array([[1, 2, 0], [3, 1, 2]]).astype(dtype.numpy)
            y = np.array([2, 1, 3]).astype(dtype.numpy)
            for op, reference in ((operator.add, np.add), (operator.mul, np.multiply)):
                _compare(
                    op(slope.tensor(x), slope.tensor(y)),
                    reference(x.astype(np.float64), y),
                    dtype,
                    f"{op.__name__} {dtype.name}",
                )
