"""Module: a pytree of parameters, buffers and child modules, with the PyTorch-style surface.

A module's attributes that hold tensors (or modules, or containers of them: lists, tuples, dicts, namedtuples, deques,
classes registered with `slope.tree.register`) are its pytree children; every other attribute (sizes, flags,
activation names, `training`), and every item of such a container that is neither a tensor nor a module (the 0.5 of
`[(layer, 0.5)]`), is static and goes into the tree structure, so `jit` caches one program per structure and switching
`train()`/`eval()` compiles a separate program. An unregistered list, tuple or dict subclass is flattened as its base
type and rebuilt as the subclass.

Static attributes are compared by content, keyed again at each flatten (each jit call): lists, dicts (in their insertion
order: a forward may iterate them), sets, NumPy arrays by their items or bytes (a large constant table costs a copy per
call: make it a buffer), dataclasses and config objects (SimpleNamespace, argparse.Namespace) by their attributes, so a
config changed in place compiles again. A plain object attribute is keyed by identity: replace it, don't mutate it, or
use a dataclass/SimpleNamespace (a dataset, tokenizer or logger held by a model costs nothing per call, and changing its
state retraces nothing). A jitted submodule (`self.fast = slope.jit(self.sub)`) or a bound method of a module in the
tree, as an attribute or in a list, tuple or dict attribute (`[slope.jit(self.sub)]`, `{"f": self.sub.forward}`,
`[(self.sub, slope.jit(self.sub))]`), is rebound to the copy's own submodule when the tree is rebuilt, wherever that
submodule is held (any container kind above), so jit and grad read the weights they are given (the jitted one keeps its
compile cache). What cannot be rebound keeps the original module (its weights of the time, zero gradients): a lambda or
closure capturing a module, `slope.vmap(self.sub)` (a closure), a jit in a dataclass, namespace, set or deque attribute
holding no tensors or modules; call these inside `forward` instead (`slope.vmap(self.sub)(x)`).

Kinds of tensor attributes:

- parameters: trainable tensors (the default for a tensor attribute);
- frozen parameters: parameters marked with `freeze()`; they stay in the tree but optimizers leave them alone;
- buffers: state such as BatchNorm's running statistics, registered with `register_buffer`; optimizers skip them,
  layers read them through `stop_gradient`, and `nn.value_and_grad` gives them zero gradients.

Layers that update buffers in training mode (BatchNorm) assign the new values to their own attributes. Eagerly this
is PyTorch's in-place behaviour; in a transformed function use `out, model = nn.apply(model, x)`, which runs a copy
of the model and returns that copy with its updated buffers, leaving the argument untouched. Inside jit/grad/vmap
such an update is allowed only within a `buffer_updates()` block (`nn.apply` and `slope.distributed.train_step` open
one): elsewhere it would land on a copy of the model that no one returns, and the layer raises instead. So it does in
a transformation nested inside such a block (a slope.grad in train_step's loss): the block never sees that copy.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import copy
import dataclasses
import inspect
import sys
import threading
import types
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import optree

import slope
from slope import Tensor
from slope.errors import SlopeTraceError
from slope.trace import Tracer

__all__ = [
    "Module",
    "apply",
    "buffer_updates",
    "check_buffer_update",
    "check_key",
    "check_not_jitted",
    "leaf_kinds",
    "next_key",
    "value_and_grad",
    "grad",
    "rng",
]


def _freeze(value: Any, within: list | None = None, found: list | None = None) -> Any:
    """A hashable key for a static attribute value (lists, dicts, dataclasses and namespaces by content; floats by
    their bits, so -0.0 is not 0.0 and a NaN finds a NaN; any other object by its own hash, or identity). `within`
    holds the ids of the containers being keyed around it: a container holding itself is keyed by where it is. With
    `found`, a jit or bound method in lists, tuples and dicts is appended to it and keyed by its place there."""
    if isinstance(value, (float, np.floating)):  # (NumPy's too: np.float32(-0.0) == 0.0)
        return (type(value), float(value).hex())
    if isinstance(value, np.ndarray):
        return ("ndarray", value.shape, value.dtype.str, value.tobytes())
    if isinstance(value, Tensor):  # (its == is elementwise)
        return ("object", id(value))
    if isinstance(value, (list, tuple, dict, set, frozenset, types.SimpleNamespace, argparse.Namespace)) or (
        dataclasses.is_dataclass(value) and not isinstance(value, type)
    ):
        within = [] if within is None else within
        if id(value) in within:  # (a cycle: `cfg.parent = cfg`)
            return ("cycle", within.index(id(value)))
        within.append(id(value))
        key = _freeze_container(value, within, found)
        within.pop()
        return key
    if found is not None and isinstance(value, (slope.jit, types.MethodType)):
        found.append(value)
        return ("found", len(found) - 1)
    try:
        hash(value)
    except TypeError:
        return ("object", id(value))  # unhashable and unknown: equal only to itself
    return (type(value), value)


def _freeze_container(value: Any, within: list, found: list | None = None) -> Any:
    """`_freeze` of a list, tuple, dict, set, dataclass or namespace: by its items (a config: by its attributes); a
    dict by its items in insertion order (a forward may iterate it: `{"a": 1, "b": 2}` is not `{"b": 2, "a": 1}`)."""
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(_freeze(v, within, found) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple((repr(k), _freeze(v, within, found)) for k, v in value.items()))
    if isinstance(value, (set, frozenset)):
        return ("set", frozenset(_freeze(v, within) for v in value))
    if isinstance(value, (types.SimpleNamespace, argparse.Namespace)):  # (a config: by its attributes)
        return (type(value), _freeze(vars(value), within))
    fields = dataclasses.fields(value)  # (a dataclass, by value: a mutated config retraces)
    return (type(value), tuple((f.name, _freeze(getattr(value, f.name), within)) for f in fields))


class _Static:
    """A static attribute inside a tree structure: compared and hashed by content."""

    __slots__ = ("value", "key", "hash")

    def __init__(self, value: Any, key: Any = None):
        self.value = value
        self.key = _freeze(value) if key is None else key
        self.hash = hash(self.key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Static) and self.hash == other.hash and self.key == other.key

    def __hash__(self) -> int:
        return self.hash

    def __repr__(self) -> str:
        return repr(self.value)


class _Rebound(_Static):
    """A static attribute bound to a module of the tree (`self.fast = slope.jit(self.sub)`, a bound method): the
    rebuilt module gets it bound to its own counterpart, so jit and grad read the weights they are given."""

    __slots__ = ("path",)

    def __init__(self, value: Any, path: tuple, key: Any):
        self.value, self.path, self.key = value, path, key
        self.hash = hash(key)

    def rebind(self, root: Module) -> Any:
        """The value bound to the module at `path` under `root`."""
        target = _module_at(root, self.path)
        if isinstance(self.value, types.MethodType):
            return types.MethodType(self.value.__func__, target)
        rebound = copy.copy(self.value)  # (one compile cache: the copy shares the jit's)
        rebound.owner = target
        return rebound


class _BoundIn(_Static):
    """A static container attribute holding jits or bound methods of modules in the tree (`[slope.jit(self.sub)]`,
    `{"f": self.sub.forward}`), or a child container holding them besides modules (`[(self.sub, slope.jit(self.sub))]`):
    the rebuilt module gets the container with each of them bound to its own counterpart."""

    __slots__ = ("bound", "child")

    def __init__(self, value: Any, key: Any, bound: tuple, child: bool):
        super().__init__(value, ("bound in", key, tuple(rebound.key for rebound in bound)))
        self.bound, self.child = bound, child

    def rebind(self, root: Module, container: Any = None) -> Any:
        """The container (the static one, or the rebuilt child `container`) with its jits and methods rebound."""
        new = {id(rebound.value): rebound.rebind(root) for rebound in self.bound}
        return _replaced(self.value if container is None else container, new, [])


def _replaced(value: Any, new: dict, within: list) -> Any:
    """`value` with the objects whose ids are keys of `new` replaced, through lists, tuples, dicts, deques and other
    pytree nodes (a new container where something in it was replaced: the original is left alone)."""
    if id(value) in new:
        return new[id(value)]
    if type(value) in _SCALARS or isinstance(value, (Tensor, Module)) or id(value) in within:
        return value
    within.append(id(value))
    try:
        if isinstance(value, dict):
            changed = {k: v for k, item in value.items() if (v := _replaced(item, new, within)) is not item}
            if not changed:
                return value
            result = copy.copy(value)  # (a dict subclass, OrderedDict, defaultdict: their kind and order kept)
            for k, v in changed.items():
                dict.__setitem__(result, k, v)
            return result
        if isinstance(value, (list, tuple)):
            items = [_replaced(item, new, within) for item in value]
            if all(a is b for a, b in zip(items, value)):
                return value
            if type(value) in (list, tuple):
                return type(value)(items)
            if hasattr(value, "_fields"):  # (a namedtuple)
                return type(value)._make(items)
            rebuilt = _Subclass.unflatten((type(value), None), [items])  # (a list or tuple subclass: no __init__)
            _set_attributes(rebuilt, _attributes(value))
            return rebuilt
        if optree.tree_is_leaf(value, namespace=slope.tree.NAMESPACE):
            return value
        items, aux, _, rebuild = optree.tree_flatten_one_level(value, namespace=slope.tree.NAMESPACE)
        replaced = [_replaced(item, new, within) for item in items]
        if all(a is b for a, b in zip(replaced, items)):
            return value
        return collections.deque(replaced, value.maxlen) if type(value) is collections.deque else rebuild(aux, replaced)
    finally:
        within.pop()


def _submodules(value: Any, name: str) -> list[Module]:
    """The modules of an attribute value: itself, or those held in it as a container (in flatten order)."""
    if isinstance(value, Module):
        return [value]
    if type(value) in (list, tuple) and all(isinstance(item, Module) for item in value):
        return list(value)  # (the common kind: a list of layers)
    if type(value) in _SCALARS or isinstance(value, Tensor) or not _is_child(value):
        return []
    return [module for _, module in _container_modules(value, name)]


def _module_path(root: Module, target: Module, seen: set | None = None) -> tuple | None:
    """The steps from `root` to the submodule `target`, or None: (attribute, None) to a module attribute, (attribute,
    i) to the i-th module held in a container attribute (of any kind Module flattens: lists, tuples, dicts,
    namedtuples, deques, registered classes, list subclasses, mixed with other values)."""
    if root is target:
        return ()
    seen = set() if seen is None else seen
    seen.add(id(root))
    for name, value in root.__dict__.items():
        if type(value) in _SHARED or type(value) is Tensor:
            continue
        for index, module in enumerate(_submodules(value, name)):
            if id(module) in seen:
                continue
            found = _module_path(module, target, seen)
            if found is not None:
                return ((name, None if isinstance(value, Module) else index), *found)
    return None


def _module_at(root: Module, path: tuple) -> Module:
    """The module at `path` (from `_module_path`) under `root`."""
    for name, index in path:
        value = root.__dict__[name]
        root = value if index is None else _submodules(value, name)[index]
    return root


def _rebound(root: Module, value: Any) -> _Rebound | None:
    """A jitted module or bound method of a module in `root`'s tree, to be bound to its counterpart on unflatten."""
    is_jit = isinstance(value, slope.jit)
    owner = getattr(value, "owner", None) if is_jit else getattr(value, "__self__", None)
    if not isinstance(owner, Module) or (path := _module_path(root, owner)) is None:
        return None
    return _Rebound(value, path, ("bound", path, id(value.cache) if is_jit else value.__func__))


