"""``vmap`` as a Graph -> Graph transform: a batching rule per primitive.

The function is traced once on *per-example* values (the mapped axis removed from every mapped
argument); ``batch_graph`` then walks that graph's equations with every value tagged by the
position of its batch axis (``None``: not batched, the same for every example), and calls
``BATCH_RULES[prim](args, dims, **params) -> (out, out_dim)`` for equations that read a batched
value. Rules emit ordinary IR through the op functions of ``primitives``, so the result is a
normal graph: the batch axis is one more loop axis of the fused kernels (``prange`` under
``target="parallel"``), and the batched graph can be differentiated, jitted or batched again.
Equations that read no batched value are re-emitted unchanged (computed once for the whole
batch), as in ``vmap_rules`` of JAX's autodidax.

Rules put the batch axis first (``moveaxis``) and leave it there, so one transpose at entry is
the only cost of a non-zero ``in_axes``. Sizes are never batched: every example has the same
shape (a size computed from mapped values raises ``TraceError``).

``jacobian_graph`` builds the Jacobian of a traced function in the IR as the vjp batched over
an identity cotangent (one row of the Jacobian per example), so Jacobians compose with every
other transform (``vmap(jacobian(f))``, ``jacobian(vmap(f))``, ``hessian``).
"""

from __future__ import annotations

import numpy as np

from ..errors import GradjitError, TraceError, at
from . import ad, pytree
from . import primitives as P
from .ir import Aval, Lit, Var
from .tracing import Tracer, atom, bind, current_loc, location

BATCH_RULES = {}  # Primitive -> rule(args, dims, **params) -> (out, out_dim) / (outs, out_dims)


# =============================================================================================
# Helpers on batched values
# =============================================================================================


def _err(msg):
    return TraceError(at(current_loc(), f"vmap: {msg}"))


def batch_size(args, dims):
    """The batch size (an int or an int64 ``Var``) read off the first batched operand."""
    for x, d in zip(args, dims):
        if d is not None:
            return P.shape_of(x)[d]
    raise GradjitError("internal error: a batching rule got no batched operand")


_dim = P.dim


def moveaxis(x, src, dst):
    nd = P.ndim(x)
    src, dst = src % nd, dst % nd
    if src == dst:
        return x
    perm = [k for k in range(nd) if k != src]
    perm.insert(dst, src)
    return P.transpose(x, tuple(perm))


def broadcast_batch(x, size, dtype=None):
    """An unbatched value repeated along a new leading batch axis (a filled or broadcast value
    is rebuilt at the larger shape rather than copied)."""
    if not isinstance(x, Tracer):
        if isinstance(x, np.ndarray):
            x = P.lift(x)
        else:
            dt = dtype or P.dtype_of(x)
            return P.full((size,), x, dt)
    shape = (size,) + tuple(_dim(d) for d in P.shape_of(x))
    e = P._producer(x.ivar)
    if e is not None and e.prim is P.full_p:
        v = e.inputs[0]
        return P.full(shape, v.value if isinstance(v, Lit) else Tracer(v), e.p["dtype"])
    if e is not None and e.prim is P.broadcast_to_p:
        v = e.inputs[0]
        if isinstance(v, Lit):
            return P.full(shape, v.value, x.aval.dtype)
        return P.broadcast_to(Tracer(v), shape)
    return P.broadcast_to(x, shape)


def to_front(x, d, size=None):
    """``x`` with its batch axis first (broadcast along a new one when ``d`` is None)."""
    if d is None:
        return broadcast_batch(x, size)
    return moveaxis(x, d, 0)


def _pad(x, rank):
    """A value with its batch axis first, given unit axes after the batch axis so that its
    per-example part has ``rank`` axes (numpy broadcasting aligns from the right)."""
    s = P.shape_of(x)
    r = len(s) - 1
    if r >= rank:
        return x
    return P.reshape(x, (s[0],) + (1,) * (rank - r) + tuple(s[1:]))


def _example_ndim(x, d):
    return P.ndim(x) - (d is not None)


def _unbatched(name, *vals_dims):
    for v, d in vals_dims:
        if d is not None:
            raise _err(f"{name}: a size or index that depends on the mapped values is not "
                       "supported (every example must have the same shape)")


# =============================================================================================
# The batching interpreter
# =============================================================================================


