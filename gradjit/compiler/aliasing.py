"""Which traced arrays the front end holds may be one numpy array on some runs only.

Arrays are values in the IR; the front end follows numpy's aliasing by binding names to
objects (``Tracer``): `b = a` binds both names to one object, and a write through either
(`a[0] = 7`) rebinds every name of that object to the updated value. A loop or an ``if``
whose test is known only at run time makes new objects for the names it rebinds, but numpy
may hand an array back through it unchanged: after `b = a` and a loop that rebinds `b`, `b`
is `a` itself when the loop runs no times, a new array otherwise. A later write into one of
them is seen through the other on some runs only, which no value of the IR can follow: the
front end makes the other name unusable (a TraceError where it is read, as for other names of
an array written in a loop), using ``Aliases``.

``Aliases.loop`` and ``Aliases.branch`` note each such construct's new objects with the
older objects they may be (a loop's from its equation: ``control.passes_through``, with its
initial values taken as the very objects it started from; an if's from what its branches
bound), and which of them may be one another (``control._region_pairs``: `u, v = v, u` in a
loop swaps two arrays, never makes them one). ``Aliases.shared`` says whether two objects
may be one array, and through which construct. Copies (``a.copy()``) are new objects holding
the same IR value: objects, not values, are compared.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import control as C
from .ir import Graph, Var
from .tracing import Tracer


@dataclass(eq=False)
class Construct:
    """A loop or if with a dynamic test, as far as aliasing goes."""

    seq: int
    kind: str  # "loop" or "if"
    where: str  # its file:line
    outs: list  # the new objects it made (Tracers)
    be: list  # per object of ``outs``: the older objects it may be (or be a view of)
    pairs: set = field(default_factory=set)  # frozensets of positions in ``outs``: may be one

    def reason(self):
        if self.kind == "loop":
            return (f"the loop at {self.where} can hand back an array it was given, unchanged: "
                    "its initial value when it runs no times")
        return f"one branch of the if at {self.where} keeps the array it was handed"


def _flatten(x):
    if isinstance(x, (tuple, list)):
        return [y for v in x for y in _flatten(v)]
    return [x]


def _arrays(values):
    out, seen = [], set()
    for v in _flatten(list(values)):
        if isinstance(v, Tracer) and v.ndim and id(v) not in seen:
            seen.add(id(v))
            out.append(v)
    return out


class Aliases:
    """The constructs an interpreter traced, and which of their objects may be which.
    ``producer(var)``: the equation that made ``var`` in any graph being built, or None."""

    def __init__(self, producer):
        self.producer = producer
        self.made = {}  # id(object) -> (object, Construct, position in its outs)
        self.by_var = {}  # Var of such an object -> the object
        self.count = 0

    def _add(self, kind, where, outs, be, pairs):
        self.count += 1
        c = Construct(self.count, kind, where, outs, be, pairs)
        for k, o in enumerate(outs):
            self.made[id(o)] = (o, c, k)
            self.by_var.setdefault(o.ivar, o)

    def loop(self, eqns, inits, outs, entries, where):
        """A loop emitted ``eqns`` (appended to the graph being built); it started from the
        objects ``inits`` and left ``outs`` (position by position); ``entries``: the objects
        bound before it (those its body may hand on)."""
        made = {v for e in eqns for v in e.outputs}
        new = [o for o in _arrays(outs) if o.ivar in made and id(o) not in self.made]
        if not new:
            return
        by_var = {}
        for t in _arrays(entries):
            by_var.setdefault(t.ivar, []).append(t)
        e = self.producer(new[0].ivar)
        if e is not None and e.prim in (C.for_p, C.while_p) and \
                all(self.producer(o.ivar) is e for o in new):
            # the loop's own operands: its initial values are the objects ``inits`` exactly
            lp = C.loop_parts(e.prim, e.inputs, e.params)
            first = len(lp.rng) + len(lp.consts)
            slot = {o.ivar: k for k, o in enumerate(outs) if isinstance(o, Tracer)}

            def objs(j):
                if j >= first:
                    k = slot.get(e.outputs[j - first])
                    t = inits[k] if k is not None else None
                    if isinstance(t, Tracer) and t.ivar is e.inputs[j]:
                        return [t]
                return by_var.get(e.inputs[j], []) if isinstance(e.inputs[j], Var) else []
            passes, pos = C.passes_through(e), list(e.outputs)
            arrays = [j for j, a in enumerate(e.inputs) if C._is_buffer(a)]
            ops = {frozenset((i, j)) for i in arrays for j in arrays if i < j and any(
                self.shared(x, y) for x in objs(i) for y in objs(j))}
            pairs = C._region_pairs(e, ops)
            at = [pos.index(o.ivar) for o in new]
            be = [[t for j in sorted(passes[k]) for t in objs(j)] for k in at]
            self._add("loop", where, new, be, {frozenset((a, b)) for a in range(len(at))
                                              for b in range(a + 1, len(at))
                                              if frozenset((at[a], at[b])) in pairs})
            return
        # several equations (iterations run before the loop): their graph, whose inputs are
        # the values they read (an object per such value, or all objects that hold it)
        free, seen = [], set()
        for q in eqns:
            for a in q.inputs:
                if isinstance(a, Var) and a not in made and a not in seen:
                    seen.add(a)
                    free.append(a)
        held = [k for k, a in enumerate(free) if a in by_var]
        rel = {frozenset((i, j)) for i in held for j in held if i < j and any(
            self.shared(x, y) for x in by_var[free[i]] for y in by_var[free[j]])}
        pairs, shared = C._graph_sharing(Graph(tuple(free), tuple(eqns),
                                               tuple(o.ivar for o in new)), rel)
        be = [[t for j in sorted(js) for t in by_var.get(free[j], ())] for js in shared]
        self._add("loop", where, new, be, pairs)

    def branch(self, arms, after, entries, where):
        """An if left the names' values ``after`` ({name: value}); ``arms``: the names' values
        at the end of each branch; ``entries``: the objects bound before it."""
        old = {id(t) for t in _arrays(entries)}
        outs, vals = [], []
        for n, v in after.items():
            if not all(n in a for a in arms):
                continue
            leaves = _flatten(v)
            per = [_flatten(a[n]) for a in arms]
            if any(len(p) != len(leaves) for p in per):
                continue
            for k, o in enumerate(leaves):
                if isinstance(o, Tracer) and o.ndim and id(o) not in self.made \
                        and id(o) not in old and all(p[k] is not o for p in per):
                    outs.append(o)
                    vals.append([p[k] for p in per])
        if not outs:
            return
        by_var = {}
        for t in _arrays(entries):
            by_var.setdefault(t.ivar, []).append(t)

        def resolve(a, depth=0):  # the objects from before the if that ``a`` may be
            if not isinstance(a, Tracer) or not a.ndim or depth > 50:
                return []
            if id(a) in old:
                return [a]
            m = self.made.get(id(a))
            if m is not None:
                return [t for x in m[1].be[m[2]] for t in resolve(x, depth + 1)]
            b = self._base(a)
            if b is not a:
                return resolve(b, depth + 1)
            x = a.ivar
            while True:  # a view of a value held before the if
                e = self.producer(x)
                if e is None or e.prim not in C._VIEW_PRIMS or not isinstance(e.inputs[0], Var):
                    return []
                x = e.inputs[0]
                if x in by_var:
                    return list(by_var[x])
        be = [[t for a in vs for t in resolve(a)] for vs in vals]
        pairs = set()
        for i in range(len(outs)):
            for j in range(i + 1, len(outs)):
                for a, b in zip(vals[i], vals[j]):
                    if a is b or self.shared(a, b) or any(
                            self.shared(x, y) for x in resolve(a) for y in resolve(b)):
                        pairs.add(frozenset((i, j)))
                        break
        self._add("if", where, outs, be, pairs)

    def _base(self, t):
        """``t``, or the object of a construct ``t`` is a view of."""
        if id(t) in self.made:
            return t
        x = t.ivar
        while True:
            e = self.producer(x)
            if e is None or e.prim not in C._VIEW_PRIMS or not isinstance(e.inputs[0], Var):
                break
            x = e.inputs[0]
        return self.by_var.get(x, t)

    def _view_of(self, v, obj):
        """``v`` is (a view of ...) a view of ``obj``'s value."""
        x = v.ivar
        while True:
            e = self.producer(x)
            if e is None or e.prim not in C._VIEW_PRIMS or not isinstance(e.inputs[0], Var):
                return False
            x = e.inputs[0]
            if x is obj.ivar:
                return True

    def shared(self, v, w, _memo=None):
        """Whether objects ``v`` and ``w`` may be one array (or views of one) on some run:
        the construct it goes through (True without one: views of one value), else None."""
        if not (isinstance(v, Tracer) and isinstance(w, Tracer) and v.ndim and w.ndim):
            return None
        memo = {} if _memo is None else _memo
        v, w = self._base(v), self._base(w)
        if v is w:
            return True
        key = frozenset((id(v), id(w)))
        if key in memo:
            return memo[key]
        memo[key] = None  # (no cycles: each step goes to an older construct)
        mv, mw = self.made.get(id(v)), self.made.get(id(w))
        if mv is None and mw is None:
            res = True if self._view_of(v, w) or self._view_of(w, v) else None
        elif mv is not None and mw is not None and mv[1] is mw[1]:  # two results of one
            res = mv[1] if frozenset((mv[2], mw[2])) in mv[1].pairs else None
        else:  # the later one may be the other only by having been handed it
            if mw is not None and (mv is None or mw[1].seq > mv[1].seq):
                v, w, mv = w, v, mw
            _, c, k = mv
            res = next((c for x in c.be[k] if self.shared(x, w, memo)), None)
        memo[key] = res
        return res


def _why(c):
    return c.reason() if isinstance(c, Construct) else "one is a view of the other"


def after_write(c, other, name, where):
    """Why ``other`` is unusable: it may be the array ``name``, written into at ``where``."""
    return (f"may be the same array as '{name}' ({_why(c)}), and '{name}' was written into at "
            f"{where}: numpy shows that write through '{other}' on some runs only; make one "
            f"of them a copy (.copy()) before the {c.kind if isinstance(c, Construct) else 'write'}"
            " so that they are two arrays")


def in_loop(c, other, name, where):
    """Why ``other`` is unusable: it may be the array ``name``, written into in a loop."""
    return (f"may be the same array as '{name}' ({_why(c)}), which is written into in the loop "
            f"at {where}: numpy shows those writes through '{other}' on some runs only; use "
            f"'{name}', or make one of them a copy (.copy())")


def input_write(c, name, fn):
    """The error for a write into ``name``, which may be an input of ``fn``."""
    return (f"'{name}' may be an input of {fn} ({_why(c)}) and functions must not mutate their "
            f"inputs; write into a copy ({name} = {name}.copy())")
