"""Graph -> Graph passes. Each is a small function over the IR.

Constant folding and the algebraic identities (x*1, x+0, x*0, --x) are applied as equations
are built (``simplify`` re-applies them by replaying a graph through the op functions); CSE
and DCE are plain walks.
"""

from __future__ import annotations

from . import ad
from . import primitives as P
from .ir import Graph, Lit, Var, subgraphs
from .tracing import Builder, Tracer, building, location, make_graph


def simplify(graph):
    """Rebuild ``graph`` through ``bind``: folds constants and applies construction rewrites."""
    with building(Builder()) as b:
        # the same input variables: their size variables stay bound
        ins = [Tracer(v) for v in graph.inputs]
        outs, _ = ad.replay(graph, ins)
        return make_graph(ins, outs, b).replace(meta=graph.meta)


def specialize(graph, sizes):
    """``graph`` with the input size variables in ``sizes`` (Var -> int) made static, folded
    and optimised (the body of a kernel version guarded by those sizes)."""
    from .ir import Aval
    ins = []
    for v in graph.inputs:
        shape = tuple(sizes.get(d, d) if isinstance(d, Var) else d for d in v.aval.shape)
        ins.append(Var(Aval(v.aval.dtype, shape, v.aval.weak)) if shape != v.aval.shape else v)
    with building(Builder()) as b:
        ts = [Tracer(v) for v in ins]
        outs, _ = ad.replay(graph, ts)
        g = make_graph(ts, outs, b).replace(meta=graph.meta)
    return _int_dims(optimize(g), {})


def _int_dims(graph, subst):
    """Sizes that replay turned into literals become plain ints in avals (as if traced static)."""
    from .ir import Aval

    def fix(a):
        if not isinstance(a, Var):
            return a
        if a not in subst:
            shape = tuple(d.value if isinstance(d, Lit) else d for d in a.aval.shape)
            subst[a] = Var(Aval(a.aval.dtype, shape, a.aval.weak)) if shape != a.aval.shape else a
        return subst[a]

    eqns = []
    for e in graph.eqns:
        e = map_subgraphs(e, lambda g: _int_dims(g, subst)) if subgraphs(e) else e
        eqns.append(e.replace(inputs=tuple(fix(a) for a in e.inputs),
                              outputs=tuple(fix(v) for v in e.outputs)))
    return graph.replace(inputs=tuple(fix(v) for v in graph.inputs), eqns=tuple(eqns),
                         outputs=tuple(fix(a) for a in graph.outputs))


def _key(a):
    return ("lit", type(a.value).__name__, a.value, a.aval) if isinstance(a, Lit) else id(a)


def cse(graph):
    """Common-subexpression elimination over pure equations."""
    seen, subst, eqns = {}, {}, []

    def sub(a):
        return subst.get(a, a) if isinstance(a, Var) else a

    for e in graph.eqns:
        ins = tuple(sub(a) for a in e.inputs)
        e = e.replace(inputs=ins) if ins != e.inputs else e
        if subgraphs(e):  # control flow: CSE inside each region, never across its boundary
            eqns.append(map_subgraphs(e, cse))
            continue
        if e.prim.kind == "check":  # the same run-time check once, with its first message
            k = ("check", e.prim.name, frozenset(_key(a) for a in ins)
                 if e.prim.name == "check_eq" else tuple(_key(a) for a in ins))
            if k not in seen:
                seen[k] = ()
                eqns.append(e)
            continue
        if e.prim.effect or not e.prim.cse:  # tapes: each one distinct
            eqns.append(e)
            continue
        k = (e.prim, tuple(_key(a) for a in ins), e.params,
             tuple(tuple(_key(d) if isinstance(d, Var) else d for d in v.aval.shape) for v in e.outputs))
        try:
            hash(k)
        except TypeError:
            eqns.append(e)
            continue
        if k in seen:
            for old, new in zip(e.outputs, seen[k]):
                subst[old] = new
            continue
        seen[k] = e.outputs
        eqns.append(e)
    return graph.replace(eqns=tuple(_rename_dims(eqns, subst)), outputs=tuple(sub(a) for a in graph.outputs))


