"""Vector-valued functions: vector-Jacobian products, the gradient of a mean, Jacobians.

``gj.grad`` wants a scalar output. For a vector output y = f(x), PyTorch asks for a vector
to contract with (``y.backward(torch.ones_like(y))``); gradjit's ``gj.vjp(f, x)`` returns
f(x) and the function ``v -> v^T J``. With v one row of the identity, that is one row of
the Jacobian; ``gj.jacobian(f)`` returns all rows at once.

    python examples/vector_functions.py
"""

import numpy as np

import gradjit as gj
from _check import central_grad, central_jacobian, check, section


def plus_two(x):
    return x + 2


def square(x):
    return x * x


def mean_of_2y2(x):          # the PyTorch tutorial: y = x + 2, z = 2 y^2, out = z.mean()
    y = x + 2
    z = y * y * 2
    return z.mean()


def mean_of_3y2(x):          # the Q&A "should it be 9/8?": o = mean(3 (x + 2)^2) on ones(2, 2)
    y = x + 2
    z = y * y * 3
    return np.mean(z)


def scaled_sines(x):         # a Jacobian with every entry nonzero
    return np.sin(x) * np.sum(x**2)


def main():
    x = np.random.default_rng(0).uniform(size=3)

    section("y = x + 2; y.backward(ones_like(y)) is a vjp with a ones cotangent")
    y, vjp_fn = gj.vjp(plus_two, x)
    check("gj.vjp(plus_two, x)[1](ones)", vjp_fn(np.ones_like(y))[0], np.ones(3))

    section("y = x * x with a ones cotangent: the gradient of y.sum(), 2x")
    y, vjp_fn = gj.vjp(square, x)
    check("vjp_fn(ones)", vjp_fn(np.ones_like(y))[0], 2 * x)
    check("gj.grad(lambda x: square(x).sum())", gj.grad(lambda x: square(x).sum())(x), 2 * x)
    check("vjp_fn(v) = v * 2x for any v", vjp_fn(np.array([1.0, -1.0, 0.5]))[0],
          np.array([1.0, -1.0, 0.5]) * 2 * x)

    section("the gradient of a mean: z = 2 (x + 2)^2, z.mean() -> 4 (x + 2) / 3")
    check("gj.grad(mean_of_2y2)(x)", gj.grad(mean_of_2y2)(x), 4 * (x + 2) / 3)

    section("o = mean(3 (x + 2)^2) at ones(2, 2): 9/2, not 9/8")
    print("  do/dz = 1/4 (a mean of 4), dz/dy = 6 y = 18, dy/dx = 1  ->  do/dx = 18/4 = 9/2")
    ones = np.ones((2, 2))
    check("gj.grad(mean_of_3y2)(ones((2, 2)))", gj.grad(mean_of_3y2)(ones), np.full((2, 2), 4.5))

    section("the Jacobian of f(x) = sin(x) * sum(x^2), row by row and all at once")
    x = np.array([0.3, -1.2, 2.0, 0.7])
    S = np.sum(x**2)
    J_closed = np.diag(np.cos(x) * S) + np.outer(np.sin(x), 2 * x)
    y, vjp_fn = gj.vjp(scaled_sines, x)
    rows = np.stack([vjp_fn(e)[0] for e in np.eye(len(x))])   # row i = e_i^T J
    check("rows e_i^T J from vjp_fn", rows, J_closed)
    check("gj.jacobian(scaled_sines)(x)", gj.jacobian(scaled_sines)(x), J_closed,
          show_value=False)
    check("  vs central differences", gj.jacobian(scaled_sines)(x),
          central_jacobian(scaled_sines, x), rtol=1e-6, atol=1e-7, show_value=False)
    # the gradient of a sum of outputs is the sum of the Jacobian's rows
    check("gradient of sum(f) = ones^T J", gj.grad(lambda x: scaled_sines(x).sum())(x),
          central_grad(lambda x: scaled_sines(x).sum(), x), rtol=1e-6, atol=1e-7)


if __name__ == "__main__":
    main()
