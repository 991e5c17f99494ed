"""Other libraries' Python code met while tracing (the front end asks this module).

A pure-Python function of an installed module (``scipy.optimize.rosen``) is inlined like the
user's own when it is given traced values. The array-API plumbing such code starts with
(``xp = array_namespace(x)``, ``xp_promote``, ``_asarray``) is answered here: on traced values
the namespace is numpy itself, whose functions the numpy table maps.
"""

from __future__ import annotations

import os
import sysconfig
import types

import numpy as np

from . import numpy_api
from . import primitives as P
from .tracing import Tracer


def _roots():
    paths = sysconfig.get_paths()
    return tuple(sorted({os.path.realpath(paths[k]) + os.sep
                         for k in ("stdlib", "platstdlib", "purelib", "platlib") if paths.get(k)}))


_ROOTS = _roots()


def installed(fn):
    """A Python function of the standard library or an installed package (not the user's)."""
    code = getattr(fn, "__code__", None)
    if code is None:
        return False
    return os.path.realpath(code.co_filename).startswith(_ROOTS)


def _namespace(*arrays, **_):
    return np


def _promote(*args, broadcast=False, force_floating=False, xp=None):
    vals = [a for a in args if a is not None]
    vals = [numpy_api.array(a) if isinstance(a, (list, tuple)) else a for a in vals]
    out, _ = P.promote(*vals, to_float=force_floating)
    out = list(out)
    if broadcast:
        out = list(P.broadcast(*out))
    it = iter(out)
    res = [None if a is None else next(it) for a in args]
    return res[0] if len(res) == 1 else tuple(res)


def _asarray(array, dtype=None, order=None, copy=None, *, xp=None, check_finite=False,
             subok=False):
    return numpy_api.array(array, dtype=dtype)


def _copy(x, *, xp=None):
    return x


# (module prefix, function name) -> its meaning on traced values
HELPERS = {
    ("scipy", "array_namespace"): _namespace, ("array_api_compat", "array_namespace"): _namespace,
    ("scipy", "get_namespace"): _namespace, ("scipy", "xp_promote"): _promote,
    ("scipy", "_asarray"): _asarray, ("scipy", "xp_copy"): _copy,
}


def helper(fn):
    """What stands for ``fn`` (a library function) on traced values, or None."""
    if not isinstance(fn, types.FunctionType):
        return None
    mod = (getattr(fn, "__module__", None) or "").split(".")[0]
    return HELPERS.get((mod, fn.__name__))


def compiled_hint(fn):
    """The end of the error for a compiled function with no rule."""
    if isinstance(fn, (types.FunctionType, types.MethodType)) or isinstance(fn, Tracer):
        return ""
    return ("; it is compiled code, which gradjit cannot trace: give it a derivative with "
            "gj.custom_vjp (fwd/bwd may call it through numba) or compute it outside")
