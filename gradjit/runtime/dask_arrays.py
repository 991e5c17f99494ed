"""Dask arrays as arguments: a transform's graph split into per-chunk kernels and driver stages
(``compiler/distribute.py``), run on the active Dask scheduler.

A call with a ``dask.array.Array`` among its arguments comes here from the dispatcher
(``has_dask`` is what it asks; this module imports dask only once such a call arrives, so
``import gradjit`` imports neither dask nor distributed). Per signature, the function is
traced and transformed as usual, its graph split into a ``Plan``, and each chunk pass emitted
as a numba module. Per call:

- the Dask arguments are aligned on one chunking of their rows (merging chunks of fewer than
  two rows: kernels treat an axis of size 1 as a broadcast);
- driver stages run on this process (numpy evaluation of small graphs on parameters and
  combined partials);
- each chunk pass is a Dask graph: the parameters and the kernel's description as one key
  each (sent once, not once per chunk), a task per chunk calling ``run_chunk``, and a tree of
  ``combine`` tasks (``SPLIT_EVERY`` partials per node);
- ``gj.vmap`` returns a lazy Dask array: one kernel call per chunk.

Workers compile once: a task carries the kernel's generated source and key (never a pickled
dispatcher). ``run_chunk`` imports the source through the disk cache (``$GRADJIT_CACHE_DIR``,
shared by the workers of one machine: one process compiles under the entry's lock, the
others load its object code) and keeps the compiled kernel in a per-process table, reused by
every later chunk and call.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
import weakref

import numpy as np

from ..compiler.effects import run_all
from ..errors import GradjitError

# partials combined per node of the reduction tree
SPLIT_EVERY = 8


def is_dask(x):
    """A Dask collection (tested by its type's module: dask is not imported for it)."""
    return type(x).__module__.startswith("dask.")


def has_dask(args):
    """Whether any argument (or leaf of a tuple, list or dict argument) is a Dask array."""
    for a in args:
        t = type(a)
        if t is np.ndarray or t is float or t is int:
            continue
        if t.__module__.startswith("dask."):
            return True
        if (t is tuple or t is list) and has_dask(a):
            return True
        if t is dict and has_dask(tuple(a.values())):
            return True
    return False


def _require_dask():
    try:
        import dask  # noqa: F401
        import dask.array  # noqa: F401
    except ImportError:
        raise GradjitError("Dask arrays need dask: pip install gradjit[dask]") from None


# ---------------------------------------------------------------------------------------------
# Per signature: the plan and the chunk kernels
# ---------------------------------------------------------------------------------------------


class StageKernel:
    """What a worker needs to run one chunk pass: the generated module's source and its cache
    key (and a description for errors). Small, plain, picklable."""

    __slots__ = ("key", "source", "meta", "what", "n_out")

    def __init__(self, key, source, meta, what, n_out):
        self.key, self.source, self.meta, self.what, self.n_out = key, source, meta, what, n_out

    def __getstate__(self):
        return (self.key, self.source, self.meta, self.what, self.n_out)

    def __setstate__(self, state):
        self.key, self.source, self.meta, self.what, self.n_out = state

    def __dask_tokenize__(self):
        return ("gradjit-stage", self.key)


class DaskEntry:
    """One (transform, signature) over Dask arguments."""

    def __init__(self, plan, kernels, assemble, traced, chunked):
        self.plan = plan
        self.kernels = kernels
        self.assemble = assemble
        self.captures = traced.captures
        self.guards = traced.guards
        self.chunked = chunked  # {leaf index: row axis}
        self.traced = traced

    def guards_ok(self):
        from .entry import reads_hold
        return reads_hold(self.guards, self.captures)


_ENTRIES = weakref.WeakKeyDictionary()  # transform -> {key: DaskEntry}


def _clear():
    _ENTRIES.clear()


def _register_clearer():
    from .state import memory_clearers
    memory_clearers.append(_clear)


_register_clearer()


def _leaf_key(x):
    from .signature import arg_key
    if is_dask(x):
        return ("dask", np.dtype(x.dtype).name, x.ndim, tuple(d == 1 for d in x.shape))
    return arg_key(x)


def _standin(x):
    """A zero-memory numpy array shaped like Dask array ``x``, for tracing."""
    return np.broadcast_to(np.zeros((), dtype=x.dtype), x.shape)


def _standin_args(args, static):
    from ..compiler import pytree
    out = []
    for k, a in enumerate(args):
        if k in static:
            out.append(a)
            continue
        ls, tree = pytree.flatten(a)
        out.append(pytree.unflatten(tree, [_standin(x) if is_dask(x) else x for x in ls]))
    return tuple(out)


def _entry(tf, args, static, cts=None):
    """The DaskEntry of this call's signature (traced, split and emitted on a miss). ``cts``:
    the output cotangents of a vjp (they follow the primals' leaves)."""
    from .state import stats
    from .signature import tree_key
    key, leaves = tree_key(args, static, _leaf_key)
    if cts is not None:
        key = key + (("cts",) + tuple(_leaf_key(c) for c in cts),)
    table = _ENTRIES.setdefault(tf, {})
    entry = table.get(key)
    if entry is not None and entry.guards_ok():
        stats.hits += 1
        return entry, leaves
    stats.misses += 1
    entry = table[key] = _build(tf, args, static, leaves, cts)
    return entry, leaves


def _build(tf, args, static, leaves, cts):
    from ..compiler import distribute, passes
    from ..compiler.codegen.backend import backend_for
    from ..compiler.transforms import assembler, trace, transform_spec
    from .compiled import resolve_target
    from .loader import versions
    from .signature import describe
    from .state import stats

    stand = _standin_args(args, static)
    stats.traces += 1
    traced = trace(tf.fun, stand, static)
    graph, spec = transform_spec(tf, traced, stand, static)
    graph = passes.optimize(graph)
    chunked = {k: 0 for k, x in enumerate(leaves) if is_dask(x)}
    if cts is not None:  # cotangents of outputs with rows have rows too (same size variables)
        rows = {graph.inputs[k].aval.shape[0] for k in chunked}
        for j in range(len(cts)):
            v = graph.inputs[len(leaves) + j]
            axes = [a for a, d in enumerate(v.aval.shape) if d in rows]
            if axes:
                chunked[len(leaves) + j] = axes[0]
    plan = distribute.split(graph, chunked, traced.loc)
    target = resolve_target(tf)
    backend = backend_for(target)
    kernels = []
    signature = describe([_standin(x) if is_dask(x) else x for x in leaves])
    file, _, line = traced.loc.rpartition(":")
    for p, stage in enumerate(plan.chunks, 1):
        what = (f"{tf.kind} of {traced.qualname} ({traced.loc}), Dask chunk pass {p} of "
                f"{plan.passes}")
        source = backend.emit_source(stage.graph, what, target)
        key = hashlib.sha256((source + versions()).encode()).hexdigest()
        meta = {"qualname": traced.qualname, "file": file, "line": int(line) if line.isdigit()
                else 0, "transform": f"{tf.kind} (dask pass {p})", "signature": signature,
                "target": target}
        kernels.append(StageKernel(key, source, meta, f"{what} [{signature}]",
                                   len(stage.graph.outputs)))
    return DaskEntry(plan, kernels, assembler(spec), traced, chunked)


# ---------------------------------------------------------------------------------------------
# Per call
# ---------------------------------------------------------------------------------------------


def call(tf, args):
    """``tf(*args)`` with Dask arrays among ``args`` (the dispatcher's route for them)."""
    _require_dask()
    from .compiled import static_args
    static = static_args(tf, args)
    entry, leaves = _entry(tf, args, static)
    values = list(leaves) + [c.get() for c in entry.captures]
    outs = _run(entry, values, lazy=tf.kind == "vmap")
    run_all(entry.traced.effects)  # the Python side effects of the call (counters), as on numpy
    return tuple(outs) if entry.assemble is None else entry.assemble(outs)


def vjp_call(tf, primals, cts):
    """The flat results of the vjp kernel (outputs, then the primals' cotangents) with Dask
    arrays among ``primals`` (runtime/vjp.py's route for them)."""
    _require_dask()
    entry, leaves = _entry(tf, primals, {}, cts=cts)
    values = list(leaves) + list(cts) + [c.get() for c in entry.captures]
    outs = tuple(_run(entry, values, lazy=False))
    run_all(entry.traced.effects)
    return outs


def _run(entry, values, lazy):
    from ..compiler import distribute
    plan = entry.plan
    arrays = _aligned({k: (values[k], ax) for k, ax in plan.chunked.items()})
    n_rows = next(iter(arrays.values())).shape[plan.chunked[next(iter(arrays))]]
    if n_rows < 2:  # too few rows to chunk: compute them and run in memory
        return _in_memory(entry, values)
    values = [arrays.get(k, x) for k, x in enumerate(values)]
    shapes = [np.shape(x) if k not in arrays else arrays[k].shape for k, x in enumerate(values)]

    def run_pass(p, stage, params, env):
        return _pass(entry.kernels[p - 1], stage, [arrays[k] for k in stage.chunked], params,
                     env, lazy)
    try:
        return distribute.execute(plan, values, shapes, run_pass)
    except Exception as e:
        if type(e).__name__ == "KilledWorker":
            raise GradjitError(f"a Dask worker died while running {entry.traced.qualname} "
                               f"({entry.traced.loc}) over chunks, more often than the scheduler "
                               f"allows ({e})") from e
        raise


def _in_memory(entry, values):
    from ..compiler.reference import evaluate
    vals = [np.asarray(x.compute()) if is_dask(x) else x for x in values]
    return evaluate(entry.plan.graph, *vals)


def _merge_small(chunks):
    """Row chunks of at least two rows each (a kernel takes a size-1 axis for a broadcast)."""
    out = []
    for c in chunks:
        if out and (out[-1] < 2 or c < 2):
            out[-1] += c
        else:
            out.append(c)
    if len(out) > 1 and out[-1] < 2:
        out[-2] += out.pop()
    return tuple(out)


def _aligned(inputs):
    """{input: Dask array} chunked along their row axes alike (those of the first Dask
    argument, small chunks merged) and not along any other axis; numpy values with rows (a
    vjp's cotangents) become Dask arrays of the same chunks."""
    import dask.array as da
    first = next((x, ax) for x, ax in inputs.values() if is_dask(x))
    x0, ax0 = first
    if any(np.isnan(c) for c in x0.chunks[ax0]):
        x0 = x0.compute_chunk_sizes()
    rows = _merge_small(x0.chunks[ax0])
    n = sum(rows)
    out = {}
    for k, (x, ax) in inputs.items():
        if x.shape[ax] != n:
            raise GradjitError(f"the Dask arguments have different numbers of rows ({n} and "
                               f"{x.shape[ax]}): their leading axes must match")
        want = tuple(rows if a == ax else (d,) for a, d in enumerate(x.shape))
        if not is_dask(x):
            x = da.from_array(np.asarray(x), chunks=want)
        elif tuple(x.chunks) != want:
            if any(np.isnan(c) for c in x.chunks[ax]):
                x = x.compute_chunk_sizes()
            x = x.rechunk(want)
        out[k] = x
    return out


def _pass(kernel, stage, arrays, params, env, lazy):
    """Run one chunk pass: (combined partials, rows outputs: numpy arrays, or Dask arrays when
    ``lazy`` and the pass has no partials)."""
    import dask
    from dask import delayed

    from .signature import prepare
    blocks = [x.to_delayed().ravel() for x in arrays]
    n_chunks = len(blocks[0]) if blocks else 0
    spec = delayed(kernel, pure=True, traverse=False)
    par = delayed(tuple(prepare(p) for p in params), pure=True, traverse=False)
    tasks = [delayed(run_chunk, pure=True)(spec, par, *[b[i] for b in blocks])
             for i in range(n_chunks)]
    n_part = len(stage.partials)
    names = tuple(n for _, n in stage.partials)
    if lazy and not n_part:
        return (), _lazy_rows(stage, tasks, arrays, env)
    root = None
    if n_part:
        level = tasks
        while len(level) > 1 or level is tasks:
            level = [delayed(combine, pure=True)(names, n_part, *level[i:i + SPLIT_EVERY])
                     for i in range(0, len(level), SPLIT_EVERY)]
        root = level[0]
    row_parts = [delayed(_rows_of, pure=True)(t, n_part) for t in tasks] if stage.row_axes \
        else []
    parts, row_vals = dask.compute(root, row_parts)
    rows = [np.concatenate([r[j] for r in row_vals], axis=ax)
            for j, ax in enumerate(stage.row_axes)]
    if lazy:
        import dask.array as da
        rows = [da.from_array(r, chunks=tuple(arrays[0].chunks[stage.row_axes_in[0]]
                                               if a == ax else (d,)
                                               for a, d in enumerate(r.shape)))
                for r, ax in zip(rows, stage.row_axes)]
    return (parts if n_part else ()), rows


def _lazy_rows(stage, tasks, arrays, env):
    """The rows outputs of a pass as Dask arrays: one piece per chunk task."""
    import dask.array as da
    from dask import delayed
    n_part = len(stage.partials)
    sizes = _dims(stage, env)
    chunk_rows = arrays[0].chunks[stage.row_axes_in[0]]
    outs = []
    for j, ax in enumerate(stage.row_axes):
        v = stage.graph.outputs[n_part + j]
        pieces = []
        for t, m in zip(tasks, chunk_rows):
            shape = tuple(m if a == ax else _size(d, sizes) for a, d in enumerate(v.aval.shape))
            piece = delayed(_item, pure=True)(t, n_part + j)
            pieces.append(da.from_delayed(piece, shape=shape, dtype=np.dtype(v.aval.dtype)))
        outs.append(da.concatenate(pieces, axis=ax) if len(pieces) > 1 else pieces[0])
    return outs


def _dims(stage, env):
    """Values of the size variables a pass's results may have (the driver's)."""
    sizes = {d: x for d, x in env.items() if np.ndim(x) == 0 and not hasattr(x, "dask")}
    for v in stage.globals:
        if v in env:
            for d, s in zip(v.aval.shape, np.shape(env[v])):
                sizes.setdefault(d, s)
    return sizes


def _size(d, sizes):
    if isinstance(d, int):
        return d
    try:
        return int(sizes[d])
    except KeyError:
        raise GradjitError("vmap over a Dask array: an output size is only known once "
                           "computed") from None


# ---------------------------------------------------------------------------------------------
# Worker side: these run in the Dask workers (or the threads of the local scheduler)
# ---------------------------------------------------------------------------------------------

_KERNELS = {}  # kernel key -> compiled dispatcher, per process
_LOCK = threading.Lock()
_STATS = {"loads": 0, "compiles": 0, "chunks": 0}


def worker_stats():
    """This process's counts: kernels loaded (``loads``: modules imported, each once per
    process), numba compiles among them (``compiles``: the others came from the disk cache),
    chunks run."""
    return dict(_STATS)


def run_chunk(kernel, params, *chunks):
    """Run chunk-pass ``kernel`` on one chunk's blocks and the pass's parameters: a tuple of
    the partials and rows outputs."""
    chunks = [c if type(c) is np.ndarray else np.asarray(c) for c in chunks]
    fn = _KERNELS.get(kernel.key)
    if fn is None:
        fn = _load(kernel, (*chunks, *params))
    out = fn(*chunks, *params)
    _STATS["chunks"] += 1
    return (out,) if kernel.n_out == 1 else tuple(out)


def _load(kernel, example):
    """Import and compile (or load from the disk cache) ``kernel`` once per process: one thread
    of this process, and one process among those sharing the cache directory, compiles."""
    from .loader import capi_needed, load_source, numba_compile, preload_capi
    from .state import disk_cache
    with _LOCK:
        fn = _KERNELS.get(kernel.key)
        if fn is not None:
            return fn
        dc = disk_cache()
        lock = dc.lock(kernel.key) if dc is not None else contextlib.nullcontext()
        with lock:
            mod, _hit = load_source(kernel.source, kernel.key, dict(kernel.meta,
                                                                   created=time.time()))
            preload_capi(capi_needed(kernel.source))
            fn = mod.kernel
            numba_compile(fn, list(example), lambda: kernel.what)
            if dc is not None and dc.enabled:
                dc.seal(kernel.key)
        _STATS["loads"] += 1
        _STATS["compiles"] += sum(fn.stats.cache_misses.values())
        _KERNELS[kernel.key] = fn
        return fn


def combine(names, n, *parts):
    """Partials of several chunks (the first ``n`` entries of each tuple) combined into one."""
    out = list(parts[0][:n])
    for q in parts[1:]:
        for j, name in enumerate(names):
            out[j] = getattr(np, name)(out[j], q[j])
    return tuple(out)


def _rows_of(result, n):
    return result[n:]


def _item(result, j):
    return result[j]
