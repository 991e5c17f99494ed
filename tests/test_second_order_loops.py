"""Second derivatives through loops that keep a tape (their backward pass reads values of
earlier iterations): grad of grad, Hessians, vmap of Hessians, the parallel target, and the
clear error for a third derivative. Every second derivative is checked against a closed form
or against second-order central differences of the plain numpy function (gradjit plays no
part in the oracle)."""

import os
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gradjit as gj
from gradjit.testing import reference_transform

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples"))
import control_flow as CF  # noqa: E402
import local_arrays as L  # noqa: E402


def second_differences(f, x, h):
    """(f(x+ei+ej) - f(x+ei-ej) - f(x-ei+ej) + f(x-ei-ej)) / 4h^2 for steps h ei, as a (size,
    size) matrix (a scalar for a scalar x)."""
    x = np.asarray(x, float)
    E = np.eye(x.size).reshape((x.size,) + x.shape) * h
    H = np.empty((x.size, x.size))
    for i in range(x.size):
        for j in range(i, x.size):
            H[i, j] = H[j, i] = (f(x + E[i] + E[j]) - f(x + E[i] - E[j]) - f(x - E[i] + E[j])
                                 + f(x - E[i] - E[j])) / (4 * h * h)
    return H if x.ndim else H[0, 0]


def hessian_by_differences(f, x, h=1e-3):
    """The Hessian of the plain numpy function ``f`` by second differences, Richardson
    extrapolated (the h^2 error terms cancel): about 1e-9 of the largest entry on these
    examples, where plain differences of step 1e-4 leave 1e-7 of rounding error."""
    return (4 * second_differences(f, x, h) - second_differences(f, x, 2 * h)) / 3


def compiles():
    return gj.cache_info().compiles


def iterated_sine(x, n):
    y = x
    for i in range(n):
        y = np.sin(y) * 1.3
    return y


def iterated_map(x, n):  # a vector state carried through a loop whose trip count is an argument
    for i in range(n):
        x = np.tanh(0.9 * x + 0.3 * np.roll(x, 1)) + 0.1 * x * x
    return np.sum(x * x)


rng = np.random.default_rng(7)
# name: (function of one array, argument); iterated_map (a vector state) is checked below with a
# run-time trip count (compiling each of these costs seconds: the list is kept to distinct kinds)
EXAMPLES = {
    "cumsum": (L.cumsum_loop, rng.standard_normal(6)),
    "stencil": (L.stencil, rng.standard_normal(7)),
    "euler": (lambda p: L.euler(p, 0.5, 30), np.array([0.7, 1.3])),
    "euler_rows": (lambda p: L.euler_rows(p, np.array([1.0, -0.5, 2.0]), 20),
                   np.array([0.5, 2.0, 0.1])),
    "dp_table": (L.dp_table, rng.standard_normal(5) * 0.5),
    "overwrite_twice": (L.overwrite_twice, rng.standard_normal(5)),
    "branch_writes": (L.branch_writes, rng.standard_normal(6)),
    "write_until_break": (L.write_until_break, rng.standard_normal(6) * 0.6),
    "recurrence": (L.recurrence, rng.standard_normal(6)),
    "while_fill": (L.while_fill, rng.standard_normal(6)),
    "row_writes": (L.row_writes, rng.standard_normal((3, 3))),
    "first_positive_run": (CF.first_positive_run, np.abs(rng.standard_normal(8))),  # no break at 0
}


# Their compiled Hessians cost 10-65 s of numba compile each on 2 cores (nested loops and the
# size-specialised version multiply the kernel): their differentiated IR is evaluated by the
# reference evaluator instead; the others cover the compiled second-order path.
REFERENCE_ONLY = {"dp_table", "write_until_break", "branch_writes", "euler_rows", "row_writes"}


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_hessian_through_taped_loops_matches_differences(name):
    f, x = EXAMPLES[name]
    H = reference_transform(gj.hessian(f), (x,))[0] if name in REFERENCE_ONLY \
        else gj.hessian(f)(x)
    assert H.shape == x.shape + x.shape
    want = hessian_by_differences(f, x)
    np.testing.assert_allclose(H.reshape(want.shape), want, rtol=1e-6, atol=1e-7)


