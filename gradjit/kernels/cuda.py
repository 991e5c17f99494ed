"""Helpers that generated CUDA modules call by name (``from gradjit.kernels.cuda import *``).

Two kinds, as ``kernels/cpu.py`` is for the CPU:

- device functions (``@cuda.jit(device=True)``) that kernels call: numpy's NaN rules for
  maximum/minimum, ``mod`` and ``sign`` with numpy's semantics;
- host helpers that the generated host function calls between launches: allocation, copies,
  scratch buffers kept per module, the launch configuration, and the tiled matrix product.

Importing this module imports numba-cuda: only generated CUDA modules (and
``runtime/device.py``) import it, never ``import gradjit``.

The launch configuration is fixed at import: ``BLOCK`` threads per block (a compile-time
constant of every kernel, the size of its shared-memory reduction buffer) and at most
``max_grid()`` blocks, each thread striding over the iteration space. Under the simulator
(``NUMBA_ENABLE_CUDASIM=1``, every thread a Python thread) both are small, so that tests
still run several blocks, partial blocks and the cross-block steps in seconds.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda, float32, float64, int32, int64  # noqa: F401 - used by kernels

from ..runtime.device import simulating

SIM = simulating()
BLOCK = 32 if SIM else 256  # threads per block (a power of two: tree reductions halve it)
TILE = 4 if SIM else 16  # matrix-product tiles: TILE x TILE threads, TILE x TILE elements
_SIM_GRID = 3  # blocks at most under the simulator (not a power of two, on purpose)

_max_grid = []


def max_grid():
    """The most blocks a grid-stride kernel is launched with: enough to fill the device
    (8 blocks of BLOCK threads per multiprocessor), no more, so that per-block partial
    results stay few."""
    if not _max_grid:
        if SIM:
            _max_grid.append(_SIM_GRID)
        else:
            dev = cuda.get_current_device()
            _max_grid.append(int(dev.MULTIPROCESSOR_COUNT) * 8)
    return _max_grid[0]


def gj_grid(n):
    """Blocks for a grid-stride loop over ``n`` iterations."""
    return max(1, min((int(n) + BLOCK - 1) // BLOCK, max_grid()))


# ---------------------------------------------------------------------------------------------
# Device functions
# ---------------------------------------------------------------------------------------------


@cuda.jit(device=True, inline=True)
def gj_maximum(a, b):
    """numpy.maximum: NaN if either is NaN."""
    if a != a or a > b:
        return a
    return b


@cuda.jit(device=True, inline=True)
def gj_minimum(a, b):
    """numpy.minimum: NaN if either is NaN."""
    if a != a or a < b:
        return a
    return b


@cuda.jit(device=True, inline=True)
def gj_fmax(a, b):
    """numpy.fmax: the other operand where one is NaN."""
    if b != b or a > b:
        return a
    return b


@cuda.jit(device=True, inline=True)
def gj_fmin(a, b):
    """numpy.fmin: the other operand where one is NaN."""
    if b != b or a < b:
        return a
    return b


@cuda.jit(device=True, inline=True)
def gj_fmod(a, b):
    """numpy.mod of floats: the sign of the divisor."""
    r = math.fmod(a, b)
    if r != 0 and (r < 0) != (b < 0):
        r += b
    return r


@cuda.jit(device=True, inline=True)
def gj_sign(x):
    """numpy.sign of a float: -1, 0 or 1 (NaN stays NaN)."""
    if x > 0:
        return 1.0
    if x < 0:
        return -1.0
    return x * 0.0


# ---------------------------------------------------------------------------------------------
# Host helpers
# ---------------------------------------------------------------------------------------------


def gj_empty(shape, dtype):
    return cuda.device_array(shape, dtype)


def gj_scratch(bufs, key, n, dtype):
    """A device buffer of at least ``n`` elements kept by the module (``bufs``) across calls:
    per-block partial results. Launches on one stream run in order, so a buffer is free
    again when the next launch starts."""
    b = bufs.get(key)
    if b is None or b.shape[0] < n:
        b = bufs[key] = cuda.device_array(max(int(n), 1), dtype)
    return b


def gj_counter(bufs, key):
    """A zeroed int32 counter kept by the module: the last block of a reduction to finish
    takes it (atomic increment) and sets it back to zero for the next launch."""
    c = bufs.get(key)
    if c is None:
        c = bufs[key] = cuda.to_device(np.zeros(1, np.int32))
    return c


def gj_const(bufs, key, arr):
    """A constant of the module, copied to the device once."""
    c = bufs.get(key)
    if c is None:
        c = bufs[key] = cuda.to_device(np.ascontiguousarray(arr))
    return c


def gj_fetch(x):
    """The value of a one-element device array, on the host (a synchronisation)."""
    return x.copy_to_host()[0]


def gj_contiguous(x):
    """``x`` itself when C-contiguous, else a C-contiguous copy."""
    if x.ndim == 0 or x.is_c_contiguous():
        return x
    return gj_copy(x)


def gj_copy(x):
    """A new C-contiguous device array equal to ``x`` (a device array, any strides)."""
    out = cuda.device_array(x.shape, x.dtype)
    if x.size == 0:
        return out
    if x.is_c_contiguous():
        out.copy_to_device(x)
        return out
    copy_strided(x, out)
    return out


def copy_strided(src, dst):
    """dst[...] = src for arrays of one shape, any strides (a kernel per rank)."""
    n = src.size
    if n == 0:
        return
    k = _COPY.get(src.ndim)
    if k is None:
        from ..errors import GradjitError
        raise GradjitError(f"target='cuda': copying a non-contiguous array of rank {src.ndim} "
                           "is not supported yet (ranks 1 to 3 are)")
    k[gj_grid(n), BLOCK](src, dst)


@cuda.jit(cache=True)
def _copy1(s, d):
    for f in range(cuda.grid(1), s.shape[0], cuda.gridsize(1)):
        d[f] = s[f]


@cuda.jit(cache=True)
def _copy2(s, d):
    n1 = s.shape[1]
    for f in range(cuda.grid(1), s.shape[0] * n1, cuda.gridsize(1)):
        i = f // n1
        d[i, f - i * n1] = s[i, f - i * n1]


@cuda.jit(cache=True)
def _copy3(s, d):
    n1, n2 = s.shape[1], s.shape[2]
    for f in range(cuda.grid(1), s.shape[0] * n1 * n2, cuda.gridsize(1)):
        i = f // (n1 * n2)
        r = f - i * n1 * n2
        j = r // n2
        d[i, j, r - j * n2] = s[i, j, r - j * n2]


_COPY = {1: _copy1, 2: _copy2, 3: _copy3}


def gj_at(x, idx):
    """A one-element view (shape (1,)) of device array ``x`` at integer indices ``idx``, one
    per axis (negative ones count from the end): what a kernel writes through or reads."""
    sl = tuple(slice(int(i) % d, int(i) % d + 1) for i, d in zip(idx, x.shape))
    v = x[sl]
    return v if v.ndim == 1 else v.reshape(1)


from ..compiler.primitives import _NONE  # noqa: E402 - an omitted bound among slicelen's operands


def gj_none(b):
    """A slice bound for Python's ``slice``: None where it was omitted."""
    return None if b == _NONE else b


