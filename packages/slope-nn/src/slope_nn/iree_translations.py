"""StableHLO translations of slope-nn's operators for the iree backend, in slope-iree's translation API
(`f(fn, inputs, instruction) -> SSA name`; `NoTranslationError` lowers an instruction through its procedure).

- `erf` is computed in float64 by the operator's 1-ulp procedure (float32 converted to float64 and rounded once,
  float16/bfloat16 through float32; CHLO's float32 erf is 4 float32 ulps off near +-1, PyTorch's is exact).
- `log_softmax` is x - max - log(sum(exp(x - max))) along its dimension, the sum accumulated in float64 (float16
  and bfloat16 computed in float32): a NaN or +inf in a row, or a row of only -inf, gives a row of NaN (PyTorch's).
- `relu` is a select (NaN and -0.0 stay as they are, as in PyTorch).
- `max_pool` is a `reduce_window` of maximum (NaN propagates; padding is the lowest value). `max_pool_argmax` is a
  `reduce_window` over (value, position) pairs keeping the first maximum, a NaN counting as the maximum; a
  `max_pool` of the same input and parameters reuses its values (PyTorch's value at the arg-max: -0.0 too).
- `running_product` (cumprod) has no translation: its procedure, a log-step scan, runs (a `while` loop of one slice a
  step ran from the host step by step: 16x slower at (64, 1024), 950x at (4, 100000)); so on iree cumprod multiplies
  in another order than PyTorch's (its last bits, and overflows of partial products, can differ).
- `take_along_dim` is a `gather` and `scatter_add` a `scatter` over every element's full coordinates (adding each
  value into a copy of x in turn, as PyTorch: IREE scatters in place into an argument's buffer), with a run-time
  IndexError for indices out of range. A `scatter_add` of `unique_indices` along the last dimension whose
  indices are a `max_pool_argmax` of non-overlapping, unpadded windows (max pooling's gradient) is dense instead:
  each input element takes its window's value when it is that window's arg-max.
- `fail_if` is a run-time check (`Function.check`) raising its own error and message.
"""

from __future__ import annotations

import math
import re
import weakref
from typing import Any, Callable

import slope
from slope import Aval, Instruction, Var
from slope_iree.translate import (
    Function,
    NoTranslationError,
    array_attr,
    check_scatter_size,
    in_float32,
    tensor_type,
)

from .operators import lowest, padding_only_windows

# per Function: the SSA names of max_pool_argmax results -> (input name, pooling parameters); and
# (input name, parameters) -> (values, positions) of a pooling already emitted, so a train step pools once
_argmaxes: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_pools: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

_RESHAPE = re.compile(r"\s*(%v\d+) = stablehlo\.reshape (%[\w.#]+) :")


def _scalar(dtype: slope.DType) -> str:
    return tensor_type(Aval((), dtype))


def _emit_results(fn: Function, text: str, avals: list[Aval]) -> list[str]:
    """Add an operation of several results (`%vN:2 = text`); returns their names, `%vN#0`, `%vN#1`, ..."""
    name = fn.emit(text, avals[0])
    fn.lines[-1] = fn.lines[-1].replace(f"{name} = ", f"{name}:{len(avals)} = ", 1)
    del fn.avals[name]
    names = [f"{name}#{i}" for i in range(len(avals))]
    fn.avals.update(zip(names, avals))
    return names


# ----------------------------------------------------------------------------------------------- elementwise


def _erf(fn: Function, inputs: list[str], instruction: Instruction) -> str:
    """The float64 procedure (1 ulp) for every float dtype, converted once."""
    out = instruction.outputs[0].aval
    if out.dtype == slope.float64 or not out.dtype.is_float:
        raise NoTranslationError  # the procedure in place is this translation
    wide = Aval(out.shape, slope.float64)
    inner = Instruction(instruction.op, [Var(wide)], {}, [Var(wide)])

    def compute(x: str) -> str:
        (result,) = fn.inline_procedure(inner, [fn.convert(x, slope.float64)])
        return fn.convert(result, slope.float32)

    # float16/bfloat16 through float32: IREE 3.13 flushes float64 -> float16 conversions of subnormals to zero
    return in_float32(fn, inputs, out.dtype, compute)


def _relu(fn: Function, inputs: list[str], instruction: Instruction) -> str:
    x = inputs[0]
    return fn.select(fn.compare("LT", x, fn.like(0, x)), fn.like(0, x), x)


