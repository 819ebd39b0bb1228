"""The transformations: jvp, linearize, vjp, grad, vmap, jit, custom rules and the Jacobians built on them."""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from . import backend as backend_module
from . import tree
from .errors import TransformError
from .ir import Aval, Program, Var, dead_code_elimination
from .operator import Operator, UndefinedPrimal, batch_to_front, move_axis
from .operators import as_tensor, constant, ints, zeros_like
from .tensors import Tensor, functions
from .trace import Trace, Tracer, _busy, active, bind, eval_program, flatten_fun, make_program, new_main, run_procedure
from .tree import describe


def _tensor_leaves(value: Any, keep_numbers: bool = False) -> tuple[list[Tensor], tuple]:  # and what _refill takes
    leaves, treedef = tree.flatten(value)
    kept = tuple(x if keep_numbers and type(x) in (bool, int, float) else None for x in leaves)
    return [as_tensor(x) for x, n in zip(leaves, kept) if n is None], (treedef, kept)


def _refill(kept: tuple, tensors: Sequence, fill: Callable = lambda x: x) -> Any:  # the pytree, numbers (filled) kept
    tensors = iter(tensors)
    return tree.unflatten(kept[0], [next(tensors) if n is None else fill(n) for n in kept[1]])


def _tangents(name: str, primals: list, in_tree: Any, tangents: Any) -> list:
    """The tangents as flat tensors, checked against the primals' structure, shapes and dtypes."""
    tangents_flat, tangent_tree = tree.flatten(tangents)
    if tangent_tree != in_tree:
        raise TransformError(f"slope.{name}: tangents {describe(tangent_tree)} lack the structure {describe(in_tree)}")
    tangents_flat = [as_tensor(t) for t in tangents_flat]
    for primal, tangent in zip(primals, tangents_flat):
        if primal.aval != tangent.aval:
            raise TransformError(f"slope.{name}: tangent {tangent.aval} does not match its primal {primal.aval}")
    return tangents_flat


def _got(value: Any) -> Any:  # what error messages call a value: a tensor by its aval ([3, f32]), others by type
    return value.aval if isinstance(value, Tensor) else type(value).__name__


def _pair(value: Any, must: str) -> Any:  # the value if it is a pair (a tuple or list of two); JAX checks these too
    if not (isinstance(value, (tuple, list)) and len(value) == 2):
        got = f"a {type(value).__name__} of {len(value)}" if isinstance(value, (tuple, list)) else _got(value)
        raise TransformError(f"{must}, got {got}")
    return value


class JVPTracer(Tracer):
    """A primal value with its tangent (None: a tangent known to be zero, as for constants and integers)."""

    __slots__ = ("primal", "tangent")

    def __init__(self, trace: Trace, primal: Tensor, tangent: Tensor | None):
        super().__init__(trace, primal.aval)
        self.primal, self.tangent = primal, tangent


class JVPTrace(Trace):
    """Forward mode: every operator runs its JVP rule on (primal, tangent) pairs."""

    def pure(self, value: Tensor) -> Tensor:
        return JVPTracer(self, value, None)

    def run(self, op: Operator, tracers: list, params: dict) -> list:
        primals = [t.primal for t in tracers]
        zero = all(t.tangent is None for t in tracers)  # known-zero tangents stay zero (no 0 * inf = nan in rules)
        if not zero:  # integer and bool results have zero tangents too
            out_avals = op.infer(*[p.aval for p in primals], **params)
            zero = not any(aval.dtype.is_float for aval in (out_avals if op.multiple_results else [out_avals]))
        if zero:
            outs = bind(op, *primals, **params)
            return [JVPTracer(self, o, None) for o in (outs if op.multiple_results else [outs])]
        if not op.has_rule("jvp"):
            return run_procedure(op, tracers, params, "JVP")
        takes_none = op.symbolic_zeros or (op.linear_inputs == "each" and type(op).jvp is Operator.jvp)  # no `t * 0`
        tangents = [zeros_like(t.primal) if t.tangent is None and not takes_none else t.tangent for t in tracers]
        primal_outs, tangent_outs = op.jvp(primals, tangents, **params)
        return [JVPTracer(self, p, t) for p, t in zip(primal_outs, tangent_outs)]


def _jvp_flat(flat_fn: Callable, primals: list, tangents: list) -> tuple[list, list]:
    with new_main(JVPTrace) as trace:  # (integer inputs have zero tangents by definition, whatever tangent was passed)
        tracers = [JVPTracer(trace, p, t if p.dtype.is_float else None) for p, t in zip(primals, tangents)]
        outs = [trace.full_raise(o) for o in flat_fn(*tracers)]  # (flatten_fun made them tensors)
        return [o.primal for o in outs], [zeros_like(o.primal) if o.tangent is None else o.tangent for o in outs]


def _function(name: str, fn: Any) -> Callable:
    if not callable(fn):
        raise TypeError(f"slope.{name}: expected a function to transform, got {type(fn).__name__} {fn!r}")
    return fn