def _static_entry(root: Module, value: Any) -> _Static:
    """The static entry of an attribute value: a `_BoundIn` where it is a container holding jits or bound methods of
    modules in `root`'s tree, else a `_Static`."""
    found: list = []
    key = _freeze(value, None, found)
    if not found:
        return _Static(value, key)
    rebounds = [_rebound(root, item) for item in found]
    bound = tuple(rebound for rebound in rebounds if rebound is not None)
    if not bound:
        return _Static(value)  # (jits of other models: by their identity)
    keys = tuple(_freeze(item) if rebound is None else rebound.key for item, rebound in zip(found, rebounds))
    return _BoundIn(value, (key, keys), bound, child=False)


def _bound_in_child(root: Module, child: Any) -> _BoundIn | None:
    """For a child container mixing modules with jits or bound methods of modules in `root`'s tree (a `_Mixed`), the
    `_BoundIn` that rebinds them in the rebuilt container."""
    if type(child) is _Subclass:  # (an unregistered list subclass: its base-type content)
        child.content = child = _container_child(_base(child.value))
    if type(child) is not _Mixed:
        return None
    structure, others = child.static
    kinds = (slope.jit, types.MethodType)
    rebounds = [_rebound(root, item.value) if isinstance(item.value, kinds) else None for _, item in others]
    bound = tuple(rebound for rebound in rebounds if rebound is not None)
    if not bound:
        return None
    # (in the structure too by path and compile cache, not by identity: a copy holds copies, and compiles nothing new)
    others = tuple((i, item if rebound is None else rebound) for (i, item), rebound in zip(others, rebounds))
    child.static = (structure, others)
    return _BoundIn(None, None, bound, child=True)


def _holds(value: Any) -> bool:
    """Whether a value inside an attribute's container is a pytree child of the module (a tensor or a module)."""
    return isinstance(value, (Tensor, Module))


def _is_child(value: Any) -> bool:
    """Whether an attribute value belongs in the pytree: a tensor, a module, or a pytree container (list, tuple, dict,
    namedtuple, deque, a class registered with slope.tree.register) that holds some."""
    if isinstance(value, (Tensor, Module)):
        return True
    kind = type(value)
    if kind in _SCALARS:  # (every jit call asks this of a module's static attributes: these without optree)
        return False
    if isinstance(value, (list, tuple)):  # (an unregistered subclass too: flattened as its base type)
        items = value
    elif isinstance(value, dict):
        items = value.values()
    elif optree.tree_is_leaf(value, namespace=slope.tree.NAMESPACE):
        return False
    else:
        items = optree.tree_flatten_one_level(value, namespace=slope.tree.NAMESPACE)[0]
    return any(_is_child(item) for item in items)


