"""Losses of a linear layer: MSE of its softmax, softmax cross-entropy, the softmax Jacobian.

The TensorFlow/PyTorch tutorial's cells, in plain numpy: logits = x @ w + b for x of 3 x 4,
w of 4 x 2, labels [0, 1, 1]. The cross-entropy takes the integer labels from a closure, as
``F.cross_entropy(logits, y)`` does, with no one-hot matrix. Gradients are checked against
the closed forms (softmax Jacobian p (I - p^T), cross-entropy X^T (p - onehot) / n) and
central differences.

    python examples/losses.py
"""

import numpy as np

import gradjit as gj
from _check import central_grad, check, section


def softmax(z):
    e = np.exp(z - np.max(z, axis=1, keepdims=True))
    return e / np.sum(e, axis=1, keepdims=True)


def mse_of_softmax(w, b, x, y_true):
    probs = softmax(x @ w + b)
    return np.mean((y_true - probs) ** 2)


def make_cross_entropy(labels):
    """The mean softmax cross-entropy of a linear layer against integer ``labels``."""
    def cross_entropy(w, b, x):
        z = x @ w + b
        m = np.max(z, axis=1, keepdims=True)
        logp = z - m - np.log(np.sum(np.exp(z - m), axis=1, keepdims=True))
        return -np.mean(logp[np.arange(x.shape[0]), labels])
    return cross_entropy


def main():
    rng = np.random.default_rng(0)
    x, w, b = rng.uniform(size=(3, 4)), rng.uniform(size=(4, 2)), np.zeros(2)
    y = np.array([0, 1, 1])
    y_true = np.eye(2)[y]                      # one_hot(y, depth=2)
    p = softmax(x @ w + b)

    section("MSE of softmax(x @ w + b) against one-hot labels: gradients of w and b")
    loss, (gw, gb) = gj.value_and_grad(mse_of_softmax, argnums=(0, 1))(w, b, x, y_true)
    check("loss", loss, np.mean((y_true - p) ** 2))
    g = 2 * (p - y_true) / p.size              # d loss / d probs
    dz = p * (g - np.sum(g * p, axis=1, keepdims=True))   # through the softmax Jacobian
    check("d loss / d w", gw, x.T @ dz)
    check("d loss / d b", gb, dz.sum(0))
    check("  d loss / d w vs central differences", gw,
          central_grad(lambda w: mse_of_softmax(w, b, x, y_true), w), rtol=1e-6, atol=1e-9,
          show_value=False)
    print("  (two classes: the columns of d loss / d w are opposite, as in the tutorial)")

    section("softmax cross-entropy with integer labels from a closure")
    cross_entropy = make_cross_entropy(y)
    loss, (gw, gb) = gj.value_and_grad(cross_entropy, argnums=(0, 1))(w, b, x)
    check("loss", loss, -np.mean(np.log(p[np.arange(3), y])))
    check("d loss / d w = x^T (p - onehot) / n", gw, x.T @ (p - y_true) / 3)
    check("d loss / d b = mean(p - onehot)", gb, np.mean(p - y_true, axis=0))
    check("  d loss / d w vs central differences", gw,
          central_grad(lambda w: cross_entropy(w, b, x), w), rtol=1e-6, atol=1e-9,
          show_value=False)
    # a new data set of another size reuses the same kernel: sizes are not compiled in
    X, labels = rng.normal(size=(500, 4)), rng.integers(0, 2, size=500)
    P = softmax(X @ w + b)
    check("500 rows, new labels: d loss / d w", gj.grad(make_cross_entropy(labels))(w, b, X),
          X.T @ (P - np.eye(2)[labels]) / 500, show_value=False)

    section("the softmax Jacobian: logits 3 x 3, J[i, j, k, l] = d probs[i, j] / d logits[k, l]")
    logits = rng.uniform(size=(3, 3))
    probs = softmax(logits)
    J = gj.jacobian(softmax)(logits)
    # rows do not mix; within a row, d p_j / d z_l = p_j (delta_jl - p_l)
    J_closed = np.zeros((3, 3, 3, 3))
    for i in range(3):
        J_closed[i, :, i, :] = np.diag(probs[i]) - np.outer(probs[i], probs[i])
    check("gj.jacobian(softmax)(logits)", J, J_closed, show_value=False)
    print("  PyTorch's torch.autograd.grad(probs[0][0], logits) is J[0, 0]:")
    check("J[0, 0]", J[0, 0], J_closed[0, 0])
    print("  TensorFlow's tape.gradient(probs, logits) sums the outputs first; every row of")
    print("  probs sums to 1, so that gradient is zero (TF printed ~1e-8 in float32):")
    check("gj.grad(lambda z: softmax(z).sum())", gj.grad(lambda z: softmax(z).sum())(logits),
          np.zeros((3, 3)), atol=1e-15)


if __name__ == "__main__":
    main()
