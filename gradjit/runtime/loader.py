"""Everything that touches numba and Python's import machinery: generated source imported
as a module (through the disk cache), compiled or loaded for the argument types of a
signature, the compiled function numba would pick for them, and the BLAS/LAPACK C-API
modules numba's linear algebra needs."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import sys
import tempfile

import numpy as np

from ..errors import GradjitError
from .numba_internals import enabled as internals_checked, load_without_refresh
from .state import disk_cache, open_disk_cache, stats


_module_counter = [0]


_used_keys = set()


def _seal_used():
    """At exit: record numba's object code of every entry this process used. numba adds a
    specialisation to an entry's files when a kernel meets a new array layout at a call;
    unsealed, the next process would have to distrust (and recompile) those files."""
    dc = open_disk_cache()
    if dc is None or not dc.enabled:
        return
    for key in sorted(_used_keys):
        try:
            dc.seal(key)
        except Exception:  # noqa: BLE001, S110 - exiting: nothing to report to
            pass


def mark_used(key):
    if not _used_keys:
        import atexit
        atexit.register(_seal_used)
    _used_keys.add(key)


def load_source(source, key, meta):
    """Import generated source: through the disk cache when available, else a private file."""
    dc = disk_cache()
    if dc is not None:
        mark_used(key)
        with dc.lock(key):
            mod = dc.load(key)
            if mod is not None:
                stats.disk_hits += 1
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
def versions():
    """What a cached kernel depends on besides its source: the versions, and the helpers that
    numba inlines into it (gradjit/kernels/cpu.py), whose edits numba's own cache would miss."""
    import numba
    from .. import __version__
    from ..kernels import cpu as helpers
    with open(helpers.__file__, "rb") as f:
        stamp = hashlib.sha256(f.read()).hexdigest()[:16]
    return (f"gradjit={__version__};numba={numba.__version__};python={sys.version.split()[0]};"
            f"helpers={stamp}")


# numba's BLAS and LAPACK calls find their function pointers at the first call by importing
# scipy.linalg.cython_blas / cython_lapack; importing those through their package imports all
# of scipy.linalg (about half a second). A kernel that needs them gets just the two extension
# modules, loaded under their own names (a later ``import scipy.linalg`` works as usual).
_SCIPY_CAPI = (("cython_blas", ("np.dot(", "np.linalg.")), ("cython_lapack", ("np.linalg.",)))


def capi_needed(source):
    return [name for name, marks in _SCIPY_CAPI if any(m in source for m in marks)]


def preload_capi(names):
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


def numba_compile(kernel, vals, what):
    internals_checked()  # an untested numba version stops here, before any kernel runs
    import numba
    from numba.core.errors import NumbaError
    try:
        kernel.compile(tuple(numba.typeof(v) for v in vals))
    except NumbaError as e:
        raise GradjitError(f"internal error: numba could not compile the kernel for {what()}: "
                           f"{str(e).splitlines()[0]}") from None


def numba_load(kernel, vals, what):
    """``numba_compile`` of a kernel expected in numba's object-code cache, skipping the
    target refresh that loading object code does not need (numba_internals)."""
    return load_without_refresh(kernel, lambda: numba_compile(kernel, vals, what))


def entry_point(mod):
    """The entry point to compile first: the size-specialised one when the module has it,
    writing its small array results into arrays the caller passes when it can."""
    return getattr(mod, "kernel_into", None) or getattr(mod, "kernel_fast", None) or mod.kernel


def out_examples(mod):
    """The arrays ``kernel_into`` writes its results to (compiling needs their types)."""
    if not hasattr(mod, "kernel_into"):
        return []
    return [np.empty(shape, dt) for _, shape, dt in mod.kernel_into_results[1]]


def into_runner(fn, results, nargs=None):
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
