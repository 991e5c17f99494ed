"""Differential testing: ``GRADJIT_CHECK=1`` or ``gj.config(check=True)``. Every compiled
call is also traced afresh and evaluated by the numpy reference evaluator, and its forward
values by plain Python; any disagreement raises ``CheckFailed``."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ..compiler import pytree
from ..errors import GradjitError
from .compiled import Lowered
from .signature import prepare
from .state import live


@dataclass
class Config:
    # every compiled call is also traced afresh and evaluated by the numpy reference
    # evaluator, and the function's forward values by plain Python; any disagreement raises
    check: bool = os.environ.get("GRADJIT_CHECK", "0") not in ("", "0")


options = Config()


def config(**changes):
    """Set (and return) gradjit's run-time options: ``check`` (differential testing)."""
    for name, value in changes.items():
        if not hasattr(options, name):
            raise TypeError(f"unknown gradjit option {name!r}")
        setattr(options, name, value)
    if options.check:  # checked calls never take the hot path
        for tf in list(live):
            tf.fast.clear()
    return options


class CheckFailed(GradjitError, AssertionError):
    """GRADJIT_CHECK: a compiled result disagrees with the reference evaluator or Python."""


def differential(tf, args, result):
    """``result`` (the kernel's) against the reference evaluator on a fresh trace of the same
    call; the traced function's forward values against the function run by Python."""
    from ..compiler import reference
    from .vmap import Batched
    low = Lowered(tf, args, fkey=None)
    vals = [prepare(x) for x in low.leaves] + [c.get() for c in low.traced.captures]
    ref = reference.evaluate(low.optimized, *vals)
    want = tuple(ref) if low.assemble is None else low.assemble(list(ref))
    _agree(result, want, f"{tf.kind} of {low.traced.qualname} ({low.traced.loc})",
           "the reference evaluator")
    if isinstance(tf.fun, Batched):  # calling it would run this transform again (recursion)
        return result
    fwd = reference.evaluate(low.traced.graph, *vals)
    python = tf.fun(*args)
    _agree(pytree.unflatten(low.traced.out_tree, fwd), python,
           f"the trace of {low.traced.qualname} ({low.traced.loc})", "the function run by Python")
    return result


def _agree(got, want, what, against):
    g, gt = pytree.flatten(got)
    w, wt = pytree.flatten(want)
    if len(g) != len(w):
        raise CheckFailed(f"GRADJIT_CHECK: {what} gives {len(g)} values, {against} {len(w)}")
    for k, (a, b) in enumerate(zip(g, w)):
        a, b = np.asarray(a), np.asarray(b)
        single = a.dtype == np.float32 or b.dtype == np.float32
        tol = 1e-4 if single else 1e-7
        scale = float(np.max(np.abs(b[np.isfinite(b)]), initial=1.0)) if b.dtype.kind in "fc" \
            else 1.0
        if a.shape != b.shape or not np.allclose(a, b, rtol=tol, atol=tol * 1e-3 * scale,
                                                 equal_nan=True):
            raise CheckFailed(f"GRADJIT_CHECK: {what}, result {k}: {a!r} but {against} "
                              f"gives {b!r}")
