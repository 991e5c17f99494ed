"""Abstract values of concrete arguments: what a traced input is specialised on (its dtype,
its rank, which of its axes have size 1; every other size is a symbolic IR value)."""

from __future__ import annotations

import numpy as np

from .ir import Aval, Var

# Python scalars: their dtype, and whether they are weakly typed (as in JAX: ``x * 2.0``
# keeps a float32 ``x`` float32)
SCALARS = {float: ("float64", True), int: ("int64", True), bool: ("bool", False)}


def aval_for(x):
    """The abstract value of a leaf: symbolic sizes except the 1s."""
    t = type(x)
    if t in SCALARS:
        dt, weak = SCALARS[t]
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
