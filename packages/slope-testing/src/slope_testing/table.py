"""The operator table: one row per registered operator and procedure, written once as data.

Each row lists its cases (inputs, arguments, NumPy reference); the first case is the one the conformance matrix
runs under every transformation, dtype and backend, and test_ops runs every case (broadcasting, 0-d and empty
shapes, method form). A new operator or procedure of Slope's own joins both by adding its row here: `add(Row(...))`;
a plugin's operators give theirs through the `slope_conformance_rows` hook (see slope_testing.matrix).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import replace

import numpy as np

import slope

from .checks import (
    ALL_DTYPES,
    BITS,
    FLOATS,
    INTEGERS,
    NUMBERS,
    Case,
    Data,
    Fixed,
    FloatData,
    Key,
    Row,
    np_conv,
    np_conv_transpose,
    np_cross_entropy,
    np_erf,
    np_global_key,
    np_log_softmax,
    np_logsumexp,
    np_normal,
    np_pool,
    np_randint,
    np_softmax,
    np_uniform,
)

ROWS: dict[str, Row] = {}

# What a backend is known to get wrong: {(backend, name, where, detail): reason}, "*" matching anything. In the
# conformance matrix `where` is the transformation and `detail` the dtype; in test_ops `where` is "case:<label>" and
# `detail` the test (forward, method, gradient). Each entry is a strict xfail: fixing the backend means deleting it.
KNOWN_FAILURES: dict[tuple[str, str, str, str], str] = {}


def known_failure(backend: str, name: str, where: str, detail: str) -> str | None:
    """The reason a cell is expected to fail on a backend, or None."""
    for key, reason in KNOWN_FAILURES.items():
        if all(pattern in ("*", value) for pattern, value in zip(key, (backend, name, where, detail))):
            return reason
    return None


def add(row: Row) -> Row:
    """Register a row (one per operator or procedure name)."""
    assert row.name not in ROWS, f"two rows for {row.name}"
    ROWS[row.name] = row
    return row


def alias(name: str, of: str) -> None:
    """A registered alias (e.g. clamp for clip): the same cases, called through the alias."""
    add(replace(ROWS[of], name=name))


def to_float32_if_int(dtype: slope.DType) -> slope.DType:
    return dtype if dtype.is_float else slope.float32


def always(dtype: slope.DType):
    return lambda _: dtype


def int64_if_int(dtype: slope.DType) -> slope.DType:
    return dtype if dtype.is_float else slope.int64


SHAPES_UNARY = [((2, 3), "2x3"), ((), "0-d"), ((0, 3), "empty"), ((2, 1, 2), "3-d")]
SHAPES_BINARY = [
    (((2, 3), (3,)), "broadcast"),
    (((2, 1), (1, 3)), "broadcast both"),
    (((), (2,)), "0-d"),
    (((0, 3), (3,)), "empty"),
    (((2, 3), (2, 3)), "same shape"),
]


def unary(name: str, ref, data: Data = Data(), dtypes=FLOATS, out_dtype=None, **row) -> Row:
    cases = [Case([data.with_shape(shape)], ref, label=label) for shape, label in SHAPES_UNARY]
    return add(Row(name, cases, dtypes, out_dtype, **row))


def binary(name: str, ref, x: Data = Data(), y: Data = Data(), dtypes=NUMBERS, out_dtype=None, **row) -> Row:
    cases = [Case([x.with_shape(sx), y.with_shape(sy)], ref, label=label) for (sx, sy), label in SHAPES_BINARY]
    return add(Row(name, cases, dtypes, out_dtype, **row))


def floating_unary(name: str, ref, data: Data = Data(), **row) -> Row:
    """A float operation that also takes integers (computed in float32, as PyTorch does)."""
    return unary(name, lambda x: ref(as_float(x)), data, dtypes=NUMBERS, out_dtype=to_float32_if_int, **row)


POSITIVE = Data(low=0.5, high=2.0)
DISTINCT = Data(distinct=True)
NONZERO = Data(nonzero=True)
# a second distinct grid shifted by 1/8, so elementwise pairs never tie
DISTINCT_SHIFTED = Data(low=-1.875, high=2.125, distinct=True)
DISTINCT_SIXTEENTH = Data(low=-1.9375, high=2.0625, distinct=True)  # a third grid, 1/16 from both


def np_trunc_div(x, y):
    if np.issubdtype(np.asarray(x).dtype, np.floating):
        return x / y
    return np.trunc(x.astype(np.float64) / y).astype(np.result_type(x, y))


def np_div_trunc(x, y):
    """PyTorch's div(rounding_mode="trunc"): floats truncate the true quotient, integers divide as C."""
    return np.trunc(x / y) if np.issubdtype(np.asarray(x).dtype, np.floating) else np_trunc_div(x, y)


def np_floor_divide(x, y):
    if np.issubdtype(np.asarray(x).dtype, np.floating):
        return np.floor(x / y)
    return np.floor_divide(x, y)


def np_remainder(x, y):
    if np.issubdtype(np.asarray(x).dtype, np.floating):
        return x - np.floor(x / y) * y
    return np.remainder(x, y)


def true_divide_ref(x, y):
    return x.astype(np.float64) / y


def truncate(x, dtype):
    return (np.trunc(x) if np.issubdtype(x.dtype, np.floating) else x).astype(dtype)


def as_float(x):
    return x.astype(np.float64) if not np.issubdtype(x.dtype, np.floating) else x


# ----------------------------------------------------------------------------------------------- unary operators

floating_unary("exp", np.exp)
floating_unary("log", np.log, Data(low=0.5, high=3.0))
floating_unary("sin", np.sin, Data(low=-3.0, high=3.0))
floating_unary("sqrt", np.sqrt, Data(low=0.5, high=3.0))
floating_unary("tanh", np.tanh)
# the erf procedure (Abramowitz-Stegun 7.1.26, used where a backend lacks erf) is accurate to 1.5e-7
ERF_ERROR = 2e-7  # 1.5e-7 plus rounding
floating_unary("erf", np_erf, atol_floor=ERF_ERROR)
unary("invert", np.invert, Data(low=-8, high=8), dtypes=BITS)
unary("stop_gradient", lambda x: x, dtypes=ALL_DTYPES, zero_derivative=True)
unary("detach", lambda x: x, dtypes=ALL_DTYPES, zero_derivative=True)  # (stop_gradient under PyTorch's name)
add(
    Row(
        "cast",
        [
            Case([Data()], lambda x: as_float(x), params=(slope.float32,), label="to float32"),
            Case(
                [Data(low=-3, high=3)],
                lambda x: truncate(x, np.int32),
                params=(slope.int32,),
                label="to int32",
                out_dtype=always(slope.int32),
            ),
            Case(
                [Data(choices=(-1.0, 0.0, 0.5))],
                lambda x: x != 0,
                params=(slope.bool_,),
                label="to bool",
                out_dtype=always(slope.bool_),
            ),
            Case(
                [Data(shape=())],
                lambda x: as_float(x),
                params=(slope.float64,),
                label="0-d to float64",
                out_dtype=always(slope.float64),
            ),
        ],
        ALL_DTYPES,
        out_dtype=always(slope.float32),
    )
)

# ----------------------------------------------------------------------------------------------- binary operators

binary("add", np.add)
binary("sub", np.subtract)
binary("mul", np.multiply)
# PyTorch's div: true division (integers too); rounded toward zero or down with rounding_mode (the core operator's
# own truncating integer division is what "trunc" gives integers)
add(
    Row(
        "div",
        [Case([Data().with_shape(sx), NONZERO.with_shape(sy)], true_divide_ref, label=label)
         for (sx, sy), label in SHAPES_BINARY]
        + [Case([DISTINCT.with_shape((2, 3)), Data(choices=(1.5, -1.25, 0.75), nonzero=True, shape=(3,))], ref,
                kwargs={"rounding_mode": mode}, label=mode, out_dtype=lambda d: d)
           for mode, ref in (("trunc", np_div_trunc), ("floor", np_floor_divide))],
        NUMBERS,
        out_dtype=to_float32_if_int,
    )
)  # fmt: skip
add(
    Row(
        "pow",
        [
            Case([POSITIVE, Data(low=0.0, high=2.5).with_shape((3,))], np.power, label="broadcast"),
            Case([POSITIVE, Data(low=-2.0, high=2.0)], np.power, label="negative exponents"),
            Case([POSITIVE.with_shape(()), Data(low=-1.0, high=2.0)], np.power, label="0-d"),
            Case([POSITIVE.with_shape((0, 2)), Data(shape=(2,))], np.power, label="empty"),
            Case([Data()], lambda x: x**3, params=(3,), label="integer power 3"),
            Case([POSITIVE], lambda x: x**0.5, params=(0.5,), label="float power 0.5"),
        ],
        NUMBERS,
    )
)
binary("maximum", np.maximum, DISTINCT, DISTINCT_SHIFTED)
binary("equal", np.equal, DISTINCT, DISTINCT, dtypes=ALL_DTYPES, out_dtype=always(slope.bool_))
binary("less", np.less, DISTINCT, DISTINCT, dtypes=ALL_DTYPES, out_dtype=always(slope.bool_))
binary("greater", np.greater, DISTINCT, DISTINCT, dtypes=ALL_DTYPES, out_dtype=always(slope.bool_))
binary("bitwise_and", np.bitwise_and, Data(low=-8, high=8), Data(low=-8, high=8), dtypes=BITS)
binary("bitwise_or", np.bitwise_or, Data(low=-8, high=8), Data(low=-8, high=8), dtypes=BITS)
binary("bitwise_xor", np.bitwise_xor, Data(low=-8, high=8), Data(low=-8, high=8), dtypes=BITS)


