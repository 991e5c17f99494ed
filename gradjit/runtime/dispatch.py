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
import weakref
from dataclasses import dataclass

import numpy as np

from ..compiler import frontend, passes, pytree
from ..compiler.codegen import cpu
from ..compiler.ir import verify
from ..compiler import transforms
from ..compiler.transforms import assembler, name_of, trace, transform_spec
from ..errors import GradjitError, ShapeError, SizeFallback, TraceError, surface
from .signature import (
    LIBRARIES,
    TOKENS,
    Unstorable,
    arg_key,
    decode_tree,
    describe,
    encode_tree,
    leaf_token,
    prepare,
    value_token,
)

# GRADJIT_DEBUG: 1 reports compiles and cache decisions, 2 also prints the IR, 3 verifies it;
# any other non-empty value (e.g. "true") counts as 1
_debug = os.environ.get("GRADJIT_DEBUG", "0").strip() or "0"
DEBUG = int(_debug) if _debug.isdigit() else 1


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
    # functions traced (one per compiled signature; a disk-cache hit through a manifest
    # traces nothing); manifest_hits: such hits
    traces: int = 0
    manifest_hits: int = 0


_stats = CacheInfo()
# every live transform, for cache_info/clear_cache (weakly: a transform made per call, as in
# a loop over ``gj.grad(lambda ...)``, must not keep its kernels alive forever)
_transforms = weakref.WeakSet()


def cache_info():
    """Counters of this process: hits, misses, compiles, memory_entries, disk_entries,
    disk_hits, traces (functions traced, one per new signature; none when a disk-cache
    manifest supplies the kernel, as in a new process whose functions are all cached) and
    manifest_hits."""
    info = CacheInfo(**vars(_stats))
    info.memory_entries = sum(len(t.cache) for t in list(_transforms))
    dc = disk_cache()
    info.disk_entries = len(dc.entries()) if dc is not None and dc.enabled else 0
    return info


def clear_cache(memory=True, disk=False):
    if memory:
        for t in list(_transforms):
            t.cache.clear()
            t.fast.clear()
        _vjp_cache.cache_clear()
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
# Differential testing: GRADJIT_CHECK=1 or gj.config(check=True)
# ---------------------------------------------------------------------------------------------


@dataclass
class Config:
    # every compiled call is also traced afresh and evaluated by the numpy reference
    # evaluator, and the function's forward values by plain Python; any disagreement raises
    check: bool = os.environ.get("GRADJIT_CHECK", "0") not in ("", "0")


_config = Config()


def config(**options):
    """Set (and return) gradjit's run-time options: ``check`` (differential testing)."""
    for name, value in options.items():
        if not hasattr(_config, name):
            raise TypeError(f"unknown gradjit option {name!r}")
        setattr(_config, name, value)
    if _config.check:  # checked calls never take the hot path
        for tf in list(_transforms):
            tf.fast.clear()
    return _config


class CheckFailed(GradjitError, AssertionError):
    """GRADJIT_CHECK: a compiled result disagrees with the reference evaluator or Python."""


def _differential(tf, args, result):
    """``result`` (the kernel's) against the reference evaluator on a fresh trace of the same
    call; the traced function's forward values against the function run by Python."""
    from ..compiler import reference
    low = Lowered(tf, args, fkey=None)
    vals = [prepare(x) for x in low.leaves] + [c.get() for c in low.traced.captures]
    ref = reference.evaluate(low.optimized, *vals)
    want = tuple(ref) if low.assemble is None else low.assemble(list(ref))
    _agree(result, want, f"{tf.kind} of {low.traced.qualname} ({low.traced.loc})",
           "the reference evaluator")
    fwd = reference.evaluate(low.traced.graph, *vals)
    python = tf.fun(*args)
    _agree(pytree.unflatten(low.traced.out_tree, fwd), python,
           f"the trace of {low.traced.qualname} ({low.traced.loc})", "the function run by Python")
    return result


def _agree(got, want, what, against):
    g, gt = pytree.flatten(got)
    w, wt = pytree.flatten(want)
    if len(g) != len(w):
        raise CheckFailed(f"GRADJIT_CHECK: {what} gives {len(g)} values, {against} {len(w)}")
    for k, (a, b) in enumerate(zip(g, w)):
        a, b = np.asarray(a), np.asarray(b)
        single = a.dtype == np.float32 or b.dtype == np.float32
        tol = 1e-4 if single else 1e-7
        scale = float(np.max(np.abs(b[np.isfinite(b)]), initial=1.0)) if b.dtype.kind in "fc" \
            else 1.0
        if a.shape != b.shape or not np.allclose(a, b, rtol=tol, atol=tol * 1e-3 * scale,
                                                 equal_nan=True):
            raise CheckFailed(f"GRADJIT_CHECK: {what}, result {k}: {a!r} but {against} "
                              f"gives {b!r}")


# ---------------------------------------------------------------------------------------------
# Compiled entries
# ---------------------------------------------------------------------------------------------


class Entry:
    """One compiled (function, transform, signature): the kernel and how to call it."""

    __slots__ = ("kernel", "full", "captures", "guards", "post", "graph",
                 "source", "traced", "optimized", "n_out", "has_0d", "check")

    def general(self, flat):
        """The arguments' sizes are not those the fast entry point was specialised for: from
        now on call the general kernel (numba compiles or loads it at this first call)."""
        self.kernel = self.full
        try:
            return self.kernel(*flat, *[c.get() for c in self.captures])
        except ShapeError as e:
            raise ShapeError(f"{e} (argument shapes: {_shapes(flat)})") from None

    def guards_ok(self):
        """Whether everything the trace read from outside its arguments still holds: guarded
        values unchanged, arrays still of the dtype, rank and unit axes it was compiled for."""
        try:
            for cap in self.guards:
                if not cap.holds(cap.get()):
                    return False
            for cap in self.captures:
                if arg_key(cap.get()) != arg_key(cap.value):
                    return False
        except Exception:  # noqa: BLE001 - a path that no longer leads anywhere: retrace
            return False
        return True


