"""Loops whose carried values change form in the body: a state entering as an argument of
run-time length and leaving as a fixed-length array, a scalar becoming an array, a length-1
array broadcast, a vector becoming a matrix. Loops of more than 64 iterations (or of a run-time
trip count) are kept as loops: their first iteration runs before the loop when it changes a
carried value's shape, so the loop carries what numpy computes. Gradients are checked against
closed forms and central differences of the plain numpy functions."""

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import gradjit as gj


def differences(f, args, k, h=1e-6):
    """Central differences of the plain numpy function ``f`` in argument ``k``."""
    args = [np.array(a, dtype=float) if not isinstance(a, int) else a for a in args]
    x = args[k]
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[idx] = h
        g[idx] = (f(*args[:k], x + e, *args[k + 1:]) - f(*args[:k], x - e, *args[k + 1:])) / (2 * h)
    return g


def euler_scaled(p, y0):  # the reported crash: y0 of run-time length becomes a 2-vector
    y = y0
    h = 0.01
    for i in range(100):
        y = y + h * np.array([p[0] * y[0], p[1] * y[1]])
    return np.sum(y)


def matmul_scaled(p, y0):
    y = y0
    for i in range(100):
        y = y @ np.ones((2, 2)) * p[0]
    return np.sum(y)


def test_argument_length_carry_becoming_fixed_length_closed_forms():
    p, y0 = np.array([0.1, 0.2]), np.array([1.0, 2.0])
    gp, gy = gj.grad(euler_scaled, argnums=(0, 1))(p, y0)  # y_k = y0_k (1 + h p_k)^100
    np.testing.assert_allclose(gp, y0 * 100 * 0.01 * (1 + 0.01 * p) ** 99, rtol=1e-12)
    np.testing.assert_allclose(gy, (1 + 0.01 * p) ** 100, rtol=1e-12)
    p = np.array([0.5, 0.2])  # sum(y) doubles times p[0] per step: (2 p0)^100 sum(y0)
    gp, gy = gj.grad(matmul_scaled, argnums=(0, 1))(p, y0)
    np.testing.assert_allclose(gp, [2 * 100 * 3.0, 0.0], rtol=1e-12)
    np.testing.assert_allclose(gy, [1.0, 1.0], rtol=1e-12)


def reduced_state(p, y0, n):
    y = y0  # any length: the body only reduces it, so numpy runs for every length
    for i in range(n):
        y = np.array([np.sum(y) * 0.5, np.sum(y * y) * 0.1]) * p + p
    return np.sum(y)


def test_carry_of_any_entry_length_with_run_time_trip_count():
    g = gj.grad(reduced_state, argnums=(0, 1))
    p = np.array([0.3, -0.4])
    for y0 in (np.array([0.5, 0.3, 0.2]), np.array([1.0, -1.0, 0.5, 2.0])):
        for n in (1, 4, 90):  # a length not 2 was a run-time ShapeError before
            got = g(p, y0, n)
            for k in (0, 1):
                np.testing.assert_allclose(got[k], differences(reduced_state, (p, y0, n), k),
                                           rtol=1e-6, atol=1e-9)
            assert gj.jit(reduced_state)(p, y0, n) == pytest.approx(reduced_state(p, y0, n))


