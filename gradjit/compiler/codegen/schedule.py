"""Fusion: group a flat graph's equations into loop nests (backend-neutral).

Elementwise equations over the same iteration shape, the reductions of such values and
gathers/scatters indexed by them form one ``Loop``: one pass over the data with scalar
temporaries. Values computed in a loop are stored to arrays only if something outside the
loop (or the graph's outputs) needs them. A reduction's result is complete only after its
loop, so its users start a new loop. Everything else (matmul, reshape, concatenation, ...) is
a ``Stmt`` of its own; rank-0 arithmetic is a scalar ``Stmt``.

A loop runs over the leading axes of its values; their trailing axes of static size (at most
SMALL elements: the 3 of a batch of 3-vectors, the 1 of keepdims) are unrolled inside it (the
value's "tail"), so reshapes that add or drop unit axes and static ``slice_add``s into such
values (batched Jacobians) stay in the loop. Values that are small and static as a whole are
scalar statements (held as one local per element by the backend). Matrix-vector products whose
matrix rows the loop walks are computed row by row: ``X @ w`` as a dot product per row, and
``X.T @ r`` (or ``r @ X``) accumulated while ``r`` is computed, so ``X`` is read once. A dot
product joins the loop that already reads ``X`` for another product (``x @ A`` and ``A @ x``
in one pass over A), and ``p + q`` with ``p`` such a sum over a square ``X`` adds ``q[i]`` in
at iteration i (no pass of its own).

Two clean-ups keep temporaries few: a ``broadcast_to`` whose operand already has its shape
(sizes equal by a run-time check) is the operand itself (``drop_copies``), and an elementwise
value that only a later loop reads is computed in that loop instead of stored (``_sink``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import primitives as P
from ..ir import Lit, Var
from ..primitives import broadcast_shapes

LOOP_KINDS = ("elementwise", "reduce", "index", "iota", "scatter")

# Values of static shape with at most this many elements live in scalar locals (one per
# element) instead of arrays: no allocation, and LLVM keeps them in registers.
SMALL = 16


def is_small(shape):
    """A static shape small enough to be held as scalars (rank 0 excluded)."""
    if not shape or not all(isinstance(d, int) for d in shape):
        return False
    n = 1
    for d in shape:
        n *= d
    return 0 < n <= SMALL


class Dims:
    """Union-find over size variables that run-time checks proved equal."""

    def __init__(self, graph):
        self.parent = {}
        for e in graph.eqns:
            if e.prim.name == "check_eq":
                a, b = e.inputs
                if isinstance(a, Var) and isinstance(b, Var):
                    ra, rb = self.find(a), self.find(b)
                    if ra is not rb:
                        self.parent[ra] = rb

    def find(self, d):
        while isinstance(d, Var) and d in self.parent:
            d = self.parent[d]
        return d

    def shape(self, s):
        return tuple(self.find(d) if isinstance(d, Var) else d for d in s)


@dataclass
class Loop:
    shape: tuple
    eqns: list = field(default_factory=list)
    produced: set = field(default_factory=set)  # values usable inside the loop body
    pending: set = field(default_factory=set)  # reductions/scatters: complete after the loop
    # pending vectors the loop sums into: row products r @ X (None), and p + q with p such a
    # sum ((p, q, "+" or "-"): q[i] added into p's array at iteration i, see ``accumulation``)
    sums: dict = field(default_factory=dict)


@dataclass
class Stmt:
    eqn: object


def iteration_shape(e):
    if e.prim.kind in ("reduce",):
        return e.inputs[0].aval.shape
    if e.prim.kind == "scatter":  # the index arrays' shape, then the trailing axes of acc
        acc, idx = e.inputs[0], e.inputs[2:]
        return broadcast_shapes(*[i.aval.shape for i in idx]) + acc.aval.shape[len(idx):]
    return e.outputs[0].aval.shape


SCALAR_KINDS = ("elementwise", "reduce", "iota")  # unrolled over small static shapes


def split_tail(shape):
    """(loop axes, tail): the tail is the longest static suffix of at most SMALL elements,
    unrolled inside the loop over the leading axes."""
    k, n = len(shape), 1
    while k > 0 and isinstance(shape[k - 1], int) and n * shape[k - 1] <= SMALL:
        n *= shape[k - 1]
        k -= 1
    return tuple(shape[:k]), tuple(shape[k:])


def _row_op(e, dims):
    """Loop axes of a reshape or static slice_add that may run inside a loop over its leading
    axes (they must keep those axes as they are), else None."""
    if e.prim is P.reshape_p:
        x, v = e.inputs[0], e.outputs[0]
        lx = split_tail(dims.shape(x.aval.shape))[0]
        lv = split_tail(dims.shape(v.aval.shape))[0]
        return lv if lx == lv and lv else None
    if e.prim is P.slice_add_p:
        spec, acc = e.p["spec"], e.inputs[0]
        lead, _ = split_tail(dims.shape(acc.aval.shape))
        if not lead or any(x == P.DYN for s in spec for x in s[1:]):
            return None
        if all(s == ("s", None, None, 1) for s in spec[:len(lead)]):
            return lead
    return None


def row_matmul(e, producer):
    """A matrix-vector product that a loop over the matrix's rows can compute as it goes:
    ("dot", X, w) for ``X @ w`` (one dot product per row), ("acc", X, r) for ``X.T @ r`` or
    ``r @ X`` (row i of X times r[i] added into the result); else None."""
    if e.prim is not P.matmul_p:
        return None
    a, b = e.inputs
    if not (isinstance(a, Var) and isinstance(b, Var)):
        return None
    if a.aval.ndim == 2 and b.aval.ndim == 1:
        t = producer.get(a)
        if t is not None and t.prim is P.transpose_p and t.p["perm"] == (1, 0):
            return ("acc", t.inputs[0], b)
        return ("dot", a, b)
    if a.aval.ndim == 1 and b.aval.ndim == 2:
        return ("acc", b, a)
    return None


def accumulation(e, L, uses, dims):
    """(p, q, "+" or "-") when ``e`` is ``p + q``, ``q + p`` or ``p - q`` with ``p`` a vector of
    the loop's own size that loop ``L`` sums into (a row product ``r @ X`` of a square ``X``, or
    such an accumulation), read by ``e`` alone: iteration i adds ``q[i]`` into p's array, so
    that ``e`` needs no pass of its own; else None."""
    if e.prim not in (P.add_p, P.sub_p) or len(e.outputs) != 1:
        return None
    v = e.outputs[0]
    a, b = e.inputs
    for p, q in [(a, b)] if e.prim is P.sub_p else [(a, b), (b, a)]:
        if not (isinstance(p, Var) and p in L.sums and uses.get(p) == 1) \
                or p.aval.dtype != v.aval.dtype \
                or not dims.shape(p.aval.shape) == dims.shape(v.aval.shape) == L.shape:
            continue
        if isinstance(q, Var) and q.aval.ndim and dims.shape(q.aval.shape) != L.shape:
            continue
        return p, q, "-" if e.prim is P.sub_p else "+"
    return None


def _add_row_product(L, e, mm, producer):
    """Append row product ``e`` to ``L``, next to another product with the same matrix where
    dependences allow, so that the backend reads each row of it in one inner loop."""
    X = mm[1]
    last = max((k for k, u in enumerate(L.eqns)
                if (row_matmul(u, producer) or (None, None))[1] is X), default=None)
    if last is not None and (mm[0] == "dot" or all(  # a dot reads nothing made in the loop
            mm[2] not in u.outputs for u in L.eqns[last + 1:])):
        L.eqns.insert(last + 1, e)
    else:
        L.eqns.append(e)


def drop_copies(graph):
    """``graph`` with each ``broadcast_to`` of a value to its own shape (sizes proved equal by
    run-time checks) replaced by the value (no copy, and matrix products see the operand),
    and each product with a scaled identity matrix (the seeds of Jacobians and Hessians)
    replaced by the scaled operand."""
    dims = Dims(graph)
    producer = {v: e for e in graph.eqns for v in e.outputs}
    subst, eqns, changed = {}, [], False
    for e in graph.eqns:
        if any(isinstance(a, Var) and a in subst for a in e.inputs):
            e = e.replace(inputs=tuple(subst.get(a, a) if isinstance(a, Var) else a
                                       for a in e.inputs))
            for v in e.outputs:
                producer[v] = e
        x = e.inputs[0] if e.inputs else None
        v = e.outputs[0] if e.outputs else None
        if e.prim is P.broadcast_to_p and isinstance(x, Var) and x.aval.dtype == v.aval.dtype \
                and dims.shape(x.aval.shape) == dims.shape(v.aval.shape):
            subst[v] = x
            continue
        if e.prim is P.matmul_p:
            a, b = e.inputs
            for eye, other in ((a, b), (b, a)):
                scale = _identity_scale(eye, producer, dims)
                if scale is None or not isinstance(other, Var) \
                        or other.aval.dtype != v.aval.dtype \
                        or dims.shape(other.aval.shape) != dims.shape(v.aval.shape):
                    continue
                changed = True
                if scale is True:
                    subst[v] = other
                else:
                    scaled = e.replace(prim=P.mul_p, inputs=(scale[0], other), params=scale[1])
                    producer[v] = scaled
                    eqns.append(scaled)
                break
            else:
                eqns.append(e)
            continue
        eqns.append(e)
    if not subst and not changed:
        return graph
    outs = tuple(subst.get(a, a) if isinstance(a, Var) else a for a in graph.outputs)
    from .. import passes  # the identity itself may now be unused
    return passes.dce(graph.replace(eqns=tuple(eqns), outputs=outs))


def _lit_value(d):
    return d.value if isinstance(d, Lit) else d


def _identity_scale(a, producer, dims):
    """True when ``a`` is an identity matrix built by comparing aranges (``arange(n)[:, None]
    == arange(n)``, converted to floats), (literal, mul's params) when it is a literal times
    one, else None."""
    e = producer.get(a) if isinstance(a, Var) else None
    scale = True
    if e is not None and e.prim is P.mul_p:
        x, y = e.inputs
        lit, var = (x, y) if isinstance(x, Lit) else (y, x)
        if not (isinstance(lit, Lit) and isinstance(var, Var)) or lit.aval.dtype != a.aval.dtype:
            return None
        scale, e = (lit, e.params), producer.get(var)
    if e is None or e.prim is not P.convert_p or not e.p["dtype"].startswith("float") \
            or e.outputs[0].aval.ndim != 2:
        return None
    q = producer.get(e.inputs[0])
    if q is None or q.prim is not P.eq_p or not all(isinstance(x, Var) for x in q.inputs):
        return None

    def iota_size(x):
        t = producer.get(x)
        return t.inputs[0] if t is not None and t.prim is P.iota_p else None

    for col, row in (q.inputs, reversed(q.inputs)):
        r = producer.get(col)
        if r is None or r.prim is not P.reshape_p or r.outputs[0].aval.ndim != 2 \
                or r.outputs[0].aval.shape[1] != 1:
            continue
        n, m = iota_size(r.inputs[0]), iota_size(row)
        if n is None or m is None or row.aval.ndim != 1:
            continue
        if dims.find(n) is dims.find(m) if isinstance(n, Var) else _lit_value(n) == _lit_value(m):
            return scale
    return None


def schedule(graph):
    """A list of ``Loop`` and ``Stmt`` in an order that respects dependences."""
    dims = Dims(graph)
    items = []
    producer = {v: e for e in graph.eqns for v in e.outputs}

    def deps_ok(e, loop):
        # operands read as whole arrays (a gather's source, a scatter's accumulator) must be
        # complete before the loop, not computed element by element in it
        whole = e.prim.whole_inputs + ((0,) if e.prim.kind == "scatter" else ())
        return not any(isinstance(a, Var) and (a in loop.pending or k in whole and a in
                                               loop.produced) for k, a in enumerate(e.inputs))

    def blocked_after(e, idx):
        # ``e`` may join loop ``idx`` only if no item after it produces one of e's inputs
        ins = {a for a in e.inputs if isinstance(a, Var)}
        ins |= {d for a in e.inputs for d in a.aval.shape if isinstance(d, Var)}
        for it in items[idx + 1:]:
            outs = it.produced | it.pending if isinstance(it, Loop) else set(it.eqn.outputs)
            if ins & outs:
                return True
        return False

    def find(shape, e):
        for idx in range(len(items) - 1, -1, -1):
            it = items[idx]
            if isinstance(it, Loop) and it.shape == shape and deps_ok(e, it) \
                    and not blocked_after(e, idx):
                return it
            if isinstance(it, Loop) and it.shape == shape:
                return None  # do not reach across a loop of the same shape we could not join
        return None

    uses = {}
    for a in [a for e in graph.eqns for a in e.inputs] + list(graph.outputs):
        if isinstance(a, Var):
            uses[a] = uses.get(a, 0) + 1

    def summed(e):
        """The loop that can add ``e``'s other operand into its sum (see ``accumulation``)."""
        for idx, it in enumerate(items):
            acc = isinstance(it, Loop) and accumulation(e, it, uses, dims)
            if acc:
                q = acc[1]
                ok = not (isinstance(q, Var) and q in it.pending) and not blocked_after(e, idx)
                if ok:
                    return it, acc
        return None

    def reading(e, mm, shape):
        """The last loop over the rows of X that reads them for a row product already and
        that ``X @ w`` may join (X is then read once, at the cost of storing the result)."""
        for idx in range(len(items) - 1, -1, -1):
            it = items[idx]
            if isinstance(it, Loop) and it.shape == shape and deps_ok(e, it) \
                    and not blocked_after(e, idx) and not {mm[1], mm[2]} & it.produced \
                    and any((row_matmul(u, producer) or mm)[1] is mm[1] for u in it.eqns
                            if u.prim is P.matmul_p):
                return it
        return None

    for e in graph.eqns:
        kind = e.prim.kind
        row = _row_op(e, dims) if e.outputs else None
        mm = row_matmul(e, producer)
        if mm is not None and isinstance(mm[1], Var):
            shape = dims.shape(mm[1].aval.shape[:1])
            target = (mm[0] == "dot" and reading(e, mm, shape)) or find(shape, e)
            # a dot per row joins any loop over the rows; the transposed product only one that
            # computes its vector (otherwise BLAS reads the matrix just as well)
            inside = target is not None and mm[2] in target.produced
            if (mm[0] == "dot") != inside and not (target is not None and mm[1] in target.produced):
                if target is None:
                    target = Loop(shape)
                    items.append(target)
                _add_row_product(target, e, mm, producer)
                (target.produced if mm[0] == "dot" else target.pending).update(e.outputs)
                if mm[0] == "acc":
                    target.sums[e.outputs[0]] = None
                continue
        found = summed(e) if kind == "elementwise" else None
        if found is not None:  # p + q with p summed by a loop: that loop adds q in
            target, acc = found
            target.eqns.append(e)
            target.pending.update(e.outputs)
            target.sums[e.outputs[0]] = acc
            continue
        if row is not None:
            # only where the operand it reshapes or adds into is computed in that loop
            target = find(row, e)
            if target is not None and e.inputs[0] in target.produced:
                target.eqns.append(e)
                target.produced.update(e.outputs)
            else:
                items.append(Stmt(e))
        elif kind in LOOP_KINDS and e.outputs and (
                iteration_shape(e) != () or kind == "reduce") and not (
                kind in SCALAR_KINDS and is_small(iteration_shape(e))):
            full = dims.shape(iteration_shape(e))
            # gathers, scatters and iotas index with the loop variables: no tail
            shape = split_tail(full)[0] if kind in SCALAR_KINDS else full
            target = find(shape, e)
            if target is None:
                target = Loop(shape)
                items.append(target)
            target.eqns.append(e)
            if kind == "scatter" or (kind == "reduce" and min(e.p["axes"]) < len(shape)):
                target.pending.update(e.outputs)
            else:
                target.produced.update(e.outputs)
        elif kind == "check" or _scalar_stmt(e):
            # as early as operands allow: small scalar work must not split the loops around it
            items.insert(_earliest(items, e, graph), Stmt(e))
        else:
            items.append(Stmt(e))
    _sink(items, graph)
    return [it for it in items if not isinstance(it, Loop) or it.eqns], dims


def _sink(items, graph):
    """Move elementwise equations whose results only a later loop of the same shape reads
    into that loop (before their first reader), so that they are not stored in between.
    A chain moves as a whole: an equation stays if an operand computed beside it stays."""
    users = {}
    for e in graph.eqns:
        for a in e.inputs:
            if isinstance(a, Var):
                users.setdefault(a, []).append(e)
    outs = {a for a in graph.outputs if isinstance(a, Var)}
    producer = {v: e for e in graph.eqns for v in e.outputs}
    where = {}
    for it in items:
        for e in (it.eqns if isinstance(it, Loop) else [it.eqn]):
            where[id(e)] = it
    for pos, L in enumerate(items):
        if not isinstance(L, Loop):
            continue
        later = [it for it in items[pos + 1:] if isinstance(it, Loop) and it.shape == L.shape]
        made = {v: e for e in L.eqns for v in e.outputs}
        blocked = set()
        while True:
            move = {}  # id(eqn) -> the loop it moves to
            for e in reversed(L.eqns):
                if id(e) in blocked or e.prim.kind != "elementwise" or len(e.outputs) != 1 \
                        or e.outputs[0] in outs or e.outputs[0] in L.pending:
                    continue
                v = e.outputs[0]
                if not all(_aligned(u, v, producer) for u in users.get(v, [])):
                    continue
                dest = {id(move[id(u)]) if id(u) in move else id(where[id(u)])
                        for u in users.get(v, [])}
                T = next((it for it in later if {id(it)} == dest), None)
                if T is not None:
                    move[id(e)] = T
            # an operand computed in L must move to the same loop (else both stay)
            stay = {id(e) for e in L.eqns if id(e) in move for a in e.inputs
                    if isinstance(a, Var) and a in made
                    and move.get(id(made[a])) is not move[id(e)]}
            if not stay:
                break
            blocked |= stay
        if not move:
            continue
        for T in {id(t): t for t in move.values()}.values():
            moved = [e for e in L.eqns if move.get(id(e)) is T]
            T.eqns[:0] = moved
            for e in moved:
                where[id(e)] = T
                T.produced.update(e.outputs)
        L.eqns[:] = [e for e in L.eqns if id(e) not in move]
        gone = {v for e in graph.eqns if id(e) in move for v in e.outputs}
        L.produced.difference_update(gone)


def _aligned(u, v, producer):
    """Whether ``u`` reads ``v`` only at the loop's own coordinates (so ``v`` may be computed
    in the same iteration); a row product reads its vector whole."""
    if u.prim.kind in ("elementwise", "reduce"):
        return True
    mm = row_matmul(u, producer)
    return mm is not None and mm[0] == "acc" and mm[2] is v and mm[1] is not v


def _scalar_stmt(e):
    """Work on small static values or scalars only (no arrays of run-time size), or a view
    (basic indexing): cheap, and placed early so that it does not split loops."""
    if e.prim is P.slice_p or e.prim is P.transpose_p:
        return True
    if not e.outputs or any(not (v.aval.ndim == 0 or is_small(v.aval.shape)) for v in e.outputs):
        return False
    if e.prim.effect or e.prim.name in ("for", "while", "cond") or e.prim.kind == "check":
        return False
    return all(not isinstance(a, Var) or a.aval.ndim == 0 or is_small(a.aval.shape)
               for a in e.inputs)


def _earliest(items, e, graph):
    """Run-time size checks go as early as their operands allow: before any loop that reads
    arrays whose sizes they vouch for (loops may have absorbed later equations)."""
    need = {a for a in e.inputs if isinstance(a, Var)} - set(graph.input_dims())
    pos = len(items)
    while pos > 0:
        it = items[pos - 1]
        outs = it.produced | it.pending if isinstance(it, Loop) else set(it.eqn.outputs)
        if outs & need:
            break
        pos -= 1
    while pos < len(items) and isinstance(items[pos], Stmt) and (
            items[pos].eqn.prim.kind == "check" or _scalar_stmt(items[pos].eqn)):
        pos += 1  # keep checks and scalar statements in program order
    return pos
