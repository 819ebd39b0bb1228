"""Pytrees: nested containers of tensors that transformations flatten and rebuild (optree, in Slope's namespace).

Lists, tuples, dicts (children in sorted key order), namedtuples and `None` (a node without children) are built in;
other classes become nodes with `register`. A structure (`TreeDef`) is hashable, so it can key a cache.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import optree

TreeDef = optree.PyTreeSpec
NAMESPACE = "slope"  # registrations stay Slope's own: other optree users (PyTorch) do not see them, nor we theirs


def register(cls: type, flatten: Callable | None = None, unflatten: Callable | None = None) -> type:
    """Make a class a pytree node: `flatten(obj) -> (children, aux)`, `unflatten(aux, children) -> obj`."""
    # without functions: the class's own tree_flatten/tree_unflatten, or a dataclass's fields (so it is a decorator)
    if flatten is None and hasattr(cls, "tree_flatten") and hasattr(cls, "tree_unflatten"):
        flatten, unflatten = cls.tree_flatten, cls.tree_unflatten
    elif flatten is None:
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"slope.tree.register: {cls.__name__} is not a dataclass, so pass flatten and unflatten")
        names = tuple(f.name for f in dataclasses.fields(cls))

        def flatten(obj: Any) -> tuple[list, tuple]:
            return [getattr(obj, n) for n in names], names

        def unflatten(aux: tuple, children: list) -> Any:
            return cls(**dict(zip(aux, children)))

    if optree.register_pytree_node.get(cls, namespace=NAMESPACE) is not None:  # registering again replaces
        optree.unregister_pytree_node(cls, namespace=NAMESPACE)
    return optree.register_pytree_node(cls, flatten, unflatten, namespace=NAMESPACE)


def flatten(value: Any, is_leaf: Callable | None = None) -> tuple[list, TreeDef]:
    """The leaves of a pytree in order, and its structure."""
    return optree.tree_flatten(value, is_leaf, namespace=NAMESPACE)


def unflatten(treedef: TreeDef, leaves: Any) -> Any:
    """Rebuild a pytree of this structure from its leaves."""
    try:
        return treedef.unflatten(leaves)
    except ValueError as error:
        raise ValueError(f"slope.tree.unflatten: {error} ({describe(treedef)})") from None


def leaves(value: Any, is_leaf: Callable | None = None) -> list:
    """The leaves of a pytree."""
    return optree.tree_leaves(value, is_leaf, namespace=NAMESPACE)


def structure(value: Any) -> TreeDef:
    """The structure of a pytree."""
    return optree.tree_structure(value, namespace=NAMESPACE)


def sorted_keys(d: dict) -> list:
    """A dict's keys in the order pytrees visit them (sorted; keys of mixed types by type, then value)."""
    return list(optree.tree_flatten_one_level(d, namespace=NAMESPACE).entries)


def describe(treedef: TreeDef) -> str:
    """A structure as short text for messages: `tuple(*, dict(*, *))`, a leaf is `*`."""
    if treedef.is_leaf():
        return "*"
    return f"{treedef.type.__name__}({', '.join(describe(child) for child in treedef.children())})"


def map(fn: Callable, value: Any, *rest: Any, is_leaf: Callable | None = None) -> Any:  # noqa: A001
    """Apply `fn` to every leaf (and the matching leaves of `rest`), keeping the structure."""
    treedef = optree.tree_structure(value, is_leaf, namespace=NAMESPACE)
    for other in rest:
        other_def = optree.tree_structure(other, is_leaf, namespace=NAMESPACE)
        if other_def != treedef:
            raise ValueError(f"slope.tree.map: tree structures differ: {describe(treedef)} and {describe(other_def)}")
    return optree.tree_map(fn, value, *rest, is_leaf=is_leaf, namespace=NAMESPACE)
