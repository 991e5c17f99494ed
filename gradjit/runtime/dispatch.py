"""The transform objects (``gj.jit``, ``gj.grad``, ...) and their hot path: a call's key,
its compiled entry (from memory, a disk-cache manifest, or traced and compiled), and the
fast table that makes a repeated call one dict lookup, the guards, and one numba call."""

from __future__ import annotations

import functools
import sys
import time

import numpy as np

from ..compiler import effects as effects_mod
from ..compiler import frontend, pytree, transforms
from ..compiler.transforms import name_of
from ..errors import GradjitError, ShapeError, SizeFallback, TraceError, surface
from . import manifests, tiered
from .check import differential, options
from .compiled import Lowered, resolve_target, static_args
from .dask_arrays import has_dask
from .device import is_device_array
from .entry import shapes_text
from .loader import into_runner
from .numba_internals import compiled_for, fingerprint_function
from .signature import TOKENS, arg_key, prepare, tree_key
from .state import DEBUG, disk_cache, live, stats
from .vmap import Batched


class Transformed:
    """The callable returned by ``gj.jit``, ``gj.grad``, ``gj.value_and_grad``."""

    def __init__(self, fun, kind, argnums=0, has_aux=False, static_argnums=(), target="auto",
                 static_argnames=()):
        if not callable(fun):
            raise TypeError(f"gradjit transforms take a function, not {type(fun).__name__}")
        self.fun = fun
        self.kind = kind
        self.argnums = argnums
        self.has_aux = has_aux
        self.static_argnames = static_argnames
        self.static_argnums = transforms.static_positions(fun, static_argnums, static_argnames)
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
        live.add(self)
        functools.update_wrapper(self, fun, updated=())

    def __repr__(self):
        return f"<gradjit.{self.kind} of {name_of(self.fun)}>"

    # -- the hot path --------------------------------------------------------------------------

    def __call__(self, *args, **kwargs):
        if kwargs:  # bound to positions by the function's signature
            args = transforms.bind_arguments(self.fun, args, kwargs)
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
                stats.hits += 1
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
        if has_dask(args):  # Dask arrays: per-chunk kernels (runtime/dask_arrays.py)
            from .dask_arrays import call
            return call(self, args)
        n = len(args)
        key = (_KEYS[n] if n < _N_KEYS else _key_fn(n))(args)
        entry = self.cache.get(key)
        if entry is None or self.static_argnums or entry.check:
            if self.static_argnums or any(t in _TREES or pytree.is_node_type(t) for t in key):
                return self._call_tree(args)
            if entry is None or not entry.guards_ok():
                for a in args:
                    arg_key(a)  # rejects unsupported argument types with a clear error
                    if is_device_array(a):  # keyed per leaf (arg_key), as pytrees are
                        _TREES.add(type(a))
                if any(t in _TREES for t in key):
                    return self._call_tree(args)
                if entry is not None:  # something it read changed: off the hot path
                    self._drop_fast(entry)
                entry = self._compile(key, args)
            else:
                stats.hits += 1
        else:
            stats.hits += 1
        call = [prepare(a) for a in args] if entry.has_0d else args
        try:  # free when nothing is raised (Python 3.11+)
            out = entry.kernel(*call, *[c.get() for c in entry.captures]) if entry.captures \
                else entry.kernel(*call)
        except ShapeError as e:
            raise ShapeError(f"{e} (argument shapes: {shapes_text(args)})") from None
        except SizeFallback:
            out = entry.general(call)
        post = entry.post
        if options.check:  # differential testing: nothing on the hot path, every call checked
            return differential(self, args, out if post is None else post(out))
        if not entry.has_0d:
            _set_fast(self.fast, entry, args)
        return out if post is None else post(out)

    def _tree_key(self, args):
        """The key of a call with pytrees or static arguments, and its leaves."""
        return tree_key(args, static_args(self, args))

    def _call_tree(self, args):
        key, leaves = self._tree_key(args)
        entry = self.cache.get(key)
        if entry is None or (entry.check and not entry.guards_ok()):
            entry = self._compile(key, args)
        else:
            stats.hits += 1
        flat = [prepare(x) for x in leaves]
        try:
            out = entry.kernel(*flat, *[c.get() for c in entry.captures])
        except ShapeError as e:
            raise ShapeError(f"{e} (argument shapes: {shapes_text(leaves)})") from None
        except SizeFallback:
            out = entry.general(flat)
        out = out if entry.post is None else entry.post(out)
        return differential(self, args, out) if options.check else out

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
            args = transforms.bind_arguments(self.fun, tuple(args), kwargs)
        if self.kind == "vjp":
            raise TraceError(f"{interp.loc}: gj.{self.kind} cannot be used inside a traced function yet")
        return transforms.inline(self, interp, args, static_args(self, args))

    def compile(self, *args, **kwargs):
        """Compile (or load from the disk cache) the kernel for the signature of ``args`` now,
        waiting until it is ready: later calls of that signature run it, never the numpy tier
        (runtime/tiered.py). Nothing is evaluated. Returns ``self``."""
        if kwargs:
            args = transforms.bind_arguments(self.fun, args, kwargs)
        n = len(args)
        key = (_KEYS[n] if n < _N_KEYS else _key_fn(n))(args)  # as _call keys it
        tree = self.static_argnums or any(t in _TREES or pytree.is_node_type(t) for t in key)
        if not tree:
            for a in args:
                arg_key(a)
                if is_device_array(a):
                    _TREES.add(type(a))
            tree = any(t in _TREES for t in key)
        if tree:
            key = self._tree_key(args)[0]
        entry = self.cache.get(key)
        if entry is None or (entry.check and not entry.guards_ok()):
            with tiered.blocking():
                entry = self._compile(key, args)
        tiered.wait(entry)
        return self

    def lower(self, *args):
        """Trace and transform for the signature of ``args`` (no numba compilation)."""
        return Lowered(self, args)

    def _compile(self, key, args):
        stats.misses += 1
        entry = _compile_with_manifests(self, args)
        self.cache[key] = entry
        return entry


