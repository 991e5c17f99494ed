"""The benchmark workloads as a user writes them (plain numpy), their inputs, and their
results derived by hand in numpy (the `numpy` contestant and the reference every other
contestant is checked against).

The plain functions are what gradjit, jax and autograd differentiate; keep them literally
as the README/API would show them. All data is float64 from a fixed seed.

W*: straight-line numpy (gradients). L*: Python control flow on values (element loops,
loops carrying state, a whole descent loop). J*: Jacobians, Hessians, and a gradient
called from the user's own numba code.
"""

import importlib
import math

import numpy as np


class _Lazy:
    """`gj` for the workloads below, imported on first use: importing this module must not
    import gradjit (benchmarks/coldstart.py times that import on its own)."""

    def __getattr__(self, name):
        return getattr(importlib.import_module("gradjit"), name)


gj = _Lazy()

SEED = 0

# ---------------------------------------------------------------------------------------
# Functions to differentiate
# ---------------------------------------------------------------------------------------


def poly(x):
    """W1: a scalar polynomial."""
    return x**2 + x**3 + 5


def himmelblau(x):
    """W2: Himmelblau's function of a 2-vector."""
    return (x[0] ** 2 + x[1] - 11) ** 2 + (x[0] + x[1] ** 2 - 7) ** 2


class HimmelblauModel:
    """W2 with its constants read through ``self`` (three guarded scalars at every call)."""

    a, b, c = 11.0, 7.0, 2.0

    def loss(self, x):
        return (x[0] ** self.c + x[1] - self.a) ** 2 + (x[0] + x[1] ** 2 - self.b) ** 2


def poly_sum(x):
    """W3a: an elementwise polynomial, summed."""
    return np.sum(x**2 + x**3 + 5)


def sin_exp_sum(x):
    """W3b: transcendental elementwise chain, summed."""
    return np.sum(np.sin(x) * np.exp(-x * x))


def mse(w, b, X, y):
    """W4: mean squared error of a linear model; differentiate w.r.t. (w, b)."""
    return np.mean((X @ w + b - y) ** 2)


def softmax_xent(W, X, y):
    """W5: mean softmax cross-entropy of a linear layer with integer labels."""
    z = X @ W
    m = np.max(z, axis=1, keepdims=True)
    logp = z - m - np.log(np.sum(np.exp(z - m), axis=1, keepdims=True))
    return -np.mean(logp[np.arange(X.shape[0]), y])


# ---------------------------------------------------------------------------------------
# Inputs (a fresh generator per call, so every size is reproducible on its own)
# ---------------------------------------------------------------------------------------


def poly_input():
    return 2.0


def himmelblau_input():
    return np.array([1.5, -0.75])


def vector_input(n):
    # Uniform on [-3, 3]: both terms of sin(x)*exp(-x*x) matter there.
    return np.random.default_rng(SEED).uniform(-3.0, 3.0, n)


def linear_inputs(n, d=16):
    rng = np.random.default_rng(SEED)
    X = rng.standard_normal((n, d))
    w = rng.standard_normal(d)
    y = X @ rng.standard_normal(d) + 0.1 * rng.standard_normal(n)
    return w, 0.5, X, y


def softmax_inputs(n, d=32, k=10):
    rng = np.random.default_rng(SEED)
    X = rng.standard_normal((n, d))
    W = 0.1 * rng.standard_normal((d, k))
    y = rng.integers(0, k, n)
    return W, X, y


# ---------------------------------------------------------------------------------------
# Analytic gradients in numpy
# ---------------------------------------------------------------------------------------


def poly_grad(x):
    return 2 * x + 3 * x * x


def himmelblau_grad(x):
    a = x[0] ** 2 + x[1] - 11
    c = x[0] + x[1] ** 2 - 7
    return np.array([4 * a * x[0] + 2 * c, 2 * a + 4 * c * x[1]])


def poly_sum_grad(x):
    return x * (2 + 3 * x)


def sin_exp_sum_grad(x):
    return np.exp(-x * x) * (np.cos(x) - 2 * x * np.sin(x))


def mse_grad(w, b, X, y):
    r = X @ w + (b - y)
    r *= 2 / len(y)
    return X.T @ r, r.sum()


def softmax_xent_grad(W, X, y):
    z = X @ W
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z, out=z)
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(y)), y] -= 1
    return X.T @ p / len(y)


# =======================================================================================
# Control flow (L*)
# =======================================================================================


def energy(x):
    """L1: a numba-style element loop (the `energy` of the control-flow issue)."""
    s = 0.0
    for i in range(x.shape[0] - 1):
        d = x[i + 1] - x[i]
        s += d * d + np.cos(x[i])
    return s


def energy_numpy(x):
    """L1's forward pass in numpy (the reference for the forward timings)."""
    d = np.diff(x)
    return np.sum(d * d + np.cos(x[:-1]))


def energy_grad(x):
    d = np.diff(x)
    g = np.zeros_like(x)
    g[1:] += 2 * d
    g[:-1] -= 2 * d + np.sin(x[:-1])
    return g


