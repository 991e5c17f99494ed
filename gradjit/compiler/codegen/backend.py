"""The backend interface: what turns an optimised graph into the source of a module.

The schedule (``schedule.py``: fusion of a graph's equations into loop nests) is shared; a
backend lowers its items through its own rule tables and writes a module whose entry point
the runtime compiles or loads. Backends live in sibling modules of this one, imported only
when their target is first used (``backend_for``): the CUDA backend imports numba-cuda, which
``import gradjit`` never does.
"""

from __future__ import annotations

import importlib

from ...errors import GradjitError
from .. import primitives as P


class Backend:
    """A code generator for one or more targets. ``name``: the backend; ``targets``: the
    values of ``target=`` it serves; ``emit_source(graph, what, target)``: the text of a
    module for the optimised ``graph`` (``what`` names it in its header)."""

    name = None
    targets = ()

    def emit_source(self, graph, what, target):
        raise NotImplementedError


class RuleTable(dict):
    """One lowering table of a backend: rules keyed by ``Primitive`` object.

    ``register(*prims)`` is a decorator filing the rule under each of ``prims`` (a second rule
    for a primitive is an error: one table, one rule); ``lookup(prim)`` is one dict access and
    raises a ``GradjitError`` naming the primitive, the table and the backend where there is
    no rule. A table may also be read with ``get`` where a missing rule is not an error."""

    def __init__(self, backend, name, what):
        super().__init__()
        self.backend = backend  # for messages: "CPU"
        self.name = name  # the table's name in its module
        self.what = what  # what its rules lower, for messages

    def register(self, *prims):
        def deco(rule):
            for p in prims:
                if p in self:
                    raise GradjitError(f"two {self.backend} rules for primitive '{p.name}' "
                                       f"in {self.name}")
                self[p] = rule
            return rule
        return deco

    def lookup(self, prim):
        rule = self.get(prim)
        if rule is None:
            raise GradjitError(f"no {self.backend} lowering for primitive '{prim.name}' in "
                               f"{self.name} ({self.what})")
        return rule


def of_kind(*kinds):
    """The primitives of these kinds, to register one rule for a whole family (every
    elementwise primitive, every reduction): its members differ only in their templates."""
    return [p for p in P.ALL.values() if p.kind in kinds]


# target -> the module that defines its backend as ``BACKEND``
_MODULES = {"cpu": "cpu", "parallel": "cpu", "cuda": "cuda"}


def backend_for(target):
    """The backend serving ``target`` (its module imported at first use)."""
    name = _MODULES.get(target)
    if name is None:
        raise GradjitError(f"no backend for target {target!r}")
    mod = importlib.import_module(f"{__package__}.{name}")
    return mod.BACKEND