_module_counter = [0]


_used_keys = set()


def _seal_used():
    """At exit: record numba's object code of every entry this process used. numba adds a
    specialisation to an entry's files when a kernel meets a new array layout at a call;
    unsealed, the next process would have to distrust (and recompile) those files."""
    dc = _disk
    if dc is None or not dc.enabled:
        return
    for key in sorted(_used_keys):
        try:
            dc.seal(key)
        except Exception:  # noqa: BLE001, S110 - exiting: nothing to report to
            pass


def _used(key):
    if not _used_keys:
        import atexit
        atexit.register(_seal_used)
    _used_keys.add(key)


def load_source(source, key, meta):
    """Import generated source: through the disk cache when available, else a private file."""
    dc = disk_cache()
    if dc is not None:
        _used(key)
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


@functools.lru_cache(maxsize=None)
def _versions():
    """What a cached kernel depends on besides its source: the versions, and the helpers that
    numba inlines into it (gradjit/kernels/cpu.py), whose edits numba's own cache would miss."""
    import numba
    from .. import __version__
    from ..kernels import cpu as helpers
    with open(helpers.__file__, "rb") as f:
        stamp = hashlib.sha256(f.read()).hexdigest()[:16]
    return (f"gradjit={__version__};numba={numba.__version__};python={sys.version.split()[0]};"
            f"helpers={stamp}")


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
        if not all(isinstance(k, int) and k >= 0 for k in self.static_argnums):
            # (negative positions would need the arity; unchecked they were silently ignored)
            raise GradjitError(f"static_argnums={static_argnums!r}: expected non-negative "
                               "argument positions")
        if target not in ("auto", "cpu", "parallel", "cuda"):
            raise ValueError(f"unknown target {target!r}: use 'auto', 'cpu', 'parallel' or 'cuda'")
        self.target = target
        self.cache = {}
        # fingerprint of the argument types -> (compiled function, post, strict, (entry, kernel))
        self.fast = {}
        _transforms.add(self)
        functools.update_wrapper(self, fun, updated=())

    def __repr__(self):
        return f"<gradjit.{self.kind} of {name_of(self.fun)}>"

    # -- the hot path --------------------------------------------------------------------------

    def __call__(self, *args):
        # The hot path: numba's C fingerprint of the arguments' types (dtype, rank, layout),
        # one dict lookup, and the compiled function numba would pick for them, called
        # directly. The kernel itself raises when a size is 1 where it was compiled for
        # other sizes (unit axes are part of the signature), and any error it raises is
        # sorted out by the full path.
        try:
            run, post, strict, _ = self.fast[fingerprint(args)]
        except (KeyError, NotImplementedError):
            run = None
        if run is not None and (strict is None or strict(args)):
            try:
                out = run(*args)
            except GradjitError:
                pass
            else:
                _stats.hits += 1
                return out if post is None else post(out)
        # The full path runs outside the handlers above: an error it raises must not come
        # chained to a fast-path miss ("During handling of the above exception...").
        try:
            return self._call(args)
        except GradjitError as e:
            surface(e)  # the user's frames and the message (GRADJIT_DEBUG: everything)
            raise

    def _call(self, args):
        """The full path: a key from the arguments' types (arrays: dtype, rank, unit axes),
        compiling on a miss; then the fast path is set up for these argument types."""
        n = len(args)
        key = (_KEYS[n] if n < _N_KEYS else _key_fn(n))(args)
        entry = self.cache.get(key)
        if entry is None or self.static_argnums or entry.check:
            if self.static_argnums or any(t in _TREES for t in key):
                return self._call_tree(args)
            if entry is None or not entry.guards_ok():
                for a in args:
                    arg_key(a)  # rejects unsupported argument types with a clear error
                if entry is not None:  # something it read changed: off the hot path
                    self._drop_fast(entry)
                entry = self._compile(key, args)
            else:
                _stats.hits += 1
        else:
            _stats.hits += 1
        call = [prepare(a) for a in args] if entry.has_0d else args
        try:  # free when nothing is raised (Python 3.11+)
            out = entry.kernel(*call, *[c.get() for c in entry.captures]) if entry.captures \
                else entry.kernel(*call)
        except ShapeError as e:
            raise ShapeError(f"{e} (argument shapes: {_shapes(args)})") from None
        except SizeFallback:
            out = entry.general(call)
        post = entry.post
        if _config.check:  # differential testing: nothing on the hot path, every call checked
            return _differential(self, args, out if post is None else post(out))
        if not entry.has_0d:
            _set_fast(self.fast, entry, args)
        return out if post is None else post(out)

    def _call_tree(self, args):
        static = _static_args(self, args)
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
        except SizeFallback:
            out = entry.general(flat)
        out = out if entry.post is None else entry.post(out)
        return _differential(self, args, out) if _config.check else out

    def _drop_fast(self, entry):
        for fp in [fp for fp, v in self.fast.items() if v[3][0] is entry]:
            del self.fast[fp]

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
        return entry.full

    def _gj_inline(self, interp, args, kwargs):
        """Called inside a function being traced: trace ``fun`` on the caller's tracers,
        transform, and replay the result into the caller's graph (so transforms compose and a
        whole optimisation loop compiles into one kernel)."""
        if kwargs:
            raise TraceError(f"{interp.loc}: keyword arguments to a gradjit transform are not supported")
        if self.kind == "vjp":
            raise TraceError(f"{interp.loc}: gj.{self.kind} cannot be used inside a traced function yet")
        return transforms.inline(self, interp, args, _static_args(self, args))

    def lower(self, *args):
        """Trace and transform for the signature of ``args`` (no numba compilation)."""
        return Lowered(self, args)

    def _compile(self, key, args):
        _stats.misses += 1
        entry = _compile_with_manifests(self, args)
        self.cache[key] = entry
        return entry



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