def _container_child(value: Any) -> Any:
    """The pytree child of a container attribute: the container itself where all its leaves are tensors and modules,
    else a `_Mixed` whose children are those alone (a float in `[(layer, 0.5)]` is static, as a float attribute is:
    a leaf, it was traced under jit and trained by optimizers); an unregistered list, tuple or dict subclass is a
    `_Subclass` (flattened as its base type)."""
    if _unregistered(value):
        return _Subclass(value)
    items = value.values() if type(value) is dict else value if type(value) in (list, tuple) else None
    if items is not None and all(isinstance(item, (Tensor, Module)) for item in items):
        return value  # (the common kinds: a list or dict of layers)
    leaves, structure = optree.tree_flatten(value, _holds, namespace=slope.tree.NAMESPACE)
    if all(isinstance(leaf, (Tensor, Module)) for leaf in leaves):
        return value
    return _Mixed(value, leaves, structure)


def _unregistered(value: Any) -> bool:
    """Whether a value is a list, tuple or dict subclass that is no pytree node (`class Layers(list)`)."""
    return (
        isinstance(value, (list, tuple, dict))
        and type(value) not in (list, tuple, dict)
        and optree.tree_is_leaf(value, namespace=slope.tree.NAMESPACE)
    )


def _base(value: Any) -> Any:
    """An unregistered list, tuple or dict subclass as a plain list, tuple or dict (its items, in order)."""
    return dict(value) if isinstance(value, dict) else list(value) if isinstance(value, list) else tuple(value)


def _attributes(value: Any) -> dict:
    """A container subclass instance's own attributes: its __dict__ and the values of its __slots__."""
    attributes = dict(getattr(value, "__dict__", {}))
    for cls in type(value).__mro__:
        slots = getattr(cls, "__slots__", ())
        for name in (slots,) if isinstance(slots, str) else slots:
            if name not in ("__dict__", "__weakref__") and hasattr(value, name):
                attributes[name] = getattr(value, name)
    return attributes


def _set_attributes(obj: Any, attributes: dict) -> None:
    """Give a rebuilt container subclass instance its attributes back (slots too; its own __setattr__ bypassed)."""
    for name, value in attributes.items():
        object.__setattr__(obj, name, value)


class _Subclass:
    """An unregistered list, tuple or dict subclass attribute holding tensors or modules: flattened as its base type
    (its tensors read at each jit call and trained, as a list's; they were one opaque leaf, baked into jit's program),
    rebuilt as the subclass with its attributes."""

    __slots__ = ("value", "content")

    def __init__(self, value: Any) -> None:
        self.value = value
        self.content = None  # (the base-type container's child, where already made)

    @staticmethod
    def flatten(node: _Subclass) -> tuple[list, tuple]:
        """The base-type container's child, and the subclass with its attributes (static)."""
        value = node.value
        attributes = _attributes(value)
        content = _container_child(_base(value)) if node.content is None else node.content
        return [content], (type(value), _Static(attributes) if attributes else None)

    @staticmethod
    def unflatten(static: tuple, children: list) -> Any:
        """The subclass instance (no `__init__` call) holding the rebuilt items."""
        kind, attributes = static
        (content,) = children
        if issubclass(kind, tuple):
            obj = tuple.__new__(kind, content)
        else:
            obj = kind.__new__(kind)
            list.extend(obj, content) if isinstance(obj, list) else dict.update(obj, content)
        if attributes is not None:
            _set_attributes(obj, attributes.value)
        return obj


slope.tree.register(_Subclass, _Subclass.flatten, _Subclass.unflatten)


class _Mixed:
    """A container attribute holding tensors or modules and other values: the tensors and modules are its pytree
    children; the other values are static, compared by content (part of the structure, the jit key)."""

    __slots__ = ("items", "static", "entries")

    def __init__(self, value: Any, leaves: list, structure: Any) -> None:
        paths = optree.tree_paths(value, _holds, namespace=slope.tree.NAMESPACE)
        held = [i for i, leaf in enumerate(leaves) if _is_child(leaf)]  # (tensors, modules, unregistered lists)
        self.items = [_Subclass(leaves[i]) if _unregistered(leaves[i]) else leaves[i] for i in held]
        self.entries = tuple(".".join(map(str, paths[i])) for i in held)
        others = tuple((i, _Static(leaf)) for i, leaf in enumerate(leaves) if not _is_child(leaf))
        self.static = (structure, others)

    @staticmethod
    def flatten(mixed: _Mixed) -> tuple[list, tuple, tuple]:
        """The tensors and modules, the static rest, and their paths in the container."""
        return mixed.items, mixed.static, mixed.entries

    @staticmethod
    def unflatten(static: tuple, children: list) -> Any:
        """The container itself (not a `_Mixed`): its static values put back between the children."""
        structure, others = static
        leaves = list(children)
        for i, value in others:
            leaves.insert(i, value.value)
        return structure.unflatten(leaves)


slope.tree.register(_Mixed, _Mixed.flatten, _Mixed.unflatten)


_SHARED = frozenset([int, bool, str, type(None)])  # static values whose entries are shared (floats: see _freeze)
_SCALARS = _SHARED | {float, complex, bytes, frozenset, set, np.ndarray}  # pytree leaves, never children
_SHARED_ENTRIES: dict[tuple, tuple] = {}  # (name, type, value) -> (name, _Static)


def _shared_entry(name: str, value: Any) -> tuple:
    """The one (name, _Static) entry of a module's static int, bool, str or None attribute (sizes, flags, names)."""
    key = (name, type(value), value)
    entry = _SHARED_ENTRIES.get(key)
    if entry is None:
        if len(_SHARED_ENTRIES) >= 4096:  # (bounded: a step count kept on a model made one entry per value, for ever)
            _SHARED_ENTRIES.clear()  # (entries compare by content: a new one equals the one it replaces)
        entry = _SHARED_ENTRIES[key] = (name, _Static(value))
    return entry


class _ForwardSignature:
    """A module's `__signature__`: its forward's, what a call takes (so `jit(model, static_argnums=1)(x, n=3)` names
    `n`, as for a function); on the class None, so `inspect.signature(nn.Linear)` stays the constructor's."""

    def __get__(self, module: Any, owner: type | None = None) -> inspect.Signature | None:
        if module is None:
            return None
        call = type(module).__call__  # (a subclass's own __call__ is what a call takes)
        try:
            return inspect.signature(module.forward if call is Module.__call__ else call.__get__(module))
        except (TypeError, ValueError):  # (a forward without a signature: inspect's own answer)
            return None


