"""A compiled entry: one (function, transform, signature)'s kernel, what it reads at every
call, and how its raw results become the transform's result."""

from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from .loader import entry_point, into_runner
from .signature import arg_key


def reads_hold(guards, captures):
    """Whether everything a trace read from outside its arguments still holds: guarded values
    unchanged, arrays still of the dtype, rank and unit axes it was compiled for."""
    try:
        for cap in guards:
            if not cap.holds(cap.get()):
                return False
        for cap in captures:
            if arg_key(cap.get()) != arg_key(cap.value):
                return False
    except Exception:  # noqa: BLE001 - a path that no longer leads anywhere: retrace
        return False
    return True


class Entry:
    """One compiled (function, transform, signature): the kernel and how to call it."""

    __slots__ = ("kernel", "full", "captures", "guards", "post", "graph",
                 "source", "traced", "optimized", "n_out", "has_0d", "check")

    def general(self, flat):
        """The arguments' sizes are not those the fast entry point was specialised for: from
        now on call the general kernel (numba compiles or loads it at this first call)."""
        self.kernel = self.full
        try:
            return self.kernel(*flat, *[c.get() for c in self.captures])
        except ShapeError as e:
            raise ShapeError(f"{e} (argument shapes: {shapes_text(flat)})") from None

    def adopt(self, other):
        """Become ``other`` (the compiled entry replacing a tier-0 one, runtime/tiered.py):
        the transform's cache and anything holding this entry then run the kernel."""
        for name in Entry.__slots__:
            setattr(self, name, getattr(other, name))

    def guards_ok(self):
        return reads_hold(self.guards, self.captures)


def shapes_text(args):
    return ", ".join(str(np.shape(a)) for a in args)


def make_entry(mod, captures, guards, leaves, results, assemble):
    """The Entry of a kernel module; ``results``: (dtype, rank) of what the kernel returns."""
    e = Entry()
    e.kernel = entry_point(mod)
    if hasattr(mod, "kernel_into"):
        e.kernel = into_runner(e.kernel, mod.kernel_into_results)
    e.full = mod.kernel
    e.captures = captures
    e.guards = guards
    # arrays read from globals are re-typed at every call too: a new dtype or rank retraces
    e.check = bool(e.guards or e.captures)
    e.has_0d = any(type(x) is np.ndarray and x.ndim == 0 for x in leaves)
    e.graph = e.source = e.traced = e.optimized = None
    convs = [_convert_to(dt, nd) for dt, nd in results]
    e.n_out = len(convs)
    e.post = _post(convs, assemble)
    return e


def make_tier0_entry(runner, captures, guards, results, assemble):
    """The Entry of a tier-0 runner (runtime/tiered.py): called like a kernel, it answers by
    numpy until it ``adopt``s the compiled entry."""
    e = Entry()
    e.kernel = e.full = runner
    e.captures = captures
    e.guards = guards
    e.check = bool(e.guards or e.captures)
    e.has_0d = True  # (prepared arguments, and never on the hot path's table: it is Python)
    e.graph = e.source = e.traced = e.optimized = None
    convs = [_convert_to(dt, nd) for dt, nd in results]
    e.n_out = len(convs)
    e.post = _post(convs, assemble)
    return e


def make_cuda_entry(mod, captures, guards, leaves, assemble, what):
    """The Entry of a CUDA module (codegen/cuda.py): its host function behind a runner that
    moves arguments to the device and hands results back (runtime/device.py)."""
    from .device import runner
    e = Entry()
    e.kernel = e.full = runner(mod.kernel, mod.kernel_results, what)
    e.captures = captures
    e.guards = guards
    e.check = bool(e.guards or e.captures)
    e.has_0d = any(type(x) is np.ndarray and x.ndim == 0 for x in leaves)
    e.graph = e.source = e.traced = e.optimized = None
    e.n_out = len(mod.kernel_results)
    e.post = _post([_identity] * e.n_out, assemble)  # the runner already typed the results
    return e


def _post(convs, assemble):
    """Turn the kernel's return value into the transform's result; None when it already is."""
    if len(convs) == 1:
        c0 = convs[0]
        if assemble is None:
            return lambda out: (c0(out),)
        probe = object()
        try:
            direct = assemble([probe]) is probe
        except Exception:
            direct = False
        if direct:
            return None if c0 is _identity else c0
        return lambda out: assemble([c0(out)])
    if assemble is None:
        return lambda out: tuple(c(o) for c, o in zip(convs, out))
    return lambda out: assemble([c(o) for c, o in zip(convs, out)])


def _convert_to(dtype, ndim):
    """Rank-0 results come back from numba as Python numbers: give them the IR's dtype."""
    if ndim:
        return _identity
    return np.dtype(dtype).type


def _identity(x):
    return x