# Argument types keyed leaf by leaf (``_call_tree``): pytrees, and the types of device arrays
# met so far (the hot path's key of one is only its type; they never take the fast table).
_TREES = {tuple, list, dict, type(None)}


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
    global fingerprint  # this module's own hot-path function, set once numba is imported
    fingerprint = fingerprint_function()

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
        run = compiled_for(run, vals)
    else:
        fn, results = into
        outs = [np.empty(shape, dt) for _, shape, dt in results[1]]
        run = into_runner(compiled_for(fn, (*vals, *outs)), results, len(vals))
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


# ---------------------------------------------------------------------------------------------
# Where an entry comes from: a disk-cache manifest (no tracing), else a trace and a compile
# ---------------------------------------------------------------------------------------------


def _compile_with_manifests(tf, args):
    """An Entry from a manifest of the disk cache (no tracing), else traced and compiled
    (and the manifest written)."""
    # CUDA entries are found by tracing (their modules and numba-cuda's object code are still
    # read from the disk cache): a manifest would also have to pin the device
    fkey = None if _on_cuda(tf, args) else manifests.function_key(tf, args)
    if fkey is not None:
        dc = disk_cache()
        t0 = time.perf_counter()
        for name, m in dc.manifests(fkey):
            try:
                e = manifests.from_manifest(tf, m, args, dc)
            except manifests.Stale as why:
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
    low = Lowered(tf, args, fkey=fkey)
    # the kernel, or numpy while a background process compiles it (runtime/tiered.py)
    return tiered.entry(low, lambda e: _with_effects(e, low.traced.effects))


def _with_effects(entry, effects):
    """The entry's results, after the Python side effects of its trace (``self.nfev += 1``)
    are replayed in program order (compiler/effects.py): ``post`` runs after every kernel call,
    on the fast table, the full path and pytree calls alike."""
    if effects:
        post, replay = entry.post, effects_mod.run_all

        def post_effects(out):
            replay(effects)
            return out if post is None else post(out)
        entry.post = post_effects
    return entry


def _on_cuda(tf, args):
    if tf.target == "cpu" or tf.target == "parallel":
        return False
    static = set(tf.static_argnums)
    leaves = [x for k, a in enumerate(args) if k not in static for x in pytree.flatten(a)[0]]
    return resolve_target(tf, leaves) == "cuda"


# transform objects in manifest keys and guards: described by their kind, options and function
TOKENS[Transformed] = manifests.transformed_token
TOKENS[Batched] = manifests.batched_token