def _rename_dims(eqns, subst):
    """Size variables that CSE merged must also be merged inside avals."""
    if not subst:
        return eqns
    from .ir import Aval

    def fix_var(v):
        shape = tuple(subst.get(d, d) if isinstance(d, Var) else d for d in v.aval.shape)
        if shape == v.aval.shape:
            return v
        nv = Var(Aval(v.aval.dtype, shape, v.aval.weak))
        subst[v] = nv
        return nv

    out = []
    for e in eqns:
        ins = tuple(subst.get(a, a) if isinstance(a, Var) else a for a in e.inputs)
        if subgraphs(e) and ins != e.inputs:  # regions take their sizes from their operands
            e = _rebind(e, ins)
            ins = e.inputs
        outs = tuple(fix_var(v) for v in e.outputs)
        out.append(e.replace(inputs=ins, outputs=outs))
    return out


def map_subgraphs(e, fn):
    """``e`` with ``fn`` applied to each region it holds."""
    def f(v):
        if isinstance(v, Graph):
            return fn(v)
        if isinstance(v, tuple) and any(isinstance(g, Graph) for g in v):
            return tuple(fn(g) if isinstance(g, Graph) else g for g in v)
        return v
    return e.replace(params=tuple((k, f(v)) for k, v in e.params))


def _rebind(e, ins):
    """Re-emit a region equation on new operands (its regions rebuilt on their sizes)."""
    with building(Builder()) as b:
        args = [Tracer(a) if isinstance(a, Var) else a.value for a in ins]
        e.prim.bind_eqn(e, args)
    new = [x for x in b.eqns if x.prim is e.prim]
    if len(b.eqns) != 1 or len(new) != 1:
        return e  # folded into something else: leave the equation as it was
    return e.replace(params=new[0].params, inputs=new[0].inputs)


def dce(graph):
    """Drop equations whose results are not used (effects such as run-time checks stay)."""
    live = {a for a in graph.outputs if isinstance(a, Var)}
    kept = []
    for e in reversed(graph.eqns):
        rule = e.prim.dce_rule  # control flow: prune outputs and regions
        if rule is not None:
            e = rule(e, [v in live for v in e.outputs])
            if e is None:
                continue
        if e.prim.effect or any(v in live for v in e.outputs):
            kept.append(e)
            for a in e.inputs:
                if isinstance(a, Var):
                    live.add(a)
                    live.update(d for d in a.aval.shape if isinstance(d, Var))
            for v in e.outputs:
                live.update(d for d in v.aval.shape if isinstance(d, Var))
    return graph.replace(eqns=tuple(reversed(kept)))


def expand(graph):
    """``graph`` with each equation that stands for a graph until lowering
    (``Primitive.expand``: custom_vjp) replaced by that graph's equations, in regions too."""
    if not _expands(graph):
        return graph
    with building(Builder()) as b:
        ins = [Tracer(v) for v in graph.inputs]
        env = {}
        ad.bind_input_dims(graph, ins, env)
        for e in graph.eqns:
            args = [a.value if isinstance(a, Lit) else env[a] for a in e.inputs]
            with location(e.loc):
                if e.prim.expand is not None:
                    g = expand(e.prim.expand(e))
                    outs, _ = ad.replay(g, args[:len(g.inputs)])
                elif e.prim.bind_eqn is not None and any(_expands(g) for g in subgraphs(e)):
                    outs = e.prim.bind_eqn(map_subgraphs(e, expand), args)
                else:
                    outs = _bind(e, args)
            if not (e.prim.multiple_results or e.prim.expand is not None):
                outs = (outs,) if e.outputs else ()
            for v, o in zip(e.outputs, outs):
                env[v] = o
        return make_graph(ins, [a.value if isinstance(a, Lit) else env[a]
                                for a in graph.outputs], b).replace(meta=graph.meta)


def _bind(e, args):
    return e.prim.bind_eqn(e, args) if e.prim.bind_eqn is not None else \
        P.bind(e.prim, *args, **e.p)


def _expands(graph):
    return any(e.prim.expand is not None or any(_expands(g) for g in subgraphs(e))
               for e in graph.eqns)


def optimize(graph):
    graph = expand(graph)
    g = dce(cse(simplify(graph)))
    return dce(cse(g))
