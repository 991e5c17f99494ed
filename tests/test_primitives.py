"""Every differentiable numpy function and Tracer operator gradjit supports, from one table.

Each ``Op`` names a function of traced values, the argument shapes to try (templates whose
letters are sizes drawn by hypothesis), and a sampler per argument (its domain). For each
drawn case:

- the reference evaluator (``gradjit/compiler/reference.py``) on the traced IR gives numpy's
  values (the primitives' ``impl``s and shape rules agree with numpy);
- one compiled ``value_and_grad(has_aux=True)`` kernel of ``sum(fn(*args) * w)`` (a fixed
  random weight ``w`` so that every output element matters) returns numpy's forward values
  and a gradient equal to central finite differences along random directions;
- on failure the message says whether the reference evaluator of the differentiated graph
  agrees with finite differences (then the lowering is wrong, else an adjoint rule).

``test_jit_matches_numpy`` checks ``gj.jit(fn)`` once per op. The inventory tests check that
the table covers every entry of ``numpy_api.FUNCTIONS`` and ``METHODS`` and that every
primitive has an adjoint and a CPU lowering.

Array sizes are not part of a kernel's signature, so hypothesis varies them freely; ranks,
dtypes and unit axes are, so each template is one compile.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import warnings
from dataclasses import dataclass

import numpy as np
import pytest
import scipy.special as sps
from hypothesis import given, settings
from hypothesis import strategies as st

import gradjit as gj
from gradjit.compiler import numpy_api
from gradjit.compiler import primitives as P
from gradjit.compiler.codegen import cpu as cpu_codegen
from gradjit.compiler.codegen.schedule import LOOP_KINDS
from gradjit.testing import (
    assert_grads_close,
    check_grads,
    default_tolerance,
    numerical_directional,
    reference_outputs,
    reference_transform,
)

# =============================================================================================
# Domains: samplers (rng, shape, sizes) -> float64 or integer array
# =============================================================================================


def real(rng, shape, sizes):
    return rng.uniform(-2.0, 2.0, shape)


def unit01(rng, shape, sizes):
    return rng.uniform(0.1, 0.9, shape)


def small(rng, shape, sizes):
    return rng.uniform(-1.0, 1.0, shape)


def pos(rng, shape, sizes):
    return rng.uniform(0.5, 2.0, shape)


def unit(rng, shape, sizes):
    return rng.uniform(-0.9, 0.9, shape)


def gt1(rng, shape, sizes):
    return rng.uniform(1.2, 3.0, shape)


def gtm05(rng, shape, sizes):
    return rng.uniform(-0.5, 2.0, shape)


def nonzero(rng, shape, sizes):
    return rng.choice([-1.0, 1.0], shape) * rng.uniform(0.3, 2.0, shape)


def frac(rng, shape, sizes):
    """Away from integers and half-integers (floor, ceil, rint are flat there)."""
    return rng.integers(-3, 3, shape) + rng.choice([0.2, 0.3, 0.7, 0.8], shape) + \
        rng.uniform(-0.05, 0.05, shape)


def few(rng, shape, sizes):
    """Small integers as floats: comparisons see equal and unequal pairs."""
    return rng.integers(-1, 2, shape).astype(np.float64)


def with_zeros(rng, shape, sizes):
    x = rng.uniform(0.5, 1.5, shape)
    return np.where(rng.random(shape) < 0.25, 0.0, x)


def well_conditioned(rng, shape, sizes):
    n = shape[-1]
    return rng.uniform(-1.0, 1.0, shape) + n * np.eye(n)


def spd(rng, shape, sizes):
    n = shape[-1]
    b = rng.uniform(-1.0, 1.0, shape)
    return b @ b.T / n + np.eye(n)


def boolean(rng, shape, sizes):
    return rng.random(shape) < 0.5


def index_into(letter, negative=False):
    """Integer indices valid for an axis of size ``letter``."""
    def sample(rng, shape, sizes):
        n = sizes[letter]
        return rng.integers(-n if negative else 0, n, shape)
    return sample


def index_scalar(letter):
    def sample(rng, shape, sizes):
        return np.asarray(rng.integers(-sizes[letter], sizes[letter]))
    return sample


def mod_pair(rng, shape, sizes):
    """(x, y) for mod/floor_divide away from the jumps: x / y is never near an integer."""
    return nonzero(rng, shape, sizes)


def mod_num(rng, shape, sizes):
    return rng.integers(-3, 3, shape) + rng.uniform(0.2, 0.8, shape)


# =============================================================================================
# The table
# =============================================================================================


@dataclass(frozen=True, eq=False)
class Op:
    name: str
    fn: object
    shapes: tuple  # templates: one tuple of dims (ints, letters, "2a") per argument
    domains: tuple = ()  # one sampler per argument (default: real)
    covers: tuple = ()  # numpy functions / Tracer method names this op exercises
    f32: object = False  # also float32: True (the last template) or the float32 templates
    jit: bool = False  # also checked through gj.jit (one op per family)
    order2: bool = False  # also second derivatives (check_grads(order=2))
    ref: bool = False  # gradients by the reference evaluator of the differentiated IR, not
    # compiled (for aliases and variants whose primitives other ops compile: each compile
    # costs ~0.5 s)
    rtol: float = 1.0  # multiplies the default tolerances
    eps: float = 1e-5
    xfail: str = None  # a known bug outside this table (strict xfail with this reason) ...
    xfail_in: tuple = ("float64", "float32", "jit", "order2")  # ... in these tests

    def __repr__(self):
        return self.name


OPS = []


def op(name, fn, shapes, domains=(), covers=(), **kw):
    if any(o.name == name for o in OPS):  # numpy aliases (np.true_divide is np.divide)
        return None
    o = Op(name, fn, tuple(shapes), tuple(domains), tuple(covers), **kw)
    OPS.append(o)
    return o


# Shape templates.
U1 = [((),), (("a",),), (("a", "b"),)]
B2 = [(("a", 1), (1, "b")), ((), ("a",)), (("a", "b"), ("b",))]  # broadcasting, 0-d
B2_A = [(("a", "b"), ("b",))]
B2_B = [((), ("a",))]
B2_C = [(("a",), ("a",))]
B2_D = [(("a",), ())]
B2_SMALL = B2_A
V = [(("a",),)]
M = [(("a", "b"),)]
T3 = [(("a", "b", "c"),)]


def _u(f):
    return lambda x: f(x)


def _b(f):
    return lambda x, y: f(x, y)


# ---- elementwise unary: numpy functions ----------------------------------------------------

for _k, (_f, _dom) in enumerate([
    (np.sin, real), (np.cos, real), (np.tan, small), (np.exp, real), (np.expm1, real),
    (np.log, pos), (np.log1p, gtm05), (np.sqrt, pos), (np.tanh, real), (np.sinh, real),
    (np.cosh, real), (np.arcsin, unit), (np.arccos, unit), (np.arctan, real),
    (np.arcsinh, real), (np.arccosh, gt1), (np.arctanh, unit), (np.abs, nonzero),
    (np.absolute, nonzero), (np.fabs, nonzero), (np.sign, nonzero), (np.floor, frac),
    (np.ceil, frac), (np.rint, frac), (np.round, frac), (np.negative, real), (np.square, real),
    (np.reciprocal, nonzero), (np.positive, real), (np.log2, pos), (np.log10, pos),
    (np.exp2, real), (np.cbrt, nonzero), (np.sinc, real),
]):
    # one rank per op, cycling through 0-d, 1-d and 2-d (each rank is a compile)
    op(_f.__name__, _u(_f), [U1[_k % 3]], (_dom,), (_f,),
       f32=_f in (np.sin, np.exp, np.log, np.sqrt, np.tanh, np.arctan, np.abs, np.cbrt),
       jit=_f in (np.sin, np.log1p, np.arccos, np.sign, np.floor, np.reciprocal),
       order2=_f in (np.sin, np.log, np.sqrt, np.tanh, np.arcsin, np.abs))

op("logical_not", lambda x: np.where(np.logical_not(x > 0), x, -x), M, (nonzero,),
   (np.logical_not,))

# ---- elementwise unary: operators and methods -------------------------------------------

op("__neg__", lambda x: -x, V, covers=("__neg__",), jit=True)
op("__pos__", lambda x: +x, V, covers=("__pos__",))
op("__abs__", lambda x: abs(x), V, (nonzero,), ("__abs__",), jit=True)
op("__invert__", lambda x: np.where(~(x > 0), x, 2 * x), V, (nonzero,), ("__invert__",))
op("copy", lambda x: x.copy() * 2, V, covers=("copy",))
op("astype_f32", lambda x: x.astype(np.float32) * 2, V, covers=("astype",), rtol=100, eps=1e-3,
   jit=True)
op("astype_int", lambda x: x.astype(np.int64), V, (frac,), ("astype",))
op("astype_roundtrip", lambda x: x * x.astype(np.float32).astype(np.float64), V, rtol=100,
   eps=1e-3)

# ---- powers ------------------------------------------------------------------------------

op("pow_2", lambda x: x ** 2, [((),), (("a", "b"),)], covers=("__pow__",), f32=True)
op("pow_3", lambda x: x ** 3, V)
op("pow_half", lambda x: x ** 0.5, V, (pos,))
op("pow_m1", lambda x: x ** -1, V, (nonzero,))
op("pow_0", lambda x: x ** 0 + x, V)
op("pow_xy", lambda x, y: x ** y, B2, (pos, real), f32=True, jit=True, order2=True)
op("np_power", _b(np.power), B2_A, (pos, real), (np.power,))
op("np_power_int", lambda x: np.power(x, 3), M, covers=(np.power,))
op("__rpow__", lambda x: 2.0 ** x, V, covers=("__rpow__",))

# ---- elementwise binary: numpy functions ---------------------------------------------------

for _f, _doms, _tmpl in [
    (np.add, (real, real), B2), (np.subtract, (real, real), B2_C),
    (np.multiply, (real, real), B2), (np.divide, (real, nonzero), B2),
    (np.true_divide, (real, nonzero), B2_A), (np.maximum, (real, real), B2),
    (np.minimum, (real, real), B2_D), (np.fmax, (real, real), B2_A),
    (np.fmin, (real, real), B2_A), (np.arctan2, (real, nonzero), B2),
    (np.mod, (mod_num, mod_pair), B2), (np.remainder, (mod_num, mod_pair), B2_A),
    (np.floor_divide, (mod_num, mod_pair), B2_B), (np.hypot, (nonzero, nonzero), B2_A),
    (np.logaddexp, (real, real), B2_B),
    (np.equal, (few, few), B2_A), (np.not_equal, (few, few), B2_B),
    (np.less, (real, real), B2_A), (np.less_equal, (real, real), B2_C),
    (np.greater, (real, real), B2_A), (np.greater_equal, (real, real), B2_D),
]:
    op(_f.__name__, _b(_f), _tmpl, _doms, (_f,),
       f32=_f in (np.add, np.multiply, np.divide, np.maximum, np.arctan2, np.hypot,
                  np.logaddexp),
       jit=_f in (np.add, np.divide, np.maximum, np.mod, np.equal),
       order2=_f in (np.divide, np.arctan2, np.maximum))

op("logical_and", lambda x, y: np.where(np.logical_and(x > 0, y > 0), x, y), B2_A,
   (nonzero, nonzero), (np.logical_and,))
op("logical_or", lambda x, y: np.where(np.logical_or(x > 0, y > 0), x, y), B2_A,
   (nonzero, nonzero), (np.logical_or,))

# ---- elementwise binary: operators ----------------------------------------------------------

op("__add__", lambda x, y: x + y, B2_A, covers=("__add__",))
op("__sub__", lambda x, y: x - y, B2_B, covers=("__sub__",))
op("__mul__", lambda x, y: x * y, B2_C, covers=("__mul__",))
op("__truediv__", lambda x, y: x / y, B2_A, (real, nonzero), ("__truediv__",))
op("__mod__", lambda x, y: x % y, B2_A, (mod_num, mod_pair), ("__mod__",))
op("__floordiv__", lambda x, y: x // y, B2_A, (mod_num, mod_pair), ("__floordiv__",))
op("__radd__", lambda x: 2.0 + x, V, covers=("__radd__",))
op("__rsub__", lambda x: 2.0 - x, V, covers=("__rsub__",))
op("__rmul__", lambda x: 3.0 * x, V, covers=("__rmul__",))
op("__rtruediv__", lambda x: 2.0 / x, V, (nonzero,), ("__rtruediv__",))
op("__rmod__", lambda x: 5.5 % x, V, (pos,), ("__rmod__",))
op("__rfloordiv__", lambda x: 5.5 // x + x, V, (pos,), ("__rfloordiv__",))
op("int_times_float", lambda x, n: x * n, [(("a",), ("a",))], (real, index_into("a")),)
op("__eq__", lambda x, y: x == y, B2_A, (few, few), ("__eq__",))
op("__ne__", lambda x, y: x != y, B2_A, (few, few), ("__ne__",))
op("__lt__", lambda x, y: np.where(x < y, x, y), B2_A, covers=("__lt__",))
op("__le__", lambda x, y: np.where(x <= y, x * y, y), B2_A, covers=("__le__",))
op("__gt__", lambda x, y: np.where(x > y, x, 2 * y), B2_A, covers=("__gt__",))
op("__ge__", lambda x, y: np.where(x >= y, x, y * y), B2_A, covers=("__ge__",))
op("__and__", lambda x, y: np.where((x > 0) & (y > 0), x, y), B2_A, (nonzero, nonzero),
   ("__and__",))
op("__or__", lambda x, y: np.where((x > 0) | (y > 0), x, y), B2_A, (nonzero, nonzero),
   ("__or__",))

# ---- where, clip --------------------------------------------------------------------------

op("where", lambda x, y: np.where(x > 0, x, y), B2, (nonzero, real), (np.where,), f32=True,
   jit=True, order2=True)
op("where_bool_arg", lambda c, x, y: np.where(c, x, y), [(("a", "b"), ("a", "b"), ("b",))],
   (boolean, real, real), (np.where,))
op("where_scalar", lambda x: np.where(x > 0, x, 0.0), V, (nonzero,), (np.where,))
op("clip", lambda x: np.clip(x, -0.5, 0.8), M, covers=(np.clip,), f32=True, jit=True)
op("clip_traced", lambda x, lo: np.clip(x, lo, lo + 1.0), [(("a",), ())], covers=(np.clip,))
op("clip_max_only", lambda x: np.clip(x, None, 0.5), V, covers=(np.clip,))
op("clip_method", lambda x: x.clip(-0.5, 0.5), V, covers=("clip",))
op("relu", lambda x: np.maximum(x, 0.0), M, (nonzero,), (np.maximum,))

# ---- reductions ---------------------------------------------------------------------------

_REDUCTION_VARIANTS = [  # (axis, keepdims, templates)
    (None, False, [(("a", "b"),)]),
    (0, False, M),
    (-1, True, T3),
    ((0, 2), False, T3),
    ((-1, -2), True, M),
    (None, True, V),
]


def _reduction(f, axis, keepdims):
    return lambda x: f(x, axis=axis, keepdims=keepdims)


# two variants per function, all variants covered
for _k, (_f, _dom) in enumerate([(np.sum, real), (np.mean, real), (np.max, real),
                                 (np.min, real), (np.prod, pos), (np.var, real), (np.std, real)]):
    for _j in (_k % 6, (_k + 3) % 6):
        _axis, _kd, _tmpl = _REDUCTION_VARIANTS[_j]
        op(f"{_f.__name__}[axis={_axis},keepdims={_kd}]", _reduction(_f, _axis, _kd), _tmpl,
           (_dom,), (_f,), f32=_j == _k % 6, jit=_j == 4 and _k < 3,
           order2=_j == 0 and _k < 2, ref=_j != _k % 6)
op("nanmax", lambda x: np.nanmax(x, axis=1), M, covers=(np.nanmax,), f32=True, jit=True)
op("nanmin", lambda x: np.nanmin(x), V, covers=(np.nanmin,))
op("nansum", lambda x: np.nansum(x, axis=0, keepdims=True), M, covers=(np.nansum,))
op("nanmean", lambda x: np.nanmean(x, axis=-1), T3, covers=(np.nanmean,), jit=True)
op("isnan_isinf_isfinite", lambda x: np.where(np.isnan(x) | np.isinf(x), 0.0, x) * np.isfinite(x),
   V, covers=(np.isnan, np.isinf, np.isfinite))
op("amax", lambda x: np.amax(x, axis=0), M, covers=(np.amax,))
op("amin", lambda x: np.amin(x, axis=1), M, covers=(np.amin,))
op("sum_0d", lambda x: np.sum(x), [((),)], covers=(np.sum,))
op("prod_with_zeros", lambda x: np.prod(x, axis=1), M, (with_zeros,), (np.prod,))
op("prod_with_zeros_all", lambda x: np.prod(x), V, (with_zeros,), (np.prod,))
op("var_ddof", lambda x: np.var(x, axis=1, ddof=1), M, covers=(np.var,))
op("std_ddof", lambda x: np.std(x, ddof=1), V, covers=(np.std,))
op("sum_method", lambda x: x.sum(axis=1), M, covers=("sum",))
op("mean_method", lambda x: x.mean(0), M, covers=("mean",))
op("max_method", lambda x: x.max(axis=-1, keepdims=True), M, covers=("max",))
op("min_method", lambda x: x.min(), M, covers=("min",))
op("prod_method", lambda x: x.prod(axis=0), M, (pos,), ("prod",))
op("var_method", lambda x: x.var(ddof=1), V, covers=("var",))
op("std_method", lambda x: x.std(axis=0), M, covers=("std",))
op("logsumexp", lambda x: np.log(np.sum(np.exp(x - np.max(x, axis=1, keepdims=True)), axis=1)),
   M, covers=(np.max, np.exp, np.log, np.sum), f32=True, order2=True)

# ---- cumsum -------------------------------------------------------------------------------

op("cumsum", lambda x: np.cumsum(x), M, covers=(np.cumsum,), f32=True, jit=True, order2=True)
op("cumsum_axis0", lambda x: np.cumsum(x, axis=0), M, covers=(np.cumsum,))
op("cumsum_axis_neg", lambda x: np.cumsum(x, axis=-1), T3, covers=(np.cumsum,))
op("cumsum_axis1_of3", lambda x: np.cumsum(x, axis=1), T3, covers=(np.cumsum,))
op("cumsum_0d", lambda x: np.cumsum(x), [((),)], covers=(np.cumsum,))
op("cumsum_method", lambda x: x.cumsum(1), M, covers=("cumsum",))
op("cumsum_int", lambda x, n: x * np.cumsum(n), [(("a",), ("a",))], (real, index_into("a")),
   (np.cumsum,))

# ---- shapes and data movement --------------------------------------------------------------

op("reshape_flat", lambda x: np.reshape(x, (-1,)), M, covers=(np.reshape,), jit=True)
op("reshape_method", lambda x: x.reshape(x.shape[1], -1), M, covers=("reshape",))
op("reshape_split_axis", lambda x: x.reshape(x.shape[0], 2, 3), [(("a", 6),)],
   covers=("reshape",))
op("reshape_tuple", lambda x: x.reshape((-1, 1)), V, covers=("reshape",))
op("reshape_0d", lambda x: np.reshape(x, (1, 1)), [((),)], covers=(np.reshape,))
op("ravel", lambda x: np.ravel(x), M, covers=(np.ravel,))
op("ravel_method", lambda x: x.ravel(), T3, covers=("ravel",))
op("flatten", lambda x: x.flatten(), M, covers=("flatten",))
op("transpose", lambda x: np.transpose(x), M, covers=(np.transpose,), f32=True, jit=True)
op("transpose_axes", lambda x: np.transpose(x, (2, 0, 1)), T3, covers=(np.transpose,))
op("transpose_method", lambda x: x.transpose(1, 0, 2), T3, covers=("transpose",))
op("T", lambda x: x.T, M, covers=("T",))
op("T_3d", lambda x: x.T * 2, T3, covers=("T",))
op("swapaxes", lambda x: np.swapaxes(x, 0, 2), T3, covers=(np.swapaxes,))
op("moveaxis", lambda x: np.moveaxis(x, 0, -1), T3, covers=(np.moveaxis,))
op("expand_dims_0", lambda x: np.expand_dims(x, 0), M, covers=(np.expand_dims,))
op("expand_dims_neg", lambda x: np.expand_dims(x, -1) * x[:, None, :], M,
   covers=(np.expand_dims,))
op("expand_dims_tuple", lambda x: np.expand_dims(x, (0, 2)), V, covers=(np.expand_dims,))
op("squeeze_all", lambda x: np.squeeze(x), [(("a", 1, "b"),)], covers=(np.squeeze,))
op("squeeze_axis", lambda x: np.squeeze(x, axis=1), [(("a", 1, "b"),)], covers=(np.squeeze,))
op("squeeze_method", lambda x: x.squeeze(0), [((1, "a"),)], covers=("squeeze",))
op("broadcast_to", lambda x: np.broadcast_to(x, (3,) + x.shape), M, covers=(np.broadcast_to,),
   jit=True)
op("broadcast_to_unit", lambda x: np.broadcast_to(x, (x.shape[0], 4)), [(("a", 1),)],
   covers=(np.broadcast_to,))
op("concatenate", lambda x, y: np.concatenate([x, y]), [(("a",), ("b",))],
   covers=(np.concatenate,), f32=True, jit=True)
op("concatenate_axis1", lambda x, y: np.concatenate([x, y], axis=1), [(("a", "b"), ("a", "c"))],
   covers=(np.concatenate,))
op("concatenate_three", lambda x, y: np.concatenate((x, y, x), axis=-1),
   [(("a", "b"), ("a", "c"))], covers=(np.concatenate,))
op("hstack", lambda x, y: np.hstack([x, y]), [(("a", "b"), ("a", "c"))], covers=(np.hstack,))
op("vstack", lambda x, y: np.vstack([x, y]), [(("a",), ("a",))], covers=(np.vstack,))
op("stack", lambda x, y: np.stack([x, y]), [(("a", "b"), ("a", "b"))], covers=(np.stack,),
   jit=True)
op("stack_last", lambda x, y: np.stack([x, y], axis=-1), [(("a",), ("a",))], covers=(np.stack,))
op("stack_0d", lambda x, y: np.stack((x, y, x)), [((), ())], covers=(np.stack,))
op("array_of_scalars", lambda x: np.array([x[0], x[1] * 2.0, 3.0]), V, covers=(np.array,),
   jit=True)
op("array_nested", lambda x: np.array([[x[0], x[1]], [x[1], x[0] * x[1]]]), V, covers=(np.array,))
op("asarray", lambda x: np.asarray(x) * 2, V, covers=(np.asarray,))
op("asanyarray", lambda x: np.asanyarray(x) + 1, V, covers=(np.asanyarray,))
op("split_sections", lambda x: np.concatenate(np.split(x, 3)[::-1]), [(("3a",),)],
   covers=(np.split,))
op("split_indices", lambda x: np.split(x, [1, 3])[1] * 2, [(("a",),)], covers=(np.split,))
op("split_axis1", lambda x: np.split(x, 2, axis=1)[0] - np.split(x, 2, axis=1)[1],
   [(("a", "2b"),)], covers=(np.split,))
op("flip", lambda x: np.flip(x), M, covers=(np.flip,), jit=True)
op("flip_axis", lambda x: np.flip(x, 0), M, covers=(np.flip,))
op("flip_axes", lambda x: np.flip(x, axis=(0, 1)) * x, M, covers=(np.flip,))
op("roll", lambda x: np.roll(x, 1), V, covers=(np.roll,))
op("roll_axis", lambda x: np.roll(x, -2, axis=1), M, covers=(np.roll,))
op("roll_flat", lambda x: np.roll(x, 2), M, covers=(np.roll,))
op("trace", lambda x: np.trace(x), [(("a", "a"),)], covers=(np.trace,), jit=True)
op("norm", lambda x: np.linalg.norm(x), V, (nonzero,), (np.linalg.norm,), f32=True, jit=True,
   order2=True)
op("norm_axis", lambda x: np.linalg.norm(x, axis=1), M, (nonzero,), (np.linalg.norm,))
op("norm_keepdims", lambda x: np.linalg.norm(x, axis=0, keepdims=True), M, (nonzero,),
   (np.linalg.norm,))
op("norm_ord1", lambda x: np.linalg.norm(x, ord=1), V, (nonzero,), (np.linalg.norm,))
op("norm_fro", lambda x: np.linalg.norm(x, "fro"), M, (nonzero,), (np.linalg.norm,))

# ---- indexing -----------------------------------------------------------------------------

op("index_int", lambda x: x[1], M, covers=("__getitem__",), f32=True, jit=True)
op("index_negative", lambda x: x[-1], T3, covers=("__getitem__",))
op("index_slice_step", lambda x: x[1::2], V, covers=("__getitem__",))
op("index_reverse", lambda x: x[::-1], M, covers=("__getitem__",))
op("index_negative_step", lambda x: x[::-2, 1:], M, covers=("__getitem__",))
op("index_tail", lambda x: x[-3:] * x[:3], [(("a",),)], covers=("__getitem__",))
op("index_column", lambda x: x[:, 1], M, covers=("__getitem__",))
op("index_tuple", lambda x: x[1, :-1], M, covers=("__getitem__",))
op("index_ellipsis", lambda x: x[..., 0], T3, covers=("__getitem__",), jit=True)
op("index_ellipsis_mid", lambda x: x[1, ..., None], T3, covers=("__getitem__",))
op("index_newaxis", lambda x: x[None, :, 1], M, covers=("__getitem__",))
op("index_newaxis_outer", lambda x: x[:, np.newaxis] * x[np.newaxis, :], V,
   covers=("__getitem__",))
op("index_empty_tuple", lambda x: x[()] * 2, V, covers=("__getitem__",))
op("index_traced_int", lambda x, i: x[i], [(("a", "b"), ())], (real, index_scalar("a")),
   ("__getitem__",), jit=True)
op("index_traced_slice", lambda x, i: x[i:] * 2, [(("a",), ())], (real, index_scalar("a")),
   ("__getitem__",))
op("gather_rows", lambda x, y: x[np.arange(x.shape[0]), y], [(("a", "b"), ("a",))],
   (real, index_into("b")), ("__getitem__",), f32=True, jit=True, order2=True)
op("gather_array", lambda x, i: x[i], [(("a", "b"), ("c",))], (real, index_into("a")),
   ("__getitem__",), jit=True)
op("gather_negative", lambda x, i: x[i], [(("a",), ("c",))], (real, index_into("a", True)),
   ("__getitem__",))
op("gather_2d_index", lambda x, i: x[i] * 2, [(("a",), ("b", "c"))], (real, index_into("a")),
   ("__getitem__",))
op("softmax_xent", lambda z, y: -np.mean((z - np.log(np.sum(np.exp(z), axis=1, keepdims=True)))
                                         [np.arange(z.shape[0]), y]),
   [(("a", "b"), ("a",))], (real, index_into("b")), ("__getitem__",), order2=True)

# ---- creation -----------------------------------------------------------------------------

op("zeros_like", lambda x: np.zeros_like(x) + x, V, covers=(np.zeros_like,))
op("ones_like", lambda x: np.ones_like(x) * x, M, covers=(np.ones_like,))
op("full_like", lambda x: np.full_like(x, 2.0) * x, V, covers=(np.full_like,))
op("zeros", lambda x: np.zeros((x.shape[0], 2)) + x[:, None], V, covers=(np.zeros,), jit=True)
op("ones", lambda x: np.ones(x.shape) * x, M, covers=(np.ones,))
op("full", lambda x: np.full(x.shape, 3.0) * x, V, covers=(np.full,))
op("zeros_static", lambda x: x + np.zeros(4), [((4,),)], covers=(np.zeros,))
op("arange", lambda x: x * np.arange(x.shape[0]), V, covers=(np.arange,), jit=True)
op("arange_static", lambda x: x * np.arange(4.0), [((4,),)], covers=(np.arange,))
op("arange_float", lambda x: x * np.arange(x.shape[0], dtype=np.float64), V,
   covers=(np.arange,))

# ---- products -----------------------------------------------------------------------------

MM = [(("a", "b"), ("b", "c")), (("a", "b"), ("b",)), (("b",), ("b", "c")), (("b",), ("b",))]
op("matmul", _b(np.matmul), MM, covers=(np.matmul,), f32=[MM[0]], jit=True, order2=True)
op("__matmul__", lambda x, y: x @ y, MM[1:2], covers=("__matmul__",))
op("__rmatmul__", lambda x, y: y.__rmatmul__(x), MM[:1], covers=("__rmatmul__",))
op("dot", _b(np.dot), [MM[0], ((), ("a",))], covers=(np.dot,))
op("dot_method", lambda x, y: x.dot(y), MM[2:3], covers=("dot",))
op("outer", _b(np.outer), [(("a",), ("b",)), (("a", "b"), ("c",))], covers=(np.outer,), jit=True)
op("inner", _b(np.inner), [(("a", "b"), ("c", "b"))], covers=(np.inner,))
op("vdot", _b(np.vdot), [(("a", "b"), ("a", "b"))], covers=(np.vdot,))
BMM = [(("c", "a", "b"), ("c", "b", "d")), (("b",), ("c", "b", "d")),
       (("c", 1, "a", "b"), ("d", "b", "a"))]
op("matmul_batched", lambda x, y: x @ y, BMM, covers=(np.matmul,), f32=[BMM[0]], jit=True)
op("einsum_matmul", lambda x, y: np.einsum("ij,jk->ik", x, y), MM[:1], covers=(np.einsum,),
   f32=True, jit=True)
op("einsum_batched", lambda x, y: np.einsum("bij,bjk->bik", x, y),
   [(("c", "a", "b"), ("c", "b", "d"))], covers=(np.einsum,))
op("einsum_ellipsis", lambda x, y: np.einsum("...ij,...jk->...ik", x, y),
   [(("c", "a", "b"), ("b", "d"))], covers=(np.einsum,))
op("einsum_matvec", lambda x, y: np.einsum("ij,j", x, y), MM[1:2], covers=(np.einsum,))
op("einsum_dot", lambda x, y: np.einsum("i,i->", x, y), MM[3:4], covers=(np.einsum,))
op("einsum_outer", lambda x, y: np.einsum("i,j->ij", x, y), [(("a",), ("b",))],
   covers=(np.einsum,))
op("einsum_trace", lambda x: np.einsum("ii", x), [(("a", "a"),)], covers=(np.einsum,), jit=True)
op("einsum_diag", lambda x: np.einsum("ii->i", x), [(("a", "a"),)], covers=(np.einsum,))
op("einsum_transpose", lambda x: np.einsum("ijk->kij", x), T3, covers=(np.einsum,))
op("einsum_sum", lambda x: np.einsum("ij->j", x), M, covers=(np.einsum,))
op("einsum_implicit", lambda x, y: np.einsum("ij,jk", x, y), MM[:1], covers=(np.einsum,))
op("einsum_elementwise", lambda x, y: np.einsum("ij,ij->ij", x, y), [(("a", "b"), ("a", "b"))],
   covers=(np.einsum,))
op("einsum_three", lambda x, y, z: np.einsum("ij,jk,k->i", x, y, z),
   [(("a", "b"), ("b", "c"), ("c",))], covers=(np.einsum,))
op("tensordot_2", lambda x, y: np.tensordot(x, y), [(("a", "b", "c"), ("b", "c", "d"))],
   covers=(np.tensordot,), f32=True, jit=True)
op("tensordot_1", lambda x, y: np.tensordot(x, y, axes=1), MM[:1], covers=(np.tensordot,))
op("tensordot_0", lambda x, y: np.tensordot(x, y, axes=0), [(("a",), ("b",))],
   covers=(np.tensordot,))
op("tensordot_lists", lambda x, y: np.tensordot(x, y, axes=([0, 2], [2, 0])),
   [(("a", "b", "c"), ("c", "d", "a"))], covers=(np.tensordot,))

# ---- linear algebra -----------------------------------------------------------------------

SQ = [(("a", "a"),)]
op("det", lambda a: np.linalg.det(a), SQ, (well_conditioned,), (np.linalg.det,), f32=True,
   rtol=10, jit=True, order2=True)
op("inv", lambda a: np.linalg.inv(a), SQ, (well_conditioned,), (np.linalg.inv,), f32=True,
   rtol=10, jit=True, order2=True)
op("solve_vec", lambda a, b: np.linalg.solve(a, b), [(("a", "a"), ("a",))],
   (well_conditioned, real), (np.linalg.solve,), f32=True, rtol=10, jit=True, order2=True)
op("solve_mat", lambda a, b: np.linalg.solve(a, b), [(("a", "a"), ("a", "b"))],
   (well_conditioned, real), (np.linalg.solve,), rtol=10)
op("logdet_like", lambda a: np.log(np.abs(np.linalg.det(a))) + np.sum(np.linalg.inv(a)), SQ,
   (well_conditioned,), (np.linalg.det, np.linalg.inv), rtol=10)
op("slogdet", lambda a: np.linalg.slogdet(a).logabsdet * np.linalg.slogdet(a)[0], SQ,
   (well_conditioned,), (np.linalg.slogdet,), rtol=10, jit=True)
op("matrix_power", lambda a: np.linalg.matrix_power(a, 3), SQ, (well_conditioned,),
   (np.linalg.matrix_power,), rtol=10, jit=True)
op("matrix_power_neg", lambda a: np.linalg.matrix_power(a, -2) + np.linalg.matrix_power(a, 0),
   SQ, (well_conditioned,), (np.linalg.matrix_power,), rtol=10)
op("cholesky", lambda a: np.linalg.cholesky(a), SQ, (spd,), (np.linalg.cholesky,), rtol=10,
   jit=True, order2=True)
op("gaussian_log_density",
   lambda a, x: -0.5 * np.sum(np.linalg.solve(np.linalg.cholesky(a), x) ** 2)
   - np.sum(np.log(np.diag(np.linalg.cholesky(a)))),
   [(("a", "a"), ("a",))], (spd, real), (np.linalg.cholesky,), rtol=10)
op("solve_built_rhs", lambda a: np.linalg.solve(a[:3, :3], np.array([1.0, -2.0, 0.5])),
   [((3, 3),)], (well_conditioned,), (np.linalg.solve,), rtol=10)

# ---- matrix structure and index reductions (comparisons of aranges) --------------------------

op("diag_of_matrix", lambda x: np.diag(x), M, covers=(np.diag,), jit=True)
op("diag_of_square", lambda x: np.diag(x), SQ, covers=(np.diag,))
op("diag_of_vector", lambda x: np.diag(x), V, covers=(np.diag,))
op("triu", lambda x: np.triu(x, 1), M, covers=(np.triu,), jit=True)
op("tril", lambda x: np.tril(x, -1), T3, covers=(np.tril,))
op("argmax_row", lambda x: x[np.argmax(x[:, 0])], M, covers=(np.argmax,), jit=True)
op("argmin_axis", lambda x: x * np.argmin(x, axis=1, keepdims=True), M, covers=(np.argmin,))
op("argmax_flat", lambda x: x * np.argmax(x), T3, covers=(np.argmax,))

# ---- composites (derived functions and fusion) ----------------------------------------------

op("softplus", lambda x: np.logaddexp(0.0, x), V, covers=(np.logaddexp,))
op("sigmoid", lambda x: 1.0 / (1.0 + np.exp(-x)), M, f32=True)
op("poly", lambda x: x ** 2 + x ** 3 + 5, [((),), (("a",),)])
op("sin_exp", lambda x: np.sin(x) * np.exp(-x * x), V)
op("standardize", lambda x: (x - x.mean(axis=0)) / x.std(axis=0), M, order2=True)

# Checked through the reference evaluator only: aliases, operators and methods that reach the
# same op functions as a compiled entry above, and variants of a compiled op.
# ---- real code: shape-sized constructors, np.diff, constant index arrays, scipy.special ----

op("eye_shape", lambda x: x @ (np.eye(x.shape[1]) * 2.0 + x[0, 0]), M, covers=(np.eye,),
   jit=True)
op("eye_offset", lambda x: x * np.eye(x.shape[0], x.shape[1], k=1), M, covers=(np.eye,))
op("identity_size", lambda x: x @ np.identity(x.shape[1]), M, covers=(np.identity,))
op("diff", lambda x: np.diff(x), V, covers=(np.diff,), jit=True)
op("diff_2_axis0", lambda x: np.diff(x, n=2, axis=0), M, covers=(np.diff,))
op("gather_const_index", lambda x: x[np.arange(2)] + x[[0, 2, 2]].sum(), [((4,),)],
   covers=("__getitem__",))
op("gather_const_labels", lambda x: x[np.arange(3), np.array([0, -1, 0])],
   [((3, "a"),)], covers=("__getitem__",))
op("erf", lambda x: sps.erf(x), V, covers=(sps.erf,), f32=True, order2=True)
op("erfc", lambda x: sps.erfc(x), V, covers=(sps.erfc,))
op("gammaln", lambda x: sps.gammaln(x), V, (pos,), (sps.gammaln,), order2=True)
op("digamma", lambda x: sps.digamma(x), V, (pos,), (sps.digamma, sps.psi))
op("expit", lambda x: sps.expit(x), M, covers=(sps.expit,), jit=True)
op("logit", lambda x: sps.logit(x), V, (unit01,), (sps.logit,))
op("logsumexp", lambda x: sps.logsumexp(x), M, covers=(sps.logsumexp,), order2=True)
op("logsumexp_axis_b", lambda x: sps.logsumexp(x, axis=1, b=x[0] ** 2 + 0.5, keepdims=True),
   M, covers=(sps.logsumexp,))
op("softmax", lambda x: sps.softmax(x, axis=1), M, covers=(sps.softmax,))
op("log_softmax", lambda x: sps.log_softmax(x, axis=-1), M, covers=(sps.log_softmax,))
op("xlogy", lambda x, y: sps.xlogy(x, y), B2_C, (with_zeros, pos), (sps.xlogy,))
op("xlog1py", lambda x, y: sps.xlog1py(x, y), B2_C, (with_zeros, pos), (sps.xlog1py,))

def nonempty_real(rng, shape, sizes):  # not made empty by test_special_values: numpy's
    # empty-input behaviours (np.median's NaN, np.diag's zeros) are not followed
    return real(rng, shape, sizes)


def nonempty_nonzero(rng, shape, sizes):
    return nonzero(rng, shape, sizes)


# ---- more of numpy: sorting, masks, indexing on any axis, shape helpers, casts ------------

op("sort", lambda x: np.sort(x) * (np.arange(x.shape[0]) + 1.0), V, covers=(np.sort,),
   jit=True, order2=True)
op("sort_axis0", lambda x: np.sort(x, axis=0), M, covers=(np.sort,))
op("sort_flat", lambda x: np.sort(x, axis=None), M, covers=(np.sort,))
op("argsort", lambda x: x[np.argsort(x * x)] + x.argsort(), V, covers=(np.argsort, "argsort"))
op("median", lambda x: np.median(x, axis=1), M, (nonempty_real,), (np.median,))
op("mask_sum", lambda x: np.sum(x[x > 0] ** 2) + np.mean(x[x < 0.5]), V, jit=True,
   covers=("__getitem__",))
op("mask_reductions", lambda x: x[x > -0.5].max() + np.std(x[x < 0.5]) + np.prod(x[x > 0]), M)
op("index_columns", lambda x, i: x[:, i] * 2, [(("a", "b"), ("c",))], (real, index_into("b")),
   covers=("__getitem__",), jit=True)
op("index_columns_2d", lambda x: x[:, [[0, 1], [1, 0]]], [((3, 2, "a"),)], covers=("__getitem__",))
op("repeat", lambda x: np.repeat(x, 2) + x.repeat(2), V, covers=(np.repeat, "repeat"))
op("repeat_axis_counts", lambda x: np.repeat(x, [2, 0, 1], axis=1), [(("a", 3),)],
   covers=(np.repeat,))
op("append", lambda x, y: np.append(x, y * 2), [(("a", "b"), ("b",))], covers=(np.append,))
op("append_axis", lambda x: np.append(x, x, axis=1), M, covers=(np.append,))
op("column_stack", lambda x, y: np.column_stack([x, y, x * y]), B2_C, covers=(np.column_stack,))
op("trace_offset", lambda x: np.trace(x, offset=1) + np.trace(x, -1), M, covers=(np.trace,))
op("trace_3d", lambda x: np.trace(x, 1, 1, 2), T3, covers=(np.trace,))
op("diag_k", lambda x: np.diag(x, k=1) * 2, M, covers=(np.diag,))
op("diag_vec_k", lambda x: np.diag(x, -2), V, (nonempty_real,), (np.diag,))
op("degrees", lambda x: np.degrees(x) + np.rad2deg(x) * np.radians(x) + np.deg2rad(x), V,
   covers=(np.degrees, np.rad2deg, np.radians, np.deg2rad))
op("norm_ord", lambda x: np.linalg.norm(x, 3) + np.linalg.norm(x, ord=4) +
   np.linalg.norm(x, np.inf) + np.linalg.norm(x, -np.inf), V, (nonzero,), (np.linalg.norm,))
op("norm_matrix_1_inf", lambda x: np.linalg.norm(x, 1) + np.linalg.norm(x, np.inf), M,
   (nonempty_nonzero,), (np.linalg.norm,))
op("average", lambda x, w: np.average(x, axis=1, weights=w * w + 0.5), [(("a", "b"), ("b",))],
   (nonempty_real, nonempty_real), (np.average,))
op("average_plain", lambda x: np.average(x), M, covers=(np.average,))
op("atleast", lambda x: np.atleast_2d(x) * np.atleast_1d(x[0]) * np.size(x), V,
   covers=(np.atleast_1d, np.atleast_2d, np.size))
op("any_all", lambda x: np.where(np.any(x > 1, axis=1, keepdims=True) | np.all(x > -1),
                                 x, 2 * x) * (x.any() & x.all()), M, (nonzero,),
   (np.any, np.all, "any", "all"))
op("casts", lambda x: np.float64(x[0]) * np.float32(x[1]) * x + np.int64(3.7) + np.int32(2.5),
   V, covers=(np.float64, np.float32, np.int64, np.int32), rtol=100, eps=1e-3)
if hasattr(np, "row_stack"):
    op("row_stack", lambda x: np.row_stack([x, x]), V, covers=(np.row_stack,))

REF_ONLY = {
    "sort_axis0", "sort_flat", "argsort", "median", "mask_reductions", "index_columns_2d",
    "repeat", "repeat_axis_counts", "append", "append_axis", "column_stack", "trace_offset",
    "trace_3d", "diag_k", "diag_vec_k", "degrees", "norm_ord", "norm_matrix_1_inf", "average",
    "average_plain", "atleast", "any_all", "casts",
    "eye_offset", "identity_size", "diff_2_axis0", "erfc", "logit", "logsumexp_axis_b",
    "softmax", "log_softmax", "xlogy", "xlog1py",
    "__pos__", "__invert__", "copy", "pow_0", "pow_m1", "np_power", "np_power_int", "fmin",
    "logical_and", "__add__", "__sub__", "__mul__", "__truediv__", "__mod__", "__floordiv__",
    "__radd__", "__rsub__", "__rmul__", "__rtruediv__", "__rmod__", "__rfloordiv__", "__eq__",
    "__ne__", "__lt__", "__le__", "__gt__", "__ge__", "__and__", "__or__", "where_scalar",
    "clip_max_only", "clip_method", "relu", "amax", "amin", "sum_0d", "var_ddof", "std_ddof",
    "sum_method", "mean_method", "max_method", "min_method", "prod_method", "var_method",
    "std_method", "cumsum_method", "cumsum_axis_neg", "reshape_method", "reshape_tuple",
    "ravel", "ravel_method", "flatten", "transpose_method", "T", "T_3d", "swapaxes",
    "expand_dims_0", "expand_dims_tuple", "squeeze_axis", "squeeze_method", "broadcast_to_unit",
    "concatenate_three", "hstack", "vstack", "stack_last", "asarray", "asanyarray",
    "split_indices", "flip_axis", "flip_axes", "roll_flat", "norm_keepdims", "norm_fro",
    "index_negative", "index_tail", "index_column", "index_tuple", "index_ellipsis_mid",
    "index_newaxis_outer", "index_empty_tuple", "zeros_like", "full_like", "ones", "full",
    "arange_float", "__matmul__", "__rmatmul__", "dot_method", "inner", "vdot",
    "einsum_matvec", "einsum_dot", "einsum_outer", "einsum_diag", "einsum_transpose",
    "einsum_sum", "einsum_implicit", "einsum_elementwise", "tensordot_1", "tensordot_0",
    "solve_mat", "softplus", "sin_exp", "array_nested", "stack_0d", "int_times_float",
    "logical_not", "astype_roundtrip", "nanmin", "nansum", "isnan_isinf_isfinite",
}
assert REF_ONLY <= {o.name for o in OPS}, REF_ONLY - {o.name for o in OPS}
OPS[:] = [dataclasses.replace(o, ref=True) if o.name in REF_ONLY else o for o in OPS]

# Functions tested on their own, not by finite differences.
ELSEWHERE = {
    gj.stop_gradient: "test_stop_gradient (finite differences see through it by design)",
}


# =============================================================================================
# The harness
# =============================================================================================


def _dim(d, sizes):
    if isinstance(d, int):
        return d
    m = re.fullmatch(r"(\d*)([a-z])", d)
    return int(m.group(1) or 1) * sizes[m.group(2)]


def _letters(template):
    return sorted({re.fullmatch(r"\d*([a-z])", d).group(1) for t in template for d in t
                   if isinstance(d, str)})


def make_args(o, template, sizes, rng, dtype, domains=None):
    args = []
    for k, t in enumerate(template):
        shape = tuple(_dim(d, sizes) for d in t)
        doms = o.domains if domains is None else domains
        dom = doms[k] if k < len(doms) else real
        v = np.asarray(dom(rng, shape, sizes))
        if v.dtype.kind == "f":
            v = v.astype(dtype)
        args.append(v)
    return args


def _loss(fn):
    def loss(w, *args):
        y = fn(*args)
        return np.sum(y * w), y
    return loss


@functools.cache
def _value_and_grad(o, argnums):
    return gj.value_and_grad(_loss(o.fn), argnums=tuple(k + 1 for k in argnums), has_aux=True)


def _forward_tol(dtype, o):
    if np.dtype(dtype) == np.float32:
        return 1e-5 * o.rtol, 1e-4 * o.rtol
    return 1e-9 * o.rtol, 1e-7 * o.rtol


def assert_same(got, want, o, what):
    want = np.asarray(want)
    got_a = np.asarray(got)
    assert got_a.shape == want.shape, f"{o.name}: {what} has shape {got_a.shape}, numpy {want.shape}"
    if want.dtype.kind == "f" or got_a.dtype.kind == "f":
        assert got_a.dtype == want.dtype, f"{o.name}: {what} has dtype {got_a.dtype}, numpy {want.dtype}"
    elif want.dtype.kind == "b":
        assert got_a.dtype.kind == "b", f"{o.name}: {what} has dtype {got_a.dtype}, numpy {want.dtype}"
    else:
        assert got_a.dtype.kind in "iu", f"{o.name}: {what} has dtype {got_a.dtype}, numpy {want.dtype}"
    atol, rtol = _forward_tol(want.dtype if want.dtype.kind == "f" else "float64", o)
    np.testing.assert_allclose(got_a.astype(np.float64), want.astype(np.float64), atol=atol,
                               rtol=rtol, err_msg=f"{o.name}: {what}")


_REFERENCE_DONE = set()


def run_case(o, args, rng):
    want = o.fn(*args)
    want = np.asarray(want)
    wdt = want.dtype if want.dtype.kind == "f" else np.dtype(np.float64)
    w = np.asarray(rng.uniform(0.5, 1.5, want.shape)).astype(wdt)
    # 1. the reference evaluator on the traced IR (no compilation), once per signature
    key = (o, tuple((a.dtype, a.ndim) for a in args))
    if key not in _REFERENCE_DONE:
        assert_same(reference_outputs(o.fn, args), want, o, "the reference evaluator's result")
        _REFERENCE_DONE.add(key)
    # 2. one compiled kernel: value, forward result (aux) and gradient; or, for ops whose
    # primitives another op already compiles, the reference evaluator of that kernel's IR
    argnums = tuple(k for k, a in enumerate(args) if a.dtype.kind == "f")
    vg = _value_and_grad(o, argnums)
    if o.ref:
        outs = reference_transform(vg, [w, *args])
        assert len(outs) == 2 + len(argnums), f"{o.name}: {len(outs)} outputs"
        val, aux, grads = outs[0], outs[1], outs[2:]
        what = "the reference evaluator of the differentiated IR"
    else:
        (val, aux), grads = vg(w, *args)
        what = "the compiled kernel"
    assert_same(aux, want, o, f"{what}: the forward result")
    assert_same(val, np.sum(want * w), o, f"{what}: the value")
    for k, g in zip(argnums, grads):
        assert np.shape(g) == args[k].shape, f"{o.name}: gradient {k} has shape {np.shape(g)}"
        assert np.asarray(g).dtype == args[k].dtype, \
            f"{o.name}: gradient {k} has dtype {np.asarray(g).dtype}, argument {args[k].dtype}"
    dt = "float32" if any(args[k].dtype == np.float32 for k in argnums) else "float64"
    atol, rtol = default_tolerance(dt)
    w64 = w.astype(np.float64)

    def f64(*a):
        return np.sum(o.fn(*a) * w64)
    try:
        assert_grads_close(f64, list(args), argnums, grads, atol=atol * o.rtol,
                           rtol=rtol * o.rtol, eps=o.eps, rng=rng, what=f"{o.name}: {what}")
    except AssertionError as e:
        if o.ref:
            raise
        raise AssertionError(f"{e}\n{_diagnose(vg, o, args, w, argnums, f64, atol, rtol)}") from None


def _diagnose(vg, o, args, w, argnums, f64, atol, rtol):
    """Which stage is wrong: the differentiated IR (an adjoint rule) or its lowering."""
    try:
        outs = reference_transform(vg, [w, *args], optimized=False)
        grads = outs[-len(argnums):]
        assert_grads_close(f64, list(args), argnums, grads, atol=atol * o.rtol,
                           rtol=rtol * o.rtol, eps=o.eps)
    except AssertionError as e:
        return f"the reference evaluator of the differentiated IR is wrong too (an adjoint rule): {e}"
    except Exception as e:  # noqa: BLE001
        return f"the reference evaluator failed on the differentiated IR: {type(e).__name__}: {e}"
    return "the reference evaluator of the differentiated IR is right: the lowering is wrong"


def draw_case(data, templates):
    template = data.draw(st.sampled_from(templates), label="template")
    sizes = {c: data.draw(st.integers(2, 5), label=f"size {c}") for c in _letters(template)}
    seed = data.draw(st.integers(0, 2 ** 32 - 1), label="seed")
    return template, sizes, np.random.default_rng(seed)


# =============================================================================================
# Tests
# =============================================================================================


def _params(ops, kind):
    return [pytest.param(o, id=o.name, marks=[pytest.mark.xfail(strict=True, reason=o.xfail)]
                         if o.xfail and kind in o.xfail_in else []) for o in ops]


@pytest.mark.parametrize("o", _params(OPS, "float64"))
@settings(max_examples=8)
@given(data=st.data())
def test_float64(o, data):
    template, sizes, rng = draw_case(data, o.shapes)
    run_case(o, make_args(o, template, sizes, rng, np.float64), rng)


def _f32_templates(o):
    return list(o.f32) if isinstance(o.f32, (list, tuple)) else list(o.shapes[-1:])


@pytest.mark.parametrize("o", _params([o for o in OPS if o.f32 is not False], "float32"))
@settings(max_examples=3)
@given(data=st.data())
def test_float32(o, data):
    template, sizes, rng = draw_case(data, _f32_templates(o))
    run_case(o, make_args(o, template, sizes, rng, np.float32), rng)


# ---- special values: nan, inf, -0.0, huge, tiny; empty arrays; unit axes --------------------

SPECIAL_VALUES = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e300, -1e300, 1e-300, 5e-324,
                           0.5, -1.5, 2.0])
FLOAT_DOMAINS = {real, small, pos, unit, gt1, gtm05, nonzero, frac, few, with_zeros, mod_num,
                 mod_pair}
# Unit axes are part of a signature (a compile each): only these ops draw them.
UNIT_AXES = {"maximum", "fmax", "nanmax", "where", "clip", "logsumexp", "max_method",
             "nanmean"}


def special(rng, shape, sizes):
    """Half the elements special values, half ordinary ones (so that each meets the other)."""
    return np.where(rng.random(shape) < 0.5, rng.choice(SPECIAL_VALUES, shape),
                    rng.uniform(-2.0, 2.0, shape))


def _special_domains(o):
    """``o``'s domains with every float sampler replaced by ``special`` (None: linear algebra,
    whose LAPACK calls take no NaN)."""
    doms = o.domains + (real,) * (max(len(t) for t in o.shapes) - len(o.domains))
    if any(d in (well_conditioned, spd) for d in doms):
        return None
    return tuple(special if d in FLOAT_DOMAINS else d for d in doms)


def _quiet(fn, *args):
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # numpy's All-NaN slice and the like
        return fn(*args)


def assert_same_special(got, want, o, what):
    """numpy's shape and dtype; NaN and +-inf at the same places; finite values close."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype.kind == want.dtype.kind, \
        f"{o.name}: {what} is {got.dtype}{got.shape}, numpy {want.dtype}{want.shape}"
    atol, rtol = _forward_tol(want.dtype if want.dtype.kind == "f" else "float64", o)
    np.testing.assert_allclose(got, want, atol=atol, rtol=rtol, equal_nan=True,
                               err_msg=f"{o.name}: {what}")


