"""The benchmark workloads as a user writes them (plain numpy), their inputs, and their
gradients derived by hand in numpy (the `numpy` contestant and the reference every other
contestant is checked against).

The plain functions are what gradjit, jax and autograd differentiate; keep them literally
as the README/API would show them. All data is float64 from a fixed seed.
"""

import numpy as np

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