def _where_method(condition: slope.Tensor, x: slope.Tensor, y: slope.Tensor) -> slope.Tensor:
    return x.where(condition, y)  # PyTorch's order: x where the condition holds, else y


add(
    Row(
        "where",
        [
            Case(
                [Fixed(np.array([[True], [False]])), Data(), Data(shape=(3,))],
                np.where,
                label="broadcast",
                method_call=_where_method,
            ),
            Case(
                [Fixed(np.array([True, False, True])), Data(shape=(3,)), Data(shape=(3,))],
                np.where,
                label="1-d",
                method_call=_where_method,
            ),
            Case(
                [Fixed(np.array(True)), Data(shape=()), Data(shape=())],
                np.where,
                label="0-d",
                method_call=_where_method,
            ),
            Case(
                [Fixed(np.zeros((0, 3), bool)), Data(shape=(0, 3)), Data(shape=(3,))],
                np.where,
                label="empty",
                method_call=_where_method,
            ),
        ],
        ALL_DTYPES,
    )
)

# ----------------------------------------------------------------------------------------------- reductions


def reduction_cases(ref, data: Data = Data(), empty_ok: bool = True) -> list[Case]:
    cases = [
        Case([data.with_shape((2, 3, 2))], lambda x: ref(x, axis=1), params=(1,), label="dim 1"),
        Case([data], lambda x: ref(x, axis=None), label="all"),
        Case(
            [data.with_shape((2, 3, 2))],
            lambda x: ref(x, axis=(0, 2), keepdims=True),
            params=((0, 2), True),
            label="dims (0, 2) keepdim",
        ),
        Case(
            [data.with_shape((2, 3))],
            lambda x: ref(x, axis=-1, keepdims=True),
            kwargs={"dim": -1, "keepdim": True},
            label="dim=-1 keyword",
        ),
        Case([data.with_shape(())], lambda x: ref(x, axis=None), label="0-d"),
    ]
    if empty_ok:
        cases.append(Case([data.with_shape((0, 3))], lambda x: ref(x, axis=0), params=(0,), label="empty reduced"))
    cases.append(Case([data.with_shape((0, 3))], lambda x: ref(x, axis=1), params=(1,), label="empty kept"))
    return cases


def np_sum(x, axis=None, keepdims=False):
    return np.sum(
        x, axis=axis, keepdims=keepdims, dtype=np.float64 if np.issubdtype(x.dtype, np.floating) else np.int64
    )


add(Row("sum", reduction_cases(np_sum), ALL_DTYPES, out_dtype=int64_if_int))
add(Row("max", reduction_cases(np.max, DISTINCT, empty_ok=False), ALL_DTYPES))
add(Row("min", reduction_cases(np.min, DISTINCT, empty_ok=False), ALL_DTYPES))
add(Row("amax", reduction_cases(np.max, DISTINCT, empty_ok=False), ALL_DTYPES))
add(Row("amin", reduction_cases(np.min, DISTINCT, empty_ok=False), ALL_DTYPES))
add(
    Row(
        "mean",
        reduction_cases(lambda x, **k: np.mean(as_float(x), **k), empty_ok=False),
        NUMBERS,
        out_dtype=to_float32_if_int,
    )
)


def np_prod(x, axis=None, keepdims=False):
    return np.prod(
        x, axis=axis, keepdims=keepdims, dtype=np.float64 if np.issubdtype(x.dtype, np.floating) else np.int64
    )


add(
    Row(
        "prod",
        reduction_cases(np_prod, Data(low=-1.5, high=1.5))
        + [
            Case(
                [Data(shape=(3, 4), choices=(0.0, 0.0, 1.5, -2.0))], lambda x: np_prod(x, 1), params=(1,), label="zeros"
            ),
        ],
        NUMBERS,
        out_dtype=int64_if_int,
    )
)
BOOL_OR_UINT8 = lambda dtype: slope.uint8 if dtype == slope.uint8 else slope.bool_  # noqa: E731 - as PyTorch
add(Row("all", reduction_cases(lambda x, **k: np.all(x, **k)), ALL_DTYPES, out_dtype=BOOL_OR_UINT8))
add(Row("any", reduction_cases(lambda x, **k: np.any(x, **k)), ALL_DTYPES, out_dtype=BOOL_OR_UINT8))


def moments_cases(ref) -> list[Case]:
    x = Data(shape=(3, 4))
    return [
        Case([x], lambda v: ref(v, axis=1, ddof=1), params=(1,), label="dim 1"),
        Case([x], lambda v: ref(v, ddof=1), label="all"),
        Case(
            [x],
            lambda v: ref(v, axis=0, ddof=0, keepdims=True),
            kwargs={"dim": 0, "correction": 0, "keepdim": True},
            label="correction 0",
        ),
        Case([x], lambda v: ref(v, axis=1, ddof=0), kwargs={"dim": 1, "unbiased": False}, label="unbiased=False"),
        Case([Data(shape=(2, 3, 2))], lambda v: ref(v, axis=(0, 2), ddof=1), params=((0, 2),), label="dims (0, 2)"),
    ]


add(Row("var", moments_cases(lambda v, **k: np.var(as_float(v), **k)), NUMBERS, out_dtype=to_float32_if_int, tol=2.0))
add(Row("std", moments_cases(lambda v, **k: np.std(as_float(v), **k)), NUMBERS, out_dtype=to_float32_if_int, tol=2.0))


def arg_cases(ref) -> list[Case]:
    x = DISTINCT.with_shape((3, 4))
    return [
        Case([x], lambda v: ref(v, axis=1), params=(1,), label="dim 1"),
        Case([x], lambda v: ref(v), label="flattened"),
        Case([x], lambda v: ref(v, axis=0, keepdims=True), kwargs={"dim": 0, "keepdim": True}, label="keepdim"),
        Case(
            [Fixed(np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 0.0]]))],
            lambda v: ref(v, axis=1),
            params=(1,),
            label="ties pick the first",
        ),
        Case([Data(shape=())], lambda v: ref(v), label="0-d"),
    ]


add(Row("argmax", arg_cases(np.argmax), NUMBERS, out_dtype=always(slope.int64)))  # bool refused, as PyTorch
add(Row("argmin", arg_cases(np.argmin), NUMBERS, out_dtype=always(slope.int64)))  # bool refused, as PyTorch
add(
    Row(
        "logsumexp",
        [
            Case([Data(shape=(2, 3, 2))], lambda x: np_logsumexp(as_float(x), axis=1), params=(1,), label="dim 1"),
            Case([Data()], lambda x: np_logsumexp(as_float(x)), label="all"),
            Case(
                [Data(shape=(2, 3, 2))],
                lambda x: np_logsumexp(as_float(x), axis=(0, 2), keepdims=True),
                params=((0, 2), True),
                label="keepdim",
            ),
            Case(
                [Data(low=50.0, high=60.0)],
                lambda x: np_logsumexp(as_float(x), axis=1),
                params=(1,),
                label="large values stay finite",
            ),
            Case([Data(shape=())], lambda x: np_logsumexp(as_float(x)), label="0-d"),
        ],
        NUMBERS,
        out_dtype=to_float32_if_int,
    )
)
for _name, _ref in (("softmax", np_softmax), ("log_softmax", np_log_softmax)):
    add(
        Row(
            _name,
            [
                Case([Data(shape=(2, 4))], lambda x, r=_ref: r(as_float(x), axis=-1), params=(-1,), label="last dim"),
                Case([Data(shape=(3, 2, 2))], lambda x, r=_ref: r(as_float(x), axis=0), params=(0,), label="dim 0"),
                Case(
                    [Data(low=80.0, high=90.0, shape=(4,))],
                    lambda x, r=_ref: r(as_float(x), axis=0),
                    params=(0,),
                    label="large values",
                ),
                Case([Data(shape=(0, 3))], lambda x, r=_ref: r(as_float(x), axis=1), params=(1,), label="empty"),
            ],
            NUMBERS,
            out_dtype=to_float32_if_int,
        )
    )


def np_layer_norm(x: np.ndarray, eps: float = 1e-5, rstd: bool = False) -> np.ndarray:
    """x normalised over its last dimension (or 1 / sqrt(var + eps), kept), computed in float64."""
    wide = x.astype(np.float64)
    centered = wide - wide.mean(-1, keepdims=True)
    r = 1.0 / np.sqrt((centered * centered).mean(-1, keepdims=True) + eps)
    out = r if rstd else centered * r
    return out.astype(x.dtype) if np.issubdtype(x.dtype, np.floating) else out


for _name, _rstd in (("layer_norm", False), ("layer_norm_rstd", True)):
    add(
        Row(
            _name,
            [
                Case([Data(shape=(3, 5))], lambda x, r=_rstd: np_layer_norm(x, rstd=r), label="last dim"),
                Case([Data(shape=(2, 3, 4))], lambda x, r=_rstd: np_layer_norm(x, 0.5, r), params=(0.5,), label="eps"),
                Case(
                    [Data(low=80.0, high=90.0, shape=(4, 6))],
                    lambda x, r=_rstd: np_layer_norm(x, rstd=r),
                    label="mean large against the spread",
                ),
                Case([Data(shape=(0, 3))], lambda x, r=_rstd: np_layer_norm(x, rstd=r), label="empty"),
            ],
            NUMBERS,
            out_dtype=to_float32_if_int,
        )
    )
