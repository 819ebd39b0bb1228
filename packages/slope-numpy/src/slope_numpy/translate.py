"""Translations of slope operators to NumPy expressions: `f(inputs, params, out_aval) -> str`."""

from __future__ import annotations

from typing import Any, Callable


def _dtype(dtype: Any) -> str:
    return f"dtypes[{dtype.name!r}]"


def _unary(function: str) -> Callable:
    return lambda ins, params, out: f"{function}({ins[0]})"


def _binary(function: str) -> Callable:
    return lambda ins, params, out: f"{function}({ins[0]}, {ins[1]})"


def _div(ins: list, params: dict, out: Any) -> str:
    if out.dtype.is_float:
        return f"np.divide({ins[0]}, {ins[1]})"
    return f"runtime.int_div({ins[0]}, {ins[1]})"


def _pow(ins: list, params: dict, out: Any) -> str:
    if out.dtype.is_float:
        return f"runtime.float_pow({ins[0]}, {ins[1]})"
    return f"runtime.int_pow({ins[0]}, {ins[1]})"


def _fmod(ins: list, params: dict, out: Any) -> str:
    if out.dtype.is_float:
        return f"np.fmod({ins[0]}, {ins[1]})"
    # x - trunc(x / y) * y with the `div` operator's integer division (0 for a zero divisor, where np.fmod warns)
    return f"np.subtract({ins[0]}, np.multiply(runtime.int_div({ins[0]}, {ins[1]}), {ins[1]}))"


def _invert(ins: list, params: dict, out: Any) -> str:
    return f"np.logical_not({ins[0]})" if out.dtype.name == "bool" else f"np.invert({ins[0]})"


def _reduce(function: str) -> Callable:
    def translate(ins: list, params: dict, out: Any) -> str:
        call = f"{function}({ins[0]}, axis={params['dim']}, keepdims={params['keepdim']})"
        return f"np.asarray({call}, dtype={_dtype(out.dtype)})"

    return translate


def _sum(ins: list, params: dict, out: Any) -> str:
    """np.sum with an error bound on every axis: floats narrower than float64 add in float64 and round once; float64
    adds pairwise over all reduced axes (runtime.pairwise_sum).

    NumPy adds pairwise only along the axis innermost in memory, one by one along the others (10^5 x 10 float32 0.1s
    summed over axis 0 are off by 0.1%), and adds bfloat16 in bfloat16 (10^6 copies of 0.1 sum to 32). In float64
    a float32, float16 or bfloat16 sum of n < 2^29 elements is within one rounding (plus n 2^-53 sum(|x|)) of the
    exact sum, as PyTorch's float32-accumulated half sums are.
    """
    x, axis, keepdims = ins[0], params["dim"], params["keepdim"]
    if out.dtype.name == "float64":
        return f"runtime.pairwise_sum({x}, {axis}, {keepdims})"
    wide = ", dtype=np.float64" if out.dtype.is_float else ""
    # to float16 through float32, as _cast (PyTorch and the other backends: float16 1 + 2**-11 + 2**-24 sums to 1.0)
    through = ".astype(np.float32)" if out.dtype.name == "float16" else ""
    # np.add.reduce: np.sum's own Python wrapper costs as much as the float64 accumulation of a small sum
    return f"np.asarray(np.add.reduce({x}, axis={axis}, keepdims={keepdims}{wide}){through}, dtype={_dtype(out.dtype)})"


def _slice(ins: list, params: dict, out: Any) -> str:
    if not params["start"]:  # a 0-d tensor: nothing to slice (and `x[]` is no Python)
        return ins[0]
    parts = ", ".join(f"{a}:{b}:{s}" for a, b, s in zip(params["start"], params["stop"], params["step"]))
    return f"{ins[0]}[{parts}{',' if len(params['start']) == 1 else ''}]"


