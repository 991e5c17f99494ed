"""Transforms as callables: trace once per signature, build the transformed graph, optimise,
emit, compile, cache; then every call is a dict lookup and one numba call.

The only state of gradjit lives here and in the caches.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np

from ..compiler import ad, frontend, passes
from ..compiler import primitives as P
from ..compiler.codegen import cpu
from ..compiler.ir import Var, verify
from ..compiler.tracing import Builder, Tracer, building, make_graph
from ..errors import GradjitError, ShapeError, TraceError
from . import pytree
from .signature import arg_key, aval_for, describe, prepare

DEBUG = int(os.environ.get("GRADJIT_DEBUG", "0") or 0)


# ---------------------------------------------------------------------------------------------
# Cache statistics
# ---------------------------------------------------------------------------------------------


@dataclass
class CacheInfo:
    hits: int = 0
    misses: int = 0
    compiles: int = 0
    memory_entries: int = 0
    disk_entries: int = 0
    disk_hits: int = 0


_stats = CacheInfo()
_all_caches = []  # every transform's memory cache, for cache_info/clear_cache


def cache_info():
    """Counters of this process: hits, misses, compiles, memory_entries, disk_entries."""
    info = CacheInfo(**vars(_stats))
    info.memory_entries = sum(len(c) for c in _all_caches)
    dc = disk_cache()
    info.disk_entries = len(dc.entries()) if dc is not None and dc.enabled else 0
    return info


def clear_cache(memory=True, disk=False):
    if memory:
        for c in _all_caches:
            c.clear()
    if disk:
        dc = disk_cache()
        if dc is not None:
            dc.clear()


_disk = None


def disk_cache():
    global _disk
    if _disk is None:
        try:
            from .diskcache import DiskCache
        except ImportError:  # pragma: no cover - during bring-up
            return None
        _disk = DiskCache()
    return _disk


def reset_disk_cache():
    """Forget the disk cache object (tests switch GRADJIT_CACHE_DIR)."""
    global _disk
    _disk = None


# ---------------------------------------------------------------------------------------------
# Tracing a Python function into a graph
# ---------------------------------------------------------------------------------------------


@dataclass
class Traced:
    graph: object
    out_tree: object
    captures: list  # Capture objects of arrays passed at every call
    guards: list  # Capture objects of baked values
    sources: dict
    qualname: str
    loc: str


def trace(fun, args, static=None):
    """Trace ``fun`` on leaves shaped like ``args`` (a tuple of pytrees)."""
    static = static or {}
    interp = frontend.Interpreter()
    with building(Builder()) as b:
        tracer_args, inputs = [], []
        for k, a in enumerate(args):
            if k in static:
                tracer_args.append(a)
                continue
            leaves, tree = pytree.flatten(a)
            ts = [Tracer(Var(x.aval if isinstance(x, Tracer) else aval_for(x))) for x in leaves]
            inputs.extend(ts)
            tracer_args.append(pytree.unflatten(tree, ts))
        out = interp.call(fun, tracer_args)
        out_leaves, out_tree = pytree.flatten(out)
        for o in out_leaves:
            if not (isinstance(o, Tracer) or frontend.P.is_static_scalar(o) or isinstance(o, np.ndarray)):
                raise TraceError(f"{_fn_loc(fun)}: {_name(fun)} returned a {type(o).__name__}; "
                                 "traced functions return arrays, numbers, or tuples/lists/dicts of them")
        out_leaves = [o if not isinstance(o, np.ndarray) else P.lift(o) for o in out_leaves]
        cap_tracers = [t for _, t in interp.captured_inputs]
        graph = make_graph(inputs + cap_tracers, out_leaves, b)
    return Traced(graph, out_tree, [c for c, _ in interp.captured_inputs], interp.guards,
                  interp.sources, _name(fun), _fn_loc(fun))


def _name(fun):
    return getattr(fun, "__qualname__", None) or getattr(fun, "__name__", None) or repr(fun)


def _fn_loc(fun):
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
        shape = "()" if out0 is None else P.fmt_shape(out0.aval.shape)
        raise GradjitError(f"{traced.loc}: grad requires {traced.qualname} to return a scalar, "
                           f"but its output has shape {shape}; use gj.vjp or gj.jacobian for "
                           "non-scalar outputs")
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


# ---------------------------------------------------------------------------------------------
# Compiled entries
# ---------------------------------------------------------------------------------------------


class Entry:
    """One compiled (function, transform, signature): the kernel and how to call it."""

    __slots__ = ("kernel", "captures", "guards", "guard_values", "post", "graph", "source",
                 "traced", "optimized", "n_out", "has_0d", "check")

    def guards_ok(self):
        for cap, old in zip(self.guards, self.guard_values):
            try:
                new = cap.get()
            except (KeyError, ValueError):
                return False
            if new is not old and not _same_value(new, old):
                return False
        for cap in self.captures:
            if arg_key(cap.get()) != arg_key(cap.value):
                return False
        return True


def _same_value(a, b):
    try:
        r = a == b
        return bool(r) if not isinstance(r, np.ndarray) else bool(r.all())
    except Exception:
        return False


_module_counter = [0]


def load_source(source, key, meta):
    """Import generated source: through the disk cache when available, else a private file."""
    dc = disk_cache()
    if dc is not None:
        with dc.lock(key):
            mod = dc.load(key)
            if mod is not None:
                _stats.disk_hits += 1
                return mod, True
            return dc.store(key, source, meta), False
    d = tempfile.mkdtemp(prefix="gradjit-")
    path = os.path.join(d, f"gj_{key[:16]}.py")
    with open(path, "w") as f:
        f.write(source)
    name = f"gradjit_kernel_{key[:24]}_{_module_counter[0]}"
    _module_counter[0] += 1
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod, False


def _versions():
    import numba
    from .. import __version__
    return f"gradjit={__version__};numba={numba.__version__};python={sys.version.split()[0]}"


class Transformed:
    """The callable returned by ``gj.jit``, ``gj.grad``, ``gj.value_and_grad``."""

    def __init__(self, fun, kind, argnums=0, has_aux=False, static_argnums=(), target="auto"):
        if not callable(fun):
            raise TypeError(f"gradjit transforms take a function, not {type(fun).__name__}")
        self.fun = fun
        self.kind = kind
        self.argnums = argnums
        self.has_aux = has_aux
        self.static_argnums = tuple(static_argnums) if isinstance(static_argnums, (tuple, list)) \
            else (static_argnums,)
        if target not in ("auto", "cpu", "parallel", "cuda"):
            raise ValueError(f"unknown target {target!r}: use 'auto', 'cpu', 'parallel' or 'cuda'")
        self.target = target
        self.cache = {}
        _all_caches.append(self.cache)
        functools.update_wrapper(self, fun, updated=())

    def __repr__(self):
        return f"<gradjit.{self.kind} of {_name(self.fun)}>"

    # -- the hot path --------------------------------------------------------------------------

    def __call__(self, *args):
        # The hot path: a key from the arguments' types (arrays: dtype, rank, unit axes),
        # one dict lookup, one numba call.
        n = len(args)
        key = (_KEYS[n] if n < _N_KEYS else _key_fn(n))(args)
        entry = self.cache.get(key)
        if entry is None or self.static_argnums or entry.check:
            if self.static_argnums or any(t in _TREES for t in key):
                return self._call_tree(args)
            if entry is None or not entry.guards_ok():
                for a in args:
                    arg_key(a)  # rejects unsupported argument types with a clear error
                entry = self._compile(key, args)
            else:
                _stats.hits += 1
        else:
            _stats.hits += 1
        if entry.has_0d:
            args = [prepare(a) for a in args]
        try:  # free when nothing is raised (Python 3.11+)
            out = entry.kernel(*args, *[c.get() for c in entry.captures]) if entry.captures \
                else entry.kernel(*args)
        except ShapeError as e:
            raise ShapeError(f"{e} (argument shapes: {_shapes(args)})") from None
        post = entry.post
        return out if post is None else post(out)

    def _call_tree(self, args):
        static = {k: args[k] for k in self.static_argnums if k < len(args)}
        leaves, key_parts = [], []
        for k, a in enumerate(args):
            if k in static:
                key_parts.append(("static", _hashable(a)))
                continue
            ls, tree = pytree.flatten(a)
            leaves.extend(ls)
            key_parts.append((tree, tuple(map(arg_key, ls))))
        key = tuple(key_parts)
        entry = self.cache.get(key)
        if entry is None or (entry.check and not entry.guards_ok()):
            entry = self._compile(key, args)
        else:
            _stats.hits += 1
        flat = [prepare(x) for x in leaves]
        try:
            out = entry.kernel(*flat, *[c.get() for c in entry.captures])
        except ShapeError as e:
            raise ShapeError(f"{e} (argument shapes: {_shapes(leaves)})") from None
        return out if entry.post is None else entry.post(out)

    # -- compiling -----------------------------------------------------------------------------

    def numba(self, *args):
        """The compiled kernel for the signature of ``args``, as a numba dispatcher that the
        user's own ``@njit`` code can call with no Python in between. It takes the flattened
        arguments (then any arrays the function reads from globals, in ``.captured_names``)
        and returns the result (a tuple when there are several)."""
        entry = self.cache.get(("numba",) + tuple(map(arg_key, args)))
        if entry is None:
            entry = Lowered(self, args).compile()
            self.cache[("numba",) + tuple(map(arg_key, args))] = entry
        if entry.captures:
            raise GradjitError("numba(): the function reads arrays from globals or closures; "
                               "pass them as arguments to call it from numba code")
        return entry.kernel

    def _gj_inline(self, interp, args, kwargs):
        """Called inside a function being traced: trace ``fun`` on the caller's tracers,
        transform, and replay the result into the caller's graph (so transforms compose and a
        whole optimisation loop compiles into one kernel)."""
        if kwargs:
            raise TraceError(f"{interp.loc}: keyword arguments to a gradjit transform are not supported")
        if self.kind == "vjp":
            raise TraceError(f"{interp.loc}: gj.{self.kind} cannot be used inside a traced function yet")
        static = {k: args[k] for k in self.static_argnums if k < len(args)}
        traced = trace(self.fun, args, static)
        graph, assemble = transform_graph(self, traced, args, static)
        leaves = [x for k, a in enumerate(args) if k not in static for x in pytree.flatten(a)[0]]
        caps = [interp.captured(c.kind, c.where, c.name, c.value) for c in traced.captures]
        interp.guards.extend(traced.guards)
        interp.sources.update(traced.sources)
        outs, _ = ad.replay(graph, leaves + caps)
        return assemble(outs)

    def lower(self, *args):
        """Trace and transform for the signature of ``args`` (no numba compilation)."""
        return Lowered(self, args)

    def _compile(self, key, args):
        _stats.misses += 1
        low = Lowered(self, args)
        entry = low.compile()
        self.cache[key] = entry
        return entry

    def _wrt(self, args, static):
        nums = self.argnums if isinstance(self.argnums, (tuple, list)) else (self.argnums,)
        starts, pos = [], 0
        for k, a in enumerate(args):
            starts.append(pos)
            if k not in static:
                pos += len(pytree.flatten(a)[0])
        wrt, groups = [], []
        for n in nums:
            if not isinstance(n, int) or not -len(args) <= n < len(args):
                raise GradjitError(f"argnums={self.argnums!r} does not fit the {len(args)} "
                                   "arguments given")
            n %= len(args)
            if n in static:
                raise GradjitError(f"argument {n} is static and cannot be differentiated")
            leaves, tree = pytree.flatten(args[n])
            for x in leaves:
                dt = x.aval.dtype if isinstance(x, Tracer) else aval_for(x).dtype
                if not dt.startswith("float"):
                    raise TypeError(f"{self.kind} of {_name(self.fun)} with respect to argument {n}: "
                                    f"it holds integer or bool values ({dt}); only float "
                                    "arguments can be differentiated")
            idx = list(range(starts[n], starts[n] + len(leaves)))
            wrt.extend(idx)
            groups.append((tree, len(idx), leaves))
        return wrt, groups


_TREES = (tuple, list, dict, type(None))


def _array_key(a):
    return (a.dtype, tuple([d == 1 for d in a.shape]))


def _key_fn(n):
    """The hot-path key of ``n`` positional arguments: the type of each, and for an array its
    dtype and rank, with the pattern of unit axes only when it has one (they are static sizes).
    Generated per arity so that a call builds its key with no loop and no inner function."""
    names = [f"a{k}" for k in range(n)]
    lines = ["def key(args):", f"    {', '.join(names)}{',' if n == 1 else ''} = args"] if n else \
        ["def key(args):"]
    for a in names:
        lines.append(f"    {a} = ({a}.dtype, {a}.ndim) if type({a}) is nd and 1 not in {a}.shape "
                     f"else (_array_key({a}) if type({a}) is nd else type({a}))")
    lines.append(f"    return ({', '.join(names)}{',' if n == 1 else ''})")
    ns = {"nd": np.ndarray, "_array_key": _array_key}
    exec("\n".join(lines), ns)
    return ns["key"]


_N_KEYS = 9
_KEYS = [_key_fn(n) for n in range(_N_KEYS)]


def _shapes(args):
    return ", ".join(str(np.shape(a)) for a in args)


def _hashable(a):
    try:
        hash(a)
        return a
    except TypeError:
        raise GradjitError(f"static arguments must be hashable, got {type(a).__name__}") from None


def transform_graph(tf, traced, args, static):
    """(graph, assemble) of transform ``tf`` applied to a traced function; ``assemble`` turns
    the graph's flat outputs into the transform's result structure."""
    g = traced.graph
    kind = tf.kind
    out_tree = traced.out_tree
    if kind == "jit":
        return g, lambda outs: pytree.unflatten(out_tree, outs)
    if kind in ("grad", "value_and_grad"):
        wrt, groups = tf._wrt(args, static)
        with_value = kind == "value_and_grad"
        graph = grad_graph(traced, None, wrt, tf.has_aux, with_value)
        n_out = len(g.outputs) if (with_value or tf.has_aux) else 0
        single = not isinstance(tf.argnums, (tuple, list))
        has_aux = tf.has_aux
        if has_aux and (out_tree is pytree.LEAF or not isinstance(out_tree, tuple)
                        or out_tree[0] not in (tuple, list) or len(out_tree[1]) != 2):
            raise GradjitError(f"{traced.loc}: has_aux=True needs {traced.qualname} "
                               "to return a pair (scalar, aux)")

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
        return graph, assemble
    if kind == "vjp":
        wrt = list(range(len(g.inputs) - len(traced.captures)))
        return vjp_graph(traced, wrt), None
    if kind == "vmap":  # the batching happened while tracing (batching.Batched._gj_inline)
        return g, lambda outs: pytree.unflatten(out_tree, outs)
    if kind == "jacobian":
        return _jacobian_transform(tf, traced, args, static)
    raise GradjitError(f"{kind} cannot be used here")


# -- vmap / jacobian (batching.py) -------------------------------------------------------------


def _jacobian_transform(tf, traced, args, static):
    """The Jacobian as an IR transform (the vjp batched over an identity cotangent), so it
    composes like every other transform; one entry per output leaf, each like ``argnums``."""
    from ..compiler.batching import jacobian_graph
    wrt, groups = tf._wrt(args, static)
    graph = jacobian_graph(traced, wrt, vjp_graph)
    single = not isinstance(tf.argnums, (tuple, list))
    out_tree, n = traced.out_tree, len(wrt)

    def assemble(outs):
        per_out = [_regroup(outs[k * n:(k + 1) * n], groups, single)
                   for k in range(len(outs) // max(n, 1))]
        return pytree.unflatten(out_tree, per_out)
    return graph, assemble


def _regroup(flat, groups, single):
    res, pos = [], 0
    for tree, n, _ in groups:
        res.append(pytree.unflatten(tree, flat[pos:pos + n]))
        pos += n
    return res[0] if single else tuple(res)


class Lowered:
    """A traced and transformed function for one signature: IR, optimised IR and source."""

    def __init__(self, tf, args):
        self.tf = tf
        static = {k: args[k] for k in tf.static_argnums if k < len(args)}
        self.traced = trace(tf.fun, args, static)
        kind = tf.kind
        self.leaves = [x for k, a in enumerate(args) if k not in static
                       for x in pytree.flatten(a)[0]]
        self.signature = describe(self.leaves)
        target = tf.target if tf.target != "auto" else os.environ.get("GRADJIT_TARGET", "cpu")
        if target == "auto":
            target = "cpu"
        if target == "cuda":
            raise GradjitError("target='cuda' is not available yet")
        self.target = target
        what = f"{kind} of {self.traced.qualname} ({self.traced.loc})"
        graph, self.assemble = transform_graph(tf, self.traced, args, static)
        if DEBUG >= 3:
            verify(graph)
        self.transformed = graph
        self.optimized = passes.optimize(graph)
        if DEBUG >= 2:
            print(f"[gradjit] {kind} {self.traced.qualname}:\n{self.optimized}", file=sys.stderr)
        self.source = cpu.emit_source(self.optimized, what=what, target=self.target)

    def _numba_compile(self, kernel):
        """Compile (or load from numba's cache) for the argument types of this signature now,
        so that errors surface here and ahead-of-time ``warm`` stores object code."""
        import numba
        from numba.core.errors import NumbaError
        vals = [prepare(x) for x in self.leaves] + [c.value for c in self.traced.captures]
        try:
            kernel.compile(tuple(numba.typeof(v) for v in vals))
        except NumbaError as e:
            raise GradjitError(f"internal error: numba could not compile the kernel for "
                               f"{self.tf.kind} of {self.traced.qualname} ({self.traced.loc}) "
                               f"[{self.signature}]: {str(e).splitlines()[0]}") from None

    @property
    def traced_ir(self):
        return str(self.traced.graph)

    @property
    def optimized_ir(self):
        return str(self.optimized)

    def dot(self):
        from ..compiler.graphviz import to_dot
        return to_dot(self.optimized)

    def compile(self):
        key = hashlib.sha256((self.source + _versions()).encode()).hexdigest()
        meta = {"qualname": self.traced.qualname, "file": self.traced.loc.rsplit(":", 1)[0],
                "line": int(self.traced.loc.rsplit(":", 1)[1]) if ":" in self.traced.loc else 0,
                "transform": self.tf.kind, "signature": self.signature, "target": self.target,
                "created": time.time()}
        t0 = time.perf_counter()
        mod, hit = load_source(self.source, key, meta)
        kernel = mod.kernel
        self._numba_compile(kernel)
        dc = disk_cache()
        if dc is not None and dc.enabled:
            dc.seal(key)  # record numba's object code so later processes can trust it
        if not hit:
            _stats.compiles += 1
        if DEBUG >= 1:
            print(f"[gradjit] {'disk hit' if hit else 'compile'} {self.tf.kind} "
                  f"{self.traced.qualname} [{self.signature}] {time.perf_counter() - t0:.3f}s",
                  file=sys.stderr)
        e = Entry()
        e.kernel = kernel
        e.captures = self.traced.captures
        e.guards = self.traced.guards
        # arrays read from globals are re-typed at every call too: a new dtype or rank retraces
        e.check = bool(e.guards or e.captures)
        e.guard_values = [c.value for c in self.traced.guards]
        e.has_0d = any(type(x) is np.ndarray and x.ndim == 0 for x in self.leaves)
        e.graph = self.optimized
        e.source = self.source
        e.traced = self.traced.graph
        e.optimized = self.optimized
        convs = [_converter(a) for a in self.result_avals()]
        assemble = self.assemble
        e.n_out = len(convs)
        e.post = _post(convs, assemble)
        return e

    def result_avals(self):
        """Avals of what the kernel returns (a bare value when there is one result)."""
        return [a.aval for a in self.optimized.outputs]


def _post(convs, assemble):
    """Turn the kernel's return value into the transform's result; None when it already is."""
    if len(convs) == 1:
        c0 = convs[0]
        if assemble is None:
            return lambda out: (c0(out),)
        probe = object()
        try:
            direct = assemble([probe]) is probe
        except Exception:
            direct = False
        if direct:
            return None if c0 is _identity else c0
        return lambda out: assemble([c0(out)])
    if assemble is None:
        return lambda out: tuple(c(o) for c, o in zip(convs, out))
    return lambda out: assemble([c(o) for c, o in zip(convs, out)])


def _converter(a):
    """Rank-0 results come back from numba as Python numbers: give them the IR's dtype."""
    if a.ndim:
        return _identity
    return np.dtype(a.dtype).type


def _identity(x):
    return x


# ---------------------------------------------------------------------------------------------
# vjp
# ---------------------------------------------------------------------------------------------


def vjp(fun, *primals):
    """``(out, vjp_fn)``: ``vjp_fn(cotangent)`` returns one gradient per primal."""
    out = Transformed(fun, "jit")(*primals)
    back = _vjp_cache(fun)
    out_leaves, out_tree = pytree.flatten(out)

    def vjp_fn(ct):
        ct_leaves, ct_tree = pytree.flatten(ct)
        if len(ct_leaves) != len(out_leaves):
            raise GradjitError("the cotangent must have the structure of the function's output")
        ct_leaves = [np.asarray(c, dtype=np.asarray(o).dtype) if np.ndim(o) else
                     np.asarray(o).dtype.type(c) for c, o in zip(ct_leaves, out_leaves)]
        res = back(primals, ct_leaves)
        n_out = len(out_leaves)
        grads = list(res[n_out:])
        out, pos = [], 0
        for p in primals:
            ls, tree = pytree.flatten(p)
            out.append(pytree.unflatten(tree, grads[pos:pos + len(ls)]))
            pos += len(ls)
        return tuple(out)

    return out, vjp_fn


@functools.lru_cache(maxsize=None)
def _vjp_cache(fun):
    tf = Transformed(fun, "vjp")

    def run(primals, cts):
        leaves = [x for p in primals for x in pytree.flatten(p)[0]]
        key = (tuple(pytree.flatten(p)[1] for p in primals), tuple(map(arg_key, leaves)),
               tuple(map(arg_key, cts)))
        entry = tf.cache.get(key)
        if entry is None or (entry.check and not entry.guards_ok()):
            _stats.misses += 1
            entry = _VjpLowered(tf, primals, cts).compile()
            tf.cache[key] = entry
        else:
            _stats.hits += 1
        flat = [prepare(x) for x in leaves] + [prepare(c) for c in cts]
        return entry.post(entry.kernel(*flat, *[c.get() for c in entry.captures]))
    return run


class _VjpLowered(Lowered):
    """The vjp kernel also takes the output cotangents (after the primals)."""

    def __init__(self, tf, primals, cts):
        super().__init__(tf, primals)
        self.leaves = self.leaves + list(cts)
        self.signature = describe(self.leaves)