class Module:
    """Base class of layers and models: tensor attributes are parameters, module attributes are children.

    Subclasses set attributes in `__init__` (calling `super().__init__()` first) and define `forward`.
    """

    training: bool

    def __new__(cls, *args: Any, **kwargs: Any) -> Module:
        obj = super().__new__(cls)
        obj.__dict__["training"] = True
        return obj

    def __init__(self) -> None:
        self.__dict__.setdefault("training", True)

    # ------------------------------------------------------------------------------------------- pytree
    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        slope.tree.register(cls, cls.tree_flatten, cls.tree_unflatten)  # (pytree nodes are found by exact type)

    def tree_flatten(self) -> tuple[list, tuple]:
        """The pytree children (tensor and module attributes) and the static rest."""
        children = []
        entries = []
        for name, value in self.__dict__.items():
            kind = type(value)  # (every jit call flattens its modules: the common kinds first)
            if kind is Tensor:
                children.append(value)
                entries.append(name)
            elif kind in _SHARED:
                entries.append(_SHARED_ENTRIES.get((name, kind, value)) or _shared_entry(name, value))
            elif isinstance(value, (Tensor, Module)):
                children.append(value)
                entries.append(name)
            elif kind is slope.jit or kind is types.MethodType:  # (of a module of the tree: rebound; else by identity)
                entries.append((name, _rebound(self, value) or _Static(value)))
            elif _is_child(value):
                children.append(child := _container_child(value))
                bound = _bound_in_child(self, child)  # (`[(sub, slope.jit(sub))]`: rebound in the rebuilt container)
                entries.append(name if bound is None else (name, bound))
            else:
                entries.append((name, _static_entry(self, value)))
        return children, tuple(entries)

    @classmethod
    def tree_unflatten(cls, aux: tuple, children: list) -> Module:
        """Rebuild a module from its structure and children (no `__init__` call)."""
        obj = object.__new__(cls)
        attributes = obj.__dict__
        iterator = iter(children)
        rebound = []
        for entry in aux:
            if type(entry) is str:
                attributes[entry] = next(iterator)
            elif type(entry[1]) is _Rebound or type(entry[1]) is _BoundIn:
                # (bound below, once the submodules are in place; the order kept; a child container is rebuilt here)
                attributes[entry[0]] = next(iterator) if getattr(entry[1], "child", False) else None
                rebound.append(entry)
            else:
                attributes[entry[0]] = entry[1].value
        for name, static in rebound:
            attributes[name] = static.rebind(obj, attributes[name]) if type(static) is _BoundIn else static.rebind(obj)
        return obj

    # ------------------------------------------------------------------------------------------- calling
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The computation of the module (subclasses define it)."""
        raise NotImplementedError(f"{type(self).__name__}.forward is not defined")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    __signature__ = _ForwardSignature()

    # ------------------------------------------------------------------------------------------- kinds
    @property
    def _buffer_names(self) -> frozenset:
        return self.__dict__.get("_buffers", frozenset())

    @property
    def _frozen_names(self) -> frozenset:
        return self.__dict__.get("_frozen", frozenset())

    def register_buffer(self, name: str, value: Tensor | None) -> None:
        """Add a buffer: a tensor kept with the module (and saved) that optimizers do not train."""
        if isinstance(value, Module) or _container_modules(value, name):
            raise TypeError(
                f"Module.register_buffer: {name!r} holds modules; a buffer is a tensor (or a list, tuple or dict of "
                "tensors), as PyTorch's (Tensor or None). Assign the modules as an attribute and register their "
                "tensors as buffers in them"
            )
        setattr(self, name, value)
        self.__dict__["_buffers"] = self._buffer_names | {name}

    def freeze(self, *names: str) -> Module:
        """Mark parameters (all by default, or those under the given dotted names) as frozen: optimizers skip them."""
        self._set_frozen(names, True)
        return self

    def unfreeze(self, *names: str) -> Module:
        """Make frozen parameters (all by default, or those under the given dotted names) trainable again."""
        self._set_frozen(names, False)
        return self

    def requires_grad_(self, requires_grad: bool = True) -> Module:
        """PyTorch's spelling of `unfreeze()` (True) and `freeze()` (False) for every parameter."""
        return self.unfreeze() if requires_grad else self.freeze()

    def _set_frozen(self, names: tuple, frozen: bool) -> None:
        """Mark each parameter named, or under a name (a child module, a list of them: every parameter in it, as
        PyTorch's `requires_grad_(False)` on a ModuleList), in the module that holds it."""
        wanted = set(names)
        found = set()
        for name, _, kind, owner, local in list(self._walk()):
            if kind == "buffer":
                continue
            matched = {w for w in wanted if name == w or name.startswith(w + ".")}
            if wanted and not matched:
                continue
            found |= matched
            current = owner._frozen_names
            owner.__dict__["_frozen"] = current | {local} if frozen else current - {local}
        missing = wanted - found
        if missing:
            raise KeyError(
                f"Module.{'freeze' if frozen else 'unfreeze'}: no parameters named {sorted(missing)}, nor modules or "
                f"containers holding any; parameters are {[n for n, _ in self.named_parameters()]}"
            )

    # ------------------------------------------------------------------------------------------- walking
    def _walk(self, prefix: str = "") -> Iterator[tuple[str, Any, str, Module, str]]:
        """(dotted name, leaf, kind, the module holding it, its name there) for every tensor leaf in tree order; the
        rest of a container attribute is static."""
        buffers = self._buffer_names
        frozen = self._frozen_names
        for name, value in self.__dict__.items():
            if isinstance(value, Tensor):
                yield f"{prefix}{name}", value, _kind(name, name, buffers, frozen), self, name
            elif isinstance(value, Module):
                yield from value._walk(f"{prefix}{name}.")
            elif type(value) not in _SHARED and _is_child(value):
                yield from self._walk_container(value, name, name, prefix)

    def _walk_container(self, value: Any, name: str, local: str, prefix: str) -> Iterator[tuple]:
        """`_walk` of the container attribute `name` (its part `local`): an unregistered list, tuple or dict subclass
        by its items, as its base type is flattened."""
        value = _base(value) if _unregistered(value) else value
        paths, leaves, _ = optree.tree_flatten_with_path(value, _holds, namespace=slope.tree.NAMESPACE)
        for path, leaf in zip(paths, leaves):
            here = ".".join((local, *map(str, path)))
            if isinstance(leaf, Module):
                yield from leaf._walk(f"{prefix}{here}.")
            elif isinstance(leaf, Tensor):
                yield f"{prefix}{here}", leaf, _kind(name, here, self._buffer_names, self._frozen_names), self, here
            elif _is_child(leaf):  # (an unregistered subclass inside the container)
                yield from self._walk_container(leaf, name, here, prefix)

    def named_leaves(self, prefix: str = "") -> Iterator[tuple[str, Any, str]]:
        """(dotted name, leaf, kind) for every pytree leaf in tree order; kind is param, frozen or buffer."""
        return ((name, leaf, kind) for name, leaf, kind, _, _ in self._walk(prefix))

    def named_parameters(self, prefix: str = "") -> list[tuple[str, Tensor]]:
        """(dotted name, tensor) of every parameter, frozen ones included, buffers excluded; a tensor held in two
        places (tied weights) once, by its first name, as PyTorch's."""
        return _once((n, t) for n, t, kind in self.named_leaves(prefix) if kind != "buffer")

    def parameters(self) -> list[Tensor]:
        """Every parameter tensor (frozen ones included, buffers excluded)."""
        return [t for _, t in self.named_parameters()]

    def named_trainable_parameters(self) -> list[tuple[str, Tensor]]:
        """(dotted name, tensor) of the parameters an optimizer updates (not frozen, not buffers)."""
        return _once((n, t) for n, t, kind in self.named_leaves() if kind == "param")

    def named_buffers(self, prefix: str = "") -> list[tuple[str, Tensor]]:
        """(dotted name, tensor) of every buffer (a tensor held in two places once, by its first name)."""
        return _once((n, t) for n, t, kind in self.named_leaves(prefix) if kind == "buffer")

    def buffers(self) -> list[Tensor]:
        """Every buffer tensor."""
        return [t for _, t in self.named_buffers()]

    def named_children(self) -> Iterator[tuple[str, Module]]:
        """(name, module) of the direct child modules."""
        for name, value in self.__dict__.items():
            if isinstance(value, Module):
                yield name, value
            elif _is_child(value):
                yield from _container_modules(value, name)

    def children(self) -> Iterator[Module]:
        """The direct child modules."""
        return (m for _, m in self.named_children())

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        """(dotted name, module) of this module and all its descendants ("" for this one)."""
        yield prefix, self
        for name, child in self.named_children():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self) -> Iterator[Module]:
        """This module and all its descendants."""
        return (m for _, m in self.named_modules())

    def num_parameters(self) -> int:
        """How many scalar parameters the module holds (frozen ones included; tied weights once, as PyTorch)."""
        return sum(p.numel() for p in self.parameters())

    # ------------------------------------------------------------------------------------------- modes
    def train(self, mode: bool = True) -> Module:
        """Set training mode on this module and its descendants (dropout active, batch statistics); returns self."""
        if not isinstance(mode, (bool, np.bool_)):  # ("False" is truthy: it set training mode)
            raise ValueError(f"Module.train: mode must be a bool, got {type(mode).__name__} {mode!r} (as PyTorch)")
        for module in self.modules():
            module.__dict__["training"] = bool(mode)
        return self

    def eval(self) -> Module:
        """Set evaluation mode (dropout off, running statistics); returns self."""
        return self.train(False)

    # ------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Tensor]:
        """Every parameter and buffer by dotted name."""
        return {name: leaf for name, leaf, _ in self.named_leaves() if isinstance(leaf, Tensor)}

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> Module:
        """Copy values (Slope or PyTorch tensors, or NumPy arrays) into this module's parameters and buffers; returns self.

        Shapes must match; values are cast to the parameter's dtype. With `strict`, missing or unexpected
        names are errors. MultiHeadAttention layers also take PyTorch's `in_proj_weight` and `in_proj_bias`, and
        BatchNorm layers its `num_batches_tracked` (ignored where they keep no count).
        """
        from .checkpoint import as_array

        for prefix, module in self.named_modules():  # (layers whose PyTorch keys differ)
            if hasattr(module, "_from_pytorch_state"):
                state = module._from_pytorch_state(state, f"{prefix}." if prefix else "")
        leaves, treedef = slope.tree.flatten(self)
        names = [name for name, _, _ in self.named_leaves()]
        expected = {name for name, leaf in zip(names, leaves) if isinstance(leaf, Tensor)}
        if strict:
            missing = sorted(expected - set(state))
            unexpected = sorted(set(state) - expected)
            if missing or unexpected:
                raise KeyError(
                    f"Module.load_state_dict: missing keys {missing}, unexpected keys {unexpected} "
                    "(pass strict=False to load a partial state)"
                )
        new_leaves = list(leaves)
        places: dict[int, list[int]] = {}  # a tensor held in several places (tied weights) stays one tensor
        for i, leaf in enumerate(leaves):
            if isinstance(leaf, Tensor):
                places.setdefault(id(leaf), []).append(i)
        for indices in places.values():
            loaded = None
            for i in indices:
                if names[i] not in state:
                    continue
                if isinstance(state[names[i]], Tracer):  # (Tensor.numpy()'s message named neither)
                    raise SlopeTraceError(
                        f"Module.load_state_dict: the value of {names[i]!r} is traced (inside jit/grad/vmap), and "
                        "loading copies concrete values into the module. Inside a transformation make a module of the new "
                        "tensors as a pytree instead: slope.tree.map(lambda t: <its new value>, model), or "
                        "slope.tree.unflatten(slope.tree.structure(model), tensors) (a list in the model's leaf order)"
                    )
                array = as_array(state[names[i]])  # (a PyTorch bfloat16 tensor too: NumPy's asarray fails on it)
                if tuple(array.shape) != leaves[i].shape:
                    raise ValueError(
                        f"Module.load_state_dict: {names[i]!r} has shape {tuple(array.shape)} in the state but "
                        f"{leaves[i].shape} in the module"
                    )
                value = slope.tensor(np.asarray(array, order="C")).astype(leaves[i].dtype)  # (float16 via float32)
                if loaded is None:
                    loaded = value, names[i]
                elif value.numpy().tobytes() != loaded[0].numpy().tobytes():
                    raise ValueError(
                        f"Module.load_state_dict: {loaded[1]!r} and {names[i]!r} are one tensor in the module (tied "
                        "weights), but the state gives them different values"
                    )
            if loaded is not None:
                for i in indices:
                    new_leaves[i] = loaded[0]
        _assign(self, slope.tree.unflatten(treedef, new_leaves))
        return self

    def save(self, path: Any) -> None:
        """Write the state dict to a file: safetensors (default) or `.npz` by suffix; never pickled code."""
        from .checkpoint import save

        save(self, path)

    def load(self, path: Any, strict: bool = True) -> Module:
        """Load parameters and buffers written by `save` into this module; returns self."""
        from .checkpoint import load

        return self.load_state_dict(load(path), strict=strict)

    # ------------------------------------------------------------------------------------------- printing
    def extra_repr(self) -> str:
        """The configuration shown inside the module's repr (layers override it)."""
        return ""

    def __repr__(self) -> str:
        lines = []
        for name, child in self.named_children():
            text = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({name}): {text}")
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not lines:
            return head + ")"
        return head + "\n" + "\n".join(lines) + "\n)"


