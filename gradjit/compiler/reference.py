"""A numpy reference evaluator of the IR: the test oracle and the first debugging step.

``evaluate(graph, *args)`` runs a ``Graph`` equation by equation with each primitive's
``impl`` (its numpy semantics, declared in the primitive's stanza), binding the graph's
implicit size variables from the arguments' shapes. It knows nothing about fusion,
scheduling or numba, so a disagreement between it and a compiled kernel points at the
lowering, and a disagreement between it and plain numpy points at a primitive's rules.

With ``check=True`` every result is also compared with its equation's output aval (dtype,
rank and the sizes the shape rule promised), which catches shape rules and ``impl``s that
disagree.

A primitive whose reference semantics are not a plain numpy function (structured control
flow, whose params hold sub-graphs; tapes, whose values are Python tuples) declares
``eval_rule(*values, **params)``, called like ``impl``; it takes precedence over ``impl``.
"""

from __future__ import annotations

import numpy as np

from ..errors import GradjitError, IndexOutOfBounds, ShapeError
from .ir import Lit, Var

__all__ = ["ReferenceMismatch", "evaluate", "evaluate_in"]


class ReferenceMismatch(GradjitError, AssertionError):
    """An ``impl`` result that disagrees with its equation's aval (``check=True``)."""


def _bind_inputs(graph, args, env):
    if len(args) != len(graph.inputs):
        raise TypeError(f"the graph takes {len(graph.inputs)} inputs, {len(args)} given")
    for v, x in zip(graph.inputs, args):
        env[v] = x
    for d, (k, ax) in graph.input_dims().items():
        if d in env:  # a size shared with an enclosing graph
            continue
        shape = np.shape(args[k])
        if ax >= len(shape):
            raise ValueError(f"input {k} should have rank {graph.inputs[k].aval.ndim}, "
                             f"got shape {shape}")
        env[d] = shape[ax]


def _as_value(x, aval):
    """A result in the IR's dtype: rank-0 values become numpy scalars, arrays stay arrays."""
    arr = np.asarray(x)
    if aval is not None and arr.dtype.name != aval.dtype:
        arr = arr.astype(aval.dtype)
    return arr[()] if arr.ndim == 0 else arr


def _is_array_aval(aval):
    try:
        np.dtype(aval.dtype)
    except TypeError:
        return False
    return True


def _check(eqn, v, val, env):
    av = v.aval
    got = np.asarray(val)
    want = tuple(env[d] if isinstance(d, Var) else d for d in av.shape)
    if got.shape != tuple(int(d) for d in want):
        raise ReferenceMismatch(f"{eqn.prim.name} ({eqn.loc}): impl gives shape {got.shape}, "
                              f"the shape rule says {want}")
    if got.dtype.name != av.dtype:
        raise ReferenceMismatch(f"{eqn.prim.name} ({eqn.loc}): impl gives dtype {got.dtype}, "
                              f"the shape rule says {av.dtype}")


def evaluate_in(graph, args, outer_env=None, check=False):
    """Evaluate ``graph`` on ``args`` with the values of an enclosing graph visible."""
    env = dict(outer_env or {})

    def read(a):
        if isinstance(a, Lit):
            return a.value
        try:
            return env[a]
        except KeyError:
            raise ReferenceMismatch(f"unbound variable {a} (the graph does not verify)") from None

    def write(v, x):
        env[v] = x

    _bind_inputs(graph, args, env)
    for e in graph.eqns:
        vals = [read(a) for a in e.inputs]
        prim = e.prim
        if prim.name == "check_index":
            i, n = (int(v) for v in vals)
            if not -n <= i < n:
                raise IndexOutOfBounds(e.p["msg"])
            continue
        if prim.name == "check_eq" or prim.kind == "check":
            a, b = vals
            if int(a) != int(b):
                raise ShapeError(e.p.get("msg", f"sizes {a} and {b} differ"))
            continue
        rule = prim.eval_rule or prim.impl
        if rule is None:
            raise GradjitError(f"primitive '{prim.name}' has no reference implementation "
                               "(impl or eval_rule)")
        out = rule(*vals, **e.p)
        outs = out if prim.multiple_results else ((out,) if e.outputs else ())
        if len(outs) != len(e.outputs):
            raise ReferenceMismatch(f"{prim.name}: impl returned {len(outs)} values for "
                                  f"{len(e.outputs)} outputs")
        for v, x in zip(e.outputs, outs):
            if not _is_array_aval(v.aval):  # e.g. a tape: an opaque Python value
                write(v, x)
                continue
            x = _as_value(x, v.aval) if not check else x
            if check:
                _check(e, v, x, env)
                x = _as_value(x, v.aval)
            write(v, x)
    return [read(a) for a in graph.outputs]


def evaluate(graph, *args, check=False):
    """The outputs of ``graph`` on ``args`` (a list, one numpy value per graph output)."""
    return evaluate_in(graph, args, None, check=check)