def jvp(fn: Callable, primals: Sequence, tangents: Sequence) -> tuple[Any, Any]:
    """Forward-mode derivative: `(fn(*primals), J @ tangents)`."""
    if not isinstance(primals, (tuple, list)):  # a bare tangent is caught by its structure
        raise TransformError(f"slope.jvp: primals must be a tuple or list (as in JAX), got {type(primals).__name__}")
    primals_flat, (in_tree, _) = _tensor_leaves(tuple(primals))
    tangents_flat = _tangents("jvp", primals_flat, in_tree, tuple(tangents) if isinstance(tangents, list) else tangents)
    flat_fn, out_tree = flatten_fun(_function("jvp", fn), in_tree)
    primal_outs, tangent_outs = _jvp_flat(flat_fn, primals_flat, tangents_flat)
    return tree.unflatten(out_tree[0], primal_outs), tree.unflatten(out_tree[0], tangent_outs)


def _linearize_flat(flat_fn: Callable, primals: list) -> tuple[list, Program, list]:
    count = len(primals)

    def jvp_fn(*args: Tensor) -> list:
        primal_outs, tangent_outs = _jvp_flat(flat_fn, list(args[:count]), list(args[count:]))
        return primal_outs + tangent_outs

    program = make_program(jvp_fn, [p.aval for p in primals] * 2)  # (the tangents have the primals' avals)
    linear_vars, primal_part, linear_part = set(program.inputs[count:]), [], []
    for instruction in program.instructions:
        if any(v in linear_vars for v in instruction.inputs):
            linear_part.append(instruction)
            linear_vars.update(instruction.outputs)
        else:
            primal_part.append(instruction)
    n_out = len(program.outputs) // 2
    tangent_outputs = program.outputs[n_out:]
    needed = [v for i in linear_part for v in i.inputs] + tangent_outputs
    residual_vars = list(dict.fromkeys(v for v in needed if v not in linear_vars))
    constants = (program.constants, program.constant_values)
    primal_program = Program(program.inputs[:count], primal_part, program.outputs[:n_out] + residual_vars, *constants)
    outs = eval_program(dead_code_elimination(primal_program), primals)
    return outs[:n_out], Program(residual_vars + program.inputs[count:], linear_part, tangent_outputs), outs[n_out:]


def backward_pass(program: Program, residuals: list, cotangents: list) -> list:
    """Transpose a linear Program: push output cotangents back to its linear inputs."""
    known = dict(zip(program.inputs[: len(residuals)], residuals))
    accumulated: dict[Var, Tensor] = {}

    def accumulate(var: Var, ct: Tensor | None) -> None:  # None is a zero cotangent; residuals get no cotangent
        if ct is not None and var not in known:
            accumulated[var] = accumulated[var] + ct if var in accumulated else ct

    for var, ct in zip(program.outputs, cotangents):
        accumulate(var, ct)
    for instruction in reversed(program.instructions):
        cts = [accumulated.pop(v, None) for v in instruction.outputs]
        if all(ct is None for ct in cts):
            continue
        op = instruction.op
        if not op.has_rule("transpose"):
            raise TransformError(f"slope.{op.name}: has no transpose rule (reverse mode needs one, or a procedure)")
        cts = [zeros_like(v.aval) if ct is None else ct for ct, v in zip(cts, instruction.outputs)]
        args = [known[v] if v in known else UndefinedPrimal(v.aval) for v in instruction.inputs]
        for var, ct in zip(instruction.inputs, op.transpose(cts, *args, **instruction.params)):
            accumulate(var, ct)
    return [accumulated[v] if v in accumulated else zeros_like(v.aval) for v in program.inputs[len(residuals) :]]


def linearize(fn: Callable, *primals: Any) -> tuple[Any, Callable]:
    """`(fn(*primals), f_jvp)` where `f_jvp(*tangents)` applies the Jacobian, evaluated once."""
    primals_flat, (in_tree, _) = _tensor_leaves(primals)
    flat_fn, out_tree = flatten_fun(_function("linearize", fn), in_tree)
    outs, program, residuals = _linearize_flat(flat_fn, primals_flat)

    def f_jvp(*tangents: Any) -> Any:
        tangents_flat = _tangents("linearize", primals_flat, in_tree, tangents)
        return tree.unflatten(out_tree[0], eval_program(program, residuals + tangents_flat))

    return tree.unflatten(out_tree[0], outs), f_jvp


def vjp(fn: Callable, *primals: Any, has_aux: bool = False) -> tuple:
    """`(fn(*primals), vjp_fn)` where `vjp_fn(cotangent)` returns a tuple of cotangents, one per primal."""
    primals_flat, (in_tree, _) = _tensor_leaves(primals)

    def main_fn(*args: Any) -> Any:
        out = _function("vjp", fn)(*args)  # has_aux: the whole pair (the primal program gives the aux leaves concrete)
        return _pair(out, "slope.grad/vjp: with has_aux=True, return a pair (output, aux)") if has_aux else out

    flat_fn, out_tree = flatten_fun(main_fn, in_tree)
    outs, program, residuals = _linearize_flat(flat_fn, primals_flat)
    out_treedef, aux = out_tree[0], None
    if has_aux:
        out_treedef, aux_treedef = out_treedef.children()
        outs, aux = outs[: out_treedef.num_leaves], tree.unflatten(aux_treedef, outs[out_treedef.num_leaves :])

    def vjp_fn(cotangent: Any) -> tuple:
        ct_flat, ct_tree = tree.flatten(cotangent)
        if ct_tree != out_treedef:
            raise TransformError(f"slope.vjp: cotangent structure {describe(ct_tree)} is not {describe(out_treedef)}")
        for o, ct in zip(outs, ct_flat):  # (NumPy data and numbers take the output's dtype: their shape must match)
            if (aval := ct.aval if isinstance(ct, Tensor) else Aval(np.shape(ct), o.dtype)) != o.aval:
                raise TransformError(f"slope.vjp: cotangent {aval} does not match the output {o.aval}")
        cts = [as_tensor(ct, o.dtype) for ct, o in zip(ct_flat, outs)] + [None] * (len(program.outputs) - len(outs))
        return tree.unflatten(in_tree, backward_pass(program, residuals, cts))  # (None: aux outputs get no cotangent)

    out = tree.unflatten(out_treedef, outs)
    return (out, vjp_fn, aux) if has_aux else (out, vjp_fn)


