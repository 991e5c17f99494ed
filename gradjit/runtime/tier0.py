"""Tier 0: the optimised, differentiated IR (the graph the kernel is generated from) evaluated
with numpy, so that a new function answers its first calls while numba compiles elsewhere.

A ``Plan`` is built once per entry: the graph becomes one generated Python function of
straight-line numpy calls (each equation one call of its primitive's ``impl`` on whole arrays,
its result given the IR's dtype), with the implicit sizes read from the inputs' shapes. Loops,
branches and their regions are plans of their own, run by the loop drivers below, which charge
a ``Budget``: a call whose loops would run too long raises ``TooCostly`` before (or soon after)
starting them, and the caller waits for the kernel instead (runtime/tiered.py).

The semantics are the reference evaluator's (compiler/reference.py, control.py's
``eval_rule``s), without its per-equation dictionary and checks.
"""

from __future__ import annotations

import time

import numpy as np

from ..compiler.ir import Graph, Lit, Var
from ..errors import GradjitError, IndexOutOfBounds, ShapeError


class TooCostly(Exception):
    """A tier-0 call would take too long (its loops exceed the budget): use the kernel."""


class Unsupported(GradjitError):
    """The graph holds something tier 0 cannot evaluate (then the kernel answers every call)."""


# One tier-0 call may evaluate this many equations inside loops (about 2-10 us each) and
# spend this long in them; beyond, the kernel is the faster answer even counting its compile.
UNITS = 20_000
SECONDS = 0.25


class Budget:
    __slots__ = ("units", "deadline")

    def __init__(self, units=UNITS, seconds=SECONDS):
        self.units = units
        self.deadline = time.perf_counter() + seconds

    def charge(self, n):
        self.units -= n
        if self.units < 0 or time.perf_counter() > self.deadline:
            raise TooCostly


def units(graph):
    """Equations a call evaluates, loops counted with their trip count where it is a literal
    (once where it is known only at run time: the budget catches those as they start)."""
    n = 0
    for e in graph.eqns:
        name = e.prim.name
        p = e.p
        if name == "for":
            trips = 1
            if all(isinstance(a, Lit) for a in e.inputs[:3]):
                trips = len(range(*(int(a.value) for a in e.inputs[:3])))
            n += 1 + trips * units(p["body"])
        elif name == "while":
            n += 1 + units(p["cond"]) + units(p["body"])
        elif name == "cond":
            n += 1 + max(units(g) for g in p["branches"])
        else:
            n += 1
    return n


def _check_index(i, n, msg):
    i, n = int(i), int(n)
    if not -n <= i < n:
        raise IndexOutOfBounds(msg)


def _check_eq(a, b, msg):
    if int(a) != int(b):
        raise ShapeError(msg)


def _fix(x, dtype):
    """A result in the IR's dtype (numpy may promote differently from the shape rule)."""
    x = np.asarray(x)
    return x if x.dtype == dtype else x.astype(dtype)


class Plan:
    """A graph compiled into one Python function ``run(budget, *inputs) -> tuple``."""

    def __init__(self, graph):
        self.graph = graph
        self.units = units(graph)
        self.run = _generate(graph)

    def __call__(self, budget, *args):
        return self.run(budget, *args)


def _for(body, n_consts):
    run, size = body.run, max(body.units, 1)
    clock = time.perf_counter

    def loop(B, start, stop, step, *rest):
        consts, carried = rest[:n_consts], rest[n_consts:]
        r = range(int(start), int(stop), int(step))
        B.charge(len(r) * size)
        deadline = B.deadline
        for i in r:
            carried = run(B, np.int64(i), *consts, *carried)
            if clock() > deadline:
                raise TooCostly
        return tuple(carried)
    return loop


def _while(cond, body, n_consts):
    test, run = cond.run, body.run
    size = max(cond.units + body.units, 1)

    def loop(B, *rest):
        consts, carried = rest[:n_consts], rest[n_consts:]
        while test(B, *consts, *carried)[0]:
            carried = run(B, *consts, *carried)
            B.charge(size)
        return tuple(carried)
    return loop


def _cond(branches):
    runs = [b.run for b in branches]
    yes, no = runs[0], runs[1]

    def branch(B, pred, *ops):
        return (yes if pred else no)(B, *ops)
    return branch