def run_special_case(o, args, rng):
    try:
        want = np.asarray(_quiet(o.fn, *args))
    except (ValueError, IndexError) as e:  # the max of an empty array: the IR raises too
        with pytest.raises(type(e)):
            _quiet(reference_outputs, o.fn, args)
        return
    wdt = want.dtype if want.dtype.kind == "f" else np.dtype(np.float64)
    w = np.asarray(rng.uniform(0.5, 1.5, want.shape)).astype(wdt)
    vg = _value_and_grad(o, tuple(k for k, a in enumerate(args) if a.dtype.kind == "f"))
    ref = _quiet(reference_transform, vg, [w, *args])
    if o.ref:
        assert_same_special(ref[1], want, o, "the reference evaluator's forward result")
        return
    (_, aux), grads = vg(w, *args)
    assert_same_special(aux, want, o, "the compiled forward result")
    for k, (g, r) in enumerate(zip(grads, ref[2:])):
        assert_same_special(g, r, o, f"compiled gradient {k} (against the reference evaluator "
                            "of the same IR)")


@pytest.mark.parametrize("o", _params([o for o in OPS if _special_domains(o)], "special"))
@settings(max_examples=3)
@given(data=st.data())
def test_special_values(o, data):
    """NaN, inf, -0.0, huge and tiny elements and empty arrays, through the kernels
    test_float64 compiles (sizes are not part of a signature: no new compile): numpy's forward
    values, and the gradient the reference evaluator computes from the same IR."""
    doms = _special_domains(o)
    template = data.draw(st.sampled_from(o.shapes), label="template")
    # no empty axes where an integer index must point into them
    lo = 0 if all(d is special for d in doms) else 2
    choices = [lo] + list(range(1 if o.name in UNIT_AXES else 2, 6))
    sizes = {c: data.draw(st.sampled_from(choices), label=f"size {c}")
             for c in _letters(template)}
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 32 - 1), label="seed"))
    run_special_case(o, make_args(o, template, sizes, rng, np.float64, doms), rng)