def batch_graph(graph, args, dims, outer=None):
    """Emit ``graph`` applied to ``args`` (value ``k`` batched along axis ``dims[k]``, or not
    batched when ``None``) into the current builder; returns (outputs, their batch axes).
    ``outer``: the (env, dims) of an enclosing graph, for sizes a region shares with it."""
    env, bd = ({}, {}) if outer is None else (dict(outer[0]), dict(outer[1]))
    for v, x, d in zip(graph.inputs, args, dims):
        env[v], bd[v] = x, d
        xs = () if isinstance(x, (int, float, bool)) else tuple(P.shape_of(x))
        if d is not None:
            xs = xs[:d] + xs[d + 1:]
        for dv, a in zip(v.aval.shape, xs):
            if isinstance(dv, Var) and (dv not in env or outer is not None):
                env[dv], bd[dv] = _dim(a), None

    def read(a):
        return a.value if isinstance(a, Lit) else env[a]

    def dim(a):
        return None if isinstance(a, Lit) else bd[a]

    for e in graph.eqns:
        ins = [read(a) for a in e.inputs]
        ds = [dim(a) for a in e.inputs]
        with location(e.loc):
            if all(d is None for d in ds):
                if e.prim.bind_eqn is not None:
                    out = e.prim.bind_eqn(e, ins)
                else:
                    out = P.bind(e.prim, *ins, **e.p)
                outs = out if e.prim.multiple_results else ((out,) if e.outputs else ())
                out_ds = [None] * len(outs)
            else:
                rule = BATCH_RULES.get(e.prim)
                if rule is None and e.prim.expand is not None:  # batched as what it stands for
                    g = e.prim.expand(e)
                    out, od = batch_graph(g, ins[:len(g.inputs)], ds[:len(g.inputs)])
                elif rule is None:
                    raise _err(f"the operation '{e.prim.name}' cannot be batched yet")
                elif e.prim.bind_eqn is not None:  # control flow: sizes shared with regions
                    out, od = rule(ins, ds, _outer=(env, bd), **e.p)
                else:
                    out, od = rule(ins, ds, **e.p)
                if e.prim.multiple_results:
                    outs, out_ds = out, od
                else:
                    outs, out_ds = ((out,), (od,)) if e.outputs else ((), ())
        for v, o, d in zip(e.outputs, outs, out_ds):
            if d is not None and not isinstance(o, Tracer):  # folded to a static value
                d = None
            env[v], bd[v] = o, d
    return [read(a) for a in graph.outputs], [dim(a) for a in graph.outputs]


# =============================================================================================
# Rules, by family
# =============================================================================================


def register(*prims):
    def deco(rule):
        for p in prims:
            BATCH_RULES[p] = rule
        return rule
    return deco


# ---- elementwise n-ary: batch axes first, batched operands padded to the common rank, -------
# ---- unbatched operands broadcast by numpy's right alignment as they are --------------------


def elementwise_rule(prim):
    def rule(args, dims, **params):
        rank = max(_example_ndim(x, d) for x, d in zip(args, dims))
        new = [x if d is None else _pad(moveaxis(x, d, 0), rank) for x, d in zip(args, dims)]
        return bind(prim, *new, **params), 0
    rule.__name__ = f"batch_{prim.name}"
    return rule


def register_elementwise(*prims):
    for p in prims:
        BATCH_RULES[p] = elementwise_rule(p)


register_elementwise(*[p for p in P.ALL.values() if p.kind == "elementwise"
                       and p not in (P.broadcast_to_p, P.full_p, P.slicelen_p)])


@register(P.broadcast_to_p)
def _broadcast_to_rule(args, dims, shape):
    x, sizes = args[0], args[1:]
    _unbatched("broadcast_to", *zip(sizes, dims[1:]))
    target = P._fill_dims(shape, sizes)
    n = batch_size(args, dims)
    x = _pad(moveaxis(x, dims[0], 0), len(target))
    return P.broadcast_to(x, (_dim(n),) + tuple(target)), 0


@register(P.full_p)
def _full_rule(args, dims, shape, dtype):
    value, sizes = args[0], args[1:]
    _unbatched("full", *zip(sizes, dims[1:]))
    target = P._fill_dims(shape, sizes)
    n = P.shape_of(value)[0]
    v = P.reshape(value, (_dim(n),) + (1,) * len(target))
    return P.broadcast_to(v, (_dim(n),) + tuple(target)), 0


@register(P.slicelen_p, P.iota_p, P.check_eq_p)
def _size_rule(args, dims, **params):
    raise _err("a size computed from the mapped values is not supported (every example must "
               "have the same shape)")


@register(P.check_index_p)
def _check_index_rule(args, dims, msg):
    # Every example's index must be in bounds: the largest and the smallest are.
    i, n = args
    if dims[1] is not None:
        return _size_rule(args, dims)
    P.check_index(P.reduce_max(i, (dims[0],)), n, msg)
    P.check_index(P.reduce_min(i, (dims[0],)), n, msg)
    return None, None


# ---- reductions and scans: shift the axes ----------------------------------------------------


def _reduce_rule(prim):
    def rule(args, dims, axes):
        x = moveaxis(args[0], dims[0], 0)
        return bind(prim, x, axes=tuple(a + 1 for a in axes)), 0
    return rule


for _p in P.ALL.values():
    if _p.kind == "reduce":
        BATCH_RULES[_p] = _reduce_rule(_p)


@register(P.cumsum_p)
def _cumsum_rule(args, dims, axis, ndim, reverse):
    x = moveaxis(args[0], dims[0], 0)
    return bind(P.cumsum_p, x, axis=axis + 1, ndim=ndim + 1, reverse=reverse), 0


@register(P.argsort_p)
def _argsort_rule(args, dims, axis, ndim):
    x = moveaxis(args[0], dims[0], 0)
    return bind(P.argsort_p, x, axis=axis + 1, ndim=ndim + 1), 0


# ---- shapes -----------------------------------------------------------------------------------


@register(P.reshape_p)
def _reshape_rule(args, dims, shape):
    x, sizes = args[0], args[1:]
    _unbatched("reshape", *zip(sizes, dims[1:]))
    x = moveaxis(x, dims[0], 0)
    target = P._fill_dims(shape, sizes)
    return P.reshape(x, (_dim(P.shape_of(x)[0]),) + tuple(target)), 0


@register(P.transpose_p)
def _transpose_rule(args, dims, perm):
    x = moveaxis(args[0], dims[0], 0)
    return P.transpose(x, (0,) + tuple(p + 1 for p in perm)), 0