def _log_softmax(fn: Function, inputs: list[str], instruction: Instruction) -> str:
    out, dim = instruction.outputs[0].aval, instruction.params["dim"]
    if out.ndim == 0:
        raise NoTranslationError

    def compute(x: str) -> str:
        aval = fn.avals[x]
        kept = [d for d in range(aval.ndim) if d != dim]
        top = fn.broadcast(fn.reduce(x, "maximum", -math.inf, [dim]), aval.shape, kept)
        shifted = fn.binary("subtract", x, top)  # NaN where the maximum is +-inf or NaN: the row becomes NaN
        total = fn.reduce(fn.convert(fn.unary("exponential", shifted), slope.float64), "add", 0.0, [dim])
        log_total = fn.convert(fn.unary("log", total), aval.dtype)
        return fn.binary("subtract", shifted, fn.broadcast(log_total, aval.shape, kept))

    return in_float32(fn, inputs, out.dtype, compute)


# ----------------------------------------------------------------------------------------------- pooling


def _window(fn: Function, xs: list[str], params: dict) -> tuple[list[str], str, int]:
    """The tensors xs (of one shape) cut to what the pooling windows read, the `reduce_window` attributes over their
    trailing (pooled) dimensions, and how many dimensions lead those. IREE 3.13 fails to compile a reduce_window whose
    windows leave input or padding unread at the end ("'linalg.generic' op inferred input/output operand #1 has
    shape's dimension #0 to be 4, but found 2"), so the unread tail is sliced off and the padding trimmed."""
    shape, kernel = fn.avals[xs[0]].shape, params["kernel"]
    lead = len(shape) - len(kernel)
    stops, pads = list(shape), ["[0, 0]"] * lead
    windows = zip(shape[lead:], kernel, params["stride"], params["dilation"], params["padding"])
    for dim, (size, k, stride, dilation, pad) in enumerate(windows, lead):
        reach = (size + 2 * pad - dilation * (k - 1) - 1) // stride * stride + dilation * (k - 1) + 1  # (padded)
        stops[dim] = min(size, reach - pad)
        pads.append(f"[{pad}, {max(0, reach - pad - size)}]")
    if stops != list(shape):
        spans = ", ".join(f"0:{stop}:1" for stop in stops)
        cut = [Aval(tuple(stops), fn.avals[x].dtype) for x in xs]
        xs = [fn.emit(f"stablehlo.slice {x} [{spans}] : ({fn.type(x)}) -> {fn.tensor_type(aval)}", aval)
              for x, aval in zip(xs, cut)]  # fmt: skip
    attributes = (
        f"window_dimensions = {array_attr((1,) * lead + tuple(kernel))}, "
        f"window_strides = {array_attr((1,) * lead + tuple(params['stride']))}, "
        f"window_dilations = {array_attr((1,) * lead + tuple(params['dilation']))}, "
        f"padding = dense<[{', '.join(pads)}]> : tensor<{len(shape)}x2xi64>"
    )
    return xs, attributes, lead


def _pool_key(inputs: list[str], params: dict) -> tuple:
    return (inputs[0], *(params[k] for k in ("kernel", "stride", "padding", "dilation")))


def _max_pool(fn: Function, inputs: list[str], instruction: Instruction) -> str:
    found = _pools.get(fn, {}).get(_pool_key(inputs, instruction.params))
    if found is not None:
        return found[0]
    out = instruction.outputs[0].aval
    (x,), attributes, _ = _window(fn, inputs[:1], instruction.params)
    scalar = _scalar(out.dtype)
    init = fn.constant(lowest(out.dtype), Aval((), out.dtype))
    text = (
        f'"stablehlo.reduce_window"({x}, {init}) ({{\n'
        f"      ^bb0(%a: {scalar}, %b: {scalar}):\n"
        f"        %m = stablehlo.maximum %a, %b : {scalar}\n"
        f"        stablehlo.return %m : {scalar}\n"
        f"    }}) {{{attributes}}} : ({fn.type(x)}, {scalar}) -> {tensor_type(out)}"
    )
    return fn.emit(text, out)


