"""``gj.custom_vjp``: a function with a reverse rule of the user's (JAX's convention).

``f = gj.custom_vjp(fun); f.defvjp(fwd, bwd)`` with ``fwd(*args) -> (out, residuals)`` and
``bwd(residuals, cotangent) -> one cotangent per argument`` (a pytree like the argument, or
None for zero). Called from plain Python, ``f`` is ``fun``. Traced, it is one ``custom_vjp``
equation whose params hold two closed graphs:

- ``fwd``: the traced ``fwd``; the equation's outputs are its outputs, ``out``'s leaves then
  the residuals' (residuals are ordinary values: a loop tapes them like any other);
- ``bwd``: the traced ``bwd``, on (residual leaves, cotangent leaves, what ``bwd`` reads from
  outside); the adjoint rule replays it, so the gradient is ordinary IR, fused into the same
  kernel and differentiable again when ``bwd`` is.

The equation stands for its ``fwd`` graph until lowering (``Primitive.expand``: the optimiser
inlines it, so no backend needs a rule), and is batched as that graph. Values ``fwd`` closes
over from an enclosing trace would get no gradient: that is refused, with the line.
Forward mode (``gj.jvp``) pushes tangents through ``fwd``.
"""

from __future__ import annotations

import functools
import threading

from ..errors import TraceError, at
from . import ad, pytree
from . import primitives as P
from .ir import Lit, Var
from .reference import evaluate
from .tracing import Tracer, bind


def _shape(*ins, fwd, bwd, n_args, n_out, ct_index):
    """The outputs' avals in the caller's sizes: ``fwd``'s input sizes are the operands'."""
    sub = {}
    for v, x in zip(fwd.inputs, ins):
        for d, a in zip(v.aval.shape, x.aval.shape):
            if isinstance(d, Var):
                sub[d] = a
    inner = _inner_dims(fwd)
    out = []
    for o in fwd.outputs:
        if any(isinstance(d, Var) and d in inner for d in o.aval.shape):
            raise TraceError("custom_vjp: an output of fwd whose size is computed inside fwd "
                             "is not supported; its sizes must come from the arguments'")
        shape = tuple(sub.get(d, d) if isinstance(d, Var) else d for d in o.aval.shape)
        out.append(o.aval.update(shape=shape) if shape != o.aval.shape else o.aval)
    return tuple(out)


def _inner_dims(g):
    """Size variables defined inside ``g`` (not sizes of its inputs)."""
    outer = {d for v in g.inputs for d in v.aval.shape if isinstance(d, Var)}
    return {v for e in g.eqns for v in e.outputs} - outer


def _vjp(cts, ins, outs, fwd, bwd, n_args, n_out, ct_index):
    """The user's ``bwd`` for the outputs' cotangents; residuals that receive cotangents too
    (a second derivative reads them through ``bwd``) are differentiated through ``fwd``."""
    extra = list(ins[len(fwd.inputs):])
    got, _ = ad.replay(bwd, list(outs[n_out:]) + list(cts[:n_out]) + extra)
    in_cts = [got[k] if k >= 0 else None for k in ct_index]
    res_cts = [None if _is_zero(c) else c for c in cts[n_out:]]
    if any(c is not None for c in res_cts):
        _, more = ad.vjp(fwd, list(ins[:len(fwd.inputs)]), [None] * n_out + res_cts,
                         list(range(n_args)))
        in_cts = [b if a is None else a if b is None else ad.add_cotangents(a, b)
                  for a, b in zip(in_cts, more)]
    return in_cts + [None] * (len(ins) - n_args)


def _is_zero(c):
    """A cotangent nobody sent (the reverse pass fills those in as zeros)."""
    return c is None or (isinstance(c, Tracer) and P._is_zeros(c.ivar)) or \
        (not isinstance(c, Tracer) and not P.shape_of(c) and c == 0)


def _eval(*ins, fwd, bwd, n_args, n_out, ct_index):
    return tuple(evaluate(fwd, *ins[:len(fwd.inputs)]))


def _jvp(ts, ins, outs, fwd, bwd, n_args, n_out, ct_index):
    """Forward mode has no user rule to follow: the tangents of ``fwd`` (the custom reverse
    rule still serves reverse mode; the primal equation is kept for it)."""
    from . import forward  # forward imports ad, as this module does
    k = len(fwd.inputs)
    return tuple(forward.jvp(fwd, list(ins[:k]), list(ts[:k]))[1])


custom_vjp_p = P.primitive("custom_vjp", _shape, multiple_results=True, vjp=_vjp, jvp=_jvp,
                           eval_rule=_eval, expand=lambda e: e.p["fwd"])


