"""Structured control flow: ``cond_p``, ``for_p``, ``while_p``, and the tape primitives that let
reverse mode run a loop backwards.

A region primitive holds its regions as closed sub-``Graph``s in its params. What a region
reads from outside is an explicit operand, and the region's inputs are its formals:

- ``cond  pred, *ops            branches=(then, else)``  each branch: ops -> outs
- ``for   start, stop, step, *consts, *inits   body, n_consts``  body: (i, *consts, *carried) -> carried
- ``while *consts, *inits       cond, body, n_consts``  cond: (*consts, *carried) -> (bool,),
  body: (*consts, *carried) -> carried; both regions share one list of formals.

The avals of a region's inputs name the same size variables as its operands, so sizes are
shared with the enclosing graph, never re-bound; a region's outputs may not have sizes it
computes itself.

Each primitive's stanza holds its shape rule, ``bind_eqn`` (rebuild the regions on new operands:
how replay, ``simplify`` and every transform re-emit it, folding constants into the regions),
``dce_rule`` (drop unused outputs, carried values and operands), ``eval_rule`` (the reference
semantics) and its reverse mode. ``cond`` needs nothing saved: its adjoint branches on the same
predicate and differentiates each branch. The loops use ``vjp_fwd``, the forward loop extended
to push, at every iteration, the carried values that the body's adjoint reads onto a tape
(values recomputable from the consts, such as ``x[i]`` of an argument, are recomputed, and a
``for`` loop's index is recomputed from its range), and ``vjp_bwd``, a ``for`` loop running
backwards that pops them and applies the body's adjoint. The adjoint of a loop is a loop in the
IR, so it can be optimised, lowered and differentiated again: a tape's cotangent is a tape (see
the tape primitives), and a backward loop's own adjoint rewinds the tape it popped to the count
saved at each iteration instead of saving the tape (``_Rewind``).

``cond``, ``fori`` and ``while_loop`` build these equations from Python functions traced in
closure style: whatever outer value a function reads becomes an operand of its region. Loops
trace their body until the carried values' dtypes and shapes settle.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import GradjitError, ShapeError, TraceError, at
from . import ad, passes
from . import primitives as P
from .ir import Aval, Graph, Lit, Var, make_params, subgraphs
from .tracing import (Builder, Tracer, atom, aval_of, bind, building, current_loc,
                      is_static_scalar, location)

# =============================================================================================
# Regions
# =============================================================================================


class Region:
    """One region being traced: its formals, its own builder, and (once closed) the outer values
    it reads."""

    def __init__(self, formals=()):
        self.formals = list(formals)
        self.builder = Builder()
        self.builder.loc = current_loc()

    def trace(self, fn, *args):
        with building(self.builder):
            return fn(*args)

    def defined(self):
        d = set(self.formals)
        for e in self.builder.eqns:
            d.update(e.outputs)
        return d

    def free(self, outs):
        """Outer Vars the region reads, in order of first use."""
        defined = self.defined()
        seen = {}
        for e in self.builder.eqns:
            for a in e.inputs:
                if isinstance(a, Var) and a not in defined:
                    seen[a] = None
        for a in outs:
            if isinstance(a, Var) and a not in defined:
                seen[a] = None
        return list(seen)

    def graph(self, inputs, outs):
        return Graph(tuple(inputs), tuple(self.builder.eqns), tuple(outs))


def _union(*lists):
    seen = {}
    for lst in lists:
        for v in lst:
            seen[v] = None
    return list(seen)


def used_inputs(graph):
    """Inputs of ``graph`` that its equations or outputs read, as values or as sizes."""
    used = set()
    for a in [a for e in graph.eqns for a in e.inputs + e.outputs] + list(graph.outputs):
        if isinstance(a, Var):
            used.add(a)
            used.update(d for d in a.aval.shape if isinstance(d, Var))
    for v in graph.inputs:
        if v in used:
            used.update(d for d in v.aval.shape if isinstance(d, Var))
    # an input whose size is read is kept too: sizes are bound by the inputs' shapes
    return {v for v in graph.inputs
            if v in used or any(isinstance(d, Var) and d in used for d in v.aval.shape)}


def _check_outer_dims(region, aval, what):
    inner = region.defined()
    if any(isinstance(d, Var) and d in inner for d in aval.shape):
        raise TraceError(at(current_loc(), f"{what} has a size computed inside the "
                            f"{'loop' if region.formals else 'branch'}; such sizes must be "
                            "known before it"))


def make_formals(olds, args, fixed=()):
    """Fresh formals for a region whose old inputs are ``olds`` (Vars), called on ``args``: a
    static value is folded in (constant propagation) unless its position is in ``fixed``; the
    other positions get a formal shaped like their argument (``None``: a formal with the old
    aval and no operand, the loop index). A size that is itself an operand is named by its
    formal inside the region, so a region is closed over its sizes too.
    Returns (formals, their operands, the values to call the old region with, a map from the
    old region's inputs and sizes to the new ones)."""
    dimsub, new = {}, [None] * len(args)
    keep = [a is None or isinstance(a, Tracer) or k in fixed for k, a in enumerate(args)]
    for k, (old, a) in enumerate(zip(olds, args)):
        if keep[k] and k not in fixed and isinstance(a, Tracer) and a.ndim == 0 \
                and not _is_tape(a.aval) and a.dtype.kind in "iu":
            new[k] = dimsub[a.ivar] = Var(Aval(old.aval.dtype, (), old.aval.weak))
    for k, (old, a) in enumerate(zip(olds, args)):
        if keep[k] and new[k] is None:
            shape = old.aval.shape if a is None else _subst_dims(tuple(P.shape_of(a)), dimsub)
            new[k] = Var(Aval(old.aval.dtype, shape, old.aval.weak))
    call = [Tracer(new[k]) if keep[k] else a for k, a in enumerate(args)]
    dmap = {}
    for old, a, c in zip(olds, args, call):
        dmap[old] = c.ivar if isinstance(c, Tracer) else c
        shape = c.aval.shape if isinstance(c, Tracer) else ()
        for d, nd in zip(old.aval.shape, shape):
            if isinstance(d, Var):
                dmap.setdefault(d, nd)
    formals = [v for v, k in zip(new, keep) if k]
    operands = [a for a, k in zip(args, keep) if k]
    return formals, operands, call, dmap


def _subst_dims(shape, sub):
    return tuple(sub.get(d, d) if isinstance(d, Var) else d for d in shape)


def _subst(aval, sub):
    """``aval`` with its sizes mapped through ``sub`` (Vars to Vars, Lits or ints)."""
    shape = tuple(_static(x) for x in _subst_dims(aval.shape, sub))
    return aval if shape == aval.shape else aval.update(shape=shape)


def _static(x):
    return x.value if isinstance(x, Lit) else (x.ivar if isinstance(x, Tracer) else x)


def instantiate(graphs, args, fixed=(), out_avals=None):
    """Rebuild region graphs that share their inputs on the values ``args`` (see
    ``make_formals``); outputs are fitted to ``out_avals[k]`` (avals of the old graph).
    Returns (graphs, formals, the operand of each formal)."""
    formals, operands, call, dmap = make_formals(graphs[0].inputs, args, fixed)
    new = []
    for n, g in enumerate(graphs):
        r = Region(formals)

        def run(g=g, n=n):
            outs, _ = ad.replay(g, call)
            if out_avals is not None and out_avals[n] is not None:
                outs = [fit(o, _subst(av, dmap)) for o, av in zip(outs, out_avals[n])]
            return [atom(o) for o in outs]
        new.append(r.graph(formals, r.trace(run)))
    return new, formals, operands


# =============================================================================================
# Joining values: the aval that holds both sides of a branch, or a loop's values
# =============================================================================================


def _is_leaf_value(x):
    return isinstance(x, Tracer) or is_static_scalar(x) or (
        isinstance(x, np.ndarray) and x.dtype.kind in "biuf")


def value_aval(x):
    if isinstance(x, np.ndarray):
        return Aval(x.dtype.name, x.shape)
    return aval_of(x)


def join(a, b, what):
    """The aval holding values of avals ``a`` and ``b``: numpy promotion (weak only if both are
    weak), a rank-0 value widening to the other's shape."""
    if a == b:
        return a
    dt, weak = P.result_dtype(Var(a), Var(b))
    if a.shape == b.shape:
        shape = a.shape
    elif a.ndim == 0:
        shape = b.shape
    elif b.ndim == 0:
        shape = a.shape
    elif a.ndim == b.ndim and all(x is y or (isinstance(x, Var) and isinstance(y, Var))
                                  or (isinstance(x, Var) != isinstance(y, Var))
                                  for x, y in zip(a.shape, b.shape)):
        shape = tuple(x if isinstance(x, int) else (y if isinstance(y, int) else x)
                      for x, y in zip(a.shape, b.shape))
    else:
        raise ShapeError(at(current_loc(), f"{what} has shape {P.fmt_shape(a.shape)} on one path "
                            f"and {P.fmt_shape(b.shape)} on another; it must keep one shape"))
    return Aval(dt, shape, weak)


def fit(x, aval, what="a value"):
    """``x`` as a value of ``aval``: cast, broadcast a scalar, check sizes known at run time.
    ``None`` stands for zero."""
    if x is None:
        return ad.materialize(None, aval) if _is_tape(aval) else \
            P.zeros(aval.shape, aval.dtype) if aval.shape else P.cast(0, aval.dtype, aval.weak)
    xa = value_aval(x)
    if xa.dtype != aval.dtype or (not isinstance(x, Tracer) and xa.weak != aval.weak):
        x = P.cast(x, aval.dtype, aval.weak)
    if xa.ndim == 0 and aval.ndim:
        return P.broadcast_to(x, aval.shape)
    for d, e in zip(xa.shape, aval.shape):
        if d is e or (isinstance(d, int) and d == e):
            continue
        if isinstance(d, int) and isinstance(e, int):
            raise ShapeError(at(current_loc(), f"{what}: shape {P.fmt_shape(xa.shape)} where "
                                f"{P.fmt_shape(aval.shape)} was expected"))
        P.check_eq(d, e, at(current_loc(), f"{what} changes size at run time "
                            f"({P.fmt_shape(xa.shape)} vs {P.fmt_shape(aval.shape)})"))
    if not _is_tape(aval) and any(isinstance(d, int) != isinstance(e, int)
                                  for d, e in zip(xa.shape, aval.shape)):
        # sizes equal by the checks above, but a size known statically on one side only must
        # be so on the value too: a region's formals and yields are rebuilt from their
        # operands' shapes (an f64[n] carry fitted to f64[2] would otherwise stay f64[n] outside
        # the loop and f64[2] inside, and the kernel's back edge would not match)
        template, dims = P._split_dims(aval.shape)
        x = P.bind(P.broadcast_to_p, x if isinstance(x, Tracer) else P.lift(x), *dims,
                   shape=template)
    return x


def same_static(a, b):
    if a is b:
        return True
    if isinstance(a, Tracer) or isinstance(b, Tracer):
        return False
    if is_static_scalar(a) and is_static_scalar(b) and type(a) is type(b):
        return bool(a == b)
    return False


# =============================================================================================
# cond
# =============================================================================================


def _cond_shape(pred, *ops, branches):
    g = branches[0]
    sub = dict(zip(g.inputs, ops))
    return tuple(_subst(o.aval, sub) for o in g.outputs)


def cond(pred, then_fn, else_fn, merge=None, what="if"):
    """``then_fn()`` if ``pred`` else ``else_fn()`` as one ``cond`` equation. Each function
    returns a list of values (Tracers, static numbers, ``None`` for zero); with ``merge``, each
    returns anything and ``merge(a, b) -> (then list, else list, finish)`` lines them up, and
    ``finish`` turns the joined list into the result. A value static and equal on both sides
    stays static."""
    rt, re_ = Region(), Region()
    a = rt.trace(then_fn)
    b = re_.trace(else_fn)
    ta, tb, finish = (list(a), list(b), None) if merge is None else merge(a, b)
    result = [None] * len(ta)
    slots = []
    for k, (x, y) in enumerate(zip(ta, tb)):
        if x is None and y is None:
            continue
        if x is not None and y is not None and same_static(x, y):
            result[k] = x
            continue
        if isinstance(x, (bool, np.bool_)) and isinstance(y, (bool, np.bool_)):
            result[k] = pred if x else P.logical_not(pred)  # a flag: the predicate itself
            continue
        avs = [value_aval(v) for v in (x, y) if v is not None]
        av = join(avs[0], avs[-1], what if isinstance(what, str) else what(k))
        for r in (rt, re_):
            _check_outer_dims(r, av, f"a value of this {what}" if isinstance(what, str) else what(k))
        slots.append((k, av))

    def fitted(vals):
        return lambda: [atom(fit(vals[k], av, "a value of the branches")) for k, av in slots]
    t_out = rt.trace(fitted(ta))
    e_out = re_.trace(fitted(tb))
    if slots:
        ops = _union(rt.free(t_out), re_.free(e_out))
        branches = (rt.graph(ops, t_out), re_.graph(ops, e_out))
        outs = bind(cond_p, pred, *[Tracer(v) for v in ops], branches=branches)
        for (k, _), o in zip(slots, outs):
            result[k] = o
    return finish(result) if finish else result


def _cond_regions(e, ops, extra=None, post=None):
    """The branches of ``e`` rebuilt on ``ops`` (+ ``extra``, an additional operand whose
    formal ``post(outs, formal)`` may use). Returns (branches, operands)."""
    branches = e.p["branches"]
    inner = {}  # the outputs' sizes as the branches name them
    for x, f in zip(e.inputs[1:], branches[0].inputs):
        if isinstance(x, Var):
            inner.setdefault(x, f)
            for d, fd in zip(x.aval.shape, f.aval.shape):
                if isinstance(d, Var):
                    inner.setdefault(d, fd)
    avals = [_subst(v.aval, inner) for v in e.outputs]
    olds, args = list(branches[0].inputs), list(ops)
    if extra is not None:
        olds.append(Var(extra.aval))
        args.append(extra)
    formals, operands, call, dmap = make_formals(olds, args)
    new = []
    for g in branches:
        r = Region(formals)

        def run(g=g):
            outs, _ = ad.replay(g, call[:len(g.inputs)])
            outs = [fit(o, _subst(av, dmap)) for o, av in zip(outs, avals)]
            if post is not None:
                outs = post(outs, call[-1])
            return [atom(o) for o in outs]
        new.append(r.graph(formals, r.trace(run)))
    return tuple(new), operands


def _cond_bind_eqn(e, args):
    pred, ops = args[0], args[1:]
    if not isinstance(pred, Tracer):
        outs, _ = ad.replay(e.p["branches"][0 if pred else 1], ops)
        return tuple(fit(o, v.aval) for o, v in zip(outs, e.outputs))
    branches, operands = _cond_regions(e, ops)
    return bind(cond_p, pred, *operands, branches=branches)


def _cond_dce(e, used):
    keep = [k for k, u in enumerate(used) if u]
    if not keep:
        return None
    brs = [passes.dce(g.replace(outputs=tuple(g.outputs[k] for k in keep)))
           for g in e.p["branches"]]
    need = set().union(*[used_inputs(g) for g in brs])
    ki = [j for j, f in enumerate(brs[0].inputs) if f in need]
    brs = tuple(g.replace(inputs=tuple(g.inputs[j] for j in ki)) for g in brs)
    return e.replace(inputs=(e.inputs[0],) + tuple(e.inputs[1 + j] for j in ki),
                     params=make_params({"branches": brs}),
                     outputs=tuple(e.outputs[k] for k in keep))


def _cond_vjp(cts, ins, outs, branches):
    """Branch on the same predicate; each branch is the adjoint of its forward branch (which it
    recomputes: nothing is saved)."""
    pred, ops = ins[0], ins[1:]
    formals = branches[0].inputs
    wrt = [k for k, (f, a) in enumerate(zip(formals, ops))
           if f.aval.is_diff and isinstance(a, Tracer)]
    cts = [c if (v.aval.is_diff and c is not None) else None for c, v in zip(cts, branches[0].outputs)]
    if not wrt or all(c is None for c in cts):
        return (None,) * len(ins)

    def adjoint(g):
        def run():
            _, grads = ad.vjp(g, list(ops), cts, wrt)
            # a cotangent of f64[2] for an f64[n] operand (read as x * [a, b]) takes the
            # operand's sizes, or the other branch's would be fitted to 2 (checking n == 2);
            # a lazily broadcast one (lower rank) stays as it is
            return [ad.materialize(c, formals[k].aval.update(shape=tuple(P.shape_of(ops[k]))))
                    if c is not None and P.ndim(c) == P.ndim(ops[k]) else c
                    for k, c in zip(wrt, grads)]
        return run

    def merge(a, b):
        return a, b, None
    res = cond(pred, adjoint(branches[0]), adjoint(branches[1]), merge)
    out = [None] * len(ins)
    for k, r in zip(wrt, res):
        out[1 + k] = r
    return tuple(out)


def _cond_eval(pred, *ops, branches):
    return tuple(evaluate(branches[0 if pred else 1], ops))


def _cond_rebase(e, k, acc):
    """``e`` with its output ``k`` becoming ``acc +`` that output (in both branches)."""
    def post(outs, af):
        outs = list(outs)
        outs[k] = accumulate(af, outs[k])
        return outs
    ops = [Tracer(a) if isinstance(a, Var) else a.value for a in e.inputs[1:]]
    branches, operands = _cond_regions(e, ops, Tracer(acc), post)
    return e.replace(inputs=(e.inputs[0],) + tuple(atom(o) for o in operands),
                     params=make_params({"branches": branches}))


def _cond_jvp_eqn(e, ins, ts):
    """Forward mode: one ``cond`` whose branches compute their values and tangents."""
    from . import forward  # forward mode's driver (it imports ad, as this module does)
    pred, ops, tops = ins[0], list(ins[1:]), list(ts[1:])
    n = len(e.outputs)

    def branch(g):
        def run():
            outs, touts = forward.jvp(g, ops, tops)
            return list(outs) + [
                (t if t is not None else forward.zero_tangent(o, v.aval)) if v.aval.is_diff
                else None for o, t, v in zip(outs, touts, e.outputs)]
        return run
    if not isinstance(pred, Tracer):
        res = branch(e.p["branches"][0 if pred else 1])()
    else:
        res = cond(pred, branch(e.p["branches"][0]), branch(e.p["branches"][1]))
    return res[:n], res[n:]


cond_p = P.primitive("cond", _cond_shape, multiple_results=True, bind_eqn=_cond_bind_eqn,
                     dce_rule=_cond_dce, vjp=_cond_vjp, eval_rule=_cond_eval,
                     rebase=_cond_rebase, jvp_eqn=_cond_jvp_eqn)


# =============================================================================================
# Loops: for_p (a counted loop over range(start, stop, step)) and while_p
# =============================================================================================


@dataclass
class LoopParts:
    """An equation of a loop primitive taken apart."""

    prim: object
    rng: list  # start, stop, step (for_p) or []
    consts: list
    inits: list
    graphs: list  # [body] or [cond, body]
    n_index: int  # 1 for for_p (the index formal), else 0
    backward: bool = False  # for_p's param (see fori)

    @property
    def body(self):
        return self.graphs[-1]

    def formals(self):
        b = self.body
        nc = len(self.consts)
        return b.inputs[:self.n_index], b.inputs[self.n_index:self.n_index + nc], \
            b.inputs[self.n_index + nc:]


def loop_parts(prim, inputs, params):
    p = dict(params)
    nr = prim.n_range
    nc = p["n_consts"]
    ins = list(inputs)
    graphs = [p[name] for name in prim.regions]
    return LoopParts(prim, ins[:nr], ins[nr:nr + nc], ins[nr + nc:], graphs, prim.n_index,
                     bool(p.get("backward")))


def _loop_shape(consts, body, n_index):
    """The carried values' avals, their sizes named as outside the loop."""
    nc = len(consts)
    sub = dict(zip(body.inputs[n_index:n_index + nc], consts))
    return tuple(_subst(v.aval, sub) for v in body.inputs[n_index + nc:])


# (``for_p`` and ``while_p`` are created at the end of this section, with all their rules.)


def _carriable(x):
    return _is_leaf_value(x)


def _carried_aval(x):
    return value_aval(x)


def _reshaped(a, b):
    """The value changes form from aval ``a`` to ``b``: another rank, or a size that is not
    the same (two sizes known only at run time are equal by a check, as for ``x + y``)."""
    return len(a.shape) != len(b.shape) or any(
        not (d is e or (isinstance(d, Var) and isinstance(e, Var))
             or (isinstance(d, int) and isinstance(e, int) and d == e))
        for d, e in zip(a.shape, b.shape))


def _loop(pre, inits, fns, names, peel=False):
    """Trace a loop's regions until the carried values' avals settle. ``pre``: avals of the
    leading formals (the index); ``fns``: [cond_fn,] body_fn, called with (*pre, *carried).
    A carried value the body leaves unchanged (or static and equal) is loop-invariant: the
    body sees its initial value and it is not carried. Returns (regions, outputs of each fn,
    avals per slot (None: invariant), formals per slot); with ``peel``, None when the first
    iteration changes a carried value's shape (see ``fori``)."""
    n = len(inits)
    mode = [_carried_aval(x) if _carriable(x) else None for x in inits]
    for attempt in range(12):
        pre_f = [Var(a) for a in pre]
        formals = {k: Var(mode[k]) for k in range(n) if mode[k] is not None}
        args = [Tracer(formals[k]) if k in formals else inits[k] for k in range(n)]
        regions = [Region(pre_f + list(formals.values())) for _ in fns]
        outs = [r.trace(fn, *[Tracer(v) for v in pre_f], *args) for r, fn in zip(regions, fns)]
        body = outs[-1]
        if len(body) != n:
            raise GradjitError(f"internal: a loop body returned {len(body)} values for {n}")
        if peel and attempt == 0 and any(
                _carriable(x) and _carriable(o) and _reshaped(value_aval(x), value_aval(o))
                for x, o in zip(inits, body)):
            return None
        changed = False
        for k in range(n):
            o = body[k]
            if mode[k] is None:
                if not same_static(o, inits[k]):
                    if not (_carriable(inits[k]) and _carriable(o)):
                        raise TraceError(at(current_loc(), f"'{names[k]}' is rebound inside a loop "
                                            "that runs a number of times known only at run time, "
                                            "to a value that is not a number or an array"))
                    mode[k] = _carried_aval(inits[k])
                    changed = True
                continue
            f = formals[k]
            if (isinstance(o, Tracer) and o.ivar is f) or same_static(o, inits[k]):
                mode[k] = None
                changed = True
            elif not _carriable(o):
                raise TraceError(at(current_loc(), f"'{names[k]}' becomes a "
                                    f"{type(o).__name__} inside the loop"))
            else:
                new = join(mode[k], value_aval(o), f"'{names[k]}'")
                if new != mode[k]:
                    mode[k] = new
                    changed = True
        if not changed:
            return regions, outs, mode, formals, pre_f
    raise TraceError(at(current_loc(), "the types of the loop's variables do not settle"))


def _close_loop(prim, regions, outs, mode, formals, pre_f, inits, names, extra=None, **params):
    n = len(inits)
    carried = [k for k in range(n) if mode[k] is not None]
    body_r = regions[-1]
    for k in carried:
        _check_outer_dims(body_r, mode[k], f"'{names[k]}'")
    body_out = body_r.trace(lambda: [atom(fit(outs[-1][k], mode[k], f"'{names[k]}'"))
                                     for k in carried])
    g_outs = [None] * (len(regions) - 1) + [body_out]
    if len(regions) == 2:
        g_outs[0] = regions[0].trace(lambda: [atom(fit(outs[0][0], Aval("bool")))])
    consts = _union(*[r.free(o) for r, o in zip(regions, g_outs)])
    kf = [formals[k] for k in carried]
    graphs = {name: r.graph(pre_f + consts + kf, o)
              for name, r, o in zip(prim.regions, regions, g_outs)}
    init_vals = [fit(inits[k], mode[k], f"'{names[k]}'") for k in carried]
    res = bind(prim, *(extra or []), *[Tracer(v) for v in consts], *init_vals,
               n_consts=len(consts), **graphs, **params) if carried else ()
    result = list(inits)
    for k, o in zip(carried, res):
        result[k] = o
    return result


def fori(start, stop, step, inits, body_fn, names=None, backward=False, peel=0):
    """``for i in range(start, stop, step): carried = body_fn(i, *carried)``; returns the final
    carried values (a list like ``inits``). ``backward``: the loop runs another loop's iterations
    in reverse (a reverse-mode loop; vmap aligns such a loop's per-example iterations to its end,
    see batching._for_batched_range).

    ``peel``: how many first iterations may run before the loop when they change a carried
    value's shape (``y = y0`` of length n becoming length 2, a scalar becoming an array). The
    loop then carries the shape those iterations leave, exactly as numpy computes; widening the
    initial value to that shape instead would change what the first iteration computes (its
    sums, for one). A trip count known only at run time runs them under ``if`` it is positive."""
    names = names or [f"loop value {k}" for k in range(len(inits))]
    rng = [_int(start), _int(stop), _int(step)]
    if all(is_static_scalar(x) for x in rng) and len(range(*rng)) == 0:
        return list(inits)
    parts = _loop([Aval("int64")], inits, [body_fn], names, peel=peel > 0)
    if parts is None:
        def rest():
            first = list(body_fn(rng[0], *inits))
            return fori(P.add(rng[0], rng[2]), rng[1], rng[2], first, body_fn, names, backward,
                        peel - 1)
        if all(is_static_scalar(x) for x in rng):
            return rest()
        return cond(P.gt(trip_count(*rng), 0), rest, lambda: list(inits),
                    what=lambda k: f"'{names[k]}' (the loop may run no times)")
    regions, outs, mode, formals, pre_f = parts
    return _close_loop(for_p, regions, outs, mode, formals, pre_f, inits, names, extra=rng,
                       **_backward(backward))


def _backward(flag):
    """for_p's ``backward`` param, left out when false (so that forward loops' params, and the
    kernels' cache keys, are as before)."""
    return {"backward": True} if flag else {}


def while_loop(inits, cond_fn, body_fn, names=None, peel=0):
    """``while cond_fn(*carried)[0]: carried = body_fn(*carried)``; ``peel`` as for ``fori``."""
    names = names or [f"loop value {k}" for k in range(len(inits))]
    parts = _loop([], inits, [cond_fn, body_fn], names, peel=peel > 0)
    if parts is None:
        def rest():
            return while_loop(list(body_fn(*inits)), cond_fn, body_fn, names, peel - 1)
        c = cond_fn(*inits)[0]
        if not isinstance(c, Tracer):
            return rest() if c else list(inits)
        return cond(c, rest, lambda: list(inits),
                    what=lambda k: f"'{names[k]}' (the loop may run no times)")
    regions, outs, mode, formals, pre_f = parts
    c = outs[0][0]
    if not isinstance(c, Tracer):
        if not c:
            return list(inits)
        raise TraceError(at(current_loc(), "this while loop never ends (its condition is always "
                            "true and nothing breaks out of it)"))
    return _close_loop(while_p, regions, outs, mode, formals, pre_f, inits, names)


def _int(x):
    if isinstance(x, Tracer):
        if x.ndim or x.dtype.kind not in "iub":
            raise TraceError(at(current_loc(), "range() takes integers (traced integer scalars "
                                f"included), not a {x.dtype}{list(x.shape)} value"))
        return P.cast(x, "int64")
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, np.integer)):
        raise TraceError(at(current_loc(), f"range() takes integers, not {type(x).__name__}"))
    return int(x)


