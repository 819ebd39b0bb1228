"""Type promotion against PyTorch: every pair of dtypes, every arrangement of operands, a set of operators.

For each operator, each pair of Slope dtypes and each arrangement (tensor op tensor, tensor op 0-d tensor, 0-d op
tensor, 0-d op 0-d, tensor op Python bool/int/float and the reverse), the result's dtype and values must equal
PyTorch's, or both must raise. PyTorch's rule (`torch.result_type`): operands fall into three categories, tensors with
dimensions, 0-d tensors and Python scalars; within a category dtypes promote pairwise (the README's table), and a
lower category only changes the result when its kind (bool < integer < float) is higher than every category above it.
"""

from __future__ import annotations

import math
import operator
from typing import Any, Callable

import numpy as np
import pytest

import slope
from slope_testing import backends_under_test

torch = pytest.importorskip("torch")

BACKENDS = backends_under_test()
DTYPES = slope.dtypes.all_dtypes
TORCH_DTYPES = {d.name: getattr(torch, d.name) for d in DTYPES}

# The first operand's data, the second's (no zeros: integer division by zero is outside this test), the 0-d values.
FIRST = {"bool": [True, False, True], "number": [3, 1, 2]}
SECOND = {"bool": [True, True, True], "number": [2, 3, 1]}
ZERO_DIM = {"bool": True, "number": 2}
SCALARS = (True, 2, 2.5)


def _binary(name: str) -> tuple[Callable, Callable]:
    return getattr(slope, name), getattr(torch, name)


# name -> (slope function, torch function, whether Python scalars are accepted: torch.maximum takes tensors only)
OPERATORS: dict[str, tuple[Callable, Callable, bool]] = {
    "add": (operator.add, operator.add, True),
    "sub": (operator.sub, operator.sub, True),
    "mul": (operator.mul, operator.mul, True),
    "true_divide": (operator.truediv, operator.truediv, True),
    "floor_divide": (operator.floordiv, operator.floordiv, True),
    "remainder": (operator.mod, operator.mod, True),
    "pow": (operator.pow, operator.pow, True),
    "maximum": (*_binary("maximum"), False),
    "minimum": (*_binary("minimum"), False),
    "eq": (operator.eq, operator.eq, True),
    "ne": (operator.ne, operator.ne, True),
    "lt": (operator.lt, operator.lt, True),
    "le": (operator.le, operator.le, True),
    "gt": (operator.gt, operator.gt, True),
    "ge": (operator.ge, operator.ge, True),
    "and": (operator.and_, operator.and_, True),
    "or": (operator.or_, operator.or_, True),
    "xor": (operator.xor, operator.xor, True),
    "where": (
        lambda x, y: slope.where(slope.tensor([True, False, True])[: _length(x, y)], x, y),
        lambda x, y: torch.where(torch.tensor([True, False, True])[: _length(x, y)], x, y),
        True,
    ),
}
TENSOR_ONLY = {  # operators of tensors with dimensions (0-d operands raise in PyTorch and in Slope)
    "cat": (lambda x, y: slope.cat([x, y]), lambda x, y: torch.cat([x, y])),
    "matmul": (lambda x, y: x.reshape(3, 1) @ y.reshape(1, 3), lambda x, y: x.reshape(3, 1) @ y.reshape(1, 3)),
}


def _length(*operands: Any) -> int:
    """The condition's length in `where`: 3 beside a tensor with dimensions, else 1."""
    return 3 if any(getattr(o, "ndim", 0) for o in operands) else 1


def _operand(library: str, dtype: slope.DType, role: dict, zero_dim: bool) -> Any:
    kind = "bool" if dtype == slope.bool_ else "number"
    data = ZERO_DIM[kind] if zero_dim else role[kind]
    array = np.array(data, dtype=np.float32 if dtype.is_float else np.int64).astype(dtype.numpy)
    if library == "torch":
        return torch.tensor(array.astype(np.float64) if dtype.name == "bfloat16" else array).to(
            TORCH_DTYPES[dtype.name]
        )
    return slope.tensor(array)


