"""Transforms nested inside traced functions whose inner function closes over the outer traced
values (a lambda or def written in traced code): the inner transform treats them as constants
and the outer one differentiates through them, so perturbations are never confused (JAX's
"perturbation confusion" cases). Every result is checked against a closed form."""

import numpy as np
import pytest

import gradjit as gj


def test_reported_case():
    f = lambda x: x * gj.grad(lambda y: x * y)(2.0)  # noqa: E731  x * x
    assert gj.grad(f)(1.0) == pytest.approx(2.0)
    assert gj.grad(f)(3.5) == pytest.approx(7.0)


@pytest.mark.parametrize("x", [0.5, 3.0])
def test_perturbation_confusion(x):
    # d/dx [x * d/dy (x + y)] = d/dx x = 1
    assert gj.grad(lambda x: x * gj.grad(lambda y: x + y)(2.0))(x) == pytest.approx(1.0)
    # d/dx [d/dy (x y) at y = x] = d/dx x = 1 (confusing the two perturbations gives 2)
    assert gj.grad(lambda x: gj.grad(lambda y: x * y)(x))(x) == pytest.approx(1.0)
    # d/dx [d/dy (x y^2) at y = x] = d/dx 2 x^2 = 4x
    assert gj.grad(lambda x: gj.grad(lambda y: x * y ** 2)(x))(x) == pytest.approx(4 * x)


def test_closure_over_a_value_computed_from_the_argument():
    def f(x):
        z = np.sin(x)

        def inner(y):  # a def, and a value derived from x
            return z * y ** 2
        return gj.grad(inner)(x)  # 2 sin(x) x
    x = 0.8
    assert gj.grad(f)(x) == pytest.approx(2 * np.cos(x) * x + 2 * np.sin(x), rel=1e-12)


def test_three_levels_each_closing_over_the_ones_above():
    def f(x):
        return gj.grad(lambda y: gj.grad(lambda z: x * y * z ** 2)(y))(x)  # d/dy 2 x y^2 = 4 x^2
    assert gj.grad(f)(1.5) == pytest.approx(8 * 1.5)


def test_grad_inside_jit_and_jit_inside_grad():
    assert gj.jit(lambda x: gj.grad(lambda y: x * y ** 2)(x))(3.0) == pytest.approx(18.0)
    assert gj.grad(lambda x: gj.jit(lambda y: x * y ** 2)(2.0))(3.0) == pytest.approx(4.0)


def test_closure_inside_a_loop_of_the_inner_function():
    def static_loop(x):
        def inner(y):
            s = 0.0
            for i in range(100):  # kept as a loop: x is one of its operands
                s = s + x * y * 0.01
            return s  # x y
        return x * gj.grad(inner)(2.0)  # x^2
    assert gj.grad(static_loop)(1.5) == pytest.approx(3.0, rel=1e-12)

    def run_time_loop(x, n):
        def inner(y):
            s = y
            for i in range(n):
                s = s * x
            return s  # y x^n
        return gj.grad(inner)(2.0)  # x^n
    g = gj.grad(run_time_loop)
    for n in (0, 1, 3):
        assert g(1.5, n) == pytest.approx(n * 1.5 ** (n - 1) if n else 0.0, rel=1e-12)


def test_closure_over_arrays_and_sizes():
    x = np.array([1.0, 2.0, 3.0])
    # d/dx sum(d/dy sum(x y^2) at y = x) = d/dx sum(2 x^2) = 4x
    f = lambda x: np.sum(gj.grad(lambda y: np.sum(x * y * y))(x))  # noqa: E731
    np.testing.assert_allclose(gj.grad(f)(x), 4 * x, rtol=1e-12)
    # a size read from the closed-over array: sum(x) * n
    f = lambda x: np.sum(x) * gj.grad(lambda y: y * x.shape[0])(2.0)  # noqa: E731
    np.testing.assert_allclose(gj.grad(f)(x), np.full(3, 3.0), rtol=1e-12)


def test_jacobian_and_hessian_inside_grad():
    y0 = np.array([1.0, 2.0, 3.0])
    # the Jacobian of a y is a I: its sum is 3a
    assert gj.grad(lambda a: np.sum(gj.jacobian(lambda y: a * y)(y0)))(0.5) == pytest.approx(3.0)
    # the Hessian of a sum(y^3) is diag(6 a y): its sum is 6 a sum(y)
    assert gj.grad(lambda a: np.sum(gj.hessian(lambda y: a * np.sum(y ** 3))(y0)))(2.0) \
        == pytest.approx(6 * np.sum(y0))


def test_vmap_inside_grad():
    Y = np.arange(6.0).reshape(3, 2)
    w = np.array([0.5, -1.0])
    # sum_i w . y_i: its gradient is the sum of the rows
    f = lambda w: np.sum(gj.vmap(lambda y: np.dot(w, y))(Y))  # noqa: E731
    np.testing.assert_allclose(gj.grad(f)(w), Y.sum(0), rtol=1e-12)
    # sum_i sum(d/dy (w . y)^2 at y_i) = sum_i 2 (w . y_i) sum(w)
    f = lambda w: np.sum(gj.vmap(gj.grad(lambda y: np.dot(w, y) ** 2))(Y))  # noqa: E731
    want = 2 * (Y.sum(0) * w.sum() + (Y @ w).sum())
    np.testing.assert_allclose(gj.grad(f)(w), want, rtol=1e-12)


def test_value_and_grad_inside_grad():
    # d/dx [x * d/dy (x y^2) at y = 3] = d/dx 6 x^2 = 12 x
    f = lambda x: x * gj.value_and_grad(lambda y: x * y * y)(3.0)[1]  # noqa: E731
    assert gj.grad(f)(2.0) == pytest.approx(24.0)