def fingerprint(args):
    """Until a kernel has run (numba is imported lazily), no hot-path table has entries."""
    raise NotImplementedError


def _set_fast(fast, entry, args):
    """Let the hot path run ``entry`` for arguments typed as ``args`` (which it just ran on).

    Not for unit axes (their kernels are specialised on the 1s, which the fingerprint does
    not see), nor for arguments the fingerprint cannot tell apart from another key: a
    Python float and a numpy float64 scalar print alike but promote differently (a Python
    float is weak), so their exact types are checked at each call."""
    global fingerprint
    from numba._dispatcher import compute_fingerprint as fingerprint

    if any(type(a) is np.ndarray and 1 in a.shape for a in args):
        return
    try:
        fp = fingerprint(args)
    except NotImplementedError:
        return
    old = fast.get(fp)
    if old is not None and (old[3][0] is not entry or old[3][1] is entry.kernel):
        # another key with this fingerprint (a numpy float64 where a Python float was) keeps
        # the hot path; only a switch of this entry's kernel (to the general one) replaces it
        return
    floats = [(k, type(a)) for k, a in enumerate(args) if isinstance(a, float)]
    strict = None
    if floats:
        test = " and ".join(f"type(args[{k}]) is T{k}" for k, _ in floats)
        ns = {f"T{k}": t for k, t in floats}
        exec(f"def strict(args):\n    return {test}", ns)
        strict = ns["strict"]
    run = kernel = entry.kernel
    vals = (*args, *[c.get() for c in entry.captures])
    into = getattr(run, "into", None)
    if into is None:
        run = _compiled_for(run, vals)
    else:
        fn, results = into
        outs = [np.empty(shape, dt) for _, shape, dt in results[1]]
        run = _into_runner(_compiled_for(fn, (*vals, *outs)), results, len(vals))
    if entry.check:
        run = _guarded(run, entry, len(args))
    fast[fp] = (run, entry.post, strict, (entry, kernel))


class _GuardMiss(GradjitError):
    """Raised by a guarded runner: something the trace read changed (the full path sorts it
    out: it retraces)."""


_MISS = _GuardMiss("a value read by the traced function changed")


def _guarded(inner, entry, nargs):
    """A runner for ``inner`` that first re-reads every outside value the trace depended on,
    through its access path (``cfg.alpha``, ``self.W``), in generated straight-line code:
    guarded values are compared with what the trace saw, arrays are type-checked and passed
    after the arguments. Anything that differs raises _MISS."""
    ns = {"inner": inner, "MISS": _MISS, "nd": np.ndarray, "shape_of": frontend.shape_of}
    reads, tests = [], []
    for j, cap in enumerate([*entry.guards, *entry.captures]):
        ns[f"R{j}"], ns[f"N{j}"] = cap.where, cap.name
        expr = f"R{j}[N{j}]" if cap.kind == "global" else \
            f"R{j}.cell_contents" if cap.kind == "cell" else f"R{j}"
        for i, (op, k) in enumerate(cap.steps):
            if op == "attr":
                expr += f".{k}" if k.isidentifier() else f"getattr({expr}, {k!r})"
            else:
                ns[f"K{j}_{i}"] = k
                expr = f"{expr}[K{j}_{i}]"
        reads.append(f"v{j} = {expr}")
        v, e = f"v{j}", f"E{j}"
        if j >= len(entry.guards):  # an array passed to the kernel
            dt, nd, units = arg_key(cap.value)
            ns[f"D{j}"], ns[f"U{j}"] = dt, units
            unit = f"1 not in {v}.shape" if units is None else \
                f"tuple([d == 1 for d in {v}.shape]) == U{j}"
            tests.append(f"type({v}) is nd and {v}.dtype == D{j} and {v}.ndim == {nd} and {unit}")
            continue
        ns[e] = cap.expected
        if cap.mode == "value":
            ns[f"T{j}"] = type(cap.expected)
            nan = isinstance(cap.expected, float) and cap.expected != cap.expected
            tests.append(f"type({v}) is T{j} and ({v} is {e} or {v} == {e}"
                         f"{f' or {v} != {v}' if nan else ''})")
        elif cap.mode == "ident":
            tests.append(f"{v} is {e}")
        elif cap.mode == "type":
            tests.append(f"type({v}) is {e}")
        else:
            tests.append(f"shape_of({v}) == {e}")
    params = ", ".join(f"a{k}" for k in range(nargs))
    passed = ", ".join([f"a{k}" for k in range(nargs)] +
                       [f"v{j}" for j in range(len(entry.guards), len(reads))])
    lines = [f"def run({params}):", "    try:", *[f"        {r}" for r in reads],
             f"        ok = {' and '.join(tests) or 'True'}",
             "    except Exception:", "        ok = False",
             "    if not ok:", "        raise MISS", f"    return inner({passed})"]
    exec("\n".join(lines), ns)
    return ns["run"]