def trip_count(start, stop, step):
    """len(range(start, stop, step)) as an IR value (or an int when all are static)."""
    if all(is_static_scalar(x) for x in (start, stop, step)):
        return len(range(int(start), int(stop), int(step)))
    if is_static_scalar(step) and int(step) == 1:
        n = P.sub(stop, start)
    elif is_static_scalar(step):
        s = int(step)
        n = P.floor_divide(P.add(P.sub(stop, start), s - 1 if s > 0 else s + 1), s)
    else:
        n = P.floor_divide(P.sub(P.add(P.sub(stop, start), step), P.sign(step)), step)
    return P.maximum(n, 0)


# -- which operands a region's results may be ----------------------------------------------------
# Values are values in the IR, but numpy's arrays are objects: after `b = a` and a loop that
# rebinds `b`, `b` is `a` itself when the loop runs no times, and the kernels hand a loop's
# initial array back as its result then (no copy). The front end (a later write into `a`, seen
# through `b` in numpy on some runs only) and the lowering (an update in place of `a`'s buffer)
# both need to know which results may be which operands.

_VIEW_PRIMS = (P.slice_p, P.reshape_p, P.transpose_p, P.broadcast_to_p)


def _is_buffer(v):
    return isinstance(v, Var) and v.aval.ndim > 0 and not _is_tape(v.aval)


