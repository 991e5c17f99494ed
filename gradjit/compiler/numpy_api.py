"""numpy as seen by a traced function: one table from numpy's own function objects (and
ndarray methods/operators) to compositions of primitives.

Derived functions (``mean``, ``var``, ``logaddexp``, ``hypot``, ...) are decomposed here, so
they need no adjoint rule of their own.
"""

from __future__ import annotations

import collections
import operator
import sys

import numpy as np

from ..errors import TraceError, at
from . import primitives as P
from .tracing import Tracer, current_loc, install_methods, is_static_scalar

FUNCTIONS = {}  # numpy function object -> implementation on tracers


def implements(*fns):
    def deco(impl):
        for f in fns:
            FUNCTIONS[f] = impl
        return impl
    return deco


def _unary(np_fn, op):
    FUNCTIONS[np_fn] = lambda x, *a, **k: _no_extra(np_fn, a, k) or op(x)


def _no_extra(fn, args, kwargs):
    if args or any(v is not None for k, v in kwargs.items() if k != "dtype"):
        raise TraceError(at(current_loc(), f"np.{fn.__name__}: extra arguments are not supported"))
    return None


for _f, _op in [
    (np.sin, P.sin), (np.cos, P.cos), (np.tan, P.tan), (np.exp, P.exp), (np.expm1, P.expm1),
    (np.log, P.log), (np.log1p, P.log1p), (np.sqrt, P.sqrt), (np.tanh, P.tanh),
    (np.sinh, P.sinh), (np.cosh, P.cosh), (np.arcsin, P.arcsin), (np.arccos, P.arccos),
    (np.arctan, P.arctan), (np.arcsinh, P.arcsinh), (np.arccosh, P.arccosh),
    (np.arctanh, P.arctanh), (np.abs, P.absolute), (np.absolute, P.absolute),
    (np.fabs, P.absolute), (np.sign, P.sign), (np.floor, P.floor), (np.ceil, P.ceil),
    (np.rint, P.rint), (np.round, P.rint), (np.negative, P.neg), (np.square, P.square),
    (np.reciprocal, P.reciprocal), (np.logical_not, P.logical_not),
    (np.positive, lambda x: x),
]:
    _unary(_f, _op)

for _f, _op in [
    (np.add, P.add), (np.subtract, P.sub), (np.multiply, P.mul), (np.divide, P.div),
    (np.true_divide, P.div), (np.power, P.power), (np.maximum, P.maximum),
    (np.minimum, P.minimum), (np.fmax, P.fmax), (np.fmin, P.fmin),
    (np.arctan2, P.arctan2), (np.mod, P.mod), (np.remainder, P.mod),
    (np.floor_divide, P.floor_divide), (np.equal, P.eq), (np.not_equal, P.ne), (np.less, P.lt),
    (np.less_equal, P.le), (np.greater, P.gt), (np.greater_equal, P.ge),
    (np.logical_and, P.logical_and), (np.logical_or, P.logical_or),
]:
    FUNCTIONS[_f] = (lambda op: lambda a, b: op(a, b))(_op)


@implements(np.log2)
def log2(x):
    return P.mul(P.log(x), float(1.0 / np.log(2.0)))


@implements(np.log10)
def log10(x):
    return P.mul(P.log(x), float(1.0 / np.log(10.0)))


@implements(np.exp2)
def exp2(x):
    return P.exp(P.mul(x, float(np.log(2.0))))


@implements(np.cbrt)
def cbrt(x):
    return P.mul(P.sign(x), P.power(P.absolute(x), 1.0 / 3.0))


@implements(np.hypot)
def hypot(a, b):  # a name of its own: the front end maps math.hypot to it
    return P.hypot(a, b)


@implements(np.logaddexp)
def logaddexp(a, b):
    m = P.stop_gradient(P.maximum(a, b))
    m = P.select(isfinite(m), m, 0.0)  # no shift by inf: inf - inf would be nan
    return P.add(m, P.log(P.add(P.exp(P.sub(a, m)), P.exp(P.sub(b, m)))))


@implements(np.isnan)
def isnan(x):
    return P.ne(x, x)


@implements(np.isinf)
def isinf(x):
    return P.eq(P.absolute(x), np.inf)


@implements(np.isfinite)
def isfinite(x):
    return P.lt(P.absolute(x), np.inf)


@implements(np.sinc)
def sinc(x):
    px = P.mul(x, float(np.pi))
    safe = P.select(P.eq(x, 0.0), 1.0, px)
    return P.select(P.eq(x, 0.0), 1.0, P.div(P.sin(safe), safe))


@implements(np.where)
def where(c, a=None, b=None):
    if a is None or b is None:
        raise TraceError(at(current_loc(), "np.where with one argument (indices) has a "
                            "data-dependent shape and is not supported"))
    return P.select(c, a, b)


@implements(np.clip)
def clip(x, a_min=None, a_max=None, **kw):
    a_min = kw.pop("min", a_min)
    a_max = kw.pop("max", a_max)
    if a_min is not None:
        x = P.maximum(x, a_min)
    if a_max is not None:
        x = P.minimum(x, a_max)
    return x


# --------------------------------------------------------------------------------------------
# Reductions
# --------------------------------------------------------------------------------------------


