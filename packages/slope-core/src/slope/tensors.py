"""The Tensor: an immutable value on a backend, with the PyTorch-like method surface."""

from __future__ import annotations

from typing import Any

import numpy as np

from .dtypes import DType
from .errors import SlopeTraceError
from .ir import Aval

functions: dict[str, Any] = {}  # filled by the plugin host: every operator and procedure by name (also Tensor methods)


def missing_function_hint(name: str) -> str:
    """Why a slope function may be missing: operators and procedures come from installed plugins."""
    hint = "; functions come from installed plugins (`slope info` lists them), the neural-network ones from slope-nn"
    return "" if name.startswith("_") else hint


class Tensor:
    """An n-dimensional array. Concrete tensors hold a backend buffer; tracers (subclasses) stand for traced values."""

    __slots__ = ("aval", "buffer", "backend", "device")
    __array_priority__ = 1000

    def __init__(self, buffer: Any, aval: Aval, backend: Any, device: str):
        self.buffer, self.aval = buffer, aval  # (pairs: a 4-tuple assignment builds a tuple on every Tensor made)
        self.backend, self.device = backend, device

    def size(self, dim: int | None = None) -> Any:
        """The shape as a tuple (PyTorch's `size()`; also `.shape`), or the size of one dimension."""
        return self.aval.shape if dim is None else self.aval.shape[dim]

    def dim(self) -> int:
        """Number of dimensions (also `.ndim`)."""
        return len(self.aval.shape)

    shape, ndim = property(size), property(dim)

    @property
    def dtype(self) -> DType:
        """The tensor's element type."""
        return self.aval.dtype

    def numel(self) -> int:
        """Number of elements."""
        return self.aval.size

    def _concrete(self, what: str) -> None:
        if self.buffer is None:
            raise SlopeTraceError(f"slope: {what} needs a concrete value, but this tensor {self.aval} is traced inside a "
                                  "transformation (jit, grad, vmap, ...); Python control flow on traced values is not "
                                  "possible: use slope.where, or mark the argument static with jit(static_argnums=...)")  # fmt: skip

    def numpy(self) -> np.ndarray:
        """A NumPy copy of the data."""
        return self._concrete("Tensor.numpy()") if self.buffer is None else self.backend.to_numpy(self.buffer)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return self.numpy() if dtype is None else self.numpy().astype(dtype)

    def __reduce__(self) -> tuple:  # pickle and copy.deepcopy (of a model too): the data, on the active backend
        return functions["tensor"], (self.numpy(),)

    def item(self) -> Any:
        """The Python scalar held by a one-element tensor."""
        return self._scalar("Tensor.item()")

    def contiguous(self) -> Tensor:
        """This tensor (every tensor is contiguous)."""
        return self

    def tolist(self) -> Any:
        """The data as nested Python lists."""
        return self.numpy().tolist()

    def _scalar(self, what: str) -> Any:
        self._concrete(what)
        if self.aval.size != 1:
            raise ValueError(f"slope: {what} needs a one-element tensor, got shape {self.shape} ({self.aval.size} "
                             "elements); reduce it first (.any(), .all(), .sum(), ...)")  # fmt: skip
        return self.numpy().reshape(()).item()

    def __index__(self) -> int:
        if not self.dtype.is_int:
            raise TypeError(f"slope: only integer tensors can be used as an index, got {self.dtype.name}")
        return int(self._scalar("using a tensor as an index"))

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    def __iter__(self) -> Any:
        if not self.shape:
            raise TypeError("iteration over a 0-d tensor")
        return (self[i] for i in range(self.shape[0]))

    def __getattr__(self, name: str) -> Any:
        hint = " (an escaped tracer?)" if self.buffer is None and name in ("device", "backend") else ""
        raise AttributeError(f"'Tensor' object has no attribute {name!r}{hint or missing_function_hint(name)}")

    def __repr__(self) -> str:
        if self.buffer is None:
            return f"{type(self).__name__}({self.aval})"
        array = self.numpy().astype(np.float32) if self.dtype.name == "bfloat16" else self.numpy()  # (NumPy: 1, 2)
        values = np.array2string(array, separator=", ", prefix="tensor(")
        return f"tensor({values}, shape={self.shape}, dtype={self.dtype.name}, device={self.device})"

    def __setitem__(self, index: Any, value: Any) -> None:
        raise TypeError("slope: tensors are immutable; instead of `t[i] = v` write `t = t.at[i].set(v)` (or `.add(v)`)")

    def __getitem__(self, index: Any) -> Tensor:
        return functions["getitem"](self, index)

    @property
    def T(self) -> Tensor:
        """The tensor with its dimensions reversed."""
        return functions["permute"](self, tuple(reversed(range(self.ndim))))

    @property
    def mT(self) -> Tensor:
        """The tensor with its last two dimensions swapped."""
        return functions["transpose"](self, -2, -1)