# gj.jit against numpy, one op per family (every op's forward values are also checked through
# the value_and_grad kernel's auxiliary output above).

@pytest.mark.parametrize("o", _params([o for o in OPS if o.jit], "jit"))
def test_jit_matches_numpy(o):
    rng = np.random.default_rng(7)
    template = o.shapes[-1]
    sizes = {c: 3 + k for k, c in enumerate(_letters(template))}
    args = make_args(o, template, sizes, rng, np.float64)
    assert_same(gj.jit(o.fn)(*args), o.fn(*args), o, "gj.jit")


def _weighted(fn, w):
    return lambda *a: np.sum(fn(*a) * w)


@pytest.mark.parametrize("o", _params([o for o in OPS if o.order2], "order2"))
def test_second_order(o):
    """Adjoint rules emit differentiable IR: grad of grad against finite differences."""
    rng = np.random.default_rng(11)
    template = o.shapes[0]
    sizes = {c: 3 + k for k, c in enumerate(_letters(template))}
    args = make_args(o, template, sizes, rng, np.float64)
    want = np.asarray(o.fn(*args))
    w = np.asarray(rng.uniform(0.5, 1.5, want.shape))
    check_grads(_weighted(o.fn, w), tuple(args), order=2, atol=1e-6 * o.rtol,
                rtol=1e-4 * o.rtol)