def _first_maximum(dtype: slope.DType) -> str:
    """The body of a (value, position) reduction that keeps the first maximum, a NaN counting as the maximum and the
    last NaN winning (PyTorch's index for a window holding NaN)."""
    scalar, index = _scalar(dtype), _scalar(slope.int64)
    kind = "FLOAT" if dtype.is_float else "SIGNED" if dtype.kind == "int" else "UNSIGNED"

    def compare(direction: str, a: str, b: str, of: str = scalar, how: str = kind) -> str:
        return f"stablehlo.compare {direction}, {a}, {b}, {how} : ({of}, {of}) -> tensor<i1>"

    lines = [
        f"^bb0(%a: {scalar}, %ia: {index}, %b: {scalar}, %ib: {index}):",
        f"%gt = {compare('GT', '%a', '%b')}",
        f"%eq = {compare('EQ', '%a', '%b')}",
        f"%first = {compare('LT', '%ia', '%ib', index, 'SIGNED')}",
        "%tie = stablehlo.and %eq, %first : tensor<i1>",
        "%pick = stablehlo.or %gt, %tie : tensor<i1>",
    ]
    if dtype.is_float:  # a NaN beats every number, and the last NaN every earlier one
        lines += [
            f"%nan_a = {compare('NE', '%a', '%a')}",
            f"%num_b = {compare('EQ', '%b', '%b')}",
            f"%later = {compare('GT', '%ia', '%ib', index, 'SIGNED')}",
            "%over = stablehlo.or %num_b, %later : tensor<i1>",
            "%nan_wins = stablehlo.and %nan_a, %over : tensor<i1>",
            "%pick_nan = stablehlo.or %pick, %nan_wins : tensor<i1>",
        ]
    pick = "%pick_nan" if dtype.is_float else "%pick"
    lines += [
        f"%v = stablehlo.select {pick}, %a, %b : tensor<i1>, {scalar}",
        f"%i = stablehlo.select {pick}, %ia, %ib : tensor<i1>, {index}",
        f"stablehlo.return %v, %i : {scalar}, {index}",
    ]
    return "\n".join(("      " if line.startswith("^") else "        ") + line for line in lines)


def _max_pool_argmax(fn: Function, inputs: list[str], instruction: Instruction) -> str:
    x, x_aval, out, params = inputs[0], instruction.inputs[0].aval, instruction.outputs[0].aval, instruction.params
    lead = x_aval.ndim - len(params["kernel"])
    spatial = x_aval.shape[lead:]
    size = math.prod(spatial)
    flat = fn.emit(f"stablehlo.iota dim = 0 : {tensor_type(Aval((size,), slope.int64))}", Aval((size,), slope.int64))
    positions = fn.broadcast(fn.reshape(flat, spatial), x_aval.shape)
    (x, positions), attributes, _ = _window(fn, [x, positions], params)
    init = fn.constant(lowest(x_aval.dtype), Aval((), x_aval.dtype))
    none = fn.constant(size, Aval((), slope.int64))  # padding's position: every real element wins a tie with it
    values_aval = Aval(out.shape, x_aval.dtype)
    types = f"({fn.type(x)}, {fn.type(positions)}, {fn.type(init)}, {fn.type(none)})"
    text = (
        f'"stablehlo.reduce_window"({x}, {positions}, {init}, {none}) ({{\n{_first_maximum(x_aval.dtype)}\n'
        f"    }}) {{{attributes}}} : {types} -> ({tensor_type(values_aval)}, {tensor_type(out)})"
    )
    values, index = _emit_results(fn, text, [values_aval, out])
    # IREE 3.13 fails to compile a transpose of a two-result reduce_window's result ("'linalg.yield' op expected
    # number of yield values (2)", a vmap over the channels of a max pool's gradient): keep them apart
    barrier = f"stablehlo.optimization_barrier {values}, {index} : {fn.type(values)}, {fn.type(index)}"
    values, index = _emit_results(fn, barrier, [values_aval, out])
    fallback = padding_only_windows(spatial, **params)
    if fallback is not None:  # a window of padding only: PyTorch's index (the reduction's is the input's size)
        fixed = fn.broadcast(fn.array(fallback, slope.int64), out.shape)
        index = fn.select(fn.compare("GE", fixed, fn.constant(0, out)), fixed, index)
    _pools.setdefault(fn, {})[_pool_key(inputs, params)] = (values, index)
    _argmaxes.setdefault(fn, {})[index] = (x_aval, params)
    return index


# ----------------------------------------------------------------------------------------------- indexing


