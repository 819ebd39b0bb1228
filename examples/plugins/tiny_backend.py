"""A complete backend in one file: it interprets Programs with NumPy, one function per operator."""

import numpy as np

import slope
from slope import plugins


def _reduce(function):
    return lambda x, dim, keepdim: np.asarray(function(x, axis=dim, keepdims=keepdim))


def _int_div(x, y):
    return np.trunc(x / y).astype(x.dtype) if x.dtype.kind in "iu" else x / y


def _scatter_nd(x, idx, updates):
    out = x.copy()
    np.add.at(out, tuple(np.moveaxis(idx, -1, 0)), updates)
    return out


def _conv(x, w, stride, padding, dilation, groups):  # a direct (slow) loop is fine for a tiny backend
    x = np.pad(x, [(0, 0), (0, 0), *padding])
    n = x.ndim - 2
    out_shape = [(s - d * (k - 1) - 1) // st + 1 for s, k, st, d in zip(x.shape[2:], w.shape[2:], stride, dilation)]
    out = np.zeros((x.shape[0], w.shape[0], *out_shape), x.dtype)
    per_group_in, per_group_out = w.shape[1], w.shape[0] // groups
    for o in range(w.shape[0]):
        g = o // per_group_out
        for pos in np.ndindex(*out_shape):
            for tap in np.ndindex(*w.shape[2:]):
                at = tuple(p * st + t * d for p, st, t, d in zip(pos, stride, tap, dilation))
                window = x[(slice(None), slice(g * per_group_in, (g + 1) * per_group_in), *at)]
                out[(slice(None), o, *pos)] += window @ w[(o, slice(None), *tap)]
    assert n == len(out_shape)
    return out


def _fmod(x, y):
    return np.fmod(x, y) if x.dtype.kind == "f" else x - _int_div(x, y) * y


TABLE = {
    "exp": np.exp, "log": np.log, "sin": np.sin, "sqrt": np.sqrt,
    "floor": np.floor, "ceil": np.ceil, "round": np.round, "fmod": _fmod,
    "invert": lambda x: np.logical_not(x) if x.dtype == bool else np.invert(x),
    "stop_gradient": lambda x: x, "cast": lambda x, dtype: x.astype(dtype.numpy),
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "div": _int_div, "pow": np.power,
    "maximum": np.maximum, "equal": np.equal, "less": np.less, "greater": np.greater,
    "bitwise_and": np.bitwise_and, "bitwise_or": np.bitwise_or, "bitwise_xor": np.bitwise_xor, "where": np.where,
    "sum": _reduce(np.sum), "max": _reduce(np.max),
    "reshape": lambda x, shape: x.reshape(shape), "expand": lambda x, shape: np.broadcast_to(x, shape),
    "permute": lambda x, perm: x.transpose(perm),
    "slice": lambda x, start, stop, step: x[tuple(map(slice, start, stop, step))],
    "pad": lambda x, lo, hi, value: np.pad(x, list(zip(lo, hi)), constant_values=value),
    "flip": lambda x, dim: np.flip(x, dim), "cat": lambda *xs, dim: np.concatenate(xs, dim),
    "full": lambda shape, value, dtype: np.full(shape, value, dtype.numpy),
    "arange": lambda start, stop, step, dtype: np.arange(start, stop, step, dtype.numpy),
    "matmul": np.matmul, "conv": _conv,
    "gather_nd": lambda x, idx: x[tuple(np.moveaxis(idx, -1, 0))], "scatter_nd": _scatter_nd,
}  # fmt: skip


class TinyBackend(slope.Backend):
    """Interprets each instruction with the NumPy function in TABLE (tanh, erf, random: by procedure)."""

    name = "tiny"
    dtypes = frozenset({slope.float32, slope.float64, slope.int32, slope.int64, slope.bool_})
    translations = TABLE

    def compile(self, program, device):
        def run(buffers):
            env = dict(zip(program.constants, [c.numpy() for c in program.constant_values]))
            env.update(zip(program.inputs, buffers))
            with np.errstate(all="ignore"):
                for instruction in program.instructions:
                    function = self.translations[instruction.op.name]
                    inputs = [env[v] for v in instruction.inputs]
                    out = function(*inputs, **instruction.params)
                    env[instruction.outputs[0]] = np.asarray(out, instruction.outputs[0].aval.dtype.numpy)
            return [env[v] for v in program.outputs]

        return slope.Executable(run, str(program), program)

    def from_numpy(self, array, device):
        return array

    def to_numpy(self, buffer):
        return buffer


class TinyPlugin:
    @plugins.hookimpl
    def slope_backends(self):
        return [TinyBackend]


plugins.register(TinyPlugin())  # importing this file registers the backend (`pytest -p tiny_backend` does too)

if __name__ == "__main__":
    with slope.use_backend("tiny"):
        x = slope.tensor([[1.0, 2.0], [3.0, 4.0]])
        print(slope.grad(lambda x: (x.tanh() @ x).sum())(x))
        print(slope.jit(lambda x: x.softmax(-1))(x), slope.random.normal(slope.random.key(0), (3,)))
