"""The public transforms (see API.md): each works as ``gj.grad(f)``, ``@gj.grad`` and
``@gj.grad(argnums=1)``."""

from __future__ import annotations

import functools

import numpy as np

from .runtime.vmap import Batched
from .compiler import numpy_api, pytree
from .compiler import primitives as P
from .compiler.forward import WithTangents, check_tangent_shapes
from .compiler.primitives import stop_gradient as _stop_gradient_op
from .compiler.tracing import Tracer
from .errors import GradjitError, ShapeError, TraceError, surface
from .runtime import dispatch
from .runtime.signature import TOKENS, value_token
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


jacfwd = _transform("jacfwd", argnums=0, **_STATIC, target="auto")
jacfwd.__doc__ = ("The Jacobian of ``fun`` by forward mode (shape ``out.shape + in.shape``, as "
                  "``gj.jacobian``): the tangent basis of each input batched in one kernel.")


@functools.lru_cache(maxsize=256)
def _jvp_transform(fun, n):
    """The compiled (primals, tangents) -> (out, tangent out) of ``fun`` (kept per function,
    so that a jvp in a loop finds its kernel in memory)."""
    return dispatch.Transformed(WithTangents(fun, n), "jvp")


def _jvp_args(primals, tangents):
    if not isinstance(primals, (tuple, list)) or not isinstance(tangents, (tuple, list)):
        raise TypeError("gj.jvp(fun, primals, tangents): primals and tangents must be tuples "
                        "(one entry per argument of fun)")
    if len(primals) != len(tangents):
        raise GradjitError(f"gj.jvp: {len(primals)} primals but {len(tangents)} tangents")
    out = []
    for p, t in zip(primals, tangents):
        pl, ptree = pytree.flatten(p)
        tl, ttree = pytree.flatten(t)
        if ptree != ttree:
            raise GradjitError("gj.jvp: each tangent must have the structure of its primal")
        leaves = []
        for a, b in zip(pl, tl):
            if np.shape(a) != np.shape(b):
                raise ShapeError(f"gj.jvp: a tangent of shape {np.shape(b)} for a primal of "
                                 f"shape {np.shape(a)}")
            dt = np.asarray(a).dtype if not hasattr(a, "__cuda_array_interface__") else a.dtype
            leaves.append(b if hasattr(b, "__cuda_array_interface__") or dt.kind != "f" else
                          np.asarray(b, dtype=dt) if np.ndim(a) else dt.type(b))
        out.append(pytree.unflatten(ttree, leaves))
    return tuple(primals), tuple(out)


class _Jvp:
    """``gj.jvp(fun, primals, tangents) -> (out, tangent_out)``: forward mode, one kernel
    computing the value and its directional derivative (``primals`` and ``tangents`` are
    tuples of the same structure, one entry per argument)."""

    __name__ = __qualname__ = "jvp"

    def __call__(self, fun, primals, tangents):
        primals, tangents = _jvp_args(primals, tangents)
        try:
            return _jvp_transform(fun, len(primals))(*primals, *tangents)
        except GradjitError as e:
            surface(e)
            raise

    def _gj_inline(self, interp, args, kwargs):
        """Inside a traced function: the jvp graph replayed into the caller's."""
        from .compiler import transforms
        if kwargs or len(args) != 3:
            raise TraceError(f"{interp.loc}: gj.jvp takes (fun, primals, tangents)")
        fun, primals, tangents = args
        primals, tangents = tuple(primals), tuple(tangents)
        if len(primals) != len(tangents):
            raise GradjitError(f"{interp.loc}: gj.jvp: {len(primals)} primals but "
                               f"{len(tangents)} tangents")
        pl = [x for a in primals for x in pytree.flatten(a)[0]]
        tl = [x for a in tangents for x in pytree.flatten(a)[0]]
        check_tangent_shapes(pl, tl, interp.loc)
        tl = [P.cast(t, P.dtype_of(p)) if P.dtype_of(p).startswith("float") else t
              for p, t in zip(pl, tl)]
        tangents = tuple(pytree.unflatten(pytree.flatten(a)[1], tl[k:k + len(pytree.flatten(a)[0])])
                         for a, k in zip(tangents, _starts(tangents)))
        tf = _jvp_transform(fun, len(primals))
        return transforms.inline(tf, interp, primals + tangents, {})


def _starts(trees):
    out, k = [], 0
    for a in trees:
        out.append(k)
        k += len(pytree.flatten(a)[0])
    return out


jvp = _Jvp()


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


# gj.jvp's function object in disk-cache manifest keys: the function and how many primals
TOKENS[WithTangents] = lambda w: ("jvp", w.n, value_token(w.fun))