def _coordinates(fn: Function, index: str, dim: int) -> str:
    """int64 coordinates (..., ndim) of every element of `index`: its own position, with `index` along dim."""
    aval = fn.avals[index]
    column = Aval((*aval.shape, 1), slope.int64)
    parts = []
    for d in range(aval.ndim):
        if d == dim:
            parts.append(fn.reshape(fn.convert(index, slope.int64), column.shape))
        else:
            parts.append(fn.emit(f"stablehlo.iota dim = {d} : {tensor_type(column)}", column))
    if len(parts) == 1:
        return parts[0]
    out = Aval((*aval.shape, aval.ndim), slope.int64)
    types = ", ".join(fn.type(p) for p in parts)
    return fn.emit(f"stablehlo.concatenate {', '.join(parts)}, dim = {aval.ndim} : ({types}) -> {tensor_type(out)}",
                   out)  # fmt: skip


def _in_range(fn: Function, index: str, size: int, name: str, dim: int, low: int) -> str:
    """`index` as int64, negative ones counted from the end (the operators take [-size, size)); an IndexError naming
    the operator when one falls outside (IREE would clamp it). `low` is what the operator's call accepts (scatter_add
    turns negative traced indices into `size`, as PyTorch refuses them), for the message."""
    pooled = _from_argmax(fn, index)
    if pooled is not None and size >= math.prod(pooled[0].shape[-len(pooled[1]["kernel"]) :]):
        return index  # max pooling's positions lie in [0, its pooled size) by construction
    wide = fn.convert(index, slope.int64)
    wide = fn.select(fn.compare("LT", wide, fn.like(0, wide)), fn.binary("add", wide, fn.like(size, wide)), wide)
    outside = fn.binary("or", fn.compare("LT", wide, fn.like(0, wide)), fn.compare("GE", wide, fn.like(size, wide)))
    fn.check(
        fn.any(outside), f"slope.{name}: an index is out of range; expected {low} to {size - 1} for dimension {dim}"
    )
    return fn.select(outside, fn.like(0, wide), wide)  # (0 in a run that raises: IREE reads out of bounds otherwise)


def _take_along_dim(fn: Function, inputs: list[str], instruction: Instruction) -> str:
    (x, index), x_aval, out = inputs, instruction.inputs[0].aval, instruction.outputs[0].aval
    dim = instruction.params["dim"]
    index = _in_range(fn, index, x_aval.shape[dim], "take_along_dim", dim, -x_aval.shape[dim])
    coordinates, x = _coordinates(fn, index, dim), fn.apart(x)
    every = ", ".join(map(str, range(x_aval.ndim)))
    text = (
        f'"stablehlo.gather"({x}, {coordinates}) {{dimension_numbers = #stablehlo.gather<offset_dims = [], '
        f"collapsed_slice_dims = [{every}], start_index_map = [{every}], index_vector_dim = {x_aval.ndim}>, "
        f"indices_are_sorted = false, slice_sizes = {array_attr((1,) * x_aval.ndim)}}} : "
        f"({fn.type(x)}, {fn.type(coordinates)}) -> {tensor_type(out)}"
    )
    return fn.emit(text, out)


def _from_argmax(fn: Function, index: str) -> tuple | None:
    """(pooled input's aval, pooling parameters) when `index` is a max_pool_argmax result, reshaped or not."""
    known = _argmaxes.get(fn, {})
    if index in known:
        return known[index]
    definitions = {m.group(1): m.group(2) for m in map(_RESHAPE.match, fn.lines) if m}
    while index in definitions and index not in known:
        index = definitions[index]
    return known.get(index)