add(
    Row(
        "cumsum",
        [
            Case(
                [Data(shape=(3, 5))],
                lambda x: np.cumsum(x, axis=1, dtype=x.dtype if x.dtype.kind == "f" else np.int64),
                params=(1,),
                label="dim 1",
            ),
            Case(
                [Data(shape=(5,))],
                lambda x: np.cumsum(x, dtype=x.dtype if x.dtype.kind == "f" else np.int64),
                params=(0,),
                label="1-d",
            ),
            Case(
                [Data(shape=(4, 2))],
                lambda x: np.cumsum(x, axis=0, dtype=x.dtype if x.dtype.kind == "f" else np.int64),
                kwargs={"dim": 0},
                label="dim 0",
            ),
            Case(
                [Data(shape=(0, 3))],
                lambda x: np.cumsum(x, axis=0, dtype=x.dtype if x.dtype.kind == "f" else np.int64),
                params=(0,),
                label="empty",
            ),
        ],
        ALL_DTYPES,
        out_dtype=int64_if_int,
        tol=2.0,
    )
)

# ----------------------------------------------------------------------------------------------- shape operators


def np_pad_torch(x, pad, value=0.0):
    """PyTorch's F.pad: pairs from the last dimension backwards; negative amounts crop."""
    widths = [[0, 0] for _ in range(x.ndim)]
    for i in range(len(pad) // 2):
        widths[x.ndim - 1 - i] = [pad[2 * i], pad[2 * i + 1]]
    crop = tuple(slice(max(-lo, 0), x.shape[d] - max(-hi, 0)) for d, (lo, hi) in enumerate(widths))
    x = x[crop]
    return np.pad(x, [(max(lo, 0), max(hi, 0)) for lo, hi in widths], constant_values=value)


add(
    Row(
        "reshape",
        [
            Case([Data()], lambda x: x.reshape(3, 2), params=((3, 2),), label="2x3 to 3x2"),
            Case([Data(shape=(2, 3, 2))], lambda x: x.reshape(4, -1), params=(4, -1), label="varargs with -1"),
            Case([Data(shape=())], lambda x: x.reshape(1, 1), params=((1, 1),), label="0-d"),
            Case([Data(shape=(0, 3))], lambda x: x.reshape(3, 0), params=((3, 0),), label="empty"),
        ],
        ALL_DTYPES,
    )
)
add(
    Row(
        "view",
        [
            Case([Data()], lambda x: x.reshape(6), params=(6,), label="flat"),
            Case([Data(shape=(4,))], lambda x: x.reshape(2, 2), params=((2, 2),), label="tuple"),
        ],
        ALL_DTYPES,
    )
)
add(
    Row(
        "expand",
        [
            Case(
                [Data(shape=(3, 1))],
                lambda x: np.broadcast_to(x, (2, 3, 4)),
                params=((2, 3, 4),),
                label="new and size-1 dims",
            ),
            Case([Data(shape=(1, 3))], lambda x: np.broadcast_to(x, (2, 3)), params=(2, -1), label="varargs with -1"),
            Case([Data(shape=())], lambda x: np.broadcast_to(x, (2,)), params=((2,),), label="0-d"),
            Case([Data(shape=(1, 3))], lambda x: np.broadcast_to(x, (0, 3)), params=((0, 3),), label="to empty"),
        ],
        ALL_DTYPES,
    )
)
add(
    Row(
        "expand_as",
        [
            Case(
                [Data(shape=(3, 1)), Fixed(np.zeros((2, 3, 4), np.float32))],
                lambda x, o: np.broadcast_to(x, o.shape),
                label="3-d",
            ),
            Case(
                [Data(shape=()), Fixed(np.zeros((2,), np.int64))], lambda x, o: np.broadcast_to(x, o.shape), label="0-d"
            ),
        ],
        ALL_DTYPES,
    )
)
add(
    Row(
        "permute",
        [
            Case([Data(shape=(2, 3, 4))], lambda x: np.transpose(x, (2, 0, 1)), params=((2, 0, 1),), label="3-d"),
            Case(
                [Data(shape=(2, 3, 4))],
                lambda x: np.transpose(x, (1, 2, 0)),
                params=(1, -1, 0),
                label="varargs, negative",
            ),
            Case([Data(shape=(0, 3))], lambda x: x.T, params=((1, 0),), label="empty"),
        ],
        ALL_DTYPES,
    )
)
add(
    Row(
        "transpose",
        [
            Case([Data(shape=(2, 3, 4))], lambda x: np.swapaxes(x, 0, 2), params=(0, 2), label="0 and 2"),
            Case([Data()], lambda x: x.T, params=(0, 1), label="2-d"),
            Case([Data(shape=(2, 3, 4))], lambda x: np.swapaxes(x, -1, -2), params=(-1, -2), label="negative"),
        ],
        ALL_DTYPES,
    )
)
add(
    Row(
        "slice",
        [
            Case([Data(shape=(4, 5))], lambda x: x[1:4:2, 0:5:3], params=((1, 0), (4, 5), (2, 3)), label="steps"),
            Case([Data(shape=(4, 5))], lambda x: x[1:3, 2:4], params=((1, 2), (3, 4)), label="no step"),
            Case([Data(shape=(4,))], lambda x: x[2:2], params=((2,), (2,)), label="empty result"),
        ],
        ALL_DTYPES,
    )
)
add(
    Row(
        "pad",
        [
            Case([Data()], lambda x: np_pad_torch(x, (1, 2, 0, 1)), params=((1, 2, 0, 1),), label="torch order"),
            Case(
                [Data()],
                lambda x: np.pad(x, [(1, 0), (0, 2)], constant_values=1.0),
                kwargs={"lo": (1, 0), "hi": (0, 2), "value": 1},
                label="lo/hi and value",
            ),
            Case(
                [Data(shape=(3, 4))],
                lambda x: np_pad_torch(x, (-1, 2, 1, -1)),
                params=((-1, 2, 1, -1),),
                label="negative crops",
            ),
            Case([Data(shape=(0, 2))], lambda x: np_pad_torch(x, (1, 1, 1, 0)), params=((1, 1, 1, 0),), label="empty"),
        ],
        ALL_DTYPES,
    )
)
add(
    Row(
        "flip",
        [
            Case([Data(shape=(2, 3, 2))], lambda x: np.flip(x, (0, 2)), params=((0, 2),), label="two dims"),
            Case([Data()], lambda x: np.flip(x, 1), params=(-1,), label="negative dim"),
            Case([Data(shape=(0, 3))], lambda x: np.flip(x, 1), params=(1,), label="empty"),
        ],
        ALL_DTYPES,
    )
)


def joined(name: str, np_fn) -> None:
    fn = slope.functions[name]
    add(
        Row(
            name,
            [
                Case(
                    [Data(), Data(shape=(2, 1)), Data()],
                    lambda *a: np_fn(a, axis=1),
                    call=lambda *t: fn(list(t), 1),
                    label="dim 1",
                    method=False,
                ),
                Case(
                    [Data(shape=(2,)), Data(shape=(3,))],
                    lambda *a: np_fn(a),
                    call=lambda *t: fn(list(t)),
                    label="1-d",
                    method=False,
                ),
                Case(
                    [Data(shape=(0, 2)), Data(shape=(2, 2))],
                    lambda *a: np_fn(a, axis=0),
                    call=lambda *t: fn(t, dim=0),
                    label="with empty",
                    method=False,
                ),
            ],
            ALL_DTYPES,
        )
    )


joined("cat", np.concatenate)
joined("concatenate", np.concatenate)
_stack = slope.functions["stack"]
add(
    Row(
        "stack",
        [
            Case(
                [Data(), Data(), Data()],
                lambda *a: np.stack(a, axis=1),
                call=lambda *t: _stack(list(t), 1),
                label="dim 1",
                method=False,
            ),
            Case(
                [Data(shape=()), Data(shape=())],
                lambda *a: np.stack(a),
                call=lambda *t: _stack(list(t)),
                label="0-d",
                method=False,
            ),
            Case(
                [Data(), Data()],
                lambda *a: np.stack(a, axis=-1),
                call=lambda *t: _stack(t, dim=-1),
                label="dim -1",
                method=False,
            ),
        ],
        ALL_DTYPES,
    )
)
add(
    Row(
        "squeeze",
        [
            Case([Data(shape=(2, 1, 3, 1))], lambda x: np.squeeze(x), label="all"),
            Case([Data(shape=(2, 1, 3, 1))], lambda x: np.squeeze(x, 1), params=(1,), label="dim 1"),
            Case([Data(shape=(2, 1, 3, 1))], lambda x: x, params=(0,), label="size-2 dim kept"),
            Case([Data(shape=(1,))], lambda x: np.squeeze(x), label="to 0-d"),
        ],
        ALL_DTYPES,
    )
)
add(
    Row(
        "unsqueeze",
        [
            Case([Data()], lambda x: x[:, None], params=(1,), label="dim 1"),
            Case([Data()], lambda x: x[..., None], params=(-1,), label="dim -1"),
            Case([Data(shape=())], lambda x: x[None], params=(0,), label="0-d"),
        ],
        ALL_DTYPES,
    )
)
add(
    Row(
        "flatten",
        [
            Case([Data(shape=(2, 3, 2))], lambda x: x.reshape(-1), label="all"),
            Case([Data(shape=(2, 3, 2, 2))], lambda x: x.reshape(2, 6, 2), params=(1, 2), label="dims 1..2"),
            Case([Data(shape=())], lambda x: x.reshape(1), label="0-d"),
            Case([Data(shape=(2, 0, 3))], lambda x: x.reshape(2, 0), params=(1,), label="empty"),
        ],
        ALL_DTYPES,
    )
)

# ----------------------------------------------------------------------------------------------- indexing


def item_case(shape: tuple, index, label: str, data: Data = Data()) -> Case:
    return Case([data.with_shape(shape)], lambda x: x[index], call=lambda x: x[index], label=label, method=False)


add(
    Row(
        "getitem",
        [
            item_case(
                (3, 4, 2),
                (slice(1, None), np.array([3, 0, 3]), slice(None, None, -1)),
                "slices, int array, negative step",
            ),
            item_case((3, 4), (1, slice(1, 3)), "int and slice"),
            item_case((3, 4), -1, "negative int"),
            item_case((5, 4), (slice(None, None, -2), slice(3, 0, -1)), "negative steps"),
            item_case((3, 4), (None, Ellipsis, 1), "None and Ellipsis"),
            item_case((2, 3, 4), (Ellipsis, None, slice(1, 3)), "Ellipsis then None"),
            item_case((3, 4), np.array([2, 0, 2]), "int array with repeats"),
            item_case((3, 4), (np.array([[0], [2]]), np.array([1, 3])), "broadcast int arrays"),
            item_case((3, 4), (slice(None), np.array([0, -1])), "int array after slice"),
            item_case((3, 4), np.array([True, False, True]), "bool mask on rows"),
            item_case((2, 3), np.array([[True, False, True], [False, True, False]]), "full bool mask"),
            Case(
                [Data(shape=(3, 4))],
                lambda x: x[:, [3, 1]],
                call=lambda x: x[:, slope.tensor([3, 1])],
                label="int tensor",
                method=False,
            ),
            Case(
                [Data(shape=(3, 2))],
                lambda x: x[[True, False, True]],
                call=lambda x: x[slope.tensor([True, False, True])],
                label="bool tensor mask",
                method=False,
            ),
            item_case((), (), "0-d, empty index"),
            item_case((), None, "0-d, None"),
            item_case((4, 2), slice(3, 1), "empty slice"),
        ],
        ALL_DTYPES,
    )
)


def np_set(x, v, index):
    out = x.copy()
    out[index] = v
    return out


def np_add_at(x, v, index):
    out = x.copy()
    np.add.at(out, index, v)
    return out


def update_case(shape, index, value_shape, mode: str, label: str) -> Case:
    if mode == "set":
        return Case(
            [Data(shape=shape), Data(shape=value_shape)],
            lambda x, v: np_set(x, v, index),
            call=lambda x, v: x.at[index].set(v),
            label=label,
            method=False,
        )
    return Case(
        [Data(shape=shape), Data(shape=value_shape)],
        lambda x, v: np_add_at(x, v, index),
        call=lambda x, v: x.at[index].add(v),
        label=label,
        method=False,
    )


add(
    Row(
        "index_update",
        [
            update_case((3, 4), (slice(None), np.array([0, 2, 2])), (3, 3), "add", "add with repeated indices"),
            update_case((3, 4), 1, (4,), "set", "set a row"),
            update_case((3, 4), (slice(None, None, -1), slice(1, 3)), (3, 2), "set", "set a reversed block"),
            update_case((3, 4), (np.array([0, 2]), np.array([1, 3])), (2,), "set", "set at int arrays"),
            update_case((3, 4), (slice(None), 1), (), "set", "set a column from a 0-d value"),
            Case(
                [Data(shape=(2, 3)), Data(shape=(3,))],
                lambda x, v: np_add_at(x, v, 0),
                call=lambda x, v: slope.index_update(x, 0, v, "add"),
                label="function form",
            ),
        ],
        NUMBERS,
    )
)


def np_gather(x, dim, index):
    return np.take_along_axis(x, index, axis=dim)


add(
    Row(
        "gather",
        [
            Case(
                [Data(shape=(3, 4)), Fixed(np.array([[0, 3], [2, 2], [1, 0]]))],
                lambda x, i: np_gather(x, 1, i),
                call=lambda x, i: slope.gather(x, 1, i),
                method_call=lambda x, i: x.gather(1, i),
                label="dim 1",
            ),
            Case(
                [Data(shape=(3, 4)), Fixed(np.array([[2, 0, 1, 1]]))],
                lambda x, i: np_gather(x, 0, i),
                call=lambda x, i: slope.gather(x, 0, i),
                method_call=lambda x, i: x.gather(0, i),
                label="dim 0",
            ),
            Case(
                [Data(shape=(2, 3)), Fixed(np.array([[1], [0]]))],
                lambda x, i: np_gather(x, -1, i),
                call=lambda x, i: slope.gather(x, -1, i),
                method_call=lambda x, i: x.gather(-1, i),
                label="dim -1",
            ),
        ],
        ALL_DTYPES,
    )
)
add(
    Row(
        "gather_nd",
        [
            Case(
                [Data(shape=(3, 4, 2)), Fixed(np.array([[0, 1], [2, 3], [0, 1]]))],
                lambda x, i: x[i[:, 0], i[:, 1]],
                label="k=2, repeats",
            ),
            Case(
                [Data(shape=(3, 4)), Fixed(np.array([[[2], [0]]]))],
                lambda x, i: x[i[..., 0]],
                label="k=1, batched indices",
            ),
            Case(
                [Data(shape=(3, 4)), Fixed(np.zeros((0, 2), np.int64))],
                lambda x, i: x[i[:, 0], i[:, 1]],
                label="no indices",
            ),
        ],
        ALL_DTYPES,
    )
)


def np_scatter(x, idx, updates):
    out = x.copy()
    np.add.at(out, tuple(np.moveaxis(idx, -1, 0)), updates)
    return out


add(
    Row(
        "scatter_nd",
        [
            Case(
                [Data(shape=(3, 4)), Fixed(np.array([[0, 1], [2, 3], [0, 1]])), Data(shape=(3,))],
                np_scatter,
                label="k=2, repeats accumulate",
            ),
            Case([Data(shape=(3, 2)), Fixed(np.array([[2], [0]])), Data(shape=(2, 2))], np_scatter, label="k=1, rows"),
        ],
        NUMBERS,
    )
)
add(
    Row(
        "one_hot",
        [
            Case([Data(shape=(2, 3), low=0, high=4)], lambda x: np.eye(5, dtype=np.int64)[x], params=(5,), label="2-d"),
            Case([Fixed(np.array([0, 2, 1]))], lambda x: np.eye(3, dtype=np.int64)[x], label="classes from the data"),
            Case(
                [Data(shape=(), low=0, high=3)],
                lambda x: np.eye(4, dtype=np.int64)[x],
                kwargs={"num_classes": 4},
                label="0-d",
            ),
        ],
        INTEGERS,
        out_dtype=always(slope.int64),
    )
)

# ----------------------------------------------------------------------------------------------- elementwise procedures


def np_softplus(x, beta=1.0):
    return np.logaddexp(0.0, beta * x) / beta


def np_sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


floating_unary("cos", np.cos, Data(low=-3.0, high=3.0))
floating_unary("tan", np.tan, Data(low=-1.2, high=1.2), tol=2.0)
floating_unary("sigmoid", np_sigmoid)
floating_unary("log2", np.log2, Data(low=0.5, high=3.0))
floating_unary("log1p", np.log1p, Data(low=-0.5, high=2.0))
floating_unary("exp2", np.exp2)
floating_unary("rsqrt", lambda x: 1.0 / np.sqrt(x), Data(low=0.5, high=3.0))
floating_unary("reciprocal", lambda x: 1.0 / x, NONZERO)
floating_unary("silu", lambda x: x * np_sigmoid(x))
unary("neg", np.negative, dtypes=NUMBERS)
unary("abs", np.abs, DISTINCT, dtypes=NUMBERS)
unary("sign", np.sign, DISTINCT, dtypes=NUMBERS)
unary("square", np.square, dtypes=NUMBERS)
unary("relu", lambda x: np.maximum(x, 0), DISTINCT, dtypes=NUMBERS)
unary("floor", np.floor, DISTINCT, dtypes=NUMBERS)
unary("ceil", np.ceil, DISTINCT, dtypes=NUMBERS)
unary("round", np.round, DISTINCT, dtypes=NUMBERS)
unary(
    "logical_not",
    np.logical_not,
    Data(low=-1, high=1, choices=(-1.0, 0.0, 0.5)),
    dtypes=ALL_DTYPES,
    out_dtype=always(slope.bool_),
)
unary("isnan", np.isnan, Data(specials=True), dtypes=NUMBERS, out_dtype=always(slope.bool_))
unary("isinf", np.isinf, Data(specials=True), dtypes=NUMBERS, out_dtype=always(slope.bool_))
add(
    Row(
        "leaky_relu",
        [
            Case([DISTINCT], lambda x: np.where(x > 0, x, 0.01 * x), label="default slope"),
            Case([DISTINCT], lambda x: np.where(x > 0, x, 0.2 * x), params=(0.2,), label="slope 0.2"),
            Case([DISTINCT.with_shape(())], lambda x: np.where(x > 0, x, 0.01 * x), label="0-d"),
        ],
        NUMBERS,
        out_dtype=to_float32_if_int,
    )
)
add(
    Row(
        "gelu",
        [
            Case([Data(low=-3, high=3)], lambda x: 0.5 * x * (1.0 + np_erf(x / np.sqrt(2.0))), label="exact (erf)"),
            Case(
                [Data(low=-3, high=3)],
                lambda x: 0.5 * x * (1.0 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3))),
                kwargs={"approximate": "tanh"},
                label="tanh approximation",
            ),
            Case([Data(shape=())], lambda x: 0.5 * x * (1.0 + np_erf(x / np.sqrt(2.0))), label="0-d"),
        ],
        NUMBERS,
        out_dtype=to_float32_if_int,
        atol_floor=ERF_ERROR,  # x/2 * erf error, with |x| <= 3 (the atol is relative to max|ref| >= 1)
    )
)
add(
    Row(
        "softplus",
        [
            Case([Data(low=-5, high=5)], np_softplus, label="default beta"),
            Case([Data(low=-5, high=5)], lambda x: np_softplus(x, 2.0), params=(2.0,), label="beta 2"),
            Case([Data(low=30, high=40, shape=(3,))], np_softplus, label="large values"),
        ],
        NUMBERS,
        out_dtype=to_float32_if_int,
    )
)
binary("true_divide", true_divide_ref, y=NONZERO, out_dtype=to_float32_if_int)