@register(P.concat_p)
def _concat_rule(args, dims, axis, dynamic):
    n = batch_size(args, dims)
    xs, xds = (args[:-1], dims[:-1]) if dynamic else (args, dims)
    if dynamic:
        _unbatched("concatenate", (args[-1], dims[-1]))
    xs = [to_front(x, d, n) for x, d in zip(xs, xds)]
    extra = (args[-1],) if dynamic else ()
    return bind(P.concat_p, *xs, *extra, axis=axis + 1, dynamic=dynamic), 0


# ---- basic indexing ---------------------------------------------------------------------------


def _batched_spec(spec, sizes, size_in, n):
    """Spec, sizes and size operands of a slice with a full leading batch axis added."""
    spec = (("s", None, None, 1),) + tuple(spec)
    if isinstance(n, Var):
        return spec, (P.DYN,) + tuple(sizes), [Tracer(n)] + list(size_in)
    return spec, (int(n),) + tuple(sizes), list(size_in)


@register(P.slice_p)
def _slice_rule(args, dims, spec, sizes):
    x, dyn = args[0], args[1:]
    vals, size_in = P._split_dyn(spec, sizes, dyn)
    vdims, sdims = P._split_dyn(spec, sizes, dims[1:])
    _unbatched("slice", *zip(size_in, sdims))
    if any(d is not None for d in vdims):
        return _slice_batched_index(x, dims[0], spec, sizes, vals, vdims, size_in), 0
    x = moveaxis(x, dims[0], 0)
    spec2, sizes2, size_in2 = _batched_spec(spec, sizes, size_in, P.shape_of(x)[0])
    return bind(P.slice_p, x, *vals, *size_in2, spec=spec2, sizes=sizes2), 0


def _slice_batched_index(x, xd, spec, sizes, vals, vdims, size_in):
    """``x[i, ...]`` where an integer index differs per example: a gather over the axes indexed
    by batched integers (moved first), after slicing the others."""
    n = batch_size(list(vals) + [x], list(vdims) + [xd])
    it = iter(zip(vals, vdims))
    entries = []
    for s in spec:
        ops = [next(it) if v == P.DYN else (v, None) for v in s[1:]]
        entries.append((s[0], ops))
    if any(kind == "s" and any(d is not None for _, d in ops[:2]) for kind, ops in entries):
        raise _err("a slice whose bounds differ between examples is not supported "
                   "(its elements could be gathered with an index array instead)")
    gathered = [k for k, (kind, ops) in enumerate(entries) if kind == "i" and ops[0][1] is not None]
    # 1. apply the unbatched part of the index, keeping the batched-integer axes whole
    sub_spec, sub_vals, kept = [], [], []
    for k, (kind, ops) in enumerate(entries):
        if k in gathered:
            sub_spec.append(("s", None, None, 1))
            kept.append(k)
            continue
        sub_spec.append((kind,) + tuple(P.DYN if isinstance(v, Tracer) else v for v, _ in ops))
        sub_vals.extend(v for v, _ in ops if isinstance(v, Tracer))
        if kind == "s":
            kept.append(k)
    if xd is not None:
        x = moveaxis(x, xd, 0)
    y = x
    if any(s != ("s", None, None, 1) for s in sub_spec):
        # rebuild through ``index`` so that the sizes of the sliced axes are computed again
        idx = []
        vit = iter(sub_vals)
        for s in sub_spec:
            if s[0] == "i":
                idx.append(next(vit) if s[1] == P.DYN else s[1])
            else:
                b = [next(vit) if v == P.DYN else v for v in s[1:3]]
                idx.append(slice(b[0], b[1], s[3]))
        lead = (slice(None),) if xd is not None else ()
        y = P.index(x, lead + tuple(idx))
    # 2. the batched-integer axes of y, first (after the batch axis when y is batched)
    off = 1 if xd is not None else 0
    pos = [off + kept.index(k) for k in gathered]
    rest = [a for a in range(P.ndim(y)) if a not in pos and a >= off]
    y = P.transpose(y, tuple(range(off)) + tuple(pos) + tuple(rest)) if pos != list(
        range(off, off + len(pos))) else y
    idx_arrays = []
    for k in gathered:
        v, d = entries[k][1][0]
        v = P.cast(moveaxis(v, d, 0), "int64")
        # a negative index counts from the end, as numpy
        size = P.shape_of(x)[off + k]
        v = P.select(P.lt(v, 0), P.add(v, _dim(size)), v)
        idx_arrays.append(v)
    if xd is not None:
        idx_arrays = [P.arange(_dim(n))] + idx_arrays
    return bind(P.gather_p, y, *idx_arrays)


@register(P.slice_add_p)
def _slice_add_rule(args, dims, spec, sizes):
    acc, v, dyn = args[0], args[1], args[2:]
    vals, size_in = P._split_dyn(spec, sizes, dyn)
    vdims, sdims = P._split_dyn(spec, sizes, dims[2:])
    _unbatched("slice_add", *zip(size_in, sdims))
    n = batch_size(args, dims)
    if any(d is not None for d in vdims):
        return _slice_add_batched_index(acc, dims[0], v, dims[1], spec, vals, vdims, n), 0
    acc = to_front(acc, dims[0], _dim(n))
    v = to_front(v, dims[1], _dim(n))
    spec2, sizes2, size_in2 = _batched_spec(spec, sizes, size_in, P.shape_of(acc)[0])
    return bind(P.slice_add_p, acc, v, *vals, *size_in2, spec=spec2, sizes=sizes2), 0