def _differentiated(name: str, fn: Callable, argnums: int | Sequence[int], args: tuple, kwargs: dict) -> tuple:
    """`fn` of its arguments `argnums` alone (the rest fixed), and those arguments (checked: float tensors or pytrees)."""
    count, nums = len(args), ints(name, argnums, "argnums")
    if not nums or not all(-count <= n < count for n in nums) or len({n % count for n in nums}) < len(nums):
        raise TransformError(f"slope.{name}: argnums {argnums} is empty, out of range or repeats for {count} arguments")
    nums = tuple(n % count for n in nums)
    for n, leaf in [(i, leaf) for i in nums for leaf in tree.leaves(args[i])]:
        tensor = as_tensor(leaf) if isinstance(leaf, (Tensor, int, float)) or hasattr(leaf, "__array__") else None
        if tensor is None or not tensor.dtype.is_float:
            held = f"argument {n} holds {type(leaf).__name__ if tensor is None else tensor.dtype.name}"
            trees = " (or pytrees of them; register containers with slope.tree.register)" if name == "grad" else ""
            raise TransformError(f"slope.{name}: {held}; derivatives need floating-point tensors{trees}: cast it with "
                                 ".float(), or leave it out of argnums")  # fmt: skip

    def partial_fn(*diff_args: Any) -> Any:
        differentiated = dict(zip(nums, diff_args))
        return fn(*[differentiated.get(i, arg) for i, arg in enumerate(args)], **kwargs)

    return partial_fn, tuple(args[n] for n in nums)


def value_and_grad(fn: Callable, argnums: int | Sequence[int] = 0, has_aux: bool = False) -> Callable:
    """A function returning `(fn(*args), gradient)` (or `((value, aux), gradient)` with has_aux)."""

    @functools.wraps(_function("value_and_grad", fn))
    def value_and_grad_fn(*args: Any, **kwargs: Any) -> Any:
        partial_fn, diff_args = _differentiated("grad", fn, argnums, args, kwargs)
        out, vjp_fn, *aux = vjp(partial_fn, *diff_args, has_aux=has_aux)
        if not isinstance(out, Tensor) or out.shape != () or not out.dtype.is_float:
            must = f"the function must return a scalar (0-d) floating-point tensor, got {_got(out)}"
            raise TransformError(f"slope.grad: {must}; reduce it (e.g. .sum()) or use slope.vjp / slope.jacrev")
        seed = constant(1.0, out.dtype)  # (shared: a gradient that is the seed itself, as `+ b` hands b, is copied)
        grads = tree.map(lambda g: functions["stop_gradient"](g) if g is seed else g, vjp_fn(seed))
        return ((out, *aux) if has_aux else out), (grads[0] if isinstance(argnums, (int, np.integer)) else grads)

    return value_and_grad_fn


def grad(fn: Callable, argnums: int | Sequence[int] = 0, has_aux: bool = False) -> Callable:
    """A function returning the gradient of scalar-valued `fn` with respect to `argnums` (and aux with has_aux)."""
    value_and_grad_fn = value_and_grad(_function("grad", fn), argnums, has_aux)

    @functools.wraps(fn)
    def grad_fn(*args: Any, **kwargs: Any) -> Any:
        value, grads = value_and_grad_fn(*args, **kwargs)
        return (grads, value[1]) if has_aux else grads

    return grad_fn


class BatchTracer(Tracer):
    """A value with a batch dimension (or None when it is the same for every example)."""

    __slots__ = ("value", "batch_dim")

    def __init__(self, trace: Trace, value: Tensor, batch_dim: int | None):
        shape = value.shape if batch_dim is None else value.shape[:batch_dim] + value.shape[batch_dim + 1 :]
        super().__init__(trace, Aval(shape, value.dtype))
        self.value, self.batch_dim = value, batch_dim

    def full_lower(self) -> Tensor:
        if self.batch_dim is not None:
            return self
        return self.value.full_lower() if isinstance(self.value, Tracer) else self.value


