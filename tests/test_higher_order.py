"""Higher-order derivatives, Jacobians and Hessians, scipy interop and numba-callable kernels."""

import os
import sys

import numpy as np
import pytest
from scipy.optimize import minimize

import gradjit as gj

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples"))


def f_xw(x, w):
    return (x + 5 * w) ** 2


def test_tutorial_mixed_partials():
    assert gj.grad(f_xw)(2.0, 3.0) == 34.0
    assert gj.grad(f_xw, argnums=1)(2.0, 3.0) == 170.0
    assert gj.grad(gj.grad(f_xw))(2.0, 3.0) == 2.0
    assert gj.grad(gj.grad(f_xw), argnums=1)(2.0, 3.0) == 10.0
    assert gj.grad(gj.grad(f_xw, argnums=1))(2.0, 3.0) == 10.0
    assert gj.grad(gj.grad(f_xw, argnums=1), argnums=1)(2.0, 3.0) == 50.0


def f_vec(p):
    return (p[0] + 5 * p[1]) ** 2


def test_hessian_in_one_call():
    np.testing.assert_allclose(gj.hessian(f_vec)(np.array([2.0, 3.0])), [[2, 10], [10, 50]])


@pytest.mark.parametrize("x", [0.3, -1.2, 2.5])
def test_third_derivative(x):
    g3 = gj.grad(gj.grad(gj.grad(lambda x: np.sin(x) * x**4)))
    want = -np.cos(x) * x**4 - 12 * np.sin(x) * x**3 + 36 * np.cos(x) * x**2 + 24 * np.sin(x) * x
    assert np.isclose(g3(x), want, rtol=1e-10)


def test_grad_of_value_and_grad():
    h = gj.grad(lambda x: gj.value_and_grad(lambda y: np.sum(y**3))(x)[1].sum())
    x = np.array([0.5, -1.0, 2.0])
    np.testing.assert_allclose(h(x), 6 * x)


def B(p):
    x, y, z = p[0], p[1], p[2]
    return np.stack([x**3 - y**2, y**2 + z**2, z**3 - x**2])


def test_jacobian_closed_form():
    p = np.array([1.5, -2.0, 0.5])
    x, y, z = p
    want = [[3 * x**2, -2 * y, 0], [0, 2 * y, 2 * z], [-2 * x, 0, 3 * z**2]]
    np.testing.assert_allclose(gj.jacobian(B)(p), want)


def test_jacobian_shapes_any_rank():
    M = np.random.default_rng(0).normal(size=(3, 4))
    J = gj.jacobian(lambda X: np.tanh(X) * 2.0)(M)
    assert J.shape == (3, 4, 3, 4)
    np.testing.assert_allclose(J.reshape(12, 12), np.diag((2 / np.cosh(M) ** 2).ravel()), atol=1e-12)


def _fd_hessian(f, x, eps=1e-5):
    g = gj.grad(f)
    n = x.size
    H = np.empty((n, n))
    for i in range(n):
        e = np.zeros(n)
        e[i] = eps
        H[i] = (g(x + e) - g(x - e)) / (2 * eps)
    return H


def test_hessian_random_quadratic():
    A = np.random.default_rng(1).normal(size=(5, 5))
    q = lambda x: 0.5 * x @ A @ x  # noqa: E731
    np.testing.assert_allclose(gj.hessian(q)(np.ones(5)), (A + A.T) / 2, atol=1e-12)


def logsumexp(x):
    m = gj.stop_gradient(np.max(x))
    return m + np.log(np.sum(np.exp(x - m)))


def test_hessian_logsumexp_closed_form():
    x = np.array([0.1, -0.5, 1.2, 0.3])
    p = np.exp(x - logsumexp_np(x))
    np.testing.assert_allclose(gj.hessian(logsumexp)(x), np.diag(p) - np.outer(p, p), atol=1e-12)


def logsumexp_np(x):
    return np.log(np.sum(np.exp(x)))


def mlp(w, X=np.random.default_rng(2).normal(size=(6, 3))):
    W1 = w[:6].reshape(3, 2)
    W2 = w[6:]
    return np.sum(np.tanh(X @ W1) @ W2) ** 2 / 6


def test_hessian_small_mlp_against_finite_differences():
    w = np.random.default_rng(3).normal(size=8)
    np.testing.assert_allclose(gj.hessian(mlp)(w), _fd_hessian(mlp, w), rtol=1e-5, atol=1e-6)


def rosen(p):
    return (1 - p[0]) ** 2 + 2 * (p[1] - p[0] ** 2) ** 2


@pytest.mark.parametrize("method", ["Newton-CG", "trust-exact"])
def test_scipy_newton(method):
    r = minimize(rosen, np.array([3.0, 2.0]), jac=gj.grad(rosen), hess=gj.hessian(rosen), method=method)
    np.testing.assert_allclose(r.x, [1.0, 1.0], atol=1e-5)


def himmelblau(x):
    return (x[0] ** 2 + x[1] - 11) ** 2 + (x[0] + x[1] ** 2 - 7) ** 2


def test_grad_inside_jit_compiles_into_one_kernel():
    @gj.jit
    def two_steps(x, lr):
        x = x - lr * gj.grad(himmelblau)(x)
        return x - lr * gj.grad(himmelblau)(x)

    x0 = np.array([1.0, 1.0])
    g = gj.grad(himmelblau)
    x1 = x0 - 0.01 * g(x0)
    np.testing.assert_allclose(two_steps(x0, 0.01), x1 - 0.01 * g(x1))


def test_numba_callable_gradient_hmc():
    import hmc
    s = hmc.run(n=6000)
    np.testing.assert_allclose(s.mean(0), hmc.MEAN, atol=0.12)
    np.testing.assert_allclose(np.cov(s.T), np.linalg.inv(hmc.PREC), atol=0.15)


def test_hmc_gradient_kernel_and_leapfrog_energy():
    """The sampling test above passes with a wrong gradient (the Metropolis step corrects it,
    mixing only slows): check the kernel the sampler calls against the closed form and against
    differences of the plain numpy log-density, and that the leapfrog it drives conserves the
    energy: on a Gaussian its relative error stays below (eps w)^2 / 4 ~ 0.006 for the stiffest
    frequency w = 1.55, while a gradient 10% off drifts it by ~0.09 of itself."""
    import hmc
    g = hmc.gradient_kernel()
    rng = np.random.default_rng(3)
    h = 1e-6
    for _ in range(4):
        x = rng.standard_normal(2) * 2
        got = g(x, hmc.PREC, hmc.MEAN)
        np.testing.assert_allclose(got, -hmc.PREC @ (x - hmc.MEAN), rtol=1e-12, atol=1e-12)
        fd = [(hmc.log_density(x + e, hmc.PREC, hmc.MEAN)
               - hmc.log_density(x - e, hmc.PREC, hmc.MEAN)) / (2 * h) for e in np.eye(2) * h]
        np.testing.assert_allclose(got, fd, rtol=1e-7, atol=1e-7)
    leapfrog = hmc.make_leapfrog(g)
    for _ in range(4):
        x, p = hmc.MEAN + 1.5 * rng.standard_normal(2), rng.standard_normal(2)
        h0 = hmc.energy(x, p, hmc.PREC, hmc.MEAN)
        for _ in range(100):  # one step at a time: the energy along the whole trajectory
            x, p = leapfrog(x, p, hmc.PREC, hmc.MEAN, 0.1, 1)
            assert abs(hmc.energy(x, p, hmc.PREC, hmc.MEAN) - h0) < 0.01 * h0