@register(P.slice_set_p)
def _slice_set_rule(args, dims, spec, sizes):
    """``x[spec] = v`` in every example: one write with the batch axis in front (the written
    position must be the same in all examples)."""
    x, v, dyn = args[0], args[1], args[2:]
    vals, size_in = P._split_dyn(spec, sizes, dyn)
    vdims, sdims = P._split_dyn(spec, sizes, dims[2:])
    _unbatched("slice_set", *zip(size_in, sdims))
    if any(d is not None for d in vdims):
        raise _err("writing into an array at a position that differs between examples is "
                   "not supported")
    n = batch_size(args, dims)
    x = to_front(x, dims[0], _dim(n))
    spec2, sizes2, size_in2 = _batched_spec(spec, sizes, size_in, P.shape_of(x)[0])
    if dims[1] is not None:
        v = to_front(v, dims[1], _dim(n))
        if P.ndim(v) == 1 and len(sizes2) > 1:  # one value per example, filled in
            v = P.reshape(v, (_dim(n),) + (1,) * (len(sizes2) - 1))
    return bind(P.slice_set_p, x, v, *vals, *size_in2, spec=spec2, sizes=sizes2), 0


def _slice_add_batched_index(acc, ad, v, vd, spec, vals, vdims, n):
    """``acc[i, ...] += v`` where an integer position differs per example: a scatter_add over
    the integer-indexed axes (moved first) and the batch position."""
    it = iter(zip(vals, vdims))
    entries = [(s[0], [next(it) if x == P.DYN else (x, None) for x in s[1:]]) for s in spec]
    if any(kind == "s" and ops[:3] != [(None, None), (None, None), (1, None)]
           for kind, ops in entries):
        raise _err("adding into a slice of an array at a position that differs between "
                   "examples is not supported")
    acc = to_front(acc, ad, _dim(n))
    v = to_front(v, vd, _dim(n))
    nd = P.ndim(acc) - 1
    ints = [k for k, (kind, _) in enumerate(entries) if kind == "i"]
    perm = (0,) + tuple(1 + k for k in ints) + tuple(1 + k for k in range(nd) if k not in ints)
    acc_t = P.transpose(acc, perm)
    idx = [P.arange(_dim(n))]
    for k in ints:
        x, d = entries[k][1][0]
        x = P.cast(moveaxis(x, d, 0), "int64") if d is not None else x
        size = P.shape_of(acc)[1 + k]
        idx.append(P.select(P.lt(x, 0), P.add(x, _dim(size)), x) if isinstance(x, Tracer)
                   else (int(x) % size if isinstance(size, int) else x))
    idx = [i if isinstance(i, Tracer) else P.full((_dim(n),), i, "int64") for i in idx]
    out = bind(P.scatter_add_p, acc_t, P.cast(v, P.dtype_of(acc)), *idx)
    return P.transpose(out, tuple(np.argsort(perm).tolist()))


# ---- integer-array indexing -------------------------------------------------------------------


def _index_arrays(idx, dims, n, x_batched):
    """Index arrays for a gather/scatter on a batched operand: batched ones padded to the
    common rank, and the batch position ``arange(n)`` first when the array is batched."""
    rank = max(_example_ndim(i, d) for i, d in zip(idx, dims))
    new = [i if d is None else _pad(moveaxis(i, d, 0), rank) for i, d in zip(idx, dims)]
    if x_batched:
        b = P.reshape(P.arange(_dim(n)), (_dim(n),) + (1,) * rank)
        new = [b] + new
    return new, rank


@register(P.gather_p)
def _gather_rule(args, dims):
    x, idx = args[0], args[1:]
    n = batch_size(args, dims)
    xb = dims[0] is not None
    if xb:
        x = moveaxis(x, dims[0], 0)
    new, _ = _index_arrays(idx, dims[1:], n, xb)
    return bind(P.gather_p, x, *new), 0


@register(P.scatter_add_p)
def _scatter_add_rule(args, dims):
    acc, v, idx = args[0], args[1], args[2:]
    n = batch_size(args, dims)
    acc = to_front(acc, dims[0], _dim(n))
    new, _ = _index_arrays(idx, dims[2:], n, True)
    rest = P.shape_of(acc)[1 + len(idx):]
    ishape = P.broadcast_shapes(*[P.shape_of(i) for i in new])
    target = tuple(ishape) + tuple(rest)
    if dims[1] is None:
        v = P.broadcast_to(v, tuple(_dim(d) for d in target))
    else:
        v = _pad(moveaxis(v, dims[1], 0), len(target) - 1)
        v = P.broadcast_to(v, tuple(_dim(d) for d in target))
    return bind(P.scatter_add_p, acc, v, *new), 0


# ---- matmul -----------------------------------------------------------------------------------


