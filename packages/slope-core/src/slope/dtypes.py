"""Data types and PyTorch-like type promotion."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

try:  # bfloat16 has no NumPy dtype of its own; ml_dtypes provides one where installed
    import ml_dtypes

    _bfloat16_numpy = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover - depends on the environment
    _bfloat16_numpy = None


@dataclass(frozen=True)
class DType:
    """A tensor element type: its name, short name used in printed IR, kind and width."""

    name: str
    short: str
    kind: str  # "bool", "int", "uint" or "float"
    bits: int

    @property
    def is_float(self) -> bool:
        """Whether this is a floating-point type."""
        return self.kind == "float"

    @property
    def is_int(self) -> bool:
        """Whether this is a signed or unsigned integer type."""
        return self.kind in ("int", "uint")

    @property
    def numpy(self) -> np.dtype:
        """The matching NumPy dtype (bfloat16 needs ml_dtypes)."""
        if self.name == "bfloat16":
            if _bfloat16_numpy is None:
                raise TypeError("bfloat16 needs the ml_dtypes package (pip install ml_dtypes)")
            return _bfloat16_numpy
        return np.dtype(self.name)

    def __repr__(self) -> str:
        return f"slope.{self.name}"


bool_ = DType("bool", "b8", "bool", 8)
int8 = DType("int8", "i8", "int", 8)
uint8 = DType("uint8", "u8", "uint", 8)
int32 = DType("int32", "i32", "int", 32)
int64 = DType("int64", "i64", "int", 64)
float16 = DType("float16", "f16", "float", 16)
bfloat16 = DType("bfloat16", "bf16", "float", 16)
float32 = DType("float32", "f32", "float", 32)
float64 = DType("float64", "f64", "float", 64)

all_dtypes = (bool_, int8, uint8, int32, int64, float16, bfloat16, float32, float64)
by_name = {d.name: d for d in all_dtypes} | {"bool_": bool_, "float": float32, "int": int64, "long": int64}
default_float = float32
default_int = int64


def as_dtype(value: object) -> DType:
    """Turn a DType, a name, a NumPy dtype or a Python type into a DType."""
    if isinstance(value, DType):
        return value
    if isinstance(value, type) and value in (float, int, bool):  # the Python types themselves, not NumPy's
        return {float: default_float, int: default_int, bool: bool_}[value]
    if isinstance(value, str) and value in by_name:
        return by_name[value]
    try:
        numpy_name = np.dtype(value).name  # ml_dtypes' bfloat16 is named "bfloat16" too
    except TypeError:
        numpy_name = None
    if numpy_name in by_name:
        return by_name[numpy_name]
    raise TypeError(f"slope: unknown or unsupported dtype {value!r}; expected one of {[d.name for d in all_dtypes]}")


_kind_rank = {"bool": 0, "uint": 1, "int": 1, "float": 2}


def promote(a: DType, b: DType) -> DType:
    """The dtype two tensors combine to, as in PyTorch (bool < integers < floats, wider wins)."""
    if a == b:
        return a
    rank_a, rank_b = _kind_rank[a.kind], _kind_rank[b.kind]
    if rank_a != rank_b:
        return a if rank_a > rank_b else b
    if {a, b} == {float16, bfloat16}:
        return float32
    if {a.kind, b.kind} == {"int", "uint"}:  # uint8 with int8 needs int16, which Slope lacks: use int32
        wider = max(a.bits, b.bits)
        return int32 if wider <= 32 else int64
    return a if a.bits >= b.bits else b


def scalar_dtype(tensor_dtype: DType, value: object) -> DType:
    """The dtype of `tensor op python_scalar`: the tensor's, unless the scalar is of a higher kind."""
    if isinstance(value, bool):
        return tensor_dtype
    if isinstance(value, int):
        return default_int if tensor_dtype == bool_ else tensor_dtype
    if isinstance(value, float):
        return tensor_dtype if tensor_dtype.is_float else default_float
    raise TypeError(f"slope: cannot combine a tensor of {tensor_dtype.name} with {type(value).__name__} {value!r}")


def infer_python(value: object, name: str = "tensor") -> DType:
    """The dtype `slope.tensor` gives a Python scalar or nested list (as PyTorch does)."""
    try:
        array = np.asarray(value)
    except ValueError as error:  # ragged nesting
        raise ValueError(
            f"slope.{name}: nested sequences must be rectangular (all rows of one length): {error}"
        ) from None
    by_kind = {"b": bool_, "i": default_int, "u": default_int, "f": default_float}  # NumPy's kind codes
    if array.dtype.kind in by_kind:
        return by_kind[array.dtype.kind]
    raise TypeError(f"slope.{name}: cannot make a tensor from {type(value).__name__} (NumPy dtype {array.dtype})")
