"""``scipy.special`` as seen by a traced function: compositions of primitives (``expit``,
``logsumexp``, ``softmax``, ...) and the primitives ``erf``/``gammaln``/``digamma``. Registered
in numpy_api's table the first time a function of scipy's is looked up (``register``), so
that importing gradjit does not import scipy."""

from __future__ import annotations

import numpy as np

from ..errors import TraceError, at
from . import numpy_api as N
from . import primitives as P
from .tracing import current_loc


def _shift(a, axis, keepdims, empty_ok=True):
    """The stability shift of a log-sum-exp: the maximum, a constant (as in logaddexp).
    ``empty_ok``: an empty axis gives -inf (logsumexp), else raises as numpy's max (softmax)."""
    red = P.reduce_max if empty_ok else \
        (lambda a, axis, keepdims: N.FUNCTIONS[np.max](a, axis=axis, keepdims=keepdims))
    m = P.stop_gradient(red(a, axis, keepdims))
    return P.select(N.isfinite(m), m, 0.0)  # no shift by inf: inf - inf would be nan


def expit(x):
    return P.mul(0.5, P.add(P.tanh(P.mul(x, 0.5)), 1.0))  # no overflow for large |x|


def logit(p):
    return P.sub(P.log(p), P.log1p(P.neg(p)))


def logsumexp(a, axis=None, b=None, keepdims=False, return_sign=False):
    if return_sign:
        raise TraceError(at(current_loc(), "scipy.special.logsumexp(return_sign=True) is not "
                            "supported"))
    e = P.exp(P.sub(a, _shift(a, axis, True)))
    if b is not None:
        e = P.mul(e, b)
    return P.add(P.log(N.FUNCTIONS[np.sum](e, axis=axis, keepdims=keepdims)),
                 _shift(a, axis, keepdims))


def softmax(x, axis=None):
    e = P.exp(P.sub(x, _shift(x, axis, True, empty_ok=False)))
    return P.div(e, N.FUNCTIONS[np.sum](e, axis=axis, keepdims=True))


def log_softmax(x, axis=None):
    _shift(x, axis, True, empty_ok=False)  # an empty axis raises, as scipy's
    return P.sub(x, logsumexp(x, axis=axis, keepdims=True))


def _xlog(log, at_pole):
    def f(x, y):
        # 0 where x == 0 whatever y: y at log's pole or infinite is replaced there by a point
        # where log is 0, so that x * log(y) keeps its derivative log(y) in x
        bad = P.logical_and(P.eq(x, 0), P.logical_or(P.eq(y, at_pole), N.isinf(y)))
        return P.mul(x, log(P.select(bad, 1.0 + at_pole, y)))
    return f


def erfc(x):
    return P.sub(1.0, P.erf(x))


_TABLE = {
    "expit": expit, "logit": logit, "logsumexp": logsumexp, "softmax": softmax,
    "log_softmax": log_softmax, "xlogy": _xlog(P.log, 0.0), "xlog1py": _xlog(P.log1p, -1.0),
    "erf": P.erf, "erfc": erfc, "gammaln": P.gammaln, "digamma": P.digamma, "psi": P.digamma,
}


def register():
    """Enter scipy.special's functions in numpy_api's table (scipy is imported by now)."""
    import scipy.special as sps
    for name, impl in _TABLE.items():
        fn = getattr(sps, name, None)
        if fn is not None:
            N.FUNCTIONS.setdefault(fn, _ufunc_args(name, impl))


def _ufunc_args(name, impl):
    """scipy's ufuncs take numpy's ufunc keywords: only the plain call is supported."""
    def f(*args, **kwargs):
        if name in ("logsumexp", "softmax", "log_softmax"):
            return impl(*args, **kwargs)
        if kwargs:
            raise TraceError(at(current_loc(), f"scipy.special.{name}: keyword arguments are "
                                "not supported"))
        return impl(*args)
    f.__name__ = name
    return f
