"""Program rewrites before translation that let IREE's compiler see a cheaper module (results unchanged).

`sink_permutes`: a permute of elementwise work is applied to that work's inputs instead (through elementwise
operators, expands, fulls, reshapes that only add or drop dimensions of size 1, and other permutes). IREE fuses such
a program into one dispatch either way, but a transposed result makes that dispatch write with a stride and
recompute what depends on the inner index only: slope.hessian's program ends in a permute (its batch dimension moved
last) that cost 50 of its 60 µs at n=100.
"""

from __future__ import annotations

from slope import Aval, Instruction, Program, Var
from slope.operators import permute

from .translate import DYNAMIC_SAFE


def sink_permutes(program: Program) -> Program:
    """The program with each permute moved toward the inputs of the elementwise work it permutes."""
    if not any(instruction.op is permute for instruction in program.instructions):
        return program
    instructions: list[Instruction] = []
    producers: dict[Var, Instruction] = {}
    renamed: dict[Var, Var] = {}
    memo: dict[tuple[Var, tuple], Var] = {}

    def emit(op: object, inputs: list[Var], params: dict, aval: Aval) -> Var:
        out = Var(aval)
        instruction = Instruction(op, inputs, params, [out])
        instructions.append(instruction)
        producers[out] = instruction
        return out

    def permuted(var: Var, perm: tuple) -> Var:
        if perm == tuple(range(len(perm))):
            return var
        if (var, perm) not in memo:
            memo[(var, perm)] = _sunk(var, perm)
        return memo[(var, perm)]

    def _sunk(var: Var, perm: tuple) -> Var:
        aval = var.aval
        shape = tuple(aval.shape[p] for p in perm)
        out = Aval(shape, aval.dtype)
        producer = producers.get(var)
        name = producer.op.name if producer is not None and len(producer.outputs) == 1 else None
        if name in DYNAMIC_SAFE and all(v.aval.shape == aval.shape for v in producer.inputs):
            return emit(producer.op, [permuted(v, perm) for v in producer.inputs], producer.params, out)
        if name in ("expand", "full"):
            inputs = [permuted(v, perm) for v in producer.inputs]
            return emit(producer.op, inputs, {**producer.params, "shape": shape}, out)
        if name == "permute":
            return permuted(producer.inputs[0], tuple(producer.params["perm"][p] for p in perm))
        if name == "reshape":  # one that only adds or drops dimensions of size 1: permute its input's other ones
            source = producer.inputs[0].aval.shape
            big_in = [i for i, s in enumerate(source) if s != 1]
            big_out = [i for i, s in enumerate(aval.shape) if s != 1]
            if [source[i] for i in big_in] == [aval.shape[i] for i in big_out]:
                rank = {d: k for k, d in enumerate(big_out)}
                order = [rank[p] for p in perm if p in rank]
                inner = list(range(len(source)))
                for slot, k in zip(big_in, order):
                    inner[slot] = big_in[k]
                return emit(producer.op, [permuted(producer.inputs[0], tuple(inner))], {"shape": shape}, out)
        return emit(permute, [var], {"perm": perm}, out)

    for instruction in program.instructions:
        inputs = [renamed.get(v, v) for v in instruction.inputs]
        if instruction.op is permute:
            renamed[instruction.outputs[0]] = permuted(inputs[0], tuple(instruction.params["perm"]))
            continue
        copy = Instruction(instruction.op, inputs, instruction.params, instruction.outputs)
        instructions.append(copy)
        producers.update((v, copy) for v in instruction.outputs)
    outputs = [renamed.get(v, v) for v in program.outputs]
    return Program(program.inputs, _live(instructions, outputs), outputs, program.constants,
                   program.constant_values)  # fmt: skip


def _live(instructions: list[Instruction], outputs: list[Var]) -> list[Instruction]:
    """The instructions the outputs depend on (the permuted work's unpermuted originals may be left unused)."""
    used, kept = set(outputs), []
    for instruction in reversed(instructions):
        if any(v in used for v in instruction.outputs):
            kept.append(instruction)
            used.update(instruction.inputs)
    return kept[::-1]