class BatchTrace(Trace):
    """vmap: every operator runs its batching rule."""

    def pure(self, value: Tensor) -> Tensor:
        return BatchTracer(self, value, None)

    def run(self, op: Operator, tracers: list, params: dict) -> list:
        values, dims = [t.value for t in tracers], [t.batch_dim for t in tracers]
        if all(d is None for d in dims):
            outs = bind(op, *values, **params)
            return [BatchTracer(self, o, None) for o in (outs if op.multiple_results else [outs])]
        if not op.has_rule("vmap"):
            return run_procedure(op, tracers, params, "batching")
        op.infer(*[t.aval for t in tracers], **params)  # (bad input is named with the user's unbatched shapes)
        outs, out_dims = op.vmap(self.main.data, values, dims, **params)
        return [BatchTracer(self, o, d) for o, d in zip(outs, out_dims)]


def _axes_for_leaves(axes: Any, value: Any) -> list:
    """Broadcast an axis spec (an int/None, or a pytree prefix of the value) to one entry per leaf."""
    if axes is None or (isinstance(axes, int) and not isinstance(axes, bool)):  # (False mapped axis 0)
        return [axes] * len(tree.leaves(value))
    if isinstance(axes, (tuple, list)) and isinstance(value, (tuple, list)) and len(axes) == len(value):
        return [a for sub_axes, sub in zip(axes, value) for a in _axes_for_leaves(sub_axes, sub)]
    if isinstance(axes, dict) and isinstance(value, dict) and axes.keys() == value.keys():
        return [a for k in tree.structure(value).entries() for a in _axes_for_leaves(axes[k], value[k])]
    raise TransformError(f"slope.vmap: axes {axes!r} do not match the structure of the arguments")


def vmap(fn: Callable, in_axes: Any = 0, out_axes: Any = 0, axis_size: int | None = None) -> Callable:
    """Map `fn` over a batch dimension of its arguments (`in_axes`) into one of its outputs (`out_axes`); `axis_size`
    gives the batch size where no argument is mapped (and must agree with the mapped ones, as in JAX)."""

    @functools.wraps(_function("vmap", fn))
    def vmapped(*args: Any, **kwargs: Any) -> Any:  # keyword arguments pass through unmapped (torch.func.vmap's rule)
        if isinstance(in_axes, (tuple, list)) and len(in_axes) != len(args):
            raise TransformError(f"slope.vmap: in_axes {in_axes} has {len(in_axes)} entries for {len(args)} arguments")
        xs, in_tree = tree.flatten(args)
        axes = _axes_for_leaves(in_axes, args)  # (unmapped numbers, strings, functions stay so, as in JAX)
        flat = [x if a is None and not isinstance(x, (Tensor, np.ndarray)) else as_tensor(x) for x, a in zip(xs, axes)]
        for x, axis in zip(flat, axes):
            if axis is not None and not -x.ndim <= axis < x.ndim:
                raise TransformError(f"slope.vmap: in_axes {axis} is out of range for an argument of shape {x.shape}")
        axes = [None if axis is None else axis % x.ndim for x, axis in zip(flat, axes)]
        sizes = {f"argument leaf {i}": x.shape[axis] for i, (x, axis) in enumerate(zip(flat, axes)) if axis is not None}
        sizes |= {"axis_size": ints("vmap", axis_size, "axis_size", 0)[0]} if axis_size is not None else {}
        if not sizes:
            raise TransformError("slope.vmap: in_axes maps no argument; one must have a batch axis, or give axis_size")
        if len(set(sizes.values())) > 1:
            detail = ", ".join(f"{i} has size {s}" for i, s in sizes.items())
            raise TransformError(f"slope.vmap: mapped axes must all have the same size, but {detail}")
        size = next(iter(sizes.values()))
        flat_fn, out_tree = flatten_fun(functools.partial(fn, **kwargs) if kwargs else fn, in_tree)
        with new_main(BatchTrace, size) as trace:
            tracers = [BatchTracer(trace, x, a) if isinstance(x, Tensor) else x for x, a in zip(flat, axes)]
            outs = [trace.full_raise(o) for o in flat_fn(*tracers)]  # (flatten_fun made them tensors)
            values, dims = [o.value for o in outs], [o.batch_dim for o in outs]
        targets, results = _axes_for_leaves(out_axes, tree.unflatten(out_tree[0], values)), []  # (a Module: tensors)
        for value, dim, target in zip(values, dims, targets):
            if target is None and dim is not None:  # JAX's rule: out_axes None is for outputs that are not mapped
                raise TransformError(f"slope.vmap: out_axes is None for an output that depends on the mapped inputs "
                                     f"(shape {value.shape}, batch axis {dim}); give it an axis or make it unbatched")  # fmt: skip
            if dim is None and target is not None:
                value, dim = batch_to_front(value, None, size), 0
            if target is not None and not -value.ndim <= target < value.ndim:
                per_example = f"a per-example output of shape {value.shape[:dim] + value.shape[dim + 1 :]}"
                raise TransformError(f"slope.vmap: out_axes {target} is out of range for {per_example} (expected "
                                     f"{-value.ndim} to {value.ndim - 1})")  # fmt: skip
            results.append(move_axis(value, dim, target % value.ndim) if target is not None else value)
        return tree.unflatten(out_tree[0], results)

    return vmapped


def _basis(aval: Aval) -> Tensor:
    return functions["eye"](aval.size, dtype=aval.dtype).reshape((aval.size, *aval.shape))