def _compiled_for(disp, args):
    """The compiled function numba's dispatcher ``disp`` runs for ``args``: called directly,
    it skips the dispatcher's own type matching (the caller has matched the types)."""
    import numba

    try:
        return disp.overloads[tuple(numba.typeof(a) for a in args)].entry_point
    except Exception:  # not a CPU dispatcher, or typed otherwise: the dispatcher still works
        return disp


def _shapes(args):
    return ", ".join(str(np.shape(a)) for a in args)


def _static_args(tf, args):
    """The static arguments by position. One past the arguments given is an error: ignored,
    it would leave the argument meant to be static traced."""
    for k in tf.static_argnums:
        if k >= len(args):
            raise GradjitError(f"static_argnums={tf.static_argnums!r} does not fit the "
                               f"{len(args)} arguments given")
    return {k: args[k] for k in tf.static_argnums}


def _hashable(a):
    try:
        hash(a)
        return a
    except TypeError:
        raise GradjitError(f"static arguments must be hashable, got {type(a).__name__}") from None


def _encode_spec(spec):
    if spec is None:
        return None
    what, tree, rest = spec[0], encode_tree(spec[1]), spec[2:]
    if what == "tree":
        return (what, tree)
    groups = tuple((encode_tree(t), n) for t, n in rest[0])
    return (what, tree, groups) + tuple(rest[1:])


def _decode_spec(enc):
    if enc is None:
        return None
    what, tree, rest = enc[0], decode_tree(enc[1]), enc[2:]
    if what == "tree":
        return (what, tree)
    groups = tuple((decode_tree(t), n) for t, n in rest[0])
    return (what, tree, groups) + tuple(rest[1:])


_UNSET = object()


class Lowered:
    """A traced and transformed function for one signature: IR, optimised IR and source."""

    def __init__(self, tf, args, fkey=_UNSET):
        self.tf = tf
        static = _static_args(tf, args)
        # the manifest key is taken before tracing: what the trace then reads is recorded
        self.fkey = _function_key(tf, args) if fkey is _UNSET else fkey
        _stats.traces += 1
        self.traced = trace(tf.fun, args, static)
        kind = tf.kind
        self.leaves = [x for k, a in enumerate(args) if k not in static
                       for x in pytree.flatten(a)[0]]
        self.signature = describe(self.leaves)
        self.target = _resolve_target(tf)
        what = f"{kind} of {self.traced.qualname} ({self.traced.loc})"
        graph, self.spec = transform_spec(tf, self.traced, args, static)
        self.assemble = assembler(self.spec)
        if DEBUG >= 3:
            verify(graph)
        self.transformed = graph
        self.optimized = passes.optimize(graph)
        if DEBUG >= 2:
            print(f"[gradjit] {kind} {self.traced.qualname}:\n{self.optimized}", file=sys.stderr)
        self.source = cpu.emit_source(self.optimized, what=what, target=self.target)

    def _numba_compile(self, kernel, outs=()):
        """Compile (or load from numba's cache) for the argument types of this signature now,
        so that errors surface here and ahead-of-time ``warm`` stores object code."""
        vals = [prepare(x) for x in self.leaves] + [c.value for c in self.traced.captures] + \
            list(outs)
        _numba_compile(kernel, vals, lambda: f"{self.tf.kind} of {self.traced.qualname} "
                       f"({self.traced.loc}) [{self.signature}]")

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
        _preload_capi(_capi_needed(self.source))
        self._numba_compile(_fast(mod), _out_examples(mod))
        dc = disk_cache()
        if dc is not None and dc.enabled:
            dc.seal(key)  # record numba's object code so later processes can trust it
            if self.fkey:
                _write_manifest(dc, self, key)
        if not hit:
            _stats.compiles += 1
        if DEBUG >= 1:
            print(f"[gradjit] {'disk hit' if hit else 'compile'} {self.tf.kind} "
                  f"{self.traced.qualname} [{self.signature}] {time.perf_counter() - t0:.3f}s",
                  file=sys.stderr)
        e = _entry(mod, self.traced.captures, self.traced.guards, self.leaves,
                   [(a.dtype, a.ndim) for a in self.result_avals()], self.assemble)
        e.graph = self.optimized
        e.source = self.source
        e.traced = self.traced.graph
        e.optimized = self.optimized
        return e

    def result_avals(self):
        """Avals of what the kernel returns (a bare value when there is one result)."""
        return [a.aval for a in self.optimized.outputs]


# numba's BLAS and LAPACK calls find their function pointers at the first call by importing
# scipy.linalg.cython_blas / cython_lapack; importing those through their package imports all
# of scipy.linalg (about half a second). A kernel that needs them gets just the two extension
# modules, loaded under their own names (a later ``import scipy.linalg`` works as usual).
_SCIPY_CAPI = (("cython_blas", ("np.dot(", "np.linalg.")), ("cython_lapack", ("np.linalg.",)))


def _capi_needed(source):
    return [name for name, marks in _SCIPY_CAPI if any(m in source for m in marks)]


