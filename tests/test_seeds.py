"""The seed workloads (../shared/seeds) in plain numpy, with closed-form answers.

Each test is one of the tutorials' examples: the gradient gradjit computes is compared with
the value the tutorial prints or with the derivative worked out by hand.
"""

from __future__ import annotations

import numpy as np
import pytest

import gradjit as gj
from gradjit.testing import check_grads

# ---------------------------------------------------------------------------------------------
# Simple gradients
# ---------------------------------------------------------------------------------------------


def poly(x):
    return x ** 2 + x ** 3 + 5


def test_polynomial_at_2_is_16():
    assert gj.grad(poly)(2.0) == 16.0
    g = gj.grad(lambda x: np.sum(poly(x)))(np.array([2.0]))
    np.testing.assert_array_equal(g, [16.0])
    # the tutorial's float32 tensor
    g32 = gj.grad(lambda x: np.sum(poly(x)))(np.array([2.0], dtype=np.float32))
    assert g32.dtype == np.float32 and g32[0] == 16.0


def test_two_x_dot_x_is_4x():
    x = np.arange(4, dtype=np.float64)
    g = gj.grad(lambda x: 2 * np.dot(x, x))(x)
    np.testing.assert_array_equal(g, 4 * x)
    np.testing.assert_array_equal(gj.grad(lambda x: x.sum())(x), np.ones(4))
    np.testing.assert_array_equal(gj.grad(lambda x: np.sum(x * x))(x), 2 * x)


def squared_error(w, x, y):
    y_hat = w * x
    s = y_hat - y
    return s ** 2


def test_w_x_minus_y_squared_is_16():
    # dloss/dw = 2 (w x - y) x = 2 (3*2 - 2) 2 = 16
    assert gj.grad(squared_error)(3.0, 2.0, 2.0) == 16.0
    assert gj.grad(squared_error, argnums=0)(3.0, 2.0, 2.0) == 16.0
    # d/dx = 2 (w x - y) w = 24; d/dy = -2 (w x - y) = -8
    assert gj.grad(squared_error, argnums=(0, 1, 2))(3.0, 2.0, 2.0) == (16.0, 24.0, -8.0)
    # the PyTorch chain-rule example: x=1, y=2, w=1.5 gives loss 0.25 and gradient -1
    value, g = gj.value_and_grad(squared_error)(1.5, 1.0, 2.0)
    assert value == 0.25 and g == -1.0


def test_mean_of_3_x_plus_2_squared_is_4_5():
    def o(x):
        y = x + 2
        z = y * y * 3
        return z.mean()
    g = gj.grad(o)(np.ones((2, 2)))
    np.testing.assert_allclose(g, np.full((2, 2), 4.5))


def test_weights_times_3_summed():
    weights = np.ones(4)
    for _ in range(3):  # no accumulation between calls, unlike .backward()
        np.testing.assert_array_equal(gj.grad(lambda w: (w * 3).sum())(weights), [3, 3, 3, 3])


def test_vector_backward_with_ones_is_vjp():
    x = np.array([0.8099, 0.9596, 0.7738])
    y, back = gj.vjp(lambda x: x + 2, x)
    np.testing.assert_allclose(y, x + 2)
    (g,) = back(np.ones_like(y))
    np.testing.assert_array_equal(g, np.ones(3))
    g = gj.grad(lambda x: ((x + 2) * (x + 2) * 2).mean())(x)
    np.testing.assert_allclose(g, 4 * (x + 2) / 3)


# ---------------------------------------------------------------------------------------------
# Softmax layers
# ---------------------------------------------------------------------------------------------


def softmax(z):
    e = np.exp(z - np.max(z, axis=1, keepdims=True))
    return e / np.sum(e, axis=1, keepdims=True)


def one_hot(y, depth):
    out = np.zeros((y.shape[0], depth))
    out[np.arange(y.shape[0]), y] = 1.0
    return out