def gj_check(err, messages, errors):
    """Raise the error a kernel recorded in ``err`` (an int32 device array, zero: none):
    ``messages[code - 1]``, of the class ``errors[code - 1]``. Resets ``err``."""
    code = int(err.copy_to_host()[0])
    if code:
        err.copy_to_device(np.zeros(1, np.int32))
        raise errors[code - 1](messages[code - 1])


# ---------------------------------------------------------------------------------------------
# Matrix products: a tiled shared-memory kernel, split along the summed axis when the result
# has too few tiles to fill the device (X.T @ r: a few columns, a million rows), the slices'
# partial products then summed in a fixed order (deterministic).
# ---------------------------------------------------------------------------------------------


@cuda.jit(cache=True)
def _matmul_tiles(a, b, out, kchunk):
    """out[s, i, j] = sum of a[i, k] * b[k, j] over k in slice s (of kchunk values)."""
    sa = cuda.shared.array((TILE, TILE), float64)
    sb = cuda.shared.array((TILE, TILE), float64)
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    i = cuda.blockIdx.y * TILE + ty
    j = cuda.blockIdx.x * TILE + tx
    s = cuda.blockIdx.z
    m, kk = a.shape
    n = b.shape[1]
    k0 = s * kchunk
    k1 = min(k0 + kchunk, kk)
    acc = 0.0
    for t in range(k0, k1, TILE):
        if i < m and t + tx < k1:
            sa[ty, tx] = a[i, t + tx]
        else:
            sa[ty, tx] = 0.0
        if j < n and t + ty < k1:
            sb[ty, tx] = b[t + ty, j]
        else:
            sb[ty, tx] = 0.0
        cuda.syncthreads()
        for q in range(TILE):
            acc += sa[ty, q] * sb[q, tx]
        cuda.syncthreads()
    if i < m and j < n:
        out[s, i, j] = acc


