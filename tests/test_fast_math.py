"""The vectorisable exp/sin/cos of gradjit/kernels/cpu.py against numpy's libm, in ulps.

The helpers are called from an @njit loop compiled with the generated kernels' fastmath flags
(the way a fused gradient loop calls them), on hypothesis-drawn floats over the whole double
range, on special values, and near the points where the algorithms switch (overflow,
underflow, subnormals, multiples of pi/2, the trig reduction bound).
"""

import math

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gradjit as gj
from gradjit.compiler.codegen.cpu import FASTMATH as FLAGS  # the generated kernels' flags
from gradjit.kernels.cpu import TRIG_BOUND, gj_cos, gj_exp, gj_sin


@numba.njit(error_model="numpy", fastmath=FLAGS)
def _loop(x, which):
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        if which == 0:
            out[i] = gj_exp(x[i])
        elif which == 1:
            out[i] = gj_sin(x[i])
        else:
            out[i] = gj_cos(x[i])
    return out


FUNCS = {"exp": (0, np.exp), "sin": (1, np.sin), "cos": (2, np.cos)}


def run(name, x):
    return _loop(np.ascontiguousarray(x), FUNCS[name][0])


def ulps(got, want):
    """|got - want| in units of the last place of ``want`` (in got's precision); 0 where equal
    (infinities included) or both nan, inf where only one is nan or inf."""
    got, want = np.asarray(got), np.asarray(want, dtype=got.dtype)
    same = (got == want) | (np.isnan(got) & np.isnan(want))
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.abs(got.astype(np.float64) - want.astype(np.float64)) / np.spacing(np.abs(want))
    err = np.where(np.isfinite(got) & np.isfinite(want), err, np.inf)
    return np.where(same, 0.0, err)


def check(name, x, max_ulp):
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(all="ignore"):
        want = FUNCS[name][1](x)
    got = run(name, x)
    err = ulps(got, want)
    worst = int(np.argmax(err)) if err.size else 0
    assert err.size == 0 or err[worst] <= max_ulp, (
        f"{name}({x[worst]!r}) = {got[worst]!r}, numpy {want[worst]!r}: {err[worst]} ulp")
    # signs of zero results follow numpy
    zero = want == 0
    assert np.array_equal(np.signbit(got[zero]), np.signbit(want[zero]))


any_float = st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True)
floats = st.lists(any_float, min_size=1, max_size=64)


# -- exp ------------------------------------------------------------------------------------

@settings(max_examples=300)
@given(floats)
def test_exp_any_double(xs):
    check("exp", xs, 2)


@settings(max_examples=300)
@given(st.lists(st.floats(-760.0, 720.0), min_size=1, max_size=64))
def test_exp_finite_range(xs):  # the interesting part of the domain, drawn densely
    check("exp", xs, 2)


def test_exp_grid_and_edges():
    rng = np.random.default_rng(0)
    x = np.concatenate([
        rng.uniform(-750.0, 715.0, 200_000), rng.uniform(-1.0, 1.0, 100_000),
        rng.uniform(-1e-8, 1e-8, 10_000),
        # the overflow edge (709.78...), where results become subnormal and where they round to 0
        np.linspace(709.7, 709.8, 2001), np.linspace(-708.5, -708.3, 2001),
        np.linspace(-745.2, -745.1, 2001), [-745.1332191019411, -745.1332191019412],
        # rounding ties of k = x/ln2 to an integer
        np.arange(-1074, 1024) * math.log(2) + 0.5 * math.log(2),
        [0.0, -0.0, 5e-324, -5e-324, 2.2250738585072014e-308, np.inf, -np.inf, np.nan,
         -np.nan, 1e308, -1e308, 709.782712893384, 709.7827128933841]])
    check("exp", x, 2)
    assert run("exp", np.array([np.inf, -np.inf, 0.0, -0.0, 1000.0, -1000.0])).tolist() == [
        np.inf, 0.0, 1.0, 1.0, np.inf, 0.0]
    assert np.isnan(run("exp", np.array([np.nan]))[0])
    sub = run("exp", np.array([-740.0, -745.0]))
    assert 0 < sub[0] < 2.2250738585072014e-308 and sub[1] == 5e-324  # gradual underflow


# -- sin, cos -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["sin", "cos"])
@settings(max_examples=300)
@given(xs=floats)
def test_trig_any_double(name, xs):  # most draws are past TRIG_BOUND: libm's values exactly
    x = np.asarray(xs)
    inside = np.abs(x) <= TRIG_BOUND
    check(name, x[inside], 2)
    with np.errstate(invalid="ignore"):
        want = FUNCS[name][1](x[~inside])
    np.testing.assert_array_equal(run(name, x[~inside]), want)