def mse_softmax_loss(w, b, x, y_true):
    probs = softmax(x @ w + b)
    return np.mean((y_true - probs) ** 2)


def test_mse_of_softmax_linear_layer():
    rng = np.random.default_rng(0)
    x, w, b = rng.random((3, 4)), rng.random((4, 2)), np.zeros(2)
    t = one_hot(np.array([0, 1, 1]), 2)
    gw, gb = gj.grad(mse_softmax_loss, argnums=(0, 1))(w, b, x, t)
    # by hand: dL/dp = 2 (p - t) / (N C), through softmax dz = p (dp - sum(p dp))
    p = softmax(x @ w + b)
    dp = 2 * (p - t) / p.size
    dz = p * (dp - np.sum(p * dp, axis=1, keepdims=True))
    np.testing.assert_allclose(gw, x.T @ dz, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(gb, dz.sum(axis=0), rtol=1e-10, atol=1e-14)
    # two classes: the columns of the gradient are opposite, as the tutorial shows
    np.testing.assert_allclose(gw[:, 0], -gw[:, 1], atol=1e-14)


def softmax_cross_entropy(w, b, x, y):
    z = x @ w + b
    m = np.max(z, axis=1, keepdims=True)
    logp = z - m - np.log(np.sum(np.exp(z - m), axis=1, keepdims=True))
    return -np.mean(logp[np.arange(x.shape[0]), y])


@pytest.mark.parametrize("n, d, k", [(3, 4, 2), (50, 7, 10)])
def test_softmax_cross_entropy_closed_form(n, d, k):
    rng = np.random.default_rng(n)
    x, w, b = rng.random((n, d)), rng.standard_normal((d, k)), rng.standard_normal(k)
    y = rng.integers(0, k, n)
    value, (gw, gb) = gj.value_and_grad(softmax_cross_entropy, argnums=(0, 1))(w, b, x, y)
    p = softmax(x @ w + b)
    onehot = one_hot(y, k)
    np.testing.assert_allclose(value, -np.mean(np.log(p[np.arange(n), y])), rtol=1e-12)
    np.testing.assert_allclose(gw, x.T @ (p - onehot) / n, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(gb, (p - onehot).sum(axis=0) / n, rtol=1e-10, atol=1e-14)


def test_softmax_gradient_of_one_probability():
    # grad of probs[0, 0] w.r.t. the logits: only row 0 is non-zero, p00 (e0 - p0)
    rng = np.random.default_rng(1)
    logits = rng.random((3, 3))
    g = gj.grad(lambda z: softmax(z)[0, 0])(logits)
    p = softmax(logits)
    want = np.zeros((3, 3))
    want[0] = p[0, 0] * (np.eye(3)[0] - p[0])
    np.testing.assert_allclose(g, want, rtol=1e-10, atol=1e-15)


# ---------------------------------------------------------------------------------------------
# Chain rule
# ---------------------------------------------------------------------------------------------


def test_chain_rule_scalars():
    x1, w1, b1, w2, b2 = 0.3, 0.7, 0.1, 0.4, 0.9

    def y2(w1, b1, w2, b2):
        y1 = x1 * w1 + b1
        return y1 * w2 + b2
    g = gj.grad(y2)(w1, b1, w2, b2)
    assert g == pytest.approx(x1 * w2)  # dy2/dw1 = dy2/dy1 * dy1/dw1


def relu(x):
    return np.maximum(x, 0.0)


def two_relu_layers(w1, b1, w2, b2, x1):
    y1 = relu(x1 @ w1 + b1)
    y2 = relu(y1 @ w2 + b2)
    return np.sum(y2)


def test_chain_rule_through_two_relu_layers():
    rng = np.random.default_rng(2)
    x1 = rng.random((3, 4)) * 10
    w1 = rng.standard_normal((4, 3)) * 10
    b1 = rng.standard_normal(3)
    w2 = rng.standard_normal((3, 2)) * 10
    b2 = rng.standard_normal(2)
    gw1, gb1, gw2, gb2 = gj.grad(two_relu_layers, argnums=(0, 1, 2, 3))(w1, b1, w2, b2, x1)
    # backpropagation by hand
    z1 = x1 @ w1 + b1
    y1 = np.maximum(z1, 0)
    z2 = y1 @ w2 + b2
    dz2 = (z2 > 0).astype(float)
    dy1 = dz2 @ w2.T
    dz1 = dy1 * (z1 > 0)
    np.testing.assert_allclose(gw2, y1.T @ dz2, rtol=1e-12)
    np.testing.assert_allclose(gb2, dz2.sum(0), rtol=1e-12)
    np.testing.assert_allclose(gw1, x1.T @ dz1, rtol=1e-12)
    np.testing.assert_allclose(gb1, dz1.sum(0), rtol=1e-12)


def test_relu_then_softmax_output_0_0():
    rng = np.random.default_rng(3)
    x1, w1, b1 = rng.random((3, 4)), rng.random((4, 3)), np.zeros(3)
    w2, b2 = rng.random((3, 3)), np.zeros(3)

    def y2_00(w1):
        y1 = relu(x1 @ w1 + b1)
        return softmax(y1 @ w2 + b2)[0, 0]
    g = gj.grad(y2_00)(w1)
    z1 = x1 @ w1 + b1
    y1 = np.maximum(z1, 0)
    p = softmax(y1 @ w2 + b2)
    dz2 = np.zeros((3, 3))
    dz2[0] = p[0, 0] * (np.eye(3)[0] - p[0])
    dz1 = (dz2 @ w2.T) * (z1 > 0)
    np.testing.assert_allclose(g, x1.T @ dz1, rtol=1e-10, atol=1e-15)


def test_backprop_by_hand_two_sigmoid_layers():
    # Andrew Trask's snippet: its deltas are the gradient of 0.5 * sum((l2 - y)**2)
    X = np.array([[0, 0, 1], [0, 1, 1], [1, 0, 1], [1, 1, 1]], dtype=float)
    y = np.array([[0, 1, 1, 0]], dtype=float).T
    rng = np.random.default_rng(4)
    s0 = 2 * rng.random((3, 4)) - 1
    s1 = 2 * rng.random((4, 1)) - 1

    def loss(s0, s1):
        l1 = 1 / (1 + np.exp(-(np.dot(X, s0))))
        l2 = 1 / (1 + np.exp(-(np.dot(l1, s1))))
        return 0.5 * np.sum((l2 - y) ** 2)
    g0, g1 = gj.grad(loss, argnums=(0, 1))(s0, s1)
    l1 = 1 / (1 + np.exp(-(np.dot(X, s0))))
    l2 = 1 / (1 + np.exp(-(np.dot(l1, s1))))
    l2_delta = (l2 - y) * (l2 * (1 - l2))
    l1_delta = l2_delta.dot(s1.T) * (l1 * (1 - l1))
    np.testing.assert_allclose(g1, l1.T.dot(l2_delta), rtol=1e-12)
    np.testing.assert_allclose(g0, X.T.dot(l1_delta), rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# Detaching, pytrees, auxiliary outputs
# ---------------------------------------------------------------------------------------------


def test_detach_with_stop_gradient():
    x = np.arange(4, dtype=np.float64)

    def z(x):
        y = x * x
        u = gj.stop_gradient(y)
        return np.sum(u * x)
    np.testing.assert_array_equal(gj.grad(z)(x), x * x)  # the gradient is the constant u
    np.testing.assert_array_equal(gj.grad(lambda x: np.sum(x * x))(x), 2 * x)
    np.testing.assert_array_equal(gj.grad(lambda x: np.sum(gj.stop_gradient(x) * 3.0))(x),
                                  np.zeros(4))


def mlp_loss(params, x, y):
    h = np.tanh(x @ params["w1"] + params["b1"])
    out = h @ params["w2"] + params["b2"]
    return np.mean((out - y) ** 2)


def test_pytree_dict_of_parameters():
    rng = np.random.default_rng(5)
    params = {"w1": rng.standard_normal((4, 5)), "b1": np.zeros(5),
              "w2": rng.standard_normal((5, 1)), "b2": np.zeros(1)}
    x, y = rng.standard_normal((8, 4)), rng.standard_normal((8, 1))
    g = gj.grad(mlp_loss)(params, x, y)
    assert isinstance(g, dict) and set(g) == set(params)
    for k, p in params.items():
        assert g[k].shape == p.shape and g[k].dtype == p.dtype
    # by hand
    z = x @ params["w1"] + params["b1"]
    h = np.tanh(z)
    out = h @ params["w2"] + params["b2"]
    dout = 2 * (out - y) / out.size
    dz = (dout @ params["w2"].T) * (1 - h ** 2)
    np.testing.assert_allclose(g["w2"], h.T @ dout, rtol=1e-10)
    np.testing.assert_allclose(g["b2"], dout.sum(0), rtol=1e-10)
    np.testing.assert_allclose(g["w1"], x.T @ dz, rtol=1e-10)
    np.testing.assert_allclose(g["b1"], dz.sum(0), rtol=1e-10)


def loss_with_aux(w, x, y):
    pred = x @ w
    err = pred - y
    return np.mean(err ** 2), {"pred": pred, "max_err": np.max(np.abs(err))}


def test_has_aux():
    rng = np.random.default_rng(6)
    w, x, y = rng.standard_normal(3), rng.standard_normal((5, 3)), rng.standard_normal(5)
    g, aux = gj.grad(loss_with_aux, has_aux=True)(w, x, y)
    np.testing.assert_allclose(g, 2 * x.T @ (x @ w - y) / 5, rtol=1e-12)
    np.testing.assert_allclose(aux["pred"], x @ w, rtol=1e-12)
    assert aux["max_err"] == pytest.approx(np.max(np.abs(x @ w - y)))
    (value, aux2), g2 = gj.value_and_grad(loss_with_aux, has_aux=True)(w, x, y)
    assert value == pytest.approx(np.mean((x @ w - y) ** 2))
    np.testing.assert_allclose(g2, g)
    np.testing.assert_allclose(aux2["pred"], aux["pred"])


# ---------------------------------------------------------------------------------------------
# Optimisation: Himmelblau, linear regression, trigonometric fit, Newton-CG
# ---------------------------------------------------------------------------------------------


def himmelblau(x):
    return (x[0] ** 2 + x[1] - 11) ** 2 + (x[0] + x[1] ** 2 - 7) ** 2


def himmelblau_grad(x, y):
    return np.array([4 * x * (x * x + y - 11) + 2 * (x + y * y - 7),
                     2 * (x * x + y - 11) + 4 * y * (x + y * y - 7)])


def test_himmelblau_gradient_closed_form():
    g = gj.grad(himmelblau)
    rng = np.random.default_rng(7)
    for p in [np.zeros(2), np.array([3.0, 2.0]), *rng.uniform(-6, 6, (5, 2))]:
        np.testing.assert_allclose(g(p), himmelblau_grad(*p), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(g(np.array([3.0, 2.0])), [0.0, 0.0], atol=1e-12)
    # the tutorial's surface: the same function on a list of meshgrid arrays
    X, Y = np.meshgrid(np.arange(-6, 6, 0.1), np.arange(-6, 6, 0.1))
    np.testing.assert_allclose(gj.jit(himmelblau)([X, Y]), himmelblau([X, Y]), rtol=1e-12)


def test_himmelblau_gradient_descent_converges():
    g = gj.grad(himmelblau)
    x = np.array([0.0, 0.0])
    lr = 0.001
    for step in range(4000):
        x = x - lr * g(x)
        if step == 0:
            np.testing.assert_allclose(x, [0.014, 0.022])
    np.testing.assert_allclose(x, [3.0, 2.0], atol=1e-5)
    assert himmelblau(x) < 1e-9
    # float32, as in the tutorial
    x32 = np.array([0.0, 0.0], dtype=np.float32)
    for _ in range(4000):
        x32 = x32 - np.float32(lr) * g(x32)
    assert x32.dtype == np.float32
    np.testing.assert_allclose(x32, [3.0, 2.0], atol=1e-3)


X_LR = np.array([1, 2, 3, 4], dtype=np.float32)
Y_LR = np.array([2, 4, 6, 8], dtype=np.float32)


def lr_loss(w):
    y_pred = w * X_LR
    return ((Y_LR - y_pred) ** 2).mean()


def test_linear_regression_gradient_descent():
    # the PyTorch tutorial's printed epochs: w = 0.300 and loss 30 at epoch 1, ...
    w = np.float32(0.0)
    lr = np.float32(0.01)
    vg = gj.value_and_grad(lr_loss)
    seen = []
    for _ in range(10):
        loss, dw = vg(w)
        w = w - lr * dw
        seen.append((float(w), float(loss)))
    assert isinstance(dw, np.float32)
    np.testing.assert_allclose(seen[0], (0.300, 30.0), rtol=1e-5)
    np.testing.assert_allclose(seen[2], (0.772, 15.66018772), rtol=1e-3)
    np.testing.assert_allclose(seen[9], (1.606, 1.60939169), rtol=2e-3)
    for _ in range(200):
        w = w - lr * gj.grad(lr_loss)(w)
    assert abs(w - 2.0) < 1e-4


def linear_model_loss(params, x, y):
    w, b = params
    return np.mean((x @ w + b - y) ** 2)


def test_linear_layer_training_loop():
    X = np.array([[1], [2], [3], [4]], dtype=np.float64)
    Y = np.array([[2], [4], [6], [8]], dtype=np.float64)
    params = (np.array([[0.5]]), np.array([0.3]))
    g = gj.grad(linear_model_loss)
    for _ in range(3000):
        gw, gb = g(params, X, Y)
        params = (params[0] - 0.05 * gw, params[1] - 0.05 * gb)
    w, b = params
    assert (np.array([[5.0]]) @ w + b).item() == pytest.approx(10.0, abs=1e-3)


TRIG_X = np.arange(100) / 100.0
# the data of the question: 5 sin(2 pi (-10) x) + 4 cos(2 pi 5 x) + 2 sin(2 pi 3 x)
TRIG_Y = -5 * np.sin(2 * np.pi * 10 * TRIG_X) + 4 * np.cos(2 * np.pi * 5 * TRIG_X) + \
    2 * np.sin(2 * np.pi * 3 * TRIG_X)


def trig_cast(params):
    A, B, C, L, M, N = params[0], params[1], params[2], params[3], params[4], params[5]
    L = np.minimum(np.abs(L), 100)
    M = np.minimum(np.abs(M), 100)
    N = np.minimum(np.abs(N), 100)
    return A, B, C, L, M, N


def trig_pred(params, x):
    A, B, C, L, M, N = trig_cast(params)
    return A * np.sin(2 * np.pi * L * x) + B * np.cos(2 * np.pi * M * x) + \
        C * np.sin(2 * np.pi * N * x)


def trig_loss(params):
    p = trig_pred(params, TRIG_X)
    return np.mean((TRIG_Y - p) ** 2)


def test_trig_model_fit():
    assert TRIG_Y[0] == pytest.approx(4.0) and TRIG_Y[1] == pytest.approx(1.240062433)
    g = gj.grad(trig_loss)
    # closed form at a point
    params = np.array([-4.0, 3.5, 1.5, 10.1, 5.05, 2.9])
    A, B, C, L, M, N = params
    x = TRIG_X
    r = trig_pred(params, x) - TRIG_Y
    tp = 2 * np.pi * x
    want = 2 * np.array([
        np.mean(r * np.sin(tp * L)), np.mean(r * np.cos(tp * M)), np.mean(r * np.sin(tp * N)),
        np.mean(r * A * np.cos(tp * L) * tp), np.mean(-r * B * np.sin(tp * M) * tp),
        np.mean(r * C * np.cos(tp * N) * tp)])
    np.testing.assert_allclose(g(params), want, rtol=1e-10, atol=1e-12)
    check_grads(trig_loss, (params,))
    # gradient descent from near the solution (the relaxed problem of the answer) ...
    start = trig_loss(params)
    for _ in range(1000):
        params = params - 0.0005 * g(params)
    assert trig_loss(params) < 0.25 * start
    np.testing.assert_allclose(np.round(np.abs(params[3:])), [10, 5, 3])
    # ... then BFGS with the same gradient finds the exact fit
    from scipy.optimize import minimize
    res = minimize(trig_loss, params, jac=g, method="BFGS")
    assert res.fun < 1e-10
    np.testing.assert_allclose(res.x, [-5, 4, 2, 10, 5, 3], atol=1e-4)


def newton_f(params):
    x, y = params[0], params[1]
    return (1 - x) ** 2 + 2 * (y - x ** 2) ** 2


def test_scipy_newton_cg_with_gradjit_jacobian():
    from scipy.optimize import minimize
    jac = gj.grad(newton_f)
    x, y = 3.0, 2.0
    want = np.array([-8 * x * (-x ** 2 + y) + 2 * x - 2, -4 * x ** 2 + 4 * y])
    np.testing.assert_allclose(jac(np.array([x, y])), want)
    res = minimize(newton_f, np.array([3.0, 2.0]), jac=jac, method="Newton-CG")
    assert res.success
    np.testing.assert_allclose(res.x, [1.0, 1.0], atol=1e-4)


# ---------------------------------------------------------------------------------------------
# Jacobians through vjp, higher order
# ---------------------------------------------------------------------------------------------


def field_B(X):
    Bx = X[:, 0] ** 3 - X[:, 1] ** 2
    By = X[:, 1] ** 2 + X[:, 2] ** 2
    Bz = X[:, 2] ** 3 - X[:, 0] ** 2
    return np.stack([Bx, By, Bz], axis=1)


def test_batched_jacobian_of_a_field_by_vjp():
    t = np.arange(10, dtype=np.float64)
    X = np.stack([t, t, t], axis=1)
    out, back = gj.vjp(field_B, X)
    np.testing.assert_allclose(out, field_B(X))
    # row k of every sample's 3x3 Jacobian: the cotangent e_k on every row
    J = np.stack([back(np.tile(np.eye(3)[k], (10, 1)))[0] for k in range(3)], axis=1)
    x, y, z = X[:, 0], X[:, 1], X[:, 2]
    zero = np.zeros(10)
    want = np.stack([np.stack([3 * x ** 2, -2 * y, zero], 1),
                     np.stack([zero, 2 * y, 2 * z], 1),
                     np.stack([-2 * x, zero, 3 * z ** 2], 1)], axis=1)
    np.testing.assert_allclose(J, want)
    np.testing.assert_allclose(J[2], [[12, -4, 0], [0, 4, 4], [-4, 0, 12]])


def f_xw(x, w):
    return (x + 5 * w) ** 2


def test_first_derivatives_of_x_plus_5w_squared():
    assert gj.grad(lambda x: x ** 2 + 3)(2.0) == 4.0
    assert gj.grad(f_xw, argnums=(0, 1))(2.0, 3.0) == (34.0, 170.0)


def test_second_derivatives_of_x_plus_5w_squared():
    fx = gj.grad(f_xw, argnums=0)
    fw = gj.grad(f_xw, argnums=1)
    assert gj.grad(fx, argnums=(0, 1))(2.0, 3.0) == (2.0, 10.0)
    assert gj.grad(fw, argnums=(0, 1))(2.0, 3.0) == (10.0, 50.0)
