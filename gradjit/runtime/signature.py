"""Input signatures: what a compiled kernel is specialised on.

An array's key is its dtype and rank plus which of its axes have size 1 (broadcasting
depends on those); other sizes are symbolic, so a new length never recompiles. Layout is
left to numba's own dispatcher, which specialises the same generated function per layout.
"""

from __future__ import annotations

import numpy as np

from ..compiler.ir import Aval, Var
from ..errors import GradjitError

_SCALARS = {float: ("float64", True), int: ("int64", True), bool: ("bool", False)}


def arg_key(x):
    """The cache key of one leaf; cheap, it runs on every call."""
    t = type(x)
    if t is np.ndarray:
        s = x.shape
        return (x.dtype, x.ndim, tuple(d == 1 for d in s) if 1 in s else None)
    if t in _SCALARS:
        return t
    if isinstance(x, np.generic):
        return x.dtype
    if hasattr(x, "__cuda_array_interface__"):
        raise GradjitError("CUDA device arrays need target='cuda' support, which is not available yet")
    if isinstance(x, np.ndarray):
        return arg_key(np.asarray(x))
    raise TypeError(f"gradjit cannot take an argument of type {t.__name__}")


def aval_for(x):
    """The abstract value of a leaf: symbolic sizes except the 1s."""
    t = type(x)
    if t in _SCALARS:
        dt, weak = _SCALARS[t]
        return Aval(dt, (), weak)
    if isinstance(x, np.generic):
        return Aval(x.dtype.name)
    x = np.asarray(x)
    if x.dtype.kind not in "biuf":
        raise TypeError(f"arrays of dtype {x.dtype} are not supported")
    dt = x.dtype.name
    if x.dtype.kind == "u" or dt in ("int8", "int16"):
        dt = "int64"
    if dt == "float16":
        raise TypeError("float16 arrays are not supported")
    shape = tuple(1 if d == 1 else Var(Aval("int64")) for d in x.shape)
    return Aval(dt, shape)


def prepare(x):
    """The value handed to the kernel for a leaf (0-d arrays become numpy scalars)."""
    if type(x) is np.ndarray and x.ndim == 0:
        return x[()]
    return x


_PARSE = {"float64": np.float64, "float32": np.float32, "int64": np.int64, "int32": np.int32,
          "bool": np.bool_, "f8": np.float64, "f4": np.float32, "i8": np.int64, "i4": np.int32,
          "float": float, "int": int}


def examples_from_signature(text):
    """Example arguments for a numba-style signature string, e.g. ``"float64[:], float64"``
    or ``"float32[:, :], int64[:], float"`` (used by the command line)."""
    out = []
    for part in _split(text):
        part = part.strip()
        if not part:
            continue
        name, _, dims = part.partition("[")
        name = name.strip()
        if name not in _PARSE:
            raise GradjitError(f"unknown type '{name}' in signature '{text}'")
        t = _PARSE[name]
        if not dims:
            out.append(t(1.5) if t in (float, np.float64, np.float32) else t(2))
            continue
        rank = dims.rstrip("] ").count(":")
        if rank == 0:
            raise GradjitError(f"cannot read the array type '{part}' (write e.g. float64[:, :])")
        out.append(np.linspace(0.5, 1.5, 3 ** rank).reshape((3,) * rank).astype(t))
    return tuple(out)


def _split(text):
    depth, cur, parts = 0, "", []
    for ch in text:
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return parts


def describe(leaves):
    """A human-readable signature, e.g. ``float64[:], float64``."""
    parts = []
    for x in leaves:
        a = aval_for(x)
        parts.append(a.dtype + ("[" + ", ".join(":" if d != 1 else "1" for d in a.shape) + "]"
                                if a.shape else ""))
    return ", ".join(parts)