# divisors for which every quotient of a DISTINCT value (an odd multiple of 1/32) is 1/48 or more from an integer,
# so floor stays smooth under finite differences and rounding in low precision cannot cross an integer
DIVISORS = Data(choices=(1.5, -1.25, 0.75), nonzero=True)
binary("floor_divide", np_floor_divide, DISTINCT, DIVISORS)
binary("remainder", np_remainder, DISTINCT, DIVISORS)
binary("fmod", np.fmod, DISTINCT, DIVISORS)
binary("minimum", np.minimum, DISTINCT, DISTINCT_SHIFTED)
binary("not_equal", np.not_equal, DISTINCT, DISTINCT, dtypes=ALL_DTYPES, out_dtype=always(slope.bool_))
binary("less_equal", np.less_equal, DISTINCT, DISTINCT, dtypes=ALL_DTYPES, out_dtype=always(slope.bool_))
binary("greater_equal", np.greater_equal, DISTINCT, DISTINCT, dtypes=ALL_DTYPES, out_dtype=always(slope.bool_))
binary(
    "logical_and",
    np.logical_and,
    Data(low=-1, high=1, choices=(-1.0, 0.0, 0.5)),
    Data(low=-1, high=1, choices=(0.0, 2.0)),
    dtypes=ALL_DTYPES,
    out_dtype=always(slope.bool_),
)
binary(
    "logical_or",
    np.logical_or,
    Data(low=-1, high=1, choices=(-1.0, 0.0, 0.5)),
    Data(low=-1, high=1, choices=(0.0, 2.0)),
    dtypes=ALL_DTYPES,
    out_dtype=always(slope.bool_),
)
add(
    Row(
        "clip",
        [
            Case([DISTINCT], lambda x: np.clip(x, 0, 2), params=(0, 2), label="int bounds"),
            Case([DISTINCT], lambda x: np.clip(x, -0.5, None), kwargs={"min": -0.5}, label="min only"),
            Case([DISTINCT], lambda x: np.clip(x, None, 0.25), kwargs={"max": 0.25}, label="max only"),
            Case(
                [DISTINCT, DISTINCT_SHIFTED.with_shape((3,)), DISTINCT_SIXTEENTH.with_shape((3,))],
                lambda x, lo, hi: np.minimum(np.maximum(x, lo), hi),
                label="tensor bounds",
            ),
            Case([DISTINCT.with_shape(())], lambda x: np.clip(x, 0, 2), params=(0, 2), label="0-d"),
        ],
        NUMBERS,
    )
)
alias("clamp", "clip")
alias("divide", "div")
add(
    Row(
        "astype",
        [
            Case([Data()], lambda x: as_float(x), params=(slope.float32,), label="to float32"),
            Case(
                [Data(low=-3, high=3)],
                lambda x: truncate(x, np.int64),
                params=("int64",),
                label="to int64 by name",
                out_dtype=always(slope.int64),
            ),
            Case(
                [Data(choices=(-1.0, 0.0, 0.5))],
                lambda x: x != 0,
                params=(np.bool_,),
                label="to bool by NumPy type",
                out_dtype=always(slope.bool_),
            ),
        ],
        ALL_DTYPES,
        out_dtype=always(slope.float32),
    )
)
alias("to", "astype")