slope.tree.register(Module, Module.tree_flatten, Module.tree_unflatten)


def _container_modules(value: Any, prefix: str) -> list[tuple[str, Module]]:
    """(dotted name, module) of the modules held in a container attribute (list, tuple, dict, any pytree node)."""
    value = _base(value) if _unregistered(value) else value
    paths, leaves, _ = optree.tree_flatten_with_path(value, _holds, namespace=slope.tree.NAMESPACE)
    found = []
    for path, leaf in zip(paths, leaves):
        name = ".".join((prefix, *map(str, path)))
        if isinstance(leaf, Module):
            found.append((name, leaf))
        elif _unregistered(leaf):  # (a list subclass inside: flattened as a list)
            found.extend(_container_modules(leaf, name))
    return found


def _kind(attribute: str, local: str, buffers: frozenset, frozen: frozenset) -> str:
    """The kind of a tensor of a module: in its buffer attribute `attribute`, or frozen by its name `local` there."""
    return "buffer" if attribute in buffers else "frozen" if local in frozen else "param"


def _once(named: Iterable[tuple[str, Any]]) -> list[tuple[str, Tensor]]:
    """The named tensors, each tensor once (by its first name)."""
    seen: set[int] = set()
    result = []
    for name, tensor in named:
        if isinstance(tensor, Tensor) and id(tensor) not in seen:
            seen.add(id(tensor))
            result.append((name, tensor))
    return result


def _assign(target: Module, source: Module) -> None:
    """Copy source's attributes into target in place, keeping the identity of child modules."""
    for name, value in source.__dict__.items():
        target.__dict__[name] = _merged(target.__dict__.get(name), value)


