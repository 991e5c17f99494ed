"""``gj.checkpoint``: a region whose intermediate values the backward pass recomputes instead
of reading them from the forward pass.

Traced, ``checkpoint(fun)(*args)`` is one ``custom_vjp`` equation (custom.py) built from
``fun``'s graph rather than from user rules: ``fwd`` is the graph itself, its residuals are
the region's inputs only, and ``bwd`` re-runs the graph on copies of those inputs
(``recompute``, an identity CSE never merges, so the optimiser cannot fold the recomputation
back into the forward values) and then its adjoint. The forward pass thus keeps nothing of
the region but its inputs for the backward pass; the cost is one more evaluation of the region.
Everything else follows from ``custom_vjp``: forward mode and batching see the plain graph,
second derivatives differentiate ``bwd`` (ordinary IR), the equation is inlined before lowering.

Values of an enclosing trace that ``fun`` closes over are operands of the region too (they get
gradients). Loops already tape only their carried values (each iteration's intermediates are
recomputed from them, control.py), so a checkpointed loop body tapes the same: the carry.
"""

from __future__ import annotations

import functools

from ..errors import TraceError, at
from . import ad, pytree
from . import primitives as P
from .custom import custom_vjp_p
from .ir import Var
from .tracing import Builder, Tracer, bind, building, make_graph


def _backward_graph(g, n_args):
    """(the region's inputs, cotangents of its outputs) -> cotangents of its first ``n_args``
    inputs (the float ones; the others' positions give -1 in ``ct_index``), recomputing the
    region from copies of its inputs."""
    wrt = [k for k in range(n_args) if g.inputs[k].aval.is_float]
    with building(Builder()) as b:
        res = [Tracer(Var(v.aval)) for v in g.inputs]
        cts = [Tracer(Var(o.aval.update(weak=False))) for o in g.outputs]
        xs = [P.bind(P.recompute_p, r) if r.aval.is_float else r for r in res]
        _, grads = ad.vjp(g, xs, cts, wrt)
        outs = [ad.materialize(c, g.inputs[k].aval.update(weak=False))
                for c, k in zip(grads, wrt)]
        index = [-1] * n_args
        for j, k in enumerate(wrt):
            index[k] = j
        return make_graph(res + cts, outs, b), tuple(index)


def checkpoint(fun=None, *, policy=None, snapshots=None):
    """``fun``, whose intermediate values are recomputed in the backward pass instead of being
    kept from the forward pass (see the module docstring). Also ``@gj.checkpoint``. Only the
    default policy (recompute the region from its inputs) is implemented."""
    if policy is not None or snapshots is not None:
        raise NotImplementedError(
            f"gj.checkpoint(policy={policy!r}, snapshots={snapshots!r}): only the default "
            "(recompute the region from its inputs) is implemented; loops already tape only "
            "their carried values")
    if fun is None:
        return checkpoint
    if not callable(fun):
        raise TypeError(f"gj.checkpoint takes a function, not {type(fun).__name__}")
    return Checkpointed(fun)


class Checkpointed:
    """A function under ``gj.checkpoint``: ``fun`` when called outside a trace."""

    def __init__(self, fun):
        self.fun = fun
        functools.update_wrapper(self, fun, updated=())

    def __call__(self, *args, **kwargs):
        return self.fun(*args, **kwargs)

    def __repr__(self):
        return f"<gradjit.checkpoint of {getattr(self.fun, '__qualname__', self.fun)}>"

    def _gj_inline(self, interp, args, kwargs):
        if kwargs:
            raise TraceError(at(interp.loc, "a checkpointed function takes positional "
                                "arguments only"))
        from .transforms import trace  # transforms imports the front end, which imports this
        args = tuple(args)
        traced = trace(self.fun, args, reads=interp.reads)
        if traced.effects:
            raise TraceError(at(traced.loc, f"gj.checkpoint: {traced.qualname} has Python "
                                "side effects, which a recomputation would repeat"))
        interp.guards.extend(traced.guards)
        interp.sources.update(traced.sources)
        g = traced.graph
        ops = [x for a in args for x in pytree.flatten(a)[0]] + list(traced.free)
        n_args = len(ops)
        ops += [interp.recapture(c) for c in traced.captures]
        fwd = g.replace(outputs=tuple(g.outputs) + tuple(g.inputs))  # residuals: the inputs
        bwd, ct_index = _backward_graph(g, n_args)
        res = bind(custom_vjp_p, *ops, fwd=fwd, bwd=bwd, n_args=n_args,
                   n_out=len(g.outputs), ct_index=ct_index)
        return pytree.unflatten(traced.out_tree, list(res[:len(g.outputs)]))