class _Tracing(threading.local):
    def __init__(self):
        self.fwd = []  # the custom_vjp functions whose fwd this thread is tracing


_TRACING = _Tracing()


class custom_vjp:  # noqa: N801 - the public name, as in JAX
    """``fun`` with the reverse rule ``defvjp(fwd, bwd)`` gives (see the module docstring)."""

    def __init__(self, fun):
        self.fun = fun
        self.fwd = self.bwd = None
        functools.update_wrapper(self, fun, updated=())

    def defvjp(self, fwd, bwd):
        self.fwd, self.bwd = fwd, bwd
        return self

    def __call__(self, *args, **kwargs):
        return self.fun(*args, **kwargs)

    def __repr__(self):
        return f"<gradjit.custom_vjp of {getattr(self.fun, '__qualname__', self.fun)}>"

    def _gj_inline(self, interp, args, kwargs):
        """Traced: one ``custom_vjp`` equation (fwd and bwd traced on the caller's values)."""
        if self.fwd is None:
            raise TraceError(at(interp.loc, f"{self!r} is called before defvjp(fwd, bwd)"))
        if kwargs:
            raise TraceError(at(interp.loc, "a custom_vjp function takes positional "
                                "arguments only (as in JAX)"))
        args = tuple(args)
        if self in _TRACING.fwd:  # fwd calling the function itself: its plain value
            return interp.call(self.fun, args)
        from .transforms import trace  # transforms imports the front end, which imports this
        _TRACING.fwd.append(self)
        try:
            fwd = trace(self.fwd, args, reads=interp.reads)
        finally:
            _TRACING.fwd.pop()
        self._check_closed(fwd, "fwd", interp)
        tree = fwd.out_tree
        if tree is pytree.LEAF or tree is None or tree[0] not in (tuple, list) \
                or len(tree[1]) != 2:
            raise TraceError(at(fwd.loc, f"custom_vjp: {fwd.qualname} must return a pair "
                                "(output, residuals)"))
        out_tree, res_tree = tree[1]
        n_out = pytree.count(out_tree)
        outs = fwd.graph.outputs
        res_ex = pytree.unflatten(res_tree, [_example(o) for o in outs[n_out:]])
        ct_ex = pytree.unflatten(out_tree, [_example(o) for o in outs[:n_out]])
        bwd = trace(self.bwd, (res_ex, ct_ex), reads=interp.reads)
        self._check_closed(bwd, "bwd", interp)
        ct_index = _cotangent_positions(args, bwd)
        for t in (fwd, bwd):
            interp.guards.extend(t.guards)
            interp.sources.update(t.sources)
        ops = [x for a in args for x in pytree.flatten(a)[0]]
        ops += [interp.recapture(c) for c in fwd.captures]
        ops += [interp.recapture(c) for c in bwd.captures]
        res = bind(custom_vjp_p, *ops, fwd=fwd.graph, bwd=bwd.graph,
                   n_args=len(ops) - len(fwd.captures) - len(bwd.captures), n_out=n_out,
                   ct_index=ct_index)
        return pytree.unflatten(out_tree, list(res[:n_out]))

    @staticmethod
    def _check_closed(traced, what, interp):
        if traced.free:
            raise TraceError(at(traced.loc, f"custom_vjp: {what} ({traced.qualname}) reads "
                                "values of the enclosing traced function, which would get no "
                                "gradient; pass them as arguments"))
        if getattr(traced, "effects", None):
            raise TraceError(at(traced.loc, f"custom_vjp: {what} ({traced.qualname}) has Python "
                                "side effects, which are not supported there"))


def _example(o):
    """A stand-in for a graph output when tracing ``bwd`` (a static output stays static)."""
    return o.value if isinstance(o, Lit) else Tracer(Var(o.aval))


def _cotangent_positions(args, bwd):
    """For each leaf of the arguments, the position of its cotangent among ``bwd``'s outputs,
    or -1 (zero); ``bwd`` returns one entry per argument, None or shaped like the argument."""
    tree = bwd.out_tree
    if tree is pytree.LEAF or tree is None or tree[0] not in (tuple, list) \
            or len(tree[1]) != len(args):
        raise TraceError(at(bwd.loc, f"custom_vjp: {bwd.qualname} must return a tuple of "
                            f"{len(args)} cotangent(s), one per argument (None for zero)"))
    index, k = [], 0
    for a, t in zip(args, tree[1]):
        want = pytree.flatten(a)[1]
        n = pytree.count(want)
        if t is None:
            index += [-1] * n
            continue
        if t != want:
            raise TraceError(at(bwd.loc, f"custom_vjp: a cotangent {bwd.qualname} returns is "
                                "not structured like its argument"))
        index += list(range(k, k + n))
        k += n
    return tuple(index)