def _merged(current: Any, value: Any) -> Any:
    """`value` in the place of `current`: modules of one type updated in place, and lists, dicts and tuples of them
    item by item (PyTorch's load_state_dict keeps every submodule, in any container); anything else is `value`."""
    if isinstance(current, Module) and isinstance(value, Module) and type(current) is type(value):
        _assign(current, value)
        return current
    if _same_binding(current, value):  # (the copy's jit or method is bound to the copy's module: keep the own one)
        return current
    if isinstance(current, (list, tuple)) and type(value) is type(current) and len(current) == len(value):
        items = [_merged(old, new) for old, new in zip(current, value)]
        if isinstance(current, list):
            current[:] = items
            return current
        return type(current)(*items) if hasattr(current, "_fields") else tuple(items)  # (a namedtuple, a tuple)
    if isinstance(current, dict) and isinstance(value, dict) and current.keys() == value.keys():
        current.update((key, _merged(current[key], new)) for key, new in value.items())
        return current
    if type(current) is type(value) and not optree.tree_is_leaf(current, namespace=slope.tree.NAMESPACE):
        # another pytree node (a deque, a registered dataclass): rebuilt around its merged items
        items, aux, _, rebuild = optree.tree_flatten_one_level(current, namespace=slope.tree.NAMESPACE)
        new_items, new_aux, _, _ = optree.tree_flatten_one_level(value, namespace=slope.tree.NAMESPACE)
        if len(items) == len(new_items) and aux == new_aux:
            items = [_merged(old, new) for old, new in zip(items, new_items)]
            if isinstance(current, collections.deque):
                current.clear()
                current.extend(items)
                return current
            return rebuild(aux, items)
    return value


def _same_binding(current: Any, value: Any) -> bool:
    """Whether `value` is `current` (a jit or bound method of a module) rebound to a copy of its module."""
    if isinstance(current, slope.jit) and isinstance(value, slope.jit):
        same, owners = current.cache is value.cache, (current.owner, value.owner)
    elif isinstance(current, types.MethodType) and isinstance(value, types.MethodType):
        same, owners = current.__func__ is value.__func__, (current.__self__, value.__self__)
    else:
        return False
    return same and isinstance(owners[0], Module) and type(owners[0]) is type(owners[1])


# ----------------------------------------------------------------------------------------------- leaf kinds


def leaf_kinds(tree: Any) -> list[tuple[str, str]]:
    """(dotted name, kind) for every leaf of a pytree that may hold modules, in slope.tree leaf order.

    Kinds are "param", "frozen" and "buffer"; leaves outside any module are "param".
    """
    if isinstance(tree, Module):
        return [(name, kind) for name, _, kind in tree.named_leaves()]
    result = []  # named by their paths: a dict model's leaves by their keys (they were numbered)
    paths, items, _ = optree.tree_flatten_with_path(
        tree, is_leaf=lambda v: isinstance(v, Module), namespace=slope.tree.NAMESPACE
    )
    for path, item in zip(paths, items):
        prefix = ".".join(map(str, path))
        if isinstance(item, Module):
            result.extend((f"{prefix}.{name}" if prefix else name, kind) for name, _, kind in item.named_leaves())
        else:
            result.append((prefix, "param"))
    return result


# ----------------------------------------------------------------------------------------------- random keys


def check_key(where: str, key: Any, pytorch_argument: str | None = None) -> None:
    """Refuse a `key` that is neither None nor a random key, naming `where` (and the PyTorch argument at its place)."""
    if key is None or (isinstance(key, Tensor) and key.shape == (2,) and key.dtype == slope.int64):
        return  # (slope.random's criteria: an int64 tensor of shape (2,); a batch of keys is vmapped over)
    described = f"{key.dtype.name} tensor of shape {key.shape}" if isinstance(key, Tensor) else f"{key!r}"
    name = where.rsplit(".", 1)[-1]
    hint = (
        f" (PyTorch's {name} takes {pytorch_argument} in this position, Slope's takes key: give the arguments "
        "from there on by keyword)"
        if pytorch_argument
        else ""
    )
    raise TypeError(f"slope.{where}: key must be a random key, an int64 tensor of shape (2,) from "
                    f"slope.random.key(seed) or slope.random.split, got {described}{hint}")  # fmt: skip


class _KeyStream:
    """Hands out distinct keys derived from one key: `fold_in(key, 0)`, `fold_in(key, 1)`, ..."""

    def __init__(self, key: Tensor):
        check_key("nn.rng", key)
        self.key = key
        self.count = 0

    def next(self) -> Tensor:
        subkey = slope.random.fold_in(self.key, self.count)
        self.count += 1
        return subkey


class _Blocks(threading.local):
    """The blocks of one kind open in this thread, innermost last (one list for all threads: two threads' dropout
    drew each other's keys)."""

    def __init__(self) -> None:
        self.stack: list = []


@contextlib.contextmanager
def _opened(blocks: _Blocks, block: Any) -> Iterator[Any]:
    """`block` on top of `blocks` (this thread's) while the with-statement runs."""
    blocks.stack.append(block)
    try:
        yield block
    finally:
        blocks.stack.pop()


_key_streams, _buffer_scopes = _Blocks(), _Blocks()  # nn.rng's key streams, buffer_updates' scopes


def rng(key: Tensor) -> contextlib.AbstractContextManager:
    """Inside the block, layers that need randomness (Dropout) draw keys derived from `key` (per thread)."""
    return _opened(_key_streams, _KeyStream(key))


def next_key(name: str = "nn", like: Any = None) -> Tensor:
    """A fresh key for a random layer: from the active `nn.rng(key)` block, else (eagerly) the global generator.

    Inside a vmap over examples the block's key must vary over them: one key shared by all of them gave every example
    the same mask, silently (torch.func.vmap refuses randomness by default). `like` is what the key is drawn for (a
    tensor or a tuple of them: the layer's inputs): a vmap that batches none of them (jacfwd's and hessian's vmap over
    tangents) needs no per-example key; without `like`, the innermost vmap is taken for one over examples. A key given
    to a layer is not checked."""
    vmaps = _example_vmaps(like)
    if _key_streams.stack:
        stream = _key_streams.stack[-1]
        if any(_batched_by(stream.key, level) is False for level in vmaps):
            raise RuntimeError(
                f"slope.nn.{name}: inside vmap the random key of the `nn.rng` block (nn.apply's key=) is the same for "
                f"every example, so every example would get the same mask. {_PER_EXAMPLE_KEYS}"
            )
        return stream.next()
    from slope.trace import is_eager

    if vmaps:
        raise RuntimeError(f"slope.nn.{name}: needs a random key inside vmap. {_PER_EXAMPLE_KEYS}")
    if not is_eager():
        raise RuntimeError(
            f"slope.nn.{name}: needs a random key inside jit/grad/jacfwd; call the model as "
            "`out, model = nn.apply(model, x, key=key)` (or inside `with nn.rng(key):`), or pass key= to the layer"
        )
    from slope.random import next_key as global_next_key

    return global_next_key()