def passes_through(e):
    """For a region equation ``e`` (cond, for, while), per output: the positions in
    ``e.inputs`` of the array operands that the output may be, or be a view of, on some run.
    A branch may hand back an operand; a loop its initial value (when it runs no times: always
    possible unless its range is static and not empty) and whatever its body hands on as it
    came in (a carried value, a value from outside the loop)."""
    if e.prim is cond_p:
        branches = e.p["branches"]
        per = [_graph_passes(g) for g in branches]
        return [{1 + j for p in per for j in p[k] if _is_buffer(e.inputs[1 + j])}
                for k in range(len(e.outputs))]
    if e.prim.expand is not None:  # custom_vjp, checkpoint: as the graph it stands for
        per = _graph_passes(e.prim.expand(e))
        return [{j for j in p if _is_buffer(e.inputs[j])} for p in per]
    lp = loop_parts(e.prim, e.inputs, e.params)
    nr, nc, ni = len(lp.rng), len(lp.consts), lp.n_index
    step = _graph_passes(lp.body)  # per carried value: body inputs it may be after one trip
    zero = not (lp.rng and all(isinstance(x, Lit) for x in lp.rng)
                and len(range(*(int(x.value) for x in lp.rng))) > 0)
    out = []
    for k in range(len(lp.inits)):
        carried, seen, todo = set(), set(), [k]  # carried values whose start value k may be
        while todo:
            c = todo.pop()
            for j in step[c]:
                if j >= ni + nc and j - ni - nc not in carried:
                    carried.add(j - ni - nc)
                    todo.append(j - ni - nc)
            seen.add(c)
        ops = {nr + nc + c for c in carried | ({k} if zero else set())}
        ops |= {nr + j - ni for c in seen for j in step[c] if ni <= j < ni + nc}
        out.append({j for j in ops if _is_buffer(e.inputs[j])})
    return out