def test_zero_trips_keep_the_initial_value():
    f = lambda p, y0, n: np.sum(matmul_loop(p, y0, n) ** 2)  # noqa: E731
    p, y0 = np.array([0.7, 0.2]), np.array([1.0, 2.0])
    for n in (0, 1, 80):
        gp, gy = gj.grad(f, argnums=(0, 1))(p, y0, n)
        np.testing.assert_allclose(gp, differences(f, (p, y0, n), 0), rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(gy, differences(f, (p, y0, n), 1), rtol=1e-6, atol=1e-9)


def weighted_if(p, c):
    if c > 0:
        return np.sum(p * np.array([1.0, 2.0]))  # p's cotangent is a fixed-length 2-vector
    return np.sum(p * p)


def test_branch_cotangents_of_fixed_and_run_time_length():
    # the else branch runs for any length of p: its adjoint must not check that it is 2
    np.testing.assert_allclose(gj.grad(weighted_if)(np.array([1.0, 2.0, 3.0]), -1.0), [2, 4, 6])
    np.testing.assert_allclose(gj.grad(weighted_if)(np.array([1.0, 2.0]), 1.0), [1, 2])


def matmul_loop(p, y0, n):
    y = y0
    for i in range(n):
        y = y @ np.ones((2, 2)) * p[0]
    return y


# -- RK4 ---------------------------------------------------------------------------------------


def rk4(f, p, y0, h, n):
    y = y0
    for i in range(n):
        k1 = f(p, y)
        k2 = f(p, y + 0.5 * h * k1)
        k3 = f(p, y + 0.5 * h * k2)
        k4 = f(p, y + h * k3)
        y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return y


def linear(p, y):  # y' = A y, A = -p0 I + p1 N (N nilpotent): exp(A t) = e^(-p0 t) (I + p1 t N)
    return np.array([-p[0] * y[0] + p[1] * y[1], -p[0] * y[1]])


def lotka_volterra(p, y):
    return np.array([p[0] * y[0] - p[1] * y[0] * y[1], p[1] * y[0] * y[1] - p[2] * y[1]])


def linear_total(p, y0):
    return np.sum(rk4(linear, p, y0, 0.01, 150))


def lv_energy(p, y0, n):
    y = rk4(lotka_volterra, p, y0, 0.02, n)
    return y[0] ** 2 + np.sin(y[1])


def test_rk4_linear_ode_against_its_closed_form():
    p, y0 = np.array([0.8, 1.5]), np.array([1.0, -0.5])
    T = 1.5
    e = np.exp(-p[0] * T)
    total = e * (y0[0] + p[1] * T * y0[1] + y0[1])
    assert gj.jit(linear_total)(p, y0) == pytest.approx(total, rel=1e-9)
    gp, gy = gj.grad(linear_total, argnums=(0, 1))(p, y0)
    np.testing.assert_allclose(gp, [-T * total, e * T * y0[1]], rtol=1e-8)  # RK4: O(h^4)
    np.testing.assert_allclose(gy, [e, e * (1 + p[1] * T)], rtol=1e-8)
    for k, g in ((0, gp), (1, gy)):
        np.testing.assert_allclose(g, differences(linear_total, (p, y0), k), rtol=1e-7)


def test_rk4_nonlinear_ode_with_run_time_step_count_against_differences():
    g = gj.grad(lv_energy, argnums=(0, 1))
    p, y0 = np.array([1.1, 0.4, 0.9]), np.array([1.2, 0.7])
    for n in (0, 1, 3, 120):  # one kernel: the step count is a run-time value
        gp, gy = g(p, y0, n)
        np.testing.assert_allclose(gp, differences(lv_energy, (p, y0, n), 0), rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(gy, differences(lv_energy, (p, y0, n), 1), rtol=1e-6, atol=1e-9)


def integrate_until(p, y0, T):  # a while loop: the step count follows a value
    y, t = y0, 0.0
    while t < T:
        y = y + 0.05 * np.array([y[1], -p[0] * y[0] - p[1] * y[1]])
        t = t + 0.05
    return np.sum(y * y)


def test_while_loop_carry_becoming_fixed_length():
    g = gj.grad(integrate_until, argnums=(0, 1))
    p, y0 = np.array([2.0, 0.3]), np.array([1.0, 0.0])
    for T in (0.0, 0.01, 4.0):
        for k, got in enumerate(g(p, y0, T)):
            np.testing.assert_allclose(got, differences(integrate_until, (p, y0, T), k),
                                       rtol=1e-6, atol=1e-9)


# -- properties --------------------------------------------------------------------------------

STEPS = {  # one step of a carried state y, reading the parameters p (a 2-vector)
    "fixed": lambda y, p: np.array([np.tanh(np.sum(y) * p[0]), np.cos(np.mean(y)) * p[1]]) + 0.3,
    "broadcast": lambda y, p: 0.5 * y + 0.2 * np.sin(np.sum(y)) * p + 0.1,
    "outer": lambda y, p: 0.5 * y + 0.1 * np.outer(p, np.tanh(p)),
    "elementwise": lambda y, p: np.tanh(y * p[0]) + 0.5 * y,
}
ENTRIES = {  # the state before the loop, from the argument y0
    "argument": lambda y0: y0,  # run-time length
    "scalar": lambda y0: y0[0],
    "unit": lambda y0: np.array([y0[0]]),  # length 1: broadcast by the first step meeting p
    "python": lambda y0: 0.5,
}


@settings(max_examples=6, deadline=None)  # and the examples: ~2.5 s of compile each
@example(entry="argument", ops=["fixed"], loop="static", n=1, seed=1)  # run-time length to 2
@example(entry="unit", ops=["broadcast"], loop="static", n=1, seed=2)  # (1,) broadcast by p
@example(entry="argument", ops=["outer", "broadcast"], loop="static", n=1, seed=3)  # to a matrix
@example(entry="argument", ops=["fixed", "elementwise"], loop="while", n=70, seed=4)
@example(entry="unit", ops=["broadcast"], loop="run-time", n=2, seed=5)  # a ShapeError
@example(entry="scalar", ops=["outer"], loop="run-time", n=70, seed=6)  # scalar to matrix
@given(entry=st.sampled_from(sorted(ENTRIES)),
       ops=st.lists(st.sampled_from(sorted(STEPS)), min_size=1, max_size=2),
       loop=st.sampled_from(["static", "run-time", "while"]), n=st.sampled_from([1, 2, 70]),
       seed=st.integers(0, 2 ** 16))
def test_property_loop_carries_changing_form(entry, ops, loop, n, seed):
    """Random loop bodies whose carried state changes form (argument length to fixed length,
    scalar or length 1 to a broadcast vector, vector to matrix): the gradient in the parameters
    and the initial state matches central differences of the plain numpy function."""
    steps, start = [STEPS[o] for o in ops], ENTRIES[entry]

    def body(y, p):
        for s in steps:
            y = s(y, p)
        return y

    def state(p, y0, m):
        y = start(y0)
        if loop == "static":
            for i in range(70):  # above the unrolling limit: a loop
                y = body(y, p)
        elif loop == "run-time":
            for i in range(m):
                y = body(y, p)
        else:
            k = 0
            while k < m:
                y = body(y, p)
                k += 1
        return y

    def f(p, y0, m):
        y = state(p, y0, m)
        return np.sum(np.sin(y) * y)
    rng = np.random.default_rng(seed)
    p, y0 = rng.uniform(-0.9, 0.9, 2), rng.uniform(-0.9, 0.9, 2)
    g = gj.grad(f, argnums=(0, 1))
    if loop != "static" and np.shape(state(p, y0, 0)) not in ((), np.shape(state(p, y0, n))):
        # a loop that may run no times leaves a value whose shape is known only at run time
        # (a rank-0 initial value is widened; other shapes cannot be)
        with pytest.raises(gj.ShapeError):
            g(p, y0, n)
        return
    gp, gy = g(p, y0, n)
    np.testing.assert_allclose(gp, differences(f, (p, y0, n), 0), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(gy, differences(f, (p, y0, n), 1), rtol=1e-6, atol=1e-8)