_PER_EXAMPLE_KEYS = (
    "For a mask per example, map over keys as well: `keys = slope.random.split(key, n)` as a batched argument, each "
    "used inside the vmapped function (`slope.vmap(lambda x, k: nn.apply(model, x, key=k)[0])(xs, keys)`, or "
    "`with nn.rng(k):` there); to share one mask between the examples on purpose, give the key to the layer or "
    "function itself (`dropout_layer(x, key=key)`, `nn.dropout(x, key=key)`, scaled_dot_product_attention's key=)"
)


def _example_vmaps(like: Any) -> list:
    """The vmaps in progress in this thread (levels of slope.trace's stack) that batch `like` (a tensor or a tuple of
    them), or may (unknown); with no `like`, the innermost vmap."""
    from slope.trace import _busy, _local
    from slope.transforms import BatchTrace

    if not _busy:
        return []
    vmaps = [main for main in reversed(_local.stack) if main.trace_type is BatchTrace]
    if like is None:
        return vmaps[:1]
    values = like if isinstance(like, tuple) else (like,)
    return [level for level in vmaps if any(_batched_by(value, level) is not False for value in values)]


def _batched_by(value: Any, vmap_level: Any) -> bool | None:
    """Whether `value` varies over the examples of the vmap at `vmap_level` (None: a trace above it hides that)."""
    from slope.trace import ProgramBuilder, ProgramTracer, Tracer
    from slope.transforms import BatchTracer, JVPTracer

    while isinstance(value, (JVPTracer, BatchTracer)) and value._trace.main.level > vmap_level.level:
        # (grad/jvp inside the vmap: the key is a primal; a vmap inside it: its value holds the examples of this one)
        value = value.primal if isinstance(value, JVPTracer) else value.value
    if isinstance(value, BatchTracer) and value._trace.main is vmap_level:
        return value.batch_dim is not None
    if not isinstance(value, Tracer) or value._trace.main.level < vmap_level.level:
        return False  # (a concrete key, or one of a transformation outside the vmap: the same for every example)
    builder = value._trace.main.data
    if not (isinstance(value, ProgramTracer) and isinstance(builder, ProgramBuilder)):
        return None
    # a value computed inside a grad (whose linearization is traced to a program) within the vmap: from what?
    constants = {tracer.ir_var: constant for constant, tracer in builder.constants.values()}
    constants.update(_linearized_at(builder))
    producers = {var: instruction for instruction in builder.instructions for var in instruction.outputs}
    pending, seen = [value.ir_var], set()
    while pending:
        var = pending.pop()
        if var in seen:
            continue
        seen.add(var)
        if var in constants:
            if (batched := _batched_by(constants[var], vmap_level)) is not False:
                return batched
        elif var in producers:
            pending.extend(producers[var].inputs)
        else:
            return None  # (an input of the traced function: its value is not known here)
    return False


def _linearized_at(builder: Any) -> dict:
    """The values at which a linearization (grad, vjp, jacrev) traces its function to the program of `builder`, by the
    program's inputs that stand for them ({} for other programs: jit's); its program keeps only their avals, so they
    are read from the frames of slope.transforms._linearize_flat (a layer inside hessian's jacrev: is its input batched
    by the vmap of jacfwd over tangents around it? It is not: the primal of that JVP)."""
    from slope.trace import make_program
    from slope.transforms import _linearize_flat

    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code is make_program.__code__ and frame.f_locals.get("builder") is builder:
            caller, tracers = frame.f_back, frame.f_locals.get("in_tracers", ())
            if caller is None or caller.f_code is not _linearize_flat.__code__:
                return {}
            return {tracer.ir_var: primal for tracer, primal in zip(tracers, caller.f_locals["primals"])}
        frame = frame.f_back
    return {}


# ----------------------------------------------------------------------------------------------- buffer updates


class BufferUpdates:
    """The buffer updates made by `nn.apply` calls inside one `buffer_updates()` block: each copy's new leaves."""

    def __init__(self) -> None:
        self._new: dict[int, tuple[Any, Any]] = {}  # id(leaf before) -> (leaf before, leaf after); both kept alive
        self._level = _innermost_transformation()  # (a grad/vmap opened inside the block runs copies it never sees)

    def _report(self, before: list, after: list) -> None:
        """Record that the leaves `before` (of a model given to nn.apply) became `after` (in the copy it returns)."""
        for old, new in zip(before, after):
            if new is old:
                continue
            if id(old) in self._new and self._new[id(old)][1] is not new:
                raise RuntimeError(_TWICE)
            self._new[id(old)] = (old, new)

    def latest(self, before: list, after: list) -> list:
        """The final leaves of a model whose leaves were `before` at the block's start and are `after` now: each
        followed through the updates of the nn.apply calls made on it (and on the models those returned)."""
        result = []
        for old, leaf in zip(before, after):
            if leaf is not old and id(old) in self._new:  # (updated in place and by an nn.apply of the same state)
                raise RuntimeError(_TWICE)
            while id(leaf) in self._new:
                leaf = self._new[id(leaf)][1]
            result.append(leaf)
        return result


_TWICE = (
    "slope.nn: a model's buffers (BatchNorm's running statistics) were updated twice from the same state (two "
    "nn.apply calls on one model, or an nn.apply and a direct call): one update would be lost. Call the model that "
    "the first call returned: `out, model = nn.apply(model, x1)`, then `nn.apply(model, x2)`"
)


def _innermost_transformation() -> Any:
    """This thread's innermost transformation in progress (the eager level when none): slope.trace's stack top."""
    from slope.trace import _local

    return _local.stack[-1]


def _nested_in_block() -> bool:
    """Whether a transformation (grad, vmap, jit called eagerly) opened inside the innermost `buffer_updates()` block
    is running: its function got a copy of the model, so the block never sees the buffers that copy updates."""
    return bool(_buffer_scopes.stack) and _buffer_scopes.stack[-1]._level is not _innermost_transformation()


_NESTED = (
    "inside a jit/grad/vmap nested within a `buffer_updates()` block (slope.distributed.train_step's loss, or an "
    "nn.apply call): that transformation runs a copy of the model that the block never sees, so the statistics would "
    "be lost. Run the model (directly or through nn.apply) outside the nested transformation, or run that pass in eval "
    "mode (`model.eval()`)"
)


def buffer_updates() -> contextlib.AbstractContextManager[BufferUpdates]:
    """A block where layers may update buffers while traced: the caller returns the models it runs (per thread).

    `nn.apply` opens one around its call, `slope.distributed.train_step` one around its loss; an `nn.apply` inside
    reports its copy's new buffers to the block around it, where `BufferUpdates.latest` finds them.
    """
    return _opened(_buffer_scopes, BufferUpdates())


def check_buffer_update(layer: Module) -> None:
    """Refuse a buffer update that would be lost: traced (jit/grad/vmap) outside any `buffer_updates()` block, or in a
    transformation nested inside one."""
    if _nested_in_block():  # (a gradient penalty's slope.grad inside train_step's loss dropped its update silently)
        raise RuntimeError(
            f"slope.nn.{type(layer).__name__}: in training mode it updates its running statistics (buffers), here "
            + _NESTED
        )
    if _buffer_scopes.stack:
        return
    from slope.trace import is_eager

    if is_eager():  # (PyTorch's in-place update)
        return
    raise RuntimeError(
        f"slope.nn.{type(layer).__name__}: in training mode it updates its running statistics (buffers), and inside "
        "jit/grad/vmap it would update a copy of the model that is never returned: the statistics would be lost. "
        "Call the model as `out, model = nn.apply(model, x)` and return that model (from a loss: return "
        "`(loss, model)` and take the gradient with `nn.value_and_grad(loss_fn, has_aux=True)`), or build the step "
        "with slope.distributed.train_step; or call `model.eval()` to use the running statistics"
    )