def _arrangements() -> list[tuple[str, Any, Any]]:
    """(arrangement, first, second): a dtype stands for a tensor of it, a Python scalar for itself."""
    cases = []
    for a in DTYPES:
        for b in DTYPES:
            cases += [("tensor-tensor", a, b), ("tensor-0d", a, b), ("0d-tensor", a, b), ("0d-0d", a, b)]
        for scalar in SCALARS:
            cases += [("tensor-scalar", a, scalar), ("scalar-tensor", scalar, a)]
    return cases


def _outcome(library: str, function: Callable, arrangement: str, first: Any, second: Any) -> tuple:
    """("ok", dtype name, values as float64) or ("raises", exception)."""
    kinds = arrangement.split("-")
    operands = []
    for kind, value, role in zip(kinds, (first, second), (FIRST, SECOND)):
        operands.append(value if kind == "scalar" else _operand(library, value, role, kind == "0d"))
    try:
        result = function(*operands)
    except Exception as error:  # noqa: BLE001 - any error counts as "raises" on both sides
        return ("raises", error)
    return ("ok", *_dtype_and_values(result))


def _dtype_and_values(result: Any) -> tuple[str, np.ndarray]:
    """A PyTorch or Slope result's dtype name and its values in float64."""
    if isinstance(result, torch.Tensor):
        return str(result.dtype).removeprefix("torch."), result.to(torch.float64).numpy()
    return result.dtype.name, np.asarray(result.numpy(), np.float64)


def _describe(name: str, arrangement: str, first: Any, second: Any) -> str:
    def label(value: Any) -> str:
        return value.name if isinstance(value, slope.DType) else repr(value)

    return f"{name} {arrangement} ({label(first)}, {label(second)})"


def _compare(name: str, functions: tuple[Callable, Callable], arrangement: str, first: Any, second: Any) -> str | None:
    """None when Slope agrees with PyTorch, else what differs."""
    expected = _outcome("torch", functions[1], arrangement, first, second)
    actual = _outcome("slope", functions[0], arrangement, first, second)
    case = _describe(name, arrangement, first, second)
    if expected[0] == "raises" or actual[0] == "raises":
        if expected[0] == actual[0]:
            return None
        shown = [f"{type(o[1]).__name__}: {str(o[1])[:80]}" if o[0] == "raises" else o[1] for o in (expected, actual)]
        return f"{case}: torch {shown[0]}, slope {shown[1]}"
    if expected[1] != actual[1]:
        return f"{case}: torch {expected[1]}, slope {actual[1]}"
    low_precision = expected[1] in ("float16", "bfloat16")
    if not np.allclose(actual[2], expected[2], rtol=1e-2 if low_precision else 1e-6, atol=0, equal_nan=True):
        return f"{case}: torch {expected[2].tolist()}, slope {actual[2].tolist()}"
    return None


def all_cases() -> list[tuple[str, tuple[Callable, Callable], str, Any, Any]]:
    """Every (operator, functions, arrangement, first, second) this test checks."""
    cases = []
    for name, (mine, theirs, scalars) in OPERATORS.items():
        for arrangement, first, second in _arrangements():
            if scalars or "scalar" not in arrangement:
                cases.append((name, (mine, theirs), arrangement, first, second))
    for name, functions in TENSOR_ONLY.items():
        cases += [(name, functions, "tensor-tensor", a, b) for a in DTYPES for b in DTYPES]
    return cases


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_combination_matches_torch(backend):
    """Result dtype and values (or raising) equal PyTorch's for every operator, dtype pair and arrangement."""
    cases = all_cases()
    with slope.use_backend(backend):
        mismatches = [m for case in cases if (m := _compare(*case)) is not None]
    listed = "\n".join(mismatches[:60])
    assert not mismatches, f"{len(mismatches)} of {len(cases)} combinations differ from PyTorch:\n{listed}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_combinations_under_jit_and_vmap_match_torch(backend):
    """The rules hold for traced values too: a traced 0-d tensor (or a vmapped scalar) is a 0-d tensor, not a scalar."""
    cases = [case for case in all_cases() if case[0] in ("add", "eq") and "scalar" not in case[2]]
    with slope.use_backend(backend):
        jitted = [(name, (slope.jit(mine), theirs), *rest) for name, (mine, theirs), *rest in cases]
        mismatches = [m for case in jitted if (m := _compare(*case)) is not None]
        x = slope.tensor(np.float16([1, 2, 3]))
        assert slope.vmap(lambda v: x + v)(slope.tensor([1.0, 2.0])).dtype == slope.float16
    assert not mismatches, "\n".join(mismatches[:60])


