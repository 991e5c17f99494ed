"""Reverse mode as an IR -> IR transform.

``vjp`` replays a graph into the current builder and then walks its equations backwards,
calling each primitive's adjoint rule (which emits ordinary IR through the op functions, so
the result can be differentiated again). The driver owns the cross-cutting work: summing
cotangents of values used several times, undoing broadcasting, skipping zeros and inactive
(integer, constant, ``stop_gradient``) values.
"""

from __future__ import annotations

from ..errors import GradjitError, at
from . import primitives as P
from .ir import Lit, Var
from .shift import shift_free
from .tracing import Tracer, current_loc, location


def _reader(env):
    def read(a):
        if isinstance(a, Lit):
            return a.value
        return env[a]
    return read


def bind_input_dims(graph, args, env):
    """Map the graph's implicit size variables to the sizes of the actual arguments."""
    for v, x in zip(graph.inputs, args):
        env[v] = x
        xs = P.shape_of(x) if not isinstance(x, (int, float)) else ()
        for d, a in zip(v.aval.shape, xs):
            if isinstance(d, Var) and d not in env:
                env[d] = Tracer(a) if isinstance(a, Var) else a


def replay(graph, args, active=None, residuals=None):
    """Emit ``graph`` applied to ``args`` into the current builder; returns its outputs.

    With ``residuals`` (a dict), equations with active inputs whose primitive has a forward
    hook (``vjp_fwd``: loops, which must record what their adjoint reads while they run) emit
    through it, and what it saves is stored under the equation for ``vjp_bwd``."""
    env = {}
    bind_input_dims(graph, args, env)
    read = _reader(env)
    for e in graph.eqns:
        with location(e.loc):
            ins = [read(a) for a in e.inputs]
            mask = [isinstance(a, Var) and a in active for a in e.inputs] \
                if residuals is not None else None
            if mask is not None and any(mask) and e.prim.vjp_fwd is not None:
                out, residuals[e] = e.prim.vjp_fwd(e, ins, mask)
            elif e.prim.bind_eqn is not None:
                out = e.prim.bind_eqn(e, ins)
            else:
                out = P.bind(e.prim, *ins, **e.p)
        outs = out if e.prim.multiple_results else ((out,) if e.outputs else ())
        for v, o in zip(e.outputs, outs):
            env[v] = o
    return [read(a) for a in graph.outputs], env


def is_float(a):
    return P.dtype_of(a).startswith("float")


def unbroadcast(ct, target_shape, dtype):
    """Sum ``ct`` over the axes that broadcasting added to a value of ``target_shape``.
    A cotangent that still broadcasts to the target is left as it is (no copy)."""
    cs = P.shape_of(ct)
    lead = len(cs) - len(target_shape)
    axes = list(range(max(lead, 0)))
    keep = []
    for k, t in enumerate(target_shape):
        c = cs[k + lead] if k + lead >= 0 else 1
        if isinstance(t, int) and t == 1 and not (isinstance(c, int) and c == 1):
            axes.append(k + lead)
            keep.append(1)
        else:
            keep.append(c)
    if axes:
        ct = P.reshape(P.reduce_sum(ct, tuple(axes)), tuple(keep))
    if P.dtype_of(ct) != dtype:
        ct = P.cast(ct, dtype)
    return ct


def materialize(ct, aval):
    """A full-shape gradient of ``aval``'s dtype from a lazily broadcast cotangent (or zero)."""
    if ct is None and aval.dtype.startswith("tape:"):
        from .control import empty_tape  # control declares the tapes (and imports this module)
        return empty_tape(aval)
    if ct is None:
        return P.zeros(aval.shape, aval.dtype) if aval.shape else P.cast(0.0, aval.dtype)
    ct = P.cast(ct, aval.dtype) if P.dtype_of(ct) != aval.dtype else ct
    cs = P.shape_of(ct)
    if len(cs) == len(aval.shape) and all(
            P.same_dim(c, d) or (isinstance(c, Var) and isinstance(d, Var))
            for c, d in zip(cs, aval.shape)):
        # sizes known only at run time: equal by a check, not by a copy
        for c, d in zip(cs, aval.shape):
            if not P.same_dim(c, d):
                P.check_eq(c, d, "gradient shape mismatch (internal)")
        return ct
    if not P.same_shape(cs, aval.shape):
        ct = P.broadcast_to(ct, aval.shape)
    if not isinstance(ct, Tracer) and aval.shape == ():
        ct = P.cast(ct, aval.dtype)
    return ct


def _indexed_update_of_zeros(c):
    """The equation making ``c`` when ``c`` is zeros with a few elements added (the adjoint of
    reading ``x[i]``), else None."""
    if not isinstance(c, Tracer):
        return None
    e = P._producer(c.ivar)
    if e is not None and e.prim in (P.slice_add_p, P.scatter_add_p) and P._is_zeros(e.inputs[0]):
        return e
    return None