@implements(np.sum)
def sum_(x, axis=None, dtype=None, out=None, keepdims=False):
    _no_out(out)
    y = P.reduce_sum(x, axis, keepdims)
    return P.astype(y, dtype) if dtype is not None else y


def _no_identity(x, axis, op):
    P.check_nonempty(x, axis, f"zero-size array to reduction operation {op} which has no identity")


@implements(np.max, np.amax)
def max_(x, axis=None, out=None, keepdims=False):
    _no_out(out)
    _no_identity(x, axis, "maximum")
    return P.reduce_max(x, axis, keepdims)


@implements(np.min, np.amin)
def min_(x, axis=None, out=None, keepdims=False):
    _no_out(out)
    _no_identity(x, axis, "minimum")
    return P.reduce_min(x, axis, keepdims)


@implements(np.nanmax)
def nanmax(x, axis=None, out=None, keepdims=False):
    _no_out(out)
    _no_identity(x, axis, "fmax")
    return P.reduce_fmax(x, axis, keepdims)


@implements(np.nanmin)
def nanmin(x, axis=None, out=None, keepdims=False):
    _no_out(out)
    _no_identity(x, axis, "fmin")
    return P.reduce_fmin(x, axis, keepdims)


def _nan_to_zero(x):
    return P.select(isnan(x), 0, x) if P.dtype_of(x).startswith("float") else x


@implements(np.nansum)
def nansum(x, axis=None, dtype=None, out=None, keepdims=False):
    return sum_(_nan_to_zero(x), axis, dtype, out, keepdims)


@implements(np.nanmean)
def nanmean(x, axis=None, dtype=None, out=None, keepdims=False):
    """Sum over count of the non-NaN elements (NaN where there are none, as numpy)."""
    _no_out(out)
    (x,), _ = P.promote(x, to_float=True)
    s = P.reduce_sum(_nan_to_zero(x), axis, keepdims)
    n = P.reduce_sum(P.convert(P.logical_not(isnan(x)), P.dtype_of(x)), axis, keepdims)
    y = P.div(s, n)
    return P.astype(y, dtype) if dtype is not None else y


@implements(np.prod)
def prod(x, axis=None, dtype=None, out=None, keepdims=False):
    _no_out(out)
    return P.reduce_prod(x, axis, keepdims)


@implements(np.mean)
def mean(x, axis=None, dtype=None, out=None, keepdims=False):
    _no_out(out)
    axes = P.norm_axes(axis, P.ndim(x))
    (x,), _ = P.promote(x, to_float=True)
    n = P.size_of(x, axes)
    s = P.reduce_sum(x, axis, keepdims)
    y = _div_count(s, n)
    return P.astype(y, dtype) if dtype is not None else y


def _div_count(s, n):
    """``s / n`` for an element count ``n``, in the float dtype of ``s`` (an int64 count must
    not promote float32 to float64)."""
    if isinstance(n, Tracer):
        return P.div(s, P.cast(n, P.dtype_of(s)))
    return P.mul(s, 1.0 / n) if n != 0 else P.div(s, float(n))


@implements(np.var)
def var(x, axis=None, dtype=None, out=None, ddof=0, keepdims=False):
    _no_out(out)
    (x,), _ = P.promote(x, to_float=True)
    d = P.sub(x, mean(x, axis, keepdims=True))
    axes = P.norm_axes(axis, P.ndim(x))
    n = P.sub(P.size_of(x, axes), ddof)
    n = P.maximum(n, 0) if isinstance(n, Tracer) else max(n, 0)  # numpy: nan for ddof >= n
    y = _div_count(P.reduce_sum(P.mul(d, d), axis, keepdims), n)
    return P.astype(y, dtype) if dtype is not None else y


@implements(np.std)
def std(x, axis=None, dtype=None, out=None, ddof=0, keepdims=False):
    y = P.sqrt(var(x, axis, ddof=ddof, keepdims=keepdims))
    return P.astype(y, dtype) if dtype is not None else y


def _no_out(out):
    if out is not None:
        raise TraceError(at(current_loc(), "out= arguments are not supported (functions must not "
                            "write into arrays they are given)"))


@implements(np.linalg.norm)
def norm(x, ord=None, axis=None, keepdims=False):
    vector = P.ndim(x) == 1 or isinstance(axis, (int, np.integer))
    if vector and ord not in (None, 2) and not isinstance(ord, str):
        return _vector_norm(x, ord, axis, keepdims)
    if not vector and ord in (1, -1, np.inf, -np.inf):  # the largest (smallest) column/row sum
        rows, cols = (0, 1) if axis is None else tuple(axis)
        a = P.reduce_sum(P.absolute(x), rows if ord in (1, -1) else cols, keepdims=True)
        red = P.reduce_max if ord > 0 else P.reduce_min
        return red(a, (rows, cols), keepdims)
    if ord not in (None, 2, "fro"):
        raise TraceError(at(current_loc(), f"np.linalg.norm with ord={ord!r} is not supported"
                            + (" (it needs singular values)" if ord in ("nuc", -2) else "")))
    if ord == 2 and P.ndim(x) == 2 and axis is None:
        raise TraceError(at(current_loc(), "the matrix 2-norm (largest singular value) is not "
                            "supported; use ord='fro'"))
    return P.sqrt(P.reduce_sum(P.mul(x, x), axis, keepdims))


