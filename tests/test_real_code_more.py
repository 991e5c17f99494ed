"""Real code, continued: functions with no source file, try/except and context managers,
other libraries' Python code (scipy.optimize.rosen), sorting, masks, indexing on any axis.
Every gradient against central differences, every value against numpy."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.optimize import rosen, rosen_der

import gradjit as gj


def central(f, x, eps=1e-6):
    x = np.asarray(x, dtype=float)
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[i] = eps
        g[i] = (f(x + e) - f(x - e)) / (2 * eps)
    return g


def check(f, x, atol=1e-5):
    np.testing.assert_allclose(gj.jit(f)(x), f(x), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(gj.grad(f)(x), central(f, x), rtol=1e-5, atol=atol)


RNG = np.random.default_rng(3)
X = RNG.normal(size=6)
A = RNG.normal(size=(4, 5))


# -- no source: exec, python -c, the prompt -----------------------------------------------------

SOURCE = """
import numpy as np

def loss(w, scale=2.0):
    h = np.tanh(w * scale)
    return np.sum(h ** 2) + 0.1 * np.linalg.norm(w) + np.mean(h)

def chained(w):
    return np.exp(loss(w) / 10.0) + w[0] * w[1]

softplus = lambda w: np.sum(np.log1p(np.exp(w)))

def branches(w):
    if w[0] > 0:
        return np.sum(w)
    return np.sum(-w)

def loops(w):
    s = 0.0
    for k in range(3):
        s = s + w[k] ** 2 * (k + 1)
    return s
