"""Forward mode as an IR -> IR transform.

``jvp`` replays a graph into the current builder and, alongside each equation whose inputs
carry tangents, emits its tangent through the primitive's tangent rule (``Primitive.jvp``:
``(tangents, ins, outs, **params) -> output tangents``, IR through the op functions, so the
result can be differentiated, batched or pushed forward again). Region primitives (cond and
the loops) declare ``jvp_eqn`` instead: one equation computing values and tangents together,
a loop carrying each tangent with its value (no tape). The driver owns the cross-cutting work:
zero tangents (``None``) are skipped, integer values never carry one, and every tangent is
given its value's full shape and dtype (rules may return one that broadcasts to it).

``jvp_graph`` (``gj.jvp``) and ``jacfwd_graph`` (``gj.jacfwd``: the jvp batched over the
basis of each input, one kernel) build the transforms' graphs; ``WithTangents`` is the
function object ``gj.jvp`` traces: ``fun`` on the primals, the tangents as further inputs.
"""

from __future__ import annotations

import functools

import numpy as np

from ..errors import GradjitError, ShapeError, TraceError, at
from . import ad
from . import primitives as P
from .ir import Lit, Var
from .tracing import Builder, Tracer, building, location, make_graph

__all__ = ["jvp", "jvp_graph", "jacfwd_graph", "WithTangents", "fit_tangent", "zero_tangent"]


def fit_tangent(t, value, aval):
    """``t`` as the tangent of ``value`` (of ``aval``): its full shape and its dtype."""
    shape = tuple(P.shape_of(value))
    if not isinstance(t, Tracer) and shape:  # a constant tangent (a rule's literal)
        return P.full(shape, t, aval.dtype) if np.ndim(t) == 0 else \
            P.lift(np.asarray(t, aval.dtype))
    return ad.materialize(t, aval.update(shape=shape, weak=False))


def zero_tangent(value, aval):
    """The zero tangent of ``value`` (a tape's is an empty tape)."""
    return ad.materialize(None, aval.update(shape=tuple(P.shape_of(value)), weak=False))


def _emit(e, ins):
    out = e.prim.bind_eqn(e, ins) if e.prim.bind_eqn is not None else P.bind(e.prim, *ins, **e.p)
    return list(out) if e.prim.multiple_results else ([out] if e.outputs else [])


def _tangents(e, ins, ts):
    """(outputs, output tangents) of equation ``e`` on ``ins`` with input tangents ``ts``."""
    if e.prim.jvp_eqn is not None:
        outs, touts = e.prim.jvp_eqn(e, ins, ts)
        return list(outs), list(touts)
    if e.prim.jvp is None:
        raise GradjitError(at(e.loc, f"forward mode (gj.jvp / gj.jacfwd): the operation "
                              f"'{e.prim.name}' has no tangent rule"))
    outs = _emit(e, ins)
    t = e.prim.jvp(ts, ins, outs, **e.p)
    touts = list(t) if e.prim.multiple_results else [t]
    if len(touts) != len(outs):
        raise GradjitError(f"the tangent rule of {e.prim.name} returned {len(touts)} tangents "
                           f"for {len(outs)} outputs")
    return outs, touts


def jvp(graph, args, tangents):
    """Emit ``graph`` on ``args`` with input tangents ``tangents`` (one per input, None for
    zero) into the current builder; returns (outputs, output tangents, None for zero)."""
    env = {}
    ad.bind_input_dims(graph, args, env)
    tan = {v: t for v, t in zip(graph.inputs, tangents)
           if t is not None and v.aval.is_diff}

    def read(a):
        return a.value if isinstance(a, Lit) else env[a]

    for e in graph.eqns:
        ins = [read(a) for a in e.inputs]
        ts = [tan.get(a) if isinstance(a, Var) else None for a in e.inputs]
        with location(e.loc):
            if all(t is None for t in ts):
                outs, touts = _emit(e, ins), ()
            else:
                outs, touts = _tangents(e, ins, ts)
            for k, (v, o) in enumerate(zip(e.outputs, outs)):
                env[v] = o
                t = touts[k] if k < len(touts) else None
                if t is not None and v.aval.is_diff:
                    tan[v] = fit_tangent(t, o, v.aval)
    return [read(a) for a in graph.outputs], \
        [tan.get(a) if isinstance(a, Var) else None for a in graph.outputs]


# ---------------------------------------------------------------------------------------------
# The transforms' graphs
# ---------------------------------------------------------------------------------------------


class WithTangents:
    """``fun`` called on its first ``n`` arguments; the arguments after them (the tangents)
    are inputs of the traced graph that ``fun`` does not read. ``gj.jvp`` compiles this object
    (transform kind ``"jvp"``), so one kernel takes primals and tangents."""

    def __init__(self, fun, n):
        self.fun, self.n = fun, n
        functools.update_wrapper(self, fun, updated=())

    def __call__(self, *args):
        return self.fun(*args[:self.n])

    def __repr__(self):
        return f"<jvp of {getattr(self.fun, '__qualname__', self.fun)}>"

    def _gj_inline(self, interp, args, kwargs):
        if kwargs:
            raise TraceError(at(interp.loc, "gj.jvp: keyword arguments are not supported"))
        return interp.call(self.fun, tuple(args[:self.n]))


