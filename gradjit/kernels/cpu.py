"""Helpers that generated CPU kernels call by name (``from gradjit.kernels.cpu import *``)."""

import numba

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


__all__ = ["gj_slicelen"]