def test_second_derivative_of_newton_iterations_closed_form():
    g2 = gj.grad(gj.grad(CF.newton_sqrt))
    g2(2.0)
    before = compiles()
    for a in (0.3, 2.0, 7.0, 150.0):  # different trip counts, one kernel
        assert g2(a) == pytest.approx(-0.25 * a ** -1.5, rel=1e-9)
    assert compiles() == before
    vg = gj.value_and_grad(gj.grad(CF.newton_sqrt))
    d1, d2 = vg(2.0)
    assert d1 == pytest.approx(0.5 / np.sqrt(2.0), rel=1e-12)
    assert d2 == pytest.approx(-0.25 * 2.0 ** -1.5, rel=1e-9)


def test_grad_of_grad_of_a_loop_with_a_run_time_trip_count():
    g2 = gj.grad(gj.grad(iterated_sine))
    for x, n in ((0.4, 5), (-1.1, 40), (0.9, 1), (0.2, 0)):
        want = hessian_by_differences(lambda y: iterated_sine(y, n), x)
        assert g2(x, n) == pytest.approx(want, rel=1e-6, abs=1e-8)
    assert g2(0.3, 0) == 0.0
    assert g2(0.3, 1) == pytest.approx(-1.3 * np.sin(0.3), rel=1e-12)


def test_hessian_is_one_kernel_for_any_trip_count():
    f = gj.hessian(iterated_map)
    x = rng.standard_normal(4)
    f(x, 3)
    before = compiles()
    for n in (1, 10, 1000):
        H = f(x, n)
        np.testing.assert_allclose(H, hessian_by_differences(lambda y: iterated_map(y, n), x),
                                   rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(H, H.T, rtol=1e-10, atol=1e-12)
    assert compiles() == before


def test_second_order_kernel_rewinds_the_tape_instead_of_saving_it():
    src = gj.grad(gj.grad(iterated_sine)).lower(0.4, 5).source
    assert "tape:tape" not in src  # no tape of tapes: each iteration saves a count
    assert "tape_rewind" in src


def test_reference_evaluator_agrees_on_second_order_graphs():
    x = rng.standard_normal(5)
    want = gj.hessian(L.recurrence)(x)
    got = reference_transform(gj.hessian(L.recurrence), (x,))[0]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    got = reference_transform(gj.grad(gj.grad(CF.newton_sqrt)), (3.0,))[0]
    assert got == pytest.approx(-0.25 * 3.0 ** -1.5, rel=1e-9)


def test_vmap_of_second_derivatives_through_loops():
    a = np.array([2.0, 3.0, 0.5, 90.0])  # each example stops after its own number of iterations
    np.testing.assert_allclose(gj.vmap(gj.grad(gj.grad(CF.newton_sqrt)))(a), -0.25 * a ** -1.5,
                               rtol=1e-9)
    xs, ns = np.array([0.4, -0.7, 1.1]), np.array([3, 0, 11])  # a trip count per example
    got = gj.vmap(gj.grad(gj.grad(iterated_sine)))(xs, ns)
    want = [hessian_by_differences(lambda y: iterated_sine(y, int(n)), x) for x, n in zip(xs, ns)]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-8)
    X = rng.standard_normal((3, 5))
    Hs = gj.vmap(gj.hessian(L.recurrence))(X)
    for k in range(3):
        np.testing.assert_allclose(Hs[k], gj.hessian(L.recurrence)(X[k]), rtol=1e-12, atol=1e-12)


def test_parallel_target_through_taped_loops():
    x = rng.standard_normal(6)
    np.testing.assert_allclose(gj.grad(L.recurrence, target="parallel")(x),
                               gj.grad(L.recurrence)(x), rtol=1e-12)
    np.testing.assert_allclose(gj.hessian(L.recurrence, target="parallel")(x),
                               gj.hessian(L.recurrence)(x), rtol=1e-12, atol=1e-12)


