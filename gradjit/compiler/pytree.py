"""Flattening nested tuples, lists and dicts ("pytrees") at the transform boundary, so that
the compiler only ever sees flat tuples of leaves."""

from __future__ import annotations


class Leaf:
    __slots__ = ()

    def __repr__(self):
        return "*"


LEAF = Leaf()


def flatten(tree):
    """(leaves, treedef). Dicts are ordered by sorted keys, as in JAX."""
    leaves = []

    def walk(t):
        if isinstance(t, (tuple, list)):
            return (type(t), tuple(walk(c) for c in t))
        if isinstance(t, dict):
            keys = tuple(sorted(t))
            return (dict, keys, tuple(walk(t[k]) for k in keys))
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
        return d[0](build(c) for c in d[1])

    return build(treedef)


def count(treedef):
    if treedef is LEAF:
        return 1
    if treedef is None:
        return 0
    return sum(count(c) for c in (treedef[2] if treedef[0] is dict else treedef[1]))