_PASSES = {}  # id(graph) -> (graph, its _graph_passes): a few recent ones


def _graph_passes(g):
    """Per output of graph ``g``: the positions of the inputs it may be or be a view of."""
    hit = _PASSES.get(id(g))
    if hit is not None and hit[0] is g:
        return hit[1]
    src = {v: {k} for k, v in enumerate(g.inputs) if _is_buffer(v)}
    for q in g.eqns:
        if q.prim in _VIEW_PRIMS:
            s = src.get(q.inputs[0]) if isinstance(q.inputs[0], Var) else None
            if s and _is_buffer(q.outputs[0]):
                src[q.outputs[0]] = s
        elif subgraphs(q):
            for o, js in zip(q.outputs, passes_through(q)):
                s = set().union(*(src.get(q.inputs[j], ()) for j in js))
                if s:
                    src[o] = s
    res = [src.get(o, set()) if isinstance(o, Var) else set() for o in g.outputs]
    if len(_PASSES) > 256:
        _PASSES.clear()
    _PASSES[id(g)] = (g, res)
    return res


def _region_pairs(e, ops):
    """The pairs (frozensets) of results of region ``e`` that may share an array, given the
    pairs of its operands (positions in ``e.inputs``) that may."""
    if e.prim is cond_p:
        out = set()
        for g in e.p["branches"]:
            rel = {frozenset(j - 1 for j in p) for p in ops}
            out |= _graph_sharing(g, rel)[0]
        return out
    lp = loop_parts(e.prim, e.inputs, e.params)
    nr, ni = len(lp.rng), lp.n_index
    first = ni - nr  # operand position + first = body input position (consts, then carried)
    rel = {frozenset(j + first for j in p) for p in ops}
    carried = range(ni + len(lp.consts), len(lp.body.inputs))
    consts = range(ni, ni + len(lp.consts))
    while True:  # the pairs at the start of some iteration (and at the end of the last)
        pairs, shared = _graph_sharing(lp.body, rel)
        new = {frozenset(carried[k] for k in p) for p in pairs}
        new |= {frozenset((carried[k], c)) for k, cs in enumerate(shared) for c in cs
                if c in consts}
        if new <= rel:
            break
        rel |= new
    n0 = carried[0] if carried else 0
    return {frozenset(p - n0 for p in q) for q in rel if all(p in carried for p in q)}


def _graph_sharing(g, rel):
    """(the pairs of outputs of ``g`` that may share an array, per output the positions of
    the inputs it may share one with), given ``rel``, the pairs of inputs (positions, as
    frozensets) that may. A value made by an equation other than a view or a region is a new
    array; a region's result may be the operands ``passes_through`` names, and two results of
    one region are one array only as ``_region_pairs`` says."""
    pos = {v: k for k, v in enumerate(g.inputs)}
    made, at = {}, {}
    for k, q in enumerate(g.eqns):
        for o in q.outputs:
            made[o], at[o] = q, k
    known, pairs = {}, {}

    def base(x):
        while x in made and made[x].prim in _VIEW_PRIMS and isinstance(made[x].inputs[0], Var):
            x = made[x].inputs[0]
        return x

    def region_pairs(q):
        if id(q) not in pairs:
            arrays = [j for j, x in enumerate(q.inputs) if _is_buffer(x)]
            ops = {frozenset((i, j)) for i in arrays for j in arrays
                   if i < j and share(q.inputs[i], q.inputs[j])}
            pairs[id(q)] = _region_pairs(q, ops)
        return pairs[id(q)]

    def share(x, y):
        x, y = base(x), base(y)
        if x is y:
            return True
        key = frozenset((x, y))
        if key not in known:
            qx, qy = made.get(x), made.get(y)
            if qx is None and qy is None:  # two inputs
                known[key] = frozenset((pos.get(x), pos.get(y))) in rel
            elif qx is qy:  # two results of one equation
                known[key] = bool(subgraphs(qx)) and frozenset(
                    (qx.outputs.index(x), qx.outputs.index(y))) in region_pairs(qx)
            else:  # the later one may be the earlier only by handing it on
                if at.get(x, -1) < at.get(y, -1):
                    x, y, qx = y, x, qy
                known[key] = bool(subgraphs(qx)) and any(
                    share(qx.inputs[j], y) for j in passes_through(qx)[qx.outputs.index(x)])
        return known[key]

    outs = [o if _is_buffer(o) else None for o in g.outputs]
    res = {frozenset((k, m)) for k in range(len(outs)) for m in range(k + 1, len(outs))
           if outs[k] is not None and outs[m] is not None and share(outs[k], outs[m])}
    shared = [{j for j, v in enumerate(g.inputs) if o is not None and _is_buffer(v) and share(o, v)}
              for o in outs]
    return res, shared


# -- replay, dead code -------------------------------------------------------------------------


def _loop_bind_eqn(e, args):
    lp = loop_parts(e.prim, args, e.params)
    nr, ni, nc = len(lp.rng), lp.n_index, len(lp.consts)
    call = [None] * ni + list(lp.consts) + list(lp.inits)
    fixed = set(range(ni)) | set(range(ni + nc, len(call)))
    carried_avals = [v.aval for v in lp.formals()[2]]
    out_avals = [[Aval("bool")], carried_avals] if len(lp.graphs) == 2 else [carried_avals]
    graphs, formals, operands = instantiate(lp.graphs, call, fixed, out_avals)
    n_new = len(formals) - ni - len(lp.inits)
    consts = operands[ni:ni + n_new]
    del nr
    return bind(e.prim, *lp.rng, *consts, *lp.inits, n_consts=n_new,
                **dict(zip(e.prim.regions, graphs)), **_backward(lp.backward))