def test_pairwise_table_matches_torch():
    """`slope.dtypes.promote` (two tensors with dimensions) is `torch.promote_types` for every pair."""
    for a in DTYPES:
        for b in DTYPES:
            expected = str(torch.promote_types(TORCH_DTYPES[a.name], TORCH_DTYPES[b.name])).removeprefix("torch.")
            assert slope.dtypes.promote(a, b).name == expected, (a, b)


def test_readme_table_is_the_promotion_table():
    """The README's promotion table says what `slope.dtypes.promote` does."""
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    by_short = {d.short: d for d in DTYPES}
    header = next(line for line in readme.splitlines() if line.startswith("| | b8 |"))
    columns = [by_short[c.strip()] for c in header.strip("|").split("|")[1:]]
    rows = [line for line in readme.splitlines() if line.startswith("| **")]
    assert len(rows) == len(DTYPES) == len(columns)
    for line in rows:
        cells = [c.strip().strip("*") for c in line.strip("|").split("|")]
        row = by_short[cells[0]]
        assert [by_short[c] for c in cells[1:]] == [slope.dtypes.promote(row, c) for c in columns], line


# Python scalars outside the result dtype: ints wrap around modulo 2**bits, floats round (to inf), as in PyTorch.
# (label, data, dtype, operator, scalar, scalar first)
SCALAR_EDGES = [
    ("uint8 + 300", [1, 2, 255], "uint8", operator.add, 300, False),
    ("300 - uint8", [1, 2, 255], "uint8", operator.sub, 300, True),
    ("uint8 - 5", [3, 9, 0], "uint8", operator.sub, 5, False),
    ("uint8 == -1", [255, 1, 0], "uint8", operator.eq, -1, False),
    ("int8 == 300", [44, 1, -56], "int8", operator.eq, 300, False),
    ("int8 < 200", [44, 1, -57], "int8", operator.lt, 200, False),
    ("int8 * 2**40", [3, 1, -2], "int8", operator.mul, 2**40, False),
    ("int16 + 70000", [1, -2, 3], "int16", operator.add, 70000, False),
    ("int32 + 2**33 + 5", [1, -2, 3], "int32", operator.add, 2**33 + 5, False),
    ("int64 + 2**63", [3, 0, -1], "int64", operator.add, 2**63, False),
    ("int64 + 2**64 - 1", [3, 0, -1], "int64", operator.add, 2**64 - 1, False),
    ("int8 + 2**64 raises", [3], "int8", operator.add, 2**64, False),
    ("float32 + 2**64 raises", [1.0], "float32", operator.add, 2**64, False),
    ("float16 < 10**30 raises", [1.0], "float16", operator.lt, 10**30, False),
    ("-2**63 - 1 * float64 raises", [1.0], "float64", operator.mul, -(2**63) - 1, True),
    ("int8 / 2**64 raises", [3], "int8", operator.truediv, 2**64, False),
    ("int64 - 2**63 - 1 raises", [3], "int64", operator.add, -(2**63) - 1, False),
    ("float16 * 1e10", [3, -1, 0.5], "float16", operator.mul, 1e10, False),
    ("float16 < 70000", [3, 65504, -1], "float16", operator.lt, 70000, False),
    ("float32 * 1e300", [3, -1, 0.5], "float32", operator.mul, 1e300, False),
    ("bfloat16 + 1e39", [3, -1, 0.5], "bfloat16", operator.add, 1e39, False),
    ("int32 == 2.0**24", [2**24 + 1, 3, 0], "int32", operator.eq, float(2**24), False),
    ("bool == 2", [True, False, True], "bool", operator.eq, 2, False),
    ("uint8 / -1 (divided as floats)", [1, 200, 0], "uint8", operator.truediv, -1, False),
    ("-3 / uint8", [1, 200, 3], "uint8", operator.truediv, -3, True),
    ("int8 / 300", [44, 1, -56], "int8", operator.truediv, 300, False),
    ("bool / -2", [True, False, True], "bool", operator.truediv, -2, False),
    ("bool + 2**63 raises", [True, False], "bool", operator.add, 2**63, False),
    ("2**64 - 1 * bool raises", [True, False], "bool", operator.mul, 2**64 - 1, True),
    ("bool == 2**63 raises", [True, False], "bool", operator.eq, 2**63, False),
    ("bool + 2**63 - 1", [True, False], "bool", operator.add, 2**63 - 1, False),
]


