"""Collectives inside traced functions, and data-parallel train steps.

`all_reduce` (and `pmean`, `psum`) of traced tensors records one `all_reduce` operator in the Program, with
differentiation and batching rules (the transpose of a sum over ranks is a sum over ranks). No backend can run it
inside a compiled program (ONNX Runtime's and IREE's own collectives are NCCL-only), so `data_parallel` splits the
traced Program around it: stage 0 (compiled) -> host reduction of one flat buffer -> stage 1 (compiled) -> ... A
plain `slope.jit` holding one compiles it as the identity when the world has one rank and refuses otherwise.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

import numpy as np

import slope
from slope import Operator, Tensor
from slope.backend import compile_program, default_device, run_executable
from slope.errors import TransformError
from slope.ir import Instruction, Program, Var
from slope.trace import Tracer, bind, flatten_fun, make_program
from slope.transforms import _Donated, _Static, _static

from . import collectives
from .engines import SlopeDistributedError


class AllReduce(Operator):
    """The sum, mean or max of each input over every rank (inside a traced function; on the host outside)."""

    name = "all_reduce"
    multiple_results = True

    def __call__(self, *tensors: Tensor, reduce: str = "sum") -> list[Tensor]:
        return _reduce(list(tensors), reduce)

    def infer(self, *avals: Any, reduce: str) -> list:
        if reduce not in collectives.OPS:
            raise ValueError(f"slope.all_reduce: reduce must be one of {collectives.OPS}, got {reduce!r}")
        for aval in avals:
            if reduce == "mean" and not aval.dtype.is_float:
                raise self.dtype_error(f"reduce='mean' needs floating-point tensors, got {aval} (use 'sum')")
        return list(avals)

    def jvp(self, primals: list, tangents: list, *, reduce: str) -> tuple[list, list]:
        self._linear(reduce)
        return _reduce(primals, reduce), _reduce(tangents, reduce)

    def transpose(self, cotangents: list, *args: Any, reduce: str) -> list:
        # y_r = sum_s x_s for every rank r, so x̄_s = sum_r ȳ_r: the same reduction (mean: 1/n of it)
        self._linear(reduce)
        return _reduce(cotangents, reduce)

    def vmap(self, axis_size: int, args: list, dims: list, *, reduce: str) -> tuple[list, list]:
        return _reduce(args, reduce), list(dims)  # elementwise over ranks: the batch dimension stays where it is

    def procedure(self, *tensors: Tensor, reduce: str) -> list[Tensor]:
        """What a backend compiles in a plain `slope.jit`: the identity for one rank, else an error."""
        if collectives.started_world_size() > 1:
            raise SlopeDistributedError(
                f"slope.all_reduce (reduce={reduce!r}): a compiled program cannot reduce over ranks on its own; wrap the "
                "jitted function with slope.distributed.data_parallel, which splits it around the reduction, or "
                "reduce outside jit with slope.distributed.all_reduce"
            )
        return list(tensors)

    def _linear(self, reduce: str) -> None:
        if reduce == "max":
            raise TransformError("slope.all_reduce: reduce='max' is not differentiable; reduce with 'sum' or 'mean'")


ALL_REDUCE = AllReduce()


def _reduce(tensors: list, op: str) -> list:
    """Bind the operator for traced tensors, reduce on the host for concrete ones (eager grad and vmap included)."""
    if any(isinstance(t, Tracer) for t in tensors):
        return bind(ALL_REDUCE, *tensors, reduce=op)
    return list(collectives.all_reduce(list(tensors), op))


def all_reduce_operator(leaves: list, op: str) -> list:
    """The operator applied to the leaves of a tree that holds traced tensors."""
    return bind(ALL_REDUCE, *[leaf if isinstance(leaf, Tensor) else slope.tensor(leaf) for leaf in leaves], reduce=op)


def pmean(tree: Any) -> Any:
    """The mean over every rank of a pytree (gradients: between `value_and_grad` and the optimizer step)."""
    return collectives.all_reduce(tree, "mean")


def psum(tree: Any) -> Any:
    """The sum over every rank of a pytree."""
    return collectives.all_reduce(tree, "sum")


# ----------------------------------------------------------------------------------------------- data_parallel


class _Stage:
    """A compiled piece of the split program, or the host reductions that follow it."""

    def __init__(self, program: Program | None, executable: Any, reductions: dict[str, list[Instruction]]):
        self.program, self.executable, self.reductions = program, executable, reductions


class SplitProgram:
    """A traced function split around its `all_reduce` instructions: `.programs` are the compiled pieces."""

    def __init__(self, program: Program, backend: Any, device: str, out_tree: Any,
                 context: collectives.Context | None = None):  # fmt: skip
        self.program, self.backend, self.device, self.out_tree = program, backend, device, out_tree
        self.context = context  # (the step and its arguments, checked with every reduction)
        level: dict[Var, int] = dict.fromkeys([*program.inputs, *program.constants], 0)
        pieces: list[list[Instruction]] = [[]]
        reductions: list[dict[str, list[Instruction]]] = [{}]
        for instruction in program.instructions:
            k = max((level[v] for v in instruction.inputs), default=0)
            while len(pieces) <= k + 1:
                pieces.append([])
                reductions.append({})
            if instruction.op is ALL_REDUCE:  # after piece k; its results are there for piece k + 1 on
                reductions[k].setdefault(instruction.params["reduce"], []).append(instruction)
                level.update(dict.fromkeys(instruction.outputs, k + 1))
            else:
                pieces[k].append(instruction)
                level.update(dict.fromkeys(instruction.outputs, k))
        self.reduction_count = sum(len(group) for r in reductions for group in r.values())
        self.stages = [self._stage(program, pieces, k, reductions) for k in range(len(pieces))]

    def _stage(self, program: Program, pieces: list, k: int, all_reductions: list) -> _Stage:
        instructions, reductions = pieces[k], all_reductions[k]
        if not instructions:
            return _Stage(None, None, reductions)
        produced = {v for instruction in instructions for v in instruction.outputs}
        used_elsewhere = set(program.outputs)
        for j, piece in enumerate(pieces):
            if j != k:
                used_elsewhere.update(v for instruction in piece for v in instruction.inputs)
        for group in (group for stage in all_reductions for group in stage.values()):  # (a later stage's too)
            used_elsewhere.update(v for instruction in group for v in instruction.inputs)
        constants = dict(zip(program.constants, program.constant_values))
        needed = [v for instruction in instructions for v in instruction.inputs if v not in produced]
        needed = list(dict.fromkeys(needed))
        inputs = [v for v in needed if v not in constants]
        used_constants = [v for v in needed if v in constants]
        outputs = list(dict.fromkeys(v for i in instructions for v in i.outputs if v in used_elsewhere))
        piece = Program(inputs, instructions, outputs, used_constants, [constants[v] for v in used_constants])
        return _Stage(piece, compile_program(piece, self.backend, self.device), reductions)

    @property
    def programs(self) -> list[Program]:
        """The compiled pieces, in order."""
        return [stage.program for stage in self.stages if stage.program is not None]

    def run(self, tensors: list[Tensor]) -> list[Tensor]:
        """Run the pieces, reducing on the host between them."""
        program = self.program
        env: dict[Var, Any] = dict(zip(program.constants, program.constant_values))
        env.update(zip(program.inputs, tensors))
        for stage in self.stages:
            if stage.program is not None:
                outs = run_executable(stage.executable, [env[v] for v in stage.program.inputs], self.backend,
                                      self.device)  # fmt: skip
                env.update(zip(stage.program.outputs, outs))
            # one flat buffer per dtype for all the instructions of a stage: sums and means together (a train step's
            # buffers travel with its gradients), max apart
            sums, means = stage.reductions.get("sum", []), stage.reductions.get("mean", [])
            if sums or means:
                summed, averaged = collectives.sum_and_mean(_values(env, sums), _values(env, means), self.context)
                env.update(zip(_outputs(sums), summed))
                env.update(zip(_outputs(means), averaged))
            if "max" in stage.reductions:
                group = stage.reductions["max"]
                values = _values(env, group)
                reduced = collectives._all_reduce(
                    values, slope.tree.structure(values), "max", len(values), self.context
                )
                env.update(zip(_outputs(group), reduced or values))
        return [env[v] for v in program.outputs]


def _averages_only_the_loss(program: Program) -> bool:
    """Whether the step's only reductions are of values it returns untouched (the loss, reduced in the forward pass
    of a gradient) and of values that depend on no input (that reduction's transpose, run on the gradient's seed of
    ones): `value_and_grad(lambda m: pmean(loss_fn(m)))` with no reduction of the gradients."""
    varying = set(program.inputs)  # the values that depend on the inputs
    used: set[Var] = set()  # the values some instruction reads
    for instruction in program.instructions:
        used.update(instruction.inputs)
        if any(v in varying for v in instruction.inputs):
            varying.update(instruction.outputs)
    reductions = [i for i in program.instructions if i.op is ALL_REDUCE]
    forward = [i for i in reductions if any(v in varying for v in i.inputs)]
    if len(forward) == len(reductions) or any(v in used for i in forward for v in i.outputs):
        return False  # (no reduced seed, or a reduced value the step computes with: a gradient or an input of one)
    returned = set(program.outputs)
    return any(v in returned for i in forward for v in i.outputs)


def _values(env: dict, group: list[Instruction]) -> list:
    return [env[v] for instruction in group for v in instruction.inputs]


def _outputs(group: list[Instruction]) -> list[Var]:
    return [v for instruction in group for v in instruction.outputs]


class data_parallel:  # noqa: N801 - used as a decorator, like slope.jit
    """A train step `(model, opt_state, x, y) -> (model, opt_state, loss)` that calls `pmean(grads)` between its
    gradient and its update, compiled in pieces around that reduction; each rank passes its own shard of the batch.
    A jitted step's static_argnums, static_argnames and donate_argnums apply to the data-parallel step too."""

    def __init__(self, step: Callable):
        jitted = isinstance(step, slope.jit)
        # slope.jit(model.step): the model is argument 0 of step.fn, passed at each call (its weights read then, as
        # the jitted step reads them; bound into self.fn, they were constants of the first trace)
        self.owner = step.owner if jitted else None
        self.fn = step.fn if jitted else step
        # a jitted step's static arguments stay static, by position or by name (they were traced: a static 0.1 became
        # float32's); its named positions count the owner
        self.static = set(step.static_argnums) | {i - step.shift for i in step.named_positions} if jitted else set()
        self.static_names = set(step.static_argnames) if jitted else set()
        self.donate_argnums: tuple[int, ...] = tuple(step.donate_argnums) if jitted else ()  # (as slope.jit's)
        copied = ("__dict__",) if inspect.isroutine(self.fn) else ()  # (a function's attributes, not a model's)
        functools.update_wrapper(self, self.fn, updated=copied)
        self.cache: dict[tuple, SplitProgram] = {}

    def lower(self, *args: Any, **kwargs: Any) -> SplitProgram:
        """Trace, split and compile for these arguments without running (`.programs` holds the pieces)."""
        return self._split(args, kwargs)[0]

    def _split(self, args: tuple, kwargs: dict) -> tuple[SplitProgram, list[Tensor]]:
        args = tuple(_static(a) if {i, i - len(args)} & self.static else a for i, a in enumerate(args))
        kwargs = {k: _static(v) if k in self.static_names else v for k, v in kwargs.items()}
        args = args if self.owner is None else (self.owner, *args)
        leaves, in_tree = slope.tree.flatten((args, kwargs) if kwargs else args)
        leaves = [slope.tensor(leaf) if type(leaf) in (float, int, np.ndarray) else leaf for leaf in leaves]  # (as jit)
        tensors = [leaf for leaf in leaves if isinstance(leaf, Tensor)]
        others = tuple((i, leaf) for i, leaf in enumerate(leaves) if not isinstance(leaf, Tensor))
        backend = slope.get_backend()
        device = tensors[0].device if tensors else default_device()
        # other leaves keyed as jit's static arguments (by type and value, floats by their bits): np.float64 0.0 and
        # -0.0, or np.int64(2) and np.float64(2.0), are equal and hash alike, and shared one program
        static = tuple((i, _static(v).key) for i, v in others)
        # the trace decides the world size and the rank (a step without reduction, train_step's buffers): a process
        # with a group to join starts its engine now, and a trace made before an engine ran is not reused after
        engine = None if collectives.alone() else collectives.engine()
        key = (in_tree, bool(kwargs), tuple(t.aval for t in tensors), static, backend.name, device, engine)
        split = self.cache.get(key)
        if split is None:
            context = collectives.Context(f"data_parallel({getattr(self.fn, '__name__', 'step')})",
                                          self._arguments(args, kwargs, leaves))  # fmt: skip
            split = self.cache[key] = self._compile(in_tree, bool(kwargs), tensors, others, backend, device, context)
        return split, tensors

    def _arguments(self, args: tuple, kwargs: dict, leaves: list) -> list[tuple[str, Any, str]]:
        """Every leaf of the arguments as (name, shape, dtype): `model.0.weight` by the step's parameter names."""
        try:
            parameters = list(inspect.signature(self.fn).parameters.values())
        except (TypeError, ValueError):  # (a callable without a signature)
            parameters = []
        positional = [p.name for p in parameters if p.kind <= p.POSITIONAL_OR_KEYWORD]
        variadic = next((p.name for p in parameters if p.kind == p.VAR_POSITIONAL), None)

        def named(path: str) -> str:  # the path's first part, a position in args, by the step's parameter names
            if kwargs:  # (paths in (args, kwargs): "0.<position>..." or "1.<keyword>...")
                group, _, path = path.partition(".")
                if group == "1":
                    return path
            first, _, rest = path.partition(".")
            i = int(first)
            name = positional[i] if i < len(positional) else f"{variadic}[{i - len(positional)}]" if variadic else first
            return f"{name}.{rest}" if rest else name

        names = collectives.leaf_names((args, kwargs) if kwargs else args)
        return [(named(name), tuple(leaf.shape), leaf.dtype.name) if isinstance(leaf, Tensor)
                else (named(name), (), type(leaf).__name__) for name, leaf in zip(names, leaves)]  # fmt: skip

    def _compile(self, in_tree: Any, with_kwargs: bool, tensors: list, others: tuple, backend: Any, device: str,
                 context: collectives.Context) -> SplitProgram:  # fmt: skip
        flat_fn, out_trees = flatten_fun((lambda a, k: self.fn(*a, **k)) if with_kwargs else self.fn, in_tree)

        def traced_fn(*traced: Tensor) -> list:
            leaves = list(traced)
            for i, value in others:
                leaves.insert(i, value.value if isinstance(value, _Static) else value)
            return flat_fn(*leaves)

        program = make_program(traced_fn, [t.aval for t in tensors])
        split = SplitProgram(program, backend, device, out_trees[0], context)
        if split.reduction_count == 0 or _averages_only_the_loss(program):
            if collectives.started_world_size() > 1:
                how = "" if split.reduction_count == 0 else (
                    " (it averages its loss inside the differentiated function: as in JAX, the gradient of a mean "
                    "over the ranks is each rank's own gradient, so the ranks would apply different updates and drift "
                    "apart)"
                )  # fmt: skip
                raise SlopeDistributedError(
                    f"slope.distributed.data_parallel: {getattr(self.fn, '__name__', 'the step')} does not average "
                    f"its gradients over the ranks{how}: call `grads = slope.distributed.pmean(grads)` between "
                    "value_and_grad and the optimizer step (or build the step with "
                    "slope.distributed.train_step(loss_fn, optimizer))"
                )
        return split

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        split, tensors = self._split(args, kwargs)
        outs = split.run(tensors)
        if self.donate_argnums:
            outs = _donate([args[i] for i in self.donate_argnums if i < len(args)], outs)
        return slope.tree.unflatten(split.out_tree, outs)