def _loop_dce(e, used):
    lp = loop_parts(e.prim, e.inputs, e.params)
    _, cf, kf = lp.formals()
    live = {k for k, u in enumerate(used) if u}
    if not live:
        return None
    cond = passes.dce(lp.graphs[0]) if len(lp.graphs) == 2 else None
    base = used_inputs(cond) if cond is not None else set()
    while True:
        body = passes.dce(lp.body.replace(outputs=tuple(lp.body.outputs[k] for k in sorted(live))))
        need = used_inputs(body) | base
        new = live | {k for k, f in enumerate(kf) if f in need}
        if new == live:
            break
        live = new
    keep = sorted(live)
    kc = [j for j, f in enumerate(cf) if f in need]
    ni = lp.n_index

    def shrink(g):
        ins = g.inputs[:ni] + tuple(cf[j] for j in kc) + tuple(kf[k] for k in keep)
        return g.replace(inputs=ins)
    body = shrink(body)
    graphs = {"body": body}
    if cond is not None:
        graphs["cond"] = shrink(cond)
    params = dict(e.params)
    params.update(graphs, n_consts=len(kc))
    return e.replace(inputs=tuple(lp.rng) + tuple(lp.consts[j] for j in kc)
                     + tuple(lp.inits[k] for k in keep),
                     params=make_params(params), outputs=tuple(e.outputs[k] for k in keep))


# -- reverse mode --------------------------------------------------------------------------------


def _depends(graph, sources):
    """Float values of ``graph`` that depend on ``sources``."""
    dep = set(sources)
    for e in graph.eqns:
        if any(isinstance(a, Var) and a in dep for a in e.inputs):
            dep.update(v for v in e.outputs if v.aval.is_diff)
    return dep


def _is_tape(aval):
    return aval.dtype.startswith("tape:")


def loop_activity(lp, const_act, init_act):
    """Which carried values carry derivatives: their initial value does, or the body makes them
    depend on an active const or carried value."""
    const_act = list(const_act)
    act = [bool(a) and f.aval.is_diff for a, f in zip(init_act, lp.formals()[2])]
    _, cf, kf = lp.formals()
    while True:
        src = {f for f, a in zip(cf, const_act) if a} | {f for f, a in zip(kf, act) if a}
        dep = _depends(lp.body, src)
        new = [a or (isinstance(o, Var) and o in dep and o.aval.is_diff)
               for a, o in zip(act, lp.body.outputs)]
        if new == act:
            return const_act, act
        act = new


@dataclass
class LoopResidual:
    const_act: list
    act: list
    adjoint: Graph  # (formals..., cts of active carried outputs) -> (const cts, carried cts), pruned
    reads: list  # positions in (formals..., cts) that ``adjoint`` takes
    got: list  # consts (positions among the consts) that receive a cotangent
    needed: list  # carried slots whose value at each iteration's start the adjoint reads
    tapes: list
    count: object  # the trip count (while loops), or None
    lp: LoopParts = None  # the loop, its regions rebuilt on the forward's arguments
    const_pos: list = None  # the equation's input position of each of lp's consts
    init_pos: int = 0  # the equation's input position of the first initial value
    # carried arrays written element by element: {slot: its body's writes (``_write_steps``)};
    # their overwritten elements, indices and branch choices are taped, not the whole array
    writes: dict = None


def body_adjoint(lp, const_act, act):
    """The body's adjoint as a graph over (formals..., cts of the active carried outputs) ->
    (cts of the consts that get one, cts of the active carried inputs), keeping only the
    inputs it reads."""
    body = lp.body
    ni, nc = lp.n_index, len(lp.consts)
    kf = lp.formals()[2]
    ct_formals = [Var(f.aval.update(weak=False)) for f, a in zip(kf, act) if a]
    formals = list(body.inputs) + ct_formals  # the body's own inputs: same sizes
    wrt = [ni + j for j in range(nc) if const_act[j]] + \
          [ni + nc + k for k in range(len(act)) if act[k]]
    got = []

    def run(*ts):
        args = ts[:len(body.inputs)]
        it = iter(ts[len(body.inputs):])
        out_cts = [next(it) if a else None for a in act]
        _, grads = ad.vjp(body, list(args), out_cts, wrt)
        outs = []
        for idx, g in zip(wrt, grads):
            if idx < ni + nc:
                if g is not None:
                    got.append(idx - ni)
                    outs.append(g)
            else:
                outs.append(ad.materialize(g, body.inputs[idx].aval.update(weak=False)))
        return [atom(o) for o in outs]
    r = Region(formals)
    outs = r.trace(run, *[Tracer(v) for v in formals])
    g = passes.dce(r.graph(formals, outs))
    used = _size_only_dropped(g, [f for f in formals if f in used_inputs(g)])
    reads = [k for k, f in enumerate(formals) if f in used]
    return g.replace(inputs=tuple(formals[k] for k in reads)), reads, got


def _size_only_dropped(g, kept):
    """``kept`` less the arrays ``g`` reads only for their sizes when other inputs bind those
    sizes too (a carried array whose adjoint reads no element of it: nothing to tape)."""
    values = {a for e in g.eqns for a in e.inputs if isinstance(a, Var)}
    values |= {a for a in g.outputs if isinstance(a, Var)}
    kept = list(kept)
    for f in list(kept):
        if f in values or not f.aval.ndim:
            continue
        others = [x for x in kept if x is not f]
        bound = set(others) | {d for x in others for d in x.aval.shape if isinstance(d, Var)}
        if all(not isinstance(d, Var) or d in bound for d in f.aval.shape):
            kept = others
    return set(kept)


def _loop_vjp_fwd(e, args, in_active):
    lp0 = loop_parts(e.prim, args, e.params)
    ni, nc0, nr = lp0.n_index, len(lp0.consts), len(lp0.rng)
    # the regions, rebuilt on the arguments (sizes of this graph, static consts folded in)
    call = [None] * ni + list(lp0.consts) + list(lp0.inits)
    fixed = set(range(ni)) | set(range(ni + nc0, len(call)))
    kf0 = lp0.formals()[2]
    out_avals = ([[Aval("bool")]] if len(lp0.graphs) == 2 else []) + [[v.aval for v in kf0]]
    graphs, _, _ = instantiate(lp0.graphs, call, fixed, out_avals)
    const_pos = [nr + j for j, a in enumerate(lp0.consts) if isinstance(a, Tracer)]
    lp = LoopParts(e.prim, lp0.rng, [args[p] for p in const_pos], lp0.inits, graphs, ni,
                   lp0.backward)
    init_act = in_active[nr + nc0:]
    const_act, act = loop_activity(lp, [in_active[p] for p in const_pos], init_act)
    if not any(const_act) and not any(act):
        return _rebind(lp), None
    adj, reads, got = body_adjoint(lp, const_act, act)
    nc = len(lp.consts)
    needed = [k for k in range(len(lp.inits)) if ni + nc + k in reads]
    kf = lp.formals()[2]
    writes, tape_avals = {}, []
    defined = {v for q in lp.body.eqns for v in q.outputs} | set(lp.body.inputs)
    const_of = dict(zip(lp.formals()[1], lp.consts))

    def invariant(d):
        """A size the body reads, as a value outside the loop (None: computed inside)."""
        if d in const_of:
            return const_of[d]
        return None if d in defined else Tracer(d)

    for k in needed:
        mark = len(tape_avals)
        steps = _write_steps(lp.body, kf[k], lp.body.outputs[k], tape_avals, invariant) \
            if kf[k].aval.ndim and not _is_tape(kf[k].aval) else None
        if steps:
            writes[k] = steps
        else:
            del tape_avals[mark:]
    # a tape the adjoint pops again (this loop is the backward loop of a first derivative) is
    # saved as its count: the loop only pops it, so its buffer still holds every value popped
    for k in needed:
        if _is_tape(kf[k].aval):
            _check_pops_only(lp.body, kf[k])
            writes[k] = _Rewind(k, len(tape_avals))
            tape_avals.append(Aval("int64"))
    whole = [k for k in needed if k not in writes]

    def residual(tapes, count):
        return LoopResidual(const_act, act, adj, reads, got, needed, tapes, count, lp,
                            const_pos, nr + nc0, writes)
    if not needed and lp.prim is for_p:
        return _rebind(lp), residual([], None)
    outer = _loop_shape(lp.consts, lp.body, ni)  # the carried values' avals out here
    cap = trip_count(*lp.rng) if lp.prim is for_p else 16
    tapes = [tape_new(cap, outer[k]) for k in whole] + [tape_new(cap, a) for a in tape_avals]
    n = len(lp.inits)
    body = lp.body
    actions = {}  # equation -> what to push before it runs
    for steps in writes.values():
        if not isinstance(steps, _Rewind):
            _actions(steps, actions)

    def aug_body(*ts):
        pre, carried, tps = ts[:ni], ts[ni:ni + n], ts[ni + n:]
        if lp.prim is while_p:
            count, tps = tps[0], tps[1:]
        new_tps = [tape_push(t, carried[k]) for t, k in zip(tps, whole)]
        log = _Tapes(tps[len(whole):])
        for steps in writes.values():
            if isinstance(steps, _Rewind):
                log.push(steps.pos, tape_count(carried[steps.slot]))
        outs = _replay_logged(body, list(pre) + list(lp.consts) + list(carried), actions, log)
        new_tps += log.tapes
        extra = [P.add(count, 1)] if lp.prim is while_p else []
        return list(outs) + extra + new_tps

    if lp.prim is for_p:
        res = fori(*lp.rng, list(lp.inits) + tapes, aug_body, backward=lp.backward)
        return tuple(res[:n]), residual(list(res[n:]), None)
    cond_g = lp.graphs[0]

    def aug_cond(*ts):
        outs, _ = ad.replay(cond_g, list(lp.consts) + list(ts[:n]))
        return outs
    res = while_loop(list(lp.inits) + [np.int64(0)] + tapes, aug_cond, aug_body)
    return tuple(res[:n]), residual(list(res[n + 1:]), res[n])