"""


@pytest.fixture(scope="module")
def made_by_exec():
    ns = {}
    exec(compile(SOURCE, "<string>", "exec"), ns)  # noqa: S102
    return ns


@pytest.mark.parametrize("name", ["loss", "chained", "softplus"])
def test_functions_made_by_exec(made_by_exec, name):
    check(made_by_exec[name], X)


def test_no_source_with_vmap_and_jacobian(made_by_exec):
    f = made_by_exec["loss"]
    xs = RNG.normal(size=(3, 6))
    np.testing.assert_allclose(gj.vmap(f)(xs), [f(x) for x in xs])
    np.testing.assert_allclose(gj.jacobian(lambda w: np.tanh(w) * 2)(X),
                               np.diag(2 / np.cosh(X) ** 2), rtol=1e-10)


def test_no_source_static_loop_over_a_known_length(made_by_exec):
    check(made_by_exec["loops"], X)  # a static trip count: Python unrolls it


def test_no_source_branch_on_a_value_says_where_and_why(made_by_exec):
    with pytest.raises(gj.TraceError) as ei:
        gj.grad(made_by_exec["branches"])(X)
    msg = str(ei.value)
    assert "<string>:" in msg and "notebook cell" in msg and "branches" in msg


# -- try/except/finally and context managers ---------------------------------------------------


def safe_log_loss(x, eps=1e-12):
    try:
        if x.ndim != 1:
            raise ValueError("expects a vector")
        out = np.sum(np.log(x * x + eps))
    except (ValueError, TypeError):
        out = np.sum(x)
    finally:
        done = True
    return out if done else 0.0


def falls_back(x):
    try:
        w = {"a": 2.0}["b"]  # a KeyError while tracing: the handler runs, as in Python
    except KeyError as e:
        w = 0.5 if str(e) == "'b'" else 9.0
    return np.sum(np.sin(x) * w)


def returns_in_try(x):
    try:
        return np.sum(x ** 3)
    except ZeroDivisionError:
        return 0.0
    finally:
        pass


def reraises(x):
    try:
        raise KeyError("k")
    except KeyError:
        try:
            raise
        except KeyError:
            return np.sum(x * 3.0)


def with_errstate(x):
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        y = np.log(np.abs(x)) * x
    with np.errstate(all="raise"):
        z = np.sum(np.sqrt(x * x + 1.0))
    return np.sum(y) + z


class Tally:
    def __init__(self):
        self.entered = 0

    def __enter__(self):
        self.entered += 1
        return 3.0

    def __exit__(self, *exc):
        return False


TALLY = Tally()


def with_own_manager(x):
    with TALLY as k:
        y = np.sum(x * k)
    return y


@pytest.mark.parametrize("f", [safe_log_loss, falls_back, returns_in_try, reraises,
                               with_errstate, with_own_manager])
def test_try_except_and_with(f):
    check(f, X)


def test_try_loop_break_inside():
    def first_big(x):
        s = 0.0
        for i in range(x.shape[0]):
            try:
                s = s + x[i] ** 2
                if s > 2.0:
                    break
            finally:
                s = s * 1.0
        return s
    check(first_big, X)


def test_exception_under_a_traced_branch_is_not_caught():
    def f(x):
        try:
            if np.sum(x) > 0:
                raise ValueError("positive")
            y = x
        except ValueError:
            y = -x
        return np.sum(y)
    with pytest.raises(gj.TraceError) as ei:
        gj.grad(f)(X)
    assert "positive" in str(ei.value)


# -- other libraries' Python code --------------------------------------------------------------


def test_scipy_rosen_and_rosen_der():
    x = np.array([0.5, 1.2, -0.3, 0.8, 1.1])
    np.testing.assert_allclose(gj.jit(rosen)(x), rosen(x), rtol=1e-12)
    np.testing.assert_allclose(gj.grad(rosen)(x), rosen_der(x), rtol=1e-10)
    np.testing.assert_allclose(gj.jit(rosen_der)(x), rosen_der(x), rtol=1e-12)
    check(lambda x: np.sum(rosen_der(x) ** 2) + rosen(x), x, atol=1e-3)
    np.testing.assert_allclose(gj.grad(lambda p: rosen(p * 2.0))(x), 2 * rosen_der(2 * x))


def test_compiled_function_without_a_rule_points_to_custom_vjp():
    import scipy.special as sps
    with pytest.raises(gj.TraceError) as ei:
        gj.grad(lambda x: np.sum(sps.j0(x)))(X)  # a ufunc of scipy's with no rule
    assert "j0" in str(ei.value) and "custom_vjp" in str(ei.value)


# -- sorting, masks, indexing on any axis, more numpy ------------------------------------------


def trimmed_mean_loss(x):
    s = np.sort(x)
    return np.mean(s[1:-1] ** 2)  # drop the extremes


def quantile_weighted(x):
    ranks = np.arange(x.shape[0]) + 1.0
    return np.sum(np.sort(x)[::-1] * ranks) + np.median(x) ** 2


def hinge_masks(x):
    pos = x[x > 0]
    neg = x[x <= 0]
    return np.sum(pos ** 2) + np.mean(np.abs(neg)) + x[x > -1.0].max() + len_free(x)


def len_free(x):
    return np.sum(np.where(x > 0, x, 0.0))  # the same as np.sum(x[x > 0])


def clip_in_place(x):
    y = x.copy()
    y[y < 0] = 0.0
    y[y > 1] = y[y > 1] * 0.5
    return np.sum(y ** 2)


def columns(A):
    idx = np.array([4, 0, 2])
    return np.sum(A[:, idx] ** 2 * np.arange(1.0, 4.0)) + np.trace(A[:, :4], offset=1)


def shapes_and_more(A):
    v = A[0]
    M = np.column_stack([v, v ** 2])
    out = np.sum(np.atleast_2d(v) @ M) + np.sum(np.repeat(v, 2) * np.arange(10.0))
    out = out + np.sum(np.append(v, A[1]) ** 2) + np.linalg.norm(v, 3) + np.linalg.norm(v, 4)
    out = out + np.sum(np.diag(A[:4, :4], k=1)) + np.sum(np.degrees(v) * np.deg2rad(v))
    out = out + np.average(A, axis=1, weights=np.arange(1.0, 6.0)).sum() + np.size(A) * 1e-3
    return out + np.float64(np.int64(3.7)) * np.sum(v) if np.any(A > -10) else out


@pytest.mark.parametrize("f, x", [(trimmed_mean_loss, X), (quantile_weighted, X),
                                  (hinge_masks, X), (clip_in_place, X * 2), (columns, A),
                                  (shapes_and_more, A)])
def test_numpy_in_real_code(f, x):
    check(f, x)


def test_a_masked_selection_used_as_an_array_is_an_error():
    with pytest.raises(gj.TraceError) as ei:
        gj.grad(lambda x: np.sum(x[x > 0] @ np.ones(3)))(X)
    assert "np.where" in str(ei.value)


def test_sort_under_vmap():
    xs = RNG.normal(size=(3, 5))
    np.testing.assert_allclose(gj.vmap(np.sort)(xs), np.sort(xs, axis=1))
    np.testing.assert_allclose(gj.vmap(lambda x: np.argsort(-x))(xs), np.argsort(-xs, axis=1))
    g = gj.vmap(gj.grad(trimmed_mean_loss))(xs)
    np.testing.assert_allclose(g, [central(trimmed_mean_loss, x) for x in xs], atol=1e-5)