def _vector_norm(x, ord, axis, keepdims):
    a = P.absolute(x)
    if ord == np.inf:
        return max_(a, axis, keepdims=keepdims)
    if ord == -np.inf:
        return min_(a, axis, keepdims=keepdims)
    if ord == 0:
        return P.reduce_sum(P.convert(P.ne(x, 0), P.dtype_of(a)), axis, keepdims)
    if ord == 1:
        return P.reduce_sum(a, axis, keepdims)
    return P.power(P.reduce_sum(P.power(a, float(ord)), axis, keepdims), 1.0 / ord)


# --------------------------------------------------------------------------------------------
# Shapes and data movement
# --------------------------------------------------------------------------------------------


@implements(np.reshape)
def reshape(x, *shape, order="C", newshape=None):
    if order != "C":
        raise TraceError(at(current_loc(), "only C-order reshape is supported"))
    if newshape is not None:
        shape = (newshape,)
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    if len(shape) == 1 and not isinstance(shape[0], (tuple, list)):
        shape = (shape[0],)
    _check_reshape(x, shape)
    return P.reshape(x, shape)


def _check_reshape(x, shape):
    """numpy's rule: the new shape holds as many elements as ``x`` (one -1 is inferred).
    Checked statically when the sizes are known, else at run time."""
    if P.is_static_scalar(x):
        return
    shape = [P._dim_atom(d) if not (isinstance(d, int) and d == -1) else -1 for d in shape]
    if sum(1 for d in shape if isinstance(d, int) and d == -1) > 1:
        raise TraceError(at(current_loc(), "reshape: can only specify one unknown dimension (-1)"))
    total = P.size_of(x, range(P.ndim(x)))
    known = 1
    for d in shape:
        if isinstance(d, int) and d == -1:
            continue
        if isinstance(d, int) and d < 0:
            raise TraceError(at(current_loc(), f"reshape: negative size {d}"))
        known = P.mul(known, Tracer(d)) if isinstance(d, P.Var) else known * d
    infer = -1 in [d for d in shape if isinstance(d, int)]
    src = P.fmt_shape(P.shape_of(x))
    dst = "(" + ", ".join(str(d) if isinstance(d, int) else "?" for d in shape) + \
        (",)" if len(shape) == 1 else ")")
    msg = at(current_loc(), f"cannot reshape an array of shape {src} into shape {dst}")
    if infer:  # -1 beside a zero size is ambiguous: numpy raises
        P.check_nonzero(known, msg)
    if isinstance(total, Tracer) or isinstance(known, Tracer):
        if infer:
            if not (isinstance(known, int) and known == 1):
                P.check_eq(P.mod(total, known), 0, msg)
        else:
            P.check_eq(total, known, msg)
    elif (known == 0 or total % known != 0) if infer else total != known:
        raise P.ShapeError(msg)


@implements(np.transpose)
def transpose(x, *axes):
    if len(axes) == 1 and (isinstance(axes[0], (tuple, list)) or axes[0] is None):
        axes = axes[0]
    return P.transpose(x, axes or None)


@implements(np.swapaxes)
def swapaxes(x, a, b):
    perm = list(range(P.ndim(x)))
    perm[a], perm[b] = perm[b], perm[a]
    return P.transpose(x, perm)


@implements(np.moveaxis)
def moveaxis(x, source, destination):
    nd = P.ndim(x)
    perm = [k for k in range(nd) if k != source % nd]
    perm.insert(destination % nd, source % nd)
    return P.transpose(x, perm)


@implements(np.expand_dims)
def expand_dims(x, axis):
    axes = axis if isinstance(axis, (tuple, list)) else (axis,)
    shape = list(P.shape_of(x))
    nd = len(shape) + len(axes)
    for a in sorted(a % nd for a in axes):
        shape.insert(a, 1)
    return P.reshape(x, tuple(shape))


@implements(np.squeeze)
def squeeze(x, axis=None):
    shape = P.shape_of(x)
    if axis is None:
        axes = [k for k, d in enumerate(shape) if isinstance(d, int) and d == 1]
    else:
        axes = [a % len(shape) for a in (axis if isinstance(axis, (tuple, list)) else (axis,))]
        for a in axes:
            if not (isinstance(shape[a], int) and shape[a] == 1):
                raise TraceError(at(current_loc(), f"cannot squeeze axis {a}: its size is not 1"))
    return P.reshape(x, tuple(d for k, d in enumerate(shape) if k not in axes))


@implements(np.ravel)
def ravel(x, order="C"):
    return P.reshape(x, (-1,))


@implements(np.broadcast_to)
def broadcast_to(x, shape):
    return P.broadcast_to(x, tuple(shape) if isinstance(shape, (tuple, list)) else (shape,))


@implements(np.concatenate)
def concatenate(xs, axis=0):
    return P.concatenate(xs, axis)


@implements(np.stack)
def stack(xs, axis=0):
    xs = list(xs)
    nd = P.ndim(xs[0]) + 1
    return P.concatenate([expand_dims(x, axis % nd) for x in xs], axis % nd)


@implements(np.hstack)
def hstack(xs):
    xs = list(xs)
    return P.concatenate(xs, 0 if P.ndim(xs[0]) == 1 else 1)