def _preload_capi(names):
    for name in names:
        full = "scipy.linalg." + name
        if full in sys.modules or "scipy.linalg" in sys.modules:
            continue
        try:
            import importlib.machinery

            import scipy
            d = os.path.join(os.path.dirname(scipy.__file__), "linalg")
            for suffix in importlib.machinery.EXTENSION_SUFFIXES:
                path = os.path.join(d, name + suffix)
                if os.path.exists(path):
                    break
            else:
                continue
            spec = importlib.util.spec_from_file_location(
                full, path, loader=importlib.machinery.ExtensionFileLoader(full, path))
            mod = importlib.util.module_from_spec(spec)
            sys.modules[full] = mod
            try:
                spec.loader.exec_module(mod)
            except BaseException:
                sys.modules.pop(full, None)
                raise
        except Exception:  # noqa: BLE001, S112 - numba then imports it the usual way
            continue


def _resolve_target(tf):
    target = tf.target if tf.target != "auto" else os.environ.get("GRADJIT_TARGET", "cpu")
    if target == "auto":
        target = "cpu"
    if target == "cuda":
        raise GradjitError("target='cuda' is not available yet")
    return target


def _numba_compile(kernel, vals, what):
    import numba
    from numba.core.errors import NumbaError
    try:
        kernel.compile(tuple(numba.typeof(v) for v in vals))
    except NumbaError as e:
        raise GradjitError(f"internal error: numba could not compile the kernel for {what()}: "
                           f"{str(e).splitlines()[0]}") from None


def _numba_load(kernel, vals, what):
    """``_numba_compile`` of a kernel expected in numba's object-code cache, without the
    full refresh of numba's CPU target that loading begins with (importing every
    implementation registry, and scipy for a BLAS probe: most of a new process's first call).
    Loading object code needs only numba's runtime (NRT) initialised; should numba compile
    instead (a cache miss), its compiler refreshes the target as usual."""
    try:
        from numba.core.compiler_lock import global_compiler_lock
        from numba.core.runtime import rtsys
        ctx = kernel.targetctx
    except (ImportError, AttributeError):  # another numba: the plain way
        return _numba_compile(kernel, vals, what)
    with global_compiler_lock:  # no other thread compiles while refresh is replaced
        if "refresh" in vars(ctx):
            return _numba_compile(kernel, vals, what)

        def once():
            del ctx.refresh  # the next refresh (a compile) is the real one
            rtsys.initialize(ctx)
        ctx.refresh = once
        try:
            _numba_compile(kernel, vals, what)
        finally:
            vars(ctx).pop("refresh", None)


def _fast(mod):
    """The entry point to compile first: the size-specialised one when the module has it,
    writing its small array results into arrays the caller passes when it can."""
    return getattr(mod, "kernel_into", None) or getattr(mod, "kernel_fast", None) or mod.kernel


def _out_examples(mod):
    """The arrays ``kernel_into`` writes its results to (compiling needs their types)."""
    if not hasattr(mod, "kernel_into"):
        return []
    return [np.empty(shape, dt) for _, shape, dt in mod.kernel_into_results[1]]


def _into_runner(fn, results, nargs=None):
    """A Python function calling ``fn`` (a ``kernel_into``) like the other kernels: it
    allocates the array results, passes them after the arguments, and puts the results in
    order. ``nargs``: a fixed number of arguments (faster than ``*args``)."""
    n, outs = results
    ns = {"fn": fn, "empty": np.empty}
    alloc = []
    for j, (_, shape, dt) in enumerate(outs):
        # np.empty(2) is numpy's cheapest allocation (~0.1 us): no dtype argument when float64
        ns[f"S{j}"], ns[f"D{j}"] = (shape[0] if len(shape) == 1 else tuple(shape)), np.dtype(dt)
        alloc.append(f"    o{j} = empty(S{j}{'' if dt == 'float64' else f', D{j}'})")
    params = "*args" if nargs is None else ", ".join(f"a{k}" for k in range(nargs))
    arrays = {k: f"o{j}" for j, (k, _, _) in enumerate(outs)}
    others = [k for k in range(n) if k not in arrays]
    got = {k: ("r" if len(others) == 1 else f"r[{i}]") for i, k in enumerate(others)}
    res = [arrays.get(k) or got[k] for k in range(n)]
    outs_text = ", ".join(f"o{j}" for j in range(len(outs)))
    lines = [f"def run({params}):", *alloc,
             f"    {'r = ' if others else ''}fn({params}, {outs_text})",
             f"    return {res[0] if n == 1 else '(' + ', '.join(res) + ')'}"]
    exec("\n".join(lines), ns)
    run = ns["run"]
    run.into = (fn, results)
    return run


def _entry(mod, captures, guards, leaves, results, assemble):
    """The Entry of a kernel module; ``results``: (dtype, rank) of what the kernel returns."""
    e = Entry()
    e.kernel = _fast(mod)
    if hasattr(mod, "kernel_into"):
        e.kernel = _into_runner(e.kernel, mod.kernel_into_results)
    e.full = mod.kernel
    e.captures = captures
    e.guards = guards
    # arrays read from globals are re-typed at every call too: a new dtype or rank retraces
    e.check = bool(e.guards or e.captures)
    e.has_0d = any(type(x) is np.ndarray and x.ndim == 0 for x in leaves)
    e.graph = e.source = e.traced = e.optimized = None
    convs = [_convert_to(dt, nd) for dt, nd in results]
    e.n_out = len(convs)
    e.post = _post(convs, assemble)
    return e


# ---------------------------------------------------------------------------------------------
# Manifests: disk-cache hits in a new process without tracing
#
# The disk entry's key hashes the generated source, known only after tracing. A manifest,
# stored under a key computable before tracing (function, transform, options, argument
# signature, versions), records what the trace depended on: the source text of every
# function it inlined, the values of the globals/closure cells it baked in and how to find
# them again, the arrays it reads at every call, and how to assemble the results. A process
# whose checks all hold imports the entry's kernel and builds the Entry without tracing.
# ---------------------------------------------------------------------------------------------

