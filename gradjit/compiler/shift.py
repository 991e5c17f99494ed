"""Maxima subtracted for numerical stability, whose derivative is exactly zero.

``z - m - log(sum(exp(z - m)))`` (log-softmax) and ``exp(z - m) / sum(exp(z - m))`` (softmax),
with ``m = max(z, axis, keepdims=True)``, do not depend on ``m`` at all: the shift cancels. Reverse
mode would still send a cotangent to ``m`` (it sums to zero, up to rounding) and through the
max's adjoint (a mask of the maxima), several passes over ``z`` for nothing. ``shift_free``
finds such maxima so that ``ad.vjp`` treats them as constants (as JAX's logsumexp does with
stop_gradient), which is exact.

The proof is symbolic: writing ``m = c``, each value that depends on ``c`` is tracked as
``v0 + a*c`` ("add", a) or ``v0 * exp(b*c)`` ("mul", b). Subtraction and addition combine
additive coefficients, exp turns additive into multiplicative, log the converse, a sum over the
max's own axes keeps a multiplicative one (c is constant along them), division and product
combine multiplicative ones. A coefficient of zero is a value free of ``c``. The max qualifies
when every graph output and every other use sees coefficient zero.
"""

from __future__ import annotations

from . import primitives as P
from .ir import Var


def shift_free(graph):
    """The outputs of ``reduce_max`` equations of ``graph`` on which nothing depends."""
    outs = {a for a in graph.outputs if isinstance(a, Var)}
    return {e.outputs[0] for e in graph.eqns
            if e.prim is P.reduce_max_p and e.outputs[0].aval.is_float
            and _cancels(e, graph, outs)}


def _cancels(mx, graph, outs):
    z, axes = mx.inputs[0], tuple(mx.p["axes"])
    zshape = z.aval.shape
    keep = tuple(1 if k in axes else d for k, d in enumerate(zshape))
    red = mx.outputs[0].aval.shape

    def shape_ok(shapes):  # broadcasting only along the max's axes
        return all(P.same_shape(s, zshape) or P.same_shape(s, keep) for s in shapes) or \
            all(P.same_shape(s, red) for s in shapes)

    state = {mx.outputs[0]: ("add", 1)}
    start = graph.eqns.index(mx)
    for e in graph.eqns[start + 1:]:
        ins = [state.get(a) if isinstance(a, Var) else None for a in e.inputs]
        if all(s is None for s in ins):
            continue
        out = _rule(e, ins, axes, zshape, shape_ok)
        if out is None:
            return False  # a use the proof does not cover
        if out[1] != 0:
            state[e.outputs[0]] = out
    return not any(v in outs for v in state)


def _rule(e, ins, axes, zshape, shape_ok):
    """The state of ``e``'s output from its operands' states (None: free of c), or None if
    ``e`` is not covered."""
    p = e.prim
    kinds = {s[0] for s in ins if s is not None}
    if len(kinds) != 1 or len(e.outputs) != 1:
        return None
    kind = kinds.pop()
    coef = [s[1] if s is not None else 0 for s in ins]
    shapes = [a.aval.shape for a in e.inputs if a.aval.ndim] + [e.outputs[0].aval.shape]
    if p in (P.reshape_p, P.broadcast_to_p):  # keepdims: the reduced shape <-> unit axes
        return ins[0] if ins[0] is not None and all(s is None for s in ins[1:]) and all(
            shape_ok([s]) for s in (e.inputs[0].aval.shape, e.outputs[0].aval.shape)) else None
    if p is P.reduce_sum_p:  # c is constant along the max's axes: the sum scales by exp(b*c)
        ok = kind == "mul" and tuple(e.p["axes"]) == axes and \
            P.same_shape(e.inputs[0].aval.shape, zshape)
        return ("mul", coef[0]) if ok else None
    if not shape_ok(shapes):
        return None
    if kind == "add":
        if p is P.add_p:
            return ("add", coef[0] + coef[1])
        if p is P.sub_p:
            return ("add", coef[0] - coef[1])
        if p is P.neg_p:
            return ("add", -coef[0])
        if p is P.exp_p:
            return ("mul", coef[0])
        return None
    if p is P.mul_p:
        return ("mul", coef[0] + coef[1])
    if p is P.div_p:
        return ("mul", coef[0] - coef[1])
    if p is P.log_p:
        return ("add", coef[0])
    return None