def lotka_volterra(p, y0, dt, steps):
    """L2: explicit Euler for the Lotka-Volterra equations; the final state (prey,
    predators). Its Jacobian w.r.t. the parameters p is the sensitivity."""
    u = y0[0]
    v = y0[1]
    for _ in range(steps):
        du = p[0] * u - p[1] * u * v
        dv = p[2] * u * v - p[3] * v
        u = u + dt * du
        v = v + dt * dv
    return np.array([u, v])


LV_HORIZON = 10.0  # integrated time; dt = horizon / steps, so every size solves one problem


def lotka_volterra_inputs(steps):
    return np.array([1.1, 0.4, 0.1, 0.4]), np.array([10.0, 5.0]), LV_HORIZON / steps, steps


def lotka_volterra_jacobian(p, y0, dt, steps):
    """d(final state)/dp by forward sensitivities S = dy/dp, carried along the Euler steps
    (a different method from the adjoint the contestants use)."""
    a, b, c, e = (float(t) for t in p)
    u, v = float(y0[0]), float(y0[1])
    S = [[0.0] * 4, [0.0] * 4]
    for _ in range(steps):
        # d(du)/d(u, v) and d(dv)/d(u, v); explicit partials in p
        fu, fv = a - b * v, -b * u
        gu, gv = c * v, c * u - e
        pf = (u, -u * v, 0.0, 0.0)
        pg = (0.0, 0.0, u * v, -v)
        S = [
            [S[0][k] + dt * (fu * S[0][k] + fv * S[1][k] + pf[k]) for k in range(4)],
            [S[1][k] + dt * (gu * S[0][k] + gv * S[1][k] + pg[k]) for k in range(4)],
        ]
        u, v = u + dt * (a * u - b * u * v), v + dt * (c * u * v - e * v)
    return np.array(S)


def descend(x, lr, steps):
    """L3: a whole gradient descent on Himmelblau's function, as one compiled call (gradjit
    traces `gj.grad` inside it into the same kernel)."""
    for _ in range(steps):
        x = x - lr * gj.grad(himmelblau)(x)
    return x


def descend_inputs(steps):
    return np.zeros(2), 0.001, steps


def descend_reference(x, lr, steps):
    x0, x1 = float(x[0]), float(x[1])
    for _ in range(steps):
        a = x0 * x0 + x1 - 11
        c = x0 + x1 * x1 - 7
        x0, x1 = x0 - lr * (4 * a * x0 + 2 * c), x1 - lr * (2 * a + 4 * c * x1)
    return np.array([x0, x1])


# =======================================================================================
# Higher order (J*)
# =======================================================================================


def cubic_map(p):
    """J1: B(x, y, z) = [x^3 - y^2, y^2 + z^2, z^3 - x^2]; batched 3x3 Jacobians."""
    x, y, z = p[0], p[1], p[2]
    return np.array([x**3 - y**2, y**2 + z**2, z**3 - x**2])


def points(n):
    return (np.random.default_rng(SEED).standard_normal((n, 3)),)


def cubic_map_jacobians(P):
    x, y, z = P[:, 0], P[:, 1], P[:, 2]
    J = np.zeros((len(P), 3, 3))
    J[:, 0, 0], J[:, 0, 1] = 3 * x**2, -2 * y
    J[:, 1, 1], J[:, 1, 2] = 2 * y, 2 * z
    J[:, 2, 0], J[:, 2, 2] = -2 * x, 3 * z**2
    return J


def two_param(p):
    """J2: f(x, w) = (x + 5w)^2 + sin(x w) as a function of the 2-vector p = (x, w)."""
    return (p[0] + 5 * p[1]) ** 2 + np.sin(p[0] * p[1])


def two_param_input(n=None):
    return (np.array([2.0, 3.0]),)


def two_param_hessian(p):
    x, w = float(p[0]), float(p[1])
    s, c = math.sin(x * w), math.cos(x * w)
    hxw = 10 + c - x * w * s
    return np.array([[2 - w * w * s, hxw], [hxw, 50 - x * x * s]])


def log_density(x, A):
    """J3, J4: a correlated Gaussian with a quartic term (heavier-tailed than Gaussian)."""
    return -0.5 * x @ A @ x - 0.25 * np.sum(x**4)


def log_density_inputs(d):
    """A point and a random symmetric positive-definite precision matrix (d x d)."""
    rng = np.random.default_rng(SEED)
    Q = rng.standard_normal((d, d)) / np.sqrt(d)
    return 0.3 * rng.standard_normal(d), Q @ Q.T + np.eye(d)


def log_density_grad(x, A):
    return -0.5 * (A + A.T) @ x - x**3


def log_density_hessian(x, A):
    return -0.5 * (A + A.T) - np.diag(3 * x**2)


HMC_STEPS = 1000  # leapfrog steps per timed trajectory (J4)
HMC_EPS = 0.01


def leapfrog_inputs(d):
    x, A = log_density_inputs(d)
    p = np.random.default_rng(SEED + 1).standard_normal(d)
    return x, p, A, HMC_EPS, HMC_STEPS


def leapfrog_reference(x, p, A, eps, steps):
    """J4: a leapfrog trajectory on log_density (the HMC integrator), in numpy."""
    x, p = x.copy(), p + 0.5 * eps * log_density_grad(x, A)
    for _ in range(steps):
        x = x + eps * p
        p = p + eps * log_density_grad(x, A)
    return x, p - 0.5 * eps * log_density_grad(x, A)