MANIFEST_FORMAT = 2


def _transformed_token(tf):
    return ("tf", tf.kind, value_token(tf.argnums), bool(tf.has_aux),
            value_token(tf.static_argnums), tf.target, value_token(tf.fun))


def _batched_token(b):
    return ("vmap", value_token(b.in_axes), value_token(b.out_axes), value_token(b.fun))


_env = []


def _env_token():
    """Versions and machine: a kernel is only reused where it was built for."""
    if not _env:
        import platform

        import numba

        from .. import __version__
        cpu_name = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("model name"):
                        cpu_name = line.split(":", 1)[1].strip()
                        break
        except OSError:
            pass
        scipy = sys.modules.get("scipy")  # (imported by numba) static calls may use it
        _env.append((__version__, _PACKAGE_STAMP, numba.__version__, np.__version__,
                     getattr(scipy, "__version__", None), sys.version, cpu_name))
    return _env[0] + (os.environ.get("GRADJIT_TARGET", ""),)


def _package_stamp():
    """gradjit's own files (path, size, mtime): a manifest skips the compiler, so one
    written by other compiler code (a development tree, an upgrade without a new version
    number) must not be used."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    h = hashlib.sha256()
    for d, dirs, files in os.walk(root):
        dirs[:] = sorted(x for x in dirs if x != "__pycache__")
        for name in sorted(files):
            if name.endswith(".py"):
                st = os.stat(os.path.join(d, name))
                h.update(f"{os.path.relpath(os.path.join(d, name), root)}:{st.st_size}:"
                         f"{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


_PACKAGE_STAMP = _package_stamp()  # at import: the code this process runs (about 1 ms)


def _function_key(tf, args):
    """The manifest key of ``tf`` called on ``args``; None when the disk cache is off or
    something cannot be described as plain data (every new process then traces)."""
    if tf.kind == "vjp":
        return None
    dc = disk_cache()
    if dc is None or not dc.enabled:
        return None
    _register_tokens()
    try:
        sig = []
        for k, a in enumerate(args):
            if k in tf.static_argnums:
                sig.append(("static", value_token(a)))
            else:
                leaves, tree = pytree.flatten(a)
                sig.append((encode_tree(tree), tuple(leaf_token(x) for x in leaves)))
        what = (MANIFEST_FORMAT, _transformed_token(tf), tuple(sig), _env_token())
        import pickle
        return hashlib.sha256(pickle.dumps(what, protocol=4)).hexdigest()
    except (Unstorable, GradjitError, TypeError, ValueError, AttributeError):
        return None


def _register_tokens():
    if Transformed not in TOKENS:
        from .vmap import Batched
        TOKENS[Transformed] = _transformed_token
        TOKENS[Batched] = _batched_token


def _file_stamp(path):
    """(size, mtime_ns, sha256, text) of a source file, read consistently."""
    st = os.stat(path)
    with open(path, "rb") as f:
        data = f.read()
    st2 = os.stat(path)
    if (st.st_size, st.st_mtime_ns) != (st2.st_size, st2.st_mtime_ns):
        raise Unstorable(f"{path} changed while being read")
    return st2.st_size, st2.st_mtime_ns, hashlib.sha256(data).hexdigest(), data.decode("utf-8")


def _segment_at(text, line, seg):
    """Whether ``seg`` (a def or lambda's source) starts on line ``line`` of ``text``."""
    lines = text.splitlines(keepends=True)
    if not 1 <= line <= len(lines):
        return False
    pos = sum(len(x) for x in lines[:line - 1])
    i = text.find(seg, pos)
    return i != -1 and i < pos + len(lines[line - 1])


def _is_wrapper(obj):
    from .vmap import Batched
    return isinstance(obj, (Transformed, Batched))


def _describe_trace(low, entry_key):
    """The manifest payload of a Lowered (raises Unstorable)."""
    import types
    traced = low.traced
    files, segments = {}, []
    texts = {}
    for (path, line, _col), (qualname, seg) in traced.sources.items():
        if path not in texts:
            try:
                size, mtime, digest, texts[path] = _file_stamp(path)
            except (OSError, UnicodeDecodeError):
                raise Unstorable(f"cannot read {path}") from None
            files[path] = (size, mtime, digest)
        if not _segment_at(texts[path], line, seg):  # module edited since it was imported
            raise Unstorable(f"{qualname} differs from {path}:{line}")
        segments.append((path, line, seg))

    # How to find every function whose closure cells were read, from the transform itself
    # (its .fun chain) or from globals and cells read on the way.
    known = {}  # id(function or cell) -> path

    def register(obj, path):
        if id(obj) in known:
            return
        known[id(obj)] = path
        if _is_wrapper(obj):
            register(obj.fun, ("fun", path))
        elif isinstance(obj, types.FunctionType):
            for i, cell in enumerate(obj.__closure__ or ()):
                known.setdefault(id(cell), ("cell", path, i))

    register(low.tf, ("root",))
    reads = traced.reads or []
    statics = [frontend.Capture(r[1], r[2], r[3], r[4]) for r in reads if r[0] == "cap"]
    caps = list(traced.guards) + list(traced.captures) + statics
    attrs = [r for r in reads if r[0] == "attr"]
    absent = set()
    for r in reads:
        if r[0] == "absent":
            mod = r[1].get("__name__")
            if getattr(sys.modules.get(mod), "__dict__", None) is not r[1]:
                raise Unstorable(f"builtin '{r[2]}' read from an unknown module")
            absent.add((mod, r[2]))

    def where_path(cap):
        if cap.kind == "obj":
            raise Unstorable(f"'{cap.text}' is read from an object")
        if cap.kind == "global":
            mod = cap.where.get("__name__")
            if not isinstance(mod, str) or getattr(sys.modules.get(mod), "__dict__", None) \
                    is not cap.where:
                raise Unstorable(f"global '{cap.name}' of an unknown module")
            return ("g", mod, cap.name)
        cp = known.get(id(cap.where))
        return None if cp is None else ("c", cp, cap.name)

    def obj_path(obj):
        if isinstance(obj, types.ModuleType):
            return ("mod", obj.__name__)
        return ("type", obj.__module__, obj.__qualname__)

    paths = {}
    for _ in range(len(caps) + len(attrs) + 1):  # until every cell's owner is found
        progress = False
        for cap in caps:
            if id(cap) in paths:
                continue
            p = where_path(cap)
            if p is not None:
                paths[id(cap)] = p
                progress = True
                register(cap.value, ("val", p, value_token(cap.steps)))
        for r in attrs:
            register(r[3], ("attr", obj_path(r[1]), r[2]))
        if not progress:
            break
    missing = [c.name for c in caps if id(c) not in paths]
    if missing:
        raise Unstorable(f"cannot find closure variable(s) {missing} again")

    guards = [(paths[id(c)], c.steps, c.mode, _guard_token(c.mode, c.value)) for c in traced.guards]
    statics = [(paths[id(c)], value_token(c.value)) for c in statics]
    arrays = [(paths[id(c)], c.steps, leaf_token(c.value)) for c in traced.captures]
    attr_reads = []
    for _, obj, name, value in attrs:
        if isinstance(obj, types.ModuleType) and obj.__name__.split(".")[0] in LIBRARIES \
                or isinstance(obj, type) and obj.__module__.split(".")[0] in LIBRARIES:
            continue  # library attributes: their versions are in the key
        attr_reads.append((("attr", obj_path(obj), name), value_token(value)))
    return {
        "format": MANIFEST_FORMAT, "entry": entry_key, "files": files, "segments": segments,
        "guards": guards, "statics": statics, "arrays": arrays, "attrs": attr_reads,
        "absent": sorted(absent),
        "results": [(a.dtype, a.ndim) for a in low.result_avals()],
        "spec": _encode_spec(low.spec), "qualname": traced.qualname, "loc": traced.loc,
        "target": low.target, "capi": _capi_needed(low.source),
        "signature": low.signature, "created": time.time(),
    }


def _write_manifest(dc, low, entry_key):
    try:
        payload = _describe_trace(low, entry_key)
    except Unstorable as e:
        if DEBUG >= 1:
            print(f"[gradjit] no manifest for {low.traced.qualname}: {e}", file=sys.stderr)
        return
    dc.store_manifest(low.fkey, payload)


class _Stale(Exception):
    """A manifest whose checks fail (its trace depended on something that changed)."""


def _resolve(path, tf):
    what = path[0]
    if what == "root":
        return tf
    if what == "fun":
        return _resolve(path[1], tf).fun
    if what == "cell":
        fn = _resolve(path[1], tf)
        return fn.__closure__[path[2]]
    if what == "val":
        return _capture(path[1], tf, path[2]).get()
    if what == "mod":
        mod = sys.modules.get(path[1])
        if mod is None:
            raise _Stale(f"module {path[1]} is not imported")
        return mod
    if what == "type":
        obj = _resolve(("mod", path[1]), tf)
        for part in path[2].split("."):
            obj = getattr(obj, part)
        return obj
    if what == "attr":
        return getattr(_resolve(path[1], tf), path[2])
    raise _Stale(f"unknown path {what}")


def _capture(path, tf, steps=()):
    """The frontend.Capture a path ("g", module, name) / ("c", cell path, name), then
    ``steps``, leads to."""
    if path[0] == "g":
        mod = _resolve(("mod", path[1]), tf)
        return frontend.Capture("global", mod.__dict__, path[2], None, tuple(steps))
    cell = _resolve(path[1], tf)
    return frontend.Capture("cell", cell, path[2], None, tuple(steps))


def _guard_token(mode, value):
    """What a manifest stores of a guarded value, to compare in a new process."""
    if mode == "type":
        return value_token(type(value))
    if mode == "shape":
        t, n = frontend.shape_of(value)
        return (t.__name__, value_token(n))
    return value_token(value)


def _guard_expected(mode, value):
    import copy
    return {"value": copy.deepcopy, "ident": lambda v: v, "type": type,
            "shape": frontend.shape_of}[mode](value)


def _check_sources(m):
    """Raise _Stale unless every inlined function's text is still at its line. Returns the
    files whose stamp changed while what the trace read of them did not (or {})."""
    fresh = {}
    for path, (size, mtime, digest) in m["files"].items():
        st = os.stat(path)
        if (st.st_size, st.st_mtime_ns) == (size, mtime):
            continue
        size, mtime, new_digest, text = _file_stamp(path)
        fresh[path] = (size, mtime, new_digest)
        if new_digest == digest:
            continue
        for p, line, seg in m["segments"]:  # edited: still the same functions, same lines?
            if p == path and not _segment_at(text, line, seg):
                raise _Stale(f"{path}:{line} was edited")
    return fresh


def _from_manifest(tf, m, args, dc):
    """The Entry a manifest describes, if all its checks hold now; None if its entry is gone
    (the manifest is dead); raises _Stale when something it depends on changed."""
    try:
        fresh = _check_sources(m)
        guards, arrays = [], []
        for path, steps, mode, token in m["guards"]:
            cap = _capture(path, tf, steps)
            cap.value = cap.get()
            if _guard_token(mode, cap.value) != token:
                raise _Stale(f"{cap.text} changed")
            cap.mode, cap.expected = mode, _guard_expected(mode, cap.value)
            guards.append(cap)
        for path, token in m["statics"]:  # modules, classes, None: not re-checked per call
            if value_token(_capture(path, tf).get()) != token:
                raise _Stale(f"{path[-1]} changed")
        for mod, name in m["absent"]:  # builtins: still not shadowed by a module global
            if name in _resolve(("mod", mod), tf).__dict__:
                raise _Stale(f"a global '{name}' now shadows the builtin")
        for path, steps, token in m["arrays"]:
            cap = _capture(path, tf, steps)
            cap.value = cap.get()
            if type(cap.value) is not np.ndarray or leaf_token(cap.value) != token:
                raise _Stale(f"{path[-1]} changed")
            arrays.append(cap)
        for path, token in m["attrs"]:
            if value_token(_resolve(path, tf)) != token:
                raise _Stale(f"{path[-1]} changed")
    except Exception as e:  # noqa: BLE001 - whatever fails to check, the manifest is not used
        raise _Stale(f"{type(e).__name__}: {e}") from None
    key = m["entry"]
    with dc.lock(key):
        mod = dc.load(key)
    if mod is None:
        return None
    _used(key)
    _stats.disk_hits += 1
    _stats.manifest_hits += 1
    static = set(tf.static_argnums)
    leaves = [x for k, a in enumerate(args) if k not in static for x in pytree.flatten(a)[0]]
    _preload_capi(m["capi"])
    vals = [prepare(x) for x in leaves] + [c.value for c in arrays] + _out_examples(mod)

    def what():
        return f"{tf.kind} of {m['qualname']} ({m['loc']}) [{m['signature']}]"
    if m.get("target") == "cpu":
        _numba_load(_fast(mod), vals, what)
    else:
        _numba_compile(_fast(mod), vals, what)
    dc.seal(key)
    if fresh:  # the files' new stamps, so that later processes need not read them again
        m["files"] = dict(m["files"], **fresh)
        m["refresh"] = True
    return _entry(mod, arrays, guards, leaves, m["results"],
                  assembler(_decode_spec(m["spec"])))


def _compile_with_manifests(tf, args):
    """An Entry from a manifest of the disk cache (no tracing), else traced and compiled
    (and the manifest written)."""
    fkey = _function_key(tf, args)
    if fkey is not None:
        dc = disk_cache()
        t0 = time.perf_counter()
        for name, m in dc.manifests(fkey):
            try:
                e = _from_manifest(tf, m, args, dc)
            except _Stale as why:
                if DEBUG >= 1:
                    print(f"[gradjit] manifest of {m.get('qualname')} not used: {why}",
                          file=sys.stderr)
                continue
            if e is None:  # its entry is gone
                dc.remove_manifest(fkey, name)
                continue
            if m.pop("refresh", False):
                if dc.store_manifest(fkey, m) not in (None, name):
                    dc.remove_manifest(fkey, name)
            else:
                dc.touch_manifest(fkey, name)
            if DEBUG >= 1:
                print(f"[gradjit] manifest hit {tf.kind} {m['qualname']} [{m['signature']}] "
                      f"{time.perf_counter() - t0:.3f}s", file=sys.stderr)
            return e
    return Lowered(tf, args, fkey=fkey).compile()


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


def _convert_to(dtype, ndim):
    """Rank-0 results come back from numba as Python numbers: give them the IR's dtype."""
    if ndim:
        return _identity
    return np.dtype(dtype).type


def _identity(x):
    return x


# ---------------------------------------------------------------------------------------------
# vjp
# ---------------------------------------------------------------------------------------------


def vjp(fun, *primals):
    """``(out, vjp_fn)``: ``vjp_fn(cotangent)`` returns one gradient per primal."""
    forward, back = _vjp_cache(fun)
    out = forward(*primals)
    out_leaves, out_tree = pytree.flatten(out)

    def vjp_fn(ct):
        ct_leaves, ct_tree = pytree.flatten(ct)
        if len(ct_leaves) != len(out_leaves):
            raise GradjitError("the cotangent must have the structure of the function's output")
        for c, o in zip(ct_leaves, out_leaves):
            if np.shape(c) != np.shape(o):
                raise ShapeError(f"vjp of {name_of(fun)}: the cotangent has shape {np.shape(c)}, "
                                 f"the output it pairs with {np.shape(o)}")
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


@functools.lru_cache(maxsize=256)
def _vjp_cache(fun):
    """The compiled forward and backward of ``fun`` for ``gj.vjp`` (kept per function, so that
    a vjp in a loop finds its kernels in memory)."""
    forward = Transformed(fun, "jit")
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
        try:
            out = entry.kernel(*flat, *[c.get() for c in entry.captures])
        except SizeFallback:
            out = entry.general(flat)
        return entry.post(out)
    return forward, run


class _VjpLowered(Lowered):
    """The vjp kernel also takes the output cotangents (after the primals)."""

    def __init__(self, tf, primals, cts):
        super().__init__(tf, primals)
        self.leaves = self.leaves + list(cts)
        self.signature = describe(self.leaves)