def _donate(donated: list, outs: list) -> list:
    """Donate the tensors among the leaves of `donated` after the step ran, as `slope.jit(donate_argnums=...)` does:
    their memory is the backend's again and any later use of them is an error. A result that is one of them (an
    argument the step returns untouched) becomes a new tensor on the same memory, as a jitted step's result would be."""
    leaves = [leaf for leaf in slope.tree.leaves(donated) if type(leaf) is Tensor]
    given = {id(leaf) for leaf in leaves}
    outs = [Tensor(out.buffer, out.aval, out.backend, out.device) if id(out) in given else out for out in outs]
    for leaf in leaves:
        leaf.buffer = leaf.backend = _Donated()
    return outs


def train_step(loss_fn: Callable, optimizer: Any, has_aux: bool = False) -> data_parallel:
    """The data-parallel step `(model, opt_state, *batch) -> (model, opt_state, loss)` for `loss_fn(model, *batch)`:
    value_and_grad, the mean of the gradients (and of the loss) over the ranks, the optimizer's update. Buffers the
    forward pass updates (training-mode BatchNorm's running statistics) come back as rank 0's on every rank, as
    PyTorch's DDP broadcasts them, in the gradients' reduction (no extra round trip). `loss_fn` may call the model
    directly or through `nn.apply` (whose returned model it need not return): both updates are found. With
    `has_aux=True`, `loss_fn` returns `(loss, aux)` and the step `(model, opt_state, (loss, aux))`, aux this rank's own
    (not reduced: `dist.psum` or `dist.pmean` it where the ranks' values are wanted)."""
    import slope.nn as nn

    name = f"train_step({getattr(loss_fn, '__name__', 'loss')})"

    def loss_and_updates(model: Any, *batch: Any) -> tuple:
        before = slope.tree.leaves(model)
        # a training-mode BatchNorm assigns its new statistics to `model` (a copy), or to the copy an nn.apply returns
        # (reported to this block)
        with nn.buffer_updates() as updates:
            out = loss_fn(model, *batch)
        loss, aux = _loss_and_aux(name, out, has_aux)
        after = updates.latest(before, slope.tree.leaves(model))
        return loss, (aux, [new if new is not old else None for new, old in zip(after, before)])

    def step(model: Any, state: Any, *batch: Any) -> tuple:
        (loss, (aux, updated)), grads = nn.value_and_grad(loss_and_updates, has_aux=True)(model, *batch)
        leaves, kinds, grad_leaves = slope.tree.leaves(model), nn.leaf_kinds(model), slope.tree.leaves(grads)
        # buffers and frozen or integer leaves have zero gradients (nn.value_and_grad) that no optimizer reads
        trained = [i for i, (leaf, (_, kind)) in enumerate(zip(leaves, kinds))
                   if kind == "param" and isinstance(leaf, Tensor) and leaf.dtype.is_float]  # fmt: skip
        buffers = [i for i, (new, (_, kind)) in enumerate(zip(updated, kinds)) if new is not None and kind == "buffer"]
        # rank 0's updated buffers on every rank: their sum over the ranks, every other rank adding zeros (-0.0, the
        # exact additive identity of floats: -0.0 stays -0.0); integers (num_batches_tracked) and bools stay exact
        root = collectives.started_world_size() == 1 or collectives.rank() == 0
        sent = [updated[i] if root else _additive_zero(updated[i]) for i in buffers]
        loss, *means = pmean([loss, *(grad_leaves[i] for i in trained)])
        received = psum(sent)
        grad_leaves = [*grad_leaves]
        for i, grad in zip(trained, means):
            grad_leaves[i] = grad
        model, state = optimizer.step(model, slope.tree.unflatten(slope.tree.structure(grads), grad_leaves), state)
        new_leaves, treedef = slope.tree.flatten(model)
        for i, buffer in zip(buffers, received):
            new_leaves[i] = buffer
        return slope.tree.unflatten(treedef, new_leaves), state, ((loss, aux) if has_aux else loss)

    step.__name__ = name
    return data_parallel(step)


