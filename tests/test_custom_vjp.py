"""gj.custom_vjp: the user's reverse rule is the one used (a different bwd changes the
gradient), it composes with grad, value_and_grad, hessian, vmap, jit and loops, and its results
agree with closed forms and central differences."""

import numpy as np
import pytest

import gradjit as gj


def _fd(f, x, h=1e-6):
    g = np.zeros_like(x)
    for i in range(x.size):
        e = np.zeros_like(x)
        e.flat[i] = h
        g.flat[i] = (f(x + e) - f(x - e)) / (2 * h)
    return g


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


# ---- a numerically stable gradient: log(1 + e^x), whose naive gradient is nan at large x ----

@gj.custom_vjp
def log1pexp(x):
    return np.log1p(np.exp(x))


def _log1pexp_fwd(x):
    return log1pexp(x), x


def _log1pexp_bwd(x, g):
    return (g * (1.0 - 1.0 / (1.0 + np.exp(x))),)


log1pexp.defvjp(_log1pexp_fwd, _log1pexp_bwd)


def soft_total(x):
    return np.sum(3.0 * log1pexp(x))


def test_the_rule_gives_a_finite_gradient_where_the_formula_overflows():
    x = np.array([-2.0, 0.0, 1.5, 800.0])
    with np.errstate(over="ignore"):
        got = gj.grad(soft_total)(x)
    np.testing.assert_allclose(got, 3.0 * _sigmoid(x), rtol=1e-12)
    y = x[:3]
    np.testing.assert_allclose(gj.jit(soft_total)(y), soft_total(y), rtol=1e-12)
    value, g = gj.value_and_grad(soft_total)(y)
    np.testing.assert_allclose(value, soft_total(y), rtol=1e-12)
    np.testing.assert_allclose(g, _fd(soft_total, y), rtol=1e-7)


def test_second_derivative_through_the_rule():
    x = np.array([-1.0, 0.0, 2.0])
    s = _sigmoid(x)
    np.testing.assert_allclose(gj.hessian(soft_total)(x), np.diag(3.0 * s * (1 - s)),
                               rtol=1e-10, atol=1e-14)


def test_under_vmap_of_grad_and_in_a_plain_call():
    xs = np.linspace(-2, 2, 12).reshape(4, 3)
    got = gj.vmap(gj.grad(soft_total))(xs)
    np.testing.assert_allclose(got, 3.0 * _sigmoid(xs), rtol=1e-12)
    np.testing.assert_allclose(gj.vmap(log1pexp)(xs), np.log1p(np.exp(xs)), rtol=1e-12)
    np.testing.assert_allclose(log1pexp(xs), np.log1p(np.exp(xs)))  # plain Python: fun


# ---- a rule that is not the derivative: the gradient is the rule's, not the function's ------

@gj.custom_vjp
def clip_gradient(x):
    return x


clip_gradient.defvjp(lambda x: (x, None), lambda res, g: (np.clip(g, -1.0, 1.0),))


def test_a_different_rule_changes_the_gradient():
    def f(x):
        return np.sum(5.0 * clip_gradient(x * 3.0))
    x = np.array([0.1, -0.7, 2.0])
    np.testing.assert_allclose(gj.grad(f)(x), np.full(3, 3.0))  # clip(5) * 3, not 15
    np.testing.assert_allclose(gj.jit(f)(x), f(x))


# ---- several arguments, a pytree, a residual tuple, inside a loop ---------------------------

@gj.custom_vjp
def weighted(p, x):
    return np.sum(p["w"] * np.sin(x)) + p["b"]


def _weighted_fwd(p, x):
    return weighted(p, x), (p["w"], np.cos(x), np.sin(x))


def _weighted_bwd(res, g):
    w, c, s = res
    return {"w": g * s, "b": g}, g * w * c


weighted.defvjp(_weighted_fwd, _weighted_bwd)


def test_several_arguments_and_pytrees():
    p = {"w": np.array([0.5, -1.0, 2.0]), "b": 0.25}
    x = np.array([0.3, 1.1, -0.4])
    gp, gx = gj.grad(lambda p, x: weighted(p, x) ** 2, argnums=(0, 1))(p, x)
    v = weighted(p, x)
    np.testing.assert_allclose(gp["w"], 2 * v * np.sin(x), rtol=1e-12)
    np.testing.assert_allclose(gp["b"], 2 * v, rtol=1e-12)
    np.testing.assert_allclose(gx, 2 * v * p["w"] * np.cos(x), rtol=1e-12)


def test_inside_a_loop_whose_trip_count_is_a_value():
    def f(x, n):
        s = 0.0
        for k in range(n):
            s = s + np.sum(log1pexp(x * (k + 1.0)))
        return s
    x = np.array([0.2, -0.5])
    for n in (0, 1, 4):
        want = sum((k + 1.0) * _sigmoid(x * (k + 1.0)) for k in range(n)) + 0 * x
        np.testing.assert_allclose(gj.grad(f)(x, n), want, rtol=1e-12)


# ---- errors ------------------------------------------------------------------------------------

def test_bwd_returning_the_wrong_structure_names_the_line():
    @gj.custom_vjp
    def f(x, y):
        return x * y
    f.defvjp(lambda x, y: (x * y, (x, y)), lambda r, g: (g * r[1],))
    with pytest.raises(gj.TraceError, match=r"test_custom_vjp.py:\d+: custom_vjp: .* must return "
                                            r"a tuple of 2 cotangent"):
        gj.grad(lambda x: f(x, 2.0))(1.5)


SCALE = np.array([1.0, 2.0])


@gj.custom_vjp
def scaled(x):
    return np.sum(SCALE * x ** 2)


scaled.defvjp(lambda x: (scaled(x), x), lambda x, g: (2.0 * g * SCALE * x,))


def test_globals_read_by_fwd_and_bwd_are_read_at_every_call():
    global SCALE
    x = np.array([0.5, -1.5])
    f = gj.grad(scaled)
    np.testing.assert_allclose(f(x), 2.0 * SCALE * x)
    old = SCALE
    try:
        SCALE = np.array([-3.0, 0.25])
        np.testing.assert_allclose(f(x), 2.0 * SCALE * x)
    finally:
        SCALE = old
