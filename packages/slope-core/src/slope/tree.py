"""Pytrees via optree in Slope's own namespace (built in: lists, tuples, dicts by sorted keys, namedtuples, None)."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import optree

TreeDef = optree.PyTreeSpec
NAMESPACE = "slope"  # Slope's registrations stay its own: other optree users (PyTorch) do not see them, nor it theirs


def register(cls: type, flatten: Callable | None = None, unflatten: Callable | None = None) -> type:
    """Make a class a pytree node (once): `flatten(obj) -> (children, aux)`, `unflatten(aux, children) -> obj`."""
    if flatten is None:  # a dataclass's fields are its children (so this also works as a class decorator)
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"slope.tree.register: {cls.__name__} is not a dataclass, so pass flatten and unflatten")
        names = tuple(f.name for f in dataclasses.fields(cls))

        def flatten(obj: Any) -> tuple[list, tuple]:
            return [getattr(obj, n) for n in names], names

        def unflatten(aux: tuple, children: list) -> Any:
            return cls(**dict(zip(aux, children)))

    return optree.register_pytree_node(cls, flatten, unflatten, namespace=NAMESPACE)


def flatten(value: Any, is_leaf: Callable | None = None) -> tuple[list, TreeDef]:
    """The leaves of a pytree in order, and its structure."""
    return optree.tree_flatten(value, is_leaf, namespace=NAMESPACE)


def unflatten(treedef: TreeDef, leaves: Any) -> Any:
    """Rebuild a pytree of this structure from its leaves."""
    try:
        return treedef.unflatten(leaves)
    except ValueError as error:  # too many or too few leaves
        raise ValueError(f"slope.tree.unflatten: {error} ({describe(treedef)})") from None


def leaves(value: Any, is_leaf: Callable | None = None) -> list:
    """The leaves of a pytree."""
    return optree.tree_leaves(value, is_leaf, namespace=NAMESPACE)


def structure(value: Any, is_leaf: Callable | None = None) -> TreeDef:
    """The structure of a pytree."""
    return optree.tree_structure(value, is_leaf, namespace=NAMESPACE)


def sort_dicts(treedef: TreeDef) -> TreeDef:
    """The structure with every dict rebuilt in sorted key order (equal to it, unflattening in that order, as JAX's)."""

    def in_order(node: TreeDef) -> TreeDef:  # one level: a dict's entries are its keys, sorted
        keys = dict.fromkeys(node.entries(), optree.treespec_leaf(namespace=NAMESPACE))
        return optree.treespec_dict(keys, namespace=NAMESPACE) if node.type is dict else node

    return treedef.transform(in_order)


def describe(treedef: TreeDef) -> str:
    """A structure as short text for messages, such as `tuple(*, dict(*, *))` (a leaf is `*`)."""
    children = ", ".join(describe(child) for child in treedef.children())
    return "*" if treedef.is_leaf() else f"{treedef.type.__name__}({children})"


def map(fn: Callable, value: Any, *rest: Any, is_leaf: Callable | None = None) -> Any:  # noqa: A001
    """Apply `fn` to every leaf (and the matching leaves of `rest`, which must have the same structure)."""
    treedef = structure(value, is_leaf)
    for other in rest:
        if (other_def := structure(other, is_leaf)) != treedef:
            raise ValueError(f"slope.tree.map: tree structures differ: {describe(treedef)} and {describe(other_def)}")
    return optree.tree_map(fn, value, *rest, is_leaf=is_leaf, namespace=NAMESPACE)