@implements(np.vstack)
def vstack(xs):
    return P.concatenate([x if P.ndim(x) >= 2 else P.reshape(x, (1, -1)) for x in xs], 0)


@implements(np.array, np.asarray, np.asanyarray)
def array(obj, dtype=None, copy=True, **kw):
    if isinstance(obj, Tracer):
        return P.astype(obj, dtype) if dtype is not None else obj
    if isinstance(obj, (list, tuple)):
        items = [array(o) for o in obj]
        if not any(isinstance(i, Tracer) for i in items):
            return np.array(obj, dtype=dtype)
        (*items,), dt = P.promote(*items)
        parts = []
        for i in items:  # each item becomes a slice of length 1 along the new leading axis
            if isinstance(i, Tracer):
                parts.append(P.reshape(i, (1,) + P.shape_of(i)))
            else:  # a constant: a small array of the graph
                c = np.asarray(i, dtype=dt)
                parts.append(P.lift(c.reshape((1,) + c.shape)))
        y = P.concatenate(parts, 0)
        return P.astype(y, dtype) if dtype is not None else y
    return np.array(obj, dtype=dtype)


@implements(np.zeros_like)
def zeros_like(x, dtype=None):
    return P.full(P.shape_of(x), 0, dtype and np.dtype(dtype).name or _fdt(x))


@implements(np.ones_like)
def ones_like(x, dtype=None):
    return P.full(P.shape_of(x), 1, dtype and np.dtype(dtype).name or _fdt(x))


@implements(np.full_like)
def full_like(x, fill_value, dtype=None):
    return P.full(P.shape_of(x), fill_value, dtype and np.dtype(dtype).name or _fdt(x))


def _fdt(x):
    return P.dtype_of(x)


def _shape_arg(shape):
    return tuple(shape) if isinstance(shape, (tuple, list)) else (shape,)


@implements(np.zeros)
def zeros(shape, dtype=float):
    return P.full(_shape_arg(shape), 0, np.dtype(dtype).name)


@implements(np.ones)
def ones(shape, dtype=float):
    return P.full(_shape_arg(shape), 1, np.dtype(dtype).name)


@implements(np.full)
def full(shape, fill_value, dtype=None):
    dt = np.dtype(dtype).name if dtype is not None else P.dtype_of(fill_value)
    return P.full(_shape_arg(shape), fill_value, dt)


@implements(np.arange)
def arange(start, stop=None, step=None, dtype=None):
    if stop is not None or step is not None:
        if isinstance(start, Tracer) or isinstance(stop, Tracer) or isinstance(step, Tracer):
            raise TraceError(at(current_loc(), "np.arange(start, stop, step) with run-time "
                                "bounds is not supported; use np.arange(n)"))
        return np.arange(start, stop, step, dtype=dtype)
    return P.arange(start, np.dtype(dtype or "int64").name)


@implements(np.flip)
def flip(x, axis=None):
    axes = P.norm_axes(axis, P.ndim(x))
    return P.index(x, tuple(slice(None, None, -1) if k in axes else slice(None)
                            for k in range(P.ndim(x))))


@implements(np.roll)
def roll(x, shift, axis=None):
    if axis is None:
        return P.reshape(roll(ravel(x), shift, 0), P.shape_of(x))
    if isinstance(shift, Tracer):
        raise TraceError(at(current_loc(), "np.roll with a run-time shift is not supported"))
    nd = P.ndim(x)
    axis %= nd
    pre = (slice(None),) * axis
    return P.concatenate([P.index(x, pre + (slice(-shift, None),)),
                          P.index(x, pre + (slice(None, -shift),))], axis) if shift % 1 == 0 and shift else x


@implements(np.split)
def split(x, indices_or_sections, axis=0):
    nd = P.ndim(x)
    axis %= nd
    n = P.shape_of(x)[axis]
    if isinstance(indices_or_sections, int):
        k = indices_or_sections
        size = P.floor_divide(Tracer(n), k) if not isinstance(n, int) else n // k
        msg = at(current_loc(), "np.split: the array does not split into equal parts")
        if isinstance(n, int) and n % k:
            raise P.ShapeError(msg)
        if not isinstance(n, int):
            P.check_eq(P.mod(Tracer(n), k), 0, msg)
        bounds = [P.mul(size, j) if isinstance(size, Tracer) else size * j for j in range(k + 1)]
    else:
        bounds = [0] + list(indices_or_sections) + [None]
    pre = (slice(None),) * axis
    return [P.index(x, pre + (slice(bounds[j], bounds[j + 1]),)) for j in range(len(bounds) - 1)]


@implements(np.cumsum)
def cumsum(x, axis=None, dtype=None, out=None):
    _no_out(out)
    y = P.cumsum(x, axis)
    return P.astype(y, dtype) if dtype is not None else y


# --------------------------------------------------------------------------------------------
# Products
# --------------------------------------------------------------------------------------------


@implements(np.dot)
def dot(a, b):
    if P.ndim(a) == 0 or P.ndim(b) == 0:
        return P.mul(a, b)
    return P.matmul(a, b)


@implements(np.matmul)
def matmul(a, b):
    return P.matmul(a, b)