def _pad(ins: list, params: dict, out: Any) -> str:
    if not any(params["lo"]) and not any(params["hi"]):  # (np.pad rejects the empty widths of a 0-d tensor)
        return ins[0]
    widths = list(zip(params["lo"], params["hi"]))
    return f"np.pad({ins[0]}, {widths}, constant_values={params['value']!r})"


def _arange(ins: list, params: dict, out: Any) -> str:
    # start + i * step counted in float64 (int64 for integer arguments) and rounded once, as the other backends:
    # np.arange steps by (start + step) - start (2e-16 where 1 - 10 * 0.1 is 0) and adds float16 in float16
    start, step = params["start"], params["step"]
    counter = "np.int64" if all(type(v) is int for v in (start, step)) else "np.float64"
    return _cast([f"({start!r} + {step!r} * np.arange({out.shape[0]}, dtype={counter}))"], {"dtype": out.dtype}, out)


def _cast(ins: list, params: dict, out: Any) -> str:
    # to float16 through float32, as PyTorch and the other backends convert (float64 1 + 2**-11 + 2**-40 is 1.0 there;
    # NumPy's one rounding gave 1.001); bfloat16's conversion (ml_dtypes) already goes through float32
    through = ".astype(np.float32, copy=False)" if params["dtype"].name == "float16" else ""
    return f"{ins[0]}{through}.astype({_dtype(params['dtype'])})"


translations: dict[str, Callable] = {
    "exp": _unary("np.exp"),
    "log": _unary("np.log"),
    "sin": _unary("np.sin"),
    "cos": _unary("np.cos"),
    "sqrt": _unary("np.sqrt"),
    "tanh": _unary("np.tanh"),
    "floor": _unary("np.floor"),
    "ceil": _unary("np.ceil"),
    "round": _unary("np.round"),  # half to even, as PyTorch
    "invert": _invert,
    "stop_gradient": lambda ins, params, out: ins[0],
    "cast": _cast,
    "add": _binary("np.add"),
    "sub": _binary("np.subtract"),
    "mul": _binary("np.multiply"),
    "div": _div,
    "pow": _pow,
    "fmod": _fmod,
    "maximum": _binary("np.maximum"),
    "equal": _binary("np.equal"),
    "less": _binary("np.less"),
    "greater": _binary("np.greater"),
    "less_equal": _binary("np.less_equal"),
    "greater_equal": _binary("np.greater_equal"),
    "bitwise_and": _binary("np.bitwise_and"),
    "bitwise_or": _binary("np.bitwise_or"),
    "bitwise_xor": _binary("np.bitwise_xor"),
    "where": lambda ins, params, out: f"np.where({ins[0]}, {ins[1]}, {ins[2]})",
    "sum": _sum,
    "max": _reduce("np.max"),
    "reshape": lambda ins, params, out: f"np.reshape({ins[0]}, {params['shape']})",
    "expand": lambda ins, params, out: f"np.broadcast_to({ins[0]}, {params['shape']})",
    "permute": lambda ins, params, out: f"np.transpose({ins[0]}, {params['perm']})",
    "slice": _slice,
    "pad": _pad,
    "flip": lambda ins, params, out: f"np.flip({ins[0]}, {params['dim']})",
    "cat": lambda ins, params, out: f"np.concatenate([{', '.join(ins)}], axis={params['dim']})",
    "full": lambda ins, params, out: f"np.full({params['shape']}, {params['value']!r}, dtype={_dtype(out.dtype)})",
    "arange": _arange,
    "matmul": _binary("runtime.matmul"),
    "conv": lambda ins, params, out: (
        f"runtime.conv({ins[0]}, {ins[1]}, {params['stride']}, {params['padding']}, {params['dilation']}, "
        f"{params['groups']})"
    ),
    "gather_nd": _binary("runtime.gather_nd"),
    "scatter_nd": lambda ins, params, out: f"runtime.scatter_nd({ins[0]}, {ins[1]}, {ins[2]})",
}
