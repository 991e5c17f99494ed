"""Fitting a trigonometric model with scipy.optimize.minimize and a gradjit gradient.

The Q&A "How to use gradient descent to solve this multiple terms trigonometry function?":
100 samples of f(x) = A sin(2 pi 10 x) + B cos(2 pi 5 x) + C sin(2 pi 3 x), find A, B, C.
The mean squared error is handed to ``scipy.optimize.minimize`` with ``jac=gj.grad(loss)``,
and the fit (-5, 4, 2) is checked against the linear least-squares solution
(``np.linalg.lstsq``). Plots the data and the fit to ``figures/trig_fit.png``.

    python examples/trig_fit.py
"""

import numpy as np
from scipy.optimize import minimize

import gradjit as gj
from _check import central_grad, check, section
from _plot import pyplot, save


def model(params, x):
    A, B, C = params[0], params[1], params[2]
    return (A * np.sin(2 * np.pi * 10 * x) + B * np.cos(2 * np.pi * 5 * x)
            + C * np.sin(2 * np.pi * 3 * x))


def loss(params, x, y):
    return np.mean((y - model(params, x)) ** 2)


def data():
    """The question's samples: x = 0, 0.01, ..., 0.99 and y = f(x) for (A, B, C) = (-5, 4, 2)."""
    x = np.arange(100) / 100
    y = model(np.array([-5.0, 4.0, 2.0]), x)
    # values the question lists (the 1st, 2nd, 7th and 100th)
    assert np.allclose(y[[0, 1, 6, 99]], [4, 1.240062433, 3.512512389, 6.368389697], atol=1e-8)
    return x, y


def plot(x, y, params):
    plt = pyplot()
    if plt is None:
        return
    t = np.linspace(0, 1, 1000)
    fig, ax = plt.subplots(figsize=(9, 3.8))
    ax.plot(x, y, "o", ms=4, label="the 100 samples")
    A, B, C = params
    ax.plot(t, model(params, t), "-", lw=1.2,
            label=f"fit: {A:.3f} sin(20 pi x) + {B:.3f} cos(10 pi x) + {C:.3f} sin(6 pi x)")
    ax.set(xlabel="x", ylabel="f(x)", title="minimize(loss, jac=gj.grad(loss), method='BFGS')")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2, fontsize=8)
    save(fig, "trig_fit.png")


def main():
    x, y = data()
    x0 = np.array([1.0, 1.0, 1.0])
    jac = gj.grad(loss)

    section("the gradient of the loss at the starting point")
    check("gj.grad(loss)(x0, x, y) vs central differences", jac(x0, x, y),
          central_grad(lambda p: loss(p, x, y), x0), rtol=1e-6)

    section("scipy.optimize.minimize(loss, x0, args=(x, y), jac=gj.grad(loss), method='BFGS')")
    res = minimize(loss, x0, args=(x, y), jac=jac, method="BFGS")
    print(f"  {res.message} iterations: {res.nit}, loss evaluations: {res.nfev}, "
          f"gradient evaluations: {res.njev}, final loss: {res.fun:.2e}")
    design = np.stack([np.sin(2 * np.pi * 10 * x), np.cos(2 * np.pi * 5 * x),
                       np.sin(2 * np.pi * 3 * x)], axis=1)
    lstsq = np.linalg.lstsq(design, y, rcond=None)[0]
    check("(A, B, C) vs np.linalg.lstsq", res.x, lstsq, atol=1e-5)
    check("(A, B, C)", np.round(res.x, 4), [-5.0, 4.0, 2.0])
    assert res.success
    plot(x, y, res.x)


if __name__ == "__main__":
    main()