def add_cotangents(a, b):
    """``a + b``; when one is an indexed update of zeros, that update is applied to the other
    instead, so that an array read element by element in a loop body costs O(1) per read, not a
    full-size sum."""
    for x, y in ((a, b), (b, a)):
        e = _indexed_update_of_zeros(y)
        if e is not None and isinstance(x, Tracer) and P.same_shape(P.shape_of(x), P.shape_of(y)) \
                and P.dtype_of(x) == P.dtype_of(y):
            rest = [Tracer(q) if isinstance(q, Var) else q.value for q in e.inputs[1:]]
            return P.bind(e.prim, x, *rest, **e.p)
    if P.dtype_of(a).startswith("tape:"):
        raise reread_tape_error()
    return P.add(a, b)


def reread_tape_error():
    # A second derivative pops a loop's tape twice (its backward loop, then the adjoint of that
    # loop, which rewinds the tape); the cotangents of the two reads would have to meet at
    # positions of the buffer, which a stack of cotangents cannot express.
    return GradjitError(at(current_loc(), "a third derivative through a loop that keeps a tape "
                           "(a loop whose backward pass needs values of earlier iterations) is "
                           "not supported; first and second derivatives are"))


def vjp(graph, args, out_cts, wrt):
    """Replay ``graph`` on ``args`` and return (outputs, cotangents of the inputs in ``wrt``).

    ``out_cts`` holds one cotangent per graph output (None for zero)."""
    active = {graph.inputs[i] for i in wrt if graph.inputs[i].aval.is_diff}
    # a max subtracted for stability (log-softmax, softmax) has a zero derivative: a constant
    shifts = shift_free(graph) if any(e.prim is P.reduce_max_p for e in graph.eqns) else ()
    for e in graph.eqns:
        if e.prim.vjp is not None and any(isinstance(a, Var) and a in active for a in e.inputs):
            active.update(v for v in e.outputs if v.aval.is_diff and v not in shifts)
    residuals = {}  # eqn -> what its forward hook saved (control flow: loops' tapes)
    outs, env = replay(graph, args, active, residuals)
    read = _reader(env)
    cts = {}

    def shape(v):  # sizes of the replayed value (the original graph's size variables are not bound here)
        return P.shape_of(read(v))

    def accumulate(v, c):
        c = unbroadcast(c, shape(v), v.aval.dtype)
        cts[v] = c if v not in cts else add_cotangents(cts[v], c)

    for a, c in zip(graph.outputs, out_cts):
        if c is not None and isinstance(a, Var) and a in active:
            accumulate(a, c)
    for e in reversed(graph.eqns):
        if not any(v in cts for v in e.outputs):
            continue
        if not any(isinstance(a, Var) and a in active for a in e.inputs):
            continue
        if e.prim.vjp is None:
            raise GradjitError(f"{e.loc}: no adjoint rule for primitive '{e.prim.name}'")
        ct_out = [cts.pop(v, None) for v in e.outputs]
        if e.prim.kind != "elementwise":  # only elementwise rules take lazily broadcast cts
            ct_out = [c if c is None or P.same_shape(P.shape_of(c), shape(v))
                      else P.broadcast_to(c, shape(v)) for c, v in zip(ct_out, e.outputs)]
        with location(e.loc):
            if e in residuals:  # the adjoint of a forward hook gets what it saved
                res = e.prim.vjp_bwd(tuple(ct_out), [read(a) for a in e.inputs],
                                     [read(v) for v in e.outputs], residuals[e], **e.p)
            elif e.prim.multiple_results:
                ct_out = [c if c is not None else materialize(None, v.aval.update(shape=shape(v)))
                          for c, v in zip(ct_out, e.outputs)]
                res = e.prim.vjp(tuple(ct_out), [read(a) for a in e.inputs],
                                 [read(v) for v in e.outputs], **e.p)
            else:
                res = e.prim.vjp(ct_out[0], [read(a) for a in e.inputs],
                                 [read(v) for v in e.outputs], **e.p)
            if len(res) != len(e.inputs):
                raise GradjitError(f"adjoint of {e.prim.name} returned {len(res)} cotangents "
                                   f"for {len(e.inputs)} inputs")
            for a, r in zip(e.inputs, res):
                if r is not None and isinstance(a, Var) and a in active:
                    if e.outputs and e.prim.kind == "elementwise":
                        # An operand broadcast by this equation receives the sum of the
                        # cotangent over the broadcast axes; a lazily broadcast cotangent
                        # must first stand for every element it represents.
                        o = shape(e.outputs[0])
                        if not P.same_shape(shape(a), o) and not P.same_shape(P.shape_of(r), o):
                            r = P.broadcast_to(r, o)
                    accumulate(a, r)
    return outs, [cts.get(graph.inputs[i]) for i in wrt]
