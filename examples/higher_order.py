"""Higher-order derivatives: gradients of gradients, and Hessians.

The intro tutorial's f(x, w) = (x + 5w)^2 at x = 2, w = 3: f_x = 2(x + 5w) = 34,
f_w = 10(x + 5w) = 170, and the second derivatives f_xx = 2, f_xw = f_wx = 10, f_ww = 50.
PyTorch needs ``create_graph=True`` and a second ``backward``; gradjit's transforms compose:
``gj.grad(gj.grad(f))``, ``gj.jacobian(gj.grad(f))``, ``gj.hessian(f)``, each compiled to one
kernel.

    python examples/higher_order.py
"""

import numpy as np

import gradjit as gj
from _check import central_hessian, check, section


def parabola(x):
    return x**2 + 3


def f1(x):
    return x**2


def f2(x, w):
    return x + 5 * w


def f(x, w):
    return f1(f2(x, w))           # (x + 5w)^2


def f_vec(p):                     # the same function of one vector p = (x, w)
    return f(p[0], p[1])


def sine(x):
    return np.sin(x)


def logsumexp(z):
    m = np.max(z)
    return m + np.log(np.sum(np.exp(z - m)))


def main():
    section("d/dx (x^2 + 3) at x = 2")
    check("gj.grad(parabola)(2.0)", gj.grad(parabola)(2.0), 4.0)

    section("f(x, w) = (x + 5w)^2 at x = 2, w = 3: first derivatives")
    x, w = 2.0, 3.0
    check("(f_x, f_w) = gj.grad(f, argnums=(0, 1))", gj.grad(f, argnums=(0, 1))(x, w),
          (2 * (x + 5 * w), 10 * (x + 5 * w)))

    section("second derivatives: the gradient of each first derivative")
    fx = gj.grad(f, argnums=0)
    fw = gj.grad(f, argnums=1)
    check("(f_xx, f_xw) = gj.grad(f_x, argnums=(0, 1))", gj.grad(fx, argnums=(0, 1))(x, w),
          (2.0, 10.0))
    check("(f_wx, f_ww) = gj.grad(f_w, argnums=(0, 1))", gj.grad(fw, argnums=(0, 1))(x, w),
          (10.0, 50.0))
    H = np.array([[2.0, 10.0], [10.0, 50.0]])
    p = np.array([x, w])
    check("gj.hessian(f_vec)(p)", gj.hessian(f_vec)(p), H)
    check("gj.jacobian(gj.grad(f_vec))(p)", gj.jacobian(gj.grad(f_vec))(p), H)
    check("  vs central second differences", gj.hessian(f_vec)(p), central_hessian(f_vec, p),
          rtol=1e-5, atol=1e-5)

    section("third and fourth derivatives of sin: -cos, sin")
    d3 = gj.grad(gj.grad(gj.grad(sine)))
    d4 = gj.grad(d3)
    for t in [0.0, 0.7, 2.0]:
        check(f"d^3 sin / dx^3 at {t}", d3(t), -np.cos(t), atol=1e-12)
        check(f"d^4 sin / dx^4 at {t}", d4(t), np.sin(t), atol=1e-12)

    section("the Hessian of logsumexp in 50 dimensions: diag(p) - p p^T")
    z = np.random.default_rng(0).standard_normal(50)
    q = np.exp(z - logsumexp(z))
    check("gj.hessian(logsumexp)(z)", gj.hessian(logsumexp)(z), np.diag(q) - np.outer(q, q),
          atol=1e-12, show_value=False)


if __name__ == "__main__":
    main()
