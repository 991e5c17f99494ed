"""NaN, inf, -0.0, huge and tiny values and empty arrays: compiled kernels give numpy's results.

Values are grouped so that one kernel (one numba compile) checks many: every special value is
an element of one argument, and one function returns many operations' results. Exact
agreement (``np.testing.assert_array_equal``, NaN equal to NaN, signs of zero where numpy's
are well defined) for operations whose results are exact; within an ulp or two for the libm-
like functions, where only the special values are required to match exactly.
"""

import warnings

import numpy as np
import pytest

import gradjit as gj
from gradjit.compiler.codegen import cpu as cpu_codegen
from gradjit.testing import reference_outputs

NAN, INF = np.nan, np.inf
SPECIAL = np.array([NAN, INF, -INF, 0.0, -0.0, 1.0, -1.0, 0.5, -2.5, 3.0, 1e308, -1e308, 1e300,
                    5e-324, -5e-324, 2.2250738585072014e-308, 1e-310, 709.8, -745.2, 1e6,
                    0.9999999, 1.0000001])


def quiet(fn, *args):
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # numpy's All-NaN slice, Mean of empty
        return fn(*args)


def same(got, want, rtol=0.0, zeros=True, what=""):
    """``got`` is numpy's ``want``: dtype, shape, NaN and +-inf at the same places, finite
    values equal (or within ``rtol``), and with ``zeros`` the signs of zero results."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype and got.shape == want.shape, \
        f"{what}: {got.dtype}{got.shape}, numpy {want.dtype}{want.shape}"
    if rtol:
        np.testing.assert_allclose(got, want, rtol=rtol, atol=0, err_msg=what)
        np.testing.assert_array_equal(np.isinf(got), np.isinf(want), err_msg=what)
    else:
        np.testing.assert_array_equal(got, want, err_msg=what)
    if zeros and want.dtype.kind == "f":
        z = want == 0
        np.testing.assert_array_equal(np.signbit(got[z]), np.signbit(want[z]),
                                      err_msg=f"{what}: signs of zero")


# ---- elementwise ---------------------------------------------------------------------------

EXACT_UNARY = [np.abs, np.fabs, np.sign, np.floor, np.ceil, np.rint, np.negative, np.square,
               np.reciprocal, np.sqrt, np.logical_not, np.isnan, np.isinf, np.isfinite,
               lambda x: np.clip(x, -1.0, 1.0), lambda x: np.maximum(x, 0.0),
               lambda x: np.where(x > 0, x, -x), lambda x: np.where(x == x, 1.0, 2.0)]
ULP_UNARY = [np.sin, np.cos, np.tan, np.exp, np.expm1, np.log, np.log1p, np.tanh, np.sinh,
             np.cosh, np.arcsin, np.arccos, np.arctan, np.arcsinh, np.arccosh, np.arctanh]
COMPOSED_UNARY = [np.log2, np.log10, np.exp2, np.cbrt, np.sinc]  # products of roundings


def test_unary_special_values():
    ops = EXACT_UNARY + ULP_UNARY + COMPOSED_UNARY
    got = gj.jit(lambda x: tuple(f(x) for f in ops))(SPECIAL)
    for k, (f, g) in enumerate(zip(ops, got)):
        rtol = 0.0 if f in EXACT_UNARY else (5e-16 if f in ULP_UNARY else 1e-12)
        same(g, quiet(f, SPECIAL), rtol, zeros=f not in COMPOSED_UNARY,
             what=getattr(f, "__name__", f"EXACT_UNARY[{k}]"))


def test_unary_special_values_float32():  # the helpers round once from float64
    x = quiet(SPECIAL.astype, np.float32)  # 1e308 -> inf
    ops = [np.exp, np.sin, np.cos, np.sign, np.abs, lambda x: np.maximum(x, 0), np.sqrt]
    got = gj.jit(lambda x: tuple(f(x) for f in ops))(x)
    for f, g in zip(ops, got):
        same(g, quiet(f, x), 0.0 if f in (np.sign, np.abs, np.sqrt) else 2e-7)


PAIR_VALUES = np.array([NAN, INF, -INF, 0.0, -0.0, 1.0, -1.0, 2.5, -2.5, 1e308, 5e-324, 0.5])
X, Y = (a.ravel() for a in np.meshgrid(PAIR_VALUES, PAIR_VALUES))
EXACT_BINARY = [np.add, np.subtract, np.multiply, np.divide, np.maximum, np.minimum,
                np.arctan2, np.mod, np.floor_divide, np.hypot, np.equal, np.not_equal, np.less,
                np.less_equal, np.greater, np.greater_equal, np.logical_and, np.logical_or,
                lambda x, y: np.where(x > y, x, y), lambda x, y: np.where(x <= y, x, y),
                lambda x, y: np.clip(x, y, 3.0)]
# numpy's own fmax/fmin return either operand at a -0.0/0.0 tie (scalar and array loops differ)
TIE_FREE_BINARY = [np.fmax, np.fmin]
ULP_BINARY = [np.power, np.logaddexp]  # numpy's pow may differ from libm's; another formula


def test_binary_special_values():
    ops = EXACT_BINARY + TIE_FREE_BINARY + ULP_BINARY
    got = gj.jit(lambda x, y: tuple(f(x, y) for f in ops))(X, Y)
    for k, (f, g) in enumerate(zip(ops, got)):
        same(g, quiet(f, X, Y), 2e-15 if f in ULP_BINARY else 0.0, zeros=f in EXACT_BINARY,
             what=getattr(f, "__name__", f"EXACT_BINARY[{k}]"))


def test_the_issue_examples():
    x, y = np.array([NAN, 1, 2]), np.array([1, NAN, 3])
    same(gj.jit(lambda a, b: np.maximum(a, b))(x, y), [NAN, NAN, 3.0])
    same(gj.jit(lambda a, b: np.minimum(a, b))(x, y), [NAN, NAN, 2.0])
    same(gj.jit(lambda a, b: np.fmax(a, b))(x, y), [1.0, 1.0, 3.0])
    same(gj.jit(lambda a, b: np.fmin(a, b))(x, y), [1.0, 1.0, 2.0])
    assert np.isnan(gj.jit(lambda a: np.max(a))(x)) and np.isnan(gj.jit(lambda a: a.min())(x))


# ---- reductions ----------------------------------------------------------------------------

R = np.array([[1.0, NAN, 3.0, -INF, 2.0],
              [INF, 1.0, -1.0, 0.0, 2.0],
              [NAN, NAN, NAN, NAN, NAN],
              [-0.0, 0.0, 2.0, 2.0, -5.0]])

REDUCTIONS = [
    np.max, np.min, np.amax, np.amin, np.nanmax, np.nanmin, np.nansum, np.nanmean, np.sum,
    np.mean, np.prod, np.argmax, np.argmin,
    lambda x: np.max(x, axis=1), lambda x: np.min(x, axis=0, keepdims=True),
    lambda x: np.amax(x, axis=-1, keepdims=True), lambda x: x.max(axis=1), lambda x: x.min(1),
    lambda x: np.nanmax(x, axis=1), lambda x: np.nanmin(x, axis=0),
    lambda x: np.nanmax(x, axis=(0, 1), keepdims=True), lambda x: np.nansum(x, axis=1),
    lambda x: np.nanmean(x, axis=1), lambda x: np.nanmean(x, axis=0, keepdims=True),
    lambda x: np.sum(x, axis=1), lambda x: np.argmax(x, axis=1), lambda x: np.argmin(x, axis=0),
    lambda x: np.max(x * 0.0, axis=1),  # nan * 0 and inf * 0 are nan, not 0
]


@pytest.mark.parametrize("x", [R, R[:1], R[2:3], np.array([[3, -1, 7, 7, 0], [2, 2, -5, 1, 9]])],
                         ids=["4x5", "1x5", "all-nan-1x5", "int64"])
def test_reductions_propagate_or_skip_nan(x):
    got = gj.jit(lambda x: tuple(f(x) for f in REDUCTIONS))(x)
    for k, (f, g) in enumerate(zip(REDUCTIONS, got)):
        # signs of zero of a reduction depend on numpy's summation/SIMD order: values only
        same(g, quiet(f, x), zeros=False, what=getattr(f, "__name__", f"REDUCTIONS[{k}]"))


def test_reductions_over_unit_and_empty_axes():
    def f(x):  # reductions whose result is empty, or over a unit axis: no error
        return np.max(x, axis=1), np.nanmin(x, axis=1), np.argmax(x, axis=1), np.sum(x, axis=0), \
            np.nansum(x), np.nanmax(x, axis=-1, keepdims=True)
    fj = gj.jit(f)
    for shape in [(0, 3), (1, 3)]:
        x = np.full(shape, NAN) if shape[0] else np.zeros(shape)
        for g, w in zip(fj(x), quiet(f, x)):
            same(g, w)
    with pytest.raises(ValueError):
        np.max(np.zeros((3, 0)), axis=1)
    with pytest.raises(gj.GradjitError, match="reduction operation maximum which has no identity"):
        fj(np.zeros((3, 0)))
    np.testing.assert_array_equal(quiet(gj.jit(lambda x: (np.mean(x), np.nanmean(x))), np.zeros(0)),
                                  [NAN, NAN])


EMPTY_RAISES = [
    (lambda x: np.max(x), "reduction operation maximum which has no identity"),
    (lambda x: x.min(), "reduction operation minimum which has no identity"),
    (lambda x: np.amax(x, axis=0), "reduction operation maximum which has no identity"),
    (lambda x: np.nanmax(x), "reduction operation fmax which has no identity"),
    (lambda x: np.nanmin(x, axis=0, keepdims=True), "operation fmin which has no identity"),
    (lambda x: np.argmax(x), "attempt to get argmax of an empty sequence"),
    (lambda x: np.argmin(x, axis=0), "attempt to get argmin of an empty sequence"),
]


@pytest.mark.parametrize("k", range(len(EMPTY_RAISES)))
def test_empty_max_raises_like_numpy(k):
    """numpy's ValueError; a gradjit error that is a ValueError, with numpy's message, from the
    IR (reference evaluator, no compile) and for two of them from a compiled kernel."""
    fn, msg = EMPTY_RAISES[k]
    x = np.zeros(0)
    with pytest.raises(ValueError, match="empty sequence|no identity"):
        fn(x)
    with pytest.raises(gj.GradjitError, match=msg) as e:
        reference_outputs(fn, [x])
    assert isinstance(e.value, ValueError)
    if k in (0, 5):
        with pytest.raises(ValueError, match=msg):
            gj.jit(fn)(x)
        assert fn(np.ones(3)) == gj.jit(fn)(np.ones(3))


def test_empty_constant_raises_while_tracing():
    with pytest.raises(gj.ShapeError, match="no identity"):
        gj.jit(lambda x: np.max(np.broadcast_to(x, (2, 0)), axis=1))(1.0)


# ---- gradients at special values -----------------------------------------------------------

def _central(f, x, y, k):
    """Elementwise central differences of an elementwise ``f`` in argument ``k`` (relative
    steps: nothing crosses between the sampled values, and a NaN stays NaN)."""
    a = [x, y]
    h = 2.0 ** -20 * np.fmax(1.0, np.abs(a[k]))
    up, down = list(a), list(a)
    up[k], down[k] = a[k] + h, a[k] - h
    return quiet(lambda: (f(*up) - f(*down)) / (2 * h))


FD_VALUES = np.array([NAN, 0.0, -0.0, 1.0, -1.0, 2.5, -2.5, 1e300, -1e300])
FX, FY = (a.ravel() for a in np.meshgrid(FD_VALUES, FD_VALUES))
GRAD_BINARY = [np.maximum, np.minimum, np.fmax, np.fmin, lambda x, y: np.clip(x, y, 2.0),
               lambda x, y: np.clip(x, -2.0, y)]  # (a double tie: x = lo = hi splits twice)


def test_minmax_gradients_match_central_differences():
    """Where the value is NaN every operand's derivative is NaN (any step leaves it NaN);
    fmax/fmin route it to the non-NaN operand; ties split it in half (what central
    differences see at a tie)."""
    def loss(*a):
        return sum(np.sum(f(a[2 * k], a[2 * k + 1])) for k, f in enumerate(GRAD_BINARY))
    n = len(GRAD_BINARY)
    grads = gj.grad(loss, argnums=tuple(range(2 * n)))(*[FX, FY] * n)
    for k, f in enumerate(GRAD_BINARY):
        for j in (0, 1):
            same(grads[2 * k + j], _central(f, FX, FY, j), 1e-9, zeros=False,
                 what=f"{getattr(f, '__name__', k)}: d/d{'xy'[j]}")


def test_where_gradient_at_nan():  # nan > y is false: the cotangent goes to the other branch
    g = gj.grad(lambda x, y: np.sum(np.where(x > y, x, y)), argnums=(0, 1))(FX, FY)
    pick = quiet(np.greater, FX, FY).astype(float)
    same(g[0], pick)
    same(g[1], 1.0 - pick)


def test_unary_gradients_at_special_values():
    ops = [np.abs, np.sqrt, np.exp, np.log, np.sin, np.tanh, lambda x: np.maximum(x, 0.0),
           lambda x: np.clip(x, -1.0, 1.0), np.sign, lambda x: x ** 2]
    want = [np.sign, lambda x: 0.5 / np.sqrt(x), np.exp, lambda x: 1.0 / x, np.cos,
            lambda x: 1.0 - np.tanh(x) ** 2,
            lambda x: np.where(x == x, np.where(x > 0, 1.0, np.where(x == 0, 0.5, 0.0)), NAN),
            lambda x: np.where(x == x, np.where(np.abs(x) < 1, 1.0, np.where(np.abs(x) == 1, 0.5,
                                                                              0.0)), NAN),
            lambda x: np.zeros_like(x), lambda x: 2.0 * x]
    n = len(ops)
    grads = gj.grad(lambda *a: sum(np.sum(ops[k](a[k])) for k in range(n)),
                    argnums=tuple(range(n)))(*[SPECIAL] * n)
    for k, (g, w) in enumerate(zip(grads, want)):
        same(g, quiet(w, SPECIAL), 1e-14, zeros=False, what=f"gradient {k}")


def test_reduction_gradients_at_nan():
    """max/min: a row holding NaN has a NaN result and NaN derivatives (0/0), others go to the
    maxima (ties split). nanmax: NaN elements get 0, an all-NaN row NaN. nansum/nanmean:
    NaN elements get 0."""
    w = np.array([1.0, 2.0, 3.0, 4.0])

    def loss(a, b, c, d, e):
        return (np.sum(np.max(a, axis=1) * w) + np.sum(np.min(b, axis=1) * w)
                + np.sum(np.nanmax(c, axis=1) * w) + np.sum(np.nansum(d, axis=1) * w)
                + np.sum(np.nanmean(e, axis=1) * w))
    ga, gb, gc, gd, ge = gj.grad(loss, argnums=(0, 1, 2, 3, 4))(*[R] * 5)
    same(ga, [[NAN] * 5, [2, 0, 0, 0, 0], [NAN] * 5, [0, 0, 2, 2, 0]], zeros=False)
    same(gb, [[NAN] * 5, [0, 0, 2, 0, 0], [NAN] * 5, [0, 0, 0, 0, 4]], zeros=False)
    same(gc, [[0, 0, 1, 0, 0], [2, 0, 0, 0, 0], [NAN] * 5, [0, 0, 2, 2, 0]], zeros=False)
    same(gd, np.where(np.isnan(R), 0.0, w[:, None]), zeros=False)
    count = (~np.isnan(R)).sum(axis=1, keepdims=True)
    same(ge, np.where(np.isnan(R), 0.0, quiet(np.divide, w[:, None], count)), zeros=False)


# ---- the fastmath flags ----------------------------------------------------------------------

def _flag_cases(x, y, z):
    return ((x + y) - y,  # 'nsz' with 'reassoc': x (numpy: nan at y = inf)
            x / y,  # 'arcp': x * (1 / y), nan for 0 / 5e-324, inf for 1e-310 / 1e-310
            0.0 - x,  # 'nsz': -x, -0.0 at x = 0
            x * (y / z),  # 'reassoc': (x * y) / z, inf for 1e300 * (1e300 / 1e300)
            np.sum(x * y / z))  # a reduction still reassociated, each term as written


@pytest.mark.parametrize("target", ["cpu", "parallel"])
def test_fastmath_flags_keep_nan_inf_and_signed_zeros(target):
    """The kernels' flags move no nan or inf (nor, but for target='parallel', an overflow)."""
    assert cpu_codegen.FASTMATH == {"contract"}
    x = np.array([1.0, 2.0, 0.0, 1e-310, 0.0, 1e300, -0.0, 3.0])
    y = np.array([INF, -INF, 5e-324, 1e-310, 3.0, 1e300, 0.0, NAN])
    z = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 1e300, 1.0, 1.0])
    f = gj.jit(_flag_cases, target=target)
    got, want = f(x, y, z), quiet(_flag_cases, x, y, z)
    for k in (0, 1, 2):
        same(got[k], want[k], what=f"case {k}")
    if target == "cpu":
        same(got[3], want[3], what="case 3")
    assert np.isnan(got[4])
    flags = cpu_codegen.FASTMATH | ({"reassoc"} if target == "parallel" else set())
    assert f"fastmath={{{', '.join(map(repr, sorted(flags)))}}}" in f.lower(x, y, z).source