def _edge(library: str, data: list, dtype: str, op: Callable, scalar: Any, first: bool, jitted: bool) -> tuple:
    """("ok", dtype name, values) of `tensor op scalar` (or `scalar op tensor`), or ("raises", the error): an int beyond
    int64 (PyTorch's uint64 scalar) with bool tensors is torch's RuntimeError, Slope's DTypeError."""
    function = (lambda t: op(scalar, t)) if first else (lambda t: op(t, scalar))
    if library == "torch":
        x = torch.tensor(data, dtype=torch.float64 if dtype != "bool" else torch.bool).to(TORCH_DTYPES[dtype])
    else:
        x = slope.cast(slope.tensor(np.array(data, np.float64 if dtype != "bool" else np.bool_)), dtype)
        function = slope.jit(function) if jitted else function
    try:
        result = function(x)
    except (OverflowError, slope.DTypeError) as error:
        return ("raises", error)
    except RuntimeError as error:
        if "Promotion for uint16, uint32, uint64 types is not supported" not in str(error):
            raise
        return ("raises", error)
    name, values = _dtype_and_values(result)
    return ("ok", name, values.tolist())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("jitted", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("label, data, dtype, op, scalar, first", SCALAR_EDGES, ids=[e[0] for e in SCALAR_EDGES])
def test_python_scalars_out_of_range_match_torch(backend, jitted, label, data, dtype, op, scalar, first):
    """`uint8_tensor + 300` wraps, `int8_tensor == 300` compares with the wrapped value, floats overflow to inf."""
    expected = _edge("torch", data, dtype, op, scalar, first, False)
    with slope.use_backend(backend):
        actual = _edge("slope", data, dtype, op, scalar, first, jitted)
    if expected[0] == "raises":
        assert actual[0] == "raises", f"{label}: torch raises {expected[1]!r}, slope gives {actual}"
    else:
        assert actual == expected, label


# Other results whose dtype follows from promotion: (label, function of the library, `slope` or `torch`).
RESULT_DTYPES = [
    ("sum of bool", lambda lib: lib.tensor([True, False, True]).sum()),
    ("sum of int8", lambda lib: lib.tensor(np.int8([100, 100, 100])).sum()),
    ("prod of bool", lambda lib: lib.tensor([True, True]).prod()),
    ("prod of uint8", lambda lib: lib.tensor(np.uint8([200, 200])).prod()),
    ("prod of int16", lambda lib: lib.tensor(np.int16([300, 300])).prod()),
    ("cumsum of int32", lambda lib: lib.tensor(np.int32([2**30, 2**30])).cumsum(0)),
    ("int8 / int8", lambda lib: lib.tensor(np.int8([7, -7])) / lib.tensor(np.int8([2, 2]))),
    ("int64 / 2", lambda lib: lib.tensor([7, -7]) / 2),
    ("bool / bool", lambda lib: lib.tensor([True, False]) / lib.tensor([True, True])),
    ("int32 ** 2.0", lambda lib: lib.tensor(np.int32([3, -2])) ** 2.0),
    ("bool ** 2", lambda lib: lib.tensor([True, False]) ** 2),
    ("bool ** True", lambda lib: lib.tensor([True, False]) ** True),
    ("float32 ** inf", lambda lib: lib.tensor([0.5, 1.0, 2.0]) ** float("inf")),
    ("float16 ** 3.0", lambda lib: lib.tensor(np.float16([0.5, -2.0])) ** 3.0),
    ("mixed list int float", lambda lib: lib.tensor([1, 2.5])),
    ("mixed list bool int", lambda lib: lib.tensor([True, 2])),
    ("mixed list bool float", lambda lib: lib.tensor([[True], [2.5]])),
    (
        "where int8, 0-d float64",
        lambda lib: lib.where(
            lib.tensor([True, False]), lib.tensor(np.int8([1, 2])), lib.tensor(2.5, dtype=lib.float64)
        ),
    ),
    ("where uint8, -1", lambda lib: lib.where(lib.tensor([True, False]), lib.tensor(np.uint8([1, 2])), -1)),
    ("where 1, 2.0", lambda lib: lib.where(lib.tensor([True, False]), 1, 2.0)),
    ("cat uint8 int8", lambda lib: lib.cat([lib.tensor(np.uint8([1])), lib.tensor(np.int8([-1]))])),
    ("cat bool int16", lambda lib: lib.cat([lib.tensor([True]), lib.tensor(np.int16([-1]))])),
]


def _result(library: Any, function: Callable) -> tuple:
    result = function(library)
    dtype, values = _dtype_and_values(result)
    return dtype, values.tolist()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("label, function", RESULT_DTYPES, ids=[r[0] for r in RESULT_DTYPES])
def test_result_dtypes_match_torch(backend, label, function):
    """sum/prod/cumsum of bools and integers give int64, true division of integers float32, and so on."""
    with slope.use_backend(backend):
        assert _result(slope, function) == _result(torch, function), label


@pytest.mark.parametrize("backend", BACKENDS)
def test_errors_of_promotion_name_the_function(backend):
    """What PyTorch refuses, Slope refuses with an error naming the function and the dtypes."""
    with slope.use_backend(backend):
        b, i = slope.tensor([True, False]), slope.tensor([1, 2])
        for bad in (lambda: b - b, lambda: i - True, lambda: b - 1, lambda: 2.5 - b, lambda: slope.sub(i, b)):
            with pytest.raises(slope.DTypeError, match="slope.sub: .*bool"):
                bad()
        with pytest.raises(slope.DTypeError, match="slope.matmul: .*int64 and float32"):
            i.reshape(1, 2) @ slope.ones(2, 1)
        with pytest.raises(slope.DTypeError, match="slope.pow: .*bool"):
            b**b
        with pytest.raises(slope.DTypeError, match="slope.add: .*float32.*str"):
            slope.ones(2) + "a"


NUMPY_SCALARS = [np.float32(2.5), np.float64(-1.5), np.float16(0.5), np.int64(3), np.int8(-2), np.uint8(200),
                 np.int64(300), np.int32(-7), np.float32(-0.0), np.float32(np.nan), np.float32(np.inf)]  # fmt: skip


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "float64", "int32", "int8", "uint8"])
def test_numpy_scalars_count_as_python_numbers(backend, dtype):
    # PyTorch takes NumPy's numbers (a float32 array's element, say) as Python numbers: weak, wrapped into the
    # tensor's dtype; Slope refused all but np.float64 ("cannot combine float32 with float32 np.float32(2.5)")
    ops = {"*": operator.mul, "+": operator.add, "reflected -": lambda x, y: y - x, "/": operator.truediv}
    with slope.use_backend(backend):
        x, expected_x = (
            slope.tensor([1, 2, 3], dtype=getattr(slope, dtype)),
            torch.tensor([1, 2, 3], dtype=TORCH_DTYPES[dtype]),
        )
        for scalar in NUMPY_SCALARS:
            for label, op in ops.items():
                got, expected = op(x, scalar), op(expected_x, scalar)
                assert got.dtype.name == str(expected.dtype).removeprefix("torch."), (label, scalar)
                np.testing.assert_array_equal(
                    got.numpy().astype(np.float64), expected.double().numpy(), str((label, scalar))
                )
            try:  # (PyTorch's where refuses a number its dtype cannot hold, where Slope wraps it: README)
                expected = torch.where(torch.tensor([True, False, True]), expected_x, scalar.item())
            except RuntimeError:
                continue
            where = slope.where(slope.tensor([True, False, True]), x, scalar)
            assert where.dtype.name == str(expected.dtype).removeprefix("torch.")
            np.testing.assert_array_equal(where.numpy().astype(np.float64), expected.double().numpy())