def _jacobian(name: str, fn: Callable, argnums: int | Sequence[int], build: Callable) -> Callable:
    """A function of `fn`'s arguments giving `build(f, x)`: `f` is `fn` of its `argnums` argument alone, at `x`."""

    def one(n: int, args: tuple, kwargs: dict) -> Any:  # the Jacobian with respect to argument n
        f, (x,) = _differentiated(name, fn, n, args, kwargs)
        if not isinstance(x, (Tensor, np.ndarray, np.generic, int, float)):  # (a tuple was stacked: J[0] not d/dx[0])
            raise TransformError(f"slope.{name}: differentiates with respect to one tensor, got {type(x).__name__} "
                                 "(pytrees are not supported: one Jacobian per tensor, or slope.tensor(a list))")  # fmt: skip
        return build(f, as_tensor(x), name)

    @functools.wraps(_function(name, fn))
    def jacobian(*args: Any, **kwargs: Any) -> Any:
        if isinstance(argnums, (int, np.integer)):
            return one(argnums, args, kwargs)
        _differentiated(name, fn, argnums, args, kwargs)  # (checks them together: none repeated, in range, not empty)
        return tree.map(lambda *per_argument: per_argument, *[one(n, args, kwargs) for n in argnums])  # (as JAX)

    return jacobian


def _forward(f: Callable, x: Tensor, name: str) -> Any:  # jacfwd's and hessian's Jacobian of f at x
    columns = vmap(lambda tangent: jvp(f, (x,), (tangent,))[1], out_axes=-1)(_basis(x.aval))  # (*out, x.size)
    return tree.map(lambda column: column.reshape((*column.shape[:-1], *x.shape)), columns)


def jacfwd(fn: Callable, argnums: int | Sequence[int] = 0) -> Callable:
    """The Jacobian of `fn` by forward mode (one JVP per input element, batched with vmap); outputs may be pytrees."""
    return _jacobian("jacfwd", fn, argnums, _forward)


def _reverse(f: Callable, x: Tensor, name: str) -> Tensor:  # jacrev's (and hessian's inner) Jacobian of f at x
    out, vjp_fn = vjp(f, x)
    if not isinstance(out, Tensor) or not out.dtype.is_float:  # (PyTorch and JAX refuse integers: zero rows)
        raise TransformError(f"slope.{name}: expected one floating-point output, got {_got(out)}")
    return vmap(lambda ct: vjp_fn(ct)[0])(_basis(out.aval)).reshape((*out.shape, *x.shape))


def jacrev(fn: Callable, argnums: int | Sequence[int] = 0) -> Callable:
    """The Jacobian of `fn` by reverse mode (one VJP per output element, batched with vmap)."""
    return _jacobian("jacrev", fn, argnums, _reverse)


def hessian(fn: Callable, argnums: int | Sequence[int] = 0) -> Callable:
    """The Hessian of scalar `fn`: `jacfwd(jacrev(fn))`."""
    return _jacobian("hessian", _jacobian("hessian", fn, argnums, _reverse), argnums, _forward)


class _CustomCall(Operator):
    """An operator whose parameters hold user functions (the rules): batching maps those functions too."""

    multiple_results = True

    def infer(self, *avals: Aval, out_avals: tuple, **params: Any) -> list[Aval]:
        return list(out_avals)

    def vmap(self, axis_size: int, args: list, dims: list, *, out_avals: tuple, **params: Any) -> tuple[list, list]:
        args = [batch_to_front(a, d, axis_size) for a, d in zip(args, dims)]
        batched = {k: vmap(v) if callable(v) else v for k, v in params.items()}
        outs = bind(self, *args, out_avals=tuple(Aval((axis_size, *a.shape), a.dtype) for a in out_avals), **batched)
        return outs, [0] * len(outs)


class CustomJVPCall(_CustomCall):
    """Calls `fun` with the user's JVP `rule`; outside forward mode it is `fun` itself (traced straight through)."""

    inline = True
    symbolic_zeros = True  # (given to rules that ask for them: None for a tangent known to be zero)

    def procedure(self, *args: Tensor, fun: Callable, **params: Any) -> list:
        return fun(*args)

    def jvp(self, primals: list, tangents: list, *, rule: Callable, **params: Any) -> tuple[list, list]:
        if not params["zeros"]:  # (the rule gets tensors of zeros, as JAX's without symbolic_zeros)
            tangents = [zeros_like(p) if t is None else t for p, t in zip(primals, tangents)]
        outs, tangent_outs = ([as_tensor(v) for v in tree.leaves(part)] for part in rule(primals, tangents))  # (a pair)
        got, expected = [o.aval for o in outs] + [t.aval for t in tangent_outs], list(params["out_avals"]) * 2
        if got != expected:  # (JAX checks too: jacfwd had a wrong shape, a vjp the fwd's shape)
            raise TransformError(f"slope.custom_jvp: the rule's outputs and tangents {got} should be {expected}")
        return outs, tangent_outs