def _unpool(fn: Function, index: str, src: str, x_aval: Aval) -> str | None:
    """Max pooling's gradient without a scatter, when `index` (along x's last dimension) is a max_pool_argmax of
    windows that tile the input: each input element gets its window's src where it is the window's arg-max, else 0
    (elementwise on broadcasts, which IREE fuses). None for other indices."""
    found = _from_argmax(fn, index)
    if found is None:
        return None
    pooled_aval, params = found
    kernel = params["kernel"]
    n = len(kernel)
    lead, spatial = pooled_aval.shape[:-n], pooled_aval.shape[-n:]
    pooled = tuple(s // k for s, k in zip(spatial, kernel))
    tiled = params["stride"] == kernel and not any(params["padding"]) and set(params["dilation"]) == {1}
    if not tiled or x_aval.shape != (*lead, math.prod(spatial)) or fn.avals[src].shape != (*lead, math.prod(pooled)):
        return None
    # windows as (*lead, o1, k1, o2, k2, ...): the window index of o_i, the offset within it of k_i
    split = (*lead, *(v for o, k in zip(pooled, kernel) for v in (o, k)))
    window_dims = [len(lead) + 2 * i for i in range(n)]
    keep = [*range(len(lead)), *window_dims]
    dtype = fn.avals[src].dtype
    src_b = fn.broadcast(fn.reshape(src, (*lead, *pooled)), split, keep)
    arg_b = fn.broadcast(fn.reshape(index, (*lead, *pooled)), split, keep)
    size = math.prod(spatial)
    flat = fn.emit(f"stablehlo.iota dim = 0 : {tensor_type(Aval((size,), slope.int64))}", Aval((size,), slope.int64))
    covered = tuple(o * k for o, k in zip(pooled, kernel))
    where = fn.reshape(flat, spatial)
    if covered != spatial:
        where = fn.emit(
            f"stablehlo.slice {where} [{', '.join(f'0:{c}' for c in covered)}] : ({fn.type(where)}) -> "
            f"{tensor_type(Aval(covered, slope.int64))}",
            Aval(covered, slope.int64),
        )
    where = fn.broadcast(fn.reshape(where, split[len(lead) :]), split)
    written = fn.select(fn.compare("EQ", arg_b, where), src_b, fn.constant(0, Aval(split, dtype)))
    written = fn.reshape(written, (*lead, *covered))
    if covered != spatial:
        pad_value = fn.constant(0, Aval((), dtype))
        out = Aval((*lead, *spatial), dtype)
        zeros = ", ".join("0" for _ in out.shape)
        high = ", ".join(str(s - c) for s, c in zip(out.shape, (*lead, *covered)))
        written = fn.emit(
            f"stablehlo.pad {written}, {pad_value}, low = [{zeros}], high = [{high}], interior = [{zeros}] : "
            f"({fn.type(written)}, {fn.type(pad_value)}) -> {tensor_type(out)}",
            out,
        )
    return fn.reshape(written, x_aval.shape)


def _scatter_add(fn: Function, inputs: list[str], instruction: Instruction) -> str:
    (x, index, src), x_aval, out = inputs, instruction.inputs[0].aval, instruction.outputs[0].aval
    params = instruction.params
    dim = params["dim"]
    if not instruction.inputs[1].aval.size:  # nothing to add (IREE's compiler crashes on a scatter of no updates)
        return x

    def scatter(x: str, src: str) -> str:
        dtype = fn.avals[x].dtype
        written = _unpool(fn, index, src, x_aval) if params["unique_indices"] else None
        if written is not None:
            return fn.binary("or" if dtype == slope.bool_ else "add", x, written)
        check_scatter_size("slope.scatter_add", x_aval, instruction.inputs[1].aval)
        coordinates = _coordinates(fn, _in_range(fn, index, x_aval.shape[dim], "scatter_add", dim, 0), dim)
        every = ", ".join(map(str, range(x_aval.ndim)))
        scalar = _scalar(dtype)
        combine = "or" if dtype == slope.bool_ else "add"
        unique = "true" if params["unique_indices"] else "false"
        # each src value is added into (a copy of) x in turn, in index order, as PyTorch's scatter_add_ (IREE runs a
        # scatter whose indices may repeat serially over the updates, in order; the copy: IREE scatters in place)
        start = fn.scatter_target(x)
        text = (
            f'"stablehlo.scatter"({start}, {coordinates}, {src}) ({{\n'
            f"      ^bb0(%a: {scalar}, %b: {scalar}):\n"
            f"        %s = stablehlo.{combine} %a, %b : {scalar}\n"
            f"        stablehlo.return %s : {scalar}\n"
            f"    }}) {{indices_are_sorted = false, scatter_dimension_numbers = #stablehlo.scatter<update_window_dims "
            f"= [], inserted_window_dims = [{every}], scatter_dims_to_operand_dims = [{every}], index_vector_dim = "
            f"{x_aval.ndim}>, unique_indices = {unique}}} : ({fn.type(x)}, {fn.type(coordinates)}, {fn.type(src)}) "
            f"-> {fn.type(x)}"
        )
        return fn.emit(text, fn.avals[x])

    return in_float32(fn, [x, src], out.dtype, scatter)


def _fail_if(fn: Function, inputs: list[str], instruction: Instruction) -> str:
    params = instruction.params
    fn.check(fn.any(inputs[0]), params["message"], params["error"])
    return inputs[0]


translations: dict[str, Callable[..., Any]] = {
    "erf": _erf,
    "log_softmax": _log_softmax,
    "relu": _relu,
    "max_pool": _max_pool,
    "max_pool_argmax": _max_pool_argmax,
    "take_along_dim": _take_along_dim,
    "scatter_add": _scatter_add,
    "fail_if": _fail_if,
}

__all__ = ["translations"]
