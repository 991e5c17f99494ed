"""Helpers that generated CPU kernels call by name (``from gradjit.kernels.cpu import *``)."""

import numba
import numpy as np

_NONE = -(2 ** 62)  # an omitted slice bound (see primitives.slicelen_p)


@numba.njit(cache=True)
def gj_slicelen(n, start, stop, step):
    """len(range(n)[start:stop:step]) with Python's clamping rules."""
    if step > 0:
        lo = 0 if start == _NONE else (start + n if start < 0 else start)
        hi = n if stop == _NONE else (stop + n if stop < 0 else stop)
        lo = min(max(lo, 0), n)
        hi = min(max(hi, 0), n)
        return max(0, (hi - lo + step - 1) // step)
    lo = n - 1 if start == _NONE else (start + n if start < 0 else start)
    hi = -1 if stop == _NONE else (stop + n if stop < 0 else stop)
    lo = min(max(lo, -1), n - 1)
    hi = min(max(hi, -1), n - 1)
    return max(0, (lo - hi - step - 1) // (-step))


@numba.njit(cache=True)
def gj_cumsum_last(x, reverse):
    """Running sums along the last axis of ``x`` (from the end when ``reverse``): a new array."""
    a = np.ascontiguousarray(x)
    n = a.shape[-1]
    m = a.size // n if n > 0 else 0
    flat = a.reshape((m, n))
    out = np.empty((m, n), a.dtype)
    for i in range(m):
        if n == 0:
            continue
        if reverse:
            acc = flat[i, n - 1]
            out[i, n - 1] = acc
            for j in range(n - 2, -1, -1):
                acc += flat[i, j]
                out[i, j] = acc
        else:
            acc = flat[i, 0]
            out[i, 0] = acc
            for j in range(1, n):
                acc += flat[i, j]
                out[i, j] = acc
    return out.reshape(a.shape)


# Tapes, (buffer, count) tuples, in parallel kernels: numba's array analysis mistakes a tuple
# built in the kernel for a shape, so these build them.

@numba.njit(cache=True)
def gj_tape_at(t, n):
    """The tape ``t`` with ``n`` values."""
    return (t[0], n)


@numba.njit(cache=True)
def gj_tape_room(t):
    """The tape ``t``, its buffer doubled if full."""
    if t[1] < t[0].shape[0]:
        return t
    return (np.concatenate((t[0], t[0])), t[1])


__all__ = ["gj_cumsum_last", "gj_slicelen", "gj_tape_at", "gj_tape_room"]
