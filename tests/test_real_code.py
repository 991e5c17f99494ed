"""Numpy code as people write it (test-problem classes with an evaluation counter, models as
objects, Gaussian processes, ODE integrators, NamedTuples of parameters, scipy helpers), each
compiled by gradjit: values against plain Python/numpy, gradients against central differences.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np
import pytest
import scipy.special as sps

import gradjit as gj


def central(f, x, eps=1e-6):
    """d f / d x by central differences, for a float or an array ``x``."""
    x = np.asarray(x, dtype=np.float64)
    g = np.zeros_like(x)
    for k in np.ndindex(*x.shape):
        e = np.zeros_like(x)
        e[k] = eps
        g[k] = (f(x + e) - f(x - e)) / (2 * eps)
    return g if x.ndim else float(g)


def close(a, b, rtol=1e-6, atol=1e-8):
    np.testing.assert_allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float),
                               rtol=rtol, atol=atol)


X4 = np.array([0.3, -1.2, 0.7, 2.0])


# ---- objects with state: methods, counters, logs ----------------------------------------------


class Rosen:
    """A test problem as optimisation benchmarks write it."""

    def __init__(self, n):
        self.nfev = 0
        self.shift = np.linspace(0.1, 0.4, n)
        self.history = []

    def fun(self, x):
        self.nfev += 1
        z = x - self.shift
        return np.sum(100.0 * (z[1:] - z[:-1] ** 2) ** 2 + (1 - z[:-1]) ** 2)


def test_counter_counts_every_call_through_a_lambda_and_a_bound_method():
    p = Rosen(4)
    g_lambda = gj.grad(lambda x: p.fun(x))
    g_method = gj.grad(p.fun)
    want = central(Rosen(4).fun, X4)
    for _ in range(4):  # the later calls take the compiled fast path
        close(g_lambda(X4), want, rtol=1e-5)
        close(g_method(X4), want, rtol=1e-5)
    assert p.nfev == 8
    v, g = gj.value_and_grad(p.fun)(X4)
    assert p.nfev == 9
    close(v, Rosen(4).fun(X4))
    p.shift = p.shift * 2  # attribute reads stay fresh
    q = Rosen(4)
    q.shift = q.shift * 2
    close(g_lambda(X4), central(q.fun, X4), rtol=1e-5)
    assert p.nfev == 10


def test_counter_counts_after_the_memory_cache_is_cleared():
    p = Rosen(3)
    g = gj.grad(lambda x: p.fun(x))
    g(X4[:3])
    gj.clear_cache(memory=True)
    g2 = gj.grad(lambda x: p.fun(x))
    g2(X4[:3])
    g2(X4[:3])
    assert p.nfev == 3


def test_effects_replay_in_program_order_with_static_operands():
    log = []

    class Model:
        def __init__(self):
            self.calls = 0
            self.seen = {}
            self.w = np.array([1.0, -2.0, 0.5, 3.0])

        def loss(self, x, tag):
            self.calls = self.calls + 1
            for k in range(2):  # a static loop: unrolled, each append replayed
                log.append((tag, k))
            self.seen[tag] = self.seen.get(tag, 0) + 1
            return np.sum(self.w * x ** 2)

    m = Model()
    g = gj.grad(m.loss, static_argnames="tag")
    for _ in range(3):
        close(g(X4, "a"), 2 * m.w * X4)
    g(X4, tag="b")
    assert m.calls == 4
    assert log == [("a", 0), ("a", 1)] * 3 + [("b", 0), ("b", 1)]
    assert m.seen == {"a": 3, "b": 1}


def test_effects_that_depend_on_traced_values_raise():
    class Tracker:
        best = 0.0
        nfev = 0

    t = Tracker()

    def keeps_value(x):
        t.best = np.sum(x)
        return np.sum(x ** 2)

    def under_dynamic_if(x):
        if np.sum(x) > 0:
            t.nfev += 1
        return np.sum(x ** 2)

    def reads_after_write(x):
        t.nfev += 1
        return np.sum(x) * t.nfev

    with pytest.raises(gj.TraceError, match="test_real_code.py:.*has_aux"):
        gj.grad(keeps_value)(X4)
    with pytest.raises(gj.TraceError, match="under an if or a loop"):
        gj.grad(under_dynamic_if)(X4)
    with pytest.raises(gj.TraceError, match="read after the function changed it"):
        gj.grad(reads_after_write)(X4)
    assert t.nfev == 0 and t.best == 0.0


class Affine:
    """A model as an object: ``__call__``, a property, a helper method."""

    def __init__(self):
        self.W = np.array([[1.0, 0.5, -0.3, 0.2], [0.1, -1.0, 0.4, 0.7]])
        self.b = np.array([0.2, -0.1])
        self.calls = 0

    @property
    def scale(self):
        return 0.5

    def act(self, z):
        return np.tanh(z) * self.scale

    def __call__(self, x):
        self.calls += 1
        return np.sum(self.act(self.W @ x + self.b) ** 2)


def test_callable_objects_properties_and_helpers():
    m = Affine()
    ref = Affine()
    want = central(ref, X4)
    close(gj.grad(m)(X4), want, rtol=1e-5)
    close(gj.grad(lambda x: m(x))(X4), want, rtol=1e-5)
    close(gj.jit(m)(X4), ref(X4))
    assert m.calls == 3


# ---- Python containers and built-ins -------------------------------------------------------------


A = [3, 5, 2, 1, 7]


def builtins_loss(x):
    d = x[0] - A[1]  # a list constant
    s = max(abs(x)) + min(x) + sum(x)
    for i, v in enumerate(x):  # a loop over an array whose length is known only at run time
        s = s + i * v ** 2
    for a, w in zip(x, x):
        s = s + 0.1 * a * w
    y = np.array([x[0], x[1], x[2]])
    s = s + sum(a * c for a, c in zip(y, [1.0, 2.0, 3.0]))  # static length: unrolled
    s = s + sum(list(y)) + max(tuple(y)) + sum(map(lambda v: v ** 3, y))
    s = s + sum(v * k for k, v in enumerate(y))
    return s + d ** 2


def test_builtins_over_arrays_and_containers():
    close(gj.jit(builtins_loss)(X4), builtins_loss(X4))
    close(gj.grad(builtins_loss)(X4), central(builtins_loss, X4), rtol=1e-5)


def test_zip_of_an_unknown_length_array_with_a_list_checks_the_length():
    def f(x):
        return sum(a * c for a, c in zip(x, [1.0, 2.0, 3.0, 4.0]))
    close(gj.grad(f)(X4), [1.0, 2.0, 3.0, 4.0])
    with pytest.raises(gj.GradjitError, match="length"):
        gj.grad(f)(X4[:3])


# ---- calls: keyword arguments, defaults, static_argnames -----------------------------------------


def penalised(x, lam=0.5, p=2, mode="l2"):
    r = np.sum(np.abs(x) ** p)
    return lam * (r if mode == "l2" else np.sqrt(r))


def test_keyword_arguments_and_static_argnames():
    g = gj.grad(penalised)
    close(g(X4, lam=0.3), central(lambda x: penalised(x, 0.3), X4), rtol=1e-5)
    close(g(X4), central(penalised, X4), rtol=1e-5)
    gs = gj.grad(penalised, static_argnames=("mode",))
    close(gs(X4, mode="l1"), central(lambda x: penalised(x, mode="l1"), X4), rtol=1e-5)
    vg = gj.value_and_grad(penalised, argnums=1)
    v, dl = vg(X4, lam=2.0)
    close(v, penalised(X4, 2.0))
    close(dl, central(lambda lam: penalised(X4, lam), 2.0), rtol=1e-6)
    with pytest.raises(TypeError, match="unexpected keyword"):
        g(X4, nope=1.0)
    h = gj.hessian(lambda x, c=1.0: c * np.sum(x ** 3))
    close(h(X4, c=2.0), np.diag(12 * X4))


# ---- pytrees: NamedTuple and dataclass parameters ------------------------------------------------


class Params(NamedTuple):
    w: np.ndarray
    b: float


@dataclasses.dataclass
class DParams:
    w: np.ndarray
    b: np.ndarray


XS = np.linspace(-1.0, 1.0, 6)
YS = np.sin(2 * XS)


def mse(p, x, y):
    return np.mean((p.w[0] * x + p.w[1] * x ** 2 + p.b - y) ** 2)


def test_namedtuple_and_dataclass_parameters():
    p = Params(np.array([0.5, -0.2]), 0.1)
    g = gj.grad(mse)(p, XS, YS)
    assert type(g) is Params
    close(g.w, central(lambda w: mse(Params(w, 0.1), XS, YS), p.w), rtol=1e-5)
    close(g.b, central(lambda b: mse(Params(p.w, b), XS, YS), 0.1), rtol=1e-5)
    d = DParams(np.array([0.5, -0.2]), np.array(0.1))
    gd = gj.grad(mse)(d, XS, YS)
    assert type(gd) is DParams
    close(gd.w, g.w)
    close(gd.b, g.b)
    out = gj.jit(lambda p: Params(p.w * 2, p.b + 1))(p)  # results keep their type too
    assert type(out) is Params
    close(out.w, p.w * 2)


# ---- a Gaussian process, an ODE integrator ---------------------------------------------------


def gp_nll(theta, x, y):
    ell, sf, sn = np.exp(theta[0]), np.exp(theta[1]), np.exp(theta[2])
    n = x.shape[0]
    K = sf ** 2 * np.exp(-(x[:, None] - x[None, :]) ** 2 / (2 * ell ** 2))
    K = K + (sn ** 2 + 1e-3) * np.eye(n)
    alpha = np.linalg.solve(K, y)
    sign, logdet = np.linalg.slogdet(K)
    return 0.5 * y @ alpha + 0.5 * logdet + 0.5 * n * np.log(2 * np.pi)


def test_gp_marginal_likelihood_with_eye_of_n():
    theta = np.array([0.1, 0.2, -1.0])
    g = gj.grad(gp_nll)(theta, XS, YS)
    close(g, central(lambda t: gp_nll(t, XS, YS), theta), rtol=1e-5)
    close(gj.jit(gp_nll)(theta, XS, YS), gp_nll(theta, XS, YS))
    x7 = np.linspace(-1, 1, 7)  # a new length: the same kernel
    close(gj.grad(gp_nll)(theta, x7, np.cos(x7)),
          central(lambda t: gp_nll(t, x7, np.cos(x7)), theta), rtol=1e-5)


def rk4_loss(y0, k, dt=0.05, steps=25):
    def f(y):
        return -k * y + np.sin(y[::-1])

    y = y0
    for _ in range(steps):
        k1 = f(y)
        k2 = f(y + dt / 2 * k1)
        k3 = f(y + dt / 2 * k2)
        k4 = f(y + dt * k3)
        y = y + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return np.sum(np.diff(y) ** 2) + np.sum(y ** 2)


def test_rk4_integrator():
    y0 = np.array([1.0, 0.5, -0.3])
    gy, gk = gj.grad(rk4_loss, argnums=(0, 1))(y0, 0.7)
    close(gy, central(lambda y: rk4_loss(y, 0.7), y0), rtol=1e-5)
    close(gk, central(lambda k: rk4_loss(y0, k), 0.7), rtol=1e-5)


# ---- scipy.special and constant index arrays -------------------------------------------------


def logistic_nll(w, X, y):
    z = X @ w
    p = sps.expit(z)
    ll = sps.xlogy(y, p) + sps.xlogy(1 - y, 1 - p)
    return -np.sum(ll) + 0.1 * sps.logsumexp(w) + np.sum(sps.gammaln(w ** 2 + 1.5)) \
        + np.sum(sps.erf(w))


def softmax_xent(W, X):
    logp = sps.log_softmax(X @ W, axis=1)
    labels = np.array([1, 0, 2, 1, 0])
    return -np.mean(logp[np.arange(5), labels]) + np.sum(sps.softmax(W, axis=0)[np.arange(2)])


def test_scipy_special_helpers():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(5, 3))
    y = np.array([1.0, 0.0, 1.0, 1.0, 0.0])
    w = np.array([0.2, -0.4, 0.3])
    close(gj.jit(logistic_nll)(w, X, y), logistic_nll(w, X, y))
    close(gj.grad(logistic_nll)(w, X, y), central(lambda v: logistic_nll(v, X, y), w),
          rtol=1e-5)
    W = rng.normal(size=(3, 3))
    close(gj.jit(softmax_xent)(W, X), softmax_xent(W, X))
    close(gj.grad(softmax_xent)(W, X), central(lambda v: softmax_xent(v, X), W), rtol=1e-5)


def test_constant_integer_index_arrays():
    def f(x):
        return np.sum(x[np.arange(2)] ** 2) + np.sum(x[[0, 3, 3]])
    close(gj.grad(f)(X4), central(f, X4), rtol=1e-6)