def himmelblau(x):
    return (x[0] ** 2 + x[1] - 11) ** 2 + (x[0] + x[1] ** 2 - 7) ** 2


def descend(x, lr, steps):
    for _ in range(steps):
        x = x - lr * gj.grad(himmelblau)(x)
    return x


def descend_numpy(x, lr, steps):  # the oracle: himmelblau's gradient in closed form
    for _ in range(steps):
        a, b = x[0] ** 2 + x[1] - 11, x[0] + x[1] ** 2 - 7
        x = x - lr * np.array([4 * x[0] * a + 2 * b, 2 * a + 4 * x[1] * b])
    return x


def test_hessian_of_a_descent_loop_with_a_gradient_inside():
    loss = lambda x0: np.sum(descend(x0, 0.001, 50))  # noqa: E731
    x0 = np.array([0.5, 0.5])
    H = reference_transform(gj.hessian(loss), (x0,))[0]  # its compile alone takes ~30 s
    want = hessian_by_differences(lambda x: np.sum(descend_numpy(x, 0.001, 50)), x0)
    np.testing.assert_allclose(H, want, rtol=1e-6, atol=1e-7)
    dlr = gj.grad(lambda lr: np.sum(descend(np.array([0.5, 0.5]), lr, 50)))(0.001)
    h = 1e-7
    want = (np.sum(descend_numpy(x0, 0.001 + h, 50)) - np.sum(descend_numpy(x0, 0.001 - h, 50))) \
        / (2 * h)
    assert dlr == pytest.approx(want, rel=1e-6)


def test_third_derivative_through_a_taped_loop_is_a_clear_error():
    g3 = gj.grad(gj.grad(gj.grad(CF.newton_sqrt)))
    with pytest.raises(gj.GradjitError, match=r"control_flow\.py:\d+: a third derivative"):
        g3(2.0)
    # a loop that keeps no tape (it only adds to its carried value) has derivatives of any order
    g3 = gj.grad(gj.grad(gj.grad(untaped_sum)))
    assert g3(0.7, 5) == pytest.approx(6.0 * 10)
    assert g3(1.3, 4) == pytest.approx(6.0 * 6)


def untaped_sum(x, n):
    s = 0.0
    for i in range(n):
        s += x ** 3 * i
    return s


BODIES = {  # one step of a carried scalar state y, reading the argument's element a
    "sin": lambda y, a: np.sin(y) * 1.1 + a,
    "tanh": lambda y, a: np.tanh(y * a) + 0.5 * y,
    "poly": lambda y, a: 0.5 * y * y - a * y,
    "exp": lambda y, a: np.exp(-y * y) + a * y,
    "branch": lambda y, a: y * a if y > 0 else np.sin(y) - a,
}


@settings(max_examples=4, deadline=None)
@given(ops=st.lists(st.sampled_from(sorted(BODIES)), min_size=1, max_size=3),
       n=st.integers(1, 6), seed=st.integers(0, 2 ** 16), write=st.booleans())
def test_property_hessian_of_random_loops(ops, n, seed, write):
    """Random loop bodies over a carried state, with or without a local array written each
    iteration: the Hessian matches differences of the gradient."""
    steps = [BODIES[o] for o in ops]

    def f(x):
        y = x[0]
        out = np.zeros(n)
        for i in range(n):
            for s in steps:
                y = s(y, x[i % x.shape[0]])
            if write:
                out[i] = y * x[1]
                y = y + 0.1 * out[i]
        return y * y + np.sum(out * out)
    x = np.random.default_rng(seed).uniform(-0.9, 0.9, 3)
    H = gj.hessian(f)(x)
    want = hessian_by_differences(f, x)
    np.testing.assert_allclose(H, want, rtol=1e-6, atol=1e-7)
