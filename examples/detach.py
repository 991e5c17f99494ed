"""Detaching a value from differentiation: ``gj.stop_gradient`` (PyTorch ``detach()``,
TensorFlow ``tf.stop_gradient``).

With y = x * x and u = stop_gradient(y), z = u * x is, for differentiation, a constant u
times x: dz/dx = u = x^2, where without the detach dz/dx = d x^3 / dx = 3 x^2. Also: PyTorch's
``torch.no_grad()`` / ``requires_grad_(False)`` is simply not differentiating with respect to
an argument, and gradjit's gradients are returned, never accumulated into ``x.grad``.

    python examples/detach.py
"""

import numpy as np

import gradjit as gj
from _check import check, section


def detached(x):
    y = x * x
    u = gj.stop_gradient(y)
    z = u * x
    return np.sum(z)


def attached(x):
    y = x * x
    z = y * x
    return np.sum(z)


def squares(x):
    return np.sum(x * x)


def model_output(weights, scale):
    return np.sum(weights * scale)


def main():
    x = np.arange(4.0)

    section("z = u * x with u = stop_gradient(x * x): dz/dx = u")
    check("gj.grad(detached)(x)", gj.grad(detached)(x), x * x)
    check("detached(x), the value, is unchanged: sum(x^3)", detached(x), np.sum(x**3))
    check("without stop_gradient: d x^3 / dx = 3 x^2", gj.grad(attached)(x), 3 * x * x)
    check("y = x * x itself still has dy/dx = 2x", gj.grad(squares)(x), 2 * x)

    section("no_grad / requires_grad_(False): differentiate only the arguments you ask for")
    w = np.array([1.0, 2.0, 3.0, 4.0])
    check("d/d weights of sum(weights * 3)", gj.grad(model_output)(w, 3.0), np.full(4, 3.0))
    check("d/d (weights, scale) with argnums=(0, 1)",
          gj.grad(model_output, argnums=(0, 1))(w, 3.0), (np.full(4, 3.0), w.sum()))

    section("no accumulation: no .grad to zero between steps")
    g = gj.grad(model_output)
    for epoch in range(3):   # PyTorch without grad.zero_() printed 3, 6, 9 here
        check(f"epoch {epoch}: gradient", g(w, 3.0), np.full(4, 3.0))


if __name__ == "__main__":
    main()