# ----------------------------------------------------------------------------------------------- linear algebra, nn

add(
    Row(
        "matmul",
        [
            Case([Data(shape=(2, 3)), Data(shape=(3, 4))], np.matmul, label="matrix"),
            Case([Data(shape=(2, 1, 2, 3)), Data(shape=(3, 3, 2))], np.matmul, label="broadcast batch"),
            Case([Data(shape=(3,)), Data(shape=(3, 2))], np.matmul, label="vector @ matrix"),
            Case([Data(shape=(2, 3)), Data(shape=(3,))], np.matmul, label="matrix @ vector"),
            Case([Data(shape=(3,)), Data(shape=(3,))], np.matmul, label="dot"),
            Case([Data(shape=(2, 0)), Data(shape=(0, 3))], np.matmul, label="empty inner"),
        ],
        NUMBERS,
    )
)
add(
    Row(
        "linear",
        [
            Case(
                [Data(shape=(2, 3)), Data(shape=(4, 3)), Data(shape=(4,))],
                lambda x, w, b: x @ w.T + b,
                label="with bias",
            ),
            Case([Data(shape=(2, 2, 3)), Data(shape=(4, 3))], lambda x, w: x @ w.T, label="batched, no bias"),
        ],
        FLOATS,
    )
)


def conv_case(x_shape, w_shape, label, **params) -> Case:
    return Case(
        [Data(shape=x_shape), Data(shape=w_shape)], lambda x, w: np_conv(x, w, **params), kwargs=params, label=label
    )


add(
    Row(
        "conv",
        [
            conv_case(
                (1, 4, 4, 3),
                (4, 2, 2, 2),
                "2-d stride, padding, dilation, groups",
                stride=(2, 1),
                padding=1,
                dilation=(1, 2),
                groups=2,
            ),
            conv_case((2, 2, 5), (3, 2, 3), "1-d"),
            conv_case((1, 1, 3, 3, 3), (2, 1, 2, 2, 2), "3-d padded", padding=1),
            conv_case((1, 2, 4, 4), (2, 2, 3, 3), "asymmetric padding", padding=((1, 0), (0, 2))),
            Case(
                [Data(shape=(1, 2, 5)), Data(shape=(2, 2, 3))],
                lambda x, w: np_conv(x, w, padding=[(1, 1)], dilation=1),
                kwargs={"padding": "same"},
                label="padding same",
            ),
            Case(
                [Data(shape=(1, 2, 4)), Data(shape=(3, 2, 2)), Data(shape=(3,))],
                lambda x, w, b: np_conv(x, w) + b[:, None],
                call=lambda x, w, b: slope.conv(x, w, b),
                label="bias",
                method=False,
            ),
        ],
        FLOATS,
    )
)


def conv_transpose_case(x_shape, w_shape, label, **params) -> Case:
    return Case(
        [Data(shape=x_shape), Data(shape=w_shape)],
        lambda x, w: np_conv_transpose(x, w, **params),
        kwargs=params,
        label=label,
    )


add(
    Row(
        "conv_transpose",
        [
            conv_transpose_case(
                (1, 4, 3, 2),
                (4, 1, 2, 2),
                "2-d stride, padding, output padding, groups",
                stride=2,
                padding=1,
                output_padding=1,
                groups=2,
            ),
            conv_transpose_case((2, 2, 3), (2, 3, 3), "1-d"),
            conv_transpose_case((1, 2, 3), (2, 1, 2), "1-d dilation", dilation=2, stride=2),
        ],
        FLOATS,
    )
)


def pool_case(x_shape, label, reduce, kernel, stride=None, padding=0, dilation=1) -> Case:
    kwargs = {"stride": stride, "padding": padding}
    if reduce == "max":
        kwargs["dilation"] = dilation
    kernel_tuple = kernel if isinstance(kernel, tuple) else (kernel,) * max(len(x_shape) - 2, 1)
    return Case(
        [DISTINCT.with_shape(x_shape)],
        lambda x: np_pool(x, kernel_tuple, stride, padding, dilation, reduce),
        params=(kernel,),
        kwargs=kwargs,
        label=label,
    )


add(
    Row(
        "max_pool",
        [
            pool_case((1, 2, 5, 4), "2-d kernel 3, stride 2, padding 1", "max", 3, 2, 1),
            pool_case((1, 2, 4, 4), "2-d tiles", "max", 2),
            pool_case((2, 1, 7), "1-d dilation 2", "max", 2, 1, 0, 2),
            pool_case((3, 4, 4), "unbatched tuple kernel", "max", (2, 2), 1),
        ],
        FLOATS,
    )
)