class CustomVJPLinear(_CustomCall):
    """The linear part of a custom_vjp function: only its transpose (the user's backward function) exists."""

    def procedure(self, *args: Tensor, **params: Any) -> list:
        raise TransformError("slope.custom_vjp: has no forward mode (jvp, jacfwd); for that, write a slope.custom_jvp")

    def transpose(self, cotangents: list, *args: Any, bwd: Callable, out_tree: Any, out_avals: tuple, in_tree: Any,
                  n_res: int) -> list:  # fmt: skip
        cts_in = bwd(args[:n_res], tree.unflatten(out_tree, cotangents))
        try:  # the inputs' structure, as JAX checks it (leaf by leaf, a dict's cotangents for a namedtuple would swap)
            flat = in_tree.flatten_up_to(cts_in)  # (None: a zero cotangent, for a leaf or a None input)
        except ValueError as error:
            raise TransformError(f"slope.custom_vjp: the backward function must return a tuple of cotangents "
                                 f"{describe(in_tree)}, one per input: {error}") from None  # fmt: skip
        linear_avals = [a.aval for a in args[n_res:]]
        for i, (ct, aval) in enumerate(zip(flat, linear_avals)):
            if ct is not None and aval.dtype.is_float and (got := as_tensor(ct).aval) != aval:  # (an int's is ignored)
                raise TransformError(f"slope.custom_vjp: the backward function returned a cotangent of shape {got.shape} "
                                     f"({got.dtype.name}) for input {i} of shape {aval.shape} ({aval.dtype.name}); "
                                     "expected both")  # fmt: skip
        return [None] * n_res + [as_tensor(ct) if a.dtype.is_float and ct is not None else zeros_like(a)
                                 for ct, a in zip(flat, linear_avals)]  # fmt: skip


custom_jvp_call, custom_vjp_linear = CustomJVPCall(), CustomVJPLinear()


class custom_jvp:  # noqa: N801 - named like the JAX decorator users know
    """A function with a hand-written JVP: decorate it, then register `rule(primals, tangents)` with `.defjvp`."""

    def __init__(self, fun: Callable):
        functools.update_wrapper(self, fun)
        self.fun, self.rule, self.zeros = fun, None, False  # (the rule: set by defjvp or defvjp)

    def defjvp(self, rule: Callable, symbolic_zeros: bool = False) -> Callable:
        """Set `rule(primals, tangents) -> (out, tangent_out)`; symbolic_zeros (JAX's): None for a tangent known zero."""
        self.rule, self.zeros = rule, symbolic_zeros
        return rule

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        kind, name = type(self).__name__, getattr(self.fun, "__name__", "the function")  # (a partial has no name)
        if self.rule is None:
            define = ".defvjp(fwd, bwd)" if isinstance(self, custom_vjp) else ".defjvp(rule)"
            raise TransformError(f"slope.{kind}: {name} has no rule; call {define} first")
        if not active(JVPTrace):  # only forward mode reads the rule: elsewhere, the function itself (traced once)
            return self.fun(*args, **kwargs)
        if kwargs:  # rules see the arguments given, by position: keywords placed by the signature (defaults are not)
            args = (bound := inspect.signature(self.fun).bind(*args, **kwargs)).args
            if bound.kwargs:  # (keyword-only, **kwargs, or after an argument left to its default)
                raise TypeError(f"slope.{kind}: {name}'s rule takes positions: pass {list(bound.kwargs)} by position")
        flat, kept = _tensor_leaves(args, keep_numbers=True)  # Python numbers stay so (float64 code: 0.1 exact)
        fun, out_trees = flatten_fun(lambda *a: self.fun(*_refill(kept, a)), tree.flatten(flat)[1])

        def rule(p: list, t: list) -> Any:  # (a number's tangent: 0, or None with symbolic zeros)
            pair = self.rule(_refill(kept, p), _refill(kept, t, lambda n: None if self.zeros else type(n)(0)))
            out, tangent = _pair(pair, f"slope.{kind}: the rule of {name} must return a pair (output, tangent)")
            if not tree.structure(out) == tree.structure(tangent) == out_trees[0]:  # (as JAX: else leaves could swap)
                parts = " and ".join(describe(tree.structure(part)) for part in pair)  # (custom_vjp's: fwd's output)
                raise TransformError(f"slope.{kind}: {name}'s rule gave {parts}, not {describe(out_trees[0])} twice")
            return pair

        from .trace import _local  # (bind's choice of level: the innermost of the arguments' and the dynamic one)

        program = make_program(fun, [a.aval for a in flat])
        level = max([a._trace.main.level for a in flat if isinstance(a, Tracer)] + [_local.dynamic[-1].level])
        if any(isinstance(c, JVPTracer) and c._trace.main.level > level for c in program.constant_values):  # (JAX's)
            raise TransformError(f"slope.{kind}: {name} closes over a value that an outer grad/jvp differentiates, "
                                 "which its rule cannot see: pass it as an argument")  # fmt: skip
        outs = bind(custom_jvp_call, *flat, fun=fun, rule=rule, out_avals=tuple(program.out_avals), zeros=self.zeros)
        return tree.unflatten(out_trees[0], outs)


