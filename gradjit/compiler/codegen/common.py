"""Facts and index arithmetic every backend's lowering shares (codegen/cpu.py, codegen/cuda.py):
the accumulator dtypes of reductions, and the coordinates of elements of small static values
unrolled into registers or locals."""

from __future__ import annotations

from .. import primitives as P
from ..ir import Lit

# Accumulator dtypes other than the result's, per reduction and result dtype: float32 sums add
# up in float64 (one rounding at the end instead of one per element) and are cast back.
ACC_DTYPES = {P.reduce_sum_p: {"float32": "float64"}}


def acc_dtype(prim, dt):
    return ACC_DTYPES.get(prim, {}).get(dt, dt)


def size(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def unravel(k, shape):
    c = []
    for d in reversed(shape):
        c.append(k % d)
        k //= d
    return tuple(reversed(c))


def ravel(c, shape):
    k = 0
    for i, d in zip(c, shape):
        k = k * d + i
    return k


def bcast(c, a):
    """Coordinates in ``a`` of element ``c`` of a result ``a`` broadcasts to."""
    if isinstance(a, Lit) or a.aval.ndim == 0:
        return ()
    shape = a.aval.shape
    off = len(c) - len(shape)
    return tuple(0 if (isinstance(d, int) and d == 1) else c[off + j] for j, d in enumerate(shape))


def is_one(d):
    return isinstance(d, int) and d == 1


def tail_element(held, tail, c):
    """Of a value held as one local per element of its ``tail`` (static trailing axes), the
    local at tail coordinates ``c`` of a result it broadcasts to."""
    cc = tuple(0 if d == 1 else c[len(c) - len(tail) + j] for j, d in enumerate(tail))
    return held[ravel(cc, tail)]


def broadcast_parts(a, shape, c, loop_shape, idx):
    """The index of operand ``a`` at an element of a result of ``shape`` inside a loop over
    ``loop_shape`` (its leading axes; ``idx`` their index names) at tail coordinates ``c``:
    loop axes give their index name ("0" where ``a`` broadcasts a unit axis), tail axes ints."""
    rank = len(loop_shape)
    off = len(shape) - a.aval.ndim
    parts = []
    for j, d in enumerate(a.aval.shape):
        pos = off + j
        if pos < rank:
            parts.append("0" if is_one(d) and not is_one(loop_shape[pos]) else idx[pos])
        else:
            parts.append(0 if is_one(d) else c[pos - rank])
    return parts


def static_spec(spec):
    return all(x != P.DYN for s in spec for x in s[1:])


def static_index(spec, shape):
    """Per axis of ``shape``: (kept, the indices a static basic-index ``spec`` selects)."""
    out = []
    for ax, n in enumerate(shape):
        if ax < len(spec):
            s = spec[ax]
            if s[0] == "i":
                out.append((False, [s[1] % n]))
                continue
            out.append((True, list(range(n))[slice(s[1], s[2], s[3])]))
        else:
            out.append((True, list(range(n))))
    return out


# primitives whose operands after the first are sizes (of the shape they make)
_SIZED = frozenset({P.broadcast_to_p, P.full_p})


def is_data(e, a):
    """Operands read elementwise (sizes passed to shape-making primitives are not)."""
    return a is e.inputs[0] if e.prim in _SIZED else True