@dataclass
class _Rewind:
    """How a tape popped by a loop is saved: its count at each iteration's start (on the tape
    at ``pos``)."""

    slot: int
    pos: int


def _check_pops_only(graph, tape):
    """Rewinding ``tape`` by its count needs a body that never pushes onto it (followed into
    the regions it is passed to)."""
    chain = {tape}
    for e in graph.eqns:
        if not any(isinstance(a, Var) and a in chain for a in e.inputs):
            continue
        if e.prim is tape_push_p:
            raise GradjitError(at(e.loc, "differentiating a loop that both pushes onto and "
                                  "pops from one tape is not supported"))
        for g, pairs in _region_formals(e):
            for a, f in pairs:
                if isinstance(a, Var) and a in chain:
                    _check_pops_only(g, f)
        chain.update(v for v in e.outputs if _is_tape(v.aval))


def _region_formals(e):
    """(region, [(operand, its formal in the region)]) for each region of ``e``."""
    if e.prim is cond_p:
        return [(g, list(zip(e.inputs[1:], g.inputs))) for g in e.p["branches"]]
    if e.prim in (for_p, while_p):
        lp = loop_parts(e.prim, e.inputs, e.params)
        _, cf, kf = lp.formals()
        pairs = list(zip(list(lp.consts) + list(lp.inits), list(cf) + list(kf)))
        return [(g, pairs) for g in lp.graphs]
    return []


# -- arrays written element by element inside a loop ----------------------------------------------
# Rather than taping a carried array whole at every iteration (O(n) per iteration), the forward
# loop tapes what each write overwrites (the old elements and the dynamic indices) and, for a
# write under an `if`, which branch ran; the backward loop carries the array too, from the
# forward's final value, and undoes each iteration's writes (last first) before applying the
# body's adjoint, which so sees the array as it was when the iteration began.


def _write_steps(graph, f, out, tape_avals, invariant=None):
    """How ``graph`` makes ``out`` from its input ``f`` by writes, last first, or None:
    ``("set", q, tapes, sizes)`` a ``slice_set`` (tapes: the old region's, then one per
    dynamic index; sizes: its region's sizes known at run time, as values outside the loop,
    which ``invariant`` gives), ``("cond", e, j, (then steps, else steps), tape)`` a ``cond``
    whose output comes from its operand ``j`` written in its branches (tape: the branch
    taken). Tapes are positions in ``tape_avals``, which this extends."""
    producer = {v: q for q in graph.eqns for v in q.outputs}
    steps, v = [], out
    while v is not f:
        q = producer.get(v) if isinstance(v, Var) else None
        if q is None:
            return None
        if q.prim is P.slice_set_p:
            n_idx = sum(1 for sp in q.p["spec"] for d in sp[1:] if d == P.DYN)
            size_in = [invariant(d) if invariant is not None else None
                       for d in q.inputs[2 + n_idx:]]
            if any(d is None for d in size_in):
                return None  # a region whose size changes from one iteration to the next
            pos = list(range(len(tape_avals), len(tape_avals) + 1 + n_idx))
            dims = iter(_static(d) for d in size_in)
            region = tuple(next(dims) if d == P.DYN else d for d in q.p["sizes"])
            tape_avals += [Aval(q.inputs[0].aval.dtype, region)] + [Aval("int64")] * n_idx
            steps.append(("set", q, pos, size_in))
            v = q.inputs[0]
        elif q.prim is cond_p and isinstance(q.inputs[0], Var):
            k = q.outputs.index(v)
            brs = q.p["branches"]
            roots = {_write_root(b, b.outputs[k]) for b in brs}
            if len(roots) != 1:
                return None
            root = roots.pop()
            j = next((j for j, x in enumerate(brs[0].inputs) if x is root), None)
            if j is None:
                return None
            pred_pos = len(tape_avals)
            tape_avals.append(Aval("int64"))
            arms = tuple(_write_steps(b, b.inputs[j], b.outputs[k], tape_avals) for b in brs)
            if any(a is None for a in arms):
                return None
            steps.append(("cond", q, j, arms, pred_pos))
            v = q.inputs[1 + j]
        elif q.prim is for_p:
            k = q.outputs.index(v)
            inner = loop_parts(for_p, q.inputs, q.params)
            count_pos = len(tape_avals)
            tape_avals.append(Aval("int64"))
            steps_in = _write_steps(inner.body, inner.formals()[2][k], inner.body.outputs[k],
                                    tape_avals)
            if not steps_in:
                return None
            steps.append(("loop", q, k, steps_in, count_pos))
            v = inner.inits[k]
        else:
            return None
    return steps


def _write_root(graph, v):
    """The value that the writes making ``v`` start from (a formal of ``graph`` if they are
    all writes ``_write_steps`` follows)."""
    producer = {x: q for q in graph.eqns for x in q.outputs}
    while isinstance(v, Var) and v in producer:
        q = producer[v]
        if q.prim is P.slice_set_p:
            v = q.inputs[0]
        elif q.prim is for_p:
            v = loop_parts(for_p, q.inputs, q.params).inits[q.outputs.index(v)]
        elif q.prim is cond_p:
            k = q.outputs.index(v)
            roots = {_write_root(b, b.outputs[k]) for b in q.p["branches"]}
            formals = q.p["branches"][0].inputs
            if len(roots) != 1 or roots.copy().pop() not in formals:
                return v
            v = q.inputs[1 + list(formals).index(roots.pop())]
        else:
            return v
    return v


def _actions(steps, actions):
    """eqn -> tape positions to push to before it runs (conds, loops: one per array written
    in them)."""
    for st in steps:
        if st[0] == "set":
            actions[st[1]] = st[2]
        elif st[0] == "cond":
            actions.setdefault(st[1], []).append(st[4])
            for arm in st[3]:
                _actions(arm, actions)
        else:
            actions.setdefault(st[1], []).append(st[4])
            _actions(st[3], actions)


class _Tapes:
    """The tapes being threaded through a loop body (Tracers, by position)."""

    def __init__(self, tapes):
        self.tapes = list(tapes)

    def push(self, pos, v):
        self.tapes[pos] = tape_push(self.tapes[pos], v)

    def pop(self, pos):
        self.tapes[pos], v = tape_pop(self.tapes[pos])
        return v


def _replay_logged(graph, args, actions, log):
    """``ad.replay`` that pushes, before each write in ``actions``, what it overwrites, and
    before each ``cond`` in it, the branch taken (its branches replayed the same way)."""
    env = {}
    ad.bind_input_dims(graph, args, env)

    def read(a):
        return a.value if isinstance(a, Lit) else env[a]
    for e in graph.eqns:
        with location(e.loc):
            ins = [read(a) for a in e.inputs]
            pos = actions.get(e)
            if pos is not None and e.prim is P.slice_set_p:
                old = bind(P.slice_p, ins[0], *ins[2:], **e.p)
                for p_, v in zip(pos, [old] + ins[2:]):
                    log.push(p_, v)
                out = bind(e.prim, *ins, **e.p)
            elif pos is not None and e.prim is for_p:
                out = _loop_logged(e, ins, actions, log, pos)
            elif pos is not None:  # a cond
                for p_ in pos:
                    log.push(p_, P.cast(ins[0], "int64"))
                out = _cond_logged(e, ins, actions, log)
            else:
                out = e.prim.bind_eqn(e, ins) if e.prim.bind_eqn is not None \
                    else bind(e.prim, *ins, **e.p)
        outs = out if e.prim.multiple_results else ((out,) if e.outputs else ())
        for v, o in zip(e.outputs, outs):
            env[v] = o
    return [read(a) for a in graph.outputs]