@register(P.matmul_p)
def _matmul_rule(args, dims):
    (a, b), (da, db) = args, dims
    ra, rb = _example_ndim(a, da), _example_ndim(b, db)
    if db is None:
        # only the left operand is batched: one 2-D product over the stacked rows (BLAS)
        a = moveaxis(a, da, 0)
        if ra == 1:
            return bind(P.matmul_p, a, b), 0  # (n, k) @ (k[, m])
        nb, rows, k = P.shape_of(a)
        a2 = P.reshape(a, (P.mul(_dim(nb), _dim(rows)), _dim(k)))
        y = bind(P.matmul_p, a2, b)
        out = (_dim(nb), _dim(rows)) + ((_dim(P.shape_of(b)[1]),) if rb == 2 else ())
        return P.reshape(y, out), 0
    if da is None and rb == 1:
        # a @ v for a batch of vectors v: the rows v @ a.T
        b = moveaxis(b, db, 0)
        return bind(P.matmul_p, b, P.transpose(a) if ra == 2 else a), 0
    # both batched, or a batch of matrices on the right: a broadcast product summed over the
    # contracted axis (one fused loop; the usual case is many small matrices)
    A = a if da is None else moveaxis(a, da, 0)
    Bm = b if db is None else moveaxis(b, db, 0)
    if rb == 2:
        A = P.reshape(A, tuple(P.shape_of(A)) + (1,))
    if ra == 2:
        s = tuple(P.shape_of(Bm))
        pos = 0 if db is None else 1
        Bm = P.reshape(Bm, s[:pos] + (1,) + s[pos:])
    prod = P.mul(A, Bm)
    axis = P.ndim(prod) - (2 if rb == 2 else 1)
    return P.reduce_sum(prod, axis), 0


# ---- a loop over the examples: for operations with no batched form (LAPACK on one matrix) ----


def loop_rule(prim):
    """``prim`` applied to each example in turn inside a ``for`` loop over the batch, each
    result written into its row of the output."""
    def rule(args, dims, **params):
        from . import control as C
        n = batch_size(args, dims)
        args = [x if d is None else moveaxis(x, d, 0) for x, d in zip(args, dims)]
        ex = [atom(x) if d is None else Var(P.aval_of(x).update(shape=tuple(P.shape_of(x)[1:])))
              for x, d in zip(args, dims)]
        outs = prim.shape_rule(*ex, **params)
        accs = [P.zeros((_dim(n),) + tuple(_dim(d) for d in a.shape), a.dtype) for a in outs]

        def body(b, *accs):
            ins = [x if d is None else P.index(x, b) for x, d in zip(args, dims)]
            res = bind(prim, *ins, **params)
            res = res if prim.multiple_results else (res,)
            new = []
            for acc, r in zip(accs, res):
                shp = P.shape_of(r)
                spec = (("i", P.DYN),) + (("s", None, None, 1),) * len(shp)
                sizes = tuple(P.DYN if isinstance(d, Var) else d for d in shp)
                dyn = [b] + [Tracer(d) for d in shp if isinstance(d, Var)]
                new.append(P.slice_add(acc, r, dyn, spec, sizes))
            return new
        res = C.fori(0, _dim(n), 1, accs, body)
        return (res, [0] * len(res)) if prim.multiple_results else (res[0], 0)
    rule.__name__ = f"batch_{prim.name}_by_loop"
    return rule


for _p in (P.det_p, P.inv_p, P.solve_p, P.cholesky_p):
    BATCH_RULES[_p] = loop_rule(_p)


# ---- control flow: regions batched through the region builders of ``control`` ---------------
# Each region is re-traced with ``batch_graph``; which loop-carried values are batched is found
# by a fixed point over trial runs of the body (in a scratch builder). A per-example ``if``
# predicate runs both branches and selects; a per-example ``while`` condition loops while any
# example continues, each example's values frozen once its own condition fails.


def _trial(graph, args, dims, outer):
    """The batch axes of ``graph``'s outputs (emitted into a scratch builder, then dropped)."""
    from .tracing import Builder, building
    _trial_depth[0] += 1
    try:
        with building(Builder()):
            _, ods = batch_graph(graph, args, dims, outer)
    finally:
        _trial_depth[0] -= 1
    return [d is not None for d in ods]


_trial_depth = [0]


def _placeholder(aval, n, batched):
    shape = ((n,) if batched else ()) + tuple(aval.shape)
    return Tracer(Var(aval.update(shape=shape, weak=False)))


def _as_batched(x, d, batched, n):
    """A region's output in the agreed form: batch axis first if ``batched``, else as it is."""
    if not batched:
        return x
    if _is_tape(x):
        return x if d is not None else _batched_tape(x, n)
    return to_front(x, d, _dim(n))


def _select_batched(pred, pd, a, da, b, db, n):
    a, b = to_front(a, da, _dim(n)), to_front(b, db, _dim(n))
    r = max(P.ndim(a), P.ndim(b)) - 1
    return P.select(_pad(moveaxis(pred, pd, 0), r), a, b)


def _cond_rule(args, dims, branches, _outer):
    from . import control as C
    pred, ops = args[0], args[1:]
    pd, ods = dims[0], list(dims[1:])
    n = batch_size(args, dims)
    if pd is not None:
        t, td = batch_graph(branches[0], ops, ods, _outer)
        e, ed = batch_graph(branches[1], ops, ods, _outer)
        return [_select_batched(pred, pd, a, da, b, db, n)
                for a, da, b, db in zip(t, td, e, ed)], [0] * len(t)
    flags = [any(fl) for fl in zip(*[_trial(g, ops, ods, _outer) for g in branches])]

    def branch(g):
        def run():
            outs, ds = batch_graph(g, ops, ods, _outer)
            return [_as_batched(o, d, f, n) for o, d, f in zip(outs, ds, flags)]
        return run
    res = C.cond(pred, branch(branches[0]), branch(branches[1]))
    return res, [0 if f else None for f in flags]