def check_tangent_shapes(primals, tangents, loc):
    """Tangents shaped like their primals (statically, or by run-time checks)."""
    for p, t in zip(primals, tangents):
        sp, st = P.shape_of(p), P.shape_of(t)
        msg = at(loc, f"gj.jvp: a tangent of shape {P.fmt_shape(st)} for a primal of shape "
                 f"{P.fmt_shape(sp)}")
        if len(sp) != len(st):
            raise ShapeError(msg)
        for a, b in zip(sp, st):
            if P.same_dim(a, b):
                continue
            if isinstance(a, int) and isinstance(b, int):
                raise ShapeError(msg)
            P.check_eq(b, a, msg)


def jvp_graph(traced, n_primal):
    """Graph of (primal leaves, tangent leaves, what the trace reads) -> (outputs, output
    tangents). The traced graph's inputs are the primals' leaves then the tangents' (which it
    does not read): the tangent inputs are rebuilt with their primal's avals, so that values
    and tangents share their sizes (``gj.jvp`` checks that they agree)."""
    g = traced.graph
    prim_in, rest = g.inputs[:n_primal], g.inputs[2 * n_primal:]
    t_in = [Var(v.aval.update(weak=False)) for v in prim_in]
    with building(Builder()) as b:
        ins = [Tracer(v) for v in prim_in]
        tins = [Tracer(v) for v in t_in]
        others = [Tracer(v) for v in rest]
        outs, touts = jvp(g, ins + tins + others,
                          [t if t.aval.is_float else None for t in tins]
                          + [None] * (n_primal + len(rest)))
        res = list(outs) + [_out_tangent(t, o, a) for t, o, a in zip(touts, outs, g.outputs)]
        return make_graph(ins + tins + others, res, b)


def _out_tangent(t, o, a):
    if t is not None:
        return t
    aval = a.aval if isinstance(a, Var) else P.aval_of(o)
    if not aval.is_float:  # an integer output's tangent: zeros (JAX's float0), as float64
        aval = aval.update(dtype="float64")
    return zero_tangent(o, aval)


def _basis(shape, dt):
    """The identity over the elements of a value of ``shape``: (size, *shape), built in the
    kernel (e_k[l] = (k == l))."""
    m = 1
    for d in shape:
        m = P.mul(m, Tracer(d)) if isinstance(d, Var) else m * d
    i = P.lift(np.arange(int(m))) if isinstance(m, (int, np.integer)) else P.arange(m)
    basis = P.convert(P.eq(P.reshape(i, (m, 1)), i), dt)
    if len(shape) != 1:
        basis = P.reshape(basis, (m,) + tuple(P.dim(d) for d in shape))
    return basis


def _tangent_graph(g, i):
    """Graph of (the inputs of ``g``, a tangent of input ``i``) -> the outputs' tangents."""
    t_var = Var(g.inputs[i].aval.update(weak=False))
    with building(Builder()) as b:
        ins = [Tracer(v) for v in g.inputs]
        ts = [None] * len(ins)
        ts[i] = Tracer(t_var)
        outs, touts = jvp(g, ins, ts)
        res = [_out_tangent(t, o, a) for t, o, a in zip(touts, outs, g.outputs)]
        return make_graph(ins + [Tracer(t_var)], res, b)


def jacfwd_graph(traced, wrt):
    """Graph of the function's inputs -> for each output leaf, for each input leaf in ``wrt``,
    its Jacobian (``out.shape + in.shape``) by forward mode: per input leaf, the jvp graph
    batched over the basis of that input's tangents (all in one kernel)."""
    from .batching import batch_graph, moveaxis  # batching imports this module's users
    g = traced.graph
    for a in g.outputs:
        if not a.aval.is_float:
            raise TypeError(f"{traced.loc}: jacfwd of {traced.qualname}: its output must be a "
                            f"float, not {a.aval.dtype}")
    with building(Builder()) as b:
        ins = [Tracer(v) for v in g.inputs]
        cols = []
        for i in wrt:
            jg = _tangent_graph(g, i)
            ishape = tuple(g.inputs[i].aval.shape)
            if not ishape:  # a scalar input: one tangent, no batch
                outs, _ = ad.replay(jg, ins + [P.cast(1.0, g.inputs[i].aval.dtype)])
                cols.append(outs)
                continue
            outs, dims = batch_graph(jg, ins + [_basis(ishape, g.inputs[i].aval.dtype)],
                                     [None] * len(ins) + [0])
            col = []
            for t, d, a in zip(outs, dims, g.outputs):
                if d is None:  # the tangent does not depend on this input: zero
                    shape = tuple(P.dim(s) for s in tuple(P.shape_of(t)) + ishape)
                    col.append(P.zeros(shape, a.aval.dtype))
                    continue
                oshape = [s for j, s in enumerate(P.shape_of(t)) if j != d]
                t = moveaxis(t, d, len(oshape))
                if len(ishape) != 1:
                    t = P.reshape(t, tuple(P.dim(s) for s in oshape + list(ishape)))
                col.append(t)
            cols.append(col)
        res = [cols[j][k] for k in range(len(g.outputs)) for j in range(len(wrt))]
        return make_graph(ins, res, b)