@pytest.mark.parametrize("name", ["sin", "cos"])
@settings(max_examples=300)
@given(xs=st.lists(st.floats(-TRIG_BOUND, TRIG_BOUND), min_size=1, max_size=64))
def test_trig_within_bound(name, xs):
    check(name, xs, 2)


@pytest.mark.parametrize("name", ["sin", "cos"])
def test_trig_grid_and_edges(name):
    rng = np.random.default_rng(1)
    n = np.arange(-(2 ** 19), 2 ** 19 + 1, 37, dtype=np.float64)
    near = n * (math.pi / 2)  # the doubles nearest multiples of pi/2: tiny reduced arguments
    x = np.concatenate([
        rng.uniform(-4.0, 4.0, 200_000), rng.uniform(-TRIG_BOUND, TRIG_BOUND, 200_000),
        near, np.nextafter(near, np.inf), np.nextafter(near, -np.inf),
        np.arange(-4, 5) * (math.pi / 4),  # quadrant boundaries of the polynomials
        [0.0, -0.0, 5e-324, -5e-324, 1e-300, -1e-300, 1.4901161193847656e-08,
         TRIG_BOUND, -TRIG_BOUND, np.nextafter(TRIG_BOUND, np.inf), np.inf, -np.inf, np.nan]])
    check(name, x, 2)
    # past the bound every element goes to libm: identical values, and a loop over a mixed
    # array gives each element its own path
    big = np.concatenate([rng.uniform(TRIG_BOUND, 1e7, 1000), 10.0 ** rng.uniform(6, 308, 1000)])
    big = np.where(rng.random(big.size) < 0.5, big, -big)
    mixed = np.where(rng.random(big.size) < 0.5, big, rng.uniform(-3, 3, big.size))
    np.testing.assert_array_equal(run(name, mixed)[np.abs(mixed) > TRIG_BOUND],
                                  FUNCS[name][1](mixed)[np.abs(mixed) > TRIG_BOUND])
    check(name, mixed, 2)
    assert np.isnan(run(name, np.array([np.inf, -np.inf, np.nan]))).all()


def test_sin_keeps_the_sign_of_zero():
    assert np.signbit(run("sin", np.array([-0.0])))[0]
    assert not np.signbit(run("sin", np.array([0.0])))[0]
    assert run("cos", np.array([-0.0]))[0] == 1.0


# -- float32 and the generated kernels -------------------------------------------------------

@pytest.mark.parametrize("name", ["exp", "sin", "cos"])
def test_float32_rounds_the_float64_result(name):
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.uniform(-100, 90, 10_000), [0, -0.0, np.inf, -np.inf, np.nan,
                                                        88.72, 88.73, -103.9, 1e10]])
    x = x.astype(np.float32)
    got = run(name, x)
    assert got.dtype == np.float32
    with np.errstate(all="ignore"):
        want = FUNCS[name][1](x.astype(np.float64)).astype(np.float32)
    assert ulps(got, want).max() <= 1


def sin_exp_sum(x):
    return np.sum(np.sin(x) * np.exp(-x * x))


def cos_sum(x):
    return np.sum(np.cos(3.0 * x))


@pytest.mark.parametrize("target", ["cpu", "parallel"])
def test_gradients_through_sin_exp_cos(target):
    x = np.random.default_rng(3).uniform(-3, 3, 1001)
    g = gj.grad(sin_exp_sum, target=target)
    e = np.exp(-x * x)
    np.testing.assert_allclose(g(x), np.cos(x) * e - 2 * x * np.sin(x) * e, rtol=1e-14,
                               atol=1e-15)
    np.testing.assert_allclose(gj.grad(cos_sum, target=target)(x), -3.0 * np.sin(3.0 * x),
                               rtol=1e-14, atol=1e-15)
    src = g.lower(x).source  # the fused loop uses the helpers, not libm
    assert "gj_sin(" in src and "gj_exp(" in src and "gj_cos(" in src
    assert "np.sin(" not in src and "np.exp(" not in src


def test_gradient_of_large_arguments_matches_numpy():  # elements past TRIG_BOUND in a fused loop
    x = np.array([1.0, -2.5, 3e6, -1e12, 1e300, 0.0, np.inf])
    with np.errstate(invalid="ignore"):
        want = -3.0 * np.sin(3.0 * x)
        got = gj.grad(cos_sum)(x)
    np.testing.assert_allclose(got, want, rtol=1e-15, atol=0)