# Plain sums and means (no weight): the cotangent reaching the op is then a scalar standing
# for a whole array of equal values, and a broadcast operand must still receive the sum of
# its copies (d/ds sum(x + s) = x.size). Checked on the differentiated IR, no compilation.

_UNWEIGHTED = [
    ("add", lambda x, y: np.sum(x + y)),
    ("sub", lambda x, y: np.sum(x - y)),
    ("mul", lambda x, y: np.sum(x * y)),
    ("div", lambda x, y: np.sum(x / y)),
    ("neg_add", lambda x, y: np.sum(-(x + y))),
    ("mean_add", lambda x, y: np.mean(x + y)),
    ("maximum", lambda x, y: np.sum(np.maximum(x, y))),
    ("where", lambda x, y: np.sum(np.where(x > 0, x, y))),
    ("broadcast_to", lambda x, y: np.sum(np.broadcast_to(y, x.shape)) + np.sum(x)),
    ("matvec_plus", lambda x, y: np.sum(x @ np.ones(x.shape[1]) + y)),
    ("pow", lambda x, y: np.sum(np.abs(x) ** y)),
    ("logaddexp", lambda x, y: np.sum(np.logaddexp(x, y))),
]
_SHAPES = {"scalar": ((3, 4), ()), "outer": ((3, 1), (1, 4)), "row": ((2, 3), (3,))}


