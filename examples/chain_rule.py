"""The chain rule through two layers: the derivative of the composition is the product of the
local derivatives, dy2/dw1 = dy2/dy1 . dy1/dw1.

First with scalars (y1 = x w1 + b1, y2 = y1 w2 + b2), then with matrices (a ReLU layer and a
softmax layer, where the product is a contraction of Jacobians), then backpropagation written
by hand in Andrew Trask's 11-line network, whose "why dot with synapse_1?" the chain rule
answers. Each local derivative is checked against its closed form, each product against
gradjit's derivative of the whole composition and central differences.

    python examples/chain_rule.py
"""

import numpy as np

import gradjit as gj
from _check import central_grad, central_jacobian, check, section


def softmax(z):
    e = np.exp(z - np.max(z, axis=1, keepdims=True))
    return e / np.sum(e, axis=1, keepdims=True)


def linear1(w1, x1, b1):
    return x1 * w1 + b1


def linear2(y1, w2, b2):
    return y1 * w2 + b2


def relu_layer(w1, x1, b1):
    return np.maximum(x1 @ w1 + b1, 0.0)


def softmax_layer(y1, w2, b2):
    return softmax(y1 @ w2 + b2)


def two_layers(w1, x1, b1, w2, b2):
    return softmax_layer(relu_layer(w1, x1, b1), w2, b2)


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def trask_loss(synapse_0, synapse_1, X, y):
    layer_1 = sigmoid(X @ synapse_0)
    layer_2 = sigmoid(layer_1 @ synapse_1)
    return 0.5 * np.sum((layer_2 - y) ** 2)


def main():
    rng = np.random.default_rng(0)

    section("scalars: y1 = x1 w1 + b1, y2 = y1 w2 + b2")
    x1, w1, b1, w2, b2 = rng.uniform(size=5)
    y1 = linear1(w1, x1, b1)
    dy1_dw1 = gj.grad(linear1)(w1, x1, b1)
    dy2_dy1 = gj.grad(linear2)(y1, w2, b2)
    dy2_dw1 = gj.grad(lambda w1: linear2(linear1(w1, x1, b1), w2, b2))(w1)
    check("dy1/dw1 = x1", dy1_dw1, x1)
    check("dy2/dy1 = w2", dy2_dy1, w2)
    check("dy2/dw1 = dy2/dy1 * dy1/dw1", dy2_dw1, dy2_dy1 * dy1_dw1)

    section("matrices: y1 = relu(x1 @ w1 + b1), y2 = softmax(y1 @ w2 + b2)")
    x1, w1, b1 = rng.normal(size=(3, 4)), rng.normal(size=(4, 3)), np.zeros(3)
    w2, b2 = rng.normal(size=(3, 2)), np.zeros(2)
    pre = x1 @ w1 + b1
    y1 = np.maximum(pre, 0)
    p = softmax(y1 @ w2 + b2)
    # local derivatives from gradjit, each checked against its closed form
    J1 = gj.jacobian(relu_layer)(w1, x1, b1)      # d y1[i, j] / d w1[k, l]: 3 x 3 x 4 x 3
    J2 = gj.jacobian(softmax_layer)(y1, w2, b2)   # d y2[i, a] / d y1[m, n]: 3 x 2 x 3 x 3
    J1_closed = np.einsum("jl,ik,ij->ijkl", np.eye(3), x1, (pre > 0).astype(float))
    S = np.einsum("ab,ia->iab", np.eye(2), p) - np.einsum("ia,ib->iab", p, p)   # softmax Jacobians
    J2_closed = np.einsum("im,iac,nc->iamn", np.eye(3), S, w2)
    check("dy1/dw1 (ReLU mask times x1)", J1, J1_closed, show_value=False)
    check("dy2/dy1 (softmax Jacobian times w2)", J2, J2_closed, show_value=False)
    # the chain rule: contract over y1's two axes
    product = np.tensordot(J2, J1, axes=2)        # 3 x 2 x 4 x 3
    J = gj.jacobian(two_layers)(w1, x1, b1, w2, b2)
    check("dy2/dw1 of the composition = dy2/dy1 . dy1/dw1", J, product, show_value=False)
    check("  vs central differences", J,
          central_jacobian(lambda w: two_layers(w, x1, b1, w2, b2), w1), rtol=1e-6, atol=1e-8,
          show_value=False)
    # the tutorial's single entry: only y1[0, 0] depends on w1[0, 0] in row 0
    print("  the tutorial's entry: dy2[0,0]/dw1[0,0] = dy2[0,0]/dy1[0,0] * dy1[0,0]/dw1[0,0]")
    check("J[0, 0, 0, 0]", J[0, 0, 0, 0], J2[0, 0, 0, 0] * J1[0, 0, 0, 0])

    section("backpropagation by hand (Andrew Trask's network) is the chain rule")
    X = np.array([[0, 0, 1], [0, 1, 1], [1, 0, 1], [1, 1, 1]], dtype=float)
    y = np.array([[0, 1, 1, 0]], dtype=float).T
    synapse_0, synapse_1 = 2 * rng.random((3, 4)) - 1, 2 * rng.random((4, 1)) - 1
    layer_1 = sigmoid(X @ synapse_0)
    layer_2 = sigmoid(layer_1 @ synapse_1)
    layer_2_delta = (layer_2 - y) * (layer_2 * (1 - layer_2))
    # d loss / d layer_1 = layer_2_delta @ d(layer_1 @ synapse_1)/d layer_1 = ... @ synapse_1.T:
    # that is why the snippet's delta is a dot product with synapse_1, not with layer_1
    layer_1_delta = layer_2_delta.dot(synapse_1.T) * (layer_1 * (1 - layer_1))
    g0, g1 = gj.grad(trask_loss, argnums=(0, 1))(synapse_0, synapse_1, X, y)
    check("d loss / d synapse_1 = layer_1.T . layer_2_delta", g1, layer_1.T.dot(layer_2_delta))
    check("d loss / d synapse_0 = X.T . layer_1_delta", g0, X.T.dot(layer_1_delta),
          show_value=False)
    check("  vs central differences", g0,
          central_grad(lambda s: trask_loss(s, synapse_1, X, y), synapse_0), rtol=1e-6,
          atol=1e-9, show_value=False)


if __name__ == "__main__":
    main()