@implements(np.inner)
def inner(a, b):
    if P.ndim(a) == 1 and P.ndim(b) == 1:
        return P.matmul(a, b)
    return P.matmul(a, P.transpose(b))


@implements(np.vdot)
def vdot(a, b):
    return P.matmul(ravel(a), ravel(b))


@implements(np.outer)
def outer(a, b):
    return P.outer(a, b)


@implements(np.linalg.det)
def det(a):
    return P.det(a)


@implements(np.linalg.inv)
def inv(a):
    return P.inv(a)


@implements(np.linalg.cholesky)
def cholesky(a, upper=False):
    if upper:
        raise TraceError(at(current_loc(), "np.linalg.cholesky(upper=True) is not supported: "
                            "transpose the lower factor"))
    return P.cholesky(a)


@implements(np.linalg.solve)
def solve(a, b):
    return P.solve(a, b)


@implements(np.tensordot)
def tensordot(a, b, axes=2):
    """``np.tensordot`` as an einsum: contract ``axes`` of ``a`` with those of ``b``."""
    na, nb = P.ndim(a), P.ndim(b)
    if isinstance(axes, (int, np.integer)):
        k = int(axes)
        if k < 0 or k > min(na, nb):
            raise TraceError(at(current_loc(), f"np.tensordot: axes={k} does not fit operands of "
                                f"rank {na} and {nb}"))
        ax_a, ax_b = list(range(na - k, na)), list(range(k))
    else:
        ax_a, ax_b = axes
        ax_a = [ax_a] if isinstance(ax_a, (int, np.integer)) else list(ax_a)
        ax_b = [ax_b] if isinstance(ax_b, (int, np.integer)) else list(ax_b)
        if len(ax_a) != len(ax_b):
            raise TraceError(at(current_loc(), "np.tensordot: the two axes lists differ in length"))
        ax_a = [int(x) % na for x in ax_a]
        ax_b = [int(x) % nb for x in ax_b]
    letters = iter("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
    la = [next(letters) for _ in range(na)]
    lb = [next(letters) for _ in range(nb)]
    for i, j in zip(ax_a, ax_b):
        lb[j] = la[i]
    out = [c for k, c in enumerate(la) if k not in ax_a] + \
        [c for k, c in enumerate(lb) if k not in ax_b]
    return _einsum("".join(la), "".join(lb), out=list(out), operands=[a, b])


@implements(np.einsum)
def einsum(subscripts, *operands, optimize=False, **kw):
    """``np.einsum`` decomposed into transposes, reshapes, diagonals (gathers), sums, products
    and matrix products; operands are contracted left to right."""
    if kw:
        raise TraceError(at(current_loc(), f"np.einsum: arguments {sorted(kw)} are not supported"))
    if not isinstance(subscripts, str):
        raise TraceError(at(current_loc(), "np.einsum: only the string form of subscripts is supported"))
    spec = subscripts.replace(" ", "")
    ins_text, arrow, out_text = spec.partition("->")
    terms = ins_text.split(",")
    if len(terms) != len(operands):
        raise TraceError(at(current_loc(), f"np.einsum: '{subscripts}' names {len(terms)} operands, "
                            f"{len(operands)} given"))
    # '...' becomes fresh upper-case letters, aligned from the right as broadcasting does
    n_ell = max([P.ndim(x) - len(t.replace("...", "")) for t, x in zip(terms, operands)
                 if "..." in t] or [0])
    ell = "".join(chr(ord("Z") - k) for k in range(n_ell))[::-1]
    labels = []
    for t, x in zip(terms, operands):
        if "..." in t:
            k = P.ndim(x) - len(t.replace("...", ""))
            t = t.replace("...", ell[n_ell - k:])
        if len(t) != P.ndim(x) or not t.isalpha():
            raise TraceError(at(current_loc(), f"np.einsum: subscripts '{subscripts}' do not fit "
                                f"an operand of rank {P.ndim(x)}"))
        labels.append(t)
    if arrow:
        out = out_text.replace("...", ell)
    else:
        counts = {}
        for t in labels:
            for c in t:
                counts[c] = counts.get(c, 0) + 1
        out = ell + "".join(sorted(c for c, n in counts.items() if n == 1 and c not in ell))
    if len(set(out)) != len(out) or any(c not in "".join(labels) for c in out):
        raise TraceError(at(current_loc(), f"np.einsum: bad output subscripts in '{subscripts}'"))
    ops = [_einsum_diag(t, x) for t, x in zip(labels, operands)]
    cur_l, cur = ops[0]
    for k in range(1, len(ops)):
        nl, nx = ops[k]
        later = set(out) | {c for t, _ in ops[k + 1:] for c in t}
        keep = [c for c in dict.fromkeys(cur_l + nl) if c in later]
        cur = _einsum(cur_l, nl, out=keep, operands=[cur, nx])
        cur_l = "".join(keep)
    return _einsum_unary(cur_l, cur, out)


def _einsum_diag(t, x):
    """Labels without repeats: a repeated label takes the diagonal of those axes."""
    while len(set(t)) != len(t):
        c = next(c for c in t if t.count(c) > 1)
        i = t.index(c)
        j = t.index(c, i + 1)
        rest = [k for k in range(len(t)) if k not in (i, j)]
        x = P.transpose(x, [i, j] + rest)
        n = P.shape_of(x)[0]
        r = P.arange(Tracer(n) if not isinstance(n, int) else n)
        if not isinstance(r, Tracer):
            r = P.lift(r)
        x = P.gather(x, (r, r))
        t = c + "".join(t[k] for k in rest)
    return t, x


def _einsum_unary(t, x, out):
    """Sum the labels not in ``out`` and order the rest as ``out``."""
    gone = tuple(k for k, c in enumerate(t) if c not in out)
    if gone:
        x = P.reduce_sum(x, gone)
        t = "".join(c for c in t if c in out)
    return P.transpose(x, [t.index(c) for c in out]) if t != out else x


def _einsum(la, lb, out, operands):
    """Contract two operands with distinct labels each into labels ``out``."""
    a, b = operands
    (a, b), _ = P.promote(a, b)
    la, a = _einsum_diag(la, a)
    lb, b = _einsum_diag(lb, b)
    out = "".join(out)
    # labels of one operand only and not wanted: sum them first
    a_keep = set(lb) | set(out)
    b_keep = set(la) | set(out)
    a = _einsum_unary(la, a, "".join(c for c in la if c in a_keep))
    la = "".join(c for c in la if c in a_keep)
    b = _einsum_unary(lb, b, "".join(c for c in lb if c in b_keep))
    lb = "".join(c for c in lb if c in b_keep)
    batch = [c for c in la if c in lb and c in out]
    contr = [c for c in la if c in lb and c not in out]
    fa = [c for c in la if c not in lb]
    fb = [c for c in lb if c not in la]
    sizes = {}
    for lab, x in ((la, a), (lb, b)):
        for c, d in zip(lab, P.shape_of(x)):
            if c in sizes and not (isinstance(d, int) and d == 1):
                if isinstance(sizes[c], int) and sizes[c] == 1:
                    sizes[c] = d
                elif not P.same_dim(sizes[c], d):
                    if isinstance(d, int) and isinstance(sizes[c], int):
                        raise P.ShapeError(at(current_loc(), f"np.einsum: label '{c}' has sizes "
                                              f"{sizes[c]} and {d}"))
                    P.check_eq(sizes[c], d, at(current_loc(), f"np.einsum: label '{c}' has "
                                               "different sizes"))
            elif c not in sizes:
                sizes[c] = d
    def unit(x, lab, c):
        d = P.shape_of(x)[lab.index(c)]
        return isinstance(d, int) and d == 1
    if not batch and contr and isinstance(a, Tracer) and isinstance(b, Tracer) \
            and not any(unit(a, la, c) or unit(b, lb, c) for c in contr):
        # a matrix product: (free_a, contracted) @ (contracted, free_b)
        a2 = P.transpose(a, [la.index(c) for c in fa + contr])
        b2 = P.transpose(b, [lb.index(c) for c in contr + fb])
        sa, sb = P.shape_of(a2), P.shape_of(b2)
        m = P.size_of(a2, range(len(fa)))
        k = P.size_of(a2, range(len(fa), len(fa) + len(contr)))
        n = P.size_of(b2, range(len(contr), len(contr) + len(fb)))
        y = P.matmul(P.reshape(a2, (m, k)), P.reshape(b2, (k, n)))
        y = P.reshape(y, tuple(sa[:len(fa)]) + tuple(sb[len(contr):]))
        return _einsum_unary("".join(fa + fb), y, out)
    # otherwise a broadcast product summed over the contracted labels
    order = batch + fa + fb + contr
    def expand(x, lab):
        x = P.transpose(x, [lab.index(c) for c in order if c in lab])
        s = iter(P.shape_of(x))
        return P.reshape(x, tuple(next(s) if c in lab else 1 for c in order))
    y = P.mul(expand(a, la), expand(b, lb))
    return _einsum_unary("".join(order), y, out)


@implements(np.trace)
def trace(x, offset=0, axis1=0, axis2=1, dtype=None, out=None):
    _no_out(out)
    k = _static_int("np.trace", offset)
    if (axis1 % P.ndim(x), axis2 % P.ndim(x)) != (0, 1):
        x = P.transpose(x, [axis1 % P.ndim(x), axis2 % P.ndim(x)] + [
            a for a in range(P.ndim(x)) if a not in (axis1 % P.ndim(x), axis2 % P.ndim(x))])
    if P.ndim(x) == 2:
        y = P.reduce_sum(diag(x, k))
    else:  # the diagonal of the leading two axes, summed: a mask over them
        m, n = P.shape_of(x)[:2]
        on = P.eq(P.sub(_iota(n)[None, :], _iota(m)[:, None]), k)
        on = P.reshape(on, P.shape_of(on) + (1,) * (P.ndim(x) - 2))
        y = P.reduce_sum(P.select(on, x, 0), (0, 1))
    return P.astype(y, dtype) if dtype is not None else y


# --------------------------------------------------------------------------------------------
# Matrix structure and index reductions, composed of comparisons of aranges (their adjoints
# come from select's and gather's)
# --------------------------------------------------------------------------------------------


def _iota(n):
    """0, 1, ..., n-1 as a traced vector (``n`` an int or a size variable)."""
    r = P.arange(Tracer(n) if not isinstance(n, int) else n)
    return r if isinstance(r, Tracer) else P.lift(r)


def _static_int(name, k):
    if isinstance(k, Tracer) or not isinstance(k, (int, np.integer)):
        raise TraceError(at(current_loc(), f"{name}: k must be an integer known at compile time"))
    return int(k)


@implements(np.diag)
def diag(v, k=0):
    k = _static_int("np.diag", k)
    if k != 0:
        return _diag_offset(v, k)
    if P.ndim(v) == 1:
        i = _iota(P.shape_of(v)[0])
        return P.select(P.eq(i[:, None], i[None, :]), v[:, None], 0)
    if P.ndim(v) != 2:
        raise TraceError(at(current_loc(), "np.diag takes a vector or a matrix"))
    m, n = P.shape_of(v)
    if isinstance(m, int) and isinstance(n, int):
        size = min(m, n)
    else:
        size = m if P.same_dim(m, n) else P.minimum(Tracer(m) if not isinstance(m, int) else m,
                                                     Tracer(n) if not isinstance(n, int) else n)
    i = _iota(size) if not isinstance(size, Tracer) else P.arange(size)
    return P.gather(v, (i, i))


def _diag_offset(v, k):
    """np.diag(v, k) for k != 0: a vector placed on the k-th diagonal, or that diagonal read."""
    if P.ndim(v) == 1:
        n = P.shape_of(v)[0]
        big = n + abs(k) if isinstance(n, int) else P.add(Tracer(n), abs(k))
        i, j = _size_iota(big)[:, None], _size_iota(big)[None, :]
        last = n - 1 if isinstance(n, int) else P.sub(Tracer(n), 1)
        vals = P.gather(v, (P.minimum(P.minimum(i, j), last),))  # v[min(i, j)] on the diagonal
        return P.select(P.eq(P.sub(j, i), k), vals, 0)
    if P.ndim(v) != 2:
        raise TraceError(at(current_loc(), "np.diag takes a vector or a matrix"))
    m, n = (d if isinstance(d, int) else Tracer(d) for d in P.shape_of(v))
    r0, c0 = max(0, -k), max(0, k)
    size = P.maximum(P.minimum(P.sub(m, r0), P.sub(n, c0)), 0)
    i = _size_iota(size)
    return P.gather(v, (P.add(i, r0), P.add(i, c0)))


def _size_iota(n):
    """0, 1, ..., n-1 for a size given as an int or read from ``.shape`` (a traced size)."""
    return P.arange(n) if isinstance(n, Tracer) else _iota(int(n))


@implements(np.eye)
def eye(N, M=None, k=0, dtype=float, order="C"):
    k = _static_int("np.eye", k)
    i = _size_iota(N)[:, None]
    j = _size_iota(N if M is None else M)[None, :]
    return P.astype(P.eq(P.add(i, k) if k else i, j), np.dtype(dtype).name)


@implements(np.identity)
def identity(n, dtype=float):
    return eye(n, dtype=dtype)


@implements(np.diff)
def diff(a, n=1, axis=-1):
    n = _static_int("np.diff", n)
    (ax,) = P.norm_axes(axis, P.ndim(a))
    hi = tuple(slice(1, None) if k == ax else slice(None) for k in range(P.ndim(a)))
    lo = tuple(slice(None, -1) if k == ax else slice(None) for k in range(P.ndim(a)))
    for _ in range(n):
        a = P.sub(P.index(a, hi), P.index(a, lo))
    return a


def _band(x, k, name, upper):
    if P.ndim(x) < 2:
        raise TraceError(at(current_loc(), f"{name} takes an array of rank 2 or more"))
    k = _static_int(name, k)
    m, n = P.shape_of(x)[-2:]
    d = P.sub(_iota(n)[None, :], _iota(m)[:, None])  # column - row
    return P.select(P.ge(d, k) if upper else P.le(d, k), x, 0)


@implements(np.triu)
def triu(x, k=0):
    return _band(x, k, "np.triu", True)


@implements(np.tril)
def tril(x, k=0):
    return _band(x, k, "np.tril", False)


def _arg_reduce(x, axis, keepdims, red):
    """The first index of the maximum (minimum) along ``axis``: the smallest index where the
    value equals the reduction (an integer: no derivative flows through it)."""
    if axis is None:
        first = _arg_reduce(ravel(x), 0, False, red)
        return P.reshape(first, (1,) * P.ndim(x)) if keepdims else first
    (ax,) = P.norm_axes(axis, P.ndim(x))
    n = P.shape_of(x)[ax]
    i = P.reshape(_iota(n), (n,) + (1,) * (P.ndim(x) - ax - 1))
    # the first NaN where there is one (the max is then NaN, which nothing equals)
    hit = P.logical_or(P.eq(x, red(x, ax, keepdims=True)), isnan(x))
    return P.reduce_min(P.select(hit, i, Tracer(n) if not isinstance(n, int) else n), ax,
                        keepdims=keepdims)


@implements(np.argmax)
def argmax(x, axis=None, out=None, keepdims=False):
    _no_out(out)
    P.check_nonempty(x, axis, "attempt to get argmax of an empty sequence")
    return _arg_reduce(x, axis, keepdims, P.reduce_max)


@implements(np.argmin)
def argmin(x, axis=None, out=None, keepdims=False):
    _no_out(out)
    P.check_nonempty(x, axis, "attempt to get argmin of an empty sequence")
    return _arg_reduce(x, axis, keepdims, P.reduce_min)


@implements(np.linalg.matrix_power)
def matrix_power(a, n):
    n = _static_int("np.linalg.matrix_power", n)
    if P.ndim(a) != 2:
        raise TraceError(at(current_loc(), "np.linalg.matrix_power takes a square matrix"))
    if n < 0:
        a, n = P.inv(a), -n
    if n == 0:
        i = _iota(P.shape_of(a)[0])
        return P.select(P.eq(i[:, None], i[None, :]), P.cast(1, P.dtype_of(a)), 0)
    result, square = None, a
    while n:  # square and multiply
        if n & 1:
            result = square if result is None else P.matmul(result, square)
        n >>= 1
        if n:
            square = P.matmul(square, square)
    return result


SlogdetResult = collections.namedtuple("SlogdetResult", "sign logabsdet")


@implements(np.linalg.slogdet)
def slogdet(a):
    """From the determinant: exact in sign, and in logabsdet unless det itself under- or
    overflows (entries of very large or small scale in a large matrix)."""
    d = P.det(a)
    return SlogdetResult(P.sign(d), P.log(P.absolute(d)))


# --------------------------------------------------------------------------------------------
# Tracer methods and operators
# --------------------------------------------------------------------------------------------


def _method(fn):
    return lambda self, *a, **k: fn(self, *a, **k)


def _rev(op):
    return lambda self, other: op(other, self)


def _getitem(self, idx):
    return numpy_more.getitem(self, idx)  # (A[:, idx] and masks, then P.index)


def _setitem(self, idx, value):
    raise TraceError(at(current_loc(), "item assignment into an array inside a traced function "
                        "is not supported yet"))


def _reshape_method(self, *shape, order="C"):
    return reshape(self, *shape, order=order)


def _transpose_method(self, *axes):
    return transpose(self, *axes)


def _astype(self, dtype, **_):
    return P.astype(self, dtype)


# numpy's protocols: where Python itself runs code on tracers (a function with no source,
# frontend.py), ``np.sin(x)`` and ``np.sum(x)`` reach the same table as traced code does.

def _array_ufunc(self, ufunc, method, *args, **kwargs):
    impl = lookup(ufunc) if method == "__call__" else None
    if impl is None:
        what = ufunc.__name__ + ("" if method == "__call__" else "." + method)
        raise TraceError(at(current_loc(), f"np.{what}() is not supported on traced values"))
    return impl(*args, **kwargs)


def _array_function(self, func, types, args, kwargs):
    impl = lookup(func)
    if impl is None:
        raise TraceError(at(current_loc(), f"np.{getattr(func, '__name__', func)}() is not "
                            "supported on traced values"))
    return impl(*args, **kwargs)


METHODS = {
    "__add__": P.add, "__radd__": _rev(P.add), "__sub__": P.sub, "__rsub__": _rev(P.sub),
    "__mul__": P.mul, "__rmul__": _rev(P.mul), "__truediv__": P.div,
    "__rtruediv__": _rev(P.div), "__pow__": P.power, "__rpow__": _rev(P.power),
    "__matmul__": P.matmul, "__rmatmul__": _rev(P.matmul), "__mod__": P.mod,
    "__rmod__": _rev(P.mod), "__floordiv__": P.floor_divide,
    "__rfloordiv__": _rev(P.floor_divide), "__neg__": P.neg, "__pos__": lambda s: s,
    "__abs__": P.absolute, "__eq__": P.eq, "__ne__": P.ne, "__lt__": P.lt, "__le__": P.le,
    "__gt__": P.gt, "__ge__": P.ge, "__getitem__": _getitem, "__setitem__": _setitem,
    "__and__": P.logical_and, "__or__": P.logical_or, "__invert__": P.logical_not,
    "sum": _method(sum_), "mean": _method(mean), "max": _method(max_), "min": _method(min_),
    "prod": _method(prod), "var": _method(var), "std": _method(std), "dot": _method(dot),
    "reshape": _reshape_method, "transpose": _transpose_method, "ravel": _method(ravel),
    "flatten": _method(ravel), "squeeze": _method(squeeze), "astype": _astype,
    "clip": _method(clip), "copy": lambda self: self, "cumsum": _method(cumsum),
    "T": property(lambda self: P.transpose(self)),
}
install_methods(Tracer, METHODS)
install_methods(Tracer, {"__array_ufunc__": _array_ufunc, "__array_function__": _array_function})


def lookup(fn):
    """The tracer implementation of a numpy function, or None."""
    try:
        impl = FUNCTIONS.get(fn)
    except TypeError:  # unhashable callables
        return None
    if impl is None and not _SCIPY and "scipy.special" in sys.modules:
        from . import scipy_api  # scipy's functions: entered in the table on first use
        scipy_api.register()
        _SCIPY.append(True)
        return FUNCTIONS.get(fn)
    return impl


_SCIPY = []  # scipy.special registered

from . import numpy_more  # noqa: E402 - more entries of the table, built on the ones above


__all__ = ["FUNCTIONS", "METHODS", "lookup", "operator", "is_static_scalar"]