@pytest.mark.parametrize("name, fn, shapes", [
    pytest.param(n, f, sh, id=f"{n}-{sh}")
    for n, f in _UNWEIGHTED for sh in _SHAPES
    if sh == "scalar" or n not in ("broadcast_to", "matvec_plus")])
def test_unweighted_reduction_of_broadcast(name, fn, shapes):
    rng = np.random.default_rng(3)
    x = rng.uniform(0.5, 1.5, _SHAPES[shapes][0])
    y = np.asarray(rng.uniform(0.5, 1.5, _SHAPES[shapes][1]))
    grads = reference_transform(gj.grad(fn, argnums=(0, 1)), (x, y))
    assert_grads_close(fn, [x, y], (0, 1), grads, atol=1e-7, rtol=1e-6)


def test_stop_gradient():
    x = np.array([0.5, 1.0, 2.0])
    g = gj.grad(lambda x: np.sum(gj.stop_gradient(x * x) * x))(x)
    np.testing.assert_allclose(g, x * x)
    g = gj.grad(lambda x: np.sum(gj.stop_gradient(x) + x))(x)
    np.testing.assert_allclose(g, np.ones(3))


def _reference_jvp(fn, args, tangents):
    """The output tangents of ``fn`` by the reference evaluator of its forward-mode graph (no
    compilation: the tangent rules themselves, one trace per op)."""
    from gradjit.compiler.forward import WithTangents, jvp_graph
    from gradjit.compiler.reference import evaluate
    from gradjit.compiler.transforms import trace

    n = len(args)
    traced = trace(WithTangents(fn, n), tuple(args) + tuple(tangents))
    g = jvp_graph(traced, n)
    outs = evaluate(g, *args, *tangents, *[c.get() for c in traced.captures], check=True)
    return outs[len(outs) // 2:]


@pytest.mark.parametrize("o", _params(OPS, "tangent"))
def test_tangent_rule(o):
    """Forward mode: each op's tangent (through its primitives' tangent rules) against central
    differences along a random direction, weighted as the gradient test weights outputs."""
    rng = np.random.default_rng(5)
    template = o.shapes[0]
    sizes = {c: 3 + k for k, c in enumerate(_letters(template))}
    args = make_args(o, template, sizes, rng, np.float64)
    argnums = tuple(k for k, a in enumerate(args) if a.dtype.kind == "f")
    dirs = [rng.standard_normal(a.shape) if k in argnums else np.zeros_like(a)
            for k, a in enumerate(args)]
    tangent = _reference_jvp(o.fn, args, dirs)
    want = np.asarray(o.fn(*args))
    w = np.asarray(rng.uniform(0.5, 1.5, want.shape))
    got = float(np.sum(np.asarray(tangent[0], dtype=np.float64) * w))
    fd = float(numerical_directional(lambda *a: np.sum(np.asarray(o.fn(*a)) * w), list(args),
                                     argnums, [[dirs[k]] for k in argnums], o.eps))
    atol, rtol = default_tolerance("float64")
    scale = float(np.sum(np.abs(np.asarray(tangent[0], dtype=np.float64) * w)))
    assert abs(got - fd) <= atol * o.rtol + rtol * o.rtol * max(scale, abs(fd)), \
        f"{o.name}: forward mode gives {got!r} along a random direction, central " \
        f"differences {fd!r}"


def test_table_covers_every_numpy_function():
    covered = {c for o in OPS for c in o.covers if not isinstance(c, str)} | set(ELSEWHERE)
    missing = sorted(getattr(f, "__name__", repr(f)) for f in numpy_api.FUNCTIONS
                     if f not in covered)
    assert not missing, f"numpy functions in numpy_api.FUNCTIONS without a test: {missing}"


def test_table_covers_every_tracer_method():
    covered = {c for o in OPS for c in o.covers if isinstance(c, str)}
    missing = sorted(m for m in numpy_api.METHODS if m not in covered and m != "__setitem__")
    assert not missing, f"Tracer methods/operators without a test: {missing}"


# The CPU backend's rule tables (codegen/cpu.py): every primitive needs a rule in one of them,
# those of the kinds the schedule fuses into loops one in LOOP_RULES, and those whose family
# rule fills in a scalar template (elementwise, reductions, gathers) the template ``prim.cpu``.
_CPU_TABLES = ("LOOP_RULES", "SCALAR_RULES", "ARRAY_RULES")
_TEMPLATE_KINDS = ("elementwise", "reduce", "index")


def cpu_gaps(name, prim):
    gaps = []
    if not any(prim in getattr(cpu_codegen, t) for t in _CPU_TABLES):
        gaps.append(f"{name}: no CPU lowering (a rule in codegen.cpu {' / '.join(_CPU_TABLES)})")
    if prim.kind in LOOP_KINDS and prim not in cpu_codegen.LOOP_RULES:
        gaps.append(f"{name}: kind {prim.kind!r} is fused into loops but has no rule in "
                    "codegen.cpu.LOOP_RULES")
    if prim.kind in _TEMPLATE_KINDS and prim.cpu is None:
        gaps.append(f"{name}: no CPU template (prim.cpu) for the {prim.kind} rules to fill in")
    return gaps


# Primitives that are never differentiated, by design.
NO_VJP = {
    "tape_new": "reverse-mode bookkeeping emitted by the adjoint of a loop",
    "tape_push": "reverse-mode bookkeeping emitted by the adjoint of a loop",
    "tape_pop": "reverse-mode bookkeeping emitted by the adjoint of a loop",
}


def test_every_primitive_has_a_tangent_rule():
    """Forward mode (compiler/forward.py) needs a tangent rule (``jvp``, or ``jvp_eqn`` for a
    region) for every primitive, in its stanza."""
    gaps = [f"{name}: no tangent rule (jvp / jvp_eqn)" for name, prim in sorted(P.ALL.items())
            if prim.jvp is None and prim.jvp_eqn is None]
    assert not gaps, "primitives without a tangent rule:\n  " + "\n  ".join(gaps)


def test_every_primitive_has_vjp_and_cpu_lowering():
    gaps = []
    for name, prim in sorted(P.ALL.items()):
        if prim.vjp is None and name not in NO_VJP:
            gaps.append(f"{name}: no vjp rule")
        if prim.expand is None:  # one that stands for a graph is inlined before lowering
            gaps += cpu_gaps(name, prim)
        if prim.impl is None and getattr(prim, "eval_rule", None) is None and prim.kind != "check":
            gaps.append(f"{name}: no reference implementation (impl / eval_rule)")
    assert not gaps, "primitives with missing rules:\n  " + "\n  ".join(gaps)



def test_float32_reduction_does_not_leak_into_the_next_kernel():
    """A float32 full reduction's accumulator cast once leaked into later kernels."""
    x32 = np.linspace(0.5, 1.5, 5).astype(np.float32)
    assert gj.jit(lambda x: np.sum(x * x))(x32) == pytest.approx(np.sum(x32 * x32), rel=1e-6)
    x = np.linspace(0.5, 1.5, 5)
    np.testing.assert_allclose(gj.jit(lambda x: np.sin(x) + 1)(x), np.sin(x) + 1)