_comparisons = dict(eq="equal", ne="not_equal", lt="less", le="less_equal", gt="greater", ge="greater_equal")
_arithmetic = {"add": "add", "sub": "sub", "mul": "mul", "truediv": "true_divide", "floordiv": "floor_divide",
               "mod": "remainder", "pow": "pow", "matmul": "matmul", "and": "bitwise_and", "or": "bitwise_or",
               "xor": "bitwise_xor"}  # fmt: skip
for _name, _function in {**_comparisons, **_arithmetic}.items():
    setattr(Tensor, f"__{_name}__", lambda self, other, *, _f=_function: functions[_f](self, other))
for _name, _function in _arithmetic.items():  # their reflected forms too (__radd__ ...)
    setattr(Tensor, f"__r{_name}__", lambda self, other, *, _f=_function: functions[_f](other, self))
_OK = (Tensor, int, float, np.generic, np.ndarray, list, tuple)  # == others is False (None, "mean"), as PyTorch's
Tensor.__eq__ = lambda x, y: functions["equal"](x, y) if isinstance(y, _OK) else NotImplemented
Tensor.__ne__ = lambda x, y: functions["not_equal"](x, y) if isinstance(y, _OK) else NotImplemented
Tensor.__contains__ = lambda self, value: bool(functions["equal"](self, value).any())  # (as PyTorch: v == t anywhere)
for _method, _dtype in {"float": "float32", "double": "float64", "half": "float16", "int": "int32",
                        "long": "int64", "bool": "bool"}.items():  # fmt: skip
    setattr(Tensor, _method, lambda self, _dtype=_dtype: functions["cast"](self, _dtype))
    getattr(Tensor, _method).__doc__ = f"The tensor cast to {_dtype} (`x.to(slope.{_dtype})`, as in PyTorch)."
for _name in ("neg", "abs", "invert"):
    setattr(Tensor, f"__{_name}__", lambda self, _f=_name: functions[_f](self))
for _name, _cast in {"bool": bool, "int": int, "float": float}.items():  # of a one-element tensor
    setattr(Tensor, f"__{_name}__", lambda self, _c=_cast, _w=f"{_name}(tensor)": _c(self._scalar(_w)))
Tensor.__pos__ = lambda self: self
Tensor.where = lambda self, condition, y: functions["where"](condition, self, y)  # (PyTorch's order: x.where(c, y))
Tensor.where.__doc__ = "The tensor's elements where the condition holds, else y's (`slope.where(condition, x, y)`)."


class _IndexUpdate:
    """`t.at` before indexing and `t.at[index]` after it, whose `.set` and `.add` give the updated copy."""

    __slots__ = ("tensor", "index")

    def __init__(self, tensor: Tensor, *index: Any):  # index: () for `t.at`, (index,) for `t.at[index]`
        self.tensor, self.index = tensor, index

    def __getitem__(self, index: Any) -> _IndexUpdate:
        return _IndexUpdate(self.tensor, index)

    def _indexed(self, method: str) -> Any:  # (index None is a new axis: `t.at.set(v)` would write every element)
        if not self.index:
            raise AttributeError(f"slope: `t.at.{method}(...)` needs an index: `t.at[index].{method}(...)` (as JAX)")
        return self.index[0]

    def set(self, value: Any) -> Tensor:
        """A copy of the tensor with `value` written at the index."""
        return functions["index_update"](self.tensor, self._indexed("set"), value, "set")

    def add(self, value: Any) -> Tensor:
        """A copy of the tensor with `value` added at the index (repeated indices accumulate)."""
        return functions["index_update"](self.tensor, self._indexed("add"), value, "add")


Tensor.at = property(_IndexUpdate, doc="Functional updates: `t.at[idx].set(v)`, `t.at[idx].add(v)`.")
