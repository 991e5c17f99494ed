"""Flattening nested tuples, lists, dicts, NamedTuples and dataclasses ("pytrees") at the
transform boundary, so that the compiler only ever sees flat tuples of leaves."""

from __future__ import annotations

import dataclasses


class Leaf:
    __slots__ = ()

    def __repr__(self):
        return "*"


LEAF = Leaf()


def _namedtuple(t):
    return isinstance(t, type) and issubclass(t, tuple) and hasattr(t, "_fields")


def _dataclass(t):
    return isinstance(t, type) and dataclasses.is_dataclass(t)


def is_node_type(t):
    """A NamedTuple or dataclass type: its instances are pytrees of their fields."""
    return _namedtuple(t) or _dataclass(t)


def _fields(cls):
    return tuple(f.name for f in dataclasses.fields(cls))


def flatten(tree):
    """(leaves, treedef). Dicts are ordered by sorted keys, as in JAX; a NamedTuple's or a
    dataclass's children are its fields, in order (its treedef: ``(cls, names, children)``)."""
    leaves = []

    def walk(t):
        cls = type(t)
        if cls is tuple or cls is list:
            return (cls, tuple(walk(c) for c in t))
        if isinstance(t, dict):
            keys = tuple(sorted(t))
            return (dict, keys, tuple(walk(t[k]) for k in keys))
        if _namedtuple(cls):
            return (cls, cls._fields, tuple(walk(c) for c in t))
        if _dataclass(cls):
            names = _fields(cls)
            return (cls, names, tuple(walk(getattr(t, n)) for n in names))
        if isinstance(t, (tuple, list)):  # another subclass: as its base
            return (tuple if isinstance(t, tuple) else list, tuple(walk(c) for c in t))
        if t is None:
            return None
        leaves.append(t)
        return LEAF

    return leaves, walk(tree)


def unflatten(treedef, leaves):
    it = iter(leaves)

    def build(d):
        if d is LEAF:
            return next(it)
        if d is None:
            return None
        if d[0] is dict:
            return {k: build(c) for k, c in zip(d[1], d[2])}
        if len(d) == 3:  # a NamedTuple or a dataclass
            vals = [build(c) for c in d[2]]
            if _namedtuple(d[0]):
                return d[0](*vals)
            obj = object.__new__(d[0])  # fields set as they are (no __init__/__post_init__)
            for n, v in zip(d[1], vals):
                object.__setattr__(obj, n, v)
            return obj
        return d[0](build(c) for c in d[1])

    return build(treedef)


def count(treedef):
    if treedef is LEAF:
        return 1
    if treedef is None:
        return 0
    return sum(count(c) for c in (treedef[2] if len(treedef) == 3 else treedef[1]))
