"""Pytrees: nested containers of tensors that transformations flatten and rebuild."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

_registry: dict[type, tuple[Callable, Callable]] = {}


class TreeDef(NamedTuple):
    """The structure of a pytree without its leaves (hashable, so it can key a cache)."""

    node_type: type | None  # None for a leaf
    aux: Any
    children: tuple

    @property
    def num_leaves(self) -> int:
        """How many leaves the structure holds."""
        return 1 if self.node_type is None else sum(child.num_leaves for child in self.children)

    def __repr__(self) -> str:
        if self.node_type is None:
            return "*"
        return f"{self.node_type.__name__}({', '.join(repr(child) for child in self.children)})"


LEAF = TreeDef(None, None, ())


def register(cls: type, flatten: Callable | None = None, unflatten: Callable | None = None) -> type:
    """Make a class a pytree node: `flatten(obj) -> (children, aux)`, `unflatten(aux, children) -> obj`."""
    # a dataclass needs neither function (its fields are its children), so this also works as a class decorator
    if flatten is None:
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"slope.tree.register: {cls.__name__} is not a dataclass, so pass flatten and unflatten")
        names = tuple(f.name for f in dataclasses.fields(cls))

        def flatten(obj: Any) -> tuple[list, tuple]:
            return [getattr(obj, n) for n in names], names

        def unflatten(aux: tuple, children: list) -> Any:
            return cls(**dict(zip(aux, children)))

    _registry[cls] = (flatten, unflatten)
    _node_functions.cache_clear()
    return cls


@functools.cache  # jit flattens every call
def _node_functions(cls: type) -> tuple[Callable, Callable] | None:
    if cls in _registry:
        return _registry[cls]
    if hasattr(cls, "tree_flatten") and hasattr(cls, "tree_unflatten"):
        return cls.tree_flatten, cls.tree_unflatten
    if issubclass(cls, tuple) and hasattr(cls, "_fields"):  # namedtuple
        return (lambda o: (list(o), None)), (lambda aux, children: cls(*children))
    return None


register(tuple, lambda t: (list(t), None), lambda aux, ch: tuple(ch))
register(list, lambda t: (list(t), None), lambda aux, ch: list(ch))


def sorted_keys(d: dict) -> list:
    """A dict's keys in the order pytrees visit them (sorted, or by their text when types are mixed)."""
    try:
        return sorted(d)
    except TypeError:
        return sorted(d, key=repr)


def _flatten_dict(d: dict) -> tuple[list, tuple]:
    keys = sorted_keys(d)
    return [d[k] for k in keys], tuple(keys)


register(dict, _flatten_dict, lambda aux, ch: dict(zip(aux, ch)))
register(type(None), lambda n: ([], None), lambda aux, ch: None)


def flatten(value: Any, is_leaf: Callable | None = None) -> tuple[list, TreeDef]:
    """The leaves of a pytree in order, and its structure."""
    leaves: list = []
    return leaves, _flatten(value, leaves, is_leaf)  # (_flatten fills the list)


def _flatten(value: Any, leaves: list, is_leaf: Callable | None) -> TreeDef:
    functions = None if (is_leaf is not None and is_leaf(value)) else _node_functions(type(value))
    if functions is None:
        leaves.append(value)
        return LEAF
    children, aux = functions[0](value)
    return TreeDef(type(value), aux, tuple([_flatten(child, leaves, is_leaf) for child in children]))


def unflatten(treedef: TreeDef, leaves: Any) -> Any:
    """Rebuild a pytree of this structure from its leaves."""
    iterator = iter(leaves)
    result = _unflatten(treedef, iterator)
    if next(iterator, _sentinel) is not _sentinel:
        raise ValueError(f"slope.tree.unflatten: too many leaves for {treedef}")
    return result


_sentinel = object()


def _unflatten(treedef: TreeDef, iterator: Any) -> Any:
    if treedef.node_type is None:
        leaf = next(iterator, _sentinel)
        if leaf is _sentinel:
            raise ValueError("slope.tree.unflatten: too few leaves for the tree structure")
        return leaf
    children = [_unflatten(child, iterator) for child in treedef.children]
    return _node_functions(treedef.node_type)[1](treedef.aux, children)


def leaves(value: Any, is_leaf: Callable | None = None) -> list:
    """The leaves of a pytree."""
    return flatten(value, is_leaf)[0]


def structure(value: Any) -> TreeDef:
    """The structure of a pytree."""
    return flatten(value)[1]


def map(fn: Callable, value: Any, *rest: Any, is_leaf: Callable | None = None) -> Any:  # noqa: A001
    """Apply `fn` to every leaf (and the matching leaves of `rest`), keeping the structure."""
    flat, treedef = flatten(value, is_leaf)
    others = [flatten(other, is_leaf) for other in rest]
    for _, other_def in others:
        if other_def != treedef:
            raise ValueError(f"slope.tree.map: tree structures differ: {treedef} and {other_def}")
    return unflatten(treedef, [fn(*args) for args in zip(flat, *[other_flat for other_flat, _ in others])])