def _loss_and_aux(name: str, out: Any, has_aux: bool) -> tuple[Tensor, Any]:
    """The loss (and aux) a train_step's loss_fn returned, or an error naming the step that says what it expected."""
    where = f"slope.distributed.{name}"
    if has_aux:
        if not (isinstance(out, tuple) and len(out) == 2):
            got = f"a tuple of {len(out)}" if isinstance(out, tuple) else _described(out)
            raise TypeError(f"{where}: with has_aux=True, loss_fn must return (loss, aux), got {got}")
        loss, aux = out
    else:
        loss, aux = out, None
    if isinstance(loss, Tensor) and loss.shape == () and loss.dtype.is_float:
        return loss, aux
    if isinstance(loss, tuple):
        got = f"a tuple of {len(loss)}"
        if not has_aux:
            got += (
                "; for a loss_fn that returns (loss, aux), build the step with "
                "slope.distributed.train_step(loss_fn, optimizer, has_aux=True): it returns (model, opt_state, "
                "(loss, aux))"
            )
    else:
        got = _described(loss)
    raise TypeError(f"{where}: loss_fn must return the loss, a scalar floating-point tensor, got {got}")


def _described(value: Any) -> str:
    return f"a tensor {value.aval}" if isinstance(value, Tensor) else type(value).__name__


def _additive_zero(tensor: Tensor) -> Tensor:
    """Zeros that leave any value unchanged when added: -0.0 for floats (+0.0 would turn -0.0 into +0.0)."""
    zeros = slope.zeros_like(tensor)
    return -zeros if tensor.dtype.is_float else zeros
