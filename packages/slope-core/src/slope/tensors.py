"""The Tensor: an immutable value on a backend, with the PyTorch-like method surface."""

from __future__ import annotations

from typing import Any

import numpy as np

from .dtypes import DType
from .ir import Aval

# Filled by the plugin host: every operator and procedure by name (also attached as Tensor methods).
functions: dict[str, Any] = {}


class Tensor:
    """An n-dimensional array. Concrete tensors hold a backend buffer; tracers (subclasses) stand for traced values."""

    __slots__ = ("aval", "buffer", "backend", "device")
    __array_priority__ = 1000

    @staticmethod
    def _make(buffer: Any, aval: Aval, backend: Any, device: str) -> Tensor:
        tensor = Tensor.__new__(Tensor)
        tensor.buffer = buffer
        tensor.aval = aval
        tensor.backend = backend
        tensor.device = device
        return tensor

    # ------------------------------------------------------------------------------------------- attributes
    @property
    def shape(self) -> tuple[int, ...]:
        """The tensor's shape as a tuple."""
        return self.aval.shape

    @property
    def dtype(self) -> DType:
        """The tensor's element type."""
        return self.aval.dtype

    @property
    def ndim(self) -> int:
        """Number of dimensions."""
        return len(self.aval.shape)

    def dim(self) -> int:
        """Number of dimensions (PyTorch spelling)."""
        return len(self.aval.shape)

    def size(self, dim: int | None = None) -> Any:
        """The shape (PyTorch's `size()`), or the size of one dimension."""
        return self.aval.shape if dim is None else self.aval.shape[dim]

    def numel(self) -> int:
        """Number of elements."""
        return self.aval.size

    def _concrete(self, what: str) -> None:
        if self.buffer is None:
            raise TypeError(
                f"slope: {what} needs a concrete value, but this tensor {self.aval} is traced inside a transformation "
                "(jit, grad, vmap, ...); Python control flow on traced values is not possible: use slope.where, "
                "or mark the argument static with jit(static_argnums=...)"
            )

    # ------------------------------------------------------------------------------------------- conversion
    def numpy(self) -> np.ndarray:
        """A NumPy copy of the data."""
        self._concrete("Tensor.numpy()")
        return self.backend.to_numpy(self.buffer)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        array = self.numpy()
        return array if dtype is None else array.astype(dtype)

    def item(self) -> Any:
        """The Python scalar held by a one-element tensor."""
        self._concrete("Tensor.item()")
        if self.aval.size != 1:
            raise ValueError(
                f"Tensor.item: only a one-element tensor converts to a Python scalar, got shape {self.shape}"
            )
        return self.numpy().reshape(()).item()

    def float(self) -> Tensor:
        """This tensor as float32."""
        return functions["cast"](self, "float32")

    def double(self) -> Tensor:
        """This tensor as float64."""
        return functions["cast"](self, "float64")

    def half(self) -> Tensor:
        """This tensor as float16."""
        return functions["cast"](self, "float16")

    def int(self) -> Tensor:
        """This tensor as int32."""
        return functions["cast"](self, "int32")

    def long(self) -> Tensor:
        """This tensor as int64."""
        return functions["cast"](self, "int64")

    def bool(self) -> Tensor:
        """This tensor as bool."""
        return functions["cast"](self, "bool")

    def contiguous(self) -> Tensor:
        """This tensor (every tensor is contiguous)."""
        return self

    def detach(self) -> Tensor:
        """This tensor with gradients stopped."""
        return functions["stop_gradient"](self)

    def tolist(self) -> Any:
        """The data as nested Python lists."""
        return self.numpy().tolist()

    def __bool__(self) -> bool:
        self._concrete("bool(tensor)")
        return bool(self.item())

    def __int__(self) -> int:
        self._concrete("int(tensor)")
        return int(self.item())

    def __float__(self) -> float:
        self._concrete("float(tensor)")
        return float(self.item())

    def __index__(self) -> int:
        self._concrete("using a tensor as an index")
        if not self.dtype.is_int:
            raise TypeError(f"slope: only integer tensors can be used as an index, got {self.dtype.name}")
        return int(self.item())

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    def __iter__(self) -> Any:
        if not self.shape:
            raise TypeError("iteration over a 0-d tensor")
        return (self[i] for i in range(self.shape[0]))

    def __hash__(self) -> int:
        return id(self)

    def __repr__(self) -> str:
        if self.buffer is None:
            return f"{type(self).__name__}({self.aval})"
        values = np.array2string(self.numpy(), separator=", ", prefix="tensor(")
        return f"tensor({values}, shape={self.shape}, dtype={self.dtype.name}, device={self.device})"

    def __setitem__(self, index: Any, value: Any) -> None:
        raise TypeError("slope: tensors are immutable; instead of `t[i] = v` write `t = t.at[i].set(v)` (or `.add(v)`)")

    @property
    def at(self) -> Any:
        """Functional updates: `t.at[idx].set(v)`, `t.at[idx].add(v)`."""
        return _IndexUpdater(self)

    # ------------------------------------------------------------------------------------------- operators
    def __add__(self, other: Any) -> Tensor:
        return functions["add"](self, other)

    def __radd__(self, other: Any) -> Tensor:
        return functions["add"](other, self)

    def __sub__(self, other: Any) -> Tensor:
        return functions["sub"](self, other)

    def __rsub__(self, other: Any) -> Tensor:
        return functions["sub"](other, self)

    def __mul__(self, other: Any) -> Tensor:
        return functions["mul"](self, other)

    def __rmul__(self, other: Any) -> Tensor:
        return functions["mul"](other, self)

    def __truediv__(self, other: Any) -> Tensor:
        return functions["true_divide"](self, other)

    def __rtruediv__(self, other: Any) -> Tensor:
        return functions["true_divide"](other, self)

    def __floordiv__(self, other: Any) -> Tensor:
        return functions["floor_divide"](self, other)

    def __rfloordiv__(self, other: Any) -> Tensor:
        return functions["floor_divide"](other, self)

    def __mod__(self, other: Any) -> Tensor:
        return functions["remainder"](self, other)

    def __pow__(self, other: Any) -> Tensor:
        return functions["pow"](self, other)

    def __rpow__(self, other: Any) -> Tensor:
        return functions["pow"](other, self)

    def __matmul__(self, other: Any) -> Tensor:
        return functions["matmul"](self, other)

    def __rmatmul__(self, other: Any) -> Tensor:
        return functions["matmul"](other, self)

    def __neg__(self) -> Tensor:
        return functions["neg"](self)

    def __pos__(self) -> Tensor:
        return self

    def __abs__(self) -> Tensor:
        return functions["abs"](self)

    def __invert__(self) -> Tensor:
        return functions["invert"](self)

    def __and__(self, other: Any) -> Tensor:
        return functions["bitwise_and"](self, other)

    def __rand__(self, other: Any) -> Tensor:
        return functions["bitwise_and"](other, self)

    def __or__(self, other: Any) -> Tensor:
        return functions["bitwise_or"](self, other)

    def __ror__(self, other: Any) -> Tensor:
        return functions["bitwise_or"](other, self)

    def __xor__(self, other: Any) -> Tensor:
        return functions["bitwise_xor"](self, other)

    def __rxor__(self, other: Any) -> Tensor:
        return functions["bitwise_xor"](other, self)

    def __eq__(self, other: Any) -> Tensor:  # type: ignore[override]
        return functions["equal"](self, other)

    def __ne__(self, other: Any) -> Tensor:  # type: ignore[override]
        return functions["not_equal"](self, other)

    def __lt__(self, other: Any) -> Tensor:
        return functions["less"](self, other)

    def __le__(self, other: Any) -> Tensor:
        return functions["less_equal"](self, other)

    def __gt__(self, other: Any) -> Tensor:
        return functions["greater"](self, other)

    def __ge__(self, other: Any) -> Tensor:
        return functions["greater_equal"](self, other)

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


class _IndexUpdater:
    __slots__ = ("tensor",)

    def __init__(self, tensor: Tensor):
        self.tensor = tensor

    def __getitem__(self, index: Any) -> _IndexUpdate:
        return _IndexUpdate(self.tensor, index)


class _IndexUpdate:
    __slots__ = ("tensor", "index")

    def __init__(self, tensor: Tensor, index: Any):
        self.tensor = tensor
        self.index = index

    def set(self, value: Any) -> Tensor:
        """A copy of the tensor with `value` written at the index."""
        return functions["index_update"](self.tensor, self.index, value, "set")

    def add(self, value: Any) -> Tensor:
        """A copy of the tensor with `value` added at the index (repeated indices accumulate)."""
        return functions["index_update"](self.tensor, self.index, value, "add")