def _cond_logged(e, ins, actions, log):
    pred, ops = ins[0], ins[1:]
    n_out = len(e.outputs)

    def arm(g):
        def fn():
            saved = list(log.tapes)
            outs = _replay_logged(g, list(ops), actions, log)
            res = list(outs) + list(log.tapes)  # cond joins the branches' avals
            log.tapes = saved
            return res
        return fn
    res = cond(pred, arm(e.p["branches"][0]), arm(e.p["branches"][1]))
    log.tapes = list(res[n_out:])
    return tuple(res[:n_out])


def _loop_logged(e, ins, actions, log, count_pos):
    """A nested ``for`` whose body writes into the array: the trip count is taped, and the
    body's writes are logged at every iteration (the tapes carried through it)."""
    lp = loop_parts(for_p, ins, e.params)
    n = len(lp.inits)
    trip = trip_count(*lp.rng)
    for p_ in count_pos:
        log.push(p_, trip)

    def body_fn(i, *st):
        saved, log.tapes = log.tapes, list(st[n:])
        outs = _replay_logged(lp.body, [i] + list(lp.consts) + list(st[:n]), actions, log)
        res = list(outs) + list(log.tapes)
        log.tapes = saved
        return res
    res = fori(*lp.rng, list(lp.inits) + list(log.tapes), body_fn)
    log.tapes = list(res[n:])
    return tuple(res[:n])


def _undo_writes(steps, x, log):
    """``x`` with the writes ``steps`` undone (their old values popped from the tapes)."""
    for st in steps:
        if st[0] == "set":
            q, pos, size_in = st[1], st[2], st[3]
            popped = [log.pop(p_) for p_ in pos]
            x = bind(P.slice_set_p, x, *popped, *size_in, **q.p)
            continue
        if st[0] == "loop":  # undo the nested loop's iterations, last first
            inner, count = st[3], log.pop(st[4])

            def undo_body(j, y, *tps, inner=inner):
                saved, log.tapes = log.tapes, list(tps)
                res = [_undo_writes(inner, y, log)] + list(log.tapes)
                log.tapes = saved
                return res
            res = fori(0, count, 1, [x] + list(log.tapes), undo_body)
            x, log.tapes = res[0], list(res[1:])
            continue
        _, _, _, arms, pred_pos = st
        taken = log.pop(pred_pos)

        def arm(steps_b, x=x):
            def fn():
                saved = list(log.tapes)
                y = _undo_writes(steps_b, x, log)
                res = [y] + list(log.tapes)
                log.tapes = saved
                return res
            return fn
        res = cond(P.ne(taken, 0), arm(arms[0]), arm(arms[1]))
        x, log.tapes = res[0], list(res[1:])
    return x


def _rebind(lp):
    return bind(lp.prim, *lp.rng, *lp.consts, *lp.inits, n_consts=len(lp.consts),
                **dict(zip(lp.prim.regions, lp.graphs)), **_backward(lp.backward))


def _loop_vjp_bwd(cts, ins, outs, res, **params):
    """A counted loop running the forward's iterations backwards: pop the taped values, apply
    the body's adjoint, accumulate the consts' cotangents."""
    if res is None:
        return (None,) * len(ins)
    lp = res.lp
    ni, n = lp.n_index, len(lp.inits)
    outer = _loop_shape(lp.consts, lp.body, ni)
    active = [k for k in range(n) if res.act[k]]
    ct0 = [fit(cts[k], outer[k].update(weak=False)) for k in active]
    acc_avals = [Aval(P.dtype_of(lp.consts[j]), tuple(P.shape_of(lp.consts[j]))) for j in res.got]
    acc0 = [P.zeros(a.shape, a.dtype) if a.shape else P.cast(0, a.dtype) for a in acc_avals]
    na, ng = len(active), len(acc0)
    writes = res.writes or {}
    whole = [k for k in res.needed if k not in writes]
    # an array written element by element runs backwards too: it starts as the forward's
    # final value and each iteration puts back the elements that iteration overwrote
    arr0 = [fit(outs[k], outer[k]) for k in writes]
    nw = len(arr0)

    def body(i, *st):
        cts_k, accs, arrs, tps = st[:na], st[na:na + ng], st[na + ng:na + ng + nw], \
            st[na + ng + nw:]
        vals, new_tps = {}, []
        for k, t in zip(whole, tps):
            t2, v = tape_pop(t)
            new_tps.append(t2)
            vals[k] = v
        log = _Tapes(tps[len(whole):])
        new_arrs = []
        for (k, steps), x in zip(writes.items(), arrs):
            if isinstance(steps, _Rewind):  # the tape as it was when this iteration started
                x = tape_rewind(x, log.pop(steps.pos))
            else:
                x = _undo_writes(steps, x, log)
            vals[k] = x
            new_arrs.append(x)
        new_tps += log.tapes
        full = [i] * ni + list(lp.consts) + [vals.get(k) for k in range(n)] + list(cts_k)
        outs, _ = ad.replay(res.adjoint, [full[p] for p in res.reads])
        const_cts, carried_cts = outs[:ng], outs[ng:]
        new_accs = [fit(accumulate(a, c), av) for a, c, av in zip(accs, const_cts, acc_avals)]
        return list(carried_cts) + new_accs + new_arrs + new_tps

    if lp.prim is for_p:
        start, stop, step = lp.rng
        trip = trip_count(start, stop, step)
        last = P.add(start, P.mul(P.sub(trip, 1), step))
        rng = (last, P.sub(start, step), P.neg(step))
    else:
        rng = (P.sub(res.count, 1), -1, -1)
    final = fori(*rng, ct0 + acc0 + arr0 + list(res.tapes), body, backward=not lp.backward)
    grads = [None] * len(ins)
    for j, a in zip(res.got, final[na:na + ng]):
        grads[res.const_pos[j]] = a
    for k, c in zip(active, final[:na]):
        grads[res.init_pos + k] = c
    return tuple(grads)


def accumulate(acc, ct, chain=()):
    """``acc + ct``, computed where ``ct`` is made so that the sum costs the size of the update,
    not of ``acc``: indexed updates of zeros (the adjoint of reading ``x[i]``) are applied to
    ``acc``; a ``cond`` or loop that produced ``ct`` from zeros is rewritten to start from
    ``acc``. (Gradients of arrays read inside loops would otherwise cost O(n) per iteration.)
    ``chain``: the indexed updates already being rebuilt on top of ``ct`` (left dead)."""
    if ct is None:
        return acc
    if isinstance(ct, Tracer) and isinstance(acc, Tracer) and \
            P.same_shape(acc.aval.shape, ct.aval.shape) and acc.aval.dtype == ct.aval.dtype:
        x = ct.ivar
        if P._is_zeros(x):
            return acc
        e = P._producer(x)
        if e is not None and e.prim in (P.slice_add_p, P.scatter_add_p):
            base = accumulate(acc, Tracer(e.inputs[0]), chain + (e,))
            return bind(e.prim, base, *[_tracer(a) for a in e.inputs[1:]], **e.p)
        if e is not None and e.prim.rebase is not None:
            out = _rebase(e, x, acc, chain)
            if out is not None:
                return out
    return P.add(acc, ct)


def _rebase(e, x, acc, chain=()):
    """Rewrite, in the builder, the region equation ``e`` so that its output ``x`` (used
    nowhere yet, but by the indexed updates ``chain`` that are being rebuilt on it) becomes
    ``acc + x``."""
    from .tracing import current
    b = current()
    idx = next((j for j, q in enumerate(b.eqns) if q is e), None)
    tainted = {x} | {v for q in chain for v in q.outputs}
    if idx is None or any(any(a in tainted for a in q.inputs) for q in b.eqns[idx + 1:]
                          if not any(q is c for c in chain)):
        return None
    pe = b.producer.get(acc.ivar)
    if pe is not None and next((j for j, q in enumerate(b.eqns) if q is pe), -1) > idx:
        return None
    new = e.prim.rebase(e, e.outputs.index(x), acc.ivar)
    if new is None:
        return None
    b.eqns[idx] = new
    for v in new.outputs:
        b.producer[v] = new
    return Tracer(x)


def _loop_rebase(e, k, acc):
    """Start carried value ``k`` from ``acc`` instead of zeros when the body only adds to it."""
    lp = loop_parts(e.prim, e.inputs, e.params)
    init = lp.inits[k]
    if not (isinstance(init, Var) and P._is_zeros(init)):
        return None
    kf = lp.formals()[2]
    if not _adds_to(lp.body, kf[k], lp.body.outputs[k]) or \
            any(kf[k] in q.inputs for q in (lp.graphs[0].eqns if len(lp.graphs) == 2 else ())):
        return None
    n0 = len(lp.rng) + len(lp.consts)
    return e.replace(inputs=e.inputs[:n0 + k] + (acc,) + e.inputs[n0 + k + 1:])


