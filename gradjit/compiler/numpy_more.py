"""More of numpy on traced values (entered in ``numpy_api``'s table): shape helpers, sorting,
repetition, weighted averages, casts, integer-array indexing on any axis, and boolean masks.

Everything here is a composition of primitives (sorting: a gather by ``argsort_p``'s
permutation, so its adjoint is the permutation's scatter), so nothing needs an adjoint of its
own.
"""

from __future__ import annotations

import numpy as np

from ..errors import TraceError, at
from . import primitives as P
from .numpy_api import (FUNCTIONS, METHODS, _iota, _static_int, concatenate, implements, mean,
                        moveaxis, ravel, reshape, sum_, transpose, vstack)
from .tracing import Tracer, builders, current_loc, install_methods


def _err(msg):
    return TraceError(at(current_loc(), msg))


def _dyn(n):
    return Tracer(n) if isinstance(n, P.Var) else n


# -- shapes ------------------------------------------------------------------------------------


def _atleast(nd, arys):
    out = []
    for x in arys:
        shape = tuple(P.shape_of(x))
        if len(shape) < nd:  # numpy prepends unit axes (a vector is one row)
            x = P.reshape(x, (1,) * (nd - len(shape)) + shape)
        out.append(x)
    return out[0] if len(out) == 1 else tuple(out)


@implements(np.atleast_1d)
def atleast_1d(*arys):
    return _atleast(1, arys)


@implements(np.atleast_2d)
def atleast_2d(*arys):
    return _atleast(2, arys)


@implements(np.size)
def size(a, axis=None):
    nd = P.ndim(a)
    axes = range(nd) if axis is None else P.norm_axes(axis, nd)
    n = P.size_of(a, axes)
    return _dyn(n) if isinstance(n, P.Var) else n


@implements(np.column_stack)
def column_stack(tup):
    return concatenate([P.reshape(x, (-1, 1)) if P.ndim(x) < 2 else x for x in tup], axis=1)


@implements(np.append)
def append(arr, values, axis=None):
    if axis is None:
        return concatenate([ravel(arr), ravel(values)], 0)
    return concatenate([arr, values], axis)


if hasattr(np, "row_stack"):  # (removed in numpy 2.4)
    implements(np.row_stack)(vstack)


# -- angles and casts -------------------------------------------------------------------------


@implements(np.degrees, np.rad2deg)
def degrees(x):
    return P.mul(x, 180.0 / np.pi)


@implements(np.radians, np.deg2rad)
def radians(x):
    return P.mul(x, np.pi / 180.0)


def _cast_to(dtype):
    return lambda x=0, *a: P.astype(x, dtype)


for _t in (np.float64, np.float32, np.int64, np.int32):
    FUNCTIONS[_t] = _cast_to(np.dtype(_t).name)


# -- logical reductions (forward only: boolean results) ---------------------------------------


@implements(np.any)
def any_(a, axis=None, out=None, keepdims=False):
    count = P.reduce_sum(P.convert(P.ne(a, 0), "int64"), axis, keepdims)
    return P.gt(count, 0)


@implements(np.all)
def all_(a, axis=None, out=None, keepdims=False):
    count = P.reduce_sum(P.convert(P.eq(a, 0), "int64"), axis, keepdims)
    return P.eq(count, 0)


# -- weighted average -------------------------------------------------------------------------


@implements(np.average)
def average(a, axis=None, weights=None, returned=False, keepdims=False):
    if weights is None:
        avg = mean(a, axis, keepdims=keepdims)
        scl = P.cast(P.size_of(a, P.norm_axes(axis, P.ndim(a))), P.dtype_of(avg)) \
            if returned else None
        return (avg, P.broadcast_to(scl, P.shape_of(avg))) if returned else avg
    w = weights
    if P.ndim(w) != P.ndim(a):
        if axis is None or P.ndim(w) != 1:
            raise _err("np.average: weights of another rank need axis= and must be 1-d")
        (ax,) = P.norm_axes(axis, P.ndim(a))
        w = P.reshape(w, tuple(-1 if k == ax else 1 for k in range(P.ndim(a))))
    (a2, w2), _ = P.promote(a, w, to_float=True)
    scl = P.reduce_sum(P.broadcast_to(w2, P.broadcast_shapes(P.shape_of(a2), P.shape_of(w2))),
                       axis, keepdims)
    avg = P.div(P.reduce_sum(P.mul(a2, w2), axis, keepdims), scl)
    return (avg, scl) if returned else avg


# -- sorting ----------------------------------------------------------------------------------


def _take_along_last(x, perm):
    """``np.take_along_axis(x, perm, -1)`` as one gather (iotas index the leading axes)."""
    nd = P.ndim(x)
    shape = P.shape_of(x)
    idx = [P.reshape(_iota(shape[k]), tuple(-1 if j == k else 1 for j in range(nd)))
           for k in range(nd - 1)]
    return P.gather(x, tuple(idx) + (perm,))