def _carry_flags(body, pre, consts, cds, inits, kds, n, outer):
    """Which carried values are batched: those batched on entry or made batched by the body."""
    flags = [d is not None for d in kds]
    formals = body.inputs[len(pre) + len(consts):]
    while True:
        ph = [_placeholder(f.aval, n, fl) for f, fl in zip(formals, flags)]
        got = _trial(body, list(pre) + list(consts) + ph,
                     [None] * len(pre) + list(cds) + [0 if fl else None for fl in flags], outer)
        new = [a or b for a, b in zip(flags, got)]
        if new == flags:
            return flags
        flags = new


def _for_rule(args, dims, body, n_consts, _outer, backward=False):
    from . import control as C
    rng, consts, inits = args[:3], args[3:3 + n_consts], args[3 + n_consts:]
    cds, kds = dims[3:3 + n_consts], dims[3 + n_consts:]
    n = batch_size(args, dims)
    if any(d is not None for d in dims[:3]):
        return _for_batched_range(rng, dims[:3], consts, cds, inits, kds, body, n, _outer,
                                  backward)
    flags = _carry_flags(body, [rng[0]], consts, cds, inits, kds, n, _outer)
    kdims = [0 if f else None for f in flags]
    inits = [_as_batched(x, d, f, n) for x, d, f in zip(inits, kds, flags)]

    def step(i, *carried):
        outs, ds = batch_graph(body, [i] + list(consts) + list(carried),
                               [None] + list(cds) + kdims, _outer)
        return [_as_batched(o, d, f, n) for o, d, f in zip(outs, ds, flags)]
    return C.fori(*rng, inits, step, backward=backward), kdims


def _for_batched_range(rng, rds, consts, cds, inits, kds, body, n, outer, backward):
    """A ``for`` loop whose range differs per example: ``max(trip)`` iterations, each example
    active for ``trip`` of them (its values frozen otherwise). Tapes are pushed and popped at
    every iteration by all examples, so a loop that runs another one's iterations backwards
    (reverse mode) is aligned to the end, mirroring that loop: it pops the inactive pushes
    first. Parity decides: the reverse of a backward loop (second order) is aligned to the
    start again."""
    from . import control as C
    start, stop, step = [to_front(x, d, _dim(n)) if d is not None else x
                         for x, d in zip(rng, rds)]
    trip = C.trip_count(start, stop, step)
    total = P.convert(P.reduce_max(P.convert(trip, "float64")), "int64")
    kdims = [0] * len(inits)
    inits = [_as_batched(x, d, True, n) for x, d in zip(inits, kds)]

    def step_fn(j, *carried):
        k = P.sub(j, P.sub(total, trip)) if backward else j
        active = P.logical_and(P.ge(k, 0), P.lt(k, trip))
        i = P.add(start, P.mul(P.select(active, k, 0), step))
        outs, ds = batch_graph(body, [i] + list(consts) + list(carried),
                               [0] + list(cds) + kdims, outer)
        outs = [_as_batched(o, d, True, n) for o, d in zip(outs, ds)]
        return [o if _is_tape(o) else _select_batched(active, 0, o, 0, c, 0, n)
                for o, c in zip(outs, carried)]
    return C.fori(0, total, 1, inits, step_fn, backward=backward), kdims


def _while_rule(args, dims, cond, body, n_consts, _outer):
    from . import control as C
    consts, inits = args[:n_consts], args[n_consts:]
    cds, kds = dims[:n_consts], dims[n_consts:]
    n = batch_size(args, dims)
    flags = _carry_flags(body, [], consts, cds, inits, kds, n, _outer)
    ph = [_placeholder(f.aval, n, fl) for f, fl in zip(body.inputs[n_consts:], flags)]
    per_example = _trial(cond, list(consts) + ph, list(cds) + [0 if f else None for f in flags],
                         _outer)[0]
    if per_example:
        flags = [True] * len(flags)  # examples stop at different iterations
    kdims = [0 if f else None for f in flags]
    inits = [_as_batched(x, d, f, n) for x, d, f in zip(inits, kds, flags)]

    def pred(carried):
        (p,), (d,) = batch_graph(cond, list(consts) + list(carried), list(cds) + kdims, _outer)
        return p, d

    def cond_fn(*carried):
        p, d = pred(carried)
        if d is None:
            return [p]
        return [P.gt(P.reduce_sum(P.convert(p, "int64")), 0)]  # while any example continues

    def body_fn(*carried):
        outs, ds = batch_graph(body, list(consts) + list(carried), list(cds) + kdims, _outer)
        outs = [_as_batched(o, d, f, n) for o, d, f in zip(outs, ds, flags)]
        if not per_example:
            return outs
        p, d = pred(carried)
        return [o if _is_tape(o) else _select_batched(p, d, o, 0, c, 0, n)
                for o, c in zip(outs, carried)]
    return C.while_loop(inits, cond_fn, body_fn), kdims


def _is_tape(x):
    return isinstance(x, Tracer) and x.aval.dtype.startswith("tape:")


