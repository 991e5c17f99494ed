"""Graph-building transforms: tracing a Python function into a graph, and the graphs of its
gradient, vjp and Jacobian with the description of how their flat outputs are assembled.

A transform is described by an object with ``kind`` ("jit", "grad", "value_and_grad", "vjp",
"jacobian", "vmap", "jvp", "jacfwd"), ``argnums``, ``has_aux`` and ``fun`` (the runtime's transform objects);
nothing here compiles or caches: that is the runtime's job.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np

from ..errors import GradjitError, TraceError
from . import ad, effects, frontend, pytree
from . import primitives as P
from .avals import aval_for
from .ir import Var
from .tracing import Builder, Tracer, building, free_vars, make_graph

__all__ = ["Traced", "trace", "grad_graph", "vjp_graph", "transform_graph", "transform_spec",
           "assembler", "wrt_leaves", "name_of", "inline"]




@dataclass
class Traced:
    graph: object
    out_tree: object
    captures: list  # Capture objects of arrays passed at every call
    guards: list  # Capture objects of baked values
    sources: dict
    qualname: str
    loc: str
    reads: list = None  # the static reads of the whole trace (the outermost only)
    free: list = ()  # Tracers of an enclosing trace read by a function defined in it (inputs)
    effects: list = ()  # effects.Effect: outside Python state it changes, replayed at every call


def trace(fun, args, static=None, reads=None):
    """Trace ``fun`` on leaves shaped like ``args`` (a tuple of pytrees). ``reads``: the list of
    an enclosing trace (a transform used inside it) that this trace's static reads join;
    None: the outermost trace, with a list of its own (``Traced.reads``)."""
    interp = frontend.Interpreter([] if reads is None else reads)
    return _trace(fun, args, static or {}, interp, interp.reads if reads is None else None)


def _trace(fun, args, static, interp, reads):
    with building(Builder()) as b:
        tracer_args, inputs = [], []
        for k, a in enumerate(args):
            if k in static:
                tracer_args.append(a)
                interp.statics[id(a)] = a
                continue
            leaves, tree = pytree.flatten(a)
            ts = [Tracer(Var(x.aval if isinstance(x, Tracer) else aval_for(x))) for x in leaves]
            inputs.extend(ts)
            tracer_args.append(pytree.unflatten(tree, ts))
        out = interp.call(fun, tracer_args)
        out_leaves, out_tree = pytree.flatten(out)
        for o in out_leaves:
            if not (isinstance(o, Tracer) or frontend.P.is_static_scalar(o) or isinstance(o, np.ndarray)):
                raise TraceError(f"{fn_loc(fun)}: {name_of(fun)} returned a {type(o).__name__}; "
                                 "traced functions return arrays, numbers, or tuples/lists/dicts of them")
        out_leaves = [o if not isinstance(o, np.ndarray) else P.lift(o) for o in out_leaves]
        cap_tracers = [t for _, t in interp.captured_inputs]
        # a lambda or def of traced code may close over the caller's traced values: they become
        # inputs after the arguments (captures stay last), which nested transforms leave
        # undifferentiated and _gj_inline / vmap_call pass in (the outer transform sees them)
        free = free_vars(b, inputs + cap_tracers, out_leaves)
        graph = make_graph(inputs + free + cap_tracers, out_leaves, b)
    return Traced(graph, out_tree, [c for c, _ in interp.captured_inputs], interp.guards,
                  interp.sources, name_of(fun), fn_loc(fun), reads, free, interp.effects)


def name_of(fun):
    return getattr(fun, "__qualname__", None) or getattr(fun, "__name__", None) or repr(fun)


def fn_loc(fun):
    while not hasattr(fun, "__code__") and hasattr(fun, "__wrapped__"):  # nested transforms
        fun = fun.__wrapped__
    code = getattr(fun, "__code__", None)
    return f"{code.co_filename}:{code.co_firstlineno}" if code else "<unknown>"


# ---------------------------------------------------------------------------------------------
# Graph transforms at the boundary
# ---------------------------------------------------------------------------------------------


def grad_graph(traced, n_args_leaves, wrt, has_aux, with_value):
    """Graph computing [value, aux...] + gradients of the first output w.r.t. leaves ``wrt``."""
    g = traced.graph
    out0 = g.outputs[0] if g.outputs else None
    if out0 is None or out0.aval.shape != ():
        got = "it returns no value" if out0 is None else \
            f"its output has shape {P.fmt_shape(out0.aval.shape)}"
        raise GradjitError(f"{traced.loc}: grad requires {traced.qualname} to return a scalar, "
                           f"but {got}; use gj.vjp or gj.jacobian for non-scalar outputs")
    if not out0.aval.is_float:
        raise TypeError(f"{traced.loc}: grad of {traced.qualname}: its output must be a float, "
                        f"not {out0.aval.dtype}")
    with building(Builder()) as b:
        ins = [Tracer(v) for v in g.inputs]
        seeds = [P.cast(1.0, out0.aval.dtype)] + [None] * (len(g.outputs) - 1)
        outs, cts = ad.vjp(g, ins, seeds, wrt)
        grads = [ad.materialize(c, g.inputs[i].aval) for c, i in zip(cts, wrt)]
        res = (outs if with_value or has_aux else []) + grads
        return make_graph(ins, res, b)


def vjp_graph(traced, wrt):
    """Graph of (inputs..., cotangents of outputs...) -> (outputs..., input cotangents...)."""
    g = traced.graph
    with building(Builder()) as b:
        ins = [Tracer(v) for v in g.inputs]
        ct_ins = [Tracer(Var(o.aval.update(weak=False))) if isinstance(o, Var)
                  else Tracer(Var(P.Aval(o.aval.dtype))) for o in g.outputs]
        outs, cts = ad.vjp(g, ins, ct_ins, wrt)
        grads = [ad.materialize(c, g.inputs[i].aval) for c, i in zip(cts, wrt)]
        n_prim = len(g.inputs) - len(traced.captures)  # captured arrays stay last
        return make_graph(ins[:n_prim] + ct_ins + ins[n_prim:], list(outs) + grads, b)


def wrt_leaves(tf, args, static):
    """(flat leaf indices to differentiate, [(pytree, count, leaves)] per argnum) of the
    arguments ``args`` (static ones by position in ``static``)."""
    nums = tf.argnums if isinstance(tf.argnums, (tuple, list)) else (tf.argnums,)
    starts, pos = [], 0
    for k, a in enumerate(args):
        starts.append(pos)
        if k not in static:
            pos += len(pytree.flatten(a)[0])
    wrt, groups = [], []
    for n in nums:
        if not isinstance(n, int) or not -len(args) <= n < len(args):
            raise GradjitError(f"argnums={tf.argnums!r} does not fit the {len(args)} "
                               "arguments given")
        n %= len(args)
        if n in static:
            raise GradjitError(f"argument {n} is static and cannot be differentiated")
        leaves, tree = pytree.flatten(args[n])
        for x in leaves:
            dt = x.aval.dtype if isinstance(x, Tracer) else aval_for(x).dtype
            if not dt.startswith("float"):
                raise TypeError(f"{tf.kind} of {name_of(tf.fun)} with respect to argument {n}: "
                                f"it holds integer or bool values ({dt}); only float "
                                "arguments can be differentiated")
        idx = list(range(starts[n], starts[n] + len(leaves)))
        wrt.extend(idx)
        groups.append((tree, len(idx), leaves))
    return wrt, groups


def inline(tf, interp, args, static):
    """Apply transform ``tf`` to its function inside a function being traced by ``interp``:
    trace it on the caller's tracers, transform, and replay the result into the caller's graph
    (so transforms compose and a whole optimisation loop becomes one graph)."""
    traced = trace(tf.fun, args, static, reads=interp.reads)
    graph, assemble = transform_graph(tf, traced, args, static)
    leaves = [x for k, a in enumerate(args) if k not in static for x in pytree.flatten(a)[0]]
    caps = [interp.recapture(c) for c in traced.captures]
    interp.guards.extend(traced.guards)
    interp.sources.update(traced.sources)
    if traced.effects and interp.dynamic:
        raise TraceError(f"{interp.loc}: {effects.under_dynamic(name_of(tf.fun) + '()')}")
    interp.effects.extend(traced.effects)
    outs, _ = ad.replay(graph, leaves + list(traced.free) + caps)
    return assemble(outs)


def transform_graph(tf, traced, args, static):
    """(graph, assemble) of transform ``tf`` applied to a traced function; ``assemble`` turns
    the graph's flat outputs into the transform's result structure (None: a flat tuple)."""
    graph, spec = transform_spec(tf, traced, args, static)
    return graph, assembler(spec)


def transform_spec(tf, traced, args, static):
    """(graph, spec): ``spec`` describes the result structure as plain data (pytrees,
    counts, flags), so that a disk-cache manifest can rebuild ``assemble`` without tracing."""
    g = traced.graph
    kind = tf.kind
    out_tree = traced.out_tree
    if kind in ("jit", "vmap"):  # vmap: the batching happened while tracing (Batched._gj_inline)
        return g, ("tree", out_tree)
    if kind in ("grad", "value_and_grad"):
        check_scalar_output(tf, traced)
        wrt, groups = wrt_leaves(tf, args, static)
        with_value = kind == "value_and_grad"
        graph = grad_graph(traced, None, wrt, tf.has_aux, with_value)
        n_out = len(g.outputs) if (with_value or tf.has_aux) else 0
        single = not isinstance(tf.argnums, (tuple, list))
        if tf.has_aux and (out_tree is pytree.LEAF or not isinstance(out_tree, tuple)
                           or out_tree[0] not in (tuple, list) or len(out_tree[1]) != 2):
            raise GradjitError(f"{traced.loc}: has_aux=True needs {traced.qualname} "
                               "to return a pair (scalar, aux)")
        return graph, ("grad", out_tree, tuple((t, n) for t, n, _ in groups), single, n_out,
                       with_value, bool(tf.has_aux))
    if kind == "vjp":
        wrt = list(range(len(g.inputs) - len(traced.captures)))
        return vjp_graph(traced, wrt), None
    if kind == "jacobian":
        # The Jacobian as an IR transform (the vjp batched over an identity cotangent), so it
        # composes like every other transform; one entry per output leaf, each like argnums.
        from .batching import jacobian_graph
        wrt, groups = wrt_leaves(tf, args, static)
        graph = jacobian_graph(traced, wrt, vjp_graph)
        single = not isinstance(tf.argnums, (tuple, list))
        return graph, ("jacobian", out_tree, tuple((t, n) for t, n, _ in groups), single, len(wrt))
    if kind == "jvp":  # tf.fun is a forward.WithTangents: primals' leaves, then tangents'
        from .forward import jvp_graph
        n = sum(len(pytree.flatten(a)[0]) for a in args[:tf.fun.n])
        return jvp_graph(traced, n), ("jvp", out_tree, ())
    if kind == "jacfwd":  # the Jacobian by forward mode, assembled as jacobian's
        from .forward import jacfwd_graph
        wrt, groups = wrt_leaves(tf, args, static)
        single = not isinstance(tf.argnums, (tuple, list))
        return jacfwd_graph(traced, wrt), ("jacobian", out_tree,
                                           tuple((t, n) for t, n, _ in groups), single, len(wrt))
    raise GradjitError(f"{kind} cannot be used here")


def check_scalar_output(tf, traced):
    """grad's output structure: one scalar, or a (scalar, aux) pair under has_aux (the shape
    of the scalar is checked by grad_graph). A tuple would otherwise be taken as its first
    element, silently."""
    out_tree, name = traced.out_tree, f"{tf.kind} requires {traced.qualname} to return a scalar"
    if out_tree is None:
        raise GradjitError(f"{traced.loc}: {name}, but it returned None (a missing return?)")
    if not tf.has_aux and out_tree is not pytree.LEAF:
        what = out_tree[0].__name__ if isinstance(out_tree, tuple) else type(out_tree).__name__
        raise GradjitError(f"{traced.loc}: {name}, but it returned a {what}; to return "
                           "auxiliary data as well, return (scalar, aux) and pass has_aux=True "
                           "(or use gj.vjp or gj.jacobian for several outputs)")


def assembler(spec):
    if spec is None:
        return None
    what, out_tree = spec[0], spec[1]
    if what == "tree":
        return lambda outs: pytree.unflatten(out_tree, outs)
    if what == "jvp":  # (outputs, their tangents)
        return lambda outs: (pytree.unflatten(out_tree, outs[:len(outs) // 2]),
                             pytree.unflatten(out_tree, outs[len(outs) // 2:]))
    if what == "grad":
        _, _, groups, single, n_out, with_value, has_aux = spec

        def assemble(outs):
            vals, gs = outs[:n_out], outs[n_out:]
            grads = _regroup(gs, groups, single)
            if not (with_value or has_aux):
                return grads
            value = pytree.unflatten(out_tree, vals)
            if has_aux:
                value = (value[0], value[1])
                return (value, grads) if with_value else (grads, value[1])
            return value, grads
        return assemble
    _, _, groups, single, n = spec  # jacobian

    def assemble(outs):
        per_out = [_regroup(outs[k * n:(k + 1) * n], groups, single)
                   for k in range(len(outs) // max(n, 1))]
        return pytree.unflatten(out_tree, per_out)
    return assemble


def _regroup(flat, groups, single):
    res, pos = [], 0
    for tree, n in groups:
        res.append(pytree.unflatten(tree, flat[pos:pos + n]))
        pos += n
    return res[0] if single else tuple(res)


# ---------------------------------------------------------------------------------------------
# Calls with keyword arguments: bound to positions by the function's signature
# ---------------------------------------------------------------------------------------------

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def _signature(fun):
    try:
        return inspect.signature(fun)
    except (TypeError, ValueError):
        raise TypeError(f"{name_of(fun)}: its signature cannot be read, so keyword arguments "
                        "and static_argnames cannot be bound to positions") from None


def bind_arguments(fun, args, kwargs):
    """``fun(*args, **kwargs)``'s arguments by position, as Python binds them: a keyword
    argument goes to its parameter's position, and the positions before the last one given
    take their defaults (those after it are left to the function's own defaults)."""
    sig = _signature(fun)
    try:
        given = sig.bind(*args, **kwargs).arguments
    except TypeError as e:
        raise TypeError(f"{name_of(fun)}(): {e}") from None
    pos = [p for p in sig.parameters.values() if p.kind in _POSITIONAL]
    names = [p.name for p in pos]
    for n in given:
        if n not in names and sig.parameters[n].kind != inspect.Parameter.VAR_POSITIONAL:
            raise TypeError(f"{name_of(fun)}(): '{n}' is a keyword-only argument; gradjit "
                            "transforms pass arguments by position: make it a positional "
                            "parameter (with a default, if it has one)")
    last = max((names.index(n) for n in given if n in names), default=-1)
    return tuple(given[p.name] if p.name in given else p.default for p in pos[:last + 1]) + \
        tuple(a for n, v in given.items() if n not in names for a in v)


def static_positions(fun, static_argnums, static_argnames):
    """The static argument positions: ``static_argnums`` and those of ``static_argnames``."""
    nums = tuple(static_argnums) if isinstance(static_argnums, (tuple, list)) else (static_argnums,)
    names = (static_argnames,) if isinstance(static_argnames, str) else tuple(static_argnames)
    if not names:
        return nums
    pos = [p.name for p in _signature(fun).parameters.values() if p.kind in _POSITIONAL]
    for n in names:
        if n not in pos:
            raise GradjitError(f"static_argnames: {name_of(fun)} has no positional parameter "
                               f"'{n}'")
    return tuple(sorted(set(nums) | {pos.index(n) for n in names}))