class custom_vjp(custom_jvp):  # noqa: N801 - named like the JAX decorator users know
    """A function with a hand-written VJP: decorate it, then register `.defvjp(fwd, bwd)`."""

    def defvjp(self, fwd: Callable, bwd: Callable) -> None:
        """Set `fwd(*args) -> (out, residuals)` and `bwd(residuals, cotangent) -> tuple of input cotangents`."""

        def rule(primals: tuple, tangents: tuple) -> tuple:  # its linear part transposes to `bwd`
            out, residuals = _pair(fwd(*primals), "slope.custom_vjp: fwd must return a pair (output, residuals)")
            (out_flat, out_tree), (res_flat, kept) = tree.flatten(out), _tensor_leaves(residuals, True)
            flat_bwd = lambda res, ct: bwd(_refill(kept, res), ct)  # noqa: E731 - (vmap maps it: numbers go in inside)
            params = {"bwd": flat_bwd, "out_tree": out_tree, "out_avals": tuple(as_tensor(o).aval for o in out_flat)}
            linear, in_tree = tree.flatten(tangents)  # (a number's tangent: its 0, 0.0 or False)
            tangent_outs = bind(custom_vjp_linear, *res_flat, *map(as_tensor, linear), **params, in_tree=in_tree,
                                n_res=len(res_flat))  # fmt: skip
            return out, tree.unflatten(out_tree, tangent_outs)

        self.rule = rule


@dataclass
class Lowered:
    """A traced and compiled function: `.program` (slope IR), `.code` (backend code), `.export(path)`."""

    program: Program
    executable: Any
    backend: Any
    code: str  # the backend's code for the program

    def export(self, path: str, **options: Any) -> list[str]:
        """Write a model that runs without Slope (.onnx, .mlir+.vmfb or .py by backend; options such as iree's target)."""
        return self.backend.export(self.executable.program, str(path), **options)


_LEAVES, _TENSOR = frozenset({Tensor, np.ndarray}), frozenset({Tensor})  # the argument types of jit's common calls