def np_pool_argmax(x, kernel, stride=None, padding=0, dilation=1):
    """The flat position (in the pooled dimensions) of each window's first maximum, PyTorch's max_pool indices."""
    n = len(kernel)
    stride = kernel if stride is None else (stride,) * n if isinstance(stride, int) else stride
    padding = (padding,) * n if isinstance(padding, int) else padding
    dilation = (dilation,) * n if isinstance(dilation, int) else dilation
    lead, spatial = x.shape[: x.ndim - n], x.shape[x.ndim - n :]
    padded = np.pad(x, [(0, 0)] * len(lead) + [(p, p) for p in padding], constant_values=-np.inf)
    positions = np.pad(np.arange(np.prod(spatial)).reshape(spatial), [(p, p) for p in padding], constant_values=-1)
    out_shape = [(s + 2 * p - d * (k - 1) - 1) // st + 1 for s, k, st, p, d in zip(spatial, kernel, stride, padding,
                                                                                      dilation)]  # fmt: skip
    out = np.zeros(lead + tuple(out_shape), np.int64)
    for position in np.ndindex(*out_shape):
        window = tuple(slice(o * st, o * st + d * (k - 1) + 1, d) for o, st, d, k in zip(position, stride, dilation,
                                                                                          kernel))  # fmt: skip
        values = padded[(Ellipsis, *window)].reshape(lead + (-1,))
        out[(Ellipsis, *position)] = positions[window].reshape(-1)[np.argmax(values, -1)]  # argmax: first maximum
    return out


def argmax_case(x: Data, label: str, kernel, stride=None, padding=0, dilation=1) -> Case:
    kernel_tuple = kernel if isinstance(kernel, tuple) else (kernel,) * max(len(x.shape) - 2, 1)
    return Case(
        [x],
        lambda a: np_pool_argmax(a, kernel_tuple, stride, padding, dilation),
        params=(kernel,),
        kwargs={"stride": stride, "padding": padding, "dilation": dilation},
        label=label,
    )


add(
    Row(
        "max_pool_argmax",
        [
            argmax_case(DISTINCT.with_shape((1, 2, 5, 4)), "2-d kernel 3, stride 2, padding 1", 3, 2, 1),
            argmax_case(Data(shape=(2, 2, 4, 4), choices=(-1.0, 0.5)), "2-d tiles, ties go to the first", 2),
            argmax_case(DISTINCT.with_shape((2, 1, 7)), "1-d dilation 2", 2, 1, 0, 2),
            argmax_case(DISTINCT.with_shape((3, 5, 5)), "unbatched tuple kernel, uneven tiles", (2, 2)),
        ],
        FLOATS,
        out_dtype=always(slope.int64),
    )
)
add(
    Row(
        "take_along_dim",
        [
            Case(
                [Data(shape=(3, 4)), Fixed(np.array([[0, 3, 3], [1, 0, 2], [2, 2, 0]]))],
                lambda x, i: np.take_along_axis(x, i, 1),
                params=(1,),
                label="dim 1, repeats",
            ),
            Case(
                [Data(shape=(3, 2, 2)), Fixed(np.array([[[2, 0]], [[1, 1]]]))],
                lambda x, i: np.take_along_axis(x, i, 0),
                kwargs={"dim": 0},
                label="dim 0",
            ),
            Case(
                [Data(shape=(2, 4)), Fixed(np.array([[3, 0, 1]]))],
                lambda x, i: np.take_along_axis(x, np.broadcast_to(i, (2, 3)), -1),
                params=(-1,),
                label="index broadcast",
            ),
        ],
        ALL_DTYPES,
    )
)


def np_scatter_add(x, dim, index, src):
    out = x.copy()
    grids = list(np.indices(index.shape, sparse=True))
    grids[dim] = index
    np.add.at(out, tuple(grids), src)
    return out


def scatter_add_case(x_shape, index, dim: int, label: str, unique: bool = False) -> Case:
    kwargs = {"unique_indices": True} if unique else {}
    return Case(
        [Data(shape=x_shape), Fixed(np.array(index)), Data(shape=np.shape(index))],
        lambda x, i, src: np_scatter_add(x, dim, i, src),
        call=lambda x, i, src: slope.scatter_add(x, dim, i, src, **kwargs),
        method_call=lambda x, i, src: x.scatter_add(dim, i, src, **kwargs),
        label=label,
    )


add(
    Row(
        "scatter_add",
        [
            scatter_add_case((3, 4), [[0, 3, 3], [1, 0, 2], [2, 2, 0]], 1, "dim 1, repeats accumulate"),
            scatter_add_case((3, 2), [[2, 0], [0, 0]], 0, "dim 0, fewer rows"),
            scatter_add_case((2, 5), [[4, 0], [1, 3]], 1, "unique indices", unique=True),
        ],
        NUMBERS,
    )
)

add(
    Row(
        "avg_pool",
        [
            pool_case((1, 2, 4, 3), "2-d kernel 2, stride 1, padding 1", "avg", 2, 1, 1),
            pool_case((1, 2, 4, 4), "2-d tiles", "avg", 2),
            pool_case((2, 1, 6), "1-d kernel 3", "avg", 3, 3),
        ],
        FLOATS,
    )
)
add(
    Row(
        "cross_entropy",
        [
            Case([Data(shape=(3, 4)), Fixed(np.array([0, 3, 1]))], np_cross_entropy, label="class indices"),
            Case(
                [Data(shape=(3, 4)), FloatData(shape=(3, 4), low=0.0, high=1.0)],
                np_cross_entropy,
                label="probabilities",
            ),
            Case(
                [Data(shape=(2, 3, 2)), Fixed(np.array([[0, 2], [1, 1]]))],
                lambda x, t: np_cross_entropy(x, t, "none"),
                kwargs={"reduction": "none"},
                label="N-d, reduction none",
            ),
            Case(
                [Data(shape=(3, 4)), Fixed(np.array([1, 1, 2]))],
                lambda x, t: np_cross_entropy(x, t, "sum", 0.1),
                kwargs={"reduction": "sum", "label_smoothing": 0.1},
                label="sum, label smoothing",
            ),
            Case([Data(shape=(4,)), Fixed(np.array(2))], np_cross_entropy, label="unbatched"),
        ],
        FLOATS,
    )
)


def np_attention(q, k, v, mask=None, is_causal=False):
    """softmax(q k^T / sqrt(E) + mask) v, PyTorch's scaled_dot_product_attention in NumPy."""
    scores = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])
    if is_causal:
        mask = np.tril(np.ones(scores.shape[-2:], dtype=bool))
    if mask is not None and mask.dtype == bool:
        scores = np.where(mask, scores, -np.inf)
    elif mask is not None:
        scores = scores + mask
    return np_softmax(scores, -1) @ v


add(
    Row(
        "scaled_dot_product_attention",
        [
            Case([Data(shape=(2, 3, 4)), Data(shape=(2, 5, 4)), Data(shape=(2, 5, 2))], np_attention, label="3-d"),
            Case(
                [Data(shape=(1, 2, 4, 3)), Data(shape=(1, 2, 4, 3)), Data(shape=(1, 2, 4, 3))],
                lambda q, k, v: np_attention(q, k, v, is_causal=True),
                kwargs={"is_causal": True},
                label="causal",
            ),
            Case(
                [Data(shape=(3, 2)), Data(shape=(4, 2)), Data(shape=(4, 2)), Data(shape=(3, 4))],
                np_attention,
                label="float mask",
            ),
        ],
        FLOATS,
        tol=4.0,
    )
)

# ----------------------------------------------------------------------------------------------- creation

CREATION_SKIPS = {
    "vmap": "no tensor inputs: nothing to map over",
    "grad": "no tensor inputs: nothing to differentiate",
    "grad_of_grad": "no tensor inputs: nothing to differentiate",
}


def creation(name: str, cases: list[Case], dtypes=ALL_DTYPES, out_dtype=None) -> None:
    add(Row(name, cases, dtypes, out_dtype, skips=CREATION_SKIPS))


def with_dtype(fn, *args, **kwargs):
    """A creation call that takes the cell's dtype."""
    return lambda *, dtype: fn(*args, **kwargs, dtype=dtype)


def creation_case(call, ref, label: str) -> Case:
    """A case without tensor inputs: `call(dtype=...)` builds the tensor, `ref()` (or `ref(dtype=...)`) the values."""
    reference = ref if "dtype" in inspect.signature(ref).parameters else (lambda *, dtype: ref())
    return Case([], reference, call=call, dtype_arg=True, label=label, method=False)


creation(
    "zeros",
    [
        creation_case(with_dtype(slope.zeros, 2, 3), lambda: np.zeros((2, 3)), "varargs"),
        creation_case(with_dtype(slope.zeros, (0, 2)), lambda: np.zeros((0, 2)), "empty tuple"),
    ],
)
creation(
    "ones",
    [
        creation_case(with_dtype(slope.ones, (2, 3)), lambda: np.ones((2, 3)), "tuple"),
        creation_case(with_dtype(slope.ones, ()), lambda: np.ones(()), "0-d"),
    ],
)
creation(
    "full",
    [
        creation_case(with_dtype(slope.full, (2, 3), 1), lambda: np.ones((2, 3)), "ones"),
        creation_case(with_dtype(slope.full, 3, 0), lambda: np.zeros(3), "int shape"),
    ],
)
creation(
    "eye",
    [
        creation_case(with_dtype(slope.eye, 3), lambda: np.eye(3), "square"),
        creation_case(with_dtype(slope.eye, 2, 4), lambda: np.eye(2, 4), "rectangular"),
    ],
)
creation(
    "arange",
    [
        creation_case(with_dtype(slope.arange, 1, 9, 2), lambda: np.arange(1, 9, 2), "start, stop, step"),
        creation_case(with_dtype(slope.arange, 5), lambda: np.arange(5), "stop"),
        creation_case(with_dtype(slope.arange, 6, 0, -2), lambda: np.arange(6, 0, -2), "negative step"),
        creation_case(with_dtype(slope.arange, 3, 3), lambda: np.arange(3, 3), "empty"),
    ],
    NUMBERS,
)
_DATA = np.array([[1.5, -2.0, 0.0], [3.25, 0.5, -1.0]])
creation(
    "tensor",
    [
        creation_case(
            lambda *, dtype: slope.tensor(_DATA.astype(dtype.numpy)),
            lambda *, dtype: _DATA.astype(dtype.numpy),
            "NumPy array",
        ),
        creation_case(
            lambda *, dtype: slope.tensor([[1, 0], [2, 3]], dtype=dtype),
            lambda *, dtype: np.array([[1, 0], [2, 3]]),
            "nested list",
        ),
    ],
)