def _adds_to(body, f, out):
    """``out`` is ``f`` plus terms that do not depend on ``f`` (add / indexed updates), and
    nothing else reads ``f`` or the partial sums."""
    dep = _depends(body, {f})
    producer = {v: q for q in body.eqns for v in q.outputs}
    uses = {}
    for q in body.eqns:
        for a in q.inputs:
            uses[a] = uses.get(a, 0) + 1
    for a in body.outputs:
        uses[a] = uses.get(a, 0) + 1
    v = out
    while v is not f:
        q = producer.get(v)
        if q is None or uses.get(v, 0) != 1 and v is not out:
            return False
        if q.prim is P.add_p:
            chain = [a for a in q.inputs if isinstance(a, Var) and a in dep]
        elif q.prim in (P.slice_add_p, P.scatter_add_p):
            chain = [q.inputs[0]] if q.inputs[0] in dep else []
            if any(isinstance(a, Var) and a in dep for a in q.inputs[1:]):
                return False
        else:
            return False
        if len(chain) != 1 or chain[0].aval.shape != v.aval.shape:
            return False
        v = chain[0]
    return uses.get(f, 0) == 1


def _tracer(a):
    return Tracer(a) if isinstance(a, Var) else a.value


def _loop_vjp(cts, ins, outs, **params):
    """Without the driver's forward hook: rebuild the augmented forward here."""
    prim = for_p if "cond" not in params else while_p
    e = _FakeEqn(prim, ins, params)
    active = [isinstance(a, Tracer) and a.aval.is_diff for a in ins]
    _, res = _loop_vjp_fwd(e, ins, active)
    return _loop_vjp_bwd(cts, ins, outs, res, **params)


class _FakeEqn:
    def __init__(self, prim, ins, params):
        self.prim, self.params = prim, make_params(params)

    @property
    def p(self):
        return dict(self.params)


def _loop_jvp_eqn(e, ins, ts):
    """Forward mode: the loop carrying, beside each value that gets a tangent, its tangent
    (no tape: the tangent of an iteration needs only that iteration's values)."""
    from . import forward  # forward mode's driver (it imports ad, as this module does)
    lp = loop_parts(e.prim, ins, e.params)
    nr, nc, n, ni = len(lp.rng), len(lp.consts), len(lp.inits), lp.n_index
    tconsts, tinits = list(ts[nr:nr + nc]), list(ts[nr + nc:])
    _, act = loop_activity(lp, [t is not None for t in tconsts], [t is not None for t in tinits])
    kf = lp.formals()[2]
    slots = [k for k in range(n) if act[k]]
    t0 = [tinits[k] if tinits[k] is not None else forward.zero_tangent(lp.inits[k], kf[k].aval)
          for k in slots]

    def body(*vals):
        pre, carried, tcar = vals[:ni], vals[ni:ni + n], vals[ni + n:]
        tin = [None] * n
        for k, t in zip(slots, tcar):
            tin[k] = t
        outs, touts = forward.jvp(lp.body, list(pre) + list(lp.consts) + list(carried),
                                  [None] * ni + tconsts + tin)
        return list(outs) + [touts[k] if touts[k] is not None else
                             forward.zero_tangent(outs[k], kf[k].aval) for k in slots]
    if lp.prim is for_p:
        res = fori(*lp.rng, list(lp.inits) + t0, body, backward=lp.backward)
    else:
        def cond_fn(*vals):
            outs, _ = ad.replay(lp.graphs[0], list(lp.consts) + list(vals[:n]))
            return outs
        res = while_loop(list(lp.inits) + t0, cond_fn, body)
    touts = [None] * n
    for k, t in zip(slots, res[n:]):
        touts[k] = t
    return res[:n], touts


def _for_eval(start, stop, step, *rest, body, n_consts, backward=False):
    consts, carried = list(rest[:n_consts]), list(rest[n_consts:])
    for i in range(int(start), int(stop), int(step)):
        carried = evaluate(body, [np.int64(i)] + consts + carried)
    return tuple(carried)


def _while_eval(*rest, cond, body, n_consts):
    consts, carried = list(rest[:n_consts]), list(rest[n_consts:])
    while evaluate(cond, consts + carried)[0]:
        carried = evaluate(body, consts + carried)
    return tuple(carried)


# The loop primitives, with the rules above: replay and DCE, the reverse mode (a forward hook
# and its adjoint; ``vjp`` alone when the driver's hook is not used), accumulation into the
# carried values, and the reference semantics.
_LOOP_RULES = dict(multiple_results=True, bind_eqn=_loop_bind_eqn, dce_rule=_loop_dce,
                   rebase=_loop_rebase, vjp_fwd=_loop_vjp_fwd, vjp_bwd=_loop_vjp_bwd,
                   vjp=_loop_vjp, jvp_eqn=_loop_jvp_eqn)
for_p = P.primitive(
    "for", lambda *ins, body, n_consts, backward=False: _loop_shape(ins[3:3 + n_consts], body, 1),
    n_range=3, n_index=1, regions=("body",), eval_rule=_for_eval, **_LOOP_RULES)
while_p = P.primitive(
    "while", lambda *ins, cond, body, n_consts: _loop_shape(ins[:n_consts], body, 0),
    n_range=0, n_index=0, regions=("cond", "body"), eval_rule=_while_eval, **_LOOP_RULES)


# =============================================================================================
# Tapes: growable stacks living in the kernel (a buffer doubled when full, and a count)
# =============================================================================================


def _tape_aval(aval):
    return Aval("tape:" + aval.dtype, aval.shape)


def _elem_aval(tape):
    return Aval(tape.dtype[len("tape:"):], tape.shape)


# Reference values of a tape: (values, count); a pop leaves its value in place, as the kernel's
# buffer does, so that ``tape_rewind`` can give it back.
# A tape's cotangent is the stack of its values' cotangents, in reverse: the adjoint of a push
# pops the cotangent tape, the adjoint of a pop pushes onto it (a pop whose value got no
# cotangent pushes a zero, so that the two stacks stay aligned).
tape_new_p = P.primitive(
    "tape_new", lambda cap, *dims, shape, dtype: (Aval("tape:" + dtype, P._fill_dims(shape, dims)),),
    cse=False, eval_rule=lambda cap, *dims, shape, dtype: ((), 0), jvp=P._no_tangent)


def _push_jvp(ts, ins, outs):
    """A tape's tangent is the tape of its values' tangents. One without a tangent yet is
    empty: a tape is pushed onto only by the loop that fills it from empty."""
    t, v = ts
    t = t if t is not None else empty_tape(P.aval_of(ins[0]))
    v = v if v is not None else P.zeros(P.shape_of(ins[1]), _elem_aval(P.aval_of(ins[0])).dtype)
    return tape_push(t, v)


tape_push_p = P.primitive("tape_push", lambda t, v: (t.aval,), inplace=0,
                          eval_rule=lambda t, v: (t[0][:t[1]] + (np.array(v, copy=True),),
                                                  t[1] + 1),
                          vjp=lambda ct, ins, outs: tape_pop(ct), jvp=_push_jvp)
tape_pop_p = P.primitive("tape_pop", lambda t: (t.aval, _elem_aval(t.aval)),
                         multiple_results=True, eval_rule=lambda t: ((t[0], t[1] - 1),
                                                                     t[0][t[1] - 1]),
                         vjp=lambda cts, ins, outs: (tape_push(cts[0], cts[1]),),
                         jvp=lambda ts, ins, outs: tuple(tape_pop(ts[0])))
tape_count_p = P.primitive("tape_count", lambda t: (Aval("int64"),),
                           eval_rule=lambda t: np.int64(t[1]),
                           vjp=lambda ct, ins, outs: (None,), jvp=P._no_tangent)  # an integer


def _rewind_vjp(ct, ins, outs):
    raise ad.reread_tape_error()


tape_rewind_p = P.primitive("tape_rewind", lambda t, n: (t.aval,), inplace=0,
                            eval_rule=lambda t, n: (t[0], int(n)), vjp=_rewind_vjp,
                            jvp=lambda ts, ins, outs: tape_rewind(ts[0], ins[1]))


def empty_tape(aval):
    """An empty tape of the tape aval ``aval``: the zero cotangent of a tape
    (``ad.materialize``)."""
    return tape_new(16, _elem_aval(aval))


def tape_new(capacity, aval):
    """An empty tape for values of ``aval``, with room for ``capacity`` before it grows."""
    template, dims = P._split_dims(aval.shape)
    return bind(tape_new_p, P.cast(capacity, "int64") if isinstance(capacity, Tracer)
                else int(capacity), *dims, shape=template, dtype=aval.dtype)


def tape_push(t, v):
    return bind(tape_push_p, t, fit(v, _elem_aval(t.aval)))


def tape_pop(t):
    return bind(tape_pop_p, t)


def tape_count(t):
    return bind(tape_count_p, t)


def tape_rewind(t, n):
    """``t`` holding its first ``n`` values again (they are still in its buffer: only pops ran
    since)."""
    return bind(tape_rewind_p, t, n)


# =============================================================================================
# Reference semantics: regions are closed graphs, run by the reference evaluator
# =============================================================================================


def evaluate(graph, args):
    """Run ``graph`` on numpy values (``reference.evaluate``, which calls the ``eval_rule``s)."""
    from .reference import evaluate as run
    return run(graph, *args)


__all__ = [
    "cond",
    "cond_p",
    "evaluate",
    "for_p",
    "fori",
    "subgraphs",
    "tape_count_p",
    "tape_new_p",
    "tape_pop_p",
    "tape_push_p",
    "tape_rewind_p",
    "trip_count",
    "while_loop",
    "while_p",
]