@cuda.jit(cache=True)
def _sum_slices(parts, out):
    """out[i, j] = the sum of parts[:, i, j], in order."""
    m, n = out.shape
    for f in range(cuda.grid(1), m * n, cuda.gridsize(1)):
        i = f // n
        j = f - i * n
        acc = 0.0
        for s in range(parts.shape[0]):
            acc += parts[s, i, j]
        out[i, j] = acc


def gj_matmul(a, b, dtype):
    """``a @ b`` of device arrays of rank 1 or 2 (any strides), as numpy: a new array."""
    a2 = a if a.ndim == 2 else gj_contiguous(a).reshape(1, a.shape[0])
    b2 = b if b.ndim == 2 else gj_contiguous(b).reshape(b.shape[0], 1)
    m, k = a2.shape
    n = b2.shape[1]
    if a.ndim == 1 and b.ndim == 1:
        shape = ()
    elif a.ndim == 1:
        shape = (n,)
    elif b.ndim == 1:
        shape = (m,)
    else:
        shape = (m, n)
    tiles = ((m + TILE - 1) // TILE) * ((n + TILE - 1) // TILE)
    want = max(1, max_grid() // max(tiles, 1))  # slices of the summed axis
    steps = (k + TILE - 1) // TILE
    split = max(1, min(want, steps, 1024))
    kchunk = ((steps + split - 1) // split) * TILE if k else TILE
    split = max(1, (k + kchunk - 1) // kchunk) if k else 1
    grid = ((n + TILE - 1) // TILE, (m + TILE - 1) // TILE, split)
    if m == 0 or n == 0:
        return cuda.device_array(shape if shape else (1,), dtype)
    if split == 1 and dtype == np.float64:
        out = cuda.device_array((1, m, n), np.float64)
        if k == 0:
            _fill3[gj_grid(m * n), BLOCK](out)
        else:
            _matmul_tiles[grid, (TILE, TILE)](a2, b2, out, kchunk)
        res = out.reshape(m, n)
    else:
        parts = cuda.device_array((split, m, n), np.float64)
        if k == 0:
            _fill3[gj_grid(m * n), BLOCK](parts)
        else:
            _matmul_tiles[grid, (TILE, TILE)](a2, b2, parts, kchunk)
        res = cuda.device_array((m, n), dtype)
        _sum_slices[gj_grid(m * n), BLOCK](parts, res)
    if not shape:
        return res.reshape(1)
    return res.reshape(*shape)


@cuda.jit(cache=True)
def _fill3(out):
    m, n = out.shape[1], out.shape[2]
    for f in range(cuda.grid(1), out.shape[0] * m * n, cuda.gridsize(1)):
        s = f // (m * n)
        r = f - s * m * n
        i = r // n
        out[s, i, r - i * n] = 0.0


__all__ = [name for name in dir() if name.startswith("gj_")] + [
    "BLOCK", "TILE", "cuda", "float32", "float64", "int32", "int64", "math", "np"]