def seeded(fn, *args):
    def call(*, dtype):
        slope.manual_seed(7)
        return fn(*args, dtype=dtype)

    return call


creation("rand", [creation_case(seeded(slope.rand, 2, 3), lambda: np_uniform(np_global_key(7), (2, 3)), "2x3")], FLOATS)
creation(
    "randn", [creation_case(seeded(slope.randn, 2, 3), lambda: np_normal(np_global_key(7), (2, 3)), "2x3")], FLOATS
)
ROWS["randn"].computed_in = slope.float32
creation(
    "randint",
    [
        creation_case(
            seeded(slope.randint, -3, 5, (2, 3)),
            lambda: np_randint(np_global_key(7), (2, 3), -3, 5),
            "range -3..4",
        )
    ],
    (slope.int8, slope.int16, slope.int32, slope.int64),
)
for _name, _ref in (("zeros_like", np.zeros_like), ("ones_like", np.ones_like)):
    add(
        Row(
            _name,
            [
                Case([Data()], lambda x, r=_ref: r(x), label="2x3"),
                Case([Data(shape=(0,))], lambda x, r=_ref: r(x), label="empty"),
            ],
            ALL_DTYPES,
        )
    )
add(
    Row(
        "full_like",
        [
            Case([Data()], lambda x: np.full(x.shape, 1), params=(1,), label="1"),
            Case([Data(shape=())], lambda x: np.full((), 0), params=(0,), label="0-d"),
        ],
        ALL_DTYPES,
    )
)


def random_case(op, ref, shape: tuple) -> Case:
    """`op(key, shape, dtype=...)` against the NumPy Threefry reference."""
    return Case(
        [Key()],
        lambda key: ref(key, shape),
        call=lambda key, dtype: op(key, shape, dtype=dtype),
        dtype_arg=True,
        label=f"shape {shape}",
    )


def random_row(name: str, ref, computed_in=None) -> None:
    cases = [random_case(slope.functions[name], ref, shape) for shape in ((2, 3), (5,), ())]
    add(Row(name, cases, FLOATS, computed_in=computed_in))


random_row("random_uniform", np_uniform)
random_row("random_normal", np_normal, computed_in=slope.float32)  # Box-Muller runs in float32 on every backend

# ----------------------------------------------------------------------------------------------- tensor functions
# (slope-nn's slope_nn.tensor_functions: PyTorch's names and signatures)

for _short, _long in (("eq", "equal"), ("ne", "not_equal"), ("lt", "less"), ("le", "less_equal")):
    alias(_short, _long)
alias("gt", "greater")
alias("ge", "greater_equal")
unary("clone", lambda x: x, dtypes=ALL_DTYPES)
unary("cpu", lambda x: x, dtypes=ALL_DTYPES)  # (slope-nn: x.cpu(), x on the CPU device)
unary("isfinite", np.isfinite, Data(specials=True), dtypes=ALL_DTYPES, out_dtype=always(slope.bool_))
add(
    Row(
        "masked_fill",
        [
            Case(
                [Data(shape=(2, 3)), Fixed(np.array([True, False, True]))],
                lambda x, m: np.where(m, 1, x),
                params=(1,),
                label="mask broadcasts, number",
            ),
            Case(
                [Data(shape=(2, 3)), Fixed(np.array([[True], [False]])), Data(shape=())],
                lambda x, m, v: np.where(m, v, x),
                label="0-d tensor value",
            ),
            Case(
                [Data(shape=(3,)), Fixed(np.array([[True, False, False], [False, True, True]]))],
                lambda x, m: np.where(m, 0, np.broadcast_to(x, (2, 3))),
                params=(0,),
                label="mask wider than x",
            ),
            Case([Data(shape=(0, 3)), Fixed(np.zeros(3, bool))], lambda x, m: x, params=(1,), label="empty"),
        ],
        ALL_DTYPES,
    )
)
add(
    Row(
        "type_as",
        [
            Case(
                [Data(low=-3, high=3)],
                lambda x: truncate(x, np.int32),
                call=lambda x: slope.type_as(x, slope.zeros((1,), dtype=slope.int32)),
                method_call=lambda x: x.type_as(slope.zeros((1,), dtype=slope.int32)),
                label="to int32",
                out_dtype=always(slope.int32),
            ),
            Case(
                [Data(), Data(shape=(4,))],
                lambda x, y: x,
                label="same dtype",
                out_dtype=lambda d: d,
            ),
        ],
        ALL_DTYPES,
        out_dtype=always(slope.int32),
    )
)
add(
    Row(
        "index_select",
        [
            Case(
                [Data(shape=(3, 4)), Fixed(np.array([3, 0, 3]))],
                lambda x, i: np.take(x, i, axis=1),
                params=(1,),
                call=lambda x, i: slope.index_select(x, 1, i),
                method_call=lambda x, i: x.index_select(1, i),
                label="dim 1, repeats",
            ),
            Case(
                [Data(shape=(3, 2)), Fixed(np.array([2, 0], np.int32))],
                lambda x, i: np.take(x, i, axis=0),
                call=lambda x, i: slope.index_select(x, -2, i),
                method_call=lambda x, i: x.index_select(-2, i),
                label="dim -2, int32",
            ),
            Case(
                [Data(shape=(2, 3)), Fixed(np.array(1))],
                lambda x, i: np.take(x, [1], axis=1),
                call=lambda x, i: slope.index_select(x, 1, i),
                method_call=lambda x, i: x.index_select(1, i),
                label="0-d index",
            ),
            Case(
                [Data(shape=(2, 3)), Fixed(np.zeros(0, np.int64))],
                lambda x, i: np.take(x, i, axis=0),
                call=lambda x, i: slope.index_select(x, 0, i),
                method_call=lambda x, i: x.index_select(0, i),
                label="empty index",
            ),
        ],
        ALL_DTYPES,
    )
)
add(
    Row(
        "narrow",
        [
            Case([Data(shape=(3, 5))], lambda x: x[:, 1:4], params=(1, 1, 3), label="dim 1"),
            Case([Data(shape=(4, 2))], lambda x: x[2:4], params=(0, -2, 2), label="negative start"),
            Case([Data(shape=(4,))], lambda x: x[4:4], params=(0, 4, 0), label="empty at the end"),
        ],
        ALL_DTYPES,
    )
)


def np_cumprod(x, axis):
    return np.cumprod(x, axis=axis, dtype=x.dtype if x.dtype.kind == "f" else np.int64)


add(
    Row(
        "cumprod",
        [
            Case([Data(shape=(3, 4), low=-1.5, high=1.5)], lambda x: np_cumprod(x, 1), params=(1,), label="dim 1"),
            Case(
                [Data(shape=(3, 5), choices=(0.0, 0.0, 1.5, -2.0, 0.5))],
                lambda x: np_cumprod(x, 1),
                params=(1,),
                label="zeros",
            ),
            Case(
                [Data(shape=(4, 2), low=-1.5, high=1.5)], lambda x: np_cumprod(x, 0), kwargs={"dim": 0}, label="dim 0"
            ),
            Case([Data(shape=())], lambda x: np_cumprod(x.reshape(1), 0).reshape(()), params=(0,), label="0-d"),
            Case([Data(shape=(0, 3))], lambda x: np_cumprod(x, 0), params=(0,), label="empty"),
            Case(
                [Data(shape=(2, 3), low=-3, high=3)],
                lambda x: np.cumprod(x.astype(np.float64), axis=1),
                params=(1,),
                kwargs={"dtype": slope.float64},
                label="dtype float64",
                out_dtype=always(slope.float64),
            ),
        ],
        ALL_DTYPES,
        out_dtype=int64_if_int,
    )
)

add(
    Row(
        "running_product",  # (slope-nn's operator under cumprod: in x's own dtype, halves and bools refused)
        [
            Case(
                [Data(shape=(3, 4), low=-1.5, high=1.5)],
                lambda x: np.multiply.accumulate(x, axis=1, dtype=x.dtype),
                params=(1,),
                label="dim 1",
            ),
            Case(
                [Data(shape=(3, 5), choices=(0.0, 0.0, 1.5, -2.0, 0.5))],
                lambda x: np.multiply.accumulate(x, axis=0, dtype=x.dtype),
                params=(0,),
                label="zeros, dim 0",
            ),
        ],
        (slope.float32, slope.float64, *INTEGERS),
    )
)


def np_norm(x, p=2.0, axis=None, keepdims=False):
    a = np.abs(as_float(x))
    if np.isinf(p):
        return (np.max if p > 0 else np.min)(a, axis=axis, keepdims=keepdims)
    if p == 0:
        return np.sum(a != 0, axis=axis, keepdims=keepdims).astype(a.dtype)
    return np.sum(a**p, axis=axis, keepdims=keepdims) ** (1.0 / p)


