"""Data types and PyTorch-like type promotion."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)  # one object per dtype: identity is equality, and C-fast on every eager call
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
        """The matching NumPy dtype (bfloat16's comes from ml_dtypes, imported here on first use: it is slow to import)."""
        if self.name != "bfloat16":
            return np.dtype(self.name)
        try:
            import ml_dtypes
        except ImportError:
            raise TypeError("bfloat16 needs the ml_dtypes package (pip install ml_dtypes)") from None
        return np.dtype(ml_dtypes.bfloat16)

    def __repr__(self) -> str:
        return f"slope.{self.name}"

    def __reduce__(self) -> tuple:  # copies and pickles are the one object too
        return as_dtype, (self.name,)


bool_ = DType("bool", "b8", "bool", 8)
int8 = DType("int8", "i8", "int", 8)
uint8 = DType("uint8", "u8", "uint", 8)
int16 = DType("int16", "i16", "int", 16)
int32 = DType("int32", "i32", "int", 32)
int64 = DType("int64", "i64", "int", 64)
float16 = DType("float16", "f16", "float", 16)
bfloat16 = DType("bfloat16", "bf16", "float", 16)
float32 = DType("float32", "f32", "float", 32)
float64 = DType("float64", "f64", "float", 64)

all_dtypes = (bool_, int8, uint8, int16, int32, int64, float16, bfloat16, float32, float64)
by_name = {d.name: d for d in all_dtypes} | {"bool_": bool_, "float": float32, "int": int32, "long": int64}
by_numpy: dict = {}  # NumPy dtypes (ml_dtypes' bfloat16 is named "bfloat16" too) -> DType, filled by as_dtype
default_float, default_int = float32, int64


def as_dtype(value: object) -> DType:
    """Turn a DType, a name, a NumPy dtype or a Python type into a DType."""
    if isinstance(value, DType):
        return value
    if isinstance(value, type) and value in (float, int, bool):  # the Python types themselves, not NumPy's
        return {float: default_float, int: default_int, bool: bool_}[value]
    if isinstance(value, str) and value in by_name:
        return by_name[value]
    try:  # (a NumPy dtype's name takes 2 µs to read: by_numpy remembers them)
        return by_numpy.get(value) or by_numpy.setdefault(np.dtype(value), by_name[np.dtype(value).name])
    except (TypeError, KeyError):
        names = [d.name for d in all_dtypes]
        raise TypeError(f"slope: unknown or unsupported dtype {value!r}; expected one of {names}") from None


_kind_rank = {"bool": 0, "uint": 1, "int": 1, "float": 2}


def promote(a: DType, b: DType) -> DType:
    """The dtype two tensors combine to, as in PyTorch (bool < integers < floats, wider wins)."""
    rank_a, rank_b = _kind_rank[a.kind], _kind_rank[b.kind]
    if a == b or rank_a != rank_b:  # the higher kind (a itself when they are one dtype)
        return a if rank_a >= rank_b else b
    if {a, b} == {float16, bfloat16}:
        return float32
    if {a.kind, b.kind} == {"int", "uint"}:  # uint8 with a signed type: the narrowest signed type holding both
        signed = a if a.kind == "int" else b
        return signed if signed.bits > 8 else int16
    return a if a.bits >= b.bits else b


def result_type(*values: object) -> DType:
    """The dtype PyTorch gives an operation on tensors and Python scalars (`torch.result_type`; see the README)."""
    groups: dict[int, DType] = {}  # tensors with dimensions, 0-d tensors, Python scalars: each promotes within itself
    for value in values:
        if isinstance(value, (bool, int, float)):
            group, dtype = 2, bool_ if isinstance(value, bool) else default_int if isinstance(value, int) else float32
        elif isinstance(getattr(value, "dtype", None), DType):
            group, dtype = (0 if value.ndim else 1), value.dtype
        else:
            known = " and ".join(v.dtype.name for v in values if isinstance(getattr(v, "dtype", None), DType))
            raise TypeError(f"slope: cannot combine {known or 'numbers'} with {type(value).__name__} {value!r}")
        groups[group] = promote(groups[group], dtype) if group in groups else dtype
    ordered = [groups[group] for group in sorted(groups)]  # a later group decides only where its kind is higher
    result = next(d for d in ordered if _kind_rank[d.kind] == max(_kind_rank[o.kind] for o in ordered))
    big = [v for v in values if type(v) is int and v >= 2**63]  # (PyTorch's uint64 scalar: wraps into int tensors)
    if big and result.kind == "int" and all(groups[group].kind == "bool" for group in groups if group < 2):
        raise TypeError(f"slope: the Python int {big[0]} is beyond int64 and no integer tensor takes it (as PyTorch)")
    return result


def wrap(value: object, dtype: DType) -> object:
    """A scalar or array as `dtype` holds it, as PyTorch: ints modulo 2**bits, floats rounded (float16 via float32)."""
    if type(value) is int and not -(2**63) <= value < 2**64:  # (into a float dtype NumPy would take it)
        raise OverflowError(f"slope: the Python int {value} is outside [-2**63, 2**64) (as PyTorch refuses it)")
    with np.errstate(over="ignore"):
        return np.array(value).astype(np.float32 if dtype.name == "float16" else dtype.numpy).astype(dtype.numpy)[()]


def infer_python(value: object, name: str = "tensor") -> DType:
    """The dtype `slope.tensor` gives a Python scalar or nested list (as PyTorch does)."""
    try:
        array = np.asarray(value)
    except ValueError as error:  # ragged nesting
        raise ValueError(f"slope.{name}: nested sequences must be rectangular (rows of one length): {error}") from None
    big = array.dtype.kind == "O" or array.dtype.kind == "f" and np.abs(array, dtype=np.float64).max(initial=0) >= 2**63
    ints = big and all(isinstance(v, int) for v in np.array(value, dtype=object).flat)  # NumPy's objects or floats
    by_kind = {"b": bool_, "i": default_int, "u": default_int, "f": default_float, "V": default_float}  # V: bfloat16
    if (kind := "i" if ints else array.dtype.kind) in by_kind:  # Python ints beyond int64 are int64's to refuse
        return by_kind[kind]
    raise TypeError(f"slope.{name}: cannot make a tensor from {type(value).__name__} (NumPy dtype {array.dtype})")