def _batched_tape(t, n):
    """An empty tape made to hold batched values (the tape is batched before its first push)."""
    from . import control as C
    e = P._producer(t.ivar)
    if (e is None or e.prim is not C.tape_new_p) and _trial_depth[0]:
        return _placeholder(t.aval, n, True)  # a trial run only needs the shapes
    if e is None or e.prim is not C.tape_new_p:
        raise _err("a tape of values that become batched after values were pushed")
    cap = e.inputs[0]
    cap = cap.value if isinstance(cap, Lit) else Tracer(cap)
    aval = C._elem_aval(t.aval)
    return C.tape_new(cap, aval.update(shape=(n,) + tuple(aval.shape)))


def _tape_push_rule(args, dims):
    from . import control as C
    t, v = args
    n = batch_size(args, dims)
    t = t if dims[0] is not None else _batched_tape(t, n)
    return C.tape_push(t, to_front(v, dims[1], _dim(n))), 0


def _tape_pop_rule(args, dims):
    from . import control as C
    return C.tape_pop(args[0]), [0, 0]


def _tape_count_rule(args, dims):
    from . import control as C
    return C.tape_count(args[0]), None  # one count for all examples: pushes are not masked


def _tape_rewind_rule(args, dims):
    from . import control as C
    n = args[1]
    if dims[1] is not None:  # a saved count carried as batched: every example holds the same
        n = P.index(moveaxis(n, dims[1], 0), (0,))
    return C.tape_rewind(args[0], n), dims[0]


def _register_control():
    from . import control as C
    for p, r in ((C.cond_p, _cond_rule), (C.for_p, _for_rule), (C.while_p, _while_rule)):
        BATCH_RULES[p] = r  # each also takes ``_outer`` (see ``batch_graph``)
    BATCH_RULES[C.tape_push_p] = _tape_push_rule
    BATCH_RULES[C.tape_pop_p] = _tape_pop_rule
    BATCH_RULES[C.tape_new_p] = _tape_new_rule
    BATCH_RULES[C.tape_count_p] = _tape_count_rule
    BATCH_RULES[C.tape_rewind_p] = _tape_rewind_rule


def _tape_new_rule(args, dims, shape, dtype):
    """A tape whose initial capacity (a hint) differs per example: the largest; the tape
    itself is batched by the first push of batched values."""
    from . import control as C
    cap, sizes = args[0], args[1:]
    _unbatched("tape", *zip(sizes, dims[1:]))
    cap = P.convert(P.reduce_max(P.convert(moveaxis(cap, dims[0], 0), "float64")), "int64")
    sizes = [x.ivar if isinstance(x, Tracer) else x for x in sizes]
    return C.tape_new(cap, Aval(dtype, P._fill_dims(shape, sizes))), None


_register_control()


# =============================================================================================
# The transform: trace on per-example values, batch, place the output axes
# =============================================================================================


def _check_axis(ax, what):
    if ax is None:
        return
    if isinstance(ax, (bool, np.bool_)) or not isinstance(ax, (int, np.integer)):
        raise TypeError(f"vmap {what} must be an int, None, or a tuple of them (per argument), "
                        f"not {type(ax).__name__}")


def _leaf_axes(spec, value, what):
    """One axis (or None) per leaf of ``value``, from an int/None or a matching container."""
    if spec is None or isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
        _check_axis(spec, what)
        return [None if spec is None else int(spec)] * len(pytree.flatten(value)[0])
    if isinstance(spec, (tuple, list)) and isinstance(value, (tuple, list)) \
            and len(spec) == len(value):
        return [a for s, v in zip(spec, value) for a in _leaf_axes(s, v, what)]
    if isinstance(spec, dict) and isinstance(value, dict) and set(spec) == set(value):
        return [a for k in sorted(value) for a in _leaf_axes(spec[k], value[k], what)]
    _check_axis(spec, what)  # a wrong type: raises
    raise ValueError(f"vmap {what} {spec!r} does not match the structure of the value it "
                     "describes")


def _normalize(ax, rank, what, loc):
    if ax is None:
        return None
    if not -rank <= ax < rank:
        raise GradjitError(at(loc, f"vmap {what}={ax} is out of range for a value of rank "
                              f"{rank - (1 if what == 'out_axes' else 0)}"))
    return ax % rank