# ----------------------------------------------------------------------------------------------- functional calls


def apply(model: Module, *args: Any, key: Tensor | None = None, **kwargs: Any) -> tuple[Any, Module]:
    """Call a copy of the model and return `(output, updated_model)`: the copy holds buffer updates (BatchNorm).

    `key` (a random key) feeds layers that need randomness (Dropout). The model passed in is never modified, so this
    is the way to run a training-mode forward pass inside `jit` or `grad`. Inside an enclosing `buffer_updates()`
    block (`slope.distributed.train_step`'s loss) the copy's new buffers are also reported to that block. A model
    whose forward has its own `key` parameter (MultiHeadAttention's attention keys) gets it positionally: with
    `key=` as well that parameter would be left out silently, so it is refused.
    """
    _check_apply_key(model, args, key)
    leaves, treedef = slope.tree.flatten(model)
    copy = slope.tree.unflatten(treedef, leaves)
    with buffer_updates() as scope, contextlib.nullcontext() if key is None else rng(key):
        out = copy(*args, **kwargs)
    after, after_treedef = slope.tree.flatten(copy)
    if len(after) == len(leaves):
        latest = scope.latest(leaves, after)  # (nn.apply calls inside the forward pass, on parts of the copy)
        if any(new is not old for new, old in zip(latest, after)):
            copy = slope.tree.unflatten(after_treedef, latest)
        if _buffer_scopes.stack:
            if _nested_in_block() and any(new is not old for new, old in zip(latest, leaves)):
                raise RuntimeError("slope.nn.apply: the model's buffers (BatchNorm's running statistics) were updated "
                                   + _NESTED)  # fmt: skip
            _buffer_scopes.stack[-1]._report(leaves, latest)
    return out, copy


def _check_apply_key(model: Any, args: tuple, key: Any) -> None:
    """nn.apply's `key` is a random key, and it must not be mistaken for the forward's own `key` parameter."""
    if key is None:
        return
    forward = getattr(model, "forward", None)
    try:
        parameters = list(inspect.signature(forward).parameters.values()) if callable(forward) else []
    except (TypeError, ValueError):  # (a builtin without a signature)
        parameters = []
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    for position, parameter in enumerate(parameters):
        reached = parameter.kind == inspect.Parameter.POSITIONAL_OR_KEYWORD and position < len(args)
        if parameter.name == "key" and parameter.kind in kinds and not reached and not _random_key_forward(model):
            raise TypeError(
                f"slope.nn.apply: {type(model).__name__}.forward has its own `key` parameter, and nn.apply's key= is "
                "the random key for Dropout: the forward's key would be left out. Pass the forward's arguments up "
                f"to its key positionally, and the random key (if any) as key=: "
                f"nn.apply(model, {', '.join(p.name for p in parameters[:position])}, <its key>, ..., key=random_key)"
            )
    check_key("nn.apply", key)


def _random_key_forward(model: Any) -> bool:
    """Whether the model's forward's own `key` parameter is a random key too (Dropout's): then nothing is confused."""
    return bool(getattr(model, "forward_key_is_random", False))


def check_not_jitted(where: str, model: Any) -> None:
    """Refuse `slope.jit(model)` where a model is expected: the jitted function is no pytree of the model's tensors."""
    if isinstance(model, slope.jit):
        inner = model.owner if model.owner is not None else getattr(model, "__wrapped__", model.fn)
        name = type(inner).__name__ if isinstance(inner, Module) else getattr(inner, "__name__", "fn")
        raise TypeError(
            f"{where}: got slope.jit({name}), a jitted function, where a model is expected; pass the model itself "
            "(its parameters are the pytree to differentiate or train) and call the jitted function inside the loss"
        )


def value_and_grad(fn: Callable, has_aux: bool = False) -> Callable:
    """Like `slope.value_and_grad(fn)` for the first argument (a model), with buffers and frozen parameters held
    constant (their gradients are zeros).

    `fn(model, *args) -> loss` (or `(loss, aux)`); the returned function gives `(loss, grads)` (or
    `((loss, aux), grads)`), with `grads` shaped like the model. Held constant means left out of this derivative only:
    an enclosing transformation (a meta-gradient's `slope.grad`, `jvp`) differentiates through the frozen parameters
    and through aux, as `slope.value_and_grad(has_aux=True)` does.
    """
    return _value_and_grad(fn, has_aux, "slope.nn.value_and_grad")


def _value_and_grad(fn: Callable, has_aux: bool, where: str) -> Callable:
    def value_and_grad_fn(model: Any, *args: Any, **kwargs: Any) -> Any:
        check_not_jitted(where, model)
        leaves, treedef = slope.tree.flatten(model)
        # buffers and frozen parameters are closed over rather than differentiated: a stop_gradient would stop every
        # level of differentiation (ANIL's meta-gradient lost the frozen backbone's second-order terms)
        held = [isinstance(leaf, Tensor) and kind != "param" for leaf, (_, kind) in zip(leaves, leaf_kinds(model))]

        def outputs(*differentiated: Any) -> Any:
            remaining = iter(differentiated)
            rebuilt = slope.tree.unflatten(treedef, [leaf if h else next(remaining) for leaf, h in zip(leaves, held)])
            out = fn(rebuilt, *args, **kwargs)
            if has_aux and not (isinstance(out, tuple) and len(out) == 2):
                raise TypeError(f"{where}: with has_aux=True the function must return (loss, aux)")
            return out

        # the core's has_aux: aux leaves get no cotangent here and stay differentiable by enclosing transformations
        loss, vjp_fn, *aux = slope.vjp(outputs, *[leaf for leaf, h in zip(leaves, held) if not h], has_aux=has_aux)
        if not isinstance(loss, Tensor) or loss.shape != () or not loss.dtype.is_float:
            described = loss.aval if isinstance(loss, Tensor) else type(loss).__name__
            raise TypeError(f"{where}: the loss must be a scalar floating tensor, got {described}")
        computed = iter(vjp_fn(slope.ones_like(loss)))
        grads = [slope.zeros_like(leaf) if h else next(computed) for leaf, h in zip(leaves, held)]
        return ((loss, *aux) if has_aux else loss), slope.tree.unflatten(treedef, grads)

    return value_and_grad_fn


def grad(fn: Callable, has_aux: bool = False) -> Callable:
    """The gradient part of `nn.value_and_grad` (with aux: `(grads, aux)`)."""
    value_and_grad_fn = _value_and_grad(fn, has_aux, "slope.nn.grad")

    def grad_fn(model: Any, *args: Any, **kwargs: Any) -> Any:
        value, grads = value_and_grad_fn(model, *args, **kwargs)
        return (grads, value[1]) if has_aux else grads

    return grad_fn
