"""Splitting a graph over the row chunks of its data: the map/reduce plan behind Dask arrays.

Some inputs of a graph are *chunked*: split into blocks of rows along one axis (a Dask array
chunked along its leading axis). ``split(graph, chunked)`` proves, value by value, how each
depends on the rows, and cuts the graph into stages:

- **rows** values depend on the chunked inputs row by row: row ``i`` of the value is computed
  from row ``i`` of the inputs (elementwise ops aligned on the row axis, reductions and
  products over other axes, transposes, ``X @ w``, a gather ``z[np.arange(n), y]``...). Each
  carries the position of its row axis.
- **global** values do not have a row axis: parameters, sizes, and *row reductions*, which
  sum (or take the max, min, product of) a rows value over its row axis: ``reduce_sum`` over
  the row axis, ``X.T @ r`` and ``X.T @ X`` (a matrix product contracting two row axes). A
  chunk computes the reduction of its own rows (a *partial*); partials combine with the
  reduction's own operation (``add``, ``maximum``, ...) in a tree. ``mean`` is a sum divided
  by the size of the row axis, a size that stands for the *total* row count wherever it is
  used as a value, and for the chunk's row count where it is the shape of a rows value.
- **index** values are positions of rows (``np.arange(n)`` over the row axis): allowed only
  where they pick each row's own element (``z[np.arange(n), y]`` and its adjoint's scatter).

Stages: every value gets a number. A global value's *level* is how many passes over the
chunks must finish before it is known (parameters and sizes: 0; a row reduction: the pass
computing it; anything else: the largest of its inputs'). A rows value's *pass* is the first
pass in which all its global inputs are known (level + 1) and at least its rows inputs'
pass. Then the plan is

    driver stage 0, chunk pass 1, driver stage 1, ..., chunk pass P, driver stage P

where chunk pass ``p`` computes, per chunk, the partials of the reductions of pass ``p`` and
the rows outputs of the graph of pass ``p`` (recomputing the rows values of earlier passes it
needs from the chunk: they are cheap next to reading the chunk again), and driver stage ``k``
computes the global values of level ``k`` from the combined partials. For a loss that is a
sum over rows, forward and backward fuse into one pass; where the backward pass needs a
cotangent computed from row sums back in the rows (a nonlinear function of a row sum, such
as ``slogdet`` of a covariance), a second pass follows, which is what the math requires.

Anything that mixes rows otherwise (``cumsum`` or a slice along the rows, a reversal,
indexing rows by value, a loop reading chunked data, a product pairing rows with rows) has
no such split: ``NotSplittable`` names the operation and the user's line.

Run-time checks whose condition depends on a max/min over rows (the bounds check of an index
array such as ``y`` in ``z[np.arange(n), y]``) are also evaluated per chunk on the chunk's
own partial, before the chunk's kernel uses the indices: the check passes on every chunk
exactly when it passes on the whole.

This module is pure: graphs in, graphs and plain data out. ``evaluate`` runs a plan with the
reference evaluator on numpy arrays cut into chunks (the test oracle); ``execute`` is the
driver loop that the runtime runs with its own executor for the chunk passes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import GradjitError
from . import control as C
from . import primitives as P
from .ir import Aval, Eqn, Graph, Lit, Var, make_params, subgraphs
from .reference import evaluate as _evaluate

__all__ = ["NotSplittable", "Plan", "ChunkStage", "split", "execute", "evaluate", "COMBINE"]


class NotSplittable(GradjitError):
    """A function whose values mix the rows of a chunked input in a way that does not split
    into per-chunk partial reductions (names the operation and the user's line)."""


# ---------------------------------------------------------------------------------------------
# Classes of values
# ---------------------------------------------------------------------------------------------

GLOBAL, ROWS, INDEX = "global", "rows", "index"


@dataclass(frozen=True, slots=True)
class Cls:
    """How a value depends on the rows: ``kind`` (global, rows, index), the position of its row
    axis (rows and index values), and its stage (a global value's level, a rows value's pass)."""

    kind: str
    axis: int | None
    stage: int


G0 = Cls(GLOBAL, None, 0)

# numpy ufunc (by name) combining the partials of each row-reducing primitive
COMBINE = {P.reduce_sum_p: "add", P.reduce_max_p: "maximum", P.reduce_min_p: "minimum",
           P.reduce_fmax_p: "fmax", P.reduce_fmin_p: "fmin", P.reduce_prod_p: "multiply"}
_EXACT_LOCALLY = ("maximum", "minimum", "fmax", "fmin")  # see _local_checks

# Primitives whose size operands are shapes: a row-axis size among them is the chunk's
_SHAPE_OPERANDS = {P.broadcast_to_p, P.full_p, P.reshape_p, P.iota_p, P.slice_p,
                   P.slice_add_p, P.slice_set_p}

# How errors name an operation (the primitive's name otherwise)
_NAMES = {
    P.cumsum_p: "np.cumsum", P.slice_p: "indexing", P.slice_add_p: "indexing (its gradient)",
    P.slice_set_p: "an indexed assignment", P.gather_p: "integer-array indexing",
    P.scatter_add_p: "integer-array indexing (its gradient)", P.matmul_p: "a matrix product",
    P.reshape_p: "a reshape", P.concat_p: "np.concatenate", P.iota_p: "np.arange",
    C.for_p: "a for loop", C.while_p: "a while loop", C.cond_p: "an if statement",
    P.det_p: "np.linalg.det", P.inv_p: "np.linalg.inv", P.solve_p: "np.linalg.solve",
    P.cholesky_p: "np.linalg.cholesky",
}


class _Ctx:
    """What the rules know: the row-axis sizes, the sizes of the global inputs, a location."""

    def __init__(self, graph, chunked, loc):
        self.loc = loc
        self.chunked = dict(chunked)
        self.rows = {}  # row-axis size -> the chunked input (index) it comes from
        for k, ax in sorted(chunked.items()):
            d = graph.inputs[k].aval.shape[ax]
            if not isinstance(d, Var):
                raise GradjitError(f"input {k}: its row axis has the static size {d}; chunked "
                                   "inputs need more than one row")
            self.rows.setdefault(d, k)
        self.row_counts = set()  # global scalars computed from the row count (loop bounds)
        self.global_dims = {d for k, v in enumerate(graph.inputs) if k not in chunked
                            for d in v.aval.shape if isinstance(d, Var)}

    def refuse(self, e, why, name=None):
        name = name or _NAMES.get(e.prim, f"'{e.prim.name}'")
        loc = e.loc or self.loc
        return NotSplittable(f"{loc + ': ' if loc else ''}{name} cannot be split over the row "
                             f"chunks of a Dask array: {why}")

    def row_axis(self, e, v):
        """The position of the row axis in ``v``'s shape (None: it has none)."""
        axes = [k for k, d in enumerate(v.aval.shape) if isinstance(d, Var) and d in self.rows]
        if len(axes) > 1:
            raise self.refuse(e, "its result pairs every row with every row (an n-by-n array)")
        return axes[0] if axes else None


# ---------------------------------------------------------------------------------------------
# Rules: rule(eqn, classes of its inputs, ctx) -> one (kind, axis or combine) per output
# ---------------------------------------------------------------------------------------------


def _aligned(e, ins, ctx, o, allow_index=False):
    """Every rows (index) input broadcasts its row axis onto the output's axis ``o``."""
    nd = e.outputs[0].aval.ndim
    for a, c in zip(e.inputs, ins):
        if c.kind == INDEX and not allow_index:
            raise ctx.refuse(e, "its values are used in arithmetic (only indexing each row's "
                             "own element, z[np.arange(n), y], is supported)",
                             name="np.arange over the rows")
        if c.kind != GLOBAL and (o is None or c.axis + nd - a.aval.ndim != o):
            raise ctx.refuse(e, "it combines the rows of an array with a different axis or "
                             "with an array of fixed size")


def _elementwise(e, ins, ctx):
    o = ctx.row_axis(e, e.outputs[0])
    _aligned(e, ins, ctx, o)
    return [(ROWS, o) if o is not None else (GLOBAL, None)]


def _broadcast_to(e, ins, ctx):
    o = ctx.row_axis(e, e.outputs[0])
    _aligned(e, ins, ctx, o, allow_index=True)
    if o is None:
        return [(GLOBAL, None)]
    return [(INDEX if ins[0].kind == INDEX else ROWS, o)]


def _reduce(e, ins, ctx):
    (c,) = ins
    axes = e.p["axes"]
    if c.kind == GLOBAL:
        return [(GLOBAL, None)]
    if c.kind == INDEX:
        raise ctx.refuse(e, "it reduces row positions (np.arange over the rows)")
    if c.axis in axes:
        return [("reduce", COMBINE[e.prim])]
    o = c.axis - sum(1 for a in axes if a < c.axis)
    if ctx.row_axis(e, e.outputs[0]) != o:
        raise ctx.refuse(e, "its row axis is lost")
    return [(ROWS, o)]


def _transpose(e, ins, ctx):
    (c,) = ins
    if c.kind == GLOBAL:
        return [(GLOBAL, None)]
    return [(c.kind, e.p["perm"].index(c.axis))]


def _reshape(e, ins, ctx):
    c, x, out = ins[0], e.inputs[0], e.outputs[0]
    o = ctx.row_axis(e, out)
    if c.kind == GLOBAL:
        if o is not None:
            raise ctx.refuse(e, "it gives a global array the row count")
        return [(GLOBAL, None)]
    before_in, before_out = x.aval.shape[:c.axis], out.aval.shape[:o] if o is not None else ()
    if o is None or not all(isinstance(d, int) for d in before_in + before_out) or \
            int(np.prod(before_in)) != int(np.prod(before_out)):
        raise ctx.refuse(e, "it merges or splits the row axis with other axes")
    return [(c.kind, o)]


def _slice_row(e, ins, ctx, what):
    """slice / slice_add / slice_set: the row axis of the sliced array must be kept whole."""
    c = ins[0]
    spec = e.p["spec"]
    if c.kind == INDEX:
        raise ctx.refuse(e, "it slices row positions (np.arange over the rows)")
    if spec[c.axis] != ("s", None, None, 1):
        raise ctx.refuse(e, f"{what} along the rows (x[i], x[a:b] or x[::-1] on the row axis) "
                         "reorders or selects rows")
    return sum(1 for s in spec[:c.axis] if s[0] == "s")


def _slice(e, ins, ctx):
    if ins[0].kind == GLOBAL:
        return [(GLOBAL, None)]
    o = _slice_row(e, ins, ctx, "indexing")
    if ctx.row_axis(e, e.outputs[0]) != o:
        raise ctx.refuse(e, "its row axis is lost")
    return [(ROWS, o)]


def _slice_update(e, ins, ctx):
    c, cv = ins[0], ins[1]
    if c.kind == GLOBAL:
        if cv.kind != GLOBAL:
            raise ctx.refuse(e, "it writes rows into a global array")
        return [(GLOBAL, None)]
    o = _slice_row(e, ins, ctx, "writing")
    v = e.inputs[1]
    if cv.kind == INDEX or (cv.kind == ROWS and v.aval.ndim and
                            cv.axis + _sliced_rank(e.p["spec"]) - v.aval.ndim != o):
        raise ctx.refuse(e, "the written values do not line up with the rows")
    return [(ROWS, c.axis)]


def _sliced_rank(spec):
    return sum(1 for s in spec if s[0] == "s")


def _matmul(e, ins, ctx):
    (a, b), (ca, cb) = e.inputs, ins
    if INDEX in (ca.kind, cb.kind):
        raise ctx.refuse(e, "it multiplies row positions (np.arange over the rows)")
    a_con = ca.kind == ROWS and ca.axis == a.aval.ndim - 1  # a's contracted axis is its last
    b_con = cb.kind == ROWS and cb.axis == 0  # b's is its first
    if a_con and b_con:
        return [("reduce", "add")]  # X.T @ r, X.T @ X: a sum over the rows
    if a_con or b_con:
        raise ctx.refuse(e, "it contracts the rows with an array of fixed size")
    o = ctx.row_axis(e, e.outputs[0])
    if ca.kind == ROWS and cb.kind == ROWS:
        raise ctx.refuse(e, "it pairs rows with rows")
    want = ca.axis if ca.kind == ROWS else \
        (a.aval.ndim - 1) + (cb.axis - 1) if cb.kind == ROWS else None
    if want != o:
        raise ctx.refuse(e, "its row axis is lost")
    return [(ROWS, o) if o is not None else (GLOBAL, None)]


def _index_arrays(e, ins, idx, cidx, ctx, L, o):
    """The index arrays of a gather/scatter broadcast their row axes onto ``o`` (the row axis
    of the index shape, which has rank ``L``)."""
    for a, c in zip(idx, cidx):
        if c.kind != GLOBAL and (o is None or c.axis + L - a.aval.ndim != o):
            raise ctx.refuse(e, "its index arrays do not line up with the rows")


def _picks_own_rows(e, cx, cidx, nidx, L, o, ctx):
    """An array with rows indexed on its leading axes: its row axis must be indexed by the row
    positions themselves (``z[np.arange(n), y]``), or not be indexed at all."""
    if cx.axis < nidx:
        if cidx[cx.axis].kind != INDEX:
            raise ctx.refuse(e, "it picks rows by value (an index array on the row axis)")
    elif o is not None and o != L + cx.axis - nidx:
        raise ctx.refuse(e, "its row axis is lost")
    for k, c in enumerate(cidx):
        if c.kind == INDEX and k != cx.axis:
            raise ctx.refuse(e, "it indexes another axis by row position")


def _gather(e, ins, ctx):
    x, idx, out = e.inputs[0], e.inputs[1:], e.outputs[0]
    cx, cidx = ins[0], ins[1:]
    L = out.aval.ndim - (x.aval.ndim - len(idx))
    o = ctx.row_axis(e, out)
    _index_arrays(e, ins, idx, cidx, ctx, L, o)
    if cx.kind == INDEX:
        raise ctx.refuse(e, "it indexes row positions")
    if cx.kind == ROWS:
        _picks_own_rows(e, cx, cidx, len(idx), L, o, ctx)
    elif any(c.kind == INDEX for c in cidx):
        raise ctx.refuse(e, "it indexes a global array by row position")
    return [(ROWS, o) if o is not None else (GLOBAL, None)]


def _scatter_add(e, ins, ctx):
    acc, v, idx = e.inputs[0], e.inputs[1], e.inputs[2:]
    ca, cv, cidx = ins[0], ins[1], ins[2:]
    L = v.aval.ndim - (acc.aval.ndim - len(idx))
    ov = ctx.row_axis(e, v)
    _index_arrays(e, ins, idx, cidx, ctx, L, ov)
    if ca.kind == INDEX or cv.kind == INDEX:
        raise ctx.refuse(e, "it accumulates row positions")
    if ca.kind == ROWS:
        _picks_own_rows(e, ca, cidx, len(idx), L, ov, ctx)
        return [(ROWS, ca.axis)]
    if cv.kind == GLOBAL and all(c.kind == GLOBAL for c in cidx):
        return [(GLOBAL, None)]
    raise ctx.refuse(e, "it accumulates values of rows into a global array by index (such as "
                     "the gradient of a table looked up by a row's value); not supported yet")


def _concatenate(e, ins, ctx):
    n = len(e.inputs) - (1 if e.p["dynamic"] else 0)
    arrays = ins[:n]
    if all(c.kind == GLOBAL for c in arrays):
        return [(GLOBAL, None)]
    o = ctx.row_axis(e, e.outputs[0])
    if o == e.p["axis"]:
        raise ctx.refuse(e, "it joins arrays along the rows")
    if any(c.kind != ROWS or c.axis != o for c in arrays):
        raise ctx.refuse(e, "it joins rows with arrays that have none")
    return [(ROWS, o)]


def _cumsum(e, ins, ctx):
    (c,) = ins
    if c.kind == GLOBAL:
        return [(GLOBAL, None)]
    if c.kind == ROWS and c.axis != e.p["axis"]:
        return [(ROWS, c.axis)]
    raise ctx.refuse(e, "a cumulative sum over the rows carries a running total from chunk to "
                     "chunk")


def _solve(e, ins, ctx):
    ca, cb = ins
    if ca.kind == GLOBAL and cb.kind == GLOBAL:
        return [(GLOBAL, None)]
    if ca.kind == GLOBAL and cb.kind == ROWS and e.inputs[1].aval.ndim == 2 and cb.axis == 1:
        return [(ROWS, 1)]  # solve(A, B) column by column
    raise ctx.refuse(e, "the rows are not independent columns of its right-hand side")


def _iota(e, ins, ctx):
    o = ctx.row_axis(e, e.outputs[0])
    return [(INDEX, o) if o is not None else (GLOBAL, None)]


def _check_eq(e, ins, ctx):
    a, b = e.inputs
    pair = {x for x in (a, b) if isinstance(x, Var)}
    if pair & set(ctx.rows) and pair & ctx.global_dims:
        raise NotSplittable(
            f"{e.loc or ctx.loc}: a numpy argument has a size that must equal the number of "
            "rows of the Dask arrays: pass it as a Dask array chunked like them "
            "(da.from_array(a, chunks=(X.chunks[0], ...)))")
    return _global_only(e, ins, ctx)


def _global_only(e, ins, ctx):
    """Any other primitive: global in, global out."""
    if all(c.kind == GLOBAL for c in ins) and \
            all(ctx.row_axis(e, v) is None for v in e.outputs):
        return [(GLOBAL, None)] * len(e.outputs)
    if e.prim is C.for_p and any(isinstance(a, Var) and (a in ctx.rows or a in ctx.row_counts)
                                 for a in e.inputs[:3]):
        why = "an element loop over the rows carries its state from row to row"
    elif e.prim in (C.for_p, C.while_p, C.cond_p):
        why = "it reads row-chunked data; loops and branches run on the driver, on global values"
    else:
        why = "it takes a row-chunked array as a whole"
    raise ctx.refuse(e, why)


RULES = {
    P.broadcast_to_p: _broadcast_to, P.transpose_p: _transpose, P.reshape_p: _reshape,
    P.slice_p: _slice, P.slice_add_p: _slice_update, P.slice_set_p: _slice_update,
    P.matmul_p: _matmul, P.gather_p: _gather, P.scatter_add_p: _scatter_add,
    P.concat_p: _concatenate, P.cumsum_p: _cumsum, P.solve_p: _solve, P.iota_p: _iota,
    P.check_eq_p: _check_eq,
}
KIND_RULES = {"elementwise": _elementwise, "reduce": _reduce}


# ---------------------------------------------------------------------------------------------
# Classification
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reduction:
    var: Var  # the reducing equation's output: a partial per chunk, global once combined
    combine: str  # numpy ufunc name
    stage: int  # the pass computing it
    eqn: object


class _Info:
    def __init__(self, ctx):
        self.ctx = ctx
        self.cls = {}
        self.reductions = {}  # Var -> Reduction, in graph order
        self.stage_of = {}  # id(eqn) -> its stage (pass of a chunk equation, else level)
        self.on_chunks = set()  # ids of equations run per chunk (rows, index, reductions)

    def of(self, a):
        return self.cls.get(a, G0) if isinstance(a, Var) else G0


def classify(graph, chunked, loc=None):
    """The class (and stage) of every value of ``graph`` whose inputs ``chunked`` ({input index:
    row axis}) are split into row chunks; raises NotSplittable."""
    ctx = _Ctx(graph, chunked, loc)
    info = _Info(ctx)
    for k, v in enumerate(graph.inputs):
        if k in chunked:
            info.cls[v] = Cls(ROWS, chunked[k], 1)
        elif any(isinstance(d, Var) and d in ctx.rows for d in v.aval.shape):
            raise NotSplittable(f"{loc + ': ' if loc else ''}input {k} has as many rows as the "
                                "chunked inputs but is not chunked")
    for e in graph.eqns:
        ins = [info.of(a) for a in e.inputs]
        rule = RULES.get(e.prim) or KIND_RULES.get(e.prim.kind, _global_only)
        outs = rule(e, ins, ctx)
        glob = max([0] + [c.stage for c in ins])
        chunk = max([1] + [c.stage + (c.kind == GLOBAL) for c in ins])
        if any(kind != GLOBAL for kind, _ in outs):
            info.stage_of[id(e)] = chunk
            info.on_chunks.add(id(e))
        else:
            info.stage_of[id(e)] = glob
        for v, (kind, x) in zip(e.outputs, outs):
            if kind == "reduce":
                info.cls[v] = Cls(GLOBAL, None, chunk)
                info.reductions[v] = Reduction(v, x, chunk, e)
            elif kind == GLOBAL:
                info.cls[v] = Cls(GLOBAL, None, glob)
                if not v.aval.shape and any(isinstance(a, Var) and (a in ctx.rows or
                                                                    a in ctx.row_counts)
                                            for a in e.inputs):
                    ctx.row_counts.add(v)
            else:
                info.cls[v] = Cls(kind, x, chunk)
    return info


# ---------------------------------------------------------------------------------------------
# The plan
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChunkStage:
    """One pass over the chunks. ``graph`` takes the chunks of the inputs ``chunked`` (whole-
    graph input indices; their row axes in ``row_axes_in``), then the global values ``globals``
    (Vars of the whole graph: the driver's), and returns the partials (one per entry of
    ``partials``: (whole-graph Var, numpy ufunc name combining them)) followed by rows outputs
    (their row axes in ``row_axes``)."""

    graph: Graph
    chunked: tuple
    row_axes_in: tuple
    globals: tuple
    partials: tuple
    row_axes: tuple


@dataclass(frozen=True)
class Plan:
    """``drivers[k]``: the graph of driver stage ``k`` (inputs and outputs are Vars of the whole
    graph); ``chunks[p - 1]``: chunk pass ``p``. ``outputs``: per whole-graph output, ``("lit",
    value)``, ``("global", Var)`` or ``("rows", pass, position among the pass's rows outputs,
    row axis)``. ``total``: the Var standing for the total row count where a row-axis size is
    used as a value."""

    graph: Graph
    chunked: dict
    total: Var
    drivers: tuple
    chunks: tuple
    outputs: tuple

    @property
    def passes(self):
        return len(self.chunks)

    def __str__(self):
        parts = []
        for k, d in enumerate(self.drivers):
            if k:
                c = self.chunks[k - 1]
                parts.append(f"-- chunk pass {k} (combine: "
                             f"{', '.join(n for _, n in c.partials) or 'none'}):\n{c.graph}")
            parts.append(f"-- driver stage {k}:\n{d}")
        return "\n".join(parts)


def split(graph, chunked, loc=None):
    """The ``Plan`` of ``graph`` with inputs ``chunked`` ({input index: row axis}) split into
    row chunks. ``loc``: where to point errors of equations without a location."""
    info = classify(graph, chunked, loc)
    total = Var(Aval("int64"))
    outs = [a for a in graph.outputs if isinstance(a, Var)]
    for a in outs:
        if info.of(a).kind == INDEX:
            raise NotSplittable(f"{loc + ': ' if loc else ''}the function returns row "
                                "positions (np.arange over the rows)")
    n_pass = max([0] + [r.stage for r in info.reductions.values()] +
                 [info.of(a).stage for a in outs if info.of(a).kind == ROWS])
    chunks = tuple(_chunk_stage(graph, info, p, total) for p in range(1, n_pass + 1))
    drivers = _driver_stages(graph, info, n_pass, chunks, total)
    outputs = []
    for a in graph.outputs:
        c = info.of(a)
        if isinstance(a, Lit):
            outputs.append(("lit", a.value))
        elif c.kind == GLOBAL:
            outputs.append(("global", a))
        else:
            stage = chunks[c.stage - 1]
            pos = list(stage.graph.outputs[len(stage.partials):]).index(a)
            outputs.append(("rows", c.stage, pos, c.axis))
    return Plan(graph, dict(chunked), total, drivers, chunks, tuple(outputs))


def _uses(eqns):
    """Vars the equations read (operands and the sizes in operand and result shapes), in order
    of first use, and the Vars they define."""
    used, defined = {}, set()
    for e in eqns:
        for a in e.inputs:
            if isinstance(a, Var):
                used.setdefault(a, None)
        for v in (*e.inputs, *e.outputs):
            if isinstance(v, Var):
                for d in v.aval.shape:
                    if isinstance(d, Var):
                        used.setdefault(d, None)
        defined.update(e.outputs)
    return [u for u in used if u not in defined], defined


def _local_checks(graph, info, p):
    """Ids of the checks of level ``p`` (and of the global equations they read) whose condition
    depends on row reductions of pass ``p`` that are all max/min: run on a chunk's own partial,
    such a check passes on every chunk exactly when it passes on the whole data (an index
    bound: the largest index of a chunk is at most the largest of all), so the chunk kernel
    checks its indices before using them."""
    producer = {v: e for e in graph.eqns for v in e.outputs}
    chosen = set()
    for e in graph.eqns:
        if not (e.prim.effect and not e.outputs and id(e) not in info.on_chunks and
                info.stage_of[id(e)] == p):
            continue
        cone, ok, seen = [e], True, set()
        stack = [a for a in e.inputs if isinstance(a, Var)]
        reached = False
        while stack and ok:
            a = stack.pop()
            c = info.of(a)
            if a in seen or c.kind != GLOBAL or c.stage < p:
                continue
            seen.add(a)
            r = info.reductions.get(a)
            if r is not None:
                ok = r.combine in _EXACT_LOCALLY
                reached = True
                continue
            pe = producer.get(a)
            if pe is None:
                continue
            if subgraphs(pe) or pe.prim.effect:
                ok = False
                continue
            cone.append(pe)
            stack.extend(x for x in pe.inputs if isinstance(x, Var))
        if ok and reached:
            chosen.update(id(x) for x in cone)
    return chosen


def _localize(e, rows, total):
    """``e`` with each row-axis size used as a value (not as a shape) replaced by ``total``: in
    a chunk kernel the row-axis sizes are the chunk's, ``mean``'s count is the whole data's."""
    shapes = e.prim in _SHAPE_OPERANDS
    out_dims = {d for v in e.outputs for d in v.aval.shape if isinstance(d, Var)}
    ins = tuple(total if isinstance(a, Var) and a in rows and not (shapes and a in out_dims)
                else a for a in e.inputs)
    return e if ins == e.inputs else e.replace(inputs=ins)


def _chunk_stage(graph, info, p, total):
    ctx = info.ctx
    partials = [r for r in info.reductions.values() if r.stage == p]
    row_outs = list(dict.fromkeys(a for a in graph.outputs if isinstance(a, Var) and
                                  info.of(a).kind == ROWS and info.of(a).stage == p))
    local = _local_checks(graph, info, p)
    need = {r.var for r in partials} | set(row_outs)
    chosen = []
    for e in reversed(graph.eqns):
        mine = id(e) in local or (id(e) in info.on_chunks and info.stage_of[id(e)] <= p and
                                  (e.outputs[0] not in info.reductions or
                                   info.reductions[e.outputs[0]].stage == p))
        if mine and (id(e) in local or any(v in need for v in e.outputs)):
            chosen.append(e)
            need.update(a for a in e.inputs if isinstance(a, Var))
    eqns = [_localize(e, ctx.rows, total) for e in reversed(chosen)]
    free, _ = _uses(eqns)
    for a in row_outs:  # a chunked input returned as it is
        if a in graph.inputs and a not in free:
            free.append(a)
    # chunk inputs: those read, and those whose row-axis size is read (binding it)
    take = {k for k in ctx.chunked if graph.inputs[k] in free}
    take |= {ctx.rows[d] for d in free if d in ctx.rows}
    take = sorted(take)
    chunk_vars = [graph.inputs[k] for k in take]
    glob = [u for u in free if u not in chunk_vars and u not in ctx.rows]
    bound = {d for v in chunk_vars + glob for d in v.aval.shape if isinstance(d, Var)}
    glob = [u for u in glob if u not in bound]
    # The chunk inputs' row counts are equal (the runtime cuts them alike): a check says so
    # to the kernel's scheduler, which fuses loops only over sizes a check proved equal
    # (without it, X's rows and y's rows stay two sizes: separate loops, row-long temporaries).
    dims = list(dict.fromkeys(v.aval.shape[ctx.chunked[k]] for k, v in zip(take, chunk_vars)))
    eqns = [Eqn(P.check_eq_p, (dims[0], d), make_params({"msg": "Dask chunks of different "
                                                          "row counts (internal)"}), ())
            for d in dims[1:]] + eqns
    for u in glob:
        c = info.of(u)
        assert u is total or c.kind == GLOBAL and c.stage < p, (u, c, p)
    stage = Graph(tuple(chunk_vars + glob), tuple(eqns),
                  tuple([r.var for r in partials] + row_outs))
    return ChunkStage(stage, tuple(take), tuple(info.cls[graph.inputs[k]].axis for k in take),
                      tuple(glob), tuple((r.var, r.combine) for r in partials),
                      tuple(info.of(a).axis for a in row_outs))


def _driver_stages(graph, info, n_pass, chunks, total):
    stages = []
    for k in range(n_pass + 1):
        eqns = [e for e in graph.eqns if id(e) not in info.on_chunks and info.stage_of[id(e)] == k]
        free, defined = _uses(eqns)
        stages.append((eqns, free, defined))
    later = set()
    for c in chunks:
        later.update(c.globals)
    for _, free, _ in stages:
        later.update(free)
    later.update(a for a in graph.outputs if isinstance(a, Var))
    out = []
    for eqns, free, defined in stages:
        gives = [v for e in eqns for v in e.outputs if v in later]
        out.append(Graph(tuple(free), tuple(eqns), tuple(gives)))
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# Running a plan
# ---------------------------------------------------------------------------------------------


def typed(x, aval):
    """``x`` in the dtype of ``aval`` (a numpy scalar when rank 0), as the evaluator holds it."""
    arr = np.asarray(x)
    if arr.dtype.name != aval.dtype:
        arr = arr.astype(aval.dtype)
    return arr[()] if arr.ndim == 0 else arr


def execute(plan, values, shapes, run_pass):
    """Run ``plan`` on ``values`` (one per whole-graph input; those of chunked inputs are only
    handed to ``run_pass``) with ``shapes`` (the whole inputs' shapes). Driver stages run on
    the reference evaluator; ``run_pass(p, stage, params, env)`` runs chunk pass ``p`` (``env``:
    the driver's values, sizes included) and returns
    (the combined partials, the rows outputs): the runtime's executor, or ``evaluate``'s.
    Returns the whole graph's outputs: rows outputs as ``run_pass`` gave them."""
    g = plan.graph
    env = {}
    n_rows = None
    for k, (v, x, shape) in enumerate(zip(g.inputs, values, shapes)):
        if k in plan.chunked:
            n_rows = shape[plan.chunked[k]]
        else:
            env[v] = x
        for d, s in zip(v.aval.shape, shape):
            if isinstance(d, Var):
                env.setdefault(d, s)
    env[plan.total] = n_rows
    rows = {}
    for k, drv in enumerate(plan.drivers):
        if k:
            stage = plan.chunks[k - 1]
            parts, rows[k] = run_pass(k, stage, [env[v] for v in stage.globals], env)
            for (v, _), x in zip(stage.partials, parts):
                env[v] = typed(x, v.aval)
        outs = _evaluate(drv, *[env[v] for v in drv.inputs])
        env.update(zip(drv.outputs, outs))
    res = []
    for o in plan.outputs:
        if o[0] == "lit":
            res.append(o[1])
        elif o[0] == "global":
            res.append(env[o[1]])
        else:
            res.append(rows[o[1]][o[2]])
    return res


def combine(names, parts):
    """Partials of several chunks (tuples, one entry per reduction) combined into one tuple."""
    out = list(parts[0])
    for q in parts[1:]:
        for j, name in enumerate(names):
            out[j] = getattr(np, name)(out[j], q[j])
    return tuple(out)


def evaluate(plan, values, bounds):
    """The reference run of ``plan``: chunked inputs cut at row offsets ``bounds`` (e.g.
    ``[0, 500, 1000]``), each chunk pass evaluated chunk by chunk by the reference evaluator,
    partials combined, rows outputs concatenated. The test oracle of ``split``."""
    shapes = [np.shape(x) for x in values]

    def run_pass(p, stage, params, env):
        names = [n for _, n in stage.partials]
        results = []
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            blocks = [_take(values[k], ax, lo, hi) for k, ax in zip(stage.chunked,
                                                                    stage.row_axes_in)]
            results.append(tuple(_evaluate(stage.graph, *blocks, *params)))
        n = len(stage.partials)
        parts = combine(names, [r[:n] for r in results]) if n else ()
        rows = [np.concatenate([r[n + j] for r in results], axis=ax)
                for j, ax in enumerate(stage.row_axes)]
        return parts, rows

    return execute(plan, values, shapes, run_pass)


def _take(x, axis, lo, hi):
    idx = [slice(None)] * np.ndim(x)
    idx[axis] = slice(lo, hi)
    return np.asarray(x)[tuple(idx)]