# where, clamp, an int power and item assignment convert a Python int with PyTorch's checked conversion (arithmetic
# wraps it): one that an integer dtype cannot hold raises (ints from -max still wrap into unsigned dtypes); Slope gave
# clip(int8, max=200) -56s
CHECKED = [
    ("where int8, 200", lambda lib, x: lib.where(lib.tensor([True, False, True]), x, 200), "int8"),
    ("where int8, 127", lambda lib, x: lib.where(lib.tensor([True, False, True]), x, 127), "int8"),
    ("where uint8, -1", lambda lib, x: lib.where(lib.tensor([True, False, True]), x, -1), "uint8"),
    ("where uint8, 256", lambda lib, x: lib.where(lib.tensor([True, False, True]), x, 256), "uint8"),
    ("where int8, 2.5", lambda lib, x: lib.where(lib.tensor([True, False, True]), x, 2.5), "int8"),
    ("clip int8, max 200", lambda lib, x: (lib.clip if lib is slope else lib.clamp)(x, None, 200), "int8"),
    ("clip int8, min -200", lambda lib, x: (lib.clip if lib is slope else lib.clamp)(x, -200), "int8"),
    ("clip int16, 0..300", lambda lib, x: (lib.clip if lib is slope else lib.clamp)(x, 0, 300), "int16"),
    ("clip int32, 2**40", lambda lib, x: (lib.clip if lib is slope else lib.clamp)(x, None, 2**40), "int32"),
    ("clip uint8, -1", lambda lib, x: (lib.clip if lib is slope else lib.clamp)(x, -1), "uint8"),
    ("int8 ** 128", lambda lib, x: x**128, "int8"),  # (2 ** 256 wrapped the exponent to 0: 1, not 0)
    ("int8 ** 127", lambda lib, x: x**127, "int8"),
    ("uint8 ** 256", lambda lib, x: x**256, "uint8"),
    ("int16 ** 70000", lambda lib, x: x**70000, "int16"),
    ("int8 x[0] = 300", lambda lib, x: _set(lib, x, 300), "int8"),
    ("int8 x[0] = -129", lambda lib, x: _set(lib, x, -129), "int8"),
    ("uint8 x[0] = -1", lambda lib, x: _set(lib, x, -1), "uint8"),
    ("int32 x[0] = 2.5", lambda lib, x: _set(lib, x, 2.5), "int32"),
    ("int32 x[0] = 2**40", lambda lib, x: _set(lib, x, 2**40), "int32"),
]


