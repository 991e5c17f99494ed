"""The public transforms (see API.md): each works as ``gj.grad(f)``, ``@gj.grad`` and
``@gj.grad(argnums=1)``."""

from __future__ import annotations

import functools

from .runtime.vmap import Batched
from .compiler import numpy_api
from .compiler.primitives import stop_gradient as _stop_gradient_op
from .compiler.tracing import Tracer
from .errors import GradjitError, surface
from .runtime import dispatch
from .runtime.state import cache_info, clear_cache  # noqa: F401
from .runtime.vjp import vjp as _vjp


def _transform(kind, build=None, **defaults):
    def make(fun=None, **options):
        unknown = set(options) - set(defaults)
        if unknown:
            raise TypeError(f"gj.{kind}() got unexpected option(s): {', '.join(sorted(unknown))}")
        opts = {**defaults, **options}
        if fun is None:
            return functools.partial(make, **opts)
        return (build or dispatch.Transformed)(fun, kind, **opts)
    make.__name__ = kind
    return make


_STATIC = {"static_argnums": (), "static_argnames": ()}
jit = _transform("jit", **_STATIC, target="auto")
jit.__doc__ = "``fun`` compiled; same results as ``fun``."
grad = _transform("grad", argnums=0, has_aux=False, **_STATIC, target="auto")
grad.__doc__ = "Gradient of a scalar-output ``fun`` with respect to ``argnums``."
value_and_grad = _transform("value_and_grad", argnums=0, has_aux=False, **_STATIC,
                            target="auto")
value_and_grad.__doc__ = "``(value, gradient)`` of a scalar-output ``fun``."


jacobian = _transform("jacobian", argnums=0, **_STATIC, target="auto")
jacobian.__doc__ = "Jacobian of ``fun``, shape ``out.shape + in.shape``, computed in one kernel."


def _build_vmap(fun, kind, in_axes, out_axes, target):
    return dispatch.Transformed(Batched(fun, in_axes, out_axes), kind, target=target)


vmap = _transform("vmap", build=_build_vmap, in_axes=0, out_axes=0, target="auto")
vmap.__doc__ = ("``fun`` mapped over an axis of its inputs (``in_axes``: int, None, or a tuple "
                "per argument; ``out_axes`` likewise per output), as one kernel looping over the "
                "batch (``prange`` under ``target='parallel'``).")


def hessian(fun=None, *, argnums=0, target="auto", static_argnums=(), static_argnames=()):
    """Hessian of a scalar-output ``fun``, shape ``in.shape + in.shape`` (the Jacobian of the
    gradient: reverse over reverse, one kernel)."""
    static = {"static_argnums": static_argnums, "static_argnames": static_argnames}
    if fun is None:
        return functools.partial(hessian, argnums=argnums, target=target, **static)
    inner = dispatch.Transformed(fun, "grad", argnums=argnums, target=target, **static)
    return dispatch.Transformed(inner, "jacobian", argnums=argnums, target=target, **static)


def vjp(fun, *primals):
    """``(out, vjp_fn)``; ``vjp_fn(cotangent)`` returns a tuple, one gradient per primal."""
    try:
        out, back = _vjp(fun, *primals)
    except GradjitError as e:
        surface(e)  # a short error at the user's call (see errors.surface)
        raise

    @functools.wraps(back)
    def vjp_fn(cotangent):
        try:
            return back(cotangent)
        except GradjitError as e:
            surface(e)
            raise
    return out, vjp_fn


def stop_gradient(x):
    """``x``, treated as a constant by differentiation."""
    if isinstance(x, Tracer):
        return _stop_gradient_op(x)
    return x


numpy_api.implements(stop_gradient)(_stop_gradient_op)  # traced calls emit the primitive