def _along_last(x, axis, fn):
    """``fn`` applied along ``axis`` by moving it last and back."""
    nd = P.ndim(x)
    if axis is None:
        return fn(ravel(x))
    ax = _static_int("axis", axis) % nd
    if ax == nd - 1:
        return fn(x)
    perm = [k for k in range(nd) if k != ax] + [ax]
    return P.transpose(fn(P.transpose(x, perm)), list(np.argsort(perm)))


@implements(np.sort)
def sort(a, axis=-1, kind=None, order=None, stable=None):
    if order is not None:
        raise _err("np.sort(order=) is for structured arrays: not supported")
    if P.ndim(a) == 0:
        raise _err("np.sort of a 0-d array needs axis=None")
    return _along_last(a, axis, lambda x: _take_along_last(x, P.argsort(x, -1)))


@implements(np.argsort)
def argsort(a, axis=-1, kind=None, order=None, stable=None):
    if order is not None:
        raise _err("np.argsort(order=) is for structured arrays: not supported")
    return _along_last(a, axis, lambda x: P.argsort(x, -1))


@implements(np.median)
def median(a, axis=None, out=None, overwrite_input=False, keepdims=False):
    if out is not None or keepdims:
        raise _err("np.median: out= and keepdims= are not supported")
    s = sort(a, axis=None) if axis is None else moveaxis(sort(a, axis=axis), axis, -1)
    n = P.shape_of(s)[-1]
    if isinstance(n, int):
        lo, hi = s[..., (n - 1) // 2], s[..., n // 2]
    else:
        n = Tracer(n)
        lo, hi = s[..., P.floor_divide(P.sub(n, 1), 2)], s[..., P.floor_divide(n, 2)]
    y = P.mul(P.add(lo, hi), 0.5)
    nan = P.reduce_max(P.convert(P.ne(s, s), "int64"), -1)  # NaN sorts last: look there
    return P.select(P.gt(nan, 0), np.nan, y) if P.dtype_of(y).startswith("float") else y


# -- repetition -------------------------------------------------------------------------------


@implements(np.repeat)
def repeat(a, repeats, axis=None):
    if axis is None:
        a, axis = ravel(a), 0
    ax = _static_int("np.repeat axis", axis) % P.ndim(a)
    n = P.shape_of(a)[ax]
    if isinstance(repeats, (int, np.integer)):
        r = int(repeats)
        total = n * r if isinstance(n, int) else P.mul(Tracer(n), r)
        idx = P.floor_divide(_iota(total) if isinstance(total, int) else P.arange(total), r)
    else:
        if isinstance(repeats, Tracer) or has_traced(repeats):
            raise _err("np.repeat with repeat counts known only at run time: the result's size "
                       "would depend on values")
        counts = np.asarray(repeats)
        idx = P.lift(np.repeat(np.arange(counts.size), counts))
        if isinstance(n, P.Var) or n != counts.size:
            P.check_eq(_dyn(n), counts.size, at(current_loc(), "np.repeat: repeats does not "
                                                "match the length of the axis"))
    pre = (slice(None),) * ax
    return getitem(a, pre + (idx,))


def has_traced(x):
    return isinstance(x, Tracer) or isinstance(x, (list, tuple)) and any(map(has_traced, x))


# -- indexing: integer arrays on any axis, boolean masks --------------------------------------


def _is_array(i):
    return isinstance(i, (np.ndarray, list)) or isinstance(i, Tracer) and i.ndim > 0


def _is_mask(i):
    if isinstance(i, Tracer):
        return i.ndim > 0 and i.dtype == np.bool_
    return isinstance(i, np.ndarray) and i.dtype == np.bool_ and i.ndim > 0


def _full(i):
    """``:`` (compared field by field: a traced bound must not be compared with ``==``)."""
    return isinstance(i, slice) and i.start is None and i.stop is None and i.step is None


def getitem(x, idx):
    """``x[idx]``: basic indexing and integer arrays on leading axes (``P.index``), integer
    arrays after full slices (``A[:, idx]``: the axes moved to the front and back), and a
    boolean mask of x's shape (a ``Masked`` value, which reductions accept)."""
    parts = idx if isinstance(idx, tuple) else (idx,)
    if len(parts) == 1 and _is_mask(parts[0]) and isinstance(x, Tracer):
        if isinstance(parts[0], np.ndarray):  # a constant mask: its positions are known
            return P.index(x, tuple(np.nonzero(parts[0])))
        return Masked(x, parts[0])
    lead = 0
    while lead < len(parts) and _full(parts[lead]):
        lead += 1
    arrs = [k for k, i in enumerate(parts) if _is_array(i)]
    if not arrs or arrs[0] == 0 or lead < arrs[0] or not isinstance(x, Tracer):
        return P.index(x, idx)
    k = arrs[-1] + 1
    if arrs != list(range(lead, k)) or not all(map(_full, parts[k:])):
        raise _err("integer-array indexing after full slices (A[:, idx]) is supported with the "
                   "index arrays side by side and full slices after them")
    nd = P.ndim(x)
    perm = list(range(lead, k)) + [j for j in range(nd) if not lead <= j < k]
    y = P.index(P.transpose(x, perm), tuple(parts[lead:k]))
    # y: the index's shape, then x's axes before ``lead`` and after ``k``: the former go first
    m = P.ndim(y) - (nd - k) - lead  # rank of the broadcast index
    back = list(range(m, m + lead)) + list(range(m)) + list(range(m + lead, P.ndim(y)))
    return P.transpose(y, back)


class Masked:
    """``x[mask]`` for a boolean ``mask`` of x's shape: its length depends on values, so it is
    kept as (values, mask). Elementwise arithmetic keeps the mask; sum, mean, max, min, prod,
    var/std and ``len``/``.size`` reduce over the masked elements (numpy's ``where=``); any
    other use is an error naming the construct."""

    __array_priority__ = 2000

    def __init__(self, x, mask):
        if P.ndim(mask) != P.ndim(x):
            raise _err(f"boolean-mask indexing with a mask of rank {P.ndim(mask)} into an "
                       f"array of rank {P.ndim(x)} is not supported; use np.where")
        P.broadcast(x, mask)  # the same shape (checked in the kernel where sizes are symbolic)
        self.x, self.mask = x, mask

    def _fail(self, what):
        raise _err(f"{what} of x[mask] (boolean-mask indexing): its size depends on values; "
                   "reduce it (np.sum(x[m]), np.mean, np.max, ...) or use "
                   "np.where(m, x, 0)")

    def _op(self, other, op):
        if isinstance(other, Masked):
            if not _same_mask(other.mask, self.mask):
                self._fail("combining two masked selections with different masks")
            other = other.x
        elif P.ndim(other) if not P.is_static_scalar(other) else 0:
            self._fail("arithmetic with an array")
        return Masked(op(self.x, other), self.mask)

    def __array__(self, *a, **k):
        self._fail("converting")

    def __array_function__(self, func, types, args, kwargs):
        rule = MASKED.get(func)
        if rule is None:
            self._fail(f"np.{getattr(func, '__name__', func)}()")
        return rule(*args, **kwargs)

    def __array_ufunc__(self, ufunc, method, *args, **kwargs):
        if method != "__call__" or kwargs:
            self._fail(f"np.{ufunc.__name__}.{method}()")
        impl = FUNCTIONS.get(ufunc)
        ms = [a for a in args if isinstance(a, Masked)]
        if impl is None or len(args) > 2:
            self._fail(f"np.{ufunc.__name__}()")
        if len(args) == 1:
            return Masked(impl(self.x), self.mask)
        a, b = args
        if isinstance(a, Masked):
            return a._op(b, impl)
        return ms[0]._op(a, lambda y, o: impl(o, y))

    def __len__(self):
        self._fail("len()")

    def __iter__(self):
        self._fail("iterating over")

    def __bool__(self):
        self._fail("the truth value")

    @property
    def size(self):
        return P.reduce_sum(P.convert(self.mask, "int64"))

    @property
    def shape(self):
        return (self.size,)

    ndim = 1

    def __getitem__(self, idx):
        self._fail("indexing")


def _masked_reduce(fallback, fill=None):
    def rule(m, axis=None, dtype=None, out=None, keepdims=False, **kw):
        if axis not in (None, 0, -1) or keepdims or out is not None or kw:
            raise _err("a reduction of x[mask] takes no axis, keepdims or out (the masked "
                       "elements form one vector)")
        x = m.x if fill is None else P.select(m.mask, m.x, fill(m.x))
        y = fallback(x, m)
        return P.astype(y, dtype) if dtype is not None else y
    return rule


def _masked_sum(x, m):
    return P.reduce_sum(P.select(m.mask, x, P.cast(0, P.dtype_of(x))))


def _masked_mean(x, m):
    (x,), _ = P.promote(x, to_float=True)
    return P.div(_masked_sum(x, m), P.cast(m.size, P.dtype_of(x)))


def _masked_var(x, m, ddof=0):
    (x,), _ = P.promote(x, to_float=True)
    d = P.sub(x, _masked_mean(x, m))
    n = P.cast(P.maximum(P.sub(m.size, ddof), 0), P.dtype_of(x))
    return P.div(_masked_sum(P.mul(d, d), m), n)


def _nonempty(m, op):
    P.check_nonzero(m.size, at(current_loc(), f"zero-size array to reduction operation {op} "
                               "which has no identity (no element of the mask is true)"))


def _inf(sign):
    return lambda x: sign * np.inf if P.dtype_of(x).startswith("float") else \
        (np.iinfo(P.dtype_of(x)).max if sign > 0 else np.iinfo(P.dtype_of(x)).min)


def _masked_var_rule(m, axis=None, dtype=None, out=None, ddof=0, keepdims=False):
    _masked_reduce(lambda x, mm: x)(m, axis, None, out, keepdims)  # checks the arguments
    return _masked_var(m.x, m, ddof)


MASKED = {
    np.sum: _masked_reduce(_masked_sum), np.mean: _masked_reduce(_masked_mean),
    np.nansum: _masked_reduce(lambda x, m: _masked_sum(P.select(P.ne(x, x), 0.0, x), m)),
    np.max: _masked_reduce(lambda x, m: _nonempty(m, "maximum") or P.reduce_max(x), _inf(-1)),
    np.min: _masked_reduce(lambda x, m: _nonempty(m, "minimum") or P.reduce_min(x), _inf(1)),
    np.prod: _masked_reduce(lambda x, m: P.reduce_prod(P.select(m.mask, x, P.cast(1, P.dtype_of(x))))),
    np.var: _masked_var_rule,
    np.std: lambda m, *a, **k: P.sqrt(_masked_var_rule(m, *a, **k)),
    np.size: lambda m, axis=None: m.size,
    np.count_nonzero: lambda m, axis=None: _masked_sum(P.convert(P.ne(m.x, 0), "int64"), m),
    np.any: lambda m, axis=None: P.gt(_masked_sum(P.convert(P.ne(m.x, 0), "int64"), m), 0),
    np.all: lambda m, axis=None: P.eq(_masked_sum(P.convert(P.eq(m.x, 0), "int64"), m), 0),
}
MASKED[np.amax], MASKED[np.amin] = MASKED[np.max], MASKED[np.min]

for _name, _fn in (("sum", np.sum), ("mean", np.mean), ("max", np.max), ("min", np.min),
                   ("prod", np.prod), ("var", np.var), ("std", np.std), ("any", np.any),
                   ("all", np.all)):
    setattr(Masked, _name, (lambda f: lambda self, *a, **k: MASKED[f](self, *a, **k))(_fn))
for _name in ("add", "sub", "mul", "truediv", "pow", "mod", "floordiv", "lt", "le", "gt",
              "ge", "eq", "ne", "and", "or"):
    _f = METHODS["__" + _name + "__"]
    setattr(Masked, f"__{_name}__", (lambda f: lambda self, o: self._op(o, f))(_f))
    _r = METHODS.get("__r" + _name + "__")
    if _r is not None:
        setattr(Masked, f"__r{_name}__", (lambda f: lambda self, o: self._op(o, f))(_r))
for _name in ("neg", "abs", "invert", "pos"):
    setattr(Masked, f"__{_name}__", (lambda f: lambda self: Masked(f(self.x), self.mask))(
        METHODS["__" + _name + "__"]))
Masked.__hash__ = object.__hash__


# -- updating through a mask: out[mask] = v -----------------------------------------------------


def _same_mask(a, b):
    """The same mask: one value, or two computed alike (``y[y > 1] = y[y > 1] * 2``)."""
    if a is b or isinstance(a, Tracer) and isinstance(b, Tracer) and a.ivar is b.ivar:
        return True
    if not (isinstance(a, Tracer) and isinstance(b, Tracer)):
        return False
    ea, eb = (next((bl.producer[v] for bl in reversed(builders()) if v in bl.producer), None)
              for v in (a.ivar, b.ivar))
    return ea is not None and eb is not None and ea.prim is eb.prim and \
        ea.inputs == eb.inputs and ea.params == eb.params


def masked_update(x, mask, value):
    """``x[mask] = value`` (a scalar, or the same mask's selection): ``np.where``."""
    if isinstance(value, Masked):
        if not _same_mask(value.mask, mask):
            raise _err("x[m] = y[k] with two different masks: use np.where")
        value = value.x
    elif not P.is_static_scalar(value) and P.ndim(value) != 0:
        raise _err("x[mask] = array: the number of elements written depends on values; write "
                   "a scalar or y[mask], or use np.where")
    return P.select(mask, value, x)


METHODS_MORE = {
    "any": lambda self, *a, **k: any_(self, *a, **k),
    "all": lambda self, *a, **k: all_(self, *a, **k),
    "argsort": lambda self, axis=-1, **k: argsort(self, axis, **k),
    "repeat": lambda self, repeats, axis=None: repeat(self, repeats, axis),
}
METHODS.update(METHODS_MORE)
install_methods(Tracer, METHODS_MORE)
__all__ = ["Masked", "getitem", "masked_update", "sum_", "reshape", "transpose"]
