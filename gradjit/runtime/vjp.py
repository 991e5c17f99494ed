"""``gj.vjp``: the forward value now, and a function of the output cotangent that runs the
compiled backward pass."""

from __future__ import annotations

import functools

import numpy as np

from ..compiler import pytree
from ..compiler.transforms import name_of
from ..errors import GradjitError, ShapeError, SizeFallback
from .compiled import Lowered
from .dispatch import Transformed
from .dask_arrays import has_dask
from .signature import arg_key, describe, prepare
from .state import memory_clearers, stats


def vjp(fun, *primals):
    """``(out, vjp_fn)``: ``vjp_fn(cotangent)`` returns one gradient per primal."""
    forward, back = vjp_cache(fun)
    out = forward(*primals)
    out_leaves, out_tree = pytree.flatten(out)

    def vjp_fn(ct):
        ct_leaves, ct_tree = pytree.flatten(ct)
        if len(ct_leaves) != len(out_leaves):
            raise GradjitError("the cotangent must have the structure of the function's output")
        for c, o in zip(ct_leaves, out_leaves):
            if np.shape(c) != np.shape(o):
                raise ShapeError(f"vjp of {name_of(fun)}: the cotangent has shape {np.shape(c)}, "
                                 f"the output it pairs with {np.shape(o)}")
        ct_leaves = [np.asarray(c, dtype=np.asarray(o).dtype) if np.ndim(o) else
                     np.asarray(o).dtype.type(c) for c, o in zip(ct_leaves, out_leaves)]
        res = back(primals, ct_leaves)
        n_out = len(out_leaves)
        grads = list(res[n_out:])
        out, pos = [], 0
        for p in primals:
            ls, tree = pytree.flatten(p)
            out.append(pytree.unflatten(tree, grads[pos:pos + len(ls)]))
            pos += len(ls)
        return tuple(out)

    return out, vjp_fn


@functools.lru_cache(maxsize=256)
def vjp_cache(fun):
    """The compiled forward and backward of ``fun`` for ``gj.vjp`` (kept per function, so that
    a vjp in a loop finds its kernels in memory)."""
    forward = Transformed(fun, "jit")
    tf = Transformed(fun, "vjp")

    def run(primals, cts):
        if has_dask(primals):  # Dask arrays: per-chunk kernels (runtime/dask_arrays.py)
            from .dask_arrays import vjp_call
            return vjp_call(tf, primals, cts)
        leaves = [x for p in primals for x in pytree.flatten(p)[0]]
        key = (tuple(pytree.flatten(p)[1] for p in primals), tuple(map(arg_key, leaves)),
               tuple(map(arg_key, cts)))
        entry = tf.cache.get(key)
        if entry is None or (entry.check and not entry.guards_ok()):
            stats.misses += 1
            entry = _VjpLowered(tf, primals, cts).compile()
            tf.cache[key] = entry
        else:
            stats.hits += 1
        flat = [prepare(x) for x in leaves] + [prepare(c) for c in cts]
        try:
            out = entry.kernel(*flat, *[c.get() for c in entry.captures])
        except SizeFallback:
            out = entry.general(flat)
        return entry.post(out)
    return forward, run


class _VjpLowered(Lowered):
    """The vjp kernel also takes the output cotangents (after the primals)."""

    def __init__(self, tf, primals, cts):
        super().__init__(tf, primals)
        self.leaves = self.leaves + list(cts)
        self.signature = describe(self.leaves)


memory_clearers.append(vjp_cache.cache_clear)
