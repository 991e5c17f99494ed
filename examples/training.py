"""Training by gradient descent: a linear regression and a small softmax classifier.

First the PyTorch tutorial's f = w x with w = 2: data X = [1, 2, 3, 4], Y = 2X, w = 0,
lr = 0.01, where ``l.backward(); w -= lr * w.grad; w.grad.zero_()`` becomes
``w -= lr * gj.grad(loss)(w, X, Y)``. Its printed trajectory (w = 0.300 after epoch 1, 1.606
after epoch 10) is reproduced, then w -> 2. Then w and b of y = w x + b as a dict of
parameters. Then a softmax classifier on three Gaussian blobs, trained on the cross-entropy
with integer labels; its training is checked step for step against the same descent with the
hand-derived gradient. Plots the fits, loss curves and decision regions to ``figures/``.

    python examples/training.py
"""

import numpy as np

import gradjit as gj
from _check import central_grad, check, section
from _plot import pyplot, save


def forward(w, x):
    return w * x


def loss(w, x, y):
    return np.mean((y - forward(w, x)) ** 2)


def mse(params, x, y):
    return np.mean((params["w"] * x + params["b"] - y) ** 2)


def cross_entropy(W, b, X, labels):
    z = X @ W + b
    m = np.max(z, axis=1, keepdims=True)
    logp = z - m - np.log(np.sum(np.exp(z - m), axis=1, keepdims=True))
    return -np.mean(logp[np.arange(X.shape[0]), labels])


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def blobs(n_per_class=100, seed=0):
    rng = np.random.default_rng(seed)
    centers = np.array([[-2.0, -1.0], [2.0, -1.0], [0.0, 2.0]])
    X = np.concatenate([c + 0.9 * rng.standard_normal((n_per_class, 2)) for c in centers])
    labels = np.repeat(np.arange(3), n_per_class)
    return X, labels


def regression():
    section("f = w x, the PyTorch tutorial's data, lr = 0.01")
    X = np.array([1, 2, 3, 4], dtype=np.float32)
    Y = np.array([2, 4, 6, 8], dtype=np.float32)
    dloss = gj.grad(loss)
    w, lr, ws, losses = 0.0, 0.01, [], []
    for epoch in range(100):
        losses.append(float(loss(w, X, Y)))
        w = w - lr * dloss(w, X, Y)
        ws.append(w)
        if epoch in (0, 1, 2, 9):
            print(f"  epoch {epoch + 1}: w = {w:.3f}, loss = {losses[-1]:.8f}")
    # by hand: dJ/dw = mean(2 x (w x - y)) = 15 w - 30, so w_k = 2 (1 - 0.85^k)
    k = np.arange(1, 101)
    check("w after epochs 1, 10 (tutorial: 0.300, 1.606)", [ws[0], ws[9]],
          2 * (1 - 0.85 ** np.array([1, 10])), rtol=1e-5)
    check("w_k = 2 (1 - 0.85^k) for all 100 epochs", ws, 2 * (1 - 0.85 ** k), rtol=1e-5,
          show_value=False)
    check("w after 100 epochs", w, 2.0, rtol=1e-5)
    check("prediction f(5)", forward(w, 5.0), 10.0, rtol=1e-5)

    section("y = w x + b, parameters as a dict, lr = 0.05")
    x = np.array([1.0, 2.0, 3.0, 4.0])
    params = {"w": 0.0, "b": 0.0}
    dmse = gj.grad(mse)
    for _ in range(2000):
        d = dmse(params, x, 2 * x)                  # a dict of gradients, like params
        params = {k: params[k] - 0.05 * d[k] for k in params}
    check("(w, b) vs np.polyfit", (params["w"], params["b"]), tuple(np.polyfit(x, 2 * x, 1)),
          atol=1e-8)
    return X, Y, ws, losses


def classifier():
    section("softmax classifier, 3 classes, 300 points in 2-D, lr = 0.5")
    X, labels = blobs()
    W, b = np.zeros((2, 3)), np.zeros(3)
    grad_ce = gj.value_and_grad(cross_entropy, argnums=(0, 1))
    onehot = np.eye(3)[labels]

    rng = np.random.default_rng(1)
    W0, b0 = rng.normal(size=(2, 3)), rng.normal(size=3)
    (_, (gW, gb)) = grad_ce(W0, b0, X, labels)
    P = softmax(X @ W0 + b0)
    check("d loss / d W at a random point = X^T (p - onehot) / n", gW,
          X.T @ (P - onehot) / len(X))
    check("  vs central differences", gW,
          central_grad(lambda W: cross_entropy(W, b0, X, labels), W0), rtol=1e-6, atol=1e-9,
          show_value=False)

    losses = []
    W_ref, b_ref = W.copy(), b.copy()
    for step in range(300):
        value, (gW, gb) = grad_ce(W, b, X, labels)
        losses.append(value)
        W, b = W - 0.5 * gW, b - 0.5 * gb
        P = softmax(X @ W_ref + b_ref)               # the same step with the hand gradient
        W_ref = W_ref - 0.5 * X.T @ (P - onehot) / len(X)
        b_ref = b_ref - 0.5 * np.mean(P - onehot, axis=0)
    accuracy = np.mean(np.argmax(X @ W + b, axis=1) == labels)
    print(f"  loss {losses[0]:.4f} -> {losses[-1]:.4f}, training accuracy {accuracy:.1%}")
    check("W after 300 steps vs descent with the hand gradient", W, W_ref, rtol=1e-9,
          atol=1e-12)
    check("b after 300 steps", b, b_ref, rtol=1e-9, atol=1e-12)
    assert np.all(np.diff(losses) < 0), "the loss must decrease at every step"
    assert accuracy > 0.9, accuracy
    return X, labels, W, b, losses


def plot(regression_result, classifier_result):
    plt = pyplot()
    if plt is None:
        return
    X, Y, ws, losses = regression_result
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    a1.plot(X, Y, "o", label="data (y = 2x)")
    for epoch in (0, 4, 9, 99):
        a1.plot([0, 5], [0, 5 * ws[epoch]], "-", lw=1, label=f"w after epoch {epoch + 1}")
    a1.set(xlabel="x", ylabel="y", title="linear regression: f = w x")
    a1.legend(fontsize=8)
    a2.semilogy(np.arange(1, len(losses) + 1), losses)
    a2.set(xlabel="epoch", ylabel="MSE", title="loss, lr = 0.01")
    save(fig, "linear_regression.png")

    X, labels, W, b, losses = classifier_result
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4.2))
    a1.plot(losses)
    a1.set(xlabel="step", ylabel="cross-entropy", title="softmax classifier: training loss")
    t = np.linspace(-5, 5, 300)
    GX, GY = np.meshgrid(t, t)
    grid = np.stack([GX.ravel(), GY.ravel()], axis=1)
    regions = np.argmax(grid @ W + b, axis=1).reshape(GX.shape)
    a2.contourf(GX, GY, regions, levels=[-0.5, 0.5, 1.5, 2.5], colors=["#cfe2f3", "#fce5cd",
                                                                       "#d9ead3"])
    for k, color in enumerate(["tab:blue", "tab:orange", "tab:green"]):
        a2.plot(*X[labels == k].T, ".", color=color, label=f"class {k}")
    a2.set(xlabel="x1", ylabel="x2", title="decision regions", aspect="equal")
    a2.legend(fontsize=8, loc="upper right")
    save(fig, "softmax_classifier.png")


def main():
    plot(regression(), classifier())


if __name__ == "__main__":
    main()
