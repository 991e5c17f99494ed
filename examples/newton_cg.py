"""Newton-CG with a gradient and a Hessian from gradjit.

The Q&A "Newton-CG optimization in python, problems with Jacobian": minimise
f(x, y) = (1 - x)^2 + 2 (y - x^2)^2 from (3, 2) with ``scipy.optimize.minimize(...,
method='Newton-CG')``, which needs the gradient (``jac``). The question's hand-written one
failed (``np.zeros_like(x)`` of a scalar); ``gj.grad(f)`` is written by nobody, and
``gj.hessian(f)`` gives Newton-CG the exact Hessian too. Both are checked against the hand
derivatives; the minimum is (1, 1).

    python examples/newton_cg.py
"""

import numpy as np
from scipy.optimize import minimize

import gradjit as gj
from _check import check, section


def f(params):
    x, y = params
    return (1 - x) ** 2 + 2 * (y - x ** 2) ** 2


def jacobian(params):            # the answer's corrected hand derivative
    x, y = params
    der = np.zeros_like(params, dtype=float)
    der[0] = -8 * x * (-x ** 2 + y) + 2 * x - 2
    der[1] = -4 * x ** 2 + 4 * y
    return der


def hessian(params):             # by hand
    x, y = params
    return np.array([[2 - 8 * y + 24 * x ** 2, -8 * x], [-8 * x, 4.0]])


def main():
    jac, hess = gj.grad(f), gj.hessian(f)
    section("gradient and Hessian against the hand derivatives")
    for p in [np.array([3.0, 2.0]), np.array([-0.5, 1.5]), np.array([1.0, 1.0])]:
        check(f"grad f({p[0]:g}, {p[1]:g})", jac(p), jacobian(p))
        check(f"hessian f({p[0]:g}, {p[1]:g})", hess(p), hessian(p))

    section("minimize(f, [3, 2], method='Newton-CG', jac=gj.grad(f), hess=gj.hessian(f))")
    initial_guess = [3, 2]
    res = minimize(f, initial_guess, method="Newton-CG", jac=jac, hess=hess)
    print(f"  {res.message} iterations: {res.nit}, f evaluations: {res.nfev}, "
          f"gradients: {res.njev}, Hessians: {res.nhev}")
    check("minimum", res.x, [1.0, 1.0], atol=1e-6)
    assert res.success

    section("the same with the hand-written derivatives, for comparison")
    ref = minimize(f, initial_guess, method="Newton-CG", jac=jacobian, hess=hessian)
    print(f"  iterations: {ref.nit}, f evaluations: {ref.nfev}")
    check("minimum with hand derivatives", res.x, ref.x, atol=1e-9)
    res = minimize(f, initial_guess, method="Newton-CG", jac=jac)   # Hessian-vector products
    check("without hess (Newton-CG differences the gradient)", res.x, [1.0, 1.0], atol=1e-5)


if __name__ == "__main__":
    main()
