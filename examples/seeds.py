"""The workloads of the tutorials gradjit was started from, written in plain numpy.

Each function returns (what it computed, the value a reader should expect) so that
``run_all.py`` can print both side by side.
"""

import numpy as np

import gradjit as gj


# --- Simple gradient (TF/PyTorch tutorial) --------------------------------------------------
def func(x):
    return x**2 + x**3 + 5


def simple_gradient():
    return gj.grad(func)(2.0), 16.0


# --- Gradient of 2 x.x (d2l) ------------------------------------------------------------------
def dot_twice(x):
    return 2 * np.dot(x, x)


def dot_gradient():
    x = np.arange(4.0)
    return gj.grad(dot_twice)(x), 4 * x


# --- MSE of a softmax linear layer (TF/PyTorch tutorial) -----------------------------------------
def softmax(z):
    e = np.exp(z - np.max(z, axis=1, keepdims=True))
    return e / np.sum(e, axis=1, keepdims=True)


def mse_softmax(w, b, x, y_true):
    probs = softmax(x @ w + b)
    return np.mean((y_true - probs) ** 2)


def mse_softmax_gradient():
    rng = np.random.default_rng(0)
    x, w, b = rng.uniform(size=(3, 4)), rng.uniform(size=(4, 2)), np.zeros(2)
    y_true = np.eye(2)[[0, 1, 1]]
    gw, gb = gj.grad(mse_softmax, argnums=(0, 1))(w, b, x, y_true)
    # by hand: dL/dp = 2 (p - y) / N, through the softmax Jacobian p (g - sum(g p))
    p = softmax(x @ w + b)
    g = 2 * (p - y_true) / p.size
    dz = p * (g - np.sum(g * p, axis=1, keepdims=True))
    return (gw, gb), (x.T @ dz, dz.sum(0))


# --- Softmax cross-entropy (the loss of the README) -------------------------------------------
def cross_entropy(w, b, X, y):
    z = X @ w + b
    m = np.max(z, axis=1, keepdims=True)
    logp = z - m - np.log(np.sum(np.exp(z - m), axis=1, keepdims=True))
    return -np.mean(logp[np.arange(X.shape[0]), y])


def cross_entropy_gradient():
    rng = np.random.default_rng(1)
    X, w, b = rng.normal(size=(100, 5)), rng.normal(size=(5, 3)), np.zeros(3)
    y = rng.integers(0, 3, size=100)
    gw = gj.grad(cross_entropy)(w, b, X, y)
    p = softmax(X @ w + b)
    return gw, X.T @ (p - np.eye(3)[y]) / len(y)


# --- Chain rule through two ReLU layers (TF/PyTorch tutorial) -----------------------------------
def two_layers(w1, w2, x):
    h = np.maximum(x @ w1, 0.0)
    return np.sum(np.maximum(h @ w2, 0.0))


def chain_rule():
    rng = np.random.default_rng(2)
    x, w1, w2 = rng.normal(size=(5, 3)), rng.normal(size=(3, 4)), rng.normal(size=(4, 2))
    g1 = gj.grad(two_layers)(w1, w2, x)
    h = np.maximum(x @ w1, 0)
    dy = (h @ w2 > 0).astype(float)
    return g1, x.T @ ((dy @ w2.T) * (x @ w1 > 0))


# --- Detach (d2l): u = stop_gradient(x * x); z = u * x -> dz/dx = u --------------------------
def detached(x):
    u = gj.stop_gradient(x * x)
    return np.sum(u * x)


def detach():
    x = np.arange(4.0)
    return gj.grad(detached)(x), x * x


# --- Himmelblau by gradient descent (TF/PyTorch tutorial) -------------------------------------
def himmelblau(x):
    return (x[0] ** 2 + x[1] - 11) ** 2 + (x[0] + x[1] ** 2 - 7) ** 2


def himmelblau_descent():
    g = gj.grad(himmelblau)
    x = np.array([0.0, 0.0])
    for _ in range(2000):
        x = x - 0.01 * g(x)
    return x, np.array([3.0, 2.0])


# --- Linear regression by gradient descent, parameters as a dict (PyTorch tutorial) -----------
def mse(params, x, y):
    return np.mean((x * params["w"] + params["b"] - y) ** 2)


def linear_regression():
    x = np.linspace(-1, 1, 50)
    y = 3.0 * x + 0.5
    params = {"w": 0.0, "b": 0.0}
    g = gj.grad(mse)
    for _ in range(500):
        d = g(params, x, y)
        params = {k: params[k] - 0.5 * d[k] for k in params}
    return np.array([params["w"], params["b"]]), np.array([3.0, 0.5])


# --- (w x - y)^2 at w=3, x=2, y=2 with respect to w (Q&A) --------------------------------------
def squared_error(w, x, y):
    return (w * x - y) ** 2


def by_hand():
    return gj.grad(squared_error)(3.0, 2.0, 2.0), 16.0


# --- mean(3 (x + 2)^2) on ones(2, 2) (intro) -------------------------------------------------
def intro_mean(x):
    return np.mean(3 * (x + 2) ** 2)


def intro():
    return gj.grad(intro_mean)(np.ones((2, 2))), np.full((2, 2), 4.5)


# --- Trigonometric model fit with scipy.optimize and a gradjit Jacobian (Q&A) ----------------
def trig_loss(params, x, y):
    pred = params[0] * np.sin(params[1] * x) + params[2]
    return np.mean((pred - y) ** 2)


def trig_fit():
    from scipy.optimize import minimize
    x = np.linspace(0, 6, 200)
    y = 2.0 * np.sin(1.5 * x) + 0.3
    res = minimize(trig_loss, np.array([1.0, 1.4, 0.0]), args=(x, y), method="BFGS",
                   jac=gj.grad(trig_loss))
    return res.x, np.array([2.0, 1.5, 0.3])


# --- value_and_grad with has_aux: loss and its worst residual ------------------------------
def loss_and_worst(w, x, y):
    r = x * w - y
    return np.mean(r ** 2), np.max(np.abs(r))


def value_and_aux():
    x = np.linspace(0, 1, 11)
    (loss, worst), g = gj.value_and_grad(loss_and_worst, has_aux=True)(1.0, x, 2 * x)
    r = x - 2 * x
    return (loss, worst, g), (np.mean(r ** 2), np.max(np.abs(r)), np.mean(2 * r * x))


ALL = [simple_gradient, dot_gradient, mse_softmax_gradient, cross_entropy_gradient, chain_rule,
       detach, himmelblau_descent, linear_regression, by_hand, intro, trig_fit, value_and_aux]
