"""Fusion: group a flat graph's equations into loop nests (backend-neutral).

Elementwise equations over the same iteration shape, the reductions of such values and
gathers/scatters indexed by them form one ``Loop``: one pass over the data with scalar
temporaries. Values computed in a loop are stored to arrays only if something outside the
loop (or the graph's outputs) needs them. A reduction's result is complete only after its
loop, so its users start a new loop. Everything else (matmul, reshape, concatenation, ...) is
a ``Stmt`` of its own; rank-0 arithmetic is a scalar ``Stmt``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..ir import Var
from ..primitives import broadcast_shapes

LOOP_KINDS = ("elementwise", "reduce", "index", "iota", "scatter")


class Dims:
    """Union-find over size variables that run-time checks proved equal."""

    def __init__(self, graph):
        self.parent = {}
        for e in graph.eqns:
            if e.prim.name == "check_eq":
                a, b = e.inputs
                if isinstance(a, Var) and isinstance(b, Var):
                    ra, rb = self.find(a), self.find(b)
                    if ra is not rb:
                        self.parent[ra] = rb

    def find(self, d):
        while isinstance(d, Var) and d in self.parent:
            d = self.parent[d]
        return d

    def shape(self, s):
        return tuple(self.find(d) if isinstance(d, Var) else d for d in s)


@dataclass
class Loop:
    shape: tuple
    eqns: list = field(default_factory=list)
    produced: set = field(default_factory=set)  # values usable inside the loop body
    pending: set = field(default_factory=set)  # reductions/scatters: complete after the loop


@dataclass
class Stmt:
    eqn: object


def iteration_shape(e):
    if e.prim.kind in ("reduce",):
        return e.inputs[0].aval.shape
    if e.prim.kind == "scatter":  # the index arrays' shape, then the trailing axes of acc
        acc, idx = e.inputs[0], e.inputs[2:]
        return broadcast_shapes(*[i.aval.shape for i in idx]) + acc.aval.shape[len(idx):]
    return e.outputs[0].aval.shape


def schedule(graph):
    """A list of ``Loop`` and ``Stmt`` in an order that respects dependences."""
    dims = Dims(graph)
    items = []

    def deps_ok(e, loop):
        return not any(isinstance(a, Var) and a in loop.pending for a in e.inputs)

    def blocked_after(e, idx):
        # ``e`` may join loop ``idx`` only if no item after it produces one of e's inputs
        ins = {a for a in e.inputs if isinstance(a, Var)}
        ins |= {d for a in e.inputs for d in a.aval.shape if isinstance(d, Var)}
        for it in items[idx + 1:]:
            outs = it.produced | it.pending if isinstance(it, Loop) else set(it.eqn.outputs)
            if ins & outs:
                return True
        return False

    for e in graph.eqns:
        if e.prim.kind in LOOP_KINDS and e.outputs and (
                iteration_shape(e) != () or e.prim.kind == "reduce"):
            shape = dims.shape(iteration_shape(e))
            target = None
            for idx in range(len(items) - 1, -1, -1):
                it = items[idx]
                if isinstance(it, Loop) and it.shape == shape and deps_ok(e, it) \
                        and not blocked_after(e, idx):
                    target = it
                    break
                if isinstance(it, Loop) and it.shape == shape:
                    break  # do not reach across a loop of the same shape we could not join
            if target is None:
                target = Loop(shape)
                items.append(target)
            target.eqns.append(e)
            if e.prim.kind in ("reduce", "scatter"):
                target.pending.update(e.outputs)
            else:
                target.produced.update(e.outputs)
        elif e.prim.kind == "check":
            items.insert(_earliest(items, e, graph), Stmt(e))
        else:
            items.append(Stmt(e))
    return items, dims


def _earliest(items, e, graph):
    """Run-time size checks go as early as their operands allow: before any loop that reads
    arrays whose sizes they vouch for (loops may have absorbed later equations)."""
    need = {a for a in e.inputs if isinstance(a, Var)} - set(graph.input_dims())
    pos = len(items)
    while pos > 0:
        it = items[pos - 1]
        outs = it.produced | it.pending if isinstance(it, Loop) else set(it.eqn.outputs)
        if outs & need:
            break
        pos -= 1
    while pos < len(items) and isinstance(items[pos], Stmt) and items[pos].eqn.prim.kind == "check":
        pos += 1  # keep checks in program order
    return pos
