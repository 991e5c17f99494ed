"""The numba internals gradjit uses, in one place, each checked against numba's version.

numba documents none of these as public; each buys speed, none is needed for correctness:

- ``numba._dispatcher.compute_fingerprint(args)``: the C type fingerprint numba's own
  dispatcher keys on. The hot path keys its table on it (one dict lookup per call).
- ``Dispatcher.overloads[signature].entry_point``: the compiled function for a signature,
  called directly (no second type matching inside the dispatcher).
- ``BaseContext.refresh``, ``numba.core.runtime.rtsys.initialize`` and
  ``numba.core.compiler_lock.global_compiler_lock``: loading a kernel's object code from
  numba's cache without first refreshing the whole CPU target (most of a new process's
  first call).

They were read against the numba versions in ``TESTED``; pyproject.toml pins numba to them.
On another version gradjit stops with a clear error at the first compile rather than risk
misbehaving; ``GRADJIT_NUMBA_INTERNALS=off`` runs on numba's public API alone (every call
then goes through the dispatcher: correct, a few hundred ns slower per call, and a slower
first call in a new process).
"""

from __future__ import annotations

import functools
import os

from ..errors import GradjitError

TESTED = ((0, 60), (0, 68))  # (major, minor), both ends included
ENV = "GRADJIT_NUMBA_INTERNALS"


def _probes():
    """(name, test) of each internal: the test is True when it is there as expected."""
    def fingerprint():
        from numba._dispatcher import compute_fingerprint
        return callable(compute_fingerprint)

    def overloads():  # (a dispatcher's ``overloads`` dict is made per instance: see compiled_for)
        from numba.core.compiler import CompileResult
        return "entry_point" in CompileResult._fields

    def refresh():
        from numba.core.base import BaseContext
        from numba.core.compiler_lock import global_compiler_lock  # noqa: F401
        from numba.core.runtime import rtsys
        return callable(getattr(BaseContext, "refresh", None)) and callable(rtsys.initialize)

    return (("numba._dispatcher.compute_fingerprint", fingerprint),
            ("Dispatcher.overloads[...].entry_point", overloads),
            ("BaseContext.refresh / rtsys.initialize", refresh))


def _version_tuple(text):
    parts = []
    for p in text.split(".")[:2]:
        digits = "".join(c for c in p if c.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


@functools.lru_cache(maxsize=None)
def enabled():
    """Whether gradjit uses the internals: True on a numba version in ``TESTED`` whose
    internals are all there; False when ``GRADJIT_NUMBA_INTERNALS=off``; else GradjitError."""
    if os.environ.get(ENV, "").strip().lower() in ("off", "0", "no", "false"):
        return False
    import numba
    lo, hi = TESTED
    if not lo <= _version_tuple(numba.__version__) <= hi:
        raise GradjitError(
            f"numba {numba.__version__} is outside the versions gradjit's use of numba "
            f"internals was checked against ({lo[0]}.{lo[1]} to {hi[0]}.{hi[1]}): install "
            f"numba in that range, or set {ENV}=off to use numba's public API only (slower "
            "calls)")
    missing = []
    for name, test in _probes():
        try:
            ok = test()
        except Exception:  # noqa: BLE001 - an import or attribute that is not there
            ok = False
        if not ok:
            missing.append(name)
    if missing:
        raise GradjitError(
            f"numba {numba.__version__} lacks internals gradjit expects ({', '.join(missing)}); "
            f"set {ENV}=off to use numba's public API only (slower calls)")
    return True


def _no_fingerprint(args):
    raise NotImplementedError


def fingerprint_function():
    """numba's type fingerprint of an argument tuple (raising NotImplementedError for types
    it has none for), or, internals off, a function that always raises it (no hot path)."""
    if not enabled():
        return _no_fingerprint
    from numba._dispatcher import compute_fingerprint
    return compute_fingerprint


def compiled_for(disp, args):
    """The compiled function numba's dispatcher ``disp`` runs for ``args``: called directly,
    it skips the dispatcher's own type matching (the caller has matched the types)."""
    if not enabled():
        return disp
    import numba
    try:
        return disp.overloads[tuple(numba.typeof(a) for a in args)].entry_point
    except Exception:  # noqa: BLE001 - not a CPU dispatcher, or typed otherwise: it still works
        return disp


def load_without_refresh(kernel, compile_now):
    """Run ``compile_now()`` (a compile of ``kernel`` expected to load object code from
    numba's cache) without the full refresh of numba's CPU target that it begins with
    (importing every implementation registry, and scipy for a BLAS probe). Loading object
    code needs only numba's runtime (NRT) initialised; should numba compile instead (a cache
    miss), its compiler refreshes the target as usual."""
    if not enabled():
        return compile_now()
    from numba.core.compiler_lock import global_compiler_lock
    from numba.core.runtime import rtsys
    ctx = getattr(kernel, "targetctx", None)
    if ctx is None:
        return compile_now()
    with global_compiler_lock:  # no other thread compiles while refresh is replaced
        if "refresh" in vars(ctx):
            return compile_now()

        def once():
            del ctx.refresh  # the next refresh (a compile) is the real one
            rtsys.initialize(ctx)
        ctx.refresh = once
        try:
            return compile_now()
        finally:
            vars(ctx).pop("refresh", None)