def vmap_call(fun, args, in_axes, out_axes, interp):
    """Trace ``fun`` on per-example values of ``args`` (Tracers / static values of the caller's
    trace) and emit the batched graph into the current builder; returns the result pytree."""
    from .transforms import trace  # (transforms imports this module)
    loc = interp.loc or current_loc()
    args = tuple(args)
    if isinstance(in_axes, tuple):
        if len(in_axes) != len(args):
            raise ValueError(f"vmap in_axes has {len(in_axes)} entries but the function was "
                             f"called with {len(args)} positional arguments")
        specs = in_axes
    else:
        specs = (in_axes,) * len(args)
    leaves, axes, ex_args, n = [], [], [], None
    for a, spec in zip(args, specs):
        ls, tree = pytree.flatten(a)
        axs = _leaf_axes(spec, a, "in_axes")
        ex = []
        for x, ax in zip(ls, axs):
            if ax is not None:
                if isinstance(x, (np.ndarray, list)):
                    x = P.lift(np.asarray(x))
                if not isinstance(x, Tracer) or x.ndim == 0:
                    raise GradjitError(at(loc, f"vmap in_axes={ax} asks to map over an axis of a "
                                          "value of rank 0"))
                ax = _normalize(ax, x.ndim, "in_axes", loc)
                s = x.aval.shape
                size = s[ax]
                if n is None:
                    n = size
                elif not P.same_dim(size, n):
                    msg = at(loc, "vmap got mapped axes of different sizes: "
                             f"{P.fmt_shape((n,))[1:-2]} and {P.fmt_shape((size,))[1:-2]}")
                    if isinstance(size, int) and isinstance(n, int):
                        raise P.ShapeError(msg)
                    P.check_eq(size, n, msg)
                ex.append(Tracer(Var(x.aval.update(shape=s[:ax] + s[ax + 1:]))))
            else:
                ex.append(x)
            leaves.append(x)
            axes.append(ax)
        ex_args.append(pytree.unflatten(tree, ex))
    if n is None:
        raise GradjitError(at(loc, "vmap needs at least one mapped argument (in_axes are all "
                              "None)"))
    traced = trace(fun, tuple(ex_args), reads=interp.reads)
    if traced.effects:  # once per call or once per item? neither is what a reader expects
        raise TraceError(at(traced.effects[0].where, "a Python side effect (on state outside "
                            "the function) inside gj.vmap is not supported: do it outside the "
                            "vmapped function"))
    caps = [interp.recapture(c) for c in traced.captures]
    interp.guards.extend(traced.guards)
    interp.sources.update(traced.sources)
    free = list(traced.free)  # the caller's values it closes over: the same for every example
    outs, out_dims = batch_graph(traced.graph, leaves + free + caps,
                                 axes + [None] * (len(free) + len(caps)))
    # out_axes, per output leaf
    skeleton = pytree.unflatten(traced.out_tree, list(range(len(outs))))
    oaxes = _leaf_axes(out_axes, skeleton, "out_axes")
    res = []
    for o, d, ax in zip(outs, out_dims, oaxes):
        if ax is None:
            if d is not None:
                raise GradjitError(at(loc, "vmap out_axes=None for an output that depends on "
                                      "the mapped values"))
            res.append(o)
            continue
        if d is None:
            o, d = broadcast_batch(o, _dim(n)), 0
        ax = _normalize(ax, P.ndim(o), "out_axes", loc)
        res.append(moveaxis(o, d, ax))
    return pytree.unflatten(traced.out_tree, res)


# =============================================================================================
# Jacobians in the IR: the vjp batched over an identity cotangent
# =============================================================================================


def jacobian_graph(traced, wrt, vjp_graph):
    """Graph of the function's inputs -> for each output leaf, for each input leaf in ``wrt``,
    its Jacobian of shape ``out.shape + in.shape``. ``vjp_graph(traced, wrt)`` is the
    reverse-mode graph (inputs..., cotangents...) -> (outputs..., input cotangents...)."""
    from .tracing import Builder, building, make_graph
    g = traced.graph
    n_in = len(g.inputs) - len(traced.captures)
    vg = vjp_graph(traced, wrt)
    with building(Builder()) as b:
        ins = [Tracer(v) for v in g.inputs]
        outs, _ = ad.replay(g, ins)
        res = []
        for j, o in enumerate(outs):
            aval = g.outputs[j].aval
            if not aval.is_float:
                raise TypeError(f"{traced.loc}: jacobian of {traced.qualname}: its output must "
                                f"be a float, not {aval.dtype}")
            shape = tuple(P.shape_of(o))
            dt = aval.dtype
            cts, cdims = [], []
            for k, o2 in enumerate(outs):
                if k != j:
                    cts.append(P.cast(0.0, g.outputs[k].aval.dtype) if not P.shape_of(o2) else
                               P.zeros(P.shape_of(o2), g.outputs[k].aval.dtype))
                    cdims.append(None)
                    continue
                if not shape:
                    cts.append(P.cast(1.0, dt))
                    cdims.append(None)
                    continue
                m = P.size_of(o, range(len(shape)))
                # the identity, built in the kernel: e_k[l] = (k == l)
                i = P.lift(np.arange(int(m))) if isinstance(m, (int, np.integer)) else P.arange(m)
                basis = P.convert(P.eq(P.reshape(i, (m, 1)), i), dt)
                if len(shape) != 1:
                    basis = P.reshape(basis, (m,) + tuple(_dim(d) for d in shape))
                cts.append(basis)
                cdims.append(0)
            args = ins[:n_in] + cts + ins[n_in:]
            adims = [None] * n_in + cdims + [None] * (len(ins) - n_in)
            if all(d is None for d in adims):
                vo, _ = ad.replay(vg, args)
                vd = [None] * len(vo)
            else:
                vo, vd = batch_graph(vg, args, adims)
            grads, gdims = vo[len(outs):], vd[len(outs):]
            row = []
            for gr, gd, i in zip(grads, gdims, wrt):
                ishape = tuple(g.inputs[i].aval.shape)
                full = shape + ishape
                if gd is None:  # the gradient does not depend on the output element
                    gr = P.broadcast_to(gr, tuple(_dim(d) for d in full)) if full else gr
                else:
                    gr = moveaxis(gr, gd, 0)
                    if len(shape) != 1:
                        gr = P.reshape(gr, tuple(_dim(d) for d in full))
                if not isinstance(gr, Tracer) and not full:
                    gr = P.cast(gr, g.inputs[i].aval.dtype)
                row.append(gr)
            res.extend(row)
        return make_graph(ins, res, b)


__all__ = ["BATCH_RULES", "batch_graph", "elementwise_rule", "jacobian_graph",
           "loop_rule", "moveaxis", "register", "register_elementwise", "vmap_call"]