def _rule(e):
    """The callable that evaluates ``e`` (budget first for structured equations)."""
    prim, p = e.prim, e.p
    if prim.name == "for":
        return _for(Plan(p["body"]), p["n_consts"]), True
    if prim.name == "while":
        return _while(Plan(p["cond"]), Plan(p["body"]), p["n_consts"]), True
    if prim.name == "cond":
        return _cond([Plan(g) for g in p["branches"]]), True
    rule = prim.eval_rule or prim.impl
    if rule is None:
        raise Unsupported(f"tier 0: primitive '{prim.name}' has no numpy implementation")
    if p:
        params = dict(p)
        return (lambda *a: rule(*a, **params)), False
    return rule, False


def _is_array(aval):
    try:
        np.dtype(aval.dtype)
    except TypeError:
        return False
    return True


def _reusable(e, fresh, last, j):
    """An input of ``e`` whose buffer its result may take (``out=``): a dead array of the
    result's shape and dtype that this run allocated. Also notes ``e``'s result as fresh."""
    rule = e.prim.impl
    if not isinstance(rule, np.ufunc) or e.params or e.prim.eval_rule is not None or \
            len(e.outputs) != 1 or e.outputs[0].aval.ndim == 0:
        return None
    out = e.outputs[0].aval
    fresh.add(e.outputs[0])
    if e.prim.kind != "elementwise":
        return None
    for a in e.inputs:
        if a in fresh and last.get(a) == j and a.aval.shape == out.shape and \
                a.aval.dtype == out.dtype:
            return a
    return None


def _generate(graph: Graph):
    """The source of ``run`` for ``graph``: one line per equation, names ``v<n>`` per Var."""
    ns = {"_check_index": _check_index, "_check_eq": _check_eq, "_fix": _fix,
          "tuple": tuple}
    names = {}

    def name(v):
        if isinstance(v, Lit):
            k = f"L{len(ns)}"
            ns[k] = v.value
            return k
        n = names.get(v)
        if n is None:
            n = names[v] = f"v{len(names)}"
        return n

    params = [name(v) for v in graph.inputs]
    lines = [f"def run(B{''.join(', ' + p for p in params)}):"]
    last = {}  # Var -> index of the last equation reading it (outputs: never dead)
    for j, e in enumerate(graph.eqns):
        for a in e.inputs:
            last[a] = j
    for a in graph.outputs:
        last[a] = len(graph.eqns)
    fresh = set()  # arrays this run allocated (no views): dead ones are reused as outputs
    for d, (k, ax) in graph.input_dims().items():
        lines.append(f"    {name(d)} = {params[k]}.shape[{ax}]")
    for j, e in enumerate(graph.eqns):
        ins = [name(a) for a in e.inputs]
        if e.prim.name == "check_index" or e.prim.name == "check_eq" or e.prim.kind == "check":
            ns[f"M{j}"] = e.p.get("msg", "sizes differ")
            fn = "_check_index" if e.prim.name == "check_index" else "_check_eq"
            lines.append(f"    {fn}({', '.join(ins)}, M{j})")
            continue
        ns[f"F{j}"], budgeted = _rule(e)
        args = ", ".join((["B"] if budgeted else []) + ins)
        into = _reusable(e, fresh, last, j)
        if into is not None:  # a run of elementwise operations writes into one buffer
            args += f", out={name(into)}"
        outs = [name(v) for v in e.outputs]
        if not outs:
            lines.append(f"    F{j}({args})")
        elif e.prim.multiple_results:
            lines.append(f"    {', '.join(outs)}, = F{j}({args})")
        else:
            lines.append(f"    {outs[0]} = F{j}({args})")
        for v, o in zip(e.outputs, outs):
            if not _is_array(v.aval):  # a tape: an opaque Python value
                continue
            dt = np.dtype(v.aval.dtype)
            if v.aval.ndim == 0:  # numpy scalars, as the reference evaluator gives
                ns[f"T{o}"] = dt.type
                lines.append(f"    {o} = T{o}({o})")
            else:
                ns[f"D{o}"] = dt
                lines.append(f"    if {o}.dtype is not D{o}: {o} = _fix({o}, D{o})")
    outs = [name(a) for a in graph.outputs]
    lines.append(f"    return ({''.join(o + ', ' for o in outs)})")
    exec(compile("\n".join(lines), f"<gradjit tier 0: {len(graph.eqns)} equations>", "exec"), ns)
    return ns["run"]