def _set(lib: Any, x: Any, value: Any) -> Any:
    """x with x[0] = value: Slope's index_update, PyTorch's item assignment on a copy."""
    if lib is slope:
        return slope.index_update(x, 0, value)
    copy = x.clone()
    copy[0] = value
    return copy


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("jitted", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("label, function, dtype", CHECKED, ids=[c[0] for c in CHECKED])
def test_where_clip_pow_and_item_assignment_check_python_ints(backend, jitted, label, function, dtype):
    data = np.array([1, 2, 100]).astype(dtype)
    try:
        expected = function(torch, torch.tensor(data))
    except RuntimeError:
        expected = None
    with slope.use_backend(backend):
        run = slope.jit(lambda x: function(slope, x)) if jitted else (lambda x: function(slope, x))
        if expected is None:
            with pytest.raises(ValueError, match=rf"slope\.(where|clip|pow|index_update): -?\d+ does not fit {dtype}"):
                run(slope.tensor(data))
            return
        got = run(slope.tensor(data))
    assert got.dtype.name == str(expected.dtype).removeprefix("torch.") and got.tolist() == expected.tolist(), label


def _clamp(lib: Any, x: Any, low: Any, high: Any = None) -> Any:
    return (lib.clip if lib is slope else lib.clamp)(x, low, high)


# clamp, where into float32 and pow of a float16/bfloat16 x check that a Python number fits the float dtype, as
# PyTorch does (RuntimeError "value cannot be converted to type float without overflow"); Slope gave inf. PyTorch's
# where into float16/bfloat16, pow of float32 and arithmetic (x + 1e39) give inf, and so does Slope.
FLOAT_CHECKED = [
    ("clip float32, min 1e39", lambda lib, x: _clamp(lib, x, 1e39), "float32"),
    ("clip float32, max -1e39", lambda lib, x: _clamp(lib, x, None, -1e39), "float32"),
    ("clip float32, max 3.4028235e38", lambda lib, x: _clamp(lib, x, 1.0, 3.4028235e38), "float32"),
    ("clip float32, 2**200", lambda lib, x: _clamp(lib, x, None, 2**200), "float32"),
    ("clip float32, min inf", lambda lib, x: _clamp(lib, x, math.inf), "float32"),
    ("clip float16, min 65504.0", lambda lib, x: _clamp(lib, x, 65504.0), "float16"),
    ("clip float16, min 65504.5", lambda lib, x: _clamp(lib, x, 65504.5), "float16"),
    ("clip float16, min -70000", lambda lib, x: _clamp(lib, x, -70000, 1.0), "float16"),
    ("clip bfloat16, max 1e39", lambda lib, x: _clamp(lib, x, None, 1e39), "bfloat16"),
    ("clip float64, min 1e308", lambda lib, x: _clamp(lib, x, 1e308), "float64"),
    ("clip int64, min 1e39", lambda lib, x: _clamp(lib, x, 1e39), "int64"),
    ("where float32, 1e39", lambda lib, x: lib.where(lib.tensor([True, False, True]), x, 1e39), "float32"),
    ("where float32, -1e39", lambda lib, x: lib.where(lib.tensor([True, False, True]), -1e39, x), "float32"),
    ("where int64, 1e39", lambda lib, x: lib.where(lib.tensor([True, False, True]), x, 1e39), "int64"),
    ("where float32, inf", lambda lib, x: lib.where(lib.tensor([True, False, True]), x, -math.inf), "float32"),
    ("where float16, 1e39", lambda lib, x: lib.where(lib.tensor([True, False, True]), x, 1e39), "float16"),
    ("where bfloat16, 1e39", lambda lib, x: lib.where(lib.tensor([True, False, True]), x, 1e39), "bfloat16"),
    ("where float64, 1e39", lambda lib, x: lib.where(lib.tensor([True, False, True]), x, 1e39), "float64"),
    ("float16 ** 70000.0", lambda lib, x: x**70000.0, "float16"),
    ("float16 ** -70000", lambda lib, x: x**-70000, "float16"),
    ("float16 ** 65504.0", lambda lib, x: x**65504.0, "float16"),
    ("bfloat16 ** 1e39", lambda lib, x: x**1e39, "bfloat16"),
    ("float16 ** inf", lambda lib, x: x**math.inf, "float16"),
    ("float32 ** 1e39", lambda lib, x: x**1e39, "float32"),
    ("float32 + 1e39", lambda lib, x: x + 1e39, "float32"),
    ("float16 * 70000.0", lambda lib, x: x * 70000.0, "float16"),
    ("full_like float32, 1e39", lambda lib, x: lib.full_like(x, 1e39), "float32"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("jitted", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("label, function, dtype", FLOAT_CHECKED, ids=[c[0] for c in FLOAT_CHECKED])
def test_where_clip_and_pow_check_python_floats_as_torch(backend, jitted, label, function, dtype):
    data = [1.0, 2.0, 100.0]
    try:
        expected = function(torch, torch.tensor(data).to(TORCH_DTYPES[dtype]))
    except (RuntimeError, OverflowError):  # (OverflowError: an int beyond int64)
        expected = None
    with slope.use_backend(backend):
        run = slope.jit(lambda x: function(slope, x)) if jitted else (lambda x: function(slope, x))
        if expected is None:
            with pytest.raises(ValueError, match=r"slope\.(where|clip|pow|full_like): \S+ does not fit \w*float\d+"):
                run(slope.tensor(data).astype(dtype))
            return
        got = run(slope.tensor(data).astype(dtype))
    assert got.dtype.name == str(expected.dtype).removeprefix("torch.") and got.tolist() == expected.tolist(), label


TENSOR_DATA = {
    "np.float64 in a list": [np.float64(0.1)],
    "float beside np.float64": [0.5, np.float64(0.1)],
    "np.int8 in a list": [np.int8(5)],
    "int beside np.int8": [np.int8(5), 3],
    "np.int8 beside np.uint8": [np.int8(5), np.uint8(3)],
    "float beside np.float16": [np.float16(1), 2.0],
    "float beside np.int8": [np.int8(1), 2.5],
    "nested np.float64": [[np.float64(1)], [2.0]],
    "float64 arrays in a list": [np.array([0.1]), np.array([0.2])],
    "bool beside np.int8": [True, np.int8(2)],
    "Python ints": [[1, 2], [3, 4]],
    "Python floats": [1.5, 2.0],
}


@pytest.mark.parametrize("label", sorted(TENSOR_DATA))
def test_tensor_of_a_list_keeps_the_dtypes_inside_it(backend, label):
    # NumPy numbers and arrays inside a list counted as Python numbers: [np.float64(0.1)] became float32
    data = TENSOR_DATA[label]
    expected = torch.tensor(data)
    result = slope.tensor(data)
    assert result.dtype.name == str(expected.dtype).removeprefix("torch."), label
    assert result.tolist() == expected.tolist()
    assert slope.tensor([slope.tensor(0.1, dtype=slope.float64)]).dtype == slope.float64


@pytest.mark.parametrize("backend", BACKENDS)
def test_true_divide_takes_each_integer_operand_straight_to_float(backend):
    # int8 x / a 0-d int64 200 (or a Python int, which jit traces as one) cast 200 to int8 (-56) before dividing
    i8, u8 = np.array([1, -2, 3], np.int8), np.array([1, 2], np.uint8)
    cases = [
        (lambda x, n: x / n, i8, 200, "int64"),
        (lambda x, n: n / x, i8, 200, "int64"),
        (lambda x, n: x / n, u8, -1, "int64"),
        (lambda x, n: x / n, i8, 70000, "int32"),
        (lambda x, n: x / n, np.array([True, False]), 300, "int16"),
    ]
    with slope.use_backend(backend):
        for function, data, n, zero_dim in cases:
            expected = function(torch.tensor(data), torch.tensor(n, dtype=TORCH_DTYPES[zero_dim])).numpy()
            for mine in (function, slope.jit(function)):
                got = mine(slope.tensor(data), slope.tensor(n, dtype=zero_dim))
                assert got.dtype == slope.float32 and np.array_equal(got.numpy(), expected), (data, n, got)
            assert np.array_equal(slope.jit(function)(slope.tensor(data), n).numpy(), expected), (data, n)