class jit:  # noqa: N801 - used as a decorator, like jax.jit
    """Trace a function to a Program once per input signature, compile it on the backend, and cache it."""

    def __init__(self, fn: Callable, static_argnums: int | Sequence[int] = (), static_argnames: Sequence[str] = (),
                 donate_argnums: int | Sequence[int] = ()):  # fmt: skip
        functools.update_wrapper(self, fn, updated=("__dict__",) if inspect.isroutine(fn) else ())  # (not a model's)
        # a called pytree (nn.Module) or its method's: its tensors are argument 0, read at each call (torch.compile's)
        owner = fn if not inspect.isroutine(fn) else getattr(fn, "__self__", None)
        self.owner = owner if type(owner) is not Tensor and all(type(t) is Tensor for t in tree.leaves(owner)) else None
        self.fn, self.shift = (fn, 0) if self.owner is None else (getattr(fn, "__func__", type(fn).__call__), 1)
        self.static_argnums, self.donate_argnums = (ints("jit", n, "argnums") for n in (static_argnums, donate_argnums))
        if both := set(self.static_argnums) & set(self.donate_argnums):  # (as JAX: a static value has no buffer)
            raise TransformError(f"slope.jit: arguments {sorted(both)} are in both static_argnums and donate_argnums")
        self.static_argnames = (static_argnames,) if isinstance(static_argnames, str) else tuple(static_argnames)
        try:  # (a builtin may have no signature: then numbers name nothing)
            signature = inspect.signature(fn).parameters.values() if static_argnames or static_argnums else ()
        except ValueError:
            signature = ()
        positional = [p.name for p in signature if p.kind <= p.POSITIONAL_OR_KEYWORD]  # (as JAX: names and numbers
        self.numbered = {n: positional[n] for n in self.static_argnums if 0 <= n < len(positional)}  # both)
        self.static_argnames += tuple(self.numbered.values())
        self.named_positions = {i + self.shift for i, name in enumerate(positional) if name in self.static_argnames}
        self.cache = backend_module.BoundedCache(backend_module.JIT_CACHE_SIZE, 2**30, _program_bytes)

    def __get__(self, instance: Any, owner: Any = None) -> Callable:
        return self if instance is None else functools.partial(self, instance)

    def _statics(self, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """The arguments with the static ones wrapped (`_Static`: one leaf, keyed by its value)."""
        count = len(args) - self.shift  # (the caller's arguments, after the owner)
        numbers = range(-count, count)  # (negative: from the end; one whose argument came by keyword is named too)
        if bad := [n for n in self.static_argnums if n not in numbers and self.numbered.get(n) not in kwargs]:
            raise TransformError(f"slope.jit: static_argnums {bad[0]} is out of range for {count} arguments")
        static = {n % count + self.shift for n in self.static_argnums if n in numbers}
        static |= {i for i in self.named_positions if i < len(args)}
        args = tuple(_static(a) if i in static else a for i, a in enumerate(args))
        return args, {k: _static(v) if k in self.static_argnames else v for k, v in kwargs.items()}

    def _compiled(self, args: tuple, kwargs: dict) -> tuple[tuple, list, Any, str]:
        """The compiled entry for these arguments (by tree, tensor avals, other leaves), their tensors, backend, device."""
        if self.static_argnums or self.static_argnames:
            args, kwargs = self._statics(args, kwargs)
        if not kwargs and _LEAVES.issuperset(map(type, args)):  # the common call: a tuple of leaves, whose
            tensors, others = [a if type(a) is Tensor else functions["tensor"](a) for a in args], ()
            in_tree = len(args)  # length stands for its tree in the key (cheaper than optree's, to make and to hash)
        else:
            leaves, in_tree = tree.flatten((args, kwargs) if kwargs else args)  # (a _Static is one leaf)
            tensors, others = leaves, ()  # (a tree of tensors only, as a train step's: nothing more to do)
            if not _TENSOR.issuperset(map(type, leaves)):  # floats and ints are traced, as in JAX: 0-d tensors
                leaves = [as_tensor(x) if type(x) in (float, int) or isinstance(x, np.ndarray) else x for x in leaves]
                tensors = [leaf for leaf in leaves if isinstance(leaf, Tensor)]
                others = tuple((i, _static(leaf)) for i, leaf in enumerate(leaves) if not isinstance(leaf, Tensor))
        backend = backend_module._state["backend"] or backend_module.get_backend()
        device = tensors[0].device if tensors else backend_module.default_device()
        key = (in_tree, bool(kwargs), others, backend, device, *map(backend_module._aval, tensors))
        try:
            entry = self.cache.recent.get(key)
        except TypeError as error:  # (the lookup hashes the key: no separate check on the call path)
            raise TransformError(f"slope.jit: {self.fn.__name__}: static arguments and non-tensor leaves must be "
                                 f"hashable ({error})") from None  # fmt: skip
        if entry is None:  # (threads that miss together each compile; the last one's entry stays)
            entry = self.cache.add(key, self._compile, key, tensors, backend, device)
        return entry, tensors, backend, device

    def _compile(self, key: tuple, tensors: list, backend: Any, device: str) -> tuple:
        in_tree, with_kwargs, others = key[:3]  # (with_kwargs: the tree is of (args, kwargs), else of args)
        in_tree = tree.structure(tuple(tensors)) if type(in_tree) is int else tree.sort_dicts(in_tree)  # (as JAX)
        flat_fn, out_trees = flatten_fun((lambda a, k: self.fn(*a, **k)) if with_kwargs else self.fn, in_tree)

        def traced_fn(*traced: Tensor) -> list:  # the non-tensor leaves go back between the traced ones
            leaves = list(traced)
            for i, value in others:
                leaves.insert(i, value.value)
            return flat_fn(*leaves)

        program = make_program(traced_fn, [t.aval for t in tensors])
        return program, backend_module.compile_program(program, backend, device), out_trees[0]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        args = args if self.owner is None else (self.owner, *args)
        if _busy and active():  # inside another transformation: trace straight through, numbers as a call takes them
            args, kwargs = self._statics(args, kwargs)
            return self.fn(*map(_traced, args), **{k: _traced(v) for k, v in kwargs.items()})
        (_, executable, out_tree), tensors, backend, device = self._compiled(args, kwargs)
        outs = backend_module.run_executable(executable, tensors, backend, device)
        if self.donate_argnums:  # (numbers of the caller's arguments, from either end; others are ignored)
            numbers = range(self.shift - len(args), len(args) - self.shift)
            for leaf in tree.leaves([args[self.shift :][i] for i in self.donate_argnums if i in numbers]):
                if type(leaf) is Tensor:  # its memory is the backend's again (onnxruntime writes later results there)
                    leaf.buffer = leaf.backend = _Donated()
        return out_tree.unflatten(outs)  # (the program's outputs are this tree's leaves: no count to check)

    def lower(self, *args: Any, **kwargs: Any) -> Lowered:
        """Trace and compile for these arguments without running."""
        if self.owner is not None:  # the model's tensors are constants of what it lowers (an export takes the inputs)
            owned = functools.partial(self.fn, self.owner)
            return jit(owned, self.static_argnums, self.static_argnames, self.donate_argnums).lower(*args, **kwargs)
        (program, executable, _), _, backend, _ = self._compiled(args, kwargs)
        return Lowered(program, executable, backend, executable.code)


class _Donated:
    """What a donated tensor holds instead of its buffer and backend: any use of it says so."""

    def __getattr__(self, name: str) -> Any:
        raise TransformError("slope.jit: this tensor was donated (donate_argnums); use the results of that call")


def _program_bytes(entry: tuple) -> int:
    return sum(v.aval.size * v.aval.dtype.bits // 8 for v in entry[0].constant_values)


@dataclass(frozen=True)
class _Static:
    """A static argument of a jitted function, passed to the function as is; `key` is its part of the cache key."""

    value: Any = field(compare=False)
    key: Any = None


def _traced(arg: Any) -> Any:  # an argument as a jitted function sees it: numbers as 0-d tensors (float32, int64)
    leaves, treedef = tree.flatten(arg)
    new = [as_tensor(x) if type(x) in (float, int) else x.value if type(x) is _Static else x for x in leaves]
    return arg if all(a is b for a, b in zip(leaves, new)) else tree.unflatten(treedef, new)  # (a module kept whole)


def _static(v: Any) -> _Static:  # keyed by type and value, floats by bits: 1, 1.0, True, or 0.0 and -0.0 differ
    bits = float(v).hex() if isinstance(v, (float, np.floating)) else v  # (NumPy's floats too)
    key = type(v), tuple(_static(i).key for i in v) if isinstance(v, tuple) else bits  # (namedtuples too)
    return v if type(v) is _Static else _Static(v, key)