add(
    Row(
        "norm",
        [
            Case([Data(shape=(2, 3))], lambda x: np_norm(x), label="Frobenius, all"),
            Case([Data(shape=(2, 3))], lambda x: np_norm(x, 1, 1, True), params=(1, 1, True), label="p 1, dim keepdim"),
            Case([DISTINCT.with_shape((3, 4))], lambda x: np_norm(x, np.inf, 0), params=(math.inf, 0), label="inf"),
            Case([DISTINCT.with_shape((3, 4))], lambda x: np_norm(x, -np.inf, 1), params=(-math.inf, 1), label="-inf"),
            Case(
                [Data(shape=(2, 3, 2))],
                lambda x: np_norm(x, 3, (0, 2)),
                kwargs={"p": 3, "dim": (0, 2)},
                label="p 3, two dims",
            ),
            Case([POSITIVE.with_shape((4,))], lambda x: np_norm(x, 0.5), params=(0.5,), label="p 0.5"),
            Case([POSITIVE.with_shape((4,))], lambda x: np_norm(x, -1), params=(-1,), label="p -1"),
            Case([Data(shape=(3, 2))], lambda x: np_norm(x, 0, 0), params=(0, 0), label="p 0"),
            Case([Data(shape=(0, 3))], lambda x: np_norm(x, 2, 0), params=("fro", 0), label="empty"),
        ],
        FLOATS,
    )
)


def np_sort(x, axis=-1, descending=False):
    """NumPy's stable sort (NaN last), descending by sorting the negated order keys: (values, indices)."""
    if descending:  # stable descending with NaN first: sort by (not NaN, -x) keeping the index order of ties
        keys = np.where(np.isnan(x), -np.inf, -x.astype(np.float64)) if x.dtype.kind == "f" else -x.astype(np.int64)
        nan_first = np.isnan(x) if x.dtype.kind == "f" else np.zeros(x.shape, bool)
        order = np.lexsort((keys, ~nan_first), axis=axis) if x.ndim == 1 else _lexsort_along(keys, ~nan_first, axis)
    else:
        order = np.argsort(x, axis=axis, kind="stable")
    return np.take_along_axis(x, order, axis), order


def _lexsort_along(keys, primary, axis):
    moved_keys, moved_primary = np.moveaxis(keys, axis, -1), np.moveaxis(primary, axis, -1)
    flat_keys = moved_keys.reshape(-1, moved_keys.shape[-1])
    flat_primary = moved_primary.reshape(-1, moved_keys.shape[-1])
    order = np.stack([np.lexsort((k, p)) for k, p in zip(flat_keys, flat_primary)]).reshape(moved_keys.shape)
    return np.moveaxis(order, -1, axis)


TIES_AND_NAN = np.array([[2.0, np.nan, -1.0, 2.0, 0.5], [1.0, 1.0, np.nan, np.nan, -3.0]])
add(
    Row(
        "sort",
        [
            Case(
                [DISTINCT.with_shape((3, 4))],
                lambda x: np_sort(x)[0],
                call=lambda x: slope.sort(x).values,
                method_call=lambda x: x.sort().values,
                label="values, last dim",
            ),
            Case(
                [DISTINCT.with_shape((3, 4))],
                lambda x: np_sort(x, 0, True)[1],
                call=lambda x: slope.sort(x, 0, descending=True).indices,
                method_call=lambda x: x.sort(0, True).indices,
                label="indices, dim 0 descending",
                out_dtype=always(slope.int64),
            ),
            Case(
                [Data(shape=(2, 6), choices=(-1.0, 0.5, 2.0))],
                lambda x: np_sort(x, -1)[1],
                call=lambda x: slope.sort(x, stable=True).indices,
                method_call=lambda x: x.sort(stable=True).indices,
                label="ties keep index order",
                out_dtype=always(slope.int64),
            ),
            Case(
                [Fixed(TIES_AND_NAN)],
                lambda x: np_sort(x, -1, True)[1],
                call=lambda x: slope.sort(x, descending=True).indices,
                method=False,
                label="NaN largest, descending",
                out_dtype=always(slope.int64),
            ),
            Case(
                [Data(shape=(0, 3))],
                lambda x: np_sort(x, 1)[0],
                call=lambda x: slope.sort(x, 1).values,
                method_call=lambda x: x.sort(1).values,
                label="empty",
            ),
        ],
        ALL_DTYPES,
    )
)
add(
    Row(
        "argsort",
        [
            Case([DISTINCT.with_shape((3, 4))], lambda x: np_sort(x)[1], label="last dim"),
            Case(
                [DISTINCT.with_shape((3, 4))],
                lambda x: np_sort(x, 0, True)[1],
                kwargs={"dim": 0, "descending": True},
                label="dim 0 descending",
            ),
            Case([Data(shape=())], lambda x: np.zeros((), np.int64), label="0-d"),
        ],
        ALL_DTYPES,
        out_dtype=always(slope.int64),
    )
)
add(
    Row(
        "topk",
        [
            Case(
                [DISTINCT.with_shape((3, 5))],
                lambda x: np_sort(x, -1, True)[0][:, :2],
                call=lambda x: slope.topk(x, 2).values,
                method_call=lambda x: x.topk(2).values,
                label="values, k 2",
            ),
            Case(
                [DISTINCT.with_shape((4, 3))],
                lambda x: np_sort(x, 0)[1][:3],
                call=lambda x: slope.topk(x, 3, 0, largest=False).indices,
                method_call=lambda x: x.topk(3, 0, False).indices,
                label="indices, smallest along dim 0",
                out_dtype=always(slope.int64),
            ),
            Case(
                [Fixed(TIES_AND_NAN)],
                lambda x: np_sort(x, -1, True)[1][:, :3],
                call=lambda x: slope.topk(x, 3).indices,
                method=False,
                label="NaN largest",
                out_dtype=always(slope.int64),
            ),
            Case(
                [Data(shape=(2, 3))],
                lambda x: x[:, :0],
                call=lambda x: slope.topk(x, 0).values,
                method_call=lambda x: x.topk(0).values,
                label="k 0",
            ),
        ],
        NUMBERS,  # bool refused, as PyTorch
    )
)
# split, chunk, roll, tril, triu, unflatten, repeat and linspace: slope_nn.tensor_functions too (they left
# slope-core for its line budget)
add(
    Row(
        "split",
        [
            Case([Data(shape=(5, 2))], lambda x: np.split(x, [2, 4]), params=(2,), label="size 2 (last smaller)"),
            Case([Data(shape=(2, 6))], lambda x: np.split(x, [1, 4], axis=1), params=([1, 3, 2], 1), label="sections"),
            Case(
                [Data(shape=(2, 4))],
                lambda x: np.split(x, [2], axis=-1),
                kwargs={"split_size_or_sections": 2, "dim": -1},
                label="keywords",
            ),
        ],
        ALL_DTYPES,
    )
)
add(
    Row(
        "chunk",
        [
            Case([Data(shape=(5, 2))], lambda x: np.split(x, [2, 4]), params=(3,), label="3 chunks of 5"),
            Case([Data(shape=(2, 6))], lambda x: np.split(x, [3], axis=1), params=(2, 1), label="dim 1"),
        ],
        ALL_DTYPES,
    )
)
add(
    Row(
        "roll",
        [
            Case(
                [Data(shape=(3, 4))], lambda x: np.roll(x, (1, -2), (0, 1)), params=((1, -2), (0, 1)), label="two dims"
            ),
            Case([Data(shape=(3, 4))], lambda x: np.roll(x, 5), params=(5,), label="flattened"),
            Case([Data(shape=(3, 4))], lambda x: np.roll(x, -1, 1), kwargs={"shifts": -1, "dims": 1}, label="keywords"),
        ],
        ALL_DTYPES,
    )
)
for _name, _np in (("tril", np.tril), ("triu", np.triu)):
    add(
        Row(
            _name,
            [
                Case([Data(shape=(3, 4))], lambda x, f=_np: f(x), label="default"),
                Case([Data(shape=(2, 3, 3))], lambda x, f=_np: f(x, 1), params=(1,), label="batched, diagonal 1"),
                Case([Data(shape=(4, 3))], lambda x, f=_np: f(x, -1), kwargs={"diagonal": -1}, label="diagonal -1"),
            ],
            ALL_DTYPES,
        )
    )
add(
    Row(
        "unflatten",
        [
            Case([Data(shape=(2, 6))], lambda x: x.reshape(2, 2, 3), params=(1, (2, 3)), label="dim 1"),
            Case([Data(shape=(6,))], lambda x: x.reshape(3, 2), params=(-1, (3, 2)), label="dim -1"),
        ],
        ALL_DTYPES,
    )
)
add(
    Row(
        "repeat",
        [
            Case([Data()], lambda x: np.tile(x, (2, 1, 2)), params=(2, 1, 2), label="new leading dim"),
            Case([Data(shape=(2,))], lambda x: np.tile(x, (3,)), params=((3,),), label="tuple"),
            Case([Data(shape=())], lambda x: np.tile(x, (2, 2)), params=(2, 2), label="0-d"),
        ],
        ALL_DTYPES,
    )
)
creation(
    "linspace",
    [
        creation_case(
            lambda *, dtype: slope.linspace(-1.0, 2.0, 7, dtype=dtype), lambda: np.linspace(-1, 2, 7), "7 steps"
        ),
        creation_case(lambda *, dtype: slope.linspace(0.5, 2.0, 1, dtype=dtype), lambda: np.array([0.5]), "1 step"),
    ],
    FLOATS,
)
